/* test_partition.c - the logstore partition API: append, view, readers,
 * high watermark, segments, sync, reopen, retention, epochs, dedup,
 * follower paths, time lookup, compaction. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../logstore/log.h"
#include "../../logstore/logstore.h"
#include "unit.h"

static struct ls_config cfg_none(void)
{
	struct ls_config c;
	ls_config_default(&c);
	c.compression = LS_CODEC_NONE;
	return c;
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

/* Appends n unkeyed records "<prefix>-<i>" as one batch; sets hw to end. */
static int64_t append_lines(struct ls_partition *p, const char *prefix, int n, int64_t ts)
{
	struct ls_rec *recs = calloc((size_t)n, sizeof(*recs));
	char (*vals)[64] = calloc((size_t)n, 64);
	struct ls_append_result res;
	for (int i = 0; i < n; i++) {
		int len = snprintf(vals[i], 64, "%s-%d", prefix, i);
		recs[i].value = vals[i];
		recs[i].value_len = (uint32_t)len;
	}
	int rc = ls_partition_append(p, recs, (uint32_t)n, ts, NULL, &res);
	CHECK_EQ_INT(rc, 0);
	ls_partition_set_hw(p, res.last_offset + 1);
	free(recs);
	free(vals);
	return rc == 0 ? res.base_offset : -1;
}

/* Reads the whole view from pos into a malloc'd string. */
static char *read_all(struct ls_partition *p, uint64_t pos, char sep, size_t chunk,
                      uint64_t *first_actual)
{
	struct ls_reader *r;
	size_t cap = 1 << 16, len = 0;
	char *out = malloc(cap);
	char *buf = malloc(chunk);
	int first = 1;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	for (;;) {
		uint64_t actual;
		ssize_t n = ls_reader_read_view(r, pos, buf, chunk, sep, &actual);
		CHECK(n >= 0);
		if (n <= 0)
			break;
		if (first && first_actual)
			*first_actual = actual;
		first = 0;
		while (len + (size_t)n + 1 > cap)
			out = realloc(out, cap *= 2);
		memcpy(out + len, buf, (size_t)n);
		len += (size_t)n;
		pos = actual + (uint64_t)n;
	}
	out[len] = '\0';
	ls_reader_close(r);
	free(buf);
	return out;
}

/* A fresh partition is empty; appends get dense offsets; the view is the
 * rendered records and positions add up. */
static void test_append_and_view(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	struct ls_partition *p = open_p(dir, &c);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.start_offset, 0);
	CHECK_EQ_INT(info.end_offset, 0);
	CHECK_EQ_INT(info.hw_pos, 0);
	CHECK_EQ_INT(info.segments, 1);

	struct ls_rec recs[3] = {{NULL, 0, "hello", 5}, {"k", 1, "v", 1}, {NULL, 0, "", 0}};
	struct ls_append_result res;
	CHECK_EQ_INT(ls_partition_append(p, recs, 3, 1000, NULL, &res), 0);
	CHECK_EQ_INT(res.base_offset, 0);
	CHECK_EQ_INT(res.last_offset, 2);
	CHECK_EQ_INT(res.view_end, 6 + 4 + 1);
	CHECK_EQ_INT(res.duplicate, 0);

	/* not visible before the high watermark moves */
	char *s = read_all(p, 0, '\t', 4096, NULL);
	CHECK(strcmp(s, "") == 0);
	free(s);
	ls_partition_set_hw(p, 3);
	s = read_all(p, 0, '\t', 4096, NULL);
	CHECK(strcmp(s, "hello\nk\tv\n\n") == 0);
	free(s);
	s = read_all(p, 7, ':', 4096, NULL); /* mid-record position */
	CHECK(strcmp(s, "\tv\n\n") == 0 || strcmp(s, ":v\n\n") == 0);
	CHECK(strcmp(s, ":v\n\n") == 0);
	free(s);

	CHECK_EQ_INT(append_lines(p, "x", 2, 2000), 3);
	s = read_all(p, 0, '=', 3, NULL); /* tiny reads cross batches */
	CHECK(strcmp(s, "hello\nk=v\n\nx-0\nx-1\n") == 0);
	free(s);

	uint64_t pos;
	CHECK_EQ_INT(ls_partition_pos_of(p, 0, &pos), 0);
	CHECK_EQ_INT(pos, 0);
	CHECK_EQ_INT(ls_partition_pos_of(p, 2, &pos), 0);
	CHECK_EQ_INT(pos, 10);
	CHECK_EQ_INT(ls_partition_pos_of(p, 4, &pos), 0);
	CHECK_EQ_INT(pos, 15);
	CHECK_EQ_INT(ls_partition_pos_of(p, 5, &pos), 0);
	CHECK_EQ_INT(pos, 19);
	CHECK_EQ_INT(ls_partition_pos_of(p, 6, &pos), LS_EOUTOFRANGE);

	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, 5);
	CHECK_EQ_INT(info.high_watermark, 5);
	CHECK_EQ_INT(info.hw_pos, 19);
	CHECK_EQ_INT(info.end_pos, 19);
	CHECK(info.last_append_ms > 0);
	CHECK(info.bytes > 0);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* ls_reader_next walks records in order with keys, nulls and positions,
 * and stops at the high watermark. */
