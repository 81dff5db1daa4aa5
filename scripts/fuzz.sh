#!/usr/bin/env bash
# Fuzzes the wire layer (the endpoint mapper's server side too), the tower rewriter and the
# PROXY protocol parser with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Installs cargo-fuzz when it is missing, seeds fuzz/corpus/<target>/ from tests/data and
# fuzz/seeds/, runs each target for SECONDS_PER_TARGET, prints per target the executions and
# the time from libFuzzer's final stats, and exits non-zero when any target crashed (the
# crashing input is left in fuzz/artifacts/<target>/, the log in fuzz/logs/<target>.log).
#
# cargo-fuzz passes -Z flags, so the targets are built with a nightly toolchain (rustup's
# `nightly`, installed with `rustup toolchain install nightly --profile minimal` when it is
# missing), and cargo-fuzz itself is pinned to CARGO_FUZZ_VERSION below, installed with
# `cargo +nightly install cargo-fuzz --version ... --locked` when it is missing or another
# version. Either failing stops the script with a message saying what to do.
# Environment:
#   FUZZ_TARGETS     targets to run (default: every one: framing bind epm_rewrite
#                    epm_server proxy_protocol policy_sequence)
#   FUZZ_TOOLCHAIN   rustup toolchain to build with (default: nightly; it must be a nightly)
#   FUZZ_SANITIZER   address, none, ... (default none: rpcpin forbids unsafe code, and the
#                    targets' assertions and overflow checks are what find bugs)
#   FUZZ_JOBS        how many targets fuzz at once, each on one core (default 1)
#   FUZZ_ARGS        extra libFuzzer flags, e.g. "-jobs=2 -workers=2"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs == 0)); then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi
read -r -a targets <<<"${FUZZ_TARGETS:-framing bind epm_rewrite epm_server proxy_protocol policy_sequence}"

# The cargo-fuzz release the targets are built and run with; it builds with the Cargo.lock
# it ships (--locked).
CARGO_FUZZ_VERSION=0.13.2
toolchain=${FUZZ_TOOLCHAIN:-nightly}
cargo=(cargo "+$toolchain")

die() {
    echo "scripts/fuzz.sh: $*" >&2
    exit 1
}

command -v rustup >/dev/null || die "rustup is needed to run cargo +$toolchain (cargo-fuzz needs a nightly toolchain)"
if ! "${cargo[@]}" --version >/dev/null 2>&1; then
    echo "== installing the $toolchain toolchain (rustup toolchain install $toolchain --profile minimal)"
    rustup toolchain install "$toolchain" --profile minimal ||
        die "could not install the $toolchain toolchain with rustup (is rustup's distribution server reachable?); cargo-fuzz needs a nightly: install one and run again, or name an installed one with FUZZ_TOOLCHAIN"
    "${cargo[@]}" --version >/dev/null 2>&1 || die "cargo +$toolchain does not run after installing it"
fi
rustc_version=$(rustc "+$toolchain" --version)
[[ $rustc_version == *-nightly* ]] ||
    die "FUZZ_TOOLCHAIN=$toolchain is $rustc_version, not a nightly: cargo-fuzz passes -Z flags"

