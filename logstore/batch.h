/*
 * batch.h - Kafka v2 record batches ("magic 2"): encoding, checking, decoding.
 * The byte layout and its rules are in the design comment of batch.c.
 *
 * Pure functions over caller-owned buffers: no I/O, no locks, no logging.
 * Compression contexts and buffers are passed in so callers can reuse them
 * (one per thread or per reader); nothing here allocates per record.
 */
#ifndef TFS_LS_BATCH_H
#define TFS_LS_BATCH_H

#include <stddef.h>
#include <stdint.h>
#include <zstd.h>

#include "logstore.h"

struct ls_batch_par; /* below */

#define LS_BATCH_HEADER_SIZE 61  /* bytes before the first record */
#define LS_BATCH_LOG_OVERHEAD 12 /* baseOffset + batchLength: not in batchLength */
#define LS_BATCH_MAGIC 2
#define LS_BATCH_MAX_SIZE (1u << 30) /* larger batches are refused as corrupt */
#define LS_BATCH_ATTR_CODEC_MASK 0x07
#define LS_BATCH_ATTR_UNSUPPORTED 0x30 /* transactional, control: refused */

/* Byte offsets of header fields (see batch.c). */
#define LS_BATCH_OFF_LENGTH 8
#define LS_BATCH_OFF_EPOCH 12
#define LS_BATCH_OFF_CRC 17
#define LS_BATCH_OFF_ATTRS 21

/* A growable byte buffer. Zero-initialise; free with ls_buf_free(). */
struct ls_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
};

/* Ensures b->cap >= need (keeps contents). Returns 0 or -ENOMEM. */
int ls_buf_reserve(struct ls_buf *b, size_t need) TFS_MUST_CHECK;
void ls_buf_free(struct ls_buf *b);

/* The fixed fields of one batch, host order. */
struct ls_batch_header {
	int64_t base_offset;
	int32_t length;             /* batchLength: total size - 12 */
	int32_t leader_epoch;
	int8_t magic;
	uint32_t crc;
	int16_t attributes;
	int32_t last_offset_delta;
	int64_t base_ts;
	int64_t max_ts;
	int64_t producer_id;
	int16_t producer_epoch;
	int32_t base_sequence;
	int32_t record_count;
};

/* Total bytes of the batch described by h. */
static inline size_t ls_batch_size(const struct ls_batch_header *h)
{
	return (size_t)h->length + LS_BATCH_LOG_OVERHEAD;
}

/* One decoded record. key/value point into the iterator's buffers and stay
 * valid until they are reused. key_len/value_len -1: null. */
struct ls_batch_record {
	int64_t offset;
	int64_t timestamp;
	int64_t ts_delta;
	int32_t offset_delta;
	int32_t key_len;
	int32_t value_len;
	const void *key;
	const void *value;
	uint32_t view_size;         /* bytes this record takes in the view */
};

/* View bytes of a record: [key SEP] value '\n'. */
static inline uint64_t ls_batch_view_size(int64_t key_len, int64_t value_len)
{
	return (key_len >= 0 ? (uint64_t)key_len + 1 : 0) +
	       (value_len > 0 ? (uint64_t)value_len : 0) + 1;
}

/* Parses the 61-byte header at buf (avail bytes readable) and checks what can
 * be checked without the body: magic 2, a sane length, record count >= 0.
 * Returns 0, or LS_ECORRUPT (also when avail < 61). Does not check the CRC. */
int ls_batch_parse_header(const void *buf, size_t avail,
                          struct ls_batch_header *h) TFS_MUST_CHECK;

/* CRC-32C over attributes..end against the stored crc. 0 or LS_ECORRUPT. */
int ls_batch_check_crc(const void *batch, const struct ls_batch_header *h) TFS_MUST_CHECK;

/* Record iterator over one batch. Init decompresses the records section into
 * scratch if the batch is compressed (dctx then required). Returns 0,
 * -ENOTSUP for a codec other than none/zstd or transactional/control
 * batches, LS_ECORRUPT if decompression fails, or -ENOMEM. */
struct ls_batch_iter {
	const uint8_t *p, *end;
	int32_t left;
	int64_t base_offset;
	int64_t base_ts;
};
int ls_batch_iter_init(struct ls_batch_iter *it, const void *batch,
                       const struct ls_batch_header *h, struct ls_buf *scratch,
                       ZSTD_DCtx *dctx) TFS_MUST_CHECK;

