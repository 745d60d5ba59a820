//! Webhooks: a signed JSON event to the configured URL on every domain status change.
//!
//! The signature header is `X-Tenantgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" keyed with the secret>`; receivers recompute it and reject old timestamps.
//!
//! Events go through an outbox in the store: queued right after the change they announce,
//! taken (leased) by whichever control node delivers next, deleted once the receiver
//! answers 2xx. Failures are retried with backoff from 1 s to an hour for a day, then logged
//! and dropped. Delivery is at least once (a receiver may see an event twice, e.g. when a
//! node stops between sending and deleting it), roughly in order; events carry an `id` for
//! de-duplication.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::model::{Domain, DomainStatus, SslStatus};
use crate::store::Store;

/// Give up on an event after this many failed deliveries (about a day with the backoff).
const MAX_ATTEMPTS: i64 = 30;

/// One event.
#[derive(Debug, Serialize)]
pub struct Event {
    /// Unique id (`evt_...`).
    pub id: String,
    /// `domain.status_changed`, `domain.attached` or `domain.deleted`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When, RFC 3339.
    pub at: String,
    /// The domain after the change.
    pub domain: Domain,
    /// Statuses before the change.
    pub previous: Option<Previous>,
}

/// Statuses before a change.
#[derive(Debug, Serialize)]
pub struct Previous {
    /// Domain status.
    pub status: DomainStatus,
    /// Certificate status.
    pub ssl_status: SslStatus,
}

/// The sender.
pub struct Webhooks {
    http: reqwest::Client,
    url: String,
    secret: String,
    wake: Notify,
}

/// `t=...,v1=...` for `body` at `t` (unix seconds).
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "t={t},v1={}",
        tag.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl Webhooks {
    /// Events for `url`, signed with `secret`; delivered while [`Webhooks::deliver`] runs.
    pub fn new(url: String, secret: String) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tenantgate-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Webhooks {
            http,
            url,
            secret,
            wake: Notify::new(),
        })
    }

    /// Queue an event in the store's outbox.
    pub async fn send(&self, store: &Store, event: &Event) {
        let body = match serde_json::to_string(event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode a webhook event: {e}");
                return;
            }
        };
        match store.queue_event(&event.id, &body).await {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::error!(event = %event.id, "webhook event not queued: {e}"),
        }
    }

    /// Deliver due events from the outbox until the process ends.
    pub async fn deliver(&self, store: &Store) {
        loop {
            match store.take_events(20, crate::now_ms() + 60_000).await {
                Ok(events) if !events.is_empty() => {
                    for (id, body, attempts) in events {
                        self.deliver_one(store, &id, body, attempts).await;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("webhook outbox unreadable: {e}"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn deliver_one(&self, store: &Store, id: &str, body: String, attempts: i64) {
        let t = crate::now_ms() / 1000;
        let sent = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                "x-tenantgate-signature",
                signature(self.secret.as_bytes(), t, body.as_bytes()),
            )
            .body(body)
            .send()
            .await;
        let done = match sent {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(event = id, attempts, status = %r.status(), "webhook not accepted");
                false
            }
            Err(e) => {
                tracing::warn!(event = id, attempts, "webhook delivery failed: {e}");
                false
            }
        };
        let outcome = if done {
            store.drop_event(id).await
        } else if attempts + 1 >= MAX_ATTEMPTS {
            tracing::error!(event = id, url = %self.url, "webhook event given up after {MAX_ATTEMPTS} attempts");
            store.drop_event(id).await
        } else {
            let wait = (1_000i64 << attempts.clamp(0, 12)).min(3_600_000);
            store.retry_event(id, crate::now_ms() + wait).await
        };
        if let Err(e) = outcome {
            tracing::warn!(event = id, "webhook outbox not updated: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // HMAC-SHA256("key", "1.{}"), computed independently with openssl.
        assert_eq!(
            signature(b"key", 1, b"{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }
}
