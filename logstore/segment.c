/*
 * segment.c - one segment: a .log of v2 batches and its .idx (see segment.h).
 *
 * Owns: the two file descriptors of a segment and its in-memory index.
 *
 *   DIR/%020llu.log   batch 0 | batch 1 | ... | batch n-1      (size bytes)
 *   DIR/%020llu.idx   entry 0 | entry 1 | ... | entry n-1      (32 bytes each)
 *
 * The stem is the segment's base offset: the offset of its first record when
 * it was created. Batches are stored exactly as encoded (batch.c), so a
 * follower's fetch is a copy of file bytes.
 *
 * States of a segment (the partition decides which one is active):
 *
 *   ls_segment_create ──> ACTIVE ──(roll: ls_segment_sync)──> CLOSED
 *   ls_segment_open ──> ls_segment_check_index | ls_segment_recover ──> ...
 *   ACTIVE: ls_segment_write + ls_segment_publish append; ls_segment_truncate
 *   CLOSED: read-only except compaction (rewritten whole, see partition.c)
 *
 * Invariants:
 *  1. Bytes [0, size) of the .log are whole batches whose CRC was checked
 *     when written or scanned; a failed write is truncated back to size.
 *  2. index.e[i].file_pos is the start of batch i; batch i ends at the start
 *     of batch i+1, or at size for the last one.
 *  3. end_offset = last batch's baseOffset + lastOffsetDelta + 1;
 *     end_pos = last entry's view_pos + view_size.
 *  4. On recovery, the file is cut at the first batch that fails any check;
 *     nothing after it is kept in this segment.
 *  5. View positions are recomputed by a re-scan, except that a jump (a
 *     compaction hole) recorded in the old index for the same batch (same
 *     base offset and file position) is kept, and so is a jump in offsets
 *     (a compaction gap) that a strict re-scan would otherwise refuse:
 *     whoever writes an entry with a jump fsyncs the index before relying
 *     on it (compaction, replicated holes), so such an entry is never
 *     garbage.
 */
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "log.h"

#define SCAN_CHUNK (1u << 20)

void ls_segment_filename(char *buf, size_t size, int64_t base_offset, const char *ext)
{
	snprintf(buf, size, "%020" PRId64 ".%s", base_offset, ext);
}

static int open_files(int dirfd, const char *dir, int64_t base, int create,
                      struct ls_segment **out)
{
	int rc;
	char name[40];
	int flags = O_RDWR | O_CLOEXEC | O_CREAT | (create ? O_TRUNC : 0);
	struct ls_segment *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dir = dir;
	snprintf(s->name, sizeof(s->name), "%020" PRId64, base);
	s->base_offset = base;
	s->end_offset = base;
	s->max_ts = -1;
	s->index.fd = -1;
	ls_segment_filename(name, sizeof(name), base, "log");
	s->fd = openat(dirfd, name, create ? flags : (O_RDWR | O_CLOEXEC), 0644);
	if (s->fd < 0) {
		rc = -errno;
		goto err_after_alloc;
	}
	ls_segment_filename(name, sizeof(name), base, "idx");
	s->index.fd = openat(dirfd, name, flags, 0644);
	if (s->index.fd < 0) {
		rc = -errno;
		goto err_after_log;
	}
	*out = s;
	return 0;

err_after_log:
	close(s->fd);
err_after_alloc:
	free(s);
	return rc;
}

int ls_segment_create(int dirfd, const char *dir, int64_t base_offset,
                      uint64_t start_pos, struct ls_segment **out)
{
	int rc = open_files(dirfd, dir, base_offset, 1, out);
	if (rc == 0)
		(*out)->start_pos = (*out)->end_pos = start_pos;
	return rc;
}

int ls_segment_open(int dirfd, const char *dir, int64_t base_offset,
                    struct ls_segment **out)
{
	struct ls_segment *s;
	struct stat st;
	int rc = open_files(dirfd, dir, base_offset, 0, &s);
	if (rc < 0)
		return rc;
	if (fstat(s->fd, &st) < 0) {
		rc = -errno;
		goto err;
	}
	s->size = (uint64_t)st.st_size;
	rc = ls_index_load(&s->index);
	if (rc == LS_ECORRUPT) {
		s->index.n = 0; /* ls_segment_check_index refuses; recover rebuilds */
		rc = 0;
	}
	if (rc < 0)
		goto err;
	*out = s;
	return 0;
err:
	ls_segment_close(s);
	return rc;
}

int ls_segment_check_index(struct ls_segment *s)
{
	struct ls_batch_header h;
	uint8_t hb[LS_BATCH_HEADER_SIZE];
	struct ls_index *ix = &s->index;
	if (ix->n == 0) {
		if (s->size != 0)
			return LS_ECORRUPT;
		s->end_offset = s->base_offset;
		s->max_ts = -1;
		return 0;
	}
	const struct ls_index_entry *last = &ix->e[ix->n - 1];
	if (ix->e[0].file_pos != 0 || ix->e[0].base_offset < s->base_offset ||
	    last->file_pos >= s->size || s->size > UINT32_MAX)
		return LS_ECORRUPT;
	if (ls_fsutil_pread_all(s->fd, hb, sizeof(hb), last->file_pos) != (ssize_t)sizeof(hb) ||
	    ls_batch_parse_header(hb, sizeof(hb), &h) < 0 ||
	    h.base_offset != last->base_offset ||
	    (uint64_t)last->file_pos + ls_batch_size(&h) != s->size)
		return LS_ECORRUPT;
	s->end_offset = h.base_offset + h.last_offset_delta + 1;
	s->start_pos = ix->e[0].view_pos;
	s->end_pos = last->view_pos + last->view_size;
	s->max_ts = last->max_ts;
	return 0;
}

