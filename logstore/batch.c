/*
 * batch.c - Kafka v2 record batches (see batch.h for the API).
 *
 * Owns nothing but the format. A batch on disk and on the wire, big-endian:
 *
 *   off size field                 notes
 *   --- ---- --------------------- -------------------------------------------
 *     0    8 baseOffset            offset of the first record (stamped late)
 *     8    4 batchLength           bytes after this field (total - 12)
 *    12    4 partitionLeaderEpoch  stamped late; NOT covered by the CRC
 *    16    1 magic                 2
 *    17    4 crc                   CRC-32C of bytes 21..end
 *    21    2 attributes            bits 0-2 codec (0 none, 4 zstd), 3 timestamp
 *                                  type, 4 transactional, 5 control
 *    23    4 lastOffsetDelta
 *    27    8 baseTimestamp         ms since the epoch
 *    35    8 maxTimestamp
 *    43    8 producerId            -1: none
 *    51    2 producerEpoch         -1: none
 *    53    4 baseSequence          -1: none
 *    57    4 recordCount
 *    61    . records               zstd frame of the records when codec is 4
 *
 * A record (all varints are zigzag, as Kafka's ByteUtils.writeVarint):
 *
 *   length varint (bytes after this field) | attributes int8 (0) |
 *   timestampDelta varlong | offsetDelta varint | keyLength varint (-1 null) |
 *   key | valueLength varint (-1 null) | value | headerCount varint |
 *   headers: (keyLength varint, key, valueLength varint, value) * count
 *
 * Invariants:
 *  1. Encoders write every record with headerCount 0; decoders accept and
 *     skip headers.
 *  2. A decoded record never points outside the records section, and the
 *     records must fill that section exactly (else LS_ECORRUPT).
 *  3. baseOffset and partitionLeaderEpoch can be stamped after the CRC is
 *     computed (they are outside it); anything else changes the CRC.
 *  4. The codec asked for is a wish: records that zstd would not shrink are
 *     stored uncompressed (codec 0), as the codec is per batch.
 *  5. A zstd records section is one zstd stream of one or more frames.
 *     ls_batch_encode_par writes one frame per piece, each holding whole
 *     records and its content size, so readers can decompress and render the
 *     frames apart (ls_batch_render); any other split (other producers) is
 *     still read, as one stream. Work is spread only through the caller's
 *     ls_batch_par hooks: this file starts no threads and takes no locks.
 */
#include "batch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"

/* ---- buffers ------------------------------------------------------------ */

int ls_buf_reserve(struct ls_buf *b, size_t need)
{
	if (b->cap >= need)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < need)
		cap = cap * 2 > cap ? cap * 2 : need;
	uint8_t *d = realloc(b->data, cap);
	if (!d)
		return -ENOMEM;
	b->data = d;
	b->cap = cap;
	return 0;
}

void ls_buf_free(struct ls_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/* ---- byte order and varints -------------------------------------------- */

static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void put32(uint8_t *p, uint32_t v)
{
	v = __builtin_bswap32(v);
	memcpy(p, &v, 4);
}
static inline void put64(uint8_t *p, uint64_t v)
{
	v = __builtin_bswap64(v);
	memcpy(p, &v, 8);
}
static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return __builtin_bswap32(v);
}
static inline uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return __builtin_bswap64(v);
}

static inline uint64_t zigzag(int64_t v)
{
	return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline size_t varint_size(int64_t v)
{
	uint64_t u = zigzag(v);
	size_t n = 1;
	while (u >= 0x80) {
		u >>= 7;
		n++;
	}
	return n;
}

static inline uint8_t *put_varint(uint8_t *p, int64_t v)
{
	uint64_t u = zigzag(v);
	while (u >= 0x80) {
		*p++ = (uint8_t)(u | 0x80);
		u >>= 7;
	}
	*p++ = (uint8_t)u;
	return p;
}

/* Reads a zigzag varint of at most maxbytes (5 for varint, 10 for varlong). */
static inline __attribute__((always_inline)) int get_varint(const uint8_t **pp,
                                                            const uint8_t *end,
                                                            int maxbytes, int64_t *out)
{
	const uint8_t *p = *pp;
	if (p < end && !(*p & 0x80)) { /* one byte: nearly every field */
		*pp = p + 1;
		*out = (int64_t)(*p >> 1) ^ -(int64_t)(*p & 1);
		return 0;
	}
	uint64_t u = 0;
	for (int i = 0; i < maxbytes; i++) {
		if (p >= end)
			return LS_ECORRUPT;
		uint8_t b = *p++;
		u |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*pp = p;
			*out = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
			return 0;
		}
	}
	return LS_ECORRUPT;
}

/* ---- header --------------------------------------------------------------- */

