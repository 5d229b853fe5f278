//! What the server functions need from the server (ssr only).
//!
//! The server crate implements [`Backend`] on its engine handle (a worker thread behind
//! channels) and [`Web`] in its web layer (uploads, chat sessions, who the client is), and provides
//! both as context; the server functions in [`crate::api`] only see these traits and the protocol
//! types. Another implementation (a remote engine, a test double for the web layer) can be
//! provided the same way.

use crate::protocol::{ClientMsg, Event, GenerateRequest, ModelsState, UploadRef};
use axum::http::request::Parts;
use futures::stream::BoxStream;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A running (or queued) generation.
pub struct Generation {
    /// Events for this request only, ending with `Done` or `Error`. Dropping the receiver
    /// cancels the request.
    pub events: mpsc::Receiver<Event>,
    /// Asks the worker to stop early; it then ends the stream with `Done { stop: Cancelled }`.
    pub cancel: CancelHandle,
}

/// Cancels one request; cheap to clone.
#[derive(Clone)]
pub struct CancelHandle(Arc<dyn Fn() + Send + Sync>);

impl CancelHandle {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
    pub fn cancel(&self) {
        (self.0)()
    }
}

/// The model side, as seen by the web layer.
pub trait Backend: Send + Sync + 'static {
    /// The checkpoints found, which one is loaded, what is loading.
    fn models(&self) -> ModelsState;
    /// Queues a generation for `client` (a stable id of the browser or API caller, used for
    /// fairness: one active request and a request rate per client). A refused request (queue
    /// full, limits, bad input) is a `Generation` whose only event is `Error`.
    fn generate(&self, req: GenerateRequest, client: &str) -> Generation;
    /// Queues a checkpoint switch: `LoadProgress` events, then `Loaded` or `Error` (the
    /// current checkpoint stays if loading fails).
    fn load(&self, name: String) -> mpsc::Receiver<Event>;
}

/// The context value the server functions look up.
#[derive(Clone)]
pub struct BackendContext(pub Arc<dyn Backend>);

/// The server's web layer, as the server functions see it: it knows which client a request comes
/// from, keeps the uploaded images and runs the chat sessions.
pub trait Web: Send + Sync + 'static {
    /// The largest image file accepted, in bytes.
    fn max_upload_bytes(&self) -> usize;
    /// Keeps an uploaded image for the client of `request`; refuses a file the engine would not
    /// take (too large, not an image, too many pixels) with the message for the user.
    fn upload(
        &self,
        request: &Parts,
        name: String,
        bytes: Vec<u8>,
    ) -> Result<UploadRef, crate::protocol::Error>;
    /// Runs one chat session for the client of `request`: `input` yields its messages (an `Err`
    /// item is a frame that could not be read, with the message for the user); the events end with
    /// the final one.
    fn chat(
        &self,
        request: &Parts,
        input: BoxStream<'static, Result<ClientMsg, String>>,
    ) -> mpsc::Receiver<Event>;
}

/// The context value of [`Web`].
#[derive(Clone)]
pub struct WebContext(pub Arc<dyn Web>);