static void test_reader_next(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c;
	ls_config_default(&c); /* zstd */
	struct ls_partition *p = open_p(dir, &c);
	struct ls_rec recs[2] = {{"a", 1, "1", 1}, {"b", 1, NULL, 0}};
	struct ls_append_result res;
	CHECK_EQ_INT(ls_partition_append(p, recs, 2, 500, NULL, &res), 0);
	append_lines(p, "y", 3, 400); /* older ts: made monotonic */
	CHECK_EQ_INT(ls_partition_append(p, recs, 1, 700, NULL, &res), 0); /* not committed */

	struct ls_reader *r;
	struct ls_record rec;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	CHECK_EQ_INT(ls_reader_next(r, 0, &rec), 1);
	CHECK_EQ_INT(rec.offset, 0);
	CHECK(rec.key_len == 1 && memcmp(rec.key, "a", 1) == 0);
	CHECK(rec.value_len == 1 && memcmp(rec.value, "1", 1) == 0);
	CHECK_EQ_INT(rec.view_pos, 0);
	CHECK_EQ_INT(rec.timestamp_ms, 500);
	CHECK_EQ_INT(ls_reader_next(r, 1, &rec), 1);
	CHECK(rec.value == NULL && rec.key_len == 1);
	CHECK_EQ_INT(rec.view_pos, 4);
	CHECK_EQ_INT(ls_reader_next(r, 2, &rec), 1);
	CHECK_EQ_INT(rec.offset, 2);
	CHECK_EQ_INT(rec.timestamp_ms, 500);
	CHECK(rec.key == NULL && rec.value_len == 3 && memcmp(rec.value, "y-0", 3) == 0);
	CHECK_EQ_INT(ls_reader_next(r, 4, &rec), 1);
	CHECK_EQ_INT(rec.offset, 4);
	CHECK_EQ_INT(ls_reader_next(r, 5, &rec), 0);
	ls_partition_set_hw(p, 6);
	CHECK_EQ_INT(ls_reader_next(r, 5, &rec), 1);
	CHECK_EQ_INT(rec.timestamp_ms, 700);
	ls_reader_close(r);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* Small segment_bytes rolls segments; reads cross them; reopen after a clean
 * close restores everything and appends continue. */
static void test_segments_and_reopen(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	c.segment_bytes = 300;
	struct ls_partition *p = open_p(dir, &c);
	char want[1 << 16] = "";
	size_t wl = 0;
	for (int b = 0; b < 40; b++) {
		char pre[16];
		snprintf(pre, sizeof(pre), "b%d", b);
		append_lines(p, pre, 1 + b % 4, 1000 + b);
		for (int i = 0; i < 1 + b % 4; i++)
			wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "%s-%d\n", pre, i);
	}
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK(info.segments > 5);
	CHECK_EQ_INT(info.end_pos, wl);
	char *s = read_all(p, 0, '\t', 100, NULL);
	CHECK(strcmp(s, want) == 0);
	free(s);
	CHECK_EQ_INT(ls_partition_sync(p), 0);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	char clean[4096];
	struct stat st;
	snprintf(clean, sizeof(clean), "%s/clean", dir);
	CHECK_EQ_INT(stat(clean, &st), 0);

	p = open_p(dir, &c);
	struct ls_partition_info info2;
	ls_partition_get_info(p, &info2);
	CHECK_EQ_INT(info2.end_offset, info.end_offset);
	CHECK_EQ_INT(info2.end_pos, info.end_pos);
	CHECK_EQ_INT(info2.high_watermark, info.high_watermark);
	CHECK_EQ_INT(info2.segments, info.segments);
	CHECK_EQ_INT(info2.bytes, info.bytes);
	s = read_all(p, 0, '\t', 1 << 20, NULL);
	CHECK(strcmp(s, want) == 0);
	free(s);
	CHECK_EQ_INT(append_lines(p, "after", 2, 5000), info.end_offset);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* A partition with cleanup: compact and small segments, in a new dir. */
static struct ls_partition *open_compacted(uint64_t segment_bytes)
{
	struct ls_config c;
	ls_config_default(&c);
	c.segment_bytes = segment_bytes;
	c.cleanup = LS_CLEANUP_COMPACT;
	return open_p(unit_tmpdir(), &c);
}

/* Appends one batch of keyed records "k<key>"="v<val>" (val < 0: tombstone). */
static struct ls_append_result append_kv(struct ls_partition *p, const int *keys,
                                         const int *vals, int n, int64_t ts)
{
	struct ls_rec recs[64];
	char kb[64][16], vb[64][16];
	struct ls_append_result res = {0};
	for (int i = 0; i < n; i++) {
		recs[i].key_len = (uint32_t)snprintf(kb[i], 16, "k%d", keys[i]);
		recs[i].key = kb[i];
		if (vals[i] < 0) {
			recs[i].value = NULL;
			recs[i].value_len = 0;
		} else {
			recs[i].value_len = (uint32_t)snprintf(vb[i], 16, "v%d", vals[i]);
			recs[i].value = vb[i];
		}
	}
	CHECK_EQ_INT(ls_partition_append(p, recs, (uint32_t)n, ts, NULL, &res), 0);
	ls_partition_set_hw(p, res.last_offset + 1);
	return res;
}

/* A tombstone in a closed segment younger than a day outlives the values it
 * deleted (a consumer that is behind still sees the delete); in an older
 * segment compaction drops it. */
static void test_compaction_keeps_recent_tombstones(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	int64_t when[2] = {now - 48 * 3600 * 1000LL, now};
	for (int recent = 0; recent < 2; recent++) {
		struct ls_partition *p = open_compacted(200);
		int k = 7, v = 1, dead = -1;
		append_kv(p, &k, &v, 1, when[recent]);
		append_kv(p, &k, &dead, 1, when[recent]); /* the tombstone */
		for (int i = 0; i < 40; i++) { /* more keys: the tombstone's segment closes */
			int fk = 100 + i;
			append_kv(p, &fk, &i, 1, when[recent]);
		}
		CHECK(ls_partition_compact(p) >= 1);
		struct ls_reader *r;
		struct ls_record rec;
		CHECK_EQ_INT(ls_reader_open(p, &r), 0);
		int values = 0, tombstones = 0;
		for (int64_t o = 0; ls_reader_next(r, o, &rec) == 1; o = rec.offset + 1) {
			if (rec.key_len == 2 && memcmp(rec.key, "k7", 2) == 0) {
				values += rec.value != NULL;
				tombstones += rec.value == NULL;
			}
		}
		CHECK_EQ_INT(values, 0);
		CHECK_EQ_INT(tombstones, recent);
		ls_reader_close(r);
		CHECK_EQ_INT(ls_partition_close(p), 0);
	}
}

/* Compaction looks only below the high watermark: records not committed
 * (a cut-off or failed-over leader's, which a truncation may take back) do
 * not supersede committed ones, and segments holding any are not rewritten.
 * Once committed, they do. */
static void test_compaction_counts_only_committed(void)
{
	struct ls_partition *p = open_compacted(200);
	int keys[10], v1[10], v2[10];
	for (int i = 0; i < 10; i++) {
		keys[i] = i;
		v1[i] = 100 + i;
		v2[i] = 200 + i;
	}
	for (int i = 0; i < 10; i++)
		append_kv(p, &keys[i], &v1[i], 1, 1000); /* committed */
	struct ls_partition_info committed;
	ls_partition_get_info(p, &committed);
	/* the same keys again and more, none committed, over several segments */
	struct ls_rec recs[1];
	char kb[16], vb[16];
	struct ls_append_result res;
	for (int i = 0; i < 40; i++) {
		recs[0].key_len = (uint32_t)snprintf(kb, sizeof(kb), "k%d", i < 10 ? i : 50 + i);
		recs[0].key = kb;
		recs[0].value_len = (uint32_t)snprintf(vb, sizeof(vb), "v%d", 200 + i);
		recs[0].value = vb;
		CHECK_EQ_INT(ls_partition_append(p, recs, 1, 2000, NULL, &res), 0);
	}
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK(info.segments > 4);
	CHECK_EQ_INT(info.high_watermark, committed.end_offset);

	CHECK_EQ_INT(ls_partition_compact(p), 0);
	char *s = read_all(p, 0, '\t', 1 << 16, NULL);
	CHECK(strcmp(s, "k0\tv100\nk1\tv101\nk2\tv102\nk3\tv103\nk4\tv104\n"
	                "k5\tv105\nk6\tv106\nk7\tv107\nk8\tv108\nk9\tv109\n") == 0);
	free(s);

	/* a newer leader truncates them away: the committed values remain */
	CHECK_EQ_INT(ls_partition_truncate(p, committed.end_offset), 0);
	CHECK_EQ_INT(append_kv(p, keys, v2, 10, 3000).last_offset, committed.end_offset + 9);
	for (int i = 0; i < 30; i++) { /* more keys: the v2 batch's segment closes */
		int fk = 100 + i;
		append_kv(p, &fk, &i, 1, 3000);
	}
	/* committed now: the v1 values go */
	CHECK(ls_partition_compact(p) >= 10);
	s = read_all(p, 0, '\t', 1 << 16, NULL);
	CHECK(strstr(s, "v100") == NULL && strstr(s, "v109") == NULL);
	CHECK(strstr(s, "k0\tv200\n") != NULL && strstr(s, "k9\tv209\n") != NULL);
	free(s);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* Time lookups find the first batch at or after a timestamp; timestamps
 * are made monotonic. */
static void test_offset_for_time(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	c.segment_bytes = 200;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 20; b++)
		append_lines(p, "t", 2, 1000 + b * 100); /* batch b: offsets 2b, 2b+1 */
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 0), 0);
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 1000), 0);
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 1001), 2);
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 1500), 10);
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 2900), 38);
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 2901), 40);
	/* a batch stamped in the past takes the newest timestamp so far */
	append_lines(p, "old", 1, 10); /* offset 40, stamped 2900 */
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 2900), 38);
	CHECK_EQ_INT(ls_partition_offset_for_time(p, 2901), 41);
	struct ls_reader *r;
	struct ls_record rec;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	CHECK_EQ_INT(ls_reader_next(r, 40, &rec), 1);
	CHECK_EQ_INT(rec.timestamp_ms, 2900);
	ls_reader_close(r);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* Retention removes whole old segments by time and by size, never the
 * active one; the log start moves and is kept across reopen; reads before
 * the start begin at the oldest record. */
