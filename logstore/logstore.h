/*
 * logstore.h - one node's storage of one partition: the public API of logstore/.
 *
 * logstore knows nothing of FUSE, YAML or peers. A partition is a directory:
 *
 *   DIR/00000000000000000000.log   segment: Kafka v2 record batches, back to back
 *   DIR/00000000000000000000.idx   index: one 32-byte entry per batch (see index.h)
 *   DIR/partition.meta             start offset/position, recovery point,
 *                                  high watermark, leader epochs (atomic replace)
 *   DIR/clean                      present only between a clean close and next open
 *
 * The "view" is the byte stream that <p>/log shows: every record rendered as
 *   [key SEP] value '\n'     (key and SEP only when the record has a key)
 * SEP is one byte, so a record's view size is fixed at append time:
 *   view_size = (key ? key_len + 1 : 0) + (value ? value_len : 0) + 1.
 * The view position of a record is the sum of the view sizes of every record
 * before it since the partition was created; positions never move (retention
 * removes a prefix, compaction leaves holes), so a byte position names a record
 * for the life of the partition.
 *
 * Invariants:
 *  1. Offsets are dense at append (0,1,2,...) and never reused.
 *  2. start_offset <= high_watermark <= end_offset; readers never see data at
 *     or past the high watermark.
 *  3. Batch timestamps are made non-decreasing at append (max(prev, now)), so
 *     time lookups are a binary search.
 *  4. After a failed write that could not be undone, or any failed fsync, the
 *     partition is read-only (LS_ESTICKY) until it is closed and reopened.
 *
 * Threading: every function is safe to call from any thread; appends are
 * serialised per partition, readers run concurrently with appends.
 */
#ifndef TFS_LOGSTORE_H
#define TFS_LOGSTORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

enum ls_codec { LS_CODEC_NONE = 0, LS_CODEC_ZSTD = 4 }; /* Kafka attribute bits */
enum ls_cleanup { LS_CLEANUP_DELETE = 0, LS_CLEANUP_COMPACT = 1 };

struct ls_config {
	uint64_t segment_bytes;      /* roll the active segment at this size */
	int64_t retention_ms;        /* -1: keep forever */
	int64_t retention_bytes;     /* -1: no size limit */
	enum ls_codec compression;
	int compression_level;       /* zstd level */
	enum ls_cleanup cleanup;
};

/* Fills the defaults: 1 GiB segments, keep forever, zstd level 1, delete. */
void ls_config_default(struct ls_config *cfg);

/* One record to append. key == NULL: no key. value == NULL: null value
 * (a tombstone). Lengths are bytes; neither may contain '\n' if the record
 * is to render as one line (logstore does not check). */
struct ls_rec {
	const void *key;
	uint32_t key_len;
	const void *value;
	uint32_t value_len;
};

/* Idempotent producer identity (Kafka's producer id/epoch/base sequence).
 * pass NULL for none (-1/-1/-1 in the batch). */
struct ls_producer {
	int64_t producer_id;
	int16_t producer_epoch;
	int32_t base_sequence;
};

struct ls_append_result {
	int64_t base_offset;  /* offset of the first record appended */
	int64_t last_offset;  /* offset of the last one */
	uint64_t view_end;    /* view position just after the last record */
	int duplicate;        /* 1: same producer+sequence seen; nothing appended,
	                         offsets are those of the original append */
	int32_t leader_epoch; /* the epoch of the batch holding them (-1 if not
	                         known any more: a duplicate of a very old one) */
};

struct ls_partition_info {
	int64_t start_offset;     /* oldest retained offset */
	int64_t end_offset;       /* next offset to be assigned (log end) */
	int64_t high_watermark;   /* first offset not yet committed */
	uint64_t start_pos;       /* view position of start_offset */
	uint64_t hw_pos;          /* view position of high_watermark: log's st_size */
	uint64_t end_pos;         /* view position of end_offset */
	uint64_t bytes;           /* bytes of segment files on disk */
	uint32_t segments;
	int32_t leader_epoch;     /* epoch stamped on new batches */
	int64_t last_append_ms;   /* wall time of the newest append (0: never) */
	int sticky_error;         /* 0, or the error that made it read-only */
};

struct ls_partition;
struct ls_reader;

/* Opens (creating if needed) the partition in dir, recovering after an
 * unclean shutdown. *out is owned by the caller and freed by
 * ls_partition_close(). Returns 0 or -errno / LS_ECORRUPT with a log line
 * naming the segment and byte. */
int ls_partition_open(const char *dir, const struct ls_config *cfg,
                      struct ls_partition **out) TFS_MUST_CHECK;

