#!/usr/bin/env python3
"""Black-box integration tests for kzhook.

    python3 tests/integration/run.py --binary build/kzhook [-k PATTERN ...] [--keep] [-v]

Discovers tests/integration/test_*.py (unittest), runs them against the binary and prints, as the
very last line, `integration: N passed, N failed`. Exit status 0 only when nothing failed.

  -k PATTERN   run only tests whose id (module.Class.test_name) contains PATTERN (a glob when it
               contains *); may be repeated
  --keep       keep the scratch directory (server logs, databases, PKI) and print its path
  --timeout-scale F   multiply every per-test timeout (slow builds, valgrind)
  --max-time S        hard limit for the whole run (default 900 s)

Environment: KZ_TEST_DB=postgresql://... runs every server against PostgreSQL (see kzlib.py).
"""

import argparse
import os
import sys
import tempfile
import threading
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


class Result(unittest.TestResult):
    def __init__(self, stream, verbose):
        super().__init__()
        self.stream = stream
        self.verbose = verbose
        self.passed = 0
        self._t0 = {}
        self.durations = []

    def _line(self, test, word, extra=""):
        dt = time.monotonic() - self._t0.get(test, time.monotonic())
        self.durations.append((dt, test.id()))
        self.stream.write("%-5s %6.2fs  %s%s\n" % (word, dt, test.id(), extra))
        self.stream.flush()

    def startTest(self, test):
        super().startTest(test)
        self._t0[test] = time.monotonic()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        self._line(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line(test, "FAIL")
        self._report(test, err)

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._line(test, "ERROR")
        else:  # setUpClass/tearDownClass/module fixtures
            self.stream.write("ERROR         %s\n" % test)
        self._report(test, err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line(test, "skip", "  (%s)" % reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1
        self._line(test, "ok", "  (expected failure)")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._line(test, "FAIL", "  (unexpected success)")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.stream.write("  subtest failed: %s\n" % subtest)
            self._report(subtest, err, logs=False)

    def _report(self, test, err, logs=True):
        w = self.stream.write
        w("".join(traceback.format_exception(*err)) if self.verbose
          else "".join(traceback.format_exception_only(err[0], err[1])))
        if not logs:
            return
        servers = list(getattr(test, "_kz_servers", [])) + list(
            getattr(type(test), "_kz_class_servers", []) if isinstance(test, unittest.TestCase) else [])
        for s in servers:
            try:
                gone = s.unexpected_exit()
                if gone:
                    w("  !!! %s\n" % gone)
                w("  --- server %s, stderr tail:\n" % s.dir)
                for ln in s.stderr_tail(15).splitlines():
                    w("  | %s\n" % ln[:400])
            except Exception:
                pass
        self.stream.flush()

    @property
    def failed(self):
        return len(self.failures) + len(self.errors) + len(self.unexpectedSuccesses)


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "kzhook"))
    ap.add_argument("-k", dest="patterns", action="append", default=[])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="full tracebacks")
    ap.add_argument("--failfast", action="store_true")
    ap.add_argument("--timeout-scale", type=float, default=float(os.environ.get("KZ_TIMEOUT_SCALE", "1")))
    ap.add_argument("--max-time", type=float, default=900)
    ap.add_argument("--list", action="store_true", help="list the selected tests and exit")
    a = ap.parse_args()

    binary = os.path.abspath(a.binary)
    tmp = tempfile.mkdtemp(prefix="kzhook-it-")
    os.environ["KZ_BINARY"] = binary
    os.environ["KZ_TMP"] = tmp
    os.environ["KZ_KEEP"] = "1" if a.keep else "0"
    os.environ["KZ_TIMEOUT_SCALE"] = str(max(1.0, a.timeout_scale))
    sys.path.insert(0, HERE)
    import kzlib  # noqa: E402  (after the environment is set)

    loader = unittest.TestLoader()
    if a.patterns:
        loader.testNamePatterns = [p if "*" in p else "*%s*" % p for p in a.patterns]
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = list(iter_tests(suite))
    # import errors show up as _FailedTest; they must count as failures
    if a.list:
        for t in tests:
            print(t.id())
        return 0

    out = sys.stdout
    if not tests:
        out.write("no tests selected\n")
        out.write("integration: 0 passed, 0 failed\n")
        return 1
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        out.write("error: kzhook binary %s not found or not executable (run make)\n" % binary)
        out.write("integration: 0 passed, %d failed\n" % len(tests))
        return 1

    result = Result(out, a.verbose)
    result.failfast = a.failfast

    def watchdog():
        out.write("\nerror: the integration run exceeded --max-time %ss; aborting\n" % a.max_time)
        kzlib.kill_all()
        out.write("integration: %d passed, %d failed\n" % (result.passed, result.failed + 1))
        out.flush()
        os._exit(1)

    wd = threading.Timer(a.max_time, watchdog)
    wd.daemon = True
    wd.start()
    t0 = time.monotonic()
    try:
        suite.run(result)
    except KeyboardInterrupt:
        out.write("\ninterrupted\n")
        result.errors.append((None, "interrupted"))
    finally:
        wd.cancel()
        kzlib.kill_all()
    elapsed = time.monotonic() - t0
    slow = sorted(result.durations, reverse=True)[:5]
    out.write("\nslowest: %s\n" % ", ".join("%s %.1fs" % (n.rsplit(".", 1)[-1], d) for d, n in slow))
    if result.skipped:
        out.write("skipped: %d\n" % len(result.skipped))
    if a.keep:
        out.write("kept scratch directory: %s\n" % tmp)
    else:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    out.write("time: %.1fs\n" % elapsed)
    out.write("integration: %d passed, %d failed\n" % (result.passed, result.failed))
    out.flush()
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
