//! demo-storefront: a tiny themed storefront page server. The quickstart routes two demo
//! hostnames to two of these, and it is the locally built tenant image of the
//! `demo-storefront` blueprint. It answers `/` with the store's page, `/healthz` with `ok`, and
//! `/api/store` with the store's name, theme and the forwarding headers it received (handy to
//! see what the proxy passes on).
//!
//! With `DATABASE_URL` set (a provisioned tenant), the products live in the tenant's own
//! schema: the table `products` is created and seeded with the theme's products on first
//! start, and every page is rendered from it, so what a page shows is what that tenant's
//! database holds. `/healthz` then answers 503 until the database has been reached.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Command line of the demo storefront.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "STORE_LISTEN", default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// The store's display name.
    #[arg(long, env = "STORE_NAME", default_value = "Demo Store")]
    name: String,
    /// Theme: ocean, sunset, forest or mono.
    #[arg(long, env = "STORE_THEME", default_value = "ocean")]
    theme: String,
    /// The tenant's database (`postgres://...`); empty: the theme's built-in products.
    #[arg(long, env = "DATABASE_URL", default_value = "", hide_env_values = true)]
    database_url: String,
}

/// Where the products come from.
enum Catalog {
    /// The theme's built-in list, rendered once.
    Static(Arc<str>),
    /// The tenant's `products` table; `None` until the database has been reached.
    Database(tokio::sync::RwLock<Option<tokio_postgres::Client>>),
}

struct Theme {
    bg: &'static str,
    fg: &'static str,
    accent: &'static str,
    products: &'static [(&'static str, &'static str)],
}

