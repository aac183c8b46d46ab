/*
 * meta.h - the cluster metadata state machine (issue 4): what the metadata
 * quorum replicates, the commands that change it, their binary encoding, and
 * the controller's decisions. Pure C: no I/O, no clock, no threads, no
 * globals. replicator/meta_raft.{c,h} runs it under libraft.
 *
 * The state (struct meta_state) is plain data the caller may read directly;
 * only meta_apply() and meta_snapshot_decode() change it:
 *
 *   nodes       id, address, last heartbeat (raft term, proposer's clock), alive
 *   topics      id, name, config overrides, partitions, producer files, groups
 *   partitions  replicas (placement order; the first is the preferred leader),
 *               leader (0 = offline), leader_epoch, in-sync set (replica order)
 *   groups      per topic: name, coordinator node, committed offset per partition
 *   counters    next topic id, next producer id (allocated in blocks)
 *
 * Commands (struct meta_cmd) are proposed by any node and applied in log order
 * on every node with meta_apply(). Numbered invariants:
 *
 *  1. Determinism: meta_apply() reads only the state and the command (never
 *     the clock, the node it runs on, or the command's origin/seq), so the same
 *     command log from the same state gives byte-identical snapshots.
 *  2. Atomicity: a command is applied whole or not at all. A refusal returns a
 *     negative errno (the same on every node) and changes nothing. -ENOMEM is
 *     the one non-deterministic failure: the state is unchanged and the caller
 *     must apply the same command again later, never skip it (meta_raft
 *     makes libraft retry it).
 *  3. Ids are never reused: topic ids (next_topic_id), producer-file ids per
 *     topic (next_pfile_id), producer ids (next_producer_id).
 *  4. Every partition: replicas distinct, alive or not; isr is a non-empty
 *     subset of replicas in replica order (except while offline: leader 0);
 *     leader is 0 or a member of isr. leader_epoch only grows, by one per
 *     leader change (meta_ctl decides; META_CMD_LEADER carries the epoch the
 *     decision was made against, so a stale decision is refused -ESTALE).
 *  5. Topics are kept in id order, nodes in id order, producer files in id
 *     (creation) order, groups in name order: the snapshot is canonical.
 *     Replicas and group coordinators are registered nodes (nodes are never
 *     removed, only marked down).
 *  6. A topic pins partitions, replication and min_insync as overrides (the
 *     proposer resolves node defaults before proposing), so every node agrees
 *     on them whatever its own defaults; other keys may follow node defaults.
 *
 * Command wire format (meta_cmd_encode; all integers little-endian):
 *
 *   | bytes | field                                                     |
 *   |-------|-----------------------------------------------------------|
 *   | 1     | format version (META_CMD_VERSION)                         |
 *   | 1     | command type (enum meta_cmd_type)                         |
 *   | 2     | origin node id (who proposed it; not read by meta_apply)  |
 *   | 8     | origin sequence number (matches the result to a proposal) |
 *   | 4     | body length n                                             |
 *   | n     | body: the type's fields, in the order of struct meta_cmd  |
 *
 * Strings in bodies are u16 length + bytes (no NUL); a topic_config is
 * u32 set_mask then every field (52 bytes). Up to 7 zero bytes may follow
 * the body (padding: raft_uv wants entries in multiples of 8 bytes).
 * Decoding checks every length, count, enum, name and padding byte and that
 * the body is consumed exactly.
 *
 * Snapshot format (meta_snapshot_encode): magic "TFSM", u8 version, u64
 * next_topic_id, i64 next_producer_id, u32 nodes + nodes, u32 topics + topics
 * (each with its partitions, producer files and groups), then CRC-32C of all
 * preceding bytes. Decoding re-checks every invariant above.
 */
#ifndef TFS_META_H
#define TFS_META_H

#include <stddef.h>
#include <stdint.h>

#include "../logstore/error.h"
#include "replicator.h"
#include "topic_config.h"

#define META_CMD_VERSION 1
#define META_SNAPSHOT_VERSION 1

