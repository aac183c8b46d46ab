/*
 * error.c - names and errno mapping of topicfs error codes (see error.h).
 *
 * A code is 0, a negative errno, or a domain error in
 * [-TFS_EDOMAIN_MAX, -TFS_EDOMAIN_MIN]. The table below is the only place a
 * domain error gets its text and its errno.
 */
#include "error.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

static const struct {
	int code;
	int err;
	const char *text;
} domain_errors[] = {
	{LS_ECORRUPT, EIO, "stored data failed a length or checksum check"},
	{LS_ESTICKY, EROFS, "partition is read-only after a failed write or fsync"},
	{LS_EOUTOFRANGE, ERANGE, "offset outside the log"},
	{REP_ENOTLEADER, EAGAIN, "this node is not the leader"},
	{REP_ENOQUORUM, EAGAIN, "the metadata quorum is not reachable"},
	{REP_EPROTO, EPROTO, "malformed frame from a peer"},
};

#define NDOMAIN (sizeof(domain_errors) / sizeof(domain_errors[0]))

const char *tfs_strerror(int rc)
{
	if (rc == 0)
		return "success";
	for (size_t i = 0; i < NDOMAIN; i++)
		if (domain_errors[i].code == rc)
			return domain_errors[i].text;
	if (rc <= -TFS_EDOMAIN_MIN && rc >= -TFS_EDOMAIN_MAX)
		return "unknown topicfs error";
	/* strerror() may use a static buffer for unknown codes but returns a
	 * constant string for every valid errno, which is all we hand it. */
	return strerror(rc < 0 ? -rc : rc);
}

int tfs_errno(int rc)
{
	if (rc >= 0)
		return 0;
	for (size_t i = 0; i < NDOMAIN; i++)
		if (domain_errors[i].code == rc)
			return domain_errors[i].err;
	if (rc <= -TFS_EDOMAIN_MIN && rc >= -TFS_EDOMAIN_MAX)
		return EIO;
	return -rc;
}
