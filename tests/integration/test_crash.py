"""Crash safety (README "Publishing and delivery"): `kill -9` while publishing and while retries are pending
loses no accepted event; duplicates stay bounded by what was in flight."""

import http.client
import sys
import threading
import time

from dlib import DReceiver, all_deliveries, create_hook, uid, wait_until, webhook_active
from kzlib import KzTestCase, timeout_scale

THREADS = 4
BATCHES = 15          # per thread
BATCH = 50            # events per POST → 4 * 15 * 50 = 3000 events
FIRST_KILL_AT = 900   # accepted events
FAIL_FIRST = 400      # failing answers on /a before the second kill
PACE = 0.1            # seconds between a thread's batches: the second crash also hits publishing
DUP_BOUND = 1100      # two crashes, at most 512 attempts in flight each


class Crash(KzTestCase):
    timeout = 200  # about 10 s on SQLite; on PostgreSQL leases of a killed process expire after 60 s+

    def test_kill9_loses_no_accepted_event(self):
        t_start = time.monotonic()
        srv = self.server(args=["--retry-schedule", ",".join(["500ms"] * 8), "--rate-limit", "0",
                                "--delivery-timeout", "5s"])
        # SQLite hands in-flight rows back at start; PostgreSQL when their lease (timeout + 60 s) ends
        lease_wait = 70 if srv.db.startswith(("postgres://", "postgresql://")) else 0
        rc = DReceiver()
        self.addCleanup(rc.stop)
        app, tok = srv.app_token()
        gc, ac = uid("gc"), uid("ac")
        wa, _, _ = create_hook(self, srv, tok, rc.url("/a"), objectId=gc, objectType="Group",
                               eventTypes=["TextMessageCreated", "SurveyResponse"])
        wb, _, _ = create_hook(self, srv, tok, rc.url("/b"), objectId=ac, objectType="Action",
                               eventTypes=["SurveyResponse"])
        run = uid("r")

        lock = threading.Lock()
        accepted = {}      # eventId -> set of paths it must reach
        problems = []
        retries = [0]

        def batch(t, k):
            evs = []
            for i in range(BATCH):
                ev = {"eventId": "%s-%d-%d-%d" % (run, t, k, i), "groupId": gc,
                      "data": {"t": t, "k": k, "i": i}}
                if i % 2:
                    ev.update(eventType="SurveyResponse", actionId=ac)
                else:
                    ev["eventType"] = "TextMessageCreated"
                evs.append(ev)
            return evs

        def publisher(t):
            for k in range(BATCHES):
                evs = batch(t, k)
                deadline = time.monotonic() + 40 * timeout_scale()
                while True:
                    if time.monotonic() > deadline:
                        problems.append("thread %d batch %d: no 202 for 40 s" % (t, k))
                        return
                    try:
                        r = srv.admin("POST", "/v1/events", json=evs, timeout=10)
                    except (OSError, http.client.HTTPException):
                        with lock:
                            retries[0] += 1
                        time.sleep(0.05)
                        continue  # server down: publish the same batch again (idempotent)
                    if r.status == 503:
                        time.sleep(0.05)
                        continue
                    if r.status != 202:
                        problems.append("thread %d batch %d: %d %r" % (t, k, r.status, r.raw[:200]))
                        return
                    got = r.json["events"]
                    want = [{"eventId": e["eventId"], "deliveries": 2 if "actionId" in e else 1}
                            for e in evs]
                    if got != want:
                        problems.append("thread %d batch %d: answer %r" % (t, k, got[:3]))
                    with lock:
                        for e in evs:
                            accepted[e["eventId"]] = {"/a", "/b"} if "actionId" in e else {"/a"}
                    break
                time.sleep(PACE)

        def n_accepted():
            with lock:
                return len(accepted)

        threads = [threading.Thread(target=publisher, args=(t,), daemon=True) for t in range(THREADS)]
        for th in threads:
            th.start()

        # crash 1: while publishing
        wait_until(lambda: n_accepted() >= FIRST_KILL_AT or not any(th.is_alive() for th in threads),
                   30, interval=0.005, msg="%d accepted events" % FIRST_KILL_AT)
        srv.kill9()
        kill1_at, kill1_t = n_accepted(), time.monotonic() - t_start
        srv.start()

        # crash 2: with failed attempts waiting for their retry, publishing still going on
        rc.fail_first("/a", FAIL_FIRST)
        wait_until(lambda: rc.failed_count("/a") >= FAIL_FIRST // 2, 20, interval=0.005,
                   msg="failed attempts on /a")
        srv.kill9()
        kill2_at, kill2_t = n_accepted(), time.monotonic() - t_start
        failed_at_kill = rc.failed_count("/a")
        srv.start()

        for th in threads:
            th.join(60 * timeout_scale())
        self.assertFalse(problems, problems[:5])
        self.assertFalse(any(th.is_alive() for th in threads), "publishers did not finish")
        with lock:
            acc = dict(accepted)
        self.assertEqual(len(acc), THREADS * BATCHES * BATCH)

        def missing():
            reached = {(q.path, q.headers.get("webhook-id")) for q in rc.ok_requests()}
            return [(p, e) for e, paths in acc.items() for p in paths if (p, e) not in reached]
        try:
            wait_until(lambda: not missing(), 40 + lease_wait, interval=0.2,
                       msg="every accepted event delivered")
        except AssertionError:
            m = missing()
            self.fail("%d accepted (eventId, path) pairs never reached the receiver, e.g. %r"
                      % (len(m), m[:10]))

        oks = rc.ok_requests()
        counts = {}
        for q in oks:
            key = (q.path, q.headers.get("webhook-id"))
            counts[key] = counts.get(key, 0) + 1
        phantom = [k for k in counts if k[1] not in acc or k[0] not in acc[k[1]]]
        self.assertFalse(phantom, "deliveries of events never accepted / not matching: %r" % phantom[:10])
        dups = sum(n - 1 for n in counts.values())
        sys.stderr.write("\n  crash: %d events accepted (%d deliveries), killed at %d (%.1fs) and %d "
                         "(%.1fs) accepted (%d failed attempts queued), %d publish retries, "
                         "%d duplicate deliveries, %d requests in all, %.1fs\n"
                         % (len(acc), sum(len(p) for p in acc.values()), kill1_at, kill1_t, kill2_at,
                            kill2_t, failed_at_kill, retries[0], dups, len(rc.requests(method="POST")),
                            time.monotonic() - t_start))
        self.assertLess(dups, DUP_BOUND, "duplicates beyond what can be in flight at two crashes")

        # the store agrees: nothing pending or dead, both webhooks still active
        for wid in (wa, wb):
            wait_until(lambda: all_deliveries(srv, tok, wid, status="pending") == [], 10,
                       interval=0.2, msg="no pending deliveries left")
            self.assertEqual(all_deliveries(srv, tok, wid, status="dead"), [])
            self.assertIs(webhook_active(srv, tok, wid), True)
        n_a = len(all_deliveries(srv, tok, wa, status="succeeded"))
        n_b = len(all_deliveries(srv, tok, wb, status="succeeded"))
        self.assertEqual(n_a, len(acc))
        self.assertEqual(n_b, sum(1 for p in acc.values() if "/b" in p))
