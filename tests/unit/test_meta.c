/*
 * test_meta.c - replicator/meta.c (the metadata state machine: every command,
 * its refusals, determinism, encodings and hostile bytes, the controller's
 * decisions) and replicator/meta_raft.c (the same state machine replicated by
 * libraft: in-memory clusters with raft_fixture, and a real raft_uv node).
 */
#include "../../logstore/crc32c.h"
#include "../../logstore/log.h"
#include "../../replicator/meta.h"
#include "../../replicator/meta_raft.h"
#include "unit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <raft/fixture.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* ---- helpers ------------------------------------------------------------ */

/* xorshift64*: the same sequence on every run. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}
static uint32_t rnd_below(uint32_t n) { return n ? (uint32_t)(rnd() % n) : 0; }

static int apply(struct meta_state *s, const struct meta_cmd *c)
{
	struct meta_result res;
	return meta_apply(s, c, &res);
}

static int reg_at(struct meta_state *s, uint16_t id, uint64_t term)
{
	struct meta_cmd c;
	meta_cmd_init(&c, META_CMD_NODE_REGISTER);
	c.node = id;
	c.term = term;
	c.ts_ms = 1000;
	snprintf(c.address, sizeof(c.address), "127.0.0.%u:7070", id);
	return apply(s, &c);
}
static int reg(struct meta_state *s, uint16_t id) { return reg_at(s, id, 1); }

static int node_cmd(struct meta_state *s, enum meta_cmd_type type, uint16_t id, uint64_t term)
{
	struct meta_cmd c;
	meta_cmd_init(&c, type);
	c.node = id;
	c.term = term;
	return apply(s, &c);
}

static void topic_cmd(struct meta_cmd *c, const char *name, uint32_t parts, uint32_t repl,
                      uint32_t min_insync)
{
	meta_cmd_init(c, META_CMD_TOPIC_CREATE);
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->config.partitions = parts;
	c->config.replication = repl;
	c->config.min_insync = min_insync;
	c->config.set_mask = META_PINNED_KEYS;
}

/* Creates a topic; returns its id or a negative errno. */
static int64_t create(struct meta_state *s, const char *name, uint32_t parts, uint32_t repl)
{
	struct meta_cmd c;
	struct meta_result res;
	topic_cmd(&c, name, parts, repl, 1);
	int rc = meta_apply(s, &c, &res);
	return rc < 0 ? rc : res.value;
}

static int set_config(struct meta_state *s, uint64_t topic, enum tc_key k, int64_t v,
                      char *err, size_t errlen)
{
	struct meta_cmd c;
	struct meta_result res;
	meta_cmd_init(&c, META_CMD_TOPIC_CONFIG);
	c.topic_id = topic;
	switch (k) {
	case TC_PARTITIONS: c.config.partitions = (uint32_t)v; break;
	case TC_REPLICATION: c.config.replication = (uint32_t)v; break;
	case TC_MIN_INSYNC: c.config.min_insync = (uint32_t)v; break;
	case TC_RETENTION_MS: c.config.retention_ms = v; break;
	case TC_SEGMENT_BYTES: c.config.segment_bytes = (uint64_t)v; break;
	default: break;
	}
	c.config.set_mask = 1u << k;
	int rc = meta_apply(s, &c, &res);
	if (err)
		snprintf(err, errlen, "%s", res.err);
	return rc;
}

static int part_cmd(struct meta_state *s, enum meta_cmd_type type, uint64_t topic,
                    uint32_t p, int32_t epoch, uint16_t node)
{
	struct meta_cmd c;
	meta_cmd_init(&c, type);
	c.topic_id = topic;
	c.partition = p;
	c.epoch = epoch;
	c.node = node;
	return apply(s, &c);
}

static int name_cmd(struct meta_state *s, enum meta_cmd_type type, uint64_t topic,
                    const char *name, const char *name2, uint16_t node, int64_t *value)
{
	struct meta_cmd c;
	struct meta_result res;
	meta_cmd_init(&c, type);
	c.topic_id = topic;
	c.node = node;
	snprintf(c.name, sizeof(c.name), "%s", name);
	if (name2)
		snprintf(c.name2, sizeof(c.name2), "%s", name2);
	int rc = meta_apply(s, &c, &res);
	if (value)
		*value = res.value;
	return rc;
}

static const struct meta_partition *part(const struct meta_state *s, uint64_t topic, uint32_t p)
{
	const struct meta_topic *t = meta_topic_find(s, topic);
	return t && p < t->nparts ? &t->parts[p] : NULL;
}

/* The state's snapshot bytes (caller frees). */
static uint8_t *snap(const struct meta_state *s, size_t *len)
{
	*len = meta_snapshot_encode(s, NULL, 0);
	uint8_t *b = malloc(*len);
	if (!b)
		abort();
	CHECK_EQ_INT(meta_snapshot_encode(s, b, *len), *len);
	return b;
}

static int same_state(const struct meta_state *a, const struct meta_state *b)
{
	size_t la, lb;
	uint8_t *sa = snap(a, &la), *sb = snap(b, &lb);
	int same = la == lb && memcmp(sa, sb, la) == 0;
	free(sa);
	free(sb);
	return same;
}

/* The snapshot decodes (every invariant holds) and re-encodes to itself. */
static int state_valid(const struct meta_state *s)
{
	size_t len;
	uint8_t *b = snap(s, &len);
	struct meta_state d;
	int rc = meta_snapshot_decode(b, len, &d);
	int ok = rc == 0 && same_state(s, &d);
	if (rc != 0)
		fprintf(stderr, "  snapshot does not decode: %d\n", rc);
	meta_state_free(&d);
	free(b);
	return ok;
}

/* A three-node state with topic "orders" (6 partitions, replication 3). */
static uint64_t three_nodes(struct meta_state *s)
{
	meta_state_init(s);
	CHECK_EQ_INT(reg(s, 1), 0);
	CHECK_EQ_INT(reg(s, 2), 0);
	CHECK_EQ_INT(reg(s, 3), 0);
	int64_t id = create(s, "orders", 6, 3);
	CHECK(id > 0);
	return (uint64_t)id;
}

/* ---- nodes ---------------------------------------------------------------- */

/* Register, re-register, heartbeat, down, and their refusals. */
static void test_nodes(void)
{
	struct meta_state s;
	struct meta_cmd c;
	meta_state_init(&s);
	CHECK_EQ_INT(reg(&s, 2), 0);
	CHECK_EQ_INT(reg(&s, 1), 0);
	CHECK_EQ_INT(s.nnodes, 2);
	CHECK_EQ_INT(s.nodes[0].id, 1);   /* kept in id order */
	CHECK_EQ_INT(meta_nodes_alive(&s), 2);
	CHECK_EQ_INT(reg(&s, 0), -EINVAL);

	/* Another node's address is refused; a new address for the same id is not. */
	meta_cmd_init(&c, META_CMD_NODE_REGISTER);
	c.node = 3;
	c.term = 1;
	snprintf(c.address, sizeof(c.address), "127.0.0.1:7070");
	CHECK_EQ_INT(apply(&s, &c), -EADDRINUSE);
	c.node = 1;
	snprintf(c.address, sizeof(c.address), "10.0.0.1:7070");
	CHECK_EQ_INT(apply(&s, &c), 0);
	CHECK(strcmp(meta_node_find(&s, 1)->address, "10.0.0.1:7070") == 0);
	snprintf(c.address, sizeof(c.address), "bad address");
	CHECK_EQ_INT(apply(&s, &c), -EINVAL);
	c.address[0] = 0;
	CHECK_EQ_INT(apply(&s, &c), -EINVAL);

	/* Heartbeats: unknown node, older term, revival of a down node. */
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_HEARTBEAT, 9, 1), -ENOENT);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_HEARTBEAT, 2, 5), 0);
	CHECK_EQ_INT(meta_node_find(&s, 2)->hb_term, 5);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_HEARTBEAT, 2, 4), -ESTALE);
	CHECK_EQ_INT(reg_at(&s, 2, 3), -ESTALE);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 2, 0), 0);
	CHECK_EQ_INT(meta_node_find(&s, 2)->alive, 0);
	CHECK_EQ_INT(meta_nodes_alive(&s), 1);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 2, 0), 0);   /* idempotent */
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 7, 0), -ENOENT);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_HEARTBEAT, 2, 6), 0);
	CHECK_EQ_INT(meta_node_find(&s, 2)->alive, 1);

	/* The node table has a limit. */
	for (unsigned id = 3; s.nnodes < META_MAX_NODES; id++)
		CHECK_EQ_INT(reg(&s, (uint16_t)id), 0);
	CHECK_EQ_INT(reg(&s, 60000), -ENOSPC);
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

/* ---- topics ---------------------------------------------------------------- */

/* Creation: names, duplicates, pinned keys, replication against live nodes,
 * ids never reused after delete. */
