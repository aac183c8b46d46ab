#!/usr/bin/env bats
# config.bats - a topic's .config: reading every key, partial updates,
# refusals with an error comment, returning to defaults, persistence
# (INTERFACE.md section 8).

load helper

setup() {
	tfs_setup
	tfs_start
	mkdir "$MNT/t"
	C=$MNT/t/.config
}

@test ".config shows every key with a value" {
	local k
	for k in partitions replication min_insync acks retention_ms retention_bytes \
		segment_bytes cleanup compression key_separator max_record_bytes; do
		grep -Eq "^$k: *[^ ]" "$C" || { echo "no $k:"; cat "$C"; false; }
	done
	[[ $(cfg_value t partitions) == 1 ]]
}

@test ".config is valid YAML" {
	python3 -c 'import yaml' 2>/dev/null || skip "python3 yaml module not installed"
	python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert d["partitions"] == 1, d' "$C"
}

@test "writing 'partitions: 3' adds partitions 1 and 2 and keeps the other keys" {
	echo 'retention_ms: 60000' >"$C"
	echo 'partitions: 3' >"$C"
	[[ $(cfg_value t partitions) == 3 ]]
	[[ $(cfg_value t retention_ms) == 60000 ]]
	local p
	for p in 0 1 2; do
		[[ -f $MNT/t/$p/log && -f $MNT/t/$p/state ]] || { echo "no partition $p"; false; }
	done
	[[ ! -e $MNT/t/3 ]]
	echo x >>"$MNT/t/2/log"
	[[ $(cat "$MNT/t/2/log") == x ]]
}

@test "shrinking partitions fails with EINVAL, an error comment, and no change" {
	echo 'partitions: 3' >"$C"
	run bash -c 'echo "partitions: 1" >"$1"' _ "$C"
	assert_failure
	assert_output --partial "Invalid argument"
	run head -1 "$C"
	assert_output --regexp '^# error: line 1: .+'
	[[ $(cfg_value t partitions) == 3 ]]
	[[ -d $MNT/t/2 ]]
}

@test "an unknown key fails the whole document with EINVAL and names its line" {
	local default
	default=$(cfg_value t retention_ms)
	run python3 - "$C" <<-'EOF'
		import os, sys
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
		try:
		    os.write(fd, b"retention_ms: 5000\nbogus_key: 1\n")    # one write()
		    sys.exit("accepted")
		except OSError as e:
		    print(e)
		os.close(fd)
	EOF
	assert_success
	assert_output --partial "Invalid argument"
	run head -1 "$C"
	assert_output --regexp '^# error: line 2: .+'
	# the valid key on line 1 was not applied either
	[[ $(cfg_value t retention_ms) == "$default" ]]
}

@test "a document refused on its second write() leaves the first one unapplied" {
	# bash's printf issues one write() per line here; the document is still
	# one document and must be refused whole
	local default
	default=$(cfg_value t retention_ms)
	run bash -c 'printf "retention_ms: 5000\nbogus_key: 1\n" >"$1"' _ "$C"
	assert_failure
	assert_output --partial "Invalid argument"
	[[ $(cfg_value t retention_ms) == "$default" ]]
}

@test "a child process exiting mid-document applies nothing of a document refused whole" {
	local default
	default=$(cfg_value t retention_ms)
	run bash -c '{ printf "retention_ms: 5000\n"; /bin/true; printf "bogus_key: 1\n"; } >"$1"' _ "$C"
	assert_failure
	[[ $(cfg_value t retention_ms) == "$default" ]]
	# and a good one is applied whole when the writer closes
	{ printf 'retention_ms: 6000\n'; /bin/true; printf 'retention_bytes: 7000\n'; } >"$C"
	[[ $(cfg_value t retention_ms) == 6000 && $(cfg_value t retention_bytes) == 7000 ]]
}

@test "a document without a final newline is checked at write(): printf and echo -n report EINVAL" {
	local default
	default=$(cfg_value t acks)
	run bash -c 'printf "acks: bogus" >"$1"' _ "$C"
	assert_failure
	assert_output --partial "Invalid argument"
	run bash -c 'echo -n "retention_ms: soon" >"$1"' _ "$C"
	assert_failure
	[[ $(cfg_value t acks) == "$default" ]]
	# a good one without a newline is applied at close
	printf 'retention_ms: 4321' >"$C"
	[[ $(cfg_value t retention_ms) == 4321 ]]
}

@test "a YAML syntax error fails with EINVAL and changes nothing" {
	cp "$C" "$T/before"
	run bash -c 'printf "partitions: [3\n" >"$1"' _ "$C"
	assert_failure
	assert_output --partial "Invalid argument"
	run head -1 "$C"
	assert_output --regexp '^# error: line [0-9]+: .+'
	diff "$T/before" <(grep -v '^# error:' "$C")
}

@test "a bad value fails with EINVAL and changes nothing" {
	cp "$C" "$T/before"
	local doc
	for doc in 'acks: sometimes' 'partitions: -1' 'segment_bytes: lots' 'cleanup: never' \
		'compression: gzip' 'max_record_bytes: 0'; do
		run bash -c 'echo "$2" >"$1"' _ "$C" "$doc"
		[[ $status -ne 0 ]] || { echo "'$doc' accepted"; false; }
		[[ $output == *"Invalid argument"* ]] || { echo "'$doc': $output"; false; }
		diff "$T/before" <(grep -v '^# error:' "$C")
	done
}

@test "key: ~ returns a key to the node default" {
	local default
	default=$(cfg_value t retention_ms)
	echo 'retention_ms: 60000' >"$C"
	[[ $(cfg_value t retention_ms) == 60000 ]]
	echo 'retention_ms: ~' >"$C"
	[[ $(cfg_value t retention_ms) == "$default" ]]
}

@test "key_separator is shown quoted and round-trips" {
	printf 'key_separator: "\\t"\n' >"$C"
	grep -qx 'key_separator: "\\t"' "$C"
	# writing back what was read is accepted and changes nothing
	grep -v '^#' "$C" >"$T/copy"
	cat "$T/copy" >"$C"
	diff "$T/copy" <(grep -v '^#' "$C")
}

@test "the settings survive a restart" {
	printf 'partitions: 3\nretention_ms: 60000\nmax_record_bytes: 500\n' >"$C"
	grep -v '^#' "$C" >"$T/before"
	tfs_stop
	tfs_start
	diff "$T/before" <(grep -v '^#' "$MNT/t/.config")
	[[ -f $MNT/t/2/log ]]
}

@test "replication above the number of nodes is refused on a single node" {
	run bash -c 'echo "replication: 3" >"$1"' _ "$C"
	assert_failure
	assert_output --partial "Invalid argument"
	[[ $(cfg_value t replication) == 1 ]]
	run head -1 "$C"
	assert_output --regexp '^# error: line 1: .+'
}

@test "min_insync above replication is refused" {
	run bash -c 'echo "min_insync: 2" >"$1"' _ "$C"
	assert_failure
	assert_output --partial "Invalid argument"
	[[ $(cfg_value t min_insync) == 1 ]]
}
