//! The worker's command protocol: what the handle sends it, and the events every request can end with.

use super::admission::Slot;
use protocol::{ErrorKind, Event, GenerateRequest, Stats, StopReason};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Capacity of a request's event channel; a slow client pauses its own answer (it sits out decode
/// steps until it reads) instead of the worker buffering without bound.
pub(crate) const EVENT_BUFFER: usize = 256;

/// What the worker is asked to do.
pub enum Command {
    Generate {
        id: u64,
        /// Checked by [`check_request`] (its image from the header).
        req: Box<GenerateRequest>,
        /// Its place in the queue, freed when the job ends.
        slot: Slot,
        cancel: Arc<AtomicBool>,
        events: mpsc::Sender<Event>,
    },
    /// Cancels request `id`, queued or running.
    Cancel { id: u64 },
    /// Switches to checkpoint `name` (the current one stays if loading fails).
    Load {
        name: String,
        events: mpsc::Sender<Event>,
    },
    /// Cancels the running job, refuses the queued ones and ends the worker (Ctrl-C).
    Shutdown,
}

pub(crate) fn shutting_down() -> Event {
    Event::error(ErrorKind::ShuttingDown, "the server is shutting down")
}

pub(crate) fn cancelled_done(checkpoint: &str) -> Event {
    Event::Done {
        stats: Stats {
            checkpoint: checkpoint.into(),
            prompt_tokens: 0,
            reused_tokens: 0,
            dropped_turns: 0,
            context: 0,
            generated_tokens: 0,
            prefill_ms: 0.0,
            ttft_ms: 0.0,
            tokens_per_s: 0.0,
            stop: StopReason::Cancelled,
        },
    }
}
