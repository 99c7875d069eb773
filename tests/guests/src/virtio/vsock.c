/* virtio-vsock (virtio 1.2 §5.10) for the test guest: a minimal stream
 * driver on the rx (0), tx (1) and event (2) queues, and one program,
 * mode=vsock, that drives kvmlite's device against host programs on its
 * Unix sockets (docs/vsock.md):
 *
 *   listen=P2        accept one connection from the host on guest port P2
 *                    (the host writes "CONNECT P2\n" on the VM's socket);
 *                    send it listen_bytes=N bytes, then SHUTDOWN SEND; it
 *                    ends when the host closes (SHUTDOWN RCV|SEND), which
 *                    the guest answers with RST (§5.10.6.4)
 *   port=P1          connect to host CID 2 port P1 (the test's listener on
 *                    <socket>_P1); send bytes=N bytes, read until the host
 *                    half-closes (SHUTDOWN SEND), then close (SHUTDOWN
 *                    RCV|SEND) and wait for the device's RST
 *   closed_port=P3   connect to port P3, where nothing listens: RST
 *
 * The three run at once in one event loop.  What the guest sends is a
 * pattern of 64-bit little-endian words, word i = mix(seed + i) (below;
 * tests/kvm/test_vsock.py computes the same); what it receives is
 * checksummed as it comes.  Checksum: FNV-1a over the stream's 64-bit LE
 * words, the last one zero-padded.
 *
 * Flow control (§5.10.6.3): the guest advertises buf_alloc=BYTES (default
 * 64 KiB) and consumes every payload at once; it sends CREDIT_UPDATE once
 * half of it was consumed since it last told the host, and whenever asked
 * (CREDIT_REQUEST).  It checks that no packet goes past the credit of the
 * newest fwd_cnt it sent (the host may have seen an older one, so this
 * only catches a host that overruns by more than that).  It sends only
 * within the host's credit (peer buf_alloc - (tx_cnt - peer fwd_cnt)) and,
 * out of credit, waits for the device's CREDIT_UPDATE without asking, as
 * Linux's driver does.
 *
 * Lines: "virtio: vsock up cid=C ...", "virtio: vsock listening port=P2",
 * "virtio: vsock connected/refused/accepted ...", "virtio: vsock credit
 * wait port=P sent=N" the first time a connection runs out of the host's
 * credit, one "virtio: vsock stream ..." per connection when it ends (its
 * counts, checksums, the SHUTDOWN flags it got, how it closed, credit
 * counters), "virtio: vsock ok".  Every wait is bounded:
 * vsock_timeout=SECONDS (default 30) without progress fails. */
#include "virtio.h"

#define RXQ 0
#define TXQ 1
#define EVENTQ 2

/* §5.10.3, §5.10.4 */
#define VIRTIO_VSOCK_F_STREAM (1ull << 0)
#define CONFIG_GUEST_CID 0                  /* le64 guest_cid */
#define HOST_CID 2

/* §5.10.6: struct virtio_vsock_hdr, types, ops, SHUTDOWN flags */
struct vsock_hdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
_Static_assert(sizeof(struct vsock_hdr) == 44, "§5.10.6: the header is 44 bytes");

#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_RCV 1
#define SHUTDOWN_SEND 2
#define SHUTDOWN_BOTH 3

#define RX_BUFFERS 64                       /* header + payload chains on the rx queue */
#define RX_PAYLOAD_MAX 65536
#define EVENT_BUFFERS 4
#define TX_SLOTS VQ_MAX                     /* one header per tx chain */
#define TX_RESERVE 8                        /* descriptors kept for control packets */
#define CHUNK 40001                         /* payload per RW packet: odd, so packets split words */
#define FIRST_LOCAL_PORT 49152
#define MAX_CONNS 4

/* --- the stream pattern and the checksum (test_vsock.py has both too) --- */

