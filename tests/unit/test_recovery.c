/* test_recovery.c - crash recovery of a partition: torn tails at every byte,
 * flipped bytes, lost or damaged indexes, multi-segment logs, a full disk. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../logstore/fsutil.h"
#include "../../logstore/log.h"
#include "../../logstore/logstore.h"
#include "unit.h"


/* Fault injection: this binary's fdatasync/fsync replace libc's for the
 * statically linked logstore. */
static int fail_syncs;
static int nsyncs;

int fdatasync(int fd)
{
	nsyncs++;
	if (fail_syncs) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_fdatasync, fd);
}

int fsync(int fd)
{
	nsyncs++;
	if (fail_syncs) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_fsync, fd);
}

/* unit_tmpdir() has a fixed budget: the many copies live under one root. */
static char *scratch[4096];
static int nscratch;

static void free_scratch(void)
{
	for (int i = 0; i < nscratch; i++)
		free(scratch[i]);
}

static const char *scratch_dir(void)
{
	static const char *root;
	char d[4096];
	if (!root) {
		root = unit_tmpdir();
		atexit(free_scratch);
	}
	if (nscratch == 4096)
		abort();
	snprintf(d, sizeof(d), "%s/%d", root, nscratch);
	if (ls_fsutil_mkdir_p(d) < 0 || !(scratch[nscratch] = strdup(d)))
		abort();
	return scratch[nscratch++];
}

static struct ls_partition *open_p(const char *dir, const struct ls_config *c)
{
	struct ls_partition *p = NULL;
	int rc = ls_partition_open(dir, c, &p);
	CHECK_EQ_INT(rc, 0);
	if (rc != 0) {
		fprintf(stderr, "open %s: %s\n", dir, tfs_strerror(rc));
		exit(1);
	}
	return p;
}

static void copy_dir(const char *from, const char *to)
{
	DIR *d = opendir(from);
	struct dirent *de;
	CHECK(d != NULL);
	CHECK_EQ_INT(ls_fsutil_mkdir_p(to), 0);
	while (d && (de = readdir(d))) {
		char a[8192], b[8192], buf[65536];
		if (de->d_name[0] == '.')
			continue;
		snprintf(a, sizeof(a), "%s/%s", from, de->d_name);
		snprintf(b, sizeof(b), "%s/%s", to, de->d_name);
		int in = open(a, O_RDONLY), out = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		ssize_t n;
		while ((n = read(in, buf, sizeof(buf))) > 0)
			CHECK_EQ_INT(write(out, buf, (size_t)n), n);
		close(in);
		close(out);
	}
	if (d)
		closedir(d);
}

static char *read_view(struct ls_partition *p)
{
	struct ls_reader *r;
	size_t cap = 1 << 16, len = 0;
	char *out = malloc(cap);
	uint64_t pos = 0, actual;
	ssize_t n;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	for (;;) {
		if (len + 4096 + 1 > cap)
			out = realloc(out, cap *= 2);
		n = ls_reader_read_view(r, pos, out + len, 4096, '\t', &actual);
		CHECK(n >= 0);
		if (n <= 0)
			break;
		len += (size_t)n;
		pos = actual + (uint64_t)n;
	}
	out[len] = '\0';
	ls_reader_close(r);
	return out;
}

/* What a partition looked like after each batch. */
struct snap {
	int64_t end_offset;
	uint64_t end_pos;
	uint64_t seg_size;     /* size of the (single) segment file */
	char *view;
};

static struct snap snaps[16];
static int nsnaps;

static int append_batch(struct ls_partition *p, int b)
{
	char vals[8][80];
	struct ls_rec recs[8];
	int n = 1 + b % 3;
	for (int i = 0; i < n; i++) {
		recs[i].key = b % 2 ? "key" : NULL;
		recs[i].key_len = 3;
		/* compressible, so that zstd batches really are compressed */
		recs[i].value_len = (uint32_t)snprintf(vals[i], sizeof(vals[i]),
		                                       "batch %d rec %d, batch %d rec %d, "
		                                       "batch %d rec %d", b, i, b, i, b, i);
		recs[i].value = vals[i];
	}
	struct ls_append_result res;
	int rc = ls_partition_append(p, recs, (uint32_t)n, 1000 + b, NULL, &res);
	if (rc == 0)
		ls_partition_set_hw(p, res.last_offset + 1);
	return rc;
}

