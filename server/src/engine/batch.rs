//! Continuous batching's state: the generations running together ([`Batch`]), each with the events on
//! their way to its client ([`Outbox`]). The worker's loop over them is [`super::run_loop`].
//!
//! Events go out without blocking the loop: a client that does not read fills its channel, and
//! then its sequence sits out the decode steps until it reads again; the others go on.

use super::admission::Slot;
use crate::generate::Sequence;
use protocol::Event;
use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Events on their way to one client.
pub(crate) struct Outbox {
    pub(super) events: mpsc::Sender<Event>,
    pub(super) pending: VecDeque<Event>,
}

impl Outbox {
    pub(super) fn new(events: mpsc::Sender<Event>) -> Self {
        Self {
            events,
            pending: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, event: Event) {
        self.pending.push_back(event);
    }

    /// Sends what the channel takes now; `false` when the client is gone.
    pub(super) fn flush(&mut self) -> bool {
        while let Some(event) = self.pending.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        !self.events.is_closed()
    }

    /// The client has not taken everything yet.
    pub(super) fn is_blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    /// At shutdown: waits until the client took everything (or is gone).
    pub(super) fn flush_blocking(&mut self) {
        while let Some(event) = self.pending.pop_front() {
            if self.events.blocking_send(event).is_err() {
                return;
            }
        }
    }
}

/// A running generation.
pub(super) struct Active {
    pub(super) seq: Sequence,
    /// Its place in the queue, freed before its client hears the end.
    pub(super) slot: Slot,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) out: Outbox,
    pub(super) started: Instant,
}

/// The generations running together, and the final events still on their way.
pub(crate) struct Batch {
    pub(super) max: usize,
    /// Sequences one client may run at once: a few clients that stop reading cannot hold every
    /// place (their answers pause until the connection's write deadline cancels them).
    pub(super) per_client: usize,
    /// Whether `per_client` counts each address as one client (shared servers).
    pub(super) per_address: bool,
    /// `max` is the device's ceiling, lowered after each load to what memory holds (no `--max-batch`).
    pub(super) from_memory: bool,
    /// Prompt positions prefilled per turn (`None`: a whole prompt).
    pub(super) chunk: Option<usize>,
    pub(super) active: Vec<Active>,
    pub(super) draining: Vec<Outbox>,
}

impl Batch {
    pub fn new(max: usize, chunk: Option<usize>, from_memory: bool, per_address: bool) -> Self {
        let max = max.max(1);
        Self {
            max,
            per_client: default_per_client(max),
            per_address,
            from_memory,
            chunk,
            active: Vec::new(),
            draining: Vec::new(),
        }
    }

    pub fn prefill_chunk(&self) -> Option<usize> {
        self.chunk
    }

    /// After a load: without `--max-batch`, as many sequences as the memory left holds, at most `ceiling`
    /// (printed); returns the batch size.
    pub fn fit_memory(&mut self, pipeline: &crate::generate::Pipeline, ceiling: usize) -> usize {
        if !self.from_memory {
            return self.max;
        }
        let kept = crate::generate::KEPT_CONVERSATIONS;
        match super::batch_size::from_memory(pipeline, ceiling, kept) {
            Some(fit) => {
                tracing::info!("{fit}");
                self.max = fit.max_batch;
            }
            None => self.max = ceiling,
        }
        self.per_client = default_per_client(self.max);
        self.max
    }

    pub(super) fn prefilling(&self) -> bool {
        self.active.iter().any(|a| a.seq.is_prefilling())
    }
}

impl Batch {
    /// Whether `client` already runs its share of the batch. On a shared server new client ids
    /// are free, so an address counts as one client.
    pub(super) fn runs_its_most(&self, client: &str) -> bool {
        let key = |c: &'_ str| -> String {
            match c.rsplit_once('@') {
                Some((_, address)) if self.per_address => address.to_string(),
                _ => c.to_string(),
            }
        };
        let k = key(client);
        let running = self.active.iter().filter(|a| key(a.slot.client()) == k);
        running.count() >= self.per_client
    }
}

/// Three quarters of the batch (at least one): another client always finds a place when one
/// client's answers fill the rest.
pub(crate) fn default_per_client(max_batch: usize) -> usize {
    (max_batch - max_batch / 4).max(1)
}
