#!/usr/bin/env bats
# shippers.bats - real log shippers writing producer files through the mount
# (INTERFACE.md 3, 4): nginx access_log, rsyslog omfile, syslog-ng file(),
# and logrotate rotating under a continuous writer. Every shipper runs with a
# private configuration, pid file, socket or 127.0.0.1 high port and work
# directory under $T, in the foreground in the background, and is stopped in
# teardown before the mount goes away. The system's own syslog and nginx
# services are never touched.
#
# Every test checks the same thing: each line the shipper was asked to log is
# exactly one whole record across the topic's partitions, before and after a
# rename + reopen (the rotation the shipper's own signal drives).

load helper

# the helper's teardown, called after the shippers are stopped
eval "$(declare -f teardown | sed '1s/^teardown/tfs_teardown/')"

setup() {
	tfs_setup
	SHIP_PIDS=()
}

teardown() {
	local p
	for p in "${SHIP_PIDS[@]}"; do stop_pid "$p"; done
	tfs_teardown
}

# ---- helpers for this file --------------------------------------------------

# need CMD...: skip unless every CMD is installed.
need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || skip "$c is not installed (tests/install-deps.sh installs it)"
	done
}

# ship_track PID: stop PID (TERM, then KILL after 10 s) in teardown.
ship_track() {
	SHIP_PIDS+=("$1")
}

