/*
 * unit.h - the smallest test harness: CHECK() records a failure with file and
 * line and goes on; RUN() runs one test function; unit_report() prints
 * "<suite>: N passed, N failed" and returns the exit status.
 */
#ifndef TFS_UNIT_H
#define TFS_UNIT_H

#include <stdio.h>

extern int unit_failed_checks;

#define CHECK(cond)                                                              \
	do {                                                                     \
		if (!(cond)) {                                                   \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,   \
			        __LINE__, #cond);                                \
			unit_failed_checks++;                                    \
		}                                                                \
	} while (0)

#define CHECK_EQ_INT(a, b)                                                       \
	do {                                                                     \
		long long a_ = (long long)(a), b_ = (long long)(b);              \
		if (a_ != b_) {                                                  \
			fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", \
			        __FILE__, __LINE__, #a, #b, a_, b_);             \
			unit_failed_checks++;                                    \
		}                                                                \
	} while (0)

#define RUN(fn) unit_run(#fn, fn)

void unit_run(const char *name, void (*fn)(void));
/* A fresh empty directory under $TMPDIR for this test; removed at exit. */
const char *unit_tmpdir(void);
int unit_report(const char *suite);

#endif
