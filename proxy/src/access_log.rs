//! The access log: one JSON line per request, formatted here by hand (no serde, no tracing
//! dispatch) and handed to a writer thread through a bounded queue, so a request never
//! waits for the disk or the terminal.
//!
//! Invariants: a line is formatted once, on the thread that served the request, into one
//! buffer; the writer drains the queue in batches of up to 64 KiB per `write`, polling every
//! few milliseconds, so senders never wake it (no system call on the request's path); when
//! the queue is full the line is dropped and counted
//! (`tenantgate_proxy_access_log_dropped_total`), never waited for. The keys and their order
//! are those of the process log's JSON lines (`target` = `tenantgate::access`), so one parser
//! reads both.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

use crate::service::AccessRecord;

/// Lines queued at most before new ones are dropped.
const QUEUE_LINES: usize = 65_536;

/// The most bytes the writer hands to one `write`.
const BATCH_BYTES: usize = 64 * 1024;

/// How long the writer rests when the queue was empty.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's standard error, beside the process log.
    Stderr,
    /// A file, appended to (created when missing).
    File(PathBuf),
}

/// The access log of one process.
pub struct AccessLog {
    destination: Destination,
    queue: OnceLock<Option<SyncSender<Vec<u8>>>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// A log writing to `destination`, counting dropped lines in `dropped`. The writer
    /// thread starts with the first line.
    pub fn new(destination: Destination, dropped: IntCounter) -> Self {
        AccessLog {
            destination,
            queue: OnceLock::new(),
            dropped,
        }
    }

    /// Log one request.
    pub fn write(&self, r: &AccessRecord<'_>) {
        let Some(queue) = self.queue() else {
            self.dropped.inc();
            return;
        };
        let mut line = Vec::with_capacity(384);
        format_line(&mut line, r, SystemTime::now());
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    fn queue(&self) -> Option<&SyncSender<Vec<u8>>> {
        self.queue
            .get_or_init(|| {
                let out: Box<dyn Write + Send> = match &self.destination {
                    Destination::Stderr => Box::new(std::io::stderr()),
                    Destination::File(path) => match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                    {
                        Ok(f) => Box::new(f),
                        Err(e) => {
                            tracing::error!(
                                "access log {}: cannot open: {e}; lines are dropped",
                                path.display()
                            );
                            return None;
                        }
                    },
                };
                let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || drain(&rx, out))
                    .map_err(|e| tracing::error!("access log writer: {e}; lines are dropped"))
                    .ok()?;
                Some(tx)
            })
            .as_ref()
    }
}

/// The writer: batches of queued lines, one `write` each, until every sender is gone.
fn drain(rx: &Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        let mut closed = false;
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => batch.extend_from_slice(&line),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if batch.is_empty() {
            if closed {
                return;
            }
            std::thread::sleep(IDLE_POLL);
            continue;
        }
        // A failed write (a full disk, a closed terminal) loses this batch, not the process.
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
    }
}

/// Append `r` as one JSON line (with its newline) to `out`.
pub fn format_line(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"client\":\"");
    match r.client.map(|c| (c, c.as_inet())) {
        Some((_, Some(inet))) => address(out, inet),
        // Socket addresses need no escaping.
        Some((c, None)) => {
            let _ = write!(out, "{c}");
        }
        None => {}
    }
    out.extend_from_slice(b"\",\"method\":");
    string(out, r.method);
    out.extend_from_slice(b",\"host\":");
    string(out, r.host);
    out.extend_from_slice(b",\"path\":");
    string(out, r.path);
    out.extend_from_slice(b",\"version\":");
    string(out, r.version);
    out.extend_from_slice(if r.tls {
        b",\"tls\":true,\"status\":"
    } else {
        b",\"tls\":false,\"status\":"
    });
    number(out, u64::from(r.status));
    out.extend_from_slice(b",\"duration_us\":");
    number(
        out,
        u64::try_from(r.elapsed.as_micros()).unwrap_or(u64::MAX),
    );
    out.extend_from_slice(b",\"bytes_sent\":");
    number(out, r.bytes_sent as u64);
    out.extend_from_slice(b",\"route\":");
    string(out, r.route);
    out.extend_from_slice(b",\"upstream\":\"");
    if let Some(u) = &r.upstream {
        address(out, u);
    }
    out.extend_from_slice(b"\",\"request_id\":");
    string(out, r.request_id);
    out.extend_from_slice(b",\"error\":");
    string(out, r.error);
    out.extend_from_slice(b",\"outcome\":");
    string(out, r.outcome);
    out.extend_from_slice(b",\"engine\":");
    string(out, r.engine);
    out.extend_from_slice(b",\"target\":\"tenantgate::access\"}\n");
}

