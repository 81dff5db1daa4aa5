#!/usr/bin/env python3
"""Independent judges for rpcpin's endpoint-mapper rewriting, on loopback.

The backend is impacket's DCERPCServer (extended to accept NDR64), whose answers impacket's
NDR and NDR64 encoders build; the client is impacket's DCE/RPC runtime, whose decoders read
what rpcpin sends; tshark dissects the client leg as a second judge. rpcpin sits between them.
Neither side is rpcpin's code, so agreement proves more than rpcpin's encoder agreeing with
its own decoder.

Cases: NDR and NDR64, ept_map and ept_lookup, answers in one fragment and in fragments of 61
bytes (so towers straddle fragment boundaries). The unpinned interface's entry is hidden, and
so are the pinned NSPI's ncacn_http and ncacn_np towers (epm.other_towers, "hide" by default),
so the answers are re-encoded (counts, padding, fragments) and impacket must still read them,
with only the ncacn_ip_tcp towers of pinned interfaces left, rewritten.

rpcpin runs in relay mode here: what is judged is its rewriting of a server's answers (in
answer mode it writes its answers itself, and run.sh has impacket and tshark judge those).

Usage: judge_ndr.py [RPCPIN_BIN]   (default: target/release/rpcpin beside this repo)
Prints PASS:/FAIL: lines and ends with "N passed, M failed".
"""
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from impacket.dcerpc.v5 import epm, transport
from impacket.dcerpc.v5.rpcrt import (
    DCERPCServer, MSRPCBindAck, CtxItem, CtxItemResult, MSRPC_BINDACK,
    MSRPC_CONT_RESULT_ACCEPT, MSRPC_CONT_RESULT_PROV_REJECT)
from impacket.uuid import uuidtup_to_bin, string_to_bin

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NDR = ("8a885d04-1ceb-11c9-9fe8-08002b104860", "2.0")
NDR64 = ("71710533-beba-4937-8319-b5dbef9ccc36", "1.0")
NSPI = ("f5cc5a18-4264-101a-8c59-08002b2f8426", 56, 0)
RFR = ("1544f5e0-613c-11d1-93df-00c04fd7bd09", 1, 0)
EMSMDB = ("a4f1db00-ca47-1067-b31f-00dd010662da", 0, 81)
BACKEND_ADDR = "10.0.0.5"
PUBLIC_ADDR = "203.0.113.10"
TCP, HTTP, NP = 0x07, 0x1F, 0x0F
# What the backend answers: (interface, port, address, protocol) and what rpcpin must make
# of it: pinned ncacn_ip_tcp towers point at rpcpin. For ncacn_np the "port" is the pipe and
# the "address" the NetBIOS name.
TOWERS = [
    ((NSPI, 49154, BACKEND_ADDR, TCP), (6004, PUBLIC_ADDR)),
    ((RFR, 49155, BACKEND_ADDR, TCP), (49155, BACKEND_ADDR)),
    ((NSPI, 6002, BACKEND_ADDR, HTTP), (6002, BACKEND_ADDR)),
    ((EMSMDB, 49160, BACKEND_ADDR, TCP), (6001, PUBLIC_ADDR)),
    ((NSPI, "\\PIPE\\nspi", "EXCH01", NP), None),
]
ANNOTATIONS = [b"MS Exchange Directory NSP Interface\x00", b"", b"abc\x00", b"x\x00", b"np\x00"]
# rpcpin hides entries of interfaces no pin carries (RFR here) and the towers of pinned ones
# other than ncacn_ip_tcp (NSPI's ncacn_http and ncacn_np): what the client must see.
PINNED = (NSPI, EMSMDB)
VISIBLE = [(t, a) for t, a in zip(TOWERS, ANNOTATIONS) if t[0][0] in PINNED and t[0][3] == TCP]

results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("PASS: " if ok else "FAIL: ") + name + ("" if ok or not detail else f" ({detail})"))


def floor(protocol, rhs):
    """One tower floor with a one-byte lhs (the protocol id)."""
    return struct.pack("<HBH", 1, protocol, len(rhs)) + rhs


