/*
 * tree.c - inode numbers to objects and back, attributes, and the text of
 * the generated files. See tree.h for the inode layout.
 */
#define FUSE_USE_VERSION 312
#include "tree.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

struct tfs tfs;

#define VIRTUAL_GROUP 0x800000u
#define KIND_SHIFT 24
#define KIND_MASK 0xffu
#define INDEX_MASK 0xffffffu

uint64_t tnode_ino(uint64_t topic_id, enum tnode_kind kind, uint32_t index)
{
	return (topic_id << 32) | ((uint64_t)kind << KIND_SHIFT) | (index & INDEX_MASK);
}

int tnode_is_dir(enum tnode_kind kind)
{
	return kind == TN_ROOT || kind == TN_CLUSTER || kind == TN_TOPIC || kind == TN_GROUPS ||
	       kind == TN_PART_DIR || kind == TN_GROUP_DIR;
}

/* Names of groups looked up before they existed: (topic id, name) -> id. */
struct vgroup {
	uint64_t topic_id;
	uint32_t id;
	char name[REP_NAME_MAX + 1];
};
static pthread_mutex_t vgroups_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vgroup *vgroups;
static size_t nvgroups;

static int vgroup_id(uint64_t topic_id, const char *name, uint32_t *id)
{
	int rc = 0;
	pthread_mutex_lock(&vgroups_lock);
	size_t i;
	for (i = 0; i < nvgroups; i++)
		if (vgroups[i].topic_id == topic_id && strcmp(vgroups[i].name, name) == 0)
			break;
	if (i == nvgroups) {
		struct vgroup *v = nvgroups < (INDEX_MASK & ~VIRTUAL_GROUP)
		                       ? realloc(vgroups, (nvgroups + 1) * sizeof(*v))
		                       : NULL;
		if (!v) {
			rc = -ENOMEM;
			goto out;
		}
		vgroups = v;
		v[i].topic_id = topic_id;
		v[i].id = VIRTUAL_GROUP | (uint32_t)i;
		snprintf(v[i].name, sizeof(v[i].name), "%s", name);
		nvgroups++;
	}
	*id = vgroups[i].id;
out:
	pthread_mutex_unlock(&vgroups_lock);
	return rc;
}

static int vgroup_name(uint64_t topic_id, uint32_t id, char *buf, size_t size)
{
	int rc = -ENOENT;
	pthread_mutex_lock(&vgroups_lock);
	size_t i = id & ~VIRTUAL_GROUP;
	if (i < nvgroups && vgroups[i].topic_id == topic_id) {
		snprintf(buf, size, "%s", vgroups[i].name);
		rc = 0;
	}
	pthread_mutex_unlock(&vgroups_lock);
	return rc;
}

void tnode_release(struct tnode *n)
{
	if (n->group)
		rep_group_put(n->group);
	n->group = NULL;
	if (n->topic)
		rep_topic_put(n->topic);
	n->topic = NULL;
	n->part = NULL;
}

/* Completes n (kind, topic ref, index already set): checks the object exists. */
static int tnode_fill(struct tnode *n)
{
	n->ino = tnode_ino(rep_topic_id(n->topic), n->kind, n->index);
	switch (n->kind) {
	case TN_TOPIC:
	case TN_CONFIG:
	case TN_GROUPS:
		return n->index == 0 ? 0 : -ENOENT;
	case TN_PART_DIR:
	case TN_PART_LOG:
	case TN_PART_STATE:
		n->part = rep_topic_partition(n->topic, n->index);
		return n->part ? 0 : -ENOENT;
	case TN_PFILE: {
		char name[REP_FILE_NAME_MAX + 1];
		return rep_pfile_name(n->topic, n->index, name, sizeof(name));
	}
	case TN_GROUP_DIR:
	case TN_CURSOR:
	case TN_PENDING:
	case TN_OFFSETS:
		if (n->index & VIRTUAL_GROUP) {
			if (vgroup_name(rep_topic_id(n->topic), n->index, n->gname,
			                sizeof(n->gname)) < 0)
				return -ENOENT;
			if (rep_group_get(n->topic, n->gname, 0, &n->group) < 0)
				n->group = NULL; /* not made yet */
			return 0;
		}
		n->group = rep_group_get_id(n->topic, n->index);
		if (!n->group)
			return -ENOENT;
		snprintf(n->gname, sizeof(n->gname), "%s", rep_group_name(n->group));
		return 0;
	default:
		return -ENOENT;
	}
}

