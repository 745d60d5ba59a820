#!/usr/bin/env bash
# Every test: unit tests of each crate and end-to-end tests of the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace
