/*
 * partitioner.h - where a record goes: Kafka's murmur2 for keyed records,
 * sticky round-robin batches for unkeyed ones.
 */
#ifndef TFS_PARTITIONER_H
#define TFS_PARTITIONER_H

#include <stddef.h>
#include <stdint.h>

/* Kafka's Utils.murmur2 (seed 0x9747b28c), as a signed 32-bit value:
 * murmur2("21") == -973932308. */
int32_t murmur2(const void *data, size_t len);

/* Kafka's default partition for a key: (murmur2(key) & 0x7fffffff) % n. */
uint32_t partition_for_key(const void *key, size_t len, uint32_t n);

/* Sticky round-robin for unkeyed records: all records of one write() go to
 * the same partition; the next write moves to the next partition. State is
 * per open producer file; start spreads files over partitions. */
struct sticky_rr {
	uint32_t next;
};
void sticky_rr_init(struct sticky_rr *s, uint32_t seed);
uint32_t sticky_rr_pick(struct sticky_rr *s, uint32_t n);

#endif
