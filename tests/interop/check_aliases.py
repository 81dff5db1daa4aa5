#!/usr/bin/env python3
"""Independent judges of rpcpin's interface aliases: each UUID and version that
`rpcpin interfaces` prints is compared with what other implementations call that interface.

- impacket's protocol modules: the constant each one binds with (`MSRPC_UUID_*`, DCOM's
  `IID_*`), UUID and version;
- impacket's lists of interfaces seen on Windows (`epm.KNOWN_UUIDS`, with the DLL serving it,
  and `examples.rpcdatabase`), UUID and version;
- Samba's Python bindings (`samba.dcerpc.<module>.abstract_syntax()`, from its IDL), UUID and
  version; they live in Debian's python3 (python3-samba), read by a subprocess;
- tshark: the name Wireshark's DCE/RPC dissector gives the UUID in a bind (it names a UUID
  whatever the version, so this judges the UUID only).

Every alias needs at least one judge of UUID and version. An interface none of them knows
is compared with its specification instead, in SPEC below, with the section cited. Every
judge that knows an interface must agree with rpcpin; an alias missing from the table below
fails too, so that a new alias comes with its judges.

Usage: check_aliases.py [RPCPIN_BIN]   (default: target/release/rpcpin beside this repo)
Prints PASS:/FAIL: lines and ends with "N passed, M failed".
"""
import importlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import uuid

from impacket.dcerpc.v5.epm import KNOWN_UUIDS
from impacket.examples.rpcdatabase import uuid_database
from impacket.uuid import bin_to_string

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Per alias (or "alias uuid-prefix" where an alias names two UUIDs): the impacket constant
# ("module.NAME" under impacket.dcerpc.v5), Samba's samba.dcerpc module, and the name
# Wireshark gives the UUID. None: that judge does not know the interface.
JUDGES = {
    "epm": ("epm.MSRPC_UUID_PORTMAP", "epmapper", "EPMv4"),
    "emsmdb": (None, None, "MAPI"),
    "async_emsmdb": (None, None, "async MAPI"),
    "nspi": ("nspi.MSRPC_UUID_NSPI", None, "NSPI"),
    "rfr": ("oxabref.MSRPC_UUID_OXABREF", None, "RFR"),
    "lsarpc": ("lsad.MSRPC_UUID_LSAD", "lsa", "LSARPC"),
    "samr": ("samr.MSRPC_UUID_SAMR", "samr", "SAMR"),
    "dssetup": ("dssp.MSRPC_UUID_DSSP", None, "DSSETUP"),
    "netlogon": ("nrpc.MSRPC_UUID_NRPC", "netlogon", "RPC_NETLOGON"),
    "drsuapi": ("drsuapi.MSRPC_UUID_DRSUAPI", "drsuapi", "DRSUAPI"),
    "frsrpc": (None, None, "FRSRPC"),
    "dfsr": (None, None, "FRSTRANS"),
    "backupkey": ("bkrp.MSRPC_UUID_BKRP", None, None),
    "icpr": ("icpr.MSRPC_UUID_ICPR", None, None),
    "srvsvc": ("srvs.MSRPC_UUID_SRVS", "srvsvc", "SRVSVC"),
    "wkssvc": ("wkst.MSRPC_UUID_WKST", "wkssvc", "WKSSVC"),
    "winreg": ("rrp.MSRPC_UUID_RRP", "winreg", "WINREG"),
    "svcctl": ("scmr.MSRPC_UUID_SCMR", "svcctl", "SVCCTL"),
    "spoolss": ("rprn.MSRPC_UUID_RPRN", "spoolss", "SPOOLSS"),
    "efsrpc c681d488": (None, None, "EFS"),
    "efsrpc df1941c5": (None, None, None),
    "isystemactivator": ("dcomrt.IID_IRemoteSCMActivator", None, "ISystemActivator"),
    "iremoteactivation": ("dcomrt.IID_IActivation", None, "REMACT"),
    "ioxidresolver": ("dcomrt.IID_IObjectExporter", None, "IOXIDResolver"),
    "dnsserver": (None, "dnsserver", "DNSSERVER"),
    "eventlog": ("even.MSRPC_UUID_EVEN", None, "EVENTLOG"),
    "eventlog6": ("even6.MSRPC_UUID_EVEN6", None, None),
    "tasksched": ("tsch.MSRPC_UUID_TSCHS", None, "TaskSchedulerService"),
    "atsvc": ("atsvc.MSRPC_UUID_ATSVC", "atsvc", "ATSVC"),
}
# Where no judge knows the version: the specification's value, with its section.
SPEC = {
    # [MS-OXCRPC] 1.9 gives the UUID (tshark judges it), 3.3 the AsyncEMSMDB interface, 0.01.
    "async_emsmdb": "5261574a-4572-206e-b268-6b199213b4e4 0.1",
}

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}: {name}" + (f" ({detail})" if detail else ""))


def listed(rpcpin):
    """(key, alias, uuid, (major, minor)) for each line of `rpcpin interfaces`."""
    out = subprocess.run([rpcpin, "interfaces"], capture_output=True, text=True, check=True).stdout
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    aliases = [r[0] for r in rows]
    return [(a if aliases.count(a) == 1 else f"{a} {u[:8]}", a, u, tuple(map(int, v.split("."))))
            for a, u, v in rows]


