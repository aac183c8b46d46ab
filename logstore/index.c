/*
 * index.c - the dense batch index of one segment (see index.h).
 *
 * Owns: the in-memory entry array of a segment and its .idx file.
 *
 * One 32-byte entry per batch, big-endian, entry i at byte 32*i:
 *
 *   off size field        meaning
 *   --- ---- ------------ ------------------------------------------------
 *     0    8 base_offset  offset of the batch's first record
 *     8    8 view_pos     view position of that record
 *    16    4 file_pos     byte of the batch in the .log file
 *    20    4 view_size    view bytes of the batch's records
 *    24    8 max_ts       running max of the batches' maxTimestamp
 *
 * This one dense index serves as Kafka's offset index, a byte-position index
 * for the view, and the time index:
 *   - offset -> batch: binary search on base_offset;
 *   - view position -> batch: binary search on view_pos; a position at or
 *     past view_pos + view_size lies in a compaction hole before the next
 *     entry;
 *   - time -> batch: binary search on max_ts (a running max, so sorted).
 * view_size (rather than a record count) lets view lookups, hole detection
 * and end positions be answered from the index alone without decompressing
 * a batch. A batch's view is at most 4 GiB - 1 (the encoder caps batches far
 * below that).
 *
 * Invariants:
 *  1. base_offset and file_pos strictly increase; view_pos and max_ts never
 *     decrease.
 *  2. The file is never fsynced on the append path: after an unclean
 *     shutdown it is rebuilt from the .log for every segment at or after the
 *     recovery point. Closed segments' files are fsynced when they close
 *     (segment roll) or are rewritten (compaction).
 *  3. The memory array and the file hold the same entries, except that the
 *     file may be shorter after a failed write (recovery fixes it).
 */
#include "index.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"

static inline void put64(uint8_t *p, uint64_t v)
{
	v = __builtin_bswap64(v);
	memcpy(p, &v, 8);
}
static inline void put32(uint8_t *p, uint32_t v)
{
	v = __builtin_bswap32(v);
	memcpy(p, &v, 4);
}
static inline uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return __builtin_bswap64(v);
}
static inline uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return __builtin_bswap32(v);
}

void ls_index_encode(const struct ls_index_entry *e, uint8_t out[LS_INDEX_ENTRY_SIZE])
{
	put64(out + 0, (uint64_t)e->base_offset);
	put64(out + 8, e->view_pos);
	put32(out + 16, e->file_pos);
	put32(out + 20, e->view_size);
	put64(out + 24, (uint64_t)e->max_ts);
}

void ls_index_decode(const uint8_t in[LS_INDEX_ENTRY_SIZE], struct ls_index_entry *e)
{
	e->base_offset = (int64_t)get64(in + 0);
	e->view_pos = get64(in + 8);
	e->file_pos = get32(in + 16);
	e->view_size = get32(in + 20);
	e->max_ts = (int64_t)get64(in + 24);
}

int ls_index_reserve(struct ls_index *ix, size_t n)
{
	if (ix->cap >= n)
		return 0;
	size_t cap = ix->cap ? ix->cap : 64;
	while (cap < n)
		cap *= 2;
	struct ls_index_entry *e = realloc(ix->e, cap * sizeof(*e));
	if (!e)
		return -ENOMEM;
	ix->e = e;
	ix->cap = cap;
	return 0;
}

void ls_index_push(struct ls_index *ix, const struct ls_index_entry *e)
{
	ix->e[ix->n++] = *e;
}

int ls_index_load(struct ls_index *ix)
{
	int rc = 0;
	uint8_t *buf = NULL;
	struct stat st;
	ix->n = 0;
	if (fstat(ix->fd, &st) < 0)
		return -errno;
	size_t n = (size_t)st.st_size / LS_INDEX_ENTRY_SIZE;
	if (n == 0)
		return 0;
	if ((rc = ls_index_reserve(ix, n)) < 0)
		return rc;
	buf = malloc(n * LS_INDEX_ENTRY_SIZE);
	if (!buf)
		return -ENOMEM;
	ssize_t r = ls_fsutil_pread_all(ix->fd, buf, n * LS_INDEX_ENTRY_SIZE, 0);
	if (r < 0) {
		rc = (int)r;
		goto out;
	}
	n = (size_t)r / LS_INDEX_ENTRY_SIZE;
	for (size_t i = 0; i < n; i++) {
		struct ls_index_entry *e = &ix->e[i];
		ls_index_decode(buf + i * LS_INDEX_ENTRY_SIZE, e);
		if (i > 0 && (e->base_offset <= e[-1].base_offset ||
		              e->file_pos <= e[-1].file_pos ||
		              e->view_pos < e[-1].view_pos || e->max_ts < e[-1].max_ts)) {
			rc = LS_ECORRUPT;
			goto out;
		}
	}
	ix->n = n;
out:
	free(buf);
	return rc;
}

int ls_index_write_entries(struct ls_index *ix, size_t i,
                           const struct ls_index_entry *e, size_t n)
{
	uint8_t one[LS_INDEX_ENTRY_SIZE] = {0};
	uint8_t *b = one;
	int rc;
	if (n == 0)
		return 0;
	if (n > 1 && !(b = malloc(n * LS_INDEX_ENTRY_SIZE)))
		return -ENOMEM;
	for (size_t k = 0; k < n; k++)
		ls_index_encode(&e[k], b + k * LS_INDEX_ENTRY_SIZE);
	rc = ls_fsutil_pwrite_all(ix->fd, b, n * LS_INDEX_ENTRY_SIZE,
	                          (off_t)(i * LS_INDEX_ENTRY_SIZE));
	if (b != one)
		free(b);
	return rc;
}

int ls_index_rewrite(struct ls_index *ix)
{
	int rc = 0;
	if (ftruncate(ix->fd, 0) < 0)
		return -errno;
	if (ix->n == 0)
		return 0;
	size_t len = ix->n * LS_INDEX_ENTRY_SIZE;
	uint8_t *buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < ix->n; i++)
		ls_index_encode(&ix->e[i], buf + i * LS_INDEX_ENTRY_SIZE);
	rc = ls_fsutil_pwrite_all(ix->fd, buf, len, 0);
	free(buf);
	return rc;
}

int ls_index_truncate(struct ls_index *ix, size_t n)
{
	if (n < ix->n)
		ix->n = n;
	if (ftruncate(ix->fd, (off_t)(n * LS_INDEX_ENTRY_SIZE)) < 0)
		return -errno;
	return 0;
}

ssize_t ls_index_find_offset(const struct ls_index *ix, int64_t offset)
{
	size_t lo = 0, hi = ix->n; /* answer: lo - 1 */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ix->e[mid].base_offset <= offset)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (ssize_t)lo - 1;
}

ssize_t ls_index_find_pos(const struct ls_index *ix, uint64_t pos)
{
	size_t lo = 0, hi = ix->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ix->e[mid].view_pos <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (ssize_t)lo - 1;
}

size_t ls_index_find_time(const struct ls_index *ix, int64_t ts)
{
	size_t lo = 0, hi = ix->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ix->e[mid].max_ts < ts)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

void ls_index_free(struct ls_index *ix)
{
	free(ix->e);
	ix->e = NULL;
	ix->n = ix->cap = 0;
	if (ix->fd >= 0)
		close(ix->fd);
	ix->fd = -1;
}
