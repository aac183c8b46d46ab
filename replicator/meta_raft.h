/* meta_raft.h - the metadata quorum under libraft (being written). */
#ifndef TFS_META_RAFT_H
#define TFS_META_RAFT_H
#include "meta.h"
#endif
