#!/usr/bin/env bash
# rpcpin in front of a Samba Active Directory domain controller (the `samba` daemon in AD DC
# mode), one pin carrying the DC's interfaces, which Samba spreads over three dynamic ports.
#
#   client 198.51.100.2 ──veth── 198.51.100.1  DMZ (rpcpin)  10.135.0.1 ──veth── 10.135.0.2  DC1
#
# The DC is provisioned into the run's temp dir (`samba-tool domain provision --targetdir`;
# kept under target/ and copied by the next run): nothing of the machine's Samba
# (/etc/samba, /var/lib/samba) is read or written. Pin dc
# (6010) carries drsuapi, netlogon, lsarpc, samr, dssetup and backupkey; rpcpin answers the
# endpoint mapper (epm.mode "answer"). The DMZ firewall lets the client reach tcp/135 and
# 6010 only, and forwards nothing. Through rpcpin, sealed with NTLM, impacket's drsuapi,
# netlogon and samr calls (ad_ops.py) and rpcclient's dsroledominfo, enumdomains and
# dsr_getdcname return the domain's real data; the DC restarts with every port moved and they
# work again through the same rpcpin; with rpcpin stopped the client reaches nothing. See
# README.md beside this file.
#
# Usage: sudo tests/interop/ad_dc.sh   (RPCPIN_BIN, KEEP_WORK=1 as for run.sh)
# Prints PASS:/FAIL: per check and ends with "N passed, M failed".

# Helpers are called through check()/wait_for()/traps, which shellcheck cannot follow:
# shellcheck disable=SC2317
set -euo pipefail
set -E

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
RPCPIN_BIN="${RPCPIN_BIN:-$repo_root/target/release/rpcpin}"
PY="$repo_root/target/interop-venv/bin/python"
export PYTHONDONTWRITEBYTECODE=1

# --- topology and fixtures --------------------------------------------------
CLI_IP=198.51.100.2
DMZ_OUT_IP=198.51.100.1
DMZ_IN_IP=10.135.0.1
LAN_IP=10.135.0.2 # the DC
LAN_NET=10.135.0.0/24
PIN_DC=6010
DMZ_PIN_PORTS=("$PIN_DC") # lib.sh: what rpcpin listens on and the firewall opens, with 135
# The DC's dynamic ports, then the same range one port higher: every interface moves, most
# onto another's old port.
RANGE1=49152-49407
RANGE2=49153-49408
# The domain. Its SID and GUID are chosen here so that the answers can be checked against them.
REALM=rig.test
DOMAIN=RIG
DC_NAME=DC1
DOMAIN_SID=S-1-5-21-1350135135-2135013501-3135135013
DOMAIN_GUID=5c0a6135-0135-4135-8135-000000000135
ADMIN_PASS='Rig-Admin-135!'
RPC_USER="$DOMAIN\\Administrator" # lib.sh's rpcclient_ok logs in as this
RPC_PASS=$ADMIN_PASS
RPCCLIENT_OPTS=(--use-kerberos=off) # NTLM: the client has no KDC, nor DNS for the realm
# netlogon has its own port, drsuapi, lsarpc, dssetup and backupkey share one, samr a third.
DC_IFACES=(drsuapi netlogon lsarpc samr dssetup backupkey)
RPCPIN_USER=nobody
CLIENT_TIMEOUT=30
DC_CACHE="$repo_root/target/ad-dc-provision" # a provisioned domain, reused (provision_dc)

NS_CLI="rpcpin-ad-cli-$$"
NS_DMZ="rpcpin-ad-dmz-$$"
NS_LAN="rpcpin-ad-lan-$$"

passed=0
failed=0
start_time=$SECONDS
WORK=""
DC_DIR=""
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
    finish "$rc" "$WORK/rpcpin.log" "$WORK"/samba-*.log "$WORK/provision.log"
}

