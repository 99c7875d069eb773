/* virtio over PCI, modern interface (virtio 1.2 §4.1), found by scanning
 * bus 0 through configuration mechanism #1 (PCI Local Bus 3.0
 * §3.2.2.3.2: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC; a byte or
 * word at 0xCFC + n reaches register + n).
 *
 * BAR addresses are taken as the firmware left them (kvmlite and SeaBIOS
 * both assign BARs); the driver only turns on memory decode and bus
 * mastering.  Every structure is located through the vendor capabilities
 * (§4.1.4), so the BAR numbers and offsets may differ between VMMs: kvmlite
 * keeps everything in BAR 0, QEMU in BAR 4 with the MSI-X table in BAR 1.
 * Transitional devices (device ID 0x1000-0x103F, QEMU's default on -M pc)
 * are driven through their modern interface; their virtio type is the PCI
 * subsystem ID (§4.1.2.1). */
#include "virtio.h"

#define PCI_VENDOR_VIRTIO 0x1AF4
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_HEADER_TYPE 0x0E
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM_ID 0x2E
#define PCI_CAP_PTR 0x34
#define PCI_COMMAND_MEMORY 0x0002
#define PCI_COMMAND_MASTER 0x0004
#define PCI_STATUS_CAP_LIST 0x0010
#define PCI_CAP_ID_MSIX 0x11
#define PCI_CAP_ID_VENDOR 0x09

/* §4.1.4: struct virtio_pci_cap cfg_type */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4

/* §4.1.4.3: struct virtio_pci_common_cfg */
#define COMMON_DFSELECT 0x00
#define COMMON_DF 0x04
#define COMMON_GFSELECT 0x08
#define COMMON_GF 0x0C
#define COMMON_MSIX 0x10
#define COMMON_NUMQ 0x12
#define COMMON_STATUS 0x14
#define COMMON_CFGGEN 0x15
#define COMMON_Q_SELECT 0x16
#define COMMON_Q_SIZE 0x18
#define COMMON_Q_MSIX 0x1A
#define COMMON_Q_ENABLE 0x1C
#define COMMON_Q_NOFF 0x1E
#define COMMON_Q_DESCLO 0x20
#define COMMON_Q_DESCHI 0x24
#define COMMON_Q_AVAILLO 0x28
#define COMMON_Q_AVAILHI 0x2C
#define COMMON_Q_USEDLO 0x30
#define COMMON_Q_USEDHI 0x34
#define VIRTIO_MSI_NO_VECTOR 0xFFFF

/* PCI 3.0 §6.8.2: MSI-X message control and table entries */
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_MASKALL 0x4000
#define MSIX_ENTRY_SIZE 16

static u32 cfg_address(u8 slot, u8 fn, u8 reg)
{
	return 0x80000000u | ((u32)slot << 11) | ((u32)fn << 8) | (reg & 0xFCu);
}

static u32 pci_read32(u8 slot, u8 fn, u8 reg)
{
	outl(0xCF8, cfg_address(slot, fn, reg));
	return inl(0xCFC);
}

static u16 pci_read16(u8 slot, u8 fn, u8 reg)
{
	outl(0xCF8, cfg_address(slot, fn, reg));
	return inw((u16)(0xCFC + (reg & 2)));
}

static u8 pci_read8(u8 slot, u8 fn, u8 reg)
{
	outl(0xCF8, cfg_address(slot, fn, reg));
	return inb((u16)(0xCFC + (reg & 3)));
}

static void pci_write16(u8 slot, u8 fn, u8 reg, u16 v)
{
	outl(0xCF8, cfg_address(slot, fn, reg));
	outw((u16)(0xCFC + (reg & 2)), v);
}

/* The address firmware gave memory BAR `bar` (0 for an I/O BAR, an
 * unassigned one or a bad index).  Bits 2:1 of a memory BAR give its type:
 * 00 32-bit, 10 64-bit with the high half in the next BAR (§6.2.5.1). */
static u64 bar_address(u8 slot, u8 fn, u8 bar)
{
	if (bar > 5)
		return 0;
	u32 lo = pci_read32(slot, fn, (u8)(PCI_BAR0 + 4 * bar));
	if (lo & 1)
		return 0;
	u64 addr = lo & ~0xFu;
	if (((lo >> 1) & 3) == 2 && bar < 5)
		addr |= (u64)pci_read32(slot, fn, (u8)(PCI_BAR0 + 4 * bar + 4)) << 32;
	return addr;
}

/* Walk the capability list (§6.7) for the virtio structures and MSI-X.
 * The first capability of each virtio type wins (§4.1.4.1: the driver
 * SHOULD use the first it can).  Returns 0 when all four were found. */
