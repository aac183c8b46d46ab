#!/usr/bin/env bats
# read.bats - reading <p>/log with ordinary tools: size, tail, follow, offsets,
# mtime, and reading after retention (INTERFACE.md section 5).

load helper

setup() {
	tfs_setup
}

# start a node and make topic t with records "rec-1".."rec-N" (N = $1)
start_with_records() {
	tfs_start "${@:2}"
	mkdir "$MNT/t"
	L=$MNT/t/0/log
	seq 1 "$1" | sed 's/^/rec-/' >>"$L"
}

@test "st_size of log equals the number of bytes cat prints" {
	start_with_records 0
	python3 "$BATS_TEST_DIRNAME/genlines.py" 20000 7 >>"$L"
	echo tail >>"$L"
	[[ $(stat -c %s "$L") -gt 20000 ]]
	[[ $(stat -c %s "$L") == $(cat "$L" | wc -c) ]]
}

@test "tail -n 3 prints the last 3 records" {
	start_with_records 10
	run tail -n 3 "$L"
	assert_success
	assert_output $'rec-8\nrec-9\nrec-10'
}

@test "reading at any byte position gives the bytes cat gives there" {
	start_with_records 0
	python3 "$BATS_TEST_DIRNAME/genlines.py" 300000 3 >"$T/in"
	cat "$T/in" >>"$L"
	python3 - "$L" "$T/in" <<-'EOF'
		import os, random, sys
		want = open(sys.argv[2], "rb").read()
		fd = os.open(sys.argv[1], os.O_RDONLY)
		rng = random.Random(1)
		for _ in range(200):
		    off = rng.randrange(len(want))
		    n = rng.randrange(1, 5000)
		    got = os.pread(fd, n, off)
		    assert got == want[off:off + n], "pread(%d, %d) differs" % (off, n)
		assert os.pread(fd, 10, len(want)) == b"", "data past st_size"
	EOF
}

@test "tail -f shows records appended after it started" {
	start_with_records 1
	tail -f "$L" >"$T/out" 2>"$T/err" 3>&- &
	bg_track $!
	wait_for grep -qx rec-1 "$T/out"
	echo later-1 >>"$L"
	wait_for grep -qx later-1 "$T/out"
	echo later-2 >>"$L"
	wait_for grep -qx later-2 "$T/out"
	[[ $(cat "$T/out") == $'rec-1\nlater-1\nlater-2' ]]
}

@test "tail -F shows records appended after it started, without truncation notices" {
	start_with_records 1
	tail -F "$L" >"$T/out" 2>"$T/err" 3>&- &
	bg_track $!
	wait_for grep -qx rec-1 "$T/out"
	for i in 1 2 3; do
		echo "later-$i" >>"$L"
		wait_for grep -qx "later-$i" "$T/out"
	done
	[[ $(cat "$T/out") == $'rec-1\nlater-1\nlater-2\nlater-3' ]]
	run grep -i truncat "$T/err"
	assert_failure
}

@test "reading never consumes: cat twice gives the same records" {
	start_with_records 50
	cp "$MNT/t/0/state" "$T/state-before"
	cat "$L" >"$T/first"
	cat "$L" >"$T/second"
	[[ $(wc -l <"$T/first") == 50 ]]
	cmp "$T/first" "$T/second"
	cmp "$T/state-before" "$MNT/t/0/state"
}

@test "mtime of log changes on every append" {
	start_with_records 1
	local m1 m2 m3
	m1=$(stat -c %Y "$L")
	sleep 1.1
	echo two >>"$L"
	m2=$(stat -c %Y "$L")
	[[ $m2 -gt $m1 ]]
	sleep 1.1
	echo three >>"$L"
	m3=$(stat -c %Y "$L")
	[[ $m3 -gt $m2 ]]
}

@test "the mtime of log is the last append's time across a restart" {
	start_with_records 1
	local m1
	m1=$(stat -c %Y "$L")
	sleep 2.1
	tfs_stop
	tfs_start
	[[ $(stat -c %Y "$L") == "$m1" ]] || { stat "$L"; false; }
}

@test "reading a log does not change its mtime" {
	start_with_records 3
	local m1
	m1=$(stat -c %.9Y "$L")
	sleep 0.2
	cat "$L" >/dev/null
	[[ $(stat -c %.9Y "$L") == "$m1" ]]
}

