# topicfs - one GNU Makefile. Our flags live in TFS_*; the user's CFLAGS,
# CPPFLAGS and LDFLAGS are appended, never replaced.
#
#   make            build bin/topicfs
#   make run        install missing packages, build, mount a single node at ./mnt
#   make stop       unmount ./mnt
#   make test       install missing packages, build, run unit + end-to-end tests
#   make unit       unit tests only            make e2e   end-to-end tests only
#   make asan       the whole test suite under AddressSanitizer + UBSan
#   make bench      the benchmark suite (see tests/bench/README.md)
#   make install    bin/topicfs -> $(PREFIX)/bin (mount -t fuse.topicfs then finds it
#                   through fuse3's own mount.fuse3 helper)

PREFIX ?= /usr/local
BUILD ?= build
CC ?= cc
PKGS := fuse3 libzstd yaml-0.1 raft libuv
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

TFS_CFLAGS := -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -MMD -MP \
	-fno-strict-aliasing
TFS_LDLIBS = $(PKG_LIBS) -lpthread
SAN_FLAGS :=
ifeq ($(SAN),1)
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1
BUILD := build/asan
endif

ALL_CFLAGS = $(TFS_CFLAGS) $(SAN_FLAGS) $(PKG_CFLAGS) $(CPPFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(SAN_FLAGS) $(LDFLAGS)

# ---- sources: explicit lists, one per layer --------------------------------
LOGSTORE_SRCS := logstore/error.c logstore/log.c logstore/crc32c.c \
	logstore/fsutil.c logstore/batch.c logstore/index.c logstore/segment.c \
	logstore/partition.c
REPLICATOR_SRCS := replicator/topic_config.c replicator/local.c replicator/groups.c \
	replicator/replica.c replicator/group_remote.c \
	replicator/meta.c replicator/meta_raft.c replicator/transport.c \
	replicator/raft_transport.c replicator/cluster.c
FS_LIB_SRCS := fs/config.c fs/partitioner.c fs/metrics.c
FS_SRCS := fs/main.c fs/tree.c fs/ops.c fs/produce.c fs/cursor.c fs/procfs.c
UNIT_TESTS := test_crc32c test_batch test_partition test_recovery \
	test_config test_partitioner test_metrics test_groups test_meta test_transport \
	test_raft_transport test_replica test_group_remote

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
LOGSTORE_LIB := $(BUILD)/liblogstore.a
REPLICATOR_LIB := $(BUILD)/libreplicator.a
FSLIB_LIB := $(BUILD)/libfscore.a
TOPICFS := $(if $(filter 1,$(SAN)),$(BUILD)/topicfs,bin/topicfs)
UNIT_BINS := $(addprefix $(BUILD)/tests/,$(UNIT_TESTS))

.PHONY: all deps run stop test unit e2e asan bench install clean
.SECONDARY:
all: $(TOPICFS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(LOGSTORE_LIB): $(call obj,$(LOGSTORE_SRCS))
	$(AR) rcs $@ $^
$(REPLICATOR_LIB): $(call obj,$(REPLICATOR_SRCS))
	$(AR) rcs $@ $^
$(FSLIB_LIB): $(call obj,$(FS_LIB_SRCS))
	$(AR) rcs $@ $^

$(TOPICFS): $(call obj,$(FS_SRCS)) $(FSLIB_LIB) $(REPLICATOR_LIB) $(LOGSTORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(TFS_LDLIBS)

# Unit tests: tests/unit/<name>.c, one binary each, linked with every layer lib.
$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/tests/unit/unit.o $(FSLIB_LIB) $(REPLICATOR_LIB) $(LOGSTORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(TFS_LDLIBS)

deps:
	@tests/install-deps.sh

# A daemon that died (kill -9) leaves a dead mount ("Transport endpoint is
# not connected"): run and stop clear it.
run: deps all
	@if mountpoint -q mnt; then fusermount3 -u mnt; elif LC_ALL=C stat mnt 2>&1 | grep -q 'not connected'; then fusermount3 -uz mnt; fi
	@mkdir -p mnt
	./bin/topicfs mnt
	@echo "mounted at ./mnt - try: mkdir -p mnt/orders; echo hello >> mnt/orders/0/log; cat mnt/orders/0/log"
	@echo "unmount with: make stop"

stop:
	@if mountpoint -q mnt; then fusermount3 -u mnt && echo unmounted ./mnt; \
	elif LC_ALL=C stat mnt 2>&1 | grep -q 'not connected'; then fusermount3 -uz mnt && echo "unmounted ./mnt (its daemon had died)"; fi

unit: $(UNIT_BINS)
	@tests/run-unit.sh $(UNIT_BINS)

e2e: $(TOPICFS)
	@TOPICFS=$(abspath $(TOPICFS)) tests/run-e2e.sh

test: deps
	@tests/fetch-syslog-ng.sh
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory $(UNIT_BINS)
	@TOPICFS=$(abspath $(TOPICFS)) tests/run-all.sh $(UNIT_BINS)

# allocator_may_return_null: libraft sizes a buffer from a raft stream's
# message header; a hostile length makes malloc fail (NULL, which libraft
# handles) instead of ASan's fatal "allocation size too big".
asan: deps
	@tests/fetch-syslog-ng.sh
	@$(MAKE) --no-print-directory SAN=1 all
	@$(MAKE) --no-print-directory SAN=1 unit-bins-asan
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		TOPICFS=$(abspath build/asan/topicfs) tests/run-all.sh $(addprefix build/asan/tests/,$(UNIT_TESTS))

.PHONY: unit-bins-asan
unit-bins-asan: $(UNIT_BINS)

bench: deps
	@$(MAKE) --no-print-directory all || echo "bench: bin/topicfs did not build; its rows will say n.a."
	@tests/bench/run.sh

install: all
	install -D -m 0755 bin/topicfs $(DESTDIR)$(PREFIX)/bin/topicfs

clean:
	rm -rf build bin

-include $(shell find $(BUILD) -path $(BUILD)/shippers -prune -o -type f -name '*.d' -print 2>/dev/null)
