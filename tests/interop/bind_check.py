#!/usr/bin/env python3
"""Bind to interfaces on a TCP port and check whether the bind is accepted.

Three ways of asking, all unauthenticated (a bind needs no credentials, and
a pin decides on the bind alone):

  impacket (default): one presentation context, through impacket's DCERPC
      runtime. A refusal surfaces as DCERPCException naming the bind_ack's
      result; "reject" requires provider_rejection with reason
      abstract_syntax_not_supported; "nak" requires impacket's words for a
      bind_nak ("Bind context rejected: <reject reason>", no context number).

  --alter IFACE2: bind IFACE (must be accepted), then alter_context to IFACE2
      on the same connection; --expect applies to the alter_context, judged
      as above.

  --raw: one bind PDU built here, with one context per interface named
      (comma separated), sent over a plain socket; the answer is decoded here.
      "accept" requires every context accepted. "reject" requires that no
      context is accepted and that every context for an interface listed in
      --refused is provider_rejection / abstract_syntax_not_supported. (Samba
      accepts every context it serves, so "none accepted" is what tells a
      refusal as a whole from a forwarded bind.) "split" requires a bind_ack in
      which exactly the interfaces listed in --accepted are accepted and those
      listed in --refused are provider_rejection / abstract_syntax_not_supported
      (each context named in exactly one of the two lists; with --any-reason, any
      rejection will do, for judging a server's own answer). "nak" requires a
      bind_nak (PDU type 13). With --call, a call is then made on the first
      accepted context listed in --accepted (srvsvc: NetrServerGetInfo level
      101, samr: SamrConnect) on the same association; its answer must be a
      response PDU (type 2) that impacket's NDR decoder reads.

Exit 0 when the outcome matches --expect, 1 when it does not, 2 on errors.
"""

import argparse
import socket
import struct
import sys
import time

from impacket.dcerpc.v5 import samr, srvs, transport
from impacket.dcerpc.v5.dtypes import NULL
from impacket.dcerpc.v5.rpcrt import DCERPCException
from impacket.uuid import string_to_bin, uuidtup_to_bin

from epm_towers import INTERFACES, NDR

REQUEST, RESPONSE, FAULT = 0, 2, 3
BIND, BIND_ACK, BIND_NAK = 11, 12, 13
RESULTS = {0: "acceptance", 1: "user_rejection", 2: "provider_rejection"}
REASONS = {0: "reason_not_specified", 1: "abstract_syntax_not_supported",
           2: "proposed_transfer_syntaxes_not_supported", 3: "local_limit_exceeded"}
NAK_REASONS = {0: "reason_not_specified", 1: "temporary_congestion", 2: "local_limit_exceeded",
               3: "called_paddr_unknown", 4: "protocol_version_not_supported",
               5: "default_context_not_supported", 6: "user_data_not_readable",
               7: "no_psap_available"}


def syntax(name):
    uuid, major, minor = INTERFACES[name]
    return uuidtup_to_bin((uuid, "%d.%d" % (major, minor)))


def is_pin_refusal(text):
    return "provider_rejection" in text and "abstract_syntax_not_supported" in text


def is_nak(text):
    """impacket's words for a bind_nak: no context number, only the reject reason."""
    return text.startswith("Bind context rejected: ")


def impacket_bind(host, port, name, alter, timeout, hold=0):
    """Returns (accepted, text) for the bind, or for the alter_context if given. With
    HOLD, an accepted association is kept open (silent) that many seconds first."""
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
        if hold:
            print("%s at %s:%d: bind accepted, holding the association %g s" % (
                name, host, port, hold), flush=True)
            time.sleep(hold)
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


