//! The operators' dashboard on the admin listener: sign-in, sessions, CSRF, escaping and
//! the audit trail over plain HTTP; then the whole life of a store driven from a real
//! browser (Chromium over WebDriver) on the real Docker Engine and PostgreSQL, with
//! screenshots of every page under `target/dashboard-screenshots/`.
//! Fails (never skips) when Chromium, Docker or PostgreSQL cannot start.

mod common;

use std::time::Duration;

use common::browser::{Browser, ENTER, TAB};
use common::docker::demo_image;
use common::postgres::PgCluster;
use common::*;

const PASSWORD: &str = "correct horse battery staple";

/// Every page of the dashboard behind sign-in.
const PAGES: [&str; 7] = [
    "/",
    "/stores",
    "/stores/new",
    "/domains",
    "/certificates",
    "/audit",
    "/fleet",
];

/// A plain HTTP client of the dashboard that keeps one session cookie.
struct Operator {
    base: String,
    client: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token the page carries for its forms.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf-token\" content=\"")
            .unwrap_or_else(|| panic!("no csrf token in {}", self.body));
        let rest = &self.body[at + 27..];
        rest[..rest.find('"').expect("end")].to_owned()
    }
}

impl Operator {
    fn new(tg: &Running) -> Operator {
        Operator {
            base: tg.dashboard(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        };
        let r = req.send().await.expect("dashboard request");
        Page {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.expect("body"),
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(self.client.post(format!("{}{path}", self.base)).form(form))
            .await
    }

    /// Sign in; keeps the cookie on success.
    async fn sign_in(&mut self, name: &str, password: &str) -> Page {
        let p = self
            .post("/login", &[("username", name), ("password", password)])
            .await;
        if p.status == 303 {
            let set = p.header("set-cookie");
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Strict"),
                "{set}"
            );
            self.cookie = Some(set.split(';').next().expect("cookie").to_owned());
        }
        p
    }
}

async fn node() -> Running {
    let tg = Tenantgate::new().section(PLATFORM_TEST).start().await;
    tg.add_operator("alice", PASSWORD);
    tg
}

#[tokio::test]
async fn every_page_needs_a_signed_in_operator() {
    let tg = node().await;
    let mut alice = Operator::new(&tg);
    for path in PAGES {
        let p = alice.get(path).await;
        assert_eq!(p.status, 303, "{path}");
        assert!(p.header("location").starts_with("/login"), "{path}");
    }
    let p = alice.get("/login").await;
    assert_eq!(p.status, 200);
    assert_eq!(
        p.header("content-security-policy"),
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    );
    assert!(!p.body.contains("<script>"), "no inline script");
    assert!(p.body.contains("<label for=\"username\">") && p.body.contains("name=\"password\""));

    let p = alice.sign_in("alice", "not the password").await;
    assert_eq!(p.status, 401);
    assert!(
        p.body.contains("The name or the password is wrong."),
        "{}",
        p.body
    );
    let p = alice.sign_in("nobody", PASSWORD).await;
    assert_eq!(p.status, 401, "an unknown name reads like a wrong password");
    assert!(alice.cookie.is_none());

    let p = alice.sign_in("alice", PASSWORD).await;
    assert_eq!(p.status, 303);
    assert_eq!(p.header("location"), "/");
    for path in PAGES {
        let p = alice.get(path).await;
        assert_eq!(p.status, 200, "{path}: {}", p.body);
        assert!(
            p.body
                .contains("<span class=\"operator\" title=\"Signed in\">alice</span>"),
            "{path}"
        );
        assert_eq!(p.header("cache-control"), "no-store", "{path}");
        assert!(p
            .header("content-security-policy")
            .starts_with("default-src 'self'; frame-ancestors 'none'"));
    }
    // The fleet page shows this node, which registered itself.
    let fleet = alice.get("/fleet").await;
    assert!(fleet.body.contains("serve"), "{}", fleet.body);
    // `next` sends the operator back where they were, never to another site.
    let mut bob = Operator::new(&tg);
    let p = bob
        .post(
            "/login",
            &[
                ("username", "alice"),
                ("password", PASSWORD),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(p.header("location"), "/");
    bob.cookie = None;
    let p = bob
        .post(
            "/login",
            &[
                ("username", "alice"),
                ("password", PASSWORD),
                ("next", "/audit"),
            ],
        )
        .await;
    assert_eq!(p.header("location"), "/audit");
}

#[tokio::test]
async fn state_changes_need_the_csrf_token_and_name_the_operator() {
    let tg = node().await;
    let mut alice = Operator::new(&tg);
    alice.sign_in("alice", PASSWORD).await;
    let backend = Backend::start("one").await;
    let t = tg.create_tenant("one", &[backend.addr]).await;
    let id = t["id"].as_str().expect("id").to_owned();

    // A dashboard form without its token, or with another session's, changes nothing.
    let p = alice.post(&format!("/stores/{id}/suspend"), &[]).await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(p.body.contains("CSRF"), "{}", p.body);
    let p = alice
        .post(
            &format!("/stores/{id}/suspend"),
            &[("csrf", &"0".repeat(64))],
        )
        .await;
    assert_eq!(p.status, 403);
    let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(t["status"], "active");

    // The JSON API with the session cookie: reads work, writes need X-CSRF-Token.
    let cookie = alice.cookie.clone().expect("cookie");
    let api = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{}/v1/tenants/{id}/suspend", tg.admin);
    let r = api
        .post(&url)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "csrf_failed");
    let r = api
        .get(format!("http://{}/v1/tenants/{id}", tg.admin))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 200);

    // With the token, from the store's page: done, and audited under alice.
    let page = alice.get(&format!("/stores/{id}")).await;
    let csrf = page.csrf();
    let p = alice
        .post(&format!("/stores/{id}/suspend"), &[("csrf", &csrf)])
        .await;
    assert_eq!(p.status, 303);
    assert!(
        p.header("location").contains("done="),
        "{}",
        p.header("location")
    );
    tg.wait_status("one.platform.test", 503).await;
    let r = api
        .post(format!("http://{}/v1/tenants/{id}/resume", tg.admin))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 200);
    tg.wait_backend("one.platform.test", "one").await;

