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
	RUN(test_append_and_view);
	RUN(test_reader_next);
	RUN(test_segments_and_reopen);
	if (argc > 1 || getenv("TFS_BENCH")) {
		RUN(test_throughput_none);
		RUN(test_throughput_zstd);
	}
	return unit_report("test_partition");
}
