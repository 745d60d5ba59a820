#!/usr/bin/env bash
# Install what building and testing tenantgate needs, only when missing. Idempotent.
#   scripts/setup.sh          build + test dependencies
#   scripts/setup.sh bench    also the proxies the load harness compares against
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)          # pingora's zlib-ng
command -v curl >/dev/null || need+=(curl)            # end-to-end tests
command -v cc >/dev/null || need+=(build-essential)
# PostgreSQL server binaries: the store conformance and fleet tests start throwaway clusters.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v runuser >/dev/null || need+=(util-linux)   # run postgres as its own user when root
# Pebble and pebble-challtestsrv: the ACME CA and DNS server of the custom-domain tests.
{ command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null; } || need+=(pebble)
# The Docker Engine: the container-runtime tests run tenant images on it.
command -v docker >/dev/null || need+=(docker.io)
# A real browser for the dashboard tests: Chromium driven over WebDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ "${1:-}" = "bench" ]; then
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v caddy >/dev/null || need+=(caddy)
  command -v wrk >/dev/null || need+=(wrk)
  command -v h2load >/dev/null || need+=(nghttp2-client)   # TLS and HTTP/2 load
  command -v taskset >/dev/null || need+=(util-linux)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
# Start the engine when it is installed but not running (e.g. a machine without systemd).
if ! docker info >/dev/null 2>&1; then
  if command -v dockerd >/dev/null; then
    echo "setup: starting dockerd"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO sh -c 'nohup dockerd >/tmp/tenantgate-dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  docker info >/dev/null 2>&1 || echo "setup: the Docker Engine is not reachable; the runtime tests will fail" >&2
fi
