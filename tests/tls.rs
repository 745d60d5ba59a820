//! TLS: certificate choice by SNI, refusal when nothing matches, HTTP/2 by ALPN, and 421 when a
//! request's Host belongs to another route than the connection's SNI.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Accepts any certificate: these tests look at *which* certificate the proxy chose.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Handshake with `sni` (`None`: an IP server name, so no SNI is sent).
async fn handshake(addr: SocketAddr, sni: Option<&str>) -> Result<Tls, std::io::Error> {
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).expect("dns name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

fn leaf(s: &Tls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("peer certs")[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

engine_tests! {
async fn sni_picks_exact_then_wildcard_then_default(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let (ca_pem, ka) = ca.issue(&["a.test"]);
    let (cw_pem, kw) = ca.issue(&["*.w.test"]);
    let (cd_pem, kd) = ca.issue(&["platform.test"]);
    let tg = Tenantgate::new().engine(engine)
        .cert(ca_pem.clone(), ka, false)
        .cert(cw_pem.clone(), kw, false)
        .cert(cd_pem.clone(), kd, true)
        .route(&["a.test", "*.w.test"], &[a.addr])
        .start()
        .await;
    let addr = tg.https.unwrap();

    let cases: &[(Option<&str>, &str)] = &[
        (Some("a.test"), &ca_pem),
        (Some("A.TEST"), &ca_pem),
        (Some("x.w.test"), &cw_pem),
        // The wildcard covers one label only: deeper names and the apex get the default.
        (Some("y.x.w.test"), &cd_pem),
        (Some("w.test"), &cd_pem),
        (Some("other.test"), &cd_pem),
        (None, &cd_pem),
    ];
    for (sni, expected) in cases {
        let served = leaf(&handshake(addr, *sni).await.unwrap());
        assert_eq!(served, der(expected), "certificate served for SNI {sni:?}");
    }
    assert!(tg
        .metrics()
        .await
        .contains("tenantgate_certs_certificates 3"));
}
}

engine_tests! {
async fn without_a_default_unknown_names_are_refused_never_another_tenants_cert(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let (c, k) = ca.issue(&["a.test"]);
    let tg = Tenantgate::new().engine(engine)
        .cert(c.clone(), k, false)
        .route(&["a.test"], &[a.addr])
        .route(&["b.test"], &[a.addr])
        .start()
        .await;
    let addr = tg.https.unwrap();
    assert_eq!(
        leaf(&handshake(addr, Some("a.test")).await.unwrap()),
        der(&c)
    );
    // b.test is routed but has no certificate: a.test's must not be offered instead.
    for sni in [Some("b.test"), Some("other.test"), None] {
        assert!(
            handshake(addr, sni).await.is_err(),
            "handshake for {sni:?} should fail"
        );
    }
}
}

engine_tests! {
async fn alpn_negotiates_http2_and_http1_still_works(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let (c, k) = ca.issue(&["a.test"]);
    let tg = Tenantgate::new().engine(engine)
        .cert(c, k, true)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let port = tg.https.unwrap().port();

    let r = tg
        .https_client(&ca, &["a.test"])
        .get(format!("https://a.test:{port}/h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v = backend_json(r).await;
    assert_eq!(v["backend"], "a");
    assert_eq!(v["path"], "/h2");
    assert_eq!(seen(&v, "x-forwarded-proto"), vec!["https"]);
    assert_eq!(seen(&v, "x-forwarded-host"), vec!["a.test"]);

    let mut s = handshake(tg.https.unwrap(), Some("a.test")).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    s.write_all(b"GET /h1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert!(out.contains("\"path\":\"/h1\""));
}
}

engine_tests! {
async fn host_of_another_route_than_the_sni_gets_421(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    // One certificate covers both names, as a shared platform certificate would.
    let (c, k) = ca.issue(&["a.test", "www.a.test", "b.test"]);
    let tg = Tenantgate::new().engine(engine)
        .cert(c, k, true)
        .route(&["a.test", "www.a.test"], &[a.addr])
        .route(&["b.test"], &[b.addr])
        .start()
        .await;
    let addr = tg.https.unwrap();

    let ask = |sni: &'static str, host: &'static str| async move {
        let mut s = handshake(addr, Some(sni)).await.unwrap();
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        status_of(&out)
    };
    assert_eq!(ask("a.test", "b.test").await, 421);
    assert_eq!(ask("b.test", "a.test").await, 421);
    assert_eq!(ask("a.test", "nobody.test").await, 404);
    // Another hostname of the same route is fine.
    assert_eq!(ask("a.test", "www.a.test").await, 200);
    assert_eq!(ask("a.test", "a.test").await, 200);
    assert_eq!(b.hits(), 0);
}
}

engine_tests! {
/// An HTTP/2 header block beyond `max_request_header_bytes` is refused (by the h2 layer's
/// header-list limit, or by the admission step's 431) and never reaches the upstream.
async fn http2_header_blocks_are_bounded(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let (c, k) = ca.issue(&["a.test"]);
    let tg = Tenantgate::new().engine(engine)
        .cert(c, k, true)
        .proxy("max_request_header_bytes = 8192")
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let port = tg.https.unwrap().port();
    let client = tg.https_client(&ca, &["a.test"]);
    let mut req = client.get(format!("https://a.test:{port}/big"));
    for i in 0..40 {
        req = req.header(format!("x-big-{i}"), "v".repeat(1000));
    }
    match req.send().await {
        Ok(r) => {
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.status(), 431);
        }
        Err(e) => assert!(e.is_request() || e.is_connect() || e.to_string().contains("h2"), "{e}"),
    }
    assert_eq!(a.hits(), 0);
    let r = client.get(format!("https://a.test:{port}/small")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the limit leaves ordinary requests alone");
}
}
