/*
 * replicator.h - the cluster as the daemon (fs/) sees it: topics, their
 * settings, partitions with a leader, an in-sync set, a leader epoch and a high
 * watermark, producer-file names, and the produce/commit path.
 *
 * This is the seam the cluster backend fills in later. Today's backend,
 * replicator/local.c, is a single node that is the quorum of one and leader
 * and only in-sync replica of every partition: metadata lives in
 * DATA/metadata (replaced atomically on every change), partition data in
 * DATA/topics/<topic>/<p>/ (logstore), deleted topics move to DATA/trash/
 * and are removed once nothing holds them.
 *
 * Objects and lifetimes:
 *   struct rep           one per daemon; rep_open() .. rep_close().
 *   struct rep_topic     reference counted: rep_topic_get*() returns a
 *                        reference the caller drops with rep_topic_put().
 *                        A deleted topic stays valid (rep_topic_deleted() = 1)
 *                        until its last reference goes.
 *   struct rep_partition owned by its topic; valid while a topic reference is
 *                        held. Partitions are only ever added.
 *
 * Topic ids are never reused (a topic made again after rmdir has a new id), so
 * the daemon can build stable inode numbers from them. Producer files have
 * per-topic ids likewise.
 *
 * Threading: every function may be called from any thread.
 */
#ifndef TFS_REPLICATOR_H
#define TFS_REPLICATOR_H

#include <stddef.h>
#include <stdint.h>

#include "../logstore/logstore.h"
#include "topic_config.h"

#define REP_NAME_MAX 249      /* topic and group names */
#define REP_FILE_NAME_MAX 255 /* producer file names */

struct rep;
struct rep_topic;
struct rep_partition;

struct rep_voter {
	uint16_t id;
	char address[80];              /* dotted-quad "a.b.c.d:port" */
};

struct rep_options {
	uint16_t node_id;
	const char *data_dir;          /* must exist */
	const char *listen;            /* "host:port", shown in .cluster/nodes */
	struct topic_config defaults;  /* node defaults for every topic key */
	uint32_t flush_ms;             /* background fsync period, 0 = never */
	uint32_t retention_check_ms;   /* retention/compaction period */
	/* Cluster mode when nvoters > 0 (cluster.voters; replicator/cluster.h):
	 * metadata through the quorum, data replicated. 0: a single node with
	 * its metadata in DATA/metadata. */
	struct rep_voter voters[64];
	unsigned nvoters;
	uint32_t replica_lag_ms;       /* 0: defaults (cluster.h) */
	uint32_t replica_wait_ms;
	uint32_t node_timeout_ms;
	uint32_t snapshot_entries;     /* metadata log entries between snapshots */
	uint32_t leader_rebalance_ms;  /* leadership back to the preferred replica
	                                  once in sync this long; 0: never */
};

/* Told when a partition's high watermark moves (new committed data), from a
 * thread that is never a FUSE handler of that partition's files. */
struct rep_listener {
	void (*partition_grew)(void *ctx, uint64_t topic_id, uint32_t partition);
	void *ctx;
};

/* Opens the node: loads metadata, opens (and recovers) every partition.
 * Starts no thread. *out is freed by rep_close(). Returns 0 or -errno with a
 * log line. */
int rep_open(const struct rep_options *opts, struct rep **out) TFS_MUST_CHECK;

/* Counts open readers of logs and cursors on this node (+1 at open, -1 at
 * close). partition_grew and the groups' wake-ups run only while it is
 * non-zero, so appends nobody waits for cost no thread hand-off. */
void rep_watch(struct rep *r, int delta);

/* Starts the background threads (flush, retention, notifications). Call after
 * daemonising. */
int rep_start(struct rep *r, const struct rep_listener *l) TFS_MUST_CHECK;

/* Notes in DATA/lock that this daemon is shutting down, so a daemon started
 * on DATA meanwhile waits for the lock instead of failing (rep_close does it
 * too; call it as soon as the mount is gone). */
void rep_stopping(struct rep *r);

/* Stops threads, closes every partition cleanly (sync + clean marker). */
void rep_close(struct rep *r);

uint16_t rep_node_id(const struct rep *r);

