#!/usr/bin/env python3
"""Ask an endpoint mapper where interfaces live and print what the towers say.

impacket's hept_map() builds its answer from the host *you asked* plus the
tower's port, so it cannot show whether a proxy rewrote the tower's IPv4
floor. This script sends the same ept_map request over an impacket DCERPC
transport but walks the returned towers' floors by hand (C706 appendix L:
floor count and lhs/rhs lengths little endian, TCP port 0x07 and IPv4 0x09
big endian), so both the address and the port come from the bytes on the wire.

Output, one line per ncacn_ip_tcp tower:

    TOWER <iface> <uuid> v<major>.<minor> ip=<a.b.c.d> port=<n>

With --expect-ip/--expect-port/--not-port every tower must satisfy them;
the script exits 0 when they hold, 1 when a tower breaks them, 2 on any
error (no connection, no tower, a tower it cannot parse).

--auth USER%PASSWORD binds the endpoint mapper with NTLM at authentication
level connect (impacket's set_auth_level(2)): the towers are still read by
hand. --no-sign-flags clears NTLMSSP_NEGOTIATE_SIGN and _SEAL from impacket's
NTLM negotiate message (impacket always sets them; Samba's own client does
not at level connect). --ndr64 binds with the NDR64 transfer syntax only, so impacket encodes
the request and decodes the answer in NDR64. --repeat N asks everything N times, each on a new connection (a
summary line counts associations and towers). --hept-map asks with impacket's
own epm.hept_map() instead (one connection per interface; it prints the
string binding it returns, whose host is the one asked, so only --expect-port
applies to it).
"""

import argparse
import socket
import struct
import sys
import time

from impacket import ntlm
from impacket.dcerpc.v5 import epm, transport
from impacket.dcerpc.v5.rpcrt import RPC_C_AUTHN_LEVEL_CONNECT, DCERPCException
from impacket.uuid import bin_to_string, string_to_bin, uuidtup_to_bin

# Interfaces the suite asks about: the lsad and classic groups that are
# pinned; winreg (its own Samba process) and netdfs (served by the same Samba
# process as srvsvc), which no pin carries; the endpoint mapper itself and the
# two DCOM activation interfaces that port 135 must refuse; and the domain controller's
# (ad_dc.sh): drsuapi, netlogon and backupkey.
INTERFACES = {
    "samr": ("12345778-1234-abcd-ef00-0123456789ac", 1, 0),
    "lsarpc": ("12345778-1234-abcd-ef00-0123456789ab", 0, 0),
    "srvsvc": ("4b324fc8-1670-01d3-1278-5a47bf6ee188", 3, 0),
    "wkssvc": ("6bffd098-a112-3610-9833-46c3f87e345a", 1, 0),
    "winreg": ("338cd001-2244-31f1-aaaa-900038001003", 1, 0),
    "netdfs": ("4fc742e0-4a10-11cf-8273-00aa004ae673", 3, 0),
    "dssetup": ("3919286a-b10c-11d0-9ba8-00c04fd92ef5", 0, 0),
    "epm": ("e1af8308-5d1f-11c9-91a4-08002b14a0fa", 3, 0),
    "iremoteactivation": ("4d9f4ab8-7d1c-11cf-861e-0020af6e7c57", 0, 0),
    "isystemactivator": ("000001a0-0000-0000-c000-000000000046", 0, 0),
    "drsuapi": ("e3514235-4b06-11d1-ab04-00c04fc2dcd2", 4, 0),
    "netlogon": ("12345678-1234-abcd-ef00-01234567cffb", 1, 0),
    "backupkey": ("3dde7c30-165d-11d1-ab8f-00805f14db40", 1, 0),
}

NDR = ("8a885d04-1ceb-11c9-9fe8-08002b104860", 2, 0)
NDR64 = ("71710533-beba-4937-8319-b5dbef9ccc36", "1.0")

# Floor protocol identifiers (C706 appendix L, MS-RPCE 2.2.1.1.7).
FLOOR_UUID = 0x0D
FLOOR_RPC_CO = 0x0B
FLOOR_TCP = 0x07
FLOOR_IP = 0x09


def map_tower(uuid, major, minor):
    """The lookup tower an ept_map request carries: iface, NDR, ncacn, tcp:0, ip:0.0.0.0."""
    def floor(lhs, rhs):
        return struct.pack("<H", len(lhs)) + lhs + struct.pack("<H", len(rhs)) + rhs

    floors = [
        floor(bytes([FLOOR_UUID]) + string_to_bin(uuid) + struct.pack("<H", major),
              struct.pack("<H", minor)),
        floor(bytes([FLOOR_UUID]) + string_to_bin(NDR[0]) + struct.pack("<H", NDR[1]),
              struct.pack("<H", NDR[2])),
        floor(bytes([FLOOR_RPC_CO]), struct.pack("<H", 0)),
        floor(bytes([FLOOR_TCP]), struct.pack(">H", 0)),
        floor(bytes([FLOOR_IP]), socket.inet_aton("0.0.0.0")),
    ]
    return struct.pack("<H", len(floors)) + b"".join(floors)


