/* virtio-net (virtio 1.2 §5.1) for the test guest: receiveq 0, transmitq 1,
 * no control queue, no offloads.  The driver accepts VERSION_1, MAC,
 * STATUS and MTU, and MRG_RXBUF unless mrg_rxbuf=0; every frame it sends
 * is a zeroed 12-byte struct virtio_net_hdr_v1 (§5.1.6) and the frame, in
 * two descriptors.  Received frames are copied out of their buffers (put
 * together when MRG_RXBUF spread them over several), which then go back
 * to the receiveq.
 *
 * Two programs, chosen with mode= (main.c):
 *
 *   mode=net-dhcp  for kvmlite's user-mode network (passt): a DHCP
 *                  DISCOVER, then a REQUEST for the address offered, then
 *                  an ARP request for the router the offer named.  Lines:
 *                  "virtio: net dhcp offer yiaddr=A server=S router=R
 *                  mask=M", "virtio: net dhcp ack yiaddr=A lease=SECONDS",
 *                  "virtio: net arp reply ip=R mac=MAC", "virtio: net dhcp ok".
 *   mode=net-tap   for a tap: the guest broadcasts a "hello" frame of the
 *                  IEEE local experimental ethertype 0x88B5 (payload
 *                  "kvmlite-net hello seed=N") once a second until the host
 *                  sends it a frame of that ethertype; it prints each such
 *                  frame as "virtio: net tap rx n=I src=MAC len=L
 *                  payload=HEX" and sends its payload back to the sender
 *                  prefixed "echo ".  frames=K (default 1) such frames,
 *                  then "virtio: net tap ok frames=K".  With rx_late=SECONDS
 *                  the receive buffers are posted only that long after the
 *                  first hello, so the host's answer waits in the device.
 *
 * Both print "virtio: net up mac=MAC features=F mrg_rxbuf=0|1 link=up|down
 * mtu=N rx_buffer=BYTES" first and "virtio: net rx frames=N skipped=M
 * merged=K" last: frames of other kinds (the host's IPv6 neighbour
 * discovery on a tap, say) are counted and skipped, and K frames came in
 * more than one buffer.  Waits are bounded: net_timeout=SECONDS (default
 * 20) for each answer. */
#include "virtio.h"

#define RECEIVEQ 0
#define TRANSMITQ 1

/* §5.1.3 feature bits, §5.1.4 configuration layout */
#define VIRTIO_NET_F_MTU (1ull << 3)
#define VIRTIO_NET_F_MAC (1ull << 5)
#define VIRTIO_NET_F_MRG_RXBUF (1ull << 15)
#define VIRTIO_NET_F_STATUS (1ull << 16)
#define CONFIG_MAC 0
#define CONFIG_STATUS 6
#define CONFIG_MTU 10
#define VIRTIO_NET_S_LINK_UP 1

#define NET_HDR_LEN 12                  /* struct virtio_net_hdr_v1 */
#define NUM_BUFFERS_OFFSET 10           /* its le16 num_buffers */
#define RX_BUFFERS 32
/* §5.1.6.3.1: without MRG_RXBUF or GSO a buffer SHOULD hold 1526 bytes
 * (header and a 1514-byte frame).  With MRG_RXBUF, rx_buffer=BYTES makes
 * them smaller (down to RX_BUFFER_MIN), so that even short frames need
 * several.  MTU is offered only with passt (65520), whose answers here
 * are all short. */
#define RX_BUFFER_SIZE 2048
#define RX_BUFFER_MIN 64
#define FRAME_MAX 4096                  /* the longest frame taken in */
#define TX_MAX 1514                     /* the longest sent: no MTU, no GSO */

/* Ethernet (IEEE 802.3), ARP (RFC 826), IPv4 (RFC 791), UDP (RFC 768),
 * BOOTP/DHCP (RFC 951, RFC 2131, RFC 2132) */
