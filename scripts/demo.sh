#!/usr/bin/env bash
# rpcpin at work on this machine, in one command (as root):
#
#   sudo scripts/demo.sh
#
# Three network namespaces stand in for three hosts:
#
#   client 198.51.100.2 ─veth─ 198.51.100.1  rpcpin + firewall  10.135.0.1 ─veth─ 10.135.0.2  Samba
#
# Samba's samba-dcerpcd (as the interop suite runs it) serves its endpoint mapper on 135 and
# its RPC services on dynamic ports. rpcpin's host routes between the two sides, and its
# nftables firewall lets the client reach rpcpin's 135 and two pins only, and rpcpin's host
# reach the server's 135 and dynamic range only; nothing from the client is forwarded to the
# server. The demo asks both endpoint mappers where samr and srvsvc live, makes one rpcclient
# call through each pin, shows what rpcpin logged for it, and tries the dynamic ports
# directly from the client.
#
# It installs what it needs the way the test suite does (tests/interop/install-deps.sh),
# builds rpcpin when the binary is missing or older than the sources (cargo build --release
# --locked), and on exit removes everything it made (namespaces, processes, its temp dir, the
# Samba user if it created it), also after a failure or Ctrl-C. RPCPIN_BIN picks another
# binary (then nothing is built). Exits 0 when everything shown behaved as described.

# Helpers are called through traps, which shellcheck cannot follow:
# shellcheck disable=SC2317
set -euo pipefail
set -E

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
interop="$repo_root/tests/interop"
PY="$repo_root/target/interop-venv/bin/python"
SAMBA_DCERPCD=/usr/libexec/samba/samba-dcerpcd
export PYTHONDONTWRITEBYTECODE=1

# --- the lab --------------------------------------------------------------------------
CLI_IP=198.51.100.2
DMZ_OUT_IP=198.51.100.1
DMZ_IN_IP=10.135.0.1
LAN_IP=10.135.0.2
PIN_LSAD=6004     # samr, lsarpc, dssetup (Samba's rpcd_lsad)
PIN_CLASSIC=6001  # srvsvc, wkssvc (Samba's rpcd_classic)
RANGE=49152-65535 # Samba's dynamic ports, and what rpcpin's host may reach
RPC_USER=riguser
RPC_PASS=Rig-Pass-123
CLIENT_TIMEOUT=20 # seconds, for every client command
BLOCKED_WAIT=2    # seconds a direct attempt from the client is given

NS_CLI="rpcpin-demo-cli-$$"
NS_DMZ="rpcpin-demo-dmz-$$"
NS_LAN="rpcpin-demo-lan-$$"

passed=0
failed=0 # things that did not behave as described
start_time=$SECONDS
WORK=""
samba_pid=""
rpcpin_pid=""
created_user=0
error_at=""
stdout_fd=""
stderr_fd=""

# Namespaces, rpcpin in the DMZ, Samba, rpcclient: the interop suite's helpers.
# shellcheck source-path=SCRIPTDIR source=../tests/interop/lib.sh
source "$interop/lib.sh"
# apt_install, as the install-deps scripts use it.
who=demo
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
source "$repo_root/scripts/lib/deps.sh"

