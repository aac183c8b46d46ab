#!/usr/bin/env bats
# cluster_faults.bats - network partitions (INTERFACE.md section 9: "a
# partitioned minority cannot accept writes that the majority will later
# contradict"). Three nodes, each in its own network namespace on 10.77.0.1-3
# joined by a bridge (netns.sh), started with `nsenter --net=...` so their
# FUSE mounts stay visible here. A node is cut off with nft drop rules inside
# its namespace and healed by deleting them.
#
# Needs root, ip (iproute2), nsenter, nft (nftables) and python3; skips with
# the reason when namespaces or nft are unavailable. Check the plumbing alone
# with: bash tests/e2e/netns.sh selftest

load cluster_helper

dd_append() {
	timeout 60 bash -c 'printf "%s\n" "$2" | dd of="$1" oflag=append conv=notrunc,fsync status=none' _ "$1" "$2"
}
logs_agree() {
	local t=$1 p=$2
	shift 2
	same_everywhere "md5sum <@M@/$t/$p/log" "$@"
}

@test "namespace plumbing: nodes reach each other, an nft cut isolates one, healing restores it (no topicfs)" {
	cl_use_netns 3
	netns_probe "$CL_NETNS" 1 2
	netns_probe "$CL_NETNS" 2 3
	netns_probe "$CL_NETNS" 3 1
	cut_node 1
	run netns_probe "$CL_NETNS" 1 2 1
	assert_failure
	run netns_probe "$CL_NETNS" 3 1 1
	assert_failure
	netns_probe "$CL_NETNS" 2 3
	heal_node 1
	netns_probe "$CL_NETNS" 1 2
	netns_probe "$CL_NETNS" 3 1
}