static void test_retention(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	c.segment_bytes = 250;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 30; b++)
		append_lines(p, "r", 3, 1000 + b);
	struct ls_partition_info before, info;
	ls_partition_get_info(p, &before);
	CHECK(before.segments > 6);
	CHECK_EQ_INT(ls_partition_enforce_retention(p, 5000), 0); /* nothing set */

	c.retention_ms = 10;
	ls_partition_set_config(p, &c);
	CHECK_EQ_INT(ls_partition_enforce_retention(p, 1010), 0); /* all too young */
	int removed = ls_partition_enforce_retention(p, 1015);
	CHECK(removed > 0);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.segments, before.segments - (uint32_t)removed);
	CHECK(info.start_offset > 0);
	CHECK(info.start_pos > 0);
	CHECK(info.bytes < before.bytes);
	CHECK_EQ_INT(info.end_offset, before.end_offset);
	CHECK_EQ_INT(info.hw_pos, before.hw_pos);
	/* the oldest retained record is the first of its batch at/after ts 1005 */
	struct ls_reader *r;
	struct ls_record rec;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	CHECK_EQ_INT(ls_reader_next(r, 0, &rec), 1);
	/* segments hold two batches: {1000,1001} and {1002,1003} were older
	 * than 1005; {1004,1005} is not wholly older and stays */
	CHECK_EQ_INT(info.start_offset, 12);
	CHECK_EQ_INT(rec.offset, info.start_offset);
	CHECK_EQ_INT(rec.timestamp_ms, 1004);
	CHECK_EQ_INT(rec.view_pos, info.start_pos);
	char buf[64];
	uint64_t actual = 0;
	ssize_t n = ls_reader_read_view(r, 0, buf, sizeof(buf), '\t', &actual);
	CHECK(n > 0);
	CHECK_EQ_INT(actual, info.start_pos);
	CHECK(n > 0 && buf[0] == 'r');
	ls_reader_close(r);

	/* size: keep at most ~600 bytes (plus the active segment) */
	c.retention_ms = -1;
	c.retention_bytes = 600;
	ls_partition_set_config(p, &c);
	CHECK(ls_partition_enforce_retention(p, 0) > 0);
	ls_partition_get_info(p, &info);
	CHECK(info.bytes <= 600 + 250);
	CHECK(info.segments >= 1);
	/* never the active segment, and never data at/after the high watermark */
	c.retention_bytes = 0;
	ls_partition_set_config(p, &c);
	ls_partition_set_hw(p, info.end_offset - 1);
	ls_partition_enforce_retention(p, 0);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.segments, 1);
	CHECK_EQ_INT(info.start_offset, 84); /* the active segment: 84..89 */
	CHECK_EQ_INT(ls_partition_pos_of(p, 0, &actual), LS_EOUTOFRANGE);
	ls_partition_set_hw(p, info.end_offset);
	char *s = read_all(p, 0, '\t', 100, &actual);
	CHECK_EQ_INT(actual, info.start_pos);
	CHECK(strcmp(s, "r-0\nr-1\nr-2\nr-0\nr-1\nr-2\n") == 0);
	free(s);
	CHECK_EQ_INT(ls_partition_close(p), 0);

	struct ls_partition_info again;
	p = open_p(dir, &c);
	ls_partition_get_info(p, &again);
	CHECK_EQ_INT(again.start_offset, info.start_offset);
	CHECK_EQ_INT(again.start_pos, info.start_pos);
	CHECK_EQ_INT(again.end_pos, info.end_pos);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* A reader that stopped inside a record when retention removed it gets the
 * rest of that record (from the batch it holds) before the oldest retained
 * one: the two are never glued into one line. */
static void test_retention_under_a_reader(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	c.segment_bytes = 250;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 30; b++)
		append_lines(p, "record", 3, 1000 + b);
	struct ls_reader *r;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	char buf[64];
	uint64_t actual = 0;
	CHECK_EQ_INT(ls_reader_read_view(r, 0, buf, 4, '\t', &actual), 4); /* "reco" */
	CHECK(memcmp(buf, "reco", 4) == 0);
	c.retention_ms = 10;
	ls_partition_set_config(p, &c);
	CHECK(ls_partition_enforce_retention(p, 1015) > 0);
	ssize_t n = ls_reader_read_view(r, 4, buf, sizeof(buf), '\t', &actual);
	CHECK_EQ_INT(n, 5);
	CHECK(n == 5 && memcmp(buf, "rd-0\n", 5) == 0);
	CHECK_EQ_INT(actual, 4);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	n = ls_reader_read_view(r, 9, buf, sizeof(buf), '\t', &actual);
	CHECK(n > 0 && memcmp(buf, "record-0\n", 9) == 0);
	CHECK_EQ_INT(actual, info.start_pos);
	ls_reader_close(r);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* A quiet partition whose only (active) segment is wholly past retention
 * empties: the segment is rolled, then removed; positions stay stable. */
