/*
 * cursor.c - cursor and pending files: a member of a consumer group per open
 * file, reads that consume, waiting reads, and the commit rule.
 *
 * The commit rule (INTERFACE.md section 6). Records returned by a read are
 * committed when the same open file reads again (the start of every read
 * commits the previous one) or when the file is closed by a process that
 * closes it or exits normally. When the closing process is dying from a
 * signal, the last read's records go back to the group. Only the process
 * that read last counts: a FLUSH from another one (a child that inherited
 * the descriptor, such as the `$(date)` a shell consumer runs while it
 * handles a record) does nothing, so the consumer dying afterwards still
 * gets its record again. The daemon tells the two apart at FLUSH, which the
 * kernel sends from the closing task itself,
 * still alive while it runs its exit path: /proc/<pid>/stat then shows
 * PF_EXITING (0x4) in `flags` (field 9) and the wait status in `exit_code`
 * (field 52): low 7 bits non-zero = killed by that signal. An ordinary
 * close() has PF_EXITING clear. Limits: the daemon must be able to read the
 * process's stat (root, or the same user); `cat cursor | head -1` is
 * at-least-once (cat dies of SIGPIPE holding records it read but could not
 * write).
 *
 * Filling a read: the coordinator renders whole records straight into the
 * reply buffer, a partition's run per call (rep_member_take_bulk); a read
 * under 64 KiB asks for one record; a record longer than the read is taken
 * whole into `carry` and handed out over the following reads.
 *
 * Waiting reads. A read with nothing to return (and no O_NONBLOCK) is
 * parked: its request is kept in the cursor and answered when the group
 * coordinator's waker says records may be there, or with EINTR when the
 * kernel interrupts it (Ctrl-C). No FUSE thread waits. Parking races with
 * interrupts and wakers, so it is a small state machine under c->lock:
 *
 *     IDLE --park--> REGISTERING --fuse_req_interrupt_func returns--> PARKED
 *                       |  interrupt: EARLY_INTR (we reply EINTR)       |
 *                       |  wake: sets `woken` (we retry the read)       |
 *     IDLE <--reply (records / EINTR)-----------------------------------+
 *
 * Wakers find the cursor through a registry of serial numbers (so a waker
 * racing with close never touches freed memory). One called from a thread
 * that holds no cursor lock (the notifier after an append, a reset, a join
 * or a leave) answers the parked read right there; one called from inside
 * a cursor handler (another cursor's commit handing a partition over)
 * holds that cursor's lock, so it only queues the serial number and the
 * `waker` thread does the work (locks_held tells the two apart).
 */
#define FUSE_USE_VERSION 312
#include "cursor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../logstore/log.h"
#include "procfs.h"

#define SMALL_READ (64 * 1024)
#define PF_EXITING 0x4u

enum wait_state { W_IDLE, W_REGISTERING, W_EARLY_INTR, W_PARKED };

struct cursor {
	uint64_t serial;
	atomic_int refs;
	struct cursor *next_in_bucket;

	pthread_mutex_t lock; /* everything below */
	struct rep_topic *topic;
	struct rep_group *group;
	struct rep_member *member;   /* NULL once released */
	int pending;
	pid_t reader;                /* the task that read last (0: none yet) */

	char *buf;                   /* reply buffer */
	size_t cap;
	char *carry;                 /* rest of a record longer than the last read */
	size_t carry_len, carry_off;

	enum wait_state wstate;
	fuse_req_t wreq;
	size_t wsize;
	int woken;
	struct fuse_pollhandle *ph;
};

/* ---- registry and waker thread ------------------------------------------- */

#define NBUCKETS 1024
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cursor *buckets[NBUCKETS];
static uint64_t next_serial = 1;

static pthread_mutex_t wq_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wq_cond = PTHREAD_COND_INITIALIZER;
static uint64_t *wq;
static size_t wq_len, wq_cap;
static int wq_stop, wq_started;
static pthread_t waker_thread;

