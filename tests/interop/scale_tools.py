#!/usr/bin/env python3
"""Small readers for scale_out.sh: rpcpin's JSON log, HAProxy's stats socket, an HTTP GET.

  conns NAME=LOGFILE:MARK...
      One line per connection_closed event logged after line MARK of each rpcpin log
      (log.format = "json"), naming the instance it came from:
          <instance> <pin or epm> client=<addr:port or -> peer=<addr:port> from_client=<n> reason=<...>
      `pin` and `client` are fields of the connection's span; `client` is set only when a
      PROXY protocol header named the real client.

  haproxy SOCKET COMMAND
      Sends COMMAND (e.g. "show stat") to HAProxy's stats socket and prints the answer.

  servers SOCKET
      From "show stat": one line per server, "<backend>/<server> <status> <check_status>".

  get URL [--expect-status N] [--expect-body TEXT]... [--metric SAMPLE]...
      One HTTP GET; prints the status line, the content type and the body (bounded);
      exits 1 unless the status (and every TEXT) is as expected. --metric: the body (a
      Prometheus/OpenMetrics exposition) has a sample line "SAMPLE VALUE", VALUE > 0,
      e.g. --metric 'rpcpin_connections_total{listener="epm"}'.

Exits 2 on errors (a file that cannot be read, a socket that does not answer).
"""

import csv
import json
import socket
import sys
import urllib.error
import urllib.request


def conns(specs):
    for spec in specs:
        name, _, rest = spec.partition("=")
        path, _, mark = rest.rpartition(":")
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()[int(mark or 0):]
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            fields = ev.get("fields", ev)
            if fields.get("event") != "connection_closed":
                continue
            span = ev.get("span") or {}
            print("%s %s client=%s peer=%s from_client=%s reason=%s" % (
                name, span.get("pin", "?"), span.get("client", "-"), span.get("peer", "?"),
                fields.get("bytes_from_client", "?"),
                str(fields.get("reason", "")).replace(" ", "_")))


def haproxy(path, command):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(command.encode() + b"\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode(errors="replace")


def servers(path):
    text = haproxy(path, "show stat")
    rows = csv.DictReader(line.lstrip("# ") for line in text.splitlines() if line.strip())
    for row in rows:
        if row["svname"] in ("FRONTEND", "BACKEND"):
            continue
        print("%s/%s %s %s" % (row["pxname"], row["svname"], row["status"],
                               row.get("check_status") or "-"))


def get(url, expect_status, expect_body, metrics):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            status, ctype, body = r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        status, ctype, body = e.code, e.headers.get("content-type"), e.read()
    text = body.decode(errors="replace")
    print("GET %s -> %d (%s)" % (url, status, ctype))
    for line in text.splitlines()[:12]:
        print("  " + line)
    ok = expect_status is None or status == expect_status
    for needle in expect_body:
        if needle not in text:
            print("missing in the body: %s" % needle)
            ok = False
    for sample in metrics:
        values = [line[len(sample):].split()[0] for line in text.splitlines()
                  if line.startswith(sample + " ")]
        if values and float(values[0]) > 0:
            print("%s %s" % (sample, values[0]))
        else:
            print("no sample %s with a value above 0 (%s)" % (sample, values or "absent"))
            ok = False
    return ok


def main():
    args = sys.argv[1:]
    try:
        if args and args[0] == "conns":
            conns(args[1:])
        elif len(args) == 3 and args[0] == "haproxy":
            sys.stdout.write(haproxy(args[1], args[2]))
        elif len(args) == 2 and args[0] == "servers":
            servers(args[1])
        elif len(args) >= 2 and args[0] == "get":
            status, bodies, metrics, rest = None, [], [], args[2:]
            while len(rest) >= 2:
                opt, val, rest = rest[0], rest[1], rest[2:]
                if opt == "--expect-status":
                    status = int(val)
                elif opt == "--expect-body":
                    bodies.append(val)
                elif opt == "--metric":
                    metrics.append(val)
                else:
                    raise ValueError("unknown option %s" % opt)
            if rest:
                raise ValueError("%s needs a value" % rest[0])
            return 0 if get(args[1], status, bodies, metrics) else 1
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
