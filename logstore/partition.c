/*
 * partition.c - one partition: its segments, the view, durability, recovery,
 * retention, leader epochs and producer dedup (API and invariants in
 * logstore.h).
 *
 * Owns: the segment list of DIR, partition.meta, the clean marker, the
 * in-memory state below, the thread-local encode/decode contexts, and the
 * process-wide pool of helper threads that compress, decompress and render
 * the pieces of one batch in parallel (see "helper threads"; readers also
 * read ahead on it, see "readers").
 *
 * partition.meta (text, replaced atomically; the crc line covers every byte
 * before it):
 *
 *   topicfs-partition 1
 *   start_offset N        oldest retained offset
 *   start_pos N           its view position
 *   recovery_offset N     base of the first segment to re-scan after a crash
 *   recovery_pos N        view position where that segment starts
 *   high_watermark N
 *   leader_epoch N        epoch stamped on new batches
 *   epoch E START         leader-epoch cache, one line per epoch, ascending
 *   crc XXXXXXXX          CRC-32C (hex) of all bytes before this line
 *
 * Locks, always taken in this order:
 *   maint_mu   retention, compaction, truncation: one at a time
 *   append_mu  writers of the active segment, partition.meta, producer table
 *   lock       rwlock: readers take it shared to look up the index and pread
 *              a batch; writers take it exclusive only to publish (push an
 *              index entry, move end offsets) or to change the segment list.
 *   sync_mu    group commit state only (never held with the others).
 * Helper threads take none of these locks (only the pool's own mutex).
 * Batches are encoded and compressed before any lock is taken; only the base
 * offset, epoch (outside the CRC) and, if another append raced ahead, the
 * timestamp (then the CRC is recomputed) are stamped under append_mu.
 *
 * Lifecycle:
 *
 *   ls_partition_open ──> [recover] ──> OPEN ──(write/fsync fails)──> STICKY
 *        │                               │                              │
 *        └── unlink clean marker         └──────── ls_partition_close ──┴──> (freed)
 *                                                  writes clean marker if not STICKY
 *
 * Compaction (ls_partition_compact), for each closed segment X that loses
 * records:
 *   write X.log.cleaned + X.idx.cleaned, fsync both
 *   rename X.idx.cleaned -> X.idx.swap, then X.log.cleaned -> X.log.swap; fsync dir
 *   under the exclusive lock: rename X.idx.swap -> X.idx, X.log.swap -> X.log
 *   fsync dir
 * A crash anywhere leaves the old segment (plus *.cleaned or an orphan
 * X.idx.swap, removed at open) or a complete X.log.swap that open finishes.
 * Each run of consecutive surviving records becomes a batch of its own, so
 * no batch has a view hole inside it: the hole between runs is visible in
 * the index (view_pos of the next entry > view_pos + view_size).
 *
 * Invariants:
 *  1. segs[] is sorted by base offset; segs[nsegs-1] is the active segment
 *     and is never deleted by retention or rewritten by compaction.
 *  2. Every segment with base < recovery_offset has been fsynced (log and
 *     idx) and its .idx is trusted; segments at or after it are re-scanned
 *     after an unclean shutdown. recovery_offset is the active segment's base.
 *  3. A batch is published (visible to lookups) only after its bytes and
 *     index entry are written; readers additionally stop at the high
 *     watermark.
 *  4. gen changes whenever published batch bytes change meaning (truncate,
 *     compaction): readers drop their cached batch. layout changes whenever
 *     segments leave segs[] (retention, truncate, compaction): readers
 *     re-find their position.
 *  5. After a failed fsync, or a failed write that could not be truncated
 *     away, sticky != 0 and nothing more is written (never retry fsync).
 */
#include "logstore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "batch.h"
#include "crc32c.h"
#include "fsutil.h"
#include "index.h"
#include "log.h"
#include "segment.h"

#define META_NAME "partition.meta"
#define CLEAN_NAME "clean"
#define META_MAX (64 * 1024)
#define MAX_EPOCHS 1024
#define PRODUCER_WINDOW 5             /* batches remembered per producer */
#define PRODUCER_BUCKETS 1024
#define PRODUCER_MAX 8192             /* producers remembered per partition */
#define PRODUCER_REBUILD_BYTES (8u << 20) /* tail of the log scanned at open */

struct epoch_entry {
	int32_t epoch;
	int64_t start_offset;
};

struct pbatch {
	int32_t first_seq, last_seq;
	int64_t base_offset, last_offset;
	uint64_t view_end;
};

struct pstate {
	int64_t pid;
	int16_t epoch;
	uint8_t n, head;                  /* ring of the last n batches */
	struct pbatch b[PRODUCER_WINDOW];
	struct pstate *next;              /* hash bucket chain */
	struct pstate *older, *newer;     /* recency list: evict from the oldest end */
};

struct ls_partition {
	char *dir;
	int dirfd;
	pthread_mutex_t maint_mu;
	pthread_mutex_t append_mu;
	pthread_rwlock_t lock;

	/* [lock] written under append_mu (or maint_mu) + exclusive lock */
	struct ls_config cfg;
	struct ls_segment **segs;
	size_t nsegs, segs_cap;
	int64_t start_offset, end_offset, hw;
	uint64_t start_pos, end_pos, hw_pos;
	uint64_t bytes;
	int64_t last_ts, last_append_ms;
	int32_t leader_epoch;
	struct epoch_entry *epochs;
	size_t nepochs;
	uint64_t gen, layout;
	uint64_t append_seq;
	uint64_t appended_bytes;   /* total ever written by appends */

	/* [maint_mu] what the last compaction saw */
	int64_t compact_end;       /* high watermark it last ran at; -1: never ran */
	int64_t compact_active;    /* base of the active segment */
	uint64_t compact_appended; /* appended_bytes */

	/* [append_mu] */
	int64_t recovery_offset;
	uint64_t recovery_pos;
	int meta_dirty;
	struct pstate *pbuckets[PRODUCER_BUCKETS];
	struct pstate *poldest, *pnewest;
	size_t nproducers;

	atomic_int sticky;

	/* [sync_mu] group commit */
	pthread_mutex_t sync_mu;
	pthread_cond_t sync_cv;
	int syncing;
	uint64_t synced_seq;
};

/* Where a batch is: segment index and entry index, valid for one layout. */
struct loc {
	size_t seg, idx;
};

/* ---- thread-local contexts ---------------------------------------------- */

struct tls_ctx {
	struct ls_buf enc, zscratch;
	struct ls_buf dscratch; /* a rendering piece's frame, decompressed */
	ZSTD_CCtx *cctx;
	struct ls_scan_ctx scan;
};

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static int tls_ok;

static void tls_free(void *v)
{
	struct tls_ctx *t = v;
	ls_buf_free(&t->enc);
	ls_buf_free(&t->zscratch);
	ls_buf_free(&t->dscratch);
	ZSTD_freeCCtx(t->cctx);
	ls_scan_ctx_free(&t->scan);
	free(t);
}

static void tls_init(void)
{
	tls_ok = pthread_key_create(&tls_key, tls_free) == 0;
}

static struct tls_ctx *tls_get(void)
{
	pthread_once(&tls_once, tls_init);
	if (!tls_ok)
		return NULL;
	struct tls_ctx *t = pthread_getspecific(tls_key);
	if (t)
		return t;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->scan.dctx = ZSTD_createDCtx();
	if (!t->scan.dctx || pthread_setspecific(tls_key, t) != 0) {
		tls_free(t);
		return NULL;
	}
	return t;
}

static ZSTD_CCtx *tls_cctx(void)
{
	struct tls_ctx *t = tls_get();
	if (t && !t->cctx)
		t->cctx = ZSTD_createCCtx();
	return t ? t->cctx : NULL;
}

/* ---- helper threads --------------------------------------------------------
 *
 * One pool per process of (online CPUs - 1) helper threads, at most
 * HELPERS_MAX, started on first use. A batch's compression, decompression
 * and rendering are split into pieces (batch.c, ls_batch_par); par_run
 * queues the job, works on it on the calling thread too, and claims every
 * piece no helper has started, so a busy helper, or one slow to wake on the
 * other core, costs at most the piece it holds. par_run returns only once no
 * helper is inside the job (helpers counts them under pool.mu), so the job
 * can live on the caller's stack. par_post and par_join are its two halves,
 * for work started now and collected later (a reader's read-ahead: the job
 * lives in the reader, and closing it joins with cancel). Helpers never
 * take partition locks.
 */
#define HELPERS_MAX 7

struct pjob {
	void (*fn)(void *arg, size_t i);
	void *arg;
	size_t n;
	atomic_size_t next;  /* next piece to claim */
	int helpers;         /* [pool.mu] helpers working on it */
	int queued;          /* [pool.mu] */
	struct pjob *qnext;  /* [pool.mu] */
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t work; /* helpers wait for a job */
	pthread_cond_t left; /* callers wait for helpers to leave their job */
	struct pjob *head, *tail;
	size_t nhelpers;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER,
          .work = PTHREAD_COND_INITIALIZER,
          .left = PTHREAD_COND_INITIALIZER};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static void par_init(void);

static void pool_dequeue(struct pjob *j) /* pool.mu held */
{
	struct pjob **pp = &pool.head, *prev = NULL;
	while (*pp && *pp != j) {
		prev = *pp;
		pp = &(*pp)->qnext;
	}
	if (*pp) {
		*pp = j->qnext;
		if (pool.tail == j)
			pool.tail = prev;
	}
	j->queued = 0;
}

static void run_pieces(struct pjob *j)
{
	size_t i;
	while ((i = atomic_fetch_add(&j->next, 1)) < j->n)
		j->fn(j->arg, i);
}

static void *pool_main(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&pool.mu);
	for (;;) {
		while (!pool.head)
			pthread_cond_wait(&pool.work, &pool.mu);
		struct pjob *j = pool.head;
		j->helpers++;
		pthread_mutex_unlock(&pool.mu);
		run_pieces(j);
		pthread_mutex_lock(&pool.mu);
		if (j->queued) /* every piece is claimed */
			pool_dequeue(j);
		if (--j->helpers == 0)
			pthread_cond_broadcast(&pool.left);
	}
	return NULL;
}

static void pool_start(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t want = cpus > 1 ? (size_t)cpus - 1 : 0;
	if (want > HELPERS_MAX)
		want = HELPERS_MAX;
	pthread_attr_t a;
	if (pthread_attr_init(&a) != 0)
		return;
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	for (size_t i = 0; i < want; i++) {
		pthread_t th;
		if (pthread_create(&th, &a, pool_main, NULL) != 0)
			break;
		pool.nhelpers++;
	}
	pthread_attr_destroy(&a);
	if (pool.nhelpers < want)
		tfs_warn("logstore: %zu of %zu helper threads started", pool.nhelpers, want);
}

/* Queues j for the helpers: n pieces of fn. With no helpers nothing is
 * queued and par_join runs every piece. */
static void par_post(struct pjob *j, void (*fn)(void *arg, size_t i), void *arg, size_t n)
{
	pthread_once(&pool_once, par_init);
	*j = (struct pjob){.fn = fn, .arg = arg, .n = n};
	atomic_init(&j->next, 0);
	if (!pool.nhelpers)
		return;
	pthread_mutex_lock(&pool.mu);
	j->queued = 1;
	if (pool.tail)
		pool.tail->qnext = j;
	else
		pool.head = j;
	pool.tail = j;
	if (n > 1 && pool.nhelpers > 1)
		pthread_cond_broadcast(&pool.work);
	else
		pthread_cond_signal(&pool.work);
	pthread_mutex_unlock(&pool.mu);
}

/* Runs the pieces of j nobody has claimed (all of them unless cancel: then
 * none) and returns once no helper is inside j. */
static void par_join(struct pjob *j, int cancel)
{
	if (cancel)
		atomic_store(&j->next, j->n);
	else
		run_pieces(j);
	pthread_mutex_lock(&pool.mu);
	if (j->queued)
		pool_dequeue(j);
	while (j->helpers)
		pthread_cond_wait(&pool.left, &pool.mu);
	pthread_mutex_unlock(&pool.mu);
}

static void par_run(void *ctx, size_t n, void (*fn)(void *arg, size_t i), void *arg)
{
	(void)ctx;
	struct pjob j;
	if (n < 2) {
		for (size_t i = 0; i < n; i++)
			fn(arg, i);
		return;
	}
	par_post(&j, fn, arg, n);
	par_join(&j, 0);
}

static ZSTD_CCtx *par_cctx(void *ctx)
{
	(void)ctx;
	return tls_cctx();
}

static ZSTD_DCtx *par_dctx(void *ctx)
{
	(void)ctx;
	struct tls_ctx *t = tls_get();
	return t ? t->scan.dctx : NULL;
}

static struct ls_buf *par_scratch(void *ctx)
{
	(void)ctx;
	struct tls_ctx *t = tls_get();
	return t ? &t->dscratch : NULL;
}

static struct ls_batch_par par_hooks = {
	.run = par_run, .cctx = par_cctx, .dctx = par_dctx, .scratch = par_scratch};

static void par_init(void)
{
	pool_start();
	/* two pieces per thread: a reader that needs a batch the helpers are
	 * still decoding waits for at most one piece, and runs the ones not
	 * started itself. On 2 cores, against one piece per thread: cat
	 * pending 3-6% and cat log 9% faster, produce within 3%, 0.25% more
	 * bytes (zstd restarts its window at every piece) */
	par_hooks.parts = 2 * (pool.nhelpers + 1);
}

/* The hooks batch.c uses to spread one batch over the pool. */
static const struct ls_batch_par *batch_par(void)
{
	pthread_once(&pool_once, par_init);
	return &par_hooks;
}

/* ---- small helpers -------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct ls_segment *active(struct ls_partition *p)
{
	return p->segs[p->nsegs - 1];
}

static uint64_t seg_limit(const struct ls_partition *p)
{
	uint64_t lim = p->cfg.segment_bytes ? p->cfg.segment_bytes : 1;
	return lim > UINT32_MAX ? UINT32_MAX : lim;
}

static void make_sticky(struct ls_partition *p, int rc, const char *what)
{
	int expected = 0;
	if (rc >= 0)
		rc = -EIO;
	if (atomic_compare_exchange_strong(&p->sticky, &expected, rc))
		tfs_error("%s: %s failed (%s); partition is read-only until reopened",
		          p->dir, what, tfs_strerror(rc));
}

static int sticky_rc(struct ls_partition *p)
{
	return atomic_load(&p->sticky) ? LS_ESTICKY : 0;
}

/* ENOSPC-like failures leave the partition writable once undone. */
static int is_space_error(int rc)
{
	return rc == -ENOSPC || rc == -EDQUOT || rc == -EFBIG;
}

void ls_config_default(struct ls_config *cfg)
{
	cfg->segment_bytes = 1ull << 30;
	cfg->retention_ms = -1;
	cfg->retention_bytes = -1;
	cfg->compression = LS_CODEC_ZSTD;
	cfg->compression_level = 1;
	cfg->cleanup = LS_CLEANUP_DELETE;
}

/* ---- partition.meta ----------------------------------------------------- */

struct meta {
	int64_t start_offset, recovery_offset, hw;
	uint64_t start_pos, recovery_pos;
	int32_t leader_epoch;
	struct epoch_entry *epochs;
	size_t nepochs;
};

/* Caller holds append_mu (fields it reads are stable, but for the high
 * watermark and the log start: those are read under the lock) and not lock. */
