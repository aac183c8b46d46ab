/*
 * error.h - the one error convention of topicfs.
 *
 * Every fallible function returns int (or ssize_t): 0 (or a count) on success,
 * a negative errno on failure. The few failures that no errno names are domain
 * errors in the reserved range [-TFS_EDOMAIN_MAX, -TFS_EDOMAIN_MIN]; tfs_strerror()
 * names every code and tfs_errno() maps any code to the errno a syscall
 * (or a FUSE reply) should carry.
 */
#ifndef TFS_ERROR_H
#define TFS_ERROR_H

#define TFS_EDOMAIN_MIN 4000
#define TFS_EDOMAIN_MAX 4999

enum tfs_domain_error {
	LS_ECORRUPT = -4001,    /* on-disk data failed a length or CRC check */
	LS_ESTICKY = -4002,     /* partition is read-only after a failed write/fsync */
	LS_EOUTOFRANGE = -4003, /* offset below log start or above log end */
	REP_ENOTLEADER = -4101, /* this node is not the leader (partition or quorum) */
	REP_ENOQUORUM = -4102,  /* the metadata quorum is not reachable */
	REP_EPROTO = -4103,     /* malformed frame from a peer */
};

/* Name of any code: a domain error's own text, else strerror(-rc). Never NULL. */
const char *tfs_strerror(int rc);

/* The positive errno to hand a caller for code rc (rc < 0). Domain errors map to
 * the closest errno (LS_ECORRUPT -> EIO, LS_ESTICKY -> EROFS, ...). */
int tfs_errno(int rc);

#define TFS_MUST_CHECK __attribute__((warn_unused_result))

#endif