# --- the domain controller ----------------------------------------------------
# samba-tool's arguments for the domain, @DIR@ standing for the target directory. Everything
# the DC will need goes into its smb.conf: every directory under the target, only the
# services the checks need (the RPC server; no LDAP, Kerberos, DNS, NetBIOS or file server),
# no TLS key to generate. -s /dev/null: the machine's smb.conf (if any) plays no part.
provision_args() {
    printf '%s\n' -s /dev/null --targetdir=@DIR@ \
        --realm="$REALM" --domain="$DOMAIN" --server-role=dc --use-rfc2307 \
        --dns-backend=SAMBA_INTERNAL --host-name="$DC_NAME" --host-ip="$LAN_IP" \
        --domain-sid="$DOMAIN_SID" --domain-guid="$DOMAIN_GUID" --adminpass="$ADMIN_PASS" \
        --option="interfaces = $LAN_IP" --option="bind interfaces only = yes" \
        --option="dns forwarder = none" --option="tls enabled = no" \
        --option="server services = rpc" \
        --option="pid directory = @DIR@/pid" --option="ncalrpc dir = @DIR@/ncalrpc" \
        --option="winbindd socket directory = @DIR@/winbindd" \
        --option="ntp signd socket directory = @DIR@/ntp_signd" \
        --option="log file = @DIR@/log/%m.log"
}

# Provisions the domain into $DC_DIR, or copies the one a previous run provisioned with the
# same Samba packages and arguments (DC_CACHE/KEY, kept beside the build; the copy takes
# milliseconds, provisioning seconds). The domain's SID and GUID are fixed, so a copy holds
# what provisioning would make. Only the DC's smb.conf names its own directory.
provision_dc() {
    local t=$SECONDS key cache old conf args=()
    key=$({ dpkg-query -W -f='${Package} ${Version}\n' samba samba-ad-provision samba-dsdb-modules \
        python3-samba 2>/dev/null || samba --version; provision_args; } | sha256sum | cut -c1-16)
    cache="$DC_CACHE/$key"
    if [[ -f "$cache/.provisioned-at" ]]; then
        cp -a "$cache/." "$DC_DIR/"
        old=$(<"$DC_DIR/.provisioned-at")
        conf=$(<"$DC_DIR/etc/smb.conf")
        printf '%s\n' "${conf//"$old"/"$DC_DIR"}" >"$DC_DIR/etc/smb.conf"
        log "the domain $REALM copied from a previous run's provisioning ($key)"
        return
    fi
    mkdir -p "$DC_DIR"/{pid,ncalrpc,winbindd,ntp_signd,log}
    log "provisioning $REALM ($DOMAIN), DC $DC_NAME at $LAN_IP, into the temp dir (log: provision.log)"
    mapfile -t args < <(provision_args | sed -e "s|@DIR@|$DC_DIR|g")
    samba-tool domain provision "${args[@]}" >"$WORK/provision.log" 2>&1 ||
        die "samba-tool domain provision failed"
    log "provisioned in $((SECONDS - t)) s"
    # Only this key is kept: an older one is of no use once the packages or arguments changed.
    # Keeping it is a saving, not a check: a failure here is only reported.
    if rm -rf "${DC_CACHE:?}" && mkdir -p "$DC_CACHE" && cp -a "$DC_DIR" "$cache.tmp" &&
        echo "$DC_DIR" >"$cache.tmp/.provisioned-at" && mv -T "$cache.tmp" "$cache"; then
        log "kept for the next run ($key)"
    else
        log "could not keep the provisioned domain in $DC_CACHE"
    fi
}

# The DC's endpoint mapper answers, from the DMZ, for every interface of the pin.
dc_ready() {
    client "$NS_DMZ" "$PY" "$lib_dir/epm_towers.py" "$LAN_IP" "${DC_IFACES[@]}"
}

# start_dc RANGE N: the samba daemon in AD DC mode in the LAN namespace, its RPC services on
# dynamic ports in RANGE; log samba-N.log.
start_dc() {
    local range=$1 n=$2
    log "starting samba (AD DC) in $NS_LAN, dynamic ports $range"
    # `ip netns exec` execs the daemon, so $! is samba itself.
    ip netns exec "$NS_LAN" samba -F --debug-stdout -d 1 -s "$DC_DIR/etc/smb.conf" \
        --option="rpc server dynamic port range = $range" >"$WORK/samba-$n.log" 2>&1 &
    samba_pid=$!
    wait_for 30 dc_ready || die "the DC's endpoint mapper did not answer for ${DC_IFACES[*]} within 30 s"
}