static int find_caps(struct vdev *d)
{
	u8 slot = d->slot, fn = d->fn;
	if (!(pci_read16(slot, fn, PCI_STATUS) & PCI_STATUS_CAP_LIST))
		return -1;
	u8 ptr = pci_read8(slot, fn, PCI_CAP_PTR) & 0xFC;
	for (int guard = 0; ptr && guard < 48; guard++) {
		u8 id = pci_read8(slot, fn, ptr);
		u8 next = pci_read8(slot, fn, (u8)(ptr + 1)) & 0xFC;
		if (id == PCI_CAP_ID_MSIX && !d->msix_cap) {
			d->msix_cap = ptr;
			d->msix_count = (u16)((pci_read16(slot, fn, (u8)(ptr + 2)) & 0x7FF) + 1);
			u32 table = pci_read32(slot, fn, (u8)(ptr + 4));
			u64 base = bar_address(slot, fn, (u8)(table & 7));
			d->msix_table = base ? base + (table & ~7u) : 0;
		} else if (id == PCI_CAP_ID_VENDOR) {
			u8 type = pci_read8(slot, fn, (u8)(ptr + 3));
			u64 base = bar_address(slot, fn, pci_read8(slot, fn, (u8)(ptr + 4)));
			u64 at = base ? base + pci_read32(slot, fn, (u8)(ptr + 8)) : 0;
			if (type == VIRTIO_PCI_CAP_COMMON_CFG && !d->common)
				d->common = at;
			else if (type == VIRTIO_PCI_CAP_ISR_CFG && !d->isr)
				d->isr = at;
			else if (type == VIRTIO_PCI_CAP_DEVICE_CFG && !d->devcfg)
				d->devcfg = at;
			else if (type == VIRTIO_PCI_CAP_NOTIFY_CFG && !d->notify_base) {
				d->notify_base = at;
				d->notify_mult = pci_read32(slot, fn, (u8)(ptr + 16));
			}
		}
		ptr = next;
	}
	return d->common && d->isr && d->devcfg && d->notify_base ? 0 : -1;
}

static void describe(struct vdev *d)
{
	char *w = d->where;
	const char *p = "pci 00:";
	while (*p)
		*w++ = *p++;
	*w++ = "0123456789abcdef"[d->slot >> 4];
	*w++ = "0123456789abcdef"[d->slot & 15];
	*w++ = '.';
	*w++ = (char)('0' + d->fn);
	*w = 0;
}

/* The virtio device type of a function, or 0 when it is not virtio. */
static u32 virtio_type(u8 slot, u8 fn)
{
	u32 id = pci_read32(slot, fn, 0);
	if ((id & 0xFFFF) != PCI_VENDOR_VIRTIO)
		return 0;
	u16 device = (u16)(id >> 16);
	if (device >= 0x1040 && device <= 0x107F)
		return device - 0x1040u;
	if (device >= 0x1000 && device <= 0x103F)      /* transitional */
		return pci_read16(slot, fn, PCI_SUBSYSTEM_ID);
	return 0;
}

