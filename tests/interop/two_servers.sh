#!/usr/bin/env bash
# rpcpin in answer mode (epm.mode = "answer") in front of two real Samba servers.
#
#                                                    10.135.0.1 ─veth─ 10.135.0.2  server 1 (RIGSRV)
#   client 198.51.100.2 ──veth── 198.51.100.1  DMZ (rpcpin)
#                                                    10.136.0.1 ─veth─ 10.136.0.2  server 2 (RIGSRV2)
#
# Pin lsad (samr, lsarpc, dssetup) goes to server 1 ([backend]), pin classic (srvsvc,
# wkssvc) to server 2 ([backends.two], pin.backend = "two"). The DMZ firewall lets the client
# reach tcp/135, 6004 and 6001 only. rpcclient works through the three ports, each pin on its
# own server; the servers' endpoint mappers, counted by nftables in their own namespaces,
# see no client at all, only rpcpin's own lookups, a handful while 200 client associations
# ask rpcpin's endpoint mapper. Then server 2 restarts with its services on other ports, and
# clients still work through the same rpcpin. See README.md beside this file.
#
# Usage: sudo tests/interop/two_servers.sh   (RPCPIN_BIN, KEEP_WORK=1 as for run.sh)
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
CLI_IP=198.51.100.2
DMZ_OUT_IP=198.51.100.1
DMZ_IN_IP=10.135.0.1  # the DMZ toward server 1
LAN1_IP=10.135.0.2    # server 1
LAN_IP=$LAN1_IP       # lib.sh's name for it (on_server points it at either server)
DMZ_IN2_IP=10.136.0.1 # the DMZ toward server 2
LAN2_IP=10.136.0.2    # server 2
PIN_LSAD=6004         # samr, lsarpc, dssetup, on server 1
PIN_CLASSIC=6001      # srvsvc, wkssvc, on server 2
RANGE1=49152-49407
RANGE2=50000-50255    # server 2's range after its restart: every service moves
RPC_USER=riguser
RPC_PASS=Rig-Pass-123
RPCPIN_USER=nobody
CLIENT_TIMEOUT=30
RESOLVE_CACHE_S=2     # limits.resolve_cache: short, so that the client phase spans several
ADMIN_LISTEN=127.0.0.1:9135
ASSOCIATIONS=200      # client associations asking rpcpin's endpoint mapper,
PAUSE=0.03            # this long apart (the loop then lasts about 3 resolve_cache periods)

NS_CLI="rpcpin-2s-cli-$$"
NS_DMZ="rpcpin-2s-dmz-$$"
NS_LAN1="rpcpin-2s-lan1-$$"
NS_LAN=$NS_LAN1 # lib.sh's name for it (on_server points it at either server)
NS_LAN2="rpcpin-2s-lan2-$$"

passed=0
failed=0
start_time=$SECONDS
WORK=""
samba_pid=""
samba_pids=("" "" "")
rpcpin_pid=""
created_user=0
phase_start=0
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
    stop_pid "${samba_pids[1]}"
    stop_pid "${samba_pids[2]}"
    delete_namespaces "$NS_CLI" "$NS_DMZ" "$NS_LAN1" "$NS_LAN2"
    ((created_user)) && remove_user
    finish "$rc" "$WORK/rpcpin.log" "$WORK"/server*/samba-*.log
}

# on_server N CMD...: runs CMD (lib.sh's Samba helpers) with their variables pointing at
# server N: its own work dir, address, namespace, netbios name and samba-dcerpcd pid.
on_server() {
    local n=$1
    shift
    local WORK="$WORK/server$n" LAN_IP NS_LAN SAMBA_NETBIOS_NAME samba_pid=${samba_pids[n]}
    if ((n == 1)); then
        LAN_IP=$LAN1_IP NS_LAN=$NS_LAN1 SAMBA_NETBIOS_NAME=RIGSRV
    else
        LAN_IP=$LAN2_IP NS_LAN=$NS_LAN2 SAMBA_NETBIOS_NAME=RIGSRV2
    fi
    local rc=0
    "$@" || rc=$?
    samba_pids[n]=$samba_pid
    return "$rc"
}

