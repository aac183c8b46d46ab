#!/usr/bin/env bash
# Runs the unit test binaries given as arguments; "unit: N passed, N failed".
set -uo pipefail
pass=0 fail=0
for t in "$@"; do
	out=$("$t" 2>&1); rc=$?
	printf '%s\n' "$out"
	p=$(printf '%s\n' "$out" | grep -c '^ok - ')
	f=$(printf '%s\n' "$out" | grep -c '^not ok - ')
	((rc != 0 && f == 0)) && f=1
	pass=$((pass + p)); fail=$((fail + f))
done
echo "unit: $pass passed, $fail failed"
((fail == 0))
