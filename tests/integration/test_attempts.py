"""Attempt history, retry, test events and the disable rule (README "Attempt history, retry and
test events"; docs/openapi.json getDelivery, retryDelivery, testWebhook), and the operator's
`kzhook webhook list|get|test|retry|delivery`. Every point runs on SQLite and, with KZ_TEST_DB,
on PostgreSQL."""

import json
import time

from dlib import DReceiver, publish, signature_ok, uid, wait_until, webhook_active
from kzlib import KzTestCase, now_ms, run_cli
from test_delivery import DeliveryMixin

SCHEDULE = ["--retry-schedule", "100ms,100ms", "--rate-limit", "0"]


class PoisonReceiver(DReceiver):
    """Answers 400 to any POST whose body contains "poison", and as scripted otherwise."""

    def _next_response(self, path):
        req = getattr(self._tl, "req", None)
        if req is not None and req.method == "POST" and b"poison" in req.body:
            with self._lock:
                self._outcomes.append((req, 400))
            return {"status": 400, "body": b"cannot parse that one"}
        return super()._next_response(path)


class AttemptsBase(DeliveryMixin, KzTestCase):
    timeout = 90

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=SCHEDULE)
        cls.rc = PoisonReceiver()
        cls.addClassCleanup(cls.rc.stop)

    def setUp(self):
        self.app, self.tok = self.srv.app_token()
        self.p = "/" + self._testMethodName

    def detail(self, wid, did, tok=None, status=200):
        r = self.srv.req("GET", "/v1/webhook/%s/deliveries/%s" % (wid, did), token=tok or self.tok)
        self.assertEqual(r.status, status, r.raw[:500])
        return r.json

    def retry(self, wid, did, tok=None):
        return self.srv.req("POST", "/v1/webhook/%s/deliveries/%s/retry" % (wid, did),
                            token=tok or self.tok)

    def send_test(self, wid, body=None, raw=None, tok=None):
        return self.srv.req("POST", "/v1/webhook/%s/test" % wid, json=body, raw=raw,
                            token=tok or self.tok)

    def send(self, h, **kw):
        ev = {"eventType": "TextMessageCreated", "groupId": h["objectId"], "eventId": uid("ev"),
              "data": {"n": 1}}
        ev.update(kw)
        publish(self.srv, ev)
        return ev

    def put_active(self, wid, flag):
        r = self.srv.req("PUT", "/v1/webhook/" + wid, json={"Active": flag}, token=self.tok)
        self.assertEqual(r.status, 200, r.raw[:300])


