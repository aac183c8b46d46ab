/*
 * cluster.c - the core of one cluster node (cluster.h): the transport and the
 * metadata quorum on its loop thread, proposals from any node, node liveness,
 * and the controller that runs on the quorum's leader.
 *
 * Proposals (cluster_propose, a FUSE thread):
 *
 *   tag the command (this node, a seq with the top bit set), park a waiter
 *   ──this node leads raft──> meta_raft_submit
 *   ──else──> TF_META_PROPOSE to the leader, which meta_raft_submits it with
 *             the same tag and answers the outcome
 *   applied hook on this node sees (this node, seq) ──> local.c reconciled
 *   first, then the waiter is woken with meta_apply's code
 *   (an error answer — not leader, quorum lost, connection reset — makes the
 *    waiter try again until request_timeout_ms; a command applied twice by a
 *    retry is refused the second time and nobody waits for that result)
 *
 * TF_META_PROPOSE payload: an encoded meta_cmd (meta.h). Response payload:
 *   | 4 | i32 rc | 8 | i64 value | 2 | u16 n | n | err text |  (big-endian)
 *
 * TF_HEARTBEAT (one-way, node -> quorum leader): | 2 | u16 node | 8 | u64 boot id |
 *
 * Liveness: every node sends a heartbeat to the quorum leader every
 * HEARTBEAT_MS. Heartbeats are not written to the raft log: the controller
 * keeps when it last heard from each node (struct meta_seen) on its own
 * clock. A node it hears from that the state does not know as alive is
 * registered (META_CMD_NODE_REGISTER); a node silent for node_timeout_ms is
 * marked down (META_CMD_NODE_DOWN), which makes meta_ctl_plan move its
 * partition leaderships and group coordinators.
 *
 * Threading: everything below the "loop thread" marks runs on the transport's
 * loop thread; cluster_propose/submit and the accessors on any thread.
 */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../logstore/crc32c.h"
#include "../logstore/log.h"
#include "internal.h"
#include "meta_raft.h"
#include "raft_transport.h"
#include "wire.h"

#define TICK_MS 200              /* heartbeat and controller period */
#define CTL_MAX_CMDS 256         /* commands per controller pass */
#define SEQ_TAG (1ull << 63)     /* cluster_propose's seqs (meta_raft.h) */
#define RETRY_MS 150             /* a failed proposal attempt is retried after */
#define ELECTION_MS 1000         /* the metadata quorum's election timeout */

struct waiter {
	uint64_t seq;
	int state;                   /* 0 in flight, 1 applied, 2 attempt failed */
	int rc;
	struct meta_result res;
	struct waiter *next;
};

/* A TF_META_PROPOSE being proposed on behalf of another node. */
struct forward {
	struct cluster *c;
	struct tr_origin from;
};

struct cluster {
	struct rep *rep;
	struct cluster_options o;
	char cluster_id[TR_CLUSTER_ID_MAX + 1];
	char raft_dir[PATH_MAX];
	struct tr_peer_addr peers[64];
	struct meta_raft_voter voters[64];

	struct raft_uv_transport rt;
	bool rt_init;
	struct tr_net *net;
	struct meta_raft *mr;
	struct replica_set *rs;

	pthread_mutex_t lock;        /* guards waiters, closing, raft_closed */
	pthread_cond_t cond;
	struct waiter *waiters;
	bool closing, raft_closed, loop_closed;
	atomic_uint_fast64_t next_seq;
	uint64_t boot_id;
	atomic_uint_fast64_t applied_idx;   /* raft index applied on this node */
	atomic_bool caught_up;              /* a read barrier has passed since start:
	                                       applied entries are news, not replay */
	pthread_t loop_thread;
	atomic_bool loop_known;

	/* loop thread */
	uv_timer_t tick;
	bool was_leader;
	struct meta_seen seen[META_MAX_NODES];
	size_t nseen;
	int64_t registered_at[META_MAX_NODES]; /* per seen slot: last register proposed */
	atomic_int ctl_inflight;     /* the controller's own commands in flight */
	struct meta_cmd ctl_cmds[CTL_MAX_CMDS];
	/* when this node last knew a quorum leader (cluster_now_ms; written by
	 * the loop thread, read by .cluster/nodes) */
	atomic_int_fast64_t leader_known_ms;
};

int64_t cluster_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct tr_net *cluster_net(struct cluster *c) { return c->net; }
struct rep *cluster_rep(struct cluster *c) { return c->rep; }
struct replica_set *cluster_replicas(struct cluster *c) { return c->rs; }
uint16_t cluster_node_id(const struct cluster *c) { return c->o.node_id; }
const struct cluster_options *cluster_opts(const struct cluster *c) { return &c->o; }

void cluster_read(struct cluster *c, void (*fn)(void *ctx, const struct meta_state *s),
                  void *ctx)
{
	meta_raft_fsm_read(meta_raft_fsm(c->mr), fn, ctx);
}

