//! Custom domains in the store: attach, verify, route, certificates, detach.
//!
//! Transitions that change what proxies serve (a route, a challenge, a certificate) are
//! versioned writes like every other change; bookkeeping that proxies never see (the next
//! check time, failure counts, reasons, leases) is written without a new version, so a
//! thousand domains retrying their checks do not flood the change log.

use std::collections::BTreeMap;

use tenantgate_config::{Challenge, ChallengeSet};

use super::{
    bytes, id_filter, insert_certificate, int, live_tenant, lock_writers, log_change, t, text,
    NewCertificate, Row, Store, Tx, Value,
};
use crate::model::{rfc3339, Domain, DomainStatus, Ssl, SslStatus, Verification};
use crate::{now_ms, random_id, Error, Result};

/// Path under which proxies answer a domain's ownership token.
pub const VERIFY_PREFIX: &str = "/.well-known/tenantgate/";

/// Everything the store knows about a domain (the API shows a part of it).
#[derive(Debug, Clone)]
pub struct DomainRecord {
    /// Id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Hostname (A-labels).
    pub hostname: String,
    /// Lifecycle status.
    pub status: DomainStatus,
    /// Ownership token.
    pub token: String,
    /// Reasons shown with the status.
    pub errors: Vec<String>,
    /// Certificate status.
    pub ssl_status: SslStatus,
    /// Reasons shown with the certificate status.
    pub ssl_errors: Vec<String>,
    /// Served certificate.
    pub certificate_id: Option<String>,
    /// Its issuer.
    pub cert_issuer: Option<String>,
    /// Its expiry, unix seconds.
    pub cert_not_after: Option<i64>,
    /// When it was stored, unix ms.
    pub cert_created_at: Option<i64>,
    /// When ownership was proven, unix ms.
    pub verified_at: Option<i64>,
    /// Ownership checks give up `verify_timeout` after this (attach or refresh), unix ms.
    pub verify_since: i64,
    /// Next ownership or "moved" check, unix ms.
    pub check_at: Option<i64>,
    /// Failed checks in a row.
    pub check_failures: i64,
    /// Next issuance or renewal attempt, unix ms.
    pub ssl_at: Option<i64>,
    /// Failed orders in a row.
    pub ssl_failures: i64,
    /// Attach time, unix ms.
    pub created_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
}

impl DomainRecord {
    /// The path proxies answer the ownership token on.
    pub fn verify_path(&self) -> String {
        format!("{VERIFY_PREFIX}{}", self.id)
    }

    /// The admin API's view.
    pub fn to_api(&self) -> Domain {
        Domain {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            tenant_id: self.tenant_id.clone(),
            status: self.status,
            verification: Verification {
                txt_name: format!("_tenantgate.{}", self.hostname),
                txt_value: self.token.clone(),
                http_url: format!("http://{}{}", self.hostname, self.verify_path()),
                http_body: self.token.clone(),
            },
            ssl: Ssl {
                status: self.ssl_status,
                issuer: self.cert_issuer.clone(),
                not_after: self.cert_not_after.map(|s| rfc3339(s.saturating_mul(1000))),
                errors: self.ssl_errors.clone(),
            },
            errors: self.errors.clone(),
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

/// Bookkeeping of a domain that proxies never see.
#[derive(Debug, Clone, Default)]
pub struct DomainNote {
    /// New reasons for the status.
    pub errors: Option<Vec<String>>,
    /// New certificate status (a status proxies do not depend on).
    pub ssl_status: Option<SslStatus>,
    /// New reasons for the certificate status.
    pub ssl_errors: Option<Vec<String>>,
    /// Next check (`Some(None)`: none).
    pub check_at: Option<Option<i64>>,
    /// Failed checks in a row.
    pub check_failures: Option<i64>,
    /// Next order (`Some(None)`: none).
    pub ssl_at: Option<Option<i64>>,
    /// Restart the ownership-check period at this time.
    pub verify_since: Option<i64>,
    /// Failed orders in a row.
    pub ssl_failures: Option<i64>,
}

/// Filter of a domain listing.
#[derive(Debug, Clone, Default)]
pub struct DomainFilter {
    /// Only this tenant's.
    pub tenant_id: Option<String>,
    /// Only with this status (default: all but deleted).
    pub status: Option<DomainStatus>,
    /// Ids greater than this.
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

fn opt_int(row: &Row, i: usize) -> Result<Option<i64>> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => int(row, i).map(Some),
    }
}

fn opt_text(row: &Row, i: usize) -> Result<Option<String>> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => text(row, i).map(Some),
    }
}

