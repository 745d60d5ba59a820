//! Shared harness of the end-to-end tests: real backends, a test CA, and a running tenantgate
//! binary built from a config the test describes. Every test reads like a story:
//! `let a = Backend::start("a").await; let tg = Tenantgate::new().route(&["a.test"], &[&a]).start().await;`

#![allow(dead_code, missing_docs)]

pub mod browser;
pub mod docker;
pub mod engine;
pub mod pebble;
pub mod postgres;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[allow(unused_imports)]
pub(crate) use engine::engine_tests;
pub use engine::Engine;

pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Poll `f` until it returns `Some`, or panic after `deadline` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--sizes 0,10000` from a benchmark's command line, or `default`.
pub fn sizes_arg(default: &[usize]) -> Vec<usize> {
    std::env::args()
        .skip_while(|a| a != "--sizes")
        .nth(1)
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Proportional set size of process `pid` in KiB (from /proc/PID/smaps_rollup).
pub fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A port to listen on, free when handed out. Ports come from below the kernel's ephemeral
/// range (32768 and up), so no outgoing connection of this or another test (a proxy's pooled
/// upstream connection, a client) can take the port as its local port before the test binds
/// it; with `bind(0)` that happened, and the listener could not start. Each call in a process
/// gets another port.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// A real HTTP/1.1 + h2c backend. `GET /anything` answers JSON
/// `{"backend": name, "method", "path", "headers": [[k, v], ...], "peer": "ip:port"}` (`peer`
/// identifies the proxy's upstream connection); `/ws` is a WebSocket echo;
/// `/slow/<ms>` answers after a delay; `POST` bodies are counted in `"body_len"`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (n, h) = (Arc::<str>::from(name), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (n, h) = (n.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        backend_handle(n.clone(), h.clone(), peer, req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.into(),
            hits,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn backend_handle(
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return Ok(websocket_upgrade(req));
    }
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let got = req
        .body_mut()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = serde_json::json!({
        "backend": &*name,
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": got.len(),
        "body_fnv": fnv(&got),
        "peer": peer.to_string(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    Ok(resp)
}

fn websocket_upgrade(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not a websocket request")));
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return r;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", "upgrade".parse().expect("static"));
    h.insert("upgrade", "websocket".parse().expect("static"));
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().expect("ascii"),
    );
    r
}

/// A raw TCP backend that records the exact request head bytes it receives (so tests can see
/// what framing headers the proxy forwarded) and answers `200 ok` with `Connection: close`.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<String>>>,
    /// Connections accepted, counted the moment each is accepted.
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let rec = received.clone();
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let deadline = Instant::now() + Duration::from_secs(2);
                    // Read the head plus whatever body arrives shortly after.
                    while Instant::now() < deadline {
                        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut chunk))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                            Err(_) if buf.windows(4).any(|w| w == b"\r\n\r\n") => break,
                            Err(_) => {}
                        }
                    }
                    rec.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        RawBackend {
            addr,
            received,
            accepted,
            task,
        }
    }
}

/// One answer of a [`ScriptedBackend`]: byte pieces written one after another (with a short
/// pause between them, so the proxy sees them in separate reads), then the connection is
/// closed when `close` is set, or kept for the next request.
pub struct Reply {
    pub pieces: Vec<Vec<u8>>,
    pub close: bool,
}

impl Reply {
    pub fn keep(pieces: &[&[u8]]) -> Reply {
        Reply {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            close: false,
        }
    }

    pub fn close(pieces: &[&[u8]]) -> Reply {
        Reply {
            close: true,
            ..Reply::keep(pieces)
        }
    }
}

/// A raw HTTP/1 backend whose answers a test scripts byte by byte: `answer(connection,
/// request, head)` is called for each request head, numbered from 0 per connection and
/// connections numbered from 0. It records every head it received and counts connections.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedBackend {
    pub async fn start(
        answer: impl Fn(usize, usize, &str) -> Option<Reply> + Send + Sync + 'static,
    ) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let (h, c) = (heads.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst);
                let (heads, answer) = (h.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    for req in 0.. {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        heads.lock().expect("lock").push(head.clone());
                        // `None`: close without answering.
                        let Some(reply) = answer(conn, req, &head) else {
                            return;
                        };
                        for (i, piece) in reply.pieces.iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                        }
                        if reply.close {
                            return;
                        }
                    }
                });
            }
        });
        ScriptedBackend {
            addr,
            heads,
            connections,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// FNV-1a of `bytes`, as the test backend reports a body it received (`body_fnv`).
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A client connection for raw HTTP/1 exchanges: send bytes, read one whole response.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One response as a client saw it.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    /// A client over a connection already made.
    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Send what the peer may already have refused: `false` when it closed the connection
    /// first (its answer is still there to read).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// Read one response (of a request that was not `HEAD`): its head, then a body framed by
    /// `Content-Length`, chunked (the body returned de-chunked) or by the close.
    pub async fn response(&mut self) -> RawResponse {
        let mut r = self.response_head_only().await;
        let status = r.status;
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return r;
        }
        if r.header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "truncated chunked body");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .expect("chunk size");
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            let empty = i == 0;
                            self.buf.drain(..i + 2);
                            if empty {
                                return r;
                            }
                            continue;
                        }
                        assert!(self.fill().await, "truncated trailers");
                    }
                }
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "truncated chunk");
                }
                r.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(n) = r
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < n {
                assert!(self.fill().await, "truncated body");
            }
            r.body = self.buf.drain(..n).collect();
        } else {
            while self.fill().await {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }

    /// Read one response head (all of a `HEAD` request's response: no body follows it).
    pub async fn response_head_only(&mut self) -> RawResponse {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await,
                "no complete response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .expect("status line");
        RawResponse {
            status,
            headers: lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    /// Read exactly `n` bytes (of an upgraded stream, say).
    pub async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "the stream ended after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Whether the server closed the connection (EOF within a few seconds, nothing left over).
    pub async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A throwaway certificate authority for the TLS tests.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tenantgate test CA");
        let cert = params.self_signed(&key).expect("ca cert");
        let issuer = rcgen::Issuer::new(params, key);
        TestCa { cert, issuer }
    }

    /// A leaf for `names`: (chain PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    pub fn root_der(&self) -> rustls_pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn root_pem(&self) -> String {
        self.cert.pem()
    }
}

