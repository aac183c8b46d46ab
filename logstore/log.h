/*
 * log.h - the daemon log: one line per event, "2026-11-21T14:25:14.123Z LEVEL msg".
 *
 * Thread-safe. Writes to stderr until tfs_log_open() points it at a file.
 * Every refused operation is logged once at WARN with what and why
 * (INTERFACE.md section 10).
 */
#ifndef TFS_LOG_H
#define TFS_LOG_H

enum tfs_log_level { TFS_LOG_DEBUG, TFS_LOG_INFO, TFS_LOG_WARN, TFS_LOG_ERROR };

void tfs_log_set_level(enum tfs_log_level level);
/* Append future lines to path (created 0640). Returns 0 or -errno. */
int tfs_log_open(const char *path) __attribute__((warn_unused_result));
void tfs_log(enum tfs_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define tfs_debug(...) tfs_log(TFS_LOG_DEBUG, __VA_ARGS__)
#define tfs_info(...) tfs_log(TFS_LOG_INFO, __VA_ARGS__)
#define tfs_warn(...) tfs_log(TFS_LOG_WARN, __VA_ARGS__)
#define tfs_error(...) tfs_log(TFS_LOG_ERROR, __VA_ARGS__)

#endif
