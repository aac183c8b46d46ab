/*
 * metrics.h - counters and histograms rendered as Prometheus text exposition
 * (text/plain; version=0.0.4) for .cluster/metrics. Thread-safe; updates are
 * relaxed atomics, never a lock on the hot path.
 */
#ifndef TFS_METRICS_H
#define TFS_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Per-partition counters, embedded in the daemon's partition struct. */
struct metrics_partition {
	uint64_t records_in, bytes_in;    /* produced */
	uint64_t records_out, bytes_out;  /* read through log / cursors */
};

enum metrics_op {
	MOP_LOOKUP, MOP_GETATTR, MOP_READ, MOP_WRITE, MOP_FLUSH, MOP_FSYNC,
	MOP_OPEN, MOP_RELEASE, MOP_MKDIR, MOP_RMDIR, MOP_CREATE, MOP_UNLINK,
	MOP_READDIR, MOP_SETATTR, MOP_RENAME, MOP_OTHER, MOP_COUNT
};

/* Request latency histogram buckets in seconds (le): 50us .. 10s, +Inf
 * (13 finite bounds plus +Inf). */
#define METRICS_NBUCKETS 14

/* Record one request of op that took ns nanoseconds, err = 0 or errno. */
void metrics_request(enum metrics_op op, uint64_t ns, int err);
void metrics_add(uint64_t *counter, uint64_t v); /* relaxed atomic add */

/* Name of op as rendered in the op label ("read"). */
const char *metrics_op_name(enum metrics_op op);

/* Relaxed-atomic copy of live partition counters into dst (for a row). */
void metrics_partition_snapshot(const struct metrics_partition *src,
                                struct metrics_partition *dst);

/* Zeroes the request counters and histogram (for tests). */
void metrics_reset(void);

/* A growable text buffer for rendering. */
struct mbuf {
	char *data;
	size_t len, cap;
	int oom;     /* set if an allocation failed; output truncated */
};
void mbuf_printf(struct mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mbuf_free(struct mbuf *b);

/* Helpers for other renderers of .cluster/metrics, so every family follows
 * the same rules: "# HELP name help" (help escaped) and "# TYPE name type";
 * and a label value with \\, \" and \n escaped (without the quotes). */
void metrics_put_family(struct mbuf *b, const char *name, const char *type,
                        const char *help);
void metrics_put_label_value(struct mbuf *b, const char *value);

/* Appends the request counters and latency histogram (topicfs_requests_total,
 * topicfs_request_errors_total, topicfs_request_duration_seconds) with HELP
 * and TYPE lines. */
void metrics_render_requests(struct mbuf *b);

/* One partition's snapshot for rendering. */
struct metrics_partition_row {
	const char *topic;
	uint32_t partition;
	struct metrics_partition m;   /* a copy of the counters */
	uint32_t segments;
	uint64_t log_bytes;           /* bytes on disk */
	int64_t start_offset, end_offset, high_watermark;
	uint32_t leader;              /* node id; 0: none (1 on a single node) */
	uint32_t replicas, in_sync;   /* sizes of the replica and in-sync sets */
};

/* Appends, per metric family (HELP and TYPE once, then one sample per row, as
 * the exposition format requires): topicfs_partition_records_in_total,
 * _bytes_in_total, _records_out_total, _bytes_out_total, topicfs_partition_segments,
 * topicfs_partition_log_bytes, _start_offset, _end_offset, _high_watermark,
 * _leader, _replicas, _in_sync_replicas, all labelled
 * {topic="..",partition=".."} with label values escaped; then
 * topicfs_under_replicated_partitions (in-sync set smaller than the replicas). */
void metrics_render_partitions(struct mbuf *b, const struct metrics_partition_row *rows,
                               size_t n);

#endif
