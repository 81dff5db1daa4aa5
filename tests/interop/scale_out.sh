#!/usr/bin/env bash
# rpcpin scale-out interop check: three rpcpin instances behind HAProxy (TCP mode,
# PROXY protocol v2, health checks on rpcpin's /readyz), real Samba, real rpcclient.
#
#   client 198.51.100.2 ─veth─ 198.51.100.1  HAProxy  10.136.0.1 ─veth─ 10.136.0.11/.12/.13  rpcpin x3  10.135.0.1 ─veth─ 10.135.0.2 Samba
#          (rpcpin-so-cli)      (rpcpin-so-lb: :135, :6004, :6001)      (rpcpin-so-dmz: :135, :16004, :16001, admin :9135)   (rpcpin-so-lan)
#
# Every rpcpin advertises HAProxy's address and HAProxy's frontend ports in its towers, so
# a client's endpoint-mapper answer may come from one instance and its pin connection be
# served by another. No namespace forwards and the client knows no route beyond HAProxy.
# See README.md beside this file.
#
# Usage: tests/interop/scale_out.sh   (as root; RPCPIN_BIN overrides the binary,
#                                      KEEP_WORK=1 keeps the temp dir)
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
LB_IP=198.51.100.1       # HAProxy's client-facing address: every instance's epm.advertise
LB_IN_IP=10.136.0.1      # HAProxy's address towards the instances
RP_NAMES=(rp1 rp2 rp3)
RP_IPS=(10.136.0.11 10.136.0.12 10.136.0.13)
DMZ_IN_IP=10.135.0.1
LAN_IP=10.135.0.2
PIN_LSAD=6004            # HAProxy's frontends, and each pin's advertise_port
PIN_CLASSIC=6001
RP_LSAD=16004            # where each instance's pins listen
RP_CLASSIC=16001
ADMIN_PORT=9135          # each instance's [admin] listener
RANGE=49152-49407
RPC_USER=riguser
RPC_PASS=Rig-Pass-123
CLIENT_TIMEOUT=20
RUNS=6                   # rpcclient runs (enumdomains and srvinfo in turn) for attribution
LOOP_N=30                # new client associations in the kill loop
KILL_AFTER=10            # the victim is killed after this many of them
VICTIM=0                 # index into RP_NAMES
DOWN_WITHIN=5            # seconds HAProxy may take to mark the victim DOWN

NS_CLI="rpcpin-so-cli-$$"
NS_LB="rpcpin-so-lb-$$"
NS_DMZ="rpcpin-so-dmz-$$"
NS_LAN="rpcpin-so-lan-$$"

passed=0
failed=0
start_time=$SECONDS
WORK=""
samba_pid=""
haproxy_pid=""
loop_pid=""
rp_pids=("" "" "")
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
    local pid
    stop_pid "$loop_pid"
    stop_pid "$haproxy_pid"
    for pid in "${rp_pids[@]}"; do stop_pid "$pid"; done
    stop_pid "$samba_pid"
    delete_namespaces "$NS_CLI" "$NS_LB" "$NS_DMZ" "$NS_LAN"
    ((created_user)) && remove_user
    finish "$rc" "$WORK/haproxy.log" "$WORK"/rp?.log "$WORK"/samba-*.log
}

# --- setup: topology ----------------------------------------------------------
setup_namespaces() {
    log "namespaces $NS_CLI / $NS_LB / $NS_DMZ / $NS_LAN"
    local ns ip
    for ns in "$NS_CLI" "$NS_LB" "$NS_DMZ" "$NS_LAN"; do
        ip netns add "$ns"
        in_ns "$ns" ip link set lo up
        in_ns "$ns" sysctl -qw net.ipv4.ip_forward=0
    done
    ip link add name to-lb netns "$NS_CLI" type veth peer name to-cli netns "$NS_LB"
    ip link add name to-dmz netns "$NS_LB" type veth peer name to-lb netns "$NS_DMZ"
    ip link add name to-lan netns "$NS_DMZ" type veth peer name to-dmz netns "$NS_LAN"
    ip -n "$NS_CLI" addr add "$CLI_IP/24" dev to-lb
    ip -n "$NS_LB" addr add "$LB_IP/24" dev to-cli
    ip -n "$NS_LB" addr add "$LB_IN_IP/24" dev to-dmz
    for ip in "${RP_IPS[@]}"; do
        ip -n "$NS_DMZ" addr add "$ip/24" dev to-lb
    done
    ip -n "$NS_DMZ" addr add "$DMZ_IN_IP/24" dev to-lan
    ip -n "$NS_LAN" addr add "$LAN_IP/24" dev to-dmz
    ip -n "$NS_CLI" link set to-lb up
    ip -n "$NS_LB" link set to-cli up
    ip -n "$NS_LB" link set to-dmz up
    ip -n "$NS_DMZ" link set to-lb up
    ip -n "$NS_DMZ" link set to-lan up
    ip -n "$NS_LAN" link set to-dmz up
}

