#!/usr/bin/env python3
"""Domain-controller calls through an endpoint mapper, sealed, and what they answer.

For each OP, the port comes from the endpoint mapper at HOST (impacket's epm.hept_map(),
which keeps HOST and takes the tower's port), then one association binds the interface
with NTLM at authentication level packet privacy (sealed) and makes the calls:

  drsuapi   DRSBind, DRSDomainControllerInfo (level 2) for the realm, DRSCrackNames of
            DOMAIN\\Administrator (NT4 account name) to a DN
  netlogon  DsrGetDcNameEx2 for the realm
  samr      SamrConnect, SamrEnumerateDomainsInSamServer, SamrLookupDomainInSamServer for
            the domain, SamrOpenDomain, SamrLookupNamesInDomain of Administrator

Each answer is judged against the domain's real data: --realm, --domain, --dc (the DC's
netbios name) and --sid (the domain SID). Output: one BINDING line per OP, then what the
calls returned, and a MISMATCH line for every expectation broken. With --expect-port every
binding must name that port (the pin's, when HOST is rpcpin).

Exit 0 when every expectation holds, 1 when an answer breaks one, 2 on any error (no
connection, a fault, a refused bind).
"""

import argparse
import sys

from impacket.dcerpc.v5 import drsuapi, epm, nrpc, samr, transport
from impacket.dcerpc.v5.dtypes import NULL
from impacket.dcerpc.v5.rpcrt import RPC_C_AUTHN_LEVEL_PKT_PRIVACY

# MS-NRPC 3.5.4.3.1: names in DNS form.
DS_RETURN_DNS_NAME = 0x40000000

IFACES = {
    "drsuapi": drsuapi.MSRPC_UUID_DRSUAPI,
    "netlogon": nrpc.MSRPC_UUID_NRPC,
    "samr": samr.MSRPC_UUID_SAMR,
}


class Judge:
    """Collects expectations broken."""

    def __init__(self):
        self.mismatches = 0

    def expect(self, what, got, want):
        """got must equal want (strings compared case-insensitively)."""
        ok = str(got).lower() == str(want).lower()
        print("%s: %s%s" % (what, got, "" if ok else "   MISMATCH: expected %s" % want))
        self.mismatches += not ok

    def contains(self, what, got, want):
        ok = want.lower() in str(got).lower()
        print("%s: %s%s" % (what, got, "" if ok else "   MISMATCH: expected to contain %s" % want))
        self.mismatches += not ok


def bind(args, name, judge):
    """A sealed NTLM association for interface NAME, its port asked of HOST's endpoint mapper."""
    mapper = transport.DCERPCTransportFactory("ncacn_ip_tcp:%s[135]" % args.host)
    mapper.set_connect_timeout(args.timeout)
    epm_dce = mapper.get_dce_rpc()
    epm_dce.connect()
    binding = epm.hept_map(args.host, IFACES[name], protocol="ncacn_ip_tcp", dce=epm_dce)
    epm_dce.disconnect()
    print("BINDING %s %s" % (name, binding))
    if args.expect_port is not None:
        judge.expect("  port", binding.rsplit("[", 1)[1].rstrip("]"), args.expect_port)
    rpc = transport.DCERPCTransportFactory(binding)
    rpc.set_connect_timeout(args.timeout)
    rpc.set_credentials(args.user, args.password, args.domain)
    dce = rpc.get_dce_rpc()
    dce.set_auth_level(RPC_C_AUTHN_LEVEL_PKT_PRIVACY)
    dce.connect()
    dce.bind(IFACES[name])
    return dce


