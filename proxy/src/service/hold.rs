//! Requests for a sleeping store: who asks control to wake it, and which clients never do.
//!
//! The admission step gives [`super::decide::Verdict::Hold`] for a route whose containers
//! sleep; the Pingora engine then asks for a wake through [`Holds::ask`], waits for the
//! routing table to change ([`crate::router::Router::watch`]) and decides again, so the
//! request meets every rule (limits, redirects, policy) as if its store had been awake.
//!
//! Invariants: asking never blocks a request (a [`Waker`] only sends); concurrent requests
//! for one sleep share one ask, and a store held longer than [`ASK_AGAIN`] is asked for
//! again (a lost ask only delays the wake); crawlers and uptime checkers never wake a
//! stopped store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenantgate_config::{SleepConfig, SleepLevel};

use crate::router::RouteEntry;

/// Asked again for a store still asleep after this long.
pub const ASK_AGAIN: Duration = Duration::from_secs(3);

/// `Retry-After` of the waking page (it reloads itself as often).
pub const RETRY_WAKING: u32 = 2;
/// `Retry-After` of our 503 when a store did not wake in time.
pub const RETRY_TIMEOUT: u32 = 5;
/// `Retry-After` for a crawler turned away from a stopped store.
pub const RETRY_CRAWLER: u32 = 60;

/// Asks control to wake a tenant. Implementations return at once: a channel send on
/// `serve`, a spawned store write and `NOTIFY` on a fleet proxy.
pub trait Waker: Send + Sync {
    /// Wake tenant `id` (its route id).
    fn wake(&self, id: &str);
}

/// The hold rules of one proxy.
pub struct Holds {
    waker: Option<Arc<dyn Waker>>,
    /// Longest a request waits for its store.
    pub timeout: Duration,
    /// A browser navigation waiting this long gets the waking page.
    pub hold_html: Duration,
    crawlers: Box<[String]>,
    /// Per route id: the sleeping route entry asked for (its serial) and when.
    asked: Mutex<HashMap<String, (u64, Instant)>>,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds")
            .field("timeout", &self.timeout)
            .field("hold_html", &self.hold_html)
            .finish_non_exhaustive()
    }
}

impl Holds {
    /// Rules from `[sleep]`; `waker` reaches control (`None`: requests wait for a wake
    /// someone else asks for, up to the timeout).
    pub fn new(cfg: &SleepConfig, waker: Option<Arc<dyn Waker>>) -> Self {
        Holds {
            waker,
            timeout: Duration::from_secs(cfg.wake_timeout_seconds),
            hold_html: Duration::from_millis(cfg.wake_hold_ms),
            crawlers: cfg
                .crawler_user_agents
                .iter()
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect(),
            asked: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a client with this `User-Agent` is a crawler or uptime checker.
    pub fn is_crawler(&self, user_agent: Option<&[u8]>) -> bool {
        let Some(ua) = user_agent else {
            return false;
        };
        self.crawlers.iter().any(|c| {
            ua.windows(c.len())
                .any(|w| w.eq_ignore_ascii_case(c.as_bytes()))
        })
    }

    /// Whether this client is turned away (503) rather than held: a crawler asking for a
    /// stopped store (a frozen one wakes in milliseconds and is served).
    pub fn turns_away(&self, level: SleepLevel, user_agent: Option<&[u8]>) -> bool {
        level == SleepLevel::Stopped && self.is_crawler(user_agent)
    }

    /// Ask for `route`'s store to be woken, unless this sleep was asked for less than
    /// [`ASK_AGAIN`] ago. Returns whether an ask went out.
    pub fn ask(&self, route: &Arc<RouteEntry>) -> bool {
        let Some(waker) = &self.waker else {
            return false;
        };
        let key = route.serial;
        let now = Instant::now();
        {
            let mut asked = self
                .asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match asked.get(route.id()) {
                Some(&(k, at)) if k == key && now.duration_since(at) < ASK_AGAIN => return false,
                _ => {}
            }
            // Entries of stores long awake go, so the map stays as small as the sleepers.
            if asked.len() > 1024 {
                asked.retain(|_, (_, at)| now.duration_since(*at) < ASK_AGAIN);
            }
            asked.insert(route.id().to_owned(), (key, now));
        }
        waker.wake(route.id());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::router::Router;
    use std::net::SocketAddr;
    use tenantgate_config::{HostPattern, Route, RouteTable, Upstream};

    #[derive(Default)]
    struct Count(Mutex<Vec<String>>);

    impl Waker for Count {
        fn wake(&self, id: &str) {
            self.0.lock().unwrap().push(id.to_owned());
        }
    }

    fn router(level: Option<SleepLevel>) -> Router {
        Router::new(
            &RouteTable {
                version: 1,
                routes: vec![Route {
                    id: "s".into(),
                    hostnames: vec![HostPattern::Exact("s.test".into())],
                    upstreams: vec![Upstream {
                        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
                    }],
                    https_redirect: false,
                    suspended: false,
                    paths: Default::default(),
                    hsts: None,
                    limits: None,
                    asleep: level,
                }],
            },
            Arc::new(Metrics::new(10)),
        )
    }

    #[test]
    fn crawlers_are_matched_anywhere_in_the_agent_without_case() {
        let h = Holds::new(&SleepConfig::default(), None);
        let google = b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        assert!(h.is_crawler(Some(google)));
        assert!(h.is_crawler(Some(b"UptimeRobot/2.0")));
        assert!(!h.is_crawler(Some(b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0")));
        assert!(!h.is_crawler(None));
        assert!(h.turns_away(SleepLevel::Stopped, Some(google)));
        assert!(
            !h.turns_away(SleepLevel::Paused, Some(google)),
            "a frozen store wakes in milliseconds: crawlers are served"
        );
    }

    #[test]
    fn concurrent_requests_share_one_ask_per_sleep() {
        let waker = Arc::new(Count::default());
        let h = Holds::new(&SleepConfig::default(), Some(waker.clone()));
        let r = router(Some(SleepLevel::Stopped));
        let entry = r
            .stored_route("s")
            .or_else(|| r.load().lookup("s.test").cloned());
        let entry = entry.expect("route");
        assert!(h.ask(&entry));
        for _ in 0..49 {
            assert!(!h.ask(&entry));
        }
        assert_eq!(waker.0.lock().unwrap().as_slice(), ["s"]);
        // The store woke and fell asleep again: a new sleep (a new entry) is asked for at
        // once, not after the re-ask period.
        r.replace(&RouteTable {
            version: 2,
            routes: vec![r.load().lookup("s.test").unwrap().route().to_route()],
        });
        let again = r.load().lookup("s.test").cloned().expect("route");
        assert!(h.ask(&again));
        assert_eq!(waker.0.lock().unwrap().len(), 2);
    }
}
