#!/usr/bin/env bash
# Runs the unit test binaries given as arguments, then the end-to-end suite,
# and ends with one line "N passed, N failed". Exit status 0 only if all pass.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pass=0 fail=0
for t in "$@"; do
	out=$("$t" 2>&1); rc=$?
	printf '%s\n' "$out" | grep -v '^ok - '
	p=$(printf '%s\n' "$out" | grep -c '^ok - ')
	f=$(printf '%s\n' "$out" | grep -c '^not ok - ')
	((rc != 0 && f == 0)) && f=1   # crashed before reporting
	pass=$((pass + p)); fail=$((fail + f))
done
echo "unit: $pass passed, $fail failed"
e2e_out=$(mktemp)
"$here/run-e2e.sh" | tee "$e2e_out"
ep=$(grep -c '^ok ' "$e2e_out"); ef=$(grep -c '^not ok ' "$e2e_out")
rm -f "$e2e_out"
pass=$((pass + ep)); fail=$((fail + ef))
echo "tests: $pass passed, $fail failed"
((fail == 0 && pass > 0))
