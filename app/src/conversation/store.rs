//! The page's conversations: the open one saved to IndexedDB whenever a turn ends (or the image or the title
//! changes; `saving.rs` writes it), restored on load, and the side list's new / switch / rename / delete /
//! export. The list is read from the stored summaries; a full record (with its image) only when it is opened.

use super::idb;
use super::notices::{BLOCKED, REPLACED};
use super::records::{blob_url, new_id, now_ms, read, read_list, restore, snapshot};
use super::saving;
use super::schema::{self, DbEvent};
use super::{broadcast, tabs};
use crate::i18n::tr;
use crate::state::{AppState, TurnStatus};
use leptos::prelude::*;

/// Writes the open conversation when it has something and changed since the last write.
pub fn save(state: AppState) {
    let c = state.conversations;
    if !c.ready.get_untracked() || c.id.with_untracked(String::is_empty) {
        return;
    }
    let mut rec = snapshot(state);
    // An empty conversation is listed only once it has been saved with something in it.
    let empty = rec.turns.is_empty() && rec.image.is_none() && c.title.get_untracked().is_none();
    if empty && c.last_saved.with_value(String::is_empty) {
        return;
    }
    let updated = rec.updated_ms;
    rec.updated_ms = 0.0;
    let key = rec.to_json();
    if c.last_saved.with_value(|k| *k == key) {
        return;
    }
    c.last_saved.set_value(key);
    rec.updated_ms = updated;
    let summary = rec.summary();
    c.list.update(|list| {
        list.retain(|s| s.id != summary.id);
        list.insert(0, summary);
    });
    idb::set_open_id(&rec.id);
    saving::save(state, rec);
}

/// Saves whenever a turn ends, the image changes or the title changes (not on every streamed token).
pub fn autosave(state: AppState) {
    Effect::new(move |_| {
        let active = state
            .turns
            .with(|t| t.iter().any(|t| t.status.with(TurnStatus::is_active)));
        state.image.track();
        state.conversations.title.track();
        if state.conversations.ready.get() && !active {
            save(state);
        }
    });
}

/// Reads the list and reopens the conversation that was open (the browser side of hydration); listens to the
/// database's life and to the other tabs.
pub fn init(state: AppState) {
    schema::on_event(move |event| db_event(state, event));
    tabs::listen(state);
    leptos::task::spawn_local(async move {
        let c = state.conversations;
        let mut problems = Vec::new();
        match read_list(state).await {
            Ok((list, unreadable)) => {
                c.list.set(list);
                problems = unreadable;
            }
            Err(e) => state.note.set(Some(format!(
                "{} {e}",
                tr(state.lang.get_untracked(), "Conversations are not kept:")
            ))),
        }
        let readable = |id: &String| {
            c.list
                .with_untracked(|l| l.iter().any(|s| s.id == *id && s.unreadable.is_none()))
        };
        let open = idb::open_id().filter(readable);
        match open {
            Some(id) if state.turns.with_untracked(Vec::is_empty) => match read(state, &id).await {
                Ok(rec) => restore(state, rec),
                Err(e) => {
                    problems.push(e);
                    start_fresh(state);
                }
            },
            _ => start_fresh(state),
        }
        if !problems.is_empty() {
            let before = state.note.get_untracked().into_iter();
            state
                .note
                .set(Some(before.chain(problems).collect::<Vec<_>>().join(" ")));
        }
        c.ready.set(true);
    });
}

/// Tells the user what the database's life means for them (`schema.rs`).
fn db_event(state: AppState, event: DbEvent) {
    let error = state.conversations.error;
    let say = |en| Some(tr(state.lang.get_untracked(), en).to_string());
    match event {
        DbEvent::Blocked => error.set(say(BLOCKED)),
        DbEvent::Opened => error.set(None),
        DbEvent::Replaced => error.set(say(REPLACED)),
    }
}

