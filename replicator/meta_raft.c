/* meta_raft.c - see meta_raft.h (being written). */
#include "meta_raft.h"
