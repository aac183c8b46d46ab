/*
 * group_remote.c - consumer groups across the nodes of a cluster (issue 4):
 * one coordinator per group (the metadata's meta_group.coordinator), members
 * on any node.
 *
 * Objects:
 *
 *   struct grm     one per node in cluster mode, hung on groups.c's
 *                  coordinator (grm_open .. grm_close). Two threads:
 *     worker       serves the group requests of other nodes, reconciles the
 *                  group registry with the metadata after every change, and
 *                  every 100 ms submits coalesced GROUP_COMMITs and drops
 *                  proxies of dead nodes. It never waits on the network.
 *     waker        calls the wakers of this node's stubs (fs's cursor wakers
 *                  may read, and a read may be a request: never on the loop
 *                  thread or the worker).
 *   struct grm_stub   behind every member fs opens in cluster mode (groups.c's
 *                  front rep_member): LOCAL when this node runs the group (a
 *                  real member, `inner`), REMOTE when another node does (a
 *                  proxy there), NONE before joining or after a move.
 *   struct proxy   on the coordinator: a real member of the group standing
 *                  for stub `stub` of node `node` (incarnation `incarnation`);
 *                  its waker sends a WAKE frame to that node.
 *
 *   member node                               coordinator
 *   fs ─rep_member_*─> front ─> stub ──JOIN/TAKE/READY/COMMIT/REWIND/LEAVE──>
 *        worker: proxy (a real member) ─> groups.c as on one node
 *   stub's waker <─waker thread <─WAKE (loop) <──── proxy's waker (tr_send)
 *
 * Frames (all little-endian; every payload starts with u8 GRM_VERSION):
 *
 *   request    | 8 incarnation | 8 topic id | 2+n group | 8 stub id (0 for
 *              | OFFSETS, RESET, MEMBERS, non-zero for the others) | body:
 *     JOIN, REWIND, OFFSETS, MEMBERS: none
 *     TAKE     | 4 size (1..GRM_TAKE_MAX) | 4 max records | 1 sep | positions
 *     READY, COMMIT: positions      LEAVE: | 1 commit (0/1) | positions
 *     RESET    | 1 how (enum rep_reset) | 8 partition (>= -1) | 8 value
 *   positions  | 1 resync (0/1) | 4 n (0 unless resync; <= GRM_MAX_POS) |
 *              | n x (4 partition, strictly increasing | 8 offset >= 0)
 *   responses (errors are transport error responses with the code):
 *     JOIN, COMMIT, REWIND, LEAVE, RESET: | version |
 *     TAKE     | 4 rc (1, 0, -EMSGSIZE) | 4 partition | 4 records | 8 bytes |
 *              | 8 first | 8 next | 8 need | bytes of records
 *     READY, MEMBERS: | 4 value |      OFFSETS: | 4 n | n x (4, 8, 8, 8) |
 *   WAKE (one-way)  | 4 n (1..GRM_MAX_WAKE) | n x 8 stub id (non-zero) |
 *   HELLO (one-way) | 8 incarnation (non-zero) |
 *
 * Invariants:
 *  1. Nothing taken is lost. A stub remembers, per partition, the position
 *     after the records it RECEIVED since its last commit (`known`). A
 *     COMMIT (and a LEAVE with commit) carries them and the proxy first
 *     moves back to them (rep_member_resync), so records of a take whose
 *     response was lost are never committed. After any failed request the
 *     next TAKE/READY carries them too (resync), so the proxy never serves
 *     past records the stub did not get.
 *  2. A proxy is (node, incarnation, stub id): a JOIN replaces the proxy of
 *     the same stub, a request from a newer incarnation of a node (or its
 *     HELLO) drops the proxies of the older ones, a node that is not alive
 *     loses its proxies (without commit: their partitions go to live
 *     members). Requests for a proxy that does not exist, or for a group
 *     this node does not run, are answered -ESTALE: the stub joins again
 *     (what it took and had not committed is delivered again). A stub whose
 *     JOIN went unanswered (the proxy may exist) sends a LEAVE for it when
 *     it closes without having joined since.
 *  3. The worker and the loop thread never wait on the network; stub calls
 *     (FUSE threads, the waker thread) wait at most the request timeout.
 *  4. Proxies are touched by the worker only; stubs by their own calls
 *     (s->mu), the waker thread (under smu) and grm_close.
 */
#include "group_remote.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../logstore/log.h"

#define TICK_MS 100          /* commit coalescing */
#define ALIVE_CHECK_MS 500   /* proxies of dead nodes */
#define JOIN_RETRY_MS 50     /* a coordinator not running the group (yet) */

/* ---- the cluster core, or a test's fakes ------------------------------------ */

static struct cluster *core_cluster_of(struct rep *r)
{
	return rep_cluster(r);
}

static unsigned core_timeout(const struct cluster *c)
{
	return cluster_opts(c)->request_timeout_ms;
}

static const struct grm_io core_io = {
	.cluster_of = core_cluster_of,
	.net = cluster_net,
	.node_id = cluster_node_id,
	.node_alive = cluster_node_alive,
	.request_timeout_ms = core_timeout,
	.submit = cluster_submit,
	.propose = cluster_propose,
	.read = cluster_read,
};

static const struct grm_io *io = &core_io;

void grm_set_io(const struct grm_io *fake)
{
	io = fake ? fake : &core_io;
}

struct cluster *grm_cluster_of(struct rep *r)
{
	return io->cluster_of(r);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}


/* ---- codec ------------------------------------------------------------------ */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	int err;
};

static uint8_t *w_room(struct wbuf *w, size_t n)
{
	if (w->err)
		return NULL;
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 64;
		while (cap < w->len + n)
			cap *= 2;
		uint8_t *p = realloc(w->p, cap);
		if (!p) {
			w->err = -ENOMEM;
			return NULL;
		}
		w->p = p;
		w->cap = cap;
	}
	uint8_t *at = w->p + w->len;
	w->len += n;
	return at;
}

