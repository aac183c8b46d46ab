/*
 * transport.c - the node-to-node transport (see transport.h).
 *
 * Owns: one libuv loop and its thread, the listening socket, every TCP
 * connection of this node, the per-peer send queues, the table of requests
 * waiting for an answer, and the inbox through which other threads hand work
 * to the loop.
 *
 * On the wire. A connection starts with one tag byte from the dialer:
 *
 *   'T'  topicfs frames in both directions (below)
 *   'R'  a raft stream: one HELLO frame from the dialer, then the bytes are
 *        libraft's own; the stream is handed to the raft accept callback
 *   else the connection is closed with a log line
 *
 * Every frame (all integers big-endian):
 *
 *   | bytes | field                                                    |
 *   |-------|----------------------------------------------------------|
 *   | 4     | magic "TFS1" (0x54 0x46 0x53 0x31)                       |
 *   | 2     | type: 0 invalid, 1 HELLO, 2..15 reserved, 16.. application|
 *   | 2     | flags: bit 0 response, bit 1 error, 2..7 zero, 8..15 app  |
 *   | 4     | request id: 0 one-way; a request's id, echoed by its answer|
 *   | 4     | payload length n (<= 16 MiB; <= 256 before HELLO)        |
 *   | 4     | CRC-32C of the payload                                   |
 *   | n     | payload                                                  |
 *
 * HELLO payload (type 1, flags 0, request id 0), exactly 5 + c bytes:
 *
 *   | bytes | field                                                    |
 *   |-------|----------------------------------------------------------|
 *   | 2     | protocol version (1)                                     |
 *   | 2     | node id of the sender (1..65535)                         |
 *   | 1     | cluster id length c (1..64)                              |
 *   | c     | cluster id, printable ASCII without spaces (0x21..0x7e)  |
 *
 * An error response (flags response|error) carries 4 bytes: the code, a
 * negative errno or topicfs domain error (-1..-4999).
 *
 * A 'T' connection, as the acceptor (K_IN) and the dialer (K_OUT) see it:
 *
 *   dialer:   peer_dial ─> CONNECTING ─(on_connect: write 'T'+HELLO)─> HELLO
 *             ─(peer's HELLO checked: handle_hello)─> READY ─> flush queue
 *   acceptor: on_connection ─> TAG ─(tag 'T')─> HELLO ─(HELLO checked: reply
 *             with our HELLO)─> READY
 *   any state ─(bad byte, EOF, timeout, write error: conn_close)─> CLOSING
 *             ─(both handles closed: conn_free)─> gone
 *
 * A raft dial (K_RAFT_DIAL): CONNECTING ─(write 'R'+HELLO, completed)─> the
 * stream goes to the tr_raft_connect callback. An accepted 'R' connection:
 * TAG ─> HELLO ─(checked)─> the stream goes to on_raft_stream.
 *
 * Invariants:
 *  1. A frame is used only after its header and CRC were checked
 *     (tr_decoder); the first check that fails closes the connection with
 *     one log line naming the remote address and the problem.
 *  2. Before a HELLO is accepted, reads are exact (the decoder's want): no
 *     byte past the HELLO is consumed, so a raft stream is handed over with
 *     nothing of libraft's read, and nothing larger than TR_HELLO_MAX is
 *     allocated for a stranger.
 *  3. Everything under net->mu is the cross-thread part: the inbox, the
 *     byte counters that bound the queues, the down/ready flags, the
 *     request id counter and `shut`. Everything else is loop-thread only.
 *     The wake async is sent under mu and closed only after shut is set and
 *     the inbox drained under mu, so a submitter never touches it closed.
 *  4. Bytes are charged to a peer (or to the responses) from submission
 *     until the frame is written or dropped; submissions beyond
 *     queue_max_bytes fail with -ENOBUFS.
 *  5. User callbacks run only from libuv callbacks (async, timer, read,
 *     write, close), never from inside a submission, so they never re-enter
 *     the code that called them. A connection's consequences (pending
 *     requests failed, retry scheduled, raft dial answered) happen in
 *     conn_free, after libuv closed its handles.
 *  6. A pending request is answered exactly once: by its response, its
 *     timer, its connection's end (-ECONNRESET), its peer going down
 *     (-EHOSTUNREACH) or teardown (-ECANCELED), whichever comes first; it
 *     leaves the table at that moment, and if its frame was still queued
 *     the frame leaves the queue too (a request given up is never sent).
 *  7. The loop thread runs with every signal blocked (SIGPIPE from a reset
 *     peer must be an EPIPE, not a crash: libuv writes with write(2)).
 */
#include "transport.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../logstore/crc32c.h"
#include "../logstore/log.h"

#define RX_BULK (64u * 1024)           /* read buffer of a READY connection */
#define NBUCKETS 256                   /* pending request hash buckets */
#define KEEPALIVE_S 5
#define HELLO_FRAME_MAX (TR_HEADER_SIZE + 5 + TR_CLUSTER_ID_MAX)

/* ---- the pure codec --------------------------------------------------------- */

static const uint8_t magic[4] = {'T', 'F', 'S', '1'};

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void tr_header_encode(uint8_t out[TR_HEADER_SIZE], const struct tr_header *h)
{
	memcpy(out, magic, 4);
	put16(out + 4, h->type);
	put16(out + 6, h->flags);
	put32(out + 8, h->request_id);
	put32(out + 12, h->length);
	put32(out + 16, h->crc);
}

