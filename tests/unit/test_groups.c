/* test_groups.c - the group coordinator (replicator/groups.c) on a real
 * single-node replicator: assignment, cooperative handover at commit points,
 * redelivery on leave without commit, durable offsets (clean and unclean
 * restart), resets, offsets rows, delete, groups.start, wakers, partition
 * growth, and exactly-once consumption (single-threaded and threaded). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../replicator/groups.h"
#include "../../replicator/replicator.h"
#include "unit.h"

#define MAXP 8
#define MAXOFF 4096

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* A node on dir with `parts` partitions per new topic; threads: rep_start. */
static struct rep *node_open(const char *dir, uint32_t parts, enum rep_group_start start,
                             int threads)
{
	struct rep_options o = {.node_id = 1, .data_dir = dir, .listen = "127.0.0.1:7070"};
	topic_config_builtin(&o.defaults);
	o.defaults.partitions = parts;
	o.defaults.compression = LS_CODEC_NONE;
	o.flush_ms = threads ? 50 : 0;
	struct rep *r = NULL;
	int rc = rep_open(&o, &r);
	CHECK_EQ_INT(rc, 0);
	if (rc < 0)
		exit(1);
	rc = rep_groups_open(r, start);
	CHECK_EQ_INT(rc, 0);
	if (rc < 0)
		exit(1);
	if (threads) {
		rc = rep_start(r, NULL);
		CHECK_EQ_INT(rc, 0);
	}
	return r;
}

static void node_close(struct rep *r)
{
	rep_groups_close(r);
	rep_close(r);
}

static struct rep_topic *topic(struct rep *r, const char *name)
{
	int rc = rep_topic_create(r, name);
	CHECK(rc == 0 || rc == -EEXIST);
	struct rep_topic *t = rep_topic_get(r, name);
	CHECK(t != NULL);
	if (!t)
		exit(1);
	return t;
}

/* Appends n records "p<p>-<i>" to partition p as one batch. */
static void produce(struct rep_topic *t, uint32_t p, int n)
{
	struct ls_rec recs[64];
	char vals[64][32];
	while (n > 0) {
		int k = n > 64 ? 64 : n;
		for (int i = 0; i < k; i++) {
			int len = snprintf(vals[i], sizeof(vals[i]), "p%u-%d", p, i);
			recs[i] = (struct ls_rec){.value = vals[i], .value_len = (uint32_t)len};
		}
		struct ls_append_result res;
		int rc = rep_produce(rep_topic_partition(t, p), recs, (uint32_t)k, NULL, &res);
		CHECK_EQ_INT(rc, 0);
		n -= k;
	}
}

static struct rep_group *group(struct rep_topic *t, const char *name)
{
	struct rep_group *g = NULL;
	int rc = rep_group_get(t, name, 1, &g);
	CHECK_EQ_INT(rc, 0);
	if (!g)
		exit(1);
	return g;
}

static struct rep_member *join(struct rep_group *g, void (*w)(void *), void *ctx)
{
	struct rep_member *m = NULL;
	int rc = rep_member_join(g, w, ctx, &m);
	CHECK_EQ_INT(rc, 0);
	if (!m)
		exit(1);
	return m;
}

/* What was delivered: count per (partition, offset). */
struct seen {
	uint16_t n[MAXP][MAXOFF];
	int total;
	int dups;
};

/* Peeks and takes up to max records into s (NULL: not recorded). */
static int take(struct rep_member *m, int max, struct seen *s)
{
	int got = 0;
	struct rep_delivery d;
	while (got < max) {
		int rc = rep_member_peek(m, &d);
		CHECK(rc >= 0);
		if (rc != 1)
			break;
		rep_member_take(m);
		got++;
		if (s && d.partition < MAXP && d.offset >= 0 && d.offset < MAXOFF) {
			if (s->n[d.partition][d.offset]++)
				s->dups++;
			s->total++;
		}
	}
	return got;
}

static size_t assignment(struct rep_member *m, uint32_t *out)
{
	return rep_member_assignment(m, out, MAXP);
}

static int has(const uint32_t *a, size_t n, uint32_t p)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] == p)
			return 1;
	return 0;
}

static int64_t committed(struct rep_group *g, uint32_t p)
{
	struct rep_group_offset rows[MAXP];
	size_t n = rep_group_offsets(g, rows, MAXP);
	return p < n ? rows[p].committed : -100;
}

/* ---- tests ---------------------------------------------------------------- */

