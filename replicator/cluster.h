/*
 * cluster.h - one node of a multi-node cluster (issue 4), as the modules of
 * replicator/ see it. fs/ never includes this file; it reaches the cluster
 * through replicator.h and groups.h only.
 *
 * A node runs cluster mode when cluster.voters is configured. local.c stays
 * the owner of topics, partitions and their logs (DATA/ctopics/<topic id>/<p>/
 * in cluster mode), but its view follows the metadata quorum:
 *
 *   fs (any thread) ──rep_topic_create etc──> cluster_propose
 *       ──this node leads raft? meta_raft_submit : TF_META_PROPOSE to the leader──>
 *       raft log ──applied on every node──> cluster.c's applied hook (loop thread)
 *       ──> local.c reconciles its topics with the state (rep_cluster_reconcile)
 *           ──> replica_add / replica_update / replica_remove     (replica.c)
 *           ──> rep_groups_meta_changed                           (groups.c)
 *       ──the proposer's own apply of its (origin, seq)──> cluster_propose returns
 *
 * So when cluster_propose returns 0 the change is already in this node's view.
 *
 * Modules on top of the core, each owning its frame types (TF_*):
 *   cluster.c   the core: transport + raft start/stop, proposals, node
 *               registration and heartbeats, the controller on the raft leader
 *               (node deaths, leader elections, group coordinator moves)
 *   replica.c   data replication: fetch, high watermark, acks, in-sync set
 *               reports, truncation by leader epoch, produce forwarding
 *   groups.c    + group frames: members on any node, one coordinator per group
 *
 * Threading: the transport's loop thread runs raft, every frame handler, the
 * applied hook and the timers. cluster_propose blocks and must never be
 * called on the loop thread; cluster_submit is for the loop thread (and any
 * other thread) when nobody waits for the outcome.
 */
#ifndef TFS_CLUSTER_H
#define TFS_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meta.h"
#include "transport.h"

struct cluster;
struct rep;

/* Application frame types (transport.h TR_TYPE_APP_MIN..). Each module
 * refuses malformed payloads with REP_EPROTO (the connection is closed and
 * logged). Payload layouts are documented next to each module's encoder. */
enum tf_type {
	/* cluster.c */
	TF_META_PROPOSE = 16,  /* request: an encoded meta_cmd; response: i32 rc,
	                          i64 value, u16 len + err */
	TF_HEARTBEAT = 17,     /* one-way node -> raft leader: u16 node, u64 incarnation */
	TF_META_BARRIER = 18,  /* request (empty) -> u64 the leader's commit index */
	/* replica.c: 32..47 */
	TF_FETCH = 32,
	TF_EPOCH_END = 33,     /* OFFSET_FOR_EPOCH */
	TF_PRODUCE = 34,
	TF_REPLICA_MAX = 47,
	/* groups.c: 48..63 */
	TF_GROUP_MIN = 48,
	TF_GROUP_MAX = 63,
};

struct cluster_voter {
	uint16_t id;
	char address[META_ADDR_MAX];             /* "a.b.c.d:port" */
};

/* Node-level cluster settings (node.yaml, section cluster:). */
struct cluster_options {
	uint16_t node_id;
	char listen[META_ADDR_MAX];              /* "a.b.c.d:port" */
	struct cluster_voter voters[64];         /* cluster.voters */
	unsigned nvoters;
	unsigned replica_lag_ms;     /* a follower behind this long leaves the isr [10000] */
	unsigned replica_wait_ms;    /* acks: all waits this long for the isr [15000] */
	unsigned node_timeout_ms;    /* no heartbeat this long: node down [3000] */
	unsigned snapshot_entries;   /* metadata log entries between snapshots [4096] */
	unsigned request_timeout_ms; /* one node-to-node request [5000] */
	unsigned leader_rebalance_ms; /* preferred replica in sync this long: it
	                                 leads again (replica.c) [0: never] */
};

/* ---- the core (cluster.c) --------------------------------------------------- */

/* Life, on the owner's thread (local.c): open (no thread, no socket) in
 * rep_open; start (transport, raft, replication, timers) in rep_start, after
 * daemonising; wait_ready until this node is registered in the state (0 or
 * -ETIMEDOUT: the quorum may still be forming); close in rep_close. */
