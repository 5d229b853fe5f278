//! Server functions: the model list, chat (websocket) and checkpoint switching (websocket). The
//! chat session itself, cookies and client identity are the server's (`server/src/web/`).
//!
//! Websocket rules (Leptos 0.8 / server_fn 0.8): the body returns its output stream at once and
//! reads the input only inside a spawned task (awaiting it before returning deadlocks the
//! upgrade); errors travel as `Event::Error` items (an `Err` before the upgrade reaches the
//! client only as "connection failed"); every stream ends with a final event (`Done`, `Error`,
//! `Loaded`) because the client always sees a close error after the last item.

use crate::protocol::{ClientMsg, Event, ModelsState};
use leptos::prelude::*;
use leptos::server_fn::{codec::JsonEncoding, BoxedStream, Websocket};

#[cfg(feature = "ssr")]
fn backend() -> Result<crate::backend::BackendContext, String> {
    use_context::<crate::backend::BackendContext>()
        .ok_or_else(|| "the server has no model engine (not started with `cogvlm serve`?)".into())
}

/// The error for a websocket frame that is not a message of this call.
#[cfg(feature = "ssr")]
fn bad_frame(e: &ServerFnError) -> String {
    format!("bad request: the message is not a valid request ({e})")
}

/// The checkpoints in the models folder and the loaded one.
#[server(endpoint = "list_models")]
pub async fn list_models() -> Result<ModelsState, ServerFnError> {
    let backend = backend().map_err(ServerFnError::new)?;
    Ok(backend.0.models())
}

/// One generation: the client sends `Generate` (then maybe `Stop`); the server streams events
/// until `Done` or `Error`. A closed socket cancels the generation.
///
/// This declaration gives the page its client and the path; on the server the chat socket
/// (`server/src/web/socket.rs`, with larger frame limits than server_fn's) takes every upgrade of
/// this path before the server-function runtime sees it.
#[server(endpoint = "chat", protocol = Websocket<JsonEncoding, JsonEncoding>)]
pub async fn chat(
    input: BoxedStream<ClientMsg, ServerFnError>,
) -> Result<BoxedStream<Event, ServerFnError>, ServerFnError> {
    drop(input);
    Err(ServerFnError::new(
        "the chat socket is served by `cogvlm serve` (server/src/web/socket.rs)",
    ))
}

/// Switches the checkpoint: the client sends its name; the server streams `LoadProgress`
/// events, then `Loaded` or `Error` (the old checkpoint stays loaded on failure).
#[server(endpoint = "load_model", protocol = Websocket<JsonEncoding, JsonEncoding>)]
pub async fn load_model(
    input: BoxedStream<String, ServerFnError>,
) -> Result<BoxedStream<Event, ServerFnError>, ServerFnError> {
    use futures::StreamExt;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Event, ServerFnError>>(64);
    let backend = backend();
    tokio::spawn(async move {
        let mut input = input;
        let backend = match backend {
            Ok(b) => b,
            Err(message) => {
                let _ = tx
                    .send(Ok(Event::error(
                        crate::protocol::ErrorKind::Internal,
                        message,
                    )))
                    .await;
                return;
            }
        };
        let name = match input.next().await {
            Some(Ok(name)) => name,
            Some(Err(e)) => {
                let message = bad_frame(&e);
                let _ = tx
                    .send(Ok(Event::error(
                        crate::protocol::ErrorKind::BadInput,
                        message,
                    )))
                    .await;
                return;
            }
            None => return,
        };
        let mut events = backend.0.load(name);
        while let Some(event) = events.recv().await {
            let last = event.is_final();
            // A closed tab does not stop a load; the others keep the new checkpoint.
            if tx.send(Ok(event)).await.is_err() || last {
                break;
            }
        }
    });
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).into())
}
