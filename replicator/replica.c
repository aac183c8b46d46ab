/*
 * replica.c - data replication of one node (cluster.h, "data replication"):
 * Kafka's in-sync-replica model over the node-to-node transport.
 *
 * What it owns: for every local partition (struct replica) the role this node
 * plays, the high watermark (HW) it knows, and on a leader what it knows of
 * every replica's log; per leader node one fetch session (struct session)
 * that long-polls every partition this node follows from that leader; the
 * fetches other nodes have parked here; one tick timer on the loop thread.
 *
 * Roles, from the metadata (replica_add / replica_update):
 *
 *   mp->leader == self ───────────────> LEADER   appends (replica_produce,
 *                                                TF_PRODUCE), answers fetches,
 *                                                moves the HW, reports the isr
 *   self in mp->replicas ─────────────> FOLLOWER ┐ fetch from the leader;
 *   neither, mp->leader != 0 ─────────> OBSERVER ┘ observers never count for
 *                                                the isr or the HW
 *   mp->leader == 0 ──────────────────> OFFLINE  nothing moves
 *
 * A follower's (or observer's) way to a leader L at epoch E:
 *
 *   replica_update(new L or E) ──> NEED ──session_kick──> ASKING ──TF_EPOCH_END
 *   answer (epoch_end_done: ls_partition_truncate)──> FETCHING ──TF_FETCH
 *   answers (fetch_apply: ls_partition_append_batches_at, HW)──> FETCHING ...
 *   an error answer: held RETRY_MS, then again; "your offset is past my end":
 *   back to NEED.
 *
 * Invariants:
 *  1. The HW a node knows only moves forward (ls_partition_reset aside); on
 *     the leader it is min over the isr of each member's log end, a follower's
 *     log end being the fetch offset of its latest fetch (-1 until it fetched
 *     at this epoch, which holds the HW); on a follower it is
 *     min(leader's HW, own log end).
 *  2. Only a LEADER appends records of its own, and only under role_lock held
 *     for reading; a role change takes it for writing, so no append of an old
 *     leader lands after this node became a follower (whose truncation would
 *     race it).
 *  3. A follower truncates only by leader epochs (KIP-101 with KIP-279's
 *     refinement): to min(the leader's end of the largest epoch <= the
 *     follower's latest, the follower's own end of that epoch, its log end);
 *     never by the HW alone.
 *  4. A fetch answer is applied only if its partition, leader, epoch and fetch
 *     offset still match this node's (a truncation or metadata change in
 *     between makes it stale: dropped, fetched again).
 *  5. Forwarded produces carry producer id and sequence; the leader's
 *     ls_partition_append dedups a retry (res->duplicate), so a retried forward
 *     never appends twice. Without a producer id an ambiguous failure
 *     (-ECONNRESET, -ETIMEDOUT) is not retried: -EIO.
 *
 * Threading: the table of replicas, the sessions, parked fetches and the
 * timer belong to the loop thread (replica_add/update/remove/on_frame,
 * response callbacks, timers). FUSE threads (replica_produce/commit/state)
 * touch one replica through its mu + cv (and role_lock); no lock spans two
 * partitions. Lock order: role_lock, then mu. A FUSE thread inside a replica
 * counts in rp->users; replica_remove wakes every waiter (-ECANCELED) and
 * waits for them to leave before freeing.
 *
 * Wire formats (payloads of transport frames; integers big-endian, errors
 * are 0 or a negative code as i32). Every count and length is checked; a
 * payload that breaks the layout is REP_EPROTO (the connection closes). An
 * unknown topic or partition is an error code in the answer (-ENOENT).
 *
 * TF_FETCH request (follower -> leader):
 *   | bytes | field                                             |
 *   |-------|---------------------------------------------------|
 *   | 4     | max wait ms (<= 60000)                            |
 *   | 4     | n partitions (<= FETCH_MAX_PARTS)                 |
 *   | 33*n  | per partition:                                    |
 *   |   8   |   topic id                                        |
 *   |   4   |   partition                                       |
 *   |   4   |   leader epoch the follower believes              |
 *   |   8   |   fetch offset (the follower's log end)           |
 *   |   8   |   HW the follower knows                           |
 *   |   1   |   flags: bit 0 observer (never counts for the isr)|
 *
 * TF_FETCH response (same partitions, same order):
 *   | 4     | n partitions                                      |
 *   | per partition: 64 bytes, then the batches                 |
 *   |   8   |   topic id                                        |
 *   |   4   |   partition                                       |
 *   |   4   |   leader epoch (as asked)                         |
 *   |   8   |   fetch offset (as asked)                         |
 *   |   4   |   error: 0, REP_ENOTLEADER, -ESTALE (epoch        |
 *   |       |   mismatch), -ENOENT, LS_EOUTOFRANGE (offset      |
 *   |       |   below log start or past log end), -errno        |
 *   |   8   |   leader HW                                       |
 *   |   8   |   leader log start offset                         |
 *   |   8   |   view position of the log start                  |
 *   |   8   |   view position of the first batch                |
 *   |   4   |   batch bytes m (<= 1 MiB, more for one big batch)|
 *   |   m   |   whole v2 batches (ls_partition_read_batches_at) |
 *
 * TF_EPOCH_END request (OFFSET_FOR_EPOCH), 20 bytes:
 *   | 8 topic id | 4 partition | 4 leader epoch believed | 4 epoch asked |
 * response, 16 bytes:
 *   | 4 error | 4 epoch answered (largest <= asked the leader has, -1) |
 *   | 8 end offset of that epoch on the leader (-1: older than its log) |
 *
 * TF_PRODUCE request (forwarded by a non-leader):
 *   | bytes | field                                             |
 *   |-------|---------------------------------------------------|
 *   | 8     | topic id                                          |
 *   | 4     | partition                                         |
 *   | 4     | leader epoch believed (informational)             |
 *   | 8     | producer id (-1: none)                            |
 *   | 2     | producer epoch                                    |
 *   | 4     | base sequence                                     |
 *   | 1     | acks (0 leader, 1 all)                            |
 *   | 4     | min_insync                                        |
 *   | 4     | n records (1 .. PRODUCE_MAX_RECS)                 |
 *   | per record: 1 flags (bit 0 key, bit 1 value), 4 key length,   |
 *   |   key bytes, 4 value length, value bytes (absent: length 0)   |
 * response, 33 bytes:
 *   | 4 error | 8 base offset | 8 last offset | 8 view end | 1 duplicate |
 *   | 4 leader epoch of the batch holding them (-1: not known)          |
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../logstore/log.h"
#include "cluster.h"
#include "wire.h"

#define FETCH_WAIT_MS 500            /* a leader parks a fetch this long */
#define FETCH_PART_MAX (1u << 20)    /* batch bytes per partition per answer */
#define FETCH_TOTAL_MAX (8u << 20)   /* batch bytes per answer */
#define FETCH_MAX_PARTS 200000u
#define FETCH_REQ_HEAD 8u
#define FETCH_REQ_PART 33u
#define FETCH_RESP_PART 64u
#define EPOCH_REQ_LEN 20u
#define EPOCH_RESP_LEN 16u
#define PRODUCE_HEAD 39u
#define PRODUCE_RESP_LEN 33u
#define PRODUCE_MAX_RECS (1u << 20)
#define RETRY_MS 100                 /* back-off after an error */
#define STICKY_HOLD_MS 1000          /* back-off after a local write error */
#define TAKE_LOG_EVERY_MS 60000      /* a follower's append failures: a line per */
#define RESIGN_EVERY_MS 10000        /* a leader on a failing disk resigns at most once
                                        per (two full nodes would pass it to and fro) */
#define TICK_MS 50
#define ISR_EVERY_MS 250
#define ISR_RESUBMIT_MS 1000
#define COMMIT_SPREAD_MS 200         /* commit's best-effort wait for followers */
#define PARKED_MAX 1024
#define EPOCH_WALK_MAX 100000
#define HANDOFF_CATCHUP_MS 1000      /* the preferred leader's time to fetch our end */
#define HANDOFFS_MAX 4               /* handoffs in flight per node */

#define F_OBSERVER 0x01u
#define R_KEY 0x01u
#define R_VALUE 0x02u

enum role { ROLE_OFFLINE, ROLE_LEADER, ROLE_FOLLOWER, ROLE_OBSERVER };
enum follow { FOLLOW_NEED, FOLLOW_ASKING, FOLLOW_FETCHING };
enum timer_state { TIMER_NONE, TIMER_ACTIVE, TIMER_CLOSING };

/* The leader's view of one replica (peers[], under mu). */
struct peer {
	uint16_t node;
	int64_t end;                 /* fetch offset of its latest fetch; -1: none */
	int64_t known_hw;            /* the HW it said it knows; -1: none */
	int64_t caught_up_ms;        /* last time it had fetched up to our end */
	int64_t last_fetch_ms;
	int64_t end_at_last_fetch;   /* our log end at its previous fetch */
	int64_t isr_sent_ms;         /* last ISR command submitted about it */
	enum meta_cmd_type isr_sent_type;
	int32_t isr_sent_epoch;
};

struct replica {
	struct replica_set *rs;
	struct rep_partition *p;
	struct ls_partition *log;
	uint64_t topic_id;
	uint32_t index;
	struct replica *hnext;          /* rs->tab chain (loop thread) */

	pthread_rwlock_t role_lock;     /* invariant 2 */
	pthread_mutex_t mu;
	pthread_cond_t cv;              /* any change below */
	/* under mu (written on the loop thread, except as noted) */
	struct meta_partition mp;
	enum role role;
	uint64_t version;               /* +1 per metadata change */
	int64_t hw;                     /* invariant 1 (FUSE threads move it too) */
	struct peer peers[META_MAX_REPLICAS];
	unsigned npeers;
	unsigned users;                 /* FUSE threads inside */
	bool removed;
	bool handing;                   /* giving leadership to hand_to: no appends */
	bool epoch_behind;              /* leads at an epoch older than its log's
	                                   newest (a replay at start): no appends */
	char label[REP_NAME_MAX + 16];  /* "topic/partition" for log lines */
	bool store_failed;              /* as leader, its log refused a write (disk
	                                   full or failing): hand the leadership to
	                                   an in-sync follower (resign_check) */
	int64_t resign_next_ms;         /* no resigning before (RESIGN_EVERY_MS) */
	int32_t prefix_epoch;           /* a follower whose log is a prefix of its
	                                   leader's at this epoch (truncated by its
	                                   epoch answer); -1: not (yet) */
	int32_t ans_epoch;              /* that answer: epoch ans_epoch ends at */
	int64_t ans_end;                /* ans_end on the leader */

	/* handing leadership back to the preferred replica (loop thread only) */
	uint16_t hand_to;
	int32_t hand_epoch;
	uint32_t hand_seq;              /* matches a submission's answer */
	bool hand_sent;                 /* the leader change is out */
	int64_t hand_deadline;          /* for hand_to to catch up */
	int64_t hand_resend_ms;         /* send again (an answer said nothing) */
	int64_t pref_since_ms;          /* preferred replica in sync since; 0: not */
	int64_t hand_next_ms;           /* no handoff before (after one gave up) */
	int64_t handed_ms;              /* when it last went to hand_to; 0: never */
	int64_t leave_sent_ms;          /* stopping: asked to leave the isr then */
	int64_t take_logged_ms;         /* last "cannot take batches" line */
	unsigned take_failures;         /* fetched batches it could not append since */
	int64_t hold_ms;                /* in sync this long before a handoff */

	/* following (loop thread only) */
	uint16_t src;                   /* leader fetched from; 0: none */
	int32_t src_epoch;
	enum follow follow;
	uint32_t ask_seq;               /* matches a TF_EPOCH_END answer */
	int64_t hold_until;
};

/* One fetch session: everything this node follows from one leader. */
struct session {
	struct replica_set *rs;
	uint16_t leader;
	bool inflight;
	int64_t retry_at;
	struct session *next;
};

struct fetch_part {
	uint64_t topic_id;
	uint32_t index;
	int32_t epoch;
	int64_t offset;
	int64_t known_hw;
	uint8_t flags;
};

/* A fetch request received (answered at once or parked). */
struct parked {
	struct tr_origin origin;
	uint16_t peer;
	int64_t deadline;
	uint32_t n;
	struct parked *next;
	struct fetch_part parts[];
};

/* What a leader says about one partition in a fetch answer. */
struct fetch_entry {
	uint64_t topic_id;
	uint32_t index;
	int32_t epoch;
	int64_t offset;
	int32_t err;
	int64_t hw;
	int64_t start;
	uint64_t start_pos;
	uint64_t view_pos;
	uint32_t len;
	const uint8_t *batches;
};

