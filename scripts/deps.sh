#!/usr/bin/env bash
# Installs the OS packages Flynn needs, skipping those already present.
# Idempotent and quiet; run as root (make deps).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "make deps: must run as root to install OS packages (try: sudo make deps)" >&2
	exit 1
fi

# Packages for running and testing Flynn:
#   runc                         container runtime
#   tini                         the init (PID 1) of every job: signals, reaping
#   busybox-static               the tiny rootfs for tests and examples
#   containernetworking-plugins  CNI bridge, host-local, portmap
#   iptables                     used by the CNI plugins
#   iproute2                     ip netns for pinned namespaces and multi-host tests
#   git openssh-client           git push over HTTPS and SSH
#   debootstrap                  building the default stack
#   dnsutils                     dig, for DNS tests
#   curl ca-certificates procps  what the tests and walkthrough use
PACKAGES=(
	runc tini busybox-static containernetworking-plugins iptables iproute2
	git openssh-client debootstrap dnsutils curl ca-certificates procps
	xz-utils
)
PACKAGES+=("$@")

missing=()
for p in "${PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done

if [ "${#missing[@]}" -eq 0 ]; then
	exit 0
fi

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
