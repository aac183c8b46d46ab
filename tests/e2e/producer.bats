#!/usr/bin/env bats
# producer.bats - producer files (MOUNT/<topic>/<any other name>): produce
# through the partitioner, keyed routing, rotation tools (INTERFACE.md 3, 4).

load helper

setup() {
	tfs_setup
	tfs_start
	mkdir "$MNT/t"
}

@test "echo > topic/app.log produces a record to the topic" {
	echo "first record" >"$MNT/t/app.log"
	run cat "$MNT/t/0/log"
	assert_success
	assert_output "first record"
}

@test "cp of a file into the topic produces each of its lines, in order" {
	seq 1 2000 | sed 's/^/copied line /' >"$T/src"
	cp "$T/src" "$MNT/t/copied"
	cmp "$T/src" "$MNT/t/0/log"
}

@test "a program holding a producer file open produces each flushed line at once" {
	python3 - "$MNT/t/app.log" "$MNT/t/0/log" <<-'EOF'
		import sys, time
		def count():
		    with open(sys.argv[2], "rb") as f:
		        return f.read().count(b"\n")
		with open(sys.argv[1], "a") as f:
		    for i in range(1, 21):
		        f.write("event %d\n" % i)
		        f.flush()
		        # visible while the file is still open (bounded wait, not a timing test)
		        for _ in range(100):
		            if count() == i:
		                break
		            time.sleep(0.05)
		        assert count() == i, "after %d flushed lines the log has %d" % (i, count())
	EOF
	diff <(seq 1 20 | sed 's/^/event /') "$MNT/t/0/log"
}

@test "a producer file stays listed until rm, and rm keeps its records" {
	echo one >"$MNT/t/app.log"
	run ls "$MNT/t"
	assert_line app.log
	echo two >>"$MNT/t/app.log"
	run ls "$MNT/t"
	assert_line app.log
	rm "$MNT/t/app.log"
	run ls "$MNT/t"
	refute_line app.log
	[[ $(cat "$MNT/t/0/log") == $'one\ntwo' ]]
	# the name can be created again
	echo three >"$MNT/t/app.log"
	[[ $(cat "$MNT/t/0/log") == $'one\ntwo\nthree' ]]
}

@test "truncate -s 0 of a producer file is accepted and changes no data" {
	printf 'a\nb\n' >"$MNT/t/app.log"
	truncate -s 0 "$MNT/t/app.log"
	[[ $(cat "$MNT/t/0/log") == $'a\nb' ]]
	echo c >>"$MNT/t/app.log"
	[[ $(cat "$MNT/t/0/log") == $'a\nb\nc' ]]
}

@test ": > producer file (O_TRUNC) is accepted and changes no data" {
	echo a >"$MNT/t/app.log"
	: >"$MNT/t/app.log"
	[[ $(cat "$MNT/t/0/log") == a ]]
	echo b >"$MNT/t/app.log"
	[[ $(cat "$MNT/t/0/log") == $'a\nb' ]]
}

@test "keyed records go to partition (murmur2(key) & 0x7fffffff) % 3" {
	set_config t 'key_separator: "\\t"\npartitions: 3'
	[[ -d $MNT/t/2 ]]
	seq 1 300 | awk '{ printf "user-%d\tvalue %d\n", $1 % 50, $1 }' >"$T/in"
	cat "$T/in" >"$MNT/t/producer"
	python3 - "$BATS_TEST_DIRNAME" "$T/in" "$MNT/t" <<-'EOF'
		import sys
		sys.path.insert(0, sys.argv[1])
		from kafka_partition import murmur2   # checks itself against Kafka's vectors
		sent = open(sys.argv[2], "rb").read().splitlines()
		got = {p: open("%s/%d/log" % (sys.argv[3], p), "rb").read().splitlines() for p in range(3)}
		for p, lines in got.items():
		    for line in lines:
		        key = line.split(b"\t", 1)[0]       # read back as key<TAB>value
		        want = (murmur2(key) & 0x7FFFFFFF) % 3
		        assert want == p, "%r on partition %d, Kafka puts it on %d" % (line, p, want)
		assert sorted(sum(got.values(), [])) == sorted(sent), "records lost or duplicated"
		assert len({p for p in got if got[p]}) > 1, "all keys on one partition"
		# per key, the order of production is kept
		for key in {l.split(b"\t")[0] for l in sent}:
		    mine = [l for l in sent if l.split(b"\t")[0] == key]
		    p = (murmur2(key) & 0x7FFFFFFF) % 3
		    assert [l for l in got[p] if l.split(b"\t")[0] == key] == mine, key
	EOF
}

@test "unkeyed records spread over partitions, none lost or duplicated" {
	set_config t 'partitions: 3'
	python3 - "$MNT/t/producer" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
		for w in range(30):            # 30 separate writes of 10 lines each
		    os.write(fd, "".join("w%d-r%d\n" % (w, r) for r in range(10)).encode())
		os.close(fd)
	EOF
	local used=0 p
	for p in 0 1 2; do
		[[ -s $MNT/t/$p/log ]] && used=$((used + 1))
	done
	[[ $used -gt 1 ]] || { echo "all records on one partition"; false; }
	diff <(for w in $(seq 0 29); do for r in $(seq 0 9); do echo "w$w-r$r"; done; done | sort) \
		<(all_records t | sort)
}