static void cursor_unref(struct cursor *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	if (c->topic)
		rep_topic_put(c->topic);
	free(c->buf);
	free(c->carry);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

static struct cursor *registry_get(uint64_t serial)
{
	pthread_mutex_lock(&reg_lock);
	struct cursor *c = buckets[serial % NBUCKETS];
	while (c && c->serial != serial)
		c = c->next_in_bucket;
	if (c)
		atomic_fetch_add(&c->refs, 1);
	pthread_mutex_unlock(&reg_lock);
	return c;
}

static void registry_add(struct cursor *c)
{
	pthread_mutex_lock(&reg_lock);
	c->serial = next_serial++;
	struct cursor **b = &buckets[c->serial % NBUCKETS];
	c->next_in_bucket = *b;
	*b = c;
	pthread_mutex_unlock(&reg_lock);
}

static void registry_remove(struct cursor *c)
{
	pthread_mutex_lock(&reg_lock);
	struct cursor **p = &buckets[c->serial % NBUCKETS];
	while (*p && *p != c)
		p = &(*p)->next_in_bucket;
	if (*p)
		*p = c->next_in_bucket;
	pthread_mutex_unlock(&reg_lock);
}

/* Cursor locks this thread holds (see waker()). */
static _Thread_local int locks_held;

static void cursor_lock(struct cursor *c)
{
	pthread_mutex_lock(&c->lock);
	locks_held++;
}

static void cursor_unlock(struct cursor *c)
{
	locks_held--;
	pthread_mutex_unlock(&c->lock);
}

static void wake_one(uint64_t serial);

/* The coordinator's waker. Called with no coordinator lock held; a thread
 * that holds no cursor lock either (the notifier after an append, a reset,
 * a join or leave from another file) answers the parked read itself, one
 * thread hand-off fewer; a cursor handler (its commit hands a partition
 * over) only queues for the `waker` thread, as two handlers could
 * otherwise wait on each other's cursor locks. */
static void waker(void *ctx)
{
	uint64_t serial = (uint64_t)(uintptr_t)ctx;
	if (locks_held == 0) {
		wake_one(serial);
		return;
	}
	pthread_mutex_lock(&wq_lock);
	if (wq_len == wq_cap) {
		size_t c = wq_cap ? wq_cap * 2 : 64;
		uint64_t *q = realloc(wq, c * sizeof(*q));
		if (!q) {
			pthread_mutex_unlock(&wq_lock);
			tfs_error("cursor waker: out of memory; a waiting read may stall");
			return;
		}
		wq = q;
		wq_cap = c;
	}
	wq[wq_len++] = serial;
	pthread_cond_signal(&wq_cond);
	pthread_mutex_unlock(&wq_lock);
}

/* ---- filling a read -------------------------------------------------------- */

static int ensure_buf(char **buf, size_t *cap, size_t size)
{
	if (*cap >= size)
		return 0;
	char *b = realloc(*buf, size);
	if (!b)
		return -ENOMEM;
	*buf = b;
	*cap = size;
	return 0;
}

static void count_out(struct cursor *c, const struct rep_bulk *b)
{
	struct rep_partition *p = rep_topic_partition(c->topic, b->partition);
	if (!p)
		return;
	struct rep_counters *k = rep_partition_counters(p);
	__atomic_add_fetch(&k->records_out, b->records, __ATOMIC_RELAXED);
	__atomic_add_fetch(&k->bytes_out, b->bytes, __ATOMIC_RELAXED);
}

/* Takes one record longer than a read of size bytes (need: its length, as
 * the coordinator said) into c->carry; the read returns its first size bytes
 * from c->buf. Returns the count, 0 if nothing is ready any more, or -errno.
 * Caller holds c->lock. */
static ssize_t fill_long(struct cursor *c, size_t size, size_t need, char sep)
{
	for (;;) {
		struct rep_bulk b;
		char *carry = malloc(need);
		if (!carry)
			return -ENOMEM;
		int rc = rep_member_take_bulk(c->member, carry, need, 1, sep, &b);
		if (rc <= 0) {
			free(carry);
			if (rc != -EMSGSIZE)
				return rc;
			need = b.need; /* another record came first (a reset) */
			continue;
		}
		count_out(c, &b);
		size_t n = b.bytes < size ? b.bytes : size;
		memcpy(c->buf, carry, n);
		free(c->carry);
		c->carry = carry;
		c->carry_len = b.bytes;
		c->carry_off = n;
		if (c->carry_off == c->carry_len)
			c->carry_len = c->carry_off = 0;
		return (ssize_t)n;
	}
}

/* 1 if the cursor's topic or group is gone (rmdir on this or another
 * node): its reads end with ENOENT, a waiting one as soon as it is woken. */
static int gone(const struct cursor *c)
{
	return rep_topic_deleted(c->topic) || rep_group_deleted(c->group);
}

/* Fills c->buf with at most size bytes for a read. Returns the count (0:
 * nothing ready) or -errno. Caller holds c->lock. Records are rendered by
 * the coordinator straight into c->buf, a partition's run at a time
 * (rep_member_take_bulk); a small read takes one record. */
static ssize_t fill(struct cursor *c, size_t size)
{
	if (!c->member)
		return -EBADF;
	if (gone(c)) {
		tfs_warn("refused: read %s/groups/%s/%s: the %s was deleted (%s)",
		         rep_topic_name(c->topic), rep_group_name(c->group),
		         c->pending ? "pending" : "cursor",
		         rep_topic_deleted(c->topic) ? "topic" : "group", strerror(ENOENT));
		return -ENOENT;
	}
	if (ensure_buf(&c->buf, &c->cap, size ? size : 1) < 0)
		return -ENOMEM;
	if (c->carry_len) {
		/* The rest of a record a previous read began. */
		size_t n = c->carry_len - c->carry_off;
		if (n > size)
			n = size;
		memcpy(c->buf, c->carry + c->carry_off, n);
		c->carry_off += n;
		if (c->carry_off == c->carry_len)
			c->carry_len = c->carry_off = 0;
		return (ssize_t)n;
	}
	int rc = rep_member_commit(c->member);
	if (rc < 0)
		tfs_warn("%s/groups/%s: commit failed (records will be delivered again): %s",
		         rep_topic_name(c->topic), rep_group_name(c->group), tfs_strerror(rc));
	if (size == 0)
		return 0;
	struct topic_config cfg;
	rep_topic_config(c->topic, &cfg);
	char sep = cfg.key_separator ? cfg.key_separator : '\t';
	uint32_t max = size < SMALL_READ ? 1 : 0; /* a small read returns one record */
	size_t used = 0;
	while (used < size) {
		struct rep_bulk b;
		rc = rep_member_take_bulk(c->member, c->buf + used, size - used, max, sep, &b);
		if (rc == 1) {
			count_out(c, &b);
			used += b.bytes;
			if (max)
				break;
			continue;
		}
		if (used)
			break; /* the rest (or an error) comes with the next read */
		if (rc == -EMSGSIZE) /* longer than the whole buffer */
			return fill_long(c, size, b.need, sep);
		return rc;
	}
	return (ssize_t)used;
}

/* 1 if a read would return something now. Caller holds c->lock. */
static int ready(struct cursor *c)
{
	if (c->pending || c->carry_len || !c->member || gone(c))
		return 1;
	return rep_member_ready(c->member) != 0;
}

/* ---- waiting --------------------------------------------------------------- */

static void interrupted(fuse_req_t req, void *data)
{
	struct cursor *c = data;
	cursor_lock(c);
	if (c->wreq != req) {
		cursor_unlock(c);
		return;
	}
	if (c->wstate == W_REGISTERING) {
		c->wstate = W_EARLY_INTR;
		cursor_unlock(c);
		return;
	}
	if (c->wstate == W_PARKED) {
		c->wstate = W_IDLE;
		c->wreq = NULL;
		cursor_unlock(c);
		fuse_reply_err(req, EINTR);
		return;
	}
	cursor_unlock(c);
}

/* Tries to answer the parked read; caller holds c->lock, which this drops. */
static void try_answer_locked(struct cursor *c)
{
	struct fuse_pollhandle *ph = NULL;
	if (c->ph && ready(c)) {
		ph = c->ph;
		c->ph = NULL;
	}
	if (c->wstate != W_PARKED) {
		cursor_unlock(c);
		goto poll;
	}
	ssize_t n = fill(c, c->wsize);
	if (n == 0) {
		cursor_unlock(c);
		goto poll;
	}
	fuse_req_t req = c->wreq;
	c->wreq = NULL;
	c->wstate = W_IDLE;
	if (n < 0) {
		cursor_unlock(c);
		fuse_reply_err(req, tfs_errno((int)n));
	} else {
		/* c->buf stays ours until the next fill, which needs c->lock. */
		fuse_reply_buf(req, c->buf, (size_t)n);
		cursor_unlock(c);
	}
poll:
	if (ph) {
		fuse_lowlevel_notify_poll(ph);
		fuse_pollhandle_destroy(ph);
	}
}

/* A waker's work: answer the cursor's parked read (or poll) if it can be. */
static void wake_one(uint64_t serial)
{
	struct cursor *c = registry_get(serial);
	if (!c)
		return;
	cursor_lock(c);
	if (c->wstate == W_REGISTERING) {
		c->woken = 1;
		cursor_unlock(c);
	} else {
		try_answer_locked(c);
	}
	cursor_unref(c);
}

static void *waker_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&wq_lock);
	for (;;) {
		while (!wq_stop && wq_len == 0)
			pthread_cond_wait(&wq_cond, &wq_lock);
		if (wq_stop)
			break;
		uint64_t serial = wq[--wq_len];
		pthread_mutex_unlock(&wq_lock);
		wake_one(serial);
		pthread_mutex_lock(&wq_lock);
	}
	pthread_mutex_unlock(&wq_lock);
	return NULL;
}