# stop_pid PID: SIGTERM PID and wait for it to exit (SIGKILL after 10 s).
stop_pid() {
	kill -0 "$1" 2>/dev/null || return 0
	kill -TERM "$1" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# free_port: a currently unused TCP port on 127.0.0.1 (high range).
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# records TOPIC: every record of every partition of TOPIC.
records() {
	all_records "$1"
}

# wait_records TOPIC N: wait until TOPIC holds at least N records.
wait_records() {
	wait_until "[[ \$(all_records $1 | wc -l) -ge $2 ]]"
}

# assert_each_once TOPIC REGEX PREFIX FIRST LAST: every record of TOPIC is a
# whole line matching REGEX (nothing partial, nothing else), and the tokens
# PREFIX<i> (i = FIRST..LAST, delimited by a non-digit) occur once each.
assert_each_once() {
	local topic=$1 re=$2 prefix=$3 first=$4 last=$5
	records "$topic" >"$T/got"
	run env LC_ALL=C grep -c -v -E -- "$re" "$T/got"
	[[ $output == 0 ]] || {
		echo "records that are not whole lines of the expected format:"
		LC_ALL=C grep -v -E -- "$re" "$T/got" | head -n 5
		false
	}
	diff <(seq "$first" "$last" | sed "s/^/$prefix/") \
		<(grep -o -E -- "$prefix[0-9]+" "$T/got" | sort -t "${prefix: -1}" -k2,2n)
	[[ $(wc -l <"$T/got") == $((last - first + 1)) ]] || {
		echo "$(wc -l <"$T/got") records for $((last - first + 1)) messages"
		false
	}
}

# ---- nginx ------------------------------------------------------------------

# nginx_conf ACCESS_LOG_DIRECTIVE: a private nginx.conf in $T serving
# 127.0.0.1:$PORT; sets NGX_CONF, NGX_ARGS.
nginx_conf() {
	PORT=$(free_port)
	# the workers (user nobody) reopen the logs: let them reach them
	chmod 0711 "$T"
	mkdir -p "$T/nginx"
	NGX_CONF=$T/nginx/nginx.conf
	cat >"$NGX_CONF" <<-EOF
		daemon off;
		master_process on;
		worker_processes 2;
		pid $T/nginx/nginx.pid;
		error_log $T/nginx/error.log info;
		events { worker_connections 64; }
		http {
		    client_body_temp_path $T/nginx/body;
		    proxy_temp_path $T/nginx/proxy;
		    fastcgi_temp_path $T/nginx/fastcgi;
		    uwsgi_temp_path $T/nginx/uwsgi;
		    scgi_temp_path $T/nginx/scgi;
		    log_format simple '\$remote_addr [\$time_iso8601] "\$request" \$status \$body_bytes_sent "\$http_user_agent"';
		    $1
		    server {
		        listen 127.0.0.1:$PORT;
		        location / { return 200 "ok\n"; }
		    }
		}
	EOF
	NGX_ARGS=(-p "$T/nginx" -e "$T/nginx/error.log" -c "$NGX_CONF")
}

nginx_start() {
	nginx "${NGX_ARGS[@]}" 3>&- &
	NGX_PID=$!
	ship_track "$NGX_PID"
	wait_until "curl -sf -o /dev/null http://127.0.0.1:$PORT/ready"
}

# requests FIRST LAST: GET /req/<i> for i = FIRST..LAST (one curl, keep-alive)
requests() {
	curl -sf "http://127.0.0.1:$PORT/req/[$1-$2]" >/dev/null
}

NGX_RE='^127\.0\.0\.1 \[[0-9T:+-]+\] "GET /(ready|req/[0-9]+) HTTP/1\.1" 200 3 "curl/[^"]+"$'

# nginx_rotation MOUNT_OPTS: 50 requests, rename + nginx -s reopen, 50 more:
# 100 whole records, each once, and nginx logged no failure.
nginx_rotation() {
	need nginx curl
	tfs_start -o "$1"
	mk_topic web 'partitions: 3'
	nginx_conf "access_log $MNT/web/access.log simple;"
	nginx_start
	# the readiness probe is logged too: the topic's first record
	wait_records web 1
	requests 1 50
	wait_records web 51
	sleep 0.3 # a late duplicate would show here
	# the probe plus 50 requests, each once
	[[ $(records web | grep -c '/ready ') == 1 ]]
	records web | grep -v '/ready ' >"$T/before"
	[[ $(wc -l <"$T/before") == 50 ]]
	diff <(seq 1 50 | sed 's|^|req/|') <(grep -o -E 'req/[0-9]+' "$T/before" | sort -t/ -k2,2n)

	# rotation the nginx way: rename inside the topic, then USR1
	mv "$MNT/web/access.log" "$MNT/web/access.log.1"
	nginx "${NGX_ARGS[@]}" -s reopen
	wait_until "grep -q 'reopening logs' $T/nginx/error.log"
	wait_until "[[ -e $MNT/web/access.log ]]"
	requests 51 100
	wait_records web 101
	sleep 0.3 # a late duplicate would show here
	records web | grep -v '/ready ' >"$T/got"
	[[ $(wc -l <"$T/got") == 100 ]] || { echo "$(wc -l <"$T/got") records for 100 requests"; false; }
	run env LC_ALL=C grep -c -v -E -- "$NGX_RE" "$T/got"
	assert_output 0
	diff <(seq 1 100 | sed 's|^|req/|') <(grep -o -E 'req/[0-9]+' "$T/got" | sort -t/ -k2,2n)
	# the records were spread over the partitions
	[[ $(for p in 0 1 2; do [[ -s $MNT/web/$p/log ]] && echo $p; done | wc -l) -gt 1 ]]
	# nginx reported no failure (a worker that cannot reopen logs [emerg]/[alert])
	run grep -E '\[(emerg|alert|crit|error)\]' "$T/nginx/error.log"
	assert_output ''
	ls "$MNT/web" | grep -qx access.log.1
}

@test "nginx: every request is one whole record; rename + nginx -s reopen loses and duplicates nothing" {
	# workers run as nobody and reopen the log themselves on USR1:
	# the mount needs allow_other (as in mount-examples/fstab.example)
	nginx_rotation allow_other
}

@test "nginx with -o default_permissions: the master's chown of the reopened log lets its workers reopen it" {
	# On USR1 the master (root) opens access.log again, chown()s it to the
	# worker user, then each worker opens it by name. topicfs answers the
	# chown with success but keeps showing uid 0, mode 0644: the kernel then
	# refuses the workers' open (EACCES, "[emerg] open() ... failed (13)")
	# and they keep writing to the renamed file.
	nginx_rotation allow_other,default_permissions
}

@test "nginx: buffered access_log (mount-examples) flushes whole lines on reopen and on stop" {
	need nginx curl
	tfs_start -o allow_other
	mk_topic web 'partitions: 2'
	# flush=60s: within this test only reopen and stop write the buffer
	nginx_conf "access_log $MNT/web/nginx.log simple buffer=64k flush=60s;"
	nginx_start
	requests 1 50
	[[ $(all_records web | wc -l) == 0 ]]
	mv "$MNT/web/nginx.log" "$MNT/web/nginx.log.1"
	# reopen writes the buffer to the old file, then opens the name again
	nginx "${NGX_ARGS[@]}" -s reopen
	wait_records web 51
	[[ $(all_records web | wc -l) == 51 ]]
	requests 51 100
	# graceful stop (QUIT) flushes the rest
	kill -QUIT "$NGX_PID"
	for _ in $(seq 100); do kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.1; done
	! kill -0 "$NGX_PID" 2>/dev/null
	[[ $(records web | grep -c '/ready ') == 1 ]]
	records web | grep -v '/ready ' >"$T/got"
	[[ $(wc -l <"$T/got") == 100 ]] || { echo "$(wc -l <"$T/got") records for 100 requests"; false; }
	run env LC_ALL=C grep -c -v -E -- "$NGX_RE" "$T/got"
	assert_output 0
	diff <(seq 1 100 | sed 's|^|req/|') <(grep -o -E 'req/[0-9]+' "$T/got" | sort -t/ -k2,2n)
	run grep -E '\[(emerg|alert|crit|error)\]' "$T/nginx/error.log"
	assert_output ''
}

# ---- syslog daemons ---------------------------------------------------------

# send FIRST LAST: log "tfsmsg-<i> end" for i = FIRST..LAST to the private
# socket $T/log.sock, tagged "shiptest".
send() {
	local i
	for i in $(seq "$1" "$2"); do
		logger -u "$T/log.sock" -t shiptest "tfsmsg-$i end"
	done
}

SYSLOG_RE=' shiptest: tfsmsg-[0-9]+ end$'

@test "rsyslog: every message is one record; rename + HUP loses and duplicates nothing" {
	need rsyslogd logger
	tfs_start
	mk_topic sys 'partitions: 3'
	mkdir "$T/rsyslog"
	cat >"$T/rsyslog.conf" <<-EOF
		# internal messages stay in this instance (not the system's /dev/log)
		global(workDirectory="$T/rsyslog" processInternalMessages="on")
		module(load="imuxsock" SysSock.Use="off")
		input(type="imuxsock" Socket="$T/log.sock" RateLimit.Interval="0")
		if \$programname == 'shiptest' then {
		    action(type="omfile" file="$MNT/sys/messages"
		           template="RSYSLOG_FileFormat" createDirs="off"
		           flushOnTXEnd="on" asyncWriting="off" ioBufferSize="64k"
		           queue.type="LinkedList" queue.filename="topicfs-syslog"
		           queue.saveOnShutdown="on"
		           action.resumeRetryCount="-1" action.resumeInterval="5")
		}
		if \$programname == 'rsyslogd' then {
		    action(type="omfile" file="$T/rsyslog/internal.log")
		}
	EOF
	rsyslogd -N1 -f "$T/rsyslog.conf" >/dev/null
	rsyslogd -n -f "$T/rsyslog.conf" -i "$T/rsyslog.pid" >"$T/rsyslog.out" 2>&1 3>&- &
	ship_track $!
	wait_until "[[ -S $T/log.sock ]]"
	send 1 100
	wait_records sys 100
	assert_each_once sys "$SYSLOG_RE" 'tfsmsg-' 1 100

	mv "$MNT/sys/messages" "$MNT/sys/messages.1"
	kill -HUP "$(cat "$T/rsyslog.pid")"
	wait_until "grep -q 'HUPed' $T/rsyslog/internal.log"
	send 101 200
	wait_records sys 200
	wait_until "[[ -e $MNT/sys/messages ]]"
	sleep 0.3
	assert_each_once sys "$SYSLOG_RE" 'tfsmsg-' 1 200
	run grep -ihE 'error|fail' "$T/rsyslog.out" "$T/rsyslog/internal.log"
	assert_output ''
}

@test "syslog-ng: every message is one record; rename + HUP loses and duplicates nothing" {
	# Debian's syslog-ng-core conflicts with rsyslog: make test unpacks a
	# private copy (tests/fetch-syslog-ng.sh) when none is installed
	local private=$BATS_TEST_DIRNAME/../../build/shippers/syslog-ng/bin
	command -v syslog-ng >/dev/null || [[ ! -x $private/syslog-ng ]] || PATH=$private:$PATH
	command -v syslog-ng >/dev/null ||
		skip "syslog-ng is not installed and tests/fetch-syslog-ng.sh could not unpack a private copy"
	need logger
	tfs_start
	mk_topic sys 'partitions: 3'
	local ver
	ver=$(syslog-ng --version | sed -n 's/^Config version: *//p')
	cat >"$T/syslog-ng.conf" <<-EOF
		@version: $ver
		options { stats_freq(0); create_dirs(no); };
		source s_private { unix-dgram("$T/log.sock"); };
		destination d_topic {
		    file("$MNT/sys/messages"
		         template("\${ISODATE} \${HOST} \${MSGHDR}\${MESSAGE}\n")
		         create-dirs(no) flush-lines(100) time-reopen(5));
		};
		log { source(s_private); destination(d_topic); flags(flow-control); };
	EOF
	syslog-ng --syntax-only -f "$T/syslog-ng.conf"
	syslog-ng -F -e --no-caps -f "$T/syslog-ng.conf" -R "$T/syslog-ng.persist" \
		-p "$T/syslog-ng.pid" -c "$T/syslog-ng.ctl" >"$T/syslog-ng.out" 2>&1 3>&- &
	ship_track $!
	wait_until "[[ -S $T/log.sock && -s $T/syslog-ng.pid ]]"
	send 1 100
	wait_records sys 100
	assert_each_once sys "$SYSLOG_RE" 'tfsmsg-' 1 100

	mv "$MNT/sys/messages" "$MNT/sys/messages.1"
	kill -HUP "$(cat "$T/syslog-ng.pid")"
	wait_until "grep -q 'reload finished' $T/syslog-ng.out"
	send 101 200
	wait_records sys 200
	wait_until "[[ -e $MNT/sys/messages ]]"
	sleep 0.3
	assert_each_once sys "$SYSLOG_RE" 'tfsmsg-' 1 200
	run grep -iE 'error' "$T/syslog-ng.out"
	assert_output ''
}

# ---- logrotate under a continuous writer ------------------------------------

# writer: append "line <n>" continuously, one O_APPEND write() per line, to
# $MNT/t/app.log; on SIGHUP reopen the file by name (what daemons do from a
# postrotate script); when $T/stop appears, close and write the count to
# $T/written.
start_writer() {
	python3 - "$MNT/t/app.log" "$T/stop" "$T/written" 3>&- <<-'EOF' &
		import os, signal, sys, time
		path, stop, out = sys.argv[1:4]
		flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
		reopen = False
		def hup(signum, frame):
		    global reopen
		    reopen = True
		signal.signal(signal.SIGHUP, hup)
		fd = os.open(path, flags, 0o644)
		n = 0
		while not os.path.exists(stop):
		    if reopen:
		        reopen = False
		        os.close(fd)
		        fd = os.open(path, flags, 0o644)
		    n += 1
		    os.write(fd, b"line %d\n" % n)
		    if n % 100 == 0:
		        time.sleep(0.002)
		os.close(fd)
		with open(out, "w") as f:
		    f.write("%d\n" % n)
	EOF
	WRITER=$!
	ship_track "$WRITER"
	echo "$WRITER" >"$T/writer.pid"
	wait_records t 200
}

# rotate_during_writes STANZA NAMES: run logrotate -f with STANZA three times
# while the writer appends; then the topic holds line 1..n exactly once, in
# order, and NAMES (space-separated) are the producer files listed.
rotate_during_writes() {
	need logrotate
	tfs_start
	mk_topic t
	start_writer
	printf '%s {\n%s\n}\n' "$MNT/t/app.log" "$1" >"$T/lr.conf"
	local i before
	for i in 1 2 3; do
		before=$(all_records t | wc -l)
		logrotate -f -s "$T/lr.state" "$T/lr.conf"
		# the writer goes on producing after each rotation
		wait_until "[[ \$(all_records t | wc -l) -gt $((before + 100)) ]]"
	done
	touch "$T/stop"
	for _ in $(seq 100); do [[ -s $T/written ]] && break; sleep 0.1; done
	wait "$WRITER"
	local n
	n=$(cat "$T/written")
	echo "writer wrote $n lines"
	all_records t >"$T/got"
	[[ $(wc -l <"$T/got") == "$n" ]] || { echo "$(wc -l <"$T/got") records for $n lines"; false; }
	cmp <(seq 1 "$n" | sed 's/^/line /') "$T/got"
	# nothing but the writer's lines became records
	run env LC_ALL=C grep -c -P '[^\x20-\x7e]' "$T/got"
	assert_output 0
	[[ $(ls "$MNT/t" | grep '^app' | xargs) == "$2" ]] || { ls "$MNT/t"; false; }
}

@test "logrotate -f copytruncate under a continuous O_APPEND writer: records = lines written" {
	rotate_during_writes $'  copytruncate\n  rotate 2\n  nocompress\n  su root root' \
		'app.log app.log.1 app.log.2'
}

@test "logrotate -f create + writer reopening by name on HUP: records = lines written" {
	# postrotate signals the writer as daemons are signalled; rotate 2 makes
	# the third rotation unlink the oldest name (its records stay)
	rotate_during_writes "  create 0640 root root
  rotate 2
  nocompress
  su root root
  postrotate
    kill -HUP \$(cat $T/writer.pid)
  endscript" 'app.log app.log.1 app.log.2'
}
