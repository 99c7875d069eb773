/* kvmlite's virtio test guest: find the virtio devices (PCI bus 0, else the
 * virtio-mmio windows), take their interrupts (MSI-X, or IOAPIC pins), and
 * run one program on them, chosen on the command line:
 *
 *   mode=test     (default) virtio-blk write/flush/readback/GET_ID, or the
 *                 read-only checks; virtio-rng; virtio-console
 *   mode=hostile  garbage on the first virtio-blk device's queue, then a
 *                 reset and one good request
 *   mode=bench    virtio-blk throughput phases, timed by the host
 *   mode=blk-rounds  write a sector, read back the one before, forever
 *                 (snapshot tests: the disk and the timer after a restore)
 *   mode=net-dhcp, mode=net-tap
 *                 virtio-net on the first such device: DHCP and ARP with
 *                 kvmlite's user-mode network, or frames to and from a tap
 *   mode=vsock    virtio-vsock streams to and from the host (vsock.c)
 *
 * Other words: transport=pci|mmio (default: PCI, then MMIO if PCI has no
 * virtio device), timeout=SECONDS (watchdog, default 60), and the options
 * of each program (blk.c, hostile.c, bench.c, console.c, net.c, vsock.c).
 *
 * Every result is one "virtio: ..." line on COM1.  Exit status (port
 * 0x501): 42 when every check passed, 43 when one failed, 44 with no
 * device, 101 on the watchdog, 100 on an unexpected interrupt vector. */
#include "virtio.h"
#include "../lib/pvh.h"

#define VEC_DEVICE_FIRST 0x40           /* 4 vectors per device: queues, config */
#define VEC_PER_DEVICE 4
#define VEC_TIMER 0xEF
#define VEC_SPURIOUS 0xFF
#define LAPIC_TICKS_10MS_DIV16 625000u  /* lib/apic.c: KVM's APIC bus is 1 GHz */
#define E820_RAM 1

struct vdev devices[MAX_DEVICES];
int ndevices;
int failures;
volatile u64 ticks;
static u64 deadline;
static u64 heap, heap_end;

extern char _end[];

/* --- small library --- */

void *memset(void *p, int v, u64 n)
{
	void *d = p;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(v) : "memory");
	return p;
}

void *memcpy(void *dst, const void *src, u64 n)
{
	void *d = dst;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

void memset8(void *p, u8 v, u64 n) { memset(p, v, n); }
void memcpy8(void *dst, const void *src, u64 n) { memcpy(dst, src, n); }

void put_str_hex(const u8 *p, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		serial_putc("0123456789abcdef"[p[i] >> 4]);
		serial_putc("0123456789abcdef"[p[i] & 15]);
	}
}

void check(int ok, const char *what)
{
	if (ok)
		return;
	failures++;
	puts("virtio: FAIL ");
	puts(what);
	puts("\n");
}

/* --- memory: a bump allocator from the end of the image to the top of the
 *     RAM range it sits in (hvm_start_info's memory map, start_info.h) --- */

static void heap_init(const struct hvm_start_info *si)
{
	heap = ((u64)(uptr)_end + 0xFFF) & ~0xFFFull;
	heap_end = 64ull << 20;                 /* without a memory map: assume 64 MiB */
	if (si->version >= 1 && si->memmap_paddr) {
		const struct hvm_memmap_table_entry *m = (const void *)(uptr)si->memmap_paddr;
		for (u32 i = 0; i < si->memmap_entries; i++)
			if (m[i].type == E820_RAM && m[i].addr <= heap && heap < m[i].addr + m[i].size)
				heap_end = m[i].addr + m[i].size;
	}
	if (heap_end > 0xC0000000ull)
		heap_end = 0xC0000000ull;       /* only the low 4 GiB are mapped */
}

void *alloc_bytes(u64 bytes, u64 align)
{
	u64 at = (heap + align - 1) & ~(align - 1);
	if (at + bytes > heap_end) {
		puts("virtio: out of guest memory (need ");
		put_dec(bytes);
		puts(" bytes more)\n");
		guest_exit(EXIT_BAD_SETUP);
	}
	heap = at + bytes;
	return (void *)(uptr)at;
}

