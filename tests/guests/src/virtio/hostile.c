/* mode=hostile: a virtio-blk driver that breaks the virtqueue contract
 * (virtio 1.2 §2.7) on purpose, one way per case, each on a freshly
 * initialised device.  After each case the device must either complete the
 * request with an error status or set DEVICE_NEEDS_RESET (§2.1.2), which
 * the driver sees in the status register; it never writes the disk.  The
 * driver then resets the device and goes on.  At the end, one good write
 * of sector `sector` (stamp seed `seed`) and its readback must succeed.
 *
 * Every case writes (VIRTIO_BLK_T_OUT) to `sector`, so an image that
 * changes anywhere but that one sector, or that sector holding anything but
 * the final good write, means the device acted on garbage.
 *
 * rounds=N (default 1) runs the whole list N times, to see whether the
 * VMM's log stays bounded under a driver that keeps doing this. */
#include "blk.h"

#define OUTSIDE_RAM 0xFFFF0000000ull    /* 16 TiB: no guest has RAM there */
#define HUGE_LENGTH 0xFFFFF000u
#define CASE_TICKS (5 * TICKS_PER_SECOND)
#define GARBAGE_BYTES 4096

struct ctx {
	struct vdev *d;
	struct vq *q;
	struct blk_req *req;
	u8 *buf;
	u64 sector;
	u64 capacity;
};

static void desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	q->desc[i].addr = addr;
	q->desc[i].len = len;
	q->desc[i].flags = flags;
	q->desc[i].next = next;
}

static void header(struct ctx *c, u32 type, u64 sector)
{
	c->req->hdr.type = type;
	c->req->hdr.reserved = 0;
	c->req->hdr.sector = sector;
	c->req->status = STATUS_UNSET;
}

#define HDR(c) ((u64)(uptr)&(c)->req->hdr)
#define STATUS(c) ((u64)(uptr)&(c)->req->status)

/* The cases: each queues something and notifies. */

static void head_out_of_range(struct ctx *c)
{
	vq_publish_head(c->q, (u16)(c->q->size + 5));
}

static void chain_loop(struct ctx *c)
{
	header(c, VIRTIO_BLK_T_OUT, c->sector);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, 1);
	desc(c->q, 1, (u64)(uptr)c->buf, SECTOR, VIRTQ_DESC_F_NEXT, 2);
	desc(c->q, 2, (u64)(uptr)c->buf + SECTOR, SECTOR, VIRTQ_DESC_F_NEXT, 1);   /* back to 1 */
	vq_publish_head(c->q, 0);
}

static void address_outside_ram(struct ctx *c)
{
	header(c, VIRTIO_BLK_T_OUT, c->sector);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, 1);
	desc(c->q, 1, OUTSIDE_RAM, 4096, VIRTQ_DESC_F_NEXT, 2);
	desc(c->q, 2, STATUS(c), 1, VIRTQ_DESC_F_WRITE, 0);
	vq_publish_head(c->q, 0);
}

static void huge_length(struct ctx *c)
{
	header(c, VIRTIO_BLK_T_OUT, c->sector);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, 1);
	desc(c->q, 1, (u64)(uptr)c->buf, HUGE_LENGTH, VIRTQ_DESC_F_NEXT, 2);
	desc(c->q, 2, STATUS(c), 1, VIRTQ_DESC_F_WRITE, 0);
	vq_publish_head(c->q, 0);
}

static void avail_idx_jump(struct ctx *c)
{
	/* §2.7.6: idx may run at most queue size ahead of the device. */
	c->q->avail->idx = (u16)(c->q->avail_shadow + c->q->size + 10);
}

static void no_status_byte(struct ctx *c)
{
	header(c, VIRTIO_BLK_T_OUT, c->sector);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, 1);
	desc(c->q, 1, (u64)(uptr)c->buf, SECTOR, 0, 0);
	vq_publish_head(c->q, 0);
}

static void readable_after_writable(struct ctx *c)
{
	header(c, VIRTIO_BLK_T_OUT, c->sector);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, 1);
	desc(c->q, 1, STATUS(c), 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	desc(c->q, 2, (u64)(uptr)c->buf, SECTOR, 0, 0);
	vq_publish_head(c->q, 0);
}

static void indirect_not_negotiated(struct ctx *c)
{
	desc(c->q, 0, (u64)(uptr)c->buf, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	vq_publish_head(c->q, 0);
}

static void next_out_of_range(struct ctx *c)
{
	header(c, VIRTIO_BLK_T_OUT, c->sector);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, (u16)(c->q->size + 100));
	vq_publish_head(c->q, 0);
}

static void beyond_capacity(struct ctx *c)
{
	/* well formed, but the sectors run past the end of the disk */
	header(c, VIRTIO_BLK_T_OUT, c->capacity - 1);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, 1);
	desc(c->q, 1, (u64)(uptr)c->buf, 8 * SECTOR, VIRTQ_DESC_F_NEXT, 2);
	desc(c->q, 2, STATUS(c), 1, VIRTQ_DESC_F_WRITE, 0);
	vq_publish_head(c->q, 0);
}

