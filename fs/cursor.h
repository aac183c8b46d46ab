/*
 * cursor.h - groups/<g>/cursor and groups/<g>/pending: one open file is one
 * member of the group (replicator/groups.h); reads consume.
 *
 * Every function that takes a fuse_req_t replies to it exactly once, possibly
 * later from another thread (a blocking read is parked until records arrive
 * or the request is interrupted).
 */
#ifndef TFS_CURSOR_H
#define TFS_CURSOR_H

#include <fuse_lowlevel.h>

#include "../replicator/groups.h"

struct cursor;

/* Starts the thread that answers parked reads. Call after daemonising. */
int cursor_start(void) __attribute__((warn_unused_result));
void cursor_stop(void);

/* Joins group g of topic t as a new member. On success the cursor owns the
 * caller's reference to g (and takes its own to t). pending != 0: reads end
 * (EOF) when caught up instead of waiting. */
int cursor_open(struct rep_topic *t, struct rep_group *g, int pending, struct cursor **out)
	__attribute__((warn_unused_result));

/* A read of at most size bytes: commits what the previous read returned,
 * then returns whole records (one only if size < 64 KiB); a record longer
 * than size continues in the next read. Nothing ready: EOF for pending,
 * EAGAIN with O_NONBLOCK in flags, else the reply waits. */
void cursor_read(struct cursor *c, fuse_req_t req, size_t size, int flags);

/* poll(): POLLIN when a read would not wait; ph is notified later otherwise. */
void cursor_poll(struct cursor *c, fuse_req_t req, struct fuse_pollhandle *ph);

/* close() by the process in req: commits if it closes or exits normally,
 * gives the last read's records back to the group if it dies from a signal. */
void cursor_flush(struct cursor *c, fuse_req_t req);

/* The last close: leaves the group and frees c. */
void cursor_release(struct cursor *c);

#endif
