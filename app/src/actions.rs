//! What the page does, apart from how it looks: send / stop / clear / retry / resend a question (streamed over
//! the chat websocket), replay a recorded answer, and list / switch checkpoints. Components, the conversation
//! store and the task pickers call these; nothing here names a component.

use crate::api::{chat, list_models, load_model};
use crate::i18n::tr;
use crate::protocol::{ClientMsg, ErrorKind, Event, GenerateRequest, ModelsState, UploadRef};
use crate::state::{AppState, Loading, TurnStatus};
use crate::upload;
use futures::StreamExt;
use leptos::prelude::*;
use leptos::server_fn::ServerFnError;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How long Stop waits for the server's `Done` before dropping the connection itself.
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// Sends `query` as a new turn (with the finished turns before it as history).
pub fn send(state: AppState, query: String) {
    if state.busy.get_untracked() || query.trim().is_empty() {
        return;
    }
    let req = request(state, query.clone());
    // The image by its page URL: its bytes are read only if it must be uploaded.
    let image = state
        .image
        .with_untracked(|i| i.as_ref().map(|i| i.url.clone()));
    let turn = state.new_turn(query, String::new(), TurnStatus::Waiting);
    state.turns.update(|t| t.push(turn.clone()));
    state.busy.set(true);
    state.note.set(None);

    let (answer, status) = (turn.answer, turn.status);
    let pending = PendingText::default();
    let shown = pending.clone();
    let run = run_turn(state, image, req, answer, status, pending);
    let (run, abort) = futures::future::abortable(run);
    state.aborter.set_value(Some(abort));
    leptos::task::spawn_local(async move {
        if run.await.is_err() {
            // Aborted by Stop after the grace period: keep what arrived.
            shown.flush(answer, status);
            status.set(TurnStatus::Stopped);
        }
        state.sender.set_value(None);
        state.aborter.set_value(None);
        state.busy.set(false);
    });
}

/// The request for `query`: the answered turns as history, the settings' prompt version and sampling.
fn request(state: AppState, query: String) -> GenerateRequest<UploadRef> {
    let history: Vec<(String, String)> = state.turns.with_untracked(|turns| {
        turns
            .iter()
            .filter(|t| t.status.with_untracked(TurnStatus::is_answer))
            .map(|t| (t.query.clone(), t.answer.get_untracked()))
            .collect()
    });
    GenerateRequest {
        image: None,
        history,
        query,
        version: Some(state.settings.version.get_untracked()),
        sampling: state.settings.sampling(),
    }
}

/// How one try at an answer ended.
enum Attempt {
    /// The turn is over (answered, stopped or failed): its status says which.
    Over,
    /// The server no longer has the image (it restarted): upload it again and retry.
    ImageForgotten,
}

/// Uploads the image if the server lacks it and streams the answer into the turn; a second try only when the
/// server forgot the image.
async fn run_turn(
    state: AppState,
    image: Option<String>,
    req: GenerateRequest<UploadRef>,
    answer: RwSignal<String>,
    status: RwSignal<TurnStatus>,
    pending: PendingText,
) {
    for _ in 0..2 {
        let upload = match &image {
            Some(url) => match upload::ensure(state, url).await {
                Ok(r) => Some(r),
                Err(message) => {
                    status.set(TurnStatus::Error(message));
                    return;
                }
            },
            None => None,
        };
        let sent_image = upload.is_some();
        let req = req.with_image(upload);
        match stream_answer(state, req, sent_image, answer, status, &pending).await {
            Attempt::Over => return,
            Attempt::ImageForgotten => upload::forget(state),
        }
    }
    status.set(TurnStatus::Error(
        "the server forgot the image again right after it was uploaded: try again".into(),
    ));
}