# --- rpcpin instances ------------------------------------------------------------
write_rpcpin_conf() {
    local ip=$1 file=$2
    cat >"$file" <<TOML
[backend]
host = "$LAN_IP"

[epm]
listen = "$ip:135"
# Clients reach every instance through HAProxy: towers carry its address and ports.
advertise = "$LB_IP"
proxy_protocol = true

[[pin]]
name = "lsad"
listen = "$ip:$RP_LSAD"
interfaces = ["samr", "lsarpc", "dssetup"]
advertise_port = $PIN_LSAD
proxy_protocol = true

[[pin]]
name = "classic"
listen = "$ip:$RP_CLASSIC"
interfaces = ["srvsvc", "wkssvc"]
advertise_port = $PIN_CLASSIC
proxy_protocol = true

[admin]
listen = "$ip:$ADMIN_PORT"

[log]
format = "json"
TOML
}

rp_listening() {
    local ip=$1 port
    for port in 135 "$RP_LSAD" "$RP_CLASSIC" "$ADMIN_PORT"; do
        in_ns "$NS_DMZ" ss -Hltn "src $ip:$port" | grep -q . || return 1
    done
}

# start_rpcpin I: instance I (index into RP_NAMES), its configuration checked first.
start_rpcpin() {
    local i=$1 name=${RP_NAMES[$1]} ip=${RP_IPS[$1]}
    write_rpcpin_conf "$ip" "$WORK/$name.toml"
    "$RPCPIN_BIN" check --config "$WORK/$name.toml" >"$WORK/check.out" 2>&1 || {
        show "$WORK/check.out"
        die "rpcpin check refuses $name.toml"
    }
    log "starting rpcpin $name on $ip (135, $RP_LSAD, $RP_CLASSIC, admin $ADMIN_PORT)"
    ip netns exec "$NS_DMZ" "$RPCPIN_BIN" run --config "$WORK/$name.toml" \
        >>"$WORK/$name.log" 2>&1 &
    rp_pids[i]=$!
}

start_rpcpins() {
    local i
    for i in "${!RP_NAMES[@]}"; do start_rpcpin "$i"; done
    for i in "${!RP_NAMES[@]}"; do
        wait_for 15 rp_listening "${RP_IPS[$i]}" ||
            die "rpcpin ${RP_NAMES[$i]} is not listening on ${RP_IPS[$i]} after 15 s"
    done
}

# --- HAProxy -----------------------------------------------------------------------
write_haproxy_conf() {
    local i servers_epm="" servers_lsad="" servers_classic=""
    for i in "${!RP_NAMES[@]}"; do
        servers_epm+="    server ${RP_NAMES[$i]} ${RP_IPS[$i]}:135 send-proxy-v2 check port $ADMIN_PORT inter 1s fall 2 rise 1
"
        servers_lsad+="    server ${RP_NAMES[$i]} ${RP_IPS[$i]}:$RP_LSAD send-proxy-v2 track epm/${RP_NAMES[$i]}
"
        servers_classic+="    server ${RP_NAMES[$i]} ${RP_IPS[$i]}:$RP_CLASSIC send-proxy-v2 track epm/${RP_NAMES[$i]}
"
    done
    cat >"$WORK/haproxy.cfg" <<CFG
global
    stats socket $WORK/haproxy.sock mode 600 level admin
    log stdout format raw local0

defaults
    mode tcp
    log global
    # One line per connection: the server that served it, and its retries ("+N" when
    # redispatched to another server after a failed connect).
    log-format "%ci:%cp %ft %b/%s retries=%rc Tc=%Tc Tt=%Tt bytes=%B term=%ts"
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A connect to a dead instance is retried at once on another one.
    retries 3
    option redispatch 1

frontend epm
    bind $LB_IP:135
    default_backend epm

frontend lsad
    bind $LB_IP:$PIN_LSAD
    default_backend lsad

frontend classic
    bind $LB_IP:$PIN_CLASSIC
    default_backend classic

# Each instance's readiness is checked once, here; the pin backends track it.
backend epm
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
${servers_epm}
backend lsad
    balance roundrobin
${servers_lsad}
backend classic
    balance roundrobin
${servers_classic}
CFG
}

