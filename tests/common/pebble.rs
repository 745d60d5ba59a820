//! Pebble (an ACME CA for tests) and pebble-challtestsrv (its DNS server, also the one
//! tenantgate's resolver asks), from Debian's `pebble` package, for one test.
//!
//! The harness makes a CA of its own for Pebble's HTTPS listener (tenantgate trusts it via
//! `[acme] ca_file`), runs challtestsrv as DNS only, and Pebble with `PEBBLE_VA_NOSLEEP=1`
//! validating HTTP-01 on tenantgate's plain-HTTP port. A test that needs them fails (never
//! skips) when they cannot start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for, TestCa};

pub struct Pebble {
    pebble: Option<Child>,
    challtestsrv: Child,
    pub dir: tempfile::TempDir,
    /// DNS server (UDP and TCP) answering for every name.
    pub dns: SocketAddr,
    /// challtestsrv's management API.
    pub dns_api: SocketAddr,
    /// Pebble's ACME listener and management listener.
    pub acme: SocketAddr,
    pub mgmt: SocketAddr,
    /// PEM of the CA that signed Pebble's listener certificate.
    pub listener_ca: PathBuf,
    env: Vec<(String, String)>,
}

fn binary(name: &str) -> &str {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "{name} not found: install Debian's pebble package (scripts/setup.sh does)"
    );
    name
}

impl Pebble {
    /// Start both, with Pebble validating HTTP-01 on `http_port`; `env` adds Pebble
    /// settings such as `PEBBLE_WFE_NONCEREJECT`.
    pub async fn start(http_port: u16, env: &[(&str, &str)]) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new();
        let (chain, key) = ca.issue(&["localhost", "127.0.0.1"]);
        let listener_ca = dir.path().join("listener-ca.pem");
        std::fs::write(&listener_ca, ca.root_pem()).expect("write ca");
        std::fs::write(dir.path().join("listener.pem"), chain).expect("write cert");
        std::fs::write(dir.path().join("listener.key"), key).expect("write key");
        let (dns, dns_api, acme, mgmt) = (
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        );
        let config = serde_json::json!({"pebble": {
            "listenAddress": acme.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": dir.path().join("listener.pem"),
            "privateKey": dir.path().join("listener.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(
            dir.path().join("pebble.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("write config");
        let log = |name: &str| {
            Stdio::from(std::fs::File::create(dir.path().join(name)).expect("log file"))
        };
        let challtestsrv = Command::new(binary("pebble-challtestsrv"))
            .args(["-management", &dns_api.to_string()])
            .args(["-dns01", &dns.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let mut p = Pebble {
            pebble: None,
            challtestsrv,
            dns,
            dns_api,
            acme,
            mgmt,
            listener_ca,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        wait_for("challtestsrv", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(p.dns_api)
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        p.start_pebble().await;
        p
    }

    async fn start_pebble(&mut self) {
        let mut cmd = Command::new(binary("pebble"));
        cmd.arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .args(["-dnsserver", &self.dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let n = std::fs::read_dir(self.dir.path()).map_or(0, |d| d.count());
        let log = std::fs::File::create(self.dir.path().join(format!("pebble-{n}.log")))
            .expect("log file");
        cmd.stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log));
        self.pebble = Some(cmd.spawn().expect("start pebble"));
        let client = self.client();
        let url = self.directory_url();
        wait_for("pebble's directory", Duration::from_secs(30), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// A client trusting Pebble's listener.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.listener_ca).expect("ca");
        reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// The `[domains]` and `[acme]` sections for a tenantgate using this CA and DNS, with
    /// short retry intervals; `extra_acme` adds lines to `[acme]`.
    pub fn config(&self, http_port: u16, extra_acme: &str) -> String {
        format!(
            "[domains]\nnameservers = [\"{dns}\"]\nhttp_port = {http_port}\ncheck_min_seconds = 1\n\
             check_max_seconds = 2\nlookup_timeout_ms = 2000\n\
             [acme]\ndirectory_url = \"{dir}\"\nca_file = \"{ca}\"\nretry_min_seconds = 1\n\
             retry_max_seconds = 2\n{timeout}{extra_acme}\n",
            timeout = if extra_acme.contains("order_timeout_seconds") {
                ""
            } else {
                "order_timeout_seconds = 10\n"
            },
            dns = self.dns,
            dir = self.directory_url(),
            ca = self.listener_ca.display(),
        )
    }

    /// The root of the certificates Pebble issues (it makes a new one each start).
    pub async fn issuing_root(&self) -> String {
        let r = self
            .client()
            .get(format!("https://{}/roots/0", self.mgmt))
            .send()
            .await
            .expect("pebble roots");
        assert!(r.status().is_success(), "roots: {}", r.status());
        r.text().await.expect("root pem")
    }

    async fn dns_call(&self, path: &str, body: serde_json::Value) {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .post(format!("http://{}/{path}", self.dns_api))
            .json(&body)
            .send()
            .await
            .expect("challtestsrv");
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    fn fqdn(host: &str) -> String {
        format!("{}.", host.trim_end_matches('.'))
    }

    pub async fn set_txt(&self, host: &str, value: &str) {
        self.dns_call(
            "set-txt",
            serde_json::json!({"host": Self::fqdn(host), "value": value}),
        )
        .await;
    }

    pub async fn clear_txt(&self, host: &str) {
        self.dns_call("clear-txt", serde_json::json!({"host": Self::fqdn(host)}))
            .await;
    }

    /// Answer A queries for `host` with `ips` (instead of the default 127.0.0.1).
    pub async fn set_a(&self, host: &str, ips: &[&str]) {
        self.dns_call("clear-a", serde_json::json!({"host": Self::fqdn(host)}))
            .await;
        self.dns_call(
            "add-a",
            serde_json::json!({"host": Self::fqdn(host), "addresses": ips}),
        )
        .await;
    }

    pub async fn set_servfail(&self, host: &str, on: bool) {
        let path = if on { "set-servfail" } else { "clear-servfail" };
        self.dns_call(path, serde_json::json!({"host": Self::fqdn(host)}))
            .await;
    }

    /// Stop Pebble and start a new one on the same addresses: it has forgotten every account,
    /// order and its issuing root, as a CA whose data was reset.
    pub async fn restart(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.start_pebble().await;
    }

    /// Freeze (`SIGSTOP`) or thaw (`SIGCONT`) Pebble: it keeps its state, but answers
    /// nothing while frozen.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.pebble.as_ref().expect("pebble running").id();
        let sig = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal pebble");
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(d) = std::fs::read_dir(self.dir.path()) {
            for e in d.flatten() {
                if e.path()
                    .extension()
                    .is_some_and(|x| x == "log" || x == "err")
                {
                    out += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        out
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}