struct replica_set {
	struct cluster *c;
	uint16_t self;
	unsigned lag_ms, wait_ms, request_ms;
	unsigned rebalance_ms;          /* leader_rebalance_ms; 0: never */
	atomic_bool draining;           /* stopping: hand every leadership over */
	atomic_int drain_left;          /* led partitions a drain can still move;
	                                   -1: not counted yet */
	atomic_bool resign_due;         /* a leader's log failed a write (store_failed) */

	/* loop thread */
	struct replica **tab;
	size_t nbuckets, nreplicas;
	struct session *sessions;
	struct parked *parked;
	size_t nparked;
	bool kick_parked;               /* a HW moved while handling a frame */
	uv_timer_t timer;
	enum timer_state timer_state;
	int64_t last_isr_ms;
	uint8_t *out;                   /* fetch answer being built */
	size_t out_cap;
	struct ls_rec *recs;            /* a forwarded produce's records */
	size_t recs_cap;
	struct meta_cmd *cmds;          /* META_MAX_REPLICAS isr commands */

	/* any thread */
	atomic_uint parked_count;       /* fetches parked or being evaluated */
	atomic_bool wake_pending;       /* a tr_call to wake them is queued */
};

/* ---- small helpers ------------------------------------------------------------ */

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static struct tr_net *net_of(struct replica_set *rs) { return cluster_net(rs->c); }

/* A bounds-checked reader: any read past the end sets bad and yields 0. */
struct rd {
	const uint8_t *p;
	size_t left;
	bool bad;
};

static const uint8_t *rd_take(struct rd *r, size_t n)
{
	if (r->bad || r->left < n) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}
static uint8_t rd8(struct rd *r)
{
	const uint8_t *p = rd_take(r, 1);
	return p ? p[0] : 0;
}
static uint16_t rd16(struct rd *r)
{
	const uint8_t *p = rd_take(r, 2);
	return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}
static uint32_t rd32(struct rd *r)
{
	const uint8_t *p = rd_take(r, 4);
	return p ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
}
static uint64_t rd64(struct rd *r)
{
	uint64_t hi = rd32(r);
	return hi << 32 | rd32(r);
}

/* Waits on rp->cv (mu held) until something changes or until (monotonic ms).
 * Returns false once until has passed. */
static bool wait_until(struct replica *rp, int64_t until)
{
	int64_t now = cluster_now_ms();
	if (now >= until)
		return false;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t ns = ts.tv_nsec + (until - now) % 1000 * 1000000;
	ts.tv_sec += (time_t)((until - now) / 1000 + ns / 1000000000);
	ts.tv_nsec = (long)(ns % 1000000000);
	pthread_cond_timedwait(&rp->cv, &rp->mu, &ts);
	return true;
}

static bool in_list(const uint16_t *l, unsigned n, uint16_t id)
{
	for (unsigned i = 0; i < n; i++)
		if (l[i] == id)
			return true;
	return false;
}

static struct peer *peer_find(struct replica *rp, uint16_t node)
{
	for (unsigned i = 0; i < rp->npeers; i++)
		if (rp->peers[i].node == node)
			return &rp->peers[i];
	return NULL;
}

static const char *role_name(enum role r)
{
	switch (r) {
	case ROLE_LEADER: return "leader";
	case ROLE_FOLLOWER: return "follower";
	case ROLE_OBSERVER: return "observer";
	case ROLE_OFFLINE: break;
	}
	return "offline";
}

/* ---- the table of replicas (loop thread) --------------------------------------- */

static size_t bucket_of(const struct replica_set *rs, uint64_t topic_id, uint32_t index)
{
	uint64_t h = (topic_id * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)index * 0xC2B2AE3D27D4EB4Full);
	return (size_t)(h >> 17) % rs->nbuckets;
}

static struct replica *lookup(struct replica_set *rs, uint64_t topic_id, uint32_t index)
{
	for (struct replica *rp = rs->tab[bucket_of(rs, topic_id, index)]; rp; rp = rp->hnext)
		if (rp->topic_id == topic_id && rp->index == index)
			return rp;
	return NULL;
}

static void table_grow(struct replica_set *rs)
{
	size_t nb = rs->nbuckets * 4;
	struct replica **tab = calloc(nb, sizeof(*tab));
	if (!tab)
		return; /* longer chains, still correct */
	struct replica **old = rs->tab;
	size_t ob = rs->nbuckets;
	rs->tab = tab;
	rs->nbuckets = nb;
	for (size_t i = 0; i < ob; i++) {
		struct replica *rp = old[i], *next;
		for (; rp; rp = next) {
			next = rp->hnext;
			size_t b = bucket_of(rs, rp->topic_id, rp->index);
			rp->hnext = tab[b];
			tab[b] = rp;
		}
	}
	free(old);
}

#define FOREACH_REPLICA(rs, rp)                                             \
	for (size_t b_ = 0; b_ < (rs)->nbuckets; b_++)                      \
		for (struct replica *rp = (rs)->tab[b_]; rp; rp = rp->hnext)

/* ---- waking parked fetches ------------------------------------------------------ */

static void parked_process(struct replica_set *rs);

static void on_wake(struct tr_net *net, void *ctx, int status)
{
	(void)net;
	struct replica_set *rs = ctx;
	atomic_store(&rs->wake_pending, false);
	if (status == 0)
		parked_process(rs);
}

/* New data or a new HW on a partition this node leads (any thread but the
 * loop thread, which sets kick_parked instead): re-evaluates parked fetches,
 * with one hand-off per burst and none while nobody fetches. */
static void wake_fetchers(struct replica_set *rs)
{
	if (atomic_load(&rs->parked_count) == 0)
		return;
	if (atomic_exchange(&rs->wake_pending, true))
		return;
	if (tr_call(net_of(rs), on_wake, rs) < 0)
		atomic_store(&rs->wake_pending, false);
}

/* ---- the high watermark ---------------------------------------------------------- */

/* Leader: HW = min over the isr of log ends (mu held). Returns true if it
 * moved; the caller then calls hw_moved_outside() without mu. */
static bool hw_recompute_locked(struct replica *rp)
{
	if (rp->role != ROLE_LEADER)
		return false;
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	int64_t hw = info.end_offset;
	for (unsigned i = 0; i < rp->mp.nisr; i++) {
		uint16_t node = rp->mp.isr[i];
		if (node == rp->rs->self)
			continue;
		struct peer *pe = peer_find(rp, node);
		if (!pe || pe->end < 0)
			return false;
		hw = min64(hw, pe->end);
	}
	if (hw <= rp->hw)
		return false;
	rp->hw = hw;
	ls_partition_set_hw(rp->log, hw);
	pthread_cond_broadcast(&rp->cv);
	return true;
}

/* Follower: HW = min(leader's HW, own end), forward only (mu held). */
static bool hw_follow_locked(struct replica *rp, int64_t leader_hw)
{
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	int64_t hw = min64(leader_hw, info.end_offset);
	if (hw <= rp->hw)
		return false;
	rp->hw = hw;
	ls_partition_set_hw(rp->log, hw);
	pthread_cond_broadcast(&rp->cv);
	return true;
}

/* ---- roles (loop thread) ------------------------------------------------------------ */

static enum role role_of(const struct meta_partition *mp, uint16_t self)
{
	if (mp->leader == 0)
		return ROLE_OFFLINE;
	if (mp->leader == self)
		return ROLE_LEADER;
	return in_list(mp->replicas, mp->nreplicas, self) ? ROLE_FOLLOWER : ROLE_OBSERVER;
}

static struct session *session_get(struct replica_set *rs, uint16_t leader)
{
	struct session *s;
	for (s = rs->sessions; s; s = s->next)
		if (s->leader == leader)
			return s;
	if (!(s = calloc(1, sizeof(*s))))
		return NULL;
	s->rs = rs;
	s->leader = leader;
	s->next = rs->sessions;
	rs->sessions = s;
	return s;
}

static void session_kick(struct replica_set *rs, struct session *s);
static void hold_after_failover(struct replica *rp);

/* The in-sync replicas a leader can count on now: itself and the in-sync
 * followers that were caught up within replica_lag_ms. Without a quorum
 * (this node cut off with a minority) the metadata's set cannot shrink, but
 * acks: all must still refuse rather than accept what cannot commit. */
static unsigned live_isr_locked(struct replica *rp)
{
	int64_t now = cluster_now_ms();
	unsigned n = 0;
	for (unsigned i = 0; i < rp->mp.nisr; i++) {
		uint16_t node = rp->mp.isr[i];
		if (node == rp->rs->self) {
			n++;
			continue;
		}
		for (unsigned k = 0; k < rp->npeers; k++)
			if (rp->peers[k].node == node &&
			    now - rp->peers[k].caught_up_ms <= (int64_t)rp->rs->lag_ms)
				n++;
	}
	return n;
}

/* The peers a leader tracks: every replica but itself, kept across isr
 * changes, fresh (end unknown, caught up now) at a new epoch (mu held). */
static void peers_reset_locked(struct replica *rp, bool fresh)
{
	struct peer old[META_MAX_REPLICAS];
	unsigned nold = fresh ? 0 : rp->npeers;
	memcpy(old, rp->peers, sizeof(old));
	int64_t now = cluster_now_ms();
	rp->npeers = 0;
	for (unsigned i = 0; i < rp->mp.nreplicas; i++) {
		uint16_t node = rp->mp.replicas[i];
		if (node == rp->rs->self)
			continue;
		struct peer *pe = &rp->peers[rp->npeers++];
		*pe = (struct peer){.node = node, .end = -1, .known_hw = -1, .caught_up_ms = now,
		                    .last_fetch_ms = now, .end_at_last_fetch = -1};
		for (unsigned k = 0; k < nold; k++)
			if (old[k].node == node)
				*pe = old[k];
	}
}

/* Errors of the local disk: another replica may well take the write. */
static bool store_error(int rc)
{
	return rc == -ENOSPC || rc == -EDQUOT || rc == -EIO || rc == -EROFS;
}

/* The leader's log failed a write (mu held): resign_check hands the
 * leadership to an in-sync follower, as Kafka moves leaderships off a failed
 * log directory. */
static void store_failed_locked(struct replica *rp)
{
	if (!rp->store_failed)
		atomic_store(&rp->rs->resign_due, true);
	rp->store_failed = true;
}

static uint16_t drain_target_locked(struct replica *rp, int64_t now);

/* After a write the leader's log refused with rc: 1 if the leadership is
 * about to move (an in-sync follower can take it), so the write waits for
 * it and goes there instead of failing. */
static bool store_resigning(struct replica *rp, int rc)
{
	if (!store_error(rc))
		return false;
	pthread_mutex_lock(&rp->mu);
	int64_t now = cluster_now_ms();
	bool moving = rp->role == ROLE_LEADER && (rp->handing || (now >= rp->resign_next_ms &&
	                                                          drain_target_locked(rp, now)));
	pthread_mutex_unlock(&rp->mu);
	return moving;
}