def impacket_constant(path):
    module, name = path.split(".")
    b = getattr(importlib.import_module(f"impacket.dcerpc.v5.{module}"), name, None)
    if b is None:
        return None
    major, minor = struct.unpack("<HH", b[16:20])
    return bin_to_string(b[:16]).lower(), (major, minor)


def impacket_lists(u, version):
    """Whether impacket's lists of Windows interfaces hold this UUID at this version, and
    what they say of it."""
    le = uuid.UUID(u).bytes_le
    dll = KNOWN_UUIDS.get(le + bytes(version)) if max(version) < 256 else None
    in_db = (u.upper(), f"{version[0]}.{version[1]}") in {(a.upper(), b) for a, b in uuid_database}
    known_versions = sorted({tuple(k[16:18]) for k in KNOWN_UUIDS if k[:16] == le}
                            | {tuple(map(int, b.split("."))) for a, b in uuid_database
                               if a.lower() == u})
    return (dll or in_db), dll or ("rpcdatabase" if in_db else None), known_versions


def samba_syntaxes(modules):
    """{module: (uuid, (major, minor))} from Debian's python3 with python3-samba."""
    code = ("import importlib, json, sys\n"
            "out = {}\n"
            "for m in sys.argv[1:]:\n"
            "    s = importlib.import_module('samba.dcerpc.' + m).abstract_syntax()\n"
            "    out[m] = [str(s.uuid), s.if_version]\n"
            "print(json.dumps(out))\n")
    run = subprocess.run(["/usr/bin/python3", "-c", code, *modules], capture_output=True, text=True)
    if run.returncode != 0:
        check("Samba's Python bindings load", False, run.stderr.strip()[-300:])
        return {}
    # if_version is major in the low 16 bits, minor in the high (witness 1.1 is 65537).
    return {m: (u.lower(), (v & 0xFFFF, v >> 16)) for m, (u, v) in json.loads(run.stdout).items()}


def bind_pdu(u, version, call_id):
    """A DCE/RPC bind (C706 12.6.4.3) proposing u at version in NDR."""
    ndr = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860").bytes_le + struct.pack("<I", 2)
    ctx = struct.pack("<HBx", 0, 1) + uuid.UUID(u).bytes_le + struct.pack("<HH", *version) + ndr
    body = struct.pack("<HHIB3x", 4280, 4280, 0, 1) + ctx
    return struct.pack("<BBBB4sHHI", 5, 0, 11, 3, b"\x10\0\0\0", 16 + len(body), 0, call_id) + body


def tshark_names(rows):
    """{key: the interface name tshark gives in a bind to port 135}, from one capture file
    with a bind per interface, each on a TCP connection of its own."""
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, (_, _, u, version) in enumerate(rows):
            pdu = bind_pdu(u, version, i + 1)
            tcp = struct.pack(">HHIIBBHHH", 40000 + i, 135, 1, 1, 5 << 4, 0x18, 65535, 0, 0)
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40 + len(pdu), 0, 0x4000, 64, 6, 0,
                             bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
            frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + pdu
            f.write(struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame)
        f.flush()
        out = subprocess.run(["tshark", "-r", f.name, "-T", "fields", "-e", "tcp.srcport",
                              "-e", "_ws.col.Info"], capture_output=True, text=True, check=True)
    names = {}
    for line in out.stdout.splitlines():
        port, info = line.split("\t", 1)
        # "Bind: call_id: 12, Fragment: Single, 1 context items: FRSTRANS V1.0 (32bit NDR)"
        item = info.split("context items: ", 1)[-1].rsplit(" V", 1)[0]
        names[rows[int(port) - 40000][0]] = item
    return names


def main():
    rpcpin = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target/release/rpcpin")
    rows = listed(rpcpin)
    check("rpcpin interfaces lists the aliases", len(rows) >= 29, f"{len(rows)} lines")
    samba = samba_syntaxes(sorted({j[1] for j in JUDGES.values() if j[1]}))
    names = tshark_names(rows)
    for key, alias, u, version in rows:
        mine = f"{u} {version[0]}.{version[1]}"
        if key not in JUDGES:
            check(f"{key}: has judges", False, "add it to JUDGES in check_aliases.py")
            continue
        constant, module, wireshark = JUDGES[key]
        exact = []  # judges of UUID and version that agree
        if constant:
            theirs = impacket_constant(constant)
            ok = theirs == (u, version)
            check(f"{key} {mine}: impacket {constant}", ok, f"impacket: {theirs}")
            exact.append(ok)
        if module:
            theirs = samba.get(module)
            ok = theirs == (u, version)
            check(f"{key} {mine}: Samba samba.dcerpc.{module}", ok, f"Samba: {theirs}")
            exact.append(ok)
        found, what, versions = impacket_lists(u, version)
        if found:
            check(f"{key} {mine}: impacket's list of Windows interfaces", True, what)
            exact.append(True)
        elif versions:
            check(f"{key} {mine}: impacket's list of Windows interfaces", False,
                  f"it has this UUID at {versions} only")
        if wireshark:
            ok = names.get(key) == wireshark
            check(f"{key} {u}: tshark names it {wireshark}", ok, f"tshark: {names.get(key)}")
        if not exact:
            ok = SPEC.get(key) == mine
            check(f"{key} {mine}: its specification", ok,
                  "no judge knows its version: compared with SPEC" if ok else
                  f"no judge knows it, and SPEC says {SPEC.get(key)}")
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
