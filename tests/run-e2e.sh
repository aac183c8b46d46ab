#!/usr/bin/env bash
# Runs the bats end-to-end suite against $TOPICFS (default bin/topicfs), TAP
# output. E2E_FILTER=regex runs only matching tests; arguments name .bats files.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export TOPICFS=${TOPICFS:-$here/../bin/topicfs}
if (($#)); then files=("$@"); else files=("$here"/e2e/*.bats); fi
[[ -e ${files[0]} ]] || { echo "no e2e tests"; exit 1; }
args=()
[[ -n ${E2E_FILTER:-} ]] && args+=(--filter "$E2E_FILTER")
exec bats --tap "${args[@]}" "${files[@]}"
