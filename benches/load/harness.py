#!/usr/bin/env python3
"""Load harness: tenantgate beside nginx, HAProxy and Caddy, same machine, same run.

Layout on a 2-core machine: the proxy under test alone on core 0 (one worker each); the
backend (an nginx answering a fixed 200) and the load generator (wrk) share core 1.
For each proxy and each scenario it reports requests/s, p50/p99 latency and the proxy's CPU
microseconds per request (utime+stime of the proxy's process tree from /proc, divided by the
requests wrk completed), and each one's ratio to nginx.

Scenarios: `1 route` (one hostname) and `100k hosts` (100,000 hostnames, Host rotated across
them by a wrk Lua script; every proxy gets the same 100k-entry table); any count with
`--scenarios`, e.g. `1,1000000`. `tenantgate-snapshot` (only with `--only`) runs tenantgate as
a fleet proxy that boots its routes from a snapshot file, the way a million tenants arrive.

`--tls h1|h2` runs over TLS 1.3 with h2load (`--connect-to` the proxy, SNI and authority
`shop0.bench.test`, so only the 1-route scenario): `h1` is HTTP/1.1 keep-alive (50
connections), `h2` HTTP/2 (32 connections × 10 streams); nginx and tenantgate only, with the
same self-signed certificate; h2load reports mean latency, not percentiles.
`--body N` makes every request a POST with an N-byte body (`Content-Length`); `--access-log`
turns the access log on in nginx (a JSON `log_format` written with `buffer=64k` to a file)
and tenantgate (its access log to a file); HAProxy and Caddy keep theirs off.

Usage: benches/load/run.sh [--duration S] [--connections N] [--only tenantgate,nginx]
                           [--body BYTES] [--access-log]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TICK = os.sysconf("SC_CLK_TCK")
HOSTS_100K = 100_000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=120.0, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def tree_pids(pid):
    """pid and all its descendants, from one scan of /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        if p not in out:
            out.append(p)
            stack.extend(children.get(p, []))
    return out


def tree_cpu_split(pid):
    """(utime, stime) of pid and all its descendants, in seconds."""
    user = kernel = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        user += int(fields[11])
        kernel += int(fields[12])
    return user / TICK, kernel / TICK


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def parse_latency(text, pct):
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


class Proc:
    def __init__(self, argv, core, log, env=None, cwd=None):
        self.log = open(log, "w")
        self.p = subprocess.Popen(
            ["taskset", "-c", str(core)] + argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait()
        self.log.close()


def hostnames(n):
    # wrk's script (WRK_LUA) builds the same names from their index.
    return [f"shop{i}.bench.test" for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Proxy configurations. Each returns argv (and writes its config into `d`).
# ----------------------------------------------------------------------------------------------

# Set by main() from --access-log: nginx's and tenantgate's access logs go to files.
ACCESS_LOG = False

# Set by main() from --tls: "h1" or "h2" over TLS (and the certificate files), or None.
TLS = None
TLS_FILES = None


def make_cert(d):
    """A self-signed certificate for *.bench.test (openssl), once per run."""
    cert, key = os.path.join(d, "bench.crt"), os.path.join(d, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=shop0.bench.test",
                    "-addext", "subjectAltName=DNS:*.bench.test,DNS:shop0.bench.test",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key

NGINX_JSON_LOG = """
  log_format json escape=json '{"time":"$time_iso8601","client":"$remote_addr","method":"$request_method",'
    '"host":"$host","path":"$uri","version":"$server_protocol","status":$status,'
    '"duration_s":$request_time,"bytes_sent":$body_bytes_sent,"upstream":"$upstream_addr",'
    '"request_id":"$request_id"}';
  access_log %s/%s-access.log json buffer=64k;
"""


def nginx_tls():
    """The listen flags and certificate lines of nginx under --tls."""
    if not TLS:
        return ""
    cert, key = TLS_FILES
    return (" ssl" + (" http2" if TLS == "h2" else "") + f";\n    ssl_certificate {cert};"
            f"\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.3;\n    keepalive_requests 10000000")


def nginx_conf(d, port, backend, hosts, name="nginx", master=True):
    mapfile = os.path.join(d, f"{name}-hosts.map")
    with open(mapfile, "w") as f:
        for h in hosts:
            f.write(f"{h} 1;\n")
    conf = os.path.join(d, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
master_process {"on" if master else "off"};
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 16384; }}
http {{
  {(NGINX_JSON_LOG % (d, name)) if ACCESS_LOG else "access_log off;"}
  map_hash_max_size 262144;
  map_hash_bucket_size 128;
  map $host $tenant {{ default 0; include {mapfile}; }}
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; keepalive_requests 10000000; }}
  # Bodies streamed to the upstream as they arrive, as tenantgate does (and no temp files).
  client_max_body_size 64m; proxy_request_buffering off;
  client_body_temp_path {d}/nginx-body; proxy_temp_path {d}/nginx-proxy;
  fastcgi_temp_path {d}/nginx-fcgi; uwsgi_temp_path {d}/nginx-uwsgi; scgi_temp_path {d}/nginx-scgi;
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096{nginx_tls()};
    location / {{
      if ($tenant = 0) {{ return 404; }}
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-Id $request_id;
    }}
  }}
}}
""")
    return ["nginx", "-c", conf, "-p", d]


def backend_conf(d, port):
    conf = os.path.join(d, "backend.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {d}/backend.pid;
error_log {d}/backend-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {d}/b-body; proxy_temp_path {d}/b-proxy;
  fastcgi_temp_path {d}/b-fcgi; uwsgi_temp_path {d}/b-uwsgi; scgi_temp_path {d}/b-scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "hello from the backend\\n"; }}
  }}
}}
""")
    return ["nginx", "-c", conf, "-p", d]


