#!/bin/sh
# regen-expected.sh builds every integration case with a real Docker
# (BuildKit) and reports where Docker's image differs from case.json, so the
# expectations can be checked against the builder rbuild must match.
#
# A maintainer tool, not part of `make test`. Run as root from anywhere:
#   integration/regen-expected.sh [go test -run pattern, default TestDockerParity]
# Output: test report on stdout; Docker's actual values per case, in
# case.json form, in $RBUILD_TEST_DOCKER_OUT (default /tmp/rbuild-docker-expected).
#
# It installs docker.io when missing, starts dockerd with its data in a
# temporary directory and its own socket (no bridge, no iptables), and stops
# exactly that dockerd (and its containerd) at the end.
set -eu

if [ "$(id -u)" != 0 ]; then
	echo "regen-expected: run as root (dockerd)" >&2
	exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
pattern=${1:-TestDockerParity}

sh "$root/scripts/test-deps.sh"
if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/bin/docker ]; then
	echo "regen-expected: installing docker.io" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

work=$(mktemp -d /tmp/rbuild-regen-XXXXXX)
sock="$work/docker.sock"
pid=""
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		# dockerd stops its containerd child itself; wait for both.
		i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
		kill -9 "$pid" 2>/dev/null || true
	fi
	# Overlay mounts under the data root must go before the directory.
	grep " $work/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

# 127.0.0.0/8 is an insecure registry for dockerd by default, so the
# harness's registry on 127.0.0.1:PORT needs no flag.
/usr/sbin/dockerd \
	--data-root "$work/data" \
	--exec-root "$work/exec" \
	--pidfile "$work/dockerd.pid" \
	-H "unix://$sock" \
	--bridge=none --iptables=false --ip-forward=false --ip-masq=false \
	--containerd-namespace rbuild-regen --containerd-plugins-namespace rbuild-regen-plugins \
	>"$work/dockerd.log" 2>&1 &
pid=$!

i=0
until /usr/bin/docker -H "unix://$sock" version >/dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 60 ] || ! kill -0 "$pid" 2>/dev/null; then
		echo "regen-expected: dockerd did not start:" >&2
		tail -20 "$work/dockerd.log" >&2
		exit 1
	fi
	sleep 1
done
/usr/bin/docker -H "unix://$sock" version --format 'docker {{.Server.Version}}' >&2

cd "$root"
status=0
RBUILD_TEST_DOCKER="unix://$sock" \
	go test -tags dockerparity ./integration -count=1 -run "$pattern" -v -timeout 60m || status=$?
echo "regen-expected: Docker's values per case are in ${RBUILD_TEST_DOCKER_OUT:-/tmp/rbuild-docker-expected}/" >&2
exit $status
