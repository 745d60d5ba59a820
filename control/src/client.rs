//! A minimal client of the admin API for the `tenantgate tenants ...` commands: one HTTP/1.1
//! request per connection over loopback TCP, JSON in and out. Errors come back as the API's
//! own `{"error": ...}` message.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::{Error, Result};

/// Talks to one admin listener with one token.
pub struct AdminClient {
    addr: String,
    token: String,
}

impl AdminClient {
    /// A client of the admin API on `addr` (`host:port`).
    pub fn new(addr: &str, token: &str) -> Self {
        AdminClient {
            addr: addr.to_owned(),
            token: token.to_owned(),
        }
    }

    /// Send a request; on a 2xx status return the JSON body (`null` when empty), else the
    /// API's error message.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let unreachable =
            |e: std::io::Error| Error::Unavailable(format!("admin API at {}: {e}", self.addr));
        let mut s = TcpStream::connect(&self.addr).map_err(unreachable)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(unreachable)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(unreachable)?;
        s.write_all(body.as_bytes()).map_err(unreachable)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(unreachable)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| Error::Unavailable("admin API: truncated answer".into()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::Unavailable("admin API: malformed answer".into()))?;
        let json: serde_json::Value = if body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body).map_err(|e| {
                Error::Internal(format!("admin API answered {status} with non-JSON: {e}"))
            })?
        };
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let code = json["error"]["code"].as_str().unwrap_or("error").to_owned();
        let message = json["error"]["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_owned();
        Err(match status {
            404 => Error::Invalid {
                code: "not_found",
                message,
            },
            409 => Error::Conflict(message),
            503 => Error::Unavailable(message),
            400 | 401 | 422 => Error::Invalid {
                code: if status == 401 {
                    "unauthorized"
                } else {
                    "invalid"
                },
                message: format!("{code}: {message}"),
            },
            _ => Error::Internal(format!("{status} {code}: {message}")),
        })
    }
}