#define META_MAX_NODES 256
#define META_MAX_REPLICAS 16       /* as struct rep_partition_state */
#define META_MAX_PARTITIONS 10000  /* as fs/config.c */
#define META_MAX_PFILES 65536      /* producer files per topic */
#define META_MAX_GROUPS 4096       /* groups per topic */
#define META_MAX_TOPICS 100000
#define META_ADDR_MAX 80           /* "A.B.C.D:PORT" and NUL; as rep_node_info */
#define META_CMD_MAX_OFFSETS 256   /* partitions per GROUP_COMMIT command */
#define META_MAX_PID_BLOCK (1u << 20)
/* Upper bound of an encoded command (meta_cmd_encode never needs more). */
#define META_CMD_MAX_BYTES 8192

/* The keys every topic pins (invariant 6). */
#define META_PINNED_KEYS ((1u << TC_PARTITIONS) | (1u << TC_REPLICATION) | \
                          (1u << TC_MIN_INSYNC))

/* ---- state --------------------------------------------------------------- */

struct meta_node {
	uint16_t id;                  /* 1..65535 */
	char address[META_ADDR_MAX];  /* as registered */
	uint64_t hb_term;             /* raft term of the last register/heartbeat */
	int64_t hb_ms;                /* proposer's clock at that heartbeat */
	uint8_t alive;                /* 0 after META_CMD_NODE_DOWN */
};

struct meta_partition {
	uint16_t leader;              /* 0: offline (no live in-sync replica) */
	int32_t leader_epoch;         /* 0 at creation, +1 per leader change */
	uint8_t nreplicas, nisr;
	uint16_t replicas[META_MAX_REPLICAS];
	uint16_t isr[META_MAX_REPLICAS];
};

struct meta_pfile {
	uint32_t id;
	char *name;                   /* 1..255 bytes, no '/' */
};

struct meta_group {
	char name[REP_NAME_MAX + 1];
	uint16_t coordinator;
	uint32_t noffsets;            /* == the topic's nparts */
	int64_t *offsets;             /* committed offset per partition, -1: none */
};

struct meta_topic {
	uint64_t id;
	char name[REP_NAME_MAX + 1];
	struct topic_config overrides; /* set_mask ⊇ META_PINNED_KEYS; unset
	                                  fields hold the built-in values */
	uint32_t nparts;
	struct meta_partition *parts;
	uint32_t next_pfile_id;
	uint32_t npfiles;
	struct meta_pfile *pfiles;
	uint32_t ngroups;
	struct meta_group *groups;
};

struct meta_state {
	uint64_t next_topic_id;       /* starts at 1 */
	int64_t next_producer_id;     /* starts at 1 */
	uint32_t nnodes;
	struct meta_node *nodes;
	uint32_t ntopics;
	struct meta_topic *topics;
};

/* An empty state (no nodes, no topics, counters at 1). No allocation. */
void meta_state_init(struct meta_state *s);
/* Frees everything the state holds; it is empty (meta_state_init) after. */
void meta_state_free(struct meta_state *s);

/* Look-ups: NULL if absent. Pointers stay valid until the next change. */
const struct meta_node *meta_node_find(const struct meta_state *s, uint16_t id);
const struct meta_topic *meta_topic_find(const struct meta_state *s, uint64_t id);
const struct meta_topic *meta_topic_by_name(const struct meta_state *s, const char *name);
const struct meta_group *meta_group_find(const struct meta_topic *t, const char *name);
const struct meta_pfile *meta_pfile_by_name(const struct meta_topic *t, const char *name);
/* Number of nodes alive. */
uint32_t meta_nodes_alive(const struct meta_state *s);

/* ---- commands ------------------------------------------------------------ */

