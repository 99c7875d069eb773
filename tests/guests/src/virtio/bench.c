/* mode=bench: virtio-blk throughput phases for bench/blk.py.
 *
 * Each phase keeps `qd` requests in flight (default 32): it queues qd
 * requests, notifies once, then takes every completed request off the used
 * ring, queues as many new ones and notifies once for the batch; when
 * nothing has completed it sleeps until the device interrupts.  Each slot
 * owns a prebuilt three-descriptor chain (header, data, status), so a
 * request costs the guest a sector number, a status byte and an avail
 * entry.
 *
 * The loop runs in guest user mode (user=1, the default; user.c): this
 * machine's PVM emulates guest kernel-mode instructions (~0.5 us each) but
 * runs user-mode code natively, and at CPL0 the guest alone managed about
 * 20,000 requests a second, less than the VMMs.  At CPL3 it manages about
 * a million (calibrate=N measures it), so the phases measure the VMM.  The
 * kernel is entered only to sleep (sti; hlt until the used ring moves) and
 * for the timer.  user=0 runs the same loop at CPL0.  poll=1 (at CPL3)
 * spins on the used idx instead of sleeping, which also makes the guest a
 * good witness of how the VMM updates it (see "torn" below).
 *
 * Phases (the `phases` word, comma-separated; default all four):
 *   seq-write, seq-read    bs_seq KiB requests (default 1024), sequential
 *                          from sector 0 and wrapping at the end of the
 *                          disk, seq_mb requests (default: the whole disk,
 *                          at most 1024)
 *   rand-write, rand-read  bs_rand KiB requests (default 4) at random
 *                          aligned offsets, rand_ops requests (default 4096)
 * Each write phase is followed by one FLUSH, reported as phase "flush".
 * calibrate=N first runs N requests of the guest alone: the same code
 * against a private ring the guest completes itself.
 *
 * Each phase ends with "bench: result NAME ops= errors= irqs= torn=":
 * torn counts the times the guest read a used idx that cannot be (more
 * completions than requests in flight), i.e. caught the VMM in the middle
 * of a non-atomic update of the field; the guest reads it again.
 *
 * The guest does not time anything: it prints "bench: begin NAME ..." and
 * "bench: end NAME" and the host timestamps the lines as they arrive
 * (bench/common.py run_timed).  A guest clock would need the TSC rate,
 * which neither VMM reports to the guest. */
#include "blk.h"

#define MAX_QD 64
#define KiB 1024u
#define WAIT_TICKS (60 * TICKS_PER_SECOND)
#define USER_STACK 65536
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct phase {
	const char *name;
	u32 type;
	u32 bs;
	int random;
	u64 ops;
};

struct bench {
	struct vdev *d;
	u32 qd;
	u64 capacity;                   /* sectors */
	u64 rng;
	u8 *buf[MAX_QD];
	struct blk_req req[MAX_QD];
	u64 next_seq;                   /* next sequential sector */
	u64 rand_mask;                  /* random blocks: 0..rand_mask */
	int poll;                       /* poll=1: spin instead of sleeping (CPL3 only) */
	u64 errors;
};

static u64 xorshift(u64 *s)
{
	u64 x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Random requests land on the largest power-of-two number of blocks that
 * fits the disk, so the offset is a mask, not a division. */
static u64 next_sector(struct bench *b, const struct phase *p)
{
	u64 per = p->bs / SECTOR;
	if (p->type == VIRTIO_BLK_T_FLUSH)
		return 0;
	if (p->random)
		return (xorshift(&b->rng) & b->rand_mask) * per;
	if (b->next_seq + per > b->capacity)
		b->next_seq = 0;
	u64 s = b->next_seq;
	b->next_seq += per;
	return s;
}

static int used_pending(void *arg) { return vq_used_pending(arg); }

/* What a phase did.  The loop may run at CPL3, where port I/O faults
 * (this PVM does not honour IOPL=3), so problems are noted here and
 * reported by end() at CPL0. */
struct progress {
	u64 submitted, completed, errors;
	u64 torn;                       /* times an impossible used idx was read */
	const char *problem;
	u16 bad_used_idx, bad_last_used;
};

/* "bench: begin NAME ..." ends with the newline the host times as the
 * start; "bench: end NAME" is printed (and timed) before anything else, the
 * counts follow on a "bench: result" line. */
static void begin(const struct phase *p, u32 qd)
{
	puts("bench: begin ");
	puts(p->name);
	puts(" bs=");
	put_dec(p->bs);
	puts(" qd=");
	put_dec(qd);
	puts(" ops=");
	put_dec(p->ops);
	puts("\n");
}

static void end(const struct phase *p, const struct progress *g, u32 irqs)
{
	puts("bench: end ");
	puts(p->name);
	puts("\nbench: result ");
	puts(p->name);
	puts(" ops=");
	put_dec(g->completed);
	puts(" errors=");
	put_dec(g->errors);
	puts(" irqs=");
	put_dec(irqs);
	puts(" torn=");
	put_dec(g->torn);
	puts("\n");
	if (g->torn) {
		puts("bench: ");
		puts(p->name);
		puts(": read an impossible used idx, last ");
		put_dec(g->bad_used_idx);
		puts(" with last_used=");
		put_dec(g->bad_last_used);
		puts("\n");
	}
	if (g->problem) {
		puts("bench: ");
		puts(p->name);
		puts(": ");
		puts(g->problem);
		puts(" used_idx=");
		put_dec(g->bad_used_idx);
		puts(" last_used=");
		put_dec(g->bad_last_used);
		puts("\n");
		check(0, "bench: a phase went wrong");
	}
}

static void set_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	q->desc[i].addr = addr;
	q->desc[i].len = len;
	q->desc[i].flags = flags;
	q->desc[i].next = next;
}

