#!/usr/bin/env bats
# groups.bats - consumer groups with ordinary tools: groups/<g>/cursor,
# pending and offsets; the commit rule, work sharing, rebalancing, waiting
# reads, offset resets, restarts, group mkdir/rmdir, lag metrics
# (INTERFACE.md sections 6 and 7).

load helper

setup() {
	tfs_setup
	tfs_start
	mkdir "$MNT/t"
	G=$MNT/t/groups
}

# ---- helpers for this file --------------------------------------------------

# listed NAME: NAME is listed by ls of topic t's groups directory.
listed() {
	ls "$G" | grep -qxF -- "$1"
}

# produce P FIRST LAST: append records "p<P>-<i>" for i in FIRST..LAST to
# partition P of topic t (one write per 4 KiB block of lines).
produce() {
	seq "$2" "$3" | sed "s/^/p$1-/" >>"$MNT/t/$1/log"
}

# partitions N: grow topic t to N partitions.
partitions() {
	set_config t "partitions: $1"
	[[ -d $MNT/t/$(($1 - 1)) ]]
}

# committed GROUP P: the committed offset of partition P in groups/GROUP/offsets.
committed() {
	awk -F '\t' -v p="$2" '$1 == p { print $2 }' "$G/$1/offsets"
}

# wait_open PID FILE: wait until process PID holds FILE open (it has joined
# the group if FILE is a cursor: open returns after the member joined).
wait_open() {
	wait_until "ls -l /proc/$1/fd 2>/dev/null | grep -qF -- ' -> $2'"
}

# wait_lines N FILE...: wait until the FILEs hold N lines together.
wait_lines() {
	local n=$1
	shift
	wait_until "[[ \$(cat $* 2>/dev/null | wc -l) -ge $n ]]"
}

# line_reader CURSOR OUT: a bash `while read -r` member in the background,
# printing every record to OUT; its pid goes to READER (and to teardown).
line_reader() {
	(while IFS= read -r line; do printf '%s\n' "$line"; done <"$1" >"$2") 3>&- &
	READER=$!
	bg_track "$READER"
	wait_open "$READER" "$1"
}

# stop_reader PID: SIGTERM a reader that is blocked in read on a caught-up
# cursor (that read committed everything before it) and reap it.
stop_reader() {
	kill -TERM "$1"
	wait "$1" 2>/dev/null || true
}

# assert_exactly_once EXPECTED FILE...: the records in FILEs are exactly the
# lines of EXPECTED, each once, and each partition's records in offset order
# within every file.
assert_exactly_once() {
	local want=$1 f
	shift
	diff <(sort "$want") <(cat "$@" | sort)
	for f in "$@"; do
		python3 - "$f" <<-'EOF'
			import sys
			last = {}
			for line in open(sys.argv[1]):
			    p, i = line.strip().split("-")
			    assert int(i) > last.get(p, 0), "%s: %s after %s-%d" % (sys.argv[1], line.strip(), p, last[p])
			    last[p] = int(i)
		EOF
	done
}

# ---- exactly what the tool uses is consumed ---------------------------------

@test "head -n 3 cursor twice gives records 1-3, then 4-6" {
	produce 0 1 10
	run timeout 10 head -n 3 "$G/g/cursor"
	assert_success
	assert_output $'p0-1\np0-2\np0-3'
	run timeout 10 head -n 3 "$G/g/cursor"
	assert_success
	assert_output $'p0-4\np0-5\np0-6'
	[[ $(committed g 0) == 6 ]]
}

