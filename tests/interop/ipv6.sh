#!/usr/bin/env bash
# rpcpin over IPv6: real Samba listening on IPv6 only, rpcclient and impacket as IPv6
# clients, and the same dual-stack [::] listeners serving an IPv4 client too.
#
#   client fd00:198::2     ──veth── fd00:198::1   DMZ (rpcpin,   fd00:135::1 ──veth── fd00:135::2  LAN (Samba,
#          198.51.100.2             198.51.100.1  [::]:135 ...)                                    IPv6 only)
#
# The DMZ firewall (lib.sh's, for both families) lets the client reach TCP 135 and the
# two pinned ports and nothing else, and accepts IPv6 neighbour discovery; the DMZ does
# not forward and the client has no route to the LAN. rpcpin's backend.host is the
# bracketed "[fd00:135::2]". Sealed calls work through rpcpin from IPv6 and IPv4 clients;
# the towers an IPv6 client gets carry the pin's port and 0.0.0.0 (a tower has no IPv6
# floor); logs name IPv6 peers as [addr]:port and IPv4 clients of [::] as IPv4; with
# rpcpin stopped nothing is reached. See README.md beside this file.
#
# Usage: sudo tests/interop/ipv6.sh   (RPCPIN_BIN, KEEP_WORK=1 as for run.sh)
# Prints PASS:/FAIL: per check and ends with "N passed, M failed".

# Helpers are called through check()/wait_for()/traps, which shellcheck cannot follow:
# shellcheck disable=SC2317
set -euo pipefail
set -E

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
RPCPIN_BIN="${RPCPIN_BIN:-$repo_root/target/release/rpcpin}"
PY="$repo_root/target/interop-venv/bin/python"
SAMBA_DCERPCD=/usr/libexec/samba/samba-dcerpcd
export PYTHONDONTWRITEBYTECODE=1

# --- topology and fixtures --------------------------------------------------
CLI_IP=fd00:198::2
DMZ_OUT_IP=fd00:198::1
DMZ_IN_IP=fd00:135::1
LAN_IP=fd00:135::2
CLI_IP4=198.51.100.2  # the same client, over IPv4
DMZ_OUT_IP4=198.51.100.1
PIN_LSAD=6004         # samr, lsarpc, dssetup
PIN_CLASSIC=6001      # srvsvc, wkssvc
RANGE=49152-49407
RPC_USER=riguser
RPC_PASS=Rig-Pass-123
RPCPIN_USER=nobody
CLIENT_TIMEOUT=20

NS_CLI="rpcpin-v6-cli-$$"
NS_DMZ="rpcpin-v6-dmz-$$"
NS_LAN="rpcpin-v6-lan-$$"

passed=0
failed=0
start_time=$SECONDS
WORK=""
samba_pid=""
rpcpin_pid=""
created_user=0
error_at=""
stdout_fd=""
stderr_fd=""

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

cleanup() {
    local rc=$?
    set +e
    trap - ERR
    if [[ -n "$stdout_fd" ]]; then
        exec 1>&"$stdout_fd" 2>&"$stderr_fd"
    fi
    stop_pid "$rpcpin_pid"
    stop_pid "$samba_pid"
    delete_namespaces "$NS_CLI" "$NS_DMZ" "$NS_LAN"
    ((created_user)) && remove_user
    finish "$rc" "$WORK/rpcpin.log" "$WORK"/samba-*.log
}

# write_rpcpin_conf FILE HOST: Samba as backend.host = HOST; every listener dual-stack.
write_rpcpin_conf() {
    cat >"$1" <<TOML
[backend]
host = "$2"

[epm]
listen = "[::]:135"

[[pin]]
name = "lsad"
listen = "[::]:$PIN_LSAD"
interfaces = ["samr", "lsarpc", "dssetup"]

[[pin]]
name = "classic"
listen = "[::]:$PIN_CLASSIC"
interfaces = ["srvsvc", "wkssvc"]

[log]
format = "json"

[process]
user = "$RPCPIN_USER"
TOML
}

