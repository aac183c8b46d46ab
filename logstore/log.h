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
/* While on (a daemon starting), WARN and ERROR lines also go to stderr when
 * the log is a file: the user who started it sees why a start failed, even
 * when the log file cannot be written (a full disk). */
void tfs_log_copy_to_stderr(int on);
void tfs_log(enum tfs_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The why of a refusal for the layer that logs it (one line per refused
 * operation): a lower layer that refuses with rc (a negative code) leaves
 * its reason on this thread, logs it at debug, and the layer that answers
 * the caller takes it into its own line. tfs_reason_take(err, ...) with the
 * errno the caller answers copies the reason into out (size n) and forgets
 * it: 1 if one was left for a code that maps to err (tfs_errno), else 0 (a
 * reason left for another error is forgotten too). */
void tfs_reason(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tfs_reason_take(int err, char *out, unsigned long n);

#define tfs_debug(...) tfs_log(TFS_LOG_DEBUG, __VA_ARGS__)
#define tfs_info(...) tfs_log(TFS_LOG_INFO, __VA_ARGS__)
#define tfs_warn(...) tfs_log(TFS_LOG_WARN, __VA_ARGS__)
#define tfs_error(...) tfs_log(TFS_LOG_ERROR, __VA_ARGS__)

#endif
