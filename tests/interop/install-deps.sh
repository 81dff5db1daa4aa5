#!/usr/bin/env bash
# Install what the interop suite (run.sh, two_servers.sh, ad_dc.sh, scale_out.sh) needs on a
# fresh Debian machine: Samba (the real EPM + dynamic-port RPC services, and an AD domain
# controller), rpcclient (a real RPC runtime), tshark (an independent dissector), nftables
# and iproute2 (the namespaced "DMZ" topology), HAProxy (the load balancer in front of
# several rpcpin instances), and a Python venv with impacket (and kubernetes-validate, for
# tests/deploy/check_kubernetes.py).
#
# Idempotent: packages already installed are skipped, an existing venv with the
# pinned impacket version is left alone. Must run as root (apt-get).
set -euo pipefail

# impacket version known to work with the suite's scripts.
IMPACKET_VERSION="0.13.1"
# kubernetes-validate bundles the Kubernetes JSON schemas (1.25 to 1.37 in this version), so
# tests/deploy/check_kubernetes.py validates deploy/kubernetes/ with no cluster and no network.
KUBERNETES_VALIDATE_VERSION="1.37.0"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
venv="$repo_root/target/interop-venv"

if [[ $EUID -ne 0 ]]; then
    echo "install-deps.sh: must run as root (apt-get)" >&2
    exit 1
fi

who=install-deps
# shellcheck source-path=SCRIPTDIR source=../../scripts/lib/deps.sh
source "$repo_root/scripts/lib/deps.sh"

# tshark asks whether non-root users may capture; answer it up front so that the install
# never blocks on a prompt.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
# python3-venv: the venv is built from Debian's python3, which needs it. python3-samba:
# check_aliases.py reads Samba's interface constants. Samba's package
# may start its own daemons on install; the suite runs its own samba-dcerpcd inside a
# namespace, and they do not collide. samba-dsdb-modules, samba-ad-provision,
# samba-vfs-modules (acl_xattr, for the sysvol ACLs), python3-samba and samba-common-bin
# (samba-tool) are only Recommends of samba: ad_dc.sh provisions and runs an AD domain
# controller with them.
apt_install samba smbclient tshark nftables iproute2 haproxy python3-venv \
    samba-dsdb-modules samba-ad-provision samba-vfs-modules python3-samba samba-common-bin
venv_pin "$venv" impacket "$IMPACKET_VERSION"
venv_pin "$venv" kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"

echo "install-deps: done"
