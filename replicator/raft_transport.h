/*
 * raft_transport.h - libraft's struct raft_uv_transport (version 1) on top of
 * a struct tr_net, so that Raft shares the node's one port: libraft dials
 * through tr_raft_connect (tag 'R' + HELLO, then the bytes are libraft's) and
 * accepts the 'R' streams the net hands to on_raft_stream
 * (replicator/README.md, "Transport"). Namespace: rtr_.
 *
 * Peers are named by node id only: the net's table decides where node N is,
 * and the address libraft keeps in its configuration is not used to dial
 * (a mismatch is logged once). The peer id of an accepted stream comes from
 * its HELLO, which the net has already checked (cluster id, peer table).
 *
 * A node's life with it, on the owner's thread unless said otherwise:
 *
 *   struct raft_uv_transport rt;  struct tr_options o = {...};
 *   rtr_init(&rt, &o)                 o.on_raft_stream/raft_ctx/allocator set
 *   tr_open(&o, &net); rtr_attach(&rt, net)
 *   meta_raft_start(.loop = tr_loop(net), .transport = &rt, ...)
 *                                     before tr_start, or on the loop thread
 *                                     (tr_call) after it
 *   tr_start(net) ... the node runs ...
 *   meta_raft_close on the loop thread (tr_call), wait for its done callback
 *   tr_close(net); rtr_close(&rt)
 *
 * Threading: libraft calls the transport on the net's loop thread (its
 * raft_uv runs on tr_loop(net)); the net calls on_raft_stream there too.
 * rtr_init, rtr_attach and rtr_close are for the owner's thread while the
 * loop does not run (before tr_start, or after tr_stop).
 *
 * Errors to libraft: RAFT_NOCONNECTION (the peer cannot be dialled: unknown,
 * refused, timed out, the net shutting down), RAFT_CANCELED (the dial was
 * cancelled by close or tr_stop), RAFT_NOMEM, RAFT_INVALID (init with an id
 * that is not the net's), each with a line in t->errmsg.
 */
#ifndef TFS_RAFT_TRANSPORT_H
#define TFS_RAFT_TRANSPORT_H

#include <raft.h>
#include <raft/uv.h>

#include "transport.h"

/* Initialises t (version 1; t->impl is this module's, t->data libraft's) and
 * points o's raft fields at it: on_raft_stream, raft_ctx = t, and
 * raft_malloc/raft_free as the stream allocator (libraft frees the streams it
 * is given with raft_free). o's ctx and on_frame are left alone. t must stay
 * at its address until rtr_close. Returns 0 or -ENOMEM; on success t is
 * released with rtr_close. */
int rtr_init(struct raft_uv_transport *t, struct tr_options *o) TFS_MUST_CHECK;

/* The net that tr_open made from the options rtr_init filled. Before
 * raft_uv_init (whose raft_init calls t->init) and before tr_start; until
 * then raft streams are refused and dials fail. */
void rtr_attach(struct raft_uv_transport *t, struct tr_net *net);

/* Frees t's state. The raft_uv instance using t must be closed (its close
 * callback fired) or never have been initialised with t, and the net must be
 * stopped (tr_stop / tr_close) or never have been started: until then it may
 * hand t a raft stream. NULL impl (never initialised) is a no-op. */
void rtr_close(struct raft_uv_transport *t);

#endif
