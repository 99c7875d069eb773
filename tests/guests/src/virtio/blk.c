/* virtio-blk functional checks (mode=test).
 *
 * Writable disk: `count` sectors (default 64) from `sector` (default 16)
 * are written as count/8 requests of 8 sectors, all in flight at once, each
 * sector stamped with blk_stamp(seed, sector, word); then FLUSH, a read of
 * the whole range compared word by word, GET_ID, and a read past the end
 * of the disk, which must fail.  Read-only disk (VIRTIO_BLK_F_RO offered):
 * one write, which must fail, then the same read, GET_ID and past-the-end
 * checks.  Every request's status is printed; the FNV-1a of what was read
 * lets the host compare it with the image file. */
#include "blk.h"

#define BATCH_SECTORS 8
#define MAX_COUNT 256
#define REQUEST_TICKS (10 * TICKS_PER_SECOND)

u64 blk_capacity(struct vdev *d)
{
	/* §5.2.4: le64 capacity at 0, read as two dwords; §2.5.1 would retry on
	 * a configuration generation change, which a disk never has here. */
	return d->ops->config_read32(d, 0) | (u64)d->ops->config_read32(d, 4) << 32;
}

const char *blk_type_name(u32 type)
{
	switch (type) {
	case VIRTIO_BLK_T_IN: return "read";
	case VIRTIO_BLK_T_OUT: return "write";
	case VIRTIO_BLK_T_FLUSH: return "flush";
	case VIRTIO_BLK_T_GET_ID: return "get-id";
	default: return "other";
	}
}

int blk_submit(struct vdev *d, struct blk_req *r, u32 type, u64 sector, void *buf, u32 len)
{
	struct vbuf out[2], in[2];
	int nout = 0, nin = 0;
	r->hdr.type = type;
	r->hdr.reserved = 0;
	r->hdr.sector = sector;
	r->status = STATUS_UNSET;
	r->done = 0;
	r->used_len = 0;
	out[nout++] = (struct vbuf){ (u64)(uptr)&r->hdr, sizeof(r->hdr) };
	if (len && type == VIRTIO_BLK_T_OUT)
		out[nout++] = (struct vbuf){ (u64)(uptr)buf, len };
	else if (len)
		in[nin++] = (struct vbuf){ (u64)(uptr)buf, len };
	in[nin++] = (struct vbuf){ (u64)(uptr)&r->status, 1 };
	return vq_add(&d->vq[0], out, nout, in, nin, r) < 0 ? -1 : 0;
}

int blk_reap(struct vdev *d)
{
	int n = 0;
	u32 len;
	void *token;
	int head;
	while ((head = vq_get_used(&d->vq[0], &len, &token)) != -1) {
		if (head < 0) {
			check(0, "blk: the device returned a descriptor index it was never given");
			continue;
		}
		struct blk_req *r = token;
		r->used_len = len;
		r->done = 1;
		n++;
	}
	return n;
}

static int used_pending(void *arg) { return vq_used_pending(arg); }

/* Wait until `r` completed (reaping whatever else completes meanwhile). */
static int blk_wait_for(struct vdev *d, struct blk_req *r, u64 timeout)
{
	u64 end = ticks + timeout;
	for (;;) {
		blk_reap(d);
		if (r->done)
			return 1;
		if (ticks >= end || !wait_until(used_pending, &d->vq[0], end - ticks))
			return r->done;
	}
}

int blk_do(struct vdev *d, u32 type, u64 sector, void *buf, u32 len, u32 *used_len)
{
	static struct blk_req req;
	if (blk_submit(d, &req, type, sector, buf, len))
		return -1;
	vq_kick(&d->vq[0]);
	if (!blk_wait_for(d, &req, REQUEST_TICKS))
		return -1;
	if (used_len)
		*used_len = req.used_len;
	return req.status;
}

void blk_fill(void *buf, u64 seed, u64 sector, u32 sectors)
{
	u64 *w = buf;
	for (u32 s = 0; s < sectors; s++)
		for (u32 i = 0; i < SECTOR / 8; i++)
			*w++ = blk_stamp(seed, sector + s, i);
}

