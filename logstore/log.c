/*
 * log.c - the daemon log (see log.h).
 *
 * Owns: the output descriptor (stderr until tfs_log_open) and the level.
 * Each line is formatted in full on the caller's stack and written with one
 * write(2) under a mutex, so lines from different threads never interleave:
 *
 *   2026-11-21T14:25:14.123Z WARN orders/3: append refused: no space left\n
 *
 * Invariants:
 *  1. A line is at most TFS_LOG_LINE_MAX bytes; longer messages are cut and
 *     end in "...".
 *  2. Timestamps are UTC wall time with milliseconds (ISO 8601, 'Z').
 *  3. Logging never fails the caller: write errors are ignored.
 */
#include "log.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TFS_LOG_LINE_MAX 4096

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = STDERR_FILENO;          /* guarded by log_mu */
static atomic_int log_level = TFS_LOG_INFO;
static atomic_int log_copy;                  /* tfs_log_copy_to_stderr */

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void tfs_log_set_level(enum tfs_log_level level)
{
	atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

int tfs_log_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	pthread_mutex_lock(&log_mu);
	int old = log_fd;
	log_fd = fd;
	pthread_mutex_unlock(&log_mu);
	if (old != STDERR_FILENO)
		close(old);
	return 0;
}

void tfs_log_copy_to_stderr(int on) { atomic_store(&log_copy, on != 0); }

static void write_all(int fd, const char *buf, size_t n)
{
	size_t off = 0;
	while (off < n) {
		ssize_t w = write(fd, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
}

void tfs_log(enum tfs_log_level level, const char *fmt, ...)
{
	if ((int)level < atomic_load_explicit(&log_level, memory_order_relaxed))
		return;
	if ((unsigned)level > TFS_LOG_ERROR)
		level = TFS_LOG_ERROR;

	int saved_errno = errno;
	char line[TFS_LOG_LINE_MAX];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %s ",
	                      ts.tv_nsec / 1000000, level_names[level]);

	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	if ((size_t)m >= sizeof(line) - n - 1) {
		n = sizeof(line) - 1;
		memcpy(line + n - 3, "...", 3);
	} else {
		n += (size_t)m;
	}
	line[n++] = '\n';

	pthread_mutex_lock(&log_mu);
	write_all(log_fd, line, n);
	if (level >= TFS_LOG_WARN && log_fd != STDERR_FILENO && atomic_load(&log_copy))
		write_all(STDERR_FILENO, line, n);
	pthread_mutex_unlock(&log_mu);
	errno = saved_errno;
}

static __thread char reason_buf[512];
static __thread int reason_err; /* 0: none */

void tfs_reason(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason_buf, sizeof(reason_buf), fmt, ap);
	va_end(ap);
	reason_err = err;
	tfs_log(TFS_LOG_DEBUG, "%s", reason_buf);
}

int tfs_reason_take(int err, char *out, unsigned long n)
{
	int match = reason_err != 0 && tfs_errno(reason_err) == err;
	reason_err = 0;
	if (match && n)
		snprintf(out, n, "%s", reason_buf);
	return match;
}
