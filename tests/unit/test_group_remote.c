/* test_group_remote.c - consumer groups across nodes (replicator/group_remote.c):
 * the group frame codec (round trips, every truncation, hostile bytes), then
 * two or three real nodes in one process (a single-node replicator each, real
 * tr_nets on 127.0.0.1) under a fake cluster core (one shared metadata state
 * applied in place, liveness flags): a member on another node consumes
 * through the coordinator, commits reach the quorum, wakes cross nodes,
 * members on both nodes share the partitions exactly once, a coordinator
 * move keeps every record, a dead node's member loses its partitions, a join
 * whose answer was lost leaves no proxy behind, rmdir asks the coordinator,
 * and malformed frames are refused. "Replication" is
 * the test producing the same records on every node. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../replicator/group_remote.h"
#include "../../replicator/groups.h"
#include "../../replicator/meta.h"
#include "../../replicator/replicator.h"
#include "../../replicator/transport.h"
#include "unit.h"

#define NPARTS 2
#define MAXN 3

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

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

/* ---- the codec ----------------------------------------------------------------- */

static void req_sample(struct grm_req *q, uint16_t type, struct grm_pos *pos)
{
	memset(q, 0, sizeof(*q));
	q->type = type;
	q->incarnation = 0x1122334455667788ull;
	q->topic_id = 7;
	snprintf(q->group, sizeof(q->group), "billing.v2");
	q->stub = (type == GRM_OFFSETS || type == GRM_RESET || type == GRM_MEMBERS) ? 0 : 42;
	if (type == GRM_TAKE) {
		q->size = 65536;
		q->max_records = 1;
		q->sep = '\t';
	}
	if (type == GRM_LEAVE)
		q->commit = 1;
	if (type == GRM_RESET) {
		q->how = REP_RESET_TIME;
		q->partition = -1;
		q->value = 1700000000000;
	}
	if (type == GRM_TAKE || type == GRM_READY || type == GRM_COMMIT || type == GRM_LEAVE) {
		pos[0] = (struct grm_pos){0, 10};
		pos[1] = (struct grm_pos){3, 99};
		q->resync = 1;
		q->npos = 2;
		q->pos = pos;
	}
}

/* Every request type encodes and decodes to the same fields. */
static void test_request_round_trip(void)
{
	uint16_t types[] = {GRM_JOIN,  GRM_TAKE,    GRM_READY, GRM_COMMIT, GRM_REWIND,
	                    GRM_LEAVE, GRM_OFFSETS, GRM_RESET, GRM_MEMBERS};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		struct grm_pos pos[2];
		struct grm_req q, d;
		uint8_t *buf;
		size_t len;
		req_sample(&q, types[i], pos);
		CHECK_EQ_INT(grm_req_encode(&q, &buf, &len), 0);
		CHECK_EQ_INT(grm_req_decode(types[i], buf, len, &d), 0);
		CHECK_EQ_INT(d.incarnation, q.incarnation);
		CHECK_EQ_INT(d.topic_id, 7);
		CHECK(strcmp(d.group, "billing.v2") == 0);
		CHECK_EQ_INT(d.stub, q.stub);
		CHECK_EQ_INT(d.size, q.size);
		CHECK_EQ_INT(d.max_records, q.max_records);
		CHECK_EQ_INT(d.sep, q.sep);
		CHECK_EQ_INT(d.commit, q.commit);
		CHECK_EQ_INT(d.how, q.how);
		CHECK_EQ_INT(d.partition, q.partition);
		CHECK_EQ_INT(d.value, q.value);
		CHECK_EQ_INT(d.npos, q.npos);
		for (uint32_t k = 0; k < d.npos && k < 2; k++) {
			CHECK_EQ_INT(d.pos[k].partition, pos[k].partition);
			CHECK_EQ_INT(d.pos[k].offset, pos[k].offset);
		}
		grm_req_free(&d);
		/* every truncation and one trailing byte are refused */
		for (size_t cut = 0; cut < len; cut++)
			CHECK_EQ_INT(grm_req_decode(types[i], buf, cut, &d), REP_EPROTO);
		uint8_t *longer = malloc(len + 1);
		memcpy(longer, buf, len);
		longer[len] = 0;
		CHECK_EQ_INT(grm_req_decode(types[i], longer, len + 1, &d), REP_EPROTO);
		free(longer);
		free(buf);
	}
}