/* Takes on the metadata mp (loop thread; first: from replica_add). */
static void apply_meta(struct replica *rp, const struct meta_partition *mp, bool first)
{
	struct replica_set *rs = rp->rs;
	enum role role = role_of(mp, rs->self);
	bool moved = false;

	pthread_rwlock_wrlock(&rp->role_lock);
	pthread_mutex_lock(&rp->mu);
	enum role old_role = first ? ROLE_OFFLINE : rp->role;
	int32_t old_epoch = rp->mp.leader_epoch;
	struct meta_partition old_mp = rp->mp;
	rp->mp = *mp;
	rp->role = role;
	rp->version++;
	if (rp->handing && (role != ROLE_LEADER || mp->leader_epoch != rp->hand_epoch)) {
		rp->handing = false; /* handed over (or overtaken): the new epoch rules */
		rp->hand_seq++;
		if (mp->leader == rp->hand_to)
			rp->handed_ms = cluster_now_ms();
	}
	if (role == ROLE_LEADER && old_role != ROLE_LEADER && !first)
		hold_after_failover(rp);
	if (role != ROLE_LEADER) {
		rp->pref_since_ms = 0;
		rp->store_failed = false;
	}
	if (role == ROLE_LEADER) {
		bool fresh = first || old_role != ROLE_LEADER || old_epoch != mp->leader_epoch;
		if (fresh) {
			int rc = ls_partition_set_leader_epoch(rp->log, mp->leader_epoch);
			/* An epoch older than the log's newest: a restart replaying
			 * its metadata passes through leaderships it lost since;
			 * the quorum's state follows. It appends nothing then. */
			rp->epoch_behind = rc == -EINVAL;
			if (rc == -EINVAL && !cluster_caught_up(rs->c))
				tfs_debug("partition %s: leader epoch %" PRId32 " of an "
				          "old state (replayed at start)", rp->label,
				          mp->leader_epoch);
			else if (rc < 0)
				tfs_error("partition %s: cannot start leader epoch %" PRId32
				          ": %s", rp->label, mp->leader_epoch,
				          tfs_strerror(rc));
			if (rc < 0 && rc != -EINVAL)
				store_failed_locked(rp);
		}
		peers_reset_locked(rp, fresh);
		/* a replica that left the in-sync set (a stopping node leaves it
		 * itself) is caught up again only by a fetch after this: its last
		 * one must not put it straight back (the high watermark would
		 * wait for a node that fetches no more) */
		for (unsigned i = 0; !fresh && i < rp->npeers; i++)
			if (in_list(old_mp.isr, old_mp.nisr, rp->peers[i].node) &&
			    !in_list(mp->isr, mp->nisr, rp->peers[i].node))
				rp->peers[i].caught_up_ms = rp->peers[i].last_fetch_ms = 0;
		rp->src = 0;
		moved = hw_recompute_locked(rp);
	} else if (role == ROLE_OFFLINE) {
		rp->src = 0;
	} else if (rp->src != mp->leader || rp->src_epoch != mp->leader_epoch ||
	           old_role == ROLE_LEADER) {
		rp->prefix_epoch = -1;
		rp->src = mp->leader;
		rp->src_epoch = mp->leader_epoch;
		rp->follow = FOLLOW_NEED;
		rp->ask_seq++;
		rp->hold_until = 0;
	}
	pthread_cond_broadcast(&rp->cv);
	pthread_mutex_unlock(&rp->mu);
	pthread_rwlock_unlock(&rp->role_lock);

	if (first || old_role != role)
		tfs_info("partition %s: %s at epoch %" PRId32 " (leader %u)",
		         rp->label, role_name(role), mp->leader_epoch, mp->leader);
	if (moved)
		rep_partition_hw_moved(rp->p);
	if (rp->src) {
		struct session *s = session_get(rs, rp->src);
		if (s)
			session_kick(rs, s);
		else
			tfs_error("replication: no memory for a fetch session to node %u", rp->src);
	}
	parked_process(rs); /* fetches for this partition get their new answer */
}

/* ---- following: truncation by leader epoch (loop thread) --------------------------- */

/* The latest epoch in the log's epoch cache (the largest with an end offset),
 * looked for from `from` down; -1 if none. */
static int32_t latest_epoch(struct ls_partition *log, int32_t from)
{
	int32_t e = ls_partition_latest_epoch(log);
	if (e <= from)
		return e;
	/* the log has a newer epoch than from: from itself, if the cache
	 * reaches back to it */
	return ls_partition_epoch_end_offset(log, from) >= 0 ? from : -1;
}

/* Truncates the follower's log to offset (mu not held); keeps the HW and the
 * commit bookkeeping consistent. */
static int truncate_to(struct replica *rp, int64_t offset)
{
	int rc = ls_partition_truncate(rp->log, offset);
	if (rc < 0)
		return rc;
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	pthread_mutex_lock(&rp->mu);
	if (rp->hw > info.end_offset)
		rp->hw = info.end_offset;
	pthread_cond_broadcast(&rp->cv);
	pthread_mutex_unlock(&rp->mu);
	return 0;
}

struct ask {
	struct replica_set *rs;
	uint64_t topic_id;
	uint32_t index;
	uint32_t seq;
	uint16_t leader;
};

static void hold(struct replica *rp, int64_t ms) { rp->hold_until = cluster_now_ms() + ms; }

static void epoch_end_done(void *ctx, int status, const struct tr_frame *resp)
{
	struct ask *a = ctx;
	struct replica_set *rs = a->rs;
	struct replica *rp = lookup(rs, a->topic_id, a->index);
	if (!rp || rp->src != a->leader || rp->ask_seq != a->seq || rp->follow != FOLLOW_ASKING)
		goto out; /* the metadata moved on meanwhile */
	rp->follow = FOLLOW_NEED;
	int32_t err = 0, epoch = -1;
	int64_t end = -1;
	if (status == 0) {
		struct rd r = {resp->payload, resp->len, false};
		err = (int32_t)rd32(&r);
		epoch = (int32_t)rd32(&r);
		end = (int64_t)rd64(&r);
		if (r.bad || r.left || err > 0 || epoch < -1 || end < -1) {
			tfs_warn("partition %s: malformed epoch answer from node %u",
			         rp->label, a->leader);
			status = REP_EPROTO;
		}
	}
	if (status < 0 || err < 0) {
		tfs_debug("partition %s: epoch end from node %u: %s", rp->label, a->leader,
		          tfs_strerror(status < 0 ? status : err));
		hold(rp, RETRY_MS);
		goto out;
	}
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	int64_t target = info.end_offset;
	if (end < 0 || epoch < 0) {
		target = info.start_offset; /* older than anything the leader holds */
	} else {
		int64_t mine = ls_partition_epoch_end_offset(rp->log, epoch);
		if (mine < 0)
			mine = info.start_offset;
		target = min64(target, min64(end, mine));
	}
	if (target < info.end_offset) {
		tfs_info("partition %s: truncating from %" PRId64 " to %" PRId64
		         " (leader %u ends epoch %" PRId32 " at %" PRId64 ")", rp->label,
		         info.end_offset, target, a->leader, epoch, end);
		int rc = truncate_to(rp, target);
		if (rc < 0) {
			tfs_error("partition %s: truncation to %" PRId64 " failed: %s",
			          rp->label, target, tfs_strerror(rc));
			hold(rp, STICKY_HOLD_MS);
			goto out;
		}
	}
	rp->follow = FOLLOW_FETCHING;
	pthread_mutex_lock(&rp->mu);
	rp->prefix_epoch = rp->src_epoch;
	rp->ans_epoch = epoch;
	rp->ans_end = end;
	pthread_cond_broadcast(&rp->cv); /* commits waiting may now know their fate */
	pthread_mutex_unlock(&rp->mu);
	struct session *s = session_get(rs, rp->src);
	if (s)
		session_kick(rs, s);
out:
	free(a);
}

/* Asks the leader for the end of this log's latest epoch (FOLLOW_NEED). */
static void epoch_end_ask(struct replica_set *rs, struct replica *rp)
{
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	int32_t latest = latest_epoch(rp->log, rp->src_epoch);
	if (latest < 0) {
		if (info.end_offset > info.start_offset &&
		    truncate_to(rp, info.start_offset) < 0) {
			hold(rp, STICKY_HOLD_MS);
			return;
		}
		rp->follow = FOLLOW_FETCHING; /* nothing of ours to compare */
		return;
	}
	struct ask *a = malloc(sizeof(*a));
	if (!a) {
		hold(rp, RETRY_MS);
		return;
	}
	*a = (struct ask){rs, rp->topic_id, rp->index, rp->ask_seq, rp->src};
	uint8_t buf[EPOCH_REQ_LEN];
	wire_put64(buf, rp->topic_id);
	wire_put32(buf + 8, rp->index);
	wire_put32(buf + 12, (uint32_t)rp->src_epoch);
	wire_put32(buf + 16, (uint32_t)latest);
	int rc = tr_request(net_of(rs), rp->src, TF_EPOCH_END, 0, buf, sizeof(buf),
	                    rs->request_ms, epoch_end_done, a, NULL);
	if (rc < 0) {
		free(a);
		hold(rp, RETRY_MS);
		return;
	}
	rp->follow = FOLLOW_ASKING;
}

/* ---- following: fetch sessions (loop thread) ------------------------------------------- */

static void fetch_done(void *ctx, int status, const struct tr_frame *resp);

static bool follows(const struct replica *rp, uint16_t leader)
{
	return (rp->role == ROLE_FOLLOWER || rp->role == ROLE_OBSERVER) && rp->src == leader;
}

/* Sends the session's next fetch unless one is out or it backs off; first
 * asks TF_EPOCH_END for each partition that needs it. */
static void session_kick(struct replica_set *rs, struct session *s)
{
	int64_t now = cluster_now_ms();
	if (s->inflight || now < s->retry_at || atomic_load(&rs->draining))
		return; /* (stopping: it leaves the in-sync sets instead, drain_check) */
	uint32_t n = 0;
	FOREACH_REPLICA(rs, rp) {
		if (!follows(rp, s->leader) || now < rp->hold_until)
			continue;
		if (rp->follow == FOLLOW_NEED)
			epoch_end_ask(rs, rp);
		if (rp->follow == FOLLOW_FETCHING)
			n++;
	}
	if (n == 0)
		return;
	size_t len = FETCH_REQ_HEAD + (size_t)n * FETCH_REQ_PART;
	uint8_t *buf = malloc(len), *p = buf + FETCH_REQ_HEAD;
	if (!buf) {
		s->retry_at = now + RETRY_MS;
		return;
	}
	wire_put32(buf, FETCH_WAIT_MS);
	wire_put32(buf + 4, n);
	uint32_t k = 0;
	FOREACH_REPLICA(rs, rp) {
		if (k == n || !follows(rp, s->leader) || now < rp->hold_until ||
		    rp->follow != FOLLOW_FETCHING)
			continue;
		struct ls_partition_info info;
		ls_partition_get_info(rp->log, &info);
		pthread_mutex_lock(&rp->mu);
		int64_t hw = rp->hw;
		pthread_mutex_unlock(&rp->mu);
		wire_put64(p, rp->topic_id);
		wire_put32(p + 8, rp->index);
		wire_put32(p + 12, (uint32_t)rp->src_epoch);
		wire_put64(p + 16, (uint64_t)info.end_offset);
		wire_put64(p + 24, (uint64_t)hw);
		p[32] = rp->role == ROLE_OBSERVER ? F_OBSERVER : 0;
		p += FETCH_REQ_PART;
		k++;
	}
	int rc = tr_request(net_of(rs), s->leader, TF_FETCH, 0, buf, len,
	                    FETCH_WAIT_MS + rs->request_ms, fetch_done, s, NULL);
	free(buf);
	if (rc < 0) {
		tfs_debug("replication: fetch from node %u not sent: %s", s->leader,
		          tfs_strerror(rc));
		s->retry_at = now + RETRY_MS;
		return;
	}
	s->inflight = true;
}

/* Applies one partition of a fetch answer (invariant 4). */
static void fetch_apply(struct replica_set *rs, uint16_t leader, const struct fetch_entry *e)
{
	struct replica *rp = lookup(rs, e->topic_id, e->index);
	if (!rp || !follows(rp, leader) || rp->src_epoch != e->epoch ||
	    rp->follow != FOLLOW_FETCHING)
		return;
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	if (info.end_offset != e->offset)
		return;
	int rc = 0;
	bool moved = false;
	if (e->err == LS_EOUTOFRANGE && e->offset < e->start) {
		tfs_info("partition %s: log end %" PRId64 " is below the leader's "
		         "start %" PRId64 ": restarting there", rp->label,
		         e->offset, e->start);
		if ((rc = ls_partition_reset(rp->log, e->start, e->start_pos)) < 0)
			goto failed;
		pthread_mutex_lock(&rp->mu);
		rp->hw = e->start;
		pthread_cond_broadcast(&rp->cv);
		pthread_mutex_unlock(&rp->mu);
		return;
	}
	if (e->err == LS_EOUTOFRANGE) { /* past the leader's end: truncate again */
		rp->follow = FOLLOW_NEED;
		rp->ask_seq++;
		return;
	}
	if (e->err < 0) {
		tfs_debug("partition %s: fetch from node %u: %s", rp->label, leader, tfs_strerror(e->err));
		hold(rp, RETRY_MS);
		return;
	}
	if (e->len) {
		rc = ls_partition_append_batches_at(rp->log, e->batches, e->len, e->view_pos);
		if (rc == LS_EOUTOFRANGE) {
			rp->follow = FOLLOW_NEED;
			rp->ask_seq++;
			return;
		}
		if (rc < 0)
			goto failed;
	}
	pthread_mutex_lock(&rp->mu);
	moved = hw_follow_locked(rp, e->hw);
	pthread_mutex_unlock(&rp->mu);
	if (moved)
		rep_partition_hw_moved(rp->p);
	return;
failed:
	/* once, then once a minute while it lasts (a full disk: every retry) */
	rp->take_failures++;
	if (cluster_now_ms() - rp->take_logged_ms >= TAKE_LOG_EVERY_MS) {
		tfs_error("partition %s: cannot take batches from node %u at offset %"
		          PRId64 ": %s (%u time(s) since the last such line)", rp->label, leader,
		          e->offset, tfs_strerror(rc), rp->take_failures);
		rp->take_logged_ms = cluster_now_ms();
		rp->take_failures = 0;
	}
	hold(rp, STICKY_HOLD_MS);
}

