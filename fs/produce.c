/*
 * produce.c - see produce.h.
 *
 * A write() is split at '\n'. The first line may continue the partial line
 * the file kept from earlier writes; it is joined in pr->partial, the others
 * point straight into the caller's buffer (no copy before encoding). Records
 * are then grouped by partition and each group is appended as one batch.
 *
 * Over-long lines: once a line passes max_record_bytes (in one write or
 * across several), the write that carries it past the limit fails with
 * EMSGSIZE and produces nothing, and the line is dropped up to and including
 * its '\n'. Lines before it in the same write are produced and the write
 * returns their count (a short write), so the writer sends the long line
 * again as the start of its next write, which then fails.
 *
 * A write that carries the partial line past the limit may be the second
 * FUSE request of one write() larger than max_write: the kernel then tells
 * the writer only of a short write (the first request's bytes), and the
 * writer sends the rest again, starting with the refused line's tail, which
 * alone may fit. So the refused request's bytes, to its line's '\n', are
 * kept (pr->refused): a write that starts with them fails with EMSGSIZE
 * too; any other write forgets them. A line that continues past the
 * refused request is dropped to its '\n' (discarding).
 *
 * A failed append (ENOSPC, ...) leaves the file as it was before the write,
 * its partial line included, so the writer's retry makes the same records.
 */
#include "produce.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../logstore/log.h"

void producer_init(struct producer *pr, struct rep_topic *t, int64_t partition,
                   int64_t producer_id)
{
	memset(pr, 0, sizeof(*pr));
	pr->topic = t;
	pr->fixed_partition = partition;
	pr->producer_id = producer_id;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	sticky_rr_init(&pr->rr, (uint32_t)(ts.tv_nsec ^ (uint64_t)producer_id));
}

void producer_free(struct producer *pr)
{
	free(pr->seq);
	free(pr->written);
	free(pr->marks);
	free(pr->partial);
	free(pr->refused);
	free(pr->recs);
	free(pr->rec_part);
	free(pr->sorted);
	memset(pr, 0, sizeof(*pr));
}

static int ensure_recs(struct producer *pr, size_t n)
{
	if (n <= pr->crecs)
		return 0;
	size_t c = pr->crecs ? pr->crecs : 256;
	while (c < n)
		c *= 2;
	struct ls_rec *r = realloc(pr->recs, c * sizeof(*r));
	if (!r)
		return -ENOMEM;
	pr->recs = r;
	uint32_t *p = realloc(pr->rec_part, c * sizeof(*p));
	if (!p)
		return -ENOMEM;
	pr->rec_part = p;
	struct ls_rec *s = realloc(pr->sorted, c * sizeof(*s));
	if (!s)
		return -ENOMEM;
	pr->sorted = s;
	pr->crecs = c;
	return 0;
}

static int ensure_parts(struct producer *pr, uint32_t n)
{
	if (n <= pr->nparts_seen)
		return 0;
	int32_t *seq = realloc(pr->seq, n * sizeof(*seq));
	if (!seq)
		return -ENOMEM;
	pr->seq = seq;
	uint8_t *w = realloc(pr->written, n);
	if (!w)
		return -ENOMEM;
	pr->written = w;
	struct rep_marks *mk = realloc(pr->marks, n * sizeof(*mk));
	if (!mk)
		return -ENOMEM;
	pr->marks = mk;
	for (uint32_t i = pr->nparts_seen; i < n; i++) {
		pr->seq[i] = 0;
		pr->written[i] = 0;
		pr->marks[i] = (struct rep_marks){0};
	}
	pr->nparts_seen = n;
	return 0;
}

static int partial_append(struct producer *pr, const char *buf, size_t len)
{
	if (pr->plen + len > pr->pcap) {
		size_t c = pr->pcap ? pr->pcap : 256;
		while (c < pr->plen + len)
			c *= 2;
		char *p = realloc(pr->partial, c);
		if (!p)
			return -ENOMEM;
		pr->partial = p;
		pr->pcap = c;
	}
	memcpy(pr->partial + pr->plen, buf, len);
	pr->plen += len;
	return 0;
}

/* Keeps buf[0, len) as a refused write (see the top of the file). */
static void refused_keep(struct producer *pr, const char *buf, size_t len)
{
	free(pr->refused);
	pr->refused = malloc(len);
	pr->refused_len = pr->refused ? len : 0;
	if (pr->refused)
		memcpy(pr->refused, buf, len);
}

static void refused_forget(struct producer *pr)
{
	free(pr->refused);
	pr->refused = NULL;
	pr->refused_len = 0;
}