fn opt(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::Int)
}

fn list_json(v: &[String]) -> Value {
    Value::Text(serde_json::to_string(v).unwrap_or_else(|_| "[]".into()))
}

fn parse_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

const COLUMNS: &str = "d.id, d.tenant_id, d.hostname, d.status, d.token, d.errors, d.ssl_status, \
     d.ssl_errors, d.certificate_id, c.issuer, c.not_after, c.created_at, d.verified_at, \
     d.check_at, d.check_failures, d.ssl_at, d.ssl_failures, d.created_at, d.updated_at, d.verify_since";

fn record(r: &Row) -> Result<DomainRecord> {
    let status = text(r, 3)?;
    let ssl = text(r, 6)?;
    Ok(DomainRecord {
        id: text(r, 0)?,
        tenant_id: text(r, 1)?,
        hostname: text(r, 2)?,
        status: DomainStatus::parse(&status)
            .ok_or_else(|| Error::Internal(format!("unknown domain status {status:?}")))?,
        token: text(r, 4)?,
        errors: parse_list(&text(r, 5)?),
        ssl_status: SslStatus::parse(&ssl)
            .ok_or_else(|| Error::Internal(format!("unknown ssl status {ssl:?}")))?,
        ssl_errors: parse_list(&text(r, 7)?),
        certificate_id: opt_text(r, 8)?,
        cert_issuer: opt_text(r, 9)?,
        cert_not_after: opt_int(r, 10)?,
        cert_created_at: opt_int(r, 11)?,
        verified_at: opt_int(r, 12)?,
        check_at: opt_int(r, 13)?,
        check_failures: int(r, 14)?,
        ssl_at: opt_int(r, 15)?,
        ssl_failures: int(r, 16)?,
        created_at: int(r, 17)?,
        updated_at: int(r, 18)?,
        verify_since: int(r, 19)?,
    })
}

pub(super) async fn load_domain(tx: &mut dyn Tx, id: &str) -> Result<DomainRecord> {
    let rows = tx
        .query(
            &format!("SELECT {COLUMNS} FROM domains d LEFT JOIN certificates c ON c.id = d.certificate_id WHERE d.id = $1"),
            &[t(id)],
        )
        .await?;
    rows.first()
        .map(record)
        .transpose()?
        .ok_or_else(|| Error::NotFound(format!("domain {id:?}")))
}

/// How many domains, of any tenant and not deleted, claim `hostname`.
async fn claims(tx: &mut dyn Tx, hostname: &str) -> Result<i64> {
    let rows = tx
        .query(
            "SELECT COUNT(*) FROM domains WHERE hostname = $1 AND status <> 'deleted'",
            &[t(hostname)],
        )
        .await?;
    rows.first().map_or(Ok(0), |r| int(r, 0))
}

/// The current challenges of the domains among `ids` (all when `None`).
pub(super) async fn load_challenges(
    tx: &mut dyn Tx,
    ids: Option<&[String]>,
) -> Result<Vec<ChallengeSet>> {
    let Some((filter, params)) = id_filter(" WHERE domain_id", ids) else {
        return Ok(Vec::new());
    };
    let rows = tx
        .query(
            &format!("SELECT domain_id, hostname, path, body FROM challenges{filter} ORDER BY domain_id, path"),
            &params,
        )
        .await?;
    // Every domain asked about gets a set, an empty one withdrawing what it had.
    let mut sets: BTreeMap<String, Vec<Challenge>> = ids
        .unwrap_or_default()
        .iter()
        .map(|id| (id.clone(), Vec::new()))
        .collect();
    for r in &rows {
        sets.entry(text(r, 0)?).or_default().push(Challenge {
            hostname: text(r, 1)?,
            path: text(r, 2)?,
            body: text(r, 3)?,
        });
    }
    Ok(sets
        .into_iter()
        .map(|(domain_id, challenges)| ChallengeSet {
            domain_id,
            challenges,
        })
        .collect())
}

/// 32 random hex digits.
fn token() -> Result<String> {
    Ok(format!("{}{}", random_id("")?, random_id("")?))
}