/* Requests that break a rule are refused by the encoder and the decoder. */
static void test_request_malformed(void)
{
	struct grm_pos pos[2];
	struct grm_req q, d;
	uint8_t *buf;
	size_t len;

	req_sample(&q, GRM_TAKE, pos);
	q.size = 0;
	CHECK_EQ_INT(grm_req_encode(&q, &buf, &len), -EINVAL);
	req_sample(&q, GRM_OFFSETS, pos);
	q.stub = 5; /* a group request names no member */
	CHECK_EQ_INT(grm_req_encode(&q, &buf, &len), -EINVAL);
	req_sample(&q, GRM_COMMIT, pos);
	pos[1].partition = 0; /* not increasing */
	CHECK_EQ_INT(grm_req_encode(&q, &buf, &len), -EINVAL);
	req_sample(&q, GRM_JOIN, pos);
	snprintf(q.group, sizeof(q.group), ".hidden");
	CHECK_EQ_INT(grm_req_encode(&q, &buf, &len), -EINVAL);

	/* decoder: a good TAKE, then single-field corruptions */
	req_sample(&q, GRM_TAKE, pos);
	CHECK_EQ_INT(grm_req_encode(&q, &buf, &len), 0);
	size_t name_at = 1 + 8 + 8 + 2, stub_at = name_at + 10, size_at = stub_at + 8;
	struct {
		size_t at;
		uint8_t v;
	} bad[] = {
		{0, 2},                      /* version */
		{name_at, '/'},              /* name byte */
		{name_at, 0},                /* NUL in the name */
		{stub_at, 0},                /* (with the rest zero below) */
		{size_at + 3, 0xff},         /* size > GRM_TAKE_MAX */
		{size_at + 9, 2},            /* resync flag 2 */
		{len - 1, 0x80},             /* negative offset */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t *b = malloc(len);
		memcpy(b, buf, len);
		b[bad[i].at] = bad[i].v;
		if (bad[i].at == stub_at)
			memset(b + stub_at, 0, 8); /* a member request without member */
		CHECK_EQ_INT(grm_req_decode(GRM_TAKE, b, len, &d), REP_EPROTO);
		free(b);
	}
	/* the type decides the layout: a TAKE payload is no JOIN and no WAKE */
	CHECK_EQ_INT(grm_req_decode(GRM_JOIN, buf, len, &d), REP_EPROTO);
	CHECK_EQ_INT(grm_req_decode(GRM_WAKE, buf, len, &d), REP_EPROTO);
	CHECK_EQ_INT(grm_req_decode(TF_GROUP_MAX, buf, len, &d), REP_EPROTO);
	free(buf);
}

/* Responses, WAKE and HELLO round trip; hostile bytes never pass or crash. */
static void test_responses_and_fuzz(void)
{
	uint8_t *buf;
	size_t len;
	const char data[] = "k\tv1\nv2\n";
	struct grm_take t = {.rc = 1,
	                     .bulk = {.partition = 1, .records = 2, .bytes = 8,
	                              .first_offset = 5, .next_offset = 7},
	                     .data = (const uint8_t *)data};
	struct grm_take d;
	CHECK_EQ_INT(grm_take_encode(&t, &buf, &len), 0);
	CHECK_EQ_INT(grm_take_decode(buf, len, &d), 0);
	CHECK_EQ_INT(d.rc, 1);
	CHECK_EQ_INT(d.bulk.records, 2);
	CHECK_EQ_INT(d.bulk.next_offset, 7);
	CHECK(memcmp(d.data, data, 8) == 0);
	for (size_t cut = 0; cut < len; cut++)
		CHECK_EQ_INT(grm_take_decode(buf, cut, &d), REP_EPROTO);
	free(buf);
	t = (struct grm_take){.rc = -EMSGSIZE, .bulk = {.need = 1 << 20}};
	CHECK_EQ_INT(grm_take_encode(&t, &buf, &len), 0);
	CHECK_EQ_INT(grm_take_decode(buf, len, &d), 0);
	CHECK_EQ_INT(d.rc, -EMSGSIZE);
	CHECK_EQ_INT(d.bulk.need, 1 << 20);
	free(buf);
	t = (struct grm_take){.rc = -EIO};
	CHECK_EQ_INT(grm_take_encode(&t, &buf, &len), -EINVAL);

	struct rep_group_offset rows[2] = {{0, 3, 9, 6}, {1, 0, 0, 0}}, *got;
	uint32_t n;
	CHECK_EQ_INT(grm_offsets_encode(rows, 2, &buf, &len), 0);
	CHECK_EQ_INT(grm_offsets_decode(buf, len, &got, &n), 0);
	CHECK_EQ_INT(n, 2);
	if (n == 2)
		CHECK(got[0].committed == 3 && got[0].lag == 6 && got[1].partition == 1);
	free(got);
	CHECK_EQ_INT(grm_offsets_decode(buf, len - 1, &got, &n), REP_EPROTO);
	free(buf);

	uint64_t ids[3] = {1, 2, 3}, *wids;
	CHECK_EQ_INT(grm_wake_encode(ids, 3, &buf, &len), 0);
	CHECK_EQ_INT(grm_wake_decode(buf, len, &wids, &n), 0);
	CHECK(n == 3 && wids[2] == 3);
	free(wids);
	buf[len - 1] = 0, buf[len - 2] = 0, memset(buf + len - 8, 0, 8); /* id 0 */
	CHECK_EQ_INT(grm_wake_decode(buf, len, &wids, &n), REP_EPROTO);
	free(buf);
	CHECK_EQ_INT(grm_wake_encode(ids, 0, &buf, &len), -EINVAL);
	uint64_t inc;
	CHECK_EQ_INT(grm_hello_encode(99, &buf, &len), 0);
	CHECK_EQ_INT(grm_hello_decode(buf, len, &inc), 0);
	CHECK_EQ_INT(inc, 99);
	free(buf);

	/* random bytes into every decoder: refused (or, rarely, valid), never a crash */
	uint32_t seed = 12345;
	uint8_t junk[256];
	int accepted = 0;
	for (int round = 0; round < 20000; round++) {
		size_t jl = (size_t)(seed % sizeof(junk));
		for (size_t i = 0; i < jl; i++) {
			seed = seed * 1103515245u + 12345u;
			junk[i] = (uint8_t)(seed >> 16);
		}
		if (jl)
			junk[0] = GRM_VERSION; /* get past the first check */
		struct grm_req q;
		uint16_t type = (uint16_t)(TF_GROUP_MIN + round % (GRM_TYPE_END - TF_GROUP_MIN));
		if (grm_req_decode(type, junk, jl, &q) == 0) {
			accepted++;
			grm_req_free(&q);
		}
		if (grm_take_decode(junk, jl, &d) == 0)
			accepted++;
		if (grm_offsets_decode(junk, jl, &got, &n) == 0) {
			accepted++;
			free(got);
		}
		if (grm_wake_decode(junk, jl, &wids, &n) == 0) {
			accepted++;
			free(wids);
		}
	}
	CHECK(accepted < 100);
}