/* Decompresses the records section of a zstd batch into dec (the frames of
 * ls_batch_encode_par in parallel through par; else on this thread with
 * dctx). 0, LS_ECORRUPT, -ENOTSUP (not zstd), -ENOMEM. Then iterate with
 * ls_batch_iter_init_decoded. */
int ls_batch_decode(const void *batch, const struct ls_batch_header *h,
                    struct ls_buf *dec, ZSTD_DCtx *dctx,
                    const struct ls_batch_par *par) TFS_MUST_CHECK;

/* Like ls_batch_iter_init over records already decompressed (recs, len: the
 * batch's plain records section, e.g. dec after ls_batch_render). */
void ls_batch_iter_init_decoded(struct ls_batch_iter *it, const void *recs, size_t len,
                                const struct ls_batch_header *h);

/* Next record: 1 with *r filled, 0 after the last one (and only if the
 * records section was consumed exactly), LS_ECORRUPT on malformed bytes. */
int ls_batch_iter_next(struct ls_batch_iter *it, struct ls_batch_record *r) TFS_MUST_CHECK;

/* Walks every record of the batch: checks that the records parse, that their
 * count matches, and sums their view sizes into *view_size. The CRC is not
 * checked here. Returns 0, LS_ECORRUPT, -ENOTSUP or -ENOMEM. */
int ls_batch_measure(const void *batch, const struct ls_batch_header *h,
                     struct ls_buf *scratch, ZSTD_DCtx *dctx,
                     uint64_t *view_size) TFS_MUST_CHECK;

/* Encodes recs[0..n) as one batch into out (replacing its contents): base
 * offset 0, leader epoch 0 (stamp both later with ls_batch_stamp), every
 * record at timestamp ts_ms (delta 0), producer fields from prod or -1.
 * scratch holds the uncompressed records when codec is zstd (cctx then
 * required). *view_size gets the view bytes of all records.
 * Returns 0, -EMSGSIZE (a key/value over 2 GiB or batch over
 * LS_BATCH_MAX_SIZE), -ENOMEM, or -EIO if zstd fails. */
int ls_batch_encode(struct ls_buf *out, struct ls_buf *scratch, ZSTD_CCtx *cctx,
                    const struct ls_rec *recs, uint32_t n, int64_t ts_ms,
                    const struct ls_producer *prod, enum ls_codec codec, int level,
                    uint64_t *view_size) TFS_MUST_CHECK;

/* ---- parallel encoding and rendering ------------------------------------- */

/* How to spread one batch's work over threads. batch.c starts no threads: run
 * calls fn(arg, i) for every i in [0, n), on the calling thread or others,
 * and returns when all calls have returned; cctx/dctx give the contexts of
 * whichever thread calls them (NULL: out of memory). scratch (optional)
 * gives the calling thread's own buffer: a rendering piece decompresses its
 * frame there instead of into the shared dec, so the bytes zstd writes and
 * reads back are lines no other core holds (a line another core read last
 * must be fetched from it before it can be written: on a 2-core machine,
 * decompressing into buffers the reader's core had read made cat pending
 * 12% slower). */
struct ls_batch_par {
	void *ctx;
	size_t parts; /* split work into at most this many pieces (1: none) */
	void (*run)(void *ctx, size_t n, void (*fn)(void *arg, size_t i), void *arg);
	ZSTD_CCtx *(*cctx)(void *ctx);
	ZSTD_DCtx *(*dctx)(void *ctx);
	struct ls_buf *(*scratch)(void *ctx);
};

#define LS_BATCH_PARTS_MAX 16         /* pieces of one batch, at most */
#define LS_BATCH_PART_MIN (256u << 10) /* records bytes per piece, at least */

/* Like ls_batch_encode, with the records split into up to par->parts pieces
 * of at least LS_BATCH_PART_MIN bytes at record boundaries, encoded (and,
 * for zstd, compressed) in parallel. A zstd records section is then several
 * zstd frames back to back, each holding whole records and its content size
 * (a valid zstd stream: one records section, as Kafka requires). par NULL:
 * exactly ls_batch_encode (cctx used, one frame). */
int ls_batch_encode_par(struct ls_buf *out, struct ls_buf *scratch, ZSTD_CCtx *cctx,
                        const struct ls_batch_par *par, const struct ls_rec *recs,
                        uint32_t n, int64_t ts_ms, const struct ls_producer *prod,
                        enum ls_codec codec, int level,
                        uint64_t *view_size) TFS_MUST_CHECK;

