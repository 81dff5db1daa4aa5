#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine, as root: installs what the interop and
# packaging tests need (Debian packages, venvs with impacket, kubernetes-validate and
# hadolint), builds, runs the unit and end-to-end tests, the check of the Kubernetes
# manifests, the impacket/tshark judges of the endpoint-mapper rewriting, the packaging test
# (the Debian package built, installed and purged here; the Dockerfile linted), then the
# interop suite against real Samba, rpcclient, impacket and tshark, and the scale-out check
# (three rpcpin instances behind HAProxy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $EUID -ne 0 ]]; then
    echo "scripts/test.sh: run as root (it installs packages and creates network namespaces)" >&2
    exit 1
fi

tests/interop/install-deps.sh
tests/package/install-deps.sh
cargo build --release --locked
cargo test --locked
# The Kubernetes manifests: schemas (offline), `rpcpin check` on the ConfigMap, and ports,
# probes and drain against the configuration; a few seconds.
target/interop-venv/bin/python tests/deploy/check_kubernetes.py target/release/rpcpin
# Independent judges on loopback: impacket's encoders behind rpcpin, its decoders and
# tshark in front.
target/interop-venv/bin/python tests/interop/judge_ndr.py target/release/rpcpin
tests/package/check.sh
tests/interop/run.sh
# Three instances behind HAProxy (PROXY protocol v2, /readyz health checks), one killed
# in the middle of a loop of new clients.
tests/interop/scale_out.sh
