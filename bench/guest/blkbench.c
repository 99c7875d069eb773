/* blkbench: block-device throughput from inside a Linux guest.
 *
 *   blkbench DEV MODE SECONDS [QD]
 *
 * MODE is seqread, seqwrite (1 MiB requests) or randread, randwrite (4 KiB
 * requests at random 4 KiB-aligned offsets).  QD threads each keep one
 * request in flight (O_DIRECT, so the guest page cache does not answer for
 * the device).  Prints one line:
 *   blkbench mode=M bs=B qd=Q ops=N seconds=S mbps=X iops=Y
 * Built statically with the machine's gcc by bench/blk_nested.py.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct job {
	int fd;
	int write, random;
	size_t bs;
	uint64_t size, ops, seed, next;
	double stop;
	int index, qd;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *worker(void *arg)
{
	struct job *j = arg;
	void *buf;
	uint64_t blocks = j->size / j->bs;
	uint64_t blk = (uint64_t)j->index;

	if (posix_memalign(&buf, 4096, j->bs))
		return NULL;
	memset(buf, 0x5a, j->bs);
	while (now() < j->stop) {
		off_t off;
		if (j->random)
			off = (off_t)(rnd(&j->seed) % blocks) * j->bs;
		else {
			off = (off_t)(blk % blocks) * j->bs;
			blk += j->qd;
		}
		ssize_t n = j->write ? pwrite(j->fd, buf, j->bs, off) : pread(j->fd, buf, j->bs, off);
		if (n != (ssize_t)j->bs) {
			perror("blkbench: I/O");
			exit(1);
		}
		j->ops++;
	}
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: blkbench DEV seqread|seqwrite|randread|randwrite SECONDS [QD]\n");
		return 2;
	}
	const char *mode = argv[2];
	int write = strstr(mode, "write") != NULL, random = strncmp(mode, "rand", 4) == 0;
	int qd = argc > 4 ? atoi(argv[4]) : 1;
	double seconds = atof(argv[3]);
	int fd = open(argv[1], (write ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	uint64_t size = (uint64_t)lseek(fd, 0, SEEK_END);   /* block devices and files alike */
	struct job jobs[64];
	pthread_t threads[64];
	if (qd < 1 || qd > 64)
		qd = 1;
	double start = now();
	for (int i = 0; i < qd; i++) {
		jobs[i] = (struct job){ .fd = fd, .write = write, .random = random, .bs = random ? 4096 : 1 << 20,
					.size = size, .seed = 0x9e3779b97f4a7c15ull * (i + 1), .stop = start + seconds,
					.index = i, .qd = qd };
		pthread_create(&threads[i], NULL, worker, &jobs[i]);
	}
	uint64_t ops = 0;
	for (int i = 0; i < qd; i++) {
		pthread_join(threads[i], NULL);
		ops += jobs[i].ops;
	}
	if (write)
		fdatasync(fd);
	double elapsed = now() - start;
	size_t bs = random ? 4096 : 1 << 20;
	printf("blkbench mode=%s bs=%zu qd=%d ops=%llu seconds=%.3f mbps=%.1f iops=%.0f\n", mode, bs, qd,
	       (unsigned long long)ops, elapsed, ops * (double)bs / elapsed / 1e6, ops / elapsed);
	return 0;
}
