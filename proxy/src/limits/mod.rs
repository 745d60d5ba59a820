//! Limits that keep one client, or one tenant, from hurting the others: connections per node
//! and per client address ([`connections`]); each tenant's request rate, requests in flight,
//! body size and upstream timeouts ([`requests`], applied by the admission step).
//!
//! Invariants: a limit is checked where it is cheapest to refuse (a connection before any
//! TLS or HTTP work), costs a few atomic operations when not reached, and is counted in a
//! metric with a bounded label; refusals are logged at most once a second, with how many
//! there were, so a flood cannot flood the log.

pub mod connections;
pub mod requests;
