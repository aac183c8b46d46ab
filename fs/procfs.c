/*
 * procfs.c - see procfs.h.
 *
 * One detached thread per read: reads are rare (a cursor's close, a FLUSH
 * from another process than the writer, a lookup of an unknown group name),
 * and a thread stuck in the kernel must not hold up the next read. The job
 * is shared by caller and thread; whoever finishes with it last frees it.
 */
#include "procfs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../logstore/log.h"

struct job {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char path[64];
	size_t size;
	int rc;       /* [mu] */
	int done;     /* [mu] the thread has read */
	int left;     /* [mu] the caller stopped waiting */
	char buf[];
};

static void job_free(struct job *j)
{
	pthread_mutex_destroy(&j->mu);
	pthread_cond_destroy(&j->cv);
	free(j);
}

static void *reader(void *arg)
{
	struct job *j = arg;
	int rc = -ENOENT;
	int fd = open(j->path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, j->buf, j->size - 1);
		if (n < 0 && (errno == EACCES || errno == EPERM))
			rc = -EACCES;
		close(fd);
		if (n > 0) {
			j->buf[n] = 0;
			rc = 0;
		}
	} else if (errno == EACCES || errno == EPERM) {
		rc = -EACCES;
	}
	pthread_mutex_lock(&j->mu);
	j->rc = rc;
	j->done = 1;
	int left = j->left;
	pthread_cond_signal(&j->cv);
	pthread_mutex_unlock(&j->mu);
	if (left)
		job_free(j);
	return NULL;
}

int proc_read(pid_t pid, const char *file, char *buf, size_t size)
{
	struct job *j = calloc(1, sizeof(*j) + size);
	if (!j)
		return -ENOMEM;
	pthread_mutex_init(&j->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cv, &ca);
	pthread_condattr_destroy(&ca);
	snprintf(j->path, sizeof(j->path), "/proc/%d/%s", (int)pid, file);
	j->size = size;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 64 * 1024);
	pthread_t t;
	int err = pthread_create(&t, &a, reader, j);
	pthread_attr_destroy(&a);
	if (err) {
		job_free(j);
		return -ENOMEM;
	}
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_nsec += (long)PROC_WAIT_MS * 1000000L;
	dl.tv_sec += dl.tv_nsec / 1000000000L;
	dl.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&j->mu);
	while (!j->done && pthread_cond_timedwait(&j->cv, &j->mu, &dl) != ETIMEDOUT)
		;
	int rc = j->done ? j->rc : -ETIMEDOUT;
	static atomic_bool warned;
	if (rc == -EACCES && !atomic_exchange(&warned, true))
		tfs_warn("cannot read %s: the daemon may not read the files of another user's "
		         "processes (it runs as uid %d). A cursor closed by such a process is "
		         "taken as a normal close even when a signal killed it (its last read "
		         "is committed, not delivered again), and opening a new group's cursor "
		         "does not create the group: run topicfs as root, or as that user "
		         "(logged once)", j->path, (int)getuid());
	if (j->done && rc == 0)
		memcpy(buf, j->buf, size);
	j->left = !j->done;
	int done = j->done;
	pthread_mutex_unlock(&j->mu);
	if (done)
		job_free(j);
	return rc;
}

pid_t proc_tgid(pid_t tid)
{
	char buf[1024];
	int rc = proc_read(tid, "status", buf, sizeof(buf));
	if (rc < 0)
		return rc;
	const char *t = strstr(buf, "\nTgid:");
	return t ? (pid_t)strtol(t + 7, NULL, 10) : -ENOENT;
}

int proc_same_process(pid_t a, pid_t b)
{
	if (a == b)
		return 1;
	pid_t ta = proc_tgid(a);
	return ta >= 0 && ta == proc_tgid(b);
}
