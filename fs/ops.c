/*
 * ops.c - the FUSE low-level handlers: every request on the mount lands here.
 *
 * Discipline (STYLE.md 9): every handler replies exactly once; a refused
 * operation replies a specific errno and logs one line saying what and why;
 * nothing here waits on the network (the single-node backend answers from
 * local storage; the cluster backend will hand slow work to its event loop).
 *
 * Open files (struct fh, one per open, in fi->fh):
 *
 *   object            read                          write
 *   <p>/log           the view, from a ls_reader     produce to p (struct producer)
 *   producer file     always empty                  produce via the partitioner
 *   .config           text at open                  YAML, applied per complete write
 *   state, nodes,     text at open                  refused (EACCES)
 *   metrics
 *   cursor, pending   consume as a group member     refused (EACCES)
 *                     (struct cursor, cursor.c)
 *   offsets           text at open                  earliest|latest|<p> <offset>|@<time>
 *   directories       listing taken at opendir      -
 *
 * Reading <p>/log: byte positions are stable, but retention removes a prefix
 * and compaction leaves holes. A read at a position with no record starts at
 * the next record; the handle remembers the shift (expect_off -> map_pos) so
 * the sequential reads that follow continue from there instead of mapping
 * into the gap again. So `cat` after retention prints from the oldest
 * retained record, never NUL bytes and never an error.
 *
 * Every file is opened with direct_io: the kernel neither caches nor merges
 * writes (writeback caching re-sends partial pages and would duplicate
 * records), every write() is one WRITE request and so one batch.
 */
#define FUSE_USE_VERSION 312
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../logstore/log.h"
#include "config.h"
#include "cursor.h"
#include "metrics.h"
#include "procfs.h"
#include "produce.h"
#include "tree.h"

#define DIR_TIMEOUT 1.0  /* directories change only through this mount */
#define FILE_TIMEOUT 0.0 /* sizes and contents of files move all the time */

struct dirent_rec {
	char *name;
	uint64_t ino;
	mode_t mode;
};

struct fh {
	struct tnode node;
	pthread_mutex_t lock;
	int readable, writable;

	/* <p>/log reads */
	struct ls_reader *reader;
	uint64_t expect_off, map_pos;
	char *rbuf;
	size_t rcap;

	/* produce */
	struct producer prod;
	int producing;
	int produced;         /* a write was taken (see compressed_magic) */
	int listed;           /* in the open producer files (opf_add) */

	/* generated text, taken at open */
	struct mbuf text;

	/* the task that wrote last (producing, .config, offsets): see op_flush */
	pid_t writer;

	/* .config writes */
	struct mbuf cfgw;
	size_t cfg_applied;   /* bytes of cfgw applied already */
	int cfg_refused;      /* the document was refused: never apply it */

	/* cursor and pending */
	struct cursor *cursor;
	int watching;         /* counted in rep_watch() */