void *alloc_pages(u64 bytes)
{
	void *p = alloc_bytes((bytes + 0xFFF) & ~0xFFFull, 0x1000);
	memset(p, 0, bytes);
	return p;
}

u64 ram_top(void) { return heap_end; }

/* --- time: a periodic LAPIC timer (SDM vol. 3A §10.5.4), 10 ms nominal,
 *     which also bounds the whole run --- */

static void timer_tick(struct idt_frame *f)
{
	(void)f;
	ticks++;
	lapic_eoi();
	if (deadline && ticks >= deadline) {
		lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED);
		puts("\nvirtio: watchdog expired\n");
		guest_exit(EXIT_TIMEOUT);
	}
}

static void timer_start(u64 seconds)
{
	deadline = seconds * TICKS_PER_SECOND;
	idt_set_handler(VEC_TIMER, timer_tick);
	lapic_write(LAPIC_TIMER_DIV, LAPIC_DIV_16);
	lapic_write(LAPIC_LVT_TIMER, LAPIC_TIMER_PERIODIC | VEC_TIMER);
	lapic_write(LAPIC_TIMER_INIT, LAPIC_TICKS_10MS_DIV16);
}

/* Interrupts are taken only here: "sti; hlt" sleeps until one arrives (an
 * interrupt pending while IF was 0 wakes this very hlt), then IF goes back
 * to 0 and the condition is tested again. */
int wait_until(int (*cond)(void *), void *arg, u64 timeout)
{
	u64 end = ticks + timeout;
	cli();
	while (!cond(arg)) {
		if (ticks >= end)
			return 0;
		sti_hlt();
		cli();
	}
	return 1;
}

/* --- device interrupts --- */

static void device_interrupt(struct idt_frame *f)
{
	u32 v = (u32)f->vector - VEC_DEVICE_FIRST;
	struct vdev *d = &devices[v / VEC_PER_DEVICE];
	u32 entry = v % VEC_PER_DEVICE;
	d->irqs++;
	d->vec_irqs[entry]++;
	if (d->ops == &mmio_ops) {
		if (virtio_mmio_ack(d) & 2)
			d->config_irqs++;
	} else if (entry == ((u32)d->nvq < d->msix_count ? (u32)d->nvq : 0)) {
		d->config_irqs++;               /* the configuration vector's entry */
	}
	lapic_eoi();
}

static void irq_setup(struct vdev *d, int index)
{
	d->vector = (u8)(VEC_DEVICE_FIRST + VEC_PER_DEVICE * index);
	for (int i = 0; i < VEC_PER_DEVICE; i++)
		idt_set_handler((u8)(d->vector + i), device_interrupt);
	if (d->ops == &mmio_ops)
		virtio_mmio_irq_setup(d);
	else
		virtio_pci_irq_setup(d);
}

static const char *type_name(u32 type)
{
	switch (type) {
	case VIRTIO_ID_NET: return "net";
	case VIRTIO_ID_BLOCK: return "blk";
	case VIRTIO_ID_CONSOLE: return "console";
	case VIRTIO_ID_RNG: return "rng";
	case VIRTIO_ID_VSOCK: return "vsock";
	default: return "other";
	}
}

static void probe(const char *cmdline)
{
	if (!cmdline_is(cmdline, "transport", "mmio"))
		virtio_pci_probe();
	if (!ndevices && !cmdline_is(cmdline, "transport", "pci"))
		virtio_mmio_probe();
	for (int i = 0; i < ndevices; i++) {
		struct vdev *d = &devices[i];
		irq_setup(d, i);
		puts("virtio: found ");
		puts(type_name(d->type));
		puts(" type=");
		put_dec(d->type);
		puts(" at ");
		puts(d->where);
		if (d->ops == &pci_ops) {
			puts(" msix=");
			put_dec(d->msix_count);
			puts(" notify_mult=");
			put_dec(d->notify_mult);
		} else {
			puts(" pin=");
			put_dec(d->pin);
		}
		puts("\n");
	}
}

