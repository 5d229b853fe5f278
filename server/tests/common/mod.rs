//! A real server on loopback (the whole app with its access guard and the engine on a bundled
//! checkpoint), a websocket client speaking the page's server-function protocol, and a raw
//! HTTP client. Shared by the serving tests.
#![allow(dead_code)] // each test binary uses a different part

use cogvlm::engine::{bundled_models_dir, EngineHandle, EngineOptions, Registry};
use cogvlm::web::access::Access;
use futures::{SinkExt, StreamExt};
use protocol::{ClientMsg, Event, GenerateRequest, ImageData, Sampling, Stats, UploadRef};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The checkpoint the serving tests talk to (the fastest bundled one).
pub const CHECKPOINT: &str = "cogvlm_tiny_224";

pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: EngineHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.engine.shutdown();
    }
}

/// Starts the app on a free loopback port with `CHECKPOINT` loaded.
pub async fn start(options: EngineOptions, access: Access) -> TestServer {
    start_in(&bundled_models_dir(), options, access).await
}

/// As [`start`], on the checkpoints of `models_dir` (which must hold `CHECKPOINT`).
pub async fn start_in(models_dir: &Path, options: EngineOptions, access: Access) -> TestServer {
    start_full(models_dir, options, access, Default::default()).await
}

/// As [`start_in`], with these connection limits.
pub async fn start_full(
    models_dir: &Path,
    options: EngineOptions,
    access: Access,
    conn: cogvlm::net::conn::ConnLimits,
) -> TestServer {
    let registry = Registry::scan(models_dir).expect("models folder");
    let engine = EngineHandle::start_with(registry, options, Some(CHECKPOINT)).expect("engine");
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.models().current.as_deref() != Some(CHECKPOINT) {
        assert!(Instant::now() < deadline, "the checkpoint did not load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The page is rendered without its browser bundle: these tests don't run the page's code.
    let site = std::env::temp_dir().join("cogvlm-test-site");
    std::fs::create_dir_all(&site).unwrap();
    let limits = engine.limits().clone();
    let app = cogvlm::web::app(Arc::new(engine.clone()), &site, addr, access, &limits);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = cogvlm::net::conn::serve(listener, app, conn, async {
            let _ = stopped.await;
        })
        .await;
    });
    TestServer {
        addr,
        engine,
        stop: Some(stop),
    }
}

pub fn image_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/images")
        .join(name)
}

pub fn image(name: &str) -> ImageData {
    image_bytes(name, &std::fs::read(image_path(name)).unwrap())
}

pub fn image_bytes(name: &str, bytes: &[u8]) -> ImageData {
    ImageData {
        name: name.into(),
        bytes: protocol::ImageBytes::new(bytes),
    }
}

/// A greedy question of `new_tokens` tokens (EOS may end it earlier).
pub fn greedy(image: Option<ImageData>, query: &str, new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        image,
        history: vec![],
        query: query.into(),
        version: None,
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: Some(1),
            max_length: 2048,
            max_new_tokens: Some(new_tokens),
            repetition_penalty: 1.0,
            seed: Some(0),
        },
    }
}

/// Opens the chat websocket as browser `client` (its `cogvlm_client` cookie), with extra
/// headers (token, origin).
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    client: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let h = request.headers_mut();
    h.insert(
        "cookie",
        cogvlm::web::access::client_cookie(client).parse().unwrap(),
    );
    for (k, v) in headers {
        h.insert(
            http_name(k),
            v.parse().map_err(|e| format!("header {k}: {e}"))?,
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn http_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    k.parse().unwrap()
}

/// A server-function frame: a tag byte (0 = a value, 1 = an error) and JSON.
pub fn frame<T: serde::Serialize>(value: &T) -> Message {
    let mut bytes = vec![0u8];
    bytes.extend(serde_json::to_vec(value).unwrap());
    Message::Binary(bytes.into())
}

/// Uploads `image` as browser `client`, as the page does (the `upload_image` server function, a
/// multipart form); `Err`: the refusal's status and body.
pub async fn upload(
    addr: SocketAddr,
    client: &str,
    image: &ImageData,
) -> Result<UploadRef, (u16, String)> {
    let cookie = cogvlm::web::access::client_cookie(client);
    upload_with(addr, &[("cookie", &cookie)], image).await
}

/// [`upload`] with these headers (a token, a client cookie) instead of the client's cookie.
pub async fn upload_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    image: &ImageData,
) -> Result<UploadRef, (u16, String)> {
    let bytes = image.bytes.as_bytes();
    let boundary = "cogvlm-test-boundary-7f3a";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        image.name
    )
    .into_bytes();
    body.extend(bytes);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let mut headers = headers.to_vec();
    headers.push(("content-type", &content_type));
    let (status, _, text) = http_bytes(addr, "POST", "/api/upload_image", &headers, &body).await;
    if status == 200 {
        Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("upload answer {text:?}: {e}")))
    } else {
        Err((status, text))
    }
}