# --- setup ----------------------------------------------------------------------
setup_second_lan() {
    log "namespace $NS_LAN2 (server 2, $LAN2_IP)"
    ip netns add "$NS_LAN2"
    in_ns "$NS_LAN2" ip link set lo up
    ip link add name to-lan2 netns "$NS_DMZ" type veth peer name to-dmz netns "$NS_LAN2"
    ip -n "$NS_DMZ" addr add "$DMZ_IN2_IP/24" dev to-lan2
    ip -n "$NS_LAN2" addr add "$LAN2_IP/24" dev to-dmz
    ip -n "$NS_DMZ" link set to-lan2 up
    ip -n "$NS_LAN2" link set to-dmz up
}


# count_epm_connections NS DMZ_ADDR: nftables counters in a server's namespace, counting
# every TCP connection opened to its endpoint mapper (port 135, a SYN without ACK): from
# rpcpin's address toward it, and from anywhere else.
count_epm_connections() {
    local ns=$1 dmz=$2
    in_ns "$ns" nft -f - <<NFT
table inet rpcpin_lan {
    counter epm_from_rpcpin {
    }
    counter epm_from_others {
    }
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport 135 tcp flags & (syn | ack) == syn ip saddr $dmz counter name "epm_from_rpcpin"
        tcp dport 135 tcp flags & (syn | ack) == syn ip saddr != $dmz counter name "epm_from_others"
    }
}
NFT
}

# counter NS NAME: the packets counted so far.
counter() {
    in_ns "$1" nft list counter inet rpcpin_lan "$2" |
        awk '/packets/ { for (i = 1; i < NF; i++) if ($i == "packets") { print $(i + 1); exit } }'
}

write_rpcpin_conf() {
    cat >"$1" <<TOML
# Pin lsad to server 1 ([backend]), pin classic to server 2 ([backends.two]).
[backend]
host = "$LAN1_IP"

[backends.two]
host = "$LAN2_IP"

[epm]
listen = "$DMZ_OUT_IP:135"
mode = "answer"

[[pin]]
name = "lsad"
listen = "$DMZ_OUT_IP:$PIN_LSAD"
interfaces = ["samr", "lsarpc", "dssetup"]

[[pin]]
name = "classic"
listen = "$DMZ_OUT_IP:$PIN_CLASSIC"
interfaces = ["srvsvc", "wkssvc"]
backend = "two"

[log]
format = "text"

[limits]
resolve_cache = "${RESOLVE_CACHE_S}s"

[admin]
listen = "$ADMIN_LISTEN"

[process]
user = "$RPCPIN_USER"
TOML
}

# metric NAME [MATCH [MATCH2]]: the sum of rpcpin's /metrics samples of NAME whose labels
# contain MATCH and MATCH2 (fixed strings).
metric() {
    local name=$1 match=${2:-} match2=${3:-}
    in_ns "$NS_DMZ" "$PY" -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://$ADMIN_LISTEN/metrics" |
        awk -v n="$name" -v m="$match" -v m2="$match2" '
            ($1 == n || index($1, n "{") == 1) && index($1, m) && index($1, m2) { s += $NF }
            END { printf "%d\n", s }'
}

# own_lookups BACKEND: rpcpin's connections of its own to that server's endpoint mapper so
# far, by its /metrics: lookups for its answers and uncached resolutions for pin connections.
own_lookups() {
    local a b
    a=$(metric rpcpin_epm_server_lookups_total "backend=\"$1\"") || return 1
    b=$(metric rpcpin_backend_resolutions_total "backend=\"$1\"" 'cached="false"') || return 1
    echo $((a + b))
}

