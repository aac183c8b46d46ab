/*
 * main.c - the topicfs daemon: command line, node configuration, data
 * directory, mount, daemonising, the FUSE session loop and clean shutdown.
 *
 *   topicfs [-c CONFIG.yaml] [--data DIR] [-f] [-d] [-o OPTS] MOUNTPOINT
 *   topicfs [-o OPTS] SOURCE MOUNTPOINT        (mount.fuse3 / fstab form)
 *
 * SOURCE is a configuration file, or "topicfs"/"none"/"default" for the
 * embedded default. -o config=FILE and -o data=DIR do the same as -c and
 * --data for fstab lines. Every other -o option goes to FUSE.
 *
 * Start-up order: configuration -> data directory -> open all partitions
 * (recovery) -> mount -> daemonise -> background threads (in a cluster: up to
 * 10 s for the quorum) -> ready: the parent exits 0, or with the child's status
 * if the start failed -> session loop. Unmounting (fusermount3 -u) ends the
 * loop; every partition is then synced and closed cleanly.
 */
#define FUSE_USE_VERSION 312
#include <errno.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../logstore/fsutil.h"
#include "../logstore/log.h"
#include "config.h"
#include "cursor.h"
#include "ops.h"
#include "tree.h"

#ifndef TOPICFS_VERSION
#define TOPICFS_VERSION "0.1.0"
#endif

struct cli {
	char *config;
	char *data;
	char *positional[3];
	int npositional;
	int foreground;
	int debug;
	int help;
	int version;
};

enum { KEY_HELP, KEY_VERSION, KEY_FOREGROUND, KEY_DEBUG };

static const struct fuse_opt cli_spec[] = {
	/* "--data %s" matches "--data DIR" and "--data=DIR" (value "=DIR",
	 * stripped in main): fuse_opt applies every template that matches, so
	 * a separate "--data=%s" would be overwritten by it. */
	{"-c %s", offsetof(struct cli, config), 0},
	{"--config %s", offsetof(struct cli, config), 0},
	{"config=%s", offsetof(struct cli, config), 0},
	{"--data %s", offsetof(struct cli, data), 0},
	{"data=%s", offsetof(struct cli, data), 0},
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_END,
};

static int cli_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	(void)out;
	struct cli *c = data;
	switch (key) {
	case KEY_HELP: c->help = 1; return 0;
	case KEY_VERSION: c->version = 1; return 0;
	case KEY_FOREGROUND: c->foreground = 1; return 0;
	case KEY_DEBUG: c->debug = 1; c->foreground = 1; return 1; /* FUSE prints requests */
	case FUSE_OPT_KEY_NONOPT:
		if (c->npositional >= 2) {
			fprintf(stderr, "topicfs: unexpected argument '%s'\n", arg);
			return -1;
		}
		c->positional[c->npositional++] = strdup(arg);
		return 0;
	default:
		return 1; /* FUSE's own options: keep */
	}
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: topicfs [-c CONFIG.yaml] [--data DIR] [-f] [-o OPTIONS] MOUNTPOINT\n"
	        "       topicfs [-o OPTIONS] CONFIG.yaml|topicfs MOUNTPOINT   (fstab form)\n"
	        "\n"
	        "Mounts a topicfs node: topics are directories, partitions are append-only\n"
	        "log files, consumer groups are cursor files.\n"
	        "\n"
	        "options:\n"
	        "  -c, --config FILE   node configuration (YAML); default: embedded single node\n"
	        "      --data DIR      data directory (overrides node.data_dir)\n"
	        "  -f                  stay in the foreground (log to stderr)\n"
	        "  -d                  foreground with FUSE request tracing\n"
	        "  -o OPT[,OPT...]     mount options: config=FILE, data=DIR, allow_other,\n"
	        "                      default_permissions, and other FUSE options\n"
	        "  -h, --help          this text\n"
	        "  -V, --version       version\n"
	        "\n"
	        "Unmount with: fusermount3 -u MOUNTPOINT\n");
}

static void default_data_dir(char *out, size_t size)
{
	const char *home = getenv("HOME");
	const char *xdg = getenv("XDG_DATA_HOME");
	if (geteuid() == 0)
		snprintf(out, size, "/var/lib/topicfs");
	else if (xdg && *xdg)
		snprintf(out, size, "%s/topicfs", xdg);
	else
		snprintf(out, size, "%s/.local/share/topicfs", home ? home : "/tmp");
}