def haproxy_conf(d, port, backend, hosts):
    mapfile = os.path.join(d, "haproxy-hosts.map")
    with open(mapfile, "w") as f:
        for h in hosts:
            f.write(f"{h} be\n")
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  http-reuse always
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port}
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Request-Id %[uuid()]
  http-request return status 404 unless {{ req.hdr(host),lower,word(1,:),map({mapfile}) -m found }}
  use_backend %[req.hdr(host),lower,word(1,:),map({mapfile})]
backend be
  server s1 127.0.0.1:{backend} maxconn 2000
""")
    return ["haproxy", "-f", conf, "-db"]


def caddy_conf(d, port, backend, hosts):
    conf = os.path.join(d, "caddy.json")
    cfg = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "http": {
                "servers": {
                    "bench": {
                        "listen": [f"127.0.0.1:{port}"],
                        "automatic_https": {"disable": True},
                        "routes": [
                            {
                                "match": [{"host": hosts}],
                                "handle": [
                                    {
                                        "handler": "reverse_proxy",
                                        "upstreams": [{"dial": f"127.0.0.1:{backend}"}],
                                        "headers": {"request": {"set": {"X-Request-Id": ["{http.request.uuid}"]}}},
                                    }
                                ],
                            },
                            {"handle": [{"handler": "static_response", "status_code": 404}]},
                        ],
                    }
                }
            }
        },
    }
    with open(conf, "w") as f:
        json.dump(cfg, f)
    return ["caddy", "run", "--config", conf]


def tenantgate_base(d, port, extra, name, access_log=False):
    """The settings every tenantgate under test shares: one worker, quiet logs (the access
    log on, to standard error, when `access_log`; to a file with --access-log)."""
    log_path = ""
    if ACCESS_LOG:
        access_log, log_path = True, f'access_log_path = "{d}/{name}-access.log"'
    return f"""
