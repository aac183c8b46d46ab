/*
 * produce.h - turning bytes written to a file into records: line framing, the
 * partial line each open file carries, keys, record size limits, routing
 * (fixed partition for <p>/log, the partitioner for producer files) and one
 * batch per partition per write() (so a write is visible atomically).
 */
#ifndef TFS_PRODUCE_H
#define TFS_PRODUCE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../replicator/replicator.h"
#include "partitioner.h"

struct producer {
	struct rep_topic *topic;   /* not owned: the open file's reference */
	int64_t fixed_partition;   /* >= 0 for <p>/log; -1: route by partitioner */
	int64_t producer_id;
	int32_t *seq;              /* next sequence number per partition */
	uint8_t *written;          /* partitions written since the last commit */
	struct rep_marks *marks;   /* ... and what was appended to each */
	uint32_t nparts_seen;      /* size of seq, written and marks */

	char *partial;             /* bytes after the last '\n' so far */
	size_t plen, pcap;
	int discarding;            /* inside an over-long line: drop to its '\n' */
	char *refused;             /* a write that failed mid-line with EMSGSIZE, */
	size_t refused_len;        /* to its line's '\n': a re-send fails again */

	struct ls_rec *recs;       /* scratch, reused across writes */
	uint32_t *rec_part;
	struct ls_rec *sorted;
	size_t crecs;
	struct sticky_rr rr;
};

/* Sets up pr for writes to topic t (partition p, or -1 for the partitioner). */
void producer_init(struct producer *pr, struct rep_topic *t, int64_t partition,
                   int64_t producer_id);
void producer_free(struct producer *pr);

/* Produces every complete line in buf; keeps a trailing partial line.
 * Returns the bytes taken: len, or fewer when a line over max_record_bytes
 * follows the lines produced (a short write: the writer sends the rest
 * again); -EMSGSIZE when buf starts with such a line, or carries the partial
 * line past the limit, or sends such a refused write again (dropped to its
 * '\n', nothing produced); or the error of the append (-ENOSPC, -EROFS, ...),
 * after which the file is as before the write. */
ssize_t producer_write(struct producer *pr, const char *buf, size_t len) TFS_MUST_CHECK;

/* Produces the partial last line, if any (on close). */
int producer_flush(struct producer *pr) TFS_MUST_CHECK;

/* Commits every partition written through pr (fsync): -EIO on failure. */
int producer_commit(struct producer *pr) TFS_MUST_CHECK;

/* Waits until what pr wrote is committed under each topic's acks policy,
 * without fsync (close): -EIO if it could not be. */
int producer_wait_acked(struct producer *pr) TFS_MUST_CHECK;

#endif