static void test_topic_create_delete(void)
{
	struct meta_state s;
	struct meta_cmd c;
	struct meta_result res;
	meta_state_init(&s);
	CHECK_EQ_INT(create(&s, "orders", 1, 1), -EHOSTDOWN);   /* no node at all */
	CHECK_EQ_INT(reg(&s, 1), 0);
	CHECK_EQ_INT(reg(&s, 2), 0);
	CHECK_EQ_INT(create(&s, "orders", 3, 2), 1);
	CHECK_EQ_INT(create(&s, "orders", 3, 2), -EEXIST);
	CHECK_EQ_INT(create(&s, ".hidden", 1, 1), -EINVAL);
	CHECK_EQ_INT(create(&s, "a/b", 1, 1), -EINVAL);
	CHECK_EQ_INT(create(&s, "", 1, 1), -EINVAL);
	CHECK_EQ_INT(create(&s, "big", META_MAX_PARTITIONS + 1, 1), -EINVAL);
	CHECK_EQ_INT(create(&s, "zero", 0, 1), -EINVAL);

	topic_cmd(&c, "three", 1, 3, 1);
	CHECK_EQ_INT(meta_apply(&s, &c, &res), -EINVAL);
	CHECK(strcmp(res.err, "replication: 3 exceeds the 2 node(s) up in the cluster") == 0);
	topic_cmd(&c, "insync", 1, 2, 3);
	CHECK_EQ_INT(meta_apply(&s, &c, &res), -EINVAL);
	CHECK(strcmp(res.err, "min_insync: 3 exceeds replication 2") == 0);
	topic_cmd(&c, "nopin", 1, 1, 1);
	c.config.set_mask = (1u << TC_PARTITIONS) | (1u << TC_REPLICATION);
	CHECK_EQ_INT(meta_apply(&s, &c, &res), -EINVAL);
	topic_cmd(&c, "badseg", 1, 1, 1);
	c.config.segment_bytes = 10;
	c.config.set_mask |= 1u << TC_SEGMENT_BYTES;
	CHECK_EQ_INT(meta_apply(&s, &c, &res), -EINVAL);
	CHECK(strcmp(res.err, "segment_bytes: value out of range") == 0);

	/* A dead node does not count towards replication. */
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 2, 0), 0);
	CHECK_EQ_INT(create(&s, "two", 1, 2), -EINVAL);
	CHECK_EQ_INT(create(&s, "one", 2, 1), 2);
	const struct meta_topic *t = meta_topic_by_name(&s, "one");
	CHECK(t && t->parts[0].leader == 1 && t->parts[1].leader == 1);

	/* Unset keys are stored as the built-in values (canonical snapshots). */
	topic_cmd(&c, "canon", 1, 1, 1);
	c.config.retention_ms = 12345;   /* not in set_mask: ignored */
	CHECK_EQ_INT(meta_apply(&s, &c, &res), 0);
	CHECK_EQ_INT(meta_topic_find(&s, (uint64_t)res.value)->overrides.retention_ms, -1);

	struct meta_cmd d;
	meta_cmd_init(&d, META_CMD_TOPIC_DELETE);
	d.topic_id = 1;
	CHECK_EQ_INT(apply(&s, &d), 0);
	CHECK_EQ_INT(apply(&s, &d), -ENOENT);
	CHECK(meta_topic_by_name(&s, "orders") == NULL);
	CHECK_EQ_INT(create(&s, "orders", 1, 1), 4);   /* a new id, never 1 again */
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

/* .config changes: set, clear, pinned keys, the cross-key rules, growth of
 * partitions (placed, group offsets extended) and of replication. */
static void test_topic_config(void)
{
	struct meta_state s;
	char err[160];
	meta_state_init(&s);
	CHECK_EQ_INT(reg(&s, 1), 0);
	CHECK_EQ_INT(reg(&s, 2), 0);
	CHECK_EQ_INT(reg(&s, 3), 0);
	uint64_t id = (uint64_t)create(&s, "orders", 2, 1);
	int64_t v;
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "billing", NULL, 0, &v), 0);

	CHECK_EQ_INT(set_config(&s, id, TC_RETENTION_MS, 60000, err, sizeof(err)), 0);
	const struct meta_topic *t = meta_topic_find(&s, id);
	CHECK_EQ_INT(t->overrides.retention_ms, 60000);
	CHECK(t->overrides.set_mask & (1u << TC_RETENTION_MS));

	struct meta_cmd c;
	meta_cmd_init(&c, META_CMD_TOPIC_CONFIG);
	c.topic_id = id;
	c.cleared = 1u << TC_RETENTION_MS;
	CHECK_EQ_INT(apply(&s, &c), 0);
	CHECK_EQ_INT(t->overrides.retention_ms, -1);
	CHECK(!(t->overrides.set_mask & (1u << TC_RETENTION_MS)));
	c.cleared = 1u << TC_REPLICATION;
	CHECK_EQ_INT(apply(&s, &c), -EINVAL);
	c.cleared = 1u << TC_RETENTION_MS;
	c.config.set_mask = 1u << TC_RETENTION_MS;
	CHECK_EQ_INT(apply(&s, &c), -EINVAL);   /* set and cleared at once */
	c.topic_id = 99;
	CHECK_EQ_INT(apply(&s, &c), -ENOENT);

	CHECK_EQ_INT(set_config(&s, id, TC_PARTITIONS, 1, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "partitions: cannot shrink from 2 to 1") == 0);
	CHECK_EQ_INT(set_config(&s, id, TC_MIN_INSYNC, 2, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "min_insync: 2 exceeds replication 1") == 0);
	CHECK_EQ_INT(set_config(&s, id, TC_REPLICATION, 4, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "replication: 4 exceeds the 3 node(s) up in the cluster") == 0);

	/* Grow partitions: new ones are placed, the group gets -1 offsets. */
	CHECK_EQ_INT(set_config(&s, id, TC_PARTITIONS, 5, err, sizeof(err)), 0);
	t = meta_topic_find(&s, id);
	CHECK_EQ_INT(t->nparts, 5);
	CHECK_EQ_INT(t->overrides.partitions, 5);
	CHECK_EQ_INT(t->groups[0].noffsets, 5);
	CHECK_EQ_INT(t->groups[0].offsets[4], -1);
	for (uint32_t p = 0; p < 5; p++)
		CHECK(t->parts[p].leader != 0 && t->parts[p].nreplicas == 1);

	/* Grow replication: new replicas join outside the in-sync set. */
	CHECK_EQ_INT(set_config(&s, id, TC_REPLICATION, 3, err, sizeof(err)), 0);
	for (uint32_t p = 0; p < 5; p++) {
		const struct meta_partition *mp = &t->parts[p];
		CHECK_EQ_INT(mp->nreplicas, 3);
		CHECK_EQ_INT(mp->nisr, 1);
		CHECK_EQ_INT(mp->isr[0], mp->leader);
	}
	/* With a node down, replication may not change, other keys may. */
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 3, 0), 0);
	CHECK_EQ_INT(set_config(&s, id, TC_RETENTION_MS, 5, err, sizeof(err)), 0);
	CHECK_EQ_INT(set_config(&s, id, TC_REPLICATION, 3, err, sizeof(err)), 0);  /* unchanged */
	/* Shrink replication: followers go, dead first; the leader stays. */
	CHECK_EQ_INT(set_config(&s, id, TC_REPLICATION, 2, err, sizeof(err)), 0);
	for (uint32_t p = 0; p < 5; p++) {
		const struct meta_partition *mp = &t->parts[p];
		CHECK_EQ_INT(mp->nreplicas, 2);
		CHECK(mp->leader == mp->replicas[0] || mp->leader == mp->replicas[1]);
		if (mp->leader != 3)
			CHECK(mp->replicas[0] != 3 && mp->replicas[1] != 3);
	}
	CHECK_EQ_INT(set_config(&s, id, TC_SEGMENT_BYTES, 100, err, sizeof(err)), -EINVAL);
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

/* ---- producer files -------------------------------------------------------- */

static void test_pfiles(void)
{
	struct meta_state s;
	int64_t v;
	meta_state_init(&s);
	CHECK_EQ_INT(reg(&s, 1), 0);
	uint64_t id = (uint64_t)create(&s, "logs", 1, 1);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_ADD, id, "app.log", NULL, 0, &v), 0);
	CHECK_EQ_INT(v, 1);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_ADD, id, "db log", NULL, 0, &v), 0);
	CHECK_EQ_INT(v, 2);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_ADD, id, "app.log", NULL, 0, &v), -EEXIST);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_ADD, id, "a/b", NULL, 0, &v), -EINVAL);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_ADD, id, "", NULL, 0, &v), -EINVAL);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_ADD, 77, "x", NULL, 0, &v), -ENOENT);

	/* Rename keeps the id and replaces the target, like rename(2). */
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_RENAME, id, "app.log", "db log", 0, &v), 0);
	const struct meta_topic *t = meta_topic_find(&s, id);
	CHECK_EQ_INT(t->npfiles, 1);
	CHECK_EQ_INT(meta_pfile_by_name(t, "db log")->id, 1);
	CHECK(meta_pfile_by_name(t, "app.log") == NULL);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_RENAME, id, "nope", "x", 0, &v), -ENOENT);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_RENAME, id, "db log", "a/b", 0, &v), -EINVAL);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_RENAME, id, "db log", "db log", 0, &v), 0);

	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_REMOVE, id, "db log", NULL, 0, &v), 0);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_REMOVE, id, "db log", NULL, 0, &v), -ENOENT);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_PFILE_ADD, id, "app.log", NULL, 0, &v), 0);
	CHECK_EQ_INT(v, 3);   /* ids are never reused */
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

/* ---- partitions: leader and in-sync set ----------------------------------- */

static void test_leader_change(void)
{
	struct meta_state s;
	uint64_t id = three_nodes(&s);
	const struct meta_partition *mp = part(&s, id, 0);
	uint16_t old = mp->leader, other = mp->replicas[1];
	CHECK_EQ_INT(mp->leader_epoch, 0);

	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 1, other), -ESTALE);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 9, 0, other), -ENOENT);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 0, 9), -EINVAL);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, other, 0), 0);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 0, other), -EHOSTDOWN);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_HEARTBEAT, other, 2), 0);

	/* A transfer to a live in-sync replica bumps the epoch, keeps the set. */
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 0, other), 0);
	CHECK_EQ_INT(mp->leader, other);
	CHECK_EQ_INT(mp->leader_epoch, 1);
	CHECK_EQ_INT(mp->nisr, 3);

	/* After the leader dies, electing another drops the dead from the set. */
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, other, 0), 0);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 1, old), 0);
	CHECK_EQ_INT(mp->leader_epoch, 2);
	CHECK_EQ_INT(mp->nisr, 2);
	CHECK(mp->isr[0] != other && mp->isr[1] != other);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 2, other), -EINVAL);  /* left the set */

	/* Offline: leader 0, only once. */
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 2, 0), 0);
	CHECK_EQ_INT(mp->leader, 0);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 3, 0), -EALREADY);
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