[proxy]
http_listen = "127.0.0.1:{port if not TLS else free_port()}"
{f'https_listen = "127.0.0.1:{port}"' if TLS else ""}
threads = 1
upgrade_sock = "{d}/{name}-upgrade.sock"
pid_file = "{d}/{name}.pid"
max_route_metric_labels = 1000
{extra}
[admin]
listen = "127.0.0.1:{free_port()}"
[log]
access_log = {"true" if access_log else "false"}
level = "{"info" if access_log else "warn"}"
{log_path}
""" + (f"""
[[certificates]]
cert_file = "{TLS_FILES[0]}"
key_file = "{TLS_FILES[1]}"
default = true
""" if TLS else "")


def tenantgate_conf(d, port, backend, hosts, binary, extra="", route_extra=None, access_log=False):
    """`route_extra(i)`: extra TOML after route i (e.g. its `[routes.limits]`)."""
    conf = os.path.join(d, "tenantgate.toml")
    with open(conf, "w") as f:
        f.write(tenantgate_base(d, port, extra, "tg", access_log))
        for i, h in enumerate(hosts):
            f.write(f'[[routes]]\nid = "t{i}"\nhostnames = ["{h}"]\nupstreams = ["127.0.0.1:{backend}"]\n')
            if route_extra:
                f.write(route_extra(i))
    return [binary, "serve", "--config", conf]


# Every limit configured and checked on each request, none ever reached (the cost of limits).
NEVER_REACHED_LIMITS = """[routes.limits]
requests_per_second = 1000000
burst = 1000000
client_requests_per_second = 1000000
client_burst = 1000000
max_concurrent_requests = 100000
max_body_bytes = 1048576
"""


def tenantgate_snapshot_conf(d, port, backend, hosts, binary, extra=""):
    """A fleet proxy booting from a last-known-good snapshot of the routes (its store is
    unreachable): how tenants arrive at scale, without a million-route TOML file."""
    conf = os.path.join(d, "tenantgate-proxy.toml")
    snap = os.path.join(d, f"snapshot-{len(hosts)}.json")
    with open(snap, "w") as f:
        f.write('{"version":1,"certificates":[],"routes":[')
        for i, h in enumerate(hosts):
            if i:
                f.write(",")
            f.write(f'{{"id":"t{i}","hostnames":["{h}"],"upstreams":[{{"addr":"127.0.0.1:{backend}"}}]}}')
        f.write("]}")
    with open(conf, "w") as f:
        f.write(tenantgate_base(d, port, extra, "tgp"))
        f.write(f"""[store]
url = "postgres://tenantgate@127.0.0.1:1/tenantgate"
encryption_key = "{'5a' * 32}"
snapshot_path = "{snap}"
""")
    return [binary, "proxy", "--config", conf]


def baseline_conf(d, port, backend, hosts, binary):
    hostfile = os.path.join(d, f"baseline-hosts-{len(hosts)}.txt")
    with open(hostfile, "w") as f:
        for h in hosts:
            f.write(f"{h}\n")
    return [binary, f"127.0.0.1:{port}", f"127.0.0.1:{backend}", hostfile]


# The Host is built per request from its index rather than read from a table: a wrk Lua table
# of a million strings made wrk's garbage collector stall for ~100 ms at a time, which showed
# as a p99 tail and as idle time on every proxy (nginx included) at 1M hosts. Built this way,
# the client does the same work per request at 1 host and at 1M hosts.
WRK_LUA_BODY = """
local body = string.rep("x", %d)
local n = %d
local i = -1
request = function()
  i = i + 1
  if i >= n then i = 0 end
  return wrk.format("POST", "/", { ["Host"] = "shop" .. i .. ".bench.test",
    ["Content-Type"] = "application/octet-stream" }, body)
end
"""

WRK_LUA = """
local n = %d
local i = -1
request = function()
  i = i + 1
  if i >= n then i = 0 end
  return wrk.format("GET", "/", { ["Host"] = "shop" .. i .. ".bench.test" })
