#!/usr/bin/env python3
"""Noisy neighbour: tenant A flooded far beyond its limit while tenant B is measured.

One tenantgate (one worker, pinned to core 0) serves two tenants on the same backend (nginx,
core 1): A limited to `--limit` requests per second, B unlimited. A probe sends B a steady
`--rate` requests per second over keep-alive connections and records each latency. It runs
twice: with A idle, then while a flooder sends A `--flood` requests per second (50x its
limit by default), every one beyond the limit answered 429 by us. Both clients are asyncio
processes on core 1. Reported:

- B's p50/p99 with A idle and with A flooded (goal: flooded p99 within 10% of idle), and
  with the same flood sent straight to the backend instead (the clients' own share of the
  effect: the machine has two cores);
- the proxy's CPU per request refused with 429 against its CPU per proxied request (goal:
  below), from its user+system time over a phase of each (B's probe subtracted).

Usage: benches/load/neighbour.py [--seconds 15] [--rate 200] [--flood 5000] [--limit 100]
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REQ = "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"


async def one(reader, writer, req):
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return status


async def steady(port, host, rate, seconds, conns):
    """Send `rate` requests a second for `seconds`, spread over `conns` connections; return
    (latencies in ms, statuses)."""
    req = REQ.format(host=host).encode()
    pool = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    lat, statuses = [], {}

    async def fire():
        r, w = await pool.get()
        t0 = time.perf_counter()
        s = await one(r, w, req)
        lat.append((time.perf_counter() - t0) * 1000)
        statuses[s] = statuses.get(s, 0) + 1
        pool.put_nowait((r, w))

    tasks = []
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(fire()))
    await asyncio.gather(*tasks)
    return lat, statuses


def client(port, host, rate, seconds, conns, out):
    """Run `steady` in a process of its own on core 1, writing results to `out`."""
    code = f"""
import asyncio, json, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import neighbour
lat, st = asyncio.run(neighbour.steady({port}, {host!r}, {rate}, {seconds}, {conns}))
json.dump({{"lat": lat, "statuses": st}}, open({out!r}, "w"))
"""
    return subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", code])


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rate", type=int, default=200, help="B's steady requests per second")
    ap.add_argument("--flood", type=int, default=5000, help="A's requests per second")
    ap.add_argument("--limit", type=int, default=100, help="A's requests_per_second")
    ap.add_argument("--binary", default=os.path.join(harness.ROOT, "target", "release", "tenantgate"))
    args = ap.parse_args()
    import json

    d = tempfile.mkdtemp(prefix="tg-neighbour-")
    bport, port = harness.free_port(), harness.free_port()
    backend = harness.Proc(harness.backend_conf(d, bport), 1, os.path.join(d, "backend.log"), cwd=d)
    hosts = ["a.bench.test", "b.bench.test"]
    limits = f"[routes.limits]\nrequests_per_second = {args.limit}\nburst = {args.limit}\n"
    argv = harness.tenantgate_conf(d, port, bport, hosts, args.binary,
                                   route_extra=lambda i: limits if i == 0 else "")
    tg = harness.Proc(argv, 0, os.path.join(d, "tg.log"), cwd=d)
    out = {}
    try:
        harness.wait_port(bport)
        harness.wait_port(port, proc=tg.p)

        def phase(name, flood_host, flood_rate, probe=True, flood_port=None):
            files = {k: os.path.join(d, f"{name}-{k}.json") for k in ("b", "a")}
            cpu0 = sum(harness.tree_cpu_split(tg.p.pid))
            procs = []
            if probe:
                procs.append(("b", client(port, hosts[1], args.rate, args.seconds, 8, files["b"])))
            if flood_host:
                procs.append(("a", client(flood_port or port, flood_host, flood_rate, args.seconds, 16, files["a"])))
            for _, p in procs:
                p.wait()
            cpu = sum(harness.tree_cpu_split(tg.p.pid)) - cpu0
            res = {k: json.load(open(files[k])) for k, _ in procs}
            return res, cpu

        # Warm up both tenants.
        phase("warm", hosts[0], 200)
        time.sleep(1)
        idle, cpu_probe = phase("idle", None, 0)
        time.sleep(1)
        flooded, cpu_flood = phase("flood", hosts[0], args.flood)
        time.sleep(1)
        # The same flood sent straight to the backend, beside the probe: what the clients'
        # own load does to B's latency on this machine, with tenantgate doing nothing for A.
        direct, _ = phase("direct", hosts[0], args.flood, flood_port=bport)
        time.sleep(1)
        # The same rate of proxied requests (B unlimited), without the probe: CPU per proxied.
        proxied, cpu_proxied = phase("proxied", hosts[1], args.flood, probe=False)
        bi, bf, bd = idle["b"]["lat"], flooded["b"]["lat"], direct["b"]["lat"]
        a = flooded["a"]["statuses"]
        refused = a.get("429", 0)
        out = {
            "b_p50_idle": pct(bi, 50), "b_p99_idle": pct(bi, 99),
            "b_p50_flood": pct(bf, 50), "b_p99_flood": pct(bf, 99),
            "b_p50_direct": pct(bd, 50), "b_p99_direct": pct(bd, 99),
            "a_statuses": a, "b_statuses_flood": flooded["b"]["statuses"],
            "cpu_per_refused_us": (cpu_flood - cpu_probe) / max(refused, 1) * 1e6,
            "cpu_per_proxied_us": cpu_proxied / max(sum(proxied["a"]["statuses"].values()), 1) * 1e6,
        }
    finally:
        tg.stop()
        backend.stop()
    print(f"\nB at {args.rate}/s for {args.seconds:.0f} s; A flooded at {args.flood}/s "
          f"against requests_per_second = {args.limit}\n")
    print("| B's latency | A idle | A flooded | flooded / idle | flood sent to the backend instead |")
    print("|---|---:|---:|---:|---:|")
    for p in ("p50", "p99"):
        i, f, x = out[f"b_{p}_idle"], out[f"b_{p}_flood"], out[f"b_{p}_direct"]
        print(f"| {p} | {i:.3f} ms | {f:.3f} ms | {f / i:.2f} | {x:.3f} ms ({x / i:.2f}) |")
    print(f"\nA's answers: {out['a_statuses']}; B's during the flood: {out['b_statuses_flood']}")
    print(f"CPU per refused request: {out['cpu_per_refused_us']:.1f} µs; "
          f"per proxied request: {out['cpu_per_proxied_us']:.1f} µs")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