impl Store {
    /// Attach `hostname` (validated, normalised) to a tenant: pending until verified.
    pub async fn attach_domain(
        &self,
        actor: &str,
        tenant_id: &str,
        hostname: &str,
    ) -> Result<DomainRecord> {
        let id = random_id("d_")?;
        let (mut tx, version) = self.begin_write("domain", &id).await?;
        live_tenant(&mut *tx, tenant_id).await?;
        let in_use = || Error::Taken {
            code: "hostname_taken",
            message: format!("the hostname {hostname:?} is already in use"),
        };
        if !tx
            .query(
                "SELECT 1 FROM hostnames WHERE hostname = $1",
                &[t(hostname)],
            )
            .await?
            .is_empty()
        {
            return Err(in_use());
        }
        let existing = tx
            .query(
                "SELECT tenant_id, status FROM domains WHERE hostname = $1 AND status <> 'deleted'",
                &[t(hostname)],
            )
            .await?;
        for r in &existing {
            if text(r, 0)? == tenant_id {
                return Err(Error::Conflict(format!(
                    "{hostname:?} is already attached to this tenant"
                )));
            }
            if text(r, 1)? != DomainStatus::PendingVerification.as_str() {
                return Err(in_use());
            }
        }
        let now = now_ms();
        let token = token()?;
        tx.query(
            "INSERT INTO domains (id, tenant_id, hostname, status, token, errors, ssl_status, ssl_errors, \
             check_at, check_failures, ssl_failures, lease_until, created_at, updated_at, verify_since) \
             VALUES ($1, $2, $3, 'pending_verification', $4, '[]', 'pending_validation', '[]', $5, 0, 0, 0, $5, $5, $5)",
            &[t(&id), t(tenant_id), t(hostname), t(&token), Value::Int(now)],
        )
        .await?;
        tx.query(
            "INSERT INTO challenges (domain_id, hostname, path, body) VALUES ($1, $2, $3, $4)",
            &[
                t(&id),
                t(hostname),
                t(&format!("{VERIFY_PREFIX}{id}")),
                t(&token),
            ],
        )
        .await?;
        let d = load_domain(&mut *tx, &id).await?;
        self.finish(
            tx,
            version,
            actor,
            "domain.attach",
            &id,
            serde_json::json!({"hostname": hostname, "tenant": tenant_id}),
        )
        .await?;
        Ok(d)
    }

    /// How many domains (of any tenant, not deleted) claim `hostname`, and whether a stored
    /// route already serves it: what decides whether the HTTP token may prove ownership.
    pub async fn hostname_claims(&self, hostname: &str) -> Result<(i64, bool)> {
        let mut tx = self.backend.begin(false).await?;
        let n = claims(&mut *tx, hostname).await?;
        let served = !tx
            .query(
                "SELECT 1 FROM hostnames WHERE hostname = $1",
                &[t(hostname)],
            )
            .await?
            .is_empty();
        tx.commit().await?;
        Ok((n, served))
    }