typedef u64 __attribute__((aligned(1), may_alias)) u64_unaligned;

static u64 pattern_word(u64 seed, u64 i)
{
	u64 z = (seed + i) * 0x9E3779B97F4A7C15ull;
	return z ^ (z >> 31);
}

struct sum { u64 h, partial, n; };

static void sum_init(struct sum *s) { s->h = 0xCBF29CE484222325ull; s->partial = 0; s->n = 0; }
static u64 fnv(u64 h, u64 w) { return (h ^ w) * 0x100000001B3ull; }

/* Add bytes at stream offset s->n: single bytes up to a word boundary of
 * the stream, then whole (unaligned) words, then the rest. */
static void sum_add(struct sum *s, const u8 *p, u64 n)
{
	for (; n && (s->n & 7); n--, p++) {
		s->partial |= (u64)*p << (8 * (s->n & 7));
		if ((++s->n & 7) == 0) {
			s->h = fnv(s->h, s->partial);
			s->partial = 0;
		}
	}
	for (; n >= 8; n -= 8, p += 8, s->n += 8)
		s->h = fnv(s->h, *(const u64_unaligned *)p);
	for (; n; n--, p++, s->n++)
		s->partial |= (u64)*p << (8 * (s->n & 7));
}

static u64 sum_value(const struct sum *s) { return s->n & 7 ? fnv(s->h, s->partial) : s->h; }

/* The pattern and the checksums touch every byte, so they run in user
 * mode: this machine's PVM emulates CPL0 code at ~0.4 us an instruction
 * but runs CPL3 code natively (user.c).  A call costs one iretq and one
 * #UD back. */
#define USER_STACK 16384

struct job { struct sum *s; const u8 *p; u64 n; u64 seed; };

static void sum_job(void *arg)
{
	struct job *j = arg;
	sum_add(j->s, j->p, j->n);
	user_return();
}

static void pattern_job(void *arg)
{
	struct job *j = arg;
	u64 *w = (u64 *)j->p;
	for (u64 i = 0; i < j->n / 8; i++)
		w[i] = pattern_word(j->seed, i);
	user_return();
}

static void at_cpl3(void (*fn)(void *), struct job *j)
{
	static u8 *stack;
	if (!stack)
		stack = alloc_pages(USER_STACK);
	user_call(fn, j, stack + USER_STACK);
}

static void sum_bytes(struct sum *s, const u8 *p, u64 n)
{
	struct job j = { .s = s, .p = p, .n = n };
	at_cpl3(sum_job, &j);
}

/* --- connections --- */

enum state { FREE, CONNECTING, ESTABLISHED, CLOSING, CLOSED };
enum close_how { CLOSE_FULL, CLOSE_HALF };   /* see the programs above */

struct conn {
	enum state state;
	const char *role;                       /* "connect" or "accept" */
	enum close_how how;
	u32 local_port, peer_port;
	/* sending: data[0..total) */
	const u8 *data;
	u64 total, sent;
	struct sum tx_sum;
	u32 tx_cnt, peer_buf_alloc, peer_fwd_cnt;
	int out_of_credit;                      /* waiting for the host's credit */
	u32 credit_waits;                       /* times that happened */
	u32 shutdown_sent;                      /* flags */
	/* receiving (§5.10.6.3: we are the receiver) */
	struct sum rx_sum;
	u32 rx_cnt, fwd_cnt, advertised;        /* advertised: fwd_cnt of our last packet */
	u32 peak;                               /* most bytes received past our newest fwd_cnt */
	u32 shutdown_rcvd;                      /* flags the host sent */
	u32 credit_updates, credit_requests;    /* sent, received */
	const char *closed;                     /* how it ended */
};

struct vsock {
	struct vdev *d;
	u64 cid;
	u32 buf_alloc;                          /* what we advertise */
	u32 rx_payload;
	u32 listen_port;
	u32 accepted;
	const u8 *accept_data;                  /* what the accepted connection sends */
	u64 accept_total;
	u64 timeout;
	struct conn conns[MAX_CONNS];
	u32 next_port;
	u32 unexpected;                         /* packets for no connection */
};

