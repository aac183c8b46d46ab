/*
 * test_metrics.c - the .cluster/metrics text is valid Prometheus text
 * exposition 0.0.4, checked by parsing it back line by line:
 *   - a family is "# HELP name text" then "# TYPE name type", each name once;
 *   - every other line is a sample "name{label="value",...} value" whose name
 *     is the family's (or, for a histogram, name_bucket/_sum/_count), right
 *     after the family's declaration (samples of a family are contiguous);
 *   - label values use only the escapes \\ \" \n;
 *   - histogram buckets are cumulative, le ascending, end at +Inf, and
 *     +Inf == _count.
 * And that the numbers are the ones recorded.
 */
#include "../../fs/metrics.h"
#include "unit.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXFAM 64
#define MAXLBL 4

struct sample {
	char name[128];
	int nlabels;
	char lname[MAXLBL][32];
	char lvalue[MAXLBL][256];   /* unescaped */
	double value;
};

struct expo {
	int nfam;
	char fam[MAXFAM][128];
	char type[MAXFAM][32];
	int nsamples;
	struct sample *samples;     /* all samples, in order */
	int *sample_fam;            /* family index of each sample */
	int errors;                 /* format violations found */
};

static int is_name_start(int c) { return isalpha(c) || c == '_' || c == ':'; }
static int is_name_char(int c) { return isalnum(c) || c == '_' || c == ':'; }

static void bad(struct expo *e, int lineno, const char *what, const char *line)
{
	fprintf(stderr, "metrics line %d: %s: %s\n", lineno, what, line);
	e->errors++;
}

/* Parses "name{l="v",...} value" strictly; 0 or -1. */
static int parse_sample(const char *p, struct sample *s)
{
	size_t n = 0;

	memset(s, 0, sizeof(*s));
	if (!is_name_start((unsigned char)*p))
		return -1;
	while (is_name_char((unsigned char)*p) && n < sizeof(s->name) - 1)
		s->name[n++] = *p++;
	if (*p == '{') {
		p++;
		for (;;) {
			if (s->nlabels == MAXLBL)
				return -1;
			n = 0;
			if (!(isalpha((unsigned char)*p) || *p == '_'))
				return -1;
			while ((isalnum((unsigned char)*p) || *p == '_') && n < 31)
				s->lname[s->nlabels][n++] = *p++;
			if (*p++ != '=' || *p++ != '"')
				return -1;
			n = 0;
			while (*p != '"') {
				char c = *p++;
				if (c == '\0' || c == '\n')
					return -1;
				if (c == '\\') {
					c = *p++;
					if (c == 'n')
						c = '\n';
					else if (c != '\\' && c != '"')
						return -1;
				}
				if (n == 255)
					return -1;
				s->lvalue[s->nlabels][n++] = c;
			}
			p++;
			s->nlabels++;
			if (*p == ',') {
				p++;
				continue;
			}
			if (*p++ != '}')
				return -1;
			break;
		}
	}
	if (*p++ != ' ')
		return -1;
	if (strcmp(p, "+Inf") == 0) {
		s->value = INFINITY;
		return 0;
	}
	char *end;
	s->value = strtod(p, &end);
	if (end == p || *end != '\0')
		return -1;
	return 0;
}

static const char *label(const struct sample *s, const char *name)
{
	for (int i = 0; i < s->nlabels; i++)
		if (strcmp(s->lname[i], name) == 0)
			return s->lvalue[i];
	return NULL;
}

/* Does sample name belong to family f of type t? */
static int belongs(const char *name, const char *f, const char *t)
{
	size_t fl = strlen(f);
	if (strcmp(name, f) == 0)
		return strcmp(t, "histogram") != 0;
	if (strcmp(t, "histogram") != 0 || strncmp(name, f, fl) != 0)
		return 0;
	return strcmp(name + fl, "_bucket") == 0 || strcmp(name + fl, "_sum") == 0 ||
	       strcmp(name + fl, "_count") == 0;
}

