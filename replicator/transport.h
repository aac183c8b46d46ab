/*
 * transport.h - the node-to-node transport: one TCP port per node, a libuv
 * loop on its own thread, framed messages between the nodes of one cluster,
 * and the raft streams that share the port (replicator/README.md).
 *
 * A struct tr_net is one node's end: it listens on node.listen, dials the
 * peers of its table when it has something for them (reconnecting with
 * backoff), and hands every frame it receives to the caller's handler on the
 * loop thread. The wire format (byte tables, HELLO, checks) is described at
 * the top of transport.c; the pure codec below is that format without
 * sockets, for tests and fuzzing.
 *
 * Delivery: frames sent to one peer leave in the order they were submitted
 * (from one thread; submissions from several threads are ordered as they
 * reach the queue) and are never duplicated by the transport. Frames already
 * written to a connection that then breaks are lost (at most once): a
 * request whose frame was lost so fails with -ECONNRESET, and the layers
 * above retry (fetch is idempotent; produce is deduplicated by producer id
 * and sequence).
 *
 * Threading:
 *   - tr_send, tr_request, tr_respond, tr_respond_error, tr_call and the
 *     read-only accessors may be called from any thread, including the loop
 *     thread (from inside a handler or callback).
 *   - The frame handler, response callbacks, tr_call functions and the raft
 *     callbacks run on the loop thread. They must not block; they may call
 *     any thread-safe function above.
 *   - tr_start, tr_stop and tr_close are for the owner's thread only, never
 *     the loop thread (tr_stop would wait for itself: -EDEADLK).
 *   - The loop thread runs with all signals blocked (so SIGPIPE from a reset
 *     connection is an EPIPE, not a crash). Code on the loop thread that
 *     writes to other descriptors gets the same protection.
 *   - tr_loop and tr_raft_connect / tr_dial_cancel belong to the loop thread
 *     (or to the owner's thread before tr_start).
 *
 * Errors: 0 or a negative errno; REP_EPROTO (logstore/error.h) for a frame
 * that breaks the format.
 */
#ifndef TFS_TRANSPORT_H
#define TFS_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "../logstore/error.h"

/* ---- wire constants ------------------------------------------------------- */

#define TR_HEADER_SIZE 20
#define TR_MAX_PAYLOAD (16u << 20)     /* 16 MiB */
#define TR_HELLO_MAX 256               /* the largest frame before HELLO */
#define TR_CLUSTER_ID_MAX 64
#define TR_PROTOCOL_VERSION 1

#define TR_TAG_TOPICFS 'T'             /* first byte: topicfs frames */
#define TR_TAG_RAFT 'R'                /* first byte: a raft stream */

/* Frame types. 0 is never valid; 1..15 belong to the transport (only HELLO is
 * defined; the others are refused); 16.. are the application's and are
 * passed to the handler, which refuses those it does not know. Allocate
 * application types here so they stay unique. */
enum tr_type {
	TR_TYPE_HELLO = 1,
	TR_TYPE_APP_MIN = 16,
};

/* Frame flags. */
#define TR_F_RESPONSE 0x0001u          /* answers request_id */
#define TR_F_ERROR 0x0002u             /* response carrying a 4-byte error code */
#define TR_F_RESERVED 0x00fcu          /* must be zero */
#define TR_F_APP_MASK 0xff00u          /* the application's own bits */

/* ---- the pure codec (no sockets, no allocation except the decoder's) ------ */

struct tr_header {
	uint16_t type;
	uint16_t flags;
	uint32_t request_id;               /* 0: one-way frame */
	uint32_t length;                   /* payload bytes */
	uint32_t crc;                      /* CRC-32C of the payload */
};

/* Writes the 20 header bytes for h (crc as given; see tr_frame_crc). */
void tr_header_encode(uint8_t out[TR_HEADER_SIZE], const struct tr_header *h);

/* Parses and checks 20 header bytes: magic, length <= max_len, reserved
 * flags, ERROR only with RESPONSE, RESPONSE only with a request id, type 0
 * and reserved types 2..15, HELLO with no flags or id. Returns 0, or
 * REP_EPROTO with the reason in why (always NUL-terminated). */
int tr_header_decode(const uint8_t in[TR_HEADER_SIZE], uint32_t max_len,
                     struct tr_header *out, char *why, size_t whylen) TFS_MUST_CHECK;

