/* nullfs.c - the benchmark ceiling: the least a FUSE filesystem can do.
 *
 * Owns: nothing but two inodes. It exists so that tests/bench/run.sh can
 * time `cat` in and out of a FUSE mount that does no work, on the same
 * machine and in the same run as topicfs, and report topicfs as a ratio.
 *
 * It is built the way topicfs is (INTERFACE.md, ARCHITECTURE.md "The
 * daemon"): libfuse3 low-level API, multi-threaded session loop, max_write
 * 1 MiB, direct I/O on every open file, st_blksize 1 MiB so `cat` moves
 * 1 MiB per request.
 *
 * Tree (inode numbers are fixed):
 *
 *   ino  name            what it does
 *   ---  --------------  ---------------------------------------------------
 *   1    /               directory listing `data`, `sink` and `small`
 *   2    /data           read-only, st_size = --size; byte i is
 *                        pattern[i % pattern_len] (the pattern is the first
 *                        MiB of --pattern=FILE, or a built-in access-log line)
 *   6    /small          /data with st_blksize 4 KiB, as topicfs reports on
 *                        cursor and pending files: `cat` then reads 128 KiB
 *                        a request
 *   3    /sink           sink: every write succeeds, data dropped; reads EOF
 *   4    /<name>/        any other name in / is a directory (a "topic"), in
 *   5    /<name>/<digits>/  which digit names are directories (a "partition")
 *                        and every other name is the sink (inode 3).
 *
 * So the shell commands the suite runs on topicfs run unchanged here:
 * `echo x >> MNT/t/0/log`, `cat > MNT/t/access.log`, `cat MNT/data`. Use one
 * topic name per mount: all topic names share inode 4 (and partitions 5).
 *
 * Deliberately not implemented (ENOSYS, the kernel stops asking): flush,
 * fsync, getxattr. That is the floor: a real filesystem may only add
 * round trips, never remove them.
 *
 * Usage: nullfs [--size=BYTES] [--pattern=FILE] [fuse options] MOUNTPOINT
 *        (-f for foreground; unmount with fusermount3 -u MOUNTPOINT)
 */
#define FUSE_USE_VERSION 312
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { INO_ROOT = 1, INO_DATA = 2, INO_SINK = 3, INO_TOPIC = 4, INO_PART = 5, INO_SMALL = 6 };
enum { MIB = 1 << 20 };

static struct {
	off_t size;      /* st_size of /data */
	char *pattern;   /* pattern_len bytes, then MIB more (wrap-around copy) */
	size_t pattern_len;
} g;

static const char default_line[] =
	"203.0.113.7 - - [21/Nov/2025:14:28:00 +0000] \"GET /api/v1/items/4711 "
	"HTTP/1.1\" 200 5123 \"-\" \"curl/7.88\"\n";

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = MIB;
	switch (ino) {
	case INO_ROOT:
	case INO_TOPIC:
	case INO_PART:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		break;
	case INO_SMALL:
		st->st_blksize = 4096;
		/* fall through */
	case INO_DATA:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = g.size;
		break;
	default:
		st->st_mode = S_IFREG | 0666;
		st->st_nlink = 1;
		break;
	}
}

static void null_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = MIB;
	conn->max_read = 0; /* no limit below max_pages */
	/* No writeback cache (never on by default in lowlevel, stated anyway). */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static void null_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	if (parent == INO_ROOT && strcmp(name, "data") == 0)
		e.ino = INO_DATA;
	else if (parent == INO_ROOT && strcmp(name, "sink") == 0)
		e.ino = INO_SINK;
	else if (parent == INO_ROOT && strcmp(name, "small") == 0)
		e.ino = INO_SMALL;
	else if (parent == INO_ROOT)
		e.ino = INO_TOPIC;
	else if (parent == INO_TOPIC && strspn(name, "0123456789") == strlen(name))
		e.ino = INO_PART;
	else if (parent == INO_TOPIC || parent == INO_PART)
		e.ino = INO_SINK;
	else {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	e.attr_timeout = 1.0;
	e.entry_timeout = 1.0;
	fill_attr(e.ino, &e.attr);
	fuse_reply_entry(req, &e);
}

static void null_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (ino > INO_SMALL) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 1.0);
}

/* O_TRUNC without atomic_o_trunc arrives here; accept and change nothing. */
static void null_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
			 int to_set, struct fuse_file_info *fi)
{
	(void)attr;
	(void)to_set;
	null_getattr(req, ino, fi);
}

static void null_create(fuse_req_t req, fuse_ino_t parent, const char *name,
			mode_t mode, struct fuse_file_info *fi)
{
	struct fuse_entry_param e;

	(void)mode;
	if (parent == INO_ROOT && (strcmp(name, "data") == 0 || strcmp(name, "small") == 0)) {
		fuse_reply_err(req, EACCES);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = INO_SINK;
	e.attr_timeout = 1.0;
	e.entry_timeout = 1.0;
	fill_attr(INO_SINK, &e.attr);
	fi->direct_io = 1;
	fuse_reply_create(req, &e, fi);
}

static void null_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino == INO_ROOT || ino == INO_TOPIC || ino == INO_PART) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((ino == INO_DATA || ino == INO_SMALL) && (fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EACCES);
		return;
	}
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void null_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	(void)fi;
	if ((ino != INO_DATA && ino != INO_SMALL) || off >= g.size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if ((off_t)size > g.size - off)
		size = (size_t)(g.size - off);
	if (size > MIB)
		size = MIB;
	fuse_reply_buf(req, g.pattern + (size_t)(off % (off_t)g.pattern_len), size);
}