#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_ZLEN 60                     /* shortest frame, FCS excluded */
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ETHERTYPE_EXPERIMENTAL 0x88B5   /* IEEE 802: local experimental ethertype 1 */
#define ARP_LEN 28
#define ARP_REQUEST 1
#define ARP_REPLY 2
#define IP_HLEN 20
#define IPPROTO_UDP 17
#define UDP_HLEN 8
#define PORT_BOOTPS 67
#define PORT_BOOTPC 68
#define BOOTP_MIN 300                   /* RFC 951's size, which older servers expect */
#define BOOTP_XID 4
#define BOOTP_FLAGS 10
#define BOOTP_YIADDR 16
#define BOOTP_CHADDR 28
#define BOOTP_COOKIE 236
#define BOOTP_OPTIONS 240
#define BOOTP_BROADCAST 0x8000
#define DHCP_OPT_PAD 0
#define DHCP_OPT_MASK 1
#define DHCP_OPT_ROUTER 3
#define DHCP_OPT_REQUESTED_IP 50
#define DHCP_OPT_LEASE 51
#define DHCP_OPT_TYPE 53
#define DHCP_OPT_SERVER 54
#define DHCP_OPT_PARAMS 55
#define DHCP_OPT_END 255
#define DHCPDISCOVER 1
#define DHCPOFFER 2
#define DHCPREQUEST 3
#define DHCPACK 5

static const u8 broadcast[ETH_ALEN] = { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };
static const u8 cookie[4] = { 99, 130, 83, 99 };

struct net {
	struct vdev *d;
	u8 mac[ETH_ALEN];
	u64 timeout;                    /* ticks to wait for one answer */
	u32 rx_size;                    /* bytes of each receive buffer */
	u32 rx_frames, rx_skipped, rx_merged;
	u8 frame[FRAME_MAX];            /* the last frame received */
	u32 len;
};

static u8 rx_buf[RX_BUFFERS][RX_BUFFER_SIZE];
static u8 tx_hdr[NET_HDR_LEN];
static u8 tx_frame[TX_MAX];
static struct net net;

/* --- bytes on the wire are big-endian --- */

