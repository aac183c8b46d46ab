/*
 * local.c - the single-node backend of replicator.h: this node is the quorum
 * of one, the leader and the only in-sync replica of every partition.
 *
 * On disk (under DATA/):
 *
 *   metadata            the metadata state machine, replaced atomically on
 *                       every change (temp, fsync, rename, fsync dir):
 *                         topicfs-metadata 1
 *                         next_topic_id <n>
 *                         next_producer_id <n>
 *                         topic <id> <name> <partitions> <next_pfile_id> <epoch>
 *                         cfg <topic id> <key index> <int value>     (overrides only)
 *                         pfile <topic id> <file id> <hex name> <mode> <uid> <gid>
 *   topics/<name>/<p>/  partition data (logstore)
 *   trash/<name>.<id>/  a deleted topic's data until its last reference goes
 *   reserve             RESERVE_BYTES of allocated space (single node): on a
 *                       full disk, a metadata save that fails with ENOSPC
 *                       removes it and tries again, so rmdir of a topic or a
 *                       lower retention, the ways to free space, still work;
 *                       housekeeping makes it again once there is room
 *   lock                flock()ed while a daemon runs on DATA; holds
 *                       "running <pid>" or, once it shuts down, "stopping
 *                       <pid>": a daemon started right after an unmount
 *                       waits for a stopping one instead of failing
 *
 * Invariants:
 *  1. Every change to topics, configs or producer files is in `metadata`
 *     before the call that made it returns 0; a failed save undoes the change
 *     in memory.
 *  2. high watermark == log end after every append (the in-sync set is this
 *     node alone), and it never moves backwards.
 *  3. The topic list holds one reference to each live topic; rep_topic_get()
 *     adds one. The last rep_topic_put() of a deleted topic closes its
 *     partitions and removes its data from trash/.
 *
 * Threads: the caller's (FUSE) threads; `housekeeping` (periodic fsync,
 * retention, compaction); `notifier` (partition_grew callbacks, coalesced per
 * partition so a burst of appends costs one notification).
 */
#include "replicator.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "../logstore/fsutil.h"
#include "../logstore/log.h"
#include "cluster.h"
#include "groups.h"
#include "internal.h"

struct rep_partition {
	struct rep_topic *topic;
	uint32_t index;
	struct ls_partition *log;
	struct rep_counters counters;
	pthread_mutex_t hw_lock;
	int64_t hw;
	atomic_bool dirty;          /* appended since the last background sync */
	atomic_bool notify_pending; /* queued for the notifier */
	/* cluster mode: the replica (replica.c) and the assignment it was last
	 * told (loop thread); inflight counts FUSE calls into it, gone stops new
	 * ones once the topic is deleted (the replica is removed when the last
	 * call has left: rep_cluster_tick). */
	struct replica *repl;
	struct meta_partition mp;
	atomic_int inflight;
	atomic_bool gone;
};

struct pfile {
	uint32_t id;
	char *name;
	struct rep_pfile_attr attr;
};

struct rep_topic {
	struct rep *rep;
	uint64_t id;
	char name[REP_NAME_MAX + 1];
	atomic_int refs;
	atomic_int deleted;
	pthread_mutex_t lock;        /* guards everything below */
	struct topic_config overrides;
	uint32_t nparts;
	struct rep_partition **parts;
	int32_t leader_epoch;
	struct pfile *pfiles;
	size_t npfiles;
	uint32_t next_pfile_id;
	uint32_t load_parts;         /* partition count read from metadata */
	char trash_dir[PATH_MAX];    /* set when deleted */
	struct rep_topic *grave_next; /* cluster: deleted, replicas not yet removed */
};

struct notify_item {
	uint64_t topic_id;
	uint32_t partition;
};

struct rep {
	struct rep_options opts;
	char data_dir[PATH_MAX];
	char listen[80];
	int lock_fd;
	int dir_fd;                   /* DATA/, for atomic replacement of metadata */
	int drained;                  /* rep_stopping ran its drain */

	pthread_rwlock_t topics_lock; /* guards topics, ntopics */
	struct rep_topic **topics;
	size_t ntopics;
	pthread_mutex_t meta_lock;    /* serialises metadata changes and saves */
	uint64_t next_topic_id;
	atomic_llong next_producer_id;
	atomic_llong producer_id_limit; /* ids below this are reserved in metadata */

	struct rep_listener listener;
	atomic_int watchers;          /* open readers and consumers (rep_watch) */
	pthread_mutex_t bg_lock;
	pthread_cond_t bg_cond;
	int stopping;
	int started;
	pthread_t housekeeping, notifier;
	struct notify_item *queue;
	size_t nqueue, cqueue;

	struct rep_groups *groups;    /* group coordinator (groups.c), NULL until opened */

	struct cluster *cluster;      /* cluster mode (cluster.h), else NULL */
	struct rep_topic *graveyard;  /* loop thread: deleted topics with replicas */
	bool orphans_checked;         /* loop thread: stray ctopics/ dirs removed */
};

/* Cluster mode (the end of this file): the same calls through the quorum. */
static int cl_topic_create(struct rep *r, const char *name);
static int cl_topic_delete(struct rep *r, const char *name);
static int cl_topic_set_config(struct rep_topic *t, const struct topic_config *changes,
                               uint32_t cleared, char *err, size_t errlen);
static int cl_pfile_create(struct rep_topic *t, const char *name,
                           const struct rep_pfile_attr *attr, uint32_t *id);
static int cl_pfile_unlink(struct rep_topic *t, const char *name);
static int cl_pfile_rename(struct rep_topic *t, const char *from, const char *to);
static int64_t cl_new_producer_id(struct rep *r);
static unsigned cl_nodes_alive(struct rep *r);

/* ---- accessors for groups.c (internal.h) -------------------------------- */

const char *rep_data_dir(const struct rep *r) { return r->data_dir; }
struct rep *rep_topic_rep(struct rep_topic *t) { return t->rep; }
struct rep_groups *rep_groups_state(struct rep *r) { return r->groups; }
void rep_set_groups_state(struct rep *r, struct rep_groups *g) { r->groups = g; }

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* snprintf for paths: -ENAMETOOLONG instead of a silently cut path. */
static int __attribute__((format(printf, 3, 4))) pathf(char *buf, size_t size,
                                                        const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* ---- names ------------------------------------------------------------- */

static int pfile_name_valid(const char *name)
{
	size_t n = strlen(name);
	return n >= 1 && n <= REP_FILE_NAME_MAX && !strchr(name, '/');
}

/* ---- metadata file ------------------------------------------------------ */

static void hex_encode(const char *s, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (; *s; s++) {
		*out++ = hex[(unsigned char)*s >> 4];
		*out++ = hex[(unsigned char)*s & 15];
	}
	*out = 0;
}

static int hex_decode(const char *s, char *out, size_t size)
{
	size_t n = strlen(s);
	if (n % 2 || n / 2 + 1 > size)
		return -EINVAL;
	for (size_t i = 0; i < n; i += 2) {
		unsigned v;
		if (sscanf(s + i, "%2x", &v) != 1)
			return -EINVAL;
		*out++ = (char)v;
	}
	*out = 0;
	return 0;
}

static int64_t cfg_get(const struct topic_config *c, enum tc_key k)
{
	switch (k) {
	case TC_PARTITIONS: return c->partitions;
	case TC_REPLICATION: return c->replication;
	case TC_MIN_INSYNC: return c->min_insync;
	case TC_ACKS: return c->acks;
	case TC_RETENTION_MS: return c->retention_ms;
	case TC_RETENTION_BYTES: return c->retention_bytes;
	case TC_SEGMENT_BYTES: return (int64_t)c->segment_bytes;
	case TC_CLEANUP: return c->cleanup;
	case TC_COMPRESSION: return c->compression;
	case TC_COMPRESSION_LEVEL: return c->compression_level;
	case TC_KEY_SEPARATOR: return (unsigned char)c->key_separator;
	case TC_MAX_RECORD_BYTES: return c->max_record_bytes;
	case TC_NKEYS: break;
	}
	return 0;
}

static void cfg_set(struct topic_config *c, enum tc_key k, int64_t v)
{
	switch (k) {
	case TC_PARTITIONS: c->partitions = (uint32_t)v; break;
	case TC_REPLICATION: c->replication = (uint32_t)v; break;
	case TC_MIN_INSYNC: c->min_insync = (uint32_t)v; break;
	case TC_ACKS: c->acks = (enum rep_acks)v; break;
	case TC_RETENTION_MS: c->retention_ms = v; break;
	case TC_RETENTION_BYTES: c->retention_bytes = v; break;
	case TC_SEGMENT_BYTES: c->segment_bytes = (uint64_t)v; break;
	case TC_CLEANUP: c->cleanup = (enum ls_cleanup)v; break;
	case TC_COMPRESSION: c->compression = (enum ls_codec)v; break;
	case TC_COMPRESSION_LEVEL: c->compression_level = (int)v; break;
	case TC_KEY_SEPARATOR: c->key_separator = (char)v; break;
	case TC_MAX_RECORD_BYTES: c->max_record_bytes = (uint32_t)v; break;
	case TC_NKEYS: break;
	}
	c->set_mask |= 1u << k;
}

#define DRAIN_MS 5000 /* a stopping node hands its leaderships over for this long */
#define RESERVE_NAME "reserve"
#define RESERVE_BYTES (1 << 20)

/* Makes DATA/reserve if it is missing and there is room (single node). */
static void reserve_make(struct rep *r)
{
	if (r->cluster || faccessat(r->dir_fd, RESERVE_NAME, F_OK, 0) == 0)
		return;
	int fd = openat(r->dir_fd, RESERVE_NAME ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	                0600);
	if (fd < 0)
		return;
	int rc = posix_fallocate(fd, 0, RESERVE_BYTES);
	if (rc == 0 && fsync(fd) < 0)
		rc = errno;
	close(fd);
	if (rc == 0 && renameat(r->dir_fd, RESERVE_NAME ".tmp", r->dir_fd, RESERVE_NAME) == 0)
		return;
	unlinkat(r->dir_fd, RESERVE_NAME ".tmp", 0);
}

/* Serialises the whole state, with pid_limit as the producer ids reserved.
 * Caller holds meta_lock and topics_lock. */
static int meta_save_as(struct rep *r, int64_t pid_limit)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return -ENOMEM;
	fprintf(f, "topicfs-metadata 1\nnext_topic_id %" PRIu64 "\nnext_producer_id %lld\n",
	        r->next_topic_id, (long long)pid_limit);
	for (size_t i = 0; i < r->ntopics; i++) {
		struct rep_topic *t = r->topics[i];
		pthread_mutex_lock(&t->lock);
		fprintf(f, "topic %" PRIu64 " %s %u %u %d\n", t->id, t->name, t->nparts,
		        t->next_pfile_id, t->leader_epoch);
		for (int k = 0; k < TC_NKEYS; k++)
			if (t->overrides.set_mask & (1u << k))
				fprintf(f, "cfg %" PRIu64 " %d %lld\n", t->id, k,
				        (long long)cfg_get(&t->overrides, k));
		for (size_t j = 0; j < t->npfiles; j++) {
			char hex[2 * REP_FILE_NAME_MAX + 1];
			hex_encode(t->pfiles[j].name, hex);
			const struct rep_pfile_attr *a = &t->pfiles[j].attr;
			fprintf(f, "pfile %" PRIu64 " %u %s %o %u %u\n", t->id, t->pfiles[j].id, hex,
			        a->mode, a->uid, a->gid);
		}
		pthread_mutex_unlock(&t->lock);
	}
	if (fclose(f) != 0) {
		free(buf);
		return -ENOMEM;
	}
	int rc = ls_fsutil_write_atomic(r->dir_fd, "metadata", buf, len);
	if ((rc == -ENOSPC || rc == -EDQUOT) && unlinkat(r->dir_fd, RESERVE_NAME, 0) == 0) {
		tfs_warn("%s: disk full: the space reserve is given up to save the metadata",
		         r->data_dir);
		rc = ls_fsutil_write_atomic(r->dir_fd, "metadata", buf, len);
	}
	if (rc < 0)
		tfs_error("%s/metadata: could not save: %s", r->data_dir, tfs_strerror(rc));
	free(buf);
	return rc;
}

