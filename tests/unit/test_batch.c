/* test_batch.c - Kafka v2 batch encoding: exact bytes, round trips, damage. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../logstore/batch.h"
#include "../../logstore/crc32c.h"
#include "unit.h"

/* A hand-built batch of one record {key "k", value "v"} at offset 5: every
 * header field and the record's varints at their Kafka positions. */
static void test_encode_exact_bytes(void)
{
	struct ls_buf out = {0}, scratch = {0};
	struct ls_rec rec = {"k", 1, "v", 1};
	struct ls_producer prod = {42, 3, 7};
	uint64_t vsize = 0;
	CHECK_EQ_INT(ls_batch_encode(&out, &scratch, NULL, &rec, 1, 1700000000000LL, &prod,
	                             LS_CODEC_NONE, 0, &vsize), 0);
	ls_batch_stamp(out.data, 5, 9);
	/* record: len=8 -> zigzag 16; attr 0; tsDelta 0; offDelta 0; klen 1 -> 2;
	 * 'k'; vlen 1 -> 2; 'v'; headers 0 */
	static const uint8_t rec_bytes[] = {16, 0, 0, 0, 2, 'k', 2, 'v', 0};
	uint8_t want[61 + sizeof(rec_bytes)] = {
		0, 0, 0, 0, 0, 0, 0, 5,              /* baseOffset */
		0, 0, 0, 61 - 12 + sizeof(rec_bytes), /* batchLength */
		0, 0, 0, 9,                          /* partitionLeaderEpoch */
		2,                                   /* magic */
		0, 0, 0, 0,                          /* crc, filled below */
		0, 0,                                /* attributes */
		0, 0, 0, 0,                          /* lastOffsetDelta */
		0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* baseTimestamp */
		0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* maxTimestamp */
		0, 0, 0, 0, 0, 0, 0, 42,             /* producerId */
		0, 3,                                /* producerEpoch */
		0, 0, 0, 7,                          /* baseSequence */
		0, 0, 0, 1,                          /* recordCount */
	};
	memcpy(want + 61, rec_bytes, sizeof(rec_bytes));
	uint32_t crc = ls_crc32c(0, want + 21, sizeof(want) - 21);
	want[17] = (uint8_t)(crc >> 24);
	want[18] = (uint8_t)(crc >> 16);
	want[19] = (uint8_t)(crc >> 8);
	want[20] = (uint8_t)crc;
	CHECK_EQ_INT(out.len, sizeof(want));
	CHECK(out.len == sizeof(want) && memcmp(out.data, want, sizeof(want)) == 0);
	CHECK_EQ_INT(vsize, 4); /* "k" SEP "v" '\n' */
	ls_buf_free(&out);
	ls_buf_free(&scratch);
}