static int proto_err(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int proto_err(char *why, size_t whylen, const char *fmt, ...)
{
	if (whylen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return REP_EPROTO;
}

int tr_header_decode(const uint8_t in[TR_HEADER_SIZE], uint32_t max_len,
                     struct tr_header *out, char *why, size_t whylen)
{
	struct tr_header h;
	if (memcmp(in, magic, 4) != 0)
		return proto_err(why, whylen, "bad frame magic 0x%08" PRIx32 " (expected TFS1)",
		                 get32(in));
	h.type = get16(in + 4);
	h.flags = get16(in + 6);
	h.request_id = get32(in + 8);
	h.length = get32(in + 12);
	h.crc = get32(in + 16);
	if (h.length > max_len)
		return proto_err(why, whylen, "frame of %" PRIu32 " bytes over the limit of %" PRIu32,
		                 h.length, max_len);
	if (h.type == 0)
		return proto_err(why, whylen, "frame type 0");
	if (h.type > TR_TYPE_HELLO && h.type < TR_TYPE_APP_MIN)
		return proto_err(why, whylen, "reserved frame type %u", h.type);
	if (h.flags & TR_F_RESERVED)
		return proto_err(why, whylen, "reserved flags 0x%04x in frame type %u", h.flags,
		                 h.type);
	if ((h.flags & TR_F_ERROR) && !(h.flags & TR_F_RESPONSE))
		return proto_err(why, whylen, "error flag without response flag");
	if ((h.flags & TR_F_RESPONSE) && h.request_id == 0)
		return proto_err(why, whylen, "response without a request id");
	if (h.type == TR_TYPE_HELLO && (h.flags || h.request_id))
		return proto_err(why, whylen, "HELLO with flags or a request id");
	if ((h.flags & TR_F_ERROR) && h.length != 4)
		return proto_err(why, whylen, "error response of %" PRIu32 " bytes (expected 4)",
		                 h.length);
	*out = h;
	return 0;
}

uint32_t tr_frame_crc(const void *payload, size_t len)
{
	return ls_crc32c(0, payload, len);
}

static int cluster_id_ok(const char *s, size_t n)
{
	if (n == 0 || n > TR_CLUSTER_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return 0;
	return 1;
}

int tr_hello_encode(uint8_t *buf, size_t cap, uint16_t node_id, const char *cluster_id)
{
	size_t n = strlen(cluster_id);
	if (!cluster_id_ok(cluster_id, n) || node_id == 0)
		return -EINVAL;
	if (cap < 5 + n)
		return -ENOSPC;
	put16(buf, TR_PROTOCOL_VERSION);
	put16(buf + 2, node_id);
	buf[4] = (uint8_t)n;
	memcpy(buf + 5, cluster_id, n);
	return (int)(5 + n);
}

int tr_hello_decode(const uint8_t *buf, size_t len, struct tr_hello *out, char *why,
                    size_t whylen)
{
	if (len < 5)
		return proto_err(why, whylen, "HELLO of %zu bytes is too short", len);
	size_t n = buf[4];
	if (len != 5 + n)
		return proto_err(why, whylen, "HELLO of %zu bytes with a %zu-byte cluster id", len,
		                 n);
	if (!cluster_id_ok((const char *)buf + 5, n))
		return proto_err(why, whylen, "HELLO with an empty, long or unprintable cluster id");
	out->version = get16(buf);
	out->node_id = get16(buf + 2);
	if (out->node_id == 0)
		return proto_err(why, whylen, "HELLO from node id 0");
	memcpy(out->cluster_id, buf + 5, n);
	out->cluster_id[n] = '\0';
	return 0;
}

void tr_decoder_init(struct tr_decoder *d, uint32_t max_len)
{
	memset(d, 0, sizeof(*d));
	d->max_len = max_len;
}

void tr_decoder_free(struct tr_decoder *d)
{
	free(d->payload);
	d->payload = NULL;
}

void tr_decoder_want(struct tr_decoder *d, uint8_t **p, size_t *n)
{
	if (d->hdr_have < TR_HEADER_SIZE) {
		*p = d->hdr + d->hdr_have;
		*n = TR_HEADER_SIZE - d->hdr_have;
	} else {
		*p = d->payload + d->have;
		*n = d->h.length - d->have;
	}
}

static int decoder_complete(struct tr_decoder *d, char *why, size_t whylen)
{
	uint32_t crc = tr_frame_crc(d->payload, d->h.length);
	if (crc != d->h.crc) {
		d->failed = 1;
		return proto_err(why, whylen,
		                 "payload crc 0x%08" PRIx32 " does not match header crc 0x%08" PRIx32
		                 " (frame type %u, %" PRIu32 " bytes)",
		                 crc, d->h.crc, d->h.type, d->h.length);
	}
	d->ready = 1;
	return 1;
}

int tr_decoder_advance(struct tr_decoder *d, size_t n, char *why, size_t whylen)
{
	if (d->failed || d->ready)
		return proto_err(why, whylen, "decoder used after a failure or with a frame held");
	if (d->hdr_have < TR_HEADER_SIZE) {
		d->hdr_have += (uint32_t)n;
		if (d->hdr_have < TR_HEADER_SIZE)
			return 0;
		int rc = tr_header_decode(d->hdr, d->max_len, &d->h, why, whylen);
		if (rc < 0) {
			d->failed = 1;
			return rc;
		}
		d->have = 0;
		if (d->h.length == 0)
			return decoder_complete(d, why, whylen);
		d->payload = malloc(d->h.length);
		if (!d->payload) {
			d->failed = 1;
			snprintf(why, whylen, "no memory for a %" PRIu32 "-byte frame", d->h.length);
			return -ENOMEM;
		}
		return 0;
	}
	d->have += (uint32_t)n;
	if (d->have < d->h.length)
		return 0;
	return decoder_complete(d, why, whylen);
}

int tr_decoder_feed(struct tr_decoder *d, const uint8_t *buf, size_t len, size_t *used,
                    char *why, size_t whylen)
{
	size_t off = 0;
	int rc = 0;
	while (off < len) {
		uint8_t *p;
		size_t n;
		tr_decoder_want(d, &p, &n);
		if (n > len - off)
			n = len - off;
		memcpy(p, buf + off, n);
		off += n;
		rc = tr_decoder_advance(d, n, why, whylen);
		if (rc != 0)
			break;
	}
	*used = off;
	return rc;
}

void tr_decoder_frame(const struct tr_decoder *d, struct tr_header *h, const uint8_t **payload)
{
	static const uint8_t empty[1];
	*h = d->h;
	*payload = d->payload ? d->payload : empty; /* never NULL, even for 0 bytes */
}

void tr_decoder_next(struct tr_decoder *d)
{
	free(d->payload);
	d->payload = NULL;
	d->hdr_have = 0;
	d->have = 0;
	d->ready = 0;
}

size_t tr_decoder_partial(const struct tr_decoder *d)
{
	return d->ready ? 0 : (size_t)d->hdr_have + d->have;
}

int tr_parse_addr(const char *s, struct sockaddr_in *out)
{
	char host[16];
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	const char *p = colon + 1;
	unsigned long port = 0;
	if (!*p || strlen(p) > 5)
		return -EINVAL;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return -EINVAL;
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port > 65535)
		return -EINVAL;
	/* uv_ip4_addr is inet_pton: strict dotted quad, no names. */
	if (uv_ip4_addr(host, (int)port, out) != 0)
		return -EINVAL;
	return 0;
}

/* ---- the net: structures ---------------------------------------------------- */

enum out_kind { OUT_SEND, OUT_REQUEST, OUT_RESPONSE, OUT_CALL };

/* One submission: a frame to write (header + payload in data) or a call. */
struct tr_out {
	struct tr_out *next;
	struct tr_net *net;
	enum out_kind kind;
	int peer;                          /* SEND/REQUEST: peer index */
	uint64_t conn;                     /* RESPONSE: connection id to answer on */
	uint32_t request_id;               /* REQUEST */
	struct pending *pending;           /* REQUEST, until the inbox is drained */
	void (*fn)(struct tr_net *net, void *ctx, int status); /* CALL */
	void *ctx;
	uv_write_t wreq;
	size_t size;                       /* bytes in data (charged) */
	uint8_t data[];
};

/* A request waiting for its answer. In the table from inbox drain until it
 * is answered (invariant 6); freed when its timer has closed. */
struct pending {
	struct pending *next, *prev;       /* hash chain */
	struct tr_net *net;
	uv_timer_t timer;
	uint32_t id;
	int peer;
	uint64_t conn;                     /* connection it was written on, or 0 */
	struct tr_out *queued;             /* its frame while in a peer queue */
	uint64_t deadline_ns;              /* uv_hrtime() */
	tr_response_cb cb;
	void *ctx;
};

enum conn_kind { K_IN, K_OUT, K_RAFT_DIAL };
enum conn_state { S_CONNECTING, S_TAG, S_HELLO, S_READY, S_CLOSING };

struct conn {
	struct conn *next, *prev;          /* net->conns */
	struct tr_net *net;
	uv_tcp_t *tcp;                     /* from stream_malloc (may be handed off) */
	uv_timer_t timer;                  /* connect / HELLO deadline */
	uv_connect_t creq;
	uv_write_t hello_wreq;
	uint8_t hello_buf[1 + HELLO_FRAME_MAX];
	uint64_t id;
	enum conn_kind kind;
	enum conn_state state;
	enum conn_state last_state;        /* the state before CLOSING */
	int peer;                          /* peer index; -1 until HELLO (K_IN) */
	char addr[48];                     /* remote "a.b.c.d:port" */
	uint8_t tag;
	int unauth;                        /* counted in net->unauth */
	int handed_off;                    /* tcp belongs to raft now */
	int open_handles;
	int close_rc;                      /* why it closed (for pendings, dials) */
	uint64_t ready_at;                 /* uv_now when READY */
	struct tr_decoder dec;
	uint8_t *rxbuf;                    /* RX_BULK bytes once READY */
	tr_raft_connect_cb dial_cb;        /* K_RAFT_DIAL, until answered */
	void *dial_ctx;
};

struct peer {
	uint16_t id;
	char addr[32];
	struct sockaddr_in sa;
	/* loop thread */
	struct tr_out *qhead, *qtail;      /* frames waiting for a READY connection */
	struct conn *conn;                 /* the outbound 'T' connection, or NULL */
	uv_timer_t retry;
	int retry_armed;
	unsigned backoff_ms;
	uint64_t unreach_since;            /* uv_now of the first failure, 0 = none */
	/* under net->mu */
	size_t queued_bytes;
	int down;
	int ready;
	int full_logged;
};

struct tr_net {
	/* set by tr_open, then read-only */
	uint16_t node_id;
	char cluster_id[TR_CLUSTER_ID_MAX + 1];
	char listen_addr[32];
	struct peer *peers;
	size_t npeers;
	tr_frame_cb on_frame;
	tr_raft_accept_cb on_raft;
	void *ctx;
	void *raft_ctx;                    /* for on_raft (ctx if not given) */
	void *(*stream_malloc)(size_t);
	void (*stream_free)(void *);
	size_t queue_max;
	unsigned connect_timeout_ms, hello_timeout_ms, backoff_min_ms, backoff_max_ms;
	unsigned down_after_ms, max_unauth;
	uint8_t hello_frame[HELLO_FRAME_MAX];
	size_t hello_len;
	uint16_t port;

	uv_loop_t loop;
	uv_tcp_t listener;
	uv_async_t wake;

	/* loop thread */
	struct conn *conns;
	uint64_t next_conn_id;
	unsigned unauth;
	struct pending *buckets[NBUCKETS];
	int torn_down;

	/* owner thread */
	pthread_t thread;
	int started, joined;

	/* under mu (invariant 3) */
	pthread_mutex_t mu;
	struct tr_out *inbox_head, *inbox_tail;
	size_t resp_bytes;
	int resp_full_logged;
	uint32_t next_request_id;
	int shut;
	int have_loop_tid;
	pthread_t loop_tid;
};

static void conn_close(struct conn *c, int rc);
static void peer_kick(struct tr_net *net, struct peer *p);

/* ---- small helpers ---------------------------------------------------------- */

static int peer_index(const struct tr_net *net, uint16_t id)
{
	for (size_t i = 0; i < net->npeers; i++)
		if (net->peers[i].id == id)
			return (int)i;
	return -1;
}

/* "node 2 at 127.0.0.1:5000" once known, else "connection from 127.0.0.1:5000". */
static const char *conn_name(const struct conn *c, char *buf, size_t len)
{
	if (c->peer >= 0)
		snprintf(buf, len, "node %u at %s", c->net->peers[c->peer].id, c->addr);
	else
		snprintf(buf, len, "connection from %s", c->addr);
	return buf;
}

static void conn_log(const struct conn *c, enum tfs_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void conn_log(const struct conn *c, enum tfs_log_level level, const char *fmt, ...)
{
	char name[96], msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	tfs_log(level, "transport: node %u: %s: %s", c->net->node_id,
	        conn_name(c, name, sizeof(name)), msg);
}

static void uncharge(struct tr_out *f)
{
	struct tr_net *net = f->net;
	pthread_mutex_lock(&net->mu);
	if (f->kind == OUT_RESPONSE) {
		net->resp_bytes -= f->size;
		if (net->resp_bytes < net->queue_max / 2)
			net->resp_full_logged = 0;
	} else if (f->kind == OUT_SEND || f->kind == OUT_REQUEST) {
		struct peer *p = &net->peers[f->peer];
		p->queued_bytes -= f->size;
		if (p->queued_bytes < net->queue_max / 2)
			p->full_logged = 0;
	}
	pthread_mutex_unlock(&net->mu);
}

static void out_free(struct tr_out *f)
{
	uncharge(f);
	free(f);
}

/* ---- pending requests --------------------------------------------------------- */

static struct pending *pending_find(struct tr_net *net, uint32_t id)
{
	for (struct pending *p = net->buckets[id % NBUCKETS]; p; p = p->next)
		if (p->id == id)
			return p;
	return NULL;
}

/* Takes a request that was never written out of its peer's queue: whoever
 * gave up on it must not see it run later. */
static void peer_unqueue(struct tr_net *net, struct tr_out *f)
{
	struct peer *p = &net->peers[f->peer];
	struct tr_out **pp = &p->qhead, *prev = NULL;
	while (*pp && *pp != f) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (!*pp)
		return;
	*pp = f->next;
	if (p->qtail == f)
		p->qtail = prev;
	out_free(f);
}

static void pending_freed(uv_handle_t *h)
{
	free(h->data);
}

/* Answers p (invariant 6): out of the table, timer closed, callback called. */
static void pending_finish(struct pending *p, int status, const struct tr_frame *f)
{
	struct tr_net *net = p->net;
	if (p->queued)
		peer_unqueue(net, p->queued);
	if (p->prev)
		p->prev->next = p->next;
	else
		net->buckets[p->id % NBUCKETS] = p->next;
	if (p->next)
		p->next->prev = p->prev;
	uv_timer_stop(&p->timer);
	uv_close((uv_handle_t *)&p->timer, pending_freed);
	p->cb(p->ctx, status, f);
}

static void pending_timeout(uv_timer_t *t)
{
	pending_finish(t->data, -ETIMEDOUT, NULL);
}

static void pending_insert(struct tr_net *net, struct pending *p)
{
	uint64_t now = uv_hrtime();
	uint64_t left_ms = p->deadline_ns > now ? (p->deadline_ns - now) / 1000000 : 0;
	uv_timer_init(&net->loop, &p->timer);
	p->timer.data = p;
	struct pending **b = &net->buckets[p->id % NBUCKETS];
	p->prev = NULL;
	p->next = *b;
	if (*b)
		(*b)->prev = p;
	*b = p;
	uv_timer_start(&p->timer, pending_timeout, left_ms, 0);
}

/* Fails every pending request matching (conn != 0 ? that connection : peer). */
static void pending_fail_where(struct tr_net *net, uint64_t conn, int peer, int status)
{
	for (size_t b = 0; b < NBUCKETS; b++) {
		struct pending *p = net->buckets[b];
		while (p) {
			struct pending *next = p->next;
			if ((conn && p->conn == conn) || (!conn && (peer < 0 || p->peer == peer)))
				pending_finish(p, status, NULL);
			p = next;
		}
	}
}

/* ---- writing ------------------------------------------------------------------ */

static struct conn *conn_find(struct tr_net *net, uint64_t id)
{
	for (struct conn *c = net->conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void on_frame_written(uv_write_t *req, int status)
{
	struct tr_out *f = req->data;
	struct conn *c = req->handle->data;
	/* A write error other than our own close: the connection is broken. Its
	 * pending requests fail in conn_free. */
	if (status < 0 && status != UV_ECANCELED && c && c->state != S_CLOSING) {
		conn_log(c, TFS_LOG_WARN, "write failed: %s; closing the connection",
		         uv_strerror(status));
		conn_close(c, -ECONNRESET);
	}
	out_free(f);
}

/* Writes f on READY connection c. Returns 0, or <0 (f untouched, c closing). */
static int conn_write(struct conn *c, struct tr_out *f)
{
	struct pending *p = NULL;
	if (f->kind == OUT_REQUEST) {
		p = pending_find(c->net, f->request_id);
		if (p) {
			p->conn = c->id;
			p->queued = NULL;
		}
	}
	f->wreq.data = f;
	uv_buf_t b = uv_buf_init((char *)f->data, (unsigned)f->size);
	int rc = uv_write(&f->wreq, (uv_stream_t *)c->tcp, &b, 1, on_frame_written);
	if (rc < 0) {
		if (p) {
			p->conn = 0;
			p->queued = f;
		}
		conn_log(c, TFS_LOG_WARN, "write failed: %s; closing the connection",
		         uv_strerror(rc));
		conn_close(c, -ECONNRESET);
	}
	return rc;
}

static void peer_flush(struct peer *p)
{
	struct conn *c = p->conn;
	while (p->qhead && c->state == S_READY) {
		struct tr_out *f = p->qhead;
		p->qhead = f->next;
		if (!p->qhead)
			p->qtail = NULL;
		f->next = NULL;
		if (conn_write(c, f) < 0) {
			f->next = p->qhead;     /* keep it for the next connection */
			p->qhead = f;
			if (!p->qtail)
				p->qtail = f;
		}
	}
}

/* Drops p's queue: each request among it fails with status. */
static size_t peer_drop_queue(struct tr_net *net, struct peer *p, int status, size_t *bytes)
{
	size_t n = 0;
	*bytes = 0;
	while (p->qhead) {
		struct tr_out *f = p->qhead;
		p->qhead = f->next;
		n++;
		*bytes += f->size;
		if (f->kind == OUT_REQUEST) {
			struct pending *pd = pending_find(net, f->request_id);
			if (pd) {
				pd->queued = NULL;
				pending_finish(pd, status, NULL);
			}
		}
		out_free(f);
	}
	p->qtail = NULL;
	return n;
}

/* ---- connections ---------------------------------------------------------------- */

static void conn_handle_closed(uv_handle_t *h);

static struct conn *conn_new(struct tr_net *net, enum conn_kind kind, int peer)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->tcp = net->stream_malloc(sizeof(uv_tcp_t));
	if (!c->tcp) {
		free(c);
		return NULL;
	}
	c->net = net;
	c->kind = kind;
	c->peer = peer;
	c->id = ++net->next_conn_id;
	uv_tcp_init(&net->loop, c->tcp);
	c->tcp->data = c;
	uv_timer_init(&net->loop, &c->timer);
	c->timer.data = c;
	c->open_handles = 2;
	tr_decoder_init(&c->dec, TR_HELLO_MAX);
	c->next = net->conns;
	if (net->conns)
		net->conns->prev = c;
	net->conns = c;
	return c;
}

static void tcp_tune(struct tr_net *net, uv_tcp_t *tcp)
{
	uv_os_fd_t fd;
	(void)uv_tcp_nodelay(tcp, 1);
	(void)uv_tcp_keepalive(tcp, 1, KEEPALIVE_S);
	/* Unacknowledged data older than down_after_ms kills the connection, so
	 * a peer that vanished without a reset is noticed while writing too. */
	if (uv_fileno((uv_handle_t *)tcp, &fd) == 0) {
		unsigned ms = net->down_after_ms;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
	}
}

static void remote_name(uv_tcp_t *tcp, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	int sl = sizeof(ss);
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &sl) == 0 &&
	    ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		uv_ip4_name(sin, ip, sizeof(ip));
		port = ntohs(sin->sin_port);
	}
	snprintf(buf, len, "%s:%d", ip, port);
}

/* Starts closing c (idempotent). What follows from it happens in conn_free
 * (invariant 5). */
static void conn_close(struct conn *c, int rc)
{
	if (c->state == S_CLOSING)
		return;
	c->last_state = c->state;
	c->state = S_CLOSING;
	c->close_rc = rc;
	if (c->unauth) {
		c->unauth = 0;
		c->net->unauth--;
	}
	if (c->kind == K_OUT) {
		pthread_mutex_lock(&c->net->mu);
		c->net->peers[c->peer].ready = 0;
		pthread_mutex_unlock(&c->net->mu);
	}
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
	if (!c->handed_off)
		uv_close((uv_handle_t *)c->tcp, conn_handle_closed);
}

static void peer_after_close(struct tr_net *net, struct peer *p, struct conn *c);

static void conn_free(struct conn *c)
{
	struct tr_net *net = c->net;
	if (c->prev)
		c->prev->next = c->next;
	else
		net->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;

	pending_fail_where(net, c->id, -1, -ECONNRESET);
	if (c->kind == K_OUT) {
		struct peer *p = &net->peers[c->peer];
		p->conn = NULL;
		if (!net->torn_down)
			peer_after_close(net, p, c);
	}
	if (c->dial_cb) {
		tr_raft_connect_cb cb = c->dial_cb;
		c->dial_cb = NULL;
		cb(c->dial_ctx, NULL, c->close_rc ? c->close_rc : -ECONNRESET);
	}
	tr_decoder_free(&c->dec);
	free(c->rxbuf);
	if (!c->handed_off)
		net->stream_free(c->tcp);
	free(c);
}

static void conn_handle_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	if (--c->open_handles == 0)
		conn_free(c);
}

static void conn_timeout(uv_timer_t *t)
{
	struct conn *c = t->data;
	if (c->state == S_CONNECTING) {
		conn_log(c, TFS_LOG_DEBUG, "connect timed out after %u ms",
		         c->net->connect_timeout_ms);
		conn_close(c, -ETIMEDOUT);
	} else {
		conn_log(c, TFS_LOG_WARN, "no HELLO within %u ms; closing the connection",
		         c->net->hello_timeout_ms);
		conn_close(c, -ETIMEDOUT);
	}
}

/* Fills c->hello_buf with [tag] HELLO; returns the length. */
static size_t hello_prepare(struct conn *c, int tag)
{
	size_t n = 0;
	if (tag)
		c->hello_buf[n++] = (uint8_t)tag;
	memcpy(c->hello_buf + n, c->net->hello_frame, c->net->hello_len);
	return n + c->net->hello_len;
}

static void on_hello_written(uv_write_t *req, int status)
{
	struct conn *c = req->data;
	if (c->state == S_CLOSING)
		return;
	if (status < 0) {
		conn_log(c, TFS_LOG_WARN, "writing HELLO failed: %s", uv_strerror(status));
		conn_close(c, status);
		return;
	}
	if (c->kind == K_RAFT_DIAL) {
		/* Hand the stream over; the connection object ends with its timer. */
		tr_raft_connect_cb cb = c->dial_cb;
		void *ctx = c->dial_ctx;
		uv_tcp_t *tcp = c->tcp;
		c->dial_cb = NULL;
		c->handed_off = 1;
		c->open_handles--;
		tcp->data = NULL;
		conn_close(c, 0);
		cb(ctx, (uv_stream_t *)tcp, 0);
	}
}

static int conn_send_hello(struct conn *c, int tag)
{
	size_t n = hello_prepare(c, tag);
	uv_buf_t b = uv_buf_init((char *)c->hello_buf, (unsigned)n);
	c->hello_wreq.data = c;
	return uv_write(&c->hello_wreq, (uv_stream_t *)c->tcp, &b, 1, on_hello_written);
}

/* ---- reading -------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct conn *c = h->data;
	uint8_t *p;
	size_t n;
	(void)suggested;
	if (c->state == S_TAG) {
		*buf = uv_buf_init((char *)&c->tag, 1);
		return;
	}
	tr_decoder_want(&c->dec, &p, &n);
	/* Before HELLO: exact reads (invariant 2). READY: read in bulk, except
	 * the rest of a large payload, which goes straight to its place. */
	if (c->state == S_READY && (c->dec.hdr_have < TR_HEADER_SIZE || n < RX_BULK))
		*buf = uv_buf_init((char *)c->rxbuf, RX_BULK);
	else
		*buf = uv_buf_init((char *)p, (unsigned)n);
}