/* ---- a fake cluster core -------------------------------------------------------- */

struct cluster {                /* one node */
	uint16_t id;
	int open;
	atomic_int alive;
	char dir[512];
	char addr[32];
	struct rep *rep;
	struct tr_net *net;
};

static struct cluster nodes[MAXN + 1];  /* by id; [0] unused */
static int nnodes;
static pthread_mutex_t meta_mu = PTHREAD_MUTEX_INITIALIZER;
static struct meta_state meta;

static struct cluster *f_cluster_of(struct rep *r)
{
	for (int i = 1; i <= nnodes; i++)
		if (nodes[i].rep == r)
			return &nodes[i];
	return NULL;
}
static struct tr_net *f_net(struct cluster *c) { return c->net; }
static uint16_t f_node_id(const struct cluster *c) { return c->id; }
static int f_alive(struct cluster *c, uint16_t id)
{
	(void)c;
	return id >= 1 && id <= nnodes && atomic_load(&nodes[id].alive);
}
static unsigned req_timeout_ms = 1500; /* read by each node's grm at cluster_up */
static atomic_int stall_join_ms;       /* the loop thread sits on a JOIN this long */
static atomic_int deaf_node;           /* this node learns of no metadata change */

static unsigned f_timeout(const struct cluster *c)
{
	(void)c;
	return req_timeout_ms;
}

/* Applies cmd to the shared state, then tells every open node (as the
 * applied hook would). */
static int f_apply(const struct meta_cmd *cmd, struct meta_result *res)
{
	pthread_mutex_lock(&meta_mu);
	int rc = meta_apply(&meta, cmd, res);
	pthread_mutex_unlock(&meta_mu);
	for (int i = 1; i <= nnodes; i++)
		if (nodes[i].open && i != atomic_load(&deaf_node))
			rep_groups_meta_changed(nodes[i].rep, &meta);
	return rc;
}

/* After ms, node i hears of the metadata again and catches up. */
struct later {
	int ms, node;
	struct meta_cmd cmd; /* applied then too, if its type is set */
};
static void *later_main(void *arg)
{
	struct later *l = arg;
	sleep_ms(l->ms);
	if (l->cmd.type)
		(void)f_apply(&l->cmd, NULL);
	atomic_store(&deaf_node, 0);
	pthread_mutex_lock(&meta_mu);
	rep_groups_meta_changed(nodes[l->node].rep, &meta);
	pthread_mutex_unlock(&meta_mu);
	return NULL;
}
static int f_submit(struct cluster *c, const struct meta_cmd *cmd)
{
	(void)c;
	(void)f_apply(cmd, NULL);
	return 0;
}
static int f_propose(struct cluster *c, const struct meta_cmd *cmd, struct meta_result *res)
{
	(void)c;
	return f_apply(cmd, res);
}
static void f_read(struct cluster *c, void (*fn)(void *, const struct meta_state *), void *ctx)
{
	(void)c;
	pthread_mutex_lock(&meta_mu);
	fn(ctx, &meta);
	pthread_mutex_unlock(&meta_mu);
}