/* Every partition keeps its directory and each segment's log and index
 * open, so the usual soft limit of 1024 open files would stop a node at
 * about 330 partitions:
 * the soft limit goes up to the hard one (at most 1M), as a daemon's
 * LimitNOFILE= would set it, and a hard limit that is still low is logged. */
static void raise_open_files(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t want = rl.rlim_max;
	if (want == RLIM_INFINITY || want > (rlim_t)1 << 20)
		want = (rlim_t)1 << 20;
	if (rl.rlim_cur < want) {
		rlim_t was = rl.rlim_cur;
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
			tfs_info("open files limit raised from %llu to %llu", (unsigned long long)was,
			         (unsigned long long)want);
		else
			rl.rlim_cur = was;
	}
	if (rl.rlim_cur < 8192)
		tfs_warn("open files limit is %llu: each partition keeps at least 3 files open, so "
		         "this node holds at most about %llu partitions; raise the hard limit "
		         "(ulimit -Hn, LimitNOFILE=) for more", (unsigned long long)rl.rlim_cur,
		         (unsigned long long)(rl.rlim_cur > 100 ? (rl.rlim_cur - 100) / 3 : 0));
}

/* Daemonising that reports the start's outcome (fuse_daemonize's parent
 * exits 0 at once): the parent waits on a pipe until the child is ready
 * (exit 0) or ends (exit with its status), so `mount`, fstab and systemd see
 * a failed start as one. Until then the child keeps the caller's stderr and
 * copies its warnings and errors there. Returns 0 in the child, with the
 * pipe's end for daemon_ready in *ready_fd; -1 if it cannot fork. */
static int daemon_fork(int *ready_fd)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		perror("topicfs: pipe");
		return -1;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		perror("topicfs: fork");
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid > 0) {
		close(p[1]);
		char b;
		ssize_t n;
		do
			n = read(p[0], &b, 1);
		while (n < 0 && errno == EINTR);
		if (n == 1)
			_exit(0);
		int st = 0;
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		_exit(WIFEXITED(st) && WEXITSTATUS(st) ? WEXITSTATUS(st) : 1);
	}
	close(p[0]);
	if (setsid() < 0)
		perror("topicfs: setsid");
	if (chdir("/") < 0)
		perror("topicfs: chdir /");
	tfs_log_copy_to_stderr(1);
	*ready_fd = p[1];
	return 0;
}

/* The daemon serves: stdio to /dev/null, and the parent exits 0. */
static void daemon_ready(int ready_fd)
{
	tfs_log_copy_to_stderr(0);
	int nul = open("/dev/null", O_RDWR);
	if (nul >= 0) {
		(void)dup2(nul, STDIN_FILENO);
		(void)dup2(nul, STDOUT_FILENO);
		(void)dup2(nul, STDERR_FILENO);
		if (nul > STDERR_FILENO)
			close(nul);
	}
	char b = 0;
	while (write(ready_fd, &b, 1) < 0 && errno == EINTR)
		;
	close(ready_fd);
}