/* Makes [pos, pos + need) present in ctx->buf, which mirrors file bytes
 * starting at *chunk_start. Reads at least SCAN_CHUNK bytes when it reads. */
static int scan_fill(struct ls_segment *s, struct ls_scan_ctx *ctx, uint64_t fsize,
                     uint64_t pos, size_t need, uint64_t *chunk_start)
{
	int rc;
	if (pos >= *chunk_start && pos + need <= *chunk_start + ctx->buf.len)
		return 0;
	size_t want = need > SCAN_CHUNK ? need : SCAN_CHUNK;
	if (want > fsize - pos)
		want = (size_t)(fsize - pos);
	if ((rc = ls_buf_reserve(&ctx->buf, want)) < 0)
		return rc;
	ssize_t r = ls_fsutil_pread_all(s->fd, ctx->buf.data, want, (off_t)pos);
	if (r < 0)
		return (int)r;
	ctx->buf.len = (size_t)r;
	*chunk_start = pos;
	return r < (ssize_t)need ? LS_ECORRUPT : 0;
}

int ls_segment_recover(struct ls_segment *s, uint64_t start_pos, int strict,
                       struct ls_scan_ctx *ctx, int *truncated)
{
	int rc = 0;
	struct stat st;
	uint64_t pos = 0, vpos = start_pos, chunk_start = 0;
	int64_t next = s->base_offset, max_ts = -1;
	char reason[160] = "";

	*truncated = 0;
	if (fstat(s->fd, &st) < 0)
		return -errno;
	uint64_t fsize = (uint64_t)st.st_size;
	/* the old entries, for the jumps they record (invariant 5) */
	size_t old_n = s->index.n;
	struct ls_index_entry *old = NULL;
	if (old_n && !(old = malloc(old_n * sizeof(*old))))
		return -ENOMEM;
	if (old_n)
		memcpy(old, s->index.e, old_n * sizeof(*old));
	s->index.n = 0;
	ctx->buf.len = 0;

	while (pos < fsize) {
		struct ls_batch_header h;
		uint64_t vsize;
		if (fsize - pos < LS_BATCH_HEADER_SIZE) {
			snprintf(reason, sizeof(reason), "torn header (%" PRIu64 " bytes)",
			         fsize - pos);
			break;
		}
		if ((rc = scan_fill(s, ctx, fsize, pos, LS_BATCH_HEADER_SIZE, &chunk_start)) < 0)
			goto out;
		const uint8_t *p = ctx->buf.data + (pos - chunk_start);
		if (ls_batch_parse_header(p, LS_BATCH_HEADER_SIZE, &h) < 0) {
			snprintf(reason, sizeof(reason), "bad header");
			break;
		}
		size_t size = ls_batch_size(&h);
		if (size > fsize - pos) {
			snprintf(reason, sizeof(reason),
			         "torn batch (%zu bytes, %" PRIu64 " in file)", size, fsize - pos);
			break;
		}
		if (pos + size > UINT32_MAX) {
			snprintf(reason, sizeof(reason), "segment over 4 GiB");
			break;
		}
		if ((rc = scan_fill(s, ctx, fsize, pos, size, &chunk_start)) < 0)
			goto out;
		p = ctx->buf.data + (pos - chunk_start);
		if (ls_batch_check_crc(p, &h) < 0) {
			snprintf(reason, sizeof(reason), "crc mismatch");
			break;
		}
		/* the old index may vouch for a batch (invariant 5) */
		size_t i = s->index.n;
		int vouched = i < old_n && old[i].base_offset == h.base_offset &&
		              old[i].file_pos == pos &&
		              (i == 0 || old[i - 1].view_pos == s->index.e[i - 1].view_pos);
		if (h.base_offset < next || (strict && h.base_offset != next && !vouched)) {
			snprintf(reason, sizeof(reason),
			         "base offset %" PRId64 " where %" PRId64 " was expected",
			         h.base_offset, next);
			break;
		}
		rc = ls_batch_measure(p, &h, &ctx->scratch, ctx->dctx, &vsize);
		if (rc == -ENOMEM)
			goto out;
		if (rc < 0 || vsize > UINT32_MAX) {
			snprintf(reason, sizeof(reason), "malformed records (%s)",
			         tfs_strerror(rc));
			rc = 0;
			break;
		}
		if ((rc = ls_index_reserve(&s->index, s->index.n + 1)) < 0)
			goto out;
		if (vouched && old[i].view_pos > vpos)
			vpos = old[i].view_pos;
		if (h.max_ts > max_ts)
			max_ts = h.max_ts;
		struct ls_index_entry e = {
			.base_offset = h.base_offset,
			.view_pos = vpos,
			.file_pos = (uint32_t)pos,
			.view_size = (uint32_t)vsize,
			.max_ts = max_ts,
		};
		ls_index_push(&s->index, &e);
		pos += size;
		vpos += vsize;
		next = h.base_offset + h.last_offset_delta + 1;
	}