int ls_batch_parse_header(const void *buf, size_t avail, struct ls_batch_header *h)
{
	const uint8_t *p = buf;
	if (avail < LS_BATCH_HEADER_SIZE)
		return LS_ECORRUPT;
	h->base_offset = (int64_t)get64(p + 0);
	h->length = (int32_t)get32(p + 8);
	h->leader_epoch = (int32_t)get32(p + 12);
	h->magic = (int8_t)p[16];
	h->crc = get32(p + 17);
	h->attributes = (int16_t)get16(p + 21);
	h->last_offset_delta = (int32_t)get32(p + 23);
	h->base_ts = (int64_t)get64(p + 27);
	h->max_ts = (int64_t)get64(p + 35);
	h->producer_id = (int64_t)get64(p + 43);
	h->producer_epoch = (int16_t)get16(p + 51);
	h->base_sequence = (int32_t)get32(p + 53);
	h->record_count = (int32_t)get32(p + 57);
	if (h->magic != LS_BATCH_MAGIC)
		return LS_ECORRUPT;
	if (h->length < LS_BATCH_HEADER_SIZE - LS_BATCH_LOG_OVERHEAD ||
	    (uint64_t)h->length + LS_BATCH_LOG_OVERHEAD > LS_BATCH_MAX_SIZE)
		return LS_ECORRUPT;
	if (h->record_count < 0 || h->last_offset_delta < 0 || h->base_offset < 0)
		return LS_ECORRUPT;
	return 0;
}

int ls_batch_check_crc(const void *batch, const struct ls_batch_header *h)
{
	const uint8_t *p = batch;
	uint32_t crc = ls_crc32c(0, p + LS_BATCH_OFF_ATTRS,
	                         ls_batch_size(h) - LS_BATCH_OFF_ATTRS);
	return crc == h->crc ? 0 : LS_ECORRUPT;
}

/* ---- decoding -------------------------------------------------------------- */

/* Decompresses a zstd frame (or several) of src into scratch. The size is
 * taken from the frame header when present, else grown as needed up to
 * LS_BATCH_MAX_SIZE. */
static int zstd_inflate(ZSTD_DCtx *dctx, const uint8_t *src, size_t len,
                        struct ls_buf *scratch)
{
	int rc;
	if (!dctx)
		return -EINVAL;
	unsigned long long want = ZSTD_getFrameContentSize(src, len);
	if (want == ZSTD_CONTENTSIZE_ERROR)
		return LS_ECORRUPT;
	size_t guess = want == ZSTD_CONTENTSIZE_UNKNOWN ? len * 4 + 4096
	                                                : (size_t)want;
	if (guess > LS_BATCH_MAX_SIZE)
		return LS_ECORRUPT;
	if ((rc = ls_buf_reserve(scratch, guess ? guess : 1)) < 0)
		return rc;
	ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only);
	ZSTD_inBuffer in = {src, len, 0};
	ZSTD_outBuffer out = {scratch->data, scratch->cap, 0};
	for (;;) {
		size_t r = ZSTD_decompressStream(dctx, &out, &in);
		if (ZSTD_isError(r))
			return LS_ECORRUPT;
		if (in.pos == in.size && r == 0)
			break;
		if (out.pos < out.size && in.pos == in.size)
			return LS_ECORRUPT; /* truncated frame */
		if (out.pos == out.size) {
			if (scratch->cap >= LS_BATCH_MAX_SIZE)
				return LS_ECORRUPT;
			if ((rc = ls_buf_reserve(scratch, scratch->cap * 2)) < 0)
				return rc;
			out.dst = scratch->data;
			out.size = scratch->cap;
		}
	}
	scratch->len = out.pos;
	return 0;
}

int ls_batch_iter_init(struct ls_batch_iter *it, const void *batch,
                       const struct ls_batch_header *h, struct ls_buf *scratch,
                       ZSTD_DCtx *dctx)
{
	const uint8_t *p = batch;
	const uint8_t *recs = p + LS_BATCH_HEADER_SIZE;
	size_t len = ls_batch_size(h) - LS_BATCH_HEADER_SIZE;
	int codec = h->attributes & LS_BATCH_ATTR_CODEC_MASK;

	if (h->attributes & LS_BATCH_ATTR_UNSUPPORTED)
		return -ENOTSUP;
	if (codec == LS_CODEC_ZSTD) {
		int rc = zstd_inflate(dctx, recs, len, scratch);
		if (rc < 0)
			return rc;
		recs = scratch->data;
		len = scratch->len;
	} else if (codec != LS_CODEC_NONE) {
		return -ENOTSUP;
	}
	it->p = recs;
	it->end = recs + len;
	it->left = h->record_count;
	it->base_offset = h->base_offset;
	it->base_ts = h->base_ts;
	return 0;
}

void ls_batch_iter_init_decoded(struct ls_batch_iter *it, const void *recs, size_t len,
                                const struct ls_batch_header *h)
{
	it->p = recs;
	it->end = it->p + len;
	it->left = h->record_count;
	it->base_offset = h->base_offset;
	it->base_ts = h->base_ts;
}