@test "a consumer that runs another program (its cursor closed on exec) goes on: nothing hangs" {
	produce 0 1 5
	# Python opens files close-on-exec: os.system()'s child closes its copy
	# of the cursor inside execve(), and the daemon answers that close
	(timeout 30 python3 -c '
import os, sys
f = open(sys.argv[1])
print(f.readline().strip())
os.system("true")
print("returned")
f.close()' "$G/g/pending" >"$T/out" 2>&1) 3>&- &
	local pid=$!
	if ! wait_secs_pid 20 "$pid"; then
		# a deadlocked FUSE connection would hang every ps on the machine:
		# abort it before failing
		local dev
		dev=$(awk -v m="$MNT" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo)
		mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections
		echo 1 >"/sys/fs/fuse/connections/$dev/abort"
		echo "the consumer hung at exec"
		false
	fi
	[[ $(paste -sd ' ' "$T/out") == 'p0-1 returned' ]] || { cat "$T/out"; false; }
	[[ $(head -n 1 "$G/g/pending") == p0-2 ]]
}

# wait_secs_pid SECS PID: whether PID exits within SECS.
wait_secs_pid() {
	local k
	for ((k = 0; k < $1 * 10; k++)); do
		kill -0 "$2" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

@test "a consumer that runs a child process and then dies from a signal gets its record again" {
	produce 0 1 3
	# the children inherit the cursor and exit normally: their closes are
	# not the consumer's and commit nothing
	# (mount-examples/consumer-worker.sh's loop)
	run bash -c 'while read -r rec; do echo "got $rec"; x=$(date); /bin/true; kill -TERM $$; done <"$1"' _ "$G/g/cursor"
	assert_output "got p0-1"
	[[ $(timeout 10 head -n 1 "$G/g/pending") == p0-1 ]]
	# and one that exits normally after its children commits what it read
	run bash -c '{ read -r rec; echo "got $rec"; x=$(date); } <"$1"' _ "$G/g/cursor"
	assert_output "got p0-2"
	[[ $(timeout 10 head -n 1 "$G/g/pending") == p0-3 ]]
}

@test "{ read a; read b; } < cursor consumes exactly 2 records" {
	produce 0 1 10
	{ read -r a; read -r b; } <"$G/g/cursor"
	[[ $a == p0-1 && $b == p0-2 ]]
	[[ $(committed g 0) == 2 ]]
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-3
}

@test "gawk 'NR==2{exit}' cursor consumes exactly 2 records" {
	produce 0 1 10
	run timeout 10 gawk '{ print } NR == 2 { exit }' "$G/g/cursor"
	assert_success
	assert_output $'p0-1\np0-2'
	[[ $(committed g 0) == 2 ]]
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-3
}

@test "a Python for-line loop that breaks after k lines consumes exactly k" {
	produce 0 1 10
	run timeout 10 python3 - "$G/g/cursor" <<-'EOF'
		import sys
		with open(sys.argv[1]) as f:
		    for n, line in enumerate(f, 1):
		        print(line, end="")
		        if n == 4:
		            break
	EOF
	assert_success
	assert_output $'p0-1\np0-2\np0-3\np0-4'
	[[ $(committed g 0) == 4 ]]
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-5
}

@test "sed -n '1{p;q}' cursor consumes exactly 1 record" {
	produce 0 1 10
	run timeout 10 sed -n '1{p;q}' "$G/g/cursor"
	assert_success
	assert_output p0-1
	[[ $(committed g 0) == 1 ]]
	run timeout 10 sed -n '1{p;q}' "$G/g/cursor"
	assert_output p0-2
}

# ---- pending and independent groups -----------------------------------------

@test "cat pending drains every record and exits 0; a second cat prints nothing" {
	partitions 3
	for p in 0 1 2; do produce $p 1 20; done
	run timeout 10 cat "$G/g/pending"
	assert_success
	all_records t >"$T/want"
	echo "$output" >"$T/got"
	assert_exactly_once "$T/want" "$T/got"
	run timeout 10 cat "$G/g/pending"
	assert_success
	assert_output ""
}

@test "two groups are independent: each sees every record" {
	partitions 2
	produce 0 1 30
	produce 1 1 30
	all_records t >"$T/want"
	timeout 10 head -n 5 "$G/a/cursor" >"$T/a1"
	timeout 10 cat "$G/b/pending" >"$T/b"
	timeout 10 cat "$G/a/pending" >"$T/a2"
	assert_exactly_once "$T/want" "$T/b"
	assert_exactly_once "$T/want" "$T/a1" "$T/a2"
}

# ---- work sharing and membership ----------------------------------------------

@test "three while-read members over 6 partitions consume 3000 records exactly once, sharing the work" {
	partitions 6
	for i in 1 2 3; do
		line_reader "$G/g/cursor" "$T/out.$i"
		R[i]=$READER
	done
	for p in 0 1 2 3 4 5; do produce $p 1 500; done
	all_records t >"$T/want"
	wait_lines 3000 "$T"/out.*
	wait_until '[[ $(cut -f4 "$G/g/offsets" | sort -u) == 0 ]]'
	for i in 1 2 3; do stop_reader "${R[i]}"; done
	assert_exactly_once "$T/want" "$T"/out.*
	# the work was shared: more than one member got records
	[[ $(for i in 1 2 3; do [[ -s $T/out.$i ]] && echo "$i"; done | wc -l) -gt 1 ]]
	# killing the blocked members re-delivered nothing
	run timeout 10 cat "$G/g/pending"
	assert_output ""
}

@test "a worker killed with SIGKILL while handling record k gets k again; nothing lost" {
	produce 0 1 10
	timeout 10 head -n 3 "$G/g/cursor" >/dev/null
	python3 - "$G/g/cursor" "$T/handled" 3>&- <<-'EOF' &
		import sys, time
		with open(sys.argv[1]) as f:
		    for line in f:
		        with open(sys.argv[2], "a") as out:
		            out.write(line)
		        time.sleep(60)   # "handling" the record: killed here
	EOF
	worker=$!
	bg_track "$worker"
	wait_lines 1 "$T/handled"
	[[ $(cat "$T/handled") == p0-4 ]]
	kill -9 "$worker"
	wait "$worker" 2>/dev/null || true
	# the next reader gets record 4 first, then the rest, in order
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-4
	run timeout 10 cat "$G/g/pending"
	assert_output "$(seq 5 10 | sed 's/^/p0-/')"
}

@test "a member that joins late takes partitions; every record is consumed exactly once" {
	partitions 6
	for p in 0 1 2 3 4 5; do produce $p 1 500; done
	all_records t >"$T/want"
	# a long-running, slow member that owns all 6 partitions at first
	python3 - "$G/g/cursor" "$T/out.1" 3>&- <<-'EOF' &
		import sys, time
		with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
		    for line in f:
		        out.write(line)
		        out.flush()
		        time.sleep(0.002)
	EOF
	first=$!
	bg_track "$first"
	wait_lines 100 "$T/out.1"
	line_reader "$G/g/cursor" "$T/out.2"
	second=$READER
	wait_lines 3000 "$T/out.1" "$T/out.2"
	wait_until '[[ $(cut -f4 "$G/g/offsets" | sort -u) == 0 ]]'
	stop_reader "$first"
	stop_reader "$second"
	assert_exactly_once "$T/want" "$T/out.1" "$T/out.2"
	[[ -s $T/out.2 ]]   # the late member got some of the work
	run timeout 10 cat "$G/g/pending"
	assert_output ""
}

# ---- waiting reads ----------------------------------------------------------

@test "timeout -s INT cat cursor waits when caught up, exits on the signal, and what it printed is committed" {
	produce 0 1 10
	timeout 10 head -n 3 "$G/g/cursor" >/dev/null
	run timeout -k 5 -s INT 2 cat "$G/g/cursor"
	[[ $status == 124 ]]   # still waiting for records when the signal came
	assert_output "$(seq 4 10 | sed 's/^/p0-/')"
	[[ $(committed g 0) == 10 ]]
	produce 0 11 13
	run timeout 10 head -n 2 "$G/g/cursor"
	assert_output $'p0-11\np0-12'
}

@test "an O_NONBLOCK read of a caught-up cursor fails with EAGAIN" {
	produce 0 1 2
	run timeout 10 python3 - "$G/g/cursor" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
		print(os.read(fd, 100).decode(), end="")
		print(os.read(fd, 100).decode(), end="")
		try:
		    os.read(fd, 100)
		    print("read returned")
		except OSError as e:
		    print(errno.errorcode[e.errno])
	EOF
	assert_success
	assert_output $'p0-1\np0-2\nEAGAIN'
}

@test "poll on a caught-up cursor is not ready, and wakes when a record is appended" {
	produce 0 1 1
	timeout 10 head -n 1 "$G/g/cursor" >/dev/null
	python3 - "$G/g/cursor" "$T/polling" >"$T/out" 2>&1 3>&- <<-'EOF' &
		import os, select, sys
		fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
		p = select.poll()
		p.register(fd, select.POLLIN)
		ev = p.poll(300)
		assert ev == [], "caught up but poll says %r" % ev
		open(sys.argv[2], "w").close()
		ev = p.poll(8000)
		assert ev and ev[0][1] & select.POLLIN, "no wake-up: %r" % ev
		print(os.read(fd, 100).decode(), end="")
	EOF
	poller=$!
	bg_track "$poller"
	wait_until '[[ -e $T/polling ]] || ! kill -0 $poller 2>/dev/null'
	produce 0 2 2
	wait "$poller" || { cat "$T/out"; false; }
	[[ $(cat "$T/out") == p0-2 ]]
}

# ---- read sizes ---------------------------------------------------------------

@test "a record longer than the read buffer continues in the next read" {
	printf 'abcdefghijklmnopqrstuvwx\nnext\n' >>"$MNT/t/0/log"
	run timeout 10 python3 - "$G/g/pending" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_RDONLY)
		while True:
		    b = os.read(fd, 10)
		    if not b:
		        break
		    print(repr(b))
	EOF
	assert_success
	assert_output "b'abcdefghij'
b'klmnopqrst'
b'uvwx\\n'
b'next\\n'"
}

@test "a read of 64 KiB or more may return many records; cat pending gets all, in order per partition" {
	partitions 2
	produce 0 1 50
	produce 1 1 50
	all_records t >"$T/want"
	python3 - "$G/g/pending" "$T/got" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_RDONLY)
		first = os.read(fd, 128 * 1024)
		assert first.count(b"\n") > 1, "one big read returned %r" % first
		assert first.endswith(b"\n"), "a big read ended inside a record"
		open(sys.argv[2], "wb").write(first)
	EOF
	timeout 10 cat "$G/g/pending" >>"$T/got"
	assert_exactly_once "$T/want" "$T/got"
}