int tnode_group_create(struct tnode *n)
{
	if (n->group)
		return 0;
	return rep_group_get(n->topic, n->gname, 1, &n->group);
}

int tnode_resolve(uint64_t ino, struct tnode *n)
{
	memset(n, 0, sizeof(*n));
	n->ino = ino;
	switch (ino) {
	case INO_ROOT: n->kind = TN_ROOT; return 0;
	case INO_CLUSTER: n->kind = TN_CLUSTER; return 0;
	case INO_NODES: n->kind = TN_NODES; return 0;
	case INO_METRICS: n->kind = TN_METRICS; return 0;
	}
	uint64_t topic_id = ino >> 32;
	unsigned kind = (ino >> KIND_SHIFT) & KIND_MASK;
	if (!topic_id || kind < TN_TOPIC || kind > TN_OFFSETS)
		return -ENOENT;
	n->topic = rep_topic_get_id(tfs.rep, topic_id);
	if (!n->topic)
		return -ESTALE; /* deleted (on any mount): the kernel walks the path
		                 * again, revalidating, and finds what the name is now */
	n->kind = kind;
	n->index = ino & INDEX_MASK;
	int rc = tnode_fill(n);
	if (rc < 0)
		tnode_release(n);
	/* a producer file or group removed meanwhile: as for a topic */
	return rc == -ENOENT ? -ESTALE : rc;
}

static int parse_partition(const char *name, uint32_t *p)
{
	if (!*name || strlen(name) > 7)
		return -1;
	for (const char *c = name; *c; c++)
		if (*c < '0' || *c > '9')
			return -1;
	if (name[0] == '0' && name[1])
		return -1; /* "01" is not partition 1 */
	*p = (uint32_t)strtoul(name, NULL, 10);
	return 0;
}

int tnode_lookup(const struct tnode *parent, const char *name, struct tnode *c)
{
	return tnode_lookup_ex(parent, name, 0, c);
}

int tnode_is_virtual(const struct tnode *n)
{
	return n->kind >= TN_GROUP_DIR && n->kind <= TN_OFFSETS && !n->group;
}

int tnode_lookup_ex(const struct tnode *parent, const char *name, int allow_virtual,
                    struct tnode *c)
{
	memset(c, 0, sizeof(*c));
	switch (parent->kind) {
	case TN_ROOT:
		if (strcmp(name, ".cluster") == 0) {
			c->kind = TN_CLUSTER;
			c->ino = INO_CLUSTER;
			return 0;
		}
		c->topic = rep_topic_get(tfs.rep, name);
		if (!c->topic)
			return -ENOENT;
		c->kind = TN_TOPIC;
		break;
	case TN_CLUSTER:
		if (strcmp(name, "nodes") == 0) {
			c->kind = TN_NODES;
			c->ino = INO_NODES;
			return 0;
		}
		if (strcmp(name, "metrics") == 0) {
			c->kind = TN_METRICS;
			c->ino = INO_METRICS;
			return 0;
		}
		return -ENOENT;
	case TN_TOPIC: {
		uint32_t p;
		if (strcmp(name, ".config") == 0)
			c->kind = TN_CONFIG;
		else if (strcmp(name, "groups") == 0)
			c->kind = TN_GROUPS;
		else if (parse_partition(name, &p) == 0) {
			c->kind = TN_PART_DIR;
			c->index = p;
		} else {
			if (rep_pfile_lookup(parent->topic, name, &c->index) < 0)
				return -ENOENT;
			c->kind = TN_PFILE;
		}
		c->topic = rep_topic_hold(parent->topic);
		break;
	}
	case TN_GROUPS: {
		struct rep_group *g;
		if (!rep_name_valid(name))
			return -EINVAL; /* INTERFACE.md section 2: no group has it */
		if (rep_group_get(parent->topic, name, 0, &g) == 0) {
			c->index = rep_group_id(g);
			rep_group_put(g);
		} else if (!allow_virtual ||
		           vgroup_id(rep_topic_id(parent->topic), name, &c->index) < 0) {
			return -ENOENT;
		}
		c->kind = TN_GROUP_DIR;
		c->topic = rep_topic_hold(parent->topic);
		break;
	}
	case TN_GROUP_DIR:
		if (strcmp(name, "cursor") == 0)
			c->kind = TN_CURSOR;
		else if (strcmp(name, "pending") == 0)
			c->kind = TN_PENDING;
		else if (strcmp(name, "offsets") == 0)
			c->kind = TN_OFFSETS;
		else
			return -ENOENT;
		c->topic = rep_topic_hold(parent->topic);
		c->index = parent->index;
		break;
	case TN_PART_DIR:
		if (strcmp(name, "log") == 0)
			c->kind = TN_PART_LOG;
		else if (strcmp(name, "state") == 0)
			c->kind = TN_PART_STATE;
		else
			return -ENOENT;
		c->topic = rep_topic_hold(parent->topic);
		c->index = parent->index;
		break;
	default:
		return -ENOENT;
	}
	int rc = tnode_fill(c);
	if (rc < 0)
		tnode_release(c);
	return rc;
}

