/*
 * raft_transport.c - libraft's struct raft_uv_transport over a struct tr_net
 * (see raft_transport.h for the setup order and the error codes).
 *
 * Owns: the adapter state behind t->impl (struct rtr): the net it dials
 * through, libraft's accept callback, and one struct rtr_dial per connect
 * request libraft has outstanding. The streams themselves are never ours:
 * the net allocates them (raft_malloc) and hands them over, libraft closes
 * and frees them (raft_free); a stream refused here is closed here.
 *
 * What libraft's raft_uv calls, and when (all on the net's loop thread):
 *
 *   raft_init ──t->init(id)──> READY ──t->listen(cb) (raft_start)──> LISTENING
 *   LISTENING: on_raft_stream(peer, stream) ──> accept(t, peer, address, stream)
 *   READY/LISTENING: t->connect(req, id) ──tr_raft_connect──> dial_done
 *        ──> req->cb(req, stream, 0 | RAFT_NOCONNECTION | RAFT_CANCELED)
 *   any ──t->close(cb) (raft_close)──> CLOSING ──tr_dial_cancel each dial;
 *        the last dial_done (or at once if none)──> CLOSED, cb(t)
 *   CLOSED ──t->init (a new raft_uv on the same net)──> READY
 *
 * Invariants:
 *  1. libraft's accept callback is called only in LISTENING: never before
 *     listen, never after close (raft_uv asserts that it is not closing).
 *     A stream that arrives otherwise is closed and freed with raft_free.
 *  2. Every connect that returned 0 gets exactly one req->cb, from a libuv
 *     callback (never from inside connect or close), with a stream only on
 *     status 0. -ECANCELED from the net maps to RAFT_CANCELED, every other
 *     failure to RAFT_NOCONNECTION (libraft retries after its delay).
 *  3. close's callback fires once, after the last outstanding dial was
 *     answered, so nothing of ours touches libraft's requests afterwards; it
 *     may fire from inside close (as libraft's own TCP transport does when
 *     nothing is pending).
 */
#include "raft_transport.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../logstore/log.h"

enum rtr_state { RTR_NEW, RTR_READY, RTR_LISTENING, RTR_CLOSING, RTR_CLOSED };

struct rtr;

/* One libraft connect request in flight. */
struct rtr_dial {
	struct rtr *r;
	struct raft_uv_connect *req;
	raft_uv_connect_cb cb;
	struct tr_dial *handle;            /* for tr_dial_cancel until dial_done */
	uint16_t peer;
	struct rtr_dial *prev, *next;
};

struct rtr {
	struct raft_uv_transport *t;
	struct tr_net *net;                /* rtr_attach */
	enum rtr_state state;
	uint16_t id;                       /* this node (t->init) */
	raft_uv_accept_cb accept;          /* LISTENING only */
	raft_uv_transport_close_cb close_cb;
	struct rtr_dial *dials;            /* outstanding connects */
	bool address_warned;
};

static const char *state_name(enum rtr_state s)
{
	switch (s) {
	case RTR_NEW: return "not initialised";
	case RTR_READY: return "not listening yet";
	case RTR_LISTENING: return "listening";
	case RTR_CLOSING: return "closing";
	case RTR_CLOSED: return "closed";
	}
	return "?";
}

/* ---- accepting ------------------------------------------------------------------ */

static void refused_stream_closed(uv_handle_t *h)
{
	raft_free(h);
}

/* tr_raft_accept_cb: an 'R' connection whose HELLO the net checked. */
static void on_raft_stream(void *ctx, struct tr_net *net, uint16_t peer, uv_stream_t *stream)
{
	struct raft_uv_transport *t = ctx;
	struct rtr *r = t->impl;
	if (!r || r->state != RTR_LISTENING) {
		tfs_info("raft transport: node %u: raft stream from node %u closed: raft is %s",
		         tr_node_id(net), peer, r ? state_name(r->state) : "gone");
		uv_close((uv_handle_t *)stream, refused_stream_closed);
		return;
	}
	const char *address = tr_peer_address(net, peer);
	tfs_debug("raft transport: node %u: raft stream from node %u", r->id, peer);
	r->accept(t, peer, address ? address : "", stream);
}

/* ---- dialing ---------------------------------------------------------------------- */

static void maybe_closed(struct rtr *r)
{
	if (r->state != RTR_CLOSING || r->dials)
		return;
	raft_uv_transport_close_cb cb = r->close_cb;
	r->state = RTR_CLOSED;
	r->close_cb = NULL;
	if (cb)
		cb(r->t);
}

static void dial_unlink(struct rtr *r, struct rtr_dial *d)
{
	if (d->prev)
		d->prev->next = d->next;
	else
		r->dials = d->next;
	if (d->next)
		d->next->prev = d->prev;
	d->prev = d->next = NULL;
}