# drain_megabyte_batches COMPRESSION: 1 MiB writes (zstd: batches of
# several frames) read back whole through one group, and through a second
# one that stops after two 128 KiB reads and goes on after its close.
drain_megabyte_batches() {
	set_config t "compression: $1"
	seq 1 70000 | sed 's/$/ a line long enough that a write of 1 MiB is a batch of many frames/' >"$T/want"
	cat "$T/want" >>"$MNT/t/0/log"
	timeout 30 cat "$G/a/pending" >"$T/got"
	cmp "$T/want" "$T/got"
	# group b: two 128 KiB reads, then close (committed), then cat the rest
	python3 - "$G/b/pending" "$T/got2" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_RDONLY)
		data = os.read(fd, 128 * 1024) + os.read(fd, 128 * 1024)
		assert data.endswith(b"\n") and data.count(b"\n") > 1000, len(data)
		os.close(fd)
		open(sys.argv[2], "wb").write(data)
	EOF
	timeout 30 cat "$G/b/pending" >>"$T/got2"
	cmp "$T/want" "$T/got2"
	run cat "$G/b/pending"
	assert_success
	assert_output ""
}

@test "cat pending of megabyte zstd batches gives every byte back; a member that stopped mid-batch resumes exactly" {
	drain_megabyte_batches zstd
}

