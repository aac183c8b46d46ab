/*
 * fsutil.h - small POSIX file helpers for logstore: whole reads and writes,
 * directory fsync, atomic replacement of small files, recursive removal.
 *
 * All return 0 (or a byte count) or -errno; none logs. A write that makes no
 * progress (short write with the disk full) is reported as -ENOSPC.
 */
#ifndef TFS_LS_FSUTIL_H
#define TFS_LS_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

#include "error.h"

/* Writes all len bytes at off, retrying short writes and EINTR. On failure
 * some prefix may have been written; the caller truncates it away. */
int ls_fsutil_pwrite_all(int fd, const void *buf, size_t len, off_t off) TFS_MUST_CHECK;

/* Reads up to len bytes at off (fewer only at end of file). Returns bytes read. */
ssize_t ls_fsutil_pread_all(int fd, void *buf, size_t len, off_t off) TFS_MUST_CHECK;

/* fsync of the directory dirfd (makes creates, renames, unlinks durable). */
int ls_fsutil_fsync_fd(int fd) TFS_MUST_CHECK;

/* Replaces dirfd/name with data atomically and durably: writes name.tmp,
 * fsyncs it, renames it over name, fsyncs the directory. On failure name is
 * unchanged (the temp file is removed). */
int ls_fsutil_write_atomic(int dirfd, const char *name, const void *data,
                           size_t len) TFS_MUST_CHECK;

/* Reads the whole of dirfd/name into buf (at most cap bytes); *len gets the
 * size. -EFBIG if larger than cap; -ENOENT if absent. */
int ls_fsutil_read_file(int dirfd, const char *name, void *buf, size_t cap,
                        size_t *len) TFS_MUST_CHECK;

/* Creates path and missing parents (mode 0755). Existing directories are fine. */
int ls_fsutil_mkdir_p(const char *path) TFS_MUST_CHECK;

/* Removes path recursively (like rm -rf). Absent path is success. */
int ls_fsutil_rm_rf(const char *path) TFS_MUST_CHECK;

#endif
