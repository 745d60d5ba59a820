#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: a repeatable figure.

Wall-clock CPU per request (harness.py) varies by ±20% between runs on a shared machine;
instruction counts do not. Each proxy runs as one process under `valgrind --tool=callgrind` (nginx
with `master_process off`, so its single process does the work). After a warm-up the counters are zeroed, N requests
are sent over one keep-alive connection, and the dumped instruction total is divided by N.
The figure covers user space only (the kernel is not instrumented).

`tenantgate-limits` is tenantgate with every limit of its route configured and none reached
(rate, per-client rate, concurrency, body size): the cost of limits on the hot path.
`tenantgate-refused` has a rate of 1 per second: every measured request is answered 429 by
us (the cost of a refusal). `tenantgate-log` has its access log on (to standard error,
which the harness sends to a file): one line per request.

Usage: benches/load/instructions.py [--requests N]
       [--only nginx,pingora-baseline,tenantgate,tenantgate-limits,tenantgate-refused,tenantgate-log]
"""

import argparse
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def send(port, host, n, want=(200,)):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        r.read()
        if r.status not in want:
            raise RuntimeError(f"status {r.status}")
    conn.close()


def ctl(argv):
    r = subprocess.run(["callgrind_control"] + argv, capture_output=True, text=True, timeout=60)
    if "OK" not in r.stdout:
        raise RuntimeError(f"callgrind_control {argv}: {r.stdout}{r.stderr}")


def measured_instructions(d):
    """Sum the Ir totals of every dump named 'measured'."""
    total = 0
    for path in glob.glob(os.path.join(d, "cg.*")):
        with open(path, errors="replace") as f:
            text = f.read()
        if "desc: Trigger: dump measured" not in text:
            continue
        m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
        if m:
            total += int(m.group(1))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--only", default="nginx,pingora-baseline,tenantgate")
    ap.add_argument("--binary", default=os.path.join(harness.ROOT, "target", "release", "tenantgate"))
    ap.add_argument("--baseline", default=os.path.join(harness.ROOT, "target", "release", "examples", "pingora_baseline"))
    args = ap.parse_args()
    for tool in ["valgrind", "callgrind_control", "nginx", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing")

    d = tempfile.mkdtemp(prefix="tg-instr-")
    backend_port = harness.free_port()
    backend = harness.Proc(harness.backend_conf(d, backend_port), 1, os.path.join(d, "backend.log"), cwd=d)
    hosts = ["shop0.bench.test"]
    rows = []
    try:
        harness.wait_port(backend_port)
        for name in args.only.split(","):
            sub = tempfile.mkdtemp(prefix=f"{name}-", dir=d)
            port = harness.free_port()
            argv = {
                "nginx": lambda: harness.nginx_conf(sub, port, backend_port, hosts, master=False),
                "pingora-baseline": lambda: harness.baseline_conf(sub, port, backend_port, hosts, args.baseline),
                "tenantgate": lambda: harness.tenantgate_conf(sub, port, backend_port, hosts, args.binary),
                "tenantgate-limits": lambda: harness.tenantgate_conf(
                    sub, port, backend_port, hosts, args.binary,
                    route_extra=lambda i: harness.NEVER_REACHED_LIMITS),
                "tenantgate-log": lambda: harness.tenantgate_conf(
                    sub, port, backend_port, hosts, args.binary, access_log=True),
                "tenantgate-refused": lambda: harness.tenantgate_conf(
                    sub, port, backend_port, hosts, args.binary,
                    route_extra=lambda i: "[routes.limits]\nrequests_per_second = 1\nburst = 1\n"),
            }[name]()
            vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={sub}/cg.%p.out"]
            proc = harness.Proc(vg + argv, 0, os.path.join(sub, "proc.log"), cwd=sub)
            try:
                harness.wait_port(port, timeout=180, proc=proc.p)
                want = (200, 429) if name == "tenantgate-refused" else (200,)
                send(port, hosts[0], 200, want)
                pid = str(proc.p.pid)
                ctl(["--zero", pid])
                send(port, hosts[0], args.requests, want)
                ctl(["--dump=measured", pid])
                time.sleep(1.0)
                ir = measured_instructions(sub)
                rows.append((name, ir / args.requests))
                print(f"# {name}: {ir / args.requests:.0f} instructions/request", file=sys.stderr, flush=True)
            finally:
                proc.stop()
    finally:
        backend.stop()
    base = next((r[1] for r in rows if r[0] == "nginx"), None)
    print(f"\ncallgrind, {args.requests} requests over one keep-alive connection, user space only\n")
    print("| proxy | instructions / request | × nginx |")
    print("|---|---:|---:|")
    for name, ipr in rows:
        ratio = f"{ipr / base:.2f}" if base else "n/a"
        print(f"| {name} | {ipr:,.0f} | {ratio} |")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