static void parse_expo(const char *text, size_t len, struct expo *e)
{
	char *copy = malloc(len + 1), *line, *save = NULL;
	int lineno = 0, cur = -1, want_type = 0;

	memset(e, 0, sizeof(*e));
	e->samples = calloc(4096, sizeof(*e->samples));
	e->sample_fam = calloc(4096, sizeof(int));
	memcpy(copy, text, len);
	copy[len] = '\0';
	if (len == 0 || text[len - 1] != '\n')
		bad(e, 0, "output does not end with a newline", "");
	for (size_t i = 0; i < len; i++)
		if (text[i] == '\n' && i + 1 < len && text[i + 1] == '\n')
			bad(e, 0, "empty line", "");
	for (line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char name[128], rest[256];
		lineno++;
		if (strncmp(line, "# HELP ", 7) == 0) {
			if (want_type)
				bad(e, lineno, "HELP without TYPE before it", line);
			if (sscanf(line + 7, "%127s %255[^\n]", name, rest) != 2)
				bad(e, lineno, "malformed HELP", line);
			for (int f = 0; f < e->nfam; f++)
				if (strcmp(e->fam[f], name) == 0)
					bad(e, lineno, "family declared twice", line);
			if (e->nfam == MAXFAM) {
				bad(e, lineno, "too many families", line);
				break;
			}
			cur = e->nfam++;
			snprintf(e->fam[cur], sizeof(e->fam[cur]), "%s", name);
			want_type = 1;
		} else if (strncmp(line, "# TYPE ", 7) == 0) {
			char type[32];
			if (!want_type || sscanf(line + 7, "%127s %31s", name, type) != 2 ||
			    strcmp(name, e->fam[cur]) != 0)
				bad(e, lineno, "TYPE not right after its HELP", line);
			else if (strcmp(type, "counter") && strcmp(type, "gauge") &&
			         strcmp(type, "histogram"))
				bad(e, lineno, "unknown type", line);
			else
				snprintf(e->type[cur], sizeof(e->type[cur]), "%s", type);
			want_type = 0;
		} else if (line[0] == '#') {
			bad(e, lineno, "unexpected comment", line);
		} else {
			struct sample *s = &e->samples[e->nsamples];
			if (want_type || cur < 0) {
				bad(e, lineno, "sample before its family's TYPE", line);
				continue;
			}
			if (parse_sample(line, s) != 0) {
				bad(e, lineno, "malformed sample", line);
				continue;
			}
			if (!belongs(s->name, e->fam[cur], e->type[cur]))
				bad(e, lineno, "sample outside its family", line);
			if (strcmp(e->type[cur], "counter") == 0 &&
			    strcmp(s->name + strlen(s->name) - 6, "_total") != 0)
				bad(e, lineno, "counter name without _total", line);
			if (e->nsamples < 4095)
				e->sample_fam[e->nsamples++] = cur;
		}
	}
	if (want_type)
		bad(e, lineno, "HELP at the end without TYPE", "");
	free(copy);
}

static void free_expo(struct expo *e)
{
	free(e->samples);
	free(e->sample_fam);
}

static int fam_index(const struct expo *e, const char *name)
{
	for (int f = 0; f < e->nfam; f++)
		if (strcmp(e->fam[f], name) == 0)
			return f;
	return -1;
}

/* The sample named name with label l1=v1 (and l2=v2 if l2), or NULL. */
static const struct sample *find(const struct expo *e, const char *name, const char *l1,
                                 const char *v1, const char *l2, const char *v2)
{
	for (int i = 0; i < e->nsamples; i++) {
		const struct sample *s = &e->samples[i];
		const char *a = label(s, l1), *b = l2 ? label(s, l2) : NULL;
		if (strcmp(s->name, name) == 0 && a && strcmp(a, v1) == 0 &&
		    (!l2 || (b && strcmp(b, v2) == 0)))
			return s;
	}
	return NULL;
}

/* Histogram invariants for every op: le ascending, cumulative, +Inf last and
 * equal to _count. */
static void check_histograms(const struct expo *e, const char *fam)
{
	char bucket[160], count[160];
	snprintf(bucket, sizeof(bucket), "%s_bucket", fam);
	snprintf(count, sizeof(count), "%s_count", fam);
	for (int op = 0; op < MOP_COUNT; op++) {
		const char *opn = metrics_op_name((enum metrics_op)op);
		double prev_le = -1, prev_v = 0, inf_v = -1;
		int nb = 0;
		for (int i = 0; i < e->nsamples; i++) {
			const struct sample *s = &e->samples[i];
			const char *o = label(s, "op");
			if (strcmp(s->name, bucket) != 0 || !o || strcmp(o, opn) != 0)
				continue;
			const char *le = label(s, "le");
			CHECK(le != NULL);
			if (!le)
				continue;
			double lev = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, NULL);
			CHECK(lev > prev_le);
			CHECK(s->value >= prev_v);
			prev_le = lev;
			prev_v = s->value;
			if (isinf(lev))
				inf_v = s->value;
			nb++;
		}
		CHECK_EQ_INT(nb, METRICS_NBUCKETS);
		CHECK(isinf(prev_le));
		const struct sample *c = find(e, count, "op", opn, NULL, NULL);
		CHECK(c != NULL);
		if (c)
			CHECK(c->value == inf_v);
	}
}

