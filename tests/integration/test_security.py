"""Security review (issue 5): each threat with a test.

  cross-application access  every /v1/webhook/{id}* endpoint answers 404 NotFound for another
                            application's webhook, exactly as for an id that does not exist
  credential brute force    /v1/accessToken: 10 failures a minute per applicationId and 60 per
                            client address → 429 Throttled with Retry-After, also for the right
                            secret; other applications/addresses unaffected; it ends with the window
  secrets at rest / in logs no secret or token in stderr/stdout; application secrets, refresh,
                            access and admin tokens absent from the SQLite files or the
                            PostgreSQL dump (only hashes)
  SSRF                      DNS rebinding (a webhook whose target turned private is refused at
                            connect time), spellings of private addresses not in
                            test_handshake.py, PUT of a private callBackUrl
  header/log injection      CR/LF in callBackToken and eventId → 400; in callBackContext it goes
                            only into the JSON body; percent-encoded CR/LF in the callback URL;
                            forged JSON in logged header values
"""

import glob
import hashlib
import http.client
import re
import socket
import subprocess
import sys
import time

from dlib import all_deliveries, create_hook, publish, uid, wait_until
from kzlib import KzTestCase, Resp, _parse_json, run_cli, test_db_url, timeout_scale, webhook_body

NIL = "00000000-0000-4000-8000-000000000000"


def note(msg):
    sys.stderr.write("\n  [security] %s\n" % msg)
    sys.stderr.flush()


def db_bytes(path):
    """The SQLite database as stored: main file, WAL and shared-memory index."""
    out = b""
    for p in [path] + glob.glob(path + "-*"):
        try:
            with open(p, "rb") as f:
                out += f.read()
        except OSError:
            pass
    return out


