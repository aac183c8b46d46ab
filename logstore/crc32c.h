/*
 * crc32c.h - CRC-32C (Castagnoli), the checksum of Kafka v2 record batches.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at
 * run time, three streams interleaved), else a slicing-by-8 table. Both give
 * identical results.
 */
#ifndef TFS_LS_CRC32C_H
#define TFS_LS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over len bytes of buf and returns the new CRC:
 * ls_crc32c(ls_crc32c(0, a, n), b, m) == ls_crc32c(0, a||b, n+m).
 * ls_crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t ls_crc32c(uint32_t crc, const void *buf, size_t len);

/* The CRC of a||b from crc1 = CRC(a), crc2 = CRC(b) and len2 = |b|
 * (zlib's crc32_combine). */
uint32_t ls_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);

/* The same with the portable table code only (for tests). */
uint32_t ls_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* 1 if the hardware path is in use. */
int ls_crc32c_hw_available(void);

#endif
