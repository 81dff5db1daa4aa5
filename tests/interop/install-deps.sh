#!/usr/bin/env bash
# Install what the interop suite (run.sh, scale_out.sh) needs on a fresh Debian
# machine: Samba (the real EPM + dynamic-port RPC services), rpcclient (a real RPC
# runtime), tshark (an independent dissector), nftables and iproute2 (the
# namespaced "DMZ" topology), HAProxy (the load balancer in front of several
# rpcpin instances), and a Python venv with impacket (and kubernetes-validate, for
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

# --- Debian packages --------------------------------------------------------
# python3-venv: the venv is built from Debian's python3, which needs it.
packages=(samba smbclient tshark nftables iproute2 haproxy python3-venv)
missing=()
for pkg in "${packages[@]}"; do
    # dpkg-query prints "install ok installed" only for a fully installed package.
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer it up front so the
    # install never blocks on a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "install-deps: Debian packages already present"
fi

# Samba's package may start its own daemons on install; the suite runs its own
# samba-dcerpcd inside a namespace and does not need (or want) the system ones,
# but they do not collide (different network namespace), so leave them be.

# --- Python venv with impacket ---------------------------------------------
# Use Debian's interpreter explicitly: it is the one python3-venv matches,
# whatever other python3 (pyenv, ...) comes first on PATH.
python=/usr/bin/python3
if [[ ! -x "$venv/bin/python" ]]; then
    echo "install-deps: creating venv $venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi

have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("impacket"))' 2>/dev/null || true)"
if [[ "$have" != "$IMPACKET_VERSION" ]]; then
    echo "install-deps: installing impacket $IMPACKET_VERSION into the venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "impacket==$IMPACKET_VERSION"
else
    echo "install-deps: impacket $IMPACKET_VERSION already in the venv"
fi

have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true)"
if [[ "$have" != "$KUBERNETES_VALIDATE_VERSION" ]]; then
    echo "install-deps: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into the venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
else
    echo "install-deps: kubernetes-validate $KUBERNETES_VALIDATE_VERSION already in the venv"
fi

echo "install-deps: done"
