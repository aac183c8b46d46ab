/*
 * index.h - the per-segment batch index (%020llu.idx beside %020llu.log).
 * Layout and invariants are in the design comment of index.c.
 *
 * An ls_index is owned by its segment: all entries live in memory (the file
 * is only read at open and appended to), so every lookup is a binary search
 * over an array. Not thread-safe: the partition's lock protects it.
 */
#ifndef TFS_LS_INDEX_H
#define TFS_LS_INDEX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

#define LS_INDEX_ENTRY_SIZE 32

struct ls_index_entry {
	int64_t base_offset;  /* offset of the batch's first record */
	uint64_t view_pos;    /* view position of that record */
	uint32_t file_pos;    /* byte of the batch in the segment file */
	uint32_t view_size;   /* view bytes of all the batch's records */
	int64_t max_ts;       /* newest timestamp of this and all earlier batches
	                         of the segment (running max) */
};

struct ls_index {
	struct ls_index_entry *e;
	size_t n, cap;
	int fd;               /* the .idx file, -1 if none */
};

/* Serialises one entry into 32 big-endian bytes and back. */
void ls_index_encode(const struct ls_index_entry *e, uint8_t out[LS_INDEX_ENTRY_SIZE]);
void ls_index_decode(const uint8_t in[LS_INDEX_ENTRY_SIZE], struct ls_index_entry *e);

/* Reads every whole entry of ix->fd into memory (a trailing partial entry is
 * ignored) and checks that the entries are strictly increasing in offset and
 * file position and non-decreasing in view position and max_ts.
 * Returns 0, LS_ECORRUPT (entries are then dropped), or -errno. */
int ls_index_load(struct ls_index *ix) TFS_MUST_CHECK;

/* Room for n entries in memory. 0 or -ENOMEM. */
int ls_index_reserve(struct ls_index *ix, size_t n) TFS_MUST_CHECK;

/* Adds e to memory; room must have been reserved. Does no I/O. */
void ls_index_push(struct ls_index *ix, const struct ls_index_entry *e);

/* Writes n entries as entries i.. of the file (one pwrite). */
int ls_index_write_entries(struct ls_index *ix, size_t i,
                           const struct ls_index_entry *e, size_t n) TFS_MUST_CHECK;

/* Replaces the file's contents with the in-memory entries. */
int ls_index_rewrite(struct ls_index *ix) TFS_MUST_CHECK;

/* Drops entries from n on, in memory and in the file. */
int ls_index_truncate(struct ls_index *ix, size_t n) TFS_MUST_CHECK;

/* Largest i with e[i].base_offset <= offset; -1 if none. */
ssize_t ls_index_find_offset(const struct ls_index *ix, int64_t offset);
/* Largest i with e[i].view_pos <= pos; -1 if none. */
ssize_t ls_index_find_pos(const struct ls_index *ix, uint64_t pos);
/* Smallest i with e[i].max_ts >= ts; n if none. */
size_t ls_index_find_time(const struct ls_index *ix, int64_t ts);

/* Frees memory and closes the file. */
void ls_index_free(struct ls_index *ix);

#endif