def call_for(name):
    """(what, opnum, stub, response class) of a harmless call on interface NAME."""
    if name == "srvsvc":
        req = srvs.NetrServerGetInfo()
        req["ServerName"] = NULL
        req["Level"] = 101
        return "NetrServerGetInfo(101)", req.opnum, req.getData(), srvs.NetrServerGetInfoResponse
    if name == "samr":
        req = samr.SamrConnect()
        req["ServerName"] = NULL
        req["DesiredAccess"] = samr.SAM_SERVER_CONNECT
        return "SamrConnect", req.opnum, req.getData(), samr.SamrConnectResponse
    raise ValueError("no call defined for %s" % name)


def raw_call(sock, ctx_id, call_id, name):
    """One call of interface NAME on context CTX_ID; returns (ok, text)."""
    what, opnum, stub, resp_cls = call_for(name)
    body = struct.pack("<IHH", len(stub), ctx_id, opnum) + stub
    sock.sendall(struct.pack("<BBBB4sHHI", 5, 0, REQUEST, 0x03, b"\x10\x00\x00\x00",
                             16 + len(body), 0, call_id) + body)
    pdu = recv_pdu(sock)
    where = "%s on context %d" % (what, ctx_id)
    if not pdu:
        return False, "%s: connection closed" % where
    if pdu[2] == FAULT:
        return False, "%s: fault PDU (type 3), status 0x%08x" % (
            where, struct.unpack_from("<I", pdu, 24)[0])
    if pdu[2] != RESPONSE:
        return False, "%s: PDU type %d" % (where, pdu[2])
    if pdu[3] & 0x02 == 0:
        return False, "%s: answer in several fragments (not handled here)" % where
    resp = resp_cls(pdu[24:])
    detail = "ErrorCode 0x%08x" % resp["ErrorCode"]
    if name == "srvsvc" and resp["ErrorCode"] == 0:
        info = resp["InfoStruct"]["ServerInfo101"]
        detail += ", sv101_name %s, version %d.%d" % (
            info["sv101_name"][:-1], info["sv101_version_major"], info["sv101_version_minor"])
    elif name == "samr":
        handle = resp["ServerHandle"]
        handle = handle if isinstance(handle, bytes) else handle.getData()
        detail += ", server handle %s" % handle.hex()
    return True, "%s: response PDU (type 2), %s" % (where, detail)


