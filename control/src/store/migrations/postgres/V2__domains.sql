-- tenantgate store, version 2 (postgres): custom domains, their challenges, ACME state.

-- A change may touch several objects (a domain's route, challenges and certificate commit
-- together), so one version can log several rows.
CREATE TABLE changes_v2 (
    version   BIGINT NOT NULL,
    entity    TEXT NOT NULL CHECK (entity IN ('tenant', 'certificate', 'domain')),
    entity_id TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (version, entity, entity_id)
);
INSERT INTO changes_v2 (version, entity, entity_id, at) SELECT version, entity, entity_id, at FROM changes;
DROP TABLE changes;
ALTER TABLE changes_v2 RENAME TO changes;

CREATE TABLE domains (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    hostname       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending_verification', 'active', 'moved', 'deleted', 'blocked')),
    token          TEXT NOT NULL,
    errors         TEXT NOT NULL,
    ssl_status     TEXT NOT NULL CHECK (ssl_status IN ('pending_validation', 'pending_issuance', 'active', 'renewing', 'failed', 'expired')),
    ssl_errors     TEXT NOT NULL,
    certificate_id TEXT,
    verified_at    BIGINT,
    -- Ownership checks count from here (attach, or the last refresh of a pending domain).
    verify_since   BIGINT NOT NULL,
    -- Next ownership (pending) or "moved" (active, moved) check; NULL: none scheduled.
    check_at       BIGINT,
    check_failures BIGINT NOT NULL,
    -- Next issuance or renewal attempt; NULL: none scheduled.
    ssl_at         BIGINT,
    ssl_failures   BIGINT NOT NULL,
    -- The node working on the domain holds it until lease_until (one order at a time).
    lease_owner    TEXT,
    lease_until    BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
-- One tenant cannot attach a name twice; once verified, a name belongs to one tenant.
CREATE UNIQUE INDEX domains_tenant_hostname ON domains (tenant_id, hostname) WHERE status <> 'deleted';
CREATE UNIQUE INDEX domains_hostname_owned ON domains (hostname) WHERE status IN ('active', 'moved', 'blocked');
CREATE INDEX domains_check_at ON domains (check_at);
CREATE INDEX domains_ssl_at ON domains (ssl_at);

CREATE TABLE challenges (
    domain_id TEXT NOT NULL REFERENCES domains (id),
    hostname  TEXT NOT NULL,
    path      TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (hostname, path)
);
CREATE INDEX challenges_domain ON challenges (domain_id);

-- Node-wide settings such as the sealed ACME account credentials.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- When orders were placed: the fleet-wide hourly budget counts these.
CREATE TABLE acme_orders (
    at        BIGINT NOT NULL,
    domain_id TEXT NOT NULL
);
CREATE INDEX acme_orders_at ON acme_orders (at);

-- Webhook events waiting for delivery (an outbox): written right after the status change
-- they announce, deleted once the receiver accepted them; any control node delivers.
CREATE TABLE webhook_events (
    id          TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    next_at     BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX webhook_events_next_at ON webhook_events (next_at);