static int write_meta(struct ls_partition *p)
{
	int rc;
	size_t cap = 512 + p->nepochs * 48, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	pthread_rwlock_rdlock(&p->lock);
	int64_t start = p->start_offset, hw = p->hw;
	uint64_t start_pos = p->start_pos;
	pthread_rwlock_unlock(&p->lock);
	n += (size_t)snprintf(buf + n, cap - n,
	                      "topicfs-partition 1\nstart_offset %" PRId64
	                      "\nstart_pos %" PRIu64 "\nrecovery_offset %" PRId64
	                      "\nrecovery_pos %" PRIu64 "\nhigh_watermark %" PRId64
	                      "\nleader_epoch %" PRId32 "\n",
	                      start, start_pos, p->recovery_offset,
	                      p->recovery_pos, hw, p->leader_epoch);
	for (size_t i = 0; i < p->nepochs; i++)
		n += (size_t)snprintf(buf + n, cap - n, "epoch %" PRId32 " %" PRId64 "\n",
		                      p->epochs[i].epoch, p->epochs[i].start_offset);
	n += (size_t)snprintf(buf + n, cap - n, "crc %08x\n", ls_crc32c(0, buf, n));
	rc = ls_fsutil_write_atomic(p->dirfd, META_NAME, buf, n);
	free(buf);
	if (rc == 0)
		p->meta_dirty = 0;
	return rc;
}

/* Writes meta after a change that must be durable; a failure other than
 * running out of space makes the partition read-only. */
static int persist_meta(struct ls_partition *p, const char *why)
{
	int rc = write_meta(p);
	if (rc < 0) {
		p->meta_dirty = 1;
		if (is_space_error(rc))
			tfs_warn("%s: %s: writing %s: %s", p->dir, why, META_NAME,
			         tfs_strerror(rc));
		else
			make_sticky(p, rc, "writing " META_NAME);
	}
	return rc;
}

static int read_meta(struct ls_partition *p, struct meta *m)
{
	char *buf = malloc(META_MAX + 1);
	size_t len = 0;
	int rc;
	memset(m, 0, sizeof(*m));
	if (!buf)
		return -ENOMEM;
	rc = ls_fsutil_read_file(p->dirfd, META_NAME, buf, META_MAX, &len);
	if (rc < 0)
		goto out;
	buf[len] = '\0';
	rc = LS_ECORRUPT;
	char *crc_line = strstr(buf, "crc ");
	unsigned crc;
	if (!crc_line || (crc_line != buf && crc_line[-1] != '\n') ||
	    sscanf(crc_line, "crc %8x", &crc) != 1 ||
	    crc != ls_crc32c(0, buf, (size_t)(crc_line - buf)) ||
	    strncmp(buf, "topicfs-partition 1\n", 20) != 0)
		goto out;
	*crc_line = '\0';
	m->epochs = calloc(MAX_EPOCHS, sizeof(*m->epochs));
	if (!m->epochs) {
		rc = -ENOMEM;
		goto out;
	}
	for (char *line = strtok(buf + 20, "\n"); line; line = strtok(NULL, "\n")) {
		int32_t e;
		int64_t v;
		uint64_t u;
		if (sscanf(line, "start_offset %" SCNd64, &v) == 1)
			m->start_offset = v;
		else if (sscanf(line, "start_pos %" SCNu64, &u) == 1)
			m->start_pos = u;
		else if (sscanf(line, "recovery_offset %" SCNd64, &v) == 1)
			m->recovery_offset = v;
		else if (sscanf(line, "recovery_pos %" SCNu64, &u) == 1)
			m->recovery_pos = u;
		else if (sscanf(line, "high_watermark %" SCNd64, &v) == 1)
			m->hw = v;
		else if (sscanf(line, "leader_epoch %" SCNd32, &e) == 1)
			m->leader_epoch = e;
		else if (sscanf(line, "epoch %" SCNd32 " %" SCNd64, &e, &v) == 2) {
			if (m->nepochs == MAX_EPOCHS)
				goto out;
			m->epochs[m->nepochs++] = (struct epoch_entry){e, v};
		} else
			goto out;
	}
	rc = 0;
out:
	if (rc < 0) {
		free(m->epochs);
		m->epochs = NULL;
		m->nepochs = 0;
	}
	free(buf);
	return rc;
}

/* ---- lookups (caller holds lock, shared or exclusive) --------------------- */

/* Largest k with segs[k]->base_offset <= offset, or 0. */
static size_t seg_for_offset(const struct ls_partition *p, int64_t offset)
{
	size_t lo = 0, hi = p->nsegs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (p->segs[mid]->base_offset <= offset)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo ? lo - 1 : 0;
}

/* Largest k with segs[k]->start_pos <= pos, or 0. */
static size_t seg_for_pos(const struct ls_partition *p, uint64_t pos)
{
	size_t lo = 0, hi = p->nsegs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (p->segs[mid]->start_pos <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo ? lo - 1 : 0;
}

/* The batch with the largest base offset <= offset, or the first batch after
 * offset. Returns 0 with *l set, or 1 if there is no such batch. The found
 * batch may end before offset (a compaction gap): callers then step on. */
static int find_by_offset(const struct ls_partition *p, int64_t offset, struct loc *l)
{
	for (size_t k = seg_for_offset(p, offset); k < p->nsegs; k++) {
		const struct ls_segment *s = p->segs[k];
		if (s->index.n == 0 || offset >= s->end_offset)
			continue;
		ssize_t i = ls_index_find_offset(&s->index, offset);
		*l = (struct loc){k, i < 0 ? 0 : (size_t)i};
		return 0;
	}
	return 1;
}

/* The batch whose view covers pos, or else the first one after pos.
 * Returns 0 with *l set, or 1 if there is none. */
static int find_by_pos(const struct ls_partition *p, uint64_t pos, struct loc *l)
{
	for (size_t k = seg_for_pos(p, pos); k < p->nsegs; k++) {
		const struct ls_segment *s = p->segs[k];
		if (s->index.n == 0)
			continue;
		ssize_t i = ls_index_find_pos(&s->index, pos);
		if (i < 0)
			i = 0;
		const struct ls_index_entry *e = &s->index.e[i];
		if (pos >= e->view_pos + e->view_size) {
			if ((size_t)i + 1 < s->index.n) {
				*l = (struct loc){k, (size_t)i + 1};
				return 0;
			}
			continue;
		}
		*l = (struct loc){k, (size_t)i};
		return 0;
	}
	return 1;
}

/* Steps to the batch after *l. 0, or 1 at the end. */
static int next_loc(const struct ls_partition *p, struct loc *l)
{
	if (l->idx + 1 < p->segs[l->seg]->index.n) {
		l->idx++;
		return 0;
	}
	for (size_t k = l->seg + 1; k < p->nsegs; k++) {
		if (p->segs[k]->index.n) {
			*l = (struct loc){k, 0};
			return 0;
		}
	}
	return 1;
}

static const struct ls_index_entry *loc_entry(const struct ls_partition *p,
                                              const struct loc *l)
{
	return &p->segs[l->seg]->index.e[l->idx];
}

/* Reads batch i of segment s into buf, checks header and CRC (logging
 * damage with dir, segment and byte) and fills *h. */
static int read_batch_at(const struct ls_partition *p, const struct ls_segment *s,
                         size_t i, struct ls_buf *buf, struct ls_batch_header *h)
{
	const struct ls_index_entry *e = &s->index.e[i];
	size_t len = ls_segment_batch_len(s, i);
	int rc = ls_buf_reserve(buf, len);
	if (rc < 0)
		return rc;
	if ((rc = ls_segment_read(s, e->file_pos, buf->data, len)) < 0)
		return rc;
	buf->len = len;
	if (ls_batch_parse_header(buf->data, len, h) < 0 || ls_batch_size(h) != len ||
	    h->base_offset != e->base_offset) {
		tfs_error("%s segment %s: batch at byte %" PRIu32 ": bad header",
		          p->dir, s->name, e->file_pos);
		return LS_ECORRUPT;
	}
	if (ls_batch_check_crc(buf->data, h) < 0) {
		tfs_error("%s segment %s: batch at byte %" PRIu32 ": crc mismatch",
		          p->dir, s->name, e->file_pos);
		return LS_ECORRUPT;
	}
	return 0;
}

static int read_batch_locked(const struct ls_partition *p, const struct loc *l,
                             struct ls_buf *buf, struct ls_batch_header *h)
{
	return read_batch_at(p, p->segs[l->seg], l->idx, buf, h);
}

/* View position of the first record at or after offset. Caller holds lock;
 * may read and decode one batch. */
static int pos_of_locked(struct ls_partition *p, int64_t offset, uint64_t *pos)
{
	struct loc l;
	struct ls_batch_header h;
	struct ls_batch_iter it;
	struct ls_batch_record r;
	int rc;
	if (offset >= p->end_offset) {
		*pos = p->end_pos;
		return 0;
	}
	if (offset <= p->start_offset) {
		*pos = p->start_pos;
		return 0;
	}
	if (find_by_offset(p, offset, &l)) {
		*pos = p->end_pos;
		return 0;
	}
	const struct ls_index_entry *e = loc_entry(p, &l);
	if (offset <= e->base_offset) {
		*pos = e->view_pos;
		return 0;
	}
	struct tls_ctx *t = tls_get();
	if (!t)
		return -ENOMEM;
	if ((rc = read_batch_locked(p, &l, &t->scan.buf, &h)) < 0)
		return rc;
	if (offset > h.base_offset + h.last_offset_delta) {
		if (next_loc(p, &l))
			*pos = p->end_pos;
		else
			*pos = loc_entry(p, &l)->view_pos;
		return 0;
	}
	uint64_t at = e->view_pos;
	if ((rc = ls_batch_iter_init(&it, t->scan.buf.data, &h, &t->scan.scratch,
	                             t->scan.dctx)) < 0)
		return rc;
	while ((rc = ls_batch_iter_next(&it, &r)) == 1 && r.offset < offset)
		at += r.view_size;
	if (rc < 0)
		return rc;
	*pos = at;
	return 0;
}

/* ---- leader-epoch cache ----------------------------------------------------- */

/* Records that epoch starts at start_offset (caller holds append_mu).
 * Entries at or after start_offset are replaced. Returns 1 if changed. */
/* The epoch in force at offset (its entry: the last one starting at or
 * before it), -1 if older than the cache. Caller holds p->lock or
 * append_mu (the writers of the cache hold both). */
static int32_t epoch_at_locked(const struct ls_partition *p, int64_t offset)
{
	for (size_t i = p->nepochs; i-- > 0;)
		if (p->epochs[i].start_offset <= offset)
			return p->epochs[i].epoch;
	return -1;
}

static int epoch_assign(struct ls_partition *p, int32_t epoch, int64_t start_offset)
{
	if (p->nepochs && p->epochs[p->nepochs - 1].epoch >= epoch)
		return 0;
	pthread_rwlock_wrlock(&p->lock);
	while (p->nepochs && p->epochs[p->nepochs - 1].start_offset >= start_offset)
		p->nepochs--;
	if (p->nepochs == MAX_EPOCHS) {
		memmove(p->epochs, p->epochs + 1, (MAX_EPOCHS - 1) * sizeof(*p->epochs));
		p->nepochs--;
	}
	p->epochs[p->nepochs++] = (struct epoch_entry){epoch, start_offset};
	pthread_rwlock_unlock(&p->lock);
	return 1;
}

/* Drops epochs starting after end (recovery: a leader's epoch may start at
 * the log end with nothing appended yet), or with `at` also those starting
 * at end (truncation: their data is gone, and batches of an older epoch
 * appended next must be able to re-establish theirs). Caller holds the
 * exclusive lock. */
static void epochs_truncate_end(struct ls_partition *p, int64_t end, int at)
{
	while (p->nepochs && (p->epochs[p->nepochs - 1].start_offset > end ||
	                      (at && p->epochs[p->nepochs - 1].start_offset == end)))
		p->nepochs--;
}

/* Drops epochs wholly before start, keeping the one in force at start.
 * Caller holds exclusive lock. */
static void epochs_truncate_start(struct ls_partition *p, int64_t start)
{
	size_t drop = 0;
	while (drop + 1 < p->nepochs && p->epochs[drop + 1].start_offset <= start)
		drop++;
	if (drop) {
		memmove(p->epochs, p->epochs + drop, (p->nepochs - drop) * sizeof(*p->epochs));
		p->nepochs -= drop;
	}
	if (p->nepochs && p->epochs[0].start_offset < start)
		p->epochs[0].start_offset = start;
}

/* ---- idempotent producers (caller holds append_mu) --------------------- */

static struct pstate **pbucket(struct ls_partition *p, int64_t pid)
{
	uint64_t h = (uint64_t)pid * 0x9E3779B97F4A7C15ull;
	return &p->pbuckets[(h >> 32) % PRODUCER_BUCKETS];
}

static struct pstate *pfind(struct ls_partition *p, int64_t pid)
{
	for (struct pstate *s = *pbucket(p, pid); s; s = s->next)
		if (s->pid == pid)
			return s;
	return NULL;
}

static void pclear(struct ls_partition *p)
{
	for (size_t i = 0; i < PRODUCER_BUCKETS; i++) {
		while (p->pbuckets[i]) {
			struct pstate *s = p->pbuckets[i];
			p->pbuckets[i] = s->next;
			free(s);
		}
	}
	p->poldest = p->pnewest = NULL;
	p->nproducers = 0;
}

static void punlink_recency(struct ls_partition *p, struct pstate *s)
{
	if (s->older)
		s->older->newer = s->newer;
	else
		p->poldest = s->newer;
	if (s->newer)
		s->newer->older = s->older;
	else
		p->pnewest = s->older;
	s->older = s->newer = NULL;
}

static void plink_newest(struct ls_partition *p, struct pstate *s)
{
	s->older = p->pnewest;
	s->newer = NULL;
	if (p->pnewest)
		p->pnewest->newer = s;
	else
		p->poldest = s;
	p->pnewest = s;
}

/* Forgets the producer that appended least recently: O(1), as every open
 * of a log file is a new producer (one per `echo >>`). */
static void pevict_oldest(struct ls_partition *p)
{
	struct pstate *s = p->poldest;
	if (!s)
		return;
	punlink_recency(p, s);
	struct pstate **pp = pbucket(p, s->pid);
	while (*pp != s)
		pp = &(*pp)->next;
	*pp = s->next;
	free(s);
	p->nproducers--;
}

/* Checks prod against the table. Returns 0 (append), 1 (duplicate: *dup
 * filled), -ESTALE (older producer epoch: fenced) or -EALREADY (a sequence
 * already used but older than the remembered window). */
static int pcheck(struct ls_partition *p, const struct ls_producer *prod, uint32_t n,
                  struct pbatch *dup)
{
	if (!prod || prod->producer_id < 0 || prod->base_sequence < 0)
		return 0;
	struct pstate *s = pfind(p, prod->producer_id);
	if (!s || prod->producer_epoch > s->epoch)
		return 0;
	if (prod->producer_epoch < s->epoch)
		return -ESTALE;
	int32_t last = (int32_t)((uint32_t)prod->base_sequence + n - 1);
	for (uint8_t i = 0; i < s->n; i++) {
		const struct pbatch *b = &s->b[i];
		if (b->first_seq == prod->base_sequence && b->last_seq == last) {
			*dup = *b;
			return 1;
		}
	}
	const struct pbatch *newest = &s->b[(s->head + PRODUCER_WINDOW - 1) % PRODUCER_WINDOW];
	if ((int32_t)((uint32_t)prod->base_sequence - (uint32_t)newest->last_seq) <= 0)
		return -EALREADY;
	return 0;
}

static void precord(struct ls_partition *p, int64_t pid, int16_t epoch, int32_t first_seq,
                    int32_t count, int64_t base, int64_t last, uint64_t view_end)
{
	if (pid < 0 || first_seq < 0)
		return;
	struct pstate *s = pfind(p, pid);
	if (!s) {
		if (p->nproducers >= PRODUCER_MAX)
			pevict_oldest(p);
		s = calloc(1, sizeof(*s));
		if (!s)
			return; /* dedup is best effort under memory pressure */
		s->pid = pid;
		s->epoch = epoch;
		struct pstate **b = pbucket(p, pid);
		s->next = *b;
		*b = s;
		p->nproducers++;
	} else {
		punlink_recency(p, s);
	}
	plink_newest(p, s);
	if (epoch != s->epoch) {
		s->epoch = epoch;
		s->n = s->head = 0;
	}
	s->b[s->head] = (struct pbatch){
		first_seq, (int32_t)((uint32_t)first_seq + (uint32_t)count - 1), base, last,
		view_end};
	s->head = (uint8_t)((s->head + 1) % PRODUCER_WINDOW);
	if (s->n < PRODUCER_WINDOW)
		s->n++;
}

/* Rebuilds the producer table from the tail of the active segment (open,
 * truncate). Best effort: damage was handled by recovery already. */
static void prebuild(struct ls_partition *p)
{
	pclear(p);
	struct ls_segment *s = active(p);
	if (s->index.n == 0)
		return;
	size_t i = s->index.n;
	while (i > 0 && s->size - s->index.e[i - 1].file_pos <= PRODUCER_REBUILD_BYTES)
		i--;
	if (i == s->index.n)
		i = s->index.n - 1;
	uint64_t from = s->index.e[i].file_pos;
	size_t len = (size_t)(s->size - from);
	uint8_t *buf = malloc(len);
	if (!buf || ls_segment_read(s, from, buf, len) < 0) {
		free(buf);
		return;
	}
	for (; i < s->index.n; i++) {
		struct ls_batch_header h;
		const struct ls_index_entry *e = &s->index.e[i];
		size_t at = (size_t)(e->file_pos - from);
		if (ls_batch_parse_header(buf + at, len - at, &h) < 0)
			break;
		precord(p, h.producer_id, h.producer_epoch, h.base_sequence, h.record_count,
		        h.base_offset, h.base_offset + h.last_offset_delta,
		        e->view_pos + e->view_size);
	}
	free(buf);
}

/* ---- open / close ----------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static int parse_segment_name(const char *name, const char *ext, int64_t *base)
{
	size_t n = strlen(name), el = strlen(ext);
	if (n != 20 + 1 + el || name[20] != '.' || strcmp(name + 21, ext) != 0)
		return 0;
	int64_t v = 0;
	for (int i = 0; i < 20; i++) {
		if (name[i] < '0' || name[i] > '9')
			return 0;
		if (v > (INT64_MAX - 9) / 10)
			return 0;
		v = v * 10 + (name[i] - '0');
	}
	*base = v;
	return 1;
}

static int has_suffix(const char *name, const char *suffix)
{
	size_t n = strlen(name), s = strlen(suffix);
	return n > s && !strcmp(name + n - s, suffix);
}

/* Completes or discards a compaction that a crash interrupted (see
 * "Compaction" below): X.*.cleaned are unfinished and removed; a remaining
 * X.log.swap means its index (X.idx.swap, or X.idx if already renamed) is
 * complete and fsynced, so the swap is finished by renaming; an X.idx.swap
 * without X.log.swap never got its log and is removed. Stray *.tmp and
 * X.idx without X.log go too. */
static int finish_swaps(struct ls_partition *p, int *changed)
{
	int rc = 0;
	int fd = dup(p->dirfd);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	rewinddir(d);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		int64_t base;
		char from[64], to[64];
		if (has_suffix(de->d_name, ".tmp") || has_suffix(de->d_name, ".cleaned")) {
			unlinkat(p->dirfd, de->d_name, 0);
			*changed = 1;
			continue;
		}
		if (!parse_segment_name(de->d_name, "log.swap", &base))
			continue;
		ls_segment_filename(from, sizeof(from), base, "idx.swap");
		ls_segment_filename(to, sizeof(to), base, "idx");
		if (renameat(p->dirfd, from, p->dirfd, to) < 0 && errno != ENOENT) {
			rc = -errno;
			break;
		}
		ls_segment_filename(to, sizeof(to), base, "log");
		if (renameat(p->dirfd, de->d_name, p->dirfd, to) < 0) {
			rc = -errno;
			break;
		}
		tfs_info("%s segment %020" PRId64 ": finished an interrupted compaction",
		         p->dir, base);
		*changed = 1;
	}
	rewinddir(d);
	while (rc == 0 && (de = readdir(d)) != NULL) {
		int64_t base;
		char log[64];
		if (has_suffix(de->d_name, ".idx.swap")) {
			unlinkat(p->dirfd, de->d_name, 0);
			*changed = 1;
		} else if (parse_segment_name(de->d_name, "idx", &base)) {
			/* an index whose log is gone (a removal cut short) */
			ls_segment_filename(log, sizeof(log), base, "log");
			if (faccessat(p->dirfd, log, F_OK, 0) < 0 && errno == ENOENT) {
				unlinkat(p->dirfd, de->d_name, 0);
				*changed = 1;
			}
		}
	}
	closedir(d);
	return rc;
}

