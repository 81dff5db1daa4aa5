#!/usr/bin/env bash
# rpcpin interop suite: real Samba, real rpcclient, impacket, tshark, nftables.
#
# Three network namespaces stand in for three hosts:
#
#   client 198.51.100.2 ──veth── 198.51.100.1  DMZ (rpcpin)  10.135.0.1 ──veth── 10.135.0.2  LAN (Samba)
#
# The DMZ firewall lets the client reach TCP 135 and the two pinned ports and
# nothing else; the DMZ does not forward and the client has no route to the LAN.
# If real clients then work through rpcpin, and stop working when rpcpin stops,
# rpcpin is what makes them work. See README.md beside this file.
#
# Usage: sudo tests/interop/run.sh      (RPCPIN_BIN overrides the binary,
#                                        KEEP_WORK=1 keeps the temp dir,
#                                        RPCPIN_EPM_MODE=relay|answer sets epm.mode,
#                                        default answer, as rpcpin)
# Prints PASS:/FAIL: per check and ends with "N passed, M failed".

# Helpers are called through check()/wait_for()/traps, which shellcheck cannot follow:
# shellcheck disable=SC2317
set -euo pipefail
# errtrace: the ERR trap (which records where an unexpected error hit) also
# fires inside functions.
set -E

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
RPCPIN_BIN="${RPCPIN_BIN:-$repo_root/target/release/rpcpin}"
PY="$repo_root/target/interop-venv/bin/python"
SAMBA_DCERPCD=/usr/libexec/samba/samba-dcerpcd
# bind_check.py imports epm_towers.py: keep __pycache__ out of the source tree.
export PYTHONDONTWRITEBYTECODE=1

# --- topology and fixtures --------------------------------------------------
CLI_IP=198.51.100.2
DMZ_OUT_IP=198.51.100.1
DMZ_IN_IP=10.135.0.1
LAN_IP=10.135.0.2
PIN_LSAD=6004      # samr, lsarpc, dssetup (Samba's rpcd_lsad)
PIN_CLASSIC=6001   # srvsvc, wkssvc (Samba's rpcd_classic)
# Two disjoint dynamic ranges: restarting Samba on the second one moves every
# service to a new port (Samba hands ports out from the start of its range).
RANGE1=49152-49407
RANGE2=50000-50255
RPC_USER=riguser
RPC_PASS=Rig-Pass-123
RPCPIN_USER=nobody # rpcpin binds 135 as root, then runs as this user
CLIENT_TIMEOUT=20  # seconds, for every client command
HANDSHAKE_S=3      # the suite's limits.handshake_timeout, in seconds
SILENT=300         # silent connections held while rpcclient must still work
PER_IP_DEFAULT=4000 # rpcpin's default limits.max_connections_per_ip
# epm.mode: "relay" (Samba's endpoint mapper answers the clients through rpcpin) or
# "answer" (rpcpin answers them itself from its own lookups at Samba).
EPM_MODE="${RPCPIN_EPM_MODE:-answer}"
ADMIN_LISTEN=127.0.0.1:9135 # rpcpin's /metrics, inside the DMZ namespace

# Namespace names carry our PID so that concurrent or stale runs never collide.
NS_CLI="rpcpin-cli-$$"
NS_DMZ="rpcpin-dmz-$$"
NS_LAN="rpcpin-lan-$$"

passed=0
failed=0
start_time=$SECONDS
WORK=""
samba_pid=""
rpcpin_pid=""
capture_pids=()
held_pid=""
created_user=0
error_at=""   # set by the ERR trap: where an unexpected failure stopped the suite
# The script's own stdout/stderr, saved: a signal can interrupt a check while its
# output is redirected, and cleanup's summary must still reach the terminal.
stdout_fd=""
stderr_fd=""

# Reporting, process and namespace helpers, the namespaces and rpcpin in the DMZ, Samba,
# rpcclient: shared with scale_out.sh and scripts/demo.sh.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

# --- cleanup (always runs) ----------------------------------------------------
cleanup() {
    local rc=$?
    set +e
    trap - ERR
    if [[ -n "$stdout_fd" ]]; then
        exec 1>&"$stdout_fd" 2>&"$stderr_fd"
    fi
    local pid
    for pid in "${capture_pids[@]}"; do stop_pid "$pid"; done
    stop_pid "$held_pid"
    stop_pid "$rpcpin_pid"
    stop_pid "$samba_pid"
    delete_namespaces "$NS_CLI" "$NS_DMZ" "$NS_LAN"
    ((created_user)) && remove_user
    finish "$rc" "$WORK/rpcpin.log" "$WORK"/samba-*.log
}

# --- setup: the firewall (the namespaces are set up by lib.sh) -------------------

# --- rpcpin -----------------------------------------------------------------------
# write_rpcpin_conf FILE [PER_IP]: the suite's configuration; PER_IP sets
# limits.max_connections_per_ip (unset: rpcpin's default, $PER_IP_DEFAULT).
write_rpcpin_conf() {
    local file=$1 per_ip=${2:-} per_ip_line=""
    if [[ -n "$per_ip" ]]; then
        per_ip_line="# All the suite's clients share one address: room for $SILENT silent ones and more.
max_connections_per_ip = $per_ip"
    fi
    cat >"$file" <<TOML
[backend]
host = "$LAN_IP"

[epm]
listen = "$DMZ_OUT_IP:135"
mode = "$EPM_MODE"

[[pin]]
name = "lsad"
listen = "$DMZ_OUT_IP:$PIN_LSAD"
interfaces = ["samr", "lsarpc", "dssetup"]

[[pin]]
name = "classic"
listen = "$DMZ_OUT_IP:$PIN_CLASSIC"
interfaces = ["srvsvc", "wkssvc"]

[log]
format = "text"

[limits]
# A client has $HANDSHAKE_S s (default 10 s) to send its first PDU, so the suite can
# watch silent connections being dropped.
handshake_timeout = "${HANDSHAKE_S}s"
$per_ip_line

[admin]
# /metrics, read from inside the DMZ namespace.
listen = "$ADMIN_LISTEN"

[process]
# rpcpin binds 135 as root, then switches to this user.
user = "$RPCPIN_USER"
TOML
}

