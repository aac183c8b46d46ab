/*
 * topic_config.c - a topic's settings as plain data: built-in defaults, key
 * names, the defaults-plus-overrides overlay, and the mapping to logstore.
 *
 * Owns no state and does no I/O; YAML lives in fs/config.c. The metadata layer
 * stores a topic's overrides (a struct topic_config whose set_mask names the
 * keys the topic sets) and computes the effective settings on demand:
 *
 *     builtin ──node config "defaults:"──> node defaults
 *     node defaults ──topic_config_effective(overrides)──> effective
 *     effective ──topic_config_to_ls──> struct ls_config (per partition)
 *
 * topic_config_check holds the cross-key and transition rules (declared here
 * and in fs/config.h), so the metadata layer and the .config parser refuse
 * the same things with the same words. Each message starts with the key it
 * is about ("partitions: cannot shrink from 6 to 3").
 *
 * Invariants:
 *  1. key_names[] is indexed by enum tc_key and lists every key, in the order
 *     .config renders them.
 *  2. topic_config_effective copies exactly the keys whose bit is set in
 *     overrides->set_mask; every other field comes from the defaults.
 */
#include "topic_config.h"
#include "replicator.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const key_names[TC_NKEYS] = {
	[TC_PARTITIONS] = "partitions",
	[TC_REPLICATION] = "replication",
	[TC_MIN_INSYNC] = "min_insync",
	[TC_ACKS] = "acks",
	[TC_RETENTION_MS] = "retention_ms",
	[TC_RETENTION_BYTES] = "retention_bytes",
	[TC_SEGMENT_BYTES] = "segment_bytes",
	[TC_CLEANUP] = "cleanup",
	[TC_COMPRESSION] = "compression",
	[TC_COMPRESSION_LEVEL] = "compression_level",
	[TC_KEY_SEPARATOR] = "key_separator",
	[TC_MAX_RECORD_BYTES] = "max_record_bytes",
};

void topic_config_builtin(struct topic_config *out)
{
	memset(out, 0, sizeof(*out));
	out->partitions = 1;
	out->replication = 1;
	out->min_insync = 1;
	out->acks = REP_ACKS_ALL;
	out->retention_ms = -1;
	out->retention_bytes = -1;
	out->segment_bytes = 1ull << 30;
	out->cleanup = LS_CLEANUP_DELETE;
	out->compression = LS_CODEC_ZSTD;
	out->compression_level = 1;
	out->key_separator = 0;
	out->max_record_bytes = 1u << 20;
	out->set_mask = 0;
}

const char *topic_config_key_name(enum tc_key k)
{
	if ((unsigned)k >= TC_NKEYS)
		return "?";
	return key_names[k];
}

int topic_config_key_from_name(const char *name)
{
	for (int k = 0; k < TC_NKEYS; k++)
		if (strcmp(name, key_names[k]) == 0)
			return k;
	return -1;
}

void topic_config_copy_key(struct topic_config *dst, const struct topic_config *src,
                           enum tc_key k)
{
	switch (k) {
	case TC_PARTITIONS: dst->partitions = src->partitions; break;
	case TC_REPLICATION: dst->replication = src->replication; break;
	case TC_MIN_INSYNC: dst->min_insync = src->min_insync; break;
	case TC_ACKS: dst->acks = src->acks; break;
	case TC_RETENTION_MS: dst->retention_ms = src->retention_ms; break;
	case TC_RETENTION_BYTES: dst->retention_bytes = src->retention_bytes; break;
	case TC_SEGMENT_BYTES: dst->segment_bytes = src->segment_bytes; break;
	case TC_CLEANUP: dst->cleanup = src->cleanup; break;
	case TC_COMPRESSION: dst->compression = src->compression; break;
	case TC_COMPRESSION_LEVEL: dst->compression_level = src->compression_level; break;
	case TC_KEY_SEPARATOR: dst->key_separator = src->key_separator; break;
	case TC_MAX_RECORD_BYTES: dst->max_record_bytes = src->max_record_bytes; break;
	case TC_NKEYS: break;
	}
}

void topic_config_effective(const struct topic_config *defaults,
                            const struct topic_config *overrides,
                            struct topic_config *effective)
{
	struct topic_config e = *defaults;

	for (int k = 0; k < TC_NKEYS; k++)
		if (overrides->set_mask & (1u << k))
			topic_config_copy_key(&e, overrides, (enum tc_key)k);
	e.set_mask = overrides->set_mask;
	*effective = e;
}

void topic_config_to_ls(const struct topic_config *tc, struct ls_config *out)
{
	memset(out, 0, sizeof(*out));
	out->segment_bytes = tc->segment_bytes;
	out->retention_ms = tc->retention_ms;
	out->retention_bytes = tc->retention_bytes;
	out->compression = tc->compression;
	out->compression_level = tc->compression_level;
	out->cleanup = tc->cleanup;
}

__attribute__((format(printf, 3, 4)))
static int refuse(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

int topic_config_check(const struct topic_config *old, const struct topic_config *neu,
                       unsigned nodes, char *err, size_t errlen)
{
	if (neu->partitions < 1)
		return refuse(err, errlen, "partitions: must be at least 1");
	if (neu->replication < 1)
		return refuse(err, errlen, "replication: must be at least 1");
	if (neu->min_insync < 1)
		return refuse(err, errlen, "min_insync: must be at least 1");
	if (old && neu->partitions < old->partitions)
		return refuse(err, errlen, "partitions: cannot shrink from %" PRIu32 " to %" PRIu32,
		              old->partitions, neu->partitions);
	if (nodes > 0 && neu->replication > nodes)
		return refuse(err, errlen, "replication: %" PRIu32 " exceeds the %u node(s) up in "
		              "the cluster", neu->replication, nodes);
	if (neu->min_insync > neu->replication)
		return refuse(err, errlen, "min_insync: %" PRIu32 " exceeds replication %" PRIu32,
		              neu->min_insync, neu->replication);
	return 0;
}

/* replicator.h's name rule, here so meta.c links without the node backend. */
int rep_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n < 1 || n > REP_NAME_MAX || name[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}
