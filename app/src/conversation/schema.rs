//! Opening the conversations database: its version and stores, the upgrade from version 1, and other tabs.
//! Version 1 kept `conversations` (a record's id → its JSON text) only; version 2 adds `summaries` (the same id →
//! its [`Summary`] as JSON), so the page lists conversations without reading their images. An upgrade asked by
//! another tab closes this tab's connection at once (`versionchange`), and an upgrade held up by a tab that does
//! not close says so (`blocked`): no tab waits on another without the user being told.

use super::idb_request::{js_err, wait, StoreError};
use super::record::Summary;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{IdbDatabase, IdbOpenDbRequest, IdbTransaction};

const DB: &str = "cogvlm";
/// 1: `conversations`; 2: + `summaries`.
const VERSION: u32 = 2;
pub const RECORDS: &str = "conversations";
pub const SUMMARIES: &str = "summaries";

/// What the page hears of the connection's life (`store.rs` shows it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DbEvent {
    /// Another tab holds an older version open: this one waits until it closes.
    Blocked,
    Opened,
    /// Another tab upgraded the database: this connection is closed, the page must be reloaded.
    Replaced,
}

enum Connection {
    NotYet,
    Open(IdbDatabase),
    Closed,
}

type Listener = Rc<dyn Fn(DbEvent)>;

thread_local! {
    static CONNECTION: RefCell<Connection> = const { RefCell::new(Connection::NotYet) };
    static LISTENER: RefCell<Option<Listener>> = const { RefCell::new(None) };
}

/// Who hears [`DbEvent`]s (one listener: the page's store).
pub fn on_event(f: impl Fn(DbEvent) + 'static) {
    LISTENER.with(|l| *l.borrow_mut() = Some(Rc::new(f)));
}

fn tell(event: DbEvent) {
    if let Some(f) = LISTENER.with(|l| l.borrow().clone()) {
        f(event);
    }
}

/// Why the database is closed for good in this page.
const REPLACED: &str =
    "another tab upgraded the stored conversations to a newer version: reload this page to use them";

/// The open database (opened, and upgraded if needed, on first use).
pub async fn database() -> Result<IdbDatabase, StoreError> {
    let now = CONNECTION.with(|c| match &*c.borrow() {
        Connection::Open(db) => Ok(Some(db.clone())),
        Connection::Closed => Err(StoreError::Unavailable(REPLACED.into())),
        Connection::NotYet => Ok(None),
    })?;
    if let Some(db) = now {
        return Ok(db);
    }
    let db = open().await?;
    CONNECTION.with(|c| *c.borrow_mut() = Connection::Open(db.clone()));
    Ok(db)
}

async fn open() -> Result<IdbDatabase, StoreError> {
    let unavailable = StoreError::Unavailable;
    let factory = web_sys::window()
        .and_then(|w| w.indexed_db().ok().flatten())
        .ok_or_else(|| unavailable("this browser keeps no IndexedDB (private mode?)".into()))?;
    let request = factory
        .open_with_u32(DB, VERSION)
        .map_err(|e| unavailable(js_err(e)))?;
    let upgrading = request.clone();
    let upgrade = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| upgrade(&upgrading));
    let blocked = Closure::<dyn FnMut(web_sys::Event)>::new(|_| tell(DbEvent::Blocked));
    request.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
    request.set_onblocked(Some(blocked.as_ref().unchecked_ref()));
    let opened = wait(&request).await;
    request.set_onupgradeneeded(None);
    request.set_onblocked(None);
    let db: IdbDatabase = match opened {
        Ok(db) => db
            .dyn_into()
            .map_err(|_| unavailable("IndexedDB gave no database".into()))?,
        // A newer page already upgraded it: this one cannot read that version.
        Err(_) if error_name(&request).as_deref() == Some("VersionError") => {
            return Err(unavailable(REPLACED.into()))
        }
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let closing = db.clone();
    let on_version_change = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        // Closing at once lets the other tab's upgrade go on; this page stops saving and says why.
        closing.close();
        CONNECTION.with(|c| *c.borrow_mut() = Connection::Closed);
        tell(DbEvent::Replaced);
    });
    db.set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
    // It lives as long as the connection, which is the page's.
    on_version_change.forget();
    tell(DbEvent::Opened);
    Ok(db)
}

fn error_name(request: &IdbOpenDbRequest) -> Option<String> {
    request.error().ok().flatten().map(|e| e.name())
}

/// Brings the database to [`VERSION`]; a failure aborts the upgrade (half an upgrade would list nothing of what
/// is stored): the open fails instead, and says why.
fn upgrade(request: &IdbOpenDbRequest) {
    let db = request.result().and_then(|r| r.dyn_into::<IdbDatabase>());
    let (Ok(db), Some(tx)) = (db, request.transaction()) else {
        return;
    };
    if let Err(e) = create_stores(&db, &tx) {
        web_sys::console::error_1(&format!("conversations upgrade: {}", js_err(e)).into());
        let _ = tx.abort();
    }
}

fn create_stores(db: &IdbDatabase, tx: &IdbTransaction) -> Result<(), JsValue> {
    let names = db.object_store_names();
    let had_records = names.contains(RECORDS);
    if !had_records {
        db.create_object_store(RECORDS)?;
    }
    if !names.contains(SUMMARIES) {
        db.create_object_store(SUMMARIES)?;
        if had_records {
            summarise_records(tx)?;
        }
    }
    Ok(())
}

/// Version 1 → 2: a summary for each stored record, written in the upgrade's own transaction, so that no page
/// ever sees a record without one. The only time every record (images included) is read at once. A record that
/// cannot be read gets a summary that says so (the list shows it and the page tells the user).
fn summarise_records(tx: &IdbTransaction) -> Result<(), JsValue> {
    let records = tx.object_store(RECORDS)?;
    let summaries = tx.object_store(SUMMARIES)?;
    let keys = records.get_all_keys()?;
    let values = records.get_all()?;
    let read = values.clone();
    // Requests of a transaction succeed in order: the keys are there when the values are.
    let on_values = Closure::once_into_js(move |_: web_sys::Event| {
        let (Ok(keys), Ok(values)) = (keys.result(), read.result()) else {
            let _ = summaries.transaction().abort();
            return;
        };
        let keys: js_sys::Array = keys.unchecked_into();
        let values: js_sys::Array = values.unchecked_into();
        for (key, value) in keys.iter().zip(values.iter()) {
            // Version 1 wrote string keys only.
            let Some(id) = key.as_string() else {
                continue;
            };
            let summary = Summary::of_stored(&id, value.as_string().as_deref());
            if let Err(e) = summaries.put_with_key(&summary.to_json().into(), &key) {
                web_sys::console::error_1(&js_err(e).into());
                let _ = summaries.transaction().abort();
                return;
            }
        }
    });
    values.set_onsuccess(Some(on_values.unchecked_ref()));
    Ok(())
}
