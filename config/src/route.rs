//! The route model shared by the proxy and (later) the control plane: what a route is once
//! configuration or the store has been validated. Values here are already normalised and
//! resolved; the proxy builds its lookup index from a [`RouteTable`] snapshot.

use std::net::SocketAddr;

use crate::host::HostPattern;

/// One upstream of a route: a resolved socket address (never a name: name resolution must not
/// happen on the hot path) and a weight for future weighted balancing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Resolved address of the backend.
    pub addr: SocketAddr,
}

/// A route: the hostnames one tenant answers on and where its backends listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Stable identifier, unique in the table; used as the connection-pool key and, bounded,
    /// as a metrics label.
    pub id: String,
    /// Exact names and one-label wildcards served by this route.
    pub hostnames: Vec<HostPattern>,
    /// Backends, tried round robin.
    pub upstreams: Vec<Upstream>,
    /// Answer plain HTTP with a 308 to the https:// URL.
    pub https_redirect: bool,
}

/// A complete, versioned set of routes, as the proxy sees it at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Monotonic version of the table; 0 for a table built from static configuration.
    pub version: u64,
    /// The routes; no hostname pattern appears in two of them.
    pub routes: Vec<Route>,
}
