//! The browser's IndexedDB, where conversations are kept (images make them too large for localStorage). One
//! object store, `conversations`: the record's id → its JSON text. Nothing here leaves the browser.

use futures::channel::oneshot;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{IdbDatabase, IdbObjectStore, IdbRequest, IdbTransactionMode};

const DB: &str = "cogvlm";
const STORE: &str = "conversations";

fn js_err(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Waits for a request's `success` (its result) or `error`.
async fn wait(req: &IdbRequest) -> Result<JsValue, String> {
    let (tx, rx) = oneshot::channel::<bool>();
    let tx = Rc::new(RefCell::new(Some(tx)));
    let settle = |ok: bool| {
        let tx = tx.clone();
        Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            if let Some(tx) = tx.borrow_mut().take() {
                let _ = tx.send(ok);
            }
        })
    };
    let (on_ok, on_err) = (settle(true), settle(false));
    req.set_onsuccess(Some(on_ok.as_ref().unchecked_ref()));
    req.set_onerror(Some(on_err.as_ref().unchecked_ref()));
    let ok = rx.await.unwrap_or(false);
    req.set_onsuccess(None);
    req.set_onerror(None);
    if ok {
        req.result().map_err(js_err)
    } else {
        Err(req
            .error()
            .ok()
            .flatten()
            .map(|e| e.message())
            .unwrap_or_else(|| "IndexedDB request failed".into()))
    }
}

thread_local! {
    static OPEN: RefCell<Option<IdbDatabase>> = const { RefCell::new(None) };
}

async fn database() -> Result<IdbDatabase, String> {
    if let Some(db) = OPEN.with(|o| o.borrow().clone()) {
        return Ok(db);
    }
    let factory = web_sys::window()
        .and_then(|w| w.indexed_db().ok().flatten())
        .ok_or("this browser keeps no IndexedDB (private mode?)")?;
    let open = factory.open_with_u32(DB, 1).map_err(js_err)?;
    let request = open.clone();
    let upgrade = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        if let Ok(db) = request.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
            if !db.object_store_names().contains(STORE) {
                let _ = db.create_object_store(STORE);
            }
        }
    });
    open.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
    let db: IdbDatabase = wait(&open)
        .await?
        .dyn_into()
        .map_err(|_| "IndexedDB gave no database")?;
    open.set_onupgradeneeded(None);
    OPEN.with(|o| *o.borrow_mut() = Some(db.clone()));
    Ok(db)
}

async fn store(mode: IdbTransactionMode) -> Result<IdbObjectStore, String> {
    let db = database().await?;
    db.transaction_with_str_and_mode(STORE, mode)
        .and_then(|t| t.object_store(STORE))
        .map_err(js_err)
}

/// Stores `json` under `id` (replacing what was there).
pub async fn put(id: &str, json: &str) -> Result<(), String> {
    let store = store(IdbTransactionMode::Readwrite).await?;
    let req = store
        .put_with_key(&JsValue::from_str(json), &JsValue::from_str(id))
        .map_err(js_err)?;
    wait(&req).await.map(|_| ())
}

pub async fn get(id: &str) -> Result<Option<String>, String> {
    let store = store(IdbTransactionMode::Readonly).await?;
    let req = store.get(&JsValue::from_str(id)).map_err(js_err)?;
    Ok(wait(&req).await?.as_string())
}

/// Every stored record's JSON.
pub async fn all() -> Result<Vec<String>, String> {
    let store = store(IdbTransactionMode::Readonly).await?;
    let req = store.get_all().map_err(js_err)?;
    let list: js_sys::Array = wait(&req)
        .await?
        .dyn_into()
        .unwrap_or_else(|_| js_sys::Array::new());
    Ok(list.iter().filter_map(|v| v.as_string()).collect())
}

pub async fn delete(id: &str) -> Result<(), String> {
    let store = store(IdbTransactionMode::Readwrite).await?;
    let req = store.delete(&JsValue::from_str(id)).map_err(js_err)?;
    wait(&req).await.map(|_| ())
}

/// The id of the conversation open in this browser (localStorage: small, read at once on load).
pub fn open_id() -> Option<String> {
    local_storage()?.get_item(OPEN_KEY).ok().flatten()
}

pub fn set_open_id(id: &str) {
    if let Some(s) = local_storage() {
        let _ = s.set_item(OPEN_KEY, id);
    }
}

const OPEN_KEY: &str = "cogvlm.open";

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}
