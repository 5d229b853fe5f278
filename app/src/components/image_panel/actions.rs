//! The image's actions: the bar under a loaded image (download with the boxes, replace, remove)
//! and the drop zone that asks for one.

use crate::components::overlay;
use crate::i18n::{t, tr};
use crate::state::{AppState, DrawnGroup};
use leptos::prelude::*;

#[component]
pub fn ImageBar(
    groups: Memo<Vec<DrawnGroup>>,
    img_ref: NodeRef<leptos::html::Img>,
    /// The panel's file input (Replace opens it).
    input_ref: NodeRef<leptos::html::Input>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let download = move |_| {
        let (Some(img), Some(name)) = (
            img_ref.get_untracked(),
            state
                .image
                .with_untracked(|i| i.as_ref().map(|i| i.name.clone())),
        ) else {
            return;
        };
        if let Err(e) = groups.with_untracked(|g| overlay::download_png(&img, g, &name)) {
            state.note.set(Some(format!(
                "{}: {e:?}",
                tr(
                    state.lang.get_untracked(),
                    "Could not make the annotated image"
                )
            )));
        }
    };

    let image_caption = move || {
        state.image.with(|i| {
            i.as_ref()
                .map(|i| format!("{} · {:.0} KB", i.name, i.bytes as f64 / 1024.0))
                .unwrap_or_default()
        })
    };

    view! {
        <div class="image-bar">
            <span class="image-name">{image_caption}</span>
            <button class="small" id="download-annotated" title=move || t(state.lang, "PNG with the boxes and labels")
                on:click=download>{move || t(state.lang, "Download annotated")}</button>
            <button class="small" on:click=move |_| {
                if let Some(input) = input_ref.get() { input.click(); }
            }>{move || t(state.lang, "Replace")}</button>
            <button class="small" id="remove-image" on:click=move |_| {
                if let Some(old) = state.image.get_untracked() {
                    let _ = web_sys::Url::revoke_object_url(&old.url);
                }
                state.image.set(None);
                state.turns.set(Vec::new());
                state.note.set(None);
            }>{move || t(state.lang, "Remove")}</button>
        </div>
    }
}

#[component]
pub fn Dropzone(
    /// The panel's file input.
    input_ref: NodeRef<leptos::html::Input>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <div class="dropzone">
            <svg viewBox="0 0 24 24" width="40" height="40" aria-hidden="true">
                <path fill="currentColor" d="M19 5v14H5V5h14m0-2H5a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h14a2 2 0 0 0 2-2V5a2 2 0 0 0-2-2zm-4.86 8.86-3 3.87L9 13.14 6 17h12l-3.86-5.14z"/>
            </svg>
            <p>{move || t(state.lang, "Drop an image here, paste it (Ctrl+V), or")}</p>
            <button class="primary" id="choose-image" on:click=move |_| {
                if let Some(input) = input_ref.get() { input.click(); }
            }>{move || t(state.lang, "Choose an image")}</button>
            <p class="hint">{move || t(state.lang, "Without an image the model answers from text alone.")}</p>
        </div>
    }
}
