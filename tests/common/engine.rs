//! The engine matrix: every routing, TLS, header, page and limit test runs once with the
//! HTTP/1.1 fast path on and once with every request on Pingora's engine, and the access log's
//! `engine` field shows the setting took effect, so "both engines behave alike" is checked.

/// Which engine serves plain HTTP/1.1 proxy verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `http1_fast_path = true` (the default).
    FastPath,
    /// `http1_fast_path = false`: every request is served by Pingora's engine.
    Pingora,
}

impl Engine {
    /// The `[proxy]` line that selects it.
    pub fn setting(self) -> &'static str {
        match self {
            Engine::FastPath => "http1_fast_path = true",
            Engine::Pingora => "http1_fast_path = false",
        }
    }

    /// Check the access-log lines against the setting: with Pingora's engine no request is
    /// served by the fast path (answers the connection gives itself excepted: heads that
    /// never parse or end, and chunked bytes it read with the head that are not chunked);
    /// with the fast path, plain HTTP/1.1 requests that were proxied were served by it.
    pub fn check(self, logs: &str) {
        let lines: Vec<serde_json::Value> = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "tenantgate::access")
            .collect();
        for l in &lines {
            assert!(
                matches!(l["engine"].as_str(), Some("http1" | "pingora")),
                "an access line without an engine: {l}"
            );
        }
        match self {
            Engine::Pingora => {
                for l in &lines {
                    let connection_level = matches!(
                        l["outcome"].as_str(),
                        Some("bad_head" | "headers_too_large" | "bad_framing")
                    );
                    assert!(
                        l["engine"] == "pingora" || connection_level,
                        "served by the fast path although it is off: {l}"
                    );
                }
            }
            Engine::FastPath => {
                let plain = lines.iter().any(|l| {
                    matches!(l["method"].as_str(), Some("GET" | "HEAD"))
                        && l["version"] == "HTTP/1.1"
                        && l["outcome"] == "proxied"
                        && l["status"].as_u64().is_some_and(|s| s != 101)
                });
                if plain {
                    assert!(
                        lines.iter().any(|l| l["engine"] == "http1"),
                        "plain GETs were proxied, none by the fast path"
                    );
                }
            }
        }
    }
}

/// Define tests that run under both engines: `engine_tests! { async fn name(engine) { .. } }`
/// gives `name::fast_path` and `name::pingora`; the body builds its node with
/// `Tenantgate::new().engine(engine)`.
#[allow(unused_macros)]
macro_rules! engine_tests {
    ($($(#[doc = $doc:literal])* async fn $name:ident($engine:ident) $body:block)*) => {
        $(
            $(#[doc = $doc])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($engine: Engine) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn fast_path() {
                    run(Engine::FastPath).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn pingora() {
                    run(Engine::Pingora).await
                }
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use engine_tests;