static struct vsock vs;
static struct vsock_hdr rx_hdr[RX_BUFFERS];
static u8 *rx_payload[RX_BUFFERS];
static struct vsock_hdr tx_hdr[TX_SLOTS];
static u8 tx_busy[TX_SLOTS];
static u32 events[EVENT_BUFFERS];

static int never(void *arg) { (void)arg; return 0; }

static int queues_pending(void *arg)
{
	(void)arg;
	return vq_used_pending(&vs.d->vq[RXQ]) || vq_used_pending(&vs.d->vq[TXQ]);
}

static int used_pending(void *arg) { return vq_used_pending(arg); }

/* Notify the device of new tx chains, once per batch. */
static void tx_kick(void)
{
	static u16 kicked;
	struct vq *q = &vs.d->vq[TXQ];
	if (q->avail_shadow != kicked) {
		kicked = q->avail_shadow;
		vq_kick(q);
	}
}

static void put_port_line(const char *what, const struct conn *c)
{
	puts("virtio: vsock ");
	puts(what);
	puts(" port=");
	put_dec(c->role[0] == 'a' ? c->local_port : c->peer_port);
	puts(" local=");
	put_dec(c->local_port);
	puts(" peer=");
	put_dec(c->peer_port);
	puts(" peer_buf_alloc=");
	put_dec(c->peer_buf_alloc);
	puts("\n");
}

static struct conn *conn_new(const char *role, u32 local, u32 peer)
{
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &vs.conns[i];
		if (c->state == FREE) {
			*c = (struct conn){ .role = role, .local_port = local, .peer_port = peer };
			sum_init(&c->tx_sum);
			sum_init(&c->rx_sum);
			return c;
		}
	}
	return 0;
}

static struct conn *conn_find(u32 local, u32 peer)
{
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &vs.conns[i];
		if (c->state != FREE && c->state != CLOSED && c->local_port == local && c->peer_port == peer)
			return c;
	}
	return 0;
}

/* --- tx: every packet is a header, RW ones with their payload in a second
 *     descriptor pointing straight into the pattern (§2.7.4) --- */

static int tx_reap(void)
{
	int n = 0;
	void *token;
	while (vq_get_used(&vs.d->vq[TXQ], 0, &token) >= 0) {
		tx_busy[(struct vsock_hdr *)token - tx_hdr] = 0;
		n++;
	}
	return n;
}

static struct vsock_hdr *tx_slot(void)
{
	for (int i = 0; i < TX_SLOTS; i++)
		if (!tx_busy[i]) {
			tx_busy[i] = 1;
			return &tx_hdr[i];
		}
	return 0;
}

/* Queue one packet of `c` (kicked by the caller).  Every packet carries our
 * buf_alloc and fwd_cnt (§5.10.6.3), so each one advertises credit. */
static int tx_packet(struct conn *c, u16 op, u32 flags, const u8 *payload, u32 len)
{
	struct vq *q = &vs.d->vq[TXQ];
	struct vsock_hdr *h = 0;
	int need = payload ? 2 : 1;
	/* a data packet leaves TX_RESERVE descriptors for control packets;
	 * a control packet waits for the device to return some if it must */
	while (q->num_free < need + (payload ? TX_RESERVE : 0) || !(h = tx_slot())) {
		if (payload)
			return 0;
		tx_kick();
		if (!tx_reap() && !wait_until(used_pending, q, vs.timeout)) {
			check(0, "vsock: the device returns no tx buffers");
			return 0;
		}
	}
	*h = (struct vsock_hdr){ .src_cid = vs.cid, .dst_cid = HOST_CID, .src_port = c->local_port,
				 .dst_port = c->peer_port, .len = payload ? len : 0, .type = TYPE_STREAM,
				 .op = op, .flags = flags, .buf_alloc = vs.buf_alloc, .fwd_cnt = c->fwd_cnt };
	struct vbuf out[2] = { { (u64)(uptr)h, sizeof(*h) }, { (u64)(uptr)payload, len } };
	vq_add(q, out, need, 0, 0, h);
	c->advertised = c->fwd_cnt;
	return 1;
}

