#!/usr/bin/env bash
# Every test: unit tests of each crate and end-to-end tests of the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace
# The proxy's fuzzing entry points (fuzz/) and the checks built on them.
cargo test -p tenantgate-proxy --features fuzzing --lib
