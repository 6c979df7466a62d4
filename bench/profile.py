#!/usr/bin/env python3
"""Runs bench scenarios with `perf record` attached to every kzhook they start, then prints where
kzhook's CPU time went: per thread, and the top functions (inclusive) of each busy thread.

    python3 bench/profile.py --binary build/kzhook --only e2e [--quick] [run.py flags...]
    python3 bench/profile.py --report /tmp/kzprof-XXXX/e2e.perf.data     # summarise again

Needs `perf` with the cpu-clock software event (hardware counters are not required, so this works
in VMs where `perf stat -e instructions` says <not supported>). Samples with DWARF call graphs at
499 Hz; profiles stay in a kzprof-* temporary directory, whose path is printed.
"""
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (bench/run.py)


def perf_script(data, tid=None):
    argv = ["perf", "script", "-i", data, "-F", "tid,ip,sym"]
    if tid:
        argv += ["--tid", str(tid)]
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    for blk in out.split("\n\n"):
        lines = [ln.strip() for ln in blk.strip().split("\n") if ln.strip()]
        if len(lines) < 2:
            continue
        tid_ = lines[0].split()[0]
        syms = []
        for ln in lines[1:]:
            p = ln.split(None, 1)
            syms.append(p[1] if len(p) > 1 else "?")
        yield tid_, syms  # leaf first


def report(data, names=None, top=25):
    names = names or {}
    per_tid = collections.Counter()
    incl = collections.defaultdict(collections.Counter)
    total = 0
    for tid, syms in perf_script(data):
        total += 1
        per_tid[tid] += 1
        seen = set()
        for s in syms:
            s = s.replace(" (inlined)", "")
            if s in seen or s.startswith("0x") or s in ("[unknown]", "?"):
                continue
            seen.add(s)
            incl[tid][s] += 1
    if not total:
        print("no samples in %s" % data)
        return
    print("\n=== %s: %d samples (499 Hz: ~%.1f CPU-seconds)" % (data, total, total / 499.0))
    for tid, n in per_tid.most_common():
        print("  thread %s %-12s %5.1f %%" % (tid, names.get(tid, ""), 100.0 * n / total))
    for tid, n in per_tid.most_common(4):
        if n < total * 0.05:
            continue
        print("\n  -- thread %s %s: top functions, inclusive, %% of all samples" % (tid, names.get(tid, "")))
        for s, c in incl[tid].most_common(top):
            print("     %5.1f %%  %s" % (100.0 * c / total, s[:110]))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--report":
        for d in sys.argv[2:]:
            report(d)
        return 0
    if subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "true"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        print("perf record -e cpu-clock does not work here", file=sys.stderr)
        return 1
    outdir = tempfile.mkdtemp(prefix="kzprof-")
    profiles = []  # (data, {tid: name})
    running = {}   # Kzhook -> perf Popen

    orig_start, orig_stop = run.Kzhook.start, run.Kzhook.stop

    def start(self):
        orig_start(self)
        pid = self.proc.pid
        names = {}
        for t in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
                    names[t] = f.read().strip()
            except OSError:
                pass
        data = os.path.join(outdir, "%s.perf.data" % os.path.basename(self.dir))
        p = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph",
                              "dwarf,32768", "-p", str(pid), "-o", data],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running[id(self)] = p
        profiles.append((data, names))
        time.sleep(0.5)
        return self

    def stop(self, graceful=False):
        p = running.pop(id(self), None)
        if p:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
        orig_stop(self, graceful)

    run.Kzhook.start, run.Kzhook.stop = start, stop
    sys.argv = [sys.argv[0], "--no-save"] + sys.argv[1:]
    rc = run.main()
    for data, names in profiles:
        if os.path.exists(data):
            report(data, names)
    print("\nprofiles kept in %s (perf report -i FILE --children)" % outdir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