# minority_test WHICH: WHICH is "quorum-leader" or "quorum-follower": the node
# cut off is the metadata quorum's leader, or a node that is not (and leads
# some partitions).
minority_test() {
	cl_use_netns 3
	netns_probe "$CL_NETNS" 1 2 # the plumbing works before topicfs is involved
	cluster_start 3
	mkdir "${M[1]}/t"
	echo $'partitions: 6\nacks: all\nmin_insync: 2' >"${M[1]}/t/.config"
	local p i x q maj
	for p in 0 1 2 3 4 5; do
		wait_secs 15 "[[ \$(isr_of t $p 1) == '1 2 3' && \$(isr_of t $p 2) == '1 2 3' && \$(isr_of t $p 3) == '1 2 3' ]]" ||
			{ cat "${M[1]}/t/$p/state"; false; }
		dd_append "${M[2]}/t/$p/log" "base-$p"
	done
	q=$(quorum_leader 1)
	if [[ $1 == quorum-leader ]]; then
		x=$q
	else
		# a quorum follower that leads at least one partition, if there is one
		x=
		for p in 0 1 2 3 4 5; do
			i=$(leader_of t "$p" 1)
			[[ $i != "$q" ]] && { x=$i; break; }
		done
		[[ -n $x ]] || x=$(other_than "$q")
	fi
	maj=$(other_than "$x")
	local majb
	majb=$(other_than "$x" "$maj")
	local led=()
	for p in 0 1 2 3 4 5; do [[ $(leader_of t "$p" 1) == "$x" ]] && led+=("$p"); done
	echo "quorum leader $q; cutting node $x (leads partitions: ${led[*]:-none}); majority $maj $majb"
	# the majority's writer targets a partition the cut node leads (if any)
	local mp=${led[0]:-0}
	acks_writer "${M[maj]}/t/$mp/log" "$T/maj" maj
	local wmaj=$WRITER
	wait_secs 20 '[[ $(acked $T/maj) -ge 50 ]]'

	cut_node "$x"
	local k0
	k0=$(acked "$T/maj")
	echo "cut after $k0 acknowledged majority writes"
	# the minority: a writer through its mount, started after the cut, and one
	# dd per partition; nothing may be acknowledged
	acks_writer "${M[x]}/t/$mp/log" "$T/min" min
	local wmin=$WRITER
	local ddpids=()
	for p in 0 1 2 3 4 5; do
		# (bats runs with errexit: keep the failure's status, don't exit on it)
		(rc=0; dd_append "${M[x]}/t/$p/log" "minority-dd-$p" 2>"$T/dd$p.err" || rc=$?
		 echo $rc >"$T/dd$p.rc") 3>&- &
		ddpids+=($!)
		bg_track $!
	done
	# a topic made on the minority side cannot be agreed either
	run timeout 60 mkdir "${M[x]}/minority-topic"
	echo "mkdir on the minority: status $status: $output"
	[[ $status -ne 124 ]] || { echo "mkdir on the minority hung for 60 s"; false; }
	assert_failure

	# the majority: node x down, leaders elected among the two, writes go on
	wait_secs 30 "[[ \$(node_state $maj $x) == down && \$(node_state $majb $x) == down ]]" ||
		{ cat "${M[maj]}/.cluster/nodes"; false; }
	wait_secs 30 "[[ -n \$(quorum_leader $maj) && \$(quorum_leader $maj) != $x && \$(quorum_leader $majb) == \$(quorum_leader $maj) ]]" ||
		{ cat "${M[maj]}/.cluster/nodes" "${M[majb]}/.cluster/nodes"; false; }
	for p in 0 1 2 3 4 5; do
		wait_secs 30 "[[ \$(leader_of t $p $maj) != $x && \$(leader_of t $p $majb) == \$(leader_of t $p $maj) ]]" ||
			{ cat "${M[maj]}/t/$p/state"; false; }
	done
	wait_secs 30 "[[ \$(acked $T/maj) -ge $((k0 + 50)) ]]" ||
		{ echo "majority acked $(acked "$T/maj")"; tail -n 5 "$T/maj.err"; false; }
	for p in 0 1 2 3 4 5; do
		wait_secs 30 "dd_append '${M[majb]}/t/$p/log' 'majority-dd-$p' 2>/dev/null" ||
			{ dd_append "${M[majb]}/t/$p/log" "majority-dd-$p"; false; }
	done
	# the minority knows it is cut off: "unknown" for the others, not the
	# last state it heard, and still "up" for itself
	wait_secs 30 "[[ \$(node_state $x $maj) == unknown && \$(node_state $x $majb) == unknown && \$(node_state $x $x) == up ]]" ||
		{ cat "${M[x]}/.cluster/nodes"; false; }
	# the majority can change metadata (a new topic would need 3 live nodes
	# for replication 3, so a .config change stands for it)
	echo 'retention_ms: 7200000' >"${M[maj]}/t/.config"

	# every minority write has failed, with an errno, none hung, none acknowledged
	# (their outcomes are in the .rc files; wait may find them reaped already)
	wait "${ddpids[@]}" 2>/dev/null || true
	for p in 0 1 2 3 4 5; do
		wait_secs 70 "[[ -s $T/dd$p.rc ]]"
	done
	for p in 0 1 2 3 4 5; do
		echo "minority dd to t/$p: exit $(cat "$T/dd$p.rc"): $(cat "$T/dd$p.err")"
		[[ $(cat "$T/dd$p.rc") != 124 ]] || { echo "the minority write to t/$p hung for 60 s"; false; }
		[[ $(cat "$T/dd$p.rc") != 0 ]] || { echo "a minority write to t/$p was acknowledged"; false; }
		[[ -s $T/dd$p.err ]]
	done
	writer_stop "$T/maj" "$wmaj"
	writer_stop "$T/min" "$wmin"
	echo "minority writer: $(acked "$T/min") acknowledged, $(wc -l <"$T/min.err") failed attempts"
	[[ $(acked "$T/min") == 0 ]] || { echo "the minority acknowledged writes:"; head "$T/min"; false; }
	[[ -s $T/min.err ]]

	heal_node "$x"
	# node x rejoins, catches up, the logs agree everywhere, the isr is whole
	wait_secs 40 'cl_formed' || { for i in 1 2 3; do cat "${M[i]}/.cluster/nodes"; done; false; }
	for p in 0 1 2 3 4 5; do
		wait_secs 40 "logs_agree t $p" ||
			{ for i in 1 2 3; do echo "node $i: $(md5sum <"${M[i]}/t/$p/log") $(wc -l <"${M[i]}/t/$p/log") lines"; done; false; }
		for i in 1 2 3; do
			wait_secs 30 "[[ \$(isr_of t $p $i) == '1 2 3' ]]" || { cat "${M[i]}/t/$p/state"; false; }
		done
		grep -qx "majority-dd-$p" "${M[x]}/t/$p/log"
		grep -qx "base-$p" "${M[x]}/t/$p/log"
	done
	cat "${M[x]}/t/$mp/log" >"$T/final"
	check_acked "$T/final" "$T/maj" maj
	# nor any unacknowledged minority line: during the cut no packet of x
	# reached the majority, and every such write had failed before the heal,
	# so one of them in the agreed log means x's divergent log was adopted or
	# a write already reported failed was sent again afterwards
	for p in 0 1 2 3 4 5; do
		run grep -E '^(min-[0-9]+|minority-dd-[0-9]+)$' "${M[maj]}/t/$p/log"
		[[ -z $output ]] || { echo "t/$p holds minority writes: $output"; false; }
	done
	# the namespace: the majority's change reached x; the minority's topic is nowhere
	wait_secs 20 "[[ \$(MNT=${M[x]} cfg_value t retention_ms) == 7200000 ]]"
	for i in 1 2 3; do [[ ! -e ${M[i]}/minority-topic ]]; done
	# and x takes writes again
	dd_append "${M[x]}/t/$mp/log" "after heal"
	wait_secs 10 "logs_agree t $mp"
	[[ $(tail -n 1 "${M[maj]}/t/$mp/log") == "after heal" ]]
}