u32 blk_verify(const void *buf, u64 seed, u64 sector, u32 sectors)
{
	const u64 *w = buf;
	for (u32 s = 0; s < sectors; s++)
		for (u32 i = 0; i < SECTOR / 8; i++)
			if (*w++ != blk_stamp(seed, sector + s, i))
				return s + 1;
	return 0;
}

u32 fnv1a32(const u8 *p, u64 n)
{
	u32 h = 0x811C9DC5u;
	for (u64 i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x01000193u;
	return h;
}

static void report(const char *what, u64 sector, u64 sectors, int status)
{
	puts("virtio: blk ");
	puts(what);
	puts(" sector=");
	put_dec(sector);
	puts(" sectors=");
	put_dec(sectors);
	puts(" status=");
	if (status < 0)
		puts("timeout");
	else
		put_dec((u64)status);
	puts("\n");
}

/* All writes in flight at once, then one wait for all of them. */
static int write_batched(struct vdev *d, void *buf, u64 sector, u32 count)
{
	static struct blk_req reqs[MAX_COUNT / BATCH_SECTORS];
	u32 n = (count + BATCH_SECTORS - 1) / BATCH_SECTORS;
	for (u32 i = 0; i < n; i++) {
		u32 first = i * BATCH_SECTORS;
		u32 sectors = count - first < BATCH_SECTORS ? count - first : BATCH_SECTORS;
		if (blk_submit(d, &reqs[i], VIRTIO_BLK_T_OUT, sector + first, (u8 *)buf + first * SECTOR,
			       sectors * SECTOR))
			return 0;
	}
	vq_kick(&d->vq[0]);
	int ok = 1;
	for (u32 i = 0; i < n; i++) {
		u32 first = i * BATCH_SECTORS;
		u32 sectors = count - first < BATCH_SECTORS ? count - first : BATCH_SECTORS;
		int done = blk_wait_for(d, &reqs[i], REQUEST_TICKS);
		report("write", sector + first, sectors, done ? reqs[i].status : -1);
		ok &= done && reqs[i].status == VIRTIO_BLK_S_OK;
	}
	return ok;
}

static void read_and_report(struct vdev *d, void *buf, u64 sector, u32 count)
{
	memset8(buf, 0, (u64)count * SECTOR);
	int st = blk_do(d, VIRTIO_BLK_T_IN, sector, buf, count * SECTOR, 0);
	report("read", sector, count, st);
	check(st == VIRTIO_BLK_S_OK, "blk read");
	puts("virtio: blk read fnv1a=");
	put_hex(fnv1a32(buf, (u64)count * SECTOR));
	puts("\n");
}

static void get_id(struct vdev *d)
{
	static u8 id[VIRTIO_BLK_ID_BYTES + 1];
	u32 len = 0;
	int st = blk_do(d, VIRTIO_BLK_T_GET_ID, 0, id, VIRTIO_BLK_ID_BYTES, &len);
	puts("virtio: blk get-id status=");
	put_dec((u64)(st < 0 ? 255 : st));
	puts(" serial=");
	for (int i = 0; i < VIRTIO_BLK_ID_BYTES && id[i]; i++)
		serial_putc(id[i] >= 0x20 && id[i] < 0x7F ? (char)id[i] : '?');
	puts("\n");
	check(st == VIRTIO_BLK_S_OK, "blk get-id");
}

static void past_the_end(struct vdev *d, void *buf, u64 capacity)
{
	int st = blk_do(d, VIRTIO_BLK_T_IN, capacity, buf, SECTOR, 0);
	report("read-past-end", capacity, 1, st);
	check(st > VIRTIO_BLK_S_OK, "blk read past the end must fail");
}

int blk_test(struct vdev *d, const char *cmdline)
{
	if (virtio_init(d, BLK_FEATURES, 1)) {
		check(0, "blk init");
		return -1;
	}
	u64 capacity = blk_capacity(d);
	int ro = (d->offered & VIRTIO_BLK_F_RO) != 0;
	u64 sector = cmdline_num(cmdline, "sector", 16);
	u32 count = (u32)cmdline_num(cmdline, "count", 64);
	u64 seed = cmdline_num(cmdline, "seed", 1);
	puts("virtio: blk capacity=");
	put_dec(capacity);
	puts(" ro=");
	put_dec((u64)ro);
	puts(" flush=");
	put_dec((d->features & VIRTIO_BLK_F_FLUSH) != 0);
	puts(" features=");
	put_hex(d->features);
	puts(" queue=");
	put_dec(d->vq[0].size);
	puts("\n");
	if (!count || count > MAX_COUNT || sector + count > capacity) {
		check(0, "blk: sector/count outside the disk (or count > 256)");
		return -1;
	}
	void *wbuf = alloc_pages((u64)count * SECTOR);
	void *rbuf = alloc_pages((u64)count * SECTOR);
	blk_fill(wbuf, seed, sector, count);
	if (ro) {
		int st = blk_do(d, VIRTIO_BLK_T_OUT, sector, wbuf, count * SECTOR, 0);
		report("write", sector, count, st);
		check(st > VIRTIO_BLK_S_OK, "blk write to a read-only disk must fail");
		if (st > VIRTIO_BLK_S_OK)
			puts("virtio: blk ro write refused\n");
		read_and_report(d, rbuf, sector, count);
	} else {
		int ok = write_batched(d, wbuf, sector, count);
		check(ok, "blk write");
		if (ok)
			puts("virtio: blk write ok\n");
		if (d->features & VIRTIO_BLK_F_FLUSH) {
			int st = blk_do(d, VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
			report("flush", 0, 0, st);
			check(st == VIRTIO_BLK_S_OK, "blk flush");
			if (st == VIRTIO_BLK_S_OK)
				puts("virtio: blk flush ok\n");
		} else {
			check(0, "blk: VIRTIO_BLK_F_FLUSH not offered");
		}
		read_and_report(d, rbuf, sector, count);
		u32 bad = blk_verify(rbuf, seed, sector, count);
		check(!bad, "blk readback differs from what was written");
		if (!bad) {
			puts("virtio: blk readback ok\n");
		} else {
			puts("virtio: blk readback mismatch at sector ");
			put_dec(sector + bad - 1);
			puts("\n");
		}
	}
	get_id(d);
	past_the_end(d, rbuf, capacity);
	return 0;
}

static int never(void *arg) { (void)arg; return 0; }

/* mode=blk-rounds: for snapshot tests.  Round n writes sector n % 64 with
 * seed n, reads back sector (n - 1) % 64 (written by the round before,
 * perhaps before a snapshot) and checks it, prints "round n ok" (or
 * "round n bad"), then sleeps 20 ms on the LAPIC timer; forever, until the
 * timeout= watchdog ends the guest. */
int blk_rounds(struct vdev *d, const char *cmdline)
{
	(void)cmdline;
	if (virtio_init(d, BLK_FEATURES, 1)) {
		check(0, "blk init");
		return -1;
	}
	void *buf = alloc_pages(SECTOR);
	for (u64 n = 1;; n++) {
		u64 sector = n % 64, prev = (n - 1) % 64;
		blk_fill(buf, n, sector, 1);
		int bad = blk_do(d, VIRTIO_BLK_T_OUT, sector, buf, SECTOR, 0) != VIRTIO_BLK_S_OK;
		if (n > 1) {
			memset8(buf, 0, SECTOR);
			bad |= blk_do(d, VIRTIO_BLK_T_IN, prev, buf, SECTOR, 0) != VIRTIO_BLK_S_OK;
			bad |= blk_verify(buf, n - 1, prev, 1) != 0;
		}
		puts("round ");
		put_dec(n);
		puts(bad ? " bad\n" : " ok\n");
		wait_until(never, 0, 2);
	}
}