def pg_dump(url):
    """The whole PostgreSQL database as text (pg_dump), or None when pg_dump cannot run."""
    try:
        p = subprocess.run(["pg_dump", "--no-owner", url], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


# ==================================================================================================
# Cross-application access
# ==================================================================================================

class CrossApplication(KzTestCase):
    timeout = 60

    def test_every_endpoint_hides_another_applications_webhook(self):
        srv = self.server(args=["--rate-limit", "0", "--retry-schedule", "200ms"])
        rc = self.receiver()
        app_a, tok_a = srv.app_token()
        app_b, tok_b = srv.app_token(objectIds=["*"])
        g = uid("g")
        wid, _, _ = create_hook(self, srv, tok_a, rc.url("/a"), objectId=g, callBackToken="a-only")
        rc.script("/a", [500, 500])
        ev = {"eventType": "TextMessageCreated", "groupId": g, "eventId": uid("ev")}
        publish(srv, ev)
        wait_until(lambda: [d for d in all_deliveries(srv, tok_a, wid) if d["status"] == "dead"], 10,
                   msg="A's delivery dead (so a replay would have something to requeue)")
        before = srv.get_webhook(tok_a, wid).json
        log_before = all_deliveries(srv, tok_a, wid)
        n_before = rc.count(method="POST")

        calls = [
            ("GET", "/v1/webhook/%s", None),
            ("PUT", "/v1/webhook/%s", {"Active": "true", "callBackToken": "stolen"}),
            ("PUT", "/v1/webhook/%s", {}),
            ("DELETE", "/v1/webhook/%s", None),
            ("GET", "/v1/webhook/%s/deliveries", None),
            ("GET", "/v1/webhook/%s/deliveries?status=dead&limit=5", None),
            ("POST", "/v1/webhook/%s/replay", {"since": 0}),
            ("GET", "//v1/webhook/%s", None),
            ("DELETE", "//v1/webhook/%s", None),
        ]
        for how in ("accessToken", "bearer"):
            for m, path, body in calls:
                with self.subTest(method=m, path=path, auth=how):
                    h = {"Authorization": "Bearer " + tok_b} if how == "bearer" else {"accessToken": tok_b}
                    theirs = srv.req(m, path % wid, json=body, headers=h)
                    nobody = srv.req(m, path % NIL, json=body, headers=h)
                    self.assertError(theirs, 404, "NotFound", "%s %s as another application" % (m, path))
                    self.assertError(nobody, 404, "NotFound")
                    # no oracle: the answer for someone else's webhook is the one for no webhook
                    self.assertEqual(theirs.json["message"].replace(wid, "ID"),
                                     nobody.json["message"].replace(NIL, "ID"))
                    self.assertEqual(set(theirs.headers) - {"date"}, set(nobody.headers) - {"date"})
        for q in ("", "objectId=%s" % g, "objectId=%s&objectType=Group" % g):
            self.assertEqual(srv.list_webhooks(tok_b, q), [], "B's list shows A's webhook (%s)" % q)
        # nothing changed, nothing was requeued or sent
        self.assertEqual(srv.get_webhook(tok_a, wid).json, before)
        time.sleep(0.6 * timeout_scale())
        self.assertEqual(all_deliveries(srv, tok_a, wid), log_before)
        self.assertEqual(rc.count(method="POST"), n_before, "B's replay made A's webhook send")
        # the admin bearer is not an access token, an access token is not the admin bearer
        self.assertError(srv.req("GET", "/v1/webhook/" + wid, headers={"accessToken": srv.admin_token}),
                         401, "InvalidToken")
        self.assertError(srv.req("GET", "/admin/v1/applications",
                                 headers={"Authorization": "Bearer " + tok_a}), 401)
        self.assertError(srv.req("POST", "/v1/events", json=ev,
                                 headers={"Authorization": "Bearer " + tok_a}), 401)
        # a deleted application's token opens nothing
        r = srv.admin("DELETE", "/admin/v1/applications/" + app_a["applicationId"])
        self.assertIn(r.status, (200, 204))
        self.assertEqual(srv.req("GET", "/v1/webhook/" + wid, token=tok_a).status, 401)
        self.assertError(srv.get_webhook(tok_b, wid), 404, "NotFound")


# ==================================================================================================
# Brute force on /v1/accessToken
# ==================================================================================================

def fnv1a(text):
    """32-bit FNV-1a, the hash kzhook's rate-limit tables use (src/api.c window_hit)."""
    h = 2166136261
    for c in text.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h


class BruteForce(KzTestCase):
    timeout = 120

    @staticmethod
    def creds(app, **over):
        h = {"applicationId": app["applicationId"], "applicationSecret": app["applicationSecret"],
             "refreshToken": app["refreshToken"]}
        h.update(over)
        return h

    def token_req(self, srv, headers, source=None, method="GET", path="/v1/accessToken"):
        c = http.client.HTTPConnection(srv.host, srv.port, timeout=10 * timeout_scale(),
                                       source_address=(source, 0) if source else None)
        try:
            c.request(method, path, headers=headers)
            r = c.getresponse()
            data = r.read()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, _parse_json(data), data)
        finally:
            c.close()

    @staticmethod
    def second_address(srv):
        """127.0.0.2 when this machine can connect from it (a second client address), else None."""
        try:
            socket.create_connection((srv.host, srv.port), timeout=2,
                                     source_address=("127.0.0.2", 0)).close()
            return "127.0.0.2"
        except OSError:
            return None

    def assertThrottled(self, r, what):
        self.assertError(r, 429, "Throttled", what)
        ra = r.headers.get("retry-after", "")
        self.assertRegex(ra, r"^\d+$", "429 without a Retry-After in seconds")
        self.assertTrue(1 <= int(ra) <= 60, ra)
        return int(ra)

    def test_failures_throttle_per_application_and_per_address_until_the_window_ends(self):
        srv = self.server()
        other_ip = self.second_address(srv)
        a, b, c = srv.create_app(), srv.create_app(), srv.create_app()
        # the limits count per wall-clock minute: keep the whole sequence inside one minute
        left = 60 - time.time() % 60
        if left < 5:
            time.sleep(left + 0.3)
        minute = int(time.time() // 60)
        # --- per applicationId: 10 failures, then 429 even with the right secret
        for i in range(10):
            r = self.token_req(srv, self.creds(a, applicationSecret="wrong-%d" % i))
            self.assertError(r, 401, "Unauthenticated", "failure %d" % (i + 1))
        ra = self.assertThrottled(self.token_req(srv, self.creds(a, applicationSecret="wrong-x")),
                                  "11th failure for one applicationId")
        self.assertThrottled(self.token_req(srv, self.creds(a)), "the right secret while throttled")
        self.assertThrottled(self.token_req(srv, self.creds(a), method="POST"), "POST while throttled")
        self.assertThrottled(self.token_req(srv, self.creds(a, refreshToken="bad")), "wrong refresh")
        if other_ip:  # the per-application limit holds whatever address the guesses come from
            self.assertThrottled(self.token_req(srv, self.creds(a), source=other_ip),
                                 "the throttled application from another address")
        # another application from the same address is not affected (10 failures < 60)
        self.assertStatus(self.token_req(srv, self.creds(b)), 200)
        # --- per client address: 60 failures (10 above + 50 for unknown ids), then everything
        # from that address is refused, even a correct request for an untouched application
        # three of them land on the throttled application's slot of kzhook's fixed-size table
        # (same FNV-1a hash modulo 1024): they must get their own count, not a's
        home = fnv1a(a["applicationId"]) % 1024
        twins = []
        while len(twins) < 3:
            cand = uid("twin")
            if fnv1a(cand) % 1024 == home:
                twins.append(cand)
        for i in range(50):
            other = twins[i] if i < len(twins) else "%s-%02d" % (uid("nope"), i)
            r = self.token_req(srv, self.creds(b, applicationId=other))
            self.assertError(r, 401, "Unauthenticated", "unknown application %d (%s)" % (i, other))
        self.assertThrottled(self.token_req(srv, self.creds(c)), "61st failure from one address")
        self.assertThrottled(self.token_req(srv, self.creds(b)), "b from the throttled address")
        if other_ip:
            self.assertStatus(self.token_req(srv, self.creds(c), source=other_ip), 200,
                              "another client address must not be throttled")
        self.assertEqual(int(time.time() // 60), minute, "the sequence crossed a minute boundary")
        # other endpoints are not affected
        self.assertTrue(srv.healthy())
        self.assertStatus(srv.admin("GET", "/admin/v1/applications"), 200)
        # it ends: after Retry-After the right credentials work again, from the same address
        time.sleep(ra + 0.5)
        self.assertStatus(self.token_req(srv, self.creds(a)), 200, "still throttled after Retry-After")
        self.assertStatus(self.token_req(srv, self.creds(c)), 200)
        recs, _ = srv.log_records()
        n429 = [x for x in recs if x.get("path") == "/v1/accessToken" and str(x.get("status")) == "429"]
        self.assertGreaterEqual(len(n429), 6, "throttled attempts should be visible in the log")
        note("brute force: 11th failure for one applicationId and 61st from one address -> 429 "
             "(Retry-After %ds); other address%s unaffected; recovered after the window" %
             (ra, " 127.0.0.2" if other_ip else " (127.0.0.2 unavailable)"))

    def test_wrong_admin_tokens_throttle_the_address(self):
        """Guessing the admin token (an operator may choose one as short as 16 characters): 30
        wrong tokens in a minute from one address, then 429 + Retry-After for every admin request
        from it, the right token included; other addresses and the application API go on."""
        srv = self.server()
        other_ip = self.second_address(srv)
        app = srv.create_app()
        left = 60 - time.time() % 60
        if left < 5:
            time.sleep(left + 0.3)
        minute = int(time.time() // 60)
        good = {"Authorization": "Bearer " + srv.admin_token}
        apps = "/admin/v1/applications"
        # a missing token is not a guess: it does not count
        for _ in range(40):
            self.assertError(self.token_req(srv, {}, path=apps), 401, "Unauthenticated", "no token")
        self.assertStatus(self.token_req(srv, good, path=apps), 200)
        for i in range(30):
            wrong = {"Authorization": "Bearer %s-%d" % (srv.admin_token[:16], i)}
            self.assertError(self.token_req(srv, wrong, path=apps), 401, "Unauthenticated",
                             "wrong admin token %d" % (i + 1))
        self.assertThrottled(self.token_req(srv, {"Authorization": "Bearer " + "x" * 3}, path=apps),
                             "31st wrong admin token")
        self.assertThrottled(self.token_req(srv, good, path=apps), "the right token while throttled")
        self.assertThrottled(self.token_req(srv, good, path="/v1/events", method="POST"),
                             "publishing from the throttled address")
        if other_ip:
            self.assertStatus(self.token_req(srv, good, path=apps, source=other_ip), 200,
                              "another client address must not be throttled")
        # applications and their tokens are another door, with their own counters
        self.assertStatus(self.token_req(srv, self.creds(app)), 200)
        self.assertTrue(srv.healthy())
        self.assertEqual(int(time.time() // 60), minute, "the sequence crossed a minute boundary")
        note("admin token guessing: 31st wrong token from one address -> 429; other address%s "
             "unaffected" % (" 127.0.0.2" if other_ip else " (127.0.0.2 unavailable)"))


# ==================================================================================================
# Secrets in logs and at rest
# ==================================================================================================

class Secrets(KzTestCase):
    timeout = 90

    def test_no_secret_in_logs_or_in_the_database_file(self):
        srv = self.server(args=["--rate-limit", "0", "--retry-schedule", "200ms,200ms"])
        rc = self.receiver()
        app = srv.create_app()
        tok = srv.token(app)
        tok2 = srv.token(app)
        cbt, cbt2 = "cbt-" + uid("s"), "cbt2-" + uid("s")
        g = uid("g")
        r = srv.create_webhook(tok, webhook_body(rc.url("/s"), objectId=g, callBackToken=cbt,
                                                 callBackContext="ctx-" + uid("c")))
        b = self.assertJsonOk(r)
        wid, signing = b["webhookId"], b["signingSecret"]
        # exercise as many code paths as possible with the secrets in play
        rc.script("/s", [500, "reset"])
        publish(srv, {"eventType": "TextMessageCreated", "groupId": g, "eventId": uid("e")})
        rc.wait_for(3, path="/s", method="POST")
        self.assertStatus(srv.req("PUT", "/v1/webhook/" + wid, json={"callBackToken": cbt2}, token=tok), 200)
        publish(srv, {"eventType": "TextMessageCreated", "groupId": g, "eventId": uid("e")})
        rc.wait_for(4, path="/s", method="POST")
        self.assertEqual(rc.requests(path="/s", method="POST")[-1].headers.get("kz-callback-token"), cbt2)
        wrong = "wrong-" + uid("w")
        for h in ({"applicationSecret": wrong}, {"refreshToken": wrong}):
            hh = {"applicationId": app["applicationId"], "applicationSecret": app["applicationSecret"],
                  "refreshToken": app["refreshToken"]}
            hh.update(h)
            self.assertStatus(srv.req("GET", "/v1/accessToken", headers=hh), 401)
        self.assertStatus(srv.req("GET", "/v1/webhook", token=tok + "x"), 401)
        self.assertStatus(srv.req("GET", "/admin/v1/applications",
                                  headers={"Authorization": "Bearer " + srv.admin_token + "x"}), 401)
        self.assertStatus(srv.req("GET", "/v1/webhook/%s/deliveries" % wid, token=tok2), 200)
        self.assertStatus(srv.admin("GET", "/admin/v1/applications"), 200)
        lst = run_cli(["app", "list", "--db", srv.db]) if not test_db_url() else None
        secrets_ = {
            "applicationSecret": app["applicationSecret"], "refreshToken": app["refreshToken"],
            "access token": tok, "second access token": tok2, "admin token": srv.admin_token,
            "signingSecret": signing, "signing key": signing[len("whsec_"):],
            "callBackToken": cbt, "updated callBackToken": cbt2, "presented wrong secret": wrong,
        }
        stored_db = pg_dump(srv.db) if test_db_url() else db_bytes(srv.db)
        srv.stop()
        text = srv.stderr_text() + srv.stdout_text()
        self.assertGreater(len(text), 1000)
        for what, s in secrets_.items():
            with self.subTest(secret=what):
                self.assertNotIn(s, text, "%s found in kzhook's output" % what)
                if lst is not None:
                    self.assertNotIn(s, lst.stdout + lst.stderr, "%s in `kzhook app list`" % what)
        if stored_db is None:
            return  # PostgreSQL without a usable pg_dump
        if not test_db_url():
            stored_db += db_bytes(srv.db)  # after the checkpoint at stop as well
        for what in ("applicationSecret", "refreshToken", "access token", "second access token",
                     "admin token"):
            with self.subTest(at_rest=what):
                self.assertNotIn(secrets_[what].encode(), stored_db,
                                 "%s stored in clear in the SQLite files" % what)
        # (the signing secret and the callBackToken must be usable to sign and send, so they are
        # stored; README/SECURITY.md say so)
        hashed = hashlib.sha256(app["applicationSecret"].encode()).hexdigest().encode()
        note("at rest: secret/refresh/access/admin tokens absent from %d bytes of the store; "
             "SHA-256 of the application secret %s" % (len(stored_db),
                                                       "present" if hashed in stored_db else "absent"))

    def test_generated_admin_token_not_stored_in_clear(self):
        srv = self.server(admin_token=None)
        if test_db_url() and not srv.fresh_db:
            self.skipTest("a shared PostgreSQL database already has an admin token")
        m = re.search(r"admin token: (\S+)", srv.stdout_text())
        self.assertIsNotNone(m, srv.stdout_text())
        token = m.group(1)
        srv.admin_token = token
        self.assertStatus(srv.admin("GET", "/admin/v1/applications"), 200)
        srv.stop()
        stored = pg_dump(srv.db) if test_db_url() else db_bytes(srv.db)
        if stored is None:
            self.skipTest("pg_dump cannot read the database")
        self.assertGreater(len(stored), 1000)
        self.assertNotIn(token.encode(), stored)
        self.assertNotIn(token, srv.stderr_text())


# ==================================================================================================
# SSRF
# ==================================================================================================

class Ssrf(KzTestCase):
    timeout = 90

    def test_dns_rebinding_target_turned_private_is_refused_at_connect(self):
        """Webhooks validated while private targets were allowed (as a name that resolved to a
        public address at validation would be); the server restarts without
        --allow-private-targets: every delivery must be refused when the socket opens — the
        receiver sees no connection at all — and recorded with a lastError that says so."""
        srv = self.server(args=["--rate-limit", "0", "--retry-schedule", "300ms,300ms,60s"])
        rc4 = self.receiver()
        try:
            rc6 = self.receiver(host="::1")
        except OSError:
            rc6 = None
        _, tok = srv.app_token()
        targets = [("ip", rc4, rc4.url("/ip")), ("name", rc4, rc4.url("/name", host="localhost"))]
        if rc6 is not None:
            targets.append(("ipv6", rc6, rc6.url("/v6")))
        hooks = {}
        for name, rc, url in targets:
            g = uid("g")
            wid, _, _ = create_hook(self, srv, tok, url, objectId=g)
            hooks[name] = (wid, g, rc)
        srv.stop()
        srv.args.remove("--allow-private-targets")
        srv.start()
        for rc in {id(r): r for _, r, _ in targets}.values():
            rc.clear()
        evs = {}
        for name, (wid, g, rc) in hooks.items():
            evs[name] = uid("ev")
            publish(srv, {"eventType": "TextMessageCreated", "groupId": g, "eventId": evs[name]})
        errors = {}
        for name, (wid, g, rc) in hooks.items():
            with self.subTest(target=name):
                row = wait_until(lambda: [d for d in all_deliveries(srv, tok, wid)
                                          if d["attempts"] >= 2], 10,
                                 msg="%s: two refused attempts" % name)[0]
                self.assertEqual(row["status"], "pending", row)
                self.assertIsNone(row["lastStatusCode"], row)
                self.assertRegex(row["lastError"] or "", r"(?i)ssrf|refused|connect", row)
                errors[name] = row["lastError"]
        time.sleep(0.3)
        for name, (wid, g, rc) in hooks.items():
            self.assertEqual(rc.requests(), [], "%s: a request reached the private target" % name)
            self.assertEqual(rc.tls_failures, [], "%s: a connection reached the private target" % name)
        # the stored URL cannot be re-pointed at other private spellings either
        wid = hooks["ip"][0]
        before = srv.get_webhook(tok, wid).json
        for url in ("https://127.0.0.1:%d/x" % rc4.port, "https://[::ffff:7f00:1]:%d/x" % rc4.port,
                    "https://169.254.169.254/latest/meta-data/"):
            self.assertError(srv.req("PUT", "/v1/webhook/" + wid, json={"callBackUrl": url}, token=tok),
                             400, "InvalidParameters", url)
        self.assertEqual(srv.get_webhook(tok, wid).json, before)
        self.assertEqual(rc4.requests(), [])
        note("rebinding: deliveries to %s refused at connect: %r" % (sorted(hooks), errors))

    def test_more_private_address_spellings_are_refused(self):
        """What test_handshake.Ssrf does not cover yet: hex/decimal/octal/short IPv4 forms,
        v4-mapped and v4-compatible IPv6 in hex, NAT64 and 6to4 wrappers of loopback and of the
        metadata address, unspecified and broadcast forms, a trailing-dot localhost."""
        srv = self.server(allow_private=False)
        rc = self.receiver()
        try:
            rc6 = self.receiver(host="::1")
        except OSError:
            rc6 = None
        _, tok = srv.app_token()
        port = rc.port
        hosts = ["0x7f000001", "0x7F.0.0.1", "017700000001", "0177.1", "127.0.1", "127.000.000.001",
                 "0", "0.0.0.0", "localhost.", "LocalHost", "[::ffff:7f00:1]", "[::ffff:7f00:0001]",
                 "[0:0:0:0:0:ffff:127.0.0.1]", "[::ffff:a9fe:a9fe]", "[::ffff:169.254.169.254]",
                 "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[64:ff9b::a9fe:a9fe]", "[2002:7f00:1::1]",
                 "[::]", "[::1]", "[0:0:0:0:0:0:0:1]", "[fe80::1]", "[fec0::1]", "[ff02::1]",
                 "100.64.0.1", "224.0.0.1", "255.255.255.255", "2852039166", "0xa9fea9fe",
                 "[::ffff:10.0.0.1]", "[::ffff:c0a8:101]"]
        accepted = []
        for h in hosts:
            url = "https://%s:%d/s" % (h, port)
            r = srv.create_webhook(tok, webhook_body(url))
            if r.status != 400 or (r.json or {}).get("errorCode") != "InvalidParameters":
                accepted.append((url, r.status, r.raw[:120]))
        self.assertEqual(accepted, [], "private targets not refused")
        self.assertEqual(rc.requests(), [])
        self.assertEqual(rc.tls_failures, [], "the guard let a connection through")
        if rc6 is not None:
            self.assertEqual(rc6.requests() + rc6.tls_failures, [])
        self.assertEqual(srv.list_webhooks(tok), [])


# ==================================================================================================
# Header and log injection
# ==================================================================================================

class Injection(KzTestCase):
    timeout = 60

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_server(args=["--rate-limit", "0"])
        cls.rc = cls.class_receiver()

    def setUp(self):
        self.app, self.tok = self.srv.app_token()

    def test_crlf_in_callback_token_is_refused(self):
        bad = ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb", "a\x00b", "\r\n\r\nGET / HTTP/1.1",
               "tab\tinside", "del\x7f", "ümlaut", "a\u2028b"]
        wid, _, _ = create_hook(self, self.srv, self.tok, self.rc.url("/tok"), objectId=uid("g"),
                                callBackToken="good")
        for t in bad:
            with self.subTest(token=t):
                r = self.srv.create_webhook(self.tok, webhook_body(self.rc.url("/tok2"), callBackToken=t))
                self.assertError(r, 400, "InvalidParameters", "create with callBackToken %r" % t)
                r = self.srv.req("PUT", "/v1/webhook/" + wid, json={"callBackToken": t}, token=self.tok)
                self.assertError(r, 400, "InvalidParameters", "update with callBackToken %r" % t)
        self.assertEqual(self.srv.get_webhook(self.tok, wid).json["callbackToken"], "good")
        self.assertEqual([w["id"] for w in self.srv.list_webhooks(self.tok)], [wid])

    def test_crlf_in_event_id_is_refused(self):
        g = uid("g")
        create_hook(self, self.srv, self.tok, self.rc.url("/eid"), objectId=g)
        for eid in ["a\r\nX-Injected: 1", "a\rb", "a\x00b", "\r\n", "a b\tc", "é"]:
            with self.subTest(eventId=eid):
                ev = {"eventType": "TextMessageCreated", "groupId": g, "eventId": eid}
                self.assertError(self.srv.admin("POST", "/v1/events", json=ev), 400, "InvalidParameters")
                self.assertError(self.srv.admin("POST", "/v1/events", json=[ev]), 400, "InvalidParameters")
        time.sleep(0.5)
        self.assertEqual(self.rc.requests(path="/eid", method="POST"), [])

    def test_crlf_in_callback_context_stays_in_the_json_body(self):
        g = uid("g")
        ctx = "tenant\r\nX-Injected: yes\r\n\r\n{\"forged\":true}\n\u2028end"
        wid, _, _ = create_hook(self, self.srv, self.tok, self.rc.url("/ctx"), objectId=g,
                                callBackContext=ctx, callBackToken="tok-ctx")
        eid = uid("ev")
        publish(self.srv, {"eventType": "TextMessageCreated", "groupId": g, "eventId": eid})
        q = self.rc.wait_for(1, path="/ctx", method="POST")[0]
        names = [k.lower() for k, _ in q.header_list]
        want = {"host", "user-agent", "content-type", "content-length", "kz-callback-token",
                "webhook-id", "webhook-timestamp", "webhook-signature"}
        self.assertNotIn("x-injected", names)
        self.assertEqual(len(names), len(set(names)), "a header appears twice: %r" % q.header_list)
        self.assertTrue(want <= set(names) <= want | {"accept"},
                        "unexpected delivery headers: %r" % q.header_list)
        self.assertNotIn(b"\r", q.body)
        self.assertNotIn(b"\n", q.body)
        self.assertIn(b'\\r\\nX-Injected: yes\\r\\n', q.body)
        self.assertEqual(q.json()["context"], ctx)
        self.assertEqual(len(self.rc.requests(path="/ctx", method="POST")), 1)

    def test_percent_encoded_crlf_in_the_callback_url(self):
        g = uid("g")
        path = "/enc%0D%0AX-Injected:%20yes%0D%0A"
        r = self.srv.create_webhook(self.tok, webhook_body(self.rc.base + path + "?q=%0d%0aX-Q:%201",
                                                           objectId=g))
        if r.status == 400:  # refusing such a URL is fine too
            self.assertError(r, 400)
            return
        self.assertJsonOk(r)
        publish(self.srv, {"eventType": "TextMessageCreated", "groupId": g})
        wait_until(lambda: [q for q in self.rc.requests(method="POST") if "enc" in q.target], 10,
                   msg="the delivery")
        reqs = [q for q in self.rc.requests() if "enc" in q.target]
        self.assertEqual(sorted(q.method for q in reqs), ["GET", "POST"], reqs)
        for q in reqs:
            names = [k.lower() for k, _ in q.header_list]
            self.assertNotIn("x-injected", names, q.header_list)
            self.assertNotIn("x-q", names, q.header_list)
            self.assertIn("%0D%0A", q.target.upper(), "the path was not sent percent-encoded: %r" % q.target)

    def test_forged_json_in_logged_values(self):
        """Values that end up in the request log (applicationId header, path) cannot forge log
        records or break the one-JSON-object-per-line format."""
        srv = self.server()
        forged = 'x","level":"fatal","msg":"forged'
        r = srv.req("GET", "/v1/accessToken", headers={"applicationId": forged, "applicationSecret": "s",
                                                         "refreshToken": "r"})
        self.assertIn(r.status, (401, 429))
        r = srv.req("GET", '/v1/webhook/x%22,%22msg%22:%22forged', token="t")
        self.assertIn(r.status, (401, 404))
        c = srv.raw_socket()
        try:
            c.sendall(b'GET /"},{"msg":"forged" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            c.recv(4096)
        except OSError:
            pass
        finally:
            c.close()
        srv.stop()
        recs, bad = srv.log_records()
        self.assertEqual(bad, [], "stderr lines that are not JSON objects")
        self.assertFalse([x for x in recs if x.get("msg") == "forged" or x.get("level") == "fatal"],
                         "a forged log record")
