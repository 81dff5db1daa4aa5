#!/usr/bin/env python3
"""Hold many silent TCP connections to rpcpin and watch how and when rpcpin closes them.

Opens COUNT connections to HOST, spread round-robin over PORTS, and never sends a byte
on them. Then, optionally:

  --then CMD...    runs CMD (a real client, say) while all of them are open; it must exit 0
                   and print every --then-expect string, and every silent connection must
                   still be open when it ends (so it really ran beside COUNT silent ones).
  --extra N        opens N more connections once the COUNT are accepted and have stayed
                   open for a moment; each must be closed by rpcpin (EOF or reset, without
                   a byte) within --extra-closed-within seconds, while the first COUNT are
                   still open: a limit refusing them at once, not the handshake timeout.

Finally it waits until rpcpin has closed every silent connection and checks that each
lived between --closed-after and --closed-before seconds (rpcpin's handshake timeout).
A connection that receives data fails the check: rpcpin has nothing to say to a silent
client.

Prints what it saw; exits 0 when everything holds, 1 when something does not, 2 on errors.
"""

import argparse
import errno
import resource
import selectors
import socket
import subprocess
import sys
import time


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise RuntimeError("RLIMIT_NOFILE hard limit %d < %d" % (hard, want))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Conn:
    def __init__(self, host, port, timeout):
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setblocking(False)
        self.opened = time.monotonic()
        self.closed = None   # monotonic time rpcpin closed it
        self.how = None      # "eof", "reset", "data"

    def lifetime(self):
        return self.closed - self.opened


def open_conns(host, ports, n, timeout, sel):
    conns = []
    for i in range(n):
        c = Conn(host, ports[i % len(ports)], timeout)
        sel.register(c.sock, selectors.EVENT_READ, c)
        conns.append(c)
    return conns


def poll(sel, wait):
    """Records every connection that became readable (closed, reset or data) within WAIT."""
    for key, _ in sel.select(timeout=wait):
        c = key.data
        try:
            data = c.sock.recv(4096)
            c.how = "data" if data else "eof"
        except ConnectionResetError:
            c.how = "reset"
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                continue
            c.how = "error %s" % e
        c.closed = time.monotonic()
        sel.unregister(c.sock)
        c.sock.close()


def watch(sel, seconds):
    """Records closures for SECONDS."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        poll(sel, deadline - time.monotonic())


def still_open(conns):
    return [c for c in conns if c.closed is None]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("ports", help="comma-separated ports")
    ap.add_argument("count", type=int)
    ap.add_argument("--then", nargs=argparse.REMAINDER, help="command to run while held")
    ap.add_argument("--then-expect", action="append", default=[], metavar="TEXT")
    ap.add_argument("--extra", type=int, default=0)
    ap.add_argument("--extra-closed-within", type=float, default=1.0)
    ap.add_argument("--closed-after", type=float, required=True)
    ap.add_argument("--closed-before", type=float, required=True)
    ap.add_argument("--timeout", type=float, default=5)
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    ok = True
    sel = selectors.DefaultSelector()
    try:
        raise_fd_limit(args.count + args.extra)
        t0 = time.monotonic()
        conns = open_conns(args.host, ports, args.count, args.timeout, sel)
        t_all = time.monotonic()
        per_port = ", ".join("%d on %d" % (sum(c.port == p for c in conns), p) for p in ports)
        print("%d silent connections established in %.0f ms (%s)" % (
            len(conns), (t_all - t0) * 1000, per_port), flush=True)

        if args.then:
            started = time.monotonic()
            run = subprocess.run(args.then, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=30, check=False)
            ended = time.monotonic()
            # Nothing was polled while CMD ran: whatever is closed now closed during it.
            poll(sel, 0)
            out = run.stdout.decode("utf-8", "replace")
            print("--- %s (exit %d, from +%.0f ms to +%.0f ms after the last connect):" % (
                args.then[0], run.returncode, (started - t_all) * 1000, (ended - t_all) * 1000))
            for line in out.splitlines()[:12]:
                print("    " + line)
            missing = [t for t in args.then_expect if t not in out]
            if run.returncode != 0 or missing:
                print("  MISMATCH: %s failed%s" % (args.then[0], (
                    ", missing in output: %s" % missing) if missing else ""))
                ok = False
            gone = [c for c in conns if c.closed is not None]
            if gone:
                print("  MISMATCH: %d silent connections were closed before %s ended" % (
                    len(gone), args.then[0]))
                ok = False
            else:
                print("all %d silent connections were still open when %s ended" % (
                    len(conns), args.then[0]))

        if args.extra:
            watch(sel, 0.5)  # let rpcpin take every one of them in
            early = [c for c in conns if c.closed is not None]
            t_extra = time.monotonic()
            extra = open_conns(args.host, ports[:1], args.extra, args.timeout, sel)
            deadline = t_extra + args.extra_closed_within
            while still_open(extra) and time.monotonic() < deadline:
                poll(sel, deadline - time.monotonic())
            for i, c in enumerate(extra):
                if c.closed is None:
                    print("  MISMATCH: extra connection %d (port %d) still open after %.1f s" % (
                        i + 1, c.port, args.extra_closed_within))
                    ok = False
                else:
                    print("extra connection %d (port %d): closed by the peer (%s) after %.0f ms"
                          % (i + 1, c.port, c.how, c.lifetime() * 1000))
                    ok = ok and c.how in ("eof", "reset")
            early += [c for c in conns if c.closed is not None and c not in early]
            if early:
                print("  MISMATCH: %d of the first %d closed before the extra ones were "
                      "refused" % (len(early), len(conns)))
                ok = False
            else:
                print("the first %d were all still open when the extra ones were closed" %
                      len(conns))
            for c in extra:
                if c.closed is None:
                    sel.unregister(c.sock)
                    c.sock.close()

        deadline = time.monotonic() + args.closed_before + 1
        while still_open(conns) and time.monotonic() < deadline:
            poll(sel, 0.2)
        left = still_open(conns)
        done = [c for c in conns if c.closed is not None]
        if done:
            lives = sorted(c.lifetime() for c in done)
            hows = {}
            for c in done:
                hows[c.how] = hows.get(c.how, 0) + 1
            print("%d of %d closed by the peer (%s), each after %.2f to %.2f s of silence" % (
                len(done), len(conns), ", ".join("%s: %d" % kv for kv in sorted(hows.items())),
                lives[0], lives[-1]))
            if lives[0] < args.closed_after or lives[-1] > args.closed_before:
                print("  MISMATCH: expected each to be closed after %.1f to %.1f s" % (
                    args.closed_after, args.closed_before))
                ok = False
            if set(hows) - {"eof", "reset"}:
                print("  MISMATCH: a silent connection received data or failed otherwise")
                ok = False
        if left:
            print("  MISMATCH: %d still open %.1f s after the last connect" % (
                len(left), time.monotonic() - t_all))
            ok = False
            for c in left:
                c.sock.close()
    except Exception as e:  # noqa: BLE001 - cannot connect, fd limit, ...
        print("ERROR: %s" % e)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