static const struct grm_io fake_io = {
	.cluster_of = f_cluster_of,
	.net = f_net,
	.node_id = f_node_id,
	.node_alive = f_alive,
	.request_timeout_ms = f_timeout,
	.submit = f_submit,
	.propose = f_propose,
	.read = f_read,
};

static int on_frame(void *ctx, struct tr_net *net, const struct tr_frame *f)
{
	(void)net;
	struct cluster *c = ctx;
	if (f->type == GRM_JOIN && atomic_load(&stall_join_ms))
		sleep_ms(atomic_load(&stall_join_ms));
	if (f->type >= TF_GROUP_MIN && f->type <= TF_GROUP_MAX)
		return rep_groups_on_frame(c->rep, f);
	return REP_EPROTO;
}

/* A group command of topic "t" (id 1) about group name, at node. */
static void group_cmd(struct meta_cmd *cmd, enum meta_cmd_type type, const char *name,
                      uint16_t node)
{
	meta_cmd_init(cmd, type);
	cmd->topic_id = 1;
	snprintf(cmd->name, sizeof(cmd->name), "%s", name);
	cmd->node = node;
}

static void apply_ok(struct meta_cmd *cmd)
{
	struct meta_result res;
	int rc = f_apply(cmd, &res);
	if (rc < 0)
		fprintf(stderr, "meta %s: %s\n", meta_cmd_name(cmd->type), res.err);
	CHECK_EQ_INT(rc, 0);
}

/* n nodes, each with topic "t" of NPARTS partitions (id 1 everywhere). */
static void cluster_up(int n)
{
	nnodes = n;
	meta_state_init(&meta);
	grm_set_io(&fake_io);
	struct tr_peer_addr peers[MAXN];
	for (int i = 1; i <= n; i++) {
		struct cluster *c = &nodes[i];
		memset(c, 0, sizeof(*c));
		c->id = (uint16_t)i;
		atomic_init(&c->alive, 1);
		snprintf(c->addr, sizeof(c->addr), "127.0.0.1:%u", free_port());
		snprintf(c->dir, sizeof(c->dir), "%s/n%d", unit_tmpdir(), i);
		mkdir(c->dir, 0755);
		peers[i - 1] = (struct tr_peer_addr){.id = (uint16_t)i, .addr = c->addr};
		struct meta_cmd cmd;
		meta_cmd_init(&cmd, META_CMD_NODE_REGISTER);
		cmd.node = (uint16_t)i;
		snprintf(cmd.address, sizeof(cmd.address), "%s", c->addr);
		cmd.term = 1;
		apply_ok(&cmd);
	}
	struct meta_cmd cmd;
	meta_cmd_init(&cmd, META_CMD_TOPIC_CREATE);
	snprintf(cmd.name, sizeof(cmd.name), "t");
	cmd.config.partitions = NPARTS;
	cmd.config.replication = 1;
	cmd.config.min_insync = 1;
	cmd.config.set_mask = META_PINNED_KEYS;
	apply_ok(&cmd);
	for (int i = 1; i <= n; i++) {
		struct cluster *c = &nodes[i];
		struct tr_options o = {.node_id = c->id, .cluster_id = "groups-test",
		                       .listen = c->addr, .peers = peers, .npeers = (size_t)n,
		                       .on_frame = on_frame, .ctx = c,
		                       .down_after_ms = 2000, .backoff_max_ms = 100};
		CHECK_EQ_INT(tr_open(&o, &c->net), 0);
		struct rep_options ro = {.node_id = c->id, .data_dir = c->dir, .listen = c->addr};
		topic_config_builtin(&ro.defaults);
		ro.defaults.partitions = NPARTS;
		ro.defaults.compression = LS_CODEC_NONE;
		CHECK_EQ_INT(rep_open(&ro, &c->rep), 0);
		CHECK_EQ_INT(rep_topic_create(c->rep, "t"), 0);
		CHECK_EQ_INT(rep_groups_open(c->rep, REP_GROUP_EARLIEST), 0);
		c->open = 1;
		CHECK_EQ_INT(tr_start(c->net), 0);
	}
}

static void node_stop(int i)
{
	struct cluster *c = &nodes[i];
	if (!c->open)
		return;
	c->open = 0;
	tr_stop(c->net);
	rep_groups_close(c->rep);
	rep_close(c->rep);
	tr_close(c->net);
}

static void cluster_down(void)
{
	for (int i = 1; i <= nnodes; i++)
		node_stop(i);
	grm_set_io(NULL);
	meta_state_free(&meta);
	nnodes = 0;
}

static struct rep_topic *topic_of(int node)
{
	struct rep_topic *t = rep_topic_get(nodes[node].rep, "t");
	CHECK(t != NULL);
	if (!t)
		abort();
	return t;
}

