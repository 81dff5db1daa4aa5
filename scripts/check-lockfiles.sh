#!/usr/bin/env bash
# Checks that the crate, the benchmark harness (bench/) and the fuzz targets (fuzz/), three
# workspaces with a Cargo.lock each, agree on the dependencies they share:
#
# - every lock file is up to date with its Cargo.toml (`cargo metadata --locked`: no entry
#   would be added, removed or changed by a build);
# - a crate from a registry or git that two lock files both hold is locked at the same
#   version in both, for every SemVer-compatible line they both have (1.x, 0.5.x, ...: the
#   versions Cargo unifies). A line only one lock file has (a dependency of its own that
#   needs, say, an older major version) is not compared.
#
# Generic: it knows no crate by name. Exit 0 when they agree; otherwise it lists each crate
# that differs and how to align it (cargo update -p NAME@OLD --precise NEW in the lagging
# workspace), and exits 1.
#
#   scripts/check-lockfiles.sh [--offline]   (--offline: no index update for the freshness check)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

offline=()
if [[ ${1:-} == --offline ]]; then
    offline=(--offline)
elif [[ -n ${1:-} ]]; then
    echo "usage: scripts/check-lockfiles.sh [--offline]" >&2
    exit 2
fi

locks=(Cargo.lock bench/Cargo.lock fuzz/Cargo.lock)
status=0

for lock in "${locks[@]}"; do
    dir=$(dirname "$lock")
    if [[ ! -f $lock ]]; then
        echo "check-lockfiles: $lock is missing" >&2
        status=1
        continue
    fi
    if ! err=$(cargo metadata --locked "${offline[@]}" --format-version 1 \
        --manifest-path "$dir/Cargo.toml" 2>&1 >/dev/null); then
        echo "check-lockfiles: $lock is not up to date with $dir/Cargo.toml" \
            "(run cargo update --workspace in $dir, then align it):" >&2
        grep -vE "^ *(Updating|Locking|Adding|Downloading|Downloaded|Blocking) " <<<"$err" | head -n 8 | sed -e 's/^/    /' >&2
        status=1
    fi
done

# One line "NAME LINE VERSION FILE" per locked package from a registry or git (path
# packages, the workspaces' own crates, have no source). LINE is the SemVer-compatible
# series: the major version, or 0.MINOR, or 0.0.PATCH.
entries() {
    awk -v file="$1" '
        function flush() {
            if (name != "" && source != "") {
                split(version, v, /[.+-]/)
                line = v[1]
                if (v[1] == "0") line = (v[2] == "0") ? "0.0." v[3] : "0." v[2]
                print name, line, version, file
            }
            name = version = source = ""
        }
        /^\[\[package\]\]/ { flush(); next }
        /^\[/ { flush(); next }
        /^name = /    { name = $3; gsub(/"/, "", name) }
        /^version = / { version = $3; gsub(/"/, "", version) }
        /^source = /  { source = $3 }
        END { flush() }
    ' "$1"
}

mismatches=$(
    for lock in "${locks[@]}"; do
        [[ -f $lock ]] && entries "$lock"
    done | sort -k1,1 -k2,2 -k3,3V | awk '
        { key = $1 " " $2; seen[key] = seen[key] " " $4 "=" $3; if (!(key in first)) first[key] = $3
          else if ($3 != first[key]) differ[key] = 1 }
        END { for (k in differ) { split(k, a, " "); print a[1] " (" a[2] ".x):" seen[k] } }
    ' | sort
)
if [[ -n $mismatches ]]; then
    echo "check-lockfiles: shared crates locked at different versions:" >&2
    mapfile -t lines <<<"$mismatches"
    printf '    %s\n' "${lines[@]}" >&2
    echo "    align with: (cd DIR && cargo update -p NAME@OLD --precise NEW), DIR = . bench fuzz" >&2
    status=1
fi

if ((status == 0)); then
    echo "check-lockfiles: ${locks[*]} up to date and agreed on every shared crate"
fi
exit "$status"
