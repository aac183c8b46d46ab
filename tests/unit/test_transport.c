/* test_transport.c - the node-to-node transport (replicator/transport.c):
 * the pure frame codec (header checks, HELLO, stream decoder, a fuzz loop),
 * then real nets on 127.0.0.1 in one process: frames both ways between two
 * and three nodes, requests and responses (errors, timeouts, reconnect),
 * 1000 frames in order, an 8 MiB frame, oversize refused, hostile bytes from
 * raw sockets (each closes only its own connection, with one log line naming
 * the address and the problem), peers going down, full queues, raft stream
 * hand-off in both directions, and stop/close with work outstanding. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../logstore/crc32c.h"
#include "../../logstore/log.h"
#include "../../replicator/transport.h"
#include "unit.h"

enum {
	T_ONEWAY = TR_TYPE_APP_MIN, /* recorded */
	T_ECHO,                     /* recorded; a request is answered with its payload */
	T_FAIL,                     /* a request is answered with error -ENOENT */
	T_REFUSE,                   /* the handler refuses it: connection closed */
	T_SEQ,                      /* recorded (seq numbers) */
};

#define CLUSTER "test-cluster"
#define FAKE_PEER 9 /* in every table, never running: raw sockets claim it */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void deadline_in(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* A port nobody listens on right now (bind to 0, read it, close). */
static uint16_t free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
		abort();
	close(fd);
	return ntohs(sa.sin_port);
}

/* ---- the daemon log, captured to a file ------------------------------------- */

static char log_path[512];

static off_t log_mark(void)
{
	struct stat st;
	return stat(log_path, &st) == 0 ? st.st_size : 0;
}

/* Lines written since mark that contain every one of a and b (b may be NULL),
 * waiting up to ms for at least one. */
static int log_count_since(off_t mark, const char *a, const char *b, int ms)
{
	int64_t end = now_ms() + ms;
	for (;;) {
		int n = 0;
		FILE *f = fopen(log_path, "r");
		char line[4096];
		if (f) {
			fseeko(f, mark, SEEK_SET);
			while (fgets(line, sizeof(line), f))
				if (strstr(line, a) && (!b || strstr(line, b)))
					n++;
			fclose(f);
		}
		if (n || now_ms() >= end)
			return n;
		sleep_ms(10);
	}
}

static void log_dump_since(off_t mark)
{
	FILE *f = fopen(log_path, "r");
	char line[4096];
	if (!f)
		return;
	fseeko(f, mark, SEEK_SET);
	while (fgets(line, sizeof(line), f))
		fprintf(stderr, "  log: %s", line);
	fclose(f);
}

/* ---- a node: a net plus what its handler received ----------------------------- */

struct rec {
	uint16_t peer, type, flags;
	uint32_t request_id;
	uint32_t len;
	uint32_t crc;
	uint8_t head[16];          /* first bytes of the payload */
};

struct node {
	uint16_t id;
	uint16_t port;
	char addr[32];
	struct tr_net *net;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct rec *recs;
	size_t nrecs, cap;
	/* raft streams accepted */
	int raft_accepted;
	uint16_t raft_peer;
	char raft_bytes[64];
	size_t raft_nbytes;
	int raft_eof;
};

static int on_frame(void *ctx, struct tr_net *net, const struct tr_frame *f)
{
	struct node *n = ctx;
	if (f->type == T_REFUSE)
		return REP_EPROTO;
	pthread_mutex_lock(&n->mu);
	if (n->nrecs == n->cap) {
		n->cap = n->cap ? n->cap * 2 : 64;
		n->recs = realloc(n->recs, n->cap * sizeof(*n->recs));
		if (!n->recs)
			abort();
	}
	struct rec *r = &n->recs[n->nrecs++];
	memset(r, 0, sizeof(*r));
	r->peer = f->peer;
	r->type = f->type;
	r->flags = f->flags;
	r->request_id = f->request_id;
	r->len = f->len;
	r->crc = ls_crc32c(0, f->payload, f->len);
	memcpy(r->head, f->payload, f->len < sizeof(r->head) ? f->len : sizeof(r->head));
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
	if (f->request_id && f->type == T_ECHO)
		CHECK_EQ_INT(tr_respond(net, &f->origin, T_ECHO, f->flags & TR_F_APP_MASK, f->payload,
		                        f->len), 0);
	if (f->request_id && f->type == T_FAIL)
		CHECK_EQ_INT(tr_respond_error(net, &f->origin, T_FAIL, -ENOENT), 0);
	return 0;
}

/* Waits until n has at least count records; returns how many it has. */
static size_t node_wait(struct node *n, size_t count, int ms)
{
	struct timespec ts;
	deadline_in(&ts, ms);
	pthread_mutex_lock(&n->mu);
	while (n->nrecs < count)
		if (pthread_cond_timedwait(&n->cv, &n->mu, &ts) != 0)
			break;
	size_t have = n->nrecs;
	pthread_mutex_unlock(&n->mu);
	return have;
}

struct cluster {
	size_t n;
	struct node nodes[4];
	struct tr_peer_addr table[5];
	struct tr_options tune;    /* tuning applied to every node */
};

/* n nodes with ids 1..n on free ports, not opened; plus FAKE_PEER. */
static void cluster_init(struct cluster *cl, size_t n)
{
	memset(cl, 0, sizeof(*cl));
	cl->n = n;
	for (size_t i = 0; i < n; i++) {
		struct node *nd = &cl->nodes[i];
		nd->id = (uint16_t)(i + 1);
		nd->port = free_port();
		snprintf(nd->addr, sizeof(nd->addr), "127.0.0.1:%u", nd->port);
		pthread_mutex_init(&nd->mu, NULL);
		pthread_cond_init(&nd->cv, NULL);
		cl->table[i] = (struct tr_peer_addr){nd->id, nd->addr};
	}
	cl->table[n] = (struct tr_peer_addr){FAKE_PEER, "127.0.0.1:1"};
	cl->tune.connect_timeout_ms = 1000;
	cl->tune.hello_timeout_ms = 1000;
	cl->tune.backoff_min_ms = 20;
	cl->tune.backoff_max_ms = 200;
	cl->tune.down_after_ms = 5000;
}

static struct tr_net *node_start(struct cluster *cl, size_t i, tr_raft_accept_cb on_raft)
{
	struct node *nd = &cl->nodes[i];
	struct tr_options o = cl->tune;
	o.node_id = nd->id;
	o.cluster_id = CLUSTER;
	o.listen = nd->addr;
	o.peers = cl->table;
	o.npeers = cl->n + 1;
	o.on_frame = on_frame;
	o.on_raft_stream = on_raft;
	o.ctx = nd;
	int rc = tr_open(&o, &nd->net);
	CHECK_EQ_INT(rc, 0);
	if (rc < 0) {
		fprintf(stderr, "tr_open node %u on %s: %s\n", nd->id, nd->addr, tfs_strerror(rc));
		exit(1);
	}
	CHECK_EQ_INT(tr_port(nd->net), nd->port);
	CHECK_EQ_INT(tr_start(nd->net), 0);
	return nd->net;
}

static void node_stop(struct node *nd)
{
	tr_close(nd->net);
	nd->net = NULL;
}

static void cluster_free(struct cluster *cl)
{
	for (size_t i = 0; i < cl->n; i++) {
		struct node *nd = &cl->nodes[i];
		tr_close(nd->net);
		free(nd->recs);
		pthread_mutex_destroy(&nd->mu);
		pthread_cond_destroy(&nd->cv);
	}
}