/* Appends n records "p<p>-<k>" (k from `from`) to partition p on every node. */
static void produce_all(uint32_t p, int from, int n)
{
	for (int i = 1; i <= nnodes; i++) {
		struct rep_topic *t = topic_of(i);
		for (int k = from; k < from + n; k++) {
			char v[32];
			int len = snprintf(v, sizeof(v), "p%u-%d", p, k);
			struct ls_rec rec = {.value = v, .value_len = (uint32_t)len};
			struct ls_append_result res;
			CHECK_EQ_INT(rep_produce(rep_topic_partition(t, p), &rec, 1, NULL, &res), 0);
		}
		rep_topic_put(t);
	}
}

static struct rep_group *group_of(int node, const char *name, int create)
{
	struct rep_topic *t = topic_of(node);
	struct rep_group *g = NULL;
	int rc = rep_group_get(t, name, create, &g);
	CHECK_EQ_INT(rc, 0);
	rep_topic_put(t);
	if (!g)
		abort();
	return g;
}

static uint16_t meta_coordinator(const char *name)
{
	pthread_mutex_lock(&meta_mu);
	const struct meta_topic *t = meta_topic_by_name(&meta, "t");
	const struct meta_group *g = t ? meta_group_find(t, name) : NULL;
	uint16_t c = g ? g->coordinator : 0;
	pthread_mutex_unlock(&meta_mu);
	return c;
}

static int64_t meta_offset(const char *name, uint32_t p)
{
	pthread_mutex_lock(&meta_mu);
	const struct meta_topic *t = meta_topic_by_name(&meta, "t");
	const struct meta_group *g = t ? meta_group_find(t, name) : NULL;
	int64_t o = g && p < g->noffsets ? g->offsets[p] : -2;
	pthread_mutex_unlock(&meta_mu);
	return o;
}

/* Records taken, by value ("p0-3"), counted. */
struct seen {
	int n[NPARTS][256];
	int total;
};

/* Takes everything ready (small reads: one record each); returns the count. */
static int drain(struct rep_member *m, struct seen *s)
{
	char buf[256];
	int got = 0;
	for (;;) {
		struct rep_bulk b;
		int rc = rep_member_take_bulk(m, buf, sizeof(buf), 1, '\t', &b);
		CHECK(rc >= 0);
		if (rc <= 0)
			return got;
		unsigned p;
		int k;
		CHECK_EQ_INT(b.records, 1);
		if (sscanf(buf, "p%u-%d", &p, &k) == 2 && p < NPARTS && k >= 0 && k < 256) {
			CHECK_EQ_INT(p, b.partition);
			s->n[p][k]++;
			s->total++;
		}
		got++;
	}
}

static void waker_count(void *ctx)
{
	atomic_fetch_add((atomic_int *)ctx, 1);
}

/* A member on node 2 consumes a group node 1 coordinates; its commit is
 * visible in the coordinator's offsets, in the quorum, and through the
 * member node's offsets file. */
static void test_remote_member_consumes(void)
{
	cluster_up(2);
	struct rep_group *g2 = group_of(2, "g", 1);
	CHECK_EQ_INT(meta_coordinator("g"), 1);
	struct rep_group *g1 = group_of(1, "g", 0); /* listed on the coordinator too */
	produce_all(0, 0, 5);
	produce_all(1, 0, 3);
	atomic_int wakes = 0;
	struct rep_member *m;
	CHECK_EQ_INT(rep_member_join(g2, waker_count, &wakes, &m), 0);
	struct seen s = {0};
	CHECK_EQ_INT(drain(m, &s), 8);
	CHECK_EQ_INT(rep_member_commit(m), 0);
	struct rep_group_offset rows[NPARTS];
	CHECK_EQ_INT(rep_group_offsets(g1, rows, NPARTS), NPARTS);
	CHECK(rows[0].committed == 5 && rows[1].committed == 3);
	for (int i = 0; i < 100 && meta_offset("g", 0) != 5; i++)
		sleep_ms(20);
	CHECK_EQ_INT(meta_offset("g", 0), 5);
	CHECK_EQ_INT(meta_offset("g", 1), 3);
	CHECK_EQ_INT(rep_group_offsets(g2, rows, NPARTS), NPARTS);
	CHECK(rows[0].committed == 5 && rows[1].lag == 0);
	rep_member_leave(m, 1);
	rep_group_put(g1);
	rep_group_put(g2);
	cluster_down();
}

/* Records arriving at the coordinator wake a member waiting on another node. */
static void test_remote_wake(void)
{
	cluster_up(2);
	struct rep_group *g2 = group_of(2, "w", 1);
	atomic_int wakes = 0;
	struct rep_member *m;
	CHECK_EQ_INT(rep_member_join(g2, waker_count, &wakes, &m), 0);
	CHECK_EQ_INT(rep_member_ready(m), 0);
	int before = atomic_load(&wakes);
	produce_all(1, 0, 1);
	rep_groups_partition_grew(nodes[1].rep, 1, 1);
	for (int i = 0; i < 100 && atomic_load(&wakes) == before; i++)
		sleep_ms(20);
	CHECK(atomic_load(&wakes) > before);
	CHECK_EQ_INT(rep_member_ready(m), 1);
	rep_member_leave(m, 0);
	rep_group_put(g2);
	cluster_down();
}

