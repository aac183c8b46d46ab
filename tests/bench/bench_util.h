/* bench_util.h - the few helpers the benchmark clients share (header-only:
 * each client is one translation unit built straight from run.sh).
 *
 *   bench_now_ns()             CLOCK_MONOTONIC in nanoseconds
 *   bench_load_lines(path, &l) reads a file of '\n'-terminated lines; the
 *                              caller frees l.buf and l.off
 *   bench_connect(host, port)  blocking TCP connection with TCP_NODELAY
 *   bench_write_all(fd, b, n)  write() until done; 0 or -errno
 *
 * Errors: functions return 0 / a descriptor, or a negative errno; callers
 * print what failed and exit non-zero, which run.sh reports as "n.a.".
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct bench_lines {
	char *buf;     /* the whole file; each line's '\n' is kept */
	size_t *off;   /* n + 1 offsets: line i is buf[off[i] .. off[i+1]-1) */
	size_t n;      /* line count */
	size_t bytes;  /* value bytes (without the '\n's) */
};

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Line i without its newline: pointer and length. */
static inline const char *bench_line(const struct bench_lines *l, size_t i, size_t *len)
{
	*len = l->off[i + 1] - l->off[i] - 1;
	return l->buf + l->off[i];
}

static inline int bench_load_lines(const char *path, struct bench_lines *l)
{
	struct stat st;
	size_t got = 0, cap = 1024;
	FILE *f = fopen(path, "rb");
	int rc = 0;

	memset(l, 0, sizeof(*l));
	if (f == NULL)
		return -errno;
	if (fstat(fileno(f), &st) != 0) {
		rc = -errno;
		goto out;
	}
	l->buf = malloc((size_t)st.st_size + 1);
	l->off = malloc(cap * sizeof(*l->off));
	if (l->buf == NULL || l->off == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	got = fread(l->buf, 1, (size_t)st.st_size, f);
	if (got != (size_t)st.st_size) {
		rc = -EIO;
		goto out;
	}
	if (got > 0 && l->buf[got - 1] != '\n')
		l->buf[got++] = '\n';
	l->off[0] = 0;
	for (char *p = l->buf, *end = l->buf + got; p < end;) {
		char *nl = memchr(p, '\n', (size_t)(end - p));

		if (l->n + 2 > cap) {
			size_t *o = realloc(l->off, 2 * cap * sizeof(*o));

			if (o == NULL) {
				rc = -ENOMEM;
				goto out;
			}
			l->off = o;
			cap *= 2;
		}
		l->off[++l->n] = (size_t)(nl + 1 - l->buf);
		l->bytes += (size_t)(nl - p);
		p = nl + 1;
	}
out:
	fclose(f);
	if (rc != 0) {
		free(l->buf);
		free(l->off);
		memset(l, 0, sizeof(*l));
	}
	return rc;
}

static inline int bench_connect(const char *host, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int one = 1, fd;

	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		return -EINVAL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static inline int bench_write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;

	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

#endif