/* Two members split six partitions three and three, without overlap. */
static void test_two_members_share(void)
{
	struct rep *r = node_open(unit_tmpdir(), 6, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "orders");
	struct rep_group *g = group(t, "billing");
	struct rep_member *a = join(g, NULL, NULL), *b = join(g, NULL, NULL);
	uint32_t pa[MAXP], pb[MAXP];
	size_t na = assignment(a, pa), nb = assignment(b, pb);
	CHECK_EQ_INT(na, 3);
	CHECK_EQ_INT(nb, 3);
	for (uint32_t p = 0; p < 6; p++)
		CHECK_EQ_INT(has(pa, na, p) + has(pb, nb, p), 1);
	rep_member_leave(a, 1);
	rep_member_leave(b, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* A third member gets partitions only once their owners commit; nothing is
 * delivered twice across the handover. */
static void test_join_waits_for_commit(void)
{
	struct rep *r = node_open(unit_tmpdir(), 6, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "orders");
	for (uint32_t p = 0; p < 6; p++)
		produce(t, p, 20);
	struct rep_group *g = group(t, "billing");
	struct seen *s = calloc(1, sizeof(*s));
	struct rep_member *a = join(g, NULL, NULL), *b = join(g, NULL, NULL);
	CHECK_EQ_INT(take(a, 6, s), 6); /* two from each of its three */
	CHECK_EQ_INT(take(b, 6, s), 6);
	struct rep_member *c = join(g, NULL, NULL);
	uint32_t pc[MAXP], pa[MAXP], pb[MAXP];
	CHECK_EQ_INT(assignment(c, pc), 0);
	CHECK_EQ_INT(take(c, 100, s), 0);
	CHECK_EQ_INT(rep_member_commit(a), 0);
	size_t nc = assignment(c, pc);
	CHECK_EQ_INT(nc, 1); /* a released its revoked one */
	CHECK_EQ_INT(rep_member_commit(b), 0);
	nc = assignment(c, pc);
	size_t na = assignment(a, pa), nb = assignment(b, pb);
	CHECK_EQ_INT(na, 2);
	CHECK_EQ_INT(nb, 2);
	CHECK_EQ_INT(nc, 2);
	for (uint32_t p = 0; p < 6; p++)
		CHECK_EQ_INT(has(pa, na, p) + has(pb, nb, p) + has(pc, nc, p), 1);
	/* drain: everything exactly once */
	for (int round = 0; round < 100 && s->total < 120; round++) {
		take(a, 3, s);
		CHECK_EQ_INT(rep_member_commit(a), 0);
		take(b, 3, s);
		CHECK_EQ_INT(rep_member_commit(b), 0);
		take(c, 3, s);
		CHECK_EQ_INT(rep_member_commit(c), 0);
	}
	CHECK_EQ_INT(s->total, 120);
	CHECK_EQ_INT(s->dups, 0);
	rep_member_leave(a, 1);
	rep_member_leave(b, 1);
	rep_member_leave(c, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(s);
}

/* A member idle since its last commit hands a partition over at once. */
static void test_idle_member_hands_over_at_once(void)
{
	struct rep *r = node_open(unit_tmpdir(), 6, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "orders");
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	uint32_t pa[MAXP], pb[MAXP];
	CHECK_EQ_INT(assignment(a, pa), 6);
	struct rep_member *b = join(g, NULL, NULL);
	CHECK_EQ_INT(assignment(a, pa), 3);
	CHECK_EQ_INT(assignment(b, pb), 3);
	/* members beyond the partition count idle until one leaves */
	struct rep_member *more[5];
	for (int i = 0; i < 5; i++)
		more[i] = join(g, NULL, NULL);
	size_t idle = 0, total = 0;
	for (int i = 0; i < 5; i++) {
		size_t n = assignment(more[i], pb);
		idle += n == 0;
		total += n;
	}
	total += assignment(a, pa) + assignment(b, pb);
	CHECK_EQ_INT(total, 6);
	CHECK_EQ_INT(idle, 1);
	for (int i = 0; i < 5; i++)
		rep_member_leave(more[i], 0);
	CHECK_EQ_INT(assignment(a, pa) + assignment(b, pb), 6);
	rep_member_leave(a, 1);
	rep_member_leave(b, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Leave without commit: another member gets those records again. With
 * commit: it does not. */
static void test_leave_commit_or_not(void)
{
	struct rep *r = node_open(unit_tmpdir(), 6, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "orders");
	for (uint32_t p = 0; p < 6; p++)
		produce(t, p, 4);
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL), *b = join(g, NULL, NULL);
	struct seen *sa = calloc(1, sizeof(*sa)), *sb = calloc(1, sizeof(*sb));
	CHECK_EQ_INT(take(a, 5, sa), 5);
	rep_member_leave(a, 0); /* killed: not committed */
	uint32_t pb[MAXP];
	CHECK_EQ_INT(assignment(b, pb), 6);
	CHECK_EQ_INT(take(b, 100, sb), 24);
	for (uint32_t p = 0; p < 6; p++)
		for (int o = 0; o < 4; o++)
			CHECK_EQ_INT(sb->n[p][o], 1); /* including a's five */
	CHECK_EQ_INT(rep_member_commit(b), 0);

	for (uint32_t p = 0; p < 6; p++)
		produce(t, p, 4);
	memset(sa, 0, sizeof(*sa));
	memset(sb, 0, sizeof(*sb));
	a = join(g, NULL, NULL);
	CHECK_EQ_INT(take(b, 5, sb), 5);
	rep_member_leave(b, 1); /* normal close: committed */
	CHECK_EQ_INT(take(a, 100, sa), 19);
	for (uint32_t p = 0; p < 6; p++)
		for (int o = 4; o < 8; o++)
			CHECK_EQ_INT(sa->n[p][o] + sb->n[p][o], 1);
	rep_member_leave(a, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(sa);
	free(sb);
}

/* Rewind: what was taken since the commit is read again by the same member. */
static void test_rewind(void)
{
	struct rep *r = node_open(unit_tmpdir(), 1, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 5);
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	struct rep_delivery d;
	CHECK_EQ_INT(take(a, 2, NULL), 2);
	CHECK_EQ_INT(rep_member_commit(a), 0);
	CHECK_EQ_INT(take(a, 2, NULL), 2);
	rep_member_rewind(a);
	CHECK_EQ_INT(rep_member_peek(a, &d), 1);
	CHECK_EQ_INT(d.offset, 2);
	CHECK(d.value_len == 4 && memcmp(d.value, "p0-2", 4) == 0);
	/* peek is idempotent; take without a peek takes nothing */
	CHECK_EQ_INT(rep_member_peek(a, &d), 1);
	CHECK_EQ_INT(d.offset, 2);
	rep_member_take(a);
	rep_member_take(a);
	CHECK_EQ_INT(rep_member_peek(a, &d), 1);
	CHECK_EQ_INT(d.offset, 3);
	rep_member_leave(a, 0);
	CHECK_EQ_INT(committed(g, 0), 2);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Committed offsets survive a clean restart. */
static void test_commit_persists(void)
{
	const char *dir = unit_tmpdir();
	struct rep *r = node_open(dir, 6, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "orders");
	for (uint32_t p = 0; p < 6; p++)
		produce(t, p, 10);
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	CHECK_EQ_INT(take(a, 18, NULL), 18);
	CHECK_EQ_INT(rep_member_commit(a), 0);
	CHECK_EQ_INT(take(a, 6, NULL), 6); /* taken, never committed */
	rep_member_leave(a, 0);
	uint32_t gid = rep_group_id(g);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);

	r = node_open(dir, 6, REP_GROUP_EARLIEST, 0);
	t = rep_topic_get(r, "orders");
	CHECK(t != NULL);
	g = rep_group_get_id(t, gid);
	CHECK(g != NULL);
	CHECK_EQ_INT(strcmp(rep_group_name(g), "g"), 0);
	for (uint32_t p = 0; p < 6; p++)
		CHECK_EQ_INT(committed(g, p), 3);
	struct seen *s = calloc(1, sizeof(*s));
	a = join(g, NULL, NULL);
	CHECK_EQ_INT(take(a, 100, s), 42);
	for (uint32_t p = 0; p < 6; p++)
		CHECK_EQ_INT(s->n[p][3], 1);
	CHECK_EQ_INT(s->dups, 0);
	rep_member_leave(a, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(s);
}

/* Committed offsets survive a crash: a copy of the data directory taken
 * while the node runs (no clean close, no fsync) opens with them. */
static void test_commit_persists_unclean(void)
{
	const char *dir = unit_tmpdir(), *copy = unit_tmpdir();
	struct rep *r = node_open(dir, 3, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "orders");
	for (uint32_t p = 0; p < 3; p++)
		produce(t, p, 10);
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	CHECK_EQ_INT(take(a, 12, NULL), 12);
	CHECK_EQ_INT(rep_member_commit(a), 0);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "cp -a '%s/.' '%s/'", dir, copy);
	CHECK_EQ_INT(system(cmd), 0);
	rep_member_leave(a, 0);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);

	r = node_open(copy, 3, REP_GROUP_EARLIEST, 0);
	t = rep_topic_get(r, "orders");
	CHECK(t != NULL);
	g = NULL;
	CHECK_EQ_INT(rep_group_get(t, "g", 0, &g), 0);
	for (uint32_t p = 0; g && p < 3; p++)
		CHECK_EQ_INT(committed(g, p), 4);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Resets: earliest, latest, an offset (clamped), a time; members drop what
 * they took and read from the new positions; their wakers are called. */
static void count_waker(void *ctx)
{
	atomic_fetch_add((atomic_int *)ctx, 1);
}

static void test_reset(void)
{
	struct rep *r = node_open(unit_tmpdir(), 2, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 5);
	produce(t, 1, 5);
	sleep_ms(30);
	int64_t mid = now_ms();
	sleep_ms(5);
	produce(t, 0, 5);
	struct rep_group *g = group(t, "g");
	atomic_int woken = 0;
	struct rep_member *a = join(g, count_waker, &woken);
	CHECK_EQ_INT(take(a, 4, NULL), 4);
	int before = atomic_load(&woken);

	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_LATEST, -1, 0), 0);
	CHECK_EQ_INT(committed(g, 0), 10);
	CHECK_EQ_INT(committed(g, 1), 5);
	CHECK(atomic_load(&woken) > before);
	struct rep_delivery d;
	CHECK_EQ_INT(rep_member_peek(a, &d), 0);

	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_TIME, 0, mid), 0);
	CHECK_EQ_INT(committed(g, 0), 5);
	CHECK_EQ_INT(committed(g, 1), 5);
	CHECK_EQ_INT(rep_member_peek(a, &d), 1);
	CHECK_EQ_INT(d.partition, 0);
	CHECK_EQ_INT(d.offset, 5);
	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_TIME, -1, 0), 0);
	CHECK_EQ_INT(committed(g, 0), 0);
	CHECK_EQ_INT(committed(g, 1), 0);
	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_TIME, -1, now_ms() + 100000), 0);
	CHECK_EQ_INT(committed(g, 0), 10);

	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_OFFSET, 1, 3), 0);
	CHECK_EQ_INT(committed(g, 1), 3);
	CHECK_EQ_INT(committed(g, 0), 10);
	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_OFFSET, 1, 99), 0);
	CHECK_EQ_INT(committed(g, 1), 5);
	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_OFFSET, 0, -7), 0);
	CHECK_EQ_INT(committed(g, 0), 0);
	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_OFFSET, 2, 0), -EINVAL);

	CHECK_EQ_INT(take(a, 3, NULL), 3);
	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_EARLIEST, -1, 0), 0);
	CHECK_EQ_INT(committed(g, 0), 0);
	CHECK_EQ_INT(committed(g, 1), 0);
	struct seen *s = calloc(1, sizeof(*s));
	CHECK_EQ_INT(take(a, 100, s), 15);
	CHECK_EQ_INT(s->dups, 0);
	rep_member_leave(a, 1);
	CHECK_EQ_INT(committed(g, 0), 10);
	CHECK_EQ_INT(committed(g, 1), 5);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(s);
}

