#!/usr/bin/env bats
# durability.bats - records survive restarts and kill -9; segments roll;
# corrupt segments are never served (INTERFACE.md sections 1, 4 and 10).

load helper

setup() {
	tfs_setup
	tfs_start
	mkdir "$MNT/t"
	L=$MNT/t/0/log
}

@test "a clean restart keeps every record of every partition" {
	echo 'partitions: 2' >"$MNT/t/.config"
	python3 "$BATS_TEST_DIRNAME/genlines.py" 200000 5 >"$T/p0"
	cat "$T/p0" >>"$L"
	for i in $(seq 1 30); do echo "p1 $i" >>"$MNT/t/1/log"; done
	tfs_stop
	tfs_start
	cmp "$T/p0" "$L"
	diff <(seq 1 30 | sed 's/^/p1 /') "$MNT/t/1/log"
}

@test "kill -9 keeps every fsync'd record, in order, with no partial lines" {
	# a producer appends batches of 20 lines, fsyncs each, then records how
	# many lines are acknowledged; the daemon is killed while it runs
	python3 - "$L" "$T/acked" 3>&- <<-'EOF' &
		import os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		n = 0
		try:
		    for batch in range(100000):
		        os.write(fd, "".join("rec-%d\n" % (n + i + 1) for i in range(20)).encode())
		        os.fsync(fd)
		        n += 20
		        with open(sys.argv[2] + ".tmp", "w") as f:
		            f.write("%d\n" % n)
		        os.rename(sys.argv[2] + ".tmp", sys.argv[2])
		except OSError:
		    pass
	EOF
	local writer=$!
	bg_track $writer
	wait_until '[[ $(cat "$T/acked" 2>/dev/null || echo 0) -ge 400 ]]'
	tfs_kill9
	wait $writer || true
	local acked
	acked=$(cat "$T/acked")
	tfs_start
	run cat "$L"
	assert_success                      # the log is readable
	# the log is rec-1..rec-K for some K >= acked: nothing lost, nothing
	# reordered, no partial or garbage line
	local k=${#lines[@]}
	[[ $k -ge $acked ]] || { echo "acked $acked, log has $k"; false; }
	diff <(seq 1 "$k" | sed 's/^/rec-/') <(cat "$L")
	# the partition takes new records after the crash at the next offset
	echo after >>"$L"
	[[ $(tail -n 1 "$L") == after ]]
	[[ $(state_value t 0 end_offset) == $((k + 1)) ]]
}

@test "records closed before a kill -9 come back whole and in order, or not at all" {
	seq 1 1000 | sed 's/^/line-/' >>"$L"
	tfs_kill9
	tfs_start
	run cat "$L"
	assert_success
	local k=${#lines[@]}
	[[ $k -le 1000 ]]
	diff <(seq 1 "$k" | sed 's/^/line-/') <(cat "$L")
}

@test "segments roll at segment_bytes and every record stays readable" {
	echo $'segment_bytes: 4096\ncompression: none' >"$MNT/t/.config"
	local i
	for i in $(seq 1 40); do
		seq $((i * 100 - 99)) $((i * 100)) | sed 's/^/segment record /' >>"$L"
	done
	[[ $(seg_files t 0 | wc -l) -gt 1 ]] || { find "$DATA" -type f; false; }
	diff <(seq 1 4000 | sed 's/^/segment record /') "$L"
	tfs_stop
	tfs_start
	diff <(seq 1 4000 | sed 's/^/segment record /') "$L"
}

@test "a corrupt segment is never served and other topics keep working" {
	mkdir "$MNT/other"
	echo 'compression: none' >"$MNT/t/.config"
	local pad i
	pad=$(printf 'abcdefghij%.0s' $(seq 20))
	# three batches of 100 long records each
	for i in 0 1 2; do
		seq $((i * 100 + 1)) $((i * 100 + 100)) | sed "s/\$/-$pad/; s/^/r/" >>"$L"
	done
	seq 1 50 | sed 's/^/other /' >>"$MNT/other/0/log"
	tfs_stop
	local seg
	seg=$(seg_files t 0 | head -1)
	[[ -n $seg ]] || { find "$DATA" -type f; false; }
	# flip one byte in the middle of the segment (inside the second batch)
	python3 - "$seg" <<-'EOF'
		import os, sys
		with open(sys.argv[1], "r+b") as f:
		    size = os.fstat(f.fileno()).st_size
		    f.seek(size // 2)
		    b = f.read(1)
		    f.seek(size // 2)
		    f.write(bytes([b[0] ^ 0xFF]))
	EOF
	tfs_start
	# reading t either fails (EIO) or leaves the batch out, never garbage
	run --separate-stderr cat "$L"
	echo "cat status $status, ${#lines[@]} lines, stderr: $stderr"
	local bad
	bad=$(grep -Ev "^r[0-9]+-$pad\$" <<<"$output" | grep -v '^$' || true)
	[[ -z $bad ]] || { echo "served garbage: ${bad:0:200}"; false; }
	if [[ $status -eq 0 ]]; then
		[[ ${#lines[@]} -lt 300 ]] || { echo "the corrupt batch was served"; false; }
	fi
	# the daemon logged the corruption
	grep -Eqi 'crc|checksum|corrupt' "$LOG"
	# and it keeps serving the other topic
	diff <(seq 1 50 | sed 's/^/other /') "$MNT/other/0/log"
	echo more >>"$MNT/other/0/log"
	[[ $(tail -n 1 "$MNT/other/0/log") == more ]]
	mkdir "$MNT/new"
}
