# cluster_helper.bash - multi-node set-up for cluster.bats and
# cluster_faults.bats: N daemons, each with its own data directory, config,
# mount point and log under the test's $T, on 127.0.0.1..N (or, with
# cl_use_netns, in network namespaces on 10.77.0.1..N), and a teardown that
# always unmounts, kills and removes every node, namespace and nft table.
#
# Node i (1-based): M[i] mount point, NODE_DATA[i], NODE_CFG[i], NODE_LOG[i],
# NODE_PID[i] (empty when not running), NODE_ADDR[i]. Every node listens on
# $CL_PORT of its own address.
#
#   cluster_start N [KEY=VALUE...]  write the configs and start N nodes; waits
#                                   until every mount lists N nodes up and one
#                                   quorum leader. KEY is a cluster: key
#                                   (replica_lag_ms, replica_wait_ms,
#                                   node_timeout_ms, snapshot_entries,
#                                   leader_rebalance_ms), a storage: key
#                                   (flush_ms, retention_check_ms) or a
#                                   defaults: key
#                                   (partitions, replication, acks, ...).
#                                   Test defaults: replica_lag_ms=1500
#                                   replica_wait_ms=3000 node_timeout_ms=2000
#                                   partitions=3 replication=3.
#   node_start i / node_wait_mounted i   start one node / wait for its mount
#   node_stop i                     unmount cleanly, wait for a 0 exit
#   node_kill9 i                    SIGKILL, reap, lazily unmount the dead mount
#   acks_all_topic T                topic T with acks: all, min_insync: 2, full isr
#   node_restart i                  (stop if running,) start, wait mounted
#   node_stop_signal i STOP|CONT    SIGSTOP / SIGCONT the daemon
#   up_nodes [i...]                 the running, not stopped, nodes (default all)
#   any_up                          the first of them
#   nodes_line i ID                 node ID's line of .cluster/nodes on mount i
#   node_state i ID / node_role i ID   up|down / leader|follower as mount i sees it
#   count_up i                      how many nodes mount i lists as up
#   quorum_leader i                 the id mount i lists with role leader
#   cl_state i TOPIC P KEY          KEY of TOPIC/P/state on mount i
#   leader_of TOPIC P [i]           partition P's leader (as mount i, default
#                                   the first up node, sees it)
#   isr_of TOPIC P [i] / replicas_of TOPIC P [i]   "1 2 3": sorted, spaces
#   followers_of TOPIC P [i]        the replicas that are not the leader
#   other_than ID...                the first node of 1..CL_N that is none of ID
#   wait_secs SECS 'EXPR'           like wait_until with a longer limit
#   same_everywhere 'CMD' [i...]    CMD (@M@: a mount, @I@: its node) prints
#                                   the same on every (given) up node
#   parts_of i TOPIC                the partition directories on mount i: "0 1 2"
#   cl_bg CMD...                    run CMD in the background, killed in teardown
#
# Network namespaces (netns.sh): cl_use_netns [N] makes namespaces for N nodes
# (skips the test if they are unavailable); then cluster_start runs node i as
# `nsenter --net=/run/netns/PREFIX-ni topicfs ...` on 10.77.0.i. cut_node i /
# heal_node i isolate node i with nft drop rules inside its namespace.

load helper

# shellcheck source=tests/e2e/netns.sh
source "$BATS_TEST_DIRNAME/netns.sh"

CL_WAIT_START=${CL_WAIT_START:-40}   # seconds for a cluster to form

setup() {
	cl_setup
}

cl_setup() {
	tfs_setup
	CL_N=0
	CL_NETNS=
	CL_PORT=
	M=() NODE_DATA=() NODE_CFG=() NODE_LOG=() NODE_PID=() NODE_ADDR=() NODE_STOPPED=()
	# the binary is copied so that a rebuild during the run cannot change it
	# under a node restart, and so every daemon's command line says topicfs
	mkdir -p "$T/bin"
	cp "$TOPICFS" "$T/bin/topicfs"
	CL_BIN=$T/bin/topicfs
}

teardown() {
	cl_teardown
}

