#!/usr/bin/env bash
# Profiles a proxy on one bulk transfer of the benchmark (bench/, docs/benchmarks.md): the
# bench's backend, the proxy and the load generator share one CPU as in `scripts/bench.sh`'s
# bulk load, and `perf record -e cpu-clock` samples the proxy alone, kernel included.
#
#   scripts/profile.sh [--rpcpin BIN | --haproxy] [--secs N] DIR SIZE SHAPE
#       DIR up|down, SIZE 5840|65535 (any frag_length), SHAPE pdu|stream
#
# Prints where the proxy's CPU time goes: kernel against user space, then the top symbols.
# Needs perf (Debian linux-perf) and root, or a perf_event_paranoid that allows it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rpcpin=target/release/rpcpin proxy=rpcpin secs=4
while [[ $# -gt 3 ]]; do
    case $1 in
        --rpcpin) rpcpin=$2; shift 2 ;;
        --haproxy) proxy=haproxy; shift ;;
        --secs) secs=$2; shift 2 ;;
        *) break ;;
    esac
done
[[ $# -eq 3 ]] || { sed -n 2,11p "$0" >&2; exit 2; }
dir=$1 size=$2 shape=$3
command -v perf >/dev/null || { echo "scripts/profile.sh: perf is needed (Debian linux-perf)" >&2; exit 1; }

CARGO_TARGET_DIR="$PWD/target" cargo build --release --quiet --manifest-path bench/Cargo.toml
bench=target/release/rpcpin-bench
cpu=$(($(nproc) - 1))
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

svc=17390 epm=17391 front=17392 front_epm=17393
taskset -c "$cpu" "$bench" backend --svc-port $svc --epm-port $epm &
pids+=($!)
if [[ $proxy == haproxy ]]; then
    cat >"$work/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    mode tcp
    option splice-auto
    option splice-request
    option splice-response
    timeout connect 5s
    timeout client 1m
    timeout server 1m
frontend svc
    bind 127.0.0.1:$front
    default_backend svc
backend svc
    server svc 127.0.0.1:$svc
CFG
    taskset -c "$cpu" haproxy -f "$work/haproxy.cfg" -db &
else
    cat >"$work/rpcpin.toml" <<CFG
[backend]
host = "127.0.0.1"
epm_port = $epm

[[pin]]
name = "bench"
listen = "127.0.0.1:$front"
interfaces = ["5d2f6b1c-9a3e-4c7b-8e21-70b1e4c0a5d9"]
backend_port = $svc

[log]
format = "json"

[epm]
listen = "127.0.0.1:$front_epm"
CFG
    TOKIO_WORKER_THREADS=1 taskset -c "$cpu" "$rpcpin" run --config "$work/rpcpin.toml" 2>"$work/rpcpin.log" &
fi
proxy_pid=$!
pids+=("$proxy_pid")
for _ in $(seq 100); do
    ss -Hltn "sport = :$front" | grep -q . && break
    sleep 0.05
done

taskset -c "$cpu" "$bench" client bulk --addr "127.0.0.1:$front" --dir "$dir" --size "$size" \
    --shape "$shape" --secs "$secs" --warmup 0.5 >"$work/client.out" &
client=$!
sleep 0.5
perf record -q -e cpu-clock -p "$proxy_pid" -o "$work/perf.data" -- sleep "$((secs - 1))" 2>/dev/null
wait "$client"
echo "$proxy, bulk $dir, $size-byte PDUs, $shape: $(cat "$work/client.out")"
perf report -i "$work/perf.data" --stdio --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -5
perf report -i "$work/perf.data" --stdio --sort sym 2>/dev/null | grep -E '^ +[0-9]' | head -25