static void test_retention_of_active_segment(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	c.retention_ms = 1000;
	struct ls_partition *p = open_p(dir, &c);
	append_lines(p, "old", 3, 5000);
	CHECK_EQ_INT(ls_partition_enforce_retention(p, 5500), 0); /* still young */
	ls_partition_set_hw(p, 2);
	CHECK_EQ_INT(ls_partition_enforce_retention(p, 9000), 0); /* not all committed */
	ls_partition_set_hw(p, 3);
	CHECK_EQ_INT(ls_partition_enforce_retention(p, 9000), 1);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.segments, 1);
	CHECK_EQ_INT(info.start_offset, 3);
	CHECK_EQ_INT(info.end_offset, 3);
	CHECK_EQ_INT(info.start_pos, 18);
	CHECK_EQ_INT(info.hw_pos, 18);
	char *s = read_all(p, 0, '\t', 100, NULL);
	CHECK(strcmp(s, "") == 0);
	free(s);
	CHECK_EQ_INT(append_lines(p, "new", 1, 9000), 3);
	uint64_t actual;
	s = read_all(p, 0, '\t', 100, &actual);
	CHECK(strcmp(s, "new-0\n") == 0);
	CHECK_EQ_INT(actual, 18);
	free(s);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* The follower path: batches read from a leader append unchanged on a
 * follower, which then shows the same view; damage and gaps are refused
 * whole. */
static void test_replication_path(void)
{
	const char *ldir = unit_tmpdir(), *fdir = unit_tmpdir();
	struct ls_config c;
	ls_config_default(&c);
	c.segment_bytes = 500;
	struct ls_partition *l = open_p(ldir, &c), *f = open_p(fdir, &c);
	CHECK_EQ_INT(ls_partition_set_leader_epoch(l, 3), 0);
	for (int b = 0; b < 25; b++)
		append_lines(l, "rep", 1 + b % 5, 100 + b);
	struct ls_partition_info li, fi;
	ls_partition_get_info(l, &li);

	static uint8_t buf[1 << 16];
	size_t need = 0;
	/* too small for the first batch: need says how much */
	CHECK_EQ_INT(ls_partition_read_batches(l, 0, buf, 10, &need), 0);
	CHECK(need > 10);
	CHECK_EQ_INT(ls_partition_read_batches(l, li.end_offset, buf, sizeof(buf), &need), 0);
	CHECK_EQ_INT(need, 0);

	/* a damaged copy is refused and appends nothing */
	ssize_t n = ls_partition_read_batches(l, 0, buf, 300, &need);
	CHECK(n > 0);
	buf[n - 3] ^= 1;
	tfs_log_set_level(TFS_LOG_ERROR);
	CHECK_EQ_INT(ls_partition_append_batches(f, buf, (size_t)n), LS_ECORRUPT);
	buf[n - 3] ^= 1;
	/* a gap is refused */
	ssize_t n2 = ls_partition_read_batches(l, 5, buf, sizeof(buf), &need);
	CHECK(n2 > 0);
	CHECK_EQ_INT(ls_partition_append_batches(f, buf, (size_t)n2), LS_EOUTOFRANGE);
	tfs_log_set_level(TFS_LOG_WARN);
	ls_partition_get_info(f, &fi);
	CHECK_EQ_INT(fi.end_offset, 0);

	/* fetch loop in small pieces */
	int64_t at = 0;
	while (at < li.end_offset) {
		n = ls_partition_read_batches(l, at, buf, 700, &need);
		CHECK(n > 0);
		if (n <= 0)
			break;
		CHECK_EQ_INT(ls_partition_append_batches(f, buf, (size_t)n), 0);
		ls_partition_get_info(f, &fi);
		at = fi.end_offset;
	}
	ls_partition_get_info(f, &fi);
	CHECK_EQ_INT(fi.end_offset, li.end_offset);
	CHECK_EQ_INT(fi.end_pos, li.end_pos);
	CHECK_EQ_INT(fi.high_watermark, 0); /* followers learn the HW separately */
	ls_partition_set_hw(f, fi.end_offset);
	char *a = read_all(l, 0, '\t', 1000, NULL), *b = read_all(f, 0, '\t', 1000, NULL);
	CHECK(strcmp(a, b) == 0);
	free(a);
	free(b);
	/* the leader epoch travelled with the batches */
	CHECK_EQ_INT(ls_partition_epoch_end_offset(f, 3), fi.end_offset);

	/* all of it in one fetch: the follower's segments roll at segment_bytes
	 * as the leader's do (retention deletes whole segments) */
	const char *gdir = unit_tmpdir();
	struct ls_partition *g = open_p(gdir, &c);
	n = ls_partition_read_batches(l, 0, buf, sizeof(buf), &need);
	CHECK(n > 0 && (size_t)n > 4 * c.segment_bytes);
	CHECK_EQ_INT(ls_partition_append_batches(g, buf, (size_t)n), 0);
	struct ls_partition_info gi;
	ls_partition_get_info(g, &gi);
	CHECK_EQ_INT(gi.end_offset, li.end_offset);
	CHECK(gi.segments >= li.segments - 1 && gi.segments <= li.segments + 1);
	CHECK(gi.segments > 4);
	CHECK_EQ_INT(ls_partition_close(g), 0);
	CHECK_EQ_INT(ls_partition_close(l), 0);
	CHECK_EQ_INT(ls_partition_close(f), 0);
}

/* Truncation removes whole batches from an offset on, across segments;
 * appends continue there with the right view position, also after reopen. */
static void test_truncate(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	c.segment_bytes = 200;
	struct ls_partition *p = open_p(dir, &c);
	for (int b = 0; b < 20; b++)
		append_lines(p, "tr", 2, b);
	struct ls_partition_info info;
	uint64_t pos10;
	CHECK_EQ_INT(ls_partition_pos_of(p, 10, &pos10), 0);
	char *full = read_all(p, 0, '\t', 1000, NULL);
	CHECK_EQ_INT(ls_partition_truncate(p, 10), 0);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, 10);
	CHECK_EQ_INT(info.end_pos, pos10);
	CHECK_EQ_INT(info.high_watermark, 10);
	CHECK_EQ_INT(info.hw_pos, pos10);
	char *s = read_all(p, 0, '\t', 1000, NULL);
	CHECK(strlen(s) == pos10 && strncmp(s, full, pos10) == 0);
	free(s);
	/* inside a batch: the whole batch goes */
	CHECK_EQ_INT(ls_partition_truncate(p, 7), 0);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, 6);
	CHECK_EQ_INT(ls_partition_truncate(p, 100), 0); /* past the end: nothing */
	CHECK_EQ_INT(append_lines(p, "new", 3, 50), 6);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	p = open_p(dir, &c);
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, 9);
	ls_partition_set_hw(p, 9);
	s = read_all(p, 0, '\t', 1000, NULL);
	uint64_t pos6;
	CHECK_EQ_INT(ls_partition_pos_of(p, 6, &pos6), 0);
	CHECK(strncmp(s, full, pos6) == 0 && strcmp(s + pos6, "new-0\nnew-1\nnew-2\n") == 0);
	free(s);
	free(full);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* The leader-epoch cache answers KIP-101 end offsets, follows truncation
 * and survives reopen. */