// ---------------------------------------------------------------------------------------------
// The tenantgate binary
// ---------------------------------------------------------------------------------------------

/// Builder of a tenantgate config and process.
#[derive(Default)]
pub struct Tenantgate {
    routes: Vec<String>,
    certs: Vec<(String, String, bool)>,
    https: bool,
    proxy_extra: Vec<String>,
    admin_extra: Vec<String>,
    extra_sections: Vec<String>,
    store_extra: Vec<String>,
    command: Option<&'static str>,
    http_port: Option<u16>,
    env: Vec<(String, String)>,
    engine: Option<Engine>,
}

/// The `[platform]` section most tests use.
pub const PLATFORM_TEST: &str = "[platform]\ndomain = \"platform.test\"\n";

/// The blueprints shipped in `deploy/blueprints`.
pub const SHIPPED_BLUEPRINTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/blueprints");

/// The admin token every test node is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct Running {
    child: Option<Child>,
    /// `serve`, `proxy` or `control`.
    pub command: &'static str,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    env: Vec<(String, String)>,
    /// The engine setting under test: its access log is checked against it at the end.
    engine: Option<Engine>,
}

impl Tenantgate {
    pub fn new() -> Tenantgate {
        init_crypto();
        Tenantgate::default()
    }

    pub fn route(self, hostnames: &[&str], upstreams: &[SocketAddr]) -> Tenantgate {
        self.route_with(hostnames, upstreams, "")
    }

    /// A route with extra TOML lines (e.g. `https_redirect = true`).
    pub fn route_with(
        mut self,
        hostnames: &[&str],
        upstreams: &[SocketAddr],
        extra: &str,
    ) -> Tenantgate {
        let q = |v: Vec<String>| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.routes.push(format!(
            "[[routes]]\nhostnames = [{}]\nupstreams = [{}]\n{extra}\n",
            q(hostnames.iter().map(|s| s.to_string()).collect()),
            q(upstreams.iter().map(|a| a.to_string()).collect()),
        ));
        self
    }