@test "cat pending of megabyte uncompressed batches gives every byte back; a member that stopped mid-batch resumes exactly" {
	drain_megabyte_batches none
}

# ---- offsets ------------------------------------------------------------------

@test "offsets shows partition, committed, end and lag, tab-separated" {
	partitions 2
	produce 0 1 5
	produce 1 1 3
	mkdir "$G/g"
	run cat "$G/g/offsets"
	assert_output $'0\t0\t5\t5\n1\t0\t3\t3'
	timeout 10 cat "$G/g/pending" >/dev/null
	run cat "$G/g/offsets"
	assert_output $'0\t5\t5\t0\n1\t3\t3\t0'
}

@test "writing earliest, latest and '<partition> <offset>' to offsets moves the next read" {
	produce 0 1 10
	timeout 10 head -n 3 "$G/g/cursor" >/dev/null
	echo latest >"$G/g/offsets"
	[[ $(committed g 0) == 10 ]]
	run timeout 10 cat "$G/g/pending"
	assert_output ""
	echo earliest >"$G/g/offsets"
	[[ $(committed g 0) == 0 ]]
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-1
	echo '0 5' >"$G/g/offsets"
	[[ $(committed g 0) == 5 ]]
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-6
}

@test "a member holding the cursor open sees a reset on its next read" {
	produce 0 1 10
	exec {fd}<"$G/g/cursor"
	read -r -u "$fd" a
	[[ $a == p0-1 ]]
	echo '0 7' >"$G/g/offsets"
	read -r -u "$fd" b
	exec {fd}<&-
	[[ $b == p0-8 ]]
}

