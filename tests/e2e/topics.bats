#!/usr/bin/env bats
# topics.bats - mkdir/rmdir of topics, their tree and their names
# (INTERFACE.md section 2).

load helper

@test "mkdir creates a topic with 0/log, 0/state, .config and groups/" {
	tfs_start
	mkdir "$MNT/orders"
	[[ -d $MNT/orders/0 ]]
	[[ -f $MNT/orders/0/log ]]
	[[ -f $MNT/orders/0/state ]]
	[[ -f $MNT/orders/.config ]]
	[[ -d $MNT/orders/groups ]]
	# one partition by default: no 1/
	[[ ! -e $MNT/orders/1 ]]
	# a new partition is empty
	[[ $(stat -c %s "$MNT/orders/0/log") == 0 ]]
}

@test "ls lists the topics, and a topic lists its partitions, groups and .config" {
	tfs_start
	mkdir "$MNT/alpha" "$MNT/beta" "$MNT/gamma"
	run ls "$MNT"
	assert_success
	assert_output $'alpha\nbeta\ngamma'
	run ls -A "$MNT/beta"
	assert_success
	assert_line .config
	assert_line 0
	assert_line groups
	run ls "$MNT/beta/0"
	assert_output $'log\nstate'
}

@test "mkdir of an existing topic fails with EEXIST" {
	tfs_start
	mkdir "$MNT/t"
	echo keep >>"$MNT/t/0/log"
	run mkdir "$MNT/t"
	assert_failure
	assert_output --partial "File exists"
	# and the existing topic is untouched
	[[ $(cat "$MNT/t/0/log") == keep ]]
}

@test "mkdir with a name outside [A-Za-z0-9._-] or starting with . fails with EINVAL" {
	tfs_start
	local name
	for name in .hidden 'a b' 'a*b' 'ä' 'tab	x' 'q?' 'semi;colon' '..x'; do
		run mkdir "$MNT/$name"
		[[ $status -ne 0 ]] || { echo "mkdir '$name' succeeded"; false; }
		[[ $output == *"Invalid argument"* ]] || { echo "mkdir '$name': $output"; false; }
	done
	# nothing was created
	[[ -z $(ls -A "$MNT" | grep -vx .cluster) ]]
}

@test "topic names of 249 bytes are accepted and 250 bytes are EINVAL" {
	tfs_start
	local n249 n250
	n249=$(printf 'a%.0s' $(seq 249))
	n250=$(printf 'b%.0s' $(seq 250))
	mkdir "$MNT/$n249"
	[[ -f $MNT/$n249/0/log ]]
	run mkdir "$MNT/$n250"
	assert_failure
	assert_output --partial "Invalid argument"
	[[ ! -e $MNT/$n250 ]]
}

@test "names with every allowed character class are accepted" {
	tfs_start
	mkdir "$MNT/Az09._-x"
	echo r >>"$MNT/Az09._-x/0/log"
	[[ $(cat "$MNT/Az09._-x/0/log") == r ]]
}

@test "rmdir deletes a topic although it lists control files, and its data" {
	tfs_start
	mkdir "$MNT/doomed" "$MNT/kept"
	seq 1 100 >>"$MNT/doomed/0/log"
	echo k >>"$MNT/kept/0/log"
	[[ -n $(find "$DATA" -name doomed) ]]
	rmdir "$MNT/doomed"
	[[ ! -e $MNT/doomed ]]
	run ls "$MNT"
	assert_output kept
	# the data directory no longer holds anything of it
	wait_until '[[ -z $(find "$DATA" -name doomed) ]]'
	# the other topic is unaffected
	[[ $(cat "$MNT/kept/0/log") == k ]]
}

@test "rmdir then mkdir of the same name starts an empty log at offset 0" {
	tfs_start
	mkdir "$MNT/t"
	seq 1 10 >>"$MNT/t/0/log"
	rmdir "$MNT/t"
	mkdir "$MNT/t"
	[[ $(stat -c %s "$MNT/t/0/log") == 0 ]]
	[[ -z $(cat "$MNT/t/0/log") ]]
	[[ $(state_value t 0 end_offset) == 0 ]]
	echo new >>"$MNT/t/0/log"
	[[ $(cat "$MNT/t/0/log") == new ]]
	[[ $(state_value t 0 end_offset) == 1 ]]
}

@test "a deleted topic stays deleted after a restart" {
	tfs_start
	mkdir "$MNT/gone" "$MNT/here"
	echo x >>"$MNT/gone/0/log"
	rmdir "$MNT/gone"
	tfs_stop
	tfs_start
	run ls "$MNT"
	assert_output here
}
