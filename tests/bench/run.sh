#!/usr/bin/env bash
# run.sh - the topicfs benchmark suite (`make bench`); tests/bench/README.md
# explains every row. One run measures, each as the median of several runs:
# ceilings (a null FUSE filesystem built here, a plain file on the same
# disk), topicfs (produce, small appends, consume, latency, memory) and
# peers (Redis Streams, NATS JetStream) on the same machine and data; then
# prints a Markdown table and writes it with a PNG chart to bench/results/.
#
# A topicfs feature that does not work yet gives "n.a. (reason)" on its row
# and the suite goes on. Everything it starts (mounts, daemons, servers,
# temporary directories) is removed on exit, failure or Ctrl-C.
#
# Environment (defaults in brackets):
#   TOPICFS            daemon binary [bin/topicfs]
#   BENCH_RUNS         runs per filesystem measurement [5]
#   BENCH_PEER_RUNS    runs per peer measurement [3]
#   BENCH_LINES        records in the data set [1000000, ~100 bytes each]
#   BENCH_APPENDS      `echo >> log` calls in the small-append test [2000]
#   BENCH_APPEND_RUNS  runs of that test, alternating with null FUSE [9]
#   BENCH_LAT_SAMPLES  latency samples [1000]
#   BENCH_STEP_TIMEOUT seconds before one command is abandoned [30]
#   BENCH_ROW_BUDGET   seconds after which a row stops adding runs [20]
#   BENCH_BUDGET       seconds after which no new row starts (n.a.) [540]
#   BENCH_PEERS=0      skip Redis and NATS;  BENCH_INSTALL=0  never apt-get
#   BENCH_OUT          results directory [bench/results]
# shellcheck disable=SC2016 # the bash -c scripts are single-quoted on purpose
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
TOPICFS=${TOPICFS:-$root/bin/topicfs}
RUNS=${BENCH_RUNS:-5}
PEER_RUNS=${BENCH_PEER_RUNS:-3}
LINES=${BENCH_LINES:-1000000}
APPENDS=${BENCH_APPENDS:-2000}
APPEND_RUNS=${BENCH_APPEND_RUNS:-9}
LAT_SAMPLES=${BENCH_LAT_SAMPLES:-1000}
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-30}
ROW_BUDGET=${BENCH_ROW_BUDGET:-20}
BUDGET=${BENCH_BUDGET:-540}
OUT=${BENCH_OUT:-$root/bench/results}
BIN=$root/build/bench
suite_t0=$EPOCHREALTIME

# ---- cleanup: everything started is registered here ------------------------
T=
MOUNTS=()
PIDS=()
cleanup() {
	local rc=$? m p
	set +e
	trap - EXIT INT TERM
	for m in "${MOUNTS[@]}"; do
		if mountpoint -q "$m" 2>/dev/null; then
			fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null
		fi
	done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	[[ -n $T && -d $T ]] && rm -rf "$T"
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

say() { printf '%s\n' "$*" >&2; }
note() { printf '  %s\n' "$*" >&2; }

# ---- numbers ---------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }                 # calc FMT EXPR
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }  # ge A B: A >= B
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }   # gt A B: A > B
commify() { awk -v n="$1" 'BEGIN { s = sprintf("%.0f", n); r = "";
	while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
	print s r }'; }

# ---- result rows: one TSV line each, rendered at the end ----------------------
# key, measurement, median, records/s, MB/s, vs ceiling, target, verdict
ROWS=
row() {
	local f cells=()
	for f in "$@"; do cells+=("$(printf '%s' "$f" | tr '\t\n|' '  /')"); done
	(IFS=$'\t'; printf '%s\n' "${cells[*]}") >>"$ROWS"
}
na() { # na KEY LABEL REASON TARGET (temporary paths are cut from REASON)
	local why=${3//"$T/tfs/"/}
	row "$1" "$2" "n.a. (${why//"$T/"/})" "—" "—" "—" "$4" "n.a."
}

# ---- timing ------------------------------------------------------------------
# run_timed MODE ARGS...: one timed command under a timeout; sets SECS, and
# ERR to the command's last stderr line on failure.
#   cat_append SRC DST   cat SRC >> DST
#   cat_read SRC         cat SRC > /dev/null
#   appends DST LINE N   N times `echo LINE >> DST` from one bash
SECS=
ERR=
run_timed() {
	local mode=$1 t0 t1 rc=0
	shift
	t0=$EPOCHREALTIME
	case $mode in
	cat_append) timeout --foreground -k 5 "$STEP_TIMEOUT" cat "$1" >>"$2" 2>"$T/step.err" || rc=$? ;;
	cat_read) timeout --foreground -k 5 "$STEP_TIMEOUT" cat "$1" >/dev/null 2>"$T/step.err" || rc=$? ;;
	appends) timeout --foreground -k 5 "$STEP_TIMEOUT" bash -c \
		'for ((i = 0; i < $3; i++)); do echo "$2" >>"$1" || exit 1; done' _ "$@" \
		2>"$T/step.err" || rc=$? ;;
	*) say "run_timed: bad mode $mode"; return 2 ;;
	esac
	t1=$EPOCHREALTIME
	SECS=$(calc '%.6f' "$t1 - $t0")
	ERR=
	if ((rc != 0)); then
		ERR=$(tail -n 1 "$T/step.err" | sed 's/^[^:]*: //' | cut -c1-100)
		((rc == 124 || rc == 137)) && ERR="timed out after ${STEP_TIMEOUT} s"
		[[ -n $ERR ]] || ERR="exit status $rc"
	fi
	return $rc
}

# try CMD...: run an untimed set-up command (under the step timeout); on
# failure set ERR to its errno text and fail. `try write_file PATH TEXT`
# writes TEXT and a newline to PATH (echo TEXT > PATH).
try() {
	local rc=0
	ERR=
	if [[ $1 == write_file ]]; then
		timeout --foreground -k 5 "$STEP_TIMEOUT" bash -c 'printf "%s\n" "$2" >"$1"' _ "$2" "$3" \
			2>"$T/step.err" || rc=$?
	else
		timeout --foreground -k 5 "$STEP_TIMEOUT" "$@" 2>"$T/step.err" || rc=$?
	fi
	((rc != 0)) || return 0
	ERR="$(tail -n 1 "$T/step.err" | sed 's/.*: //' | cut -c1-100)"
	((rc == 124 || rc == 137)) && ERR="timed out after ${STEP_TIMEOUT} s"
	[[ -n $ERR ]] || ERR="exit status $rc"
	return 1
}

