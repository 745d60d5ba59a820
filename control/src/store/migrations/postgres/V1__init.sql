-- tenantgate store, version 1 (PostgreSQL). Times are unix milliseconds.
CREATE TABLE meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO meta (id, version) VALUES (1, 0);

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX tenants_slug_live ON tenants (slug) WHERE status <> 'deleted';

CREATE TABLE hostnames (
    hostname   TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    kind       TEXT NOT NULL CHECK (kind IN ('platform', 'custom')),
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX hostnames_tenant ON hostnames (tenant_id);

CREATE TABLE upstreams (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    position  BIGINT NOT NULL,
    address   TEXT NOT NULL,
    weight    BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, position)
);

CREATE TABLE certificates (
    id         TEXT PRIMARY KEY,
    names      TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    chain_pem  TEXT NOT NULL,
    sealed_key BYTEA NOT NULL,
    not_after  BIGINT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('uploaded', 'acme')),
    created_at BIGINT NOT NULL
);

CREATE TABLE changes (
    version   BIGINT PRIMARY KEY,
    entity    TEXT NOT NULL CHECK (entity IN ('tenant', 'certificate')),
    entity_id TEXT NOT NULL,
    at        BIGINT NOT NULL
);

CREATE TABLE audit (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
