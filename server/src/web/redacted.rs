//! The backend as a shared server shows it: no absolute paths of the host's disk in the model list or
//! in any error (load failures name files), since peers on other machines read them. The host's terminal
//! keeps the full text.

use crate::net::redact::paths;
use app::backend::{Backend, Generation};
use protocol::{Event, GenerateRequest, ModelsState};
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Redacted(pub Arc<dyn Backend>);

/// `rx`'s events with the paths cut out of errors, until the final one; dropping the returned receiver
/// drops `rx` (which cancels, as before).
fn forward(mut rx: mpsc::Receiver<Event>) -> mpsc::Receiver<Event> {
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let event = match event {
                Event::Error { kind, message } => Event::Error {
                    kind,
                    message: paths(&message),
                },
                other => other,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    out
}

impl Backend for Redacted {
    fn models(&self) -> ModelsState {
        let mut state = self.0.models();
        let dir = std::path::Path::new(&state.models_dir);
        state.models_dir = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        state.load_error = state.load_error.as_deref().map(paths);
        for (folder, reason) in state.skipped.iter_mut() {
            *folder = paths(folder);
            *reason = paths(reason);
        }
        state
    }

    fn generate(&self, req: GenerateRequest, client: &str) -> Generation {
        let generation = self.0.generate(req, client);
        Generation {
            events: forward(generation.events),
            cancel: generation.cancel,
        }
    }

    fn load(&self, name: String) -> mpsc::Receiver<Event> {
        forward(self.0.load(name))
    }
}