static int meta_save(struct rep *r)
{
	return meta_save_as(r, atomic_load(&r->producer_id_limit));
}

/* ---- partitions --------------------------------------------------------- */

static int partition_dir(const struct rep_topic *t, uint32_t p, char *out, size_t size)
{
	/* A cluster names topic directories by id: a node that was away while a
	 * name was deleted and made again must not mistake the old data. */
	if (t->rep->cluster)
		return pathf(out, size, "%s/ctopics/%" PRIu64 "/%u", t->rep->data_dir, t->id, p);
	return pathf(out, size, "%s/topics/%s/%u", t->rep->data_dir, t->name, p);
}

static int partition_open(struct rep_topic *t, uint32_t index, const struct ls_config *lc,
                          struct rep_partition **out)
{
	char dir[PATH_MAX];
	if (partition_dir(t, index, dir, sizeof(dir)) < 0)
		return -ENAMETOOLONG;
	struct rep_partition *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->topic = t;
	p->index = index;
	pthread_mutex_init(&p->hw_lock, NULL);
	int rc = ls_partition_open(dir, lc, &p->log);
	if (rc < 0) {
		tfs_error("%s/%u: cannot open partition: %s", t->name, index, tfs_strerror(rc));
		pthread_mutex_destroy(&p->hw_lock);
		free(p);
		return rc;
	}
	/* One node: everything appended is committed. In a cluster the
	 * replica sets the high watermark as it learns it. */
	if (!t->rep->cluster) {
		struct ls_partition_info info;
		ls_partition_get_info(p->log, &info);
		ls_partition_set_hw(p->log, info.end_offset);
		p->hw = info.end_offset;
	}
	*out = p;
	return 0;
}

static int partition_close(struct rep_partition *p)
{
	int rc = ls_partition_close(p->log);
	pthread_mutex_destroy(&p->hw_lock);
	free(p);
	return rc;
}

/* Opens partitions [t->nparts, n) and adds them. Caller holds t->lock. */
static int topic_grow(struct rep_topic *t, uint32_t n)
{
	if (n <= t->nparts)
		return 0;
	struct rep_partition **parts = realloc(t->parts, n * sizeof(*parts));
	if (!parts)
		return -ENOMEM;
	t->parts = parts;
	struct topic_config eff;
	struct ls_config lc;
	topic_config_effective(&t->rep->opts.defaults, &t->overrides, &eff);
	topic_config_to_ls(&eff, &lc);
	while (t->nparts < n) {
		int rc = partition_open(t, t->nparts, &lc, &t->parts[t->nparts]);
		if (rc < 0)
			return rc;
		t->nparts++;
	}
	return 0;
}

/* ---- topics ------------------------------------------------------------- */

static struct rep_topic *topic_new(struct rep *r, uint64_t id, const char *name)
{
	struct rep_topic *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->rep = r;
	t->id = id;
	snprintf(t->name, sizeof(t->name), "%s", name);
	atomic_init(&t->refs, 1);
	pthread_mutex_init(&t->lock, NULL);
	t->next_pfile_id = 1;
	return t;
}