/* An RST to a packet that belongs to no connection (§5.10.6.4). */
static void tx_rst_reply(const struct vsock_hdr *to)
{
	struct conn tmp = { .local_port = to->dst_port, .peer_port = to->src_port };
	tx_packet(&tmp, OP_RST, 0, 0, 0);
}

/* Send what the host's credit allows, in CHUNK-byte packets; 1 if any went. */
static int tx_data(struct conn *c)
{
	int progress = 0;
	while (c->state == ESTABLISHED && c->sent < c->total && !(c->shutdown_rcvd & SHUTDOWN_RCV)) {
		u32 in_flight = c->tx_cnt - c->peer_fwd_cnt;     /* u32 counters wrap */
		u32 credit = in_flight < c->peer_buf_alloc ? c->peer_buf_alloc - in_flight : 0;
		if (!credit) {
			if (!c->out_of_credit && !c->credit_waits++) {
				puts("virtio: vsock credit wait port=");
				put_dec(c->role[0] == 'a' ? c->local_port : c->peer_port);
				puts(" sent=");
				put_dec(c->sent);
				puts("\n");
			}
			c->out_of_credit = 1;
			break;
		}
		c->out_of_credit = 0;
		u64 left = c->total - c->sent;
		u32 len = (u32)(left < CHUNK ? left : CHUNK);
		len = len < credit ? len : credit;
		if (!tx_packet(c, OP_RW, 0, c->data + c->sent, len))
			break;
		sum_bytes(&c->tx_sum, c->data + c->sent, len);
		c->sent += len;
		c->tx_cnt += len;
		progress = 1;
	}
	return progress;
}

/* What a connection does once its data is out (the programs above). */
static int tx_close(struct conn *c)
{
	if (c->state != ESTABLISHED || c->sent < c->total)
		return 0;
	if (c->how == CLOSE_HALF && !c->shutdown_sent) {
		c->shutdown_sent = SHUTDOWN_SEND;
		return tx_packet(c, OP_SHUTDOWN, SHUTDOWN_SEND, 0, 0);
	}
	if (c->how == CLOSE_FULL && (c->shutdown_rcvd & SHUTDOWN_SEND)) {
		c->shutdown_sent = SHUTDOWN_BOTH;   /* close(): wait for the device's RST */
		c->state = CLOSING;
		return tx_packet(c, OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0);
	}
	return 0;
}

static int tx_pump(void)
{
	int progress = 0;
	for (int i = 0; i < MAX_CONNS; i++) {
		progress |= tx_data(&vs.conns[i]);
		progress |= tx_close(&vs.conns[i]);
	}
	tx_kick();
	return progress;
}

/* --- rx: packets from the host --- */

/* An rx chain: the header and the payload in two device-writable buffers
 * (§2.7.4: how a message is split over buffers is the driver's choice). */
static void rx_post(struct vq *q, u32 i)
{
	if (!rx_payload[i])
		rx_payload[i] = alloc_pages(vs.rx_payload);
	struct vbuf in[2] = { { (u64)(uptr)&rx_hdr[i], sizeof(rx_hdr[i]) }, { (u64)(uptr)rx_payload[i], vs.rx_payload } };
	vq_add(q, 0, 0, in, 2, &rx_hdr[i]);
}

