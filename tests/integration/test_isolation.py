"""No client can slow the API for others, or make it build huge answers (issue 11, API side).

  fan-out       POST /v1/events that would create more than --max-fanout deliveries (summed over
                an array) → 413 FanoutTooLarge, nothing stored
  quota         POST /v1/webhook when the application has --max-webhooks-per-app → 403
                QuotaExceeded, before any handshake; a create whose application is deleted
                during its handshake → 401
  large pages   a delivery-log page or a webhook list is cut before 4 MiB of output and carries
                nextCursor; following it yields every row exactly once
  handshakes    a callback that never answers holds no API worker: 16 such creates leave
                /healthz fast (p99 over 50 probes < 100 ms); one application has at most 4
                handshakes in flight, the 5th is 429 Throttled with Retry-After
"""

import socket
import sys
import threading
import time

from dlib import all_deliveries, create_hook, publish, uid, wait_until
from kzlib import KzTestCase, binary, timeout_scale, webhook_body

PAGE_MAX = 4 * 1024 * 1024


def _status_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _asan():
    """True for a sanitizer build (its quarantine keeps freed memory resident)."""
    try:
        with open(binary(), "rb") as f:
            return b"AddressSanitizer" in f.read()
    except OSError:
        return False


def note(msg):
    sys.stderr.write("\n  [isolation] %s\n" % msg)
    sys.stderr.flush()


