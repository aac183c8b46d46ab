/*
 * partitioner.c - where a produced record goes.
 *
 * Keyed records: Kafka's default partitioner, so a key lands on the same
 * partition number as it would in Kafka (BuiltInPartitioner.partitionForKey):
 *
 *     partition = (murmur2(key) & 0x7fffffff) % partitions
 *
 * murmur2 is Kafka's Utils.murmur2 bit for bit: MurmurHash2 (32-bit) with
 * seed 0x9747b28c, m = 0x5bd1e995, r = 24, the input read as little-endian
 * 4-byte words, the 1..3 tail bytes folded in as Kafka does (byte[2] << 16,
 * byte[1] << 8, byte[0], then h *= m), and the result taken as a signed Java
 * int. All arithmetic here is on uint32_t so wrap-around is defined; the
 * final conversion to int32_t is two's complement (as on every target gcc
 * supports).
 *
 * Unkeyed records: sticky round-robin. Every record of one write() goes to
 * one partition; the next write() moves on to the next partition:
 *
 *     sticky_rr_init(seed) --> next = seed
 *     sticky_rr_pick(n)    --> p = next % n, next = (p + 1) % n, return p
 *
 * No state beyond struct sticky_rr (one per open producer file, not shared
 * between threads), no allocation, no errors.
 */
#include "partitioner.h"

#define MURMUR2_SEED 0x9747b28cu
#define MURMUR2_M 0x5bd1e995u
#define MURMUR2_R 24

int32_t murmur2(const void *data, size_t len)
{
	const unsigned char *d = data;
	/* Kafka takes length as a Java int; keys are far below 2^31. */
	uint32_t h = MURMUR2_SEED ^ (uint32_t)len;
	size_t nwords = len / 4;

	for (size_t i = 0; i < nwords; i++) {
		const unsigned char *w = d + i * 4;
		uint32_t k = (uint32_t)w[0] | (uint32_t)w[1] << 8 |
		             (uint32_t)w[2] << 16 | (uint32_t)w[3] << 24;
		k *= MURMUR2_M;
		k ^= k >> MURMUR2_R;
		k *= MURMUR2_M;
		h *= MURMUR2_M;
		h ^= k;
	}

	const unsigned char *tail = d + (len & ~(size_t)3);
	switch (len % 4) {
	case 3:
		h ^= (uint32_t)tail[2] << 16;
		/* fall through */
	case 2:
		h ^= (uint32_t)tail[1] << 8;
		/* fall through */
	case 1:
		h ^= (uint32_t)tail[0];
		h *= MURMUR2_M;
		break;
	default:
		break;
	}

	h ^= h >> 13;
	h *= MURMUR2_M;
	h ^= h >> 15;
	return (int32_t)h;
}

uint32_t partition_for_key(const void *key, size_t len, uint32_t n)
{
	if (n == 0)
		return 0;
	return ((uint32_t)murmur2(key, len) & 0x7fffffffu) % n;
}

void sticky_rr_init(struct sticky_rr *s, uint32_t seed)
{
	s->next = seed;
}

uint32_t sticky_rr_pick(struct sticky_rr *s, uint32_t n)
{
	if (n == 0)
		return 0;
	uint32_t p = s->next % n;
	s->next = (p + 1) % n;
	return p;
}