static void handle_frame(struct conn *c);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	char why[200];
	int rc;
	if (!c || c->state == S_CLOSING || nread == 0)
		return;
	if (nread < 0) {
		size_t part = c->state == S_TAG ? 0 : tr_decoder_partial(&c->dec);
		if (nread != UV_EOF)
			conn_log(c, TFS_LOG_WARN, "read failed: %s; closing the connection",
			         uv_strerror((int)nread));
		else if (part)
			conn_log(c, TFS_LOG_WARN,
			         "truncated frame: connection closed after %zu bytes of a frame", part);
		else if (c->state != S_READY)
			conn_log(c, TFS_LOG_WARN, "connection closed before HELLO");
		else
			conn_log(c, TFS_LOG_INFO, "connection closed by the peer");
		conn_close(c, -ECONNRESET);
		return;
	}
	if (c->state == S_TAG) {
		if (c->tag == TR_TAG_TOPICFS ||
		    (c->tag == TR_TAG_RAFT && c->net->on_raft)) {
			c->state = S_HELLO;
			return;
		}
		if (c->tag == TR_TAG_RAFT)
			conn_log(c, TFS_LOG_WARN, "raft stream refused: no raft on this node");
		else
			conn_log(c, TFS_LOG_WARN, "bad protocol tag 0x%02x; closing the connection",
			         c->tag);
		conn_close(c, REP_EPROTO);
		return;
	}
	if (buf->base != (char *)c->rxbuf) {
		rc = tr_decoder_advance(&c->dec, (size_t)nread, why, sizeof(why));
		if (rc == 1)
			handle_frame(c);
	} else {
		size_t off = 0, used;
		rc = 0;
		while (off < (size_t)nread && c->state == S_READY) {
			rc = tr_decoder_feed(&c->dec, c->rxbuf + off, (size_t)nread - off, &used, why,
			                     sizeof(why));
			off += used;
			if (rc < 0)
				break;
			if (rc == 1)
				handle_frame(c);
		}
	}
	if (rc < 0 && c->state != S_CLOSING) {
		conn_log(c, TFS_LOG_WARN, "%s; closing the connection", why);
		conn_close(c, rc);
	}
}