static inline __attribute__((always_inline)) int iter_next(struct ls_batch_iter *it,
                                                           struct ls_batch_record *r)
{
	int64_t len, v, klen, vlen, nh;
	if (it->left == 0)
		return it->p == it->end ? 0 : LS_ECORRUPT;
	if (get_varint(&it->p, it->end, 5, &len) < 0 || len < 0 ||
	    len > it->end - it->p)
		return LS_ECORRUPT;
	const uint8_t *p = it->p, *end = it->p + len;
	if (p >= end)
		return LS_ECORRUPT;
	p++; /* attributes: unused */
	if (get_varint(&p, end, 10, &r->ts_delta) < 0)
		return LS_ECORRUPT;
	if (get_varint(&p, end, 5, &v) < 0 || v < 0 || v > INT32_MAX)
		return LS_ECORRUPT;
	r->offset_delta = (int32_t)v;
	if (get_varint(&p, end, 5, &klen) < 0 || klen < -1 || klen > end - p)
		return LS_ECORRUPT;
	r->key = klen >= 0 ? p : NULL;
	r->key_len = (int32_t)klen;
	if (klen > 0)
		p += klen;
	if (get_varint(&p, end, 5, &vlen) < 0 || vlen < -1 || vlen > end - p)
		return LS_ECORRUPT;
	r->value = vlen >= 0 ? p : NULL;
	r->value_len = (int32_t)vlen;
	if (vlen > 0)
		p += vlen;
	if (get_varint(&p, end, 5, &nh) < 0 || nh < 0)
		return LS_ECORRUPT;
	for (int64_t i = 0; i < nh; i++) {
		int64_t hk, hv;
		if (get_varint(&p, end, 5, &hk) < 0 || hk < 0 || hk > end - p)
			return LS_ECORRUPT;
		p += hk;
		if (get_varint(&p, end, 5, &hv) < 0 || hv < -1 || hv > end - p)
			return LS_ECORRUPT;
		if (hv > 0)
			p += hv;
	}
	if (p != end)
		return LS_ECORRUPT;
	it->p = end;
	it->left--;
	r->offset = it->base_offset + r->offset_delta;
	r->timestamp = it->base_ts + r->ts_delta;
	r->view_size = (uint32_t)ls_batch_view_size(klen, vlen);
	return 1;
}

int ls_batch_iter_next(struct ls_batch_iter *it, struct ls_batch_record *r)
{
	return iter_next(it, r);
}

int ls_batch_measure(const void *batch, const struct ls_batch_header *h,
                     struct ls_buf *scratch, ZSTD_DCtx *dctx, uint64_t *view_size)
{
	struct ls_batch_iter it;
	struct ls_batch_record r;
	uint64_t total = 0;
	int32_t prev_delta = -1;
	int rc = ls_batch_iter_init(&it, batch, h, scratch, dctx);
	if (rc < 0)
		return rc;
	while ((rc = ls_batch_iter_next(&it, &r)) == 1) {
		if (r.offset_delta <= prev_delta || r.offset_delta > h->last_offset_delta)
			return LS_ECORRUPT;
		prev_delta = r.offset_delta;
		total += r.view_size;
	}
	if (rc < 0)
		return rc;
	*view_size = total;
	return 0;
}

/* ---- rendering the view ---------------------------------------------------- */

/* Parses the records filling [p, end) exactly and renders them to out;
 * with sizes, appends each record's view size to it. */
static int render_region(const uint8_t *p, const uint8_t *end, uint8_t *out, char sep,
                         struct ls_batch_render_part *pt, struct ls_buf *sizes)
{
	struct ls_batch_iter it = {.p = p, .end = end, .left = INT32_MAX};
	struct ls_batch_record r;
	uint8_t *o = out;
	int32_t prev = -1, count = 0;
	int dense = 1;
	uint32_t *sz = NULL;
	size_t room = 0;
	if (sizes) {
		sizes->len = 0;
		/* records of this piece's size are rarely under 32 bytes */
		if (ls_buf_reserve(sizes, (size_t)(end - p) / 32 * 4 + 64) < 0)
			return -ENOMEM;
		sz = (uint32_t *)(void *)sizes->data;
		room = sizes->cap / 4;
	}
	while (it.p < it.end) {
		if (iter_next(&it, &r) != 1 || r.offset_delta <= prev)
			return LS_ECORRUPT;
		if (count == 0)
			pt->first_delta = r.offset_delta;
		else if (r.offset_delta != prev + 1)
			dense = 0;
		prev = r.offset_delta;
		if (sizes) {
			if ((size_t)count == room) {
				sizes->len = (size_t)count * 4;
				if (ls_buf_reserve(sizes, sizes->cap * 2) < 0)
					return -ENOMEM;
				sz = (uint32_t *)(void *)sizes->data;
				room = sizes->cap / 4;
			}
			sz[count] = r.view_size;
		}
		count++;
		if (r.key_len >= 0) {
			memcpy(o, r.key, (size_t)r.key_len);
			o += r.key_len;
			*o++ = (uint8_t)sep;
		}
		if (r.value_len > 0) {
			memcpy(o, r.value, (size_t)r.value_len);
			o += r.value_len;
		}
		*o++ = '\n';
	}
	if (sizes)
		sizes->len = (size_t)count * 4;
	pt->count = count;
	pt->last_delta = prev;
	pt->dense = dense;
	pt->vlen = (size_t)(o - out);
	return 0;
}

void ls_batch_render_piece(void *job, size_t k)
{
	struct ls_batch_render_job *j = job;
	struct ls_batch_render_part *pt = &j->part[k];
	const uint8_t *recs = j->recs + pt->off;
	if (pt->z) {
		ZSTD_DCtx *d = j->par ? j->par->dctx(j->par->ctx) : j->dctx;
		uint8_t *dst = j->dec + pt->off;
		if (j->apart) {
			struct ls_buf *sc = j->par->scratch(j->par->ctx);
			if (!sc || ls_buf_reserve(sc, pt->len ? pt->len : 1) < 0) {
				pt->rc = -ENOMEM;
				return;
			}
			dst = sc->data;
		}
		if (!d) {
			pt->rc = j->par ? -ENOMEM : -EINVAL;
			return;
		}
		size_t r = ZSTD_decompressDCtx(d, dst, pt->len, pt->z, pt->zlen);
		if (ZSTD_isError(r) || r != pt->len) {
			pt->rc = LS_ECORRUPT;
			pt->undecodable = 1;
			return;
		}
		recs = dst;
	}
	pt->rc = render_region(recs, recs + pt->len, j->view + pt->off, j->sep, pt,
	                       j->sizes ? &j->sizes[k] : NULL);
}