/* Parses one partition of a fetch answer. */
static bool fetch_entry_read(struct rd *r, struct fetch_entry *e)
{
	e->topic_id = rd64(r);
	e->index = rd32(r);
	e->epoch = (int32_t)rd32(r);
	e->offset = (int64_t)rd64(r);
	e->err = (int32_t)rd32(r);
	e->hw = (int64_t)rd64(r);
	e->start = (int64_t)rd64(r);
	e->start_pos = rd64(r);
	e->view_pos = rd64(r);
	e->len = rd32(r);
	e->batches = rd_take(r, e->len);
	return !r->bad && e->err <= 0;
}

static void fetch_done(void *ctx, int status, const struct tr_frame *resp)
{
	struct session *s = ctx;
	struct replica_set *rs = s->rs;
	s->inflight = false;
	if (status == -ECANCELED)
		return; /* the net is stopping */
	if (status < 0) {
		tfs_debug("replication: fetch from node %u failed: %s", s->leader,
		          tfs_strerror(status));
		s->retry_at = cluster_now_ms() + RETRY_MS;
		return;
	}
	/* check the whole answer before applying any of it */
	struct rd r = {resp->payload, resp->len, false};
	uint32_t n = rd32(&r);
	struct fetch_entry e;
	for (uint32_t i = 0; i < n && !r.bad; i++)
		if (!fetch_entry_read(&r, &e))
			r.bad = true;
	if (r.bad || r.left) {
		tfs_warn("replication: malformed fetch answer from node %u (%u bytes)", s->leader,
		         resp->len);
		s->retry_at = cluster_now_ms() + RETRY_MS;
		return;
	}
	r = (struct rd){resp->payload + 4, resp->len - 4, false};
	for (uint32_t i = 0; i < n; i++) {
		(void)fetch_entry_read(&r, &e);
		fetch_apply(rs, s->leader, &e);
	}
	session_kick(rs, s);
}

/* ---- leading: fetches from followers (loop thread) ---------------------------------------- */

/* Checks one partition of a fetch against this node (mu held): the error to
 * answer, 0 if this node leads it at that epoch. */
static int32_t fetch_check_locked(struct replica *rp, const struct fetch_part *fp,
                                  const struct ls_partition_info *info)
{
	if (rp->role != ROLE_LEADER)
		return REP_ENOTLEADER;
	if (fp->epoch != rp->mp.leader_epoch)
		return -ESTALE;
	if (fp->offset < info->start_offset || fp->offset > info->end_offset)
		return LS_EOUTOFRANGE;
	return 0;
}

/* Records what a replica's fetch says of it (mu held): its log end, the HW
 * it knows, and whether it is caught up (Kafka's lastCaughtUpTime: at our
 * end now, or at least at our end as of its previous fetch). */
static void peer_record_locked(struct replica *rp, uint16_t node, const struct fetch_part *fp,
                               int64_t leader_end)
{
	struct peer *pe = peer_find(rp, node);
	if (!pe || (fp->flags & F_OBSERVER))
		return;
	int64_t now = cluster_now_ms();
	if (fp->offset >= leader_end)
		pe->caught_up_ms = now;
	else if (pe->end_at_last_fetch >= 0 && fp->offset >= pe->end_at_last_fetch)
		pe->caught_up_ms = pe->last_fetch_ms > pe->caught_up_ms ? pe->last_fetch_ms
		                                                        : pe->caught_up_ms;
	if (fp->offset != pe->end || fp->known_hw != pe->known_hw)
		pthread_cond_broadcast(&rp->cv); /* commit waits on known_hw */
	pe->end = fp->offset;
	pe->known_hw = fp->known_hw;
	pe->last_fetch_ms = now;
	pe->end_at_last_fetch = leader_end;
}

/* Evaluates a fetch: records each replica's position, moves HWs, and says
 * whether to answer now (data, a newer HW or an error for some partition). */
static bool fetch_ready(struct replica_set *rs, struct parked *pk)
{
	bool ready = false;
	for (uint32_t i = 0; i < pk->n; i++) {
		const struct fetch_part *fp = &pk->parts[i];
		struct replica *rp = lookup(rs, fp->topic_id, fp->index);
		if (!rp)
			return true; /* -ENOENT */
		struct ls_partition_info info;
		ls_partition_get_info(rp->log, &info);
		pthread_mutex_lock(&rp->mu);
		int32_t err = fetch_check_locked(rp, fp, &info);
		bool moved = false;
		if (err == 0) {
			peer_record_locked(rp, pk->peer, fp, info.end_offset);
			moved = hw_recompute_locked(rp);
			if (fp->offset < info.end_offset || min64(rp->hw, fp->offset) > fp->known_hw)
				ready = true;
		} else {
			ready = true;
		}
		pthread_mutex_unlock(&rp->mu);
		if (moved) {
			rep_partition_hw_moved(rp->p);
			rs->kick_parked = true;
		}
	}
	return ready;
}

static int out_reserve(struct replica_set *rs, size_t need)
{
	if (need <= rs->out_cap)
		return 0;
	size_t cap = rs->out_cap ? rs->out_cap : 64 * 1024;
	while (cap < need)
		cap *= 2;
	uint8_t *p = realloc(rs->out, cap);
	if (!p)
		return -ENOMEM;
	rs->out = p;
	rs->out_cap = cap;
	return 0;
}

/* Builds and sends the answer to a fetch (rs->out is reused). */
static void fetch_answer(struct replica_set *rs, struct parked *pk)
{
	size_t used = 4, total = 0;
	int rc = out_reserve(rs, 4 + (size_t)pk->n * FETCH_RESP_PART);
	if (rc < 0)
		goto failed;
	wire_put32(rs->out, pk->n);
	for (uint32_t i = 0; i < pk->n; i++) {
		const struct fetch_part *fp = &pk->parts[i];
		struct replica *rp = lookup(rs, fp->topic_id, fp->index);
		struct ls_partition_info info = {0};
		int32_t err = -ENOENT;
		int64_t hw = 0;
		uint64_t view_pos = 0;
		size_t len = 0;
		if (rp) {
			ls_partition_get_info(rp->log, &info);
			pthread_mutex_lock(&rp->mu);
			err = fetch_check_locked(rp, fp, &info);
			hw = rp->hw;
			pthread_mutex_unlock(&rp->mu);
		}
		if ((rc = out_reserve(rs, used + FETCH_RESP_PART)) < 0)
			goto failed;
		size_t head = used;
		used += FETCH_RESP_PART;
		if (err == 0 && fp->offset < info.end_offset) {
			/* one big batch may exceed the per-partition share, never
			 * the frame */
			size_t max = FETCH_PART_MAX, need = 0;
			if (total >= FETCH_TOTAL_MAX)
				max = 0;
			else if (max > FETCH_TOTAL_MAX - total)
				max = FETCH_TOTAL_MAX - total;
			for (int attempt = 0; max > 0 && attempt < 2; attempt++) {
				if ((rc = out_reserve(rs, used + max)) < 0)
					goto failed;
				ssize_t got = ls_partition_read_batches_at(rp->log, fp->offset,
				                                           rs->out + used, max,
				                                           &need, &view_pos);
				if (got < 0) {
					err = (int32_t)got;
					break;
				}
				if (got > 0 || need == 0) {
					len = (size_t)got;
					break;
				}
				if (i > 0 && total + need > FETCH_TOTAL_MAX)
					break; /* next answer, alone */
				if (need > TR_MAX_PAYLOAD - used) {
					tfs_error("partition %s: batch at %" PRId64
					          " of %zu bytes cannot be replicated", rp->label, fp->offset, need);
					err = -EMSGSIZE;
					break;
				}
				max = need;
			}
		}
		uint8_t *p = rs->out + head;
		wire_put64(p, fp->topic_id);
		wire_put32(p + 8, fp->index);
		wire_put32(p + 12, (uint32_t)fp->epoch);
		wire_put64(p + 16, (uint64_t)fp->offset);
		wire_put32(p + 24, (uint32_t)err);
		wire_put64(p + 28, (uint64_t)hw);
		wire_put64(p + 36, (uint64_t)info.start_offset);
		wire_put64(p + 44, info.start_pos);
		wire_put64(p + 52, view_pos);
		wire_put32(p + 60, (uint32_t)len);
		used += len;
		total += len;
	}
	rc = tr_respond(net_of(rs), &pk->origin, TF_FETCH, 0, rs->out, used);
	if (rc < 0)
		tfs_debug("replication: fetch answer to node %u dropped: %s", pk->peer,
		          tfs_strerror(rc));
	return;
failed:
	if (tr_respond_error(net_of(rs), &pk->origin, TF_FETCH, rc) < 0)
		tfs_debug("replication: fetch error to node %u dropped", pk->peer);
}

/* Answers the parked fetches that have something (or whose wait is over). */
static void parked_process(struct replica_set *rs)
{
	for (int pass = 0; pass < 4; pass++) {
		rs->kick_parked = false;
		int64_t now = cluster_now_ms();
		for (struct parked **pp = &rs->parked; *pp;) {
			struct parked *pk = *pp;
			if (fetch_ready(rs, pk) || now >= pk->deadline) {
				*pp = pk->next;
				rs->nparked--;
				fetch_answer(rs, pk);
				free(pk);
				atomic_fetch_sub(&rs->parked_count, 1);
			} else {
				pp = &pk->next;
			}
		}
		if (!rs->kick_parked)
			break;
	}
}

static int on_fetch(struct replica_set *rs, const struct tr_frame *f)
{
	struct rd r = {f->payload, f->len, false};
	uint32_t wait = rd32(&r), n = rd32(&r);
	if (r.bad || wait > 60000 || n > FETCH_MAX_PARTS ||
	    r.left != (size_t)n * FETCH_REQ_PART)
		return REP_EPROTO;
	struct parked *pk = malloc(sizeof(*pk) + (size_t)n * sizeof(pk->parts[0]));
	if (!pk) {
		if (tr_respond_error(net_of(rs), &f->origin, TF_FETCH, -ENOMEM) < 0)
			tfs_debug("replication: fetch error to node %u dropped", f->peer);
		return 0;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct fetch_part *fp = &pk->parts[i];
		fp->topic_id = rd64(&r);
		fp->index = rd32(&r);
		fp->epoch = (int32_t)rd32(&r);
		fp->offset = (int64_t)rd64(&r);
		fp->known_hw = (int64_t)rd64(&r);
		fp->flags = rd8(&r);
		if (fp->offset < 0 || fp->known_hw < -1 || (fp->flags & ~F_OBSERVER)) {
			free(pk);
			return REP_EPROTO;
		}
	}
	pk->origin = f->origin;
	pk->peer = f->peer;
	pk->n = n;
	pk->deadline = cluster_now_ms() + (wait < FETCH_WAIT_MS ? wait : FETCH_WAIT_MS);
	/* counted before evaluating, so an append racing the evaluation wakes it */
	atomic_fetch_add(&rs->parked_count, 1);
	if (fetch_ready(rs, pk) || wait == 0 || rs->nparked >= PARKED_MAX) {
		fetch_answer(rs, pk);
		free(pk);
		atomic_fetch_sub(&rs->parked_count, 1);
	} else {
		pk->next = rs->parked;
		rs->parked = pk;
		rs->nparked++;
	}
	if (rs->kick_parked)
		parked_process(rs);
	return 0;
}

/* ---- leading: OFFSET_FOR_EPOCH (loop thread) ----------------------------------------------- */

static int on_epoch_end(struct replica_set *rs, const struct tr_frame *f)
{
	struct rd r = {f->payload, f->len, false};
	uint64_t topic_id = rd64(&r);
	uint32_t index = rd32(&r);
	int32_t believed = (int32_t)rd32(&r), asked = (int32_t)rd32(&r);
	if (r.bad || r.left || asked < 0)
		return REP_EPROTO;
	int32_t err = 0, answered = -1;
	int64_t end = -1;
	struct replica *rp = lookup(rs, topic_id, index);
	if (!rp) {
		err = -ENOENT;
	} else {
		pthread_mutex_lock(&rp->mu);
		if (rp->role != ROLE_LEADER)
			err = REP_ENOTLEADER;
		else if (believed != rp->mp.leader_epoch)
			err = -ESTALE;
		pthread_mutex_unlock(&rp->mu);
	}
	if (err == 0 && (end = ls_partition_epoch_end_offset(rp->log, asked)) >= 0) {
		/* KIP-279: the largest epoch <= asked that this log has is the
		 * lowest one that still ends at the same offset */
		answered = asked;
		for (int n = 0; answered > 0 && n < EPOCH_WALK_MAX; n++, answered--)
			if (ls_partition_epoch_end_offset(rp->log, answered - 1) != end)
				break;
	}
	uint8_t buf[EPOCH_RESP_LEN];
	wire_put32(buf, (uint32_t)err);
	wire_put32(buf + 4, (uint32_t)answered);
	wire_put64(buf + 8, (uint64_t)end);
	if (tr_respond(net_of(rs), &f->origin, TF_EPOCH_END, 0, buf, sizeof(buf)) < 0)
		tfs_debug("replication: epoch answer to node %u dropped", f->peer);
	return 0;
}

/* ---- leading: appends --------------------------------------------------------------------- */

/* Appends as the leader (role_lock held for reading, role checked). */
static int leader_append(struct replica *rp, const struct ls_rec *recs, uint32_t n,
                         const struct ls_producer *prod, struct ls_append_result *res)
{
	int rc = ls_partition_append(rp->log, recs, n, wall_ms(), prod, res);
	if (rc < 0) {
		rc = rc == LS_ESTICKY ? -EROFS : rc;
		if (store_error(rc)) {
			pthread_mutex_lock(&rp->mu);
			store_failed_locked(rp);
			pthread_mutex_unlock(&rp->mu);
		}
		return rc;
	}
	if (!res->duplicate) {
		uint64_t bytes = 0;
		for (uint32_t i = 0; i < n; i++)
			bytes += recs[i].value_len + (recs[i].key ? recs[i].key_len : 0);
		rep_partition_count_in(rp->p, n, bytes);
	}
	pthread_mutex_lock(&rp->mu);
	bool moved = hw_recompute_locked(rp);
	pthread_mutex_unlock(&rp->mu);
	if (moved)
		rep_partition_hw_moved(rp->p);
	return 0;
}

/* The records of a TF_PRODUCE into rs->recs (pointing into the payload). */
static int produce_records(struct replica_set *rs, struct rd *r, uint32_t n)
{
	if (n == 0 || n > PRODUCE_MAX_RECS || n > r->left / 9)
		return REP_EPROTO;
	if (n > rs->recs_cap) {
		struct ls_rec *recs = realloc(rs->recs, n * sizeof(*recs));
		if (!recs)
			return -ENOMEM;
		rs->recs = recs;
		rs->recs_cap = n;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct ls_rec *rec = &rs->recs[i];
		uint8_t flags = rd8(r);
		rec->key_len = rd32(r);
		rec->key = rd_take(r, rec->key_len);
		rec->value_len = rd32(r);
		rec->value = rd_take(r, rec->value_len);
		if (r->bad || (flags & ~(R_KEY | R_VALUE)) ||
		    (!(flags & R_KEY) && rec->key_len) || (!(flags & R_VALUE) && rec->value_len))
			return REP_EPROTO;
		if (!(flags & R_KEY))
			rec->key = NULL;
		if (!(flags & R_VALUE))
			rec->value = NULL;
	}
	return r->left ? REP_EPROTO : 0;
}

static int on_produce(struct replica_set *rs, const struct tr_frame *f)
{
	struct rd r = {f->payload, f->len, false};
	uint64_t topic_id = rd64(&r);
	uint32_t index = rd32(&r);
	(void)rd32(&r); /* the epoch the sender believes: logged only */
	struct ls_producer prod;
	prod.producer_id = (int64_t)rd64(&r);
	prod.producer_epoch = (int16_t)rd16(&r);
	prod.base_sequence = (int32_t)rd32(&r);
	uint8_t acks = rd8(&r);
	uint32_t min_insync = rd32(&r), n = rd32(&r);
	if (r.bad || acks > REP_ACKS_ALL)
		return REP_EPROTO;
	int rc = produce_records(rs, &r, n);
	if (rc == REP_EPROTO)
		return rc;
	struct ls_append_result res = {0};
	struct replica *rp = lookup(rs, topic_id, index);
	if (rc == 0 && !rp)
		rc = -ENOENT;
	if (rc == 0) {
		pthread_rwlock_rdlock(&rp->role_lock);
		pthread_mutex_lock(&rp->mu);
		if (rp->role != ROLE_LEADER || rp->handing || rp->epoch_behind ||
		    cluster_cut_off(rs->c))
			rc = REP_ENOTLEADER; /* a cut-off leader may have a successor; a
			                      * handing one is about to have one */
		else if (acks == REP_ACKS_ALL && rp->mp.nisr < min_insync)
			rc = -ENOTCONN;
		pthread_mutex_unlock(&rp->mu);
		if (rc == 0)
			rc = leader_append(rp, rs->recs, n, prod.producer_id >= 0 ? &prod : NULL,
			                   &res);
		pthread_rwlock_unlock(&rp->role_lock);
		if (rc == 0)
			rs->kick_parked = true;
		else if (store_resigning(rp, rc))
			rc = REP_ENOTLEADER; /* nothing appended: sent again to the next */
	}
	uint8_t buf[PRODUCE_RESP_LEN];
	wire_put32(buf, (uint32_t)rc);
	wire_put64(buf + 4, (uint64_t)res.base_offset);
	wire_put64(buf + 12, (uint64_t)res.last_offset);
	wire_put64(buf + 20, res.view_end);
	buf[28] = res.duplicate ? 1 : 0;
	wire_put32(buf + 29, (uint32_t)(rc == 0 ? res.leader_epoch : -1));
	if (tr_respond(net_of(rs), &f->origin, TF_PRODUCE, 0, buf, sizeof(buf)) < 0)
		tfs_debug("replication: produce answer to node %u dropped", f->peer);
	if (rs->kick_parked)
		parked_process(rs);
	return 0;
}

int replica_on_frame(struct replica_set *rs, const struct tr_frame *f)
{
	if (f->request_id == 0)
		return REP_EPROTO; /* every replication frame is a request */
	switch (f->type) {
	case TF_FETCH: return on_fetch(rs, f);
	case TF_EPOCH_END: return on_epoch_end(rs, f);
	case TF_PRODUCE: return on_produce(rs, f);
	default: return REP_EPROTO;
	}
}

/* ---- in-sync set maintenance (loop thread) -------------------------------------------------- */

struct isr_plan {
	struct replica *rp;
	struct meta_lag_report reports[META_MAX_REPLICAS];
	size_t nreports;
	int64_t hw, now;
	struct meta_cmd *out;
	size_t n;
	int64_t lag_ms;
};

static void isr_plan_fn(void *ctx, const struct meta_state *s)
{
	struct isr_plan *pl = ctx;
	const struct meta_topic *t = meta_topic_find(s, pl->rp->topic_id);
	pl->n = 0;
	if (!t || pl->rp->index >= t->nparts ||
	    t->parts[pl->rp->index].leader != pl->rp->rs->self)
		return; /* the state has moved past our view: wait for replica_update */
	pl->n = meta_ctl_isr(s, pl->rp->topic_id, pl->rp->index, pl->hw, pl->now, pl->lag_ms,
	                     pl->reports, pl->nreports, pl->out, META_MAX_REPLICAS);
	if (pl->n > META_MAX_REPLICAS)
		pl->n = META_MAX_REPLICAS;
}

/* Reports each led partition's followers to meta_ctl_isr and submits its
 * decisions (the same change at most once per ISR_RESUBMIT_MS). */
static void isr_check(struct replica_set *rs)
{
	struct isr_plan pl = {.out = rs->cmds, .lag_ms = rs->lag_ms};
	FOREACH_REPLICA(rs, rp) {
		pthread_mutex_lock(&rp->mu);
		if (rp->role != ROLE_LEADER) {
			pthread_mutex_unlock(&rp->mu);
			continue;
		}
		pl.rp = rp;
		pl.hw = rp->hw;
		pl.now = cluster_now_ms();
		pl.nreports = 0;
		for (unsigned i = 0; i < rp->npeers; i++)
			pl.reports[pl.nreports++] = (struct meta_lag_report){
				rp->peers[i].node, rp->peers[i].end, rp->peers[i].caught_up_ms};
		pthread_mutex_unlock(&rp->mu);
		cluster_read(rs->c, isr_plan_fn, &pl);
		for (size_t i = 0; i < pl.n; i++) {
			struct meta_cmd *cmd = &pl.out[i];
			pthread_mutex_lock(&rp->mu);
			struct peer *pe = peer_find(rp, cmd->node);
			bool skip = pe && pe->isr_sent_type == cmd->type &&
			            pe->isr_sent_epoch == cmd->epoch &&
			            pl.now - pe->isr_sent_ms < ISR_RESUBMIT_MS;
			if (pe && !skip) {
				pe->isr_sent_type = cmd->type;
				pe->isr_sent_epoch = cmd->epoch;
				pe->isr_sent_ms = pl.now;
			}
			pthread_mutex_unlock(&rp->mu);
			if (skip)
				continue;
			cmd->origin = rs->self;
			int rc = cluster_submit(rs->c, cmd);
			/* without a quorum (cut off, or between leaders) it is tried
			 * again every ISR_RESUBMIT_MS: one line per change that went
			 * out, none per retry */
			if (rc == 0)
				tfs_info("partition %s: %s of node %u (epoch %" PRId32 ")",
				         rp->label, meta_cmd_name(cmd->type), cmd->node,
				         cmd->epoch);
			else
				tfs_debug("partition %s: cannot submit %s of node %u: %s",
				          rp->label, meta_cmd_name(cmd->type), cmd->node,
				          tfs_strerror(rc));
		}
	}
}

/* ---- preferred leaders (loop thread) ------------------------------------------------------------
 *
 * A partition's preferred leader is the first of its replicas (meta_place
 * puts the leader it chose there). Failovers move leaderships off a node and
 * nothing moves them back, so after a restart one node can lead everything.
 * A leader whose preferred replica has been in sync for leader_rebalance_ms
 * hands the leadership to it (Kafka's auto.leader.rebalance), without
 * losing or failing a write:
 *
 *   begin: under role_lock for writing (no append in flight), handing = 1:
 *          local writes wait, forwarded ones get REP_ENOTLEADER (retried)
 *   ──hand_to has fetched up to our log end──> META_CMD_LEADER(epoch, hand_to)
 *   ──applied: apply_meta makes this node a follower──> writes forward to it
 *
 * Nothing is appended after hand_to fetched our end, so the old leader
 * truncates nothing and every write's epoch mark holds. hand_to not caught
 * up within HANDOFF_CATCHUP_MS, or the command refused because hand_to left
 * the in-sync set or died: handing = 0, appends resume, tried again after
 * leader_rebalance_ms. An answer that does not say whether the command was
 * applied (timeout, quorum leader change) keeps handing and sends it again:
 * the epoch fences it, so it applies at most once; resuming appends then
 * could lose them to a command applied late. */

/* Back as leader (mu held): if the replica it handed the leadership to
 * lost it soon after (a flapping node), the next handoff waits twice as long
 * in sync (at most 64 times leader_rebalance_ms); after a quiet spell, the
 * wait is leader_rebalance_ms again. */
static void hold_after_failover(struct replica *rp)
{
	unsigned base = rp->rs->rebalance_ms;
	int64_t hold = rp->hold_ms ? rp->hold_ms : base;
	if (!base || !rp->handed_ms)
		return;
	int64_t since = cluster_now_ms() - rp->handed_ms;
	if (since < 10 * hold) {
		rp->hold_ms = hold * 2 < 64LL * base ? hold * 2 : 64LL * base;
		tfs_info("partition %s: leads again %" PRId64 " ms after handing the "
		         "leadership to node %u: the next handoff waits for %" PRId64 " ms in sync",
		         rp->label, since, rp->hand_to, rp->hold_ms);
	} else {
		rp->hold_ms = base;
	}
}

/* A partition command about rp, fenced by epoch, from this node. */
static void partition_cmd_init(struct meta_cmd *c, enum meta_cmd_type type,
                               const struct replica *rp, int32_t epoch, uint16_t node)
{
	meta_cmd_init(c, type);
	c->topic_id = rp->topic_id;
	c->partition = rp->index;
	c->epoch = epoch;
	c->node = node;
	c->origin = rp->rs->self;
}

struct hand_ctx {
	struct replica_set *rs;
	uint64_t topic_id;
	uint32_t index;
	uint32_t seq;
};