/* Slot i owns descriptors 3i (header), 3i+1 (data), 3i+2 (status), built
 * once per phase; submitting a request is then only its sector, its
 * status byte and an avail entry.  The bench owns the queue: these chains
 * replace the free list vq_add keeps (virtio_init rebuilds it). */
static void build_chains(struct bench *b, struct vq *q, const struct phase *p, u32 qd)
{
	u64 blocks = 1;
	while (p->bs && blocks * 2 * (p->bs / SECTOR) <= b->capacity)
		blocks *= 2;
	b->rand_mask = blocks - 1;
	for (u32 i = 0; i < qd; i++) {
		struct blk_req *r = &b->req[i];
		u16 h = (u16)(3 * i);
		r->hdr.type = p->type;
		r->hdr.reserved = 0;
		r->index = i;
		if (p->type == VIRTIO_BLK_T_FLUSH) {
			set_desc(q, h, (u64)(uptr)&r->hdr, sizeof(r->hdr), VIRTQ_DESC_F_NEXT, (u16)(h + 2));
		} else {
			set_desc(q, h, (u64)(uptr)&r->hdr, sizeof(r->hdr), VIRTQ_DESC_F_NEXT, (u16)(h + 1));
			u16 dir = p->type == VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0;
			set_desc(q, (u16)(h + 1), (u64)(uptr)b->buf[i], p->bs, dir | VIRTQ_DESC_F_NEXT, (u16)(h + 2));
		}
		set_desc(q, (u16)(h + 2), (u64)(uptr)&r->status, 1, VIRTQ_DESC_F_WRITE, 0);
	}
}

static void post(struct bench *b, struct vq *q, const struct phase *p, u32 slot)
{
	struct blk_req *r = &b->req[slot];
	r->hdr.sector = next_sector(b, p);
	r->status = STATUS_UNSET;
	q->avail->ring[q->avail_shadow & (q->size - 1)] = (u16)(3 * slot);
	q->avail_shadow++;
}

static void publish(struct vq *q)
{
	wmb();                                  /* ring entries before idx */
	q->avail->idx = q->avail_shadow;
}

/* Take every used element; resubmit its slot while requests remain. */
static int reap(struct bench *b, struct vq *q, const struct phase *p, struct progress *g)
{
	int posted = 0;
	u16 used_idx;
	u64 torn_since = 0;
	while (q->last_used != (used_idx = q->used->idx)) {
		rmb();
		/* More completions than requests in flight cannot be: a used idx
		 * caught in the middle of a non-atomic update (kvmlite once wrote
		 * it with struct.pack_into, which zeroes the field first).  Count
		 * it and read again. */
		if ((u16)(used_idx - q->last_used) > b->qd) {
			/* The writer may be preempted between its two stores
			 * (2 host CPUs, many threads): allow a second. */
			if (!torn_since) {
				torn_since = ticks + 1;
				g->torn++;
				g->bad_used_idx = used_idx;
				g->bad_last_used = q->last_used;
			}
			if (ticks + 1 - torn_since < TICKS_PER_SECOND)
				continue;
			g->problem = "the used idx stays ahead of the requests in flight";
			g->completed = p->ops;
			return 0;
		}
		torn_since = 0;
		u32 id = q->used->ring[q->last_used & (q->size - 1)].id;
		q->last_used++;
		u32 slot = id / 3;
		if (slot >= b->qd || id % 3) {
			g->problem = "the device returned a head it was never given";
			continue;
		}
		g->completed++;
		g->errors += b->req[slot].status != VIRTIO_BLK_S_OK;
		if (g->submitted < p->ops) {
			post(b, q, p, slot);
			g->submitted++;
			posted = 1;
		}
	}
	return posted;
}