def tower(iface, port, addr, proto):
    """An ncacn_ip_tcp or ncacn_http tower; for ncacn_np (0x0f), port is the pipe name and
    addr the NetBIOS host (floors 0x0f and 0x11, NUL-terminated, as Windows writes them)."""
    i = epm.EPMRPCInterface()
    i["InterfaceUUID"] = string_to_bin(iface[0])
    i["MajorVersion"], i["MinorVersion"] = iface[1], iface[2]
    d = epm.EPMRPCDataRepresentation()
    d["DataRepUuid"] = string_to_bin(NDR[0])
    d["MajorVersion"], d["MinorVersion"] = 2, 0
    p = epm.EPMProtocolIdentifier()
    p["ProtIdentifier"] = 0x0B
    if proto == NP:
        top = floor(NP, port.encode() + b"\x00") + floor(0x11, addr.encode() + b"\x00")
    else:
        pf = epm.EPMPortAddr()
        pf["PortIdentifier"] = proto
        pf["IpPort"] = port
        h = epm.EPMHostAddr()
        h["Ip4addr"] = socket.inet_aton(addr)
        top = pf.getData() + h.getData()
    t = epm.EPMTower()
    t["NumberOfFloors"] = 5
    t["Floors"] = i.getData() + d.getData() + p.getData() + top
    return t.getData()


def twr_p(octets, ndr64):
    t = epm.twr_p_t(isNDR64=ndr64)
    t["tower_length"] = len(octets)
    t["tower_octet_string"] = octets
    return t


class Backend(DCERPCServer):
    """impacket's minimal server, taught to accept NDR64 and to answer ept_map/ept_lookup."""

    def __init__(self):
        DCERPCServer.__init__(self)
        self.ndr64 = False
        self.daemon = True
        self.addCallbacks((epm.MSRPC_UUID_PORTMAP_STR if hasattr(epm, "MSRPC_UUID_PORTMAP_STR")
                           else "E1AF8308-5D1F-11C9-91A4-08002B14A0FA", "3.0"),
                          "135", {2: self.lookup, 3: self.map})

    def bind(self, packet, bind):
        # As DCERPCServer.bind, but the one context offered goes to NDR or NDR64.
        item = CtxItem(bind["ctx_items"])
        syntax = item["TransferSyntax"]
        self.ndr64 = syntax == uuidtup_to_bin(NDR64)
        accepted = syntax in (uuidtup_to_bin(NDR), uuidtup_to_bin(NDR64))
        self._boundUUID = item["AbstractSyntax"]
        resp = MSRPCBindAck()
        resp["type"] = MSRPC_BINDACK
        resp["flags"] = packet["flags"]
        resp["call_id"] = packet["call_id"]
        resp["max_tfrag"], resp["max_rfrag"] = bind["max_tfrag"], bind["max_rfrag"]
        resp["assoc_group"] = 0x1234
        resp["SecondaryAddr"] = b"135"
        resp["SecondaryAddrLen"] = 4
        resp["Pad"] = "A" * ((4 - ((resp["SecondaryAddrLen"] + MSRPCBindAck._SIZE) % 4)) % 4)
        r = CtxItemResult()
        r["Result"] = MSRPC_CONT_RESULT_ACCEPT if accepted else MSRPC_CONT_RESULT_PROV_REJECT
        r["Reason"] = 0 if accepted else 2
        r["TransferSyntax"] = syntax if accepted else b"\x00" * 20
        resp["ctx_num"] = 1
        resp["ctx_items"] = r.getData()
        resp["auth_len"] = 0
        resp["auth_data"] = b""
        resp["frag_len"] = len(resp.getData())
        self._clientSock.send(resp.getData())

    def send(self, data):
        # DCERPCServer.send keeps the whole answer's frag_len on every fragment it cuts;
        # give each fragment its own.
        stub = data["pduData"]
        size = self._max_frag or len(stub)
        data["alloc_hint"] = len(stub)
        for offset in range(0, max(len(stub), 1), size):
            chunk = stub[offset:offset + size]
            flags = (1 if offset == 0 else 0) | (2 if offset + size >= len(stub) else 0)
            data["flags"] = flags
            data["pduData"] = chunk
            data["frag_len"] = 24 + len(chunk)
            self._clientSock.send(data.get_packet())

    def map(self, _stub):
        r = epm.ept_mapResponse(isNDR64=self.ndr64)
        r["num_towers"] = len(TOWERS)
        r["ITowers"] = [twr_p(tower(*t), self.ndr64) for t, _ in TOWERS]
        r["status"] = 0
        return r.getData()

    def lookup(self, _stub):
        r = epm.ept_lookupResponse(isNDR64=self.ndr64)
        r["num_ents"] = len(TOWERS)
        entries = []
        for (t, _), annotation in zip(TOWERS, ANNOTATIONS):
            e = epm.ept_entry_t(isNDR64=self.ndr64)
            e["object"] = b"\x00" * 16
            e["tower"] = twr_p(tower(*t), self.ndr64)
            e["annotation"] = annotation
            entries.append(e)
        r["entries"] = entries
        r["status"] = 0
        return r.getData()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def floors(octets):
    t = epm.EPMTower(octets)
    return t["Floors"]