    pub fn cert(mut self, chain_pem: String, key_pem: String, default: bool) -> Tenantgate {
        self.certs.push((chain_pem, key_pem, default));
        self.https = true;
        self
    }

    /// Run `tenantgate <command>` (`serve` by default; `proxy` or `control` for a fleet).
    pub fn command(mut self, command: &'static str) -> Tenantgate {
        self.command = Some(command);
        self
    }

    /// `tenantgate <command>` on the fleet store at `url`, tenants under `platform.test`.
    pub fn fleet_node(command: &'static str, url: &str) -> Tenantgate {
        Tenantgate::new()
            .command(command)
            .fleet_store(url)
            .section(PLATFORM_TEST)
    }

    /// A fleet proxy whose store is unreachable (port 1 on loopback refuses at once): it
    /// serves what its snapshot file holds.
    pub fn offline_proxy() -> Tenantgate {
        Tenantgate::new()
            .command("proxy")
            .fleet_store("postgres://tenantgate@127.0.0.1:1/tenantgate")
    }

    /// Start with `snapshot` (JSON of a `Snapshot`) as the node's last-known-good file.
    pub async fn start_with_snapshot(self, snapshot: &[u8]) -> Running {
        self.start_with(|dir| {
            std::fs::create_dir_all(dir.join("data")).expect("data dir");
            std::fs::write(dir.join("data/snapshot.json"), snapshot).expect("snapshot");
        })
        .await
    }

    /// A fleet node on this PostgreSQL store, with the fleet's encryption key.
    pub fn fleet_store(mut self, url: &str) -> Tenantgate {
        self.store_extra.push(format!("url = {url:?}"));
        self.store_extra
            .push(format!("encryption_key = {:?}", "5a".repeat(32)));
        self
    }

    /// An extra TOML section, e.g. `[platform]\ndomain = "platform.test"`.
    pub fn section(mut self, text: &str) -> Tenantgate {
        self.extra_sections.push(text.to_string());
        self
    }

    /// A node that provisions tenants from the blueprints in `blueprints`, with their
    /// databases on the server at `tenant_db_url`, serving `*.platform.test` with a
    /// certificate of `ca`; `provisioning` holds extra lines of `[provisioning]`.
    pub fn provisioning(
        ca: &TestCa,
        tenant_db_url: &str,
        blueprints: &str,
        provisioning: &str,
    ) -> Tenantgate {
        let (c, k) = ca.issue(&["*.platform.test"]);
        Tenantgate::new()
            .cert(c, k, true)
            .section(PLATFORM_TEST)
            .section(&format!(
                "[tenant_db]\nurl = {tenant_db_url:?}\n\
                 [provisioning]\nblueprints_dir = {blueprints:?}\n{provisioning}"
            ))
    }

    /// An environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Tenantgate {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Listen for plain HTTP on this port (e.g. the one an ACME CA validates on).
    pub fn http_port(mut self, port: u16) -> Tenantgate {
        self.http_port = Some(port);
        self
    }

    /// Serve with this engine (see [`Engine`]); the access log is checked against it when
    /// the node stops.
    pub fn engine(mut self, engine: Engine) -> Tenantgate {
        self.proxy_extra.push(engine.setting().into());
        self.engine = Some(engine);
        self
    }

    /// An extra line in `[proxy]`, e.g. `read_timeout_ms = 300`.
    pub fn proxy(mut self, line: &str) -> Tenantgate {
        self.proxy_extra.push(line.to_string());
        self
    }

    /// An extra line in `[admin]`, e.g. `traffic_report_seconds = 1`.
    pub fn admin(mut self, line: &str) -> Tenantgate {
        self.admin_extra.push(line.to_string());
        self
    }