/* Offsets rows: committed, end, lag per partition. */
static void test_offsets_rows(void)
{
	struct rep *r = node_open(unit_tmpdir(), 3, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 7);
	produce(t, 2, 2);
	struct rep_group *g = group(t, "g");
	struct rep_group_offset rows[MAXP];
	CHECK_EQ_INT(rep_group_offsets(g, rows, MAXP), 3);
	CHECK_EQ_INT(rows[0].partition, 0);
	CHECK_EQ_INT(rows[0].committed, 0);
	CHECK_EQ_INT(rows[0].end, 7);
	CHECK_EQ_INT(rows[0].lag, 7);
	CHECK_EQ_INT(rows[1].end, 0);
	CHECK_EQ_INT(rows[1].lag, 0);
	CHECK_EQ_INT(rows[2].lag, 2);
	CHECK_EQ_INT(rep_group_offsets(g, rows, 2), 2);
	struct rep_member *a = join(g, NULL, NULL);
	CHECK_EQ_INT(take(a, 4, NULL), 4);
	CHECK_EQ_INT(rep_group_offsets(g, rows, MAXP), 3);
	CHECK_EQ_INT(rows[0].committed + rows[2].committed, 0); /* not yet committed */
	CHECK_EQ_INT(rep_member_commit(a), 0);
	CHECK_EQ_INT(rep_group_offsets(g, rows, MAXP), 3);
	CHECK_EQ_INT(rows[0].committed, 2); /* round robin: 0, 2, 0, 2 */
	CHECK_EQ_INT(rows[0].lag, 5);
	CHECK_EQ_INT(rows[2].committed, 2);
	CHECK_EQ_INT(rows[2].lag, 0);
	rep_member_leave(a, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Round robin: one busy partition does not starve the others. */
static void test_round_robin(void)
{
	struct rep *r = node_open(unit_tmpdir(), 3, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 100);
	produce(t, 1, 2);
	produce(t, 2, 2);
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	CHECK_EQ_INT(take(a, 6, s), 6);
	CHECK_EQ_INT(s->n[1][0] + s->n[1][1] + s->n[2][0] + s->n[2][1], 4);
	rep_member_leave(a, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(s);
}

/* Delete: EBUSY with members, ENOENT after; offsets gone, also after a
 * restart; names are checked; ids are never reused. */
static int collect_ids(void *ctx, uint32_t id, const char *name)
{
	char *buf = ctx;
	char one[300];
	snprintf(one, sizeof(one), "%u:%s ", id, name);
	strcat(buf, one);
	return 0;
}

static void test_delete_and_names(void)
{
	const char *dir = unit_tmpdir();
	struct rep *r = node_open(dir, 2, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 3);
	CHECK_EQ_INT(rep_group_create(t, "bad/name"), -EINVAL);
	CHECK_EQ_INT(rep_group_create(t, ".hidden"), -EINVAL);
	CHECK_EQ_INT(rep_group_create(t, ""), -EINVAL);
	struct rep_group *x = NULL;
	CHECK_EQ_INT(rep_group_get(t, "nope", 0, &x), -ENOENT);
	CHECK_EQ_INT(rep_group_create(t, "a"), 0);
	CHECK_EQ_INT(rep_group_create(t, "a"), -EEXIST);
	CHECK_EQ_INT(rep_group_create(t, "b"), 0);
	struct rep_group *a = group(t, "a");
	CHECK_EQ_INT(rep_group_id(a), 1);
	struct rep_member *m = join(a, NULL, NULL);
	CHECK_EQ_INT(take(m, 3, NULL), 3);
	CHECK_EQ_INT(rep_group_delete(t, "a"), -EBUSY);
	rep_member_leave(m, 1);
	CHECK_EQ_INT(committed(a, 0), 3);
	CHECK_EQ_INT(rep_group_delete(t, "a"), 0);
	CHECK(rep_group_deleted(a));
	CHECK_EQ_INT(rep_member_join(a, NULL, NULL, &m), -ENOENT);
	rep_group_put(a);
	CHECK_EQ_INT(rep_group_delete(t, "a"), -ENOENT);
	CHECK(rep_group_get_id(t, 1) == NULL);
	CHECK_EQ_INT(rep_group_create(t, "c"), 0);
	char ids[256] = "";
	rep_group_foreach(t, collect_ids, ids);
	CHECK_EQ_INT(strcmp(ids, "2:b 3:c "), 0);
	a = group(t, "a"); /* made again: a new id, no offsets */
	CHECK_EQ_INT(rep_group_id(a), 4);
	CHECK_EQ_INT(committed(a, 0), 0);
	rep_group_put(a);
	CHECK_EQ_INT(rep_group_delete(t, "a"), 0);
	rep_topic_put(t);
	node_close(r);

	r = node_open(dir, 2, REP_GROUP_EARLIEST, 0);
	t = rep_topic_get(r, "t");
	ids[0] = 0;
	rep_group_foreach(t, collect_ids, ids);
	/* creation order kept (ids are only stable while the daemon runs) */
	char *pb = strstr(ids, ":b "), *pc = strstr(ids, ":c ");
	CHECK(pb && pc && pb < pc && !strstr(ids, ":a "));
	CHECK_EQ_INT(rep_group_get(t, "a", 0, &x), -ENOENT);
	rep_topic_put(t);
	node_close(r);
}

/* Deleting a topic forgets its groups, also after a restart. */
static void test_topic_deleted(void)
{
	const char *dir = unit_tmpdir();
	struct rep *r = node_open(dir, 2, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 3);
	struct rep_group *g = group(t, "g");
	struct rep_member *m = join(g, NULL, NULL);
	CHECK_EQ_INT(take(m, 3, NULL), 3);
	CHECK_EQ_INT(rep_member_commit(m), 0);
	rep_topic_put(t);
	CHECK_EQ_INT(rep_topic_delete(r, "t"), 0);
	CHECK(rep_group_deleted(g));
	CHECK_EQ_INT(take(m, 3, NULL), 0);
	CHECK_EQ_INT(rep_member_commit(m), 0);
	rep_member_leave(m, 1);
	rep_group_put(g);
	t = topic(r, "t");
	struct rep_group *x = NULL;
	CHECK_EQ_INT(rep_group_get(t, "g", 0, &x), -ENOENT);
	rep_topic_put(t);
	node_close(r);
	r = node_open(dir, 2, REP_GROUP_EARLIEST, 0);
	t = rep_topic_get(r, "t");
	CHECK_EQ_INT(rep_group_get(t, "g", 0, &x), -ENOENT);
	rep_topic_put(t);
	node_close(r);
}

/* groups.start latest: a new group starts at the end as it was at
 * creation, also after a restart; partitions added later start at 0. */
static void test_start_latest(void)
{
	const char *dir = unit_tmpdir();
	struct rep *r = node_open(dir, 2, REP_GROUP_LATEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 5);
	struct rep_group *g = group(t, "g");
	produce(t, 0, 3);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);

	r = node_open(dir, 2, REP_GROUP_EARLIEST, 0);
	t = rep_topic_get(r, "t");
	g = group(t, "g");
	CHECK_EQ_INT(committed(g, 0), 5);
	struct rep_member *m = join(g, NULL, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	CHECK_EQ_INT(take(m, 100, s), 3);
	CHECK_EQ_INT(s->n[0][5] + s->n[0][6] + s->n[0][7], 3);
	rep_member_leave(m, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(s);
}

/* Partition growth rebalances; new partitions are read from their start. */
static void test_partition_growth(void)
{
	struct rep *r = node_open(unit_tmpdir(), 2, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL), *b = join(g, NULL, NULL);
	uint32_t pa[MAXP], pb[MAXP];
	CHECK_EQ_INT(assignment(a, pa) + assignment(b, pb), 2);
	struct topic_config ch = {0};
	ch.partitions = 4;
	ch.set_mask = 1u << TC_PARTITIONS;
	char err[200];
	CHECK_EQ_INT(rep_topic_set_config(t, &ch, 0, err, sizeof(err)), 0);
	size_t na = assignment(a, pa), nb = assignment(b, pb);
	CHECK_EQ_INT(na, 2);
	CHECK_EQ_INT(nb, 2);
	for (uint32_t p = 0; p < 4; p++)
		CHECK_EQ_INT(has(pa, na, p) + has(pb, nb, p), 1);
	produce(t, 3, 2);
	struct seen *s = calloc(1, sizeof(*s));
	take(a, 10, s);
	take(b, 10, s);
	CHECK_EQ_INT(s->n[3][0] + s->n[3][1], 2);
	rep_member_leave(a, 1);
	rep_member_leave(b, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(s);
}

/* Wakers: on assignment, on an append to an assigned partition (from the
 * notifier thread), on handover after the old owner's commit. */
static int wait_count(atomic_int *c, int above)
{
	for (int i = 0; i < 400 && atomic_load(c) <= above; i++)
		sleep_ms(5);
	return atomic_load(c) > above;
}

static void test_wakers(void)
{
	struct rep *r = node_open(unit_tmpdir(), 2, REP_GROUP_EARLIEST, 1);
	struct rep_topic *t = topic(r, "t");
	struct rep_group *g = group(t, "g");
	atomic_int wa = 0, wb = 0;
	struct rep_member *a = join(g, count_waker, &wa);
	CHECK(atomic_load(&wa) >= 1); /* assigned both partitions */
	int before = atomic_load(&wa);
	produce(t, 1, 1);
	CHECK(wait_count(&wa, before));
	produce(t, 0, 1);
	CHECK_EQ_INT(take(a, 2, NULL), 2);
	sleep_ms(50); /* let the notifier drain */
	struct rep_member *b = join(g, count_waker, &wb);
	CHECK_EQ_INT(atomic_load(&wb), 0); /* both partitions in flight on a */
	CHECK_EQ_INT(rep_member_commit(a), 0);
	CHECK_EQ_INT(atomic_load(&wb), 1); /* handed over */
	uint32_t pb[MAXP];
	CHECK_EQ_INT(assignment(b, pb), 1);
	int bb = atomic_load(&wb), ab = atomic_load(&wa);
	produce(t, pb[0], 1);
	CHECK(wait_count(&wb, bb));
	sleep_ms(50);
	CHECK_EQ_INT(atomic_load(&wa), ab); /* not a's partition */
	rep_member_leave(a, 1);
	rep_member_leave(b, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Three members, six partitions, 3000 records: each consumed exactly once,
 * with a member leaving (committing) and coming back halfway. */
static void test_exactly_once_single_thread(void)
{
	struct rep *r = node_open(unit_tmpdir(), 6, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	struct rep_group *g = group(t, "g");
	struct rep_member *m[3];
	for (int i = 0; i < 3; i++)
		m[i] = join(g, NULL, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	unsigned seed = 7;
	int produced = 0;
	for (int round = 0; round < 5000 && s->total < 3000; round++) {
		if (produced < 3000) {
			uint32_t p = rand_r(&seed) % 6;
			int n = 1 + rand_r(&seed) % 20;
			if (n > 3000 - produced)
				n = 3000 - produced;
			produce(t, p, n);
			produced += n;
		}
		int i = round % 3;
		take(m[i], 1 + rand_r(&seed) % 7, s);
		CHECK_EQ_INT(rep_member_commit(m[i]), 0);
		if (round % 97 == 50) {
			rep_member_leave(m[i], 1);
			m[i] = join(g, NULL, NULL);
		}
	}
	CHECK_EQ_INT(produced, 3000);
	CHECK_EQ_INT(s->total, 3000);
	CHECK_EQ_INT(s->dups, 0);
	for (int i = 0; i < 3; i++)
		rep_member_leave(m[i], 1);
	struct rep_group_offset rows[MAXP];
	size_t n = rep_group_offsets(g, rows, MAXP);
	int64_t lag = 0;
	for (size_t i = 0; i < n; i++)
		lag += rows[i].lag;
	CHECK_EQ_INT(lag, 0);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
	free(s);
}

/* Threads peek/take or bulk-take, commit (and leave, rewind, crash and rejoin) while
 * another appends: every record is consumed exactly once, in offset order
 * per partition. */
struct stress {
	struct rep_topic *t;
	struct rep_group *g;
	pthread_mutex_t mu;
	struct seen s;
	int64_t last[MAXP];
	int disorder;
	atomic_int produced_done;
	atomic_int wakes;
	atomic_int crashes, rewinds, rejoins, empty;
};

#define STRESS_TOTAL 3000

static void *stress_producer(void *arg)
{
	struct stress *st = arg;
	unsigned seed = 99;
	for (int done = 0; done < STRESS_TOTAL;) {
		int n = 1 + rand_r(&seed) % 10;
		if (n > STRESS_TOTAL - done)
			n = STRESS_TOTAL - done;
		produce(st->t, rand_r(&seed) % 6, n);
		done += n;
		if (rand_r(&seed) % 8 == 0)
			sched_yield();
	}
	atomic_store(&st->produced_done, 1);
	return NULL;
}

static void stress_wake(void *ctx)
{
	atomic_fetch_add(&((struct stress *)ctx)->wakes, 1);
}

static void *stress_consumer(void *arg)
{
	struct stress *st = arg;
	unsigned seed = (unsigned)(uintptr_t)pthread_self();
	struct rep_member *m = join(st->g, stress_wake, st);
	struct rep_delivery d;
	struct {
		uint32_t p;
		int64_t off;
	} batch[8];
	for (int idle = 0; idle < 2000;) {
		pthread_mutex_lock(&st->mu);
		int finished = st->s.total >= STRESS_TOTAL;
		pthread_mutex_unlock(&st->mu);
		if (finished)
			break;
		int want = 1 + rand_r(&seed) % 8, n = 0;
		while (n < want && rand_r(&seed) % 2) { /* a read record by record */
			int rc = rep_member_peek(m, &d);
			CHECK(rc >= 0);
			if (rc != 1)
				break;
			rep_member_take(m);
			batch[n].p = d.partition;
			batch[n++].off = d.offset;
		}
		while (n < want) { /* or in bulk, at most the records still wanted */
			char buf[64];
			struct rep_bulk b;
			size_t size = 8 + (size_t)(rand_r(&seed) % 56);
			int rc = rep_member_take_bulk(m, buf, size, (uint32_t)(want - n), '\t', &b);
			CHECK(rc >= 0 || rc == -EMSGSIZE);
			if (rc != 1)
				break;
			CHECK(b.records <= (uint32_t)(want - n));
			CHECK_EQ_INT(b.next_offset - b.first_offset, b.records);
			for (uint32_t k = 0; k < b.records && n < 8; k++) {
				batch[n].p = b.partition;
				batch[n++].off = b.first_offset + k;
			}
		}
		int fate = rand_r(&seed) % 50;
		if (n && fate == 0) { /* killed: nothing of this batch was handled */
			atomic_fetch_add(&st->crashes, 1);
			rep_member_leave(m, 0);
			m = join(st->g, stress_wake, st);
			continue;
		}
		if (n && fate == 1) { /* the file is still open elsewhere */
			atomic_fetch_add(&st->rewinds, 1);
			rep_member_rewind(m);
			continue;
		}
		pthread_mutex_lock(&st->mu);
		for (int i = 0; i < n; i++) {
			uint32_t p = batch[i].p;
			int64_t off = batch[i].off;
			if (p >= MAXP || off < 0 || off >= MAXOFF)
				continue;
			if (st->s.n[p][off]++)
				st->s.dups++;
			if (off <= st->last[p])
				st->disorder++;
			st->last[p] = off;
			st->s.total++;
		}
		pthread_mutex_unlock(&st->mu);
		if (fate == 2) {
			atomic_fetch_add(&st->rejoins, 1);
			rep_member_leave(m, 1);
			m = join(st->g, stress_wake, st);
		} else {
			CHECK_EQ_INT(rep_member_commit(m), 0);
		}
		if (n == 0) {
			atomic_fetch_add(&st->empty, 1);
			if (atomic_load(&st->produced_done))
				idle++;
			sleep_ms(1);
		}
	}
	rep_member_leave(m, 1);
	return NULL;
}

static void test_exactly_once_threads(void)
{
	struct rep *r = node_open(unit_tmpdir(), 6, REP_GROUP_EARLIEST, 1);
	struct stress *st = calloc(1, sizeof(*st));
	st->t = topic(r, "t");
	st->g = group(st->t, "g");
	pthread_mutex_init(&st->mu, NULL);
	for (int p = 0; p < MAXP; p++)
		st->last[p] = -1;
	pthread_t prod, cons[3];
	pthread_create(&prod, NULL, stress_producer, st);
	for (int i = 0; i < 3; i++)
		pthread_create(&cons[i], NULL, stress_consumer, st);
	pthread_join(prod, NULL);
	for (int i = 0; i < 3; i++)
		pthread_join(cons[i], NULL);
	CHECK_EQ_INT(st->s.total, STRESS_TOTAL);
	CHECK_EQ_INT(st->s.dups, 0);
	CHECK_EQ_INT(st->disorder, 0);
	CHECK(atomic_load(&st->wakes) > 0);
	CHECK(atomic_load(&st->crashes) > 0 && atomic_load(&st->rejoins) > 0);
	printf("# stress: %d crashes, %d rewinds, %d rejoins, %d empty reads, %d wakeups\n",
	       atomic_load(&st->crashes), atomic_load(&st->rewinds), atomic_load(&st->rejoins),
	       atomic_load(&st->empty), atomic_load(&st->wakes));
	struct rep_group_offset rows[MAXP];
	size_t n = rep_group_offsets(st->g, rows, MAXP);
	int64_t lag = 0;
	for (size_t i = 0; i < n; i++)
		lag += rows[i].lag;
	CHECK_EQ_INT(lag, 0);
	rep_group_put(st->g);
	rep_topic_put(st->t);
	node_close(r);
	pthread_mutex_destroy(&st->mu);
	free(st);
}

/* ---- bulk delivery (rep_member_take_bulk) -------------------------------- */

/* Everything one member delivers, rendered per partition. */
struct rendered {
	char *buf[MAXP];
	size_t len[MAXP], cap[MAXP];
	int64_t next[MAXP];   /* next offset expected per partition (-1: none yet) */
	int calls, records, gaps;
};

static void rendered_add(struct rendered *o, uint32_t p, const void *data, size_t len)
{
	if (o->len[p] + len > o->cap[p]) {
		o->cap[p] = (o->len[p] + len) * 2;
		o->buf[p] = realloc(o->buf[p], o->cap[p]);
		if (!o->buf[p])
			exit(1);
	}
	memcpy(o->buf[p] + o->len[p], data, len);
	o->len[p] += len;
}

static void rendered_free(struct rendered *o)
{
	for (int p = 0; p < MAXP; p++)
		free(o->buf[p]);
}

/* Drains m record by record (peek/take), rendering as the view does. */
static void drain_peek(struct rep_member *m, char sep, struct rendered *o)
{
	struct rep_delivery d;
	while (rep_member_peek(m, &d) == 1) {
		CHECK(d.partition < MAXP);
		if (d.key) {
			rendered_add(o, d.partition, d.key, d.key_len);
			rendered_add(o, d.partition, &sep, 1);
		}
		rendered_add(o, d.partition, d.value, d.value_len);
		rendered_add(o, d.partition, "\n", 1);
		rep_member_take(m);
		o->records++;
	}
	CHECK_EQ_INT(rep_member_commit(m), 0);
}

/* Drains m with bulk takes into a buffer of `size` bytes, committing after
 * each call; a record longer than size is fetched with a buffer of its own
 * length. Checks every call's answer against the contract. */
static void drain_bulk(struct rep_member *m, size_t size, uint32_t max, char sep,
                       struct rendered *o)
{
	char *buf = malloc(size);
	for (int p = 0; p < MAXP; p++)
		o->next[p] = -1;
	for (;;) {
		struct rep_bulk b;
		int rc = rep_member_take_bulk(m, buf, size, max, sep, &b);
		if (rc == -EMSGSIZE) {
			CHECK(b.need > size);
			char *big = malloc(b.need);
			rc = rep_member_take_bulk(m, big, b.need, 1, sep, &b);
			CHECK_EQ_INT(rc, 1);
			CHECK_EQ_INT(b.records, 1);
			if (rc == 1)
				rendered_add(o, b.partition, big, b.bytes);
			free(big);
		} else if (rc == 1) {
			CHECK(b.bytes <= size && b.bytes > 0);
			CHECK(b.records >= 1 && (max == 0 || b.records <= max));
			CHECK(b.next_offset > b.first_offset);
			CHECK(buf[b.bytes - 1] == '\n');
			rendered_add(o, b.partition, buf, b.bytes);
		} else {
			CHECK_EQ_INT(rc, 0);
			break;
		}
		if (b.partition < MAXP) {
			if (o->next[b.partition] >= 0 && b.first_offset != o->next[b.partition])
				o->gaps++;
			o->next[b.partition] = b.next_offset;
		}
		o->calls++;
		o->records += (int)b.records;
		CHECK_EQ_INT(rep_member_commit(m), 0);
	}
	free(buf);
}

/* Produces one record per entry of vals (key "k<i mod keys>" when keys > 0). */
static void produce_vals(struct rep_topic *t, uint32_t p, const char **vals, int n, int keys,
                         int per_batch)
{
	for (int i = 0; i < n; i += per_batch) {
		struct ls_rec recs[64];
		char kb[64][16];
		int k = n - i < per_batch ? n - i : per_batch;
		for (int j = 0; j < k; j++) {
			recs[j] = (struct ls_rec){.value = vals[i + j],
			                          .value_len = (uint32_t)strlen(vals[i + j])};
			if (keys) {
				int kl = snprintf(kb[j], sizeof(kb[j]), "k%d", (i + j) % keys);
				recs[j].key = kb[j];
				recs[j].key_len = (uint32_t)kl;
			}
		}
		struct ls_append_result res;
		CHECK_EQ_INT(rep_produce(rep_topic_partition(t, p), recs, (uint32_t)k, NULL, &res), 0);
	}
}

/* One bulk call renders a partition's records ([key sep] value '\n') into
 * the buffer, across batches, and reports offsets; the next call finds
 * nothing; the commit moves the group to the end. */
static void test_bulk_renders_records(void)
{
	struct rep *r = node_open(unit_tmpdir(), 1, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	const char *vals[] = {"alpha", "", "gamma", "delta", "epsilon"};
	produce_vals(t, 0, vals, 5, 0, 2);
	produce_vals(t, 0, vals, 3, 2, 3); /* keyed: k0, k1, k0 */
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	char buf[256];
	struct rep_bulk b;
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 0, ':', &b), 1);
	const char *want = "alpha\n\ngamma\ndelta\nepsilon\nk0:alpha\nk1:\nk0:gamma\n";
	CHECK_EQ_INT(b.bytes, strlen(want));
	CHECK(memcmp(buf, want, strlen(want)) == 0);
	CHECK_EQ_INT(b.partition, 0);
	CHECK_EQ_INT(b.records, 8);
	CHECK_EQ_INT(b.first_offset, 0);
	CHECK_EQ_INT(b.next_offset, 8);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 0, ':', &b), 0);
	CHECK_EQ_INT(committed(g, 0), 0);
	CHECK_EQ_INT(rep_member_commit(a), 0);
	CHECK_EQ_INT(committed(g, 0), 8);
	rep_member_leave(a, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Whole records only: a buffer that ends inside a record stops before it;
 * max_records caps the count; a record longer than the buffer is refused
 * with its length (-EMSGSIZE) and nothing is taken. */
static void test_bulk_limits(void)
{
	struct rep *r = node_open(unit_tmpdir(), 1, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 10); /* p0-0 .. p0-9: 5 bytes each with the newline */
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	char buf[64];
	struct rep_bulk b;
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, 13, 0, '\t', &b), 1);
	CHECK_EQ_INT(b.records, 2);
	CHECK_EQ_INT(b.bytes, 10);
	CHECK(memcmp(buf, "p0-0\np0-1\n", 10) == 0);
	CHECK_EQ_INT(b.next_offset, 2);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 1, '\t', &b), 1);
	CHECK_EQ_INT(b.records, 1);
	CHECK_EQ_INT(b.first_offset, 2);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 3, '\t', &b), 1);
	CHECK_EQ_INT(b.records, 3);
	CHECK_EQ_INT(b.bytes, 15);
	CHECK_EQ_INT(b.next_offset, 6);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, 4, 0, '\t', &b), -EMSGSIZE);
	CHECK_EQ_INT(b.need, 5);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, 5, 0, '\t', &b), 1);
	CHECK_EQ_INT(b.first_offset, 6);
	CHECK_EQ_INT(b.records, 1);
	/* a reset drops what was taken: the next take starts there */
	CHECK_EQ_INT(rep_group_reset(g, REP_RESET_OFFSET, 0, 1), 0);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 0, '\t', &b), 1);
	CHECK_EQ_INT(b.first_offset, 1);
	CHECK_EQ_INT(b.next_offset, 10);
	rep_member_rewind(a);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, 5, 0, '\t', &b), 1);
	CHECK_EQ_INT(b.first_offset, 1);
	rep_member_leave(a, 1);
	CHECK_EQ_INT(committed(g, 0), 2);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Consecutive bulk calls take turns over the partitions; each call drains
 * one partition as far as the buffer allows. */