static int list_segments(struct ls_partition *p, int64_t **out, size_t *n)
{
	int rc = 0;
	size_t cap = 16;
	int64_t *v = malloc(cap * sizeof(*v));
	int fd = dup(p->dirfd);
	DIR *d = NULL;
	*n = 0;
	if (!v || fd < 0) {
		rc = v ? -errno : -ENOMEM;
		goto err;
	}
	if (!(d = fdopendir(fd))) {
		rc = -errno;
		goto err;
	}
	fd = -1;
	rewinddir(d);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		int64_t base;
		if (!parse_segment_name(de->d_name, "log", &base))
			continue;
		if (*n == cap) {
			int64_t *nv = realloc(v, cap * 2 * sizeof(*v));
			if (!nv) {
				rc = -ENOMEM;
				goto err;
			}
			v = nv;
			cap *= 2;
		}
		v[(*n)++] = base;
	}
	closedir(d);
	qsort(v, *n, sizeof(*v), cmp_i64);
	*out = v;
	return 0;
err:
	if (d)
		closedir(d);
	if (fd >= 0)
		close(fd);
	free(v);
	return rc;
}

static int push_segment(struct ls_partition *p, struct ls_segment *s)
{
	if (p->nsegs == p->segs_cap) {
		size_t cap = p->segs_cap ? p->segs_cap * 2 : 16;
		struct ls_segment **n = realloc(p->segs, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		p->segs = n;
		p->segs_cap = cap;
	}
	p->segs[p->nsegs++] = s;
	return 0;
}

/* Loads every segment, trusting indexes below the recovery point (or all,
 * after a clean shutdown) and re-scanning the rest; cuts the log at the
 * first damaged batch. */
static int load_segments(struct ls_partition *p, const int64_t *bases, size_t n,
                         const struct meta *m, int have_meta, int clean,
                         int *dir_changed)
{
	int rc = 0, cut = 0;
	struct tls_ctx *t = tls_get();
	if (!t)
		return -ENOMEM;
	for (size_t j = 0; j < n; j++) {
		struct ls_segment *s = NULL, *prev = p->nsegs ? active(p) : NULL;
		int64_t base = bases[j];
		if (cut || (prev && base < prev->end_offset)) {
			if (!cut)
				tfs_error("%s segment %020" PRId64 ": overlaps the previous "
				          "segment; removing it and every later segment",
				          p->dir, base);
			cut = 1;
			if ((rc = ls_segment_unlink(p->dirfd, base)) < 0)
				return rc;
			*dir_changed = 1;
			continue;
		}
		if ((rc = ls_segment_open(p->dirfd, p->dir, base, &s)) < 0)
			return rc;
		/* without partition.meta, closed segments are checked like trusted
		 * ones (a strict re-scan would cut compacted segments at their
		 * first offset gap); only the last is re-scanned strictly */
		int last = j + 1 == n;
		int trusted = clean || (have_meta ? base < m->recovery_offset : !last);
		if (!trusted || ls_segment_check_index(s) < 0) {
			int truncated = 0;
			uint64_t start = have_meta && base == m->recovery_offset
			                         ? m->recovery_pos
			                 : prev     ? prev->end_pos
			                 : have_meta ? m->start_pos
			                             : 0;
			int strict = have_meta ? base >= m->recovery_offset : last;
			if (trusted)
				tfs_warn("%s segment %s: index does not match the log; rebuilding",
				         p->dir, s->name);
			rc = ls_segment_recover(s, start, strict, &t->scan, &truncated);
			if (rc == 0)
				rc = ls_segment_sync(s);
			if (rc < 0) {
				ls_segment_close(s);
				return rc;
			}
			cut = truncated;
		} else if (s->index.n == 0) {
			s->start_pos = s->end_pos = prev ? prev->end_pos
			                            : have_meta ? m->start_pos : 0;
		}
		if ((rc = push_segment(p, s)) < 0) {
			ls_segment_close(s);
			return rc;
		}
	}
	/* Segments wholly below the log start: retention removed them from
	 * partition.meta but crashed before unlinking them. */
	if (have_meta) {
		size_t drop = 0;
		while (drop + 1 < p->nsegs && p->segs[drop + 1]->base_offset <= m->start_offset)
			drop++;
		for (size_t k = 0; k < drop; k++) {
			if ((rc = ls_segment_unlink(p->dirfd, p->segs[k]->base_offset)) < 0)
				return rc;
			ls_segment_close(p->segs[k]);
			*dir_changed = 1;
		}
		memmove(p->segs, p->segs + drop, (p->nsegs - drop) * sizeof(*p->segs));
		p->nsegs -= drop;
	}
	return 0;
}

static void partition_free(struct ls_partition *p)
{
	for (size_t i = 0; i < p->nsegs; i++)
		ls_segment_close(p->segs[i]);
	free(p->segs);
	free(p->epochs);
	pclear(p);
	if (p->dirfd >= 0)
		close(p->dirfd);
	pthread_mutex_destroy(&p->maint_mu);
	pthread_mutex_destroy(&p->append_mu);
	pthread_rwlock_destroy(&p->lock);
	pthread_mutex_destroy(&p->sync_mu);
	pthread_cond_destroy(&p->sync_cv);
	free(p->dir);
	free(p);
}

int ls_partition_open(const char *dir, const struct ls_config *cfg,
                      struct ls_partition **out)
{
	int rc, have_meta, clean, dir_changed = 0;
	struct meta m;
	int64_t *bases = NULL;
	size_t nbases = 0;
	pthread_rwlockattr_t ra;
	struct ls_partition *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->dirfd = -1;
	pthread_mutex_init(&p->maint_mu, NULL);
	pthread_mutex_init(&p->append_mu, NULL);
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&p->lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&p->sync_mu, NULL);
	pthread_cond_init(&p->sync_cv, NULL);
	atomic_init(&p->sticky, 0);
	p->compact_end = -1;
	if (cfg)
		p->cfg = *cfg;
	else
		ls_config_default(&p->cfg);
	p->epochs = calloc(MAX_EPOCHS, sizeof(*p->epochs));
	p->dir = strdup(dir);
	if (!p->dir || !p->epochs) {
		rc = -ENOMEM;
		goto err;
	}
	if ((rc = ls_fsutil_mkdir_p(dir)) < 0)
		goto err;
	p->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->dirfd < 0) {
		rc = -errno;
		goto err;
	}

	rc = read_meta(p, &m);
	have_meta = rc == 0;
	if (rc == LS_ECORRUPT)
		tfs_error("%s: %s is damaged; recovering from the segments alone",
		          dir, META_NAME);
	else if (rc < 0 && rc != -ENOENT)
		goto err;
	clean = faccessat(p->dirfd, CLEAN_NAME, F_OK, 0) == 0;
	if (!clean && have_meta)
		tfs_info("%s: unclean shutdown; re-scanning from offset %" PRId64, dir,
		         m.recovery_offset);

	if ((rc = finish_swaps(p, &dir_changed)) < 0)
		goto err_meta;
	if ((rc = list_segments(p, &bases, &nbases)) < 0)
		goto err_meta;
	rc = load_segments(p, bases, nbases, &m, have_meta, clean, &dir_changed);
	free(bases);
	if (rc < 0)
		goto err_meta;
	if (p->nsegs == 0) {
		struct ls_segment *s;
		int64_t base = have_meta ? m.start_offset : 0;
		uint64_t pos = have_meta ? m.start_pos : 0;
		if ((rc = ls_segment_create(p->dirfd, p->dir, base, pos, &s)) < 0)
			goto err_meta;
		if ((rc = push_segment(p, s)) < 0) {
			ls_segment_close(s);
			goto err_meta;
		}
		dir_changed = 1;
	}

	struct ls_segment *first = p->segs[0], *last = active(p);
	p->start_offset = first->base_offset;
	p->start_pos = first->start_pos;
	/* compaction may have removed leading segments: the start stays put */
	if (have_meta && m.start_offset <= last->end_offset &&
	    (m.start_offset >= first->base_offset || m.start_pos <= first->start_pos)) {
		p->start_offset = m.start_offset;
		p->start_pos = m.start_pos;
	}
	p->end_offset = last->end_offset;
	p->end_pos = last->end_pos;
	for (size_t i = 0; i < p->nsegs; i++) {
		p->bytes += p->segs[i]->size;
		if (p->segs[i]->max_ts > p->last_ts)
			p->last_ts = p->segs[i]->max_ts;
	}
	/* the last append's time, as its batch's timestamp says (append time):
	 * the log's mtime across restarts */
	p->last_append_ms = p->last_ts > 0 ? p->last_ts : 0;
	if (have_meta) {
		memcpy(p->epochs, m.epochs, m.nepochs * sizeof(*p->epochs));
		p->nepochs = m.nepochs;
		p->leader_epoch = m.leader_epoch;
		epochs_truncate_end(p, p->end_offset, 0);
	}
	if (p->nepochs == 0) /* saves a partition.meta write at the first append */
		p->epochs[p->nepochs++] = (struct epoch_entry){p->leader_epoch, p->end_offset};
	p->hw = have_meta ? m.hw : 0;
	if (p->hw < p->start_offset)
		p->hw = p->start_offset;
	if (p->hw > p->end_offset)
		p->hw = p->end_offset;
	if ((rc = pos_of_locked(p, p->hw, &p->hw_pos)) < 0)
		goto err_meta;
	prebuild(p);

	/* The clean marker must be gone for good before anything is written. */
	if (clean && unlinkat(p->dirfd, CLEAN_NAME, 0) < 0) {
		rc = -errno;
		goto err_meta;
	}
	if (dir_changed && (rc = ls_fsutil_fsync_fd(p->dirfd)) < 0)
		goto err_meta;
	p->recovery_offset = last->base_offset;
	p->recovery_pos = last->start_pos;
	rc = write_meta(p);
	if (is_space_error(rc)) {
		/* the old partition.meta stays valid (an older recovery point
		 * only means more re-scanning); try again at the next change */
		tfs_warn("%s: cannot update %s: %s", dir, META_NAME, tfs_strerror(rc));
		p->meta_dirty = 1;
		rc = 0;
	}
	if (rc < 0)
		goto err_meta;
	free(m.epochs);
	*out = p;
	return 0;

err_meta:
	if (have_meta)
		free(m.epochs);
err:
	tfs_error("%s: cannot open partition: %s", dir, tfs_strerror(rc));
	partition_free(p);
	return rc;
}

int ls_partition_close(struct ls_partition *p)
{
	int rc = 0, fd;
	if (!p)
		return 0;
	if (!sticky_rc(p))
		rc = ls_partition_sync(p);
	pthread_mutex_lock(&p->append_mu);
	if (rc == 0 && !sticky_rc(p)) {
		rc = ls_segment_sync(active(p));
		if (rc < 0)
			make_sticky(p, rc, "fdatasync");
	}
	if (rc == 0 && !sticky_rc(p)) {
		p->recovery_offset = active(p)->base_offset;
		p->recovery_pos = active(p)->start_pos;
		rc = write_meta(p);
	}
	if (rc == 0 && !sticky_rc(p)) {
		fd = openat(p->dirfd, CLEAN_NAME, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0 || close(fd) < 0)
			rc = -errno;
		else
			rc = ls_fsutil_fsync_fd(p->dirfd);
	}
	pthread_mutex_unlock(&p->append_mu);
	if (rc == 0 && sticky_rc(p))
		rc = LS_ESTICKY;
	if (rc < 0)
		tfs_warn("%s: closed without a clean-shutdown marker: %s", p->dir,
		         tfs_strerror(rc));
	partition_free(p);
	return rc;
}

