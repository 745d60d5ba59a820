-- tenantgate store, version 6: per-tenant traffic limits. `plan` names a `[plans.NAME]` of
-- the config; `limits` is the tenant's own limits as JSON (the keys of
-- `PUT /v1/tenants/{id}/limits`), which win over the plan's field by field.
ALTER TABLE tenants ADD COLUMN plan TEXT;
ALTER TABLE tenants ADD COLUMN limits TEXT;
