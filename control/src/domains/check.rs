//! What control asks the outside world about a domain: its TXT record and HTTP token
//! (ownership), and where it points (the "moved" check). DNS goes through hickory-resolver
//! with the configured nameservers; HTTP goes to the address the name resolves to, on the
//! port proxies listen on, as the merchant's visitors would reach it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use tenantgate_config::DomainsConfig;

use crate::store::DomainRecord;

/// Outcome of a lookup.
enum Lookup<T> {
    Found(T),
    /// The name or record does not exist (an authoritative answer).
    Missing,
    /// The lookup failed (SERVFAIL, timeout, ...): nothing is known.
    Failed(String),
}

/// Where a domain points.
#[derive(Debug, PartialEq, Eq)]
pub enum Pointing {
    /// At the platform's edge.
    Here,
    /// Elsewhere, and why we think so.
    Elsewhere(String),
    /// Could not tell (DNS failure): keep the current state.
    Unknown(String),
}

/// DNS and HTTP checks.
pub struct Checker {
    resolver: TokioResolver,
    http: reqwest::Client,
    http_port: u16,
    edge: Vec<IpAddr>,
    cname_target: Option<String>,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Whether the error is an authoritative "no such name / no such record" (NXDOMAIN or an
/// empty NOERROR answer), as opposed to a failure (SERVFAIL, REFUSED, timeout) that says
/// nothing about the name.
fn absent(e: &ResolveError) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(
                response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            )
        }
        _ => false,
    }
}

fn describe(e: &ResolveError) -> String {
    use hickory_resolver::proto::ProtoErrorKind;
    if let Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) = e.proto().map(|p| p.kind())
    {
        return format!("the DNS server answered {response_code}");
    }
    let s = e.to_string();
    if s.is_empty() {
        "lookup failed".into()
    } else {
        s
    }
}

