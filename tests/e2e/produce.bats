#!/usr/bin/env bats
# produce.bats - appending to <p>/log: line framing, big inputs, oversized
# records, and the state file (INTERFACE.md sections 3 and 4).

load helper

setup() {
	tfs_setup
	tfs_start
	mkdir "$MNT/t"
	L=$MNT/t/0/log
}

@test "echo >> log produces one record that cat shows" {
	echo hello >>"$L"
	run cat "$L"
	assert_success
	assert_output hello
}

@test "200 separate appends are all kept, in order" {
	for i in $(seq 1 200); do echo "message $i" >>"$L"; done
	diff <(seq 1 200 | sed 's/^/message /') "$L"
}

@test "cat of a 100 MB file into log reads back byte-identical" {
	python3 "$BATS_TEST_DIRNAME/genlines.py" 100000000 >"$T/big.txt"
	cat "$T/big.txt" >>"$L"
	[[ $(stat -c %s "$L") == $(stat -c %s "$T/big.txt") ]]
	cmp "$T/big.txt" "$L"
	[[ $(state_value t 0 end_offset) == $(wc -l <"$T/big.txt") ]]
}

@test "a partial last line is produced at close and read back with a newline" {
	printf 'a\nb' >>"$L"
	cmp <(printf 'a\nb\n') "$L"
	[[ $(state_value t 0 end_offset) == 2 ]]
}

@test "a line written in several writes on one fd is one record, invisible until complete" {
	python3 - "$L" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		os.write(fd, b"hel")
		assert os.stat(sys.argv[1]).st_size == 0, "a partial line became visible"
		os.write(fd, b"lo\n")
		os.close(fd)
	EOF
	cmp <(printf 'hello\n') "$L"
	[[ $(state_value t 0 end_offset) == 1 ]]
}

@test "a child process exiting with an inherited descriptor does not end the writer's partial line" {
	# every close(2) sends a FLUSH, also /bin/true's and sleep's exit here
	{ printf 'ab'; /bin/true; sleep 0.1; printf 'cd\n'; } >>"$L"
	{ printf 'start '; date +%Y >/dev/null; echo end; } >>"$L"
	python3 - "$L" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		os.write(fd, b"ef")
		pid = os.fork()
		if pid == 0:
		    os._exit(0)
		os.waitpid(pid, 0)
		os.write(fd, b"gh\n")
		os.close(fd)
	EOF
	cmp <(printf 'abcd\nstart end\nefgh\n') "$L"
	# the writer's own close still produces its partial line at once,
	# also when the writer is a process that exits
	/usr/bin/printf 'ext' >>"$L"
	[[ $(tail -n 1 "$L") == ext ]]
	printf 'mine' >>"$L"
	[[ $(tail -n 1 "$L") == mine ]]
	[[ $(state_value t 0 end_offset) == 5 ]]
}

@test "each open file keeps its own partial line" {
	python3 - "$L" <<-'EOF'
		import os, sys
		a = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		b = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		os.write(a, b"AA")
		os.write(b, b"BB")
		os.write(a, b"aa\n")
		os.write(b, b"bb\n")
		os.close(a)
		os.close(b)
	EOF
	cmp <(printf 'AAaa\nBBbb\n') "$L"
}

@test "one write carrying 1000 lines produces 1000 records" {
	python3 - "$L" <<-'EOF'
		import os, sys
		data = "".join("line %d\n" % i for i in range(1, 1001)).encode()
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		assert os.write(fd, data) == len(data)
		os.close(fd)
	EOF
	diff <(seq 1 1000 | sed 's/^/line /') "$L"
	[[ $(state_value t 0 end_offset) == 1000 ]]
}

@test "a line over max_record_bytes fails with EMSGSIZE and the fd goes on" {
	set_config t 'max_record_bytes: 100'
	python3 - "$L" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		os.write(fd, b"before\n")
		try:
		    os.write(fd, b"x" * 200 + b"\n")
		    sys.exit("a 200-byte line was accepted with max_record_bytes 100")
		except OSError as e:
		    assert e.errno == errno.EMSGSIZE, e
		    print(e.strerror)
		os.write(fd, b"after\n")
		os.close(fd)
	EOF
	cmp <(printf 'before\nafter\n') "$L"
}

@test "a long line spread over several writes is refused whole" {
	set_config t 'max_record_bytes: 100'
	python3 - "$L" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		failed = False
		for _ in range(5):            # 5 x 60 bytes, one line of 300
		    try:
		        os.write(fd, b"y" * 60)
		    except OSError as e:
		        assert e.errno == errno.EMSGSIZE, e
		        failed = True
		try:
		    os.write(fd, b"\n")
		except OSError as e:
		    assert e.errno == errno.EMSGSIZE, e
		    failed = True
		assert failed, "no write of a 300-byte line failed with EMSGSIZE"
		os.write(fd, b"after\n")
		os.close(fd)
	EOF
	cmp <(printf 'after\n') "$L"
}

@test "a too-long line after good lines: a short write, then EMSGSIZE; a retried write duplicates nothing" {
	set_config t 'max_record_bytes: 100'
	python3 - "$L" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		buf = b"ok1\n" + b"x" * 200 + b"\nok2\n"
		n = os.write(fd, buf)
		assert n == 4, "%d bytes taken, want the 4 of ok1" % n
		for _ in range(2):            # the rest fails, also when retried
		    try:
		        os.write(fd, buf[n:])
		        sys.exit("a write starting with a 200-byte line was accepted")
		    except OSError as e:
		        assert e.errno == errno.EMSGSIZE, e
		os.write(fd, b"ok3\n")
		os.close(fd)
	EOF
	cmp <(printf 'ok1\nok3\n') "$L"
	# Python's buffered file writes its buffer again at close after the error
	run python3 -c '
import sys
with open(sys.argv[1], "a") as f:
    f.write("ok4\n"); f.write("y" * 200 + "\n"); f.write("ok5\n")' "$L"
	assert_failure
	assert_output --partial "Message too long"
	cmp <(printf 'ok1\nok3\nok4\n') "$L"
}

