"""Helpers for the delivery tests (test_delivery.py, test_crash.py, test_signature_node.py).

Python 3 standard library only; builds on kzlib (which this module does not change).

  compact(v)                     JSON text as the contract's delivery body uses it
  expected_body(wid, hook, ev)   the exact delivery body (README "Publishing and delivery" field order) for one event
  sign(secret, id, ts, body)     Standard Webhooks v1 signature header value
  signature_ok(secret, req)      does a received request carry a valid signature for its bytes?
  publish(srv, events)           POST /v1/events, asserting 202; returns the parsed answer
  deliveries(...) / all_deliveries(...)   the delivery log (one page / every page)
  wait_until(pred, timeout)      poll until pred() is truthy; AssertionError with a message if not
  metrics(srv)                   GET /metrics parsed into {"name{labels}": float}
  DReceiver                      kzlib.Receiver that also remembers which answer each request got
  uid(prefix)                    a short unique id (groups, actions, eventIds per test)
  machine_baseline(rc, n)        how long a Python client needs for n requests to a receiver
                                 (yardstick for latency bounds on a loaded machine)

DReceiver overrides kzlib.Receiver._record/_next_response (called from its handler threads).
"""

import base64
import hashlib
import hmac
import http.client
import json
import re
import secrets
import statistics
import threading
import time
import urllib.parse

from kzlib import Receiver, pki, timeout_scale, webhook_body

UA_RE = re.compile(r"^kzhook/\d+\.\d+\.\d+\S*$")


def uid(prefix="x"):
    return "%s-%s" % (prefix, secrets.token_hex(5))


def compact(v):
    """Compact JSON: no whitespace, UTF-8 kept as is (no \\u escapes for non-ASCII)."""
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def expected_body(wid, hook, ev, data_text=None):
    """The delivery body for event `ev` (as published, with its eventId) sent to webhook `wid`
    created from `hook` (the create body: objectId, objectType, optional callBackContext).

    Field order (that of real Kaizala callbacks, README "Publishing and delivery"): subscriptionId, objectId,
    objectType, eventType, eventId, data (as published, compact), context (only when
    callBackContext is set), fromUser, fromUserId, isBotfromUser (false unless published true),
    fromUserName, fromUserProfilePic ("" when not given), groupId (only when the event has one),
    sourceGroupId (as published, else the groupId; absent when neither). `data_text` overrides
    the compact rendering of data."""
    items = [("subscriptionId", wid), ("objectId", hook["objectId"]),
             ("objectType", hook["objectType"]), ("eventType", ev["eventType"]),
             ("eventId", ev["eventId"])]
    parts = ["%s:%s" % (compact(k), compact(v)) for k, v in items]
    # data is delivered as published, minified: kzlib publishes with json.dumps' defaults
    # (non-ASCII as \u escapes), and kzhook keeps the publisher's spelling of every token.
    parts.append('"data":' + (data_text if data_text is not None
                              else json.dumps(ev.get("data", {}), separators=(",", ":"))))
    if hook.get("callBackContext") is not None:
        parts.append('"context":' + compact(hook["callBackContext"]))
    tail = [("fromUser", ev.get("fromUser") or ""), ("fromUserId", ev.get("fromUserId") or ""),
            ("isBotfromUser", ev.get("isBotfromUser") in (True, "true", "True", "TRUE")),
            ("fromUserName", ev.get("fromUserName") or ""),
            ("fromUserProfilePic", ev.get("fromUserProfilePic") or "")]
    if ev.get("groupId"):
        tail.append(("groupId", ev["groupId"]))
    source = ev.get("sourceGroupId") or ev.get("groupId")
    if source:
        tail.append(("sourceGroupId", source))
    parts += ["%s:%s" % (compact(k), compact(v)) for k, v in tail]
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def secret_key(secret):
    assert secret.startswith("whsec_"), secret
    return base64.b64decode(secret[len("whsec_"):], validate=True)