static void test_leader_epochs(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	struct ls_partition *p = open_p(dir, &c);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 0), 0); /* current epoch: log end */
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 1), -1);
	CHECK_EQ_INT(ls_partition_set_leader_epoch(p, 1), 0); /* replaces the empty epoch 0 */
	append_lines(p, "e1", 3, 1);              /* 0..2 in epoch 1 */
	CHECK_EQ_INT(ls_partition_set_leader_epoch(p, 2), 0);
	append_lines(p, "e2", 2, 2);              /* 3..4 in epoch 2 */
	CHECK_EQ_INT(ls_partition_set_leader_epoch(p, 5), 0);
	append_lines(p, "e5", 4, 3);              /* 5..8 in epoch 5 */
	CHECK_EQ_INT(ls_partition_set_leader_epoch(p, 4), -EINVAL); /* backwards */
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 0), -1);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 1), 3);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 2), 5);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 3), 5); /* unknown epoch in between */
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 5), 9);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 6), -1);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.leader_epoch, 5);
	CHECK_EQ_INT(ls_partition_close(p), 0);

	p = open_p(dir, &c);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 1), 3);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 5), 9);
	/* Offset 4 is inside batch 3..4: the log ends at 3 and epochs 2 and 5
	 * lose all their records, so their entries go (an entry starting at the
	 * new end would stop an older epoch's refetched batches from
	 * re-establishing theirs); epoch 1 is the latest, ending at the log end. */
	CHECK_EQ_INT(ls_partition_truncate(p, 4), 0);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 1), 3);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 2), -1);
	CHECK_EQ_INT(ls_partition_epoch_end_offset(p, 5), -1);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* A retried producer batch (same id, epoch, sequence) is not appended again
 * and reports the original offsets, also after reopen; an older epoch is
 * fenced. */
static void test_idempotent_producer(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	struct ls_partition *p = open_p(dir, &c);
	struct ls_rec recs[2] = {{NULL, 0, "a", 1}, {NULL, 0, "b", 1}};
	struct ls_producer prod = {7, 0, 0};
	struct ls_append_result r1, r2, r3;
	append_lines(p, "x", 1, 1);
	CHECK_EQ_INT(ls_partition_append(p, recs, 2, 1, &prod, &r1), 0);
	CHECK_EQ_INT(r1.base_offset, 1);
	CHECK_EQ_INT(r1.duplicate, 0);
	CHECK_EQ_INT(ls_partition_append(p, recs, 2, 1, &prod, &r2), 0);
	CHECK_EQ_INT(r2.duplicate, 1);
	CHECK_EQ_INT(r2.base_offset, 1);
	CHECK_EQ_INT(r2.last_offset, 2);
	CHECK_EQ_INT(r2.view_end, r1.view_end);
	prod.base_sequence = 2;
	CHECK_EQ_INT(ls_partition_append(p, recs, 1, 1, &prod, &r3), 0);
	CHECK_EQ_INT(r3.duplicate, 0);
	CHECK_EQ_INT(r3.base_offset, 3);
	struct ls_producer other = {8, 0, 0}; /* another producer, same sequence */
	CHECK_EQ_INT(ls_partition_append(p, recs, 2, 1, &other, &r3), 0);
	CHECK_EQ_INT(r3.duplicate, 0);
	CHECK_EQ_INT(ls_partition_close(p), 0);

	p = open_p(dir, &c);
	prod.base_sequence = 0;
	CHECK_EQ_INT(ls_partition_append(p, recs, 2, 1, &prod, &r2), 0);
	CHECK_EQ_INT(r2.duplicate, 1);
	CHECK_EQ_INT(r2.base_offset, 1);
	prod.producer_epoch = 1; /* a new epoch starts over */
	CHECK_EQ_INT(ls_partition_append(p, recs, 2, 1, &prod, &r2), 0);
	CHECK_EQ_INT(r2.duplicate, 0);
	prod.producer_epoch = 0;
	CHECK_EQ_INT(ls_partition_append(p, recs, 2, 1, &prod, &r2), -ESTALE);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, 8);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* The producer table keeps the 8192 producers that appended most recently:
 * one more forgets the least recent one (whose retry then appends again),
 * and appending again makes a producer recent. */
static void test_producer_eviction(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	struct ls_partition *p = open_p(dir, &c);
	struct ls_rec rec = {NULL, 0, "a", 1};
	struct ls_append_result r;
	enum { MAX = 8192 };
	for (int64_t id = 1; id <= MAX; id++) {
		struct ls_producer prod = {id, 0, 0};
		CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, &prod, &r), 0);
		CHECK_EQ_INT(r.duplicate, 0);
	}
	struct ls_producer first = {1, 0, 1}; /* producer 1 appends again: recent */
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, &first, &r), 0);
	struct ls_producer extra = {MAX + 1, 0, 0}; /* evicts producer 2 */
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, &extra, &r), 0);
	struct ls_producer two = {2, 0, 0}, three = {3, 0, 0};
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, &two, &r), 0);
	CHECK_EQ_INT(r.duplicate, 0); /* forgotten: appended again */
	first.base_sequence = 0;
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, &first, &r), 0);
	CHECK_EQ_INT(r.duplicate, 1); /* kept */
	CHECK_EQ_INT(r.base_offset, 0);
	/* Producer 2's return evicted producer 3, the oldest left. */
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, &three, &r), 0);
	CHECK_EQ_INT(r.duplicate, 0);
	struct ls_producer last = {MAX, 0, 0};
	CHECK_EQ_INT(ls_partition_append(p, &rec, 1, 1, &last, &r), 0);
	CHECK_EQ_INT(r.duplicate, 1);
	CHECK_EQ_INT(r.base_offset, MAX - 1);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* Compaction keeps the newest record per key (and unkeyed records), drops
 * tombstones in closed segments older than a day, and leaves offsets and view positions of
 * kept records unchanged; reads in holes skip to the next record. */