/* Makes this node's view of topics, partitions and producer files at least
 * as new as the metadata quorum's at the call (a cluster's read barrier,
 * bounded by about a second; a no-op on a single node). Look-ups that miss
 * call it themselves; listings call it first. */
void rep_sync(struct rep *r);

/* 1 in a cluster when this node has known no metadata quorum leader for
 * node_timeout_ms (cut off from the majority): metadata changes cannot
 * commit, so callers refuse them early with ENOTCONN. */
int rep_quorum_lost(struct rep *r);

/* 1 in a cluster while this node has not caught up with the metadata quorum
 * since it started and knows no quorum leader now: it does not know its
 * topics yet (a name it misses may well exist). */
int rep_metadata_unknown(struct rep *r);

/* One line per node for .cluster/nodes: fills at most max entries. */
struct rep_node_info {
	uint16_t id;
	char address[80];
	const char *state;   /* "up", "down" */
	const char *role;    /* "leader", "follower" (of the metadata quorum) */
};
size_t rep_nodes(struct rep *r, struct rep_node_info *out, size_t max);

/* A fresh producer id for an open producer file (idempotent appends), or -1
 * when no block of ids could be reserved (the file writes without one). */
int64_t rep_new_producer_id(struct rep *r);

/* ---- topics ------------------------------------------------------------ */

/* 1 if name is a valid topic or group name: [A-Za-z0-9._-], 1..249 bytes,
 * not starting with '.'. */
int rep_name_valid(const char *name);

/* Creates a topic with the node defaults. -EINVAL (bad name), -EEXIST, -errno. */
int rep_topic_create(struct rep *r, const char *name) TFS_MUST_CHECK;

/* Deletes a topic and its data on every node. -ENOENT. */
int rep_topic_delete(struct rep *r, const char *name) TFS_MUST_CHECK;

/* A reference to a live topic, or NULL. */
struct rep_topic *rep_topic_get(struct rep *r, const char *name);
struct rep_topic *rep_topic_get_id(struct rep *r, uint64_t id);
void rep_topic_put(struct rep_topic *t);
/* Adds a reference to a topic the caller already holds one to; returns t. */
struct rep_topic *rep_topic_hold(struct rep_topic *t);

/* Calls fn for every live topic (under a read lock: fn must not call back
 * into topic create/delete). Stops early if fn returns non-zero. */
void rep_topic_foreach(struct rep *r, int (*fn)(void *ctx, struct rep_topic *t),
                       void *ctx);

uint64_t rep_topic_id(const struct rep_topic *t);
const char *rep_topic_name(const struct rep_topic *t);
int rep_topic_deleted(const struct rep_topic *t);
uint32_t rep_topic_partition_count(struct rep_topic *t);
struct rep_partition *rep_topic_partition(struct rep_topic *t, uint32_t p);

/* Effective settings (node defaults overlaid with the topic's overrides). */
void rep_topic_config(struct rep_topic *t, struct topic_config *eff);

/* Changes the keys in changes->set_mask, returns the keys in `cleared` to the
 * node default, after checking the result (partitions only grow,
 * min_insync <= replication, replication <= nodes). Adds partitions as
 * needed. On refusal nothing changes: -EINVAL with the reason in err. */
int rep_topic_set_config(struct rep_topic *t, const struct topic_config *changes,
                         uint32_t cleared, char *err, size_t errlen) TFS_MUST_CHECK;
/* The same checks without changing anything: 0 if set_config would accept. */
int rep_topic_check_config(struct rep_topic *t, const struct topic_config *changes,
                           uint32_t cleared, char *err, size_t errlen) TFS_MUST_CHECK;

/* ---- producer files ---------------------------------------------------- */

/* Owner and permission bits of a producer file (kept like any file's). */
struct rep_pfile_attr {
	uint32_t mode; /* permission bits only (07777) */
	uint32_t uid, gid;
};

/* Names are any byte string without '/' or NUL, 1..255 bytes. */
int rep_pfile_create(struct rep_topic *t, const char *name, const struct rep_pfile_attr *attr,
                     uint32_t *id) TFS_MUST_CHECK;
int rep_pfile_get_attr(struct rep_topic *t, uint32_t id, struct rep_pfile_attr *out);
/* Changes owner and mode (persisted). -ENOENT if the file is gone. */
int rep_pfile_set_attr(struct rep_topic *t, uint32_t id,
                       const struct rep_pfile_attr *attr) TFS_MUST_CHECK;
