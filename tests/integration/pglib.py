"""PostgreSQL helpers for the multi-node tests (test_multinode.py). Python 3 standard library only;
builds on kzlib (which this module does not change).

  psql(url, sql)                 run one statement with the psql client; (ok, stdout, stderr)
  url_with_db(url, name)         the same server URL naming another database
  shared_db(tc, base)            a fresh database on the server of `base` (KZ_TEST_DB), dropped
                                 when the test ends; returns its URL (pass it to several Servers)
  PrivatePg                      a throw-away server of its own (scripts/pg-test-server.sh) that a
                                 test may stop, start and restart freely
  SlowReceiver                   kzlib.Receiver answering every POST 200 after `delay` seconds
  received_ids(rc, path)         Counter of webhook-id (= eventId) over the POSTs a receiver got
  metric(srv, name)              one value of GET /metrics (0.0 when absent)
  LEASE_ENV                      environment giving kzhook a short lease margin (see below)

The lease of a claimed delivery is `--delivery-timeout` + a margin (60 s by default, see
src/dispatch.c). The tests ask for a short margin through KZHOOK_LEASE_MARGIN; a binary that does
not know the variable ignores it and the tests still pass, only slower (they wait up to
LEASE_WAIT_DEFAULT seconds for expired leases).
"""

import collections
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse

from kzlib import REPO, Receiver, keep, timeout_scale

SCRIPT = os.path.join(REPO, "scripts", "pg-test-server.sh")

LEASE_MARGIN = "5s"
LEASE_ENV = {"KZHOOK_LEASE_MARGIN": LEASE_MARGIN}
# Without a working knob: delivery timeout + 60 s margin + 10 s release sweep + slack.
LEASE_WAIT_DEFAULT = 100


def psql(url, sql, timeout=30):
    """Run `sql` on `url` with psql (ON_ERROR_STOP); returns (ok, stdout, stderr)."""
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGOPTIONS"] = "-c client_min_messages=warning"
    try:
        p = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           universal_newlines=True)
        return p.returncode == 0, p.stdout, p.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, "", repr(e)


def url_with_db(url, name):
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def shared_db(tc, base, prefix="kzmn"):
    """CREATE DATABASE <prefix>_<random> on the server of `base`; dropped at the end of test `tc`
    (register this before starting the Servers that use it, so they are closed first)."""
    name = "%s_%s" % (prefix, secrets.token_hex(6))
    admin = url_with_db(base, "postgres")
    ok, _, err = psql(admin, 'CREATE DATABASE "%s"' % name)
    if not ok:
        raise AssertionError("cannot create database %s on %s: %s" % (name, admin, err.strip()))
    if not keep():
        tc.addCleanup(psql, admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    return url_with_db(base, name)


class PrivatePg:
    """A PostgreSQL server of its own, in a fresh directory under /tmp (the server runs as an
    unprivileged user, so the directory cannot live under the session's private scratch root).

        pg = PrivatePg(); tc.addCleanup(pg.close); url = pg.start(); url2 = pg.createdb("x")
        pg.restart(); pg.stop(); pg.start(); pg.log_tail()
    """

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kzhook-mnpg-")
        os.chmod(self.dir, 0o755)
        self.url = None

    def _run(self, cmd, *extra, timeout=120):
        args = ["sh", SCRIPT, cmd, self.dir] + list(extra)
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout * timeout_scale(), universal_newlines=True)
        if p.returncode != 0:
            raise AssertionError("pg-test-server.sh %s failed (%d): %s\n%s"
                                 % (cmd, p.returncode, p.stderr.strip(), self.log_tail()))
        return p.stdout.strip()

    def start(self):
        self.url = self._run("start")
        return self.url

    def restart(self):
        return self._run("restart")

    def stop(self):
        self._run("stop")

    def createdb(self, name):
        return self._run("createdb", name)

    def running(self):
        return subprocess.run(["sh", SCRIPT, "status", self.dir], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0

    def log_tail(self, n=20):
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def close(self):
        try:
            subprocess.run(["sh", SCRIPT, "stop", self.dir], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if keep():
            print("kept private PostgreSQL directory: %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class SlowReceiver(Receiver):
    """Answers every POST with 200 after `delay` seconds (handshakes are echoed at once)."""

    def __init__(self, delay=0.05, **kw):
        self.delay = delay
        super().__init__(**kw)

    def _next_response(self, path):
        return {"status": 200, "delay": self.delay}


def received_ids(rc, path=None):
    """Counter eventId → number of POSTs received (from the webhook-id header)."""
    return collections.Counter(r.headers.get("webhook-id") for r in rc.requests(path=path, method="POST"))


def metric(srv, name):
    """The value of metric line `name` (e.g. 'kzhook_inflight') on `srv`; 0.0 when absent."""
    r = srv.req("GET", "/metrics", timeout=10)
    if r.status != 200:
        raise AssertionError("GET /metrics: %d %r" % (r.status, r.raw[:200]))
    for line in r.raw.decode("utf-8", "replace").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
