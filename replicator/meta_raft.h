/*
 * meta_raft.h - the metadata quorum: meta.c's state machine replicated by
 * libraft (0.22, the legacy raft_io/raft_fsm API) among cluster.voters.
 *
 * Two layers:
 *
 *   struct meta_raft_fsm  the libraft FSM over a struct meta_state (apply,
 *                         snapshot, restore) plus the proposals of this node
 *                         waiting for their result. Works with any struct
 *                         raft: raft_uv below, raft_fixture in the unit tests.
 *   struct meta_raft      one node: meta_raft_fsm + raft_uv on the caller's
 *                         libuv loop and data directory, libraft's TCP
 *                         transport or the caller's (the seam for the
 *                         transport sharing the node port), bootstrap from the
 *                         voters, a submit API for any thread, and the
 *                         leadership as atomics.
 *
 * A proposal's life (all on the loop thread except meta_raft_submit):
 *
 *   meta_raft_submit ──queue + uv_async_send──> meta_raft_fsm_propose
 *     ──raft_apply──> (log, quorum) ──fsm apply on every node──> meta_apply
 *     ──this node's apply finds its (origin, seq)──> result kept
 *     ──raft's apply callback──> done(ctx, rc, result)
 *
 * Invariants:
 *  1. libraft is not thread-safe: raft, the FSM callbacks, meta_raft_fsm_propose
 *     and every done callback run on the loop thread. The state is written
 *     only there, under the write lock; other threads read it through
 *     meta_raft_fsm_read (read lock).
 *  2. fsm->apply returns 0 for every command, refused or not; the refusal
 *     travels in the result. A non-zero return leaves libraft's last_applied
 *     where it was and the same entry is applied again at a later commit, so
 *     it is returned only for -ENOMEM from meta_apply (RAFT_NOMEM; the state
 *     is untouched): this node pauses rather than skip and diverge.
 *  3. A proposal's done callback is called exactly once: with meta_apply's
 *     code once applied, or an error (see meta_raft_done_cb) if it was not.
 *  4. Entry and snapshot buffers are raft_malloc()ed and belong to libraft
 *     once handed over: raft_apply is called only on a leader, and after it
 *     the entry is libraft's whatever it returns (libraft 0.22 frees it on
 *     a failed disk append); snapshot buffers once snapshot returned 0;
 *     restore takes the buffer (raft_free) only when it succeeds.
 */
#ifndef TFS_META_RAFT_H
#define TFS_META_RAFT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <raft.h>
#include <raft/uv.h>

#include "meta.h"

/* The end of a proposal. rc is meta_apply's code (0, or a refusal the same
 * on every node; res says why), or, when it was not applied:
 *   REP_ENOTLEADER  not appended: this node does not lead (ask the leader)
 *   REP_ENOQUORUM   appended, then leadership was lost: outcome unknown
 *                   (look at the state once a leader exists, or retry an
 *                   idempotent command)
 *   -ECANCELED      the node is closing;  -ENOMEM, -EIO, -ENOSPC
 * res is never NULL. Runs on the loop thread. */
typedef void (*meta_raft_done_cb)(void *ctx, int rc, const struct meta_result *res);

/* Told after each command is applied on this node (rc as meta_apply's) and
 * after a snapshot replaced the whole state. Loop thread, no lock held. */
struct meta_raft_hooks {
	void (*applied)(void *ctx, const struct meta_cmd *c, int rc,
	                const struct meta_result *res);
	void (*restored)(void *ctx);
	void *ctx;
};

struct meta_raft_pending;

struct meta_raft_fsm {
	struct raft_fsm raft_fsm;      /* give &raft_fsm to raft_init/raft_fixture_grow */
	uint16_t node_id;              /* the raft id of the node this FSM runs on */
	pthread_rwlock_t lock;         /* guards state */
	struct meta_state state;
	struct meta_raft_hooks hooks;
	uint64_t next_seq;
	struct meta_raft_pending *pending;  /* this node's proposals, not yet done */
	uint64_t applied, refused;     /* counters (loop thread) */
	bool stalled;                  /* the last apply ran out of memory (retried) */
	struct meta_cmd scratch;       /* decode buffer (loop thread) */
};

/* Where a process starts numbering its proposals: random below 2^61, so
 * the (origin, seq) tags of a node's earlier runs, whose entries are applied
 * again after a restart, never name one of this run's proposals (a counter
 * from 1 took their old results: a replayed ALLOC_PIDS handed out producer
 * ids already used, and new writes were dropped as retries). */
uint64_t meta_seq_seed(void);

/* An FSM with an empty state for node node_id. hooks may be NULL. */
int meta_raft_fsm_init(struct meta_raft_fsm *f, uint16_t node_id, const struct meta_raft_hooks *hooks)
	TFS_MUST_CHECK;
