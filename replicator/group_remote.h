/*
 * group_remote.h - consumer groups across the nodes of a cluster: the group
 * frames (TF_GROUP_MIN..TF_GROUP_MAX) and their pure codec, the member
 * node's stubs, the coordinator's proxies, and the two threads that drive
 * them. Internal to replicator/: groups.c is the only caller (fs/ reaches
 * all of this through groups.h), and the second half of this header is what
 * groups.c offers back. The design is at the top of group_remote.c.
 *
 * Errors: 0 or a negative errno; REP_EPROTO for a malformed frame; -ESTALE
 * from a coordinator that does not know the member (or does not coordinate
 * the group): the member joins again.
 */
#ifndef TFS_GROUP_REMOTE_H
#define TFS_GROUP_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "cluster.h"
#include "groups.h"

/* ---- frames --------------------------------------------------------------- */

enum grm_type {
	GRM_JOIN = TF_GROUP_MIN,   /* request: member joins (replaces a proxy of
	                              the same stub) -> empty */
	GRM_TAKE,                  /* request: size, max, sep, positions -> take */
	GRM_READY,                 /* request: positions -> i32 1/0 */
	GRM_COMMIT,                /* request: positions -> empty */
	GRM_REWIND,                /* request -> empty */
	GRM_LEAVE,                 /* request: commit, positions -> empty */
	GRM_OFFSETS,               /* request (group) -> offset rows */
	GRM_RESET,                 /* request (group): how, partition, value -> empty */
	GRM_MEMBERS,               /* request (group) -> u32 members */
	GRM_WAKE,                  /* one-way coordinator -> member node: stub ids */
	GRM_HELLO,                 /* one-way: a node (re)started: its incarnation */
	GRM_SAVE,                  /* request: positions -> empty; as COMMIT, and
	                              the coordinator submits to the quorum now */
	GRM_TYPE_END
};

#define GRM_VERSION 1
#define GRM_TAKE_MAX (8u << 20)          /* largest take carried by one frame */
#define GRM_MAX_POS META_MAX_PARTITIONS  /* positions per request */
#define GRM_MAX_WAKE 4096                /* stub ids per WAKE frame */

/* Where the member believes it is in one partition: the next offset after
 * the records it received since its last commit. */
struct grm_pos {
	uint32_t partition;
	int64_t offset;
};

/* A decoded request (every type but WAKE and HELLO). Fields a type does not
 * carry are zero. pos is malloc'ed by grm_req_decode: grm_req_free. */
struct grm_req {
	uint16_t type;
	uint64_t incarnation;      /* the sender's (random per process start) */
	uint64_t topic_id;
	char group[REP_NAME_MAX + 1];
	uint64_t stub;             /* the member's id on its node; 0: group request */
	uint32_t size;             /* TAKE: 1..GRM_TAKE_MAX */
	uint32_t max_records;      /* TAKE: 0 = no limit */
	uint8_t sep;               /* TAKE */
	uint8_t commit;            /* LEAVE: 0 or 1 */
	uint8_t how;               /* RESET: enum rep_reset */
	int64_t partition, value;  /* RESET */
	uint8_t resync;            /* TAKE, READY, COMMIT, LEAVE: pos is meaningful */
	uint32_t npos;
	struct grm_pos *pos;
};

/* Encodes q (its type decides the fields) into a malloc'ed buffer: *out and
 * *len, or -EINVAL (bad field) / -ENOMEM. */
int grm_req_encode(const struct grm_req *q, uint8_t **out, size_t *len) TFS_MUST_CHECK;
/* Decodes a request payload of frame type `type`: 0, REP_EPROTO (any
 * length, count, name, enum or trailing byte wrong) or -ENOMEM. Any bytes
 * are safe. On success release with grm_req_free. */
int grm_req_decode(uint16_t type, const uint8_t *buf, size_t len,
                   struct grm_req *q) TFS_MUST_CHECK;
void grm_req_free(struct grm_req *q);

/* TAKE response: rc 1 (bulk + data), 0 (nothing ready) or -EMSGSIZE (need). */
struct grm_take {
	int32_t rc;
	struct rep_bulk bulk;
	const uint8_t *data;       /* decode: points into the payload */
};
int grm_take_encode(const struct grm_take *t, uint8_t **out, size_t *len) TFS_MUST_CHECK;
int grm_take_decode(const uint8_t *buf, size_t len, struct grm_take *t) TFS_MUST_CHECK;

/* READY and MEMBERS responses: one value. */
int grm_u32_encode(uint32_t v, uint8_t **out, size_t *len) TFS_MUST_CHECK;
int grm_u32_decode(const uint8_t *buf, size_t len, uint32_t *v) TFS_MUST_CHECK;

