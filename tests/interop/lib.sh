# shellcheck shell=bash
# Shared by the interop scripts (run.sh, two_servers.sh, scale_out.sh, ipv6.sh) and
# scripts/demo.sh: reporting, namespace and process helpers, the client/DMZ/LAN topology
# with rpcpin in the DMZ (IPv4 or IPv6 addresses), Samba in the LAN namespace, rpcclient.
# Sourced, never run.
#
# The sourcing script sets, before calling anything here:
#   WORK, PY, SAMBA_DCERPCD, RPC_USER, RPC_PASS, CLIENT_TIMEOUT,
#   LAN_IP, NS_LAN, NS_DMZ (a namespace that reaches $LAN_IP), passed, failed,
#   samba_pid, created_user, start_time, error_at, stdout_fd, stderr_fd;
# optionally SAMBA_NETBIOS_NAME (Samba's netbios name, default RIGSRV);
# and, for the topology and rpcpin in the DMZ (run.sh, demo.sh):
#   NS_CLI, CLI_IP, DMZ_OUT_IP, DMZ_IN_IP, PIN_LSAD, PIN_CLASSIC, RPCPIN_BIN, rpcpin_pid.

# Helpers are called through check()/wait_for()/traps, which shellcheck cannot follow:
# shellcheck disable=SC2317,SC2034,SC2154

# The interop directory, where the Python helpers used here live (the sourcing script may
# live elsewhere).
lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

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