def op_drsuapi(dce, args, judge):
    req = drsuapi.DRSBind()
    req["puuidClientDsa"] = drsuapi.NTDSAPI_CLIENT_GUID
    ext = drsuapi.DRS_EXTENSIONS_INT()
    ext["cb"] = len(ext)
    ext["dwFlags"] = drsuapi.DRS_EXT_GETCHGREQ_V6 | drsuapi.DRS_EXT_GETCHGREPLY_V6 | \
        drsuapi.DRS_EXT_GETCHGREQ_V8 | drsuapi.DRS_EXT_STRONG_ENCRYPTION
    ext["SiteObjGuid"] = drsuapi.NULLGUID
    ext["Pid"] = 0
    ext["dwReplEpoch"] = 0
    ext["dwFlagsExt"] = 0
    ext["ConfigObjGUID"] = drsuapi.NULLGUID
    ext["dwExtCaps"] = 0xFFFFFFFF
    req["pextClient"]["cb"] = len(ext)
    req["pextClient"]["rgb"] = list(ext.getData())
    h = dce.request(req)["phDrs"]
    print("  DRSBind: a handle")

    resp = drsuapi.hDRSDomainControllerInfo(dce, h, args.realm, 2)
    items = resp["pmsgOut"]["V2"]["rItems"]
    judge.expect("  DRSDomainControllerInfo: DCs", resp["pmsgOut"]["V2"]["cItems"], 1)
    dc = items[0]
    judge.expect("    NetbiosName", dc["NetbiosName"][:-1], args.dc)
    judge.expect("    DnsHostName", dc["DnsHostName"][:-1], "%s.%s" % (args.dc, args.realm))
    judge.contains("    ComputerObjectName", dc["ComputerObjectName"][:-1], realm_dn(args.realm))
    judge.expect("    fIsPdc", dc["fIsPdc"], 1)

    nt4 = "%s\\Administrator" % args.domain
    resp = drsuapi.hDRSCrackNames(dce, h, 0, drsuapi.DS_NAME_FORMAT.DS_NT4_ACCOUNT_NAME,
                                  drsuapi.DS_NAME_FORMAT.DS_FQDN_1779_NAME, (nt4,))
    item = resp["pmsgOut"]["V1"]["pResult"]["rItems"][0]
    print("  DRSCrackNames %s:" % nt4)
    judge.expect("    status", item["status"], 0)
    judge.expect("    pName", item["pName"][:-1],
                 "CN=Administrator,CN=Users," + realm_dn(args.realm))
    judge.expect("    pDomain", item["pDomain"][:-1], args.realm)
    drsuapi.hDRSUnbind(dce, h)


def op_netlogon(dce, args, judge):
    resp = nrpc.hDsrGetDcNameEx2(dce, NULL, NULL, 0, args.realm, NULL, NULL, DS_RETURN_DNS_NAME)
    info = resp["DomainControllerInfo"]
    print("  DsrGetDcNameEx2 %s, DS_RETURN_DNS_NAME:" % args.realm)
    judge.expect("    DomainControllerName", info["DomainControllerName"][:-1],
                 "\\\\%s.%s" % (args.dc, args.realm))
    # The DC's own address, inside sealed data: what the client gets, rpcpin cannot change.
    print("    DomainControllerAddress: %s" % info["DomainControllerAddress"][:-1])
    judge.expect("    DomainName", info["DomainName"][:-1], args.realm)
    judge.expect("    DnsForestName", info["DnsForestName"][:-1], args.realm)


def op_samr(dce, args, judge):
    h = samr.hSamrConnect(dce)["ServerHandle"]
    resp = samr.hSamrEnumerateDomainsInSamServer(dce, h)
    names = sorted(d["Name"] for d in resp["Buffer"]["Buffer"])
    judge.expect("  SamrEnumerateDomainsInSamServer", ", ".join(names),
                 ", ".join(sorted(["Builtin", args.domain])))
    sid = samr.hSamrLookupDomainInSamServer(dce, h, args.domain)["DomainId"]
    judge.expect("  SamrLookupDomainInSamServer %s" % args.domain, sid.formatCanonical(), args.sid)
    dom = samr.hSamrOpenDomain(dce, h, domainId=sid)["DomainHandle"]
    resp = samr.hSamrLookupNamesInDomain(dce, dom, ("Administrator", "%s$" % args.dc))
    rids = [r["Data"] for r in resp["RelativeIds"]["Element"]]
    judge.expect("  SamrLookupNamesInDomain Administrator: rid", rids[0], 500)
    print("  SamrLookupNamesInDomain %s$: rid %d" % (args.dc, rids[1]))
    samr.hSamrCloseHandle(dce, dom)
    samr.hSamrCloseHandle(dce, h)


def realm_dn(realm):
    return ",".join("DC=" + part for part in realm.split("."))


OPS = {"drsuapi": op_drsuapi, "netlogon": op_netlogon, "samr": op_samr}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host", help="the endpoint mapper to ask (rpcpin, or the DC)")
    ap.add_argument("ops", nargs="+", choices=sorted(OPS))
    ap.add_argument("--user", default="Administrator")
    ap.add_argument("--password", required=True)
    ap.add_argument("--domain", required=True, help="the domain's netbios name")
    ap.add_argument("--realm", required=True, help="the domain's DNS name")
    ap.add_argument("--dc", required=True, help="the DC's netbios name")
    ap.add_argument("--sid", required=True, help="the domain SID")
    ap.add_argument("--expect-port", type=int, help="every binding must name this port")
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()

    judge = Judge()
    for name in args.ops:
        try:
            dce = bind(args, name, judge)
            OPS[name](dce, args, judge)
            dce.disconnect()
        except Exception as e:  # noqa: BLE001 - any failure to reach or call is an error
            print("ERROR: %s: %s: %s" % (name, type(e).__name__, e))
            return 2
    return 1 if judge.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
