-- tenantgate store, version 3 (sqlite): tenants provisioned from blueprints.
-- SQLite cannot change a CHECK constraint in place, so the tenants table is rebuilt (the
-- store runs migrations with foreign keys off, as SQLite's table-rebuild procedure asks).
CREATE TABLE tenants_v3 (
    id            TEXT PRIMARY KEY,
    slug          TEXT NOT NULL,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'failed', 'deleted')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    -- Provisioned tenants: blueprint and theme, the deployed generation, why it failed.
    blueprint     TEXT,
    theme         TEXT,
    generation    INTEGER NOT NULL DEFAULT 0,
    status_reason TEXT,
    -- The tenant database password, sealed with the store's encryption key.
    db_secret     BLOB,
    -- The node working on the tenant (provisioning, redeploy) holds it until lease_until.
    lease_owner   TEXT,
    lease_until   INTEGER NOT NULL DEFAULT 0
);
INSERT INTO tenants_v3 (id, slug, name, status, created_at, updated_at)
    SELECT id, slug, name, status, created_at, updated_at FROM tenants;
DROP TABLE tenants;
ALTER TABLE tenants_v3 RENAME TO tenants;
CREATE UNIQUE INDEX tenants_slug_live ON tenants (slug) WHERE status <> 'deleted';
CREATE INDEX tenants_blueprint ON tenants (id) WHERE blueprint IS NOT NULL;

-- What provisioning did, step by step (shown by GET /v1/tenants/{id}).
CREATE TABLE tenant_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    at        INTEGER NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX tenant_events_tenant ON tenant_events (tenant_id, id);
