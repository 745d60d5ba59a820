-- tenantgate store, version 1 (SQLite). Times are unix milliseconds.
CREATE TABLE meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO meta (id, version) VALUES (1, 0);

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- A deleted tenant's slug may be taken again.
CREATE UNIQUE INDEX tenants_slug_live ON tenants (slug) WHERE status <> 'deleted';

CREATE TABLE hostnames (
    hostname   TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    kind       TEXT NOT NULL CHECK (kind IN ('platform', 'custom')),
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX hostnames_tenant ON hostnames (tenant_id);

CREATE TABLE upstreams (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    position  INTEGER NOT NULL,
    address   TEXT NOT NULL,
    weight    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, position)
);

CREATE TABLE certificates (
    id         TEXT PRIMARY KEY,
    names      TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    chain_pem  TEXT NOT NULL,
    sealed_key BLOB NOT NULL,
    not_after  INTEGER NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('uploaded', 'acme')),
    created_at INTEGER NOT NULL
);

CREATE TABLE changes (
    version   INTEGER PRIMARY KEY,
    entity    TEXT NOT NULL CHECK (entity IN ('tenant', 'certificate')),
    entity_id TEXT NOT NULL,
    at        INTEGER NOT NULL
);

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