def sign(secret, msg_id, ts, body):
    mac = hmac.new(secret_key(secret), ("%s.%s." % (msg_id, ts)).encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signature_ok(secret, req):
    """True when `req` (a kzlib Request) carries a v1 signature that matches its exact bytes."""
    h = req.headers
    if not all(k in h for k in ("webhook-id", "webhook-timestamp", "webhook-signature")):
        return False
    want = sign(secret, h["webhook-id"], h["webhook-timestamp"], req.body)
    return any(hmac.compare_digest(want, s) for s in h["webhook-signature"].split())


def publish(srv, events, status=202):
    """POST /v1/events with one event (dict) or an array; asserts `status`; returns the JSON."""
    r = srv.admin("POST", "/v1/events", json=events)
    if r.status != status:
        raise AssertionError("POST /v1/events: want %d, got %d %r" % (status, r.status, r.raw[:500]))
    return r.json


def deliveries(srv, tok, wid, status=None, limit=None, cursor=None):
    """GET /v1/webhook/{id}/deliveries → Resp (not checked)."""
    q = {}
    if status is not None:
        q["status"] = status
    if limit is not None:
        q["limit"] = str(limit)
    if cursor is not None:
        q["cursor"] = cursor
    path = "/v1/webhook/%s/deliveries" % wid
    if q:
        path += "?" + urllib.parse.urlencode(q)
    return srv.req("GET", path, token=tok)


def all_deliveries(srv, tok, wid, status=None, limit=1000):
    """Every row of the delivery log (following nextCursor); asserts 200 on every page."""
    out, cursor = [], None
    for _ in range(10000):
        r = deliveries(srv, tok, wid, status=status, limit=limit, cursor=cursor)
        if r.status != 200 or not isinstance(r.json, dict):
            raise AssertionError("delivery log: %d %r" % (r.status, r.raw[:500]))
        out.extend(r.json["deliveries"])
        cursor = r.json.get("nextCursor")
        if not cursor:
            return out
    raise AssertionError("delivery log: pagination does not end")


def wait_until(pred, timeout=10, interval=0.05, msg="condition"):
    """Poll pred() until it returns something truthy (returned); AssertionError after timeout."""
    deadline = time.monotonic() + timeout * timeout_scale()
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s (last: %r)"
                                 % (timeout, msg, last))
        time.sleep(interval)


_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$")


def metrics(srv):
    r = srv.req("GET", "/metrics")
    if r.status != 200:
        raise AssertionError("GET /metrics: %d %r" % (r.status, r.raw[:300]))
    out = {}
    for line in r.raw.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_RE.match(line)
        if not m:
            raise AssertionError("unparsable metrics line %r" % line)
        out[m.group(1)] = float(m.group(2))
    return out


def request_latency(tc, srv, n, method, path, **kw):
    """(median, max) seconds of n requests on one keep-alive connection, each answered 200."""
    lat = []
    c = srv.connection()
    try:
        for _ in range(n):
            t0 = time.monotonic()
            r = srv.req(method, path, conn=c, **kw)
            lat.append(time.monotonic() - t0)
            tc.assertEqual(r.status, 200)
    finally:
        c.close()
    return statistics.median(lat), max(lat)


def create_hook(tc, srv, tok, url, **kw):
    """POST /v1/webhook (webhook_body(url, **kw)); asserts 200; returns (webhookId, secret, body)."""
    body = webhook_body(url, **kw)
    r = srv.create_webhook(tok, body)
    b = tc.assertJsonOk(r, 200, "create webhook %r" % (body,))
    return b["webhookId"], b["signingSecret"], body


def webhook_active(srv, tok, wid):
    r = srv.get_webhook(tok, wid)
    if r.status != 200:
        raise AssertionError("GET webhook: %d %r" % (r.status, r.raw[:300]))
    return r.json["active"]


class DReceiver(Receiver):
    """A kzlib Receiver that also records the answer given to each request.

    outcomes(path) → [(Request, answer)] where answer is the scripted item (int status, "reset"
    or dict) or {"status": 200} for the default. ok_requests(path) → requests answered 2xx.
    fail_first(path, n, status=500) queues n failing answers."""

    def __init__(self, **kw):
        self._tl = threading.local()
        self._outcomes = []
        super().__init__(**kw)

    def _record(self, req):
        self._tl.req = req
        super()._record(req)

    def _next_response(self, path):
        r = super()._next_response(path)
        req = getattr(self._tl, "req", None)
        if req is not None and req.path == path:
            with self._lock:
                self._outcomes.append((req, r))
        return r

    def fail_first(self, path, n, status=500):
        self.script(path, [status] * n)

    @staticmethod
    def _status(answer):
        if answer == "reset":
            return None
        if isinstance(answer, int):
            return answer
        if answer.get("reset"):
            return None
        return answer.get("status", 200)

    def outcomes(self, path=None):
        with self._lock:
            out = list(self._outcomes)
        return [(q, a) for q, a in out if path is None or q.path == path]

    def ok_requests(self, path=None):
        res = []
        for q, a in self.outcomes(path):
            st = self._status(a)
            if st is not None and 200 <= st <= 299:
                res.append(q)
        return res

    def failed_count(self, path=None):
        return len(self.outcomes(path)) - len(self.ok_requests(path))


def machine_baseline(rc, n=50, threads=8, path="/__calibrate"):
    """Seconds a Python client needs for n POSTs to receiver `rc` over `threads` keep-alive
    connections: a yardstick of how loaded the test machine is, independent of kzhook."""
    per = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    errors = []

    def worker(k):
        try:
            if rc.tls:
                c = http.client.HTTPSConnection(rc.host, rc.port, timeout=10,
                                                context=pki().client_context())
            else:
                c = http.client.HTTPConnection(rc.host, rc.port, timeout=10)
            for _ in range(k):
                c.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
                c.getresponse().read()
            c.close()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=worker, args=(k,)) for k in per]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    if errors:
        raise AssertionError("calibration against the receiver failed: %r" % errors[:3])
    return time.monotonic() - t0