@test "the records of one write stay together on one partition" {
	set_config t 'partitions: 3'
	python3 - "$MNT/t/producer" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
		for w in range(12):
		    os.write(fd, "".join("w%d-r%d\n" % (w, r) for r in range(5)).encode())
		os.close(fd)
	EOF
	local p w
	for w in $(seq 0 11); do
		for p in 0 1 2; do
			local n
			n=$(grep -c "^w$w-r" "$MNT/t/$p/log" || true)
			[[ $n == 0 || $n == 5 ]] || { echo "write $w split: $n records on partition $p"; false; }
		done
	done
}

@test "producer file names with a compression suffix are refused with EPERM" {
	local s
	for s in gz bz2 xz zst lz4 Z GZ gzip tgz lzo 7z; do
		run bash -c 'echo x >"$1"' _ "$MNT/t/app.log.1.$s"
		[[ $status -ne 0 ]] || { echo "app.log.1.$s was accepted"; false; }
		[[ $output == *"Operation not permitted"* ]] || { echo "$s: $output"; false; }
		[[ ! -e $MNT/t/app.log.1.$s ]]
	done
	[[ $(stat -c %s "$MNT/t/0/log") == 0 ]]
}

# Rotation: 100 lines before, logrotate, 100 lines after. Whatever logrotate
# manages or is refused, the topic must hold lines 1..200 exactly once, in
# order, and nothing else; a refusal must be logged by the daemon.
rotate_with() {
	command -v logrotate >/dev/null || skip "logrotate is not installed"
	local i
	for i in $(seq 1 100); do echo "line $i" >>"$MNT/t/app.log"; done
	printf '%s {\n%s\n}\n' "$MNT/t/app.log" "$1" >"$T/lr.conf"
	run logrotate -f -s "$T/lr.state" "$T/lr.conf"
	echo "logrotate: status $status: $output"
	if [[ $status -ne 0 ]]; then
		# refused: the daemon says what it refused
		[[ $(grep -c 'app\.log' "$LOG") -gt 0 ]] || { echo "no daemon log line"; false; }
	fi
	for i in $(seq 101 200); do echo "line $i" >>"$MNT/t/app.log"; done
	# text only: no gzip or other binary bytes became records
	run env LC_ALL=C grep -c -P '[^\x20-\x7e]' "$MNT/t/0/log"
	assert_output 0
	diff <(seq 1 200 | sed 's/^/line /') "$MNT/t/0/log"
}

@test "logrotate copytruncate causes no loss, duplicates or spurious records" {
	rotate_with $'  copytruncate\n  rotate 2\n  nocompress\n  su root root'
}

@test "logrotate create + compress causes no loss, duplicates or gzip records" {
	rotate_with $'  create\n  compress\n  rotate 2\n  su root root'
}

@test "logrotate copytruncate + compress causes no loss, duplicates or gzip records" {
	rotate_with $'  copytruncate\n  compress\n  rotate 2\n  su root root'
}

@test "logrotate compress with a compressext of no known suffix: no gzip records" {
	rotate_with $'  create\n  compress\n  compressext .old\n  rotate 2\n  su root root'
}

@test "compressed data written into a producer file is refused with EPERM, whatever its name" {
	local f
	for f in gzip xz zstd bzip2; do
		command -v "$f" >/dev/null || continue
		run bash -c '$1 -c <<<"a line" >"$2"' _ "$f" "$MNT/t/archive.$f.bin"
		[[ $status -ne 0 ]] || { echo "$f data was accepted"; false; }
		[[ $output == *"Operation not permitted"* ]] || { echo "$f: $output"; false; }
		grep -q "refused: write t/archive.$f.bin: $f data" "$LOG" || { echo "$f: no log line"; false; }
	done
	[[ $(cat "$MNT"/t/*/log | wc -c) == 0 ]]
	# text that merely looks like a magic number's start is produced
	printf 'BZh9 is not bzip2\n' >>"$MNT/t/app.log"
	[[ $(cat "$MNT"/t/*/log) == 'BZh9 is not bzip2' ]]
}

@test "an open producer file whose name is removed still answers fstat, fchmod and ftruncate, and writes on" {
	run python3 - "$MNT/t" <<-'EOF'
		import os, sys
		t = sys.argv[1]
		fd = os.open(t + "/b.log", os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
		os.write(fd, b"one\n")
		os.unlink(t + "/b.log")
		assert os.fstat(fd).st_nlink == 0
		os.ftruncate(fd, 0)
		os.fchmod(fd, 0o600)
		assert os.fstat(fd).st_mode & 0o777 == 0o600
		os.write(fd, b"two\n")
		os.close(fd)
		assert not os.path.exists(t + "/b.log")
		print("ok")
	EOF
	assert_success
	assert_output ok
	[[ $(cat "$MNT"/t/*/log | sort | paste -sd ' ') == 'one two' ]]
}