static void end(struct conn *c, const char *how)
{
	c->state = CLOSED;
	c->closed = how;
	puts("virtio: vsock stream port=");
	put_dec(c->role[0] == 'a' ? c->local_port : c->peer_port);
	puts(" role=");
	puts(c->role);
	puts(" sent=");
	put_dec(c->sent);
	puts(" sent_sum=");
	put_hex(sum_value(&c->tx_sum));
	puts(" received=");
	put_dec(c->rx_sum.n);
	puts(" received_sum=");
	put_hex(sum_value(&c->rx_sum));
	puts(" shutdown=");
	put_dec(c->shutdown_rcvd);
	puts(" closed=");
	puts(how);
	puts(" peak=");
	put_dec(c->peak);
	puts(" credit_updates=");
	put_dec(c->credit_updates);
	puts(" credit_requests=");
	put_dec(c->credit_requests);
	puts(" credit_waits=");
	put_dec(c->credit_waits);
	puts("\n");
}

static void send_credit_update(struct conn *c)
{
	if (tx_packet(c, OP_CREDIT_UPDATE, 0, 0, 0))
		c->credit_updates++;
}

/* §5.10.6.3: the host may have at most buf_alloc - (rx_cnt - fwd_cnt we
 * advertised) bytes in flight; the payload is consumed (checksummed) at
 * once, so fwd_cnt follows rx_cnt, and the host hears of it every half
 * buffer. */
static void rx_data(struct conn *c, const struct vsock_hdr *h, const u8 *payload)
{
	u32 in_flight = c->rx_cnt + h->len - c->advertised;
	if (in_flight > c->peak)
		c->peak = in_flight;
	check(in_flight <= vs.buf_alloc, "vsock: the host sent beyond the credit it was given");
	check(!(c->shutdown_rcvd & SHUTDOWN_SEND), "vsock: data after the host's SHUTDOWN SEND");
	sum_bytes(&c->rx_sum, payload, h->len);
	c->rx_cnt += h->len;
	c->fwd_cnt = c->rx_cnt;
	if (c->fwd_cnt - c->advertised >= vs.buf_alloc / 2)
		send_credit_update(c);
}

static void rx_shutdown(struct conn *c, u32 flags)
{
	c->shutdown_rcvd |= flags & SHUTDOWN_BOTH;
	if (c->shutdown_rcvd == SHUTDOWN_BOTH && c->state == ESTABLISHED) {
		/* the host closed: answer RST (as Linux's driver does) and forget */
		tx_packet(c, OP_RST, 0, 0, 0);
		end(c, "shutdown");
	}
}

static void rx_request(const struct vsock_hdr *h)
{
	struct conn *c = 0;
	if (h->dst_port == vs.listen_port && !vs.accepted)
		c = conn_new("accept", h->dst_port, h->src_port);
	if (!c) {
		vs.unexpected++;
		tx_rst_reply(h);
		return;
	}
	vs.accepted++;
	c->how = CLOSE_HALF;
	c->data = vs.accept_data;
	c->total = vs.accept_total;
	c->state = ESTABLISHED;
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	tx_packet(c, OP_RESPONSE, 0, 0, 0);
	put_port_line("accepted", c);
}

static void rx_conn(struct conn *c, const struct vsock_hdr *h, const u8 *payload)
{
	c->peer_buf_alloc = h->buf_alloc;       /* every packet carries the host's credit */
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		check(c->state == CONNECTING, "vsock: RESPONSE on a connection not connecting");
		if (c->state == CONNECTING) {
			c->state = ESTABLISHED;
			put_port_line("connected", c);
		}
		break;
	case OP_RST:
		if (c->state == CONNECTING) {
			put_port_line("refused", c);
			end(c, "refused");
		} else {
			end(c, c->state == CLOSING ? "rst" : "reset");
		}
		break;
	case OP_RW:
		check(c->state == ESTABLISHED || c->state == CLOSING, "vsock: data before the connection");
		rx_data(c, h, payload);
		break;
	case OP_SHUTDOWN:
		rx_shutdown(c, h->flags);
		break;
	case OP_CREDIT_REQUEST:
		c->credit_requests++;
		send_credit_update(c);
		break;
	case OP_CREDIT_UPDATE:
		break;                          /* the credit is taken above */
	default:
		check(0, "vsock: unexpected op on a connection");
	}
}