static void test_isr_changes(void)
{
	struct meta_state s;
	uint64_t id = three_nodes(&s);
	const struct meta_partition *mp = part(&s, id, 1);
	uint16_t leader = mp->leader, f1 = mp->replicas[1], f2 = mp->replicas[2];

	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_SHRINK, id, 1, 0, leader), -EINVAL);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_SHRINK, id, 1, 5, f1), -ESTALE);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_SHRINK, id, 1, 0, f1), 0);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_SHRINK, id, 1, 0, f1), -ENOENT);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_SHRINK, id, 1, 0, f2), 0);
	CHECK_EQ_INT(mp->nisr, 1);
	CHECK_EQ_INT(mp->leader_epoch, 0);   /* in-sync changes keep the epoch */

	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_EXPAND, id, 1, 0, 9), -EINVAL);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_EXPAND, id, 1, 0, leader), -EEXIST);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, f2, 0), 0);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_EXPAND, id, 1, 0, f2), -EHOSTDOWN);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_HEARTBEAT, f2, 3), 0);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_EXPAND, id, 1, 0, f2), 0);
	CHECK_EQ_INT(part_cmd(&s, META_CMD_ISR_EXPAND, id, 1, 0, f1), 0);
	/* Back in replica order whatever the order of expansion. */
	CHECK_EQ_INT(mp->nisr, 3);
	CHECK(memcmp(mp->isr, mp->replicas, 3 * sizeof(uint16_t)) == 0);
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

/* ---- groups and producer ids ------------------------------------------------ */

static void test_groups(void)
{
	struct meta_state s;
	int64_t v;
	uint64_t id = three_nodes(&s);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "a", NULL, 0, &v), 0);
	CHECK_EQ_INT(v, 1);   /* least loaded, lowest id */
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "b", NULL, 0, &v), 0);
	CHECK_EQ_INT(v, 2);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "a", NULL, 0, &v), -EEXIST);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "bad/name", NULL, 0, &v), -EINVAL);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "c", NULL, 9, &v), -ENOENT);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 3, 0), 0);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "c", NULL, 3, &v), -EHOSTDOWN);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "c", NULL, 0, &v), 0);
	CHECK_EQ_INT(v, 1);   /* 3 is down */

	/* Commit: all or nothing. */
	struct meta_cmd c;
	meta_cmd_init(&c, META_CMD_GROUP_COMMIT);
	c.topic_id = id;
	snprintf(c.name, sizeof(c.name), "a");
	c.noffsets = 2;
	c.offsets[0] = (struct meta_offset){ 0, 42 };
	c.offsets[1] = (struct meta_offset){ 6, 7 };   /* no partition 6 */
	CHECK_EQ_INT(apply(&s, &c), -EINVAL);
	const struct meta_group *g = meta_group_find(meta_topic_find(&s, id), "a");
	CHECK_EQ_INT(g->offsets[0], -1);
	c.offsets[1] = (struct meta_offset){ 5, -3 };
	CHECK_EQ_INT(apply(&s, &c), -EINVAL);
	c.offsets[1] = (struct meta_offset){ 5, 0 };
	CHECK_EQ_INT(apply(&s, &c), 0);
	CHECK_EQ_INT(g->offsets[0], 42);
	CHECK_EQ_INT(g->offsets[5], 0);
	c.offsets[0].offset = 3;   /* resets may move back */
	CHECK_EQ_INT(apply(&s, &c), 0);
	CHECK_EQ_INT(g->offsets[0], 3);
	/* From its coordinator only (fenced): a node that ran the group from an
	 * old state, a restart's, cannot move it back. */
	c.type = META_CMD_GROUP_COMMIT_BY;
	c.offsets[0].offset = 9;
	c.node = g->coordinator == 1 ? 2 : 1;
	CHECK_EQ_INT(apply(&s, &c), -ESTALE);
	CHECK_EQ_INT(g->offsets[0], 3);
	c.node = g->coordinator;
	CHECK_EQ_INT(apply(&s, &c), 0);
	CHECK_EQ_INT(g->offsets[0], 9);
	c.type = META_CMD_GROUP_COMMIT;
	snprintf(c.name, sizeof(c.name), "zz");
	CHECK_EQ_INT(apply(&s, &c), -ENOENT);

	/* Move: to a live node, or picked (0). */
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_MOVE, id, "b", NULL, 3, &v), -EHOSTDOWN);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_MOVE, id, "b", NULL, 1, &v), 0);
	CHECK_EQ_INT(meta_group_find(meta_topic_find(&s, id), "b")->coordinator, 1);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_MOVE, id, "b", NULL, 0, &v), 0);
	CHECK_EQ_INT(v, 2);

	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_DELETE, id, "a", NULL, 0, &v), 0);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_DELETE, id, "a", NULL, 0, &v), -ENOENT);
	const struct meta_topic *t = meta_topic_find(&s, id);
	CHECK_EQ_INT(t->ngroups, 2);
	CHECK(strcmp(t->groups[0].name, "b") == 0 && strcmp(t->groups[1].name, "c") == 0);
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

static void test_alloc_pids(void)
{
	struct meta_state s;
	struct meta_cmd c;
	struct meta_result res;
	meta_state_init(&s);
	meta_cmd_init(&c, META_CMD_ALLOC_PIDS);
	c.count = 1000;
	CHECK_EQ_INT(meta_apply(&s, &c, &res), 0);
	CHECK_EQ_INT(res.value, 1);
	CHECK_EQ_INT(meta_apply(&s, &c, &res), 0);
	CHECK_EQ_INT(res.value, 1001);
	c.count = 0;
	CHECK_EQ_INT(meta_apply(&s, &c, &res), -EINVAL);
	c.count = META_MAX_PID_BLOCK + 1;
	CHECK_EQ_INT(meta_apply(&s, &c, &res), -EINVAL);
	s.next_producer_id = INT64_MAX - 5;
	c.count = 10;
	CHECK_EQ_INT(meta_apply(&s, &c, &res), -EOVERFLOW);
	CHECK_EQ_INT(s.next_producer_id, INT64_MAX - 5);
	meta_state_free(&s);
}

/* ---- determinism, refusals, encodings ------------------------------------- */

static const char *const names[] = { "orders", "logs", "a", "b.c", "x-y", "bad/x", "" };

/* A random command, valid or not, against whatever s holds. */
static void random_cmd(const struct meta_state *s, struct meta_cmd *c)
{
	enum meta_cmd_type type = (enum meta_cmd_type)(1 + rnd_below(META_CMD_NTYPES - 1));
	meta_cmd_init(c, type);
	c->origin = (uint16_t)rnd_below(4);
	c->seq = rnd();
	c->node = (uint16_t)rnd_below(6);
	snprintf(c->address, sizeof(c->address), "127.0.0.%u:7070", c->node);
	c->term = rnd_below(5);
	c->ts_ms = (int64_t)rnd_below(100000);
	c->topic_id = s->ntopics && rnd_below(4) ? s->topics[rnd_below(s->ntopics)].id
	                                         : rnd_below(6);
	const struct meta_topic *t = meta_topic_find(s, c->topic_id);
	c->partition = rnd_below(t ? t->nparts + 1 : 3);
	c->epoch = t && c->partition < t->nparts && rnd_below(4)
	           ? t->parts[c->partition].leader_epoch : (int32_t)rnd_below(3);
	snprintf(c->name, sizeof(c->name), "%s", names[rnd_below(7)]);
	snprintf(c->name2, sizeof(c->name2), "%s", names[rnd_below(7)]);
	if (type == META_CMD_GROUP_MOVE || type == META_CMD_GROUP_COMMIT ||
	    type == META_CMD_GROUP_COMMIT_BY || type == META_CMD_GROUP_DELETE) {
		if (t && t->ngroups && rnd_below(2)) {
			const struct meta_group *g = &t->groups[rnd_below(t->ngroups)];
			snprintf(c->name, sizeof(c->name), "%s", g->name);
			if (type == META_CMD_GROUP_COMMIT_BY && rnd_below(2))
				c->node = g->coordinator;
		}
	}
	c->config.partitions = 1 + rnd_below(4);
	c->config.replication = 1 + rnd_below(4);
	c->config.min_insync = 1 + rnd_below(2);
	c->config.retention_ms = (int64_t)rnd_below(1000) - 2;
	c->config.set_mask = rnd_below(4) ? META_PINNED_KEYS | (rnd_below(2) << TC_RETENTION_MS)
	                                  : (uint32_t)rnd_below(1u << TC_NKEYS);
	c->cleared = rnd_below(3) ? 0 : (uint32_t)rnd_below(1u << TC_NKEYS);
	c->count = rnd_below(3000);
	c->noffsets = rnd_below(4);
	for (uint32_t i = 0; i < c->noffsets; i++)
		c->offsets[i] = (struct meta_offset){ rnd_below(5), (int64_t)rnd_below(100) - 1 };
}

/* The same command log applied to two states (one straight, one through
 * encode/decode of every command) gives identical results and snapshots;
 * every intermediate state satisfies the invariants; a refused command
 * changes nothing. */
