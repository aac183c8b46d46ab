/*
 * meta_raft.c - meta.c's state machine under libraft 0.22: the raft_fsm
 * (apply / snapshot / restore), proposals with their results, and one node
 * on raft_uv. See meta_raft.h for the layers and invariants.
 *
 * Matching a result to its proposal: libraft hands fsm->apply only the
 * entry's bytes, and fires the raft_apply callback later. Every command
 * carries (origin node, seq) in its header (meta.h), so the apply on the
 * proposing node finds its struct meta_raft_pending by seq and keeps the result;
 * the raft_apply callback then delivers it. Other nodes ignore (origin, seq).
 *
 * meta_raft states:
 *
 *   meta_raft_start ──> RUNNING ──meta_raft_close──> CLOSING
 *       (timer, async, raft_close in flight; submissions refused)
 *   CLOSING ──last of timer/async/raft closed──> released, done(ctx)
 */
#include "meta_raft.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "../logstore/log.h"

struct meta_raft_pending {
	struct raft_apply req;      /* req.data = this */
	struct meta_raft_fsm *fsm;
	uint16_t origin;
	uint64_t seq;
	bool applied;               /* this node's apply saw it */
	int rc;
	struct meta_result res;
	meta_raft_done_cb done;
	void *ctx;
	struct meta_raft_pending *prev, *next;
};

int meta_raft_errno(int raft_rc)
{
	switch (raft_rc) {
	case 0: return 0;
	case RAFT_NOTLEADER: return REP_ENOTLEADER;
	case RAFT_LEADERSHIPLOST: return REP_ENOQUORUM;
	case RAFT_NOMEM: return -ENOMEM;
	case RAFT_SHUTDOWN:
	case RAFT_CANCELED: return -ECANCELED;
	case RAFT_TOOBIG: return -E2BIG;
	case RAFT_NOSPACE: return -ENOSPC;
	case RAFT_NAMETOOLONG: return -ENAMETOOLONG;
	case RAFT_NOTFOUND: return -ENOENT;
	case RAFT_UNAUTHORIZED: return -EACCES;
	case RAFT_INVALID:
	case RAFT_BADID:
	case RAFT_BADROLE:
	case RAFT_DUPLICATEID:
	case RAFT_DUPLICATEADDRESS: return -EINVAL;
	case RAFT_NOCONNECTION: return -ENOTCONN;
	case RAFT_BUSY: return -EBUSY;
	case RAFT_MALFORMED:
	case RAFT_CORRUPT: return REP_EPROTO;
	default: return -EIO;
	}
}

/* ---- the FSM ---------------------------------------------------------------- */

static void pending_unlink(struct meta_raft_fsm *f, struct meta_raft_pending *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		f->pending = p->next;
	if (p->next)
		p->next->prev = p->prev;
	p->prev = p->next = NULL;
}

static int fsm_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
	struct meta_raft_fsm *f = rf->data;
	struct meta_cmd *c = &f->scratch;
	struct meta_result res = { 0, "" };
	int rc;

	*result = NULL;
	rc = meta_cmd_decode(buf->base, buf->len, c);
	if (rc < 0) {
		/* The same bytes fail the same way on every node: a refusal. */
		snprintf(res.err, sizeof(res.err), "undecodable command: %s", tfs_strerror(rc));
	} else {
		pthread_rwlock_wrlock(&f->lock);
		rc = meta_apply(&f->state, c, &res);
		pthread_rwlock_unlock(&f->lock);
		if (rc == -ENOMEM) {
			/* Not deterministic: retry later rather than skip (invariant 2). */
			f->stalled = true;
			tfs_error("metadata: node %u: out of memory applying %s; the metadata "
			          "log waits here until the next commit", f->node_id,
			          meta_cmd_name(c->type));
			return RAFT_NOMEM;
		}
		f->stalled = false;
	}
	if (rc < 0) {
		f->refused++;
		tfs_debug("metadata: %s refused: %s", meta_cmd_name(c->type), res.err);
	} else {
		f->applied++;
	}
	{
		for (struct meta_raft_pending *p = f->pending; p; p = p->next) {
			if (p->origin == c->origin && p->seq == c->seq) {
				p->applied = true;
				p->rc = rc;
				p->res = res;
				break;
			}
		}
	}
	if (f->hooks.applied)
		f->hooks.applied(f->hooks.ctx, c, rc, &res);
	return 0;
}

