/* virtio over MMIO, version 2 (virtio 1.2 §4.2): 4 KiB register windows
 * from 0xD0000000 (kvmlite's layout.VIRTIO_MMIO_START), device i raising
 * GSI 16 + i, i.e. IOAPIC pin 16 + i.  kvmlite announces them in the ACPI
 * DSDT; this driver just probes the windows in order and stops at the first
 * one without the magic value, since kvmlite places them contiguously.
 *
 * All registers are 32 bits wide (§4.2.2.2); the device configuration
 * space starts at 0x100. */
#include "virtio.h"

#define MMIO_START 0xD0000000ul
#define MMIO_SIZE 0x1000ul
#define MMIO_MAX 32
#define MMIO_FIRST_PIN 16

#define MMIO_MAGIC 0x000
#define MMIO_VERSION 0x004
#define MMIO_DEVICE_ID 0x008
#define MMIO_DEVICE_FEATURES 0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES 0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_NUM_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_QUEUE_READY 0x044
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_INTERRUPT_STATUS 0x060
#define MMIO_INTERRUPT_ACK 0x064
#define MMIO_STATUS 0x070
#define MMIO_QUEUE_DESC_LOW 0x080
#define MMIO_QUEUE_DESC_HIGH 0x084
#define MMIO_QUEUE_DRIVER_LOW 0x090
#define MMIO_QUEUE_DRIVER_HIGH 0x094
#define MMIO_QUEUE_DEVICE_LOW 0x0A0
#define MMIO_QUEUE_DEVICE_HIGH 0x0A4
#define MMIO_CONFIG 0x100
#define MMIO_MAGIC_VALUE 0x74726976u    /* "virt" */

static void describe(struct vdev *d)
{
	char *w = d->where;
	const char *p = "mmio 0x";
	while (*p)
		*w++ = *p++;
	for (int shift = 28; shift >= 0; shift -= 4)
		*w++ = "0123456789abcdef"[(d->base >> shift) & 15];
	*w = 0;
}

int virtio_mmio_probe(void)
{
	for (u32 i = 0; i < MMIO_MAX && ndevices < MAX_DEVICES; i++) {
		u64 base = MMIO_START + i * MMIO_SIZE;
		if (rd32(base + MMIO_MAGIC) != MMIO_MAGIC_VALUE)
			break;
		if (rd32(base + MMIO_VERSION) != 2) {
			puts("virtio: legacy (version 1) virtio-mmio device skipped\n");
			continue;
		}
		u32 type = rd32(base + MMIO_DEVICE_ID);
		if (!type)                      /* §4.2.2: 0 is a placeholder */
			continue;
		struct vdev *d = &devices[ndevices++];
		d->ops = &mmio_ops;
		d->type = type;
		d->base = base;
		d->pin = MMIO_FIRST_PIN + i;
		describe(d);
	}
	return ndevices;
}

/* The device's interrupt line: IOAPIC pin 16 + i, edge, active high, to
 * this CPU (82093AA §3.2.4).  The handler (main.c) acknowledges
 * InterruptStatus (§4.2.3.4). */
void virtio_mmio_irq_setup(struct vdev *d)
{
	ioapic_route(d->pin, d->vector, lapic_id());
}

/* Read and acknowledge InterruptStatus; returns it (bit 0 used buffer,
 * bit 1 configuration change). */
u32 virtio_mmio_ack(struct vdev *d)
{
	u32 status = rd32(d->base + MMIO_INTERRUPT_STATUS);
	if (status)
		vwr32(d->base + MMIO_INTERRUPT_ACK, status);
	return status;
}

static u8 mmio_get_status(struct vdev *d) { return (u8)rd32(d->base + MMIO_STATUS); }
static void mmio_set_status(struct vdev *d, u8 s) { vwr32(d->base + MMIO_STATUS, s); }

static u64 mmio_get_features(struct vdev *d)
{
	vwr32(d->base + MMIO_DEVICE_FEATURES_SEL, 0);
	u64 lo = rd32(d->base + MMIO_DEVICE_FEATURES);
	vwr32(d->base + MMIO_DEVICE_FEATURES_SEL, 1);
	return lo | (u64)rd32(d->base + MMIO_DEVICE_FEATURES) << 32;
}

static void mmio_set_features(struct vdev *d, u64 f)
{
	vwr32(d->base + MMIO_DRIVER_FEATURES_SEL, 0);
	vwr32(d->base + MMIO_DRIVER_FEATURES, (u32)f);
	vwr32(d->base + MMIO_DRIVER_FEATURES_SEL, 1);
	vwr32(d->base + MMIO_DRIVER_FEATURES, (u32)(f >> 32));
}

static u16 mmio_queue_max(struct vdev *d, u16 index)
{
	vwr32(d->base + MMIO_QUEUE_SEL, index);
	if (rd32(d->base + MMIO_QUEUE_READY))   /* §4.2.3.2: must not be in use */
		return 0;
	return (u16)rd32(d->base + MMIO_QUEUE_NUM_MAX);
}

/* §4.2.3.2 "Virtqueue Configuration". */
static int mmio_queue_setup(struct vdev *d, struct vq *q)
{
	u64 b = d->base;
	vwr32(b + MMIO_QUEUE_SEL, q->index);
	vwr32(b + MMIO_QUEUE_NUM, q->size);
	vwr32(b + MMIO_QUEUE_DESC_LOW, (u32)(uptr)q->desc);
	vwr32(b + MMIO_QUEUE_DESC_HIGH, (u32)((u64)(uptr)q->desc >> 32));
	vwr32(b + MMIO_QUEUE_DRIVER_LOW, (u32)(uptr)q->avail);
	vwr32(b + MMIO_QUEUE_DRIVER_HIGH, (u32)((u64)(uptr)q->avail >> 32));
	vwr32(b + MMIO_QUEUE_DEVICE_LOW, (u32)(uptr)q->used);
	vwr32(b + MMIO_QUEUE_DEVICE_HIGH, (u32)((u64)(uptr)q->used >> 32));
	vwr32(b + MMIO_QUEUE_READY, 1);
	return rd32(b + MMIO_QUEUE_READY) == 1 ? 0 : -1;
}

static void mmio_notify(struct vdev *d, struct vq *q) { vwr32(d->base + MMIO_QUEUE_NOTIFY, q->index); }
static u32 mmio_config_read32(struct vdev *d, u32 off) { return rd32(d->base + MMIO_CONFIG + off); }
static u8 mmio_config_read8(struct vdev *d, u32 off) { return rd8(d->base + MMIO_CONFIG + off); }
static int mmio_config_setup(struct vdev *d) { (void)d; return 0; }

const struct transport_ops mmio_ops = {
	.name = "mmio",
	.get_status = mmio_get_status,
	.set_status = mmio_set_status,
	.get_features = mmio_get_features,
	.set_features = mmio_set_features,
	.queue_max = mmio_queue_max,
	.queue_setup = mmio_queue_setup,
	.notify = mmio_notify,
	.config_read32 = mmio_config_read32,
	.config_read8 = mmio_config_read8,
	.config_setup = mmio_config_setup,
};