def parse_tower(data):
    """Walk a tower's floors by hand; returns a list of (lhs bytes, rhs bytes)."""
    (count,) = struct.unpack_from("<H", data, 0)
    off = 2
    floors = []
    for _ in range(count):
        (lhs_len,) = struct.unpack_from("<H", data, off)
        lhs = data[off + 2: off + 2 + lhs_len]
        off += 2 + lhs_len
        (rhs_len,) = struct.unpack_from("<H", data, off)
        rhs = data[off + 2: off + 2 + rhs_len]
        off += 2 + rhs_len
        if len(lhs) != lhs_len or len(rhs) != rhs_len:
            raise ValueError("tower truncated")
        floors.append((lhs, rhs))
    return floors


def describe(floors):
    """(uuid, major, minor, ip, port) of an ncacn_ip_tcp tower, or None for other towers."""
    if len(floors) < 5 or floors[0][0][:1] != bytes([FLOOR_UUID]):
        return None
    lhs, rhs = floors[0]
    uuid = bin_to_string(lhs[1:17]).lower()
    (major,) = struct.unpack("<H", lhs[17:19])
    (minor,) = struct.unpack("<H", rhs[:2])
    ip = port = None
    for lhs, rhs in floors[2:]:
        if lhs == bytes([FLOOR_TCP]):
            (port,) = struct.unpack(">H", rhs)
        elif lhs == bytes([FLOOR_IP]):
            ip = socket.inet_ntoa(rhs)
    if port is None or ip is None:
        return None
    return uuid, major, minor, ip, port


def ept_map(dce, uuid, major, minor):
    """One ept_map call; returns the towers' raw bytes."""
    req = epm.ept_map()
    tower = map_tower(uuid, major, minor)
    req["max_towers"] = 4
    req["map_tower"]["tower_length"] = len(tower)
    req["map_tower"]["tower_octet_string"] = tower
    # Windows insists on these referent ids; Samba does not care either way.
    req.fields["obj"].fields["ReferentID"] = 1
    req.fields["map_tower"].fields["ReferentID"] = 2
    resp = dce.request(req)
    if resp["status"] != 0:
        raise DCERPCException("ept_map status 0x%08x" % resp["status"])
    return [b"".join(t["Data"]["tower_octet_string"]) for t in resp["ITowers"]]


def check_tower(name, uuid, d, args, expect_port, not_port, quiet=False):
    """Prints one described tower (with quiet, only when it breaks an expectation); returns
    whether it satisfies the expectations."""
    problems = []
    t_uuid, t_major, t_minor, ip, port = d
    if t_uuid != uuid:
        problems.append("tower names %s, asked for %s" % (t_uuid, uuid))
    if args.expect_ip and ip != args.expect_ip:
        problems.append("ip %s, expected %s" % (ip, args.expect_ip))
    if name in expect_port and port != expect_port[name]:
        problems.append("port %d, expected %d" % (port, expect_port[name]))
    if name in not_port and port == not_port[name]:
        problems.append("port %d must differ from %d" % (port, not_port[name]))
    if problems or not quiet:
        print("TOWER %s %s v%d.%d ip=%s port=%d" % (name, t_uuid, t_major, t_minor, ip, port))
    for p in problems:
        print("  MISMATCH: " + p)
    return not problems


def negotiate_without_sign(wrapped):
    """impacket's getNTLMSSPType1, its message's SIGN and SEAL flags cleared."""
    def type1(*a, **kw):
        msg = wrapped(*a, **kw)
        msg["flags"] &= ~(ntlm.NTLMSSP_NEGOTIATE_SIGN | ntlm.NTLMSSP_NEGOTIATE_SEAL)
        return msg
    return type1


def connect(args):
    """A bound endpoint-mapper association (NTLM at level connect with --auth)."""
    if args.no_sign_flags:
        ntlm.getNTLMSSPType1 = negotiate_without_sign(ntlm.getNTLMSSPType1)
    rpc = transport.DCERPCTransportFactory("ncacn_ip_tcp:%s[%d]" % (args.host, args.port))
    rpc.set_connect_timeout(args.timeout)
    if args.auth:
        user, _, password = args.auth.partition("%")
        rpc.set_credentials(user, password)
    dce = rpc.get_dce_rpc()
    if args.auth:
        dce.set_auth_level(RPC_C_AUTHN_LEVEL_CONNECT)
    dce.connect()
    if args.ndr64:
        dce.bind(epm.MSRPC_UUID_PORTMAP, transfer_syntax=NDR64)
        if dce.transfer_syntax != uuidtup_to_bin(NDR64):
            raise DCERPCException("the endpoint mapper did not accept NDR64")
    else:
        dce.bind(epm.MSRPC_UUID_PORTMAP)
    return dce