int ls_partition_destroy(const char *dir)
{
	return ls_fsutil_rm_rf(dir);
}

void ls_partition_set_config(struct ls_partition *p, const struct ls_config *cfg)
{
	pthread_mutex_lock(&p->append_mu);
	pthread_rwlock_wrlock(&p->lock);
	p->cfg = *cfg;
	pthread_rwlock_unlock(&p->lock);
	pthread_mutex_unlock(&p->append_mu);
}

/* ---- appending ---------------------------------------------------------------- */

/* Closes the active segment and starts a new one at end_offset, its view
 * starting at start_pos (end_pos, or beyond it after a replicated hole).
 * Caller holds append_mu. */
static int roll_locked(struct ls_partition *p, uint64_t start_pos)
{
	int rc;
	struct ls_segment *old = active(p), *s;
	if ((rc = ls_segment_sync(old)) < 0) {
		make_sticky(p, rc, "fdatasync at segment roll");
		return rc;
	}
	if ((rc = ls_segment_create(p->dirfd, p->dir, p->end_offset, start_pos, &s)) < 0) {
		tfs_warn("%s: cannot start segment %020" PRId64 ": %s", p->dir,
		         p->end_offset, tfs_strerror(rc));
		return rc;
	}
	if ((rc = ls_fsutil_fsync_fd(p->dirfd)) < 0) {
		make_sticky(p, rc, "fsync of the directory");
		goto err_after_create;
	}
	int64_t old_ro = p->recovery_offset;
	uint64_t old_rp = p->recovery_pos;
	p->recovery_offset = s->base_offset;
	p->recovery_pos = s->start_pos;
	if ((rc = persist_meta(p, "segment roll")) < 0) {
		p->recovery_offset = old_ro;
		p->recovery_pos = old_rp;
		goto err_after_create;
	}
	pthread_rwlock_wrlock(&p->lock);
	rc = push_segment(p, s);
	pthread_rwlock_unlock(&p->lock);
	if (rc < 0)
		goto err_after_create; /* recovery point ahead of the end is harmless */
	return 0;

err_after_create:
	ls_segment_close(s);
	if (!sticky_rc(p) && ls_segment_unlink(p->dirfd, p->end_offset) < 0)
		make_sticky(p, rc, "removing a half-made segment");
	return rc;
}

/* What the writer knows of each batch it writes. */
struct bdesc {
	int64_t base_offset;
	int64_t end_offset;     /* baseOffset + lastOffsetDelta + 1 */
	uint32_t len;
	uint32_t view_size;
	int64_t max_ts;
	int32_t epoch;
};

/* Writes n whole batches (len bytes in buf, described by d) at the end of the
 * log, the first at view position vp0 (> end_pos only for a replicated
 * compaction hole), and publishes them. Caller holds append_mu and has
 * checked that d[0].base_offset continues the log. ents: room for n. */
static int write_batches_locked(struct ls_partition *p, const uint8_t *buf, size_t len,
                                const struct bdesc *d, size_t n, int64_t end_offset,
                                uint64_t vp0, struct ls_index_entry *ents)
{
	int rc, undo_failed;
	struct ls_segment *s = active(p);
	if (s->size > 0 && s->size + len > seg_limit(p)) {
		if ((rc = roll_locked(p, vp0)) < 0)
			return rc;
		s = active(p);
	}
	if (s->size + len > UINT32_MAX)
		return -EFBIG;
	pthread_rwlock_wrlock(&p->lock);
	rc = ls_index_reserve(&s->index, s->index.n + n);
	pthread_rwlock_unlock(&p->lock);
	if (rc < 0)
		return rc;
	uint64_t fp = s->size, vp = vp0;
	int64_t mts = s->max_ts, max_batch_ts = p->last_ts;
	for (size_t i = 0; i < n; i++) {
		if (d[i].max_ts > mts)
			mts = d[i].max_ts;
		if (d[i].max_ts > max_batch_ts)
			max_batch_ts = d[i].max_ts;
		ents[i] = (struct ls_index_entry){d[i].base_offset, vp, (uint32_t)fp,
		                                  d[i].view_size, mts};
		fp += d[i].len;
		vp += d[i].view_size;
	}
	rc = ls_segment_write(s, buf, len, ents, n, &undo_failed);
	if (rc < 0) {
		if (undo_failed)
			make_sticky(p, rc, "undoing a failed append");
		/* a full disk is said by the caller's line (one per refused write) */
		tfs_log(rc == -ENOSPC || rc == -EDQUOT ? TFS_LOG_DEBUG : TFS_LOG_WARN,
		        "%s segment %s: append of %zu bytes at byte %" PRIu64 " refused: %s",
		        p->dir, s->name, len, s->size, tfs_strerror(rc));
		return rc;
	}
	pthread_rwlock_wrlock(&p->lock);
	ls_segment_publish(s, ents, n, len, end_offset);
	p->end_offset = end_offset;
	p->end_pos = vp;
	p->bytes += len;
	p->appended_bytes += len;
	p->last_ts = max_batch_ts;
	p->last_append_ms = now_ms();
	p->append_seq++;
	pthread_rwlock_unlock(&p->lock);

	int changed = 0;
	for (size_t i = 0; i < n; i++)
		changed |= epoch_assign(p, d[i].epoch, d[i].base_offset);
	if (changed || p->meta_dirty)
		(void)persist_meta(p, "new leader epoch");
	return 0;
}

int ls_partition_append(struct ls_partition *p, const struct ls_rec *recs, uint32_t n,
                        int64_t ts_ms, const struct ls_producer *prod,
                        struct ls_append_result *res)
{
	int rc;
	uint64_t vsize;
	struct pbatch dup;
	struct ls_index_entry ent;
	if (!p || !recs || n == 0)
		return -EINVAL;
	if ((rc = sticky_rc(p)) < 0)
		return rc;
	struct tls_ctx *t = tls_get();
	if (!t)
		return -ENOMEM;

	pthread_rwlock_rdlock(&p->lock);
	enum ls_codec codec = p->cfg.compression;
	int level = p->cfg.compression_level;
	int64_t ts = ts_ms > p->last_ts ? ts_ms : p->last_ts;
	pthread_rwlock_unlock(&p->lock);
	rc = ls_batch_encode_par(&t->enc, &t->zscratch, NULL, batch_par(), recs, n, ts, prod,
	                         codec, level, &vsize);
	if (rc < 0)
		return rc;
	if (vsize > UINT32_MAX)
		return -EMSGSIZE;

	pthread_mutex_lock(&p->append_mu);
	if ((rc = sticky_rc(p)) < 0)
		goto out;
	rc = pcheck(p, prod, n, &dup);
	if (rc < 0)
		goto out;
	if (rc == 1) {
		if (res)
			*res = (struct ls_append_result){dup.base_offset, dup.last_offset,
			                                 dup.view_end, 1,
			                                 epoch_at_locked(p, dup.last_offset)};
		rc = 0;
		goto out;
	}
	if (ts < p->last_ts) { /* another append raced ahead: stay monotonic */
		ts = p->last_ts;
		ls_batch_set_timestamp(t->enc.data, t->enc.len, ts);
	}
	int64_t base = p->end_offset;
	ls_batch_stamp(t->enc.data, base, p->leader_epoch);
	struct bdesc d = {base, base + n, (uint32_t)t->enc.len, (uint32_t)vsize, ts,
	                  p->leader_epoch};
	rc = write_batches_locked(p, t->enc.data, t->enc.len, &d, 1, base + n, p->end_pos,
	                          &ent);
	if (rc < 0)
		goto out;
	if (prod)
		precord(p, prod->producer_id, prod->producer_epoch, prod->base_sequence,
		        (int32_t)n, base, base + n - 1, ent.view_pos + vsize);
	if (res)
		*res = (struct ls_append_result){base, base + n - 1, ent.view_pos + vsize, 0,
		                                 p->leader_epoch};
out:
	pthread_mutex_unlock(&p->append_mu);
	return rc;
}

/* Checks a buffer of encoded batches (follower path) and describes each.
 * Returns the number of batches, or LS_ECORRUPT / -ENOTSUP / -ENOMEM. */
static ssize_t check_batches(struct ls_partition *p, const uint8_t *buf, size_t len,
                             struct bdesc **out)
{
	int rc;
	size_t n = 0, cap = 0, at = 0;
	struct bdesc *d = NULL;
	struct tls_ctx *t = tls_get();
	if (!t)
		return -ENOMEM;
	while (at < len) {
		struct ls_batch_header h;
		uint64_t vsize;
		if ((rc = ls_batch_parse_header(buf + at, len - at, &h)) < 0 ||
		    ls_batch_size(&h) > len - at) {
			tfs_warn("%s: replicated batch at byte %zu of %zu: bad or torn header",
			         p->dir, at, len);
			rc = LS_ECORRUPT;
			goto err;
		}
		if ((rc = ls_batch_check_crc(buf + at, &h)) < 0) {
			tfs_warn("%s: replicated batch at byte %zu (offset %" PRId64 "): crc mismatch",
			         p->dir, at, h.base_offset);
			goto err;
		}
		if ((rc = ls_batch_measure(buf + at, &h, &t->scan.scratch, t->scan.dctx,
		                           &vsize)) < 0) {
			tfs_warn("%s: replicated batch at byte %zu (offset %" PRId64 "): %s",
			         p->dir, at, h.base_offset, tfs_strerror(rc));
			goto err;
		}
		if (vsize > UINT32_MAX) {
			rc = -EMSGSIZE;
			goto err;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct bdesc *nd = realloc(d, cap * sizeof(*nd));
			if (!nd) {
				rc = -ENOMEM;
				goto err;
			}
			d = nd;
		}
		d[n++] = (struct bdesc){h.base_offset,
		                        h.base_offset + h.last_offset_delta + 1,
		                        (uint32_t)ls_batch_size(&h),
		                        (uint32_t)vsize, h.max_ts, h.leader_epoch};
		at += ls_batch_size(&h);
	}
	*out = d;
	return (ssize_t)n;
err:
	free(d);
	return rc;
}

/* The follower path; at_pos: view position of the first batch (UINT64_MAX:
 * continue the view), gaps: base offsets may skip (compacted leader data). */
static int append_batches(struct ls_partition *p, const void *buf, size_t len,
                          uint64_t at_pos, int gaps)
{
	int rc;
	struct bdesc *d = NULL;
	struct ls_index_entry *ents = NULL;
	struct ls_batch_header h;
	if (!p || (!buf && len))
		return -EINVAL;
	if (len == 0)
		return 0;
	if ((rc = sticky_rc(p)) < 0)
		return rc;
	ssize_t n = check_batches(p, buf, len, &d);
	if (n < 0)
		return (int)n;
	if (!(ents = malloc((size_t)n * sizeof(*ents)))) {
		free(d);
		return -ENOMEM;
	}
	pthread_mutex_lock(&p->append_mu);
	if ((rc = sticky_rc(p)) < 0)
		goto out;
	int64_t next = p->end_offset;
	for (ssize_t i = 0; i < n; i++) {
		if (gaps ? d[i].base_offset < next : d[i].base_offset != next) {
			tfs_warn("%s: replicated batch %zd has base offset %" PRId64
			         " where %" PRId64 " was expected",
			         p->dir, i, d[i].base_offset, next);
			rc = LS_EOUTOFRANGE;
			goto out;
		}
		next = d[i].end_offset;
	}
	uint64_t vp0 = p->end_pos;
	int hole = at_pos != UINT64_MAX && at_pos > p->end_pos;
	if (at_pos != UINT64_MAX) {
		if (at_pos < p->end_pos) {
			rc = LS_EOUTOFRANGE;
			goto out;
		}
		vp0 = at_pos;
	}
	/* in runs that fit the active segment, so a follower's segments roll
	 * where the leader's do (retention deletes whole segments: one big
	 * segment here would keep what the leader dropped) */
	for (size_t i0 = 0, at = 0; i0 < (size_t)n;) {
		struct ls_segment *s = active(p);
		uint64_t lim = seg_limit(p);
		uint64_t room = s->size < lim ? lim - s->size : 0;
		if (s->size > 0 && d[i0].len > room)
			room = lim; /* write_batches_locked rolls first */
		size_t i1 = i0 + 1, run = d[i0].len;
		while (i1 < (size_t)n && run + d[i1].len <= room)
			run += d[i1++].len;
		rc = write_batches_locked(p, (const uint8_t *)buf + at, run, d + i0, i1 - i0,
		                          d[i1 - 1].end_offset, i0 ? p->end_pos : vp0, ents + i0);
		if (rc < 0)
			goto out;
		at += run;
		i0 = i1;
	}
	if (hole) {
		/* a view hole in the active segment must survive an unclean
		 * restart: make the index entry carrying it durable now (a
		 * re-scan keeps jumps it finds in the old index, segment.c) */
		struct ls_segment *s = active(p);
		if ((rc = ls_segment_sync(s)) < 0) {
			make_sticky(p, rc, "fdatasync after a replicated hole");
			goto out;
		}
	}
	const uint8_t *b = buf;
	for (ssize_t i = 0, at = 0; i < n; at += d[i].len, i++) {
		if (ls_batch_parse_header(b + at, len - (size_t)at, &h) == 0)
			precord(p, h.producer_id, h.producer_epoch, h.base_sequence,
			        h.record_count, h.base_offset,
			        h.base_offset + h.last_offset_delta,
			        ents[i].view_pos + ents[i].view_size);
	}
out:
	pthread_mutex_unlock(&p->append_mu);
	free(ents);
	free(d);
	return rc;
}

int ls_partition_append_batches(struct ls_partition *p, const void *buf, size_t len)
{
	return append_batches(p, buf, len, UINT64_MAX, 0);
}

int ls_partition_append_batches_at(struct ls_partition *p, const void *buf, size_t len,
                                   uint64_t view_pos)
{
	return append_batches(p, buf, len, view_pos, 1);
}

static ssize_t read_batches(struct ls_partition *p, int64_t from, void *buf, size_t max,
                            size_t *need, uint64_t *view_pos)
{
	ssize_t rc = 0;
	struct loc l;
	size_t copied = 0;
	if (need)
		*need = 0;
	pthread_rwlock_rdlock(&p->lock);
	if (from < p->start_offset) {
		rc = LS_EOUTOFRANGE;
		goto out;
	}
	if (from >= p->end_offset || find_by_offset(p, from, &l))
		goto out;
	/* skip the found batch if from lies in a gap after it */
	{
		uint8_t hb[LS_BATCH_HEADER_SIZE];
		struct ls_batch_header h;
		const struct ls_segment *s = p->segs[l.seg];
		if ((rc = ls_segment_read(s, loc_entry(p, &l)->file_pos, hb, sizeof(hb))) < 0)
			goto out;
		if (ls_batch_parse_header(hb, sizeof(hb), &h) < 0) {
			rc = LS_ECORRUPT;
			goto out;
		}
		if (from > h.base_offset + h.last_offset_delta && next_loc(p, &l))
			goto out;
	}
	if (view_pos)
		*view_pos = loc_entry(p, &l)->view_pos;
	for (;;) {
		const struct ls_segment *s = p->segs[l.seg];
		/* the run of batches of this segment that fit */
		size_t first = l.idx, last = l.idx;
		uint64_t fp = s->index.e[first].file_pos;
		size_t run = ls_segment_batch_len(s, first);
		if (copied + run > max) {
			if (copied == 0 && need)
				*need = run;
			break;
		}
		while (last + 1 < s->index.n) {
			const struct ls_index_entry *a = &s->index.e[last], *b = &s->index.e[last + 1];
			size_t blen = ls_segment_batch_len(s, last + 1);
			if (view_pos && a->view_pos + a->view_size != b->view_pos)
				break; /* a view hole: the caller ships the next run with its position */
			if (copied + run + blen > max)
				break;
			run += blen;
			last++;
		}
		if ((rc = ls_segment_read(s, fp, (uint8_t *)buf + copied, run)) < 0)
			goto out;
		copied += run;
		l.idx = last;
		struct loc prev = l;
		if (next_loc(p, &l))
			break;
		if (view_pos) {
			const struct ls_index_entry *a = loc_entry(p, &prev), *b = loc_entry(p, &l);
			if (a->view_pos + a->view_size != b->view_pos)
				break;
		}
	}
	rc = (ssize_t)copied;
out:
	pthread_rwlock_unlock(&p->lock);
	return rc;
}