def check_towers(name, towers_octets):
    if len(towers_octets) != len(VISIBLE):
        check(name, False, f"{len(towers_octets)} towers, want {len(VISIBLE)}")
        return
    # impacket's own reading of each tower as a string binding: only ncacn_ip_tcp to rpcpin.
    bindings = [epm.PrintStringBinding(floors(o)) for o in towers_octets]
    print(f"  impacket decoded: {bindings}")
    check(name + ": impacket's string bindings are ncacn_ip_tcp only",
          all(b.startswith("ncacn_ip_tcp:" + PUBLIC_ADDR + "[") for b in bindings), repr(bindings))
    problems = []
    for octets, (((iface, _, _, proto), (port, addr)), _) in zip(towers_octets, VISIBLE):
        f = floors(octets)
        got_port = struct.unpack(">H", f[3]["RelatedData"] if proto == HTTP else f[3].getData()[-2:])[0]
        got_addr = socket.inet_ntoa(f[4]["Ip4addr"] if hasattr(f[4], "fields") and "Ip4addr" in f[4].fields
                                    else f[4].getData()[-4:])
        if (got_port, got_addr) != (port, addr):
            problems.append(f"{iface[0][:8]}: {got_addr}:{got_port}, want {addr}:{port}")
    check(name, not problems, "; ".join(problems))


def run_case(epm_port, ndr64, op, max_frag, backend):
    backend._max_frag = max_frag
    syntax = NDR64 if ndr64 else NDR
    name = f"{'NDR64' if ndr64 else 'NDR'} {op} answer" + (f" in {max_frag}-byte fragments" if max_frag else "")
    try:
        t = transport.DCERPCTransportFactory(f"ncacn_ip_tcp:127.0.0.1[{epm_port}]")
        dce = t.get_dce_rpc()
        dce.connect()
        dce.bind(epm.MSRPC_UUID_PORTMAP, transfer_syntax=syntax)
        if op == "ept_map":
            req = epm.ept_map()
            req["obj"] = b"\x00" * 16
            req["map_tower"] = twr_p(tower(NSPI, 0, "0.0.0.0", TCP), False)
            req["entry_handle"] = epm.ept_lookup_handle_t()
            req["max_towers"] = 4
            resp = dce.request(req)
            octets = [b"".join(x["tower_octet_string"]) if isinstance(x["tower_octet_string"], list)
                      else x["tower_octet_string"] for x in resp["ITowers"]]
        else:
            req = epm.ept_lookup()
            req["inquiry_type"] = epm.RPC_C_EP_ALL_ELTS
            req["object"] = epm.NULL
            req["Ifid"] = epm.NULL
            req["vers_option"] = epm.RPC_C_VERS_ALL
            req["entry_handle"] = epm.ept_lookup_handle_t()
            req["max_ents"] = 500
            resp = dce.request(req)
            octets = [b"".join(e["tower"]["tower_octet_string"]) for e in resp["entries"]]
            anns = [b"".join(e["annotation"]) for e in resp["entries"]]
            check(name + ": annotations intact, RFR's entry and NSPI's other towers hidden", anns == [a for _, a in VISIBLE], repr(anns))
        dce.disconnect()
        check_towers(name + ": impacket reads the rewritten towers", [bytes(o) for o in octets])
    except Exception as e:  # any failure is this case's failure
        check(name, False, repr(e))