int cursor_start(void)
{
	int rc = pthread_create(&waker_thread, NULL, waker_main, NULL);
	if (rc)
		return -rc;
	wq_started = 1;
	return 0;
}

void cursor_stop(void)
{
	if (!wq_started)
		return;
	pthread_mutex_lock(&wq_lock);
	wq_stop = 1;
	pthread_cond_signal(&wq_cond);
	pthread_mutex_unlock(&wq_lock);
	pthread_join(waker_thread, NULL);
	free(wq);
	wq = NULL;
	wq_len = wq_cap = 0;
	wq_started = 0;
}

/* ---- the file operations ----------------------------------------------------- */

int cursor_open(struct rep_topic *t, struct rep_group *g, int pending, struct cursor **out)
{
	struct cursor *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->topic = rep_topic_hold(t);
	atomic_init(&c->refs, 1);
	pthread_mutex_init(&c->lock, NULL);
	c->pending = pending;
	c->group = g;
	registry_add(c);
	int rc = rep_member_join(g, waker, (void *)(uintptr_t)c->serial, &c->member);
	if (rc < 0) {
		registry_remove(c);
		c->group = NULL; /* the caller keeps its reference on failure */
		cursor_unref(c);
		return rc;
	}
	*out = c;
	return 0;
}

void cursor_read(struct cursor *c, fuse_req_t req, size_t size, int flags)
{
	cursor_lock(c);
	c->reader = fuse_req_ctx(req)->pid;
	if (c->wstate != W_IDLE) {
		cursor_unlock(c);
		tfs_warn("refused: read of %s/groups/%s: another read on the same open file is "
		         "waiting (EBUSY)", rep_topic_name(c->topic), rep_group_name(c->group));
		fuse_reply_err(req, EBUSY);
		return;
	}
	ssize_t n = fill(c, size);
	if (n > 0) {
		fuse_reply_buf(req, c->buf, (size_t)n);
		cursor_unlock(c);
		return;
	}
	if (n < 0 || c->pending || (flags & O_NONBLOCK)) {
		cursor_unlock(c);
		if (n < 0)
			fuse_reply_err(req, tfs_errno((int)n));
		else if (c->pending)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_err(req, EAGAIN);
		return;
	}
	/* Park until records arrive or the read is interrupted. */
	c->wstate = W_REGISTERING;
	c->wreq = req;
	c->wsize = size;
	c->woken = 0;
	cursor_unlock(c);
	fuse_req_interrupt_func(req, interrupted, c);
	cursor_lock(c);
	if (c->wstate == W_EARLY_INTR) {
		c->wstate = W_IDLE;
		c->wreq = NULL;
		cursor_unlock(c);
		fuse_reply_err(req, EINTR);
		return;
	}
	c->wstate = W_PARKED;
	/* Records may have come while it was registering, woken or not. */
	try_answer_locked(c);
}