static void handle_hello(struct conn *c, const struct tr_header *h, const uint8_t *payload)
{
	struct tr_net *net = c->net;
	struct tr_hello hello;
	char why[200];
	if (h->type != TR_TYPE_HELLO) {
		conn_log(c, TFS_LOG_WARN, "frame type %u before HELLO; closing the connection",
		         h->type);
		goto refuse;
	}
	if (tr_hello_decode(payload, h->length, &hello, why, sizeof(why)) < 0) {
		conn_log(c, TFS_LOG_WARN, "%s; closing the connection", why);
		goto refuse;
	}
	if (hello.version != TR_PROTOCOL_VERSION) {
		conn_log(c, TFS_LOG_WARN, "protocol version %u (we speak %u); closing the connection",
		         hello.version, TR_PROTOCOL_VERSION);
		goto refuse;
	}
	if (strcmp(hello.cluster_id, net->cluster_id) != 0) {
		conn_log(c, TFS_LOG_WARN,
		         "HELLO for cluster \"%s\", this is cluster \"%s\"; closing the connection",
		         hello.cluster_id, net->cluster_id);
		goto refuse;
	}
	if (hello.node_id == net->node_id) {
		conn_log(c, TFS_LOG_WARN,
		         "HELLO claims this node's own id %u (duplicate node id?); closing the "
		         "connection", hello.node_id);
		goto refuse;
	}
	int idx = peer_index(net, hello.node_id);
	if (idx < 0) {
		conn_log(c, TFS_LOG_WARN,
		         "HELLO from node %u, which is not in the peer table; closing the connection",
		         hello.node_id);
		goto refuse;
	}
	if (c->kind == K_OUT && idx != c->peer) {
		conn_log(c, TFS_LOG_WARN, "answered as node %u; closing the connection",
		         hello.node_id);
		goto refuse;
	}

	if (c->unauth) {
		c->unauth = 0;
		net->unauth--;
	}
	uv_timer_stop(&c->timer);
	tr_decoder_next(&c->dec);

	if (c->kind == K_IN && c->tag == TR_TAG_RAFT) {
		uv_tcp_t *tcp = c->tcp;
		uv_read_stop((uv_stream_t *)tcp);
		c->peer = idx;
		conn_log(c, TFS_LOG_DEBUG, "raft stream accepted");
		c->handed_off = 1;
		c->open_handles--;
		tcp->data = NULL;
		conn_close(c, 0);
		net->on_raft(net->raft_ctx, net, hello.node_id, (uv_stream_t *)tcp);
		return;
	}

	c->rxbuf = malloc(RX_BULK);
	if (!c->rxbuf) {
		conn_log(c, TFS_LOG_WARN, "no memory for a read buffer; closing the connection");
		conn_close(c, -ENOMEM);
		return;
	}
	c->dec.max_len = TR_MAX_PAYLOAD;
	c->ready_at = uv_now(&net->loop);
	if (c->kind == K_IN) {
		c->peer = idx;
		int rc = conn_send_hello(c, 0);
		if (rc < 0) {
			conn_log(c, TFS_LOG_WARN, "writing HELLO failed: %s", uv_strerror(rc));
			conn_close(c, rc);
			return;
		}
		c->state = S_READY;
		conn_log(c, TFS_LOG_DEBUG, "accepted");
		return;
	}

	/* K_OUT: the peer is reachable. */
	struct peer *p = &net->peers[c->peer];
	int was_down;
	c->state = S_READY;
	pthread_mutex_lock(&net->mu);
	p->ready = 1;
	was_down = p->down;
	p->down = 0;
	pthread_mutex_unlock(&net->mu);
	if (was_down || p->unreach_since)
		conn_log(c, TFS_LOG_INFO, "reachable again");
	else
		conn_log(c, TFS_LOG_DEBUG, "connected");
	p->unreach_since = 0;
	peer_flush(p);
	return;

refuse:
	conn_close(c, REP_EPROTO);
}

