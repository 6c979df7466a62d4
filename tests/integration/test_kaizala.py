"""Kaizala fidelity where real clients notice (README "Migrating a Kaizala connector"):

  - a client that follows the published C# library's rule (fetch a new access token only when a
    401 says InvalidToken / AuthException and its message contains Kaizala's exact text) keeps
    working across token expiries;
  - the original .NET server's leniency: a leading UTF-8 byte-order mark, null for an optional
    field (unchanged in a PUT), validity 0/"0"/"" = the default, fixed path segments and ids in
    any case; what is really ambiguous is still refused with a message naming the field;
  - callbacks shaped like Kaizala's: the fields of real callbacks in their order, isBotfromUser
    and sourceGroupId from the publisher, the same bytes on every attempt;
  - a W3C traceparent on POST /v1/events passed unchanged to every attempt; malformed ones dropped;
  - GET /openapi.json is docs/openapi.json byte for byte.

Every test runs on SQLite and, with KZ_TEST_DB set (scripts/run-tests.sh), on PostgreSQL."""

import json
import os
import time

from dlib import DReceiver, create_hook, expected_body, publish, uid, wait_until
from kzlib import REPO, TWO_YEARS_MS, KzTestCase, now_ms, timeout_scale, webhook_body

BOM = b"\xef\xbb\xbf"
KAIZALA_TOKEN_TEXT = "Invalid token. Failure reason:Token validation failed due to unknown reason!"
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ORDER = ["subscriptionId", "objectId", "objectType", "eventType", "eventId", "data", "context",
         "fromUser", "fromUserId", "isBotfromUser", "fromUserName", "fromUserProfilePic", "groupId",
         "sourceGroupId"]


def ordered_keys(body):
    """The member names of a JSON object in the order they were written."""
    return [k for k, _ in json.loads(body.decode("utf-8"), object_pairs_hook=lambda p: p)]


class CSharpStyleClient:
    """What PankajMS1987/Kaizala-API-DLL (KaizalaSession.cs) does: every call sends the access
    token; when the answer is an error whose errorCategoryKey contains AuthException, errorCode
    contains InvalidToken and message contains Kaizala's text, it fetches a new token (with the
    application's credentials) and retries the call once. Any other answer is returned as is."""

    def __init__(self, srv, app):
        self.srv = srv
        self.app = app
        self.refreshes = 0
        self.token = None
        self.base = None
        self._fetch()

    def _fetch(self):
        r = self.srv.token_resp(self.app)
        assert r.status == 200, (r.status, r.raw)
        self.token = r.json["accessToken"]
        self.base = r.json["endpointUrl"]

    @staticmethod
    def must_refresh(r):
        j = r.json if isinstance(r.json, dict) else {}
        return ("AuthException" in (j.get("errorCategoryKey") or "")
                and "InvalidToken" in (j.get("errorCode") or "")
                and KAIZALA_TOKEN_TEXT in (j.get("message") or ""))

    def call(self, method, path, json_body=None):
        r = self.srv.req(method, path, json=json_body, token=self.token)
        if self.must_refresh(r):
            self.refreshes += 1
            self._fetch()
            r = self.srv.req(method, path, json=json_body, token=self.token)
        return r