/* A piece of a rendered view: bytes [off, off + len) of the view buffer,
 * holding count records from offset delta first_delta to last_delta;
 * dense: their deltas are consecutive. */
struct ls_batch_span {
	size_t off, len;
	int32_t count, first_delta, last_delta;
	int dense;
};

/* Renders every record of a batch whose CRC was checked as [key SEP] value
 * '\n' into view: the batch's view is spans[0], spans[1], ... spans[*nspans-1]
 * in order (bytes between spans are not part of it). A zstd section made of
 * frames that each hold whole records (ls_batch_encode_par) is decompressed
 * and rendered frame by frame through par (NULL: on this thread with dctx);
 * anything else in one pass. Checks everything ls_batch_measure checks, and
 * returns its errors; *view_size gets the view bytes. A compressed batch
 * leaves its plain records in dec; dec_ready: dec already holds them (from
 * an earlier call or ls_batch_iter_init), nothing is decompressed again;
 * with par->scratch the frames are decompressed apart and dec is left as it
 * was (*dec_kept 0), else *dec_kept is 1 (dec_kept may be NULL). */
int ls_batch_render(const void *batch, const struct ls_batch_header *h,
                    struct ls_buf *dec, int dec_ready, struct ls_buf *view, char sep,
                    ZSTD_DCtx *dctx, const struct ls_batch_par *par,
                    struct ls_batch_span spans[LS_BATCH_PARTS_MAX], size_t *nspans,
                    uint64_t *view_size, int *dec_kept) TFS_MUST_CHECK;

/* ls_batch_render in three steps, for callers that run the pieces later or
 * elsewhere: begin prepares j (it keeps pointers into batch, dec and view,
 * which must stay put until end) and returns the number of pieces n or an
 * error; ls_batch_render_piece(j, k) must then run once for every k < n, on
 * any threads; end checks and gives the spans; then dec_kept says whether
 * dec holds the plain records (see ls_batch_render). */
struct ls_batch_render_part { /* private */
	const uint8_t *z;
	size_t zlen, off, len, vlen;
	int32_t count, first_delta, last_delta;
	int rc, undecodable, dense;
};
struct ls_batch_render_job { /* private */
	const uint8_t *recs;
	uint8_t *dec, *view;
	char sep;
	const struct ls_batch_par *par;
	ZSTD_DCtx *dctx;
	size_t nparts, total;
	int32_t record_count, last_offset_delta;
	int dec_kept;        /* dec holds the plain records (zstd) */
	int apart;           /* pieces decompress into par->scratch */
	/* optional, set by the caller after begin: piece k appends the view
	 * size of each of its records (uint32_t, in order) to sizes[k] */
	struct ls_buf *sizes;
	struct ls_batch_render_part part[LS_BATCH_PARTS_MAX];
};
int ls_batch_render_begin(struct ls_batch_render_job *j, const void *batch,
                          const struct ls_batch_header *h, struct ls_buf *dec, int dec_ready,
                          struct ls_buf *view, char sep, ZSTD_DCtx *dctx,
                          const struct ls_batch_par *par) TFS_MUST_CHECK;
void ls_batch_render_piece(void *j, size_t k);
int ls_batch_render_end(struct ls_batch_render_job *j,
                        struct ls_batch_span spans[LS_BATCH_PARTS_MAX], size_t *nspans,
                        uint64_t *view_size) TFS_MUST_CHECK;

/* Encodes already-decoded records (their offset_delta, ts_delta, key, value)
 * with the header fields of tmpl (base offset, epoch, timestamps, producer
 * fields, last_offset_delta; length/crc/count are computed). Used by
 * compaction. Same returns as ls_batch_encode. */
int ls_batch_encode_records(struct ls_buf *out, struct ls_buf *scratch,
                            ZSTD_CCtx *cctx, const struct ls_batch_record *recs,
                            uint32_t n, const struct ls_batch_header *tmpl,
                            enum ls_codec codec, int level) TFS_MUST_CHECK;

/* Writes baseOffset and partitionLeaderEpoch (outside the CRC). */
void ls_batch_stamp(void *batch, int64_t base_offset, int32_t leader_epoch);

/* Rewrites baseTimestamp and maxTimestamp of a batch made by ls_batch_encode
 * (all record deltas 0) and recomputes the CRC. */
void ls_batch_set_timestamp(void *batch, size_t size, int64_t ts_ms);

#endif
