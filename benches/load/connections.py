#!/usr/bin/env python3
"""Memory per idle connection, and CPU per refused connection, tenantgate beside nginx.

1. Idle keep-alive connections: N clients each send one request over their connection and
   keep it open; the proxy's resident memory (RSS of its process tree) before and after,
   divided by N. Also without a request (connections that only connected).
2. Refused connections: tenantgate with `max_connections` reached (its slots held by idle
   connections) gets M connection attempts that it refuses before any TLS or HTTP work; its
   CPU time divided by M. For scale, the CPU per connection of M connections that each send
   one request and close, on tenantgate and on nginx.

Each proxy runs with one worker on core 0 (tenantgate: `threads = 1`), the backend and the
clients on core 1, as in harness.py.

Usage: benches/load/connections.py [--connections 10000] [--attempts 20000]
"""

import argparse
import os
import resource
import select
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: shop0.bench.test\r\n\r\n"


def tree_rss_kib(pid):
    return sum(harness.rss_kib(p) for p in harness.tree_pids(pid))


def tree_cpu(pid):
    u, s = harness.tree_cpu_split(pid)
    return u + s


def open_idle(port, n, send):
    """n connections, each (if `send`) after one request whose response was read."""
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if send:
            s.sendall(REQUEST)
            got = b""
            while not got.endswith(b"backend\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"connection {i} closed: {got!r}")
                got += chunk
        conns.append(s)
    return conns


def settle(pid):
    """RSS once it stops moving (the proxy has read what the clients sent), and no sooner than
    3 s: tenantgate gives back the read buffer of a connection quiet for 2 s."""
    time.sleep(float(os.environ.get('SETTLE_S', '3')))
    last = tree_rss_kib(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = tree_rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def attempts(port, m):
    """m connections that the proxy closes without a word; returns how many it refused."""
    refused = 0
    batch = []
    for _ in range(m):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        batch.append(s)
        if len(batch) >= 200:
            refused += drain(batch)
            batch = []
    refused += drain(batch)
    return refused


def drain(batch):
    n = 0
    end = time.time() + 10
    pending = list(batch)
    while pending and time.time() < end:
        _, _, _ = select.select([], pending, [], 0.5)
        r, _, _ = select.select(pending, [], [], 0.5)
        for s in r:
            try:
                if s.recv(1) == b"":
                    n += 1
            except OSError:
                n += 1
            pending.remove(s)
            s.close()
    for s in pending:
        s.close()
    return n


def one_request_each(port, m):
    for _ in range(m):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: shop0.bench.test\r\nConnection: close\r\n\r\n")
        while s.recv(4096):
            pass
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--attempts", type=int, default=20000)
    ap.add_argument("--binary", default=os.path.join(harness.ROOT, "target", "release", "tenantgate"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    d = tempfile.mkdtemp(prefix="tg-conns-")
    backend_port = harness.free_port()
    backend = harness.Proc(harness.backend_conf(d, backend_port), 1, os.path.join(d, "backend.log"), cwd=d)
    hosts = ["shop0.bench.test"]
    rows = {}
    try:
        harness.wait_port(backend_port)
        for name in ["nginx", "tenantgate"]:
            for send in (False, True):
                sub = tempfile.mkdtemp(prefix=f"{name}-", dir=d)
                port = harness.free_port()
                extra = "max_connections = 15000\nmax_connections_per_client = 0\n"
                argv = (harness.nginx_conf(sub, port, backend_port, hosts) if name == "nginx"
                        else harness.tenantgate_conf(sub, port, backend_port, hosts, args.binary, extra=extra))
                proc = harness.Proc(argv, 0, os.path.join(sub, "proc.log"), cwd=sub)
                try:
                    harness.wait_port(port, proc=proc.p)
                    open_idle(port, 50, True)  # warm up: pools, buffers, allocator
                    before = settle(proc.p.pid)
                    print(f"# {name} send={send}", file=sys.stderr, flush=True)
                    conns = open_idle(port, args.connections, send)
                    after = settle(proc.p.pid)
                    rows[(name, send)] = (after - before) * 1024 / args.connections
                    for c in conns:
                        c.close()
                finally:
                    proc.stop()
        # Refused connections: tenantgate's slots held, then attempts.
        sub = tempfile.mkdtemp(prefix="refuse-", dir=d)
        port = harness.free_port()
        extra = "max_connections = 100\nmax_connections_per_client = 0\n"
        proc = harness.Proc(harness.tenantgate_conf(sub, port, backend_port, hosts, args.binary, extra=extra),
                            0, os.path.join(sub, "proc.log"), cwd=sub)
        try:
            harness.wait_port(port, proc=proc.p)
            held = open_idle(port, 100, True)
            time.sleep(0.5)
            c0 = tree_cpu(proc.p.pid)
            refused = attempts(port, args.attempts)
            refused_cpu = (tree_cpu(proc.p.pid) - c0) / max(refused, 1)
            for c in held:
                c.close()
            time.sleep(0.5)
            c0 = tree_cpu(proc.p.pid)
            one_request_each(port, args.attempts // 4)
            served_cpu = (tree_cpu(proc.p.pid) - c0) / (args.attempts // 4)
        finally:
            proc.stop()
        sub = tempfile.mkdtemp(prefix="nginx-served-", dir=d)
        port = harness.free_port()
        proc = harness.Proc(harness.nginx_conf(sub, port, backend_port, hosts), 0, os.path.join(sub, "proc.log"), cwd=sub)
        try:
            harness.wait_port(port, proc=proc.p)
            time.sleep(0.5)
            c0 = tree_cpu(proc.p.pid)
            one_request_each(port, args.attempts // 4)
            nginx_served = (tree_cpu(proc.p.pid) - c0) / (args.attempts // 4)
        finally:
            proc.stop()
    finally:
        backend.stop()
    n = args.connections
    print(f"\nresident memory per connection, {n} connections held open (RSS of the proxy's process tree)\n")
    print("| proxy | connected only | after one request (keep-alive) |")
    print("|---|---:|---:|")
    for name in ["nginx", "tenantgate"]:
        print(f"| {name} | {rows[(name, False)] / 1024:.1f} KiB | {rows[(name, True)] / 1024:.1f} KiB |")
    print(f"\nCPU per connection (proxy process, user+system), {args.attempts} refused attempts\n")
    print("| what | CPU µs per connection |")
    print("|---|---:|")
    print(f"| tenantgate, refused beyond max_connections ({refused} refused) | {refused_cpu * 1e6:.1f} |")
    print(f"| tenantgate, one request then close | {served_cpu * 1e6:.1f} |")
    print(f"| nginx, one request then close | {nginx_served * 1e6:.1f} |")


if __name__ == "__main__":
    main()