static void put16(u8 *p, u32 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { put16(p, v >> 16); put16(p + 2, v); }
static u32 get16(const u8 *p) { return (u32)p[0] << 8 | p[1]; }
static u32 get32(const u8 *p) { return get16(p) << 16 | get16(p + 2); }

static int same(const u8 *a, const u8 *b, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static void put_mac(const u8 *m)
{
	for (int i = 0; i < ETH_ALEN; i++) {
		if (i)
			puts(":");
		put_str_hex(&m[i], 1);
	}
}

static void put_ip(const u8 *a)
{
	for (int i = 0; i < 4; i++) {
		if (i)
			puts(".");
		put_dec(a[i]);
	}
}

/* RFC 1071: the ones' complement of the ones' complement sum. */
static u16 ip_checksum(const u8 *p, u32 n)
{
	u32 sum = 0;
	for (u32 i = 0; i + 1 < n; i += 2)
		sum += get16(p + i);
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (u16)~sum;
}

/* --- the device --- */

static int used_pending(void *arg) { return vq_used_pending(arg); }
static int never(void *arg) { (void)arg; return 0; }

static void post_rx(struct vq *q, u8 *buf)
{
	struct vbuf in = { (u64)(uptr)buf, net.rx_size };
	vq_add(q, 0, 0, &in, 1, buf);
}

static void post_all_rx(void)
{
	for (int i = 0; i < RX_BUFFERS; i++)
		post_rx(&net.d->vq[RECEIVEQ], rx_buf[i]);
	vq_kick(&net.d->vq[RECEIVEQ]);
}

static int net_up(struct vdev *d, const char *cmdline)
{
	u64 wanted = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU;
	if (cmdline_num(cmdline, "mrg_rxbuf", 1))
		wanted |= VIRTIO_NET_F_MRG_RXBUF;
	if (virtio_init(d, wanted, 2)) {
		check(0, "net: init");
		return -1;
	}
	net.d = d;
	net.timeout = cmdline_num(cmdline, "net_timeout", 20) * TICKS_PER_SECOND;
	net.rx_size = RX_BUFFER_SIZE;
	if (d->features & VIRTIO_NET_F_MRG_RXBUF) {
		u64 size = cmdline_num(cmdline, "rx_buffer", RX_BUFFER_SIZE);
		net.rx_size = (u32)(size < RX_BUFFER_MIN ? RX_BUFFER_MIN : size > RX_BUFFER_SIZE ? RX_BUFFER_SIZE : size);
	}
	for (int i = 0; i < ETH_ALEN; i++)
		net.mac[i] = d->ops->config_read8(d, CONFIG_MAC + (u32)i);
	u32 status = d->ops->config_read8(d, CONFIG_STATUS) | (u32)d->ops->config_read8(d, CONFIG_STATUS + 1) << 8;
	u32 mtu = d->ops->config_read8(d, CONFIG_MTU) | (u32)d->ops->config_read8(d, CONFIG_MTU + 1) << 8;
	puts("virtio: net up mac=");
	put_mac(net.mac);
	puts(" features=");
	put_hex(d->features);
	puts(" mrg_rxbuf=");
	put_dec(!!(d->features & VIRTIO_NET_F_MRG_RXBUF));
	puts(" link=");
	puts(!(d->features & VIRTIO_NET_F_STATUS) ? "unknown" : status & VIRTIO_NET_S_LINK_UP ? "up" : "down");
	puts(" mtu=");
	put_dec(d->features & VIRTIO_NET_F_MTU ? mtu : 0);
	puts(" rx_buffer=");
	put_dec(net.rx_size);
	puts("\n");
	check(d->features & VIRTIO_NET_F_MAC, "net: VIRTIO_NET_F_MAC not offered");
	check(net.mac[0] != 0xFF && !(net.mac[0] & 1), "net: the MAC is a multicast address");
	if (!cmdline_num(cmdline, "rx_late", 0))
		post_all_rx();
	return 0;
}

/* Send tx_frame[0..len) behind a zeroed header and wait until the device
 * has used the chain. */
static int net_send(u32 len)
{
	struct vq *q = &net.d->vq[TRANSMITQ];
	struct vbuf out[2] = { { (u64)(uptr)tx_hdr, NET_HDR_LEN }, { (u64)(uptr)tx_frame, len } };
	if (len < ETH_ZLEN) {
		memset8(tx_frame + len, 0, ETH_ZLEN - len);
		out[1].len = len = ETH_ZLEN;
	}
	if (vq_add(q, out, 2, 0, 0, tx_frame) < 0) {
		check(0, "net: transmitq full");
		return 0;
	}
	vq_kick(q);
	if (!wait_until(used_pending, q, 5 * TICKS_PER_SECOND)) {
		check(0, "net: transmitted frame never used");
		return 0;
	}
	return vq_get_used(q, 0, 0) >= 0;
}

/* The next used receive buffer and its used length, or 0 when there is none. */
static u8 *take_rx(struct vq *q, u32 *len)
{
	void *token;
	int head = vq_get_used(q, len, &token);
	if (head == -2)
		check(0, "net: the device used a descriptor it was never given");
	return head < 0 ? 0 : token;
}

/* Append `len` bytes of a used buffer to net.frame (at *at), unless they
 * do not fit (then *fits becomes 0), and give the buffer back to the
 * receiveq: only once it is copied, since the device may fill a buffer as
 * soon as the avail index shows it, kick or not. */
static void gather_rx(struct vq *q, u8 *buf, u32 offset, u32 len, u32 *at, int *fits)
{
	if (len < offset || len > net.rx_size || *at + (len - offset) > FRAME_MAX)
		*fits = 0;
	else if (*fits)
		memcpy8(net.frame + *at, buf + offset, len - offset);
	*at += len >= offset ? len - offset : 0;
	post_rx(q, buf);
}

/* The next received frame into net.frame/net.len, or 0 once `end` (in
 * ticks) passes.  With MRG_RXBUF a frame fills num_buffers buffers, the
 * header only in the first (§5.1.6.4), and the device publishes them
 * together, so all are in the used ring once the first is; the frame is
 * put together here.  A frame too long for net.frame is skipped. */
static int net_recv(u64 end)
{
	struct vq *q = &net.d->vq[RECEIVEQ];
	for (;;) {
		u32 len;
		u8 *buf = take_rx(q, &len);
		if (!buf) {
			if (ticks >= end || !wait_until(used_pending, q, end - ticks))
				return 0;
			continue;
		}
		u32 buffers = 1;
		if (len >= NET_HDR_LEN)
			buffers = buf[NUM_BUFFERS_OFFSET] | (u32)buf[NUM_BUFFERS_OFFSET + 1] << 8;
		check(buffers >= 1, "net: a received frame says num_buffers=0");
		check(buffers <= 1 || net.d->features & VIRTIO_NET_F_MRG_RXBUF,
		      "net: num_buffers > 1 without VIRTIO_NET_F_MRG_RXBUF");
		u32 n = 0;
		int fits = 1;
		gather_rx(q, buf, NET_HDR_LEN, len, &n, &fits);
		for (u32 i = 1; i < buffers; i++) {
			buf = take_rx(q, &len);
			if (!buf) {
				check(0, "net: a merged frame's buffers were not published together");
				fits = 0;
				break;
			}
			gather_rx(q, buf, 0, len, &n, &fits);
		}
		vq_kick(q);
		net.rx_frames++;
		if (buffers > 1)
			net.rx_merged++;
		if (fits && n >= ETH_HLEN) {
			net.len = n;
			return 1;
		}
		net.rx_skipped++;
	}
}

/* Send the `build`-made frame, then wait for a frame `match` accepts;
 * send again every `every` ticks until `net.timeout` passes (with no
 * `build`, only wait).  1 when a matching frame is in net.frame. */
typedef u32 (*build_fn)(void *ctx);
typedef int (*match_fn)(void *ctx);

static int exchange(build_fn build, match_fn match, void *ctx, u64 every)
{
	u64 end = ticks + net.timeout;
	while (ticks < end) {
		if (build && !net_send(build(ctx)))
			return 0;
		u64 next = build ? ticks + every : end;
		while (net_recv(next < end ? next : end)) {
			if (match(ctx))
				return 1;
			net.rx_skipped++;
		}
	}
	return 0;
}

static u8 *eth_header(const u8 *dst, u32 type)
{
	memcpy8(tx_frame, dst, ETH_ALEN);
	memcpy8(tx_frame + ETH_ALEN, net.mac, ETH_ALEN);
	put16(tx_frame + 2 * ETH_ALEN, type);
	return tx_frame + ETH_HLEN;
}

/* --- DHCP (RFC 2131 §4.4.1: a client without an address broadcasts
 *     from 0.0.0.0 and asks for a broadcast answer) --- */

struct dhcp {
	u32 xid;
	u8 want;                        /* the message type awaited */
	u8 yiaddr[4], server[4], router[4], mask[4];
	u32 lease;
	int have_server, have_router;
};

static u32 dhcp_build(struct dhcp *c, u8 type)
{
	u8 *ip = eth_header(broadcast, ETHERTYPE_IPV4);
	u8 *udp = ip + IP_HLEN;
	u8 *bootp = udp + UDP_HLEN;
	memset8(ip, 0, IP_HLEN + UDP_HLEN + BOOTP_MIN);
	bootp[0] = 1;                   /* BOOTREQUEST */
	bootp[1] = 1;                   /* htype: Ethernet */
	bootp[2] = ETH_ALEN;
	put32(bootp + BOOTP_XID, c->xid);
	put16(bootp + BOOTP_FLAGS, BOOTP_BROADCAST);
	memcpy8(bootp + BOOTP_CHADDR, net.mac, ETH_ALEN);
	memcpy8(bootp + BOOTP_COOKIE, cookie, 4);
	u8 *o = bootp + BOOTP_OPTIONS;
	*o++ = DHCP_OPT_TYPE; *o++ = 1; *o++ = type;
	if (type == DHCPREQUEST) {
		*o++ = DHCP_OPT_REQUESTED_IP; *o++ = 4; memcpy8(o, c->yiaddr, 4); o += 4;
		*o++ = DHCP_OPT_SERVER; *o++ = 4; memcpy8(o, c->server, 4); o += 4;
	}
	*o++ = DHCP_OPT_PARAMS; *o++ = 2; *o++ = DHCP_OPT_MASK; *o++ = DHCP_OPT_ROUTER;
	*o++ = DHCP_OPT_END;
	u32 bootp_len = (u32)(o - bootp) > BOOTP_MIN ? (u32)(o - bootp) : BOOTP_MIN;
	put16(udp, PORT_BOOTPC);
	put16(udp + 2, PORT_BOOTPS);
	put16(udp + 4, UDP_HLEN + bootp_len);   /* checksum 0: none (RFC 768) */
	ip[0] = 0x45;                   /* version 4, 5 words */
	put16(ip + 2, IP_HLEN + UDP_HLEN + bootp_len);
	ip[8] = 64;                     /* TTL */
	ip[9] = IPPROTO_UDP;
	memset8(ip + 16, 0xFF, 4);      /* to 255.255.255.255, from 0.0.0.0 */
	put16(ip + 10, ip_checksum(ip, IP_HLEN));
	return ETH_HLEN + IP_HLEN + UDP_HLEN + bootp_len;
}

static u32 build_discover(void *ctx) { return dhcp_build(ctx, DHCPDISCOVER); }
static u32 build_request(void *ctx) { return dhcp_build(ctx, DHCPREQUEST); }

/* The BOOTP part of net.frame when it is a DHCP reply to us, or 0. */
static const u8 *dhcp_reply(const struct dhcp *c, u32 *len)
{
	const u8 *f = net.frame;
	if (net.len < ETH_HLEN + IP_HLEN + UDP_HLEN + BOOTP_OPTIONS || get16(f + 12) != ETHERTYPE_IPV4)
		return 0;
	const u8 *ip = f + ETH_HLEN;
	u32 ihl = (ip[0] & 15u) * 4;
	if ((ip[0] >> 4) != 4 || ip[9] != IPPROTO_UDP || ihl < IP_HLEN)
		return 0;
	const u8 *udp = ip + ihl;
	const u8 *bootp = udp + UDP_HLEN;
	if (bootp + BOOTP_OPTIONS > f + net.len || get16(udp) != PORT_BOOTPS || get16(udp + 2) != PORT_BOOTPC)
		return 0;
	if (bootp[0] != 2 || get32(bootp + BOOTP_XID) != c->xid || !same(bootp + BOOTP_COOKIE, cookie, 4))
		return 0;
	*len = (u32)(f + net.len - bootp);
	return bootp;
}

static int dhcp_match(void *ctx)
{
	struct dhcp *c = ctx;
	u32 len;
	const u8 *bootp = dhcp_reply(c, &len);
	if (!bootp)
		return 0;
	u8 type = 0;
	for (u32 i = BOOTP_OPTIONS; i < len && bootp[i] != DHCP_OPT_END;) {
		if (bootp[i] == DHCP_OPT_PAD) {
			i++;
			continue;
		}
		if (i + 2 > len || i + 2 + bootp[i + 1] > len)
			break;
		u8 code = bootp[i], n = bootp[i + 1];
		const u8 *v = bootp + i + 2;
		if (code == DHCP_OPT_TYPE && n >= 1) {
			type = v[0];
		} else if (code == DHCP_OPT_SERVER && n >= 4) {
			memcpy8(c->server, v, 4);
			c->have_server = 1;
		} else if (code == DHCP_OPT_ROUTER && n >= 4) {
			memcpy8(c->router, v, 4);
			c->have_router = 1;
		} else if (code == DHCP_OPT_MASK && n >= 4) {
			memcpy8(c->mask, v, 4);
		} else if (code == DHCP_OPT_LEASE && n >= 4) {
			c->lease = get32(v);
		}
		i += 2u + n;
	}
	if (type != c->want)
		return 0;
	memcpy8(c->yiaddr, bootp + BOOTP_YIADDR, 4);
	return 1;
}

/* --- ARP (RFC 826) for the router's MAC --- */

struct arp {
	u8 sender[4], target[4];
	u8 mac[ETH_ALEN];               /* the answer */
};

static u32 build_arp(void *ctx)
{
	struct arp *a = ctx;
	u8 *p = eth_header(broadcast, ETHERTYPE_ARP);
	put16(p, 1);                    /* htype: Ethernet */
	put16(p + 2, ETHERTYPE_IPV4);
	p[4] = ETH_ALEN;
	p[5] = 4;
	put16(p + 6, ARP_REQUEST);
	memcpy8(p + 8, net.mac, ETH_ALEN);
	memcpy8(p + 14, a->sender, 4);
	memset8(p + 18, 0, ETH_ALEN);
	memcpy8(p + 24, a->target, 4);
	return ETH_HLEN + ARP_LEN;
}

static int arp_match(void *ctx)
{
	struct arp *a = ctx;
	const u8 *p = net.frame + ETH_HLEN;
	if (net.len < ETH_HLEN + ARP_LEN || get16(net.frame + 12) != ETHERTYPE_ARP || get16(p + 6) != ARP_REPLY)
		return 0;
	if (!same(p + 14, a->target, 4))
		return 0;
	memcpy8(a->mac, p + 8, ETH_ALEN);
	return 1;
}

static void net_dhcp(const char *cmdline)
{
	struct dhcp c = { 0 };
	c.xid = 0x6B760000u | (u32)(cmdline_num(cmdline, "seed", 1) & 0xFFFF);
	c.want = DHCPOFFER;
	if (!exchange(build_discover, dhcp_match, &c, 2 * TICKS_PER_SECOND)) {
		check(0, "net: no DHCP offer");
		return;
	}
	puts("virtio: net dhcp offer yiaddr=");
	put_ip(c.yiaddr);
	puts(" server=");
	put_ip(c.server);
	puts(" router=");
	put_ip(c.router);
	puts(" mask=");
	put_ip(c.mask);
	puts("\n");
	check(c.have_server, "net: the offer names no server");
	check(c.have_router, "net: the offer names no router");

	c.want = DHCPACK;
	int acked = exchange(build_request, dhcp_match, &c, 2 * TICKS_PER_SECOND);
	check(acked, "net: no DHCP ack");
	if (acked) {
		puts("virtio: net dhcp ack yiaddr=");
		put_ip(c.yiaddr);
		puts(" lease=");
		put_dec(c.lease);
		puts("\n");
	}

	struct arp a = { 0 };
	memcpy8(a.sender, c.yiaddr, 4);
	memcpy8(a.target, c.router, 4);
	int answered = c.have_router && exchange(build_arp, arp_match, &a, TICKS_PER_SECOND);
	check(answered, "net: no ARP reply from the router");
	if (answered) {
		puts("virtio: net arp reply ip=");
		put_ip(a.target);
		puts(" mac=");
		put_mac(a.mac);
		puts("\n");
	}
	if (acked && answered && c.have_server && c.have_router)
		puts("virtio: net dhcp ok\n");
}

/* --- frames of ethertype 0x88B5 with a tap's host side --- */

#define HELLO "kvmlite-net hello seed="
#define ECHO "echo "

struct tap {
	u64 seed;
	u8 peer[ETH_ALEN];
};

static u32 build_hello(void *ctx)
{
	struct tap *t = ctx;
	u8 *p = eth_header(broadcast, ETHERTYPE_EXPERIMENTAL);
	u32 n = 0;
	for (const char *s = HELLO; *s; s++)
		p[n++] = (u8)*s;
	char digits[20];
	int k = 0;
	u64 v = t->seed;
	do {
		digits[k++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (k)
		p[n++] = (u8)digits[--k];
	return ETH_HLEN + n;
}

static int tap_match(void *ctx)
{
	struct tap *t = ctx;
	if (net.len < ETH_HLEN || get16(net.frame + 12) != ETHERTYPE_EXPERIMENTAL || !same(net.frame, net.mac, ETH_ALEN))
		return 0;
	memcpy8(t->peer, net.frame + ETH_ALEN, ETH_ALEN);
	return 1;
}

/* The host's payload back to it, "echo " first (cut to fit a frame). */
static int tap_echo(struct tap *t)
{
	u32 n = net.len - ETH_HLEN, prefix = sizeof(ECHO) - 1;
	if (n > TX_MAX - ETH_HLEN - prefix)
		n = TX_MAX - ETH_HLEN - prefix;
	u8 *p = eth_header(t->peer, ETHERTYPE_EXPERIMENTAL);
	memcpy8(p + prefix, net.frame + ETH_HLEN, n);
	memcpy8(p, ECHO, prefix);
	return net_send(ETH_HLEN + prefix + n);
}

static void net_tap(const char *cmdline)
{
	struct tap t = { 0 };
	t.seed = cmdline_num(cmdline, "seed", 1);
	u64 frames = cmdline_num(cmdline, "frames", 1);
	u64 late = cmdline_num(cmdline, "rx_late", 0);
	puts("virtio: net tap hello seed=");
	put_dec(t.seed);
	puts("\n");
	if (late) {
		/* The host answers the hello while the receiveq is empty: the
		 * device must keep that frame until buffers come (§5.1.6.3). */
		net_send(build_hello(&t));
		wait_until(never, 0, late * TICKS_PER_SECOND);
		puts("virtio: net rx buffers posted late\n");
		post_all_rx();
	}
	for (u64 i = 1; i <= frames; i++) {
		/* hello until the host first answers, then only listen */
		if (!exchange(i == 1 ? build_hello : 0, tap_match, &t, TICKS_PER_SECOND)) {
			check(0, "net: no frame from the host");
			return;
		}
		puts("virtio: net tap rx n=");
		put_dec(i);
		puts(" src=");
		put_mac(t.peer);
		puts(" len=");
		put_dec(net.len);
		puts(" payload=");
		put_str_hex(net.frame + ETH_HLEN, net.len - ETH_HLEN);
		puts("\n");
		if (!tap_echo(&t))
			return;
		puts("virtio: net tap echo n=");
		put_dec(i);
		puts("\n");
	}
	puts("virtio: net tap ok frames=");
	put_dec(frames);
	puts("\n");
}

int net_test(struct vdev *d, const char *cmdline)
{
	if (net_up(d, cmdline))
		return -1;
	if (cmdline_is(cmdline, "mode", "net-dhcp"))
		net_dhcp(cmdline);
	else
		net_tap(cmdline);
	puts("virtio: net rx frames=");
	put_dec(net.rx_frames);
	puts(" skipped=");
	put_dec(net.rx_skipped);
	puts(" merged=");
	put_dec(net.rx_merged);
	puts("\n");
	return 0;
}