# retention: small segments, a byte limit and a fast retention check, so the
# oldest segments go within a second or two.
start_with_retention() {
	printf 'storage:\n  retention_check_ms: 100\n' >"$T/node.yaml"
	tfs_start -c "$T/node.yaml"
	mkdir "$MNT/t"
	set_config t 'segment_bytes: 1024\nretention_bytes: 2048\ncompression: none'
	L=$MNT/t/0/log
}

# produce "rec-0001-<padding>" .. "rec-N-..." one append (one batch) each
produce_numbered() {
	local i
	for i in $(seq 1 "$1"); do
		printf 'rec-%04d-abcdefghijklmnopqrstuvwxyz0123456789\n' "$i" >>"$L"
	done
}

@test "after retention cat starts at the oldest retained record, no NULs" {
	start_with_retention
	produce_numbered 300
	wait_until '[[ $(state_value t 0 start_offset) -gt 0 ]]'
	sleep 1    # let the retention check reach its steady state
	local start
	start=$(state_value t 0 start_offset)
	cat "$L" >"$T/out"
	# no NUL bytes, and exactly the records from the start offset to the end
	[[ $(tr -d '\0' <"$T/out" | wc -c) == $(wc -c <"$T/out") ]]
	diff <(seq $((start + 1)) 300 | xargs printf 'rec-%04d-abcdefghijklmnopqrstuvwxyz0123456789\n') "$T/out"
	# st_size still counts every byte ever produced: positions never move
	[[ $(stat -c %s "$L") == $((300 * 46)) ]]
}

@test "after retention SEEK_DATA from 0 gives the oldest retained record's position" {
	start_with_retention
	produce_numbered 300
	wait_until '[[ $(state_value t 0 start_offset) -gt 0 ]]'
	sleep 1    # let the retention check reach its steady state
	local start
	start=$(state_value t 0 start_offset)
	run python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); print(os.lseek(fd, 0, os.SEEK_DATA))' "$L"
	assert_success
	# every record is 46 bytes, so record at offset `start` begins at 46*start
	assert_output $((start * 46))
}

@test "retention under a running tail -F reports no truncation and no garbage" {
	start_with_retention
	tail -F -s 0.2 "$L" >"$T/out" 2>"$T/err" 3>&- &
	bg_track $!
	produce_numbered 300
	wait_until '[[ $(state_value t 0 start_offset) -gt 0 ]]'
	wait_for grep -q '^rec-0300-' "$T/out"
	sleep 1    # a few more polls after retention
	# tail may miss records that retention removed before it read them, but
	# what it printed are whole records in increasing order, ending at the last
	python3 - "$T/out" <<-'PY'
		import re, sys
		prev = 0
		for line in open(sys.argv[1], "rb"):
		    m = re.fullmatch(rb"rec-(\d{4})-abcdefghijklmnopqrstuvwxyz0123456789\n", line)
		    assert m, "not a record: %r" % line
		    n = int(m.group(1))
		    assert n > prev, "record %d after %d" % (n, prev)
		    prev = n
		assert prev == 300
	PY
	run grep -i truncat "$T/err"
	assert_failure
}

@test "a reader that stopped inside a record retention then removed gets its rest, never glued to the next record" {
	start_with_retention
	produce_numbered 200
	wait_until '[[ $(state_value t 0 start_offset) -gt 0 ]]'
	cat >"$T/reader.py" <<-'PY'
		import os, sys, time
		path, d = sys.argv[1:3]
		fd = os.open(path, os.O_RDONLY)
		start = os.lseek(fd, 0, os.SEEK_DATA)
		head = os.read(fd, 30)                      # inside its first record
		open(d + "/go", "w").close()
		while not os.path.exists(d + "/done"):
		    time.sleep(0.05)
		rest = b""
		while True:
		    b = os.read(fd, 200)
		    if not b:
		        break
		    rest += b
		lines = (head + rest).split(b"\n")
		assert lines[-1] == b"", lines[-1]
		bad = [l for l in lines[:-1] if len(l) != 45 or l.count(b"rec-") != 1]
		assert not bad, bad[:3]
		print(lines[0].decode(), len(lines) - 1)
	PY
	python3 "$T/reader.py" "$L" "$T" >"$T/out" 2>&1 3>&- &
	local reader=$!
	bg_track "$reader"
	wait_until '[[ -e $T/go ]]'
	local first
	first=$(state_value t 0 start_offset)
	produce_numbered 200
	# retention passes the record the reader is inside
	wait_until "[[ \$(state_value t 0 start_offset) -gt $((first + 30)) ]]"
	touch "$T/done"
	wait "$reader" || { cat "$T/out"; false; }
	cat "$T/out"
	[[ $(cat "$T/out") == "rec-$(printf %04d $((first + 1)))-"* ]]
}

