#!/usr/bin/env bash
# consumer-worker.sh - one member of consumer group "billing" of topic "orders".
#
#   ./consumer-worker.sh              # runs until stopped; waits for new records
#   TOPIC=payments GROUP=audit ./consumer-worker.sh
#
# Each open cursor is one member: start several copies (on any nodes) and the
# topic's partitions are shared among them; stop one and its partitions move
# to the others. Another group (GROUP=analytics) gets every record again.
#
# Delivery (INTERFACE.md section 6): a read of the cursor returns one record;
# that record is committed when the loop reads the next one, or when the
# script exits normally. If the script dies from a signal (kill -9, Ctrl-C,
# an unhandled SIGTERM) while handling a record, that record is delivered
# again to the group: at-least-once, nothing lost.
#
# For cron jobs use .../pending instead of .../cursor: it ends once caught up.

set -uo pipefail     # no -e: a failing handler must not exit *normally*,
                     # which would commit the record it failed on

MOUNT=${MOUNT:-/mnt/topics}
TOPIC=${TOPIC:-orders}
GROUP=${GROUP:-billing}
cursor="$MOUNT/$TOPIC/groups/$GROUP/cursor"   # opening it creates the group

# One record: the whole line ("key<sep>value" if the topic has key_separator).
handle() {
	local line=$1
	# ... real work here: call an API, insert into a database, ...
	printf '%s %s\n' "$(date -u +%FT%TZ)" "$line" >> "${OUT:-/tmp/billing.out}"
}

while IFS= read -r line; do
	if ! handle "$line"; then
		echo "consumer-worker: failed on record: $line" >&2
		# die from a signal so the record is not committed and comes back
		kill -TERM $$
	fi
done < "$cursor"
