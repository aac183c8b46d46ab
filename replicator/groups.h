/*
 * groups.h - consumer groups: the group coordinator as the daemon sees it.
 *
 * A group belongs to a topic. Each open cursor/pending file is one member.
 * The coordinator divides the topic's partitions among the members (sticky,
 * cooperative: a join or leave moves only the partitions it must, and a
 * partition changes hands only at a commit point of its old member), hands
 * out records per member in offset order per partition, and keeps the
 * group's committed offsets durably.
 *
 * Delivery and commit (INTERFACE.md section 6):
 *
 *   rep_member_take_bulk                  (repeat: the records of one read,
 *                                          rendered into the read's buffer;
 *                                          or rep_member_peek ──> _take, one
 *                                          record at a time)
 *        ... the read returns them to the process ...
 *   rep_member_commit                     (the same file reads again)
 *   rep_member_save                       (or it is closed by a process that
 *                                          closes it or exits normally)
 *   rep_member_leave(m, commit=0)         (the process died from a signal:
 *                                          what it took since the last commit
 *                                          is delivered again to the group)
 *
 * Positions: a member reads partition p from the group's committed offset of
 * p plus what it has taken since its last commit. A committed offset below
 * the partition's start (retention) reads from the start. A group with no
 * committed offset for p starts at the partition's start offset ("earliest")
 * or at its end offset when the group was created ("latest"), per the
 * node's groups.start.
 *
 * Rebalance: on join, leave, or a change of the partition count the target
 * assignment is computed (every member gets floor(P/M) or ceil(P/M)
 * partitions, members beyond P get none, current owners keep what they can).
 * A partition that must move is first marked revoking on its old owner,
 * which takes nothing more from it; at the old owner's next commit (or its
 * leave) it is released and given to its new owner, whose waker is called.
 * So no record is delivered twice in normal operation.
 *
 * Durability: committed offsets and group creation/deletion are appended to
 * an internal compacted log (DATA/__groups/, a logstore partition: key
 * "<topic id>/<group>/<partition>", value the offset in decimal; key
 * "<topic id>/<group>" value "created" or a tombstone when deleted) and
 * replayed at start-up. Appends are not fsynced one by one (the background
 * flush syncs them), so a crash of the whole machine can only move a group
 * back (records delivered again), never forward (records lost).
 *
 * Cluster mode (cluster.h, rep_cluster(r) != NULL at rep_groups_open): the
 * groups are the metadata's, one node coordinates each, members on other
 * nodes reach it through group_remote.c (a member call may then wait on the
 * network, bounded by the request timeout: never call one on the transport
 * loop thread), offsets are durable in the metadata quorum instead of
 * DATA/__groups, and wakers run on group_remote.c's waker thread.
 *
 * Threading: every function may be called from any thread. Wakers are
 * called without coordinator locks held, from whatever thread caused the
 * event (an append's notifier thread, a leave, a commit, a reset).
 */
#ifndef TFS_GROUPS_H
#define TFS_GROUPS_H

#include <stddef.h>
#include <stdint.h>

#include "../logstore/logstore.h"
#include "replicator.h"

struct rep_group;
struct rep_member;

enum rep_group_start { REP_GROUP_EARLIEST = 0, REP_GROUP_LATEST = 1 };

/* ---- the coordinator (one per node for now) ------------------------------ */

/* Opens the coordinator on rep's data directory: replays DATA/__groups/.
 * Groups of topics that no longer exist are dropped. */
int rep_groups_open(struct rep *r, enum rep_group_start start) TFS_MUST_CHECK;
/* Frees every group and member (members still joined leave WITHOUT commit);
 * no group or member pointer may be used afterwards. Idempotent; rep_close()
 * calls it too if the daemon did not. */
void rep_groups_close(struct rep *r);

/* Makes every offsets append so far durable (fsync of DATA/__groups/, only if
 * something was appended since the last call; a failure is logged). Called
 * by the housekeeping flush; rep_groups_close() syncs too. */
void rep_groups_sync(struct rep *r);
/* Compacts DATA/__groups/ (newest record per key). Called with retention. */
void rep_groups_compact(struct rep *r);

/* Called by the replicator when partition p of topic t has new committed
 * records (from the notifier thread): wakes members assigned p. */
void rep_groups_partition_grew(struct rep *r, uint64_t topic_id, uint32_t p);
/* Called after a topic's partition count grew: rebalances its groups. */
void rep_groups_topic_changed(struct rep *r, struct rep_topic *t);
/* Called when a topic is deleted: forgets its groups (tombstones). */
void rep_groups_topic_deleted(struct rep *r, uint64_t topic_id);

/* Lag per group for .cluster/metrics: calls fn for every group partition. */
void rep_groups_foreach_lag(struct rep *r,
                            void (*fn)(void *ctx, const char *topic, const char *group,
                                       uint32_t partition, int64_t committed, int64_t lag),
                            void *ctx);

/* ---- groups -------------------------------------------------------------- */

/* Creates group `name` of topic t. -EINVAL (name not [A-Za-z0-9._-]{1,249}
 * or starting with '.'), -EEXIST. */
int rep_group_create(struct rep_topic *t, const char *name) TFS_MUST_CHECK;

/* A reference to group `name` (created first if create != 0), or
 * -ENOENT/-EINVAL. Release with rep_group_put(). */
int rep_group_get(struct rep_topic *t, const char *name, int create,
                  struct rep_group **out) TFS_MUST_CHECK;
/* By id (ids are per topic, never reused while the daemon runs). */
struct rep_group *rep_group_get_id(struct rep_topic *t, uint32_t id);
void rep_group_put(struct rep_group *g);

/* Deletes the group and its offsets: -EBUSY if it has members, -ENOENT. */
int rep_group_delete(struct rep_topic *t, const char *name) TFS_MUST_CHECK;

