/*
 * config.h - YAML (libyaml) for the node configuration file and for a topic's
 * .config file. Parses into plain structs; renders .config back.
 *
 * Errors are reported as "FILE:LINE: message" (node config) or
 * "line N: message" (.config) in the caller's buffer, and the function
 * returns -EINVAL; nothing is applied from a refused document.
 */
#ifndef TFS_FS_CONFIG_H
#define TFS_FS_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "../replicator/topic_config.h"

#define NODE_MAX_VOTERS 64

struct node_voter {
	uint16_t id;
	char host[64];          /* dotted-quad IPv4 */
	uint16_t port;
};

enum group_start { GROUP_START_EARLIEST = 0, GROUP_START_LATEST = 1 };

struct node_config {
	uint16_t id;                    /* node.id, 1..65535; default 1 */
	char data_dir[4096];            /* node.data_dir; "" = not set */
	char listen_host[64];           /* node.listen; default this node's voter
	                                   address if voters are given, else 127.0.0.1:7070 */
	uint16_t listen_port;
	char log_file[4096];            /* node.log_file; "" = DATA/topicfs.log when daemonised */
	int log_level;                  /* node.log_level: debug|info|warn|error */
	unsigned nvoters;               /* cluster.voters; 0 = single node */
	struct node_voter voters[NODE_MAX_VOTERS];
	struct topic_config defaults;   /* defaults: builtin overlaid with the file's keys */
	enum group_start group_start;   /* groups.start: earliest|latest */
	uint32_t flush_ms;              /* storage.flush_ms: background fsync period; 0 = never;
	                                   default 1000 */
	uint32_t retention_check_ms;    /* storage.retention_check_ms; default 5000 */
	uint32_t replica_lag_ms;        /* cluster.replica_lag_ms: a follower behind this
	                                   long leaves the in-sync set; default 10000 */
	uint32_t replica_wait_ms;       /* cluster.replica_wait_ms: acks: all waits this
	                                   long for the in-sync set; default 15000 */
	uint32_t node_timeout_ms;       /* cluster.node_timeout_ms: no heartbeat this long
	                                   = node down; default 3000 */
	uint32_t snapshot_entries;      /* cluster.snapshot_entries: metadata log entries
	                                   between snapshots; default 4096 */
	uint32_t leader_rebalance_ms;   /* cluster.leader_rebalance_ms: a partition's
	                                   preferred replica in sync this long leads
	                                   it again; 0 = never; default 30000 */
};

/* Built-in node defaults (single node, id 1, 127.0.0.1:7070, data_dir ""). */
void node_config_default(struct node_config *out);

/* Parses the YAML file at path into *out (which starts from the defaults).
 * Unknown keys, bad values, duplicates and syntax errors fail with
 * "path:line: message" in err. Returns 0 or -EINVAL (-errno if unreadable). */
int node_config_load(const char *path, struct node_config *out, char *err,
                     size_t errlen) __attribute__((warn_unused_result));

/* Parses a .config write: a YAML mapping of topic keys. Keys present are set
 * in *changes (and in changes->set_mask); a key with value `~`/null is
 * reported in *cleared (bit per key) to return to the node default.
 * Checks each value (range, enum) but not cross-key rules. Empty document =
 * no changes. Returns 0 or -EINVAL with "line N: message" in err. */
int topic_config_parse(const char *yaml, size_t len, struct topic_config *changes,
                       uint32_t *cleared, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/* Cross-key and transition rules for a new effective config against the old
 * one (old may be NULL at creation): partitions only grow, min_insync <=
 * replication, replication <= nodes. Returns 0 or -EINVAL with a message.
 * (Implemented in replicator/topic_config.c and declared there too, so the
 * metadata layer can apply the same rules.) */
int topic_config_check(const struct topic_config *old, const struct topic_config *neu,
                       unsigned nodes, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/* Renders every key with its effective value as YAML into buf (one
 * "key: value" per line, in tc_key order; key_separator quoted with escapes,
 * e.g. "\t"). If error is non-empty, a first line "# error: <error>" is
 * written. Returns the length it needed (like snprintf). */
size_t topic_config_render(const struct topic_config *eff, const char *error,
                           char *buf, size_t size);

#endif
