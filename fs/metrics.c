/*
 * metrics.c - the daemon's counters and the Prometheus text rendering of
 * .cluster/metrics (text exposition format 0.0.4).
 *
 * Owns the process-wide request counters below; per-partition counters live in
 * the daemon's partition structs (struct metrics_partition) and are only
 * updated here through metrics_add(). Every update is one relaxed atomic add:
 * no lock on the hot path. A render reads each counter once with a relaxed
 * load, so a scrape concurrent with requests sees each series monotonic but
 * not a snapshot across series; the histogram's _count is derived from the
 * buckets as read, so +Inf == _count always holds inside one scrape.
 *
 * Request state, per op (enum metrics_op):
 *
 *     requests[op]            count of requests
 *     errors[op]              count of requests answered with an errno
 *     hist[op][b]             requests whose latency fell in bucket b (NOT
 *                             cumulative; cumulated at render), b = 0..13,
 *                             the last bucket being +Inf
 *     sum_ns[op]              total latency, nanoseconds
 *
 * Output layout (one family = HELP, TYPE, then all its samples, contiguous;
 * each family appears once):
 *
 *     # HELP topicfs_requests_total FUSE requests handled, by operation.
 *     # TYPE topicfs_requests_total counter
 *     topicfs_requests_total{op="lookup"} 12
 *     ...
 *     # TYPE topicfs_request_duration_seconds histogram
 *     topicfs_request_duration_seconds_bucket{op="read",le="0.00005"} 3
 *     ...                                      (cumulative, le ascending)
 *     topicfs_request_duration_seconds_bucket{op="read",le="+Inf"} 9
 *     topicfs_request_duration_seconds_sum{op="read"} 0.001234000
 *     topicfs_request_duration_seconds_count{op="read"} 9
 *
 * Invariants:
 *  1. bucket_le_ns[] is strictly increasing; bucket_le_text[b] is its value
 *     in seconds; the last bucket is +Inf.
 *  2. Label values are escaped (\ -> \\, " -> \", newline -> \n) and help
 *     texts (\ -> \\, newline -> \n), as 0.0.4 requires.
 *  3. mbuf never leaves data without a terminating NUL once anything has been
 *     written; after an allocation failure it stops growing and sets oom.
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- counters --------------------------------------------------------- */

static const uint64_t bucket_le_ns[METRICS_NBUCKETS - 1] = {
	50000ull, 100000ull, 250000ull, 500000ull,
	1000000ull, 2500000ull, 5000000ull, 10000000ull,
	50000000ull, 100000000ull, 500000000ull, 1000000000ull,
	10000000000ull,
};
static const char *const bucket_le_text[METRICS_NBUCKETS] = {
	"0.00005", "0.0001", "0.00025", "0.0005",
	"0.001", "0.0025", "0.005", "0.01",
	"0.05", "0.1", "0.5", "1",
	"10", "+Inf",
};

static const char *const op_names[MOP_COUNT] = {
	[MOP_LOOKUP] = "lookup", [MOP_GETATTR] = "getattr", [MOP_READ] = "read",
	[MOP_WRITE] = "write", [MOP_FLUSH] = "flush", [MOP_FSYNC] = "fsync",
	[MOP_OPEN] = "open", [MOP_RELEASE] = "release", [MOP_MKDIR] = "mkdir",
	[MOP_RMDIR] = "rmdir", [MOP_CREATE] = "create", [MOP_UNLINK] = "unlink",
	[MOP_READDIR] = "readdir", [MOP_SETATTR] = "setattr", [MOP_RENAME] = "rename",
	[MOP_OTHER] = "other",
};

static uint64_t requests[MOP_COUNT];
static uint64_t errors[MOP_COUNT];
static uint64_t hist[MOP_COUNT][METRICS_NBUCKETS];
static uint64_t sum_ns[MOP_COUNT];

static uint64_t load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

void metrics_add(uint64_t *counter, uint64_t v)
{
	__atomic_fetch_add(counter, v, __ATOMIC_RELAXED);
}

void metrics_partition_snapshot(const struct metrics_partition *src,
                                struct metrics_partition *dst)
{
	dst->records_in = load(&src->records_in);
	dst->bytes_in = load(&src->bytes_in);
	dst->records_out = load(&src->records_out);
	dst->bytes_out = load(&src->bytes_out);
}

const char *metrics_op_name(enum metrics_op op)
{
	if ((unsigned)op >= MOP_COUNT)
		return "other";
	return op_names[op];
}