cl_teardown() {
	local i p m status=0 failed=0 mounted=()
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${BG_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	# a stopped daemon cannot answer: resume every node first
	for ((i = 1; i <= CL_N; i++)); do
		[[ -n ${NODE_PID[i]:-} ]] && kill -CONT "${NODE_PID[i]}" 2>/dev/null || true
	done
	for ((i = 1; i <= CL_N; i++)); do
		if mountpoint -q "${M[i]}" 2>/dev/null; then
			mounted[i]=1
			fusermount3 -u "${M[i]}" 2>/dev/null || fusermount3 -uz "${M[i]}" 2>/dev/null || true
		fi
	done
	for ((i = 1; i <= CL_N; i++)); do
		p=${NODE_PID[i]:-}
		[[ -n $p ]] || continue
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$p" 2>/dev/null; then
			echo "# node $i (pid $p) did not exit after unmount: killed" >&3
			kill -9 "$p" 2>/dev/null || true
			wait "$p" 2>/dev/null || true
		else
			status=0
			wait "$p" 2>/dev/null || status=$?
			# a clean unmount must exit 0 (a node that died earlier is
			# reported by the test that saw it)
			if ((status != 0)) && [[ -n ${mounted[i]:-} ]]; then
				echo "# node $i exited with status $status after unmount" >&3
				failed=1
			fi
		fi
	done
	# any daemon of this test that escaped tracking (daemonised, restarted)
	for p in $(pgrep -f -- "$T/bin/topicfs" 2>/dev/null || true); do
		kill -9 "$p" 2>/dev/null || true
	done
	if [[ ${BATS_TEST_COMPLETED:-} != 1 || $failed == 1 ]]; then
		for ((i = 1; i <= CL_N; i++)); do
			[[ -f ${NODE_LOG[i]} ]] || continue
			if grep -q 'ERROR: AddressSanitizer\|runtime error' "${NODE_LOG[i]}"; then
				echo "--- node $i log (the sanitizer's report) ---" >&3
				grep -A 40 'ERROR: AddressSanitizer\|runtime error' "${NODE_LOG[i]}" |
					grep -v '^  *0x' | sed 's/^/# /' >&3
			else
				echo "--- node $i log (last 25 lines) ---" >&3
				tail -n 25 "${NODE_LOG[i]}" | sed 's/^/# /' >&3
			fi
		done
	fi
	while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done < <(findmnt -rn -o TARGET | grep -F "$T/" | sort -r)
	if [[ -n $CL_NETNS ]]; then
		# the nft tables live inside the namespaces and go with them
		netns_destroy "$CL_NETNS"
	fi
	rm -rf "$T"
	((failed == 0))
}

# ---- configuration -------------------------------------------------------------

# cl_free_port N: a TCP port free on 127.0.0.1..N (every node uses the same
# number on its own address).
cl_free_port() {
	python3 - "$1" <<-'EOF'
		import random, socket, sys
		n = int(sys.argv[1])
		for _ in range(200):
		    port = random.randint(20000, 60000)
		    socks = []
		    try:
		        for i in range(1, n + 1):
		            s = socket.socket()
		            socks.append(s)
		            s.bind(("127.0.0.%d" % i, port))
		        print(port)
		        sys.exit(0)
		    except OSError:
		        pass
		    finally:
		        for s in socks:
		            s.close()
		sys.exit(1)
	EOF
}

# cl_config N KEY=VALUE...: write node.yaml for nodes 1..N.
cl_config() {
	local n=$1 i kv k v voters='' cluster_extra='' defaults_extra='' storage_extra=''
	shift
	local -A cl=([replica_lag_ms]=1500 [replica_wait_ms]=3000 [node_timeout_ms]=2000)
	local -A df=([partitions]=3 [replication]=3)
	for kv in "$@"; do
		k=${kv%%=*} v=${kv#*=}
		case $k in
		replica_lag_ms | replica_wait_ms | node_timeout_ms | snapshot_entries | \
			leader_rebalance_ms) cl[$k]=$v ;;
		flush_ms | retention_check_ms) storage_extra+="  $k: $v"$'\n' ;;
		*) df[$k]=$v ;;
		esac
	done
	for k in "${!cl[@]}"; do cluster_extra+="  $k: ${cl[$k]}"$'\n'; done
	for k in "${!df[@]}"; do defaults_extra+="  $k: ${df[$k]}"$'\n'; done
	for ((i = 1; i <= n; i++)); do voters+="    - $i@${NODE_ADDR[i]}:$CL_PORT"$'\n'; done
	for ((i = 1; i <= n; i++)); do
		cat >"${NODE_CFG[i]}" <<-EOF
			node:
			  id: $i
			  data_dir: ${NODE_DATA[i]}
			  listen: ${NODE_ADDR[i]}:$CL_PORT
			cluster:
			  voters:
			$voters$cluster_extra
			defaults:
			$defaults_extra
			${storage_extra:+storage:
			$storage_extra}
		EOF
	done
}

# ---- nodes -------------------------------------------------------------------