static void handle_response(struct conn *c, const struct tr_frame *f)
{
	struct tr_net *net = c->net;
	int code = 0;
	if (f->flags & TR_F_ERROR) {
		code = (int32_t)get32(f->payload);
		if (code >= 0 || code < -TFS_EDOMAIN_MAX) {
			conn_log(c, TFS_LOG_WARN,
			         "error response with code %d; closing the connection", code);
			conn_close(c, REP_EPROTO);
			return;
		}
	}
	struct pending *p = pending_find(net, f->request_id);
	if (!p || p->peer != c->peer) {
		/* Late (timed out) or foreign: nothing waits for it. */
		conn_log(c, TFS_LOG_DEBUG, "response to request %" PRIu32 " nobody waits for",
		         f->request_id);
		return;
	}
	if (code)
		pending_finish(p, code, NULL);
	else
		pending_finish(p, 0, f);
}

static void handle_frame(struct conn *c)
{
	struct tr_header h;
	const uint8_t *payload;
	tr_decoder_frame(&c->dec, &h, &payload);
	if (c->state == S_HELLO) {
		handle_hello(c, &h, payload);
		return;
	}
	if (h.type == TR_TYPE_HELLO) {
		conn_log(c, TFS_LOG_WARN, "second HELLO; closing the connection");
		conn_close(c, REP_EPROTO);
		return;
	}
	struct tr_frame f = {
		.peer = c->net->peers[c->peer].id,
		.type = h.type,
		.flags = h.flags,
		.request_id = h.request_id,
		.payload = payload,
		.len = h.length,
		.origin = {.conn = c->id, .request_id = h.request_id,
		           .peer = c->net->peers[c->peer].id},
	};
	if (h.flags & TR_F_RESPONSE) {
		handle_response(c, &f);
	} else {
		int rc = c->net->on_frame(c->net->ctx, c->net, &f);
		if (rc < 0 && c->state != S_CLOSING) {
			conn_log(c, TFS_LOG_WARN, "frame type %u (%" PRIu32 " bytes) refused: %s; "
			         "closing the connection", h.type, h.length, tfs_strerror(rc));
			conn_close(c, rc);
		}
	}
	tr_decoder_next(&c->dec);
}

/* ---- accepting ---------------------------------------------------------------------- */

static void free_handle(uv_handle_t *h)
{
	struct tr_net *net = h->data;
	net->stream_free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct tr_net *net = server->data;
	if (status < 0) {
		tfs_warn("transport: node %u: accept failed: %s", net->node_id, uv_strerror(status));
		return;
	}
	if (net->unauth >= net->max_unauth) {
		uv_tcp_t *tcp = net->stream_malloc(sizeof(*tcp));
		char addr[48];
		if (!tcp)
			return;
		uv_tcp_init(&net->loop, tcp);
		tcp->data = net;
		if (uv_accept(server, (uv_stream_t *)tcp) == 0) {
			remote_name(tcp, addr, sizeof(addr));
			tfs_warn("transport: node %u: connection from %s refused: %u connections "
			         "already wait for their HELLO", net->node_id, addr, net->unauth);
		}
		uv_close((uv_handle_t *)tcp, free_handle);
		return;
	}
	struct conn *c = conn_new(net, K_IN, -1);
	if (!c) {
		tfs_warn("transport: node %u: no memory for a new connection", net->node_id);
		return;
	}
	int rc = uv_accept(server, (uv_stream_t *)c->tcp);
	remote_name(c->tcp, c->addr, sizeof(c->addr));
	c->state = S_TAG;
	c->unauth = 1;
	net->unauth++;
	if (rc == 0) {
		tcp_tune(net, c->tcp);
		rc = uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read);
	}
	if (rc < 0) {
		conn_log(c, TFS_LOG_WARN, "accept failed: %s", uv_strerror(rc));
		conn_close(c, rc);
		return;
	}
	uv_timer_start(&c->timer, conn_timeout, net->hello_timeout_ms, 0);
}

/* ---- dialing ------------------------------------------------------------------------- */