static int fsm_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
	struct meta_raft_fsm *f = rf->data;
	/* The loop thread is the only writer: no lock needed to read here. */
	size_t len = meta_snapshot_encode(&f->state, NULL, 0);
	struct raft_buffer *b = raft_malloc(sizeof(*b));
	void *data = raft_malloc(len);
	if (!b || !data) {
		raft_free(b);
		raft_free(data);
		return RAFT_NOMEM;
	}
	meta_snapshot_encode(&f->state, data, len);
	b->base = data;
	b->len = len;
	*bufs = b;
	*n_bufs = 1;
	return 0;
}

static int fsm_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
	struct meta_raft_fsm *f = rf->data;
	struct meta_state s, old;
	int rc = meta_snapshot_decode(buf->base, buf->len, &s);
	if (rc < 0) {
		tfs_error("metadata: node %u: snapshot of %zu bytes refused: %s", f->node_id,
		          buf->len, tfs_strerror(rc));
		return rc == -ENOMEM ? RAFT_NOMEM : RAFT_CORRUPT;
	}
	pthread_rwlock_wrlock(&f->lock);
	old = f->state;
	f->state = s;
	pthread_rwlock_unlock(&f->lock);
	meta_state_free(&old);
	raft_free(buf->base);   /* ours on success (invariant 4) */
	tfs_info("metadata: node %u: state restored from a snapshot (%u nodes, %u topics)",
	         f->node_id, f->state.nnodes, f->state.ntopics);
	if (f->hooks.restored)
		f->hooks.restored(f->hooks.ctx);
	return 0;
}

uint64_t meta_seq_seed(void)
{
	uint64_t r = 0;
	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		r = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) * 0x9e3779b97f4a7c15u ^
		    (uint64_t)getpid() << 40;
	}
	return r & ((1ull << 61) - 1);
}

int meta_raft_fsm_init(struct meta_raft_fsm *f, uint16_t node_id, const struct meta_raft_hooks *hooks)
{
	memset(f, 0, sizeof(*f));
	int rc = pthread_rwlock_init(&f->lock, NULL);
	if (rc)
		return -rc;
	f->raft_fsm.version = 1;   /* 1: libraft frees snapshot buffers */
	f->raft_fsm.data = f;
	f->raft_fsm.apply = fsm_apply;
	f->raft_fsm.snapshot = fsm_snapshot;
	f->raft_fsm.restore = fsm_restore;
	f->node_id = node_id;
	f->next_seq = meta_seq_seed();
	if (hooks)
		f->hooks = *hooks;
	meta_state_init(&f->state);
	return 0;
}

void meta_raft_fsm_close(struct meta_raft_fsm *f)
{
	if (f->pending)
		tfs_error("metadata: node %u: closing with proposals in flight", f->node_id);
	meta_state_free(&f->state);
	pthread_rwlock_destroy(&f->lock);
}

void meta_raft_fsm_read(struct meta_raft_fsm *f, void (*fn)(void *ctx, const struct meta_state *s),
                   void *ctx)
{
	pthread_rwlock_rdlock(&f->lock);
	fn(ctx, &f->state);
	pthread_rwlock_unlock(&f->lock);
}

static void propose_done(struct raft_apply *req, int status, void *result)
{
	struct meta_raft_pending *p = req->data;
	int rc;
	(void)result;
	pending_unlink(p->fsm, p);
	if (status != 0) {
		rc = meta_raft_errno(status);
		snprintf(p->res.err, sizeof(p->res.err), "not applied: %s", raft_strerror(status));
	} else if (!p->applied) {
		rc = REP_EPROTO;   /* committed, but apply did not recognise it */
		snprintf(p->res.err, sizeof(p->res.err), "applied without a result");
	} else {
		rc = p->rc;
	}
	p->done(p->ctx, rc, &p->res);
	free(p);
}