/* ---- request outcomes --------------------------------------------------------- */

struct outcome {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;                  /* callbacks seen (must end at exactly 1) */
	int status;
	uint16_t peer, type;
	uint32_t len, crc;
	int64_t at_ms;
};

#define OUTCOME_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, 0}

static void on_response(void *ctx, int status, const struct tr_frame *resp)
{
	struct outcome *o = ctx;
	pthread_mutex_lock(&o->mu);
	o->done++;
	o->status = status;
	o->at_ms = now_ms();
	if (resp) {
		o->peer = resp->peer;
		o->type = resp->type;
		o->len = resp->len;
		o->crc = ls_crc32c(0, resp->payload, resp->len);
	}
	pthread_cond_broadcast(&o->cv);
	pthread_mutex_unlock(&o->mu);
}

/* Waits for the outcome; returns its status, or 1 if none came within ms. */
static int outcome_wait(struct outcome *o, int ms)
{
	struct timespec ts;
	deadline_in(&ts, ms);
	pthread_mutex_lock(&o->mu);
	while (!o->done)
		if (pthread_cond_timedwait(&o->cv, &o->mu, &ts) != 0)
			break;
	int rc = o->done ? o->status : 1;
	pthread_mutex_unlock(&o->mu);
	return rc;
}

/* One echo request a -> b that must succeed. */
static void check_echo(struct tr_net *a, uint16_t b, const char *text)
{
	struct outcome o = OUTCOME_INIT;
	size_t len = strlen(text);
	CHECK_EQ_INT(tr_request(a, b, T_ECHO, 0, text, len, 5000, on_response, &o, NULL), 0);
	CHECK_EQ_INT(outcome_wait(&o, 6000), 0);
	CHECK_EQ_INT(o.peer, b);
	CHECK_EQ_INT(o.type, T_ECHO);
	CHECK_EQ_INT(o.len, len);
	CHECK_EQ_INT(o.crc, ls_crc32c(0, text, len));
}

/* ---- raw sockets ------------------------------------------------------------------ */

static int raw_connect(uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct timeval tv = {0, 200 * 1000};
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		abort();
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void raw_write(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w <= 0) /* the server may already have closed: fine */
			return;
		p += w;
		len -= (size_t)w;
	}
}

/* 1 if the server closed fd (EOF or reset) within ms; bytes read are
 * discarded. */
static int raw_closed(int fd, int ms)
{
	int64_t end = now_ms() + ms;
	char buf[4096];
	while (now_ms() < end) {
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return 1;
	}
	return 0;
}

static size_t make_frame(uint8_t *out, uint16_t type, uint16_t flags, uint32_t req,
                         const void *payload, uint32_t len)
{
	struct tr_header h = {type, flags, req, len, ls_crc32c(0, payload, len)};
	tr_header_encode(out, &h);
	memcpy(out + TR_HEADER_SIZE, payload, len);
	return TR_HEADER_SIZE + len;
}

/* 'T' (if tag) and a HELLO frame for node id in cluster. */
static size_t make_hello(uint8_t *out, int tag, uint16_t id, const char *cluster)
{
	uint8_t p[128];
	size_t n = 0;
	int len = tr_hello_encode(p, sizeof(p), id, cluster);
	if (len < 0)
		abort();
	if (tag)
		out[n++] = (uint8_t)tag;
	return n + make_frame(out + n, TR_TYPE_HELLO, 0, 0, p, (uint32_t)len);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 11);
}

/* ---- the pure codec ---------------------------------------------------------------- */

static int decode(const uint8_t *hdr, uint32_t max, struct tr_header *h, char *why)
{
	return tr_header_decode(hdr, max, h, why, 200);
}

