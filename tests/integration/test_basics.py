"""Health, metrics, error format, routing, keep-alive (README "Endpoints" and "Configuration")."""

import json
import re
import socket

from kzlib import KzTestCase, RawReader, read_http_response, webhook_body


class Basics(KzTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server()

    def test_healthz(self):
        r = self.srv.req("GET", "/healthz")
        self.assertEqual(self.assertJsonOk(r), {"status": "ok"})

    def test_metrics_prometheus_text(self):
        self.srv.req("GET", "/healthz")
        r = self.srv.req("GET", "/metrics")
        self.assertStatus(r, 200)
        self.assertTrue(r.headers.get("content-type", "").startswith("text/plain"),
                        r.headers.get("content-type"))
        text = r.raw.decode("utf-8")
        sample = re.compile(r"^kzhook_[A-Za-z0-9_:]*(\{[^}]*\})? [-+]?([0-9.eE+-]+|NaN|[+-]?Inf)( \d+)?$")
        samples = [ln for ln in text.splitlines() if ln.startswith("kzhook_")]
        self.assertTrue(samples, "no kzhook_ metric lines in:\n" + text[:1000])
        for ln in text.splitlines():
            if not ln or ln.startswith("#"):
                continue
            self.assertRegex(ln, sample, "not a Prometheus sample line")

    def test_metrics_needs_no_auth_and_healthz_ignores_auth(self):
        r = self.srv.req("GET", "/metrics", headers={"Authorization": "Bearer wrong"})
        self.assertStatus(r, 200)
        r = self.srv.req("GET", "/healthz", headers={"accessToken": "wrong"})
        self.assertStatus(r, 200)

    def test_unknown_path_is_404_json(self):
        for p in ("/nope", "/v1/nope", "/v2/webhook", "/admin/v1/nope", "/"):
            r = self.srv.req("GET", p, admin=True)
            self.assertError(r, 404, "NotFound", p)

    def test_unknown_path_without_auth_is_404_json(self):
        r = self.srv.req("POST", "/definitely/not/here", raw=b"{}")
        self.assertError(r, 404, "NotFound")

    def test_patch_webhook_collection_is_405_with_allow(self):
        _, tok = self.srv.app_token()
        r = self.srv.req("PATCH", "/v1/webhook", json={}, token=tok)
        self.assertError(r, 405, "MethodNotAllowed")
        allow = r.headers.get("allow")
        self.assertIsNotNone(allow, "405 without Allow header")
        methods = {m.strip().upper() for m in allow.split(",")}
        self.assertTrue({"GET", "POST"} <= methods, allow)
        self.assertNotIn("PATCH", methods)

    def test_patch_webhook_item_is_405_with_allow(self):
        rc = self.class_receiver()
        _, tok = self.srv.app_token()
        wid = self.srv.create_webhook(tok, webhook_body(rc.url("/h"))).json["webhookId"]
        r = self.srv.req("PATCH", "/v1/webhook/" + wid, json={}, token=tok)
        self.assertError(r, 405, "MethodNotAllowed")
        methods = {m.strip().upper() for m in r.headers.get("allow", "").split(",")}
        self.assertTrue({"GET", "PUT", "DELETE"} <= methods, r.headers.get("allow"))

    def test_wrong_method_on_admin_and_health(self):
        r = self.srv.req("PUT", "/admin/v1/applications", json={}, admin=True)
        self.assertError(r, 405, "MethodNotAllowed")
        self.assertIn("allow", r.headers)
        r = self.srv.req("DELETE", "/healthz")
        self.assertError(r, 405, "MethodNotAllowed")
        self.assertIn("GET", r.headers.get("allow", ""))

    def test_keep_alive_two_requests_one_connection(self):
        c = self.srv.connection()
        try:
            r1 = self.srv.req("GET", "/healthz", conn=c)
            self.assertStatus(r1, 200)
            self.assertNotEqual(r1.headers.get("connection", "").lower(), "close")
            sock1 = c.sock
            self.assertIsNotNone(sock1, "connection was closed after the first response")
            _, tok = self.srv.app_token()
            r2 = self.srv.req("GET", "/v1/webhook", token=tok, conn=c)
            self.assertStatus(r2, 200)
            self.assertIs(c.sock, sock1, "second request needed a new connection")
            r3 = self.srv.req("GET", "/nope", conn=c)  # an error answer keeps the connection too
            self.assertStatus(r3, 404)
            self.assertIs(c.sock, sock1)
            self.assertNotEqual(r3.headers.get("connection", "").lower(), "close")
        finally:
            c.close()

    def test_pipelined_requests_on_raw_socket(self):
        s = self.srv.raw_socket()
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            rd = RawReader(s)
            st1, h1, b1 = read_http_response(rd)
            self.assertEqual((st1, json.loads(b1)), (200, {"status": "ok"}))
            st2, h2, b2 = read_http_response(rd)
            self.assertEqual((st2, json.loads(b2)), (200, {"status": "ok"}))
        finally:
            s.close()

    def test_http10_request_answered(self):
        s = self.srv.raw_socket()
        try:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            st, h, b = read_http_response(s)
            self.assertEqual(st, 200)
        finally:
            s.close()

    def test_doubled_slash_paths(self):
        _, tok = self.srv.app_token()
        r = self.srv.req("GET", "//v1/webhook", token=tok)
        self.assertEqual(self.assertJsonOk(r), {"webhooks": []})
        r = self.srv.req("GET", "//v1/webhook", token="nope")
        self.assertError(r, 401, "InvalidToken")

    def test_server_stays_up_after_client_disconnects_mid_request(self):
        for _ in range(5):
            s = socket.create_connection((self.srv.host, self.srv.port), timeout=5)
            s.sendall(b"POST /v1/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"obj")
            s.close()
        self.assertTrue(self.srv.healthy())