int cluster_open(struct rep *r, const struct cluster_options *o, const char *data_dir,
                 struct cluster **out) TFS_MUST_CHECK;
int cluster_start(struct cluster *c) TFS_MUST_CHECK;
int cluster_wait_ready(struct cluster *c, unsigned ms);
void cluster_close(struct cluster *c);
/* Read barrier: returns once this node has applied everything the quorum
 * had committed when it was called (bounded by ~1 s; a no-op on the loop
 * thread and on the quorum leader). For look-ups that miss: a name made on
 * another mount a moment ago is found. */
void cluster_sync(struct cluster *c);
/* The same, tried until it works or ms ran out (a quorum leader to ask may
 * not be known yet): 0 once this node has caught up with the quorum, else
 * -ETIMEDOUT. At start: a node restarted from its own (older) snapshot and
 * log knows an old state until then, in which it may coordinate groups or
 * lead partitions that moved while it was down. */
int cluster_catch_up(struct cluster *c, unsigned ms);
/* .cluster/nodes: every voter with its state (up/down) and quorum role. */
size_t cluster_nodes(struct cluster *c, struct rep_node_info *out, size_t max);
/* 1 if this node has known no quorum leader for node_timeout_ms: metadata
 * changes made here cannot commit now. */
int cluster_cut_off(struct cluster *c);
/* 1 once a read barrier has passed since start: the state applied is the
 * quorum's, not only what this node's own log and snapshot replayed. */
int cluster_caught_up(struct cluster *c);
/* A node stopping cleanly that leads the metadata quorum hands that
 * leadership to another voter first and waits at most ms for it: 0, or
 * -ETIMEDOUT (the others then elect one after their election timeout). */
int cluster_hand_over_quorum(struct cluster *c, unsigned ms);
/* 1 if this node knows a quorum leader now (metadata changes can commit). */
int cluster_quorum_known(struct cluster *c);

/* Proposes cmd through the quorum and waits until this node has applied it
 * (or until request_timeout_ms). Not on the loop thread. Returns meta_apply's
 * code (res->err says why on refusal; res may be NULL), or -ETIMEDOUT /
 * -ENOTCONN (no quorum reachable), -ECANCELED (closing). */
int cluster_propose(struct cluster *c, const struct meta_cmd *cmd,
                    struct meta_result *res) TFS_MUST_CHECK;

/* Fire and forget (any thread, the loop thread included): the outcome is
 * logged at debug level. 0 or -ENOMEM / -ECANCELED. */
int cluster_submit(struct cluster *c, const struct meta_cmd *cmd);

/* Like cluster_submit, but cb(ctx, rc) is called exactly once on the loop
 * thread with the outcome: meta_apply's code once applied on the quorum's
 * leader, or why it was not (REP_ENOTLEADER, REP_ENOQUORUM, -ETIMEDOUT,
 * -ECONNRESET, -ECANCELED: it may still have been, or be, applied). Any
 * thread; returns 0, or < 0 without calling cb. */
int cluster_submit_cb(struct cluster *c, const struct meta_cmd *cmd,
                      void (*cb)(void *ctx, int rc), void *ctx);

/* Calls fn with the metadata state under its read lock (any thread; fn must
 * not block or call into the cluster). */
void cluster_read(struct cluster *c, void (*fn)(void *ctx, const struct meta_state *s),
                  void *ctx);

struct tr_net *cluster_net(struct cluster *c);
struct rep *cluster_rep(struct cluster *c);
struct replica_set *cluster_replicas(struct cluster *c);
uint16_t cluster_node_id(const struct cluster *c);
const struct cluster_options *cluster_opts(const struct cluster *c);

/* 1 if node id is registered and alive in the metadata state. */
int cluster_node_alive(struct cluster *c, uint16_t id);

/* Milliseconds on a monotonic clock (timers and lag accounting). */
int64_t cluster_now_ms(void);

/* ---- data replication (replica.c) ------------------------------------------- */

struct replica_set;   /* every replicated partition of this node */
struct replica;       /* one partition on this node */
struct rep_partition;

/* Opens the replication layer of node c (before the net starts). */
int replica_set_open(struct cluster *c, struct replica_set **out) TFS_MUST_CHECK;
/* Stops fetchers and fails waiting produces with -ECANCELED. Call after the
 * net is stopped (no handler runs any more). Every replica must have been
 * removed. */
