//! The chat websocket (`/api/chat`), served here instead of by the server-function runtime.
//!
//! Why: server_fn's websocket keeps tungstenite's 16 MiB frame limit, smaller than a 20 MB
//! upload in base64, and an oversized frame just drops the connection. Here the limit follows
//! the upload limit, and a message over it gets an `Error` event before the socket closes.
//! The wire format is server_fn's, so the page's `chat` client is unchanged: one binary frame
//! per item, a tag byte (0: a value, 1: an error), then JSON. The session itself is
//! [`super::chat::run_chat`].

use super::access::client_key_of;
use super::chat::run_chat;
use app::backend::Backend;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use protocol::{ClientMsg, Event};
use std::sync::Arc;

pub const CHAT_PATH: &str = "/api/chat";

/// What the chat socket needs.
#[derive(Clone)]
pub struct ChatSocket {
    pub backend: Arc<dyn Backend>,
    /// The largest message accepted (the upload limit in base64, plus room for the text).
    pub max_message_bytes: usize,
}

impl ChatSocket {
    /// Room for an image of `max_upload_bytes` in base64 and a long conversation.
    pub fn message_limit(max_upload_bytes: usize, max_text_bytes: usize) -> usize {
        max_upload_bytes.div_ceil(3) * 4 + max_text_bytes + 64 * 1024
    }
}

fn is_websocket(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Middleware: takes the chat websocket upgrades, passes everything else on.
pub async fn intercept(State(chat): State<ChatSocket>, req: Request, next: Next) -> Response {
    if req.uri().path() != CHAT_PATH || !is_websocket(&req) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let client = client_key_of(&parts);
    let upgrade = match WebSocketUpgrade::from_request(Request::from_parts(parts, body), &()).await
    {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let limit = chat.max_message_bytes;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session(socket, chat, client))
}

/// One frame → one client message (or the message for the user when it is not one).
fn decode(msg: Result<Message, axum::Error>, limit: usize) -> Option<Result<ClientMsg, String>> {
    let bytes = match msg {
        Ok(Message::Binary(b)) => b.to_vec(),
        Ok(Message::Text(t)) => t.as_bytes().to_vec(),
        // Not messages of the session (axum answers pings itself).
        Ok(Message::Close(_) | Message::Ping(_) | Message::Pong(_)) => return None,
        Err(e) => {
            let detail = e.to_string();
            let message = if detail.contains("too long") || detail.contains("Space limit") {
                format!(
                    "bad request: the message is too large (over {:.0} MB): use a smaller image",
                    limit as f64 / 1e6
                )
            } else {
                format!("bad request: the connection failed ({detail})")
            };
            return Some(Err(message));
        }
    };
    let invalid = |why: &str| {
        Some(Err(format!(
            "bad request: the message is not a valid request ({why})"
        )))
    };
    match bytes.split_first() {
        None => invalid("an empty frame"),
        Some((0, json)) => Some(
            serde_json::from_slice(json)
                .map_err(|e| format!("bad request: the message is not a valid request ({e})")),
        ),
        Some((1, _)) => invalid("the client sent an error"),
        Some(_) => invalid("an unknown frame tag"),
    }
}

fn encode(event: &Event) -> Message {
    let mut bytes = vec![0u8];
    // An Event always serializes; an empty object would still be a frame the client rejects
    // clearly.
    bytes.extend(serde_json::to_vec(event).unwrap_or_default());
    Message::Binary(bytes.into())
}

async fn session(socket: WebSocket, chat: ChatSocket, client: String) {
    let (mut sink, stream) = socket.split();
    let limit = chat.max_message_bytes;
    let input = stream
        .filter_map(move |msg| std::future::ready(decode(msg, limit)))
        .boxed();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(run_chat(input, chat.backend, client, tx));
    while let Some(event) = rx.recv().await {
        if sink.send(encode(&event)).await.is_err() {
            return; // the client is gone; dropping `rx` cancels the generation
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}