# A write a partition leader took just after it was cut off (it still led as
# far as it knew, and its followers still counted as in sync): after the heal
# it truncates it away and fetches its successor's records, whose offsets
# pass it. fsync must then fail, not take those records for the write's.
@test "a write a cut-off partition leader took is not acknowledged after the heal: fsync and close fail with EIO" {
	cl_use_netns 3
	cluster_start 3
	acks_all_topic t
	local l maj majb e0 tag=cutoff-$RANDOM
	l=$(leader_of t 0 1)
	e0=$(epoch_of t 0 1)
	maj=$(other_than "$l")
	majb=$(other_than "$l" "$maj")
	dd_append "${M[l]}/t/0/log" before
	cat >"$T/writer.py" <<-'EOF'
		import errno, os, sys, time
		path, tag, d = sys.argv[1:4]
		def step(name, call):
		    try:
		        call()
		        r = name + " ok"
		    except OSError as e:
		        r = name + " " + errno.errorcode[e.errno]
		    open(d + "/outcome", "a").write(r + "\n")
		def wait(f):
		    while not os.path.exists(d + "/" + f):
		        time.sleep(0.05)
		fd = os.open(path, os.O_WRONLY | os.O_APPEND)
		open(d + "/outcome", "w").write("opened\n")
		wait("go1")
		step("write", lambda: os.write(fd, (tag + "\n").encode()))
		wait("go2")
		step("fsync", lambda: os.fsync(fd))
		step("close", lambda: os.close(fd))
		open(d + "/outcome", "a").write("done\n")
	EOF
	cl_bg python3 "$T/writer.py" "${M[l]}/t/0/log" "$tag" "$T"
	wait_secs 10 "grep -q opened $T/outcome"
	cut_node "$l"
	touch "$T/go1"
	wait_secs 20 "grep -q '^write' $T/outcome"
	cat "$T/outcome"
	grep -qx 'write ok' "$T/outcome" # the cut-off leader appended it
	# the majority elects a leader and appends past the cut-off one's end
	wait_secs 30 "[[ \$(leader_of t 0 $maj) != $l && \$(epoch_of t 0 $maj) -gt $e0 ]]" ||
		{ cat "${M[maj]}/t/0/state"; false; }
	dd_append "${M[maj]}/t/0/log" after-1
	dd_append "${M[majb]}/t/0/log" after-2
	heal_node "$l"
	wait_secs 40 'cl_formed'
	wait_secs 40 "logs_agree t 0"
	touch "$T/go2"
	wait_secs 30 "grep -q done $T/outcome" || { cat "$T/outcome"; false; }
	cat "$T/outcome"
	for i in 1 2 3; do
		if grep -qx "$tag" "${M[i]}/t/0/log"; then echo "the line is on node $i"; false; fi
	done
	grep -qx 'fsync EIO' "$T/outcome"
	grep -qx 'close EIO' "$T/outcome"
	grep -q 'truncated by a newer leader' "${NODE_LOG[l]}"
	[[ $(cat "${M[l]}/t/0/log") == $'before\nafter-1\nafter-2' ]]
}

