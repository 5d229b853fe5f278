//! Taking an image file: picked, dropped or pasted.

use crate::i18n::tr;
use crate::state::{AppState, UploadedImage};
use leptos::prelude::*;

/// Reads a picked, dropped or pasted file and makes it the conversation's image.
/// A new image starts a new conversation.
pub fn take_file(state: AppState, file: web_sys::File) {
    if let Some(why) = refusal(state, &file) {
        state.note.set(Some(why));
        return;
    }
    leptos::task::spawn_local(async move {
        let lang = state.lang.get_untracked();
        let buffer = match wasm_bindgen_futures::JsFuture::from(file.array_buffer()).await {
            Ok(b) => b,
            Err(_) => {
                let note = format!("{} {}.", tr(lang, "Could not read"), file.name());
                state.note.set(Some(note));
                return;
            }
        };
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        let Ok(url) = web_sys::Url::create_object_url_with_blob(&file) else {
            let note = format!("{} {}.", tr(lang, "Could not show"), file.name());
            state.note.set(Some(note));
            return;
        };
        show_new_image(state, file.name(), url, &bytes);
    });
}

/// Why `file` is not taken (not an image, or over the server's limit, checked here so a too-large photo is
/// refused before it is sent).
fn refusal(state: AppState, file: &web_sys::File) -> Option<String> {
    let lang = state.lang.get_untracked();
    if !file.type_().starts_with("image/") {
        let kind = match file.type_().is_empty() {
            true => tr(lang, "unknown type").to_string(),
            false => file.type_(),
        };
        return Some(format!(
            "{} {} ({kind}).",
            file.name(),
            tr(lang, "is not an image")
        ));
    }
    let limit = state
        .models
        .with_untracked(|m| m.as_ref().map(|m| m.max_upload_bytes))
        .filter(|&l| l > 0)?;
    (file.size() > limit as f64).then(|| {
        format!(
            "{}: {:.1} MB; {} {:.1} MB.",
            file.name(),
            file.size() / 1e6,
            tr(lang, "this server accepts images up to"),
            limit as f64 / 1e6
        )
    })
}

/// Makes the read image (`url` its object URL) the conversation's: a running answer stops, and a conversation
/// under way stays in the list with its own image while a new one starts.
fn show_new_image(state: AppState, name: String, url: String, bytes: &[u8]) {
    use base64::Engine as _;
    if let Some(old) = state.image.get_untracked() {
        let _ = web_sys::Url::revoke_object_url(&old.url);
    }
    let had_conversation = state.turns.with_untracked(|t| !t.is_empty());
    if state.busy.get_untracked() {
        crate::actions::stop(state);
    }
    if had_conversation {
        crate::conversation::store::fork_for_new_image(state);
    }
    state.turns.set(Vec::new());
    state.hover.set(None);
    state.image.set(Some(UploadedImage {
        name,
        url,
        base64: base64::engine::general_purpose::STANDARD.encode(bytes),
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
}

pub fn first_file(list: Option<web_sys::FileList>) -> Option<web_sys::File> {
    list.and_then(|l| l.get(0))
}
