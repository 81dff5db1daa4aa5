#!/usr/bin/env bash
# Checks that the crate, the benchmark harness (bench/) and the fuzz targets (fuzz/), three
# workspaces with a Cargo.lock each, agree on the dependencies they share:
#
# - every lock file is up to date with its Cargo.toml (`cargo metadata --locked`: a build
#   would add, remove or change no entry);
# - a crate from a registry or git that two lock files both hold is locked at the same
#   version in both, for every SemVer-compatible series they both have (1.x, 0.5.x, ...: the
#   versions Cargo unifies). A series only one lock file has (say a dependency of the fuzz
#   targets' own that needs an older major version) is not compared.
#
# Generic: it knows no crate by name. Exit 0 when they agree; otherwise it lists what
# differs and exits 1.
#
#   scripts/check-lockfiles.sh [--offline] [--fix]
#
#   --offline  no registry index update for the freshness check
#   --fix      bring a stale lock file up to date (cargo update --workspace: only what is
#              missing or unused changes), then lock every shared crate at the root
#              Cargo.lock's version (or, for one the root does not have, the highest) with
#              cargo update -p NAME@VERSION --precise VERSION, and check again
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

offline=()
fix=0
for arg in "$@"; do
    case $arg in
    --offline) offline=(--offline) ;;
    --fix) fix=1 ;;
    *)
        echo "usage: scripts/check-lockfiles.sh [--offline] [--fix]" >&2
        exit 2
        ;;
    esac
done

locks=(Cargo.lock bench/Cargo.lock fuzz/Cargo.lock)
status=0

# fresh DIR: DIR/Cargo.lock needs no change; prints cargo's complaint when it does.
fresh() {
    local err
    if ! err=$(cargo metadata --locked "${offline[@]}" --format-version 1 \
        --manifest-path "$1/Cargo.toml" 2>&1 >/dev/null); then
        grep -vE '^ *(Updating|Locking|Adding|Removing|Downloading|Downloaded|Blocking) ' <<<"$err" |
            head -n 8 | sed -e 's/^/    /'
        return 1
    fi
}

for lock in "${locks[@]}"; do
    dir=$(dirname "$lock")
    if [[ ! -f $lock ]]; then
        echo "check-lockfiles: $lock is missing" >&2
        status=1
    elif ! complaint=$(fresh "$dir"); then
        if ((fix)); then
            echo "check-lockfiles: $lock is stale: cargo update --workspace in $dir"
            (cd "$dir" && cargo update --workspace "${offline[@]}")
        else
            echo "check-lockfiles: $lock is not up to date with $dir/Cargo.toml" \
                "(scripts/check-lockfiles.sh --fix updates it):" >&2
            echo "$complaint" >&2
            status=1
        fi
    fi
done

# One line "NAME SERIES VERSION FILE" per locked package from a registry or git (path
# packages, the workspaces' own crates, have no source). SERIES is the SemVer-compatible
# series: MAJOR.x, or 0.MINOR.x, or 0.0.PATCH.
entries() {
    awk -v file="$1" '
        function flush() {
            if (name != "" && source != "") {
                split(version, v, /[.+-]/)
                series = v[1] ".x"
                if (v[1] == "0") series = (v[2] == "0") ? "0.0." v[3] : "0." v[2] ".x"
                print name, series, version, file
            }
            name = version = source = ""
        }
        /^\[/         { flush(); next }
        /^name = /    { name = $3; gsub(/"/, "", name) }
        /^version = / { version = $3; gsub(/"/, "", version) }
        /^source = /  { source = $3 }
        END { flush() }
    ' "$1"
}

# One line "NAME SERIES FILE=VERSION..." per crate and series locked at different versions.
mismatches() {
    local lock
    for lock in "${locks[@]}"; do
        if [[ -f $lock ]]; then entries "$lock"; fi
    done | sort -k1,1 -k2,2 -k4,4 | awk '
        { key = $1 " " $2; seen[key] = seen[key] " " $4 "=" $3
          if (!(key in first)) first[key] = $3; else if ($3 != first[key]) differ[key] = 1 }
        END { for (k in differ) print k seen[k] }
    ' | sort
}

# align MISMATCHES: each crate locked, in every lock file, at the root Cargo.lock's version
# (for one the root does not have, the highest).
align() {
    local name series rest pairs pair target dir
    while read -r name series rest; do
        [[ -n $name ]] || continue
        read -r -a pairs <<<"$rest"
        target=
        for pair in "${pairs[@]}"; do
            if [[ ${pair%%=*} == Cargo.lock ]]; then target=${pair#*=}; fi
        done
        if [[ -z $target ]]; then
            target=$(printf '%s\n' "${pairs[@]#*=}" | sort -V | tail -n 1)
        fi
        for pair in "${pairs[@]}"; do
            [[ ${pair#*=} == "$target" ]] && continue
            dir=$(dirname "${pair%%=*}")
            echo "check-lockfiles: $name $series: ${pair%%=*} ${pair#*=} -> $target"
            (cd "$dir" && cargo update "${offline[@]}" -p "$name@${pair#*=}" --precise "$target")
        done
    done <<<"$1"
}

found=$(mismatches)
if ((fix)); then
    # Aligning a crate can move a dependency of its own: a few rounds.
    for _ in 1 2 3; do
        [[ -n $found ]] || break
        align "$found"
        found=$(mismatches)
    done
    # What the fixes left, checked afresh.
    exec "$PWD/scripts/check-lockfiles.sh" "${offline[@]}"
fi
if [[ -n $found ]]; then
    echo "check-lockfiles: shared crates locked at different versions" \
        "(scripts/check-lockfiles.sh --fix aligns them on the root Cargo.lock):" >&2
    while read -r name series rest; do
        echo "    $name $series: $rest" >&2
    done <<<"$found"
    status=1
fi

if ((status == 0)); then
    echo "check-lockfiles: ${locks[*]} up to date and agreed on every shared crate"
fi
exit "$status"
