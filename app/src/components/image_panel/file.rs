//! Taking an image file: picked, dropped or pasted.

use crate::i18n::tr;
use crate::state::{AppState, UploadedImage};
use leptos::prelude::*;

/// Reads a picked, dropped or pasted file and makes it the conversation's image.
/// A new image starts a new conversation.
pub fn take_file(state: AppState, file: web_sys::File) {
    if !file.type_().starts_with("image/") {
        let lang = state.lang.get_untracked();
        state.note.set(Some(format!(
            "{} {} ({}).",
            file.name(),
            tr(lang, "is not an image"),
            if file.type_().is_empty() {
                tr(lang, "unknown type").to_string()
            } else {
                file.type_()
            }
        )));
        return;
    }
    // The server's limit, checked here so a too-large photo is refused before it is sent.
    let limit = state
        .models
        .with_untracked(|m| m.as_ref().map(|m| m.max_upload_bytes))
        .filter(|&l| l > 0);
    if let Some(limit) = limit.filter(|&l| file.size() > l as f64) {
        state.note.set(Some(format!(
            "{}: {:.1} MB; {} {:.1} MB.",
            file.name(),
            file.size() / 1e6,
            tr(
                state.lang.get_untracked(),
                "this server accepts images up to"
            ),
            limit as f64 / 1e6
        )));
        return;
    }
    leptos::task::spawn_local(async move {
        use base64::Engine as _;
        let buffer = match wasm_bindgen_futures::JsFuture::from(file.array_buffer()).await {
            Ok(b) => b,
            Err(_) => {
                state.note.set(Some(format!(
                    "{} {}.",
                    tr(state.lang.get_untracked(), "Could not read"),
                    file.name()
                )));
                return;
            }
        };
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        let Ok(url) = web_sys::Url::create_object_url_with_blob(&file) else {
            state.note.set(Some(format!(
                "{} {}.",
                tr(state.lang.get_untracked(), "Could not show"),
                file.name()
            )));
            return;
        };
        if let Some(old) = state.image.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old.url);
        }
        let had_conversation = state.turns.with_untracked(|t| !t.is_empty());
        if state.busy.get_untracked() {
            crate::actions::stop(state);
        }
        if had_conversation {
            // The old conversation stays in the list with its own image.
            crate::conversation::store::fork_for_new_image(state);
        }
        state.turns.set(Vec::new());
        state.hover.set(None);
        state.image.set(Some(UploadedImage {
            name: file.name(),
            url,
            base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
            bytes: bytes.len(),
            upload: None,
        }));
        state.note.set(had_conversation.then(|| {
            tr(
                state.lang.get_untracked(),
                "New image: a new conversation started (the model sees one image per conversation).",
            )
            .to_string()
        }));
    });
}

pub fn first_file(list: Option<web_sys::FileList>) -> Option<web_sys::File> {
    list.and_then(|l| l.get(0))
}
