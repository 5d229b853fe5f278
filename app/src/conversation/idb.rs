//! The browser's IndexedDB, where conversations are kept (images make them too large for localStorage): each
//! record's JSON text in `conversations`, and its [`Summary`] in `summaries` (`schema.rs` opens and upgrades
//! them). A write puts both in one transaction and counts only once that transaction completes. Nothing here
//! leaves the browser.

use super::idb_request::failed;
pub use super::idb_request::{js_err, wait, StoreError};
use super::record::Summary;
use super::schema::{database, RECORDS, SUMMARIES};
use futures::channel::oneshot;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{IdbTransaction, IdbTransactionMode};

/// A transaction whose end is awaited: `complete` (written) or `abort` (nothing written, with the reason). A
/// request's success is not yet a write: the quota is checked when the transaction commits.
struct Txn {
    tx: IdbTransaction,
    ended: Option<oneshot::Receiver<bool>>,
    _handlers: [Closure<dyn FnMut(web_sys::Event)>; 2],
}

impl Txn {
    async fn begin(mode: IdbTransactionMode) -> Result<Self, StoreError> {
        let db = database().await?;
        let names = js_sys::Array::of2(&RECORDS.into(), &SUMMARIES.into());
        let tx = db
            .transaction_with_str_sequence_and_mode(&names, mode)
            .map_err(failed)?;
        let (send, ended) = oneshot::channel::<bool>();
        let send = Rc::new(RefCell::new(Some(send)));
        let settle = |ok: bool| {
            let send = send.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
                if let Some(s) = send.borrow_mut().take() {
                    let _ = s.send(ok);
                }
            })
        };
        let handlers = [settle(true), settle(false)];
        tx.set_oncomplete(Some(handlers[0].as_ref().unchecked_ref()));
        tx.set_onabort(Some(handlers[1].as_ref().unchecked_ref()));
        Ok(Txn {
            tx,
            ended: Some(ended),
            _handlers: handlers,
        })
    }

    fn stores(&self) -> Result<(web_sys::IdbObjectStore, web_sys::IdbObjectStore), StoreError> {
        let store = |name| self.tx.object_store(name).map_err(failed);
        Ok((store(RECORDS)?, store(SUMMARIES)?))
    }

    /// Asks for the commit now that every request is made, rather than when their results have come back: a
    /// page reloaded or closed right after a delete or a save then keeps it.
    fn commit(tx: &IdbTransaction) {
        // Deprecated in web-sys only because older browsers lack it; there the transaction commits by itself.
        #[allow(deprecated)]
        let _ = tx.commit();
    }

    /// Waits for the end: `Ok` once every write is committed.
    async fn end(mut self) -> Result<(), StoreError> {
        let complete = match self.ended.take() {
            Some(rx) => rx.await.unwrap_or(false),
            None => false,
        };
        if complete {
            return Ok(());
        }
        Err(StoreError::Failed(match self.tx.error() {
            Some(e) => format!("{}: {}", e.name(), e.message()),
            None => "the transaction was aborted".into(),
        }))
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.tx.set_oncomplete(None);
        self.tx.set_onabort(None);
        // Dropped before its end (an error on the way): nothing of it is written.
        if self.ended.is_some() {
            let _ = self.tx.abort();
        }
    }
}

/// What the compare-and-set found, decided inside the transaction (while it is sure to be active).
enum Decision {
    Write,
    Conflict,
    Threw(String),
}

/// Writes a record (`json`) and its summary in one transaction, only if the stored revision is still `base`
/// (or nothing is stored under that id): a tab never overwrites a save it has not seen.
pub async fn put_if(json: &str, summary: &Summary, base: u64) -> Result<(), StoreError> {
    let txn = Txn::begin(IdbTransactionMode::Readwrite).await?;
    let (records, summaries) = txn.stores()?;
    let key = JsValue::from_str(&summary.id);
    let stored = summaries.get(&key).map_err(failed)?;
    let decided = Rc::new(RefCell::new(None::<Decision>));
    let (record, summary) = (
        JsValue::from_str(json),
        JsValue::from_str(&summary.to_json()),
    );
    let (read, tx, decision) = (stored.clone(), txn.tx.clone(), decided.clone());
    let on_stored = Closure::once_into_js(move |_: web_sys::Event| {
        let revision = read.result().ok().and_then(|v| v.as_string()).map(|t| {
            // An unreadable summary is of an unreadable record: nothing to keep from it.
            Summary::from_json(&t).map_or(0, |s| s.revision)
        });
        let d = if revision.is_some_and(|r| r != base) {
            Decision::Conflict
        } else {
            match records
                .put_with_key(&record, &key)
                .and_then(|_| summaries.put_with_key(&summary, &key))
            {
                Ok(_) => {
                    Txn::commit(&tx);
                    Decision::Write
                }
                Err(e) => Decision::Threw(js_err(e)),
            }
        };
        if !matches!(d, Decision::Write) {
            let _ = tx.abort();
        }
        *decision.borrow_mut() = Some(d);
    });
    stored.set_onsuccess(Some(on_stored.unchecked_ref()));
    let ended = txn.end().await;
    let decision = decided.borrow_mut().take();
    match decision {
        Some(Decision::Conflict) => Err(StoreError::Conflict),
        Some(Decision::Threw(e)) => Err(StoreError::Failed(e)),
        Some(Decision::Write) | None => ended,
    }
}

/// The stored record `id`'s JSON.
pub async fn get(id: &str) -> Result<Option<String>, StoreError> {
    let db = database().await?;
    let store = db
        .transaction_with_str(RECORDS)
        .and_then(|t| t.object_store(RECORDS))
        .map_err(failed)?;
    let req = store.get(&JsValue::from_str(id)).map_err(failed)?;
    Ok(wait(&req).await?.as_string())
}

/// Every stored summary: its id, and its JSON (`None`: not text).
pub async fn summaries() -> Result<Vec<(String, Option<String>)>, StoreError> {
    let db = database().await?;
    let store = db
        .transaction_with_str(SUMMARIES)
        .and_then(|t| t.object_store(SUMMARIES))
        .map_err(failed)?;
    let keys = store.get_all_keys().map_err(failed)?;
    let values = store.get_all().map_err(failed)?;
    // Requests succeed in order: the keys are there once the values are.
    let values: js_sys::Array = wait(&values).await?.unchecked_into();
    let keys: js_sys::Array = keys.result().map_err(failed)?.unchecked_into();
    Ok(keys
        .iter()
        .zip(values.iter())
        .map(|(k, v)| (k.as_string().unwrap_or_default(), v.as_string()))
        .collect())
}

/// Deletes record `id` and its summary.
pub async fn delete(id: &str) -> Result<(), StoreError> {
    let txn = Txn::begin(IdbTransactionMode::Readwrite).await?;
    let (records, summaries) = txn.stores()?;
    let key = JsValue::from_str(id);
    records.delete(&key).map_err(failed)?;
    summaries.delete(&key).map_err(failed)?;
    Txn::commit(&txn.tx);
    txn.end().await
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
