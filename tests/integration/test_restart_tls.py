"""HTTPS API, persistence across restarts, the generated admin token and the request log
(README "Configuration" and "Endpoints")."""

import http.client
import re
import time

from kzlib import KzTestCase, webhook_body


class TlsApi(KzTestCase):
    def test_api_over_https(self):
        srv = self.server(tls=True)
        rc = self.receiver()
        r = srv.req("GET", "/healthz")           # certificate verified against the test CA
        self.assertEqual(self.assertJsonOk(r), {"status": "ok"})
        app = srv.create_app()
        b = self.assertJsonOk(srv.token_resp(app))
        self.assertTrue(b["endpointUrl"].startswith("https://"), b["endpointUrl"])
        self.assertIn(":%d" % srv.port, b["endpointUrl"])
        tok = b["accessToken"]
        wid = self.assertJsonOk(srv.create_webhook(tok, webhook_body(rc.url("/tls-api"))))["webhookId"]
        self.assertEqual(srv.get_webhook(tok, wid).json["id"], wid)
        # keep-alive over TLS
        c = srv.connection()
        try:
            self.assertStatus(srv.req("GET", "/healthz", conn=c), 200)
            s1 = c.sock
            self.assertStatus(srv.req("GET", "/v1/webhook", token=tok, conn=c), 200)
            self.assertIs(c.sock, s1)
        finally:
            c.close()

    def test_plain_http_to_tls_port_fails(self):
        srv = self.server(tls=True)
        c = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
        try:
            c.request("GET", "/healthz")
            r = c.getresponse()
            status = r.status
        except (OSError, http.client.HTTPException):
            status = None
        finally:
            c.close()
        self.assertNotEqual(status, 200, "the TLS port answered plain HTTP")
        self.assertTrue(srv.healthy())

    def test_public_url_wins_over_tls_default(self):
        srv = self.server(tls=True, args=["--public-url", "https://hooks.example.test"])
        b = srv.token_resp(srv.create_app()).json
        self.assertEqual(b["endpointUrl"], "https://hooks.example.test")