if [[ "$("${cargo[@]}" fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    "${cargo[@]}" install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked ||
        die "cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked failed"
    [[ "$("${cargo[@]}" fuzz --version 2>/dev/null)" == "cargo-fuzz $CARGO_FUZZ_VERSION" ]] ||
        die "cargo fuzz --version is not cargo-fuzz $CARGO_FUZZ_VERSION after installing it (another cargo-fuzz first on PATH?)"
fi
echo "== $rustc_version, cargo-fuzz $CARGO_FUZZ_VERSION"

# --- seeds -----------------------------------------------------------------------------

data=tests/data

# u16 FILE OFFSET BIG: the 16-bit integer at OFFSET, big endian when BIG is 1.
u16() {
    local b
    read -r -a b < <(od -An -tu1 -j "$2" -N2 "$1")
    if [[ $3 == 1 ]]; then echo $((b[0] << 8 | b[1])); else echo $((b[1] << 8 | b[0])); fi
}

# pdus FILE: one line "OFFSET LENGTH PTYPE BIG" per PDU of a captured stream.
pdus() {
    local file=$1 at=0 size len ptype drep big
    size=$(wc -c <"$file")
    while ((at + 16 <= size)); do
        read -r ptype < <(od -An -tu1 -j $((at + 2)) -N1 "$file")
        read -r drep < <(od -An -tu1 -j $((at + 4)) -N1 "$file")
        big=$(((drep & 0x10) == 0))
        len=$(u16 "$file" $((at + 8)) "$big")
        ((len >= 16 && at + len <= size)) || break
        echo "$at $len $ptype $big"
        at=$((at + len))
    done
}

# cut_bytes FILE OFFSET LENGTH: those bytes of FILE.
cut_bytes() {
    dd if="$1" bs=1 skip="$2" count="$3" status=none
}

# seed TARGET NAME PREFIX (printf format): writes PREFIX then stdin as a corpus file.
seed() {
    # shellcheck disable=SC2059 # PREFIX is a format on purpose: its \xNN escapes are bytes
    { printf "$3"; cat; } >"fuzz/corpus/$1/seed-$2"
}

# inputs TARGET: how many files the target's corpus holds.
inputs() { find "fuzz/corpus/$1" -maxdepth 1 -type f | wc -l; }

for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    if [[ -d fuzz/seeds/$t ]]; then
        for f in "fuzz/seeds/$t"/*; do
            cp "$f" "fuzz/corpus/$t/seed-$(basename "$f")"
        done
    fi
done

want() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# selector BYTE...: a printf format writing those bytes.
selector() { printf '\\x%02x' "$@"; }

for f in "$data"/*.bin; do
    name=$(basename "$f" .bin)
    # framing: whole streams, a byte at a time, in chunks of 1, 16 and 256, and with a
    # 256-byte fragment bound.
    if want framing; then
        seed framing "$name-bytewise" '\x00' <"$f"
        seed framing "$name-chunks" '\x03\x00\x0f\xff' <"$f"
        seed framing "$name-bound256" '\x80' <"$f"
    fi
    while read -r at len ptype big; do
        case $ptype in
        11 | 13 | 14) # bind, bind_nak, alter_context
            if want bind; then
                cut_bytes "$f" "$at" "$len" | seed bind "$name-$at" '\x00'
            fi
            ;;
        12 | 15) # bind_ack, alter_context_resp: a longer, a same-length and an empty address
            if want bind; then
                cut_bytes "$f" "$at" "$len" | seed bind "$name-$at-6004" '\x05''6004\x00'
                cut_bytes "$f" "$at" "$len" | seed bind "$name-$at-135" '\x04''135\x00'
                cut_bytes "$f" "$at" "$len" | seed bind "$name-$at-empty" '\x00'
            fi
            ;;
        2) # response: the stub starts at byte 24. Selector: ept_map (or ept_lookup for the
           # lookup capture), NDR, the PDU's byte order; one fragment, and 7-byte fragments
           # hiding unpinned entries.
            if want epm_rewrite && [[ $name == *epm* || $name == *-map-* ]] && ((len > 24)); then
                sel=$((big << 2))
                if [[ $name == *lookup* ]]; then sel=$((sel | 1)); fi
                cut_bytes "$f" $((at + 24)) $((len - 24)) |
                    seed epm_rewrite "$name-$at" "$(selector $sel 0xff)"
                cut_bytes "$f" $((at + 24)) $((len - 24)) |
                    seed epm_rewrite "$name-$at-frag7-hide" "$(selector $((sel | 16)) 6)"
            fi
            ;;
        esac
    done < <(pdus "$f")
done

# impacket's ept_map / ept_lookup answer stubs (NDR and NDR64, little endian).
if want epm_rewrite; then
    for f in "$data"/impacket/*.bin; do
        name=$(basename "$f" .bin)
        sel=0
        if [[ $name == lookup* ]]; then sel=$((sel | 1)); fi
        if [[ $name == *ndr64* ]]; then sel=$((sel | 2)); fi
        seed epm_rewrite "impacket-$name" "$(selector $sel 0xff)" <"$f"
        seed epm_rewrite "impacket-$name-frag13-hide" "$(selector $((sel | 16)) 12)" <"$f"
    done
fi

# --- fuzzing -----------------------------------------------------------------------------

jobs=${FUZZ_JOBS:-1}
if ! [[ $jobs =~ ^[0-9]+$ ]] || ((jobs == 0)); then
    die "FUZZ_JOBS must be a number of targets to run at once (1 or more), not '$jobs'"
fi

# fuzz_target TARGET: fuzzes it for $secs; prints its summary line, also left in
# fuzz/logs/TARGET.result, which says CRASHED when it did.
fuzz_target() {
    local t=$1 log=fuzz/logs/$1.log start result elapsed execs rate ran corpus line
    echo "== $t: ${secs}s, corpus fuzz/corpus/$t ($(inputs "$t") inputs)"
    start=$(date +%s)
    # shellcheck disable=SC2086
    if "${cargo[@]}" fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 ${FUZZ_ARGS:-} \
        >"$log" 2>&1; then
        result=ok
    else
        result="CRASHED (see $log, fuzz/artifacts/$t/)"
        grep -E '^(==[0-9]+== ?ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' \
            "$log" | head -n 10 >&2 || true
    fi
    elapsed=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' ||
        true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' ||
        true)
    # "Done N runs in S second(s)" is libFuzzer's own measure of the time it fuzzed.
    ran=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -n 1 | awk '{print $5}' || true)
    corpus=$(inputs "$t")
    line=$(printf '%-12s executions %-10s time %ss (%ss wall)  exec/s %-7s corpus %-5s %s' \
        "$t" "${execs:-?}" "${ran:-?}" "$elapsed" "${rate:-?}" "$corpus" "$result")
    echo "$line" | tee "fuzz/logs/$t.result"
}

mkdir -p fuzz/logs
echo "== building"
"${cargo[@]}" fuzz build --sanitizer "${FUZZ_SANITIZER:-none}"
# Build once here: the runs below find it done. FUZZ_JOBS targets run at once (each
# libFuzzer process takes one core).
running=0
for t in "${targets[@]}"; do
    rm -f "fuzz/logs/$t.result"
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
    fuzz_target "$t" &
    running=$((running + 1))
done
wait

status=0
echo "== summary"
for t in "${targets[@]}"; do
    if [[ -f fuzz/logs/$t.result ]]; then
        cat "fuzz/logs/$t.result"
        if grep -q CRASHED "fuzz/logs/$t.result"; then status=1; fi
    else
        echo "$t: no result (see fuzz/logs/$t.log)"
        status=1
    fi
done
exit "$status"
