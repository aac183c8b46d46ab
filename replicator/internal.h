/*
 * internal.h - what the modules of replicator/ share with the backend
 * (local.c) and nobody else: accessors into struct rep and struct rep_topic
 * for the group coordinator (groups.c). fs/ never includes this file.
 */
#ifndef TFS_REP_INTERNAL_H
#define TFS_REP_INTERNAL_H

#include "replicator.h"

struct rep_groups;

/* The node's data directory (DATA/). Valid until rep_close(). */
const char *rep_data_dir(const struct rep *r);

/* The node a topic belongs to. */
struct rep *rep_topic_rep(struct rep_topic *t);

/* The group coordinator's state hung on the node (NULL until
 * rep_groups_open). Only groups.c reads or sets it, under its own lock. */
struct rep_groups *rep_groups_state(struct rep *r);
void rep_set_groups_state(struct rep *r, struct rep_groups *g);

#endif
