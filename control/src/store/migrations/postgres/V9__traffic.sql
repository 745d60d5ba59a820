-- tenantgate store, version 9: traffic as the proxies count it, for the dashboard's charts.
-- scope is '' for the platform's total, else a tenant id; one row per node and period, and
-- only for periods with traffic; counts is "c1xx,..,c5xx;latency buckets" (see
-- config::traffic::TrafficCounts). Pruned after two hours.
CREATE TABLE traffic (
    scope    TEXT NOT NULL,
    node_id  TEXT NOT NULL,
    at       BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    counts   TEXT NOT NULL,
    PRIMARY KEY (scope, at, node_id)
);
CREATE INDEX traffic_at ON traffic (at);
