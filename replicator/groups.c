/*
 * groups.c - the group coordinator of groups.h on one node: the group
 * registry, membership and sticky cooperative assignment, per-member
 * delivery (peek/take, and bulk takes that render a run of records straight
 * into a read's buffer), commits, resets, and the durable offsets log.
 *
 * Objects (all owned here):
 *
 *   struct rep_groups   one per node, hung on struct rep (internal.h);
 *                       rep_groups_open() .. rep_groups_close().
 *     gtopic[]          one entry per topic id that has groups
 *       rep_group *[]   in creation order; ids per topic, never reused
 *                       while the daemon runs
 *         gpart[]       per partition: committed offset, owner, owner's
 *                       base (position at its last commit point) and pos
 *         rep_member *[] in join order
 *
 * On disk: DATA/__groups/ is a logstore partition (cleanup: compact), one
 * record per fact, newest per key wins:
 *
 *   key                              value                  meaning
 *   "<topic id>/<group>"             "created"              the group exists
 *   "<topic id>/<group>"             NULL (tombstone)       the group was deleted
 *   "<topic id>/<group>/<partition>" "<offset>" (decimal)   committed offset
 *   "<topic id>/<group>/<partition>" NULL (tombstone)       forgotten with the group
 *
 * One rep_member_commit (or reset, create, delete) is ONE batch, so a crash
 * never splits it. Appends are not fsynced one by one: rep_groups_sync()
 * (the housekeeping flush) and rep_groups_close() sync the partition.
 * rep_groups_open() replays the log from its start, in order.
 *
 * Partition states within a group (arrows name the functions):
 *
 *            rebalance (target owner)              take(_bulk)
 *   free ───────────────────────────────> owned ──────> owned, pos > base
 *    ^                                      │  ^            │
 *    │        rebalance, pos == base and    │  └── commit ──┘ (base = pos)
 *    │        no peek pending on it         │      rewind     (pos = base)
 *    ├──────────────────────────────────────┘
 *    │                                      │ rebalance, records in flight
 *    │  commit / rewind / leave             v
 *    └────────────────────────────────── revoking  (peek, take_bulk skip it)
 *
 * Bulk delivery (rep_member_take_bulk) copies runs of whole records from
 * the batches the partition's reader renders ahead (ls_reader_read_records);
 * each member keeps one reader per partition it reads (struct mreader).
 *
 * Invariants:
 *  1. A partition has at most one owner; only the owner reads it; owner and
 *     revoking are changed only under the group lock.
 *  2. A partition changes owner only when its owner has nothing taken and
 *     uncommitted on it (pos == base) and no peeked record pending on it, so
 *     no record is delivered twice in normal operation.
 *  3. committed (in memory) is what the durable log says once the append
 *     returned; a failed append changes nothing in memory (a failed commit
 *     rewinds the member: its records are delivered again).
 *  4. base == pos == resolve(committed) when a partition is given to a member.
 *
 * Cluster mode (c->cluster): no DATA/__groups (glog_append does nothing);
 * the registry follows the metadata (rep_groups_reconcile, on
 * group_remote.c's worker); a group is `real` only on its coordinator node,
 * elsewhere its committed offsets mirror the metadata; members fs opens are
 * fronts whose calls go to a stub (group_remote.c), which uses a real member
 * here or a proxy on the coordinator. Leaving the coordinator role (or
 * taking it again) evicts every member: they become orphans, owning
 * nothing, until their owner frees them with rep_member_leave.
 *
 * Locks, outermost first: registry_lock (the coordinator pointer; read-held
 * by every entry point that starts from a struct rep or a topic) >
 * c->mu (topics and group lists) > m->mu (one member's calls, its readers) >
 * g->mu (everything in a group, every member's peek state) > c->log_mu
 * (append + high watermark of the internal log). local.c's locks are taken
 * only inside rep_topic_* calls, never around a call into this file.
 * Wakers are collected under g->mu (m->wake_refs++) and called after every
 * lock is dropped; rep_member_leave waits for wake_refs to drain so a waker
 * never runs after its member left.
 */
#include "groups.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../logstore/log.h"
#include "group_remote.h"
#include "internal.h"

#define GKEY_MAX (20 + 1 + REP_NAME_MAX + 1 + 10 + 1)
#define GVAL_MAX 24
#define GROUPS_DIR "__groups"

struct gpart {
	int64_t committed;          /* the group's committed offset; -1: none yet */
	struct rep_member *owner;   /* NULL: unassigned */
	int64_t base;               /* owner's position at its last commit point */
	int64_t pos;                /* owner's next offset: base + what it took */
	int revoking;               /* owner releases it at its next commit point */
};

/* A member's reader of one partition. The reader caches one decoded batch.
 * `at` is where the member's next read of the partition is expected to
 * start, `first` the offset of the first record at or after `at` when known
 * (-1: not known). A read that starts anywhere else (after a reset, a
 * rewind, a handover) gets a fresh reader, and a read at `at` asks for
 * `first`: ls_reader_next(off) can step over its cached batch when off lies
 * in a compaction gap just before that batch at the start of a segment, so
 * it is only ever asked for offsets its cache cannot mislead. */
struct mreader {
	struct ls_reader *rd;       /* records; NULL until first read */
	int64_t at, first;
};

static void mreader_close(struct mreader *mr)
{
	ls_reader_close(mr->rd);
	mr->rd = NULL;
}

struct rep_member {
	struct rep_group *g;        /* holds a group reference */
	struct grm_stub *stub;      /* cluster mode: a front, its calls go to the
	                               stub (group_remote.c); NULL: a real member */
	atomic_int orphaned;        /* evicted (set under g->mu): owns nothing */
	void (*waker)(void *ctx);
	void *ctx;
	size_t idx;                 /* position in g->members (under g->mu) */
	pthread_mutex_t mu;         /* serialises this member's calls; guards below */
	struct mreader *readers;    /* by partition */
	uint32_t nreaders;
	uint32_t *cand;             /* peek snapshot: partitions, positions */
	int64_t *cand_pos;
	uint32_t ccand;
	/* under g->mu: */
	uint32_t rr;                /* round robin: partition to try first */
	int peek_valid;             /* the last peek returned a record not yet taken */
	uint32_t peek_p;
	int64_t peek_off;           /* its offset */
	int64_t peek_pos;           /* the partition's pos when it was peeked */
	int wake_refs;              /* waker calls collected but not finished */
};

struct rep_group {
	struct rep_groups *c;
	struct rep_topic *topic;    /* a reference; NULL only during replay */
	uint64_t topic_id;
	uint32_t id;
	char name[REP_NAME_MAX + 1];
	atomic_int refs;            /* the registry's (while listed) + gets + members */
	pthread_mutex_t mu;
	pthread_cond_t cond;        /* a member's wake_refs reached 0 */
	atomic_int deleted;         /* set under g->mu */
	uint32_t nparts;
	struct gpart *parts;
	struct rep_member **members;
	size_t nmembers, cmembers;
	/* cluster mode (under mu): */
	uint16_t coord;             /* the metadata's coordinator */
	int real;                   /* run here: parts and members are real (always
	                               1 on a single node) */
	uint64_t epoch;             /* +1 whenever real changes */
	int commit_dirty;           /* committed moved since the last submission */
	int64_t *submitted;         /* per partition: last GROUP_COMMIT submitted */
	uint32_t nsubmitted;
};

struct gtopic {
	uint64_t topic_id;
	struct rep_group **groups;  /* creation order; one registry reference each */
	size_t n;
	uint32_t next_id;
};

struct rep_groups {
	struct rep *rep;
	enum rep_group_start start;
	pthread_mutex_t mu;         /* topics and their group lists */
	struct gtopic *topics;
	size_t ntopics;
	pthread_mutex_t log_mu;     /* append + high watermark of `log` */
	struct ls_partition *log;   /* DATA/__groups/; NULL in cluster mode */
	atomic_bool dirty;          /* appended since the last sync */
	int cluster;                /* cluster mode: the metadata holds groups */
	struct grm *remote;         /* cluster mode: group_remote.c's half */
};

/* Guards the coordinator pointer in struct rep: rep_groups_close() takes it
 * for writing, so no hook from a background thread runs on a freed
 * coordinator. One per process; held for reading on every entry point. */
static pthread_rwlock_t registry_lock = PTHREAD_RWLOCK_INITIALIZER;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The coordinator of r with registry_lock read-held, or NULL (lock dropped). */
static struct rep_groups *coord_enter(struct rep *r)
{
	pthread_rwlock_rdlock(&registry_lock);
	struct rep_groups *c = rep_groups_state(r);
	if (!c)
		pthread_rwlock_unlock(&registry_lock);
	return c;
}

static void coord_leave(void)
{
	pthread_rwlock_unlock(&registry_lock);
}

/* ---- wakeups ------------------------------------------------------------ */

struct wakeups {
	struct rep_member **m;
	size_t n, cap;
};

/* Queues m's waker. Caller holds m->g->mu. */
static void wake_add(struct wakeups *w, struct rep_member *m)
{
	if (!m->waker)
		return;
	for (size_t i = 0; i < w->n; i++)
		if (w->m[i] == m)
			return;
	if (w->n == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 8;
		struct rep_member **n = realloc(w->m, cap * sizeof(*n));
		if (!n) {
			tfs_error("groups: out of memory queueing a wakeup; a reader may wait "
			          "for its next event");
			return;
		}
		w->m = n;
		w->cap = cap;
	}
	w->m[w->n++] = m;
	m->wake_refs++;
}

/* Calls the queued wakers. No lock may be held. */
static void wake_run(struct wakeups *w)
{
	for (size_t i = 0; i < w->n; i++) {
		struct rep_member *m = w->m[i];
		struct rep_group *g = m->g;
		m->waker(m->ctx);
		pthread_mutex_lock(&g->mu);
		if (--m->wake_refs == 0)
			pthread_cond_broadcast(&g->cond);
		pthread_mutex_unlock(&g->mu);
	}
	free(w->m);
	*w = (struct wakeups){0};
}

/* ---- the internal log --------------------------------------------------- */

/* Records for one append; keys and values live in the batch. */
struct gbatch {
	uint32_t n, cap;
	struct ls_rec *recs;
	char (*keys)[GKEY_MAX];
	char (*vals)[GVAL_MAX];
};

/* Adds key "<tid>/<group>" (part < 0) or "<tid>/<group>/<part>" with value
 * (NULL: a tombstone). */