static void rx_packet(const struct vsock_hdr *h, u32 used, const u8 *payload)
{
	if (used < sizeof(*h) || used != sizeof(*h) + h->len || h->len > vs.rx_payload) {
		check(0, "vsock: used length does not match the header's len");
		return;
	}
	check(h->src_cid == HOST_CID && h->dst_cid == vs.cid, "vsock: a packet not from CID 2 to us");
	check(h->type == TYPE_STREAM, "vsock: a packet that is not a stream's");
	check(h->op == OP_RW || h->len == 0, "vsock: payload on a control packet");
	struct conn *c = conn_find(h->dst_port, h->src_port);
	if (c)
		rx_conn(c, h, payload);
	else if (h->op == OP_REQUEST)
		rx_request(h);
	else if (h->op != OP_RST) {             /* never answer an RST */
		vs.unexpected++;
		tx_rst_reply(h);
	}
}

static int rx_take(void)
{
	struct vq *q = &vs.d->vq[RXQ];
	int n = 0;
	u32 used;
	void *token;
	int head;
	while ((head = vq_get_used(q, &used, &token)) != -1) {
		if (head == -2) {
			check(0, "vsock: the device used a descriptor it was never given");
			continue;
		}
		u32 i = (u32)((struct vsock_hdr *)token - rx_hdr);
		/* the header is copied out: the buffer goes back before the next is read */
		struct vsock_hdr h = rx_hdr[i];
		rx_packet(&h, used, rx_payload[i]);
		rx_post(q, i);
		n++;
	}
	if (n)
		vq_kick(q);
	return n;
}

/* --- the program --- */

static int done(void)
{
	for (int i = 0; i < MAX_CONNS; i++)
		if (vs.conns[i].state != FREE && vs.conns[i].state != CLOSED)
			return 0;
	return !vs.listen_port || vs.accepted;
}

static void connect_to(u32 port, const u8 *data, u64 total)
{
	struct conn *c = conn_new("connect", vs.next_port++, port);
	c->state = CONNECTING;
	c->how = CLOSE_FULL;
	c->data = data;
	c->total = total;
	tx_packet(c, OP_REQUEST, 0, 0, 0);
}

static void stuck(void)
{
	check(0, "vsock: no progress");
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &vs.conns[i];
		if (c->state == FREE || c->state == CLOSED)
			continue;
		puts("virtio: vsock stuck local=");
		put_dec(c->local_port);
		puts(" state=");
		put_dec(c->state);
		puts(" sent=");
		put_dec(c->sent);
		puts(" received=");
		put_dec(c->rx_sum.n);
		puts(" tx_cnt=");
		put_dec(c->tx_cnt);
		puts(" peer_fwd_cnt=");
		put_dec(c->peer_fwd_cnt);
		puts(" peer_buf_alloc=");
		put_dec(c->peer_buf_alloc);
		puts("\n");
	}
}

/* One event loop for every connection: take what came, send what may go,
 * sleep until the device uses a buffer. */
static void run(void)
{
	u64 last = ticks;
	while (!done()) {
		int progress = tx_reap() | rx_take() | tx_pump();
		if (progress) {
			last = ticks;
			continue;
		}
		if (ticks - last > vs.timeout) {
			stuck();
			return;
		}
		wait_until(queues_pending, 0, TICKS_PER_SECOND);
	}
	/* The device has taken every packet (the last RST included) before the
	 * guest exits, so its counters are final. */
	tx_kick();
	while (vs.d->vq[TXQ].num_free != vs.d->vq[TXQ].size)
		if (!tx_reap() && !wait_until(used_pending, &vs.d->vq[TXQ], vs.timeout)) {
			check(0, "vsock: the device keeps tx buffers");
			return;
		}
}