# dc_ports: IFACE=PORT for each interface of the pin, as the DC's own EPM says (from the DMZ).
dc_ports() {
    client "$NS_DMZ" "$PY" "$lib_dir/epm_towers.py" "$LAN_IP" "${DC_IFACES[@]}" |
        awk '/^TOWER/ { sub("port=", "", $6); print $2 "=" $6 }'
}

# port_of IFACE PORTS...: the port of IFACE in a dc_ports list.
port_of() {
    local iface=$1 p
    shift
    for p in "$@"; do
        [[ ${p%%=*} == "$iface" ]] && echo "${p#*=}"
    done
}

# three_ports PORTS...: netlogon, drsuapi and samr on three different ports.
three_ports() {
    local n d s
    n=$(port_of netlogon "$@") d=$(port_of drsuapi "$@") s=$(port_of samr "$@")
    echo "the DC's endpoint mapper: $*"
    [[ -n $n && -n $d && -n $s ]] || { echo "missing a port"; return 1; }
    [[ $n != "$d" && $d != "$s" && $n != "$s" ]] || { echo "not three different ports"; return 1; }
}

# moved BEFORE AFTER: every interface's port changed, and at least one interface now has a
# port another one had before (as a cache of backend ports would least expect).
moved() {
    local -a before after
    read -ra before <<<"$1"
    read -ra after <<<"$2"
    echo "before: ${before[*]}"
    echo "after:  ${after[*]}"
    local iface old new taken=0
    for iface in "${DC_IFACES[@]}"; do
        old=$(port_of "$iface" "${before[@]}") new=$(port_of "$iface" "${after[@]}")
        [[ -n $old && -n $new && $old != "$new" ]] || { echo "$iface did not move ($old -> $new)"; return 1; }
        if [[ " ${before[*]} " == *"=$new "* ]]; then
            echo "$iface now on $new, another interface's old port"
            taken=1
        fi
    done
    ((taken)) || { echo "no interface landed on another's old port"; return 1; }
}

# --- rpcpin ---------------------------------------------------------------------
write_rpcpin_conf() {
    cat >"$1" <<TOML
# One pin for the domain controller's interfaces; backupkey by UUID and version.
[backend]
host = "$LAN_IP"

[epm]
listen = "$DMZ_OUT_IP:135"

[[pin]]
name = "dc"
listen = "$DMZ_OUT_IP:$PIN_DC"
interfaces = ["drsuapi", "netlogon", "lsarpc", "samr", "dssetup",
              "3dde7c30-165d-11d1-ab8f-00805f14db40@1.0"]

[log]
format = "text"

[process]
user = "$RPCPIN_USER"
TOML
}

# ad_ops HOST [--expect-port PORT] [--timeout S] OP...: ad_ops.py from the client, judged
# against the domain.
ad_ops() {
    local host=$1
    shift
    client "$NS_CLI" "$PY" "$script_dir/ad_ops.py" "$host" --timeout 10 "$@" \
        --password "$ADMIN_PASS" --domain "$DOMAIN" --realm "$REALM" --dc "$DC_NAME" \
        --sid "$DOMAIN_SID"
}

# pin_backend_ports MARK PORTS...: in rpcpin's log after line MARK, the last connection
# through pin dc for each of drsuapi, netlogon, samr and dssetup went to the port the DC's
# endpoint mapper gives it (PORTS, from dc_ports): three ports behind one pin.
pin_backend_ports() {
    local mark=$1 iface want got
    shift
    for iface in drsuapi netlogon samr dssetup; do
        want=$(port_of "$iface" "$@")
        got=$(tail -n +"$((mark + 1))" "$WORK/rpcpin.log" |
            awk -v a="alias=\"$iface\"" '/event="connection_closed"/ && /pin="dc"/ && index($0, a) {
                for (i = 1; i <= NF; i++) if ($i ~ /^backend_port=/) p = substr($i, 14) } END { print p }')
        echo "pin dc, $iface: rpcpin connected to the DC's port ${got:-(none)}, its endpoint mapper says $want"
        [[ -n $got && $got == "$want" ]] || return 1
    done
}