static void unknown_type(struct ctx *c)
{
	header(c, 0x55, c->sector);
	desc(c->q, 0, HDR(c), 16, VIRTQ_DESC_F_NEXT, 1);
	desc(c->q, 1, (u64)(uptr)c->buf, SECTOR, VIRTQ_DESC_F_NEXT, 2);
	desc(c->q, 2, STATUS(c), 1, VIRTQ_DESC_F_WRITE, 0);
	vq_publish_head(c->q, 0);
}

static void short_header(struct ctx *c)
{
	header(c, VIRTIO_BLK_T_OUT, c->sector);
	desc(c->q, 0, HDR(c), 8, VIRTQ_DESC_F_NEXT, 1);        /* type and reserved, no sector */
	desc(c->q, 1, STATUS(c), 1, VIRTQ_DESC_F_WRITE, 0);
	vq_publish_head(c->q, 0);
}

struct hostile_case {
	const char *name;
	void (*queue)(struct ctx *c);
};

static const struct hostile_case cases[] = {
	{ "head-out-of-range", head_out_of_range },
	{ "next-out-of-range", next_out_of_range },
	{ "chain-loop", chain_loop },
	{ "address-outside-ram", address_outside_ram },
	{ "huge-length", huge_length },
	{ "avail-idx-jump", avail_idx_jump },
	{ "no-status-byte", no_status_byte },
	{ "readable-after-writable", readable_after_writable },
	{ "indirect-not-negotiated", indirect_not_negotiated },
	{ "beyond-capacity", beyond_capacity },
	{ "unknown-type", unknown_type },
	{ "short-header", short_header },
};

static int answered(void *arg)
{
	struct ctx *c = arg;
	return vq_used_pending(c->q) || (c->d->ops->get_status(c->d) & VIRTIO_STATUS_NEEDS_RESET);
}

/* Run one case on a fresh device; 1 when the device refused it properly. */
static int run_case(struct ctx *c, const struct hostile_case *hc)
{
	if (virtio_init(c->d, BLK_FEATURES, 1)) {
		check(0, "hostile: re-initialisation failed");
		return 0;
	}
	c->q = &c->d->vq[0];
	u32 config_before = c->d->config_irqs;
	memset8(c->buf, 0xA5, GARBAGE_BYTES);
	hc->queue(c);
	vq_kick(c->q);
	wait_until(answered, c, CASE_TICKS);
	u8 status = c->d->ops->get_status(c->d);
	int used = vq_used_pending(c->q);
	int needs_reset = (status & VIRTIO_STATUS_NEEDS_RESET) != 0;
	u8 req_status = c->req->status;
	puts("virtio: hostile ");
	puts(hc->name);
	puts(" device_status=");
	put_hex(status);
	puts(" config_irqs=");
	put_dec(c->d->config_irqs - config_before);
	puts(" outcome=");
	int ok = 0;
	if (needs_reset) {
		puts("needs-reset");
		ok = 1;
	} else if (used && req_status != STATUS_UNSET && req_status != VIRTIO_BLK_S_OK) {
		puts("error-status=");
		put_dec(req_status);
		ok = 1;
	} else if (used) {
		puts("ACCEPTED status=");
		put_dec(req_status);
	} else {
		puts("NO-RESPONSE");
	}
	puts("\n");
	check(ok, hc->name);
	return ok;
}

static int good_request(struct ctx *c, u64 seed)
{
	if (virtio_init(c->d, BLK_FEATURES, 1)) {
		check(0, "hostile: final re-initialisation failed");
		return 0;
	}
	blk_fill(c->buf, seed, c->sector, 1);
	int st = blk_do(c->d, VIRTIO_BLK_T_OUT, c->sector, c->buf, SECTOR, 0);
	puts("virtio: hostile good write status=");
	put_dec((u64)(st < 0 ? 255 : st));
	puts("\n");
	check(st == VIRTIO_BLK_S_OK, "hostile: good write after the reset");
	memset8(c->buf, 0, SECTOR);
	st = blk_do(c->d, VIRTIO_BLK_T_IN, c->sector, c->buf, SECTOR, 0);
	int same = st == VIRTIO_BLK_S_OK && !blk_verify(c->buf, seed, c->sector, 1);
	check(same, "hostile: readback of the good write");
	if (same)
		puts("virtio: hostile good readback ok\n");
	return same;
}

int blk_hostile(struct vdev *d, const char *cmdline)
{
	static struct blk_req req;
	struct ctx c = { d, &d->vq[0], &req, 0, cmdline_num(cmdline, "sector", 16), 0 };
	c.buf = alloc_pages(GARBAGE_BYTES);
	if (virtio_init(d, BLK_FEATURES, 1)) {
		check(0, "hostile: initialisation failed");
		return -1;
	}
	c.capacity = blk_capacity(d);
	if (d->offered & VIRTIO_BLK_F_RO) {
		check(0, "hostile: needs a writable disk");
		return -1;
	}
	u32 refused = 0, ncases = sizeof(cases) / sizeof(cases[0]);
	u64 rounds = cmdline_num(cmdline, "rounds", 1), n = rounds * ncases;
	for (u64 r = 0; r < rounds; r++)
		for (u32 i = 0; i < ncases; i++)
			refused += (u32)run_case(&c, &cases[i]);
	puts("virtio: hostile refused=");
	put_dec(refused);
	puts("/");
	put_dec(n);
	puts("\n");
	if (good_request(&c, cmdline_num(cmdline, "seed", 1)))
		puts("virtio: hostile survived\n");
	return 0;
}