start_haproxy() {
    write_haproxy_conf
    haproxy -c -f "$WORK/haproxy.cfg" >"$WORK/check.out" 2>&1 || {
        show "$WORK/check.out"
        die "haproxy -c refuses the configuration"
    }
    log "starting HAProxy in $NS_LB on $LB_IP (135, $PIN_LSAD, $PIN_CLASSIC)"
    ip netns exec "$NS_LB" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    haproxy_pid=$!
    wait_for 10 test -S "$WORK/haproxy.sock" || die "HAProxy's stats socket did not appear within 10 s"
}

servers() { "$PY" "$script_dir/scale_tools.py" servers "$WORK/haproxy.sock"; }

# Every server of every backend UP, and each instance's own check passed at layer 7.
all_up() {
    local out
    out=$(servers) || return 1
    echo "$out"
    awk -v n="${#RP_NAMES[@]}" '
        { up += ($2 == "UP") }
        $1 ~ /^epm\// { l7 += ($3 == "L7OK") }
        END { exit !(up == 3 * n && l7 == n) }' <<<"$out"
}

# up_within SECONDS: all_up holds within SECONDS; prints the servers' state either way.
up_within() {
    local started
    started=$(ms_now)
    if wait_for "$1" all_up; then
        all_up
        echo "all UP $(($(ms_now) - started)) ms after the restart"
    else
        all_up
        return 1
    fi
}

# NAME's servers (all three backends) are DOWN, and every other one still UP.
only_down() {
    local name=$1 out
    out=$(servers) || return 1
    echo "$out"
    awk -v v="$name" -v n="${#RP_NAMES[@]}" '
        { split($1, a, "/"); if (a[2] == v) down += ($2 ~ /^DOWN/); else up += ($2 == "UP") }
        END { exit !(down == 3 && up == 3 * (n - 1)) }' <<<"$out"
}

# --- rpcpin's logs -------------------------------------------------------------------
marks() {
    local name
    for name in "${RP_NAMES[@]}"; do
        printf '%s=%s:%s ' "$name" "$WORK/$name.log" "$(wc -l <"$WORK/$name.log")"
    done
}

# conns MARKS...: connection_closed events after the marks, one line each (scale_tools.py).
conns() {
    # shellcheck disable=SC2086  # MARKS is a list of words
    "$PY" "$script_dir/scale_tools.py" conns $1
}

# attributed_run N CMD PIN PATTERN...: rpcclient CMD through HAProxy; then, from the
# instances' logs, which instance served its endpoint-mapper and its pin connections.
attributed_run() {
    local n=$1 cmd=$2 pin=$3 m deadline out epm_by pin_by
    shift 3
    m=$(marks)
    rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${LB_IP}[seal]" "$cmd" "$@" || return 1
    deadline=$((SECONDS + 3))
    while :; do
        # The client's connections only (their PROXY header names it).
        out=$(conns "$m" | grep -F " client=$CLI_IP:" || true)
        epm_by=$(awk '$2 == "epm" { print $1 }' <<<"$out" | sort -u | paste -sd, -)
        pin_by=$(awk -v p="$pin" '$2 == p { print $1 }' <<<"$out" | sort -u | paste -sd, -)
        [[ -n "$epm_by" && -n "$pin_by" ]] && break
        ((SECONDS < deadline)) || break
        sleep 0.2
    done
    echo "$out"
    echo "run $n $cmd: epm=${epm_by:-none} $pin=${pin_by:-none}" | tee -a "$WORK/attribution"
    [[ -n "$epm_by" && -n "$pin_by" ]]
}