cl_node_dirs() {
	local n=$1 i
	CL_N=$n
	if [[ -z $CL_PORT ]]; then
		if [[ -n $CL_NETNS ]]; then
			CL_PORT=7070 # private namespaces: nothing else listens there
		else
			CL_PORT=$(cl_free_port "$n") || { echo "no free port" >&2; return 1; }
		fi
	fi
	for ((i = 1; i <= n; i++)); do
		M[i]=$T/n$i/mnt
		NODE_DATA[i]=$T/n$i/data
		NODE_CFG[i]=$T/n$i/node.yaml
		NODE_LOG[i]=$T/n$i/topicfs.log
		NODE_PID[i]=
		NODE_STOPPED[i]=
		if [[ -n $CL_NETNS ]]; then NODE_ADDR[i]=$(netns_addr "$i"); else NODE_ADDR[i]=127.0.0.$i; fi
		mkdir -p "${M[i]}" "${NODE_DATA[i]}"
	done
}

# node_start i: start node i in the foreground, in the background of the test.
node_start() {
	local i=$1
	[[ -z ${NODE_PID[i]:-} ]] || { echo "node $i is already running" >&2; return 1; }
	echo "=== start $(date +%T.%N)" >>"${NODE_LOG[i]}"
	if [[ -n $CL_NETNS ]]; then
		nsenter --net="$(netns_path "$CL_NETNS" "$i")" \
			"$CL_BIN" -f -c "${NODE_CFG[i]}" "${M[i]}" >>"${NODE_LOG[i]}" 2>&1 3>&- &
	else
		"$CL_BIN" -f -c "${NODE_CFG[i]}" "${M[i]}" >>"${NODE_LOG[i]}" 2>&1 3>&- &
	fi
	NODE_PID[i]=$!
	NODE_STOPPED[i]=
}

# node_wait_mounted i [SECS]: wait until node i's mount answers.
node_wait_mounted() {
	local i=$1 secs=${2:-$CL_WAIT_START} k
	for ((k = 0; k < secs * 20; k++)); do
		if mountpoint -q "${M[i]}" && ls "${M[i]}" >/dev/null 2>&1; then return 0; fi
		if ! kill -0 "${NODE_PID[i]}" 2>/dev/null; then
			echo "node $i exited during start-up:" >&2
			tail -n 20 "${NODE_LOG[i]}" >&2
			NODE_PID[i]=
			return 1
		fi
		sleep 0.05
	done
	echo "node $i did not mount within $secs s" >&2
	tail -n 20 "${NODE_LOG[i]}" >&2
	return 1
}

# cluster_start N [KEY=VALUE...]
cluster_start() {
	local n=$1 i
	shift
	cl_node_dirs "$n" || return 1
	cl_config "$n" "$@"
	# all at once: a node may wait for the quorum before its mount is ready
	for ((i = 1; i <= n; i++)); do node_start "$i"; done
	for ((i = 1; i <= n; i++)); do node_wait_mounted "$i" || return 1; done
	cl_wait_formed || return 1
}

# cl_wait_formed [SECS]: every running node lists all CL_N nodes up and the
# same single quorum leader.
cl_wait_formed() {
	local secs=${1:-$CL_WAIT_START}
	if ! wait_secs "$secs" 'cl_formed'; then
		echo "cluster did not form within $secs s:" >&2
		local i
		for i in $(up_nodes); do
			echo "node $i .cluster/nodes:" >&2
			cat "${M[i]}/.cluster/nodes" >&2 || true
		done
		return 1
	fi
}

cl_formed() {
	local i q='' l
	for i in $(up_nodes); do
		[[ $(count_up "$i") == "$CL_N" ]] || return 1
		[[ $(awk -F '\t' '$4 == "leader"' "${M[i]}/.cluster/nodes" | wc -l) == 1 ]] || return 1
		l=$(quorum_leader "$i")
		[[ -z $q || $q == "$l" ]] || return 1
		q=$l
	done
	[[ -n $q ]]
}

node_stop() {
	local i=$1 p=${NODE_PID[$1]} status=0
	[[ -n $p ]] || { echo "node $i is not running" >&2; return 1; }
	kill -CONT "$p" 2>/dev/null || true
	fusermount3 -u "${M[i]}" || return 1
	for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
	if kill -0 "$p" 2>/dev/null; then
		echo "node $i (pid $p) did not exit within 10 s of its unmount" >&2
		return 1
	fi
	wait "$p" 2>/dev/null || status=$?
	NODE_PID[i]=
	NODE_STOPPED[i]=
	if ((status != 0)); then
		echo "node $i exited with status $status after a clean unmount" >&2
		tail -n 30 "${NODE_LOG[i]}" >&2
		return 1
	fi
}

