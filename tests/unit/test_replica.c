/* test_replica.c - data replication (replicator/replica.c) on real nets:
 * up to three tr_nets on 127.0.0.1 in one process, each with its own
 * replica_set and partition log, over fakes of the cluster core (one shared
 * metadata state per test; cluster_submit applies commands with meta_apply
 * at once and hands the new partition state to every running node's
 * replica_update on its loop thread). Proves: a leader and two followers
 * replicate byte-identically and the HW is the min of the in-sync set; a
 * lagging follower is shrunk and, back and caught up, expanded; a produce
 * forwarded from a non-leader (or an observer) lands once even when retried
 * with the same producer sequence; acks all below min_insync is -ENOTCONN
 * after replica_wait_ms and succeeds once the set recovers; a follower with a
 * divergent tail from an old epoch truncates by TF_EPOCH_END (KIP-279 case)
 * and then matches the new leader; malformed frames are REP_EPROTO, unknown
 * partitions an answered -ENOENT. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../logstore/log.h"
#include "../../logstore/logstore.h"
#include "../../replicator/cluster.h"
#include "../../replicator/meta.h"
#include "unit.h"

#define CLUSTER_ID "replica-test"
#define WAIT_MS 5000          /* the bound on every wait */
#define MAX_NODES 3

/* ---- time -------------------------------------------------------------------------- */

static int64_t mono_ms(void)
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

#define WAIT_FOR(cond) ({                                                  \
	int64_t end_ = mono_ms() + WAIT_MS;                                 \
	while (!(cond) && mono_ms() < end_)                                 \
		sleep_ms(5);                                                \
	(cond);                                                             \
})

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

/* ---- the fakes of cluster.c and local.c ------------------------------------------------ */

struct rep_partition {
	atomic_int hw_moves;
	atomic_ullong records_in, bytes_in;
};

struct world;

struct cluster {
	uint16_t id;
	struct tr_net *net;
	struct cluster_options opts;
	struct replica_set *rs;
	struct world *w;
};

struct node {
	struct cluster c;
	struct rep_partition part;
	struct ls_partition *log;
	struct replica *rp;
	char dir[300];
	char addr[32];
	bool running;
	struct rep_marks mk;          /* what produce() appended through it */
};

struct submitted {
	enum meta_cmd_type type;
	uint16_t by, node;
	int rc;
};

struct world {
	pthread_rwlock_t lock;        /* the state */
	struct meta_state state;
	uint64_t topic_id;
	size_t n;
	struct node nodes[MAX_NODES];
	struct tr_peer_addr table[MAX_NODES];
	pthread_mutex_t mu;           /* subs */
	struct submitted subs[256];
	size_t nsubs;
};

struct tr_net *cluster_net(struct cluster *c) { return c->net; }
uint16_t cluster_node_id(const struct cluster *c) { return c->id; }
const struct cluster_options *cluster_opts(const struct cluster *c) { return &c->opts; }
int64_t cluster_now_ms(void) { return mono_ms(); }

static atomic_int cut_off_node; /* this node has known no quorum leader too long */
int cluster_cut_off(struct cluster *c) { return atomic_load(&cut_off_node) == c->id; }
int cluster_caught_up(struct cluster *c) { (void)c; return 1; }
int cluster_quorum_known(struct cluster *c) { (void)c; return 1; }

int cluster_node_alive(struct cluster *c, uint16_t id)
{
	pthread_rwlock_rdlock(&c->w->lock);
	const struct meta_node *n = meta_node_find(&c->w->state, id);
	int alive = n && n->alive;
	pthread_rwlock_unlock(&c->w->lock);
	return alive;
}

void cluster_read(struct cluster *c, void (*fn)(void *ctx, const struct meta_state *s), void *ctx)
{
	pthread_rwlock_rdlock(&c->w->lock);
	fn(ctx, &c->w->state);
	pthread_rwlock_unlock(&c->w->lock);
}

void rep_partition_hw_moved(struct rep_partition *p) { atomic_fetch_add(&p->hw_moves, 1); }
int rep_partition_gone(struct rep_partition *p) { (void)p; return 0; }
const char *rep_partition_topic_name(struct rep_partition *p) { (void)p; return "t"; }

void rep_partition_count_in(struct rep_partition *p, uint32_t records, uint64_t bytes)
{
	atomic_fetch_add(&p->records_in, records);
	atomic_fetch_add(&p->bytes_in, bytes);
}

/* The partition as the state has it now (topic w->topic_id, partition 0). */
static struct meta_partition current_mp(struct world *w)
{
	struct meta_partition mp = {0};
	pthread_rwlock_rdlock(&w->lock);
	const struct meta_topic *t = meta_topic_find(&w->state, w->topic_id);
	if (t)
		mp = t->parts[0];
	pthread_rwlock_unlock(&w->lock);
	return mp;
}

/* On node's loop thread: replica_update with the state as it is then (so
 * updates queued from several threads can never apply an old one last). */
static void update_on_loop(struct tr_net *net, void *ctx, int status)
{
	(void)net;
	struct node *nd = ctx;
	if (status == 0 && nd->rp) {
		struct meta_partition mp = current_mp(nd->c.w);
		replica_update(nd->rp, &mp);
	}
}

static void propagate(struct world *w)
{
	for (size_t i = 0; i < w->n; i++)
		if (w->nodes[i].running && tr_call(w->nodes[i].c.net, update_on_loop, &w->nodes[i]) < 0)
			fprintf(stderr, "propagate to node %zu failed\n", i + 1);
}

/* Applies cmd to the shared state at once, records it, tells every node;
 * returns meta_apply's code. */
static int apply_now(struct cluster *c, const struct meta_cmd *cmd)
{
	struct world *w = c->w;
	struct meta_result res;
	pthread_rwlock_wrlock(&w->lock);
	int rc = meta_apply(&w->state, cmd, &res);
	pthread_rwlock_unlock(&w->lock);
	pthread_mutex_lock(&w->mu);
	if (w->nsubs < sizeof(w->subs) / sizeof(w->subs[0]))
		w->subs[w->nsubs++] = (struct submitted){cmd->type, c->id, cmd->node, rc};
	pthread_mutex_unlock(&w->mu);
	if (rc == 0)
		propagate(w);
	return rc;
}

int cluster_submit(struct cluster *c, const struct meta_cmd *cmd)
{
	(void)apply_now(c, cmd);
	return 0;
}

struct submit_answer {
	void (*cb)(void *ctx, int rc);
	void *ctx;
	int rc;
};

static void submit_answer_run(struct tr_net *net, void *ctx, int status)
{
	(void)net;
	(void)status;
	struct submit_answer *a = ctx;
	a->cb(a->ctx, a->rc);
	free(a);
}

static atomic_int leader_refusal; /* != 0: cluster_submit_cb refuses leader changes so */

