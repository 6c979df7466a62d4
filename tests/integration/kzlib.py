"""Shared helpers for the kzhook black-box integration suite (Python 3 standard library only).

Environment (set by run.py; sensible defaults when a test module is run on its own):
  KZ_BINARY   path of the kzhook binary            (default: <repo>/build/kzhook)
  KZ_TMP      session scratch directory             (default: a fresh mkdtemp)
  KZ_KEEP     "1" keeps scratch directories
  KZ_TEST_DB  "postgresql://..." runs every server against PostgreSQL (a fresh database per
              server when `psql` can create one, else the URL as given); anything else or unset
              means a fresh SQLite file per server.
  KZ_TIMEOUT_SCALE  multiplies every per-test timeout (e.g. 3 under valgrind)

Main pieces:
  make_pki(dir) / pki()    test CA, server certificates, a second CA, an expired certificate
  Receiver                 HTTPS (or plain HTTP) callback receiver that records every request
  Server                   one `kzhook serve` process plus HTTP client helpers
  KzTestCase               unittest.TestCase with a per-test timeout, resource cleanup and
                           assertion helpers for the contract's error format
"""

import collections
import http.client
import json as _json
import os
import re
import secrets
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openapi_check  # every response req() receives is checked against docs/openapi.json

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

EVENT_TYPES = [
    "ActionCreated", "ActionResponse", "SurveyCreated", "SurveyResponse", "JobCreated",
    "JobResponse", "TextMessageCreated", "AttachmentCreated", "Announcement", "MemberAdded",
    "MemberRemoved", "GroupAdded", "GroupRemoved", "PollCreated", "PollResponse",
    "LetsMeetCreated", "LetsMeetResponse",
]
OBJECT_TYPES = ["Group", "Action", "ActionPackage"]
TWO_YEARS_MS = 63113852000
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
VALIDATION_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")
WEBHOOK_FIELDS = {"id", "objectId", "objectType", "events", "filters", "callbackUrl",
                  "callbackToken", "callBackContext", "ts", "validity", "active"}



def binary():
    return os.environ.get("KZ_BINARY") or os.path.join(REPO, "build", "kzhook")


def keep():
    return os.environ.get("KZ_KEEP") == "1"


def timeout_scale():
    try:
        return max(1.0, float(os.environ.get("KZ_TIMEOUT_SCALE", "1")))
    except ValueError:
        return 1.0


_session_tmp = None
_session_lock = threading.RLock()


def session_tmp():
    """Scratch root shared by the whole test session."""
    global _session_tmp
    with _session_lock:
        if _session_tmp is None:
            root = os.environ.get("KZ_TMP")
            if not root:
                root = tempfile.mkdtemp(prefix="kzhook-it-")
                os.environ["KZ_TMP"] = root
            os.makedirs(root, exist_ok=True)
            _session_tmp = root
        return _session_tmp


_dir_counter = collections.Counter()


def new_dir(label):
    """A fresh directory under the session root, named after `label`."""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[-80:] or "x"
    with _session_lock:
        _dir_counter[label] += 1
        n = _dir_counter[label]
    d = os.path.join(session_tmp(), "%s-%d" % (label, n))
    os.makedirs(d, exist_ok=True)
    return d


def now_ms():
    return int(time.time() * 1000)


def free_port(host="127.0.0.1"):
    """A currently free TCP port (bind to port 0, read it, release it)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ==================================================================================================
# PKI
# ==================================================================================================

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
[wronghost_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:wrong.example.invalid
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = newcerts
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
"""


class PKI:
    """Paths of the generated PEM files.

    ca / ca_key               the test CA (pass `ca` to kzhook --ca-file)
    server_cert / server_key  CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1, signed by ca
    ca2 / ca2_key             an unrelated CA
    other_cert / other_key    the same names, signed by ca2 (an "unknown CA" for kzhook)
    wronghost_cert / _key     signed by ca, SAN DNS:wrong.example.invalid only
    expired_cert / _key       the localhost names, signed by ca, valid 2020-01-01..2020-01-02
                              (None when openssl could not make it)
    """

    def __init__(self, d):
        self.dir = d
        j = lambda n: os.path.join(d, n)  # noqa: E731
        self.ca, self.ca_key = j("ca.pem"), j("ca.key")
        self.server_cert, self.server_key = j("server.pem"), j("server.key")
        self.ca2, self.ca2_key = j("ca2.pem"), j("ca2.key")
        self.other_cert, self.other_key = j("other.pem"), j("other.key")
        self.wronghost_cert, self.wronghost_key = j("wronghost.pem"), j("wronghost.key")
        self.expired_cert, self.expired_key = j("expired.pem"), j("expired.key")

    def client_context(self):
        """An SSL client context trusting only the test CA."""
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx


def _openssl(args, cwd):
    p = subprocess.run(["openssl"] + args, cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), p.stderr.decode(errors="replace")))


def _newkey_args(keyout):
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", keyout]


def make_pki(d):
    """Generate (or reuse, when already complete) the test PKI in directory `d`; returns PKI."""
    os.makedirs(d, exist_ok=True)
    pki = PKI(d)
    done = os.path.join(d, "DONE")
    if os.path.exists(done):
        if not os.path.exists(pki.expired_cert):
            pki.expired_cert = pki.expired_key = None
        return pki
    cnf = os.path.join(d, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_OPENSSL_CNF)
    for name, cn in (("ca", "kzhook test CA"), ("ca2", "kzhook unrelated CA")):
        _openssl(["req", "-x509", "-config", cnf, "-extensions", "ca_ext", "-sha256", "-days", "3650",
                  "-subj", "/CN=" + cn, "-out", name + ".pem"] + _newkey_args(name + ".key"), d)
    serial = [1000]

    def leaf(name, ca, ext):
        _openssl(["req", "-new", "-config", cnf, "-subj", "/CN=localhost", "-out", name + ".csr"]
                 + _newkey_args(name + ".key"), d)
        serial[0] += 1
        _openssl(["x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                  "-set_serial", str(serial[0]), "-days", "825", "-sha256", "-extfile", cnf,
                  "-extensions", ext, "-out", name + ".pem"], d)

    leaf("server", "ca", "server_ext")
    leaf("other", "ca2", "server_ext")
    leaf("wronghost", "ca", "wronghost_ext")
    # Expired: `openssl x509 -req` of OpenSSL 3.0 cannot set explicit dates; `openssl ca` can.
    try:
        os.makedirs(os.path.join(d, "newcerts"), exist_ok=True)
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "serial"), "w") as f:
            f.write("2000\n")
        _openssl(["req", "-new", "-config", cnf, "-subj", "/CN=localhost", "-out", "expired.csr"]
                 + _newkey_args("expired.key"), d)
        _openssl(["ca", "-batch", "-config", cnf, "-cert", "ca.pem", "-keyfile", "ca.key",
                  "-in", "expired.csr", "-out", "expired.pem", "-notext",
                  "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
                  "-extfile", cnf, "-extensions", "server_ext"], d)
    except Exception as e:  # pragma: no cover - depends on the local openssl
        sys.stderr.write("kzlib: could not make an expired certificate (%s); skipping it\n" % e)
        for n in ("expired.pem", "expired.key"):
            try:
                os.unlink(os.path.join(d, n))
            except OSError:
                pass
        pki.expired_cert = pki.expired_key = None
    open(done, "w").close()
    return pki


_pki = None


def pki():
    """The session's PKI (generated once, under the session scratch root)."""
    global _pki
    with _session_lock:
        if _pki is None:
            _pki = make_pki(os.path.join(session_tmp(), "pki"))
        return _pki


# ==================================================================================================
# Receiver: the callback endpoint
# ==================================================================================================

class Request:
    """One request seen by a Receiver."""

    def __init__(self, method, target, headers, header_list, body, t):
        self.method = method
        self.target = target
        u = urllib.parse.urlsplit(target)
        self.path = u.path
        self.raw_query = u.query
        self.query = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        self.headers = headers          # lower-cased name -> value (last one wins)
        self.header_list = header_list  # [(name, value)] as received
        self.body = body
        self.time = t

    @property
    def is_handshake(self):
        return self.method == "GET" and "validationToken" in self.query

    def json(self):
        return _json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Request %s %s %d bytes>" % (self.method, self.target, len(self.body))


class _RecvHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, owner, ssl_ctx, family=socket.AF_INET):
        self.address_family = family
        self.owner = owner
        self.ssl_ctx = ssl_ctx
        super().__init__(addr, handler)

    def finish_request(self, request, client_address):
        self.owner._track(request, True)
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn = request
        try:
            if self.ssl_ctx is not None:
                request.settimeout(10)
                try:
                    conn = self.ssl_ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    self.owner._tls_failure(e)
                    return
                self.owner._track(conn, True)
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            if conn is not request:
                self.owner._track(conn, False)
                try:
                    conn.close()
                except OSError:
                    pass
            self.owner._track(request, False)

    def handle_error(self, request, client_address):
        pass  # peers that vanish mid-request are part of the tests