static uint64_t file_size(const char *dir, const char *name)
{
	char path[8192];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Builds a pristine crashed partition of NB batches in one segment: a copy
 * of its directory taken while it was open (no clean marker). */
static const char *build_pristine(enum ls_codec codec, int nb)
{
	const char *dir = scratch_dir();
	const char *crash = scratch_dir();
	struct ls_config c;
	ls_config_default(&c);
	c.compression = codec;
	struct ls_partition *p = open_p(dir, &c);
	nsnaps = 0;
	for (int b = 0; b < nb; b++) {
		CHECK_EQ_INT(append_batch(p, b), 0);
		struct ls_partition_info info;
		ls_partition_get_info(p, &info);
		snaps[nsnaps].end_offset = info.end_offset;
		snaps[nsnaps].end_pos = info.end_pos;
		snaps[nsnaps].seg_size = file_size(dir, "00000000000000000000.log");
		snaps[nsnaps].view = read_view(p);
		nsnaps++;
	}
	CHECK_EQ_INT(ls_partition_sync(p), 0);
	copy_dir(dir, crash);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	/* the last batch has the codec asked for (attributes' low byte) */
	char path[8192];
	uint8_t attr = 0xff;
	snprintf(path, sizeof(path), "%s/00000000000000000000.log", crash);
	int fd = open(path, O_RDONLY);
	CHECK_EQ_INT(pread(fd, &attr, 1, (off_t)snaps[nb - 2].seg_size + 22), 1);
	close(fd);
	CHECK_EQ_INT(attr & 7, codec);
	return crash;
}

static void free_snaps(void)
{
	for (int i = 0; i < nsnaps; i++)
		free(snaps[i].view);
	nsnaps = 0;
}

/* Opens a damaged copy and checks it holds exactly the first `keep` batches,
 * indexes agree (positions of every offset), and appends continue at the
 * right offset and view position, also across a clean reopen. */
static void check_recovered(const char *dir, int keep)
{
	struct ls_config c;
	ls_config_default(&c);
	struct ls_partition *p = open_p(dir, &c);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	const struct snap *s = &snaps[keep - 1];
	CHECK_EQ_INT(info.end_offset, s->end_offset);
	CHECK_EQ_INT(info.end_pos, s->end_pos);
	CHECK_EQ_INT(info.bytes, s->seg_size);
	CHECK_EQ_INT(file_size(dir, "00000000000000000000.log"), s->seg_size);
	CHECK_EQ_INT(file_size(dir, "00000000000000000000.idx"), 32 * keep);
	ls_partition_set_hw(p, info.end_offset);
	char *v = read_view(p);
	CHECK(strcmp(v, s->view) == 0);
	free(v);
	/* every earlier batch boundary maps to its recorded position */
	for (int b = 0; b < keep; b++) {
		uint64_t pos;
		CHECK_EQ_INT(ls_partition_pos_of(p, snaps[b].end_offset, &pos), 0);
		CHECK_EQ_INT(pos, snaps[b].end_pos);
	}
	struct ls_rec rec = {NULL, 0, "after", 5};
	struct ls_append_result res;
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 5000, NULL, &res), 0);
	CHECK_EQ_INT(res.base_offset, s->end_offset);
	CHECK_EQ_INT(res.view_end, s->end_pos + 6);
	CHECK_EQ_INT(ls_partition_close(p), 0);

	p = open_p(dir, &c);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, s->end_offset + 1);
	CHECK_EQ_INT(info.end_pos, s->end_pos + 6);
	ls_partition_set_hw(p, info.end_offset);
	v = read_view(p);
	CHECK(strncmp(v, s->view, strlen(s->view)) == 0 &&
	      strcmp(v + strlen(s->view), "after\n") == 0);
	free(v);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

