"""Overload (issue 5): many idle connections, slowloris headers and a publish flood at once, while
/healthz must keep answering fast, publishes must get an answer (202, or 503/429 — never hang)
and kzhook's memory must stay bounded.

Figures (healthz p50/p99 over fresh connections, RSS, publish throughput) are printed to stderr;
the bounds asserted are generous because other jobs load this 2-core machine: healthz p99 under
500 ms (the goal is 100 ms), RSS under 300 MB.
"""

import errno
import http.client
import json
import math
import os
import resource
import select
import socket
import sys
import threading
import time

from dlib import create_hook, uid
from kzlib import KzTestCase, binary, timeout_scale

HEALTHZ_P99_MAX = 0.5      # seconds (goal 0.1; see the module docstring)


def _sanitized():
    """True for an ASan build: its freed-memory quarantine alone may hold 256 MiB."""
    try:
        with open(binary(), "rb") as f:
            return b"AddressSanitizer" in f.read()
    except OSError:
        return False


# 300 MB for a normal build (measured peaks: 19-71 MB); an ASan build adds its quarantine,
# redzones and shadow memory (peaks of ~460 MB measured), valgrind its own bookkeeping.
RSS_MAX_KIB = (1024 if _sanitized() else 300) * 1024


def note(msg):
    sys.stderr.write("\n  [overload] %s\n" % msg)
    sys.stderr.flush()


def raise_nofile(want):
    """Raises this process's soft RLIMIT_NOFILE towards `want` (as far as the hard limit allows);
    kzhook, started afterwards, inherits it (and raises its own soft limit anyway)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def n_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    return v[max(0, min(len(v) - 1, int(math.ceil(p / 100.0 * len(v))) - 1))]


class Sampler:
    """Samples kzhook's VmRSS and descriptor count every 50 ms in a thread."""

    def __init__(self, pid):
        self.pid = pid
        self.rss_peak = proc_status(pid, "VmRSS")
        self.fd_peak = n_fds(pid)
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.rss_peak = max(self.rss_peak, proc_status(self.pid, "VmRSS"))
            self.fd_peak = max(self.fd_peak, n_fds(self.pid))

    def stop(self):
        self._stop.set()
        self._th.join(2)


def healthz_probe(host, port, timeout=5.0, source=None):
    """GET /healthz on a fresh connection: (seconds, status or error text)."""
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout,
                                       source_address=(source, 0) if source else None)
        try:
            c.request("GET", "/healthz")
            r = c.getresponse()
            body = r.read()
            st = r.status if body.strip() == b'{"status":"ok"}' or r.status != 200 else "bad body"
        finally:
            c.close()
    except (OSError, http.client.HTTPException) as e:
        st = type(e).__name__
    return time.monotonic() - t0, st


def probe_series(srv, n=100, interval=0.05):
    lat, bad = [], []
    for _ in range(n):
        dt, st = healthz_probe(srv.host, srv.port)
        lat.append(dt)
        if st != 200:
            bad.append(st)
        time.sleep(interval)
    return lat, bad