class History(AttemptsBase):
    def test_detail_has_event_exact_body_and_every_attempt(self):
        h = self.hook(self.p)
        self.rc.script(self.p, [{"status": 500, "body": b"busy \xff now"}, 503])
        t0 = now_ms()
        ev = self.send(h, data={"big": 12345678901234567890, "s": "\u00e9"}, fromUser="+1555")
        row = self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        t1 = now_ms()
        d = self.detail(h["id"], row["deliveryId"])
        got = self.by_event(self.p, ev["eventId"])
        self.assertEqual(len(got), 3)
        # "body" is the exact bytes every attempt sent
        for q in got:
            self.assertEqual(d["body"].encode(), q.body)
        self.assertEqual(d["event"]["eventId"], ev["eventId"])
        self.assertEqual(d["event"]["eventType"], "TextMessageCreated")
        self.assertEqual(d["event"]["groupId"], h["objectId"])
        self.assertEqual(d["event"]["fromUser"], "+1555")
        self.assertEqual(d["event"]["data"]["s"], "\u00e9")
        for k in ("deliveryId", "eventId", "eventType", "status", "lastStatusCode"):
            self.assertEqual(d[k], row[k], k)
        a = d["attempts"]
        self.assertEqual([x["statusCode"] for x in a], [500, 503, 200])
        self.assertEqual([x["error"] for x in a], ["HTTP 500", "HTTP 503", None])
        self.assertEqual(a[0]["response"], "busy \ufffd now")  # cleaned as stored
        self.assertEqual(a[2]["response"], "ok")
        ats = [x["at"] for x in a]
        self.assertEqual(ats, sorted(ats))
        self.assertTrue(t0 <= ats[0] <= t1 and ats[-1] <= t1, (t0, ats, t1))
        self.assertGreaterEqual(ats[1] - ats[0], 90)  # the 100 ms schedule between them
        for x in a:
            self.assertTrue(0 <= x["durationMs"] < 5000, x)

    def test_transport_failure_has_null_status_and_long_response_is_cut(self):
        h = self.hook(self.p)
        self.rc.script(self.p, ["reset", {"status": 200, "body": b"x" * 10000}])
        ev = self.send(h)
        row = self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        a = self.detail(h["id"], row["deliveryId"])["attempts"]
        self.assertEqual(len(a), 2)
        self.assertIn(a[0]["statusCode"], (200, None))  # headers came, the body was cut
        self.assertTrue(a[0]["error"])
        self.assertEqual(a[1]["response"], "x" * 4096)

    def test_other_webhook_other_app_and_bad_ids_are_404(self):
        h1, h2 = self.hook(self.p + "/1"), self.hook(self.p + "/2")
        ev = self.send(h1)
        row = self.wait_row(h1["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        self.detail(h2["id"], row["deliveryId"], status=404)
        _, other = self.srv.app_token()
        self.detail(h1["id"], row["deliveryId"], tok=other, status=404)
        for bad in ("0", "abc", "-1", "99999999999", "1" * 30):
            self.detail(h1["id"], bad, status=404)
        self.assertEqual(self.retry(h2["id"], row["deliveryId"]).status, 404)
        self.assertEqual(self.retry(h1["id"], row["deliveryId"], tok=other).status, 404)
        self.assertEqual(self.send_test(h1["id"], {}, tok=other).status, 404)
        r = self.srv.req("GET", "/v1/webhook/%s/deliveries/%s" % (h1["id"], row["deliveryId"]))
        self.assertEqual(r.status, 401)
        r = self.srv.req("DELETE", "/v1/webhook/%s/deliveries/%s/retry" % (h1["id"], row["deliveryId"]),
                         token=self.tok)
        self.assertEqual(r.status, 405)

    def test_attempt_history_survives_replay_and_goes_with_the_webhook(self):
        h = self.hook(self.p)
        self.rc.script(self.p, [500, 500, 500])
        ev = self.send(h)
        row = self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "dead")
        wait_until(lambda: not webhook_active(self.srv, self.tok, h["id"]), msg="disabled")
        self.put_active(h["id"], True)
        r = self.srv.req("POST", "/v1/webhook/%s/replay" % h["id"], json={"since": 0}, token=self.tok)
        self.assertEqual(r.status, 202)
        self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        d = self.detail(h["id"], row["deliveryId"])
        self.assertEqual([x["statusCode"] for x in d["attempts"]], [500, 500, 500, 200])
        r = self.srv.req("DELETE", "/v1/webhook/" + h["id"], token=self.tok)
        self.assertEqual(r.status, 200)
        self.detail(h["id"], row["deliveryId"], status=404)


class Retry(AttemptsBase):
    def test_dead_delivery_retried_after_reenable(self):
        h = self.hook(self.p)
        self.rc.script(self.p, [500, 500, 500])
        ev = self.send(h)
        row = self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "dead")
        wait_until(lambda: not webhook_active(self.srv, self.tok, h["id"]), msg="disabled")
        r = self.retry(h["id"], row["deliveryId"])
        self.assertEqual(r.status, 409, r.raw)
        self.assertEqual(r.json["errorCode"], "Conflict")
        self.assertEqual(self.log_row(h["id"], ev["eventId"])["status"], "dead")  # nothing changed
        self.put_active(h["id"], True)
        r = self.retry(h["id"], row["deliveryId"])
        self.assertEqual((r.status, r.json), (202, {}))
        self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        self.assertEqual(len(self.by_event(self.p, ev["eventId"])), 4)
        self.assertTrue(webhook_active(self.srv, self.tok, h["id"]))

    def test_retry_of_succeeded_sends_again(self):
        h = self.hook(self.p)
        ev = self.send(h)
        row = self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        self.assertEqual(self.retry(h["id"], row["deliveryId"]).status, 202)
        wait_until(lambda: len(self.by_event(self.p, ev["eventId"])) == 2, msg="sent again")
        self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        self.assertEqual([x["statusCode"] for x in self.detail(h["id"], row["deliveryId"])["attempts"]],
                         [200, 200])

    def test_retry_of_inflight_is_accepted_and_changes_nothing(self):
        h = self.hook(self.p)
        self.rc.script(self.p, [{"status": 200, "delay": 1.5}])
        ev = self.send(h)
        wait_until(lambda: self.by_event(self.p, ev["eventId"]) or None, msg="attempt started")
        row = self.log_row(h["id"], ev["eventId"])
        self.assertEqual(self.retry(h["id"], row["deliveryId"]).status, 202)
        self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        time.sleep(0.5)
        self.assertEqual(len(self.by_event(self.p, ev["eventId"])), 1)
        self.assertEqual(len(self.detail(h["id"], row["deliveryId"])["attempts"]), 1)


