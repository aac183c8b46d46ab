#!/usr/bin/env bats
# errors.bats - refused operations: specific errno, one daemon log line, no
# damage; a full disk and recovery (INTERFACE.md section 10).

load helper

# lines of $LOG added since mark_log was called
mark_log() { LOG_MARK=$(wc -l <"$LOG"); }
new_log() { tail -n +$((LOG_MARK + 1)) "$LOG"; }

# small_disk: start the daemon with its data on a 16 MiB tmpfs at $T/small
# (skips the test where tmpfs cannot be mounted).
small_disk() {
	mkdir "$T/small"
	mount -t tmpfs -o size=16m tmpfs "$T/small" || skip "cannot mount tmpfs here"
	DATA=$T/small/data
	mkdir "$DATA"
	tfs_start
}

# fill_disk [KEEP]: fill the tmpfs with $T/small/filler, then free KEEP
# (truncate's size syntax) of it again.
fill_disk() {
	dd if=/dev/zero of="$T/small/filler" bs=64k 2>/dev/null || true
	[[ -z ${1:-} ]] || truncate -s "-$1" "$T/small/filler"
}

@test "a refused mkdir is logged with the name it refused" {
	tfs_start
	mark_log
	run mkdir "$MNT/bad*name"
	assert_failure
	assert_output --partial "Invalid argument"
	wait_for grep -qF 'bad*name' "$LOG"
	[[ $(new_log | grep -cF 'bad*name') -eq 1 ]]
	new_log | grep -F 'bad*name' | grep -q mkdir
}

# refused_once CMD NEEDLE: CMD (run in $MNT) fails with an errno other than
# EIO, and exactly one new daemon log line names NEEDLE.
refused_once() {
	mark_log
	run bash -c "cd \"\$1\" && $1" _ "$MNT"
	[[ $status -ne 0 ]] || { echo "accepted: $1"; return 1; }
	[[ $output != *"Input/output error"* ]] || { echo "EIO: $1"; return 1; }
	wait_until "new_log | grep -qF -- '$2'" || { echo "no log line for: $1"; return 1; }
	local n
	n=$(new_log | grep -cF -- "$2")
	[[ $n -eq 1 ]] || { echo "$n log lines for: $1"; new_log; return 1; }
}

@test "each refused operation logs exactly one line naming its target" {
	tfs_start
	mkdir "$MNT/t" "$MNT/topic1"
	echo r >>"$MNT/t/0/log"
	refused_once 'mkdir "bad*name"' 'bad*name'
	refused_once 'rm -f t/0/log' 't/0/log'
	refused_once 'rm -f t/0/state' 't/0/state'
	refused_once 'rmdir t/0' 't/0'
	refused_once 'echo x >>.cluster/nodes' '.cluster/nodes'
	refused_once 'echo x >t/0/new' 't/0/new'
	refused_once 'echo x >t/f.gz' 't/f.gz'
	refused_once 'echo x >>t/0/state' 't/0/state'
	refused_once 'mv t/0/log t/0/log2' 't/0/log'
	refused_once 'mv topic1 topic2' 'topic1'
	refused_once 'mkdir t/0/d' 't/0/d'
	# and the daemon still serves
	[[ $(cat "$MNT/t/0/log") == r ]]
}

@test "links in a topic are refused with a specific errno and a log line" {
	tfs_start
	mkdir "$MNT/t"
	echo r >"$MNT/t/app.log"
	refused_once 'ln -s app.log t/sym' 't/sym'
	refused_once 'ln t/app.log t/hard' 't/hard'
}

@test "truncating a partition log never removes records" {
	tfs_start
	mkdir "$MNT/t"
	seq 1 5 >>"$MNT/t/0/log"
	truncate -s 0 "$MNT/t/0/log" 2>/dev/null || true
	python3 -c 'import os, sys; os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC))' "$MNT/t/0/log" 2>/dev/null || true
	diff <(seq 1 5) "$MNT/t/0/log"
	[[ $(stat -c %s "$MNT/t/0/log") == 10 ]]
}

@test "a refused .config write is logged with its reason" {
	tfs_start
	mkdir "$MNT/t"
	mark_log
	run bash -c 'echo "bogus_key: 1" >"$1"' _ "$MNT/t/.config"
	assert_failure
	wait_until 'new_log | grep -q bogus_key'
}

@test "a refused oversized record is logged" {
	tfs_start
	mkdir "$MNT/t"
	echo 'max_record_bytes: 100' >"$MNT/t/.config"
	mark_log
	run bash -c 'printf "%0500d\n" 0 >>"$1"' _ "$MNT/t/0/log"
	assert_failure
	assert_output --partial "Message too long"
	wait_until 'new_log | grep -Eqi "t/0|record|too long|EMSGSIZE"'
}