ssize_t ls_partition_read_batches(struct ls_partition *p, int64_t from, void *buf,
                                  size_t max, size_t *need)
{
	return read_batches(p, from, buf, max, need, NULL);
}

ssize_t ls_partition_read_batches_at(struct ls_partition *p, int64_t from, void *buf,
                                     size_t max, size_t *need, uint64_t *view_pos)
{
	uint64_t dummy;
	return read_batches(p, from, buf, max, need, view_pos ? view_pos : &dummy);
}

/* ---- truncation, high watermark, epochs ------------------------------------ */

int ls_partition_truncate(struct ls_partition *p, int64_t offset)
{
	int rc = 0, dir_changed = 0;
	struct loc l;
	pthread_mutex_lock(&p->maint_mu);
	pthread_mutex_lock(&p->append_mu);
	if ((rc = sticky_rc(p)) < 0)
		goto out;
	if (offset >= p->end_offset)
		goto out;
	if (offset < p->start_offset) {
		rc = LS_EOUTOFRANGE;
		goto out;
	}
	pthread_rwlock_wrlock(&p->lock);
	size_t k, cut_idx;
	if (find_by_offset(p, offset, &l)) {
		k = p->nsegs - 1;
		cut_idx = p->segs[k]->index.n;
	} else {
		const struct ls_index_entry *e = loc_entry(p, &l);
		k = l.seg;
		cut_idx = l.idx;
		if (offset > e->base_offset) {
			uint8_t hb[LS_BATCH_HEADER_SIZE];
			struct ls_batch_header h;
			rc = ls_segment_read(p->segs[k], e->file_pos, hb, sizeof(hb));
			if (rc == 0 && ls_batch_parse_header(hb, sizeof(hb), &h) < 0)
				rc = LS_ECORRUPT;
			if (rc < 0) {
				pthread_rwlock_unlock(&p->lock);
				goto out;
			}
			if (offset > h.base_offset + h.last_offset_delta)
				cut_idx++; /* offset is in a gap after the batch */
			else
				tfs_info("%s: truncation to %" PRId64 " falls inside the batch at "
				         "%" PRId64 "; removing the whole batch",
				         p->dir, offset, h.base_offset);
		}
	}
	/* segments after k go entirely; the one at k may become empty and
	 * stays as the active segment */
	for (size_t j = p->nsegs; j-- > k + 1;) {
		struct ls_segment *s = p->segs[j];
		p->bytes -= s->size;
		rc = ls_segment_unlink(p->dirfd, s->base_offset);
		ls_segment_close(s);
		p->nsegs--;
		dir_changed = 1;
		if (rc < 0) {
			pthread_rwlock_unlock(&p->lock);
			make_sticky(p, rc, "removing a truncated segment");
			goto out;
		}
	}
	struct ls_segment *s = p->segs[k];
	uint64_t old_size = s->size;
	rc = ls_segment_truncate(s, cut_idx);
	p->bytes -= old_size - s->size;
	if (rc == 0)
		rc = ls_segment_sync(s);
	if (rc < 0) {
		pthread_rwlock_unlock(&p->lock);
		make_sticky(p, rc, "truncating a segment");
		goto out;
	}
	p->end_offset = s->end_offset;
	p->end_pos = s->end_pos;
	if (p->end_offset < p->start_offset) { /* emptied a compacted prefix */
		p->end_offset = p->start_offset;
		p->end_pos = p->start_pos;
	}
	if (p->hw > p->end_offset) {
		p->hw = p->end_offset;
		p->hw_pos = p->end_pos;
	}
	epochs_truncate_end(p, p->end_offset, 1);
	p->gen++;
	p->layout++;
	p->append_seq++;
	pthread_rwlock_unlock(&p->lock);
	tfs_info("%s: truncated to offset %" PRId64 " (view position %" PRIu64 ")", p->dir,
	         p->end_offset, p->end_pos);

	if (dir_changed && (rc = ls_fsutil_fsync_fd(p->dirfd)) < 0) {
		make_sticky(p, rc, "fsync of the directory");
		goto out;
	}
	if (p->recovery_offset > active(p)->base_offset) {
		p->recovery_offset = active(p)->base_offset;
		p->recovery_pos = active(p)->start_pos;
	}
	rc = persist_meta(p, "truncation");
	prebuild(p);
out:
	pthread_mutex_unlock(&p->append_mu);
	pthread_mutex_unlock(&p->maint_mu);
	return rc;
}

int ls_partition_reset(struct ls_partition *p, int64_t offset, uint64_t view_pos)
{
	int rc = 0;
	struct ls_segment *s = NULL;
	if (offset < 0)
		return -EINVAL;
	pthread_mutex_lock(&p->maint_mu);
	pthread_mutex_lock(&p->append_mu);
	if ((rc = sticky_rc(p)) < 0)
		goto out;
	/* a segment of the same name is truncated by the create and not unlinked */
	if ((rc = ls_segment_create(p->dirfd, p->dir, offset, view_pos, &s)) < 0)
		goto out;
	pthread_rwlock_wrlock(&p->lock);
	for (size_t i = 0; i < p->nsegs; i++) {
		if (p->segs[i]->base_offset != offset &&
		    ls_segment_unlink(p->dirfd, p->segs[i]->base_offset) < 0)
			tfs_warn("%s segment %s: cannot remove at reset", p->dir,
			         p->segs[i]->name);
		ls_segment_close(p->segs[i]);
	}
	p->segs[0] = s;
	p->nsegs = 1;
	p->start_offset = p->end_offset = p->hw = offset;
	p->start_pos = p->end_pos = p->hw_pos = view_pos;
	p->bytes = 0;
	p->nepochs = 0;
	p->gen++;
	p->layout++;
	p->append_seq++;
	pthread_rwlock_unlock(&p->lock);
	p->recovery_offset = offset;
	p->recovery_pos = view_pos;
	if ((rc = ls_fsutil_fsync_fd(p->dirfd)) < 0) {
		make_sticky(p, rc, "fsync of the directory");
		goto out;
	}
	rc = persist_meta(p, "reset");
	pclear(p);
	tfs_info("%s: reset to start at offset %" PRId64 " (view position %" PRIu64 ")",
	         p->dir, offset, view_pos);
out:
	pthread_mutex_unlock(&p->append_mu);
	pthread_mutex_unlock(&p->maint_mu);
	return rc;
}

void ls_partition_set_hw(struct ls_partition *p, int64_t hw)
{
	pthread_rwlock_wrlock(&p->lock);
	if (hw < p->start_offset)
		hw = p->start_offset;
	if (hw > p->end_offset)
		hw = p->end_offset;
	if (hw != p->hw) {
		uint64_t pos;
		if (pos_of_locked(p, hw, &pos) == 0) {
			p->hw = hw;
			p->hw_pos = pos;
		}
	}
	pthread_rwlock_unlock(&p->lock);
}

int ls_partition_set_leader_epoch(struct ls_partition *p, int32_t epoch)
{
	int rc = 0;
	if (epoch < 0)
		return -EINVAL;
	pthread_mutex_lock(&p->append_mu);
	if ((rc = sticky_rc(p)) < 0)
		goto out;
	if (epoch < p->leader_epoch) {
		rc = -EINVAL;
		goto out;
	}
	int changed = epoch_assign(p, epoch, p->end_offset);
	pthread_rwlock_wrlock(&p->lock);
	changed |= p->leader_epoch != epoch;
	p->leader_epoch = epoch;
	pthread_rwlock_unlock(&p->lock);
	if (changed)
		rc = persist_meta(p, "leader epoch");
out:
	pthread_mutex_unlock(&p->append_mu);
	return rc;
}

int32_t ls_partition_epoch_of(struct ls_partition *p, int64_t offset)
{
	pthread_rwlock_rdlock(&p->lock);
	int32_t e = offset >= p->start_offset && offset < p->end_offset
		? epoch_at_locked(p, offset) : -1;
	pthread_rwlock_unlock(&p->lock);
	return e;
}

int32_t ls_partition_latest_epoch(struct ls_partition *p)
{
	pthread_rwlock_rdlock(&p->lock);
	int32_t e = p->nepochs ? p->epochs[p->nepochs - 1].epoch : -1;
	pthread_rwlock_unlock(&p->lock);
	return e;
}

int64_t ls_partition_epoch_end_offset(struct ls_partition *p, int32_t epoch)
{
	int64_t r = -1;
	pthread_rwlock_rdlock(&p->lock);
	if (p->nepochs == 0 || epoch < p->epochs[0].epoch)
		goto out;
	if (epoch == p->epochs[p->nepochs - 1].epoch) {
		r = p->end_offset;
		goto out;
	}
	for (size_t i = 0; i < p->nepochs; i++) {
		if (p->epochs[i].epoch > epoch) {
			r = p->epochs[i].start_offset;
			break;
		}
	}
out:
	pthread_rwlock_unlock(&p->lock);
	return r;
}

/* ---- durability ------------------------------------------------------------- */

int ls_partition_sync(struct ls_partition *p)
{
	int rc;
	pthread_rwlock_rdlock(&p->lock);
	uint64_t target = p->append_seq;
	pthread_rwlock_unlock(&p->lock);

	pthread_mutex_lock(&p->sync_mu);
	for (;;) {
		if ((rc = sticky_rc(p)) < 0)
			goto out;
		if (p->synced_seq >= target)
			goto out;
		if (!p->syncing)
			break;
		pthread_cond_wait(&p->sync_cv, &p->sync_mu);
	}
	p->syncing = 1;
	pthread_mutex_unlock(&p->sync_mu);

	/* Earlier segments were fsynced at roll: only the active one is dirty. */
	pthread_rwlock_rdlock(&p->lock);
	uint64_t seq = p->append_seq;
	int fd = dup(active(p)->fd);
	pthread_rwlock_unlock(&p->lock);
	int fsync_failed = 0;
	if (fd < 0) {
		rc = -errno;
	} else {
		if (fdatasync(fd) < 0) {
			rc = -errno;
			fsync_failed = 1;
		}
		close(fd);
	}

	pthread_mutex_lock(&p->sync_mu);
	p->syncing = 0;
	if (rc == 0 && seq > p->synced_seq)
		p->synced_seq = seq;
	if (fsync_failed)
		make_sticky(p, rc, "fdatasync");
	pthread_cond_broadcast(&p->sync_cv);
out:
	pthread_mutex_unlock(&p->sync_mu);
	return rc;
}

/* ---- information -------------------------------------------------------------- */

void ls_partition_get_info(struct ls_partition *p, struct ls_partition_info *out)
{
	pthread_rwlock_rdlock(&p->lock);
	*out = (struct ls_partition_info){
		.start_offset = p->start_offset,
		.end_offset = p->end_offset,
		.high_watermark = p->hw,
		.start_pos = p->start_pos,
		.hw_pos = p->hw_pos,
		.end_pos = p->end_pos,
		.bytes = p->bytes,
		.segments = (uint32_t)p->nsegs,
		.leader_epoch = p->leader_epoch,
		.last_append_ms = p->last_append_ms,
		.sticky_error = atomic_load(&p->sticky),
	};
	pthread_rwlock_unlock(&p->lock);
}

int ls_partition_pos_of(struct ls_partition *p, int64_t offset, uint64_t *pos)
{
	int rc;
	pthread_rwlock_rdlock(&p->lock);
	if (offset < p->start_offset || offset > p->end_offset)
		rc = LS_EOUTOFRANGE;
	else
		rc = pos_of_locked(p, offset, pos);
	pthread_rwlock_unlock(&p->lock);
	return rc;
}

int ls_partition_seek(struct ls_partition *p, uint64_t pos, int data, uint64_t limit,
                      uint64_t *out)
{
	struct loc l;
	int rc = 0;
	pthread_rwlock_rdlock(&p->lock);
	if (pos >= limit || find_by_pos(p, pos, &l) != 0 || loc_entry(p, &l)->view_pos >= limit) {
		rc = -ENXIO; /* nothing but a gap up to the end */
		if (!data && pos < limit) {
			*out = pos;
			rc = 0;
		}
	} else if (data) {
		uint64_t at = loc_entry(p, &l)->view_pos;
		*out = at > pos ? at : pos;
	} else if (loc_entry(p, &l)->view_pos > pos) {
		*out = pos; /* in a gap already */
	} else {
		uint64_t end = loc_entry(p, &l)->view_pos + loc_entry(p, &l)->view_size;
		while (end < limit && next_loc(p, &l) == 0 && loc_entry(p, &l)->view_pos == end)
			end += loc_entry(p, &l)->view_size;
		*out = end < limit ? end : limit;
	}
	pthread_rwlock_unlock(&p->lock);
	return rc;
}

int64_t ls_partition_offset_for_time(struct ls_partition *p, int64_t ts_ms)
{
	int64_t r;
	struct ls_batch_header h;
	struct ls_batch_iter it;
	struct ls_batch_record rec;
	struct tls_ctx *t = tls_get();
	pthread_rwlock_rdlock(&p->lock);
	r = p->end_offset;
	for (size_t k = 0; k < p->nsegs; k++) {
		const struct ls_segment *s = p->segs[k];
		if (s->index.n == 0 || s->max_ts < ts_ms)
			continue;
		struct loc l = {k, ls_index_find_time(&s->index, ts_ms)};
		if (l.idx >= s->index.n)
			continue;
		r = loc_entry(p, &l)->base_offset;
		/* our batches carry one timestamp; others need a look inside */
		if (!t || read_batch_locked(p, &l, &t->scan.buf, &h) < 0)
			break;
		if (h.base_ts >= ts_ms)
			break;
		if (ls_batch_iter_init(&it, t->scan.buf.data, &h, &t->scan.scratch,
		                       t->scan.dctx) < 0)
			break;
		while (ls_batch_iter_next(&it, &rec) == 1) {
			if (rec.timestamp >= ts_ms) {
				r = rec.offset;
				break;
			}
		}
		break;
	}
	if (r < p->start_offset)
		r = p->start_offset;
	pthread_rwlock_unlock(&p->lock);
	return r;
}

/* ---- retention ---------------------------------------------------------------- */