int meta_raft_fsm_propose(struct meta_raft_fsm *f, struct raft *r, const struct meta_cmd *c,
                     meta_raft_done_cb done, void *ctx)
{
	struct meta_raft_pending *p;
	struct raft_buffer buf;
	long n;
	int rv;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->fsm = f;
	/* A caller-tagged command (seq != 0: forwarded from another node, or
	 * tagged by the caller to find it in the applied hook) keeps its tag. */
	p->origin = c->seq ? c->origin : f->node_id;
	p->seq = c->seq ? c->seq : ++f->next_seq;
	p->done = done;
	p->ctx = ctx;
	p->req.data = p;

	/* Encode a copy with this node's (origin, seq) in the header, padded
	 * with zeros to a multiple of 8 bytes: raft_uv refuses other lengths. */
	struct meta_cmd *tagged = malloc(sizeof(*tagged));
	if (!tagged) {
		free(p);
		return -ENOMEM;
	}
	*tagged = *c;
	tagged->origin = p->origin;
	tagged->seq = p->seq;
	n = meta_cmd_encode(tagged, NULL, 0);
	size_t padded = n > 0 ? ((size_t)n + 7) & ~(size_t)7 : 0;
	buf.base = n > 0 ? raft_calloc(1, padded) : NULL;
	if (buf.base)
		n = meta_cmd_encode(tagged, buf.base, (size_t)n);
	free(tagged);
	if (n < 0 || !buf.base) {
		raft_free(buf.base);
		free(p);
		return n < 0 ? (int)n : -ENOMEM;
	}
	buf.len = padded;

	/* libraft 0.22 frees the entry itself when raft_apply fails after
	 * taking it into its log (a failed disk append), but not when it refuses
	 * up front (not leader): refuse that case here so that after any call of
	 * raft_apply the buffer is libraft's. */
	if (raft_state(r) != RAFT_LEADER || raft_transferee(r) != 0) {
		raft_free(buf.base);
		free(p);
		return REP_ENOTLEADER;
	}
	/* Linked before raft_apply: a quorum of one may apply within it. */
	p->next = f->pending;
	if (f->pending)
		f->pending->prev = p;
	f->pending = p;
	rv = raft_apply(r, &p->req, &buf, 1, propose_done);
	if (rv != 0) {
		/* buf.base is not freed here (see above). A refusal by the
		 * capacity check (RAFT_NOSPACE, before the log) leaks it. */
		pending_unlink(f, p);
		free(p);
		tfs_warn("metadata: node %u: proposing %s: %s", f->node_id,
		         meta_cmd_name(c->type), raft_errmsg(r));
		return meta_raft_errno(rv);
	}
	return 0;
}

/* ---- one node on raft_uv ------------------------------------------------------ */

struct submission {
	struct meta_cmd cmd;
	meta_raft_done_cb done;
	void *ctx;
	struct submission *next;
};

struct meta_raft {
	struct meta_raft_fsm fsm;
	struct raft raft;
	struct raft_io io;
	struct raft_uv_transport tcp;   /* used when the caller gives none */
	bool own_tcp, io_init, raft_init;
	struct uv_loop_s *loop;
	uv_async_t async;
	uv_timer_t timer;
	struct meta_raft_hooks user_hooks;

	pthread_mutex_t lock;           /* guards queue, closing, leader_addr */
	struct submission *head, *tail;
	bool closing;
	char leader_addr[META_ADDR_MAX];
	atomic_uint leader_id;
	atomic_bool is_leader;
	atomic_bool hand_over;          /* meta_raft_hand_over asked (async_cb) */
	bool transferring;              /* transfer_req in flight (loop thread) */
	struct raft_transfer transfer_req;

	unsigned closing_left;          /* handles + raft still closing */
	void (*close_done)(void *ctx);
	void *close_ctx;
};

static void update_status(struct meta_raft *m)
{
	raft_id id = 0;
	const char *addr = NULL;
	if (!m->raft_init)
		return;
	raft_leader(&m->raft, &id, &addr);
	atomic_store(&m->leader_id, (unsigned)id);
	atomic_store(&m->is_leader, raft_state(&m->raft) == RAFT_LEADER);
	pthread_mutex_lock(&m->lock);
	snprintf(m->leader_addr, sizeof(m->leader_addr), "%s", addr ? addr : "");
	pthread_mutex_unlock(&m->lock);
}

static void hook_applied(void *ctx, const struct meta_cmd *c, int rc,
                         const struct meta_result *res)
{
	struct meta_raft *m = ctx;
	update_status(m);
	if (m->user_hooks.applied)
		m->user_hooks.applied(m->user_hooks.ctx, c, rc, res);
}

static void hook_restored(void *ctx)
{
	struct meta_raft *m = ctx;
	if (m->user_hooks.restored)
		m->user_hooks.restored(m->user_hooks.ctx);
}

static void timer_cb(uv_timer_t *t)
{
	update_status(t->data);
}

/* Takes every queued submission (loop thread). */
static struct submission *take_queue(struct meta_raft *m)
{
	pthread_mutex_lock(&m->lock);
	struct submission *q = m->head;
	m->head = m->tail = NULL;
	pthread_mutex_unlock(&m->lock);
	return q;
}

static void fail_submission(struct submission *s, int rc, const char *why)
{
	struct meta_result res = { 0, "" };
	snprintf(res.err, sizeof(res.err), "%s", why);
	s->done(s->ctx, rc, &res);
	free(s);
}

static void transfer_done(struct raft_transfer *req)
{
	struct meta_raft *m = req->data;
	m->transferring = false;
	update_status(m);
}