/* CRC-32C of a payload as the header carries it. */
uint32_t tr_frame_crc(const void *payload, size_t len);

/* HELLO payload: who is calling and for which cluster. */
struct tr_hello {
	uint16_t version;
	uint16_t node_id;
	char cluster_id[TR_CLUSTER_ID_MAX + 1];
};

/* Encodes a HELLO payload into buf (cap bytes); returns its length, or
 * -EINVAL (cluster id empty or too long) / -ENOSPC. */
int tr_hello_encode(uint8_t *buf, size_t cap, uint16_t node_id,
                    const char *cluster_id) TFS_MUST_CHECK;
/* Decodes a HELLO payload; REP_EPROTO with why on any malformation
 * (version is returned, not checked). */
int tr_hello_decode(const uint8_t *buf, size_t len, struct tr_hello *out,
                    char *why, size_t whylen) TFS_MUST_CHECK;

/* A stream decoder: bytes in, whole checked frames out.
 *
 *   tr_decoder_init ──> feed / (want + advance) ... ──> 1: a frame is ready
 *        ──> tr_decoder_frame (borrow it) ──> tr_decoder_next ──> ...
 *   any check failing: REP_EPROTO (or -ENOMEM); the decoder is then dead
 *   until tr_decoder_free.
 */
struct tr_decoder {
	uint32_t max_len;                  /* payload limit for tr_header_decode */
	uint32_t hdr_have;                 /* header bytes buffered */
	uint8_t hdr[TR_HEADER_SIZE];
	struct tr_header h;                /* valid once hdr_have == 20 */
	uint8_t *payload;                  /* malloc'ed, h.length bytes (owned) */
	uint32_t have;                     /* payload bytes buffered */
	int ready;                         /* a whole checked frame is held */
	int failed;                        /* a check failed: dead */
};

void tr_decoder_init(struct tr_decoder *d, uint32_t max_len);
/* Frees the payload buffer. The decoder may be re-initialised afterwards. */
void tr_decoder_free(struct tr_decoder *d);
/* Consumes bytes from buf, stopping right after a complete frame; *used says
 * how many. Returns 1 (a frame is ready: take it, then tr_decoder_next before
 * feeding the rest), 0 (all consumed, more needed) or REP_EPROTO / -ENOMEM
 * with why. Must not be called while a frame is ready. */
int tr_decoder_feed(struct tr_decoder *d, const uint8_t *buf, size_t len, size_t *used,
                    char *why, size_t whylen) TFS_MUST_CHECK;
/* Where the next bytes go to be read in place (exactly what the current
 * header or payload still needs; never beyond the current frame). */
void tr_decoder_want(struct tr_decoder *d, uint8_t **p, size_t *n);
/* n bytes were written at the place tr_decoder_want gave. Same returns as
 * tr_decoder_feed. */
int tr_decoder_advance(struct tr_decoder *d, size_t n, char *why,
                       size_t whylen) TFS_MUST_CHECK;
/* The ready frame: header and payload (never NULL, even when empty),
 * borrowed until tr_decoder_next. */
void tr_decoder_frame(const struct tr_decoder *d, struct tr_header *h,
                      const uint8_t **payload);
/* Drops the ready frame; the decoder waits for the next header. */
void tr_decoder_next(struct tr_decoder *d);
/* Bytes of an unfinished frame held (0 between frames): for "truncated". */
size_t tr_decoder_partial(const struct tr_decoder *d);

/* Parses "a.b.c.d:port" (dotted-quad IPv4, port 0..65535). 0 or -EINVAL. */
int tr_parse_addr(const char *s, struct sockaddr_in *out) TFS_MUST_CHECK;

/* ---- the net --------------------------------------------------------------- */

struct tr_net;
struct tr_dial;

/* Where a request came from, to answer it: a small value, copy it freely.
 * Valid (for tr_respond) as long as that connection stays open. */
struct tr_origin {
	uint64_t conn;                     /* connection id (never reused) */
	uint32_t request_id;               /* 0 for a one-way frame */
	uint16_t peer;
};

/* A received frame, borrowed for the duration of the callback. */
struct tr_frame {
	uint16_t peer;                     /* sender's node id */
	uint16_t type;
	uint16_t flags;
	uint32_t request_id;
	const uint8_t *payload;
	uint32_t len;
	struct tr_origin origin;           /* for tr_respond */
};

