//! The image: upload (button, drag and drop, paste), the stage that draws the conversation's
//! grounding boxes and points over it, the image's actions and the draft's regions.

mod actions;
mod file;
mod regions;
mod stage;

use crate::i18n::t;
use crate::state::{conversation_groups, text_groups, AppState};
use actions::{Dropzone, ImageBar};
use file::{first_file, take_file};
use leptos::prelude::*;
use regions::DraftRegions;
use stage::Stage;

#[component]
pub fn ImagePanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let input_ref = NodeRef::<leptos::html::Input>::new();
    let img_ref = NodeRef::<leptos::html::Img>::new();
    let dragging = RwSignal::new(false);
    // The conversation's groups, then the draft's (dashed, numbered on, so they keep their
    // number and colour once sent).
    let groups = Memo::new(move |_| {
        let mut groups = state.turns.with(|t| conversation_groups(t).0);
        let first = groups.len();
        groups.extend(state.draft.with(|d| text_groups(d, first, true)));
        groups
    });
    let draft_first = Memo::new(move |_| state.turns.with(|t| conversation_groups(t).0.len()));
    // Paste anywhere on the page (only image files; text pastes are left alone).
    let paste = window_event_listener(leptos::ev::paste, move |ev: web_sys::ClipboardEvent| {
        if let Some(file) = first_file(ev.clipboard_data().and_then(|d| d.files())) {
            if file.type_().starts_with("image/") {
                ev.prevent_default();
                take_file(state, file);
            }
        }
    });
    on_cleanup(move || paste.remove());

    let has_image = move || state.image.with(Option::is_some);
    view! {
        <section
            class="image-panel"
            class:dragging=move || dragging.get()
            on:dragover=move |ev: leptos::ev::DragEvent| {
                ev.prevent_default();
                dragging.set(true);
            }
            on:dragleave=move |_| dragging.set(false)
            on:drop=move |ev: leptos::ev::DragEvent| {
                ev.prevent_default();
                dragging.set(false);
                if let Some(file) = first_file(ev.data_transfer().and_then(|d| d.files())) {
                    take_file(state, file);
                }
            }
        >
            <input
                type="file"
                id="image-input"
                accept="image/*"
                class="visually-hidden"
                node_ref=input_ref
                on:change=move |_| {
                    if let Some(input) = input_ref.get() {
                        if let Some(file) = first_file(input.files()) {
                            take_file(state, file);
                        }
                        input.set_value("");
                    }
                }
            />
            <Stage groups img_ref/>
            <Show when=has_image>
                <ImageBar groups img_ref input_ref/>
            </Show>
            <Show when=move || !has_image()>
                <Dropzone input_ref/>
            </Show>
            <Show when=has_image>
                <DraftRegions draft_first/>
            </Show>
            <p class="hint">{move || t(state.lang, "A new image starts a new conversation.")}</p>
        </section>
    }
}
