-- tenantgate store, version 7: the nodes of a fleet, each registering itself with a
-- heartbeat (what fleet_share divides limits by, and what the dashboard's fleet page shows).
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('serve', 'proxy', 'control')),
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    route_version INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL
);
