"""`kzhook listen` (README "Walkthrough"): a local receiver that answers the handshake, prints
each delivery and whether its signature verifies with --secret."""

import subprocess
import time

from dlib import publish, uid, wait_until
from kzlib import KzTestCase, binary, free_port, timeout_scale


class Listen(KzTestCase):
    timeout = 90

    def start_listen(self, port, *extra):
        p = subprocess.Popen([binary(), "listen", "--port", str(port)] + list(extra),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: p.poll() is None and (p.terminate(), p.wait(10)))
        line = p.stdout.readline().decode()
        self.assertIn("receiving on http://127.0.0.1:%d/" % port, line)
        return p

    def stop_listen(self, p):
        p.terminate()
        out, err = p.communicate(timeout=10 * timeout_scale())
        self.assertEqual(p.returncode, 0, err)
        return out.decode()

    def test_handshake_delivery_and_signature(self):
        port = free_port()
        srv = self.server(["--allow-http-callbacks"])
        tok = srv.token(srv.create_app())
        group = uid("g")
        lp = self.start_listen(port)
        url = "http://127.0.0.1:%d/kaizala" % port
        r = srv.create_webhook(tok, {"objectId": group, "objectType": "Group",
                                     "eventTypes": ["SurveyResponse"], "callBackUrl": url})
        secret = self.assertJsonOk(r, 200)["signingSecret"]
        out = self.stop_listen(lp)
        self.assertIn("=== handshake /kaizala: answered validationToken", out)
        for key, want in ((secret, "signature: verified"),
                          ("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", "signature: NOT verified")):
            lp = self.start_listen(port, "--secret", key)
            ev = uid("e")
            publish(srv, {"eventType": "SurveyResponse", "groupId": group, "eventId": ev,
                          "data": {"answer": 42}})
            r = wait_until(lambda: [d for d in srv.req("GET", "/v1/webhook", token=tok).json["webhooks"]],
                           timeout=5)
            time.sleep(0.2)
            deadline = time.monotonic() + 15 * timeout_scale()
            while time.monotonic() < deadline:
                ds = srv.req("GET", "/v1/webhook/%s/deliveries" % r[0]["id"], token=tok).json
                if any(d["eventId"] == ev and d["status"] == "succeeded" for d in ds["deliveries"]):
                    break
                time.sleep(0.1)
            out = self.stop_listen(lp)
            self.assertIn("=== delivery 1: POST /kaizala", out)
            self.assertIn(want, out)
            self.assertIn('"answer": 42', out)
            self.assertIn("webhook-id: " + ev, out.replace("Webhook-Id", "webhook-id"))

    def test_bad_arguments(self):
        for args in (["--port", "0"], ["--secret", "nope"], ["--bogus"], ["--host", "localhost"]):
            p = subprocess.run([binary(), "listen"] + args, capture_output=True, timeout=10)
            self.assertEqual(p.returncode, 2, args)
