/*
 * tree.h - the mounted tree: which object an inode number names, its
 * attributes, and the text of the generated files.
 *
 * Inode numbers are computed, not stored, so they are stable for an object's
 * life and need no table (FORGET is a no-op):
 *
 *   1 /            2 /.cluster     3 /.cluster/nodes     4 /.cluster/metrics
 *   topic objects: (topic_id << 32) | (kind << 24) | index
 *
 *   kind          index            object
 *   TN_TOPIC      0                <topic>/
 *   TN_CONFIG     0                <topic>/.config
 *   TN_GROUPS     0                <topic>/groups/
 *   TN_PART_DIR   p                <topic>/<p>/
 *   TN_PART_LOG   p                <topic>/<p>/log
 *   TN_PART_STATE p                <topic>/<p>/state
 *   TN_PFILE      producer file id <topic>/<name>
 *   TN_GROUP_DIR  group id         <topic>/groups/<group>/
 *   TN_CURSOR     group id         <topic>/groups/<group>/cursor
 *   TN_PENDING    group id         <topic>/groups/<group>/pending
 *   TN_OFFSETS    group id         <topic>/groups/<group>/offsets
 *
 * Opening a group's cursor creates the group, so the path walk of an open()
 * must get through groups/<new>/ although <new> does not exist yet, while
 * mkdir (which the kernel precedes by a lookup that must fail) must not. A
 * lookup made for a task inside open() (ops.c reads /proc/<pid>/syscall)
 * resolves a valid unknown name to a "virtual" group id (bit 23 set, from a
 * per-run table of names), never cached; opening a file in it creates the
 * group. Every other lookup of an unknown group is ENOENT.
 *
 * Topic ids are never reused (replicator.h), so after `rmdir t; mkdir t` the
 * old inodes are stale (ENOENT) rather than silently naming the new topic.
 */
#ifndef TFS_TREE_H
#define TFS_TREE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "../replicator/groups.h"
#include "../replicator/replicator.h"
#include "metrics.h"

enum tnode_kind {
	TN_ROOT,
	TN_CLUSTER,
	TN_NODES,
	TN_METRICS,
	TN_TOPIC,
	TN_CONFIG,
	TN_GROUPS,
	TN_PART_DIR,
	TN_PART_LOG,
	TN_PART_STATE,
	TN_PFILE,
	TN_GROUP_DIR,
	TN_CURSOR,
	TN_PENDING,
	TN_OFFSETS,
};

#define INO_ROOT 1
#define INO_CLUSTER 2
#define INO_NODES 3
#define INO_METRICS 4

/* A resolved inode. `topic` is a reference (rep_topic_put via tnode_release)
 * for topic objects, NULL otherwise; `part` is set for partition objects. */
struct tnode {
	enum tnode_kind kind;
	uint64_t ino;
	struct rep_topic *topic;
	uint32_t index;
	struct rep_partition *part;
	struct rep_group *group;        /* group objects: a reference, NULL if virtual */
	char gname[REP_NAME_MAX + 1];   /* group objects: the group's name */
};

/* The daemon-wide state the tree needs. */
struct tfs {
	struct rep *rep;
	struct fuse_session *se;
	uid_t uid;
	gid_t gid;
	struct timespec start_time;
	char data_dir[4096];
};
extern struct tfs tfs;

uint64_t tnode_ino(uint64_t topic_id, enum tnode_kind kind, uint32_t index);

/* Resolves ino: 0 with *n filled (release with tnode_release), or -ENOENT if
 * the object is gone. */
int tnode_resolve(uint64_t ino, struct tnode *n);
void tnode_release(struct tnode *n);

/* Builds the child `name` of parent (a resolved directory). 0 or -ENOENT.
 * allow_virtual: a group that does not exist yet resolves to a virtual group
 * (for an open() on the way to its cursor); else it is ENOENT. */
int tnode_lookup(const struct tnode *parent, const char *name, struct tnode *child);
int tnode_lookup_ex(const struct tnode *parent, const char *name, int allow_virtual,
                    struct tnode *child);
/* 1 for a group directory that does not exist yet. */
int tnode_is_virtual(const struct tnode *n);

/* Fills st for n (size of generated files is their current text length). */
int tnode_stat(const struct tnode *n, struct stat *st);

/* "orders/0/log", "/", ".cluster/nodes", "orders/app.log" for log lines. */
void tnode_path(const struct tnode *n, char *buf, size_t size);

/* 1 for directories. */
int tnode_is_dir(enum tnode_kind kind);

/* For a group object whose group does not exist yet: creates it and sets
 * n->group. 0 or -errno. */
int tnode_group_create(struct tnode *n);

/* The text of a generated file (.config, state, nodes, metrics, offsets) into b.
 * For .config, error (may be NULL) becomes the leading "# error:" line. */
void tnode_render(const struct tnode *n, const char *config_error, struct mbuf *b);

/* The last .config error of a topic (node-local, kept until the next
 * successful write). */
void tree_set_config_error(uint64_t topic_id, const char *msg);
void tree_get_config_error(uint64_t topic_id, char *buf, size_t size);

#endif
