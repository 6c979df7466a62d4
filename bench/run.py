#!/usr/bin/env python3
"""kzhook benchmark driver (stdlib only). See docs/PERFORMANCE.md.

    python3 bench/run.py --binary build/kzhook [--quick] [--only e2e,latency] [--update-docs]
    python3 bench/run.py --binary build/kzhook --pg [--quick]      # PostgreSQL, 1 and 2 nodes

Everything runs on loopback inside a temporary directory: a private nginx (HTTPS receiver with an
arrival log, plus a plain-HTTP `return 200`), wrk for the baselines and the ingest scenario, a
Python open-loop publisher for the latency scenario, a Python slow receiver for isolation, and a
fresh kzhook (own SQLite database) per scenario. With --pg, a private PostgreSQL server
(scripts/pg-test-server.sh, in its own directory under /tmp) and a fresh database per scenario,
shared by one or two kzhook nodes. Every child is stopped on exit, whatever happens.
"""
import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PG_SCRIPT = os.path.join(ROOT, "scripts", "pg-test-server.sh")
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
EVENT_TYPE = "SurveyResponse"

T_START = time.monotonic()


def log(msg):
    sys.stderr.write("[%7.1fs] %s\n" % (time.monotonic() - T_START, msg))
    sys.stderr.flush()


class BenchError(Exception):
    pass


# ==== child processes: always stopped ====

CHILDREN = []  # (name, Popen)


def _descendants(pid):
    """Pids of every live descendant of pid (read from /proc)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def stop_proc(p, sig=signal.SIGTERM, timeout=10.0):
    """Stops one child we started, by pid: sig, wait, then SIGKILL it and what it left behind."""
    if p is None:
        return
    if p.poll() is None:
        kids = _descendants(p.pid)
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                p.kill()
            except ProcessLookupError:
                pass
            p.wait(5)
        for k in kids:  # e.g. nginx workers whose master died
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
    CHILDREN[:] = [c for c in CHILDREN if c[1] is not p]


def spawn(name, argv, **kw):
    p = subprocess.Popen(argv, **kw)
    CHILDREN.append((name, p))
    return p


def stop_all():
    for name, p in list(reversed(CHILDREN)):
        stop_proc(p, timeout=5)


atexit.register(stop_all)


def _on_signal(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


# ==== small helpers ====

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise BenchError("process exited with %s before listening on %d" % (proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError("nothing listens on port %d after %.0fs" % (port, timeout))


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def pct(values, p):
    """Nearest-rank percentile of sorted values; float('inf') entries stand for never-arrived."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for ln in f:
            if ln.startswith("MemTotal:"):
                mem_kb = int(ln.split()[1])
    def ver(argv):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            return r.stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "nginx": ver(["nginx", "-v"]),
        "wrk": ver(["wrk", "--version"]).split(" Copyright")[0],
        "python": platform.python_version(),
    }


def _os_name():
    try:
        with open("/etc/os-release") as f:
            for ln in f:
                if ln.startswith("PRETTY_NAME="):
                    return ln.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def cpu_busy_s():
    """Seconds of CPU time the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    """CPU seconds of this process and every child it has waited for (nginx workers, kzhook, ...)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_idle(limit_s, threshold=0.10):
    """Waits (up to limit_s) until the machine is nearly idle: other work skews every figure."""
    end = time.monotonic() + limit_s
    while True:
        b0 = cpu_busy_s()
        time.sleep(2)
        busy = (cpu_busy_s() - b0) / 2 / os.cpu_count()
        if busy <= threshold:
            return busy
        if time.monotonic() > end:
            log("machine still %.0f %% busy after %.0fs: running anyway" % (100 * busy, limit_s))
            return busy
        log("machine %.0f %% busy with other work: waiting" % (100 * busy))


def fsync_probe(d, n=200):
    """Latency of write(4 KiB) + fdatasync in the work directory: the floor under durable ingest."""
    path = os.path.join(d, "fsync.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    lat = []
    try:
        buf = b"x" * 4096
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, buf, (i % 64) * 4096)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return {"p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3), "max_ms": round(lat[-1], 3)}


def git_sha():
    try:
        sha = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", "src"],
                               stdout=subprocess.PIPE, text=True).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return "nogit", False


# ==== payloads ====

def survey_data(group):
    """The `data` of a Kaizala SurveyResponse (the documented fields of reference §4.4), sized so
    that the delivered envelope is about 600 bytes, like a typical one-question-or-two response."""
    return {
        "actionId": "5f6c1e2a-9b1d-4c43-8f53-2d7a1c0e9b41",
        "groupId": group,
        "responseId": "0c2b7a9e-3f4d-4b8e-a1c6-7d2e9f0a5b13",
        "isUpdateResponse": False,
        "responder": "+15550101",
        "responderName": "B User",
        "responderProfilePic": "",
        "isAnonymous": False,
        "responseDetails": {"responseWithQuestions": [
            {"title": "Shop", "type": "SingleOption", "options": [{"title": "A"}, {"title": "B"}], "answer": ["A"]},
            {"title": "Qty", "type": "Numeric", "options": [], "answer": 4.0}]},
    }


def event(group, event_id):
    return {"eventType": EVENT_TYPE, "groupId": group, "actionId": "5f6c1e2a-9b1d-4c43-8f53-2d7a1c0e9b41",
            "eventId": event_id, "fromUser": "+15550101", "fromUserId": "b7e4d2c1-8a9f-4e3b-9c6d-1f2a3b4c5d6e",
            "fromUserName": "B User", "fromUserProfilePic": "", "data": survey_data(group)}


def envelope(group):
    """What kzhook POSTs for such an event (README "Publishing and delivery"): the baseline-A body."""
    e = event(group, str(uuid.uuid4()))
    return {"subscriptionId": str(uuid.uuid4()), "objectId": group, "objectType": "Group",
            "eventType": EVENT_TYPE, "eventId": e["eventId"], "groupId": group, "data": e["data"],
            "fromUser": e["fromUser"], "fromUserId": e["fromUserId"], "fromUserName": e["fromUserName"],
            "fromUserProfilePic": ""}


def dumps(o):
    return json.dumps(o, separators=(",", ":"))


# ==== TLS material ====