/* Members on the coordinator and on another node split the partitions and
 * together see every record exactly once; a leave without commit gives
 * its records to the other member. */
static void test_members_on_two_nodes(void)
{
	cluster_up(2);
	struct rep_group *g1 = group_of(1, "q", 1), *g2 = group_of(2, "q", 0);
	produce_all(0, 0, 10);
	produce_all(1, 0, 10);
	struct rep_member *m1, *m2;
	CHECK_EQ_INT(rep_member_join(g1, NULL, NULL, &m1), 0);
	CHECK_EQ_INT(rep_member_join(g2, NULL, NULL, &m2), 0);
	uint32_t a[NPARTS];
	CHECK_EQ_INT(rep_member_assignment(m1, a, NPARTS), 1); /* cooperative: one each */
	struct seen s = {0};
	int n2 = drain(m2, &s);
	CHECK_EQ_INT(n2, 10);
	CHECK_EQ_INT(rep_member_commit(m2), 0);
	int n1 = drain(m1, &s);
	CHECK_EQ_INT(n1, 10);
	CHECK_EQ_INT(rep_member_commit(m1), 0);
	produce_all(0, 10, 2);
	produce_all(1, 10, 2);
	int more2 = drain(m2, &s);
	CHECK_EQ_INT(more2, 2);
	rep_member_leave(m2, 0); /* killed: its 2 go to m1 */
	int more1 = drain(m1, &s);
	CHECK_EQ_INT(more1, 4);
	CHECK_EQ_INT(rep_member_commit(m1), 0);
	int dup = 0;
	for (int p = 0; p < NPARTS; p++)
		for (int k = 0; k < 12; k++) {
			CHECK(s.n[p][k] >= 1);
			dup += s.n[p][k] - 1;
		}
	CHECK_EQ_INT(dup, 2);
	rep_member_leave(m1, 1);
	rep_group_put(g1);
	rep_group_put(g2);
	cluster_down();
}

/* GROUP_MOVE: the new coordinator starts from the quorum's offsets, members
 * on both nodes join it transparently, nothing is lost, and only what was
 * taken and not committed comes again. */
static void test_coordinator_move(void)
{
	cluster_up(2);
	struct rep_group *g1 = group_of(1, "mv", 1), *g2 = group_of(2, "mv", 0);
	CHECK_EQ_INT(meta_coordinator("mv"), 1);
	produce_all(0, 0, 6);
	produce_all(1, 0, 6);
	struct rep_member *m1, *m2;
	CHECK_EQ_INT(rep_member_join(g1, NULL, NULL, &m1), 0);
	CHECK_EQ_INT(rep_member_join(g2, NULL, NULL, &m2), 0);
	struct seen s = {0};
	drain(m1, &s);
	drain(m2, &s);
	CHECK_EQ_INT(s.total, 12);
	CHECK_EQ_INT(rep_member_commit(m1), 0);
	CHECK_EQ_INT(rep_member_commit(m2), 0);
	for (int i = 0; i < 100 && (meta_offset("mv", 0) != 6 || meta_offset("mv", 1) != 6); i++)
		sleep_ms(20);
	produce_all(0, 6, 3);
	produce_all(1, 6, 3);
	int before = s.total;
	drain(m1, &s); /* taken, not committed: delivered again after the move */
	drain(m2, &s);
	int uncommitted = s.total - before;
	CHECK_EQ_INT(uncommitted, 6);

	struct meta_cmd cmd;
	group_cmd(&cmd, META_CMD_GROUP_MOVE, "mv", 2);
	apply_ok(&cmd);
	for (int i = 0; i < 100; i++) { /* until node 2 runs it */
		uint32_t n;
		if (rep_group_member_count(g2, &n) == 0)
			break;
		sleep_ms(20);
	}
	produce_all(0, 9, 1);
	produce_all(1, 9, 1);
	for (int i = 0; i < 50 && s.total < before + 6 + 8; i++) {
		drain(m1, &s);
		drain(m2, &s);
		sleep_ms(20);
	}
	CHECK_EQ_INT(s.total, before + 6 + 8); /* 6 again + 6 again + 2 new */
	for (int p = 0; p < NPARTS; p++)
		for (int k = 0; k < 10; k++)
			CHECK(s.n[p][k] >= 1);
	uint32_t n;
	CHECK_EQ_INT(rep_group_member_count(g2, &n), 0);
	CHECK_EQ_INT(n, 2);
	CHECK_EQ_INT(rep_group_member_count(g1, &n), -ESTALE);
	rep_member_leave(m1, 1);
	rep_member_leave(m2, 1);
	rep_group_put(g1);
	rep_group_put(g2);
	cluster_down();
}