static void hand_resume(struct replica *rp, const char *why)
{
	pthread_mutex_lock(&rp->mu);
	rp->handing = false;
	rp->hand_seq++;
	rp->version++; /* writers waiting for the handoff look again */
	pthread_cond_broadcast(&rp->cv);
	pthread_mutex_unlock(&rp->mu);
	rp->hand_sent = false;
	rp->pref_since_ms = 0;
	rp->hand_next_ms = cluster_now_ms() + rp->rs->rebalance_ms;
	if (why)
		tfs_info("partition %s: keeps its leadership: %s", rp->label, why);
}

static void hand_done(void *ctx, int rc)
{
	struct hand_ctx *h = ctx;
	struct replica *rp = lookup(h->rs, h->topic_id, h->index);
	if (rp && rp->handing && rp->hand_seq == h->seq) {
		if (rc == -ENOENT) {
			hand_resume(rp, NULL); /* the topic is being deleted */
		} else if (rc == -EINVAL || rc == -EHOSTDOWN) {
			char why[96];
			snprintf(why, sizeof(why), "node %u cannot take it (the quorum says it is %s)",
			         rp->hand_to, rc == -EINVAL ? "not in the in-sync set" : "down");
			hand_resume(rp, why);
		} else if (rc != 0 && rc != -ESTALE) {
			/* maybe applied, maybe not: the same command again (a newer
			 * epoch, or the new leader, arrives through apply_meta) */
			rp->hand_sent = false;
			rp->hand_resend_ms = cluster_now_ms() + RETRY_MS;
		}
	}
	free(h);
}

/* Moves a handoff on: sends the leader change once hand_to has everything. */
static void hand_step(struct replica_set *rs, struct replica *rp, int64_t now)
{
	if (rp->hand_sent || now < rp->hand_resend_ms)
		return;
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	pthread_mutex_lock(&rp->mu);
	const struct peer *pe = peer_find(rp, rp->hand_to);
	bool caught_up = pe && pe->end >= info.end_offset;
	pthread_mutex_unlock(&rp->mu);
	if (!caught_up) {
		if (now >= rp->hand_deadline) {
			char why[96];
			snprintf(why, sizeof(why), "node %u did not catch up within %d ms",
			         rp->hand_to, HANDOFF_CATCHUP_MS);
			hand_resume(rp, why);
		}
		return;
	}
	struct hand_ctx *h = malloc(sizeof(*h));
	if (!h)
		return; /* tried again next tick */
	*h = (struct hand_ctx){rs, rp->topic_id, rp->index, rp->hand_seq};
	struct meta_cmd cmd;
	partition_cmd_init(&cmd, META_CMD_LEADER, rp, rp->hand_epoch, rp->hand_to);
	rp->hand_sent = true;
	if (cluster_submit_cb(rs->c, &cmd, hand_done, h) < 0) {
		free(h);
		rp->hand_sent = false;
		rp->hand_resend_ms = now + RETRY_MS;
	}
}

enum hand_why { HAND_BACK, HAND_STOPPING, HAND_RESIGN };

/* Starts a handoff to hand_to if rp still leads at the epoch it was judged at
 * (why: back to its preferred replica, before stopping, or off a failing
 * disk). */
static bool hand_begin(struct replica *rp, uint16_t to, int32_t epoch, int64_t now,
                       enum hand_why why)
{
	pthread_rwlock_wrlock(&rp->role_lock); /* waits out appends in flight */
	pthread_mutex_lock(&rp->mu);
	bool ok = rp->role == ROLE_LEADER && rp->mp.leader_epoch == epoch && !rp->removed;
	if (ok) {
		rp->handing = true;
		rp->hand_seq++;
	}
	pthread_mutex_unlock(&rp->mu);
	pthread_rwlock_unlock(&rp->role_lock);
	if (!ok)
		return false;
	rp->hand_to = to;
	rp->hand_epoch = epoch;
	rp->hand_sent = false;
	rp->hand_resend_ms = 0;
	rp->hand_deadline = now + HANDOFF_CATCHUP_MS;
	if (why == HAND_STOPPING)
		tfs_info("partition %s: handing its leadership to node %u before "
		         "stopping", rp->label, to);
	else if (why == HAND_RESIGN)
		tfs_warn("partition %s: handing its leadership to node %u: this "
		         "node's log cannot take writes (disk full or failing)", rp->label, to);
	else
		tfs_info("partition %s: handing its leadership back to node %u, its "
		         "preferred leader (in sync for %" PRId64 " ms)", rp->label,
		         to, now - rp->pref_since_ms);
	return true;
}

/* Moves every handoff on (each tick, so that writers wait one tick at
 * most for the catch-up check); returns how many are in flight. (handing is
 * written only on this thread: read here without mu.) */
static unsigned handoffs_step(struct replica_set *rs)
{
	int64_t now = cluster_now_ms();
	unsigned active = 0;
	FOREACH_REPLICA(rs, rp) {
		if (rp->handing) {
			hand_step(rs, rp, now);
			active += rp->handing;
		}
	}
	return active;
}

/* 1 if node can take rp's leadership now (mu held): a follower in the
 * in-sync set that fetched at this epoch and is fetching now (a follower's
 * long poll comes back at least every FETCH_WAIT_MS): one that just died
 * would make writers wait for nothing. */
static bool can_take_locked(struct replica *rp, uint16_t node, int64_t now)
{
	const struct peer *pe = peer_find(rp, node);
	return node != rp->rs->self && pe && pe->end >= 0 &&
	       in_list(rp->mp.isr, rp->mp.nisr, node) &&
	       now - pe->last_fetch_ms <= 2 * FETCH_WAIT_MS;
}

/* Starts a handoff where the preferred replica has been in sync for
 * rebalance_ms (at most HANDOFFS_MAX in flight). */
static void rebalance_check(struct replica_set *rs, unsigned active)
{
	int64_t now = cluster_now_ms();
	bool cut_off = cluster_cut_off(rs->c);
	FOREACH_REPLICA(rs, rp) {
		pthread_mutex_lock(&rp->mu);
		uint16_t pref = rp->mp.nreplicas ? rp->mp.replicas[0] : 0;
		/* ... and caught up within replica_lag_ms */
		bool in_sync = rp->role == ROLE_LEADER && !rp->handing && !rp->epoch_behind &&
		               !cut_off && can_take_locked(rp, pref, now) &&
		               now - peer_find(rp, pref)->caught_up_ms <= (int64_t)rs->lag_ms;
		int32_t epoch = rp->mp.leader_epoch;
		pthread_mutex_unlock(&rp->mu);
		if (!in_sync) {
			rp->pref_since_ms = 0;
			continue;
		}
		if (!rp->pref_since_ms)
			rp->pref_since_ms = now;
		int64_t hold = rp->hold_ms ? rp->hold_ms : rs->rebalance_ms;
		if (now - rp->pref_since_ms < hold || now < rp->hand_next_ms ||
		    active >= HANDOFFS_MAX)
			continue;
		if (hand_begin(rp, pref, epoch, now, HAND_BACK)) {
			active++;
			hand_step(rs, rp, now);
		}
	}
}

/* The in-sync follower a stopping leader hands to (mu held): the first of
 * the replicas that is in the set and fetching now; 0 if none. */
static uint16_t drain_target_locked(struct replica *rp, int64_t now)
{
	for (unsigned i = 0; i < rp->mp.nreplicas; i++)
		if (can_take_locked(rp, rp->mp.replicas[i], now))
			return rp->mp.replicas[i];
	return 0;
}

/* 1 if a fetch to leader is in flight (loop thread). */
static bool fetch_inflight(struct replica_set *rs, uint16_t leader)
{
	for (struct session *s = rs->sessions; s; s = s->next)
		if (s->leader == leader)
			return s->inflight;
	return false;
}

/* Stopping (Kafka's controlled shutdown): every led partition with an
 * in-sync follower fetching now is handed to it, all at once; and the node,
 * which fetches no more, leaves the in-sync set of every partition it
 * follows (else their high watermarks would wait for it until it is marked
 * down). Counts in drain_left what is not done yet. */
static void drain_check(struct replica_set *rs)
{
	int64_t now = cluster_now_ms();
	int left = 0;
	/* without a quorum leader nothing can move: stop as a crash would */
	bool cut_off = cluster_cut_off(rs->c) || !cluster_quorum_known(rs->c);
	FOREACH_REPLICA(rs, rp) {
		pthread_mutex_lock(&rp->mu);
		uint16_t to = rp->role == ROLE_LEADER && !rp->epoch_behind && !cut_off
			? drain_target_locked(rp, now) : 0;
		bool leave = rp->role == ROLE_FOLLOWER && !cut_off &&
		             in_list(rp->mp.isr, rp->mp.nisr, rs->self);
		int32_t epoch = rp->mp.leader_epoch;
		uint16_t leader = rp->mp.leader;
		pthread_mutex_unlock(&rp->mu);
		if (leave) {
			left++;
			/* after its last fetch is answered: one still on its way to
			 * the leader would count it caught up, and back in the set */
			if (now - rp->leave_sent_ms >= ISR_RESUBMIT_MS && !fetch_inflight(rs, leader)) {
				struct meta_cmd cmd;
				partition_cmd_init(&cmd, META_CMD_ISR_SHRINK, rp, epoch, rs->self);
				if (cluster_submit(rs->c, &cmd) == 0)
					rp->leave_sent_ms = now;
			}
			continue;
		}
		if (!to)
			continue;
		left++;
		if (!rp->handing && now >= rp->hand_next_ms && hand_begin(rp, to, epoch, now, HAND_STOPPING))
			hand_step(rs, rp, now);
	}
	atomic_store(&rs->drain_left, left);
}

/* Leaders whose log failed a write hand the leadership to an in-sync
 * follower fetching now, if there is one (else they keep it: writes fail
 * with the disk's error, and succeed again once it has room). */
static void resign_check(struct replica_set *rs)
{
	if (!atomic_exchange(&rs->resign_due, false))
		return;
	int64_t now = cluster_now_ms();
	bool cut_off = cluster_cut_off(rs->c);
	FOREACH_REPLICA(rs, rp) {
		pthread_mutex_lock(&rp->mu);
		bool failed = rp->store_failed && rp->role == ROLE_LEADER;
		uint16_t to = failed && !rp->handing && !rp->epoch_behind && !cut_off &&
		              now >= rp->resign_next_ms ? drain_target_locked(rp, now) : 0;
		int32_t epoch = rp->mp.leader_epoch;
		rp->store_failed = false; /* the next failed write tries again */
		if (to)
			rp->resign_next_ms = now + RESIGN_EVERY_MS;
		pthread_mutex_unlock(&rp->mu);
		if (to && hand_begin(rp, to, epoch, now, HAND_RESIGN))
			hand_step(rs, rp, now);
	}
}

int replica_set_drain(struct replica_set *rs, unsigned ms)
{
	atomic_store(&rs->drain_left, -1);
	atomic_store(&rs->draining, true);
	int64_t until = cluster_now_ms() + ms;
	int left;
	while ((left = atomic_load(&rs->drain_left)) != 0 && cluster_now_ms() < until) {
		struct timespec ts = {0, TICK_MS * 1000000L};
		nanosleep(&ts, NULL);
	}
	return left;
}

/* ---- the tick (loop thread) ------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t)
{
	struct replica_set *rs = t->data;
	parked_process(rs);
	for (struct session *s = rs->sessions; s; s = s->next)
		session_kick(rs, s);
	int64_t now = cluster_now_ms();
	bool draining = atomic_load(&rs->draining);
	resign_check(rs);
	unsigned handoffs = handoffs_step(rs);
	if (draining)
		drain_check(rs);
	if (now - rs->last_isr_ms >= ISR_EVERY_MS) {
		rs->last_isr_ms = now;
		isr_check(rs);
		if (rs->rebalance_ms && !draining)
			rebalance_check(rs, handoffs);
	}
}

static void timer_start(struct replica_set *rs)
{
	if (rs->timer_state != TIMER_NONE)
		return;
	uv_timer_init(tr_loop(net_of(rs)), &rs->timer);
	rs->timer.data = rs;
	uv_timer_start(&rs->timer, on_tick, TICK_MS, TICK_MS);
	rs->timer_state = TIMER_ACTIVE;
}

static void on_timer_closed(uv_handle_t *h)
{
	struct replica_set *rs = h->data;
	rs->timer_state = TIMER_NONE;
	if (rs->nreplicas > 0)
		timer_start(rs);
}

/* ---- the set and its replicas ------------------------------------------------------------------ */

