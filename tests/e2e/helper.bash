# helper.bash - shared set-up for end-to-end tests: every test gets its own
# temporary directory with a mount point and a data directory, a daemon
# started in the foreground in the background (so tests know its pid), and a
# teardown that always unmounts and removes everything.
#
#   tfs_start [topicfs args...]   mount $MNT from $DATA; sets TFS_PID; waits until ready
#   tfs_stop                      unmount cleanly and wait for the daemon to exit
#   tfs_kill9                     SIGKILL the daemon and clean the dead mount
#   wait_for CMD...               retry CMD for up to 10 s
#
# Added for the single-node suite (see the end of this file):
#   tfs_start_raw [args...]       like tfs_start without --data (for -c tests)
#   tfs_pids                      pids of every topicfs process serving $MNT
#   wait_until 'EXPR'             retry shell code EXPR, re-evaluated each time, for up to 10 s
#   bg_track PID                  kill PID in teardown (background tails, writers)
#   mk_topic NAME [YAML]          mkdir a topic, optionally write YAML to its .config
#   set_config TOPIC YAML         write YAML to TOPIC/.config; fails if refused
#   cfg_value TOPIC KEY           the value of KEY as .config shows it
#   state_value TOPIC P KEY       the value of KEY in TOPIC/P/state
#   all_records TOPIC             every record of every partition, partition order
#   seg_files TOPIC [P]           segment .log files of TOPIC (partition P) in $DATA
#
# teardown also unmounts anything else mounted under $T (tmpfs for full-disk
# tests) and waits for daemonised topicfs processes of this test to exit.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'
bats_require_minimum_version 1.5.0

: "${TOPICFS:=$BATS_TEST_DIRNAME/../../bin/topicfs}"

# tfs_setup: the per-test directories; a .bats file that defines its own
# setup() calls it first.
setup() {
	tfs_setup
}

tfs_setup() {
	T=$(mktemp -d "${TMPDIR:-/tmp}/tfs-e2e.XXXXXX")
	MNT=$T/mnt
	DATA=$T/data
	LOG=$T/topicfs.log
	mkdir -p "$MNT" "$DATA"
	TFS_PID=
	BG_PIDS=()
}

teardown() {
	local p pids m
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	pids=$(tfs_pids)
	if mountpoint -q "$MNT" 2>/dev/null; then
		fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
	fi
	for p in $pids; do
		[[ $p == "${TFS_PID:-}" ]] && continue
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	local exit_status=0
	if [[ -n ${TFS_PID:-} ]]; then
		for _ in $(seq 50); do kill -0 "$TFS_PID" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$TFS_PID" 2>/dev/null; then
			kill -9 "$TFS_PID" 2>/dev/null || true
			wait "$TFS_PID" 2>/dev/null || true
		else
			# unmounted cleanly: it must exit 0 (under make asan, leak
			# and sanitizer reports at exit make this non-zero)
			wait "$TFS_PID" 2>/dev/null || exit_status=$?
		fi
	fi
	if [[ ${BATS_TEST_COMPLETED:-} != 1 && -f $LOG ]]; then
		echo "--- daemon log (last 30 lines) ---" >&3
		tail -n 30 "$LOG" | sed 's/^/# /' >&3
	fi
	# anything else mounted under $T (innermost first), e.g. a small tmpfs
	while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done < <(findmnt -rn -o TARGET | grep -F "$T/" | sort -r)
	if ((exit_status != 0)) && [[ -f $LOG ]]; then
		echo "daemon exited with status $exit_status after unmount:" >&3
		tail -n 40 "$LOG" | sed 's/^/# /' >&3
	fi
	rm -rf "$T"
	((exit_status == 0))
}

# tfs_start [args...]: start the daemon in the foreground (in the background of
# the test) on $DATA and $MNT with extra args, wait until the mount answers.
tfs_start() {
	tfs_start_raw --data "$DATA" "$@"
}

# tfs_start_raw [args...]: tfs_start without the --data argument.
tfs_start_raw() {
	"$TOPICFS" -f "$@" "$MNT" >>"$LOG" 2>&1 3>&- &
	TFS_PID=$!
	for _ in $(seq 100); do
		if mountpoint -q "$MNT" && ls "$MNT" >/dev/null 2>&1; then return 0; fi
		kill -0 "$TFS_PID" 2>/dev/null || { cat "$LOG" >&2; return 1; }
		sleep 0.05
	done
	echo "mount did not become ready" >&2
	cat "$LOG" >&2
	return 1
}

tfs_stop() {
	fusermount3 -u "$MNT"
	for _ in $(seq 100); do kill -0 "$TFS_PID" 2>/dev/null || break; sleep 0.05; done
	if kill -0 "$TFS_PID" 2>/dev/null; then
		echo "daemon $TFS_PID did not exit after unmount" >&2
		return 1
	fi
	# A clean unmount exits 0; under `make asan` a leak or sanitizer report
	# at exit makes this fail.
	local status=0
	wait "$TFS_PID" 2>/dev/null || status=$?
	TFS_PID=
	if ((status != 0)); then
		echo "daemon exited with status $status after a clean unmount" >&2
		tail -n 40 "$LOG" >&2
		return 1
	fi
}

tfs_kill9() {
	kill -9 "$TFS_PID"
	wait "$TFS_PID" 2>/dev/null || true
	fusermount3 -uz "$MNT" 2>/dev/null || true
	TFS_PID=
}

wait_for() {
	for _ in $(seq 100); do "$@" && return 0; sleep 0.1; done
	"$@"
}

# ---- helpers for the single-node suite -------------------------------------

# tfs_pids: pids of topicfs processes whose command line names this test's
# mount point (the foreground daemon, or one that daemonised itself).
tfs_pids() {
	pgrep -f -- "topicfs.* $MNT( |\$)" 2>/dev/null || true
}

# wait_until 'EXPR': like wait_for, but EXPR is shell code evaluated afresh on
# every try, so command substitutions in it are re-run:
#   wait_until '[[ $(state_value t 0 start_offset) -gt 0 ]]'
wait_until() {
	wait_for eval "$1"
}

# bg_track PID: kill PID in teardown if it is still running.
bg_track() {
	BG_PIDS+=("$1")
}

# mk_topic NAME [YAML]: create topic NAME; with YAML, write it to its .config.
mk_topic() {
	mkdir "$MNT/$1" || return 1
	if (($# > 1)); then set_config "$1" "$2"; fi
}

# set_config TOPIC YAML: write YAML (printf %b escapes expanded) to .config.
set_config() {
	printf '%b\n' "$2" >"$MNT/$1/.config"
}

# cfg_value TOPIC KEY: KEY's value as shown by TOPIC/.config.
cfg_value() {
	sed -n "s/^$2: *//p" "$MNT/$1/.config"
}

# state_value TOPIC P KEY: KEY's value in TOPIC/P/state.
state_value() {
	sed -n "s/^$3: *//p" "$MNT/$1/$2/state"
}

# all_records TOPIC: cat every partition's log, partitions in numeric order.
all_records() {
	local p
	for p in $(ls "$MNT/$1" | grep -E '^[0-9]+$' | sort -n); do
		cat "$MNT/$1/$p/log" || return 1
	done
}

# seg_files TOPIC [P]: the segment files of TOPIC (partition P) under $DATA,
# sorted. Layout: DATA/topics/<topic>/<partition>/<base offset>.log.
seg_files() {
	find "$DATA" -path "*/topics/$1/${2:-*}/*.log" -type f | sort
}