/* Frees the state. The raft instance using f must be closed already (its
 * close callback fired), so no proposal is left. */
void meta_raft_fsm_close(struct meta_raft_fsm *f);

/* Proposes c on raft r (whose FSM is f), loop thread only. With c->seq == 0,
 * c->origin and c->seq are set here (this node, the FSM's own counter); a
 * caller that sets c->seq keeps its (origin, seq) tag, which must be unique
 * (replicator/cluster.c forwards other nodes' proposals this way and uses
 * seqs with the top bit set, which the FSM's counter never reaches). Returns 0 and later calls done exactly once, or
 * returns an error (REP_ENOTLEADER, -ENOMEM, -EINVAL for an unencodable
 * command, ...) and never calls done. */
int meta_raft_fsm_propose(struct meta_raft_fsm *f, struct raft *r, const struct meta_cmd *c,
                     meta_raft_done_cb done, void *ctx) TFS_MUST_CHECK;

/* Calls fn with the state under the read lock (any thread; fn must not
 * block or call into meta_raft). */
void meta_raft_fsm_read(struct meta_raft_fsm *f, void (*fn)(void *ctx, const struct meta_state *s),
                   void *ctx);

/* The errno-style code for a libraft code (RAFT_NOTLEADER -> REP_ENOTLEADER,
 * RAFT_LEADERSHIPLOST -> REP_ENOQUORUM, RAFT_NOMEM -> -ENOMEM, ...). */
int meta_raft_errno(int raft_rc);

/* ---- one node on raft_uv -------------------------------------------------- */

struct meta_raft_voter {
	uint16_t id;
	char address[META_ADDR_MAX];   /* dotted-quad IPv4 "A.B.C.D:PORT" (libraft) */
};

struct meta_raft_options {
	uint16_t node_id;
	const char *address;           /* this node, "A.B.C.D:PORT" */
	const char *dir;               /* raft's data directory; must exist */
	const struct meta_raft_voter *voters;  /* cluster.voters, the same on every node; */
	unsigned nvoters;                 /* 0: this node alone (a quorum of one) */
	struct uv_loop_s *loop;
	/* NULL: libraft's TCP transport listening on address. Otherwise the
	 * caller's, initialised, and released by the caller after close. */
	struct raft_uv_transport *transport;
	unsigned election_ms;          /* 0: libraft's 1000 */
	unsigned heartbeat_ms;         /* 0: libraft's 100 */
	unsigned snapshot_threshold;   /* entries between snapshots; 0: 1024 */
	unsigned snapshot_trailing;    /* entries kept after one; 0: 128 */
	struct meta_raft_hooks hooks;
};

struct meta_raft;

/* Starts the node on the loop thread (or before the loop runs): raft_uv on
 * dir, bootstrap from the voters (an initialised dir, RAFT_CANTBOOTSTRAP, is
 * fine: its log and snapshots are replayed), raft_start. Returns 0 and *out,
 * or a negative errno with a log line; after a failure some memory may be
 * released only once the loop runs. */
int meta_raft_start(const struct meta_raft_options *o, struct meta_raft **out)
	TFS_MUST_CHECK;

/* Closes the node (loop thread): queued submissions end with -ECANCELED,
 * proposals in flight with their error; done(ctx) is called once everything
 * is released (m is freed then). done may be NULL. */
void meta_raft_close(struct meta_raft *m, void (*done)(void *ctx), void *ctx);

/* Proposes c from any thread: c is copied and proposed on the loop thread;
 * done is called there exactly once (meta_raft_done_cb). Returns 0, or -ECANCELED
 * (closing) / -ENOMEM without calling done. */
int meta_raft_submit(struct meta_raft *m, const struct meta_cmd *c, meta_raft_done_cb done,
                     void *ctx) TFS_MUST_CHECK;

/* If this node leads the quorum, hands the leadership to the most
 * up-to-date voter (a node stopping cleanly: the others need not wait an
 * election timeout to notice). Any thread; returns at once. */
void meta_raft_hand_over(struct meta_raft *m);

/* Leadership as last seen on the loop thread (updated every heartbeat and
 * after every apply). Any thread. */
bool meta_raft_is_leader(struct meta_raft *m);
/* The leader's id (0 if unknown) and, if addr, its address. Any thread. */
uint16_t meta_raft_leader(struct meta_raft *m, char *addr, size_t addrlen);

/* libraft's last applied and commit indexes (loop thread only). While an
 * applied hook runs, the entry being applied is last_applied + 1. */
uint64_t meta_raft_last_applied(struct meta_raft *m);
uint64_t meta_raft_commit_index(struct meta_raft *m);

/* The node's FSM (meta_raft_fsm_read for the state). */
struct meta_raft_fsm *meta_raft_fsm(struct meta_raft *m);

#endif