int replica_set_open(struct cluster *c, struct replica_set **out)
{
	const struct cluster_options *o = cluster_opts(c);
	struct replica_set *rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->c = c;
	rs->self = cluster_node_id(c);
	rs->lag_ms = o->replica_lag_ms ? o->replica_lag_ms : 10000;
	rs->wait_ms = o->replica_wait_ms ? o->replica_wait_ms : 15000;
	rs->request_ms = o->request_timeout_ms ? o->request_timeout_ms : 5000;
	rs->rebalance_ms = o->leader_rebalance_ms;
	rs->nbuckets = 256;
	rs->tab = calloc(rs->nbuckets, sizeof(*rs->tab));
	rs->cmds = calloc(META_MAX_REPLICAS, sizeof(*rs->cmds));
	if (!rs->tab || !rs->cmds) {
		free(rs->tab);
		free(rs->cmds);
		free(rs);
		return -ENOMEM;
	}
	atomic_init(&rs->parked_count, 0);
	atomic_init(&rs->draining, false);
	atomic_init(&rs->drain_left, 0);
	atomic_init(&rs->wake_pending, false);
	*out = rs;
	return 0;
}

void replica_set_close(struct replica_set *rs)
{
	if (!rs)
		return;
	if (rs->nreplicas)
		tfs_error("replication: closing with %zu partitions not removed", rs->nreplicas);
	while (rs->parked) {
		struct parked *pk = rs->parked;
		rs->parked = pk->next;
		free(pk);
	}
	while (rs->sessions) {
		struct session *s = rs->sessions;
		rs->sessions = s->next;
		free(s);
	}
	free(rs->tab);
	free(rs->out);
	free(rs->recs);
	free(rs->cmds);
	free(rs);
}

struct replica *replica_add(struct replica_set *rs, struct rep_partition *p, uint64_t topic_id,
                            uint32_t index, struct ls_partition *log,
                            const struct meta_partition *mp)
{
	struct replica *rp = calloc(1, sizeof(*rp));
	if (!rp) {
		tfs_error("partition %" PRIu64 "/%u: no memory to replicate it", topic_id, index);
		return NULL;
	}
	rp->rs = rs;
	rp->p = p;
	rp->log = log;
	rp->topic_id = topic_id;
	rp->index = index;
	snprintf(rp->label, sizeof(rp->label), "%s/%u", rep_partition_topic_name(p), index);
	/* writers first: a stream of overlapping appends must not starve the
	 * loop thread's role change */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&rp->role_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&rp->mu, NULL);
	pthread_cond_init(&rp->cv, NULL); /* CLOCK_REALTIME: see wait_until */
	struct ls_partition_info info;
	ls_partition_get_info(log, &info);
	rp->hw = info.high_watermark;
	rp->prefix_epoch = rp->ans_epoch = -1;

	if (rs->nreplicas + 1 > rs->nbuckets * 2)
		table_grow(rs);
	size_t b = bucket_of(rs, topic_id, index);
	rp->hnext = rs->tab[b];
	rs->tab[b] = rp;
	rs->nreplicas++;
	timer_start(rs);
	apply_meta(rp, mp, true);
	return rp;
}

void replica_update(struct replica *rp, const struct meta_partition *mp)
{
	apply_meta(rp, mp, false);
}

void replica_remove(struct replica *rp)
{
	struct replica_set *rs = rp->rs;
	for (struct replica **pp = &rs->tab[bucket_of(rs, rp->topic_id, rp->index)]; *pp;
	     pp = &(*pp)->hnext) {
		if (*pp == rp) {
			*pp = rp->hnext;
			break;
		}
	}
	pthread_mutex_lock(&rp->mu);
	rp->removed = true;
	pthread_cond_broadcast(&rp->cv);
	while (rp->users > 0)
		pthread_cond_wait(&rp->cv, &rp->mu);
	pthread_mutex_unlock(&rp->mu);
	pthread_cond_destroy(&rp->cv);
	pthread_mutex_destroy(&rp->mu);
	pthread_rwlock_destroy(&rp->role_lock);
	free(rp);
	if (--rs->nreplicas == 0 && rs->timer_state == TIMER_ACTIVE) {
		rs->timer_state = TIMER_CLOSING;
		uv_close((uv_handle_t *)&rs->timer, on_timer_closed);
	}
	parked_process(rs); /* fetches of this partition: -ENOENT */
}

/* ---- FUSE threads: produce, commit, state ---------------------------------------------------- */

void replica_wake(struct replica *rp)
{
	pthread_mutex_lock(&rp->mu);
	pthread_cond_broadcast(&rp->cv);
	pthread_mutex_unlock(&rp->mu);
}

static bool enter(struct replica *rp)
{
	pthread_mutex_lock(&rp->mu);
	bool ok = !rp->removed;
	if (ok)
		rp->users++;
	pthread_mutex_unlock(&rp->mu);
	return ok;
}

static void leave(struct replica *rp)
{
	pthread_mutex_lock(&rp->mu);
	if (--rp->users == 0 && rp->removed)
		pthread_cond_broadcast(&rp->cv);
	pthread_mutex_unlock(&rp->mu);
}

/* One forwarded produce: shared by the waiting FUSE thread and the response
 * callback; whoever drops the last reference frees it. rp is touched by the
 * callback only while the thread still waits (abandoned == false). */
struct fwd {
	struct replica *rp;
	atomic_int refs;
	atomic_bool abandoned;
	bool done;                   /* under rp->mu */
	int status;
	struct ls_append_result res;
};

static void fwd_put(struct fwd *fw)
{
	if (atomic_fetch_sub(&fw->refs, 1) == 1)
		free(fw);
}

static void fwd_done(void *ctx, int status, const struct tr_frame *resp)
{
	struct fwd *fw = ctx;
	if (atomic_load(&fw->abandoned))
		goto out;
	struct ls_append_result res = {0};
	if (status == 0) {
		struct rd r = {resp->payload, resp->len, false};
		int32_t err = (int32_t)rd32(&r);
		res.base_offset = (int64_t)rd64(&r);
		res.last_offset = (int64_t)rd64(&r);
		res.view_end = rd64(&r);
		res.duplicate = rd8(&r) ? 1 : 0;
		res.leader_epoch = (int32_t)rd32(&r);
		status = r.bad || r.left || err > 0 ? REP_EPROTO : err;
	}
	/* the thread sets abandoned under rp->mu before leaving, and rp is only
	 * freed (on this thread) after every thread left */
	struct replica *rp = fw->rp;
	pthread_mutex_lock(&rp->mu);
	if (!atomic_load(&fw->abandoned)) {
		fw->status = status;
		fw->res = res;
		fw->done = true;
		pthread_cond_broadcast(&rp->cv);
	}
	pthread_mutex_unlock(&rp->mu);
out:
	fwd_put(fw);
}

/* Encodes a TF_PRODUCE (see the table at the top). */
static uint8_t *produce_encode(const struct replica *rp, int32_t epoch, const struct ls_rec *recs,
                               uint32_t n, const struct ls_producer *prod, enum rep_acks acks,
                               uint32_t min_insync, size_t *len)
{
	size_t size = PRODUCE_HEAD;
	for (uint32_t i = 0; i < n; i++)
		size += 9 + (recs[i].key ? recs[i].key_len : 0) +
		        (recs[i].value ? recs[i].value_len : 0);
	if (size > TR_MAX_PAYLOAD)
		return NULL;
	uint8_t *buf = malloc(size), *p = buf;
	if (!buf)
		return NULL;
	wire_put64(p, rp->topic_id);
	wire_put32(p + 8, rp->index);
	wire_put32(p + 12, (uint32_t)epoch);
	wire_put64(p + 16, (uint64_t)(prod ? prod->producer_id : -1));
	wire_put16(p + 24, (uint16_t)(prod ? prod->producer_epoch : -1));
	wire_put32(p + 26, (uint32_t)(prod ? prod->base_sequence : -1));
	p[30] = (uint8_t)acks;
	wire_put32(p + 31, min_insync);
	wire_put32(p + 35, n);
	p += PRODUCE_HEAD;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t kl = recs[i].key ? recs[i].key_len : 0;
		uint32_t vl = recs[i].value ? recs[i].value_len : 0;
		*p++ = (uint8_t)((recs[i].key ? R_KEY : 0) | (recs[i].value ? R_VALUE : 0));
		wire_put32(p, kl);
		if (kl)
			memcpy(p + 4, recs[i].key, kl);
		p += 4 + kl;
		wire_put32(p, vl);
		if (vl)
			memcpy(p + 4, recs[i].value, vl);
		p += 4 + vl;
	}
	*len = size;
	return buf;
}

/* Errors after which a forward is tried again (while time remains). The
 * ambiguous ones (the leader may have appended) only with a producer id. */
static bool fwd_retryable(int rc, bool idempotent)
{
	switch (rc) {
	case REP_ENOTLEADER:
	case -ESTALE:
	case -ENOENT:            /* the leader has not seen the topic yet */
	case -ENOTCONN:          /* in-sync set below min_insync */
	case -EHOSTUNREACH:
	case -ENOBUFS:
	case -ESHUTDOWN:
		return true;
	case -ECONNRESET:
	case -ETIMEDOUT:
		return idempotent;
	default:
		return false;
	}
}

/* Sends the records to the leader and waits for its answer (users held,
 * mu not held). */
static int forward(struct replica *rp, uint16_t leader, int32_t epoch, const struct ls_rec *recs,
                   uint32_t n, const struct ls_producer *prod, enum rep_acks acks,
                   uint32_t min_insync, int64_t deadline, struct ls_append_result *res)
{
	struct replica_set *rs = rp->rs;
	size_t len = 0;
	uint8_t *buf = produce_encode(rp, epoch, recs, n, prod, acks, min_insync, &len);
	if (!buf)
		return len ? -ENOMEM : -EMSGSIZE;
	struct fwd *fw = calloc(1, sizeof(*fw));
	if (!fw) {
		free(buf);
		return -ENOMEM;
	}
	fw->rp = rp;
	atomic_init(&fw->refs, 2);
	atomic_init(&fw->abandoned, false);
	/* at least a second even near the deadline: an attempt cut short would
	 * end ambiguous (-ETIMEDOUT) where the leader would have answered */
	int64_t left = deadline - cluster_now_ms();
	if (left < 1000)
		left = 1000;
	unsigned timeout = (unsigned)(left < rs->request_ms ? left : rs->request_ms);
	int rc = tr_request(net_of(rs), leader, TF_PRODUCE, 0, buf, len, timeout, fwd_done, fw,
	                    NULL);
	free(buf);
	if (rc < 0) {
		fwd_put(fw);
		fwd_put(fw);
		return rc;
	}
	pthread_mutex_lock(&rp->mu);
	/* the transport answers within about timeout; the slack covers its timer.
	 * An idempotent produce stops waiting once the metadata names another
	 * leader (one cut off does not answer before the timeout): its retry
	 * there is deduplicated if the old leader's append reached it, and
	 * what did not is truncated from the old leader. */
	int64_t until = cluster_now_ms() + timeout + 1000;
	while (!fw->done && !rp->removed && !(prod && rp->mp.leader != leader) &&
	       wait_until(rp, until))
		;
	bool moved = prod && rp->mp.leader != leader;
	if (fw->done) {
		rc = fw->status;
		*res = fw->res;
	} else {
		rc = rp->removed ? -ECANCELED : moved ? REP_ENOTLEADER : -ETIMEDOUT;
		atomic_store(&fw->abandoned, true);
	}
	pthread_mutex_unlock(&rp->mu);
	fwd_put(fw);
	return rc;
}

