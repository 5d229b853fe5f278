//! A connection's socket with deadlines: closed when nothing moves in either direction for `idle`,
//! or when a write stays unaccepted for `write_stall` (the client stopped reading: a full window),
//! and with an optional cap on the bytes read (a websocket's input, [`ReadCap`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub idle: Duration,
    pub write_stall: Duration,
}

/// The most bytes a connection may still read, settable from a request handler (the request
/// carries it as an extension): an upgraded websocket gets the page's need, not the default
/// 64 MB messages.
#[derive(Clone, Debug)]
pub struct ReadCap(Arc<CapState>);

#[derive(Debug)]
struct CapState {
    read: AtomicUsize,
    limit: AtomicUsize,
}

impl Default for ReadCap {
    fn default() -> Self {
        Self(Arc::new(CapState {
            read: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
        }))
    }
}

impl ReadCap {
    /// From now on the connection reads at most `bytes` more (past that, its reads fail and the
    /// connection closes).
    pub fn limit_from_now(&self, bytes: usize) {
        let read = self.0.read.load(Ordering::Relaxed);
        self.0
            .limit
            .store(read.saturating_add(bytes), Ordering::Relaxed);
    }
}

pub struct Guarded<T> {
    inner: T,
    deadlines: Deadlines,
    idle: Pin<Box<Sleep>>,
    /// Set while a write waits for the client to take bytes.
    stalled: Option<Pin<Box<Sleep>>>,
    cap: ReadCap,
    /// Whatever must live as long as the socket (its places under the connection caps).
    _hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, deadlines: Deadlines, cap: ReadCap) -> Self {
        Self {
            inner,
            deadlines,
            idle: Box::pin(tokio::time::sleep(deadlines.idle)),
            stalled: None,
            cap,
            _hold: None,
        }
    }

    /// Keeps `hold` until the socket is dropped.
    pub fn holding(mut self, hold: Box<dyn std::any::Any + Send + Sync>) -> Self {
        self._hold = Some(hold);
        self
    }

    fn progressed(&mut self) {
        let at = Instant::now() + self.deadlines.idle;
        // Resetting a timer on every read costs a lock: only move it when it is worth it.
        if self.idle.deadline() < at - Duration::from_millis(100).min(self.deadlines.idle) {
            self.idle.as_mut().reset(at);
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let state = &this.cap.0;
        let (read, limit) = (
            state.read.load(Ordering::Relaxed),
            state.limit.load(Ordering::Relaxed),
        );
        if read >= limit {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the connection sent more than its limit",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                state.read.fetch_add(n, Ordering::Relaxed);
                this.progressed();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(timed_out("idle connection"))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Pending => {
                let stall = this.deadlines.write_stall;
                let timer = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("the client stopped reading"))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                this.stalled = None;
                this.progressed();
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One buffer at a time keeps the stall logic in one place.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_nobody_reads_times_out() {
        let (a, _b) = tokio::io::duplex(64);
        let deadlines = Deadlines {
            idle: Duration::from_secs(60),
            write_stall: Duration::from_millis(100),
        };
        let mut g = Guarded::new(a, deadlines, ReadCap::default());
        let started = std::time::Instant::now();
        let err = g.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_idle_read_times_out_and_the_cap_holds() {
        let (a, mut b) = tokio::io::duplex(1024);
        let deadlines = Deadlines {
            idle: Duration::from_millis(100),
            write_stall: Duration::from_secs(60),
        };
        let cap = ReadCap::default();
        let mut g = Guarded::new(a, deadlines, cap.clone());
        let mut buf = [0u8; 16];
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        cap.limit_from_now(4);
        b.write_all(b"12345678").await.unwrap();
        let n = g.read(&mut buf).await.unwrap();
        assert!(n > 0);
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