static void test_header_roundtrip_and_each_check(void)
{
	uint8_t b[TR_HEADER_SIZE];
	char why[200];
	struct tr_header h = {T_ECHO, TR_F_RESPONSE | 0x0100, 0x01020304, 77, 0xdeadbeef}, g;
	tr_header_encode(b, &h);
	CHECK(memcmp(b, "TFS1", 4) == 0);
	CHECK(b[4] == 0 && b[5] == T_ECHO);              /* big-endian type */
	CHECK(b[8] == 1 && b[9] == 2 && b[10] == 3 && b[11] == 4);
	CHECK_EQ_INT(decode(b, TR_MAX_PAYLOAD, &g, why), 0);
	CHECK(g.type == h.type && g.flags == h.flags && g.request_id == h.request_id &&
	      g.length == h.length && g.crc == h.crc);

	struct {
		struct tr_header h;
		uint32_t max;
		const char *why;
	} bad[] = {
		{{T_ECHO, 0, 0, 1000, 0}, 999, "over the limit"},
		{{T_ECHO, 0, 0, TR_MAX_PAYLOAD + 1, 0}, TR_MAX_PAYLOAD, "over the limit"},
		{{0, 0, 0, 0, 0}, 100, "type 0"},
		{{2, 0, 0, 0, 0}, 100, "reserved frame type 2"},
		{{15, 0, 0, 0, 0}, 100, "reserved frame type 15"},
		{{T_ECHO, 0x0004, 0, 0, 0}, 100, "reserved flags"},
		{{T_ECHO, 0x0080, 0, 0, 0}, 100, "reserved flags"},
		{{T_ECHO, TR_F_ERROR, 5, 4, 0}, 100, "without response"},
		{{T_ECHO, TR_F_RESPONSE, 0, 0, 0}, 100, "without a request id"},
		{{T_ECHO, TR_F_RESPONSE | TR_F_ERROR, 5, 8, 0}, 100, "expected 4"},
		{{TR_TYPE_HELLO, 0, 3, 0, 0}, 100, "HELLO with flags"},
		{{TR_TYPE_HELLO, 0x0100, 0, 0, 0}, 100, "HELLO with flags"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		tr_header_encode(b, &bad[i].h);
		why[0] = 0;
		CHECK_EQ_INT(decode(b, bad[i].max, &g, why), REP_EPROTO);
		if (!strstr(why, bad[i].why)) {
			fprintf(stderr, "case %zu: why \"%s\" lacks \"%s\"\n", i, why, bad[i].why);
			CHECK(0);
		}
	}
	tr_header_encode(b, &h);
	b[3] = '2';
	CHECK_EQ_INT(decode(b, TR_MAX_PAYLOAD, &g, why), REP_EPROTO);
	CHECK(strstr(why, "magic") != NULL);
	/* The limit itself is allowed; application flag bits pass. */
	struct tr_header ok = {T_ONEWAY, 0xff00, 0, TR_MAX_PAYLOAD, 0};
	tr_header_encode(b, &ok);
	CHECK_EQ_INT(decode(b, TR_MAX_PAYLOAD, &g, why), 0);
}

static void test_hello_codec(void)
{
	uint8_t b[128];
	char why[200];
	struct tr_hello h;
	int n = tr_hello_encode(b, sizeof(b), 513, "prod-eu");
	CHECK_EQ_INT(n, 5 + 7);
	CHECK(b[0] == 0 && b[1] == TR_PROTOCOL_VERSION && b[2] == 2 && b[3] == 1 && b[4] == 7);
	CHECK_EQ_INT(tr_hello_decode(b, (size_t)n, &h, why, sizeof(why)), 0);
	CHECK_EQ_INT(h.version, TR_PROTOCOL_VERSION);
	CHECK_EQ_INT(h.node_id, 513);
	CHECK(strcmp(h.cluster_id, "prod-eu") == 0);

	CHECK_EQ_INT(tr_hello_encode(b, sizeof(b), 1, ""), -EINVAL);
	CHECK_EQ_INT(tr_hello_encode(b, sizeof(b), 1, "has space"), -EINVAL);
	CHECK_EQ_INT(tr_hello_encode(b, sizeof(b), 0, "x"), -EINVAL);
	CHECK_EQ_INT(tr_hello_encode(b, 8, 1, "toolong"), -ENOSPC);
	char big[TR_CLUSTER_ID_MAX + 2];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	CHECK_EQ_INT(tr_hello_encode(b, sizeof(b), 1, big), -EINVAL);
	big[TR_CLUSTER_ID_MAX] = 0;
	CHECK_EQ_INT(tr_hello_encode(b, sizeof(b), 1, big), 5 + TR_CLUSTER_ID_MAX);

	n = tr_hello_encode(b, sizeof(b), 2, "abc");
	CHECK_EQ_INT(tr_hello_decode(b, 4, &h, why, sizeof(why)), REP_EPROTO);     /* short */
	CHECK_EQ_INT(tr_hello_decode(b, (size_t)n + 1, &h, why, sizeof(why)), REP_EPROTO);
	b[6] = '\n';                                                                /* control */
	CHECK_EQ_INT(tr_hello_decode(b, (size_t)n, &h, why, sizeof(why)), REP_EPROTO);
	b[6] = 'b';
	b[4] = 0;                                                                   /* empty id */
	CHECK_EQ_INT(tr_hello_decode(b, 5, &h, why, sizeof(why)), REP_EPROTO);
	n = tr_hello_encode(b, sizeof(b), 2, "abc");
	b[2] = b[3] = 0;                                                            /* node 0 */
	CHECK_EQ_INT(tr_hello_decode(b, (size_t)n, &h, why, sizeof(why)), REP_EPROTO);
}

static void test_decoder_stream_any_chunking(void)
{
	/* Three frames (empty, small, 100 KiB) decoded from one buffer fed in
	 * chunks of 1, 7, 4096 and all at once, and through want/advance. */
	size_t big = 100 * 1024;
	uint8_t *payload = malloc(big), *buf = malloc(3 * TR_HEADER_SIZE + big + 16);
	for (size_t i = 0; i < big; i++)
		payload[i] = (uint8_t)(i * 31 + 7);
	size_t len = 0;
	len += make_frame(buf + len, T_ONEWAY, 0, 0, "", 0);
	len += make_frame(buf + len, T_ECHO, 0x0200, 42, "hello", 5);
	len += make_frame(buf + len, T_SEQ, 0, 0, payload, (uint32_t)big);
	size_t chunks[] = {1, 7, 4096, len};
	char why[200];
	for (size_t c = 0; c < 4; c++) {
		struct tr_decoder d;
		tr_decoder_init(&d, TR_MAX_PAYLOAD);
		size_t off = 0, frames = 0;
		while (off < len) {
			size_t n = chunks[c] < len - off ? chunks[c] : len - off, used = 0;
			int rc = tr_decoder_feed(&d, buf + off, n, &used, why, sizeof(why));
			CHECK(rc >= 0);
			if (rc < 0)
				break;
			off += used;
			if (rc == 1) {
				struct tr_header h;
				const uint8_t *p;
				tr_decoder_frame(&d, &h, &p);
				if (frames == 0)
					CHECK(h.type == T_ONEWAY && h.length == 0);
				if (frames == 1)
					CHECK(h.type == T_ECHO && h.flags == 0x0200 && h.request_id == 42 &&
					      h.length == 5 && memcmp(p, "hello", 5) == 0);
				if (frames == 2)
					CHECK(h.type == T_SEQ && h.length == big && memcmp(p, payload, big) == 0);
				frames++;
				tr_decoder_next(&d);
			}
		}
		CHECK_EQ_INT(frames, 3);
		CHECK_EQ_INT(tr_decoder_partial(&d), 0);
		tr_decoder_free(&d);
	}
	/* want/advance: copy exactly what the decoder asks for. */
	struct tr_decoder d;
	tr_decoder_init(&d, TR_MAX_PAYLOAD);
	size_t off = 0, frames = 0;
	while (off < len) {
		uint8_t *p;
		size_t n;
		tr_decoder_want(&d, &p, &n);
		CHECK(n > 0 && off + n <= len);
		memcpy(p, buf + off, n);
		off += n;
		int rc = tr_decoder_advance(&d, n, why, sizeof(why));
		CHECK(rc >= 0);
		if (rc == 1) {
			frames++;
			tr_decoder_next(&d);
		}
	}
	CHECK_EQ_INT(frames, 3);
	tr_decoder_free(&d);

	/* A flipped payload byte: the CRC check names it; the decoder is dead. */
	buf[len - 1] ^= 0x40;
	tr_decoder_init(&d, TR_MAX_PAYLOAD);
	int rc = 0;
	size_t used;
	off = 0;
	while (off < len && (rc = tr_decoder_feed(&d, buf + off, len - off, &used, why,
	                                          sizeof(why))) == 1) {
		off += used;
		tr_decoder_next(&d);
	}
	CHECK_EQ_INT(rc, REP_EPROTO);
	CHECK(strstr(why, "does not match header crc") != NULL);
	CHECK_EQ_INT(tr_decoder_feed(&d, buf, 1, &used, why, sizeof(why)), REP_EPROTO);
	tr_decoder_free(&d);

	/* Part of the third frame: partial counts it. */
	tr_decoder_init(&d, TR_MAX_PAYLOAD);
	CHECK_EQ_INT(tr_decoder_feed(&d, buf + 2 * TR_HEADER_SIZE + 5, 30, &used, why,
	                             sizeof(why)), 0);
	CHECK_EQ_INT(tr_decoder_partial(&d), 30);
	tr_decoder_free(&d);
	free(payload);
	free(buf);
}

static void test_parse_addr(void)
{
	struct sockaddr_in sa;
	CHECK_EQ_INT(tr_parse_addr("127.0.0.2:7070", &sa), 0);
	CHECK_EQ_INT(ntohs(sa.sin_port), 7070);
	CHECK_EQ_INT(ntohl(sa.sin_addr.s_addr), 0x7f000002);
	CHECK_EQ_INT(tr_parse_addr("0.0.0.0:0", &sa), 0);
	const char *bad[] = {"localhost:7070", "127.0.0.1", "127.0.0.1:", ":7070",
	                     "127.0.0.1:70700", "127.0.0.1:-1", "127.0.0.1:7a", "1.2.3:4",
	                     "[::1]:7070", "127.0.0.1:7070x", "1.2.3.4.5:1", ""};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (tr_parse_addr(bad[i], &sa) != -EINVAL) {
			fprintf(stderr, "accepted \"%s\"\n", bad[i]);
			CHECK(0);
		}
}

/* Thousands of random and mutated buffers through the decoder and the HELLO
 * parser, in random chunks: every outcome is a frame, "more" or REP_EPROTO;
 * nothing crashes (ASan watches the memory). */
static void test_fuzz_parser(void)
{
	uint8_t buf[4096], valid[512];
	char why[200];
	size_t vlen = 0;
	vlen += make_hello(valid, 0, 3, CLUSTER);
	vlen += make_frame(valid + vlen, T_ECHO, 0x0100, 9, "payload bytes", 13);
	vlen += make_frame(valid + vlen, T_ONEWAY, 0, 0, "", 0);
	size_t frames = 0, errors = 0, partial = 0;
	for (int iter = 0; iter < 20000; iter++) {
		size_t len;
		if (iter % 2 == 0) { /* random bytes, often with a real magic */
			len = rnd() % sizeof(buf);
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)rnd();
			if (len >= 4 && rnd() % 2)
				memcpy(buf, "TFS1", 4);
		} else { /* a valid stream with a few bytes changed, cut or grown */
			memcpy(buf, valid, vlen);
			len = vlen;
			for (int k = 1 + (int)(rnd() % 4); k > 0; k--)
				buf[rnd() % vlen] = (uint8_t)rnd();
			if (rnd() % 3 == 0)
				len = rnd() % (vlen + 1);
		}
		struct tr_decoder d;
		tr_decoder_init(&d, iter % 3 ? TR_HELLO_MAX : TR_MAX_PAYLOAD);
		size_t off = 0;
		int rc = 0;
		while (off < len) {
			size_t n = 1 + rnd() % 64, used;
			if (n > len - off)
				n = len - off;
			rc = tr_decoder_feed(&d, buf + off, n, &used, why, sizeof(why));
			off += used;
			if (rc < 0) {
				CHECK(rc == REP_EPROTO || rc == -ENOMEM);
				errors++;
				break;
			}
			if (rc == 1) {
				struct tr_header h;
				const uint8_t *p;
				struct tr_hello hello;
				tr_decoder_frame(&d, &h, &p);
				CHECK(h.length <= d.max_len);
				CHECK(ls_crc32c(0, p, h.length) == h.crc);
				if (h.type == TR_TYPE_HELLO)
					(void)!tr_hello_decode(p, h.length, &hello, why, sizeof(why));
				frames++;
				tr_decoder_next(&d);
			}
		}
		if (rc == 0 && tr_decoder_partial(&d))
			partial++;
		tr_decoder_free(&d);
		struct tr_hello hello;
		(void)!tr_hello_decode(buf, len < 80 ? len : 80, &hello, why, sizeof(why));
	}
	CHECK(frames > 1000);
	CHECK(errors > 1000);
	CHECK(partial > 100);
}