/* Describes the frames of a zstd section as parts. 0, or 1 if they cannot be
 * decoded apart (a frame without its content size, too many frames). */
static int zstd_frames(struct ls_batch_render_job *j, const uint8_t *src, size_t len,
                       size_t *total)
{
	size_t n = 0, off = 0;
	while (len) {
		size_t fsz = ZSTD_findFrameCompressedSize(src, len);
		if (ZSTD_isError(fsz) || n == LS_BATCH_PARTS_MAX)
			return 1;
		unsigned long long c = ZSTD_getFrameContentSize(src, fsz);
		if (c == ZSTD_CONTENTSIZE_UNKNOWN || c == ZSTD_CONTENTSIZE_ERROR ||
		    c > LS_BATCH_MAX_SIZE - off)
			return 1;
		j->part[n++] = (struct ls_batch_render_part){.z = src, .zlen = fsz, .off = off,
		                                             .len = (size_t)c};
		off += (size_t)c;
		src += fsz;
		len -= fsz;
	}
	j->nparts = n;
	*total = off;
	return n == 0;
}

static void decode_piece(void *job, size_t k)
{
	struct ls_batch_render_job *j = job;
	struct ls_batch_render_part *pt = &j->part[k];
	ZSTD_DCtx *d = j->par ? j->par->dctx(j->par->ctx) : j->dctx;
	if (!d) {
		pt->rc = j->par ? -ENOMEM : -EINVAL;
		return;
	}
	size_t r = ZSTD_decompressDCtx(d, j->dec + pt->off, pt->len, pt->z, pt->zlen);
	pt->rc = ZSTD_isError(r) || r != pt->len ? LS_ECORRUPT : 0;
}

int ls_batch_decode(const void *batch, const struct ls_batch_header *h,
                    struct ls_buf *dec, ZSTD_DCtx *dctx, const struct ls_batch_par *par)
{
	const uint8_t *sec = (const uint8_t *)batch + LS_BATCH_HEADER_SIZE;
	size_t len = ls_batch_size(h) - LS_BATCH_HEADER_SIZE, total;
	struct ls_batch_render_job j = {.par = par, .dctx = dctx};
	int rc;
	if ((h->attributes & LS_BATCH_ATTR_CODEC_MASK) != LS_CODEC_ZSTD ||
	    (h->attributes & LS_BATCH_ATTR_UNSUPPORTED))
		return -ENOTSUP;
	if (!par && !dctx)
		return -EINVAL;
	if (zstd_frames(&j, sec, len, &total) != 0 || j.nparts < 2 || !par)
		return zstd_inflate(dctx ? dctx : par->dctx(par->ctx), sec, len, dec);
	if ((rc = ls_buf_reserve(dec, total ? total : 1)) < 0)
		return rc;
	j.dec = dec->data;
	par->run(par->ctx, j.nparts, decode_piece, &j);
	for (size_t k = 0; k < j.nparts; k++)
		if (j.part[k].rc < 0)
			return j.part[k].rc;
	dec->len = total;
	return 0;
}

int ls_batch_render_begin(struct ls_batch_render_job *jp, const void *batch,
                          const struct ls_batch_header *h, struct ls_buf *dec, int dec_ready,
                          struct ls_buf *view, char sep, ZSTD_DCtx *dctx,
                          const struct ls_batch_par *par)
{
	const uint8_t *sec = (const uint8_t *)batch + LS_BATCH_HEADER_SIZE;
	size_t len = ls_batch_size(h) - LS_BATCH_HEADER_SIZE, total = len;
	int codec = h->attributes & LS_BATCH_ATTR_CODEC_MASK, rc;
	struct ls_batch_render_job *j = jp;
	*j = (struct ls_batch_render_job){.sep = sep, .par = par, .dctx = dctx, .nparts = 1,
	                                  .record_count = h->record_count,
	                                  .last_offset_delta = h->last_offset_delta};

	if (h->attributes & LS_BATCH_ATTR_UNSUPPORTED)
		return -ENOTSUP;
	if (codec == LS_CODEC_ZSTD && !par && !dctx)
		return -EINVAL;
	if (codec == LS_CODEC_ZSTD && zstd_frames(j, sec, len, &total) == 0 &&
	    (!dec_ready || total == dec->len)) {
		if ((rc = ls_buf_reserve(dec, total ? total : 1)) < 0)
			return rc;
		dec->len = total;
		j->recs = j->dec = dec->data;
		for (size_t k = 0; dec_ready && k < j->nparts; k++)
			j->part[k].z = NULL;
		j->apart = !dec_ready && par && par->scratch;
		j->dec_kept = !j->apart;
	} else if (codec == LS_CODEC_ZSTD && dec_ready) {
		total = dec->len;
		j->nparts = 1;
		j->recs = dec->data;
		j->part[0] = (struct ls_batch_render_part){.len = total};
		j->dec_kept = 1;
	} else if (codec == LS_CODEC_ZSTD) { /* frames that say nothing of their size */
		if ((rc = zstd_inflate(dctx ? dctx : par->dctx(par->ctx), sec, len, dec)) < 0)
			return rc;
		total = dec->len;
		j->nparts = 1;
		j->recs = dec->data;
		j->part[0] = (struct ls_batch_render_part){.len = total};
		j->dec_kept = 1;
	} else if (codec == LS_CODEC_NONE) {
		j->recs = sec;
		j->part[0] = (struct ls_batch_render_part){.len = total};
	} else {
		return -ENOTSUP;
	}
	/* a record renders to fewer bytes than it is encoded in: room enough */
	if ((rc = ls_buf_reserve(view, total ? total : 1)) < 0)
		return rc;
	j->view = view->data;
	j->total = total;
	return (int)j->nparts;
}