@test "a too-long line inside a write() over 1 MiB: the writer gets EMSGSIZE, nothing of the line is produced" {
	# max_record_bytes is 1 MiB: the kernel splits the write into 1 MiB
	# requests and the line goes over the limit in the second one
	run python3 - "$L" <<-'EOF'
		import errno, os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		buf = b"first\n" + b"B" * 1500000 + b"\nafter\n"
		n = os.write(fd, buf)
		assert 0 < n < len(buf), "%d of %d bytes taken" % (n, len(buf))
		for _ in range(2):            # the rest, as a write-all loop sends it
		    try:
		        os.write(fd, buf[n:])
		        sys.exit("the rest of a refused line was accepted")
		    except OSError as e:
		        assert e.errno == errno.EMSGSIZE, e
		os.write(fd, b"next\n")
		os.close(fd)
		try:
		    with open(sys.argv[1], "a") as f:
		        f.write("py\n" + "C" * 1500000 + "\npy-after\n")
		    sys.exit("Python's f.write of a refused line raised nothing")
		except OSError as e:
		    assert e.errno == errno.EMSGSIZE, e
		    print(e.strerror)
	EOF
	assert_success
	assert_output --partial "Message too long"
	echo last >>"$L"
	# no record of B or C: only the lines around them
	cmp <(printf 'first\nnext\npy\nlast\n') "$L"
}

@test "cat of a file with a too-long line reports 'Message too long'" {
	set_config t 'max_record_bytes: 100'
	{ echo ok1; head -c 300 /dev/zero | tr '\0' z; echo; echo ok2; } >"$T/in"
	run bash -c 'cat "$1" >>"$2"' _ "$T/in" "$L"
	assert_failure
	assert_output --partial "Message too long"
	# nothing of the long line was produced
	run grep -c z "$L"
	assert_output 0
}

@test "state shows end_offset and high_watermark growing with appends" {
	[[ $(state_value t 0 end_offset) == 0 ]]
	[[ $(state_value t 0 high_watermark) == 0 ]]
	seq 1 3 >>"$L"
	[[ $(state_value t 0 end_offset) == 3 ]]
	[[ $(state_value t 0 high_watermark) == 3 ]]
	echo 4 >>"$L"
	[[ $(state_value t 0 end_offset) == 4 ]]
	[[ $(state_value t 0 high_watermark) == 4 ]]
	[[ $(state_value t 0 start_offset) == 0 ]]
	[[ $(state_value t 0 bytes) -gt 0 ]]
}

@test "state is YAML with every documented key" {
	local k
	for k in leader replicas isr leader_epoch start_offset end_offset high_watermark bytes; do
		grep -Eq "^$k: " "$MNT/t/0/state" || { echo "no $k:"; cat "$MNT/t/0/state"; false; }
	done
	python3 -c 'import sys, yaml' 2>/dev/null || return 0
	python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert isinstance(d, dict)' "$MNT/t/0/state"
}

@test "writing to state is refused and changes nothing" {
	echo r >>"$L"
	cp "$MNT/t/0/state" "$T/before"
	run bash -c 'echo "end_offset: 99" >>"$1"' _ "$MNT/t/0/state"
	assert_failure
	refute_output --partial "Input/output error"
	cmp "$T/before" "$MNT/t/0/state"
	[[ $(cat "$L") == r ]]
}

@test "a reader never sees part of a write: records of one write() appear together" {
	python3 - "$L" <<-'EOF'
		import os, sys, threading, time
		path, per_write, writes = sys.argv[1], 400, 60
		done = threading.Event()
		seen = []
		def reader():
		    while not done.is_set():
		        data = open(path, "rb").read()
		        assert data == b"" or data.endswith(b"\n"), "a partial record was visible"
		        n = data.count(b"\n")
		        assert n % per_write == 0, "saw %d records: part of a write" % n
		        seen.append(n)
		t = threading.Thread(target=reader)
		t.start()
		fd = os.open(path, os.O_WRONLY | os.O_APPEND)
		try:
		    for w in range(writes):
		        os.write(fd, b"".join(b"w%03d-r%03d\n" % (w, r) for r in range(per_write)))
		        time.sleep(0.01)      # give the reader time to look between writes
		finally:
		    os.close(fd)
		    done.set()
		    t.join()
		assert len(set(seen)) > 2, "the reader never overlapped the writer"
	EOF
	[[ $(wc -l <"$L") == 24000 ]]
}

@test "records are byte-transparent: every byte value but newline round-trips" {
	python3 - "$L" <<-'EOF'
		import os, sys
		line = bytes(b for b in range(256) if b != 10) + b"\n"
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		os.write(fd, line)
		os.write(fd, b"\0\0\0\n")
		os.close(fd)
		got = open(sys.argv[1], "rb").read()
		assert got == line + b"\0\0\0\n", got
	EOF
	[[ $(state_value t 0 end_offset) == 2 ]]
}

@test "empty lines are empty records" {
	printf 'a\n\n\nb\n' >>"$L"
	cmp <(printf 'a\n\n\nb\n') "$L"
	[[ $(state_value t 0 end_offset) == 4 ]]
}