static void cut_every_byte(enum ls_codec codec)
{
	enum { NB = 5 };
	const char *crash = build_pristine(codec, NB);
	uint64_t from = snaps[NB - 2].seg_size, to = snaps[NB - 1].seg_size;
	CHECK(to > from);
	int before = unit_failed_checks;
	for (uint64_t len = from; len < to && unit_failed_checks == before; len++) {
		const char *d = scratch_dir();
		char path[8192];
		copy_dir(crash, d);
		snprintf(path, sizeof(path), "%s/00000000000000000000.log", d);
		CHECK_EQ_INT(truncate(path, (off_t)len), 0);
		check_recovered(d, NB - 1);
		CHECK_EQ_INT(ls_fsutil_rm_rf(d), 0);
		if (unit_failed_checks != before)
			fprintf(stderr, "  ... at cut length %" PRIu64 "\n", len);
	}
	/* the undamaged copy keeps everything */
	const char *d = scratch_dir();
	copy_dir(crash, d);
	check_recovered(d, NB);
	free_snaps();
}

/* Truncating the segment at every byte of its last batch keeps exactly the
 * whole earlier batches. */
static void test_torn_tail_every_byte_none(void) { cut_every_byte(LS_CODEC_NONE); }
static void test_torn_tail_every_byte_zstd(void) { cut_every_byte(LS_CODEC_ZSTD); }

static void flip_every_byte(enum ls_codec codec)
{
	enum { NB = 4 };
	const char *crash = build_pristine(codec, NB);
	uint64_t from = snaps[NB - 2].seg_size, to = snaps[NB - 1].seg_size;
	int before = unit_failed_checks;
	for (uint64_t at = from; at < to && unit_failed_checks == before; at++) {
		/* bytes 12..15 are partitionLeaderEpoch: outside the CRC in Kafka's
		 * format, so a flip there is undetectable by design */
		if (at - from >= 12 && at - from < 16)
			continue;
		const char *d = scratch_dir();
		char path[8192];
		copy_dir(crash, d);
		snprintf(path, sizeof(path), "%s/00000000000000000000.log", d);
		int fd = open(path, O_RDWR);
		uint8_t b;
		CHECK_EQ_INT(pread(fd, &b, 1, (off_t)at), 1);
		b ^= 0x10;
		CHECK_EQ_INT(pwrite(fd, &b, 1, (off_t)at), 1);
		close(fd);
		check_recovered(d, NB - 1);
		CHECK_EQ_INT(ls_fsutil_rm_rf(d), 0);
		if (unit_failed_checks != before)
			fprintf(stderr, "  ... flipping byte %" PRIu64 " of the last batch\n",
			        at - from);
	}
	free_snaps();
}

/* A flipped byte anywhere in the last batch (but its epoch) drops that batch. */
static void test_flipped_byte_none(void) { flip_every_byte(LS_CODEC_NONE); }
static void test_flipped_byte_zstd(void) { flip_every_byte(LS_CODEC_ZSTD); }

/* A missing, garbage or stale .idx is rebuilt from the .log. */
static void test_index_rebuilt(void)
{
	enum { NB = 6 };
	const char *crash = build_pristine(LS_CODEC_NONE, NB);
	for (int mode = 0; mode < 3; mode++) {
		const char *d = scratch_dir();
		char path[8192];
		copy_dir(crash, d);
		snprintf(path, sizeof(path), "%s/00000000000000000000.idx", d);
		if (mode == 0) {
			CHECK_EQ_INT(unlink(path), 0);
		} else if (mode == 1) {
			int fd = open(path, O_WRONLY | O_TRUNC);
			CHECK_EQ_INT(write(fd, "garbage garbage garbage garbage garbage", 39), 39);
			close(fd);
		} else {
			CHECK_EQ_INT(truncate(path, 64), 0); /* stale: two entries */
			/* and pretend the shutdown was clean: the check still catches it */
			snprintf(path, sizeof(path), "%s/clean", d);
			close(open(path, O_WRONLY | O_CREAT, 0644));
		}
		check_recovered(d, NB);
	}
	free_snaps();
}

/* Several segments: a crash leaves a torn active segment; closed segments
 * keep their data, the torn tail goes, offsets and positions continue. */
