//! A client of the page's `chat` server function, as the page uses it: the image uploaded first,
//! then one `Generate` on the websocket (the helpers of `tests/common`).

use super::common::{connect, next_event, send_generate};
use leptos::server_fn::ServerFn;
use protocol::{Event, GenerateRequest};
use std::net::SocketAddr;

/// Sends one `Generate` and returns every event up to the final one.
pub async fn generate(addr: SocketAddr, req: GenerateRequest) -> Vec<Event> {
    let client = "page";
    let path = <app::api::Chat as ServerFn>::PATH;
    let mut socket = connect(addr, path, client, &[])
        .await
        .unwrap_or_else(|e| panic!("websocket {path}: {e}"));
    send_generate(&mut socket, addr, client, &req).await;
    let mut events = Vec::new();
    while let Some(event) = next_event(&mut socket).await {
        let event = event.unwrap_or_else(|e| panic!("error frame: {e}"));
        let last = event.is_final();
        events.push(event);
        if last {
            break;
        }
    }
    events
}
