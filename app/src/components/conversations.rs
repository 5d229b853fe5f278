//! The side list of conversations kept in this browser: new, switch, rename, delete, export.

use crate::conversation::store::{self, Export};
use crate::i18n::t;
use crate::state::AppState;
use leptos::prelude::*;

#[component]
fn Item(id: String, title: String) -> impl IntoView {
    let state = expect_context::<AppState>();
    let c = state.conversations;
    let renaming = RwSignal::new(None::<String>);
    let open = {
        let id = id.clone();
        move || c.id.with(|c| *c == id)
    };
    let commit = {
        let id = id.clone();
        move || {
            if let Some(title) = renaming.get_untracked() {
                renaming.set(None);
                store::rename(state, id.clone(), title);
            }
        }
    };
    let action = |id: &String, f: fn(AppState, String)| {
        let id = id.clone();
        move |_| f(state, id.clone())
    };
    let export = |id: &String, kind: Export| {
        let id = id.clone();
        move |_| store::export(state, id.clone(), kind)
    };
    let shown = title.clone();
    view! {
        <li class="conv" class:open=open data-id=id.clone()>
            <Show
                when=move || renaming.with(Option::is_some)
                fallback={
                    let id = id.clone();
                    move || view! {
                        <button class="conv-title" on:click={
                            let id = id.clone();
                            move |_| {
                                store::switch(state, id.clone());
                                state.conversations.panel_open.set(false);
                            }
                        }>{shown.clone()}</button>
                    }
                }
            >
                <input class="conv-rename" type="text"
                    prop:value=move || renaming.get().unwrap_or_default()
                    on:input=move |ev| renaming.set(Some(event_target_value(&ev)))
                    on:keydown={
                        let commit = commit.clone();
                        move |ev: leptos::ev::KeyboardEvent| {
                            if ev.key() == "Enter" {
                                commit();
                            } else if ev.key() == "Escape" {
                                renaming.set(None);
                            }
                        }
                    }
                    on:blur={
                        let commit = commit.clone();
                        move |_| commit()
                    }
                />
            </Show>
            <div class="conv-actions">
                <button class="small" data-action="rename" on:click={
                    let title = title.clone();
                    move |_| renaming.set(Some(title.clone()))
                }>{move || t(state.lang, "Rename")}</button>
                <button class="small" data-action="export-md" on:click=export(&id, Export::Markdown)>"Markdown"</button>
                <button class="small" data-action="export-json" on:click=export(&id, Export::Json)>"JSON"</button>
                <button class="small danger" data-action="delete" on:click=action(&id, store::delete)>
                    {move || t(state.lang, "Delete")}
                </button>
            </div>
        </li>
    }
}

/// The drawer: a button in the header opens it; on a wide screen it sits beside the page.
#[component]
pub fn ConversationList() -> impl IntoView {
    let state = expect_context::<AppState>();
    let c = state.conversations;
    view! {
        <aside class="conversations" id="conversations" class:shown=move || c.panel_open.get()>
            <div class="conv-head">
                <h2>{move || t(state.lang, "Conversations")}</h2>
                <button class="small primary" id="new-conversation" on:click=move |_| {
                    store::new_conversation(state);
                    c.panel_open.set(false);
                }>{move || t(state.lang, "New")}</button>
                <button class="small conv-close" aria-label=move || t(state.lang, "Close")
                    on:click=move |_| c.panel_open.set(false)>"×"</button>
            </div>
            <p class="hint">{move || t(state.lang, "Kept in this browser only.")}</p>
            <ul id="conversation-list">
                <For
                    each=move || c.list.get()
                    key=|s| (s.id.clone(), s.title.clone())
                    children=move |s| {
                        // A record that cannot be read stays listed (to delete it), marked.
                        let title = match s.unreadable {
                            Some(_) => format!("⚠ {}", s.title),
                            None => s.title,
                        };
                        view! { <Item id=s.id title/> }
                    }
                />
            </ul>
        </aside>
    }
}
