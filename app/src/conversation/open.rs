//! What the page keeps of its conversations: the list, the open one, and what this tab knows of the stored
//! records. Only state: what changes it is in `store.rs` and `saving.rs`.

use super::record::{SavedConversation, Summary};
use leptos::prelude::*;
use std::collections::HashMap;

/// The conversation list and which one is open.
#[derive(Clone, Copy)]
pub struct Conversations {
    pub id: RwSignal<String>,
    /// The title the user gave; `None`: from the first question.
    pub title: RwSignal<Option<String>>,
    pub created_ms: StoredValue<f64>,
    /// Newest first.
    pub list: RwSignal<Vec<Summary>>,
    /// Set once the stored conversations have been read: saving starts only then.
    pub ready: RwSignal<bool>,
    /// The JSON last written for the open conversation (without its time), so unchanged state is not saved.
    pub(super) last_saved: StoredValue<String>,
    pub panel_open: RwSignal<bool>,
    /// A storage problem the user must know of (a save that failed after its retries, a database held or
    /// replaced by another tab), shown until a save succeeds.
    pub error: RwSignal<Option<String>>,
    pub sync: SyncState,
}

impl Conversations {
    pub fn new() -> Self {
        Self {
            id: RwSignal::new(String::new()),
            title: RwSignal::new(None),
            created_ms: StoredValue::new(0.0),
            list: RwSignal::new(Vec::new()),
            ready: RwSignal::new(false),
            last_saved: StoredValue::new(String::new()),
            panel_open: RwSignal::new(false),
            error: RwSignal::new(None),
            sync: SyncState::new(),
        }
    }
}

impl Default for Conversations {
    fn default() -> Self {
        Self::new()
    }
}

/// What this tab knows of the stored records, to save over them safely.
#[derive(Clone, Copy)]
pub struct SyncState {
    /// Per record id, the revision this tab last read or wrote: a save overwrites only that one.
    pub(super) revisions: StoredValue<HashMap<String, u64>>,
    /// Records this tab forked after a conflict → the fork, where saves asked before the fork now go.
    pub(super) forks: StoredValue<HashMap<String, String>>,
    /// Saves asked for and not yet finished.
    pub(super) pending: StoredValue<usize>,
}

impl SyncState {
    pub fn new() -> Self {
        Self {
            revisions: StoredValue::new(HashMap::new()),
            forks: StoredValue::new(HashMap::new()),
            pending: StoredValue::new(0),
        }
    }

    pub fn revision(&self, id: &str) -> u64 {
        self.revisions
            .with_value(|r| r.get(id).copied().unwrap_or(0))
    }

    pub(super) fn set_revision(&self, id: &str, revision: u64) {
        self.revisions.update_value(|r| {
            r.insert(id.to_string(), revision);
        });
    }

    /// `rec` is what the page now shows: later saves of its id build on its revision, not on a fork.
    pub fn took(&self, rec: &SavedConversation) {
        self.set_revision(&rec.id, rec.revision);
        self.forks.update_value(|f| {
            f.remove(&rec.id);
        });
    }

    pub fn forget(&self, id: &str) {
        self.revisions.update_value(|r| {
            r.remove(id);
        });
        self.forks.update_value(|f| {
            f.remove(id);
        });
    }

    pub fn saving(&self) -> bool {
        self.pending.get_value() > 0
    }
}

impl Default for SyncState {
    fn default() -> Self {
        Self::new()
    }
}