    /// One domain.
    pub async fn get_domain(&self, id: &str) -> Result<DomainRecord> {
        let mut tx = self.backend.begin(false).await?;
        let d = load_domain(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(d)
    }

    /// A page of domains ordered by id.
    pub async fn list_domains(
        &self,
        f: &DomainFilter,
    ) -> Result<(Vec<DomainRecord>, Option<String>)> {
        let limit = f.limit.clamp(1, 500);
        let mut sql = format!(
            "SELECT {COLUMNS} FROM domains d LEFT JOIN certificates c ON c.id = d.certificate_id WHERE "
        );
        let mut params = Vec::new();
        match f.status {
            Some(s) => {
                params.push(t(s.as_str()));
                sql += &format!("d.status = ${}", params.len());
            }
            None => sql += "d.status <> 'deleted'",
        }
        if let Some(tid) = &f.tenant_id {
            params.push(t(tid));
            sql += &format!(" AND d.tenant_id = ${}", params.len());
        }
        if let Some(a) = &f.after {
            params.push(t(a));
            sql += &format!(" AND d.id > ${}", params.len());
        }
        sql += &format!(" ORDER BY d.id LIMIT {}", limit + 1);
        let mut tx = self.backend.begin(false).await?;
        if let Some(tid) = &f.tenant_id {
            live_tenant(&mut *tx, tid).await?;
        }
        let rows = tx.query(&sql, &params).await?;
        tx.commit().await?;
        let mut items = rows.iter().map(record).collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok((items, next))
    }

    /// Detach a domain: its route, challenges and certificate leave every proxy at once and
    /// its token stops counting.
    pub async fn delete_domain(&self, actor: &str, id: &str) -> Result<()> {
        let (mut tx, version) = self.begin_write("domain", id).await?;
        let d = load_domain(&mut *tx, id).await?;
        if d.status == DomainStatus::Deleted {
            return Err(Error::NotFound(format!("domain {id:?}")));
        }
        self.retire_domain(&mut *tx, version, &d).await?;
        self.finish(
            tx,
            version,
            actor,
            "domain.delete",
            id,
            serde_json::json!({"hostname": d.hostname}),
        )
        .await
    }

    /// Retire a domain inside a versioned write: its route, challenges and certificate leave
    /// every proxy and its token stops counting.
    pub(super) async fn retire_domain(
        &self,
        tx: &mut dyn Tx,
        version: u64,
        d: &DomainRecord,
    ) -> Result<()> {
        self.unroute(tx, version, d).await?;
        log_change(tx, version, "domain", &d.id).await?;
        if let Some(c) = &d.certificate_id {
            tx.query("DELETE FROM certificates WHERE id = $1", &[t(c)])
                .await?;
            log_change(tx, version, "certificate", c).await?;
        }
        tx.query(
            "UPDATE domains SET status = 'deleted', certificate_id = NULL, check_at = NULL, ssl_at = NULL, \
             updated_at = $1 WHERE id = $2",
            &[Value::Int(now_ms()), t(&d.id)],
        )
        .await?;
        Ok(())
    }

    /// Remove a domain's route and challenges (inside a versioned write).
    async fn unroute(&self, tx: &mut dyn Tx, version: u64, d: &DomainRecord) -> Result<()> {
        let routed = tx
            .query(
                "DELETE FROM hostnames WHERE hostname = $1 AND tenant_id = $2 AND kind = 'custom' RETURNING hostname",
                &[t(&d.hostname), t(&d.tenant_id)],
            )
            .await?;
        if !routed.is_empty() {
            log_change(tx, version, "tenant", &d.tenant_id).await?;
        }
        tx.query("DELETE FROM challenges WHERE domain_id = $1", &[t(&d.id)])
            .await?;
        Ok(())
    }

    /// Route a domain to its tenant (inside a versioned write); `Conflict` if another tenant
    /// holds the name.
    async fn route(&self, tx: &mut dyn Tx, version: u64, d: &DomainRecord) -> Result<()> {
        let holder = tx
            .query(
                "SELECT tenant_id FROM hostnames WHERE hostname = $1",
                &[t(&d.hostname)],
            )
            .await?;
        match holder.first().map(|r| text(r, 0)).transpose()? {
            Some(owner) if owner == d.tenant_id => return Ok(()),
            Some(_) => {
                return Err(Error::Conflict(format!(
                    "the hostname {:?} is already in use",
                    d.hostname
                )))
            }
            None => {}
        }
        let owned = tx
            .query(
                "SELECT 1 FROM domains WHERE hostname = $1 AND id <> $2 AND status IN ('active', 'moved', 'blocked')",
                &[t(&d.hostname), t(&d.id)],
            )
            .await?;
        if !owned.is_empty() {
            return Err(Error::Conflict(format!(
                "the hostname {:?} is already in use",
                d.hostname
            )));
        }
        tx.query(
            "INSERT INTO hostnames (hostname, tenant_id, kind, status, created_at) VALUES ($1, $2, 'custom', 'active', $3)",
            &[t(&d.hostname), t(&d.tenant_id), Value::Int(now_ms())],
        )
        .await?;
        log_change(tx, version, "tenant", &d.tenant_id).await
    }

    /// Ownership proven: the domain becomes active and routed; issuance is queued at
    /// `ssl_at`; the next "moved" check is `check_at`.
    pub async fn verify_domain(
        &self,
        actor: &str,
        id: &str,
        how: &str,
        ssl_at: Option<i64>,
        check_at: Option<i64>,
    ) -> Result<DomainRecord> {
        let (mut tx, version) = self.begin_write("domain", id).await?;
        let d = load_domain(&mut *tx, id).await?;
        if d.status != DomainStatus::PendingVerification {
            return Err(Error::Conflict(format!(
                "the domain is {}, not pending verification",
                d.status.as_str()
            )));
        }
        if how == "http" && claims(&mut *tx, &d.hostname).await? > 1 {
            // Checked again inside the write: a second claim may have arrived since the
            // worker decided the HTTP token could count.
            return Err(Error::Taken {
                code: "contested",
                message: format!(
                    "{} is claimed by more than one tenant: only its TXT record proves ownership",
                    d.hostname
                ),
            });
        }
        self.route(&mut *tx, version, &d).await?;
        tx.query("DELETE FROM challenges WHERE domain_id = $1", &[t(id)])
            .await?;
        let now = now_ms();
        let ssl_status = if ssl_at.is_some() {
            SslStatus::PendingIssuance
        } else {
            SslStatus::PendingValidation
        };
        let ssl_errors: Vec<String> = if ssl_at.is_some() {
            vec![]
        } else {
            vec!["no ACME CA is configured ([acme] directory_url): served over HTTP only".into()]
        };
        tx.query(
            "UPDATE domains SET status = 'active', errors = '[]', verified_at = $1, check_at = $2, \
             check_failures = 0, ssl_status = $3, ssl_errors = $4, ssl_at = $5, ssl_failures = 0, updated_at = $1 WHERE id = $6",
            &[
                Value::Int(now),
                opt(check_at),
                t(ssl_status.as_str()),
                list_json(&ssl_errors),
                opt(ssl_at),
                t(id),
            ],
        )
        .await?;
        let d = load_domain(&mut *tx, id).await?;
        self.finish(
            tx,
            version,
            actor,
            "domain.verify",
            id,
            serde_json::json!({"hostname": d.hostname, "by": how}),
        )
        .await?;
        Ok(d)
    }

    /// Move a domain between `active`, `moved` and `blocked` (routing follows: only active
    /// domains are routed). `ssl_at`/`check_at` are the next attempts; `reason` the errors.
    pub async fn set_domain_status(
        &self,
        actor: &str,
        id: &str,
        status: DomainStatus,
        reason: Vec<String>,
        check_at: Option<i64>,
        ssl_at: Option<i64>,
    ) -> Result<DomainRecord> {
        let (mut tx, version) = self.begin_write("domain", id).await?;
        let d = load_domain(&mut *tx, id).await?;
        if d.status == DomainStatus::Deleted {
            return Err(Error::NotFound(format!("domain {id:?}")));
        }
        match status {
            DomainStatus::Active => self.route(&mut *tx, version, &d).await?,
            DomainStatus::PendingVerification => {
                // Unblocked before it was ever verified: answer its token again.
                self.unroute(&mut *tx, version, &d).await?;
                tx.query(
                    "INSERT INTO challenges (domain_id, hostname, path, body) VALUES ($1, $2, $3, $4)",
                    &[t(id), t(&d.hostname), t(&d.verify_path()), t(&d.token)],
                )
                .await?;
                tx.query(
                    "UPDATE domains SET verify_since = $1 WHERE id = $2",
                    &[Value::Int(now_ms()), t(id)],
                )
                .await?;
            }
            _ => self.unroute(&mut *tx, version, &d).await?,
        }
        tx.query(
            "UPDATE domains SET status = $1, errors = $2, check_at = $3, check_failures = 0, ssl_at = $4, \
             updated_at = $5 WHERE id = $6",
            &[
                t(status.as_str()),
                list_json(&reason),
                opt(check_at),
                opt(ssl_at),
                Value::Int(now_ms()),
                t(id),
            ],
        )
        .await?;
        let d = load_domain(&mut *tx, id).await?;
        self.finish(
            tx,
            version,
            actor,
            &format!("domain.{}", status.as_str()),
            id,
            serde_json::json!({"hostname": d.hostname, "reason": reason}),
        )
        .await?;
        Ok(d)
    }

    /// Publish one HTTP-01 answer for a domain to every proxy (replacing its others).
    pub async fn present_challenge(&self, id: &str, path: &str, body: &str) -> Result<()> {
        let (mut tx, version) = self.begin_write("domain", id).await?;
        let d = load_domain(&mut *tx, id).await?;
        if matches!(d.status, DomainStatus::Deleted | DomainStatus::Blocked) {
            return Err(Error::Conflict(format!(
                "the domain is {}",
                d.status.as_str()
            )));
        }
        tx.query("DELETE FROM challenges WHERE domain_id = $1", &[t(id)])
            .await?;
        tx.query(
            "INSERT INTO challenges (domain_id, hostname, path, body) VALUES ($1, $2, $3, $4)",
            &[t(id), t(&d.hostname), t(path), t(body)],
        )
        .await?;
        self.finish(
            tx,
            version,
            "acme",
            "domain.challenge",
            id,
            serde_json::json!({"path": path}),
        )
        .await
    }

    /// Withdraw a domain's ACME answers (after an order, whatever its outcome).
    pub async fn withdraw_challenges(&self, id: &str) -> Result<()> {
        let (mut tx, version) = self.begin_write("domain", id).await?;
        tx.query(
            "DELETE FROM challenges WHERE domain_id = $1 AND path NOT LIKE $2",
            &[t(id), t(&format!("{VERIFY_PREFIX}%"))],
        )
        .await?;
        self.finish(
            tx,
            version,
            "acme",
            "domain.challenge_withdrawn",
            id,
            serde_json::json!({}),
        )
        .await
    }

    /// Serve a newly issued certificate for a domain, replacing (and removing) its previous
    /// one in the same change: proxies swap them at once.
    pub async fn install_domain_certificate(
        &self,
        id: &str,
        c: &NewCertificate,
        ssl_at: Option<i64>,
    ) -> Result<DomainRecord> {
        let cert_id = random_id("c_")?;
        let (mut tx, version) = self.begin_write("certificate", &cert_id).await?;
        let d = load_domain(&mut *tx, id).await?;
        if d.status != DomainStatus::Active {
            return Err(Error::Conflict(format!(
                "the domain became {} while its certificate was issued",
                d.status.as_str()
            )));
        }
        insert_certificate(&mut *tx, &cert_id, c).await?;
        if let Some(old) = &d.certificate_id {
            tx.query("DELETE FROM certificates WHERE id = $1", &[t(old)])
                .await?;
            log_change(&mut *tx, version, "certificate", old).await?;
        }
        tx.query("DELETE FROM challenges WHERE domain_id = $1", &[t(id)])
            .await?;
        log_change(&mut *tx, version, "domain", id).await?;
        tx.query(
            "UPDATE domains SET certificate_id = $1, ssl_status = 'active', ssl_errors = '[]', ssl_at = $2, \
             ssl_failures = 0, updated_at = $3 WHERE id = $4",
            &[t(&cert_id), opt(ssl_at), Value::Int(now_ms()), t(id)],
        )
        .await?;
        let out = load_domain(&mut *tx, id).await?;
        self.finish(
            tx,
            version,
            "acme",
            if d.certificate_id.is_some() { "certificate.renew" } else { "certificate.issue" },
            id,
            serde_json::json!({"hostname": d.hostname, "certificate": cert_id, "replaced": d.certificate_id}),
        )
        .await?;
        Ok(out)
    }

    /// Record bookkeeping proxies never see (no new version).
    pub async fn note_domain(&self, id: &str, n: &DomainNote) -> Result<DomainRecord> {
        let mut sets = vec!["updated_at = $1".to_owned()];
        let mut params = vec![Value::Int(now_ms())];
        let mut push = |col: &str, v: Value| {
            params.push(v);
            sets.push(format!("{col} = ${}", params.len()));
        };
        if let Some(e) = &n.errors {
            push("errors", list_json(e));
        }
        if let Some(s) = n.ssl_status {
            push("ssl_status", t(s.as_str()));
        }
        if let Some(e) = &n.ssl_errors {
            push("ssl_errors", list_json(e));
        }
        if let Some(v) = n.check_at {
            push("check_at", opt(v));
        }
        if let Some(v) = n.check_failures {
            push("check_failures", Value::Int(v));
        }
        if let Some(v) = n.ssl_at {
            push("ssl_at", opt(v));
        }
        if let Some(v) = n.ssl_failures {
            push("ssl_failures", Value::Int(v));
        }
        if let Some(v) = n.verify_since {
            push("verify_since", Value::Int(v));
        }
        params.push(t(id));
        let sql = format!(
            "UPDATE domains SET {} WHERE id = ${} AND status <> 'deleted' RETURNING id",
            sets.join(", "),
            params.len()
        );
        let mut tx = self.backend.begin(true).await?;
        let done = tx.query(&sql, &params).await?;
        if done.is_empty() {
            return Err(Error::NotFound(format!("domain {id:?}")));
        }
        let d = load_domain(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(d)
    }

    /// Mark the certificates of live domains that ran out before a renewal succeeded as
    /// `expired`; returns the domains changed (before the change).
    pub async fn mark_expired(&self, now_ms: i64) -> Result<Vec<DomainRecord>> {
        let mut tx = self.backend.begin(true).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM domains d JOIN certificates c ON c.id = d.certificate_id \
                     WHERE d.status IN ('active', 'moved') AND d.ssl_status <> 'expired' AND c.not_after * 1000 <= $1"
                ),
                &[Value::Int(now_ms)],
            )
            .await?;
        let before = rows.iter().map(record).collect::<Result<Vec<_>>>()?;
        for d in &before {
            let mut errors = vec![format!(
                "the certificate expired at {} before it could be renewed",
                rfc3339(d.cert_not_after.unwrap_or(0).saturating_mul(1000))
            )];
            errors.extend(d.ssl_errors.iter().take(2).cloned());
            tx.query(
                "UPDATE domains SET ssl_status = 'expired', ssl_errors = $1, updated_at = $2 WHERE id = $3",
                &[list_json(&errors), Value::Int(now_ms), t(&d.id)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(before)
    }

    /// How many live domains have each status, and active ones each certificate status.
    pub async fn count_domains(&self) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>)> {
        let mut tx = self.backend.begin(false).await?;
        let a = tx
            .query(
                "SELECT status, count(*) FROM domains WHERE status <> 'deleted' GROUP BY status",
                &[],
            )
            .await?;
        let b = tx
            .query("SELECT ssl_status, count(*) FROM domains WHERE status = 'active' GROUP BY ssl_status", &[])
            .await?;
        tx.commit().await?;
        let pairs = |rows: &[Row]| -> Result<Vec<(String, i64)>> {
            rows.iter().map(|r| Ok((text(r, 0)?, int(r, 1)?))).collect()
        };
        Ok((pairs(&a)?, pairs(&b)?))
    }

    /// Domains an operator should look at, longest waiting first: not yet verified, moved
    /// away, or active with a failed or expired certificate.
    pub async fn domains_needing_action(&self, limit: usize) -> Result<Vec<DomainRecord>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM domains d LEFT JOIN certificates c ON c.id = d.certificate_id \
                     WHERE d.status IN ('pending_verification', 'moved') \
                     OR (d.status = 'active' AND d.ssl_status IN ('failed', 'expired')) \
                     ORDER BY d.updated_at, d.id LIMIT {}",
                    limit.clamp(1, 500)
                ),
                &[],
            )
            .await?;
        tx.commit().await?;
        rows.iter().map(record).collect()
    }

    /// Domains with a check or an order due at `now` and not held by a node.
    pub async fn due_domains(&self, now: i64, limit: usize) -> Result<Vec<String>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                // Two index range scans (check_at, ssl_at) rather than one scan of every
                // domain each second.
                &format!(
                    "SELECT id FROM domains WHERE check_at <= $1 AND lease_until < $1 \
                     AND status IN ('pending_verification', 'active', 'moved') \
                     UNION SELECT id FROM domains WHERE ssl_at <= $1 AND lease_until < $1 \
                     AND status = 'active' LIMIT {}",
                    limit.clamp(1, 1000)
                ),
                &[Value::Int(now)],
            )
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| text(r, 0)).collect()
    }

    /// Take the domain for `owner` until `until` (ms) unless it is held (by any node, this
    /// one included): one worker at a time works on a domain across a fleet.
    pub async fn claim_domain(&self, id: &str, owner: &str, until: i64) -> Result<bool> {
        self.claim_row("domains", id, owner, until).await
    }

    /// Give the domain back.
    pub async fn release_domain(&self, id: &str, owner: &str) -> Result<()> {
        self.release_row("domains", id, owner).await
    }

    /// Lease row `id` of `table` (which has `lease_owner` and `lease_until`) to `owner`
    /// until `until` (ms) unless it is held now.
    pub(crate) async fn claim_row(
        &self,
        table: &'static str,
        id: &str,
        owner: &str,
        until: i64,
    ) -> Result<bool> {
        let mut tx = self.backend.begin(true).await?;
        let rows = tx
            .query(
                &format!(
                    "UPDATE {table} SET lease_owner = $1, lease_until = $2 WHERE id = $3 AND \
                     lease_until < $4 RETURNING id"
                ),
                &[t(owner), Value::Int(until), t(id), Value::Int(now_ms())],
            )
            .await?;
        tx.commit().await?;
        Ok(!rows.is_empty())
    }

    /// End `owner`'s lease of row `id` of `table`.
    pub(crate) async fn release_row(
        &self,
        table: &'static str,
        id: &str,
        owner: &str,
    ) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            &format!(
                "UPDATE {table} SET lease_owner = NULL, lease_until = 0 WHERE id = $1 AND lease_owner = $2"
            ),
            &[t(id), t(owner)],
        )
        .await?;
        tx.commit().await
    }

    /// Count an order against the fleet-wide hourly budget; `false` when it is spent.
    pub async fn take_order_slot(&self, domain_id: &str, per_hour: u32) -> Result<bool> {
        let mut tx = self.backend.begin(true).await?;
        lock_writers(&mut *tx).await?;
        let now = now_ms();
        let rows = tx
            .query(
                "SELECT count(*) FROM acme_orders WHERE at > $1",
                &[Value::Int(now - 3_600_000)],
            )
            .await?;
        let used = rows.first().map(|r| int(r, 0)).transpose()?.unwrap_or(0);
        if used >= i64::from(per_hour) {
            tx.commit().await?;
            return Ok(false);
        }
        tx.query(
            "INSERT INTO acme_orders (at, domain_id) VALUES ($1, $2)",
            &[Value::Int(now), t(domain_id)],
        )
        .await?;
        tx.query(
            "DELETE FROM acme_orders WHERE at < $1",
            &[Value::Int(now - 86_400_000)],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A stored setting.
    pub async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query("SELECT value FROM settings WHERE name = $1", &[t(name)])
            .await?;
        tx.commit().await?;
        rows.first().map(|r| bytes(r, 0)).transpose()
    }

    /// Queue a webhook event for delivery.
    pub async fn queue_event(&self, id: &str, body: &str) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        let now = now_ms();
        tx.query(
            "INSERT INTO webhook_events (id, body, attempts, next_at, lease_until, created_at) \
             VALUES ($1, $2, 0, $3, 0, $3)",
            &[t(id), t(body), Value::Int(now)],
        )
        .await?;
        tx.commit().await
    }

    /// Take up to `limit` due events until `until` (ms), oldest first: (id, body, attempts).
    pub async fn take_events(
        &self,
        limit: usize,
        until: i64,
    ) -> Result<Vec<(String, String, i64)>> {
        let mut tx = self.backend.begin(true).await?;
        let now = now_ms();
        let rows = tx
            .query(
                &format!(
                    "UPDATE webhook_events SET lease_until = $1 WHERE id IN (SELECT id FROM webhook_events \
                     WHERE next_at <= $2 AND lease_until < $2 ORDER BY created_at, id LIMIT {}) \
                     AND lease_until < $2 RETURNING id, body, attempts, created_at",
                    limit.clamp(1, 100)
                ),
                &[Value::Int(until), Value::Int(now)],
            )
            .await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| Ok((text(r, 0)?, text(r, 1)?, int(r, 2)?, int(r, 3)?)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.3, &a.0).cmp(&(b.3, &b.0)));
        Ok(out.into_iter().map(|(i, b, a, _)| (i, b, a)).collect())
    }

    /// The event was accepted (or given up): forget it.
    pub async fn drop_event(&self, id: &str) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query("DELETE FROM webhook_events WHERE id = $1", &[t(id)])
            .await?;
        tx.commit().await
    }

    /// The event was not accepted: try again at `next_at` (ms).
    pub async fn retry_event(&self, id: &str, next_at: i64) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "UPDATE webhook_events SET attempts = attempts + 1, next_at = $1, lease_until = 0 WHERE id = $2",
            &[Value::Int(next_at), t(id)],
        )
        .await?;
        tx.commit().await
    }

    /// Remove the setting `name` if it still holds `value`.
    pub async fn delete_setting_if(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "DELETE FROM settings WHERE name = $1 AND value = $2",
            &[t(name), Value::Bytes(value.to_vec())],
        )
        .await?;
        tx.commit().await
    }

    /// Store `value` under `name` unless a value is there already; returns the one kept
    /// (two nodes racing to create the same thing agree on one).
    pub async fn setting_once(&self, name: &str, value: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.backend.begin(true).await?;
        lock_writers(&mut *tx).await?;
        let rows = tx
            .query("SELECT value FROM settings WHERE name = $1", &[t(name)])
            .await?;
        if let Some(r) = rows.first() {
            let kept = bytes(r, 0)?;
            tx.commit().await?;
            return Ok(kept);
        }
        tx.query(
            "INSERT INTO settings (name, value) VALUES ($1, $2)",
            &[t(name), Value::Bytes(value.to_vec())],
        )
        .await?;
        tx.commit().await?;
        Ok(value.to_vec())
    }
}
