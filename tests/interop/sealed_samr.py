#!/usr/bin/env python3
"""A sealed samr call the way impacket's own tools make one.

impacket's epm.hept_map asks HOST's endpoint mapper (port 135) where samr
lives; the binding it returns is the host asked and the tower's port. The
script then binds there with NTLM at authentication level privacy (every call
sealed) and calls SamrConnect and SamrEnumerateDomainsInSamServer. HOST may be
an IPv6 literal, without brackets, as impacket takes it.

Prints the binding and each domain. Exit 0 when the binding's port is
--expect-port (if given) and every --expect-domain is listed, 1 when not,
2 on any error.
"""

import argparse
import sys

from impacket.dcerpc.v5 import epm, samr, transport
from impacket.dcerpc.v5.rpcrt import RPC_C_AUTHN_LEVEL_PKT_PRIVACY


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host", help="the endpoint mapper to ask, and the host to call")
    ap.add_argument("credentials", metavar="USER%PASSWORD")
    ap.add_argument("--expect-port", type=int, help="the port the tower must give samr")
    ap.add_argument("--expect-domain", action="append", default=[], metavar="NAME")
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    user, _, password = args.credentials.partition("%")
    try:
        binding = epm.hept_map(args.host, samr.MSRPC_UUID_SAMR, protocol="ncacn_ip_tcp")
        print("HEPT_MAP samr %s" % binding)
        rpc = transport.DCERPCTransportFactory(binding)
        rpc.set_credentials(user, password)
        rpc.set_connect_timeout(args.timeout)
        dce = rpc.get_dce_rpc()
        dce.set_auth_level(RPC_C_AUTHN_LEVEL_PKT_PRIVACY)
        dce.connect()
        dce.bind(samr.MSRPC_UUID_SAMR)
        handle = samr.hSamrConnect(dce)["ServerHandle"]
        answer = samr.hSamrEnumerateDomainsInSamServer(dce, handle)
        domains = [d["Name"] for d in answer["Buffer"]["Buffer"]]
        dce.disconnect()
    except Exception as e:  # noqa: BLE001 - any failure is reported as an error
        print("ERROR: %s: %s" % (type(e).__name__, e))
        return 2
    for d in domains:
        print("DOMAIN %s (sealed: authentication level privacy)" % d)
    ok = True
    port = binding.rpartition("[")[2].rstrip("]")
    if args.expect_port is not None and port != str(args.expect_port):
        print("MISMATCH: samr at port %s, expected %d" % (port, args.expect_port))
        ok = False
    for want in args.expect_domain:
        if want not in domains:
            print("MISSING: domain %s" % want)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