/* Frees a topic whose partitions are closed or were never opened. */
static void topic_free(struct rep_topic *t)
{
	for (size_t i = 0; i < t->npfiles; i++)
		free(t->pfiles[i].name);
	free(t->pfiles);
	free(t->parts);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static int topic_close_partitions(struct rep_topic *t)
{
	int first = 0;
	for (uint32_t i = 0; i < t->nparts; i++) {
		int rc = partition_close(t->parts[i]);
		if (rc < 0 && !first)
			first = rc;
	}
	t->nparts = 0;
	return first;
}

int rep_quorum_lost(struct rep *r)
{
	return r->cluster && cluster_cut_off(r->cluster);
}

int rep_metadata_unknown(struct rep *r)
{
	return r->cluster && !cluster_caught_up(r->cluster) && !cluster_quorum_known(r->cluster);
}

void rep_sync(struct rep *r)
{
	if (r->cluster)
		cluster_sync(r->cluster);
}

static struct rep_topic *topic_get(struct rep *r, const char *name);

struct rep_topic *rep_topic_get(struct rep *r, const char *name)
{
	struct rep_topic *t = topic_get(r, name);
	if (!t && r->cluster) {
		cluster_sync(r->cluster);   /* made on another mount a moment ago? */
		t = topic_get(r, name);
	}
	return t;
}

static struct rep_topic *topic_get(struct rep *r, const char *name)
{
	struct rep_topic *found = NULL;
	pthread_rwlock_rdlock(&r->topics_lock);
	for (size_t i = 0; i < r->ntopics; i++) {
		if (strcmp(r->topics[i]->name, name) == 0) {
			found = r->topics[i];
			atomic_fetch_add(&found->refs, 1);
			break;
		}
	}
	pthread_rwlock_unlock(&r->topics_lock);
	return found;
}

struct rep_topic *rep_topic_get_id(struct rep *r, uint64_t id)
{
	struct rep_topic *found = NULL;
	pthread_rwlock_rdlock(&r->topics_lock);
	for (size_t i = 0; i < r->ntopics; i++) {
		if (r->topics[i]->id == id) {
			found = r->topics[i];
			atomic_fetch_add(&found->refs, 1);
			break;
		}
	}
	pthread_rwlock_unlock(&r->topics_lock);
	return found;
}

struct rep_topic *rep_topic_hold(struct rep_topic *t)
{
	atomic_fetch_add(&t->refs, 1);
	return t;
}

void rep_topic_put(struct rep_topic *t)
{
	if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	/* Last reference: only a deleted topic (or one being torn down at close)
	 * gets here. */
	int rc = topic_close_partitions(t);
	if (rc < 0)
		tfs_warn("%s: closing deleted topic: %s", t->name, tfs_strerror(rc));
	if (t->trash_dir[0]) {
		rc = ls_fsutil_rm_rf(t->trash_dir);
		if (rc < 0)
			tfs_warn("%s: removing %s: %s", t->name, t->trash_dir, tfs_strerror(rc));
	}
	topic_free(t);
}

void rep_topic_foreach(struct rep *r, int (*fn)(void *ctx, struct rep_topic *t), void *ctx)
{
	pthread_rwlock_rdlock(&r->topics_lock);
	for (size_t i = 0; i < r->ntopics; i++)
		if (fn(ctx, r->topics[i]))
			break;
	pthread_rwlock_unlock(&r->topics_lock);
}

uint64_t rep_topic_id(const struct rep_topic *t) { return t->id; }
const char *rep_topic_name(const struct rep_topic *t) { return t->name; }
int rep_topic_deleted(const struct rep_topic *t) { return atomic_load(&t->deleted); }

uint32_t rep_topic_partition_count(struct rep_topic *t)
{
	pthread_mutex_lock(&t->lock);
	uint32_t n = t->nparts;
	pthread_mutex_unlock(&t->lock);
	return n;
}

struct rep_partition *rep_topic_partition(struct rep_topic *t, uint32_t p)
{
	struct rep_partition *rp = NULL;
	pthread_mutex_lock(&t->lock);
	if (p < t->nparts)
		rp = t->parts[p];
	pthread_mutex_unlock(&t->lock);
	if (!rp && t->rep->cluster && p < META_MAX_PARTITIONS) {
		cluster_sync(t->rep->cluster);
		pthread_mutex_lock(&t->lock);
		if (p < t->nparts)
			rp = t->parts[p];
		pthread_mutex_unlock(&t->lock);
	}
	return rp;
}

void rep_topic_config(struct rep_topic *t, struct topic_config *eff)
{
	pthread_mutex_lock(&t->lock);
	topic_config_effective(&t->rep->opts.defaults, &t->overrides, eff);
	eff->partitions = t->nparts;
	pthread_mutex_unlock(&t->lock);
}

int rep_topic_create(struct rep *r, const char *name)
{
	if (!rep_name_valid(name))
		return -EINVAL;
	if (r->cluster)
		return cl_topic_create(r, name);
	int rc = 0;
	char dir[PATH_MAX];
	pthread_mutex_lock(&r->meta_lock);
	struct rep_topic *old = rep_topic_get(r, name);
	if (old) {
		rep_topic_put(old);
		rc = -EEXIST;
		goto out;
	}
	if (r->opts.defaults.replication > 1) {
		tfs_warn("mkdir %s: default replication %u exceeds the 1 node(s) up in the cluster",
		         name, r->opts.defaults.replication);
		rc = -EINVAL;
		goto out;
	}
	struct rep_topic *t = topic_new(r, r->next_topic_id, name);
	if (!t) {
		rc = -ENOMEM;
		goto out;
	}
	rc = pathf(dir, sizeof(dir), "%s/topics/%s", r->data_dir, name);
	if (rc < 0)
		goto err_free;
	/* A directory left by a crash between metadata save and removal. */
	if (access(dir, F_OK) == 0) {
		rc = ls_fsutil_rm_rf(dir);
		if (rc < 0)
			goto err_free;
	}
	if (mkdir(dir, 0755) < 0) {
		rc = -errno;
		goto err_free;
	}
	pthread_mutex_lock(&t->lock);
	/* The count is pinned as an override so a later change of the node
	 * default never reads as shrinking this topic. */
	uint32_t nparts = r->opts.defaults.partitions ? r->opts.defaults.partitions : 1;
	cfg_set(&t->overrides, TC_PARTITIONS, nparts);
	rc = topic_grow(t, nparts);
	pthread_mutex_unlock(&t->lock);
	if (rc < 0)
		goto err_close;

	pthread_rwlock_wrlock(&r->topics_lock);
	struct rep_topic **topics = realloc(r->topics, (r->ntopics + 1) * sizeof(*topics));
	if (!topics) {
		pthread_rwlock_unlock(&r->topics_lock);
		rc = -ENOMEM;
		goto err_close;
	}
	r->topics = topics;
	r->topics[r->ntopics++] = t;
	r->next_topic_id++;
	rc = meta_save(r);
	if (rc < 0) {
		r->ntopics--;
		r->next_topic_id--;
		pthread_rwlock_unlock(&r->topics_lock);
		goto err_close;
	}
	pthread_rwlock_unlock(&r->topics_lock);
	tfs_info("topic %s created (id %" PRIu64 ", %u partition(s))", name, t->id, nparts);
	goto out;

err_close:
	topic_close_partitions(t);
	if (ls_fsutil_rm_rf(dir) < 0)
		tfs_warn("mkdir %s: could not remove %s", name, dir);
err_free:
	topic_free(t);
out:
	pthread_mutex_unlock(&r->meta_lock);
	return rc;
}

int rep_topic_delete(struct rep *r, const char *name)
{
	int rc = 0;
	if (r->cluster)
		return cl_topic_delete(r, name);
	pthread_mutex_lock(&r->meta_lock);
	pthread_rwlock_wrlock(&r->topics_lock);
	size_t i;
	for (i = 0; i < r->ntopics; i++)
		if (strcmp(r->topics[i]->name, name) == 0)
			break;
	if (i == r->ntopics) {
		rc = -ENOENT;
		goto out;
	}
	struct rep_topic *t = r->topics[i];
	memmove(&r->topics[i], &r->topics[i + 1], (r->ntopics - i - 1) * sizeof(*r->topics));
	r->ntopics--;
	rc = meta_save(r);
	if (rc < 0) {
		memmove(&r->topics[i + 1], &r->topics[i], (r->ntopics - i) * sizeof(*r->topics));
		r->topics[i] = t;
		r->ntopics++;
		goto out;
	}
	atomic_store(&t->deleted, 1);
	char dir[PATH_MAX];
	if (pathf(dir, sizeof(dir), "%s/topics/%s", r->data_dir, name) < 0 ||
	    pathf(t->trash_dir, sizeof(t->trash_dir), "%s/trash/%s.%" PRIu64, r->data_dir,
	          name, t->id) < 0 ||
	    rename(dir, t->trash_dir) < 0) {
		/* Data stays under topics/; a later create of the name clears it. */
		tfs_warn("rmdir %s: could not move %s to trash: %s", name, dir, strerror(errno));
		t->trash_dir[0] = 0;
	}
	tfs_info("topic %s deleted", name);
	pthread_rwlock_unlock(&r->topics_lock);
	pthread_mutex_unlock(&r->meta_lock);
	rep_groups_topic_deleted(r, t->id); /* groups hook: no lock held */
	rep_topic_put(t); /* the list's reference */
	return 0;
out:
	pthread_rwlock_unlock(&r->topics_lock);
	pthread_mutex_unlock(&r->meta_lock);
	return rc;
}

static int topic_set_config(struct rep_topic *t, const struct topic_config *changes,
                            uint32_t cleared, int apply, char *err, size_t errlen);

int rep_topic_check_config(struct rep_topic *t, const struct topic_config *changes,
                           uint32_t cleared, char *err, size_t errlen)
{
	return topic_set_config(t, changes, cleared, 0, err, errlen);
}

int rep_topic_set_config(struct rep_topic *t, const struct topic_config *changes,
                         uint32_t cleared, char *err, size_t errlen)
{
	return topic_set_config(t, changes, cleared, 1, err, errlen);
}

/* Checks (and with apply != 0 makes) a change of settings. */
static int topic_set_config(struct rep_topic *t, const struct topic_config *changes,
                            uint32_t cleared, int apply, char *err, size_t errlen)
{
	struct rep *r = t->rep;
	int rc = 0, grew = 0;
	err[0] = 0;
	pthread_mutex_lock(&r->meta_lock);
	if (rep_topic_deleted(t)) {
		pthread_mutex_unlock(&r->meta_lock);
		return -ENOENT;
	}
	pthread_mutex_lock(&t->lock);
	struct topic_config before = t->overrides, neu = t->overrides, eff;
	for (int k = 0; k < TC_NKEYS; k++) {
		if (cleared & (1u << k))
			neu.set_mask &= ~(1u << k);
		else if (changes->set_mask & (1u << k))
			cfg_set(&neu, k, cfg_get(changes, k));
	}
	struct topic_config old_eff;
	topic_config_effective(&r->opts.defaults, &t->overrides, &old_eff);
	old_eff.partitions = t->nparts;
	topic_config_effective(&r->opts.defaults, &neu, &eff);
	/* A cluster checks replication against the live nodes, and only when it
	 * changes (as meta.c does): a node being down must not block other keys. */
	unsigned nodes = 1;
	if (r->cluster)
		nodes = eff.replication != old_eff.replication ? cl_nodes_alive(r) : 0;
	rc = topic_config_check(&old_eff, &eff, nodes, err, errlen);
	if (rc < 0 || !apply) {
		pthread_mutex_unlock(&t->lock);
		goto out;
	}
	if (r->cluster) {
		pthread_mutex_unlock(&t->lock);
		pthread_mutex_unlock(&r->meta_lock);
		return cl_topic_set_config(t, changes, cleared, err, errlen);
	}
	uint32_t old_parts = t->nparts;
	t->overrides = neu;
	rc = topic_grow(t, eff.partitions);
	if (rc < 0) {
		snprintf(err, errlen, "partitions: could not create partition %u: %s", t->nparts,
		         tfs_strerror(rc));
		t->overrides = before;
		pthread_mutex_unlock(&t->lock);
		goto out;
	}
	struct ls_config lc;
	topic_config_to_ls(&eff, &lc);
	for (uint32_t i = 0; i < t->nparts; i++)
		ls_partition_set_config(t->parts[i]->log, &lc);
	pthread_mutex_unlock(&t->lock);

	pthread_rwlock_rdlock(&r->topics_lock);
	rc = meta_save(r);
	pthread_rwlock_unlock(&r->topics_lock);
	if (rc < 0) {
		/* Partitions already created stay (they are empty and will be
		 * found again as the count grows); the overrides go back. */
		pthread_mutex_lock(&t->lock);
		t->overrides = before;
		pthread_mutex_unlock(&t->lock);
		snprintf(err, errlen, "could not save metadata: %s", tfs_strerror(rc));
		goto out;
	}
	if (eff.partitions != old_parts) {
		tfs_info("topic %s: partitions %u -> %u", t->name, old_parts, eff.partitions);
		grew = 1;
	}
out:
	pthread_mutex_unlock(&r->meta_lock);
	if (grew)
		rep_groups_topic_changed(r, t); /* groups hook: rebalance, no lock held */
	return rc;
}

/* ---- producer files ----------------------------------------------------- */

static ssize_t pfile_find(struct rep_topic *t, const char *name)
{
	for (size_t i = 0; i < t->npfiles; i++)
		if (strcmp(t->pfiles[i].name, name) == 0)
			return (ssize_t)i;
	return -1;
}

/* Saves metadata after a producer-file change; caller holds meta_lock only. */
static int pfile_save(struct rep_topic *t)
{
	pthread_rwlock_rdlock(&t->rep->topics_lock);
	int rc = meta_save(t->rep);
	pthread_rwlock_unlock(&t->rep->topics_lock);
	return rc;
}

int rep_pfile_create(struct rep_topic *t, const char *name, const struct rep_pfile_attr *attr,
                     uint32_t *id)
{
	if (!pfile_name_valid(name))
		return -EINVAL;
	struct rep *r = t->rep;
	int rc = 0;
	if (r->cluster)
		return cl_pfile_create(t, name, attr, id);
	pthread_mutex_lock(&r->meta_lock);
	pthread_mutex_lock(&t->lock);
	if (rep_topic_deleted(t)) {
		rc = -ENOENT;
		goto out_unlock;
	}
	if (pfile_find(t, name) >= 0) {
		rc = -EEXIST;
		goto out_unlock;
	}
	char *copy = strdup(name);
	struct pfile *pf = realloc(t->pfiles, (t->npfiles + 1) * sizeof(*pf));
	if (!copy || !pf) {
		free(copy);
		if (pf)
			t->pfiles = pf;
		rc = -ENOMEM;
		goto out_unlock;
	}
	t->pfiles = pf;
	t->pfiles[t->npfiles].id = t->next_pfile_id++;
	t->pfiles[t->npfiles].name = copy;
	t->pfiles[t->npfiles].attr = *attr;
	t->pfiles[t->npfiles].attr.mode &= 07777;
	*id = t->pfiles[t->npfiles].id;
	t->npfiles++;
	pthread_mutex_unlock(&t->lock);
	rc = pfile_save(t);
	if (rc < 0) {
		pthread_mutex_lock(&t->lock);
		ssize_t i = pfile_find(t, name);
		if (i >= 0) {
			free(t->pfiles[i].name);
			t->pfiles[i] = t->pfiles[--t->npfiles];
		}
		pthread_mutex_unlock(&t->lock);
	}
	pthread_mutex_unlock(&r->meta_lock);
	return rc;
out_unlock:
	pthread_mutex_unlock(&t->lock);
	pthread_mutex_unlock(&r->meta_lock);
	return rc;
}

int rep_pfile_lookup(struct rep_topic *t, const char *name, uint32_t *id)
{
	for (int pass = 0; pass < 2; pass++) {
		pthread_mutex_lock(&t->lock);
		ssize_t i = pfile_find(t, name);
		if (i >= 0)
			*id = t->pfiles[i].id;
		pthread_mutex_unlock(&t->lock);
		if (i >= 0)
			return 0;
		if (!t->rep->cluster || pass)
			break;
		cluster_sync(t->rep->cluster);
	}
	return -ENOENT;
}

int rep_pfile_name(struct rep_topic *t, uint32_t id, char *buf, size_t size)
{
	int rc = -ENOENT;
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->npfiles; i++) {
		if (t->pfiles[i].id == id) {
			snprintf(buf, size, "%s", t->pfiles[i].name);
			rc = 0;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

int rep_pfile_get_attr(struct rep_topic *t, uint32_t id, struct rep_pfile_attr *out)
{
	int rc = -ENOENT;
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->npfiles; i++) {
		if (t->pfiles[i].id == id) {
			*out = t->pfiles[i].attr;
			rc = 0;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

int rep_pfile_set_attr(struct rep_topic *t, uint32_t id, const struct rep_pfile_attr *attr)
{
	struct rep *r = t->rep;
	int rc = -ENOENT;
	pthread_mutex_lock(&r->meta_lock);
	pthread_mutex_lock(&t->lock);
	struct pfile *pf = NULL;
	for (size_t i = 0; i < t->npfiles; i++)
		if (t->pfiles[i].id == id)
			pf = &t->pfiles[i];
	if (!pf) {
		pthread_mutex_unlock(&t->lock);
		pthread_mutex_unlock(&r->meta_lock);
		return rc;
	}
	struct rep_pfile_attr before = pf->attr;
	pf->attr = *attr;
	pf->attr.mode &= 07777;
	pthread_mutex_unlock(&t->lock);
	if (r->cluster) {
		/* Owner and mode are this node's view of the file (not replicated). */
		pthread_mutex_unlock(&r->meta_lock);
		return 0;
	}
	rc = pfile_save(t);
	if (rc < 0) {
		pthread_mutex_lock(&t->lock);
		for (size_t i = 0; i < t->npfiles; i++)
			if (t->pfiles[i].id == id)
				t->pfiles[i].attr = before;
		pthread_mutex_unlock(&t->lock);
	}
	pthread_mutex_unlock(&r->meta_lock);
	return rc;
}

int rep_pfile_unlink(struct rep_topic *t, const char *name)
{
	struct rep *r = t->rep;
	if (r->cluster)
		return cl_pfile_unlink(t, name);
	pthread_mutex_lock(&r->meta_lock);
	pthread_mutex_lock(&t->lock);
	ssize_t i = pfile_find(t, name);
	if (i < 0) {
		pthread_mutex_unlock(&t->lock);
		pthread_mutex_unlock(&r->meta_lock);
		return -ENOENT;
	}
	struct pfile gone = t->pfiles[i];
	memmove(&t->pfiles[i], &t->pfiles[i + 1], (t->npfiles - i - 1) * sizeof(gone));
	t->npfiles--;
	pthread_mutex_unlock(&t->lock);
	int rc = pfile_save(t);
	if (rc < 0) {
		pthread_mutex_lock(&t->lock);
		memmove(&t->pfiles[i + 1], &t->pfiles[i], (t->npfiles - i) * sizeof(gone));
		t->pfiles[i] = gone;
		t->npfiles++;
		pthread_mutex_unlock(&t->lock);
	} else {
		free(gone.name);
	}
	pthread_mutex_unlock(&r->meta_lock);
	return rc;
}

int rep_pfile_rename(struct rep_topic *t, const char *from, const char *to)
{
	if (!pfile_name_valid(to))
		return -EINVAL;
	struct rep *r = t->rep;
	int rc = 0;
	if (r->cluster)
		return cl_pfile_rename(t, from, to);
	pthread_mutex_lock(&r->meta_lock);
	pthread_mutex_lock(&t->lock);
	ssize_t i = pfile_find(t, from);
	if (i < 0) {
		pthread_mutex_unlock(&t->lock);
		pthread_mutex_unlock(&r->meta_lock);
		return -ENOENT;
	}
	if (strcmp(from, to) == 0) {
		pthread_mutex_unlock(&t->lock);
		pthread_mutex_unlock(&r->meta_lock);
		return 0;
	}
	char *copy = strdup(to);
	if (!copy) {
		pthread_mutex_unlock(&t->lock);
		pthread_mutex_unlock(&r->meta_lock);
		return -ENOMEM;
	}
	/* Save the list as it was, to undo on a failed save. */
	size_t saved_n = t->npfiles;
	struct pfile *saved = malloc(saved_n * sizeof(*saved));
	if (!saved) {
		free(copy);
		pthread_mutex_unlock(&t->lock);
		pthread_mutex_unlock(&r->meta_lock);
		return -ENOMEM;
	}
	memcpy(saved, t->pfiles, saved_n * sizeof(*saved));
	char *old_name = t->pfiles[i].name;
	t->pfiles[i].name = copy;
	ssize_t j = -1;
	for (size_t k = 0; k < t->npfiles; k++)
		if ((ssize_t)k != i && strcmp(t->pfiles[k].name, to) == 0)
			j = (ssize_t)k;
	struct pfile replaced = {0};
	if (j >= 0) {
		replaced = t->pfiles[j];
		memmove(&t->pfiles[j], &t->pfiles[j + 1], (t->npfiles - j - 1) * sizeof(replaced));
		t->npfiles--;
	}
	pthread_mutex_unlock(&t->lock);
	rc = pfile_save(t);
	pthread_mutex_lock(&t->lock);
	if (rc < 0) {
		free(copy);
		memcpy(t->pfiles, saved, saved_n * sizeof(*saved));
		t->npfiles = saved_n;
	} else {
		free(old_name);
		free(replaced.name);
	}
	pthread_mutex_unlock(&t->lock);
	free(saved);
	pthread_mutex_unlock(&r->meta_lock);
	return rc;
}

void rep_pfile_foreach(struct rep_topic *t,
                       int (*fn)(void *ctx, uint32_t id, const char *name), void *ctx)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->npfiles; i++)
		if (fn(ctx, t->pfiles[i].id, t->pfiles[i].name))
			break;
	pthread_mutex_unlock(&t->lock);
}

/* ---- produce and commit ------------------------------------------------- */

void rep_watch(struct rep *r, int delta)
{
	atomic_fetch_add(&r->watchers, delta);
}

static void notify_queue(struct rep_partition *p)
{
	struct rep *r = p->topic->rep;
	/* Nobody reads or consumes on this node: no thread hand-off per append. */
	if (!r->started || atomic_load(&r->watchers) == 0 ||
	    atomic_exchange(&p->notify_pending, true))
		return;
	pthread_mutex_lock(&r->bg_lock);
	if (r->nqueue == r->cqueue) {
		size_t c = r->cqueue ? 2 * r->cqueue : 64;
		struct notify_item *q = realloc(r->queue, c * sizeof(*q));
		if (!q) {
			/* A lost notification only delays tail -f to its attr poll. */
			atomic_store(&p->notify_pending, false);
			pthread_mutex_unlock(&r->bg_lock);
			return;
		}
		r->queue = q;
		r->cqueue = c;
	}
	r->queue[r->nqueue++] = (struct notify_item){p->topic->id, p->index};
	pthread_cond_broadcast(&r->bg_cond);
	pthread_mutex_unlock(&r->bg_lock);
}

static int cl_produce(struct rep_partition *p, const struct ls_rec *recs, uint32_t n,
                      const struct ls_producer *prod, struct ls_append_result *res);
static int cl_commit(struct rep_partition *p, struct rep_marks *mk);
static int cl_wait_acked(struct rep_partition *p, struct rep_marks *mk);
static void cl_state(struct rep_partition *p, struct rep_partition_state *st);

int rep_topic_room(struct rep_topic *t, uint64_t bytes)
{
	struct statvfs sv;
	if (t->rep->cluster || fstatvfs(t->rep->dir_fd, &sv) < 0)
		return 0;
	/* the batches' headers, a segment roll's new files */
	uint64_t need = bytes + bytes / 8 + (256u << 10);
	return (uint64_t)sv.f_bavail * sv.f_frsize < need ? -ENOSPC : 0;
}

int rep_produce(struct rep_partition *p, const struct ls_rec *recs, uint32_t n,
                const struct ls_producer *prod, struct ls_append_result *res)
{
	if (p->topic->rep->cluster)
		return cl_produce(p, recs, n, prod, res);
	int rc = ls_partition_append(p->log, recs, n, now_ms(), prod, res);
	if (rc < 0)
		return rc == LS_ESTICKY ? -EROFS : rc;
	int64_t end = res->last_offset + 1;
	pthread_mutex_lock(&p->hw_lock);
	if (end > p->hw) {
		p->hw = end;
		ls_partition_set_hw(p->log, end);
	}
	pthread_mutex_unlock(&p->hw_lock);
	if (!res->duplicate) {
		uint64_t bytes = 0;
		for (uint32_t i = 0; i < n; i++)
			bytes += recs[i].value_len + (recs[i].key ? recs[i].key_len : 0);
		__atomic_add_fetch(&p->counters.records_in, n, __ATOMIC_RELAXED);
		__atomic_add_fetch(&p->counters.bytes_in, bytes, __ATOMIC_RELAXED);
		atomic_store(&p->dirty, true);
		notify_queue(p);
	}
	return 0;
}

int rep_partition_wait_acked(struct rep_partition *p, struct rep_marks *mk)
{
	if (p->topic->rep->cluster)
		return cl_wait_acked(p, mk);
	return 0; /* one node: the high watermark moved with the append */
}

int rep_partition_commit(struct rep_partition *p, struct rep_marks *mk)
{
	if (p->topic->rep->cluster)
		return cl_commit(p, mk);
	int rc = ls_partition_sync(p->log);
	if (rc < 0) {
		tfs_error("%s/%u: commit failed: %s", p->topic->name, p->index, tfs_strerror(rc));
		return -EIO;
	}
	*mk = (struct rep_marks){0};
	return 0;
}

struct ls_partition *rep_partition_log(struct rep_partition *p) { return p->log; }
struct rep_counters *rep_partition_counters(struct rep_partition *p) { return &p->counters; }

void rep_partition_state(struct rep_partition *p, struct rep_partition_state *st)
{
	struct rep *r = p->topic->rep;
	if (r->cluster) {
		cl_state(p, st);
		return;
	}
	memset(st, 0, sizeof(*st));
	st->partition = p->index;
	st->leader = r->opts.node_id;
	st->replicas[0] = r->opts.node_id;
	st->nreplicas = 1;
	st->isr[0] = r->opts.node_id;
	st->nisr = 1;
	ls_partition_get_info(p->log, &st->log);
	st->leader_epoch = st->log.leader_epoch;
}

/* ---- node --------------------------------------------------------------- */

uint16_t rep_node_id(const struct rep *r) { return r->opts.node_id; }

size_t rep_nodes(struct rep *r, struct rep_node_info *out, size_t max)
{
	if (r->cluster)
		return cluster_nodes(r->cluster, out, max);
	if (max < 1)
		return 0;
	out[0].id = r->opts.node_id;
	snprintf(out[0].address, sizeof(out[0].address), "%s", r->listen);
	out[0].state = "up";
	out[0].role = "leader";
	return 1;
}

int64_t rep_new_producer_id(struct rep *r)
{
	if (r->cluster)
		return cl_new_producer_id(r);
	/* Ids come from blocks reserved in metadata first, so a restart never
	 * hands out an id twice: a block counts only once it is saved. */
	int64_t id = atomic_fetch_add(&r->next_producer_id, 1);
	if (id < atomic_load(&r->producer_id_limit))
		return id;
	pthread_mutex_lock(&r->meta_lock);
	if (id >= atomic_load(&r->producer_id_limit)) {
		pthread_rwlock_rdlock(&r->topics_lock);
		int rc = meta_save_as(r, id + 65536);
		pthread_rwlock_unlock(&r->topics_lock);
		if (rc == 0) {
			atomic_store(&r->producer_id_limit, id + 65536);
		} else {
			/* An id that might repeat after a restart could make a new
			 * write look like a retried one: go on without one (this
			 * file's appends are then not deduplicated). */
			tfs_warn("producer id block not saved (%s): a file opened now writes "
			         "without an id", tfs_strerror(rc));
			id = -1;
		}
	}
	pthread_mutex_unlock(&r->meta_lock);
	return id;
}

static int meta_load(struct rep *r)
{
	char path[PATH_MAX];
	if (pathf(path, sizeof(path), "%s/metadata", r->data_dir) < 0)
		return -ENAMETOOLONG;
	FILE *f = fopen(path, "r");
	if (!f)
		return errno == ENOENT ? 0 : -errno;
	char line[1024];
	int lineno = 0, rc = 0;
	struct rep_topic *cur = NULL;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		char name[REP_NAME_MAX + 2], hex[2 * REP_FILE_NAME_MAX + 2];
		unsigned long long id, a;
		unsigned parts, next_pf, pf, pmode = 0644, puid = 0, pgid = 0;
		int fields;
		int epoch, k;
		long long v;
		if (lineno == 1) {
			if (strcmp(line, "topicfs-metadata 1\n") != 0) {
				rc = LS_ECORRUPT;
				break;
			}
		} else if (sscanf(line, "next_topic_id %llu", &a) == 1) {
			r->next_topic_id = a;
		} else if (sscanf(line, "next_producer_id %lld", &v) == 1) {
			atomic_store(&r->next_producer_id, v);
			atomic_store(&r->producer_id_limit, v);
		} else if (sscanf(line, "topic %llu %249s %u %u %d", &id, name, &parts, &next_pf,
		                  &epoch) == 5) {
			cur = topic_new(r, id, name);
			struct rep_topic **topics =
				realloc(r->topics, (r->ntopics + 1) * sizeof(*topics));
			if (!cur || !topics) {
				if (topics)
					r->topics = topics;
				if (cur)
					topic_free(cur);
				rc = -ENOMEM;
				break;
			}
			r->topics = topics;
			r->topics[r->ntopics++] = cur;
			cur->next_pfile_id = next_pf;
			cur->leader_epoch = epoch;
			cur->load_parts = parts; /* opened in rep_open */
		} else if (sscanf(line, "cfg %llu %d %lld", &id, &k, &v) == 3 && cur &&
		           cur->id == id && k >= 0 && k < TC_NKEYS) {
			cfg_set(&cur->overrides, k, v);
		} else if ((fields = sscanf(line, "pfile %llu %u %511s %o %u %u", &id, &pf, hex,
		                            &pmode, &puid, &pgid)) >= 3 &&
		           cur && cur->id == id) {
			char nm[REP_FILE_NAME_MAX + 1];
			struct pfile *pfs = realloc(cur->pfiles, (cur->npfiles + 1) * sizeof(*pfs));
			if (!pfs) {
				rc = -ENOMEM;
				break;
			}
			cur->pfiles = pfs;
			if (hex_decode(hex, nm, sizeof(nm)) < 0 || !(pfs[cur->npfiles].name = strdup(nm))) {
				rc = LS_ECORRUPT;
				break;
			}
			pfs[cur->npfiles].attr = fields == 6
				? (struct rep_pfile_attr){pmode & 07777, puid, pgid}
				: (struct rep_pfile_attr){0644, (uint32_t)getuid(), (uint32_t)getgid()};
			pfs[cur->npfiles++].id = pf;
		} else {
			rc = LS_ECORRUPT;
			break;
		}
	}
	fclose(f);
	if (rc == LS_ECORRUPT)
		tfs_error("%s:%d: unreadable metadata line", path, lineno);
	return rc;
}

static void *housekeeping_main(void *arg)
{
	struct rep *r = arg;
	int64_t last_flush = now_ms(), last_retention = now_ms();
	pthread_mutex_lock(&r->bg_lock);
	while (!r->stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&r->bg_cond, &r->bg_lock, &ts);
		if (r->stopping)
			break;
		int64_t now = now_ms();
		int flush = r->opts.flush_ms && now - last_flush >= r->opts.flush_ms;
		int retention = r->opts.retention_check_ms &&
		                now - last_retention >= r->opts.retention_check_ms;
		if (!flush && !retention)
			continue;
		pthread_mutex_unlock(&r->bg_lock);
		if (flush)
			last_flush = now;
		if (retention)
			last_retention = now;
		/* Take references so topics can be deleted meanwhile. */
		pthread_rwlock_rdlock(&r->topics_lock);
		size_t n = r->ntopics;
		struct rep_topic **ts_ = malloc((n ? n : 1) * sizeof(*ts_));
		if (ts_)
			for (size_t i = 0; i < n; i++) {
				ts_[i] = r->topics[i];
				atomic_fetch_add(&ts_[i]->refs, 1);
			}
		pthread_rwlock_unlock(&r->topics_lock);
		for (size_t i = 0; ts_ && i < n; i++) {
			struct rep_topic *t = ts_[i];
			struct topic_config eff;
			rep_topic_config(t, &eff);
			uint32_t np = rep_topic_partition_count(t);
			for (uint32_t j = 0; j < np; j++) {
				struct rep_partition *p = rep_topic_partition(t, j);
				if (flush && atomic_exchange(&p->dirty, false)) {
					int rc = ls_partition_sync(p->log);
					if (rc < 0)
						tfs_error("%s/%u: background fsync failed: %s", t->name,
						          j, tfs_strerror(rc));
				}
				if (retention) {
					int rc = ls_partition_enforce_retention(p->log, now_ms());
					if (rc > 0)
						tfs_info("%s/%u: retention removed %d segment(s)",
						         t->name, j, rc);
					if (eff.cleanup == LS_CLEANUP_COMPACT) {
						rc = ls_partition_compact(p->log);
						if (rc > 0)
							tfs_info("%s/%u: compaction removed %d record(s)",
							         t->name, j, rc);
					}
					if (rc < 0)
						tfs_warn("%s/%u: retention/compaction: %s", t->name,
						         j, tfs_strerror(rc));
				}
			}
			rep_topic_put(t);
		}
		free(ts_);
		if (flush)
			rep_groups_sync(r);    /* groups hook: the offsets log */
		if (retention) {
			rep_groups_compact(r); /* groups hook */
			reserve_make(r);       /* given up on a full disk earlier */
		}
		pthread_mutex_lock(&r->bg_lock);
	}
	pthread_mutex_unlock(&r->bg_lock);
	return NULL;
}

static void *notifier_main(void *arg)
{
	struct rep *r = arg;
	struct notify_item *batch = NULL;
	size_t cbatch = 0;
	pthread_mutex_lock(&r->bg_lock);
	for (;;) {
		while (!r->stopping && r->nqueue == 0)
			pthread_cond_wait(&r->bg_cond, &r->bg_lock);
		if (r->stopping)
			break;
		/* Swap the queue out so producers never wait on callbacks. */
		struct notify_item *q = r->queue;
		size_t n = r->nqueue, c = r->cqueue;
		r->queue = batch;
		r->cqueue = cbatch;
		r->nqueue = 0;
		batch = q;
		cbatch = c;
		pthread_mutex_unlock(&r->bg_lock);
		for (size_t i = 0; i < n; i++) {
			struct rep_topic *t = rep_topic_get_id(r, batch[i].topic_id);
			if (!t)
				continue;
			struct rep_partition *p = rep_topic_partition(t, batch[i].partition);
			if (p)
				atomic_store(&p->notify_pending, false);
			if (r->listener.partition_grew)
				r->listener.partition_grew(r->listener.ctx, batch[i].topic_id,
				                           batch[i].partition);
			/* groups hook: wakes the members reading this partition */
			rep_groups_partition_grew(r, batch[i].topic_id, batch[i].partition);
			rep_topic_put(t);
		}
		pthread_mutex_lock(&r->bg_lock);
	}
	pthread_mutex_unlock(&r->bg_lock);
	free(batch);
	return NULL;
}

/* ---- the data directory's lock ------------------------------------------ */

#define LOCK_WAIT_STOPPING_MS 60000 /* a shutdown syncs every partition */
#define LOCK_WAIT_RUNNING_MS 500    /* its loop may be ending right now */

/* Writes "<state> <pid>" into the lock file (for the next daemon). */
static void lock_note(struct rep *r, const char *state)
{
	char line[64];
	int n = snprintf(line, sizeof(line), "%s %d\n", state, (int)getpid());
	if (ftruncate(r->lock_fd, 0) == 0 && pwrite(r->lock_fd, line, (size_t)n, 0) == n)
		return;
	tfs_warn("%s/lock: cannot note the daemon's state: %s", r->data_dir, strerror(errno));
}

void rep_stopping(struct rep *r)
{
	if (r && r->lock_fd >= 0)
		lock_note(r, "stopping");
	if (r && r->cluster && !r->drained) {
		/* controlled shutdown: the partitions it leads move to in-sync
		 * followers now, losing no acknowledged write (acks: leader
		 * included), instead of after node_timeout_ms without it; once
		 * (main after the session loop, then rep_close) */
		r->drained = 1;
		struct replica_set *rs = cluster_replicas(r->cluster);
		int left = rs ? replica_set_drain(rs, DRAIN_MS) : 0;
		if (left > 0)
			tfs_warn("stopping: %d partition(s) not handed over or left after %d ms: "
			         "the others take over once this node is marked down", left,
			         DRAIN_MS);
		/* last, the quorum's leadership (the handoffs above need it) */
		if (cl_nodes_alive(r) > 1 && cluster_hand_over_quorum(r->cluster, 2000) < 0)
			tfs_warn("stopping: no other node took the metadata quorum's leadership "
			         "within 2000 ms: the others elect one after their election timeout");
	}
}

/* Takes DATA/lock. A daemon shutting down on DATA (after an unmount:
 * fusermount3 returns before the old daemon has synced its partitions) is
 * waited for; a running one is -EBUSY. */
static int lock_data_dir(struct rep *r)
{
	int waited = 0, said = 0;
	for (;;) {
		if (flock(r->lock_fd, LOCK_EX | LOCK_NB) == 0)
			break;
		if (errno != EWOULDBLOCK) {
			int rc = -errno;
			tfs_error("%s/lock: %s", r->data_dir, strerror(errno));
			return rc;
		}
		char st[64] = "";
		ssize_t n = pread(r->lock_fd, st, sizeof(st) - 1, 0);
		st[n > 0 ? n : 0] = 0;
		st[strcspn(st, "\n")] = 0;
		int stopping = strncmp(st, "stopping", 8) == 0;
		if (waited >= (stopping ? LOCK_WAIT_STOPPING_MS : LOCK_WAIT_RUNNING_MS)) {
			tfs_error("%s: data directory is in use by another topicfs daemon (%s)",
			          r->data_dir, st[0] ? st : "no state noted");
			return -EBUSY;
		}
		if (stopping && !said) {
			tfs_info("%s: waiting for the daemon that is shutting down on it (%s)",
			         r->data_dir, st);
			said = 1;
		}
		struct timespec ts = {0, 10 * 1000000L};
		nanosleep(&ts, NULL);
		waited += 10;
	}
	lock_note(r, "running");
	return 0;
}

int rep_open(const struct rep_options *opts, struct rep **out)
{
	struct rep *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	int rc;
	r->opts = *opts;
	snprintf(r->data_dir, sizeof(r->data_dir), "%s", opts->data_dir);
	snprintf(r->listen, sizeof(r->listen), "%s", opts->listen ? opts->listen : "");
	r->opts.data_dir = r->data_dir;
	r->opts.listen = r->listen;
	r->next_topic_id = 1;
	atomic_init(&r->next_producer_id, 1);
	atomic_init(&r->producer_id_limit, 1);
	pthread_rwlock_init(&r->topics_lock, NULL);
	pthread_mutex_init(&r->meta_lock, NULL);
	pthread_mutex_init(&r->bg_lock, NULL);
	pthread_cond_init(&r->bg_cond, NULL);

	char path[PATH_MAX];
	r->dir_fd = -1;
	rc = pathf(path, sizeof(path), "%s/lock", r->data_dir);
	if (rc < 0)
		goto err_free;
	r->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (r->lock_fd < 0) {
		rc = -errno;
		tfs_error("%s: %s", path, strerror(errno));
		goto err_free;
	}
	if ((rc = lock_data_dir(r)) < 0)
		goto err_lock;
	r->dir_fd = open(r->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->dir_fd < 0) {
		rc = -errno;
		tfs_error("%s: %s", r->data_dir, strerror(errno));
		goto err_lock;
	}
	const char *subdirs[] = {"topics", "trash", "ctopics"};
	for (size_t i = 0; i < (opts->nvoters ? 3u : 2u); i++) {
		rc = pathf(path, sizeof(path), "%s/%s", r->data_dir, subdirs[i]);
		if (rc == 0 && mkdir(path, 0755) < 0 && errno != EEXIST)
			rc = -errno;
		if (rc < 0) {
			tfs_error("%s: %s", path, tfs_strerror(rc));
			goto err_lock;
		}
	}
	/* Finish deletions a crash interrupted. */
	DIR *d = pathf(path, sizeof(path), "%s/trash", r->data_dir) < 0 ? NULL : opendir(path);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			char sub[PATH_MAX];
			if (pathf(sub, sizeof(sub), "%s/%s", path, e->d_name) < 0 ||
			    ls_fsutil_rm_rf(sub) < 0)
				tfs_warn("could not remove %s", sub);
		}
		closedir(d);
	}
	if (opts->nvoters) {
		/* Topics come from the quorum once the node has started. */
		struct cluster_options co = {
			.node_id = opts->node_id,
			.nvoters = opts->nvoters,
			.replica_lag_ms = opts->replica_lag_ms,
			.replica_wait_ms = opts->replica_wait_ms,
			.node_timeout_ms = opts->node_timeout_ms,
			.snapshot_entries = opts->snapshot_entries,
			.leader_rebalance_ms = opts->leader_rebalance_ms,
		};
		snprintf(co.listen, sizeof(co.listen), "%s", r->listen);
		for (unsigned i = 0; i < opts->nvoters && i < 64; i++) {
			co.voters[i].id = opts->voters[i].id;
			snprintf(co.voters[i].address, sizeof(co.voters[i].address), "%s",
			         opts->voters[i].address);
		}
		rc = cluster_open(r, &co, r->data_dir, &r->cluster);
		if (rc < 0)
			goto err_lock;
		*out = r;
		return 0;
	}
	rc = meta_load(r);
	if (rc < 0)
		goto err_topics;
	for (size_t i = 0; i < r->ntopics; i++) {
		struct rep_topic *t = r->topics[i];
		rc = topic_grow(t, t->load_parts ? t->load_parts : 1);
		if (rc < 0)
			goto err_topics;
	}
	pthread_rwlock_rdlock(&r->topics_lock);
	rc = meta_save(r);
	pthread_rwlock_unlock(&r->topics_lock);
	reserve_make(r);
	/* On a full disk the metadata on disk is still the one just loaded:
	 * serve it (reads, and writes once space is freed). */
	if (rc == -ENOSPC || rc == -EDQUOT)
		tfs_warn("%s/metadata: not rewritten at start (%s); serving the one on disk",
		         r->data_dir, tfs_strerror(rc));
	else if (rc < 0)
		goto err_topics;
	*out = r;
	return 0;