static void w_le(struct wbuf *w, uint64_t v, int n)
{
	uint8_t *p = w_room(w, (size_t)n);
	for (int i = 0; p && i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void w_u8(struct wbuf *w, uint8_t v) { w_le(w, v, 1); }
static void w_u16(struct wbuf *w, uint16_t v) { w_le(w, v, 2); }
static void w_u32(struct wbuf *w, uint32_t v) { w_le(w, v, 4); }
static void w_u64(struct wbuf *w, uint64_t v) { w_le(w, v, 8); }

static void w_bytes(struct wbuf *w, const void *b, size_t n)
{
	uint8_t *p = w_room(w, n);
	if (p && n)
		memcpy(p, b, n);
}

/* Hands the buffer out (0) or frees it (its error). */
static int w_done(struct wbuf *w, uint8_t **out, size_t *len)
{
	if (w->err) {
		free(w->p);
		return w->err;
	}
	*out = w->p;
	*len = w->len;
	return 0;
}

struct rbuf {
	const uint8_t *p;
	size_t len, at;
	int bad;
};

static uint64_t r_le(struct rbuf *r, int n)
{
	if (r->bad || r->len - r->at < (size_t)n) {
		r->bad = 1;
		return 0;
	}
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)r->p[r->at + i] << (8 * i);
	r->at += (size_t)n;
	return v;
}

static uint8_t r_u8(struct rbuf *r) { return (uint8_t)r_le(r, 1); }
static uint16_t r_u16(struct rbuf *r) { return (uint16_t)r_le(r, 2); }
static uint32_t r_u32(struct rbuf *r) { return (uint32_t)r_le(r, 4); }
static uint64_t r_u64(struct rbuf *r) { return r_le(r, 8); }

/* The version byte, first of every payload. */
static void r_version(struct rbuf *r)
{
	if (r_u8(r) != GRM_VERSION)
		r->bad = 1;
}

/* REP_EPROTO unless every byte was consumed and every check held. */
static int r_end(const struct rbuf *r)
{
	return r->bad || r->at != r->len ? REP_EPROTO : 0;
}

static int is_member_type(uint16_t t)
{
	return t == GRM_JOIN || t == GRM_TAKE || t == GRM_READY || t == GRM_COMMIT ||
	       t == GRM_REWIND || t == GRM_LEAVE || t == GRM_SAVE;
}

static int has_positions(uint16_t t)
{
	return t == GRM_TAKE || t == GRM_READY || t == GRM_COMMIT || t == GRM_LEAVE ||
	       t == GRM_SAVE;
}

static int is_request_type(uint16_t t)
{
	return is_member_type(t) || t == GRM_OFFSETS || t == GRM_RESET || t == GRM_MEMBERS;
}

int grm_req_encode(const struct grm_req *q, uint8_t **out, size_t *len)
{
	size_t nl = strnlen(q->group, sizeof(q->group));
	if (!is_request_type(q->type) || nl == sizeof(q->group) || !rep_name_valid(q->group) ||
	    (is_member_type(q->type) != (q->stub != 0)) || q->npos > GRM_MAX_POS ||
	    (!q->resync && q->npos))
		return -EINVAL;
	struct wbuf w = {0};
	w_u8(&w, GRM_VERSION);
	w_u64(&w, q->incarnation);
	w_u64(&w, q->topic_id);
	w_u16(&w, (uint16_t)nl);
	w_bytes(&w, q->group, nl);
	w_u64(&w, q->stub);
	switch (q->type) {
	case GRM_TAKE:
		if (q->size == 0 || q->size > GRM_TAKE_MAX)
			goto bad;
		w_u32(&w, q->size);
		w_u32(&w, q->max_records);
		w_u8(&w, q->sep);
		break;
	case GRM_LEAVE:
		w_u8(&w, q->commit ? 1 : 0);
		break;
	case GRM_RESET:
		if (q->how > REP_RESET_TIME || q->partition < -1)
			goto bad;
		w_u8(&w, q->how);
		w_u64(&w, (uint64_t)q->partition);
		w_u64(&w, (uint64_t)q->value);
		break;
	default:
		break;
	}
	if (has_positions(q->type)) {
		w_u8(&w, q->resync ? 1 : 0);
		w_u32(&w, q->npos);
		for (uint32_t i = 0; i < q->npos; i++) {
			if (q->pos[i].offset < 0 || (i && q->pos[i].partition <= q->pos[i - 1].partition))
				goto bad;
			w_u32(&w, q->pos[i].partition);
			w_u64(&w, (uint64_t)q->pos[i].offset);
		}
	}
	return w_done(&w, out, len);
bad:
	free(w.p);
	return -EINVAL;
}

int grm_req_decode(uint16_t type, const uint8_t *buf, size_t len, struct grm_req *q)
{
	struct rbuf r = {.p = buf, .len = len};
	memset(q, 0, sizeof(*q));
	if (!is_request_type(type))
		return REP_EPROTO;
	q->type = type;
	r_version(&r);
	q->incarnation = r_u64(&r);
	q->topic_id = r_u64(&r);
	uint16_t nl = r_u16(&r);
	if (r.bad || nl == 0 || nl > REP_NAME_MAX || len - r.at < nl)
		return REP_EPROTO;
	memcpy(q->group, buf + r.at, nl);
	q->group[nl] = 0;
	r.at += nl;
	if (strlen(q->group) != nl || !rep_name_valid(q->group))
		return REP_EPROTO;
	q->stub = r_u64(&r);
	if (q->incarnation == 0 || is_member_type(type) != (q->stub != 0))
		return REP_EPROTO;
	switch (type) {
	case GRM_TAKE:
		q->size = r_u32(&r);
		q->max_records = r_u32(&r);
		q->sep = r_u8(&r);
		if (q->size == 0 || q->size > GRM_TAKE_MAX)
			return REP_EPROTO;
		break;
	case GRM_LEAVE:
		q->commit = r_u8(&r);
		if (q->commit > 1)
			return REP_EPROTO;
		break;
	case GRM_RESET:
		q->how = r_u8(&r);
		q->partition = (int64_t)r_u64(&r);
		q->value = (int64_t)r_u64(&r);
		if (q->how > REP_RESET_TIME || q->partition < -1)
			return REP_EPROTO;
		break;
	default:
		break;
	}
	if (has_positions(type)) {
		q->resync = r_u8(&r);
		q->npos = r_u32(&r);
		if (r.bad || q->resync > 1 || q->npos > GRM_MAX_POS || (!q->resync && q->npos) ||
		    (len - r.at) / 12 < q->npos)
			return REP_EPROTO;
		if (q->npos && !(q->pos = malloc(q->npos * sizeof(*q->pos))))
			return -ENOMEM;
		for (uint32_t i = 0; i < q->npos; i++) {
			q->pos[i].partition = r_u32(&r);
			q->pos[i].offset = (int64_t)r_u64(&r);
			if (q->pos[i].offset < 0 ||
			    (i && q->pos[i].partition <= q->pos[i - 1].partition))
				r.bad = 1;
		}
	}
	int rc = r_end(&r);
	if (rc < 0)
		grm_req_free(q);
	return rc;
}

void grm_req_free(struct grm_req *q)
{
	free(q->pos);
	q->pos = NULL;
	q->npos = 0;
}

int grm_take_encode(const struct grm_take *t, uint8_t **out, size_t *len)
{
	const struct rep_bulk *b = &t->bulk;
	if (t->rc == 1 ? (b->records == 0 || b->bytes == 0 || b->bytes > GRM_TAKE_MAX ||
	                  !t->data || b->first_offset < 0 || b->next_offset <= b->first_offset)
	               : t->rc == -EMSGSIZE ? b->need == 0 : t->rc != 0)
		return -EINVAL;
	size_t bytes = t->rc == 1 ? b->bytes : 0;
	struct wbuf w = {0};
	if (!w_room(&w, 45 + bytes))
		return w.err;
	w.len = 0;
	w_u8(&w, GRM_VERSION);
	w_u32(&w, (uint32_t)t->rc);
	w_u32(&w, t->rc == 1 ? b->partition : 0);
	w_u32(&w, t->rc == 1 ? b->records : 0);
	w_u64(&w, bytes);
	w_u64(&w, (uint64_t)(t->rc == 1 ? b->first_offset : 0));
	w_u64(&w, (uint64_t)(t->rc == 1 ? b->next_offset : 0));
	w_u64(&w, t->rc == -EMSGSIZE ? b->need : 0);
	w_bytes(&w, t->data, bytes);
	return w_done(&w, out, len);
}

int grm_take_decode(const uint8_t *buf, size_t len, struct grm_take *t)
{
	struct rbuf r = {.p = buf, .len = len};
	memset(t, 0, sizeof(*t));
	r_version(&r);
	t->rc = (int32_t)r_u32(&r);
	struct rep_bulk *b = &t->bulk;
	b->partition = r_u32(&r);
	b->records = r_u32(&r);
	uint64_t bytes = r_u64(&r);
	b->first_offset = (int64_t)r_u64(&r);
	b->next_offset = (int64_t)r_u64(&r);
	uint64_t need = r_u64(&r);
	if (r.bad || bytes != len - r.at)
		return REP_EPROTO;
	b->bytes = (size_t)bytes;
	b->need = (size_t)need;
	t->data = buf + r.at;
	r.at = len;
	if (t->rc == 1) {
		if (b->records == 0 || bytes == 0 || bytes > GRM_TAKE_MAX || b->first_offset < 0 ||
		    b->next_offset <= b->first_offset || need)
			return REP_EPROTO;
	} else if (t->rc == 0 || t->rc == -EMSGSIZE) {
		if (b->partition || b->records || bytes || b->first_offset || b->next_offset ||
		    (t->rc == 0) != (need == 0))
			return REP_EPROTO;
	} else {
		return REP_EPROTO;
	}
	return r_end(&r);
}

int grm_u32_encode(uint32_t v, uint8_t **out, size_t *len)
{
	struct wbuf w = {0};
	w_u8(&w, GRM_VERSION);
	w_u32(&w, v);
	return w_done(&w, out, len);
}

int grm_u32_decode(const uint8_t *buf, size_t len, uint32_t *v)
{
	struct rbuf r = {.p = buf, .len = len};
	r_version(&r);
	*v = r_u32(&r);
	return r_end(&r);
}

/* An empty response: the version byte. */
static int empty_decode(const uint8_t *buf, size_t len)
{
	struct rbuf r = {.p = buf, .len = len};
	r_version(&r);
	return r_end(&r);
}

int grm_offsets_encode(const struct rep_group_offset *rows, uint32_t n, uint8_t **out,
                       size_t *len)
{
	if (n > META_MAX_PARTITIONS)
		return -EINVAL;
	struct wbuf w = {0};
	w_u8(&w, GRM_VERSION);
	w_u32(&w, n);
	for (uint32_t i = 0; i < n; i++) {
		w_u32(&w, rows[i].partition);
		w_u64(&w, (uint64_t)rows[i].committed);
		w_u64(&w, (uint64_t)rows[i].end);
		w_u64(&w, (uint64_t)rows[i].lag);
	}
	return w_done(&w, out, len);
}

int grm_offsets_decode(const uint8_t *buf, size_t len, struct rep_group_offset **rows,
                       uint32_t *n)
{
	struct rbuf r = {.p = buf, .len = len};
	*rows = NULL;
	*n = 0;
	r_version(&r);
	uint32_t k = r_u32(&r);
	if (r.bad || k > META_MAX_PARTITIONS || (len - r.at) != (size_t)k * 28)
		return REP_EPROTO;
	struct rep_group_offset *o = malloc((k ? k : 1) * sizeof(*o));
	if (!o)
		return -ENOMEM;
	for (uint32_t i = 0; i < k; i++) {
		o[i].partition = r_u32(&r);
		o[i].committed = (int64_t)r_u64(&r);
		o[i].end = (int64_t)r_u64(&r);
		o[i].lag = (int64_t)r_u64(&r);
		if (o[i].committed < 0 || o[i].end < 0 || o[i].lag < 0 ||
		    (i && o[i].partition <= o[i - 1].partition))
			r.bad = 1;
	}
	int rc = r_end(&r);
	if (rc < 0) {
		free(o);
		return rc;
	}
	*rows = o;
	*n = k;
	return 0;
}

int grm_wake_encode(const uint64_t *stubs, uint32_t n, uint8_t **out, size_t *len)
{
	if (n == 0 || n > GRM_MAX_WAKE)
		return -EINVAL;
	struct wbuf w = {0};
	w_u8(&w, GRM_VERSION);
	w_u32(&w, n);
	for (uint32_t i = 0; i < n; i++) {
		if (!stubs[i]) {
			free(w.p);
			return -EINVAL;
		}
		w_u64(&w, stubs[i]);
	}
	return w_done(&w, out, len);
}

int grm_wake_decode(const uint8_t *buf, size_t len, uint64_t **stubs, uint32_t *n)
{
	struct rbuf r = {.p = buf, .len = len};
	*stubs = NULL;
	*n = 0;
	r_version(&r);
	uint32_t k = r_u32(&r);
	if (r.bad || k == 0 || k > GRM_MAX_WAKE || len - r.at != (size_t)k * 8)
		return REP_EPROTO;
	uint64_t *s = malloc(k * sizeof(*s));
	if (!s)
		return -ENOMEM;
	for (uint32_t i = 0; i < k; i++)
		if ((s[i] = r_u64(&r)) == 0)
			r.bad = 1;
	int rc = r_end(&r);
	if (rc < 0) {
		free(s);
		return rc;
	}
	*stubs = s;
	*n = k;
	return 0;
}

int grm_hello_encode(uint64_t incarnation, uint8_t **out, size_t *len)
{
	if (!incarnation)
		return -EINVAL;
	struct wbuf w = {0};
	w_u8(&w, GRM_VERSION);
	w_u64(&w, incarnation);
	return w_done(&w, out, len);
}

int grm_hello_decode(const uint8_t *buf, size_t len, uint64_t *incarnation)
{
	struct rbuf r = {.p = buf, .len = len};
	r_version(&r);
	*incarnation = r_u64(&r);
	if (*incarnation == 0)
		r.bad = 1;
	return r_end(&r);
}

/* ---- the node's state ------------------------------------------------------- */

struct job {
	struct job *next;
	uint16_t peer;
	struct tr_origin origin;
	struct grm_req q;           /* type GRM_HELLO: only incarnation is set */
};

struct proxy {
	struct grm *gr;
	uint16_t node;
	uint64_t incarnation;
	uint64_t stub;
	struct rep_group *g;        /* a reference */
	struct rep_member *m;       /* the real member */
};

struct wake {
	uint64_t stub;
	int64_t due_ms;
};

enum stub_mode { S_NONE, S_LOCAL, S_REMOTE };

struct grm_stub {
	struct grm *gr;
	uint64_t id;
	struct rep_member *front;   /* groups.c's member fs holds */
	struct rep_group *g;        /* the front's reference */
	void (*waker)(void *ctx);
	void *ctx;
	int busy;                   /* waker calls running (under gr->smu) */
	pthread_mutex_t mu;         /* serialises the member's calls; guards below */
	enum stub_mode mode;
	struct rep_member *inner;   /* S_LOCAL */
	uint64_t epoch;             /* S_LOCAL: the group's run epoch at join */
	uint16_t coord;             /* S_REMOTE: the coordinator joined */
	uint16_t unsure;            /* a JOIN went there unanswered: it may hold a proxy */
	int resync;                 /* a request failed: send `known` with the next */
	struct grm_pos *known;      /* sorted by partition (invariant 1) */
	uint32_t nknown, cknown;
	struct grm_pos *done;       /* S_REMOTE: positions committed, for close */
	uint32_t ndone, cdone;
};

struct grm {
	struct rep_groups *c;
	struct rep *rep;
	struct cluster *cl;
	struct tr_net *net;
	uint16_t self;
	uint64_t incarnation;
	unsigned timeout_ms;

	pthread_mutex_t mu;         /* the worker's queue and generations */
	pthread_cond_t cv;          /* work for the worker; done_gen moved */
	struct job *head, *tail;
	uint64_t meta_gen, done_gen;
	int kicked, stop, retry;
	pthread_t worker;
	int worker_started;

	struct proxy **proxies;     /* worker only (invariant 4) */
	size_t nproxies;
	int hello_sent;

	pthread_mutex_t smu;        /* stubs, the wake queue */
	pthread_cond_t scv;         /* wake queue grew; a stub's busy dropped */
	struct grm_stub **stubs;
	size_t nstubs;
	uint64_t next_stub;
	struct wake *wq;
	size_t nwq, cwq;
	int wstop;
	pthread_t waker;
	int waker_started;
};

uint16_t grm_self(const struct grm *gr)
{
	return gr->self;
}

static uint64_t random_u64(void)
{
	uint64_t v = 0;
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
			v = 0;
		close(fd);
	}
	if (!v) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		v = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 16;
	}
	return v ? v : 1;
}