/* A fresh render has every family declared once, valid, with zeros. */
static void test_requests_format_empty(void)
{
	struct mbuf b = { 0 };
	struct expo e;

	metrics_reset();
	metrics_render_requests(&b);
	CHECK(!b.oom);
	parse_expo(b.data, b.len, &e);
	CHECK_EQ_INT(e.errors, 0);
	CHECK_EQ_INT(e.nfam, 3);
	CHECK(fam_index(&e, "topicfs_requests_total") >= 0);
	CHECK(fam_index(&e, "topicfs_request_errors_total") >= 0);
	int h = fam_index(&e, "topicfs_request_duration_seconds");
	CHECK(h >= 0);
	if (h >= 0)
		CHECK(strcmp(e.type[h], "histogram") == 0);
	CHECK_EQ_INT(e.nsamples, MOP_COUNT * (2 + METRICS_NBUCKETS + 2));
	for (int i = 0; i < e.nsamples; i++)
		CHECK(e.samples[i].value == 0);
	check_histograms(&e, "topicfs_request_duration_seconds");
	free_expo(&e);
	mbuf_free(&b);
}

/* Recorded requests show up in the right op, error and bucket series. */
static void test_requests_values(void)
{
	struct mbuf b = { 0 };
	struct expo e;
	const struct sample *s;

	metrics_reset();
	metrics_request(MOP_READ, 40000, 0);        /* <= 50us */
	metrics_request(MOP_READ, 50000, 0);        /* le is inclusive */
	metrics_request(MOP_READ, 2000000, 5);      /* 2ms, an error */
	metrics_request(MOP_READ, 20000000000ull, 0); /* 20 s: +Inf only */
	metrics_request(MOP_WRITE, 1000000, 28);
	metrics_request((enum metrics_op)999, 1, 0); /* out of range -> other */
	metrics_render_requests(&b);
	parse_expo(b.data, b.len, &e);
	CHECK_EQ_INT(e.errors, 0);
	check_histograms(&e, "topicfs_request_duration_seconds");

	s = find(&e, "topicfs_requests_total", "op", "read", NULL, NULL);
	CHECK(s && s->value == 4);
	s = find(&e, "topicfs_request_errors_total", "op", "read", NULL, NULL);
	CHECK(s && s->value == 1);
	s = find(&e, "topicfs_request_errors_total", "op", "write", NULL, NULL);
	CHECK(s && s->value == 1);
	s = find(&e, "topicfs_requests_total", "op", "other", NULL, NULL);
	CHECK(s && s->value == 1);
	s = find(&e, "topicfs_request_duration_seconds_bucket", "op", "read", "le", "0.00005");
	CHECK(s && s->value == 2);
	s = find(&e, "topicfs_request_duration_seconds_bucket", "op", "read", "le", "0.001");
	CHECK(s && s->value == 2);
	s = find(&e, "topicfs_request_duration_seconds_bucket", "op", "read", "le", "0.0025");
	CHECK(s && s->value == 3);
	s = find(&e, "topicfs_request_duration_seconds_bucket", "op", "read", "le", "10");
	CHECK(s && s->value == 3);
	s = find(&e, "topicfs_request_duration_seconds_bucket", "op", "read", "le", "+Inf");
	CHECK(s && s->value == 4);
	s = find(&e, "topicfs_request_duration_seconds_count", "op", "read", NULL, NULL);
	CHECK(s && s->value == 4);
	s = find(&e, "topicfs_request_duration_seconds_sum", "op", "read", NULL, NULL);
	CHECK(s && s->value > 20.00208999 && s->value < 20.00209001);
	/* the exact text of one line */
	CHECK(strstr(b.data, "\ntopicfs_request_duration_seconds_sum{op=\"read\"} 20.002090000\n"));
	free_expo(&e);
	mbuf_free(&b);
}

/* Partition families: each declared once with its samples contiguous, in
 * row order, label values escaped and read back intact. */