static int run(struct cli *cli, struct fuse_args *args)
{
	static struct node_config cfg;
	char err[1024];
	node_config_default(&cfg);
	const char *source = cli->npositional == 2 ? cli->positional[0] : NULL;
	const char *mountpoint = cli->positional[cli->npositional - 1];
	if (!cli->config && source && strcmp(source, "topicfs") != 0 &&
	    strcmp(source, "none") != 0 && strcmp(source, "default") != 0)
		cli->config = strdup(source);
	if (cli->config && node_config_load(cli->config, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	tfs_log_set_level(cfg.log_level);
	/* The FUSE options first (libfuse refuses unknown ones here), before
	 * anything touches the data directory. The mount table's SOURCE: the
	 * user's -o fsname= if given. */
	int user_fsname = 0, allow_other = 0;
	for (int i = 1; i < args->argc; i++) {
		user_fsname |= strstr(args->argv[i], "fsname=") != NULL;
		allow_other |= strstr(args->argv[i], "allow_other") != NULL;
	}
	char fsname[PATH_MAX + 16];
	if (user_fsname)
		snprintf(fsname, sizeof(fsname), "-osubtype=topicfs");
	else
		snprintf(fsname, sizeof(fsname), "-ofsname=%s,subtype=topicfs",
		         source ? source : "topicfs");
	if (fuse_opt_add_arg(args, fsname) < 0)
		return 1;
	tfs.se = fuse_session_new(args, &tfs_ops, sizeof(tfs_ops), NULL);
	if (!tfs.se)
		return 1;
	if (cli->data)
		snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s", cli->data);
	if (!cfg.data_dir[0])
		default_data_dir(cfg.data_dir, sizeof(cfg.data_dir));
	int rc = ls_fsutil_mkdir_p(cfg.data_dir);
	if (rc < 0) {
		fprintf(stderr, "topicfs: data directory %s: %s\n", cfg.data_dir, strerror(-rc));
		goto out_early;
	}
	if (!realpath(cfg.data_dir, tfs.data_dir)) {
		fprintf(stderr, "topicfs: data directory %s: %s\n", cfg.data_dir, strerror(errno));
		goto out_early;
	}
	char log_path[PATH_MAX + 32];
	if (cfg.log_file[0])
		snprintf(log_path, sizeof(log_path), "%s", cfg.log_file);
	else
		snprintf(log_path, sizeof(log_path), "%s/topicfs.log", tfs.data_dir);
	if (!cli->foreground || cfg.log_file[0]) {
		rc = tfs_log_open(log_path);
		if (rc < 0) {
			fprintf(stderr, "topicfs: log file %s: %s\n", log_path, strerror(-rc));
			goto out_early;
		}
	}
	printf("topicfs %s: node %u, data directory %s%s%s\n", TOPICFS_VERSION, cfg.id,
	       tfs.data_dir, cli->foreground && !cfg.log_file[0] ? "" : ", log ",
	       cli->foreground && !cfg.log_file[0] ? "" : log_path);
	fflush(stdout);

	raise_open_files();

	char listen[96];
	snprintf(listen, sizeof(listen), "%s:%u", cfg.listen_host, cfg.listen_port);
	struct rep_options ropts = {
		.node_id = cfg.id,
		.data_dir = tfs.data_dir,
		.listen = listen,
		.defaults = cfg.defaults,
		.flush_ms = cfg.flush_ms,
		.retention_check_ms = cfg.retention_check_ms,
		.nvoters = cfg.nvoters,
		.replica_lag_ms = cfg.replica_lag_ms,
		.replica_wait_ms = cfg.replica_wait_ms,
		.node_timeout_ms = cfg.node_timeout_ms,
		.snapshot_entries = cfg.snapshot_entries,
		.leader_rebalance_ms = cfg.leader_rebalance_ms,
	};
	for (unsigned i = 0; i < cfg.nvoters && i < 64; i++) {
		ropts.voters[i].id = cfg.voters[i].id;
		snprintf(ropts.voters[i].address, sizeof(ropts.voters[i].address), "%s:%u",
		         cfg.voters[i].host, cfg.voters[i].port);
	}
	tfs.uid = getuid();
	tfs.gid = getgid();
	clock_gettime(CLOCK_REALTIME, &tfs.start_time);
	rc = rep_open(&ropts, &tfs.rep);
	if (rc == -EBUSY) {
		fprintf(stderr, "topicfs: data directory %s is in use by another topicfs daemon "
		        "(its pid is in %s/lock)\n", tfs.data_dir, tfs.data_dir);
		goto out_early;
	}
	if (rc < 0) {
		fprintf(stderr, "topicfs: cannot open node in %s: %s\n", tfs.data_dir,
		        tfs_strerror(rc));
		goto out_early;
	}


	int status = 1;
	if (fuse_set_signal_handlers(tfs.se) < 0)
		goto out_session;
	/* Absolute: the daemon changes to / when it daemonises, and unmounts by
	 * this path at the end (a relative one would name another mount). */
	static char mp_abs[PATH_MAX];
	if (!realpath(mountpoint, mp_abs)) { /* a dead mount, say: by name */
		char cwd[PATH_MAX];
		int n = mountpoint[0] != '/' && getcwd(cwd, sizeof(cwd))
			? snprintf(mp_abs, sizeof(mp_abs), "%.*s/%s", PATH_MAX / 2, cwd, mountpoint)
			: snprintf(mp_abs, sizeof(mp_abs), "%s", mountpoint);
		if (n < 0 || (size_t)n >= sizeof(mp_abs)) {
			fprintf(stderr, "topicfs: mount point %s: path too long\n", mountpoint);
			goto out_signals;
		}
	}
	mountpoint = mp_abs;
	struct stat mst;
	if (stat(mountpoint, &mst) < 0 && errno == ENOTCONN)
		fprintf(stderr, "topicfs: %s is the dead mount of a daemon that exited without "
		        "unmounting; clear it with: fusermount3 -u %s\n", mountpoint, mountpoint);
	if (fuse_session_mount(tfs.se, mountpoint) < 0) {
		/* libfuse or fusermount3 said why on stderr */
		tfs_error("cannot mount %s: not mounted, exiting", mountpoint);
		goto out_signals;
	}
	tfs_info("mounted %s (data %s)", mountpoint, tfs.data_dir);
	if (allow_other && geteuid() != 0)
		tfs_warn("allow_other by uid %d, not root: this daemon cannot read other users' "
		         "processes in /proc, so a cursor their process closes while a signal "
		         "kills it counts as a normal close (its last read is committed, not "
		         "delivered again), and opening a new group's cursor does not create the "
		         "group (make it with mkdir first); run topicfs as root for other users' "
		         "consumers", (int)geteuid());
	int ready_fd = -1;
	if (cli->foreground ? fuse_daemonize(1) < 0 : daemon_fork(&ready_fd) < 0)
		goto out_unmount;
	struct rep_listener listener = {.partition_grew = tfs_partition_grew};
	rc = rep_start(tfs.rep, &listener);
	if (rc < 0) {
		tfs_error("cannot start background threads: %s", tfs_strerror(rc));
		goto out_unmount;
	}
	/* After daemonising (its threads must be the child's) and after the
	 * node started (in a cluster it needs the transport). */
	rc = rep_groups_open(tfs.rep, cfg.group_start == GROUP_START_LATEST ? REP_GROUP_LATEST
	                                                                    : REP_GROUP_EARLIEST);
	if (rc < 0) {
		tfs_error("cannot open consumer groups in %s: %s", tfs.data_dir, tfs_strerror(rc));
		goto out_unmount;
	}
	rc = cursor_start();
	if (rc < 0) {
		tfs_error("cannot start the cursor thread: %s", tfs_strerror(rc));
		goto out_unmount;
	}
	struct fuse_loop_config *lc = fuse_loop_cfg_create();
	if (!lc)
		goto out_unmount;
	/* Idle workers are never reaped: with fewer idle than max, libfuse ends
	 * and re-creates threads between the 5 requests of every `echo >>`,
	 * which measured 2x slower small appends here. 8 is plenty on 2 cores:
	 * no handler waits on anything but the local disk. */
	fuse_loop_cfg_set_clone_fd(lc, 0);
	/* In a cluster a forwarded write or a remote group call waits on the
	 * network (bounded by replica_wait_ms / the request timeout): allow
	 * more threads so those waits don't hold up local requests. */
	fuse_loop_cfg_set_max_threads(lc, cfg.nvoters ? 64 : 8);
	fuse_loop_cfg_set_idle_threads(lc, 8);
	if (ready_fd >= 0)
		daemon_ready(ready_fd);
	status = fuse_session_loop_mt(tfs.se, lc) < 0 ? 1 : 0;
	rep_stopping(tfs.rep);
	fuse_loop_cfg_destroy(lc);
	tfs_info("unmounting %s", mountpoint);
out_unmount:
	fuse_session_unmount(tfs.se);
out_signals:
	fuse_remove_signal_handlers(tfs.se);
out_session:
	fuse_session_destroy(tfs.se);
	tfs.se = NULL;
	cursor_stop();
	rep_groups_close(tfs.rep);
	rep_close(tfs.rep);
	tfs.rep = NULL;
	tfs_info("stopped; every partition closed cleanly");
	return status;

out_early: /* the data directory is not ours (yet) */
	fuse_session_destroy(tfs.se);
	tfs.se = NULL;
	return 1;
}

/* "--data=DIR" arrives as "=DIR" (see cli_spec). */
static void strip_equals(char *v)
{
	if (v && v[0] == '=')
		memmove(v, v + 1, strlen(v));
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct cli cli = {0};
	int status;
	if (fuse_opt_parse(&args, &cli, cli_spec, cli_proc) < 0) {
		usage(stderr);
		status = 2;
		goto out;
	}
	strip_equals(cli.config);
	strip_equals(cli.data);
	if (cli.help) {
		usage(stdout);
		status = 0;
		goto out;
	}
	if (cli.version) {
		printf("topicfs %s (FUSE %s)\n", TOPICFS_VERSION, fuse_pkgversion());
		status = 0;
		goto out;
	}
	if (cli.npositional < 1) {
		fprintf(stderr, "topicfs: no mount point given\n");
		usage(stderr);
		status = 2;
		goto out;
	}
	status = run(&cli, &args);
out:
	fuse_opt_free_args(&args);
	free(cli.config);
	free(cli.data);
	for (int i = 0; i < cli.npositional; i++)
		free(cli.positional[i]);
	return status;
}
