"""The callback URL handshake and the SSRF guard (README "5-minute walkthrough" and "Configuration")."""

import threading
import time

from kzlib import VALIDATION_TOKEN_RE, KzTestCase, free_port, pki, webhook_body


class Handshake(KzTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server()          # --ca-file <test CA> --allow-private-targets --validation-timeout 1s
        cls.rc = cls.class_receiver()

    def setUp(self):
        self.app, self.tok = self.srv.app_token()

    def path(self, suffix=""):
        return "/" + self._testMethodName + suffix

    def create(self, url):
        return self.srv.create_webhook(self.tok, webhook_body(url))

    def assert_rejected(self, url, receiver=None, path=None, expect_requests=1):
        """The create fails with CallbackValidationFailed, nothing is stored."""
        r = self.create(url)
        self.assertError(r, 400, "CallbackValidationFailed", url)
        self.assertEqual(self.srv.list_webhooks(self.tok), [], "a failed handshake stored a webhook")
        if receiver is not None and expect_requests is not None:
            self.assertEqual(receiver.count(path, handshake=True), expect_requests)
        return r

    def assert_accepted(self, url):
        r = self.create(url)
        b = self.assertJsonOk(r, msg=url)
        ids = [w["id"] for w in self.srv.list_webhooks(self.tok)]
        self.assertIn(b["webhookId"], ids)
        return b["webhookId"]

    # ---------------------------------------------------------------- passing
    def test_echo(self):
        p = self.path()
        self.assert_accepted(self.rc.url(p))
        hs = self.rc.handshakes(p)
        self.assertEqual(len(hs), 1)
        self.assertEqual(hs[0].method, "GET")
        self.assertEqual(list(hs[0].query), ["validationToken"])
        self.assertRegex(hs[0].query["validationToken"], VALIDATION_TOKEN_RE)
        self.assertEqual(hs[0].raw_query, "validationToken=" + hs[0].query["validationToken"])
        self.assertEqual(hs[0].body, b"")

    def test_echo_with_whitespace(self):
        p = self.path()
        self.rc.handshake(p, "echo_ws")
        self.assert_accepted(self.rc.url(p))

    def test_other_2xx_status(self):
        for st in (201, 202):
            p = self.path("-%d" % st)
            self.rc.handshake(p, "echo", status=st)
            self.assert_accepted(self.rc.url(p))

    def test_slow_but_within_timeout(self):
        p = self.path()
        self.rc.handshake(p, "echo", delay=0.3)
        self.assert_accepted(self.rc.url(p))

    def test_localhost_name(self):
        p = self.path()
        self.assert_accepted(self.rc.url(p, host="localhost"))
        self.assertEqual(self.rc.count(p, handshake=True), 1)

    def test_existing_query_kept(self):
        p = self.path()
        url = self.rc.url(p + "?x=1&y=two%20words")
        wid = self.assert_accepted(url)
        hs = self.rc.handshakes(p)
        self.assertEqual(len(hs), 1)
        self.assertTrue(hs[0].raw_query.startswith("x=1&y=two%20words&validationToken="), hs[0].raw_query)
        self.assertEqual(hs[0].query["x"], "1")
        self.assertEqual(hs[0].query["y"], "two words")
        self.assertRegex(hs[0].query["validationToken"], VALIDATION_TOKEN_RE)
        w = self.srv.get_webhook(self.tok, wid).json
        self.assertEqual(w["callbackUrl"], url)

    def test_tokens_are_fresh(self):
        p = self.path()
        self.assert_accepted(self.rc.url(p))
        self.assert_accepted(self.rc.url(p))
        toks = [r.query["validationToken"] for r in self.rc.handshakes(p)]
        self.assertEqual(len(toks), 2)
        self.assertNotEqual(toks[0], toks[1])

    # ---------------------------------------------------------------- failing
    def test_wrong_token(self):
        p = self.path()
        self.rc.handshake(p, "wrong")
        self.assert_rejected(self.rc.url(p), self.rc, p)

    def test_token_with_junk(self):
        p = self.path()
        self.rc.handshake(p, "prefix")
        self.assert_rejected(self.rc.url(p), self.rc, p)

    def test_empty_body(self):
        p = self.path()
        self.rc.handshake(p, "empty")
        self.assert_rejected(self.rc.url(p), self.rc, p)

    def test_error_status_with_token_body(self):
        for st in (500, 404, 400, 503):
            p = self.path("-%d" % st)
            self.rc.handshake(p, "status", status=st)
            self.assert_rejected(self.rc.url(p), self.rc, p)

    def test_redirect_not_followed(self):
        for st in (301, 302, 307, 308):
            p = self.path("-%d" % st)
            self.rc.handshake(p, "redirect", status=st)
            self.assert_rejected(self.rc.url(p), self.rc, p)
            self.assertEqual(self.rc.count(p + "/redirected"), 0, "redirect was followed")

    def test_connection_closed_without_answer(self):
        p = self.path()
        self.rc.handshake(p, "close")
        self.assert_rejected(self.rc.url(p), self.rc, p)

    def test_timeout(self):
        p = self.path()
        self.rc.handshake(p, "echo", delay=3)
        t0 = time.monotonic()
        self.assert_rejected(self.rc.url(p), self.rc, p)
        dt = time.monotonic() - t0
        self.assertLess(dt, 2.5, "validation took %.2fs with --validation-timeout 1s" % dt)
        self.assertGreater(dt, 0.5, "gave up after %.2fs, before --validation-timeout 1s" % dt)

    def test_pending_handshake_does_not_block_other_requests(self):
        p = self.path()
        self.rc.handshake(p, "echo", delay=3)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", self.create(self.rc.url(p))))
        t.start()
        try:
            self.rc.wait_for(1, p, timeout=5)
            t0 = time.monotonic()
            self.assertTrue(self.srv.healthy())
            self.assertStatus(self.srv.req("GET", "/v1/webhook", token=self.tok), 200)
            self.assertLess(time.monotonic() - t0, 0.8, "requests waited for a pending handshake")
        finally:
            t.join(10)
        self.assertError(out["r"], 400, "CallbackValidationFailed")

    def test_nothing_listening(self):
        port = free_port()
        self.assert_rejected("https://127.0.0.1:%d/x" % port)

    def test_plain_http_endpoint_behind_https_url(self):
        plain = self.receiver(tls=False)
        p = self.path()
        self.assert_rejected(plain.url(p).replace("http://", "https://"), plain, p, expect_requests=0)

    def test_unknown_ca(self):
        k = pki()
        other = self.receiver(cert=k.other_cert, key=k.other_key)
        p = self.path()
        self.assert_rejected(other.url(p), other, p, expect_requests=0)
        self.assertTrue(other.wait_tls_failure(), "no TLS connection attempt reached the receiver")

    def test_expired_certificate(self):
        k = pki()
        if not k.expired_cert:
            self.skipTest("openssl could not produce an expired certificate")
        exp = self.receiver(cert=k.expired_cert, key=k.expired_key)
        p = self.path()
        self.assert_rejected(exp.url(p), exp, p, expect_requests=0)
        self.assertTrue(exp.wait_tls_failure())

    def test_hostname_mismatch(self):
        k = pki()
        wrong = self.receiver(cert=k.wronghost_cert, key=k.wronghost_key)
        p = self.path()
        # libcurl checks the name after the TLS handshake completed, so the receiver sees a TLS
        # connection that is closed without a request
        self.assert_rejected(wrong.url(p), wrong, p, expect_requests=0)
        self.assertEqual(wrong.requests(), [])

    def test_failures_leave_server_healthy_and_later_success_works(self):
        p = self.path("-bad")
        self.rc.handshake(p, "close")
        for _ in range(3):
            self.assert_rejected(self.rc.url(p))
        self.assertTrue(self.srv.healthy())
        self.assert_accepted(self.rc.url(self.path("-good")))


class HandshakeWithoutTestCA(KzTestCase):
    def test_test_ca_not_trusted_by_default(self):
        srv = self.server(ca_file=False)
        rc = self.receiver()
        _, tok = srv.app_token()
        r = srv.create_webhook(tok, webhook_body(rc.url("/noca")))
        self.assertError(r, 400, "CallbackValidationFailed")
        self.assertEqual(rc.count("/noca"), 0)
        self.assertTrue(rc.wait_tls_failure())


class Ssrf(KzTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(allow_private=False)
        cls.rc = cls.class_receiver()

    def test_private_targets_rejected(self):
        _, tok = self.srv.app_token()
        port = self.rc.port
        urls = [
            self.rc.url("/ssrf"),
            "https://localhost:%d/ssrf" % port,
            "https://LOCALHOST:%d/ssrf" % port,
            "https://[::1]:%d/ssrf" % port,
            "https://0x7f.1:%d/ssrf" % port,
            "https://2130706433:%d/ssrf" % port,
            "https://0177.0.0.1:%d/ssrf" % port,
            "https://127.1:%d/ssrf" % port,
            "https://127.0.0.2:%d/ssrf" % port,
            "https://[::ffff:127.0.0.1]:%d/ssrf" % port,
            "https://0.0.0.0:%d/ssrf" % port,
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1/x",
            "https://172.16.5.4/x",
            "https://192.168.1.1/x",
            "https://[fe80::1]/x",
            "https://[fc00::1]/x",
            "https://user@127.0.0.1:%d/ssrf" % port,
        ]
        for url in urls:
            r = self.srv.create_webhook(tok, webhook_body(url))
            self.assertError(r, 400, "InvalidParameters", url)
        self.assertEqual(self.rc.requests(), [], "the SSRF guard let a request through")
        self.assertEqual(self.rc.tls_failures, [], "the SSRF guard let a connection through")
        self.assertEqual(self.srv.list_webhooks(tok), [])

    def test_http_still_refused(self):
        _, tok = self.srv.app_token()
        r = self.srv.create_webhook(tok, webhook_body("http://10.0.0.1/x"))
        self.assertError(r, 400, "InvalidParameters")


class HttpCallbacks(KzTestCase):
    def test_http_refused_by_default(self):
        srv = self.server()
        plain = self.receiver(tls=False)
        _, tok = srv.app_token()
        r = srv.create_webhook(tok, webhook_body(plain.url("/plain")))
        self.assertError(r, 400, "InvalidParameters")
        self.assertEqual(plain.requests(), [])

    def test_http_allowed_with_flag(self):
        srv = self.server(args=["--allow-http-callbacks"])
        plain = self.receiver(tls=False)
        tls = self.receiver()
        _, tok = srv.app_token()
        r = srv.create_webhook(tok, webhook_body(plain.url("/plain")))
        wid = self.assertJsonOk(r)["webhookId"]
        self.assertEqual(plain.count("/plain", handshake=True), 1)
        self.assertEqual(srv.get_webhook(tok, wid).json["callbackUrl"], plain.url("/plain"))
        plain.handshake("/bad", "wrong")
        self.assertError(srv.create_webhook(tok, webhook_body(plain.url("/bad"))), 400, "CallbackValidationFailed")
        self.assertJsonOk(srv.create_webhook(tok, webhook_body(tls.url("/tls"))))
        self.assertError(srv.create_webhook(tok, webhook_body("ftp://127.0.0.1/x")), 400, "InvalidParameters")
