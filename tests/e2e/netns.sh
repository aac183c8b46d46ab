#!/usr/bin/env bash
# netns.sh - network namespaces for the cluster fault tests (cluster_faults.bats).
#
# Sourced by cluster_helper.bash; run directly it checks the plumbing with
# plain tools and no topicfs:  bash tests/e2e/netns.sh selftest
#
# Layout made by netns_create PREFIX N (everything lives inside namespaces,
# nothing is added to the caller's namespace, so parallel runs never clash):
#
#   PREFIX-hub        a bridge br0, and one veth end vI per node
#   PREFIX-nI         eth0 = the peer of vI, address 10.77.0.I/24, lo up
#
# Daemons are started with `nsenter --net=/run/netns/PREFIX-nI CMD`: only the
# network namespace changes, so a FUSE mount made by CMD stays visible to the
# caller (`ip netns exec` would also make a new mount namespace and hide it).
#
# Faults: netns_cut PREFIX I drops every packet in and out of node I's eth0
# with an nft table `tfscut` inside node I's namespace (the other nodes keep
# their links: node I is a minority of one); netns_heal PREFIX I deletes it.
# netns_destroy PREFIX removes the namespaces (and with them every nft table).
#
#   netns_available         0 if ip, nsenter, nft and namespaces work here (else
#                           prints why on stdout)
#   netns_create PREFIX N   build the layout above
#   netns_addr I            10.77.0.I
#   netns_path PREFIX I     /run/netns/PREFIX-nI (for nsenter --net=)
#   netns_cut PREFIX I      isolate node I
#   netns_heal PREFIX I     undo netns_cut
#   netns_destroy PREFIX    delete every namespace PREFIX-*
#   netns_reap_stale        delete tfse2e-PID-* namespaces of dead test runs
#   netns_probe PREFIX I J [SECS]  0 if a TCP connection from node I to node J
#                           (a python listener inside J) succeeds within SECS [2]

NETNS_NET=10.77.0

netns_addr() { echo "$NETNS_NET.$1"; }
netns_path() { echo "/run/netns/$1-n$2"; }

netns_available() {
	local c probe
	for c in ip nsenter nft python3; do
		command -v "$c" >/dev/null 2>&1 || { echo "$c is not installed (tests/install-deps.sh)"; return 1; }
	done
	[[ $(id -u) -eq 0 ]] || { echo "network namespaces need root"; return 1; }
	probe=tfse2e-probe-$$
	if ! ip netns add "$probe" 2>/dev/null; then
		echo "ip netns add failed: no network namespaces here"
		return 1
	fi
	if ! ip netns exec "$probe" nft add table inet tfsprobe 2>/dev/null; then
		ip netns del "$probe" 2>/dev/null
		echo "nft cannot add a table (no nf_tables in this kernel?)"
		return 1
	fi
	if ! ip -n "$probe" link add tfsvp type veth peer name tfsvq 2>/dev/null; then
		ip netns del "$probe" 2>/dev/null
		echo "veth links are not available"
		return 1
	fi
	ip netns del "$probe"
	return 0
}

netns_create() {
	local prefix=$1 n=$2 i hub=$1-hub ns
	ip netns add "$hub" || return 1
	ip -n "$hub" link set lo up
	ip -n "$hub" link add br0 type bridge || return 1
	ip -n "$hub" link set br0 up
	for ((i = 1; i <= n; i++)); do
		ns=$prefix-n$i
		ip netns add "$ns" || return 1
		ip -n "$ns" link set lo up
		ip -n "$hub" link add "v$i" type veth peer name eth0 netns "$ns" || return 1
		ip -n "$hub" link set "v$i" master br0
		ip -n "$hub" link set "v$i" up
		ip -n "$ns" addr add "$(netns_addr "$i")/24" dev eth0
		ip -n "$ns" link set eth0 up
	done
}

netns_cut() {
	local ns=$1-n$2
	ip netns exec "$ns" nft -f - <<-'EOF'
		table inet tfscut {
			chain input { type filter hook input priority -10; policy accept; iifname "eth0" drop; }
			chain output { type filter hook output priority -10; policy accept; oifname "eth0" drop; }
		}
	EOF
}

netns_heal() {
	ip netns exec "$1-n$2" nft delete table inet tfscut
}

netns_destroy() {
	local ns
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$1-(hub|n[0-9]+)\$"); do
		ip netns del "$ns" 2>/dev/null || true
	done
}

netns_reap_stale() {
	local ns pid
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^tfse2e-[0-9]+-'); do
		pid=${ns#tfse2e-}
		pid=${pid%%-*}
		kill -0 "$pid" 2>/dev/null && continue
		[[ -z $(ip netns pids "$ns" 2>/dev/null) ]] || continue
		ip netns del "$ns" 2>/dev/null || true
	done
}

# netns_probe PREFIX I J [SECS]: a one-shot listener in J on port 9, a client in I.
# (errexit-safe: bats runs tests under set -e)
netns_probe() {
	local prefix=$1 i=$2 j=$3 secs=${4:-2} srv rc
	ip netns exec "$prefix-n$j" python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9)); s.listen(1); s.settimeout(float(sys.argv[2]) + 1)
try:
    c, _ = s.accept(); c.sendall(b"pong"); c.close()
except socket.timeout:
    pass' "$(netns_addr "$j")" "$secs" &
	srv=$!
	rc=1
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		ip netns exec "$prefix-n$i" python3 -c '
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], 9), timeout=float(sys.argv[2]))
    sys.exit(0 if c.recv(4) == b"pong" else 1)
except ConnectionRefusedError:
    sys.exit(3)
except OSError:
    sys.exit(1)' "$(netns_addr "$j")" "$secs" && rc=0 || rc=$?
		((rc == 3)) || break # refused: the listener is not up yet
		sleep 0.1
	done
	kill "$srv" 2>/dev/null || true
	wait "$srv" 2>/dev/null || true
	((rc == 0))
}

netns_selftest() {
	local prefix=tfse2e-$$-self ok=0 why
	why=$(netns_available) || { echo "unavailable: $why"; return 2; }
	trap 'netns_destroy '"$prefix" RETURN
	netns_create "$prefix" 3 || { echo "netns_create failed"; return 1; }
	netns_probe "$prefix" 1 2 && echo "ok: 1 -> 2" || { echo "FAIL: 1 -> 2"; ok=1; }
	netns_probe "$prefix" 3 1 && echo "ok: 3 -> 1" || { echo "FAIL: 3 -> 1"; ok=1; }
	netns_cut "$prefix" 1 || { echo "FAIL: nft cut"; return 1; }
	netns_probe "$prefix" 1 2 1 && { echo "FAIL: 1 -> 2 while cut"; ok=1; } || echo "ok: 1 -/-> 2 while cut"
	netns_probe "$prefix" 2 1 1 && { echo "FAIL: 2 -> 1 while cut"; ok=1; } || echo "ok: 2 -/-> 1 while cut"
	netns_probe "$prefix" 2 3 && echo "ok: 2 -> 3 while 1 is cut" || { echo "FAIL: 2 -> 3 while 1 is cut"; ok=1; }
	netns_heal "$prefix" 1 || { echo "FAIL: nft heal"; return 1; }
	netns_probe "$prefix" 1 2 && echo "ok: 1 -> 2 healed" || { echo "FAIL: 1 -> 2 healed"; ok=1; }
	return $ok
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	case ${1:-} in
	selftest) netns_selftest ;;
	*) echo "usage: $0 selftest" >&2; exit 2 ;;
	esac
fi