/* Syncs, writes the clean-shutdown marker and frees p. Returns the first error
 * met while syncing (p is freed regardless). */
int ls_partition_close(struct ls_partition *p);

/* Closes nothing; removes dir and everything in it. For deleting a closed
 * partition. */
int ls_partition_destroy(const char *dir) TFS_MUST_CHECK;

/* Applies new settings (compression of later batches, segment size, retention). */
void ls_partition_set_config(struct ls_partition *p, const struct ls_config *cfg);

/* Appends n >= 1 records as ONE batch with timestamp ts_ms (made monotonic).
 * The batch is visible to readers only once the high watermark passes it.
 * Returns 0, -ENOSPC (nothing appended, partition stays writable), -EROFS via
 * LS_ESTICKY, or another -errno. prod may be NULL.
 * (Also: -EDQUOT/-EFBIG like -ENOSPC; -EMSGSIZE for a batch over 1 GiB;
 * with prod: -ESTALE if its producer_epoch is older than one already seen
 * (fenced), -EALREADY if its sequence is older than the last 5 batches
 * remembered for that producer; a retry of one of those 5 is `duplicate`.) */
int ls_partition_append(struct ls_partition *p, const struct ls_rec *recs,
                        uint32_t n, int64_t ts_ms, const struct ls_producer *prod,
                        struct ls_append_result *res) TFS_MUST_CHECK;

/* Follower path: appends already-encoded v2 batches (as read by
 * ls_partition_read_batches on the leader) whose base offsets must continue
 * the log exactly. Every batch's CRC is verified first; on any failure nothing
 * is appended. */
int ls_partition_append_batches(struct ls_partition *p, const void *buf,
                                size_t len) TFS_MUST_CHECK;

/* Leader path: copies whole encoded batches starting with the batch containing
 * offset `from` into buf, at most max bytes (at least one batch if it fits
 * nowhere else: then *need is set to its size and 0 returned). Returns bytes
 * copied, 0 at log end, or -errno. Reads up to end_offset, not the HW. */
ssize_t ls_partition_read_batches(struct ls_partition *p, int64_t from, void *buf,
                                  size_t max, size_t *need);

/* Removes every record at or after offset (follower truncation, KIP-101).
 * offset must be >= high watermark of committed data the caller trusts.
 * (Batches are removed whole: an offset inside a batch removes that whole
 * batch, so end_offset may end up below offset; fetch again from there.) */
int ls_partition_truncate(struct ls_partition *p, int64_t offset) TFS_MUST_CHECK;

/* Sets the high watermark (clamped to [start, end]); single node: = end. */
void ls_partition_set_hw(struct ls_partition *p, int64_t hw);

/* Epoch stamped on later batches; records the epoch's start offset in the
 * leader-epoch cache (persisted in partition.meta). */
int ls_partition_set_leader_epoch(struct ls_partition *p, int32_t epoch) TFS_MUST_CHECK;

/* KIP-101: the end offset of `epoch` in this log (the start offset of the
 * next higher epoch, or end_offset if epoch is the latest). -1 if unknown. */
int64_t ls_partition_epoch_end_offset(struct ls_partition *p, int32_t epoch);
/* The newest epoch in the epoch cache (a leader's current one once set),
 * -1 if none. */
int32_t ls_partition_latest_epoch(struct ls_partition *p);

/* The leader epoch of the batch holding `offset` in this log, from the
 * leader-epoch cache: -1 if the offset is not in the log (below its start or
 * at or past its end) or older than the cache. With one leader per epoch,
 * (offset, epoch) names one record on every replica: a record appended at
 * epoch E is still in this log iff its offset here has epoch E. */
int32_t ls_partition_epoch_of(struct ls_partition *p, int64_t offset);

/* Makes every append so far durable (fdatasync of segment and, where needed,
 * directory). Concurrent callers share one fsync. A failure is sticky. */
int ls_partition_sync(struct ls_partition *p) TFS_MUST_CHECK;

void ls_partition_get_info(struct ls_partition *p, struct ls_partition_info *out);

/* View position of the record at `offset` (start_offset <= offset <= end). */
int ls_partition_pos_of(struct ls_partition *p, int64_t offset, uint64_t *pos);

/* lseek's SEEK_DATA (data != 0) and SEEK_HOLE over the view below limit
 * (the high watermark's position): the first position >= pos inside a
 * record, or the first one in a gap (left by retention or compaction, or
 * limit itself). 0 with *out, or -ENXIO (no data at or after pos). */
int ls_partition_seek(struct ls_partition *p, uint64_t pos, int data, uint64_t limit,
                      uint64_t *out) TFS_MUST_CHECK;

/* First offset whose timestamp is >= ts_ms; end_offset if none. */
int64_t ls_partition_offset_for_time(struct ls_partition *p, int64_t ts_ms);