static void roundtrip(enum ls_codec codec)
{
	struct ls_buf out = {0}, scratch = {0}, dec = {0};
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	ZSTD_DCtx *dc = ZSTD_createDCtx();
	enum { N = 300 };
	static struct ls_rec recs[N];
	static char vals[N][200];
	uint64_t want_view = 0, vsize = 0;
	for (int i = 0; i < N; i++) {
		int len = snprintf(vals[i], sizeof(vals[i]), "value number %d %0*d", i, i % 150, 0);
		recs[i].value = vals[i];
		recs[i].value_len = (uint32_t)len;
		if (i % 3 == 0) {
			recs[i].key = "key";
			recs[i].key_len = 3;
		}
		if (i % 50 == 7) { /* tombstone */
			recs[i].value = NULL;
			recs[i].value_len = 0;
		}
		want_view += (recs[i].key ? recs[i].key_len + 1 : 0) +
		             (recs[i].value ? recs[i].value_len : 0) + 1;
	}
	CHECK_EQ_INT(ls_batch_encode(&out, &scratch, cc, recs, N, 1234, NULL, codec, 1, &vsize), 0);
	CHECK_EQ_INT(vsize, want_view);
	ls_batch_stamp(out.data, 1000, 2);

	struct ls_batch_header h;
	CHECK_EQ_INT(ls_batch_parse_header(out.data, out.len, &h), 0);
	CHECK_EQ_INT(ls_batch_size(&h), out.len);
	CHECK_EQ_INT(h.base_offset, 1000);
	CHECK_EQ_INT(h.leader_epoch, 2);
	CHECK_EQ_INT(h.record_count, N);
	CHECK_EQ_INT(h.last_offset_delta, N - 1);
	CHECK_EQ_INT(h.attributes & 7, codec);
	CHECK_EQ_INT(h.producer_id, -1);
	CHECK_EQ_INT(ls_batch_check_crc(out.data, &h), 0);

	struct ls_batch_iter it;
	struct ls_batch_record r;
	CHECK_EQ_INT(ls_batch_iter_init(&it, out.data, &h, &dec, dc), 0);
	int i = 0;
	while (ls_batch_iter_next(&it, &r) == 1) {
		CHECK_EQ_INT(r.offset, 1000 + i);
		CHECK_EQ_INT(r.timestamp, 1234);
		CHECK_EQ_INT(r.key_len, recs[i].key ? 3 : -1);
		if (recs[i].value) {
			CHECK(r.value_len == (int32_t)recs[i].value_len &&
			      memcmp(r.value, recs[i].value, recs[i].value_len) == 0);
		} else {
			CHECK_EQ_INT(r.value_len, -1);
		}
		i++;
	}
	CHECK_EQ_INT(i, N);
	uint64_t measured = 0;
	CHECK_EQ_INT(ls_batch_measure(out.data, &h, &dec, dc, &measured), 0);
	CHECK_EQ_INT(measured, want_view);

	/* re-encode the decoded records (the compaction path) gives the same batch */
	if (codec == LS_CODEC_NONE) {
		static struct ls_batch_record all[N];
		struct ls_buf again = {0}, s2 = {0};
		CHECK_EQ_INT(ls_batch_iter_init(&it, out.data, &h, &dec, dc), 0);
		for (int k = 0; k < N; k++)
			CHECK_EQ_INT(ls_batch_iter_next(&it, &all[k]), 1);
		CHECK_EQ_INT(ls_batch_encode_records(&again, &s2, NULL, all, N, &h, codec, 0), 0);
		CHECK(again.len == out.len && memcmp(again.data, out.data, out.len) == 0);
		ls_buf_free(&again);
		ls_buf_free(&s2);
	}

	/* changing the timestamp keeps the batch valid */
	ls_batch_set_timestamp(out.data, out.len, 99999);
	CHECK_EQ_INT(ls_batch_parse_header(out.data, out.len, &h), 0);
	CHECK_EQ_INT(h.base_ts, 99999);
	CHECK_EQ_INT(ls_batch_check_crc(out.data, &h), 0);

	ls_buf_free(&out);
	ls_buf_free(&scratch);
	ls_buf_free(&dec);
	ZSTD_freeCCtx(cc);
	ZSTD_freeDCtx(dc);
}

static void test_roundtrip_none(void) { roundtrip(LS_CODEC_NONE); }
static void test_roundtrip_zstd(void) { roundtrip(LS_CODEC_ZSTD); }

/* Every single-byte change inside the CRC-covered range is caught. */
static void test_crc_catches_flips(void)
{
	struct ls_buf out = {0}, scratch = {0};
	struct ls_rec recs[3] = {{NULL, 0, "a", 1}, {"k", 1, "bb", 2}, {NULL, 0, "ccc", 3}};
	uint64_t vsize;
	CHECK_EQ_INT(ls_batch_encode(&out, &scratch, NULL, recs, 3, 5, NULL, LS_CODEC_NONE,
	                             0, &vsize), 0);
	for (size_t i = 21; i < out.len; i++) {
		struct ls_batch_header h;
		out.data[i] ^= 0x40;
		int rc = ls_batch_parse_header(out.data, out.len, &h);
		if (rc == 0)
			rc = ls_batch_check_crc(out.data, &h);
		CHECK_EQ_INT(rc, LS_ECORRUPT);
		out.data[i] ^= 0x40;
	}
	ls_buf_free(&out);
	ls_buf_free(&scratch);
}

/* Malformed record bytes under a valid header are refused, never overrun. */
static void test_malformed_records(void)
{
	struct ls_buf out = {0}, scratch = {0};
	struct ls_rec rec = {"key", 3, "value", 5};
	uint64_t vsize;
	CHECK_EQ_INT(ls_batch_encode(&out, &scratch, NULL, &rec, 1, 5, NULL, LS_CODEC_NONE,
	                             0, &vsize), 0);
	struct ls_batch_header h;
	CHECK_EQ_INT(ls_batch_parse_header(out.data, out.len, &h), 0);
	for (size_t i = 61; i < out.len; i++) {
		for (int v = 0; v < 256; v += 17) {
			uint8_t old = out.data[i];
			out.data[i] = (uint8_t)v;
			uint64_t m;
			int rc = ls_batch_measure(out.data, &h, &scratch, NULL, &m);
			CHECK(rc == 0 || rc == LS_ECORRUPT);
			out.data[i] = old;
		}
	}
	h.record_count = 2; /* claims more records than present */
	uint64_t m;
	CHECK_EQ_INT(ls_batch_measure(out.data, &h, &scratch, NULL, &m), LS_ECORRUPT);
	ls_buf_free(&out);
	ls_buf_free(&scratch);
}

