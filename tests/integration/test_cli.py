"""The command line: `kzhook app create|list|delete`, configuration by environment, invalid
configuration (README "Configuration" and "Endpoints")."""

import json
import os
import socket
import subprocess
import time

from kzlib import KzTestCase, binary, free_port, new_dir, now_ms, pki, run_cli, test_db_url, webhook_body


def fresh_db(label):
    """A database for CLI tests: a new SQLite path, or the PostgreSQL URL of a throwaway server."""
    return os.path.join(new_dir(label), "kz.db")


class AppCli(KzTestCase):
    def db_for(self):
        if test_db_url():
            srv = self.server(start=False)
            return srv.db
        return fresh_db(self.id())

    def cli(self, *args, ok=True):
        p = run_cli(list(args))
        if ok:
            self.assertEqual(p.returncode, 0, "kzhook %s -> %d\nstdout: %s\nstderr: %s"
                             % (" ".join(args), p.returncode, p.stdout[-500:], p.stderr[-500:]))
        return p

    def create(self, db, name="cli-app", oids="a,b"):
        p = self.cli("app", "create", "--db", db, "--name", name, "--object-ids", oids)
        b = json.loads(p.stdout)
        return b

    def test_create_list_delete(self):
        db = self.db_for()
        a = self.create(db)
        self.assertTrue({"applicationId", "applicationSecret", "refreshToken", "name", "objectIds"} <= set(a), a)
        for k in ("applicationId", "applicationSecret", "refreshToken"):
            self.assertIsInstance(a.get(k), str, k)
            self.assertTrue(a[k])
        self.assertEqual(a["name"], "cli-app")
        self.assertEqual(a["objectIds"], ["a", "b"])
        b = self.create(db, name="second", oids="*")
        self.assertEqual(b["objectIds"], ["*"])
        p = self.cli("app", "list", "--db", db)
        lst = json.loads(p.stdout)
        self.assertIsInstance(lst.get("applications"), list)
        ids = [x["applicationId"] for x in lst["applications"]]
        self.assertIn(a["applicationId"], ids)
        self.assertIn(b["applicationId"], ids)
        for x in lst["applications"]:
            self.assertTrue({"applicationId", "name", "objectIds", "createdAt"} <= set(x), x)
        self.assertNotIn(a["applicationSecret"], p.stdout)
        self.assertNotIn(a["refreshToken"], p.stdout)
        mine = [x for x in lst["applications"] if x["applicationId"] == a["applicationId"]][0]
        self.assertEqual((mine["name"], mine["objectIds"]), ("cli-app", ["a", "b"]))
        self.cli("app", "delete", "--db", db, a["applicationId"])
        ids = [x["applicationId"] for x in json.loads(self.cli("app", "list", "--db", db).stdout)["applications"]]
        self.assertNotIn(a["applicationId"], ids)
        self.assertIn(b["applicationId"], ids)

    def test_delete_unknown_exits_1(self):
        db = self.db_for()
        self.create(db)
        p = self.cli("app", "delete", "--db", db, "00000000-0000-0000-0000-000000000000", ok=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertTrue(p.stderr.strip(), "no message on stderr")

    def test_delete_twice(self):
        db = self.db_for()
        a = self.create(db)
        self.cli("app", "delete", "--db", db, a["applicationId"])
        p = self.cli("app", "delete", "--db", db, a["applicationId"], ok=False)
        self.assertEqual(p.returncode, 1)

    def test_cli_app_works_against_server_started_later(self):
        db = self.db_for()
        a = self.create(db, oids="g1")
        srv = self.server(db=db)
        rc = self.receiver()
        tok = srv.token(a)
        self.assertJsonOk(srv.create_webhook(tok, webhook_body(rc.url("/cli"), objectId="g1")))
        self.assertError(srv.create_webhook(tok, webhook_body(rc.url("/cli"), objectId="g2")), 403, "Forbidden")

    def test_cli_while_server_running(self):
        srv = self.server()
        rc = self.receiver()
        a = self.create(srv.db, oids="*")
        tok = srv.token(a)
        self.assertJsonOk(srv.create_webhook(tok, webhook_body(rc.url("/cli-live"))))
        # apps made over HTTP show up in the CLI list and vice versa
        http_app = srv.create_app(name="via-http")
        ids = [x["applicationId"] for x in json.loads(self.cli("app", "list", "--db", srv.db).stdout)["applications"]]
        self.assertIn(http_app["applicationId"], ids)
        self.assertIn(a["applicationId"], ids)
        ids = [x["applicationId"] for x in srv.admin("GET", "/admin/v1/applications").json["applications"]]
        self.assertIn(a["applicationId"], ids)
        # delete through the CLI: the credentials stop working on the running server
        self.cli("app", "delete", "--db", srv.db, a["applicationId"])
        self.assertError(srv.token_resp(a), 401, "Unauthenticated")
        self.assertTrue(srv.healthy())

    def test_cli_invalid_arguments(self):
        db = self.db_for()
        for args in (["app", "create", "--db", db, "--object-ids", "a"],
                     ["app", "create", "--db", db, "--name", "x"],
                     ["app", "create", "--db", db, "--name", "", "--object-ids", "a"],
                     ["app", "create", "--db", db, "--name", "x", "--object-ids", ""],
                     ["app", "delete", "--db", db],
                     ["app", "frobnicate", "--db", db],
                     ["nonsense-command"]):
            p = run_cli(args)
            self.assertNotEqual(p.returncode, 0, "kzhook %s exited 0" % " ".join(args))
            self.assertTrue(p.stderr.strip(), "kzhook %s: nothing on stderr" % " ".join(args))
        p = self.cli("app", "list", "--db", db)
        self.assertEqual(json.loads(p.stdout), {"applications": []})


class EnvConfig(KzTestCase):
    def test_environment_instead_of_flags(self):
        port = free_port()
        k = pki()
        admin = "env-admin-token-0123456789"
        srv = self.server(defaults=False, port=port, admin_token=admin, start=False)
        env = {
            "KZHOOK_LISTEN": "127.0.0.1:%d" % port,
            "KZHOOK_DB": srv.db,
            "KZHOOK_ADMIN_TOKEN": admin,
            "KZHOOK_PUBLIC_URL": "https://env.example.test",
            "KZHOOK_CA_FILE": k.ca,
            "KZHOOK_ALLOW_PRIVATE_TARGETS": "1",
            "KZHOOK_VALIDATION_TIMEOUT": "1s",
            "KZHOOK_TOKEN_TTL": "90s",
            "KZHOOK_RATE_LIMIT": "3",
            "KZHOOK_RETRY_SCHEDULE": "1s,2s",
            "KZHOOK_DELIVERY_TIMEOUT": "5s",
            "KZHOOK_RETENTION": "1d",
        }
        srv.env.update(env)
        srv.start()
        rc = self.receiver()
        rc.handshake("/slow", "echo", delay=3)
        app = srv.create_app()
        b = self.assertJsonOk(srv.token_resp(app))
        self.assertEqual(b["endpointUrl"], "https://env.example.test")
        self.assertAlmostEqual(b["accessTokenExpiry"], now_ms() + 90000, delta=5000)
        tok = b["accessToken"]
        # CA file and private targets from the environment
        self.assertJsonOk(srv.create_webhook(tok, webhook_body(rc.url("/env"))))
        # validation timeout from the environment
        t0 = time.monotonic()
        self.assertError(srv.create_webhook(tok, webhook_body(rc.url("/slow"))), 400, "CallbackValidationFailed")
        self.assertLess(time.monotonic() - t0, 2.5)
        # rate limit 3 from the environment: 1 successful create so far, 1 failed one (may or may not count)
        ok = 1
        for _ in range(4):
            r = srv.req("GET", "/v1/webhook", token=tok)
            if r.status != 200:
                break
            ok += 1
        self.assertError(r, 429, "Throttled")
        self.assertIn(ok, (2, 3), "calls allowed with KZHOOK_RATE_LIMIT=3")
        if not test_db_url():
            self.assertTrue(os.path.exists(env["KZHOOK_DB"]), "KZHOOK_DB not used")

    def test_allow_http_callbacks_env(self):
        srv = self.server(env={"KZHOOK_ALLOW_HTTP_CALLBACKS": "1"})
        plain = self.receiver(tls=False)
        _, tok = srv.app_token()
        self.assertJsonOk(srv.create_webhook(tok, webhook_body(plain.url("/env-http"))))

    def test_flag_wins_over_environment(self):
        srv = self.server(env={"KZHOOK_ADMIN_TOKEN": "from-env-token-xyz", "KZHOOK_TOKEN_TTL": "1h"},
                          args=["--token-ttl", "2h"])
        self.assertStatus(srv.admin("GET", "/admin/v1/applications"), 200)
        r = srv.req("GET", "/admin/v1/applications", headers={"Authorization": "Bearer from-env-token-xyz"})
        self.assertError(r, 401, "Unauthenticated")
        b = srv.token_resp(srv.create_app()).json
        self.assertAlmostEqual(b["accessTokenExpiry"], now_ms() + 2 * 3600 * 1000, delta=60000)

    def test_default_db_path_in_working_directory(self):
        if test_db_url():
            self.skipTest("SQLite only")
        port = free_port()
        srv = self.server(defaults=False, port=port, admin_token="tok-default-db-123456",
                          args=["--listen", "127.0.0.1:%d" % port, "--admin-token", "tok-default-db-123456"])
        srv.create_app()
        self.assertTrue(os.path.exists(os.path.join(srv.dir, "kzhook-data", "kzhook.db")),
                        os.listdir(srv.dir))


class InvalidConfig(KzTestCase):
    timeout = 90

    def expect_refusal(self, args, env=None):
        d = new_dir(self.id())
        e = {k: v for k, v in os.environ.items() if not k.startswith("KZHOOK_")}
        e.update(env or {})
        cmd = [binary(), "serve"] + args
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=d, timeout=10,
                               universal_newlines=True)
        except subprocess.TimeoutExpired:
            self.fail("kzhook %s kept running" % " ".join(args))
        self.assertNotEqual(p.returncode, 0, "kzhook %s exited 0" % " ".join(args))
        self.assertTrue(p.stderr.strip(), "kzhook %s: no message on stderr" % " ".join(args))
        self.assertLess(time.monotonic() - t0, 5)
        return p

    def base(self):
        d = new_dir(self.id())
        return ["--listen", "127.0.0.1:%d" % free_port(), "--db", test_db_url() or os.path.join(d, "kz.db"),
                "--admin-token", "tok-invalid-config-1234"]

    def test_invalid_flag_values(self):
        cases = [
            ["--retry-schedule", "5x"],
            ["--retry-schedule", "1m,,2m"],
            ["--listen", "nonsense"],
            ["--listen", "127.0.0.1:99999"],
            ["--listen", "127.0.0.1:-1"],
            ["--token-ttl", "abc"],
            ["--validation-timeout", "5y"],
            ["--delivery-timeout", "-5s"],
            ["--rate-limit", "abc"],
            ["--rate-limit", "-1"],
            ["--retention", "forever"],
            ["--no-such-flag"],
            ["--tls-cert", pki().server_cert],                            # key missing
            ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
            ["--ca-file", "/nonexistent-ca.pem"],
            ["--admin-token"],                                          # value missing
        ]
        for extra in cases:
            with self.subTest(args=extra):
                self.expect_refusal(self.base() + extra)

    def test_invalid_env_values(self):
        for k, v in (("KZHOOK_RETRY_SCHEDULE", "5x"), ("KZHOOK_LISTEN", "nonsense"), ("KZHOOK_TOKEN_TTL", "soon"),
                     ("KZHOOK_RATE_LIMIT", "many")):
            with self.subTest(env=k):
                self.expect_refusal(self.base() if k != "KZHOOK_LISTEN" else self.base()[2:], env={k: v})

    def test_port_in_use(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        try:
            args = self.base()
            args[1] = "127.0.0.1:%d" % s.getsockname()[1]
            self.expect_refusal(args)
        finally:
            s.close()

    def test_unknown_subcommand(self):
        p = run_cli(["bogus-subcommand"])
        self.assertNotEqual(p.returncode, 0)
        self.assertTrue(p.stderr.strip())