/* ---- the waker thread ------------------------------------------------------- */

/* Queues a call of stub id's waker after delay_ms (any thread). */
static void wake_post(struct grm *gr, uint64_t id, unsigned delay_ms)
{
	int64_t due = mono_ms() + delay_ms;
	pthread_mutex_lock(&gr->smu);
	for (size_t i = 0; i < gr->nwq; i++) {
		if (gr->wq[i].stub == id) {
			if (due < gr->wq[i].due_ms)
				gr->wq[i].due_ms = due;
			goto out;
		}
	}
	if (gr->nwq == gr->cwq) {
		size_t cap = gr->cwq ? 2 * gr->cwq : 16;
		struct wake *w = realloc(gr->wq, cap * sizeof(*w));
		if (!w) {
			tfs_error("groups: out of memory queueing a wakeup; a reader may wait for "
			          "its next event");
			goto out;
		}
		gr->wq = w;
		gr->cwq = cap;
	}
	gr->wq[gr->nwq++] = (struct wake){.stub = id, .due_ms = due};
	pthread_cond_broadcast(&gr->scv);
out:
	pthread_mutex_unlock(&gr->smu);
}

static struct grm_stub *stub_find_locked(struct grm *gr, uint64_t id)
{
	for (size_t i = 0; i < gr->nstubs; i++)
		if (gr->stubs[i]->id == id)
			return gr->stubs[i];
	return NULL;
}

static void *waker_main(void *arg)
{
	struct grm *gr = arg;
	pthread_mutex_lock(&gr->smu);
	while (!gr->wstop) {
		if (gr->nwq == 0) {
			pthread_cond_wait(&gr->scv, &gr->smu);
			continue;
		}
		size_t first = 0;
		for (size_t i = 1; i < gr->nwq; i++)
			if (gr->wq[i].due_ms < gr->wq[first].due_ms)
				first = i;
		int64_t wait = gr->wq[first].due_ms - mono_ms();
		if (wait > 0) {
			struct timespec ts;
			wire_deadline(&ts, wait);
			pthread_cond_timedwait(&gr->scv, &gr->smu, &ts);
			continue;
		}
		uint64_t id = gr->wq[first].stub;
		gr->wq[first] = gr->wq[--gr->nwq];
		struct grm_stub *s = stub_find_locked(gr, id);
		if (!s || !s->waker)
			continue;
		s->busy++;
		pthread_mutex_unlock(&gr->smu);
		s->waker(s->ctx);
		pthread_mutex_lock(&gr->smu);
		if (--s->busy == 0)
			pthread_cond_broadcast(&gr->scv);
	}
	pthread_mutex_unlock(&gr->smu);
	return NULL;
}

