//! The stored records as the page reads them: the list (from the summaries), one record, and a record made
//! the open conversation; and the open conversation as a record. Below saving, the other tabs and the store's
//! commands, which all use it.

use super::idb;
use super::record::{title_from, SavedConversation, SavedImage, SavedTurn, Summary, FORMAT};
use crate::i18n::tr;
use crate::state::{AppState, Turn, UploadedImage};
use leptos::prelude::*;

pub(super) fn now_ms() -> f64 {
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

/// After a failed save: the next change saves the conversation again, whatever it is.
pub(super) fn forget_last_saved(state: AppState) {
    state.conversations.last_saved.set_value(String::new());
}

/// The list from the stored summaries, newest first, and a sentence for each record that cannot be read.
pub(super) async fn read_list(
    state: AppState,
) -> Result<(Vec<Summary>, Vec<String>), idb::StoreError> {
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

pub(super) fn unreadable_note(state: AppState, title: &str, id: &str, why: &str) -> String {
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
pub(super) fn uploaded(img: &SavedImage) -> Option<UploadedImage> {
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

pub(super) fn blob_url(bytes: &[u8], mime: &str) -> Option<String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts).ok()?;
    web_sys::Url::create_object_url_with_blob(&blob).ok()
}
