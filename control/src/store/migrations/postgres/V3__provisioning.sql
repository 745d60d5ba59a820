-- tenantgate store, version 3 (PostgreSQL): tenants provisioned from blueprints.
ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('provisioning', 'active', 'suspended', 'failed', 'deleted'));
-- Provisioned tenants: blueprint and theme, the deployed generation, why it failed.
ALTER TABLE tenants ADD COLUMN blueprint TEXT;
ALTER TABLE tenants ADD COLUMN theme TEXT;
ALTER TABLE tenants ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN status_reason TEXT;
-- The tenant database password, sealed with the store's encryption key.
ALTER TABLE tenants ADD COLUMN db_secret BYTEA;
-- The node working on the tenant (provisioning, redeploy) holds it until lease_until.
ALTER TABLE tenants ADD COLUMN lease_owner TEXT;
ALTER TABLE tenants ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
CREATE INDEX tenants_blueprint ON tenants (id) WHERE blueprint IS NOT NULL;

-- What provisioning did, step by step (shown by GET /v1/tenants/{id}).
CREATE TABLE tenant_events (
    id        BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    at        BIGINT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX tenant_events_tenant ON tenant_events (tenant_id, id);