def open_idle(host, port, n):
    """n non-blocking connects (no waiting on each); returns the sockets."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            s.close()
            continue
        socks.append(s)
    return socks


def conn_states(socks, wait=1.0):
    """(established and open, closed/reset by the peer, not connected yet) after `wait` s."""
    time.sleep(wait)
    p = select.poll()
    by_fd = {}
    for s in socks:
        p.register(s.fileno(), select.POLLOUT | select.POLLIN | select.POLLERR | select.POLLHUP)
        by_fd[s.fileno()] = s
    events = dict(p.poll(0))
    est = closed = pending = 0
    for fd, s in by_fd.items():
        ev = events.get(fd, 0)
        if not ev & (select.POLLOUT | select.POLLERR | select.POLLHUP):
            pending += 1
        elif ev & (select.POLLERR | select.POLLHUP) or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            closed += 1
        elif ev & select.POLLIN:  # kzhook sends nothing unasked: readable means EOF or reset
            try:
                data = s.recv(1, socket.MSG_PEEK)
            except OSError:
                data = b""
            if data:
                est += 1
            else:
                closed += 1
        else:
            est += 1
    return est, closed, pending


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    socks[:] = []


class Slowloris:
    """n connections that send a request head one byte per `interval` s and never finish it."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: kzhook\r\nUser-Agent: slowloris\r\nX-Pad: "

    def __init__(self, host, port, n, interval=1.0, source=None):
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if source:
                s.bind((source, 0))
            s.settimeout(5)
            try:
                s.connect((host, port))
            except OSError:
                s.close()
                continue
            s.setblocking(False)
            self.socks.append(s)
        self.interval = interval
        self.sent = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self):
        k = 0
        while not self._stop.wait(self.interval):
            b = self.HEAD[k:k + 1] if k < len(self.HEAD) else b"a"
            k += 1
            alive = []
            for s in self.socks:
                try:
                    s.send(b)
                    alive.append(s)
                except OSError:
                    self.dropped += 1
                    s.close()
            self.socks = alive
            self.sent = k

    def stop(self):
        self._stop.set()
        self._th.join(5)
        close_all(self.socks)