int ls_partition_enforce_retention(struct ls_partition *p, int64_t now_ms)
{
	int rc = 0;
	size_t count = 0;
	pthread_mutex_lock(&p->maint_mu);
	pthread_mutex_lock(&p->append_mu);
	if ((rc = sticky_rc(p)) < 0)
		goto out;
	int64_t rms = p->cfg.retention_ms, rbytes = p->cfg.retention_bytes;
	/* An active segment wholly past retention is rolled first (the job of
	 * Kafka's segment.ms), so a quiet partition does not keep it forever. */
	struct ls_segment *act = active(p);
	if (rms >= 0 && act->size > 0 && act->max_ts < now_ms - rms &&
	    act->end_offset <= p->hw && (rc = roll_locked(p, p->end_pos)) < 0)
		goto out;
	uint64_t total = p->bytes;
	while (count + 1 < p->nsegs) {
		const struct ls_segment *s = p->segs[count];
		int by_time = rms >= 0 && s->max_ts < now_ms - rms;
		int by_size = rbytes >= 0 && total - s->size >= (uint64_t)rbytes;
		if (!(by_time || by_size) || s->end_offset > p->hw)
			break;
		total -= s->size;
		count++;
	}
	if (count == 0)
		goto out;
	struct ls_segment *keep = p->segs[count];
	int64_t old_start = p->start_offset;
	uint64_t old_pos = p->start_pos;
	size_t old_nepochs = p->nepochs;
	struct epoch_entry *old_epochs = malloc((p->nepochs + 1) * sizeof(*old_epochs));
	if (!old_epochs) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(old_epochs, p->epochs, p->nepochs * sizeof(*old_epochs));
	/* partition.meta first: a crash before the unlinks leaves segments that
	 * open removes; the other way round would lose the start position. */
	pthread_rwlock_wrlock(&p->lock);
	p->start_offset = keep->base_offset;
	p->start_pos = keep->index.n ? keep->index.e[0].view_pos : keep->start_pos;
	epochs_truncate_start(p, p->start_offset);
	pthread_rwlock_unlock(&p->lock);
	rc = write_meta(p);
	if (rc < 0) {
		pthread_rwlock_wrlock(&p->lock);
		p->start_offset = old_start;
		p->start_pos = old_pos;
		memcpy(p->epochs, old_epochs, old_nepochs * sizeof(*old_epochs));
		p->nepochs = old_nepochs;
		pthread_rwlock_unlock(&p->lock);
		free(old_epochs);
		if (!is_space_error(rc))
			make_sticky(p, rc, "writing " META_NAME);
		goto out;
	}
	free(old_epochs);
	pthread_rwlock_wrlock(&p->lock);
	struct ls_segment **gone = malloc(count * sizeof(*gone));
	if (gone)
		memcpy(gone, p->segs, count * sizeof(*gone));
	for (size_t i = 0; i < count; i++)
		p->bytes -= p->segs[i]->size;
	if (gone) {
		memmove(p->segs, p->segs + count, (p->nsegs - count) * sizeof(*p->segs));
		p->nsegs -= count;
		p->layout++;
	}
	pthread_rwlock_unlock(&p->lock);
	if (!gone) { /* the files stay until the next open removes them */
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < count; i++) {
		tfs_info("%s segment %s: removed by retention", p->dir, gone[i]->name);
		int r = ls_segment_unlink(p->dirfd, gone[i]->base_offset);
		if (r < 0)
			tfs_warn("%s segment %s: cannot remove: %s", p->dir, gone[i]->name,
			         tfs_strerror(r));
		ls_segment_close(gone[i]);
	}
	free(gone);
	if ((rc = ls_fsutil_fsync_fd(p->dirfd)) < 0)
		make_sticky(p, rc, "fsync of the directory");
	else
		rc = (int)count;
out:
	pthread_mutex_unlock(&p->append_mu);
	pthread_mutex_unlock(&p->maint_mu);
	return rc;
}

/* ---- compaction ----------------------------------------------------------------- */

/* The newest offset of every key: an open-addressing table owning copies of
 * the keys. */
struct kentry {
	uint64_t hash;
	int64_t offset;     /* -1: empty slot */
	uint32_t klen;
	uint8_t *key;
};

struct kmap {
	struct kentry *e;
	size_t cap, n;
};

static uint64_t key_hash(const void *key, uint32_t len)
{
	const uint8_t *k = key;
	uint64_t h = 0xcbf29ce484222325ull;
	for (uint32_t i = 0; i < len; i++)
		h = (h ^ k[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static struct kentry *kmap_slot(const struct kmap *m, uint64_t h, const void *key,
                                uint32_t len)
{
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		struct kentry *e = &m->e[i];
		if (e->offset < 0 || (e->hash == h && e->klen == len &&
		                      memcmp(e->key, key, len) == 0))
			return e;
	}
}

static int kmap_put(struct kmap *m, const void *key, uint32_t len, int64_t offset)
{
	if ((m->n + 1) * 2 > m->cap) {
		struct kmap g = {calloc(m->cap ? m->cap * 2 : 1024, sizeof(struct kentry)),
		                 m->cap ? m->cap * 2 : 1024, m->n};
		if (!g.e)
			return -ENOMEM;
		for (size_t i = 0; i < g.cap; i++)
			g.e[i].offset = -1;
		for (size_t i = 0; i < m->cap; i++)
			if (m->e[i].offset >= 0)
				*kmap_slot(&g, m->e[i].hash, m->e[i].key, m->e[i].klen) = m->e[i];
		free(m->e);
		*m = g;
	}
	uint64_t h = key_hash(key, len);
	struct kentry *e = kmap_slot(m, h, key, len);
	if (e->offset < 0) {
		uint8_t *copy = malloc(len ? len : 1);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, key, len);
		*e = (struct kentry){h, offset, len, copy};
		m->n++;
	} else if (offset > e->offset) {
		e->offset = offset;
	}
	return 0;
}

static int64_t kmap_get(const struct kmap *m, const void *key, uint32_t len)
{
	if (!m->cap)
		return -1;
	return kmap_slot(m, key_hash(key, len), key, len)->offset;
}

static void kmap_free(struct kmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->e[i].offset >= 0)
			free(m->e[i].key);
	free(m->e);
}

/* Decodes every record of batch i of s into *recs (pointers into t's
 * buffers, valid until the next batch is read). */
static int decode_batch(struct ls_partition *p, struct ls_segment *s, size_t i,
                        struct tls_ctx *t, struct ls_batch_header *h,
                        struct ls_batch_record **recs, size_t *n, size_t *cap)
{
	struct ls_batch_iter it;
	struct ls_batch_record r;
	int rc = read_batch_at(p, s, i, &t->scan.buf, h);
	if (rc < 0)
		return rc;
	if ((rc = ls_batch_iter_init(&it, t->scan.buf.data, h, &t->scan.scratch,
	                             t->scan.dctx)) < 0)
		return rc;
	*n = 0;
	while ((rc = ls_batch_iter_next(&it, &r)) == 1) {
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 256;
			struct ls_batch_record *nr = realloc(*recs, nc * sizeof(*nr));
			if (!nr)
				return -ENOMEM;
			*recs = nr;
			*cap = nc;
		}
		(*recs)[(*n)++] = r;
	}
	return rc < 0 ? rc : 0;
}

/* How long a tombstone outlives the values it deletes (Kafka's
 * delete.retention.ms default): a consumer that is behind by less still
 * learns that the key was deleted. Judged per segment, by its newest
 * timestamp. */
#define TOMBSTONE_RETENTION_MS (24 * 3600 * 1000LL)

/* A record survives compaction if it has no key, or it is the newest record
 * of its key and not a tombstone (a tombstone in a segment younger than
 * TOMBSTONE_RETENTION_MS too: keep_tombstones). */
static int survives(const struct kmap *km, const struct ls_batch_record *r, int keep_tombstones)
{
	if (r->key_len < 0)
		return 1;
	return (r->value_len >= 0 || keep_tombstones) &&
	       kmap_get(km, r->key, (uint32_t)r->key_len) == r->offset;
}

/* Writes the compacted copy of closed segment s as X.log.cleaned /
 * X.idx.cleaned, fsyncs both and renames them to X.idx.swap, X.log.swap (in
 * that order), and returns it as a ready segment in *out (NULL if nothing
 * survives: the swap files are then removed). *removed counts dropped
 * records. Runs of surviving records become batches of their own so every
 * batch's view stays contiguous; untouched batches are copied verbatim. */
