//! Saving conversations so that nothing is lost, whatever the browser or another tab does. A tab saves one
//! conversation at a time, in the order asked. Each save is a compare-and-set on the record's revision
//! ([`idb::put_if`]). A failed transaction is retried with backoff before the user is told, and the next save
//! that succeeds clears what they were told.
//!
//! When another tab saved the conversation first, this tab's save writes nothing, and then one of two things
//! happens. If the stored version already holds everything this tab had, the tab takes it and reloads its turns.
//! Otherwise the tab's own version is saved as a new conversation (a fork): the tab keeps showing it, and the
//! other tab's version stays in the list. Either way the tab says so.

use super::idb::{self, StoreError};
use super::record::SavedConversation;
use super::{broadcast, records};
use crate::i18n::tr;
use crate::state::{AppState, TurnStatus};
use futures::lock::{Mutex, OwnedMutexGuard};
use leptos::prelude::*;
use std::sync::Arc;

/// Milliseconds to wait before each retry of a failed save; the user hears of the failure after the last.
const RETRY_MS: [u32; 3] = [200, 800, 2000];

thread_local! {
    static ONE_AT_A_TIME: Arc<Mutex<()>> = Arc::new(Mutex::new(()));
}

/// Held while a tab writes (or reloads) conversations: its saves never race each other.
pub async fn one_at_a_time() -> OwnedMutexGuard<()> {
    ONE_AT_A_TIME.with(Arc::clone).lock_owned().await
}

/// Whether no answer is on its way (a reload now would drop it).
pub fn idle(state: AppState) -> bool {
    !state.turns.with_untracked(|t| {
        t.iter()
            .any(|t| t.status.with_untracked(TurnStatus::is_active))
    })
}

/// Saves `rec` (a snapshot of the page) after the saves asked before it.
pub fn save(state: AppState, rec: SavedConversation) {
    let sync = state.conversations.sync;
    sync.pending.update_value(|n| *n += 1);
    leptos::task::spawn_local(async move {
        let _turn = one_at_a_time().await;
        save_now(state, rec).await;
        sync.pending.update_value(|n| *n -= 1);
    });
}

async fn save_now(state: AppState, mut rec: SavedConversation) {
    let sync = state.conversations.sync;
    if let Some(fork) = sync.forks.with_value(|f| f.get(&rec.id).cloned()) {
        rec.id = fork;
    }
    let base = sync.revision(&rec.id);
    match write(&mut rec, base).await {
        Ok(()) => saved(state, &rec),
        Err(StoreError::Conflict) => reconcile(state, rec).await,
        Err(e) => failed(state, &e),
    }
}

/// Saves `rec` over the revision it was read at (a rename of a conversation that is not open); the caller holds
/// [`one_at_a_time`].
pub async fn save_over(state: AppState, mut rec: SavedConversation) {
    let base = rec.revision;
    match write(&mut rec, base).await {
        Ok(()) => {
            saved(state, &rec);
            records::refresh_list(state);
        }
        Err(StoreError::Conflict) => state.note.set(Some(
            tr(
                state.lang.get_untracked(),
                "It changed in another tab at the same moment: nothing was changed, try again.",
            )
            .into(),
        )),
        Err(e) => failed(state, &e),
    }
}

/// Writes `rec` as revision `base + 1`, trying again after each of [`RETRY_MS`] while the failure is one that a
/// retry may cure (a conflict or a closed database is not).
async fn write(rec: &mut SavedConversation, base: u64) -> Result<(), StoreError> {
    rec.revision = base + 1;
    let (json, summary) = (rec.to_json(), rec.summary());
    let mut waits = RETRY_MS.iter();
    loop {
        match idb::put_if(&json, &summary, base).await {
            Err(e) if e.worth_retrying() => match waits.next() {
                Some(&ms) => sleep(ms).await,
                None => return Err(e),
            },
            done => return done,
        }
    }
}

fn saved(state: AppState, rec: &SavedConversation) {
    let c = state.conversations;
    c.sync.set_revision(&rec.id, rec.revision);
    if c.error.with_untracked(Option::is_some) {
        c.error.set(None);
    }
    broadcast::announce_saved(&rec.id, rec.revision);
}

fn failed(state: AppState, e: &StoreError) {
    let lang = state.lang.get_untracked();
    let (what, advice) = if e.worth_retrying() {
        (
            "Could not save the conversation, even after retrying:",
            "It is still on this page: free some disk space, or export it.",
        )
    } else {
        (
            "Could not save the conversation:",
            "It is still on this page: export it to keep it.",
        )
    };
    state.conversations.error.set(Some(format!(
        "{} {e}. {}",
        tr(lang, what),
        tr(lang, advice)
    )));
    // Nothing of it was written: the next change saves all of it again.
    records::forget_last_saved(state);
}

/// Another tab saved `rec`'s conversation after this tab last read it.
async fn reconcile(state: AppState, rec: SavedConversation) {
    let stored = match idb::get(&rec.id).await {
        Ok(Some(json)) => SavedConversation::from_json(&json).ok(),
        _ => None,
    };
    match stored {
        Some(stored) if stored.holds(&rec) => take_newer(state, stored),
        _ => fork(state, rec).await,
    }
}

/// Shows the stored `rec`, newer than what the tab has and holding all of it, unless the tab has moved on (an
/// answer on its way, another conversation open): then the tab's next save meets the newer revision and
/// reconciles again, with whatever it has by then.
pub fn take_newer(state: AppState, rec: SavedConversation) {
    let open = state.conversations.id.with_untracked(|id| *id == rec.id);
    if !open || !idle(state) {
        return;
    }
    records::restore(state, rec);
    state.note.set(Some(
        tr(
            state.lang.get_untracked(),
            "This conversation changed in another tab: its turns were reloaded here.",
        )
        .into(),
    ));
}

/// Saves this tab's version of a conversation another tab changed as a new conversation; the tab goes on in it.
async fn fork(state: AppState, mut rec: SavedConversation) {
    let c = state.conversations;
    let lang = state.lang.get_untracked();
    let from = rec.id.clone();
    rec.id = records::new_id();
    rec.title = format!("{} ({})", rec.title, tr(lang, "copy"));
    if let Err(e) = write(&mut rec, 0).await {
        failed(state, &e);
        return;
    }
    c.sync.forks.update_value(|f| {
        f.insert(from.clone(), rec.id.clone());
    });
    if c.id.with_untracked(|id| *id == from) {
        c.id.set(rec.id.clone());
        c.title.set(Some(rec.title.clone()));
        idb::set_open_id(&rec.id);
    }
    saved(state, &rec);
    records::refresh_list(state);
    state.note.set(Some(format!(
        "{} “{}”.",
        tr(
            lang,
            "This conversation changed in another tab. This tab's turns were saved as a new conversation:"
        ),
        rec.title
    )));
}

async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