# acks: leader commits at the leader's append, so a leader on the minority
# side of a cut would take writes for as long as the cut lasts, and the
# majority's new leader truncates them all at the heal. Cut off from the
# quorum for node_timeout_ms it stops (the majority moves its leaderships
# after as long). What it acknowledged before that is what acks: leader
# risks, as with Kafka's acks=1.
@test "a cut-off partition leader stops taking acks: leader writes; after the heal the partition is whole" {
	cl_use_netns 3
	cluster_start 3
	mkdir "${M[1]}/t"
	echo 'acks: leader' >"${M[1]}/t/.config"
	wait_secs 10 "[[ \$(MNT=${M[3]} cfg_value t acks) == leader && \$(isr_of t 0) == '1 2 3' ]]"
	local x maj
	x=$(leader_of t 0 1)
	maj=$(other_than "$x")
	acks_writer "${M[x]}/t/0/log" "$T/min" min
	local w=$WRITER
	wait_secs 20 '[[ $(acked $T/min) -ge 20 ]]'
	cut_node "$x"
	# the cut-off leader refuses within seconds, not for as long as the cut lasts
	wait_secs 30 "[[ -s $T/min.err ]]" || { echo "acknowledged: $(acked "$T/min")"; false; }
	local k0
	k0=$(acked "$T/min")
	sleep 3
	[[ $(acked "$T/min") == "$k0" ]] || { echo "acknowledged after refusing: $k0 -> $(acked "$T/min")"; false; }
	grep -q 'cut off from the metadata quorum' "${NODE_LOG[x]}"
	writer_stop "$T/min" "$w"
	# the majority goes on under a new leader
	wait_secs 30 "[[ \$(leader_of t 0 $maj) != $x ]]"
	dd_append "${M[maj]}/t/0/log" "majority"
	heal_node "$x"
	wait_secs 40 'cl_formed'
	wait_secs 40 "logs_agree t 0"
	dd_append "${M[x]}/t/0/log" "after heal"
	wait_secs 10 "logs_agree t 0"
	[[ $(tail -n 1 "${M[maj]}/t/0/log") == "after heal" ]]
}

# Compaction counts committed records only: a cut-off leader's last write,
# appended but never committed, must not make it drop the acknowledged
# values of the same keys (the majority keeps them, and the old leader,
# truncating the write at the heal, would be left with neither).
@test "a cut-off leader's uncommitted records do not compact away acknowledged ones" {
	cl_use_netns 3
	cluster_start 3 retention_check_ms=300
	mkdir "${M[1]}/t"
	printf 'cleanup: compact\nsegment_bytes: 1024\ncompression: none\nkey_separator: "\\t"\nacks: all\nmin_insync: 2\n' \
		>"${M[1]}/t/.config"
	wait_secs 10 "[[ \$(MNT=${M[3]} cfg_value t cleanup) == compact && \$(isr_of t 0) == '1 2 3' ]]"
	local x k
	x=$(leader_of t 0 1)
	for k in $(seq 1 40); do printf 'k%02d\tv1-%030d\n' "$k" 0; done >>"${M[x]}/t/0/log"
	wait_secs 10 "same_everywhere 'grep -c v1- @M@/t/0/log'"
	cut_node "$x"
	# one write the cut-off leader appends (before its lease runs out) but
	# can never commit: the same keys, new values, over closed segments
	python3 - "${M[x]}/t/0/log" 3>&- <<-'EOF' &
		import os, sys, time
		fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
		os.write(fd, b"".join(b"k%02d\t%s\n" % (k, b"v2-" + b"0" * 30) for k in range(1, 41)))
		time.sleep(60)
	EOF
	local w=$!
	bg_track "$w"
	wait_secs 10 "[[ \$(cl_state $x t 0 end_offset) -eq 80 ]]" || { cat "${M[x]}/t/0/state"; false; }
	sleep 2 # several compaction passes on every node
	kill -9 "$w"
	wait "$w" 2>/dev/null || true
	# the majority elected another leader; the old one heals and truncates
	wait_secs 30 "[[ \$(leader_of t 0 $(other_than "$x")) != $x ]]"
	heal_node "$x"
	wait_secs 40 'cl_formed'
	wait_secs 40 "[[ \$(isr_of t 0 $x) == '1 2 3' ]] && logs_agree t 0"
	for k in 1 2 3; do
		[[ $(grep -c 'v1-' "${M[k]}/t/0/log") -eq 40 ]] ||
			{ echo "node $k: $(grep -c 'v1-' "${M[k]}/t/0/log") acknowledged values"; false; }
	done
	! grep -q 'v2-' "${M[x]}/t/0/log"
}

@test "a cut-off quorum leader cannot commit; the majority elects leaders and goes on; healed, it catches up" {
	minority_test quorum-leader
}

@test "a cut-off partition leader (quorum follower) cannot commit; the majority goes on; healed, it catches up" {
	minority_test quorum-follower
}