    pub fn config_text(&self, dir: &std::path::Path, http: u16, https: u16, admin: u16) -> String {
        let mut s = format!(
            "[proxy]\nhttp_listen = \"127.0.0.1:{http}\"\nthreads = 2\ngrace_period_seconds = 1\n\
             graceful_shutdown_timeout_seconds = 2\nupgrade_sock = \"{d}/upgrade.sock\"\npid_file = \"{d}/tg.pid\"\n",
            d = dir.display()
        );
        if self.https {
            s += &format!("https_listen = \"127.0.0.1:{https}\"\n");
        }
        for l in &self.proxy_extra {
            s += l;
            s += "\n";
        }
        s += &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n");
        for l in &self.admin_extra {
            s += l;
            s += "\n";
        }
        s += &format!(
            "[log]\nformat = \"json\"\n\
             [store]\npath = \"{d}/data/tenantgate.db\"\nsnapshot_path = \"{d}/data/snapshot.json\"\n",
            d = dir.display()
        );
        for l in &self.store_extra {
            s += l;
            s += "\n";
        }
        for l in &self.extra_sections {
            s += l;
            s += "\n";
        }
        for (i, (c, k, d)) in self.certs.iter().enumerate() {
            std::fs::write(dir.join(format!("c{i}.pem")), c).expect("write cert");
            std::fs::write(dir.join(format!("c{i}.key")), k).expect("write key");
            s += &format!("[[certificates]]\ncert_file = \"c{i}.pem\"\nkey_file = \"c{i}.key\"\ndefault = {d}\n");
        }
        for r in &self.routes {
            s += r;
        }
        s
    }

    pub async fn start(self) -> Running {
        self.start_with(|_| {}).await
    }

    /// Like [`Tenantgate::start`], after `prepare` has put files into the node's directory.
    pub async fn start_with(self, prepare: impl FnOnce(&std::path::Path)) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let (http, https, admin) = (
            self.http_port.unwrap_or_else(free_port),
            free_port(),
            free_port(),
        );
        let config = dir.path().join("tenantgate.toml");
        std::fs::write(&config, self.config_text(dir.path(), http, https, admin))
            .expect("write config");
        let mut running = Running {
            child: None,
            command: self.command.unwrap_or("serve"),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            https: self
                .https
                .then(|| SocketAddr::from(([127, 0, 0, 1], https))),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            dir,
            config,
            env: self.env,
            engine: self.engine,
        };
        running.child = Some(running.spawn(false));
        running.wait_ready().await;
        running
    }
}

impl Running {
    /// Start another tenantgate process on this config (`upgrade`: take over the sockets).
    pub fn spawn(&self, upgrade: bool) -> Child {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = std::fs::File::create(self.dir.path().join(format!("tenantgate-{n}.log")))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantgate"));
        cmd.arg(self.command).arg("--config").arg(&self.config);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if upgrade {
            cmd.arg("--upgrade");
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tenantgate")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn replace_child(&mut self, child: Child) -> Option<Child> {
        self.child.replace(child)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    pub async fn wait_ready(&mut self) {
        let admin = self.admin;
        let http = self.http;
        let proxy = self.command != "control";
        wait_for(
            "tenantgate to listen",
            Duration::from_secs(120),
            || async move {
                let ok = (!proxy || TcpStream::connect(http).await.is_ok())
                    && admin_get(admin, "/healthz").await.is_some();
                ok.then_some(())
            },
        )
        .await;
    }

    /// Everything the processes of this test wrote to stderr.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(self.dir.path()) {
            let mut files: Vec<_> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            files.sort();
            for f in files {
                out += &std::fs::read_to_string(&f).unwrap_or_default();
            }
        }
        out
    }

    pub async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").await.expect("metrics")
    }

    /// A plain-HTTP reqwest client that sends every request to this proxy.
    pub fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    /// `http://127.0.0.1:<port><path>` with the given Host.
    pub async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        self.get_with(host, path, &[]).await
    }

    /// Like [`Running::get`], with extra request headers.
    pub async fn get_with(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http_client()
            .get(format!("http://{}{path}", self.http))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    /// An HTTPS client that resolves `names` to this proxy and trusts `ca`.
    pub fn https_client(&self, ca: &TestCa, names: &[&str]) -> reqwest::Client {
        let addr = self.https.expect("https enabled");
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(ca.root_pem().as_bytes()).expect("root"),
            )
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        for n in names {
            b = b.resolve(n, addr);
        }
        b.build().expect("client")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.settle_logs();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Let the access log catch up before the process is killed: its lines are written
    /// behind the requests by a writer thread that looks every 5 ms, and a kill loses what
    /// is still queued. Waits until the logs stop growing (at most a second).
    fn settle_logs(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = self.logs().len();
        let mut quiet = 0;
        while quiet < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.logs().len();
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- tenantgate logs ----\n{}", self.logs());
        } else if let Some(engine) = self.engine {
            engine.check(&self.logs());
        }
    }
}

