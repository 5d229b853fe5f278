//! Other tabs of this page in the same browser. Each save and delete is announced on the `BroadcastChannel`
//! `cogvlm-conversations`, so a tab showing the same conversation learns of it at once and reloads it, rather
//! than at its own next save (where the revision check would catch it anyway: `saving.rs`).

use super::{saving, store};
use crate::i18n::tr;
use crate::state::AppState;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

const CHANNEL: &str = "cogvlm-conversations";

#[wasm_bindgen]
extern "C" {
    /// The browser's `BroadcastChannel`, declared here: web-sys has it behind a feature, and a change of the
    /// web-sys features rebuilds every crate of the page that uses web-sys.
    type BroadcastChannel;
    #[wasm_bindgen(constructor, catch)]
    fn new(name: &str) -> Result<BroadcastChannel, JsValue>;
    #[wasm_bindgen(method, catch, js_name = postMessage)]
    fn post_message(this: &BroadcastChannel, message: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(method, setter)]
    fn set_onmessage(this: &BroadcastChannel, handler: Option<&js_sys::Function>);
}

/// What one tab tells the others.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Message {
    Saved { id: String, revision: u64 },
    Deleted { id: String },
}

thread_local! {
    static OPEN: RefCell<Option<BroadcastChannel>> = const { RefCell::new(None) };
}

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

fn announce(message: &Message) {
    let Ok(text) = serde_json::to_string(message) else {
        return;
    };
    OPEN.with(|o| {
        if let Some(channel) = &*o.borrow() {
            let _ = channel.post_message(&JsValue::from_str(&text));
        }
    });
}

pub fn announce_saved(id: &str, revision: u64) {
    announce(&Message::Saved {
        id: id.into(),
        revision,
    });
}

pub fn announce_deleted(id: &str) {
    announce(&Message::Deleted { id: id.into() });
}

fn heard(state: AppState, message: Message) {
    let c = state.conversations;
    if !c.ready.get_untracked() {
        return;
    }
    store::refresh_list(state);
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
        match store::read(state, &id).await {
            Ok(rec) if rec.revision > c.sync.revision(&id) => saving::take_newer(state, rec),
            Ok(_) => {}
            Err(e) => state.note.set(Some(e)),
        }
    });
}