@test "writing @<RFC 3339 time> to offsets moves to the first record at or after it" {
	produce 0 1 5
	sleep 1.1
	when=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	produce 0 6 10
	timeout 10 cat "$G/g/pending" >/dev/null
	[[ $(committed g 0) == 10 ]]
	echo "@$when" >"$G/g/offsets"
	[[ $(committed g 0) == 5 ]]
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-6
	# RFC 3339 (5.6) allows t and z in lower case too
	echo latest >"$G/g/offsets"
	echo "@${when,,}" >"$G/g/offsets"
	[[ $(committed g 0) == 5 ]]
}

@test "a bad line written to offsets fails with EINVAL and changes nothing" {
	partitions 2
	produce 0 1 10
	produce 1 1 10
	timeout 10 cat "$G/g/pending" >/dev/null
	before=$(cat "$G/g/offsets")
	for bad in bogus '0 x' '9 1' '@yesterday' '1 5 junk' '0 1 2' '0 latest 3' '0 1 2 3 4'; do
		run bash -c 'printf "%s\n" "$1" >"$2"' _ "$bad" "$G/g/offsets"
		assert_failure
		assert_output --partial "Invalid argument"
		[[ $(cat "$G/g/offsets") == "$before" ]] || { echo "changed by: $bad"; false; }
		# without the final newline it fails at write() as well
		run bash -c 'printf "%s" "$1" >"$2"' _ "$bad" "$G/g/offsets"
		assert_failure
		assert_output --partial "Invalid argument"
		[[ $(cat "$G/g/offsets") == "$before" ]] || { echo "changed by: $bad (no newline)"; false; }
	done
	# a row as offsets shows it is taken as '<partition> <committed>'
	printf '1\t4\t10\t6\n' >"$G/g/offsets"
	[[ $(sed -n 2p "$G/g/offsets") == $'1\t4\t10\t6' ]]
	# a good line without a newline is applied at close
	printf '0 3' >"$G/g/offsets"
	[[ $(head -n 1 "$G/g/offsets") == $'0\t3\t10\t7' ]]
}