class RetryPending(AttemptsBase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=["--retry-schedule", "1h", "--rate-limit", "0"])
        cls.rc = PoisonReceiver()
        cls.addClassCleanup(cls.rc.stop)

    def test_pending_delivery_is_due_now(self):
        h = self.hook(self.p)
        self.rc.script(self.p, [500])
        ev = self.send(h)
        row = self.wait_row(h["id"], ev["eventId"],
                            lambda r: r["status"] == "pending" and r["attempts"] == 1)
        self.assertGreater(row["nextAttemptAt"], now_ms() + 1800 * 1000)
        self.assertEqual(self.retry(h["id"], row["deliveryId"]).status, 202)
        row = self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded", timeout=5)
        self.assertEqual(row["attempts"], 2)  # the same series: a pending retry keeps its count


class TestEvents(AttemptsBase):
    def test_test_event_goes_through_the_pipeline_to_that_webhook_only(self):
        g = uid("g")
        h = self.hook(self.p, objectId=g, eventTypes=["SurveyResponse", "TextMessageCreated"])
        other = self.hook(self.p + "/other", objectId=g,
                          eventTypes=["SurveyResponse", "TextMessageCreated"])
        self.rc.script(self.p, [500])
        r = self.send_test(h["id"])  # no body: every default
        self.assertEqual(r.status, 202, r.raw)
        self.assertRegex(r.json["eventId"], r"^test_")
        eid, did = r.json["eventId"], r.json["deliveryId"]
        row = self.wait_row(h["id"], eid, lambda r: r["status"] == "succeeded")
        self.assertEqual(row["deliveryId"], did)
        self.assertEqual(row["eventType"], "SurveyResponse")  # the first it lists
        got = self.by_event(self.p, eid)
        self.assertEqual(len(got), 2)  # retried like any other
        for q in got:
            self.assertTrue(signature_ok(h["secret"], q))
            b = json.loads(q.body)
            self.assertEqual((b["subscriptionId"], b["eventId"], b["objectId"], b["data"]),
                             (h["id"], eid, g, {}))
        d = self.detail(h["id"], did)
        self.assertEqual(d["event"]["groupId"], g)
        self.assertEqual(d["body"].encode(), got[0].body)
        r = self.send_test(h["id"], {"eventType": "TextMessageCreated", "data": {"hello": [1, 2]}})
        self.assertEqual(r.status, 202, r.raw)
        eid2 = r.json["eventId"]
        q = wait_until(lambda: self.by_event(self.p, eid2), msg="second test event")[0]
        b = json.loads(q.body)
        self.assertEqual((b["eventType"], b["data"]), ("TextMessageCreated", {"hello": [1, 2]}))
        time.sleep(0.3)
        self.assertEqual(self.posts(self.p + "/other"), [])
        self.assertEqual(self.log(other["id"]), [])

    def test_bad_test_requests_name_the_field_and_store_nothing(self):
        h = self.hook(self.p, eventTypes=["TextMessageCreated"])
        cases = [
            ({"eventType": "SurveyResponse"}, "eventType"),
            ({"eventType": "NoSuchType"}, "eventType"),
            ({"eventType": 5}, "eventType"),
            ({"data": [1]}, "data"),
            ({"data": "x"}, "data"),
        ]
        for body, field in cases:
            r = self.send_test(h["id"], body)
            self.assertEqual(r.status, 400, (body, r.raw))
            self.assertEqual(r.json["errorCode"], "InvalidParameters")
            self.assertIn(field, r.json["message"], body)
        r = self.send_test(h["id"], raw=b"{nope")
        self.assertEqual(r.status, 400)
        r = self.send_test(h["id"], raw=b"[1]")
        self.assertEqual(r.status, 400)
        time.sleep(0.3)
        self.assertEqual(self.log(h["id"]), [])
        self.put_active(h["id"], False)
        r = self.send_test(h["id"], {})
        self.assertEqual(r.status, 409, r.raw)
        self.assertEqual(self.log(h["id"]), [])
        self.assertEqual(self.send_test("no-such-hook", {}).status, 404)


