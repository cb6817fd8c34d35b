#!/bin/sh
# test-deps.sh installs the Debian packages the integration tests need, and
# only those that are missing: a registry server, a static busybox for the
# base images, newuidmap/newgidmap for rootless runs, runc and umoci to run
# built images, skopeo as an independent image reader, mmdebstrap for the
# Debian base image, and libseccomp-dev for the optional seccomp build tag.
#
# It is idempotent and quiet when everything is present. Run it as root (CI
# and the development machines run as root); as another user it only reports
# what is missing.
set -eu

packages="docker-registry busybox-static uidmap runc skopeo umoci mmdebstrap libseccomp-dev"

missing=""
for p in $packages; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done

if [ -z "$missing" ]; then
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "test-deps: missing packages:$missing (run as root to install them)" >&2
	exit 1
fi

echo "test-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# An old or absent package list makes apt-get install fail to find packages;
# update once, then install without recommends to keep it small.
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