@test "writing to .cluster/nodes is refused with a permission errno" {
	tfs_start
	cp "$MNT/.cluster/nodes" "$T/before"
	run bash -c 'echo "2 127.0.0.2:7070 up follower" >>"$1"' _ "$MNT/.cluster/nodes"
	assert_failure
	assert_output --regexp 'Permission denied|Read-only file system|Operation not permitted'
	cmp "$T/before" "$MNT/.cluster/nodes"
}

@test "creating a file or directory in .cluster is refused" {
	tfs_start
	run bash -c 'echo x >"$1"' _ "$MNT/.cluster/extra"
	assert_failure
	refute_output --partial "Input/output error"
	run mkdir "$MNT/.cluster/sub"
	assert_failure
	refute_output --partial "Input/output error"
	[[ $(ls "$MNT/.cluster" | sort | tr '\n' ' ') == "metrics nodes " ]]
}

@test "rm of a partition log is refused with EPERM and keeps the records" {
	tfs_start
	mkdir "$MNT/t"
	seq 1 5 >>"$MNT/t/0/log"
	run rm -f "$MNT/t/0/log"
	assert_failure
	assert_output --partial "Operation not permitted"
	diff <(seq 1 5) "$MNT/t/0/log"
}

@test "rm of state or .config and rmdir of a partition are refused" {
	tfs_start
	mkdir "$MNT/t"
	echo r >>"$MNT/t/0/log"
	run rm -f "$MNT/t/0/state"
	assert_failure
	run rm -f "$MNT/t/.config"
	assert_failure
	run rmdir "$MNT/t/0"
	assert_failure
	refute_output --partial "Input/output error"
	[[ -f $MNT/t/0/state && -f $MNT/t/.config ]]
	[[ $(cat "$MNT/t/0/log") == r ]]
}

@test "a file cannot be created inside a partition directory" {
	tfs_start
	mkdir "$MNT/t"
	run bash -c 'echo x >"$1"' _ "$MNT/t/0/extra"
	assert_failure
	refute_output --partial "Input/output error"
	[[ ! -e $MNT/t/0/extra ]]
	[[ $(stat -c %s "$MNT/t/0/log") == 0 ]]
}

@test "a full disk fails writes with ENOSPC, loses no acknowledged record, and recovers" {
	small_disk
	mkdir "$MNT/t"
	echo $'compression: none\nsegment_bytes: 1048576' >"$MNT/t/.config"
	echo first-record >>"$MNT/t/0/log"
	# fill the file system, then leave 256 KiB free
	fill_disk 256K
	mark_log
	# write 1000-byte records until a write fails; it must be ENOSPC
	python3 - "$MNT/t/0/log" "$T/acked" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		n = 0
		try:
		    for i in range(1, 10001):
		        os.write(fd, ("full-%06d-" % i).ljust(999, "x").encode() + b"\n")
		        n = i
		    sys.exit("16 MiB written into 256 KiB of free space")
		except OSError as e:
		    print("write %d: %s" % (n + 1, e))
		    assert e.errno == errno.ENOSPC, e
		finally:
		    open(sys.argv[2], "w").write("%d\n" % n)
		try:
		    os.close(fd)
		except OSError:
		    pass
	EOF
	local acked
	acked=$(cat "$T/acked")
	[[ $acked -gt 0 ]]
	# the daemon logged the refusal
	new_log | grep -Eqi 'no space|ENOSPC'
	# free the space: producing works again (bounded wait for recovery)
	rm "$T/small/filler"
	wait_for sh -c 'echo after-full >>"$1"' _ "$MNT/t/0/log"
	echo after-2 >>"$MNT/t/0/log"
	# every acknowledged record, in order, nothing of the refused write, then
	# the new records
	{
		echo first-record
		python3 -c 'import sys
for i in range(1, int(sys.argv[1]) + 1): print(("full-%06d-" % i).ljust(999, "x"))' "$acked"
		echo after-full
		echo after-2
	} >"$T/want"
	cmp "$T/want" "$MNT/t/0/log"
}