err_topics:
	for (size_t i = 0; i < r->ntopics; i++) {
		topic_close_partitions(r->topics[i]);
		topic_free(r->topics[i]);
	}
	free(r->topics);
err_lock:
	if (r->dir_fd >= 0)
		close(r->dir_fd);
	close(r->lock_fd);
err_free:
	free(r);
	return rc;
}

int rep_start(struct rep *r, const struct rep_listener *l)
{
	lock_note(r, "running"); /* the pid after daemonising */
	if (l)
		r->listener = *l;
	int rc = pthread_create(&r->housekeeping, NULL, housekeeping_main, r);
	if (rc)
		return -rc;
	rc = pthread_create(&r->notifier, NULL, notifier_main, r);
	if (rc) {
		pthread_mutex_lock(&r->bg_lock);
		r->stopping = 1;
		pthread_cond_broadcast(&r->bg_cond);
		pthread_mutex_unlock(&r->bg_lock);
		pthread_join(r->housekeeping, NULL);
		return -rc;
	}
	r->started = 1;
	if (r->cluster) {
		rc = cluster_start(r->cluster);
		if (rc < 0) {
			tfs_error("cannot start the cluster node: %s", tfs_strerror(rc));
			return rc;
		}
		/* Serve once this node has caught up with the quorum (its own
		 * registration applied, and everything the quorum had committed
		 * by then: a restart otherwise serves the state of its own last
		 * snapshot and log for a while, groups it no longer coordinates
		 * among it), or go on without it: the quorum may still be
		 * forming, or out of reach. */
		int64_t until = cluster_now_ms() + 10000;
		if (cluster_wait_ready(r->cluster, 10000) < 0 || cluster_now_ms() >= until ||
		    cluster_catch_up(r->cluster, (unsigned)(until - cluster_now_ms())) < 0)
			tfs_warn("no metadata quorum yet; topics appear once it forms");
	}
	return 0;
}