# unique_ports PORTS...: the ports of a dc_ports list, each once.
unique_ports() { printf '%s\n' "${@#*=}" | sort -un; }

# all_blocked HOST PORT...: blocked_from_client for every port, all at once (each attempt
# waits its second out).
all_blocked() {
    local host=$1 port rc=0 i=0 pids=()
    shift
    for port in "$@"; do
        blocked_from_client "$host" "$port" >"$WORK/blocked-$port.out" 2>&1 &
        pids+=($!)
    done
    for port in "$@"; do
        wait "${pids[i]}" || rc=1
        cat "$WORK/blocked-$port.out"
        i=$((i + 1))
    done
    return "$rc"
}

# fails CMD...: CMD fails (its output shown).
fails() {
    if "$@"; then
        echo "succeeded, expected a failure"
        return 1
    fi
    echo "failed, as expected"
}

# unreachable HOST OP...: every ad_ops.py OP from the client, asking HOST, ends in an error
# (exit 2: no connection), not in an answer, right or wrong. A second is enough to tell: an
# open port answers within milliseconds across the veths (see blocked_from_client).
unreachable() {
    local host=$1 op rc
    shift
    for op in "$@"; do
        rc=0
        ad_ops "$host" --timeout 1 "$op" || rc=$?
        ((rc == 2)) || { echo "$op: exit $rc, expected 2 (an error: no connection)"; return 1; }
    done
}

# The checks through rpcpin, run before and after the DC moves its ports.
through_rpcpin() {
    local when=$1
    check "$when: impacket drsuapi via rpcpin, sealed: DRSBind, DRSDomainControllerInfo names $DC_NAME.$REALM, DRSCrackNames $DOMAIN\\Administrator gives its DN" \
        ad_ops "$DMZ_OUT_IP" --expect-port "$PIN_DC" drsuapi
    check "$when: impacket netlogon via rpcpin, sealed: DsrGetDcNameEx2 names \\\\$DC_NAME.$REALM, domain and forest $REALM" \
        ad_ops "$DMZ_OUT_IP" --expect-port "$PIN_DC" netlogon
    check "$when: impacket samr via rpcpin, sealed: the domains $DOMAIN and Builtin, $DOMAIN's SID $DOMAIN_SID, Administrator rid 500" \
        ad_ops "$DMZ_OUT_IP" --expect-port "$PIN_DC" samr
    check "$when: rpcclient dsroledominfo via rpcpin, sealed, no Kerberos: a primary domain controller (role 5) with its directory running" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" dsroledominfo \
        'Machine Role = [5]' 'Directory Service is running'
    check "$when: rpcclient enumdomains via rpcpin: $DOMAIN and BUILTIN" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains \
        "name:[$DOMAIN]" 'name:[BUILTIN]'
    check "$when: rpcclient dsr_getdcname $REALM via rpcpin: \\\\${DC_NAME,,}.$REALM, the domain's GUID" \
        rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" "dsr_getdcname $REALM" \
        "'\\\\${DC_NAME,,}.$REALM'" "domain_guid              : $DOMAIN_GUID" "'$REALM'"
}