static void test_compaction(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c;
	ls_config_default(&c); /* zstd: rewritten batches are recompressed */
	c.segment_bytes = 300;
	c.cleanup = LS_CLEANUP_COMPACT;
	struct ls_partition *p = open_p(dir, &c);
	/* 40 batches of 4 records over 10 keys; key 3 deleted at the end */
	static int64_t newest[1100];
	static uint64_t newest_pos[1100];
	for (int b = 0; b < 40; b++) {
		int keys[4], vals[4];
		for (int i = 0; i < 4; i++) {
			keys[i] = (b * 7 + i * 3) % 10;
			if (i == 1 && b % 5 == 0)
				keys[i] = 1000 + b; /* never superseded: a survivor mid-batch */
			vals[i] = b * 4 + i;
		}
		struct ls_append_result r = append_kv(p, keys, vals, 4, b);
		(void)r;
	}
	int tk = 3, tv = -1;
	append_kv(p, &tk, &tv, 1, 100); /* tombstone for k3 in the active segment */
	int one = 1, v1 = 999;
	append_kv(p, &one, &v1, 1, 101);
	struct ls_partition_info before;
	ls_partition_get_info(p, &before);
	CHECK(before.segments > 5);
	/* remember the newest offset and position of each key */
	struct ls_reader *r;
	struct ls_record rec;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	for (int k = 0; k < 1100; k++)
		newest[k] = -1;
	for (int64_t o = 0; ls_reader_next(r, o, &rec) == 1; o = rec.offset + 1) {
		int k = atoi((const char *)rec.key + 1);
		newest[k] = rec.offset;
		newest_pos[k] = rec.view_pos;
	}
	char *full = read_all(p, 0, '\t', 4096, NULL);

	int removed = ls_partition_compact(p);
	CHECK(removed > 100);
	struct ls_partition_info after;
	ls_partition_get_info(p, &after);
	CHECK_EQ_INT(after.end_offset, before.end_offset);
	CHECK_EQ_INT(after.end_pos, before.end_pos);
	CHECK(after.bytes < before.bytes);

	/* every remaining record: newest of its key (or in the active segment),
	 * at its old position with its old bytes */
	int seen = 0;
	for (int64_t o = 0; ls_reader_next(r, o, &rec) == 1; o = rec.offset + 1) {
		int k = atoi((const char *)rec.key + 1);
		if (rec.offset < before.end_offset - 2) {
			CHECK_EQ_INT(rec.offset, newest[k]);
			CHECK(k != 3);
		}
		CHECK_EQ_INT(rec.view_pos, rec.offset == newest[k] ? newest_pos[k] : rec.view_pos);
		size_t len = rec.key_len + 1 + rec.value_len + 1;
		CHECK(memcmp(full + rec.view_pos, rec.key, rec.key_len) == 0);
		CHECK(!rec.value ||
		      memcmp(full + rec.view_pos + rec.key_len + 1, rec.value, rec.value_len) == 0);
		CHECK(full[rec.view_pos + len - 1] == '\n');
		seen++;
	}
	CHECK(seen >= 9 + 8 && seen <= 12 + 8);
	/* asked for any offset, in any order, a reader gives the first kept
	 * record at or after it: an offset in a gap just before the batch it
	 * holds must not skip that batch */
	static int64_t kept[64];
	int nkept = 0;
	for (int64_t o = 0; nkept < 64 && ls_reader_next(r, o, &rec) == 1; o = rec.offset + 1)
		kept[nkept++] = rec.offset;
	for (int64_t o = after.end_offset - 1; o >= 0; o--) {
		int64_t want = -1;
		for (int i = 0; i < nkept && want < 0; i++)
			if (kept[i] >= o)
				want = kept[i];
		int got = ls_reader_next(r, o, &rec);
		CHECK_EQ_INT(got, want >= 0 ? 1 : 0);
		if (got == 1)
			CHECK_EQ_INT(rec.offset, want);
		got = ls_reader_next(r, o, &rec); /* the same question twice */
		if (got == 1)
			CHECK_EQ_INT(rec.offset, want);
	}
	/* the view: reading from 0 gives the records with holes skipped */
	uint64_t actual;
	char buf[256];
	ssize_t n = ls_reader_read_view(r, 0, buf, sizeof(buf), '\t', &actual);
	CHECK(n > 0);
	CHECK(actual > 0);
	CHECK(memcmp(buf, full + actual, (size_t)n) == 0);
	ls_reader_close(r);
	/* positions inside a hole map to the next record */
	uint64_t hole = newest_pos[0] > 0 ? newest_pos[0] - 1 : 0;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	n = ls_reader_read_view(r, hole, buf, 7, '\t', &actual);
	CHECK(n > 0 && actual >= hole && memcmp(buf, full + actual, (size_t)n) == 0);
	ls_reader_close(r);
	CHECK_EQ_INT(ls_partition_compact(p), 0); /* idempotent */
	CHECK_EQ_INT(ls_partition_close(p), 0);

	/* after reopen (clean and unclean alike) the holes are still there */
	p = open_p(dir, &c);
	ls_partition_get_info(p, &after);
	CHECK_EQ_INT(after.end_pos, before.end_pos);
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	for (int64_t o = 0; ls_reader_next(r, o, &rec) == 1; o = rec.offset + 1) {
		int k = atoi((const char *)rec.key + 1);
		if (rec.offset < before.end_offset - 2)
			CHECK_EQ_INT(rec.view_pos, newest_pos[k]);
	}
	ls_reader_close(r);

	/* a follower copies the compacted log run by run and gets the same view */
	const char *fdir = unit_tmpdir();
	struct ls_partition *f = open_p(fdir, &c);
	static uint8_t bb[1 << 16];
	int64_t at = 0;
	uint64_t vpos;
	size_t need;
	CHECK_EQ_INT(ls_partition_reset(f, after.start_offset, after.start_pos), 0);
	for (;;) {
		ssize_t got = ls_partition_read_batches_at(p, at, bb, sizeof(bb), &need, &vpos);
		CHECK(got >= 0);
		if (got < 0)
			fprintf(stderr, "read_batches_at(%" PRId64 "): %s\n", at, tfs_strerror((int)got));
		if (got <= 0)
			break;
		CHECK_EQ_INT(ls_partition_append_batches_at(f, bb, (size_t)got, vpos), 0);
		struct ls_partition_info fi;
		ls_partition_get_info(f, &fi);
		at = fi.end_offset;
	}
	struct ls_partition_info fi;
	ls_partition_get_info(f, &fi);
	CHECK_EQ_INT(fi.end_offset, after.end_offset);
	CHECK_EQ_INT(fi.end_pos, after.end_pos);
	ls_partition_set_hw(f, fi.end_offset);
	char *a = read_all(p, 0, '\t', 100, NULL), *b = read_all(f, 0, '\t', 100, NULL);
	CHECK(strcmp(a, b) == 0);
	free(a);
	free(b);
	CHECK_EQ_INT(ls_partition_close(f), 0);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	free(full);
}

/* Reads every record with ls_reader_read_records (buffers of `size`, at most
 * max a call) and checks the bytes against the view, each call's first/next
 * against ls_reader_next, and that a call never skips a record. */