/* ---- nets ------------------------------------------------------------------------------ */

static void test_two_nets_exchange_frames_both_ways(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	struct tr_net *a = node_start(&cl, 0, NULL), *b = node_start(&cl, 1, NULL);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0x0300, "from a", 6), 0);
	CHECK_EQ_INT(tr_send(b, 1, T_ONEWAY, 0, "from b", 6), 0);
	CHECK_EQ_INT(node_wait(&cl.nodes[1], 1, 5000), 1);
	CHECK_EQ_INT(node_wait(&cl.nodes[0], 1, 5000), 1);
	struct rec *ra = &cl.nodes[1].recs[0], *rb = &cl.nodes[0].recs[0];
	CHECK(ra->peer == 1 && ra->type == T_ONEWAY && ra->flags == 0x0300 &&
	      ra->request_id == 0 && ra->len == 6 && memcmp(ra->head, "from a", 6) == 0);
	CHECK(rb->peer == 2 && rb->type == T_ONEWAY && rb->flags == 0 && rb->len == 6 &&
	      memcmp(rb->head, "from b", 6) == 0);
	CHECK(tr_peer_connected(a, 2));
	CHECK(!tr_peer_connected(a, FAKE_PEER));
	CHECK(strcmp(tr_peer_address(a, 2), cl.nodes[1].addr) == 0);
	CHECK(strcmp(tr_peer_address(a, 1), cl.nodes[0].addr) == 0);
	CHECK(tr_peer_address(a, 55) == NULL);
	/* An empty payload, and the argument checks. */
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, NULL, 0), 0);
	CHECK_EQ_INT(node_wait(&cl.nodes[1], 2, 5000), 2);
	CHECK_EQ_INT(tr_send(a, 1, T_ONEWAY, 0, "x", 1), -EINVAL);     /* itself */
	CHECK_EQ_INT(tr_send(a, 55, T_ONEWAY, 0, "x", 1), -EINVAL);    /* unknown */
	CHECK_EQ_INT(tr_send(a, 2, TR_TYPE_HELLO, 0, "x", 1), -EINVAL);
	CHECK_EQ_INT(tr_send(a, 2, 5, 0, "x", 1), -EINVAL);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, TR_F_RESPONSE, "x", 1), -EINVAL);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0x0010, "x", 1), -EINVAL);
	cluster_free(&cl);
}

static void test_three_nets_all_pairs(void)
{
	struct cluster cl;
	cluster_init(&cl, 3);
	for (size_t i = 0; i < 3; i++)
		node_start(&cl, i, NULL);
	for (size_t i = 0; i < 3; i++)
		for (size_t j = 0; j < 3; j++)
			if (i != j) {
				char msg[16];
				snprintf(msg, sizeof(msg), "%zu->%zu", i + 1, j + 1);
				CHECK_EQ_INT(tr_send(cl.nodes[i].net, (uint16_t)(j + 1), T_ONEWAY, 0, msg,
				                     strlen(msg)), 0);
			}
	for (size_t j = 0; j < 3; j++) {
		CHECK_EQ_INT(node_wait(&cl.nodes[j], 2, 5000), 2);
		for (size_t k = 0; k < cl.nodes[j].nrecs && k < 2; k++) {
			struct rec *r = &cl.nodes[j].recs[k];
			char want[16];
			snprintf(want, sizeof(want), "%u->%zu", r->peer, j + 1);
			CHECK(r->len == strlen(want) && memcmp(r->head, want, r->len) == 0);
		}
	}
	/* And requests across every pair. */
	for (size_t i = 0; i < 3; i++)
		for (size_t j = 0; j < 3; j++)
			if (i != j)
				check_echo(cl.nodes[i].net, (uint16_t)(j + 1), "ping");
	cluster_free(&cl);
}

static void test_request_response_error_and_refusal(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	struct tr_net *a = node_start(&cl, 0, NULL);
	node_start(&cl, 1, NULL);
	check_echo(a, 2, "echo me");

	/* The peer answers with an error code: the callback gets it. */
	struct outcome o = OUTCOME_INIT;
	uint32_t id = 0;
	CHECK_EQ_INT(tr_request(a, 2, T_FAIL, 0, "x", 1, 5000, on_response, &o, &id), 0);
	CHECK(id != 0);
	CHECK_EQ_INT(outcome_wait(&o, 6000), -ENOENT);

	/* A one-way frame cannot be answered. */
	struct tr_origin oneway = {.conn = 1, .request_id = 0, .peer = 2};
	CHECK_EQ_INT(tr_respond(a, &oneway, T_ECHO, 0, "x", 1), -EINVAL);
	CHECK_EQ_INT(tr_respond_error(a, &oneway, T_ECHO, 5), -EINVAL);
	CHECK_EQ_INT(tr_request(a, 2, T_ECHO, 0, "x", 1, 0, on_response, &o, NULL), -EINVAL);

	/* The handler refuses a frame: that connection closes (one log line),
	 * the request on it fails with ECONNRESET, and the next request
	 * reconnects. */
	off_t mark = log_mark();
	struct outcome r = OUTCOME_INIT;
	CHECK_EQ_INT(tr_request(a, 2, T_REFUSE, 0, "x", 1, 5000, on_response, &r, NULL), 0);
	CHECK_EQ_INT(outcome_wait(&r, 6000), -ECONNRESET);
	CHECK_EQ_INT(log_count_since(mark, "refused", "node 1 at 127.0.0.1:", 2000), 1);
	check_echo(a, 2, "again");
	/* Exactly one callback each. */
	sleep_ms(50);
	CHECK_EQ_INT(o.done, 1);
	CHECK_EQ_INT(r.done, 1);
	cluster_free(&cl);
}

