#!/usr/bin/env bash
# A local PostgreSQL server for tenants' own schemas and roles (the quickstart's
# [tenant_db]): created once under /var/tmp/tenantgate-tenantdb, started if not running,
# listening on 127.0.0.1 and on the Docker bridge's gateway (what host.docker.internal
# names inside a container), password logins (scram) from Docker's private ranges only.
# Prints the admin URL. Idempotent.
set -euo pipefail
port="${TENANT_DB_PORT:-5499}"
dir=/var/tmp/tenantgate-tenantdb
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || { echo "tenant-db: no PostgreSQL server binaries (scripts/setup.sh installs them)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# The gateway of the default bridge; the engine does not always report it, and then it is
# the subnet's first address.
gw="" subnet=""
for w in $(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}'); do
  case "$w" in */*) subnet="$w" ;; *) gw="$w" ;; esac
done
if [ -z "$gw" ]; then
  gw=$(python3 -c "import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1]).network_address + 1)" "$subnet")
fi
if [ ! -f "$dir/data/PG_VERSION" ]; then
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  as_pg "$bin/initdb" -A trust -U postgres -E UTF8 -D "$dir/data" >/dev/null
  printf 'host all all 172.16.0.0/12 scram-sha-256\nhost all all 192.168.0.0/16 scram-sha-256\nhost all all 10.0.0.0/8 scram-sha-256\n' \
    >>"$dir/data/pg_hba.conf"
fi
if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1,$gw" start >/dev/null
fi
as_pg "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = 'tenants'" | grep -q 1 ||
  as_pg "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qc "CREATE DATABASE tenants"
echo "postgres://postgres@127.0.0.1:$port/tenants"