/* ---- requests to another node (stub side: FUSE and waker threads) ----------- */

struct call {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done, status;
	uint8_t *resp;
	uint32_t len;
};

static void call_done(void *ctx, int status, const struct tr_frame *f)
{
	struct call *k = ctx;
	uint8_t *copy = NULL;
	if (status == 0) {
		copy = malloc(f->len ? f->len : 1);
		if (copy)
			memcpy(copy, f->payload, f->len);
		else
			status = -ENOMEM;
	}
	pthread_mutex_lock(&k->mu);
	k->status = status;
	k->resp = copy;
	k->len = status == 0 ? f->len : 0;
	k->done = 1;
	pthread_cond_signal(&k->cv);
	pthread_mutex_unlock(&k->mu);
}

/* Sends q to node and waits for the answer (the transport bounds the wait by
 * the request timeout): 0 and the response payload (*resp, malloc'ed), or
 * -errno (the coordinator's code, or the transport's). */
static int call(struct grm *gr, uint16_t node, const struct grm_req *q, uint8_t **resp,
                uint32_t *len)
{
	uint8_t *buf;
	size_t blen;
	*resp = NULL;
	*len = 0;
	int rc = grm_req_encode(q, &buf, &blen);
	if (rc < 0)
		return rc;
	struct call k = {.done = 0};
	pthread_mutex_init(&k.mu, NULL);
	pthread_cond_init(&k.cv, NULL);
	rc = tr_request(gr->net, node, q->type, 0, buf, blen, gr->timeout_ms, call_done, &k, NULL);
	free(buf);
	if (rc == 0) {
		pthread_mutex_lock(&k.mu);
		while (!k.done)
			pthread_cond_wait(&k.cv, &k.mu);
		pthread_mutex_unlock(&k.mu);
		rc = k.status;
		*resp = k.resp;
		*len = k.len;
	}
	pthread_cond_destroy(&k.cv);
	pthread_mutex_destroy(&k.mu);
	/* the coordinator's node does not answer: the same errno as every
	 * other operation that needs a node it cannot reach */
	return rc == -EHOSTUNREACH ? -ENOTCONN : rc;
}

/* A request without body to the coordinator of g; 0 and its response. */
static void group_req(struct grm *gr, struct rep_group *g, uint16_t type, struct grm_req *q)
{
	memset(q, 0, sizeof(*q));
	q->type = type;
	q->incarnation = gr->incarnation;
	q->topic_id = rep_group_topic_id(g);
	snprintf(q->group, sizeof(q->group), "%s", rep_group_name(g));
}

/* The node that coordinates g now, or -ESTALE if that is this node (run it
 * locally) or nobody. */
static int remote_coord(struct grm *gr, struct rep_group *g, uint16_t *node)
{
	int real;
	uint64_t ep;
	rep_group_coord(g, node, &real, &ep);
	return *node == 0 || *node == gr->self ? -ESTALE : 0;
}

int grm_group_members(struct grm *gr, struct rep_group *g, uint32_t *n)
{
	struct grm_req q;
	uint16_t node;
	uint8_t *resp;
	uint32_t len;
	int rc = remote_coord(gr, g, &node);
	if (rc < 0)
		return rc;
	group_req(gr, g, GRM_MEMBERS, &q);
	if ((rc = call(gr, node, &q, &resp, &len)) == 0)
		rc = grm_u32_decode(resp, len, n);
	free(resp);
	return rc;
}

int grm_group_offsets(struct grm *gr, struct rep_group *g, struct rep_group_offset **rows,
                      uint32_t *n)
{
	struct grm_req q;
	uint16_t node;
	uint8_t *resp;
	uint32_t len;
	int rc = remote_coord(gr, g, &node);
	if (rc < 0)
		return rc;
	group_req(gr, g, GRM_OFFSETS, &q);
	if ((rc = call(gr, node, &q, &resp, &len)) == 0)
		rc = grm_offsets_decode(resp, len, rows, n);
	free(resp);
	return rc;
}

int grm_group_reset(struct grm *gr, struct rep_group *g, enum rep_reset how,
                    int64_t partition, int64_t value)
{
	struct grm_req q;
	uint16_t node;
	uint8_t *resp;
	uint32_t len;
	int rc = remote_coord(gr, g, &node);
	if (rc < 0)
		return rc;
	group_req(gr, g, GRM_RESET, &q);
	q.how = (uint8_t)how;
	q.partition = partition < 0 ? -1 : partition;
	q.value = value;
	if ((rc = call(gr, node, &q, &resp, &len)) == 0)
		rc = empty_decode(resp, len);
	free(resp);
	return rc;
}

/* ---- stubs -------------------------------------------------------------------- */

static void known_clear(struct grm_stub *s)
{
	s->nknown = 0;
	s->resync = 0;
}

/* Sets partition p's position in the sorted array *a (n of cap) to next. */
static int pos_set(struct grm_pos **a, uint32_t *n, uint32_t *cap, uint32_t p, int64_t next)
{
	uint32_t i = 0;
	while (i < *n && (*a)[i].partition < p)
		i++;
	if (i < *n && (*a)[i].partition == p) {
		(*a)[i].offset = next;
		return 0;
	}
	if (*n == *cap) {
		uint32_t c = *cap ? 2 * *cap : 8;
		struct grm_pos *k = realloc(*a, c * sizeof(*k));
		if (!k)
			return -ENOMEM;
		*a = k;
		*cap = c;
	}
	memmove(&(*a)[i + 1], &(*a)[i], (*n - i) * sizeof(**a));
	(*a)[i] = (struct grm_pos){.partition = p, .offset = next};
	(*n)++;
	return 0;
}

/* Records that the stub received partition p's records up to next. */
static int known_set(struct grm_stub *s, uint32_t p, int64_t next)
{
	return pos_set(&s->known, &s->nknown, &s->cknown, p, next);
}

/* The coordinator committed what the stub knew: remembered for close
 * (stub_wait_saved). Out of memory only shortens that wait. */
static void known_committed(struct grm_stub *s)
{
	for (uint32_t i = 0; i < s->nknown; i++)
		if (pos_set(&s->done, &s->ndone, &s->cdone, s->known[i].partition,
		            s->known[i].offset) < 0)
			break;
	known_clear(s);
}

static void stub_req(struct grm_stub *s, uint16_t type, int positions, struct grm_req *q)
{
	group_req(s->gr, s->g, type, q);
	q->stub = s->id;
	if (positions) {
		q->resync = 1;
		q->npos = s->nknown;
		q->pos = s->known;
	}
}

/* The real member's waker (a LOCAL stub): through the waker thread. */
static void inner_waker(void *ctx)
{
	struct grm_stub *s = ctx;
	wake_post(s->gr, s->id, 0);
}

/* Drops a join that no longer holds: the inner member was evicted, or the
 * group moved. Caller holds s->mu. */
static void stub_check(struct grm_stub *s)
{
	uint16_t node;
	int real;
	uint64_t ep;
	rep_group_coord(s->g, &node, &real, &ep);
	if (s->mode == S_LOCAL && (rep_member_orphaned(s->inner) || node != s->gr->self ||
	                           !real || ep != s->epoch)) {
		rep_member_leave(s->inner, 0);
		s->inner = NULL;
		s->mode = S_NONE;
		known_clear(s);
	} else if (s->mode == S_REMOTE && node != s->coord) {
		s->mode = S_NONE; /* the old coordinator evicts its proxy itself */
		known_clear(s);
	}
}

/* Joins the group where it runs now, if not joined. Caller holds s->mu. */
static int stub_join(struct grm_stub *s)
{
	struct grm *gr = s->gr;
	int rc = 0;
	int64_t deadline = mono_ms() + gr->timeout_ms;
	for (;;) {
		stub_check(s);
		if (s->mode != S_NONE)
			return 0;
		if (rep_group_deleted(s->g))
			return -ENOENT;
		uint16_t node;
		int real;
		uint64_t ep;
		rep_group_coord(s->g, &node, &real, &ep);
		if (node == gr->self && real) {
			rc = rep_member_join_real(s->g, inner_waker, s, &s->inner);
			if (rc == 0) {
				s->mode = S_LOCAL;
				s->epoch = ep;
				known_clear(s);
				return 0;
			}
		} else if (node != 0 && node != gr->self) {
			struct grm_req q;
			uint8_t *resp;
			uint32_t len;
			stub_req(s, GRM_JOIN, 0, &q);
			rc = call(gr, node, &q, &resp, &len);
			if (rc == 0)
				rc = empty_decode(resp, len);
			free(resp);
			if (rc == 0) {
				s->mode = S_REMOTE;
				s->coord = node;
				s->unsure = 0;
				known_clear(s);
				return 0;
			}
			if (rc != -ESTALE)
				s->unsure = node; /* lost answer: the proxy may exist */
		} else {
			rc = -ESTALE; /* this node runs it once the worker has reconciled */
		}
		/* Not run anywhere yet, or its node is unreachable: the metadata
		 * may name another coordinator soon (its node died). */
		if (!grm_retry(gr, rc, deadline))
			break;
	}
	if (rc == -ESTALE)
		rc = -EAGAIN;
	tfs_warn("group %s: member cannot join its coordinator: %s", rep_group_name(s->g),
	         tfs_strerror(rc));
	return rc;
}

