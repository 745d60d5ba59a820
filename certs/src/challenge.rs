//! The HTTP-01 challenge store: answers every proxy gives on the control plane's behalf
//! (ACME key authorisations and ownership-verification tokens), for exact hostname and path
//! pairs only. The control plane publishes them through the store like routes, so whichever
//! node of a fleet the CA (or a verifier) reaches can answer.
//!
//! Lookups take no lock and allocate nothing; updates rebuild the small map of live
//! challenges and swap it whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tenantgate_config::{Challenge, ChallengeSet};

/// Paths under which only the challenge store answers (anything else there is a 404).
pub const RESERVED_PREFIXES: [&str; 2] =
    ["/.well-known/acme-challenge/", "/.well-known/tenantgate/"];

type Answers = HashMap<Box<str>, HashMap<Box<str>, Arc<str>>>;

/// Live challenges by hostname, then exact path.
#[derive(Default)]
pub struct ChallengeStore {
    by_domain: Mutex<HashMap<String, Vec<Challenge>>>,
    answers: ArcSwap<Answers>,
}

impl ChallengeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `path` is one the challenge store owns.
    pub fn is_reserved(path: &str) -> bool {
        // The common case (any other path) fails on the first few bytes.
        path.starts_with("/.well-known/") && RESERVED_PREFIXES.iter().any(|p| path.starts_with(p))
    }

    /// The body to answer for `host` (normalised) and `path`, if a challenge is live for
    /// exactly that pair.
    pub fn answer(&self, host: &str, path: &str) -> Option<Arc<str>> {
        self.answers.load().get(host)?.get(path).cloned()
    }

    /// Replace every domain's challenges (a snapshot).
    pub fn replace_all(&self, sets: Vec<ChallengeSet>) {
        let mut by_domain = self.lock();
        by_domain.clear();
        for s in sets {
            if !s.challenges.is_empty() {
                by_domain.insert(s.domain_id, s.challenges);
            }
        }
        self.answers.store(Arc::new(build(&by_domain)));
    }

    /// Replace the challenges of the domains in `sets` (a delta).
    pub fn apply(&self, sets: &[ChallengeSet]) {
        if sets.is_empty() {
            return;
        }
        let mut by_domain = self.lock();
        for s in sets {
            if s.challenges.is_empty() {
                by_domain.remove(&s.domain_id);
            } else {
                by_domain.insert(s.domain_id.clone(), s.challenges.clone());
            }
        }
        self.answers.store(Arc::new(build(&by_domain)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Challenge>>> {
        self.by_domain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn build(by_domain: &HashMap<String, Vec<Challenge>>) -> Answers {
    let mut answers = Answers::new();
    for c in by_domain.values().flatten() {
        answers
            .entry(c.hostname.as_str().into())
            .or_default()
            .insert(c.path.as_str().into(), c.body.as_str().into());
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(domain: &str, host: &str, path: &str, body: &str) -> ChallengeSet {
        ChallengeSet {
            domain_id: domain.into(),
            challenges: vec![Challenge {
                hostname: host.into(),
                path: path.into(),
                body: body.into(),
            }],
        }
    }

    #[test]
    fn answers_only_exact_host_and_path() {
        let s = ChallengeStore::new();
        s.replace_all(vec![set(
            "d1",
            "www.shop.test",
            "/.well-known/acme-challenge/tok",
            "tok.thumb",
        )]);
        assert_eq!(
            s.answer("www.shop.test", "/.well-known/acme-challenge/tok")
                .as_deref(),
            Some("tok.thumb")
        );
        for (h, p) in [
            ("other.test", "/.well-known/acme-challenge/tok"),
            ("www.shop.test", "/.well-known/acme-challenge/tok/"),
            (
                "www.shop.test",
                "/.well-known/acme-challenge/../acme-challenge/tok",
            ),
            ("www.shop.test", "/.well-known/acme-challenge/TOK"),
        ] {
            assert!(s.answer(h, p).is_none(), "{h} {p}");
        }
        s.apply(&[ChallengeSet {
            domain_id: "d1".into(),
            challenges: vec![],
        }]);
        assert!(s
            .answer("www.shop.test", "/.well-known/acme-challenge/tok")
            .is_none());
    }

    #[test]
    fn deltas_replace_one_domain_only() {
        let s = ChallengeStore::new();
        s.replace_all(vec![
            set("d1", "a.test", "/.well-known/tenantgate/d1", "x"),
            set("d2", "b.test", "/.well-known/tenantgate/d2", "y"),
        ]);
        s.apply(&[set("d1", "a.test", "/.well-known/acme-challenge/t", "z")]);
        assert!(s.answer("a.test", "/.well-known/tenantgate/d1").is_none());
        assert_eq!(
            s.answer("a.test", "/.well-known/acme-challenge/t")
                .as_deref(),
            Some("z")
        );
        assert_eq!(
            s.answer("b.test", "/.well-known/tenantgate/d2").as_deref(),
            Some("y")
        );
        assert!(ChallengeStore::is_reserved("/.well-known/acme-challenge/"));
        assert!(!ChallengeStore::is_reserved("/.well-known/security.txt"));
    }
}
