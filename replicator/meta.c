/*
 * meta.c - the cluster metadata state machine: state, commands, their
 * encoding, snapshots and the controller's decisions. See meta.h for the
 * model, the wire and snapshot layouts and the invariants (numbered there).
 *
 * Owns no I/O, clock or globals. Every function that changes a state either
 * completes or leaves it untouched: allocations happen before the first
 * write to the state (meta.h invariant 2).
 *
 * How a command flows:
 *
 *   proposer: meta_cmd_init ─> fill ─> meta_cmd_encode ─> (raft log)
 *   every node: (raft log) ─> meta_cmd_decode ─> meta_apply ─> result
 *   controller (quorum leader): meta_ctl_plan / meta_ctl_isr ─> commands
 */
#include "meta.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../logstore/crc32c.h"

#define ALL_KEYS ((1u << TC_NKEYS) - 1)
#define SEGMENT_BYTES_MIN 1024
#define SEGMENT_BYTES_MAX 2147483647ull
#define MAX_RECORD_BYTES_MAX 67108864u
#define CMD_HEADER_BYTES 16
#define CONFIG_BYTES 52
static const char snap_magic[4] = { 'T', 'F', 'S', 'M' };

/* ---- little-endian writer and reader ------------------------------------- */

/* Writes while it fits, counts always (snprintf-style callers). */
struct wr {
	uint8_t *p;
	size_t size, len;
};

static void put(struct wr *w, const void *src, size_t n)
{
	if (w->p && w->len + n <= w->size)
		memcpy(w->p + w->len, src, n);
	w->len += n;
}

static void put_u8(struct wr *w, uint8_t v) { put(w, &v, 1); }

static void put_le(struct wr *w, uint64_t v, unsigned bytes)
{
	uint8_t b[8];
	for (unsigned i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, bytes);
}

static void put_u16(struct wr *w, uint16_t v) { put_le(w, v, 2); }
static void put_u32(struct wr *w, uint32_t v) { put_le(w, v, 4); }
static void put_u64(struct wr *w, uint64_t v) { put_le(w, v, 8); }
static void put_i32(struct wr *w, int32_t v) { put_le(w, (uint32_t)v, 4); }
static void put_i64(struct wr *w, int64_t v) { put_le(w, (uint64_t)v, 8); }

static void put_str(struct wr *w, const char *s)
{
	size_t n = strlen(s);
	put_u16(w, (uint16_t)n);
	put(w, s, n);
}

/* Reads; the first overrun sets bad and every later read returns 0. */
struct rd {
	const uint8_t *p;
	size_t len, off;
	bool bad;
};

static const uint8_t *take(struct rd *r, size_t n)
{
	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *q = r->p + r->off;
	r->off += n;
	return q;
}

static uint64_t get_le(struct rd *r, unsigned bytes)
{
	const uint8_t *q = take(r, bytes);
	uint64_t v = 0;
	if (!q)
		return 0;
	for (unsigned i = 0; i < bytes; i++)
		v |= (uint64_t)q[i] << (8 * i);
	return v;
}

static uint8_t get_u8(struct rd *r) { return (uint8_t)get_le(r, 1); }
static uint16_t get_u16(struct rd *r) { return (uint16_t)get_le(r, 2); }
static uint32_t get_u32(struct rd *r) { return (uint32_t)get_le(r, 4); }
static uint64_t get_u64(struct rd *r) { return get_le(r, 8); }
static int32_t get_i32(struct rd *r) { return (int32_t)(uint32_t)get_le(r, 4); }
static int64_t get_i64(struct rd *r) { return (int64_t)get_le(r, 8); }

/* A string of at most max bytes without NUL into dst[max + 1]. */
static void get_str(struct rd *r, char *dst, size_t max)
{
	uint16_t n = get_u16(r);
	const uint8_t *q;
	dst[0] = 0;
	if (n > max) {
		r->bad = true;
		return;
	}
	q = take(r, n);
	if (!q)
		return;
	if (memchr(q, 0, n)) {
		r->bad = true;
		return;
	}
	memcpy(dst, q, n);
	dst[n] = 0;
}

/* Bytes still unread (for bounding counts before allocating). */
static size_t remaining(const struct rd *r) { return r->bad ? 0 : r->len - r->off; }

/* ---- small rules ---------------------------------------------------------- */

__attribute__((format(printf, 3, 4)))
static int refuse(struct meta_result *res, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(res->err, sizeof(res->err), fmt, ap);
	va_end(ap);
	return rc;
}

static bool pfile_name_ok(const char *name)
{
	size_t n = strlen(name);
	return n >= 1 && n <= REP_FILE_NAME_MAX && !strchr(name, '/');
}

/* "A.B.C.D:PORT"-like: 1..79 printable bytes without spaces. Its form is the
 * transport's business; here only that it is a sane string. */
