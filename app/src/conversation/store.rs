//! The page's conversations: the open one saved to IndexedDB whenever a turn ends (or the image or the title
//! changes; `saving.rs` writes it), restored on load, and the side list's new / switch / rename / delete /
//! export. The list is read from the stored summaries; a full record (with its image) only when it is opened.

use super::idb;
use super::notices::{BLOCKED, REPLACED};
use super::record::{title_from, SavedConversation, SavedImage, SavedTurn, Summary, FORMAT};
use super::saving;
use super::schema::{self, DbEvent};
use super::tabs;
use crate::i18n::tr;
use crate::state::{AppState, Turn, TurnStatus, UploadedImage};
use leptos::prelude::*;

fn now_ms() -> f64 {
    js_sys::Date::now()
}

pub(super) fn new_id() -> String {
    format!(
        "c{:x}{:06x}",
        now_ms() as u64,
        (js_sys::Math::random() * f64::from(0xff_ffff)) as u32
    )
}

/// The open conversation as a record.
pub fn snapshot(state: AppState) -> SavedConversation {
    let c = state.conversations;
    let turns: Vec<SavedTurn> = state.turns.with_untracked(|turns| {
        turns
            .iter()
            .map(|t| SavedTurn {
                query: t.query.clone(),
                answer: t.answer.get_untracked(),
                status: t.status.with_untracked(|s| s.into()),
            })
            .collect()
    });
    let title = c
        .title
        .get_untracked()
        .or_else(|| turns.first().and_then(|t| title_from(&t.query)))
        .unwrap_or_else(|| {
            crate::i18n::tr(state.lang.get_untracked(), "New conversation").to_string()
        });
    SavedConversation {
        format: FORMAT,
        id: c.id.get_untracked(),
        // Set by the save, from the revision this tab holds.
        revision: 0,
        title,
        created_ms: c.created_ms.get_value(),
        updated_ms: now_ms(),
        image: state.image.with_untracked(|i| {
            i.as_ref().map(|i| SavedImage {
                name: i.name.clone(),
                base64: i.base64.clone(),
            })
        }),
        turns,
        checkpoint: state.current_model(),
        version: Some(state.settings.version.get_untracked()),
        sampling: Some(state.settings.sampling()),
    }
}

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