int replica_produce(struct replica *rp, const struct ls_rec *recs, uint32_t n,
                    const struct ls_producer *prod, enum rep_acks acks, uint32_t min_insync,
                    struct ls_append_result *res)
{
	struct replica_set *rs = rp->rs;
	int64_t deadline = cluster_now_ms() + rs->wait_ms;
	int rc;
	if (!recs || n == 0)
		return -EINVAL;
	if (!enter(rp))
		return -ECANCELED;
	for (;;) {
		if (rep_partition_gone(rp->p)) { /* rmdir of the topic meanwhile */
			rc = -ENOENT;
			break;
		}
		pthread_rwlock_rdlock(&rp->role_lock);
		pthread_mutex_lock(&rp->mu);
		enum role role = rp->role;
		uint16_t leader = rp->mp.leader;
		int32_t epoch = rp->mp.leader_epoch;
		uint64_t version = rp->version;
		unsigned nisr = role == ROLE_LEADER ? live_isr_locked(rp) : rp->mp.nisr;
		/* A leader cut off from the metadata quorum for node_timeout_ms
		 * may have a successor already (the majority moves leaders off
		 * nodes it has not heard from that long): whatever it appended
		 * now would be truncated at the heal, so it takes nothing, even
		 * under acks: leader (Kafka's broker fencing). */
		bool fenced = role == ROLE_LEADER && cluster_cut_off(rs->c);
		/* A leader handing over waits for the new leader, then forwards. */
		bool handing = role == ROLE_LEADER && (rp->handing || rp->epoch_behind);
		if (rp->removed) {
			rc = -ECANCELED;
		} else if (role == ROLE_LEADER && !fenced && !handing &&
		           (acks != REP_ACKS_ALL || nisr >= min_insync)) {
			pthread_mutex_unlock(&rp->mu);
			rc = leader_append(rp, recs, n, prod, res);
			pthread_rwlock_unlock(&rp->role_lock);
			if (rc == 0)
				wake_fetchers(rs);
			if (rc < 0 && cluster_now_ms() < deadline && store_resigning(rp, rc)) {
				/* nothing appended: wait for the handoff, then forward */
				pthread_mutex_lock(&rp->mu);
				int64_t until = min64(deadline, cluster_now_ms() + RETRY_MS);
				while (rp->version == version && !rp->removed && wait_until(rp, until))
					;
				pthread_mutex_unlock(&rp->mu);
				continue;
			}
			break;
		} else if (role == ROLE_LEADER || leader == 0) {
			/* wait for the in-sync set to grow or a leader to appear (the
			 * live set is looked at again every RETRY_MS: followers that
			 * fetch again count again before the quorum expands the set) */
			pthread_rwlock_unlock(&rp->role_lock);
			int64_t until = min64(deadline, cluster_now_ms() + RETRY_MS);
			while (rp->version == version && !rp->removed && wait_until(rp, until))
				;
			rc = rp->version != version || rp->removed || cluster_now_ms() < deadline
				? 1 : -ENOTCONN;
			pthread_mutex_unlock(&rp->mu);
			if (rc == 1)
				continue;
			tfs_reason(rc, "partition %s: produce refused after %u ms: %s",
			           rp->label, rs->wait_ms,
			           leader == 0 ? "no leader"
			           : fenced    ? "this node, its leader, is cut off from the metadata "
			                         "quorum"
			           : handing   ? "its leadership is being handed to another replica, "
			                         "which did not take it"
			                       : "fewer in-sync replicas than min_insync");
			break;
		} else {
			pthread_mutex_unlock(&rp->mu);
			pthread_rwlock_unlock(&rp->role_lock);
			rc = forward(rp, leader, epoch, recs, n, prod, acks, min_insync, deadline, res);
			if (rc == 0 || !fwd_retryable(rc, prod != NULL))
				break;
			if (cluster_now_ms() >= deadline) {
				tfs_reason(-ENOTCONN, "partition %s: forward to node %u failed "
				           "for %u ms: %s", rp->label, leader, rs->wait_ms,
				           tfs_strerror(rc));
				rc = -ENOTCONN;
				break;
			}
			/* back off until the metadata changes or RETRY_MS */
			pthread_mutex_lock(&rp->mu);
			int64_t until = min64(deadline, cluster_now_ms() + RETRY_MS);
			while (rp->version == version && !rp->removed && wait_until(rp, until))
				;
			pthread_mutex_unlock(&rp->mu);
			continue;
		}
		pthread_mutex_unlock(&rp->mu);
		pthread_rwlock_unlock(&rp->role_lock);
		break;
	}
	if (rc == -ECONNRESET || rc == -ETIMEDOUT) {
		tfs_warn("partition %s: forwarded produce without a producer id: "
		         "outcome unknown (%s)", rp->label, tfs_strerror(rc));
		rc = -EIO;
	}
	leave(rp);
	return rc;
}

/* Where epoch e ended for good, as far as this node knows (mu held): the
 * offset after its last record in the partition's history, or -1 if it does
 * not know (yet). A leader's log is that history; a follower's log is a
 * prefix of it once truncated by its leader's epoch answer at the current
 * epoch: an epoch after e in it gives e's end, else the answer does. */
static int64_t epoch_end_known_locked(struct replica *rp, int32_t e)
{
	if (rp->mp.leader_epoch <= e)
		return -1; /* e may still be going on */
	if (rp->role != ROLE_LEADER &&
	    (rp->role == ROLE_OFFLINE || rp->prefix_epoch != rp->mp.leader_epoch))
		return -1;
	if (ls_partition_latest_epoch(rp->log) > e)
		return ls_partition_epoch_end_offset(rp->log, e);
	if (rp->role != ROLE_LEADER && rp->ans_epoch == e)
		return rp->ans_end;
	return -1;
}

/* Where a file's append stands (mu held): 1 committed (this node's HW is
 * past it and its offset here still has the epoch it was appended at), 0
 * not yet, -EIO gone (the committed record at its offset is of another
 * epoch, or its epoch is known to have ended before it: a new leader
 * truncated it away). */
static int mark_state_locked(struct replica *rp, const struct rep_mark *mk)
{
	if (rp->hw < mk->end) {
		int64_t e = epoch_end_known_locked(rp, mk->epoch);
		return e >= 0 && mk->end > e ? -EIO : 0;
	}
	struct ls_partition_info info;
	ls_partition_get_info(rp->log, &info);
	if (mk->end <= info.start_offset)
		return 1; /* committed, then retention or a reset took it */
	int32_t e = ls_partition_epoch_of(rp->log, mk->end - 1);
	return e == mk->epoch ? 1 : -EIO;
}

/* Waits (mu held) until a file's append is settled (mark_state_locked): 0
 * committed, -EIO truncated away, -ETIMEDOUT not settled by until, -ENOENT
 * the topic was deleted, -ECANCELED the replica removed. (A truncation below
 * its end says nothing by itself: the batch may be fetched again.) */
static int wait_mark_locked(struct replica *rp, const struct rep_mark *mk, int64_t until)
{
	for (;;) {
		if (rp->removed)
			return -ECANCELED;
		int st = mark_state_locked(rp, mk);
		if (st != 0)
			return st > 0 ? 0 : st;
		if (rep_partition_gone(rp->p))
			return -ENOENT;
		if (!wait_until(rp, until))
			return -ETIMEDOUT;
	}
}

static void mark_lost_log(const struct replica *rp, const struct rep_mark *mk)
{
	tfs_error("partition %s: records up to offset %" PRId64 " appended at leader "
	          "epoch %" PRId32 " were truncated by a newer leader: reported as EIO",
	          rp->label, mk->end - 1, mk->epoch);
}

void replica_marks_add(struct replica *rp, struct rep_marks *mk,
                       const struct ls_append_result *res)
{
	struct rep_mark m = {res->last_offset + 1, res->leader_epoch};
	if (mk->n && mk->m[mk->n - 1].epoch == m.epoch) {
		if (m.end > mk->m[mk->n - 1].end)
			mk->m[mk->n - 1].end = m.end;
		return;
	}
	/* a new epoch: drop the settled marks of older ones */
	pthread_mutex_lock(&rp->mu);
	uint8_t k = 0;
	for (uint8_t i = 0; i < mk->n; i++) {
		int st = mark_state_locked(rp, &mk->m[i]);
		if (st < 0) {
			mark_lost_log(rp, &mk->m[i]);
			mk->lost = 1;
		} else if (st == 0) {
			mk->m[k++] = mk->m[i];
		}
	}
	pthread_mutex_unlock(&rp->mu);
	mk->n = k;
	if (mk->n == REP_MARKS_MAX) { /* four epochs unsettled: cannot follow more */
		tfs_error("partition %s: appends at %u leader epochs not yet "
		          "committed: the oldest cannot be checked any more, reported as EIO",
		          rp->label, REP_MARKS_MAX);
		mk->lost = 1;
		memmove(mk->m, mk->m + 1, (REP_MARKS_MAX - 1) * sizeof(mk->m[0]));
		mk->n--;
	}
	mk->m[mk->n++] = m;
}

/* With acks: all, waits (mu held) until every append in mk is committed:
 * this node's high watermark passed it (a leader's moves with its in-sync
 * followers' fetches, a follower's with its own fetching) and its offset
 * still has the leader epoch it was appended at (else a newer leader
 * truncated it: -EIO). On a leader, an in-sync set that shrank below
 * min_insync meanwhile is waited on until the deadline, then fails it (as
 * Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND: the records stay, a retry
 * without a producer id may duplicate them); otherwise the leader gives its in-sync
 * followers up to COMMIT_SPREAD_MS to learn the watermark, so a read on
 * their mounts right after sees the records. Returns 0 or -EIO /
 * -ECANCELED. */
static int wait_acked_locked(struct replica *rp, enum rep_acks acks, uint32_t min_insync,
                             struct rep_marks *mk, int64_t deadline)
{
	struct replica_set *rs = rp->rs;
	int rc;
	if (acks != REP_ACKS_ALL)
		return 0;
	if (mk->lost)
		return -EIO;
	int64_t target;
again:
	target = 0;
	for (uint8_t i = 0; i < mk->n; i++) {
		const struct rep_mark *m = &mk->m[i];
		if ((rc = wait_mark_locked(rp, m, deadline)) == -EIO) {
			mark_lost_log(rp, m);
			mk->lost = 1; /* close after a failed fsync: no second wait */
			return rc;
		}
		if (rc == -ENOENT)
			return rc;
		if (rc < 0) {
			tfs_error("partition %s: commit: high watermark %" PRId64
			          " did not reach %" PRId64 " within %u ms (%s)", rp->label, rp->hw, m->end, rs->wait_ms,
			          rp->role == ROLE_LEADER ? "in-sync replicas behind"
			                                  : "this node's fetching behind");
			return rc;
		}
		if (m->end > target)
			target = m->end;
	}
	if (rp->role != ROLE_LEADER || !mk->n)
		return 0;
	if (rp->mp.nisr < min_insync) {
		/* a follower catching up (a node restarted) rejoins with the
		 * records, which then are on min_insync replicas: wait for it,
		 * checking the marks again (the leadership may move meanwhile) */
		if (!rp->removed && wait_until(rp, deadline))
			goto again;
		tfs_error("partition %s: commit: offset %" PRId64 " is on %u in-sync "
		          "replica(s), fewer than min_insync %u, for %u ms", rp->label, target - 1,
		          rp->mp.nisr, min_insync, rs->wait_ms);
		return -EIO;
	}
	int64_t until = cluster_now_ms() + COMMIT_SPREAD_MS;
	for (;;) {
		bool all = true;
		for (unsigned i = 0; all && rp->role == ROLE_LEADER && i < rp->mp.nisr; i++) {
			struct peer *pe = peer_find(rp, rp->mp.isr[i]);
			all = !pe || pe->known_hw >= target;
		}
		if (all || rp->removed || !wait_until(rp, until))
			break;
	}
	return 0;
}

int replica_wait_acked(struct replica *rp, enum rep_acks acks, uint32_t min_insync,
                       struct rep_marks *mk)
{
	if (acks != REP_ACKS_ALL)
		return 0;
	if (!enter(rp))
		return -EIO;
	pthread_mutex_lock(&rp->mu);
	int rc = wait_acked_locked(rp, acks, min_insync, mk, cluster_now_ms() + rp->rs->wait_ms);
	pthread_mutex_unlock(&rp->mu);
	leave(rp);
	return rc == -ENOENT ? rc : rc < 0 ? -EIO : 0;
}

int replica_commit(struct replica *rp, enum rep_acks acks, uint32_t min_insync,
                   struct rep_marks *mk)
{
	int rc;
	if (!enter(rp))
		return -EIO;
	pthread_mutex_lock(&rp->mu);
	int leader = rp->role == ROLE_LEADER;
	rc = wait_acked_locked(rp, acks, min_insync, mk, cluster_now_ms() + rp->rs->wait_ms);
	pthread_mutex_unlock(&rp->mu);
	if (rc == 0 && leader && (rc = ls_partition_sync(rp->log)) < 0)
		tfs_error("partition %s: commit failed: %s", rp->label,
		          tfs_strerror(rc));
	leave(rp);
	return rc == -ENOENT ? rc : rc < 0 ? -EIO : 0;
}

void replica_state(struct replica *rp, struct rep_partition_state *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&rp->mu);
	const struct meta_partition *mp = &rp->mp;
	st->partition = rp->index;
	st->leader = mp->leader;
	st->leader_epoch = mp->leader_epoch;
	st->nreplicas = mp->nreplicas < 16 ? mp->nreplicas : 16;
	memcpy(st->replicas, mp->replicas, st->nreplicas * sizeof(st->replicas[0]));
	st->nisr = mp->nisr < 16 ? mp->nisr : 16;
	memcpy(st->isr, mp->isr, st->nisr * sizeof(st->isr[0]));
	pthread_mutex_unlock(&rp->mu);
	ls_partition_get_info(rp->log, &st->log);
}