	/* directories */
	struct dirent_rec *ents;
	size_t nents;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- open producer files ----------------------------------------------------
 *
 * A producer file's inode stops resolving once its name is removed or
 * renamed over, but a process holding it open may still fstat, fchmod or
 * ftruncate it (POSIX: an open, unlinked file). The kernel sends no file
 * handle with those, only the inode: so every open producer file is listed
 * here with its attributes at open, and an inode that no longer resolves
 * answers from this list (st_nlink 0) while it is open. */
struct open_pfile {
	uint64_t ino;
	unsigned refs;
	struct stat st;
};

static struct {
	pthread_mutex_t mu;
	struct open_pfile *v;
	size_t n, cap;
} opf = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void opf_add(const struct tnode *n)
{
	struct stat st;
	if (n->kind != TN_PFILE || tnode_stat(n, &st) < 0)
		return;
	pthread_mutex_lock(&opf.mu);
	size_t i = 0;
	while (i < opf.n && opf.v[i].ino != n->ino)
		i++;
	if (i < opf.n) {
		opf.v[i].refs++;
	} else {
		if (opf.n == opf.cap) {
			struct open_pfile *v = reallocarray(opf.v, opf.cap * 2 + 8, sizeof(*v));
			if (v) {
				opf.v = v;
				opf.cap = opf.cap * 2 + 8;
			}
		}
		if (opf.n < opf.cap) /* else (no memory): fstat after unlink is ESTALE */
			opf.v[opf.n++] = (struct open_pfile){.ino = n->ino, .refs = 1, .st = st};
	}
	pthread_mutex_unlock(&opf.mu);
}

static void opf_drop(const struct tnode *n)
{
	if (n->kind != TN_PFILE)
		return;
	pthread_mutex_lock(&opf.mu);
	for (size_t i = 0; i < opf.n; i++) {
		if (opf.v[i].ino == n->ino) {
			if (--opf.v[i].refs == 0)
				opf.v[i] = opf.v[--opf.n];
			break;
		}
	}
	pthread_mutex_unlock(&opf.mu);
}

/* The attributes of an open producer file that lost its name; 0 or -1.
 * With set, mode, uid and gid change first (fchmod, fchown). */
static int opf_stat(uint64_t ino, struct stat *st, const struct stat *set, int to_set)
{
	int rc = -1;
	pthread_mutex_lock(&opf.mu);
	for (size_t i = 0; i < opf.n; i++) {
		if (opf.v[i].ino != ino)
			continue;
		struct stat *o = &opf.v[i].st;
		if (set && (to_set & FUSE_SET_ATTR_MODE))
			o->st_mode = (o->st_mode & S_IFMT) | (set->st_mode & 07777);
		if (set && (to_set & FUSE_SET_ATTR_UID))
			o->st_uid = set->st_uid;
		if (set && (to_set & FUSE_SET_ATTR_GID))
			o->st_gid = set->st_gid;
		*st = *o;
		st->st_nlink = 0;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&opf.mu);
	return rc;
}

static struct fh *get_fh(struct fuse_file_info *fi)
{
	return (struct fh *)(uintptr_t)fi->fh;
}

/* Why code rc refused an operation, for its one log line: what the lower
 * layer that refused it left (tfs_reason: the quorum's or the replica's
 * words), else rc's text. Valid until the next call on this thread. */
static const char *why_of(int rc)
{
	static __thread char buf[512];
	return tfs_reason_take(tfs_errno(rc), buf, sizeof(buf)) ? buf : tfs_strerror(rc);
}

/* Replies err and writes the one log line of a refused operation. */
static void __attribute__((format(printf, 4, 5)))
refuse(fuse_req_t req, int err, enum metrics_op op, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(void)tfs_reason_take(0, NULL, 0); /* said in msg (why_of) or not: gone */
	tfs_warn("refused: %s (%s)", msg, strerror(err));
	metrics_request(op, 0, err);
	fuse_reply_err(req, err);
}

static void fill_entry(const struct tnode *n, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = n->ino;
	e->generation = 1;
	tnode_stat(n, &e->attr);
	e->attr_timeout = tnode_is_dir(n->kind) ? DIR_TIMEOUT : FILE_TIMEOUT;
	e->entry_timeout = DIR_TIMEOUT;
}

/* ---- names ---------------------------------------------------------------- */

/* Names that rotation tools give compressed files (compared ignoring case). */
static const char *const compressed_suffixes[] = {
	".gz", ".gzip", ".tgz", ".z", ".bz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz", ".zst", ".zstd",
	".lz4", ".lzma", ".lz", ".lzo", ".zip", ".br", ".7z", ".sz", ".zz", ".rar"};

/* The compressed format buf starts with, or NULL: what a rotation tool
 * writes into a file named with another compressext (a log line never
 * starts with these bytes). */
static const char *compressed_magic(const char *buf, size_t len)
{
	static const struct {
		const char *name;
		const char *magic;
		size_t len;
	} m[] = {
		{"gzip", "\x1f\x8b\x08", 3},
		{"bzip2", "BZh?1AY&SY", 10}, /* ? is the block size digit */
		{"xz", "\xfd" "7zXZ\x00", 6},
		{"zstd", "\x28\xb5\x2f\xfd", 4},
		{"lz4", "\x04\x22\x4d\x18", 4},
		{"lzop", "\x89LZO\x00\x0d\x0a\x1a\x0a", 9},
		{"7z", "7z\xbc\xaf\x27\x1c", 6},
		{"zip", "PK\x03\x04", 4},
		{"compress", "\x1f\x9d", 2},
	};
	for (size_t i = 0; i < sizeof(m) / sizeof(*m); i++) {
		if (len < m[i].len)
			continue;
		size_t k = 0;
		while (k < m[i].len && (buf[k] == m[i].magic[k] ||
		                        (m[i].magic[k] == '?' && buf[k] >= '1' && buf[k] <= '9')))
			k++;
		if (k == m[i].len)
			return m[i].name;
	}
	return NULL;
}

/* Why a producer file may not have this name, or NULL if it may. */
static const char *pfile_name_problem(const char *name, int *err)
{
	size_t n = strlen(name);
	*err = EINVAL;
	if (n > REP_FILE_NAME_MAX)
		return "name longer than 255 bytes";
	if (strcmp(name, ".config") == 0 || strcmp(name, "groups") == 0)
		return "name reserved for the topic's control files";
	if (strspn(name, "0123456789") == n)
		return "all-digit names are reserved for partition directories";
	for (size_t i = 0; i < sizeof(compressed_suffixes) / sizeof(*compressed_suffixes); i++) {
		size_t s = strlen(compressed_suffixes[i]);
		if (n > s && strcasecmp(name + n - s, compressed_suffixes[i]) == 0) {
			*err = EPERM;
			return "compressed files cannot be produced as lines "
			       "(log rotation: compress outside the topic directory)";
		}
	}
	return NULL;
}

/* ---- lookup and attributes -------------------------------------------------- */

/* The system call the requesting task is in (/proc/<tid>/syscall, first
 * field), or -1. */
static long requester_syscall(fuse_req_t req)
{
	char buf[64];
	if (proc_read(fuse_req_ctx(req)->pid, "syscall", buf, sizeof(buf)) < 0)
		return -1;
	return strtol(buf, NULL, 10);
}

/* 1 if the task behind req is inside open()/openat()/openat2()/creat(). */
static int requester_is_opening(fuse_req_t req)
{
	long nr = requester_syscall(req);
	return nr == SYS_openat
#ifdef SYS_open
	       || nr == SYS_open
#endif
#ifdef SYS_creat
	       || nr == SYS_creat
#endif
#ifdef SYS_openat2
	       || nr == SYS_openat2
#endif
		;
}

static int requester_is_mkdir(fuse_req_t req)
{
	long nr = requester_syscall(req);
	return nr == SYS_mkdirat
#ifdef SYS_mkdir
	       || nr == SYS_mkdir
#endif
		;
}

/* Resolves ino and renders its path for log lines; on failure holds nothing. */
static int resolve_path(fuse_ino_t ino, struct tnode *n, char *path, size_t size)
{
	int rc = tnode_resolve(ino, n);
	if (rc == 0)
		tnode_path(n, path, size);
	return rc;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	uint64_t t0 = now_ns();
	struct tnode p, c;
	int rc = tnode_resolve(parent, &p);
	int mkdir = rc == 0 && p.kind == TN_ROOT && requester_is_mkdir(req);
	if (mkdir)
		rep_sync(tfs.rep); /* a cluster: a topic removed on another mount a
		                    * moment ago must not make this mkdir EEXIST */
	if (rc == 0) {
		int virt = p.kind == TN_GROUPS && requester_is_opening(req);
		rc = tnode_lookup_ex(&p, name, virt, &c);
		/* the kernel refuses that mkdir itself (EEXIST) on this answer:
		 * its log line (info: mkdir -p meets it every time) */
		if (rc == 0 && mkdir)
			tfs_info("refused: mkdir %s: topic exists (%s)", name, strerror(EEXIST));
		if (rc == -EINVAL)
			tfs_warn("refused: %s/groups/%s: not a group name ([A-Za-z0-9._-], "
			         "1-249 bytes, not starting with '.') (%s)", rep_topic_name(p.topic),
			         name, strerror(EINVAL));
		/* a node started without a quorum does not know its topics yet:
		 * "no such topic" would read as data loss (a mkdir goes on to
		 * ask the quorum, which answers or times out) */
		if (rc == -ENOENT && p.kind == TN_ROOT && !mkdir && rep_metadata_unknown(tfs.rep)) {
			rc = -ENOTCONN;
			tfs_warn("refused: %s: this node has not reached the metadata quorum since it "
			         "started, so its topics are not known yet (%s)", name,
			         strerror(ENOTCONN));
		}
		tnode_release(&p);
	}
	if (rc < 0) {
		metrics_request(MOP_LOOKUP, now_ns() - t0, -rc);
		fuse_reply_err(req, -rc);
		return;
	}
	struct fuse_entry_param e;
	fill_entry(&c, &e);
	if (tnode_is_virtual(&c))
		e.entry_timeout = e.attr_timeout = 0; /* re-asked until it exists */
	tnode_release(&c);
	metrics_request(MOP_LOOKUP, now_ns() - t0, 0);
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	uint64_t t0 = now_ns();
	struct tnode n;
	struct stat st;
	int rc = tnode_resolve(ino, &n);
	if (rc == 0) {
		rc = tnode_stat(&n, &st);
		tnode_release(&n);
	} else if (opf_stat(ino, &st, NULL, 0) == 0) {
		metrics_request(MOP_GETATTR, now_ns() - t0, 0);
		fuse_reply_attr(req, &st, 0); /* open, without a name */
		return;
	}
	metrics_request(MOP_GETATTR, now_ns() - t0, rc < 0 ? -rc : 0);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, tnode_is_dir(n.kind) ? DIR_TIMEOUT : FILE_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
	(void)fi;
	struct tnode n;
	char path[512];
	int rc = resolve_path(ino, &n, path, sizeof(path));
	struct stat orphan;
	if (rc < 0 && opf_stat(ino, &orphan, attr, to_set) == 0) {
		/* an open producer file without a name: nothing to keep */
		fuse_reply_attr(req, &orphan, 0);
		return;
	}
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	int owner_change = to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID);
	int err = 0;
	const char *why = NULL;
	if (n.kind == TN_PFILE && owner_change) {
		/* Producer files keep owner and mode like any file (rotation tools
		 * create them and hand them to the writing user). */
		struct rep_pfile_attr a;
		rc = rep_pfile_get_attr(n.topic, n.index, &a);
		if (rc == 0) {
			int root = ctx->uid == 0, owner = ctx->uid == a.uid;
			if ((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != a.uid && !root) {
				err = EPERM;
				why = "only root can change the owner";
			} else if ((to_set & (FUSE_SET_ATTR_GID | FUSE_SET_ATTR_MODE)) && !root &&
			           !owner) {
				err = EPERM;
				why = "only the owner or root can change the group or mode";
			} else {
				if (to_set & FUSE_SET_ATTR_MODE)
					a.mode = attr->st_mode & 07777;
				if (to_set & FUSE_SET_ATTR_UID)
					a.uid = attr->st_uid;
				if (to_set & FUSE_SET_ATTR_GID)
					a.gid = attr->st_gid;
				rc = rep_pfile_set_attr(n.topic, n.index, &a);
			}
		}
		if (rc < 0) {
			err = tfs_errno(rc);
			why = tfs_strerror(rc);
		}
	} else if (owner_change) {
		err = EPERM;
		why = "owner and mode of topicfs's own files and directories are fixed";
	} else if ((to_set & FUSE_SET_ATTR_SIZE) && n.kind != TN_PART_LOG && n.kind != TN_PFILE &&
	           n.kind != TN_CONFIG && n.kind != TN_OFFSETS) {
		err = EPERM;
		why = "read-only file";
	}
	if (why) {
		tnode_release(&n);
		refuse(req, err, MOP_SETATTR, "setattr %s: %s", path, why);
		return;
	}
	/* Truncation is accepted and changes no data (records are never removed
	 * by a writer; retention does that); times are accepted and ignored. */
	if ((to_set & FUSE_SET_ATTR_SIZE) && n.kind == TN_PART_LOG)
		tfs_info("truncate %s: accepted, no records removed (use retention)", path);
	struct stat st;
	tnode_stat(&n, &st);
	tnode_release(&n);
	metrics_request(MOP_SETATTR, 0, 0);
	fuse_reply_attr(req, &st, FILE_TIMEOUT);
}

/* ---- directories ------------------------------------------------------------ */

struct listing {
	struct dirent_rec *ents;
	size_t n, cap;
	int oom;
	struct rep_topic *topic;
};

static void listing_add(struct listing *l, const char *name, uint64_t ino, mode_t mode)
{
	if (l->oom)
		return;
	if (l->n == l->cap) {
		size_t c = l->cap ? l->cap * 2 : 16;
		struct dirent_rec *e = realloc(l->ents, c * sizeof(*e));
		if (!e) {
			l->oom = 1;
			return;
		}
		l->ents = e;
		l->cap = c;
	}
	char *copy = strdup(name);
	if (!copy) {
		l->oom = 1;
		return;
	}
	l->ents[l->n++] = (struct dirent_rec){copy, ino, mode};
}

static int list_topic(void *ctx, struct rep_topic *t)
{
	listing_add(ctx, rep_topic_name(t), tnode_ino(rep_topic_id(t), TN_TOPIC, 0), S_IFDIR);
	return 0;
}

static int list_pfile(void *ctx, uint32_t id, const char *name)
{
	struct listing *l = ctx;
	listing_add(l, name, tnode_ino(rep_topic_id(l->topic), TN_PFILE, id), S_IFREG);
	return 0;
}

static int list_group(void *ctx, uint32_t id, const char *name)
{
	struct listing *l = ctx;
	listing_add(l, name, tnode_ino(rep_topic_id(l->topic), TN_GROUP_DIR, id), S_IFDIR);
	return 0;
}

static void free_listing(struct dirent_rec *ents, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ents[i].name);
	free(ents);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct tnode n;
	rep_sync(tfs.rep);   /* a cluster: list what other mounts just made */
	int rc = tnode_resolve(ino, &n);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (!tnode_is_dir(n.kind)) {
		tnode_release(&n);
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	struct listing l = {.topic = n.topic};
	listing_add(&l, ".", n.ino, S_IFDIR);
	listing_add(&l, "..", INO_ROOT, S_IFDIR);
	uint64_t tid = n.topic ? rep_topic_id(n.topic) : 0;
	switch (n.kind) {
	case TN_ROOT:
		listing_add(&l, ".cluster", INO_CLUSTER, S_IFDIR);
		rep_topic_foreach(tfs.rep, list_topic, &l);
		break;
	case TN_CLUSTER:
		listing_add(&l, "nodes", INO_NODES, S_IFREG);
		listing_add(&l, "metrics", INO_METRICS, S_IFREG);
		break;
	case TN_TOPIC: {
		listing_add(&l, ".config", tnode_ino(tid, TN_CONFIG, 0), S_IFREG);
		uint32_t np = rep_topic_partition_count(n.topic);
		for (uint32_t p = 0; p < np; p++) {
			char name[16];
			snprintf(name, sizeof(name), "%u", p);
			listing_add(&l, name, tnode_ino(tid, TN_PART_DIR, p), S_IFDIR);
		}
		listing_add(&l, "groups", tnode_ino(tid, TN_GROUPS, 0), S_IFDIR);
		rep_pfile_foreach(n.topic, list_pfile, &l);
		break;
	}
	case TN_PART_DIR:
		listing_add(&l, "log", tnode_ino(tid, TN_PART_LOG, n.index), S_IFREG);
		listing_add(&l, "state", tnode_ino(tid, TN_PART_STATE, n.index), S_IFREG);
		break;
	case TN_GROUPS:
		rep_group_foreach(n.topic, list_group, &l);
		break;
	case TN_GROUP_DIR:
		listing_add(&l, "cursor", tnode_ino(tid, TN_CURSOR, n.index), S_IFREG);
		listing_add(&l, "pending", tnode_ino(tid, TN_PENDING, n.index), S_IFREG);
		listing_add(&l, "offsets", tnode_ino(tid, TN_OFFSETS, n.index), S_IFREG);
		break;
	default:
		break;
	}
	struct fh *h = calloc(1, sizeof(*h));
	if (l.oom || !h) {
		free_listing(l.ents, l.n);
		free(h);
		tnode_release(&n);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	h->node = n;
	h->ents = l.ents;
	h->nents = l.n;
	pthread_mutex_init(&h->lock, NULL);
	fi->fh = (uintptr_t)h;
	fi->cache_readdir = 0;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		/* Interrupted: the kernel will not release it. */
		free_listing(h->ents, h->nents);
		tnode_release(&h->node);
		pthread_mutex_destroy(&h->lock);
		free(h);
	}
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
	(void)ino;
	uint64_t t0 = now_ns();
	struct fh *h = get_fh(fi);
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0;
	for (size_t i = (size_t)off; i < h->nents; i++) {
		struct stat st = {.st_ino = h->ents[i].ino, .st_mode = h->ents[i].mode};
		size_t need = fuse_add_direntry(req, buf + used, size - used, h->ents[i].name, &st,
		                                (off_t)(i + 1));
		if (need > size - used)
			break;
		used += need;
	}
	metrics_request(MOP_READDIR, now_ns() - t0, 0);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct fh *h = get_fh(fi);
	free_listing(h->ents, h->nents);
	tnode_release(&h->node);
	pthread_mutex_destroy(&h->lock);
	free(h);
	fuse_reply_err(req, 0);
}

/* Answers a successful mkdir with the entry of the directory just made
 * (ENOENT if it was deleted again in between). */
static void reply_made(fuse_req_t req, const struct tnode *parent, const char *name, uint64_t t0)
{
	struct tnode c;
	int rc = tnode_lookup(parent, name, &c);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	struct fuse_entry_param e;
	fill_entry(&c, &e);
	tnode_release(&c);
	metrics_request(MOP_MKDIR, now_ns() - t0, 0);
	fuse_reply_entry(req, &e);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)mode;
	uint64_t t0 = now_ns();
	struct tnode p;
	char ppath[512];
	int rc = resolve_path(parent, &p, ppath, sizeof(ppath));
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	enum tnode_kind pk = p.kind;
	if (pk == TN_GROUPS) {
		if (!rep_name_valid(name)) {
			tnode_release(&p);
			refuse(req, EINVAL, MOP_MKDIR,
			       "mkdir %s/'%.300s': group names are 1-249 of [A-Za-z0-9._-], not "
			       "starting with '.'", ppath, name);
			return;
		}
		rc = rep_group_create(p.topic, name);
		if (rc < 0) {
			tnode_release(&p);
			refuse(req, tfs_errno(rc), MOP_MKDIR, "mkdir %s/%s: %s", ppath, name,
			       rc == -EEXIST ? "group exists" : why_of(rc));
			return;
		}
		reply_made(req, &p, name, t0);
		tnode_release(&p);
		return;
	}
	tnode_release(&p);
	if (pk != TN_ROOT) {
		refuse(req, EPERM, MOP_MKDIR,
		       "mkdir %s/%s: directories are made only for topics (at the top) and "
		       "groups (in groups/)",
		       ppath, name);
		return;
	}
	if (!rep_name_valid(name)) {
		refuse(req, EINVAL, MOP_MKDIR,
		       "mkdir '%.300s': topic names are 1-249 of [A-Za-z0-9._-], not starting "
		       "with '.'",
		       name);
		return;
	}
	rc = rep_topic_create(tfs.rep, name);
	if (rc < 0) {
		refuse(req, tfs_errno(rc), MOP_MKDIR, "mkdir %s: %s", name,
		       rc == -EEXIST ? "topic exists" : why_of(rc));
		return;
	}
	struct tnode root = {.kind = TN_ROOT, .ino = INO_ROOT};
	reply_made(req, &root, name, t0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	uint64_t t0 = now_ns();
	struct tnode p;
	int rc = tnode_resolve(parent, &p);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	enum tnode_kind pk = p.kind;
	char ppath[512];
	tnode_path(&p, ppath, sizeof(ppath));
	if (pk == TN_GROUPS) {
		rc = rep_group_delete(p.topic, name);
		tnode_release(&p);
		if (rc == -ENOENT) {
			fuse_reply_err(req, ENOENT);
		} else if (rc < 0) {
			refuse(req, tfs_errno(rc), MOP_RMDIR, "rmdir %s/%s: %s", ppath, name,
			       rc == -EBUSY ? "the group has members (open cursor or pending files)"
			                    : why_of(rc));
		} else {
			metrics_request(MOP_RMDIR, now_ns() - t0, 0);
			fuse_reply_err(req, 0);
		}
		return;
	}
	tnode_release(&p);
	if (pk == TN_ROOT && strcmp(name, ".cluster") != 0) {
		rc = rep_topic_delete(tfs.rep, name);
		if (rc < 0) {
			if (rc == -ENOENT)
				fuse_reply_err(req, ENOENT);
			else
				refuse(req, tfs_errno(rc), MOP_RMDIR, "rmdir %s: %s", name,
				       why_of(rc));
			return;
		}
		metrics_request(MOP_RMDIR, now_ns() - t0, 0);
		fuse_reply_err(req, 0);
		return;
	}
	refuse(req, EPERM, MOP_RMDIR, "rmdir %s/%s: only topics and groups can be removed",
	       ppath, name);
}

/* ---- files ------------------------------------------------------------------ */

static void fh_free(struct fh *h)
{
	/* A reply sent from this handle's buffers may still be returning from
	 * writev in another worker (the client got its bytes, closed, and the
	 * RELEASE came to us meanwhile): every reply from h's buffers is made
	 * under h->lock, so taking it waits for the last one to finish. */
	pthread_mutex_lock(&h->lock);
	pthread_mutex_unlock(&h->lock);
	if (h->watching)
		rep_watch(tfs.rep, -1);
	if (h->cursor)
		cursor_release(h->cursor);
	if (h->reader)
		ls_reader_close(h->reader);
	if (h->producing)
		producer_free(&h->prod);
	free(h->rbuf);
	mbuf_free(&h->text);
	mbuf_free(&h->cfgw);
	if (h->listed)
		opf_drop(&h->node);
	tnode_release(&h->node);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* Makes the handle for an open of n (whose reference it takes). */
static int fh_open(struct tnode *n, int flags, struct fuse_file_info *fi, const char *path)
{
	int acc = flags & O_ACCMODE;
	struct fh *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	pthread_mutex_init(&h->lock, NULL);
	h->node = *n;
	memset(n, 0, sizeof(*n));
	h->readable = acc == O_RDONLY || acc == O_RDWR;
	h->writable = acc == O_WRONLY || acc == O_RDWR;
	int rc = 0;
	switch (h->node.kind) {
	case TN_NODES:
	case TN_METRICS:
	case TN_PART_STATE:
		if (h->writable) {
			tfs_warn("refused: open %s for writing: read-only file (%s)", path,
			         strerror(EACCES));
			rc = -EACCES;
			break;
		}
		tnode_render(&h->node, NULL, &h->text);
		if (h->text.oom)
			rc = -ENOMEM;
		break;
	case TN_CONFIG:
		if (h->readable) {
			/* a cluster: show what another mount changed a moment ago */
			rep_sync(tfs.rep);
			tnode_render(&h->node, NULL, &h->text);
		}
		if (h->text.oom)
			rc = -ENOMEM;
		break;
	case TN_CURSOR:
	case TN_PENDING:
		if (h->writable) {
			tfs_warn("refused: open %s for writing: cursors are read to consume (%s)",
			         path, strerror(EACCES));
			rc = -EACCES;
			break;
		}
		rc = tnode_group_create(&h->node);
		if (rc == 0) {
			rc = cursor_open(h->node.topic, h->node.group, h->node.kind == TN_PENDING,
			                 &h->cursor);
			if (rc == 0)
				h->node.group = NULL; /* the cursor owns that reference now */
		}
		if (rc < 0)
			tfs_warn("refused: open %s: %s", path, tfs_strerror(rc));
		break;
	case TN_OFFSETS:
		if (!h->node.group && !h->writable) {
			/* only a reset (a write) makes a group here: a `cat` with a
			 * typo in the name must not leave a group behind */
			tfs_warn("refused: open %s: no such group (reading offsets creates "
			         "none; mkdir it or open its cursor) (%s)", path, strerror(ENOENT));
			rc = -ENOENT;
			break;
		}
		rc = tnode_group_create(&h->node);
		if (rc == 0 && h->readable) {
			tnode_render(&h->node, NULL, &h->text);
			if (h->text.oom)
				rc = -ENOMEM;
		}
		break;
	case TN_PART_LOG:
		if (h->readable) {
			rc = ls_reader_open(rep_partition_log(h->node.part), &h->reader);
			if (rc == 0) {
				rep_watch(tfs.rep, 1);
				h->watching = 1;
			}
		}
		/* fall through */
	case TN_PFILE:
		if (rc == 0 && h->writable) {
			int64_t part = h->node.kind == TN_PART_LOG ? (int64_t)h->node.index : -1;
			producer_init(&h->prod, h->node.topic, part, rep_new_producer_id(tfs.rep));
			h->producing = 1;
		}
		break;
	default:
		rc = -EISDIR;
		break;
	}
	if (rc < 0) {
		fh_free(h);
		return rc;
	}
	if (h->node.kind == TN_PFILE) {
		opf_add(&h->node);
		h->listed = 1;
	}
	fi->fh = (uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->nonseekable = 0;
	return 0;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	uint64_t t0 = now_ns();
	struct tnode n;
	char path[512];
	int rc = resolve_path(ino, &n, path, sizeof(path));
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = fh_open(&n, fi->flags, fi, path);
	tnode_release(&n);
	metrics_request(MOP_OPEN, now_ns() - t0, rc < 0 ? -rc : 0);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT)
		fh_free(get_fh(fi));
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
	uint64_t t0 = now_ns();
	struct tnode p;
	char ppath[512];
	int rc = resolve_path(parent, &p, ppath, sizeof(ppath));
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (p.kind != TN_TOPIC) {
		tnode_release(&p);
		refuse(req, EPERM, MOP_CREATE,
		       "create %s/%s: files can be made only in a topic directory", ppath, name);
		return;
	}
	int err;
	const char *why = pfile_name_problem(name, &err);
	if (why) {
		tnode_release(&p);
		refuse(req, err, MOP_CREATE, "create %s/%.300s: %s", ppath, name, why);
		return;
	}
	uint32_t id;
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct rep_pfile_attr attr = {mode & 07777 & ~ctx->umask, ctx->uid, ctx->gid};
	rc = rep_pfile_create(p.topic, name, &attr, &id);
	if (rc == -EEXIST)
		rc = rep_pfile_lookup(p.topic, name, &id);
	if (rc < 0) {
		tnode_release(&p);
		refuse(req, tfs_errno(rc), MOP_CREATE, "create %s/%.300s: %s", ppath, name,
		       why_of(rc));
		return;
	}
	struct tnode c = {.kind = TN_PFILE, .topic = p.topic, .index = id,
	                  .ino = tnode_ino(rep_topic_id(p.topic), TN_PFILE, id)};
	struct fuse_entry_param e;
	fill_entry(&c, &e);
	char path[1024];
	snprintf(path, sizeof(path), "%s/%.300s", ppath, name);
	rc = fh_open(&c, fi->flags, fi, path); /* takes the topic reference */
	metrics_request(MOP_CREATE, now_ns() - t0, rc < 0 ? -rc : 0);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (fuse_reply_create(req, &e, fi) == -ENOENT)
		fh_free(get_fh(fi));
}

/* "topic/name" for a name in directory ino, for log lines. */
static void child_path(fuse_ino_t parent, const char *name, char *buf, size_t size)
{
	struct tnode p;
	char ppath[512] = "?";
	if (tnode_resolve(parent, &p) == 0) {
		tnode_path(&p, ppath, sizeof(ppath));
		tnode_release(&p);
	}
	snprintf(buf, size, "%s/%.300s", strcmp(ppath, "/") == 0 ? "" : ppath, name);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                     dev_t rdev)
{
	(void)rdev;
	char path[1024];
	child_path(parent, name, path, sizeof(path));
	refuse(req, EPERM, MOP_OTHER, "mknod %s (mode %o): only regular files via create", path,
	       (unsigned)mode);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link;
	char path[1024];
	child_path(parent, name, path, sizeof(path));
	refuse(req, EPERM, MOP_OTHER, "symlink %s: links are not supported in topicfs", path);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino;
	char path[1024];
	child_path(newparent, newname, path, sizeof(path));
	refuse(req, EPERM, MOP_OTHER, "link %s: links are not supported in topicfs", path);
}

/* Resolves directory parent and its child name; on failure holds nothing. */
static int resolve_child(fuse_ino_t parent, const char *name, struct tnode *p, struct tnode *c)
{
	int rc = tnode_resolve(parent, p);
	if (rc < 0)
		return rc;
	rc = tnode_lookup(p, name, c);
	if (rc < 0)
		tnode_release(p);
	return rc;
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	uint64_t t0 = now_ns();
	struct tnode p, c;
	int rc = resolve_child(parent, name, &p, &c);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	char path[512];
	tnode_path(&c, path, sizeof(path));
	if (c.kind != TN_PFILE) {
		tnode_release(&c);
		tnode_release(&p);
		refuse(req, EPERM, MOP_UNLINK,
		       "unlink %s: control files cannot be removed (rmdir the topic instead)",
		       path);
		return;
	}
	rc = rep_pfile_unlink(p.topic, name);
	tnode_release(&c);
	tnode_release(&p);
	if (rc < 0) {
		refuse(req, tfs_errno(rc), MOP_UNLINK, "unlink %s: %s", path, why_of(rc));
		return;
	}
	metrics_request(MOP_UNLINK, now_ns() - t0, 0);
	fuse_reply_err(req, 0);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	uint64_t t0 = now_ns();
	struct tnode p, c;
	int rc = resolve_child(parent, name, &p, &c);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	char path[512];
	tnode_path(&c, path, sizeof(path));
	int err = 0;
	const char *why = NULL;
	if (c.kind != TN_PFILE) {
		err = EPERM;
		why = c.kind == TN_TOPIC ? "topics cannot be renamed" : "control files cannot be renamed";
	} else if (newparent != parent) {
		err = EXDEV;
		why = "producer files can be renamed only within their topic";
	} else if (flags & RENAME_EXCHANGE) {
		err = EINVAL;
		why = "RENAME_EXCHANGE is not supported";
	} else {
		why = pfile_name_problem(newname, &err);
		if (!why && (flags & RENAME_NOREPLACE)) {
			uint32_t id;
			if (rep_pfile_lookup(p.topic, newname, &id) == 0) {
				err = EEXIST;
				why = "target exists";
			}
		}
	}
	if (why) {
		tnode_release(&c);
		tnode_release(&p);
		refuse(req, err, MOP_RENAME, "rename %s to %.300s: %s", path, newname, why);
		return;
	}
	rc = rep_pfile_rename(p.topic, name, newname);
	tnode_release(&c);
	tnode_release(&p);
	if (rc < 0) {
		refuse(req, tfs_errno(rc), MOP_RENAME, "rename %s to %.300s: %s", path, newname,
		       why_of(rc));
		return;
	}
	metrics_request(MOP_RENAME, now_ns() - t0, 0);
	fuse_reply_err(req, 0);
}

/* ---- read and write ----------------------------------------------------------- */

static void read_log(fuse_req_t req, struct fh *h, size_t size, off_t off)
{
	pthread_mutex_lock(&h->lock);
	if (h->rcap < size) {
		char *b = realloc(h->rbuf, size);
		if (!b) {
			pthread_mutex_unlock(&h->lock);
			fuse_reply_err(req, ENOMEM);
			return;
		}
		h->rbuf = b;
		h->rcap = size;
	}
	uint64_t pos = (uint64_t)off == h->expect_off && h->expect_off ? h->map_pos : (uint64_t)off;
	struct topic_config cfg;
	rep_topic_config(h->node.topic, &cfg);
	uint64_t actual = pos;
	ssize_t n = ls_reader_read_view(h->reader, pos, h->rbuf, size,
	                                cfg.key_separator ? cfg.key_separator : '\t', &actual);
	if (n < 0) {
		pthread_mutex_unlock(&h->lock);
		char path[512];
		tnode_path(&h->node, path, sizeof(path));
		refuse(req, tfs_errno((int)n), MOP_READ, "read %s at %lld: %s", path, (long long)off,
		       tfs_strerror((int)n));
		return;
	}
	h->expect_off = (uint64_t)off + (uint64_t)n;
	h->map_pos = actual + (uint64_t)n;
	__atomic_add_fetch(&rep_partition_counters(h->node.part)->bytes_out, (uint64_t)n,
	                   __ATOMIC_RELAXED);
	fuse_reply_buf(req, h->rbuf, (size_t)n);
	pthread_mutex_unlock(&h->lock);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	(void)ino;
	uint64_t t0 = now_ns();
	struct fh *h = get_fh(fi);
	switch (h->node.kind) {
	case TN_PART_LOG:
		read_log(req, h, size, off);
		break;
	case TN_PFILE:
		fuse_reply_buf(req, NULL, 0); /* records are read from the partitions */
		break;
	case TN_CURSOR:
	case TN_PENDING:
		metrics_request(MOP_READ, 0, 0);
		cursor_read(h->cursor, req, size, fi->flags);
		return;
	default:
		pthread_mutex_lock(&h->lock); /* see fh_free */
		if ((size_t)off >= h->text.len)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_buf(req, h->text.data + off,
			               size < h->text.len - (size_t)off ? size : h->text.len - (size_t)off);
		pthread_mutex_unlock(&h->lock);
		break;
	}
	metrics_request(MOP_READ, now_ns() - t0, 0);
}

/* The line of `key:` in doc, for error messages about cross-key rules. */
static int key_line(const char *doc, size_t len, const char *msg)
{
	const char *colon = strchr(msg, ':');
	if (!colon)
		return 1;
	size_t klen = (size_t)(colon - msg);
	int line = 1;
	for (size_t i = 0; i < len; i++) {
		if (i == 0 || doc[i - 1] == '\n') {
			size_t j = i;
			while (j < len && (doc[j] == ' ' || doc[j] == '\t'))
				j++;
			if (len - j > klen && memcmp(doc + j, msg, klen) == 0 && doc[j + klen] == ':')
				return line;
		}
		if (doc[i] == '\n')
			line++;
	}
	return 1;
}

/* Checks (apply == 0, at every complete write) or applies (apply != 0, at
 * close) the YAML document written to .config so far. A document is applied
 * whole at close or not at all: a refused write leaves nothing changed. */
static int config_apply(struct fh *h, int apply)
{
	struct rep_topic *t = h->node.topic;
	struct topic_config changes;
	uint32_t cleared = 0;
	char err[512], msg[600];
	memset(&changes, 0, sizeof(changes));
	int rc = topic_config_parse(h->cfgw.data ? h->cfgw.data : "", h->cfgw.len, &changes,
	                            &cleared, err, sizeof(err));
	if (rc < 0) {
		snprintf(msg, sizeof(msg), "%s", err);
	} else if (rep_quorum_lost(tfs.rep)) {
		/* refused at write(), where a shell sees it, not at close() */
		rc = -ENOTCONN;
		snprintf(msg, sizeof(msg), "this node is cut off from the metadata quorum (no "
		         "quorum leader known): settings cannot change now");
	} else {
		rc = apply ? rep_topic_set_config(t, &changes, cleared, err, sizeof(err))
		           : rep_topic_check_config(t, &changes, cleared, err, sizeof(err));
		if (rc < 0 && rc != -EINVAL)
			snprintf(msg, sizeof(msg), "%s", err[0] ? err : why_of(rc));
		else if (rc < 0)
			snprintf(msg, sizeof(msg), "line %d: %s",
			         key_line(h->cfgw.data, h->cfgw.len, err),
			         err[0] ? err : tfs_strerror(rc));
	}
	if (rc < 0) {
		h->cfg_refused = 1; /* nothing of this document is applied */
		tree_set_config_error(rep_topic_id(t), msg);
		tfs_warn("refused: write %s/.config: %s (%s)", rep_topic_name(t), msg,
		         strerror(tfs_errno(rc)));
		(void)tfs_reason_take(0, NULL, 0); /* in msg, or not needed */
		/* a bad document is EINVAL; a quorum that cannot be reached, a full
		 * disk or a deleted topic keep their own errno */
		return rc == -EINVAL ? -EINVAL : -tfs_errno(rc);
	}
	if (apply) {
		h->cfg_applied = h->cfgw.len;
		tree_set_config_error(rep_topic_id(t), NULL);
	}
	return 0;
}

/* "2026-11-21T14:25:14Z", with optional fraction and a Z or +hh:mm offset;
 * a space may stand for the T. Returns 0 and *ms, or -EINVAL. */
static int parse_rfc3339(const char *s, int64_t *ms)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		p = strptime(s, "%Y-%m-%dt%H:%M:%S", &tm); /* RFC 3339 5.6: either case */
	if (!p)
		p = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
	if (!p)
		return -EINVAL;
	int64_t frac = 0;
	if (*p == '.' || *p == ',') {
		int digits = 0;
		for (p++; *p >= '0' && *p <= '9'; p++, digits++)
			if (digits < 3)
				frac = frac * 10 + (*p - '0');
		if (!digits)
			return -EINVAL;
		while (digits++ < 3)
			frac *= 10;
	}
	int64_t offset_s = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int hh, mm;
		if (sscanf(p + 1, "%2d:%2d", &hh, &mm) != 2)
			return -EINVAL;
		offset_s = (hh * 3600 + mm * 60) * (*p == '-' ? -1 : 1);
		p += 6;
	} else {
		return -EINVAL;
	}
	if (*p)
		return -EINVAL;
	time_t t = timegm(&tm);
	*ms = ((int64_t)t - offset_s) * 1000 + frac;
	return 0;
}

