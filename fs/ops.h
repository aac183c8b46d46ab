/*
 * ops.h - the FUSE low-level operations table of topicfs (ops.c) and the
 * replicator listener that tells the kernel a partition grew.
 */
#ifndef TFS_OPS_H
#define TFS_OPS_H

#include <fuse_lowlevel.h>
#include <stdint.h>

extern const struct fuse_lowlevel_ops tfs_ops;

/* rep_listener.partition_grew: invalidates the cached attributes of
 * <topic>/<p>/log so tail -f sees the new size. Never called from a handler. */
void tfs_partition_grew(void *ctx, uint64_t topic_id, uint32_t partition);

#endif
