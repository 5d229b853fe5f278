//! Other tabs of this page in the same browser. Each save and delete is announced on the `BroadcastChannel`
//! `cogvlm-conversations`, so a tab showing the same conversation learns of it at once and reloads it, rather
//! than at its own next save (where the revision check would catch it anyway: `saving.rs`).

use super::broadcast::{BroadcastChannel, Message, CHANNEL, OPEN};
use super::{records, saving};
use crate::i18n::tr;
use crate::state::AppState;
use leptos::prelude::*;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// Joins the channel (a browser without `BroadcastChannel` still saves safely: the revision check remains).
pub fn listen(state: AppState) {
    let Ok(channel) = BroadcastChannel::new(CHANNEL) else {
        return;
    };
    let on_message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
            let message = ev
                .data()
                .as_string()
                .and_then(|t| serde_json::from_str(&t).ok());
            if let Some(message) = message {
                heard(state, message);
            }
        });
    channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // The channel and its handler live as long as the page.
    on_message.forget();
    OPEN.with(|o| *o.borrow_mut() = Some(channel));
}

fn heard(state: AppState, message: Message) {
    let c = state.conversations;
    if !c.ready.get_untracked() {
        return;
    }
    records::refresh_list(state);
    match message {
        Message::Saved { id, revision } => {
            if c.id.with_untracked(|open| *open == id) && revision > c.sync.revision(&id) {
                reload(state, id);
            }
        }
        Message::Deleted { id } => {
            if c.id.with_untracked(|open| *open == id) {
                state.note.set(Some(
                    tr(
                        state.lang.get_untracked(),
                        "This conversation was deleted in another tab: it is saved again if you go on with it here.",
                    )
                    .into(),
                ));
            }
        }
    }
}

/// Reloads the open conversation `id` that another tab saved, when this tab has nothing of its own to lose: no
/// answer on its way, no save waiting or failed. Otherwise this tab's next save meets the newer revision and
/// keeps both (`saving.rs`).
fn reload(state: AppState, id: String) {
    let c = state.conversations;
    let unsaved = c.sync.saving() || c.error.with_untracked(Option::is_some);
    if unsaved || !saving::idle(state) {
        return;
    }
    leptos::task::spawn_local(async move {
        let _turn = saving::one_at_a_time().await;
        if c.sync.saving() {
            return;
        }
        match records::read(state, &id).await {
            Ok(rec) if rec.revision > c.sync.revision(&id) => saving::take_newer(state, rec),
            Ok(_) => {}
            Err(e) => state.note.set(Some(e)),
        }
    });
}