/* Applied at once, as cluster_submit; the answer comes on the loop thread. */
int cluster_submit_cb(struct cluster *c, const struct meta_cmd *cmd,
                      void (*cb)(void *ctx, int rc), void *ctx)
{
	struct submit_answer *a = malloc(sizeof(*a));
	if (!a)
		return -ENOMEM;
	int refusal = atomic_load(&leader_refusal);
	if (refusal && cmd->type == META_CMD_LEADER) { /* the quorum says no */
		pthread_mutex_lock(&c->w->mu);
		if (c->w->nsubs < sizeof(c->w->subs) / sizeof(c->w->subs[0]))
			c->w->subs[c->w->nsubs++] = (struct submitted){cmd->type, c->id, cmd->node,
			                                               refusal};
		pthread_mutex_unlock(&c->w->mu);
		*a = (struct submit_answer){cb, ctx, refusal};
	} else {
		*a = (struct submit_answer){cb, ctx, apply_now(c, cmd)};
	}
	if (tr_call(c->net, submit_answer_run, a) < 0)
		abort();
	return 0;
}

/* Commands of type about node submitted (and applied: rc 0) so far. */
static size_t submitted(struct world *w, enum meta_cmd_type type, uint16_t node)
{
	size_t k = 0;
	pthread_mutex_lock(&w->mu);
	for (size_t i = 0; i < w->nsubs; i++)
		if (w->subs[i].type == type && w->subs[i].node == node && w->subs[i].rc == 0)
			k++;
	pthread_mutex_unlock(&w->mu);
	return k;
}

/* ---- a world: nodes, one topic with one partition ---------------------------------------- */

struct layout {
	uint16_t leader;
	int32_t epoch;
	uint16_t replicas[MAX_NODES];
	unsigned nreplicas;
	uint16_t isr[MAX_NODES];
	unsigned nisr;
	unsigned lag_ms, wait_ms;
	unsigned rebalance_ms;        /* leader_rebalance_ms (0: never) */
	unsigned request_ms;          /* request_timeout_ms (0: 2000) */
};

static void world_init(struct world *w, size_t n, const struct layout *l)
{
	memset(w, 0, sizeof(*w));
	pthread_rwlock_init(&w->lock, NULL);
	pthread_mutex_init(&w->mu, NULL);
	meta_state_init(&w->state);
	w->n = n;
	const char *tmp = unit_tmpdir();
	struct meta_result res;
	for (size_t i = 0; i < n; i++) {
		struct node *nd = &w->nodes[i];
		nd->c.id = (uint16_t)(i + 1);
		nd->c.w = w;
		nd->c.opts.node_id = nd->c.id;
		nd->c.opts.replica_lag_ms = l->lag_ms;
		nd->c.opts.replica_wait_ms = l->wait_ms;
		nd->c.opts.request_timeout_ms = l->request_ms ? l->request_ms : 2000;
		nd->c.opts.leader_rebalance_ms = l->rebalance_ms;
		snprintf(nd->addr, sizeof(nd->addr), "127.0.0.1:%u", free_port());
		snprintf(nd->dir, sizeof(nd->dir), "%s/node%zu", tmp, i + 1);
		w->table[i] = (struct tr_peer_addr){nd->c.id, nd->addr};
		struct ls_config cfg;
		ls_config_default(&cfg);
		CHECK_EQ_INT(ls_partition_open(nd->dir, &cfg, &nd->log), 0);
		struct meta_cmd c;
		meta_cmd_init(&c, META_CMD_NODE_REGISTER);
		c.node = nd->c.id;
		c.term = 1;
		snprintf(c.address, sizeof(c.address), "%s", nd->addr);
		CHECK_EQ_INT(meta_apply(&w->state, &c, &res), 0);
	}
	struct meta_cmd c;
	meta_cmd_init(&c, META_CMD_TOPIC_CREATE);
	snprintf(c.name, sizeof(c.name), "t");
	c.config.partitions = 1;
	c.config.replication = 1;
	c.config.min_insync = 1;
	c.config.set_mask = META_PINNED_KEYS;
	CHECK_EQ_INT(meta_apply(&w->state, &c, &res), 0);
	w->topic_id = (uint64_t)res.value;
	/* then the partition exactly as the test wants it */
	struct meta_partition *mp = &w->state.topics[0].parts[0];
	memset(mp, 0, sizeof(*mp));
	mp->leader = l->leader;
	mp->leader_epoch = l->epoch;
	mp->nreplicas = (uint8_t)l->nreplicas;
	memcpy(mp->replicas, l->replicas, l->nreplicas * sizeof(uint16_t));
	mp->nisr = (uint8_t)l->nisr;
	memcpy(mp->isr, l->isr, l->nisr * sizeof(uint16_t));
}

static void node_start(struct world *w, size_t i);

/* world_init, then every node started. */
static void world_start(struct world *w, size_t n, const struct layout *l)
{
	world_init(w, n, l);
	for (size_t i = 0; i < n; i++)
		node_start(w, i);
}

static int on_frame(void *ctx, struct tr_net *net, const struct tr_frame *f)
{
	(void)net;
	struct node *nd = ctx;
	return replica_on_frame(nd->c.rs, f);
}

struct loop_call {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	void (*fn)(struct node *nd);
	struct node *nd;
};

static void loop_call_run(struct tr_net *net, void *ctx, int status)
{
	(void)net;
	struct loop_call *lc = ctx;
	if (status == 0)
		lc->fn(lc->nd);
	pthread_mutex_lock(&lc->mu);
	lc->done = true;
	pthread_cond_broadcast(&lc->cv);
	pthread_mutex_unlock(&lc->mu);
}

/* Runs fn(nd) on nd's loop thread and waits for it. */
static void on_loop(struct node *nd, void (*fn)(struct node *nd))
{
	struct loop_call lc = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, fn, nd};
	if (tr_call(nd->c.net, loop_call_run, &lc) < 0)
		abort();
	pthread_mutex_lock(&lc.mu);
	while (!lc.done)
		pthread_cond_wait(&lc.cv, &lc.mu);
	pthread_mutex_unlock(&lc.mu);
}

static void add_replica(struct node *nd)
{
	struct meta_partition mp = current_mp(nd->c.w);
	nd->rp = replica_add(nd->c.rs, &nd->part, nd->c.w->topic_id, 0, nd->log, &mp);
	CHECK(nd->rp != NULL);
}

static void remove_replica(struct node *nd)
{
	replica_remove(nd->rp);
	nd->rp = NULL;
}

static void node_start(struct world *w, size_t i)
{
	struct node *nd = &w->nodes[i];
	struct tr_options o = {
		.node_id = nd->c.id, .cluster_id = CLUSTER_ID, .listen = nd->addr,
		.peers = w->table, .npeers = w->n, .on_frame = on_frame, .ctx = nd,
		.connect_timeout_ms = 500, .hello_timeout_ms = 500, .backoff_min_ms = 20,
		.backoff_max_ms = 100, .down_after_ms = 60000,
	};
	CHECK_EQ_INT(tr_open(&o, &nd->c.net), 0);
	CHECK_EQ_INT(replica_set_open(&nd->c, &nd->c.rs), 0);
	CHECK_EQ_INT(tr_start(nd->c.net), 0);
	nd->running = true;
	on_loop(nd, add_replica);
}

static void node_stop(struct world *w, size_t i)
{
	struct node *nd = &w->nodes[i];
	if (!nd->running)
		return;
	on_loop(nd, remove_replica);
	nd->running = false;
	tr_close(nd->c.net);
	nd->c.net = NULL;
	replica_set_close(nd->c.rs);
	nd->c.rs = NULL;
}

static void world_free(struct world *w)
{
	for (size_t i = 0; i < w->n; i++)
		node_stop(w, i);
	for (size_t i = 0; i < w->n; i++)
		CHECK_EQ_INT(ls_partition_close(w->nodes[i].log), 0);
	meta_state_free(&w->state);
	pthread_rwlock_destroy(&w->lock);
	pthread_mutex_destroy(&w->mu);
}

