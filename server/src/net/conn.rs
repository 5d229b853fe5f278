//! The connection layer under the app (in place of `axum::serve`): a cap on open connections (all
//! of them, and per remote address), a deadline for a request's header, an idle deadline, a
//! deadline for a write the client does not take (a reader that stopped reading: its answer is
//! cancelled rather than holding a batch slot), and a byte cap on a websocket's input.
//!
//! HTTP/1.1 only, as the page and the API clients speak over plain HTTP (no h2c).

use super::io::{Deadlines, Guarded, ReadCap};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Connection limits of `cogvlm serve` (flags `--header-timeout`, `--idle-timeout`,
/// `--write-timeout`, `--max-connections`, `--max-connections-per-address`). A socket's first
/// message has its own deadline in the chat session (`web::chat::FIRST_MESSAGE`).
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// A request's header must arrive within this (slowloris).
    pub header_read: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle: Duration,
    /// A write the client takes no byte of for this long closes the connection.
    pub write_stall: Duration,
    /// Open connections, all clients together.
    pub max_connections: usize,
    /// Open connections from one address other than loopback.
    pub per_address: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            // Long enough for a queued question on a slow CPU (queue positions are sent only
            // when they change); SSE keep-alives come every 15 s.
            idle: Duration::from_secs(300),
            write_stall: Duration::from_secs(30),
            max_connections: 1024,
            per_address: 64,
        }
    }
}

/// Open connections per address (loopback is not counted: it is the host itself).
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    fn enter(&self, ip: IpAddr, cap: usize) -> bool {
        if ip.is_loopback() {
            return true;
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        if ip.is_loopback() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = Arc::new(PerAddress::default());
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: wait a moment instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Over a cap the connection is closed at once: the backlog does not grow.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "connection from {peer} refused: {} open",
                limits.max_connections
            );
            continue;
        };
        if !per_address.enter(peer.ip(), limits.per_address) {
            tracing::warn!(
                "connection from {peer} refused: {} open from it",
                limits.per_address
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            limits: limits.clone(),
            peer,
            closing: closing_rx.clone(),
        };
        // The connection's places are given back when its socket closes, which for a websocket
        // is after its upgrade: open sockets count, whatever protocol they speak.
        let hold = Hold {
            _slot: slot,
            per_address: per_address.clone(),
            ip: peer.ip(),
        };
        tokio::spawn(conn.run(stream, hold));
    }
    let _ = closing.send(true);
    // Every connection gives its slot back when it ends.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

/// A connection's places under the caps, freed when dropped (with its socket).
struct Hold {
    _slot: tokio::sync::OwnedSemaphorePermit,
    per_address: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.per_address.leave(self.ip);
    }
}

struct Connection {
    app: Router,
    limits: ConnLimits,
    peer: SocketAddr,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: tokio::net::TcpStream, hold: Hold) {
        let cap = ReadCap::default();
        let io = Guarded::new(
            stream,
            Deadlines {
                idle: self.limits.idle,
                write_stall: self.limits.write_stall,
            },
            cap.clone(),
        )
        .holding(Box::new(hold));
        let (app, peer) = (self.app.clone(), self.peer);
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(cap.clone());
            tower::ServiceExt::oneshot(app.clone(), req)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read)
            .max_buf_size(64 * 1024);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                changed = self.closing.changed() => {
                    if changed.is_err() || *self.closing.borrow() {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.as_mut().await;
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts_other_machines_only() {
        let p = PerAddress::default();
        let peer: IpAddr = "192.168.1.9".parse().unwrap();
        assert!(p.enter(peer, 2) && p.enter(peer, 2));
        assert!(!p.enter(peer, 2), "a third connection from one address");
        assert!(p.enter("192.168.1.10".parse().unwrap(), 2));
        p.leave(peer);
        assert!(p.enter(peer, 2));
        for _ in 0..10 {
            assert!(p.enter("127.0.0.1".parse().unwrap(), 2), "the host itself");
        }
    }
}