static void test_multi_segment_crash(void)
{
	const char *dir = scratch_dir(), *crash = scratch_dir();
	struct ls_config c;
	ls_config_default(&c);
	c.segment_bytes = 400;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 30; b++)
		CHECK_EQ_INT(append_batch(p, b), 0);
	struct ls_partition_info full;
	ls_partition_get_info(p, &full);
	char *view_full = read_view(p);
	CHECK(full.segments >= 4);
	copy_dir(dir, crash);
	CHECK_EQ_INT(ls_partition_close(p), 0);

	/* find the active segment and tear its last 5 bytes off */
	char name[256] = "";
	DIR *dd = opendir(crash);
	struct dirent *de;
	while ((de = readdir(dd)))
		if (strstr(de->d_name, ".log") && strcmp(de->d_name, name) > 0)
			snprintf(name, sizeof(name), "%s", de->d_name);
	closedir(dd);
	uint64_t sz = file_size(crash, name);
	char path[8192];
	snprintf(path, sizeof(path), "%s/%s", crash, name);
	CHECK_EQ_INT(truncate(path, (off_t)(sz - 5)), 0);

	p = open_p(crash, &c);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK(info.end_offset < full.end_offset);
	CHECK(info.end_offset >= full.end_offset - 3);
	CHECK_EQ_INT(info.segments, full.segments);
	ls_partition_set_hw(p, info.end_offset);
	char *v = read_view(p);
	CHECK_EQ_INT(strlen(v), info.end_pos);
	CHECK(strncmp(v, view_full, strlen(v)) == 0);
	free(v);
	CHECK_EQ_INT(append_batch(p, 99), 0);
	struct ls_partition_info after;
	ls_partition_get_info(p, &after);
	CHECK_EQ_INT(after.end_offset, info.end_offset + 1);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	free(view_full);
}

/* Appends refused for lack of space leave nothing behind and the partition
 * writable: by the file-size limit (EFBIG), and on a real full tmpfs
 * (ENOSPC) when the test may mount one. */
static void test_write_failure_is_undone(void)
{
	const char *dir = scratch_dir();
	struct ls_config c;
	ls_config_default(&c);
	c.compression = LS_CODEC_NONE;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 3; b++)
		CHECK_EQ_INT(append_batch(p, b), 0);
	struct ls_partition_info before, info;
	ls_partition_get_info(p, &before);

	struct rlimit old, lim;
	signal(SIGXFSZ, SIG_IGN);
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = before.bytes + 10;
	CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &lim), 0);
	static char big[200];
	memset(big, 'z', sizeof(big));
	struct ls_rec rec = {NULL, 0, big, sizeof(big)};
	struct ls_append_result res;
	int rc = ls_partition_append(p, &rec, 1, 9000, NULL, &res);
	CHECK(rc == -EFBIG || rc == -ENOSPC);
	CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &old), 0);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.sticky_error, 0);
	CHECK_EQ_INT(info.end_offset, before.end_offset);
	CHECK_EQ_INT(info.bytes, before.bytes);
	CHECK_EQ_INT(file_size(dir, "00000000000000000000.log"), before.bytes);
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 9000, NULL, &res), 0);
	CHECK_EQ_INT(res.base_offset, before.end_offset);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	p = open_p(dir, &c);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, before.end_offset + 1);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

static void test_full_tmpfs(void)
{
	const char *dir = scratch_dir();
	if (unshare(CLONE_NEWNS) < 0 ||
	    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("tmpfs", dir, "tmpfs", 0, "size=64k") < 0) {
		printf("# skipped: cannot mount a small tmpfs (%s)\n", strerror(errno));
		return;
	}
	char pdir[4096];
	snprintf(pdir, sizeof(pdir), "%s/p", dir);
	struct ls_config c;
	ls_config_default(&c);
	c.compression = LS_CODEC_NONE;
	/* a reserve to free later */
	char junk[4096];
	static char filler[16384];
	snprintf(junk, sizeof(junk), "%s/junk", dir);
	int fd = open(junk, O_WRONLY | O_CREAT, 0644);
	CHECK_EQ_INT(write(fd, filler, sizeof(filler)), sizeof(filler));
	close(fd);
	struct ls_partition *p = open_p(pdir, &c);
	static char val[1000];
	memset(val, 'q', sizeof(val));
	struct ls_rec rec = {NULL, 0, val, sizeof(val)};
	struct ls_append_result res;
	int rc, n = 0;
	tfs_log_set_level(TFS_LOG_ERROR);
	while ((rc = ls_partition_append(p, &rec, 1, 1, NULL, &res)) == 0)
		n++;
	tfs_log_set_level(TFS_LOG_INFO);
	CHECK_EQ_INT(rc, -ENOSPC);
	CHECK(n > 10);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.sticky_error, 0);
	CHECK_EQ_INT(info.end_offset, n);
	CHECK_EQ_INT(file_size(pdir, "00000000000000000000.log"), info.bytes);
	/* free space: the next append works again */
	CHECK_EQ_INT(unlink(junk), 0);
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, NULL, &res), 0);
	CHECK_EQ_INT(res.base_offset, n);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	p = open_p(pdir, &c);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, n + 1);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	CHECK_EQ_INT(umount(dir), 0);
}