/// `req` as the page's socket sends it: its image uploaded first as `client`.
pub async fn uploaded(
    addr: SocketAddr,
    client: &str,
    req: &GenerateRequest,
) -> GenerateRequest<UploadRef> {
    let image = match &req.image {
        Some(image) => Some(
            upload(addr, client, image)
                .await
                .unwrap_or_else(|e| panic!("upload refused: {e:?}")),
        ),
        None => None,
    };
    req.with_image(image)
}

/// Sends a question on `ws` (a socket of `client`), its image uploaded first.
pub async fn send_generate(ws: &mut Ws, addr: SocketAddr, client: &str, req: &GenerateRequest) {
    let req = uploaded(addr, client, req).await;
    ws.send(frame(&ClientMsg::Generate(Box::new(req))))
        .await
        .unwrap();
}

/// The next event; `None` when the socket closed.
pub async fn next_event(ws: &mut Ws) -> Option<Result<Event, String>> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(300), ws.next())
            .await
            .expect("no event within 300 s")?;
        let bytes = match msg {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Text(t)) => t.as_bytes().to_vec(),
            Ok(Message::Close(Some(close))) => {
                return Some(Err(format!("closed ({}): {}", close.code, close.reason)))
            }
            Ok(Message::Close(None)) => return None,
            Ok(_) => continue,
            Err(e) => return Some(Err(format!("socket: {e}"))),
        };
        let Some((&tag, json)) = bytes.split_first() else {
            return Some(Err("empty frame".into()));
        };
        if tag != 0 {
            return Some(Err(String::from_utf8_lossy(json).into_owned()));
        }
        return Some(serde_json::from_slice(json).map_err(|e| format!("bad event: {e}")));
    }
}

/// What one request got back.
#[derive(Debug, Default)]
pub struct Answer {
    pub text: String,
    pub tokens: usize,
    pub positions: Vec<usize>,
    pub stats: Option<Stats>,
    pub error: Option<String>,
}

/// Reads events until the final one.
pub async fn read_answer(ws: &mut Ws) -> Answer {
    let mut answer = Answer::default();
    while let Some(event) = next_event(ws).await {
        match event {
            Ok(Event::Queued { position, .. }) => answer.positions.push(position),
            Ok(Event::Token { text }) => {
                answer.tokens += 1;
                answer.text.push_str(&text);
            }
            Ok(Event::Done { stats }) => {
                answer.stats = Some(stats);
                break;
            }
            Ok(Event::Error { message, .. }) => {
                answer.error = Some(message);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                answer.error = Some(e);
                break;
            }
        }
    }
    answer
}

/// Asks one question on a fresh connection as `client`.
pub async fn ask(addr: SocketAddr, client: &str, req: &GenerateRequest) -> Answer {
    let mut ws = connect(addr, "/api/chat", client, &[]).await.unwrap();
    send_generate(&mut ws, addr, client, req).await;
    read_answer(&mut ws).await
}

/// A raw HTTP/1.1 request; returns (status, headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    http_bytes(addr, method, path, headers, body.as_bytes()).await
}

/// [`http`] with a body of any bytes.
pub async fn http_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    // A server that refuses a body part way (an upload over the limit) may answer and close
    // before it is all written: its answer is what counts.
    let _ = stream.write_all(&req).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_response(&raw)
}

/// An HTTP/1.1 response's bytes as (status, lower-case headers, body); status 0 when there was none.
pub fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let raw = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}