/// After a failed save: the next change saves the conversation again, whatever it is.
pub(super) fn forget_last_saved(state: AppState) {
    state.conversations.last_saved.set_value(String::new());
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

/// The list from the stored summaries, newest first, and a sentence for each record that cannot be read.
async fn read_list(state: AppState) -> Result<(Vec<Summary>, Vec<String>), idb::StoreError> {
    let mut list = Vec::new();
    let mut problems = Vec::new();
    for (id, json) in idb::summaries().await? {
        let summary = json
            .as_deref()
            .ok_or_else(|| "its summary is not text".to_string())
            .and_then(Summary::from_json)
            .unwrap_or_else(|e| Summary::unreadable(&id, e));
        if let Some(why) = &summary.unreadable {
            problems.push(unreadable_note(state, &summary.title, &id, why));
        }
        list.push(summary);
    }
    list.sort_by(|a, b| b.updated_ms.total_cmp(&a.updated_ms));
    Ok((list, problems))
}

/// Reads the list again (another tab saved or deleted), keeping the open conversation's entry while its first
/// save is on its way.
pub(super) fn refresh_list(state: AppState) {
    leptos::task::spawn_local(async move {
        let c = state.conversations;
        let Ok((mut list, _)) = read_list(state).await else {
            return;
        };
        let open = c.id.get_untracked();
        if !list.iter().any(|s| s.id == open) {
            if let Some(mine) = c
                .list
                .with_untracked(|l| l.iter().find(|s| s.id == open).cloned())
            {
                list.insert(0, mine);
            }
        }
        c.list.set(list);
    });
}

/// The stored conversation `id`, or a sentence for the user naming it and saying why it cannot be shown.
pub(super) async fn read(state: AppState, id: &str) -> Result<SavedConversation, String> {
    let lang = state.lang.get_untracked();
    let title = state.conversations.list.with_untracked(|l| {
        l.iter()
            .find(|s| s.id == id)
            .map_or_else(|| id.to_string(), |s| s.title.clone())
    });
    match idb::get(id).await {
        Ok(Some(json)) => {
            SavedConversation::from_json(&json).map_err(|e| unreadable_note(state, &title, id, &e))
        }
        Ok(None) => Err(tr(lang, "That conversation is gone.").into()),
        Err(e) => Err(format!("{} “{title}”: {e}", tr(lang, "Could not read"))),
    }
}

fn unreadable_note(state: AppState, title: &str, id: &str, why: &str) -> String {
    let lang = state.lang.get_untracked();
    let name = if title == id {
        format!("“{id}”")
    } else {
        format!("“{title}” ({id})")
    };
    format!(
        "{} {name}: {why}. {}",
        tr(lang, "Could not read the stored conversation"),
        tr(lang, "It is kept as stored."),
    )
}

fn start_fresh(state: AppState) {
    let c = state.conversations;
    c.id.set(new_id());
    c.title.set(None);
    c.created_ms.set_value(now_ms());
    c.last_saved.set_value(String::new());
}

/// Makes `rec` the open conversation: its image, turns (with their boxes), title and settings.
pub fn restore(state: AppState, rec: SavedConversation) {
    crate::actions::clear(state);
    let c = state.conversations;
    c.id.set(rec.id.clone());
    c.title.set(Some(rec.title.clone()).filter(|t| {
        rec.turns
            .first()
            .and_then(|f| title_from(&f.query))
            .as_ref()
            != Some(t)
            && !(rec.turns.is_empty()
                && t == crate::i18n::tr(state.lang.get_untracked(), "New conversation"))
    }));
    c.created_ms.set_value(rec.created_ms);
    let turns: Vec<Turn> = rec
        .turns
        .iter()
        .map(|t| state.new_turn(t.query.clone(), t.answer.clone(), (&t.status).into()))
        .collect();
    if let Some(old) = state.image.get_untracked() {
        let _ = web_sys::Url::revoke_object_url(&old.url);
    }
    state.image.set(rec.image.as_ref().and_then(uploaded));
    state.turns.set(turns);
    if let Some(v) = rec.version {
        state.settings.version.set(v);
    }
    if let Some(s) = &rec.sampling {
        state.settings.set_sampling(s);
    }
    let now = state.current_model();
    state.note.set(match (&rec.checkpoint, now) {
        (Some(was), Some(now)) if *was != now && !rec.turns.is_empty() => Some(format!(
            "{} {was}; {} {now}.",
            crate::i18n::tr(state.lang.get_untracked(), "This conversation was with"),
            crate::i18n::tr(state.lang.get_untracked(), "the loaded checkpoint is"),
        )),
        _ => None,
    });
    c.sync.took(&rec);
    // What a save would write now, so the restored conversation is not saved again unchanged (which would, with
    // two tabs open on it, bounce between them).
    let mut key = snapshot(state);
    key.updated_ms = 0.0;
    c.last_saved.set_value(key.to_json());
    idb::set_open_id(&rec.id);
}

/// The stored image as the page shows it again (a `blob:` URL of its bytes).
fn uploaded(img: &SavedImage) -> Option<UploadedImage> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&img.base64)
        .ok()?;
    let url = blob_url(&bytes, img.mime())?;
    Some(UploadedImage {
        name: img.name.clone(),
        url,
        base64: img.base64.clone(),
        bytes: bytes.len(),
        upload: None,
    })
}

fn blob_url(bytes: &[u8], mime: &str) -> Option<String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts).ok()?;
    web_sys::Url::create_object_url_with_blob(&blob).ok()
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
                tabs::announce_deleted(&id);
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