enum meta_cmd_type {
	META_CMD_NODE_REGISTER = 1, /* node, address, term, ts_ms */
	META_CMD_NODE_HEARTBEAT,    /* node, term, ts_ms */
	META_CMD_NODE_DOWN,         /* node */
	META_CMD_TOPIC_CREATE,      /* name, config (overrides; pins required) */
	META_CMD_TOPIC_DELETE,      /* topic_id */
	META_CMD_TOPIC_CONFIG,      /* topic_id, config (changes), cleared */
	META_CMD_PFILE_ADD,         /* topic_id, name */
	META_CMD_PFILE_REMOVE,      /* topic_id, name */
	META_CMD_PFILE_RENAME,      /* topic_id, name -> name2 (replaces name2) */
	META_CMD_LEADER,            /* topic_id, partition, epoch, node (0: offline) */
	META_CMD_ISR_SHRINK,        /* topic_id, partition, epoch, node */
	META_CMD_ISR_EXPAND,        /* topic_id, partition, epoch, node */
	META_CMD_GROUP_CREATE,      /* topic_id, name, node (coordinator, 0: pick) */
	META_CMD_GROUP_DELETE,      /* topic_id, name */
	META_CMD_GROUP_COMMIT,      /* topic_id, name, noffsets x (partition, offset) */
	META_CMD_GROUP_MOVE,        /* topic_id, name, node (coordinator, 0: pick) */
	META_CMD_ALLOC_PIDS,        /* count */
	META_CMD_GROUP_COMMIT_BY,   /* GROUP_COMMIT from its coordinator, node: applied
	                               only while node coordinates the group (else
	                               -ESTALE), so a node that ran the group from
	                               an old state (a restart) cannot move it back */
	META_CMD_NTYPES
};

struct meta_offset {
	uint32_t partition;
	int64_t offset;
};

/* A decoded command. Only the fields its type lists (above) are encoded;
 * the others are ignored. Fill with meta_cmd_init() first. */
struct meta_cmd {
	enum meta_cmd_type type;
	uint16_t origin;              /* proposing node: for meta_raft, not meta_apply */
	uint64_t seq;
	uint16_t node;
	char address[META_ADDR_MAX];
	uint64_t term;
	int64_t ts_ms;
	uint64_t topic_id;
	uint32_t partition;
	int32_t epoch;                /* the leader epoch the decision was made against */
	char name[REP_FILE_NAME_MAX + 1];  /* topic, group or producer-file name */
	char name2[REP_FILE_NAME_MAX + 1]; /* rename target */
	struct topic_config config;
	uint32_t cleared;             /* keys returned to the node default */
	uint32_t count;               /* ALLOC_PIDS */
	uint32_t noffsets;
	struct meta_offset offsets[META_CMD_MAX_OFFSETS];
};

/* Zeroes c and sets its type (config = built-in, set_mask 0). */
void meta_cmd_init(struct meta_cmd *c, enum meta_cmd_type type);

/* Name of a type ("topic_create"), "?" if unknown. */
const char *meta_cmd_name(enum meta_cmd_type type);

/* Encodes c into buf. Returns the encoded length, which may exceed size (then
 * nothing useful is in buf; call again with a buffer that large, like
 * snprintf); never more than META_CMD_MAX_BYTES. Returns -EINVAL for a type
 * or a field that cannot be encoded (unknown type, too many offsets, a string
 * without NUL in its array). */
long meta_cmd_encode(const struct meta_cmd *c, void *buf, size_t size) TFS_MUST_CHECK;

/* Decodes len bytes into *c (every field set, unused ones zero). Returns 0,
 * REP_EPROTO for malformed bytes (any length, count, enum, name or trailing
 * byte wrong) or -EPROTONOSUPPORT for another format version. Any bytes at
 * all are safe to pass. */
int meta_cmd_decode(const void *buf, size_t len, struct meta_cmd *c) TFS_MUST_CHECK;

/* What meta_apply says besides its return code. */
struct meta_result {
	int64_t value;   /* TOPIC_CREATE: topic id; PFILE_ADD: file id;
	                    LEADER: new epoch; GROUP_CREATE/MOVE: coordinator;
	                    ALLOC_PIDS: first id of the block; TOPIC_CONFIG:
	                    partition count; else 0 */
	char err[160];   /* why it was refused, "" on success */
};

/* Applies c to s (invariants 1, 2). Returns 0 or a negative errno:
 *   -EINVAL bad name or value, -EEXIST, -ENOENT, -ESTALE (epoch or term moved
 *   on), -EHOSTDOWN (node not alive), -ENOSPC (a META_MAX_* limit), -EOVERFLOW,
 *   -ENOMEM (not deterministic, see invariant 2).
 * res (may be NULL) is always filled. */
int meta_apply(struct meta_state *s, const struct meta_cmd *c, struct meta_result *res)
	TFS_MUST_CHECK;