static void test_determinism(void)
{
	struct meta_state a, b;
	static struct meta_cmd c, d;
	uint8_t buf[META_CMD_MAX_BYTES];
	int applied = 0, refused = 0;
	uint32_t most_topics = 0, most_groups = 0;
	meta_state_init(&a);
	meta_state_init(&b);
	for (int i = 0; i < 3000; i++) {
		random_cmd(&a, &c);
		long n = meta_cmd_encode(&c, buf, sizeof(buf));
		CHECK(n > 0 && n <= META_CMD_MAX_BYTES);
		CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n, &d), 0);
		size_t before_len;
		uint8_t *before = snap(&a, &before_len);
		struct meta_result ra, rb;
		int rca = meta_apply(&a, &c, &ra), rcb = meta_apply(&b, &d, &rb);
		CHECK_EQ_INT(rca, rcb);
		CHECK_EQ_INT(ra.value, rb.value);
		CHECK(strcmp(ra.err, rb.err) == 0);
		if (rca < 0) {
			refused++;
			size_t after_len;
			uint8_t *after = snap(&a, &after_len);
			CHECK(after_len == before_len && memcmp(before, after, after_len) == 0);
			free(after);
			CHECK(ra.err[0] != 0);
		} else {
			applied++;
		}
		free(before);
		if (a.ntopics > most_topics)
			most_topics = a.ntopics;
		for (uint32_t t = 0; t < a.ntopics; t++)
			if (a.topics[t].ngroups > most_groups)
				most_groups = a.topics[t].ngroups;
		if (i % 100 == 0) {
			CHECK(same_state(&a, &b));
			CHECK(state_valid(&a));
		}
	}
	CHECK(same_state(&a, &b));
	CHECK(state_valid(&a));
	CHECK(applied > 300 && refused > 300);
	CHECK(most_topics >= 2 && most_groups >= 1);   /* the log did build state */
	meta_state_free(&a);
	meta_state_free(&b);
}

/* Every type survives encode/decode; the encoder is snprintf-like; the
 * decoder refuses truncation, trailing bytes, bad versions and types. */
static void test_cmd_roundtrip(void)
{
	static struct meta_cmd c, d;
	uint8_t buf[META_CMD_MAX_BYTES], buf2[META_CMD_MAX_BYTES];
	for (int type = 1; type < META_CMD_NTYPES; type++) {
		meta_cmd_init(&c, (enum meta_cmd_type)type);
		c.origin = 3;
		c.seq = 0x0102030405060708ull;
		c.node = 65535;
		snprintf(c.address, sizeof(c.address), "10.1.2.3:65535");
		c.term = 77;
		c.ts_ms = -5;
		c.topic_id = UINT64_MAX;
		c.partition = 9999;
		c.epoch = -1;
		memset(c.name, 'n', REP_FILE_NAME_MAX);
		c.name[REP_FILE_NAME_MAX] = 0;
		snprintf(c.name2, sizeof(c.name2), "target");
		c.config.retention_bytes = 1ll << 40;
		c.config.key_separator = '\t';
		c.config.set_mask = META_PINNED_KEYS | (1u << TC_KEY_SEPARATOR);
		c.cleared = 1u << TC_ACKS;
		c.count = 12;
		c.noffsets = META_CMD_MAX_OFFSETS;
		for (uint32_t i = 0; i < c.noffsets; i++)
			c.offsets[i] = (struct meta_offset){ i, (int64_t)i * 1000 };
		long n = meta_cmd_encode(&c, NULL, 0);
		CHECK(n > 16 && n <= META_CMD_MAX_BYTES);
		CHECK_EQ_INT(meta_cmd_encode(&c, buf, 10), n);   /* too small: length only */
		CHECK_EQ_INT(meta_cmd_encode(&c, buf, sizeof(buf)), n);
		CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n, &d), 0);
		CHECK_EQ_INT(d.type, type);
		CHECK_EQ_INT(d.origin, 3);
		CHECK(d.seq == c.seq);
		CHECK_EQ_INT(meta_cmd_encode(&d, buf2, sizeof(buf2)), n);
		CHECK(memcmp(buf, buf2, (size_t)n) == 0);
		if (type == META_CMD_NODE_REGISTER)
			CHECK(strcmp(d.address, c.address) == 0 && d.term == 77 && d.ts_ms == -5);
		if (type == META_CMD_TOPIC_CONFIG)
			CHECK(d.config.retention_bytes == 1ll << 40 && d.config.key_separator == '\t' &&
			      d.cleared == c.cleared && strcmp(d.name, "") == 0);
		if (type == META_CMD_GROUP_COMMIT)
			CHECK(d.noffsets == META_CMD_MAX_OFFSETS && d.offsets[255].offset == 255000 &&
			      strcmp(d.name, c.name) == 0);
		if (type == META_CMD_PFILE_RENAME)
			CHECK(strcmp(d.name2, "target") == 0);
		/* Every truncation is refused; up to 7 zero bytes of padding are
		 * not, a non-zero or an eighth trailing byte is. */
		for (long cut = 0; cut < n; cut++)
			CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)cut, &d), REP_EPROTO);
		memset(buf + n, 0, 8);
		CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n + 7, &d), 0);
		CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n + 8, &d), REP_EPROTO);
		buf[n + 3] = 1;
		CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n + 4, &d), REP_EPROTO);
	}
	meta_cmd_init(&c, META_CMD_ALLOC_PIDS);
	long n = meta_cmd_encode(&c, buf, sizeof(buf));
	buf[0] = META_CMD_VERSION + 1;
	CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n, &d), -EPROTONOSUPPORT);
	buf[0] = 0;
	CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n, &d), REP_EPROTO);
	buf[0] = META_CMD_VERSION;
	buf[1] = META_CMD_NTYPES;
	CHECK_EQ_INT(meta_cmd_decode(buf, (size_t)n, &d), REP_EPROTO);
	/* Unencodable commands. */
	meta_cmd_init(&c, META_CMD_NTYPES);
	CHECK_EQ_INT(meta_cmd_encode(&c, buf, sizeof(buf)), -EINVAL);
	meta_cmd_init(&c, META_CMD_GROUP_COMMIT);
	c.noffsets = META_CMD_MAX_OFFSETS + 1;
	CHECK_EQ_INT(meta_cmd_encode(&c, buf, sizeof(buf)), -EINVAL);
	meta_cmd_init(&c, META_CMD_PFILE_ADD);
	memset(c.name, 'x', sizeof(c.name));
	CHECK_EQ_INT(meta_cmd_encode(&c, buf, sizeof(buf)), -EINVAL);
}

/* Hostile bytes through meta_cmd_decode: random buffers and mutations of
 * valid commands. Decoding never crashes; what decodes applies without
 * breaking an invariant. */
static void test_cmd_fuzz(void)
{
	struct meta_state s;
	static struct meta_cmd c, d;
	uint8_t buf[META_CMD_MAX_BYTES];
	int decoded = 0;
	three_nodes(&s);
	for (int i = 0; i < 60000; i++) {
		size_t len = rnd_below(64);
		for (size_t k = 0; k < len; k++)
			buf[k] = (uint8_t)rnd();
		if (i % 2) {   /* plausible header, random body */
			buf[0] = META_CMD_VERSION;
			if (len > 1)
				buf[1] = (uint8_t)(1 + rnd_below(META_CMD_NTYPES - 1));
			if (len >= 16) {
				uint32_t b = (uint32_t)len - 16;
				memcpy(buf + 12, &b, 4);   /* little-endian host */
			}
		}
		int rc = meta_cmd_decode(buf, len, &d);
		CHECK(rc == 0 || rc == REP_EPROTO || rc == -EPROTONOSUPPORT);
		if (rc == 0) {
			decoded++;
			(void)!meta_apply(&s, &d, NULL);
		}
	}
	for (int i = 0; i < 20000; i++) {
		random_cmd(&s, &c);
		long n = meta_cmd_encode(&c, buf, sizeof(buf));
		CHECK(n > 0);
		int flips = 1 + (int)rnd_below(4);
		for (int k = 0; k < flips; k++)
			buf[rnd_below((uint32_t)n)] ^= (uint8_t)(1u << rnd_below(8));
		size_t len = (size_t)n;
		if (rnd_below(4) == 0)
			len = rnd_below((uint32_t)n + 8);
		int rc = meta_cmd_decode(buf, len > sizeof(buf) ? sizeof(buf) : len, &d);
		CHECK(rc == 0 || rc == REP_EPROTO || rc == -EPROTONOSUPPORT);
		if (rc == 0) {
			decoded++;
			(void)!meta_apply(&s, &d, NULL);
		}
	}
	CHECK(decoded > 1000);
	CHECK(state_valid(&s));
	meta_state_free(&s);
}

/* A busy state's snapshot round-trips byte for byte; truncations, bad CRC,
 * bad magic and structurally hostile bodies (with a correct CRC) are refused
 * without crashing or leaking. */
