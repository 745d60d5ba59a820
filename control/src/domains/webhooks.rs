//! Webhooks: a signed JSON event to the configured URL on every domain status change.
//!
//! The signature header is `X-Tenantgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" keyed with the secret>`; receivers recompute it and reject old timestamps.
//! Delivery is at least once while the process lives: failures are retried with backoff
//! (1, 2, 4, 8, 16 s), then logged. Events are not kept across restarts.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::model::{Domain, DomainStatus, SslStatus};

/// Events waiting beyond this many are dropped (and logged).
const QUEUE: usize = 10_000;

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
    tx: mpsc::Sender<Vec<u8>>,
    /// The delivery loop's half, until [`Webhooks::deliver`] takes it.
    rx: std::sync::Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
    http: reqwest::Client,
    url: String,
    secret: String,
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
    /// Events for `url`, signed with `secret`; delivered once [`Webhooks::deliver`] runs.
    pub fn new(url: String, secret: String) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tenantgate-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        Ok(Webhooks {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            http,
            url,
            secret,
        })
    }

    /// Deliver queued events, one at a time, until the process ends (runs once).
    pub async fn deliver(&self) {
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut rx) = rx else { return };
        while let Some(body) = rx.recv().await {
            deliver(&self.http, &self.url, self.secret.as_bytes(), body).await;
        }
    }

    /// Queue an event.
    pub fn send(&self, event: &Event) {
        match serde_json::to_vec(event) {
            Ok(body) => {
                if self.tx.try_send(body).is_err() {
                    tracing::error!(event = %event.id, "webhook queue full: event dropped");
                }
            }
            Err(e) => tracing::error!("cannot encode a webhook event: {e}"),
        }
    }
}

async fn deliver(http: &reqwest::Client, url: &str, secret: &[u8], body: Vec<u8>) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=6 {
        let t = crate::now_ms() / 1000;
        let sent = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-tenantgate-signature", signature(secret, t, &body))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(attempt, status = %r.status(), "webhook not accepted"),
            Err(e) => tracing::warn!(attempt, "webhook delivery failed: {e}"),
        }
        if attempt < 6 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::error!(url, "webhook event given up after 6 attempts");
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
