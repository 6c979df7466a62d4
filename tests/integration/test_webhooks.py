"""The Kaizala webhook API: create, list, get, update, delete, isolation (the README endpoint table–4.4)."""

import base64

from kzlib import (EVENT_TYPES, OBJECT_TYPES, TWO_YEARS_MS, UUID_RE, VALIDATION_TOKEN_RE, KzTestCase,
                   now_ms, webhook_body)


class WebhookApi(KzTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server()
        cls.rc = cls.class_receiver()

    def setUp(self):
        self.app, self.tok = self.srv.app_token()

    def url(self, path=None):
        return self.rc.url(path or "/" + self._testMethodName)

    def create(self, tok=None, **kw):
        body = webhook_body(kw.pop("url", None) or self.url(), **kw)
        r = self.srv.create_webhook(tok or self.tok, body)
        b = self.assertJsonOk(r, 200, repr(body)[:200])
        return b["webhookId"]

    def get(self, wid, tok=None):
        r = self.srv.get_webhook(tok or self.tok, wid)
        w = self.assertJsonOk(r)
        self.assertWebhookShape(w)
        return w

    # ---------------------------------------------------------------- create
    def test_create_minimal(self):
        t0 = now_ms()
        url = self.url()
        r = self.srv.create_webhook(self.tok, webhook_body(url))
        b = self.assertJsonOk(r)
        self.assertRegex(b.get("webhookId", ""), UUID_RE)
        sec = b.get("signingSecret", "")
        self.assertTrue(sec.startswith("whsec_"), sec)
        raw = base64.b64decode(sec[len("whsec_"):], validate=True)
        self.assertGreaterEqual(len(raw), 16, "signing secret too short")
        # the handshake ran against the URL
        hs = self.rc.handshakes("/" + self._testMethodName)
        self.assertEqual(len(hs), 1, hs)
        self.assertRegex(hs[0].query["validationToken"], VALIDATION_TOKEN_RE)
        self.assertEqual(hs[0].method, "GET")
        w = self.get(b["webhookId"])
        self.assertEqual(w["id"], b["webhookId"])
        self.assertEqual(w["objectId"], "g1")
        self.assertEqual(w["objectType"], "Group")
        self.assertEqual(w["events"], ["TextMessageCreated"])
        self.assertEqual(w["filters"], [])
        self.assertEqual(w["callbackUrl"], url)
        self.assertIsNone(w["callbackToken"])
        self.assertIsNone(w["callBackContext"])
        self.assertAlmostEqual(w["ts"], t0, delta=60000)
        self.assertEqual(w["validity"], w["ts"] + TWO_YEARS_MS)
        self.assertIs(w["active"], True)
        self.assertNotIn("signingSecret", w)
        self.assertNotIn(sec, self.srv.get_webhook(self.tok, w["id"]).raw.decode())

    def test_create_full(self):
        validity = now_ms() + 3600 * 1000
        wid = self.create(objectId="grp-2", objectType="Group", eventTypes=["SurveyResponse", "MemberAdded"],
                          callBackToken="s3cret token", callBackContext="tenant-42 ✓", validity=validity)
        w = self.get(wid)
        self.assertEqual(w["objectId"], "grp-2")
        self.assertEqual(sorted(w["events"]), ["MemberAdded", "SurveyResponse"])
        self.assertEqual(w["callbackToken"], "s3cret token")
        self.assertEqual(w["callBackContext"], "tenant-42 ✓")
        self.assertEqual(w["validity"], validity)

    def test_validity_numeric_string(self):
        validity = now_ms() + 86400 * 1000
        wid = self.create(validity=str(validity))
        self.assertEqual(self.get(wid)["validity"], validity)

    def test_all_event_types_and_object_types(self):
        for ot in OBJECT_TYPES:
            wid = self.create(objectType=ot, objectId="obj-" + ot, eventTypes=EVENT_TYPES)
            w = self.get(wid)
            self.assertEqual(w["objectType"], ot)
            self.assertEqual(sorted(w["events"]), sorted(EVENT_TYPES))
        for ev in EVENT_TYPES:
            wid = self.create(eventTypes=[ev])
            self.assertEqual(self.get(wid)["events"], [ev])

    def test_property_names_case_insensitive(self):
        validity = now_ms() + 7200 * 1000
        url = self.url()
        body = {"ObjectId": "ci-1", "OBJECTTYPE": "Action", "EventTypes": ["ActionResponse"],
                "CALLBACKURL": url, "callbacktoken": "tk", "CallBackContext": "cx", "VALIDITY": validity}
        r = self.srv.create_webhook(self.tok, body)
        wid = self.assertJsonOk(r)["webhookId"]
        w = self.get(wid)
        self.assertEqual((w["objectId"], w["objectType"], w["events"], w["callbackUrl"], w["callbackToken"],
                          w["callBackContext"], w["validity"]),
                         ("ci-1", "Action", ["ActionResponse"], url, "tk", "cx", validity))

    def test_kaizala_sample_body(self):
        body = {"objectId": "df91cb37-0000-4000-8000-b2a3ba5eac62@1", "objectType": "Group",
                "eventTypes": ["TextMessageCreated", "MemberAdded", "SurveyResponse"],
                "callBackUrl": self.url(), "callBackToken": "s3cret", "callBackContext": "tenant-42"}
        r = self.srv.create_webhook(self.tok, body)
        self.assertJsonOk(r)

    def test_unknown_fields_ignored(self):
        body = webhook_body(self.url(), extra="x", nested={"a": [1, 2, {"b": None}]}, filters=["z"],
                            applicationId="whatever", id="my-own-id", active=False)
        r = self.srv.create_webhook(self.tok, body)
        wid = self.assertJsonOk(r)["webhookId"]
        self.assertNotEqual(wid, "my-own-id")
        self.assertEqual(self.get(wid)["filters"], [])

    def test_doubled_slash_and_bearer(self):
        r = self.srv.req("POST", "//v1/webhook", json=webhook_body(self.url()), token=self.tok)
        wid = self.assertJsonOk(r)["webhookId"]
        r = self.srv.req("GET", "//v1/webhook/" + wid, headers={"Authorization": "Bearer " + self.tok})
        self.assertEqual(self.assertJsonOk(r)["id"], wid)
        r = self.srv.req("POST", "/v1/webhook", json=webhook_body(self.url()),
                         headers={"Authorization": "Bearer " + self.tok})
        self.assertJsonOk(r)

    def test_ids_and_secrets_unique(self):
        ids, secs = set(), set()
        for _ in range(5):
            b = self.srv.create_webhook(self.tok, webhook_body(self.url())).json
            ids.add(b["webhookId"])
            secs.add(b["signingSecret"])
        self.assertEqual(len(ids), 5)
        self.assertEqual(len(secs), 5)

    def test_limits_inclusive(self):
        wid = self.create(objectId="o" * 256, callBackToken="t" * 1024, callBackContext="c" * 4096)
        w = self.get(wid)
        self.assertEqual(w["objectId"], "o" * 256)
        self.assertEqual(w["callbackToken"], "t" * 1024)
        self.assertEqual(w["callBackContext"], "c" * 4096)

    def test_invalid_create_bodies(self):
        good = webhook_body(self.url())
        lower = {k.lower(): v for k, v in good.items()}

        def without(k):
            return {x: v for x, v in good.items() if x != k}

        cases = {
            "no objectId": without("objectId"),
            "no objectType": without("objectType"),
            "no eventTypes": without("eventTypes"),
            "no callBackUrl": without("callBackUrl"),
            "objectId number": dict(good, objectId=5),
            "objectId null": dict(good, objectId=None),
            "objectId too long": dict(good, objectId="o" * 257),
            "objectId array": dict(good, objectId=["g1"]),
            "objectType unknown": dict(good, objectType="Channel"),
            "objectType number": dict(good, objectType=1),
            "eventTypes empty": dict(good, eventTypes=[]),
            "eventTypes string": dict(good, eventTypes="TextMessageCreated"),
            "eventTypes unknown": dict(good, eventTypes=["TextMessageCreated", "Bogus"]),
            "eventTypes number item": dict(good, eventTypes=[1]),
            "eventTypes null": dict(good, eventTypes=None),
            "eventTypes object": dict(good, eventTypes={"a": "TextMessageCreated"}),
            "callBackUrl http": dict(good, callBackUrl=self.rc.url("/x").replace("https://", "http://")),
            "callBackUrl ftp": dict(good, callBackUrl="ftp://127.0.0.1/x"),
            "callBackUrl not a url": dict(good, callBackUrl="not a url"),
            "callBackUrl empty": dict(good, callBackUrl=""),
            "callBackUrl number": dict(good, callBackUrl=443),
            "callBackUrl no host": dict(good, callBackUrl="https:///path"),
            "callBackToken too long": dict(good, callBackToken="t" * 1025),
            "callBackToken newline": dict(good, callBackToken="a\nb"),
            "callBackToken CR": dict(good, callBackToken="a\rX-Injected: 1"),
            "callBackToken NUL": dict(good, callBackToken="a\u0000b"),
            "callBackToken tab": dict(good, callBackToken="a\tb"),
            "callBackToken number": dict(good, callBackToken=7),
            "callBackContext too long": dict(good, callBackContext="c" * 4097),
            "callBackContext number": dict(good, callBackContext=7),
            "validity past": dict(good, validity=now_ms() - 1000),
            "validity negative": dict(good, validity=-5),
            "validity past string": dict(good, validity=str(now_ms() - 1000)),
            "validity garbage string": dict(good, validity="tomorrow"),
            "validity bool": dict(good, validity=True),
            "validity object": dict(good, validity={}),
            "lower-case duplicate wrong": dict(lower, objecttype="Nope"),
        }
        for what, body in cases.items():
            r = self.srv.create_webhook(self.tok, body)
            self.assertError(r, 400, "InvalidParameters", what)
        self.assertEqual(self.srv.list_webhooks(self.tok), [])
        # an http:// URL is refused before any request is made
        self.assertEqual(self.rc.count("/x"), 0)

    def test_forbidden_object(self):
        app, tok = self.srv.app_token(objectIds=["g-allowed", "a-allowed"])
        r = self.srv.create_webhook(tok, webhook_body(self.url(), objectId="g-other"))
        self.assertError(r, 403, "Forbidden")
        r = self.srv.create_webhook(tok, webhook_body(self.url(), objectId="*"))
        self.assertError(r, 403, "Forbidden")
        self.assertEqual(self.srv.list_webhooks(tok), [])
        self.assertJsonOk(self.srv.create_webhook(tok, webhook_body(self.url(), objectId="g-allowed")))
        self.assertJsonOk(self.srv.create_webhook(tok, webhook_body(self.url(), objectId="a-allowed",
                                                                    objectType="ActionPackage")))
        self.assertEqual(len(self.srv.list_webhooks(tok)), 2)

    def test_star_grants_everything(self):
        _, tok = self.srv.app_token(objectIds=["*"])
        for oid in ("anything", "com.example.form", "x@1"):
            self.assertJsonOk(self.srv.create_webhook(tok, webhook_body(self.url(), objectId=oid)))

    # ---------------------------------------------------------------- list / get
    def test_list_and_filters(self):
        a = self.create(objectId="L1", objectType="Group")
        b = self.create(objectId="L1", objectType="Action")
        c = self.create(objectId="L2", objectType="Group")
        lw = self.srv.list_webhooks

        def ids(q=""):
            out = lw(self.tok, q)
            for w in out:
                self.assertWebhookShape(w)
            return sorted(w["id"] for w in out)

        self.assertEqual(ids(), sorted([a, b, c]))
        self.assertEqual(ids("objectId=L1"), sorted([a, b]))
        self.assertEqual(ids("objectType=Group"), sorted([a, c]))
        self.assertEqual(ids("objectId=L1&objectType=Group"), [a])
        self.assertEqual(ids("objectId=L1&objectType=ActionPackage"), [])
        self.assertEqual(ids("objectId=nope"), [])
        full = {w["id"]: w for w in lw(self.tok)}
        self.assertEqual(full[a], self.get(a))

    def test_list_objectid_url_encoded(self):
        wid = self.create(objectId="a b&c=d@1")
        got = self.srv.list_webhooks(self.tok, "objectId=a%20b%26c%3Dd%401")
        self.assertEqual([w["id"] for w in got], [wid])

    def test_list_empty(self):
        self.assertEqual(self.assertJsonOk(self.srv.req("GET", "/v1/webhook", token=self.tok)), {"webhooks": []})

    def test_get_unknown(self):
        for wid in ("00000000-0000-4000-8000-000000000000", "not-a-uuid", "x" * 200):
            self.assertError(self.srv.get_webhook(self.tok, wid), 404, "NotFound", wid[:40])

    # ---------------------------------------------------------------- update
    def test_update_fields(self):
        wid = self.create(eventTypes=["TextMessageCreated"], callBackToken="old", callBackContext="oldctx")
        before = self.get(wid)
        hs_before = self.rc.count(handshake=True)
        r = self.srv.req("PUT", "/v1/webhook/" + wid, json={"eventTypes": ["PollCreated", "PollResponse"]},
                         token=self.tok)
        w = self.assertJsonOk(r)
        self.assertWebhookShape(w)
        self.assertEqual(sorted(w["events"]), ["PollCreated", "PollResponse"])
        for k in ("id", "objectId", "objectType", "callbackUrl", "callbackToken", "callBackContext", "ts",
                  "validity", "active"):
            self.assertEqual(w[k], before[k], k)
        self.assertEqual(self.get(wid), w)
        validity = now_ms() + 600000
        r = self.srv.req("PUT", "/v1/webhook/" + wid, token=self.tok,
                         json={"callBackToken": "new", "CallBackContext": "newctx", "validity": str(validity)})
        w = self.assertJsonOk(r)
        self.assertEqual((w["callbackToken"], w["callBackContext"], w["validity"]), ("new", "newctx", validity))
        self.assertEqual(sorted(w["events"]), ["PollCreated", "PollResponse"])
        self.assertEqual(self.get(wid), w)
        # nothing above changed the URL: no new handshake needed
        self.assertEqual(self.rc.count(handshake=True), hs_before)

    def test_update_empty_body_changes_nothing(self):
        wid = self.create()
        before = self.get(wid)
        r = self.srv.req("PUT", "/v1/webhook/" + wid, json={}, token=self.tok)
        self.assertEqual(self.assertJsonOk(r), before)

    def test_update_active_toggle(self):
        wid = self.create()
        for val, want in (("false", False), ("true", True), (False, False), (True, True)):
            key = "Active" if isinstance(val, str) else "active"
            r = self.srv.req("PUT", "/v1/webhook/" + wid, json={key: val}, token=self.tok)
            w = self.assertJsonOk(r, msg="Active=%r" % val)
            self.assertIs(w["active"], want, "Active=%r" % val)
            self.assertIs(self.get(wid)["active"], want)

    def test_update_callback_url_revalidates(self):
        wid = self.create(url=self.url("/upd-old"))
        new = self.url("/upd-new?k=v")
        r = self.srv.req("PUT", "/v1/webhook/" + wid, json={"callBackUrl": new}, token=self.tok)
        w = self.assertJsonOk(r)
        self.assertEqual(w["callbackUrl"], new)
        hs = self.rc.handshakes("/upd-new")
        self.assertEqual(len(hs), 1)
        self.assertEqual(hs[0].query.get("k"), "v")
        self.assertRegex(hs[0].query["validationToken"], VALIDATION_TOKEN_RE)

    def test_update_callback_url_failing_handshake_keeps_webhook(self):
        wid = self.create(url=self.url("/upd-keep"), callBackToken="keep")
        before = self.get(wid)
        for path, mode, kw in (("/upd-wrong", "wrong", {}), ("/upd-500", "status", {"status": 500}),
                               ("/upd-close", "close", {})):
            self.rc.handshake(path, mode, **kw)
            body = {"callBackUrl": self.url(path), "callBackToken": "changed", "eventTypes": ["JobCreated"]}
            r = self.srv.req("PUT", "/v1/webhook/" + wid, json=body, token=self.tok)
            self.assertError(r, 400, "CallbackValidationFailed", path)
            self.assertEqual(self.rc.count(path, handshake=True), 1, path)
            self.assertEqual(self.get(wid), before)

    def test_update_invalid_values(self):
        wid = self.create()
        before = self.get(wid)
        for body in ({"eventTypes": ["Bogus"]}, {"eventTypes": []}, {"objectType": "Channel"},
                     {"Active": "maybe"}, {"Active": 1}, {"validity": now_ms() - 5000},
                     {"callBackUrl": "http://127.0.0.1/x"}, {"callBackToken": "x" * 1025},
                     {"callBackContext": "c" * 4097}, {"objectId": 3}, [], "x"):
            r = self.srv.req("PUT", "/v1/webhook/" + wid, json=body, token=self.tok)
            self.assertError(r, 400, "InvalidParameters", repr(body)[:60])
            self.assertEqual(self.get(wid), before, repr(body)[:60])
        for raw in (b"{", b"", b"\xff"):
            r = self.srv.req("PUT", "/v1/webhook/" + wid, raw=raw, token=self.tok,
                             headers={"Content-Type": "application/json"})
            self.assertError(r, 400, "InvalidParameters", repr(raw))

    def test_update_forbidden_object(self):
        app, tok = self.srv.app_token(objectIds=["mine"])
        wid = self.create(tok=tok, objectId="mine")
        r = self.srv.req("PUT", "/v1/webhook/" + wid, json={"objectId": "theirs"}, token=tok)
        self.assertError(r, 403, "Forbidden")
        self.assertEqual(self.get(wid, tok)["objectId"], "mine")

    def test_update_unknown(self):
        r = self.srv.req("PUT", "/v1/webhook/00000000-0000-4000-8000-000000000000", json={"Active": "true"},
                         token=self.tok)
        self.assertError(r, 404, "NotFound")

    # ---------------------------------------------------------------- delete
    def test_delete(self):
        wid = self.create()
        keep = self.create()
        r = self.srv.req("DELETE", "/v1/webhook/" + wid, token=self.tok)
        self.assertEqual(self.assertJsonOk(r), {})
        self.assertError(self.srv.get_webhook(self.tok, wid), 404, "NotFound")
        self.assertError(self.srv.req("DELETE", "/v1/webhook/" + wid, token=self.tok), 404, "NotFound")
        self.assertError(self.srv.req("PUT", "/v1/webhook/" + wid, json={"Active": "true"}, token=self.tok),
                         404, "NotFound")
        self.assertEqual([w["id"] for w in self.srv.list_webhooks(self.tok)], [keep])

    # ---------------------------------------------------------------- isolation
    def test_other_application_cannot_see_or_touch(self):
        wid = self.create(objectId="shared-group", callBackToken="mine")
        before = self.get(wid)
        _, other = self.srv.app_token(objectIds=["*"])
        self.assertEqual(self.srv.list_webhooks(other), [])
        self.assertEqual(self.srv.list_webhooks(other, "objectId=shared-group&objectType=Group"), [])
        self.assertError(self.srv.get_webhook(other, wid), 404, "NotFound")
        r = self.srv.req("PUT", "/v1/webhook/" + wid, json={"callBackToken": "stolen", "Active": "false"},
                         token=other)
        self.assertError(r, 404, "NotFound")
        self.assertError(self.srv.req("DELETE", "/v1/webhook/" + wid, token=other), 404, "NotFound")
        self.assertEqual(self.get(wid), before)
        # the other app may subscribe the same object; neither sees the other's webhook
        wid2 = self.create(tok=other, objectId="shared-group")
        self.assertEqual([w["id"] for w in self.srv.list_webhooks(other, "objectId=shared-group")], [wid2])
        self.assertEqual([w["id"] for w in self.srv.list_webhooks(self.tok, "objectId=shared-group")], [wid])