class Overload(KzTestCase):
    timeout = 180

    def setUp(self):
        self.nofile = raise_nofile(20000)

    def test_10000_idle_connections(self):
        """10,000 idle connections held open (with --max-connections 12000): healthz on fresh
        connections stays fast, RSS stays bounded, and all of it is released afterwards."""
        n = min(10000, self.nofile - 600)
        if n < 3000:
            self.skipTest("RLIMIT_NOFILE hard limit %d too low" % self.nofile)
        srv = self.server(args=["--max-connections", str(n + 2000),
                                "--max-connections-per-ip", str(n + 2000)])
        pid = srv.proc.pid
        fd0, rss0 = n_fds(pid), proc_status(pid, "VmRSS")
        sampler = Sampler(pid)
        socks = open_idle(srv.host, srv.port, n)
        self.addCleanup(close_all, socks)
        try:
            wait_for_fds = time.monotonic() + 20 * timeout_scale()
            while n_fds(pid) < fd0 + n - 10 and time.monotonic() < wait_for_fds:
                time.sleep(0.1)
            held = n_fds(pid) - fd0
            est, closed, pending = conn_states(socks, 0.2)
            lat, bad = probe_series(srv)
        finally:
            sampler.stop()
        note("%d idle connections: kzhook holds %d (client sees %d established, %d closed, %d "
             "pending); healthz over %d fresh connections p50 %.1f ms p99 %.1f ms max %.1f ms; "
             "RSS %d -> peak %d KiB"
             % (n, held, est, closed, pending, len(lat), pct(lat, 50) * 1000, pct(lat, 99) * 1000,
                max(lat) * 1000, rss0, sampler.rss_peak))
        self.assertGreaterEqual(held, n - 10, "kzhook did not hold the idle connections")
        self.assertEqual(bad, [], "healthz failed while %d connections were idle" % n)
        self.assertLess(pct(lat, 99), HEALTHZ_P99_MAX * timeout_scale())
        self.assertLess(sampler.rss_peak, RSS_MAX_KIB)
        close_all(socks)
        # A leak never comes back, however long we wait; a machine busy with the rest of the suite
        # (ASan, PostgreSQL) once needed more than 10 s to see 10,000 closes (281 left at 10 s).
        wait_until_fds = time.monotonic() + 30 * timeout_scale()
        while n_fds(pid) > fd0 + 20 and time.monotonic() < wait_until_fds:
            time.sleep(0.1)
        self.assertLessEqual(n_fds(pid), fd0 + 20, "descriptors not released")
        self.assertTrue(srv.healthy())

    def test_connections_beyond_max_connections(self):
        """10,000 connects against the default --max-connections 4096: kzhook takes at most
        4096 of them (the rest wait in the kernel backlog or time out — refused, as the brief
        allows), does not fall over, and serves again at once when they go away."""
        n = min(10000, self.nofile - 600)
        # every client here is 127.0.0.1: let one address take every slot
        srv = self.server(args=["--max-connections-per-ip", "4096"])
        pid = srv.proc.pid
        fd0 = n_fds(pid)
        sampler = Sampler(pid)
        socks = open_idle(srv.host, srv.port, n)
        self.addCleanup(close_all, socks)
        try:
            est, closed, pending = conn_states(socks, 2.0)
            held = n_fds(pid) - fd0
        finally:
            sampler.stop()
        note("%d connects, --max-connections 4096: kzhook holds %d (peak fds %d); client sees %d "
             "established (incl. the kernel backlog), %d closed, %d never connected; RSS peak %d KiB"
             % (n, held, sampler.fd_peak, est, closed, pending, sampler.rss_peak))
        self.assertTrue(srv.running, "kzhook died under 10,000 connects")
        self.assertLessEqual(held, 4096 + 16, "kzhook holds more than --max-connections")
        self.assertGreater(held, 3000, "kzhook held far fewer than --max-connections")
        self.assertLess(sampler.rss_peak, RSS_MAX_KIB)
        close_all(socks)
        t0 = time.monotonic()
        deadline = t0 + 10 * timeout_scale()
        while not srv.healthy():
            self.assertLess(time.monotonic(), deadline, "healthz did not come back after the flood")
            time.sleep(0.05)
        note("healthz back %.2fs after the 10,000 clients closed" % (time.monotonic() - t0))

    def test_healthz_under_idle_slowloris_and_publish_flood(self):
        """3,000 idle connections + 1,000 slowloris connections (a header byte a second) + 8
        publishers posting 200-event arrays back to back for ~12 s (deliveries go to an endpoint
        that answers after 2 s, so the backlog grows): healthz p99 on fresh connections stays
        under the bound, every publish gets 202/503/429 within its 30 s timeout, RSS stays
        bounded, and kzhook is healthy afterwards."""
        srv = self.server(args=["--rate-limit", "0", "--delivery-timeout", "5s",
                                "--max-connections-per-ip", "4096"])
        rc = self.receiver()
        _, tok = srv.app_token()
        g = uid("g")
        create_hook(self, srv, tok, rc.url("/slow"), objectId=g)
        rc.script("/slow", [{"delay": 2}] * 100000)
        pid = srv.proc.pid
        rss0 = proc_status(pid, "VmRSS")
        sampler = Sampler(pid)
        idle = open_idle(srv.host, srv.port, 3000)
        self.addCleanup(close_all, idle)
        slow = Slowloris(srv.host, srv.port, 1000)
        self.addCleanup(slow.stop)
        stop = threading.Event()
        results, lock = [], threading.Lock()
        body_cache = {}

        def publisher(t):
            k = 0
            while not stop.is_set():
                evs = [{"eventType": "TextMessageCreated", "groupId": g,
                        "eventId": "fl-%s-%d-%d-%d" % (g, t, k, i), "data": {"i": i, "p": "x" * 200}}
                       for i in range(200)]
                body_cache[t] = len(json.dumps(evs))
                t0 = time.monotonic()
                try:
                    r = srv.admin("POST", "/v1/events", json=evs, timeout=30)
                    st = r.status
                except (OSError, http.client.HTTPException) as e:
                    st = type(e).__name__
                with lock:
                    results.append((st, time.monotonic() - t0))
                k += 1
        pubs = [threading.Thread(target=publisher, args=(t,), daemon=True) for t in range(8)]
        t_flood = time.monotonic()
        for p in pubs:
            p.start()
        try:
            time.sleep(1.0)
            lat, bad = probe_series(srv, n=100, interval=0.1)
            stop.set()
            for p in pubs:
                p.join(35 * timeout_scale())
            flood_s = time.monotonic() - t_flood
            est, closed, pending = conn_states(idle, 0)
        finally:
            stop.set()
            sampler.stop()
        statuses = {}
        for st, _ in results:
            statuses[st] = statuses.get(st, 0) + 1
        pub_lat = [dt for _, dt in results]
        accepted = statuses.get(202, 0) * 200
        note("3000 idle + %d slowloris (%d dropped, %d bytes each so far) + 8 publishers: %d "
             "publishes in %.1fs %r, %d events accepted (%.0f/s), publish latency p50 %.0f ms p99 "
             "%.0f ms; healthz p50 %.1f ms p99 %.1f ms max %.1f ms (%d failed); RSS %d -> peak %d "
             "KiB; idle still open %d"
             % (len(slow.socks), slow.dropped, slow.sent, len(results), flood_s, statuses, accepted,
                accepted / flood_s, pct(pub_lat, 50) * 1000, pct(pub_lat, 99) * 1000,
                pct(lat, 50) * 1000, pct(lat, 99) * 1000, max(lat) * 1000, len(bad), rss0,
                sampler.rss_peak, est))
        self.assertFalse(any(p.is_alive() for p in pubs), "a publish hung past its timeout")
        self.assertTrue(set(statuses) <= {202, 503, 429},
                        "publishes must get 202, 503 or 429: %r" % statuses)
        self.assertGreater(statuses.get(202, 0), 0, "nothing was accepted during the flood")
        self.assertEqual(bad, [], "healthz failed during the overload")
        self.assertLess(pct(lat, 99), HEALTHZ_P99_MAX * timeout_scale(),
                        "healthz p99 %.0f ms" % (pct(lat, 99) * 1000))
        self.assertLess(sampler.rss_peak, RSS_MAX_KIB, "RSS peak %d KiB" % sampler.rss_peak)
        slow.stop()
        close_all(idle)
        self.assertTrue(srv.healthy())
        self.assertTrue(srv.running)

    def test_slowloris_at_the_connection_limit_does_not_lock_out_everyone(self):
        """Found by this suite (a denial of service): connections that send a header byte every
        second are never closed (MHD's 30 s timeout counts idleness, not time to finish the
        head, and there is no per-client-address limit), so --max-connections of them lock every
        other client out for as long as the attacker keeps dribbling. Here 16 of them
        (--max-connections 16) from 127.0.0.1; a client from another address (127.0.0.2) must get
        /healthz within 45 s — a header deadline of up to 30 s, or a per-address connection
        limit, would let it in."""
        srv = self.server(args=["--max-connections", "16"])
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=2,
                                     source_address=("127.0.0.2", 0)).close()
        except OSError as e:
            self.skipTest("cannot use 127.0.0.2 as a client address: %s" % e)
        slow = Slowloris(srv.host, srv.port, 16)
        self.addCleanup(slow.stop)
        time.sleep(1.5)
        t0 = time.monotonic()
        tries, last = 0, None
        while time.monotonic() - t0 < 45:
            tries += 1
            dt, last = healthz_probe(srv.host, srv.port, timeout=1.0, source="127.0.0.2")
            if last == 200:
                break
            time.sleep(max(0.0, 1.0 - dt))
        waited = time.monotonic() - t0
        note("slowloris x16 at --max-connections 16: healthz from 127.0.0.2 %s after %.1fs "
             "(%d tries; slowloris connections still open: %d, dropped by kzhook: %d)"
             % ("answered" if last == 200 else "never answered (last: %s)" % last, waited, tries,
                len(slow.socks), slow.dropped))
        self.assertEqual(last, 200, "16 slowloris connections locked everyone out for %.0fs "
                         "(they are never closed while they dribble)" % waited)