/* The loop of a phase: keep qd requests in flight until p->ops completed.
 * It runs at CPL0 or, through user.c, at CPL3, where it may not halt:
 * sleep() is wait_until() or the user_sleep() system call.  While it has
 * work it asks the device not to interrupt (VIRTQ_AVAIL_F_NO_INTERRUPT,
 * §2.7.7); before sleeping it clears the flag and looks at the used ring
 * once more, so a completion racing with the flag still wakes it. */
struct job {
	struct bench *b;
	const struct phase *p;
	u32 qd;
	int user;
	int poll;
	struct progress g;
};

static int sleep_until_used(struct job *j, struct vq *q)
{
	if (j->poll) {                          /* spin on the used idx (CPL3) */
		u64 end = ticks + WAIT_TICKS;
		while (!vq_used_pending(q))
			if (ticks >= end)
				return 0;
		return 1;
	}
	q->avail->flags = 0;
	mb();                                   /* flag store before the used idx load */
	if (vq_used_pending(q))
		return 1;
	return j->user ? user_sleep(q, WAIT_TICKS) : wait_until(used_pending, q, WAIT_TICKS);
}

static void phase_loop(void *arg)
{
	struct job *j = arg;
	struct bench *b = j->b;
	struct vq *q = &b->d->vq[0];
	for (u32 i = 0; i < j->qd && j->g.submitted < j->p->ops; i++, j->g.submitted++)
		post(b, q, j->p, i);
	publish(q);
	vq_kick(q);
	while (j->g.completed < j->p->ops) {
		if (!vq_used_pending(q) && !sleep_until_used(j, q)) {
			j->g.problem = "requests stopped completing";
			break;
		}
		q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
		if (reap(b, q, j->p, &j->g)) {
			publish(q);
			vq_kick(q);
		}
	}
	q->avail->flags = 0;
	if (j->user)
		user_return();
}

/* One phase; returns the number of requests completed. */
static u64 run_phase(struct bench *b, const struct phase *p, u32 qd, int user)
{
	static u8 *user_stack;
	struct job j = { b, p, qd, user, user && b->poll, { 0, 0, 0, 0, 0, 0, 0 } };
	u32 irqs = b->d->irqs;
	build_chains(b, &b->d->vq[0], p, qd);
	begin(p, qd);
	if (user) {
		if (!user_stack)
			user_stack = alloc_pages(USER_STACK);
		user_call(phase_loop, &j, user_stack + USER_STACK);
	} else {
		phase_loop(&j);
	}
	end(p, &j.g, b->d->irqs - irqs);
	b->errors += j.g.errors;
	return j.g.completed;
}

/* The guest's own cost per request: the same post/reap code against a
 * private ring that the guest completes itself (writing the used element
 * as a device would), with no notification and no interrupt. */
struct calib {
	struct bench *b;
	struct vq *q;
	const struct phase *p;
	struct progress g;
	int user;
};

static void calibrate_loop(void *arg)
{
	struct calib *c = arg;
	struct vq *q = c->q;
	c->g.submitted = 1;
	post(c->b, q, c->p, 0);
	while (c->g.completed < c->p->ops) {
		u16 head = q->avail->ring[(u16)(q->avail_shadow - 1) & (q->size - 1)];
		q->used->ring[q->used->idx & (q->size - 1)].id = head;
		c->b->req[0].status = VIRTIO_BLK_S_OK;
		q->used->idx++;
		reap(c->b, q, c->p, &c->g);
	}
	if (c->user)
		user_return();
}

static void calibrate(struct bench *b, u64 ops, int user)
{
	static struct vq fake;
	static u8 *stack;
	struct phase p = { "calibrate", VIRTIO_BLK_T_IN, 4 * KiB, 1, ops };
	struct calib c = { b, &fake, &p, { 0, 0, 0, 0, 0, 0, 0 }, user };
	fake.size = b->d->vq[0].size;
	fake.desc = alloc_pages(sizeof(struct virtq_desc) * VQ_MAX);
	fake.avail = alloc_pages(6 + 2 * VQ_MAX);
	fake.used = alloc_pages(6 + sizeof(struct virtq_used_elem) * VQ_MAX);
	build_chains(b, &fake, &p, 1);
	begin(&p, 1);
	if (user) {
		stack = alloc_pages(USER_STACK);
		user_call(calibrate_loop, &c, stack + USER_STACK);
	} else {
		calibrate_loop(&c);
	}
	end(&p, &c.g, 0);
}

