//! The page's side of the web layer ([`app::backend::Web`]): uploads and chat sessions, for the
//! client a request comes from.
//!
//! One chat session reads `Generate` (then maybe `Stop`), finds the image it names among the
//! client's uploads, hands the request to the backend (the local engine or a remote server) and
//! forwards its events until the final one. A `Stop`, a frame that cannot be read or the socket
//! closing cancels the generation.

use super::uploads::Uploads;
use crate::net::client_id::client_key_of;
use app::backend::{Backend, Web};
use axum::http::request::Parts;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use protocol::{ClientMsg, ErrorKind, Event, GenerateRequest, UploadRef};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The web layer the server functions call ([`app::backend::WebContext`]).
pub struct WebLayer {
    backend: Arc<dyn Backend>,
    uploads: Arc<Uploads>,
    first_message: Duration,
}

/// How long a chat socket may stay open without its question.
pub const FIRST_MESSAGE: Duration = Duration::from_secs(10);

impl WebLayer {
    pub fn new(backend: Arc<dyn Backend>, uploads: Uploads) -> Self {
        Self {
            backend,
            uploads: Arc::new(uploads),
            first_message: FIRST_MESSAGE,
        }
    }

    /// A socket whose question does not come within `deadline` is answered with an error and
    /// closed (an open socket holds a connection and a task).
    pub fn with_first_message(mut self, deadline: Duration) -> Self {
        self.first_message = deadline;
        self
    }
}

impl Web for WebLayer {
    fn max_upload_bytes(&self) -> usize {
        self.uploads.limits().max_upload_bytes
    }

    fn upload(
        &self,
        request: &Parts,
        name: String,
        bytes: Vec<u8>,
    ) -> Result<UploadRef, protocol::Error> {
        self.uploads.put(&client_key_of(request), name, bytes)
    }

    fn chat(
        &self,
        request: &Parts,
        input: BoxStream<'static, Result<ClientMsg, String>>,
    ) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(256);
        let input = first_within(input, self.first_message);
        tokio::spawn(run_chat(
            input,
            self.backend.clone(),
            self.uploads.clone(),
            client_key_of(request),
            tx,
        ));
        rx
    }
}

/// Runs one session: `input` yields the client's messages (an `Err` item is a frame that could not
/// be read, with the message for the user); the events go to `tx` until the final one.
pub async fn run_chat(
    mut input: impl Stream<Item = Result<ClientMsg, String>> + Send + Unpin + 'static,
    backend: Arc<dyn Backend>,
    uploads: Arc<Uploads>,
    client: String,
    tx: mpsc::Sender<Event>,
) {
    let req = match input.next().await {
        Some(Ok(ClientMsg::Generate(req))) => *req,
        Some(Ok(ClientMsg::Stop)) => {
            let message = "bad request: the first message must be a question (Generate)";
            let _ = tx.send(Event::error(ErrorKind::BadInput, message)).await;
            return;
        }
        Some(Err(message)) => {
            let _ = tx.send(Event::error(ErrorKind::BadInput, message)).await;
            return;
        }
        None => return,
    };
    let req = match with_uploaded_image(&req, &uploads, &client) {
        Ok(req) => req,
        Err(e) => {
            let _ = tx.send(e.into()).await;
            return;
        }
    };
    let mut generation = backend.generate(req, &client);
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

/// `input`, whose first item becomes an error when it does not come within `deadline`.
fn first_within(
    input: BoxStream<'static, Result<ClientMsg, String>>,
    deadline: Duration,
) -> BoxStream<'static, Result<ClientMsg, String>> {
    let first = futures::stream::once(async move {
        let mut input = input;
        let first = match tokio::time::timeout(deadline, input.next()).await {
            Ok(first) => first,
            Err(_) => Some(Err(format!(
                "bad request: no question came within {} s of opening the socket",
                deadline.as_secs()
            ))),
        };
        (first, input)
    });
    first
        .flat_map(|(first, rest)| futures::stream::iter(first).chain(rest))
        .boxed()
}

/// The request with the image it names in place of the name.
fn with_uploaded_image(
    req: &GenerateRequest<UploadRef>,
    uploads: &Uploads,
    client: &str,
) -> Result<GenerateRequest, protocol::Error> {
    let image = req
        .image
        .as_ref()
        .map(|r| uploads.get(client, r))
        .transpose()?;
    Ok(req.with_image(image))
}