static void test_partitions_format(void)
{
	struct metrics_partition live = { 0 };
	struct metrics_partition_row rows[3];
	struct mbuf b = { 0 };
	struct expo e;
	const char *fams[] = {
		"topicfs_partition_records_in_total", "topicfs_partition_bytes_in_total",
		"topicfs_partition_records_out_total", "topicfs_partition_bytes_out_total",
		"topicfs_partition_segments", "topicfs_partition_log_bytes",
		"topicfs_partition_start_offset", "topicfs_partition_end_offset",
		"topicfs_partition_high_watermark", "topicfs_partition_leader",
		"topicfs_partition_replicas", "topicfs_partition_in_sync_replicas",
	};

	metrics_add(&live.records_in, 3);
	metrics_add(&live.records_in, 4);
	metrics_add(&live.bytes_in, 100);
	metrics_add(&live.bytes_out, 18446744073709551615ull); /* 2^64-1 */
	memset(rows, 0, sizeof(rows));
	rows[0].topic = "orders";
	rows[0].partition = 0;
	metrics_partition_snapshot(&live, &rows[0].m);
	rows[0].segments = 2;
	rows[0].log_bytes = 4096;
	rows[0].start_offset = 0;
	rows[0].end_offset = 7;
	rows[0].high_watermark = 7;
	rows[0].leader = 2;
	rows[0].replicas = 3;
	rows[0].in_sync = 2;
	rows[1].topic = "orders";
	rows[1].replicas = rows[1].in_sync = 3;
	rows[1].partition = 1;
	rows[1].start_offset = -1;
	rows[2].topic = "we\"ird\\na\nme";
	rows[2].partition = 12;

	/* Rendered after the request families, as the daemon does. */
	metrics_reset();
	metrics_render_requests(&b);
	metrics_render_partitions(&b, rows, 3);
	CHECK(!b.oom);
	parse_expo(b.data, b.len, &e);
	CHECK_EQ_INT(e.errors, 0);
	CHECK_EQ_INT(e.nfam, 3 + 12 + 1);
	for (int f = 0; f < 12; f++) {
		int fi = fam_index(&e, fams[f]);
		CHECK(fi >= 0);
		if (fi < 0)
			continue;
		CHECK(strcmp(e.type[fi], strstr(fams[f], "_total") ? "counter" : "gauge") == 0);
		int n = 0;
		for (int i = 0; i < e.nsamples; i++)
			if (e.sample_fam[i] == fi)
				n++;
		CHECK_EQ_INT(n, 3);
	}
	const struct sample *s;
	s = find(&e, "topicfs_partition_records_in_total", "topic", "orders", "partition", "0");
	CHECK(s && s->value == 7);
	s = find(&e, "topicfs_partition_bytes_in_total", "topic", "orders", "partition", "0");
	CHECK(s && s->value == 100);
	s = find(&e, "topicfs_partition_end_offset", "topic", "orders", "partition", "0");
	CHECK(s && s->value == 7);
	s = find(&e, "topicfs_partition_start_offset", "topic", "orders", "partition", "1");
	CHECK(s && s->value == -1);
	s = find(&e, "topicfs_partition_leader", "topic", "orders", "partition", "0");
	CHECK(s && s->value == 2);
	s = find(&e, "topicfs_partition_in_sync_replicas", "topic", "orders", "partition", "0");
	CHECK(s && s->value == 2);
	/* partition 0 (2 of 3 in sync) is; 1 (3 of 3) is not; 12 (0 of 0) is not */
	CHECK(strstr(b.data, "\ntopicfs_under_replicated_partitions 1\n"));
	s = find(&e, "topicfs_partition_segments", "topic", "we\"ird\\na\nme", "partition", "12");
	CHECK(s != NULL);
	CHECK(strstr(b.data, "topicfs_partition_segments{topic=\"we\\\"ird\\\\na\\nme\","
	                     "partition=\"12\"} 0\n"));
	CHECK(strstr(b.data, "topicfs_partition_bytes_out_total{topic=\"orders\","
	                     "partition=\"0\"} 18446744073709551615\n"));
	free_expo(&e);
	mbuf_free(&b);
}

/* With no partitions the families are still declared and the text valid. */
static void test_partitions_none(void)
{
	struct mbuf b = { 0 };
	struct expo e;

	metrics_render_partitions(&b, NULL, 0);
	parse_expo(b.data, b.len, &e);
	CHECK_EQ_INT(e.errors, 0);
	CHECK_EQ_INT(e.nsamples, 1); /* topicfs_under_replicated_partitions 0 */
	CHECK(strstr(b.data, "\ntopicfs_under_replicated_partitions 0\n"));
	free_expo(&e);
	mbuf_free(&b);
}

/* mbuf grows past its first allocation and keeps a NUL terminator. */
static void test_mbuf_growth(void)
{
	struct mbuf b = { 0 };
	for (int i = 0; i < 10000; i++)
		mbuf_printf(&b, "%05d\n", i);
	CHECK(!b.oom);
	CHECK_EQ_INT(b.len, 60000);
	CHECK_EQ_INT(strlen(b.data), 60000);
	CHECK(strncmp(b.data + 59994, "09999\n", 6) == 0);
	mbuf_free(&b);
	CHECK(b.data == NULL && b.len == 0);
}

/* The escaping helper on its own. */
static void test_label_escape(void)
{
	struct mbuf b = { 0 };
	metrics_put_label_value(&b, "a\\b\"c\nd");
	CHECK(b.data && strcmp(b.data, "a\\\\b\\\"c\\nd") == 0);
	mbuf_free(&b);
}

int main(void)
{
	RUN(test_requests_format_empty);
	RUN(test_requests_values);
	RUN(test_partitions_format);
	RUN(test_partitions_none);
	RUN(test_mbuf_growth);
	RUN(test_label_escape);
	return unit_report("test_metrics");
}