static void check_read_records(struct ls_partition *p, char sep, size_t size, uint32_t max)
{
	char *view = read_all(p, 0, sep, 4096, NULL);
	size_t vlen = strlen(view), got_len = 0;
	char *got = malloc(vlen + 1);
	char *buf = malloc(size);
	struct ls_reader *r, *rn;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	CHECK_EQ_INT(ls_reader_open(p, &rn), 0);
	int64_t o = 0;
	for (;;) {
		struct ls_records_res res;
		struct ls_record rec;
		ssize_t n = ls_reader_read_records(r, o, buf, size, sep, max, &res);
		int has = ls_reader_next(rn, o, &rec);
		if (n == 0) {
			CHECK_EQ_INT(has, 0);
			break;
		}
		if (n == -EMSGSIZE) {
			CHECK_EQ_INT(has, 1);
			CHECK(res.need > size);
			CHECK_EQ_INT((int64_t)res.need,
			             (int64_t)((rec.key ? rec.key_len + 1 : 0) + rec.value_len + 1));
			o = rec.offset + 1; /* skip it, as a test */
			char *v = read_all(p, rec.view_pos, sep, 4096, NULL);
			CHECK(got_len + res.need <= vlen);
			memcpy(got + got_len, v, res.need);
			got_len += res.need;
			free(v);
			continue;
		}
		CHECK(n > 0);
		if (n <= 0)
			break;
		CHECK_EQ_INT(has, 1);
		CHECK_EQ_INT(res.first, rec.offset);
		CHECK(res.count >= 1 && (!max || res.count <= max));
		CHECK((size_t)n <= size);
		CHECK(res.next > res.first);
		/* records first .. next-1 are exactly `count` records */
		uint32_t k = 0;
		for (int64_t q = res.first; q < res.next; q = rec.offset + 1) {
			CHECK_EQ_INT(ls_reader_next(rn, q, &rec), 1);
			if (rec.offset >= res.next)
				break;
			k++;
		}
		CHECK_EQ_INT(k, res.count);
		CHECK(got_len + (size_t)n <= vlen);
		if (got_len + (size_t)n > vlen)
			break;
		memcpy(got + got_len, buf, (size_t)n);
		got_len += (size_t)n;
		o = res.next;
	}
	CHECK_EQ_INT(got_len, vlen);
	CHECK(memcmp(got, view, vlen) == 0);
	ls_reader_close(r);
	ls_reader_close(rn);
	free(buf);
	free(got);
	free(view);
}

/* ls_reader_read_records gives the view's bytes of whole records: plain
 * and zstd batches, keys and tombstones, several segments, max_records 1,
 * records too large for the buffer, and compaction holes. */
static void test_read_records(void)
{
	for (int codec = 0; codec < 2; codec++) {
		const char *dir = unit_tmpdir();
		struct ls_config c;
		ls_config_default(&c);
		if (codec == 0)
			c.compression = LS_CODEC_NONE;
		c.segment_bytes = 600;
		c.cleanup = LS_CLEANUP_COMPACT;
		struct ls_partition *p = open_p(dir, &c);
		for (int b = 0; b < 40; b++) {
			int keys[7], vals[7];
			int n = 1 + b % 7;
			for (int i = 0; i < n; i++) {
				keys[i] = (b * 5 + i * 3) % 9;
				vals[i] = (b + i) % 11 == 3 ? -1 : b * 1000000 + i;
			}
			append_kv(p, keys, vals, n, b);
		}
		append_lines(p, "plain", 20, 100);
		static const size_t sizes[] = {4096, 64, 15, 12};
		for (int pass = 0; pass < 2; pass++) {
			for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
				check_read_records(p, '\t', sizes[si], 0);
				check_read_records(p, '=', sizes[si], 1);
				check_read_records(p, '\t', sizes[si], 3);
			}
			if (pass == 0) { /* now with holes */
				int removed = ls_partition_compact(p);
				CHECK(removed > 0);
			}
		}
		CHECK_EQ_INT(ls_partition_close(p), 0);
	}
}

/* The same over large zstd batches, compressed as several frames and read
 * from their rendered views: runs across frames and batches, a read that
 * starts mid-batch, and a high watermark inside the last batch. */
