"""Signatures checked by an independent implementation (README "Publishing and delivery"): a Node HTTPS receiver
verifies every delivery with the `standardwebhooks` npm package (tests/integration/node).

Setup: `cd tests/integration/node && npm ci --no-audit --no-fund`. Without node or the installed
package these tests FAIL (they do not skip)."""

import base64
import http.client
import json
import os
import select
import shutil
import subprocess
import time

from dlib import create_hook, publish, sign, uid, wait_until, all_deliveries
from kzlib import KzTestCase, new_dir, pki, timeout_scale

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
SETUP_HINT = "run: cd tests/integration/node && npm ci --no-audit --no-fund"


class NodeReceiver:
    """tests/integration/node/receiver.js in a child process."""

    def __init__(self):
        self.proc = None
        node = shutil.which("node")
        if not node:
            raise AssertionError("node is not installed (Node.js 18+ is needed for this test)")
        if not os.path.isfile(os.path.join(NODE_DIR, "node_modules", "standardwebhooks", "package.json")):
            raise AssertionError("the npm package standardwebhooks is not installed in %s; %s"
                                 % (NODE_DIR, SETUP_HINT))
        p = pki()
        self.dir = new_dir("node-receiver")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [node, "receiver.js", "--cert", p.server_cert, "--key", p.server_key], cwd=NODE_DIR,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        deadline = time.monotonic() + 15 * timeout_scale()
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                ch = os.read(self.proc.stdout.fileno(), 1)
                if not ch:
                    break
                line += ch
            elif self.proc.poll() is not None:
                break
        if not line.startswith(b"listening "):
            self.stop()
            raise AssertionError("node receiver did not start (stdout %r); stderr:\n%s\n%s"
                                 % (line, self._stderr(), SETUP_HINT))
        self.port = int(line.split()[1])
        self.ctx = p.client_context()

    def _stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")[-3000:]
        except OSError:
            return ""

    def url(self, path):
        return "https://127.0.0.1:%d%s" % (self.port, path)

    def call(self, method, path, body=None, headers=None):
        c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10 * timeout_scale(),
                                        context=self.ctx)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def register(self, path, secret):
        st, b = self.call("POST", "/__secret", json.dumps({"path": path, "secret": secret}).encode(),
                          {"Content-Type": "application/json"})
        assert st == 200, (st, b)

    def results(self):
        st, b = self.call("GET", "/__results")
        assert st == 200, (st, b)
        return json.loads(b)["results"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


class NodeSignature(KzTestCase):
    timeout = 60

    def setUp(self):
        try:
            self.node = NodeReceiver()
        except AssertionError as e:
            self.fail(str(e))
        self.addCleanup(self.node.stop)
        self.srv = self.server(args=["--retry-schedule", "200ms,200ms", "--rate-limit", "0"])
        self.app, self.tok = self.srv.app_token()

    def hook(self, path, **kw):
        wid, secret, body = create_hook(self, self.srv, self.tok, self.node.url(path), **kw)
        self.node.register(path, secret)
        return {"id": wid, "secret": secret, "path": path, "body": body}

    def wait_results(self, n, timeout=20):
        return wait_until(lambda: (lambda r: r if len(r) >= n else None)(self.node.results()), timeout,
                          interval=0.1, msg="%d results at the node receiver" % n)

    def test_every_delivery_verifies_with_standardwebhooks(self):
        g, a = uid("g"), uid("a")
        h1 = self.hook("/n1", objectId=g, objectType="Group",
                       eventTypes=["TextMessageCreated", "SurveyResponse"], callBackToken="tok-node",
                       callBackContext="contexte ✓ «node»")
        h2 = self.hook("/n2", objectId=a, objectType="Action", eventTypes=["SurveyResponse"])
        evs = [
            {"eventType": "TextMessageCreated", "groupId": g, "data": {"text": "hello"}},
            {"eventType": "TextMessageCreated", "groupId": g, "fromUserName": "Zoë Ünïcode 😀 中文",
             "fromUser": "+15550100", "data": {"text": "ü é ✓ 😀 中文 \u2028 \u0001", "emoji": "👍🏽"}},
            {"eventType": "SurveyResponse", "groupId": g, "actionId": a,
             "data": {"q": 'quotes " and \\ backslashes\nnewline\ttab', "n": [1, -2, 3.5, True, None]}},
            {"eventType": "TextMessageCreated", "groupId": g,
             "data": {"blob": "x" * 500000 + "é✓😀" * 2000, "tail": list(range(1000))}},
            {"eventType": "SurveyResponse", "actionId": a, "data": ["array", "data"]},
        ]
        want = {}  # path -> eventIds
        for ev in evs:
            r = publish(self.srv, ev)
            n_paths = [p for p, cond in (("/n1", ev.get("groupId") == g), ("/n2", ev.get("actionId") == a))
                       if cond]
            self.assertEqual(r["deliveries"], len(n_paths), r)
            for p in n_paths:
                want.setdefault(p, set()).add(r["eventId"])
        batch = [{"eventType": "TextMessageCreated", "groupId": g, "data": {"i": i, "s": "ñ" * i}}
                 for i in range(20)]
        for e in publish(self.srv, batch)["events"]:
            want["/n1"].add(e["eventId"])
        total = sum(len(v) for v in want.values())
        res = self.wait_results(total)
        time.sleep(0.5 * timeout_scale())
        res = self.node.results()
        bad = [(r["path"], r["id"], r["error"]) for r in res if not r["ok"]]
        self.assertEqual(bad, [], "deliveries that standardwebhooks rejected")
        self.assertEqual(len(res), total, "more deliveries than expected (retries?)")
        got = {}
        for r in res:
            got.setdefault(r["path"], set()).add(r["eventId"])
            self.assertEqual(r["id"], r["eventId"], "webhook-id differs from the body's eventId")
            self.assertTrue(r["contentType"].startswith("application/json"), r["contentType"])
        self.assertEqual(got, want)
        for r in res:
            if r["path"] == "/n1":
                self.assertEqual(r["callbackToken"], "tok-node")
            else:
                self.assertIsNone(r["callbackToken"])
        # Python's HMAC agrees with the Node verifier on the exact same bytes
        secrets = {"/n1": h1["secret"], "/n2": h2["secret"]}
        for r in res:
            if r["bodyB64"] is None:
                continue
            body = base64.b64decode(r["bodyB64"])
            self.assertIn(sign(secrets[r["path"]], r["id"], r["timestamp"], body), r["signature"].split())
        big = [r for r in res if r["bodyBytes"] > 500000]
        self.assertEqual(len(big), 1, "the large event")
        for h in (h1, h2):
            rows = all_deliveries(self.srv, self.tok, h["id"])
            self.assertTrue(rows)
            self.assertEqual({(d["status"], d["attempts"]) for d in rows}, {("succeeded", 1)}, rows)

    def test_tampered_delivery_fails_verification(self):
        g = uid("g")
        h = self.hook("/t", objectId=g, eventTypes=["TextMessageCreated"])
        other = self.hook("/other", objectId=uid("g"), eventTypes=["TextMessageCreated"])
        publish(self.srv, {"eventType": "TextMessageCreated", "groupId": g, "data": {"amount": 100}})
        real = self.wait_results(1)[0]
        self.assertTrue(real["ok"], real)
        body = base64.b64decode(real["bodyB64"])
        hdr = {"Content-Type": "application/json", "webhook-id": real["id"],
               "webhook-timestamp": real["timestamp"], "webhook-signature": real["signature"]}
        now = str(int(time.time()))
        cases = [
            # (name, body, headers, verifies)
            ("exact replay of the real delivery", body, hdr, True),
            ("body modified", body.replace(b'"amount":100', b'"amount":900'), hdr, False),
            ("one byte appended", body + b" ", hdr, False),
            ("webhook-id changed", body, dict(hdr, **{"webhook-id": real["id"] + "x"}), False),
            ("timestamp changed", body, dict(hdr, **{"webhook-timestamp": str(int(real["timestamp"]) + 1)}),
             False),
            ("signed with another webhook's secret", body,
             dict(hdr, **{"webhook-signature": sign(other["secret"], real["id"], real["timestamp"], body)}),
             False),
            ("stale timestamp, correctly signed", body,
             dict(hdr, **{"webhook-timestamp": str(int(now) - 600),
                          "webhook-signature": sign(h["secret"], real["id"], int(now) - 600, body)}), False),
            ("fresh, signed by the test in Python", body,
             dict(hdr, **{"webhook-timestamp": now,
                          "webhook-signature": sign(h["secret"], real["id"], now, body)}), True),
        ]
        for name, b, hh, ok in cases:
            with self.subTest(name):
                st, resp = self.node.call("POST", "/t", b, hh)
                self.assertEqual(st, 200 if ok else 401, "%s: %r" % (name, resp))
        res = self.node.results()
        self.assertEqual([r["ok"] for r in res[1:]], [c[3] for c in cases], res[1:])
        self.assertEqual(len([r for r in res if r["path"] == "/t" and r["error"] is None]), 3)
