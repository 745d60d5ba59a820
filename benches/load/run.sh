#!/usr/bin/env bash
# Build tenantgate in release mode and run the load harness against nginx, HAProxy and Caddy.
# Arguments are passed to harness.py (e.g. --duration 10 --only tenantgate,nginx).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup.sh bench
cargo build --release -p tenantgate --example pingora_baseline
exec python3 benches/load/harness.py "$@"
