/*
 * crc32c.c - CRC-32C, reflected polynomial 0x82F63B78 (see crc32c.h).
 *
 * Owns: the lookup tables (built once, thread-safe via pthread_once) and the
 * choice of implementation.
 *
 * The hardware path runs three independent crc32 streams over three adjacent
 * blocks (the instruction has a latency of 3 cycles and a throughput of 1, so
 * one stream leaves two thirds of the unit idle) and joins them with "shift"
 * tables: the CRC register after appending n zero bytes is a linear function
 * of the register, tabulated per byte for n = LONG and n = SHORT (Mark
 * Adler's crc32c.c). About 3x one stream on 1 MiB batches.
 *
 * ls_crc32c_combine() joins CRCs of adjacent pieces computed apart (pieces of
 * one batch encoded on two threads) by multiplying by x^(8n) mod P.
 *
 * Invariants:
 *  1. Pre- and post-inversion are done here: callers chain raw results,
 *     starting from 0, exactly like zlib's crc32().
 *  2. The hardware and table paths return the same value for every input
 *     (tests/unit/test_crc32c.c compares them on random data).
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#define CRC32C_POLY 0x82F63B78u

#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

static uint32_t table[8][256];
static uint32_t shift_long[4][256];  /* register -> register after LONG_BLOCK zeros */
static uint32_t shift_short[4][256]; /* ... after SHORT_BLOCK zeros */
static uint32_t x2n[32];             /* x^(2^n) mod P */
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static int use_hw;

/* a * b mod P, both reflected (bit 31 is x^0). */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
	uint32_t m = 1u << 31, p = 0;
	for (;;) {
		if (a & m) {
			p ^= b;
			if ((a & (m - 1)) == 0)
				break;
		}
		m >>= 1;
		b = b & 1 ? (b >> 1) ^ CRC32C_POLY : b >> 1;
	}
	return p;
}

/* x^(n * 2^k) mod P. */
static uint32_t x2nmodp(uint64_t n, unsigned k)
{
	uint32_t p = 1u << 31; /* x^0 */
	while (n) {
		if (n & 1)
			p = multmodp(x2n[k & 31], p);
		n >>= 1;
		k++;
	}
	return p;
}

/* Tables for the register after len zero bytes: that is multiplication by
 * x^(8 len) mod P, linear in the register, so one table per register byte. */
static void shift_tables(uint32_t t[4][256], size_t len)
{
	uint32_t op = x2nmodp(len, 3);
	for (uint32_t n = 0; n < 256; n++)
		for (int b = 0; b < 4; b++)
			t[b][n] = n ? multmodp(op, n << (8 * b)) : 0;
}

static void init_tables(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
	uint32_t p = 1u << 30; /* x^1 */
	x2n[0] = p;
	for (int n = 1; n < 32; n++)
		x2n[n] = p = multmodp(p, p);
	shift_tables(shift_long, LONG_BLOCK);
	shift_tables(shift_short, SHORT_BLOCK);
#if defined(__x86_64__)
	__builtin_cpu_init();
	use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t sw_update(uint32_t c, const uint8_t *p, size_t len)
{
	while (len && ((uintptr_t)p & 7)) {
		c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
		len--;
	}
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		w = __builtin_bswap64(w);
#endif
		uint32_t lo = (uint32_t)w ^ c, hi = (uint32_t)(w >> 32);
		c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^
		    table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
		    table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
		    table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
	return c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

static inline uint32_t shift(const uint32_t t[4][256], uint32_t c)
{
	return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^
	       t[3][c >> 24];
}

/* Three streams over blocks of `block` bytes at p, p + block, p + 2 block. */
#define HW_3WAY(block, tab)                                                      \
	while (len >= 3 * (block)) {                                             \
		uint64_t c1 = 0, c2 = 0;                                         \
		const uint8_t *end = p + (block);                                \
		do {                                                             \
			uint64_t w0, w1, w2;                                     \
			memcpy(&w0, p, 8);                                       \
			memcpy(&w1, p + (block), 8);                             \
			memcpy(&w2, p + 2 * (block), 8);                         \
			c64 = _mm_crc32_u64(c64, w0);                            \
			c1 = _mm_crc32_u64(c1, w1);                              \
			c2 = _mm_crc32_u64(c2, w2);                              \
			p += 8;                                                  \
		} while (p < end);                                               \
		c64 = shift(tab, (uint32_t)c64) ^ (uint32_t)c1;                  \
		c64 = shift(tab, (uint32_t)c64) ^ (uint32_t)c2;                  \
		p += 2 * (block);                                                \
		len -= 3 * (block);                                              \
	}

__attribute__((target("sse4.2"))) static uint32_t hw_update(uint32_t c,
                                                            const uint8_t *p,
                                                            size_t len)
{
	while (len && ((uintptr_t)p & 7)) {
		c = _mm_crc32_u8(c, *p++);
		len--;
	}
	uint64_t c64 = c;
	HW_3WAY(LONG_BLOCK, shift_long)
	HW_3WAY(SHORT_BLOCK, shift_short)
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c64 = _mm_crc32_u64(c64, w);
		p += 8;
		len -= 8;
	}
	c = (uint32_t)c64;
	while (len--)
		c = _mm_crc32_u8(c, *p++);
	return c;
}
#endif

uint32_t ls_crc32c(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&table_once, init_tables);
#if defined(__x86_64__)
	if (use_hw)
		return ~hw_update(~crc, buf, len);
#endif
	return ~sw_update(~crc, buf, len);
}

uint32_t ls_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2)
{
	pthread_once(&table_once, init_tables);
	return multmodp(x2nmodp(len2, 3), crc1) ^ crc2;
}

uint32_t ls_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&table_once, init_tables);
	return ~sw_update(~crc, buf, len);
}

int ls_crc32c_hw_available(void)
{
	pthread_once(&table_once, init_tables);
	return use_hw;
}