static void null_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		       size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	(void)buf;
	(void)off;
	(void)fi;
	fuse_reply_write(req, size);
}

static void null_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			 struct fuse_file_info *fi)
{
	static const struct {
		const char *name;
		fuse_ino_t ino;
	} ents[] = { { ".", INO_ROOT }, { "..", INO_ROOT }, { "data", INO_DATA },
		     { "sink", INO_SINK }, { "small", INO_SMALL } };
	char buf[512];
	size_t len = 0;

	(void)fi;
	if (ino != INO_ROOT) {
		/* Topic and partition directories list nothing. */
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > sizeof(buf))
		size = sizeof(buf);
	for (size_t i = (size_t)off; i < sizeof(ents) / sizeof(ents[0]); i++) {
		struct stat st;
		size_t n;

		fill_attr(ents[i].ino, &st);
		n = fuse_add_direntry(req, buf + len, size - len, ents[i].name, &st,
				      (off_t)(i + 1));
		if (n > size - len)
			break;
		len += n;
	}
	fuse_reply_buf(req, buf, len);
}

static const struct fuse_lowlevel_ops null_ops = {
	.init = null_init,
	.lookup = null_lookup,
	.getattr = null_getattr,
	.setattr = null_setattr,
	.create = null_create,
	.open = null_open,
	.read = null_read,
	.write = null_write,
	.readdir = null_readdir,
};

/* Loads up to 1 MiB of FILE (whole lines) as the pattern, or the built-in
 * line; then appends a 1 MiB wrap-around copy so any read of up to 1 MiB at
 * any offset is one contiguous slice. */
static int load_pattern(const char *path)
{
	size_t len = 0;
	char *p = malloc(2 * (size_t)MIB + sizeof(default_line));

	if (p == NULL)
		return -ENOMEM;
	if (path != NULL) {
		FILE *f = fopen(path, "rb");

		if (f == NULL) {
			int rc = -errno;

			fprintf(stderr, "nullfs: %s: %s\n", path, strerror(errno));
			free(p);
			return rc;
		}
		len = fread(p, 1, MIB, f);
		fclose(f);
		while (len > 0 && p[len - 1] != '\n')
			len--;
	}
	if (len == 0) {
		len = sizeof(default_line) - 1;
		memcpy(p, default_line, len);
	}
	for (size_t i = 0; i < (size_t)MIB; i++)
		p[len + i] = p[i % len];
	g.pattern = p;
	g.pattern_len = len;
	return 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args;
	struct fuse_cmdline_opts opts = { 0 };
	struct fuse_loop_config *cfg = NULL;
	struct fuse_session *se = NULL;
	const char *pattern = NULL;
	char **fargv;
	int fargc = 0, ret = 1;

	g.size = 100LL * 1000 * 1000;
	fargv = calloc((size_t)argc + 1, sizeof(*fargv));
	if (fargv == NULL)
		return 1;
	for (int i = 0; i < argc; i++) {
		if (strncmp(argv[i], "--size=", 7) == 0)
			g.size = strtoll(argv[i] + 7, NULL, 10);
		else if (strncmp(argv[i], "--pattern=", 10) == 0)
			pattern = argv[i] + 10;
		else
			fargv[fargc++] = argv[i];
	}
	args = (struct fuse_args)FUSE_ARGS_INIT(fargc, fargv);
	if (load_pattern(pattern) != 0)
		goto out_args;
	if (fuse_parse_cmdline(&args, &opts) != 0)
		goto out_pattern;
	if (opts.show_help || opts.show_version || opts.mountpoint == NULL) {
		printf("usage: %s [--size=BYTES] [--pattern=FILE] [-f] MOUNTPOINT\n",
		       argv[0]);
		fuse_cmdline_help();
		ret = opts.mountpoint == NULL && !opts.show_help ? 1 : 0;
		goto out_opts;
	}
	se = fuse_session_new(&args, &null_ops, sizeof(null_ops), NULL);
	if (se == NULL)
		goto out_opts;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out_signals;
	if (fuse_daemonize(opts.foreground) != 0)
		goto out_unmount;
	cfg = fuse_loop_cfg_create();
	if (cfg == NULL)
		goto out_unmount;
	fuse_loop_cfg_set_clone_fd(cfg, (unsigned)opts.clone_fd);
	if (opts.max_threads > 0 && opts.max_threads <= 100000)
		fuse_loop_cfg_set_max_threads(cfg, opts.max_threads);
	fuse_loop_cfg_set_idle_threads(cfg, opts.max_idle_threads);
	ret = fuse_session_loop_mt(se, cfg) != 0;
	fuse_loop_cfg_destroy(cfg);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_opts:
	free(opts.mountpoint);
out_pattern:
	free(g.pattern);
out_args:
	fuse_opt_free_args(&args);
	free(fargv);
	return ret;
}