int ls_batch_render_end(struct ls_batch_render_job *j,
                        struct ls_batch_span spans[LS_BATCH_PARTS_MAX], size_t *nspans,
                        uint64_t *view_size)
{
	int rc;
	/* every part decompressed; if a frame did not end at a record boundary,
	 * the section is parsed again as a whole */
	int whole = 0;
	for (size_t k = 0; k < j->nparts; k++) {
		if (j->part[k].rc == -ENOMEM || j->part[k].rc == -EINVAL)
			return j->part[k].rc;
		if (j->part[k].rc < 0 && (j->part[k].undecodable || j->nparts == 1))
			return LS_ECORRUPT;
		if (j->part[k].rc < 0)
			whole = 1;
	}
	if (whole && j->apart) { /* the frames were decompressed apart: again, into dec */
		ZSTD_DCtx *d = j->dctx ? j->dctx : j->par->dctx(j->par->ctx);
		if (!d)
			return -ENOMEM;
		for (size_t k = 0; k < j->nparts; k++) {
			const struct ls_batch_render_part *pt = &j->part[k];
			size_t r = ZSTD_decompressDCtx(d, j->dec + pt->off, pt->len, pt->z, pt->zlen);
			if (ZSTD_isError(r) || r != pt->len)
				return LS_ECORRUPT;
		}
		j->apart = 0;
		j->dec_kept = 1;
	}
	if (whole) {
		j->nparts = 1;
		j->part[0] = (struct ls_batch_render_part){.len = j->total};
		if ((rc = render_region(j->recs, j->recs + j->total, j->view, j->sep,
		                        &j->part[0], j->sizes)) < 0)
			return rc;
	}
	uint64_t vs = 0;
	int32_t count = 0, prev = -1;
	for (size_t k = 0; k < j->nparts; k++) {
		const struct ls_batch_render_part *pt = &j->part[k];
		if (pt->count && pt->first_delta <= prev)
			return LS_ECORRUPT;
		if (pt->count)
			prev = pt->last_delta;
		if (pt->count > INT32_MAX - count)
			return LS_ECORRUPT;
		count += pt->count;
		spans[k] = (struct ls_batch_span){pt->off, pt->vlen, pt->count, pt->first_delta,
		                                  pt->last_delta, pt->dense};
		vs += pt->vlen;
	}
	if (count != j->record_count || prev > j->last_offset_delta)
		return LS_ECORRUPT;
	*nspans = j->nparts;
	*view_size = vs;
	return 0;
}

int ls_batch_render(const void *batch, const struct ls_batch_header *h,
                    struct ls_buf *dec, int dec_ready, struct ls_buf *view, char sep,
                    ZSTD_DCtx *dctx, const struct ls_batch_par *par,
                    struct ls_batch_span spans[LS_BATCH_PARTS_MAX], size_t *nspans,
                    uint64_t *view_size, int *dec_kept)
{
	struct ls_batch_render_job j;
	int n = ls_batch_render_begin(&j, batch, h, dec, dec_ready, view, sep, dctx, par);
	if (n < 0)
		return n;
	if (n == 1 || !par)
		for (size_t k = 0; k < (size_t)n; k++)
			ls_batch_render_piece(&j, k);
	else
		par->run(par->ctx, (size_t)n, ls_batch_render_piece, &j);
	int rc = ls_batch_render_end(&j, spans, nspans, view_size);
	if (dec_kept)
		*dec_kept = j.dec_kept;
	return rc;
}

/* ---- encoding -------------------------------------------------------------- */

static inline size_t record_body_size(int64_t ts_delta, int32_t off_delta,
                                      int64_t klen, int64_t vlen)
{
	return 1 + varint_size(ts_delta) + varint_size(off_delta) +
	       varint_size(klen) + (size_t)(klen > 0 ? klen : 0) + varint_size(vlen) +
	       (size_t)(vlen > 0 ? vlen : 0) + 1;
}

static inline uint8_t *put_record(uint8_t *p, size_t body, int64_t ts_delta,
                                  int32_t off_delta, const void *key, int64_t klen,
                                  const void *val, int64_t vlen)
{
	p = put_varint(p, (int64_t)body);
	*p++ = 0;
	p = put_varint(p, ts_delta);
	p = put_varint(p, off_delta);
	p = put_varint(p, klen);
	if (klen > 0) {
		memcpy(p, key, (size_t)klen);
		p += klen;
	}
	p = put_varint(p, vlen);
	if (vlen > 0) {
		memcpy(p, val, (size_t)vlen);
		p += vlen;
	}
	*p++ = 0; /* no headers */
	return p;
}