/* Starts handing the leadership to the most up-to-date voter (libraft picks
 * it; loop thread). */
static void hand_over_start(struct meta_raft *m)
{
	if (m->closing || m->transferring || raft_state(&m->raft) != RAFT_LEADER ||
	    raft_transferee(&m->raft) != 0)
		return;
	m->transfer_req.data = m;
	int rc = raft_transfer(&m->raft, &m->transfer_req, 0, transfer_done);
	if (rc == 0)
		m->transferring = true;
	else
		tfs_debug("metadata: no leadership transfer: %s", raft_strerror(rc));
}

static void async_cb(uv_async_t *a)
{
	struct meta_raft *m = a->data;
	if (atomic_exchange(&m->hand_over, false))
		hand_over_start(m);
	struct submission *s = take_queue(m), *next;
	for (; s; s = next) {
		next = s->next;
		if (m->closing) {
			fail_submission(s, -ECANCELED, "the node is closing");
			continue;
		}
		int rc = meta_raft_fsm_propose(&m->fsm, &m->raft, &s->cmd, s->done, s->ctx);
		if (rc < 0)
			fail_submission(s, rc, tfs_strerror(rc));
		else
			free(s);
	}
}

int meta_raft_submit(struct meta_raft *m, const struct meta_cmd *c, meta_raft_done_cb done,
                     void *ctx)
{
	struct submission *s = malloc(sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cmd = *c;
	s->done = done;
	s->ctx = ctx;
	s->next = NULL;
	pthread_mutex_lock(&m->lock);
	if (m->closing) {
		pthread_mutex_unlock(&m->lock);
		free(s);
		return -ECANCELED;
	}
	if (m->tail)
		m->tail->next = s;
	else
		m->head = s;
	m->tail = s;
	/* Under the lock: close cannot slip in between and close the handle. */
	uv_async_send(&m->async);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

void meta_raft_hand_over(struct meta_raft *m)
{
	pthread_mutex_lock(&m->lock);
	if (!m->closing) {
		atomic_store(&m->hand_over, true);
		uv_async_send(&m->async);
	}
	pthread_mutex_unlock(&m->lock);
}

bool meta_raft_is_leader(struct meta_raft *m) { return atomic_load(&m->is_leader); }

uint64_t meta_raft_last_applied(struct meta_raft *m) { return raft_last_applied(&m->raft); }
uint64_t meta_raft_commit_index(struct meta_raft *m) { return raft_commit_index(&m->raft); }

uint16_t meta_raft_leader(struct meta_raft *m, char *addr, size_t addrlen)
{
	if (addr && addrlen) {
		pthread_mutex_lock(&m->lock);
		snprintf(addr, addrlen, "%s", m->leader_addr);
		pthread_mutex_unlock(&m->lock);
	}
	return (uint16_t)atomic_load(&m->leader_id);
}

struct meta_raft_fsm *meta_raft_fsm(struct meta_raft *m) { return &m->fsm; }

/* The last of the handles and raft is closed: release everything. */
static void close_step(struct meta_raft *m)
{
	if (--m->closing_left > 0)
		return;
	struct submission *s = take_queue(m), *next;
	for (; s; s = next) {
		next = s->next;
		fail_submission(s, -ECANCELED, "the node is closing");
	}
	if (m->io_init)
		raft_uv_close(&m->io);
	if (m->own_tcp)
		raft_uv_tcp_close(&m->tcp);
	meta_raft_fsm_close(&m->fsm);
	pthread_mutex_destroy(&m->lock);
	void (*done)(void *) = m->close_done;
	void *ctx = m->close_ctx;
	free(m);
	if (done)
		done(ctx);
}

static void handle_closed(uv_handle_t *h) { close_step(h->data); }
static void raft_closed(struct raft *r) { close_step(r->data); }

/* Starts closing whatever is open; close_step frees m at the end. */
static void close_all(struct meta_raft *m)
{
	pthread_mutex_lock(&m->lock);
	m->closing = true;
	pthread_mutex_unlock(&m->lock);
	atomic_store(&m->is_leader, false);
	m->closing_left = 3;   /* timer, async, raft: each calls close_step */
	uv_close((uv_handle_t *)&m->timer, handle_closed);
	uv_close((uv_handle_t *)&m->async, handle_closed);
	if (m->raft_init)
		raft_close(&m->raft, raft_closed);
	else
		close_step(m);
}

void meta_raft_close(struct meta_raft *m, void (*done)(void *ctx), void *ctx)
{
	m->close_done = done;
	m->close_ctx = ctx;
	close_all(m);
}

static int bootstrap(struct meta_raft *m, const struct meta_raft_options *o)
{
	struct raft_configuration conf;
	int rv = 0;
	raft_configuration_init(&conf);
	if (o->nvoters == 0)
		rv = raft_configuration_add(&conf, o->node_id, o->address, RAFT_VOTER);
	for (unsigned i = 0; i < o->nvoters && rv == 0; i++)
		rv = raft_configuration_add(&conf, o->voters[i].id, o->voters[i].address,
		                            RAFT_VOTER);
	if (rv == 0) {
		rv = raft_bootstrap(&m->raft, &conf);
		if (rv == RAFT_CANTBOOTSTRAP) {
			tfs_info("metadata: node %u: %s holds a raft log already; not bootstrapping",
			         o->node_id, o->dir);
			rv = 0;
		} else if (rv == 0) {
			tfs_info("metadata: node %u: bootstrapped %s with %u voter(s)", o->node_id,
			         o->dir, o->nvoters ? o->nvoters : 1);
		}
	}
	if (rv != 0)
		tfs_error("metadata: node %u: bootstrap of %s: %s", o->node_id, o->dir,
		          raft_errmsg(&m->raft)[0] ? raft_errmsg(&m->raft) : raft_strerror(rv));
	raft_configuration_close(&conf);
	return rv;
}

int meta_raft_start(const struct meta_raft_options *o, struct meta_raft **out)
{
	struct meta_raft *m;
	struct raft_uv_transport *t = o->transport;
	struct meta_raft_hooks hooks;
	int rv;

	if (o->node_id == 0 || !o->address || !o->dir || !o->loop)
		return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->loop = o->loop;
	m->user_hooks = o->hooks;
	hooks = (struct meta_raft_hooks){ hook_applied, hook_restored, m };
	rv = meta_raft_fsm_init(&m->fsm, o->node_id, &hooks);
	if (rv < 0) {
		free(m);
		return rv;
	}
	pthread_mutex_init(&m->lock, NULL);
	m->async.data = m;
	m->timer.data = m;
	if (uv_async_init(m->loop, &m->async, async_cb) != 0 ||
	    uv_timer_init(m->loop, &m->timer) != 0) {
		/* Neither fails on Linux but for a closed loop: nothing to close. */
		meta_raft_fsm_close(&m->fsm);
		pthread_mutex_destroy(&m->lock);
		free(m);
		return -EINVAL;
	}

	if (!t) {
		m->tcp.version = 1;
		m->tcp.data = NULL;
		rv = raft_uv_tcp_init(&m->tcp, m->loop);
		if (rv != 0) {
			tfs_error("metadata: node %u: TCP transport: %s", o->node_id,
			          raft_strerror(rv));
			goto err;
		}
		m->own_tcp = true;
		t = &m->tcp;
	}
	rv = raft_uv_init(&m->io, m->loop, o->dir, t);
	if (rv != 0) {
		tfs_error("metadata: node %u: raft storage %s: %s", o->node_id, o->dir,
		          m->io.errmsg[0] ? m->io.errmsg : raft_strerror(rv));
		goto err;
	}
	m->io_init = true;
	rv = raft_init(&m->raft, &m->io, &m->fsm.raft_fsm, o->node_id, o->address);
	if (rv != 0) {
		tfs_error("metadata: node %u: raft_init: %s", o->node_id, raft_errmsg(&m->raft));
		goto err;
	}
	m->raft_init = true;
	m->raft.data = m;
	if (o->election_ms)
		raft_set_election_timeout(&m->raft, o->election_ms);
	if (o->heartbeat_ms)
		raft_set_heartbeat_timeout(&m->raft, o->heartbeat_ms);
	if (o->snapshot_threshold)
		raft_set_snapshot_threshold(&m->raft, o->snapshot_threshold);
	if (o->snapshot_trailing)
		raft_set_snapshot_trailing(&m->raft, o->snapshot_trailing);
	/* A node cut off and back must not depose a healthy leader. */
	raft_set_pre_vote(&m->raft, true);

	rv = bootstrap(m, o);
	if (rv != 0)
		goto err;
	/* raft_start restores a snapshot through the fsm, whose restored hook
	 * reaches the state through *out: it must be set already */
	*out = m;
	rv = raft_start(&m->raft);
	if (rv != 0) {
		tfs_error("metadata: node %u: raft_start: %s", o->node_id, raft_errmsg(&m->raft));
		*out = NULL;
		goto err;
	}
	uv_timer_start(&m->timer, timer_cb, 0, o->heartbeat_ms ? o->heartbeat_ms : 100);
	update_status(m);
	return 0;

err:
	close_all(m);   /* frees m once the loop has run the closes */
	return meta_raft_errno(rv);
}