static int compact_segment(struct ls_partition *p, struct ls_segment *s,
                           const struct kmap *km, int keep_tombstones, struct tls_ctx *t,
                           int level, struct ls_segment **out, uint64_t *removed)
{
	int rc = 0;
	char lname[64], iname[64];
	struct ls_batch_record *recs = NULL;
	size_t nrecs = 0, rcap = 0;
	struct ls_buf enc = {0}, zs = {0};
	struct ls_batch_header h;
	struct ls_segment *ns = calloc(1, sizeof(*ns));
	*out = NULL;
	*removed = 0;
	if (!ns)
		return -ENOMEM;
	ls_segment_filename(lname, sizeof(lname), s->base_offset, "log.cleaned");
	ls_segment_filename(iname, sizeof(iname), s->base_offset, "idx.cleaned");
	*ns = (struct ls_segment){.dir = p->dir, .base_offset = s->base_offset,
	                          .end_offset = s->base_offset, .start_pos = s->start_pos,
	                          .end_pos = s->start_pos, .max_ts = -1, .fd = -1,
	                          .index = {.fd = -1}};
	memcpy(ns->name, s->name, sizeof(ns->name));
	ns->fd = openat(p->dirfd, lname, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ns->index.fd = openat(p->dirfd, iname, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (ns->fd < 0 || ns->index.fd < 0) {
		rc = -errno;
		goto err;
	}
	for (size_t i = 0; i < s->index.n; i++) {
		const struct ls_index_entry *e = &s->index.e[i];
		if ((rc = decode_batch(p, s, i, t, &h, &recs, &nrecs, &rcap)) < 0)
			goto err;
		size_t kept = 0;
		for (size_t k = 0; k < nrecs; k++)
			kept += survives(km, &recs[k], keep_tombstones);
		*removed += nrecs - kept;
		uint64_t vp = e->view_pos;
		for (size_t a = 0; a < nrecs;) {
			size_t b = a;
			if (!survives(km, &recs[a], keep_tombstones)) {
				vp += recs[a++].view_size;
				continue;
			}
			uint64_t run_view = 0;
			while (b < nrecs && survives(km, &recs[b], keep_tombstones))
				run_view += recs[b++].view_size;
			const void *bytes;
			size_t len;
			struct ls_batch_header th = h;
			if (kept == nrecs) {
				bytes = t->scan.buf.data; /* untouched: copy as stored */
				len = t->scan.buf.len;
			} else {
				th.base_offset = recs[a].offset;
				th.last_offset_delta = (int32_t)(recs[b - 1].offset - recs[a].offset);
				if (h.base_sequence >= 0)
					th.base_sequence = (int32_t)((uint32_t)h.base_sequence +
					                             (uint32_t)(recs[a].offset - h.base_offset));
				for (size_t k = a; k < b; k++)
					recs[k].offset_delta = (int32_t)(recs[k].offset - th.base_offset);
				enum ls_codec codec = (h.attributes & LS_BATCH_ATTR_CODEC_MASK) ==
				                              LS_CODEC_ZSTD ? LS_CODEC_ZSTD : LS_CODEC_NONE;
				if (codec == LS_CODEC_ZSTD && !t->cctx && !(t->cctx = ZSTD_createCCtx())) {
					rc = -ENOMEM;
					goto err;
				}
				if ((rc = ls_batch_encode_records(&enc, &zs, t->cctx, recs + a,
				                                  (uint32_t)(b - a), &th, codec,
				                                  level)) < 0)
					goto err;
				ls_batch_stamp(enc.data, th.base_offset, h.leader_epoch);
				bytes = enc.data;
				len = enc.len;
			}
			if ((rc = ls_fsutil_pwrite_all(ns->fd, bytes, len, (off_t)ns->size)) < 0)
				goto err;
			if (h.max_ts > ns->max_ts)
				ns->max_ts = h.max_ts;
			struct ls_index_entry ne = {th.base_offset, vp, (uint32_t)ns->size,
			                            (uint32_t)run_view, ns->max_ts};
			if ((rc = ls_index_reserve(&ns->index, ns->index.n + 1)) < 0)
				goto err;
			ls_index_push(&ns->index, &ne);
			ns->size += len;
			ns->end_offset = th.base_offset + th.last_offset_delta + 1;
			ns->end_pos = vp + run_view;
			vp += run_view;
			a = b;
		}
	}
	if (ns->index.n == 0) {
		ls_segment_close(ns);
		ns = NULL;
		unlinkat(p->dirfd, lname, 0);
		unlinkat(p->dirfd, iname, 0);
		goto out;
	}
	ns->start_pos = ns->index.e[0].view_pos;
	if ((rc = ls_index_rewrite(&ns->index)) < 0 || (rc = ls_segment_sync(ns)) < 0)
		goto err;
	/* complete and durable: promote to .swap, index first (see finish_swaps) */
	char to[64];
	ls_segment_filename(to, sizeof(to), s->base_offset, "idx.swap");
	if (renameat(p->dirfd, iname, p->dirfd, to) < 0) {
		rc = -errno;
		goto err;
	}
	ls_segment_filename(to, sizeof(to), s->base_offset, "log.swap");
	if (renameat(p->dirfd, lname, p->dirfd, to) < 0) {
		rc = -errno;
		ls_segment_filename(to, sizeof(to), s->base_offset, "idx.swap");
		unlinkat(p->dirfd, to, 0);
		goto err;
	}
	*out = ns;
	goto out;
err:
	ls_segment_close(ns);
	unlinkat(p->dirfd, lname, 0);
	unlinkat(p->dirfd, iname, 0);
out:
	free(recs);
	ls_buf_free(&enc);
	ls_buf_free(&zs);
	return rc;
}

/* Puts the compacted copy ns (NULL: delete) in place of closed segment s:
 * renames the swap files over the originals (index first: a leftover
 * X.log.swap tells open to finish the job) under the exclusive lock. */
static int compact_swap(struct ls_partition *p, struct ls_segment *s, struct ls_segment *ns)
{
	int rc = 0;
	char from[64], to[64];
	pthread_rwlock_wrlock(&p->lock);
	size_t k = 0;
	while (k < p->nsegs && p->segs[k] != s)
		k++;
	if (ns) {
		ls_segment_filename(from, sizeof(from), s->base_offset, "idx.swap");
		ls_segment_filename(to, sizeof(to), s->base_offset, "idx");
		if (renameat(p->dirfd, from, p->dirfd, to) < 0) {
			rc = -errno;
			goto out;
		}
		ls_segment_filename(from, sizeof(from), s->base_offset, "log.swap");
		ls_segment_filename(to, sizeof(to), s->base_offset, "log");
		if (renameat(p->dirfd, from, p->dirfd, to) < 0) {
			rc = -errno;
			make_sticky(p, rc, "compaction swap");
			goto out;
		}
		p->segs[k] = ns;
		p->bytes = p->bytes - s->size + ns->size;
	} else {
		if ((rc = ls_segment_unlink(p->dirfd, s->base_offset)) < 0)
			goto out;
		memmove(p->segs + k, p->segs + k + 1, (p->nsegs - k - 1) * sizeof(*p->segs));
		p->nsegs--;
		p->bytes -= s->size;
	}
	p->gen++;
	p->layout++;
out:
	pthread_rwlock_unlock(&p->lock);
	if (rc == 0)
		ls_segment_close(s);
	return rc;
}

int ls_partition_compact(struct ls_partition *p)
{
	int rc = 0;
	struct kmap km = {0};
	struct ls_batch_record *recs = NULL;
	size_t nrecs = 0, rcap = 0, nclosed;
	struct ls_segment **snap = NULL;
	uint64_t total_removed = 0;
	int64_t now = now_ms();
	struct tls_ctx *t = tls_get();
	if (!t)
		return -ENOMEM;
	pthread_mutex_lock(&p->maint_mu);
	if ((rc = sticky_rc(p)) < 0)
		goto out;

	/* Closed segments cannot change while maint_mu is held; the active one
	 * only grows, so its batches up to the snapshot are stable too.
	 * Only committed records (below the high watermark) count, as in
	 * Kafka's cleaner: a record above it may still be truncated (a leader
	 * cut off or failed over), and an older value it superseded would then
	 * be gone from this replica, acknowledged and kept on the others. */
	pthread_rwlock_rdlock(&p->lock);
	int64_t hw = p->hw;
	/* Like Kafka's min.cleanable.dirty.ratio: only when something new can
	 * have superseded records in closed segments, and enough of it. */
	int dirty = p->compact_end < 0 ||
	            (hw != p->compact_end &&
	             (active(p)->base_offset != p->compact_active ||
	              (p->appended_bytes - p->compact_appended) * 2 >= p->bytes));
	p->compact_end = hw;
	p->compact_active = active(p)->base_offset;
	p->compact_appended = p->appended_bytes;
	size_t nsnap = p->nsegs;
	size_t active_n = active(p)->index.n;
	int level = p->cfg.compression_level;
	snap = malloc(nsnap * sizeof(*snap));
	if (snap)
		memcpy(snap, p->segs, nsnap * sizeof(*snap));
	pthread_rwlock_unlock(&p->lock);
	if (!snap) {
		rc = -ENOMEM;
		goto out;
	}
	nclosed = nsnap - 1;
	if (nclosed == 0 || !dirty)
		goto out;

	/* 1: the newest committed offset of every key, over the whole log */
	for (size_t k = 0; k < nsnap; k++) {
		struct ls_segment *s = snap[k];
		size_t n = k == nclosed ? active_n : s->index.n;
		for (size_t i = 0; i < n; i++) {
			struct ls_batch_header h;
			if (k == nclosed)
				pthread_rwlock_rdlock(&p->lock);
			rc = decode_batch(p, s, i, t, &h, &recs, &nrecs, &rcap);
			if (k == nclosed)
				pthread_rwlock_unlock(&p->lock);
			if (rc < 0)
				goto out;
			for (size_t j = 0; j < nrecs; j++)
				if (recs[j].key_len >= 0 && recs[j].offset < hw &&
				    (rc = kmap_put(&km, recs[j].key, (uint32_t)recs[j].key_len,
				                   recs[j].offset)) < 0)
					goto out;
		}
	}

	/* 2: rewrite each closed, wholly committed segment that loses records */
	for (size_t k = 0; k < nclosed && snap[k]->end_offset <= hw; k++) {
		struct ls_segment *s = snap[k], *ns;
		int64_t base = s->base_offset; /* s is freed by the swap */
		uint64_t removed = 0;
		size_t dropping = 0;
		int keep_tombstones = s->max_ts >= now - TOMBSTONE_RETENTION_MS;
		for (size_t i = 0; i < s->index.n && !dropping; i++) {
			struct ls_batch_header h;
			if ((rc = decode_batch(p, s, i, t, &h, &recs, &nrecs, &rcap)) < 0)
				goto out;
			for (size_t j = 0; j < nrecs; j++)
				dropping += !survives(&km, &recs[j], keep_tombstones);
		}
		if (!dropping)
			continue;
		if ((rc = compact_segment(p, s, &km, keep_tombstones, t, level, &ns, &removed)) < 0)
			goto out;
		if ((rc = ls_fsutil_fsync_fd(p->dirfd)) < 0) {
			make_sticky(p, rc, "fsync of the directory");
			ls_segment_close(ns);
			goto out;
		}
		if ((rc = compact_swap(p, s, ns)) < 0) {
			ls_segment_close(ns);
			goto out;
		}
		if ((rc = ls_fsutil_fsync_fd(p->dirfd)) < 0) {
			make_sticky(p, rc, "fsync of the directory");
			goto out;
		}
		tfs_info("%s segment %020" PRId64 ": compacted, %" PRIu64 " records removed",
		         p->dir, base, removed);
		total_removed += removed;
	}
out:
	if (rc < 0)
		p->compact_end = -1; /* try again next time */
	pthread_mutex_unlock(&p->maint_mu);
	free(snap);
	free(recs);
	kmap_free(&km);
	if (rc < 0) {
		tfs_warn("%s: compaction stopped: %s", p->dir, tfs_strerror(rc));
		return rc;
	}
	return total_removed > INT32_MAX ? INT32_MAX : (int)total_removed;
}

/* ---- readers -------------------------------------------------------------------- */

struct rrec {
	struct ls_batch_record r;
	uint64_t view_pos;
};

/* A batch as a reader holds it. */
struct rbatch {
	struct ls_buf raw;          /* the batch as stored */
	struct ls_buf dec;          /* its records, decompressed */
	struct ls_buf view;         /* its view, rendered with view_sep, in spans */
	struct ls_batch_span spans[LS_BATCH_PARTS_MAX];
	size_t nspans;
	struct ls_batch_header hdr; /* CRC checked */
	int have;                   /* raw holds a batch whose CRC was checked */
	int have_dec;               /* dec holds its records decompressed (zstd) */
	int have_view;              /* view is built from it */
	char view_sep;
	/* bulk reads (ls_reader_read_records): the view size of every record,
	 * per span, and where the next read is likely to start */
	struct ls_buf sizes[LS_BATCH_PARTS_MAX];
	int have_sizes;             /* sizes are built with the view */
	int dense;                  /* ... and offsets are first_offset + index */
	int64_t first_offset;       /* the first record's offset (dense) */
	int64_t nrecs;              /* records in the batch (dense) */
	int64_t vc_offset;          /* a record's offset, -1: none; at */
	size_t vc_span, vc_idx;     /* span and index in it, */
	size_t vc_pos;              /* view byte in that span */
	uint64_t gen, layout;
	struct loc loc;
	struct ls_index_entry ent;  /* its index entry */
	int64_t batch_end;          /* baseOffset + lastOffsetDelta + 1 */
	char seg_name[24];
};

/*
 * Read-ahead: when a view read moves on from one batch to the next one (a
 * sequential reader), the PF_DEPTH batches after it are fetched and
 * CRC-checked on the reader's thread and their rendering queued to the
 * helper pool (pf[], a ring from pf_head), so they decode while FUSE carries
 * the replies and cat asks for more. The read that needs the first one joins
 * its job (running any piece not started) and takes it if the partition's
 * gen has not moved; anything else cancels them all. Only the view path
 * reads ahead; nothing is served before the same checks as a batch decoded
 * on demand (CRC before rendering, view size against the index after).
 */
#define PF_DEPTH 2

struct rahead {
	struct rbatch b;
	int posted;
	struct ls_batch_render_job render;
	struct pjob job;
};

struct ls_reader {
	struct ls_partition *p;
	struct rbatch b;            /* the cached batch */
	struct rrec *recs;          /* its records, for ls_reader_next */
	size_t nrecs, recs_cap;
	size_t next_rec;            /* index after the record returned last */
	int have_recs;
	struct rahead pf[PF_DEPTH]; /* read ahead: pf_n of them from pf_head */
	size_t pf_head, pf_n;
	int bulk;                   /* ls_reader_read_records reads: render sizes */
};

int ls_reader_open(struct ls_partition *p, struct ls_reader **out)
{
	struct ls_reader *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->p = p;
	*out = r;
	return 0;
}

static void rbatch_free(struct rbatch *b)
{
	ls_buf_free(&b->raw);
	ls_buf_free(&b->dec);
	ls_buf_free(&b->view);
	for (size_t k = 0; k < LS_BATCH_PARTS_MAX; k++)
		ls_buf_free(&b->sizes[k]);
}

/* Stops every read-ahead: pieces not started are dropped. */
static void reader_pf_cancel(struct ls_reader *r)
{
	for (size_t i = 0; i < r->pf_n; i++) {
		struct rahead *a = &r->pf[(r->pf_head + i) % PF_DEPTH];
		par_join(&a->job, 1);
		a->posted = 0;
		a->b.have = 0;
	}
	r->pf_n = 0;
}

void ls_reader_close(struct ls_reader *r)
{
	if (!r)
		return;
	reader_pf_cancel(r);
	rbatch_free(&r->b);
	for (size_t i = 0; i < PF_DEPTH; i++)
		rbatch_free(&r->pf[i].b);
	free(r->recs);
	free(r);
}

/* Loads batch l into b (caller holds lock shared): copies its bytes; checking
 * and decoding happen after the lock is dropped (batch_check). */
static int batch_fetch_locked(struct ls_partition *p, struct rbatch *b, const struct loc *l)
{
	const struct ls_segment *s = p->segs[l->seg];
	size_t len = ls_segment_batch_len(s, l->idx);
	int rc;
	b->have = b->have_dec = b->have_view = b->have_sizes = b->dense = 0;
	if ((rc = ls_buf_reserve(&b->raw, len)) < 0)
		return rc;
	b->ent = s->index.e[l->idx];
	if ((rc = ls_segment_read(s, b->ent.file_pos, b->raw.data, len)) < 0)
		return rc;
	b->raw.len = len;
	b->loc = *l;
	b->gen = p->gen;
	b->layout = p->layout;
	memcpy(b->seg_name, s->name, sizeof(b->seg_name));
	return 0;
}

/* Checks a fetched batch's header and CRC, once per fetch: nothing is built
 * from a batch that fails. quiet: no log line (read-ahead: the read that
 * needs the batch fetches it again and reports). */
static int batch_check(struct ls_partition *p, struct rbatch *b, int quiet)
{
	struct ls_batch_header *h = &b->hdr;
	if (ls_batch_parse_header(b->raw.data, b->raw.len, h) < 0 ||
	    ls_batch_size(h) != b->raw.len || h->base_offset != b->ent.base_offset) {
		if (!quiet)
			tfs_error("%s segment %s: batch at byte %" PRIu32 ": bad header", p->dir,
			          b->seg_name, b->ent.file_pos);
		return LS_ECORRUPT;
	}
	if (ls_batch_check_crc(b->raw.data, h) < 0) {
		if (!quiet)
			tfs_error("%s segment %s: batch at byte %" PRIu32 ": crc mismatch", p->dir,
			          b->seg_name, b->ent.file_pos);
		return LS_ECORRUPT;
	}
	b->batch_end = h->base_offset + h->last_offset_delta + 1;
	b->have = 1;
	return 0;
}

static int batch_bad(struct ls_partition *p, const struct rbatch *b, int rc)
{
	if (rc == -ENOMEM)
		return rc;
	tfs_error("%s segment %s: batch at byte %" PRIu32 ": undecodable records (%s)",
	          p->dir, b->seg_name, b->ent.file_pos, tfs_strerror(rc));
	return rc == -ENOTSUP ? rc : LS_ECORRUPT;
}

static int batch_is_zstd(const struct rbatch *b)
{
	return (b->hdr.attributes & LS_BATCH_ATTR_CODEC_MASK) == LS_CODEC_ZSTD;
}

/* Decodes the cached batch's records into recs (for ls_reader_next). */
static int reader_records(struct ls_reader *r)
{
	struct rbatch *b = &r->b;
	struct ls_batch_iter it;
	int rc;
	if (r->have_recs)
		return 0;
	if (batch_is_zstd(b) && !b->have_dec) {
		struct tls_ctx *t = tls_get();
		if (!t)
			return -ENOMEM;
		if ((rc = ls_batch_decode(b->raw.data, &b->hdr, &b->dec, t->scan.dctx,
		                          batch_par())) < 0)
			return batch_bad(r->p, b, rc);
		b->have_dec = 1;
	}
	if (batch_is_zstd(b)) {
		ls_batch_iter_init_decoded(&it, b->dec.data, b->dec.len, &b->hdr);
	} else {
		struct tls_ctx *t = tls_get();
		if (!t)
			return -ENOMEM;
		rc = ls_batch_iter_init(&it, b->raw.data, &b->hdr, &b->dec, t->scan.dctx);
		if (rc < 0)
			return batch_bad(r->p, b, rc);
	}
	r->nrecs = r->next_rec = 0;
	uint64_t vp = b->ent.view_pos;
	struct ls_batch_record rec;
	while ((rc = ls_batch_iter_next(&it, &rec)) == 1) {
		if (r->nrecs == r->recs_cap) {
			size_t cap = r->recs_cap ? r->recs_cap * 2 : 256;
			struct rrec *n = realloc(r->recs, cap * sizeof(*n));
			if (!n)
				return -ENOMEM;
			r->recs = n;
			r->recs_cap = cap;
		}
		r->recs[r->nrecs++] = (struct rrec){rec, vp};
		vp += rec.view_size;
	}
	if (rc == 0 && vp - b->ent.view_pos != b->ent.view_size)
		rc = LS_ECORRUPT;
	if (rc < 0)
		return batch_bad(r->p, b, rc);
	r->have_recs = 1;
	return 0;
}

/* The end of a render: spans, and the view size against the index; with
 * sizes (rendered with them), whether the batch is dense. */
static int batch_render_end(struct rbatch *b, struct ls_batch_render_job *j, char sep)
{
	uint64_t vsize;
	int sized = j->sizes != NULL;
	int rc = ls_batch_render_end(j, b->spans, &b->nspans, &vsize);
	if (rc == 0)
		b->have_dec = batch_is_zstd(b) && j->dec_kept;
	if (rc == 0 && vsize != b->ent.view_size)
		rc = LS_ECORRUPT;
	b->have_sizes = b->dense = 0;
	b->vc_offset = -1;
	if (rc == 0) {
		b->view_sep = sep;
		b->have_view = 1;
		b->have_sizes = sized;
	}
	if (rc == 0 && sized) {
		int64_t expect = -1, n = 0;
		int dense = 1;
		for (size_t k = 0; k < b->nspans && dense; k++) {
			const struct ls_batch_span *sp = &b->spans[k];
			if (!sp->count)
				continue;
			if (!sp->dense || (expect >= 0 && sp->first_delta != expect) ||
			    b->sizes[k].len != (size_t)sp->count * 4)
				dense = 0;
			if (expect < 0)
				b->first_offset = b->hdr.base_offset + sp->first_delta;
			expect = (int64_t)sp->last_delta + 1;
			n += sp->count;
		}
		b->dense = dense && n > 0;
		b->nrecs = n;
	}
	return rc;
}

/* Renders the cached batch's view (decompressing its frames in parallel),
 * with its record sizes for a bulk reader. */
static int reader_render(struct ls_reader *r, char sep)
{
	struct rbatch *b = &r->b;
	struct ls_batch_render_job j;
	if (b->have_view && b->view_sep == sep && (b->have_sizes || !r->bulk))
		return 0;
	struct tls_ctx *t = tls_get();
	if (!t)
		return -ENOMEM;
	const struct ls_batch_par *par = batch_par();
	int n = ls_batch_render_begin(&j, b->raw.data, &b->hdr, &b->dec, b->have_dec, &b->view,
	                              sep, t->scan.dctx, par);
	if (n > 0 && r->bulk)
		j.sizes = b->sizes;
	if (n > 0)
		par->run(par->ctx, (size_t)n, ls_batch_render_piece, &j);
	int rc = n < 0 ? n : batch_render_end(b, &j, sep);
	return rc < 0 ? batch_bad(r->p, b, rc) : 0;
}

/* Reads ahead up to PF_DEPTH batches after the last one held, if they start
 * below hw_pos. Failures only mean less read-ahead. */
static void reader_pf_fill(struct ls_reader *r, uint64_t hw_pos, char sep)
{
	struct ls_partition *p = r->p;
	while (r->pf_n < PF_DEPTH) {
		const struct rbatch *last =
			r->pf_n ? &r->pf[(r->pf_head + r->pf_n - 1) % PF_DEPTH].b : &r->b;
		struct rahead *a = &r->pf[(r->pf_head + r->pf_n) % PF_DEPTH];
		struct loc l = last->loc;
		int rc = 1;
		pthread_rwlock_rdlock(&p->lock);
		if (p->layout == last->layout && p->gen == last->gen && !next_loc(p, &l) &&
		    loc_entry(p, &l)->view_pos < hw_pos)
			rc = batch_fetch_locked(p, &a->b, &l);
		pthread_rwlock_unlock(&p->lock);
		if (rc != 0 || batch_check(p, &a->b, 1) < 0)
			break;
		int n = ls_batch_render_begin(&a->render, a->b.raw.data, &a->b.hdr, &a->b.dec, 0,
		                              &a->b.view, sep, NULL, batch_par());
		if (n <= 0)
			break;
		a->b.view_sep = sep;
		if (r->bulk)
			a->render.sizes = a->b.sizes;
		par_post(&a->job, ls_batch_render_piece, &a->render, (size_t)n);
		a->posted = 1;
		r->pf_n++;
	}
}

/* Makes the first read-ahead batch the cached one if it holds pos (for gen)
 * and renders cleanly; else drops all of them. 1 if taken. */
static int reader_pf_take(struct ls_reader *r, uint64_t pos, uint64_t gen, char sep)
{
	if (!r->pf_n)
		return 0;
	struct rahead *a = &r->pf[r->pf_head];
	struct rbatch *pf = &a->b;
	int want = pf->have && pf->gen == gen && pf->view_sep == sep &&
	           pos >= pf->ent.view_pos && pos < pf->ent.view_pos + pf->ent.view_size;
	if (!want) {
		reader_pf_cancel(r);
		return 0;
	}
	par_join(&a->job, 0);
	a->posted = 0;
	r->pf_head = (r->pf_head + 1) % PF_DEPTH;
	r->pf_n--;
	if (batch_render_end(pf, &a->render, sep) < 0) {
		pf->have = 0;
		reader_pf_cancel(r);
		return 0;
	}
	struct rbatch t = r->b;
	r->b = *pf;
	*pf = t;
	pf->have = 0;
	r->have_recs = 0;
	return 1;
}

/* Copies view bytes [at, at + n) of the rendered batch (at relative to its
 * start) to dst. */
static void batch_copy_view(const struct rbatch *b, uint64_t at, uint8_t *dst, size_t n)
{
	for (size_t k = 0; k < b->nspans && n; k++) {
		const struct ls_batch_span *sp = &b->spans[k];
		if (at >= sp->len) {
			at -= sp->len;
			continue;
		}
		size_t c = sp->len - (size_t)at < n ? sp->len - (size_t)at : n;
		memcpy(dst, b->view.data + sp->off + at, c);
		dst += c;
		n -= c;
		at = 0;
	}
}

/* A sequential reader stopped inside a record of its cached batch, and
 * retention (the log start passed it) or compaction (a new gen) changed the
 * log since (the record may be gone):
 * the rest of that record from the cached batch, to its '\n', so the reader
 * never glues the first half of a removed record onto the next one. 0 if
 * pos is not inside a record of the cached, rendered batch. */
static size_t finish_record(const struct rbatch *b, uint64_t pos, char sep, uint8_t *buf,
                            size_t size)
{
	if (!b->have || !b->have_view || b->view_sep != sep || pos <= b->ent.view_pos ||
	    pos >= b->ent.view_pos + b->ent.view_size)
		return 0;
	uint64_t at = pos - b->ent.view_pos, off = 0;
	size_t k = 0;
	for (; k < b->nspans && at >= off + b->spans[k].len; k++)
		off += b->spans[k].len;
	if (k == b->nspans)
		return 0;
	const uint8_t *v = b->view.data + b->spans[k].off;
	size_t i = (size_t)(at - off);
	uint8_t prev = i ? v[i - 1] : 0;
	if (!i) { /* at a span's start: the previous span's last byte */
		if (k == 0)
			return 0;
		prev = b->view.data[b->spans[k - 1].off + b->spans[k - 1].len - 1];
	}
	if (prev == '\n')
		return 0; /* at a record boundary: nothing begun */
	const uint8_t *nl = memchr(v + i, '\n', b->spans[k].len - i);
	size_t n = nl ? (size_t)(nl + 1 - (v + i)) : b->spans[k].len - i;
	if (n > size)
		n = size;
	memcpy(buf, v + i, n);
	return n;
}

ssize_t ls_reader_read_view(struct ls_reader *r, uint64_t pos, void *buf, size_t size,
                            char sep, uint64_t *actual)
{
	struct ls_partition *p = r->p;
	struct rbatch *b = &r->b;
	size_t copied = 0;
	int rc;
	pthread_rwlock_rdlock(&p->lock);
	uint64_t start = p->start_pos, hw_pos = p->hw_pos, gen = p->gen;
	pthread_rwlock_unlock(&p->lock);
	if (b->have && (b->gen != gen || pos < start) && size) {
		size_t n = finish_record(b, pos, sep, buf, size);
		if (n) {
			if (actual)
				*actual = pos;
			return (ssize_t)n;
		}
	}
	if (pos < start)
		pos = start;
	if (actual)
		*actual = pos;
	while (copied < size && pos < hw_pos) {
		if (!(b->have && b->gen == gen && pos >= b->ent.view_pos &&
		      pos < b->ent.view_pos + b->ent.view_size)) {
			int sequential = b->have && b->gen == gen &&
			                 pos == b->ent.view_pos + b->ent.view_size;
			if (!reader_pf_take(r, pos, gen, sep)) {
				struct loc l;
				pthread_rwlock_rdlock(&p->lock);
				if (find_by_pos(p, pos, &l)) {
					pthread_rwlock_unlock(&p->lock);
					break;
				}
				rc = batch_fetch_locked(p, b, &l);
				pthread_rwlock_unlock(&p->lock);
				r->have_recs = 0;
				if (rc == 0)
					rc = batch_check(p, b, 0);
				if (rc < 0)
					return copied ? (ssize_t)copied : rc;
			}
			gen = b->gen;
			if (pos < b->ent.view_pos) { /* a hole: skip to the next record */
				if (copied)
					break;
				pos = b->ent.view_pos;
				if (actual)
					*actual = pos;
				if (pos >= hw_pos)
					break;
			}
			if (sequential)
				reader_pf_fill(r, hw_pos, sep);
			else
				reader_pf_cancel(r);
		}
		if ((rc = reader_render(r, sep)) < 0)
			return copied ? (ssize_t)copied : rc;
		uint64_t end = b->ent.view_pos + b->ent.view_size;
		if (end > hw_pos)
			end = hw_pos;
		size_t n = (size_t)(end - pos);
		if (n > size - copied)
			n = size - copied;
		batch_copy_view(b, pos - b->ent.view_pos, (uint8_t *)buf + copied, n);
		copied += n;
		pos += n;
	}
	return (ssize_t)copied;
}

/* For a bulk reader (ra >= 0: the separator): 1 if the cached batch is
 * rendered with its record sizes and dense, so records come from its view;
 * 0 if they must be decoded one by one (reader_records); or -errno. */
static int reader_dense(struct ls_reader *r, int ra)
{
	if (ra < 0)
		return 0;
	int rc = reader_render(r, (char)ra);
	return rc < 0 ? rc : r->b.dense;
}

/* Finds the first record with offset >= `offset` below the high watermark
 * and makes its batch the cached, decoded one: 1 with *idx its index in
 * r->recs and *hw_out the high watermark read, 2 (only if ra >= 0) with
 * *idx its index among the records of the cached batch's view (dense), 0 if
 * there is none yet, or -errno. (ls_reader_next and ls_reader_read_records.) */
static int reader_seek(struct ls_reader *r, int64_t offset, int ra, size_t *idx,
                       int64_t *hw_out)
{
	struct ls_partition *p = r->p;
	int rc;
	pthread_rwlock_rdlock(&p->lock);
	int64_t start = p->start_offset, hw = p->hw;
	uint64_t gen = p->gen, layout = p->layout, hw_pos = p->hw_pos;
	pthread_rwlock_unlock(&p->lock);
	if (offset < start)
		offset = start;
	for (;;) {
		if (offset >= hw)
			return 0;
		if (r->b.have && r->b.gen == gen && offset >= r->b.ent.base_offset &&
		    offset < r->b.batch_end) {
			if ((rc = reader_dense(r, ra)) < 0)
				return rc;
			if (rc == 1) {
				const struct rbatch *b = &r->b;
				if (offset < b->first_offset)
					offset = b->first_offset;
				if (offset < b->first_offset + b->nrecs) {
					if (offset >= hw)
						return 0;
					*idx = (size_t)(offset - b->first_offset);
					*hw_out = hw;
					return 2;
				}
				offset = b->batch_end;
				continue;
			}
			if ((rc = reader_records(r)) < 0)
				return rc;
			size_t lo = 0, hi = r->nrecs, h = r->next_rec;
			if (h < r->nrecs && r->recs[h].r.offset >= offset &&
			    (h == 0 || r->recs[h - 1].r.offset < offset))
				lo = hi = h; /* the record after the last one returned */
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				if (r->recs[mid].r.offset < offset)
					lo = mid + 1;
				else
					hi = mid;
			}
			if (lo < r->nrecs) {
				if (r->recs[lo].r.offset >= hw)
					return 0;
				*idx = lo;
				*hw_out = hw;
				return 1;
			}
			offset = r->b.batch_end; /* a gap after the last record */
			continue;
		}
		struct loc l;
		int cached_next = r->b.have && r->b.gen == gen && r->b.layout == layout &&
		                  offset == r->b.batch_end;
		pthread_rwlock_rdlock(&p->lock);
		if (cached_next && p->layout == layout) {
			l = r->b.loc;
			rc = next_loc(p, &l);
		} else {
			rc = find_by_offset(p, offset, &l);
			/* the found batch may be the cached one, which ends before
			 * offset (a compaction gap after it); a batch found for an
			 * offset before the cached one is the one to read */
			if (rc == 0 && r->b.have && r->b.gen == gen && offset >= r->b.batch_end &&
			    loc_entry(p, &l)->base_offset == r->b.ent.base_offset)
				rc = next_loc(p, &l);
		}
		if (rc) {
			pthread_rwlock_unlock(&p->lock);
			return 0;
		}
		if (ra >= 0 && cached_next && r->pf_n) {
			/* sequential: the read-ahead may hold it, decoded */
			uint64_t vp = loc_entry(p, &l)->view_pos;
			pthread_rwlock_unlock(&p->lock);
			if (reader_pf_take(r, vp, gen, (char)ra))
				rc = 0;
			else {
				pthread_rwlock_rdlock(&p->lock);
				if (p->layout != layout || p->gen != gen) {
					gen = p->gen;
					layout = p->layout;
					hw = p->hw;
					hw_pos = p->hw_pos;
					pthread_rwlock_unlock(&p->lock);
					continue; /* changed meanwhile: look again */
				}
				rc = 1;
			}
		} else {
			rc = 1;
		}
		if (rc == 1) {
			rc = batch_fetch_locked(p, &r->b, &l);
			pthread_rwlock_unlock(&p->lock);
			r->have_recs = 0;
			if (rc == 0)
				rc = batch_check(p, &r->b, 0);
		}
		if (ra >= 0 && rc == 0) {
			if (cached_next)
				reader_pf_fill(r, hw_pos, (char)ra);
			else
				reader_pf_cancel(r);
		}
		if (rc == 0 && ra < 0) /* a bulk reader decides above */
			rc = reader_records(r);
		if (rc < 0)
			return rc;
		layout = r->b.layout;
		gen = r->b.gen;
		if (offset < r->b.ent.base_offset)
			offset = r->b.ent.base_offset;
	}
}

int ls_reader_next(struct ls_reader *r, int64_t offset, struct ls_record *rec)
{
	size_t i;
	int64_t hw;
	int rc = reader_seek(r, offset, -1, &i, &hw);
	if (rc <= 0)
		return rc;
	const struct rrec *x = &r->recs[i];
	r->next_rec = i + 1;
	*rec = (struct ls_record){
		.offset = x->r.offset,
		.timestamp_ms = x->r.timestamp,
		.key = x->r.key_len >= 0 ? x->r.key : NULL,
		.key_len = x->r.key_len > 0 ? (uint32_t)x->r.key_len : 0,
		.value = x->r.value_len >= 0 ? x->r.value : NULL,
		.value_len = x->r.value_len > 0 ? (uint32_t)x->r.value_len : 0,
		.view_pos = x->view_pos,
	};
	return 1;
}

/* ls_reader_read_records from the cached batch's view: records idx on
 * (see reader_seek's 2), in runs copied whole from each span. */
static ssize_t read_dense(struct ls_reader *r, size_t idx, int64_t hw, uint8_t *out,
                          size_t size, uint32_t max_records, struct ls_records_res *res)
{
	struct rbatch *b = &r->b;
	int64_t offset = b->first_offset + (int64_t)idx;
	size_t k, j, pos;
	if (b->vc_offset == offset) {
		k = b->vc_span;
		j = b->vc_idx;
		pos = b->vc_pos;
	} else { /* find it: spans hold consecutive records */
		size_t left = idx;
		for (k = 0; k < b->nspans && left >= (size_t)b->spans[k].count; k++)
			left -= (size_t)b->spans[k].count;
		if (k == b->nspans)
			return 0;
		const uint32_t *sz = (const uint32_t *)(const void *)b->sizes[k].data;
		pos = 0;
		for (j = 0; j < left; j++)
			pos += sz[j];
	}
	size_t used = 0;
	uint32_t n = 0;
	int64_t o = offset;
	int full = 0;
	res->first = offset;
	for (; k < b->nspans && !full; k++, j = 0, pos = 0) {
		const struct ls_batch_span *sp = &b->spans[k];
		const uint32_t *sz = (const uint32_t *)(const void *)b->sizes[k].data;
		size_t from = pos;
		for (; j < (size_t)sp->count; j++, o++) {
			if (o >= hw || (max_records && n == max_records)) {
				full = 1;
				break;
			}
			size_t len = sz[j];
			if (len > size - used - (pos - from)) {
				if (n == 0) {
					res->need = len;
					return -EMSGSIZE;
				}
				full = 1;
				break;
			}
			pos += len;
			n++;
		}
		if (pos > sp->len)
			return batch_bad(r->p, b, LS_ECORRUPT); /* sizes and view disagree */
		memcpy(out + used, b->view.data + sp->off + from, pos - from);
		used += pos - from;
		if (full) {
			b->vc_offset = o;
			b->vc_span = k;
			b->vc_idx = j;
			b->vc_pos = pos;
		}
	}
	if (!full)
		b->vc_offset = -1;
	res->next = o;
	res->count = n;
	return (ssize_t)used;
}

ssize_t ls_reader_read_records(struct ls_reader *r, int64_t offset, void *buf, size_t size,
                               char sep, uint32_t max_records, struct ls_records_res *res)
{
	size_t i;
	int64_t hw;
	*res = (struct ls_records_res){.first = -1, .next = -1};
	r->bulk = 1;
	int rc = reader_seek(r, offset, (unsigned char)sep, &i, &hw);
	if (rc == 2)
		return read_dense(r, i, hw, buf, size, max_records, res);
	if (rc <= 0)
		return rc;
	uint8_t *out = buf;
	size_t used = 0;
	uint32_t n = 0;
	res->first = r->recs[i].r.offset;
	for (; i < r->nrecs && (!max_records || n < max_records); i++, n++) {
		const struct ls_batch_record *x = &r->recs[i].r;
		if (x->offset >= hw)
			break;
		size_t len = x->view_size;
		if (len > size - used) {
			if (n == 0) {
				res->need = len;
				return -EMSGSIZE;
			}
			break;
		}
		uint8_t *o = out + used;
		if (x->key_len >= 0) {
			if (x->key_len > 0)
				memcpy(o, x->key, (size_t)x->key_len);
			o += x->key_len;
			*o++ = (uint8_t)sep;
		}
		if (x->value_len > 0) {
			memcpy(o, x->value, (size_t)x->value_len);
			o += x->value_len;
		}
		*o++ = '\n';
		if ((size_t)(o - (out + used)) != len)
			return batch_bad(r->p, &r->b, LS_ECORRUPT); /* view size lies */
		used += len;
		res->next = x->offset + 1;
	}
	r->next_rec = i;
	res->count = n;
	return (ssize_t)used;
}