# ==============================================================================
main() {
    begin_run ad_dc.sh

    WORK="$(mktemp -d -t rpcpin-ad-dc.XXXXXX)"
    DC_DIR="$WORK/dc"
    : >"$WORK/rpcpin.log"

    "$script_dir/install-deps.sh" | sed -e 's/^/    /' || die "install-deps.sh failed"
    [[ -x "$RPCPIN_BIN" ]] || die "no rpcpin binary at $RPCPIN_BIN (cargo build --release)"
    id -u "$RPCPIN_USER" >/dev/null 2>&1 || die "no user $RPCPIN_USER for [process] user"

    remove_stale_namespaces '^rpcpin-ad-(cli|dmz|lan)-[0-9]+$'
    setup_dmz_topology
    # A client that knows the DC's address sends to it through the DMZ, which drops it.
    ip -n "$NS_CLI" route add "$LAN_NET" via "$DMZ_OUT_IP"
    setup_firewall
    write_client_conf
    write_rpcpin_conf "$WORK/rpcpin.toml"
    provision_dc
    start_dc "$RANGE1" 1

    # --- baseline: the DC, asked directly from the DMZ -------------------------------
    local -a ports1 ports2
    mapfile -t ports1 < <(dc_ports)
    check "the DC's endpoint mapper, asked from the DMZ, puts netlogon, drsuapi and samr on three different dynamic ports" \
        three_ports "${ports1[@]}"
    check "impacket drsuapi, netlogon and samr directly against the DC from the DMZ, sealed: the domain's data (the baseline)" \
        in_ns "$NS_DMZ" timeout "$CLIENT_TIMEOUT" "$PY" "$script_dir/ad_ops.py" "$LAN_IP" drsuapi netlogon samr \
        --password "$ADMIN_PASS" --domain "$DOMAIN" --realm "$REALM" --dc "$DC_NAME" --sid "$DOMAIN_SID"
    local -a direct1 direct2
    mapfile -t direct1 < <(unique_ports "${ports1[@]}")
    check "client cannot connect to the DC's $LAN_IP:135 nor its dynamic ports ${direct1[*]} directly (the DMZ forwards nothing)" \
        all_blocked "$LAN_IP" 135 "${direct1[@]}"
    check "rpcpin check accepts the configuration (one pin for six interfaces, backupkey by UUID)" \
        client "$NS_DMZ" "$RPCPIN_BIN" check --config "$WORK/rpcpin.toml"

    start_dmz_rpcpin "$WORK/rpcpin.toml"
    local rpcpin_main=$rpcpin_pid mark

    # --- through rpcpin -------------------------------------------------------------
    local iface expect=()
    for iface in "${DC_IFACES[@]}"; do
        expect+=(--expect-port "$iface=$PIN_DC")
    done
    check "ept_map via rpcpin: ${DC_IFACES[*]}, every tower at $DMZ_OUT_IP:$PIN_DC" \
        client "$NS_CLI" "$PY" "$script_dir/epm_towers.py" "$DMZ_OUT_IP" "${DC_IFACES[@]}" \
        --expect-ip "$DMZ_OUT_IP" "${expect[@]}"
    mark=$(log_mark)
    through_rpcpin "DC on $RANGE1"
    check "rpcpin's log: pin dc took drsuapi, netlogon, samr and dssetup each to its own port on the DC" \
        pin_backend_ports "$mark" "${ports1[@]}"

    # --- the DC moves its ports; rpcpin untouched follows -------------------------------
    stop_samba
    start_dc "$RANGE2" 2
    mapfile -t ports2 < <(dc_ports)
    check "the DC restarted on $RANGE2: every interface moved, some onto another's old port" \
        moved "${ports1[*]}" "${ports2[*]}"
    mark=$(log_mark)
    through_rpcpin "DC moved to $RANGE2"
    check "rpcpin's log: pin dc took each interface to its new port on the DC" \
        pin_backend_ports "$mark" "${ports2[@]}"
    check "the same rpcpin process (pid $rpcpin_main) served all of it" \
        same_rpcpin "$rpcpin_main"

    # --- without rpcpin the client reaches nothing ---------------------------------------
    stop_pid "$rpcpin_pid"
    rpcpin_pid=""
    check "with rpcpin stopped, impacket drsuapi, netlogon and samr from the client fail" \
        unreachable "$DMZ_OUT_IP" drsuapi netlogon samr
    check "with rpcpin stopped, rpcclient enumdomains from the client fails" \
        fails rpcclient_ok "$NS_CLI" "ncacn_ip_tcp:${DMZ_OUT_IP}[seal]" enumdomains "name:[$DOMAIN]"
    check "with rpcpin stopped, impacket drsuapi, netlogon and samr straight at the DC ($LAN_IP) from the client fail" \
        unreachable "$LAN_IP" drsuapi netlogon samr
    mapfile -t direct2 < <(unique_ports "${ports2[@]}")
    check "with rpcpin stopped, client cannot connect to the DC's $LAN_IP:135 nor its dynamic ports ${direct2[*]}" \
        all_blocked "$LAN_IP" 135 "${direct2[@]}"

    exit 0
}

main "$@"
