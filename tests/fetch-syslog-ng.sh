#!/usr/bin/env bash
# Makes syslog-ng available to tests/e2e/shippers.bats without installing it.
#
# Debian's syslog-ng-core conflicts with rsyslog (both provide
# system-log-daemon), and tests/install-deps.sh installs rsyslog. So when no
# syslog-ng is on PATH, this fetches syslog-ng-core and whatever it needs
# that the machine lacks as .deb files (apt-get download, nothing installed
# or removed), unpacks them under build/shippers/syslog-ng/root and writes
# build/shippers/syslog-ng/bin/syslog-ng, a wrapper that runs the unpacked
# binary with its libraries and modules. Never fails the build: if anything
# goes wrong it says so and the syslog-ng test skips with that reason.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$here/../build/shippers/syslog-ng
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
wrapper=$dir/bin/syslog-ng

command -v syslog-ng >/dev/null 2>&1 && exit 0
[[ -x $wrapper ]] && "$wrapper" --version >/dev/null 2>&1 && exit 0

say() { echo "fetch-syslog-ng: $*" >&2; }
sudo=
[[ $(id -u) -eq 0 ]] || sudo=sudo

# syslog-ng-core and the packages it needs that are not installed (apt's
# own answer, rsyslog's removal aside)
plan() {
	apt-get -s install --no-install-recommends syslog-ng-core 2>/dev/null |
		awk '$1 == "Inst" { print $2 }'
}
pkgs=$(plan)
if [[ $pkgs != *syslog-ng-core* ]]; then
	$sudo apt-get update -qq >/dev/null 2>&1 || true
	pkgs=$(plan)
fi
if [[ $pkgs != *syslog-ng-core* ]]; then
	say "apt knows no syslog-ng-core; the syslog-ng test will skip"
	exit 0
fi

rm -rf "$dir/debs" "$dir/root" "$dir/bin"
mkdir -p "$dir/debs" "$dir/root" "$dir/bin"
# shellcheck disable=SC2086
if ! (cd "$dir/debs" && apt-get download -qq $pkgs >/dev/null 2>&1); then
	say "apt-get download $pkgs failed; the syslog-ng test will skip"
	exit 0
fi
for deb in "$dir"/debs/*.deb; do
	dpkg -x "$deb" "$dir/root" || { say "cannot unpack $deb"; exit 0; }
done
root=$dir/root
moddir=$(ls -d "$root"/usr/lib/syslog-ng/[0-9]* 2>/dev/null | head -n 1)
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
cat >"$wrapper" <<EOF
#!/bin/sh
# written by tests/fetch-syslog-ng.sh: the unpacked syslog-ng-core
LD_LIBRARY_PATH=$root/usr/lib/$arch:$root/lib/$arch:$root/usr/lib/syslog-ng\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
exec $root/usr/sbin/syslog-ng --module-path=$moddir "\$@"
EOF
chmod +x "$wrapper"
if ! "$wrapper" --version >/dev/null 2>&1; then
	say "the unpacked syslog-ng does not run: $("$wrapper" --version 2>&1 | tail -n 1)"
	rm -f "$wrapper"
	exit 0
fi
echo "syslog-ng for the shipper test: $wrapper ($(echo $pkgs))"
