//! The conversation's image on the server: uploaded once (the `upload_image` server function), then
//! named by its id in every question of the conversation.

use crate::api::upload_image;
use crate::protocol::UploadRef;
use crate::state::{AppState, UploadedImage};
use leptos::prelude::*;
use leptos::server_fn::ServerFnError;

/// The server's reference to the page's image shown at `url`: the one kept from an earlier question,
/// else a new upload (remembered on the image while it is still the same picture). Only an upload reads
/// the image's bytes. `Err`: the message.
pub async fn ensure(state: AppState, url: &str) -> Result<UploadRef, String> {
    let found = state.image.with_untracked(|i| {
        i.as_ref()
            .filter(|i| i.url == url)
            .map(|i| i.upload.clone().ok_or_else(|| form_of(i)))
    });
    let form = match found {
        None => return Err("the image was removed before the question went out".into()),
        Some(Ok(kept)) => return Ok(kept),
        Some(Err(form)) => form.map_err(|e| format!("could not read the image: {e}"))?,
    };
    let r = upload_image(form.into()).await.map_err(message)?;
    state.image.update(|i| {
        if let Some(i) = i.as_mut().filter(|i| i.url == url) {
            i.upload = Some(r.clone());
        }
    });
    Ok(r)
}

/// Drops the kept reference (the server no longer has the image).
pub fn forget(state: AppState) {
    state.image.update(|i| {
        if let Some(i) = i {
            i.upload = None;
        }
    });
}

/// A form with the image's file in its `image` field.
fn form_of(image: &UploadedImage) -> Result<web_sys::FormData, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&image.base64)
        .map_err(|e| e.to_string())?;
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes.as_slice()));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).map_err(js_message)?;
    let form = web_sys::FormData::new().map_err(js_message)?;
    form.append_with_blob_and_filename("image", &blob, &image.name)
        .map_err(js_message)?;
    Ok(form)
}

fn js_message(e: wasm_bindgen::JsValue) -> String {
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// The server's words, without the runtime's prefix.
fn message(e: ServerFnError) -> String {
    match e {
        ServerFnError::ServerError(m) => m,
        e => format!("could not upload the image: {e}"),
    }
}