/* OFFSETS response: n rows (malloc'ed by decode). */
int grm_offsets_encode(const struct rep_group_offset *rows, uint32_t n, uint8_t **out,
                       size_t *len) TFS_MUST_CHECK;
int grm_offsets_decode(const uint8_t *buf, size_t len, struct rep_group_offset **rows,
                       uint32_t *n) TFS_MUST_CHECK;

/* WAKE (n stub ids, 1..GRM_MAX_WAKE; decode: malloc'ed) and HELLO. */
int grm_wake_encode(const uint64_t *stubs, uint32_t n, uint8_t **out,
                    size_t *len) TFS_MUST_CHECK;
int grm_wake_decode(const uint8_t *buf, size_t len, uint64_t **stubs,
                    uint32_t *n) TFS_MUST_CHECK;
int grm_hello_encode(uint64_t incarnation, uint8_t **out, size_t *len) TFS_MUST_CHECK;
int grm_hello_decode(const uint8_t *buf, size_t len, uint64_t *incarnation) TFS_MUST_CHECK;

/* ---- the cluster as groups see it (an I/O interface, for tests) ------------ */

/* Every call group_remote.c makes into the cluster core. The default is the
 * core itself (cluster.h); tests install fakes with grm_set_io before
 * rep_groups_open. cluster_of returns NULL on a single node. */
struct grm_io {
	struct cluster *(*cluster_of)(struct rep *r);
	struct tr_net *(*net)(struct cluster *c);
	uint16_t (*node_id)(const struct cluster *c);
	int (*node_alive)(struct cluster *c, uint16_t id);
	unsigned (*request_timeout_ms)(const struct cluster *c);
	int (*submit)(struct cluster *c, const struct meta_cmd *cmd);
	int (*propose)(struct cluster *c, const struct meta_cmd *cmd, struct meta_result *res);
	void (*read)(struct cluster *c, void (*fn)(void *ctx, const struct meta_state *s),
	             void *ctx);
};
/* Process-wide; NULL restores the default. Not thread-safe: call it before
 * any node opens its groups. */
void grm_set_io(const struct grm_io *io);
/* The cluster of r per the current io (NULL: single node). */
struct cluster *grm_cluster_of(struct rep *r);

/* ---- the node's half (group_remote.c), called by groups.c ------------------ */

struct grm;
struct grm_stub;
struct rep_groups;

/* Starts the worker and wake threads for coordinator c of node r in cluster
 * cl; the worker reconciles with the metadata at once. */
int grm_open(struct rep_groups *c, struct rep *r, struct cluster *cl,
             struct grm **out) TFS_MUST_CHECK;
/* Stops both threads, frees every proxy (leave without commit) and every
 * stub still open (their front members with rep_member_free_front). */
void grm_close(struct grm *gr);
uint16_t grm_self(const struct grm *gr);
/* The metadata changed (any thread, never blocks): the worker reconciles. */
void grm_meta_changed(struct grm *gr);
/* Waits (bounded by the request timeout) until the worker has reconciled
 * with every metadata change signalled so far. Not on the loop thread. */
void grm_sync(struct grm *gr);
/* The request timeout from now: how long a call that keeps meeting the
 * cases grm_retry waits out may go on. */
int64_t grm_deadline(const struct grm *gr);
/* After rc from g's coordinator (or from running it here): 1, having caught
 * up with the metadata and paused a moment, if rc says the group is not run
 * there yet (-ESTALE: just made, or moved) or its node cannot be reached
 * (-ENOTCONN, -ECONNRESET, -ECONNABORTED: the quorum moves it off a dead
 * node within node_timeout_ms) and deadline leaves time to ask again; else
 * 0 (give rc to the caller). Not on the loop thread or the worker. */
int grm_retry(struct grm *gr, int rc, int64_t deadline);
/* A commit point was passed that should reach the quorum soon (leave). */
void grm_kick(struct grm *gr);
/* The group frames (loop thread; never blocks). */
int grm_on_frame(struct grm *gr, const struct tr_frame *f);
int grm_propose(struct grm *gr, const struct meta_cmd *cmd,
                struct meta_result *res) TFS_MUST_CHECK;
int grm_submit(struct grm *gr, const struct meta_cmd *cmd) TFS_MUST_CHECK;
/* Called by reconciliation (worker thread): g stopped being coordinated
 * here (its proxies go: they are orphans already), or its coordinator
 * changed (stubs of g are woken to join again). */
void grm_group_demoted(struct grm *gr, struct rep_group *g);
void grm_group_moved(struct grm *gr, struct rep_group *g);

