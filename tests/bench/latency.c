/* latency.c - append-to-cursor latency on a topicfs topic.
 *
 *   latency TOPICDIR [SAMPLES [INTERVAL_US [WARMUP [READ_TOPICDIR]]]]   (1000 3000 50)
 *
 * One thread holds TOPICDIR/groups/lat/cursor open and sits in a blocking
 * read() (4 KiB buffer: under 64 KiB, so one record per read, INTERFACE.md
 * §6). The main thread appends one ~100-byte line "lat <seq> <t_ns> ..."
 * to TOPICDIR/0/log with a single write() every INTERVAL_US, taking t_ns
 * from CLOCK_MONOTONIC just before the write(). The reader takes the clock
 * when its read() returns; the difference is one sample. The next line is
 * written only after the previous one arrived and INTERVAL_US passed, so
 * the reader is always already blocked: this is wake-up latency, not
 * queueing. The first WARMUP samples are dropped (group join, cold caches).
 *
 * READ_TOPICDIR (default TOPICDIR) is where the cursor is opened: the same
 * topic seen through another node's mount, for the write-on-one-node,
 * consume-on-another latency of a cluster. Both paths are on this machine,
 * so one clock times both ends.
 *
 * Prints "samples=N p50_us=X p90_us=X p99_us=X max_us=X"; exit 1 with a
 * reason on stderr if the cursor cannot be opened, returns EOF or an error,
 * or a record does not arrive within 5 s.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>

#include "bench_util.h"

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	long received;     /* highest seq seen + 1 */
	uint64_t *lat_ns;  /* by seq */
	long total;
	int error;         /* errno-style reason, set by the reader */
} R = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NULL, 0, 0 };

static void *reader(void *arg)
{
	int fd = *(int *)arg;
	char buf[4096];
	size_t have = 0;

	for (;;) {
		ssize_t r = read(fd, buf + have, sizeof(buf) - have);
		uint64_t now = bench_now_ns();
		char *p = buf, *nl;

		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			pthread_mutex_lock(&R.mu);
			R.error = r == 0 ? -1 : errno;
			pthread_cond_broadcast(&R.cv);
			pthread_mutex_unlock(&R.mu);
			return NULL;
		}
		have += (size_t)r;
		while ((nl = memchr(p, '\n', have - (size_t)(p - buf))) != NULL) {
			long seq;
			unsigned long long t;

			*nl = '\0';
			if (sscanf(p, "lat %ld %llu", &seq, &t) == 2 && seq >= 0 && seq < R.total) {
				pthread_mutex_lock(&R.mu);
				R.lat_ns[seq] = now - t;
				if (seq + 1 > R.received)
					R.received = seq + 1;
				pthread_cond_broadcast(&R.cv);
				pthread_mutex_unlock(&R.mu);
			}
			p = nl + 1;
		}
		have -= (size_t)(p - buf);
		memmove(buf, p, have);
		if (have == sizeof(buf))
			have = 0; /* not ours: a line longer than 4 KiB */
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	char path[4096];
	long samples = argc > 2 ? atol(argv[2]) : 1000;
	long interval_us = argc > 3 ? atol(argv[3]) : 3000;
	long warmup = argc > 4 ? atol(argv[4]) : 50;
	const char *rdir = argc > 5 ? argv[5] : argv[1];
	int cfd, lfd;
	pthread_t th;

	if (argc < 2 || samples < 1 || interval_us < 0 || warmup < 0) {
		fprintf(stderr, "usage: latency TOPICDIR [SAMPLES [INTERVAL_US [WARMUP [READ_TOPICDIR]]]]\n");
		return 2;
	}
	R.total = samples + warmup;
	R.lat_ns = calloc((size_t)R.total, sizeof(*R.lat_ns));
	if (R.lat_ns == NULL)
		return 1;
	snprintf(path, sizeof(path), "%s/groups/lat", rdir);
	if (mkdir(path, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "latency: mkdir %s: %s\n", path, strerror(errno));
		return 1;
	}
	snprintf(path, sizeof(path), "%s/groups/lat/cursor", rdir);
	cfd = open(path, O_RDONLY | O_CLOEXEC);
	if (cfd < 0) {
		fprintf(stderr, "latency: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	snprintf(path, sizeof(path), "%s/0/log", argv[1]);
	lfd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (lfd < 0) {
		fprintf(stderr, "latency: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	if (pthread_create(&th, NULL, reader, &cfd) != 0)
		return 1;
	pthread_detach(th);
	for (long seq = 0; seq < R.total; seq++) {
		char line[128];
		struct timespec deadline;
		struct timespec pause = { 0, interval_us * 1000 };
		uint64_t t;
		int n, err;

		while (pause.tv_nsec >= 1000000000) {
			pause.tv_sec++;
			pause.tv_nsec -= 1000000000;
		}
		nanosleep(&pause, NULL);
		t = bench_now_ns();
		n = snprintf(line, sizeof(line),
			     "lat %06ld %llu GET /api/v1/items?id=%ld HTTP/1.1 200 %ld probe-latency-sample\n",
			     seq, (unsigned long long)t, seq * 7919 % 100000, seq * 31 % 9000);
		if (write(lfd, line, (size_t)n) != n) {
			fprintf(stderr, "latency: write %s: %s\n", path, strerror(errno));
			return 1;
		}
		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_sec += 5;
		pthread_mutex_lock(&R.mu);
		err = 0;
		while (R.received <= seq && R.error == 0 && err == 0)
			err = pthread_cond_timedwait(&R.cv, &R.mu, &deadline);
		if (R.received <= seq) {
			int e = R.error;

			pthread_mutex_unlock(&R.mu);
			if (e == -1)
				fprintf(stderr, "latency: cursor read returned EOF (sample %ld)\n", seq);
			else if (e != 0)
				fprintf(stderr, "latency: cursor read: %s (sample %ld)\n", strerror(e), seq);
			else
				fprintf(stderr, "latency: record %ld not read from the cursor within 5 s\n", seq);
			_exit(1); /* the reader may still be blocked in read() */
		}
		pthread_mutex_unlock(&R.mu);
	}
	qsort(R.lat_ns + warmup, (size_t)samples, sizeof(uint64_t), cmp_u64);
	{
		const uint64_t *s = R.lat_ns + warmup;
#define PCT(q) ((double)s[(size_t)((double)(samples - 1) * (q) + 0.5)] / 1000.0)
		printf("samples=%ld p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f\n", samples,
		       PCT(0.50), PCT(0.90), PCT(0.99), (double)s[samples - 1] / 1000.0);
#undef PCT
	}
	close(lfd);
	fflush(stdout);
	_exit(0); /* closing the cursor would wait for the blocked reader */
}
