/* virtio-rng (virtio 1.2 §5.4): one request for 64 bytes. */
#include "virtio.h"

#define RNG_BYTES 64

static int used_pending(void *arg) { return vq_used_pending(arg); }

int rng_test(struct vdev *d)
{
	static u8 buf[RNG_BYTES];
	if (virtio_init(d, 0, 1)) {
		check(0, "rng init");
		return -1;
	}
	struct vbuf in = { (u64)(uptr)buf, RNG_BYTES };
	memset8(buf, 0, RNG_BYTES);
	vq_add(&d->vq[0], 0, 0, &in, 1, buf);
	vq_kick(&d->vq[0]);
	if (!wait_until(used_pending, &d->vq[0], 10 * TICKS_PER_SECOND)) {
		check(0, "rng: no answer");
		return -1;
	}
	u32 len = 0;
	vq_get_used(&d->vq[0], &len, 0);
	int varied = 0;
	for (int i = 1; i < RNG_BYTES; i++)
		varied |= buf[i] != buf[0];
	puts("virtio: rng bytes=");
	put_dec(len);
	puts(" hex=");
	put_str_hex(buf, RNG_BYTES);
	puts("\n");
	check(len == RNG_BYTES, "rng: fewer bytes than asked for");
	check(varied, "rng: every byte is the same");
	if (len == RNG_BYTES && varied)
		puts("virtio: rng ok\n");
	return 0;
}
