//! demo-storefront: a tiny themed storefront page server. The quickstart routes two demo
//! hostnames to two of these; later it becomes the locally built tenant image used by
//! provisioning. It answers `/` with the store's page, `/healthz` with `ok`, and
//! `/api/store` with the store's name, theme and the forwarding headers it received (handy to
//! see what the proxy passes on).

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

fn page(args: &Args) -> String {
    let t = theme(&args.theme);
    let name = escape(&args.name);
    let items: String = t
        .products
        .iter()
        .map(|(p, price)| format!("<li><span>{p}</span><b>${price}</b></li>"))
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

async fn handle(
    args: Arc<Args>,
    html: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from(html.to_string()),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
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
            Bytes::from_static(b"not found\n"),
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
    let html: Arc<str> = page(&args).into();
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
        let (args, html) = (args.clone(), html.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(args.clone(), html.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
