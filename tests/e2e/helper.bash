# helper.bash - shared set-up for end-to-end tests: every test gets its own
# temporary directory with a mount point and a data directory, a daemon
# started in the foreground in the background (so tests know its pid), and a
# teardown that always unmounts and removes everything.
#
#   tfs_start [topicfs args...]   mount $MNT from $DATA; sets TFS_PID; waits until ready
#   tfs_stop                      unmount cleanly and wait for the daemon to exit
#   tfs_kill9                     SIGKILL the daemon and clean the dead mount
#   wait_for CMD...               retry CMD for up to 10 s

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

: "${TOPICFS:=$BATS_TEST_DIRNAME/../../bin/topicfs}"

setup() {
	T=$(mktemp -d "${TMPDIR:-/tmp}/tfs-e2e.XXXXXX")
	MNT=$T/mnt
	DATA=$T/data
	LOG=$T/topicfs.log
	mkdir -p "$MNT" "$DATA"
	TFS_PID=
}

teardown() {
	if mountpoint -q "$MNT" 2>/dev/null; then
		fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
	fi
	if [[ -n ${TFS_PID:-} ]] && kill -0 "$TFS_PID" 2>/dev/null; then
		for _ in $(seq 50); do kill -0 "$TFS_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$TFS_PID" 2>/dev/null || true
	fi
	if [[ ${BATS_TEST_COMPLETED:-} != 1 && -f $LOG ]]; then
		echo "--- daemon log (last 30 lines) ---" >&3
		tail -n 30 "$LOG" | sed 's/^/# /' >&3
	fi
	rm -rf "$T"
}

# tfs_start [args...]: start the daemon in the foreground (in the background of
# the test) on $DATA and $MNT with extra args, wait until the mount answers.
tfs_start() {
	"$TOPICFS" -f --data "$DATA" "$@" "$MNT" >>"$LOG" 2>&1 &
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
	! kill -0 "$TFS_PID" 2>/dev/null
	wait "$TFS_PID" 2>/dev/null || true
	TFS_PID=
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