void replica_set_close(struct replica_set *rs);
/* Before stopping (not on the loop thread): hands every partition this node
 * leads to an in-sync follower fetching now (as a preferred-leader handoff:
 * no write lost or failed), waiting at most ms; returns how many it could
 * not hand over in time (0: none left). Leaders stay handed over. */
int replica_set_drain(struct replica_set *rs, unsigned ms);

/* Frames of types TF_FETCH..TF_REPLICA_MAX (loop thread). */
int replica_on_frame(struct replica_set *rs, const struct tr_frame *f);

/* The local copy of a partition appears (loop thread, from reconciliation):
 * p is local.c's partition, log its open log (both outlive the replica:
 * replica_remove comes first). Every node holds a copy of every partition:
 * the leader appends; replicas in mp->replicas follow and count for the
 * in-sync set; other nodes observe (they fetch like followers so reads are
 * served locally, and never count for the in-sync set). */
struct replica *replica_add(struct replica_set *rs, struct rep_partition *p,
                            uint64_t topic_id, uint32_t index, struct ls_partition *log,
                            const struct meta_partition *mp);
/* Leader, epoch, replicas or isr changed (loop thread). */
void replica_update(struct replica *rp, const struct meta_partition *mp);
/* The partition goes away (topic deleted, node closing); loop thread. After
 * it returns nothing touches p or its log. */
void replica_remove(struct replica *rp);
/* Wakes the FUSE threads waiting in rp (its topic was deleted: they look at
 * rep_partition_gone and leave with -ENOENT). Any thread. */
void replica_wake(struct replica *rp);

/* FUSE threads (never the loop thread): replicator.h's rep_produce,
 * rep_partition_commit and rep_partition_state in cluster mode. acks and
 * min_insync come from the topic's effective settings. */
int replica_produce(struct replica *rp, const struct ls_rec *recs, uint32_t n,
                    const struct ls_producer *prod, enum rep_acks acks, uint32_t min_insync,
                    struct ls_append_result *res) TFS_MUST_CHECK;
int replica_commit(struct replica *rp, enum rep_acks acks, uint32_t min_insync,
                   struct rep_marks *mk) TFS_MUST_CHECK;
/* replica_commit without the fsync: what close() waits for. */
int replica_wait_acked(struct replica *rp, enum rep_acks acks, uint32_t min_insync,
                       struct rep_marks *mk) TFS_MUST_CHECK;
/* rep_marks_add in cluster mode. */
void replica_marks_add(struct replica *rp, struct rep_marks *mk,
                       const struct ls_append_result *res);
void replica_state(struct replica *rp, struct rep_partition_state *st);

/* ---- what local.c offers the modules (implemented in local.c) --------------- */

struct cluster *rep_cluster(struct rep *r);   /* NULL on a single node */
/* The partition's high watermark moved (new committed data): wakes readers
 * (tail -f, cursors) through local.c's notifier. Any thread. */
void rep_partition_hw_moved(struct rep_partition *p);
/* 1 once p's topic is deleted (its replica stays until no FUSE call is in
 * it): calls into it end with -ENOENT. Any thread. */
int rep_partition_gone(struct rep_partition *p);
/* The name of p's topic (for log lines). Any thread. */
const char *rep_partition_topic_name(struct rep_partition *p);
/* Counters as rep_produce keeps them (records_in, bytes_in). */
void rep_partition_count_in(struct rep_partition *p, uint32_t records, uint64_t bytes);
/* Reconciles local.c's topics, partitions and producer files with the state
 * (loop thread, state read-locked by the caller). s == NULL (closing): removes
 * every replica (replica_remove) and keeps the topics for rep_close. */
void rep_cluster_reconcile(struct rep *r, const struct meta_state *s);
/* Periodic work of local.c on the loop thread (every few hundred ms). */
void rep_cluster_tick(struct rep *r);

/* ---- groups across nodes (groups.c) ----------------------------------------- */

/* Frames of types TF_GROUP_MIN..TF_GROUP_MAX (loop thread). */
int rep_groups_on_frame(struct rep *r, const struct tr_frame *f);
/* The metadata changed (loop thread, after local.c's reconciliation; the
 * state is read-locked by the caller): groups created, deleted or moved. */
void rep_groups_meta_changed(struct rep *r, const struct meta_state *s);

#endif