def make_certs(d):
    """A throw-away CA and a server certificate for 127.0.0.1/localhost (EC P-256)."""
    ca_key, ca, key, csr, crt, ext = (os.path.join(d, n) for n in
                                      ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext.cnf"))
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=kzhook bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", crt, "-days", "2", "-extfile", ext])
    return {"ca": ca, "cert": crt, "key": key}


# ==== nginx ====

class Nginx:
    def __init__(self, workdir, name, certs, workers, log_buffer="64k", log_flush="100ms"):
        self.prefix = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        self.https_port, self.http_port = free_port(), free_port()
        self.access_log = os.path.join(self.prefix, "arrivals.log")
        self.conf = os.path.join(self.prefix, "nginx.conf")
        try:
            import pwd
            user = pwd.getpwuid(os.geteuid()).pw_name
        except (ImportError, KeyError):
            user = None
        # As root the workers would drop to `nobody` and could not read the keys in our 0700 temp
        # dir: keep them as the current user. (Not root: nginx ignores `user` with a warning.)
        user_line = ("user %s;" % user) if (user and os.geteuid() == 0) else "# user: not root, unchanged"
        with open(os.path.join(HERE, "nginx.conf.tmpl")) as f:
            t = f.read()
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = min(65536, hard if hard != resource.RLIM_INFINITY else 65536)
        for k, v in {"NOFILE": str(nofile), "WORKER_CONNECTIONS": str(max(1024, nofile - 64)),
                     "USER_LINE": user_line, "WORKERS": str(workers), "PREFIX": self.prefix,
                     "HTTPS_PORT": str(self.https_port), "HTTP_PORT": str(self.http_port),
                     "CERT": certs["cert"], "KEY": certs["key"], "ACCESS_LOG": self.access_log,
                     "LOG_BUFFER": log_buffer, "LOG_FLUSH": log_flush}.items():
            t = t.replace("@@%s@@" % k, v)
        with open(self.conf, "w") as f:
            f.write(t)
        self.proc = None
        self.stderr = None

    def start(self):
        self.stderr = open(os.path.join(self.prefix, "stderr.log"), "ab")
        self.proc = spawn("nginx", ["nginx", "-p", self.prefix, "-c", self.conf],
                          stdout=self.stderr, stderr=self.stderr)
        try:
            wait_port(self.https_port, proc=self.proc)
            wait_port(self.http_port, proc=self.proc)
        except BenchError:
            with open(os.path.join(self.prefix, "error.log"), errors="replace") as f:
                raise BenchError("nginx did not start: " + f.read()[-2000:])

    def stop(self):
        # SIGQUIT: graceful, flushes the buffered access log.
        stop_proc(self.proc, sig=signal.SIGQUIT, timeout=10)
        self.proc = None
        if self.stderr:
            self.stderr.close()
            self.stderr = None

    def url(self, path="/hook"):
        return "https://127.0.0.1:%d%s" % (self.https_port, path)


class Arrivals:
    """Incremental reader of an nginx arrival log ('$msec webhook-id' lines)."""

    def __init__(self, path):
        self.path = path
        self.off = 0
        self.rest = b""

    def skip_to_end(self):
        self.off = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        self.rest = b""

    def read(self):
        """New (time, id) pairs since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return []
        self.off += len(data)
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        self.rest = data[cut:]
        out = []
        for ln in data[:cut].split(b"\n"):
            t, _, wid = ln.partition(b" ")
            if wid:
                out.append((float(t), wid.decode()))
        return out

    def collect(self, want, expected, timeout, idle_timeout=None, unique=True, on_poll=None):
        """Waits until `expected` arrivals whose id satisfies want(id), or timeout seconds, or
        nothing new for idle_timeout seconds. Returns {id: first arrival} (unique) or a list."""
        got = {} if unique else []
        end = time.monotonic() + timeout
        last_new = time.monotonic()
        while True:
            new = 0
            for t, wid in self.read():
                if not want(wid):
                    continue
                new += 1
                if unique:
                    if wid not in got:
                        got[wid] = t
                else:
                    got.append(t)
            now = time.monotonic()
            if new:
                last_new = now
            if on_poll:
                on_poll()
            if len(got) >= expected or now > end:
                return got
            if idle_timeout and now - last_new > idle_timeout:
                return got
            time.sleep(0.05)


# ==== kzhook ====

class Api:
    """Keep-alive JSON client for one thread."""

    def __init__(self, port):
        self.port = port
        self.c = None

    def req(self, method, path, body=None, headers=None, timeout=120):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        data = body if body is None or isinstance(body, bytes) else dumps(body).encode()
        for attempt in (1, 2):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self.c.request(method, path, body=data, headers=h)
                r = self.c.getresponse()
                raw = r.read()
                break
            except (http.client.HTTPException, OSError):
                self.c.close()
                self.c = None
                if attempt == 2:
                    raise
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw.decode(errors="replace")
        return r.status, doc

    def close(self):
        if self.c:
            self.c.close()
            self.c = None


class Kzhook:
    def __init__(self, args, workdir, name, certs, extra=(), db=None):
        self.args = args
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.argv = [args.binary, "serve", "--listen", "127.0.0.1:%d" % self.port,
                     "--db", db or os.path.join(self.dir, "kz.db"), "--admin-token", ADMIN_TOKEN,
                     "--ca-file", certs["ca"], "--allow-private-targets", "--rate-limit", "0"]
        self.argv += list(extra) + list(args.kz_arg or [])
        self.proc = None
        self.local = threading.local()
        self.app = None
        self.token = None

    def start(self):
        self.log = open(os.path.join(self.dir, "stderr.log"), "ab")
        self.proc = spawn("kzhook", self.argv, stdout=self.log, stderr=self.log)
        wait_port(self.port, timeout=20, proc=self.proc)
        return self

    def stop(self, graceful=False):
        # The scenario is over: a delivery backlog may remain; SIGKILL does not wait for it
        # (kzhook is crash-safe by contract), SIGTERM does a clean stop.
        graceful = graceful or self.args.graceful_stop
        stop_proc(self.proc, sig=signal.SIGTERM if graceful else signal.SIGKILL, timeout=60 if graceful else 15)
        self.proc = None
        self.log.close()

    @property
    def api(self):
        a = getattr(self.local, "api", None)
        if a is None:
            a = self.local.api = Api(self.port)
        return a

    def admin(self, method, path, body=None):
        return self.api.req(method, path, body, {"Authorization": "Bearer " + ADMIN_TOKEN})

    def setup_app(self):
        st, doc = self.admin("POST", "/admin/v1/applications", {"name": "bench", "objectIds": ["*"]})
        if st != 201:
            raise BenchError("create application: %s %s" % (st, doc))
        self.app = doc
        st, doc = self.api.req("GET", "/v1/accessToken", None, {
            "applicationId": doc["applicationId"], "applicationSecret": doc["applicationSecret"],
            "refreshToken": doc["refreshToken"]})
        if st != 200:
            raise BenchError("access token: %s %s" % (st, doc))
        self.token = doc["accessToken"]
        return self

    def webhook(self, group, url):
        st, doc = self.api.req("POST", "/v1/webhook", {
            "objectId": group, "objectType": "Group", "eventTypes": [EVENT_TYPE], "callBackUrl": url},
            {"accessToken": self.token})
        if st != 200:
            raise BenchError("create webhook %s: %s %s" % (url, st, doc))
        return doc["webhookId"]

    def webhooks(self, group, urls, parallel=4):
        # at most 4 handshakes of one application run at once (README, "API limits")
        with ThreadPoolExecutor(parallel) as ex:
            return list(ex.map(lambda u: self.webhook(group, u), urls))

    def publish(self, events):
        body = dumps(events).encode()
        for _ in range(600):
            st, doc = self.admin("POST", "/v1/events", body)
            if st == 202:
                return doc
            if st in (429, 503):  # back-pressure: the store queue is full; retry shortly
                time.sleep(0.05)
                continue
            raise BenchError("publish: %s %s" % (st, str(doc)[:300]))
        raise BenchError("publish: still overloaded after 30 s")

    def metrics(self):
        try:
            st, doc = self.api.req("GET", "/metrics", timeout=10)
        except OSError:
            return {}
        out = {}
        if st == 200 and isinstance(doc, str):
            for ln in doc.splitlines():
                if ln and not ln.startswith("#"):
                    k, _, v = ln.rpartition(" ")
                    try:
                        out[k] = float(v)
                    except ValueError:
                        pass
        return out

    def status(self):
        """VmRSS, VmHWM, RssAnon, RssFile in KiB."""
        out = {}
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for ln in f:
                    k, _, v = ln.partition(":")
                    if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads"):
                        out[k] = int(v.split()[0])
        except OSError:
            pass
        return out

    def reset_hwm(self):
        """Resets VmHWM (peak RSS) to the current RSS: `echo 5 > /proc/PID/clear_refs`."""
        try:
            with open("/proc/%d/clear_refs" % self.proc.pid, "w") as f:
                f.write("5")
            return True
        except OSError:
            return False


def publish_batches(kz, group, prefix, n, batch=1000, parallel=2):
    """Publishes events prefix-0..prefix-(n-1) in arrays of `batch` from `parallel` connections.
    `kz` may be a list of nodes: array i goes to node i mod len. Returns (first send, last 202)
    wall-clock times."""
    nodes = kz if isinstance(kz, (list, tuple)) else [kz]
    chunks = [(i, min(n, i + batch)) for i in range(0, n, batch)]

    def one(ch):
        nodes[(ch[0] // batch) % len(nodes)].publish([event(group, "%s-%d" % (prefix, k)) for k in range(*ch)])

    t0 = time.time()
    with ThreadPoolExecutor(parallel) as ex:
        for _ in ex.map(one, chunks):
            pass
    return t0, time.time()


class RssSampler:
    def __init__(self, kz, every=0.1):
        self.kz, self.every = kz, every
        self.peak = {}
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_ev.is_set():
            s = self.kz.status()
            for k, v in s.items():
                if v > self.peak.get(k, 0):
                    self.peak[k] = v
            self.stop_ev.wait(self.every)

    def start(self):
        self.t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        self.t.join()
        return self.peak


# ==== wrk ====

def wrk(url, script, threads, conns, duration, env=None):
    e = dict(os.environ)
    e.update(env or {})
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--timeout", "10s",
            "-s", os.path.join(HERE, script), url]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e,
                       timeout=duration + 60)
    out = r.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if r.returncode or not m:
        raise BenchError("wrk failed (%s):\n%s" % (r.returncode, out))
    total = int(m.group(1))
    secs = float(m.group(2)) * {"s": 1, "ms": 1e-3, "us": 1e-6, "m": 60}.get(m.group(3), 1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    lat = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", out)
    st = re.search(r"KZB_STATUS accepted=(\d+) rejected=(\d+)", out)
    res = {"requests": total, "seconds": round(secs, 3), "rps": round(total / secs, 1),
           "non2xx": int(non2xx.group(1)) if non2xx else 0,
           "socket_errors": sockerr.group(1).strip() if sockerr else None,
           "latency_avg": lat.group(1) if lat else None, "threads": threads, "connections": conns}
    if st:
        res["accepted"], res["rejected"] = int(st.group(1)), int(st.group(2))
    res["ok_per_s"] = round((total - res["non2xx"]) / secs, 1)
    return res


def wrk_split(urls, script, threads, conns, duration, env_for):
    """One wrk per URL, all at once, `conns` connections split evenly over them (several kzhook
    nodes behind no load balancer). env_for(i) gives wrk i's environment. Returns the summed
    figures (seconds = the longest wrk's) and the per-wrk ones under "runs"."""
    per = max(1, conns // len(urls))
    with ThreadPoolExecutor(len(urls)) as ex:
        runs = list(ex.map(lambda i: wrk(urls[i], script, threads, per, duration, env_for(i)), range(len(urls))))
    if len(runs) == 1:
        return runs[0]
    res = {"runs": runs, "seconds": max(w["seconds"] for w in runs), "threads": threads * len(runs),
           "connections": per * len(runs), "latency_avg": " / ".join(str(w["latency_avg"]) for w in runs),
           "socket_errors": "; ".join(w["socket_errors"] for w in runs if w["socket_errors"]) or None}
    for k in ("requests", "non2xx", "accepted", "rejected"):
        if all(k in w for w in runs):
            res[k] = sum(w[k] for w in runs)
    res["rps"] = round(res["requests"] / res["seconds"], 1)
    res["ok_per_s"] = round((res["requests"] - res["non2xx"]) / res["seconds"], 1)
    return res


def sum_metrics(nodes):
    """GET /metrics of every node, summed per series."""
    out = {}
    for kz in nodes:
        for k, v in kz.metrics().items():
            out[k] = out.get(k, 0) + v
    return out


# ==== PostgreSQL ====

def _proc_cpu_s(pid):
    """utime + stime + cutime + cstime of one process (its reaped children included), seconds."""
    with open("/proc/%d/stat" % pid) as f:
        st = f.read()
    v = st[st.rindex(")") + 2:].split()
    return sum(int(x) for x in v[11:15]) / os.sysconf("SC_CLK_TCK")


class PgServer:
    """A private PostgreSQL server (scripts/pg-test-server.sh) in a fresh directory under /tmp,
    mode 0755 (the server runs as an unprivileged user, so not in our 0700 work directory).
    fsync and synchronous_commit are on: a 202 means the events are on disk. stop() removes
    everything; Bench.cleanup() and atexit call it whatever happens."""

    def __init__(self, keep=False):
        self.dir = tempfile.mkdtemp(prefix="kzbench-pg-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.keep = keep
        self.url = None
        atexit.register(self.stop)

    def _sh(self, *argv, timeout=180):
        try:
            r = subprocess.run(["sh", PG_SCRIPT] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError("pg-test-server.sh %s: timed out" % argv[0])
        if r.returncode:
            raise BenchError("pg-test-server.sh %s failed (%d): %s" % (argv[0], r.returncode, r.stderr.strip()[-2000:]))
        return r.stdout.strip()

    def start(self):
        self._sh("start", self.dir)
        self.url = self._sh("url", self.dir)
        return self.url

    def createdb(self, name):
        """Drops `name` when it exists, creates it empty; returns its URL."""
        return self._sh("createdb", self.dir, name)

    def version(self):
        try:
            return run([os.path.join(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"), "postgres"),
                        "--version"]).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    def cpu_s(self):
        """CPU seconds the server used so far: the postmaster (with the backends it reaped) and
        every live backend. pg_ctl daemonizes it, so own_cpu_s() does not see it."""
        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                pid = int(f.readline())
        except (OSError, ValueError):
            return 0.0
        tot = 0.0
        for p in [pid] + _descendants(pid):
            try:
                tot += _proc_cpu_s(p)
            except (OSError, ValueError, IndexError):
                pass
        return tot

    def stop(self):
        if not self.dir:
            return
        d, self.dir = self.dir, None
        try:
            subprocess.run(["sh", PG_SCRIPT, "stop", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=90)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.keep:
            log("kept %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


# ==== the benchmark ====

class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.work = tempfile.mkdtemp(prefix="kzbench-")
        self.results = {"baselines": {}, "scenarios": {}}
        self.certs = None
        self.ngx = None
        self.pg = None
        self.pg_cpu = 0.0
        self.tag = uuid.uuid4().hex[:6]

    def p(self, quick, full):
        return quick if self.quick else full

    def setup(self):
        log("workdir %s" % self.work)
        self.certs = make_certs(self.work)
        self.ngx = Nginx(self.work, "nginx", self.certs, self.args.nginx_workers)
        self.ngx.start()
        self.arr = Arrivals(self.ngx.access_log)
        with open(os.path.join(self.work, "envelope.json"), "w") as f:
            f.write(dumps(envelope("g-baseline")))
        with open(os.path.join(self.work, "event.tmpl"), "w") as f:
            f.write(dumps(event("g-ingest", "@EVENTID@")))
        self.body_bytes = os.path.getsize(os.path.join(self.work, "envelope.json"))
        self.fsync = fsync_probe(self.work)
        log("fdatasync in %s: p50 %.2f ms, p99 %.2f ms" % (self.work, self.fsync["p50_ms"], self.fsync["p99_ms"]))
        log("receiver nginx https:%d http:%d (workers %d), delivery body ~%d bytes"
            % (self.ngx.https_port, self.ngx.http_port, self.args.nginx_workers, self.body_bytes))
        if self.args.pg:
            self.pg = PgServer(self.args.keep)
            log("PostgreSQL in %s: %s" % (self.pg.dir, self.pg.start()))

    def cleanup(self):
        stop_all()
        if self.pg:
            self.pg_cpu = self.pg.cpu_s()
            self.pg.stop()
        if self.args.keep:
            log("kept %s" % self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def kz(self, name, extra=(), db=None, app=True):
        k = Kzhook(self.args, self.work, name, self.certs, extra, db)
        k.start()
        if app:
            k.setup_app()
        return k

    def pg_nodes(self, name, count):
        """`count` kzhook nodes on one fresh PostgreSQL database, distinct ports, same admin
        token; the first creates the application (webhooks are made through it)."""
        db = self.pg.createdb("kzbench")
        nodes = []
        try:
            for i in range(count):
                nodes.append(self.kz("%s-node%d" % (name, i + 1), db=db, app=(i == 0)))
        except BaseException:
            for k in nodes:
                k.stop()
            raise
        return nodes

    def await_webhooks(self, nodes, group, nwh, timeout=15):
        """Webhooks made on nodes[0] reach the other nodes' subscription indexes within about a
        second (LISTEN/NOTIFY plus a once-a-second check): publish a probe event on each other
        node until it matches all `nwh` of them, so that no measured event is dropped unmatched."""
        for i, kz in enumerate(nodes[1:], 2):
            end = time.monotonic() + timeout
            k = 0
            while True:
                doc = kz.publish(event(group, "sync-%s-%d-%d" % (self.tag, i, k)))
                if isinstance(doc, dict) and doc.get("deliveries", 0) >= nwh:
                    break
                if time.monotonic() > end:
                    raise BenchError("node %d still matches %s of %d webhooks after %ds" % (i, doc, nwh, timeout))
                k += 1
                time.sleep(0.1)

    def warm(self, kz, group, webhooks=1, n=64):
        """Publishes n events to `group` in one array and waits for them: opens kzhook's
        keep-alive connections (up to --per-endpoint-concurrency per webhook) before measuring,
        so steady-state figures do not include TLS connection set-up (scenario 3 measures that)."""
        prefix = "warm-%s-%s" % (group, uuid.uuid4().hex[:6])
        kz.publish([event(group, "%s-%d" % (prefix, k)) for k in range(n)])
        got = self.arr.collect(lambda w: w.startswith(prefix + "-"), n * webhooks, timeout=30, unique=False)
        if len(got) < n * webhooks:
            log("warm-up: only %d/%d arrived" % (len(got), n * webhooks))

    # ---- baselines ----
    def baselines(self):
        d = self.p(2, 10)
        env = {"KZB_BODY_FILE": os.path.join(self.work, "envelope.json"), "KZB_WEBHOOK_ID": "baselineA"}
        a = wrk(self.ngx.url("/hook/baseline"), "post.lua", 1, self.args.per_endpoint_concurrency, d, env)
        self.arr.skip_to_end()
        log("baseline A (HTTPS nginx, %d keep-alive conns): %.0f req/s" % (a["connections"], a["rps"]))
        env = {"KZB_BODY_FILE": os.path.join(self.work, "event.tmpl"), "KZB_WEBHOOK_ID": ""}
        b = wrk("http://127.0.0.1:%d/" % self.ngx.http_port, "post.lua", self.args.wrk_threads,
                self.args.ingest_conns, d, env)
        log("baseline B (plain HTTP nginx return 200, %d conns): %.0f req/s" % (b["connections"], b["rps"]))
        self.results["baselines"] = {"A": a, "B": b}

    # ---- 1. end-to-end throughput ----
    def s_e2e(self):
        n = self.args.e2e_events or self.p(10000, 100000)
        kz = self.kz("e2e")
        try:
            r = self.e2e_on([kz], "g-e2e", "/hook/e2e", "e2e-%s" % self.tag, n)
        finally:
            kz.stop()
        log("e2e: %d/%d arrived, %.0f deliveries/s (%.2f x A); publishing took %.1fs"
            % (r["arrived"], n, r["deliveries_per_s"], r["ratio_to_A"] or 0, r["publish_s"]))
        self.results["scenarios"]["e2e"] = r

    def e2e_on(self, nodes, group, path, prefix, n):
        """n events to one webhook in arrays of 1000, spread over `nodes` (2 connections per
        node); deliveries/s from the receiver's log. The webhook is made on nodes[0]."""
        nodes[0].webhook(group, self.ngx.url(path))
        self.await_webhooks(nodes, group, 1)
        for kz in nodes:
            self.warm(kz, group)
        self.arr.skip_to_end()
        cpu0 = sum(_proc_cpu_s(kz.proc.pid) for kz in nodes)
        holder = {}
        th = threading.Thread(target=lambda: holder.update(
            t=publish_batches(nodes, group, prefix, n, parallel=2 * len(nodes))))
        th.start()
        got = self.arr.collect(lambda w: w.startswith(prefix + "-"), n, timeout=self.p(60, 600), idle_timeout=20)
        th.join()
        cpu1 = sum(_proc_cpu_s(kz.proc.pid) for kz in nodes)
        t_pub0, t_pub1 = holder.get("t", (0, 0))
        m = sum_metrics(nodes)
        times = sorted(got.values())
        span = times[-1] - times[0] if len(times) > 1 else 0
        rate = (len(times) - 1) / span if span > 0 else 0
        a = self.results["baselines"]["A"]["rps"]
        r = {"events": n, "arrived": len(times), "deliveries_per_s": round(rate, 1),
             "first_to_last_s": round(span, 3), "publish_s": round(t_pub1 - t_pub0, 3),
             "publish_events_per_s": round(n / (t_pub1 - t_pub0), 1) if t_pub1 > t_pub0 else None,
             "publish_to_last_arrival_s": round(times[-1] - t_pub0, 3) if times else None,
             # how far deliveries trail the publishers: 0 would mean they kept pace exactly
             "last_publish_to_last_arrival_s": round(times[-1] - t_pub1, 3) if times else None,
             "ratio_to_A": round(rate / a, 3) if a else None,
             "failed_attempts": m.get('kzhook_deliveries_total{outcome="failed"}'),
             # kzhook's own CPU (user + system, all threads) per delivery, publishing included:
             # the cost, which a busy or throttled machine changes far less than the rate
             "cpu_us_per_delivery": round((cpu1 - cpu0) * 1e6 / len(times), 1) if times else None,
             "handoff": m.get('kzhook_handoff_total{result="taken"}'),
             "handoff_returned": m.get('kzhook_handoff_total{result="returned"}')}
        if len(nodes) > 1:
            r["nodes"] = len(nodes)
        return r

    # ---- 2. ingest ----
    def s_ingest(self):
        d = self.args.ingest_seconds or self.p(3, 15)
        out = {}
        for nwh in (1, 10):
            kz = self.kz("ingest%d" % nwh)
            try:
                r = self.ingest_on([kz], nwh, "ing%d-%s" % (nwh, self.tag), d, follow=nwh == 1)
            finally:
                kz.stop()
            log("ingest (%d webhook%s): %.0f events/s (%.2f x B), %d rejected"
                % (nwh, "s" if nwh > 1 else "", r["events_per_s"], r["ratio_to_B"] or 0, r["rejected"]))
            out["webhooks_%d" % nwh] = r
        self.results["scenarios"]["ingest"] = out

    def ingest_on(self, nodes, nwh, prefix, d, follow=False):
        """wrk POSTing single events to /v1/events for d seconds, --ingest-conns connections split
        over `nodes` (one wrk each, concurrently), with nwh matching webhooks made on nodes[0];
        only 202s count. follow: then watch the receiver until every accepted event arrived (one
        webhook: arrivals are counted per eventId), to tell whether deliveries kept up."""
        b = self.results["baselines"]["B"]["rps"]
        nodes[0].webhooks("g-ingest", [self.ngx.url("/hook/ingest/%d" % i) for i in range(nwh)])
        self.await_webhooks(nodes, "g-ingest", nwh)
        for kz in nodes:
            self.warm(kz, "g-ingest", nwh)
        base = {"KZB_BODY_FILE": os.path.join(self.work, "event.tmpl"), "KZB_TOKEN": ADMIN_TOKEN}
        env_for = lambda i: dict(base, KZB_PREFIX=prefix if len(nodes) == 1 else "%s-n%d" % (prefix, i + 1))
        self.arr.skip_to_end()
        cpu0 = sum(_proc_cpu_s(kz.proc.pid) for kz in nodes)
        t0 = time.time()
        w = wrk_split(["http://127.0.0.1:%d/v1/events" % kz.port for kz in nodes], "events.lua",
                      self.args.wrk_threads, self.args.ingest_conns, d, env_for)
        t1 = time.time()
        cpu1 = sum(_proc_cpu_s(kz.proc.pid) for kz in nodes)
        m = sum_metrics(nodes)
        acc = w.get("accepted", w["requests"] - w["non2xx"])
        eps = acc / w["seconds"]
        r = {"webhooks": nwh, "events_per_s": round(eps, 1), "ratio_to_B": round(eps / b, 3) if b else None,
             "requests": w["requests"], "accepted": acc, "rejected": w.get("rejected", w["non2xx"]),
             "connections": w["connections"], "wrk_latency_avg": w["latency_avg"], "socket_errors": w["socket_errors"],
             "deliveries_succeeded_meanwhile": m.get('kzhook_deliveries_total{outcome="succeeded"}'),
             "store_batches": m.get("kzhook_store_batches_total"),
             # kzhook's CPU during the load per event accepted (the deliveries made meanwhile
             # included)
             "cpu_us_per_event": round((cpu1 - cpu0) * 1e6 / acc, 1) if acc else None,
             "handoff": m.get('kzhook_handoff_total{result="taken"}'),
             "handoff_returned": m.get('kzhook_handoff_total{result="returned"}')}
        if r["store_batches"]:
            r["events_per_commit"] = round(m.get("kzhook_events_accepted_total", 0) / r["store_batches"], 1)
        if len(nodes) > 1:
            r["nodes"] = len(nodes)
            r["wrk_per_node"] = [{"events_per_s": round(x.get("accepted", 0) / x["seconds"], 1),
                                  "connections": x["connections"]} for x in w["runs"]]
        if follow:
            got = self.arr.collect(lambda x: x.startswith(prefix + "-"), acc, timeout=self.p(60, 600), idle_timeout=20)
            times = sorted(got.values())
            cpu2 = sum(_proc_cpu_s(kz.proc.pid) for kz in nodes)
            during = sum(1 for t in times if t <= t1)
            # wrk does not count the responses still in flight when it stops, so a few more events
            # than `acc` may have been accepted (and may arrive)
            r.update({"load_s": round(t1 - t0, 3), "arrived": len(times), "all_arrived": len(times) >= acc,
                      "delivered_during_load": during,
                      "delivered_during_load_pct": round(100.0 * during / max(acc, len(times)), 1) if acc else None,
                      "deliveries_per_s_during_load": round(during / (t1 - t0), 1),
                      "end_of_load_to_last_arrival_s": round(times[-1] - t1, 3) if times else None,
                      # kzhook's CPU from the start of the load until every event was delivered,
                      # per event: unlike cpu_us_per_event, the same work whatever share of the
                      # deliveries kept up during the load
                      "cpu_us_per_event_delivered": round((cpu2 - cpu0) * 1e6 / acc, 1)
                      if acc and len(times) >= acc else None})
        return r

    # ---- PostgreSQL: 1 and 2 nodes on one database ----
    def s_pg_ingest(self):
        d = self.args.ingest_seconds or self.p(3, 15)
        out = {}
        for nn in (1, 2):
            nodes = self.pg_nodes("pg-ingest%d" % nn, nn)
            try:
                r = self.ingest_on(nodes, 1, "pging%d-%s" % (nn, self.tag), d, follow=True)
            finally:
                for kz in nodes:
                    kz.stop()
            r["nodes"] = nn
            log("PG ingest, %d node%s: %.0f events/s (%.2f x B), %d rejected; %.0f %% delivered during the load "
                "(%.0f/s), %d/%d in all, last %.1fs after it"
                % (nn, "s" if nn > 1 else "", r["events_per_s"], r["ratio_to_B"] or 0, r["rejected"],
                   r["delivered_during_load_pct"] or 0, r["deliveries_per_s_during_load"], r["arrived"],
                   r["accepted"], r["end_of_load_to_last_arrival_s"] or -1))
            out["nodes_%d" % nn] = r
        self.results["scenarios"]["pg_ingest"] = out

    def s_pg_e2e(self):
        n = self.args.e2e_events or self.p(10000, 100000)
        out = {}
        for nn in (1, 2):
            nodes = self.pg_nodes("pg-e2e%d" % nn, nn)
            try:
                r = self.e2e_on(nodes, "g-e2e", "/hook/pg-e2e", "pge2e%d-%s" % (nn, self.tag), n)
            finally:
                for kz in nodes:
                    kz.stop()
            r["nodes"] = nn
            r["all_arrived"] = r["arrived"] >= n
            log("PG e2e, %d node%s: %d/%d arrived, %.0f deliveries/s (%.2f x A); published in %.1fs "
                "(%.0f ev/s), last arrival %.1fs after the last publish"
                % (nn, "s" if nn > 1 else "", r["arrived"], n, r["deliveries_per_s"], r["ratio_to_A"] or 0,
                   r["publish_s"], r["publish_events_per_s"] or 0, r["last_publish_to_last_arrival_s"] or -1))
            out["nodes_%d" % nn] = r
        self.results["scenarios"]["pg_e2e"] = out

    # ---- 3. fan-out ----
    def s_fanout(self):
        nwh = 1000
        reps = self.p(2, 4)
        kz = self.kz("fanout")
        try:
            t = time.monotonic()
            kz.webhooks("g-fan", [self.ngx.url("/hook/fan/%d" % i) for i in range(nwh)], parallel=4)
            create_s = time.monotonic() - t
            log("fan-out: %d webhooks created in %.1fs" % (nwh, create_s))
            runs = []
            for rep in range(reps):
                eid = "fan-%s-%d" % (self.tag, rep)
                self.arr.skip_to_end()
                t0 = time.time()
                doc = kz.publish(event("g-fan", eid))
                t_ack = time.time()
                got = self.arr.collect(lambda w: w == eid, nwh, timeout=60, unique=False)
                got.sort()
                runs.append({"deliveries": doc.get("deliveries") if isinstance(doc, dict) else None,
                             "arrived": len(got), "ack_ms": round((t_ack - t0) * 1000, 1),
                             "first_ms": round((got[0] - t0) * 1000, 1) if got else None,
                             "last_ms": round((got[-1] - t0) * 1000, 1) if got else None})
                log("fan-out run %d: %d/%d arrived, 202 after %.1f ms, first %.1f ms, last %.1f ms"
                    % (rep, len(got), nwh, runs[-1]["ack_ms"], runs[-1]["first_ms"] or -1, runs[-1]["last_ms"] or -1))
        finally:
            kz.stop()
        ok = [r for r in runs if r["last_ms"] is not None and r["arrived"] >= nwh]
        warm = [r["last_ms"] for r in ok if r is not runs[0]]
        self.results["scenarios"]["fanout"] = {
            "webhooks": nwh, "create_s": round(create_s, 2), "runs": runs,
            # run 0 opens a TLS connection to each of the 1000 endpoints; later runs reuse them
            "cold_publish_to_last_ms": runs[0]["last_ms"] if runs and runs[0] in ok else None,
            "warm_publish_to_last_ms_median": statistics.median(warm) if warm else None,
            "complete": len(ok) == reps}

    # ---- 4. latency ----
    def s_latency(self):
        dur = self.p(5, 20)
        out = {}
        for rate in self.args.rates:
            kz = self.kz("lat%d" % rate)
            try:
                kz.webhook("g-lat", self.ngx.url("/hook/lat"))
                self.warm(kz, "g-lat")
                prefix = "lat%d-%s" % (rate, self.tag)
                tmpl = os.path.join(self.work, "lat.tmpl")
                with open(tmpl, "w") as f:
                    f.write(dumps(event("g-lat", "@EVENTID@")))
                nprocs = max(1, min(4, (rate + 3999) // 4000))
                t0 = time.time() + 0.5
                self.arr.skip_to_end()
                procs, outs = [], []
                for i in range(nprocs):
                    o = os.path.join(self.work, "lat%d-%d.txt" % (rate, i))
                    outs.append(o)
                    procs.append(spawn("openloop", [
                        sys.executable, os.path.join(HERE, "openloop.py"), "--port", str(kz.port),
                        "--token", ADMIN_TOKEN, "--rate", str(rate), "--duration", str(dur), "--t0", repr(t0),
                        "--index", str(i), "--nprocs", str(nprocs), "--prefix", prefix, "--body-file", tmpl,
                        "--max-conns", "512", "--init-conns", str(max(4, rate // 500 // nprocs)),
                        "--out", o]))
                total = int(rate * dur)
                got = self.arr.collect(lambda w: w.startswith(prefix + "-"), total,
                                       timeout=dur + 0.5 + self.p(5, 30), idle_timeout=None)
                for pr in procs:
                    try:
                        pr.wait(60)
                    except subprocess.TimeoutExpired:
                        pass
                    stop_proc(pr)
            finally:
                kz.stop()
            sent = {}
            status_bad = 0
            for o in outs:
                with open(o) as f:
                    for ln in f:
                        eid, intended, actual, ack, status = ln.split()
                        sent[eid] = (float(intended), float(actual), float(ack), int(status))
                        if int(status) != 202:
                            status_bad += 1
            lat_i, lat_a, acks, lags = [], [], [], []
            for eid, (ti, ta, tk, s) in sent.items():
                if s != 202:
                    continue
                arr = got.get(eid)
                lat_i.append((arr - ti) * 1000 if arr is not None else float("inf"))
                lat_a.append((arr - ta) * 1000 if arr is not None else float("inf"))
                acks.append((tk - ta) * 1000)
                lags.append((ta - ti) * 1000)
            for v in (lat_i, lat_a, acks, lags):
                v.sort()
            first = min((v[0] for v in sent.values()), default=0)
            last = max((v[1] for v in sent.values()), default=0)
            r = {"rate": rate, "seconds": dur, "scheduled": total, "sent": len(sent),
                 "achieved_rate": round(len(sent) / (last - first), 1) if last > first else None,
                 "not_accepted": status_bad, "arrived": sum(1 for x in lat_i if x != float("inf")),
                 "p50_ms": _r(pct(lat_i, 50)), "p99_ms": _r(pct(lat_i, 99)), "p999_ms": _r(pct(lat_i, 99.9)),
                 "max_ms": _r(lat_i[-1] if lat_i else None),
                 "from_actual_send": {"p50_ms": _r(pct(lat_a, 50)), "p99_ms": _r(pct(lat_a, 99)),
                                      "p999_ms": _r(pct(lat_a, 99.9))},
                 "ack_ms": {"p50": _r(pct(acks, 50)), "p99": _r(pct(acks, 99)), "p999": _r(pct(acks, 99.9))},
                 "send_lag_ms": {"p50": _r(pct(lags, 50)), "p99": _r(pct(lags, 99)), "max": _r(lags[-1] if lags else None)}}
            log("latency @%d/s: sent %d (%.0f/s), arrived %d; publish->arrival p50 %s p99 %s p99.9 %s ms; "
                "202 p50 %s p99 %s ms; sender lag p99 %s ms"
                % (rate, len(sent), r["achieved_rate"] or 0, r["arrived"], r["p50_ms"], r["p99_ms"], r["p999_ms"],
                   r["ack_ms"]["p50"], r["ack_ms"]["p99"], r["send_lag_ms"]["p99"]))
            out[str(rate)] = r
        self.results["scenarios"]["latency"] = out

    # ---- 5. backlog ----
    def s_backlog(self):
        n = self.args.backlog_events or self.p(100000, 1000000)
        # Retries while the receiver is down: every failed attempt comes back after ~D (±20 %);
        # 31 steps so that nothing can go dead (and disable the webhook) during the outage.
        step = self.p("5s", "20s")
        rx = Nginx(self.work, "nginx-backlog", self.certs, self.args.nginx_workers)
        rx.start()
        arr = Arrivals(rx.access_log)
        kz = self.kz("backlog", ["--retry-schedule", ",".join([step] * 31)])
        try:
            kz.webhook("g-bl", rx.url("/hook/backlog"))
            rx.stop()  # the receiver goes down: connections are refused from now on
            log("backlog: receiver down; publishing %d events in arrays of 1000" % n)
            prefix = "bl-%s" % self.tag
            hwm_reset = kz.reset_hwm()
            smp = RssSampler(kz).start()
            t_pub0, t_pub1 = publish_batches(kz, "g-bl", prefix, n)
            m1 = kz.metrics()
            s1 = kz.status()
            peak1 = smp.stop()
            if hwm_reset:
                peak1["VmHWM"] = s1.get("VmHWM", 0)
            log("backlog: %d queued in %.1fs (%.0f events/s); %d failed attempts meanwhile; RSS %.1f MiB, "
                "peak %.1f MiB" % (n, t_pub1 - t_pub0, n / (t_pub1 - t_pub0),
                                   m1.get('kzhook_deliveries_total{outcome="failed"}', 0),
                                   s1.get("VmRSS", 0) / 1024, max(peak1.get("VmHWM", 0), peak1.get("VmRSS", 0)) / 1024))
            # receiver back up: measure the drain
            hwm_reset = kz.reset_hwm()
            smp = RssSampler(kz).start()
            rx.start()
            t_up = time.time()
            cap = self.args.drain_cap or self.p(8, 900)
            got = arr.collect(lambda w: w.startswith(prefix + "-"), n, timeout=cap, idle_timeout=30)
            t_end = time.time()
            m2 = kz.metrics()
            s2 = kz.status()
            peak2 = smp.stop()
            if hwm_reset:
                peak2["VmHWM"] = s2.get("VmHWM", 0)
        finally:
            kz.stop()
            rx.stop()
        times = sorted(got.values())
        span = times[-1] - times[0] if len(times) > 1 else 0
        rate = (len(times) - 1) / span if span > 0 else 0
        pk = lambda p: round(max(p.get("VmHWM", 0), p.get("VmRSS", 0)) / 1024, 1)
        r = {"events": n, "retry_schedule": "31 x " + step,
             "queue_s": round(t_pub1 - t_pub0, 2), "queue_events_per_s": round(n / (t_pub1 - t_pub0), 1),
             "failed_attempts_while_down": m1.get('kzhook_deliveries_total{outcome="failed"}'),
             "peak_rss_mib_queueing": pk(peak1), "peak_rss_mib_draining": pk(peak2),
             "peak_rss_anon_mib": round(max(peak1.get("RssAnon", 0), peak2.get("RssAnon", 0)) / 1024, 1),
             "peak_rss_file_mib": round(max(peak1.get("RssFile", 0), peak2.get("RssFile", 0)) / 1024, 1),
             "hwm_reset_between_phases": bool(hwm_reset),
             "drained": len(times), "drain_complete": len(times) >= n,
             "drain_deliveries_per_s": round(rate, 1),
             "receiver_up_to_first_s": round(times[0] - t_up, 2) if times else None,
             "receiver_up_to_last_s": round(times[-1] - t_up, 2) if times else None,
             "observed_s": round(t_end - t_up, 1),
             "dead": m2.get('kzhook_deliveries_total{outcome="dead"}'),
             "db_mib": round(_du(kz.dir) / 1048576, 1)}
        r["peak_rss_mib"] = max(r["peak_rss_mib_queueing"], r["peak_rss_mib_draining"])
        log("backlog: drained %d/%d at %.0f deliveries/s; peak RSS queueing %.1f MiB, draining %.1f MiB"
            % (len(times), n, rate, r["peak_rss_mib_queueing"], r["peak_rss_mib_draining"]))
        self.results["scenarios"]["backlog"] = r

    # ---- 6. isolation ----
    def s_isolation(self):
        n = self.p(5000, 50000)
        slow_port = free_port()
        slow = spawn("slow-receiver", [sys.executable, os.path.join(HERE, "slow_receiver.py"), "--port",
                                       str(slow_port), "--cert", self.certs["cert"], "--key", self.certs["key"],
                                       "--delay", "5"], stdout=subprocess.DEVNULL)
        kz = None
        try:
            wait_port(slow_port, proc=slow)
            kz = self.kz("isolation")
            kz.webhook("g-iso-solo", self.ngx.url("/hook/iso-solo"))
            self.warm(kz, "g-iso-solo")
            runs = {}
            for phase, group in (("solo", "g-iso-solo"), ("beside_slow", "g-iso-mix")):
                if phase == "beside_slow":
                    kz.webhook(group, self.ngx.url("/hook/iso-fast"))
                    self.warm(kz, group)
                    kz.webhook(group, "https://127.0.0.1:%d/hook/slow" % slow_port)
                prefix = "iso-%s-%s" % (phase, self.tag)
                self.arr.skip_to_end()
                holder = {}
                th = threading.Thread(target=lambda: holder.update(t=publish_batches(kz, group, prefix, n)))
                th.start()
                got = self.arr.collect(lambda w: w.startswith(prefix + "-"), n, timeout=self.p(40, 300), idle_timeout=15)
                th.join()
                times = sorted(got.values())
                span = times[-1] - times[0] if len(times) > 1 else 0
                runs[phase] = {"arrived": len(times), "deliveries_per_s": round((len(times) - 1) / span, 1) if span else 0,
                               "first_to_last_s": round(span, 2)}
                log("isolation %s: fast receiver got %d/%d at %.0f deliveries/s"
                    % (phase, len(times), n, runs[phase]["deliveries_per_s"]))
        finally:
            if kz:
                kz.stop()
            stop_proc(slow)
        solo, mix = runs["solo"]["deliveries_per_s"], runs["beside_slow"]["deliveries_per_s"]
        self.results["scenarios"]["isolation"] = {
            "events": n, "slow_delay_s": 5, **runs,
            "fraction": round(mix / solo, 3) if solo else None,
            "complete": runs["beside_slow"]["arrived"] >= n}


def _r(x):
    if x is None:
        return None
    if x == float("inf"):
        return "inf"
    return round(x, 2)


def _count(n):
    return "%gM" % (n / 1e6) if n >= 1000000 else "%gk" % (n / 1e3)


def _du(d):
    tot = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                tot += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return tot


# ==== report ====

def num(x):
    return float("inf") if x == "inf" else x


def targets(res):
    s, b = res["scenarios"], res["baselines"]
    out = []

    def add(name, value, op, limit, unit, complete=True, note=""):
        if value is None:
            out.append({"target": name, "value": None, "limit": limit, "result": "n/a"})
            return
        v = num(value)
        ok = (v >= limit if op == ">=" else v <= limit) and complete
        out.append({"target": name, "value": value, "op": op, "limit": limit, "unit": unit,
                    "result": "PASS" if ok else "MISS", "note": "" if complete else note})

    if "e2e" in s:
        e = s["e2e"]
        add("e2e deliveries/s / baseline A", e["ratio_to_A"], ">=", 0.5, "x", e["arrived"] >= e["events"],
            "incomplete: %d/%d delivered" % (e["arrived"], e["events"]))
    if "ingest" in s:
        add("durable ingest (1 webhook) / baseline B", s["ingest"]["webhooks_1"]["ratio_to_B"], ">=", 0.3, "x")
    lat = s.get("latency", {})
    if "200" in lat:
        add("p99 publish->arrival @200 ev/s", lat["200"]["p99_ms"], "<=", 5, "ms")
    if "2000" in lat:
        add("p99 publish->arrival @2000 ev/s", lat["2000"]["p99_ms"], "<=", 20, "ms")
    if "backlog" in s:
        bl = s["backlog"]
        name = "peak RSS with %s queued" % _count(bl["events"])
        add(name, bl["peak_rss_mib"], "<=", 64, "MiB")
    if "isolation" in s:
        i = s["isolation"]
        add("isolation (fast beside 5 s-slow / solo)", i["fraction"], ">=", 0.9, "x",
            i["complete"] and i["solo"]["arrived"] >= i["events"],
            "incomplete: %d + %d of %d delivered" % (i["solo"]["arrived"], i["beside_slow"]["arrived"], i["events"]))
    pg2 = s.get("pg_ingest", {}).get("nodes_2")
    if pg2:
        add("PG 2 nodes durable ingest", pg2["events_per_s"], ">=", 20000, "ev/s")
        # keeping up: nearly everything accepted during the load was also delivered during it
        add("PG 2 nodes ingest: delivered by the end of the load", pg2["delivered_during_load_pct"], ">=", 90, "%",
            pg2["all_arrived"], "incomplete: %d/%d delivered" % (pg2["arrived"], pg2["accepted"]))
    return out


def table(res):
    b, s = res["baselines"], res["scenarios"]
    rows = []
    A = b.get("A", {}).get("rps")
    B = b.get("B", {}).get("rps")
    if A:
        rows.append(("Baseline A: wrk -> nginx HTTPS POST (%d conns)" % b["A"]["connections"], "%.0f req/s" % A, ""))
    if B:
        rows.append(("Baseline B: wrk -> nginx plain HTTP return 200 (%d conns)" % b["B"]["connections"],
                     "%.0f req/s" % B, ""))
    if "e2e" in s:
        e = s["e2e"]
        rows.append(("1. e2e: %s events, 1 webhook, deliveries/s at receiver" % _count(e["events"]),
                     "%.0f /s (%d/%d arrived)" % (e["deliveries_per_s"], e["arrived"], e["events"]),
                     "%.2f x A; kzhook CPU %.0f us/delivery" % (e["ratio_to_A"] or 0,
                                                                e.get("cpu_us_per_delivery") or 0)))
    if "ingest" in s:
        for k, v in s["ingest"].items():
            rows.append(("2. ingest: wrk single events, %d matching webhook%s" % (v["webhooks"], "s" if v["webhooks"] > 1 else ""),
                         "%.0f events/s" % v["events_per_s"],
                         "%.2f x B; kzhook CPU %.0f us/event" % (v["ratio_to_B"] or 0,
                                                                  v.get("cpu_us_per_event") or 0)
                         + (" (%.0f until delivered)" % v["cpu_us_per_event_delivered"]
                            if v.get("cpu_us_per_event_delivered") else "")))
    if "fanout" in s:
        f = s["fanout"]
        rows.append(("3. fan-out: 1 event -> %d webhooks, publish -> last arrival" % f["webhooks"],
                     "%s ms warm" % f["warm_publish_to_last_ms_median"],
                     "cold (new connections): %s ms; %d webhooks created in %.1f s"
                     % (f["cold_publish_to_last_ms"], f["webhooks"], f["create_s"])))
    for rate, v in s.get("latency", {}).items():
        rows.append(("4. latency @%s ev/s (%ds): publish -> arrival p50/p99/p99.9" % (rate, v["seconds"]),
                     "%s / %s / %s ms" % (v["p50_ms"], v["p99_ms"], v["p999_ms"]),
                     "sent %.0f/s, arrived %d/%d" % (v["achieved_rate"] or 0, v["arrived"], v["sent"])))
    if "backlog" in s:
        v = s["backlog"]
        rows.append(("5. backlog: %s queued with receiver down; peak RSS queueing / draining" % _count(v["events"]),
                     "%.1f / %.1f MiB" % (v["peak_rss_mib_queueing"], v["peak_rss_mib_draining"]),
                     "queued at %.0f ev/s" % v["queue_events_per_s"]))
        rows.append(("5. backlog: drain rate after the receiver comes back",
                     "%.0f deliveries/s" % v["drain_deliveries_per_s"],
                     "%d/%d in %.0fs%s" % (v["drained"], v["events"], v["observed_s"],
                                           "" if v["drain_complete"] else " (cut)")))
    if "isolation" in s:
        v = s["isolation"]
        rows.append(("6. isolation: fast endpoint beside a 5 s one / solo",
                     "%.0f / %.0f /s" % (v["beside_slow"]["deliveries_per_s"], v["solo"]["deliveries_per_s"]),
                     "%.0f %%" % (100 * (v["fraction"] or 0))))
    for k, v in s.get("pg_ingest", {}).items():
        nn = v["nodes"]
        rows.append(("PG ingest, %d node%s: wrk single events (%s), 1 matching webhook"
                     % (nn, "s" if nn > 1 else "", "%d conns" % v["connections"] if nn == 1 else
                        "%d wrk x %d conns" % (nn, v["connections"] // nn)),
                     "%.0f events/s" % v["events_per_s"],
                     "%.2f x B; %.0f %% delivered during the load (%.0f/s), %s"
                     % (v["ratio_to_B"] or 0, v["delivered_during_load_pct"] or 0, v["deliveries_per_s_during_load"],
                        ("all %d by +%.1f s" % (v["arrived"], max(0, v["end_of_load_to_last_arrival_s"])))
                        if v["all_arrived"] else "only %d/%d arrived" % (v["arrived"], v["accepted"]))))
    for k, v in s.get("pg_e2e", {}).items():
        nn = v["nodes"]
        rows.append(("PG e2e, %d node%s: %s events in arrays of 1000, deliveries/s at receiver"
                     % (nn, "s" if nn > 1 else "", _count(v["events"])),
                     "%.0f /s (%d/%d arrived)" % (v["deliveries_per_s"], v["arrived"], v["events"]),
                     "%.2f x A; published at %.0f ev/s; last arrival %.1f s after the last publish"
                     % (v["ratio_to_A"] or 0, v["publish_events_per_s"] or 0, v["last_publish_to_last_arrival_s"] or -1)))
    return rows


def render(res):
    rows = table(res)
    w0 = max(len(r[0]) for r in rows) if rows else 10
    w1 = max(len(r[1]) for r in rows) if rows else 10
    lines = ["%-*s  %-*s  %s" % (w0, "measure", w1, "value", "ratio / note"), "-" * (w0 + w1 + 30)]
    lines += ["%-*s  %-*s  %s" % (w0, a, w1, b, c) for a, b, c in rows]
    lines.append("")
    for t in res["targets"]:
        if t["result"] == "n/a":
            lines.append("  n/a   %s (not measured)" % t["target"])
        else:
            lines.append("  %-4s  %s: %s %s (target %s %s)%s" % (t["result"], t["target"], t["value"], t["unit"],
                                                              t["op"], t["limit"],
                                                              " -- " + t["note"] if t.get("note") else ""))
    return "\n".join(lines)


def markdown(res):
    m = res["machine"]
    out = ["Run `%s` at %s, kzhook %s%s, mode **%s**." % (res["file"], res["date"], res["git_sha"],
                                                        " (src/ modified)" if res["git_dirty"] else "", res["mode"]),
           "",
           "Machine: %s CPU(s), %s, %.1f GiB RAM, %s, kernel %s; %s; %s; 4 KiB write+fdatasync "
           "p50 %s ms, p99 %s ms." % (
               m["nproc"], m["cpu"], m["ram_gib"], m["os"], m["kernel"], m["nginx"], m["wrk"],
               m.get("fdatasync", {}).get("p50_ms"), m.get("fdatasync", {}).get("p99_ms"))
           + (" Store: %s (private server, fsync and synchronous_commit on; its CPU counts as ours below)."
              % m["postgresql"] if m.get("postgresql") else ""),
           "",
           "Other processes used %.0f %% of the machine's CPU during the run%s." % (
               100 * res["foreign_cpu"]["share_of_machine"],
               " (the figures are skewed by it)" if res["foreign_cpu"]["share_of_machine"] > 0.05 else "")
           + (" The PostgreSQL server used %.0f CPU-seconds in all." % res["postgresql_cpu_s"]
              if "postgresql_cpu_s" in res else ""),
           "", "| measure | value | ratio / note |", "|---|---|---|"]
    for a, b, c in table(res):
        out.append("| %s | %s | %s |" % (a, b, c))
    out += ["", "| target | measured | limit | result |", "|---|---|---|---|"]
    for t in res["targets"]:
        if t["result"] == "n/a":
            out.append("| %s | not measured | | n/a |" % t["target"])
        else:
            out.append("| %s | %s %s | %s %s %s | **%s**%s |" % (t["target"], t["value"], t["unit"], t["op"],
                                                                t["limit"], t["unit"], t["result"],
                                                                " (%s)" % t["note"] if t.get("note") else ""))
    return "\n".join(out)


def update_docs(res, block="bench:results"):
    path = os.path.join(ROOT, "docs", "PERFORMANCE.md")
    begin, end = "<!-- %s:begin -->" % block, "<!-- %s:end -->" % block
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        log("no %s: not updated" % path)
        return
    if begin not in doc or end not in doc:
        log("%s has no %s/%s markers: not updated" % (path, begin, end))
        return
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + begin + "\n" + markdown(res) + "\n" + end + tail)
    log("updated %s" % path)


SCENARIOS = ["e2e", "ingest", "fanout", "latency", "isolation", "backlog"]
PG_SCENARIOS = ["pg_ingest", "pg_e2e"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "kzhook"))
    ap.add_argument("--quick", action="store_true", help="short run (make bench-quick, < 2 min)")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(SCENARIOS)
                    + " (with --pg: " + ",".join(PG_SCENARIOS) + ")")
    ap.add_argument("--pg", action="store_true",
                    help="PostgreSQL mode (make bench-pg): a private server, 1 and 2 kzhook nodes on one database; "
                         "--update-docs then rewrites the bench:pg-results block")
    ap.add_argument("--rates", default="200,2000,10000", help="latency scenario arrival rates, events/s")
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--ingest-conns", type=int, default=64, help="wrk connections: baseline B and ingest")
    ap.add_argument("--per-endpoint-concurrency", type=int, default=8,
                    help="kzhook's default; baseline A uses this many connections")
    ap.add_argument("--backlog-events", type=int, default=0)
    ap.add_argument("--e2e-events", type=int, default=0, help="events of the e2e scenarios (default 10k quick, 100k)")
    ap.add_argument("--ingest-seconds", type=int, default=0, help="wrk duration of the ingest scenarios (3 quick, 15)")
    ap.add_argument("--drain-cap", type=float, default=0, help="max seconds to watch the backlog drain")
    ap.add_argument("--kz-arg", action="append", help="extra kzhook serve flag (repeatable, use --kz-arg=--x=y)")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--update-docs", action="store_true", help="rewrite the results block of docs/PERFORMANCE.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--graceful-stop", action="store_true",
                    help="stop kzhook with SIGTERM, not SIGKILL (for --binary wrappers: valgrind, perf)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait up to SECONDS for the machine to be idle (< 10 %% busy)")
    args = ap.parse_args()
    args.rates = [int(x) for x in args.rates.split(",") if x]
    args.binary = os.path.abspath(args.binary)
    known = PG_SCENARIOS if args.pg else SCENARIOS
    only = [x for x in args.only.split(",") if x] or known
    for x in only:
        if x not in known:
            ap.error("unknown scenario %s%s" % (x, " (with --pg: %s)" % ",".join(PG_SCENARIOS) if args.pg else ""))
    if not os.access(args.binary, os.X_OK):
        ap.error("no kzhook binary at %s (make BUILD=... first)" % args.binary)
    for tool in ("nginx", "wrk", "openssl"):
        if not shutil.which(tool):
            ap.error("%s is not installed (scripts/bootstrap.sh bench)" % tool)
    if args.pg and not os.access(os.path.join(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"), "pg_ctl"),
                                 os.X_OK):
        ap.error("no PostgreSQL server binaries (apt-get install postgresql, or set PG_BIN)")

    if args.wait_idle:
        wait_idle(args.wait_idle)
    busy0, own0, wall0 = cpu_busy_s(), own_cpu_s(), time.monotonic()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    sha, dirty = git_sha()
    now = datetime.datetime.now()
    res = {"date": now.isoformat(timespec="seconds"), "git_sha": sha, "git_dirty": dirty,
           "mode": "quick" if args.quick else "full", "machine": machine(),
           "config": {"nginx_workers": args.nginx_workers, "wrk_threads": args.wrk_threads,
                      "ingest_conns": args.ingest_conns, "per_endpoint_concurrency": args.per_endpoint_concurrency,
                      "kz_args": args.kz_arg or [], "scenarios": only,
                      "store": "postgresql" if args.pg else "sqlite"}}
    bench = Bench(args)
    failed = []
    try:
        bench.setup()
        bench.results.update(res)
        res = bench.results
        res["config"]["delivery_body_bytes"] = bench.body_bytes
        res["machine"]["fdatasync"] = bench.fsync
        if bench.pg:
            res["machine"]["postgresql"] = bench.pg.version()
        bench.baselines()
        for name in only:
            try:
                getattr(bench, "s_" + name)()
            except (BenchError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
                log("scenario %s FAILED: %s: %s" % (name, type(e).__name__, e))
                failed.append(name)
                res["scenarios"][name + "_error"] = "%s: %s" % (type(e).__name__, e)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except BenchError as e:
        log("bench failed: %s" % e)
        return 1
    finally:
        bench.cleanup()
    wall = time.monotonic() - wall0
    # the PostgreSQL server is daemonized (not our waited-for child): count its CPU as ours
    foreign = max(0.0, (cpu_busy_s() - busy0) - (own_cpu_s() - own0) - bench.pg_cpu)
    if bench.pg:
        res["postgresql_cpu_s"] = round(bench.pg_cpu, 1)
    res["foreign_cpu"] = {"core_seconds": round(foreign, 1), "avg_cores": round(foreign / wall, 2),
                          "share_of_machine": round(foreign / wall / os.cpu_count(), 3)}
    res["targets"] = targets(res)
    res["wall_s"] = round(time.monotonic() - T_START, 1)
    res["file"] = "%s-%s%s.json" % (now.strftime("%Y%m%dT%H%M%S"), sha, "-pg" if args.pg else "")
    print(render(res))
    fc = res["foreign_cpu"]
    print("(total %.0fs; other processes used %.0f %% of the machine meanwhile%s)"
          % (res["wall_s"], 100 * fc["share_of_machine"],
             " -- figures are skewed, rerun on an idle machine" if fc["share_of_machine"] > 0.05 else ""))
    if not args.no_save:
        os.makedirs(args.results_dir, exist_ok=True)
        path = os.path.join(args.results_dir, res["file"])
        with open(path + ".tmp", "w") as f:
            json.dump(res, f, indent=2)
        os.replace(path + ".tmp", path)
        log("results: %s" % os.path.relpath(path, ROOT))
    if args.update_docs:
        update_docs(res, "bench:pg-results" if args.pg else "bench:results")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