# more R ROW_T0: may run number R of a row started at ROW_T0 go ahead? Not
# once the suite has used its BUDGET (then BUDGET_WHY says so); runs after
# the first only while the row has used less than ROW_BUDGET seconds. This
# keeps a slow topicfs within the suite's 10 minutes.
BUDGET_WHY=
more() {
	local now=$EPOCHREALTIME
	if gt "$(calc '%.3f' "$now - $suite_t0")" "$BUDGET"; then
		BUDGET_WHY="suite time budget of $BUDGET s used up"
		return 1
	fi
	(($1 == 1)) || ! gt "$(calc '%.3f' "$now - $2")" "$ROW_BUDGET"
}
# runs_note K [WANT]: " (K runs)" when fewer than WANT (RUNS) runs made the median.
runs_note() { (($1 >= ${2:-$RUNS})) || { (($1 == 1)) && echo " (1 run)" || echo " ($1 runs)"; }; }
fsize() { stat -c %s "$1" 2>/dev/null || echo 0; }

# ---- set-up ------------------------------------------------------------------
need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
	local sudo=
	[[ ${BENCH_INSTALL:-1} == 1 ]] || return 1
	if [[ $(id -u) -ne 0 ]]; then
		sudo -n true 2>/dev/null || return 1
		sudo=sudo
	fi
	note "installing from Debian: $*"
	{
		$sudo apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
	} >"$T/apt.log" 2>&1 || { note "apt-get failed (see below)"; tail -n 3 "$T/apt.log" >&2; return 1; }
}

say "== topicfs benchmark suite"
for tool in gcc pkg-config fusermount3 timeout awk; do
	need "$tool" || { say "bench: $tool is missing (run: make deps)"; exit 1; }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/topicfs-bench.XXXXXX")
ROWS=$T/rows.tsv
: >"$ROWS"
mkdir -p "$BIN" "$OUT"

missing=()
if [[ ${BENCH_PEERS:-1} == 1 ]]; then
	need redis-server || missing+=(redis-server)
	need redis-cli || missing+=(redis-tools)
	need nats-server || missing+=(nats-server)