static void test_snapshot(void)
{
	struct meta_state s, d;
	static struct meta_cmd c;
	meta_state_init(&s);
	for (int i = 0; i < 1500 || (s.ntopics == 0 && i < 20000); i++) {
		random_cmd(&s, &c);
		(void)!meta_apply(&s, &c, NULL);
	}
	CHECK(s.ntopics > 0);
	size_t len;
	uint8_t *b = snap(&s, &len);
	CHECK_EQ_INT(meta_snapshot_decode(b, len, &d), 0);
	CHECK(same_state(&s, &d));
	meta_state_free(&d);
	CHECK_EQ_INT(meta_snapshot_encode(&s, b, 3), len);   /* snprintf-like */
	free(b);

	struct meta_state empty;
	meta_state_init(&empty);
	CHECK(state_valid(&empty));

	b = snap(&s, &len);
	for (size_t cut = 0; cut < len; cut += 1 + cut / 16)
		CHECK(meta_snapshot_decode(b, cut, &d) < 0);
	b[len / 2] ^= 1;
	CHECK_EQ_INT(meta_snapshot_decode(b, len, &d), REP_EPROTO);   /* CRC */
	b[len / 2] ^= 1;

	/* Mutations with the CRC recomputed: only the structure checks stand. */
	uint8_t *m = malloc(len);
	int ok = 0;
	for (int i = 0; i < 4000; i++) {
		memcpy(m, b, len);
		int flips = 1 + (int)rnd_below(3);
		for (int k = 0; k < flips; k++)
			m[4 + rnd_below((uint32_t)len - 8)] = (uint8_t)rnd();
		uint32_t crc = ls_crc32c(0, m, len - 4);
		memcpy(m + len - 4, &crc, 4);   /* little-endian host */
		int rc = meta_snapshot_decode(m, len, &d);
		CHECK(rc == 0 || rc == REP_EPROTO || rc == -EPROTONOSUPPORT);
		if (rc == 0) {
			ok++;
			CHECK(state_valid(&d));
			meta_state_free(&d);
		} else {
			CHECK(d.ntopics == 0 && d.nnodes == 0);
		}
	}
	CHECK(ok > 0 && ok < 4000);
	free(m);
	free(b);
	meta_state_free(&s);
}

/* ---- controller decisions ---------------------------------------------------- */

static bool in_isr_of(const struct meta_partition *mp, uint16_t node)
{
	for (unsigned i = 0; i < mp->nisr; i++)
		if (mp->isr[i] == node)
			return true;
	return false;
}

static unsigned leads(const struct meta_state *s, uint16_t node)
{
	unsigned n = 0;
	for (uint32_t t = 0; t < s->ntopics; t++)
		for (uint32_t p = 0; p < s->topics[t].nparts; p++)
			n += s->topics[t].parts[p].leader == node;
	return n;
}

/* Placement spreads leaders evenly, puts replicas on distinct live nodes,
 * and accounts for what is already placed. */
static void test_place(void)
{
	struct meta_state s;
	uint64_t id = three_nodes(&s);   /* 6 partitions, replication 3 */
	for (uint16_t n = 1; n <= 3; n++)
		CHECK_EQ_INT(leads(&s, n), 2);
	const struct meta_topic *t = meta_topic_find(&s, id);
	for (uint32_t p = 0; p < t->nparts; p++) {
		const struct meta_partition *mp = &t->parts[p];
		CHECK(mp->replicas[0] != mp->replicas[1] && mp->replicas[1] != mp->replicas[2] &&
		      mp->replicas[0] != mp->replicas[2]);
		CHECK_EQ_INT(mp->leader, mp->replicas[0]);
		CHECK_EQ_INT(mp->nisr, 3);
	}
	CHECK(create(&s, "more", 4, 2) > 0);   /* 10 partitions: 4/3/3 */
	CHECK(leads(&s, 1) >= 3 && leads(&s, 2) >= 3 && leads(&s, 3) >= 3);
	CHECK(create(&s, "more2", 2, 1) > 0);  /* the two less loaded nodes */
	for (uint16_t n = 1; n <= 3; n++)
		CHECK_EQ_INT(leads(&s, n), 4);
	/* A dead node gets nothing. */
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 2, 0), 0);
	struct meta_partition out[4];
	CHECK_EQ_INT(meta_place(&s, 4, 2, out), 0);
	for (int p = 0; p < 4; p++)
		CHECK(out[p].replicas[0] != 2 && out[p].replicas[1] != 2);
	CHECK_EQ_INT(meta_place(&s, 1, 3, out), -EINVAL);
	CHECK_EQ_INT(meta_place(&s, 1, 0, out), -EINVAL);
	meta_state_free(&s);
}

/* On a leader's death the controller elects the first live in-sync replica
 * and the epoch goes up; it never elects outside the in-sync set (offline
 * instead), and elects again when an in-sync replica comes back. */
static void test_election(void)
{
	struct meta_state s;
	static struct meta_cmd cmds[64];
	uint64_t id = three_nodes(&s);
	const struct meta_partition *mp = part(&s, id, 0);
	uint16_t old = mp->leader;
	CHECK_EQ_INT(meta_ctl_plan(&s, cmds, 64), 0);   /* all healthy: nothing */

	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, old, 0), 0);
	CHECK_EQ_INT(meta_elect(&s, mp), mp->replicas[1]);
	size_t n = meta_ctl_plan(&s, cmds, 64);
	/* 2 partitions led by the dead node get a leader; the other 4 shrink it. */
	CHECK_EQ_INT(n, 6);
	CHECK_EQ_INT(meta_ctl_plan(&s, cmds, 2), 6);   /* counts beyond max */
	n = meta_ctl_plan(&s, cmds, 64);
	unsigned elections = 0;
	for (size_t i = 0; i < n; i++) {
		if (cmds[i].type == META_CMD_LEADER) {
			elections++;
			const struct meta_partition *q = part(&s, id, cmds[i].partition);
			CHECK(cmds[i].node != old && in_isr_of(q, cmds[i].node));
		}
		CHECK_EQ_INT(apply(&s, &cmds[i]), 0);
	}
	CHECK_EQ_INT(elections, 2);
	CHECK_EQ_INT(mp->leader_epoch, 1);
	CHECK(mp->leader != old && mp->leader != 0);
	CHECK_EQ_INT(leads(&s, old), 0);
	CHECK_EQ_INT(meta_ctl_plan(&s, cmds, 64), 0);   /* converged */
	/* Replaying the same plan is refused: the epochs moved on. */
	CHECK_EQ_INT(part_cmd(&s, META_CMD_LEADER, id, 0, 0, mp->replicas[2]), -ESTALE);

	/* In-sync set = {leader}; the leader dies: no election outside it. */
	struct meta_state s2;
	uint64_t id2 = three_nodes(&s2);
	const struct meta_partition *q = part(&s2, id2, 0);
	uint16_t l = q->leader;
	CHECK_EQ_INT(part_cmd(&s2, META_CMD_ISR_SHRINK, id2, 0, 0, q->replicas[1]), 0);
	CHECK_EQ_INT(part_cmd(&s2, META_CMD_ISR_SHRINK, id2, 0, 0, q->replicas[2]), 0);
	CHECK_EQ_INT(node_cmd(&s2, META_CMD_NODE_DOWN, l, 0), 0);
	CHECK_EQ_INT(meta_elect(&s2, q), 0);
	n = meta_ctl_plan(&s2, cmds, 64);
	for (size_t i = 0; i < n; i++) {
		if (cmds[i].type == META_CMD_LEADER && cmds[i].partition == 0 &&
		    cmds[i].topic_id == id2)
			CHECK_EQ_INT(cmds[i].node, 0);   /* offline, not an unclean election */
		CHECK_EQ_INT(apply(&s2, &cmds[i]), 0);
	}
	CHECK_EQ_INT(q->leader, 0);
	CHECK_EQ_INT(q->nisr, 1);
	CHECK_EQ_INT(q->isr[0], l);
	/* The out-of-sync replicas are alive but cannot be made leader. */
	CHECK_EQ_INT(part_cmd(&s2, META_CMD_LEADER, id2, 0, q->leader_epoch, q->replicas[1]),
	             -EINVAL);
	/* The last in-sync replica comes back: elected again, epoch bumped. */
	int32_t e = q->leader_epoch;
	CHECK_EQ_INT(node_cmd(&s2, META_CMD_NODE_HEARTBEAT, l, 2), 0);
	n = meta_ctl_plan(&s2, cmds, 64);
	CHECK_EQ_INT(n, 1);
	CHECK_EQ_INT(cmds[0].node, l);
	CHECK_EQ_INT(apply(&s2, &cmds[0]), 0);
	CHECK_EQ_INT(q->leader, l);
	CHECK_EQ_INT(q->leader_epoch, e + 1);
	CHECK(state_valid(&s2));
	meta_state_free(&s2);
	meta_state_free(&s);
}

/* Groups whose coordinator died move to a live node. */
static void test_plan_groups(void)
{
	struct meta_state s;
	static struct meta_cmd cmds[64];
	int64_t v;
	uint64_t id = three_nodes(&s);
	CHECK_EQ_INT(name_cmd(&s, META_CMD_GROUP_CREATE, id, "g", NULL, 2, &v), 0);
	CHECK_EQ_INT(node_cmd(&s, META_CMD_NODE_DOWN, 2, 0), 0);
	size_t n = meta_ctl_plan(&s, cmds, 64);
	int moves = 0;
	for (size_t i = 0; i < n; i++) {
		moves += cmds[i].type == META_CMD_GROUP_MOVE;
		CHECK_EQ_INT(apply(&s, &cmds[i]), 0);
	}
	CHECK_EQ_INT(moves, 1);
	uint16_t co = meta_group_find(meta_topic_find(&s, id), "g")->coordinator;
	CHECK(co == 1 || co == 3);
	CHECK_EQ_INT(meta_ctl_plan(&s, cmds, 64), 0);
	meta_state_free(&s);
}

