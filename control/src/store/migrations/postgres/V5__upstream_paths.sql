-- tenantgate store, version 5: upstreams serving a path prefix of their route ('/': the
-- route's own, everything no other prefix matches).
ALTER TABLE upstreams ADD COLUMN path TEXT NOT NULL DEFAULT '/';