/// One websocket call: sends the request (keeping the sender for Stop) and applies the events to the turn.
async fn stream_answer(
    state: AppState,
    req: GenerateRequest<UploadRef>,
    sent_image: bool,
    answer: RwSignal<String>,
    status: RwSignal<TurnStatus>,
    pending: &PendingText,
) -> Attempt {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<ClientMsg, ServerFnError>>();
    let _ = tx.unbounded_send(Ok(ClientMsg::Generate(Box::new(req))));
    state.sender.set_value(Some(tx));
    let mut events = match chat(rx.into()).await {
        Ok(events) => events,
        Err(e) => {
            status.set(TurnStatus::Error(format!(
                "could not reach the server: {e}"
            )));
            return Attempt::Over;
        }
    };
    loop {
        let event = match events.next().await {
            Some(Ok(Event::Token { text })) => {
                pending.push(&text, answer, status);
                continue;
            }
            Some(Ok(Event::Error {
                kind: ErrorKind::UploadMissing,
                ..
            })) if sent_image => return Attempt::ImageForgotten,
            Some(Ok(event)) => event,
            Some(Err(e)) => Event::error(ErrorKind::Internal, format!("connection lost: {e}")),
            None => Event::error(ErrorKind::Internal, "the server closed the connection"),
        };
        pending.flush(answer, status);
        if apply(answer, status, event) {
            return Attempt::Over;
        }
    }
}

/// Answer text received but not yet on the page. The answer is re-rendered (markdown, boxes,
/// scrolling) at most once per animation frame rather than once per token, so a page that
/// renders slower than the model writes never falls behind the stream: Stop and the end of
/// the answer show as soon as the server sends them.
#[derive(Clone, Default)]
struct PendingText(Rc<RefCell<String>>);

impl PendingText {
    /// Adds a piece of the answer; the first piece since the last paint schedules the next one.
    fn push(&self, text: &str, answer: RwSignal<String>, status: RwSignal<TurnStatus>) {
        let first = self.0.borrow().is_empty();
        self.0.borrow_mut().push_str(text);
        if first {
            let this = self.clone();
            request_animation_frame(move || this.flush(answer, status));
        }
    }

    /// Shows the waiting text now (before an event that changes or ends the turn).
    fn flush(&self, answer: RwSignal<String>, status: RwSignal<TurnStatus>) {
        let text = std::mem::take(&mut *self.0.borrow_mut());
        // A frame that comes after the turn ended has nothing left to show.
        if !text.is_empty() && status.with_untracked(TurnStatus::is_active) {
            apply(answer, status, Event::Token { text });
        }
    }
}

/// Applies one server event to a turn's answer and status; true when the turn is over.
/// Live answers and recorded ones (the test hook) both go through here.
pub fn apply(answer: RwSignal<String>, status: RwSignal<TurnStatus>, event: Event) -> bool {
    match event {
        Event::Queued { position, eta_ms } => status.set(TurnStatus::Queued {
            ahead: position,
            eta_ms,
        }),
        Event::Started { .. } => status.set(TurnStatus::Waiting),
        Event::Token { text } => {
            answer.update(|a| a.push_str(&text));
            if !matches!(status.get_untracked(), TurnStatus::Streaming) {
                status.set(TurnStatus::Streaming);
            }
        }
        Event::Done { stats } => {
            status.set(TurnStatus::Done(stats));
            return true;
        }
        Event::Error { message, .. } => {
            status.set(TurnStatus::Error(message));
            return true;
        }
        Event::LoadProgress { .. } | Event::Loaded { .. } => {}
    }
    false
}

/// Shows `query` and a recorded `answer` as a new turn, the answer streamed in word by word
/// through [`apply`] like a live one. Used by the page's test hook only.
pub fn replay(state: AppState, query: String, answer_text: &str) {
    if state.busy.get_untracked() {
        return;
    }
    let turn = state.new_turn(query, String::new(), TurnStatus::Waiting);
    state.turns.update(|t| t.push(turn.clone()));
    for piece in answer_text.split_inclusive(' ') {
        apply(
            turn.answer,
            turn.status,
            Event::Token {
                text: piece.to_string(),
            },
        );
    }
    turn.status.set(TurnStatus::Recorded);
}

/// Asks the server to stop the running generation; drops the connection if it does not
/// answer within [`STOP_GRACE`] (the server then cancels on the closed socket).
pub fn stop(state: AppState) {
    let Some(turn_id) = state.turns.with_untracked(|t| t.last().map(|t| t.id)) else {
        return;
    };
    if !state.busy.get_untracked() {
        return;
    }
    state.sender.with_value(|tx| {
        if let Some(tx) = tx {
            let _ = tx.unbounded_send(Ok(ClientMsg::Stop));
        }
    });
    set_timeout(
        move || {
            let same_turn = state.turns.with_untracked(|t| t.last().map(|t| t.id)) == Some(turn_id);
            if same_turn && state.busy.get_untracked() {
                state.aborter.with_value(|a| {
                    if let Some(a) = a {
                        a.abort();
                    }
                });
            }
        },
        STOP_GRACE,
    );
}