rpcclient_runs() {
    local n
    : >"$WORK/attribution"
    for ((n = 1; n <= RUNS; n++)); do
        if ((n % 2)); then
            attributed_run "$n" enumdomains lsad 'name:[RIGSRV]' 'name:[Builtin]' >"$WORK/run.out" 2>&1 ||
                { cat "$WORK/run.out"; return 1; }
        else
            attributed_run "$n" srvinfo classic RIGSRV platform_id 'os version' >"$WORK/run.out" 2>&1 ||
                { cat "$WORK/run.out"; return 1; }
        fi
        tail -n 1 "$WORK/run.out"
    done
}

# At least one rpcclient run got its endpoint-mapper answer from one instance and was
# served on the pin by another (no instance served both). Lines of $WORK/attribution:
#   run N CMD: epm=INSTANCE[,INSTANCE] PIN=INSTANCE[,INSTANCE]
crossed_instances() {
    cat "$WORK/attribution"
    awk '{ split($4, a, "="); split(a[2], e, ","); split($5, b, "="); split(b[2], p, ",")
           for (i in e) for (j in p) if (e[i] == p[j]) next
           crossed++ }
         END { printf "%d run(s) of %d crossed instances\n", crossed, NR; exit !(crossed > 0) }' \
        "$WORK/attribution"
}

# Every client connection the instances logged since MARKS names the client namespace's
# address (from the PROXY header) and came from HAProxy's; none lacks a client.
clients_from_proxy_header() {
    local out
    out=$(conns "$1")
    awk -v cli="$CLI_IP" -v lb="$LB_IN_IP" '
        { split($3, c, "="); split($4, p, "=")
          caddr = c[2]; sub(/:[0-9]+$/, "", caddr); paddr = p[2]; sub(/:[0-9]+$/, "", paddr)
          n++; by[$1 " " $2]++
          if (caddr != cli || paddr != lb) { bad++; if (bad <= 5) print "WRONG: " $0 }
          else if (!shown[$2]++) print "e.g. " $0 }
        END { for (k in by) printf "%s: %d connection(s)\n", k, by[k]
              printf "%d connection(s) logged, %d without client=%s:* from peer=%s:*\n", n, bad, cli, lb
              exit !(n > 0 && bad == 0) }' <<<"$out"
}

