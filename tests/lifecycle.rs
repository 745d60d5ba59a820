//! Process lifecycle: SIGTERM drains in-flight requests and exits; a graceful binary upgrade
//! (new process with `--upgrade`, then SIGQUIT to the old one) loses no request under load.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal");
}

/// Wait (polling, bounded) until the child exits; its exit status.
async fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    wait_for(what, Duration::from_secs(30), || {
        let r = child.try_wait().expect("try_wait");
        async move { r }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let slow = Backend::start("slow").await;
    let mut tg = Tenantgate::new()
        .route(&["a.test"], &[slow.addr])
        .start()
        .await;

    let client = tg.http_client();
    let url = format!("http://{}/slow/700", tg.http);
    let in_flight =
        tokio::spawn(async move { client.get(url).header("host", "a.test").send().await });
    wait_for(
        "the request to reach the backend",
        Duration::from_secs(5),
        || async { (slow.hits() == 1).then_some(()) },
    )
    .await;
    signal(tg.pid(), Signal::SIGTERM);

    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    let status = wait_exit(tg.child_mut(), "tenantgate to exit after SIGTERM").await;
    assert!(status.success(), "exit status {status:?}\n{}", tg.logs());
    assert!(
        tokio::net::TcpStream::connect(tg.http).await.is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load_fails_no_request() {
    let a = Backend::start("a").await;
    let mut tg = Tenantgate::new()
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let old_pid = tg.pid();

    // Bounded load: 4 workers, new connection per request (so every request exercises the
    // listening socket that is being handed over), until told to stop or 20 s pass.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
        let url = format!("http://{}/", tg.http);
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
                match client.get(&url).header("host", "a.test").send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => errors
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }
    wait_for("load to run", Duration::from_secs(10), || async {
        (ok.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;

    // 1. the new binary waits for the sockets; 2. SIGQUIT hands them over.
    let new = tg.spawn(true);
    // Give the new process time to start listening on the upgrade socket before SIGQUIT;
    // Pingora's sender also retries for a few seconds if it is not there yet.
    let sock = tg.dir.path().join("upgrade.sock");
    wait_for(
        "the new process to wait on the upgrade socket",
        Duration::from_secs(20),
        || {
            let exists = sock.exists();
            async move { exists.then_some(()) }
        },
    )
    .await;
    signal(old_pid, Signal::SIGQUIT);
    let mut old = tg.replace_child(new).expect("old child");
    let status = wait_exit(&mut old, "the old process to exit after SIGQUIT").await;
    assert!(status.success(), "old process exit status {status:?}");

    // Load keeps flowing through the new process.
    let after = ok.load(Ordering::Relaxed);
    wait_for(
        "requests served by the new process",
        Duration::from_secs(10),
        || async { (ok.load(Ordering::Relaxed) > after + 50).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}\n{}",
        errors.len(),
        ok.load(Ordering::Relaxed) + errors.len(),
        &errors[..errors.len().min(5)],
        tg.logs()
    );
    assert!(
        tg.child_mut().try_wait().unwrap().is_none(),
        "new process must keep running"
    );
    assert!(
        admin_get(tg.admin, "/healthz").await.is_some(),
        "admin listener handed over too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_clear_error_not_a_silent_half_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .arg("serve")
            .env("TENANTGATE_HTTP_LISTEN", addr.to_string())
            .env(
                "TENANTGATE_ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env_remove("TENANTGATE_CONFIG")
            .output(),
    )
    .await
    .expect("tenantgate must exit, not hang")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("proxy.http_listen: cannot listen on {addr}")),
        "{err}"
    );
}