@test "reading offsets of a group that does not exist is ENOENT and creates nothing; a reset creates it" {
	produce 0 1 10
	run cat "$G/typo/offsets"
	assert_failure
	assert_output --partial "No such file or directory"
	[[ -z $(ls "$G") ]]
	grep -q 'refused: open t/groups/typo/offsets: no such group' "$LOG"
	# writing offsets to a new group sets its position before any member
	echo latest >"$G/fresh/offsets"
	[[ $(ls "$G") == fresh ]]
	run cat "$G/fresh/offsets"
	assert_output $'0\t10\t10\t0'
}

@test "a group name against the rules is EINVAL on every path, with a log line" {
	for name in .hidden 'a b' "$(printf 'n%.0s' $(seq 250))"; do
		run cat "$G/$name/pending"
		assert_failure
		assert_output --partial "Invalid argument"
		run cat "$G/$name/offsets"
		assert_output --partial "Invalid argument"
		run mkdir "$G/$name"
		assert_output --partial "Invalid argument"
	done
	grep -q "refused: t/groups/.hidden: not a group name" "$LOG"
	[[ -z $(ls "$G") ]]
}

@test "a write of a good line followed by a bad one is refused whole" {
	produce 0 1 10
	timeout 10 cat "$G/g/pending" >/dev/null
	run bash -c 'printf "0 2\nbogus\n" >"$1"' _ "$G/g/offsets"
	assert_failure
	assert_output --partial "Invalid argument"
	run cat "$G/g/offsets"
	assert_output $'0\t10\t10\t0'
}

# ---- durability of offsets -------------------------------------------------------

@test "a clean restart keeps committed offsets" {
	partitions 2
	produce 0 1 10
	produce 1 1 10
	all_records t >"$T/want"
	timeout 10 head -n 7 "$G/g/cursor" >"$T/before"
	before=$(cat "$G/g/offsets")
	tfs_stop
	tfs_start
	[[ $(cat "$G/g/offsets") == "$before" ]]
	timeout 10 cat "$G/g/pending" >"$T/after"
	assert_exactly_once "$T/want" "$T/before" "$T/after"
}

@test "kill -9 of the daemon never skips a record: the next read is at or before the committed position" {
	python3 - "$MNT/t/0/log" <<-'EOF'
		import os, sys
		with open(sys.argv[1], "a") as f:
		    f.write("".join("p0-%d\n" % i for i in range(1, 21)))
		    f.flush()
		    os.fsync(f.fileno())
	EOF
	timeout 10 head -n 6 "$G/g/cursor" >/dev/null
	[[ $(committed g 0) == 6 ]]
	tfs_kill9
	tfs_start
	c=$(committed g 0)
	[[ $c -le 6 ]]
	run timeout 10 cat "$G/g/pending"
	assert_output "$(seq $((c + 1)) 20 | sed 's/^/p0-/')"
}

@test "new groups start at the latest record when the node config says groups.start: latest" {
	printf 'groups:\n  start: latest\n' >"$T/node.yaml"
	tfs_stop
	tfs_start -c "$T/node.yaml"
	produce 0 1 5
	run timeout 10 cat "$G/late/pending"
	assert_success
	assert_output ""
	produce 0 6 7
	run timeout 10 cat "$G/late/pending"
	assert_output $'p0-6\np0-7'
}

# ---- group directories -----------------------------------------------------------

@test "mkdir creates a group; again is EEXIST; a bad name is EINVAL; rmdir deletes it" {
	mkdir "$G/g1"
	listed g1
	run mkdir "$G/g1"
	assert_failure
	assert_output --partial "File exists"
	for bad in .hidden 'a b' 'a:b' "$(printf 'n%.0s' $(seq 250))"; do
		run mkdir "$G/$bad"
		assert_failure
		assert_output --partial "Invalid argument"
	done
	rmdir "$G/g1"
	run listed g1
	assert_failure
	[[ ! -e $G/g1 ]]
}