/* A frame that is not a response. Returns 0, or a negative code (e.g.
 * REP_EPROTO for an unknown type) to close the connection, which is logged
 * with that code. */
typedef int (*tr_frame_cb)(void *ctx, struct tr_net *net, const struct tr_frame *f);

/* A request's outcome, called exactly once on the loop thread: status 0 and
 * the response frame, or status < 0 and resp NULL: -ETIMEDOUT, -ECONNRESET
 * (its connection broke after it was sent), -EHOSTUNREACH (the peer was
 * unreachable for down_after_ms), -ECANCELED (tr_stop), or the code the peer
 * answered with tr_respond_error. */
typedef void (*tr_response_cb)(void *ctx, int status, const struct tr_frame *resp);

/* An accepted raft stream (tag 'R', HELLO checked: cluster id matches, peer
 * is in the table). Ownership of stream passes to the callee: it must
 * eventually uv_close() it and free it with options.stream_free (libraft
 * does this with raft_free, so pass raft_malloc/raft_free in the options).
 * Reading has been stopped; the next byte is the first one the dialer's
 * raft wrote after the HELLO. If no callback is set, 'R' connections are
 * closed with a log line. */
typedef void (*tr_raft_accept_cb)(void *ctx, struct tr_net *net, uint16_t peer,
                                  uv_stream_t *stream);

/* Outcome of tr_raft_connect: status 0 and a connected stream that has sent
 * 'R' + HELLO (ownership passes as for tr_raft_accept_cb), or status < 0
 * (-ECANCELED after tr_dial_cancel or tr_stop, -ETIMEDOUT, a connect error)
 * and stream NULL. Called exactly once, on the loop thread. */
typedef void (*tr_raft_connect_cb)(void *ctx, uv_stream_t *stream, int status);

struct tr_peer_addr {
	uint16_t id;
	const char *addr;                  /* "a.b.c.d:port" */
};

struct tr_options {
	uint16_t node_id;                  /* this node, 1..65535 */
	const char *cluster_id;            /* 1..64 bytes, same on every node */
	const char *listen;                /* "a.b.c.d:port"; port 0 = any (tr_port) */
	const struct tr_peer_addr *peers;  /* the address book; an entry with
	                                      node_id is allowed and skipped */
	size_t npeers;
	tr_frame_cb on_frame;              /* required */
	tr_raft_accept_cb on_raft_stream;  /* optional */
	void *ctx;                         /* passed to on_frame (and on_raft_stream
	                                      unless raft_ctx is set) */
	void *raft_ctx;                    /* passed to on_raft_stream; NULL: ctx */

	/* Allocator of the uv_tcp_t handed to raft callbacks (default
	 * malloc/free). */
	void *(*stream_malloc)(size_t size);
	void (*stream_free)(void *ptr);

	/* Tuning; 0 = the default in brackets. */
	size_t queue_max_bytes;            /* per peer, queued + being written,
	                                      and for all responses [64 MiB] */
	unsigned connect_timeout_ms;       /* TCP connect [3000] */
	unsigned hello_timeout_ms;         /* from accept/connect to HELLO [3000] */
	unsigned backoff_min_ms;           /* first reconnect delay [50] */
	unsigned backoff_max_ms;           /* reconnect delay cap [1000] */
	unsigned down_after_ms;            /* unreachable this long: queue dropped,
	                                      sends fail fast [10000] */
	unsigned max_unauthenticated;      /* accepted connections before HELLO [64] */
};

/* Checks o, copies everything it needs from it, initialises the loop and
 * binds and listens on o->listen (so -EADDRINUSE etc. come out here). The
 * loop does not run until tr_start. On success *out is owned by the caller
 * and freed with tr_close. -EINVAL (bad option, with a log line naming it),
 * -ENOMEM, or the bind/listen error. */
int tr_open(const struct tr_options *o, struct tr_net **out) TFS_MUST_CHECK;

/* Starts the loop thread. -EALREADY if started, -ESHUTDOWN after tr_stop. */
int tr_start(struct tr_net *net) TFS_MUST_CHECK;