/* 0 and *id if present, else -ENOENT. */
int rep_pfile_lookup(struct rep_topic *t, const char *name, uint32_t *id);
/* Copies the name of file id into buf; -ENOENT if it is gone. */
int rep_pfile_name(struct rep_topic *t, uint32_t id, char *buf, size_t size);
int rep_pfile_unlink(struct rep_topic *t, const char *name) TFS_MUST_CHECK;
/* Renames within the topic; replaces an existing target (like rename(2)). */
int rep_pfile_rename(struct rep_topic *t, const char *from, const char *to) TFS_MUST_CHECK;
/* Calls fn(ctx, id, name) for every producer file, in creation order. */
void rep_pfile_foreach(struct rep_topic *t,
                       int (*fn)(void *ctx, uint32_t id, const char *name), void *ctx);

/* ---- partitions -------------------------------------------------------- */

/* Produce: appends the records as one batch on the leader, then commits
 * (advances the high watermark) as far as the topic's acks policy allows.
 * Returns once the leader has appended. -EROFS (sticky), -ENOSPC,
 * -ENOTCONN (fewer in-sync replicas than min_insync with acks: all), -errno. */
/* Whether this node's disk has room for about `bytes` more of t's data
 * (0, or -ENOSPC): a write that goes to several partitions asks first, so a
 * full disk refuses it whole instead of after its first partitions. A
 * cluster node answers 0 (its appends fail, or not, at their leaders). */
int rep_topic_room(struct rep_topic *t, uint64_t bytes) TFS_MUST_CHECK;

int rep_produce(struct rep_partition *p, const struct ls_rec *recs, uint32_t n,
                const struct ls_producer *prod, struct ls_append_result *res) TFS_MUST_CHECK;

/* What one open file appended to one partition, for its commit: the end
 * (last offset + 1) of its latest append in each leader epoch it appended
 * in, oldest first. A record is named by its offset and the leader epoch of
 * its batch (one leader per epoch): a leader that was cut off or paused and
 * appended after its successor took over has its records truncated away,
 * and its successor's records take their offsets at a newer epoch, so "the
 * high watermark passed the offset" alone would call them committed.
 * Zero-initialise; nothing to free. */
#define REP_MARKS_MAX 4
struct rep_marks {
	struct rep_mark {
		int64_t end;
		int32_t epoch;
	} m[REP_MARKS_MAX];
	uint8_t n;
	uint8_t lost;  /* an append is known gone: the next commit fails */
};

/* Records an append of rep_produce (res) in mk. Older epochs' marks that
 * are settled (committed, or gone) are dropped on the way; a cluster node
 * only (a single node's appends commit as they land). */
void rep_marks_add(struct rep_partition *p, struct rep_marks *mk,
                   const struct ls_append_result *res);

/* Returns once the appends in mk are committed under the topic's acks
 * policy and everything appended is durable on this node (fsync), then
 * empties mk. -EIO if they could not be (mk is kept). */
int rep_partition_commit(struct rep_partition *p, struct rep_marks *mk) TFS_MUST_CHECK;

/* The same without the fsync (what close() waits for): with acks: all, until
 * the in-sync replicas have the appends in mk, still at the leader epochs
 * they were appended at. -EIO if they did not within replica_wait_ms, or if
 * a new leader's truncation took them away. */
int rep_partition_wait_acked(struct rep_partition *p, struct rep_marks *mk) TFS_MUST_CHECK;

/* The local replica's log, for readers. Valid while the topic ref is held. */
struct ls_partition *rep_partition_log(struct rep_partition *p);

struct rep_counters {
	uint64_t records_in, bytes_in, records_out, bytes_out;
};
/* Counters of this partition on this node (relaxed atomics). */
struct rep_counters *rep_partition_counters(struct rep_partition *p);

struct rep_partition_state {
	uint32_t partition;
	uint16_t leader;
	uint16_t replicas[16];
	uint32_t nreplicas;
	uint16_t isr[16];
	uint32_t nisr;
	int32_t leader_epoch;
	struct ls_partition_info log;
};
void rep_partition_state(struct rep_partition *p, struct rep_partition_state *st);

#endif