struct alive_q {
	uint16_t id;
	int alive;
};

static void alive_fn(void *ctx, const struct meta_state *s)
{
	struct alive_q *q = ctx;
	const struct meta_node *n = meta_node_find(s, q->id);
	q->alive = n && n->alive;
}

int cluster_node_alive(struct cluster *c, uint16_t id)
{
	struct alive_q q = {id, 0};
	cluster_read(c, alive_fn, &q);
	return q.alive;
}

/* ---- proposals ------------------------------------------------------------ */

static void waiter_finish(struct cluster *c, uint64_t seq, int state, int rc,
                          const struct meta_result *res)
{
	pthread_mutex_lock(&c->lock);
	for (struct waiter *w = c->waiters; w; w = w->next) {
		if (w->seq != seq || w->state == 1)
			continue;
		w->state = state;
		w->rc = rc;
		if (res)
			w->res = *res;
		pthread_cond_broadcast(&c->cond);
		break;
	}
	pthread_mutex_unlock(&c->lock);
}

/* The outcome of one attempt. Success is not final here: the waiter ends
 * when this node applies the command (the applied hook). */
static void attempt_failed(struct cluster *c, uint64_t seq, int rc)
{
	struct meta_result res = {0};
	snprintf(res.err, sizeof(res.err), "%s", tfs_strerror(rc));
	waiter_finish(c, seq, 2, rc, &res);
}

struct attempt {
	struct cluster *c;
	uint64_t seq;
};

static void local_done(void *ctx, int rc, const struct meta_result *res)
{
	struct attempt *a = ctx;
	(void)res;
	/* rc >= 0 or a refusal: the applied hook has (or will have) the result. */
	if (rc == REP_ENOTLEADER || rc == REP_ENOQUORUM || rc == -ECANCELED ||
	    rc == -ENOMEM || rc == -EIO || rc == -ENOSPC)
		attempt_failed(a->c, a->seq, rc);
	free(a);
}

static void forward_resp(void *ctx, int status, const struct tr_frame *resp)
{
	struct attempt *a = ctx;
	if (status < 0)
		attempt_failed(a->c, a->seq, status);
	else if (resp->len >= 14) {
		int rc = (int32_t)wire_get32(resp->payload);
		if (rc == REP_ENOTLEADER || rc == REP_ENOQUORUM || rc == -ECANCELED)
			attempt_failed(a->c, a->seq, rc);
	}
	free(a);
}