static int gbatch_add(struct gbatch *b, uint64_t tid, const char *group, int64_t part,
                      const char *value)
{
	if (b->n == b->cap) {
		uint32_t cap = b->cap ? 2 * b->cap : 8;
		struct ls_rec *recs = realloc(b->recs, cap * sizeof(*recs));
		if (recs)
			b->recs = recs;
		char(*keys)[GKEY_MAX] = recs ? realloc(b->keys, cap * sizeof(*keys)) : NULL;
		if (keys)
			b->keys = keys;
		char(*vals)[GVAL_MAX] = keys ? realloc(b->vals, cap * sizeof(*vals)) : NULL;
		if (!vals)
			return -ENOMEM;
		b->vals = vals;
		b->cap = cap;
	}
	uint32_t i = b->n;
	int kl = part < 0 ? snprintf(b->keys[i], GKEY_MAX, "%" PRIu64 "/%s", tid, group)
	                  : snprintf(b->keys[i], GKEY_MAX, "%" PRIu64 "/%s/%" PRId64, tid,
	                             group, part);
	if (kl < 0 || kl >= GKEY_MAX)
		return -ENAMETOOLONG;
	b->recs[i] = (struct ls_rec){.key_len = (uint32_t)kl};
	if (value) {
		int vl = snprintf(b->vals[i], GVAL_MAX, "%s", value);
		if (vl < 0 || vl >= GVAL_MAX)
			return -EINVAL;
		b->recs[i].value = b->vals[i]; /* fixed up in glog_append */
		b->recs[i].value_len = (uint32_t)vl;
	}
	b->n++;
	return 0;
}

static int gbatch_add_offset(struct gbatch *b, uint64_t tid, const char *group, uint32_t part,
                             int64_t off)
{
	char v[GVAL_MAX];
	snprintf(v, sizeof(v), "%" PRId64, off);
	return gbatch_add(b, tid, group, part, v);
}

static void gbatch_free(struct gbatch *b)
{
	free(b->recs);
	free(b->keys);
	free(b->vals);
	*b = (struct gbatch){0};
}

/* Appends the batch as one logstore batch (no fsync). */
static int glog_append(struct rep_groups *c, struct gbatch *b)
{
	if (b->n == 0 || !c->log)
		return 0; /* cluster mode: the metadata quorum holds offsets */
	for (uint32_t i = 0; i < b->n; i++) {
		b->recs[i].key = b->keys[i];
		if (b->recs[i].value)
			b->recs[i].value = b->vals[i];
	}
	struct ls_append_result res;
	pthread_mutex_lock(&c->log_mu);
	int rc = ls_partition_append(c->log, b->recs, b->n, now_ms(), NULL, &res);
	if (rc == 0) {
		ls_partition_set_hw(c->log, res.last_offset + 1);
		atomic_store(&c->dirty, true);
	}
	pthread_mutex_unlock(&c->log_mu);
	if (rc < 0) {
		tfs_error("%s/" GROUPS_DIR ": append of %u record(s) failed: %s",
		          rep_data_dir(c->rep), b->n, tfs_strerror(rc));
		if (rc == LS_ESTICKY)
			rc = -EROFS;
	}
	return rc;
}

/* ---- groups: lists and partitions --------------------------------------- */

static struct gtopic *gtopic_find(struct rep_groups *c, uint64_t tid, int create)
{
	for (size_t i = 0; i < c->ntopics; i++)
		if (c->topics[i].topic_id == tid)
			return &c->topics[i];
	if (!create)
		return NULL;
	struct gtopic *ts = realloc(c->topics, (c->ntopics + 1) * sizeof(*ts));
	if (!ts)
		return NULL;
	c->topics = ts;
	ts[c->ntopics] = (struct gtopic){.topic_id = tid, .next_id = 1};
	return &ts[c->ntopics++];
}

static void gtopic_drop(struct rep_groups *c, struct gtopic *gt)
{
	free(gt->groups);
	size_t i = (size_t)(gt - c->topics);
	memmove(gt, gt + 1, (c->ntopics - i - 1) * sizeof(*gt));
	c->ntopics--;
}

static ssize_t gtopic_index(const struct gtopic *gt, const char *name)
{
	for (size_t i = 0; gt && i < gt->n; i++)
		if (strcmp(gt->groups[i]->name, name) == 0)
			return (ssize_t)i;
	return -1;
}

static int gtopic_add(struct gtopic *gt, struct rep_group *g)
{
	struct rep_group **gs = realloc(gt->groups, (gt->n + 1) * sizeof(*gs));
	if (!gs)
		return -ENOMEM;
	gt->groups = gs;
	gs[gt->n++] = g;
	g->id = gt->next_id++;
	return 0;
}

static void gtopic_remove(struct gtopic *gt, size_t i)
{
	memmove(&gt->groups[i], &gt->groups[i + 1], (gt->n - i - 1) * sizeof(*gt->groups));
	gt->n--;
}

/* A group with one (the registry's) reference. t may be NULL (replay of a
 * topic that is gone); otherwise the group takes its own topic reference. */
static struct rep_group *group_new(struct rep_groups *c, struct rep_topic *t, uint64_t tid,
                                   const char *name)
{
	struct rep_group *g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->c = c;
	g->topic = t ? rep_topic_hold(t) : NULL;
	g->topic_id = tid;
	snprintf(g->name, sizeof(g->name), "%s", name);
	atomic_init(&g->refs, 1);
	atomic_init(&g->deleted, 0);
	g->real = !c->cluster;
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cond, NULL);
	return g;
}

static void group_destroy(struct rep_group *g)
{
	if (g->topic)
		rep_topic_put(g->topic);
	free(g->parts);
	free(g->members);
	free(g->submitted);
	pthread_cond_destroy(&g->cond);
	pthread_mutex_destroy(&g->mu);
	free(g);
}

/* Grows g->parts to n partitions (new ones have no committed offset). */
static int group_ensure_parts(struct rep_group *g, uint32_t n)
{
	if (n <= g->nparts)
		return 0;
	struct gpart *ps = realloc(g->parts, n * sizeof(*ps));
	if (!ps)
		return -ENOMEM;
	for (uint32_t p = g->nparts; p < n; p++)
		ps[p] = (struct gpart){.committed = -1};
	g->parts = ps;
	g->nparts = n;
	return 0;
}

/* Catches up with the topic's partition count. Caller holds g->mu. */
static int group_sync_parts(struct rep_group *g)
{
	return group_ensure_parts(g, rep_topic_partition_count(g->topic));
}

static struct ls_partition *part_log(struct rep_group *g, uint32_t p)
{
	struct rep_partition *rp = rep_topic_partition(g->topic, p);
	return rp ? rep_partition_log(rp) : NULL;
}

/* Where a reader of p starts given committed offset c: never below the
 * partition's start; no committed offset = the start ("earliest"). */
static int64_t resolve(struct rep_group *g, uint32_t p, int64_t c)
{
	struct ls_partition *log = part_log(g, p);
	if (!log)
		return c < 0 ? 0 : c;
	struct ls_partition_info info;
	ls_partition_get_info(log, &info);
	return c < info.start_offset ? info.start_offset : c;
}

/* ---- assignment --------------------------------------------------------- */

/*
 * Computes the target owner of every partition and moves what may move.
 * Quotas: floor(P/M) or ceil(P/M), the larger ones to the members holding
 * most (ties: join order), so nobody gives up a partition it could keep.
 * Each member keeps up to its quota of what it holds (partitions it is not
 * revoking first), the rest go to members under quota. A partition whose
 * owner changes moves now if nothing of it is in flight (invariant 2), else
 * it is marked revoking and moves at the owner's commit point, when this
 * runs again. Caller holds g->mu; newly assigned members go into w.
 */
static void rebalance(struct rep_group *g, struct wakeups *w)
{
	uint32_t np = g->nparts;
	size_t k = g->nmembers;
	if (k == 0 || np == 0)
		return;
	size_t *quota = calloc(k, sizeof(*quota)), *kept = calloc(k, sizeof(*kept));
	size_t *held = calloc(k, sizeof(*held)), *order = calloc(k, sizeof(*order));
	struct rep_member **target = calloc(np, sizeof(*target));
	if (!quota || !kept || !held || !order || !target) {
		tfs_error("groups: %s: out of memory in rebalance; assignment unchanged",
		          g->name);
		goto out;
	}
	for (uint32_t p = 0; p < np; p++)
		if (g->parts[p].owner)
			held[g->parts[p].owner->idx]++;
	for (size_t i = 0; i < k; i++) { /* insertion sort: held desc, join order */
		size_t j = i;
		while (j > 0 && held[order[j - 1]] < held[i]) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = i;
	}
	size_t base = np / k, extra = np % k;
	for (size_t i = 0; i < k; i++)
		quota[order[i]] = base + (i < extra ? 1 : 0);
	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t p = 0; p < np; p++) {
			struct gpart *gp = &g->parts[p];
			if (!gp->owner || target[p] || (pass == 0 && gp->revoking))
				continue;
			size_t i = gp->owner->idx;
			if (kept[i] < quota[i]) {
				target[p] = gp->owner;
				kept[i]++;
			}
		}
	}
	size_t next = 0;
	for (uint32_t p = 0; p < np; p++) {
		if (target[p])
			continue;
		for (size_t tries = 0; tries < k; tries++, next = (next + 1) % k) {
			if (kept[next] < quota[next]) {
				target[p] = g->members[next];
				kept[next]++;
				break;
			}
		}
	}
	for (uint32_t p = 0; p < np; p++) {
		struct gpart *gp = &g->parts[p];
		struct rep_member *o = gp->owner, *t = target[p];
		if (o == t) {
			gp->revoking = 0;
			continue;
		}
		if (o && (gp->pos != gp->base || (o->peek_valid && o->peek_p == p))) {
			gp->revoking = 1;
			continue;
		}
		gp->owner = t;
		gp->revoking = 0;
		if (t) {
			gp->pos = gp->base = resolve(g, p, gp->committed);
			wake_add(w, t);
		}
	}
out:
	free(quota);
	free(kept);
	free(held);
	free(order);
	free(target);
}

/* 1 if rebalance() may change something: a partition is revoking or has no
 * owner. Otherwise the assignment is already the target (every call that
 * changes membership or partitions rebalances). Caller holds g->mu. */
static int rebalance_due(const struct rep_group *g)
{
	for (uint32_t p = 0; p < g->nparts; p++)
		if (g->parts[p].revoking || (!g->parts[p].owner && g->nmembers))
			return 1;
	return 0;
}

/* ---- the coordinator ---------------------------------------------------- */