# epm_seen_only_rpcpin SERVER NS BEFORE_RPCPIN BEFORE_OTHERS BEFORE_OWN BACKEND IFACES:
# over the client phase, server SERVER's endpoint mapper got no connection but from rpcpin,
# exactly as many as rpcpin's /metrics counts for BACKEND, and at most one per key rpcpin
# asks it about (its IFACES pinned interfaces, and one ept_lookup) per resolve_cache period
# begun, refreshes included.
epm_seen_only_rpcpin() {
    local server=$1 ns=$2 b_rpcpin=$3 b_others=$4 b_own=$5 backend=$6 ifaces=$7
    local rpcpin others own elapsed periods max
    rpcpin=$(($(counter "$ns" epm_from_rpcpin) - b_rpcpin))
    others=$(($(counter "$ns" epm_from_others) - b_others))
    own=$(($(own_lookups "$backend") - b_own))
    elapsed=$((SECONDS - phase_start))
    # A key is asked once per period, and refreshed once in the last fifth of each.
    periods=$((elapsed / RESOLVE_CACHE_S + 1))
    max=$(((ifaces + 1) * periods * 2))
    echo "server $server's endpoint mapper over the $elapsed s of the client phase: $rpcpin connection(s) from rpcpin, $others from anywhere else"
    echo "rpcpin's /metrics: $own lookup(s) and uncached resolution(s) at backend $backend"
    echo "at most $max allowed: ($ifaces pinned interfaces + 1 ept_lookup) x $periods resolve_cache period(s) begun x 2 (a refresh each)"
    echo "client associations to rpcpin's 135 meanwhile: at least $ASSOCIATIONS"
    ((others == 0)) || { echo "a connection came from elsewhere than rpcpin"; return 1; }
    ((rpcpin == own)) || { echo "the server counted $rpcpin, rpcpin $own"; return 1; }
    ((rpcpin >= 1 && rpcpin <= max)) || { echo "expected 1 to $max"; return 1; }
    ((rpcpin < ASSOCIATIONS)) || { echo "not fewer than the client's associations"; return 1; }
}

# rpcpin_epm_answers_total: at least the loop's ept_maps answered, those from the server no
# more than rpcpin's lookups at both servers (the clients came one at a time), the rest
# from the cache.
answers_from_cache() {
    local cache server lookups
    cache=$(metric rpcpin_epm_answers_total 'source="cache"') || return 1
    server=$(metric rpcpin_epm_answers_total 'source="server"') || return 1
    lookups=$(metric rpcpin_epm_server_lookups_total) || return 1
    echo "rpcpin_epm_answers_total: source=cache $cache, source=server $server; rpcpin_epm_server_lookups_total: $lookups"
    ((cache + server >= 2 * ASSOCIATIONS)) || { echo "fewer answers than the loop's $((2 * ASSOCIATIONS)) ept_maps"; return 1; }
    ((server >= 1 && server <= lookups)) || { echo "expected 1 to $lookups answers from the server"; return 1; }
}


