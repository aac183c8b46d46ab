/*
 * topic_config.h - a topic's settings as plain data (the keys of .config).
 *
 * A topic stores only the keys it overrides (set_mask); its effective settings
 * are the node defaults overlaid with those overrides, so `key: ~` (clearing an
 * override) returns a key to the node default. No YAML here: fs/config.c
 * parses and renders; this is what the metadata layer stores and replicates.
 */
#ifndef TFS_TOPIC_CONFIG_H
#define TFS_TOPIC_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "../logstore/logstore.h"

enum rep_acks { REP_ACKS_LEADER = 0, REP_ACKS_ALL = 1 };

/* One bit per key, in the order .config renders them. */
enum tc_key {
	TC_PARTITIONS,
	TC_REPLICATION,
	TC_MIN_INSYNC,
	TC_ACKS,
	TC_RETENTION_MS,
	TC_RETENTION_BYTES,
	TC_SEGMENT_BYTES,
	TC_CLEANUP,
	TC_COMPRESSION,
	TC_COMPRESSION_LEVEL,
	TC_KEY_SEPARATOR,
	TC_MAX_RECORD_BYTES,
	TC_NKEYS
};

struct topic_config {
	uint32_t partitions;        /* >= 1, can only grow */
	uint32_t replication;       /* >= 1, <= nodes */
	uint32_t min_insync;        /* 1 .. replication */
	enum rep_acks acks;
	int64_t retention_ms;       /* -1 = forever */
	int64_t retention_bytes;    /* -1 = unlimited */
	uint64_t segment_bytes;     /* >= 1024 */
	enum ls_cleanup cleanup;
	enum ls_codec compression;
	int compression_level;      /* zstd 1..19 (negative fast levels -5..-1 too) */
	char key_separator;         /* 0 = records have no key */
	uint32_t max_record_bytes;  /* 1 .. 64 MiB */
	uint32_t set_mask;          /* bit (1u << tc_key) set: explicitly overridden */
};

/* The built-in defaults (before any node configuration): partitions 1,
 * replication 1, min_insync 1, acks all, retention forever, 1 GiB segments,
 * delete, zstd level 1, no key separator, 1 MiB records. set_mask = 0. */
void topic_config_builtin(struct topic_config *out);

/* Name of key k as written in YAML ("retention_ms"). */
const char *topic_config_key_name(enum tc_key k);

/* The key named name ("retention_ms"), or -1 if there is none. */
int topic_config_key_from_name(const char *name);

/* Copies the one field of key k from src to dst (set_mask untouched). */
void topic_config_copy_key(struct topic_config *dst, const struct topic_config *src,
                           enum tc_key k);

/* effective = defaults, then every key set in overrides->set_mask copied from
 * overrides. effective->set_mask = overrides->set_mask. */
void topic_config_effective(const struct topic_config *defaults,
                            const struct topic_config *overrides,
                            struct topic_config *effective);

/* Cross-key and transition rules for a new effective config against the old
 * one (old may be NULL at creation): every count >= 1, partitions only grow,
 * replication <= nodes (nodes == 0: not checked), min_insync <= replication.
 * Returns 0 or -EINVAL with a message that starts with the key, e.g.
 * "partitions: cannot shrink from 6 to 3". (Also declared in fs/config.h.) */
int topic_config_check(const struct topic_config *old, const struct topic_config *neu,
                       unsigned nodes, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/* The logstore settings a partition of this topic runs with. */
void topic_config_to_ls(const struct topic_config *tc, struct ls_config *out);

#endif