static void test_bulk_round_robin(void)
{
	struct rep *r = node_open(unit_tmpdir(), 3, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 100);
	produce(t, 1, 2);
	produce(t, 2, 2);
	struct rep_group *g = group(t, "g");
	struct rep_member *a = join(g, NULL, NULL);
	char buf[4096];
	struct rep_bulk b;
	uint32_t order[4];
	for (int i = 0; i < 4; i++) {
		CHECK_EQ_INT(rep_member_take_bulk(a, buf, 60, 0, '\t', &b), 1);
		order[i] = b.partition;
	}
	CHECK_EQ_INT(order[0], 0);
	CHECK_EQ_INT(order[1], 1);
	CHECK_EQ_INT(order[2], 2);
	CHECK_EQ_INT(order[3], 0);
	CHECK_EQ_INT(b.first_offset, 11); /* 60 bytes: p0-0 .. p0-10 first */
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 0, '\t', &b), 1);
	CHECK_EQ_INT(b.partition, 0); /* the others are drained */
	CHECK_EQ_INT(b.next_offset, 100);
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 0, '\t', &b), 0);
	rep_member_leave(a, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Bulk takes deliver exactly what peek/take deliver, byte for byte per
 * partition, whatever the buffer: also when values hold '\n' (lines in the
 * view are then not records) and across compaction holes (offsets and view
 * positions with gaps). */
static void check_bulk_matches_peek(struct rep_topic *t, const char *gname, char sep)
{
	static const size_t sizes[] = {7, 64, 1000, 1 << 20};
	struct rep_group *g = group(t, gname);
	struct rendered *want = calloc(1, sizeof(*want));
	struct rep_member *a = join(g, NULL, NULL);
	drain_peek(a, sep, want);
	CHECK(want->records > 0);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
		for (uint32_t max = 0; max < 3; max++) {
			struct rendered *got = calloc(1, sizeof(*got));
			CHECK_EQ_INT(rep_group_reset(g, REP_RESET_EARLIEST, -1, 0), 0);
			drain_bulk(a, sizes[i], max, sep, got);
			CHECK_EQ_INT(got->records, want->records);
			CHECK_EQ_INT(got->gaps, 0);
			for (int p = 0; p < MAXP; p++) {
				CHECK_EQ_INT(got->len[p], want->len[p]);
				CHECK(got->len[p] == want->len[p] &&
				      (!got->len[p] || memcmp(got->buf[p], want->buf[p], got->len[p]) == 0));
			}
			if (sizes[i] == 1 << 20 && max == 0)
				CHECK(got->calls <= 2); /* a partition's run in one call */
			rendered_free(got);
			free(got);
		}
	}
	rep_member_leave(a, 1);
	rendered_free(want);
	free(want);
	rep_group_put(g);
}