# `rpcpin resolve` exits 0 and its table names every PORT given.
resolve_reports() {
    local out="$WORK/resolve.out" rc=0 port
    client "$NS_DMZ" "$RPCPIN_BIN" resolve --config "$WORK/rpcpin.toml" >"$out" 2>&1 || rc=$?
    cat "$out"
    ((rc == 0)) || { echo "rpcpin resolve exited $rc"; return 1; }
    for port in "$@"; do
        grep -qw -- "$port" "$out" || { echo "port $port not in the table"; return 1; }
    done
}

# --- client-side checks --------------------------------------------------------
enumdomains_via_rpcpin() {
    rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'
}

srvinfo_via_rpcpin() {
    rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" srvinfo RIGSRV platform_id 'os version'
}

srvinfo_and_enumdomains_via_rpcpin() {
    srvinfo_via_rpcpin && enumdomains_via_rpcpin
}

# A plain bind to srvsvc via pin classic and to samr via pin lsad, each accepted.
binds_via_pins() {
    client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc --expect accept &&
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_LSAD" samr --expect accept
}

# Listen on PORT in the DMZ on all addresses; prints the listener's pid.
start_canary() {
    local port=$1
    ip netns exec "$NS_DMZ" "$PY" -c '
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
time.sleep(120)' "$port" >/dev/null 2>&1 &
    echo $!
}

# tshark on a namespace's interface, port 135 only unless a capture filter is
# given: start (several may run at once), and stop them all (each writes its
# file on exit).
start_capture() {
    local ns=$1 iface=$2 file=$3 filter=${4:-tcp port 135}
    ip netns exec "$ns" tshark -i "$iface" -f "$filter" -w "$file" -q \
        >"$file.log" 2>&1 &
    capture_pids+=($!)
    wait_for 15 grep -q "Capturing on" "$file.log" ||
        die "tshark on $ns/$iface did not start capturing within 15 s"
}

stop_captures() {
    local pid
    sleep 0.5 # let the last segments reach the captures
    for pid in "${capture_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${capture_pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        stop_pid "$pid"
    done
    capture_pids=()
}

# Wireshark's own EPM dissector must see, in every EPM answer the client
# received (ept_map and ept_lookup), only the pinned interfaces, and in every
# ncacn_ip_tcp tower IPv4 = rpcpin's address and the pin's port.
tshark_agrees() {
    local file=$1
    tshark -r "$file" -Y 'epm && dcerpc.pkt_type == 2' -V 2>/dev/null |
        awk -v ip="$DMZ_OUT_IP" -v lsad="$PIN_LSAD" -v classic="$PIN_CLASSIC" '
            BEGIN { pin["SAMR"] = pin["LSARPC"] = pin["DSSETUP"] = lsad
                    pin["SRVSVC"] = pin["WKSSVC"] = classic }
            /^ *Floor 1 UUID:/      { iface = $4; tcp = 0; towers++
                if (!(iface in pin)) { printf "%s: tower of an unpinned interface\n", iface; bad++ } }
            /^ *Floor 4 TCP Port:/  { split($0, a, ":"); port = a[2] + 0; tcp = 1 }
            /^ *Floor 5 IP:/        { if (!tcp) next
                split($0, a, ":"); addr = a[2]
                ok = (addr == ip && port == pin[iface])
                n[sprintf("%s tcp tower: %s port %d (%s)", iface, addr, port, ok ? "ok" : "WRONG")]++
                if (!ok) bad++
                seen[iface]++ }
            END {
                for (k in n) printf "%s x%d\n", k, n[k]
                printf "%d towers dissected in the answers, %d of them to unpinned interfaces or wrong\n", towers, bad
                if (!seen["SAMR"] || !seen["SRVSVC"]) { print "no SAMR/SRVSVC tower dissected"; exit 1 }
                exit bad > 0 }' | sort
    return "${PIPESTATUS[1]}"
}