static void test_request_times_out_while_peer_down_then_reconnects(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	struct tr_net *a = node_start(&cl, 0, NULL);
	struct outcome o = OUTCOME_INIT;
	int64_t t0 = now_ms();
	CHECK_EQ_INT(tr_request(a, 2, T_ECHO, 0, "early", 5, 300, on_response, &o, NULL), 0);
	CHECK_EQ_INT(outcome_wait(&o, 3000), -ETIMEDOUT);
	CHECK(o.at_ms - t0 >= 250 && o.at_ms - t0 < 2000);
	CHECK(!tr_peer_connected(a, 2));
	/* A one-way frame queued while it is down is delivered once it is up. */
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, "queued", 6), 0);
	node_start(&cl, 1, NULL);
	check_echo(a, 2, "late");
	CHECK(node_wait(&cl.nodes[1], 2, 3000) >= 2);
	/* "early" timed out before it was written: it was never sent. */
	CHECK(cl.nodes[1].recs[0].type == T_ONEWAY &&
	      memcmp(cl.nodes[1].recs[0].head, "queued", 6) == 0);
	CHECK(cl.nodes[1].recs[1].type == T_ECHO && memcmp(cl.nodes[1].recs[1].head, "late", 4) == 0);
	CHECK(tr_peer_connected(a, 2));
	/* The peer restarts: the next request finds the new incarnation. */
	node_stop(&cl.nodes[1]);
	node_start(&cl, 1, NULL);
	check_echo(a, 2, "after restart");
	cluster_free(&cl);
}

static void test_thousand_frames_in_order_both_ways(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	struct tr_net *a = node_start(&cl, 0, NULL), *b = node_start(&cl, 1, NULL);
	for (uint32_t i = 0; i < 1000; i++) {
		uint8_t p[8];
		memcpy(p, &i, 4);
		memset(p + 4, (int)(i & 0xff), 4);
		CHECK_EQ_INT(tr_send(a, 2, T_SEQ, 0, p, sizeof(p)), 0);
		CHECK_EQ_INT(tr_send(b, 1, T_SEQ, 0, p, 4 + i % 5), 0);
	}
	CHECK_EQ_INT(node_wait(&cl.nodes[1], 1000, 10000), 1000);
	CHECK_EQ_INT(node_wait(&cl.nodes[0], 1000, 10000), 1000);
	int in_order = 1;
	for (uint32_t i = 0; i < 1000; i++) {
		uint32_t got_b, got_a;
		memcpy(&got_b, cl.nodes[1].recs[i].head, 4);
		memcpy(&got_a, cl.nodes[0].recs[i].head, 4);
		if (got_b != i || got_a != i || cl.nodes[0].recs[i].len != 4 + i % 5)
			in_order = 0;
	}
	CHECK(in_order);
	sleep_ms(50);
	CHECK_EQ_INT(cl.nodes[1].nrecs, 1000); /* no duplicates */
	cluster_free(&cl);
}

static void test_large_frame_ok_oversize_refused(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	struct tr_net *a = node_start(&cl, 0, NULL);
	node_start(&cl, 1, NULL);
	size_t big = 8u << 20;
	uint8_t *p = malloc(TR_MAX_PAYLOAD + 1);
	for (size_t i = 0; i < big; i++)
		p[i] = (uint8_t)(i ^ (i >> 9));
	/* 8 MiB as a request: echoed back whole. */
	struct outcome o = OUTCOME_INIT;
	CHECK_EQ_INT(tr_request(a, 2, T_ECHO, 0, p, big, 20000, on_response, &o, NULL), 0);
	CHECK_EQ_INT(outcome_wait(&o, 25000), 0);
	CHECK_EQ_INT(o.len, big);
	CHECK_EQ_INT(o.crc, ls_crc32c(0, p, big));
	CHECK_EQ_INT(node_wait(&cl.nodes[1], 1, 1000), 1);
	CHECK_EQ_INT(cl.nodes[1].recs[0].len, big);
	CHECK_EQ_INT(cl.nodes[1].recs[0].crc, ls_crc32c(0, p, big));
	/* One byte over 16 MiB is refused at the sender... */
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, p, TR_MAX_PAYLOAD + 1), -EMSGSIZE);
	CHECK_EQ_INT(tr_request(a, 2, T_ONEWAY, 0, p, TR_MAX_PAYLOAD + 1, 100, on_response, &o,
	                        NULL), -EMSGSIZE);
	free(p);
	/* ...and by the receiver, from a raw peer, before any allocation. */
	off_t mark = log_mark();
	uint8_t buf[256];
	int fd = raw_connect(cl.nodes[1].port);
	size_t n = make_hello(buf, 'T', FAKE_PEER, CLUSTER);
	struct tr_header h = {T_ONEWAY, 0, 0, TR_MAX_PAYLOAD + 1, 0};
	tr_header_encode(buf + n, &h);
	raw_write(fd, buf, n + TR_HEADER_SIZE);
	CHECK(raw_closed(fd, 3000));
	close(fd);
	CHECK_EQ_INT(log_count_since(mark, "over the limit of 16777216", "127.0.0.1:", 2000), 1);
	check_echo(a, 2, "still serving");
	cluster_free(&cl);
}

/* One hostile connection: bytes written, then the server must close it and
 * log exactly one line containing `expect` and the client's address. */
struct hostile {
	const char *name;
	uint8_t bytes[512];
	size_t len;
	const char *expect;
	int half_close;            /* shutdown(SHUT_WR) after writing */
};

static void run_hostile(struct cluster *cl, struct hostile *h)
{
	off_t mark = log_mark();
	int fd = raw_connect(cl->nodes[1].port);
	struct sockaddr_in me;
	socklen_t sl = sizeof(me);
	char addr[32];
	getsockname(fd, (struct sockaddr *)&me, &sl);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(me.sin_port));
	raw_write(fd, h->bytes, h->len);
	if (h->half_close)
		shutdown(fd, SHUT_WR);
	int closed = raw_closed(fd, 3000);
	close(fd);
	int lines = log_count_since(mark, h->expect, addr, 2000);
	if (!closed || lines != 1) {
		fprintf(stderr, "hostile case \"%s\": closed %d, %d log lines with \"%s\" and %s\n",
		        h->name, closed, lines, h->expect, addr);
		log_dump_since(mark);
	}
	CHECK(closed);
	CHECK_EQ_INT(lines, 1);
}