/* After a request to the coordinator failed with rc: -ESTALE (the proxy is
 * gone) joins again on the next try; anything else sends positions with the
 * next request (invariant 1). Returns 1 if it must join again. */
static int stub_failed(struct grm_stub *s, int rc)
{
	if (rc == -ESTALE) {
		s->mode = S_NONE;
		known_clear(s);
		return 1;
	}
	s->resync = 1;
	return 0;
}

int grm_stub_open(struct grm *gr, struct rep_member *front, struct rep_group *g,
                  void (*waker)(void *ctx), void *ctx, struct grm_stub **out)
{
	struct grm_stub *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->gr = gr;
	s->front = front;
	s->g = g;
	s->waker = waker;
	s->ctx = ctx;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_lock(&gr->smu);
	struct grm_stub **ss = realloc(gr->stubs, (gr->nstubs + 1) * sizeof(*ss));
	if (!ss) {
		pthread_mutex_unlock(&gr->smu);
		pthread_mutex_destroy(&s->mu);
		free(s);
		return -ENOMEM;
	}
	gr->stubs = ss;
	s->id = ++gr->next_stub;
	ss[gr->nstubs++] = s;
	pthread_mutex_unlock(&gr->smu);
	/* Join now so the assignment counts it; a coordinator that cannot be
	 * reached now is tried again at the first read. */
	pthread_mutex_lock(&s->mu);
	int rc = stub_join(s);
	pthread_mutex_unlock(&s->mu);
	if (rc == -ENOENT) {
		grm_stub_close(s, 0);
		return rc;
	}
	*out = s;
	return 0;
}

/* stub_wait_saved: whether the metadata holds offsets at least pos. */
struct saved_check {
	uint64_t topic_id;
	const char *group;
	const struct grm_pos *pos;
	uint32_t npos;
	int ok;
};

static void saved_read(void *ctx, const struct meta_state *st)
{
	struct saved_check *sc = ctx;
	sc->ok = 1; /* a group or topic that is gone has nothing to keep */
	for (uint32_t t = 0; t < st->ntopics; t++) {
		const struct meta_topic *tp = &st->topics[t];
		if (tp->id != sc->topic_id)
			continue;
		for (uint32_t k = 0; k < tp->ngroups; k++) {
			const struct meta_group *mg = &tp->groups[k];
			if (strcmp(mg->name, sc->group) != 0)
				continue;
			for (uint32_t i = 0; i < sc->npos && sc->ok; i++) {
				uint32_t p = sc->pos[i].partition;
				sc->ok = p >= mg->noffsets || mg->offsets[p] >= sc->pos[i].offset;
			}
			return;
		}
		return;
	}
}

/* A member's file is closed (commit rule: exactly once for a tool that
 * exits normally): waits, at most the request timeout, until this node's
 * copy of the metadata holds g's committed offsets at least pos, so the
 * coordinator's node dying right after the close cannot hand these records
 * out again. The coordinator was told to submit them at once. On time-out
 * the offsets may still land; if they do not, members get the records again
 * (at-least-once). */
static void stub_wait_saved(struct grm *gr, struct rep_group *g, const struct grm_pos *pos,
                            uint32_t npos)
{
	if (!npos)
		return;
	struct saved_check sc = {.topic_id = rep_group_topic_id(g), .group = rep_group_name(g),
	                         .pos = pos, .npos = npos};
	int64_t deadline = mono_ms() + gr->timeout_ms;
	for (;;) {
		pthread_mutex_lock(&gr->mu);
		uint64_t gen = gr->meta_gen;
		pthread_mutex_unlock(&gr->mu);
		io->read(gr->cl, saved_read, &sc);
		int64_t left = deadline - mono_ms();
		if (sc.ok)
			return;
		if (left <= 0)
			break;
		struct timespec ts;
		wire_deadline(&ts, left < 50 ? left : 50);
		pthread_mutex_lock(&gr->mu);
		while (!gr->stop && gr->meta_gen == gen &&
		       pthread_cond_timedwait(&gr->cv, &gr->mu, &ts) != ETIMEDOUT)
			;
		int stop = gr->stop;
		pthread_mutex_unlock(&gr->mu);
		if (stop)
			break;
	}
	tfs_warn("group %s: the quorum has not confirmed this member's commit within %u ms; "
	         "if it is lost, the group gets those records again", rep_group_name(g),
	         gr->timeout_ms);
}

void grm_stub_close(struct grm_stub *s, int commit)
{
	struct grm *gr = s->gr;
	pthread_mutex_lock(&s->mu);
	if (s->mode == S_LOCAL) {
		rep_member_leave(s->inner, commit);
	} else if (s->mode == S_REMOTE || s->unsure) {
		/* Joined, or a join whose answer was lost: a proxy left there would
		 * hold partitions no member reads. */
		uint16_t node = s->mode == S_REMOTE ? s->coord : s->unsure;
		struct grm_req q;
		uint8_t *resp;
		uint32_t len;
		stub_req(s, GRM_LEAVE, s->mode == S_REMOTE && commit, &q);
		q.commit = (uint8_t)(s->mode == S_REMOTE && commit);
		int rc = call(gr, node, &q, &resp, &len);
		free(resp);
		if (rc < 0 && rc != -ESTALE)
			tfs_warn("group %s: leave at node %u failed (%s); it drops the member when "
			         "it learns this node's fate", rep_group_name(s->g), node,
			         tfs_strerror(rc));
	}
	s->mode = S_NONE;
	s->inner = NULL;
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_lock(&gr->smu);
	for (size_t i = 0; i < gr->nstubs; i++) {
		if (gr->stubs[i] == s) {
			gr->stubs[i] = gr->stubs[--gr->nstubs];
			break;
		}
	}
	while (s->busy) /* its waker is running on the waker thread */
		pthread_cond_wait(&gr->scv, &gr->smu);
	pthread_mutex_unlock(&gr->smu);
	pthread_mutex_destroy(&s->mu);
	free(s->known);
	free(s->done);
	free(s);
}