static void on_connect(uv_connect_t *req, int status)
{
	struct conn *c = req->data;
	struct tr_net *net = c->net;
	if (c->state == S_CLOSING)
		return;
	if (status < 0) {
		conn_log(c, TFS_LOG_DEBUG, "connect failed: %s", uv_strerror(status));
		conn_close(c, status);
		return;
	}
	tcp_tune(net, c->tcp);
	uv_timer_stop(&c->timer);
	int rc = conn_send_hello(c, c->kind == K_RAFT_DIAL ? TR_TAG_RAFT : TR_TAG_TOPICFS);
	if (rc == 0 && c->kind == K_OUT)
		rc = uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read);
	if (rc < 0) {
		conn_log(c, TFS_LOG_WARN, "cannot start the connection: %s", uv_strerror(rc));
		conn_close(c, rc);
		return;
	}
	c->state = S_HELLO;
	uv_timer_start(&c->timer, conn_timeout, net->hello_timeout_ms, 0);
}

/* A connection of `kind` to peer index idx, connecting. NULL only on ENOMEM. */
static struct conn *dial(struct tr_net *net, enum conn_kind kind, int idx)
{
	struct conn *c = conn_new(net, kind, idx);
	if (!c)
		return NULL;
	snprintf(c->addr, sizeof(c->addr), "%s", net->peers[idx].addr);
	c->state = S_CONNECTING;
	c->creq.data = c;
	int rc = uv_tcp_connect(&c->creq, c->tcp, (const struct sockaddr *)&net->peers[idx].sa,
	                        on_connect);
	if (rc < 0) {
		conn_log(c, TFS_LOG_DEBUG, "connect failed: %s", uv_strerror(rc));
		conn_close(c, rc);
		return c;
	}
	uv_timer_start(&c->timer, conn_timeout, net->connect_timeout_ms, 0);
	return c;
}

static void peer_retry(uv_timer_t *t)
{
	struct peer *p = t->data;
	struct tr_net *net = t->loop->data;
	p->retry_armed = 0;
	int down;
	pthread_mutex_lock(&net->mu);
	down = p->down;
	pthread_mutex_unlock(&net->mu);
	if (p->qhead || down)
		peer_kick(net, p);
}

static void peer_kick(struct tr_net *net, struct peer *p)
{
	if (net->torn_down || p->retry_armed)
		return;
	if (p->conn) {
		if (p->conn->state == S_READY)
			peer_flush(p);
		return;
	}
	p->conn = dial(net, K_OUT, (int)(p - net->peers));
	if (!p->conn) {
		tfs_warn("transport: node %u: no memory to dial node %u", net->node_id, p->id);
		p->retry_armed = 1;
		uv_timer_start(&p->retry, peer_retry, net->backoff_max_ms, 0);
	}
}

/* After p's outbound connection c ended: count a failure toward "down"
 * (unless it had been READY), then retry with backoff if there is anything
 * to send or the peer is down. */
static void peer_after_close(struct tr_net *net, struct peer *p, struct conn *c)
{
	uint64_t now = uv_now(&net->loop);
	int down;
	if (c->last_state == S_READY) {
		/* It worked for a while: start the backoff over. */
		if (now - c->ready_at >= net->backoff_max_ms)
			p->backoff_ms = 0;
	} else {
		if (!p->unreach_since) {
			p->unreach_since = now ? now : 1;
			tfs_info("transport: node %u: cannot reach node %u at %s: %s; retrying",
			         net->node_id, p->id, p->addr, tfs_strerror(c->close_rc));
		}
		pthread_mutex_lock(&net->mu);
		down = p->down;
		pthread_mutex_unlock(&net->mu);
		if (!down && now - p->unreach_since >= net->down_after_ms) {
			size_t bytes, n;
			pthread_mutex_lock(&net->mu);
			p->down = 1;
			pthread_mutex_unlock(&net->mu);
			n = peer_drop_queue(net, p, -EHOSTUNREACH, &bytes);
			tfs_warn("transport: node %u: node %u at %s unreachable for %" PRIu64
			         " ms: dropped %zu queued frames (%zu bytes); sends to it fail with "
			         "EHOSTUNREACH until it answers", net->node_id, p->id, p->addr,
			         now - p->unreach_since, n, bytes);
		}
	}
	p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : net->backoff_min_ms;
	if (p->backoff_ms > net->backoff_max_ms)
		p->backoff_ms = net->backoff_max_ms;
	pthread_mutex_lock(&net->mu);
	down = p->down;
	pthread_mutex_unlock(&net->mu);
	if (p->qhead || down) {
		p->retry_armed = 1;
		uv_timer_start(&p->retry, peer_retry, p->backoff_ms, 0);
	}
}

/* ---- the inbox ------------------------------------------------------------------------ */

static void process(struct tr_net *net, struct tr_out *f)
{
	struct peer *p;
	struct conn *c;
	int down;
	switch (f->kind) {
	case OUT_CALL:
		f->fn(net, f->ctx, 0);
		free(f);
		return;
	case OUT_RESPONSE:
		c = conn_find(net, f->conn);
		if (!c || c->state != S_READY) {
			tfs_debug("transport: node %u: answer to request %" PRIu32 " dropped: its "
			          "connection is gone", net->node_id, f->request_id);
			out_free(f);
			return;
		}
		if (conn_write(c, f) < 0)
			out_free(f);
		return;
	case OUT_REQUEST:
		pending_insert(net, f->pending);
		f->pending = NULL;
		/* fall through */
	case OUT_SEND:
		p = &net->peers[f->peer];
		pthread_mutex_lock(&net->mu);
		down = p->down;
		pthread_mutex_unlock(&net->mu);
		if (down) {
			if (f->kind == OUT_REQUEST) {
				struct pending *pd = pending_find(net, f->request_id);
				if (pd)
					pending_finish(pd, -EHOSTUNREACH, NULL);
			}
			out_free(f);
			return;
		}
		if (f->kind == OUT_REQUEST) {
			struct pending *pd = pending_find(net, f->request_id);
			if (pd)
				pd->queued = f;
		}
		if (p->qtail)
			p->qtail->next = f;
		else
			p->qhead = f;
		p->qtail = f;
		peer_kick(net, p);
		return;
	}
}

/* Loop thread, after shut: close everything (invariant 3 for the inbox). */
static void teardown(struct tr_net *net)
{
	struct tr_out *f;
	size_t bytes;
	net->torn_down = 1;
	uv_close((uv_handle_t *)&net->listener, NULL);
	for (struct conn *c = net->conns; c; c = c->next)
		conn_close(c, -ECANCELED);
	for (size_t i = 0; i < net->npeers; i++) {
		struct peer *p = &net->peers[i];
		uv_timer_stop(&p->retry);
		uv_close((uv_handle_t *)&p->retry, NULL);
		(void)peer_drop_queue(net, p, -ECANCELED, &bytes);
	}
	pthread_mutex_lock(&net->mu);
	f = net->inbox_head;
	net->inbox_head = net->inbox_tail = NULL;
	pthread_mutex_unlock(&net->mu);
	while (f) {
		struct tr_out *next = f->next;
		if (f->kind == OUT_CALL) {
			f->fn(net, f->ctx, -ECANCELED);
			free(f);
		} else {
			if (f->kind == OUT_REQUEST) {
				f->pending->cb(f->pending->ctx, -ECANCELED, NULL);
				free(f->pending);
			}
			out_free(f);
		}
		f = next;
	}
	pending_fail_where(net, 0, -1, -ECANCELED);
	uv_close((uv_handle_t *)&net->wake, NULL);
}

static void on_wake(uv_async_t *a)
{
	struct tr_net *net = a->data;
	struct tr_out *f;
	int shut;
	if (net->torn_down)
		return;
	pthread_mutex_lock(&net->mu);
	shut = net->shut;
	f = shut ? NULL : net->inbox_head;
	if (!shut)
		net->inbox_head = net->inbox_tail = NULL;
	pthread_mutex_unlock(&net->mu);
	if (shut) {
		teardown(net);
		return;
	}
	while (f) {
		struct tr_out *next = f->next;
		f->next = NULL;
		process(net, f);
		f = next;
	}
}

/* Charges and queues f (invariants 3, 4). On failure f is freed (and its
 * pending, which was never inserted). */