# Samba's listeners in the LAN: its endpoint mapper on [$LAN_IP]:135, none on IPv4.
samba_ipv6_only() {
    local v4 v6
    v4=$(in_ns "$NS_LAN" ss -Hltn4)
    v6=$(in_ns "$NS_LAN" ss -Hltn6)
    echo "IPv4 listeners: ${v4:-none}"
    echo "IPv6 listeners:"
    echo "$v6"
    [[ -z "$v4" ]] && grep -qF "[$LAN_IP]:135" <<<"$v6"
}

# rpcpin_prints CMD CONF PATTERN...: rpcpin CMD (check, resolve) on CONF, from the DMZ; its
# output must contain every PATTERN (fixed strings).
rpcpin_prints() {
    local cmd=$1 conf=$2 out="$WORK/rpcpin-$1.out" rc=0 p
    shift 2
    client "$NS_DMZ" "$RPCPIN_BIN" "$cmd" --config "$conf" >"$out" 2>&1 || rc=$?
    cat "$out"
    ((rc == 0)) || { echo "rpcpin $cmd exited $rc"; return 1; }
    for p in "$@"; do
        grep -qF -- "$p" "$out" || { echo "missing: $p"; return 1; }
    done
}

# logged_closed PIN PEER_PREFIX: rpcpin logged a connection_closed on listener PIN whose
# span peer starts with PEER_PREFIX (JSON log, one event per line).
logged_closed() {
    local pin=$1 peer=$2 lines
    lines=$(grep -F '"event":"connection_closed"' "$WORK/rpcpin.log" |
        grep -F "\"pin\":\"$pin\"" | grep -F "\"peer\":\"$peer" || true)
    if [[ -z "$lines" ]]; then
        echo "no connection_closed on $pin from $peer*; the log's peers:"
        grep -o '"peer":"[^"]*"' "$WORK/rpcpin.log" | sort -u | head -5
        return 1
    fi
    head -n 2 <<<"$lines"
}

# fails CMD...: CMD fails (its output shown by check).
fails() { ! "$@"; }

