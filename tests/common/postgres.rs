//! A throwaway PostgreSQL cluster for one test: the machine's server binaries, a data
//! directory in a temporary folder, an ephemeral port, trust authentication on loopback.
//! `fsync` is off (only an OS crash could lose data, and tests don't survive those), but
//! commits are written to the WAL before they are acknowledged, so killing the server loses
//! nothing acknowledged. As root the server runs as the `postgres` user (it refuses root).
//! `initdb` runs once per machine into a template under the temp directory (which the
//! `postgres` user can traverse, unlike a checkout under /root) that each cluster copies.
//!
//! A test that needs PostgreSQL fails (never skips) when it cannot start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{free_port, wait_for};

static TEMPLATE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("postgres").exists());
    dirs.sort();
    dirs.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (scripts/setup.sh installs them)",
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Run a server binary, as `postgres` when we are root.
fn pg_command(bin: &str) -> Command {
    let path = bin_dir().join(bin);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn give_to_postgres(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(ok.success(), "chown {} failed", path.display());
    }
}

/// The initdb'd template directory (created once).
fn template() -> PathBuf {
    let mut t = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = &*t {
        return p.clone();
    }
    // Under the system temp directory, which the `postgres` user can traverse (a checkout
    // under /root, say, would not be).
    let base = std::env::temp_dir();
    let version = bin_dir()
        .parent()
        .and_then(|p| p.file_name())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = base.join(format!("tenantgate-pg{version}-template"));
    if !dir.join("PG_VERSION").exists() {
        let tmp = base.join(format!("pg-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("template dir");
        give_to_postgres(&tmp);
        let out = pg_command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&tmp)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test binary may have won the race; either copy is complete.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    *t = Some(dir.clone());
    dir
}

/// A running PostgreSQL cluster.
pub struct PgCluster {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    listen: String,
}

impl PgCluster {
    pub async fn start() -> PgCluster {
        Self::start_listening("127.0.0.1", "").await
    }

    /// A cluster that containers on Docker bridge networks reach too: it listens on the
    /// default bridge's gateway (what `host.docker.internal` names inside a container) as
    /// well, and takes password logins (scram) from the private ranges Docker uses.
    pub async fn start_for_containers() -> PgCluster {
        // The gateway of the default bridge (docker0), which `host-gateway` names; the
        // engine does not always report it, and then it is the subnet's first address.
        let out = Command::new("docker")
            .args([
                "network",
                "inspect",
                "bridge",
                "--format",
                "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}",
            ])
            .output()
            .expect("docker CLI (the Docker Engine is required)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let gateway = text
            .split_whitespace()
            .find_map(|w| w.parse::<std::net::Ipv4Addr>().ok())
            .or_else(|| {
                let subnet = text.split_whitespace().find(|w| w.contains('/'))?;
                let net: std::net::Ipv4Addr = subnet.split('/').next()?.parse().ok()?;
                Some(std::net::Ipv4Addr::from(u32::from(net) + 1))
            })
            .unwrap_or_else(|| {
                panic!(
                    "cannot find the Docker bridge gateway ({text:?}): {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_string();
        let hba = "host all all 172.16.0.0/12 scram-sha-256\n\
                   host all all 192.168.0.0/16 scram-sha-256\n\
                   host all all 10.0.0.0/8 scram-sha-256\n";
        Self::start_listening(&format!("127.0.0.1,{gateway}"), hba).await
    }

    async fn start_listening(listen: &str, extra_hba: &str) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("tg-pg-")
            .tempdir()
            .expect("tempdir");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(dir.path().join("data"))
            .status()
            .expect("cp");
        assert!(ok.success(), "copying the template cluster failed");
        if !extra_hba.is_empty() {
            let hba = dir.path().join("data/pg_hba.conf");
            let mut text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            text.push_str(extra_hba);
            std::fs::write(&hba, text).expect("pg_hba.conf");
        }
        give_to_postgres(dir.path());
        let mut pg = PgCluster {
            port: free_port(),
            dir,
            child: None,
            listen: listen.to_owned(),
        };
        pg.resume().await;
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh database for one test.
    pub async fn database(&self, name: &str) -> String {
        self.execute("postgres", &format!("CREATE DATABASE {name}"))
            .await;
        self.url(name)
    }

    /// Run SQL as the superuser; rows as text.
    pub async fn execute(&self, db: &str, sql: &str) -> Vec<Vec<String>> {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        let task = tokio::spawn(conn);
        let msgs = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rows = msgs
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        drop(client);
        let _ = task.await;
        rows
    }

    /// Start (again) on the same port and data.
    pub async fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.path().join(format!(
            "postgres-{}.log",
            std::fs::read_dir(self.dir.path()).map(|d| d.count()).unwrap_or(0)
        )))
        .expect("log");
        let child = pg_command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.data())
            .args([
                "-c",
                &format!("listen_addresses={}", self.listen),
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=500",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let url = self.url("postgres");
        wait_for(
            "PostgreSQL to accept connections",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .ok()
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Immediate shutdown (SIGQUIT to the postmaster: every backend exits at once, the way
    /// a crashed database looks to clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = self.postmaster_pid().unwrap_or(c.id() as i32);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let _ = c.wait();
            // Wait until the port is free again.
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(d) = std::fs::read_dir(self.dir.path()) {
            for e in d.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    out += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        out
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.kill();
    }
}