static int parse_dec(const char *s, size_t len, int64_t max, int64_t *out)
{
	int64_t v = 0;
	if (len == 0 || len > 19)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (s[i] - '0');
	}
	if (v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Splits "<tid>/<group>[/<p>]"; *part = -1 for a group key. */
static int gkey_parse(const void *key, uint32_t len, uint64_t *tid, char *group,
                      int64_t *part)
{
	char buf[GKEY_MAX];
	if (!key || len == 0 || len >= sizeof(buf) || memchr(key, 0, len))
		return -EINVAL;
	memcpy(buf, key, len);
	buf[len] = 0;
	char *s1 = strchr(buf, '/');
	if (!s1)
		return -EINVAL;
	int64_t v;
	if (parse_dec(buf, (size_t)(s1 - buf), INT64_MAX, &v) < 0)
		return -EINVAL;
	*tid = (uint64_t)v;
	char *name = s1 + 1, *s2 = strchr(name, '/');
	*part = -1;
	if (s2) {
		*s2 = 0;
		if (parse_dec(s2 + 1, strlen(s2 + 1), UINT32_MAX - 1, part) < 0)
			return -EINVAL;
	}
	if (!rep_name_valid(name))
		return -EINVAL;
	strcpy(group, name);
	return 0;
}

/* Applies one record of DATA/__groups/ during replay. Groups of topics that
 * are gone are kept with topic == NULL until replay ends. */
static int replay_one(struct rep_groups *c, const struct ls_record *rec)
{
	uint64_t tid;
	int64_t part;
	char name[REP_NAME_MAX + 1];
	if (gkey_parse(rec->key, rec->key_len, &tid, name, &part) < 0) {
		tfs_warn("%s/" GROUPS_DIR ": offset %" PRId64 ": unreadable key, skipped",
		         rep_data_dir(c->rep), rec->offset);
		return 0;
	}
	struct gtopic *gt = gtopic_find(c, tid, part < 0 && rec->value);
	ssize_t i = gtopic_index(gt, name);
	if (part < 0) {
		if (!rec->value) { /* deleted */
			if (i >= 0) {
				struct rep_group *g = gt->groups[i];
				gtopic_remove(gt, (size_t)i);
				group_destroy(g);
			}
			return 0;
		}
		if (!gt)
			return -ENOMEM;
		if (i >= 0)
			return 0;
		struct rep_topic *t = rep_topic_get_id(c->rep, tid);
		struct rep_group *g = group_new(c, t, tid, name);
		rep_topic_put(t);
		if (!g)
			return -ENOMEM;
		if (gtopic_add(gt, g) < 0) {
			group_destroy(g);
			return -ENOMEM;
		}
		return 0;
	}
	if (i < 0)
		return 0; /* offsets of a group deleted since */
	struct rep_group *g = gt->groups[i];
	int64_t off = -1;
	if (rec->value && parse_dec(rec->value, rec->value_len, INT64_MAX, &off) < 0) {
		tfs_warn("%s/" GROUPS_DIR ": offset %" PRId64 ": unreadable value, skipped",
		         rep_data_dir(c->rep), rec->offset);
		return 0;
	}
	if (group_ensure_parts(g, (uint32_t)part + 1) < 0)
		return -ENOMEM;
	g->parts[part].committed = off;
	return 0;
}

static int replay(struct rep_groups *c)
{
	struct ls_reader *rd;
	struct ls_record rec;
	int rc = ls_reader_open(c->log, &rd);
	if (rc < 0)
		return rc;
	int64_t off = 0;
	while ((rc = ls_reader_next(rd, off, &rec)) == 1) {
		off = rec.offset + 1;
		if ((rc = replay_one(c, &rec)) < 0)
			break;
	}
	ls_reader_close(rd);
	if (rc < 0)
		tfs_error("%s/" GROUPS_DIR ": replay failed near offset %" PRId64 ": %s",
		          rep_data_dir(c->rep), off, tfs_strerror(rc));
	return rc;
}

/* After replay: tombstones for groups of topics that are gone, partition
 * arrays fitted to the live topics. */
static int replay_finish(struct rep_groups *c)
{
	struct gbatch b = {0};
	int rc = 0;
	for (size_t i = 0; i < c->ntopics && rc == 0; i++) {
		struct gtopic *gt = &c->topics[i];
		for (size_t j = 0; j < gt->n && rc == 0; j++) {
			struct rep_group *g = gt->groups[j];
			if (g->topic)
				continue;
			rc = gbatch_add(&b, g->topic_id, g->name, -1, NULL);
			for (uint32_t p = 0; p < g->nparts && rc == 0; p++)
				rc = gbatch_add(&b, g->topic_id, g->name, p, NULL);
		}
	}
	if (rc == 0)
		rc = glog_append(c, &b);
	gbatch_free(&b);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < c->ntopics;) {
		struct gtopic *gt = &c->topics[i];
		for (size_t j = 0; j < gt->n;) {
			struct rep_group *g = gt->groups[j];
			if (!g->topic) {
				tfs_info("groups: dropped group %s of deleted topic %" PRIu64, g->name,
				         g->topic_id);
				gtopic_remove(gt, j);
				group_destroy(g);
				continue;
			}
			uint32_t n = rep_topic_partition_count(g->topic);
			if (g->nparts > n)
				g->nparts = n; /* offsets of partitions that do not exist */
			if ((rc = group_ensure_parts(g, n)) < 0)
				return rc;
			j++;
		}
		if (gt->n == 0)
			gtopic_drop(c, gt);
		else
			i++;
	}
	return 0;
}

/* Frees a group and any member still joined, whatever its references. */
static void group_force_destroy(struct rep_group *g)
{
	for (size_t i = 0; i < g->nmembers; i++) {
		struct rep_member *m = g->members[i];
		for (uint32_t p = 0; p < m->nreaders; p++)
			mreader_close(&m->readers[p]);
		free(m->readers);
		free(m->cand);
		free(m->cand_pos);
		pthread_mutex_destroy(&m->mu);
		free(m);
	}
	g->nmembers = 0;
	group_destroy(g);
}

static void flush_commits_final(struct rep_groups *c);

static void coord_free(struct rep_groups *c)
{
	flush_commits_final(c);
	grm_close(c->remote); /* its threads call into the groups below */
	c->remote = NULL;
	for (size_t i = 0; i < c->ntopics; i++) {
		for (size_t j = 0; j < c->topics[i].n; j++)
			group_force_destroy(c->topics[i].groups[j]);
		free(c->topics[i].groups);
	}
	free(c->topics);
	if (c->log) {
		int rc = ls_partition_close(c->log);
		if (rc < 0)
			tfs_error("%s/" GROUPS_DIR ": close: %s", rep_data_dir(c->rep),
			          tfs_strerror(rc));
	}
	pthread_mutex_destroy(&c->mu);
	pthread_mutex_destroy(&c->log_mu);
	free(c);
}

int rep_groups_open(struct rep *r, enum rep_group_start start)
{
	char dir[PATH_MAX];
	int rc;
	if (snprintf(dir, sizeof(dir), "%s/" GROUPS_DIR, rep_data_dir(r)) >= (int)sizeof(dir))
		return -ENAMETOOLONG;
	struct rep_groups *open_already = coord_enter(r);
	if (open_already) {
		coord_leave();
		return -EBUSY;
	}
	struct rep_groups *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->rep = r;
	c->start = start;
	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->log_mu, NULL);
	atomic_init(&c->dirty, false);
	struct cluster *cl = grm_cluster_of(r);
	if (cl) {
		/* The metadata quorum holds groups and offsets: no DATA/__groups. */
		c->cluster = 1;
		if ((rc = grm_open(c, r, cl, &c->remote)) < 0) {
			tfs_error("groups: cannot start the cluster groups: %s", tfs_strerror(rc));
			goto err;
		}
		goto publish;
	}
	struct ls_config cfg;
	ls_config_default(&cfg);
	cfg.cleanup = LS_CLEANUP_COMPACT;
	cfg.compression = LS_CODEC_NONE;
	cfg.segment_bytes = 1u << 20; /* closed segments are what compaction rewrites */
	rc = ls_partition_open(dir, &cfg, &c->log);
	if (rc < 0) {
		tfs_error("%s: cannot open the group offsets log: %s", dir, tfs_strerror(rc));
		c->log = NULL;
		goto err;
	}
	struct ls_partition_info info;
	ls_partition_get_info(c->log, &info);
	ls_partition_set_hw(c->log, info.end_offset); /* one node: all of it is ours */
	if ((rc = replay(c)) < 0 || (rc = replay_finish(c)) < 0)
		goto err;
publish:
	pthread_rwlock_wrlock(&registry_lock);
	if (rep_groups_state(r)) {
		pthread_rwlock_unlock(&registry_lock);
		rc = -EBUSY;
		goto err;
	}
	rep_set_groups_state(r, c);
	pthread_rwlock_unlock(&registry_lock);
	if (c->cluster) {
		grm_meta_changed(c->remote); /* changes before it was published */
		tfs_info("groups: from the cluster metadata (start: %s)",
		         start == REP_GROUP_LATEST ? "latest" : "earliest");
		return 0;
	}
	size_t n = 0;
	for (size_t i = 0; i < c->ntopics; i++)
		n += c->topics[i].n;
	tfs_info("groups: %zu group(s) loaded from %s (start: %s)", n, dir,
	         start == REP_GROUP_LATEST ? "latest" : "earliest");
	return 0;
err:
	coord_free(c);
	return rc;
}

void rep_groups_close(struct rep *r)
{
	pthread_rwlock_wrlock(&registry_lock);
	struct rep_groups *c = rep_groups_state(r);
	rep_set_groups_state(r, NULL);
	pthread_rwlock_unlock(&registry_lock);
	if (c)
		coord_free(c);
}

void rep_groups_sync(struct rep *r)
{
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return;
	if (c->log && atomic_exchange(&c->dirty, false)) {
		int rc = ls_partition_sync(c->log);
		if (rc < 0)
			tfs_error("%s/" GROUPS_DIR ": background fsync failed: %s",
			          rep_data_dir(r), tfs_strerror(rc));
	}
	coord_leave();
}

void rep_groups_compact(struct rep *r)
{
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return;
	if (!c->log) {
		coord_leave();
		return;
	}
	int rc = ls_partition_compact(c->log);
	if (rc > 0)
		tfs_info("%s/" GROUPS_DIR ": compaction removed %d record(s)", rep_data_dir(r), rc);
	else if (rc < 0 && rc != -ENOTSUP)
		tfs_warn("%s/" GROUPS_DIR ": compaction: %s", rep_data_dir(r), tfs_strerror(rc));
	coord_leave();
}

/* References to every group of topic tid (caller puts each), or NULL with
 * *n = 0. */
static struct rep_group **groups_of(struct rep_groups *c, uint64_t tid, size_t *n)
{
	struct rep_group **out = NULL;
	*n = 0;
	pthread_mutex_lock(&c->mu);
	struct gtopic *gt = gtopic_find(c, tid, 0);
	if (gt && gt->n && (out = malloc(gt->n * sizeof(*out)))) {
		for (size_t i = 0; i < gt->n; i++) {
			out[i] = gt->groups[i];
			atomic_fetch_add(&out[i]->refs, 1);
		}
		*n = gt->n;
	}
	pthread_mutex_unlock(&c->mu);
	return out;
}

void rep_groups_partition_grew(struct rep *r, uint64_t topic_id, uint32_t p)
{
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return;
	size_t n;
	struct rep_group **gs = groups_of(c, topic_id, &n);
	struct wakeups w = {0};
	for (size_t i = 0; i < n; i++) {
		struct rep_group *g = gs[i];
		pthread_mutex_lock(&g->mu);
		if (p >= g->nparts && group_sync_parts(g) == 0)
			rebalance(g, &w); /* grew before rep_groups_topic_changed ran */
		if (p < g->nparts && g->parts[p].owner && !g->parts[p].revoking)
			wake_add(&w, g->parts[p].owner);
		pthread_mutex_unlock(&g->mu);
	}
	coord_leave();
	wake_run(&w);
	for (size_t i = 0; i < n; i++)
		rep_group_put(gs[i]);
	free(gs);
}

