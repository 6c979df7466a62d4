#!/usr/bin/env python3
"""Open-model (fixed arrival rate) publisher for the kzhook latency scenario, stdlib only.

Event k of the whole run is due at T0 + k / rate, whether or not earlier requests have been
answered (wrk2 style: no coordinated omission). This process sends the events k with
k % nprocs == index, over a pool of keep-alive HTTP/1.1 connections to POST /v1/events: a due
event goes out on an idle connection, a new one is opened when none is idle (up to --max-conns);
past that it waits, and the wait shows up as send lag.

Output (--out), one line per event: "eventId intended_send actual_send ack status", times as
Unix seconds (wall clock, the same clock nginx's $msec uses).
"""
import argparse
import collections
import selectors
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--rate", type=float, required=True, help="events/s of the whole run")
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--t0", type=float, required=True, help="wall-clock start, Unix seconds")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--nprocs", type=int, default=1)
    ap.add_argument("--prefix", required=True, help="eventId prefix")
    ap.add_argument("--body-file", required=True, help="event JSON with the marker @EVENTID@")
    ap.add_argument("--max-conns", type=int, default=256)
    ap.add_argument("--init-conns", type=int, default=4)
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    tmpl = open(a.body_file, "rb").read()
    pre, _, post = tmpl.partition(b"@EVENTID@")
    head = ("POST /v1/events HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\n" % (a.host, a.port, a.token)).encode()

    total = int(a.rate * a.duration)
    mine = list(range(a.index, total, a.nprocs))
    # Monotonic schedule anchored to the shared wall-clock T0.
    mono0 = time.monotonic() + (a.t0 - time.time())
    wall_off = a.t0 - mono0  # wall = mono + wall_off

    sel = selectors.DefaultSelector()
    idle = []
    conns = {}  # fd -> state
    results = []
    errors = collections.Counter()
    st = {"busy": 0, "peak": 0}

    class Conn:
        __slots__ = ("sock", "buf", "ev", "sent", "intended")

    def open_conn():
        s = socket.create_connection((a.host, a.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = Conn()
        c.sock, c.buf, c.ev = s, b"", None
        conns[s.fileno()] = c
        sel.register(s, selectors.EVENT_READ, c)
        return c

    def close_conn(c):
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        conns.pop(c.sock.fileno(), None)
        c.sock.close()

    for _ in range(min(a.init_conns, a.max_conns)):
        idle.append(open_conn())

    def send(c, k):
        eid = "%s-%d" % (a.prefix, k)
        body = pre + eid.encode() + post
        req = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        c.ev, c.intended = eid, mono0 + k / a.rate
        c.sent = time.monotonic()
        st["busy"] += 1
        st["peak"] = max(st["peak"], len(conns))
        try:
            c.sock.sendall(req)  # ~1 KB into an empty socket buffer: does not block
        except BlockingIOError:
            c.sock.setblocking(True)
            c.sock.sendall(req)
            c.sock.setblocking(False)

    def finish(c, status):
        now = time.monotonic()
        results.append("%s %.6f %.6f %.6f %d\n" % (c.ev, c.intended + wall_off, c.sent + wall_off,
                                                   now + wall_off, status))
        c.ev = None
        st["busy"] -= 1

    def on_readable(c):
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if c.ev is not None:
                finish(c, 0)
                errors["eof"] += 1
            close_conn(c)
            if c in idle:
                idle.remove(c)
            return
        c.buf += data
        while True:
            he = c.buf.find(b"\r\n\r\n")
            if he < 0:
                return
            hdr = c.buf[:he].decode("latin-1")
            lines = hdr.split("\r\n")
            try:
                status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                status = 0
            clen, close = 0, False
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    clen = int(v.strip())
                elif k == "connection" and "close" in v.lower():
                    close = True
            if len(c.buf) < he + 4 + clen:
                return
            c.buf = c.buf[he + 4 + clen:]
            if c.ev is not None:
                if status != 202:
                    errors[str(status)] += 1
                finish(c, status)
            if close:
                close_conn(c)
                return
            idle.append(c)

    waiting = collections.deque()
    pos = 0
    end_deadline = None
    while True:
        now = time.monotonic()
        while pos < len(mine) and mono0 + mine[pos] / a.rate <= now:
            waiting.append(mine[pos])
            pos += 1
        while waiting:
            if idle:
                c = idle.pop()
            elif len(conns) < a.max_conns:
                try:
                    c = open_conn()
                except OSError:
                    errors["connect"] += 1
                    break
            else:
                break
            send(c, waiting.popleft())
        busy = st["busy"]
        if pos >= len(mine) and not waiting:
            if not busy:
                break
            if end_deadline is None:
                end_deadline = now + a.drain_timeout
            elif now > end_deadline:
                errors["unanswered"] += busy
                break
        if waiting and not idle and len(conns) >= a.max_conns:
            timeout = 0.05
        elif pos < len(mine):
            timeout = max(0.0, mono0 + mine[pos] / a.rate - time.monotonic())
        else:
            timeout = 0.05
        for key, _ in sel.select(min(timeout, 0.05)):
            on_readable(key.data)

    with open(a.out, "w") as f:
        f.writelines(results)
    for c in list(conns.values()):
        close_conn(c)
    sys.stderr.write("openloop[%d]: sent %d, errors %s, peak connections %d\n" %
                     (a.index, len(results), dict(errors), st["peak"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