def raw_bind(host, port, names, timeout, call=None):
    """Returns (ptype, results, secondary address, call outcome).

    ptype is None if the peer closed without replying; results is the bind_ack's
    [(result, reason)], or the bind_nak's reject reason. With CALL (an interface of
    NAMES), that interface's call is made on its context when the bind_ack accepted it,
    and the outcome is (ok, text); otherwise None."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(raw_bind_pdu(names))
        pdu = recv_pdu(s)
        if not pdu:
            return None, [], None, None
        ptype = pdu[2]
        if pdu[4] & 0x10 == 0:
            raise ValueError("big-endian reply not handled")
        if ptype == BIND_NAK:
            return ptype, struct.unpack_from("<H", pdu, 16)[0], None, None
        if ptype != BIND_ACK:
            return ptype, [], None, None
        off = 16 + 8                                   # max_xmit, max_recv, assoc_group
        (sec_len,) = struct.unpack_from("<H", pdu, off)
        # port_any_t: the server's port as a NUL-terminated string.
        sec_addr = pdu[off + 2: off + 2 + sec_len].rstrip(b"\0").decode("ascii", "replace")
        off += 2 + sec_len
        off += (-off) % 4                              # p_result_list is 4-aligned
        n_results = pdu[off]
        off += 4
        results = []
        for _ in range(n_results):
            results.append(struct.unpack_from("<HH", pdu, off))
            off += 4 + 20                              # result, reason, transfer syntax
        outcome = None
        if call is not None:
            ctx = names.index(call)
            if ctx < len(results) and results[ctx][0] == 0:
                outcome = raw_call(s, ctx, 2, call)
            else:
                outcome = (False, "%s not accepted: no call made" % call)
    return ptype, results, sec_addr, outcome


def judge_raw(args, names):
    wanted = [a for a in args.accepted.split(",") if a]
    refused = set(r for r in args.refused.split(",") if r)
    call = None
    if args.call:
        call = next((n for n in names if n in wanted), None)
        if call is None:
            print("--call needs an interface of the bind listed in --accepted")
            return 2
    if args.expect == "split" and (set(wanted) | refused != set(names) or set(wanted) & refused):
        print("--expect split: every interface must be in exactly one of --accepted, --refused")
        return 2
    ptype, results, sec_addr, outcome = raw_bind(args.host, args.port, names, args.timeout, call)
    where = "raw bind %s at %s:%d" % (args.ifaces, args.host, args.port)
    if ptype is None:
        print("%s: connection closed without a reply" % where)
        return 1
    if ptype == BIND_NAK:
        print("%s: bind_nak (PDU type 13), reject reason %s" % (
            where, NAK_REASONS.get(results, results)))
        return 0 if args.expect == "nak" else 1
    if ptype != BIND_ACK:
        print("%s: reply PDU type %d (not bind_ack)" % (where, ptype))
        return 1
    print("%s: bind_ack (PDU type 12), secondary address %r" % (where, sec_addr))
    for name, (result, reason) in zip(names, results):
        print("%s: context %s: %s / %s" % (where, name, RESULTS.get(result, result),
                                           REASONS.get(reason, reason)))
    ok = len(results) == len(names)
    if outcome is not None:
        print("%s: %s" % (where, outcome[1]))
        ok = ok and outcome[0]
    accepted = [n for n, (res, _) in zip(names, results) if res == 0]
    if args.expect == "accept":
        return 0 if ok and len(accepted) == len(names) else 1
    if args.expect == "nak":
        return 1
    for name, (result, reason) in zip(names, results):
        if name in refused and (result, reason) != (2, 1):
            ok = ok and args.any_reason and result != 0
    if args.expect == "reject":
        return 0 if ok and not accepted else 1
    return 0 if ok and sorted(accepted) == sorted(wanted) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("ifaces", help="interface name, or comma-separated names with --raw")
    ap.add_argument("--expect", choices=["accept", "reject", "split", "nak"], required=True)
    ap.add_argument("--alter", metavar="IFACE2", help="after the bind, alter_context to IFACE2")
    ap.add_argument("--raw", action="store_true", help="one hand-built bind, several contexts")
    ap.add_argument("--refused", default="", help="with --raw: interfaces whose context "
                    "must be provider_rejection/abstract_syntax_not_supported")
    ap.add_argument("--accepted", default="", help="with --raw --expect split: interfaces "
                    "whose context must be accepted")
    ap.add_argument("--any-reason", action="store_true", help="with --expect split: a "
                    "context in --refused may be rejected with any result and reason")
    ap.add_argument("--call", action="store_true", help="with --raw: then make a call on "
                    "the first accepted context listed in --accepted")
    ap.add_argument("--hold", type=float, default=0, metavar="SECONDS", help="without "
                    "--raw: keep an accepted association open this long before closing it")
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    names = args.ifaces.split(",")
    listed = [n for n in (args.refused + "," + args.accepted).split(",") if n]
    for n in names + listed + [args.alter or names[0]]:
        if n not in INTERFACES:
            ap.error("unknown interface %s" % n)
    if (args.expect == "split" or args.call) and not args.raw:
        ap.error("--expect split and --call need --raw")

    try:
        if args.raw:
            return judge_raw(args, names)
        accepted, text = impacket_bind(args.host, args.port, names[0], args.alter, args.timeout,
                                       args.hold)
    except Exception as e:  # noqa: BLE001 - cannot connect, malformed reply, ...
        print("ERROR: %s at %s:%d: %s" % (args.ifaces, args.host, args.port, e))
        return 2
    print("%s at %s:%d: %s" % (names[0], args.host, args.port, text))
    if args.expect == "accept":
        return 0 if accepted else 1
    if args.expect == "nak":
        return 0 if not accepted and is_nak(text) else 1
    return 0 if not accepted and is_pin_refusal(text) else 1


if __name__ == "__main__":
    sys.exit(main())
