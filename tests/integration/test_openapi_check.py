"""The checker of docs/openapi.json (openapi_check.py): it passes the responses kzhook gives and
fails deliberately wrong ones; and the document itself is a valid OpenAPI 3.1 description whose
examples match its own schemas."""

import copy
import json
import threading
import unittest

import openapi_check as oc
from kzlib import KzTestCase

JSON = {"Content-Type": "application/json"}
WID = "96a06837-087b-410b-b124-2f1858e3f8ab"
WEBHOOK = {"id": WID, "objectId": "g1", "objectType": "Group",
           "events": ["SurveyResponse", "TextMessageCreated"], "filters": [],
           "callbackUrl": "https://hooks.example.org/kz", "callbackToken": "s3cret",
           "callBackContext": "tenant-42", "ts": 1796176754680, "validity": 1859290606680,
           "active": True, "headers": {}, "rateLimit": 0, "ordered": False, "filter": {}}
DELIVERY = {"deliveryId": "2", "eventId": "m-1", "eventType": "TextMessageCreated",
            "status": "pending", "attempts": 2, "lastStatusCode": 500, "lastError": "HTTP 500",
            "lastResponse": "ok", "nextAttemptAt": 1796176755806, "createdAt": 1796176754696,
            "updatedAt": 1796176755702}


def err(status, code, msg="something went wrong"):
    cat = "AuthException" if status == 401 else "ServerError" if status >= 500 else "ClientError"
    return json.dumps({"message": msg, "errorCode": code, "errorCategoryKey": cat}).encode()


def js(v):
    return json.dumps(v).encode()


class CheckerPasses(KzTestCase):
    """Right responses, as kzhook sends them, pass."""

    timeout = 30

    def ok(self, method, path, status, headers, body):
        oc.check_response(method, path, status, headers, body)

    def test_right_responses_pass(self):
        self.ok("GET", "/healthz", 200, JSON, b'{"status":"ok"}')
        self.ok("HEAD", "/healthz", 200, JSON, b"")
        self.ok("GET", "/metrics", 200, {"Content-Type": "text/plain; version=0.0.4"}, b"a 1\n")
        self.ok("GET", "/v1/webhook/" + WID, 200, JSON, js(WEBHOOK))
        self.ok("PUT", "/v1/webhook/" + WID, 200, JSON, js(dict(WEBHOOK, callbackToken=None,
                                                                 callBackContext=None)))
        self.ok("GET", "/v1/webhook?objectId=g1&objectType=Group", 200, JSON, js({"webhooks": [WEBHOOK]}))
        self.ok("GET", "/v1/webhook/%s/deliveries?limit=1" % WID, 200, JSON,
                js({"deliveries": [DELIVERY], "nextCursor": "2"}))
        self.ok("GET", "/v1/webhook/%s/deliveries" % WID, 200, JSON,
                js({"deliveries": [], "nextCursor": None}))
        self.ok("POST", "/v1/webhook/%s/replay" % WID, 202, JSON, b'{"requeued":0}')
        self.ok("DELETE", "/v1/webhook/" + WID, 200, JSON, b"{}")
        self.ok("POST", "/v1/events", 202, JSON, b'{"eventId":"e1","deliveries":3}')
        self.ok("POST", "/v1/events", 202, JSON,
                b'{"events":[{"eventId":"e1","deliveries":3},{"eventId":"e2","deliveries":0}]}')
        self.ok("POST", "/v1/events", 413, JSON, err(413, "FanoutTooLarge"))
        self.ok("POST", "/v1/webhook", 403, JSON, err(403, "QuotaExceeded"))
        self.ok("POST", "/v1/webhook", 400, JSON, err(400, "CallbackValidationFailed"))
        self.ok("GET", "/v1/webhook", 401, JSON, err(401, "Unauthenticated"))
        self.ok("GET", "/v1/webhook", 401, JSON, err(
            401, "InvalidToken", "Invalid token. Failure reason:Token validation failed due to "
            "unknown reason! (token expired)"))
        self.ok("GET", "/v1/webhook", 429, dict(JSON, **{"Retry-After": "44"}), err(429, "Throttled"))
        self.ok("GET", "/admin/v1/applications", 503, JSON, err(503, "Unavailable"))

    def test_paths_as_the_server_routes_them(self):
        # doubled leading slash, case-insensitive fixed segments, percent-encoding, query
        self.ok("GET", "//v1/webhook/" + WID, 200, JSON, js(WEBHOOK))
        self.ok("GET", "/V1/WebHook/%s?x=1" % WID.upper(), 200, JSON, js(WEBHOOK))
        self.ok("GET", "/v1/webhook/a%2Fb", 404, JSON, err(404, "NotFound"))

    def test_unrouted_requests(self):
        self.ok("GET", "/nothing/here", 404, JSON, err(404, "NotFound"))
        self.ok("GET", "/v1/webhook/%s/unknown" % WID, 404, JSON, err(404, "NotFound"))
        self.ok("PATCH", "/v1/webhook/" + WID, 405, dict(JSON, Allow="GET, PUT, DELETE"),
                err(405, "MethodNotAllowed"))
        self.ok("POST", "/healthz", 405, dict(JSON, Allow="GET"), err(405, "MethodNotAllowed"))
        self.ok("GET", "/nothing", 413, JSON, err(413, "PayloadTooLarge"))


