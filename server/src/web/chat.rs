//! One chat session on the page's socket: reads `Generate` (then maybe `Stop`), hands the request
//! to the backend (the local engine or a remote server) and forwards its events until the final
//! one. A `Stop`, a frame that cannot be read or the socket closing cancels the generation.

use app::backend::Backend;
use futures::{Stream, StreamExt};
use protocol::{ClientMsg, ErrorKind, Event};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Runs one session: `input` yields the client's messages (an `Err` item is a frame that could not
/// be read, with the message for the user); the events go to `tx` until the final one.
pub async fn run_chat(
    mut input: impl Stream<Item = Result<ClientMsg, String>> + Send + Unpin + 'static,
    backend: Arc<dyn Backend>,
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