# ==============================================================================
main() {
    begin_run two_servers.sh

    WORK="$(mktemp -d -t rpcpin-two-servers.XXXXXX)"
    local n
    for n in 1 2; do
        mkdir -p "$WORK/server$n"/samba/{lock,state,cache,pid,private,ncalrpc,log}
    done
    : >"$WORK/rpcpin.log"

    "$script_dir/install-deps.sh" | sed -e 's/^/    /' || die "install-deps.sh failed"
    [[ -x "$RPCPIN_BIN" ]] || die "no rpcpin binary at $RPCPIN_BIN (cargo build --release)"
    id -u "$RPCPIN_USER" >/dev/null 2>&1 || die "no user $RPCPIN_USER for [process] user"

    remove_stale_namespaces '^rpcpin-2s-(cli|dmz|lan1|lan2)-[0-9]+$'
    setup_dmz_topology
    setup_second_lan
    setup_firewall
    count_epm_connections "$NS_LAN1" "$DMZ_IN_IP"
    count_epm_connections "$NS_LAN2" "$DMZ_IN2_IP"
    write_client_conf
    write_rpcpin_conf "$WORK/rpcpin.toml"
    for n in 1 2; do
        on_server "$n" write_smb_conf "$RANGE1"
        on_server "$n" setup_samba_user
        on_server "$n" start_samba "$RANGE1" 1
    done

    # --- baseline -------------------------------------------------------------------
    local samr1 srvsvc2 srvsvc2b
    samr1=$(on_server 1 samba_port samr) || true
    srvsvc2=$(on_server 2 samba_port srvsvc) || true
    [[ -n "$samr1" && -n "$srvsvc2" ]] || die "could not read the servers' ports"
    log "server 1: samr $LAN1_IP:$samr1; server 2: srvsvc $LAN2_IP:$srvsvc2"
    check "rpcclient srvinfo directly against server 2 from the DMZ says RIGSRV2 (the servers are told apart by name)" \
        rpcclient_ok "$NS_DMZ" "ncacn_ip_tcp:${LAN2_IP}[seal]" srvinfo RIGSRV2
    check "client cannot reach server 1's EPM $LAN1_IP:135 directly" \
        blocked_from_client "$LAN1_IP" 135
    check "client cannot reach server 2's EPM $LAN2_IP:135 directly" \
        blocked_from_client "$LAN2_IP" 135
    check "rpcpin check accepts the configuration (answer mode, [backends.two], pin.backend)" \
        client "$NS_DMZ" "$RPCPIN_BIN" check --config "$WORK/rpcpin.toml"

    start_dmz_rpcpin "$WORK/rpcpin.toml"
    local rpcpin_main=$rpcpin_pid

    # --- the client phase: every connection to a server's EPM is counted --------------
    local c1 o1 m1 c2 o2 m2
    c1=$(counter "$NS_LAN1" epm_from_rpcpin)
    o1=$(counter "$NS_LAN1" epm_from_others)
    c2=$(counter "$NS_LAN2" epm_from_rpcpin)
    o2=$(counter "$NS_LAN2" epm_from_others)
    m1=$(own_lookups default) || die "cannot read rpcpin's /metrics at $ADMIN_LISTEN"
    m2=$(own_lookups two) || die "cannot read rpcpin's /metrics at $ADMIN_LISTEN"
    phase_start=$SECONDS

    check "rpcclient enumdomains (samr via pin lsad :$PIN_LSAD, server 1) from the client works" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'
    check "rpcclient srvinfo (srvsvc via pin classic :$PIN_CLASSIC, server 2) from the client works and names RIGSRV2" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" srvinfo RIGSRV2 platform_id
    check "ept_lookup via rpcpin lists the pinned interfaces of both servers, tcp towers only, each at $DMZ_OUT_IP and its pin's port" \
        client "$NS_CLI" "$PY" "$script_dir/epm_ops.py" "$DMZ_OUT_IP" lookup=entries --tcp-only \
        --only samr,lsarpc,dssetup,srvsvc,wkssvc --includes samr,lsarpc,dssetup,srvsvc,wkssvc \
        --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "lsarpc=$PIN_LSAD" \
        --expect-port "dssetup=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC" --expect-port "wkssvc=$PIN_CLASSIC"
    check "$ASSOCIATIONS client associations via rpcpin, $PAUSE s apart, each an ept_map for samr and srvsvc (impacket): every tower $DMZ_OUT_IP:$PIN_LSAD / :$PIN_CLASSIC" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr srvsvc \
        --repeat "$ASSOCIATIONS" --pause "$PAUSE" --expect-ip "$DMZ_OUT_IP" \
        --expect-port "samr=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC"

    check "nftables on server 1: its EPM got no client connection, only rpcpin's own lookups (as many as /metrics counts for backend default), a handful" \
        epm_seen_only_rpcpin 1 "$NS_LAN1" "$c1" "$o1" "$m1" default 3
    check "nftables on server 2: its EPM got no client connection, only rpcpin's own lookups (as many as /metrics counts for backend two), a handful" \
        epm_seen_only_rpcpin 2 "$NS_LAN2" "$c2" "$o2" "$m2" two 2
    check "rpcpin's /metrics: of its endpoint-mapper answers (at least the $((2 * ASSOCIATIONS)) ept_maps), all but a handful came from its cache" \
        answers_from_cache

    # --- server 2 moves its ports; rpcpin untouched follows ---------------------------
    on_server 2 stop_samba
    on_server 2 start_samba "$RANGE2" 2
    srvsvc2b=$(on_server 2 samba_port srvsvc) || true
    check "server 2 restarted on $RANGE2: srvsvc moved ($srvsvc2 -> $srvsvc2b)" \
        test -n "$srvsvc2b" -a "$srvsvc2b" != "$srvsvc2"
    check "rpcclient srvinfo via rpcpin (server 2) still works after server 2 moved" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" srvinfo RIGSRV2 platform_id
    check "rpcclient enumdomains via rpcpin (server 1) still works" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'
    check "ept_map via rpcpin still answers the pins' ports after server 2 moved" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr srvsvc \
        --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "srvsvc=$PIN_CLASSIC"
    check "the same rpcpin process (pid $rpcpin_main) served all of it" \
        same_rpcpin "$rpcpin_main"

    exit 0
}

main "$@"