pub async fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.starts_with("HTTP/1.1 200").then(|| {
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    })
}

/// Send raw bytes to `addr` and return everything read until the server closes or goes quiet.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in a raw HTTP/1 answer (0 when there is none).
pub fn status_of(raw_response: &str) -> u16 {
    raw_response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The backend JSON of a proxied response.
pub async fn backend_json(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(resp.status(), 200, "expected a proxied 200");
    resp.json().await.expect("backend json")
}

/// All values of header `name` the backend saw.
pub fn seen(v: &serde_json::Value, name: &str) -> Vec<String> {
    v["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p[0].as_str() == Some(name))
                .filter_map(|p| p[1].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_file(path: &std::path::Path, text: &str) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(text.as_bytes()).expect("write");
}

// ---------------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------------

/// Call the admin API at `admin` with `token` (None: no Authorization header); returns the
/// status and the JSON body (`null` when empty).
pub async fn api_call(
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut req = client.request(
        method.parse().expect("method"),
        format!("http://{admin}{path}"),
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("admin API request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON answer {text:?}: {e}"))
    };
    (status, json)
}

impl Running {
    /// Add a dashboard operator with `tenantgate operators add` on this node's config.
    pub fn add_operator(&self, name: &str, password: &str) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .args(["operators", "add", name, "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tenantgate operators add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("password");
        let out = child.wait_with_output().expect("operators add");
        assert!(
            out.status.success(),
            "operators add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The dashboard's base URL.
    pub fn dashboard(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Call this node's admin API with the test token.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        api_call(self.admin, Some(ADMIN_TOKEN), method, path, body).await
    }

    /// Create a tenant through the admin API (asserting 201); returns its JSON.
    pub async fn create_tenant(&self, slug: &str, upstreams: &[SocketAddr]) -> serde_json::Value {
        let ups: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
        let (s, t) = self
            .api(
                "POST",
                "/v1/tenants",
                Some(serde_json::json!({"slug": slug, "name": slug, "upstreams": ups})),
            )
            .await;
        assert_eq!(s, 201, "creating {slug}: {t}");
        t
    }

    /// Replace a tenant's upstreams through the admin API (asserting 200).
    pub async fn set_upstreams(&self, id: &str, upstreams: &[SocketAddr]) {
        let ups: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
        let (s, t) = self
            .api(
                "PUT",
                &format!("/v1/tenants/{id}/upstreams"),
                Some(serde_json::json!({ "upstreams": ups })),
            )
            .await;
        assert_eq!(s, 200, "setting upstreams of {id}: {t}");
    }

    /// Wait until `host` is answered by the test backend called `name`.
    pub async fn wait_backend(&self, host: &str, name: &str) {
        wait_for(
            &format!("{host} to be served by {name}"),
            Duration::from_secs(10),
            || async {
                let v = self
                    .get(host, "/")
                    .await
                    .json::<serde_json::Value>()
                    .await
                    .ok()?;
                (v["backend"] == name).then_some(())
            },
        )
        .await;
    }

    /// Wait until `host` answers `status` through the plain-HTTP listener; returns the body.
    pub async fn wait_status(&self, host: &str, status: u16) -> String {
        let http = self.http;
        let host = host.to_string();
        wait_for(
            &format!("{host} to answer {status}"),
            Duration::from_secs(10),
            || {
                let host = host.clone();
                async move {
                    let client = reqwest::Client::builder().no_proxy().build().ok()?;
                    let r = client
                        .get(format!("http://{http}/"))
                        .header("host", &host)
                        .send()
                        .await
                        .ok()?;
                    if r.status().as_u16() == status {
                        r.text().await.ok()
                    } else {
                        None
                    }
                }
            },
        )
        .await
    }
}