static int phase_wanted(const char *cmdline, const char *name)
{
	const char *list = 0;
	for (const char *s = cmdline; *s; s++)
		if ((s == cmdline || s[-1] == ' ') && s[0] == 'p' && s[1] == 'h' && s[2] == 'a' && s[3] == 's'
		    && s[4] == 'e' && s[5] == 's' && s[6] == '=')
			list = s + 7;
	if (!list)
		return 1;
	u32 n = 0;
	while (name[n])
		n++;
	for (const char *s = list; *s && *s != ' '; s++) {
		if (s != list && s[-1] != ',')
			continue;
		u32 i = 0;
		while (i < n && s[i] == name[i])
			i++;
		if (i == n && (s[n] == ',' || s[n] == ' ' || s[n] == 0))
			return 1;
	}
	return 0;
}

int blk_bench(struct vdev *d, const char *cmdline)
{
	static struct bench b;
	if (virtio_init(d, BLK_FEATURES, 1)) {
		check(0, "bench: init");
		return -1;
	}
	b.d = d;
	b.capacity = blk_capacity(d);
	b.qd = (u32)cmdline_num(cmdline, "qd", 32);
	b.rng = 0x9E3779B97F4A7C15ull ^ cmdline_num(cmdline, "seed", 1);
	/* three descriptors a request: the ring bounds the depth */
	if (b.qd > MAX_QD)
		b.qd = MAX_QD;
	if (b.qd > d->vq[0].size / 3u)
		b.qd = d->vq[0].size / 3u;
	u32 bs_seq = (u32)cmdline_num(cmdline, "bs_seq", 1024) * KiB;
	u32 bs_rand = (u32)cmdline_num(cmdline, "bs_rand", 4) * KiB;
	u64 whole = b.capacity * SECTOR / bs_seq;
	u64 seq_ops = cmdline_num(cmdline, "seq_mb", whole < 1024 ? whole : 1024);
	u64 rand_ops = cmdline_num(cmdline, "rand_ops", 4096);
	for (u32 i = 0; i < b.qd; i++)
		b.buf[i] = alloc_bytes(bs_seq, 4096);
	puts("bench: disk sectors=");
	put_dec(b.capacity);
	puts(" qd=");
	put_dec(b.qd);
	puts(" queue=");
	put_dec(d->vq[0].size);
	puts(" ro=");
	put_dec((d->offered & VIRTIO_BLK_F_RO) != 0);
	puts(" flush=");
	put_dec((d->features & VIRTIO_BLK_F_FLUSH) != 0);
	puts(" cpl=");
	put_dec(cmdline_num(cmdline, "user", 1) ? 3 : 0);
	puts("\n");

	const struct phase phases[] = {
		{ "seq-write", VIRTIO_BLK_T_OUT, bs_seq, 0, seq_ops },
		{ "seq-read", VIRTIO_BLK_T_IN, bs_seq, 0, seq_ops },
		{ "rand-write", VIRTIO_BLK_T_OUT, bs_rand, 1, rand_ops },
		{ "rand-read", VIRTIO_BLK_T_IN, bs_rand, 1, rand_ops },
	};
	int user = cmdline_num(cmdline, "user", 1) != 0;
	b.poll = cmdline_num(cmdline, "poll", 0) != 0;
	if (user)
		user_init(used_pending);
	if (cmdline_num(cmdline, "calibrate", 0))
		calibrate(&b, cmdline_num(cmdline, "calibrate", 0), user);
	for (u32 i = 0; i < sizeof(phases) / sizeof(phases[0]); i++) {
		const struct phase *p = &phases[i];
		if (!phase_wanted(cmdline, p->name) || !p->ops)
			continue;
		b.next_seq = 0;
		run_phase(&b, p, b.qd, user);
		if (p->type == VIRTIO_BLK_T_OUT && (d->features & VIRTIO_BLK_F_FLUSH)) {
			struct phase f = { "flush", VIRTIO_BLK_T_FLUSH, 0, 0, 1 };
			run_phase(&b, &f, 1, user);
		}
	}
	check(b.errors == 0, "bench: some requests failed");
	return 0;
}