# The towers of ept_map answered by each instance in turn (roundrobin) carry HAProxy's
# address and frontend ports, never the instances' own listen ports; each instance
# answered one of them.
ept_map_each_instance() {
    local m out
    m=$(marks)
    for _ in "${RP_NAMES[@]}"; do
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$LB_IP" samr lsarpc srvsvc wkssvc \
            --expect-ip "$LB_IP" --expect-port "samr=$PIN_LSAD" --expect-port "lsarpc=$PIN_LSAD" \
            --expect-port "srvsvc=$PIN_CLASSIC" --expect-port "wkssvc=$PIN_CLASSIC" \
            --not-port "samr=$RP_LSAD" --not-port "srvsvc=$RP_CLASSIC" || return 1
    done
    # The client's connections to the endpoint mapper (their PROXY header names it).
    local deadline=$((SECONDS + 3))
    while out=$(conns "$m" | awk -v c="client=$CLI_IP:" '$2 == "epm" && index($3, c) == 1')
        (($(grep -c . <<<"$out") < ${#RP_NAMES[@]} && SECONDS < deadline)); do
        sleep 0.2
    done
    echo "$out"
    awk -v n="${#RP_NAMES[@]}" '$2 == "epm" { by[$1]++ }
        END { k = 0; for (i in by) k++; printf "ept_map answered by %d instance(s)\n", k; exit !(k == n) }' <<<"$out"
}

# --- the kill loop -----------------------------------------------------------------------
# LOOP_N rpcclient runs (enumdomains and srvinfo in turn), one after another, each a new
# endpoint-mapper and a new pin connection; after KILL_AFTER of them it waits (at most
# 15 s) for the main script to SIGKILL an instance, then goes on at once.
kill_loop() {
    local i cmd rc
    for ((i = 1; i <= LOOP_N; i++)); do
        if ((i == KILL_AFTER + 1)); then
            : >"$WORK/gate.ready"
            wait_for 15 test -e "$WORK/gate.go" || echo "gate: nobody killed an instance"
        fi
        rc=0
        if ((i % 2)); then
            cmd=enumdomains
            RPCCLIENT_OUT="$WORK/loop-$i.out" rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${LB_IP}[seal]" \
                enumdomains 'name:[RIGSRV]' 'name:[Builtin]' >/dev/null 2>&1 || rc=$?
        else
            cmd=srvinfo
            RPCCLIENT_OUT="$WORK/loop-$i.out" rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${LB_IP}[seal]" \
                srvinfo RIGSRV platform_id 'os version' >/dev/null 2>&1 || rc=$?
        fi
        if ((rc == 0)); then echo "ok $i $cmd"; else echo "FAILED $i $cmd"; fi
    done
}

loop_all_ok() {
    local n_ok
    n_ok=$(grep -c '^ok ' "$WORK/loop.out" || true)
    grep -v '^ok ' "$WORK/loop.out" || true
    local f
    while read -r f; do
        echo "--- run $f:"
        head -n 5 "$WORK/loop-$f.out"
    done < <(awk '/^FAILED/ { print $2 }' "$WORK/loop.out")
    echo "$n_ok of $LOOP_N rpcclient runs succeeded ($((LOOP_N - KILL_AFTER)) of them after the kill)"
    ((n_ok == LOOP_N))
}

# HAProxy's log after the kill shows connections first sent to the victim and redispatched
# (retries=+N) to a live instance: the retry path really ran.
redispatched() {
    local victim=$1 from=$2 lines
    lines=$(tail -n +"$((from + 1))" "$WORK/haproxy.log" | grep -F 'retries=+' || true)
    echo "${lines:-no connection logged with retries=+N after the kill}" | head -n 8
    awk -v v="$victim" '{ split($3, a, "/"); if (a[2] == v) bad++ } END { exit bad > 0 }' <<<"$lines" ||
        { echo "a redispatched connection ended on the victim"; return 1; }
    [[ -n "$lines" ]]
}

ms_now() { date +%s%3N; }

marked_down() {
    local victim=$1 down_ms=$2
    only_down "$victim" || return 1
    [[ -n "$down_ms" ]] || { echo "$victim was not DOWN within $DOWN_WITHIN s of the kill"; return 1; }
    echo "$victim DOWN $down_ms ms after the kill"
}

# ==============================================================================
main() {
    begin_run scale_out.sh

    WORK="$(mktemp -d -t rpcpin-scale.XXXXXX)"
    mkdir -p "$WORK"/samba/{lock,state,cache,pid,private,ncalrpc,log}
    for name in "${RP_NAMES[@]}"; do : >"$WORK/$name.log"; done

    "$script_dir/install-deps.sh" | sed -e 's/^/    /' || die "install-deps.sh failed"
    [[ -x "$RPCPIN_BIN" ]] || die "no rpcpin binary at $RPCPIN_BIN (cargo build --release)"
    command -v haproxy >/dev/null || die "no haproxy (install-deps.sh installs it)"

    remove_stale_namespaces '^rpcpin-so-(cli|lb|dmz|lan)-[0-9]+$'
    setup_namespaces
    write_smb_conf "$RANGE"
    write_client_conf
    setup_samba_user
    start_samba "$RANGE" 1
    start_rpcpins
    start_haproxy

    local victim=${RP_NAMES[$VICTIM]} live=${RP_NAMES[$(((VICTIM + 1) % ${#RP_NAMES[@]}))]}
    local live_ip=${RP_IPS[$(((VICTIM + 1) % ${#RP_NAMES[@]}))]}

    if wait_for 15 all_up; then
        check "HAProxy sees all ${#RP_NAMES[@]} instances UP in every backend (epm checks /readyz on :$ADMIN_PORT: L7OK; lsad and classic track them)" \
            all_up
    else
        check "HAProxy sees all ${#RP_NAMES[@]} instances UP within 15 s" all_up
        exit 1
    fi

    local m0
    m0=$(marks)
    check "ept_map through HAProxy, answered by each instance in turn: towers carry $LB_IP and the frontend ports ($PIN_LSAD, $PIN_CLASSIC), not the instances' ($RP_LSAD, $RP_CLASSIC)" \
        ept_map_each_instance
    check "rpcclient enumdomains and srvinfo through HAProxy, $RUNS runs in turn, all work (each run's instances named from their logs)" \
        rpcclient_runs
    check "an endpoint-mapper answer from one instance followed by the pin connection through another works: at least one rpcclient run crossed instances" \
        crossed_instances
    check "every client connection logged by the instances names the client $CLI_IP (PROXY v2 header) and came from HAProxy's $LB_IN_IP" \
        clients_from_proxy_header "$m0"

    # --- kill one instance in the middle of a loop of new client connections ------------
    local hap_mark kill_ms down_ms
    hap_mark=$(wc -l <"$WORK/haproxy.log")
    kill_loop >"$WORK/loop.out" 2>&1 &
    loop_pid=$!
    wait_for 60 test -e "$WORK/gate.ready" || die "the loop did not reach run $KILL_AFTER within 60 s"
    hap_mark=$(wc -l <"$WORK/haproxy.log")
    kill -KILL "${rp_pids[$VICTIM]}"
    kill_ms=$(ms_now)
    wait "${rp_pids[$VICTIM]}" 2>/dev/null || true
    rp_pids[VICTIM]=""
    : >"$WORK/gate.go"
    log "SIGKILLed $victim after run $KILL_AFTER of $LOOP_N"
    down_ms=""
    while (($(ms_now) - kill_ms < DOWN_WITHIN * 1000)); do
        if only_down "$victim" >/dev/null 2>&1; then
            down_ms=$(($(ms_now) - kill_ms))
            break
        fi
        sleep 0.1
    done
    if wait_for 120 bash -c "! kill -0 $loop_pid 2>/dev/null"; then
        wait "$loop_pid" || true
    else
        fail "the kill loop did not finish within 120 s"
    fi
    stop_pid "$loop_pid"
    loop_pid=""
    check "$LOOP_N new rpcclient runs through HAProxy, $victim SIGKILLed after run $KILL_AFTER: every one succeeded" \
        loop_all_ok
    check "connections HAProxy sent to the dead $victim before it was marked DOWN were redispatched to a live instance (HAProxy log, retries=+N)" \
        redispatched "$victim" "$hap_mark"
    check "HAProxy marked $victim DOWN in every backend within $DOWN_WITHIN s of the kill, the others stay UP" \
        marked_down "$victim" "$down_ms"

    # --- the admin listener of a live instance --------------------------------------------
    check "$live: GET /healthz on $live_ip:$ADMIN_PORT answers 200" \
        client "$NS_LB" "$PY" "$script_dir/scale_tools.py" get "http://$live_ip:$ADMIN_PORT/healthz" --expect-status 200
    check "$live: GET /readyz answers 200" \
        client "$NS_LB" "$PY" "$script_dir/scale_tools.py" get "http://$live_ip:$ADMIN_PORT/readyz" --expect-status 200
    check "$live: GET /metrics answers 200 with rpcpin_connections_total counting its epm, lsad and classic connections" \
        client "$NS_LB" "$PY" "$script_dir/scale_tools.py" get "http://$live_ip:$ADMIN_PORT/metrics" \
        --expect-status 200 --metric 'rpcpin_connections_total{listener="epm"}' \
        --metric 'rpcpin_connections_total{listener="lsad"}' --metric 'rpcpin_connections_total{listener="classic"}'

    # --- the killed instance comes back -----------------------------------------------------
    start_rpcpin "$VICTIM"
    check "$victim restarted: HAProxy marks it UP again (rise 1) within 5 s" up_within 5
    check "after the restart ept_map through HAProxy is answered by all ${#RP_NAMES[@]} instances again, towers as before" \
        ept_map_each_instance

    exit 0 # cleanup() prints the summary and sets the exit status
}

main "$@"