class DisableRule(AttemptsBase):
    def test_endpoint_that_is_down_goes_inactive(self):
        h = self.hook(self.p)
        self.rc.script(self.p, [500] * 3)
        ev = self.send(h)
        self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "dead")
        wait_until(lambda: not webhook_active(self.srv, self.tok, h["id"]), msg="disabled")
        ev2 = self.send(h)
        row = self.wait_row(h["id"], ev2["eventId"], lambda r: r["status"] == "skipped")
        self.assertEqual(self.by_event(self.p, ev2["eventId"]), [])
        self.assertEqual(row["attempts"], 0)

    def test_poison_event_goes_dead_without_disabling(self):
        h = self.hook(self.p)
        poison = self.send(h, data={"kind": "poison"})
        good = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # the endpoint keeps answering other events
            good.append(self.send(h))
            time.sleep(0.05)
        row = self.wait_row(h["id"], poison["eventId"], lambda r: r["status"] == "dead")
        self.assertEqual(row["attempts"], 3)
        self.assertEqual(row["lastStatusCode"], 400)
        for ev in good[-3:]:
            self.wait_row(h["id"], ev["eventId"], lambda r: r["status"] == "succeeded")
        time.sleep(0.3)
        self.assertTrue(webhook_active(self.srv, self.tok, h["id"]), "a poison event disabled it")
        later = self.send(h)
        self.wait_row(h["id"], later["eventId"], lambda r: r["status"] == "succeeded")
        d = self.detail(h["id"], row["deliveryId"])
        self.assertEqual([x["statusCode"] for x in d["attempts"]], [400, 400, 400])
        self.assertEqual(d["attempts"][0]["response"], "cannot parse that one")