void rep_groups_topic_changed(struct rep *r, struct rep_topic *t)
{
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return;
	size_t n;
	struct rep_group **gs = groups_of(c, rep_topic_id(t), &n);
	struct wakeups w = {0};
	for (size_t i = 0; i < n; i++) {
		struct rep_group *g = gs[i];
		pthread_mutex_lock(&g->mu);
		if (group_sync_parts(g) < 0)
			tfs_error("groups: %s/%s: out of memory growing partitions", rep_topic_name(t),
			          g->name);
		rebalance(g, &w);
		pthread_mutex_unlock(&g->mu);
	}
	coord_leave();
	wake_run(&w);
	for (size_t i = 0; i < n; i++)
		rep_group_put(gs[i]);
	free(gs);
}

void rep_groups_topic_deleted(struct rep *r, uint64_t topic_id)
{
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return;
	struct gbatch b = {0};
	int rc = 0;
	pthread_mutex_lock(&c->mu);
	struct gtopic *gt = gtopic_find(c, topic_id, 0);
	if (!gt) {
		pthread_mutex_unlock(&c->mu);
		coord_leave();
		return;
	}
	size_t n = gt->n;
	struct rep_group **gs = gt->groups;
	struct wakeups w = {0};
	gt->groups = NULL;
	gtopic_drop(c, gt);
	for (size_t i = 0; i < n; i++) {
		struct rep_group *g = gs[i];
		pthread_mutex_lock(&g->mu);
		g->deleted = 1;
		/* readers waiting for records (and poll) learn it now: ENOENT */
		for (size_t k = 0; k < g->nmembers; k++)
			wake_add(&w, g->members[k]);
		if (rc == 0)
			rc = gbatch_add(&b, topic_id, g->name, -1, NULL);
		for (uint32_t p = 0; p < g->nparts && rc == 0; p++)
			rc = gbatch_add(&b, topic_id, g->name, p, NULL);
		pthread_mutex_unlock(&g->mu);
	}
	if (rc == 0)
		rc = glog_append(c, &b);
	if (rc < 0) /* replay drops them anyway: their topic is gone */
		tfs_warn("groups: topic %" PRIu64 ": tombstones not written: %s", topic_id,
		         tfs_strerror(rc));
	pthread_mutex_unlock(&c->mu);
	coord_leave();
	gbatch_free(&b);
	wake_run(&w);
	for (size_t i = 0; i < n; i++)
		rep_group_put(gs[i]); /* the registry's references */
	free(gs);
}

void rep_groups_foreach_lag(struct rep *r,
                            void (*fn)(void *ctx, const char *topic, const char *group,
                                       uint32_t partition, int64_t committed, int64_t lag),
                            void *ctx)
{
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return;
	struct rep_group **gs = NULL;
	size_t n = 0;
	pthread_mutex_lock(&c->mu);
	for (size_t i = 0; i < c->ntopics; i++)
		n += c->topics[i].n;
	if (n && (gs = malloc(n * sizeof(*gs)))) {
		size_t k = 0;
		for (size_t i = 0; i < c->ntopics; i++)
			for (size_t j = 0; j < c->topics[i].n; j++) {
				gs[k] = c->topics[i].groups[j];
				atomic_fetch_add(&gs[k++]->refs, 1);
			}
	} else {
		n = 0;
	}
	pthread_mutex_unlock(&c->mu);
	coord_leave();
	for (size_t i = 0; i < n; i++) {
		struct rep_group *g = gs[i];
		uint32_t np = rep_topic_partition_count(g->topic);
		struct rep_group_offset *rows = malloc((np ? np : 1) * sizeof(*rows));
		size_t k = rows ? rep_group_offsets_local(g, rows, np) : 0;
		for (size_t j = 0; j < k; j++)
			fn(ctx, rep_topic_name(g->topic), g->name, rows[j].partition,
			   rows[j].committed, rows[j].lag);
		free(rows);
		rep_group_put(g);
	}
	free(gs);
}

/* ---- groups ------------------------------------------------------------- */

/* Finds or creates group name of t. Caller holds registry_lock; takes c->mu.
 * Returns a new reference in *out when out != NULL. */
static int group_lookup(struct rep_groups *c, struct rep_topic *t, const char *name,
                        int create, int excl, struct rep_group **out)
{
	if (!rep_name_valid(name))
		return -EINVAL;
	uint64_t tid = rep_topic_id(t);
	int rc = 0;
	struct gbatch b = {0};
	pthread_mutex_lock(&c->mu);
	struct gtopic *gt = gtopic_find(c, tid, 0);
	ssize_t i = gtopic_index(gt, name);
	struct rep_group *g = i >= 0 ? gt->groups[i] : NULL;
	if (g) {
		if (excl)
			rc = -EEXIST;
		goto found;
	}
	if (!create || rep_topic_deleted(t)) {
		rc = -ENOENT;
		goto out;
	}
	if (!(gt = gtopic_find(c, tid, 1)) || !(g = group_new(c, t, tid, name))) {
		rc = -ENOMEM;
		goto out_drop_empty;
	}
	if ((rc = group_sync_parts(g)) < 0)
		goto err_group;
	/* "latest": the end of every partition now is where the group starts;
	 * written with the creation so a restart does not move it. Partitions
	 * added later start at their beginning (all of it came after). */
	rc = gbatch_add(&b, tid, name, -1, "created");
	for (uint32_t p = 0; p < g->nparts && rc == 0 && c->start == REP_GROUP_LATEST; p++) {
		struct ls_partition *log = part_log(g, p);
		struct ls_partition_info info = {0};
		if (log)
			ls_partition_get_info(log, &info);
		g->parts[p].committed = info.high_watermark;
		rc = gbatch_add_offset(&b, tid, name, p, info.high_watermark);
	}
	if (rc < 0 || (rc = gtopic_add(gt, g)) < 0)
		goto err_group;
	if ((rc = glog_append(c, &b)) < 0) {
		gtopic_remove(gt, gt->n - 1);
		gt->next_id--; /* never handed out */
		goto err_group;
	}
	tfs_info("group %s/%s created (id %" PRIu32 ")", rep_topic_name(t), name, g->id);
found:
	if (rc == 0 && out) {
		atomic_fetch_add(&g->refs, 1);
		*out = g;
	}
	goto out;
err_group:
	group_destroy(g);
out_drop_empty:
	if (gt && gt->n == 0)
		gtopic_drop(c, gt);
out:
	pthread_mutex_unlock(&c->mu);
	gbatch_free(&b);
	return rc;
}

/* Cluster mode: GROUP_CREATE through the quorum (the quorum picks the
 * coordinator); with groups.start latest, a GROUP_COMMIT of this node's
 * high watermarks follows. Returns once this node's registry lists it.
 * Caller holds registry_lock (read). */
static int cluster_create(struct rep_groups *c, struct rep_topic *t, const char *name)
{
	struct meta_cmd cmd;
	struct meta_result res = {0};
	if (!rep_name_valid(name))
		return -EINVAL;
	meta_cmd_init(&cmd, META_CMD_GROUP_CREATE);
	cmd.topic_id = rep_topic_id(t);
	snprintf(cmd.name, sizeof(cmd.name), "%s", name);
	int rc = grm_propose(c->remote, &cmd, &res);
	if (rc < 0) {
		if (rc != -EEXIST)
			tfs_warn("group %s/%s: create refused: %s%s%s", rep_topic_name(t), name,
			         tfs_strerror(rc), res.err[0] ? ": " : "", res.err);
		return rc;
	}
	if (c->start == REP_GROUP_LATEST) {
		meta_cmd_init(&cmd, META_CMD_GROUP_COMMIT);
		cmd.topic_id = rep_topic_id(t);
		snprintf(cmd.name, sizeof(cmd.name), "%s", name);
		uint32_t np = rep_topic_partition_count(t);
		for (uint32_t p = 0; p < np && p < META_CMD_MAX_OFFSETS; p++) {
			struct rep_partition *rp = rep_topic_partition(t, p);
			struct ls_partition_info info = {0};
			if (rp)
				ls_partition_get_info(rep_partition_log(rp), &info);
			cmd.offsets[cmd.noffsets++] = (struct meta_offset){p, info.high_watermark};
		}
		if ((rc = grm_propose(c->remote, &cmd, &res)) < 0)
			tfs_warn("group %s/%s: start at latest not recorded (%s): it starts at "
			         "the earliest", rep_topic_name(t), name, tfs_strerror(rc));
	}
	grm_sync(c->remote);
	tfs_info("group %s/%s created", rep_topic_name(t), name);
	return 0;
}

/* Cluster mode: the registry's group, after catching up with the metadata
 * (and creating it first if asked). Caller holds registry_lock (read). */
static int cluster_lookup(struct rep_groups *c, struct rep_topic *t, const char *name,
                          int create, struct rep_group **out)
{
	if (!rep_name_valid(name))
		return -EINVAL;
	struct rep_group *g = rep_groups_find(c, rep_topic_id(t), name);
	if (!g) { /* made on another node a moment ago? catch up, reconcile */
		rep_sync(c->rep);
		grm_sync(c->remote);
		g = rep_groups_find(c, rep_topic_id(t), name);
	}
	if (!g && create) {
		int rc = cluster_create(c, t, name);
		if (rc < 0 && rc != -EEXIST)
			return rc;
		g = rep_groups_find(c, rep_topic_id(t), name);
	}
	if (!g)
		return -ENOENT;
	if (out)
		*out = g;
	else
		rep_group_put(g);
	return 0;
}

int rep_group_create(struct rep_topic *t, const char *name)
{
	struct rep_groups *c = coord_enter(rep_topic_rep(t));
	if (!c)
		return -ENOTCONN;
	int rc = c->cluster ? cluster_create(c, t, name) : group_lookup(c, t, name, 1, 1, NULL);
	coord_leave();
	return rc;
}

int rep_group_get(struct rep_topic *t, const char *name, int create, struct rep_group **out)
{
	struct rep_groups *c = coord_enter(rep_topic_rep(t));
	if (!c)
		return -ENOTCONN;
	int rc = c->cluster ? cluster_lookup(c, t, name, create, out)
	                    : group_lookup(c, t, name, create, 0, out);
	coord_leave();
	return rc;
}

struct rep_group *rep_group_get_id(struct rep_topic *t, uint32_t id)
{
	struct rep_groups *c = coord_enter(rep_topic_rep(t));
	if (!c)
		return NULL;
	struct rep_group *g = NULL;
	pthread_mutex_lock(&c->mu);
	struct gtopic *gt = gtopic_find(c, rep_topic_id(t), 0);
	for (size_t i = 0; gt && i < gt->n; i++) {
		if (gt->groups[i]->id == id) {
			g = gt->groups[i];
			atomic_fetch_add(&g->refs, 1);
			break;
		}
	}
	pthread_mutex_unlock(&c->mu);
	coord_leave();
	return g;
}