/* Stops serving: closes the listener and every connection, fails pending
 * requests with -ECANCELED, cancels raft dials, runs queued tr_call functions
 * with -ECANCELED, drops queued frames, and joins the loop thread. Handles
 * others opened on tr_loop() (raft) must be closed before, or the loop never
 * ends. Idempotent. Returns 0 or -EDEADLK (called on the loop thread). */
int tr_stop(struct tr_net *net);

/* tr_stop (if needed) then frees net. NULL is a no-op. */
void tr_close(struct tr_net *net);

/* Queues a one-way frame (request id 0) to peer. flags: TR_F_APP_MASK bits
 * only. payload is copied; the caller keeps it. Returns 0 (queued; the peer
 * is dialled if need be), -EINVAL (unknown peer, this node, reserved type or
 * flags), -EMSGSIZE (len > TR_MAX_PAYLOAD), -ENOBUFS (the peer's queue is
 * full: logged once until it drains), -EHOSTUNREACH (the peer has been
 * unreachable for down_after_ms), -ESHUTDOWN, -ENOMEM. */
int tr_send(struct tr_net *net, uint16_t peer, uint16_t type, uint16_t flags,
            const void *payload, size_t len) TFS_MUST_CHECK;

/* Queues a request to peer and calls cb(ctx, ...) exactly once with its
 * response or failure, within about timeout_ms (> 0) of this call. A request
 * that fails before its frame was written is taken out of the queue: it is
 * never sent. Returns 0, or the errors of tr_send, in which case cb is never
 * called. If id is not NULL it receives the request id (ids are per net,
 * never 0, and wrap after 2^32). */
int tr_request(struct tr_net *net, uint16_t peer, uint16_t type, uint16_t flags,
               const void *payload, size_t len, unsigned timeout_ms, tr_response_cb cb,
               void *ctx, uint32_t *id) TFS_MUST_CHECK;

/* Answers the request `to` (from a tr_frame's origin) on the connection it
 * came in on, with the given type (usually the request's), application flags
 * and payload (copied). If that connection has closed meanwhile the answer
 * is dropped (the requester times out or sees -ECONNRESET). Returns 0,
 * -EINVAL (to is a one-way frame), -EMSGSIZE, -ENOBUFS, -ESHUTDOWN, -ENOMEM. */
int tr_respond(struct tr_net *net, const struct tr_origin *to, uint16_t type,
               uint16_t flags, const void *payload, size_t len) TFS_MUST_CHECK;

/* Answers with an error: the requester's callback gets status code (< 0). */
int tr_respond_error(struct tr_net *net, const struct tr_origin *to, uint16_t type,
                     int code) TFS_MUST_CHECK;

/* Runs fn(net, ctx, 0) on the loop thread, in order with other submissions
 * from the same thread; fn(net, ctx, -ECANCELED) if the net stops first.
 * 0, -ESHUTDOWN or -ENOMEM (fn is then never called). */
int tr_call(struct tr_net *net, void (*fn)(struct tr_net *net, void *ctx, int status),
            void *ctx) TFS_MUST_CHECK;

/* Dials peer for raft: connects, writes 'R' and HELLO, and gives the stream
 * to cb. Loop thread only. On 0 *out (if not NULL) may be passed to
 * tr_dial_cancel until cb has run. -EINVAL (unknown peer), -ESHUTDOWN,
 * -ENOMEM; cb is then never called. */
int tr_raft_connect(struct tr_net *net, uint16_t peer, tr_raft_connect_cb cb, void *ctx,
                    struct tr_dial **out) TFS_MUST_CHECK;
/* Cancels a dial whose callback has not run yet: it will run with
 * -ECANCELED. Loop thread only. */
void tr_dial_cancel(struct tr_dial *d);

/* The loop, for raft_uv_init and the like: use it on the loop thread only
 * (or before tr_start). */
uv_loop_t *tr_loop(struct tr_net *net);
/* The port actually listened on (useful with port 0). */
uint16_t tr_port(const struct tr_net *net);
uint16_t tr_node_id(const struct tr_net *net);
/* The configured "a.b.c.d:port" of a node of the table (for this node: its
 * table entry if any, else its listen address), or NULL. The string lives as
 * long as net. */
const char *tr_peer_address(const struct tr_net *net, uint16_t id);
/* 1 if peer currently has a ready outbound connection (for .cluster/nodes). */
int tr_peer_connected(struct tr_net *net, uint16_t id);

#endif