static bool address_ok(const char *a)
{
	size_t n = strlen(a);
	if (n < 1 || n >= META_ADDR_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (a[i] <= ' ' || a[i] > '~')
			return false;
	return true;
}

/* The value ranges fs/config.c accepts, so no proposer can store a value
 * that logstore would trip on. Returns 0 or -EINVAL with the key's name. */
static int config_values_ok(const struct topic_config *c, struct meta_result *res)
{
	const char *bad = NULL;
	if (c->partitions < 1 || c->partitions > META_MAX_PARTITIONS)
		bad = "partitions";
	else if (c->replication < 1 || c->replication > META_MAX_REPLICAS)
		bad = "replication";
	else if (c->min_insync < 1 || c->min_insync > META_MAX_REPLICAS)
		bad = "min_insync";
	else if (c->retention_ms < -1)
		bad = "retention_ms";
	else if (c->retention_bytes < -1)
		bad = "retention_bytes";
	else if (c->segment_bytes < SEGMENT_BYTES_MIN || c->segment_bytes > SEGMENT_BYTES_MAX)
		bad = "segment_bytes";
	else if (c->compression_level < -5 || c->compression_level > 19 ||
	         c->compression_level == 0)
		bad = "compression_level";
	else if (c->key_separator == '\n')
		bad = "key_separator";
	else if (c->max_record_bytes < 1 || c->max_record_bytes > MAX_RECORD_BYTES_MAX)
		bad = "max_record_bytes";
	if (bad)
		return refuse(res, -EINVAL, "%s: value out of range", bad);
	return 0;
}

/* Built-in values in every key the overrides do not set (invariant 5:
 * canonical bytes whatever the proposer left in unset fields). */
static void config_normalise(const struct topic_config *in, struct topic_config *out)
{
	struct topic_config b;
	topic_config_builtin(&b);
	struct topic_config masked = *in;
	masked.set_mask &= ALL_KEYS;
	topic_config_effective(&b, &masked, out);
}

static void put_config(struct wr *w, const struct topic_config *c)
{
	put_u32(w, c->set_mask);
	put_u32(w, c->partitions);
	put_u32(w, c->replication);
	put_u32(w, c->min_insync);
	put_u8(w, (uint8_t)c->acks);
	put_i64(w, c->retention_ms);
	put_i64(w, c->retention_bytes);
	put_u64(w, c->segment_bytes);
	put_u8(w, (uint8_t)c->cleanup);
	put_u8(w, (uint8_t)c->compression);
	put_i32(w, c->compression_level);
	put_u8(w, (uint8_t)c->key_separator);
	put_u32(w, c->max_record_bytes);
}

static void get_config(struct rd *r, struct topic_config *c)
{
	memset(c, 0, sizeof(*c));
	c->set_mask = get_u32(r);
	c->partitions = get_u32(r);
	c->replication = get_u32(r);
	c->min_insync = get_u32(r);
	uint8_t acks = get_u8(r);
	c->retention_ms = get_i64(r);
	c->retention_bytes = get_i64(r);
	c->segment_bytes = get_u64(r);
	uint8_t cleanup = get_u8(r);
	uint8_t codec = get_u8(r);
	c->compression_level = get_i32(r);
	c->key_separator = (char)get_u8(r);
	c->max_record_bytes = get_u32(r);
	if ((c->set_mask & ~ALL_KEYS) || acks > REP_ACKS_ALL || cleanup > LS_CLEANUP_COMPACT ||
	    (codec != LS_CODEC_NONE && codec != LS_CODEC_ZSTD))
		r->bad = true;
	c->acks = (enum rep_acks)acks;
	c->cleanup = (enum ls_cleanup)cleanup;
	c->compression = (enum ls_codec)codec;
}

/* ---- state look-ups ------------------------------------------------------- */

void meta_state_init(struct meta_state *s)
{
	memset(s, 0, sizeof(*s));
	s->next_topic_id = 1;
	s->next_producer_id = 1;
}

static void group_free(struct meta_group *g) { free(g->offsets); }

static void topic_free(struct meta_topic *t)
{
	for (uint32_t i = 0; i < t->npfiles; i++)
		free(t->pfiles[i].name);
	free(t->pfiles);
	for (uint32_t i = 0; i < t->ngroups; i++)
		group_free(&t->groups[i]);
	free(t->groups);
	free(t->parts);
}

void meta_state_free(struct meta_state *s)
{
	for (uint32_t i = 0; i < s->ntopics; i++)
		topic_free(&s->topics[i]);
	free(s->topics);
	free(s->nodes);
	meta_state_init(s);
}

static long node_index(const struct meta_state *s, uint16_t id)
{
	uint32_t lo = 0, hi = s->nnodes;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (s->nodes[mid].id == id)
			return mid;
		if (s->nodes[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

const struct meta_node *meta_node_find(const struct meta_state *s, uint16_t id)
{
	long i = node_index(s, id);
	return i < 0 ? NULL : &s->nodes[i];
}

static bool alive(const struct meta_state *s, uint16_t id)
{
	const struct meta_node *n = meta_node_find(s, id);
	return n && n->alive;
}

uint32_t meta_nodes_alive(const struct meta_state *s)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < s->nnodes; i++)
		n += s->nodes[i].alive;
	return n;
}

static struct meta_topic *topic_find(const struct meta_state *s, uint64_t id)
{
	uint32_t lo = 0, hi = s->ntopics;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (s->topics[mid].id == id)
			return &s->topics[mid];
		if (s->topics[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const struct meta_topic *meta_topic_find(const struct meta_state *s, uint64_t id)
{
	return topic_find(s, id);
}

const struct meta_topic *meta_topic_by_name(const struct meta_state *s, const char *name)
{
	for (uint32_t i = 0; i < s->ntopics; i++)
		if (strcmp(s->topics[i].name, name) == 0)
			return &s->topics[i];
	return NULL;
}

/* Index of group name, or -(insertion point) - 1. */
static long group_index(const struct meta_topic *t, const char *name)
{
	uint32_t lo = 0, hi = t->ngroups;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int c = strcmp(t->groups[mid].name, name);
		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -(long)lo - 1;
}

const struct meta_group *meta_group_find(const struct meta_topic *t, const char *name)
{
	long i = group_index(t, name);
	return i < 0 ? NULL : &t->groups[i];
}

static long pfile_index(const struct meta_topic *t, const char *name)
{
	for (uint32_t i = 0; i < t->npfiles; i++)
		if (strcmp(t->pfiles[i].name, name) == 0)
			return i;
	return -1;
}

const struct meta_pfile *meta_pfile_by_name(const struct meta_topic *t, const char *name)
{
	long i = pfile_index(t, name);
	return i < 0 ? NULL : &t->pfiles[i];
}

static bool in_list(const uint16_t *list, unsigned n, uint16_t id)
{
	for (unsigned i = 0; i < n; i++)
		if (list[i] == id)
			return true;
	return false;
}

/* ---- controller decisions -------------------------------------------------- */

int meta_place(const struct meta_state *s, uint32_t nparts, uint32_t replication,
               struct meta_partition *out)
{
	uint16_t ids[META_MAX_NODES];
	uint32_t lead[META_MAX_NODES] = { 0 }, reps[META_MAX_NODES] = { 0 };
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->nnodes; i++)
		if (s->nodes[i].alive)
			ids[n++] = s->nodes[i].id;
	if (replication == 0 || replication > META_MAX_REPLICAS || replication > n)
		return -EINVAL;
	/* Current load of each alive node (ids[] is in id order). */
	for (uint32_t t = 0; t < s->ntopics; t++) {
		const struct meta_topic *tp = &s->topics[t];
		for (uint32_t p = 0; p < tp->nparts; p++) {
			const struct meta_partition *mp = &tp->parts[p];
			for (uint32_t j = 0; j < n; j++) {
				if (mp->leader == ids[j])
					lead[j]++;
				if (in_list(mp->replicas, mp->nreplicas, ids[j]))
					reps[j]++;
			}
		}
	}
	for (uint32_t p = 0; p < nparts; p++) {
		uint32_t best = 0;
		for (uint32_t j = 1; j < n; j++)
			if (lead[j] < lead[best] || (lead[j] == lead[best] && reps[j] < reps[best]))
				best = j;
		struct meta_partition *mp = &out[p];
		memset(mp, 0, sizeof(*mp));
		for (uint32_t k = 0; k < replication; k++) {
			uint32_t j = (best + k) % n;
			mp->replicas[k] = ids[j];
			mp->isr[k] = ids[j];
			reps[j]++;
		}
		mp->nreplicas = mp->nisr = (uint8_t)replication;
		mp->leader = ids[best];
		lead[best]++;
	}
	return 0;
}

uint16_t meta_elect(const struct meta_state *s, const struct meta_partition *p)
{
	if (p->leader && alive(s, p->leader) && in_list(p->isr, p->nisr, p->leader))
		return p->leader;
	for (unsigned i = 0; i < p->nreplicas; i++) {
		uint16_t r = p->replicas[i];
		if (in_list(p->isr, p->nisr, r) && alive(s, r))
			return r;
	}
	return 0;
}

uint16_t meta_pick_coordinator(const struct meta_state *s)
{
	uint16_t best = 0;
	uint64_t best_load = UINT64_MAX;
	for (uint32_t i = 0; i < s->nnodes; i++) {
		if (!s->nodes[i].alive)
			continue;
		uint64_t load = 0;
		for (uint32_t t = 0; t < s->ntopics; t++)
			for (uint32_t g = 0; g < s->topics[t].ngroups; g++)
				load += s->topics[t].groups[g].coordinator == s->nodes[i].id;
		if (load < best_load) {
			best_load = load;
			best = s->nodes[i].id;
		}
	}
	return best;
}

static void emit(struct meta_cmd *out, size_t max, size_t *n, const struct meta_cmd *c)
{
	if (*n < max)
		out[*n] = *c;
	(*n)++;
}

static void partition_cmd(struct meta_cmd *c, enum meta_cmd_type type, uint64_t topic,
                          uint32_t p, int32_t epoch, uint16_t node)
{
	meta_cmd_init(c, type);
	c->topic_id = topic;
	c->partition = p;
	c->epoch = epoch;
	c->node = node;
}

size_t meta_ctl_plan(const struct meta_state *s, struct meta_cmd *out, size_t max)
{
	size_t n = 0;
	struct meta_cmd c;
	for (uint32_t t = 0; t < s->ntopics; t++) {
		const struct meta_topic *tp = &s->topics[t];
		for (uint32_t p = 0; p < tp->nparts; p++) {
			const struct meta_partition *mp = &tp->parts[p];
			uint16_t e = meta_elect(s, mp);
			if (mp->leader == 0 || !alive(s, mp->leader)) {
				if (e == mp->leader)   /* offline and nobody to elect */
					continue;
				partition_cmd(&c, META_CMD_LEADER, tp->id, p, mp->leader_epoch, e);
				emit(out, max, &n, &c);
				continue;
			}
			for (unsigned i = 0; i < mp->nisr; i++) {
				if (mp->isr[i] == mp->leader || alive(s, mp->isr[i]))
					continue;
				partition_cmd(&c, META_CMD_ISR_SHRINK, tp->id, p, mp->leader_epoch,
				              mp->isr[i]);
				emit(out, max, &n, &c);
			}
		}
		for (uint32_t g = 0; g < tp->ngroups; g++) {
			const struct meta_group *gp = &tp->groups[g];
			if (alive(s, gp->coordinator) || meta_pick_coordinator(s) == 0)
				continue;
			meta_cmd_init(&c, META_CMD_GROUP_MOVE);
			c.topic_id = tp->id;
			snprintf(c.name, sizeof(c.name), "%s", gp->name);
			emit(out, max, &n, &c);
		}
	}
	return n;
}

size_t meta_ctl_down(const struct meta_state *s, const struct meta_seen *seen, size_t nseen,
                     int64_t now_ms, int64_t timeout_ms, struct meta_cmd *out, size_t max)
{
	size_t n = 0;
	struct meta_cmd c;
	for (uint32_t i = 0; i < s->nnodes; i++) {
		const struct meta_node *node = &s->nodes[i];
		const struct meta_seen *last = NULL;
		if (!node->alive)
			continue;
		for (size_t k = 0; k < nseen; k++)
			if (seen[k].node == node->id)
				last = &seen[k];
		if (!last || now_ms - last->at_ms <= timeout_ms)
			continue;
		meta_cmd_init(&c, META_CMD_NODE_DOWN);
		c.node = node->id;
		emit(out, max, &n, &c);
	}
	return n;
}

size_t meta_ctl_isr(const struct meta_state *s, uint64_t topic_id, uint32_t p, int64_t hw,
                    int64_t now_ms, int64_t lag_ms, const struct meta_lag_report *reports,
                    size_t nreports, struct meta_cmd *out, size_t max)
{
	const struct meta_topic *t = topic_find(s, topic_id);
	size_t n = 0;
	struct meta_cmd c;
	if (!t || p >= t->nparts || t->parts[p].leader == 0)
		return 0;
	const struct meta_partition *mp = &t->parts[p];
	for (unsigned i = 0; i < mp->nreplicas; i++) {
		uint16_t r = mp->replicas[i];
		const struct meta_lag_report *rep = NULL;
		if (r == mp->leader)
			continue;
		for (size_t k = 0; k < nreports; k++)
			if (reports[k].node == r)
				rep = &reports[k];
		bool fresh = rep && now_ms - rep->caught_up_ms <= lag_ms;
		if (in_list(mp->isr, mp->nisr, r)) {
			if (!alive(s, r) || !fresh) {
				partition_cmd(&c, META_CMD_ISR_SHRINK, t->id, p, mp->leader_epoch, r);
				emit(out, max, &n, &c);
			}
		} else if (alive(s, r) && fresh && rep->end_offset >= hw) {
			partition_cmd(&c, META_CMD_ISR_EXPAND, t->id, p, mp->leader_epoch, r);
			emit(out, max, &n, &c);
		}
	}
	return n;
}

/* ---- commands: encoding ---------------------------------------------------- */

enum {
	F_NODE = 1 << 0,
	F_ADDR = 1 << 1,
	F_TERM = 1 << 2,     /* term, ts_ms */
	F_TOPIC = 1 << 3,
	F_PART = 1 << 4,     /* partition, epoch */
	F_NAME = 1 << 5,
	F_NAME2 = 1 << 6,
	F_CONFIG = 1 << 7,
	F_CLEARED = 1 << 8,
	F_COUNT = 1 << 9,
	F_OFFSETS = 1 << 10,
};

static const struct {
	const char *name;
	unsigned fields;
} cmd_types[META_CMD_NTYPES] = {
	[META_CMD_NODE_REGISTER] = { "node_register", F_NODE | F_ADDR | F_TERM },
	[META_CMD_NODE_HEARTBEAT] = { "node_heartbeat", F_NODE | F_TERM },
	[META_CMD_NODE_DOWN] = { "node_down", F_NODE },
	[META_CMD_TOPIC_CREATE] = { "topic_create", F_NAME | F_CONFIG },
	[META_CMD_TOPIC_DELETE] = { "topic_delete", F_TOPIC },
	[META_CMD_TOPIC_CONFIG] = { "topic_config", F_TOPIC | F_CONFIG | F_CLEARED },
	[META_CMD_PFILE_ADD] = { "pfile_add", F_TOPIC | F_NAME },
	[META_CMD_PFILE_REMOVE] = { "pfile_remove", F_TOPIC | F_NAME },
	[META_CMD_PFILE_RENAME] = { "pfile_rename", F_TOPIC | F_NAME | F_NAME2 },
	[META_CMD_LEADER] = { "leader", F_NODE | F_TOPIC | F_PART },
	[META_CMD_ISR_SHRINK] = { "isr_shrink", F_NODE | F_TOPIC | F_PART },
	[META_CMD_ISR_EXPAND] = { "isr_expand", F_NODE | F_TOPIC | F_PART },
	[META_CMD_GROUP_CREATE] = { "group_create", F_NODE | F_TOPIC | F_NAME },
	[META_CMD_GROUP_DELETE] = { "group_delete", F_TOPIC | F_NAME },
	[META_CMD_GROUP_COMMIT] = { "group_commit", F_TOPIC | F_NAME | F_OFFSETS },
	[META_CMD_GROUP_MOVE] = { "group_move", F_NODE | F_TOPIC | F_NAME },
	[META_CMD_ALLOC_PIDS] = { "alloc_pids", F_COUNT },
	[META_CMD_GROUP_COMMIT_BY] = { "group_commit_by", F_NODE | F_TOPIC | F_NAME | F_OFFSETS },
};

static bool type_known(int type) { return type >= 1 && type < META_CMD_NTYPES; }

const char *meta_cmd_name(enum meta_cmd_type type)
{
	return type_known((int)type) ? cmd_types[type].name : "?";
}

void meta_cmd_init(struct meta_cmd *c, enum meta_cmd_type type)
{
	memset(c, 0, sizeof(*c));
	c->type = type;
	topic_config_builtin(&c->config);
}

long meta_cmd_encode(const struct meta_cmd *c, void *buf, size_t size)
{
	if (!type_known((int)c->type))
		return -EINVAL;
	unsigned f = cmd_types[c->type].fields;
	if (((f & F_ADDR) && !memchr(c->address, 0, sizeof(c->address))) ||
	    ((f & F_NAME) && !memchr(c->name, 0, sizeof(c->name))) ||
	    ((f & F_NAME2) && !memchr(c->name2, 0, sizeof(c->name2))) ||
	    ((f & F_OFFSETS) && c->noffsets > META_CMD_MAX_OFFSETS))
		return -EINVAL;

	/* Body first, counted, so the header can carry its length. */
	struct wr body = { NULL, 0, 0 };
	struct wr w = { buf, size, 0 };
	for (int pass = 0; pass < 2; pass++) {
		struct wr *o = pass == 0 ? &body : &w;
		if (pass == 1) {
			put_u8(o, META_CMD_VERSION);
			put_u8(o, (uint8_t)c->type);
			put_u16(o, c->origin);
			put_u64(o, c->seq);
			put_u32(o, (uint32_t)body.len);
		}
		if (f & F_NODE)
			put_u16(o, c->node);
		if (f & F_ADDR)
			put_str(o, c->address);
		if (f & F_TERM) {
			put_u64(o, c->term);
			put_i64(o, c->ts_ms);
		}
		if (f & F_TOPIC)
			put_u64(o, c->topic_id);
		if (f & F_PART) {
			put_u32(o, c->partition);
			put_i32(o, c->epoch);
		}
		if (f & F_NAME)
			put_str(o, c->name);
		if (f & F_NAME2)
			put_str(o, c->name2);
		if (f & F_CONFIG)
			put_config(o, &c->config);
		if (f & F_CLEARED)
			put_u32(o, c->cleared);
		if (f & F_COUNT)
			put_u32(o, c->count);
		if (f & F_OFFSETS) {
			put_u32(o, c->noffsets);
			for (uint32_t i = 0; i < c->noffsets; i++) {
				put_u32(o, c->offsets[i].partition);
				put_i64(o, c->offsets[i].offset);
			}
		}
	}
	return (long)w.len;
}

int meta_cmd_decode(const void *buf, size_t len, struct meta_cmd *c)
{
	struct rd r = { buf, len, 0, false };
	meta_cmd_init(c, 0);
	if (len < CMD_HEADER_BYTES)
		return REP_EPROTO;
	uint8_t version = get_u8(&r);
	uint8_t type = get_u8(&r);
	c->origin = get_u16(&r);
	c->seq = get_u64(&r);
	uint32_t blen = get_u32(&r);
	if (version != META_CMD_VERSION)
		return version > META_CMD_VERSION ? -EPROTONOSUPPORT : REP_EPROTO;
	/* Up to 7 zero bytes may follow the body (raft_uv wants entries in
	 * multiples of 8 bytes; meta_raft pads). */
	if (!type_known(type) || blen > len - CMD_HEADER_BYTES ||
	    len - CMD_HEADER_BYTES - blen > 7)
		return REP_EPROTO;
	for (size_t i = CMD_HEADER_BYTES + blen; i < len; i++)
		if (r.p[i])
			return REP_EPROTO;
	r.len = CMD_HEADER_BYTES + blen;
	c->type = (enum meta_cmd_type)type;
	unsigned f = cmd_types[type].fields;
	if (f & F_NODE)
		c->node = get_u16(&r);
	if (f & F_ADDR)
		get_str(&r, c->address, META_ADDR_MAX - 1);
	if (f & F_TERM) {
		c->term = get_u64(&r);
		c->ts_ms = get_i64(&r);
	}
	if (f & F_TOPIC)
		c->topic_id = get_u64(&r);
	if (f & F_PART) {
		c->partition = get_u32(&r);
		c->epoch = get_i32(&r);
	}
	if (f & F_NAME)
		get_str(&r, c->name, REP_FILE_NAME_MAX);
	if (f & F_NAME2)
		get_str(&r, c->name2, REP_FILE_NAME_MAX);
	if (f & F_CONFIG)
		get_config(&r, &c->config);
	if (f & F_CLEARED) {
		c->cleared = get_u32(&r);
		if (c->cleared & ~ALL_KEYS)
			r.bad = true;
	}
	if (f & F_COUNT)
		c->count = get_u32(&r);
	if (f & F_OFFSETS) {
		c->noffsets = get_u32(&r);
		if (c->noffsets > META_CMD_MAX_OFFSETS) {
			c->noffsets = 0;
			r.bad = true;
		}
		for (uint32_t i = 0; i < c->noffsets; i++) {
			c->offsets[i].partition = get_u32(&r);
			c->offsets[i].offset = get_i64(&r);
		}
	}
	if (r.bad || r.off != r.len) {
		meta_cmd_init(c, 0);
		return REP_EPROTO;
	}
	return 0;
}

/* ---- commands: apply ------------------------------------------------------- */

static int apply_node_register(struct meta_state *s, const struct meta_cmd *c,
                               struct meta_result *res)
{
	if (c->node == 0)
		return refuse(res, -EINVAL, "node id 0 is not valid");
	if (!address_ok(c->address))
		return refuse(res, -EINVAL, "node %u: address is not valid", c->node);
	for (uint32_t i = 0; i < s->nnodes; i++)
		if (s->nodes[i].id != c->node && strcmp(s->nodes[i].address, c->address) == 0)
			return refuse(res, -EADDRINUSE, "node %u: address %s is node %u's",
			              c->node, c->address, s->nodes[i].id);
	long i = node_index(s, c->node);
	if (i >= 0) {
		struct meta_node *n = &s->nodes[i];
		if (c->term < n->hb_term)
			return refuse(res, -ESTALE, "node %u: register of term %" PRIu64
			              " after term %" PRIu64, c->node, c->term, n->hb_term);
		snprintf(n->address, sizeof(n->address), "%s", c->address);
		n->hb_term = c->term;
		n->hb_ms = c->ts_ms;
		n->alive = 1;
		return 0;
	}
	if (s->nnodes >= META_MAX_NODES)
		return refuse(res, -ENOSPC, "node %u: the cluster has %d nodes already",
		              c->node, META_MAX_NODES);
	struct meta_node *nodes = realloc(s->nodes, (s->nnodes + 1) * sizeof(*nodes));
	if (!nodes)
		return refuse(res, -ENOMEM, "out of memory");
	s->nodes = nodes;
	uint32_t at = 0;
	while (at < s->nnodes && s->nodes[at].id < c->node)
		at++;
	memmove(&s->nodes[at + 1], &s->nodes[at], (s->nnodes - at) * sizeof(*nodes));
	struct meta_node *n = &s->nodes[at];
	memset(n, 0, sizeof(*n));
	n->id = c->node;
	snprintf(n->address, sizeof(n->address), "%s", c->address);
	n->hb_term = c->term;
	n->hb_ms = c->ts_ms;
	n->alive = 1;
	s->nnodes++;
	return 0;
}

static int apply_node_heartbeat(struct meta_state *s, const struct meta_cmd *c,
                                struct meta_result *res)
{
	long i = node_index(s, c->node);
	if (i < 0)
		return refuse(res, -ENOENT, "node %u is not registered", c->node);
	struct meta_node *n = &s->nodes[i];
	if (c->term < n->hb_term)
		return refuse(res, -ESTALE, "node %u: heartbeat of term %" PRIu64 " after term %"
		              PRIu64, c->node, c->term, n->hb_term);
	n->hb_term = c->term;
	n->hb_ms = c->ts_ms;
	n->alive = 1;
	return 0;
}

static int apply_node_down(struct meta_state *s, const struct meta_cmd *c,
                           struct meta_result *res)
{
	long i = node_index(s, c->node);
	if (i < 0)
		return refuse(res, -ENOENT, "node %u is not registered", c->node);
	s->nodes[i].alive = 0;
	return 0;
}

/* Checks a topic's new overrides against its old ones (NULL at creation). */
static int check_config(const struct meta_state *s, const struct topic_config *old,
                        const struct topic_config *neu, struct meta_result *res)
{
	int rc;
	if ((neu->set_mask & META_PINNED_KEYS) != META_PINNED_KEYS)
		return refuse(res, -EINVAL, "partitions, replication and min_insync must be set");
	rc = config_values_ok(neu, res);
	if (rc < 0)
		return rc;
	uint32_t live = meta_nodes_alive(s);
	bool repl_changes = !old || old->replication != neu->replication;
	if (repl_changes && live == 0)
		return refuse(res, -EHOSTDOWN, "replication: no live node in the cluster");
	return topic_config_check(old, neu, repl_changes ? live : 0, res->err, sizeof(res->err));
}

static int apply_topic_create(struct meta_state *s, const struct meta_cmd *c,
                              struct meta_result *res)
{
	struct topic_config ov;
	int rc;
	if (!rep_name_valid(c->name))
		return refuse(res, -EINVAL, "topic name is not valid");
	if (meta_topic_by_name(s, c->name))
		return refuse(res, -EEXIST, "topic %s exists", c->name);
	if (s->ntopics >= META_MAX_TOPICS)
		return refuse(res, -ENOSPC, "topic %s: %d topics exist already", c->name,
		              META_MAX_TOPICS);
	if (s->next_topic_id == UINT64_MAX)
		return refuse(res, -EOVERFLOW, "topic ids exhausted");
	config_normalise(&c->config, &ov);
	rc = check_config(s, NULL, &ov, res);
	if (rc < 0)
		return rc;
	struct meta_partition *parts = calloc(ov.partitions, sizeof(*parts));
	if (!parts)
		return refuse(res, -ENOMEM, "out of memory");
	rc = meta_place(s, ov.partitions, ov.replication, parts);
	if (rc < 0) {
		free(parts);
		return refuse(res, rc, "replication: cannot place %u replicas", ov.replication);
	}
	struct meta_topic *topics = realloc(s->topics, (s->ntopics + 1) * sizeof(*topics));
	if (!topics) {
		free(parts);
		return refuse(res, -ENOMEM, "out of memory");
	}
	s->topics = topics;
	struct meta_topic *t = &s->topics[s->ntopics++];   /* ids grow: stays sorted */
	memset(t, 0, sizeof(*t));
	t->id = s->next_topic_id++;
	memcpy(t->name, c->name, strlen(c->name) + 1);   /* valid: <= 249 */
	t->overrides = ov;
	t->nparts = ov.partitions;
	t->parts = parts;
	t->next_pfile_id = 1;
	res->value = (int64_t)t->id;
	return 0;
}

static int apply_topic_delete(struct meta_state *s, const struct meta_cmd *c,
                              struct meta_result *res)
{
	struct meta_topic *t = topic_find(s, c->topic_id);
	if (!t)
		return refuse(res, -ENOENT, "topic %" PRIu64 " does not exist", c->topic_id);
	topic_free(t);
	size_t at = (size_t)(t - s->topics);
	memmove(t, t + 1, (s->ntopics - at - 1) * sizeof(*t));
	s->ntopics--;
	return 0;
}

/* Load of each node (replicas held), for choosing new replicas. */
static uint32_t replica_load(const struct meta_state *s, uint16_t id)
{
	uint32_t n = 0;
	for (uint32_t t = 0; t < s->ntopics; t++)
		for (uint32_t p = 0; p < s->topics[t].nparts; p++)
			n += in_list(s->topics[t].parts[p].replicas, s->topics[t].parts[p].nreplicas, id);
	return n;
}

static void list_remove(uint16_t *list, uint8_t *n, uint16_t id)
{
	for (unsigned i = 0; i < *n; i++) {
		if (list[i] == id) {
			memmove(&list[i], &list[i + 1], (*n - i - 1) * sizeof(*list));
			(*n)--;
			return;
		}
	}
}

/* Changes partition mp to `want` replicas: grows with the least loaded live
 * nodes (not in the in-sync set until they catch up), shrinks by dropping
 * followers: dead first, then out of sync, then the last in replica order. */
static int resize_replicas(const struct meta_state *s, struct meta_partition *mp,
                           uint32_t want, uint32_t part, struct meta_result *res)
{
	while (mp->nreplicas < want) {
		uint16_t best = 0;
		uint32_t best_load = UINT32_MAX;
		for (uint32_t i = 0; i < s->nnodes; i++) {
			const struct meta_node *n = &s->nodes[i];
			if (!n->alive || in_list(mp->replicas, mp->nreplicas, n->id))
				continue;
			uint32_t load = replica_load(s, n->id);
			if (load < best_load) {
				best_load = load;
				best = n->id;
			}
		}
		if (!best)
			return refuse(res, -EINVAL, "replication: partition %u: not enough live "
			              "nodes for %u replicas", part, want);
		mp->replicas[mp->nreplicas++] = best;
	}
	while (mp->nreplicas > want) {
		int victim = -1;
		for (int pass = 0; pass < 3 && victim < 0; pass++) {
			for (int i = mp->nreplicas - 1; i >= 0; i--) {
				uint16_t r = mp->replicas[i];
				if (r == mp->leader)
					continue;
				if ((pass == 0 && !alive(s, r)) ||
				    (pass == 1 && !in_list(mp->isr, mp->nisr, r)) || pass == 2) {
					victim = i;
					break;
				}
			}
		}
		uint16_t r = mp->replicas[victim];   /* want >= 1 keeps one: never -1 */
		list_remove(mp->replicas, &mp->nreplicas, r);
		list_remove(mp->isr, &mp->nisr, r);
	}
	return 0;
}

static int apply_topic_config(struct meta_state *s, const struct meta_cmd *c,
                              struct meta_result *res)
{
	struct meta_topic *t = topic_find(s, c->topic_id);
	int rc;
	if (!t)
		return refuse(res, -ENOENT, "topic %" PRIu64 " does not exist", c->topic_id);
	uint32_t set = c->config.set_mask & ALL_KEYS;
	if (c->cleared & META_PINNED_KEYS) {
		for (int k = 0; k < TC_NKEYS; k++)
			if (c->cleared & META_PINNED_KEYS & (1u << k))
				return refuse(res, -EINVAL, "%s: cannot return to a node default in a "
				              "cluster; give a value", topic_config_key_name(k));
	}
	if (c->cleared & set)
		return refuse(res, -EINVAL, "a key is both set and cleared");

	struct topic_config nu = t->overrides, builtin;
	topic_config_builtin(&builtin);
	for (int k = 0; k < TC_NKEYS; k++) {
		if (set & (1u << k)) {
			topic_config_copy_key(&nu, &c->config, (enum tc_key)k);
			nu.set_mask |= 1u << k;
		} else if (c->cleared & (1u << k)) {
			topic_config_copy_key(&nu, &builtin, (enum tc_key)k);
			nu.set_mask &= ~(1u << k);
		}
	}
	rc = check_config(s, &t->overrides, &nu, res);
	if (rc < 0)
		return rc;

	/* Build the new partition array and group offsets aside, then swap. */
	uint32_t np = nu.partitions, op = t->nparts;
	struct meta_partition *parts = calloc(np, sizeof(*parts));
	int64_t **offs = calloc(t->ngroups ? t->ngroups : 1, sizeof(*offs));
	if (!parts || !offs)
		goto nomem;
	memcpy(parts, t->parts, op * sizeof(*parts));
	if (np > op) {
		rc = meta_place(s, np - op, nu.replication, parts + op);
		if (rc < 0) {
			refuse(res, rc, "replication: cannot place %u replicas", nu.replication);
			goto fail;
		}
		for (uint32_t g = 0; g < t->ngroups; g++) {
			offs[g] = malloc(np * sizeof(**offs));
			if (!offs[g])
				goto nomem;
			memcpy(offs[g], t->groups[g].offsets, op * sizeof(**offs));
			for (uint32_t p = op; p < np; p++)
				offs[g][p] = -1;
		}
	}
	if (nu.replication != t->overrides.replication) {
		for (uint32_t p = 0; p < op; p++) {
			rc = resize_replicas(s, &parts[p], nu.replication, p, res);
			if (rc < 0)
				goto fail;
		}
	}
	free(t->parts);
	t->parts = parts;
	t->nparts = np;
	if (np > op) {
		for (uint32_t g = 0; g < t->ngroups; g++) {
			free(t->groups[g].offsets);
			t->groups[g].offsets = offs[g];
			t->groups[g].noffsets = np;
		}
	}
	free(offs);
	t->overrides = nu;
	res->value = np;
	return 0;

nomem:
	rc = refuse(res, -ENOMEM, "out of memory");
fail:
	if (offs)
		for (uint32_t g = 0; g < t->ngroups; g++)
			free(offs[g]);
	free(offs);
	free(parts);
	return rc;
}

static int apply_pfile_add(struct meta_topic *t, const struct meta_cmd *c,
                           struct meta_result *res)
{
	if (!pfile_name_ok(c->name))
		return refuse(res, -EINVAL, "%s: producer file name is not valid", t->name);
	if (pfile_index(t, c->name) >= 0)
		return refuse(res, -EEXIST, "%s/%s exists", t->name, c->name);
	if (t->npfiles >= META_MAX_PFILES || t->next_pfile_id == UINT32_MAX)
		return refuse(res, -ENOSPC, "%s: too many producer files", t->name);
	char *name = strdup(c->name);
	struct meta_pfile *pf = name ? realloc(t->pfiles, (t->npfiles + 1) * sizeof(*pf)) : NULL;
	if (!pf) {
		free(name);
		return refuse(res, -ENOMEM, "out of memory");
	}
	t->pfiles = pf;
	t->pfiles[t->npfiles].id = t->next_pfile_id++;
	t->pfiles[t->npfiles].name = name;
	res->value = t->pfiles[t->npfiles].id;
	t->npfiles++;
	return 0;
}

static void pfile_drop(struct meta_topic *t, long i)
{
	free(t->pfiles[i].name);
	memmove(&t->pfiles[i], &t->pfiles[i + 1], (t->npfiles - i - 1) * sizeof(*t->pfiles));
	t->npfiles--;
}

static int apply_pfile_remove(struct meta_topic *t, const struct meta_cmd *c,
                              struct meta_result *res)
{
	long i = pfile_index(t, c->name);
	if (i < 0)
		return refuse(res, -ENOENT, "%s/%s does not exist", t->name, c->name);
	pfile_drop(t, i);
	return 0;
}

static int apply_pfile_rename(struct meta_topic *t, const struct meta_cmd *c,
                              struct meta_result *res)
{
	long from = pfile_index(t, c->name);
	if (from < 0)
		return refuse(res, -ENOENT, "%s/%s does not exist", t->name, c->name);
	if (!pfile_name_ok(c->name2))
		return refuse(res, -EINVAL, "%s: producer file name is not valid", t->name);
	if (strcmp(c->name, c->name2) == 0)
		return 0;
	char *name = strdup(c->name2);
	if (!name)
		return refuse(res, -ENOMEM, "out of memory");
	long to = pfile_index(t, c->name2);
	free(t->pfiles[from].name);
	t->pfiles[from].name = name;
	res->value = t->pfiles[from].id;
	if (to >= 0)
		pfile_drop(t, to);   /* like rename(2): the target is replaced */
	return 0;
}

static int apply_partition(struct meta_state *s, struct meta_topic *t,
                           const struct meta_cmd *c, struct meta_result *res)
{
	if (c->partition >= t->nparts)
		return refuse(res, -ENOENT, "%s/%u does not exist", t->name, c->partition);
	struct meta_partition *mp = &t->parts[c->partition];
	uint16_t node = c->node;
	if (c->epoch != mp->leader_epoch)
		return refuse(res, -ESTALE, "%s/%u: epoch %d is not the current %d", t->name,
		              c->partition, c->epoch, mp->leader_epoch);
	switch (c->type) {
	case META_CMD_LEADER:
		if (mp->leader_epoch == INT32_MAX)
			return refuse(res, -EOVERFLOW, "%s/%u: leader epochs exhausted", t->name,
			              c->partition);
		if (node == 0) {
			if (mp->leader == 0)
				return refuse(res, -EALREADY, "%s/%u is offline already", t->name,
				              c->partition);
		} else {
			if (!in_list(mp->isr, mp->nisr, node))
				return refuse(res, -EINVAL, "%s/%u: node %u is not in the in-sync set",
				              t->name, c->partition, node);
			if (!alive(s, node))
				return refuse(res, -EHOSTDOWN, "%s/%u: node %u is down", t->name,
				              c->partition, node);
			/* The in-sync set keeps its live members (the new leader is one). */
			uint8_t n = 0;
			for (unsigned i = 0; i < mp->nisr; i++)
				if (alive(s, mp->isr[i]))
					mp->isr[n++] = mp->isr[i];
			mp->nisr = n;
		}
		mp->leader = node;
		mp->leader_epoch++;
		res->value = mp->leader_epoch;
		return 0;
	case META_CMD_ISR_SHRINK:
		if (!in_list(mp->isr, mp->nisr, node))
			return refuse(res, -ENOENT, "%s/%u: node %u is not in the in-sync set",
			              t->name, c->partition, node);
		if (node == mp->leader || mp->nisr == 1)
			return refuse(res, -EINVAL, "%s/%u: node %u cannot leave the in-sync set "
			              "(leader or last member)", t->name, c->partition, node);
		list_remove(mp->isr, &mp->nisr, node);
		return 0;
	case META_CMD_ISR_EXPAND: {
		if (mp->leader == 0)
			return refuse(res, -EINVAL, "%s/%u is offline", t->name, c->partition);
		if (!in_list(mp->replicas, mp->nreplicas, node))
			return refuse(res, -EINVAL, "%s/%u: node %u is not a replica", t->name,
			              c->partition, node);
		if (in_list(mp->isr, mp->nisr, node))
			return refuse(res, -EEXIST, "%s/%u: node %u is in sync already", t->name,
			              c->partition, node);
		if (!alive(s, node))
			return refuse(res, -EHOSTDOWN, "%s/%u: node %u is down", t->name,
			              c->partition, node);
		/* Rebuild in replica order. */
		uint16_t isr[META_MAX_REPLICAS];
		uint8_t n = 0;
		for (unsigned i = 0; i < mp->nreplicas; i++)
			if (mp->replicas[i] == node || in_list(mp->isr, mp->nisr, mp->replicas[i]))
				isr[n++] = mp->replicas[i];
		memcpy(mp->isr, isr, sizeof(isr));
		mp->nisr = n;
		return 0;
	}
	default:
		return -EINVAL;
	}
}

static int check_coordinator(struct meta_state *s, const struct meta_cmd *c,
                             uint16_t *out, struct meta_result *res)
{
	uint16_t node = c->node ? c->node : meta_pick_coordinator(s);
	if (node == 0)
		return refuse(res, -EHOSTDOWN, "group %s: no live node to coordinate it", c->name);
	if (!meta_node_find(s, node))
		return refuse(res, -ENOENT, "group %s: node %u is not registered", c->name, node);
	if (!alive(s, node))
		return refuse(res, -EHOSTDOWN, "group %s: node %u is down", c->name, node);
	*out = node;
	return 0;
}

static int apply_group(struct meta_state *s, struct meta_topic *t, const struct meta_cmd *c,
                       struct meta_result *res)
{
	long i = group_index(t, c->name);
	uint16_t coord;
	int rc;

	if (c->type == META_CMD_GROUP_CREATE) {
		if (!rep_name_valid(c->name))
			return refuse(res, -EINVAL, "%s: group name is not valid", t->name);
		if (i >= 0)
			return refuse(res, -EEXIST, "%s: group %s exists", t->name, c->name);
		if (t->ngroups >= META_MAX_GROUPS)
			return refuse(res, -ENOSPC, "%s: too many groups", t->name);
		rc = check_coordinator(s, c, &coord, res);
		if (rc < 0)
			return rc;
		int64_t *offs = malloc((t->nparts ? t->nparts : 1) * sizeof(*offs));
		struct meta_group *g = offs ? realloc(t->groups, (t->ngroups + 1) * sizeof(*g)) : NULL;
		if (!g) {
			free(offs);
			return refuse(res, -ENOMEM, "out of memory");
		}
		t->groups = g;
		long at = -i - 1;
		memmove(&g[at + 1], &g[at], (t->ngroups - at) * sizeof(*g));
		memset(&g[at], 0, sizeof(*g));
		memcpy(g[at].name, c->name, strlen(c->name) + 1);   /* valid: <= 249 */
		g[at].coordinator = coord;
		g[at].noffsets = t->nparts;
		g[at].offsets = offs;
		for (uint32_t p = 0; p < t->nparts; p++)
			offs[p] = -1;
		t->ngroups++;
		res->value = coord;
		return 0;
	}
	if (i < 0)
		return refuse(res, -ENOENT, "%s: group %s does not exist", t->name, c->name);
	struct meta_group *g = &t->groups[i];
	switch (c->type) {
	case META_CMD_GROUP_DELETE:
		group_free(g);
		memmove(g, g + 1, (t->ngroups - i - 1) * sizeof(*g));
		t->ngroups--;
		return 0;
	case META_CMD_GROUP_MOVE:
		rc = check_coordinator(s, c, &coord, res);
		if (rc < 0)
			return rc;
		g->coordinator = coord;
		res->value = coord;
		return 0;
	case META_CMD_GROUP_COMMIT_BY:
		if (c->node != g->coordinator)
			return refuse(res, -ESTALE, "%s: group %s: commit from node %u, which does "
			              "not coordinate it (node %u does)", t->name, c->name, c->node,
			              g->coordinator);
		/* fall through */
	case META_CMD_GROUP_COMMIT:
		for (uint32_t k = 0; k < c->noffsets; k++) {
			if (c->offsets[k].partition >= t->nparts)
				return refuse(res, -EINVAL, "%s: group %s: no partition %u", t->name,
				              c->name, c->offsets[k].partition);
			if (c->offsets[k].offset < 0)
				return refuse(res, -EINVAL, "%s: group %s: offset %" PRId64 " for "
				              "partition %u", t->name, c->name, c->offsets[k].offset,
				              c->offsets[k].partition);
		}
		for (uint32_t k = 0; k < c->noffsets; k++)
			g->offsets[c->offsets[k].partition] = c->offsets[k].offset;
		return 0;
	default:
		return -EINVAL;
	}
}

static int apply_alloc_pids(struct meta_state *s, const struct meta_cmd *c,
                            struct meta_result *res)
{
	if (c->count < 1 || c->count > META_MAX_PID_BLOCK)
		return refuse(res, -EINVAL, "producer id block of %u", c->count);
	if (s->next_producer_id > INT64_MAX - (int64_t)c->count)
		return refuse(res, -EOVERFLOW, "producer ids exhausted");
	res->value = s->next_producer_id;
	s->next_producer_id += c->count;
	return 0;
}

int meta_apply(struct meta_state *s, const struct meta_cmd *c, struct meta_result *res)
{
	struct meta_result scratch;
	struct meta_topic *t = NULL;
	if (!res)
		res = &scratch;
	res->value = 0;
	res->err[0] = 0;

	switch (c->type) {
	case META_CMD_TOPIC_DELETE:
	case META_CMD_TOPIC_CONFIG:
	case META_CMD_PFILE_ADD:
	case META_CMD_PFILE_REMOVE:
	case META_CMD_PFILE_RENAME:
	case META_CMD_LEADER:
	case META_CMD_ISR_SHRINK:
	case META_CMD_ISR_EXPAND:
	case META_CMD_GROUP_CREATE:
	case META_CMD_GROUP_DELETE:
	case META_CMD_GROUP_COMMIT:
	case META_CMD_GROUP_COMMIT_BY:
	case META_CMD_GROUP_MOVE:
		t = topic_find(s, c->topic_id);
		if (!t)
			return refuse(res, -ENOENT, "topic %" PRIu64 " does not exist", c->topic_id);
		break;
	default:
		break;
	}

	switch (c->type) {
	case META_CMD_NODE_REGISTER: return apply_node_register(s, c, res);
	case META_CMD_NODE_HEARTBEAT: return apply_node_heartbeat(s, c, res);
	case META_CMD_NODE_DOWN: return apply_node_down(s, c, res);
	case META_CMD_TOPIC_CREATE: return apply_topic_create(s, c, res);
	case META_CMD_TOPIC_DELETE: return apply_topic_delete(s, c, res);
	case META_CMD_TOPIC_CONFIG: return apply_topic_config(s, c, res);
	case META_CMD_PFILE_ADD: return apply_pfile_add(t, c, res);
	case META_CMD_PFILE_REMOVE: return apply_pfile_remove(t, c, res);
	case META_CMD_PFILE_RENAME: return apply_pfile_rename(t, c, res);
	case META_CMD_LEADER:
	case META_CMD_ISR_SHRINK:
	case META_CMD_ISR_EXPAND: return apply_partition(s, t, c, res);
	case META_CMD_GROUP_CREATE:
	case META_CMD_GROUP_DELETE:
	case META_CMD_GROUP_COMMIT:
	case META_CMD_GROUP_COMMIT_BY:
	case META_CMD_GROUP_MOVE: return apply_group(s, t, c, res);
	case META_CMD_ALLOC_PIDS: return apply_alloc_pids(s, c, res);
	case META_CMD_NTYPES: break;
	}
	return refuse(res, -EINVAL, "unknown command type %d", (int)c->type);
}

/* ---- snapshots -------------------------------------------------------------- */

size_t meta_snapshot_encode(const struct meta_state *s, void *buf, size_t size)
{
	struct wr w = { buf, size, 0 };
	put(&w, snap_magic, sizeof(snap_magic));
	put_u8(&w, META_SNAPSHOT_VERSION);
	put_u64(&w, s->next_topic_id);
	put_i64(&w, s->next_producer_id);
	put_u32(&w, s->nnodes);
	for (uint32_t i = 0; i < s->nnodes; i++) {
		const struct meta_node *n = &s->nodes[i];
		put_u16(&w, n->id);
		put_str(&w, n->address);
		put_u64(&w, n->hb_term);
		put_i64(&w, n->hb_ms);
		put_u8(&w, n->alive);
	}
	put_u32(&w, s->ntopics);
	for (uint32_t i = 0; i < s->ntopics; i++) {
		const struct meta_topic *t = &s->topics[i];
		put_u64(&w, t->id);
		put_str(&w, t->name);
		put_config(&w, &t->overrides);
		put_u32(&w, t->next_pfile_id);
		put_u32(&w, t->nparts);
		for (uint32_t p = 0; p < t->nparts; p++) {
			const struct meta_partition *mp = &t->parts[p];
			put_u16(&w, mp->leader);
			put_i32(&w, mp->leader_epoch);
			put_u8(&w, mp->nreplicas);
			for (unsigned k = 0; k < mp->nreplicas; k++)
				put_u16(&w, mp->replicas[k]);
			put_u8(&w, mp->nisr);
			for (unsigned k = 0; k < mp->nisr; k++)
				put_u16(&w, mp->isr[k]);
		}
		put_u32(&w, t->npfiles);
		for (uint32_t f = 0; f < t->npfiles; f++) {
			put_u32(&w, t->pfiles[f].id);
			put_str(&w, t->pfiles[f].name);
		}
		put_u32(&w, t->ngroups);
		for (uint32_t g = 0; g < t->ngroups; g++) {
			const struct meta_group *gp = &t->groups[g];
			put_str(&w, gp->name);
			put_u16(&w, gp->coordinator);
			put_u32(&w, gp->noffsets);
			for (uint32_t p = 0; p < gp->noffsets; p++)
				put_i64(&w, gp->offsets[p]);
		}
	}
	if (w.p && w.len + 4 <= w.size)
		put_u32(&w, ls_crc32c(0, w.p, w.len));
	else
		w.len += 4;
	return w.len;
}

/* Reads a count of items of at least min_bytes each, refusing counts the
 * remaining bytes cannot hold (so hostile counts never drive allocation). */
static uint32_t get_count(struct rd *r, uint32_t max, size_t min_bytes)
{
	uint32_t n = get_u32(r);
	if (n > max || (size_t)n > remaining(r) / min_bytes) {
		r->bad = true;
		return 0;
	}
	return n;
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* 1 if names[0..n) has a duplicate (sorts names). */
static bool has_duplicate(const char **names, uint32_t n)
{
	qsort(names, n, sizeof(*names), cmp_strp);
	for (uint32_t i = 1; i < n; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			return true;
	return false;
}

static bool partition_ok(const struct meta_state *s, const struct meta_partition *mp)
{
	if (mp->nreplicas < 1 || mp->nreplicas > META_MAX_REPLICAS ||
	    mp->nisr > mp->nreplicas || mp->leader_epoch < 0)
		return false;
	for (unsigned i = 0; i < mp->nreplicas; i++)
		if (!meta_node_find(s, mp->replicas[i]) ||
		    in_list(mp->replicas, i, mp->replicas[i]))
			return false;
	/* isr: a subset of replicas, in replica order. */
	unsigned k = 0;
	for (unsigned i = 0; i < mp->nreplicas && k < mp->nisr; i++)
		if (mp->replicas[i] == mp->isr[k])
			k++;
	if (k != mp->nisr)
		return false;
	if (mp->leader && !in_list(mp->isr, mp->nisr, mp->leader))
		return false;
	return mp->leader == 0 || mp->nisr >= 1;
}

static int decode_topic(struct rd *r, struct meta_state *s, struct meta_topic *t)
{
	struct topic_config raw;
	t->id = get_u64(r);
	get_str(r, t->name, REP_NAME_MAX);
	get_config(r, &raw);
	config_normalise(&raw, &t->overrides);
	t->next_pfile_id = get_u32(r);
	if (r->bad || !rep_name_valid(t->name) || t->id == 0 || t->id >= s->next_topic_id ||
	    (raw.set_mask & META_PINNED_KEYS) != META_PINNED_KEYS || t->next_pfile_id == 0)
		return REP_EPROTO;
	/* A partition takes at least 2 + 4 + 1 + 2 + 1 bytes. */
	t->nparts = get_count(r, META_MAX_PARTITIONS, 10);
	if (r->bad || t->nparts != t->overrides.partitions)
		return REP_EPROTO;
	t->parts = calloc(t->nparts, sizeof(*t->parts));
	if (!t->parts)
		return -ENOMEM;
	for (uint32_t p = 0; p < t->nparts; p++) {
		struct meta_partition *mp = &t->parts[p];
		mp->leader = get_u16(r);
		mp->leader_epoch = get_i32(r);
		uint8_t n = get_u8(r);
		if (n > META_MAX_REPLICAS)
			return REP_EPROTO;
		mp->nreplicas = n;
		for (unsigned k = 0; k < n; k++)
			mp->replicas[k] = get_u16(r);
		n = get_u8(r);
		if (n > META_MAX_REPLICAS)
			return REP_EPROTO;
		mp->nisr = n;
		for (unsigned k = 0; k < n; k++)
			mp->isr[k] = get_u16(r);
		if (r->bad || !partition_ok(s, mp))
			return REP_EPROTO;
	}
	/* A producer file takes at least 4 + 2 + 1 bytes. */
	uint32_t nf = get_count(r, META_MAX_PFILES, 7);
	if (r->bad)
		return REP_EPROTO;
	t->pfiles = calloc(nf ? nf : 1, sizeof(*t->pfiles));
	if (!t->pfiles)
		return -ENOMEM;
	for (uint32_t f = 0; f < nf; f++) {
		char name[REP_FILE_NAME_MAX + 1];
		uint32_t id = get_u32(r);
		get_str(r, name, REP_FILE_NAME_MAX);
		if (r->bad || !pfile_name_ok(name) || id >= t->next_pfile_id ||
		    (f > 0 && id <= t->pfiles[f - 1].id))
			return REP_EPROTO;
		t->pfiles[f].name = strdup(name);
		if (!t->pfiles[f].name)
			return -ENOMEM;
		t->pfiles[f].id = id;
		t->npfiles++;
	}
	const char **names = malloc((nf ? nf : 1) * sizeof(*names));
	if (!names)
		return -ENOMEM;
	for (uint32_t f = 0; f < nf; f++)
		names[f] = t->pfiles[f].name;
	bool dup = has_duplicate(names, nf);
	free(names);
	if (dup)
		return REP_EPROTO;
	/* A group takes at least 2 + 1 + 2 + 4 bytes. */
	uint32_t ng = get_count(r, META_MAX_GROUPS, 9);
	if (r->bad)
		return REP_EPROTO;
	t->groups = calloc(ng ? ng : 1, sizeof(*t->groups));
	if (!t->groups)
		return -ENOMEM;
	for (uint32_t g = 0; g < ng; g++) {
		struct meta_group *gp = &t->groups[g];
		get_str(r, gp->name, REP_NAME_MAX);
		gp->coordinator = get_u16(r);
		uint32_t no = get_count(r, META_MAX_PARTITIONS, 8);
		if (r->bad || !rep_name_valid(gp->name) || no != t->nparts ||
		    !meta_node_find(s, gp->coordinator) ||
		    (g > 0 && strcmp(t->groups[g - 1].name, gp->name) >= 0))
			return REP_EPROTO;
		gp->offsets = malloc((no ? no : 1) * sizeof(*gp->offsets));
		if (!gp->offsets)
			return -ENOMEM;
		t->ngroups++;
		gp->noffsets = no;
		for (uint32_t p = 0; p < no; p++) {
			gp->offsets[p] = get_i64(r);
			if (gp->offsets[p] < -1)
				return REP_EPROTO;
		}
	}
	return r->bad ? REP_EPROTO : 0;
}

int meta_snapshot_decode(const void *buf, size_t len, struct meta_state *out)
{
	struct meta_state s;
	struct rd r = { buf, len, 0, false };
	int rc = REP_EPROTO;

	meta_state_init(&s);
	meta_state_init(out);
	if (len < sizeof(snap_magic) + 1 + 4 || memcmp(buf, snap_magic, sizeof(snap_magic)))
		return REP_EPROTO;
	uint32_t crc = (uint32_t)r.p[len - 4] | (uint32_t)r.p[len - 3] << 8 |
	               (uint32_t)r.p[len - 2] << 16 | (uint32_t)r.p[len - 1] << 24;
	if (ls_crc32c(0, buf, len - 4) != crc)
		return REP_EPROTO;
	r.len = len - 4;
	take(&r, sizeof(snap_magic));
	uint8_t version = get_u8(&r);
	if (version != META_SNAPSHOT_VERSION)
		return version > META_SNAPSHOT_VERSION ? -EPROTONOSUPPORT : REP_EPROTO;
	s.next_topic_id = get_u64(&r);
	s.next_producer_id = get_i64(&r);
	if (s.next_topic_id < 1 || s.next_producer_id < 1)
		goto out;

	/* A node takes at least 2 + 2 + 1 + 8 + 8 + 1 bytes. */
	uint32_t nn = get_count(&r, META_MAX_NODES, 22);
	if (r.bad)
		goto out;
	s.nodes = calloc(nn ? nn : 1, sizeof(*s.nodes));
	if (!s.nodes) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < nn; i++) {
		struct meta_node *n = &s.nodes[i];
		n->id = get_u16(&r);
		get_str(&r, n->address, META_ADDR_MAX - 1);
		n->hb_term = get_u64(&r);
		n->hb_ms = get_i64(&r);
		n->alive = get_u8(&r);
		if (r.bad || n->id == 0 || (i > 0 && n->id <= s.nodes[i - 1].id) ||
		    !address_ok(n->address) || n->alive > 1)
			goto out;
		for (uint32_t j = 0; j < i; j++)
			if (strcmp(s.nodes[j].address, n->address) == 0)
				goto out;
		s.nnodes++;
	}

	/* A topic takes at least 8 + 3 + CONFIG_BYTES + 4 * 4 bytes. */
	uint32_t nt = get_count(&r, META_MAX_TOPICS, 27 + CONFIG_BYTES);
	if (r.bad)
		goto out;
	s.topics = calloc(nt ? nt : 1, sizeof(*s.topics));
	if (!s.topics) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < nt; i++) {
		s.ntopics++;   /* counted first so a failure frees what it holds */
		rc = decode_topic(&r, &s, &s.topics[i]);
		if (rc < 0)
			goto out;
		rc = REP_EPROTO;
		if (i > 0 && s.topics[i].id <= s.topics[i - 1].id)
			goto out;
	}
	const char **names = malloc((nt ? nt : 1) * sizeof(*names));
	if (!names) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < nt; i++)
		names[i] = s.topics[i].name;
	bool dup = has_duplicate(names, nt);
	free(names);
	if (dup || r.bad || r.off != r.len)
		goto out;
	*out = s;
	return 0;

out:
	meta_state_free(&s);
	return rc;
}