void rep_close(struct rep *r)
{
	rep_stopping(r);
	cluster_close(r->cluster);   /* replicas removed, raft and net stopped */
	r->cluster = NULL;
	if (r->started) {
		pthread_mutex_lock(&r->bg_lock);
		r->stopping = 1;
		pthread_cond_broadcast(&r->bg_cond);
		pthread_mutex_unlock(&r->bg_lock);
		pthread_join(r->housekeeping, NULL);
		pthread_join(r->notifier, NULL);
	}
	rep_groups_close(r); /* groups hook: no-op if the daemon closed them */
	for (size_t i = 0; i < r->ntopics; i++) {
		struct rep_topic *t = r->topics[i];
		int rc = topic_close_partitions(t);
		if (rc < 0)
			tfs_error("%s: close: %s", t->name, tfs_strerror(rc));
		/* Handles still open at unmount are gone with the session. */
		topic_free(t);
	}
	free(r->topics);
	free(r->queue);
	close(r->dir_fd);
	close(r->lock_fd);
	pthread_rwlock_destroy(&r->topics_lock);
	pthread_mutex_destroy(&r->meta_lock);
	pthread_mutex_destroy(&r->bg_lock);
	pthread_cond_destroy(&r->bg_cond);
	free(r);
}

/* ---- cluster mode ------------------------------------------------------- */

