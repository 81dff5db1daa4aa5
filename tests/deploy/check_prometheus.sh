#!/usr/bin/env bash
# The Prometheus alerting rules an operator loads (deploy/prometheus/rpcpin-rules.yml):
# `promtool check rules`, their unit tests (`promtool test rules`, rpcpin-rules.test.yml),
# and every rpcpin metric they name exported by rpcpin (registered in src/metrics.rs).
# promtool comes from Debian's `prometheus` package (tests/deploy/install-deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

command -v promtool >/dev/null || {
    echo "check_prometheus: 'promtool' not found: run tests/deploy/install-deps.sh" >&2
    exit 1
}
rules=deploy/prometheus/rpcpin-rules.yml
promtool check rules "$rules"
(cd "$(dirname "$rules")" && promtool test rules rpcpin-rules.test.yml)

# Each metric named (rpcpin_NAME, rpcpin_NAME_total, rpcpin_NAME_bucket) is registered.
missing=0
while read -r metric; do
    name=${metric#rpcpin_}
    name=${name%_total}
    name=${name%_bucket}
    if ! grep -qF "\"$name\"," src/metrics.rs; then
        echo "check_prometheus: $rules names $metric, which src/metrics.rs does not register" >&2
        missing=1
    fi
done < <(grep -oE 'rpcpin_[a-z_]+' "$rules" | sort -u)
((missing == 0))
echo "check_prometheus: ok"