static void test_bulk_matches_peek(void)
{
	struct rep *r = node_open(unit_tmpdir(), 2, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	const char *vals[200];
	char store[200][40];
	for (int i = 0; i < 200; i++) {
		/* every 7th value holds newlines; every 5th is long */
		snprintf(store[i], sizeof(store[i]), i % 7 == 3 ? "v%d\nx\ny" : i % 5 ? "v%d"
		         : "v%d-0123456789012345678901234", i);
		vals[i] = store[i];
	}
	produce_vals(t, 0, vals, 200, 0, 17);
	produce_vals(t, 1, vals, 100, 3, 64);
	check_bulk_matches_peek(t, "g", '\t');
	rep_topic_put(t);
	/* compressed batches take the record-by-record path */
	t = topic(r, "z");
	struct topic_config ch = {.compression = LS_CODEC_ZSTD, .compression_level = 1,
	                          .set_mask = (1u << TC_COMPRESSION) | (1u << TC_COMPRESSION_LEVEL)};
	char err[256];
	CHECK_EQ_INT(rep_topic_set_config(t, &ch, 0, err, sizeof(err)), 0);
	produce_vals(t, 0, vals, 200, 0, 17);
	produce_vals(t, 1, vals, 100, 3, 64);
	check_bulk_matches_peek(t, "g", '\t');
	rep_topic_put(t);
	node_close(r);
}

static void test_bulk_compaction_holes(void)
{
	struct rep *r = node_open(unit_tmpdir(), 1, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "c");
	struct topic_config ch = {.cleanup = LS_CLEANUP_COMPACT, .segment_bytes = 1024,
	                          .set_mask = (1u << TC_CLEANUP) | (1u << TC_SEGMENT_BYTES)};
	char err[256];
	CHECK_EQ_INT(rep_topic_set_config(t, &ch, 0, err, sizeof(err)), 0);
	const char *vals[300];
	char store[300][24];
	for (int i = 0; i < 300; i++) {
		snprintf(store[i], sizeof(store[i]), "value-%d", i);
		vals[i] = store[i];
	}
	produce_vals(t, 0, vals, 300, 40, 3); /* 40 keys, rewritten: most records die */
	int removed = ls_partition_compact(rep_partition_log(rep_topic_partition(t, 0)));
	CHECK(removed > 100);
	check_bulk_matches_peek(t, "g", '=');
	/* asking twice where the log starts with a gap finds the same record */
	struct rep_group *g = group(t, "h");
	struct rep_member *a = join(g, NULL, NULL);
	struct rep_delivery d;
	CHECK_EQ_INT(rep_member_peek(a, &d), 1);
	int64_t first = d.offset;
	CHECK(first > 0);
	CHECK_EQ_INT(rep_member_ready(a), 1);
	CHECK_EQ_INT(rep_member_peek(a, &d), 1);
	CHECK_EQ_INT(d.offset, first);
	char buf[8];
	struct rep_bulk b;
	CHECK_EQ_INT(rep_member_take_bulk(a, buf, sizeof(buf), 0, '=', &b), -EMSGSIZE);
	CHECK_EQ_INT(rep_member_peek(a, &d), 1);
	CHECK_EQ_INT(d.offset, first);
	rep_member_leave(a, 1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* Lag for metrics: one call per group partition. */
static void lag_fn(void *ctx, const char *topic_, const char *group_, uint32_t p,
                   int64_t committed_, int64_t lag)
{
	int64_t *sum = ctx;
	(void)committed_;
	CHECK_EQ_INT(strcmp(topic_, "t"), 0);
	CHECK_EQ_INT(strcmp(group_, "g"), 0);
	CHECK(p < 2);
	sum[0] += lag;
	sum[1]++;
}

static void test_foreach_lag(void)
{
	struct rep *r = node_open(unit_tmpdir(), 2, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 4);
	produce(t, 1, 3);
	struct rep_group *g = group(t, "g");
	int64_t sum[2] = {0, 0};
	rep_groups_foreach_lag(r, lag_fn, sum);
	CHECK_EQ_INT(sum[0], 7);
	CHECK_EQ_INT(sum[1], 2);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

/* The offsets log compacts (newest record per key) and replays the same. */
static int64_t count_records(const char *dir)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/__groups", dir);
	struct ls_partition *p = NULL;
	struct ls_reader *rd = NULL;
	struct ls_record rec;
	int64_t n = 0, off = 0;
	CHECK_EQ_INT(ls_partition_open(path, NULL, &p), 0);
	if (!p)
		return -1;
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	ls_partition_set_hw(p, info.end_offset);
	CHECK_EQ_INT(ls_reader_open(p, &rd), 0);
	while (rd && ls_reader_next(rd, off, &rec) == 1) {
		off = rec.offset + 1;
		n++;
	}
	ls_reader_close(rd);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	return n;
}

static void test_offsets_log_compacts(void)
{
	const char *dir = unit_tmpdir();
	struct rep *r = node_open(dir, 2, REP_GROUP_EARLIEST, 0);
	struct rep_topic *t = topic(r, "t");
	produce(t, 0, 8002);
	produce(t, 1, 8002);
	CHECK_EQ_INT(rep_group_create(t, "d"), 0);
	struct rep_group *g = group(t, "g");
	struct rep_member *m = join(g, NULL, NULL);
	for (int i = 0; i < 16000; i++) { /* one commit record each */
		if (take(m, 1, NULL) != 1 || rep_member_commit(m) != 0) {
			CHECK(0);
			break;
		}
	}
	CHECK_EQ_INT(rep_group_delete(t, "d"), 0);
	CHECK_EQ_INT(take(m, 3, NULL), 3);
	CHECK_EQ_INT(rep_member_commit(m), 0);
	CHECK_EQ_INT(committed(g, 0) + committed(g, 1), 16003);
	int64_t c0 = committed(g, 0), c1 = committed(g, 1);
	rep_member_leave(m, 1);
	rep_group_put(g);
	rep_topic_put(t);
	rep_groups_compact(r);
	node_close(r);
	int64_t n = count_records(dir);
	CHECK(n > 0 && n < 4000);

	r = node_open(dir, 2, REP_GROUP_EARLIEST, 0);
	t = rep_topic_get(r, "t");
	struct rep_group *x = NULL;
	CHECK_EQ_INT(rep_group_get(t, "d", 0, &x), -ENOENT);
	g = group(t, "g");
	CHECK_EQ_INT(committed(g, 0), c0);
	CHECK_EQ_INT(committed(g, 1), c1);
	rep_group_put(g);
	rep_topic_put(t);
	node_close(r);
}

int main(void)
{
	RUN(test_two_members_share);
	RUN(test_join_waits_for_commit);
	RUN(test_idle_member_hands_over_at_once);
	RUN(test_leave_commit_or_not);
	RUN(test_rewind);
	RUN(test_commit_persists);
	RUN(test_commit_persists_unclean);
	RUN(test_reset);
	RUN(test_offsets_rows);
	RUN(test_round_robin);
	RUN(test_delete_and_names);
	RUN(test_topic_deleted);
	RUN(test_start_latest);
	RUN(test_partition_growth);
	RUN(test_wakers);
	RUN(test_exactly_once_single_thread);
	RUN(test_exactly_once_threads);
	RUN(test_bulk_renders_records);
	RUN(test_bulk_limits);
	RUN(test_bulk_round_robin);
	RUN(test_bulk_matches_peek);
	RUN(test_bulk_compaction_holes);
	RUN(test_foreach_lag);
	RUN(test_offsets_log_compacts);
	return unit_report("test_groups");
}
