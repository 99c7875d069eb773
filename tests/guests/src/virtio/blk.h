/* virtio-blk (virtio 1.2 §5.2), driver side: what blk.c, hostile.c and
 * bench.c share. */
#ifndef GUEST_VIRTIO_BLK_H
#define GUEST_VIRTIO_BLK_H
#include "virtio.h"

/* §5.2.3 feature bits */
#define VIRTIO_BLK_F_SEG_MAX (1ull << 2)
#define VIRTIO_BLK_F_RO (1ull << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1ull << 6)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)
/* §5.2.6 request types and status values */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define SECTOR 512u
#define STATUS_UNSET 0xEE               /* what a status byte holds until the device writes it */

/* struct virtio_blk_req (§5.2.6): the header the device reads, the
 * status byte it writes; plus the driver's bookkeeping. */
struct blk_hdr { u32 type; u32 reserved; u64 sector; };
struct blk_req {
	struct blk_hdr hdr;
	volatile u8 status;
	u8 pad[3];
	u32 used_len;
	volatile u32 done;
	u32 index;
};

#define BLK_FEATURES (VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_SEG_MAX)

u64 blk_capacity(struct vdev *d);
/* Queue one request (no notification); -1 when the ring is full. */
int blk_submit(struct vdev *d, struct blk_req *r, u32 type, u64 sector, void *buf, u32 len);
/* Take completed requests off the used ring; returns how many. */
int blk_reap(struct vdev *d);
/* Submit, notify and wait for one request: its status, or -1 on timeout. */
int blk_do(struct vdev *d, u32 type, u64 sector, void *buf, u32 len, u32 *used_len);
/* Word `word` of the stamp written to `sector`: tests/kvm/test_virtio.py
 * computes the same. */
static inline u64 blk_stamp(u64 seed, u64 sector, u32 word)
{
	return 0x5649000000000000ull ^ (seed << 32) ^ (sector << 8) ^ word;
}
void blk_fill(void *buf, u64 seed, u64 sector, u32 sectors);
/* 0 when buf holds the stamps, else 1 + the first bad sector's index. */
u32 blk_verify(const void *buf, u64 seed, u64 sector, u32 sectors);
u32 fnv1a32(const u8 *p, u64 n);
const char *blk_type_name(u32 type);
#endif