void metrics_request(enum metrics_op op, uint64_t ns, int err)
{
	unsigned b = 0;

	if ((unsigned)op >= MOP_COUNT)
		op = MOP_OTHER;
	while (b < METRICS_NBUCKETS - 1 && ns > bucket_le_ns[b])
		b++;
	metrics_add(&requests[op], 1);
	if (err)
		metrics_add(&errors[op], 1);
	metrics_add(&hist[op][b], 1);
	metrics_add(&sum_ns[op], ns);
}

void metrics_reset(void)
{
	for (int op = 0; op < MOP_COUNT; op++) {
		__atomic_store_n(&requests[op], 0, __ATOMIC_RELAXED);
		__atomic_store_n(&errors[op], 0, __ATOMIC_RELAXED);
		__atomic_store_n(&sum_ns[op], 0, __ATOMIC_RELAXED);
		for (int b = 0; b < METRICS_NBUCKETS; b++)
			__atomic_store_n(&hist[op][b], 0, __ATOMIC_RELAXED);
	}
}

/* ---- mbuf ------------------------------------------------------------- */

static int mbuf_reserve(struct mbuf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (b->oom)
		return -1;
	need = b->len + extra + 1;
	if (need <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 4096;
	while (cap < need)
		cap *= 2;
	p = realloc(b->data, cap);
	if (!p) {
		b->oom = 1;
		return -1;
	}
	b->data = p;
	b->cap = cap;
	return 0;
}

void mbuf_printf(struct mbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->oom = 1;
		return;
	}
	if (mbuf_reserve(b, (size_t)n) != 0)
		return;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static void mbuf_putc(struct mbuf *b, char c)
{
	if (mbuf_reserve(b, 1) != 0)
		return;
	b->data[b->len++] = c;
	b->data[b->len] = '\0';
}

void mbuf_free(struct mbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->oom = 0;
}

/* ---- exposition ------------------------------------------------------- */

/* A label value, escaped: \ -> \\, " -> \", newline -> \n. */
void metrics_put_label_value(struct mbuf *b, const char *v)
{
	for (; *v; v++) {
		switch (*v) {
		case '\\': mbuf_printf(b, "\\\\"); break;
		case '"': mbuf_printf(b, "\\\""); break;
		case '\n': mbuf_printf(b, "\\n"); break;
		default: mbuf_putc(b, *v); break;
		}
	}
}

/* HELP and TYPE of one family; the help text is escaped (\ and newline). */
void metrics_put_family(struct mbuf *b, const char *name, const char *type,
                       const char *help)
{
	mbuf_printf(b, "# HELP %s ", name);
	for (const char *h = help; *h; h++) {
		if (*h == '\\')
			mbuf_printf(b, "\\\\");
		else if (*h == '\n')
			mbuf_printf(b, "\\n");
		else
			mbuf_putc(b, *h);
	}
	mbuf_printf(b, "\n# TYPE %s %s\n", name, type);
}

void metrics_render_requests(struct mbuf *b)
{
	const char *h = "topicfs_request_duration_seconds";

	metrics_put_family(b, "topicfs_requests_total", "counter",
	           "FUSE requests handled, by operation.");
	for (int op = 0; op < MOP_COUNT; op++)
		mbuf_printf(b, "topicfs_requests_total{op=\"%s\"} %llu\n", op_names[op],
		            (unsigned long long)load(&requests[op]));

	metrics_put_family(b, "topicfs_request_errors_total", "counter",
	           "FUSE requests answered with an error, by operation.");
	for (int op = 0; op < MOP_COUNT; op++)
		mbuf_printf(b, "topicfs_request_errors_total{op=\"%s\"} %llu\n",
		            op_names[op], (unsigned long long)load(&errors[op]));

	metrics_put_family(b, h, "histogram",
	           "Time from a FUSE request's arrival to its reply, in seconds.");
	for (int op = 0; op < MOP_COUNT; op++) {
		uint64_t cum = 0, ns = load(&sum_ns[op]);
		for (int i = 0; i < METRICS_NBUCKETS; i++) {
			cum += load(&hist[op][i]);
			mbuf_printf(b, "%s_bucket{op=\"%s\",le=\"%s\"} %llu\n", h,
			            op_names[op], bucket_le_text[i], (unsigned long long)cum);
		}
		mbuf_printf(b, "%s_sum{op=\"%s\"} %llu.%09llu\n", h, op_names[op],
		            (unsigned long long)(ns / 1000000000ull),
		            (unsigned long long)(ns % 1000000000ull));
		mbuf_printf(b, "%s_count{op=\"%s\"} %llu\n", h, op_names[op],
		            (unsigned long long)cum);
	}
}

enum pfield {
	PF_RECORDS_IN, PF_BYTES_IN, PF_RECORDS_OUT, PF_BYTES_OUT, PF_SEGMENTS,
	PF_LOG_BYTES, PF_START_OFFSET, PF_END_OFFSET, PF_HIGH_WATERMARK, PF_LEADER, PF_REPLICAS,
	PF_IN_SYNC, PF_COUNT
};

static const struct {
	const char *name, *type, *help;
} pfamilies[PF_COUNT] = {
	[PF_RECORDS_IN] = { "topicfs_partition_records_in_total", "counter",
	                    "Records appended to the partition while this node led it "
	                    "(produced through any node)." },
	[PF_BYTES_IN] = { "topicfs_partition_bytes_in_total", "counter",
	                  "Bytes of records appended to the partition while this node led it." },
	[PF_RECORDS_OUT] = { "topicfs_partition_records_out_total", "counter",
	                     "Records consumed from the partition through cursor and pending "
	                     "files on this node (reads of log count bytes only)." },
	[PF_BYTES_OUT] = { "topicfs_partition_bytes_out_total", "counter",
	                   "Bytes read from the partition through log and cursor files." },
	[PF_SEGMENTS] = { "topicfs_partition_segments", "gauge",
	                  "Segment files of the partition on this node." },
	[PF_LOG_BYTES] = { "topicfs_partition_log_bytes", "gauge",
	                   "Bytes of segment files of the partition on this node's disk." },
	[PF_START_OFFSET] = { "topicfs_partition_start_offset", "gauge",
	                      "Oldest retained offset of the partition." },
	[PF_END_OFFSET] = { "topicfs_partition_end_offset", "gauge",
	                    "Next offset to be assigned in the partition (log end)." },
	[PF_HIGH_WATERMARK] = { "topicfs_partition_high_watermark", "gauge",
	                        "First offset of the partition not yet committed." },
	[PF_LEADER] = { "topicfs_partition_leader", "gauge",
	                "Node id of the partition's leader (0: none)." },
	[PF_REPLICAS] = { "topicfs_partition_replicas", "gauge",
	                  "Replicas of the partition." },
	[PF_IN_SYNC] = { "topicfs_partition_in_sync_replicas", "gauge",
	                 "Replicas of the partition in its in-sync set." },
};

/* Fields of a row: unsigned ones (counters, sizes) and signed ones (offsets). */
static int pfield_signed(enum pfield f)
{
	return f == PF_START_OFFSET || f == PF_END_OFFSET || f == PF_HIGH_WATERMARK;
}

static uint64_t pvalue_u(const struct metrics_partition_row *r, enum pfield f)
{
	switch (f) {
	case PF_RECORDS_IN: return r->m.records_in;
	case PF_BYTES_IN: return r->m.bytes_in;
	case PF_RECORDS_OUT: return r->m.records_out;
	case PF_BYTES_OUT: return r->m.bytes_out;
	case PF_SEGMENTS: return r->segments;
	case PF_LOG_BYTES: return r->log_bytes;
	case PF_LEADER: return r->leader;
	case PF_REPLICAS: return r->replicas;
	case PF_IN_SYNC: return r->in_sync;
	default: return 0;
	}
}

static int64_t pvalue_s(const struct metrics_partition_row *r, enum pfield f)
{
	switch (f) {
	case PF_START_OFFSET: return r->start_offset;
	case PF_END_OFFSET: return r->end_offset;
	case PF_HIGH_WATERMARK: return r->high_watermark;
	default: return 0;
	}
}

void metrics_render_partitions(struct mbuf *b, const struct metrics_partition_row *rows,
                               size_t n)
{
	for (int f = 0; f < PF_COUNT; f++) {
		metrics_put_family(b, pfamilies[f].name, pfamilies[f].type, pfamilies[f].help);
		for (size_t i = 0; i < n; i++) {
			mbuf_printf(b, "%s{topic=\"", pfamilies[f].name);
			metrics_put_label_value(b, rows[i].topic ? rows[i].topic : "");
			mbuf_printf(b, "\",partition=\"%u\"} ", rows[i].partition);
			if (pfield_signed((enum pfield)f))
				mbuf_printf(b, "%lld\n",
				            (long long)pvalue_s(&rows[i], (enum pfield)f));
			else
				mbuf_printf(b, "%llu\n",
				            (unsigned long long)pvalue_u(&rows[i], (enum pfield)f));
		}
	}
	size_t under = 0;
	for (size_t i = 0; i < n; i++)
		under += rows[i].in_sync < rows[i].replicas;
	metrics_put_family(b, "topicfs_under_replicated_partitions", "gauge",
	                   "Partitions whose in-sync set is smaller than their replicas (a "
	                   "rolling restart waits for 0 before the next node).");
	mbuf_printf(b, "topicfs_under_replicated_partitions %zu\n", under);
}
