-- tenantgate store, version 4 (sqlite): replicas per component set through the API
-- (JSON object component -> count; NULL: the blueprint's).
ALTER TABLE tenants ADD COLUMN replicas TEXT;
