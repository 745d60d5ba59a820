#!/usr/bin/env bash
# Quickstart: build, start three demo storefronts (two routed statically, one to create via
# the admin API), and run tenantgate in front of them. With the Docker Engine running, also
# build the demo tenant image and start a local tenant-database server, so stores can be
# provisioned from the demo-storefront blueprint.
#   http://shop1.localhost:8080/   https://shop2.localhost:8443/ (self-signed)   admin: 127.0.0.1:8081
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace
bin=target/release
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
provision="(no Docker Engine here: provisioning from blueprints answers 503)"
if docker info >/dev/null 2>&1; then
  scripts/demo-image.sh >/dev/null
  TENANTGATE_TENANT_DB_URL=$(scripts/tenant-db.sh)
  export TENANTGATE_TENANT_DB_URL
  provision="curl -H \"Authorization: Bearer \$(cat data/quickstart/admin.token)\" -H 'content-type: application/json' \\
       -d '{\"slug\":\"alpha\",\"name\":\"Alpha Outfitters\",\"blueprint\":\"demo-storefront\",\"theme\":\"sunset\"}' http://127.0.0.1:8081/v1/tenants
  curl http://alpha.localhost:8080/     # live within seconds: its own container, schema and role"
fi
# The dashboard's first operator, once: a random password kept beside the admin token.
conf=deploy/examples/quickstart.toml
pwfile=data/quickstart/operator.password
if ! $bin/tenantgate operators list --config "$conf" | grep -q '"name":"admin"'; then
  mkdir -p data/quickstart
  (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$pwfile")
  $bin/tenantgate operators add admin --config "$conf" < "$pwfile"
fi
$bin/demo-storefront --listen 127.0.0.1:9001 --name "Shop One" --theme ocean & pids+=($!)
$bin/demo-storefront --listen 127.0.0.1:9002 --name "Shop Two" --theme sunset & pids+=($!)
$bin/demo-storefront --listen 127.0.0.1:9003 --name "Shop Three" --theme forest & pids+=($!)
cat <<MSG
tenantgate quickstart
  dashboard: http://127.0.0.1:8081/  (sign in as admin; password in $pwfile)
  curl http://shop1.localhost:8080/
  curl -k https://shop2.localhost:8443/
  curl http://127.0.0.1:8081/metrics
  # a new store, live within milliseconds (token generated on first start):
  curl -H "Authorization: Bearer \$(cat data/quickstart/admin.token)" -H 'content-type: application/json' \\
       -d '{"slug":"shop3","name":"Shop Three","upstreams":["127.0.0.1:9003"]}' http://127.0.0.1:8081/v1/tenants
  curl http://shop3.localhost:8080/
  # a store provisioned from a blueprint:
  $provision
MSG
$bin/tenantgate serve --config "$conf"