void cursor_poll(struct cursor *c, fuse_req_t req, struct fuse_pollhandle *ph)
{
	cursor_lock(c);
	int r = ready(c);
	struct fuse_pollhandle *old = NULL;
	if (ph) {
		old = c->ph;
		c->ph = r ? NULL : ph;
	}
	cursor_unlock(c);
	if (old)
		fuse_pollhandle_destroy(old);
	if (ph && r)
		fuse_pollhandle_destroy(ph);
	fuse_reply_poll(req, r ? POLLIN | POLLRDNORM : 0);
}

/* 1 if pid is exiting because a signal killed it. */
static int killed_by_signal(pid_t pid)
{
	char buf[4096];
	/* Gone already: it was not waiting on us. Timed out: the FLUSH comes
	 * from inside execve() (close-on-exec), which holds what the read needs
	 * until we answer; a process that goes on running a new program. */
	if (proc_read(pid, "stat", buf, sizeof(buf)) < 0)
		return 0;
	char *p = strrchr(buf, ')');
	if (!p)
		return 0;
	/* Fields after "pid (comm)": state is field 3. */
	unsigned long long flags = 0, exit_code = 0;
	int field = 2;
	for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
		field++;
		if (field == 9)
			flags = strtoull(tok, NULL, 10);
		else if (field == 52)
			exit_code = strtoull(tok, NULL, 10);
	}
	if (!(flags & PF_EXITING))
		return 0;
	return (exit_code & 0x7f) != 0;
}