static void copy_file(const char *from_dir, const char *from, const char *to_dir,
                      const char *to)
{
	char a[8192], b[8192], buf[65536];
	snprintf(a, sizeof(a), "%s/%s", from_dir, from);
	snprintf(b, sizeof(b), "%s/%s", to_dir, to);
	int in = open(a, O_RDONLY), out = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ssize_t n;
	CHECK(in >= 0 && out >= 0);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		CHECK_EQ_INT(write(out, buf, (size_t)n), n);
	close(in);
	close(out);
}

/* Everything a reader can observe, as one string: offsets, positions, view. */
static char *describe(const char *dir)
{
	struct ls_config c;
	ls_config_default(&c);
	struct ls_partition *p = open_p(dir, &c);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	ls_partition_set_hw(p, info.end_offset);
	size_t cap = 1 << 16, len = 0;
	char *out = malloc(cap);
	len += (size_t)snprintf(out, cap, "end %" PRId64 " pos %" PRIu64 "\n",
	                        info.end_offset, info.end_pos);
	struct ls_reader *r;
	struct ls_record rec;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	for (int64_t o = 0; ls_reader_next(r, o, &rec) == 1; o = rec.offset + 1) {
		if (len + 128 > cap)
			out = realloc(out, cap *= 2);
		len += (size_t)snprintf(out + len, cap - len, "%" PRId64 "@%" PRIu64 " %.*s\n",
		                        rec.offset, rec.view_pos, (int)rec.value_len,
		                        rec.value ? (const char *)rec.value : "");
	}
	ls_reader_close(r);
	char *v = read_view(p);
	out = realloc(out, len + strlen(v) + 1);
	strcpy(out + len, v);
	free(v);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	return out;
}

/* A crash at any step of compaction leaves either the old or the new
 * segment, never a mix: unfinished *.cleaned files are ignored, a complete
 * *.swap is finished at open. */
static void test_compaction_crash(void)
{
	const char *dir = scratch_dir(), *pre = scratch_dir(), *post = scratch_dir();
	struct ls_config c;
	ls_config_default(&c);
	c.segment_bytes = 1 << 20;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 20; b++) {
		char vals[4][16], keys[4][16];
		struct ls_rec recs[4];
		for (int i = 0; i < 4; i++) {
			recs[i].key_len = (uint32_t)snprintf(keys[i], 16, "k%d", (b + i) % 6);
			recs[i].key = keys[i];
			recs[i].value_len = (uint32_t)snprintf(vals[i], 16, "v%d", b * 4 + i);
			recs[i].value = vals[i];
		}
		struct ls_append_result res;
		CHECK_EQ_INT(ls_partition_append(p, recs, 4, b, NULL, &res), 0);
	}
	/* roll by shrinking the segment size: the first segment becomes closed */
	c.segment_bytes = 1;
	ls_partition_set_config(p, &c);
	struct ls_rec last = {"k0", 2, "final", 5};
	struct ls_append_result res;
	CHECK_EQ_INT(ls_partition_append(p, &last, 1, 99, NULL, &res), 0);
	ls_partition_set_hw(p, res.last_offset + 1); /* compaction looks below it */
	CHECK_EQ_INT(ls_partition_close(p), 0);
	copy_dir(dir, pre);
	p = open_p(dir, &c);
	CHECK(ls_partition_compact(p) > 0);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	copy_dir(dir, post);
	char *want_pre = describe(pre), *want_post = describe(post);
	CHECK(strcmp(want_pre, want_post) != 0);
	const char *seg = "00000000000000000000";
	char l[64], i[64], name[64];
	snprintf(l, sizeof(l), "%s.log", seg);
	snprintf(i, sizeof(i), "%s.idx", seg);

	for (int step = 0; step < 5; step++) {
		const char *d = scratch_dir();
		copy_dir(step == 4 ? post : pre, d);
		const char *want = want_pre;
		if (step == 0) { /* crashed while writing the cleaned files */
			snprintf(name, sizeof(name), "%s.log.cleaned", seg);
			copy_file(post, l, d, name);
			char path[8192];
			snprintf(path, sizeof(path), "%s/%s", d, name);
			CHECK_EQ_INT(truncate(path, 30), 0);
		} else if (step == 1) { /* index promoted to .swap, log not yet */
			snprintf(name, sizeof(name), "%s.idx.swap", seg);
			copy_file(post, i, d, name);
			snprintf(name, sizeof(name), "%s.log.cleaned", seg);
			copy_file(post, l, d, name);
		} else if (step == 2) { /* both .swap: finished at open */
			snprintf(name, sizeof(name), "%s.idx.swap", seg);
			copy_file(post, i, d, name);
			snprintf(name, sizeof(name), "%s.log.swap", seg);
			copy_file(post, l, d, name);
			want = want_post;
		} else if (step == 3) { /* the index already renamed over the old one */
			copy_file(post, i, d, i);
			snprintf(name, sizeof(name), "%s.log.swap", seg);
			copy_file(post, l, d, name);
			want = want_post;
		} else { /* partition.meta and the clean marker lost: holes survive;
		          * an orphan index (its log removed) is cleaned up */
			copy_file(post, i, d, "00000000000000000999.idx");
			char path[8192];
			snprintf(path, sizeof(path), "%s/partition.meta", d);
			CHECK_EQ_INT(unlink(path), 0);
			snprintf(path, sizeof(path), "%s/clean", d);
			CHECK_EQ_INT(unlink(path), 0);
			want = want_post;
		}
		char *got = describe(d);
		CHECK(strcmp(got, want) == 0);
		if (strcmp(got, want) != 0)
			fprintf(stderr, "  ... compaction crash step %d:\n%s\n--- want:\n%s\n", step,
			        got, want);
		free(got);
		/* no leftovers */
		DIR *dd = opendir(d);
		struct dirent *de;
		while ((de = readdir(dd)))
			CHECK(!strstr(de->d_name, ".swap") && !strstr(de->d_name, ".cleaned"));
		closedir(dd);
	}
	free(want_pre);
	free(want_post);
}