static void put_header(uint8_t *p, const struct ls_batch_header *h)
{
	put64(p + 0, (uint64_t)h->base_offset);
	put32(p + 8, (uint32_t)h->length);
	put32(p + 12, (uint32_t)h->leader_epoch);
	p[16] = LS_BATCH_MAGIC;
	put32(p + 17, h->crc);
	put16(p + 21, (uint16_t)h->attributes);
	put32(p + 23, (uint32_t)h->last_offset_delta);
	put64(p + 27, (uint64_t)h->base_ts);
	put64(p + 35, (uint64_t)h->max_ts);
	put64(p + 43, (uint64_t)h->producer_id);
	put16(p + 51, (uint16_t)h->producer_epoch);
	put32(p + 53, (uint32_t)h->base_sequence);
	put32(p + 57, (uint32_t)h->record_count);
}

/* Sets the compression level. Level 1 (the default) uses a 4096-entry hash
 * table instead of zstd's 8192: on access-log lines it compresses about 8%
 * faster for 1% more bytes (measured with `zstd -b1 --zstd=hlog=12
 * -B1048576`). Other levels keep zstd's own parameters. */
static int zstd_level(ZSTD_CCtx *c, int level)
{
	if (ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_hashLog, level == 1 ? 12 : 0)))
		return -EINVAL;
	return 0;
}

/* The records are in out->data + 61 (codec none) or in scratch (zstd):
 * compresses if needed, then fills the header and the CRC. */
static int finish_batch(struct ls_buf *out, struct ls_buf *scratch, ZSTD_CCtx *cctx,
                        size_t rec_bytes, struct ls_batch_header *h,
                        enum ls_codec codec, int level)
{
	int rc;
	size_t body = rec_bytes;
	h->attributes = (int16_t)((h->attributes & ~LS_BATCH_ATTR_CODEC_MASK) |
	                          (codec == LS_CODEC_ZSTD ? LS_CODEC_ZSTD : 0));
	if (codec == LS_CODEC_ZSTD) {
		if (!cctx)
			return -EINVAL;
		size_t bound = ZSTD_compressBound(rec_bytes);
		if ((rc = ls_buf_reserve(out, LS_BATCH_HEADER_SIZE + bound)) < 0)
			return rc;
		if (zstd_level(cctx, level) < 0)
			return -EINVAL;
		body = ZSTD_compress2(cctx, out->data + LS_BATCH_HEADER_SIZE, bound,
		                      scratch->data, rec_bytes);
		if (ZSTD_isError(body))
			return -EIO;
		if (body >= rec_bytes) { /* tiny batches grow: store them plain */
			memcpy(out->data + LS_BATCH_HEADER_SIZE, scratch->data, rec_bytes);
			body = rec_bytes;
			h->attributes = (int16_t)(h->attributes & ~LS_BATCH_ATTR_CODEC_MASK);
		}
	}
	if (LS_BATCH_HEADER_SIZE + body > LS_BATCH_MAX_SIZE)
		return -EMSGSIZE;
	out->len = LS_BATCH_HEADER_SIZE + body;
	h->length = (int32_t)(out->len - LS_BATCH_LOG_OVERHEAD);
	h->crc = 0;
	put_header(out->data, h);
	h->crc = ls_crc32c(0, out->data + LS_BATCH_OFF_ATTRS, out->len - LS_BATCH_OFF_ATTRS);
	put32(out->data + LS_BATCH_OFF_CRC, h->crc);
	return 0;
}

/* Most bytes a record's framing can take besides its key and value: length
 * varint (5), attributes (1), timestampDelta 0 (1), offsetDelta (5),
 * keyLength (5), valueLength (5), headerCount (1). */
#define REC_FRAMING_MAX 23

/* One piece of a batch being encoded: records [i0, i1), encoded at
 * raw + raw_off (room: raw_room bytes), then compressed (zstd) to
 * z + z_off, or checksummed (none). */
struct enc_part {
	uint32_t i0, i1;
	size_t raw_off, raw_room, raw_len;
	size_t z_off, z_len;
	uint64_t view_size;
	uint32_t crc;
	int rc;
};

struct enc_job {
	const struct ls_rec *recs;
	uint8_t *raw;      /* the records: scratch (zstd) or out->data + 61 (none) */
	uint8_t *z;        /* compressed pieces: out->data + 61 */
	enum ls_codec codec;
	int level;
	const struct ls_batch_par *par;
	ZSTD_CCtx *cctx;   /* when par is NULL */
	size_t nparts;
	struct enc_part part[LS_BATCH_PARTS_MAX];
};