@test "rmdir of a group with an open cursor fails with EBUSY; after close it works" {
	produce 0 1 3
	exec {fd}<"$G/g/cursor"
	local mark
	mark=$(wc -l <"$LOG")
	run rmdir "$G/g"
	assert_failure
	assert_output --partial "Device or resource busy"
	# one log line for the refusal
	[[ $(tail -n +$((mark + 1)) "$LOG" | grep -c 'groups/g') == 1 ]] || { tail -n 5 "$LOG"; false; }
	exec {fd}<&-
	rmdir "$G/g"
	run listed g
	assert_failure
}

@test "rmdir of the topic: a cursor waiting for records gets ENOENT, and poll on one wakes" {
	produce 0 1 1
	timeout 10 head -n 1 "$G/a/cursor" >/dev/null
	timeout 10 head -n 1 "$G/b/cursor" >/dev/null
	# a blocked read, and a poll (python) that is not ready yet
	(rc=0; timeout 30 cat "$G/a/cursor" 2>"$T/cat.err" || rc=$?; echo $rc >"$T/cat.rc") 3>&- &
	bg_track $!
	python3 - "$G/b/cursor" "$T/polling" >"$T/out" 2>&1 3>&- <<-'EOF' &
		import errno, os, select, sys
		fd = os.open(sys.argv[1], os.O_RDONLY)
		p = select.poll()
		p.register(fd, select.POLLIN)
		assert p.poll(300) == [], "caught up but ready"
		open(sys.argv[2], "w").close()
		ev = p.poll(20000)
		assert ev and ev[0][1] & select.POLLIN, "no wake-up: %r" % ev
		try:
		    os.read(fd, 4096)
		    print("read succeeded")
		except OSError as e:
		    print(errno.errorcode[e.errno])
	EOF
	local poller=$!
	bg_track "$poller"
	wait_until '[[ -e $T/polling ]]'
	sleep 0.3 # the cat is waiting in its read by now
	rmdir "$MNT/t"
	wait_until '[[ -s $T/cat.rc ]]'
	[[ $(cat "$T/cat.rc") != 124 ]] || { echo "cat still waited 30 s after the rmdir"; false; }
	grep -q "No such file or directory" "$T/cat.err"
	wait "$poller" || { cat "$T/out"; false; }
	[[ $(cat "$T/out") == ENOENT ]]
	grep -q 'refused: read t/groups/a/cursor: the topic was deleted' "$LOG"
}

@test "a deleted group starts again from the earliest record when reused" {
	produce 0 1 5
	timeout 10 cat "$G/g/pending" >/dev/null
	rmdir "$G/g"
	run timeout 10 head -n 1 "$G/g/cursor"
	assert_output p0-1
}

@test "opening the cursor of a new group creates it; ls and stat of it do not" {
	run ls "$G/probe"
	assert_failure
	run stat "$G/probe"
	assert_failure
	run stat "$G/probe/cursor"
	assert_failure
	run listed probe
	assert_failure
	exec {fd}<"$G/new/cursor"
	exec {fd}<&-
	listed new
	run listed probe
	assert_failure
}

# ---- metrics -------------------------------------------------------------------

@test ".cluster/metrics has topicfs_group_lag per group and partition" {
	partitions 2
	produce 0 1 10
	produce 1 1 4
	mkdir "$G/g" "$G/idle"
	echo '0 3' >"$G/g/offsets"
	echo '1 4' >"$G/g/offsets"
	run grep '^topicfs_group_lag{' "$MNT/.cluster/metrics"
	assert_line 'topicfs_group_lag{topic="t",group="g",partition="0"} 7'
	assert_line 'topicfs_group_lag{topic="t",group="g",partition="1"} 0'
	assert_line 'topicfs_group_lag{topic="t",group="idle",partition="0"} 10'
	assert_line 'topicfs_group_lag{topic="t",group="idle",partition="1"} 4'
}
