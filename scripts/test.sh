#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine, as root: installs what the interop and
# packaging tests need (Debian packages, venvs with impacket, kubernetes-validate and
# hadolint, promtool), builds, runs the unit and end-to-end tests, the check of the
# Kubernetes manifests and of the Prometheus alerting rules (promtool), the impacket/tshark
# judges of the endpoint-mapper rewriting, the packaging test (the Debian package built,
# installed and purged here; the Dockerfile linted), then the interop suite against real
# Samba, rpcclient, impacket and tshark (in both endpoint-mapper modes), the two-server
# check (answer mode, a pin on each of two Samba servers), the Samba AD domain controller
# check (one pin for its interfaces), the IPv6 check (Samba on IPv6 only, IPv6 and IPv4
# clients), and the scale-out check (three rpcpin instances behind
# HAProxy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $EUID -ne 0 ]]; then
    echo "scripts/test.sh: run as root (it installs packages and creates network namespaces)" >&2
    exit 1
fi

times=()
report() {
    if ((${#times[@]})); then
        echo "test.sh: step times"
        printf '    %s\n' "${times[@]}"
    fi
}
trap report EXIT
# step NAME CMD...: runs CMD and records how long it took.
step() {
    local name=$1 t=$SECONDS
    shift
    "$@"
    times+=("$(printf '%-30s %4d s' "$name" $((SECONDS - t)))")
}

step "install-deps (interop)" tests/interop/install-deps.sh
step "install-deps (package)" tests/package/install-deps.sh
step "install-deps (deploy)" tests/deploy/install-deps.sh
step "cargo build --release" cargo build --release --locked
step "cargo test" cargo test --locked
# The Kubernetes manifests: schemas (offline), `rpcpin check` on the ConfigMap, and ports,
# probes and drain against the configuration; a few seconds.
step "kubernetes manifests" target/interop-venv/bin/python tests/deploy/check_kubernetes.py target/release/rpcpin
# The Prometheus alerting rules: promtool's check and the rules' unit tests; a second.
step "prometheus rules" tests/deploy/check_prometheus.sh
# Independent judges on loopback: impacket's encoders behind rpcpin, its decoders and
# tshark in front.
step "judge_ndr.py" target/interop-venv/bin/python tests/interop/judge_ndr.py target/release/rpcpin
# The interface aliases' UUIDs and versions against impacket's, Samba's and tshark's; a second.
step "check_aliases.py" target/interop-venv/bin/python tests/interop/check_aliases.py target/release/rpcpin
step "package check" tests/package/check.sh
# The interop suite in both endpoint-mapper modes: epm.mode = "relay" (Samba's endpoint
# mapper answers through rpcpin) and "answer" (rpcpin answers it itself).
step "interop run.sh (relay)" env RPCPIN_EPM_MODE=relay tests/interop/run.sh
step "interop run.sh (answer)" env RPCPIN_EPM_MODE=answer tests/interop/run.sh
# Answer mode in front of two Samba servers, one pin on each.
step "interop two_servers.sh" tests/interop/two_servers.sh
# A Samba AD domain controller (provisioned into a temp dir) behind one pin: drsuapi,
# netlogon and samr, on three dynamic ports, through rpcpin alone.
step "interop ad_dc.sh" tests/interop/ad_dc.sh
# IPv6: Samba on IPv6 only, rpcclient and impacket over IPv6 through dual-stack [::]
# listeners, which serve an IPv4 client too.
step "interop ipv6.sh" tests/interop/ipv6.sh
# Three instances behind HAProxy (PROXY protocol v2, /readyz health checks), one killed
# in the middle of a loop of new clients.
step "interop scale_out.sh" tests/interop/scale_out.sh