# --- output ---------------------------------------------------------------------------
section() { printf '\n== %s ==\n' "$*"; }
# row WIDTH... -- CELL...: one line of a table, each cell but the last padded to its width.
row() {
    local widths=() w line="  "
    while [[ $1 != -- ]]; do widths+=("$1"); shift; done
    shift
    for w in "${widths[@]}"; do
        line+=$(printf "%-${w}s" "${1:-}")
        shift || true
    done
    line+="$*"
    echo "${line%"${line##*[! ]}"}"
}
# Something shown did not behave as described: say so, count it.
wrong() { echo "  !! $*"; failed=$((failed + 1)); }

# --- cleanup (always runs) --------------------------------------------------------------
cleanup() {
    local rc=$?
    set +e
    trap - ERR
    if [[ -n "$stdout_fd" ]]; then
        exec 1>&"$stdout_fd" 2>&"$stderr_fd"
    fi
    if ((rc == 130)); then
        section "Interrupted"
    elif ((rc != 0 || failed > 0)) && [[ -n "$WORK" ]]; then
        section "Something went wrong"
        [[ -n "$error_at" ]] && echo "  stopped by an unexpected error at $error_at"
        local f
        for f in "$WORK/setup.log" "$WORK/rpcpin.log" "$WORK/samba-1.log"; do
            [[ -s "$f" ]] || continue
            echo "  --- last lines of $(basename "$f"):"
            tail -n 15 "$f" | cut -c1-300 | sed -e 's/^/    /'
        done
    fi
    section "Cleaning up"
    stop_pid "$rpcpin_pid"
    stop_samba
    delete_namespaces "$NS_CLI" "$NS_DMZ" "$NS_LAN"
    local removed="namespaces, processes, temp dir"
    if ((created_user)); then
        remove_user
        removed+=", user $RPC_USER"
    fi
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    echo "  removed: $removed"
    if ((rc == 0 && failed == 0)); then
        echo "  done in $((SECONDS - start_time)) s"
        exit 0
    fi
    if ((rc != 0)); then
        echo "  done in $((SECONDS - start_time)) s: the demo stopped (exit $rc)"
        exit "$rc"
    fi
    echo "  done in $((SECONDS - start_time)) s: $failed thing(s) did not behave as described"
    exit 1
}

# --- setup --------------------------------------------------------------------------------
# Install what is missing (quick when everything is there); says what it installed.
dependencies() {
    printf '  %-14s%s' dependencies "checking (tests/interop/install-deps.sh, jq)... "
    { "$interop/install-deps.sh" && apt_install jq; } >>"$WORK/setup.log" 2>&1 ||
        die "installing dependencies failed"
    local installed
    installed=$(grep -h ': installing' "$WORK/setup.log" | sed -e 's/^[a-z-]*: installing //' |
        paste -sd ',' | sed -e 's/,/, /g') || true
    echo "${installed:+installed }${installed:-all present}"
}

# The binary: RPCPIN_BIN, or the release build, built when missing or older than the sources.
rpcpin_binary() {
    printf '  %-14s' rpcpin
    if [[ -n "${RPCPIN_BIN:-}" ]]; then
        [[ -x "$RPCPIN_BIN" ]] || die "RPCPIN_BIN=$RPCPIN_BIN is not an executable"
        echo "$RPCPIN_BIN (RPCPIN_BIN)"
        return
    fi
    local target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target="$repo_root/$target"
    RPCPIN_BIN="$target/release/rpcpin"
    if [[ -x "$RPCPIN_BIN" ]] &&
        [[ -z "$(find "$repo_root/src" "$repo_root/Cargo.toml" "$repo_root/Cargo.lock" \
            -newer "$RPCPIN_BIN" -print -quit)" ]]; then
        echo "${RPCPIN_BIN#"$repo_root"/} (up to date)"
        return
    fi
    command -v cargo >/dev/null ||
        die "rpcpin needs building and root has no cargo on its PATH: run 'cargo build --release --locked' first"
    printf '%s' "building (cargo build --release --locked; minutes the first time)... "
    (cd "$repo_root" && cargo build --release --locked) >>"$WORK/setup.log" 2>&1 ||
        die "cargo build --release --locked failed"
    echo "built ${RPCPIN_BIN#"$repo_root"/}"
}

# The client reaches the server's network through rpcpin's host, which routes: so when a
# direct connection fails, it is the firewall that says no, not a missing route.
setup_routing() {
    in_ns "$NS_DMZ" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$NS_CLI" route add 10.135.0.0/24 via "$DMZ_OUT_IP"
    ip -n "$NS_LAN" route add 198.51.100.0/24 via "$DMZ_IN_IP"
}

# The three-port rule base, on rpcpin's host (README.md, "the firewall rule it needs"): the
# suite's (lib.sh) with what the DMZ may reach on the LAN side too.
setup_firewall() {
    in_ns "$NS_DMZ" nft -f - <<NFT
table inet rpcpin_demo {
    chain input {
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
        # rule 1: anyone may reach rpcpin's endpoint mapper and its two pins.
        iifname "to-cli" tcp dport { 135, $PIN_LSAD, $PIN_CLASSIC } ct state new accept
    }
    chain output {
        type filter hook output priority 0; policy accept;
        # rule 2: rpcpin's host may reach the server's 135 and dynamic range, no more.
        oifname "to-lan" tcp dport { 135, $RANGE } accept
        oifname "to-lan" ct state established,related accept
        oifname "to-lan" drop
    }
    chain forward {
        type filter hook forward priority 0; policy drop;
        # rule 3: nothing from the client side reaches the server.
        counter drop
    }
}
NFT
}

write_rpcpin_conf() {
    cat >"$WORK/rpcpin.toml" <<TOML
[backend]
host = "$LAN_IP"

[epm]
listen = "$DMZ_OUT_IP:135"

[[pin]]
name = "lsad"
listen = "$DMZ_OUT_IP:$PIN_LSAD"
interfaces = ["samr", "lsarpc", "dssetup"]

[[pin]]
name = "classic"
listen = "$DMZ_OUT_IP:$PIN_CLASSIC"
interfaces = ["srvsvc", "wkssvc"]

[log]
format = "json"
TOML
}

# --- what the demo shows ----------------------------------------------------------------
# tower NS HOST IFACE: "address port" of the first ncacn_ip_tcp tower HOST's endpoint
# mapper gives for IFACE, asked from namespace NS (floors read by hand, epm_towers.py).
tower() {
    client "$1" "$PY" "$interop/epm_towers.py" "$2" "$3" |
        awk '/^TOWER/ { sub("ip=", "", $5); sub("port=", "", $6); print $5, $6; exit }'
}

# The rewrite: Samba's tower next to the one the client gets through rpcpin.
show_towers() {
    section "Where do samr and srvsvc live? The endpoint mapper's answer (ept_map)"
    row 11 10 40 -- interface pin "Samba's tower (asked on rpcpin's host)" "the client's tower (asked at rpcpin)"
    local iface pin port direct via
    for iface in samr srvsvc; do
        if [[ $iface == samr ]]; then pin=lsad port=$PIN_LSAD; else pin=classic port=$PIN_CLASSIC; fi
        direct=$(tower "$NS_DMZ" "$LAN_IP" "$iface") || true
        via=$(tower "$NS_CLI" "$DMZ_OUT_IP" "$iface") || true
        row 11 10 40 -- "$iface" "$pin" "${direct/ /:}" "${via/ /:}"
        [[ $direct == "$LAN_IP "* ]] || wrong "Samba's tower for $iface: expected $LAN_IP and a dynamic port"
        [[ $via == "$DMZ_OUT_IP $port" ]] || wrong "rpcpin's tower for $iface: expected $DMZ_OUT_IP:$port"
        if [[ $iface == samr ]]; then samr_port=${direct#* }; else srvsvc_port=${direct#* }; fi
    done
    echo "  rpcpin answered itself, from its own lookup at Samba: the pin's port, not Samba's dynamic one,"
    echo "  and its own address, not the server's (epm.mode = \"answer\"; the client never reaches Samba's 135)."
}

# rpcpin's JSON log after line MARK, a few fields of each connection's summary (its one
# line at the default level, connection_closed).
show_log() {
    local mark=$1
    tail -n +"$((mark + 1))" "$WORK/rpcpin.log" |
        jq -r 'select(.event == "connection_closed")
            | [ .span.pin // "-", .event, .alias // "",
                (.backend_port // "" | tostring), (.towers_rewritten // "" | tostring),
                ((if .from_cache then "\(.from_cache) from cache, \(.from_server) from Samba, " else "" end)
                 + "\(.bytes_from_client) B in, \(.bytes_to_client) B out, \(.duration_ms) ms, \(.reason)") ]
            | join("\u001f")' |
        while IFS=$'\x1f' read -r pin event alias backend towers detail; do
            row 9 19 8 14 8 -- "$pin" "$event" "$alias" "$backend" "$towers" "$detail"
        done
}

# pin_closed MARK PIN: rpcpin logged, after line MARK, a connection of PIN closed.
pin_closed() {
    tail -n +"$(($1 + 1))" "$WORK/rpcpin.log" |
        jq -e --arg pin "$2" 'select(.event == "connection_closed" and .span.pin == $pin)' >/dev/null
}

# call IFACE PIN PORT CMD EXPECT: one rpcclient call from the client, its output, and what
# rpcpin logged meanwhile.
call() {
    local iface=$1 pin=$2 port=$3 cmd=$4 expect=$5 mark rc=0 out="$WORK/rpcclient.out"
    section "A real call through pin $pin (:$port): rpcclient $cmd ($iface)"
    echo "  rpcclient asks rpcpin:135 where $iface lives, then calls it at the port it is told"
    echo "  (sealed with NTLM: rpcpin relays the call untouched)."
    echo "  client\$ rpcclient -U $RPC_USER%$RPC_PASS 'ncacn_ip_tcp:${DMZ_OUT_IP}[seal]' -c $cmd"
    mark=$(log_mark)
    # -s: an smb.conf of the demo's own, so the machine's /etc/samba plays no part.
    client "$NS_CLI" rpcclient -s "$WORK/client.conf" -U "$RPC_USER%$RPC_PASS" \
        "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" -c "$cmd" >"$out" 2>&1 || rc=$?
    head -n 3 "$out" | expand -t 2 | sed -e 's/^/    /; s/ *$//'
    if ((rc != 0)); then
        wrong "rpcclient exited $rc"
    elif ! grep -qF -- "$expect" "$out"; then
        wrong "rpcclient's output lacks $expect"
    fi
    # rpcpin logs a connection_closed for the pin's connection once rpcclient has left.
    wait_for 3 pin_closed "$mark" "$pin" || true
    echo "  rpcpin's JSON log meanwhile, one line per connection (pin: its span.pin; epm is port 135):"
    row 9 19 8 14 8 -- pin event alias backend_port towers detail
    show_log "$mark"
}

# From the client, straight at the server's dynamic ports: the firewall drops it. From
# rpcpin's host the same ports answer (rule 2), so they are live.
show_blocked() {
    section "Straight at the dynamic ports from the client: the firewall drops it"
    row 9 20 18 -- from to service result
    local before after iface port
    before=$(drops)
    for iface in samr srvsvc; do
        if [[ $iface == samr ]]; then port=$samr_port; else port=$srvsvc_port; fi
        if ip netns exec "$NS_CLI" timeout "$BLOCKED_WAIT" bash -c "exec 3<>/dev/tcp/$LAN_IP/$port" 2>/dev/null; then
            row 9 20 18 -- client "$LAN_IP:$port" "$iface, directly" "CONNECTED"
            wrong "the client reached $LAN_IP:$port past the firewall"
        else
            row 9 20 18 -- client "$LAN_IP:$port" "$iface, directly" "no answer in $BLOCKED_WAIT s (dropped)"
        fi
    done
    if tcp_connects "$NS_DMZ" "$LAN_IP" "$samr_port"; then
        row 9 20 18 -- rpcpin "$LAN_IP:$samr_port" "samr, directly" "connects (rule 2: the port is live)"
    else
        wrong "rpcpin's host cannot reach $LAN_IP:$samr_port"
    fi
    after=$(drops)
    echo "  nftables rule 3 (forward, drop) counted $((after - before)) packet(s) from the client to the server."
    ((after > before)) || wrong "rule 3 dropped nothing"
}

# Packets dropped so far by rule 3 (the forward chain's counter).
drops() {
    in_ns "$NS_DMZ" nft list chain inet rpcpin_demo forward |
        awk '/counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }'
}

# ========================================================================================
main() {
    if [[ $EUID -ne 0 ]]; then
        echo "scripts/demo.sh: run as root (it installs packages and creates network namespaces)" >&2
        exit 1
    fi
    exec {stdout_fd}>&1 {stderr_fd}>&2
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    trap 'error_at="line $LINENO: $BASH_COMMAND"' ERR
    WORK="$(mktemp -d -t rpcpin-demo.XXXXXX)"
    mkdir -p "$WORK"/samba/{lock,state,cache,pid,private,ncalrpc,log}
    : >"$WORK/rpcpin.log"

    echo "rpcpin demo: Samba's RPC server behind a three-port firewall, rpcpin in front"
    section "Setting up"
    dependencies
    rpcpin_binary
    local samba_version
    remove_stale_namespaces '^rpcpin-demo-(cli|dmz|lan)-[0-9]+$' >>"$WORK/setup.log"
    setup_dmz_topology >>"$WORK/setup.log"
    setup_routing
    setup_firewall
    write_smb_conf "$RANGE"
    write_client_conf
    setup_samba_user
    start_samba "$RANGE" 1 >>"$WORK/setup.log"
    samba_version=$("$SAMBA_DCERPCD" --version | sed -e 's/^Version //')
    write_rpcpin_conf
    start_dmz_rpcpin "$WORK/rpcpin.toml" >>"$WORK/setup.log"

    section "The lab: three network namespaces on this machine"
    row 8 26 23 -- host address namespace runs
    row 8 26 23 -- client "$CLI_IP" "$NS_CLI" "rpcclient, impacket"
    row 8 26 23 -- rpcpin "$DMZ_OUT_IP, $DMZ_IN_IP" "$NS_DMZ" "rpcpin: 135, $PIN_LSAD (pin lsad), $PIN_CLASSIC (pin classic)"
    row 8 26 23 -- server "$LAN_IP" "$NS_LAN" "samba-dcerpcd $samba_version: 135, $RANGE"
    echo
    echo "  Firewall (nftables on rpcpin's host, which routes between the two sides):"
    row 6 8 8 24 -- rule from to ports action
    row 6 8 8 24 -- 1 any rpcpin "tcp 135, $PIN_LSAD, $PIN_CLASSIC" accept
    row 6 8 8 24 -- 2 rpcpin server "tcp 135, $RANGE" accept
    row 6 8 8 24 -- 3 any server any drop
    echo
    echo "  rpcpin's pins: lsad = samr, lsarpc, dssetup; classic = srvsvc, wkssvc."

    samr_port=""
    srvsvc_port=""
    show_towers
    call samr lsad "$PIN_LSAD" enumdomains 'name:[RIGSRV]'
    call srvsvc classic "$PIN_CLASSIC" netshareenumall 'netname: IPC$'
    [[ -n "$samr_port" && -n "$srvsvc_port" ]] || die "no dynamic port read from Samba's towers"
    show_blocked
    exit 0 # cleanup() reports and sets the exit status
}

main "$@"