void rep_group_put(struct rep_group *g)
{
	if (g && atomic_fetch_sub(&g->refs, 1) == 1)
		group_destroy(g);
}

/* Cluster mode: -EBUSY if the coordinator has members, else GROUP_DELETE
 * through the quorum. Caller holds registry_lock (read). */
static int cluster_delete(struct rep_groups *c, struct rep_topic *t, const char *name)
{
	struct rep_group *g;
	int rc = cluster_lookup(c, t, name, 0, &g);
	if (rc < 0)
		return rc;
	uint32_t n = 0;
	int64_t deadline = grm_deadline(c->remote);
	while ((rc = rep_group_member_count(g, &n)) == -ESTALE) {
		rc = grm_group_members(c->remote, g, &n);
		if (!grm_retry(c->remote, rc, deadline))
			break; /* answered (or cannot be): not run here meanwhile */
	}
	if (rc == -ESTALE)
		rc = -EAGAIN;
	rep_group_put(g);
	if (rc < 0) {
		/* fs logs the refusal: details at debug level only (one line) */
		tfs_debug("rmdir %s/groups/%s: its coordinator cannot say whether it has members: "
		         "%s", rep_topic_name(t), name, tfs_strerror(rc));
		return rc;
	}
	if (n) {
		tfs_debug("rmdir %s/groups/%s: the group has %u member(s)", rep_topic_name(t), name,
		          n);
		return -EBUSY;
	}
	struct meta_cmd cmd;
	struct meta_result res = {0};
	meta_cmd_init(&cmd, META_CMD_GROUP_DELETE);
	cmd.topic_id = rep_topic_id(t);
	snprintf(cmd.name, sizeof(cmd.name), "%s", name);
	if ((rc = grm_propose(c->remote, &cmd, &res)) < 0) {
		tfs_debug("rmdir %s/groups/%s: refused: %s%s%s", rep_topic_name(t), name,
		          tfs_strerror(rc), res.err[0] ? ": " : "", res.err);
		return rc;
	}
	grm_sync(c->remote);
	tfs_info("group %s/%s deleted", rep_topic_name(t), name);
	return 0;
}

int rep_group_delete(struct rep_topic *t, const char *name)
{
	struct rep_groups *c = coord_enter(rep_topic_rep(t));
	if (!c)
		return -ENOTCONN;
	if (c->cluster) {
		int crc = cluster_delete(c, t, name);
		coord_leave();
		return crc;
	}
	uint64_t tid = rep_topic_id(t);
	struct gbatch b = {0};
	struct rep_group *g = NULL;
	int rc = 0;
	pthread_mutex_lock(&c->mu);
	struct gtopic *gt = gtopic_find(c, tid, 0);
	ssize_t i = gtopic_index(gt, name);
	if (i < 0) {
		rc = -ENOENT;
		goto out;
	}
	g = gt->groups[i];
	pthread_mutex_lock(&g->mu);
	if (g->nmembers) {
		tfs_debug("rmdir %s/groups/%s: the group has %zu member(s)", rep_topic_name(t), name,
		          g->nmembers);
		rc = -EBUSY;
		goto out_group;
	}
	rc = gbatch_add(&b, tid, name, -1, NULL);
	for (uint32_t p = 0; p < g->nparts && rc == 0; p++)
		rc = gbatch_add(&b, tid, name, p, NULL);
	if (rc == 0)
		rc = glog_append(c, &b);
	if (rc < 0)
		goto out_group;
	g->deleted = 1;
	gtopic_remove(gt, (size_t)i);
	if (gt->n == 0)
		gtopic_drop(c, gt);
	tfs_info("group %s/%s deleted", rep_topic_name(t), name);
out_group:
	pthread_mutex_unlock(&g->mu);
out:
	pthread_mutex_unlock(&c->mu);
	coord_leave();
	gbatch_free(&b);
	if (rc == 0)
		rep_group_put(g); /* the registry's reference */
	return rc;
}

void rep_group_foreach(struct rep_topic *t,
                       int (*fn)(void *ctx, uint32_t id, const char *name), void *ctx)
{
	struct rep_groups *c = coord_enter(rep_topic_rep(t));
	if (!c)
		return;
	size_t n = 0;
	if (c->cluster)
		grm_sync(c->remote);
	struct rep_group **gs = groups_of(c, rep_topic_id(t), &n);
	coord_leave();
	size_t i = 0;
	for (; i < n; i++)
		if (fn(ctx, gs[i]->id, gs[i]->name))
			break;
	for (i = 0; i < n; i++)
		rep_group_put(gs[i]);
	free(gs);
}

uint32_t rep_group_id(const struct rep_group *g) { return g->id; }
const char *rep_group_name(const struct rep_group *g) { return g->name; }

int rep_group_deleted(const struct rep_group *g) { return atomic_load(&g->deleted); }

size_t rep_group_offsets(struct rep_group *g, struct rep_group_offset *out, size_t max)
{
	struct rep_groups *c = g->c;
	pthread_mutex_lock(&g->mu);
	int here = g->real;
	pthread_mutex_unlock(&g->mu);
	if (c->cluster && !here) {
		/* the coordinator's own view; the metadata's if it cannot answer */
		struct rep_group_offset *rows;
		uint32_t n;
		int rc = grm_group_offsets(c->remote, g, &rows, &n);
		if (rc == 0) {
			size_t k = n < max ? n : max;
			memcpy(out, rows, k * sizeof(*out));
			free(rows);
			return k;
		}
		tfs_debug("group %s: offsets from the metadata: the coordinator: %s", g->name,
		          tfs_strerror(rc));
	}
	return rep_group_offsets_local(g, out, max);
}

size_t rep_group_offsets_local(struct rep_group *g, struct rep_group_offset *out, size_t max)
{
	size_t n = 0;
	pthread_mutex_lock(&g->mu);
	if (group_sync_parts(g) < 0)
		tfs_warn("groups: %s: out of memory growing partitions", g->name);
	for (uint32_t p = 0; p < g->nparts && n < max; p++) {
		struct ls_partition *log = part_log(g, p);
		struct ls_partition_info info = {0};
		if (log)
			ls_partition_get_info(log, &info);
		int64_t c = g->parts[p].committed;
		if (c < info.start_offset)
			c = info.start_offset;
		out[n++] = (struct rep_group_offset){
			.partition = p,
			.committed = c,
			.end = info.high_watermark,
			.lag = info.high_watermark > c ? info.high_watermark - c : 0,
		};
	}
	pthread_mutex_unlock(&g->mu);
	return n;
}

static int submitted_fit(struct rep_group *g);

void rep_group_resubmit(struct rep_group *g)
{
	pthread_mutex_lock(&g->mu);
	if (g->real && submitted_fit(g) == 0) {
		for (uint32_t p = 0; p < g->nsubmitted; p++)
			g->submitted[p] = -2; /* never equal to an offset */
		g->commit_dirty = 1;
	}
	pthread_mutex_unlock(&g->mu);
}

size_t rep_group_committed(struct rep_group *g, struct grm_pos *out, size_t max)
{
	size_t n = 0;
	pthread_mutex_lock(&g->mu);
	for (uint32_t p = 0; p < g->nparts && n < max; p++)
		if (g->real && g->parts[p].committed >= 0)
			out[n++] = (struct grm_pos){.partition = p, .offset = g->parts[p].committed};
	pthread_mutex_unlock(&g->mu);
	return n;
}

int rep_group_reset(struct rep_group *g, enum rep_reset how, int64_t partition, int64_t value)
{
	int rc = rep_group_reset_real(g, how, partition, value);
	if (rc != -ESTALE)
		return rc;
	/* run elsewhere, or nowhere yet (a group just made: its coordinator
	 * has not applied it), or its node just died: until it runs */
	int64_t deadline = grm_deadline(g->c->remote);
	for (;;) {
		rc = grm_group_reset(g->c->remote, g, how, partition, value);
		if (!grm_retry(g->c->remote, rc, deadline))
			break;
		if ((rc = rep_group_reset_real(g, how, partition, value)) != -ESTALE)
			break;
	}
	if (rc == -ESTALE)
		rc = -EAGAIN; /* nobody runs it within the request timeout */
	return rc;
}

int rep_group_reset_real(struct rep_group *g, enum rep_reset how, int64_t partition,
                         int64_t value)
{
	struct gbatch b = {0};
	struct wakeups w = {0};
	int64_t *to = NULL;
	int rc = 0;
	pthread_mutex_lock(&g->mu);
	if (g->deleted) {
		rc = -ENOENT;
		goto out;
	}
	if (!g->real) {
		rc = -ESTALE;
		goto out;
	}
	if ((rc = group_sync_parts(g)) < 0)
		goto out;
	if (partition >= (int64_t)g->nparts) {
		tfs_warn("%s/groups/%s/offsets: no partition %" PRId64 " (the topic has %u)",
		         rep_topic_name(g->topic), g->name, partition, g->nparts);
		rc = -EINVAL;
		goto out;
	}
	uint32_t lo = partition < 0 ? 0 : (uint32_t)partition;
	uint32_t hi = partition < 0 ? g->nparts : lo + 1;
	if (!(to = calloc(g->nparts ? g->nparts : 1, sizeof(*to)))) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t p = lo; p < hi && rc == 0; p++) {
		struct ls_partition *log = part_log(g, p);
		struct ls_partition_info info = {0};
		if (log)
			ls_partition_get_info(log, &info);
		int64_t o = 0;
		switch (how) {
		case REP_RESET_EARLIEST: o = info.start_offset; break;
		case REP_RESET_LATEST: o = info.high_watermark; break;
		case REP_RESET_OFFSET: o = value; break;
		case REP_RESET_TIME: o = log ? ls_partition_offset_for_time(log, value) : 0; break;
		}
		if (o > info.high_watermark)
			o = info.high_watermark;
		if (o < info.start_offset)
			o = info.start_offset;
		to[p] = o;
		rc = gbatch_add_offset(&b, g->topic_id, g->name, p, o);
	}
	if (rc < 0 || (rc = glog_append(g->c, &b)) < 0)
		goto out;
	for (uint32_t p = lo; p < hi; p++) {
		struct gpart *gp = &g->parts[p];
		gp->committed = to[p];
		if (gp->owner) {
			gp->pos = gp->base = to[p];
			if (gp->owner->peek_valid && gp->owner->peek_p == p)
				gp->owner->peek_valid = 0;
		}
	}
	g->commit_dirty = 1;
	for (size_t i = 0; i < g->nmembers; i++)
		wake_add(&w, g->members[i]);
	rebalance(g, &w); /* revoking partitions have nothing in flight now */
	tfs_info("group %s/%s: offsets reset", rep_topic_name(g->topic), g->name);
out:
	pthread_mutex_unlock(&g->mu);
	free(to);
	gbatch_free(&b);
	wake_run(&w);
	return rc;
}

/* ---- members ------------------------------------------------------------ */

