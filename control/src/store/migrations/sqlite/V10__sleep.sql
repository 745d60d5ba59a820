-- tenantgate store, version 10: stores that sleep.
-- sleep: NULL (awake), 'paused' (containers frozen) or 'stopped'; published in the route, so
-- every proxy holds the store's requests while it sleeps. wake_requested_at: a proxy asked
-- for a wake (NULL once awake). awake_at: when it last woke, was deployed or resumed (idle
-- time counts from the later of this and its last request). sleep_policy: the tenant's own
-- idle periods as JSON ({"idle_pause_seconds": n|null, "idle_stop_seconds": n|null}); NULL:
-- its blueprint's.
ALTER TABLE tenants ADD COLUMN sleep TEXT;
ALTER TABLE tenants ADD COLUMN wake_requested_at BIGINT;
ALTER TABLE tenants ADD COLUMN awake_at BIGINT;
ALTER TABLE tenants ADD COLUMN sleep_policy TEXT;
-- Stores that existed before: idle from their last change.
UPDATE tenants SET awake_at = updated_at;
-- When each proxy node last saw a request for a tenant (answered, or in flight at a report).
CREATE TABLE activity (
    tenant_id TEXT NOT NULL,
    node_id   TEXT NOT NULL,
    last_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, node_id)
);