static void test_hostile_bytes_close_only_that_connection(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	cl.tune.hello_timeout_ms = 300;
	struct tr_net *a = node_start(&cl, 0, NULL);
	node_start(&cl, 1, NULL);
	check_echo(a, 2, "before"); /* a keeps one connection open throughout */

	static struct hostile cases[16];
	size_t nc = 0, n;
	struct hostile *h;

	h = &cases[nc++];
	h->name = "random bytes";
	for (size_t i = 0; i < 200; i++)
		h->bytes[i] = (uint8_t)rnd();
	h->bytes[0] = 0xa5;
	h->len = 200;
	h->expect = "bad protocol tag 0xa5";

	h = &cases[nc++];
	h->name = "tag then random bytes";
	h->bytes[0] = 'T';
	for (size_t i = 1; i < 200; i++)
		h->bytes[i] = (uint8_t)rnd();
	h->bytes[1] = 'X';
	h->len = 200;
	h->expect = "bad frame magic";

	h = &cases[nc++];
	h->name = "valid HELLO prefix then junk";
	n = make_hello(h->bytes, 'T', FAKE_PEER, CLUSTER);
	memset(h->bytes + 12, 0xee, n - 12); /* header's length/crc and payload junk */
	h->len = n + 50;
	h->expect = "over the limit of 256";

	h = &cases[nc++];
	h->name = "HELLO with a bad crc";
	n = make_hello(h->bytes, 'T', FAKE_PEER, CLUSTER);
	h->bytes[n - 1] ^= 1;
	h->len = n;
	h->expect = "does not match header crc";

	h = &cases[nc++];
	h->name = "wrong cluster id";
	h->len = make_hello(h->bytes, 'T', FAKE_PEER, "other-cluster");
	h->expect = "HELLO for cluster \"other-cluster\"";

	h = &cases[nc++];
	h->name = "unknown node id";
	h->len = make_hello(h->bytes, 'T', 77, CLUSTER);
	h->expect = "node 77, which is not in the peer table";

	h = &cases[nc++];
	h->name = "our own node id";
	h->len = make_hello(h->bytes, 'T', 2, CLUSTER);
	h->expect = "own id 2";

	h = &cases[nc++];
	h->name = "frame before HELLO";
	h->bytes[0] = 'T';
	h->len = 1 + make_frame(h->bytes + 1, T_ONEWAY, 0, 0, "hi", 2);
	h->expect = "frame type 16 before HELLO";

	h = &cases[nc++];
	h->name = "wrong crc after HELLO";
	n = make_hello(h->bytes, 'T', FAKE_PEER, CLUSTER);
	n += make_frame(h->bytes + n, T_ONEWAY, 0, 0, "some payload", 12);
	h->bytes[n - 3] ^= 0x10;
	h->len = n;
	h->expect = "does not match header crc";

	h = &cases[nc++];
	h->name = "truncated frame then EOF";
	n = make_hello(h->bytes, 'T', FAKE_PEER, CLUSTER);
	n += make_frame(h->bytes + n, T_ONEWAY, 0, 0, "0123456789abcdef", 16);
	h->len = n - 6;
	h->half_close = 1;
	h->expect = "truncated frame: connection closed after 30 bytes";

	h = &cases[nc++];
	h->name = "second HELLO";
	n = make_hello(h->bytes, 'T', FAKE_PEER, CLUSTER);
	h->len = n + make_hello(h->bytes + n, 0, FAKE_PEER, CLUSTER);
	h->expect = "second HELLO";

	h = &cases[nc++];
	h->name = "error response with a positive code";
	n = make_hello(h->bytes, 'T', FAKE_PEER, CLUSTER);
	h->len = n + make_frame(h->bytes + n, T_ECHO, TR_F_RESPONSE | TR_F_ERROR, 5,
	                        "\0\0\0\5", 4);
	h->expect = "error response with code 5";

	h = &cases[nc++];
	h->name = "silence";
	h->len = 0;
	h->expect = "no HELLO within 300 ms";

	h = &cases[nc++];
	h->name = "raft stream without raft";
	h->len = make_hello(h->bytes, 'R', FAKE_PEER, CLUSTER);
	h->expect = "raft stream refused";

	for (size_t i = 0; i < nc; i++) {
		run_hostile(&cl, &cases[i]);
		/* The node still serves a good peer, on a new connection too. */
		check_echo(a, 2, cases[i].name);
	}
	/* A good raw peer past HELLO gets an answer to a request, then a
	 * frame with a reserved flag closes it. */
	{
		uint8_t buf[256], rd[256];
		int fd = raw_connect(cl.nodes[1].port);
		size_t m = make_hello(buf, 'T', FAKE_PEER, CLUSTER);
		m += make_frame(buf + m, T_ECHO, 0, 77, "raw", 3);
		raw_write(fd, buf, m);
		size_t got = 0, want = 2 * TR_HEADER_SIZE + 5 + strlen(CLUSTER) + 3;
		int64_t end = now_ms() + 3000;
		while (got < want && now_ms() < end) {
			ssize_t r = read(fd, rd + got, sizeof(rd) - got);
			if (r > 0)
				got += (size_t)r;
			else if (r == 0)
				break;
		}
		CHECK_EQ_INT(got, want);
		struct tr_header rh;
		char why[200];
		size_t off = TR_HEADER_SIZE + 5 + strlen(CLUSTER); /* its HELLO */
		CHECK_EQ_INT(tr_header_decode(rd + off, TR_MAX_PAYLOAD, &rh, why, sizeof(why)), 0);
		CHECK(rh.type == T_ECHO && rh.flags == TR_F_RESPONSE && rh.request_id == 77 &&
		      rh.length == 3 && memcmp(rd + off + TR_HEADER_SIZE, "raw", 3) == 0);
		off_t mark = log_mark();
		struct tr_header bad = {T_ONEWAY, 0x0008, 0, 0, 0};
		tr_header_encode(buf, &bad);
		raw_write(fd, buf, TR_HEADER_SIZE);
		CHECK(raw_closed(fd, 3000));
		close(fd);
		CHECK_EQ_INT(log_count_since(mark, "reserved flags 0x0008", "node 9 at 127.0.0.1:", 2000), 1);
	}
	check_echo(a, 2, "after");
	cluster_free(&cl);
}

/* A fake peer 2 answers HELLO and resets the connection at once, while the
 * dialer has frames queued: the flush hits the reset socket (ECONNRESET),
 * the frames written are lost, the process survives, and later frames reach
 * the real node 2 once it runs. (The loop thread also blocks SIGPIPE for the
 * rarer EPIPE case, which libuv's stop-after-first-error hides here.) */
static void test_peer_reset_mid_flush_is_not_fatal(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(cl.nodes[1].port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(lfd, 8) == 0);
	struct timeval tv = {3, 0}; /* accept gives up after 3 s */
	setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	off_t mark = log_mark();
	struct tr_net *a = node_start(&cl, 0, NULL);
	static uint8_t frame[64 * 1024];
	memset(frame, 'q', sizeof(frame));
	for (int round = 0; round < 3; round++) {
		/* Frames were lost with the last connection: queue more. */
		for (int i = 0; i < 8; i++)
			CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, frame, sizeof(frame)), 0);
		int fd = accept(lfd, NULL, NULL);
		CHECK(fd >= 0);
		if (fd < 0)
			break;
		uint8_t buf[256];
		size_t want = make_hello(buf, 'T', 1, CLUSTER), got = 0;
		while (got < want) {
			ssize_t r = read(fd, buf + got, want - got);
			if (r <= 0)
				break;
			got += (size_t)r;
		}
		CHECK_EQ_INT(got, want);
		/* Round 0 answers as the wrong node: the dialer refuses it. */
		size_t n = make_hello(buf, 0, round == 0 ? FAKE_PEER : 2, CLUSTER);
		struct linger lg = {1, 0};
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		raw_write(fd, buf, n);
		close(fd); /* RST right behind the HELLO */
	}
	close(lfd);
	sleep_ms(100);
	CHECK_EQ_INT(log_count_since(mark, "answered as node 9", "node 2 at 127.0.0.1:", 1000), 1);
	/* Still alive, and the real node 2 gets what is sent now. */
	node_start(&cl, 1, NULL);
	int64_t end = now_ms() + 5000;
	while (node_wait(&cl.nodes[1], 1, 100) == 0 && now_ms() < end)
		(void)!tr_send(a, 2, T_ONEWAY, 0, "alive", 5);
	CHECK(node_wait(&cl.nodes[1], 1, 3000) >= 1);
	cluster_free(&cl);
}