static void probe_function(u8 slot, u8 fn)
{
	u32 type = virtio_type(slot, fn);
	if (!type || ndevices >= MAX_DEVICES)
		return;
	struct vdev *d = &devices[ndevices];
	d->ops = &pci_ops;
	d->type = type;
	d->slot = slot;
	d->fn = fn;
	describe(d);
	if (find_caps(d)) {
		puts("virtio: ");
		puts(d->where);
		puts(" lacks a virtio capability or its BAR is unassigned; skipped\n");
		*d = (struct vdev){ 0 };
		return;
	}
	if ((d->common | d->isr | d->devcfg | d->notify_base | d->msix_table) >> 32) {
		puts("virtio: ");
		puts(d->where);
		puts(" has a BAR above 4 GiB, which this guest does not map; skipped\n");
		*d = (struct vdev){ 0 };
		return;
	}
	u16 cmd = pci_read16(slot, fn, PCI_COMMAND);
	pci_write16(slot, fn, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	ndevices++;
}

int virtio_pci_probe(void)
{
	for (u8 slot = 0; slot < 32; slot++) {
		if ((pci_read32(slot, 0, 0) & 0xFFFF) == 0xFFFF)
			continue;
		int functions = (pci_read8(slot, 0, PCI_HEADER_TYPE) & 0x80) ? 8 : 1;
		for (u8 fn = 0; fn < functions; fn++)
			probe_function(slot, fn);
	}
	return ndevices;
}

/* MSI-X (PCI 3.0 §6.8.2.4-9): entry i gets IDT vector d->vector + i on
 * this CPU's local APIC (message address 0xFEE00000 | APIC ID << 12,
 * SDM vol. 3A §10.11.1; data = vector, fixed delivery, edge).  The table
 * is programmed while the function is still masked, then MSI-X is
 * enabled; vectors are bound to queues in queue_setup/config_setup. */
void virtio_pci_irq_setup(struct vdev *d)
{
	if (!d->msix_cap || !d->msix_table)
		return;
	u8 ctrl = (u8)(d->msix_cap + 2);
	pci_write16(d->slot, d->fn, ctrl, MSIX_CTRL_ENABLE | MSIX_CTRL_MASKALL);
	for (u16 i = 0; i < d->msix_count && i <= MAX_QUEUES; i++) {
		u64 e = d->msix_table + (u64)MSIX_ENTRY_SIZE * i;
		vwr32(e + 0, (u32)LAPIC_BASE | (lapic_id() << 12));
		vwr32(e + 4, 0);
		vwr32(e + 8, (u32)d->vector + i);
		vwr32(e + 12, 0);                         /* vector control: unmasked */
	}
	pci_write16(d->slot, d->fn, ctrl, MSIX_CTRL_ENABLE);
}

/* The MSI-X entry for queue `index` (or the configuration vector when
 * index == number of queues): one each when the table is large enough,
 * otherwise everything shares entry 0. */
static u16 msix_entry(struct vdev *d, u16 index)
{
	if (!d->msix_cap)
		return VIRTIO_MSI_NO_VECTOR;
	return index < d->msix_count ? index : 0;
}

/* --- struct transport_ops --- */

static u8 pci_get_status(struct vdev *d) { return rd8(d->common + COMMON_STATUS); }
static void pci_set_status(struct vdev *d, u8 s) { vwr8(d->common + COMMON_STATUS, s); }

static u64 pci_get_features(struct vdev *d)
{
	vwr32(d->common + COMMON_DFSELECT, 0);
	u64 lo = rd32(d->common + COMMON_DF);
	vwr32(d->common + COMMON_DFSELECT, 1);
	return lo | (u64)rd32(d->common + COMMON_DF) << 32;
}

static void pci_set_features(struct vdev *d, u64 f)
{
	vwr32(d->common + COMMON_GFSELECT, 0);
	vwr32(d->common + COMMON_GF, (u32)f);
	vwr32(d->common + COMMON_GFSELECT, 1);
	vwr32(d->common + COMMON_GF, (u32)(f >> 32));
}

static u16 pci_queue_max(struct vdev *d, u16 index)
{
	if (index >= rd16(d->common + COMMON_NUMQ))
		return 0;
	vwr16(d->common + COMMON_Q_SELECT, index);
	return rd16(d->common + COMMON_Q_SIZE);
}

/* §4.1.5.1.3: size, the three ring addresses (written as 32-bit halves,
 * which every implementation accepts), the MSI-X vector, read back to
 * check the device could map it (§4.1.5.1.2), then queue_enable. */
static int pci_queue_setup(struct vdev *d, struct vq *q)
{
	u64 c = d->common;
	vwr16(c + COMMON_Q_SELECT, q->index);
	vwr16(c + COMMON_Q_SIZE, q->size);
	vwr32(c + COMMON_Q_DESCLO, (u32)(uptr)q->desc);
	vwr32(c + COMMON_Q_DESCHI, (u32)((u64)(uptr)q->desc >> 32));
	vwr32(c + COMMON_Q_AVAILLO, (u32)(uptr)q->avail);
	vwr32(c + COMMON_Q_AVAILHI, (u32)((u64)(uptr)q->avail >> 32));
	vwr32(c + COMMON_Q_USEDLO, (u32)(uptr)q->used);
	vwr32(c + COMMON_Q_USEDHI, (u32)((u64)(uptr)q->used >> 32));
	q->msix_entry = msix_entry(d, q->index);
	if (q->msix_entry != VIRTIO_MSI_NO_VECTOR) {
		vwr16(c + COMMON_Q_MSIX, q->msix_entry);
		if (rd16(c + COMMON_Q_MSIX) != q->msix_entry)
			return -1;
	}
	q->notify_addr = d->notify_base + (u64)rd16(c + COMMON_Q_NOFF) * d->notify_mult;
	vwr16(c + COMMON_Q_ENABLE, 1);
	return rd16(c + COMMON_Q_ENABLE) == 1 ? 0 : -1;
}

/* §4.1.4.4: write the queue index at the queue's notify address. */
static void pci_notify(struct vdev *d, struct vq *q)
{
	(void)d;
	vwr16(q->notify_addr, q->index);
}

static u32 pci_config_read32(struct vdev *d, u32 off) { return rd32(d->devcfg + off); }
static u8 pci_config_read8(struct vdev *d, u32 off) { return rd8(d->devcfg + off); }

static int pci_config_setup(struct vdev *d)
{
	u16 entry = msix_entry(d, (u16)d->nvq);
	if (entry == VIRTIO_MSI_NO_VECTOR)
		return 0;
	vwr16(d->common + COMMON_MSIX, entry);
	return rd16(d->common + COMMON_MSIX) == entry ? 0 : -1;
}

const struct transport_ops pci_ops = {
	.name = "pci",
	.get_status = pci_get_status,
	.set_status = pci_set_status,
	.get_features = pci_get_features,
	.set_features = pci_set_features,
	.queue_max = pci_queue_max,
	.queue_setup = pci_queue_setup,
	.notify = pci_notify,
	.config_read32 = pci_config_read32,
	.config_read8 = pci_config_read8,
	.config_setup = pci_config_setup,
};