/* A member's node dies: the coordinator drops its proxy without commit and
 * a live member gets its partitions and its uncommitted records. */
static void test_dead_node_member_dropped(void)
{
	cluster_up(2);
	struct rep_group *g1 = group_of(1, "d", 1), *g2 = group_of(2, "d", 0);
	produce_all(0, 0, 4);
	produce_all(1, 0, 4);
	struct rep_member *m1, *m2;
	CHECK_EQ_INT(rep_member_join(g1, NULL, NULL, &m1), 0);
	CHECK_EQ_INT(rep_member_join(g2, NULL, NULL, &m2), 0);
	struct seen s = {0};
	CHECK_EQ_INT(drain(m2, &s), 4); /* never committed */
	atomic_store(&nodes[2].alive, 0);
	uint32_t a[NPARTS];
	size_t k = 0;
	for (int i = 0; i < 100 && (k = rep_member_assignment(m1, a, NPARTS)) < NPARTS; i++)
		sleep_ms(20);
	CHECK_EQ_INT(k, NPARTS);
	CHECK_EQ_INT(drain(m1, &s), 8);
	node_stop(2); /* m2 and g2 go with the node */
	(void)g2;
	rep_member_leave(m1, 1);
	rep_group_put(g1);
	cluster_down();
}

/* Members of group name as the coordinator counts them (its proxies and
 * local members). */
static uint32_t coord_members(int node, const char *name)
{
	struct rep_group *g = group_of(node, name, 0);
	uint32_t n = 0;
	CHECK_EQ_INT(rep_group_member_count(g, &n), 0);
	rep_group_put(g);
	return n;
}

/* A JOIN whose answer is lost (the coordinator answers after the member's
 * timeout) still made a proxy there; the member closing before any other
 * request sends a LEAVE for it, so no proxy is left holding partitions that
 * nobody reads. */
static void test_lost_join_answer_no_ghost(void)
{
	req_timeout_ms = 200;
	cluster_up(2);
	struct rep_group *g = group_of(2, "ghost", 1);
	uint16_t c = meta_coordinator("ghost");
	CHECK(c == 1 || c == 2);
	int other = c == 1 ? 2 : 1;
	struct rep_group *go = group_of(other, "ghost", 0);
	atomic_store(&stall_join_ms, 600);
	struct rep_member *m;
	CHECK_EQ_INT(rep_member_join(go, NULL, NULL, &m), 0); /* timed out: joins at a read */
	atomic_store(&stall_join_ms, 0);
	for (int i = 0; i < 100 && coord_members(c, "ghost") == 0; i++)
		sleep_ms(20);
	CHECK_EQ_INT(coord_members(c, "ghost"), 1); /* the late JOIN made its proxy */
	rep_member_leave(m, 0);
	for (int i = 0; i < 100 && coord_members(c, "ghost") != 0; i++)
		sleep_ms(20);
	CHECK_EQ_INT(coord_members(c, "ghost"), 0);
	/* a member joining now gets every partition */
	struct rep_group *gc = group_of(c, "ghost", 0);
	struct rep_member *m2;
	CHECK_EQ_INT(rep_member_join(gc, NULL, NULL, &m2), 0);
	uint32_t a[NPARTS];
	CHECK_EQ_INT(rep_member_assignment(m2, a, NPARTS), NPARTS);
	rep_member_leave(m2, 0);
	rep_group_put(gc);
	rep_group_put(go);
	rep_group_put(g);
	cluster_down();
	req_timeout_ms = 1500;
}

/* rmdir of a group asks its coordinator: EBUSY with members there, then the
 * group goes from every node. */
static void test_delete_asks_coordinator(void)
{
	cluster_up(2);
	struct rep_group *g1 = group_of(1, "del", 1);
	struct rep_member *m1;
	CHECK_EQ_INT(rep_member_join(g1, NULL, NULL, &m1), 0);
	struct rep_topic *t2 = topic_of(2);
	CHECK_EQ_INT(rep_group_delete(t2, "del"), -EBUSY);
	rep_member_leave(m1, 1);
	CHECK_EQ_INT(rep_group_delete(t2, "del"), 0);
	struct rep_group *g;
	CHECK_EQ_INT(rep_group_get(t2, "del", 0, &g), -ENOENT);
	struct rep_topic *t1 = topic_of(1);
	for (int i = 0; i < 50 && !rep_group_deleted(g1); i++)
		sleep_ms(20);
	CHECK(rep_group_deleted(g1));
	CHECK_EQ_INT(rep_group_get(t1, "del", 0, &g), -ENOENT);
	rep_topic_put(t1);
	rep_topic_put(t2);
	rep_group_put(g1);
	cluster_down();
}

