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
#                                        KEEP_WORK=1 keeps the temp dir)
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
CLIENT_TIMEOUT=20  # seconds, for every client command

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
tshark_pid=""
created_user=0
error_at=""   # set by the ERR trap: where an unexpected failure stopped the suite

# --- reporting ----------------------------------------------------------------
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
log() { echo "--- $*"; }

# Indent a command's captured output under its PASS/FAIL line (bounded).
show() { awk 'NR <= 25 { print "    " $0 }' "$1"; }

# check DESCRIPTION CMD...: run CMD, PASS when it exits 0. Its output is shown
# either way, so a report carries the evidence (towers, rpcclient output...).
check() {
    local desc=$1
    shift
    local out="$WORK/check.out"
    if "$@" >"$out" 2>&1; then
        pass "$desc"
    else
        fail "$desc (exit $?)"
    fi
    show "$out"
}

# A setup step that failed leaves nothing meaningful to check: count it, stop.
die() {
    fail "setup: $*"
    exit 1
}

# --- helpers ------------------------------------------------------------------
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Run a client command in a namespace with a timeout.
client() { local ns=$1; shift; ip netns exec "$ns" timeout "$CLIENT_TIMEOUT" "$@"; }

# Poll CMD until it succeeds, at most $1 seconds.
wait_for() {
    local limit=$1
    shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.3
    done
}