int rep_member_join(struct rep_group *g, void (*waker)(void *ctx), void *ctx,
                    struct rep_member **out)
{
	if (!g->c->cluster)
		return rep_member_join_real(g, waker, ctx, out);
	/* a front: its stub joins where the group runs */
	struct rep_member *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->g = g;
	pthread_mutex_init(&m->mu, NULL);
	atomic_fetch_add(&g->refs, 1);
	int rc = grm_stub_open(g->c->remote, m, g, waker, ctx, &m->stub);
	if (rc < 0) {
		rep_member_free_front(m);
		return rc;
	}
	*out = m;
	return 0;
}

void rep_member_free_front(struct rep_member *m)
{
	struct rep_group *g = m->g;
	pthread_mutex_destroy(&m->mu);
	free(m);
	rep_group_put(g);
}

int rep_member_join_real(struct rep_group *g, void (*waker)(void *ctx), void *ctx,
                         struct rep_member **out)
{
	struct wakeups w = {0};
	struct rep_member *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->g = g;
	m->waker = waker;
	m->ctx = ctx;
	pthread_mutex_init(&m->mu, NULL);
	int rc = 0;
	pthread_mutex_lock(&g->mu);
	if (g->deleted) {
		rc = -ENOENT;
		goto err;
	}
	if (!g->real) {
		rc = -ESTALE;
		goto err;
	}
	if ((rc = group_sync_parts(g)) < 0)
		goto err;
	if (g->nmembers == g->cmembers) {
		size_t cap = g->cmembers ? 2 * g->cmembers : 4;
		struct rep_member **ms = realloc(g->members, cap * sizeof(*ms));
		if (!ms) {
			rc = -ENOMEM;
			goto err;
		}
		g->members = ms;
		g->cmembers = cap;
	}
	m->idx = g->nmembers;
	g->members[g->nmembers++] = m;
	atomic_fetch_add(&g->refs, 1);
	rebalance(g, &w);
	pthread_mutex_unlock(&g->mu);
	rep_watch(rep_topic_rep(g->topic), 1); /* appends must wake it */
	*out = m;
	wake_run(&w);
	return 0;
err:
	pthread_mutex_unlock(&g->mu);
	pthread_mutex_destroy(&m->mu);
	free(m);
	return rc;
}

/* Commits what m took: one batch, then committed = base = pos. On failure
 * the member is rewound (its records are delivered again). Caller holds
 * m->mu and g->mu. */
static int commit_locked(struct rep_member *m)
{
	struct rep_group *g = m->g;
	struct gbatch b = {0};
	int rc = 0;
	for (uint32_t p = 0; p < g->nparts && rc == 0; p++) {
		struct gpart *gp = &g->parts[p];
		if (gp->owner == m && gp->pos != gp->base)
			rc = gbatch_add_offset(&b, g->topic_id, g->name, p, gp->pos);
	}
	if (rc == 0 && b.n && !g->deleted)
		rc = glog_append(g->c, &b);
	gbatch_free(&b);
	for (uint32_t p = 0; p < g->nparts; p++) {
		struct gpart *gp = &g->parts[p];
		if (gp->owner != m || gp->pos == gp->base)
			continue;
		if (rc < 0) {
			gp->pos = gp->base;
		} else {
			gp->committed = gp->pos;
			gp->base = gp->pos;
			g->commit_dirty = 1;
		}
	}
	if (rc < 0)
		tfs_warn("group %s/%s: commit failed (%s): the records will be delivered again",
		         rep_topic_name(g->topic), g->name, tfs_strerror(rc));
	return rc;
}

void rep_member_leave(struct rep_member *m, int commit)
{
	struct rep_group *g = m->g;
	struct wakeups w = {0};
	if (m->stub) {
		grm_stub_close(m->stub, commit);
		rep_member_free_front(m);
		return;
	}
	pthread_mutex_lock(&m->mu);
	pthread_mutex_lock(&g->mu);
	m->peek_valid = 0;
	if (!atomic_load(&m->orphaned)) { /* an orphan is in no list and owns nothing */
		if (commit) /* on failure the records go back to the group */
			(void)commit_locked(m);
		for (uint32_t p = 0; p < g->nparts; p++) {
			if (g->parts[p].owner == m) {
				g->parts[p].owner = NULL;
				g->parts[p].revoking = 0;
			}
		}
		memmove(&g->members[m->idx], &g->members[m->idx + 1],
		        (g->nmembers - m->idx - 1) * sizeof(*g->members));
		g->nmembers--;
		for (size_t i = m->idx; i < g->nmembers; i++)
			g->members[i]->idx = i;
		rebalance(g, &w);
	}
	int kick = commit && g->c->cluster;
	while (m->wake_refs > 0) /* a waker of m is running in another thread */
		pthread_cond_wait(&g->cond, &g->mu);
	pthread_mutex_unlock(&g->mu);
	pthread_mutex_unlock(&m->mu);
	wake_run(&w);
	if (kick)
		grm_kick(g->c->remote); /* its commit reaches the quorum now */
	rep_watch(rep_topic_rep(g->topic), -1);
	for (uint32_t p = 0; p < m->nreaders; p++)
		mreader_close(&m->readers[p]);
	free(m->readers);
	free(m->cand);
	free(m->cand_pos);
	pthread_mutex_destroy(&m->mu);
	free(m);
	rep_group_put(g);
}

/* Sizes the member's per-partition arrays for n partitions. Holds m->mu. */
static int member_fit(struct rep_member *m, uint32_t n)
{
	if (n > m->nreaders) {
		struct mreader *rs = realloc(m->readers, n * sizeof(*rs));
		if (!rs)
			return -ENOMEM;
		memset(rs + m->nreaders, 0, (n - m->nreaders) * sizeof(*rs));
		m->readers = rs;
		m->nreaders = n;
	}
	if (n > m->ccand) {
		uint32_t *cand = realloc(m->cand, n * sizeof(*cand));
		if (cand)
			m->cand = cand;
		int64_t *pos = cand ? realloc(m->cand_pos, n * sizeof(*pos)) : NULL;
		if (!pos)
			return -ENOMEM;
		m->cand_pos = pos;
		m->ccand = n;
	}
	return 0;
}

/* Snapshots what m may read into m->cand/cand_pos (round robin from m->rr)
 * and closes readers of partitions m no longer owns. Caller holds m->mu;
 * takes g->mu. Returns the number of candidates or -errno. */
static int member_snapshot(struct rep_member *m)
{
	struct rep_group *g = m->g;
	uint32_t n = 0;
	pthread_mutex_lock(&g->mu);
	m->peek_valid = 0;
	uint32_t np = g->nparts;
	int rc = member_fit(m, np);
	for (uint32_t i = 0; i < np && rc == 0; i++) {
		uint32_t p = (m->rr + i) % np;
		const struct gpart *gp = &g->parts[p];
		if (gp->owner == m && !gp->revoking) {
			m->cand[n] = p;
			m->cand_pos[n++] = gp->pos;
		} else if (gp->owner != m && m->readers[p].rd) {
			mreader_close(&m->readers[p]);
		}
	}
	pthread_mutex_unlock(&g->mu);
	return rc < 0 ? rc : (int)n;
}

/* m's reader of partition p for a read starting at pos (a fresh one unless
 * pos is where the last read left it); *out NULL if p has no log here.
 * Caller holds m->mu. */
static int member_reader(struct rep_member *m, uint32_t p, int64_t pos, struct mreader **out)
{
	struct mreader *mr = &m->readers[p];
	*out = NULL;
	if (mr->rd && mr->at != pos)
		mreader_close(mr);
	if (!mr->rd) {
		struct ls_partition *log = part_log(m->g, p);
		if (!log)
			return 0;
		int rc = ls_reader_open(log, &mr->rd);
		if (rc < 0) {
			mr->rd = NULL;
			return rc;
		}
		mr->at = pos;
		mr->first = -1;
	}
	*out = mr;
	return 0;
}

/* The first record at or after mr->at (see struct mreader). */
static int mreader_first(struct mreader *mr, struct ls_record *rec)
{
	int rc = ls_reader_next(mr->rd, mr->first >= 0 ? mr->first : mr->at, rec);
	if (rc == 1)
		mr->first = rec->offset;
	else if (rc < 0)
		mr->at = -1; /* a fresh reader next time */
	return rc;
}

/* 1 if p is still m's, not revoking, and still at pos (no reset, no revoke
 * since the snapshot). Caller holds g->mu. */
static int still_at(const struct rep_member *m, uint32_t p, int64_t pos)
{
	const struct gpart *gp = &m->g->parts[p];
	return gp->owner == m && !gp->revoking && gp->pos == pos;
}

static void log_read_error(struct rep_member *m, uint32_t p, int64_t pos, int rc)
{
	tfs_error("group %s/%s: partition %u at offset %" PRId64 ": %s",
	          rep_topic_name(m->g->topic), m->g->name, p, pos, tfs_strerror(rc));
}

/* Peek with m->mu held (see rep_member_peek). */
static int peek_locked(struct rep_member *m, struct rep_delivery *d)
{
	struct rep_group *g = m->g;
	for (;;) {
		int n = member_snapshot(m);
		if (n < 0)
			return n;
		for (int i = 0; i < n; i++) {
			uint32_t p = m->cand[i];
			struct mreader *mr;
			struct ls_record rec;
			int rc = member_reader(m, p, m->cand_pos[i], &mr);
			if (rc < 0)
				return rc;
			if (!mr)
				continue;
			if ((rc = mreader_first(mr, &rec)) < 0) {
				log_read_error(m, p, m->cand_pos[i], rc);
				return rc;
			}
			if (rc == 0)
				continue;
			pthread_mutex_lock(&g->mu);
			int ours = still_at(m, p, m->cand_pos[i]);
			if (ours) {
				m->peek_valid = 1;
				m->peek_p = p;
				m->peek_off = rec.offset;
				m->peek_pos = m->cand_pos[i];
			}
			pthread_mutex_unlock(&g->mu);
			if (!ours)
				goto again; /* reset or revoked meanwhile */
			*d = (struct rep_delivery){
				.partition = p,
				.offset = rec.offset,
				.timestamp_ms = rec.timestamp_ms,
				.key = rec.key,
				.key_len = rec.key_len,
				.value = rec.value,
				.value_len = rec.value_len,
			};
			return 1;
		}
		return 0;
again:;
	}
}

int rep_member_peek(struct rep_member *m, struct rep_delivery *d)
{
	if (m->stub)
		return grm_stub_peek(m->stub, d);
	pthread_mutex_lock(&m->mu);
	int rc = peek_locked(m, d);
	pthread_mutex_unlock(&m->mu);
	return rc;
}

int rep_member_ready(struct rep_member *m)
{
	struct rep_delivery d;
	if (m->stub)
		return grm_stub_ready(m->stub);
	pthread_mutex_lock(&m->mu);
	int rc = peek_locked(m, &d);
	pthread_mutex_lock(&m->g->mu);
	m->peek_valid = 0;
	pthread_mutex_unlock(&m->g->mu);
	pthread_mutex_unlock(&m->mu);
	return rc;
}