static void enc_part_run(void *arg, size_t k)
{
	struct enc_job *j = arg;
	struct enc_part *pt = &j->part[k];
	uint8_t *p = j->raw + pt->raw_off;
	uint64_t vsize = 0;
	for (uint32_t i = pt->i0; i < pt->i1; i++) {
		const struct ls_rec *r = &j->recs[i];
		int64_t klen = r->key ? (int64_t)r->key_len : -1;
		int64_t vlen = r->value ? (int64_t)r->value_len : -1;
		size_t body = record_body_size(0, (int32_t)i, klen, vlen);
		p = put_record(p, body, 0, (int32_t)i, r->key, klen, r->value, vlen);
		vsize += ls_batch_view_size(klen, vlen);
	}
	pt->raw_len = (size_t)(p - (j->raw + pt->raw_off));
	pt->view_size = vsize;
	if (j->codec != LS_CODEC_ZSTD) {
		pt->crc = ls_crc32c(0, j->raw + pt->raw_off, pt->raw_len);
		pt->rc = 0;
		return;
	}
	ZSTD_CCtx *c = j->par ? j->par->cctx(j->par->ctx) : j->cctx;
	if (!c) {
		pt->rc = j->par ? -ENOMEM : -EINVAL;
		return;
	}
	if (zstd_level(c, j->level) < 0) {
		pt->rc = -EINVAL;
		return;
	}
	size_t r = ZSTD_compress2(c, j->z + pt->z_off, ZSTD_compressBound(pt->raw_room),
	                          j->raw + pt->raw_off, pt->raw_len);
	if (ZSTD_isError(r)) {
		pt->rc = -EIO;
		return;
	}
	pt->z_len = r;
	pt->rc = 0;
}

/* Bytes of key and value of a record; -EMSGSIZE past Kafka's int32 lengths. */
static inline int64_t rec_data(const struct ls_rec *r)
{
	uint64_t k = r->key ? r->key_len : 0, v = r->value ? r->value_len : 0;
	if (k > INT32_MAX || v > INT32_MAX)
		return -EMSGSIZE;
	return (int64_t)(k + v);
}

/* Splits records [0, n) holding data bytes of key and value into up to want
 * pieces of about equal data, at record boundaries, each with room for its
 * records encoded (data + REC_FRAMING_MAX per record). */
static void enc_split(struct enc_job *j, uint32_t n, uint64_t data, size_t want)
{
	size_t k = 0;
	uint64_t acc = 0, step = data / want + 1, next = step, off = 0;
	j->part[0] = (struct enc_part){.i0 = 0};
	for (uint32_t i = 0; want > 1 && i + 1 < n; i++) {
		acc += (uint64_t)rec_data(&j->recs[i]);
		if (acc >= next) {
			struct enc_part *pt = &j->part[k];
			pt->i1 = i + 1;
			pt->raw_room = (size_t)(acc - off) + REC_FRAMING_MAX * (size_t)(pt->i1 - pt->i0);
			off = acc;
			j->part[++k] = (struct enc_part){.i0 = i + 1};
			if (k + 1 == want)
				break;
			next += step;
		}
	}
	struct enc_part *last = &j->part[k];
	last->i1 = n;
	last->raw_room = (size_t)(data - off) + REC_FRAMING_MAX * (size_t)(n - last->i0);
	j->nparts = k + 1;
	for (size_t q = 1; q < j->nparts; q++)
		j->part[q].raw_off = j->part[q - 1].raw_off + j->part[q - 1].raw_room;
}

int ls_batch_encode(struct ls_buf *out, struct ls_buf *scratch, ZSTD_CCtx *cctx,
                    const struct ls_rec *recs, uint32_t n, int64_t ts_ms,
                    const struct ls_producer *prod, enum ls_codec codec, int level,
                    uint64_t *view_size)
{
	return ls_batch_encode_par(out, scratch, cctx, NULL, recs, n, ts_ms, prod, codec,
	                           level, view_size);
}