static int submit(struct tr_net *net, struct tr_out *f, uint32_t *id)
{
	int rc = 0;
	pthread_mutex_lock(&net->mu);
	if (net->shut) {
		rc = -ESHUTDOWN;
	} else if (f->kind == OUT_SEND || f->kind == OUT_REQUEST) {
		struct peer *p = &net->peers[f->peer];
		if (p->down) {
			rc = -EHOSTUNREACH;
		} else if (p->queued_bytes + f->size > net->queue_max) {
			rc = -ENOBUFS;
			if (!p->full_logged) {
				p->full_logged = 1;
				tfs_warn("transport: node %u: queue to node %u at %s is full (%zu bytes): "
				         "refusing frames until it drains", net->node_id, p->id, p->addr,
				         p->queued_bytes);
			}
		} else {
			p->queued_bytes += f->size;
		}
	} else if (f->kind == OUT_RESPONSE) {
		if (net->resp_bytes + f->size > net->queue_max) {
			rc = -ENOBUFS;
			if (!net->resp_full_logged) {
				net->resp_full_logged = 1;
				tfs_warn("transport: node %u: %zu bytes of answers wait to be written: "
				         "refusing answers until they drain", net->node_id,
				         net->resp_bytes);
			}
		} else {
			net->resp_bytes += f->size;
		}
	}
	if (rc == 0) {
		if (f->kind == OUT_REQUEST) {
			if (++net->next_request_id == 0)
				net->next_request_id = 1;
			f->request_id = net->next_request_id;
			f->pending->id = f->request_id;
			put32(f->data + 8, f->request_id);
			if (id)
				*id = f->request_id;
		}
		if (net->inbox_tail)
			net->inbox_tail->next = f;
		else
			net->inbox_head = f;
		net->inbox_tail = f;
		uv_async_send(&net->wake);
	}
	pthread_mutex_unlock(&net->mu);
	if (rc < 0) {
		free(f->pending);
		free(f);
	}
	return rc;
}

/* A frame submission (not yet charged), or NULL. */
static struct tr_out *out_new(struct tr_net *net, enum out_kind kind, uint16_t type,
                              uint16_t flags, uint32_t request_id, const void *payload,
                              size_t len)
{
	struct tr_out *f = malloc(sizeof(*f) + TR_HEADER_SIZE + len);
	if (!f)
		return NULL;
	memset(f, 0, sizeof(*f));
	f->net = net;
	f->kind = kind;
	f->peer = -1;
	f->size = TR_HEADER_SIZE + len;
	struct tr_header h = {
		.type = type,
		.flags = flags,
		.request_id = request_id,
		.length = (uint32_t)len,
		.crc = tr_frame_crc(payload, len),
	};
	tr_header_encode(f->data, &h);
	if (len)
		memcpy(f->data + TR_HEADER_SIZE, payload, len);
	return f;
}

static int check_frame_args(struct tr_net *net, uint16_t type, uint16_t flags, size_t len)
{
	(void)net;
	if (type < TR_TYPE_APP_MIN || (flags & ~TR_F_APP_MASK))
		return -EINVAL;
	if (len > TR_MAX_PAYLOAD)
		return -EMSGSIZE;
	return 0;
}

/* ---- public API --------------------------------------------------------------------- */

int tr_send(struct tr_net *net, uint16_t peer, uint16_t type, uint16_t flags,
            const void *payload, size_t len)
{
	int idx = peer_index(net, peer);
	int rc = check_frame_args(net, type, flags, len);
	if (rc < 0)
		return rc;
	if (idx < 0)
		return -EINVAL;
	struct tr_out *f = out_new(net, OUT_SEND, type, flags, 0, payload, len);
	if (!f)
		return -ENOMEM;
	f->peer = idx;
	return submit(net, f, NULL);
}

int tr_request(struct tr_net *net, uint16_t peer, uint16_t type, uint16_t flags,
               const void *payload, size_t len, unsigned timeout_ms, tr_response_cb cb,
               void *ctx, uint32_t *id)
{
	int idx = peer_index(net, peer);
	int rc = check_frame_args(net, type, flags, len);
	if (rc < 0)
		return rc;
	if (idx < 0 || !cb || timeout_ms == 0)
		return -EINVAL;
	struct tr_out *f = out_new(net, OUT_REQUEST, type, flags, 0, payload, len);
	if (!f)
		return -ENOMEM;
	f->pending = calloc(1, sizeof(*f->pending));
	if (!f->pending) {
		free(f);
		return -ENOMEM;
	}
	f->peer = idx;
	f->pending->net = net;
	f->pending->peer = idx;
	f->pending->cb = cb;
	f->pending->ctx = ctx;
	f->pending->deadline_ns = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
	return submit(net, f, id);
}

static int respond(struct tr_net *net, const struct tr_origin *to, uint16_t type,
                   uint16_t flags, const void *payload, size_t len)
{
	if (!to->request_id || !to->conn)
		return -EINVAL;
	struct tr_out *f = out_new(net, OUT_RESPONSE, type, flags, to->request_id, payload, len);
	if (!f)
		return -ENOMEM;
	f->conn = to->conn;
	f->request_id = to->request_id;
	return submit(net, f, NULL);
}

int tr_respond(struct tr_net *net, const struct tr_origin *to, uint16_t type,
               uint16_t flags, const void *payload, size_t len)
{
	int rc = check_frame_args(net, type, flags, len);
	if (rc < 0)
		return rc;
	return respond(net, to, type, flags | TR_F_RESPONSE, payload, len);
}

int tr_respond_error(struct tr_net *net, const struct tr_origin *to, uint16_t type, int code)
{
	uint8_t b[4];
	int rc = check_frame_args(net, type, 0, 0);
	if (rc < 0)
		return rc;
	if (code >= 0 || code < -TFS_EDOMAIN_MAX)
		return -EINVAL;
	put32(b, (uint32_t)(int32_t)code);
	return respond(net, to, type, TR_F_RESPONSE | TR_F_ERROR, b, sizeof(b));
}

int tr_call(struct tr_net *net, void (*fn)(struct tr_net *net, void *ctx, int status),
            void *ctx)
{
	struct tr_out *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->net = net;
	f->kind = OUT_CALL;
	f->peer = -1;
	f->fn = fn;
	f->ctx = ctx;
	return submit(net, f, NULL);
}

int tr_raft_connect(struct tr_net *net, uint16_t peer, tr_raft_connect_cb cb, void *ctx,
                    struct tr_dial **out)
{
	int idx = peer_index(net, peer);
	if (idx < 0 || !cb)
		return -EINVAL;
	if (net->torn_down)
		return -ESHUTDOWN;
	struct conn *c = dial(net, K_RAFT_DIAL, idx);
	if (!c)
		return -ENOMEM;
	c->dial_cb = cb;
	c->dial_ctx = ctx;
	if (out)
		*out = (struct tr_dial *)c;
	return 0;
}

void tr_dial_cancel(struct tr_dial *d)
{
	conn_close((struct conn *)d, -ECANCELED);
}

uv_loop_t *tr_loop(struct tr_net *net)
{
	return &net->loop;
}

uint16_t tr_port(const struct tr_net *net)
{
	return net->port;
}

uint16_t tr_node_id(const struct tr_net *net)
{
	return net->node_id;
}

const char *tr_peer_address(const struct tr_net *net, uint16_t id)
{
	if (id == net->node_id)
		return net->listen_addr;
	int idx = peer_index(net, id);
	return idx < 0 ? NULL : net->peers[idx].addr;
}

int tr_peer_connected(struct tr_net *net, uint16_t id)
{
	int idx = peer_index(net, id), r;
	if (idx < 0)
		return 0;
	pthread_mutex_lock(&net->mu);
	r = net->peers[idx].ready;
	pthread_mutex_unlock(&net->mu);
	return r;
}

/* ---- lifecycle --------------------------------------------------------------------- */

static int bad_option(const char *what, const char *value)
{
	tfs_error("transport: bad option %s: \"%s\"", what, value ? value : "(null)");
	return -EINVAL;
}

