#!/usr/bin/env bash
# Benchmarks rpcpin against HAProxy (TCP mode, forced splice) and a direct connection to a
# DCE/RPC backend, all on loopback, every path interleaved in the same run; prints Markdown
# tables with medians, ratios and the goals of docs/benchmarks.md.
#
#   scripts/bench.sh           # the full run: about 7 minutes once built
#   scripts/bench.sh --smoke   # each load for a fraction of a second; exit 0 when every path
#                              # worked (what CI runs)
#
# Other arguments go to `rpcpin-bench run` (--rounds N, --only bulk,aggregate,latency,eptmap,idle,
# --base-port P). Installs haproxy with apt-get when it is missing (needs root then).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v haproxy >/dev/null 2>&1; then
    echo "scripts/bench.sh: installing haproxy" >&2
    sudo=""
    [[ $EUID -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq haproxy >&2
fi
if ! command -v taskset >/dev/null 2>&1; then
    echo "scripts/bench.sh: taskset (util-linux) is needed to pin processes to CPUs" >&2
    exit 1
fi

# 9,000 proxied connections hold 18,000 descriptors in the proxy; every process started
# from here inherits this limit.
want=20000
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $want ]]; then
    ulimit -Hn "$want" 2>/dev/null || echo "scripts/bench.sh: hard open-files limit is $hard" >&2
    hard=$(ulimit -Hn)
fi
[[ $hard == unlimited ]] && hard=$want
ulimit -Sn "$hard"

# The harness is its own crate (bench/, not part of rpcpin's build); it shares rpcpin's
# target directory and release profile so that rpcpin's compiled dependencies are reused.
cargo build --release --quiet
CARGO_TARGET_DIR="$PWD/target" cargo build --release --quiet --manifest-path bench/Cargo.toml

exec target/release/rpcpin-bench run --rpcpin target/release/rpcpin --haproxy "$(command -v haproxy)" "$@"