/* Deletes whole segments past retention (time: newest timestamp in the
 * segment older than now - retention_ms; size: total over retention_bytes),
 * never the active segment, never data at/after the high watermark. Returns
 * the number of segments removed or -errno.
 * (An active segment wholly past retention_ms and below the high watermark
 * is rolled first, as Kafka's segment.ms would, and then removed.) */
int ls_partition_enforce_retention(struct ls_partition *p, int64_t now_ms);

/* Compaction (cleanup: compact): rewrites closed segments keeping the newest
 * record per key (tombstones older than the active segment are dropped too);
 * offsets and view positions of kept records are unchanged. Returns records
 * removed or -errno. */
int ls_partition_compact(struct ls_partition *p);

/* ---- reading ---------------------------------------------------------- */

/* A reader caches the last decoded batch; one per open file. Owned by the
 * caller, freed with ls_reader_close(). A reader keeps no segment open across
 * calls, so retention may run underneath it. */
int ls_reader_open(struct ls_partition *p, struct ls_reader **out) TFS_MUST_CHECK;
void ls_reader_close(struct ls_reader *r);

/* Copies the view from position pos into buf, at most size bytes, stopping at
 * the high watermark. If pos falls before the log start or in a compaction
 * hole, copying starts at the next record after pos and *actual is set to
 * that position (else *actual = pos). sep is the key separator byte to render.
 * Returns bytes copied (0: nothing at or after pos below the HW) or -errno;
 * a batch failing its CRC returns LS_ECORRUPT and is never served. */
ssize_t ls_reader_read_view(struct ls_reader *r, uint64_t pos, void *buf,
                            size_t size, char sep, uint64_t *actual);

/* One record as read. Pointers are valid until the next call on the reader. */
struct ls_record {
	int64_t offset;
	int64_t timestamp_ms;
	const void *key;      /* NULL: no key */
	uint32_t key_len;
	const void *value;    /* NULL: null value (tombstone) */
	uint32_t value_len;
	uint64_t view_pos;    /* view position of this record */
};

/* The first record with offset >= `offset` below the high watermark.
 * Returns 1 with *rec filled, 0 if there is none yet, or -errno. */
int ls_reader_next(struct ls_reader *r, int64_t offset, struct ls_record *rec);

/* What ls_reader_read_records copied. */
struct ls_records_res {
	int64_t first;        /* offset of the first record copied (-1: none) */
	int64_t next;         /* offset after the last record copied (-1: none) */
	uint32_t count;       /* records copied */
	size_t need;          /* -EMSGSIZE: view bytes of the first record */
};

/* Bulk ls_reader_next: copies the view bytes (rendered with sep, exactly as
 * ls_reader_read_view gives them) of whole records, starting with the first
 * record with offset >= `offset` below the high watermark, into buf. Copies
 * from ONE batch (the reader's decoded batch: one decode per batch, its CRC
 * checked), stopping at the batch's end, the high watermark, max_records
 * (0: no limit) or the first record that does not fit in size. Returns the
 * bytes copied with *res (count >= 1), 0 if there is no record yet, -EMSGSIZE
 * with res->need if the first record is larger than size, or -errno. Asking
 * again at res->next continues exactly after the last record copied. */
ssize_t ls_reader_read_records(struct ls_reader *r, int64_t offset, void *buf, size_t size,
                               char sep, uint32_t max_records,
                               struct ls_records_res *res);

/* ---- additions for replication (follower catch-up and compacted logs) ---- */

/* Like ls_partition_read_batches, and also gives the view position of the
 * first batch copied in *view_pos. Stops before a view hole (left by
 * compaction), so the bytes copied always continue the view from *view_pos;
 * ship *view_pos with them and append with ls_partition_append_batches_at. */
ssize_t ls_partition_read_batches_at(struct ls_partition *p, int64_t from, void *buf,
                                     size_t max, size_t *need, uint64_t *view_pos);

/* Like ls_partition_append_batches, but the first batch lands at view
 * position view_pos (>= end_pos; larger leaves a hole, as on the leader) and
 * base offsets may skip forward (compacted leader data). */
int ls_partition_append_batches_at(struct ls_partition *p, const void *buf, size_t len,
                                   uint64_t view_pos) TFS_MUST_CHECK;

/* Empties the partition and restarts it at offset / view position view_pos:
 * a follower whose log is entirely behind the leader's log start (Kafka's
 * truncateFullyAndStartAt). Start, end and high watermark all become offset. */
int ls_partition_reset(struct ls_partition *p, int64_t offset,
                       uint64_t view_pos) TFS_MUST_CHECK;

#endif
