//! Hostile clients against a live server on 127.0.0.1 (issue 35). Each attack asserts both halves:
//! the attack is refused (or contained), and a well-behaved client on another connection still gets
//! its answer within a bound. Every loop is bounded in count and time; traffic stays on loopback
//! (127.0.0.2 is a second "address" on the same machine for the share-mode tests).

mod common;
mod hostile_support;

use cogvlm::engine::{bundled_models_dir, EngineOptions, Fairness};
use cogvlm::net::conn::ConnLimits;
use cogvlm::web::access::{client_cookie, Access};
use common::*;
use futures::SinkExt;
use hostile_support::*;
use protocol::Event;
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "hostile-test-token-0123456789";
/// One attack at a time in this binary: the RSS bound and the timing bounds measure one server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn server(options: EngineOptions, access: Access, conn: ConnLimits) -> TestServer {
    start_full(&bundled_models_dir(), options, access, conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_pages_cannot_reach_the_server_through_the_browser() {
    let _serial = SERIAL.lock().await;
    let s = server(
        EngineOptions::default(),
        Access::default(),
        ConnLimits::default(),
    )
    .await;
    let (addr, host) = (s.addr, s.addr.to_string());
    let good = good_question(addr);
    let json_body = completion("Hi", 2).to_string();
    // DNS rebinding: the attacker's name resolves to us, the browser sends its own Host.
    for path in ["/", "/v1/models", "/pkg/cogvlm.js"] {
        let req = request("GET", path, "rebind.evil.example:3000", &[], b"");
        let (status, _, body) = raw(addr, local(), &req).await;
        assert_eq!(status, 421, "{path}: {body}");
    }
    // A cross-site "simple" POST: text/plain (or no type) needs no preflight.
    for content_type in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("Content-Type", t))
            .into_iter()
            .collect();
        let req = request(
            "POST",
            "/v1/chat/completions",
            &host,
            &headers,
            json_body.as_bytes(),
        );
        let (status, _, body) = raw(addr, local(), &req).await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
    }
    // The page's own calls and the upload, posted by another site's page.
    let origin = [
        ("Origin", "https://evil.example"),
        ("Content-Type", "application/json"),
    ];
    for path in [
        "/v1/chat/completions",
        "/api/upload_image",
        "/api/list_models",
    ] {
        let req = request("POST", path, &host, &origin, json_body.as_bytes());
        let (status, _, body) = raw(addr, local(), &req).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    // The page cannot be framed by another site.
    let (status, headers, _) = raw(addr, local(), &request("GET", "/", &host, &[], b"")).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some("frame-ancestors 'none'")
    );
    // The same API call, sent as a client would, works.
    let ok = [("Content-Type", "application/json; charset=utf-8")];
    let req = request(
        "POST",
        "/v1/chat/completions",
        &host,
        &ok,
        json_body.as_bytes(),
    );
    let (status, _, body) = raw(addr, local(), &req).await;
    assert_eq!(status, 200, "{body}");
    println!("good client answered in {:?}", good.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_link_redirects_only_on_this_site() {
    let _serial = SERIAL.lock().await;
    let access = Access {
        token: Some(TOKEN.into()),
        ..Access::default()
    };
    let s = server(EngineOptions::default(), access, ConnLimits::default()).await;
    let host = s.addr.to_string();
    for (path, to) in [
        (format!("//evil.example/?token={TOKEN}"), "/evil.example/"),
        (
            format!("///evil.example/x?token={TOKEN}&a=1"),
            "/evil.example/x?a=1",
        ),
        (format!("/chat?token={TOKEN}"), "/chat"),
    ] {
        let (status, headers, _) =
            raw(s.addr, local(), &request("GET", &path, &host, &[], b"")).await;
        assert_eq!(status, 303, "{path}");
        let location = header(&headers, "location").unwrap();
        assert_eq!(location, to, "{path}");
        assert!(!location.starts_with("//") && !location.contains("://"));
    }
    // The token holder's own API call works alongside.
    let bearer = format!("Bearer {TOKEN}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = completion("Hi", 2).to_string();
    let req = request(
        "POST",
        "/v1/chat/completions",
        &host,
        &headers,
        body.as_bytes(),
    );
    let started = Instant::now();
    let (status, _, text) = raw(s.addr, local(), &req).await;
    assert_eq!(status, 200, "{text}");
    assert!(started.elapsed() < GOOD_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_80_mb_upload_without_its_boundary_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let s = server(
        EngineOptions::default(),
        Access::default(),
        ConnLimits::default(),
    )
    .await;
    let addr = s.addr;
    let good = good_question(addr);
    let before = rss();
    // Chunked: no length announced, so only the cap on the stream can stop it.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/upload_image HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {}\r\n\
         Content-Type: multipart/form-data; boundary=never-sent\r\nTransfer-Encoding: chunked\r\n\r\n",
        client_cookie("uploader"),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    let started = Instant::now();
    for _ in 0..80 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        if stream.write_all(&piece).await.is_err() {
            break; // the server stopped reading: what it answered counts
        }
        sent += chunk.len();
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    let status: u16 = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let growth = rss().saturating_sub(before);
    println!(
        "sent {} MB; answered {status}; RSS grew {} MB",
        sent >> 20,
        growth >> 20
    );
    assert!((400..500).contains(&status), "{answer}");
    // The cap is the 20 MB file limit; the parser's buffer may double once.
    assert!(growth < 64 << 20, "RSS grew {growth} bytes");
    // Announced too large: refused before a byte of the body is read.
    let req = format!(
        "POST /api/upload_image HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 83886080\r\n\r\n"
    );
    let (status, _, body) = raw(addr, local(), req.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the limit"), "{body}");
    println!("good client answered in {:?}", good.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_thousand_empty_turns_are_refused_before_the_worker() {
    let _serial = SERIAL.lock().await;
    let s = server(
        EngineOptions::default(),
        Access::default(),
        ConnLimits::default(),
    )
    .await;
    let good = good_question(s.addr);
    let mut messages = Vec::with_capacity(600_001);
    for _ in 0..300_000 {
        messages.push(json!({"role": "user", "content": ""}));
        messages.push(json!({"role": "assistant", "content": ""}));
    }
    messages.push(json!({"role": "user", "content": "Hi"}));
    let body = json!({"model": CHECKPOINT, "messages": messages}).to_string();
    let headers = [("Content-Type", "application/json")];
    let started = Instant::now();
    let (status, _, text) = http(s.addr, "POST", "/v1/chat/completions", &headers, &body).await;
    let took = started.elapsed();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("turns") && text.contains("limit"), "{text}");
    assert!(took < Duration::from_secs(20), "refused after {took:?}");
    assert_eq!(s.engine.pending(), 0, "never queued");
    println!(
        "refused in {took:?}; good client answered in {:?}",
        good.await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_megabyte_stop_strings_are_refused() {
    let _serial = SERIAL.lock().await;
    let s = server(
        EngineOptions::default(),
        Access::default(),
        ConnLimits::default(),
    )
    .await;
    let good = good_question(s.addr);
    let long = "x".repeat(4 << 20);
    let mut body = completion("Hi", 4);
    body["stop"] = json!([long, long]);
    let headers = [("Content-Type", "application/json")];
    let started = Instant::now();
    let (status, _, text) = http(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 400, "{}", &text[..text.len().min(300)]);
    assert!(
        text.contains("\"stop\""),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    println!("good client answered in {:?}", good.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_forty_model_switches_is_bounded() {
    let _serial = SERIAL.lock().await;
    let s = server(
        EngineOptions::default(),
        Access::default(),
        ConnLimits::default(),
    )
    .await;
    let addr = s.addr;
    let loads_before = s.engine.loads_run();
    // All 40 sockets open first, then every name is sent at once.
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let mut storm = Vec::new();
    for i in 0..40 {
        let name = if i % 2 == 0 {
            "cogvlm_tiny_490"
        } else {
            CHECKPOINT
        };
        let go = go.clone();
        storm.push(tokio::spawn(async move {
            let mut ws = connect(addr, "/api/load_model", &format!("switcher{i}"), &[])
                .await
                .unwrap();
            go.wait().await;
            ws.send(frame(&name.to_string())).await.unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(120), next_event(&mut ws)).await {
                    Ok(Some(Ok(Event::Loaded { .. }))) => return Ok(()),
                    Ok(Some(Ok(Event::Error { message, .. }))) => return Err(message),
                    Ok(Some(Ok(_))) => {}
                    other => panic!("switch {i} ended without an answer: {other:?}"),
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let good = good_question(addr);
    let (mut loaded, mut busy) = (0, 0);
    for t in storm {
        match t.await.unwrap() {
            Ok(()) => loaded += 1,
            Err(m) if m.contains("switches are waiting") => busy += 1,
            Err(m) => panic!("unexpected refusal: {m}"),
        }
    }
    let took = started.elapsed();
    let loads = s.engine.loads_run() - loads_before;
    println!(
        "{loaded} switches answered Loaded, {busy} refused as busy; {loads} loads ran in {took:?}"
    );
    // Every switch got its answer: merged into a queued one (Loaded) or refused as busy.
    assert_eq!(loaded + busy, 40);
    assert!(busy >= 1, "the cap on waiting switches never applied");
    // Forty requests, but only the one running and the four queued when the storm hit load.
    assert!(loads <= 1 + 4, "{loads} loads ran");
    println!("good client answered in {:?}", good.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_four_streams_that_never_read_do_not_hold_the_server() {
    let _serial = SERIAL.lock().await;
    let conn = ConnLimits {
        write_stall: Duration::from_secs(2),
        idle: Duration::from_secs(5),
        ..ConnLimits::default()
    };
    let s = server(EngineOptions::default(), Access::default(), conn).await;
    let mut stalled = Vec::new();
    for _ in 0..24 {
        stalled.push(stalled_stream(s.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.engine.pending() > 0, "the streams are running");
    let good = good_question(s.addr).await.unwrap();
    println!("good client answered in {good:?} beside 24 unread streams");
    // Every stalled stream ends (its answer cancelled at the write deadline, or finished into the
    // socket's buffers and then closed as idle), without its client ever reading.
    let deadline = Instant::now() + Duration::from_secs(240);
    while s.engine.pending() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} still queued or running",
            s.engine.pending()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut cut, mut closed) = (0, 0);
    for mut stream in stalled {
        let mut bytes = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes)).await;
        assert!(read.is_ok(), "the server did not close an unread stream");
        closed += 1;
        if !String::from_utf8_lossy(&bytes).contains("[DONE]") {
            cut += 1;
        }
    }
    println!("{closed} unread streams closed by the server, {cut} of them cut before their end");
    // An answer longer than the socket buffers can hold is cut at the write deadline.
    assert!(
        cut >= 1,
        "no unread stream was cut: the write deadline never applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_half_sent_headers_are_closed_in_time() {
    let _serial = SERIAL.lock().await;
    let conn = ConnLimits {
        header_read: Duration::from_secs(2),
        ..ConnLimits::default()
    };
    let s = server(EngineOptions::default(), Access::default(), conn).await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let part = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", s.addr);
        stream.write_all(part.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let sent = Instant::now();
    let good = good_question(s.addr);
    let mut reads = Vec::new();
    for mut stream in slow {
        reads.push(tokio::spawn(async move {
            let mut sink = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut sink));
            read.await.is_ok()
        }));
    }
    let mut closed = 0;
    for r in reads {
        closed += usize::from(r.await.unwrap());
    }
    let took = sent.elapsed();
    println!("{closed}/300 half-sent requests closed after {took:?}");
    assert_eq!(closed, 300);
    assert!(took < Duration::from_secs(12), "{took:?}");
    println!("good client answered in {:?}", good.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_cookies_on_every_request_do_not_escape_the_limits_in_share_mode() {
    let _serial = SERIAL.lock().await;
    let options = EngineOptions {
        fairness: Fairness {
            rate_limit: true,
            per_minute: 2,
            burst: 4,
            per_client: 2,
            per_address: true,
            ..Fairness::default()
        },
        ..EngineOptions::default()
    };
    let access = Access {
        token: Some(TOKEN.into()),
        ..Access::default()
    };
    let s = server(options, access, ConnLimits::default()).await;
    let bearer = format!("Bearer {TOKEN}");
    let body = completion("Hi", 1).to_string();
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let (mut answered, mut limited) = (0, 0);
    for i in 0..12 {
        // A new signed id each time (as if fetched from the server), and a forged one.
        let cookie = if i % 2 == 0 {
            client_cookie(&format!("rotating{i}"))
        } else {
            format!("cogvlm_client=forged{i}.00")
        };
        let headers = [
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
            ("Cookie", cookie.as_str()),
        ];
        let host = s.addr.to_string();
        let req = request(
            "POST",
            "/v1/chat/completions",
            &host,
            &headers,
            body.as_bytes(),
        );
        match raw(s.addr, attacker, &req).await {
            (200, _, _) => answered += 1,
            (429, _, _) => limited += 1,
            (status, _, text) => panic!("{status}: {text}"),
        }
    }
    println!("rotating cookies: {answered} answered, {limited} rate-limited");
    assert_eq!(answered, 4, "the address's burst");
    assert_eq!(limited, 8);
    // Another address (the host's own browser) is not affected.
    let cookie = client_cookie("owner");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
        ("Cookie", cookie.as_str()),
    ];
    let req = request(
        "POST",
        "/v1/chat/completions",
        &s.addr.to_string(),
        &headers,
        body.as_bytes(),
    );
    let started = Instant::now();
    let (status, _, text) = raw(s.addr, local(), &req).await;
    assert_eq!(status, 200, "{text}");
    assert!(started.elapsed() < GOOD_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_in_the_worker_loop_fails_requests_fast() {
    let _serial = SERIAL.lock().await;
    let s = server(
        EngineOptions::default(),
        Access::default(),
        ConnLimits::default(),
    )
    .await;
    s.engine.panic_in_loop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.engine.is_stopped() {
        assert!(
            Instant::now() < deadline,
            "the engine was not marked stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let answer = ask(s.addr, "after", &greedy(None, "Hello.", 3)).await;
    let error = answer.error.expect("refused");
    assert!(error.contains("stopped after an internal error"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server itself still answers.
    let (status, _, _) = http(s.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_server_shows_peers_no_paths_of_its_disk() {
    let _serial = SERIAL.lock().await;
    let access = Access {
        token: Some(TOKEN.into()),
        ..Access::default()
    };
    let s = server(EngineOptions::default(), access, ConnLimits::default()).await;
    let dir = bundled_models_dir().display().to_string();
    let token_cookie = format!("cogvlm_token={TOKEN}");
    // The model list the page shows.
    let headers = [("Cookie", token_cookie.as_str())];
    let (status, _, models) = http(s.addr, "POST", "/api/list_models", &headers, "").await;
    assert_eq!(status, 200, "{models}");
    assert!(models.contains(CHECKPOINT), "{models}");
    assert!(!models.contains(&dir), "{models}");
    // A failed switch (the worker's message names the models folder).
    let headers = [("cookie", token_cookie.as_str())];
    let mut ws = connect(s.addr, "/api/load_model", "peer", &headers)
        .await
        .unwrap();
    ws.send(frame(&"no-such-checkpoint".to_string()))
        .await
        .unwrap();
    let error = read_answer(&mut ws).await.error.expect("refused");
    assert!(error.contains("no checkpoint named"), "{error}");
    assert!(!error.contains(&dir), "{error}");
    // The server goes on answering.
    let mut ws = connect(s.addr, "/api/chat", "peer", &headers)
        .await
        .unwrap();
    ws.send(frame(&protocol::ClientMsg::Generate(Box::new(
        greedy(None, "Hello.", 3).with_image(None),
    ))))
    .await
    .unwrap();
    let answer = tokio::time::timeout(GOOD_BOUND, read_answer(&mut ws)).await;
    assert!(answer.unwrap().stats.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_websockets_count_toward_the_connection_cap() {
    let _serial = SERIAL.lock().await;
    let conn = ConnLimits {
        max_connections: 4,
        ..ConnLimits::default()
    };
    let s = server(EngineOptions::default(), Access::default(), conn).await;
    let mut sockets = Vec::new();
    for i in 0..4 {
        sockets.push(
            connect(s.addr, "/api/chat", &format!("holder{i}"), &[])
                .await
                .unwrap(),
        );
    }
    // A fifth connection is closed at once, without an answer.
    let (status, _, _) = http(s.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(status, 0, "over the cap");
    // One socket closes: its place is free again, and a question is answered.
    drop(sockets.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = http(s.addr, "GET", "/v1/models", &[], "").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed socket's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