class TokenRefresh(KzTestCase):
    timeout = 90

    def test_csharp_client_survives_token_expiry(self):
        ttl = 1.5
        srv = self.server(["--token-ttl", "1500ms"])
        rc = self.receiver()
        app = srv.create_app()
        cl = CSharpStyleClient(srv, app)
        self.assertTrue(cl.base.startswith("http://127.0.0.1:"), cl.base)
        r = cl.call("POST", "/v1/webhook", webhook_body(rc.url("/tok"), objectId="g-tok"))
        self.assertJsonOk(r)
        wid = r.json["webhookId"]
        self.assertEqual(cl.refreshes, 0)
        first = cl.token
        # two expiries; every kind of call goes through, one refresh per expiry
        calls = [("GET", "/v1/webhook?objectId=g-tok&objectType=Group", None),
                 ("GET", "/v1/webhook/" + wid, None),
                 ("PUT", "/v1/webhook/" + wid, {"callBackContext": "ctx"}),
                 ("GET", "/v1/webhook/%s/deliveries" % wid, None),
                 ("POST", "/v1/webhook/%s/replay" % wid, {"since": 0})]
        for round_ in (1, 2):
            time.sleep(ttl + 0.3)
            for i, (m, p, b) in enumerate(calls):
                r = cl.call(m, p, b)
                self.assertIn(r.status, (200, 202), "%s %s after expiry %d: %r"
                              % (m, p, round_, r.raw[:300]))
            self.assertEqual(cl.refreshes, round_)
        self.assertNotEqual(cl.token, first)
        # the expired token itself: 401 with the text, which is what made the client refresh
        r = srv.req("GET", "/v1/webhook/" + wid, token=first)
        self.assertError(r, 401, "InvalidToken")
        self.assertTrue(CSharpStyleClient.must_refresh(r), r.json)
        self.assertTrue(r.json["message"].startswith(KAIZALA_TOKEN_TEXT), r.json)
        # an unknown token, an Authorization: Bearer one: the same answer
        for h in ({"accessToken": "nope"}, {"Authorization": "Bearer nope"}):
            r = srv.req("GET", "/v1/webhook/" + wid, headers=h)
            self.assertError(r, 401, "InvalidToken")
            self.assertTrue(CSharpStyleClient.must_refresh(r), r.json)
        # no token at all is not a token to refresh: Unauthenticated, without the text
        r = srv.req("GET", "/v1/webhook/" + wid)
        self.assertError(r, 401, "Unauthenticated")
        self.assertFalse(CSharpStyleClient.must_refresh(r), r.json)
        # wrong credentials are not refreshable either (the client would loop)
        bad = dict(app, applicationSecret="x" * 43)
        r = srv.token_resp(bad)
        self.assertEqual(r.status, 401)
        self.assertFalse(CSharpStyleClient.must_refresh(r), r.json)
        # the webhook is the one the client created, changed through all of it
        r = cl.call("GET", "/v1/webhook/" + wid)
        self.assertEqual(r.json["callBackContext"], "ctx")


