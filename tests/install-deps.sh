#!/usr/bin/env bash
# Installs the Debian packages topicfs needs to build, run and test, if any
# is missing. Runs apt-get as root or through sudo. Quiet when all is present.
#
# libraft 0.22 (the metadata quorum) is only in <codename>-backports: when it
# is missing (or older), the backports suite is enabled from the machine's own
# apt sources (the URIs and Signed-By of its <codename> entry) in
# /etc/apt/sources.list.d/topicfs-backports.sources, unless some source
# already names that suite.
set -euo pipefail
pkgs=(build-essential pkg-config libfuse3-dev fuse3 libzstd-dev libyaml-dev
      libuv1-dev
      bats bats-assert bats-support python3 procps psmisc util-linux logrotate gawk
      nginx-light rsyslog curl bsdutils
      iproute2 nftables)   # iproute2, nftables: cluster_faults.bats (netns + nft)
raft_min=0.22
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
raft_ok() {
	local st ver
	st=$(dpkg-query -W -f='${Status}' libraft-dev 2>/dev/null) || return 1
	[[ $st == 'install ok installed' ]] || return 1
	ver=$(dpkg-query -W -f='${Version}' libraft-dev)
	dpkg --compare-versions "$ver" ge "$raft_min"
}
need_raft=0
raft_ok || need_raft=1
((${#missing[@]} || need_raft)) || exit 0

sudo=
[[ $(id -u) -eq 0 ]] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
sources_dir=/etc/apt/sources.list.d

# Prints "URI<TAB>SIGNED_BY" of the first deb entry for suite $1 found in the
# deb822 .sources files, then in the one-line .list files (SIGNED_BY may be
# empty). Prints nothing if there is none.
suite_entry() {
	local suite=$1 f line
	for f in "$sources_dir"/*.sources; do
		[[ -r $f ]] || continue
		line=$(awk -v suite="$suite" '
			function flush() {
				if (!done && enabled != "no" && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
					split(uris, u, " ")
					printf "%s\t%s\n", u[1], signed
					done = 1
				}
				types = suites = uris = signed = enabled = ""
			}
			/^[ \t]*#/ { next }
			/^[ \t]*$/ { flush(); next }
			/^[ \t]/ { next }   # continuation line (an inline key): not a path
			{
				key = tolower($0); sub(/:.*/, "", key)
				val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
				if (key == "types") types = val
				else if (key == "suites") suites = val
				else if (key == "uris") uris = val
				else if (key == "signed-by" && val ~ /^\//) signed = val
				else if (key == "enabled") enabled = tolower(val)
			}
			END { flush() }' "$f")
		[[ -z $line ]] || { printf '%s\n' "$line"; return 0; }
	done
	for f in /etc/apt/sources.list "$sources_dir"/*.list; do
		[[ -r $f ]] || continue
		line=$(awk -v suite="$suite" '
			$1 != "deb" { next }
			{
				i = 2; signed = ""
				if ($2 ~ /^\[/) {
					opts = ""
					for (; i <= NF; i++) { opts = opts " " $i; if ($i ~ /\]$/) { i++; break } }
					gsub(/[][]/, "", opts)
					n = split(opts, o, " ")
					for (j = 1; j <= n; j++) if (o[j] ~ /^signed-by=/) { signed = o[j]; sub(/^signed-by=/, "", signed) }
				}
				if ($(i + 1) == suite) { printf "%s\t%s\n", $i, signed; exit }
			}' "$f")
		[[ -z $line ]] || { printf '%s\n' "$line"; return 0; }
	done
	return 0
}

if ((need_raft)); then
	. /etc/os-release
	codename=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
	if [[ -z $(suite_entry "$codename-backports") ]]; then
		entry=$(suite_entry "$codename")
		if [[ -z $entry ]]; then
			echo "install-deps: no apt entry for $codename found; cannot enable $codename-backports for libraft-dev >= $raft_min" >&2
			exit 1
		fi
		uri=${entry%%$'\t'*}
		signed=${entry#*$'\t'}
		echo "enabling $codename-backports ($uri) in $sources_dir/topicfs-backports.sources"
		{
			echo "# Written by topicfs tests/install-deps.sh: libraft-dev >= $raft_min."
			echo "Types: deb"
			echo "URIs: $uri"
			echo "Suites: $codename-backports"
			echo "Components: main"
			[[ -z $signed ]] || echo "Signed-By: $signed"
		} | $sudo tee "$sources_dir/topicfs-backports.sources.tmp" >/dev/null
		$sudo mv "$sources_dir/topicfs-backports.sources.tmp" "$sources_dir/topicfs-backports.sources"
	fi
	missing+=("libraft-dev/$codename-backports")
fi

echo "installing: ${missing[*]}"
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