@test "time retention (retention_ms) removes old segments, positions stay" {
	printf 'storage:\n  retention_check_ms: 100\n' >"$T/node.yaml"
	tfs_start -c "$T/node.yaml"
	mkdir "$MNT/t"
	set_config t 'segment_bytes: 1024\nretention_ms: 1000\ncompression: none'
	L=$MNT/t/0/log
	produce_numbered 100
	wait_until '[[ $(state_value t 0 start_offset) -gt 0 ]]'
	local start
	start=$(state_value t 0 start_offset)
	[[ $(stat -c %s "$L") == $((100 * 46)) ]]
	# what is left is a suffix of what was produced, from a whole record
	cat "$L" >"$T/out"
	[[ $(head -c 4 "$T/out") == rec- || ! -s $T/out ]]
	diff <(seq 1 100 | xargs printf 'rec-%04d-abcdefghijklmnopqrstuvwxyz0123456789\n' | tail -n "$(wc -l <"$T/out")") "$T/out"
}

@test "compaction keeps the latest value of each key, and positions stay" {
	printf 'storage:\n  retention_check_ms: 100\n' >"$T/node.yaml"
	tfs_start -c "$T/node.yaml"
	mkdir "$MNT/t"
	set_config t 'cleanup: compact\nkey_separator: "\\t"\nsegment_bytes: 1024\ncompression: none'
	L=$MNT/t/0/log
	local round k i
	for round in $(seq 0 9); do
		for k in $(seq -w 0 19); do printf 'k%s\tv%s\n' "$k" "$round"; done >>"$L"
	done
	printf 'k00\t\n' >>"$L"         # a tombstone for k00
	# unique keys after them, so the updates are no longer in the active segment
	for i in $(seq 1 60); do printf 'f%03d\tfiller-value-%03d\n' "$i" "$i" >>"$L"; done
	local size
	size=$(stat -c %s "$L")
	wait_for compacted "$L"
	[[ $(stat -c %s "$L") == "$size" ]]
	# the removed records are holes: SEEK_HOLE finds the first, SEEK_DATA
	# from inside it the next record, which is the first line cat shows
	# after it (k00..k19 of round 0 are at 0..8*20: all superseded)
	run python3 - "$L" <<-'PY'
		import os, sys
		fd = os.open(sys.argv[1], os.O_RDONLY)
		size = os.fstat(fd).st_size
		hole = os.lseek(fd, 0, os.SEEK_HOLE)
		assert hole == 0, "round 0 was compacted away, yet SEEK_HOLE(0) = %d" % hole
		data = os.lseek(fd, 0, os.SEEK_DATA)
		assert 0 < data < size, data
		end = os.lseek(fd, data, os.SEEK_HOLE)
		assert data < end <= size, (data, end)
		assert os.lseek(fd, end - 1, os.SEEK_DATA) == end - 1
		os.lseek(fd, data, os.SEEK_SET)
		first = os.read(fd, 4096).split(b"\n")[0]
		with open(sys.argv[1], "rb") as f:
		    assert first == f.readline().rstrip(b"\n"), first
		try:
		    os.lseek(fd, size, os.SEEK_DATA)
		    sys.exit("SEEK_DATA at the end did not fail")
		except OSError as e:
		    assert e.errno == 6, e  # ENXIO
		print("ok")
	PY
	assert_success
	assert_output ok
}

# compacted LOG: k01..k19 appear once each with their last value v9, nothing
# of k00 but its tombstone, no NUL bytes, and the unique-key fillers intact
compacted() {
	python3 - "$1" <<-'PY'
		import sys
		data = open(sys.argv[1], "rb").read()
		assert b"\0" not in data, "NUL bytes in a compacted log"
		lines = data.decode().splitlines()
		for k in range(1, 20):
		    mine = [l for l in lines if l.startswith("k%02d\t" % k)]
		    assert mine == ["k%02d\tv9" % k], (k, mine)
		assert [l for l in lines if l.startswith("k00\t") and l != "k00\t"] == [], "k00 survived its tombstone"
		fillers = [l for l in lines if l.startswith("f")]
		assert fillers == ["f%03d\tfiller-value-%03d" % (i, i) for i in range(1, 61)], "fillers changed"
	PY
}
