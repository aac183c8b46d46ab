/*
 * procfs.h - reading another process's /proc files without risking the
 * daemon: a FUSE request can come from a task that holds kernel locks those
 * files need (a FLUSH sent by close-on-exec runs inside execve(), and
 * /proc/<pid>/stat then waits for the exec to finish, which waits for our
 * answer). The read runs on a thread of its own and the caller waits at most
 * PROC_WAIT_MS; a read still blocked then finishes on its own later.
 */
#ifndef TFS_PROCFS_H
#define TFS_PROCFS_H

#include <stddef.h>
#include <sys/types.h>

#define PROC_WAIT_MS 200

/* Reads the start of /proc/<pid>/<file> into buf (size > 1) as a string.
 * 0; -ENOENT if the task is gone or the file unreadable; -ETIMEDOUT if the
 * read did not finish within PROC_WAIT_MS (the task is busy in the kernel,
 * for instance in execve()); -ENOMEM. */
int proc_read(pid_t pid, const char *file, char *buf, size_t size);

/* The process (thread group) of task tid (a thread id, as FUSE requests
 * carry), or proc_read's -errno: -ENOENT if the task is gone. */
pid_t proc_tgid(pid_t tid);

/* Whether tasks a and b belong to one process: 1, or 0 (different, or
 * either one gone or unreadable). */
int proc_same_process(pid_t a, pid_t b);

#endif