/* ---- snapshots ------------------------------------------------------------ */

/* Encodes the whole state. Returns the length (like snprintf: call with
 * size 0 to learn it, then again). Canonical: equal states give equal bytes. */
size_t meta_snapshot_encode(const struct meta_state *s, void *buf, size_t size);

/* Decodes a snapshot into *out (which must be empty; on failure it stays
 * empty). Returns 0, REP_EPROTO (malformed, CRC, any invariant broken),
 * -EPROTONOSUPPORT or -ENOMEM. */
int meta_snapshot_decode(const void *buf, size_t len, struct meta_state *out)
	TFS_MUST_CHECK;

/* ---- the controller's decisions (pure, on the quorum leader) ------------- */

/* Places nparts new partitions with replication replicas each on the alive
 * nodes: each partition's leader is the alive node leading the fewest
 * partitions so far (this state plus those placed in this call; ties: fewer
 * replicas, then lower id), its followers the next alive nodes after it in id
 * order. Fills out[0..nparts) (leader = replicas[0], isr = replicas, epoch 0).
 * Returns 0 or -EINVAL if replication is 0, above META_MAX_REPLICAS or above
 * the alive nodes. */
int meta_place(const struct meta_state *s, uint32_t nparts, uint32_t replication,
               struct meta_partition *out) TFS_MUST_CHECK;

/* The leader partition p should have: its current leader if alive, else the
 * first alive in-sync replica in replica order, else 0 (no election outside
 * the in-sync set). */
uint16_t meta_elect(const struct meta_state *s, const struct meta_partition *p);

/* The alive node coordinating the fewest groups (ties: lower id); 0 if none. */
uint16_t meta_pick_coordinator(const struct meta_state *s);

/* Reconciles the state with node liveness: for every partition whose leader
 * is dead (or 0 while an in-sync replica is alive), a META_CMD_LEADER to
 * meta_elect's choice (0 = offline); for a live leader, a META_CMD_ISR_SHRINK
 * of each dead in-sync follower; for every group with a dead coordinator, a
 * META_CMD_GROUP_MOVE (node 0: meta_apply picks). Each command carries the
 * current epoch, so a plan that the log has overtaken is refused -ESTALE.
 * Fills out[0..min(n, max)) and returns n, the number of commands needed. */
size_t meta_ctl_plan(const struct meta_state *s, struct meta_cmd *out, size_t max);

/* When the controller last heard from a node (a heartbeat or register
 * applied), on the controller's own clock. */
struct meta_seen {
	uint16_t node;
	int64_t at_ms;
};

/* Node deaths: a META_CMD_NODE_DOWN for every alive node last heard more than
 * timeout_ms before now_ms. Only the controller's clock is compared (the
 * hb_ms in the state come from each node's own clock). A node without an
 * entry in seen is not judged: a new controller seeds every node with the
 * time it took over. Fills out[0..min(n, max)) and returns n. */
size_t meta_ctl_down(const struct meta_state *s, const struct meta_seen *seen, size_t nseen,
                     int64_t now_ms, int64_t timeout_ms, struct meta_cmd *out, size_t max);

/* A partition leader's view of one follower, for meta_ctl_isr. */
struct meta_lag_report {
	uint16_t node;
	int64_t end_offset;      /* the follower's log end, as last fetched */
	int64_t caught_up_ms;    /* last time it had fetched up to the leader's end */
};

/* In-sync set changes for partition p of topic topic_id from its leader's
 * reports (now_ms and lag_ms on the leader's clock, hw its high watermark):
 * an in-sync follower that is dead, unreported, or has not caught up for
 * more than lag_ms is shrunk; an out-of-sync replica that is alive, caught up
 * within lag_ms and at or past hw is expanded. Commands carry the current
 * epoch. Fills out[0..min(n, max)) and returns n (0 for an unknown or
 * offline partition). */
size_t meta_ctl_isr(const struct meta_state *s, uint64_t topic_id, uint32_t p, int64_t hw,
                    int64_t now_ms, int64_t lag_ms, const struct meta_lag_report *reports,
                    size_t nreports, struct meta_cmd *out, size_t max);

#endif