void tnode_path(const struct tnode *n, char *buf, size_t size)
{
	char name[REP_FILE_NAME_MAX + 1];
	const char *t = n->topic ? rep_topic_name(n->topic) : "";
	switch (n->kind) {
	case TN_ROOT: snprintf(buf, size, "/"); break;
	case TN_CLUSTER: snprintf(buf, size, ".cluster"); break;
	case TN_NODES: snprintf(buf, size, ".cluster/nodes"); break;
	case TN_METRICS: snprintf(buf, size, ".cluster/metrics"); break;
	case TN_TOPIC: snprintf(buf, size, "%s", t); break;
	case TN_CONFIG: snprintf(buf, size, "%s/.config", t); break;
	case TN_GROUPS: snprintf(buf, size, "%s/groups", t); break;
	case TN_PART_DIR: snprintf(buf, size, "%s/%u", t, n->index); break;
	case TN_PART_LOG: snprintf(buf, size, "%s/%u/log", t, n->index); break;
	case TN_PART_STATE: snprintf(buf, size, "%s/%u/state", t, n->index); break;
	case TN_GROUP_DIR: snprintf(buf, size, "%s/groups/%s", t, n->gname); break;
	case TN_CURSOR: snprintf(buf, size, "%s/groups/%s/cursor", t, n->gname); break;
	case TN_PENDING: snprintf(buf, size, "%s/groups/%s/pending", t, n->gname); break;
	case TN_OFFSETS: snprintf(buf, size, "%s/groups/%s/offsets", t, n->gname); break;
	case TN_PFILE:
		if (rep_pfile_name(n->topic, n->index, name, sizeof(name)) < 0)
			snprintf(name, sizeof(name), "#%u", n->index);
		snprintf(buf, size, "%s/%s", t, name);
		break;
	}
}

/* ---- generated text ------------------------------------------------------ */

struct metrics_ctx {
	struct metrics_partition_row *rows;
	size_t n, cap;
	int oom;
};

static int metrics_collect(void *arg, struct rep_topic *t)
{
	struct metrics_ctx *m = arg;
	uint32_t np = rep_topic_partition_count(t);
	for (uint32_t p = 0; p < np; p++) {
		struct rep_partition *rp = rep_topic_partition(t, p);
		if (!rp)
			continue;
		if (m->n == m->cap) {
			size_t c = m->cap ? m->cap * 2 : 64;
			struct metrics_partition_row *r = realloc(m->rows, c * sizeof(*r));
			if (!r) {
				m->oom = 1;
				return 1;
			}
			m->rows = r;
			m->cap = c;
		}
		struct metrics_partition_row *row = &m->rows[m->n++];
		struct rep_counters *c = rep_partition_counters(rp);
		struct rep_partition_state st;
		rep_partition_state(rp, &st);
		const struct ls_partition_info info = st.log;
		row->topic = strdup(rep_topic_name(t));
		row->partition = p;
		row->m.records_in = __atomic_load_n(&c->records_in, __ATOMIC_RELAXED);
		row->m.bytes_in = __atomic_load_n(&c->bytes_in, __ATOMIC_RELAXED);
		row->m.records_out = __atomic_load_n(&c->records_out, __ATOMIC_RELAXED);
		row->m.bytes_out = __atomic_load_n(&c->bytes_out, __ATOMIC_RELAXED);
		row->segments = info.segments;
		row->log_bytes = info.bytes;
		row->start_offset = info.start_offset;
		row->end_offset = info.end_offset;
		row->high_watermark = info.high_watermark;
		row->leader = st.leader;
		row->replicas = st.nreplicas;
		row->in_sync = st.nisr;
		if (!row->topic) {
			m->n--;
			m->oom = 1;
			return 1;
		}
	}
	return 0;
}

