#!/usr/bin/env bats
# mount.bats - starting, configuring and unmounting one node; the read-only
# .cluster files (INTERFACE.md sections 1 and 2).

load helper

@test "--help exits 0 and prints the usage line" {
	run "$TOPICFS" --help
	assert_success
	[[ ${output,,} == *usage* ]]
	assert_output --partial "MOUNTPOINT"
	assert_output --partial "--data"
}

@test "--version exits 0 and prints a version number" {
	run "$TOPICFS" --version
	assert_success
	assert_output --regexp '[0-9]+\.[0-9]+'
}

@test "without -f the command returns only once the mount is usable" {
	# (output to a file: a daemon that kept our stdout would hang `run`)
	"$TOPICFS" --data "$DATA" "$MNT" >"$T/out" 2>&1 3>&- || { cat "$T/out"; false; }
	# no waiting: the mount must answer the moment the command has returned
	mountpoint -q "$MNT"
	ls -A "$MNT" | grep -qx .cluster
	mkdir "$MNT/t"
	echo hello >>"$MNT/t/0/log"
	[[ $(cat "$MNT/t/0/log") == hello ]]
	# the daemon is still running in the background
	[[ -n $(tfs_pids) ]]
}

@test "without -f a start that fails after the mount exits non-zero, mounts nothing and says why" {
	# a cluster node whose port another process holds: it cannot listen
	python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(120)' >"$T/port" 3>&- &
	bg_track $!
	wait_for test -s "$T/port"
	local port
	port=$(cat "$T/port")
	printf 'node:\n  id: 1\n  data_dir: %s\n  listen: 127.0.0.1:%s\ncluster:\n  voters:\n' \
		"$DATA" "$port" >"$T/node.yaml"
	printf '    - %s@127.0.0.%s:%s\n' 1 1 "$port" 2 2 "$port" 3 3 "$port" >>"$T/node.yaml"
	# (output to files: a daemon that kept a pipe would hang a substitution)
	local rc=0
	timeout 30 "$TOPICFS" -c "$T/node.yaml" "$MNT" >"$T/out" 2>"$T/err" 3>&- || rc=$?
	cat "$T/err"
	[[ $rc -ne 0 && $rc -ne 124 ]] || { echo "exit status $rc"; false; }
	grep -q "cannot listen on 127.0.0.1:$port" "$T/err"
	! mountpoint -q "$MNT"
	[[ -z $(tfs_pids) ]]
}

@test "a config file with an unknown key is refused with FILE:LINE:" {
	printf 'node:\n  id: 1\n  bogus: 7\n' >"$T/cfg.yaml"
	run --separate-stderr timeout 10 "$TOPICFS" -f -c "$T/cfg.yaml" --data "$DATA" "$MNT"
	assert_failure
	[[ $status -ne 124 ]]    # it exited by itself rather than mounting
	[[ $stderr == *"cfg.yaml:3:"* ]]
	run mountpoint -q "$MNT"
	assert_failure
}

@test "a config file with a bad value is refused with FILE:LINE:" {
	printf 'node:\n  id: 70000\n' >"$T/cfg.yaml"
	run --separate-stderr timeout 10 "$TOPICFS" -f -c "$T/cfg.yaml" --data "$DATA" "$MNT"
	assert_failure
	[[ $status -ne 124 ]]
	[[ $stderr == *"cfg.yaml:2:"* ]]
	run mountpoint -q "$MNT"
	assert_failure
}

@test "a bad topic default in the config file is refused with FILE:LINE:" {
	printf 'node:\n  id: 1\ndefaults:\n  partitions: 1\n  acks: sometimes\n' >"$T/cfg.yaml"
	run --separate-stderr timeout 10 "$TOPICFS" -f -c "$T/cfg.yaml" --data "$DATA" "$MNT"
	assert_failure
	[[ $status -ne 124 ]]
	[[ $stderr == *"cfg.yaml:5:"* ]]
}

@test "-c CONFIG: node.data_dir from the file is where the data goes" {
	mkdir "$T/d2"
	printf 'node:\n  id: 1\n  data_dir: %s\n' "$T/d2" >"$T/cfg.yaml"
	tfs_start_raw -c "$T/cfg.yaml"
	mkdir "$MNT/t"
	seq 1 20 >>"$MNT/t/0/log"
	tfs_stop
	# the segment is in the configured directory, nothing in the default one
	[[ -n $(find "$T/d2" -name '*.log' -type f) ]]
	[[ -z $(find "$DATA" -mindepth 1) ]]
	# and a restart from the same file finds the records again
	tfs_start_raw -c "$T/cfg.yaml"
	diff <(seq 1 20) "$MNT/t/0/log"
}

@test "-c CONFIG: defaults from the file apply to new topics" {
	printf 'defaults:\n  partitions: 3\n' >"$T/cfg.yaml"
	tfs_start -c "$T/cfg.yaml"
	mkdir "$MNT/t"
	[[ $(cfg_value t partitions) == 3 ]]
	[[ -f $MNT/t/2/log ]]
}