struct cluster *rep_cluster(struct rep *r) { return r->cluster; }

void rep_partition_hw_moved(struct rep_partition *p) { notify_queue(p); }

void rep_partition_count_in(struct rep_partition *p, uint32_t records, uint64_t bytes)
{
	__atomic_add_fetch(&p->counters.records_in, records, __ATOMIC_RELAXED);
	__atomic_add_fetch(&p->counters.bytes_in, bytes, __ATOMIC_RELAXED);
	atomic_store(&p->dirty, true);
}

struct alive_count {
	unsigned n;
};

static void alive_count_fn(void *ctx, const struct meta_state *s)
{
	((struct alive_count *)ctx)->n = meta_nodes_alive(s);
}

static unsigned cl_nodes_alive(struct rep *r)
{
	struct alive_count q = {0};
	cluster_read(r->cluster, alive_count_fn, &q);
	return q.n;
}

/* A refusal by the quorum: its reason for the caller's one log line
 * (tfs_reason; that line names the operation and the topic); returns rc. */
static int cl_refused(int rc, const struct meta_result *res)
{
	if (rc < 0)
		tfs_reason(rc, "%s", res->err[0] ? res->err : tfs_strerror(rc));
	return rc;
}

static int cl_topic_create(struct rep *r, const char *name)
{
	struct meta_cmd *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	meta_cmd_init(c, META_CMD_TOPIC_CREATE);
	snprintf(c->name, sizeof(c->name), "%s", name);
	/* The quorum pins the counts (meta.h invariant 6): resolve this node's
	 * defaults now. */
	const struct topic_config *d = &r->opts.defaults;
	cfg_set(&c->config, TC_PARTITIONS, d->partitions ? d->partitions : 1);
	cfg_set(&c->config, TC_REPLICATION, d->replication ? d->replication : 1);
	cfg_set(&c->config, TC_MIN_INSYNC, d->min_insync ? d->min_insync : 1);
	struct meta_result res;
	int rc = cluster_propose(r->cluster, c, &res);
	free(c);
	if (rc == 0)
		tfs_info("topic %s created (id %" PRId64 ")", name, res.value);
	return cl_refused(rc, &res);
}