/* Calls fn for each group of t, in creation order; stops on non-zero. */
void rep_group_foreach(struct rep_topic *t,
                       int (*fn)(void *ctx, uint32_t id, const char *name), void *ctx);

uint32_t rep_group_id(const struct rep_group *g);
const char *rep_group_name(const struct rep_group *g);
int rep_group_deleted(const struct rep_group *g);

/* One row of the offsets file. committed is the offset the group will read
 * next (resolved: never -1, never below the partition start), end the high
 * watermark, lag = end - committed. */
struct rep_group_offset {
	uint32_t partition;
	int64_t committed;
	int64_t end;
	int64_t lag;
};
/* Fills at most max rows (one per partition, in order); returns the count. */
size_t rep_group_offsets(struct rep_group *g, struct rep_group_offset *out, size_t max);

/* Moves committed offsets. Members drop what they took but did not commit
 * and read from the new positions on their next read (their wakers are
 * called). partition < 0: every partition.
 *   REP_RESET_EARLIEST: start offset; REP_RESET_LATEST: high watermark;
 *   REP_RESET_OFFSET: `value` (clamped to [start, high watermark]);
 *   REP_RESET_TIME: first offset with timestamp >= value (ms since epoch).
 * -EINVAL for a partition that does not exist. */
enum rep_reset { REP_RESET_EARLIEST, REP_RESET_LATEST, REP_RESET_OFFSET, REP_RESET_TIME };
int rep_group_reset(struct rep_group *g, enum rep_reset how, int64_t partition,
                    int64_t value) TFS_MUST_CHECK;

/* ---- members ------------------------------------------------------------- */

/* Joins g as a new member (triggers a rebalance). waker(ctx) is called
 * whenever the member may have something new to read: records arrived on
 * one of its partitions, a partition was assigned to it, offsets were
 * reset. *out is freed by rep_member_leave(). */
int rep_member_join(struct rep_group *g, void (*waker)(void *ctx), void *ctx,
                    struct rep_member **out) TFS_MUST_CHECK;

/* Leaves: with commit != 0 commits what it took first (normal close); with
 * commit == 0 those records go back to the group. Its partitions are
 * released and reassigned. Frees m. If m's waker is running in another
 * thread, waits for it to return (so no waker runs after leave returns):
 * never call it while holding a lock that m's waker takes. */
void rep_member_leave(struct rep_member *m, int commit);

/* One record for the member. Pointers stay valid until the next peek/take/
 * commit/leave on the same member. */
struct rep_delivery {
	uint32_t partition;
	int64_t offset;
	int64_t timestamp_ms;
	const void *key;        /* NULL: no key */
	uint32_t key_len;
	const void *value;      /* NULL: null value */
	uint32_t value_len;
};

/* The next record the member would take, without taking it: 1 and *d, 0 if
 * nothing is ready (caught up, or no partition assigned), or -errno.
 * Partitions are served round-robin, a record at a time, so one busy
 * partition does not starve the others. */
int rep_member_peek(struct rep_member *m, struct rep_delivery *d) TFS_MUST_CHECK;

/* Takes the record the last peek returned (it becomes part of the current
 * delivery, committed by the next rep_member_commit). */
void rep_member_take(struct rep_member *m);

/* What rep_member_take_bulk took. */
struct rep_bulk {
	uint32_t partition;     /* the one partition the records came from */
	uint32_t records;       /* records taken (>= 1 when it returns 1) */
	size_t bytes;           /* bytes written to buf */
	int64_t first_offset;   /* offset of the first record taken */
	int64_t next_offset;    /* the partition's position after them */
	size_t need;            /* -EMSGSIZE: the length of the next record */
};

/* Takes whole records for one read: from ONE partition, the next one in
 * round-robin order that has records, in offset order, as many as fit in
 * size bytes and at most max_records (0: no limit), each rendered into buf
 * as the log's view renders it: [key sep] value '\n'. The next call starts
 * at the partition after this one, so consecutive reads take turns.
 * Returns 1 and *out; 0 if nothing is ready; -EMSGSIZE if the next record
 * is longer than size (nothing taken; out->need is its length: call again
 * with a buffer that large); or -errno. Taken records are part of the
 * current delivery, like rep_member_take's. One group-lock round trip per
 * call, whatever the number of records. */
int rep_member_take_bulk(struct rep_member *m, void *buf, size_t size, uint32_t max_records,
                         char sep, struct rep_bulk *out) TFS_MUST_CHECK;

/* 1 if a read would return a record now, 0 if not, or -errno; unlike
 * rep_member_peek, it leaves nothing pending (a peeked record delays the
 * handover of its partition until the next take or commit). */
int rep_member_ready(struct rep_member *m) TFS_MUST_CHECK;

/* Commits everything taken since the last commit, then releases partitions
 * that were revoking. Returns 0 or -errno (nothing is lost on error: the
 * records will be delivered again). */
int rep_member_commit(struct rep_member *m) TFS_MUST_CHECK;

/* rep_member_commit at close: in a cluster it also waits, at most the
 * request timeout, until the metadata quorum holds the group's committed
 * offsets, so the coordinator's node dying right after cannot deliver these
 * records again (a time-out is logged, not returned). One node: the same as
 * rep_member_commit. */
int rep_member_save(struct rep_member *m) TFS_MUST_CHECK;

/* Drops everything taken since the last commit: the member reads those
 * records again (used when a killed process's file is still open elsewhere). */
void rep_member_rewind(struct rep_member *m);

/* Partitions currently assigned to m (for tests and .cluster views): fills
 * at most max, returns the count. */
size_t rep_member_assignment(struct rep_member *m, uint32_t *out, size_t max);

#endif