class Restart(KzTestCase):
    timeout = 90

    def snapshot(self, srv, tok):
        hooks = sorted(srv.list_webhooks(tok), key=lambda w: w["id"])
        apps = sorted(srv.admin("GET", "/admin/v1/applications").json["applications"],
                      key=lambda a: a["applicationId"])
        return hooks, apps

    def test_state_survives_sigterm_restart(self):
        srv = self.server()
        rc = self.receiver()
        app_a, tok_a = srv.app_token(objectIds=["g1", "g2"])
        app_b, tok_b = srv.app_token()
        w1 = srv.create_webhook(tok_a, webhook_body(rc.url("/r1"), objectId="g1", callBackToken="ct",
                                                    callBackContext="cx", eventTypes=["JobCreated", "JobResponse"]))
        w1 = self.assertJsonOk(w1)["webhookId"]
        w2 = self.assertJsonOk(srv.create_webhook(tok_a, webhook_body(rc.url("/r2"), objectId="g2")))["webhookId"]
        self.assertJsonOk(srv.req("PUT", "/v1/webhook/" + w2, json={"Active": "false"}, token=tok_a))
        w3 = self.assertJsonOk(srv.create_webhook(tok_b, webhook_body(rc.url("/r3"), objectId="x",
                                                                      objectType="ActionPackage")))["webhookId"]
        deleted = self.assertJsonOk(srv.create_webhook(tok_b, webhook_body(rc.url("/r4"))))["webhookId"]
        self.assertJsonOk(srv.req("DELETE", "/v1/webhook/" + deleted, token=tok_b))
        gone = srv.create_app()
        self.assertJsonOk(srv.admin("DELETE", "/admin/v1/applications/" + gone["applicationId"]))
        before_a, apps_before = self.snapshot(srv, tok_a)
        before_b, _ = self.snapshot(srv, tok_b)
        hs = rc.count(handshake=True)

        srv.restart()  # asserts exit 0 after SIGTERM

        # old access tokens still valid, state identical
        after_a, apps_after = self.snapshot(srv, tok_a)
        after_b, _ = self.snapshot(srv, tok_b)
        self.assertEqual(after_a, before_a)
        self.assertEqual(after_b, before_b)
        self.assertEqual(apps_after, apps_before)
        self.assertEqual({w["id"] for w in after_a}, {w1, w2})
        self.assertEqual([w["id"] for w in after_b], [w3])
        self.assertIs({w["id"]: w for w in after_a}[w2]["active"], False)
        self.assertError(srv.get_webhook(tok_b, deleted), 404, "NotFound")
        # credentials still mint tokens; the deleted app stays deleted
        self.assertStatus(srv.req("GET", "/v1/webhook", token=srv.token(app_a)), 200)
        self.assertError(srv.token_resp(gone), 401, "Unauthenticated")
        # no re-validation of stored webhooks at start
        self.assertEqual(rc.count(handshake=True), hs)
        # and it keeps working
        self.assertJsonOk(srv.create_webhook(tok_a, webhook_body(rc.url("/r5"), objectId="g1")))
        self.assertEqual(len(srv.list_webhooks(tok_a)), 3)
        # ownership survives too
        self.assertError(srv.get_webhook(tok_a, w3), 404, "NotFound")

    def test_state_survives_kill9(self):
        srv = self.server()
        rc = self.receiver()
        app, tok = srv.app_token()
        wid = self.assertJsonOk(srv.create_webhook(tok, webhook_body(rc.url("/k9"))))["webhookId"]
        self.assertJsonOk(srv.req("PUT", "/v1/webhook/" + wid, json={"callBackContext": "after-put"}, token=tok))
        srv.kill9()
        srv.start()
        w = srv.get_webhook(tok, wid)
        self.assertEqual(self.assertJsonOk(w)["callBackContext"], "after-put")
        self.assertEqual(len(srv.list_webhooks(tok)), 1)
        srv.token(app)

    def test_sigint_also_exits_zero(self):
        import signal
        srv = self.server()
        srv.proc.send_signal(signal.SIGINT)
        self.assertEqual(srv.proc.wait(10), 0)

    def test_sigterm_with_idle_keepalive_connection(self):
        srv = self.server()
        c = srv.connection()
        self.assertStatus(srv.req("GET", "/healthz", conn=c), 200)
        t0 = time.monotonic()
        try:
            self.assertEqual(srv.stop(), 0)
        finally:
            c.close()
        self.assertLess(time.monotonic() - t0, 10)

    def test_expired_token_stays_expired_after_restart(self):
        srv = self.server(args=["--token-ttl", "1s"])
        app, tok = srv.app_token()
        srv.stop()
        time.sleep(1.2)
        srv.start()
        self.assertError(srv.req("GET", "/v1/webhook", token=tok), 401, "InvalidToken")


