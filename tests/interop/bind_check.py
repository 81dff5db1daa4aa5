#!/usr/bin/env python3
"""Bind to interfaces on a TCP port and check whether the bind is accepted.

Three ways of asking, all unauthenticated (a bind needs no credentials, and
a pin decides on the bind alone):

  impacket (default): one presentation context, through impacket's DCERPC
      runtime. A refusal surfaces as DCERPCException naming the bind_ack's
      result; "reject" requires provider_rejection with reason
      abstract_syntax_not_supported.

  --alter IFACE2: bind IFACE (must be accepted), then alter_context to IFACE2
      on the same connection; --expect applies to the alter_context, judged
      as above.

  --raw: one bind PDU built here, with one context per interface named
      (comma separated), sent over a plain socket; the bind_ack's result list
      is decoded here. "reject" requires that no context is accepted and that
      every context for an interface listed in --refused is
      provider_rejection / abstract_syntax_not_supported. (Samba accepts the
      first context it serves and rejects the rest, so "no context accepted"
      is what tells a proxy's refusal from a forwarded bind.)

Exit 0 when the outcome matches --expect, 1 when it does not, 2 on errors.
"""

import argparse
import socket
import struct
import sys

from impacket.dcerpc.v5 import transport
from impacket.dcerpc.v5.rpcrt import DCERPCException
from impacket.uuid import string_to_bin, uuidtup_to_bin

from epm_towers import INTERFACES, NDR

BIND, BIND_ACK, BIND_NAK = 11, 12, 13
RESULTS = {0: "acceptance", 1: "user_rejection", 2: "provider_rejection"}
REASONS = {0: "reason_not_specified", 1: "abstract_syntax_not_supported",
           2: "proposed_transfer_syntaxes_not_supported", 3: "local_limit_exceeded"}


def syntax(name):
    uuid, major, minor = INTERFACES[name]
    return uuidtup_to_bin((uuid, "%d.%d" % (major, minor)))


def is_pin_refusal(text):
    return "provider_rejection" in text and "abstract_syntax_not_supported" in text


def impacket_bind(host, port, name, alter, timeout):
    """Returns (accepted, text) for the bind, or for the alter_context if given."""
    rpc = transport.DCERPCTransportFactory("ncacn_ip_tcp:%s[%d]" % (host, port))
    rpc.set_connect_timeout(timeout)
    dce = rpc.get_dce_rpc()
    dce.connect()
    try:
        try:
            dce.bind(syntax(name))
        except DCERPCException as e:
            if alter:
                raise RuntimeError("first bind to %s refused: %s" % (name, e)) from e
            return False, str(e)
        if not alter:
            return True, "bind accepted"
        try:
            dce.alter_ctx(syntax(alter))
        except DCERPCException as e:
            return False, "bind %s accepted; alter_context %s: %s" % (name, alter, e)
        return True, "bind %s accepted; alter_context %s accepted" % (name, alter)
    finally:
        dce.disconnect()


def raw_bind_pdu(names):
    """A little-endian bind PDU with one NDR presentation context per interface."""
    ctxs = b""
    for ctx_id, name in enumerate(names):
        uuid, major, minor = INTERFACES[name]
        ctxs += struct.pack("<HBB", ctx_id, 1, 0)
        ctxs += string_to_bin(uuid) + struct.pack("<HH", major, minor)
        ctxs += string_to_bin(NDR[0]) + struct.pack("<HH", NDR[1], NDR[2])
    body = struct.pack("<HHI", 4280, 4280, 0) + struct.pack("<BBH", len(names), 0, 0) + ctxs
    header = struct.pack("<BBBB4sHHI", 5, 0, BIND, 0x03, b"\x10\x00\x00\x00",
                         16 + len(body), 0, 1)
    return header + body


def recv_pdu(sock):
    """One whole PDU (header's frag_length), or b'' when the peer closed first."""
    buf = b""
    while len(buf) < 16 or len(buf) < struct.unpack_from("<H", buf, 8)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return buf


def raw_bind(host, port, names, timeout):
    """Returns (ptype, [(result, reason)], secondary address); ptype None if
    the peer closed without replying."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(raw_bind_pdu(names))
        pdu = recv_pdu(s)
    if not pdu:
        return None, [], None
    ptype = pdu[2]
    if pdu[4] & 0x10 == 0:
        raise ValueError("big-endian reply not handled")
    if ptype != BIND_ACK:
        return ptype, [], None
    off = 16 + 8                                   # max_xmit, max_recv, assoc_group
    (sec_len,) = struct.unpack_from("<H", pdu, off)
    # port_any_t: the server's port as a NUL-terminated string (Samba sends none).
    sec_addr = pdu[off + 2: off + 2 + sec_len].rstrip(b"\0").decode("ascii", "replace")
    off += 2 + sec_len
    off += (-off) % 4                              # p_result_list is 4-aligned
    n_results = pdu[off]
    off += 4
    results = []
    for _ in range(n_results):
        results.append(struct.unpack_from("<HH", pdu, off))
        off += 4 + 20                              # result, reason, transfer syntax
    return ptype, results, sec_addr


def judge_raw(args, names):
    ptype, results, sec_addr = raw_bind(args.host, args.port, names, args.timeout)
    where = "raw bind %s at %s:%d" % (args.ifaces, args.host, args.port)
    if ptype is None:
        print("%s: connection closed without a reply" % where)
        return 1
    if ptype != BIND_ACK:
        print("%s: reply PDU type %d (not bind_ack)" % (where, ptype))
        return 1
    print("%s: bind_ack secondary address %r" % (where, sec_addr))
    for name, (result, reason) in zip(names, results):
        print("%s: context %s: %s / %s" % (where, name, RESULTS.get(result, result),
                                           REASONS.get(reason, reason)))
    ok = len(results) == len(names)
    accepted = [n for n, (res, _) in zip(names, results) if res == 0]
    if args.expect == "accept":
        return 0 if ok and len(accepted) == len(names) else 1
    refused = set(r for r in args.refused.split(",") if r)
    for name, (result, reason) in zip(names, results):
        if name in refused and (result, reason) != (2, 1):
            ok = False
    return 0 if ok and not accepted else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("ifaces", help="interface name, or comma-separated names with --raw")
    ap.add_argument("--expect", choices=["accept", "reject"], required=True)
    ap.add_argument("--alter", metavar="IFACE2", help="after the bind, alter_context to IFACE2")
    ap.add_argument("--raw", action="store_true", help="one hand-built bind, several contexts")
    ap.add_argument("--refused", default="", help="with --raw: interfaces whose context "
                    "must be provider_rejection/abstract_syntax_not_supported")
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    names = args.ifaces.split(",")
    for n in names + [r for r in args.refused.split(",") if r] + [args.alter or names[0]]:
        if n not in INTERFACES:
            ap.error("unknown interface %s" % n)

    try:
        if args.raw:
            return judge_raw(args, names)
        accepted, text = impacket_bind(args.host, args.port, names[0], args.alter, args.timeout)
    except Exception as e:  # noqa: BLE001 - cannot connect, malformed reply, ...
        print("ERROR: %s at %s:%d: %s" % (args.ifaces, args.host, args.port, e))
        return 2
    print("%s at %s:%d: %s" % (names[0], args.host, args.port, text))
    if args.expect == "accept":
        return 0 if accepted else 1
    return 0 if not accepted and is_pin_refusal(text) else 1


if __name__ == "__main__":
    sys.exit(main())