/* A batch that zstd cannot shrink is stored plain and still decodes. */
static void test_tiny_batch_stays_plain(void)
{
	struct ls_buf out = {0}, scratch = {0}, dec = {0};
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	struct ls_rec rec = {NULL, 0, "x", 1};
	uint64_t vsize;
	struct ls_batch_header h;
	struct ls_batch_iter it;
	struct ls_batch_record r;
	CHECK_EQ_INT(ls_batch_encode(&out, &scratch, cc, &rec, 1, 5, NULL, LS_CODEC_ZSTD, 1,
	                             &vsize), 0);
	CHECK_EQ_INT(ls_batch_parse_header(out.data, out.len, &h), 0);
	CHECK_EQ_INT(h.attributes & 7, LS_CODEC_NONE);
	CHECK_EQ_INT(ls_batch_check_crc(out.data, &h), 0);
	CHECK_EQ_INT(ls_batch_iter_init(&it, out.data, &h, &dec, NULL), 0);
	CHECK_EQ_INT(ls_batch_iter_next(&it, &r), 1);
	CHECK(r.value_len == 1 && memcmp(r.value, "x", 1) == 0);
	ls_buf_free(&out);
	ls_buf_free(&scratch);
	ls_buf_free(&dec);
	ZSTD_freeCCtx(cc);
}

/* ---- rendering through pieces ---------------------------------------------- */

/* A par that runs the pieces on this thread, parts pieces a batch, and
 * counts the scratch buffers it hands out. */
static ZSTD_CCtx *t_cc;
static ZSTD_DCtx *t_dc;
static struct ls_buf t_scratch;
static int t_scratch_calls;
static void t_run(void *ctx, size_t n, void (*fn)(void *arg, size_t i), void *arg)
{
	(void)ctx;
	for (size_t i = n; i-- > 0;) /* last piece first: order must not matter */
		fn(arg, i);
}
static ZSTD_CCtx *t_cctx(void *ctx) { (void)ctx; return t_cc; }
static ZSTD_DCtx *t_dctx(void *ctx) { (void)ctx; return t_dc; }
static struct ls_buf *t_scr(void *ctx)
{
	(void)ctx;
	t_scratch_calls++;
	return &t_scratch;
}

/* n records "value <i> ..." of varied lengths; want gets their view. */
static struct ls_rec *t_records(uint32_t n, struct ls_buf *want)
{
	struct ls_rec *recs = calloc(n, sizeof(*recs));
	want->len = 0;
	CHECK_EQ_INT(ls_buf_reserve(want, (size_t)n * 160), 0);
	for (uint32_t i = 0; i < n; i++) {
		char *v = (char *)want->data + want->len;
		int len = sprintf(v, "value %u %.*s", i, (int)(i * 7 % 90), "xyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyz");
		recs[i] = (struct ls_rec){NULL, 0, v, (uint32_t)len};
		want->len += (size_t)len;
		want->data[want->len++] = '\n';
	}
	return recs;
}

/* Renders batch with par and checks the view against want. */
static void t_render_check(const struct ls_buf *batch, const struct ls_batch_par *par,
                           const struct ls_buf *want, int want_kept)
{
	struct ls_batch_header h;
	struct ls_buf dec = {0}, view = {0};
	struct ls_batch_span spans[LS_BATCH_PARTS_MAX];
	size_t nspans = 0;
	uint64_t vsize = 0;
	int kept = -1;
	CHECK_EQ_INT(ls_batch_parse_header(batch->data, batch->len, &h), 0);
	CHECK_EQ_INT(ls_batch_render(batch->data, &h, &dec, 0, &view, '\t', t_dc, par, spans,
	                             &nspans, &vsize, &kept), 0);
	CHECK_EQ_INT(vsize, want->len);
	CHECK_EQ_INT(kept, want_kept);
	size_t at = 0;
	for (size_t k = 0; k < nspans; k++) {
		CHECK(at + spans[k].len <= want->len &&
		      memcmp(view.data + spans[k].off, want->data + at, spans[k].len) == 0);
		at += spans[k].len;
	}
	CHECK_EQ_INT(at, want->len);
	if (kept == 1) { /* dec holds the plain records: they iterate */
		struct ls_batch_iter it;
		struct ls_batch_record r;
		uint32_t n = 0;
		ls_batch_iter_init_decoded(&it, dec.data, dec.len, &h);
		while (ls_batch_iter_next(&it, &r) == 1)
			n++;
		CHECK_EQ_INT(n, h.record_count);
	}
	ls_buf_free(&dec);
	ls_buf_free(&view);
}