# Can a TCP connection be opened from namespace NS to HOST:PORT (within 3 s)?
tcp_connects() {
    local ns=$1 host=$2 port=$3
    ip netns exec "$ns" timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# Stop a process we started (by pid), politely first; returns once it is gone.
stop_pid() {
    local pid=$1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Kill whatever still runs inside one of our namespaces (Samba's helpers,
# a leftover listener) - they would otherwise outlive `ip netns del`.
kill_ns_pids() {
    local ns=$1 pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z "$pids" ]] && return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 30); do
        [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && return 0
        sleep 0.1
    done
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    for _ in $(seq 30); do
        [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && return 0
        sleep 0.1
    done
}

# Remove the account this run created. Samba's workers run calls as the
# authenticated user, and userdel refuses while any process (even one being
# reaped) still has that uid: retry briefly.
remove_user() {
    for _ in $(seq 25); do
        userdel "$RPC_USER" 2>/dev/null && return 0
        sleep 0.2
    done
    userdel "$RPC_USER" || echo "--- warning: could not remove user $RPC_USER"
}

# --- cleanup (always runs) ----------------------------------------------------
cleanup() {
    local rc=$?
    set +e
    trap - ERR
    stop_pid "$tshark_pid"
    stop_pid "$rpcpin_pid"
    stop_pid "$samba_pid"
    for ns in "$NS_CLI" "$NS_DMZ" "$NS_LAN"; do
        if ip netns list | grep -qw "$ns"; then
            kill_ns_pids "$ns"
            ip netns del "$ns"
        fi
    done
    ((created_user)) && remove_user
    if [[ -n "$error_at" ]]; then
        fail "suite aborted by an unexpected error (exit $rc) at $error_at"
    elif ((rc != 0 && failed == 0)); then
        fail "suite aborted (exit $rc)"
    fi
    if ((failed > 0)) && [[ -n "$WORK" ]]; then
        for f in "$WORK/rpcpin.log" "$WORK"/samba-*.log; do
            [[ -s "$f" ]] || continue
            echo "--- tail of $(basename "$f"):"
            tail -n 40 "$f" | sed -e 's/^/    /'
        done
    fi
    if [[ -n "$WORK" ]]; then
        if [[ "${KEEP_WORK:-0}" == 1 ]]; then
            echo "--- work dir kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    echo "--- elapsed: $((SECONDS - start_time)) s"
    echo "$passed passed, $failed failed"
    if ((failed > 0)); then exit 1; fi
    exit 0
}

# Namespaces left by a run that was killed outright (its PID is gone).
remove_stale_namespaces() {
    local ns pid
    for ns in $(ip netns list | awk '{print $1}' | grep -E '^rpcpin-(cli|dmz|lan)-[0-9]+$' || true); do
        pid=${ns##*-}
        if ! kill -0 "$pid" 2>/dev/null; then
            log "removing stale namespace $ns"
            kill_ns_pids "$ns"
            ip netns del "$ns" || true
        fi
    done
}

# --- setup: topology ----------------------------------------------------------
setup_namespaces() {
    log "namespaces $NS_CLI / $NS_DMZ / $NS_LAN"
    for ns in "$NS_CLI" "$NS_DMZ" "$NS_LAN"; do
        ip netns add "$ns"
        in_ns "$ns" ip link set lo up
    done
    # Create each veth end directly inside its namespace: no name is ever
    # taken in the host's namespace.
    ip link add name to-dmz netns "$NS_CLI" type veth peer name to-cli netns "$NS_DMZ"
    ip link add name to-lan netns "$NS_DMZ" type veth peer name to-dmz netns "$NS_LAN"
    ip -n "$NS_CLI" addr add "$CLI_IP/24" dev to-dmz
    ip -n "$NS_DMZ" addr add "$DMZ_OUT_IP/24" dev to-cli
    ip -n "$NS_DMZ" addr add "$DMZ_IN_IP/24" dev to-lan
    ip -n "$NS_LAN" addr add "$LAN_IP/24" dev to-dmz
    ip -n "$NS_CLI" link set to-dmz up
    ip -n "$NS_DMZ" link set to-cli up
    ip -n "$NS_DMZ" link set to-lan up
    ip -n "$NS_LAN" link set to-dmz up
    # The DMZ is a host, not a router: only rpcpin may carry traffic across.
    in_ns "$NS_DMZ" sysctl -qw net.ipv4.ip_forward=0
    # No default routes anywhere: the client knows only 198.51.100.0/24,
    # the LAN only 10.135.0.0/24.
}

setup_firewall() {
    log "nftables in the DMZ: client side may reach tcp/135, $PIN_LSAD, $PIN_CLASSIC only"
    in_ns "$NS_DMZ" nft -f - <<NFT
table inet rpcpin_dmz {
    chain input {
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
        # The three openings, nothing else. The LAN side gets no new
        # connections in at all: Samba never calls the DMZ.
        iifname "to-cli" tcp dport { 135, $PIN_LSAD, $PIN_CLASSIC } ct state new accept
    }
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
}
NFT
}

# --- setup: Samba in the LAN namespace ---------------------------------------
write_smb_conf() {
    local range=$1
    cat >"$WORK/smb.conf" <<CONF
[global]
  workgroup = RIG
  netbios name = RIGSRV
  server role = standalone server
  interfaces = $LAN_IP
  bind interfaces only = yes
  rpc start on demand helpers = no
  rpc server dynamic port range = $range
  disable netbios = yes
  smb ports = 1445
  lock directory = $WORK/samba/lock
  state directory = $WORK/samba/state
  cache directory = $WORK/samba/cache
  pid directory = $WORK/samba/pid
  private dir = $WORK/samba/private
  ncalrpc dir = $WORK/samba/ncalrpc
  log file = $WORK/samba/log/%m.log
CONF
}

# rpcclient reads an smb.conf too; give it one of its own so the machine's
# /etc/samba/smb.conf (if any) plays no part.
write_client_conf() {
    mkdir -p "$WORK"/client/{lock,state,cache,pid,private}
    cat >"$WORK/client.conf" <<CONF
[global]
  workgroup = RIG
  lock directory = $WORK/client/lock
  state directory = $WORK/client/state
  cache directory = $WORK/client/cache
  pid directory = $WORK/client/pid
  private dir = $WORK/client/private
  log file = $WORK/client/%m.log
CONF
}

setup_samba_user() {
    if ! id "$RPC_USER" >/dev/null 2>&1; then
        useradd -M -s /usr/sbin/nologin "$RPC_USER"
        created_user=1
    fi
    printf '%s\n%s\n' "$RPC_PASS" "$RPC_PASS" |
        smbpasswd -c "$WORK/smb.conf" -s -a "$RPC_USER" >/dev/null
}

# Samba's EPM answers for every service we use once all helpers registered.
samba_ready() {
    client "$NS_DMZ" "$PY" "$script_dir/epm_towers.py" "$LAN_IP" samr srvsvc winreg
}

start_samba() {
    local range=$1 n=$2
    write_smb_conf "$range"
    log "starting samba-dcerpcd in $NS_LAN, dynamic ports $range"
    # `ip netns exec` execs the daemon, so $! is samba-dcerpcd itself.
    ip netns exec "$NS_LAN" "$SAMBA_DCERPCD" -s "$WORK/smb.conf" --libexec-rpcds \
        -F --debug-stdout -d 1 >"$WORK/samba-$n.log" 2>&1 &
    samba_pid=$!
    wait_for 30 samba_ready || die "Samba's EPM did not answer for samr/srvsvc/winreg within 30 s"
}

stop_samba() {
    stop_pid "$samba_pid"
    samba_pid=""
    kill_ns_pids "$NS_LAN"   # the rpcd_* helpers, should any outlive their parent
}

# Where Samba's own EPM says IFACE lives: prints the port, asked from the DMZ.
samba_port() {
    client "$NS_DMZ" "$PY" "$script_dir/epm_towers.py" "$LAN_IP" "$1" |
        awk '/^TOWER/ { sub("port=", "", $6); print $6; exit }'
}

# --- rpcpin -----------------------------------------------------------------------
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
format = "text"
TOML
}

rpcpin_listening() {
    local port
    for port in 135 "$PIN_LSAD" "$PIN_CLASSIC"; do
        in_ns "$NS_DMZ" ss -Hltn "sport = :$port" | grep -q . || return 1
    done
}

start_rpcpin() {
    log "starting rpcpin in $NS_DMZ (log: rpcpin.log)"
    ip netns exec "$NS_DMZ" "$RPCPIN_BIN" run --config "$WORK/rpcpin.toml" \
        >>"$WORK/rpcpin.log" 2>&1 &
    rpcpin_pid=$!
    local deadline=$((SECONDS + 15)) rc=0
    until rpcpin_listening; do
        if ! kill -0 "$rpcpin_pid" 2>/dev/null; then
            wait "$rpcpin_pid" || rc=$?
            rpcpin_pid=""
            die "rpcpin run exited (status $rc) before listening"
        fi
        ((SECONDS < deadline)) || die "rpcpin is not listening on 135/$PIN_LSAD/$PIN_CLASSIC after 15 s"
        sleep 0.2
    done
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
# rpcclient CMD from namespace NS against BINDING; succeeds when rpcclient
# exits 0 and its output contains every PATTERN (fixed strings).
rpcclient_ok() {
    local ns=$1 binding=$2 cmd=$3
    shift 3
    local out="$WORK/rpcclient.out" rc=0
    client "$ns" rpcclient -s "$WORK/client.conf" -U "$RPC_USER%$RPC_PASS" \
        "$binding" -c "$cmd" >"$out" 2>&1 || rc=$?
    cat "$out"
    ((rc == 0)) || { echo "rpcclient exited $rc"; return 1; }
    local p
    for p in "$@"; do
        grep -qF -- "$p" "$out" || { echo "missing in output: $p"; return 1; }
    done
}

rpcclient_fails() {
    local ns=$1 binding=$2 cmd=$3
    local out="$WORK/rpcclient.out" rc=0
    client "$ns" rpcclient -s "$WORK/client.conf" -U "$RPC_USER%$RPC_PASS" \
        "$binding" -c "$cmd" >"$out" 2>&1 || rc=$?
    cat "$out"
    echo "rpcclient exited $rc"
    ((rc != 0)) && ! grep -qF 'name:[RIGSRV]' "$out"
}

enumdomains_via_rpcpin() {
    rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'
}

srvinfo_via_rpcpin() {
    rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" srvinfo RIGSRV platform_id 'os version'
}

# A TCP port must be unreachable from the client although something listens
# there (so it is the firewall that says no, not an empty port).
blocked_from_client() {
    local host=$1 port=$2
    if tcp_connects "$NS_CLI" "$host" "$port"; then
        echo "client connected to $host:$port"
        return 1
    fi
    echo "client could not connect to $host:$port"
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

# tshark on the client's veth: start, and stop (it writes the file on exit).
start_capture() {
    local file=$1
    ip netns exec "$NS_CLI" tshark -i to-dmz -f "tcp port 135" -w "$file" -q \
        >"$WORK/tshark.log" 2>&1 &
    tshark_pid=$!
    wait_for 15 grep -q "Capturing on" "$WORK/tshark.log" ||
        die "tshark did not start capturing within 15 s"
}

stop_capture() {
    sleep 0.5 # let the last segments reach the capture
    kill -INT "$tshark_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$tshark_pid" 2>/dev/null || break
        sleep 0.1
    done
    stop_pid "$tshark_pid"
    tshark_pid=""
}

# Wireshark's own EPM dissector must see, in every ept_map response the
# client received, IPv4 = rpcpin's address and the pin's port for SAMR and
# SRVSVC (and their group mates).
tshark_agrees() {
    local file=$1
    tshark -r "$file" -Y 'epm && dcerpc.pkt_type == 2' -V 2>/dev/null |
        awk -v ip="$DMZ_OUT_IP" -v lsad="$PIN_LSAD" -v classic="$PIN_CLASSIC" '
            /^ *Floor 1 UUID:/      { iface = $4 }
            /^ *Floor 4 TCP Port:/  { split($0, a, ":"); port = a[2] + 0 }
            /^ *Floor 5 IP:/        { split($0, a, ":"); addr = a[2]
                want = (iface == "SAMR" || iface == "LSARPC") ? lsad : classic
                ok = (addr == ip && port == want)
                printf "%s tower: %s port %d (%s)\n", iface, addr, port, ok ? "ok" : "WRONG"
                if (!ok) bad++
                seen[iface]++ }
            END {
                if (!seen["SAMR"] || !seen["SRVSVC"]) { print "no SAMR/SRVSVC tower dissected"; exit 1 }
                exit bad > 0 }'
}

# ==============================================================================
main() {
    if [[ $EUID -ne 0 ]]; then
        echo "run.sh: must run as root (namespaces, nftables)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    trap 'error_at="line $LINENO: $BASH_COMMAND"' ERR

    WORK="$(mktemp -d -t rpcpin-interop.XXXXXX)"
    mkdir -p "$WORK"/samba/{lock,state,cache,pid,private,ncalrpc,log}
    : >"$WORK/rpcpin.log"

    # Everything the suite uses, installed if missing (quick when present).
    "$script_dir/install-deps.sh" | sed -e 's/^/    /' || die "install-deps.sh failed"
    [[ -x "$RPCPIN_BIN" ]] || die "no rpcpin binary at $RPCPIN_BIN (cargo build --release)"

    remove_stale_namespaces
    setup_namespaces
    setup_firewall
    write_smb_conf "$RANGE1"
    write_client_conf
    write_rpcpin_conf
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
    check "rpcclient enumdomains works directly against Samba from the DMZ (credentials and Samba sane)" \
        rpcclient_ok "$NS_DMZ" "ncacn_ip_tcp:${LAN_IP}[seal]" enumdomains 'name:[RIGSRV]' 'name:[Builtin]'

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

    start_rpcpin

    # --- a. ept_map through rpcpin: towers rewritten -----------------------------
    start_capture "$WORK/epm.pcapng"
    check "ept_map via rpcpin: samr/lsarpc towers say $DMZ_OUT_IP:$PIN_LSAD, srvsvc/wkssvc $DMZ_OUT_IP:$PIN_CLASSIC" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" samr lsarpc srvsvc wkssvc \
        --expect-ip "$DMZ_OUT_IP" --expect-port "samr=$PIN_LSAD" --expect-port "lsarpc=$PIN_LSAD" \
        --expect-port "srvsvc=$PIN_CLASSIC" --expect-port "wkssvc=$PIN_CLASSIC"
    stop_capture
    check "tshark's EPM dissector (capture on the client veth) sees the same rewritten floors" \
        tshark_agrees "$WORK/epm.pcapng"

    # --- b. real client through rpcpin -------------------------------------------
    check "rpcclient enumdomains (samr via pin lsad :$PIN_LSAD) from the client works" \
        enumdomains_via_rpcpin
    check "rpcclient srvinfo (srvsvc via pin classic :$PIN_CLASSIC) from the client works" \
        srvinfo_via_rpcpin

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
    check "one bind proposing srvsvc + netdfs via pin classic :$PIN_CLASSIC is refused as a whole" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc,netdfs \
        --raw --refused netdfs --expect reject
    check "one bind proposing samr + winreg via pin lsad :$PIN_LSAD is refused as a whole" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_LSAD" samr,winreg \
        --raw --refused winreg --expect reject
    check "alter_context srvsvc -> netdfs via pin classic :$PIN_CLASSIC is refused" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc --alter netdfs --expect reject
    check "alter_context srvsvc -> wkssvc (same pin) via pin classic :$PIN_CLASSIC is accepted (control)" \
        client "$NS_CLI" "$PY" "$script_dir/bind_check.py" "$DMZ_OUT_IP" "$PIN_CLASSIC" srvsvc --alter wkssvc --expect accept

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

    exit 0 # cleanup() prints the summary and sets the exit status
}

main "$@"