/* A failed fsync makes the partition read-only for good (never retried);
 * a reopen recovers it. */
static void test_failed_fsync_is_sticky(void)
{
	const char *dir = scratch_dir();
	struct ls_config c;
	ls_config_default(&c);
	struct ls_partition *p = open_p(dir, &c);
	CHECK_EQ_INT(append_batch(p, 0), 0);
	CHECK_EQ_INT(ls_partition_sync(p), 0);
	CHECK_EQ_INT(append_batch(p, 1), 0);
	fail_syncs = 1;
	CHECK_EQ_INT(ls_partition_sync(p), -EIO);
	fail_syncs = 0;
	int calls = nsyncs;
	CHECK_EQ_INT(ls_partition_sync(p), LS_ESTICKY);
	CHECK_EQ_INT(nsyncs, calls); /* no retry */
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.sticky_error, -EIO);
	CHECK_EQ_INT(append_batch(p, 2), LS_ESTICKY);
	CHECK_EQ_INT(tfs_errno(LS_ESTICKY), EROFS);
	CHECK_EQ_INT(ls_partition_close(p), LS_ESTICKY);
	char path[8192];
	snprintf(path, sizeof(path), "%s/clean", dir);
	CHECK(access(path, F_OK) < 0); /* no clean marker */
	p = open_p(dir, &c);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.sticky_error, 0);
	CHECK_EQ_INT(info.end_offset, 1 + 2); /* both batches were in the page cache */
	CHECK_EQ_INT(append_batch(p, 3), 0);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* Group commit: a sync with nothing new appended costs no fsync; a roll's
 * fsync failure is sticky too. */
static void test_sync_is_shared(void)
{
	const char *dir = scratch_dir();
	struct ls_config c;
	ls_config_default(&c);
	struct ls_partition *p = open_p(dir, &c);
	CHECK_EQ_INT(append_batch(p, 0), 0);
	CHECK_EQ_INT(ls_partition_sync(p), 0);
	int calls = nsyncs;
	for (int i = 0; i < 10; i++)
		CHECK_EQ_INT(ls_partition_sync(p), 0);
	CHECK_EQ_INT(nsyncs, calls);
	CHECK_EQ_INT(append_batch(p, 1), 0);
	CHECK_EQ_INT(ls_partition_sync(p), 0);
	CHECK_EQ_INT(nsyncs, calls + 1);

	c.segment_bytes = 1; /* the next append rolls, and the roll fsyncs */
	ls_partition_set_config(p, &c);
	fail_syncs = 1;
	CHECK_EQ_INT(append_batch(p, 2), -EIO);
	fail_syncs = 0;
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.sticky_error, -EIO);
	CHECK_EQ_INT(info.segments, 1);
	CHECK_EQ_INT(ls_partition_close(p), LS_ESTICKY);
}