class _RecvHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "kz-test-receiver"
    sys_version = ""

    def log_message(self, *args):
        pass

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                out += self.rfile.read(size)
                self.rfile.readline(3)
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body=b"", headers=None, ctype="text/plain"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        hdrs = dict(headers or {})
        if ctype and "Content-Type" not in hdrs:
            self.send_header("Content-Type", ctype)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        # one write for head and body: no Nagle/delayed-ACK stall on keep-alive connections
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        data = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.wfile.write(data)
        self.wfile.flush()

    def _abort(self, partial=b""):
        """Drop the connection, after writing `partial` bytes; reset (RST) when possible."""
        try:
            if partial:
                self.wfile.write(partial)
                self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True

    def _handle(self):
        body = self._read_body()
        hl = [(k, v) for k, v in self.headers.items()]
        hd = {k.lower(): v for k, v in hl}
        req = Request(self.command, self.path, hd, hl, body, time.time())
        owner = self.server.owner
        owner._record(req)
        if req.is_handshake:
            self._handshake(req, owner._handshake_cfg(req.path))
        elif self.command == "GET":
            self._send(200, b"ok")
        else:
            self._scripted(owner._next_response(req.path))

    def _handshake(self, req, cfg):
        token = req.query["validationToken"]
        mode = cfg.get("mode", "echo")
        delay = cfg.get("delay", cfg.get("seconds", 0))
        if delay:
            self.server.owner._stopping.wait(delay)
        if mode in ("echo", "sleep"):
            self._send(cfg.get("status", 200), token)
        elif mode == "echo_ws":
            self._send(200, " \r\n\t" + token + "\r\n \n")
        elif mode == "wrong":
            other = "x" * 32 if token != "x" * 32 else "y" * 32
            self._send(200, other)
        elif mode == "prefix":
            self._send(200, token + "extra")
        elif mode == "empty":
            self._send(200, b"")
        elif mode == "status":
            self._send(cfg["status"], token)
        elif mode == "close":
            self._abort()
        elif mode == "redirect":
            loc = cfg.get("location") or self.server.owner.url(
                req.path.rstrip("/") + "/redirected?validationToken=" + token)
            self._send(cfg.get("status", 302), token, headers={"Location": loc})
        else:
            raise ValueError("unknown handshake mode %r" % mode)

    def _scripted(self, r):
        if r == "reset":
            r = {"reset": True}
        elif isinstance(r, int):
            r = {"status": r}
        delay = r.get("delay", 0)
        if delay:
            self.server.owner._stopping.wait(delay)
        if r.get("reset"):
            self._abort(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\npart")
            return
        self._send(r.get("status", 200), r.get("body", b"ok"), headers=r.get("headers"))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Receiver:
    """A callback receiver on 127.0.0.1 (or `host`), HTTPS by default, running in a thread.

    handshake(path, mode=..., **kw) configures the answer to GET ?validationToken= on `path`:
        echo [default] | echo_ws (token padded with whitespace/newlines) | wrong | prefix
        (token + junk) | empty | status (status=N, body is the token) | close (drop the
        connection, no answer) | redirect (302 + Location, body is the token) | sleep (echo after
        seconds=S); delay=S sleeps S seconds before answering in any mode.
    script(path, [resp, ...]) queues answers to POST (and other non-GET) requests on `path`:
        an int status, "reset", or a dict {status, headers, body, delay, reset}; 200 afterwards.
    Every request is recorded (see Request); wait_for() blocks until enough have arrived.
    """

    def __init__(self, tls=True, cert=None, key=None, host="127.0.0.1", pki_=None):
        self.tls = tls
        self.host = host
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests = []
        self._handshakes = {}
        self._scripts = {}
        self._conns = set()
        self._stopping = threading.Event()
        self.tls_failures = []
        ctx = None
        if tls:
            p = pki_ or pki()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert or p.server_cert, key or p.server_key)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._srv = _RecvHTTPServer((host, 0), _RecvHandler, self, ctx, fam)
        self.port = self._srv.server_address[1]
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="receiver-%d" % self.port, daemon=True)
        self._thread.start()

    # ---- configuration
    @property
    def base(self):
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d" % ("https" if self.tls else "http", h, self.port)

    def url(self, path="/hook", host=None):
        if host is None:
            return self.base + path
        h = "[%s]" % host if ":" in host and not host.startswith("[") else host
        return "%s://%s:%d%s" % ("https" if self.tls else "http", h, self.port, path)

    def handshake(self, path, mode="echo", **kw):
        cfg = dict(kw)
        cfg["mode"] = mode
        with self._lock:
            self._handshakes[path] = cfg

    def script(self, path, responses):
        with self._lock:
            self._scripts.setdefault(path, collections.deque()).extend(responses)

    # ---- observation
    def requests(self, path=None, method=None, handshake=None):
        with self._lock:
            out = list(self._requests)
        return [r for r in out if (path is None or r.path == path)
                and (method is None or r.method == method)
                and (handshake is None or r.is_handshake == handshake)]

    def handshakes(self, path=None):
        return self.requests(path=path, handshake=True)

    def count(self, path=None, method=None, handshake=None):
        return len(self.requests(path, method, handshake))

    def clear(self):
        with self._lock:
            self._requests.clear()
            self.tls_failures.clear()

    def wait_for(self, n, path=None, timeout=10, method=None, handshake=None):
        """Wait until at least `n` matching requests arrived; return them. AssertionError on timeout."""
        deadline = time.monotonic() + timeout * timeout_scale()
        with self._cond:
            while True:
                got = [r for r in self._requests if (path is None or r.path == path)
                       and (method is None or r.method == method)
                       and (handshake is None or r.is_handshake == handshake)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("receiver %s: wanted %d request(s) on %s, got %d: %r"
                                         % (self.base, n, path or "*", len(got), got))
                self._cond.wait(min(left, 0.5))

    def wait_tls_failure(self, timeout=3):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.tls_failures:
                return True
            time.sleep(0.02)
        return bool(self.tls_failures)

    # ---- internals (called from handler threads)
    def _record(self, req):
        with self._cond:
            self._requests.append(req)
            self._cond.notify_all()

    def _tls_failure(self, e):
        with self._lock:
            self.tls_failures.append(repr(e))

    def _handshake_cfg(self, path):
        with self._lock:
            return dict(self._handshakes.get(path, {"mode": "echo"}))

    def _next_response(self, path):
        with self._lock:
            q = self._scripts.get(path)
            if q:
                return q.popleft()
        return {"status": 200}

    def _track(self, s, add):
        with self._lock:
            if add:
                self._conns.add(s)
            else:
                self._conns.discard(s)

    def stop(self):
        self._stopping.set()
        self._srv.shutdown()
        self._srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    close = stop


# ==================================================================================================
# Server: one kzhook process
# ==================================================================================================

Resp = collections.namedtuple("Resp", "status headers json raw")


def _parse_json(raw):
    if not raw:
        return None
    try:
        return _json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


_LIVE = set()
_LIVE_LOCK = threading.Lock()


# Lines that tools running kzhook write to the same stderr (ASan/UBSan reports, valgrind): their
# own checks fail the test when they report anything.
_FOREIGN_LINE = re.compile(r"^(==\d+==|\s*#\d+ |SUMMARY: |=+$|\S+:\d+:\d+: runtime error)")


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError("repeated key(s) %s" % ", ".join(dup))
    return dict(pairs)


def kill_all():
    """Kill every kzhook process this session started that is still running."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(5)
            except Exception:
                pass


def _pg_admin(url, sql):
    try:
        p = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        return p.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_db_url():
    u = os.environ.get("KZ_TEST_DB", "")
    return u if u.startswith(("postgresql://", "postgres://")) else None


class Server:
    """One `kzhook serve` process on a free loopback port.

    Default arguments (each can be turned off): --listen 127.0.0.1:PORT --db <fresh> --admin-token
    <random> --ca-file <test CA> --allow-private-targets --validation-timeout 1s, then `args`.
      admin_token=True   random token; a str uses that; None passes none (and clears the env var)
      db=None            a fresh SQLite file in the server's directory (or PostgreSQL, see KZ_TEST_DB)
      tls=True           adds --tls-cert/--tls-key (test server certificate); the client uses HTTPS
      defaults=False     passes only `args` (use with env=...); then give port= and admin_token=
    """

    def __init__(self, args=(), env=None, label="server", admin_token=True, db=None, tls=False,
                 ca_file=True, allow_private=True, validation_timeout="1s", defaults=True,
                 port=None, start=True, startup_timeout=10):
        self.dir = new_dir(label)
        self._auto_port = port is None and defaults
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.tls = tls
        self.pki = pki()
        self.extra_args = list(args)
        self.proc = None
        self.runs = 0
        self.harness_stopped = False
        self.startup_timeout = startup_timeout
        self._pg_created = None
        if admin_token is True:
            admin_token = "adm_" + secrets.token_urlsafe(24)
        self.admin_token = admin_token or None
        self.db = db or self._fresh_db()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KZHOOK_")}
        # kzhook counts its allocations; with this set, any still live at exit makes it exit 3
        # and log "allocations live at exit" (docs/STYLE.md rule 7), which stop() and close() report.
        self.env["KZHOOK_CHECK_LEAKS"] = "1"
        self.env.update(env or {})
        a = []
        if defaults:
            a += ["--listen", "%s:%d" % (self.host, self.port), "--db", self.db]
            if self.admin_token:
                a += ["--admin-token", self.admin_token]
            if ca_file:
                a += ["--ca-file", self.pki.ca]
            if allow_private:
                a += ["--allow-private-targets"]
            if validation_timeout:
                a += ["--validation-timeout", validation_timeout]
            if tls:
                a += ["--tls-cert", self.pki.server_cert, "--tls-key", self.pki.server_key]
        self.args = a + self.extra_args
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        if start:
            self.start()

    # ---- database
    def _fresh_db(self):
        base = test_db_url()
        if not base:
            return os.path.join(self.dir, "kz.db")
        name = "kzt_" + secrets.token_hex(6)
        if _pg_admin(base, "CREATE DATABASE %s" % name):
            u = urllib.parse.urlsplit(base)
            self._pg_created = (base, name)
            return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))
        return base

    @property
    def fresh_db(self):
        """False when the database may hold other tests' data (shared PostgreSQL URL)."""
        return not test_db_url() or self._pg_created is not None

    # ---- process control
    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def base_url(self):
        return "%s://%s:%d" % (self.scheme, self.host, self.port)

    def cmd(self):
        return [binary(), "serve"] + self.args

    def start(self):
        """Start the process and wait for GET /healthz → 200. When this harness chose the port and
        something else grabbed it meanwhile (other test runs on the machine), retry on a new one."""
        for attempt in range(3):
            try:
                return self._start_once()
            except RuntimeError as e:
                busy = "in use" in str(e).lower()
                if not (busy and self._auto_port and self.runs == 1 and attempt < 2):
                    raise
                old = "%s:%d" % (self.host, self.port)
                self.port = free_port()
                self.args = [("%s:%d" % (self.host, self.port)) if a == old else a for a in self.args]
                self.runs = 0

    def _start_once(self):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        self.harness_stopped = False
        # keep each run's output separately; stdout_path/stderr_path point at the latest run
        suffix = "" if self.runs == 1 else ".%d" % self.runs
        self.stdout_path = os.path.join(self.dir, "stdout%s.log" % suffix)
        self.stderr_path = os.path.join(self.dir, "stderr%s.log" % suffix)
        with open(os.path.join(self.dir, "cmd%s.txt" % suffix), "w") as f:
            f.write(" ".join(self.cmd()) + "\n")
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(self.cmd(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=self.env, cwd=self.dir, start_new_session=True)
        finally:
            out.close()
            err.close()
        with _LIVE_LOCK:
            _LIVE.add(self.proc)
        self._note("start")
        deadline = time.monotonic() + self.startup_timeout * timeout_scale()
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kzhook exited with %s during startup; stderr:\n%s"
                                   % (self.proc.returncode, self.stderr_tail()))
            try:
                r = self.req("GET", "/healthz", timeout=2)
                if r.status == 200:
                    return self
                last = "status %d" % r.status
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError("kzhook did not answer GET /healthz 200 within %ss (last: %s); stderr:\n%s"
                           % (self.startup_timeout, last, self.stderr_tail()))

    def unexpected_exit(self):
        """A description when the process ended although the harness never stopped it, else None."""
        if self.proc is None or self.harness_stopped or self.proc.poll() is None:
            return None
        rc = self.proc.returncode
        if rc < 0:
            try:
                how = "killed by signal %d (%s)" % (-rc, signal.Signals(-rc).name)
            except ValueError:
                how = "killed by signal %d" % -rc
        else:
            how = "exit status %d" % rc
        return "kzhook pid %d ended on its own or by an outside signal: %s" % (self.proc.pid, how)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _note(self, what):
        """Record process-control actions in <dir>/harness.log (helps explain a server that vanished)."""
        try:
            with open(os.path.join(self.dir, "harness.log"), "a") as f:
                f.write("%.3f %s pid=%s\n" % (time.time(), what, self.proc.pid if self.proc else None))
        except OSError:
            pass

    def stop(self, check=True, timeout=10):
        """SIGTERM; wait; return the exit code. With check, AssertionError unless it exits 0 in time."""
        if self.proc is None:
            return None
        self._note("stop")
        self.harness_stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * timeout_scale())
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError("kzhook did not exit within %ss of SIGTERM" % timeout)
        rc = self.proc.returncode
        if check and rc != 0:
            raise AssertionError("kzhook exited %s after SIGTERM (want 0); stderr:\n%s"
                                 % (rc, self.stderr_tail()))
        self.check_no_live_allocations()
        return rc

    def check_no_live_allocations(self):
        """AssertionError when a graceful exit reported allocations still live, or when any line
        this server wrote to stderr (in any run) is not one JSON object with unique keys."""
        if "allocations live at exit" in self.stderr_text():
            raise AssertionError("kzhook exited with live allocations; stderr:\n%s"
                                 % self.stderr_tail())
        self.check_log_lines()

    def check_log_lines(self):
        """Every stderr line of every run is a JSON object whose keys are unique (log parsers
        drop or overwrite a repeated key). Lines from sanitizers or valgrind are not kzhook's
        log and are left to their own checks."""
        for name in sorted(os.listdir(self.dir)):
            if not name.startswith("stderr"):
                continue
            for line in _read(os.path.join(self.dir, name)).splitlines():
                if not line.strip() or _FOREIGN_LINE.match(line):
                    continue
                try:
                    o = _json.loads(line, object_pairs_hook=_unique_keys)
                except ValueError as e:
                    raise AssertionError("%s: log line is not valid JSON with unique keys (%s): %r"
                                         % (name, e, line[:2000]))
                if not isinstance(o, dict):
                    raise AssertionError("%s: log line is not a JSON object: %r" % (name, line[:2000]))

    def kill9(self):
        self._note("kill9")
        self.harness_stopped = True
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(10)

    def restart(self):
        """Graceful stop (asserting exit 0), then start again on the same port and database."""
        self.stop()
        return self.start()

    def close(self):
        """Cleanup: stop (asserting only that a graceful exit left no live allocations), drop a
        per-server PostgreSQL database."""
        self._note("close")
        if self.proc is not None and self.proc.poll() is not None and not self.harness_stopped:
            self._note("had already exited with %s without a signal from the harness" % self.proc.returncode)
        self.harness_stopped = True
        graceful = False
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(5)
                graceful = True
            except subprocess.TimeoutExpired:
                self.kill9()
            except OSError:
                pass
        if self.proc is not None:
            with _LIVE_LOCK:
                _LIVE.discard(self.proc)
        if self._pg_created and not keep():
            base, name = self._pg_created
            _pg_admin(base, "DROP DATABASE IF EXISTS %s" % name)
            self._pg_created = None
        if graceful:
            self.check_no_live_allocations()

    # ---- output
    def stderr_text(self, run=None):
        return _read(self._path("stderr", run))

    def stdout_text(self, run=None):
        return _read(self._path("stdout", run))

    def _path(self, which, run):
        if run is None:
            return getattr(self, which + "_path")
        return os.path.join(self.dir, "%s%s.log" % (which, "" if run == 1 else ".%d" % run))

    def stderr_tail(self, n=40):
        lines = self.stderr_text().splitlines()
        return "\n".join(lines[-n:])

    def log_records(self, run=None):
        """(records, bad_lines): stderr lines parsed as JSON objects, and the lines that are not."""
        recs, bad = [], []
        for line in self.stderr_text(run).splitlines():
            if not line.strip():
                continue
            try:
                o = _json.loads(line)
            except ValueError:
                bad.append(line)
                continue
            (recs if isinstance(o, dict) else bad).append(o if isinstance(o, dict) else line)
        return recs, bad

    # ---- HTTP client
    def connection(self, timeout=10):
        t = timeout * timeout_scale()
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=t,
                                               context=self.pki.client_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=t)

    def req(self, method, path, json=None, raw=None, headers=None, token=None, admin=False,
            timeout=10, conn=None, check_openapi=True):
        """One request; returns Resp(status, headers (lower-case keys), parsed JSON or None, raw bytes).

        json=  body to serialise (None: no JSON body; send a literal null with raw=b"null");
        raw= bytes as the body; token= sends `accessToken: <token>`;
        admin=True sends `Authorization: Bearer <admin token>`; conn= reuses a connection.
        Every response is checked against docs/openapi.json (openapi_check.py) and a mismatch
        raises AssertionError; check_openapi=False is only for requests that are deliberately
        not HTTP a client would send.
        """
        h = {}
        body = raw
        if json is not None:
            body = _json.dumps(json).encode()
            h["Content-Type"] = "application/json"
        if isinstance(body, str):
            body = body.encode()
        if token is not None:
            h["accessToken"] = token
        if admin:
            h["Authorization"] = "Bearer %s" % self.admin_token
        h.update(headers or {})
        own = conn is None
        c = conn or self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            hd = {k.lower(): v for k, v in r.getheaders()}
            # ---- openapi hook: the response must be the one docs/openapi.json documents. A
            # mismatch seen by a helper thread (whose exception nobody may read) is kept and
            # raised again by this server's next req() on the main thread.
            main = threading.current_thread() is threading.main_thread()
            if main and getattr(self, "_openapi_failure", None):
                failure, self._openapi_failure = self._openapi_failure, None
                raise AssertionError("in a helper thread: %s" % failure)
            if check_openapi:
                try:
                    openapi_check.check_response(method, path, r.status, hd, data)
                except AssertionError as e:
                    if not main:
                        self._openapi_failure = str(e)
                    raise
            # ---- end of openapi hook
            return Resp(r.status, hd, _parse_json(data), data)
        finally:
            if own:
                c.close()

    def admin(self, method, path, json=None, **kw):
        return self.req(method, path, json=json, admin=True, **kw)

    def create_app(self, name=None, objectIds=("*",)):
        """POST /admin/v1/applications; asserts 201; returns the body (dict)."""
        name = name or "app-" + secrets.token_hex(4)
        r = self.admin("POST", "/admin/v1/applications", {"name": name, "objectIds": list(objectIds)})
        if r.status != 201 or not isinstance(r.json, dict):
            raise AssertionError("create_app: %d %r" % (r.status, r.raw[:500]))
        return r.json

    def token_resp(self, app, method="GET", **kw):
        h = {"applicationId": app["applicationId"], "applicationSecret": app["applicationSecret"],
             "refreshToken": app["refreshToken"]}
        return self.req(method, "/v1/accessToken", headers=h, **kw)

    def token(self, app):
        """An access token for `app` (asserts 200)."""
        r = self.token_resp(app)
        if r.status != 200 or not isinstance(r.json, dict) or not r.json.get("accessToken"):
            raise AssertionError("accessToken: %d %r" % (r.status, r.raw[:500]))
        return r.json["accessToken"]

    def app_token(self, objectIds=("*",)):
        app = self.create_app(objectIds=objectIds)
        return app, self.token(app)

    def create_webhook(self, token, body, **kw):
        return self.req("POST", "/v1/webhook", json=body, token=token, **kw)

    def list_webhooks(self, token, query=""):
        r = self.req("GET", "/v1/webhook" + (("?" + query) if query else ""), token=token)
        if r.status != 200 or not isinstance(r.json, dict):
            raise AssertionError("list webhooks: %d %r" % (r.status, r.raw[:500]))
        return r.json["webhooks"]

    def get_webhook(self, token, wid):
        return self.req("GET", "/v1/webhook/" + wid, token=token)

    def healthy(self):
        try:
            r = self.req("GET", "/healthz", timeout=5)
            return r.status == 200 and r.json == {"status": "ok"}
        except (OSError, http.client.HTTPException):
            return False

    def send_early_answer(self, method, path, body, headers=None, token=None, admin=False, timeout=10):
        """Send a request whose body the server may refuse before reading it all (413): the body goes
        out in 64 KiB pieces and sending stops as soon as an answer is readable, so an early answer
        followed by a close is read instead of failing with a connection reset. Returns
        (status or None, headers, body)."""
        h = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body))}
        if token is not None:
            h["accessToken"] = token
        if admin:
            h["Authorization"] = "Bearer %s" % self.admin_token
        h.update(headers or {})
        head = "%s %s HTTP/1.1\r\n%s\r\n" % (method, path, "".join("%s: %s\r\n" % kv for kv in h.items()))
        s = self.raw_socket(timeout)
        try:
            try:
                s.sendall(head.encode("latin-1"))
                for i in range(0, len(body), 65536):
                    if readable(s, 0):
                        break
                    s.sendall(body[i:i + 65536])
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass
            return read_http_response(s, timeout)
        finally:
            s.close()

    def raw_socket(self, timeout=10):
        s = socket.create_connection((self.host, self.port), timeout=timeout * timeout_scale())
        if self.tls:
            s = self.pki.client_context().wrap_socket(s, server_hostname="localhost")
        return s


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def webhook_body(url, objectId="g1", objectType="Group", eventTypes=("TextMessageCreated",), **extra):
    b = {"objectId": objectId, "objectType": objectType, "eventTypes": list(eventTypes), "callBackUrl": url}
    b.update(extra)
    return b


