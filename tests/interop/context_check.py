#!/usr/bin/env python3
"""A call on a presentation context the server never accepted (issue 11).

Over a plain socket, unauthenticated: a bind proposing IFACE as context 0 (must be
accepted), an alter_context proposing IFACE2 as context 1 (must not be accepted), then
IFACE's harmless call (bind_check.call_for) made on context 1 anyway. Its answer must be
what Samba itself answers a call on a context it does not know (librpc/rpc/dcesrv_core.c,
dcesrv_request): a fault PDU with nca_s_unk_if (0x1c010003), flags first + last +
did_not_execute (0x23) and context id 0. Run against Samba directly, this checks that
claim; run through an rpcpin pin that does not carry IFACE2, it checks that rpcpin answers
the same (and, with tshark on the backend leg, that the call never reached Samba).

With --fragments, the call on context 1 is then sent again in two fragments: one fault
only, the second fragment dropped. Last, IFACE's call on context 0 must be answered: the
association is still usable.

Exit 0 when every answer is as required, 1 when one is not, 2 on errors.
"""

import argparse
import socket
import struct
import sys

from bind_check import (BIND_ACK, FAULT, REQUEST, RESULTS, call_for, raw_bind_pdu, raw_call,
                        recv_pdu)

ALTER_CONTEXT, ALTER_CONTEXT_RESP = 14, 15
NCA_S_UNK_IF = 0x1C010003


def results_of(pdu):
    """The [(result, reason)] of a bind_ack or alter_context_resp."""
    off = 16 + 8
    (sec_len,) = struct.unpack_from("<H", pdu, off)
    off += 2 + sec_len
    off += (-off) % 4
    n = pdu[off]
    off += 4
    return [struct.unpack_from("<HH", pdu, off + 24 * i) for i in range(n)]


def request(ctx_id, call_id, opnum, stub, flags):
    body = struct.pack("<IHH", len(stub), ctx_id, opnum) + stub
    return struct.pack("<BBBB4sHHI", 5, 0, REQUEST, flags, b"\x10\x00\x00\x00",
                       16 + len(body), 0, call_id) + body


def judge_fault(pdu, call_id, what):
    """(ok, text) for the answer to a call on the unaccepted context."""
    if not pdu:
        return False, "%s: connection closed" % what
    if pdu[2] != FAULT:
        return False, "%s: PDU type %d, not a fault" % (what, pdu[2])
    (got_call,) = struct.unpack_from("<I", pdu, 12)
    ctx, status = struct.unpack_from("<H", pdu, 20)[0], struct.unpack_from("<I", pdu, 24)[0]
    text = "%s: fault, call %d, flags 0x%02x, context %d, status 0x%08x" % (
        what, got_call, pdu[3], ctx, status)
    ok = (got_call, pdu[3], ctx, status) == (call_id, 0x23, 0, NCA_S_UNK_IF)
    return ok, text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("iface", help="bound as context 0; its call is made (samr or srvsvc)")
    ap.add_argument("iface2", help="proposed as context 1 by the alter_context")
    ap.add_argument("--fragments", action="store_true",
                    help="also send the call on context 1 in two fragments")
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    _, opnum, stub, _ = call_for(args.iface)
    ok = True
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
            s.settimeout(args.timeout)
            s.sendall(raw_bind_pdu([args.iface]))
            ack = recv_pdu(s)
            if not ack or ack[2] != BIND_ACK or results_of(ack)[0][0] != 0:
                print("bind %s: not accepted (%r)" % (args.iface, ack[:3]))
                return 1
            print("bind %s as context 0: accepted" % args.iface)

            alter = bytearray(raw_bind_pdu([args.iface2]))
            alter[2] = ALTER_CONTEXT
            struct.pack_into("<I", alter, 12, 2)      # call id
            struct.pack_into("<H", alter, 28, 1)      # context id
            s.sendall(bytes(alter))
            resp = recv_pdu(s)
            if not resp or resp[2] != ALTER_CONTEXT_RESP:
                print("alter_context %s: no alter_context_resp (%r)" % (args.iface2, resp[:3]))
                return 1
            result, reason = results_of(resp)[0]
            print("alter_context %s as context 1: %s, reason %d" % (
                args.iface2, RESULTS.get(result, result), reason))
            if result == 0:
                print("context 1 was accepted: nothing to check")
                return 1

            s.sendall(request(1, 3, opnum, stub, 0x03))
            good, text = judge_fault(recv_pdu(s), 3, "call on context 1")
            print(text)
            ok &= good
            if args.fragments:
                half = len(stub) // 2
                s.sendall(request(1, 4, opnum, stub[:half], 0x01) +
                          request(1, 4, opnum, stub[half:], 0x02))
                good, text = judge_fault(recv_pdu(s), 4, "call on context 1 in two fragments")
                print(text)
                ok &= good
            # The next answer must be this call's: a second fault for call 4 would come first.
            good, text = raw_call(s, 0, 5, args.iface)
            print(text)
            ok &= good
    except (OSError, ValueError, struct.error) as e:
        print("error: %s" % e)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
