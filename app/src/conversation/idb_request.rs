//! IndexedDB's requests as futures, and the errors of the store: below the schema (which opens the database)
//! and the reads and writes (`idb.rs`) that both use them.

use futures::channel::oneshot;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::IdbRequest;

/// Why a storage call failed: the kind decides what the caller does, the text tells the user.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreError {
    /// Another tab saved a newer revision of the record: the compare-and-set wrote nothing.
    Conflict,
    /// A request or the transaction failed or was aborted (e.g. `QuotaExceededError`): worth another try.
    Failed(String),
    /// This page cannot use the database (no IndexedDB, or another tab upgraded it): trying again won't help.
    Unavailable(String),
}

impl StoreError {
    pub fn worth_retrying(&self) -> bool {
        matches!(self, StoreError::Failed(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("another tab saved a newer version"),
            StoreError::Failed(e) | StoreError::Unavailable(e) => f.write_str(e),
        }
    }
}

/// A thrown value as text: a `DOMException` by its name and message (`QuotaExceededError: …`).
pub fn js_err(e: JsValue) -> String {
    if let Some(d) = e.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", d.name(), d.message());
    }
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

pub fn failed(e: JsValue) -> StoreError {
    StoreError::Failed(js_err(e))
}

/// Waits for a request's `success` (its result) or `error`.
pub async fn wait(req: &IdbRequest) -> Result<JsValue, StoreError> {
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
        req.result().map_err(failed)
    } else {
        Err(StoreError::Failed(
            req.error()
                .ok()
                .flatten()
                .map(|e| format!("{}: {}", e.name(), e.message()))
                .unwrap_or_else(|| "IndexedDB request failed".into()),
        ))
    }
}