class CheckerFails(KzTestCase):
    """Deliberately wrong responses fail, with a message naming the operation and the fault."""

    timeout = 30

    def bad(self, fragment, method, path, status, headers, body):
        with self.assertRaises(AssertionError) as cm:
            oc.check_response(method, path, status, headers, body)
        msg = str(cm.exception)
        self.assertIn(fragment, msg)
        self.assertIn("-> %d" % status, msg)
        return msg

    def test_wrong_status(self):
        m = self.bad("status 201 is not documented", "GET", "/v1/webhook/" + WID, 201, JSON, js(WEBHOOK))
        self.assertIn("getWebhook", m)
        self.bad("status 200 is not documented", "GET", "/nothing", 200, JSON, b"{}")
        self.bad("status 403 is not documented", "DELETE", "/v1/webhook/" + WID, 403, JSON,
                 err(403, "Forbidden"))
        self.bad("status 200 is not documented", "PATCH", "/v1/webhook/" + WID, 200, JSON, b"{}")

    def test_missing_required_field(self):
        w = dict(WEBHOOK)
        del w["active"]
        m = self.bad("'active' is a required property", "GET", "/v1/webhook/" + WID, 200, JSON, js(w))
        self.assertIn("getWebhook", m)
        d = dict(DELIVERY)
        del d["nextAttemptAt"]
        self.bad("'nextAttemptAt' is a required property", "GET", "/v1/webhook/%s/deliveries" % WID,
                 200, JSON, js({"deliveries": [d], "nextCursor": None}))
        self.bad("'errorCode' is a required property", "GET", "/nothing", 404, JSON,
                 b'{"message":"m","errorCategoryKey":"ClientError"}')

    def test_wrong_type(self):
        self.bad("is not of type 'integer'", "GET", "/v1/webhook/" + WID, 200, JSON,
                 js(dict(WEBHOOK, ts=str(WEBHOOK["ts"]))))
        self.bad("is not of type 'boolean'", "GET", "/v1/webhook", 200, JSON,
                 js({"webhooks": [dict(WEBHOOK, active="true")]}))
        self.bad("is not of type 'null'", "GET", "/v1/accessToken", 200, JSON, js({
            "accessToken": "A" * 43, "endpointUrl": "http://127.0.0.1:8080",
            "accessTokenExpiry": 1, "refreshToken": "r", "scope": "s"}))

    def test_wrong_enum(self):
        self.bad("is not one of", "GET", "/v1/webhook/" + WID, 200, JSON,
                 js(dict(WEBHOOK, objectType="Channel")))
        self.bad("is not one of", "GET", "/nothing", 404, JSON, err(404, "InvalidParameters"))
        self.bad("'AuthException' was expected", "GET", "/v1/webhook", 401, JSON,
                 js({"message": "m", "errorCode": "Unauthenticated", "errorCategoryKey": "ClientError"}))
        # InvalidToken must carry the text Kaizala client libraries look for
        self.bad("does not match", "GET", "/v1/webhook", 401, JSON,
                 err(401, "InvalidToken", "Invalid token. Failure reason:unknown token"))

    def test_extra_property(self):
        m = self.bad("Additional properties are not allowed ('notAField' was unexpected)", "GET",
                     "/v1/webhook/" + WID, 200, JSON, js(dict(WEBHOOK, notAField=0)))
        self.assertIn("getWebhook", m)
        self.bad("Additional properties are not allowed", "POST", "/v1/events", 202, JSON,
                 b'{"eventId":"e1","deliveries":1,"extra":true}')
        self.bad("Additional properties are not allowed", "GET", "/nothing", 404, JSON,
                 b'{"message":"m","errorCode":"NotFound","errorCategoryKey":"ClientError","x":1}')

    def test_missing_retry_after_on_429(self):
        self.bad("required header retry-after is missing", "GET", "/v1/webhook", 429, JSON,
                 err(429, "Throttled"))
        self.bad("required header retry-after is missing", "GET", "/v1/accessToken", 429, JSON,
                 err(429, "Throttled"))
        self.bad("header Retry-After", "GET", "/v1/webhook", 429, dict(JSON, **{"Retry-After": "soon"}),
                 err(429, "Throttled"))

    def test_405_needs_the_right_allow(self):
        self.bad("required header allow is missing", "PATCH", "/v1/webhook", 405, JSON,
                 err(405, "MethodNotAllowed"))
        self.bad("does not list the documented methods", "PATCH", "/v1/webhook", 405,
                 dict(JSON, Allow="GET"), err(405, "MethodNotAllowed"))

    def test_wrong_content_type(self):
        self.bad("Content-Type 'text/html' is not documented", "GET", "/nothing", 404,
                 {"Content-Type": "text/html"}, b"<html>Not found</html>")
        self.bad("Content-Type 'application/json' is not documented", "GET", "/metrics", 200, JSON, b"{}")
        self.bad("Content-Type '' is not documented", "GET", "/healthz", 200, {}, b'{"status":"ok"}')

    def test_body_not_json(self):
        self.bad("not valid JSON", "GET", "/healthz", 200, JSON, b'{"status":')
        self.bad("repeated key", "GET", "/healthz", 200, JSON, b'{"status":"ok","status":"ok"}')