/* Builds a compacted partition (holes in closed segments) in a new dir. */
static const char *build_compacted(void)
{
	const char *dir = scratch_dir();
	struct ls_config c;
	ls_config_default(&c);
	c.segment_bytes = 400;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 30; b++) {
		char vals[4][16], keys[4][16];
		struct ls_rec recs[4];
		for (int i = 0; i < 4; i++) {
			recs[i].key_len = (uint32_t)snprintf(keys[i], 16, "k%d",
			                                     i == 2 ? 100 + b : (b * 3 + i) % 7);
			recs[i].key = keys[i];
			recs[i].value_len = (uint32_t)snprintf(vals[i], 16, "v%d", b * 4 + i);
			recs[i].value = vals[i];
		}
		struct ls_append_result res;
		CHECK_EQ_INT(ls_partition_append(p, recs, 4, b, NULL, &res), 0);
		ls_partition_set_hw(p, res.last_offset + 1); /* compaction looks below it */
	}
	CHECK(ls_partition_compact(p) > 0);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	return dir;
}

/* A follower that copied a compacted log (holes and all) and then crashed
 * recovers the same offsets and view positions as the leader. */
static void test_follower_holes_survive_crash(void)
{
	const char *ldir = build_compacted(), *fdir = scratch_dir(), *crash = scratch_dir();
	char *want = describe(ldir);
	struct ls_config c;
	ls_config_default(&c);
	c.segment_bytes = 100000; /* one follower segment: holes in the active one */
	struct ls_partition *l = open_p(ldir, &c), *f = open_p(fdir, &c);
	struct ls_partition_info li, fi;
	ls_partition_get_info(l, &li);
	CHECK_EQ_INT(ls_partition_reset(f, li.start_offset, li.start_pos), 0);
	static uint8_t buf[1 << 16];
	size_t need;
	uint64_t vpos;
	int runs = 0;
	for (;;) {
		ls_partition_get_info(f, &fi);
		ssize_t n = ls_partition_read_batches_at(l, fi.end_offset, buf, sizeof(buf),
		                                         &need, &vpos);
		CHECK(n >= 0);
		if (n <= 0)
			break;
		CHECK_EQ_INT(ls_partition_append_batches_at(f, buf, (size_t)n, vpos), 0);
		runs++;
	}
	CHECK(runs > 3);
	ls_partition_get_info(f, &fi);
	CHECK_EQ_INT(fi.end_offset, li.end_offset);
	CHECK_EQ_INT(fi.end_pos, li.end_pos);
	copy_dir(fdir, crash); /* as if the follower died here */
	CHECK_EQ_INT(ls_partition_close(f), 0);
	CHECK_EQ_INT(ls_partition_close(l), 0);
	char *got = describe(crash);
	CHECK(strcmp(got, want) == 0);
	if (strcmp(got, want) != 0)
		fprintf(stderr, "got:\n%s\nwant:\n%s\n", got, want);
	free(got);
	got = describe(fdir);
	CHECK(strcmp(got, want) == 0);
	free(got);
	free(want);
}

int main(void)
{
	tfs_log_set_level(TFS_LOG_ERROR); /* the damage is deliberate */
	RUN(test_torn_tail_every_byte_none);
	RUN(test_torn_tail_every_byte_zstd);
	RUN(test_flipped_byte_none);
	RUN(test_flipped_byte_zstd);
	RUN(test_index_rebuilt);
	RUN(test_multi_segment_crash);
	RUN(test_write_failure_is_undone);
	RUN(test_compaction_crash);
	RUN(test_follower_holes_survive_crash);
	RUN(test_failed_fsync_is_sticky);
	RUN(test_sync_is_shared);
	RUN(test_full_tmpfs);
	return unit_report("test_recovery");
}