/* ---- logs --------------------------------------------------------------------------------- */

static struct ls_partition_info info_of(struct ls_partition *log)
{
	struct ls_partition_info info;
	ls_partition_get_info(log, &info);
	return info;
}

static int64_t end_of(struct node *nd) { return info_of(nd->log).end_offset; }
static int64_t hw_of(struct node *nd) { return info_of(nd->log).high_watermark; }

/* Every batch of a log from its start, as replication would ship them. */
static size_t log_bytes(struct ls_partition *log, uint8_t *buf, size_t cap)
{
	size_t need = 0;
	uint64_t vp;
	ssize_t n = ls_partition_read_batches_at(log, info_of(log).start_offset, buf, cap, &need,
	                                         &vp);
	return n < 0 ? 0 : (size_t)n;
}

static bool same_log(struct ls_partition *a, struct ls_partition *b)
{
	static uint8_t ba[1 << 20], bb[1 << 20];
	size_t na = log_bytes(a, ba, sizeof(ba)), nb = log_bytes(b, bb, sizeof(bb));
	struct ls_partition_info ia = info_of(a), ib = info_of(b);
	return na == nb && memcmp(ba, bb, na) == 0 && ia.end_offset == ib.end_offset &&
	       ia.end_pos == ib.end_pos;
}

/* Produces n records "<tag>-<i>" as one batch through nd's replica. */
static int produce(struct node *nd, const char *tag, uint32_t n, const struct ls_producer *prod,
                   enum rep_acks acks, uint32_t min_insync, struct ls_append_result *res)
{
	char vals[8][32];
	struct ls_rec recs[8];
	for (uint32_t i = 0; i < n && i < 8; i++) {
		int len = snprintf(vals[i], sizeof(vals[i]), "%s-%u", tag, i);
		recs[i] = (struct ls_rec){NULL, 0, vals[i], (uint32_t)len};
	}
	struct ls_append_result ignored;
	if (!res)
		res = &ignored;
	int rc = replica_produce(nd->rp, recs, n, prod, acks, min_insync, res);
	if (rc == 0)
		replica_marks_add(nd->rp, &nd->mk, res);
	return rc;
}

/* Appends one batch straight to a log (no replication). */
static void append_raw(struct ls_partition *log, const char *value)
{
	struct ls_rec rec = {NULL, 0, value, (uint32_t)strlen(value)};
	struct ls_append_result res;
	CHECK_EQ_INT(ls_partition_append(log, &rec, 1, 1000, NULL, &res), 0);
}

/* Copies batches [from, to) of src onto the end of dst, as a follower would. */
static void copy_batches(struct ls_partition *src, struct ls_partition *dst, int64_t from,
                         int64_t to)
{
	static uint8_t buf[1 << 16];
	size_t need;
	uint64_t vp;
	ssize_t n = ls_partition_read_batches_at(src, from, buf, sizeof(buf), &need, &vp);
	CHECK(n > 0);
	/* keep whole batches below `to`: v2 batch = 8 base offset + 4 length + length */
	size_t at = 0;
	while (at + 12 <= (size_t)n) {
		int64_t base = 0;
		uint32_t blen = 0;
		for (int k = 0; k < 8; k++)
			base = base << 8 | buf[at + (size_t)k];
		for (int k = 8; k < 12; k++)
			blen = blen << 8 | buf[at + (size_t)k];
		if (base >= to)
			break;
		at += 12 + blen;
	}
	CHECK_EQ_INT(ls_partition_append_batches_at(dst, buf, at, vp), 0);
}

/* ---- tests ---------------------------------------------------------------------------------- */

/* As the controller would once node 1 is down: node 2 leads epoch 1 with
 * in-sync set {2, 3}; every running node is told. */
static void fail_over_to_2(struct world *w)
{
	pthread_rwlock_wrlock(&w->lock);
	struct meta_partition *mp = &w->state.topics[0].parts[0];
	mp->leader = 2;
	mp->leader_epoch = 1;
	mp->nisr = 2;
	mp->isr[0] = 2;
	mp->isr[1] = 3;
	pthread_rwlock_unlock(&w->lock);
	propagate(w);
}

static const struct layout three_in_sync = {
	.leader = 1, .epoch = 0, .replicas = {1, 2, 3}, .nreplicas = 3, .isr = {1, 2, 3},
	.nisr = 3, .lag_ms = 10000, .wait_ms = 3000,
};

/* A leader and two followers end byte-identical with the HW at the end
 * everywhere; with one in-sync follower stopped the leader's HW stays at
 * that follower's end (min of the isr) while the other follower has more. */
