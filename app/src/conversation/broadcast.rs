//! The `BroadcastChannel` `cogvlm-conversations` between tabs of this page: what a tab announces (a save, a
//! delete); `tabs.rs` listens.

use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

pub(super) const CHANNEL: &str = "cogvlm-conversations";

#[wasm_bindgen]
extern "C" {
    /// The browser's `BroadcastChannel`, declared here: web-sys has it behind a feature, and a change of the
    /// web-sys features rebuilds every crate of the page that uses web-sys.
    pub(super) type BroadcastChannel;
    #[wasm_bindgen(constructor, catch)]
    pub(super) fn new(name: &str) -> Result<BroadcastChannel, JsValue>;
    #[wasm_bindgen(method, catch, js_name = postMessage)]
    fn post_message(this: &BroadcastChannel, message: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(method, setter)]
    pub(super) fn set_onmessage(this: &BroadcastChannel, handler: Option<&js_sys::Function>);
}

/// What one tab tells the others.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) enum Message {
    Saved { id: String, revision: u64 },
    Deleted { id: String },
}

thread_local! {
    pub(super) static OPEN: RefCell<Option<BroadcastChannel>> = const { RefCell::new(None) };
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
