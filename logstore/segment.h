/*
 * segment.h - one segment of a partition: %020llu.log (batches back to back)
 * and its index %020llu.idx. Design comment in segment.c.
 *
 * An ls_segment is owned by its partition, which serialises writers and
 * guards readers with its lock; nothing here locks. Every function returns
 * 0 or -errno / LS_ECORRUPT and logs with the partition's dir and the
 * segment's name when it finds damage.
 */
#ifndef TFS_LS_SEGMENT_H
#define TFS_LS_SEGMENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <zstd.h>

#include "batch.h"
#include "index.h"

struct ls_segment {
	const char *dir;        /* the partition's directory, for log lines */
	char name[24];          /* "%020llu": base offset, file stem */
	int64_t base_offset;
	int64_t end_offset;     /* offset after its last record; base if empty */
	uint64_t start_pos;     /* view position where it starts */
	uint64_t end_pos;       /* view position after its last batch */
	uint64_t size;          /* bytes of whole, checked batches in the .log */
	int64_t max_ts;         /* newest batch timestamp; -1 if empty */
	int fd;                 /* .log, read-write */
	struct ls_index index;
};

/* Scratch space for scans: a read buffer and a decompression context. */
struct ls_scan_ctx {
	struct ls_buf buf;
	struct ls_buf scratch;
	ZSTD_DCtx *dctx;
};

/* Creates an empty segment (truncating leftovers of the same name) starting
 * at base_offset / view position start_pos. *out is freed with
 * ls_segment_close(). dir must outlive the segment. */
int ls_segment_create(int dirfd, const char *dir, int64_t base_offset,
                      uint64_t start_pos, struct ls_segment **out) TFS_MUST_CHECK;

/* Opens an existing segment and loads its index into memory without
 * trusting it: call ls_segment_check_index() or ls_segment_recover() next. */
int ls_segment_open(int dirfd, const char *dir, int64_t base_offset,
                    struct ls_segment **out) TFS_MUST_CHECK;

/* Accepts the loaded index if it describes the whole .log: entries present,
 * first at byte 0, last batch's header readable and ending exactly at the
 * file size. Fills end_offset, start/end_pos, max_ts, size. 0 or LS_ECORRUPT. */
int ls_segment_check_index(struct ls_segment *s) TFS_MUST_CHECK;

/* Re-scans the .log from byte 0: every batch's header, length, CRC and
 * records are checked, the index is rebuilt (memory and file), and the
 * file is truncated at the first bad or torn batch (*truncated = 1, with a
 * log line). strict: base offsets must continue exactly from base_offset
 * (segments that compaction never rewrote); else they must only increase.
 * start_pos is the view position of the first record. */
int ls_segment_recover(struct ls_segment *s, uint64_t start_pos, int strict,
                       struct ls_scan_ctx *ctx, int *truncated) TFS_MUST_CHECK;

/* Bytes of batch i of the index. */
static inline size_t ls_segment_batch_len(const struct ls_segment *s, size_t i)
{
	uint64_t end = i + 1 < s->index.n ? s->index.e[i + 1].file_pos : s->size;
	return (size_t)(end - s->index.e[i].file_pos);
}

/* Writes len bytes of whole encoded batches at the end of the .log (one
 * pwrite) and their n index entries, which the caller fills (one pwrite).
 * Touches no in-memory state: the caller publishes with ls_segment_publish()
 * under its lock. On failure both files are truncated back; if even that
 * fails, returns the error with *undo_failed = 1 (the partition must then
 * go read-only). */
int ls_segment_write(struct ls_segment *s, const void *batches, size_t len,
                     const struct ls_index_entry *e, size_t n,
                     int *undo_failed) TFS_MUST_CHECK;

/* Publishes batches written by ls_segment_write (index room must have been
 * reserved with ls_index_reserve(&s->index, s->index.n + n)). */
void ls_segment_publish(struct ls_segment *s, const struct ls_index_entry *e,
                        size_t n, size_t len, int64_t end_offset);

/* Drops index entries from i on and truncates the file before batch i. */
int ls_segment_truncate(struct ls_segment *s, size_t i) TFS_MUST_CHECK;

/* Reads len bytes at file byte pos into buf. LS_ECORRUPT if the file is short. */
int ls_segment_read(const struct ls_segment *s, uint64_t pos, void *buf,
                    size_t len) TFS_MUST_CHECK;

/* fdatasync of the .log, then of the .idx. */
int ls_segment_sync(struct ls_segment *s) TFS_MUST_CHECK;

/* Closes files and frees s (NULL is fine). */
void ls_segment_close(struct ls_segment *s);

/* Unlinks both files of the segment named name from dirfd. */
int ls_segment_unlink(int dirfd, int64_t base_offset) TFS_MUST_CHECK;

/* File names: "%020llu.log" / ".idx" into buf (at least 32 bytes). */
void ls_segment_filename(char *buf, size_t size, int64_t base_offset, const char *ext);

void ls_scan_ctx_free(struct ls_scan_ctx *ctx);

#endif