node_kill9() {
	local i=$1 p=${NODE_PID[$1]}
	[[ -n $p ]] || { echo "node $i is not running" >&2; return 1; }
	kill -9 "$p"
	wait "$p" 2>/dev/null || true
	fusermount3 -uz "${M[i]}" 2>/dev/null || true
	echo "=== killed -9 $(date +%T.%N)" >>"${NODE_LOG[i]}"
	NODE_PID[i]=
	NODE_STOPPED[i]=
}

node_restart() {
	local i=$1
	if [[ -n ${NODE_PID[i]:-} ]]; then node_stop "$i" || return 1; fi
	node_start "$i"
	node_wait_mounted "$i"
}

node_stop_signal() {
	local i=$1 sig=$2
	kill "-$sig" "${NODE_PID[i]}" || return 1
	if [[ $sig == STOP ]]; then NODE_STOPPED[i]=1; else NODE_STOPPED[i]=; fi
}

# up_nodes [i...]: of the given nodes (default 1..CL_N), those running and
# not stopped: mounts that answer.
up_nodes() {
	local i list=("$@")
	((${#list[@]})) || list=($(seq 1 "$CL_N"))
	for i in "${list[@]}"; do
		[[ -n ${NODE_PID[i]:-} && -z ${NODE_STOPPED[i]:-} ]] && echo "$i"
	done
	return 0
}
any_up() { up_nodes | head -n 1; }

# other_than ID...: the first node id in 1..CL_N that is none of the IDs.
other_than() {
	local i x skip
	for ((i = 1; i <= CL_N; i++)); do
		skip=
		for x in "$@"; do [[ $x == "$i" ]] && skip=1; done
		[[ -z $skip ]] && { echo "$i"; return 0; }
	done
	return 1
}

# ---- .cluster/nodes ------------------------------------------------------------

nodes_line() { awk -F '\t' -v id="$2" '$1 == id' "${M[$1]}/.cluster/nodes"; }
node_state() { nodes_line "$1" "$2" | cut -f 3; }
node_role() { nodes_line "$1" "$2" | cut -f 4; }
count_up() { awk -F '\t' '$3 == "up"' "${M[$1]}/.cluster/nodes" | wc -l; }
quorum_leader() { awk -F '\t' '$4 == "leader" { print $1 }' "${M[$1]}/.cluster/nodes"; }

# ---- partition state ------------------------------------------------------------

parts_of() { ls "${M[$1]}/$2" | grep -E '^[0-9]+$' | sort -n | paste -sd' '; }
cl_state() { sed -n "s/^$4: *//p" "${M[$1]}/$2/$3/state"; }
# "[1, 3, 2]" -> "1 2 3"
cl_set() { tr -d '[],' | tr -s ' ' '\n' | grep -v '^$' | sort -n | paste -sd ' '; }
# acks_all_topic T: make topic T on node 1 with acks: all and min_insync: 2,
# and wait until every mount shows the setting and partition 0's in-sync set
# holds all three nodes.
acks_all_topic() {
	mkdir "${M[1]}/$1"
	echo $'acks: all\nmin_insync: 2' >"${M[1]}/$1/.config"
	wait_secs 10 "[[ \$(MNT=${M[2]} cfg_value $1 acks) == all && \$(MNT=${M[3]} cfg_value $1 acks) == all ]]"
	wait_secs 10 "[[ \$(isr_of $1 0) == '1 2 3' ]]"
}

leader_of() { cl_state "${3:-$(any_up)}" "$1" "$2" leader; }
isr_of() { cl_state "${3:-$(any_up)}" "$1" "$2" isr | cl_set; }
replicas_of() { cl_state "${3:-$(any_up)}" "$1" "$2" replicas | cl_set; }
epoch_of() { cl_state "${3:-$(any_up)}" "$1" "$2" leader_epoch; }
followers_of() {
	local l r
	l=$(leader_of "$@")
	for r in $(replicas_of "$@"); do [[ $r == "$l" ]] || echo "$r"; done
}

# ---- waiting -------------------------------------------------------------------

# wait_secs SECS 'EXPR': retry shell code EXPR every 0.1 s for up to SECS.
# Time-based: EXPR may itself take long (a write that fails after seconds).
wait_secs() {
	local end=$((SECONDS + $1))
	while ((SECONDS < end)); do
		eval "$2" && return 0
		sleep 0.1
	done
	eval "$2"
}

# same_everywhere 'CMD' [i...]: CMD, with @M@ replaced by each mount point and
# @I@ by the node's number, prints the same (and succeeds) on every given up
# node (default: every up node).
same_everywhere() {
	local cmd=$1 i first="" out ref="" c
	shift
	for i in $(up_nodes "$@"); do
		c=${cmd//@M@/${M[i]}}
		out=$(eval "${c//@I@/$i}") || return 1
		if [[ -z $first ]]; then first=x ref=$out; elif [[ $out != "$ref" ]]; then return 1; fi
	done
	[[ -n $first ]]
}

cl_bg() {
	"$@" 3>&- &
	bg_track $!
}

# ---- namespaces ------------------------------------------------------------------

# cl_use_netns [N]: run this test's nodes in network namespaces (skips the
# test when they cannot be made here).
cl_use_netns() {
	local n=${1:-3} why
	netns_reap_stale
	why=$(netns_available) || skip "network namespaces unavailable: $why"
	CL_NETNS=tfse2e-$$-$RANDOM
	netns_create "$CL_NETNS" "$n" || { echo "netns_create failed" >&2; return 1; }
}
cut_node() { netns_cut "$CL_NETNS" "$1"; }
heal_node() { netns_heal "$CL_NETNS" "$1"; }

# ---- acknowledged writers --------------------------------------------------------

# acks_writer FILE OUT PREFIX: in the background (pid in WRITER, killed in
# teardown), append lines "PREFIX-<attempt>" to FILE, one per open + write +
# fsync + close, attempts numbered 1, 2, 3, ... and never reused. An attempt
# whose calls all succeed is acknowledged: its number is appended to OUT.
# A failed attempt goes to OUT.err ("attempt ERRNO time") and the next
# attempt (a new line) follows 50 ms later. It stops after the attempt in
# progress once OUT.stop exists (writer_stop).
acks_writer() {
	python3 - "$1" "$2" "$3" 3>&- <<-'EOF' &
		import errno, os, sys, time
		path, out, prefix = sys.argv[1:4]
		a = 0
		with open(out, "a", buffering=1) as ack, open(out + ".err", "a", buffering=1) as err:
		    while not os.path.exists(out + ".stop"):
		        a += 1
		        try:
		            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
		            try:
		                os.write(fd, b"%s-%d\n" % (prefix.encode(), a))
		                os.fsync(fd)
		            finally:
		                os.close(fd)
		        except OSError as e:
		            err.write("%d %s %.3f\n" % (a, errno.errorcode.get(e.errno, str(e.errno)), time.time()))
		            time.sleep(0.05)
		            continue
		        ack.write("%d\n" % a)
		        time.sleep(0.002)
	EOF
	WRITER=$!
	bg_track "$WRITER"
}

# acked OUT: how many attempts of that writer were acknowledged.
acked() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# writer_stop OUT PID: ask the writer to stop and wait (up to 60 s: an
# attempt in progress may be waiting for a commit) for it to exit.
writer_stop() {
	touch "$1.stop"
	local k
	for ((k = 0; k < 600; k++)); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$2" 2>/dev/null; then
		echo "writer $2 did not stop within 60 s (a write hangs)" >&2
		return 1
	fi
	wait "$2" 2>/dev/null || true
}

# check_acked LOGFILE OUT PREFIX: in LOGFILE (a copy of a partition's log)
# every acknowledged "PREFIX-n" is present exactly once, no PREFIX line
# appears twice, and PREFIX lines are in attempt order (the writer is
# sequential). Prints a summary.
check_acked() {
	python3 - "$1" "$2" "$3" <<-'EOF'
		import collections, sys
		log, out, prefix = sys.argv[1:4]
		acked = [int(x) for x in open(out).read().split()]
		seen = []
		for line in open(log, encoding="utf-8", errors="replace"):
		    line = line.rstrip("\n")
		    if line.startswith(prefix + "-"):
		        seen.append(int(line[len(prefix) + 1:]))
		c = collections.Counter(seen)
		dup = sorted(k for k, v in c.items() if v > 1)
		missing = sorted(set(acked) - set(c))
		disorder = [(a, b) for a, b in zip(seen, seen[1:]) if b <= a]
		print("%d acknowledged, %d %s lines in the log, %d unacknowledged present"
		      % (len(acked), len(seen), prefix, len(set(c) - set(acked))))
		ok = True
		if missing:
		    print("LOST acknowledged lines:", missing[:20], "... (%d)" % len(missing)); ok = False
		if dup:
		    print("DUPLICATED lines:", dup[:20], "... (%d)" % len(dup)); ok = False
		if disorder:
		    print("OUT OF ORDER:", disorder[:10]); ok = False
		sys.exit(0 if ok else 1)
	EOF
}