static void test_read_records_large(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c;
	ls_config_default(&c);
	c.compression = LS_CODEC_ZSTD;
	struct ls_partition *p = open_p(dir, &c);
	const char *pfx = "a record long enough for megabyte batches"; /* < 64 */
	append_lines(p, pfx, 20000, 1);
	append_lines(p, pfx, 20000, 2);
	enum { N = 20000 };
	struct ls_rec *recs = calloc(N, sizeof(*recs));
	char (*vals)[96] = calloc(N, 96);
	for (int i = 0; i < N; i++) {
		recs[i].value = vals[i];
		recs[i].value_len = (uint32_t)snprintf(vals[i], 96, "tail %d %s", i, pfx);
	}
	struct ls_append_result res;
	CHECK_EQ_INT(ls_partition_append(p, recs, N, 3, NULL, &res), 0);
	ls_partition_set_hw(p, res.base_offset + 12345); /* inside the third batch */
	free(recs);
	free(vals);
	check_read_records(p, '\t', 65536, 0);
	check_read_records(p, '\t', 4000, 7);
	check_read_records(p, '\t', 1 << 20, 0);

	/* from the middle of the second batch, then the same reader goes back */
	struct ls_reader *r;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	char *buf = malloc(65536);
	struct ls_records_res rr;
	ssize_t n = ls_reader_read_records(r, 27777, buf, 65536, '\t', 0, &rr);
	CHECK(n > 0);
	CHECK_EQ_INT(rr.first, 27777);
	char want[128];
	int wl = snprintf(want, sizeof(want), "%s-%d\n", pfx, 27777 - 20000);
	CHECK(n >= wl && memcmp(buf, want, (size_t)wl) == 0);
	CHECK_EQ_INT(rr.next, 27777 + (int64_t)rr.count);
	n = ls_reader_read_records(r, 3, buf, 65536, '\t', 1, &rr);
	CHECK_EQ_INT(n, (ssize_t)strlen(pfx) + 3);
	CHECK_EQ_INT(rr.first, 3);
	CHECK_EQ_INT(rr.next, 4);
	n = ls_reader_read_records(r, res.base_offset + 12345, buf, 65536, '\t', 0, &rr);
	CHECK_EQ_INT(n, 0); /* at the high watermark */
	free(buf);
	ls_reader_close(r);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

/* A batch damaged on disk is never served: readers get LS_ECORRUPT. */
static void test_corrupt_batch_not_served(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c = cfg_none();
	struct ls_partition *p = open_p(dir, &c);
	append_lines(p, "good", 3, 1);
	append_lines(p, "bad", 3, 2);
	char path[4096];
	snprintf(path, sizeof(path), "%s/00000000000000000000.log", dir);
	struct stat st;
	CHECK_EQ_INT(stat(path, &st), 0);
	FILE *fp = fopen(path, "r+");
	fseek(fp, st.st_size - 4, SEEK_SET);
	fputc('X', fp);
	fclose(fp);
	struct ls_reader *r;
	char buf[256];
	uint64_t actual;
	struct ls_record rec;
	tfs_log_set_level(TFS_LOG_ERROR + 1);
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	CHECK_EQ_INT(ls_reader_read_view(r, 0, buf, 18, '\t', &actual), 18);
	/* the rest of the good batch comes first, the damaged one fails */
	CHECK_EQ_INT(ls_reader_read_view(r, 18, buf, sizeof(buf), '\t', &actual), 3);
	CHECK_EQ_INT(ls_reader_read_view(r, 21, buf, sizeof(buf), '\t', &actual), LS_ECORRUPT);
	CHECK_EQ_INT(ls_reader_next(r, 3, &rec), LS_ECORRUPT);
	ls_reader_close(r);
	tfs_log_set_level(TFS_LOG_WARN);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

#include <pthread.h>

struct worker {
	struct ls_partition *p;
	int id, n;
	int fail;
};

static void *writer(void *arg)
{
	struct worker *w = arg;
	char val[64];
	for (int i = 0; i < w->n; i++) {
		struct ls_rec recs[3];
		for (int k = 0; k < 3; k++) {
			recs[k].key = NULL;
			recs[k].value = val;
			recs[k].value_len = (uint32_t)snprintf(val, sizeof(val), "w%d-%05d", w->id, i);
		}
		struct ls_append_result res;
		if (ls_partition_append(w->p, recs, 3, i, NULL, &res) != 0)
			w->fail++;
		ls_partition_set_hw(w->p, res.last_offset + 1);
		if (i % 50 == 0 && ls_partition_sync(w->p) != 0)
			w->fail++;
	}
	return NULL;
}

static void *reader(void *arg)
{
	struct worker *w = arg;
	struct ls_reader *r;
	char buf[4096];
	if (ls_reader_open(w->p, &r) != 0) {
		w->fail++;
		return NULL;
	}
	uint64_t pos = 0;
	for (int i = 0; i < w->n; i++) {
		uint64_t actual;
		ssize_t n = ls_reader_read_view(r, pos, buf, sizeof(buf), '\t', &actual);
		if (n < 0 || actual != pos)
			w->fail++;
		/* every record is "wN-NNNNN\n": 9 bytes */
		for (ssize_t k = 0; k < n; k++)
			if ((pos + (uint64_t)k) % 9 == 8 ? buf[k] != '\n' : buf[k] == '\n')
				w->fail++;
		if (n > 0)
			pos += (uint64_t)n;
	}
	ls_reader_close(r);
	return NULL;
}

/* Concurrent appenders, syncers and readers: offsets stay dense, readers
 * only ever see whole records, everything is there at the end. */
static void test_concurrency(void)
{
	const char *dir = unit_tmpdir();
	struct ls_config c;
	ls_config_default(&c);
	c.segment_bytes = 8192;
	struct ls_partition *p = open_p(dir, &c);
	pthread_t th[6];
	struct worker w[6];
	for (int i = 0; i < 6; i++) {
		w[i] = (struct worker){p, i, 400, 0};
		pthread_create(&th[i], NULL, i < 4 ? writer : reader, &w[i]);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ_INT(w[i].fail, 0);
	}
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	CHECK_EQ_INT(info.end_offset, 4 * 400 * 3);
	CHECK_EQ_INT(info.end_pos, 4 * 400 * 3 * 9);
	CHECK_EQ_INT(ls_partition_close(p), 0);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Throughput: 100 MB of 100-byte records in 1 MiB appends, then read back
 * with 1 MiB reads. Prints the numbers; checks only correctness. */
static void measure(enum ls_codec codec)
{
	const char *dir = unit_tmpdir();
	struct ls_config c;
	ls_config_default(&c);
	c.compression = codec;
	struct ls_partition *p = open_p(dir, &c);
	enum { PER = 10485, TOTAL = 100 * 1000 * 1000 };
	static struct ls_rec recs[PER];
	static char vals[PER][100];
	const char *words[] = {"GET", "POST", "/index.html", "/api/v1/orders", "200", "404",
	                       "Mozilla/5.0", "curl/8.1", "10.0.0.", "-"};
	srand(1);
	for (int i = 0; i < PER; i++) {
		int n = 0;
		while (n < 99) {
			const char *w = words[rand() % 10];
			int l = snprintf(vals[i] + n, (size_t)(100 - n), "%s%d ", w, rand() % 1000);
			n += l;
		}
		recs[i].value = vals[i];
		recs[i].value_len = 99;
	}
	double t0 = now_s();
	uint64_t bytes = 0;
	int64_t ts = 1;
	struct ls_append_result res;
	while (bytes < TOTAL) {
		if (ls_partition_append(p, recs, PER, ts++, NULL, &res) != 0) {
			CHECK(0);
			break;
		}
		bytes += (uint64_t)PER * 100;
	}
	double t1 = now_s();
	ls_partition_set_hw(p, res.last_offset + 1);
	struct ls_reader *r;
	CHECK_EQ_INT(ls_reader_open(p, &r), 0);
	char *buf = malloc(1 << 20);
	uint64_t pos = 0, got = 0;
	ssize_t n;
	while ((n = ls_reader_read_view(r, pos, buf, 1 << 20, '\t', NULL)) > 0) {
		pos += (uint64_t)n;
		got += (uint64_t)n;
	}
	double t2 = now_s();
	CHECK_EQ_INT(got, bytes);
	struct ls_partition_info info;
	ls_partition_get_info(p, &info);
	printf("# %s: append %.0f MB in %.3f s (%.0f MB/s), read %.3f s (%.0f MB/s), "
	       "on disk %.1f MB\n",
	       codec == LS_CODEC_ZSTD ? "zstd" : "none", (double)bytes / 1e6, t1 - t0,
	       (double)bytes / 1e6 / (t1 - t0), t2 - t1, (double)got / 1e6 / (t2 - t1),
	       (double)info.bytes / 1e6);
	free(buf);
	ls_reader_close(r);
	CHECK_EQ_INT(ls_partition_close(p), 0);
	CHECK_EQ_INT(ls_partition_destroy(dir), 0);
}

static void test_throughput_none(void) { measure(LS_CODEC_NONE); }
static void test_throughput_zstd(void) { measure(LS_CODEC_ZSTD); }

int main(int argc, char **argv)
{
	(void)argv;
	tfs_log_set_level(TFS_LOG_WARN);
	RUN(test_append_and_view);
	RUN(test_reader_next);
	RUN(test_segments_and_reopen);
	RUN(test_offset_for_time);
	RUN(test_retention);
	RUN(test_retention_under_a_reader);
	RUN(test_retention_of_active_segment);
	RUN(test_replication_path);
	RUN(test_truncate);
	RUN(test_leader_epochs);
	RUN(test_idempotent_producer);
	RUN(test_producer_eviction);
	RUN(test_compaction);
	RUN(test_compaction_keeps_recent_tombstones);
	RUN(test_compaction_counts_only_committed);
	RUN(test_read_records);
	RUN(test_read_records_large);
	RUN(test_corrupt_batch_not_served);
	RUN(test_concurrency);
	if (argc > 1 || getenv("TFS_BENCH")) {
		RUN(test_throughput_none);
		RUN(test_throughput_zstd);
	}
	return unit_report("test_partition");
}