end
"""


# Set by main() from --body: each request is a POST with a body of this many bytes.
BODY = 0


def run_wrk(port, duration, connections, nhosts, d):
    script = os.path.join(d, "rotate.lua")
    with open(script, "w") as f:
        if BODY:
            f.write(WRK_LUA_BODY % (BODY, nhosts))
        else:
            f.write(WRK_LUA % nhosts)
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
            "-s", script, f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"(\d+) requests in", out)
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(m.group(1)) if m else 0,
        "p50_ms": parse_latency(out, 50),
        "p99_ms": parse_latency(out, 99),
        "non2xx": int(errs.group(1)) if errs else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "raw": out,
    }


def run_h2load(port, duration, connections, nhosts, d):
    """TLS load with h2load: HTTP/1.1 keep-alive (`connections` clients) or HTTP/2 (32
    clients × 10 streams), one hostname."""
    argv = ["taskset", "-c", "1", "h2load", "-t1", f"-D{duration}", f"--connect-to=127.0.0.1:{port}"]
    if TLS == "h1":
        argv += ["--h1", f"-c{connections}", "-m1"]
    else:
        argv += ["-c32", "-m10"]
    if BODY:
        body = os.path.join(d, "body.bin")
        with open(body, "wb") as f:
            f.write(b"x" * BODY)
        argv += ["-d", body]
    argv.append(f"https://shop0.bench.test:{port}/")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    def ms(v):
        if v is None:
            return None
        v = v.group(1)
        for unit, k in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
            if v.endswith(unit):
                return float(v[: -len(unit)]) * k
        return None
    return {
        "requests": int(done.group(2)) if done else 0,
        "p50_ms": ms(mean),  # h2load gives the mean, reported in the p50 column
        "p99_ms": None,
        "non2xx": (int(status.group(2)) + int(status.group(3)) + int(status.group(4))) if status else 0,
        "socket_errors": (int(done.group(3)) + int(done.group(4))) if done else 0,
        "raw": out,
    }


def measure(name, argv, port, nhosts, args, d):
    proc = Proc(argv, 0, os.path.join(d, f"{name}.log"), cwd=d)
    try:
        t0 = time.time()
        wait_port(port, timeout=600, proc=proc.p)
        startup = time.time() - t0
        # Warm up connections and caches, then measure.
        load = run_h2load if TLS else run_wrk
        load(port, 2, args.connections, nhosts, d)
        u0, k0 = tree_cpu_split(proc.p.pid)
        w0 = time.time()
        r = load(port, args.duration, args.connections, nhosts, d)
        wall = time.time() - w0
        u1, k1 = tree_cpu_split(proc.p.pid)
        cpu = (u1 - u0) + (k1 - k0)
        n = r["requests"] or 1
        r["user_us_per_req"] = (u1 - u0) * 1e6 / n
        r["kernel_us_per_req"] = (k1 - k0) * 1e6 / n
        rss = sum(rss_kib(p) for p in tree_pids(proc.p.pid))
        r.update({
            "name": name,
            "rps": r["requests"] / args.duration if r["requests"] else 0,
            "cpu_us_per_req": cpu * 1e6 / r["requests"] if r["requests"] else None,
            "cpu_util": cpu / wall,
            "startup_s": startup,
            "rss_mib": rss / 1024,
        })
        return r
    finally:
        proc.stop()


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", default="nginx,haproxy,caddy,pingora-baseline,tenantgate")
    ap.add_argument("--scenarios", default="1,100000")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "tenantgate"))
    ap.add_argument("--baseline", default=os.path.join(ROOT, "target", "release", "examples", "pingora_baseline"))
    ap.add_argument("--json", help="also write raw results here")
    ap.add_argument("--tg-proxy", action="append", default=[],
                    help="extra line for tenantgate's [proxy] section, e.g. 'work_stealing = false'")
    ap.add_argument("--body", type=int, default=0, help="POST bodies of this many bytes")
    ap.add_argument("--tls", choices=["h1", "h2"], help="over TLS with h2load: HTTP/1.1 or HTTP/2")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the proxies this many times; the summary gives each one's median")
    ap.add_argument("--access-log", action="store_true",
                    help="nginx's and tenantgate's access logs on, to files")
    args = ap.parse_args()
    ap_tls = args.tls
    global BODY, ACCESS_LOG, TLS, TLS_FILES
    BODY, ACCESS_LOG, TLS = args.body, args.access_log, ap_tls

    for tool in ["taskset", "wrk", "nginx"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/setup.sh bench")
    if os.cpu_count() < 2:
        sys.exit("needs at least 2 cores")

    only = args.only.split(",")
    results = []
    d = tempfile.mkdtemp(prefix="tg-bench-")
    if TLS:
        if not shutil.which("h2load"):
            sys.exit("h2load is missing: run scripts/setup.sh bench")
        TLS_FILES = make_cert(d)
        only = [n for n in only if n in ("nginx", "tenantgate")]
    backend_port = free_port()
    backend = Proc(backend_conf(d, backend_port), 1, os.path.join(d, "backend.log"), cwd=d)
    try:
        wait_port(backend_port)
        for n in [int(s) for s in args.scenarios.split(",")]:
            hosts = hostnames(n)
            scenario = "1 route" if n == 1 else (f"{n // 1_000_000}M hosts" if n >= 1_000_000 else f"{n // 1000}k hosts")
            if TLS:
                scenario += ", TLS + HTTP/2" if TLS == "h2" else ", TLS + HTTP/1.1"
            if BODY:
                scenario += f", POST {BODY} B"
            if ACCESS_LOG:
                scenario += ", logs on"
            builders = {
                "nginx": lambda p: nginx_conf(d, p, backend_port, hosts),
                "haproxy": lambda p: haproxy_conf(d, p, backend_port, hosts),
                "caddy": lambda p: caddy_conf(d, p, backend_port, hosts),
                "pingora-baseline": lambda p: baseline_conf(d, p, backend_port, hosts, args.baseline),
                "tenantgate": lambda p: tenantgate_conf(d, p, backend_port, hosts, args.binary, "\n".join(args.tg_proxy)),
                "tenantgate-snapshot": lambda p: tenantgate_snapshot_conf(d, p, backend_port, hosts, args.binary, "\n".join(args.tg_proxy)),
            }
            for name in [n for _ in range(args.rounds) for n in only]:
                if name not in ("tenantgate", "tenantgate-snapshot", "pingora-baseline") and not shutil.which(name):
                    print(f"# {name}: not installed, skipped", file=sys.stderr)
                    continue
                port = free_port()
                print(f"# {scenario}: {name} ...", file=sys.stderr, flush=True)
                try:
                    r = measure(name, builders[name](port), port, n, args, d)
                except Exception as e:  # a proxy that cannot start is reported, not fatal
                    print(f"# {name} failed: {e}", file=sys.stderr)
                    r = {"name": name, "rps": 0, "cpu_us_per_req": None, "p50_ms": None, "p99_ms": None,
                         "non2xx": 0, "socket_errors": 0, "startup_s": None, "rss_mib": None, "error": str(e)}
                r["scenario"] = scenario
                results.append(r)
    finally:
        backend.stop()

    print(f"\nwrk: 1 thread, {args.connections} connections, {args.duration}s per run; proxy alone on core 0,"
          f" backend + wrk on core 1\n")
    print("| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req (user+kernel) | × nginx CPU | errors | RSS MiB | start s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        base = next((x for x in results if x["scenario"] == r["scenario"] and x["name"] == "nginx"), None)
        ratio = None
        if base and base.get("cpu_us_per_req") and r.get("cpu_us_per_req"):
            ratio = r["cpu_us_per_req"] / base["cpu_us_per_req"]
        print(f"| {r['scenario']} | {r['name']} | {fmt(r['rps'], '.0f')} | {fmt(r['p50_ms'], '.2f')} | "
              f"{fmt(r['p99_ms'], '.2f')} | {fmt(r['cpu_us_per_req'], '.1f')} ({fmt(r.get('user_us_per_req'), '.1f')}+{fmt(r.get('kernel_us_per_req'), '.1f')}) | {fmt(ratio, '.2f')} | "
              f"{r['non2xx'] + r['socket_errors']} | {fmt(r.get('rss_mib'), '.0f')} | {fmt(r.get('startup_s'), '.1f')} |")
    if args.rounds > 1:
        # Each round's ratio is taken against the nginx run just before it, so slow drifts of
        # the machine cancel out; the median of the rounds is the figure to quote.
        print(f"\nmedians over {args.rounds} alternating rounds (ratio per round against that round's nginx):\n")
        print("| scenario | proxy | CPU µs/req | × nginx (median) | × nginx per round | p99 ms (median) |")
        print("|---|---|---:|---:|---|---:|")
        scenarios = list(dict.fromkeys(r["scenario"] for r in results))
        for sc in scenarios:
            runs = [r for r in results if r["scenario"] == sc]
            for name in only:
                mine = [(i, r) for i, r in enumerate(runs) if r["name"] == name]
                cpus = sorted(r["cpu_us_per_req"] for _, r in mine if r.get("cpu_us_per_req"))
                ratios = []
                for i, r in mine:
                    base = next((b for b in reversed(runs[:i + 1]) if b["name"] == "nginx"), None)
                    if base and base.get("cpu_us_per_req") and r.get("cpu_us_per_req"):
                        ratios.append(r["cpu_us_per_req"] / base["cpu_us_per_req"])
                p99s = sorted(r["p99_ms"] for _, r in mine if r.get("p99_ms") is not None)
                med = lambda v: v[len(v) // 2] if v else None
                print(f"| {sc} | {name} | {fmt(med(cpus), '.1f')} | {fmt(med(sorted(ratios)), '.2f')} | "
                      f"{', '.join(format(x, '.2f') for x in ratios)} | {fmt(med(p99s), '.2f')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "raw"} for r in results], f, indent=1)
    if not os.environ.get("KEEP_BENCH_DIR"):
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"# kept {d}", file=sys.stderr)


if __name__ == "__main__":
    main()
