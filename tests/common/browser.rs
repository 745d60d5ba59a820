//! A real browser for the dashboard tests: Debian's `chromium`, headless, driven over
//! WebDriver by `chromedriver` (fantoccini). `*.platform.test` resolves to 127.0.0.1 inside
//! the browser, so a store opens through the proxy as a visitor would open it.
//! Screenshots go to `target/dashboard-screenshots/` for people to look at.
//! Fails (never skips) when chromium or chromedriver cannot start.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::{free_port, wait_for};

/// WebDriver's key codes.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

/// A headless Chromium under chromedriver.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a browser session.
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is required");
        let profile = tempfile::tempdir().expect("tempdir");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1360,1000",
                    "--no-proxy-server",
                    "--host-resolver-rules=MAP *.platform.test 127.0.0.1",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_for(
            "chromedriver to start a browser",
            Duration::from_secs(30),
            || {
                let caps = caps.clone();
                let url = url.clone();
                async move {
                    ClientBuilder::rustls()
                        .expect("rustls connector")
                        .capabilities(caps)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Open `url`. Chromium aborts a navigation with ERR_NETWORK_CHANGED when an interface
    /// appears (Docker adds one per tenant network), so a navigation that ends on the
    /// browser's own error page is tried again.
    pub async fn goto(&self, url: &str) {
        wait_for(
            &format!("the browser to open {url}"),
            Duration::from_secs(20),
            || async {
                self.client.goto(url).await.ok()?;
                let doc = self.eval("return document.documentURI").await;
                (!doc.as_str().unwrap_or("").starts_with("chrome-error:")).then_some(())
            },
        )
        .await;
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.expect("url").to_string()
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("source")
    }

    /// Type `text` into the field matching `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Keys sent to whatever has the focus.
    pub async fn keys(&self, keys: &str) {
        self.client
            .active_element()
            .await
            .expect("focused element")
            .send_keys(keys)
            .await
            .expect("keys");
    }

    /// Run `script` in the page and return its value.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Run `script` in the page, `None` when it could not run (the page is loading).
    pub async fn try_eval(&self, script: &str) -> Option<serde_json::Value> {
        self.client.execute(script, vec![]).await.ok()
    }

    /// Wait until the page's text contains `needle`; returns the text.
    pub async fn wait_text(&self, needle: &str, deadline: Duration) -> String {
        wait_for(
            &format!("the page to show {needle:?}"),
            deadline,
            || async {
                // The page may be replaced between two looks (a form posted, a redirect).
                let body = self.body_text().await?;
                body.contains(needle).then_some(body)
            },
        )
        .await
    }

    /// Fill `fields`, submit with the button at `css` and wait for `needle` on the page it
    /// leads to. Chromium aborts navigations in flight with ERR_NETWORK_CHANGED when a
    /// network interface comes or goes on this host (Docker adds and removes one per
    /// container), sometimes before the request left: then `then` is opened, and when it
    /// does not show `needle` within a few seconds the form is sent again (at most three
    /// times; every action used this way is idempotent in its effect).
    pub async fn submit(
        &self,
        fields: &[(&str, &str)],
        css: &str,
        needle: &str,
        then: &str,
        deadline: Duration,
    ) {
        for attempt in 1..=3 {
            for (field, value) in fields {
                self.fill(field, value).await;
            }
            self.click(css).await;
            let shown = wait_for(&format!("the answer to {css}"), deadline, || async {
                // A script waits while the answer is still on its way; a look may time out.
                let doc = self.try_eval("return document.documentURI").await?;
                if doc.as_str().unwrap_or("").starts_with("chrome-error:") {
                    return Some(false);
                }
                let alert = self
                    .try_eval("const a = document.querySelector('[role=alert]'); return a ? a.innerText : ''")
                    .await?;
                let alert = alert.as_str().unwrap_or("");
                assert!(alert.is_empty(), "{css}: the page says {alert:?}");
                self.body_text().await?.contains(needle).then_some(true)
            })
            .await;
            if shown {
                return;
            }
            self.goto(then).await;
            let wait = if attempt == 3 {
                deadline
            } else {
                Duration::from_secs(5)
            };
            let start = std::time::Instant::now();
            while start.elapsed() < wait {
                if self.body_text().await.is_some_and(|b| b.contains(needle)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        panic!("{css}: the page never showed {needle:?}");
    }

    /// The page's text, if there is a page to read.
    async fn body_text(&self) -> Option<String> {
        let body = self
            .client
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .ok()?;
        body.as_str().map(str::to_owned)
    }

    /// Save a screenshot as `target/dashboard-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// Where screenshots are kept.
pub fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots")
}