# Poll CMD until it succeeds, at most $1 seconds (every 0.1 s: what is waited for, a
# listener or a log line, is usually there within a fraction of a second).
wait_for() {
    local limit=$1
    shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# tcp_connects NS HOST PORT [SECONDS]: can a TCP connection be opened from namespace NS to
# HOST:PORT within SECONDS (default 3)?
tcp_connects() {
    local ns=$1 host=$2 port=$3 limit=${4:-3}
    ip netns exec "$ns" timeout "$limit" bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# blocked_from_client HOST PORT: the client namespace cannot open a TCP connection to
# HOST:PORT. Where something listens there, that shows the firewall says no, not an empty
# port: the firewall drops the SYN, so the attempt can only time out, while across two
# veths an open port answers within milliseconds, so one second tells them apart.
blocked_from_client() {
    local host=$1 port=$2
    if tcp_connects "$NS_CLI" "$host" "$port" 1; then
        echo "client connected to $host:$port"
        return 1
    fi
    echo "client could not connect to $host:$port"
}

# begin_run NAME: how every suite's main starts: as root, or "0 passed, 1 failed"; the
# original stdout and stderr kept (the script's cleanup restores them), cleanup on exit,
# and the line of an unexpected error noted for it.
begin_run() {
    if [[ $EUID -ne 0 ]]; then
        echo "$1: must run as root (network namespaces)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    exec {stdout_fd}>&1 {stderr_fd}>&2
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    trap 'error_at="line $LINENO: $BASH_COMMAND"' ERR
}

# same_rpcpin PID: the rpcpin started as PID still runs, as $rpcpin_pid, and holds 135.
same_rpcpin() {
    kill -0 "$1" 2>/dev/null || { echo "rpcpin (pid $1) is gone"; return 1; }
    [[ "$rpcpin_pid" == "$1" ]] || { echo "rpcpin pid changed"; return 1; }
    in_ns "$NS_DMZ" ss -Hltnp "sport = :135" | grep -q "pid=$1," || { echo "pid $1 does not hold 135"; return 1; }
    echo "rpcpin pid $1 still holds 135"
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

# Remove namespaces: kill what still runs inside, then delete.
delete_namespaces() {
    local ns
    for ns in "$@"; do
        if ip netns list | grep -qw "$ns"; then
            kill_ns_pids "$ns"
            ip netns del "$ns"
        fi
    done
}

# finish RC LOGFILE...: the end of every cleanup: reports an unexpected abort, prints the
# tail of each log on failure, removes (or keeps, KEEP_WORK=1) the temp dir, prints the
# summary, and exits non-zero when any check failed.
finish() {
    local rc=$1 f
    shift
    if [[ -n "$error_at" ]]; then
        fail "suite aborted by an unexpected error (exit $rc) at $error_at"
    elif ((rc != 0 && failed == 0)); then
        fail "suite aborted (exit $rc)"
    fi
    if ((failed > 0)) && [[ -n "$WORK" ]]; then
        for f in "$@"; do
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

# remove_stale_namespaces REGEX: namespaces matching REGEX (ending in -PID) left by a run
# that was killed outright (its PID is gone).
remove_stale_namespaces() {
    local pattern=$1 ns pid
    for ns in $(ip netns list | awk '{print $1}' | grep -E "$pattern" || true); do
        pid=${ns##*-}
        if ! kill -0 "$pid" 2>/dev/null; then
            log "removing stale namespace $ns"
            kill_ns_pids "$ns"
            ip netns del "$ns" || true
        fi
    done
}

# --- setup: client, DMZ and LAN namespaces; rpcpin in the DMZ -----------------------
# add_addr NS DEV ADDR: ADDR on DEV in namespace NS, an IPv4 address in a /24, an IPv6 one
# in a /64 and usable at once (nodad: no duplicate address detection to wait for).
add_addr() {
    local ns=$1 dev=$2 addr=$3
    if [[ "$addr" == *:* ]]; then
        ip -n "$ns" addr add "$addr/64" dev "$dev" nodad
    else
        ip -n "$ns" addr add "$addr/24" dev "$dev"
    fi
}

# Three namespaces stand in for three hosts: client $CLI_IP -veth- $DMZ_OUT_IP DMZ
# $DMZ_IN_IP -veth- $LAN_IP LAN, IPv4 or IPv6 addresses (add_addr). The veth ends are
# to-dmz (client), to-cli and to-lan (DMZ), to-dmz (LAN).
setup_dmz_topology() {
    local ns
    log "namespaces $NS_CLI / $NS_DMZ / $NS_LAN"
    for ns in "$NS_CLI" "$NS_DMZ" "$NS_LAN"; do
        ip netns add "$ns"
        in_ns "$ns" ip link set lo up
    done
    # Create each veth end directly inside its namespace: no name is ever
    # taken in the host's namespace.
    ip link add name to-dmz netns "$NS_CLI" type veth peer name to-cli netns "$NS_DMZ"
    ip link add name to-lan netns "$NS_DMZ" type veth peer name to-dmz netns "$NS_LAN"
    add_addr "$NS_CLI" to-dmz "$CLI_IP"
    add_addr "$NS_DMZ" to-cli "$DMZ_OUT_IP"
    add_addr "$NS_DMZ" to-lan "$DMZ_IN_IP"
    add_addr "$NS_LAN" to-dmz "$LAN_IP"
    ip -n "$NS_CLI" link set to-dmz up
    ip -n "$NS_DMZ" link set to-cli up
    ip -n "$NS_DMZ" link set to-lan up
    ip -n "$NS_LAN" link set to-dmz up
    # The DMZ is a host, not a router: only rpcpin may carry traffic across.
    in_ns "$NS_DMZ" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0
    # No default routes anywhere: the client knows only its own subnet with the DMZ,
    # the LAN only its own.
}

# The pins' ports in the DMZ (rpcpin listens on them, the firewall opens them): the sourcing
# script's array DMZ_PIN_PORTS when it sets one, else PIN_LSAD and PIN_CLASSIC.
dmz_pin_ports() {
    if [[ -n "${DMZ_PIN_PORTS+set}" ]]; then
        echo "${DMZ_PIN_PORTS[*]}"
    else
        echo "$PIN_LSAD $PIN_CLASSIC"
    fi
}

# The DMZ's firewall: from the client side only tcp/135 and the pins, and no forwarding.
setup_firewall() {
    local ports
    ports=$(dmz_pin_ports)
    log "nftables in the DMZ: client side may reach tcp/135, ${ports// /, } only"
    in_ns "$NS_DMZ" nft -f - <<NFT
table inet rpcpin_dmz {
    chain input {
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
        # IPv6 neighbour discovery (IPv6's ARP): without it nothing reaches the DMZ
        # over IPv6.
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
        # The openings, nothing else. The LAN side gets no new
        # connections in at all: Samba never calls the DMZ.
        iifname "to-cli" tcp dport { 135, ${ports// /, } } ct state new accept
    }
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
}
NFT
}

dmz_rpcpin_listening() {
    local port ports
    read -ra ports <<<"$(dmz_pin_ports)"
    for port in 135 "${ports[@]}"; do
        in_ns "$NS_DMZ" ss -Hltn "sport = :$port" | grep -q . || return 1
    done
}

# start_dmz_rpcpin [CONF]: rpcpin in the DMZ (default config $WORK/rpcpin.toml, log appended
# to $WORK/rpcpin.log); returns once it listens on 135 and the pins.
start_dmz_rpcpin() {
    local conf=${1:-$WORK/rpcpin.toml}
    log "starting rpcpin in $NS_DMZ with $(basename "$conf") (log: rpcpin.log)"
    ip netns exec "$NS_DMZ" "$RPCPIN_BIN" run --config "$conf" \
        >>"$WORK/rpcpin.log" 2>&1 &
    rpcpin_pid=$!
    local deadline=$((SECONDS + 15)) rc=0
    until dmz_rpcpin_listening; do
        if ! kill -0 "$rpcpin_pid" 2>/dev/null; then
            wait "$rpcpin_pid" || rc=$?
            rpcpin_pid=""
            die "rpcpin run exited (status $rc) before listening"
        fi
        ((SECONDS < deadline)) || die "rpcpin is not listening on 135 and $(dmz_pin_ports) after 15 s"
        sleep 0.1
    done
}

# The number of lines in rpcpin's log so far: a mark to read what was logged after it.
log_mark() { wc -l <"$WORK/rpcpin.log"; }

# --- setup: Samba in the LAN namespace ---------------------------------------
write_smb_conf() {
    local range=$1
    cat >"$WORK/smb.conf" <<CONF
[global]
  workgroup = RIG
  netbios name = ${SAMBA_NETBIOS_NAME:-RIGSRV}
  server role = standalone server
  interfaces = $LAN_IP
  bind interfaces only = yes
  rpc start on demand helpers = no
  rpc server dynamic port range = $range
  disable netbios = yes
  # The NTLM check at authentication level connect needs it (Samba refuses the level by default).
  allow dcerpc auth level connect = yes
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
    client "$NS_DMZ" "$PY" "$lib_dir/epm_towers.py" "$LAN_IP" samr srvsvc winreg
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
    client "$NS_DMZ" "$PY" "$lib_dir/epm_towers.py" "$LAN_IP" "$1" |
        awk '/^TOWER/ { sub("port=", "", $6); print $6; exit }'
}

# rpcclient_fails NS BINDING CMD: rpcclient fails, and names no RIGSRV domain.
rpcclient_fails() {
    local ns=$1 binding=$2 cmd=$3
    local out="$WORK/rpcclient.out" rc=0
    client "$ns" rpcclient -s "$WORK/client.conf" -U "$RPC_USER%$RPC_PASS" \
        "$binding" -c "$cmd" >"$out" 2>&1 || rc=$?
    cat "$out"
    echo "rpcclient exited $rc"
    ((rc != 0)) && ! grep -qF 'name:[RIGSRV]' "$out"
}

# rpcclient CMD from namespace NS against BINDING; succeeds when rpcclient
# exits 0 and its output contains every PATTERN (fixed strings). RPCCLIENT_OUT names
# the file its output goes to (default $WORK/rpcclient.out), for runs in the background;
# the array RPCCLIENT_OPTS, when the sourcing script sets it, adds options.
rpcclient_ok() {
    local ns=$1 binding=$2 cmd=$3
    shift 3
    local out="${RPCCLIENT_OUT:-$WORK/rpcclient.out}" rc=0
    client "$ns" rpcclient -s "$WORK/client.conf" -U "$RPC_USER%$RPC_PASS" \
        ${RPCCLIENT_OPTS[@]+"${RPCCLIENT_OPTS[@]}"} "$binding" -c "$cmd" >"$out" 2>&1 || rc=$?
    # The verdict first, then the output: a long output is cut short under the check.
    ((rc == 0)) || { echo "rpcclient exited $rc"; cat "$out"; return 1; }
    local p missing=0
    for p in "$@"; do
        grep -qF -- "$p" "$out" || { echo "missing in output: $p"; missing=1; }
    done
    cat "$out"
    ((missing == 0))
}
