#!/usr/bin/env bash
# Build the demo storefront as a static executable and package it FROM scratch as a local
# image (no registry needed): what the demo-storefront blueprint runs per tenant.
#   scripts/demo-image.sh [TAG]      default tag: tenantgate/demo-storefront:latest
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-tenantgate/demo-storefront:latest}"
target=target/static
RUSTFLAGS="-C target-feature=+crt-static" "${CARGO:-cargo}" build -q -p demo-storefront \
  --target x86_64-unknown-linux-gnu --target-dir "$target"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$target/x86_64-unknown-linux-gnu/debug/demo-storefront" "$ctx/"
printf 'FROM scratch\nCOPY demo-storefront /demo-storefront\nENTRYPOINT ["/demo-storefront"]\n' >"$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null 2>"$ctx/err" || { cat "$ctx/err" >&2; exit 1; }
echo "$tag"