impl Checker {
    /// A checker for `cfg` (nameservers, port, edge addresses, timeouts).
    pub fn new(cfg: &DomainsConfig) -> Result<Self, String> {
        let timeout = Duration::from_millis(cfg.lookup_timeout_ms);
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 2;
        // Answers must be fresh: a merchant who just published a record expects it to count.
        opts.cache_size = 0;
        let builder = if cfg.nameservers.is_empty() {
            // A node without a usable resolv.conf still serves; its domain checks fail with
            // the DNS error until [domains] nameservers is set.
            TokioResolver::builder_tokio().unwrap_or_else(|e| {
                tracing::warn!("system DNS configuration unusable ({e}): set [domains] nameservers for custom-domain checks");
                TokioResolver::builder_with_config(
                    ResolverConfig::new(),
                    TokioConnectionProvider::default(),
                )
            })
        } else {
            let mut config = ResolverConfig::new();
            for ns in &cfg.nameservers {
                let addr: SocketAddr = ns
                    .parse()
                    .map_err(|_| format!("domains.nameservers: {ns:?} is not ip:port"))?;
                config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let resolver = builder.with_options(opts).build();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tenantgate-verifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Checker {
            resolver,
            http,
            http_port: cfg.http_port,
            edge: cfg
                .edge_addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            cname_target: cfg.cname_target.as_deref().map(fqdn),
        })
    }

    /// Whether "moved" detection is configured.
    pub fn detects_moves(&self) -> bool {
        !self.edge.is_empty() || self.cname_target.is_some()
    }

    async fn txt(&self, name: &str) -> Lookup<Vec<String>> {
        match self.resolver.txt_lookup(fqdn(name)).await {
            Ok(l) => Lookup::Found(
                l.iter()
                    .map(|t| {
                        t.txt_data()
                            .iter()
                            .map(|b| String::from_utf8_lossy(b))
                            .collect::<String>()
                    })
                    .collect(),
            ),
            Err(e) if absent(&e) => Lookup::Missing,
            Err(e) => Lookup::Failed(describe(&e)),
        }
    }

    async fn addresses(&self, name: &str) -> Lookup<Vec<IpAddr>> {
        match self.resolver.lookup_ip(fqdn(name)).await {
            Ok(l) => Lookup::Found(l.iter().collect()),
            Err(e) if absent(&e) => Lookup::Missing,
            Err(e) => Lookup::Failed(describe(&e)),
        }
    }

    /// Whether the domain's owner proved ownership: `Ok("dns_txt" | "http")`, or the
    /// reasons each way failed. `http_refused` says why the HTTP token cannot count for this
    /// name (it only proves that DNS points at the platform), when it cannot.
    pub async fn ownership(
        &self,
        d: &DomainRecord,
        http_refused: Option<&str>,
    ) -> Result<&'static str, Vec<String>> {
        let mut reasons = Vec::new();
        let txt_name = format!("_tenantgate.{}", d.hostname);
        match self.txt(&txt_name).await {
            Lookup::Found(values) if values.iter().any(|v| v.trim() == d.token) => {
                return Ok("dns_txt")
            }
            Lookup::Found(values) => reasons.push(format!(
                "TXT {txt_name} holds {} but not this domain's token",
                values
                    .iter()
                    .take(3)
                    .map(|v| format!("{:?}", v.chars().take(80).collect::<String>()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Lookup::Missing => reasons.push(format!("no TXT record at {txt_name}")),
            Lookup::Failed(e) => reasons.push(format!("DNS lookup of TXT {txt_name} failed: {e}")),
        }
        if let Some(why) = http_refused {
            reasons.push(format!(
                "the HTTP token is not accepted for {}: {why}; publish the TXT record",
                d.hostname
            ));
            return Err(reasons);
        }
        match self.fetch(&d.hostname, &d.verify_path()).await {
            Ok(body) if body.trim() == d.token => return Ok("http"),
            Ok(_) => reasons.push(format!(
                "http://{}{} answered, but not with this domain's token",
                d.hostname,
                d.verify_path()
            )),
            Err(e) => reasons.push(e),
        }
        Err(reasons)
    }

    /// GET `http://<host><path>` at the address `host` resolves to (the first that
    /// answers), as a visitor would; the body on 200.
    pub async fn fetch(&self, host: &str, path: &str) -> Result<String, String> {
        let url = format!("http://{host}{path}");
        let addrs = match self.addresses(host).await {
            Lookup::Found(a) if !a.is_empty() => a,
            Lookup::Found(_) | Lookup::Missing => {
                return Err(format!(
                    "{host} does not resolve, so {url} cannot be checked"
                ))
            }
            Lookup::Failed(e) => return Err(format!("DNS lookup of {host} failed: {e}")),
        };
        let mut last = String::new();
        for ip in addrs.iter().take(3) {
            // The name's owner chooses where this fetch goes: never to a metadata service or
            // a special-purpose address (this node's own proxy port is the point of it).
            let policy = tenantgate_config::UpstreamPolicy::default();
            if let Err(r) = policy.check(SocketAddr::new(*ip, self.http_port), |_| false) {
                last = format!("{url}: {host} resolves to {ip}, which is never checked: {r}");
                continue;
            }
            let target = format!("http://{}{path}", SocketAddr::new(*ip, self.http_port));
            match self
                .http
                .get(&target)
                .header(reqwest::header::HOST, host)
                .send()
                .await
            {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    return read_limited(r)
                        .await
                        .map_err(|e| format!("{url}: reading the answer failed: {e}"))
                }
                Ok(r) => last = format!("{url} answered {} at {ip}", r.status()),
                Err(e) => {
                    last = format!(
                        "{url} could not be fetched at {ip}: {}",
                        if e.is_timeout() {
                            "timed out".to_owned()
                        } else if e.is_connect() {
                            "connection failed".to_owned()
                        } else {
                            e.to_string()
                        }
                    )
                }
            }
        }
        Err(last)
    }

    /// Whether `host` still points at the platform's edge.
    pub async fn pointing(&self, host: &str) -> Pointing {
        if let Some(target) = &self.cname_target {
            match self.resolver.lookup(fqdn(host), RecordType::CNAME).await {
                Ok(l) => {
                    let names: Vec<String> = l
                        .iter()
                        .filter_map(|r| r.as_cname().map(|c| c.0.to_ascii().to_lowercase()))
                        .collect();
                    if names.iter().any(|n| n == target) {
                        return Pointing::Here;
                    }
                }
                Err(e) if e.is_nx_domain() && absent(&e) => {
                    return Pointing::Elsewhere(format!(
                        "{host} no longer exists in DNS (NXDOMAIN)"
                    ))
                }
                Err(e) if absent(&e) => {}
                Err(e) => {
                    return Pointing::Unknown(format!(
                        "DNS lookup of {host} failed: {}",
                        describe(&e)
                    ))
                }
            }
        }
        match self.addresses(host).await {
            Lookup::Found(a)
                if !self.edge.is_empty() && a.iter().any(|ip| self.edge.contains(ip)) =>
            {
                Pointing::Here
            }
            Lookup::Found(a) => Pointing::Elsewhere(format!(
                "{host} resolves to {} instead of the platform's edge{}",
                a.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                self.cname_target
                    .as_deref()
                    .map(|t| format!(" (or a CNAME to {})", t.trim_end_matches('.')))
                    .unwrap_or_default()
            )),
            Lookup::Missing => {
                Pointing::Elsewhere(format!("{host} no longer resolves to any address"))
            }
            Lookup::Failed(e) => Pointing::Unknown(format!("DNS lookup of {host} failed: {e}")),
        }
    }
}

/// A token is 32 characters: a body this long is not one, and the rest is not read (the
/// server is the merchant's, or anyone's their DNS points at).
const MAX_BODY: usize = 1024;

/// The body of `r`, at most [`MAX_BODY`] bytes of it.
async fn read_limited(mut r: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await? {
        let room = MAX_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_BODY {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