/* Node deaths on the controller's clock; unknown nodes are not judged. */
static void test_ctl_down(void)
{
	struct meta_state s;
	static struct meta_cmd cmds[4];
	three_nodes(&s);
	struct meta_seen seen[2] = { { 1, 1000 }, { 2, 9000 } };
	CHECK_EQ_INT(meta_ctl_down(&s, seen, 2, 10000, 5000, cmds, 4), 1);
	CHECK_EQ_INT(cmds[0].type, META_CMD_NODE_DOWN);
	CHECK_EQ_INT(cmds[0].node, 1);
	CHECK_EQ_INT(apply(&s, &cmds[0]), 0);
	CHECK_EQ_INT(meta_ctl_down(&s, seen, 2, 10000, 5000, cmds, 4), 0);   /* already down */
	CHECK_EQ_INT(meta_ctl_down(&s, seen, 2, 20000, 5000, cmds, 0), 1);   /* counted only */
	meta_state_free(&s);
}

/* In-sync changes from a leader's lag reports. */
static void test_ctl_isr(void)
{
	struct meta_state s;
	static struct meta_cmd cmds[8];
	uint64_t id = three_nodes(&s);
	const struct meta_partition *mp = part(&s, id, 0);
	uint16_t f1 = mp->replicas[1], f2 = mp->replicas[2];
	struct meta_lag_report r[2] = {
		{ f1, 100, 10000 },   /* caught up just now */
		{ f2, 40, 1000 },     /* 9 s behind */
	};
	size_t n = meta_ctl_isr(&s, id, 0, 100, 10000, 5000, r, 2, cmds, 8);
	CHECK_EQ_INT(n, 1);
	CHECK_EQ_INT(cmds[0].type, META_CMD_ISR_SHRINK);
	CHECK_EQ_INT(cmds[0].node, f2);
	CHECK_EQ_INT(apply(&s, &cmds[0]), 0);
	/* Still behind the high watermark: not back yet. */
	r[1] = (struct meta_lag_report){ f2, 90, 10000 };
	CHECK_EQ_INT(meta_ctl_isr(&s, id, 0, 100, 10000, 5000, r, 2, cmds, 8), 0);
	/* Caught up: back in. */
	r[1].end_offset = 100;
	n = meta_ctl_isr(&s, id, 0, 100, 10000, 5000, r, 2, cmds, 8);
	CHECK_EQ_INT(n, 1);
	CHECK_EQ_INT(cmds[0].type, META_CMD_ISR_EXPAND);
	CHECK_EQ_INT(apply(&s, &cmds[0]), 0);
	CHECK_EQ_INT(mp->nisr, 3);
	/* Unreported followers leave; unknown partitions give nothing. */
	CHECK_EQ_INT(meta_ctl_isr(&s, id, 0, 100, 10000, 5000, NULL, 0, cmds, 8), 2);
	CHECK_EQ_INT(meta_ctl_isr(&s, id, 99, 100, 10000, 5000, r, 2, cmds, 8), 0);
	CHECK_EQ_INT(meta_ctl_isr(&s, 99, 0, 100, 10000, 5000, r, 2, cmds, 8), 0);
	meta_state_free(&s);
}

/* ---- replication: raft_fixture (in memory, simulated time) --------------- */

struct outcome {
	bool done;
	int rc;
	struct meta_result res;
};

struct cluster {
	struct raft_fixture f;
	unsigned n;
	struct meta_raft_fsm fsm[3];
	struct outcome out[64];   /* live until raft_fixture_close fires the last */
	unsigned nout;
};

static void on_done(void *ctx, int rc, const struct meta_result *res)
{
	struct outcome *o = ctx;
	o->done = true;
	o->rc = rc;
	o->res = *res;
}

static void cluster_start(struct cluster *c, unsigned snapshot_threshold)
{
	struct raft_configuration conf;
	memset(c, 0, sizeof(*c));
	c->n = 3;
	CHECK_EQ_INT(raft_fixture_init(&c->f), 0);
	for (unsigned i = 0; i < c->n; i++) {
		/* The fixture's servers have raft ids 1, 2, 3. */
		CHECK_EQ_INT(meta_raft_fsm_init(&c->fsm[i], (uint16_t)(i + 1), NULL), 0);
		CHECK_EQ_INT(raft_fixture_grow(&c->f, &c->fsm[i].raft_fsm), 0);
		if (!getenv("TFS_RAFT_TRACE"))
			raft_fixture_get(&c->f, i)->tracer = NULL;   /* the fixture's is chatty */
		if (snapshot_threshold) {
			raft_set_snapshot_threshold(raft_fixture_get(&c->f, i), snapshot_threshold);
			raft_set_snapshot_trailing(raft_fixture_get(&c->f, i), 2);
		}
	}
	CHECK_EQ_INT(raft_fixture_configuration(&c->f, c->n, &conf), 0);
	CHECK_EQ_INT(raft_fixture_bootstrap(&c->f, &conf), 0);
	raft_configuration_close(&conf);
	CHECK_EQ_INT(raft_fixture_start(&c->f), 0);
}

static void cluster_stop(struct cluster *c)
{
	raft_fixture_close(&c->f);
	for (unsigned i = 0; i < c->n; i++)
		meta_raft_fsm_close(&c->fsm[i]);
	for (unsigned i = 0; i < c->nout; i++)
		CHECK(c->out[i].done);   /* every proposal ended exactly once */
}

static bool outcome_done(struct raft_fixture *f, void *arg)
{
	(void)f;
	return ((struct outcome *)arg)->done;
}

/* Proposes cmd on server i; the outcome fills in as the cluster steps. */
static struct outcome *submit(struct cluster *c, unsigned i, const struct meta_cmd *cmd)
{
	struct outcome *o = &c->out[c->nout];
	if (c->nout == 64)
		abort();
	int rc = meta_raft_fsm_propose(&c->fsm[i], raft_fixture_get(&c->f, i), cmd, on_done, o);
	if (rc < 0) {
		o->done = true;
		o->rc = rc;
		return o;
	}
	c->nout++;
	return o;
}

/* Proposes on server i and steps until it ends; its rc (1: did not end). */
static int propose(struct cluster *c, unsigned i, const struct meta_cmd *cmd,
                   struct meta_result *res)
{
	struct outcome *o = submit(c, i, cmd);
	if (!o->done && !raft_fixture_step_until(&c->f, outcome_done, o, 10000))
		return 1;
	if (res)
		*res = o->res;
	return o->rc;
}

struct applied_arg {
	struct cluster *c;
	raft_index index;
};

static bool alive_applied(struct raft_fixture *f, void *arg)
{
	struct applied_arg *a = arg;
	for (unsigned i = 0; i < a->c->n; i++)
		if (raft_fixture_alive(f, i) && raft_last_applied(raft_fixture_get(f, i)) < a->index)
			return false;
	return true;
}

/* Steps until every live server applied what leader l has. */
static bool settle(struct cluster *c, unsigned l)
{
	struct applied_arg a = { c, raft_last_applied(raft_fixture_get(&c->f, l)) };
	return raft_fixture_step_until(&c->f, alive_applied, &a, 10000);
}

/* All live servers hold byte-identical states. */
static bool live_states_equal(struct cluster *c)
{
	int first = -1;
	for (unsigned i = 0; i < c->n; i++) {
		if (!raft_fixture_alive(&c->f, i))
			continue;
		if (first < 0)
			first = (int)i;
		else if (!same_state(&c->fsm[first].state, &c->fsm[i].state))
			return false;
	}
	return true;
}

struct elect_arg {
	unsigned not;   /* a leader other than this index (c->n: any) */
};

static bool has_other_leader(struct raft_fixture *f, void *arg)
{
	unsigned l = raft_fixture_leader_index(f);
	return l < raft_fixture_n(f) && l != ((struct elect_arg *)arg)->not;
}

/* Steps until a stable leader other than server `not` exists; its index. */
static unsigned elect_other(struct cluster *c, unsigned not)
{
	struct elect_arg a = { not };
	raft_fixture_step(&c->f);   /* the fixture re-detects its leader per step */
	CHECK(raft_fixture_step_until(&c->f, has_other_leader, &a, 10000));
	return raft_fixture_leader_index(&c->f);
}

static unsigned elect(struct cluster *c) { return elect_other(c, c->n); }

/* Registers the three nodes and creates topic "orders" through the leader. */
static void populate(struct cluster *c, unsigned l)
{
	struct meta_cmd cmd;
	struct meta_result res;
	for (uint16_t id = 1; id <= 3; id++) {
		meta_cmd_init(&cmd, META_CMD_NODE_REGISTER);
		cmd.node = id;
		cmd.term = raft_current_term(raft_fixture_get(&c->f, l));
		snprintf(cmd.address, sizeof(cmd.address), "127.0.0.%u:7070", id);
		CHECK_EQ_INT(propose(c, l, &cmd, NULL), 0);
	}
	topic_cmd(&cmd, "orders", 6, 3, 2);
	CHECK_EQ_INT(propose(c, l, &cmd, &res), 0);
	CHECK_EQ_INT(res.value, 1);
}

/* Three nodes elect a leader; commands proposed there are applied on all,
 * with the proposer getting meta_apply's result and refusal text; a
 * follower refuses to propose. */