# ==============================================================================
main() {
    begin_run ipv6.sh

    WORK="$(mktemp -d -t rpcpin-ipv6.XXXXXX)"
    mkdir -p "$WORK"/samba/{lock,state,cache,pid,private,ncalrpc,log}
    : >"$WORK/rpcpin.log"

    "$script_dir/install-deps.sh" | sed -e 's/^/    /' || die "install-deps.sh failed"
    [[ -x "$RPCPIN_BIN" ]] || die "no rpcpin binary at $RPCPIN_BIN (cargo build --release)"
    id -u "$RPCPIN_USER" >/dev/null 2>&1 || die "no user $RPCPIN_USER for [process] user"

    remove_stale_namespaces '^rpcpin-v6-(cli|dmz|lan)-[0-9]+$'
    setup_dmz_topology
    add_addr "$NS_CLI" to-dmz "$CLI_IP4"
    add_addr "$NS_DMZ" to-cli "$DMZ_OUT_IP4"
    setup_firewall
    write_client_conf
    write_rpcpin_conf "$WORK/rpcpin.toml" "[$LAN_IP]"
    write_rpcpin_conf "$WORK/rpcpin-bare.toml" "$LAN_IP"
    write_smb_conf "$RANGE"
    setup_samba_user
    start_samba "$RANGE" 1

    # --- Samba on IPv6 only ---------------------------------------------------------
    local samr
    samr=$(samba_port samr) || true
    [[ -n "$samr" ]] || die "could not read Samba's samr port"
    check "Samba listens on IPv6 only ([$LAN_IP]:135 and its services, nothing on IPv4)" \
        samba_ipv6_only
    check "Samba's own endpoint mapper, asked over IPv6 from the DMZ, writes 0.0.0.0 in samr's tower (port $samr)" \
        client "$NS_DMZ" "$PY" "$script_dir/epm_towers.py" "$LAN_IP" samr \
        --expect-ip 0.0.0.0 --expect-port "samr=$samr"
    check "rpcpin check accepts backend.host = \"[$LAN_IP]\" and prints it as [$LAN_IP]:135" \
        rpcpin_prints check "$WORK/rpcpin.toml" "backend  [$LAN_IP]:135" "listen [::]:135" \
        "server default ([$LAN_IP]:135)"
    check "rpcpin check prints backend.host = \"$LAN_IP\" (no brackets) as [$LAN_IP]:135 too" \
        rpcpin_prints check "$WORK/rpcpin-bare.toml" "backend  [$LAN_IP]:135" \
        "server default ([$LAN_IP]:135)"
    check "rpcpin resolve reaches Samba at the bracketed backend.host over IPv6: samr at $samr, server default ([$LAN_IP]:135)" \
        rpcpin_prints resolve "$WORK/rpcpin.toml" "default ([$LAN_IP]:135)" " $samr "

    start_dmz_rpcpin "$WORK/rpcpin.toml"

    # --- an IPv6 client ----------------------------------------------------------------
    check "rpcclient enumdomains (samr via pin lsad), sealed, over IPv6: ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'
    check "rpcclient srvinfo (srvsvc via pin classic), sealed, over IPv6" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" srvinfo RIGSRV platform_id
    check "ept_map via rpcpin over IPv6 (impacket): every tower carries the pin's port and 0.0.0.0 (a tower has no IPv6 floor)" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr lsarpc srvsvc wkssvc \
        --expect-ip 0.0.0.0 --expect-port "samr=$PIN_LSAD" --expect-port "lsarpc=$PIN_LSAD" \
        --expect-port "srvsvc=$PIN_CLASSIC" --expect-port "wkssvc=$PIN_CLASSIC"
    check "impacket over IPv6: epm.hept_map gives samr at ${DMZ_OUT_IP}[$PIN_LSAD], then sealed SamrEnumerateDomainsInSamServer lists RIGSRV and Builtin" \
        client "$NS_CLI" "$PY" "$script_dir/sealed_samr.py" "$DMZ_OUT_IP" "$RPC_USER%$RPC_PASS" \
        --expect-port "$PIN_LSAD" --expect-domain RIGSRV --expect-domain Builtin
    check "rpcpin logs the IPv6 client as [$CLI_IP]:port on 135" \
        logged_closed epm "[$CLI_IP]:"
    check "rpcpin logs the IPv6 client as [$CLI_IP]:port on pin lsad" \
        logged_closed lsad "[$CLI_IP]:"

    # --- an IPv4 client of the same [::] listeners --------------------------------------
    check "rpcclient enumdomains, sealed, over IPv4 through the dual-stack [::] listeners: ncacn_ip_tcp:${DMZ_OUT_IP4}[seal]" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP4}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'
    check "ept_map via rpcpin over IPv4 (impacket): towers carry $DMZ_OUT_IP4, the address the client reached, and the pins' ports" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP4" samr srvsvc \
        --expect-ip "$DMZ_OUT_IP4" --expect-port "samr=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC"
    check "rpcpin logs the IPv4 client of [::] as $CLI_IP4:port (not ::ffff:$CLI_IP4)" \
        logged_closed lsad "$CLI_IP4:"

    # --- only rpcpin reaches Samba ---------------------------------------------------------
    check "client cannot reach Samba's endpoint mapper [$LAN_IP]:135 directly" \
        blocked_from_client "$LAN_IP" 135
    check "client cannot reach Samba's samr port [$LAN_IP]:$samr directly" \
        blocked_from_client "$LAN_IP" "$samr"
    stop_pid "$rpcpin_pid"
    rpcpin_pid=""
    check "rpcpin stopped: rpcclient over IPv6 reaches nothing" \
        rpcclient_fails "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains
    check "rpcpin stopped: rpcclient over IPv4 reaches nothing" \
        rpcclient_fails "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP4}[seal]" enumdomains
    check "rpcpin stopped: impacket over IPv6 reaches nothing" \
        fails client "$NS_CLI" "$PY" "$script_dir/sealed_samr.py" "$DMZ_OUT_IP" "$RPC_USER%$RPC_PASS"

    exit 0
}

main "$@"