static void test_unauthenticated_connections_are_capped(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	cl.tune.max_unauthenticated = 3;
	struct tr_net *a = node_start(&cl, 0, NULL);
	node_start(&cl, 1, NULL);
	int fds[3];
	for (int i = 0; i < 3; i++)
		fds[i] = raw_connect(cl.nodes[1].port);
	sleep_ms(100);
	off_t mark = log_mark();
	int extra = raw_connect(cl.nodes[1].port);
	CHECK(raw_closed(extra, 3000));
	close(extra);
	CHECK_EQ_INT(log_count_since(mark, "already wait for their HELLO", NULL, 2000), 1);
	for (int i = 0; i < 3; i++)
		close(fds[i]);
	sleep_ms(100);
	check_echo(a, 2, "served");
	cluster_free(&cl);
}

static void test_peer_down_fails_fast_then_recovers(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	cl.tune.down_after_ms = 300;
	cl.tune.backoff_max_ms = 100;
	struct tr_net *a = node_start(&cl, 0, NULL);
	off_t mark = log_mark();
	struct outcome o = OUTCOME_INIT;
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, "lost", 4), 0);
	CHECK_EQ_INT(tr_request(a, 2, T_ECHO, 0, "x", 1, 10000, on_response, &o, NULL), 0);
	CHECK_EQ_INT(outcome_wait(&o, 5000), -EHOSTUNREACH);
	CHECK_EQ_INT(log_count_since(mark, "unreachable for", "dropped 2 queued frames", 1000), 1);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, "x", 1), -EHOSTUNREACH);
	struct outcome o2 = OUTCOME_INIT;
	CHECK_EQ_INT(tr_request(a, 2, T_ECHO, 0, "x", 1, 1000, on_response, &o2, NULL),
	             -EHOSTUNREACH);
	/* It comes up: the background retry finds it and sends work again. */
	node_start(&cl, 1, NULL);
	int64_t end = now_ms() + 5000;
	int rc;
	while ((rc = tr_send(a, 2, T_ONEWAY, 0, "back", 4)) == -EHOSTUNREACH && now_ms() < end)
		sleep_ms(20);
	CHECK_EQ_INT(rc, 0);
	CHECK_EQ_INT(node_wait(&cl.nodes[1], 1, 3000), 1);
	CHECK(memcmp(cl.nodes[1].recs[0].head, "back", 4) == 0); /* the dropped ones stay dropped */
	CHECK_EQ_INT(log_count_since(mark, "reachable again", NULL, 1000), 1);
	CHECK_EQ_INT(o2.done, 0);
	cluster_free(&cl);
}

static void test_queue_bound(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	cl.tune.queue_max_bytes = 17u << 20;
	struct tr_net *a = node_start(&cl, 0, NULL);
	size_t n = 8u << 20;
	uint8_t *p = calloc(1, n);
	off_t mark = log_mark();
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, p, n), 0);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, p, n), 0);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, p, n), -ENOBUFS);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, p, n), -ENOBUFS);
	CHECK_EQ_INT(log_count_since(mark, "is full", NULL, 1000), 1); /* logged once */
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, "small", 5), 0);   /* still fits */
	/* The peer comes up: the queue drains, in order. */
	node_start(&cl, 1, NULL);
	CHECK_EQ_INT(node_wait(&cl.nodes[1], 3, 10000), 3);
	CHECK(cl.nodes[1].recs[0].len == n && cl.nodes[1].recs[1].len == n &&
	      cl.nodes[1].recs[2].len == 5);
	sleep_ms(50); /* the sender's write callbacks have run: nothing is charged */
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, p, n), 0);
	free(p);
	cluster_free(&cl);
}

static void on_call(struct tr_net *net, void *ctx, int status)
{
	int *seen = ctx;
	(void)net;
	*seen = status == 0 ? 1 : status;
}

static void test_stop_cancels_everything_outstanding(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	struct tr_net *a = node_start(&cl, 0, NULL);
	int ran = 0;
	CHECK_EQ_INT(tr_call(a, on_call, &ran), 0);
	struct outcome o = OUTCOME_INIT;
	CHECK_EQ_INT(tr_request(a, 2, T_ECHO, 0, "x", 1, 60000, on_response, &o, NULL), 0);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, "never", 5), 0);
	sleep_ms(100);
	CHECK_EQ_INT(ran, 1);
	CHECK_EQ_INT(tr_stop(a), 0);
	CHECK_EQ_INT(o.done, 1);
	CHECK_EQ_INT(o.status, -ECANCELED);
	CHECK_EQ_INT(tr_stop(a), 0);
	CHECK_EQ_INT(tr_send(a, 2, T_ONEWAY, 0, "x", 1), -ESHUTDOWN);
	CHECK_EQ_INT(tr_call(a, on_call, &ran), -ESHUTDOWN);
	CHECK_EQ_INT(tr_start(a), -ESHUTDOWN);
	cluster_free(&cl);

	/* Never started: queued work is cancelled at close, nothing leaks. */
	cluster_init(&cl, 2);
	struct tr_options opt = cl.tune;
	opt.node_id = 1;
	opt.cluster_id = CLUSTER;
	opt.listen = cl.nodes[0].addr;
	opt.peers = cl.table;
	opt.npeers = 3;
	opt.on_frame = on_frame;
	opt.ctx = &cl.nodes[0];
	struct tr_net *b = NULL;
	CHECK_EQ_INT(tr_open(&opt, &b), 0);
	struct outcome o2 = OUTCOME_INIT;
	int called = 0;
	CHECK_EQ_INT(tr_send(b, 2, T_ONEWAY, 0, "x", 1), 0);
	CHECK_EQ_INT(tr_request(b, 2, T_ECHO, 0, "x", 1, 1000, on_response, &o2, NULL), 0);
	CHECK_EQ_INT(tr_call(b, on_call, &called), 0);
	tr_close(b);
	CHECK_EQ_INT(o2.done, 1);
	CHECK_EQ_INT(o2.status, -ECANCELED);
	CHECK_EQ_INT(called, -ECANCELED);
	cluster_free(&cl);
}

static void test_bad_options(void)
{
	struct cluster cl;
	cluster_init(&cl, 2);
	struct tr_options o = {.node_id = 1, .cluster_id = CLUSTER, .listen = cl.nodes[0].addr,
	                       .peers = cl.table, .npeers = 3, .on_frame = on_frame};
	struct tr_net *net = NULL;
	struct tr_options b;
	b = o; b.node_id = 0;
	CHECK_EQ_INT(tr_open(&b, &net), -EINVAL);
	b = o; b.cluster_id = "two words";
	CHECK_EQ_INT(tr_open(&b, &net), -EINVAL);
	b = o; b.listen = "localhost:7070";
	CHECK_EQ_INT(tr_open(&b, &net), -EINVAL);
	b = o; b.on_frame = NULL;
	CHECK_EQ_INT(tr_open(&b, &net), -EINVAL);
	b = o; b.queue_max_bytes = 1000;
	CHECK_EQ_INT(tr_open(&b, &net), -EINVAL);
	struct tr_peer_addr dup[] = {{2, "127.0.0.1:1"}, {2, "127.0.0.1:2"}};
	b = o; b.peers = dup; b.npeers = 2;
	CHECK_EQ_INT(tr_open(&b, &net), -EINVAL);
	struct tr_peer_addr name[] = {{2, "node2:7070"}};
	b = o; b.peers = name; b.npeers = 1;
	CHECK_EQ_INT(tr_open(&b, &net), -EINVAL);
	/* The port is taken: the bind error comes out of tr_open. */
	CHECK_EQ_INT(tr_open(&o, &net), 0);
	struct tr_net *second = NULL;
	CHECK_EQ_INT(tr_open(&o, &second), -EADDRINUSE);
	tr_close(net);
	/* Port 0 picks one. */
	b = o; b.listen = "127.0.0.1:0";
	CHECK_EQ_INT(tr_open(&b, &net), 0);
	CHECK(tr_port(net) != 0);
	tr_close(net);
	cluster_free(&cl);
}