static void test_raft_replicates(void)
{
	struct cluster c;
	struct meta_cmd cmd;
	struct meta_result res;
	cluster_start(&c, 0);
	unsigned l = elect(&c);
	CHECK(l < c.n);
	populate(&c, l);

	meta_cmd_init(&cmd, META_CMD_ALLOC_PIDS);
	cmd.count = 100;
	CHECK_EQ_INT(propose(&c, l, &cmd, &res), 0);
	CHECK_EQ_INT(res.value, 1);
	CHECK_EQ_INT(propose(&c, l, &cmd, &res), 0);
	CHECK_EQ_INT(res.value, 101);
	topic_cmd(&cmd, "orders", 1, 1, 1);
	CHECK_EQ_INT(propose(&c, l, &cmd, &res), -EEXIST);
	CHECK(strcmp(res.err, "topic orders exists") == 0);

	unsigned follower = (l + 1) % c.n;
	meta_cmd_init(&cmd, META_CMD_ALLOC_PIDS);
	cmd.count = 1;
	CHECK_EQ_INT(meta_raft_fsm_propose(&c.fsm[follower], raft_fixture_get(&c.f, follower), &cmd,
	                              on_done, NULL), REP_ENOTLEADER);

	CHECK(settle(&c, l));
	CHECK(live_states_equal(&c));
	for (unsigned i = 0; i < c.n; i++) {
		const struct meta_topic *t = meta_topic_by_name(&c.fsm[i].state, "orders");
		CHECK(t && t->nparts == 6);
		CHECK_EQ_INT(c.fsm[i].state.next_producer_id, 201);
		CHECK_EQ_INT(c.fsm[i].state.nnodes, 3);
	}
	cluster_stop(&c);
}

/* The leader dies: a new one is elected, runs the controller (node down,
 * elections from the in-sync sets with epoch bumps), the survivors agree;
 * the old leader comes back (through a snapshot: the log was compacted)
 * and converges to the same state. */
static void test_raft_failover(void)
{
	struct cluster c;
	struct meta_cmd cmd;
	static struct meta_cmd plan[64];
	cluster_start(&c, 8);
	unsigned l = elect(&c);
	populate(&c, l);
	CHECK(settle(&c, l));
	uint16_t dead = (uint16_t)(l + 1);
	unsigned led = 0;
	for (uint32_t p = 0; p < 6; p++)
		led += part(&c.fsm[l].state, 1, p)->leader == dead;
	CHECK_EQ_INT(led, 2);

	raft_fixture_kill(&c.f, l);
	unsigned l2 = elect_other(&c, l);
	CHECK(l2 < c.n && l2 != l);

	/* The new leader is the controller. */
	meta_cmd_init(&cmd, META_CMD_NODE_DOWN);
	cmd.node = dead;
	CHECK_EQ_INT(propose(&c, l2, &cmd, NULL), 0);
	size_t n = meta_ctl_plan(&c.fsm[l2].state, plan, 64);
	CHECK_EQ_INT(n, 6);   /* 2 elections, 4 in-sync shrinks */
	for (size_t i = 0; i < n; i++)
		CHECK_EQ_INT(propose(&c, l2, &plan[i], NULL), 0);
	/* More traffic so every node snapshots and compacts its log. */
	for (int i = 0; i < 30; i++) {
		meta_cmd_init(&cmd, META_CMD_NODE_HEARTBEAT);
		cmd.node = (uint16_t)(l2 + 1);
		cmd.term = raft_current_term(raft_fixture_get(&c.f, l2));
		cmd.ts_ms = i;
		CHECK_EQ_INT(propose(&c, l2, &cmd, NULL), 0);
	}
	CHECK(settle(&c, l2));
	CHECK(live_states_equal(&c));
	for (uint32_t p = 0; p < 6; p++) {
		const struct meta_partition *mp = part(&c.fsm[l2].state, 1, p);
		CHECK(mp->leader != dead && mp->leader != 0);
		CHECK(!in_isr_of(mp, dead));
	}
	CHECK_EQ_INT(meta_ctl_plan(&c.fsm[l2].state, plan, 64), 0);

	raft_fixture_revive(&c.f, l);
	CHECK(settle(&c, l2));
	CHECK(live_states_equal(&c));
	CHECK_EQ_INT(meta_node_find(&c.fsm[l].state, dead)->alive, 0);
	cluster_stop(&c);
}

/* A leader cut off from the majority cannot commit: its proposal never
 * applies anywhere and ends with an error; the majority elects a leader and
 * commits; once healed, the old leader converges to the majority's state. */
static void test_raft_minority(void)
{
	struct cluster c;
	struct meta_cmd cmd;
	cluster_start(&c, 0);
	unsigned l = elect(&c);
	populate(&c, l);
	CHECK(settle(&c, l));

	for (unsigned j = 0; j < c.n; j++) {
		if (j != l) {
			/* Saturate (drop silently): the fixture's leader detection
			 * then counts the cut-off server out. */
			raft_fixture_saturate(&c.f, l, j);
			raft_fixture_saturate(&c.f, j, l);
		}
	}
	topic_cmd(&cmd, "minority", 1, 1, 1);
	struct outcome *lost = submit(&c, l, &cmd);
	raft_fixture_step_until_elapsed(&c.f, 3000);
	CHECK(!lost->done || lost->rc == REP_ENOQUORUM || lost->rc == REP_ENOTLEADER);
	for (unsigned i = 0; i < c.n; i++)
		CHECK(meta_topic_by_name(&c.fsm[i].state, "minority") == NULL);

	unsigned l2 = elect_other(&c, l);
	CHECK(l2 < c.n && l2 != l);
	topic_cmd(&cmd, "majority", 1, 1, 1);
	CHECK_EQ_INT(propose(&c, l2, &cmd, NULL), 0);
	CHECK(meta_topic_by_name(&c.fsm[l].state, "majority") == NULL);
	CHECK(meta_topic_by_name(&c.fsm[l].state, "minority") == NULL);

	for (unsigned j = 0; j < c.n; j++) {
		if (j != l) {
			raft_fixture_desaturate(&c.f, l, j);
			raft_fixture_desaturate(&c.f, j, l);
		}
	}
	raft_fixture_step_until_elapsed(&c.f, 2000);
	unsigned l3 = elect(&c);
	CHECK(settle(&c, l3));
	CHECK(live_states_equal(&c));
	CHECK(meta_topic_by_name(&c.fsm[l].state, "majority") != NULL);
	for (unsigned i = 0; i < c.n; i++)
		CHECK(meta_topic_by_name(&c.fsm[i].state, "minority") == NULL);
	CHECK(lost->done && lost->rc != 0);
	cluster_stop(&c);
}

/* ---- replication: meta_raft on raft_uv (real disk and TCP) ---------------- */

static uint16_t free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0)
		abort();
	close(fd);
	return ntohs(a.sin_port);
}

struct uv_node {
	struct meta_raft *m;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int ndone, nok, last_rc;
	int64_t last_value;
	bool finished, closed;
};

static void uv_done(void *ctx, int rc, const struct meta_result *res)
{
	struct uv_node *u = ctx;
	pthread_mutex_lock(&u->lock);
	u->ndone++;
	u->nok += rc == 0;
	u->last_rc = rc;
	u->last_value = res->value;
	pthread_cond_signal(&u->cond);
	pthread_mutex_unlock(&u->lock);
}

/* A thread that is not the loop's submits and waits for each result. */
static void *uv_submitter(void *arg)
{
	struct uv_node *u = arg;
	struct meta_cmd cmd;
	for (int i = 0; i < 12; i++) {
		if (i == 0) {
			meta_cmd_init(&cmd, META_CMD_NODE_REGISTER);
			cmd.node = 1;
			snprintf(cmd.address, sizeof(cmd.address), "127.0.0.1:7070");
		} else if (i == 1) {
			topic_cmd(&cmd, "uv", 2, 1, 1);
		} else {
			meta_cmd_init(&cmd, META_CMD_ALLOC_PIDS);
			cmd.count = 10;
		}
		pthread_mutex_lock(&u->lock);
		int want = u->ndone + 1;
		pthread_mutex_unlock(&u->lock);
		if (meta_raft_submit(u->m, &cmd, uv_done, u) != 0)
			break;
		pthread_mutex_lock(&u->lock);
		while (u->ndone < want)
			pthread_cond_wait(&u->cond, &u->lock);
		pthread_mutex_unlock(&u->lock);
	}
	pthread_mutex_lock(&u->lock);
	u->finished = true;
	pthread_mutex_unlock(&u->lock);
	return NULL;
}

static void uv_closed(void *ctx) { ((struct uv_node *)ctx)->closed = true; }

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs the loop until pred(arg) or a 10 s deadline. */
static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg)
{
	double end = now_s() + 10;
	while (!pred(arg) && now_s() < end)
		uv_run(loop, UV_RUN_ONCE);
	return pred(arg);
}

static bool is_leader(void *arg) { return meta_raft_is_leader(((struct uv_node *)arg)->m); }
static bool is_closed(void *arg) { return ((struct uv_node *)arg)->closed; }
static bool is_finished(void *arg)
{
	struct uv_node *u = arg;
	pthread_mutex_lock(&u->lock);
	bool f = u->finished;
	pthread_mutex_unlock(&u->lock);
	return f;
}

struct snap_arg {
	struct uv_node *u;
	const uint8_t *want;
	size_t len;
};

static bool state_is(void *arg)
{
	struct snap_arg *a = arg;
	size_t len;
	uint8_t *b = snap(&meta_raft_fsm(a->u->m)->state, &len);
	bool same = len == a->len && memcmp(b, a->want, len) == 0;
	free(b);
	return same;
}

/* One node alone (a quorum of one) on raft_uv: it elects itself, takes
 * submissions from another thread, snapshots, and after a restart on the
 * same directory (RAFT_CANTBOOTSTRAP) replays to the very same state. */
