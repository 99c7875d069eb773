/* A small virtio 1.2 driver for kvmlite's test guest: the PCI and MMIO
 * transports, split virtqueues, and what the tests and the benchmark do
 * with virtio-blk, virtio-rng, virtio-console, virtio-net and virtio-vsock.
 *
 * Section numbers are those of "Virtual I/O Device (VIRTIO) Version 1.2"
 * (OASIS, 2022).  The guest is single-CPU and its kernel runs with
 * interrupts off except inside wait_until() (sti; hlt); the benchmark's
 * user-mode loop (bench.c, user.c) and vsock.c's user-mode checksums run
 * with them on.  Interrupt handlers only count and set flags, so no other
 * code races with them. */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H
#include "../lib/x86.h"

/* --- results and exit statuses --- */
#define EXIT_CHECK_FAILED 43        /* a check failed; the log says which */
#define EXIT_NO_DEVICE 44           /* asked for a device that is not there */

/* --- MMIO accessors of the widths the transports need --- */
static inline void vwr8(uptr a, u8 v) { *(volatile u8 *)a = v; }
static inline void vwr16(uptr a, u16 v) { *(volatile u16 *)a = v; }
static inline void vwr32(uptr a, u32 v) { *(volatile u32 *)a = v; }
/* A full barrier without SSE (mfence is SSE2 and may not emulate at CPL0
 * here): any locked instruction orders all loads and stores (SDM vol. 3A
 * §8.2.2). */
static inline void mb(void) { __asm__ volatile("lock; addl $0, (%%rsp)" ::: "memory", "cc"); }
/* x86 is TSO: store-store and load-load order come for free; only the
 * compiler must be stopped (Linux's virt_wmb/virt_rmb on x86). */
static inline void wmb(void) { __asm__ volatile("" ::: "memory"); }
static inline void rmb(void) { __asm__ volatile("" ::: "memory"); }

/* --- device status (§2.1) and feature bits (§6, §5.x.3) --- */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128
#define VIRTIO_F_VERSION_1 (1ull << 32)
#define VIRTIO_F_INDIRECT_DESC (1ull << 28)

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_VSOCK 19

/* --- split virtqueues (§2.7) --- */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_USED_F_NO_NOTIFY 1
#define VQ_MAX 256                  /* the largest queue this driver uses */

struct virtq_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct virtq_avail { u16 flags; u16 idx; u16 ring[]; };
struct virtq_used_elem { u32 id; u32 len; };
struct virtq_used { u16 flags; u16 idx; struct virtq_used_elem ring[]; };

struct vdev;

struct vq {
	struct vdev *dev;
	u16 index, size;
	volatile struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	u16 free_head, num_free;
	u16 avail_shadow;               /* our next avail idx */
	u16 last_used;                  /* next used entry to consume */
	u16 msix_entry;                 /* PCI: MSI-X table entry of this queue */
	u64 notify_addr;                /* PCI: where to write the queue index */
	void *token[VQ_MAX];
};

/* One buffer of a request: device-readable (out) or device-writable (in). */
struct vbuf { u64 addr; u32 len; };

/* --- transports --- */
struct transport_ops {
	const char *name;
	u8 (*get_status)(struct vdev *d);
	void (*set_status)(struct vdev *d, u8 status);
	u64 (*get_features)(struct vdev *d);
	void (*set_features)(struct vdev *d, u64 features);
	u16 (*queue_max)(struct vdev *d, u16 index);        /* 0: no such queue */
	int (*queue_setup)(struct vdev *d, struct vq *q);   /* 0 ok */
	void (*notify)(struct vdev *d, struct vq *q);
	u32 (*config_read32)(struct vdev *d, u32 offset);
	u8 (*config_read8)(struct vdev *d, u32 offset);
	int (*config_setup)(struct vdev *d);                /* after queues, before DRIVER_OK */
};

#define MAX_QUEUES 3               /* vsock's rx, tx and event */
#define MAX_DEVICES 8

struct vdev {
	const struct transport_ops *ops;
	u32 type;
	char where[24];                 /* "pci 00:01.0" or "mmio 0xd0000000" */
	u64 features;                   /* negotiated */
	u64 offered;                    /* what the device offered */
	struct vq vq[MAX_QUEUES];
	int nvq;
	/* interrupts, written by handlers */
	volatile u32 irqs;              /* every interrupt taken for this device */
	volatile u32 config_irqs;       /* configuration-change interrupts */
	volatile u32 vec_irqs[4];       /* per IDT vector d->vector + i */
	u8 vector;                      /* first IDT vector of this device */
	/* PCI */
	u8 slot, fn;
	u64 common, isr, devcfg, notify_base;
	u32 notify_mult;
	u8 msix_cap;
	u16 msix_count;
	u64 msix_table;
	/* MMIO */
	u64 base;
	u32 pin;
};

extern struct vdev devices[MAX_DEVICES];
extern int ndevices;

/* pci.c / mmio.c: find devices and fill in devices[]. */
int virtio_pci_probe(void);
int virtio_mmio_probe(void);
extern const struct transport_ops pci_ops, mmio_ops;
/* Transport-specific interrupt set-up: MSI-X (PCI) or an IOAPIC pin (MMIO). */
void virtio_pci_irq_setup(struct vdev *d);
void virtio_mmio_irq_setup(struct vdev *d);
u32 virtio_mmio_ack(struct vdev *d);                  /* read and ack InterruptStatus */

/* virtq.c */
int virtio_init(struct vdev *d, u64 wanted, int nqueues);  /* §3.1.1; 0 ok */
void virtio_reset(struct vdev *d);
int vq_add(struct vq *q, const struct vbuf *out, int nout, const struct vbuf *in, int nin, void *token);
void vq_kick(struct vq *q);
int vq_used_pending(struct vq *q);
int vq_get_used(struct vq *q, u32 *len, void **token);  /* head, -1 none, -2 bogus */
void vq_publish_head(struct vq *q, u16 head);        /* hostile mode: raw avail entry */

/* main.c: memory, time and waiting */
void *alloc_pages(u64 bytes);                         /* 4 KiB aligned, zeroed */
void *alloc_bytes(u64 bytes, u64 align);              /* not zeroed */
u64 ram_top(void);
extern volatile u64 ticks;                            /* 10 ms LAPIC timer ticks */
#define TICKS_PER_SECOND 100
/* Sleep (sti; hlt) until cond(arg) holds or `timeout` ticks pass; 1 if it held. */
int wait_until(int (*cond)(void *), void *arg, u64 timeout);
extern int failures;
void check(int ok, const char *what);                 /* counts failures */
void put_str_hex(const u8 *p, u32 n);
void memset8(void *p, u8 v, u64 n);
void memcpy8(void *dst, const void *src, u64 n);

/* user.c / user.S: run fn(arg) at CPL3 until it calls user_return() */
void user_init(int (*cond)(void *));                   /* cond: what user_sleep waits for */
void user_call(void (*fn)(void *), void *arg, void *stack_top);
int user_sleep(void *arg, u64 timeout);               /* CPL3 */
void user_return(void) __attribute__((noreturn));     /* CPL3 */

/* the device programs */
int blk_test(struct vdev *d, const char *cmdline);
int blk_hostile(struct vdev *d, const char *cmdline);
int blk_bench(struct vdev *d, const char *cmdline);
int blk_rounds(struct vdev *d, const char *cmdline);   /* snapshot tests */
int rng_test(struct vdev *d);
int console_test(struct vdev *d, const char *cmdline);
int net_test(struct vdev *d, const char *cmdline);
int vsock_test(struct vdev *d, const char *cmdline);

#endif