fi
need gnuplot || missing+=(gnuplot-nox)
((${#missing[@]} == 0)) || apt_install "${missing[@]}" || true

say "-- building bench tools into ${BIN#"$root"/}/"
CF=(-std=c17 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror)
read -ra FUSE_CF <<<"$(pkg-config --cflags fuse3)"
read -ra FUSE_LIBS <<<"$(pkg-config --libs fuse3)"
gcc "${CF[@]}" "${FUSE_CF[@]}" -o "$BIN/nullfs" "$here/nullfs.c" "${FUSE_LIBS[@]}"
gcc "${CF[@]}" -o "$BIN/genlog" "$here/genlog.c"
for prog in latency redis_client nats_client; do
	gcc "${CF[@]}" -pthread -o "$BIN/$prog" "$here/$prog.c"
done

DATA=$T/access.log
"$BIN/genlog" -n "$LINES" -s 1 >"$DATA"
BYTES=$(fsize "$DATA")
MB=$(calc '%.1f' "$BYTES / 1e6")
LINE=$(head -n 1 "$DATA")
say "-- data: $LINES synthetic access-log lines, $BYTES bytes ($(calc '%.1f' "$BYTES / $LINES") bytes/line)"

# rates SECS: sets RECS (records/s) and MBPS for the data set.
rates() {
	RECS=$(calc '%.0f' "$LINES / $1")
	MBPS=$(calc '%.0f' "$BYTES / 1e6 / $1")
}

# ---- ceilings: null FUSE and a plain file --------------------------------------
NULL_W='' NULL_R='' NULL_RS='' NULL_A='' PLAIN_W='' PLAIN_R='' PLAIN_A=''
NULLMNT=$T/null
mkdir -p "$NULLMNT"
say "-- ceilings"
"$BIN/nullfs" -f --size="$BYTES" --pattern="$DATA" "$NULLMNT" 2>"$T/nullfs.log" &
PIDS+=($!)
MOUNTS+=("$NULLMNT")
for _ in $(seq 100); do mountpoint -q "$NULLMNT" && break; sleep 0.05; done
if mountpoint -q "$NULLMNT"; then
	ts=()
	for ((r = 1; r <= RUNS; r++)); do run_timed cat_append "$DATA" "$NULLMNT/t/0/log" && ts+=("$SECS"); done
	NULL_W=$(median "${ts[@]}")
	ts=()
	for ((r = 1; r <= RUNS; r++)); do run_timed cat_read "$NULLMNT/data" && ts+=("$SECS"); done
	NULL_R=$(median "${ts[@]}")
	ts=()
	for ((r = 1; r <= RUNS; r++)); do run_timed cat_read "$NULLMNT/small" && ts+=("$SECS"); done
	NULL_RS=$(median "${ts[@]}")
	ts=()
	for ((r = 1; r <= RUNS; r++)); do run_timed appends "$NULLMNT/t/0/log" "$LINE" "$APPENDS" && ts+=("$SECS"); done
	NULL_A=$(median "${ts[@]}")
	# stays mounted: the small-append runs of topicfs alternate with its own
fi
mkdir -p "$T/plain"
ts=() ts2=() ts3=()
for ((r = 1; r <= RUNS; r++)); do
	rm -f "$T/plain/log"
	run_timed cat_append "$DATA" "$T/plain/log" && ts+=("$SECS")
	run_timed cat_read "$T/plain/log" && ts2+=("$SECS")
	run_timed appends "$T/plain/small" "$LINE" "$APPENDS" && ts3+=("$SECS")
done
rm -f "$T/plain/log" "$T/plain/small"
PLAIN_W=$(median "${ts[@]}") PLAIN_R=$(median "${ts2[@]}") PLAIN_A=$(median "${ts3[@]}")

ceiling_row() { # KEY LABEL SECS
	if [[ -z $3 ]]; then na "$1" "$2" "null FUSE mount failed: $(tail -n 1 "$T/nullfs.log")" "—"; return; fi
	rates "$3"
	row "$1" "$2" "$(calc '%.3f' "$3") s" "$(commify "$RECS")" "$MBPS" "1 (ceiling)" "—" "—"
}
ceiling_row c1 "ceiling: null FUSE, cat $MB MB >> t/0/log" "$NULL_W"
ceiling_row c2 "ceiling: null FUSE, cat $MB MB file > /dev/null" "$NULL_R"
if [[ -n $NULL_RS ]]; then
	rates "$NULL_RS"
	row c7 "null FUSE, cat $MB MB file > /dev/null, st_blksize 4 KiB as on cursor and pending (128 KiB requests)" \
		"$(calc '%.3f' "$NULL_RS") s" "$(commify "$RECS")" "$MBPS" "informational" "—" "—"
fi
rates "$PLAIN_W"
row c4 "plain file on the same disk: cat >> file" "$(calc '%.3f' "$PLAIN_W") s" "$(commify "$RECS")" "$MBPS" "—" "—" "—"
rates "$PLAIN_R"
row c5 "plain file on the same disk: cat file > /dev/null" "$(calc '%.3f' "$PLAIN_R") s" "$(commify "$RECS")" "$MBPS" "—" "—" "—"
row c6 "plain file on the same disk: $APPENDS × echo >> file" "$(calc '%.3f' "$PLAIN_A") s" \
	"$(commify "$(calc '%.0f' "$APPENDS / $PLAIN_A")")" "—" "—" "—" "—"
note "null FUSE: write $NULL_W s, read $NULL_R s, $APPENDS appends $NULL_A s; plain file: write $PLAIN_W s, read $PLAIN_R s"

# ---- topicfs -------------------------------------------------------------------
TFS_PID=
TFS_MNT=
TFS_WHY=
# tfs_start NAME: mount a fresh data directory at $T/NAME; sets TFS_PID,
# TFS_MNT, or TFS_WHY on failure.
tfs_start() {
	local name=$1
	TFS_MNT=$T/$name TFS_PID='' TFS_WHY=''
	if [[ ! -x $TOPICFS ]]; then
		TFS_WHY="${TOPICFS#"$root"/} not built"
		return 1
	fi
	mkdir -p "$TFS_MNT" "$T/$name.data"
	"$TOPICFS" -f --data "$T/$name.data" "$TFS_MNT" >"$T/$name.log" 2>&1 &
	TFS_PID=$!
	PIDS+=("$TFS_PID")
	MOUNTS+=("$TFS_MNT")
	for _ in $(seq 200); do
		if mountpoint -q "$TFS_MNT" && ls "$TFS_MNT" >/dev/null 2>&1; then return 0; fi
		if ! kill -0 "$TFS_PID" 2>/dev/null; then
			TFS_WHY="topicfs exited at start: $(tail -n 1 "$T/$name.log" | cut -c1-80)"
			return 1
		fi
		sleep 0.05
	done
	TFS_WHY="topicfs did not mount within 10 s"
	return 1
}
tfs_stop() {
	[[ -n $TFS_PID ]] || return 0
	if mountpoint -q "$TFS_MNT"; then fusermount3 -u "$TFS_MNT" || fusermount3 -uz "$TFS_MNT" || true; fi
	for _ in $(seq 100); do kill -0 "$TFS_PID" 2>/dev/null || break; sleep 0.05; done
	kill -9 "$TFS_PID" 2>/dev/null || true
	wait "$TFS_PID" 2>/dev/null || true
	TFS_PID=
}
# alive: is the daemon still serving? (sets TFS_WHY when not)
alive() {
	if [[ -n $TFS_PID ]] && kill -0 "$TFS_PID" 2>/dev/null && mountpoint -q "$TFS_MNT"; then return 0; fi
	TFS_WHY="topicfs died earlier: $(tail -n 1 "$T/$TFS_NAME.log" 2>/dev/null | cut -c1-80)"
	return 1
}
proc_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; } # PID FIELD

# ratio_row KEY LABEL SECS CEIL TARGET_MIN NRUNS: throughput row vs a ceiling time.
ratio_row() {
	local ratio verdict=— target=—
	rates "$3"
	if [[ -n $4 ]]; then
		ratio=$(calc '%.2f' "$4 / $3")
		if [[ -n $5 ]]; then
			target="≥ $5"
			if ge "$ratio" "$5"; then verdict=PASS; else verdict=FAIL; fi
		fi
	else
		ratio="n.a. (no ceiling)"
		[[ -n $5 ]] && target="≥ $5" && verdict=n.a.
	fi
	row "$1" "$2" "$(calc '%.3f' "$3") s$(runs_note "$6")" "$(commify "$RECS")" "$MBPS" "$ratio" "$target" "$verdict"
}

# produce_bench KEY LABEL TARGET CONFIG FILE: RUNS times, a fresh topic
# configured with CONFIG, cat the data into FILE (relative to the topic);
# checks that the topic holds every byte afterwards.
TFS_PRODUCE_RECS=
produce_bench() {
	local key=$1 label=$2 target=$3 config=$4 file=$5 r topic ts=() tn=() got p row_t0=$EPOCHREALTIME
	for ((r = 1; r <= RUNS; r++)); do
		more "$r" "$row_t0" || break
		alive || { na "$key" "$label" "$TFS_WHY" "${target:+≥ $target}"; return; }
		topic=$TFS_MNT/$key-$r
		if ! try mkdir "$topic"; then na "$key" "$label" "mkdir topic: $ERR" "${target:+≥ $target}"; return; fi
		if [[ -n $config ]] && ! try write_file "$topic/.config" "$config"; then
			na "$key" "$label" "echo '$config' > .config: $ERR" "${target:+≥ $target}"
			return
		fi
		# the null FUSE takes the turn before: the ratio compares the same machine state
		if mountpoint -q "$NULLMNT" && run_timed cat_append "$DATA" "$NULLMNT/t/0/log"; then
			tn+=("$SECS")
		fi
		if ! run_timed cat_append "$DATA" "$topic/$file"; then
			na "$key" "$label" "cat >> $file: $ERR" "${target:+≥ $target}"
			return
		fi
		ts+=("$SECS")
		got=0
		for p in "$topic"/[0-9]*/log; do got=$((got + $(fsize "$p"))); done
		if ((got != BYTES)); then
			row "$key" "$label" "invalid: topic holds $got of $BYTES bytes after produce" "—" "—" "—" \
				"${target:+≥ $target}" FAIL
			return
		fi
		# only run 1 is read later (r1-r3): the others go, so their 100 MB
		# of dirty pages are dropped instead of written back under later rows
		((r == 1)) || rmdir "$topic" 2>/dev/null || true
	done
	((${#ts[@]})) || { na "$key" "$label" "$BUDGET_WHY" "${target:+≥ $target}"; return; }
	SECS=$(median "${ts[@]}")
	local ceil=$NULL_W
	((${#tn[@]} == 0)) || ceil=$(median "${tn[@]}")
	ratio_row "$key" "$label" "$SECS" "$ceil" "$target" "${#ts[@]}"
	[[ $key == p1 ]] && TFS_PRODUCE_RECS=$RECS
	note "$label: median $SECS s, null FUSE alongside $ceil s"
}

# consume_bench KEY LABEL PATH_FMT TOPIC: RUNS times cat TOPIC/PATH > /dev/null,
# PATH_FMT's %d is the run (a fresh group). An untimed run first checks that
# the file gives back every byte; after each timed group run, that group's
# pending must be empty.
TFS_CONSUME_RECS=
consume_bench() {
	local key=$1 label=$2 fmt=$3 topic=$4 r f ts=() tn=() tns=() got row_t0=$EPOCHREALTIME
	more 1 "$row_t0" || { na "$key" "$label" "$BUDGET_WHY" "≥ 0.25"; return; }
	alive || { na "$key" "$label" "$TFS_WHY" "≥ 0.25"; return; }
	[[ -d $topic ]] || { na "$key" "$label" "no topic to read: its produce failed" "≥ 0.25"; return; }
	# shellcheck disable=SC2059
	f=$topic/$(printf "$fmt" 0)
	[[ $fmt == groups/* ]] && { try mkdir -p "$(dirname "$f")" || { na "$key" "$label" "mkdir group: $ERR" "≥ 0.25"; return; }; }
	got=$(timeout --foreground -k 5 "$STEP_TIMEOUT" cat "$f" 2>"$T/step.err" | wc -c) || true
	if ((got != BYTES)); then
		if ((got == 0)); then
			na "$key" "$label" "cat ${f#"$topic"/}: $(tail -n 1 "$T/step.err" | sed 's/^[^:]*: //' | cut -c1-80)" "≥ 0.25"
		else
			row "$key" "$label" "invalid: read $got of $BYTES bytes" "—" "—" "—" "≥ 0.25" FAIL
		fi
		return
	fi
	row_t0=$EPOCHREALTIME
	for ((r = 1; r <= RUNS; r++)); do
		more "$r" "$row_t0" || break
		# shellcheck disable=SC2059
		f=$topic/$(printf "$fmt" "$r")
		if [[ $fmt == groups/* ]] && ! try mkdir -p "$(dirname "$f")"; then
			na "$key" "$label" "mkdir group: $ERR" "≥ 0.25"
			return
		fi
		if mountpoint -q "$NULLMNT" && run_timed cat_read "$NULLMNT/data"; then
			tn+=("$SECS")
		fi
		if [[ $fmt == groups/* ]] && mountpoint -q "$NULLMNT" && run_timed cat_read "$NULLMNT/small"; then
			tns+=("$SECS")
		fi
		if ! run_timed cat_read "$f"; then na "$key" "$label" "cat ${f#"$topic"/}: $ERR" "≥ 0.25"; return; fi
		ts+=("$SECS")
		if [[ $fmt == groups/* ]]; then
			got=$(timeout --foreground -k 5 "$STEP_TIMEOUT" cat "$f" 2>/dev/null | wc -c) || true
			if ((got != 0)); then
				row "$key" "$label" "invalid: $got bytes still pending after cat" "—" "—" "—" "≥ 0.25" FAIL
				return
			fi
		fi
	done
	((${#ts[@]})) || { na "$key" "$label" "$BUDGET_WHY" "≥ 0.25"; return; }
	SECS=$(median "${ts[@]}")
	local ceil=$NULL_R small=''
	((${#tn[@]} == 0)) || ceil=$(median "${tn[@]}")
	if ((${#tns[@]})); then
		small=$(median "${tns[@]}")
		label="$label; $(calc '%.2f' "$small / $SECS") of c7 alongside"
	fi
	ratio_row "$key" "$label" "$SECS" "$ceil" 0.25 "${#ts[@]}"
	[[ $key == r1 ]] && TFS_CONSUME_RECS=$RECS
	note "$label: median $SECS s, null FUSE alongside $ceil s${small:+, in 128 KiB requests $small s}"
}

say "-- topicfs"
TFS_PEAK_KIB=
TFS_NAME=tfs
if tfs_start tfs; then
	note "mounted ${TOPICFS#"$root"/} (pid $TFS_PID)"
	produce_bench p1 "produce: cat $MB MB >> t/0/log, compression zstd" 0.15 "compression: zstd" 0/log
	produce_bench p2 "produce: cat $MB MB >> t/0/log, compression none" 0.25 "compression: none" 0/log
	alive && TFS_PEAK_KIB=$(proc_kib "$TFS_PID" VmHWM)
	produce_bench p3 "produce: cat $MB MB >> t/access.log (producer file, 6 partitions)" "" "partitions: 6" access.log

	# small appends
	lbl="small appends: $APPENDS × echo line >> t/0/log (bash)"
	if ! alive; then
		na s1 "$lbl" "$TFS_WHY" "≤ 2×"
	elif ! try mkdir "$TFS_MNT/small"; then
		na s1 "$lbl" "mkdir topic: $ERR" "≤ 2×"
	else
		ts=() tn=() why='' row_t0=$EPOCHREALTIME
		for ((r = 1; r <= APPEND_RUNS; r++)); do
			more "$r" "$row_t0" || { ((r > 1)) || why=$BUDGET_WHY; break; }
			# null FUSE and topicfs take turns, so both see the same machine state
			if mountpoint -q "$NULLMNT" && run_timed appends "$NULLMNT/t/0/log" "$LINE" "$APPENDS"; then
				tn+=("$SECS")
			fi
			before=$(fsize "$TFS_MNT/small/0/log")
			if ! run_timed appends "$TFS_MNT/small/0/log" "$LINE" "$APPENDS"; then why="echo >> log: $ERR"; break; fi
			ts+=("$SECS")
			after=$(fsize "$TFS_MNT/small/0/log")
			if ((after - before != APPENDS * (${#LINE} + 1))); then
				why="invalid: log grew by $((after - before)), want $((APPENDS * (${#LINE} + 1))) bytes"
				break
			fi
		done
		if [[ $why == invalid* ]]; then
			row s1 "$lbl" "$why" "—" "—" "—" "≤ 2×" FAIL
		elif [[ -n $why ]]; then
			na s1 "$lbl" "$why" "≤ 2×"
		else
			SECS=$(median "${ts[@]}")
			((${#tn[@]} == 0)) || NULL_A=$(median "${tn[@]}")
			if [[ -n $NULL_A ]]; then
				x=$(calc '%.2f' "$SECS / $NULL_A")
				if ge 2 "$x"; then v=PASS; else v=FAIL; fi
				x="${x}× null time"
			else
				x="n.a. (no ceiling)" v=n.a.
			fi
			row s1 "$lbl" "$(calc '%.3f' "$SECS") s ($(calc '%.0f' "$SECS / $APPENDS * 1e6") µs each)$(runs_note "${#ts[@]}" "$APPEND_RUNS")" \
				"$(commify "$(calc '%.0f' "$APPENDS / $SECS")")" "—" "$x" "≤ 2×" "$v"
			note "$lbl: median $SECS s"
		fi
	fi

	consume_bench r1 "consume: cat t/groups/g/pending > /dev/null (zstd topic)" "groups/g%d/pending" "$TFS_MNT/p1-1"
	consume_bench r2 "consume: cat t/0/log > /dev/null (zstd topic)" "0/log" "$TFS_MNT/p1-1"
	consume_bench r3 "consume: cat t/0/log > /dev/null (uncompressed topic)" "0/log" "$TFS_MNT/p2-1"

	# latency
	lbl="latency write() on log → blocked cursor read, 1 node"
	if ! more 1 "$EPOCHREALTIME"; then
		na l1 "$lbl p50" "$BUDGET_WHY" "—"
		na l2 "$lbl p99" "$BUDGET_WHY" "≤ 1 ms"
	elif ! alive; then
		na l1 "$lbl p50" "$TFS_WHY" "—"
		na l2 "$lbl p99" "$TFS_WHY" "≤ 1 ms"
	elif ! try mkdir "$TFS_MNT/lat"; then
		na l1 "$lbl p50" "mkdir topic: $ERR" "—"
		na l2 "$lbl p99" "mkdir topic: $ERR" "≤ 1 ms"
	elif out=$(timeout --foreground -k 5 60 "$BIN/latency" "$TFS_MNT/lat" "$LAT_SAMPLES" 3000 50 2>"$T/step.err"); then
		p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$out")
		p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$out")
		pmax=$(sed -n 's/.*max_us=\([0-9.]*\).*/\1/p' <<<"$out")
		row l1 "$lbl p50 ($LAT_SAMPLES samples)" "$p50 µs" "—" "—" "—" "—" "—"
		if ge 1000 "$p99"; then v=PASS; else v=FAIL; fi
		row l2 "$lbl p99 ($LAT_SAMPLES samples, max $pmax µs)" "$p99 µs" "—" "—" "—" "≤ 1 ms" "$v"
		note "latency: $out"
	else
		why=$(tail -n 1 "$T/step.err" | sed 's/^latency: //' | cut -c1-100)
		[[ -n $why ]] || why="timed out"
		na l1 "$lbl p50" "$why" "—"
		na l2 "$lbl p99" "$why" "≤ 1 ms"
	fi
	tfs_stop
else
	na p1 "produce: cat $MB MB >> t/0/log, compression zstd" "$TFS_WHY" "≥ 0.15"
	na p2 "produce: cat $MB MB >> t/0/log, compression none" "$TFS_WHY" "≥ 0.25"
	na p3 "produce: cat $MB MB >> t/access.log (producer file, 6 partitions)" "$TFS_WHY" "—"
	na s1 "small appends: $APPENDS × echo line >> t/0/log (bash)" "$TFS_WHY" "≤ 2×"
	na r1 "consume: cat t/groups/g/pending > /dev/null (zstd topic)" "$TFS_WHY" "≥ 0.25"
	na r2 "consume: cat t/0/log > /dev/null (zstd topic)" "$TFS_WHY" "≥ 0.25"
	na r3 "consume: cat t/0/log > /dev/null (uncompressed topic)" "$TFS_WHY" "≥ 0.25"
	na l1 "latency write() on log → blocked cursor read, 1 node p50" "$TFS_WHY" "—"
	na l2 "latency write() on log → blocked cursor read, 1 node p99" "$TFS_WHY" "≤ 1 ms"
	note "topicfs rows n.a.: $TFS_WHY"
fi
if mountpoint -q "$NULLMNT"; then fusermount3 -u "$NULLMNT" || true; fi
if [[ -n $NULL_A ]]; then
	row c3 "ceiling: null FUSE, $APPENDS × echo >> t/0/log" "$(calc '%.3f' "$NULL_A") s" \
		"$(commify "$(calc '%.0f' "$APPENDS / $NULL_A")")" "—" "1 (ceiling)" "—" "—"
else
	na c3 "ceiling: null FUSE, $APPENDS × echo >> t/0/log" "null FUSE mount failed" "—"
fi
# ---- topicfs, 3 nodes ------------------------------------------------------------
# Three daemons on 127.0.0.1..3 (one port number, each on its own address),
# defaults replication 3, one partition; topics with acks: all. p4 times the
# same cat of the data set into t/0/log on the partition leader's mount; l3
# runs latency.c writing on the leader's mount and reading the cursor on a
# follower's mount. Rows stay n.a. with the reason if the cluster does not form.
CL_PIDS=() CL_M=() CL_WHY=''
cl_port() { # a port free on 127.0.0.1..3
	python3 -c '
import random, socket, sys
for _ in range(200):
    port, socks = random.randint(20000, 60000), []
    try:
        for i in (1, 2, 3):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.%d" % i, port))
        print(port); sys.exit(0)
    except OSError:
        pass
    finally:
        for s in socks: s.close()
sys.exit(1)'
}
# cl_formed: every mount lists 3 nodes up and the same one quorum leader.
cl_formed() {
	local i q='' l
	for i in 1 2 3; do
		[[ $(awk -F '\t' '$3 == "up"' "${CL_M[i]}/.cluster/nodes" 2>/dev/null | wc -l) == 3 ]] || return 1
		l=$(awk -F '\t' '$4 == "leader" { print $1 }' "${CL_M[i]}/.cluster/nodes" 2>/dev/null)
		[[ $l =~ ^[0-9]+$ && ( -z $q || $q == "$l" ) ]] || return 1
		q=$l
	done
}
cl_alive() {
	local i
	for i in 1 2 3; do
		if ! kill -0 "${CL_PIDS[i]}" 2>/dev/null || ! mountpoint -q "${CL_M[i]}"; then
			CL_WHY="node $i died: $(tail -n 1 "$T/cl/n$i.log" 2>/dev/null | cut -c1-80)"
			return 1
		fi
	done
}
cl_start() {
	local i port voters='' k
	CL_WHY=''
	if [[ ! -x $TOPICFS ]]; then CL_WHY="${TOPICFS#"$root"/} not built"; return 1; fi
	port=$(cl_port) || { CL_WHY="no free port on 127.0.0.1-3"; return 1; }
	for i in 1 2 3; do voters+="    - $i@127.0.0.$i:$port"$'\n'; done
	for i in 1 2 3; do
		CL_M[i]=$T/cl/m$i
		mkdir -p "${CL_M[i]}" "$T/cl/d$i"
		printf 'node:\n  id: %d\n  data_dir: %s\n  listen: 127.0.0.%d:%d\ncluster:\n  voters:\n%sdefaults:\n  partitions: 1\n  replication: 3\n' \
			"$i" "$T/cl/d$i" "$i" "$port" "$voters" >"$T/cl/n$i.yaml"
	done
	for i in 1 2 3; do
		"$TOPICFS" -f -c "$T/cl/n$i.yaml" "${CL_M[i]}" >"$T/cl/n$i.log" 2>&1 &
		CL_PIDS[i]=$!
		PIDS+=("${CL_PIDS[i]}")
		MOUNTS+=("${CL_M[i]}")
	done
	for ((k = 0; k < 600; k++)); do # 30 s
		cl_formed && return 0
		for i in 1 2 3; do
			if ! kill -0 "${CL_PIDS[i]}" 2>/dev/null; then
				CL_WHY="node $i exited at start: $(tail -n 1 "$T/cl/n$i.log" | cut -c1-80)"
				return 1
			fi
		done
		sleep 0.05
	done
	CL_WHY="the 3-node cluster did not form within 30 s"
	for i in 1 2 3; do
		mountpoint -q "${CL_M[i]}" || { CL_WHY+=" (node $i not mounted)"; break; }
		CL_WHY+=" (node $i lists $(awk -F '\t' '$3 == "up"' "${CL_M[i]}/.cluster/nodes" 2>/dev/null | wc -l) up)"
		break
	done
	return 1
}
cl_stop() {
	local i
	for i in 1 2 3; do
		[[ -n ${CL_M[i]:-} ]] && mountpoint -q "${CL_M[i]}" && { fusermount3 -u "${CL_M[i]}" || fusermount3 -uz "${CL_M[i]}" || true; }
	done
	for i in 1 2 3; do
		[[ -n ${CL_PIDS[i]:-} ]] || continue
		for _ in $(seq 100); do kill -0 "${CL_PIDS[i]}" 2>/dev/null || break; sleep 0.05; done
		kill -9 "${CL_PIDS[i]}" 2>/dev/null || true
		wait "${CL_PIDS[i]}" 2>/dev/null || true
	done
}
# cl_topic NAME: make topic NAME (acks: all) on node 1 and wait up to 10 s
# until its partition 0 has a leader and all three replicas in sync; sets
# CL_LEADER and CL_FOLLOWER (node numbers).
CL_LEADER='' CL_FOLLOWER=''
cl_topic() {
	local name=$1 k isr i
	try mkdir "${CL_M[1]}/$name" || { CL_WHY="mkdir topic: $ERR"; return 1; }
	try write_file "${CL_M[1]}/$name/.config" $'compression: zstd\nacks: all' ||
		{ CL_WHY="echo 'acks: all' > .config: $ERR"; return 1; }
	for ((k = 0; k < 200; k++)); do
		CL_LEADER=$(sed -n 's/^leader: *//p' "${CL_M[1]}/$name/0/state" 2>/dev/null)
		isr=$(sed -n 's/^isr: *//p' "${CL_M[1]}/$name/0/state" 2>/dev/null | tr -cd '0-9\n ,' | tr ',' ' ' | wc -w)
		if [[ $CL_LEADER =~ ^[123]$ && $isr == 3 && -d ${CL_M[2]}/$name/0 && -d ${CL_M[3]}/$name/0 ]]; then
			for i in 1 2 3; do [[ $i == "$CL_LEADER" ]] || { CL_FOLLOWER=$i; break; }; done
			return 0
		fi
		sleep 0.05
	done
	CL_WHY="topic $name: no leader with 3 in-sync replicas within 10 s"
	return 1
}

say "-- topicfs, 3 nodes"
lbl_p4="produce, 3 nodes (acks: all, replication 3): cat $MB MB >> t/0/log on the leader's mount"
lbl_l3="latency write() on the leader's mount → blocked cursor read on a follower's mount, 3 nodes, acks: all"
if ! more 1 "$EPOCHREALTIME"; then
	na p4 "$lbl_p4" "$BUDGET_WHY" "—"
	na l3 "$lbl_l3 p99" "$BUDGET_WHY" "≤ 5 ms"
elif ! cl_start; then
	na p4 "$lbl_p4" "$CL_WHY" "—"
	na l3 "$lbl_l3 p99" "$CL_WHY" "≤ 5 ms"
	note "3-node rows n.a.: $CL_WHY"
	cl_stop
else
	note "3 nodes formed (pids ${CL_PIDS[*]})"
	# produce
	ts=() why='' row_t0=$EPOCHREALTIME
	for ((r = 1; r <= RUNS; r++)); do
		more "$r" "$row_t0" || { ((r > 1)) || why=$BUDGET_WHY; break; }
		cl_alive || { why=$CL_WHY; break; }
		cl_topic "p4-$r" || { why=$CL_WHY; break; }
		if ! run_timed cat_append "$DATA" "${CL_M[CL_LEADER]}/p4-$r/0/log"; then why="cat >> log: $ERR"; break; fi
		ts+=("$SECS")
		# the same loss check as p1: every byte committed, on every node
		for i in 1 2 3; do
			for _ in $(seq 200); do (($(fsize "${CL_M[i]}/p4-$r/0/log") >= BYTES)) && break; sleep 0.05; done
			got=$(fsize "${CL_M[i]}/p4-$r/0/log")
			if ((got != BYTES)); then why="invalid: node $i holds $got of $BYTES bytes after produce"; break 2; fi
		done
	done
	if [[ $why == invalid* ]]; then
		row p4 "$lbl_p4" "$why" "—" "—" "—" "—" FAIL
	elif ((${#ts[@]} == 0)); then
		na p4 "$lbl_p4" "$why" "—"
	else
		SECS=$(median "${ts[@]}")
		rates "$SECS"
		x="n.a. (no ceiling)"
		[[ -z $NULL_W ]] || x=$(calc '%.2f' "$NULL_W / $SECS")
		[[ -z $TFS_PRODUCE_RECS ]] || x+=" ($(calc '%.2f' "$RECS / $TFS_PRODUCE_RECS")× 1-node p1)"
		row p4 "$lbl_p4" "$(calc '%.3f' "$SECS") s$(runs_note "${#ts[@]}")" "$(commify "$RECS")" "$MBPS" "$x" "—" "—"
		note "$lbl_p4: median $SECS s"
		[[ -z $why ]] || note "p4 stopped early: $why"
	fi
	# latency
	if ! more 1 "$EPOCHREALTIME"; then
		na l3 "$lbl_l3 p99" "$BUDGET_WHY" "≤ 5 ms"
	elif ! cl_alive; then
		na l3 "$lbl_l3 p99" "$CL_WHY" "≤ 5 ms"
	elif ! cl_topic lat; then
		na l3 "$lbl_l3 p99" "$CL_WHY" "≤ 5 ms"
	elif out=$(timeout --foreground -k 5 60 "$BIN/latency" "${CL_M[CL_LEADER]}/lat" "$LAT_SAMPLES" 3000 50 \
		"${CL_M[CL_FOLLOWER]}/lat" 2>"$T/step.err"); then
		p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$out")
		p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$out")
		pmax=$(sed -n 's/.*max_us=\([0-9.]*\).*/\1/p' <<<"$out")
		if ge 5000 "$p99"; then v=PASS; else v=FAIL; fi
		row l3 "$lbl_l3 p99 ($LAT_SAMPLES samples, p50 $p50 µs, max $pmax µs)" "$p99 µs" "—" "—" "—" "≤ 5 ms" "$v"
		note "3-node latency (write on node $CL_LEADER, read on node $CL_FOLLOWER): $out"
	else
		why=$(tail -n 1 "$T/step.err" | sed 's/^latency: //' | cut -c1-100)
		[[ -n $why ]] || why="timed out"
		na l3 "$lbl_l3 p99" "$why" "≤ 5 ms"
	fi
	cl_stop
fi

# memory: a fresh daemon with 100 topics × 10 partitions, then idle
lbl="memory: daemon RSS idle, 100 topics × 10 partitions"
TFS_NAME=tfsmem
if ! more 1 "$EPOCHREALTIME"; then
	na m1 "$lbl" "$BUDGET_WHY" "≤ 64 MiB"
elif tfs_start tfsmem; then
	why=
	for ((i = 0; i < 100; i++)); do
		t=$(printf '%s/m%03d' "$TFS_MNT" "$i")
		try mkdir "$t" || { why="mkdir topic: $ERR"; break; }
		try write_file "$t/.config" "partitions: 10" || { why="echo 'partitions: 10' > .config: $ERR"; break; }
	done
	nparts=$(find "$TFS_MNT"/m0[0-9][0-9] -mindepth 1 -maxdepth 1 -name '[0-9]*' -type d 2>/dev/null | wc -l) || true
	if [[ -z $why ]] && ((nparts != 1000)); then why="expected 1000 partition directories, found $nparts"; fi
	if [[ -n $why ]]; then
		na m1 "$lbl" "$why" "≤ 64 MiB"
	else
		sleep 3
		kib=$(proc_kib "$TFS_PID" VmRSS)
		if [[ -z $kib ]]; then
			na m1 "$lbl" "daemon gone" "≤ 64 MiB"
		else
			if ((kib <= 64 * 1024)); then v=PASS; else v=FAIL; fi
			row m1 "$lbl" "$(calc '%.1f' "$kib / 1024") MiB" "—" "—" "—" "≤ 64 MiB" "$v"
		fi
	fi
	tfs_stop
else
	na m1 "$lbl" "$TFS_WHY" "≤ 64 MiB"
fi
if [[ -n $TFS_PEAK_KIB ]]; then
	row m2 "memory: daemon peak RSS (VmHWM) through the produce runs (p1, p2)" \
		"$(calc '%.1f' "$TFS_PEAK_KIB / 1024") MiB" "—" "—" "—" "—" "—"
else
	na m2 "memory: daemon peak RSS (VmHWM) through the produce runs (p1, p2)" "${TFS_WHY:-produce not measured}" "—"
fi

# ---- peers ----------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

REDIS_P='' REDIS_C='' NATS_P='' NATS_C=''
# peer_bench NAME CLIENT PORT KEYPREFIX: PEER_RUNS times produce then consume;
# sets PEER_P / PEER_C (median records/s) or PEER_WHY.
peer_bench() {
	local name=$1 client=$2 port=$3 prefix=$4 r out ps=() cs=() row_t0=$EPOCHREALTIME
	PEER_P='' PEER_C='' PEER_WHY=''
	for ((r = 1; r <= PEER_RUNS; r++)); do
		# peers are steady: only the suite budget cuts their runs short
		more 1 "$row_t0" || { ((r > 1)) || { PEER_WHY=$BUDGET_WHY; return 1; }; break; }
		if ! out=$(timeout --foreground -k 5 "$STEP_TIMEOUT" "$BIN/$client" 127.0.0.1 "$port" "$DATA" produce "$prefix$r" 2>"$T/step.err"); then
			PEER_WHY="produce: $(tail -n 1 "$T/step.err" | cut -c1-80)"
			return 1
		fi
		ps+=("$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")")
		if ! out=$(timeout --foreground -k 5 "$STEP_TIMEOUT" "$BIN/$client" 127.0.0.1 "$port" "$DATA" consume "$prefix$r" 2>"$T/step.err"); then
			PEER_WHY="consume: $(tail -n 1 "$T/step.err" | cut -c1-80)"
			return 1
		fi
		cs+=("$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")")
		[[ $name != redis ]] || redis-cli -p "$port" DEL "$prefix$r" >/dev/null 2>&1 || true
	done
	PEER_P=$(median "${ps[@]}")
	PEER_C=$(median "${cs[@]}")
	note "$name: produce median $PEER_P s, consume median $PEER_C s"
}
peer_rows() { # KEY NAME WHAT
	if [[ -n $PEER_P ]]; then
		rates "$PEER_P"
		row "${1}p" "peer: $2 produce ($3)" "$(calc '%.3f' "$PEER_P") s" "$(commify "$RECS")" "$MBPS" "—" "—" "—"
		rates "$PEER_C"
		row "${1}c" "peer: $2 consume ($4)" "$(calc '%.3f' "$PEER_C") s" "$(commify "$RECS")" "$MBPS" "—" "—" "—"
	else
		na "${1}p" "peer: $2 produce ($3)" "$PEER_WHY" "—"
		na "${1}c" "peer: $2 consume ($4)" "$PEER_WHY" "—"
	fi
}

if [[ ${BENCH_PEERS:-1} == 1 ]]; then
	say "-- peers"
	PEER_P='' PEER_C='' PEER_WHY=''
	if ! need redis-server || ! need redis-cli; then
		PEER_WHY="redis-server not installed"
	else
		port=$(free_port)
		mkdir -p "$T/redis"
		redis-server --bind 127.0.0.1 --port "$port" --dir "$T/redis" --save '' \
			--appendonly yes --appendfsync everysec --maxmemory 4gb --daemonize no \
			>"$T/redis.log" 2>&1 &
		PIDS+=($!)
		rpid=$!
		for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
		if redis-cli -p "$port" ping >/dev/null 2>&1; then
			peer_bench redis redis_client "$port" bench || true
			REDIS_V=$(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
		else
			PEER_WHY="redis-server did not start: $(tail -n 1 "$T/redis.log" | cut -c1-80)"
		fi
		kill "$rpid" 2>/dev/null || true
	fi
	peer_rows x "Redis ${REDIS_V:-} Streams" "XADD pipelined, 1000/batch, AOF everysec" "XRANGE COUNT 10000"
	REDIS_P=$PEER_P REDIS_C=$PEER_C

	PEER_P='' PEER_C='' PEER_WHY=''
	if ! need nats-server; then
		PEER_WHY="nats-server not installed"
	else
		port=$(free_port)
		mkdir -p "$T/nats"
		nats-server -a 127.0.0.1 -p "$port" -js -sd "$T/nats" >"$T/nats.log" 2>&1 &
		PIDS+=($!)
		npid=$!
		for _ in $(seq 100); do port_open "$port" && break; sleep 0.05; done
		if port_open "$port"; then
			peer_bench nats nats_client "$port" BENCH || true
			NATS_V=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9.]*\).*/\1/p')
		else
			PEER_WHY="nats-server did not start: $(tail -n 1 "$T/nats.log" | cut -c1-80)"
		fi
		kill "$npid" 2>/dev/null || true
	fi
	peer_rows n "NATS ${NATS_V:-} JetStream" "file storage, PUB with ack, 8000 in flight" "pull consumer, batch 1000, ack all"
	NATS_P=$PEER_P NATS_C=$PEER_C
fi

# topicfs vs peers: produce (p1, zstd) and consume (r1, group pending).
vs_row() { # KEY LABEL TOPICFS_RECS PEER_SECS PEER_NAME
	local peer_recs
	if [[ ${BENCH_PEERS:-1} != 1 ]]; then na "$1" "$2" "peers skipped (BENCH_PEERS=0)" "ahead"; return; fi
	if [[ -z $4 ]]; then na "$1" "$2" "$5 not measured" "ahead"; return; fi
	peer_recs=$(calc '%.0f' "$LINES / $4")
	if [[ -z $3 ]]; then na "$1" "$2" "topicfs not measured" "ahead"; return; fi
	if gt "$3" "$peer_recs"; then v=PASS; else v=FAIL; fi
	row "$1" "$2" "$(commify "$3") vs $(commify "$peer_recs") records/s" "—" "—" \
		"$(calc '%.2f' "$3 / $peer_recs")× $5" "ahead" "$v"
}
vs_row v1 "topicfs produce (p1) vs Redis Streams produce" "$TFS_PRODUCE_RECS" "$REDIS_P" Redis
vs_row v2 "topicfs produce (p1) vs NATS JetStream produce" "$TFS_PRODUCE_RECS" "$NATS_P" NATS
vs_row v3 "topicfs consume (r1) vs Redis Streams consume" "$TFS_CONSUME_RECS" "$REDIS_C" Redis
vs_row v4 "topicfs consume (r1) vs NATS JetStream consume" "$TFS_CONSUME_RECS" "$NATS_C" NATS

# ---- report ----------------------------------------------------------------------
ORDER="c1 c2 c7 c3 c4 c5 c6 p1 p2 p3 p4 s1 r1 r2 r3 l1 l2 l3 m1 m2 xp xc np nc v1 v2 v3 v4"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
elapsed=$(calc '%.0f' "$EPOCHREALTIME - $suite_t0")
md=$T/report.md
{
	echo "# topicfs benchmark — $stamp"
	echo
	echo "commit $commit; $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
		"kernel $(uname -r); data: $LINES access-log lines, $BYTES bytes;" \
		"median of $RUNS runs (peers: $PEER_RUNS); suite took ${elapsed} s."
	echo "\"vs ceiling\" = null-FUSE time / topicfs time (1 = as fast as a filesystem that does nothing)." \
		"In p1-p3, s1 and r1-r3 the null-FUSE runs take turns with the row's own runs, so both see the" \
		"same machine state; c1-c3 are the medians from the start of the suite."
	echo
	echo "| # | measurement | median | records/s | MB/s | vs ceiling | target | verdict |"
	echo "|---|---|---|---|---|---|---|---|"
	awk -F'\t' -v order="$ORDER" '
		BEGIN { n = split(order, o, " ") }
		{ line[$1] = sprintf("| %s | %s | %s | %s | %s | %s | %s | %s |", $1, $2, $3, $4, $5, $6, $7, $8) }
		END { for (i = 1; i <= n; i++) if (o[i] in line) print line[o[i]] }' "$ROWS"
} >"$md"

# chart: fraction of the ceiling per row with its target, and records/s vs peers
png=
if need gnuplot; then
	# ceiling.dat: x, label, fraction of ceiling (0 if n.a.), target, text
	awk -F'\t' '
		BEGIN { n["p1"] = "produce\\nzstd"; n["p2"] = "produce\\nnone"; n["p3"] = "producer file\\n6 parts"
			n["s1"] = "small\\nappends"; n["r1"] = "consume\\npending"
			n["r2"] = "read log\\nzstd"; n["r3"] = "read log\\nnone" }
		$1 in n {
			v = $6; t = $7
			if ($1 == "s1") { sub(/×.*/, "", v); if (v ~ /^[0-9.]+$/ && v > 0) v = sprintf("%.2f", 1 / v); t = "0.5" }
			sub(/^≥ /, "", t); if (t !~ /^[0-9.]+$/) t = "?"
			txt = v; if (v !~ /^[0-9.]+$/) { v = 0; txt = ($8 == "FAIL") ? "invalid" : "n.a." }
			printf "%d \"%s\" %s %s \"%s\"\n", x++, n[$1], v, t, txt }' "$ROWS" >"$T/ceiling.dat"
	# peers.dat: three blocks (topicfs, Redis, NATS): x, million records/s, text
	pblock() { # X0 PRODUCE_RECS CONSUME_RECS
		local x=$1 v
		for v in "$2" "$3"; do
			if [[ -n $v ]]; then echo "$x $(calc '%.3f' "$v / 1e6") \"$(calc '%.2f' "$v / 1e6")\""
			else echo "$x 0 \"n.a.\""; fi
			x=$((x + 4))
		done
		printf '\n\n'
	}
	rs() { [[ -z $1 ]] || calc '%.0f' "$LINES / $1"; }
	{
		pblock 0 "$TFS_PRODUCE_RECS" "$TFS_CONSUME_RECS"
		pblock 1 "$(rs "$REDIS_P")" "$(rs "$REDIS_C")"
		pblock 2 "$(rs "$NATS_P")" "$(rs "$NATS_C")"
	} >"$T/peers.dat"
	if gnuplot -e "ceiling='$T/ceiling.dat'; peers='$T/peers.dat'; out='$T/chart.png'; title='topicfs bench $stamp ($commit)'" \
		"$here/plot.gp" 2>"$T/gnuplot.err"; then
		png=$T/chart.png
	else
		note "gnuplot failed: $(tail -n 1 "$T/gnuplot.err")"
	fi
else
	note "gnuplot not installed: no chart"
fi

cp "$md" "$OUT/$stamp.md"
cp "$md" "$OUT/latest.md"
cp "$ROWS" "$OUT/latest.tsv"
if [[ -n $png ]]; then
	cp "$png" "$OUT/$stamp.png"
	cp "$png" "$OUT/latest.png"
	printf '\n![chart](%s.png)\n' "$stamp" >>"$OUT/$stamp.md"
	printf '\n![chart](latest.png)\n' >>"$OUT/latest.md"
fi
echo
cat "$md"
echo
say "results: ${OUT#"$root"/}/$stamp.md${png:+ and $stamp.png} (also latest.*)"