struct lag_ctx {
	struct mbuf *b;
	int committed; /* 1: the committed family, 0: the lag family */
};

static void put_labels(struct mbuf *b, const char *topic, const char *group, uint32_t p)
{
	/* Topic and group names are [A-Za-z0-9._-]: nothing to escape. */
	mbuf_printf(b, "{topic=\"%s\",group=\"%s\",partition=\"%u\"}", topic, group, p);
}

static void lag_row(void *arg, const char *topic, const char *group, uint32_t p,
                    int64_t committed, int64_t lag)
{
	struct lag_ctx *l = arg;
	mbuf_printf(l->b, "%s", l->committed ? "topicfs_group_committed_offset" : "topicfs_group_lag");
	put_labels(l->b, topic, group, p);
	mbuf_printf(l->b, " %" PRId64 "\n", l->committed ? committed : lag);
}

static void render_group_metrics(struct mbuf *b)
{
	struct lag_ctx l = {b, 0};
	mbuf_printf(b, "# HELP topicfs_group_lag Records not yet consumed by the group, per partition.\n"
	               "# TYPE topicfs_group_lag gauge\n");
	rep_groups_foreach_lag(tfs.rep, lag_row, &l);
	l.committed = 1;
	mbuf_printf(b, "# HELP topicfs_group_committed_offset Next offset the group reads, per partition.\n"
	               "# TYPE topicfs_group_committed_offset gauge\n");
	rep_groups_foreach_lag(tfs.rep, lag_row, &l);
}

static void render_metrics(struct mbuf *b)
{
	struct metrics_ctx m = {0};
	metrics_render_requests(b);
	rep_topic_foreach(tfs.rep, metrics_collect, &m);
	metrics_render_partitions(b, m.rows, m.n);
	render_group_metrics(b);
	for (size_t i = 0; i < m.n; i++)
		free((char *)m.rows[i].topic);
	free(m.rows);
	if (m.oom)
		b->oom = 1;
}

static void render_ids(struct mbuf *b, const char *key, const uint16_t *ids, uint32_t n)
{
	mbuf_printf(b, "%s: [", key);
	for (uint32_t i = 0; i < n; i++)
		mbuf_printf(b, "%s%u", i ? ", " : "", ids[i]);
	mbuf_printf(b, "]\n");
}

void tnode_render(const struct tnode *n, const char *config_error, struct mbuf *b)
{
	switch (n->kind) {
	case TN_NODES: {
		struct rep_node_info nodes[64];
		size_t k = rep_nodes(tfs.rep, nodes, 64);
		for (size_t i = 0; i < k; i++)
			mbuf_printf(b, "%u\t%s\t%s\t%s\n", nodes[i].id, nodes[i].address,
			            nodes[i].state, nodes[i].role);
		break;
	}
	case TN_METRICS:
		render_metrics(b);
		break;
	case TN_CONFIG: {
		struct topic_config eff;
		rep_topic_config(n->topic, &eff);
		char err[512] = "";
		if (config_error)
			snprintf(err, sizeof(err), "%s", config_error);
		else
			tree_get_config_error(rep_topic_id(n->topic), err, sizeof(err));
		char buf[4096];
		size_t len = topic_config_render(&eff, err, buf, sizeof(buf));
		mbuf_printf(b, "%.*s", (int)(len < sizeof(buf) ? len : sizeof(buf) - 1), buf);
		break;
	}
	case TN_OFFSETS: {
		if (!n->group)
			break;
		uint32_t np = rep_topic_partition_count(n->topic);
		struct rep_group_offset *rows = calloc(np ? np : 1, sizeof(*rows));
		if (!rows) {
			b->oom = 1;
			break;
		}
		size_t k = rep_group_offsets(n->group, rows, np);
		for (size_t i = 0; i < k; i++)
			mbuf_printf(b, "%u\t%" PRId64 "\t%" PRId64 "\t%" PRId64 "\n", rows[i].partition,
			            rows[i].committed, rows[i].end, rows[i].lag);
		free(rows);
		break;
	}
	case TN_PART_STATE: {
		struct rep_partition_state st;
		rep_partition_state(n->part, &st);
		mbuf_printf(b, "leader: %u\n", st.leader);
		render_ids(b, "replicas", st.replicas, st.nreplicas);
		render_ids(b, "isr", st.isr, st.nisr);
		mbuf_printf(b,
		            "leader_epoch: %d\nstart_offset: %" PRId64 "\nend_offset: %" PRId64
		            "\nhigh_watermark: %" PRId64 "\nbytes: %" PRIu64
		            "\nsegments: %u\nlog_size: %" PRIu64 "\nread_only: %s\n",
		            st.leader_epoch, st.log.start_offset, st.log.end_offset,
		            st.log.high_watermark, st.log.bytes, st.log.segments, st.log.hw_pos,
		            st.log.sticky_error ? "true" : "false");
		break;
	}
	default:
		break;
	}
}