def main():
    rpcpin_bin = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target", "release", "rpcpin")
    work = tempfile.mkdtemp(prefix="rpcpin-judge-")
    backend = Backend()
    backend.start()
    epm_port, pin1, pin2 = free_port(), free_port(), free_port()
    config = os.path.join(work, "rpcpin.toml")
    with open(config, "w") as f:
        f.write(f"""[backend]
host = "127.0.0.1"
epm_port = {backend.getListenPort()}
[epm]
listen = "127.0.0.1:{epm_port}"
advertise = "{PUBLIC_ADDR}"
mode = "relay"
[[pin]]
name = "directory"
listen = "127.0.0.1:{pin1}"
interfaces = ["nspi"]
advertise_port = 6004
[[pin]]
name = "store"
listen = "127.0.0.1:{pin2}"
interfaces = ["emsmdb"]
advertise_port = 6001
[log]
format = "text"
""")
    log = open(os.path.join(work, "rpcpin.log"), "w")
    proxy = subprocess.Popen([rpcpin_bin, "run", "--config", config], stdout=log, stderr=log)
    capture = os.path.join(work, "client-leg.pcap")
    tshark = None
    if shutil.which("tshark"):
        tshark = subprocess.Popen(["tshark", "-q", "-i", "lo", "-f", f"tcp port {epm_port}", "-w", capture],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(epm_port):
            check("rpcpin listens", False, open(log.name).read()[-2000:])
            return finish(work)
        time.sleep(1.5 if tshark else 0)  # let tshark start capturing
        for ndr64 in (False, True):
            for op in ("ept_map", "ept_lookup"):
                for max_frag in (None, 61):
                    run_case(epm_port, ndr64, op, max_frag, backend)
        if tshark:
            time.sleep(1)
            tshark.terminate()
            tshark.wait(timeout=10)
            judge_with_tshark(capture)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        if tshark and tshark.poll() is None:
            tshark.kill()
    return finish(work)


def judge_with_tshark(capture):
    """Wireshark's EPM dissector on the client leg: every TCP port and IP it finds in the
    answers is a rewritten one."""
    out = subprocess.run(["tshark", "-r", capture, "-d", "tcp.port==0,dcerpc", "-Y", "epm && dcerpc.pkt_type == 2",
                          "-T", "fields", "-e", "epm.proto.tcp_port", "-e", "epm.proto.ip"],
                         capture_output=True, text=True, timeout=60).stdout
    ports, ips = set(), []
    for line in out.splitlines():
        cols = line.split("\t")
        ports.update(p for p in cols[0].split(",") if p)
        ips.extend(i for i in (cols[1].split(",") if len(cols) > 1 else []) if i)
    check("tshark dissects the rewritten ports", {"6004", "6001"} <= ports and "49154" not in ports
          and "49160" not in ports, f"ports {sorted(ports)}")
    check("tshark sees rpcpin's address in the answers", PUBLIC_ADDR in ips, f"ips {sorted(set(ips))}")
    # RFR's entry and NSPI's ncacn_http tower, the only ones with the backend's address, are hidden.
    check("tshark sees no backend address in the answers", BACKEND_ADDR not in ips, f"ips {sorted(set(ips))}")


def finish(work):
    passed, failed = sum(results), len(results) - sum(results)
    if failed:
        print(f"(work dir kept: {work})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
