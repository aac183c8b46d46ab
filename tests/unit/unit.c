/* unit.c - see unit.h. */
#include "unit.h"

#include "../../logstore/fsutil.h"

#include <stdlib.h>
#include <string.h>

int unit_failed_checks;
static int passed, failed;
static char tmpdirs[64][256];
static int ntmp;

void unit_run(const char *name, void (*fn)(void))
{
	int before = unit_failed_checks;
	fn();
	if (unit_failed_checks == before) {
		passed++;
		printf("ok - %s\n", name);
	} else {
		failed++;
		printf("not ok - %s\n", name);
	}
	fflush(stdout);
}

const char *unit_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	if (ntmp == 64)
		abort();
	snprintf(tmpdirs[ntmp], sizeof(tmpdirs[ntmp]), "%s/tfs-unit-XXXXXX",
	         base ? base : "/tmp");
	if (!mkdtemp(tmpdirs[ntmp]))
		abort();
	return tmpdirs[ntmp++];
}

int unit_report(const char *suite)
{
	for (int i = 0; i < ntmp; i++)
		if (ls_fsutil_rm_rf(tmpdirs[i]) < 0)
			fprintf(stderr, "could not remove %s\n", tmpdirs[i]);
	printf("%s: %d passed, %d failed\n", suite, passed, failed);
	return failed ? 1 : 0;
}
