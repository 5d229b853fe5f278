//! Raw-socket helpers of `hostile.rs`: requests given whole (any `Host`, any source address on
//! 127/8), the process's resident memory, and a completion stream that is never read.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{ask, greedy, CHECKPOINT};
use std::time::Instant;

/// How long the well-behaved client may wait for its answer while an attack runs.
pub const GOOD_BOUND: Duration = Duration::from_secs(90);

/// A well-behaved question on its own socket, as client `good`; panics past [`GOOD_BOUND`].
pub fn good_question(addr: SocketAddr) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let started = Instant::now();
        let answer =
            tokio::time::timeout(GOOD_BOUND, ask(addr, "good", &greedy(None, "Hello.", 3)))
                .await
                .expect("the well-behaved question was not answered in time");
        assert!(answer.stats.is_some(), "good client: {:?}", answer.error);
        started.elapsed()
    })
}

/// A raw HTTP/1.1 exchange from `source` (any 127.x address), the request given whole; returns
/// (status, lower-case headers, body).
pub async fn raw(
    addr: SocketAddr,
    source: IpAddr,
    request: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut bytes)).await;
    crate::common::parse_response(&bytes)
}

pub fn request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub fn completion(query: &str, max_tokens: usize) -> Value {
    json!({"model": CHECKPOINT, "temperature": 0, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": query}]})
}

/// This process's resident memory, in bytes (the server runs in it).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Opens an SSE completion whose client never reads (a 4 KB receive window).
pub async fn stalled_stream(addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut body = completion("Describe everything at length.", 1800);
    body["stream"] = json!(true);
    let body = body.to_string();
    let headers = [("Content-Type", "application/json")];
    let req = request(
        "POST",
        "/v1/chat/completions",
        &addr.to_string(),
        &headers,
        body.as_bytes(),
    );
    stream.write_all(&req).await.unwrap();
    stream
}