static int copy_peers(struct tr_net *net, const struct tr_options *o)
{
	net->peers = calloc(o->npeers ? o->npeers : 1, sizeof(*net->peers));
	if (!net->peers)
		return -ENOMEM;
	for (size_t i = 0; i < o->npeers; i++) {
		const struct tr_peer_addr *pa = &o->peers[i];
		char id[8];
		snprintf(id, sizeof(id), "%u", pa->id);
		if (pa->id == 0)
			return bad_option("peer id", id);
		if (peer_index(net, pa->id) >= 0)
			return bad_option("peer id (duplicate)", id);
		if (!pa->addr || strlen(pa->addr) >= sizeof(net->peers[0].addr))
			return bad_option("peer address", pa->addr);
		if (pa->id == o->node_id)
			continue;
		struct peer *p = &net->peers[net->npeers];
		if (tr_parse_addr(pa->addr, &p->sa) < 0)
			return bad_option("peer address", pa->addr);
		p->id = pa->id;
		snprintf(p->addr, sizeof(p->addr), "%s", pa->addr);
		net->npeers++;
	}
	return 0;
}

int tr_open(const struct tr_options *o, struct tr_net **out)
{
	struct sockaddr_in sa;
	int rc;
	char id[8];
	snprintf(id, sizeof(id), "%u", o->node_id);
	if (o->node_id == 0)
		return bad_option("node id", id);
	if (!o->cluster_id || !cluster_id_ok(o->cluster_id, strlen(o->cluster_id)))
		return bad_option("cluster id", o->cluster_id);
	if (!o->listen || strlen(o->listen) >= 32 || tr_parse_addr(o->listen, &sa) < 0)
		return bad_option("listen", o->listen);
	if (!o->on_frame)
		return bad_option("on_frame", "NULL");
	if (!o->stream_malloc != !o->stream_free)
		return bad_option("stream allocator", "only one of malloc/free");
	if (o->queue_max_bytes && o->queue_max_bytes < TR_HEADER_SIZE + TR_MAX_PAYLOAD)
		return bad_option("queue_max_bytes", "below one largest frame");

	struct tr_net *net = calloc(1, sizeof(*net));
	if (!net)
		return -ENOMEM;
	net->node_id = o->node_id;
	snprintf(net->cluster_id, sizeof(net->cluster_id), "%s", o->cluster_id);
	snprintf(net->listen_addr, sizeof(net->listen_addr), "%s", o->listen);
	for (size_t i = 0; i < o->npeers; i++) /* the table's word for us wins */
		if (o->peers[i].id == o->node_id && o->peers[i].addr &&
		    strlen(o->peers[i].addr) < sizeof(net->listen_addr))
			snprintf(net->listen_addr, sizeof(net->listen_addr), "%s", o->peers[i].addr);
	net->on_frame = o->on_frame;
	net->on_raft = o->on_raft_stream;
	net->ctx = o->ctx;
	net->raft_ctx = o->raft_ctx ? o->raft_ctx : o->ctx;
	net->stream_malloc = o->stream_malloc ? o->stream_malloc : malloc;
	net->stream_free = o->stream_free ? o->stream_free : free;
	net->queue_max = o->queue_max_bytes ? o->queue_max_bytes : (size_t)64 << 20;
	net->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 3000;
	net->hello_timeout_ms = o->hello_timeout_ms ? o->hello_timeout_ms : 3000;
	net->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : 50;
	net->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : 1000;
	if (net->backoff_max_ms < net->backoff_min_ms)
		net->backoff_max_ms = net->backoff_min_ms;
	net->down_after_ms = o->down_after_ms ? o->down_after_ms : 10000;
	net->max_unauth = o->max_unauthenticated ? o->max_unauthenticated : 64;
	rc = pthread_mutex_init(&net->mu, NULL);
	if (rc) {
		free(net);
		return -rc;
	}
	rc = copy_peers(net, o);
	if (rc < 0)
		goto err_after_mutex;

	uint8_t hello[5 + TR_CLUSTER_ID_MAX];
	int hl = tr_hello_encode(hello, sizeof(hello), net->node_id, net->cluster_id);
	if (hl < 0) {
		rc = hl;
		goto err_after_mutex;
	}
	struct tr_header h = {.type = TR_TYPE_HELLO, .length = (uint32_t)hl,
	                      .crc = tr_frame_crc(hello, (size_t)hl)};
	tr_header_encode(net->hello_frame, &h);
	memcpy(net->hello_frame + TR_HEADER_SIZE, hello, (size_t)hl);
	net->hello_len = TR_HEADER_SIZE + (size_t)hl;

	rc = uv_loop_init(&net->loop);
	if (rc < 0)
		goto err_after_mutex;
	net->loop.data = net;
	uv_async_init(&net->loop, &net->wake, on_wake);
	net->wake.data = net;
	for (size_t i = 0; i < net->npeers; i++) {
		uv_timer_init(&net->loop, &net->peers[i].retry);
		net->peers[i].retry.data = &net->peers[i];
	}
	uv_tcp_init(&net->loop, &net->listener);
	net->listener.data = net;
	rc = uv_tcp_bind(&net->listener, (const struct sockaddr *)&sa, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&net->listener, 128, on_connection);
	if (rc < 0) {
		tfs_error("transport: node %u: cannot listen on %s: %s", net->node_id, o->listen,
		          uv_strerror(rc));
		goto err_after_loop;
	}
	struct sockaddr_in bound;
	int bl = sizeof(bound);
	if (uv_tcp_getsockname(&net->listener, (struct sockaddr *)&bound, &bl) == 0)
		net->port = ntohs(bound.sin_port);
	*out = net;
	return 0;

err_after_loop:
	/* Nothing ran yet: close the handles and let the loop finish them. */
	net->torn_down = 1;
	uv_close((uv_handle_t *)&net->listener, NULL);
	uv_close((uv_handle_t *)&net->wake, NULL);
	for (size_t i = 0; i < net->npeers; i++)
		uv_close((uv_handle_t *)&net->peers[i].retry, NULL);
	uv_run(&net->loop, UV_RUN_DEFAULT);
	(void)uv_loop_close(&net->loop);
err_after_mutex:
	pthread_mutex_destroy(&net->mu);
	free(net->peers);
	free(net);
	return rc;
}

static void *loop_main(void *arg)
{
	struct tr_net *net = arg;
	pthread_mutex_lock(&net->mu);
	net->loop_tid = pthread_self();
	net->have_loop_tid = 1;
	pthread_mutex_unlock(&net->mu);
	(void)pthread_setname_np(pthread_self(), "tfs-transport");
	uv_run(&net->loop, UV_RUN_DEFAULT);
	return NULL;
}

int tr_start(struct tr_net *net)
{
	int shut;
	pthread_mutex_lock(&net->mu);
	shut = net->shut;
	pthread_mutex_unlock(&net->mu);
	if (shut)
		return -ESHUTDOWN;
	if (net->started)
		return -EALREADY;
	/* The loop thread starts with every signal blocked: the daemon's
	 * signals go to its other threads, and a write to a connection the peer
	 * reset (libuv uses plain write(2) on Linux) gives EPIPE instead of a
	 * process-killing SIGPIPE, which stays pending on this thread. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&net->thread, NULL, loop_main, net);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return -rc;
	net->started = 1;
	return 0;
}

int tr_stop(struct tr_net *net)
{
	pthread_mutex_lock(&net->mu);
	if (net->have_loop_tid && pthread_equal(net->loop_tid, pthread_self())) {
		pthread_mutex_unlock(&net->mu);
		return -EDEADLK;
	}
	int first = !net->shut;
	net->shut = 1;
	if (first)
		uv_async_send(&net->wake);
	pthread_mutex_unlock(&net->mu);
	if (net->joined)
		return 0;
	if (net->started) {
		pthread_join(net->thread, NULL);
	} else {
		/* Never started: the teardown runs here. */
		uv_run(&net->loop, UV_RUN_DEFAULT);
	}
	net->joined = 1;
	return 0;
}

void tr_close(struct tr_net *net)
{
	if (!net)
		return;
	(void)tr_stop(net);
	int rc = uv_loop_close(&net->loop);
	if (rc < 0) {
		/* Someone's handles are still on the loop: freeing it would leave
		 * them dangling, so it is leaked instead. */
		tfs_error("transport: node %u: loop still has handles (%s); not freed",
		          net->node_id, uv_strerror(rc));
		return;
	}
	pthread_mutex_destroy(&net->mu);
	free(net->peers);
	free(net);
}