def run_cli(args, env=None, timeout=20, input=None):
    """Run `kzhook <args>`; returns CompletedProcess with text stdout/stderr."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("KZHOOK_")}
    e.update(env or {})
    return subprocess.run([binary()] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=e, timeout=timeout * timeout_scale(), input=input,
                          cwd=new_dir("cli"), universal_newlines=True)


class RawReader:
    """Buffered reader over a raw socket, for reading several (pipelined) responses."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True


def read_http_response(sock, timeout=5):
    """Read one HTTP/1.x response from a raw socket (or a RawReader, which keeps any bytes after the
    response for the next call). Returns (status, headers dict lower-case, body), or
    (None, {}, bytes received) when the peer closed/reset before a complete head."""
    rd = sock if isinstance(sock, RawReader) else RawReader(sock)
    rd.sock.settimeout(timeout * timeout_scale())
    try:
        while b"\r\n\r\n" not in rd.buf:
            if not rd._fill():
                break
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass
    if b"\r\n\r\n" not in rd.buf:
        return None, {}, rd.buf
    head, rest = rd.buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        return None, {}, rd.buf
    hd = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hd[k.strip().lower()] = v.strip()
    rd.buf = rest
    status = int(m.group(1))
    if "chunked" in hd.get("transfer-encoding", "").lower():
        body = b""
        try:
            while True:
                while b"\r\n" not in rd.buf:
                    if not rd._fill():
                        return status, hd, body
                line, rd.buf = rd.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                while len(rd.buf) < size + 2:
                    if not rd._fill():
                        return status, hd, body + rd.buf
                body += rd.buf[:size]
                rd.buf = rd.buf[size + 2:]
                if size == 0:
                    return status, hd, body
        except (ConnectionResetError, BrokenPipeError, socket.timeout, ssl.SSLError):
            return status, hd, body
    n = int(hd.get("content-length", "0") or 0)
    try:
        while len(rd.buf) < n:
            if not rd._fill():
                break
    except (ConnectionResetError, BrokenPipeError, socket.timeout, ssl.SSLError):
        pass
    body, rd.buf = rd.buf[:n], rd.buf[n:]
    return status, hd, body