/* Group-level requests to the coordinator of g (FUSE threads). */
int grm_group_members(struct grm *gr, struct rep_group *g, uint32_t *n) TFS_MUST_CHECK;
int grm_group_offsets(struct grm *gr, struct rep_group *g, struct rep_group_offset **rows,
                      uint32_t *n) TFS_MUST_CHECK;
int grm_group_reset(struct grm *gr, struct rep_group *g, enum rep_reset how,
                    int64_t partition, int64_t value) TFS_MUST_CHECK;

/* The stub behind a cluster-mode member (front, allocated by groups.c). */
int grm_stub_open(struct grm *gr, struct rep_member *front, struct rep_group *g,
                  void (*waker)(void *ctx), void *ctx, struct grm_stub **out) TFS_MUST_CHECK;
void grm_stub_close(struct grm_stub *s, int commit);
int grm_stub_take_bulk(struct grm_stub *s, void *buf, size_t size, uint32_t max_records,
                       char sep, struct rep_bulk *out) TFS_MUST_CHECK;
int grm_stub_ready(struct grm_stub *s) TFS_MUST_CHECK;
int grm_stub_commit(struct grm_stub *s) TFS_MUST_CHECK;
/* grm_stub_commit, then waits until the metadata holds what this member
 * committed (rep_member_save). */
int grm_stub_save(struct grm_stub *s) TFS_MUST_CHECK;
void grm_stub_rewind(struct grm_stub *s);
int grm_stub_peek(struct grm_stub *s, struct rep_delivery *d) TFS_MUST_CHECK;
void grm_stub_take(struct grm_stub *s);
size_t grm_stub_assignment(struct grm_stub *s, uint32_t *out, size_t max);

/* ---- what groups.c offers group_remote.c (implemented in groups.c) -------- */

/* One group of the metadata, as copied under the state's read lock. */
struct grm_mgroup {
	uint64_t topic_id;
	char name[REP_NAME_MAX + 1];
	uint16_t coordinator;
	uint32_t noffsets;
	int64_t *offsets;          /* -1: none */
};

/* Makes the registry the metadata's groups (worker thread): adds and
 * removes groups, mirrors committed offsets of groups coordinated elsewhere,
 * promotes groups that this node now coordinates (offsets from the
 * metadata) and demotes the others (every member evicted). Returns 1 if
 * something could not be applied yet (a topic not known locally): call
 * again later. */
int rep_groups_reconcile(struct rep_groups *c, const struct grm_mgroup *mg, size_t n);
/* Submits GROUP_COMMIT for groups coordinated here whose committed offsets
 * moved since the last submission (worker thread). */
void rep_groups_flush_commits(struct rep_groups *c);
/* A reference to group (topic_id, name) if listed, else NULL. */
struct rep_group *rep_groups_find(struct rep_groups *c, uint64_t topic_id, const char *name);
uint64_t rep_group_topic_id(const struct rep_group *g);
/* The group's coordinator node (metadata), whether this node runs it now,
 * and its run epoch (grows whenever it starts or stops running here). */
void rep_group_coord(struct rep_group *g, uint16_t *node, int *real, uint64_t *epoch);
/* Members of a group run here; -ESTALE if it is not run here. */
int rep_group_member_count(struct rep_group *g, uint32_t *n) TFS_MUST_CHECK;
/* The offsets rows from this node's knowledge only (no request). */
size_t rep_group_offsets_local(struct rep_group *g, struct rep_group_offset *out, size_t max);
/* The next commit submission of a group run here carries every committed
 * offset again, not only those that moved (a submission may have been lost
 * with a quorum leader change; a member that waits for its commit to be
 * saved must not wait for it). */
void rep_group_resubmit(struct rep_group *g);
/* The committed offsets of a group run here (none if it is not), one per
 * partition that has one; at most max. */
size_t rep_group_committed(struct rep_group *g, struct grm_pos *out, size_t max);
/* rep_group_reset on a group run here (-ESTALE if it is not). */
int rep_group_reset_real(struct rep_group *g, enum rep_reset how, int64_t partition,
                         int64_t value) TFS_MUST_CHECK;
/* rep_member_join of a real member (in a group run here: -ESTALE if not). */
int rep_member_join_real(struct rep_group *g, void (*waker)(void *ctx), void *ctx,
                         struct rep_member **out) TFS_MUST_CHECK;
/* 1 once m was evicted from its group (it owns nothing any more; its calls
 * do nothing; rep_member_leave frees it). */
int rep_member_orphaned(struct rep_member *m);
/* Positions of a real member from what its stub received: owned partition
 * p goes back to the listed offset if base <= offset <= pos, else to base. */
void rep_member_resync(struct rep_member *m, const struct grm_pos *pos, uint32_t n);
/* Frees a front member whose stub is gone (rep_groups_close only). */
void rep_member_free_front(struct rep_member *m);

#endif
