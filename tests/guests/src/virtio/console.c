/* virtio-console (virtio 1.2 §5.3), one port: receiveq 0, transmitq 1.
 *
 * The guest sends a marker line through the transmitq (it appears on the
 * VMM's stdout; the guest never prints it on COM1), then, with
 * console_rx=1, waits up to rx_timeout seconds (default 20) for one line
 * of host input on the receiveq and sends it back upper-cased as
 * "virtio-console: echo <LINE>". */
#include "virtio.h"

#define RECEIVEQ 0
#define TRANSMITQ 1
#define RX_BUFFERS 4
#define RX_BUFFER_SIZE 64
#define LINE_MAX 128

static u8 rx_buf[RX_BUFFERS][RX_BUFFER_SIZE];
static char tx_buf[LINE_MAX + 64];
static char line[LINE_MAX];

static int used_pending(void *arg) { return vq_used_pending(arg); }

static u32 append(char *dst, u32 at, const char *s)
{
	while (*s && at < sizeof(tx_buf) - 1)
		dst[at++] = *s++;
	dst[at] = 0;
	return at;
}

/* Send `len` bytes of tx_buf and wait until the device has consumed them. */
static int transmit(struct vdev *d, u32 len)
{
	struct vbuf out = { (u64)(uptr)tx_buf, len };
	struct vq *q = &d->vq[TRANSMITQ];
	if (vq_add(q, &out, 1, 0, 0, tx_buf) < 0)
		return 0;
	vq_kick(q);
	if (!wait_until(used_pending, q, 10 * TICKS_PER_SECOND))
		return 0;
	return vq_get_used(q, 0, 0) >= 0;
}

static void post_rx(struct vq *q, int i)
{
	struct vbuf in = { (u64)(uptr)rx_buf[i], RX_BUFFER_SIZE };
	vq_add(q, 0, 0, &in, 1, rx_buf[i]);
}

/* Collect received bytes until a newline; 0 on timeout. */
static u32 receive_line(struct vdev *d, u64 timeout)
{
	struct vq *q = &d->vq[RECEIVEQ];
	u64 end = ticks + timeout;
	u32 n = 0;
	for (;;) {
		u32 len;
		void *token;
		while (vq_get_used(q, &len, &token) >= 0) {
			u8 *b = token;
			for (u32 i = 0; i < len && i < RX_BUFFER_SIZE; i++) {
				if (b[i] == '\n' || b[i] == '\r') {
					if (n)
						return n;
					continue;
				}
				if (n < LINE_MAX - 1)
					line[n++] = (char)b[i];
			}
			post_rx(q, (int)((b - rx_buf[0]) / RX_BUFFER_SIZE));
			vq_kick(q);
		}
		if (ticks >= end || !wait_until(used_pending, q, end - ticks))
			return 0;
	}
}

int console_test(struct vdev *d, const char *cmdline)
{
	if (virtio_init(d, 0, 2)) {
		check(0, "console init");
		return -1;
	}
	struct vq *rxq = &d->vq[RECEIVEQ];
	for (int i = 0; i < RX_BUFFERS; i++)
		post_rx(rxq, i);
	vq_kick(rxq);

	u32 len = append(tx_buf, 0, "virtio-console: marker seed=");
	char num[24];
	u64 seed = cmdline_num(cmdline, "seed", 1);
	int k = 0;
	do {
		num[k++] = (char)('0' + seed % 10);
		seed /= 10;
	} while (seed);
	while (k)
		tx_buf[len++] = num[--k];
	len = append(tx_buf, len, "\n");
	int sent = transmit(d, len);
	check(sent, "console: marker not consumed");
	if (sent)
		puts("virtio: console marker sent\n");

	if (!cmdline_num(cmdline, "console_rx", 0))
		return 0;
	puts("virtio: console waiting for input\n");
	u32 n = receive_line(d, cmdline_num(cmdline, "rx_timeout", 20) * TICKS_PER_SECOND);
	puts("virtio: console rx bytes=");
	put_dec(n);
	puts("\n");
	check(n > 0, "console: no input line");
	if (!n)
		return -1;
	len = append(tx_buf, 0, "virtio-console: echo ");
	for (u32 i = 0; i < n; i++)
		tx_buf[len++] = line[i] >= 'a' && line[i] <= 'z' ? (char)(line[i] - 'a' + 'A') : line[i];
	len = append(tx_buf, len, "\n");
	sent = transmit(d, len);
	check(sent, "console: echo not consumed");
	if (sent)
		puts("virtio: console echo sent\n");
	return 0;
}