static struct vdev *first_of(u32 type)
{
	for (int i = 0; i < ndevices; i++)
		if (devices[i].type == type)
			return &devices[i];
	return 0;
}

static void run_tests(const char *cmdline)
{
	int blk = 0;
	for (int i = 0; i < ndevices; i++) {
		struct vdev *d = &devices[i];
		switch (d->type) {
		case VIRTIO_ID_BLOCK:
			if (blk++ == 0)     /* the tests write to the first disk only */
				blk_test(d, cmdline);
			break;
		case VIRTIO_ID_RNG:
			rng_test(d);
			break;
		case VIRTIO_ID_CONSOLE:
			console_test(d, cmdline);
			break;
		}
	}
}

static int never(void *arg) { (void)arg; return 0; }

/* A completion the driver saw before it had to sleep leaves its interrupt
 * pending in the IRR (IF was 0); two timer ticks with IF=1 take them all
 * before the counts are reported. */
static void report_interrupts(void)
{
	wait_until(never, 0, 2);
	for (int i = 0; i < ndevices; i++) {
		struct vdev *d = &devices[i];
		puts("virtio: irqs ");
		puts(type_name(d->type));
		puts(" total=");
		put_dec(d->irqs);
		puts(" config=");
		put_dec(d->config_irqs);
		for (int v = 0; v < VEC_PER_DEVICE; v++) {
			if (!d->vec_irqs[v])
				continue;
			puts(" vec");
			put_hex(d->vector + (u32)v);
			puts("=");
			put_dec(d->vec_irqs[v]);
		}
		puts("\n");
	}
}

void virtio_main(const struct hvm_start_info *si)
{
	const char *cmdline = si->magic == HVM_START_MAGIC ? (const char *)(uptr)si->cmdline_paddr : "";
	int bench = cmdline_is(cmdline, "mode", "bench");
	heap_init(si);
	idt_init();
	pic_disable();
	lapic_enable(VEC_SPURIOUS);
	timer_start(cmdline_num(cmdline, "timeout", bench ? 1800 : 60));
	puts("virtio: guest up, heap ");
	put_hex(heap);
	puts("-");
	put_hex(heap_end);
	puts("\n");

	probe(cmdline);
	if (!ndevices) {
		puts("virtio: no virtio devices found\n");
		guest_exit(EXIT_NO_DEVICE);
	}
	if (cmdline_is(cmdline, "mode", "net-dhcp") || cmdline_is(cmdline, "mode", "net-tap")) {
		struct vdev *d = first_of(VIRTIO_ID_NET);
		if (!d) {
			puts("virtio: no virtio-net device\n");
			guest_exit(EXIT_NO_DEVICE);
		}
		net_test(d, cmdline);
	} else if (cmdline_is(cmdline, "mode", "vsock")) {
		struct vdev *d = first_of(VIRTIO_ID_VSOCK);
		if (!d) {
			puts("virtio: no virtio-vsock device\n");
			guest_exit(EXIT_NO_DEVICE);
		}
		vsock_test(d, cmdline);
	} else if (cmdline_is(cmdline, "mode", "blk-rounds")) {
		struct vdev *d = first_of(VIRTIO_ID_BLOCK);
		if (!d) {
			puts("virtio: no virtio-blk device\n");
			guest_exit(EXIT_NO_DEVICE);
		}
		blk_rounds(d, cmdline);
	} else if (cmdline_is(cmdline, "mode", "hostile") || bench) {
		struct vdev *d = first_of(VIRTIO_ID_BLOCK);
		if (!d) {
			puts("virtio: no virtio-blk device\n");
			guest_exit(EXIT_NO_DEVICE);
		}
		if (bench)
			blk_bench(d, cmdline);
		else
			blk_hostile(d, cmdline);
	} else {
		run_tests(cmdline);
	}
	report_interrupts();
	puts("virtio: done failures=");
	put_dec((u64)failures);
	puts("\n");
	guest_exit(failures ? EXIT_CHECK_FAILED : EXIT_OK);
}