fn start_fresh(state: AppState) {
    let c = state.conversations;
    c.id.set(new_id());
    c.title.set(None);
    c.created_ms.set_value(now_ms());
    c.last_saved.set_value(String::new());
}

/// Saves the open conversation and opens an empty one.
pub fn new_conversation(state: AppState) {
    save(state);
    crate::actions::clear(state);
    if let Some(old) = state.image.get_untracked() {
        let _ = web_sys::Url::revoke_object_url(&old.url);
    }
    state.image.set(None);
    state.note.set(None);
    start_fresh(state);
}

/// Starts a new conversation for a new image, keeping the old one in the list (the image panel calls this
/// before it sets the image).
pub fn fork_for_new_image(state: AppState) {
    save(state);
    start_fresh(state);
}

pub fn switch(state: AppState, id: String) {
    if state.conversations.id.with_untracked(|c| *c == id) {
        return;
    }
    save(state);
    leptos::task::spawn_local(async move {
        match read(state, &id).await {
            Ok(rec) => restore(state, rec),
            Err(e) => state.note.set(Some(e)),
        }
    });
}

pub fn rename(state: AppState, id: String, title: String) {
    let title = title.trim().to_string();
    if title.is_empty() {
        return;
    }
    let c = state.conversations;
    c.list.update(|l| {
        if let Some(s) = l.iter_mut().find(|s| s.id == id) {
            s.title = title.clone();
        }
    });
    if c.id.with_untracked(|c| *c == id) {
        c.title.set(Some(title));
        return;
    }
    leptos::task::spawn_local(async move {
        let _turn = saving::one_at_a_time().await;
        match read(state, &id).await {
            Ok(mut rec) => {
                rec.title = title;
                saving::save_over(state, rec).await;
            }
            Err(e) => state.note.set(Some(e)),
        }
    });
}

pub fn delete(state: AppState, id: String) {
    let c = state.conversations;
    c.list.update(|l| l.retain(|s| s.id != id));
    if c.id.with_untracked(|c| *c == id) {
        // Nothing of it is saved again: the page opens an empty conversation.
        crate::actions::clear(state);
        state.image.set(None);
        start_fresh(state);
    }
    leptos::task::spawn_local(async move {
        // After the saves asked before it, so none of them writes it again.
        let _turn = saving::one_at_a_time().await;
        match idb::delete(&id).await {
            Ok(()) => {
                c.sync.forget(&id);
                broadcast::announce_deleted(&id);
            }
            Err(e) => state.note.set(Some(e.to_string())),
        }
    });
}

/// Which file an export writes.
#[derive(Clone, Copy, PartialEq)]
pub enum Export {
    Markdown,
    Json,
}

/// Downloads conversation `id` as Markdown or JSON (the image inside either).
pub fn export(state: AppState, id: String, kind: Export) {
    leptos::task::spawn_local(async move {
        let rec = if state.conversations.id.with_untracked(|c| *c == id) {
            snapshot(state)
        } else {
            match read(state, &id).await {
                Ok(rec) => rec,
                Err(e) => return state.note.set(Some(e)),
            }
        };
        let (text, ext, mime) = match kind {
            Export::Markdown => (rec.to_markdown(), "md", "text/markdown"),
            Export::Json => (rec.to_json(), "json", "application/json"),
        };
        download_text(&text, &format!("{}.{ext}", rec.file_stem()), mime);
    });
}

fn download_text(text: &str, file: &str, mime: &str) {
    let Some(url) = blob_url(text.as_bytes(), mime) else {
        return;
    };
    let link = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.create_element("a").ok())
        .and_then(|a| wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlAnchorElement>(a).ok());
    if let Some(a) = link {
        a.set_href(&url);
        a.set_download(file);
        a.click();
    }
    // The download has started by then.
    set_timeout(
        move || {
            let _ = web_sys::Url::revoke_object_url(&url);
        },
        std::time::Duration::from_secs(5),
    );
}