/* A reset written on a node whose group's coordinator, another node, has not
 * applied the group's creation yet (it is new) waits until it runs it,
 * instead of failing: the offsets write of a new group holds. */
static void test_reset_waits_for_new_coordinator(void)
{
	cluster_up(2);
	produce_all(0, 0, 5);
	produce_all(1, 0, 3);
	atomic_store(&deaf_node, 2);
	struct meta_cmd cmd;
	group_cmd(&cmd, META_CMD_GROUP_CREATE, "fresh", 2);
	apply_ok(&cmd);
	struct rep_group *g1 = group_of(1, "fresh", 0);
	struct later l = {.ms = 300, .node = 2};
	pthread_t th;
	pthread_create(&th, NULL, later_main, &l);
	CHECK_EQ_INT(rep_group_reset(g1, REP_RESET_LATEST, -1, 0), 0);
	pthread_join(th, NULL);
	for (int i = 0; i < 100 && (meta_offset("fresh", 0) != 5 || meta_offset("fresh", 1) != 3); i++)
		sleep_ms(20);
	CHECK_EQ_INT(meta_offset("fresh", 0), 5);
	CHECK_EQ_INT(meta_offset("fresh", 1), 3);
	rep_group_put(g1);
	cluster_down();
}

/* A member on node 2 reads a group node 1 coordinates; node 1 dies. Its
 * reads do not fail with ENOTCONN while the quorum moves the group: they
 * wait for the move and go on (what it took and had not committed comes
 * again). */
static void test_member_waits_out_coordinator_death(void)
{
	req_timeout_ms = 3000;
	cluster_up(2);
	struct rep_group *g1 = group_of(1, "cd", 1), *g2 = group_of(2, "cd", 0);
	CHECK_EQ_INT(meta_coordinator("cd"), 1);
	produce_all(0, 0, 4);
	produce_all(1, 0, 4);
	struct rep_member *m2;
	CHECK_EQ_INT(rep_member_join(g2, NULL, NULL, &m2), 0);
	struct seen s = {0};
	CHECK_EQ_INT(drain(m2, &s), 8);
	CHECK_EQ_INT(rep_member_commit(m2), 0);
	for (int i = 0; i < 100 && (meta_offset("cd", 0) != 4 || meta_offset("cd", 1) != 4); i++)
		sleep_ms(20);
	produce_all(0, 4, 2);
	rep_group_put(g1);
	atomic_store(&nodes[1].alive, 0);
	node_stop(1);
	struct later l = {.ms = 500, .node = 2};
	group_cmd(&l.cmd, META_CMD_GROUP_MOVE, "cd", 2);
	pthread_t th;
	pthread_create(&th, NULL, later_main, &l);
	char buf[256];
	struct rep_bulk b;
	CHECK_EQ_INT(rep_member_take_bulk(m2, buf, sizeof(buf), 1, '\t', &b), 1);
	CHECK(b.records == 1 && b.partition == 0 && b.first_offset == 4);
	pthread_join(th, NULL);
	rep_member_leave(m2, 1);
	rep_group_put(g2);
	cluster_down();
	req_timeout_ms = 1500;
}

/* Malformed group frames are refused (REP_EPROTO closes the connection). */
static void test_malformed_frames_refused(void)
{
	cluster_up(1);
	uint8_t junk[16] = {GRM_VERSION, 1, 2, 3};
	struct tr_frame f = {.peer = 1, .type = GRM_TAKE, .request_id = 7, .payload = junk,
	                     .len = sizeof(junk)};
	CHECK_EQ_INT(rep_groups_on_frame(nodes[1].rep, &f), REP_EPROTO);
	f.type = GRM_WAKE;
	f.request_id = 0;
	CHECK_EQ_INT(rep_groups_on_frame(nodes[1].rep, &f), REP_EPROTO);
	f.type = GRM_HELLO;
	CHECK_EQ_INT(rep_groups_on_frame(nodes[1].rep, &f), REP_EPROTO);
	f.type = TF_GROUP_MAX;
	f.request_id = 3;
	CHECK_EQ_INT(rep_groups_on_frame(nodes[1].rep, &f), REP_EPROTO);
	cluster_down();
}

int main(void)
{
	RUN(test_request_round_trip);
	RUN(test_request_malformed);
	RUN(test_responses_and_fuzz);
	RUN(test_remote_member_consumes);
	RUN(test_remote_wake);
	RUN(test_members_on_two_nodes);
	RUN(test_coordinator_move);
	RUN(test_dead_node_member_dropped);
	RUN(test_delete_asks_coordinator);
	RUN(test_lost_join_answer_no_ghost);
	RUN(test_reset_waits_for_new_coordinator);
	RUN(test_member_waits_out_coordinator_death);
	RUN(test_malformed_frames_refused);
	return unit_report("test_group_remote");
}
