//! Server functions: the model list, chat (websocket) and checkpoint switching (websocket).
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

/// Who is asking, for the engine's fairness rules: the id the server gave this browser (the
/// `cogvlm_client` cookie, see `server/src/web/access.rs`), else the peer's IP address.
#[cfg(feature = "ssr")]
pub fn client_key_of(parts: &axum::http::request::Parts) -> String {
    use axum::extract::ConnectInfo;
    let cookie =
        cookie(&parts.headers, "cogvlm_client").filter(|id| !id.is_empty() && id.len() <= 64);
    if let Some(id) = cookie {
        return format!("client:{id}");
    }
    parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| format!("ip:{}", addr.ip()))
        .unwrap_or_else(|| "unknown".into())
}

/// The value of cookie `name`, if the request has it.
#[cfg(feature = "ssr")]
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(feature = "ssr")]
fn client_key() -> String {
    use_context::<axum::http::request::Parts>()
        .map(|parts| client_key_of(&parts))
        .unwrap_or_else(|| "unknown".into())
}

/// The error for a websocket frame that is not a message of this call.
#[cfg(feature = "ssr")]
fn bad_frame(e: &ServerFnError) -> String {
    format!("bad request: the message is not a valid request ({e})")
}

/// One chat session, whoever carries its frames (this server function, or the server's own
/// websocket handler with larger frame limits): reads `Generate` then maybe `Stop` from
/// `input` (an `Err` item is a frame that could not be read, with the message for the user),
/// and sends the events to `tx` until the final one.
#[cfg(feature = "ssr")]
pub async fn run_chat(
    mut input: impl futures::Stream<Item = Result<ClientMsg, String>> + Send + Unpin + 'static,
    backend: Result<crate::backend::BackendContext, String>,
    client: String,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    use futures::StreamExt;
    let backend = match backend {
        Ok(b) => b,
        Err(message) => {
            let _ = tx.send(Event::Error { message }).await;
            return;
        }
    };
    let req = match input.next().await {
        Some(Ok(ClientMsg::Generate(req))) => *req,
        Some(Ok(ClientMsg::Stop)) => {
            let message = "bad request: the first message must be a question (Generate)".into();
            let _ = tx.send(Event::Error { message }).await;
            return;
        }
        Some(Err(message)) => {
            let _ = tx.send(Event::Error { message }).await;
            return;
        }
        None => return,
    };
    let mut generation = backend.0.generate(req, &client);
    let cancel = generation.cancel.clone();
    // Later client messages: Stop cancels; the input ending (socket closed) does too.
    let watcher = tokio::spawn(async move {
        while let Some(msg) = input.next().await {
            if matches!(msg, Ok(ClientMsg::Stop) | Err(_)) {
                break;
            }
        }
        cancel.cancel();
    });
    while let Some(event) = generation.events.recv().await {
        let last = event.is_final();
        if tx.send(event).await.is_err() {
            // The client is gone.
            generation.cancel.cancel();
            break;
        }
        if last {
            break;
        }
    }
    watcher.abort();
}

/// The checkpoints in the models folder and the loaded one.
#[server(endpoint = "list_models")]
pub async fn list_models() -> Result<ModelsState, ServerFnError> {
    let backend = backend().map_err(ServerFnError::new)?;
    Ok(backend.0.models())
}

/// One generation: the client sends `Generate` (then maybe `Stop`); the server streams events
/// until `Done` or `Error`. A closed socket cancels the generation.
#[server(endpoint = "chat", protocol = Websocket<JsonEncoding, JsonEncoding>)]
pub async fn chat(
    input: BoxedStream<ClientMsg, ServerFnError>,
) -> Result<BoxedStream<Event, ServerFnError>, ServerFnError> {
    use futures::StreamExt;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    let input: std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>> = input.into();
    let input = input.map(|item| item.map_err(|e| bad_frame(&e)));
    tokio::spawn(run_chat(input, backend(), client_key(), tx));
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok))).into())
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
                let _ = tx.send(Ok(Event::Error { message })).await;
                return;
            }
        };
        let name = match input.next().await {
            Some(Ok(name)) => name,
            Some(Err(e)) => {
                let message = bad_frame(&e);
                let _ = tx.send(Ok(Event::Error { message })).await;
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