# What reached Samba's endpoint mapper (tshark on rpcpin's backend leg):
# binds and alter_contexts for the endpoint mapper only, and EPM calls other
# than the management ones; ept_lookup_handle_free must be among them (it
# passes), so the capture did see the suite's association.
backend_leg_clean() {
    local file=$1 ops ifaces
    ops=$(tshark -r "$file" -Y 'epm && dcerpc.pkt_type == 0' -T fields -e dcerpc.opnum 2>/dev/null |
        sort -n | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
    ifaces=$(tshark -r "$file" -Y 'dcerpc.pkt_type == 11 || dcerpc.pkt_type == 14' \
        -T fields -e dcerpc.cn_bind_to_uuid 2>/dev/null | tr ',' '\n' | sort | uniq -c |
        awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
    echo "EPM requests Samba received, by opnum: ${ops:-none}"
    echo "interfaces proposed in binds/alter_contexts Samba received on 135: ${ifaces:-none}"
    local bad=0 op
    for op in 0 1 5 6; do
        if grep -qE "(^|, )$op x" <<<"$ops"; then
            echo "opnum $op reached Samba"
            bad=1
        fi
    done
    grep -qE "(^|, )4 x" <<<"$ops" || { echo "no ept_lookup_handle_free (opnum 4) seen: capture missed the calls?"; bad=1; }
    if [[ -z "$ifaces" ]] || grep -q . <<<"$(tr ',' '\n' <<<"$ifaces" | grep -v 'e1af8308-5d1f-11c9-91a4-08002b14a0fa')"; then
        echo "a bind for another interface than the endpoint mapper reached Samba (or none was seen)"
        bad=1
    fi
    ((bad == 0))
}

# syns_to FILE HOST:PORT: prints the source address of every TCP connection opened to
# HOST:PORT in a capture (its SYN), one a line.
syns_to() {
    local file=$1 host=${2%:*} port=${2##*:}
    tshark -r "$file" -Y "tcp.flags.syn == 1 && tcp.flags.ack == 0 && ip.dst == $host && tcp.dstport == $port" \
        -T fields -e ip.src 2>/dev/null
}

# Answer mode: what reached Samba's endpoint mapper (tshark on rpcpin's backend leg) is
# rpcpin's own lookups and nothing else. Every TCP connection to $LAN_IP:135 came from
# rpcpin's $DMZ_IN_IP, there are exactly as many as rpcpin counted lookups and resolutions
# at the server over the capture (LOOKUPS_BEFORE: their sum before it), at most MAX of
# them, far fewer than the client's own connections to rpcpin's 135 (the client capture);
# Samba received only ept_lookup, ept_map and ept_lookup_handle_free (opnums 2, 3, 4), and
# binds for the endpoint mapper only.
backend_leg_answer_mode() {
    local file=$1 client_file=$2 before=$3 max=$4 ops ifaces after to_samba others from_client
    ops=$(tshark -r "$file" -Y 'epm && dcerpc.pkt_type == 0' -T fields -e dcerpc.opnum 2>/dev/null |
        sort -n | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
    ifaces=$(tshark -r "$file" -Y 'dcerpc.pkt_type == 11 || dcerpc.pkt_type == 14' \
        -T fields -e dcerpc.cn_bind_to_uuid 2>/dev/null | tr ',' '\n' | sort | uniq -c |
        awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
    after=$(epm_server_lookups) || { echo "cannot read rpcpin's /metrics"; return 1; }
    to_samba=$(syns_to "$file" "$LAN_IP:135" | grep -cx "$DMZ_IN_IP" || true)
    others=$(syns_to "$file" "$LAN_IP:135" | grep -cvx "$DMZ_IN_IP" || true)
    from_client=$(syns_to "$client_file" "$DMZ_OUT_IP:135" | grep -c . || true)
    echo "connections to Samba's EPM $LAN_IP:135: $to_samba from rpcpin ($DMZ_IN_IP), $others from elsewhere"
    echo "rpcpin's own lookups and resolutions at the server over the capture (/metrics): $((after - before))"
    echo "the client's connections to rpcpin's $DMZ_OUT_IP:135 meanwhile: $from_client"
    echo "EPM requests Samba received, by opnum: ${ops:-none}"
    echo "interfaces proposed in binds/alter_contexts Samba received on 135: ${ifaces:-none}"
    local bad=0
    ((others == 0)) || { echo "a connection to Samba's EPM came from elsewhere"; bad=1; }
    ((to_samba == after - before)) || { echo "Samba's EPM got $to_samba connections, rpcpin counted $((after - before)) lookups"; bad=1; }
    ((to_samba >= 1 && to_samba <= max)) || { echo "expected 1 to $max connections to Samba's EPM"; bad=1; }
    ((from_client > to_samba)) || { echo "the client made no more connections than Samba's EPM got"; bad=1; }
    if grep -qE "(^|, )[^234] x|(^|, )[0-9]{2,} x" <<<"$ops"; then
        echo "an EPM call other than ept_lookup/ept_map/ept_lookup_handle_free reached Samba"
        bad=1
    fi
    if [[ -z "$ifaces" ]] || grep -q . <<<"$(tr ',' '\n' <<<"$ifaces" | grep -v 'e1af8308-5d1f-11c9-91a4-08002b14a0fa')"; then
        echo "a bind for another interface than the endpoint mapper reached Samba (or none was seen)"
        bad=1
    fi
    ((bad == 0))
}

# tshark dissects every bind_ack and EPM answer (ept_lookup and ept_map) the client
# received in FILE, and flags none of the capture's DCE/RPC frames malformed or with an
# expert warning or error.
tshark_well_formed() {
    local file=$1 acks lookups maps bad
    acks=$(tshark -r "$file" -Y 'dcerpc.pkt_type == 12' 2>/dev/null | grep -c . || true)
    lookups=$(tshark -r "$file" -Y 'epm && dcerpc.pkt_type == 2 && dcerpc.opnum == 2' 2>/dev/null | grep -c . || true)
    maps=$(tshark -r "$file" -Y 'epm && dcerpc.pkt_type == 2 && dcerpc.opnum == 3' 2>/dev/null | grep -c . || true)
    echo "tshark dissected $acks bind_ack(s), $lookups ept_lookup answer(s), $maps ept_map answer(s)"
    # tshark notes every bind_nak with the warning "Bind not acknowledged": the suite asks
    # for those (nak_on_135), so a bind_nak counts here only when malformed.
    tshark -r "$file" -Y '(dcerpc || epm) && (_ws.malformed || (_ws.expert.severity >= 0x00600000 && dcerpc.pkt_type != 13))' \
        -T fields -e frame.number -e _ws.expert.message 2>/dev/null >"$WORK/expert.out"
    bad=$(grep -c . "$WORK/expert.out" || true)
    echo "DCE/RPC frames malformed or with expert warnings/errors: $bad"
    head -n 10 "$WORK/expert.out"
    ((acks > 0 && lookups > 0 && maps > 0 && bad == 0))
}

# metric NAME [MATCH]: the sum of rpcpin's /metrics samples of NAME whose labels contain
# MATCH (a fixed string).
metric() {
    local name=$1 match=${2:-}
    in_ns "$NS_DMZ" "$PY" -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://$ADMIN_LISTEN/metrics" |
        awk -v n="$name" -v m="$match" '
            $1 == n || index($1, n "{") == 1 { if (index($1, m)) { s += $NF } }
            END { printf "%d\n", s }'
}

# rpcpin's connections to the server's endpoint mapper of its own: its lookups for its
# answers (answer mode) and its uncached port resolutions for pin connections.
epm_server_lookups() {
    local a b
    a=$(metric rpcpin_epm_server_lookups_total) || return 1
    b=$(metric rpcpin_backend_resolutions_total 'cached="false"') || return 1
    echo $((a + b))
}

# What reached Samba's samr port through pin lsad (tshark on rpcpin's backend leg):
# requests on context 0 (the control calls), none on context 1 (winreg, refused).
backend_saw_no_call_on_context_1() {
    local file=$1 ctxs
    ctxs=$(tshark -r "$file" -d "tcp.port==$2,dcerpc" -Y 'dcerpc.pkt_type == 0' \
        -T fields -e dcerpc.cn_ctx_id 2>/dev/null | sort -n | uniq -c |
        awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
    echo "requests Samba received on $LAN_IP:$2, by context id: ${ctxs:-none}"
    grep -qE "(^|, )0 x" <<<"$ctxs" || { echo "no request on context 0: capture missed the calls?"; return 1; }
    if grep -qE "(^|, )1 x" <<<"$ctxs"; then
        echo "a request on context 1 reached Samba"
        return 1
    fi
}

# --- rpcpin's log (log_mark is in lib.sh) ------------------------------------------
# rpcpin_logged MARK MIN PATTERN...: at least MIN lines logged after line MARK
# contain every PATTERN (fixed strings); waits up to 3 s for them. Prints the count
# and the first two.
rpcpin_logged() {
    local mark=$1 min=$2
    shift 2
    local slice="$WORK/log.slice" deadline=$((SECONDS + 3)) n p
    while :; do
        tail -n +"$((mark + 1))" "$WORK/rpcpin.log" >"$slice"
        for p in "$@"; do
            grep -F -- "$p" "$slice" >"$slice.next" || true
            mv "$slice.next" "$slice"
        done
        n=$(wc -l <"$slice")
        ((n >= min || SECONDS >= deadline)) && break
        sleep 0.2
    done
    echo "rpcpin.log: $n line(s) with $* (at least $min expected)"
    head -n 2 "$slice" | sed -e 's/^[^ ]* *//' | cut -c1-400
    ((n >= min))
}

# --- checks of port 135's policies ----------------------------------------------
# A bind proposing only IFACE on rpcpin's 135 gets a bind_nak, read raw and by
# impacket, and rpcpin logs the refusal under the interface's alias.
nak_on_135() {
    local iface=$1 mark
    mark=$(log_mark)
    client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" 135 "$iface" --raw --expect nak || return 1
    client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" 135 "$iface" --expect nak || return 1
    rpcpin_logged "$mark" 2 'event="refused"' 'policy="interface"' "alias=\"$iface\"" 'kind=bind' \
        'reason="port 135 serves the endpoint mapper only"'
}

# Samba's own EPM, asked directly, answers such a bind with a bind_ack rejecting
# the context: a bind_nak through rpcpin cannot be Samba's.
samba_rejects_on_135() {
    local iface
    for iface in "$@"; do
        client "$NS_DMZ" "$PY" "$script_dir/bind_check.py" "$LAN_IP" 135 "$iface" --raw \
            --expect reject --refused "$iface" || return 1
    done
}

# ept_map for interfaces Samba serves but no pin carries: not registered, no tower.
unpinned_invisible() {
    local mark
    mark=$(log_mark)
    client "$NS_CLI" "$PY" "$script_dir/epm_ops.py" "$DMZ_OUT_IP" map:winreg=not_registered \
        map:netdfs=not_registered map:samr=towers --expect-ip "$DMZ_OUT_IP" \
        --expect-port "samr=$PIN_LSAD" || return 1
    if [[ "$EPM_MODE" == answer ]]; then
        # rpcpin answers them itself: nothing removed from a server's answer.
        rpcpin_logged "$mark" 2 'event="refused"' 'policy="hide_unpinned"' \
            'reason="interface no pin carries: answered ept_s_not_registered"'
    else
        rpcpin_logged "$mark" 2 'event="refused"' 'policy="hide_unpinned"' 'opnum=3' 'entries=1'
    fi
}

# Management calls on one association: faults, logged, and the association
# still answers lookups afterwards.
epm_management_refused() {
    local mark
    mark=$(log_mark)
    client "$NS_CLI" "$PY" "$script_dir/epm_ops.py" "$DMZ_OUT_IP" insert=fault:0x5 \
        delete=fault:0x5 mgmt_delete=fault:0x5 inq_object=fault:0x5 lookup_handle_free=response \
        map:samr=towers --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" || return 1
    rpcpin_logged "$mark" 1 'event="refused"' 'policy="opnum"' 'alias="epm"' 'opnum=0 ' || return 1
    rpcpin_logged "$mark" 1 'event="refused"' 'policy="opnum"' 'alias="epm"' 'opnum=6 '
}

# Answer mode: rpcpin's summary of each endpoint-mapper association (its connection_closed
# line, which carries from_cache and from_server in answer mode), some with answers fresh
# from the server, some from its cache.
epm_answered_logged() {
    local answered="$WORK/answered.out" server cache
    grep -F 'event="connection_closed"' "$WORK/rpcpin.log" | grep -F 'from_server=' >"$answered" || true
    server=$(grep -cE 'from_server=[1-9]' "$answered" || true)
    cache=$(grep -E 'from_cache=[1-9]' "$answered" | grep -cE 'from_server=0( |$)' || true)
    echo "rpcpin.log: $(wc -l <"$answered") answered association(s), $server with answers from the server, $cache with answers from the cache only"
    head -n 3 "$answered" | sed -e 's/^[^ ]* *//' | cut -c1-300
    ((server >= 1 && cache >= 1))
}

# --- limits, keepalive, privileges ----------------------------------------------
# $SILENT silent connections over the three ports; rpcclient must work while
# they are all open; rpcpin must close each after the handshake timeout.
silent_flood() {
    local mark
    mark=$(log_mark)
    client "$NS_CLI" "$PY" "$script_dir/hold_conns.py" "$DMZ_OUT_IP" "135,$PIN_LSAD,$PIN_CLASSIC" \
        "$SILENT" --closed-after "$((HANDSHAKE_S - 1)).9" --closed-before "$((HANDSHAKE_S + 2))" \
        --then-expect 'name:[RIGSRV]' --then-expect 'name:[Builtin]' \
        --then rpcclient -s "$WORK/client.conf" -U "$RPC_USER%$RPC_PASS" \
        "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" -c enumdomains || return 1
    rpcpin_logged "$mark" "$SILENT" 'event="connection_closed"' 'bytes_from_client=0' \
        "timed out after ${HANDSHAKE_S}s"
}

# With the default per-address limit, the connection past it is closed at once
# (not after the handshake timeout) while the others stay open.
per_ip_limit() {
    local mark
    mark=$(log_mark)
    client "$NS_CLI" "$PY" "$script_dir/hold_conns.py" "$DMZ_OUT_IP" "135,$PIN_LSAD,$PIN_CLASSIC" \
        "$PER_IP_DEFAULT" --extra 1 --extra-closed-within 1 \
        --closed-after "$((HANDSHAKE_S - 1)).9" --closed-before "$((HANDSHAKE_S + 2))" || return 1
    rpcpin_logged "$mark" 1 'event="refused"' 'policy="max_connections_per_ip"' "client=$CLI_IP"
}

# Both of rpcpin's sockets of a held association through pin lsad carry a
# keepalive timer: the client leg (local port $PIN_LSAD) and the backend leg
# (to Samba's samr port). rpcpin's default idle time is 60 s; the kernel's
# would be 2 hours, and without SO_KEEPALIVE there is no such timer at all.
keepalive_both_legs() {
    local backend_port=$1 out="$WORK/ss.out"
    in_ns "$NS_DMZ" ss -Htnoe state established \
        "( sport = :$PIN_LSAD or dst $LAN_IP:$backend_port )" 2>/dev/null >"$out"
    sed -e 's/ ino:.*//' "$out"
    awk -v pin=":$PIN_LSAD" -v be="$LAN_IP:$backend_port" '
        $4 == be || $3 ~ pin "$" {
            leg = ($4 == be) ? "backend" : "client"
            if (match($0, /timer:\(keepalive,(1min|[0-9]+sec|[0-9]+ms)/)) ka[leg]++ }
        END { printf "keepalive timer on the client leg: %s, on the backend leg: %s\n",
                  ka["client"] ? "yes" : "NO", ka["backend"] ? "yes" : "NO"
              exit !(ka["client"] && ka["backend"]) }' "$out"
}

backend_leg_up() {
    in_ns "$NS_DMZ" ss -Htn state established "( dst $LAN_IP:$1 )" | grep -q .
}

# rpcpin (PID) runs as $RPCPIN_USER with no capabilities left, and it is the
# process that holds port 135.
runs_unprivileged() {
    local pid=$1 uid gid
    uid=$(id -u "$RPCPIN_USER")
    gid=$(id -g "$RPCPIN_USER")
    grep -E '^(Uid|Gid|Groups|CapEff):' "/proc/$pid/status" || return 1
    in_ns "$NS_DMZ" ss -Hltnp "sport = :135" | awk '{ print "listening:", $4, $6 }'
    in_ns "$NS_DMZ" ss -Hltnp "sport = :135" | grep -q "pid=$pid," || { echo "pid $pid does not hold port 135"; return 1; }
    awk -v u="$uid" -v g="$gid" '
        /^Uid:/    { uok = ($2 == u && $3 == u && $4 == u && $5 == u) }
        /^Gid:/    { gok = ($2 == g && $3 == g && $4 == g && $5 == g) }
        /^CapEff:/ { cok = ($2 ~ /^0+$/) }
        END { exit !(uok && gok && cok) }' "/proc/$pid/status" || {
        echo "expected uid $uid, gid $gid, no effective capabilities"
        return 1
    }
    rpcpin_logged 0 1 'event="privileges_dropped"' "user=\"$RPCPIN_USER\"" "uid=$uid"
}

# ==============================================================================
main() {
    case "$EPM_MODE" in
    relay | answer) ;;
    *)
        echo "run.sh: RPCPIN_EPM_MODE must be relay or answer, not $EPM_MODE" >&2
        echo "0 passed, 1 failed"
        exit 1
        ;;
    esac
    begin_run run.sh

    WORK="$(mktemp -d -t rpcpin-interop.XXXXXX)"
    mkdir -p "$WORK"/samba/{lock,state,cache,pid,private,ncalrpc,log}
    : >"$WORK/rpcpin.log"

    # Everything the suite uses, installed if missing (quick when present).
    "$script_dir/install-deps.sh" | sed -e 's/^/    /' || die "install-deps.sh failed"
    [[ -x "$RPCPIN_BIN" ]] || die "no rpcpin binary at $RPCPIN_BIN (cargo build --release)"

    # Namespaces left by a run that was killed outright (its PID is gone).
    remove_stale_namespaces '^rpcpin-(cli|dmz|lan)-[0-9]+$'
    setup_dmz_topology
    setup_firewall
    write_smb_conf "$RANGE1"
    write_client_conf
    id -u "$RPCPIN_USER" >/dev/null 2>&1 || die "no user $RPCPIN_USER for [process] user"
    # All the suite's clients come from $CLI_IP: room for the silent ones.
    write_rpcpin_conf "$WORK/rpcpin.toml" 1000
    # The same with rpcpin's default per-address limit ($PER_IP_DEFAULT).
    write_rpcpin_conf "$WORK/rpcpin-default-limits.toml"
    setup_samba_user
    start_samba "$RANGE1" 1

    # --- baseline: Samba, asked directly from the DMZ ---------------------------
    check "Samba's EPM (asked from the DMZ) puts samr/srvsvc/winreg/netdfs on $LAN_IP dynamic ports, not the pinned ones" \
        client "$NS_DMZ" "$PY" "$script_dir/epm_towers.py" "$LAN_IP" samr srvsvc winreg netdfs \
        --expect-ip "$LAN_IP" --not-port "samr=$PIN_LSAD" --not-port "srvsvc=$PIN_CLASSIC"
    local samr1 srvsvc1 winreg1
    samr1=$(samba_port samr) || true
    srvsvc1=$(samba_port srvsvc) || true
    winreg1=$(samba_port winreg) || true
    [[ -n "$samr1" && -n "$srvsvc1" && -n "$winreg1" ]] || die "could not read Samba's ports"
    log "Samba: samr $LAN_IP:$samr1, srvsvc $LAN_IP:$srvsvc1, winreg $LAN_IP:$winreg1"

    # The interfaces the pins must refuse are really served, so a refusal
    # through rpcpin is rpcpin's doing: winreg by its own process, netdfs by
    # the very process (and port) that serves srvsvc.
    check "Samba serves winreg: direct bind from the DMZ to $LAN_IP:$winreg1 is accepted" \
        client "$NS_DMZ" "$PY" "$script_dir/bind_check.py" "$LAN_IP" "$winreg1" winreg --expect accept
    check "Samba serves netdfs next to srvsvc: direct bind to $LAN_IP:$srvsvc1 is accepted" \
        client "$NS_DMZ" "$PY" "$script_dir/bind_check.py" "$LAN_IP" "$srvsvc1" netdfs --expect accept
    check "Samba accepts an alter_context srvsvc -> netdfs on $LAN_IP:$srvsvc1" \
        client "$NS_DMZ" "$PY" "$script_dir/bind_check.py" "$LAN_IP" "$srvsvc1" srvsvc --alter netdfs --expect accept
    check "Samba, offered netdfs + srvsvc in one bind on $LAN_IP:$srvsvc1, accepts netdfs (its first context)" \
        client "$NS_DMZ" "$PY" "$script_dir/bind_check.py" "$LAN_IP" "$srvsvc1" netdfs,srvsvc --raw \
        --expect split --accepted netdfs --refused srvsvc --any-reason
    check "Samba itself answers a call on a context it rejected (samr bound on $LAN_IP:$samr1, winreg proposed by alter_context as context 1) with fault nca_s_unk_if, flags 0x23, context id 0" \
        client "$NS_DMZ" "$PY" "$script_dir/context_check.py" "$LAN_IP" "$samr1" samr winreg
    check "Samba's EPM itself answers ept_map on an NTLM association at authentication level connect (impacket, $RPC_USER): samr/srvsvc at $LAN_IP:$samr1/:$srvsvc1" \
        client "$NS_DMZ" "$PY" "$script_dir/epm_towers.py" "$LAN_IP" samr srvsvc \
        --auth "$RPC_USER%$RPC_PASS" --no-sign-flags --expect-ip "$LAN_IP" \
        --expect-port "samr=$samr1" --expect-port "srvsvc=$srvsvc1"
    check "rpcclient enumdomains works directly against Samba from the DMZ (credentials and Samba sane)" \
        rpcclient_ok "$NS_DMZ" "ncacn_ip_tcp:${LAN_IP}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'

    # What Samba's own endpoint mapper answers where rpcpin must answer instead.
    check "Samba's EPM itself answers a bind to IRemoteActivation / ISystemActivator with a bind_ack rejecting it (not a bind_nak)" \
        samba_rejects_on_135 iremoteactivation isystemactivator
    check "Samba's EPM itself answers ept_insert/ept_delete/ept_mgmt_delete/ept_inq_object, none with fault 5 (access denied)" \
        client "$NS_DMZ" "$PY" "$script_dir/epm_ops.py" "$LAN_IP" insert=not-fault:0x5 \
        delete=not-fault:0x5 mgmt_delete=not-fault:0x5 inq_object=not-fault:0x5
    check "Samba's EPM lists winreg and netdfs in its ept_lookup answer (all entries at once, status ept_s_not_registered)" \
        client "$NS_DMZ" "$PY" "$script_dir/epm_ops.py" "$LAN_IP" lookup=entries --includes winreg,netdfs

    # --- e. the firewall: nothing but the three openings -------------------------
    check "client cannot reach Samba's EPM $LAN_IP:135 directly" \
        blocked_from_client "$LAN_IP" 135
    local canary
    canary=$(start_canary "$samr1")
    if wait_for 5 tcp_connects "$NS_DMZ" "$DMZ_OUT_IP" "$samr1"; then
        check "client cannot reach a non-pinned DMZ port ($DMZ_OUT_IP:$samr1, where a listener runs)" \
            blocked_from_client "$DMZ_OUT_IP" "$samr1"
    else
        fail "canary listener on $DMZ_OUT_IP:$samr1 did not come up"
    fi
    stop_pid "$canary"

    # --- rpcpin's own CLI --------------------------------------------------------
    check "rpcpin check accepts the suite's config" \
        client "$NS_DMZ" "$RPCPIN_BIN" check --config "$WORK/rpcpin.toml"
    check "rpcpin resolve (from the DMZ) reports Samba's current samr and srvsvc ports" \
        resolve_reports "$samr1" "$srvsvc1"

    start_dmz_rpcpin
    local rpcpin_main=$rpcpin_pid
    log "epm.mode = \"$EPM_MODE\""

    # --- h. privileges --------------------------------------------------------------
    check "rpcpin bound 135 as root and now runs as $RPCPIN_USER (uid $(id -u "$RPCPIN_USER")) with no capabilities" \
        runs_unprivileged "$rpcpin_pid"

    # --- a. ept_map through rpcpin: towers rewritten -----------------------------
    # Both legs of port 135 are captured: the client's, and rpcpin's to Samba.
    local lookups_before
    lookups_before=$(epm_server_lookups) || die "cannot read rpcpin's /metrics at $ADMIN_LISTEN"
    start_capture "$NS_CLI" to-dmz "$WORK/epm-client.pcapng"
    start_capture "$NS_DMZ" to-lan "$WORK/epm-backend.pcapng"
    check "ept_map via rpcpin: samr/lsarpc towers say $DMZ_OUT_IP:$PIN_LSAD, srvsvc/wkssvc $DMZ_OUT_IP:$PIN_CLASSIC" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr lsarpc srvsvc wkssvc \
        --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "lsarpc=$PIN_LSAD" \
        --expect-port "srvsvc=$PIN_CLASSIC" --expect-port "wkssvc=$PIN_CLASSIC"

    # --- g. port 135: the endpoint mapper's lookups only, pinned interfaces only ---
    check "ept_map via rpcpin for winreg and netdfs (served by Samba, carried by no pin) answers ept_s_not_registered with no tower" \
        unpinned_invisible
    check "ept_lookup via rpcpin lists only the pinned interfaces, only their ncacn_ip_tcp towers (Samba's ncacn_np and ncalrpc ones hidden), every one rewritten" \
        client "$NS_CLI" "$PY" "$script_dir/epm_ops.py" "$DMZ_OUT_IP" lookup=entries --tcp-only \
        --only samr,lsarpc,dssetup,srvsvc,wkssvc --includes samr,lsarpc,dssetup,srvsvc,wkssvc \
        --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "lsarpc=$PIN_LSAD" \
        --expect-port "dssetup=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC" --expect-port "wkssvc=$PIN_CLASSIC"
    check "impacket's own epm.hept_map via rpcpin: ncacn_ip_tcp:${DMZ_OUT_IP}[$PIN_LSAD] for samr, [$PIN_CLASSIC] for srvsvc" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr srvsvc --hept-map \
        --expect-port "samr=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC"
    if [[ "$EPM_MODE" == answer ]]; then
        check "ept_lookup via rpcpin with max_ents 2, paged with rpcpin's entry handles to a null one: the pinned interfaces' tcp towers, each once, rewritten; a walk left half-way (max_ents 1) freed by ept_lookup_handle_free, the freed handle then gives nothing; ept_map with max_towers 1: one tower and a null entry handle" \
            client "$NS_CLI" "$PY" "$script_dir/epm_ops.py" "$DMZ_OUT_IP" lookup_pages:2=pages \
            lookup_free:1=freed map:srvsvc=towers map1:samr=towers_end map1:wkssvc=towers_end --tcp-only \
            --only samr,lsarpc,dssetup,srvsvc,wkssvc --includes samr,lsarpc,dssetup,srvsvc,wkssvc \
            --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "lsarpc=$PIN_LSAD" \
            --expect-port "dssetup=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC" --expect-port "wkssvc=$PIN_CLASSIC"
        check "ept_map via rpcpin on an association bound with NDR64 only (impacket encodes and decodes NDR64): samr/srvsvc towers say $DMZ_OUT_IP:$PIN_LSAD and :$PIN_CLASSIC" \
            client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr srvsvc --ndr64 \
            --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC"
    fi
    check "via rpcpin, ept_insert/ept_delete/ept_mgmt_delete/ept_inq_object get fault 5 (access denied); ept_lookup_handle_free and ept_map still answer on the same association" \
        epm_management_refused
    check "a bind to IRemoteActivation alone on rpcpin's 135 gets a bind_nak (raw and impacket), logged as policy=interface" \
        nak_on_135 iremoteactivation
    check "a bind to ISystemActivator alone on rpcpin's 135 gets a bind_nak (raw and impacket), logged as policy=interface" \
        nak_on_135 isystemactivator
    check "one bind proposing epm + IRemoteActivation on rpcpin's 135: epm accepted, IRemoteActivation rejected" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" 135 epm,iremoteactivation --raw \
        --expect split --accepted epm --refused iremoteactivation
    stop_captures
    check "tshark's EPM dissector (capture on the client veth) sees the same rewritten floors, and no unpinned interface" \
        tshark_agrees "$WORK/epm-client.pcapng"
    check "tshark dissects the bind_acks and the ept_map and ept_lookup answers the client received (epm.mode $EPM_MODE) with no malformed packet and no expert warning" \
        tshark_well_formed "$WORK/epm-client.pcapng"
    if [[ "$EPM_MODE" == answer ]]; then
        check "answer mode, tshark on rpcpin's backend leg: Samba's EPM got no client connection, only rpcpin's own lookups (as many as /metrics counts, at most 5: samr, lsarpc, srvsvc, wkssvc and one ept_lookup), opnums 2/3/4 only" \
            backend_leg_answer_mode "$WORK/epm-backend.pcapng" "$WORK/epm-client.pcapng" "$lookups_before" 5
        check "answer mode: rpcpin's connection summaries say where the answers came from: the server and its cache" \
            epm_answered_logged
    else
        check "tshark on rpcpin's backend leg: Samba's EPM never saw a management call (opnum 0/1/5/6) nor a bind for anything but the endpoint mapper" \
            backend_leg_clean "$WORK/epm-backend.pcapng"
    fi
    local mark
    mark=$(log_mark)
    check "ept_map via rpcpin on an NTLM association at authentication level connect (impacket set_auth_level(2), $RPC_USER): samr/srvsvc towers say $DMZ_OUT_IP:$PIN_LSAD and :$PIN_CLASSIC" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr srvsvc \
        --auth "$RPC_USER%$RPC_PASS" --no-sign-flags --expect-ip "$DMZ_OUT_IP" \
        --expect-port "samr=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC"
    if [[ "$EPM_MODE" == answer ]]; then
        check "answer mode: rpcpin relayed that authenticated association to Samba's EPM (its connection_closed summary says relayed=\"authenticated bind\")" \
            rpcpin_logged "$mark" 1 'event="connection_closed"' 'relayed="authenticated bind"'
    fi

    # --- b. real client through rpcpin -------------------------------------------
    check "rpcclient enumdomains (samr via pin lsad :$PIN_LSAD) from the client works" \
        enumdomains_via_rpcpin
    check "rpcclient srvinfo (srvsvc via pin classic :$PIN_CLASSIC) from the client works" \
        srvinfo_via_rpcpin

    # --- i. keepalive on both legs ------------------------------------------------
    local held_out="$WORK/held.out"
    client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_LSAD" samr \
        --expect accept --hold 10 >"$held_out" 2>&1 &
    held_pid=$!
    if wait_for 8 backend_leg_up "$samr1" && wait_for 3 grep -q holding "$held_out"; then
        check "an association held through pin lsad: rpcpin's sockets on both legs (:$PIN_LSAD and to $LAN_IP:$samr1) have a TCP keepalive timer" \
            keepalive_both_legs "$samr1"
    else
        fail "no association held through pin lsad to $LAN_IP:$samr1 within 8 s"
        show "$held_out"
    fi
    stop_pid "$held_pid"
    held_pid=""

    # --- j. limits: silent clients ------------------------------------------------
    check "$SILENT silent connections held on 135/$PIN_LSAD/$PIN_CLASSIC: rpcclient enumdomains works meanwhile; rpcpin closes each after its ${HANDSHAKE_S} s handshake timeout" \
        silent_flood

    # --- d. pins refuse what they do not carry -----------------------------------
    local port
    for port in "$PIN_LSAD" "$PIN_CLASSIC"; do
        check "bind to winreg via pin port $port is refused (provider_rejection, abstract_syntax_not_supported)" \
            client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$port" winreg --expect reject
    done
    check "bind to samr via pin lsad :$PIN_LSAD is accepted (control)" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_LSAD" samr --expect accept
    check "bind to srvsvc via pin classic :$PIN_CLASSIC is accepted (control)" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc --expect accept
    check "bind to samr via pin classic :$PIN_CLASSIC (the other pin's interface) is refused" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" samr --expect reject
    check "bind to netdfs via pin classic :$PIN_CLASSIC (same Samba process as srvsvc, not pinned) is refused" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" netdfs --expect reject
    check "one bind proposing srvsvc + netdfs via pin classic :$PIN_CLASSIC: srvsvc accepted, netdfs rejected (abstract_syntax_not_supported), and a call on srvsvc answered" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc,netdfs \
        --raw --expect split --accepted srvsvc --refused netdfs --call
    check "one bind proposing netdfs + srvsvc (refused one first) via pin classic :$PIN_CLASSIC: netdfs rejected, srvsvc accepted, and a call on srvsvc answered" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" netdfs,srvsvc \
        --raw --expect split --accepted srvsvc --refused netdfs --call
    check "one bind proposing samr + winreg via pin lsad :$PIN_LSAD: samr accepted, winreg rejected, and a call on samr answered" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_LSAD" samr,winreg \
        --raw --expect split --accepted samr --refused winreg --call
    check "alter_context srvsvc -> netdfs via pin classic :$PIN_CLASSIC is refused" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc --alter netdfs --expect reject
    check "alter_context srvsvc -> wkssvc (same pin) via pin classic :$PIN_CLASSIC is accepted (control)" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc --alter wkssvc --expect accept
    start_capture "$NS_DMZ" to-lan "$WORK/samr-backend.pcapng" "tcp port $samr1"
    mark=$(log_mark)
    check "via pin lsad :$PIN_LSAD, a call on context 1 (winreg, refused by rpcpin's alter_context_resp) gets rpcpin's fault as Samba's (nca_s_unk_if, 0x23, context 0), whole and in two fragments (one fault); samr on context 0 still answered" \
        client "$NS_CLI" "$PY" "$script_dir/context_check.py" "$DMZ_OUT_IP" "$PIN_LSAD" samr winreg --fragments
    stop_captures
    check "tshark on rpcpin's backend leg to $LAN_IP:$samr1: Samba received the calls on context 0, none on context 1" \
        backend_saw_no_call_on_context_1 "$WORK/samr-backend.pcapng" "$samr1"
    check "rpcpin logged both refusals as policy=context" \
        rpcpin_logged "$mark" 2 'event="refused"' 'policy="context"' 'context_id=1 '

    # --- c. Samba moves its ports; rpcpin untouched follows -----------------------
    stop_samba
    start_samba "$RANGE2" 2
    local samr2 srvsvc2
    samr2=$(samba_port samr) || true
    srvsvc2=$(samba_port srvsvc) || true
    check "after a restart on $RANGE2 Samba's samr/srvsvc ports moved ($samr1 -> $samr2, $srvsvc1 -> $srvsvc2)" \
        test "$samr2" != "$samr1" -a "$srvsvc2" != "$srvsvc1" -a -n "$samr2" -a -n "$srvsvc2"
    check "rpcclient enumdomains via rpcpin still works after Samba moved" \
        enumdomains_via_rpcpin
    check "rpcclient srvinfo via rpcpin still works after Samba moved" \
        srvinfo_via_rpcpin
    check "ept_map via rpcpin still answers the pinned ports after Samba moved" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr srvsvc \
        --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC"
    check "the client still cannot reach Samba's new samr port on the DMZ address ($DMZ_OUT_IP:$samr2)" \
        blocked_from_client "$DMZ_OUT_IP" "$samr2"

    # --- d. Samba moves its services onto each other's old ports -------------------
    # Samba's helpers hold the N ports from the start of RANGE2, in an order that changes
    # from one start to the next. Restarted on N ports shifted one down, one up, or the
    # same (tried in turn), they take them in some order again, until srvsvc lands
    # elsewhere and another interface on srvsvc's old port. rpcpin's cached srvsvc port
    # then answers for that interface: the connect to it works and Samba refuses the
    # srvsvc bind there; rpcpin must resolve again at once rather than fail every client
    # until limits.resolve_cache (30 s) ends.
    local start3=${RANGE2%-*} n3 range3 warmed samr3 srvsvc3 winreg3 tries=0 shift swapped=1
    n3=$(ip netns exec "$NS_LAN" ss -ltnH |
        awk -v lo="$start3" '{ n = split($4, a, ":"); p = a[n] + 0 } p >= lo && p < lo + 256 { print p }' |
        sort -u | wc -l)
    check "srvsvc and samr bind via the pins (rpcpin's cache holds $srvsvc2 and $samr2)" \
        binds_via_pins
    warmed=$SECONDS
    for shift in -1 1 0 -1 1 0 -1 1; do
        range3="$((start3 + shift))-$((start3 + shift + n3 - 1))"
        stop_samba
        tries=$((tries + 1))
        start_samba "$range3" "3-$tries"
        samr3=$(samba_port samr) || true
        srvsvc3=$(samba_port srvsvc) || true
        winreg3=$(samba_port winreg) || true
        if [[ -n "$srvsvc3" && "$srvsvc3" != "$srvsvc2" ]] &&
            [[ "$samr3" == "$srvsvc2" || "$winreg3" == "$srvsvc2" ]]; then
            swapped=0
            break
        fi
    done
    check "after a restart on $range3 (the $n3 ports Samba held, shifted by $shift), srvsvc moved and another interface took its old port ($srvsvc2 -> $srvsvc3, samr $samr2 -> $samr3, winreg -> $winreg3; $tries restart(s))" \
        test "$swapped" -eq 0
    mark=$(log_mark)
    check "at once (no ept_map by the client), a srvsvc bind via pin classic :$PIN_CLASSIC is accepted: rpcpin's cached $srvsvc2 now refuses srvsvc" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc --expect accept
    check "rpcpin logged backend_port_stale for srvsvc, $srvsvc2 -> $srvsvc3" \
        rpcpin_logged "$mark" 1 'event="backend_port_stale"' "old_port=$srvsvc2 " "new_port=$srvsvc3 "
    check "all of it within limits.resolve_cache of the last binds ($((SECONDS - warmed)) s < 30 s)" \
        test $((SECONDS - warmed)) -lt 30
    check "rpcclient srvinfo and enumdomains via rpcpin work after Samba moved again" \
        srvinfo_and_enumdomains_via_rpcpin

    check "the same rpcpin process (pid $rpcpin_main) still runs as $RPCPIN_USER after all of the above" \
        runs_unprivileged "$rpcpin_main"

    # --- f. without rpcpin nothing works -----------------------------------------
    local pid=$rpcpin_pid rc=0
    kill -TERM "$pid"
    if wait_for 10 bash -c "! kill -0 $pid"; then
        wait "$pid" || rc=$?
        pass "rpcpin exits on SIGTERM (status $rc)"
    else
        fail "rpcpin still running 10 s after SIGTERM"
    fi
    stop_pid "$pid"
    rpcpin_pid=""
    check "with rpcpin stopped, rpcclient enumdomains from the client fails" \
        rpcclient_fails "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains

    # --- k. the default per-address limit ------------------------------------------
    start_dmz_rpcpin "$WORK/rpcpin-default-limits.toml"
    check "default limits.max_connections_per_ip ($PER_IP_DEFAULT): connection $((PER_IP_DEFAULT + 1)) from $CLI_IP is closed at once while the $PER_IP_DEFAULT silent ones stay open" \
        per_ip_limit
    stop_pid "$rpcpin_pid"
    rpcpin_pid=""

    exit 0 # cleanup() prints the summary and sets the exit status
}

main "$@"
