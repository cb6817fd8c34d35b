#!/bin/bash
# Peak RSS of a build that COPYs one large file (issue 4: under 200 MB for
# 2 GiB). A layer must stream from the context through the snapshot to the
# compressed blob, never sit in memory.
#
#   bench/rss.sh [RBUILD]        RBUILD: the binary (default bin/rbuild)
#
# RBUILD_BENCH_RSS_MB   size of the file, MiB (default 2048)
# RBUILD_BENCH_RSS_COMPRESSION   gzip (default) or zstd
#
# Runs as root (the layer store needs root or a user namespace). Needs GNU
# time (/usr/bin/time, Debian's package "time"). Prints one line per build
# and "rss: ok" or "rss: MISSED"; it does not fail on a miss.
set -euo pipefail

rbuild=${1:-bin/rbuild}
mb=${RBUILD_BENCH_RSS_MB:-2048}
comp=${RBUILD_BENCH_RSS_COMPRESSION:-gzip}
target_kb=195312 # 200 MB (10^6 bytes) in KiB

[ -x /usr/bin/time ] || { echo "rss.sh: needs GNU time (apt-get install time)" >&2; exit 2; }
rbuild=$(readlink -f "$rbuild")

work=$(mktemp -d "${TMPDIR:-/tmp}/rbuild-rss-XXXXXX")
cleanup() {
	# Nothing stays mounted after a COPY-only build; be safe anyway.
	grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/ctx"
# Incompressible content: the worst case for the compressor's throughput;
# memory does not depend on it.
head -c "${mb}M" /dev/urandom >"$work/ctx/big"
printf 'FROM scratch\nCOPY big /big\n' >"$work/ctx/Dockerfile"

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f '%M %e' -o "$work/time" \
	"$rbuild" build --root "$work/root" --progress plain --compression "$comp" \
	-t rss-bench:latest "$work/ctx" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
read -r rss_kb secs <"$work/time"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "COPY of ${mb} MiB, $comp: peak RSS $((rss_kb / 1024)) MiB ($rss_kb KiB), ${secs}s"
if [ "$rss_kb" -lt "$target_kb" ]; then
	echo "rss: ok (target: under 200 MB)"
else
	echo "rss: MISSED (target: under 200 MB)"
fi
