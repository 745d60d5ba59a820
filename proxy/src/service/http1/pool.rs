//! Idle keep-alive connections to upstreams, for the HTTP/1 fast path.
//!
//! Invariants:
//! - A connection is only handed out again under the key it was returned with: the route's
//!   group key (when pools are per route) and the upstream address. So a connection never
//!   carries one tenant's request to another tenant's backend, however the upstream behaves.
//! - A connection that became readable while idle (the upstream closed it, or sent bytes no
//!   request asked for) is never reused: a stray byte must not become the next response.
//! - Connections idle longer than the idle timeout are dropped; each worker thread keeps at
//!   most `per_thread` idle connections (`proxy.upstream_keepalive_pool_size`).
//!
//! One shard per worker thread, so that a thread mostly reuses the connections registered
//! with its own runtime's reactor (with `work_stealing = false` every thread has its own).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// What a pooled connection is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The route's group key when pools are per route, else 0.
    pub group: u64,
    /// Upstream address.
    pub addr: SocketAddr,
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
struct Shard {
    idle: HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>,
    count: usize,
    swept: Option<Instant>,
}

/// Idle upstream connections, sharded per worker thread.
pub struct UpstreamPool {
    shards: Box<[Mutex<Shard>]>,
    per_thread: usize,
    idle_timeout: Duration,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_index() -> usize {
    THREAD_INDEX.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        c.get()
    })
}

impl UpstreamPool {
    /// A pool for `threads` worker threads keeping at most `per_thread` idle connections each.
    pub fn new(threads: usize, per_thread: usize, idle_timeout: Duration) -> Self {
        UpstreamPool {
            shards: (0..threads.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            per_thread,
            idle_timeout,
        }
    }

    fn shard(&self) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[thread_index() % self.shards.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle connection for `key` that is still quiet, if there is one (`now`: the
    /// request's start, so that no clock is read here).
    pub fn take(&self, key: &PoolKey, now: Instant) -> Option<TcpStream> {
        loop {
            let idle = {
                let mut shard = self.shard();
                let list = shard.idle.get_mut(key)?;
                let idle = list.pop();
                if list.is_empty() {
                    shard.idle.remove(key);
                }
                shard.count -= usize::from(idle.is_some());
                idle?
            };
            if now.saturating_duration_since(idle.since) < self.idle_timeout
                && still_quiet(&idle.stream)
            {
                return Some(idle.stream);
            }
        }
    }

    /// Keep `stream` for reuse under `key` (closed when the thread's pool is full). `now` is
    /// the start of the request that last used it: never later than when it went idle, so the
    /// idle timeout errs early, before the upstream's own keep-alive timer.
    pub fn put(&self, key: PoolKey, stream: TcpStream, now: Instant) {
        let rejected = {
            let mut shard = self.shard();
            // Sweep at most once a second: long-idle connections of routes that stopped
            // getting traffic must not hold sockets (and pool places) for ever.
            if shard
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
            {
                shard.swept = Some(now);
                let timeout = self.idle_timeout;
                let mut removed = 0;
                shard.idle.retain(|_, list| {
                    list.retain_mut(|i| {
                        let keep = now.saturating_duration_since(i.since) < timeout;
                        removed += usize::from(!keep);
                        keep
                    });
                    !list.is_empty()
                });
                shard.count -= removed;
            }
            if shard.count >= self.per_thread {
                Some(stream)
            } else {
                shard.count += 1;
                shard
                    .idle
                    .entry(key)
                    .or_default()
                    .push(Idle { stream, since: now });
                None
            }
        };
        // A rejected connection closes outside the lock (swept ones close inside it, at most
        // once a second).
        drop(rejected);
    }

    /// Idle connections held now (all threads).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.count))
            .sum()
    }
}

/// Whether nothing (no bytes, no EOF) arrived on an idle connection. The reactor's readiness
/// answers without a system call in the common case; only a connection that looks readable
/// is read from, to tell a stale readiness from real bytes.
fn still_quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(stream.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn reuses_only_quiet_connections_under_their_own_key() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let pool = UpstreamPool::new(1, 8, Duration::from_secs(60));
        let key = PoolKey {
            group: 1,
            addr: l.local_addr().expect("addr"),
        };
        let other = PoolKey { group: 2, ..key };

        let (quiet, _quiet_peer) = pair(&l).await;
        pool.put(key, quiet, Instant::now());
        assert!(
            pool.take(&other, Instant::now()).is_none(),
            "another route's key finds nothing"
        );
        assert!(pool.take(&key, Instant::now()).is_some());
        assert!(pool.take(&key, Instant::now()).is_none());

        // The upstream wrote a stray byte, or closed: neither connection is handed out.
        let (chatty, mut chatty_peer) = pair(&l).await;
        let (closed, closed_peer) = pair(&l).await;
        pool.put(key, chatty, Instant::now());
        pool.put(key, closed, Instant::now());
        chatty_peer.write_all(b"x").await.expect("write");
        drop(closed_peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(&key, Instant::now()).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn bounded_and_expiring() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let key = PoolKey {
            group: 0,
            addr: l.local_addr().expect("addr"),
        };
        let pool = UpstreamPool::new(1, 2, Duration::from_secs(60));
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (c, s) = pair(&l).await;
            peers.push(s);
            pool.put(key, c, Instant::now());
        }
        assert_eq!(pool.idle_count(), 2, "the third connection is not kept");

        let pool = UpstreamPool::new(1, 2, Duration::ZERO);
        let (c, _s) = pair(&l).await;
        pool.put(key, c, Instant::now());
        assert!(
            pool.take(&key, Instant::now()).is_none(),
            "expired connections are not reused"
        );
    }
}