/* tr_raft_connect_cb: the dial's one outcome (invariant 2). */
static void dial_done(void *ctx, uv_stream_t *stream, int status)
{
	struct rtr_dial *d = ctx;
	struct rtr *r = d->r;
	int rs = 0;
	dial_unlink(r, d);
	if (status < 0) {
		rs = status == -ECANCELED ? RAFT_CANCELED : RAFT_NOCONNECTION;
		tfs_debug("raft transport: node %u: dialing node %u: %s", r->id, d->peer,
		          tfs_strerror(status));
		stream = NULL;
	}
	d->cb(d->req, stream, rs);
	free(d);
	maybe_closed(r);
}

static int rtr_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                       const char *address, raft_uv_connect_cb cb)
{
	struct rtr *r = t->impl;
	struct rtr_dial *d;
	int rc;

	if (r->state != RTR_READY && r->state != RTR_LISTENING) {
		snprintf(t->errmsg, sizeof(t->errmsg), "raft transport is %s", state_name(r->state));
		return r->state == RTR_CLOSING || r->state == RTR_CLOSED ? RAFT_CANCELED
		                                                         : RAFT_NOCONNECTION;
	}
	if (id == 0 || id > UINT16_MAX) {
		snprintf(t->errmsg, sizeof(t->errmsg), "raft id %llu is not a node id", id);
		return RAFT_NOCONNECTION;
	}
	const char *known = tr_peer_address(r->net, (uint16_t)id);
	if (known && address && strcmp(known, address) != 0 && !r->address_warned) {
		r->address_warned = true;
		tfs_warn("raft transport: node %u: raft's address for node %llu"
		         " is %s, the node table says %s; dialing the table's (logged once)",
		         r->id, id, address, known);
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		snprintf(t->errmsg, sizeof(t->errmsg), "no memory to dial node %llu", id);
		return RAFT_NOMEM;
	}
	d->r = r;
	d->req = req;
	d->cb = cb;
	d->peer = (uint16_t)id;
	rc = tr_raft_connect(r->net, d->peer, dial_done, d, &d->handle);
	if (rc < 0) {
		free(d);
		snprintf(t->errmsg, sizeof(t->errmsg), "dialing node %llu: %s", id,
		         tfs_strerror(rc));
		return rc == -ENOMEM ? RAFT_NOMEM : RAFT_NOCONNECTION;
	}
	d->next = r->dials;
	if (r->dials)
		r->dials->prev = d;
	r->dials = d;
	return 0;
}

/* ---- the rest of the interface ------------------------------------------------------- */

static int rtr_init_cb(struct raft_uv_transport *t, raft_id id, const char *address)
{
	struct rtr *r = t->impl;
	(void)address;
	if (!r->net) {
		snprintf(t->errmsg, sizeof(t->errmsg), "raft transport has no net (rtr_attach)");
		return RAFT_INVALID;
	}
	if (r->state != RTR_NEW && r->state != RTR_CLOSED) {
		snprintf(t->errmsg, sizeof(t->errmsg), "raft transport is %s", state_name(r->state));
		return RAFT_BUSY;
	}
	if (id != tr_node_id(r->net)) {
		snprintf(t->errmsg, sizeof(t->errmsg), "raft id %llu is not this node's id %u",
		         id, tr_node_id(r->net));
		return RAFT_INVALID;
	}
	r->id = (uint16_t)id;
	r->state = RTR_READY;
	return 0;
}

static int rtr_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
	struct rtr *r = t->impl;
	if (r->state != RTR_READY) {
		snprintf(t->errmsg, sizeof(t->errmsg), "raft transport is %s", state_name(r->state));
		return RAFT_INVALID;
	}
	r->accept = cb;
	r->state = RTR_LISTENING;
	return 0;
}

static void rtr_close_cb(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
	struct rtr *r = t->impl;
	r->state = RTR_CLOSING;
	r->accept = NULL;
	r->close_cb = cb;
	/* Each cancelled dial answers later, from its connection's close. */
	for (struct rtr_dial *d = r->dials; d; d = d->next)
		tr_dial_cancel(d->handle);
	maybe_closed(r);
}

int rtr_init(struct raft_uv_transport *t, struct tr_options *o)
{
	struct rtr *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->t = t;
	r->state = RTR_NEW;
	memset(t, 0, sizeof(*t));
	t->version = 1;
	t->impl = r;
	t->init = rtr_init_cb;
	t->listen = rtr_listen;
	t->connect = rtr_connect;
	t->close = rtr_close_cb;
	o->on_raft_stream = on_raft_stream;
	o->raft_ctx = t;
	o->stream_malloc = raft_malloc;
	o->stream_free = raft_free;
	return 0;
}

void rtr_attach(struct raft_uv_transport *t, struct tr_net *net)
{
	struct rtr *r = t->impl;
	r->net = net;
}

void rtr_close(struct raft_uv_transport *t)
{
	struct rtr *r = t->impl;
	if (!r)
		return;
	if (r->dials) {
		/* A dial still owes libraft an answer: freeing would leave it
		 * pointing here. Leaked rather than dangling. */
		tfs_error("raft transport: node %u: closed with dials outstanding; not freed",
		          r->id);
		return;
	}
	t->impl = NULL;
	free(r);
}