int grm_stub_take_bulk(struct grm_stub *s, void *buf, size_t size, uint32_t max_records,
                       char sep, struct rep_bulk *out)
{
	int rc;
	int64_t deadline = grm_deadline(s->gr);
	*out = (struct rep_bulk){0};
	pthread_mutex_lock(&s->mu);
	for (;;) {
		if ((rc = stub_join(s)) < 0)
			break;
		if (s->mode == S_LOCAL) {
			rc = rep_member_take_bulk(s->inner, buf, size, max_records, sep, out);
			if (rc == 0 && rep_member_orphaned(s->inner) && mono_ms() < deadline)
				continue; /* evicted meanwhile: join where it runs now */
			break;
		}
		struct grm_req q;
		uint8_t *resp;
		uint32_t len;
		stub_req(s, GRM_TAKE, s->resync, &q);
		q.size = (uint32_t)(size > GRM_TAKE_MAX ? GRM_TAKE_MAX : size);
		q.max_records = max_records;
		q.sep = (uint8_t)sep;
		rc = call(s->gr, s->coord, &q, &resp, &len);
		if (rc < 0) {
			stub_failed(s, rc);
			if (grm_retry(s->gr, rc, deadline))
				continue; /* rejoined, or the group moves off a dead node */
			break;
		}
		struct grm_take t;
		rc = grm_take_decode(resp, len, &t);
		if (rc == 0 && t.rc == 1 && t.bulk.bytes > size)
			rc = REP_EPROTO;
		if (rc < 0) {
			free(resp);
			s->resync = 1;
			tfs_error("group %s: node %u answered a take with a malformed frame",
			          rep_group_name(s->g), s->coord);
			break;
		}
		s->resync = 0;
		rc = t.rc;
		*out = t.bulk;
		if (rc == 1) {
			memcpy(buf, t.data, t.bulk.bytes);
			if (known_set(s, t.bulk.partition, t.bulk.next_offset) < 0)
				s->resync = 1; /* cannot prove what it got: commit nothing more */
		} else if (rc == -EMSGSIZE && t.bulk.need > GRM_TAKE_MAX) {
			rc = -EFBIG; /* never fits in a frame */
		}
		free(resp);
		break;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int grm_stub_ready(struct grm_stub *s)
{
	int rc;
	int64_t deadline = grm_deadline(s->gr);
	pthread_mutex_lock(&s->mu);
	for (;;) {
		if ((rc = stub_join(s)) < 0)
			break;
		if (s->mode == S_LOCAL) {
			rc = rep_member_ready(s->inner);
			if (rc == 0 && rep_member_orphaned(s->inner) && mono_ms() < deadline)
				continue;
			break;
		}
		struct grm_req q;
		uint8_t *resp;
		uint32_t len, v = 0;
		stub_req(s, GRM_READY, s->resync, &q);
		rc = call(s->gr, s->coord, &q, &resp, &len);
		if (rc < 0) {
			stub_failed(s, rc);
			if (grm_retry(s->gr, rc, deadline))
				continue;
			break;
		}
		rc = grm_u32_decode(resp, len, &v);
		free(resp);
		if (rc == 0) {
			s->resync = 0;
			rc = v ? 1 : 0;
		}
		break;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* COMMIT or SAVE: the coordinator commits what the stub received. */
static int stub_commit(struct grm_stub *s, uint16_t type)
{
	int rc = 0;
	stub_check(s);
	if (s->mode == S_LOCAL) {
		rc = rep_member_commit(s->inner);
	} else if (s->mode == S_REMOTE && (s->nknown || s->resync ||
	                                   (type == GRM_SAVE && s->ndone))) {
		struct grm_req q;
		uint8_t *resp;
		uint32_t len;
		stub_req(s, type, 1, &q);
		rc = call(s->gr, s->coord, &q, &resp, &len);
		if (rc == 0)
			rc = empty_decode(resp, len);
		free(resp);
		if (rc == 0)
			known_committed(s);
		else
			(void)stub_failed(s, rc); /* delivered again, never lost */
	}
	return rc;
}

int grm_stub_commit(struct grm_stub *s)
{
	pthread_mutex_lock(&s->mu);
	int rc = stub_commit(s, GRM_COMMIT);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int grm_stub_save(struct grm_stub *s)
{
	struct grm *gr = s->gr;
	struct grm_pos *saved = NULL;
	uint32_t nsaved = 0;
	pthread_mutex_lock(&s->mu);
	int rc = stub_commit(s, GRM_SAVE);
	if (rc == 0 && s->mode == S_LOCAL) {
		if ((saved = malloc(META_MAX_PARTITIONS * sizeof(*saved))))
			nsaved = (uint32_t)rep_group_committed(s->g, saved, META_MAX_PARTITIONS);
		rep_group_resubmit(s->g);
		grm_kick(gr); /* the worker submits them now, not at its next tick */
	} else if (rc == 0) {
		saved = s->done; /* everything this member committed */
		nsaved = s->ndone;
		s->done = NULL;
		s->ndone = s->cdone = 0;
	}
	pthread_mutex_unlock(&s->mu);
	stub_wait_saved(gr, s->g, saved, nsaved);
	free(saved);
	return rc;
}

void grm_stub_rewind(struct grm_stub *s)
{
	pthread_mutex_lock(&s->mu);
	stub_check(s);
	if (s->mode == S_LOCAL) {
		rep_member_rewind(s->inner);
	} else if (s->mode == S_REMOTE) {
		struct grm_req q;
		uint8_t *resp;
		uint32_t len;
		known_clear(s);
		stub_req(s, GRM_REWIND, 0, &q);
		int rc = call(s->gr, s->coord, &q, &resp, &len);
		free(resp);
		if (rc < 0) /* the next request sends an empty `known`: the same */
			(void)stub_failed(s, rc);
	}
	pthread_mutex_unlock(&s->mu);
}

int grm_stub_peek(struct grm_stub *s, struct rep_delivery *d)
{
	int rc;
	pthread_mutex_lock(&s->mu);
	rc = stub_join(s);
	if (rc == 0)
		rc = s->mode == S_LOCAL ? rep_member_peek(s->inner, d) : -EOPNOTSUPP;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

void grm_stub_take(struct grm_stub *s)
{
	pthread_mutex_lock(&s->mu);
	if (s->mode == S_LOCAL)
		rep_member_take(s->inner);
	pthread_mutex_unlock(&s->mu);
}

size_t grm_stub_assignment(struct grm_stub *s, uint32_t *out, size_t max)
{
	size_t n = 0;
	pthread_mutex_lock(&s->mu);
	if (s->mode == S_LOCAL)
		n = rep_member_assignment(s->inner, out, max);
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* ---- the coordinator's side (worker thread) ---------------------------------- */

static void proxy_waker(void *ctx)
{
	struct proxy *px = ctx;
	uint8_t *buf = NULL;
	size_t len = 0;
	if (grm_wake_encode(&px->stub, 1, &buf, &len) < 0)
		return;
	int rc = tr_send(px->gr->net, px->node, GRM_WAKE, 0, buf, len);
	free(buf);
	if (rc < 0 && rc != -EHOSTUNREACH)
		tfs_debug("group %s: wake of a member on node %u: %s", rep_group_name(px->g),
		          px->node, tfs_strerror(rc));
}

/* Removes proxy i: its member leaves (with commit only if asked). */
static void proxy_drop(struct grm *gr, size_t i, int commit)
{
	struct proxy *px = gr->proxies[i];
	gr->proxies[i] = gr->proxies[--gr->nproxies];
	rep_member_leave(px->m, commit);
	rep_group_put(px->g);
	free(px);
}

static ssize_t proxy_find(struct grm *gr, uint16_t node, uint64_t inc, uint64_t stub)
{
	for (size_t i = 0; i < gr->nproxies; i++) {
		struct proxy *px = gr->proxies[i];
		if (px->node == node && px->incarnation == inc && px->stub == stub)
			return (ssize_t)i;
	}
	return -1;
}

/* Proxies of node that belong to another incarnation (it restarted). */
static void drop_old_incarnations(struct grm *gr, uint16_t node, uint64_t inc)
{
	for (size_t i = 0; i < gr->nproxies;) {
		struct proxy *px = gr->proxies[i];
		if (px->node == node && px->incarnation != inc) {
			tfs_info("group %s: node %u restarted: its old member leaves without commit",
			         rep_group_name(px->g), node);
			proxy_drop(gr, i, 0);
			continue;
		}
		i++;
	}
}

void grm_group_demoted(struct grm *gr, struct rep_group *g)
{
	for (size_t i = 0; i < gr->nproxies;) {
		if (gr->proxies[i]->g == g) {
			proxy_drop(gr, i, 0); /* evicted already: this frees it */
			continue;
		}
		i++;
	}
}

void grm_group_moved(struct grm *gr, struct rep_group *g)
{
	pthread_mutex_lock(&gr->smu);
	uint64_t *ids = malloc((gr->nstubs ? gr->nstubs : 1) * sizeof(*ids));
	size_t n = 0;
	for (size_t i = 0; ids && i < gr->nstubs; i++)
		if (gr->stubs[i]->g == g)
			ids[n++] = gr->stubs[i]->id;
	pthread_mutex_unlock(&gr->smu);
	for (size_t i = 0; i < n; i++)
		wake_post(gr, ids[i], 0);
	free(ids);
}

static void respond(struct grm *gr, const struct job *j, int rc, uint8_t *buf, size_t len)
{
	int src;
	if (rc < 0)
		src = tr_respond_error(gr->net, &j->origin, j->q.type, rc);
	else
		src = tr_respond(gr->net, &j->origin, j->q.type, 0, buf, len);
	if (src < 0 && src != -ESHUTDOWN)
		tfs_warn("group %s: answer to node %u not sent: %s", j->q.group, j->peer,
		         tfs_strerror(src));
	free(buf);
}

static int empty_encode(uint8_t **out, size_t *len)
{
	struct wbuf w = {0};
	w_u8(&w, GRM_VERSION);
	return w_done(&w, out, len);
}

static int serve_join(struct grm *gr, const struct job *j, struct rep_group *g)
{
	ssize_t i = proxy_find(gr, j->peer, j->q.incarnation, j->q.stub);
	if (i >= 0) /* it joins again: its earlier join's answer was lost */
		proxy_drop(gr, (size_t)i, 0);
	struct proxy *px = calloc(1, sizeof(*px));
	struct proxy **ps = px ? realloc(gr->proxies, (gr->nproxies + 1) * sizeof(*ps)) : NULL;
	if (!ps) {
		free(px);
		return -ENOMEM;
	}
	gr->proxies = ps;
	*px = (struct proxy){.gr = gr, .node = j->peer, .incarnation = j->q.incarnation,
	                     .stub = j->q.stub, .g = g};
	int rc = rep_member_join_real(g, proxy_waker, px, &px->m);
	if (rc < 0) {
		free(px);
		return rc;
	}
	ps[gr->nproxies++] = px;
	return 1; /* g's reference now belongs to px */
}

/* Runs one request on the group it names (worker). */
static void serve(struct grm *gr, struct job *j)
{
	struct grm_req *q = &j->q;
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc;
	drop_old_incarnations(gr, j->peer, q->incarnation);
	struct rep_group *g = rep_groups_find(gr->c, q->topic_id, q->group);
	uint16_t node;
	int real = 0;
	uint64_t ep;
	if (g)
		rep_group_coord(g, &node, &real, &ep);
	if (!real) {
		rc = -ESTALE;
		goto out;
	}
	if (q->type == GRM_JOIN) {
		rc = serve_join(gr, j, g);
		if (rc == 1)
			g = NULL;
		if (rc >= 0)
			rc = empty_encode(&buf, &len);
		goto out;
	}
	if (q->type == GRM_MEMBERS) {
		uint32_t n = 0;
		if ((rc = rep_group_member_count(g, &n)) == 0)
			rc = grm_u32_encode(n, &buf, &len);
		goto out;
	}
	if (q->type == GRM_OFFSETS) {
		uint32_t max = META_MAX_PARTITIONS;
		struct rep_group_offset *rows = malloc(max * sizeof(*rows));
		if (!rows) {
			rc = -ENOMEM;
			goto out;
		}
		size_t n = rep_group_offsets_local(g, rows, max);
		rc = grm_offsets_encode(rows, (uint32_t)n, &buf, &len);
		free(rows);
		goto out;
	}
	if (q->type == GRM_RESET) {
		rc = rep_group_reset_real(g, (enum rep_reset)q->how, q->partition, q->value);
		if (rc == 0)
			rc = empty_encode(&buf, &len);
		goto out;
	}
	ssize_t i = proxy_find(gr, j->peer, q->incarnation, q->stub);
	if (i < 0 || gr->proxies[i]->g != g) {
		rc = -ESTALE;
		goto out;
	}
	struct proxy *px = gr->proxies[i];
	if (has_positions(q->type) && q->resync)
		rep_member_resync(px->m, q->pos, q->npos);
	switch (q->type) {
	case GRM_TAKE: {
		struct grm_take t = {0};
		uint8_t *data = malloc(q->size);
		if (!data) {
			rc = -ENOMEM;
			break;
		}
		rc = rep_member_take_bulk(px->m, data, q->size, q->max_records, (char)q->sep,
		                          &t.bulk);
		if (rc >= 0 || rc == -EMSGSIZE) {
			t.rc = rc;
			t.data = data;
			if (rc == 0)
				t.bulk = (struct rep_bulk){0};
			rc = grm_take_encode(&t, &buf, &len);
		}
		free(data);
		break;
	}
	case GRM_READY:
		rc = rep_member_ready(px->m);
		if (rc >= 0)
			rc = grm_u32_encode((uint32_t)rc, &buf, &len);
		break;
	case GRM_COMMIT:
	case GRM_SAVE:
		rc = rep_member_commit(px->m);
		if (rc == 0)
			rc = empty_encode(&buf, &len);
		if (q->type == GRM_SAVE) { /* to the quorum now: the member waits for it */
			rep_group_resubmit(g);
			gr->kicked = 1;
		}
		break;
	case GRM_REWIND:
		rep_member_rewind(px->m);
		rc = empty_encode(&buf, &len);
		break;
	case GRM_LEAVE:
		proxy_drop(gr, (size_t)i, q->commit);
		gr->kicked = 1;
		rc = empty_encode(&buf, &len);
		break;
	default:
		rc = REP_EPROTO;
		break;
	}
out:
	respond(gr, j, rc, buf, len);
	rep_group_put(g);
}

/* ---- reconciliation with the metadata (worker) ------------------------------ */

struct snap {
	struct grm_mgroup *g;
	size_t n, cap;
	int oom;
};

static void snap_free(struct snap *sn)
{
	for (size_t i = 0; i < sn->n; i++)
		free(sn->g[i].offsets);
	free(sn->g);
	*sn = (struct snap){0};
}

/* Under the state's read lock: copies every group (no blocking). */
static void snap_copy(void *ctx, const struct meta_state *s)
{
	struct snap *sn = ctx;
	for (uint32_t t = 0; t < s->ntopics; t++) {
		const struct meta_topic *tp = &s->topics[t];
		for (uint32_t k = 0; k < tp->ngroups; k++) {
			const struct meta_group *mg = &tp->groups[k];
			if (sn->n == sn->cap) {
				size_t cap = sn->cap ? 2 * sn->cap : 16;
				struct grm_mgroup *g = realloc(sn->g, cap * sizeof(*g));
				if (!g) {
					sn->oom = 1;
					return;
				}
				sn->g = g;
				sn->cap = cap;
			}
			struct grm_mgroup *o = &sn->g[sn->n];
			o->topic_id = tp->id;
			snprintf(o->name, sizeof(o->name), "%s", mg->name);
			o->coordinator = mg->coordinator;
			o->noffsets = mg->noffsets;
			o->offsets = malloc((mg->noffsets ? mg->noffsets : 1) * sizeof(int64_t));
			if (!o->offsets) {
				sn->oom = 1;
				return;
			}
			if (mg->noffsets)
				memcpy(o->offsets, mg->offsets, mg->noffsets * sizeof(int64_t));
			sn->n++;
		}
	}
}

/* Tells the coordinators of every group that this node (re)started, so
 * they drop the members of its previous incarnation (invariant 2). */
static void send_hello(struct grm *gr, const struct snap *sn)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	if (grm_hello_encode(gr->incarnation, &buf, &len) < 0)
		return;
	uint16_t sent[64];
	size_t nsent = 0;
	for (size_t i = 0; i < sn->n; i++) {
		uint16_t node = sn->g[i].coordinator;
		int dup = node == 0 || node == gr->self;
		for (size_t k = 0; k < nsent && !dup; k++)
			dup = sent[k] == node;
		if (dup)
			continue;
		int rc = tr_send(gr->net, node, GRM_HELLO, 0, buf, len);
		if (rc < 0)
			tfs_debug("groups: hello to node %u: %s", node, tfs_strerror(rc));
		if (nsent < sizeof(sent) / sizeof(sent[0]))
			sent[nsent++] = node;
	}
	free(buf);
}

static int reconcile(struct grm *gr)
{
	struct snap sn = {0};
	io->read(gr->cl, snap_copy, &sn);
	if (sn.oom) {
		tfs_error("groups: out of memory copying the metadata; trying again");
		snap_free(&sn);
		return 1;
	}
	int retry = rep_groups_reconcile(gr->c, sn.g, sn.n);
	if (!gr->hello_sent && sn.n) {
		send_hello(gr, &sn);
		gr->hello_sent = 1;
	}
	snap_free(&sn);
	return retry;
}

static void drop_dead(struct grm *gr)
{
	for (size_t i = 0; i < gr->nproxies;) {
		struct proxy *px = gr->proxies[i];
		if (!io->node_alive(gr->cl, px->node)) {
			tfs_info("group %s: node %u is down: its member leaves without commit",
			         rep_group_name(px->g), px->node);
			proxy_drop(gr, i, 0);
			continue;
		}
		i++;
	}
}

static void *worker_main(void *arg)
{
	struct grm *gr = arg;
	int64_t next_tick = mono_ms() + TICK_MS, next_alive = mono_ms() + ALIVE_CHECK_MS;
	pthread_mutex_lock(&gr->mu);
	while (!gr->stop) {
		if (gr->head) {
			struct job *j = gr->head;
			gr->head = j->next;
			if (!gr->head)
				gr->tail = NULL;
			pthread_mutex_unlock(&gr->mu);
			if (j->q.type == GRM_HELLO)
				drop_old_incarnations(gr, j->peer, j->q.incarnation);
			else
				serve(gr, j);
			grm_req_free(&j->q);
			free(j);
			pthread_mutex_lock(&gr->mu);
			continue;
		}
		int64_t now = mono_ms();
		if (gr->meta_gen != gr->done_gen || (gr->retry && now >= next_tick)) {
			uint64_t gen = gr->meta_gen;
			pthread_mutex_unlock(&gr->mu);
			int retry = reconcile(gr);
			pthread_mutex_lock(&gr->mu);
			gr->retry = retry;
			gr->done_gen = gen;
			pthread_cond_broadcast(&gr->cv);
			continue;
		}
		if (now >= next_tick || gr->kicked) {
			gr->kicked = 0;
			pthread_mutex_unlock(&gr->mu);
			rep_groups_flush_commits(gr->c);
			if (now >= next_alive) {
				drop_dead(gr);
				next_alive = now + ALIVE_CHECK_MS;
			}
			pthread_mutex_lock(&gr->mu);
			next_tick = now + TICK_MS;
			continue;
		}
		struct timespec ts;
		wire_deadline(&ts, next_tick - now);
		pthread_cond_timedwait(&gr->cv, &gr->mu, &ts);
	}
	pthread_mutex_unlock(&gr->mu);
	return NULL;
}

void grm_meta_changed(struct grm *gr)
{
	pthread_mutex_lock(&gr->mu);
	gr->meta_gen++;
	pthread_cond_broadcast(&gr->cv);
	pthread_mutex_unlock(&gr->mu);
}

void grm_sync(struct grm *gr)
{
	struct timespec ts;
	wire_deadline(&ts, gr->timeout_ms);
	pthread_mutex_lock(&gr->mu);
	uint64_t want = gr->meta_gen;
	while (!gr->stop && gr->done_gen < want)
		if (pthread_cond_timedwait(&gr->cv, &gr->mu, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&gr->mu);
}

int64_t grm_deadline(const struct grm *gr)
{
	return mono_ms() + gr->timeout_ms;
}

int grm_retry(struct grm *gr, int rc, int64_t deadline)
{
	switch (rc) {
	case -ESTALE:       /* not run there (yet): a group just made, or moved */
	case -ENOTCONN:     /* its node cannot be reached: the quorum moves it */
	case -ECONNRESET:
	case -ECONNABORTED:
		break;
	default:
		return 0;
	}
	if (mono_ms() + JOIN_RETRY_MS >= deadline)
		return 0;
	grm_sync(gr);
	sleep_ms(JOIN_RETRY_MS);
	return 1;
}

void grm_kick(struct grm *gr)
{
	pthread_mutex_lock(&gr->mu);
	gr->kicked = 1;
	pthread_cond_broadcast(&gr->cv);
	pthread_mutex_unlock(&gr->mu);
}

int grm_propose(struct grm *gr, const struct meta_cmd *cmd, struct meta_result *res)
{
	return io->propose(gr->cl, cmd, res);
}

int grm_submit(struct grm *gr, const struct meta_cmd *cmd)
{
	return io->submit(gr->cl, cmd);
}

/* ---- frames in (loop thread) ------------------------------------------------- */

/* Answers request f with an error (loop thread). */
static void answer_error(struct grm *gr, const struct tr_frame *f, int code)
{
	int rc = tr_respond_error(gr->net, &f->origin, f->type, code);
	if (rc < 0 && rc != -ESHUTDOWN)
		tfs_debug("groups: error answer to node %u not sent: %s", f->peer, tfs_strerror(rc));
}

static int enqueue(struct grm *gr, struct job *j)
{
	pthread_mutex_lock(&gr->mu);
	if (gr->stop) {
		pthread_mutex_unlock(&gr->mu);
		return -ESHUTDOWN;
	}
	if (gr->tail)
		gr->tail->next = j;
	else
		gr->head = j;
	gr->tail = j;
	pthread_cond_broadcast(&gr->cv);
	pthread_mutex_unlock(&gr->mu);
	return 0;
}

int grm_on_frame(struct grm *gr, const struct tr_frame *f)
{
	int rc;
	if (f->type == GRM_WAKE) {
		uint64_t *ids;
		uint32_t n;
		if ((rc = grm_wake_decode(f->payload, f->len, &ids, &n)) < 0)
			goto bad;
		for (uint32_t i = 0; i < n; i++)
			wake_post(gr, ids[i], 0);
		free(ids);
		return 0;
	}
	struct job *j = calloc(1, sizeof(*j));
	if (!j) {
		if (f->request_id)
			answer_error(gr, f, -ENOMEM);
		return 0;
	}
	j->peer = f->peer;
	j->origin = f->origin;
	if (f->type == GRM_HELLO) {
		j->q.type = GRM_HELLO;
		rc = f->request_id ? REP_EPROTO : grm_hello_decode(f->payload, f->len,
		                                                   &j->q.incarnation);
	} else {
		rc = !f->request_id ? REP_EPROTO
		                    : grm_req_decode(f->type, f->payload, f->len, &j->q);
	}
	if (rc < 0) {
		free(j);
		if (rc == -ENOMEM) {
			answer_error(gr, f, rc);
			return 0;
		}
		goto bad;
	}
	if ((rc = enqueue(gr, j)) < 0) {
		answer_error(gr, f, rc);
		grm_req_free(&j->q);
		free(j);
	}
	return 0;
bad:
	tfs_warn("groups: refused a malformed frame of type %u (%u bytes) from node %u",
	         f->type, f->len, f->peer);
	return REP_EPROTO;
}

/* ---- open and close ------------------------------------------------------------ */

int grm_open(struct rep_groups *c, struct rep *r, struct cluster *cl, struct grm **out)
{
	struct grm *gr = calloc(1, sizeof(*gr));
	if (!gr)
		return -ENOMEM;
	gr->c = c;
	gr->rep = r;
	gr->cl = cl;
	gr->net = io->net(cl);
	gr->self = io->node_id(cl);
	gr->timeout_ms = io->request_timeout_ms(cl);
	if (!gr->timeout_ms)
		gr->timeout_ms = 5000;
	gr->incarnation = random_u64();
	gr->meta_gen = 1; /* the first reconcile is due */
	pthread_mutex_init(&gr->mu, NULL);
	pthread_cond_init(&gr->cv, NULL);
	pthread_mutex_init(&gr->smu, NULL);
	pthread_cond_init(&gr->scv, NULL);
	/* The worker reconciles at once and reaches this grm through the
	 * groups' c->remote, which is *out: set it before the threads start
	 * (a node restarting with groups in its metadata crashed there). */
	*out = gr;
	int rc = pthread_create(&gr->waker, NULL, waker_main, gr);
	if (rc) {
		*out = NULL;
		grm_close(gr);
		return -rc;
	}
	gr->waker_started = 1;
	rc = pthread_create(&gr->worker, NULL, worker_main, gr);
	if (rc) {
		*out = NULL;
		grm_close(gr);
		return -rc;
	}
	gr->worker_started = 1;
	return 0;
}

void grm_close(struct grm *gr)
{
	if (!gr)
		return;
	pthread_mutex_lock(&gr->mu);
	gr->stop = 1;
	pthread_cond_broadcast(&gr->cv);
	pthread_mutex_unlock(&gr->mu);
	if (gr->worker_started)
		pthread_join(gr->worker, NULL);
	pthread_mutex_lock(&gr->smu);
	gr->wstop = 1;
	pthread_cond_broadcast(&gr->scv);
	pthread_mutex_unlock(&gr->smu);
	if (gr->waker_started)
		pthread_join(gr->waker, NULL);
	while (gr->head) {
		struct job *j = gr->head;
		gr->head = j->next;
		grm_req_free(&j->q);
		free(j);
	}
	while (gr->nproxies)
		proxy_drop(gr, gr->nproxies - 1, 0);
	free(gr->proxies);
	/* Members fs never closed: leave without commit, as on one node. */
	for (size_t i = 0; i < gr->nstubs; i++) {
		struct grm_stub *s = gr->stubs[i];
		if (s->mode == S_LOCAL)
			rep_member_leave(s->inner, 0);
		rep_member_free_front(s->front);
		pthread_mutex_destroy(&s->mu);
		free(s->known);
		free(s->done);
		free(s);
	}
	free(gr->stubs);
	free(gr->wq);
	pthread_cond_destroy(&gr->scv);
	pthread_mutex_destroy(&gr->smu);
	pthread_cond_destroy(&gr->cv);
	pthread_mutex_destroy(&gr->mu);
	free(gr);
}