/* ---- bulk delivery ------------------------------------------------------ */

static size_t rec_len(const struct ls_record *r)
{
	return (r->key ? (size_t)r->key_len + 1 : 0) + r->value_len + 1;
}

/* Reads whole records of one partition from mr->at on into buf (see
 * rep_member_take_bulk) without taking them: 1 and *res (records, bytes,
 * first and next offset; mr then expects the next read at next_offset), 0
 * if there is none, -EMSGSIZE with res->need, or -errno. Caller holds m->mu
 * (the reader is m's). Many records come from ls_reader_read_records,
 * which copies runs of them from the batch's view rendered ahead on the
 * helper threads, compressed or not (plain batches once went through a view
 * reader checked record by record: two reads and two decodes of every batch,
 * 35% slower). */
static int part_take(struct mreader *mr, char *buf, size_t size, uint32_t max, char sep,
                     struct rep_bulk *res)
{
	struct ls_record rec;
	int rc;
	int64_t o;
	if (max != 1) {
		/* ls_reader_read_records finds the first record from mr->at on
		 * itself (from the batch's rendered view when it can) */
		o = mr->first >= 0 ? mr->first : mr->at;
		goto records;
	}
	if ((rc = mreader_first(mr, &rec)) <= 0)
		return rc;
	size_t len = rec_len(&rec);
	if (len > size) {
		res->need = len;
		return -EMSGSIZE;
	}
	o = rec.offset;
	/* whole records, a batch per ls_reader_read_records call; every call
	 * after the first asks right after a record of the reader's cached
	 * batch: exact */
records:;
	size_t used = 0;
	uint32_t n = 0;
	res->first_offset = o;
	mr->first = -1;
	ssize_t got = 0;
	struct ls_records_res rr = {0};
	while (used < size && (!max || n < max)) {
		got = ls_reader_read_records(mr->rd, o, buf + used, size - used, sep,
		                             max ? max - n : 0, &rr);
		if (got <= 0)
			break; /* none, too large, or an error: said below if nothing
			          was taken, else at the next call */
		if (n == 0)
			res->first_offset = rr.first;
		used += (size_t)got;
		n += rr.count;
		o = rr.next;
	}
	if (n == 0) {
		if (got == -EMSGSIZE) /* the first record is longer than buf */
			res->need = rr.need;
		return (int)got;
	}
	res->next_offset = o;
	mr->at = res->next_offset;
	res->records = n;
	res->bytes = used;
	return 1;
}

int rep_member_take_bulk(struct rep_member *m, void *buf, size_t size, uint32_t max_records,
                         char sep, struct rep_bulk *out)
{
	struct rep_group *g = m->g;
	int rc;
	if (m->stub)
		return grm_stub_take_bulk(m->stub, buf, size, max_records, sep, out);
	*out = (struct rep_bulk){0};
	pthread_mutex_lock(&m->mu);
	for (;;) {
		int n = member_snapshot(m);
		if ((rc = n) < 0)
			goto out;
		for (int i = 0; i < n; i++) {
			uint32_t p = m->cand[i];
			int64_t pos = m->cand_pos[i];
			struct mreader *mr;
			if ((rc = member_reader(m, p, pos, &mr)) < 0)
				goto out;
			if (!mr)
				continue;
			rc = part_take(mr, buf, size, max_records, sep, out);
			if (rc == 0)
				continue;
			out->partition = p;
			if (rc < 0) {
				if (rc != -EMSGSIZE) {
					mr->at = -1; /* a fresh reader next time */
					log_read_error(m, p, pos, rc);
				}
				goto out;
			}
			pthread_mutex_lock(&g->mu);
			int ours = still_at(m, p, pos);
			if (ours) {
				g->parts[p].pos = out->next_offset;
				m->rr = (p + 1) % g->nparts;
			}
			pthread_mutex_unlock(&g->mu);
			if (ours)
				goto out; /* rc == 1 */
			*out = (struct rep_bulk){0};
			goto again; /* reset or revoked meanwhile: not taken */
		}
		rc = 0;
		goto out;
again:;
	}
out:
	pthread_mutex_unlock(&m->mu);
	return rc;
}

void rep_member_take(struct rep_member *m)
{
	struct rep_group *g = m->g;
	if (m->stub) {
		grm_stub_take(m->stub);
		return;
	}
	pthread_mutex_lock(&m->mu);
	pthread_mutex_lock(&g->mu);
	if (m->peek_valid) {
		struct gpart *gp = &g->parts[m->peek_p];
		if (gp->owner == m && gp->pos == m->peek_pos) {
			gp->pos = m->peek_off + 1;
			m->rr = (m->peek_p + 1) % g->nparts;
			/* its reader holds the batch of peek_off */
			m->readers[m->peek_p].at = gp->pos;
			m->readers[m->peek_p].first = -1;
		}
		m->peek_valid = 0;
	}
	pthread_mutex_unlock(&g->mu);
	pthread_mutex_unlock(&m->mu);
}

int rep_member_commit(struct rep_member *m)
{
	struct rep_group *g = m->g;
	struct wakeups w = {0};
	if (m->stub)
		return grm_stub_commit(m->stub);
	pthread_mutex_lock(&m->mu);
	pthread_mutex_lock(&g->mu);
	m->peek_valid = 0;
	int rc = commit_locked(m);
	if (rebalance_due(g))
		rebalance(g, &w); /* hands over what m was revoking */
	pthread_mutex_unlock(&g->mu);
	pthread_mutex_unlock(&m->mu);
	wake_run(&w);
	return rc;
}

int rep_member_save(struct rep_member *m)
{
	return m->stub ? grm_stub_save(m->stub) : rep_member_commit(m);
}

void rep_member_rewind(struct rep_member *m)
{
	struct rep_group *g = m->g;
	struct wakeups w = {0};
	if (m->stub) {
		grm_stub_rewind(m->stub);
		return;
	}
	pthread_mutex_lock(&m->mu);
	pthread_mutex_lock(&g->mu);
	m->peek_valid = 0;
	for (uint32_t p = 0; p < g->nparts; p++)
		if (g->parts[p].owner == m)
			g->parts[p].pos = g->parts[p].base;
	rebalance(g, &w);
	pthread_mutex_unlock(&g->mu);
	pthread_mutex_unlock(&m->mu);
	wake_run(&w);
}

size_t rep_member_assignment(struct rep_member *m, uint32_t *out, size_t max)
{
	struct rep_group *g = m->g;
	size_t n = 0;
	if (m->stub)
		return grm_stub_assignment(m->stub, out, max);
	pthread_mutex_lock(&g->mu);
	for (uint32_t p = 0; p < g->nparts && n < max; p++)
		if (g->parts[p].owner == m)
			out[n++] = p;
	pthread_mutex_unlock(&g->mu);
	return n;
}

/* ---- cluster mode: what group_remote.c calls ------------------------------ */

uint64_t rep_group_topic_id(const struct rep_group *g) { return g->topic_id; }

void rep_group_coord(struct rep_group *g, uint16_t *node, int *real, uint64_t *epoch)
{
	pthread_mutex_lock(&g->mu);
	*node = g->coord;
	*real = g->real && !g->deleted;
	*epoch = g->epoch;
	pthread_mutex_unlock(&g->mu);
}

int rep_group_member_count(struct rep_group *g, uint32_t *n)
{
	int rc = 0;
	pthread_mutex_lock(&g->mu);
	if (g->real)
		*n = (uint32_t)g->nmembers;
	else
		rc = -ESTALE;
	pthread_mutex_unlock(&g->mu);
	return rc;
}

int rep_member_orphaned(struct rep_member *m)
{
	return atomic_load(&m->orphaned);
}

void rep_member_resync(struct rep_member *m, const struct grm_pos *pos, uint32_t n)
{
	struct rep_group *g = m->g;
	struct wakeups w = {0};
	pthread_mutex_lock(&m->mu);
	pthread_mutex_lock(&g->mu);
	m->peek_valid = 0;
	uint32_t k = 0;
	for (uint32_t p = 0; p < g->nparts; p++) {
		struct gpart *gp = &g->parts[p];
		while (k < n && pos[k].partition < p)
			k++;
		if (gp->owner != m)
			continue;
		int64_t to = gp->base;
		if (k < n && pos[k].partition == p && pos[k].offset >= gp->base &&
		    pos[k].offset <= gp->pos)
			to = pos[k].offset;
		gp->pos = to; /* its reader starts afresh unless it is there */
	}
	if (rebalance_due(g))
		rebalance(g, &w);
	pthread_mutex_unlock(&g->mu);
	pthread_mutex_unlock(&m->mu);
	wake_run(&w);
}

struct rep_group *rep_groups_find(struct rep_groups *c, uint64_t topic_id, const char *name)
{
	struct rep_group *g = NULL;
	pthread_mutex_lock(&c->mu);
	struct gtopic *gt = gtopic_find(c, topic_id, 0);
	ssize_t i = gtopic_index(gt, name);
	if (i >= 0) {
		g = gt->groups[i];
		atomic_fetch_add(&g->refs, 1);
	}
	pthread_mutex_unlock(&c->mu);
	return g;
}

/* References to every listed group (caller puts each). */
static struct rep_group **all_groups(struct rep_groups *c, size_t *n)
{
	struct rep_group **gs = NULL;
	size_t k = 0, total = 0;
	pthread_mutex_lock(&c->mu);
	for (size_t i = 0; i < c->ntopics; i++)
		total += c->topics[i].n;
	if (total && (gs = malloc(total * sizeof(*gs)))) {
		for (size_t i = 0; i < c->ntopics; i++)
			for (size_t j = 0; j < c->topics[i].n; j++) {
				gs[k] = c->topics[i].groups[j];
				atomic_fetch_add(&gs[k++]->refs, 1);
			}
	}
	pthread_mutex_unlock(&c->mu);
	*n = k;
	return gs;
}

/* Every member leaves at once without commit (the group stops running
 * here, or starts again): they become orphans their owners free. Caller
 * holds g->mu. */
static void group_evict_locked(struct rep_group *g)
{
	for (size_t i = 0; i < g->nmembers; i++) {
		atomic_store(&g->members[i]->orphaned, 1);
		g->members[i]->peek_valid = 0;
	}
	g->nmembers = 0;
	for (uint32_t p = 0; p < g->nparts; p++)
		g->parts[p] = (struct gpart){.committed = g->parts[p].committed};
}

static int submitted_fit(struct rep_group *g)
{
	if (g->nsubmitted >= g->nparts)
		return 0;
	int64_t *s = realloc(g->submitted, g->nparts * sizeof(*s));
	if (!s)
		return -ENOMEM;
	for (uint32_t p = g->nsubmitted; p < g->nparts; p++)
		s[p] = -2; /* never equal to an offset */
	g->submitted = s;
	g->nsubmitted = g->nparts;
	return 0;
}

