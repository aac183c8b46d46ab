#!/usr/bin/env bash
# Installs the Debian packages topicfs needs to build, run and test, if any
# is missing. Runs apt-get as root or through sudo.
set -euo pipefail
pkgs=(build-essential pkg-config libfuse3-dev fuse3 libzstd-dev libyaml-dev
      bats bats-assert bats-support python3 procps psmisc util-linux logrotate gawk)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]})) || exit 0
echo "installing: ${missing[*]}"
sudo=
[[ $(id -u) -eq 0 ]] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
