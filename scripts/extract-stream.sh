#!/usr/bin/env bash
# Writes one TCP stream of a capture as two files of raw payload, one per direction:
# tests/data/NAME.client.bin (the side that opened the stream) and NAME.server.bin.
# Usage: scripts/extract-stream.sh CAPTURE STREAM_NUMBER NAME     (needs tshark)
set -euo pipefail
capture=$1 stream=$2 name=$3
out="$(dirname "${BASH_SOURCE[0]}")/../tests/data"
text=$(tshark -r "$capture" -q -z "follow,tcp,raw,$stream" |
    awk 'f && /^=+$/ { exit } /^Node 1/ { f = 1; next } f')
grep -v $'^\t' <<<"$text" | tr -d '\n' | xxd -r -p >"$out/$name.client.bin"
grep $'^\t' <<<"$text" | tr -d '\t\n' | xxd -r -p >"$out/$name.server.bin"
wc -c "$out/$name.client.bin" "$out/$name.server.bin"