def map_all(args, expect_port, not_port, quiet):
    """One association, ept_map for every interface asked. Returns (exit code, towers)."""
    try:
        dce = connect(args)
    except Exception as e:  # noqa: BLE001 - any failure to reach the EPM is an error
        print("ERROR: cannot bind EPM at %s:%d: %s" % (args.host, args.port, e))
        return 2, 0
    ok, count = True, 0
    for name in args.ifaces:
        uuid, major, minor = INTERFACES[name]
        try:
            towers = ept_map(dce, uuid, major, minor)
        except Exception as e:  # noqa: BLE001
            print("ERROR: ept_map %s: %s" % (name, e))
            return 2, count
        seen = 0
        for raw in towers:
            try:
                d = describe(parse_tower(raw))
            except (ValueError, struct.error) as e:
                print("ERROR: %s: unparsable tower %s: %s" % (name, raw.hex(), e))
                return 2, count
            if d is None:
                continue
            seen += 1
            ok = check_tower(name, uuid, d, args, expect_port, not_port, quiet) and ok
        count += seen
        if seen == 0:
            print("ERROR: no ncacn_ip_tcp tower for %s" % name)
            return 2, count
    dce.disconnect()
    return (0 if ok else 1), count


def hept_map_all(args, expect_port):
    """impacket's epm.hept_map() for every interface asked; returns an exit code."""
    ok = True
    for name in args.ifaces:
        uuid, major, minor = INTERFACES[name]
        try:
            binding = epm.hept_map(args.host, uuidtup_to_bin((uuid, "%d.%d" % (major, minor))),
                                   protocol="ncacn_ip_tcp")
        except Exception as e:  # noqa: BLE001
            print("ERROR: hept_map %s: %s" % (name, e))
            return 2
        print("HEPT_MAP %s %s" % (name, binding))
        host, _, rest = binding.partition(":")[2].partition("[")
        if host != args.host or not rest.endswith("]") or not rest[:-1].isdigit():
            print("  MISMATCH: expected ncacn_ip_tcp:%s[PORT]" % args.host)
            ok = False
        elif name in expect_port and int(rest[:-1]) != expect_port[name]:
            print("  MISMATCH: port %s, expected %d" % (rest[:-1], expect_port[name]))
            ok = False
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host", help="EPM address to ask")
    ap.add_argument("ifaces", nargs="+", choices=sorted(INTERFACES))
    ap.add_argument("--port", type=int, default=135)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--expect-ip", help="every tower must carry this IPv4 address")
    ap.add_argument("--expect-port", action="append", default=[], metavar="IFACE=PORT",
                    help="every tower for IFACE must carry PORT")
    ap.add_argument("--not-port", action="append", default=[], metavar="IFACE=PORT",
                    help="no tower for IFACE may carry PORT")
    ap.add_argument("--auth", metavar="USER%PASSWORD",
                    help="bind with NTLM at authentication level connect")
    ap.add_argument("--no-sign-flags", action="store_true",
                    help="with --auth: no SIGN/SEAL flags in the NTLM negotiate message")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="ask N times, each on a new association")
    ap.add_argument("--pause", type=float, default=0, metavar="SECONDS",
                    help="with --repeat: wait this long between associations")
    ap.add_argument("--ndr64", action="store_true",
                    help="bind with the NDR64 transfer syntax only (impacket encodes in NDR64)")
    ap.add_argument("--hept-map", action="store_true",
                    help="ask with impacket's epm.hept_map() (port checks only)")
    args = ap.parse_args()

    def pairs(items):
        return {k: int(v) for k, v in (i.split("=", 1) for i in items)}

    expect_port, not_port = pairs(args.expect_port), pairs(args.not_port)
    if args.hept_map:
        return hept_map_all(args, expect_port)
    worst, towers = 0, 0
    started = time.monotonic()
    for i in range(args.repeat):
        if i and args.pause:
            time.sleep(args.pause)
        rc, n = map_all(args, expect_port, not_port, quiet=i > 0)
        towers += n
        worst = max(worst, rc)
        if rc == 2:
            break
    if args.repeat > 1:
        print("%d association(s) in %.1f s, %d ept_map call(s), %d ncacn_ip_tcp tower(s)%s" % (
            i + 1, time.monotonic() - started, (i + 1) * len(args.ifaces), towers,
            ", every one as expected" if worst == 0 else ""))
    return worst


if __name__ == "__main__":
    sys.exit(main())
