"""Transfer slots are shared fairly between applications first, then between their endpoints
(README.md, "Publishing and delivery"): one application's thousands of silent endpoints must not
delay another application's deliveries.

Application A has 2,100 webhooks (more than the 2,048 transfers kzhook runs at once) on a receiver
that accepts every delivery and never answers; application B has one webhook on a receiver that
answers at once. With A's attempts hanging, B's events must still arrive promptly. (Before the
fix A took all 2,048 slots and B waited for A's attempts to time out.)
"""
import concurrent.futures
import selectors
import socket
import statistics
import threading
import time

from dlib import create_hook, publish, uid, wait_until
from kzlib import KzTestCase, timeout_scale

N_SILENT = 2100
HARD_CAP = 2048  # transfers at once, all endpoints (src/scheduler.h)


class SilentReceiver:
    """HTTP on 127.0.0.1 in one thread: answers the callback handshake (echoes validationToken)
    and reads every other request without ever answering it; counts those open requests."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.bufs = {}
        self.hung = 0  # delivery requests received and never answered
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def count(self):
        with self.lock:
            return self.hung

    def _run(self):
        while not self.stopping:
            for key, _ in self.sel.select(0.2):
                if key.data is None:
                    try:
                        c, _ = self.sock.accept()
                    except OSError:
                        continue
                    c.setblocking(False)
                    self.bufs[c] = b""
                    self.sel.register(c, selectors.EVENT_READ, "c")
                else:
                    self._read(key.fileobj)

    def _read(self, c):
        try:
            data = c.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(c)
            self.bufs.pop(c, None)
            c.close()
            return
        buf = self.bufs[c] + data
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            method, target = lines[0].split(b" ")[:2]
            length = 0
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if len(rest) < length:
                break
            buf = rest[length:]
            if method == b"GET" and b"validationToken=" in target:
                token = target.split(b"validationToken=", 1)[1].split(b"&")[0]
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d"
                          b"\r\n\r\n%s" % (len(token), token))
            else:
                with self.lock:
                    self.hung += 1  # never answered: kzhook's attempt hangs until its timeout
        self.bufs[c] = buf

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        for c in list(self.bufs):
            c.close()
        self.sock.close()


class Fairness(KzTestCase):
    timeout = 300

    def test_silent_application_does_not_delay_another(self):
        srv = self.server(args=["--allow-http-callbacks", "--rate-limit", "0",
                                "--max-webhooks-per-app", str(N_SILENT + 100),
                                "--delivery-timeout", "30s", "--retry-schedule", "10m"])
        silent = SilentReceiver()
        self.addCleanup(silent.stop)
        fast = self.receiver(tls=False)
        _, tok_a = srv.app_token()
        _, tok_b = srv.app_token()
        group_a, group_b = uid("gA"), uid("gB")

        def make(i):
            return create_hook(self, srv, tok_a, silent.url("/s%d" % i), objectId=group_a,
                               objectType="Group", eventTypes=["TextMessageCreated"])

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(make, range(N_SILENT)))
        print("created %d webhooks for A in %.1fs" % (N_SILENT, time.time() - t0))
        create_hook(self, srv, tok_b, fast.url("/b"), objectId=group_b, objectType="Group",
                    eventTypes=["TextMessageCreated"])
        # Warm B's connection, so that the figures below measure scheduling, not a TCP connect.
        publish(srv, {"eventType": "TextMessageCreated", "groupId": group_b})
        fast.wait_for(1, path="/b", method="POST", timeout=10)

        # One event for A fans out to 2,100 deliveries that all hang.
        publish(srv, {"eventType": "TextMessageCreated", "groupId": group_a})
        wait_until(lambda: silent.count() >= 1500, 60 * timeout_scale(),
                   msg="A's attempts hanging on the silent receiver")
        time.sleep(1.0)  # let A take every slot it may
        hung = silent.count()
        print("A: %d attempts hanging (transfer slots: %d)" % (hung, HARD_CAP))

        # B publishes 15 events, one every 100 ms; each must arrive promptly.
        sent = {}
        for _ in range(15):
            eid = uid("evB")
            sent[eid] = time.time()
            publish(srv, {"eventType": "TextMessageCreated", "groupId": group_b, "eventId": eid})
            time.sleep(0.1)
        deadline = 20 * timeout_scale()
        try:
            fast.wait_for(16, path="/b", method="POST", timeout=deadline)
        except AssertionError:
            pass
        got = {q.headers.get("webhook-id"): q.time for q in fast.requests(path="/b", method="POST")}
        lat = sorted(got[e] - t for e, t in sent.items() if e in got)
        srv.kill9()  # no drain of 2,000 hanging attempts
        print("B: %d of 15 delivered within %.0fs; latency p50 %s ms, max %s ms"
              % (len(lat), deadline, "%.0f" % (statistics.median(lat) * 1000) if lat else "-",
                 "%.0f" % (lat[-1] * 1000) if lat else "-"))
        self.assertLess(hung, HARD_CAP, "A took every transfer slot")
        self.assertEqual(len(lat), 15, "B got %d of its 15 events within %.0fs while A's %d "
                         "attempts hung" % (len(lat), deadline, hung))
        self.assertLess(statistics.median(lat), 1.0 * timeout_scale(), "B's p50 latency")
        self.assertLess(lat[-1], 3.0 * timeout_scale(), "B's max latency")