/* ---- attributes ---------------------------------------------------------- */

static size_t rendered_size(const struct tnode *n)
{
	struct mbuf b = {0};
	tnode_render(n, NULL, &b);
	size_t len = b.len;
	mbuf_free(&b);
	return len;
}

int tnode_stat(const struct tnode *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_uid = tfs.uid;
	st->st_gid = tfs.gid;
	st->st_blksize = 4096;
	st->st_atim = st->st_mtim = st->st_ctim = tfs.start_time;
	if (tnode_is_dir(n->kind)) {
		st->st_mode = S_IFDIR | (n->kind == TN_CLUSTER ? 0555 : 0755);
		st->st_nlink = 2;
		return 0;
	}
	st->st_nlink = 1;
	switch (n->kind) {
	case TN_NODES:
	case TN_METRICS:
	case TN_PART_STATE:
		st->st_mode = S_IFREG | 0444;
		st->st_size = (off_t)rendered_size(n);
		break;
	case TN_CURSOR:
	case TN_PENDING:
		st->st_mode = S_IFREG | 0444;
		st->st_size = 0;
		break;
	case TN_OFFSETS:
		st->st_mode = S_IFREG | 0644;
		st->st_size = (off_t)rendered_size(n);
		break;
	case TN_CONFIG:
		st->st_mode = S_IFREG | 0644;
		st->st_size = (off_t)rendered_size(n);
		break;
	case TN_PART_LOG: {
		struct ls_partition_info info;
		ls_partition_get_info(rep_partition_log(n->part), &info);
		st->st_mode = S_IFREG | 0644;
		st->st_size = (off_t)info.hw_pos;
		st->st_blocks = (blkcnt_t)((info.bytes + 511) / 512);
		st->st_blksize = 1 << 20; /* cat and cp then write 1 MiB per request */
		if (info.last_append_ms) {
			st->st_mtim.tv_sec = info.last_append_ms / 1000;
			st->st_mtim.tv_nsec = (info.last_append_ms % 1000) * 1000000;
			st->st_ctim = st->st_mtim;
		}
		break;
	}
	case TN_PFILE: {
		struct rep_pfile_attr a;
		if (rep_pfile_get_attr(n->topic, n->index, &a) < 0)
			return -ENOENT;
		st->st_mode = S_IFREG | (a.mode & 07777);
		st->st_uid = a.uid;
		st->st_gid = a.gid;
		st->st_size = 0;
		st->st_blksize = 1 << 20;
		break;
	}
	default:
		return -ENOENT;
	}
	return 0;
}

/* ---- .config errors ------------------------------------------------------ */

struct config_error {
	uint64_t topic_id;
	char msg[512];
};
static pthread_mutex_t errors_lock = PTHREAD_MUTEX_INITIALIZER;
static struct config_error *errors;
static size_t nerrors;

void tree_set_config_error(uint64_t topic_id, const char *msg)
{
	pthread_mutex_lock(&errors_lock);
	size_t i;
	for (i = 0; i < nerrors; i++)
		if (errors[i].topic_id == topic_id)
			break;
	if (!msg || !*msg) {
		if (i < nerrors)
			errors[i] = errors[--nerrors];
	} else {
		if (i == nerrors) {
			struct config_error *e = realloc(errors, (nerrors + 1) * sizeof(*e));
			if (!e) {
				pthread_mutex_unlock(&errors_lock);
				return;
			}
			errors = e;
			nerrors++;
			errors[i].topic_id = topic_id;
		}
		snprintf(errors[i].msg, sizeof(errors[i].msg), "%s", msg);
	}
	pthread_mutex_unlock(&errors_lock);
}

void tree_get_config_error(uint64_t topic_id, char *buf, size_t size)
{
	buf[0] = 0;
	pthread_mutex_lock(&errors_lock);
	for (size_t i = 0; i < nerrors; i++)
		if (errors[i].topic_id == topic_id)
			snprintf(buf, size, "%s", errors[i].msg);
	pthread_mutex_unlock(&errors_lock);
}