/* Fills rec from one line (without its '\n'). */
static void make_rec(struct ls_rec *rec, const char *line, size_t len,
                     const struct topic_config *cfg)
{
	const char *sep = cfg->key_separator ? memchr(line, cfg->key_separator, len) : NULL;
	if (sep) {
		rec->key = line;
		rec->key_len = (uint32_t)(sep - line);
		rec->value = sep + 1;
		rec->value_len = (uint32_t)(len - rec->key_len - 1);
		if (rec->value_len == 0 && cfg->cleanup == LS_CLEANUP_COMPACT)
			rec->value = NULL; /* tombstone */
	} else {
		rec->key = NULL;
		rec->key_len = 0;
		rec->value = line;
		rec->value_len = (uint32_t)len;
	}
}

/* Appends recs[0..n) (all for partition p) as one batch. */
static int append_group(struct producer *pr, uint32_t p, const struct ls_rec *recs, uint32_t n)
{
	struct rep_partition *rp = rep_topic_partition(pr->topic, p);
	if (!rp)
		return -ENOENT;
	struct ls_producer prod = {
		.producer_id = pr->producer_id,
		.producer_epoch = 0,
		.base_sequence = pr->seq[p],
	};
	struct ls_append_result res;
	int rc = rep_produce(rp, recs, n, pr->producer_id >= 0 ? &prod : NULL, &res);
	if (rc < 0)
		return rc;
	pr->seq[p] += (int32_t)n;
	pr->written[p] = 1;
	rep_marks_add(rp, &pr->marks[p], &res);
	return 0;
}

/* Routes and appends the n records in pr->recs. */
static int dispatch(struct producer *pr, uint32_t n, uint32_t nparts)
{
	if (n == 0)
		return 0;
	if (pr->fixed_partition >= 0)
		return append_group(pr, (uint32_t)pr->fixed_partition, pr->recs, n);

	/* Partitioner: keyed records by hash, unkeyed ones all to this write's
	 * sticky partition. */
	int have_sticky = 0;
	uint32_t sticky = 0, first = UINT32_MAX;
	int mixed = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct ls_rec *r = &pr->recs[i];
		uint32_t p;
		if (r->key) {
			p = partition_for_key(r->key, r->key_len, nparts);
		} else {
			if (!have_sticky) {
				sticky = sticky_rr_pick(&pr->rr, nparts);
				have_sticky = 1;
			}
			p = sticky;
		}
		pr->rec_part[i] = p;
		if (first == UINT32_MAX)
			first = p;
		else if (p != first)
			mixed = 1;
	}
	if (!mixed)
		return append_group(pr, first, pr->recs, n);

	/* Several batches: a full disk must refuse them all, not the last. */
	uint64_t bytes = 0;
	for (uint32_t i = 0; i < n; i++)
		bytes += pr->recs[i].value_len + (pr->recs[i].key ? pr->recs[i].key_len : 0) + 16;
	int room = rep_topic_room(pr->topic, bytes);
	if (room < 0)
		return room;

	/* Stable counting sort by partition, one batch per partition. */
	uint32_t *count = calloc(nparts + 1, sizeof(*count));
	if (!count)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		count[pr->rec_part[i] + 1]++;
	for (uint32_t p = 0; p < nparts; p++)
		count[p + 1] += count[p];
	uint32_t *pos = malloc((nparts + 1) * sizeof(*pos));
	if (!pos) {
		free(count);
		return -ENOMEM;
	}
	memcpy(pos, count, (nparts + 1) * sizeof(*pos));
	for (uint32_t i = 0; i < n; i++)
		pr->sorted[pos[pr->rec_part[i]]++] = pr->recs[i];
	int rc = 0;
	for (uint32_t p = 0; p < nparts && rc == 0; p++)
		if (count[p + 1] > count[p])
			rc = append_group(pr, p, pr->sorted + count[p], count[p + 1] - count[p]);
	free(pos);
	free(count);
	return rc;
}

