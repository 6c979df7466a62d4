"""Delivery controls (README.md "Delivery controls", docs/openapi.json): per-webhook headers, event
filters and signing-secret rotation, on the real binary with a real receiver (and, for rotation,
the official `standardwebhooks` npm verifier). Runs on SQLite and, with KZ_TEST_DB, PostgreSQL."""

import json
import time

from dlib import create_hook, publish, sign, uid, wait_until, signature_ok
from kzlib import KzTestCase, timeout_scale
from test_signature_node import NodeReceiver


def hooks_of(srv, tok):
    r = srv.req("GET", "/v1/webhook", token=tok)
    assert r.status == 200, r.raw[:300]
    return r.json["webhooks"]


class Controls(KzTestCase):
    timeout = 90

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=["--retry-schedule", "200ms,200ms", "--rate-limit", "0"])
        cls.rc = cls.class_receiver()

    def setUp(self):
        self.app, self.tok = self.srv.app_token()
        self.p = "/" + self._testMethodName

    def get(self, wid):
        r = self.srv.req("GET", "/v1/webhook/" + wid, token=self.tok)
        return self.assertJsonOk(r, 200)

    def put(self, wid, body):
        return self.srv.req("PUT", "/v1/webhook/" + wid, json=body, token=self.tok)

    # ------------------------------------------------------------------ headers
    def test_headers_sent_with_every_attempt_not_the_handshake(self):
        g = uid("g")
        hdrs = {"X-Tenant": "acme", "Authorization": "Bearer s3cr3t ~!", "X-Empty": ""}
        wid, secret, _ = create_hook(self, self.srv, self.tok, self.rc.url(self.p), objectId=g,
                                     headers=hdrs)
        self.assertEqual(self.get(wid)["headers"], hdrs)
        hs = self.rc.handshakes(self.p)
        self.assertTrue(hs)
        for h in hs:
            self.assertNotIn("x-tenant", h.headers)
        # the first attempt fails, the retry succeeds: both carry the headers
        self.rc.script(self.p, [(500, b"no")])
        publish(self.srv, {"eventType": "TextMessageCreated", "groupId": g, "data": {}})
        got = self.rc.wait_for(2, self.p, method="POST", timeout=10)
        for r in got:
            self.assertEqual(r.headers.get("x-tenant"), "acme")
            self.assertEqual(r.headers.get("authorization"), "Bearer s3cr3t ~!")
            self.assertIn("x-empty", r.headers)
            self.assertEqual(r.headers.get("x-empty"), "")
            self.assertTrue(signature_ok(secret, r))
        # PUT without headers keeps them; {} clears them
        self.assertJsonOk(self.put(wid, {"callBackContext": "c"}), 200)
        self.assertEqual(self.get(wid)["headers"], hdrs)
        b = self.assertJsonOk(self.put(wid, {"headers": {}}), 200)
        self.assertEqual(b["headers"], {})
        self.assertEqual(self.get(wid)["headers"], {})
        self.rc.clear()
        publish(self.srv, {"eventType": "TextMessageCreated", "groupId": g, "data": {}})
        r = self.rc.wait_for(1, self.p, method="POST")[0]
        self.assertNotIn("x-tenant", r.headers)

    # ------------------------------------------------------------------ filter
    def test_filter_decides_which_events_create_deliveries(self):
        g = uid("g")
        flt_text = ('{"data.amount":{"$gt":100000000000000000000},"fromUserId":{"$ne":"bot"},'
                    '"data.items.1.sku":{"$in":["A-1","B-2"]},"data.big":{"$lt":1e400}}')
        body = json.dumps({"objectId": g, "objectType": "Group", "eventTypes": ["SurveyResponse"],
                           "callBackUrl": self.rc.url(self.p)})[:-1] + ', "filter": ' + flt_text + "}"
        r = self.srv.req("POST", "/v1/webhook", raw=body.encode(), token=self.tok,
                         headers={"Content-Type": "application/json"})
        wid = self.assertJsonOk(r, 200)["webhookId"]
        plain, _, _ = create_hook(self, self.srv, self.tok, self.rc.url(self.p + "/plain"),
                                  objectId=g, eventTypes=["SurveyResponse"])
        # returned exactly as written: numbers keep their spelling
        r = self.srv.req("GET", "/v1/webhook/" + wid, token=self.tok)
        self.assertIn(b'"filter":' + flt_text.encode(), r.raw)
        listed = [w for w in hooks_of(self.srv, self.tok) if w["id"] == wid][0]
        self.assertEqual(listed["filter"]["fromUserId"], {"$ne": "bot"})
        self.assertEqual([w for w in hooks_of(self.srv, self.tok) if w["id"] == plain][0]["filter"], {})

        def ev(amount, user="u1", sku="B-2", big="1e399"):
            text = ('{"eventType":"SurveyResponse","groupId":"%s","fromUserId":"%s","data":'
                    '{"amount":%s,"items":[{"sku":"x"},{"sku":"%s"}],"big":%s}}'
                    % (g, user, amount, sku, big))
            r = self.srv.req("POST", "/v1/events", raw=text.encode(), admin=True,
                             headers={"Content-Type": "application/json"})
            self.assertEqual(r.status, 202, r.raw[:300])
            return r.json["deliveries"]

        self.assertEqual(ev("100000000000000000001"), 2)   # passes: both webhooks
        self.assertEqual(ev("100000000000000000000"), 1)   # not > : only the plain one
        self.assertEqual(ev("1e21"), 2)
        self.assertEqual(ev("1e21", user="bot"), 1)
        self.assertEqual(ev("1e21", sku="C-3"), 1)
        self.assertEqual(ev("1e21", big="1e400"), 1)
        self.assertEqual(ev('"100000000000000000001"'), 1)  # a string is not a number
        got = self.rc.wait_for(2, self.p, method="POST")
        time.sleep(0.3 * timeout_scale())
        self.assertEqual(len(self.rc.requests(self.p, method="POST")), 2)
        for r in got:
            self.assertIn(b'"amount":1', r.body)
        # PUT replaces the filter and it applies to the next event; {} clears it
        b = self.assertJsonOk(self.put(wid, {"filter": {"fromUserId": "bot"}}), 200)
        self.assertEqual(b["filter"], {"fromUserId": "bot"})
        self.assertEqual(ev("1", user="bot"), 2)
        self.assertEqual(ev("1e21"), 1)
        self.assertJsonOk(self.put(wid, {"filter": {}}), 200)
        self.assertEqual(self.get(wid)["filter"], {})
        self.assertEqual(ev("0", user="x"), 2)
        # an event type filter on a multi-type webhook
        wid2, _, _ = create_hook(self, self.srv, self.tok, self.rc.url(self.p + "/t"), objectId=g,
                                 eventTypes=["SurveyResponse", "JobCreated"],
                                 filter={"eventType": "JobCreated"})
        self.assertEqual(publish(self.srv, {"eventType": "JobCreated", "groupId": g})["deliveries"], 1)
        self.assertEqual(ev("0", user="x"), 2)  # SurveyResponse: not wid2

    # ------------------------------------------------------------------ bad input
    def test_bad_input_is_400_naming_the_field_and_stores_nothing(self):
        g = uid("g")
        url = self.rc.url(self.p)
        big = {"data.k%d" % i: i for i in range(33)}
        bad = [
            ("headers", []),
            ("headers", "X-A: 1"),
            ("headers", {"Host": "x"}),
            ("headers", {"content-TYPE": "x"}),
            ("headers", {"Webhook-Signature": "v1,x"}),
            ("headers", {"webhook-anything": "x"}),
            ("headers", {"Kz-Callback-Token": "x"}),
            ("headers", {"traceparent": "x"}),
            ("headers", {"User-Agent": "x"}),
            ("headers", {"Transfer-Encoding": "x"}),
            ("headers", {"Connection": "x"}),
            ("headers", {"Content-Length": "1"}),
            ("headers", {"X Space": "x"}),
            ("headers", {"X:Colon": "x"}),
            ("headers", {"": "x"}),
            ("headers", {"X-" + "a" * 63: "x"}),
            ("headers", {"X-A": "line\r\nInjected: 1"}),
            ("headers", {"X-A": "é"}),
            ("headers", {"X-A": "a" * 1025}),
            ("headers", {"X-A": 1}),
            ("headers", {"X-A": None}),
            ("headers", {"X-A": "1", "x-a": "2"}),
            ("headers", {"X-%d" % i: "v" for i in range(21)}),
            ("filter", []),
            ("filter", "x"),
            ("filter", {"groupId": "g"}),
            ("filter", {"data.a": {"$gt": True}}),
            ("filter", {"data.a": {"$regex": "x"}}),
            ("filter", {"data.a": [1, 2]}),
            ("filter", {"data.a": {"$in": 1}}),
            ("filter", {"data.a": {"$exists": "yes"}}),
            ("filter", {"data.a": {}}),
            ("filter", {"data..a": 1}),
            ("filter", big),
            ("filter", {"data.s": "x" * 4100}),
        ]
        before = len(hooks_of(self.srv, self.tok))
        for field, value in bad:
            body = {"objectId": g, "objectType": "Group", "eventTypes": ["TextMessageCreated"],
                    "callBackUrl": url, field: value}
            r = self.srv.req("POST", "/v1/webhook", json=body, token=self.tok)
            self.assertError(r, 400, "InvalidParameters", "create %s=%r" % (field, value))
            self.assertIn(field, r.json["message"], (field, value))
        self.assertEqual(len(hooks_of(self.srv, self.tok)), before, "a refused create stored something")
        # the path of the bad condition is in the message
        r = self.srv.req("POST", "/v1/webhook", token=self.tok, json={
            "objectId": g, "objectType": "Group", "eventTypes": ["TextMessageCreated"],
            "callBackUrl": url, "filter": {"fromUser": "a", "data.order.total": {"$gte": None}}})
        self.assertError(r, 400, "InvalidParameters")
        self.assertIn("data.order.total", r.json["message"])
        r = self.srv.req("POST", "/v1/webhook", token=self.tok, json={
            "objectId": g, "objectType": "Group", "eventTypes": ["TextMessageCreated"],
            "callBackUrl": url, "headers": {"Webhook-Id": "x"}})
        self.assertIn("Webhook-Id", r.json["message"])
        # a PUT with a bad field changes nothing, not even the good fields beside it
        wid, secret, _ = create_hook(self, self.srv, self.tok, url, objectId=g,
                                     headers={"X-Keep": "1"}, filter={"fromUser": "keep"})
        before = self.get(wid)
        for field, value in bad:
            r = self.put(wid, {"callBackContext": "changed", field: value})
            self.assertError(r, 400, "InvalidParameters", "PUT %s=%r" % (field, value))
            self.assertIn(field, r.json["message"])
        self.assertEqual(self.get(wid), before)
        # rotate: a bad overlap is 400 naming it, and the secret stays
        for overlap in ("8d", "7d1ms", "abc", "", "-1s", 5, True, ["1h"]):
            r = self.srv.req("POST", "/v1/webhook/%s/secret/rotate" % wid, json={"overlap": overlap},
                             token=self.tok)
            self.assertError(r, 400, "InvalidParameters", "overlap %r" % (overlap,))
            self.assertIn("overlap", r.json["message"])
        r = self.srv.req("POST", "/v1/webhook/%s/secret/rotate" % wid, raw=b"{", token=self.tok,
                         headers={"Content-Type": "application/json"})
        self.assertError(r, 400, "InvalidParameters")
        r = self.srv.req("GET", "/v1/webhook/%s/secret" % wid, token=self.tok)
        self.assertEqual(self.assertJsonOk(r, 200)["signingSecret"], secret)

    # ------------------------------------------------------------------ secret
    def test_secret_endpoints_and_ownership(self):
        g = uid("g")
        wid, secret, _ = create_hook(self, self.srv, self.tok, self.rc.url(self.p), objectId=g)
        r = self.srv.req("GET", "/v1/webhook/%s/secret" % wid, token=self.tok)
        self.assertEqual(self.assertJsonOk(r, 200), {"signingSecret": secret})
        _, other = self.srv.app_token()
        for m, path in (("GET", "/secret"), ("POST", "/secret/rotate")):
            r = self.srv.req(m, "/v1/webhook/%s%s" % (wid, path), token=other)
            self.assertError(r, 404, "NotFound")
            r = self.srv.req(m, "/v1/webhook/%s%s" % (uid("nope"), path), token=self.tok)
            self.assertError(r, 404, "NotFound")
            r = self.srv.req(m, "/v1/webhook/%s%s" % (wid, path))
            self.assertEqual(r.status, 401)
        r = self.srv.req("POST", "/v1/webhook/%s/secret" % wid, token=self.tok)
        self.assertError(r, 405)
        r = self.srv.req("GET", "/v1/webhook/%s/secret/rotate" % wid, token=self.tok)
        self.assertError(r, 405)
        r = self.srv.req("GET", "/v1/webhook/%s/secret" % wid, token=self.tok)
        self.assertEqual(r.json["signingSecret"], secret, "a refused call changed the secret")
        # default overlap 24h, no body
        t0 = int(time.time() * 1000)
        r = self.srv.req("POST", "/v1/webhook/%s/secret/rotate" % wid, token=self.tok)
        b = self.assertJsonOk(r, 200)
        self.assertNotEqual(b["signingSecret"], secret)
        self.assertAlmostEqual(b["previousExpiresAt"] - t0, 86400000, delta=5000)
        r = self.srv.req("GET", "/v1/webhook/%s/secret" % wid, token=self.tok)
        self.assertEqual(r.json["signingSecret"], b["signingSecret"])
        # a PUT does not bring the old secret back
        self.assertJsonOk(self.put(wid, {"callBackContext": "x"}), 200)
        r = self.srv.req("GET", "/v1/webhook/%s/secret" % wid, token=self.tok)
        self.assertEqual(r.json["signingSecret"], b["signingSecret"])

    def test_rotation_signatures_python(self):
        """Two signatures during the overlap (new first), one after; a second rotation during an
        overlap keeps only the newest previous secret; overlap 0s signs with the new one only."""
        g = uid("g")
        wid, s0, _ = create_hook(self, self.srv, self.tok, self.rc.url(self.p), objectId=g)

        def rotate(overlap):
            r = self.srv.req("POST", "/v1/webhook/%s/secret/rotate" % wid,
                             json={"overlap": overlap}, token=self.tok)
            return self.assertJsonOk(r, 200)

        def deliver():
            self.rc.clear()
            publish(self.srv, {"eventType": "TextMessageCreated", "groupId": g, "data": {"t": 1}})
            r = self.rc.wait_for(1, self.p, method="POST")[0]
            sigs = r.headers["webhook-signature"].split(" ")
            return r, sigs

        def sig_of(secret, r):
            h = r.headers
            return sign(secret, h["webhook-id"], h["webhook-timestamp"], r.body)

        s1 = rotate("3s")["signingSecret"]
        r, sigs = deliver()
        self.assertEqual(sigs, [sig_of(s1, r), sig_of(s0, r)])
        s2 = rotate("1h")["signingSecret"]
        r, sigs = deliver()
        self.assertEqual(sigs, [sig_of(s2, r), sig_of(s1, r)], "only the newest previous secret")
        s3 = rotate("0s")
        self.assertLessEqual(s3["previousExpiresAt"], int(time.time() * 1000) + 1000)
        r, sigs = deliver()
        self.assertEqual(sigs, [sig_of(s3["signingSecret"], r)])
        s4 = rotate("1s")["signingSecret"]
        time.sleep(1.2)
        r, sigs = deliver()
        self.assertEqual(sigs, [sig_of(s4, r)], "after the overlap only the new signature")