/// Empties the conversation (stopping a running answer first).
pub fn clear(state: AppState) {
    stop(state);
    state.aborter.with_value(|a| {
        if let Some(a) = a {
            a.abort();
        }
    });
    state.turns.set(Vec::new());
    state.hover.set(None);
    state.note.set(None);
}

/// Asks the last question again (replacing its answer).
pub fn retry(state: AppState) {
    if let Some(last) = state.turns.with_untracked(|t| t.last().map(|t| t.id)) {
        resend(state, last, None);
    }
}

/// Asks turn `id`'s question again, or `edited` in its place: that turn and every later one are dropped, and
/// the question goes with the turns before it as history (regenerate, edit-and-resend).
pub fn resend(state: AppState, id: u64, edited: Option<String>) {
    if state.busy.get_untracked() {
        return;
    }
    let Some(at) = state
        .turns
        .with_untracked(|t| t.iter().position(|t| t.id == id))
    else {
        return;
    };
    let query = edited.unwrap_or_else(|| state.turns.with_untracked(|t| t[at].query.clone()));
    if query.trim().is_empty() {
        return;
    }
    state.turns.update(|t| t.truncate(at));
    send(state, query);
}

/// Fetches the checkpoint list (after hydration) and sets the prompt version to the loaded
/// checkpoint's default.
pub fn refresh_models(state: AppState) {
    leptos::task::spawn_local(async move {
        match list_models().await {
            Ok(models) => {
                if let Some(name) = &models.loading {
                    state.loading.set(Some(Loading {
                        name: name.clone(),
                        done: 0,
                        total: 0,
                    }));
                    // Poll until the startup load is over.
                    set_timeout(
                        move || refresh_models(state),
                        std::time::Duration::from_millis(500),
                    );
                } else if state
                    .loading
                    .with_untracked(|l| l.as_ref().is_some_and(|l| l.total == 0))
                {
                    state.loading.set(None);
                }
                take_models(state, models);
                state.models_error.set(None);
            }
            Err(e) => state
                .models_error
                .set(Some(format!("could not list the models: {e}"))),
        }
    });
}

/// Shows `models`: the list, the load error, and the loaded checkpoint's default prompt version and sampling
/// (a later switch sets the version only: sampling the user has set stays).
pub fn take_models(state: AppState, models: ModelsState) {
    if let Some(ck) = models.current_checkpoint() {
        state.settings.start_with(ck);
    }
    state.load_error.set(models.load_error.clone());
    state.models.set(Some(models));
}

/// Loads checkpoint `name` (the old one answers until it is ready).
pub fn switch_model(state: AppState, name: String) {
    if state.current_model().as_deref() == Some(name.as_str())
        || state.loading.with_untracked(Option::is_some)
    {
        return;
    }
    state.load_error.set(None);
    state.loading.set(Some(Loading {
        name: name.clone(),
        done: 0,
        total: 0,
    }));
    leptos::task::spawn_local(async move {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let _ = tx.unbounded_send(Ok(name.clone()));
        let result = match load_model(rx.into()).await {
            Ok(mut events) => loop {
                match events.next().await {
                    Some(Ok(Event::LoadProgress { done, total })) => {
                        state.loading.set(Some(Loading {
                            name: name.clone(),
                            done,
                            total,
                        }))
                    }
                    Some(Ok(Event::Loaded { checkpoint })) => break Ok(checkpoint),
                    Some(Ok(Event::Error { message, .. })) => break Err(message),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Err(format!("connection lost: {e}")),
                    None => break Err("the server closed the connection".into()),
                }
            },
            Err(e) => Err(format!("could not reach the server: {e}")),
        };
        drop(tx);
        state.loading.set(None);
        match result {
            Ok(ck) => {
                state.settings.version.set(ck.default_version);
                state.models.update(|m| {
                    if let Some(m) = m {
                        m.current = Some(ck.name.clone());
                        m.load_error = None;
                    }
                });
            }
            Err(message) => {
                state.load_error.set(Some(format!(
                    "{} {name}: {message}",
                    tr(state.lang.get_untracked(), "Could not load")
                )));
                // Re-render the selector on the checkpoint that still answers.
                state.models.update(|_| {});
            }
        }
    });
}