/// `a.b.c.d:port` without the formatting machinery (IPv6 through it).
fn address(out: &mut Vec<u8>, a: &std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            for (i, o) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(out, u64::from(o));
            }
            out.push(b':');
            number(out, u64::from(v4.port()));
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Whether a byte must be escaped in a JSON string.
#[inline]
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f
}

/// A JSON string: quotes, backslashes and control characters escaped; anything else as is
/// (the fields are valid UTF-8 already).
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most fields need nothing escaped: copy them whole.
    if !bytes.iter().any(|&b| needs_escape(b)) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `n` in decimal, without an allocation.
pub(crate) fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    padded(out, u64::try_from(year).unwrap_or(0), 4);
    out.push(b'-');
    padded(out, month as u64, 2);
    out.push(b'-');
    padded(out, day as u64, 2);
    out.push(b'T');
    padded(out, rem / 3600, 2);
    out.push(b':');
    padded(out, (rem / 60) % 60, 2);
    out.push(b':');
    padded(out, rem % 60, 2);
    out.push(b'.');
    padded(out, u64::from(d.subsec_micros()), 6);
    out.push(b'Z');
}

/// `n` in exactly `width` digits (zero-padded; `n` fits).
fn padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(host: &'a str, path: &'a str) -> AccessRecord<'a> {
        AccessRecord {
            client: None,
            method: "GET",
            host,
            path,
            version: "HTTP/1.1",
            tls: false,
            status: 200,
            elapsed: Duration::from_micros(1234),
            bytes_sent: 42,
            route: "shop",
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
            request_id: "abc",
            error: "",
            outcome: "proxied",
            engine: "http1",
        }
    }

    #[test]
    fn lines_are_json_with_the_process_logs_keys() {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_796_281_295_558_317);
        format_line(&mut out, &record("a.test", "/x\"y\\z\u{1}"), at);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-12-03T07:01:35.558317Z");
        assert_eq!(v["path"], "/x\"y\\z\u{1}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_us"], 1234);
        assert_eq!(v["upstream"], "127.0.0.1:8080");
        assert_eq!(v["target"], "tenantgate::access");
        assert_eq!(v["engine"], "http1");
        assert_eq!(v["client"], "");
    }

    #[test]
    fn addresses_are_written_plainly() {
        let client =
            pingora::protocols::l4::socket::SocketAddr::Inet("10.0.0.255:65535".parse().unwrap());
        let mut r = record("a.test", "/");
        r.client = Some(&client);
        r.upstream = Some("[2001:db8::1]:443".parse().unwrap());
        let mut out = Vec::new();
        format_line(&mut out, &r, UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["client"], "10.0.0.255:65535");
        assert_eq!(v["upstream"], "[2001:db8::1]:443");
        let mut out = Vec::new();
        address(&mut out, &"0.0.0.0:0".parse().unwrap());
        assert_eq!(out, b"0.0.0.0:0");
    }

    #[test]
    fn dates_are_civil_across_leap_years() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000Z"),
        ] {
            let mut out = Vec::new();
            timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn lines_reach_the_file_in_order() {
        let dropped = IntCounter::new("dropped", "d").unwrap();
        let path = std::env::temp_dir().join(format!("tg-access-ok-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::new(Destination::File(path.clone()), dropped.clone());
        for p in ["/1", "/2", "/3"] {
            log.write(&record("a.test", p));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let paths: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
            .collect();
        assert_eq!(paths, ["\"/1\"", "\"/2\"", "\"/3\""]);
        assert_eq!(dropped.get(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_log_that_cannot_open_drops_and_counts() {
        let dropped = IntCounter::new("dropped", "d").unwrap();
        let dir = std::env::temp_dir().join(format!("tg-access-{}", std::process::id()));
        let log = AccessLog::new(
            Destination::File(dir.join("missing/a.log")),
            dropped.clone(),
        );
        log.write(&record("a.test", "/"));
        assert_eq!(
            dropped.get(),
            1,
            "a log that cannot open drops, never blocks"
        );
    }
}