class ControlsNode(KzTestCase):
    """Rotation checked by the official `standardwebhooks` verifier (tests/integration/node)."""
    timeout = 90

    def setUp(self):
        try:
            self.node = NodeReceiver()
        except AssertionError as e:
            self.fail(str(e))
        self.addCleanup(self.node.stop)
        self.srv = self.server(args=["--retry-schedule", "200ms,200ms", "--rate-limit", "0"])
        self.app, self.tok = self.srv.app_token()

    def test_rotation_verifies_with_standardwebhooks(self):
        g = uid("g")
        wid, old, _ = create_hook(self, self.srv, self.tok, self.node.url("/old"), objectId=g,
                                  eventTypes=["TextMessageCreated"])
        self.node.register("/old", old)
        b = self.assertJsonOk(self.srv.req("POST", "/v1/webhook/%s/secret/rotate" % wid,
                                           json={"overlap": "4s"}, token=self.tok), 200)
        new = b["signingSecret"]
        seen = set()

        def deliver(path_secret):
            path, secret = path_secret
            self.node.register("/old", secret)
            eid = publish(self.srv, {"eventType": "TextMessageCreated", "groupId": g,
                                     "data": {"n": 1}})["eventId"]
            res = wait_until(lambda: [x for x in self.node.results() if x["eventId"] == eid
                                      or x["id"] == eid] or None, 10, interval=0.1,
                             msg="delivery of %s" % eid)
            seen.add(eid)
            return res[0]

        # during the overlap a receiver holding either secret verifies
        x = deliver(("/old", old))
        self.assertTrue(x["ok"], x)
        self.assertEqual(len(x["signature"].split(" ")), 2, x["signature"])
        x = deliver(("/old", new))
        self.assertTrue(x["ok"], x)
        # after it only the new one
        time.sleep(max(0, b["previousExpiresAt"] / 1000.0 - time.time()) + 0.3)
        x = deliver(("/old", new))
        self.assertTrue(x["ok"], x)
        self.assertEqual(len(x["signature"].split(" ")), 1, x["signature"])
        x = deliver(("/old", old))
        self.assertFalse(x["ok"], "the previous secret still verifies after the overlap: %r" % x)
