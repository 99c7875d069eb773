/* Device initialisation (virtio 1.2 §3.1.1) and split virtqueues, driver
 * side (§2.7), for either transport. */
#include "virtio.h"

#define RESET_SPINS 100000

/* §2.4.1 / §4.1.4.3.2: writing 0 resets; the driver waits until the status
 * reads back 0 before it touches the device again. */
void virtio_reset(struct vdev *d)
{
	d->ops->set_status(d, 0);
	for (int i = 0; i < RESET_SPINS && d->ops->get_status(d); i++)
		cpu_relax();
}

static u16 pick_size(u16 max)
{
	u16 size = 1;
	while ((u32)size * 2 <= max && size * 2 <= VQ_MAX)
		size = (u16)(size * 2);
	return size;
}

/* Fresh rings for queue `index` of `d` (allocated once, zeroed on every
 * initialisation) and a free list through desc[].next (§2.7.5). */
static void vq_prepare(struct vdev *d, struct vq *q, u16 index, u16 size)
{
	q->dev = d;
	q->index = index;
	if (!q->desc) {
		q->desc = alloc_pages(sizeof(struct virtq_desc) * VQ_MAX);
		q->avail = alloc_pages(6 + 2 * VQ_MAX);
		q->used = alloc_pages(6 + sizeof(struct virtq_used_elem) * VQ_MAX);
	}
	memset8((void *)q->desc, 0, sizeof(struct virtq_desc) * VQ_MAX);
	memset8((void *)q->avail, 0, 6 + 2 * VQ_MAX);
	memset8((void *)q->used, 0, 6 + sizeof(struct virtq_used_elem) * VQ_MAX);
	q->size = size;
	for (u16 i = 0; i < size; i++)
		q->desc[i].next = (u16)(i + 1);
	q->free_head = 0;
	q->num_free = size;
	q->avail_shadow = 0;
	q->last_used = 0;
}

static void fail(struct vdev *d, const char *why)
{
	d->ops->set_status(d, d->ops->get_status(d) | VIRTIO_STATUS_FAILED);
	puts("virtio: ");
	puts(d->where);
	puts(" init failed: ");
	puts(why);
	puts("\n");
}

/* §3.1.1 "Driver Requirements: Device Initialization": reset,
 * ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK and re-read,
 * virtqueue set-up, DRIVER_OK.  `wanted` are the device-specific features
 * the driver can use; VIRTIO_F_VERSION_1 is always required. */
int virtio_init(struct vdev *d, u64 wanted, int nqueues)
{
	const struct transport_ops *o = d->ops;
	virtio_reset(d);
	if (o->get_status(d)) {
		fail(d, "reset did not complete");
		return -1;
	}
	o->set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	o->set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	d->offered = o->get_features(d);
	if (!(d->offered & VIRTIO_F_VERSION_1)) {
		fail(d, "no VIRTIO_F_VERSION_1");
		return -1;
	}
	d->features = d->offered & (wanted | VIRTIO_F_VERSION_1);
	o->set_features(d, d->features);
	u8 status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	o->set_status(d, status);
	if (!(o->get_status(d) & VIRTIO_STATUS_FEATURES_OK)) {
		fail(d, "FEATURES_OK not accepted");
		return -1;
	}
	for (int i = 0; i < nqueues; i++) {
		u16 max = o->queue_max(d, (u16)i);
		if (!max) {
			fail(d, "a queue is missing");
			return -1;
		}
		vq_prepare(d, &d->vq[i], (u16)i, pick_size(max));
		if (o->queue_setup(d, &d->vq[i])) {
			fail(d, "queue set-up refused");
			return -1;
		}
	}
	d->nvq = nqueues;
	if (o->config_setup(d)) {
		fail(d, "configuration vector refused");
		return -1;
	}
	o->set_status(d, status | VIRTIO_STATUS_DRIVER_OK);
	return 0;
}

/* §2.7.13: chain the buffers (device-readable first, §2.7.4.2), put the
 * head in the next avail slot, then publish the avail idx.  The chain
 * follows the free list, so the last descriptor's `next` keeps the rest of
 * the list (its NEXT flag is clear; the device ignores it). */
int vq_add(struct vq *q, const struct vbuf *out, int nout, const struct vbuf *in, int nin, void *token)
{
	int n = nout + nin;
	if (n == 0 || n > q->num_free)
		return -1;
	u16 head = q->free_head, i = head, last = head;
	for (int k = 0; k < n; k++) {
		const struct vbuf *b = k < nout ? &out[k] : &in[k - nout];
		volatile struct virtq_desc *desc = &q->desc[i];
		desc->addr = b->addr;
		desc->len = b->len;
		desc->flags = (u16)((k < nout ? 0 : VIRTQ_DESC_F_WRITE) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		last = i;
		i = desc->next;
	}
	q->free_head = q->desc[last].next;
	q->num_free = (u16)(q->num_free - n);
	q->token[head] = token;
	q->avail->ring[q->avail_shadow % q->size] = head;
	q->avail_shadow++;
	wmb();                                  /* ring entry before idx (§2.7.13.2) */
	q->avail->idx = q->avail_shadow;
	return head;
}

/* Hostile mode: publish `head` as is, whatever it points at. */
void vq_publish_head(struct vq *q, u16 head)
{
	q->avail->ring[q->avail_shadow % q->size] = head;
	q->avail_shadow++;
	wmb();
	q->avail->idx = q->avail_shadow;
}

/* §2.7.13.3-4: notify unless the device asked not to be (VIRTQ_USED_F_NO_NOTIFY;
 * QEMU sets it while it is already processing the queue).  The fence
 * orders our avail idx store before the load of the used flags. */
void vq_kick(struct vq *q)
{
	mb();
	if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
		q->dev->ops->notify(q->dev, q);
}

int vq_used_pending(struct vq *q)
{
	return q->used->idx != q->last_used;
}

/* The next used element (§2.7.8): its head, or -1 when there is none;
 * the chain goes back on the free list.  -2 for a head the device made up. */
int vq_get_used(struct vq *q, u32 *len, void **token)
{
	if (q->used->idx == q->last_used)
		return -1;
	rmb();                                  /* idx before the element */
	volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->size];
	u32 id = e->id;
	if (len)
		*len = e->len;
	q->last_used++;
	if (id >= q->size)
		return -2;
	u16 i = (u16)id, n = 1;
	while ((q->desc[i].flags & VIRTQ_DESC_F_NEXT) && n < q->size) {
		i = q->desc[i].next;
		n++;
	}
	q->desc[i].next = q->free_head;
	q->free_head = (u16)id;
	q->num_free = (u16)(q->num_free + n);
	if (token)
		*token = q->token[id];
	return (int)id;
}