int ls_batch_encode_par(struct ls_buf *out, struct ls_buf *scratch, ZSTD_CCtx *cctx,
                        const struct ls_batch_par *par, const struct ls_rec *recs,
                        uint32_t n, int64_t ts_ms, const struct ls_producer *prod,
                        enum ls_codec codec, int level, uint64_t *view_size)
{
	int rc;
	uint64_t data = 0;
	if (n == 0 || n > INT32_MAX)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		int64_t d = rec_data(&recs[i]);
		if (d < 0)
			return (int)d;
		data += (uint64_t)d;
	}
	/* at least 7 framing bytes a record; at most REC_FRAMING_MAX */
	if (data + 7 * (uint64_t)n > LS_BATCH_MAX_SIZE)
		return -EMSGSIZE;
	uint64_t room = data + REC_FRAMING_MAX * (uint64_t)n;
	int zstd = codec == LS_CODEC_ZSTD;
	if (zstd && !par && !cctx)
		return -EINVAL;

	/* Pieces: zstd only (plain records must stay contiguous in out). */
	struct enc_job j = {.recs = recs, .codec = codec, .level = level, .par = par,
	                    .cctx = cctx};
	size_t want = 1;
	if (zstd && par && par->parts > 1) {
		want = (size_t)(room / LS_BATCH_PART_MIN);
		if (want > par->parts)
			want = par->parts;
		if (want > LS_BATCH_PARTS_MAX)
			want = LS_BATCH_PARTS_MAX;
		if (want < 1)
			want = 1;
	}
	enc_split(&j, n, data, want);

	size_t zroom = 0;
	if (zstd) {
		for (size_t k = 0; k < j.nparts; k++) {
			j.part[k].z_off = zroom;
			zroom += ZSTD_compressBound(j.part[k].raw_room);
		}
		if ((rc = ls_buf_reserve(scratch, (size_t)room)) < 0)
			return rc;
	}
	size_t body_room = zroom > room ? zroom : (size_t)room;
	if ((rc = ls_buf_reserve(out, LS_BATCH_HEADER_SIZE + body_room)) < 0)
		return rc;
	j.raw = zstd ? scratch->data : out->data + LS_BATCH_HEADER_SIZE;
	j.z = out->data + LS_BATCH_HEADER_SIZE;
	if (j.nparts == 1)
		enc_part_run(&j, 0);
	else
		par->run(par->ctx, j.nparts, enc_part_run, &j);
	size_t total = 0;
	uint64_t vsize = 0;
	for (size_t k = 0; k < j.nparts; k++) {
		if (j.part[k].rc < 0)
			return j.part[k].rc;
		total += j.part[k].raw_len;
		vsize += j.part[k].view_size;
	}

	struct ls_batch_header h = {
		.base_offset = 0,
		.leader_epoch = 0,
		.attributes = zstd ? LS_CODEC_ZSTD : 0,
		.last_offset_delta = (int32_t)(n - 1),
		.base_ts = ts_ms,
		.max_ts = ts_ms,
		.producer_id = prod ? prod->producer_id : -1,
		.producer_epoch = prod ? prod->producer_epoch : -1,
		.base_sequence = prod ? prod->base_sequence : -1,
		.record_count = (int32_t)n,
	};
	size_t body = total;
	if (zstd) {
		body = 0; /* close the gaps between the compressed pieces */
		for (size_t k = 0; k < j.nparts; k++) {
			if (j.part[k].z_off != body)
				memmove(j.z + body, j.z + j.part[k].z_off, j.part[k].z_len);
			body += j.part[k].z_len;
		}
		if (body >= total) { /* tiny batches grow: store them plain */
			body = 0;
			for (size_t k = 0; k < j.nparts; k++) {
				memcpy(j.z + body, j.raw + j.part[k].raw_off, j.part[k].raw_len);
				body += j.part[k].raw_len;
			}
			h.attributes = 0;
		}
	}
	if (LS_BATCH_HEADER_SIZE + body > LS_BATCH_MAX_SIZE)
		return -EMSGSIZE;
	out->len = LS_BATCH_HEADER_SIZE + body;
	h.length = (int32_t)(out->len - LS_BATCH_LOG_OVERHEAD);
	h.crc = 0;
	put_header(out->data, &h);
	if (!zstd) { /* the records were checksummed where they were encoded */
		h.crc = ls_crc32c(0, out->data + LS_BATCH_OFF_ATTRS,
		                  LS_BATCH_HEADER_SIZE - LS_BATCH_OFF_ATTRS);
		h.crc = ls_crc32c_combine(h.crc, j.part[0].crc, j.part[0].raw_len);
	} else {
		h.crc = ls_crc32c(0, out->data + LS_BATCH_OFF_ATTRS,
		                  out->len - LS_BATCH_OFF_ATTRS);
	}
	put32(out->data + LS_BATCH_OFF_CRC, h.crc);
	*view_size = vsize;
	return 0;
}

int ls_batch_encode_records(struct ls_buf *out, struct ls_buf *scratch,
                            ZSTD_CCtx *cctx, const struct ls_batch_record *recs,
                            uint32_t n, const struct ls_batch_header *tmpl,
                            enum ls_codec codec, int level)
{
	int rc;
	size_t total = 0;
	int32_t last_delta = 0;
	if (n > INT32_MAX)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		size_t body = record_body_size(recs[i].ts_delta, recs[i].offset_delta,
		                               recs[i].key_len, recs[i].value_len);
		total += varint_size((int64_t)body) + body;
		if (recs[i].offset_delta > last_delta)
			last_delta = recs[i].offset_delta;
		if (total > LS_BATCH_MAX_SIZE)
			return -EMSGSIZE;
	}
	struct ls_buf *dst = codec == LS_CODEC_ZSTD ? scratch : out;
	size_t at = codec == LS_CODEC_ZSTD ? 0 : LS_BATCH_HEADER_SIZE;
	if ((rc = ls_buf_reserve(dst, at + total)) < 0)
		return rc;
	uint8_t *p = dst->data + at;
	for (uint32_t i = 0; i < n; i++) {
		const struct ls_batch_record *r = &recs[i];
		size_t body = record_body_size(r->ts_delta, r->offset_delta, r->key_len,
		                               r->value_len);
		p = put_record(p, body, r->ts_delta, r->offset_delta, r->key, r->key_len,
		               r->value, r->value_len);
	}
	if (codec == LS_CODEC_NONE)
		out->len = LS_BATCH_HEADER_SIZE + total;
	struct ls_batch_header h = *tmpl;
	h.record_count = (int32_t)n;
	if (h.last_offset_delta < last_delta)
		h.last_offset_delta = last_delta;
	return finish_batch(out, scratch, cctx, total, &h, codec, level);
}

void ls_batch_stamp(void *batch, int64_t base_offset, int32_t leader_epoch)
{
	uint8_t *p = batch;
	put64(p, (uint64_t)base_offset);
	put32(p + LS_BATCH_OFF_EPOCH, (uint32_t)leader_epoch);
}

void ls_batch_set_timestamp(void *batch, size_t size, int64_t ts_ms)
{
	uint8_t *p = batch;
	put64(p + 27, (uint64_t)ts_ms);
	put64(p + 35, (uint64_t)ts_ms);
	put32(p + LS_BATCH_OFF_CRC,
	      ls_crc32c(0, p + LS_BATCH_OFF_ATTRS, size - LS_BATCH_OFF_ATTRS));
}