static int cl_topic_delete(struct rep *r, const char *name)
{
	struct rep_topic *t = rep_topic_get(r, name);
	if (!t)
		return -ENOENT;
	struct meta_cmd *c = malloc(sizeof(*c));
	if (!c) {
		rep_topic_put(t);
		return -ENOMEM;
	}
	meta_cmd_init(c, META_CMD_TOPIC_DELETE);
	c->topic_id = t->id;
	rep_topic_put(t);
	struct meta_result res;
	int rc = cluster_propose(r->cluster, c, &res);
	free(c);
	if (rc == 0)
		tfs_info("topic %s deleted", name);
	return cl_refused(rc, &res);
}

static int cl_topic_set_config(struct rep_topic *t, const struct topic_config *changes,
                               uint32_t cleared, char *err, size_t errlen)
{
	struct meta_cmd *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	meta_cmd_init(c, META_CMD_TOPIC_CONFIG);
	c->topic_id = t->id;
	c->config = *changes;
	c->cleared = cleared;
	struct meta_result res;
	int rc = cluster_propose(t->rep->cluster, c, &res);
	free(c);
	if (rc < 0)
		snprintf(err, errlen, "%s", res.err[0] ? res.err : tfs_strerror(rc));
	return rc;
}

static void pfile_set_local_attr(struct rep_topic *t, uint32_t id, const struct rep_pfile_attr *a)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->npfiles; i++) {
		if (t->pfiles[i].id == id) {
			t->pfiles[i].attr = *a;
			t->pfiles[i].attr.mode &= 07777;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

static int cl_pfile_op(struct rep_topic *t, enum meta_cmd_type type, const char *name,
                       const char *to, int64_t *value)
{
	struct meta_cmd *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	meta_cmd_init(c, type);
	c->topic_id = t->id;
	snprintf(c->name, sizeof(c->name), "%s", name);
	if (to)
		snprintf(c->name2, sizeof(c->name2), "%s", to);
	struct meta_result res;
	int rc = cluster_propose(t->rep->cluster, c, &res);
	free(c);
	if (value)
		*value = res.value;
	if (rc < 0 && rc != -EEXIST && rc != -ENOENT)
		tfs_warn("%s/%s: %s", t->name, name, res.err[0] ? res.err : tfs_strerror(rc));
	return rc;
}

static int cl_pfile_create(struct rep_topic *t, const char *name,
                           const struct rep_pfile_attr *attr, uint32_t *id)
{
	int64_t v = 0;
	int rc = cl_pfile_op(t, META_CMD_PFILE_ADD, name, NULL, &v);
	if (rc < 0)
		return rc;
	*id = (uint32_t)v;
	pfile_set_local_attr(t, *id, attr);
	return 0;
}

static int cl_pfile_unlink(struct rep_topic *t, const char *name)
{
	return cl_pfile_op(t, META_CMD_PFILE_REMOVE, name, NULL, NULL);
}

static int cl_pfile_rename(struct rep_topic *t, const char *from, const char *to)
{
	if (strcmp(from, to) == 0) {
		uint32_t id;
		return rep_pfile_lookup(t, from, &id);
	}
	return cl_pfile_op(t, META_CMD_PFILE_RENAME, from, to, NULL);
}

static int64_t cl_new_producer_id(struct rep *r)
{
	static _Atomic int64_t failed_at;   /* last time the quorum gave no block */
	int64_t id = atomic_fetch_add(&r->next_producer_id, 1);
	if (id < atomic_load(&r->producer_id_limit))
		return id;
	pthread_mutex_lock(&r->meta_lock);
	for (;;) {
		id = atomic_fetch_add(&r->next_producer_id, 1);
		if (id < atomic_load(&r->producer_id_limit))
			break;
		/* Without a quorum, opens go on without an id (their forwarded
		 * appends are then not retried) instead of each waiting for it. */
		if (failed_at && cluster_now_ms() - atomic_load(&failed_at) < 2000) {
			id = -1;
			break;
		}
		struct meta_cmd *c = malloc(sizeof(*c));
		if (!c) {
			id = -1;
			break;
		}
		meta_cmd_init(c, META_CMD_ALLOC_PIDS);
		c->count = 65536;
		struct meta_result res;
		int rc = cluster_propose(r->cluster, c, &res);
		free(c);
		if (rc < 0) {
			atomic_store(&failed_at, cluster_now_ms());
			tfs_warn("no producer id block from the quorum: %s", res.err);
			id = -1;
			break;
		}
		atomic_store(&r->next_producer_id, res.value);
		atomic_store(&r->producer_id_limit, res.value + 65536);
	}
	pthread_mutex_unlock(&r->meta_lock);
	return id;
}

/* FUSE calls into a partition's replica: -ENOENT once its topic is gone. */
static struct replica *repl_enter(struct rep_partition *p)
{
	atomic_fetch_add(&p->inflight, 1);
	if (atomic_load(&p->gone) || !p->repl) {
		atomic_fetch_sub(&p->inflight, 1);
		return NULL;
	}
	return p->repl;
}

static void repl_leave(struct rep_partition *p) { atomic_fetch_sub(&p->inflight, 1); }

int rep_partition_gone(struct rep_partition *p) { return atomic_load(&p->gone); }
const char *rep_partition_topic_name(struct rep_partition *p) { return rep_topic_name(p->topic); }

static int cl_produce(struct rep_partition *p, const struct ls_rec *recs, uint32_t n,
                      const struct ls_producer *prod, struct ls_append_result *res)
{
	struct topic_config eff;
	rep_topic_config(p->topic, &eff);
	struct replica *rp = repl_enter(p);
	if (!rp)
		return -ENOENT;
	int rc = replica_produce(rp, recs, n, prod, eff.acks, eff.min_insync, res);
	repl_leave(p);
	return rc;
}

/* close() (durable == 0: committed under acks) and fsync (durable: and on
 * this node's disk) in cluster mode. */
static int cl_commit_how(struct rep_partition *p, struct rep_marks *mk, int durable)
{
	struct topic_config eff;
	rep_topic_config(p->topic, &eff);
	struct replica *rp = repl_enter(p);
	if (!rp)
		return -EIO;
	int rc = durable ? replica_commit(rp, eff.acks, eff.min_insync, mk)
	                 : replica_wait_acked(rp, eff.acks, eff.min_insync, mk);
	repl_leave(p);
	if (rc == 0 && durable)
		*mk = (struct rep_marks){0};
	return rc;
}

static int cl_wait_acked(struct rep_partition *p, struct rep_marks *mk)
{
	return cl_commit_how(p, mk, 0);
}

static int cl_commit(struct rep_partition *p, struct rep_marks *mk)
{
	return cl_commit_how(p, mk, 1);
}

void rep_marks_add(struct rep_partition *p, struct rep_marks *mk,
                   const struct ls_append_result *res)
{
	if (!p->topic->rep->cluster)
		return;
	struct replica *rp = repl_enter(p);
	if (!rp)
		return; /* the partition is going away: its commit fails anyway */
	replica_marks_add(rp, mk, res);
	repl_leave(p);
}

static void cl_state(struct rep_partition *p, struct rep_partition_state *st)
{
	struct replica *rp = repl_enter(p);
	if (rp) {
		replica_state(rp, st);
		repl_leave(p);
		return;
	}
	memset(st, 0, sizeof(*st));
	st->partition = p->index;
	ls_partition_get_info(p->log, &st->log);
	st->leader_epoch = st->log.leader_epoch;
}

/* ---- reconciliation (loop thread) ---- */

static bool mp_equal(const struct meta_partition *a, const struct meta_partition *b)
{
	return a->leader == b->leader && a->leader_epoch == b->leader_epoch &&
	       a->nreplicas == b->nreplicas && a->nisr == b->nisr &&
	       memcmp(a->replicas, b->replicas, a->nreplicas * sizeof(a->replicas[0])) == 0 &&
	       memcmp(a->isr, b->isr, a->nisr * sizeof(a->isr[0])) == 0;
}

static bool overrides_equal(const struct topic_config *a, const struct topic_config *b)
{
	if (a->set_mask != b->set_mask)
		return false;
	for (int k = 0; k < TC_NKEYS; k++)
		if ((a->set_mask & (1u << k)) && cfg_get(a, k) != cfg_get(b, k))
			return false;
	return true;
}

/* Opens the partitions a topic gained and hands them to replication. */
static void cl_grow(struct rep_topic *t, const struct meta_topic *mt)
{
	struct rep *r = t->rep;
	pthread_mutex_lock(&t->lock);
	uint32_t before = t->nparts;
	int rc = topic_grow(t, mt->nparts);
	uint32_t after = t->nparts;
	pthread_mutex_unlock(&t->lock);
	if (rc < 0)
		tfs_error("%s: cannot open partition %u: %s", t->name, after, tfs_strerror(rc));
	for (uint32_t i = before; i < after; i++) {
		struct rep_partition *p = t->parts[i];
		p->mp = mt->parts[i];
		p->repl = replica_add(cluster_replicas(r->cluster), p, t->id, i, p->log, &mt->parts[i]);
	}
}

static void cl_sync_pfiles(struct rep_topic *t, const struct meta_topic *mt)
{
	pthread_mutex_lock(&t->lock);
	bool same = t->npfiles == mt->npfiles;
	for (size_t i = 0; same && i < t->npfiles; i++)
		same = t->pfiles[i].id == mt->pfiles[i].id &&
		       strcmp(t->pfiles[i].name, mt->pfiles[i].name) == 0;
	if (same) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	struct pfile *nu = calloc(mt->npfiles ? mt->npfiles : 1, sizeof(*nu));
	size_t k = 0;
	for (; nu && k < mt->npfiles; k++) {
		nu[k].id = mt->pfiles[k].id;
		nu[k].name = strdup(mt->pfiles[k].name);
		if (!nu[k].name)
			break;
		nu[k].attr = (struct rep_pfile_attr){0644, (uint32_t)getuid(), (uint32_t)getgid()};
		for (size_t j = 0; j < t->npfiles; j++)
			if (t->pfiles[j].id == nu[k].id)
				nu[k].attr = t->pfiles[j].attr;
	}
	if (!nu || k < mt->npfiles) {
		for (size_t j = 0; nu && j < k; j++)
			free(nu[j].name);
		free(nu);
		pthread_mutex_unlock(&t->lock);
		tfs_error("%s: out of memory updating producer files", t->name);
		return;
	}
	for (size_t i = 0; i < t->npfiles; i++)
		free(t->pfiles[i].name);
	free(t->pfiles);
	t->pfiles = nu;
	t->npfiles = mt->npfiles;
	t->next_pfile_id = mt->next_pfile_id;
	pthread_mutex_unlock(&t->lock);
}

static void cl_add_topic(struct rep *r, const struct meta_topic *mt)
{
	char dir[PATH_MAX];
	if (pathf(dir, sizeof(dir), "%s/ctopics/%" PRIu64, r->data_dir, mt->id) < 0)
		return;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		tfs_error("%s: %s", dir, strerror(errno));
		return;
	}
	struct rep_topic *t = topic_new(r, mt->id, mt->name);
	if (!t)
		return;
	t->overrides = mt->overrides;
	pthread_rwlock_wrlock(&r->topics_lock);
	struct rep_topic **topics = realloc(r->topics, (r->ntopics + 1) * sizeof(*topics));
	if (!topics) {
		pthread_rwlock_unlock(&r->topics_lock);
		topic_free(t);
		return;
	}
	r->topics = topics;
	r->topics[r->ntopics++] = t;
	pthread_rwlock_unlock(&r->topics_lock);
	cl_grow(t, mt);
	cl_sync_pfiles(t, mt);
	tfs_info("topic %s (id %" PRIu64 "): %u partition(s)", t->name, t->id, t->nparts);
}

/* The topic is gone from the quorum: out of the list now; its replicas are
 * removed once no FUSE call is inside them (rep_cluster_tick). */
static void cl_drop_topic(struct rep *r, size_t i)
{
	struct rep_topic *t = r->topics[i];
	memmove(&r->topics[i], &r->topics[i + 1], (r->ntopics - i - 1) * sizeof(*r->topics));
	r->ntopics--;
	atomic_store(&t->deleted, 1);
	for (uint32_t j = 0; j < t->nparts; j++) {
		atomic_store(&t->parts[j]->gone, true);
		if (t->parts[j]->repl) /* writers waiting in it: ENOENT now */
			replica_wake(t->parts[j]->repl);
	}
	char dir[PATH_MAX];
	if (pathf(dir, sizeof(dir), "%s/ctopics/%" PRIu64, r->data_dir, t->id) < 0 ||
	    pathf(t->trash_dir, sizeof(t->trash_dir), "%s/trash/%" PRIu64, r->data_dir,
	          t->id) < 0 ||
	    rename(dir, t->trash_dir) < 0) {
		tfs_warn("rmdir %s: could not move %s to trash: %s", t->name, dir, strerror(errno));
		t->trash_dir[0] = 0;
	}
	t->grave_next = r->graveyard;   /* keeps the list's reference */
	r->graveyard = t;
	tfs_info("topic %s deleted", t->name);
}

/* Removes the replicas of deleted topics nobody is calling into any more. */
static void cl_bury(struct rep *r, bool force)
{
	for (struct rep_topic **pp = &r->graveyard; *pp;) {
		struct rep_topic *t = *pp;
		bool busy = false;
		for (uint32_t j = 0; j < t->nparts && !force; j++)
			busy |= atomic_load(&t->parts[j]->inflight) > 0;
		if (busy) {
			pp = &t->grave_next;
			continue;
		}
		*pp = t->grave_next;
		for (uint32_t j = 0; j < t->nparts; j++) {
			if (t->parts[j]->repl)
				replica_remove(t->parts[j]->repl);
			t->parts[j]->repl = NULL;
		}
		rep_groups_topic_deleted(r, t->id);
		rep_topic_put(t);
	}
}

void rep_cluster_tick(struct rep *r) { cl_bury(r, false); }

/* Directories of topics the quorum has deleted while this node was away. */
static void cl_remove_orphans(struct rep *r, const struct meta_state *s)
{
	char path[PATH_MAX];
	if (pathf(path, sizeof(path), "%s/ctopics", r->data_dir) < 0)
		return;
	DIR *d = opendir(path);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		unsigned long long id = strtoull(e->d_name, &end, 10);
		if (e->d_name[0] < '0' || e->d_name[0] > '9' || *end || id >= s->next_topic_id ||
		    meta_topic_find(s, id))
			continue;
		char sub[PATH_MAX];
		if (pathf(sub, sizeof(sub), "%s/%s", path, e->d_name) == 0) {
			tfs_info("removing %s: its topic was deleted while this node was away", sub);
			if (ls_fsutil_rm_rf(sub) < 0)
				tfs_warn("could not remove %s", sub);
		}
	}
	closedir(d);
}