class WebhookCli(AttemptsBase):
    def cli(self, *args, ok=True):
        p = run_cli(list(args) + ["--db", self.srv.db])
        if ok:
            self.assertEqual(p.returncode, 0, "kzhook %s -> %d\nstdout: %s\nstderr: %s"
                             % (" ".join(args), p.returncode, p.stdout[-500:], p.stderr[-500:]))
        return p

    def test_list_get_test_retry_delivery(self):
        h = self.hook(self.p, eventTypes=["SurveyResponse", "TextMessageCreated"])
        app2, tok2 = self.srv.app_token()
        h2 = self.hook(self.p + "/2", tok=tok2)
        every = json.loads(self.cli("webhook", "list").stdout)["webhooks"]
        ids = {w["id"]: w for w in every}
        self.assertIn(h["id"], ids)
        self.assertIn(h2["id"], ids)
        self.assertEqual(ids[h["id"]]["applicationId"], self.app["applicationId"])
        mine = json.loads(self.cli("webhook", "list", "--app", self.app["applicationId"]).stdout)
        self.assertEqual([w["id"] for w in mine["webhooks"]], [h["id"]])
        api = self.srv.get_webhook(self.tok, h["id"]).json
        got = json.loads(self.cli("webhook", "get", h["id"]).stdout)
        self.assertEqual(got.pop("applicationId"), self.app["applicationId"])
        self.assertEqual(got, api)
        p = self.cli("webhook", "get", "no-such-hook", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertTrue(p.stderr.strip())

        self.rc.script(self.p, [500] * 3)
        out = json.loads(self.cli("webhook", "test", h["id"], "--event-type", "TextMessageCreated",
                                  "--data", '{"from": "cli"}').stdout)
        self.assertRegex(out["eventId"], r"^test_")
        row = self.wait_row(h["id"], out["eventId"], lambda r: r["status"] == "dead")
        self.assertEqual(row["deliveryId"], out["deliveryId"])
        self.assertEqual(json.loads(self.by_event(self.p, out["eventId"])[0].body)["data"],
                         {"from": "cli"})
        wait_until(lambda: not webhook_active(self.srv, self.tok, h["id"]), msg="disabled")
        p = self.cli("webhook", "retry", h["id"], out["deliveryId"], ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("Conflict", p.stderr)
        self.put_active(h["id"], True)
        self.assertEqual(json.loads(self.cli("webhook", "retry", h["id"], out["deliveryId"]).stdout), {})
        self.wait_row(h["id"], out["eventId"], lambda r: r["status"] == "succeeded")
        d = json.loads(self.cli("webhook", "delivery", h["id"], out["deliveryId"]).stdout)
        self.assertEqual([x["statusCode"] for x in d["attempts"]], [500, 500, 500, 200])
        p = self.cli("webhook", "test", h["id"], "--event-type", "MemberAdded", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("eventType", p.stderr)
        p = self.cli("webhook", "retry", h["id"], ok=False)
        self.assertEqual(p.returncode, 2)

    def test_rotate(self):
        """kzhook webhook rotate: a new secret, the previous one kept for --overlap; the API's
        GET .../secret agrees; a bad overlap or an unknown webhook fails."""
        h = self.hook(self.p)
        before = self.srv.req("GET", "/v1/webhook/%s/secret" % h["id"], token=self.tok).json
        t0 = now_ms()
        out = json.loads(self.cli("webhook", "rotate", h["id"], "--overlap", "1h").stdout)
        self.assertRegex(out["signingSecret"], r"^whsec_")
        self.assertNotEqual(out["signingSecret"], before["signingSecret"])
        self.assertTrue(t0 + 3600 * 1000 - 5000 <= out["previousExpiresAt"] <= now_ms() + 3600 * 1000)
        now = self.srv.req("GET", "/v1/webhook/%s/secret" % h["id"], token=self.tok).json
        self.assertEqual(now["signingSecret"], out["signingSecret"])
        # default overlap: 24 h
        out2 = json.loads(self.cli("webhook", "rotate", h["id"]).stdout)
        self.assertGreater(out2["previousExpiresAt"], now_ms() + 23 * 3600 * 1000)
        p = self.cli("webhook", "rotate", h["id"], "--overlap", "8d", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("overlap", p.stderr)
        p = self.cli("webhook", "rotate", "no-such-hook", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(self.srv.req("GET", "/v1/webhook/%s/secret" % h["id"],
                                      token=self.tok).json["signingSecret"], out2["signingSecret"])
