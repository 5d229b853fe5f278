//! Server functions: the model list, the image upload (multipart), chat (websocket) and checkpoint
//! switching (websocket). The chat session itself, the kept uploads, cookies and client identity are
//! the server's (`server/src/web/`), reached through [`crate::backend`].
//!
//! Websocket rules (Leptos 0.8 / server_fn 0.8): the body returns its output stream at once and
//! reads the input only inside a spawned task (awaiting it before returning deadlocks the
//! upgrade); errors travel as `Event::Error` items (an `Err` before the upgrade reaches the
//! client only as "connection failed"); every stream ends with a final event (`Done`, `Error`,
//! `Loaded`) because the client always sees a close error after the last item.

use crate::protocol::{ClientMsg, Event, ModelsState, UploadRef};
use leptos::prelude::*;
use leptos::server_fn::codec::{JsonEncoding, MultipartData, MultipartFormData};
use leptos::server_fn::{BoxedStream, Websocket};

#[cfg(feature = "ssr")]
fn backend() -> Result<crate::backend::BackendContext, String> {
    use_context::<crate::backend::BackendContext>()
        .ok_or_else(|| "the server has no model engine (not started with `cogvlm serve`?)".into())
}

#[cfg(feature = "ssr")]
fn web() -> Result<(crate::backend::WebContext, axum::http::request::Parts), String> {
    let web = use_context::<crate::backend::WebContext>()
        .ok_or("the server has no web layer (not started with `cogvlm serve`?)")?;
    let parts = use_context::<axum::http::request::Parts>()
        .ok_or("the server function has no request (not called through leptos_axum?)")?;
    Ok((web, parts))
}

/// The error for a websocket frame that is not a message of this call.
#[cfg(feature = "ssr")]
fn bad_frame(e: &ServerFnError) -> String {
    // The runtime calls any undecodable frame "error deserializing server function results".
    let detail = match e {
        ServerFnError::Deserialization(m) => m.clone(),
        e => e.to_string(),
    };
    format!("bad request: the message is not a valid request ({detail})")
}

/// A failed server function with the message for the user, and its HTTP status from the kind.
#[cfg(feature = "ssr")]
fn fail(e: crate::protocol::Error) -> ServerFnError {
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        if let Ok(status) = axum::http::StatusCode::from_u16(e.kind.http_status()) {
            response.set_status(status);
        }
    }
    ServerFnError::new(e.message)
}

/// The checkpoints in the models folder and the loaded one.
#[server(endpoint = "list_models")]
pub async fn list_models() -> Result<ModelsState, ServerFnError> {
    let backend = backend().map_err(ServerFnError::new)?;
    Ok(backend.0.models())
}

/// Keeps an image on the server for the chat calls that follow: the form's `image` field (a file),
/// refused past the server's size limit as it arrives, or when it is not an image the model takes.
/// Answers the reference the chat's requests name it by.
#[server(endpoint = "upload_image", input = MultipartFormData)]
pub async fn upload_image(data: MultipartData) -> Result<UploadRef, ServerFnError> {
    use crate::protocol::Error;
    let (web, parts) = web().map_err(|m| fail(Error::internal(m)))?;
    let unreadable = |e: &dyn std::fmt::Display| {
        fail(Error::bad_input(format!(
            "bad request: the upload could not be read ({e})"
        )))
    };
    let Some(mut form) = data.into_inner() else {
        return Err(fail(Error::bad_input("bad request: not a multipart form")));
    };
    let limit = web.0.max_upload_bytes();
    while let Some(mut field) = form.next_field().await.map_err(|e| unreadable(&e))? {
        if field.name() != Some("image") {
            continue;
        }
        let name = field.file_name().unwrap_or("image").to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| unreadable(&e))? {
            if bytes.len() + chunk.len() > limit {
                return Err(fail(Error::bad_input(format!(
                    "image {name:?} is larger than {:.1} MB, the limit",
                    limit as f64 / 1e6
                ))));
            }
            bytes.extend_from_slice(&chunk);
        }
        return web.0.upload(&parts, name, bytes).map_err(fail);
    }
    Err(fail(Error::bad_input(
        "bad request: the form has no `image` file",
    )))
}

/// One generation: the client sends `Generate` (naming an uploaded image, if any), then maybe
/// `Stop`; the server streams events until `Done` or `Error`. A closed socket cancels the
/// generation.
#[server(endpoint = "chat", protocol = Websocket<JsonEncoding, JsonEncoding>)]
pub async fn chat(
    input: BoxedStream<ClientMsg, ServerFnError>,
) -> Result<BoxedStream<Event, ServerFnError>, ServerFnError> {
    use futures::StreamExt;
    let mut events = match web() {
        Ok((web, parts)) => {
            let input: std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>> = input.into();
            let input = input.map(|msg| msg.map_err(|e| bad_frame(&e))).boxed();
            web.0.chat(&parts, input)
        }
        Err(message) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.try_send(Event::error(crate::protocol::ErrorKind::Internal, message));
            rx
        }
    };
    Ok(futures::stream::poll_fn(move |cx| events.poll_recv(cx).map(|e| e.map(Ok))).into())
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
        // One message is all this socket takes: its name, within a few seconds of opening.
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), input.next());
        let first = first.await.unwrap_or_else(|_| {
            Some(Err(ServerFnError::Deserialization(
                "no checkpoint name came within 10 s".into(),
            )))
        });
        drop(input);
        let name = match first {
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