/* ---- raft streams ------------------------------------------------------------------------ */

static void raft_stream_closed(uv_handle_t *h)
{
	free(h);
}

static void raft_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct node *n = h->data;
	(void)suggested;
	*buf = uv_buf_init(n->raft_bytes + n->raft_nbytes,
	                   (unsigned)(sizeof(n->raft_bytes) - 1 - n->raft_nbytes));
}

static void raft_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct node *n = s->data;
	(void)buf;
	if (nread == 0)
		return;
	pthread_mutex_lock(&n->mu);
	if (nread > 0)
		n->raft_nbytes += (size_t)nread;
	else
		n->raft_eof = 1;
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
	if (nread < 0)
		uv_close((uv_handle_t *)s, raft_stream_closed);
}

/* What the raft glue does with an accepted stream: read it (here: until EOF). */
static void on_raft_stream(void *ctx, struct tr_net *net, uint16_t peer, uv_stream_t *stream)
{
	struct node *n = ctx;
	(void)net;
	pthread_mutex_lock(&n->mu);
	n->raft_accepted++;
	n->raft_peer = peer;
	pthread_mutex_unlock(&n->mu);
	stream->data = n;
	if (uv_read_start(stream, raft_alloc, raft_read) != 0)
		uv_close((uv_handle_t *)stream, raft_stream_closed);
}

struct dial_result {
	struct outcome o;          /* status of the dial */
	uv_write_t wreq;
	uv_buf_t buf;
	uint16_t peer;
	int cancel;                /* cancel right after starting */
};

static void dial_written(uv_write_t *req, int status)
{
	CHECK_EQ_INT(status, 0);
	uv_close((uv_handle_t *)req->handle, raft_stream_closed);
}

static void dial_done(void *ctx, uv_stream_t *stream, int status)
{
	struct dial_result *d = ctx;
	if (stream) {
		/* What libraft does next: write its own bytes on the stream. */
		d->buf = uv_buf_init("raft bytes", 10);
		if (uv_write(&d->wreq, stream, &d->buf, 1, dial_written) != 0)
			uv_close((uv_handle_t *)stream, raft_stream_closed);
	}
	on_response(&d->o, status, NULL);
}

static void start_dial(struct tr_net *net, void *ctx, int status)
{
	struct dial_result *d = ctx;
	struct tr_dial *h = NULL;
	if (status < 0) {
		on_response(&d->o, status, NULL);
		return;
	}
	int rc = tr_raft_connect(net, d->peer, dial_done, d, &h);
	if (rc < 0) {
		on_response(&d->o, rc, NULL);
		return;
	}
	if (d->cancel)
		tr_dial_cancel(h);
}

static void test_raft_streams_share_the_port(void)
{
	struct cluster cl;
	cluster_init(&cl, 3);
	node_start(&cl, 0, on_raft_stream);
	struct tr_net *b = node_start(&cl, 1, on_raft_stream);
	/* b dials a for raft: a's callback gets the stream, from node 2, and
	 * reads exactly the bytes b's "raft" wrote after the HELLO. */
	struct dial_result d = {.o = OUTCOME_INIT, .peer = 1};
	CHECK_EQ_INT(tr_call(b, start_dial, &d), 0);
	CHECK_EQ_INT(outcome_wait(&d.o, 5000), 0);
	struct node *na = &cl.nodes[0];
	struct timespec ts;
	deadline_in(&ts, 5000);
	pthread_mutex_lock(&na->mu);
	while (!na->raft_eof)
		if (pthread_cond_timedwait(&na->cv, &na->mu, &ts) != 0)
			break;
	pthread_mutex_unlock(&na->mu);
	CHECK_EQ_INT(na->raft_accepted, 1);
	CHECK_EQ_INT(na->raft_peer, 2);
	CHECK_EQ_INT(na->raft_nbytes, 10);
	CHECK(memcmp(na->raft_bytes, "raft bytes", 10) == 0);
	CHECK(na->raft_eof);
	/* A cancelled dial answers -ECANCELED once; a dial to a node that is
	 * not running fails with its connect error. */
	struct dial_result c = {.o = OUTCOME_INIT, .peer = 1, .cancel = 1};
	CHECK_EQ_INT(tr_call(b, start_dial, &c), 0);
	CHECK_EQ_INT(outcome_wait(&c.o, 5000), -ECANCELED);
	struct dial_result e = {.o = OUTCOME_INIT, .peer = 3};
	CHECK_EQ_INT(tr_call(b, start_dial, &e), 0);
	CHECK_EQ_INT(outcome_wait(&e.o, 5000), -ECONNREFUSED);
	struct dial_result u = {.o = OUTCOME_INIT, .peer = 44};
	CHECK_EQ_INT(tr_call(b, start_dial, &u), 0);
	CHECK_EQ_INT(outcome_wait(&u.o, 5000), -EINVAL);
	sleep_ms(50);
	CHECK_EQ_INT(c.o.done, 1);
	CHECK_EQ_INT(na->raft_accepted, 1);
	/* Frames still flow on the same port. */
	check_echo(b, 1, "topicfs too");
	cluster_free(&cl);
}

int main(void)
{
	snprintf(log_path, sizeof(log_path), "%s/transport.log", unit_tmpdir());
	if (tfs_log_open(log_path) < 0)
		return 1;
	tfs_log_set_level(TFS_LOG_INFO);
	const char *seed = getenv("TFS_TEST_SEED"); /* to replay a run */
	rng = seed ? strtoull(seed, NULL, 0) : rng ^ (uint64_t)time(NULL);
	if (!rng)
		rng = 1;
	fprintf(stderr, "test_transport: TFS_TEST_SEED=0x%016" PRIx64 "\n", rng);

	RUN(test_header_roundtrip_and_each_check);
	RUN(test_hello_codec);
	RUN(test_decoder_stream_any_chunking);
	RUN(test_parse_addr);
	RUN(test_fuzz_parser);
	RUN(test_two_nets_exchange_frames_both_ways);
	RUN(test_three_nets_all_pairs);
	RUN(test_request_response_error_and_refusal);
	RUN(test_request_times_out_while_peer_down_then_reconnects);
	RUN(test_thousand_frames_in_order_both_ways);
	RUN(test_large_frame_ok_oversize_refused);
	RUN(test_hostile_bytes_close_only_that_connection);
	RUN(test_peer_reset_mid_flush_is_not_fatal);
	RUN(test_unauthenticated_connections_are_capped);
	RUN(test_peer_down_fails_fast_then_recovers);
	RUN(test_queue_bound);
	RUN(test_stop_cancels_everything_outstanding);
	RUN(test_bad_options);
	RUN(test_raft_streams_share_the_port);
	return unit_report("test_transport");
}