void cursor_flush(struct cursor *c, fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	cursor_lock(c);
	pid_t reader = c->reader;
	cursor_unlock(c);
	/* Another process closing its inherited copy (a child the consumer
	 * ran, exiting or exec'ing) neither commits nor gives back what the
	 * reader took: the reader's own close does, or the release. */
	if (reader && !proc_same_process(reader, ctx->pid)) {
		fuse_reply_err(req, 0);
		return;
	}
	int killed = killed_by_signal(ctx->pid);
	cursor_lock(c);
	if (c->member) {
		if (killed) {
			rep_member_rewind(c->member);
			c->carry_len = c->carry_off = 0;
			tfs_info("%s/groups/%s: process %d died from a signal; its last read "
			         "will be delivered again",
			         rep_topic_name(c->topic), rep_group_name(c->group), (int)ctx->pid);
		} else if (!c->carry_len) {
			int rc = rep_member_save(c->member);
			if (rc < 0)
				tfs_warn("%s/groups/%s: commit at close failed: %s",
				         rep_topic_name(c->topic), rep_group_name(c->group),
				         tfs_strerror(rc));
		}
	}
	cursor_unlock(c);
	fuse_reply_err(req, 0);
}

void cursor_release(struct cursor *c)
{
	registry_remove(c);
	cursor_lock(c);
	struct rep_member *m = c->member;
	c->member = NULL;
	struct fuse_pollhandle *ph = c->ph;
	c->ph = NULL;
	/* A record still half returned was not delivered: give it back. */
	int commit = c->carry_len == 0;
	cursor_unlock(c);
	if (ph)
		fuse_pollhandle_destroy(ph);
	if (m)
		rep_member_leave(m, commit);
	rep_group_put(c->group);
	cursor_unref(c);
}