/* One parsed line of an offsets write. */
struct offsets_action {
	enum rep_reset how;
	int64_t partition; /* -1: every partition */
	int64_t value;
};

static int word_is(const char *v, const char *w)
{
	size_t n = strlen(w);
	return strncmp(v, w, n) == 0 && (!v[n] || v[n] == ' ' || v[n] == '\t');
}

/* Whether s, after a "<partition> <offset>", ends the line: nothing, or the
 * "end lag" of a row as `offsets` shows it (two numbers). */
static int row_tail_ok(const char *s)
{
	for (int k = 0;; k++) {
		while (*s == ' ' || *s == '\t')
			s++;
		if (!*s)
			return k == 0 || k == 2;
		if (k == 2)
			return 0;
		char *end;
		errno = 0;
		long long v = strtoll(s, &end, 10);
		if (end == s || errno || v < 0 || (*end && *end != ' ' && *end != '\t'))
			return 0;
		s = end;
	}
}

/* Parses one line written to offsets. Returns 1 with *a, 0 for a blank or
 * comment line, or -EINVAL with the reason in err. */
static int offsets_parse(struct fh *h, char *line, struct offsets_action *a, char *err,
                         size_t errlen)
{
	while (*line == ' ' || *line == '\t')
		line++;
	size_t n = strlen(line);
	while (n && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r'))
		line[--n] = 0;
	if (!n || line[0] == '#')
		return 0;
	a->partition = -1;
	a->value = 0;
	if (strcmp(line, "earliest") == 0) {
		a->how = REP_RESET_EARLIEST;
		return 1;
	}
	if (strcmp(line, "latest") == 0) {
		a->how = REP_RESET_LATEST;
		return 1;
	}
	if (line[0] == '@') {
		a->how = REP_RESET_TIME;
		if (parse_rfc3339(line + 1, &a->value) < 0) {
			snprintf(err, errlen, "'%.100s': not an RFC 3339 time (e.g. @2026-11-21T14:00:00Z)",
			         line);
			return -EINVAL;
		}
		return 1;
	}
	/* "<partition> <offset|earliest|latest>", or a row as read:
	 * "partition committed end lag". */
	char *end;
	errno = 0;
	long long p = strtoll(line, &end, 10);
	int ok = end != line && (*end == ' ' || *end == '\t') && errno == 0 && p >= 0;
	if (ok) {
		char *v = end;
		while (*v == ' ' || *v == '\t')
			v++;
		if (word_is(v, "earliest")) {
			a->how = REP_RESET_EARLIEST;
			ok = v[strspn(v + 8, " \t") + 8] == 0;
		} else if (word_is(v, "latest")) {
			a->how = REP_RESET_LATEST;
			ok = v[strspn(v + 6, " \t") + 6] == 0;
		} else {
			a->how = REP_RESET_OFFSET;
			a->value = strtoll(v, &end, 10);
			ok = end != v && (!*end || *end == ' ' || *end == '\t') && errno == 0 &&
			     a->value >= 0 && row_tail_ok(end);
		}
	}
	if (!ok) {
		snprintf(err, errlen,
		         "'%.100s': expected earliest, latest, '<partition> <offset>' or "
		         "'@<RFC 3339 time>'", line);
		return -EINVAL;
	}
	if ((uint64_t)p >= rep_topic_partition_count(h->node.topic)) {
		snprintf(err, errlen, "'%.100s': no partition %lld", line, p);
		return -EINVAL;
	}
	a->partition = p;
	return 1;
}

/* Checks (apply == 0, at every write) or applies (apply != 0, at close)
 * the lines written to offsets, an unterminated last line too (`printf
 * bogus > offsets` must fail at write(): shells ignore what close()
 * returns). Like .config, what one open writes is applied whole at close or
 * not at all. */
static int offsets_apply(struct fh *h, int apply)
{
	char err[300] = "";
	struct offsets_action *acts = NULL;
	size_t nacts = 0, pos = h->cfg_applied;
	int rc = 0;
	if (h->cfg_refused)
		return -EINVAL;
	while (pos < h->cfgw.len) {
		char *start = h->cfgw.data + pos;
		char *nl = memchr(start, '\n', h->cfgw.len - pos);
		size_t len = nl ? (size_t)(nl - start) : h->cfgw.len - pos;
		pos += len + (nl ? 1 : 0);
		char line[512];
		if (len >= sizeof(line)) {
			snprintf(err, sizeof(err), "line too long");
			rc = -EINVAL;
			break;
		}
		memcpy(line, start, len);
		line[len] = 0;
		struct offsets_action a;
		rc = offsets_parse(h, line, &a, err, sizeof(err));
		if (rc < 0)
			break;
		if (rc == 0)
			continue;
		struct offsets_action *more = realloc(acts, (nacts + 1) * sizeof(*acts));
		if (!more) {
			rc = -ENOMEM;
			break;
		}
		acts = more;
		acts[nacts++] = a;
		rc = 0;
	}
	for (size_t i = 0; apply && rc == 0 && i < nacts; i++) {
		rc = rep_group_reset(h->node.group, acts[i].how, acts[i].partition, acts[i].value);
		if (rc < 0)
			snprintf(err, sizeof(err), "%.299s", why_of(rc));
	}
	free(acts);
	if (rc < 0) {
		h->cfg_refused = 1;
		tfs_warn("refused: write %s/groups/%s/offsets: %s (%s)", rep_topic_name(h->node.topic),
		         h->node.gname, err[0] ? err : tfs_strerror(rc), strerror(tfs_errno(rc)));
		return rc;
	}
	if (apply)
		h->cfg_applied = pos;
	return 0;
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
	(void)ino;
	(void)off; /* every write is an append */
	uint64_t t0 = now_ns();
	struct fh *h = get_fh(fi);
	int rc = 0;
	size_t taken = size; /* a short write when a too-long line follows */
	pthread_mutex_lock(&h->lock);
	h->writer = fuse_req_ctx(req)->pid;
	if (h->node.kind == TN_CONFIG) {
		size_t before = h->cfgw.len;
		mbuf_printf(&h->cfgw, "%.*s", (int)size, buf);
		if (h->cfg_refused) {
			rc = -EINVAL; /* the rest of a refused document */
		} else if (h->cfgw.oom || h->cfgw.len != before + size) {
			/* NUL bytes or no memory: not a YAML document we accept. */
			rc = h->cfgw.oom ? -ENOMEM : -EINVAL;
			h->cfg_refused = 1;
			if (rc == -EINVAL)
				tfs_warn("refused: write %s/.config: NUL byte in document",
				         rep_topic_name(h->node.topic));
		} else {
			/* checked whole at every write, an unterminated last line
			 * too: `printf 'acks: bogus' > .config` must fail at write(),
			 * shells ignore what close() returns */
			rc = config_apply(h, 0);
		}
	} else if (h->node.kind == TN_OFFSETS) {
		size_t before = h->cfgw.len;
		mbuf_printf(&h->cfgw, "%.*s", (int)size, buf);
		rc = h->cfgw.oom ? -ENOMEM : h->cfgw.len != before + size ? -EINVAL : offsets_apply(h, 0);
	} else if (h->producing) {
		const char *fmt = h->node.kind == TN_PFILE && !h->produced
			? compressed_magic(buf, size) : NULL;
		ssize_t n = rep_topic_deleted(h->node.topic) ? -ENOENT
		            : fmt ? -EPERM
		                  : producer_write(&h->prod, buf, size);
		if (n > 0)
			h->produced = 1;
		if (fmt) {
			char path[512];
			tnode_path(&h->node, path, sizeof(path));
			tfs_warn("refused: write %s: %s data cannot be produced as lines (log "
			         "rotation: compress outside the topic directory)", path, fmt);
		}
		if (n >= 0)
			taken = (size_t)n;
		else
			rc = (int)n;
		if (n >= 0 && taken < size) {
			char path[512];
			tnode_path(&h->node, path, sizeof(path));
			tfs_info("write %s: %zu of %zu bytes taken: a line over max_record_bytes "
			         "follows (the writer's next write fails with EMSGSIZE)", path,
			         taken, size);
		}
		if (rc < 0 && !fmt) {
			char path[512];
			tnode_path(&h->node, path, sizeof(path));
			if (rc == -EMSGSIZE)
				tfs_warn("refused: write %s: a line over max_record_bytes was "
				         "dropped (%s)", path, tfs_strerror(rc));
			else
				tfs_warn("refused: write %s: %s", path, why_of(rc));
		}
	} else {
		rc = -EBADF;
	}
	pthread_mutex_unlock(&h->lock);
	metrics_request(MOP_WRITE, now_ns() - t0, rc < 0 ? tfs_errno(rc) : 0);
	if (rc < 0)
		fuse_reply_err(req, tfs_errno(rc));
	else
		fuse_reply_write(req, taken);
}

/* Whether a FLUSH by task `by` closes the writer's own descriptor. Every
 * close(2) of a descriptor of the open file sends a FLUSH, also a child
 * process exiting with one it inherited (`{ printf ab; sleep 1; echo cd; }
 * >> log`): only the process that wrote last ends a partial line or a
 * document there; the others leave it to the writer's close or to RELEASE.
 * A writer that is gone counts as this process (the old behaviour). */
static int flush_by_writer(const struct fh *h, pid_t by)
{
	if (!h->writer || by == h->writer)
		return 1;
	pid_t w = proc_tgid(h->writer);
	if (w == -ENOENT)
		return 1; /* a writer that is gone: the old behaviour */
	return w >= 0 && w == proc_tgid(by);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	uint64_t t0 = now_ns();
	struct fh *h = get_fh(fi);
	int rc = 0;
	if (h->cursor) {
		metrics_request(MOP_FLUSH, 0, 0);
		cursor_flush(h->cursor, req);
		return;
	}
	pthread_mutex_lock(&h->lock);
	int pending = h->prod.plen || h->prod.discarding ||
	              (h->cfgw.len > h->cfg_applied && !h->cfg_refused);
	if (pending && !flush_by_writer(h, fuse_req_ctx(req)->pid)) {
		pthread_mutex_unlock(&h->lock);
		metrics_request(MOP_FLUSH, now_ns() - t0, 0);
		fuse_reply_err(req, 0);
		return;
	}
	if (h->node.kind == TN_OFFSETS && h->cfgw.len > h->cfg_applied && !h->cfg_refused)
		rc = offsets_apply(h, 1);
	else if (h->node.kind == TN_CONFIG && h->cfgw.len > h->cfg_applied && !h->cfg_refused)
		rc = config_apply(h, 1);
	else if (h->producing)
		rc = producer_flush(&h->prod);
	int wrc = 0;
	if (rc == 0 && h->producing) /* close() returns once committed under acks */
		wrc = producer_wait_acked(&h->prod);
	pthread_mutex_unlock(&h->lock);
	char path[512];
	if (rc < 0 || wrc < 0)
		tnode_path(&h->node, path, sizeof(path));
	if (rc < 0 && h->producing) {
		tfs_warn("refused: close %s: last line not produced: %s", path, why_of(rc));
	} else if (wrc == -ENOENT) {
		tfs_warn("refused: close %s: the topic was deleted (%s)", path, strerror(ENOENT));
		rc = -ENOENT;
	} else if (wrc < 0) {
		tfs_warn("close %s: not committed under the topic's acks policy (%s)", path,
		         strerror(EIO));
		rc = -EIO;
	}
	metrics_request(MOP_FLUSH, now_ns() - t0, rc < 0 ? tfs_errno(rc) : 0);
	fuse_reply_err(req, rc < 0 ? tfs_errno(rc) : 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	uint64_t t0 = now_ns();
	struct fh *h = get_fh(fi);
	int rc = 0;
	pthread_mutex_lock(&h->lock);
	if (h->producing)
		rc = producer_commit(&h->prod);
	pthread_mutex_unlock(&h->lock);
	int err = rc == -ENOENT ? ENOENT : rc < 0 ? EIO : 0;
	if (err == ENOENT) {
		char path[512];
		tnode_path(&h->node, path, sizeof(path));
		tfs_warn("refused: fsync %s: the topic was deleted (%s)", path, strerror(ENOENT));
	}
	metrics_request(MOP_FSYNC, now_ns() - t0, err);
	fuse_reply_err(req, err);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct fh *h = get_fh(fi);
	/* What no FLUSH ended (the last close was not the writer's, see
	 * flush_by_writer) still counts: the file is closed now. */
	if (h->producing && h->prod.plen) {
		int rc = producer_flush(&h->prod);
		if (rc < 0)
			tfs_warn("release: last line not produced: %s", why_of(rc));
	} else if (h->cfgw.len > h->cfg_applied && !h->cfg_refused) {
		if (h->node.kind == TN_CONFIG)
			(void)config_apply(h, 1); /* a refusal is logged and shown in .config */
		else if (h->node.kind == TN_OFFSETS)
			(void)offsets_apply(h, 1);
	}
	fh_free(h);
	metrics_request(MOP_RELEASE, 0, 0);
	fuse_reply_err(req, 0);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
	(void)ino;
	struct fh *h = get_fh(fi);
	if (h->node.kind != TN_PART_LOG || (whence != SEEK_DATA && whence != SEEK_HOLE)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	struct ls_partition_info info;
	struct ls_partition *log = rep_partition_log(h->node.part);
	ls_partition_get_info(log, &info);
	uint64_t to = 0;
	int rc = off < 0 ? -ENXIO
	                 : ls_partition_seek(log, (uint64_t)off, whence == SEEK_DATA, info.hw_pos, &to);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_lseek(req, (off_t)to);
}

static void op_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                    struct fuse_pollhandle *ph)
{
	(void)ino;
	struct fh *h = get_fh(fi);
	if (h->cursor) {
		cursor_poll(h->cursor, req, ph);
		return;
	}
	if (ph)
		fuse_pollhandle_destroy(ph);
	fuse_reply_poll(req, POLLIN | POLLRDNORM | POLLOUT | POLLWRNORM);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv;
	memset(&sv, 0, sizeof(sv));
	if (statvfs(tfs.data_dir, &sv) < 0) {
		sv.f_bsize = 4096;
		sv.f_frsize = 4096;
	}
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = 1 << 20;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
	conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
}

const struct fuse_lowlevel_ops tfs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.mkdir = op_mkdir,
	.rmdir = op_rmdir,
	.mknod = op_mknod,
	.symlink = op_symlink,
	.link = op_link,
	.create = op_create,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.fsync = op_fsync,
	.release = op_release,
	.unlink = op_unlink,
	.rename = op_rename,
	.lseek = op_lseek,
	.poll = op_poll,
	.statfs = op_statfs,
};

void tfs_partition_grew(void *ctx, uint64_t topic_id, uint32_t partition)
{
	(void)ctx;
	if (!tfs.se)
		return;
	/* Attributes only (offset -1): tail -f's next fstat sees the new size. */
	fuse_lowlevel_notify_inval_inode(tfs.se, tnode_ino(topic_id, TN_PART_LOG, partition), -1,
	                                 0);
}