@test "a full disk while a line is half written: the failed write keeps the partial line, and its retry makes the whole line" {
	small_disk
	mkdir "$MNT/t"
	echo $'compression: none\nsegment_bytes: 1048576' >"$MNT/t/.config"
	fill_disk 256K
	run python3 - "$MNT/t/0/log" "$T/small/filler" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		i = 0
		try:                          # fill what is left
		    while True:
		        os.write(fd, b"fill-%06d\n" % i)
		        i += 1
		except OSError as e:
		    assert e.errno == errno.ENOSPC, e
		assert os.write(fd, b"HEAD-" + b"h" * 5000) == 5005  # kept as the partial line
		try:
		    os.write(fd, b"TAIL\n")
		    sys.exit("a write on a full disk succeeded")
		except OSError as e:
		    assert e.errno == errno.ENOSPC, e
		os.unlink(sys.argv[2])        # space freed: the writer retries
		assert os.write(fd, b"TAIL\n") == 5
		os.close(fd)
		print("filled %d" % i)
	EOF
	assert_success
	run tail -n 1 "$MNT/t/0/log"
	assert_output "HEAD-$(printf 'h%.0s' $(seq 5000))TAIL"
}

@test "producer ids reserved on a full disk never repeat after a crash: a later write is never taken for a retried one" {
	small_disk
	mkdir "$MNT/t"
	echo 'compression: none' >"$MNT/t/.config"
	echo first >>"$MNT/t/0/log" # the first block of ids is saved
	tfs_kill9
	tfs_start # ids go on after the saved block: the next open needs a new one
	# a full disk, and the space reserve gone (as if an earlier save had
	# used it; housekeeping may make it again until the disk is full)
	for _ in 1 2 3; do
		rm -f "$DATA/reserve"
		dd if=/dev/zero of="$T/small/filler" bs=64k oflag=append conv=notrunc 2>/dev/null || true
		[[ -e $DATA/reserve ]] || break
	done
	mark_log
	echo old-1 >>"$MNT/t/0/log" || true
	new_log | grep -q 'producer id block not saved'
	rm "$T/small/filler"
	echo old-2 >>"$MNT/t/0/log"
	tfs_kill9
	tfs_start
	echo new >>"$MNT/t/0/log"
	run tail -n 1 "$MNT/t/0/log"
	assert_output new
}

@test "on a full disk a topic can still be removed, and the node restarts and serves every record" {
	small_disk
	mkdir "$MNT/t" "$MNT/u"
	echo 'compression: none' >"$MNT/t/.config"
	echo first >>"$MNT/t/0/log"
	fill_disk
	python3 - "$MNT/t/0/log" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		try:
		    while True:
		        os.write(fd, b"fill\n")
		except OSError as e:
		    assert e.errno == errno.ENOSPC, e
	EOF
	[[ $(stat -f -c %a "$T/small") == 0 ]] # not a block free
	# the way to free space through topicfs works on a full disk
	rmdir "$MNT/u"
	[[ ! -e $MNT/u ]]
	head -c 0 "$MNT/t/0/log"
	local n
	n=$(wc -l <"$MNT/t/0/log")
	# a clean unmount, then a start on the still full disk
	truncate -s 0 "$T/small/filler"
	fill_disk
	tfs_stop
	tfs_start
	[[ $(head -n 1 "$MNT/t/0/log") == first ]]
	[[ $(wc -l <"$MNT/t/0/log") == "$n" ]]
	[[ ! -e $MNT/u ]]
	rm "$T/small/filler"
	wait_for sh -c 'echo after >>"$1"' _ "$MNT/t/0/log"
	[[ $(tail -n 1 "$MNT/t/0/log") == after ]]
}

@test "a full disk refuses a write whose lines go to several partitions whole: its retry duplicates nothing" {
	small_disk
	mkdir "$MNT/t"
	printf 'partitions: 3\ncompression: none\nkey_separator: ":"\n' >"$MNT/t/.config"
	echo k2:first >>"$MNT/t/app.log" # key k2 goes to partition 0, k3 to 1
	[[ $(cat "$MNT/t/0/log") == k2:first ]]
	fill_disk 256K
	run python3 - "$MNT/t" "$T/small/filler" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1] + "/1/log", os.O_WRONLY | os.O_APPEND)
		try:
		    while True:
		        os.write(fd, b"fill\n")
		except OSError as e:
		    assert e.errno == errno.ENOSPC, e
		os.close(fd)
		buf = b"k2:second\nk3:" + b"B" * 8000 + b"\n"
		fd = os.open(sys.argv[1] + "/app.log", os.O_WRONLY | os.O_APPEND)
		try:
		    os.write(fd, buf)
		    sys.exit("a write on a full disk succeeded")
		except OSError as e:
		    assert e.errno == errno.ENOSPC, e
		os.unlink(sys.argv[2])
		assert os.write(fd, buf) == len(buf)
		os.close(fd)
	EOF
	assert_success
	[[ $(cat "$MNT/t/0/log") == $'k2:first\nk2:second' ]]
	[[ $(tail -n 1 "$MNT/t/1/log") == "k3:$(printf 'B%.0s' $(seq 8000))" ]]
}