static ssize_t write_lines(struct producer *pr, const char *buf, size_t len)
{
	struct topic_config cfg;
	rep_topic_config(pr->topic, &cfg);
	uint32_t nparts = cfg.partitions;
	int rc = ensure_parts(pr, nparts);
	if (rc < 0)
		return rc;
	if (pr->fixed_partition >= (int64_t)nparts)
		return -ENOENT;

	const char *p = buf, *end = buf + len;
	uint32_t n = 0;
	size_t max = cfg.max_record_bytes;

	if (pr->refused_len) {
		if (len >= pr->refused_len && memcmp(buf, pr->refused, pr->refused_len) == 0)
			return -EMSGSIZE; /* the refused write again */
		refused_forget(pr);
	}

	/* The first line continues the partial line (or the discarded one). */
	const char *nl = memchr(p, '\n', len);
	if (pr->discarding) {
		if (!nl)
			return (ssize_t)len;
		pr->discarding = 0;
		p = nl + 1;
	} else if (pr->plen) {
		size_t piece = (size_t)((nl ? nl : end) - p);
		if (pr->plen + piece > max) {
			/* This write carries the line past the limit: it fails, the
			 * line is dropped to its '\n', nothing else is produced. */
			pr->plen = 0;
			pr->discarding = !nl;
			refused_keep(pr, buf, nl ? (size_t)(nl + 1 - buf) : len);
			return -EMSGSIZE;
		}
		rc = partial_append(pr, p, piece);
		if (rc < 0)
			return rc;
		if (!nl)
			return (ssize_t)len;
		rc = ensure_recs(pr, 1);
		if (rc < 0)
			return rc;
		make_rec(&pr->recs[n++], pr->partial, pr->plen, &cfg);
		p = nl + 1;
	}

	/* Whole lines, in one pass; the scratch arrays grow (and stay grown
	 * for the file's next writes) by doubling. A line over the limit ends
	 * the pass (see below). */
	const char *bad = NULL;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			break;
		size_t l = (size_t)(nl - p);
		if (l > max) {
			bad = p;
			break;
		}
		if (n == pr->crecs && (rc = ensure_recs(pr, n + 1)) < 0)
			return rc;
		make_rec(&pr->recs[n++], p, l, &cfg);
		p = nl + 1;
	}
	if (!bad && p < end && (size_t)(end - p) > max)
		bad = p; /* the partial tail is over the limit already */

	/* A line over the limit: the lines before it are produced and the
	 * write returns their byte count (POSIX: a short write), so the writer
	 * writes the rest again; a write that starts with such a line fails
	 * with EMSGSIZE, drops that line and produces nothing, so a writer that
	 * retries a failed write (Python's buffered files do, at close) never
	 * duplicates a record. */
	if (bad && bad == buf) {
		nl = memchr(bad, '\n', (size_t)(end - bad));
		pr->discarding = !nl;
		return -EMSGSIZE;
	}
	rc = dispatch(pr, n, nparts);
	if (rc < 0)
		return rc;
	/* The first record may point into pr->partial: reset it only now. */
	pr->plen = 0;
	if (bad)
		return (ssize_t)(bad - buf);

	/* Keep the tail as the new partial line. */
	if (p < end && (rc = partial_append(pr, p, (size_t)(end - p))) < 0)
		return rc;
	return (ssize_t)len;
}

ssize_t producer_write(struct producer *pr, const char *buf, size_t len)
{
	size_t plen0 = pr->plen;
	int discarding0 = pr->discarding;
	ssize_t rc = write_lines(pr, buf, len);
	if (rc < 0 && rc != -EMSGSIZE) { /* as before the write */
		pr->plen = plen0;
		pr->discarding = discarding0;
	}
	return rc;
}

int producer_flush(struct producer *pr)
{
	if (pr->discarding) {
		pr->discarding = 0;
		return 0;
	}
	if (!pr->plen)
		return 0;
	struct topic_config cfg;
	rep_topic_config(pr->topic, &cfg);
	int rc = ensure_parts(pr, cfg.partitions);
	if (rc == 0)
		rc = ensure_recs(pr, 1);
	if (rc < 0)
		return rc;
	make_rec(&pr->recs[0], pr->partial, pr->plen, &cfg);
	rc = dispatch(pr, 1, cfg.partitions);
	pr->plen = 0;
	return rc;
}

/* fn on every partition written through pr since the last fsync; -EIO if
 * any failed. fsync (durable) then forgets the ones that succeeded. */
static int each_written(struct producer *pr,
                        int (*fn)(struct rep_partition *, struct rep_marks *), int durable)
{
	int rc = 0;
	for (uint32_t p = 0; p < pr->nparts_seen; p++) {
		if (!pr->written[p])
			continue;
		struct rep_partition *rp = rep_topic_partition(pr->topic, p);
		int prc = rp ? fn(rp, &pr->marks[p]) : -EIO;
		if (prc == -ENOENT || (prc < 0 && rep_topic_deleted(pr->topic)))
			rc = -ENOENT; /* the topic was deleted: its records with it */
		else if (prc < 0 && rc == 0)
			rc = -EIO;
		else if (durable)
			pr->written[p] = 0;
	}
	return rc;
}

int producer_wait_acked(struct producer *pr)
{
	return each_written(pr, rep_partition_wait_acked, 0);
}

int producer_commit(struct producer *pr)
{
	return each_written(pr, rep_partition_commit, 1);
}