/* A batch written as several zstd frames renders frame by frame, each
 * decompressed into the thread's scratch (dec left alone); without the
 * scratch hook, into dec. */
static void test_render_pieces_scratch(void)
{
	struct ls_buf want = {0}, out = {0}, scratch = {0};
	uint32_t n = 20000;
	struct ls_rec *recs = t_records(n, &want);
	t_cc = ZSTD_createCCtx();
	t_dc = ZSTD_createDCtx();
	struct ls_batch_par par = {.parts = 4, .run = t_run, .cctx = t_cctx, .dctx = t_dctx,
	                           .scratch = t_scr};
	uint64_t vsize;
	CHECK_EQ_INT(ls_batch_encode_par(&out, &scratch, NULL, &par, recs, n, 7, NULL,
	                                 LS_CODEC_ZSTD, 1, &vsize), 0);
	CHECK_EQ_INT(vsize, want.len);
	t_scratch_calls = 0;
	t_render_check(&out, &par, &want, 0);
	CHECK_EQ_INT(t_scratch_calls, 4);
	par.scratch = NULL;
	t_render_check(&out, &par, &want, 1);
	t_render_check(&out, NULL, &want, 1);
	free(recs);
	ls_buf_free(&want);
	ls_buf_free(&out);
	ls_buf_free(&scratch);
	ls_buf_free(&t_scratch);
	ZSTD_freeCCtx(t_cc);
	ZSTD_freeDCtx(t_dc);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Frames that end inside a record (another producer's split) cannot be
 * rendered apart: the section is decompressed into dec and parsed whole,
 * with or without the scratch hook. */
static void test_render_frames_split_mid_record(void)
{
	struct ls_buf want = {0}, plain = {0}, scratch = {0}, zb = {0};
	uint32_t n = 9000;
	struct ls_rec *recs = t_records(n, &want);
	t_cc = ZSTD_createCCtx();
	t_dc = ZSTD_createDCtx();
	uint64_t vsize;
	CHECK_EQ_INT(ls_batch_encode(&plain, &scratch, NULL, recs, n, 7, NULL, LS_CODEC_NONE, 0,
	                             &vsize), 0);
	const uint8_t *sec = plain.data + LS_BATCH_HEADER_SIZE;
	size_t len = plain.len - LS_BATCH_HEADER_SIZE;
	size_t cut[4] = {0, len / 3 + 1, 2 * len / 3 + 2, len}; /* odd: inside records */
	CHECK_EQ_INT(ls_buf_reserve(&zb, LS_BATCH_HEADER_SIZE + ZSTD_compressBound(len) + 64), 0);
	memcpy(zb.data, plain.data, LS_BATCH_HEADER_SIZE);
	size_t at = LS_BATCH_HEADER_SIZE;
	for (int k = 0; k < 3; k++) {
		size_t r = ZSTD_compressCCtx(t_cc, zb.data + at, zb.cap - at, sec + cut[k],
		                             cut[k + 1] - cut[k], 1);
		CHECK(!ZSTD_isError(r));
		at += r;
	}
	zb.len = at;
	put_be32(zb.data + LS_BATCH_OFF_LENGTH, (uint32_t)(zb.len - LS_BATCH_LOG_OVERHEAD));
	zb.data[LS_BATCH_OFF_ATTRS + 1] = (uint8_t)((zb.data[LS_BATCH_OFF_ATTRS + 1] & ~7) |
	                                            LS_CODEC_ZSTD);
	put_be32(zb.data + LS_BATCH_OFF_CRC,
	         ls_crc32c(0, zb.data + LS_BATCH_OFF_ATTRS, zb.len - LS_BATCH_OFF_ATTRS));
	struct ls_batch_par par = {.parts = 3, .run = t_run, .cctx = t_cctx, .dctx = t_dctx,
	                           .scratch = t_scr};
	t_render_check(&zb, &par, &want, 1);
	par.scratch = NULL;
	t_render_check(&zb, &par, &want, 1);
	free(recs);
	ls_buf_free(&want);
	ls_buf_free(&plain);
	ls_buf_free(&scratch);
	ls_buf_free(&zb);
	ls_buf_free(&t_scratch);
	ZSTD_freeCCtx(t_cc);
	ZSTD_freeDCtx(t_dc);
}

int main(void)
{
	RUN(test_encode_exact_bytes);
	RUN(test_roundtrip_none);
	RUN(test_roundtrip_zstd);
	RUN(test_crc_catches_flips);
	RUN(test_malformed_records);
	RUN(test_tiny_batch_stays_plain);
	RUN(test_render_pieces_scratch);
	RUN(test_render_frames_split_mid_record);
	return unit_report("test_batch");
}