static void test_raft_uv_restart(void)
{
	const char *dir = unit_tmpdir();
	char addr[32];
	uv_loop_t loop;
	struct uv_node u = { 0 };
	pthread_t th;
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", free_port());
	pthread_mutex_init(&u.lock, NULL);
	pthread_cond_init(&u.cond, NULL);
	CHECK_EQ_INT(uv_loop_init(&loop), 0);

	struct meta_raft_options o = {
		.node_id = 1, .address = addr, .dir = dir, .loop = &loop,
		.election_ms = 200, .heartbeat_ms = 20,
		.snapshot_threshold = 4, .snapshot_trailing = 2,
	};
	CHECK_EQ_INT(meta_raft_start(&o, &u.m), 0);
	CHECK(run_until(&loop, is_leader, &u));
	CHECK_EQ_INT(meta_raft_leader(u.m, NULL, 0), 1);
	CHECK_EQ_INT(pthread_create(&th, NULL, uv_submitter, &u), 0);
	CHECK(run_until(&loop, is_finished, &u));
	pthread_join(th, NULL);
	CHECK_EQ_INT(u.ndone, 12);
	CHECK_EQ_INT(u.nok, 12);
	CHECK_EQ_INT(u.last_value, 91);   /* the tenth block of 10 pids */

	size_t len;
	uint8_t *before = snap(&meta_raft_fsm(u.m)->state, &len);
	CHECK(meta_topic_by_name(&meta_raft_fsm(u.m)->state, "uv") != NULL);
	meta_raft_close(u.m, uv_closed, &u);
	CHECK(run_until(&loop, is_closed, &u));

	/* Again on the same directory: not bootstrapped, replayed. */
	u.closed = false;
	CHECK_EQ_INT(meta_raft_start(&o, &u.m), 0);
	struct snap_arg sa = { &u, before, len };
	CHECK(run_until(&loop, state_is, &sa));
	CHECK(run_until(&loop, is_leader, &u));
	struct meta_cmd cmd;
	meta_cmd_init(&cmd, META_CMD_ALLOC_PIDS);
	cmd.count = 1;
	CHECK_EQ_INT(meta_raft_submit(u.m, &cmd, uv_done, &u), 0);
	meta_raft_close(u.m, uv_closed, &u);   /* the queued one is cancelled */
	CHECK(run_until(&loop, is_closed, &u));
	CHECK_EQ_INT(u.ndone, 13);
	CHECK_EQ_INT(u.nok, 12);
	free(before);
	CHECK_EQ_INT(uv_loop_close(&loop), 0);
	pthread_mutex_destroy(&u.lock);
	pthread_cond_destroy(&u.cond);
}

struct trio {
	struct uv_node u[3];
	unsigned skip;   /* index of a closed node (3: none) */
};

/* The live node that leads and is followed by every live node; 3 if none. */
static unsigned trio_leader(struct trio *t)
{
	for (unsigned i = 0; i < 3; i++) {
		if (i == t->skip || !meta_raft_is_leader(t->u[i].m))
			continue;
		bool agreed = true;
		for (unsigned j = 0; j < 3; j++)
			if (j != t->skip && meta_raft_leader(t->u[j].m, NULL, 0) != i + 1)
				agreed = false;
		if (agreed)
			return i;
	}
	return 3;
}

static bool trio_has_leader(void *arg) { return trio_leader(arg) < 3; }

static bool trio_converged(void *arg)
{
	struct trio *t = arg;
	int first = -1;
	for (unsigned i = 0; i < 3; i++) {
		if (i == t->skip)
			continue;
		if (first < 0)
			first = (int)i;
		else if (!same_state(&meta_raft_fsm(t->u[first].m)->state,
		                     &meta_raft_fsm(t->u[i].m)->state))
			return false;
	}
	return true;
}

struct count_arg {
	struct uv_node *u;
	int want;
};

static bool done_count(void *arg)
{
	struct count_arg *a = arg;
	return a->u->ndone >= a->want;
}

/* Submits on node u and runs the loop until it is done; its rc (1: it
 * never ended). */
static int uv_propose(uv_loop_t *loop, struct uv_node *u, const struct meta_cmd *cmd)
{
	struct count_arg a = { u, u->ndone + 1 };
	if (meta_raft_submit(u->m, cmd, uv_done, u) != 0 || !run_until(loop, done_count, &a))
		return 1;
	return u->last_rc;
}

/* Three meta_raft nodes on 127.0.0.1 over libraft's TCP transport, one loop:
 * they bootstrap from the same voters and elect a leader; a follower refuses
 * to propose; the leader's commands reach all; when the leader is closed the
 * other two elect a new one, whose controller moves partition leadership. */
static void test_raft_uv_three(void)
{
	uv_loop_t loop;
	struct trio t = { .skip = 3 };
	struct meta_raft_voter voters[3];
	struct meta_cmd cmd;
	static struct meta_cmd plan[16];
	CHECK_EQ_INT(uv_loop_init(&loop), 0);
	for (unsigned i = 0; i < 3; i++) {
		voters[i].id = (uint16_t)(i + 1);
		snprintf(voters[i].address, sizeof(voters[i].address), "127.0.0.1:%u", free_port());
		pthread_mutex_init(&t.u[i].lock, NULL);
		pthread_cond_init(&t.u[i].cond, NULL);
	}
	for (unsigned i = 0; i < 3; i++) {
		struct meta_raft_options o = {
			.node_id = (uint16_t)(i + 1), .address = voters[i].address,
			.dir = unit_tmpdir(), .voters = voters, .nvoters = 3, .loop = &loop,
			.election_ms = 300, .heartbeat_ms = 30,
		};
		CHECK_EQ_INT(meta_raft_start(&o, &t.u[i].m), 0);
	}
	CHECK(run_until(&loop, trio_has_leader, &t));
	unsigned l = trio_leader(&t);
	if (l == 3)
		goto out;

	unsigned f = (l + 1) % 3;
	meta_cmd_init(&cmd, META_CMD_ALLOC_PIDS);
	cmd.count = 1;
	CHECK_EQ_INT(uv_propose(&loop, &t.u[f], &cmd), REP_ENOTLEADER);
	for (uint16_t id = 1; id <= 3; id++) {
		meta_cmd_init(&cmd, META_CMD_NODE_REGISTER);
		cmd.node = id;
		snprintf(cmd.address, sizeof(cmd.address), "%s", voters[id - 1].address);
		CHECK_EQ_INT(uv_propose(&loop, &t.u[l], &cmd), 0);
	}
	topic_cmd(&cmd, "trio", 3, 3, 2);
	CHECK_EQ_INT(uv_propose(&loop, &t.u[l], &cmd), 0);
	CHECK(run_until(&loop, trio_converged, &t));

	/* The leader goes away. */
	meta_raft_close(t.u[l].m, uv_closed, &t.u[l]);
	CHECK(run_until(&loop, is_closed, &t.u[l]));
	t.skip = l;
	CHECK(run_until(&loop, trio_has_leader, &t));
	unsigned l2 = trio_leader(&t);
	if (l2 == 3)
		goto out;
	CHECK(l2 != l);
	meta_cmd_init(&cmd, META_CMD_NODE_DOWN);
	cmd.node = (uint16_t)(l + 1);
	CHECK_EQ_INT(uv_propose(&loop, &t.u[l2], &cmd), 0);
	size_t n = meta_ctl_plan(&meta_raft_fsm(t.u[l2].m)->state, plan, 16);
	CHECK_EQ_INT(n, 3);   /* one election, two in-sync shrinks */
	for (size_t i = 0; i < n && i < 16; i++)
		CHECK_EQ_INT(uv_propose(&loop, &t.u[l2], &plan[i]), 0);
	CHECK(run_until(&loop, trio_converged, &t));
	const struct meta_topic *tp = meta_topic_by_name(&meta_raft_fsm(t.u[l2].m)->state, "trio");
	for (uint32_t p = 0; tp && p < tp->nparts; p++)
		CHECK(tp->parts[p].leader != l + 1 && tp->parts[p].leader != 0);

out:
	for (unsigned i = 0; i < 3; i++) {
		if (i == t.skip)
			continue;
		meta_raft_close(t.u[i].m, uv_closed, &t.u[i]);
		CHECK(run_until(&loop, is_closed, &t.u[i]));
	}
	for (unsigned i = 0; i < 3; i++) {
		pthread_mutex_destroy(&t.u[i].lock);
		pthread_cond_destroy(&t.u[i].cond);
	}
	CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* A start that fails (no such directory) returns an error and releases
 * everything once the loop runs. */
static void test_raft_uv_bad_start(void)
{
	uv_loop_t loop;
	struct meta_raft *m = NULL;
	CHECK_EQ_INT(uv_loop_init(&loop), 0);
	struct meta_raft_options o = {
		.node_id = 1, .address = "127.0.0.1:9", .dir = "/nonexistent/topicfs-raft",
		.loop = &loop,
	};
	tfs_log_set_level(TFS_LOG_ERROR + 1);   /* the failure is deliberate */
	CHECK(meta_raft_start(&o, &m) < 0);
	tfs_log_set_level(TFS_LOG_WARN);
	CHECK(m == NULL);
	o.node_id = 0;
	CHECK_EQ_INT(meta_raft_start(&o, &m), -EINVAL);
	uv_run(&loop, UV_RUN_DEFAULT);
	CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
	tfs_log_set_level(TFS_LOG_WARN);
	RUN(test_nodes);
	RUN(test_topic_create_delete);
	RUN(test_topic_config);
	RUN(test_pfiles);
	RUN(test_leader_change);
	RUN(test_isr_changes);
	RUN(test_groups);
	RUN(test_alloc_pids);
	RUN(test_determinism);
	RUN(test_cmd_roundtrip);
	RUN(test_cmd_fuzz);
	RUN(test_snapshot);
	RUN(test_place);
	RUN(test_election);
	RUN(test_plan_groups);
	RUN(test_ctl_down);
	RUN(test_ctl_isr);
	RUN(test_raft_replicates);
	RUN(test_raft_failover);
	RUN(test_raft_minority);
	RUN(test_raft_uv_restart);
	RUN(test_raft_uv_three);
	RUN(test_raft_uv_bad_start);
	return unit_report("test_meta");
}