void rep_cluster_reconcile(struct rep *r, const struct meta_state *s)
{
	if (!s) {
		/* Closing: every replica goes; the topics stay for rep_close. */
		pthread_rwlock_rdlock(&r->topics_lock);
		for (size_t i = 0; i < r->ntopics; i++) {
			struct rep_topic *t = r->topics[i];
			for (uint32_t j = 0; j < t->nparts; j++) {
				atomic_store(&t->parts[j]->gone, true);
				if (t->parts[j]->repl)
					replica_remove(t->parts[j]->repl);
				t->parts[j]->repl = NULL;
			}
		}
		pthread_rwlock_unlock(&r->topics_lock);
		cl_bury(r, true);
		return;
	}
	/* Topics gone from the state. */
	pthread_rwlock_wrlock(&r->topics_lock);
	for (size_t i = 0; i < r->ntopics;) {
		if (meta_topic_find(s, r->topics[i]->id))
			i++;
		else
			cl_drop_topic(r, i);
	}
	pthread_rwlock_unlock(&r->topics_lock);
	/* New and changed topics (only the loop thread changes the list). */
	for (uint32_t k = 0; k < s->ntopics; k++) {
		const struct meta_topic *mt = &s->topics[k];
		struct rep_topic *t = NULL;
		for (size_t i = 0; i < r->ntopics; i++)
			if (r->topics[i]->id == mt->id)
				t = r->topics[i];
		if (!t) {
			cl_add_topic(r, mt);
			continue;
		}
		if (!overrides_equal(&t->overrides, &mt->overrides)) {
			pthread_mutex_lock(&t->lock);
			t->overrides = mt->overrides;
			struct topic_config eff;
			struct ls_config lc;
			topic_config_effective(&r->opts.defaults, &t->overrides, &eff);
			topic_config_to_ls(&eff, &lc);
			for (uint32_t j = 0; j < t->nparts; j++)
				ls_partition_set_config(t->parts[j]->log, &lc);
			pthread_mutex_unlock(&t->lock);
		}
		uint32_t before = t->nparts;
		if (mt->nparts > before) {
			cl_grow(t, mt);
			tfs_info("topic %s: partitions %u -> %u", t->name, before, t->nparts);
			rep_groups_topic_changed(r, t);
		}
		for (uint32_t j = 0; j < t->nparts && j < before; j++) {
			struct rep_partition *p = t->parts[j];
			if (!mp_equal(&p->mp, &mt->parts[j])) {
				p->mp = mt->parts[j];
				if (p->repl)
					replica_update(p->repl, &mt->parts[j]);
			}
		}
		cl_sync_pfiles(t, mt);
	}
	if (!r->orphans_checked && meta_node_find(s, r->opts.node_id)) {
		r->orphans_checked = true;
		cl_remove_orphans(r, s);
	}
	cl_bury(r, false);
}
