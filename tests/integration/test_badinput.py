"""Hostile and malformed input: every answer is the contract's JSON error and the server survives
(README "Endpoints")."""

import json
import socket
import time

from kzlib import KzTestCase, read_http_response, readable, webhook_body

MIB = 1024 * 1024


class BadInput(KzTestCase):
    timeout = 90

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server()
        cls.rc = cls.class_receiver()

    def setUp(self):
        self.app, self.tok = self.srv.app_token()

    def tearDown(self):
        self.assertTrue(self.srv.running, "kzhook died")
        self.assertTrue(self.srv.healthy(), "kzhook unhealthy after bad input")

    def post(self, raw, path="/v1/webhook", headers=None, token=True, **kw):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.srv.req("POST", path, raw=raw, headers=h, token=self.tok if token else None, **kw)

    def good_body(self, **kw):
        return webhook_body(self.rc.url(self.ok_path), **kw)

    @property
    def ok_path(self):
        return "/bad-" + self._testMethodName

    # ---------------------------------------------------------------- JSON
    def test_malformed_json(self):
        for raw in (b"{", b"}", b"{\"objectId\":", b"{objectId: 'g1'", b"{\"a\":1,}", b"[1,2",
                    b"{\"a\":01}", b"{\"a\":\"\\x\"}", b"nul", b"\"unterminated", b"{\"a\" 1}",
                    b"{\"objectId\":\"g1\"} trailing", b"\x00", b"\xef\xbb\xbf"):
            r = self.post(raw)
            self.assertError(r, 400, "InvalidParameters", repr(raw))

    def test_json_not_an_object(self):
        for raw in (b"\"hello\"", b"42", b"null", b"true", b"[]", b"[{}]", b"3.5e10",
                    json.dumps([self.good_body()]).encode()):
            r = self.post(raw)
            self.assertError(r, 400, "InvalidParameters", repr(raw[:40]))

    def test_wrong_types(self):
        for body in (self.good_body(eventTypes="TextMessageCreated"), self.good_body(objectId=12345),
                     self.good_body(objectType=["Group"]), self.good_body(callBackUrl={"u": "x"}),
                     self.good_body(eventTypes=[["TextMessageCreated"]])):
            r = self.post(json.dumps(body).encode())
            self.assertError(r, 400, "InvalidParameters", repr(body)[:80])

    def test_empty_body(self):
        self.assertError(self.post(b""), 400, "InvalidParameters")
        self.assertError(self.post(b"   \r\n "), 400, "InvalidParameters")
        r = self.srv.req("POST", "/v1/webhook", token=self.tok)  # no body, Content-Length: 0
        self.assertError(r, 400, "InvalidParameters")
        r = self.srv.req("POST", "/admin/v1/applications", admin=True)
        self.assertError(r, 400, "InvalidParameters")

    def test_deeply_nested(self):
        for raw in (b"[" * 100000, b"[" * 100000 + b"]" * 100000, b"{\"a\":" * 50000 + b"1" + b"}" * 50000,
                    b"{\"objectId\":\"g1\",\"x\":" + b"[" * 100000 + b"]" * 100000 + b"}"):
            r = self.post(raw, timeout=20)
            self.assertError(r, 400, "InvalidParameters", repr(raw[:20]))
        r = self.srv.req("POST", "/admin/v1/applications", raw=b"[" * 100000, admin=True, timeout=20)
        self.assertError(r, 400, "InvalidParameters")

    def test_invalid_utf8(self):
        base = json.dumps(self.good_body(objectId="PLACEHOLDER")).encode()
        for bad in (b"g\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"abc\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"):
            r = self.post(base.replace(b"PLACEHOLDER", bad))
            self.assertError(r, 400, "InvalidParameters", repr(bad))
        self.assertEqual(self.srv.list_webhooks(self.tok), [])
        r = self.srv.req("POST", "/admin/v1/applications", admin=True,
                         raw=b'{"name":"n\xff","objectIds":["*"]}', headers={"Content-Type": "application/json"})
        self.assertError(r, 400, "InvalidParameters")

    def test_nul_bytes(self):
        base = self.good_body(objectId="PLACEHOLDER")
        raw = json.dumps(base).encode().replace(b"PLACEHOLDER", b"g\x00h")   # raw NUL: invalid JSON
        self.assertError(self.post(raw), 400, "InvalidParameters")
        for field in ("objectId", "callBackUrl", "callBackToken", "callBackContext"):
            body = dict(base, objectId="g1")
            body[field] = (body.get(field) or "v") + "\u0000tail"
            r = self.post(json.dumps(body).encode())
            self.assertError(r, 400, "InvalidParameters", field)
        body = {"name": "a\u0000b", "objectIds": ["*"]}
        r = self.srv.admin("POST", "/admin/v1/applications", body)
        self.assertError(r, 400, "InvalidParameters")
        body = {"name": "ab", "objectIds": ["g\u0000"]}
        r = self.srv.admin("POST", "/admin/v1/applications", body)
        self.assertError(r, 400, "InvalidParameters")
        self.assertEqual(self.srv.list_webhooks(self.tok), [])

    def test_nul_in_header_and_path(self):
        for req in (b"GET /v1/webhook HTTP/1.1\r\nHost: x\r\naccessToken: ab\x00cd\r\n\r\n",
                    b"GET /v1/web\x00hook HTTP/1.1\r\nHost: x\r\n\r\n"):
            s = self.srv.raw_socket()
            try:
                s.sendall(req)
                st, hd, body = read_http_response(s)
            finally:
                s.close()
            self.assertTrue(st is None or 400 <= st < 500, "%r -> %r" % (req[:30], st))

    def test_missing_token(self):
        r = self.post(json.dumps(self.good_body()).encode(), token=False)
        self.assertError(r, 401, "Unauthenticated")
        self.assertEqual(self.rc.count(self.ok_path), 0)

    # ---------------------------------------------------------------- size limits
    def assert_413(self, res):
        st, hd, raw = res
        self.assertEqual(st, 413, "got %r %r" % (st, raw[:200]))
        self.assertTrue(hd.get("content-type", "").startswith("application/json"), hd)
        err = json.loads(raw.decode())
        self.assertEqual((err.get("errorCode"), err.get("errorCategoryKey")), ("PayloadTooLarge", "ClientError"))
        self.assertTrue(err.get("message"))

    def test_body_over_1mib(self):
        body = json.dumps(self.good_body(callBackContext="c" * (2 * MIB))).encode()
        self.assert_413(self.srv.send_early_answer("POST", "/v1/webhook", body, token=self.tok))
        body = json.dumps({"name": "x" * (2 * MIB), "objectIds": ["*"]}).encode()
        self.assert_413(self.srv.send_early_answer("POST", "/admin/v1/applications", body, admin=True))
        wid = self.srv.create_webhook(self.tok, self.good_body()).json["webhookId"]
        body = json.dumps({"callBackContext": "c" * (2 * MIB)}).encode()
        self.assert_413(self.srv.send_early_answer("PUT", "/v1/webhook/" + wid, body, token=self.tok))
        self.assertIsNone(self.srv.get_webhook(self.tok, wid).json["callBackContext"])

    def test_body_limit_boundary(self):
        body = json.dumps(self.good_body()).encode()
        exact = body + b" " * (MIB - len(body))
        self.assertEqual(len(exact), MIB)
        r = self.post(exact, timeout=30)
        self.assertNotEqual(r.status, 413, "a body of exactly 1 MiB is not over the limit")
        self.assertJsonOk(r)
        self.assert_413(self.srv.send_early_answer("POST", "/v1/webhook", exact + b" ", token=self.tok))

    def test_413_before_body_is_sent(self):
        s = self.srv.raw_socket()
        try:
            s.sendall(b"POST /v1/webhook HTTP/1.1\r\nHost: x\r\naccessToken: " + self.tok.encode()
                      + b"\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n")
            s.sendall(b"{\"objectId\":\"" + b"a" * 65536)
            t0 = time.monotonic()
            res = read_http_response(s, timeout=5)
            self.assertLess(time.monotonic() - t0, 5)
            self.assertIsNotNone(res[0], "no answer while the body was still incomplete")
            self.assert_413(res)
        finally:
            s.close()

    def test_chunked_body_over_1mib(self):
        s = self.srv.raw_socket()
        st = None
        try:
            s.sendall(b"POST /v1/webhook HTTP/1.1\r\nHost: x\r\naccessToken: " + self.tok.encode()
                      + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"a" * 65536
            sent = 0
            try:
                while sent < 3 * MIB and not readable(s, 0):
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                if not readable(s, 0):
                    s.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            st, hd, raw = read_http_response(s, timeout=10)
        finally:
            s.close()
        self.assertEqual(st, 413)

    def test_huge_header_values(self):
        # an 8 KiB access token: an answer from the application, not a crash
        r = self.srv.req("GET", "/v1/webhook", token="A" * 8192)
        self.assertError(r, 401, "InvalidToken")
        r = self.srv.req("GET", "/v1/accessToken", headers={"applicationId": "i" * 2000, "applicationSecret": "s" * 2000,
                                                            "refreshToken": "r" * 2000})
        self.assertError(r, 401, "Unauthenticated")
        # 1 MiB of headers: refused at the HTTP layer (or the connection is dropped)
        for req in (b"GET /v1/webhook HTTP/1.1\r\nHost: x\r\naccessToken: " + b"A" * MIB + b"\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20000))
                    + b"\r\n",
                    b"GET /" + b"a" * (256 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
            s = self.srv.raw_socket()
            st = None
            try:
                try:
                    s.sendall(req)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                st, hd, raw = read_http_response(s, timeout=10)
            finally:
                s.close()
            self.assertTrue(st is None or st in (400, 404, 413, 414, 431), "%r -> %r" % (req[:30], st))

    def test_long_path_and_query(self):
        r = self.srv.req("GET", "/v1/webhook/" + "a" * 4000, token=self.tok)
        self.assertError(r, 404, "NotFound")
        r = self.srv.req("GET", "/v1/webhook?objectId=" + "a" * 4000 + "&objectType=Group", token=self.tok)
        self.assertIn(r.status, (200, 400))
        if r.status == 200:
            self.assertEqual(r.json, {"webhooks": []})
        else:
            self.assertError(r, 400, "InvalidParameters")

    def test_garbage_request_lines(self):
        for junk in (b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
                     b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/webhook HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                     b"POST /v1/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n",
                     b"POST /v1/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n"):
            s = socket.create_connection((self.srv.host, self.srv.port), timeout=5)
            try:
                s.sendall(junk)
                st, hd, raw = read_http_response(s, timeout=2)
            except (socket.timeout, ConnectionResetError):
                st = None
            finally:
                s.close()
            self.assertTrue(st is None or 400 <= st < 600, "%r -> %r" % (junk[:20], st))
            self.assertTrue(self.srv.healthy(), "unhealthy after %r" % junk[:20])

    def test_slow_client_does_not_block_others(self):
        socks = []
        try:
            for _ in range(20):
                s = socket.create_connection((self.srv.host, self.srv.port), timeout=5)
                s.sendall(b"POST /v1/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                socks.append(s)
            t0 = time.monotonic()
            self.assertTrue(self.srv.healthy())
            self.assertStatus(self.srv.req("GET", "/v1/webhook", token=self.tok), 200)
            self.assertLess(time.monotonic() - t0, 2.0)
        finally:
            for s in socks:
                s.close()

    def test_nothing_stored_after_all_that(self):
        bodies = [b"{", b"[]", json.dumps(self.good_body(objectId=5)).encode(), b"[" * 1000]
        for raw in bodies:
            self.post(raw)
        self.assertEqual(self.srv.list_webhooks(self.tok), [])
        self.assertEqual(self.rc.count(self.ok_path), 0)