class Lenient(KzTestCase):
    """The .NET server's leniency on one shared server."""
    timeout = 90

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(["--retry-schedule", "200ms,200ms"])
        cls.rc = DReceiver()
        cls.addClassCleanup(cls.rc.stop)
        cls.app, cls.tok = cls.srv.app_token()

    def raw(self, method, path, body, token=True, admin=False, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.srv.req(method, path, raw=body, headers=h, token=self.tok if token else None,
                            admin=admin)

    def get(self, wid):
        return self.assertJsonOk(self.srv.get_webhook(self.tok, wid))

    # ---------------------------------------------------------------- byte-order mark
    def test_bom_on_every_json_body(self):
        gid = uid("g")
        body = json.dumps(webhook_body(self.rc.url("/bom"), objectId=gid,
                                       callBackContext="c1")).encode()
        r = self.raw("POST", "/v1/webhook", BOM + body)
        wid = self.assertJsonOk(r)["webhookId"]
        r = self.raw("PUT", "/v1/webhook/" + wid, BOM + b'{"callBackContext": "c2"}')
        self.assertEqual(self.assertJsonOk(r)["callBackContext"], "c2")
        # publish: one event and an array; data keeps its spelling (byte-exact after the BOM)
        ev = (b'{"eventType": "TextMessageCreated", "groupId": "%s", "eventId": "%s", '
              b'"data": {"n": 1.50, "big": 18446744073709551616, "s": "\\u00e9"}}'
              % (gid.encode(), uid("e").encode()))
        r = self.raw("POST", "/v1/events", BOM + ev, token=False, admin=True)
        self.assertStatus(r, 202)
        arr = b"[" + ev.replace(b'"eventId": "', b'"eventId": "a1-') + b", " + \
            ev.replace(b'"eventId": "', b'"eventId": "a2-') + b"]"
        r = self.raw("POST", "/v1/events", BOM + arr, token=False, admin=True)
        self.assertStatus(r, 202)
        self.assertEqual([e["deliveries"] for e in r.json["events"]], [1, 1])
        got = self.rc.wait_for(3, path="/bom", method="POST")
        for q in got:
            self.assertIn(b'"data":{"n":1.50,"big":18446744073709551616,"s":"\\u00e9"},', q.body)
            self.assertFalse(q.body.startswith(BOM))
        r = self.raw("POST", "/v1/webhook/%s/replay" % wid, BOM + b'{"since": 0}')
        self.assertStatus(r, 202)
        r = self.raw("POST", "/admin/v1/applications", BOM + b'{"name": "bom", "objectIds": ["*"]}',
                     token=False, admin=True)
        self.assertStatus(r, 201)
        # only at the very start, and only once
        for bad in (b" " + BOM + body, BOM + BOM + body, BOM, body[:1] + BOM + body[1:]):
            r = self.raw("POST", "/v1/webhook", bad)
            self.assertError(r, 400, "InvalidParameters", repr(bad[:8]))

    # ---------------------------------------------------------------- null = left out
    def test_null_is_left_out_and_unchanged_in_put(self):
        gid = uid("g")
        # a typed model's create: every optional property serialised, as null
        body = dict(webhook_body(self.rc.url("/null"), objectId=gid), callBackToken=None,
                    callBackContext=None, validity=None)
        t0 = now_ms()
        wid = self.assertJsonOk(self.srv.create_webhook(self.tok, body))["webhookId"]
        w = self.get(wid)
        self.assertIsNone(w["callbackToken"])
        self.assertIsNone(w["callBackContext"])
        self.assertGreaterEqual(w["validity"], t0 + TWO_YEARS_MS)
        put = {"callBackToken": "tk", "callBackContext": "cx", "validity": now_ms() + 3600000}
        before = self.assertJsonOk(self.srv.req("PUT", "/v1/webhook/" + wid, json=put,
                                                token=self.tok))
        # the typed model's PUT that changes only Active: everything else null (or 0)
        typed = {"objectId": None, "objectType": None, "eventTypes": None, "callBackUrl": None,
                 "callBackToken": None, "callBackContext": None, "validity": 0, "Active": False}
        after = self.assertJsonOk(self.srv.req("PUT", "/v1/webhook/" + wid, json=typed,
                                               token=self.tok))
        self.assertFalse(after["active"])
        for k in ("objectId", "objectType", "events", "callbackUrl", "callbackToken",
                  "callBackContext", "validity", "ts"):
            self.assertEqual(after[k], before[k], k)
        typed["Active"] = None
        typed["validity"] = ""
        again = self.assertJsonOk(self.srv.req("PUT", "/v1/webhook/" + wid, json=typed,
                                               token=self.tok))
        self.assertEqual(again, after)
        # "" still clears the optional strings (the documented way)
        cleared = self.assertJsonOk(self.srv.req("PUT", "/v1/webhook/" + wid,
                                                 json={"callBackToken": "", "callBackContext": ""},
                                                 token=self.tok))
        self.assertIsNone(cleared["callbackToken"])
        self.assertIsNone(cleared["callBackContext"])
        # a required field given as null on create is still missing, named
        for f in ("objectId", "objectType", "eventTypes", "callBackUrl"):
            r = self.srv.create_webhook(self.tok, dict(body, **{f: None}))
            self.assertError(r, 400, "InvalidParameters", f)
            self.assertIn(f, r.json["message"])
        # publishing with every optional field null
        ev = {"eventType": "TextMessageCreated", "groupId": gid, "actionId": None,
              "actionPackageId": None, "eventId": uid("n"), "fromUser": None, "fromUserId": None,
              "fromUserName": None, "fromUserProfilePic": None, "isBotfromUser": None,
              "sourceGroupId": None, "data": None}
        self.srv.req("PUT", "/v1/webhook/" + wid, json={"Active": True}, token=self.tok)
        self.assertEqual(publish(self.srv, ev)["deliveries"], 1)
        q = self.rc.wait_for(1, path="/null", method="POST")[0]
        self.assertEqual(q.body, expected_body(wid, {"objectId": gid, "objectType": "Group"},
                                               dict(ev, data={})))

    # ---------------------------------------------------------------- validity
    def test_validity_zero_or_empty_is_the_default(self):
        for v in (0, "0", ""):
            t0 = now_ms()
            body = webhook_body(self.rc.url("/v"), objectId=uid("g"), validity=v)
            wid = self.assertJsonOk(self.srv.create_webhook(self.tok, body))["webhookId"]
            w = self.get(wid)
            self.assertEqual(w["validity"], w["ts"] + TWO_YEARS_MS, repr(v))
            self.assertGreaterEqual(w["ts"], t0)
            self.assertTrue(w["active"])
            # in a PUT: unchanged
            w2 = self.assertJsonOk(self.srv.req("PUT", "/v1/webhook/" + wid, json={"validity": v},
                                                token=self.tok))
            self.assertEqual(w2["validity"], w["validity"], repr(v))
        # what is really wrong is still refused, naming the field
        for v in (-5, "-5", "tomorrow", " 0", "0.5", True, {}, [], now_ms() - 1000,
                  str(now_ms() - 1000), 1e300):
            body = webhook_body(self.rc.url("/v"), objectId=uid("g"), validity=v)
            r = self.srv.create_webhook(self.tok, body)
            self.assertError(r, 400, "InvalidParameters", repr(v))
            self.assertIn("validity", r.json["message"], repr(v))

    # ---------------------------------------------------------------- paths in any case
    def test_paths_and_ids_in_any_case(self):
        gid = uid("g")
        r = self.srv.req("POST", "/V1/WebHook", json=webhook_body(self.rc.url("/case"),
                                                                  objectId=gid), token=self.tok)
        wid = self.assertJsonOk(r)["webhookId"]
        self.assertEqual(wid, wid.lower())
        up = wid.upper()
        self.assertEqual(self.assertJsonOk(self.srv.req("GET", "/V1/WEBHOOK/" + up,
                                                        token=self.tok))["id"], wid)
        self.assertEqual(self.assertJsonOk(self.srv.req("GET", "/v1/webhook/" + up,
                                                        token=self.tok))["id"], wid)
        r = self.srv.req("GET", "/v1/Webhook?objectId=%s&objectType=Group" % gid, token=self.tok)
        self.assertEqual([w["id"] for w in self.assertJsonOk(r)["webhooks"]], [wid])
        r = self.srv.req("PUT", "//V1/Webhook/" + up, json={"callBackContext": "x"},
                         token=self.tok)
        self.assertEqual(self.assertJsonOk(r)["id"], wid)
        self.assertJsonOk(self.srv.req("GET", "/v1/webhook/%s/DELIVERIES" % up, token=self.tok))
        self.assertStatus(self.srv.req("POST", "/V1/Webhook/%s/Replay" % up, json={"since": 0},
                                       token=self.tok), 202)
        self.assertStatus(self.srv.req("POST", "/V1/EVENTS", admin=True,
                                       json={"eventType": "TextMessageCreated", "groupId": gid}),
                          202)
        h = {"applicationId": self.app["applicationId"].upper(),
             "applicationSecret": self.app["applicationSecret"],
             "refreshToken": self.app["refreshToken"]}
        self.assertJsonOk(self.srv.req("GET", "/V1/ACCESSTOKEN", headers=h))
        self.assertJsonOk(self.srv.req("GET", "/Admin/V1/Applications", admin=True))
        self.assertJsonOk(self.srv.req("GET", "/HEALTHZ"))
        self.assertJsonOk(self.srv.req("GET", "/OpenAPI.json"))
        # the secret (not an id) stays case-sensitive
        r = self.srv.req("GET", "/v1/accessToken", headers=dict(
            h, applicationSecret=self.app["applicationSecret"].swapcase()))
        self.assertError(r, 401)
        # delete in upper case: gone in any case; an application too
        self.assertJsonOk(self.srv.req("DELETE", "/V1/WEBHOOK/" + up, token=self.tok))
        self.assertError(self.srv.req("GET", "/v1/webhook/" + wid, token=self.tok), 404,
                         "NotFound")
        other = self.srv.create_app()
        self.assertJsonOk(self.srv.req("DELETE", "/ADMIN/V1/APPLICATIONS/"
                                       + other["applicationId"].upper(), admin=True))
        ids = [a["applicationId"] for a in
               self.assertJsonOk(self.srv.admin("GET", "/admin/v1/applications"))["applications"]]
        self.assertNotIn(other["applicationId"], ids)
        # no other path segment is made up by case folding
        self.assertError(self.srv.req("GET", "/v2/webhook", token=self.tok), 404, "NotFound")
        self.assertError(self.srv.req("GET", "/v1/webhooks", token=self.tok), 404, "NotFound")


class Callbacks(KzTestCase):
    """The callback body and headers, on one shared server with fast retries."""
    timeout = 90

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(["--retry-schedule", "200ms,200ms,200ms"])
        cls.rc = DReceiver()
        cls.addClassCleanup(cls.rc.stop)
        cls.app, cls.tok = cls.srv.app_token()

    def hook(self, path, objectType="Group", objectId=None, **kw):
        oid = objectId or uid("g")
        wid, secret, body = create_hook(self, self.srv, self.tok, self.rc.url(path),
                                        objectId=oid, objectType=objectType,
                                        eventTypes=("TextMessageCreated", "SurveyResponse"), **kw)
        return wid, body

    def test_body_fields_in_kaizala_order(self):
        wid, hook = self.hook("/order", callBackContext="tenant-42")
        gid = hook["objectId"]
        evs = [
            {"eventType": "SurveyResponse", "groupId": gid, "eventId": uid("b"),
             "fromUser": "+15550100", "fromUserId": "u1", "isBotfromUser": True,
             "fromUserName": "Bot", "fromUserProfilePic": "", "sourceGroupId": "parent-g",
             "data": {"z": 1, "a": [1.0, 2e3]}},
            {"eventType": "SurveyResponse", "groupId": gid, "eventId": uid("d"),
             "fromUser": "+15550101", "data": {"x": "y"}},
            {"eventType": "TextMessageCreated", "groupId": gid, "eventId": uid("s"),
             "isBotfromUser": "TRUE"},
            {"eventType": "TextMessageCreated", "groupId": gid, "eventId": uid("f"),
             "isBotfromUser": "false", "sourceGroupId": ""},
        ]
        publish(self.srv, evs)
        got = {q.headers["webhook-id"]: q for q in self.rc.wait_for(4, path="/order",
                                                                     method="POST")}
        for ev in evs:
            q = got[ev["eventId"]]
            want = expected_body(wid, hook, ev)
            self.assertEqual(q.body, want)
            self.assertEqual(ordered_keys(q.body), ORDER)
        b = [json.loads(got[e["eventId"]].body) for e in evs]
        self.assertEqual([x["isBotfromUser"] for x in b], [True, False, True, False])
        self.assertEqual([x["sourceGroupId"] for x in b], ["parent-g", gid, gid, gid])
        self.assertEqual(b[0]["data"], {"z": 1, "a": [1.0, 2e3]})
        self.assertIn(b'"data":{"z":1,"a":[1.0,2000.0]},"context":"tenant-42",',
                      got[evs[0]["eventId"]].body)

    def test_context_and_group_omitted_when_unset(self):
        pid = uid("p")
        wid, hook = self.hook("/pkg", objectType="ActionPackage", objectId=pid)
        ev = {"eventType": "SurveyResponse", "actionPackageId": pid, "eventId": uid("p")}
        publish(self.srv, ev)
        q = self.rc.wait_for(1, path="/pkg", method="POST")[0]
        self.assertEqual(ordered_keys(q.body),
                         [k for k in ORDER if k not in ("context", "groupId", "sourceGroupId")])
        self.assertEqual(q.body, expected_body(wid, hook, ev))
        # a sourceGroupId without a groupId is still sent
        ev2 = {"eventType": "SurveyResponse", "actionPackageId": pid, "eventId": uid("p"),
               "sourceGroupId": "sg"}
        publish(self.srv, ev2)
        q = [x for x in self.rc.wait_for(2, path="/pkg", method="POST")
             if x.headers["webhook-id"] == ev2["eventId"]][0]
        self.assertEqual(ordered_keys(q.body)[-1], "sourceGroupId")
        self.assertEqual(q.body, expected_body(wid, hook, ev2))

    def test_bad_new_fields_refused_nothing_stored(self):
        wid, hook = self.hook("/bad")
        gid = hook["objectId"]
        eid = uid("bad")
        cases = {"isBotfromUser": ["yes", 1, "1", {}, " true"], "sourceGroupId": [7, True, {},
                                                                                  "x" * 257]}
        for field, values in cases.items():
            for v in values:
                for body in ({"eventType": "TextMessageCreated", "groupId": gid, "eventId": eid,
                              field: v},
                             [{"eventType": "TextMessageCreated", "groupId": gid},
                              {"eventType": "TextMessageCreated", "groupId": gid, "eventId": eid,
                               field: v}]):
                    r = self.srv.admin("POST", "/v1/events", json=body)
                    self.assertError(r, 400, "InvalidParameters", "%s=%r" % (field, v))
                    self.assertIn(field, r.json["message"])
        # nothing was stored: the eventId is still new, and only its one delivery arrives
        self.assertEqual(publish(self.srv, {"eventType": "TextMessageCreated", "groupId": gid,
                                            "eventId": eid}), {"eventId": eid, "deliveries": 1})
        self.rc.wait_for(1, path="/bad", method="POST")
        time.sleep(0.5 * timeout_scale())
        self.assertEqual(len(self.rc.requests(path="/bad", method="POST")), 1)

    # ---------------------------------------------------------------- traceparent
    def test_traceparent_on_every_attempt_with_the_same_bytes(self):
        wid, hook = self.hook("/tp")
        gid = hook["objectId"]
        self.rc.script("/tp", [500, 503])
        ev = {"eventType": "TextMessageCreated", "groupId": gid, "eventId": uid("t"),
              "isBotfromUser": True, "data": {"text": "hi"}}
        r = self.srv.admin("POST", "/v1/events", json=ev, headers={"traceparent": TP})
        self.assertStatus(r, 202)
        got = self.rc.wait_for(3, path="/tp", method="POST", timeout=15)
        self.assertEqual(len({q.body for q in got}), 1)
        self.assertEqual(got[0].body, expected_body(wid, hook, ev))
        for q in got:
            self.assertEqual([v for k, v in q.header_list if k.lower() == "traceparent"], [TP])
            self.assertEqual(q.headers["webhook-id"], ev["eventId"])
        # a replay sends it again too
        wait_until(lambda: self.rc.ok_requests("/tp"), 10, msg="delivered")
        self.assertStatus(self.srv.req("POST", "/v1/webhook/%s/replay" % wid, json={"since": 0},
                                       token=self.tok), 202)
        self.assertStatus(self.srv.req("POST", "/v1/webhook/%s/replay" % wid, json={"since": 0},
                                       token=self.tok), 202)

    def test_traceparent_array_future_version_and_malformed(self):
        wid, hook = self.hook("/tpa")
        gid = hook["objectId"]
        future = "cc-" + TP[3:] + "-what-the-future-will-be-like"
        cases = [(TP, TP), (future, future),
                 # dropped: upper case, version ff, extra after a version-00 value, zero ids,
                 # short, whitespace inside
                 (TP.upper(), None), ("ff" + TP[2:], None), (TP + "-x", None),
                 ("00-" + "0" * 32 + TP[35:], None), ("00-" + TP[3:35] + "-" + "0" * 16 + "-01", None),
                 (TP[:-1], None), (TP.replace("-", " "), None), ("garbage", None)]
        sent = {}
        for value, want in cases:
            evs = [{"eventType": "TextMessageCreated", "groupId": gid, "eventId": uid("a")}
                   for _ in range(2)]
            r = self.srv.admin("POST", "/v1/events", json=evs, headers={"traceparent": value})
            self.assertStatus(r, 202, repr(value))
            for e in evs:
                sent[e["eventId"]] = want
        got = self.rc.wait_for(len(sent), path="/tpa", method="POST", timeout=15)
        for q in got:
            want = sent[q.headers["webhook-id"]]
            tps = [v for k, v in q.header_list if k.lower() == "traceparent"]
            self.assertEqual(tps, [want] if want else [], q.headers["webhook-id"])
        # without the header: none
        ev = {"eventType": "TextMessageCreated", "groupId": gid, "eventId": uid("n")}
        publish(self.srv, ev)
        q = [x for x in self.rc.wait_for(len(sent) + 1, path="/tpa", method="POST")
             if x.headers["webhook-id"] == ev["eventId"]][0]
        self.assertNotIn("traceparent", q.headers)


class OpenApi(KzTestCase):
    def test_served_byte_for_byte_without_auth(self):
        srv = self.server()
        with open(os.path.join(REPO, "docs", "openapi.json"), "rb") as f:
            want = f.read()
        r = srv.req("GET", "/openapi.json")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("application/json"))
        self.assertEqual(r.raw, want)
        self.assertEqual(r.json["openapi"][:4], "3.1.")
        self.assertEqual(srv.req("GET", "/OPENAPI.JSON").raw, want)
        self.assertError(srv.req("POST", "/openapi.json", json={}), 405, "MethodNotAllowed")