    let (_, audit) = tg.api("GET", "/v1/audit", None).await;
    let by = |action: &str| {
        audit
            .as_array()
            .expect("events")
            .iter()
            .find(|e| e["action"] == action && e["target"] == id.as_str())
            .map(|e| e["actor"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(by("tenant.suspend").as_deref(), Some("alice"));
    assert_eq!(by("tenant.resume").as_deref(), Some("alice"));
    assert_eq!(by("tenant.create").as_deref(), Some("admin-api"));
    // The audit page filters by operator.
    let p = alice.get("/audit?actor=alice").await;
    assert!(
        p.body.contains("tenant.suspend") && !p.body.contains("tenant.create"),
        "{}",
        p.body
    );
}

#[tokio::test]
async fn what_tenants_name_is_escaped() {
    let tg = node().await;
    let mut alice = Operator::new(&tg);
    alice.sign_in("alice", PASSWORD).await;
    let backend = Backend::start("x").await;
    let (s, t) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(serde_json::json!({
                "slug": "xss",
                "name": "<script>alert(1)</script>",
                "upstreams": [backend.addr.to_string()],
            })),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let id = t["id"].as_str().expect("id");
    for path in [
        "/stores".to_owned(),
        format!("/stores/{id}"),
        "/stores?q=%3Cscript".to_owned(),
    ] {
        let p = alice.get(&path).await;
        assert_eq!(p.status, 200, "{path}");
        assert!(
            p.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {}",
            p.body
        );
        assert!(!p.body.contains("<script>alert"), "{path}");
    }
}

#[tokio::test]
async fn sign_out_and_removal_end_sessions_and_failures_are_slowed() {
    let tg = node().await;
    let mut alice = Operator::new(&tg);
    alice.sign_in("alice", PASSWORD).await;
    let home = alice.get("/").await;
    assert_eq!(home.status, 200);
    let old = alice.cookie.clone();
    let p = alice.post("/logout", &[("csrf", &home.csrf())]).await;
    assert_eq!(p.status, 303);
    assert!(p.header("set-cookie").contains("Max-Age=0"));
    // The old cookie no longer opens anything.
    alice.cookie = old;
    assert_eq!(alice.get("/").await.status, 303);

    // Removing the operator ends their live sessions at once.
    alice.cookie = None;
    alice.sign_in("alice", PASSWORD).await;
    assert_eq!(alice.get("/").await.status, 200);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["operators", "remove", "alice", "--config"])
        .arg(&tg.config)
        .output()
        .expect("operators remove");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(alice.get("/").await.status, 303);

    // Five wrong passwords; then even the right one waits.
    tg.add_operator("bob", PASSWORD);
    let mut bob = Operator::new(&tg);
    for _ in 0..5 {
        assert_eq!(bob.sign_in("bob", "wrong password!").await.status, 401);
    }
    let p = bob.sign_in("bob", PASSWORD).await;
    assert_eq!(p.status, 429, "{}", p.body);
    assert!(p.body.contains("Too many failed sign-ins"), "{}", p.body);
    assert!(bob.cookie.is_none());
    // The address is slowed too, for any name.
    tg.add_operator("carol", PASSWORD);
    let mut carol = Operator::new(&tg);
    assert_eq!(carol.sign_in("carol", PASSWORD).await.status, 429);
}

/// What the browser sees of the store's status badge.
async fn store_status(b: &Browser) -> String {
    b.eval("return document.querySelector('#store-status').dataset.status || document.querySelector('#store-status').textContent.trim()")
        .await
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn wait_store_status(b: &Browser, status: &str, deadline: Duration) {
    wait_for(
        &format!("the store page to show {status}"),
        deadline,
        || async { (store_status(b).await == status).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_runs_a_store_from_the_browser() {
    demo_image("tenantgate/demo-storefront:latest");
    let pg = PgCluster::start_for_containers().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    let ca = TestCa::new();
    let tg = Tenantgate::provisioning(
        &ca,
        &pg.url("tenants"),
        SHIPPED_BLUEPRINTS,
        "reconcile_seconds = 1\ndrain_seconds = 1\n",
    )
    .admin("traffic_report_seconds = 1")
    .start()
    .await;
    tg.add_operator("alice", PASSWORD);
    let b = Browser::start().await;
    let base = tg.dashboard();

    // Sign in: a wrong password first.
    b.goto(&format!("{base}/stores/new")).await;
    assert!(
        b.url().await.contains("/login?next=/stores/new"),
        "{}",
        b.url().await
    );
    b.screenshot("01-login").await;
    b.fill("#username", "alice").await;
    b.fill("#password", "wrong password!").await;
    b.click("button[type=submit]").await;
    b.wait_text(
        "The name or the password is wrong.",
        Duration::from_secs(10),
    )
    .await;
    b.fill("#password", PASSWORD).await;
    b.click("button[type=submit]").await;
    b.wait_text("Create store", Duration::from_secs(10)).await;
    assert!(b.url().await.ends_with("/stores/new"));

    // Every input of the form has a label.
    let unlabeled = b
        .eval(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]\
             .filter(e => !(e.id && document.querySelector('label[for=\"' + e.id + '\"]')) && !e.getAttribute('aria-label'))\
             .map(e => e.name)",
        )
        .await;
    assert_eq!(unlabeled, serde_json::json!([]), "inputs without a label");

    // The create form with the keyboard alone: the slug is checked as it is typed.
    b.click("#slug").await;
    b.keys("admin").await;
    b.wait_text("reserved", Duration::from_secs(5)).await;
    b.fill("#slug", "").await;
    b.keys("alpha").await;
    b.wait_text("alpha.platform.test is free", Duration::from_secs(5))
        .await;
    b.screenshot("02-new-store").await;
    b.keys(TAB).await;
    b.keys("Alpha Outfitters").await;
    b.keys(TAB).await; // blueprint: the only one, demo-storefront
    b.keys(TAB).await; // theme
    b.keys("sunset").await;
    b.keys(TAB).await; // the submit button
    b.keys(ENTER).await;

    // Each step shows live until the store is active, with a link through the proxy.
    wait_for("the store's page", Duration::from_secs(10), || async {
        b.url().await.contains("/stores/t_").then_some(())
    })
    .await;
    b.screenshot("03-provisioning").await;
    wait_store_status(&b, "active", Duration::from_secs(90)).await;
    b.wait_text("live:", Duration::from_secs(30)).await;
    b.screenshot("04-store-active").await;
    let store_page = b.url().await;
    let link = b
        .eval("return document.querySelector('#store-live a').href")
        .await;
    let link = link.as_str().expect("live link").to_owned();
    assert!(link.starts_with("http://alpha.platform.test:"), "{link}");
    b.goto(&link).await;
    b.wait_text("Alpha Outfitters", Duration::from_secs(10))
        .await;
    b.screenshot("05-storefront").await;

    // Attach a custom domain: pending, with the TXT record to publish.
    b.goto(&store_page).await;
    b.fill("#hostname", "www.alpha-shop.test").await;
    b.click("form[action$='/domain'] button").await;
    let text = b
        .wait_text("www.alpha-shop.test attached", Duration::from_secs(10))
        .await;
    assert!(
        text.contains("_tenantgate.www.alpha-shop.test TXT"),
        "{text}"
    );
    assert!(text.contains("pending verification"), "{text}");
    b.screenshot("06-domain-pending").await;

    // Suspend: visitors get the 503 page; resume.
    b.submit(
        &[],
        "form[action$='/suspend'] button",
        "suspended",
        &store_page,
        Duration::from_secs(30),
    )
    .await;
    let client = tg.http_client();
    wait_for("the 503 page", Duration::from_secs(10), || async {
        let r = client
            .get(format!("http://{}/", tg.http))
            .header("host", "alpha.platform.test")
            .send()
            .await
            .ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    b.screenshot("07-suspended").await;
    b.submit(
        &[],
        "form[action$='/resume'] button",
        "resumed: containers started",
        &store_page,
        Duration::from_secs(60),
    )
    .await;
    tg.wait_status("alpha.platform.test", 200).await;

    // Redeploy with another theme; the storefront follows.
    let other = b
        .eval("return [...document.querySelectorAll('#redeploy-theme option')].map(o => o.value).find(v => v !== 'sunset')")
        .await;
    let other = other.as_str().expect("another theme").to_owned();
    b.eval(&format!(
        "document.querySelector('#redeploy-theme').value = '{other}'; return null"
    ))
    .await;
    b.click("form[action$='/redeploy'] button").await;
    b.wait_text("Redeploy started", Duration::from_secs(10))
        .await;
    wait_for(
        "the new theme through the proxy",
        Duration::from_secs(90),
        || async {
            let body = tg
                .http_client()
                .get(format!("http://{}/", tg.http))
                .header("host", "alpha.platform.test")
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            body.contains(&format!("Theme: {other}")).then_some(())
        },
    )
    .await;

    // The old generation leaves (its interface too), live in the timeline.
    b.goto(&store_page).await;
    b.wait_text("generation 1 drained and removed", Duration::from_secs(30))
        .await;

    // Scale, then the events say so.
    b.submit(
        &[("#scale-replicas", "2")],
        "form[action$='/scale'] button",
        "web to 2 replicas",
        &store_page,
        Duration::from_secs(90),
    )
    .await;
    wait_for("two web containers on the page", Duration::from_secs(30), || async {
        b.goto(&store_page).await;
        let rows = b
            .eval("return [...document.querySelectorAll('table.list tbody tr')].filter(r => r.textContent.includes('running')).length")
            .await;
        (rows.as_u64() == Some(2)).then_some(())
    })
    .await;
    b.screenshot("08-scaled").await;

    // Some traffic for the charts, through the proxy.
    for i in 0..150 {
        let path = if i % 10 == 0 { "/missing" } else { "/" };
        let _ = tg.get("alpha.platform.test", path).await;
    }
    b.goto(&format!("{base}/")).await;
    wait_for(
        "the overview to chart the traffic",
        Duration::from_secs(30),
        || async {
            let summary = b
                .try_eval("return document.getElementById('traffic-summary').textContent")
                .await?;
            (!summary.as_str()?.starts_with("0.0 req/s")).then_some(())
        },
    )
    .await;

    // The other pages, for people to look at.
    for (name, path) in [
        ("09-overview", "/"),
        ("10-stores", "/stores"),
        ("11-domains", "/domains"),
        ("12-certificates", "/certificates"),
        ("13-audit", "/audit"),
        ("14-fleet", "/fleet"),
    ] {
        b.goto(&format!("{base}{path}")).await;
        b.wait_text("Sign out", Duration::from_secs(10)).await;
        b.screenshot(name).await;
    }
    let audit = b.text("body").await;
    assert!(audit.contains("alice"), "{audit}");

    // Idle periods from the store's page: frozen after 2 s without traffic, never stopped;
    // the page follows the store to sleep.
    b.goto(&store_page).await;
    b.submit(
        &[("#idle-pause", "2"), ("#idle-stop", "")],
        "form[action$='/sleep'] button",
        "frozen after 2 s idle (its own)",
        &store_page,
        Duration::from_secs(30),
    )
    .await;
    wait_store_status(&b, "paused", Duration::from_secs(60)).await;
    b.goto(&store_page).await;
    b.wait_text("frozen after 2 s idle", Duration::from_secs(10))
        .await;
    b.screenshot("15-store-paused").await;
    b.eval("document.querySelector('section.actions').scrollIntoView(); return true")
        .await;
    b.screenshot("16-store-actions").await;

    // Delete: the button waits for the slug typed exactly.
    b.goto(&store_page).await;
    let disabled = b
        .eval("return document.querySelector('form[action$=\"/delete\"] button').disabled")
        .await;
    assert_eq!(disabled, serde_json::json!(true));
    b.submit(
        &[("#confirm", "alpha")],
        "form[action$='/delete'] button",
        "deleted",
        &store_page,
        Duration::from_secs(60),
    )
    .await;
    tg.wait_status("alpha.platform.test", 404).await;

    // Every dashboard action is audited under the operator.
    let (_, events) = tg.api("GET", "/v1/audit", None).await;
    for action in [
        "tenant.create",
        "domain.attach",
        "tenant.suspend",
        "tenant.resume",
        "tenant.redeploy",
        "tenant.scale",
        "tenant.sleep_policy",
        "tenant.delete",
    ] {
        assert!(
            events
                .as_array()
                .expect("events")
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "alice"),
            "{action} by alice: {events}"
        );
    }
    b.close().await;
}

#[tokio::test]
async fn traffic_reaches_the_charts_and_the_stores_list() {
    let tg = Tenantgate::new()
        .section(PLATFORM_TEST)
        .admin("traffic_report_seconds = 1")
        .start()
        .await;
    tg.add_operator("alice", PASSWORD);
    let mut alice = Operator::new(&tg);
    alice.sign_in("alice", PASSWORD).await;
    let ok = Backend::start("ok").await;
    let busy = tg.create_tenant("busy", &[ok.addr]).await;
    let quiet = tg.create_tenant("quiet", &[ok.addr]).await;
    // A new route reaches the proxy within milliseconds, not before the API answers.
    tg.wait_status("busy.platform.test", 200).await;
    for _ in 0..30 {
        assert_eq!(tg.get("busy.platform.test", "/").await.status(), 200);
    }
    // A 502: the upstream is gone.
    let gone = tg
        .create_tenant(
            "gone",
            &[std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))],
        )
        .await;
    tg.wait_status("gone.platform.test", 502).await;

    // The proxy reports each second; the stores list averages over five minutes.
    let row = |body: &str, id: &str| -> String {
        let at = body.find(&format!("/stores/{id}\"")).expect("row");
        body[at..]
            .split("</tr>")
            .next()
            .expect("row end")
            .to_owned()
    };
    let list = wait_for(
        "the stores list to show traffic",
        Duration::from_secs(30),
        || async {
            let p = alice.get("/stores").await;
            (row(&p.body, busy["id"].as_str()?).contains(">0.10<")
                && row(&p.body, gone["id"].as_str()?).contains("class=\"num bad-text\""))
            .then_some(p.body)
        },
    )
    .await;
    assert!(
        row(&list, quiet["id"].as_str().expect("id")).contains(">0.00<"),
        "a store without traffic shows none"
    );
    // Health at a glance, from the same five minutes.
    assert!(row(&list, busy["id"].as_str().expect("id")).contains(">ok<"));
    assert!(row(&list, gone["id"].as_str().expect("id")).contains(">errors<"));
    assert!(row(&list, quiet["id"].as_str().expect("id")).contains(">idle<"));
    // The overview and the store's page draw the charts.
    let overview = alice.get("/").await;
    assert!(overview.body.contains("Platform traffic, last hour"));
    assert!(overview.body.contains("<polyline"), "{}", overview.body);
    let page = alice
        .get(&format!("/stores/{}", busy["id"].as_str().expect("id")))
        .await;
    assert!(page.body.contains("Traffic, last hour") && page.body.contains("<polyline"));
    // Nothing is written for the idle store.
    let (_, t) = tg
        .api(
            "GET",
            &format!("/v1/tenants/{}", quiet["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(t["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleets_traffic_is_summed_over_its_proxies() {
    let pg = PgCluster::start().await;
    let url = pg.database("fleet_traffic").await;
    let node = |cmd| Tenantgate::fleet_node(cmd, &url).admin("traffic_report_seconds = 1");
    let control = node("control").start().await;
    let proxies = [node("proxy").start().await, node("proxy").start().await];
    control.add_operator("alice", PASSWORD);
    let mut alice = Operator::new(&control);
    alice.sign_in("alice", PASSWORD).await;
    let backend = Backend::start("shop").await;
    let t = control.create_tenant("shop", &[backend.addr]).await;
    let id = t["id"].as_str().expect("id").to_owned();
    // 10 requests through one proxy, 20 through the other.
    for (p, n) in proxies.iter().zip([10, 20]) {
        p.wait_backend("shop.platform.test", "shop").await;
        for _ in 1..n {
            assert_eq!(p.get("shop.platform.test", "/").await.status(), 200);
        }
    }
    // The control node's dashboard shows both proxies' reports summed: 30 requests over the
    // list's five minutes is 0.10 per second.
    wait_for(
        "the fleet's sum on the stores list",
        Duration::from_secs(30),
        || async {
            let p = alice.get("/stores").await;
            let at = p.body.find(&format!("/stores/{id}\""))?;
            let row = p.body[at..].split("</tr>").next()?.to_owned();
            row.contains(">0.10<").then_some(())
        },
    )
    .await;
    let fleet = alice.get("/fleet").await;
    assert_eq!(fleet.body.matches(">proxy<").count(), 2, "{}", fleet.body);
}