static void test_three_nodes_replicate_identically_hw_is_min_of_isr(void)
{
	static struct world w;
	world_start(&w, 3, &three_in_sync);
	struct node *l = &w.nodes[0], *f2 = &w.nodes[1], *f3 = &w.nodes[2];
	for (int b = 0; b < 5; b++)
		CHECK_EQ_INT(produce(l, "a", 3, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK_EQ_INT(replica_commit(l->rp, REP_ACKS_ALL, 1, &l->mk), 0);
	CHECK_EQ_INT(hw_of(l), 15);
	CHECK(WAIT_FOR(hw_of(f2) == 15 && hw_of(f3) == 15));
	CHECK(same_log(l->log, f2->log));
	CHECK(same_log(l->log, f3->log));
	CHECK_EQ_INT(atomic_load(&l->part.records_in), 15);
	CHECK(atomic_load(&f2->part.hw_moves) > 0);

	node_stop(&w, 2);
	CHECK_EQ_INT(produce(l, "b", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK(WAIT_FOR(end_of(f2) == 17));
	sleep_ms(300);
	CHECK_EQ_INT(end_of(l), 17);
	CHECK_EQ_INT(hw_of(l), 15);   /* node 3 (in sync, stopped) is at 15 */
	CHECK_EQ_INT(hw_of(f2), 15);
	struct rep_partition_state st;
	replica_state(l->rp, &st);
	CHECK_EQ_INT(st.leader, 1);
	CHECK_EQ_INT(st.nisr, 3);
	CHECK_EQ_INT(st.log.end_offset, 17);
	world_free(&w);
}

/* A follower that stops fetching is shrunk after replica_lag_ms (and the
 * HW moves on without it); back and caught up, it is expanded again. */
static void test_lagging_follower_shrunk_then_expanded(void)
{
	static struct world w;
	struct layout lay = three_in_sync;
	lay.lag_ms = 600;
	world_start(&w, 3, &lay);
	struct node *l = &w.nodes[0], *f3 = &w.nodes[2];
	CHECK_EQ_INT(produce(l, "a", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK_EQ_INT(replica_commit(l->rp, REP_ACKS_ALL, 1, &l->mk), 0);
	node_stop(&w, 2);
	CHECK_EQ_INT(produce(l, "b", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK(WAIT_FOR(submitted(&w, META_CMD_ISR_SHRINK, 3) == 1));
	CHECK(WAIT_FOR(hw_of(l) == 4));
	CHECK_EQ_INT(current_mp(&w).nisr, 2);
	CHECK_EQ_INT(submitted(&w, META_CMD_ISR_SHRINK, 2), 0);

	node_start(&w, 2);
	CHECK(WAIT_FOR(submitted(&w, META_CMD_ISR_EXPAND, 3) == 1));
	CHECK_EQ_INT(current_mp(&w).nisr, 3);
	CHECK(WAIT_FOR(hw_of(f3) == 4));
	CHECK(same_log(l->log, f3->log));
	world_free(&w);
}

/* A produce on a follower (and on an observer) is forwarded to the leader;
 * the same producer sequence again is a duplicate with the original
 * offsets, appended once; acks-all commit there waits for its local HW. */
static void test_forwarded_produce_lands_once(void)
{
	static struct world w;
	struct layout lay = {.leader = 1, .replicas = {1, 2}, .nreplicas = 2, .isr = {1, 2},
	                     .nisr = 2, .lag_ms = 10000, .wait_ms = 3000};
	world_start(&w, 3, &lay);
	struct node *l = &w.nodes[0], *f = &w.nodes[1], *obs = &w.nodes[2];
	struct ls_producer prod = {42, 0, 0};
	struct ls_append_result res;
	CHECK_EQ_INT(produce(f, "x", 2, &prod, REP_ACKS_ALL, 2, &res), 0);
	CHECK_EQ_INT(res.base_offset, 0);
	CHECK_EQ_INT(res.last_offset, 1);
	CHECK_EQ_INT(res.duplicate, 0);
	CHECK_EQ_INT(res.leader_epoch, 0); /* the leader's epoch comes back with it */
	CHECK_EQ_INT(produce(f, "x", 2, &prod, REP_ACKS_ALL, 2, &res), 0); /* a retry */
	CHECK_EQ_INT(res.duplicate, 1);
	CHECK_EQ_INT(res.leader_epoch, 0);
	CHECK_EQ_INT(res.base_offset, 0);
	CHECK_EQ_INT(res.last_offset, 1);
	CHECK_EQ_INT(end_of(l), 2);
	CHECK_EQ_INT(atomic_load(&l->part.records_in), 2);
	CHECK_EQ_INT(atomic_load(&f->part.records_in), 0);
	CHECK_EQ_INT(replica_commit(f->rp, REP_ACKS_ALL, 1, &f->mk), 0);
	CHECK(hw_of(f) >= 2);

	struct ls_producer prod2 = {43, 0, 0};
	CHECK_EQ_INT(produce(obs, "y", 3, &prod2, REP_ACKS_ALL, 2, &res), 0);
	CHECK_EQ_INT(res.base_offset, 2);
	CHECK_EQ_INT(replica_commit(obs->rp, REP_ACKS_ALL, 1, &obs->mk), 0);
	CHECK_EQ_INT(hw_of(obs), 5);
	CHECK(same_log(l->log, obs->log));
	CHECK(WAIT_FOR(same_log(l->log, f->log)));
	CHECK_EQ_INT(current_mp(&w).nisr, 2); /* the observer never joins */
	world_free(&w);
}

/* Holds a node's loop thread until released: frames to it stay unread, as
 * when it is cut off from the network. */
struct stall {
	atomic_bool held, release;
};

static void stall_run(struct tr_net *net, void *ctx, int status)
{
	(void)net;
	(void)status;
	struct stall *s = ctx;
	atomic_store(&s->held, true);
	while (!atomic_load(&s->release))
		sleep_ms(5);
}

struct produce_call {
	struct node *nd;
	struct ls_producer prod;
	struct ls_append_result res;
	atomic_bool done;
	int rc;
};

static void *produce_main(void *arg)
{
	struct produce_call *a = arg;
	a->rc = produce(a->nd, "f", 2, &a->prod, REP_ACKS_ALL, 2, &a->res);
	atomic_store(&a->done, true);
	return NULL;
}

/* A forward in flight to a leader that does not answer (cut off) is sent
 * to the new leader as soon as the metadata names it, not after the
 * request timeout; the old leader, back, appends nothing of it twice. */
static void test_forward_follows_a_leader_change(void)
{
	static struct world w;
	struct layout lay = three_in_sync;
	lay.wait_ms = 60000;
	lay.request_ms = 60000; /* a forward that waits for it fails WAIT_FOR */
	world_start(&w, 3, &lay);
	struct node *n1 = &w.nodes[0], *n2 = &w.nodes[1], *n3 = &w.nodes[2];
	struct ls_producer prod = {7, 0, 0};
	CHECK_EQ_INT(produce(n3, "a", 2, &prod, REP_ACKS_ALL, 2, NULL), 0);
	CHECK(WAIT_FOR(hw_of(n2) == 2 && hw_of(n3) == 2));

	struct stall st = {false, false};
	CHECK_EQ_INT(tr_call(n1->c.net, stall_run, &st), 0);
	CHECK(WAIT_FOR(atomic_load(&st.held)));
	struct produce_call pc = {.nd = n3, .prod = {8, 0, 0}};
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, produce_main, &pc), 0);
	sleep_ms(200); /* the forward to node 1 is sent and waits */
	CHECK(!atomic_load(&pc.done));
	fail_over_to_2(&w);
	bool done = WAIT_FOR(atomic_load(&pc.done));
	atomic_store(&st.release, true);
	pthread_join(t, NULL);
	CHECK(done);
	CHECK_EQ_INT(pc.rc, 0);
	CHECK_EQ_INT(pc.res.leader_epoch, 1);
	CHECK_EQ_INT(pc.res.base_offset, 2);
	CHECK(WAIT_FOR(same_log(n1->log, n2->log) && hw_of(n1) == 4));
	CHECK_EQ_INT(end_of(n2), 4);
	world_free(&w);
}

/* A follower that stops (controlled shutdown) leaves the in-sync set and
 * stays out: its last fetch, still within replica_lag_ms, does not put it
 * back, so high watermarks do not wait for a node that fetches no more. */
static void test_stopping_follower_stays_out_of_isr(void)
{
	static struct world w;
	struct layout lay = three_in_sync; /* lag 10 s: its last fetch stays fresh */
	world_start(&w, 3, &lay);
	struct node *n1 = &w.nodes[0], *n3 = &w.nodes[2];
	CHECK_EQ_INT(produce(n1, "a", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK(WAIT_FOR(hw_of(n3) == 2));
	CHECK_EQ_INT(replica_set_drain(n3->c.rs, 3000), 0);
	CHECK_EQ_INT(current_mp(&w).nisr, 2);
	sleep_ms(1000); /* the leader's in-sync check runs every 250 ms */
	CHECK_EQ_INT(submitted(&w, META_CMD_ISR_EXPAND, 3), 0);
	CHECK_EQ_INT(current_mp(&w).nisr, 2);
	/* writes commit on the two left */
	CHECK_EQ_INT(produce(n1, "b", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK_EQ_INT(replica_commit(n1->rp, REP_ACKS_ALL, 2, &n1->mk), 0);
	world_free(&w);
}

/* acks all with fewer in-sync replicas than min_insync: -ENOTCONN after
 * replica_wait_ms with nothing appended (also when forwarded); acks leader
 * goes through; once the follower is back and expanded, acks all too. */
static void test_acks_all_below_min_insync(void)
{
	static struct world w;
	struct layout lay = {.leader = 1, .replicas = {1, 2}, .nreplicas = 2, .isr = {1},
	                     .nisr = 1, .lag_ms = 10000, .wait_ms = 400};
	world_init(&w, 3, &lay);
	node_start(&w, 0);
	node_start(&w, 2); /* an observer */
	struct node *l = &w.nodes[0], *obs = &w.nodes[2];
	int64_t t0 = mono_ms();
	CHECK_EQ_INT(produce(l, "a", 1, NULL, REP_ACKS_ALL, 2, NULL), -ENOTCONN);
	CHECK(mono_ms() - t0 >= 380);
	CHECK_EQ_INT(end_of(l), 0);
	struct ls_producer prod = {7, 0, 0};
	CHECK_EQ_INT(produce(obs, "a", 1, &prod, REP_ACKS_ALL, 2, NULL), -ENOTCONN);
	CHECK_EQ_INT(end_of(l), 0);
	CHECK_EQ_INT(produce(l, "b", 1, NULL, REP_ACKS_LEADER, 2, NULL), 0);
	CHECK_EQ_INT(end_of(l), 1);
	CHECK_EQ_INT(hw_of(l), 1); /* the isr is the leader alone */

	node_start(&w, 1);
	CHECK(WAIT_FOR(submitted(&w, META_CMD_ISR_EXPAND, 2) == 1));
	CHECK_EQ_INT(produce(l, "c", 1, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK_EQ_INT(replica_commit(l->rp, REP_ACKS_ALL, 1, &l->mk), 0);
	CHECK_EQ_INT(hw_of(l), 2);
	world_free(&w);
}

struct commit_call {
	struct node *nd;
	atomic_bool done;
	int rc;
};

static void *commit_main(void *arg)
{
	struct commit_call *a = arg;
	a->rc = replica_commit(a->nd->rp, REP_ACKS_ALL, 2, &a->nd->mk);
	atomic_store(&a->done, true);
	return NULL;
}

/* Records appended while two were in sync, then the in-sync set falls to the
 * leader alone (a follower restarting): the commit waits for the follower
 * to catch up and rejoin, with the records, and succeeds, instead of failing
 * at once (it would fail after replica_wait_ms). */
static void test_commit_waits_for_insync_to_regrow(void)
{
	static struct world w;
	struct layout lay = {.leader = 1, .replicas = {1, 2}, .nreplicas = 2, .isr = {1, 2},
	                     .nisr = 2, .lag_ms = 10000, .wait_ms = 60000};
	world_start(&w, 2, &lay);
	struct node *l = &w.nodes[0], *f = &w.nodes[1];
	node_stop(&w, 1);
	CHECK_EQ_INT(produce(l, "a", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	/* the controller drops the stopped follower */
	pthread_rwlock_wrlock(&w.lock);
	w.state.topics[0].parts[0].nisr = 1;
	pthread_rwlock_unlock(&w.lock);
	propagate(&w);
	CHECK(WAIT_FOR(hw_of(l) == 2));
	struct commit_call cc = {.nd = l};
	pthread_t t;
	CHECK_EQ_INT(pthread_create(&t, NULL, commit_main, &cc), 0);
	sleep_ms(300);
	CHECK(!atomic_load(&cc.done)); /* (it failed at once before) */
	node_start(&w, 1);
	CHECK(WAIT_FOR(atomic_load(&cc.done)));
	pthread_join(t, NULL);
	CHECK_EQ_INT(cc.rc, 0);
	CHECK_EQ_INT(current_mp(&w).nisr, 2);
	CHECK(same_log(l->log, f->log));
	world_free(&w);
}

/* Node 1 got only A from the epoch-0 leader, then led epoch 1 alone (C1,
 * C2); node 2 got A and B and leads epoch 2 (D). Node 1 asks the end of its
 * epoch 1; node 2 answers epoch 0 ending at 2, node 1's own epoch 0 ends at
 * 1, so it truncates to 1 (not 2: C1 would survive) and then matches. */
static void test_divergent_tail_truncated_by_epoch(void)
{
	static struct world w;
	struct layout lay = {.leader = 2, .epoch = 2, .replicas = {2, 1}, .nreplicas = 2,
	                     .isr = {2}, .nisr = 1, .lag_ms = 10000, .wait_ms = 3000};
	world_init(&w, 2, &lay);
	struct node *n1 = &w.nodes[0], *n2 = &w.nodes[1];
	struct ls_partition *old;
	struct ls_config cfg;
	ls_config_default(&cfg);
	char dir[400];
	snprintf(dir, sizeof(dir), "%s-old-leader", n1->dir);
	CHECK_EQ_INT(ls_partition_open(dir, &cfg, &old), 0);
	append_raw(old, "A");
	append_raw(old, "B");
	copy_batches(old, n1->log, 0, 1);
	copy_batches(old, n2->log, 0, 2);
	CHECK_EQ_INT(ls_partition_set_leader_epoch(n1->log, 1), 0);
	append_raw(n1->log, "C1");
	append_raw(n1->log, "C2");
	CHECK_EQ_INT(ls_partition_set_leader_epoch(n2->log, 2), 0);
	append_raw(n2->log, "D");
	CHECK_EQ_INT(end_of(n1), 3);
	CHECK_EQ_INT(end_of(n2), 3);
	CHECK(!same_log(n1->log, n2->log));

	node_start(&w, 1);
	node_start(&w, 0);
	CHECK(WAIT_FOR(same_log(n1->log, n2->log)));
	CHECK(WAIT_FOR(hw_of(n1) == 3));
	CHECK_EQ_INT(ls_partition_epoch_end_offset(n1->log, 0), 2);
	CHECK(WAIT_FOR(submitted(&w, META_CMD_ISR_EXPAND, 1) == 1));
	CHECK_EQ_INT(produce(n1, "E", 1, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK(WAIT_FOR(end_of(n1) == 4 && same_log(n1->log, n2->log)));
	world_free(&w);
	CHECK_EQ_INT(ls_partition_close(old), 0);
}

/* A leader that was paused (or cut off) appends at its old epoch after its
 * successor took over: when it comes back it follows, truncates and
 * fetches the new leader's records, whose offsets pass what it appended.
 * The commit of what a file appended there fails (EIO) instead of taking
 * the new leader's records for its own; an append of the old epoch that the
 * successor has commits; and a follower whose forward the old leader
 * answered fails the same way. */
static void test_stale_leader_appends_fail_their_commit(void)
{
	static struct world w;
	struct layout lay = {.leader = 1, .epoch = 0, .replicas = {1, 2, 3}, .nreplicas = 3,
	                     .isr = {1, 2, 3}, .nisr = 3, .lag_ms = 10000, .wait_ms = 1500};
	world_start(&w, 3, &lay);
	struct node *n1 = &w.nodes[0], *n2 = &w.nodes[1], *n3 = &w.nodes[2];
	CHECK_EQ_INT(produce(n1, "a", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK_EQ_INT(replica_commit(n1->rp, REP_ACKS_ALL, 1, &n1->mk), 0);
	CHECK(WAIT_FOR(hw_of(n2) == 2 && hw_of(n3) == 2));

	/* node 1 stops; node 2 leads epoch 1 and appends three records */
	node_stop(&w, 0);
	fail_over_to_2(&w);
	int rc = -1;
	for (int t = 0; t < 50 && rc != 0; t++) { /* until node 2 knows it leads */
		struct rep_partition_state st;
		replica_state(n2->rp, &st);
		if (st.leader == 2 && st.leader_epoch == 1)
			rc = produce(n2, "b", 3, NULL, REP_ACKS_ALL, 2, NULL);
		else
			sleep_ms(20);
	}
	CHECK_EQ_INT(rc, 0);
	CHECK(WAIT_FOR(hw_of(n2) == 5 && hw_of(n3) == 5));

	/* what node 1 appended meanwhile, as the leader of epoch 0 it still
	 * thought it was: offsets 2 and 3, its file's mark (end 4, epoch 0);
	 * and what node 3 had forwarded to it and been answered for */
	struct ls_append_result res;
	struct ls_rec rec[2] = {{NULL, 0, "stale-0", 7}, {NULL, 0, "stale-1", 7}};
	CHECK_EQ_INT(ls_partition_append(n1->log, rec, 2, 1000, NULL, &res), 0);
	CHECK_EQ_INT(res.last_offset, 3);
	CHECK_EQ_INT(res.leader_epoch, 0);
	struct rep_marks gone = {.m = {{res.last_offset + 1, res.leader_epoch}}, .n = 1};
	struct rep_marks kept = {.m = {{2, 0}}, .n = 1}; /* "a": node 2 has it at epoch 0 */
	struct rep_marks forwarded = gone;

	node_start(&w, 0);
	CHECK(WAIT_FOR(same_log(n1->log, n2->log) && hw_of(n1) == 5));
	CHECK_EQ_INT(ls_partition_epoch_of(n1->log, 3), 1);
	CHECK_EQ_INT(ls_partition_epoch_of(n1->log, 1), 0);
	CHECK_EQ_INT(replica_wait_acked(n1->rp, REP_ACKS_ALL, 1, &gone), -EIO);
	CHECK_EQ_INT(replica_commit(n1->rp, REP_ACKS_ALL, 1, &gone), -EIO);
	CHECK_EQ_INT(replica_commit(n1->rp, REP_ACKS_ALL, 1, &kept), 0);
	CHECK_EQ_INT(replica_wait_acked(n3->rp, REP_ACKS_ALL, 1, &forwarded), -EIO);
	CHECK_EQ_INT(replica_wait_acked(n3->rp, REP_ACKS_LEADER, 1, &forwarded), 0);

	/* a later append through node 3 at epoch 1 settles the old mark as gone:
	 * the file's commit fails even though its newest append committed */
	CHECK_EQ_INT(produce(n3, "c", 1, NULL, REP_ACKS_ALL, 2, &res), 0);
	CHECK_EQ_INT(res.leader_epoch, 1);
	n3->mk = forwarded;
	replica_marks_add(n3->rp, &n3->mk, &res);
	CHECK_EQ_INT(n3->mk.lost, 1);
	CHECK_EQ_INT(n3->mk.n, 1);
	CHECK_EQ_INT(replica_wait_acked(n3->rp, REP_ACKS_ALL, 1, &n3->mk), -EIO);
	world_free(&w);
}

struct acked_call {
	struct replica *rp;
	struct rep_marks mk;
	atomic_bool done;
	int rc;
};

static void *acked_main(void *arg)
{
	struct acked_call *a = arg;
	a->rc = replica_wait_acked(a->rp, REP_ACKS_ALL, 1, &a->mk);
	atomic_store(&a->done, true);
	return NULL;
}

/* A write the old leader appended but nobody fetched before a failover is
 * gone once the new leader's epoch starts below its end; with no more
 * writes the high watermark never passes it, yet close() on the new leader
 * and on a follower of it reports EIO at once (each knows where the old
 * epoch ended), not after replica_wait_ms; and a second close of the same
 * file does not wait again. */
static void test_write_lost_in_failover_fails_at_once(void)
{
	static struct world w;
	struct layout lay = three_in_sync;
	lay.wait_ms = 60000; /* a commit that waits for it fails WAIT_FOR */
	world_start(&w, 3, &lay);
	struct node *n2 = &w.nodes[1], *n3 = &w.nodes[2];
	CHECK_EQ_INT(produce(&w.nodes[0], "a", 2, NULL, REP_ACKS_ALL, 2, NULL), 0);
	CHECK(WAIT_FOR(hw_of(n2) == 2 && hw_of(n3) == 2));
	node_stop(&w, 0);
	/* node 1 had answered a forward from each with offset 2 at epoch 0 */
	fail_over_to_2(&w);
	struct acked_call c2 = {.rp = n2->rp, .mk = {.m = {{3, 0}}, .n = 1}};
	struct acked_call c3 = {.rp = n3->rp, .mk = {.m = {{3, 0}}, .n = 1}};
	struct acked_call kept = {.rp = n3->rp, .mk = {.m = {{2, 0}}, .n = 1}};
	pthread_t t2, t3, tk;
	CHECK_EQ_INT(pthread_create(&t2, NULL, acked_main, &c2), 0);
	CHECK_EQ_INT(pthread_create(&t3, NULL, acked_main, &c3), 0);
	CHECK_EQ_INT(pthread_create(&tk, NULL, acked_main, &kept), 0);
	bool settled = WAIT_FOR(atomic_load(&c2.done) && atomic_load(&c3.done) &&
	                        atomic_load(&kept.done));
	CHECK(settled); /* (else they wait for replica_wait_ms) */
	pthread_join(t2, NULL);
	pthread_join(t3, NULL);
	pthread_join(tk, NULL);
	CHECK_EQ_INT(c2.rc, -EIO);
	CHECK_EQ_INT(c3.rc, -EIO);
	CHECK_EQ_INT(kept.rc, 0);
	CHECK_EQ_INT(c3.mk.lost, 1);
	CHECK_EQ_INT(replica_wait_acked(n3->rp, REP_ACKS_ALL, 1, &c3.mk), -EIO);
	world_free(&w);
}

/* A leader cut off from the metadata quorum (its successor may be elected
 * already) takes no write, not even under acks: leader, neither its own nor
 * a forwarded one: -ENOTCONN after replica_wait_ms, nothing appended. */
static void test_cut_off_leader_takes_nothing(void)
{
	static struct world w;
	struct layout lay = three_in_sync;
	lay.wait_ms = 400;
	world_start(&w, 3, &lay);
	struct node *l = &w.nodes[0], *f = &w.nodes[1];
	CHECK_EQ_INT(produce(l, "a", 1, NULL, REP_ACKS_LEADER, 1, NULL), 0);
	atomic_store(&cut_off_node, 1);
	CHECK_EQ_INT(produce(l, "b", 1, NULL, REP_ACKS_LEADER, 1, NULL), -ENOTCONN);
	struct ls_producer prod = {9, 0, 0};
	CHECK_EQ_INT(produce(f, "c", 1, &prod, REP_ACKS_LEADER, 1, NULL), -ENOTCONN);
	CHECK_EQ_INT(end_of(l), 1);
	atomic_store(&cut_off_node, 0);
	CHECK_EQ_INT(produce(f, "c", 1, &prod, REP_ACKS_LEADER, 1, NULL), 0);
	CHECK_EQ_INT(end_of(l), 2);
	world_free(&w);
}

/* Writers through one node until *stop, counting records; the first error
 * stops it and is kept in rc. */
struct writer {
	struct node *nd;
	atomic_bool *stop;
	const char *tag;
	int rc;
	uint32_t records;
};

static void *writer_main(void *arg)
{
	struct writer *wr = arg;
	while (!atomic_load(wr->stop) && wr->rc == 0) {
		wr->rc = produce(wr->nd, wr->tag, 2, NULL, REP_ACKS_ALL, 2, NULL);
		if (wr->rc == 0)
			wr->records += 2;
	}
	return NULL;
}

/* Two writers: one through the leader (node 2), one forwarding (node 3). */
struct writers {
	atomic_bool stop;
	struct writer w[2];
	pthread_t t[2];
};

static void writers_start(struct writers *ws, struct world *w)
{
	atomic_init(&ws->stop, false);
	ws->w[0] = (struct writer){&w->nodes[1], &ws->stop, "on-leader", 0, 0};
	ws->w[1] = (struct writer){&w->nodes[2], &ws->stop, "forwarded", 0, 0};
	for (int i = 0; i < 2; i++)
		CHECK_EQ_INT(pthread_create(&ws->t[i], NULL, writer_main, &ws->w[i]), 0);
}

/* Stops them; both must have written without an error. */
static void writers_stop(struct writers *ws)
{
	atomic_store(&ws->stop, true);
	for (int i = 0; i < 2; i++) {
		pthread_join(ws->t[i], NULL);
		CHECK_EQ_INT(ws->w[i].rc, 0);
	}
}

static uint32_t writers_records(const struct writers *ws)
{
	return ws->w[0].records + ws->w[1].records;
}

/* Partition 0 led by node 2, whose preferred leader is node 1. */
static const struct layout led_by_2 = {
	.leader = 2, .epoch = 1, .replicas = {1, 2, 3}, .nreplicas = 3, .isr = {1, 2, 3},
	.nisr = 3, .lag_ms = 10000, .wait_ms = 3000, .rebalance_ms = 300,
};

/* A leader that is not its partition's preferred replica (the first of its
 * replicas) leads until the preferred one has been in sync for
 * leader_rebalance_ms, then hands the leadership to it while two writers
 * (one on the leader, one forwarding) go on: no write fails, nothing is
 * truncated (every acks: all mark commits), the logs end identical. */
static void test_leadership_returns_to_preferred_replica(void)
{
	static struct world w;
	static struct writers ws;
	world_init(&w, 3, &led_by_2);
	node_start(&w, 1);
	node_start(&w, 2);
	struct node *n1 = &w.nodes[0], *n2 = &w.nodes[1], *n3 = &w.nodes[2];
	writers_start(&ws, &w);

	/* node 1, the preferred leader, is not fetching: no handoff */
	sleep_ms(900);
	CHECK_EQ_INT(submitted(&w, META_CMD_LEADER, 1), 0);
	CHECK_EQ_INT(current_mp(&w).leader, 2);

	/* it starts, catches up, stays in sync: it leads again, once */
	node_start(&w, 0);
	CHECK(WAIT_FOR(current_mp(&w).leader == 1));
	sleep_ms(300); /* writers go on through the new leader */
	writers_stop(&ws);
	CHECK(ws.w[0].records > 0 && ws.w[1].records > 0);
	struct meta_partition mp = current_mp(&w);
	CHECK_EQ_INT(mp.leader_epoch, 2);
	CHECK_EQ_INT(submitted(&w, META_CMD_LEADER, 1), 1);
	CHECK_EQ_INT(replica_commit(n2->rp, REP_ACKS_ALL, 2, &n2->mk), 0);
	CHECK_EQ_INT(replica_commit(n3->rp, REP_ACKS_ALL, 2, &n3->mk), 0);
	CHECK(WAIT_FOR(same_log(n1->log, n2->log) && same_log(n1->log, n3->log)));
	CHECK_EQ_INT(end_of(n1), (int64_t)writers_records(&ws));
	CHECK(WAIT_FOR(hw_of(n1) == end_of(n1)));
	sleep_ms(500); /* the preferred leader keeps it */
	CHECK_EQ_INT(current_mp(&w).leader_epoch, 2);
	world_free(&w);
}

/* A preferred replica that loses the leadership soon after getting it back
 * (a flapping node) gets it back only after twice as long in sync. */
static void test_flapping_preferred_waits_longer(void)
{
	static struct world w;
	struct layout lay = led_by_2;
	lay.rebalance_ms = 1000;
	world_start(&w, 3, &lay);
	CHECK(WAIT_FOR(current_mp(&w).leader == 1));
	/* node 1 "fails" at once: the controller moves the leadership to node 2 */
	pthread_rwlock_wrlock(&w.lock);
	struct meta_partition *mp = &w.state.topics[0].parts[0];
	mp->leader = 2;
	mp->leader_epoch++;
	pthread_rwlock_unlock(&w.lock);
	propagate(&w);
	sleep_ms(1600); /* in sync all along: 1000 ms would have been enough before */
	CHECK_EQ_INT(submitted(&w, META_CMD_LEADER, 1), 1);
	CHECK_EQ_INT(current_mp(&w).leader, 2);
	CHECK(WAIT_FOR(current_mp(&w).leader == 1)); /* after 2000 ms */
	CHECK_EQ_INT(submitted(&w, META_CMD_LEADER, 1), 2);
	world_free(&w);
}

/* Submissions of type about node, applied or refused. */
static size_t attempted(struct world *w, enum meta_cmd_type type, uint16_t node)
{
	size_t k = 0;
	pthread_mutex_lock(&w->mu);
	for (size_t i = 0; i < w->nsubs; i++)
		k += w->subs[i].type == type && w->subs[i].node == node;
	pthread_mutex_unlock(&w->mu);
	return k;
}

/* A handoff the quorum refuses (as when the preferred replica died meanwhile)
 * ends: the leader keeps its leadership and appends again, so writers go on
 * past replica_wait_ms without an error. */
static void test_refused_handoff_resumes_appends(void)
{
	static struct world w;
	static struct writers ws;
	struct layout lay = led_by_2;
	lay.wait_ms = 1000;
	lay.rebalance_ms = 200;
	atomic_store(&leader_refusal, -EHOSTDOWN);
	world_start(&w, 3, &lay);
	writers_start(&ws, &w);
	CHECK(WAIT_FOR(attempted(&w, META_CMD_LEADER, 1) >= 2));
	uint32_t before = writers_records(&ws);
	sleep_ms(1500); /* longer than replica_wait_ms: a writer left waiting fails */
	writers_stop(&ws);
	CHECK(writers_records(&ws) > before);
	CHECK_EQ_INT(submitted(&w, META_CMD_LEADER, 1), 0);
	CHECK_EQ_INT(current_mp(&w).leader, 2);
	CHECK_EQ_INT(current_mp(&w).leader_epoch, 1);
	atomic_store(&leader_refusal, 0);
	world_free(&w);
}

/* ---- malformed frames ---------------------------------------------------------------------- */

static int frame(struct replica_set *rs, uint16_t type, uint32_t req, const uint8_t *p,
                 size_t len)
{
	struct tr_frame f = {.peer = 2, .type = type, .request_id = req, .payload = p,
	                     .len = (uint32_t)len};
	f.origin.request_id = req;
	return replica_on_frame(rs, &f);
}

static size_t be(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	return (size_t)n;
}

static void test_malformed_frames_refused(void)
{
	static struct world w;
	world_init(&w, 1, &three_in_sync);
	struct node *nd = &w.nodes[0];
	struct tr_options o = {.node_id = 1, .cluster_id = CLUSTER_ID, .listen = nd->addr,
	                       .peers = w.table, .npeers = 1, .on_frame = on_frame, .ctx = nd};
	CHECK_EQ_INT(tr_open(&o, &nd->c.net), 0);
	CHECK_EQ_INT(replica_set_open(&nd->c, &nd->c.rs), 0);
	struct replica_set *rs = nd->c.rs;
	uint8_t b[256];
	size_t n;

	CHECK_EQ_INT(frame(rs, TF_FETCH, 0, b, 0), REP_EPROTO);          /* one-way */
	CHECK_EQ_INT(frame(rs, TF_REPLICA_MAX, 1, b, 0), REP_EPROTO);    /* unknown type */
	CHECK_EQ_INT(frame(rs, TF_FETCH, 1, b, 3), REP_EPROTO);          /* short */
	n = be(b, 500, 4) + be(b + 4, 2, 4);                              /* 2 parts, 1 sent */
	memset(b + n, 0, 33);
	CHECK_EQ_INT(frame(rs, TF_FETCH, 1, b, n + 33), REP_EPROTO);
	be(b + 4, 1, 4);
	b[n + 32] = 0x80;                                                 /* unknown flag */
	CHECK_EQ_INT(frame(rs, TF_FETCH, 1, b, n + 33), REP_EPROTO);
	b[n + 32] = 0;
	be(b, 100000, 4);                                                 /* wait too long */
	CHECK_EQ_INT(frame(rs, TF_FETCH, 1, b, n + 33), REP_EPROTO);
	be(b, 500, 4);
	be(b + n + 16, (uint64_t)-5, 8);                                  /* negative offset */
	CHECK_EQ_INT(frame(rs, TF_FETCH, 1, b, n + 33), REP_EPROTO);

	memset(b, 0, sizeof(b));
	CHECK_EQ_INT(frame(rs, TF_EPOCH_END, 1, b, 19), REP_EPROTO);
	CHECK_EQ_INT(frame(rs, TF_EPOCH_END, 1, b, 21), REP_EPROTO);
	be(b + 16, (uint64_t)-1, 4);                                      /* epoch -1 */
	CHECK_EQ_INT(frame(rs, TF_EPOCH_END, 1, b, 20), REP_EPROTO);

	/* produce: 39-byte head, then records */
	memset(b, 0, sizeof(b));
	CHECK_EQ_INT(frame(rs, TF_PRODUCE, 1, b, 38), REP_EPROTO);
	CHECK_EQ_INT(frame(rs, TF_PRODUCE, 1, b, 39), REP_EPROTO);        /* 0 records */
	be(b + 35, 1, 4);
	b[39] = 0x02;                                                     /* value only */
	be(b + 40, 0, 4);
	be(b + 44, 100, 4);                                               /* 100 > what is there */
	CHECK_EQ_INT(frame(rs, TF_PRODUCE, 1, b, 50), REP_EPROTO);
	be(b + 44, 2, 4);
	b[39] = 0x00;                                                     /* no value, length 2 */
	CHECK_EQ_INT(frame(rs, TF_PRODUCE, 1, b, 50), REP_EPROTO);
	b[39] = 0x02;
	CHECK_EQ_INT(frame(rs, TF_PRODUCE, 1, b, 51), REP_EPROTO);        /* trailing byte */
	b[30] = 9;                                                        /* acks 9 */
	CHECK_EQ_INT(frame(rs, TF_PRODUCE, 1, b, 50), REP_EPROTO);
	be(b + 35, 0xffffffffu, 4);                                       /* absurd count */
	b[30] = 1;
	CHECK_EQ_INT(frame(rs, TF_PRODUCE, 1, b, 50), REP_EPROTO);

	replica_set_close(rs);
	nd->c.rs = NULL;
	tr_close(nd->c.net);
	nd->c.net = NULL;
	world_free(&w);
}

struct answer {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	int status;
	uint8_t buf[64];
	uint32_t len;
};

static void on_answer(void *ctx, int status, const struct tr_frame *resp)
{
	struct answer *a = ctx;
	pthread_mutex_lock(&a->mu);
	a->status = status;
	if (resp) {
		a->len = resp->len < sizeof(a->buf) ? resp->len : (uint32_t)sizeof(a->buf);
		memcpy(a->buf, resp->payload, a->len);
	}
	a->done = true;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

static int32_t answer_err(struct tr_net *net, uint16_t to, uint16_t type, const uint8_t *p,
                          size_t len)
{
	struct answer a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, {0}, 0};
	CHECK_EQ_INT(tr_request(net, to, type, 0, p, len, 3000, on_answer, &a, NULL), 0);
	pthread_mutex_lock(&a.mu);
	while (!a.done)
		pthread_cond_wait(&a.cv, &a.mu);
	pthread_mutex_unlock(&a.mu);
	CHECK_EQ_INT(a.status, 0);
	CHECK(a.len >= 4);
	return (int32_t)((uint32_t)a.buf[0] << 24 | (uint32_t)a.buf[1] << 16 |
	                 (uint32_t)a.buf[2] << 8 | a.buf[3]);
}

/* An unknown partition is an answered error, never a protocol error: the
 * connection stays up. */
static void test_unknown_partition_answered(void)
{
	static struct world w;
	world_init(&w, 2, &three_in_sync);
	node_start(&w, 0);
	node_start(&w, 1);
	uint8_t b[64] = {0};
	be(b, 999, 8);
	CHECK_EQ_INT(answer_err(w.nodes[1].c.net, 1, TF_EPOCH_END, b, 20), -ENOENT);
	memset(b, 0, sizeof(b));
	be(b, 999, 8);
	be(b + 35, 1, 4);
	b[39] = 0x02;
	be(b + 44, 1, 4);
	b[48] = 'x';
	CHECK_EQ_INT(answer_err(w.nodes[1].c.net, 1, TF_PRODUCE, b, 49), -ENOENT);
	world_free(&w);
}

int main(void)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/replica.log", unit_tmpdir());
	if (tfs_log_open(path) < 0)
		return 1;
	tfs_log_set_level(TFS_LOG_INFO);
	RUN(test_three_nodes_replicate_identically_hw_is_min_of_isr);
	RUN(test_lagging_follower_shrunk_then_expanded);
	RUN(test_forwarded_produce_lands_once);
	RUN(test_forward_follows_a_leader_change);
	RUN(test_stopping_follower_stays_out_of_isr);
	RUN(test_acks_all_below_min_insync);
	RUN(test_commit_waits_for_insync_to_regrow);
	RUN(test_divergent_tail_truncated_by_epoch);
	RUN(test_stale_leader_appends_fail_their_commit);
	RUN(test_cut_off_leader_takes_nothing);
	RUN(test_write_lost_in_failover_fails_at_once);
	RUN(test_leadership_returns_to_preferred_replica);
	RUN(test_refused_handoff_resumes_appends);
	RUN(test_flapping_preferred_waits_longer);
	RUN(test_malformed_frames_refused);
	RUN(test_unknown_partition_answered);
	if (unit_failed_checks) { /* the log goes with the temporary directory */
		FILE *f = fopen(path, "r");
		char line[1024];
		while (f && fgets(line, sizeof(line), f))
			fprintf(stderr, "  log: %s", line);
		if (f)
			fclose(f);
	}
	return unit_report("test_replica");
}