/* A GROUP_COMMIT_BY (fenced: the quorum applies it only while this node
 * coordinates g) of g's offsets that moved since the last submission (at
 * most META_CMD_MAX_OFFSETS; *more says some were left). NULL if none.
 * Caller holds g->mu. */
static struct meta_cmd *commit_cmd_locked(struct rep_group *g, int *more)
{
	*more = 0;
	if (submitted_fit(g) < 0)
		return *more = 1, NULL;
	struct meta_cmd *cmd = NULL;
	for (uint32_t p = 0; p < g->nparts; p++) {
		int64_t o = g->parts[p].committed;
		if (o < 0 || o == g->submitted[p])
			continue;
		if (!cmd) {
			if (!(cmd = malloc(sizeof(*cmd))))
				return *more = 1, NULL;
			meta_cmd_init(cmd, META_CMD_GROUP_COMMIT_BY);
			cmd->node = grm_self(g->c->remote);
			cmd->topic_id = g->topic_id;
			snprintf(cmd->name, sizeof(cmd->name), "%s", g->name);
		}
		if (cmd->noffsets == META_CMD_MAX_OFFSETS) {
			*more = 1;
			break;
		}
		cmd->offsets[cmd->noffsets++] = (struct meta_offset){p, o};
	}
	return cmd;
}

/* Submits cmd; on success its offsets count as submitted. */
static void commit_submit(struct rep_groups *c, struct rep_group *g, struct meta_cmd *cmd)
{
	if (!cmd)
		return;
	int rc = grm_submit(c->remote, cmd);
	pthread_mutex_lock(&g->mu);
	if (rc == 0 && submitted_fit(g) == 0) {
		for (uint32_t k = 0; k < cmd->noffsets; k++)
			if (cmd->offsets[k].partition < g->nsubmitted)
				g->submitted[cmd->offsets[k].partition] = cmd->offsets[k].offset;
	} else {
		g->commit_dirty = 1;
	}
	pthread_mutex_unlock(&g->mu);
	if (rc < 0)
		tfs_warn("group %s: committed offsets not submitted to the quorum (%s); trying "
		         "again", g->name, tfs_strerror(rc));
	free(cmd);
}

void rep_groups_flush_commits(struct rep_groups *c)
{
	size_t n;
	struct rep_group **gs = all_groups(c, &n);
	for (size_t i = 0; i < n; i++) {
		struct rep_group *g = gs[i];
		struct meta_cmd *cmd = NULL;
		int more = 0;
		pthread_mutex_lock(&g->mu);
		if (g->real && g->commit_dirty && !g->deleted) {
			cmd = commit_cmd_locked(g, &more);
			g->commit_dirty = more;
		}
		pthread_mutex_unlock(&g->mu);
		commit_submit(c, g, cmd);
		rep_group_put(g);
	}
	free(gs);
}

/* At shutdown (cluster): every group this node coordinates proposes its
 * committed offsets once more and waits for the quorum, so a clean unmount
 * keeps them all: those of the last TICK_MS, which the worker would have
 * submitted at its next tick, and those it submitted without waiting, which
 * closing the quorum's handle would cancel. */
static void flush_commits_final(struct rep_groups *c)
{
	if (!c->remote || rep_quorum_lost(c->rep))
		return;
	size_t n;
	int quorum_gone = 0;
	struct rep_group **gs = all_groups(c, &n);
	for (size_t i = 0; i < n; i++) {
		struct rep_group *g = gs[i];
		if (quorum_gone) {
			rep_group_put(g);
			continue;
		}
		pthread_mutex_lock(&g->mu);
		if (g->real && submitted_fit(g) == 0) {
			for (uint32_t p = 0; p < g->nsubmitted; p++)
				g->submitted[p] = -2; /* all of them, confirmed or not */
			g->commit_dirty = 1;
		}
		pthread_mutex_unlock(&g->mu);
		for (int more = 1; more;) {
			struct meta_cmd *cmd = NULL;
			more = 0;
			pthread_mutex_lock(&g->mu);
			if (g->real && g->commit_dirty && !g->deleted) {
				cmd = commit_cmd_locked(g, &more);
				g->commit_dirty = more;
			}
			pthread_mutex_unlock(&g->mu);
			if (!cmd)
				break;
			struct meta_result res;
			int rc = grm_propose(c->remote, cmd, &res);
			if (rc < 0)
				tfs_warn("group %s: committed offsets not saved at shutdown (%s); "
				         "members will get them again", g->name, tfs_strerror(rc));
			free(cmd);
			if (rc == -ENOTCONN) /* no quorum: the other groups would wait too */
				quorum_gone = 1;
			if (rc < 0)
				break;
		}
		rep_group_put(g);
	}
	free(gs);
}

/* The metadata's offset of p for m, -1 if none. */
static int64_t moffset(const struct grm_mgroup *m, uint32_t p)
{
	return p < m->noffsets ? m->offsets[p] : -1;
}

/* Applies one metadata group to g (see rep_groups_reconcile). */
static void group_update(struct rep_groups *c, struct rep_group *g, const struct grm_mgroup *m)
{
	struct wakeups w = {0};
	struct meta_cmd *final = NULL;
	int demoted = 0, more;
	uint16_t self = grm_self(c->remote);
	pthread_mutex_lock(&g->mu);
	if (group_sync_parts(g) < 0)
		tfs_error("group %s: out of memory growing partitions", g->name);
	int moved = g->coord != m->coordinator;
	g->coord = m->coordinator;
	int want = m->coordinator == self;
	if (want && !g->real) {
		group_evict_locked(g); /* members of an earlier run here, if any */
		for (uint32_t p = 0; p < g->nparts; p++)
			g->parts[p].committed = moffset(m, p);
		if (submitted_fit(g) == 0)
			for (uint32_t p = 0; p < g->nparts; p++)
				g->submitted[p] = moffset(m, p);
		g->real = 1;
		g->epoch++;
		moved = 1;
		tfs_info("group %s/%s: coordinated by this node", rep_topic_name(g->topic),
		         g->name);
	} else if (!want && g->real) {
		final = commit_cmd_locked(g, &more); /* what its members committed last */
		group_evict_locked(g);
		for (uint32_t p = 0; p < g->nparts; p++)
			g->parts[p].committed = moffset(m, p);
		g->real = 0;
		g->commit_dirty = 0;
		g->epoch++;
		demoted = moved = 1;
		tfs_info("group %s/%s: coordinated by node %u now", rep_topic_name(g->topic),
		         g->name, m->coordinator);
	} else if (!want) {
		for (uint32_t p = 0; p < g->nparts; p++)
			g->parts[p].committed = moffset(m, p);
	} else {
		/* Run here: memory wins, except where it has nothing yet (the
		 * creator's "latest" start arrives after the creation). */
		for (uint32_t p = 0; p < g->nparts; p++) {
			struct gpart *gp = &g->parts[p];
			if (gp->committed >= 0 || moffset(m, p) < 0)
				continue;
			gp->committed = moffset(m, p);
			if (gp->owner && gp->pos == gp->base) {
				gp->pos = gp->base = resolve(g, p, gp->committed);
				if (gp->owner->peek_valid && gp->owner->peek_p == p)
					gp->owner->peek_valid = 0;
				wake_add(&w, gp->owner);
			}
		}
	}
	pthread_mutex_unlock(&g->mu);
	wake_run(&w);
	if (final)
		commit_submit(c, g, final);
	if (demoted)
		grm_group_demoted(c->remote, g);
	if (moved)
		grm_group_moved(c->remote, g);
}

static const struct grm_mgroup *mg_find(const struct grm_mgroup *mg, size_t n, uint64_t tid,
                                        const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (mg[i].topic_id == tid && strcmp(mg[i].name, name) == 0)
			return &mg[i];
	return NULL;
}

int rep_groups_reconcile(struct rep_groups *c, const struct grm_mgroup *mg, size_t n)
{
	struct rep_group **gone = NULL;
	size_t ngone = 0;
	int retry = 0;
	pthread_mutex_lock(&c->mu);
	for (size_t i = 0; i < c->ntopics;) {
		struct gtopic *gt = &c->topics[i];
		for (size_t j = 0; j < gt->n;) {
			struct rep_group *g = gt->groups[j];
			if (mg_find(mg, n, g->topic_id, g->name)) {
				j++;
				continue;
			}
			struct rep_group **ng = realloc(gone, (ngone + 1) * sizeof(*ng));
			if (!ng) {
				retry = 1;
				j++;
				continue;
			}
			gone = ng;
			gone[ngone++] = g;
			gtopic_remove(gt, j);
		}
		if (gt->n == 0)
			gtopic_drop(c, gt);
		else
			i++;
	}
	for (size_t k = 0; k < n; k++) {
		struct gtopic *gt = gtopic_find(c, mg[k].topic_id, 0);
		if (gtopic_index(gt, mg[k].name) >= 0)
			continue;
		struct rep_topic *t = rep_topic_get_id(c->rep, mg[k].topic_id);
		if (!t) { /* local.c does not know the topic yet */
			retry = 1;
			continue;
		}
		struct rep_group *g = NULL;
		gt = gtopic_find(c, mg[k].topic_id, 1);
		if (gt)
			g = group_new(c, t, mg[k].topic_id, mg[k].name);
		rep_topic_put(t);
		if (!g || gtopic_add(gt, g) < 0) {
			if (g)
				group_destroy(g);
			if (gt && gt->n == 0)
				gtopic_drop(c, gt);
			retry = 1;
			continue;
		}
		tfs_debug("group %s listed (id %" PRIu32 ", coordinator %u)", mg[k].name, g->id,
		          mg[k].coordinator);
	}
	pthread_mutex_unlock(&c->mu);
	for (size_t i = 0; i < ngone; i++) {
		struct rep_group *g = gone[i];
		pthread_mutex_lock(&g->mu);
		g->deleted = 1;
		group_evict_locked(g);
		g->real = 0;
		g->epoch++;
		pthread_mutex_unlock(&g->mu);
		grm_group_demoted(c->remote, g);
		grm_group_moved(c->remote, g);
		rep_group_put(g); /* the registry's reference */
	}
	free(gone);
	for (size_t k = 0; k < n; k++) {
		struct rep_group *g = rep_groups_find(c, mg[k].topic_id, mg[k].name);
		if (!g)
			continue;
		group_update(c, g, &mg[k]);
		rep_group_put(g);
	}
	return retry;
}

/* ---- cluster mode: the core's hooks (cluster.h) ------------------------------ */

int rep_groups_on_frame(struct rep *r, const struct tr_frame *f)
{
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return 0; /* not open (yet, or any more): the requester times out */
	int rc = c->remote ? grm_on_frame(c->remote, f) : REP_EPROTO;
	coord_leave();
	return rc;
}

void rep_groups_meta_changed(struct rep *r, const struct meta_state *s)
{
	(void)s; /* the worker reads the state itself (cluster_read) */
	struct rep_groups *c = coord_enter(r);
	if (!c)
		return;
	if (c->remote)
		grm_meta_changed(c->remote);
	coord_leave();
}