fn theme(name: &str) -> Theme {
    match name {
        "sunset" => Theme {
            bg: "#fff7ed",
            fg: "#431407",
            accent: "#ea580c",
            products: &[
                ("Linen Shirt", "49.00"),
                ("Canvas Tote", "19.00"),
                ("Straw Hat", "29.00"),
            ],
        },
        "forest" => Theme {
            bg: "#f0fdf4",
            fg: "#052e16",
            accent: "#16a34a",
            products: &[
                ("Trail Boots", "129.00"),
                ("Wool Socks", "15.00"),
                ("Rain Shell", "99.00"),
            ],
        },
        "mono" => Theme {
            bg: "#fafafa",
            fg: "#0a0a0a",
            accent: "#404040",
            products: &[
                ("Black Tee", "25.00"),
                ("Grey Hoodie", "59.00"),
                ("White Cap", "22.00"),
            ],
        },
        _ => Theme {
            bg: "#f0f9ff",
            fg: "#082f49",
            accent: "#0284c7",
            products: &[
                ("Headphones", "89.00"),
                ("USB-C Charger", "24.00"),
                ("Smart Speaker", "129.00"),
            ],
        },
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(args: &Args, products: &[(String, String)]) -> String {
    let t = theme(&args.theme);
    let name = escape(&args.name);
    let items: String = products
        .iter()
        .map(|(p, price)| {
            format!(
                "<li><span>{}</span><b>${}</b></li>",
                escape(p),
                escape(price)
            )
        })
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{name}</title>\
         <style>body{{margin:0;font:16px/1.5 system-ui,sans-serif;background:{bg};color:{fg}}}\
         header{{background:{accent};color:#fff;padding:2rem}}h1{{margin:0}}main{{padding:2rem}}\
         ul{{list-style:none;padding:0;display:grid;gap:1rem;grid-template-columns:repeat(auto-fill,minmax(12rem,1fr))}}\
         li{{background:#fff;border-radius:.5rem;padding:1rem;display:flex;justify-content:space-between;\
         box-shadow:0 1px 3px #0002}}</style></head><body><header><h1>{name}</h1>\
         <p>Theme: {theme}</p></header><main><h2>Products</h2><ul>{items}</ul></main></body></html>\n",
        bg = t.bg,
        fg = t.fg,
        accent = t.accent,
        theme = escape(&args.theme),
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn builtin(theme_name: &str) -> Vec<(String, String)> {
    theme(theme_name)
        .products
        .iter()
        .map(|(p, price)| ((*p).to_owned(), (*price).to_owned()))
        .collect()
}

/// Create and seed the tenant's `products` table (once), through its own role and schema.
async fn prepare(client: &tokio_postgres::Client, theme_name: &str) -> Result<(), String> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS products (\
             position integer PRIMARY KEY, name text NOT NULL, price text NOT NULL)",
        )
        .await
        .map_err(|e| format!("create products: {e}"))?;
    for (i, (name, price)) in builtin(theme_name).iter().enumerate() {
        let pos = i32::try_from(i).unwrap_or(i32::MAX);
        client
            .execute(
                "INSERT INTO products (position, name, price) VALUES ($1, $2, $3) \
                 ON CONFLICT (position) DO NOTHING",
                &[&pos, name, price],
            )
            .await
            .map_err(|e| format!("seed products: {e}"))?;
    }
    Ok(())
}

/// Connect to the tenant database, retrying until it answers, then keep the connection
/// (reconnecting when it drops).
async fn connect_forever(args: Arc<Args>, catalog: Arc<Catalog>) {
    let Catalog::Database(slot) = &*catalog else {
        return;
    };
    let mut config: tokio_postgres::Config = match args.database_url.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("DATABASE_URL: {e}");
            return;
        }
    };
    config.connect_timeout(std::time::Duration::from_secs(3));
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                // The connection does the client's I/O: it runs beside everything else.
                let mut conn = tokio::spawn(conn);
                tokio::select! {
                    prepared = prepare(&client, &args.theme) => match prepared {
                        Ok(()) => {
                            *slot.write().await = Some(client);
                            if let Ok(Err(e)) = (&mut conn).await {
                                eprintln!("database connection lost: {e}");
                            }
                            *slot.write().await = None;
                        }
                        Err(e) => eprintln!("{e}"),
                    },
                    ended = &mut conn => eprintln!("database connection ended: {ended:?}"),
                }
            }
            Err(e) => eprintln!("database not reachable yet: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn products(
    slot: &tokio::sync::RwLock<Option<tokio_postgres::Client>>,
) -> Option<Vec<(String, String)>> {
    let guard = slot.read().await;
    let rows = guard
        .as_ref()?
        .query("SELECT name, price FROM products ORDER BY position", &[])
        .await
        .ok()?;
    Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn handle(
    args: Arc<Args>,
    catalog: Arc<Catalog>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        // The request's body, back byte for byte (what a checkout's POST goes through).
        "/api/echo" => {
            use http_body_util::BodyExt;
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            return Ok(Response::new(Full::new(body)));
        }
        // A slow answer (`?ms=N`, at most a minute): a request that stays in flight.
        "/api/slow" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000)
                .min(60_000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            return Ok(Response::new(Full::new(Bytes::from(format!(
                "slow done after {ms} ms\n"
            )))));
        }
        // An upgraded connection (like a WebSocket) that echoes what it is sent until the
        // client closes it.
        "/ws" => {
            let upgraded = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgraded.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(hyper::header::CONNECTION, "upgrade".parse().expect("value"));
            h.insert(hyper::header::UPGRADE, "websocket".parse().expect("value"));
            return Ok(resp);
        }
        _ => {}
    }
    let unavailable = (
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        Bytes::from_static(b"database not reachable\n"),
    );
    let (status, ctype, body) = match req.uri().path() {
        "/" => match &*catalog {
            Catalog::Static(html) => (
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from(html.to_string()),
            ),
            Catalog::Database(slot) => match products(slot).await {
                Some(list) => (
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    Bytes::from(page(&args, &list)),
                ),
                None => unavailable,
            },
        },
        "/healthz" => match &*catalog {
            Catalog::Database(slot) if slot.read().await.is_none() => unavailable,
            _ => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        },
        "/api/store" => {
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            };
            let body = format!(
                "{{\"name\":{},\"theme\":{},\"host\":{},\"x_forwarded_for\":{},\"x_forwarded_proto\":{},\"x_request_id\":{}}}\n",
                json_str(&args.name),
                json_str(&args.theme),
                json_str(h("host")),
                json_str(h("x-forwarded-for")),
                json_str(h("x-forwarded-proto")),
                json_str(h("x-request-id")),
            );
            (StatusCode::OK, "application/json", Bytes::from(body))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from(format!("not found ({})\n", args.name)),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Arc::new(Args::parse());
    let catalog = Arc::new(if args.database_url.is_empty() {
        Catalog::Static(page(&args, &builtin(&args.theme)).into())
    } else {
        Catalog::Database(tokio::sync::RwLock::new(None))
    });
    tokio::spawn(connect_forever(args.clone(), catalog.clone()));
    // As a container's first process nothing else handles SIGTERM: stop at once (the proxy
    // has already been switched away from a container being stopped).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        term.recv().await;
        std::process::exit(0);
    });
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "demo-storefront {:?} ({}) listening on {}",
        args.name, args.theme, args.listen
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let (args, catalog) = (args.clone(), catalog.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(args.clone(), catalog.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}