class HookedIntoReq(KzTestCase):
    """Server.req() checks every response: with a document that says /healthz answers something
    else, the real server's answer fails, on the main thread and (reported by the next req())
    from a helper thread; check_openapi=False opts out."""

    timeout = 30

    def setUp(self):
        self.srv = self.server()  # started (its /healthz polled) with the real document
        doc = copy.deepcopy(oc.spec().doc)
        doc["components"]["schemas"]["Health"]["properties"]["status"] = {"const": "degraded"}
        self._saved = oc._spec
        oc._spec = oc.Spec(doc)
        self.addCleanup(setattr, oc, "_spec", self._saved)

    def test_mismatch_fails_the_request(self):
        srv = self.srv
        with self.assertRaises(AssertionError) as cm:
            srv.req("GET", "/healthz")
        self.assertIn("getHealth", str(cm.exception))
        self.assertIn("'degraded' was expected", str(cm.exception))
        self.assertEqual(srv.req("GET", "/healthz", check_openapi=False).status, 200)
        self.assertEqual(srv.req("GET", "/nothing").status, 404)  # documented: passes

    def test_mismatch_in_a_helper_thread_fails_the_next_request(self):
        srv = self.srv
        seen = []

        def helper():
            try:
                srv.req("GET", "/healthz")
            except AssertionError as e:
                seen.append(e)

        th = threading.Thread(target=helper)
        th.start()
        th.join(10)
        self.assertEqual(len(seen), 1)
        oc._spec = self._saved
        with self.assertRaises(AssertionError) as cm:
            srv.req("GET", "/healthz")
        self.assertIn("in a helper thread", str(cm.exception))
        self.assertEqual(srv.req("GET", "/healthz").status, 200)  # reported once


class Document(KzTestCase):
    """docs/openapi.json is valid OpenAPI 3.1 and consistent with itself."""

    timeout = 60

    def test_valid_openapi_31(self):
        from openapi_spec_validator import validate
        doc = oc.spec().doc
        self.assertTrue(doc["openapi"].startswith("3.1."))
        validate(copy.deepcopy(doc))

    def _media(self):
        """(pointer, media object) of every request body and response with content."""
        sp = oc.spec()
        out = []
        for tpl, item in sp.doc["paths"].items():
            for m in oc.METHODS:
                o = item.get(m)
                if not o:
                    continue
                base = "/paths/%s/%s" % (oc._ptr_escape(tpl), m)
                if "requestBody" in o:
                    for mt, media in o["requestBody"].get("content", {}).items():
                        out.append(("%s/requestBody/content/%s" % (base, oc._ptr_escape(mt)), media))
                for st, r in o["responses"].items():
                    if "$ref" in r:
                        continue  # components/responses are walked below
                    for mt, media in r.get("content", {}).items():
                        out.append(("%s/responses/%s/content/%s" % (base, st, oc._ptr_escape(mt)), media))
        for name, r in sp.doc["components"]["responses"].items():
            for mt, media in r.get("content", {}).items():
                out.append(("/components/responses/%s/content/%s" % (name, oc._ptr_escape(mt)), media))
        return out

    def test_examples_match_their_schemas(self):
        n = 0
        for ptr, media in self._media():
            if "schema" not in media:
                continue
            examples = []
            if "example" in media:
                examples.append(media["example"])
            examples += [e["value"] for e in media.get("examples", {}).values()]
            v = oc.spec().validator(ptr + "/schema")
            for ex in examples:
                if isinstance(ex, str):
                    continue
                errs = list(v.iter_errors(ex))
                self.assertFalse(errs, "%s: example %r: %s" % (ptr, ex, errs and errs[0].message))
                n += 1
        self.assertGreater(n, 25)

    def test_every_operation_documents_its_errors(self):
        sp = oc.spec()
        for tpl, item in sp.doc["paths"].items():
            for m in oc.METHODS:
                o = item.get(m)
                if not o:
                    continue
                where = "%s %s" % (m.upper(), tpl)
                self.assertTrue(o.get("operationId"), where)
                for st in ("400", "413", "431", "505"):  # the HTTP layer's own errors
                    self.assertIn(st, o["responses"], where)
                if o["security"]:
                    self.assertIn("401", o["responses"], where)
                    self.assertIn("429", o["responses"], where)
                    self.assertIn("503", o["responses"], where)
                for st, r in o["responses"].items():
                    r = sp.resolve(r)
                    if st == "429":
                        self.assertTrue(sp.resolve(r["headers"]["Retry-After"])["required"], where)
                    if st.isdigit() and int(st) >= 400 and m != "head":
                        self.assertIn("application/json", r.get("content", {}), "%s %s" % (where, st))
        self.assertTrue(sp.resolve(sp.doc["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"])["required"])


if __name__ == "__main__":
    unittest.main()