/* One attempt to get cmd (tagged) into the log. Any thread. */
static int propose_attempt(struct cluster *c, const struct meta_cmd *cmd)
{
	struct attempt *a = malloc(sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->c = c;
	a->seq = cmd->seq;
	int rc;
	if (meta_raft_is_leader(c->mr)) {
		rc = meta_raft_submit(c->mr, cmd, local_done, a);
	} else {
		uint16_t leader = meta_raft_leader(c->mr, NULL, 0);
		if (leader == 0 || leader == c->o.node_id) {
			free(a);
			return REP_ENOTLEADER;
		}
		uint8_t buf[META_CMD_MAX_BYTES];
		long n = meta_cmd_encode(cmd, buf, sizeof(buf));
		if (n < 0 || (size_t)n > sizeof(buf)) {
			free(a);
			return n < 0 ? (int)n : -EINVAL;
		}
		rc = tr_request(c->net, leader, TF_META_PROPOSE, 0, buf, (size_t)n,
		                c->o.request_timeout_ms, forward_resp, a, NULL);
	}
	if (rc < 0)
		free(a);
	return rc;
}


int cluster_propose(struct cluster *c, const struct meta_cmd *cmd, struct meta_result *res)
{
	struct meta_result scratch;
	if (!res)
		res = &scratch;
	memset(res, 0, sizeof(*res));
	struct meta_cmd *tagged = malloc(sizeof(*tagged));
	struct waiter *w = calloc(1, sizeof(*w));
	if (!tagged || !w) {
		free(tagged);
		free(w);
		return -ENOMEM;
	}
	*tagged = *cmd;
	tagged->origin = c->o.node_id;
	tagged->seq = SEQ_TAG | atomic_fetch_add(&c->next_seq, 1);
	w->seq = tagged->seq;

	pthread_mutex_lock(&c->lock);
	if (c->closing) {
		pthread_mutex_unlock(&c->lock);
		free(tagged);
		free(w);
		return -ECANCELED;
	}
	w->next = c->waiters;
	c->waiters = w;
	int64_t deadline = cluster_now_ms() + c->o.request_timeout_ms;
	int last = -ETIMEDOUT;
	for (;;) {
		w->state = 0;
		pthread_mutex_unlock(&c->lock);
		int rc = propose_attempt(c, tagged);
		pthread_mutex_lock(&c->lock);
		if (rc < 0 && w->state != 1) {
			last = rc;
			w->state = 2;
		}
		/* Wait for the apply, an attempt failure, or a retry tick. */
		while (w->state == 0 && !c->closing && cluster_now_ms() < deadline) {
			struct timespec ts;
			wire_deadline(&ts, RETRY_MS * 4);
			pthread_cond_timedwait(&c->cond, &c->lock, &ts);
		}
		if (w->state == 1 || c->closing || cluster_now_ms() >= deadline)
			break;
		last = w->rc;
		struct timespec ts;
		wire_deadline(&ts, RETRY_MS);
		pthread_cond_timedwait(&c->cond, &c->lock, &ts);
		if (w->state == 1)
			break;
	}
	int rc;
	if (w->state == 1) {
		rc = w->rc;
		*res = w->res;
	} else if (c->closing) {
		rc = -ECANCELED;
	} else {
		rc = last == REP_ENOTLEADER || last == REP_ENOQUORUM || last == -ETIMEDOUT ||
		     last == -EHOSTUNREACH || last == -ECONNRESET || last == -ENOTCONN
			? -ENOTCONN : last;
		snprintf(res->err, sizeof(res->err), "the metadata quorum did not answer "
		         "within %u ms (%s)", c->o.request_timeout_ms, tfs_strerror(last));
	}
	for (struct waiter **pp = &c->waiters; *pp; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	}
	pthread_mutex_unlock(&c->lock);
	free(w);
	free(tagged);
	return rc;
}

static void submit_done(void *ctx, int rc, const struct meta_result *res)
{
	(void)ctx;
	if (rc < 0)
		tfs_debug("metadata: command refused: %s", res->err[0] ? res->err : tfs_strerror(rc));
}

static void submit_fwd_resp(void *ctx, int status, const struct tr_frame *resp)
{
	(void)ctx;
	(void)resp;
	if (status < 0)
		tfs_debug("metadata: forwarded command failed: %s", tfs_strerror(status));
}

/* The controller's commands (on the raft leader) are counted, so that a
 * pass waits for the previous one to land before judging again; other
 * modules' submissions (isr changes, group offsets) do not hold it up. */
static void ctl_done(void *ctx, int rc, const struct meta_result *res)
{
	struct cluster *c = ctx;
	atomic_fetch_sub(&c->ctl_inflight, 1);
	submit_done(NULL, rc, res);
}

static int ctl_submit(struct cluster *c, const struct meta_cmd *cmd)
{
	atomic_fetch_add(&c->ctl_inflight, 1);
	int rc = meta_raft_submit(c->mr, cmd, ctl_done, c);
	if (rc < 0) {
		atomic_fetch_sub(&c->ctl_inflight, 1);
		tfs_debug("metadata: cannot submit %s: %s", meta_cmd_name(cmd->type),
		          tfs_strerror(rc));
	}
	return rc;
}

/* Into the quorum's log: meta_raft_submit here if this node leads it (done
 * called), else TF_META_PROPOSE to its leader (resp called). */
static int submit_via(struct cluster *c, const struct meta_cmd *cmd, meta_raft_done_cb done,
                      tr_response_cb resp, void *ctx)
{
	if (meta_raft_is_leader(c->mr))
		return meta_raft_submit(c->mr, cmd, done, ctx);
	uint16_t leader = meta_raft_leader(c->mr, NULL, 0);
	uint8_t buf[META_CMD_MAX_BYTES];
	struct meta_cmd tagged = *cmd;
	tagged.origin = c->o.node_id;
	tagged.seq = SEQ_TAG | atomic_fetch_add(&c->next_seq, 1);
	long n = meta_cmd_encode(&tagged, buf, sizeof(buf));
	if (leader == 0 || leader == c->o.node_id)
		return REP_ENOTLEADER;
	if (n < 0 || (size_t)n > sizeof(buf))
		return n < 0 ? (int)n : -EINVAL;
	return tr_request(c->net, leader, TF_META_PROPOSE, 0, buf, (size_t)n,
	                  c->o.request_timeout_ms, resp, ctx, NULL);
}

int cluster_submit(struct cluster *c, const struct meta_cmd *cmd)
{
	int rc = submit_via(c, cmd, submit_done, submit_fwd_resp, c);
	if (rc < 0)
		tfs_debug("metadata: cannot submit %s: %s", meta_cmd_name(cmd->type),
		          tfs_strerror(rc));
	return rc;
}

/* cluster_submit_cb's request: the caller's callback and context. */
struct submit_cb {
	void (*cb)(void *ctx, int rc);
	void *ctx;
};

static void submit_cb_done(void *ctx, int rc, const struct meta_result *res)
{
	struct submit_cb *s = ctx;
	(void)res;
	s->cb(s->ctx, rc);
	free(s);
}

static void submit_cb_resp(void *ctx, int status, const struct tr_frame *resp)
{
	struct submit_cb *s = ctx;
	int rc = status;
	if (rc == 0)
		rc = resp->len >= 14 ? (int32_t)wire_get32(resp->payload) : REP_EPROTO;
	s->cb(s->ctx, rc);
	free(s);
}

int cluster_submit_cb(struct cluster *c, const struct meta_cmd *cmd,
                      void (*cb)(void *ctx, int rc), void *ctx)
{
	struct submit_cb *s = malloc(sizeof(*s));
	if (!s)
		return -ENOMEM;
	*s = (struct submit_cb){cb, ctx};
	int rc = submit_via(c, cmd, submit_cb_done, submit_cb_resp, s);
	if (rc < 0)
		free(s);
	return rc;
}

/* ---- loop thread: frames -------------------------------------------------- */

static void forward_done(void *ctx, int rc, const struct meta_result *res)
{
	struct forward *fw = ctx;
	uint8_t buf[14 + sizeof(res->err)];
	size_t n = strnlen(res->err, sizeof(res->err) - 1);
	wire_put32(buf, (uint32_t)rc);
	wire_put64(buf + 4, (uint64_t)res->value);
	wire_put16(buf + 12, (uint16_t)n);
	memcpy(buf + 14, res->err, n);
	if (tr_respond(fw->c->net, &fw->from, TF_META_PROPOSE, 0, buf, 14 + n) < 0)
		tfs_debug("metadata: could not answer node %u's proposal", fw->from.peer);
	free(fw);
}

static void respond_error(struct cluster *c, const struct tr_frame *f, int code)
{
	if (tr_respond_error(c->net, &f->origin, f->type, code) < 0)
		tfs_debug("could not answer node %u", f->peer);
}

static int on_meta_propose(struct cluster *c, const struct tr_frame *f)
{
	struct meta_cmd *cmd = malloc(sizeof(*cmd));
	if (!cmd) {
		respond_error(c, f, -ENOMEM);
		return 0;
	}
	int rc = meta_cmd_decode(f->payload, f->len, cmd);
	if (rc < 0 || f->request_id == 0 || cmd->origin != f->peer || !(cmd->seq & SEQ_TAG)) {
		free(cmd);
		tfs_warn("node %u: malformed metadata proposal", f->peer);
		return REP_EPROTO;
	}
	if (!meta_raft_is_leader(c->mr)) {
		free(cmd);
		respond_error(c, f, REP_ENOTLEADER);
		return 0;
	}
	struct forward *fw = malloc(sizeof(*fw));
	if (!fw) {
		free(cmd);
		return 0;
	}
	fw->c = c;
	fw->from = f->origin;
	rc = meta_raft_submit(c->mr, cmd, forward_done, fw);
	free(cmd);
	if (rc < 0) {
		free(fw);
		respond_error(c, f, rc);
	}
	return 0;
}

static struct meta_seen *seen_slot(struct cluster *c, uint16_t node, size_t *idx)
{
	for (size_t i = 0; i < c->nseen; i++) {
		if (c->seen[i].node == node) {
			*idx = i;
			return &c->seen[i];
		}
	}
	if (c->nseen == META_MAX_NODES)
		return NULL;
	*idx = c->nseen;
	c->seen[c->nseen] = (struct meta_seen){node, cluster_now_ms()};
	c->registered_at[c->nseen] = 0;
	return &c->seen[c->nseen++];
}

/* Registers node (again) if the state does not know it as alive. */
static void maybe_register(struct cluster *c, uint16_t node, size_t idx)
{
	const struct meta_state *s = &meta_raft_fsm(c->mr)->state;  /* loop thread */
	const struct meta_node *n = meta_node_find(s, node);
	if (n && n->alive)
		return;
	int64_t now = cluster_now_ms();
	if (now - c->registered_at[idx] < 1000)
		return;
	const char *addr = tr_peer_address(c->net, node);
	if (!addr)
		return;
	c->registered_at[idx] = now;
	struct meta_cmd cmd;
	meta_cmd_init(&cmd, META_CMD_NODE_REGISTER);
	cmd.node = node;
	snprintf(cmd.address, sizeof(cmd.address), "%s", addr);
	cmd.term = n ? n->hb_term + 1 : 1;
	cmd.ts_ms = wall_ms();
	tfs_info("metadata: node %u is up (%s)", node, addr);
	if (ctl_submit(c, &cmd) < 0)
		c->registered_at[idx] = 0;
}

static int on_heartbeat(struct cluster *c, const struct tr_frame *f)
{
	if (f->len != 10 || wire_get16(f->payload) != f->peer)
		return REP_EPROTO;
	if (!meta_raft_is_leader(c->mr))
		return 0;
	size_t idx;
	struct meta_seen *s = seen_slot(c, f->peer, &idx);
	if (s) {
		s->at_ms = cluster_now_ms();
		maybe_register(c, f->peer, idx);
	}
	return 0;
}

static int on_barrier(struct cluster *c, const struct tr_frame *f)
{
	if (f->len != 0 || f->request_id == 0)
		return REP_EPROTO;
	if (!meta_raft_is_leader(c->mr)) {
		respond_error(c, f, REP_ENOTLEADER);
		return 0;
	}
	uint8_t buf[8];
	wire_put64(buf, meta_raft_commit_index(c->mr));
	if (tr_respond(c->net, &f->origin, f->type, 0, buf, sizeof(buf)) < 0)
		tfs_debug("could not answer node %u's barrier", f->peer);
	return 0;
}

struct barrier {
	struct cluster *c;
	int done;            /* 0 waiting, 1 answered, -1 failed */
	uint64_t index;
	int refs;            /* the waiter and the callback */
};

static void barrier_put(struct barrier *b)
{
	/* caller holds c->lock */
	if (--b->refs == 0)
		free(b);
}

static void barrier_resp(void *ctx, int status, const struct tr_frame *resp)
{
	struct barrier *b = ctx;
	struct cluster *c = b->c;
	pthread_mutex_lock(&c->lock);
	if (status == 0 && resp->len == 8) {
		b->index = wire_get64(resp->payload);
		b->done = 1;
	} else {
		b->done = -1;
	}
	pthread_cond_broadcast(&c->cond);
	barrier_put(b);
	pthread_mutex_unlock(&c->lock);
}

/* One read barrier through the quorum leader, at most ms: 0 once this node
 * has applied what the leader had committed when it answered (or this node
 * is the leader), -EAGAIN if no leader is known, -ETIMEDOUT otherwise. */
static int barrier(struct cluster *c, unsigned ms)
{
	if (meta_raft_is_leader(c->mr)) {
		atomic_store(&c->caught_up, true);
		return 0;
	}
	uint16_t leader = meta_raft_leader(c->mr, NULL, 0);
	if (leader == 0 || leader == c->o.node_id)
		return -EAGAIN;
	struct barrier *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->c = c;
	b->refs = 2;
	if (tr_request(c->net, leader, TF_META_BARRIER, 0, NULL, 0, ms, barrier_resp, b,
	               NULL) < 0) {
		free(b);
		return -EAGAIN;
	}
	int rc = -ETIMEDOUT;
	struct timespec ts;
	wire_deadline(&ts, ms);
	pthread_mutex_lock(&c->lock);
	while (b->done == 0 && !c->closing)
		if (pthread_cond_timedwait(&c->cond, &c->lock, &ts) != 0)
			break;
	if (b->done == 1) {
		while (atomic_load(&c->applied_idx) < b->index && !c->closing)
			if (pthread_cond_timedwait(&c->cond, &c->lock, &ts) != 0)
				break;
		if (atomic_load(&c->applied_idx) >= b->index) {
			rc = 0;
			atomic_store(&c->caught_up, true);
		}
	}
	barrier_put(b);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

void cluster_sync(struct cluster *c)
{
	if (!c)
		return;
	if (atomic_load(&c->loop_known) && pthread_equal(pthread_self(), c->loop_thread))
		return;
	(void)barrier(c, 1000);
}

int cluster_catch_up(struct cluster *c, unsigned ms)
{
	int64_t deadline = cluster_now_ms() + ms;
	for (;;) {
		int64_t left = deadline - cluster_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		int rc = barrier(c, left < 1000 ? (unsigned)left : 1000);
		if (rc == 0)
			return 0;
		if (rc == -EAGAIN) { /* no leader known yet: the quorum may be forming */
			struct timespec ts = {0, 50 * 1000000L};
			nanosleep(&ts, NULL);
		}
	}
}

static int on_frame(void *ctx, struct tr_net *net, const struct tr_frame *f)
{
	struct cluster *c = ctx;
	(void)net;
	if (!c->mr && (f->type == TF_META_BARRIER || f->type == TF_META_PROPOSE ||
	               f->type == TF_HEARTBEAT)) {
		if (f->request_id) /* closing: the quorum is gone from this node */
			respond_error(c, f, -ESHUTDOWN);
		return 0;
	}
	if (f->type == TF_META_BARRIER)
		return on_barrier(c, f);
	if (f->type == TF_META_PROPOSE)
		return on_meta_propose(c, f);
	if (f->type == TF_HEARTBEAT)
		return on_heartbeat(c, f);
	if (f->type >= TF_FETCH && f->type <= TF_REPLICA_MAX)
		return c->rs ? replica_on_frame(c->rs, f) : 0;
	if (f->type >= TF_GROUP_MIN && f->type <= TF_GROUP_MAX)
		return rep_groups_on_frame(c->rep, f);
	tfs_warn("node %u: unknown frame type %u", f->peer, f->type);
	return REP_EPROTO;
}

/* ---- loop thread: applied hook --------------------------------------------- */

static void applied_to(struct cluster *c, uint64_t idx)
{
	if (idx <= atomic_load(&c->applied_idx))
		return;
	pthread_mutex_lock(&c->lock);
	atomic_store(&c->applied_idx, idx);
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

static void on_applied(void *ctx, const struct meta_cmd *cmd, int rc,
                       const struct meta_result *res)
{
	struct cluster *c = ctx;
	const struct meta_state *s = &meta_raft_fsm(c->mr)->state;
	rep_cluster_reconcile(c->rep, s);
	rep_groups_meta_changed(c->rep, s);
	if (cmd->type == META_CMD_NODE_DOWN && rc == 0) {
		if (atomic_load(&c->caught_up))
			tfs_warn("metadata: node %u is down", cmd->node);
		else /* a restart replaying its log: old news */
			tfs_debug("metadata: node %u was down", cmd->node);
	}
	if (cmd->origin == c->o.node_id && (cmd->seq & SEQ_TAG))
		waiter_finish(c, cmd->seq, 1, rc, res);
	applied_to(c, meta_raft_last_applied(c->mr) + 1);
}

static void on_restored(void *ctx)
{
	struct cluster *c = ctx;
	const struct meta_state *s = &meta_raft_fsm(c->mr)->state;
	rep_cluster_reconcile(c->rep, s);
	rep_groups_meta_changed(c->rep, s);
	if (c->mr)
		applied_to(c, meta_raft_last_applied(c->mr));
}

/* ---- loop thread: heartbeat and controller --------------------------------- */

static void controller_pass(struct cluster *c)
{
	const struct meta_state *s = &meta_raft_fsm(c->mr)->state;
	int64_t now = cluster_now_ms();
	if (!c->was_leader) {
		/* A new controller judges nobody before it could hear from them. */
		c->was_leader = true;
		c->nseen = 0;
		for (uint32_t i = 0; i < s->nnodes; i++) {
			size_t idx;
			seen_slot(c, s->nodes[i].id, &idx);
		}
		tfs_info("metadata: node %u leads the quorum", c->o.node_id);
	}
	size_t idx;
	struct meta_seen *me = seen_slot(c, c->o.node_id, &idx);
	if (me) {
		me->at_ms = now;
		maybe_register(c, c->o.node_id, idx);
	}
	if (atomic_load(&c->ctl_inflight) > 0)
		return;   /* let the last pass land before judging again */
	size_t n = meta_ctl_down(s, c->seen, c->nseen, now, c->o.node_timeout_ms,
	                         c->ctl_cmds, CTL_MAX_CMDS);
	if (n == 0)
		n = meta_ctl_plan(s, c->ctl_cmds, CTL_MAX_CMDS);
	if (n > CTL_MAX_CMDS)
		n = CTL_MAX_CMDS;
	for (size_t i = 0; i < n; i++) {
		if (c->ctl_cmds[i].type == META_CMD_LEADER)
			tfs_info("controller: topic %" PRIu64 " partition %u: leader -> node %u",
			         c->ctl_cmds[i].topic_id, c->ctl_cmds[i].partition,
			         c->ctl_cmds[i].node);
		if (ctl_submit(c, &c->ctl_cmds[i]) < 0)
			break;
	}
}

static void on_tick(uv_timer_t *t)
{
	struct cluster *c = t->data;
	applied_to(c, meta_raft_last_applied(c->mr));
	rep_cluster_tick(c->rep);
	if (meta_raft_is_leader(c->mr)) {
		atomic_store(&c->leader_known_ms, cluster_now_ms());
		controller_pass(c);
		return;
	}
	c->was_leader = false;
	uint16_t leader = meta_raft_leader(c->mr, NULL, 0);
	if (leader != 0)
		atomic_store(&c->leader_known_ms, cluster_now_ms());
	if (leader == 0 || leader == c->o.node_id)
		return;
	uint8_t hb[10];
	wire_put16(hb, c->o.node_id);
	wire_put64(hb + 2, c->boot_id);
	int rc = tr_send(c->net, leader, TF_HEARTBEAT, 0, hb, sizeof(hb));
	if (rc < 0 && rc != -ENOBUFS)
		tfs_debug("heartbeat to node %u: %s", leader, tfs_strerror(rc));
}

static void start_on_loop(struct tr_net *net, void *ctx, int status)
{
	struct cluster *c = ctx;
	(void)net;
	if (status < 0)
		return;
	c->loop_thread = pthread_self();
	atomic_store(&c->loop_known, true);
	uv_timer_init(tr_loop(c->net), &c->tick);
	c->tick.data = c;
	uv_timer_start(&c->tick, on_tick, TICK_MS, TICK_MS);
}

/* ---- life ------------------------------------------------------------------ */

static void make_cluster_id(struct cluster *c)
{
	/* The same voters make the same id on every node. */
	uint32_t crc = 0;
	for (unsigned i = 0; i < c->o.nvoters; i++) {
		char one[META_ADDR_MAX + 8];
		int n = snprintf(one, sizeof(one), "%u@%s;", c->o.voters[i].id,
		                 c->o.voters[i].address);
		crc = ls_crc32c(crc, one, (size_t)n);
	}
	snprintf(c->cluster_id, sizeof(c->cluster_id), "topicfs-%08x", crc);
}

int cluster_open(struct rep *r, const struct cluster_options *o, const char *data_dir,
                 struct cluster **out)
{
	struct cluster *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->rep = r;
	c->o = *o;
	if (!c->o.replica_lag_ms)
		c->o.replica_lag_ms = 10000;
	if (!c->o.replica_wait_ms)
		c->o.replica_wait_ms = 15000;
	if (!c->o.node_timeout_ms)
		c->o.node_timeout_ms = 3000;
	if (!c->o.request_timeout_ms)
		c->o.request_timeout_ms = 5000;
	/* a write waits replica_wait_ms for a partition's new leader, which a
	 * failover makes after node_timeout_ms and up to two elections */
	if (c->o.replica_wait_ms < c->o.node_timeout_ms + 2 * ELECTION_MS)
		tfs_warn("cluster: replica_wait_ms (%u) is shorter than a failover (node_timeout_ms "
		         "%u + up to %u ms of elections): writes during one may fail with ENOTCONN "
		         "instead of waiting for the new leader", c->o.replica_wait_ms,
		         c->o.node_timeout_ms, 2 * ELECTION_MS);
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	atomic_init(&c->next_seq, meta_seq_seed()); /* see there */
	atomic_init(&c->ctl_inflight, 0);
	atomic_init(&c->caught_up, false);
	c->boot_id = (uint64_t)wall_ms();
	atomic_store(&c->leader_known_ms, cluster_now_ms());
	make_cluster_id(c);
	int n = snprintf(c->raft_dir, sizeof(c->raft_dir), "%s/raft", data_dir);
	if (n < 0 || (size_t)n >= sizeof(c->raft_dir)) {
		free(c);
		return -ENAMETOOLONG;
	}
	if (mkdir(c->raft_dir, 0755) < 0 && errno != EEXIST) {
		int rc = -errno;
		tfs_error("%s: %s", c->raft_dir, tfs_strerror(rc));
		free(c);
		return rc;
	}
	for (unsigned i = 0; i < o->nvoters; i++) {
		c->peers[i] = (struct tr_peer_addr){c->o.voters[i].id, c->o.voters[i].address};
		c->voters[i].id = o->voters[i].id;
		snprintf(c->voters[i].address, sizeof(c->voters[i].address), "%s",
		         o->voters[i].address);
	}
	*out = c;
	return 0;
}

int cluster_start(struct cluster *c)
{
	struct tr_options to = {
		.node_id = c->o.node_id,
		.cluster_id = c->cluster_id,
		.listen = c->o.listen,
		.peers = c->peers,
		.npeers = c->o.nvoters,
		.on_frame = on_frame,
		.ctx = c,
		.connect_timeout_ms = 1000,
		.hello_timeout_ms = 2000,
		.backoff_min_ms = 50,
		.backoff_max_ms = 500,
		.down_after_ms = c->o.node_timeout_ms,
	};
	int rc = rtr_init(&c->rt, &to);
	if (rc < 0)
		return rc;
	c->rt_init = true;
	rc = tr_open(&to, &c->net);
	if (rc < 0) {
		tfs_error("cluster: cannot listen on %s: %s", c->o.listen, tfs_strerror(rc));
		return rc;
	}
	rtr_attach(&c->rt, c->net);
	rc = replica_set_open(c, &c->rs);
	if (rc < 0)
		return rc;
	struct meta_raft_options mo = {
		.node_id = c->o.node_id,
		.address = c->o.listen,
		.dir = c->raft_dir,
		.voters = c->voters,
		.nvoters = c->o.nvoters,
		.loop = tr_loop(c->net),
		.transport = &c->rt,
		.election_ms = ELECTION_MS,
		.heartbeat_ms = 50,
		/* libraft 0.22.1 can crash when a follower catches up by
		 * InstallSnapshot (replicator/README.md): keep enough entries
		 * that a returning node catches up from the log. */
		.snapshot_threshold = c->o.snapshot_entries ? c->o.snapshot_entries : 4096,
		.snapshot_trailing = 65536,
		.hooks = {.applied = on_applied, .restored = on_restored, .ctx = c},
	};
	rc = meta_raft_start(&mo, &c->mr);
	if (rc < 0)
		return rc;
	rc = tr_start(c->net);
	if (rc < 0)
		return rc;
	rc = tr_call(c->net, start_on_loop, c);
	if (rc < 0)
		return rc;
	tfs_info("cluster %s: node %u on %s, %u voter(s)", c->cluster_id, c->o.node_id,
	         c->o.listen, c->o.nvoters);
	return 0;
}

int cluster_wait_ready(struct cluster *c, unsigned ms)
{
	int64_t deadline = cluster_now_ms() + ms;
	while (cluster_now_ms() < deadline) {
		if (cluster_node_alive(c, c->o.node_id))
			return 0;
		struct timespec ts = {0, 50 * 1000000L};
		nanosleep(&ts, NULL);
	}
	return -ETIMEDOUT;
}

static void raft_closed(void *ctx)
{
	struct cluster *c = ctx;
	/* meta_raft freed itself: frames still arriving on this loop until the
	 * transport closes must not reach it (on_frame) */
	c->mr = NULL;
	pthread_mutex_lock(&c->lock);
	c->raft_closed = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

static void tick_closed(uv_handle_t *h)
{
	struct cluster *c = h->data;
	pthread_mutex_lock(&c->lock);
	c->loop_closed = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

static void stop_on_loop(struct tr_net *net, void *ctx, int status)
{
	struct cluster *c = ctx;
	(void)net;
	if (status < 0) {
		raft_closed(c);
		tick_closed((uv_handle_t *)&c->tick);
		return;
	}
	rep_cluster_reconcile(c->rep, NULL);   /* removes every replica */
	if (c->tick.data)
		uv_close((uv_handle_t *)&c->tick, tick_closed);
	else
		tick_closed((uv_handle_t *)&c->tick);
	meta_raft_close(c->mr, raft_closed, c);
}

void cluster_close(struct cluster *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->closing = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	if (c->net && c->mr) {
		if (tr_call(c->net, stop_on_loop, c) == 0) {
			struct timespec ts;
			wire_deadline(&ts, 10000);
			pthread_mutex_lock(&c->lock);
			while (!(c->raft_closed && c->loop_closed))
				if (pthread_cond_timedwait(&c->cond, &c->lock, &ts) != 0)
					break;
			pthread_mutex_unlock(&c->lock);
		}
	}
	if (c->net)
		tr_close(c->net);
	if (c->rs)
		replica_set_close(c->rs);
	if (c->rt_init)
		rtr_close(&c->rt);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	free(c);
}

/* ---- .cluster/nodes ---------------------------------------------------------- */

struct nodes_q {
	struct cluster *c;
	struct rep_node_info *out;
	size_t max, n;
	uint16_t leader;
	int cut_off;
};

/* The nodes as the quorum's state has them. A node that has known no quorum
 * leader for node_timeout_ms is cut off from the majority: its copy of the
 * state is stale, so it says "unknown" for every other node (and "up" for
 * itself) instead of what it last heard. */
static void nodes_fn(void *ctx, const struct meta_state *s)
{
	struct nodes_q *q = ctx;
	for (unsigned i = 0; i < q->c->o.nvoters && q->n < q->max; i++) {
		const struct cluster_voter *v = &q->c->o.voters[i];
		const struct meta_node *n = meta_node_find(s, v->id);
		struct rep_node_info *o = &q->out[q->n++];
		o->id = v->id;
		snprintf(o->address, sizeof(o->address), "%s", n ? n->address : v->address);
		if (v->id == q->c->o.node_id)
			o->state = "up"; /* serving this read (the quorum may not know yet) */
		else if (q->cut_off)
			o->state = "unknown";
		else
			o->state = n && n->alive ? "up" : "down";
		o->role = v->id == q->leader ? "leader" : "follower";
	}
}

int cluster_hand_over_quorum(struct cluster *c, unsigned ms)
{
	if (!meta_raft_is_leader(c->mr))
		return 0;
	tfs_info("metadata: handing the quorum's leadership to another node before stopping");
	meta_raft_hand_over(c->mr);
	int64_t until = cluster_now_ms() + ms;
	while (meta_raft_is_leader(c->mr) && cluster_now_ms() < until) {
		struct timespec ts = {0, 20 * 1000000L};
		nanosleep(&ts, NULL);
	}
	if (meta_raft_is_leader(c->mr))
		return -ETIMEDOUT;
	tfs_info("metadata: this node no longer leads the quorum (it was handed over)");
	return 0;
}

int cluster_caught_up(struct cluster *c)
{
	return atomic_load(&c->caught_up);
}

int cluster_quorum_known(struct cluster *c)
{
	return meta_raft_leader(c->mr, NULL, 0) != 0;
}

int cluster_cut_off(struct cluster *c)
{
	return meta_raft_leader(c->mr, NULL, 0) == 0 &&
	       cluster_now_ms() - atomic_load(&c->leader_known_ms) > (int64_t)c->o.node_timeout_ms;
}

size_t cluster_nodes(struct cluster *c, struct rep_node_info *out, size_t max)
{
	uint16_t leader = meta_raft_leader(c->mr, NULL, 0);
	int cut_off = cluster_cut_off(c);
	struct nodes_q q = {c, out, max, 0, leader, cut_off};
	cluster_read(c, nodes_fn, &q);
	return q.n;
}