class GeneratedAdminToken(KzTestCase):
    timeout = 60
    LINE = re.compile(r"^admin token: (\S+)\s*$", re.M)

    def wait_stdout_token(self, srv, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.LINE.findall(srv.stdout_text())
            if m:
                return m
            time.sleep(0.05)
        return self.LINE.findall(srv.stdout_text())

    def test_generated_printed_once_and_persisted(self):
        srv = self.server(admin_token=None)
        if not srv.fresh_db:
            self.skipTest("needs a fresh database")
        found = self.wait_stdout_token(srv)
        self.assertEqual(len(found), 1, "stdout: %r" % srv.stdout_text()[:500])
        tok = found[0]
        self.assertGreaterEqual(len(tok), 16)
        srv.admin_token = tok
        self.assertEqual(srv.admin("POST", "/admin/v1/applications", {"name": "g", "objectIds": ["*"]}).status, 201)
        self.assertError(srv.req("GET", "/admin/v1/applications", headers={"Authorization": "Bearer x" + tok}),
                         401, "Unauthenticated")
        self.assertNotIn(tok, srv.stderr_text(), "the admin token appears in the log")
        srv.restart()
        time.sleep(0.3)
        self.assertNotIn("admin token", srv.stdout_text(), "token printed again on restart")
        self.assertNotIn(tok, srv.stdout_text())
        self.assertEqual(srv.admin("GET", "/admin/v1/applications").status, 200)
        self.assertNotIn(tok, srv.stderr_text())
        self.assertError(srv.req("GET", "/admin/v1/applications", headers={"Authorization": "Bearer nope"}),
                         401, "Unauthenticated")

    def test_explicit_token_not_printed(self):
        srv = self.server()
        time.sleep(0.2)
        self.assertNotIn(srv.admin_token, srv.stdout_text())
        self.assertNotIn("admin token:", srv.stdout_text())
        self.assertNotIn(srv.admin_token, srv.stderr_text())


class RequestLog(KzTestCase):
    def test_json_lines_and_no_secrets(self):
        srv = self.server()
        rc = self.receiver()
        app = srv.create_app()
        tr = srv.token_resp(app)
        tok = tr.json["accessToken"]
        wr = srv.create_webhook(tok, webhook_body(rc.url("/logged"), callBackToken="cbtok-SECRET-123"))
        wid = wr.json["webhookId"]
        signing = wr.json["signingSecret"]
        sent = [("POST", "/admin/v1/applications", 201), ("GET", "/v1/accessToken", 200),
                ("POST", "/v1/webhook", 200)]
        for m, p, st, kw in (("GET", "/v1/webhook", 200, {"token": tok}),
                             ("GET", "/v1/webhook/" + wid, 200, {"token": tok}),
                             ("PUT", "/v1/webhook/" + wid, 200, {"token": tok, "json": {"Active": "false"}}),
                             ("GET", "/v1/webhook", 401, {"token": "bad-token"}),
                             ("GET", "/no/such/path", 404, {}),
                             ("POST", "/v1/accessToken", 401, {"headers": {
                                 "applicationId": app["applicationId"], "applicationSecret": "wrong-secret-XYZ",
                                 "refreshToken": app["refreshToken"]}}),
                             ("DELETE", "/v1/webhook/" + wid, 200, {"token": tok})):
            r = srv.req(m, p + ("?objectId=g1" if p == "/v1/webhook" and m == "GET" else ""), **kw)
            self.assertStatus(r, st, "%s %s" % (m, p))
            sent.append((m, p, st))
        srv.stop()
        text = srv.stderr_text()
        recs, bad = srv.log_records()
        self.assertEqual(bad, [], "stderr lines that are not JSON objects")
        self.assertTrue(recs)
        reqs = [x for x in recs if "method" in x and "path" in x and "status" in x]

        def match(m, p, st):
            return [x for x in reqs if x["method"] == m and str(x["status"]) == str(st)
                    and (x["path"] == p or x["path"].split("?")[0] == p)]

        for m, p, st in sent:
            got = match(m, p, st)
            self.assertEqual(len(got), 1, "want one log line for %s %s %s, got %r" % (m, p, st, got))
            x = got[0]
            self.assertTrue([k for k in x if k.lower().startswith("duration")], "no duration in %r" % x)
            if p.startswith("/v1/webhook") and st != 401:
                self.assertEqual(x.get("applicationId"), app["applicationId"], x)
        self.assertEqual(match("GET", "/v1/accessToken", 200)[0].get("applicationId"), app["applicationId"])
        self.assertGreaterEqual(len(match("GET", "/healthz", 200)), 1)
        for secret, what in ((app["applicationSecret"], "applicationSecret"), (app["refreshToken"], "refreshToken"),
                             (tok, "access token"), (srv.admin_token, "admin token"),
                             (signing, "signing secret"), (signing[len("whsec_"):], "signing secret body"),
                             ("wrong-secret-XYZ", "a presented (wrong) secret"), ("bad-token", "a presented token")):
            self.assertNotIn(secret, text, "%s found in the log" % what)
        self.assertNotIn(srv.admin_token, srv.stdout_text())