static int vsock_up(struct vdev *d, const char *cmdline)
{
	if (virtio_init(d, VIRTIO_VSOCK_F_STREAM, 3)) {
		check(0, "vsock: init");
		return -1;
	}
	vs.d = d;
	vs.cid = d->ops->config_read32(d, CONFIG_GUEST_CID) | (u64)d->ops->config_read32(d, CONFIG_GUEST_CID + 4) << 32;
	vs.buf_alloc = (u32)cmdline_num(cmdline, "buf_alloc", 64 * 1024);
	u64 payload = cmdline_num(cmdline, "rx_buffer", 8192);
	vs.rx_payload = (u32)(payload < 1 ? 1 : payload > RX_PAYLOAD_MAX ? RX_PAYLOAD_MAX : payload);
	vs.timeout = cmdline_num(cmdline, "vsock_timeout", 30) * TICKS_PER_SECOND;
	vs.next_port = FIRST_LOCAL_PORT;
	puts("virtio: vsock up cid=");
	put_dec(vs.cid);
	puts(" features=");
	put_hex(d->features);
	puts(" buf_alloc=");
	put_dec(vs.buf_alloc);
	puts(" rx_buffer=");
	put_dec(vs.rx_payload);
	puts("\n");
	check(d->features & VIRTIO_VSOCK_F_STREAM, "vsock: VIRTIO_VSOCK_F_STREAM not offered");
	for (u32 i = 0; i < RX_BUFFERS; i++)
		rx_post(&d->vq[RXQ], i);
	vq_kick(&d->vq[RXQ]);
	for (u32 i = 0; i < EVENT_BUFFERS; i++) {     /* §5.10.6.6: for a transport reset */
		struct vbuf in = { (u64)(uptr)&events[i], sizeof(events[i]) };
		vq_add(&d->vq[EVENTQ], 0, 0, &in, 1, &events[i]);
	}
	vq_kick(&d->vq[EVENTQ]);
	return 0;
}

int vsock_test(struct vdev *d, const char *cmdline)
{
	if (vsock_up(d, cmdline))
		return -1;
	u64 seed = cmdline_num(cmdline, "seed", 1);
	u64 bytes = cmdline_num(cmdline, "bytes", 0), listen_bytes = cmdline_num(cmdline, "listen_bytes", 0);
	/* one pattern: the first `bytes` go to port=, the next `listen_bytes` to the host's connection */
	struct job j = { .n = (bytes + listen_bytes + 7) & ~7ull, .seed = seed };
	u64 *pattern = alloc_bytes(j.n, 4096);
	j.p = (const u8 *)pattern;
	user_init(never);
	at_cpl3(pattern_job, &j);

	vs.listen_port = (u32)cmdline_num(cmdline, "listen", 0);
	vs.accept_data = (const u8 *)pattern + bytes;
	vs.accept_total = listen_bytes;
	if (vs.listen_port) {
		puts("virtio: vsock listening port=");
		put_dec(vs.listen_port);
		puts("\n");
	}
	if (cmdline_num(cmdline, "closed_port", 0))
		connect_to((u32)cmdline_num(cmdline, "closed_port", 0), 0, 0);
	if (cmdline_num(cmdline, "port", 0))
		connect_to((u32)cmdline_num(cmdline, "port", 0), (u8 *)pattern, bytes);
	run();

	wait_until(never, 0, 1);                /* an event would be in by now */
	check(!vq_used_pending(&d->vq[EVENTQ]), "vsock: an event (transport reset) came");
	check(vs.unexpected == 0, "vsock: packets for no connection");
	puts("virtio: vsock unexpected=");
	put_dec(vs.unexpected);
	puts("\n");
	if (!failures)
		puts("virtio: vsock ok\n");
	return 0;
}
