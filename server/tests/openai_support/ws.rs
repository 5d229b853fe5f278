//! A websocket client of the page's `chat` server function (Leptos 0.8 / server_fn 0.8):
//! binary frames of one tag byte (0 = Ok, 1 = Err) followed by the JSON of one item.

use futures::{SinkExt, StreamExt};
use leptos::server_fn::ServerFn;
use protocol::{ClientMsg, Event, GenerateRequest};
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

/// Sends one `Generate` and returns every event up to the final one.
pub async fn generate(addr: SocketAddr, req: GenerateRequest) -> Vec<Event> {
    let url = format!("ws://{addr}{}", <app::api::Chat as ServerFn>::PATH);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("websocket {url}: {e}"));
    let msg = serde_json::to_vec(&ClientMsg::Generate(Box::new(req))).unwrap();
    let frame: Vec<u8> = std::iter::once(0u8).chain(msg).collect();
    socket.send(Message::Binary(frame.into())).await.unwrap();
    let mut events = Vec::new();
    while let Some(frame) = socket.next().await {
        let bytes = match frame.unwrap() {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        assert_eq!(
            bytes.first(),
            Some(&0),
            "error frame: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        let event: Event = serde_json::from_slice(&bytes[1..]).unwrap();
        let last = event.is_final();
        events.push(event);
        if last {
            break;
        }
    }
    events
}
