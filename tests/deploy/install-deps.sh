#!/usr/bin/env bash
# Install what tests/deploy/check_prometheus.sh needs on a fresh Debian machine: promtool,
# which Debian ships in its `prometheus` package. The package's own Prometheus server is
# not wanted here: where systemd runs, the service the package enables is stopped and
# disabled again (once, when this script installed it).
#
# Idempotent. Must run as root (apt-get).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"

if [[ $EUID -ne 0 ]]; then
    echo "tests/deploy/install-deps.sh: must run as root (apt-get)" >&2
    exit 1
fi

who="deploy install-deps"
# shellcheck source-path=SCRIPTDIR source=../../scripts/lib/deps.sh
source "$repo_root/scripts/lib/deps.sh"

had_prometheus=$(dpkg-query -W -f='${Status}' prometheus 2>/dev/null || true)
apt_install prometheus
if [[ $had_prometheus != "install ok installed" && -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

echo "deploy install-deps: done"