@test "clean unmount and remount see every record" {
	tfs_start
	mkdir "$MNT/a" "$MNT/b"
	seq 1 500 >>"$MNT/a/0/log"
	for i in $(seq 1 20); do echo "b$i" >>"$MNT/b/0/log"; done
	tfs_stop
	tfs_start
	diff <(seq 1 500) "$MNT/a/0/log"
	diff <(seq 1 20 | sed 's/^/b/') "$MNT/b/0/log"
	# and offsets continue after the old end rather than restarting at 0
	echo more >>"$MNT/a/0/log"
	[[ $(state_value a 0 end_offset) == 501 ]]
}

@test ".cluster/nodes has one line for node 1: id address state role" {
	tfs_start
	run cat "$MNT/.cluster/nodes"
	assert_success
	[[ ${#lines[@]} -eq 1 ]]
	read -r id addr state role extra <<<"${lines[0]}"
	[[ $id == 1 ]]
	[[ $addr == *:* ]]
	[[ -n $state && -n $role && -z $extra ]]
}

@test ".cluster/metrics is Prometheus text and counts produced records" {
	tfs_start
	mkdir "$MNT/t"
	for i in 1 2 3 4 5; do echo "r$i" >>"$MNT/t/0/log"; done
	run cat "$MNT/.cluster/metrics"
	assert_success
	assert_line --regexp '^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$'
	# every sample line: name{labels} value [timestamp]
	local bad
	bad=$(grep -v '^#' <<<"$output" | grep -v '^$' |
		grep -Ev '^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? ([0-9eE+.-]+|NaN|[+-]Inf)( -?[0-9]+)?$' || true)
	[[ -z $bad ]] || { echo "not Prometheus text: $bad"; false; }
	# the records-in counter of t/0 says 5
	local n
	n=$(grep -E '^[a-z_]*records_in[a-z_]*\{' <<<"$output" |
		grep -F 'topic="t"' | grep -F 'partition="0"' | awk '{print $2}')
	[[ -n $n ]] || { echo "no records_in sample for t/0"; false; }
	[[ $n == 5 ]]
}

# mount(8) runs /sbin/mount.fuse3 for fuse.* types, which runs
# `topicfs SOURCE MOUNTPOINT -o OPTS` through sh with the PATH mount(8) sets
# (the system one). So that the binary under test is the one found without
# installing it, these call mount.fuse3 exactly as mount(8) does, with a
# private PATH directory holding `topicfs`.
mount_fuse3() {
	[[ -x /sbin/mount.fuse3 ]] || skip "no /sbin/mount.fuse3"
	mkdir -p "$T/bin"
	ln -sf "$(readlink -f "$TOPICFS")" "$T/bin/topicfs"
	PATH=$T/bin:$PATH /sbin/mount.fuse3 "$@" >"$T/out" 2>&1 3>&- || { cat "$T/out"; false; }
}

@test "mount -t fuse.topicfs topicfs MNT -o data=DIR mounts a usable node" {
	mount_fuse3 topicfs "$MNT" -t fuse.topicfs -o data="$DATA"
	mountpoint -q "$MNT"
	mkdir "$MNT/t"
	echo via-mount >>"$MNT/t/0/log"
	[[ $(cat "$MNT/t/0/log") == via-mount ]]
	# the data went to the data= directory
	[[ -n $(find "$DATA" -name '*.log' -type f) ]]
	findmnt -n -o FSTYPE "$MNT" | grep -qx fuse.topicfs
}

@test "mount -t fuse.topicfs CONFIG.yaml MNT uses the config file as the source" {
	printf 'node:\n  id: 1\n  data_dir: %s\ndefaults:\n  partitions: 2\n' "$DATA" >"$T/cfg.yaml"
	mount_fuse3 "$T/cfg.yaml" "$MNT" -t fuse.topicfs -o rw
	mkdir "$MNT/t"
	[[ -f $MNT/t/1/log ]]
	[[ -n $(find "$DATA" -path '*/topics/t/*' -type d) ]]
}

@test "mount -t fuse 'PROG#SOURCE' through mount(8), then umount" {
	[[ -x /sbin/mount.fuse3 || -x /sbin/mount.fuse ]] || skip "no mount.fuse helper"
	mount -t fuse "$(readlink -f "$TOPICFS")#topicfs" "$MNT" -o data="$DATA" >"$T/out" 2>&1 3>&- ||
		{ cat "$T/out"; false; }
	mkdir "$MNT/t"
	echo r >>"$MNT/t/0/log"
	umount "$MNT"
	run mountpoint -q "$MNT"
	assert_failure
	wait_until '[[ -z $(tfs_pids) ]]'     # the daemon exits after umount
	# the records are there at the next mount
	tfs_start
	[[ $(cat "$MNT/t/0/log") == r ]]
}

@test "a soft open-files limit of 1024 does not cap the partitions: the daemon raises it" {
	(($(ulimit -Hn) >= 4096)) || skip "hard open-files limit $(ulimit -Hn) leaves nothing to raise"
	ulimit -Sn 1024
	tfs_start
	# 3 open files per partition (directory, log, index): 400 need 1200
	mk_topic big
	set_config big 'partitions: 400'
	[[ $(ls "$MNT/big" | grep -c '^[0-9]*$') -eq 400 ]]
	for p in 0 350 399; do echo "to $p" >>"$MNT/big/$p/log"; done
	[[ $(cat "$MNT/big/399/log") == "to 399" ]]
	soft=$(awk '/^Max open files/ { print $4 }' "/proc/$TFS_PID/limits")
	((soft > 1024))
	grep -q 'open files limit raised from 1024' "$LOG"
	# and they all open again after a restart
	tfs_stop
	tfs_start
	[[ $(cat "$MNT/big/350/log") == "to 350" ]]
	tfs_stop
}

@test "a dead mount left by a killed daemon: the next start says how to clear it" {
	tfs_start
	kill -9 "$TFS_PID"
	wait "$TFS_PID" 2>/dev/null || true
	TFS_PID=
	run ls "$MNT"
	assert_failure
	run --separate-stderr timeout 10 "$TOPICFS" -f --data "$DATA" "$MNT"
	assert_failure
	[[ $stderr == *"dead mount"*"fusermount3 -u $MNT"* ]]
	fusermount3 -u "$MNT"
	tfs_start
	mkdir "$MNT/again"
}

@test "mounting again right after fusermount3 -u works: the new daemon waits for the old one's shutdown" {
	# fusermount3 returns once the kernel let go; the old daemon is still
	# syncing its partitions and holds DATA/lock. Nothing here waits for it.
	for i in 1 2 3 4 5 6; do
		"$TOPICFS" --data "$DATA" "$MNT" >"$T/out" 2>&1 3>&- || { cat "$T/out"; false; }
		mkdir -p "$MNT/r"
		echo "round $i" >>"$MNT/r/0/log"
		fusermount3 -u "$MNT"
	done
	"$TOPICFS" --data "$DATA" "$MNT" >"$T/out" 2>&1 3>&-
	diff <(seq 1 6 | sed 's/^/round /') "$MNT/r/0/log"
	# a second daemon on a data directory in use is still refused
	run --separate-stderr timeout 10 "$TOPICFS" -f --data "$DATA" "$T/other"
	assert_failure
	[[ $status -ne 124 ]]
	[[ $stderr == *"in use by another topicfs daemon"* ]]
	grep -q '^running [0-9]' "$DATA/lock"
	fusermount3 -u "$MNT"
}

@test "--data=DIR and --config=FILE work like --data DIR and -c FILE" {
	printf 'node:\n  id: 1\ndefaults:\n  partitions: 2\n' >"$T/node.yaml"
	cd "$T"
	tfs_start_raw --data="$DATA" --config="$T/node.yaml"
	[[ -f $DATA/metadata ]]
	[[ ! -e "$T/=$DATA" && ! -e "$T/=" ]]
	mkdir "$MNT/t"
	[[ $(cfg_value t partitions) == 2 ]]
}

@test "-o fsname=NAME sets the mount table's source; without it the source is topicfs" {
	tfs_start -o fsname=orders-node
	[[ $(findmnt -n -o SOURCE,FSTYPE "$MNT") == "orders-node fuse.topicfs" ]]
	tfs_stop
	tfs_start
	[[ $(findmnt -n -o SOURCE,FSTYPE "$MNT") == "topicfs fuse.topicfs" ]]
}

@test "a relative mount point: the daemon (which changes to / in the background) unmounts its own mount on SIGTERM" {
	# a name that does not exist at / (where the relative path would point)
	local rel=tfs-rel-$$-$RANDOM
	[[ ! -e /$rel ]]
	mkdir "$T/$rel"
	(cd "$T" && "$TOPICFS" --data "$DATA" "$rel" >"$T/out" 2>&1 3>&-) || { cat "$T/out"; false; }
	mountpoint -q "$T/$rel"
	grep -q "mounted $T/$rel " "$DATA/topicfs.log"
	local pid
	pid=$(awk '{ print $2 }' "$DATA/lock")
	kill -TERM "$pid"
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	! kill -0 "$pid" 2>/dev/null
	# unmounted cleanly: not mounted, and not a dead mount either
	! mountpoint -q "$T/$rel"
	run stat "$T/$rel"
	assert_success
}

@test "an unknown -o option is refused before the data directory is touched, also one in use" {
	run "$TOPICFS" -f -o bogus_option --data "$T/never" "$MNT"
	assert_failure
	assert_output --partial "bogus_option"
	[[ ! -e $T/never ]]
	tfs_start
	run "$TOPICFS" -f -o bogus_option --data "$DATA" "$T"
	assert_failure
	assert_output --partial "bogus_option"
	refute_output --partial "in use"
}