def readable(sock, timeout=0):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


# ==================================================================================================
# Test case base class
# ==================================================================================================

class TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


class KzTestCase(unittest.TestCase):
    """Base class: per-test timeout (class attribute `timeout`, seconds), resources that are always
    cleaned up, and contract assertions."""

    timeout = 60
    maxDiff = 4000

    def run(self, result=None):
        use_alarm = threading.current_thread() is threading.main_thread()
        if use_alarm:
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, self.timeout * timeout_scale())
        try:
            return super().run(result)
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)

    # ---- resources
    def _register(self, srv):
        if not hasattr(self, "_kz_servers"):
            self._kz_servers = []
        self._kz_servers.append(srv)

    def server(self, *args, **kw):
        """Start a Server (see Server) that is closed when the test ends."""
        kw.setdefault("label", self.id().split(".", 1)[-1])
        kw.setdefault("start", True)
        start = kw.pop("start")
        srv = Server(*args, start=False, **kw)
        self._register(srv)
        self.addCleanup(srv.close)
        if start:
            srv.start()
        return srv

    def receiver(self, **kw):
        r = Receiver(**kw)
        self.addCleanup(r.stop)
        return r

    @classmethod
    def class_server(cls, *args, **kw):
        kw.setdefault("label", cls.__name__)
        srv = Server(*args, **kw)
        cls.addClassCleanup(srv.close)
        if not hasattr(cls, "_kz_class_servers"):
            cls._kz_class_servers = []
        cls._kz_class_servers.append(srv)
        return srv

    @classmethod
    def class_receiver(cls, **kw):
        r = Receiver(**kw)
        cls.addClassCleanup(r.stop)
        return r

    # ---- assertions
    def assertError(self, r, status, code=None, msg=None):
        """The contract's error: status, JSON content type, {message, errorCode, errorCategoryKey}."""
        ctx = "%s; got %d %r" % (msg or "", r.status, r.raw[:300])
        self.assertEqual(r.status, status, ctx)
        ct = r.headers.get("content-type", "")
        self.assertTrue(ct.lower().startswith("application/json"), "Content-Type %r; %s" % (ct, ctx))
        self.assertIsInstance(r.json, dict, ctx)
        for k in ("message", "errorCode", "errorCategoryKey"):
            self.assertIsInstance(r.json.get(k), str, "field %s; %s" % (k, ctx))
        self.assertTrue(r.json["message"], "empty message; " + ctx)
        if code is not None:
            self.assertEqual(r.json["errorCode"], code, ctx)
        if status == 401:
            cat = "AuthException"
        elif status >= 500:
            cat = "ServerError"
        else:
            cat = "ClientError"
        self.assertEqual(r.json["errorCategoryKey"], cat, ctx)

    def assertStatus(self, r, status, msg=None):
        self.assertEqual(r.status, status, "%s; got %d %r" % (msg or "", r.status, r.raw[:400]))

    def assertJsonOk(self, r, status=200, msg=None):
        self.assertStatus(r, status, msg)
        ct = r.headers.get("content-type", "")
        self.assertTrue(ct.lower().startswith("application/json"), "Content-Type %r" % ct)
        self.assertIsNotNone(r.json, "body is not JSON: %r" % r.raw[:300])
        return r.json

    def assertWebhookShape(self, w):
        self.assertIsInstance(w, dict)
        missing = WEBHOOK_FIELDS - set(w)
        self.assertFalse(missing, "webhook object lacks %s: %r" % (sorted(missing), w))
        self.assertIsInstance(w["id"], str)
        self.assertIsInstance(w["events"], list)
        self.assertEqual(w["filters"], [])
        self.assertIsInstance(w["ts"], int)
        self.assertIsInstance(w["validity"], int)
        self.assertIsInstance(w["active"], bool)