class SilentReceiver:
    """Accepts TCP connections and never answers (nor reads): a callback stuck forever."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = False
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def url(self, path="/hang"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()


def in_threads(fns):
    """Runs each fn in its own thread; returns the started threads and a list filled with
    (index, result or exception)."""
    out = []

    def run(i, fn):
        try:
            out.append((i, fn()))
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out.append((i, e))

    ts = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    return ts, out


def healthz_latencies(srv, n=50):
    """n sequential GET /healthz, each on a new connection; latencies in ms (a failed or slow
    probe counts as its time up to the 10 s client timeout)."""
    lat = []
    for _ in range(n):
        t0 = time.monotonic()
        try:
            r = srv.req("GET", "/healthz", timeout=10)
            ok = r.status == 200
        except OSError:
            ok = False
        ms = (time.monotonic() - t0) * 1000
        lat.append(ms if ok else max(ms, 10000.0))
    return lat


def p99(xs):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


class Fanout(KzTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=["--max-fanout", "6", "--rate-limit", "0"])
        cls.rc = cls.class_receiver()

    def test_publish_over_max_fanout_is_413_and_stores_nothing(self):
        app, tok = self.srv.app_token()
        g = uid("g")
        hooks = [create_hook(self, self.srv, tok, self.rc.url("/fan%d" % i), objectId=g)[0]
                 for i in range(3)]
        ev = lambda k: {"eventType": "TextMessageCreated", "groupId": g, "eventId": "%s-%d" % (g, k)}
        # 3 events x 3 webhooks = 9 deliveries > 6
        r = self.srv.admin("POST", "/v1/events", json=[ev(0), ev(1), ev(2)])
        self.assertError(r, 413, "FanoutTooLarge")
        self.assertIn("--max-fanout", r.json["message"])
        for wid in hooks:
            self.assertEqual(all_deliveries(self.srv, tok, wid), [], "a refused publish stored rows")
        # a single event over the limit alone, too
        more = [create_hook(self, self.srv, tok, self.rc.url("/fan%d" % i), objectId=g)[0]
                for i in range(3, 7)]
        r = self.srv.admin("POST", "/v1/events", json=ev(9))
        self.assertError(r, 413, "FanoutTooLarge")
        for wid in more:
            self.srv.req("DELETE", "/v1/webhook/" + wid, token=tok)
        # exactly the limit is accepted, and the refused eventIds were not taken
        b = publish(self.srv, [ev(0), ev(1)])
        self.assertEqual([e["deliveries"] for e in b["events"]], [3, 3])
        for wid in hooks:
            self.assertEqual(len(all_deliveries(self.srv, tok, wid)), 2)


class Quota(KzTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=["--max-webhooks-per-app", "3", "--rate-limit", "0",
                                         "--validation-timeout", "5s"])
        cls.rc = cls.class_receiver()

    def test_one_more_than_the_quota_is_403_before_any_handshake(self):
        app, tok = self.srv.app_token()
        p = "/" + uid("quota")
        ids = [create_hook(self, self.srv, tok, self.rc.url(p))[0] for _ in range(3)]
        self.assertEqual(self.rc.count(p, handshake=True), 3)
        r = self.srv.create_webhook(tok, webhook_body(self.rc.url(p)))
        self.assertError(r, 403, "QuotaExceeded")
        self.assertIn("--max-webhooks-per-app", r.json["message"])
        self.assertEqual(self.rc.count(p, handshake=True), 3, "a refused create ran a handshake")
        self.assertEqual(len(self.srv.list_webhooks(tok)), 3)
        # another application is not affected
        _, tok2 = self.srv.app_token()
        create_hook(self, self.srv, tok2, self.rc.url(p))
        # room again after a delete
        self.assertEqual(self.srv.req("DELETE", "/v1/webhook/" + ids[0], token=tok).status, 200)
        create_hook(self, self.srv, tok, self.rc.url(p))
        self.assertError(self.srv.create_webhook(tok, webhook_body(self.rc.url(p))), 403,
                         "QuotaExceeded")

    def test_application_deleted_during_the_handshake_is_401(self):
        app, tok = self.srv.app_token()
        p = "/" + uid("gone")
        self.rc.handshake(p, "echo", delay=1.5)
        ts, out = in_threads([lambda: self.srv.create_webhook(tok, webhook_body(self.rc.url(p)))])
        self.rc.wait_for(1, path=p, handshake=True)
        r = self.srv.admin("DELETE", "/admin/v1/applications/" + app["applicationId"])
        self.assertEqual(r.status, 200, r.raw)
        ts[0].join(10 * timeout_scale())
        self.assertEqual(len(out), 1)
        r = out[0][1]
        self.assertNotIsInstance(r, Exception)
        self.assertError(r, 401, None, "create whose application was deleted meanwhile")
        self.assertEqual(r.json["errorCategoryKey"], "AuthException")


class LargePages(KzTestCase):
    timeout = 180

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=["--rate-limit", "0", "--retry-schedule", "1h"])
        cls.rc = cls.class_receiver()

    def test_delivery_page_is_cut_at_4_mib_with_next_cursor(self):
        app, tok = self.srv.app_token()
        g = uid("g")
        p = "/" + uid("big")
        wid = create_hook(self, self.srv, tok, self.rc.url(p), objectId=g)[0]
        n = 250
        # every attempt fails with 4 KiB of control bytes: each row's lastResponse is ~24 KiB
        # of JSON (\u0001 escapes), so 250 rows are ~6 MiB
        self.rc.script(p, [{"status": 500, "body": b"\x01" * 4096}] * n)
        publish(self.srv, [{"eventType": "TextMessageCreated", "groupId": g} for _ in range(n)])
        self.rc.wait_for(n, path=p, handshake=False, timeout=60)

        def attempted():
            r = self.srv.req("GET", "/v1/webhook/%s/deliveries?limit=1000" % wid, token=tok)
            rows = []
            cursor = None
            while True:
                q = "/v1/webhook/%s/deliveries?limit=1000" % wid + ("&cursor=" + cursor if cursor else "")
                r = self.srv.req("GET", q, token=tok)
                rows += r.json["deliveries"]
                cursor = r.json["nextCursor"]
                if not cursor:
                    break
            return all(d["attempts"] >= 1 and d["lastResponse"] for d in rows) and len(rows) == n

        wait_until(attempted, timeout=30, interval=0.5, msg="every delivery attempted once")
        r = self.srv.req("GET", "/v1/webhook/%s/deliveries?limit=1000" % wid, token=tok)
        self.assertEqual(r.status, 200)
        note("first page: %d rows, %d bytes, nextCursor %r"
             % (len(r.json["deliveries"]), len(r.raw), r.json["nextCursor"]))
        self.assertLessEqual(len(r.raw), PAGE_MAX + 64 * 1024)
        self.assertLess(len(r.json["deliveries"]), n)
        self.assertIsInstance(r.json["nextCursor"], str)
        self.assertEqual(r.json["nextCursor"], r.json["deliveries"][-1]["deliveryId"])
        rows = all_deliveries(self.srv, tok, wid)
        ids = [d["deliveryId"] for d in rows]
        self.assertEqual(len(ids), n)
        self.assertEqual(len(set(ids)), n, "a row came twice across pages")
        # a small limit still pages by the limit
        r = self.srv.req("GET", "/v1/webhook/%s/deliveries?limit=10" % wid, token=tok)
        self.assertEqual(len(r.json["deliveries"]), 10)
        self.assertEqual(r.json["nextCursor"], r.json["deliveries"][-1]["deliveryId"])
        self.slow_readers_hold_bounded_memory(tok, wid)

    def slow_readers_hold_bounded_memory(self, tok, wid):
        """40 clients ask for the biggest page (limit=1000) and do not read it: the server holds
        at most about one page (<= 4 MiB) per connection. Before pages were cut, this page was
        6 MiB, held twice per connection (~500 MB for 40 readers; 24.9 MB pages took 2 GB)."""
        pid = self.srv.proc.pid
        readers = 40
        page_kib = (PAGE_MAX + 64 * 1024) // 1024
        # per reader: one page, plus the MHD read buffer; ASan keeps freed memory in quarantine
        budget_kib = readers * (page_kib + 512) + (300 * 1024 if _asan() else 32 * 1024)
        base = _status_kib(pid, "VmRSS")
        req = ("GET /v1/webhook/%s/deliveries?limit=1000 HTTP/1.1\r\nHost: x\r\n"
               "accessToken: %s\r\n\r\n" % (wid, tok)).encode()
        socks = []
        peak = base
        try:
            for _ in range(readers):
                c = socket.create_connection((self.srv.host, self.srv.port), timeout=10)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c.sendall(req)
                socks.append(c)
            deadline = time.time() + 5 * timeout_scale()
            while time.time() < deadline:
                peak = max(peak, _status_kib(pid, "VmRSS"))
                time.sleep(0.05)
            # the server still answers others while 40 readers stall
            h = self.srv.req("GET", "/healthz", timeout=5)
            self.assertEqual(h.status, 200)
        finally:
            for c in socks:
                c.close()
        note("40 slow readers of a %d KiB page: RSS %d -> peak %d KiB (+%d KiB, budget %d KiB)"
             % (page_kib, base, peak, peak - base, budget_kib))
        self.assertLess(peak - base, budget_kib)

    def test_webhook_list_is_cut_at_4_mib_with_next_cursor(self):
        app, tok = self.srv.app_token()
        p = "/" + uid("many")
        n = 200
        # 4 KiB of control bytes in callBackContext: ~24 KiB of JSON per webhook, ~5 MiB in all
        ctx = "\x01" * 4096
        for _ in range(n):
            create_hook(self, self.srv, tok, self.rc.url(p), callBackContext=ctx)
        r = self.srv.req("GET", "/v1/webhook", token=tok)
        self.assertEqual(r.status, 200, r.raw[:300])
        note("webhook list first page: %d webhooks, %d bytes, nextCursor %r"
             % (len(r.json["webhooks"]), len(r.raw), r.json.get("nextCursor")))
        self.assertLessEqual(len(r.raw), PAGE_MAX + 64 * 1024)
        self.assertLess(len(r.json["webhooks"]), n)
        ids = [w["id"] for w in r.json["webhooks"]]
        cursor = r.json.get("nextCursor")
        self.assertIsInstance(cursor, str)
        while cursor:
            r = self.srv.req("GET", "/v1/webhook?cursor=" + cursor, token=tok)
            self.assertEqual(r.status, 200, r.raw[:300])
            ids += [w["id"] for w in r.json["webhooks"]]
            cursor = r.json.get("nextCursor")
        self.assertEqual(len(ids), n)
        self.assertEqual(len(set(ids)), n)
        # a list that fits has no nextCursor (the Kaizala shape is unchanged)
        _, tok2 = self.srv.app_token()
        create_hook(self, self.srv, tok2, self.rc.url(p))
        r = self.srv.req("GET", "/v1/webhook", token=tok2)
        self.assertEqual(list(r.json), ["webhooks"])


class SlowHandshakes(KzTestCase):
    timeout = 120

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=["--rate-limit", "0", "--allow-http-callbacks"],
                                   validation_timeout="5s")
        cls.rc = cls.class_receiver()

    def setUp(self):
        self.silent = SilentReceiver()
        self.addCleanup(self.silent.stop)

    def test_sixteen_hanging_handshakes_leave_healthz_fast(self):
        toks = [self.srv.app_token()[1] for _ in range(4)]
        base = healthz_latencies(self.srv, 20)
        fns = [lambda t=t: self.srv.create_webhook(t, webhook_body(self.silent.url()), timeout=30)
               for t in toks for _ in range(4)]
        t0 = time.monotonic()
        ts, out = in_threads(fns)
        try:
            wait_until(lambda: len(self.silent.conns) >= 16, timeout=3, msg="16 handshakes connected")
        except AssertionError:
            pass  # measured anyway: the figure is the point (an old binary holds only 4)
        connected = len(self.silent.conns)
        lat = healthz_latencies(self.srv, 50)
        during = time.monotonic() - t0
        note("healthz with 16 hanging handshakes: p99 %.1f ms, max %.1f ms, median %.1f ms "
             "(idle p99 %.1f ms); probes took %.2f s; %d handshakes had connected"
             % (p99(lat), max(lat), sorted(lat)[len(lat) // 2], p99(base), during, connected))
        self.assertEqual(connected, 16)
        self.assertLess(during, 5.0, "the probes outlasted the handshakes: nothing was measured")
        self.assertLess(p99(lat), 100.0 * timeout_scale())
        for t in ts:
            t.join(15 * timeout_scale())
        self.assertEqual(len(out), 16)
        for _, r in out:
            self.assertNotIsInstance(r, Exception)
            self.assertError(r, 400, "CallbackValidationFailed")
            self.assertIn("did not answer within 5000 ms", r.json["message"])
        for t in toks:
            self.assertEqual(self.srv.list_webhooks(t), [])

    def test_fifth_handshake_of_one_application_is_429(self):
        _, tok = self.srv.app_token()
        fns = [lambda: self.srv.create_webhook(tok, webhook_body(self.silent.url()), timeout=30)
               for _ in range(4)]
        ts, out = in_threads(fns)
        wait_until(lambda: len(self.silent.conns) >= 4, timeout=5, msg="4 handshakes connected")
        r = self.srv.create_webhook(tok, webhook_body(self.rc.url("/fifth")))
        self.assertError(r, 429, "Throttled")
        self.assertTrue(r.headers.get("retry-after", "").isdigit(), r.headers)
        self.assertEqual(self.rc.count("/fifth", handshake=True), 0)
        # another application is not held back
        _, tok2 = self.srv.app_token()
        create_hook(self, self.srv, tok2, self.rc.url("/other"))
        for t in ts:
            t.join(15 * timeout_scale())
        for _, r in out:
            self.assertError(r, 400, "CallbackValidationFailed")
        # the slots are free again
        create_hook(self, self.srv, tok, self.rc.url("/fifth"))

    def test_put_with_a_new_url_runs_its_handshake_off_the_workers(self):
        _, tok = self.srv.app_token()
        wid = create_hook(self, self.srv, tok, self.rc.url("/put"))[0]
        ts, out = in_threads([lambda: self.srv.req("PUT", "/v1/webhook/" + wid, token=tok,
                                                   json={"callBackUrl": self.silent.url()},
                                                   timeout=30) for _ in range(4)])
        wait_until(lambda: len(self.silent.conns) >= 4, timeout=5, msg="4 handshakes connected")
        r = self.srv.req("PUT", "/v1/webhook/" + wid, token=tok, json={"callBackUrl": self.rc.url("/put2")})
        self.assertError(r, 429, "Throttled")
        for t in ts:
            t.join(15 * timeout_scale())
        for _, r in out:
            self.assertError(r, 400, "CallbackValidationFailed")
        r = self.srv.req("PUT", "/v1/webhook/" + wid, token=tok, json={"callBackUrl": self.rc.url("/put2")})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["callbackUrl"], self.rc.url("/put2"))
        self.assertEqual(self.srv.get_webhook(tok, wid).json["callbackUrl"], self.rc.url("/put2"))


class HandshakeShutdown(KzTestCase):
    timeout = 60

    def test_sigterm_answers_waiting_creates_and_exits_clean(self):
        silent = SilentReceiver()
        self.addCleanup(silent.stop)
        srv = self.server(args=["--rate-limit", "0", "--allow-http-callbacks"],
                          validation_timeout="30s")
        _, tok = srv.app_token()
        ts, out = in_threads([lambda: srv.create_webhook(tok, webhook_body(silent.url()), timeout=30)
                              for _ in range(4)])
        wait_until(lambda: len(silent.conns) >= 4, timeout=5, msg="4 handshakes connected")
        t0 = time.monotonic()
        self.assertEqual(srv.stop(), 0)  # also: no allocation left live
        took = time.monotonic() - t0
        for t in ts:
            t.join(10 * timeout_scale())
        self.assertEqual(len(out), 4)
        for _, r in out:
            self.assertNotIsInstance(r, Exception)
            self.assertError(r, 503, "Unavailable")
            self.assertIn("shutting down", r.json["message"])
        self.assertLess(took, 5.0, "the stop waited for the handshakes' 30 s timeout")