	if (pos < fsize) {
		tfs_warn("%s segment %s: batch at byte %" PRIu64 ": %s; truncating "
		         "%" PRIu64 " bytes", s->dir, s->name, pos, reason, fsize - pos);
		if (ftruncate(s->fd, (off_t)pos) < 0) {
			rc = -errno;
			goto out;
		}
		*truncated = 1;
	}
	s->size = pos;
	s->end_offset = next;
	s->start_pos = s->index.n ? s->index.e[0].view_pos : start_pos;
	s->end_pos = vpos;
	s->max_ts = max_ts;
	rc = ls_index_rewrite(&s->index);
out:
	free(old);
	return rc;
}

int ls_segment_write(struct ls_segment *s, const void *batches, size_t len,
                     const struct ls_index_entry *e, size_t n, int *undo_failed)
{
	int rc;
	*undo_failed = 0;
	rc = ls_fsutil_pwrite_all(s->fd, batches, len, (off_t)s->size);
	if (rc < 0)
		goto err_after_log;
	rc = ls_index_write_entries(&s->index, s->index.n, e, n);
	if (rc < 0)
		goto err_after_idx;
	return 0;

err_after_idx:
	if (ftruncate(s->index.fd, (off_t)(s->index.n * LS_INDEX_ENTRY_SIZE)) < 0)
		*undo_failed = 1;
err_after_log:
	if (ftruncate(s->fd, (off_t)s->size) < 0)
		*undo_failed = 1;
	return rc;
}

void ls_segment_publish(struct ls_segment *s, const struct ls_index_entry *e,
                        size_t n, size_t len, int64_t end_offset)
{
	if (n == 0)
		return;
	if (s->index.n == 0)
		s->start_pos = e[0].view_pos;
	for (size_t i = 0; i < n; i++)
		ls_index_push(&s->index, &e[i]);
	s->size += len;
	s->end_offset = end_offset;
	s->end_pos = e[n - 1].view_pos + e[n - 1].view_size;
	s->max_ts = e[n - 1].max_ts;
}

int ls_segment_truncate(struct ls_segment *s, size_t i)
{
	int rc;
	struct ls_batch_header h;
	uint8_t hb[LS_BATCH_HEADER_SIZE];
	if (i >= s->index.n)
		return 0;
	uint64_t new_size = s->index.e[i].file_pos;
	if (ftruncate(s->fd, (off_t)new_size) < 0)
		return -errno;
	s->size = new_size;
	if ((rc = ls_index_truncate(&s->index, i)) < 0)
		return rc;
	if (i == 0) {
		s->end_offset = s->base_offset;
		s->end_pos = s->start_pos;
		s->max_ts = -1;
		return 0;
	}
	const struct ls_index_entry *last = &s->index.e[i - 1];
	if ((rc = ls_segment_read(s, last->file_pos, hb, sizeof(hb))) < 0)
		return rc;
	if ((rc = ls_batch_parse_header(hb, sizeof(hb), &h)) < 0)
		return rc;
	s->end_offset = h.base_offset + h.last_offset_delta + 1;
	s->end_pos = last->view_pos + last->view_size;
	s->max_ts = last->max_ts;
	return 0;
}

int ls_segment_read(const struct ls_segment *s, uint64_t pos, void *buf, size_t len)
{
	ssize_t r = ls_fsutil_pread_all(s->fd, buf, len, (off_t)pos);
	if (r < 0)
		return (int)r;
	if ((size_t)r < len) {
		tfs_error("%s segment %s: batch at byte %" PRIu64 ": file ends early",
		          s->dir, s->name, pos);
		return LS_ECORRUPT;
	}
	return 0;
}

int ls_segment_sync(struct ls_segment *s)
{
	if (fdatasync(s->fd) < 0)
		return -errno;
	if (fdatasync(s->index.fd) < 0)
		return -errno;
	return 0;
}

void ls_segment_close(struct ls_segment *s)
{
	if (!s)
		return;
	ls_index_free(&s->index);
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

int ls_segment_unlink(int dirfd, int64_t base_offset)
{
	char name[40];
	int rc = 0;
	ls_segment_filename(name, sizeof(name), base_offset, "log");
	if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
		rc = -errno;
	ls_segment_filename(name, sizeof(name), base_offset, "idx");
	if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT && rc == 0)
		rc = -errno;
	return rc;
}

void ls_scan_ctx_free(struct ls_scan_ctx *ctx)
{
	ls_buf_free(&ctx->buf);
	ls_buf_free(&ctx->scratch);
	ZSTD_freeDCtx(ctx->dctx);
	ctx->dctx = NULL;
}
