/* p9bench: file-system throughput and metadata rate from inside a Linux
 * guest, for a virtio-9p share.
 *
 *   p9bench DIR MIB FILES [MODE]
 *
 * In DIR (a directory on the share):
 *   seqwrite  MIB MiB to DIR/p9bench.dat in 1 MiB write()s, then fsync;
 *   seqread   the same file back in 1 MiB read()s (the share is mounted
 *             without a page cache, so every read goes to the server);
 *   meta      FILES times: create DIR/m/fN (open O_CREAT, 16 bytes, close),
 *             stat it, unlink it.
 * MODE (seqwrite, seqread or meta) runs only that step; without it, all
 * three in one process.  Prints one line per mode:
 *   p9bench mode=M bytes=B files=F seconds=S mbps=X rate=Y
 * (rate = files per second for meta, MB/s for the others.)  Built
 * statically with the machine's gcc by bench/p9_nested.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MiB (1 << 20)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *path)
{
	fprintf(stderr, "p9bench: %s %s: %s\n", what, path, strerror(errno));
	exit(1);
}

static void report(const char *mode, long long bytes, long files, double secs)
{
	double rate = files ? files / secs : bytes / 1e6 / secs;
	printf("p9bench mode=%s bytes=%lld files=%ld seconds=%.3f mbps=%.2f rate=%.2f\n",
	       mode, bytes, files, secs, bytes / 1e6 / secs, rate);
	fflush(stdout);
}

static void seqwrite(const char *path, int mib, char *buf)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open", path);
	double t0 = now();
	for (int i = 0; i < mib; i++) {
		memset(buf, i, 16);
		if (write(fd, buf, MiB) != MiB)
			die("write", path);
	}
	if (fsync(fd) < 0)
		die("fsync", path);
	close(fd);
	report("seqwrite", (long long)mib * MiB, 0, now() - t0);
}

static void seqread(const char *path, int mib, char *buf)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		die("open", path);
	long long total = 0;
	double t0 = now();
	for (;;) {
		ssize_t n = read(fd, buf, MiB);
		if (n < 0)
			die("read", path);
		if (n == 0)
			break;
		total += n;
	}
	double secs = now() - t0;
	close(fd);
	if (total != (long long)mib * MiB) {
		fprintf(stderr, "p9bench: read %lld bytes of %lld\n", total, (long long)mib * MiB);
		exit(1);
	}
	report("seqread", total, 0, secs);
}

static void meta(const char *dir, long files)
{
	char path[4200];
	struct stat st;
	double t0 = now();
	for (long i = 0; i < files; i++) {
		snprintf(path, sizeof path, "%s/f%ld", dir, i);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (fd < 0)
			die("create", path);
		if (write(fd, "0123456789abcdef", 16) != 16)
			die("write", path);
		close(fd);
		if (stat(path, &st) < 0 || st.st_size != 16)
			die("stat", path);
		if (unlink(path) < 0)
			die("unlink", path);
		if ((i + 1) % 100 == 0) {      /* a sign of life for the test host's stall watch */
			printf("p9bench progress meta %ld\n", i + 1);
			fflush(stdout);
		}
	}
	report("meta", 0, files, now() - t0);
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: p9bench DIR MIB FILES [seqwrite|seqread|meta]\n");
		return 2;
	}
	const char *dir = argv[1];
	int mib = atoi(argv[2]);
	long files = atol(argv[3]);
	char path[4096], sub[4096];
	char *buf = NULL;
	/* page-aligned, as dd's: the 9p client maps the user pages for its
	 * zero-copy reads and writes */
	if (posix_memalign((void **)&buf, 4096, MiB) || mib <= 0 || files <= 0) {
		fprintf(stderr, "p9bench: bad arguments\n");
		return 2;
	}
	memset(buf, 0x5a, MiB);
	snprintf(path, sizeof path, "%s/p9bench.dat", dir);
	snprintf(sub, sizeof sub, "%s/m", dir);
	const char *only = argc == 5 ? argv[4] : NULL;
	if (!only || !strcmp(only, "seqwrite"))
		seqwrite(path, mib, buf);
	if (!only || !strcmp(only, "seqread")) {
		seqread(path, mib, buf);
		unlink(path);
	}
	if (!only || !strcmp(only, "meta")) {
		if (mkdir(sub, 0755) < 0 && errno != EEXIST)
			die("mkdir", sub);
		meta(sub, files);
		rmdir(sub);
	}
	return 0;
}
