//! The worker thread: it owns the loaded [`Pipeline`] and generates up to `max_batch` answers
//! together (continuous batching: the loop in [`super::run_loop`], its state in [`super::batch`]).
//!
//! Typed commands come in through one channel ([`Command`](super::command::Command)); each request
//! carries its own response channel of protocol [`Event`]s. The worker reports the queue position of
//! waiting requests, streams text pieces, and ends every request with `Done` or `Error`. A request is
//! cancelled by its flag ([`Canceller::cancel`](super::Canceller::cancel)), by a `Cancel` command while
//! queued, or when its response channel is closed (the client is gone). Waiting requests start
//! round-robin between clients ([`super::queue`]). A panic inside a job is caught: the requests it
//! touched get an error and the worker goes on.

use super::batch::Batch;
use super::command::Command;
use super::limits::{decode_image, Limits};
use super::queue::Queue;
use super::registry::{Entry, Registry};
use crate::generate::{ChatRequest, LoadOptions, Pipeline};
use anyhow::Result;
use protocol::{Error, ErrorKind, Event, GenerateRequest};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use tokio::sync::mpsc;

/// What the handle can read without asking the worker.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) current: Option<String>,
    pub(crate) loading: Option<String>,
    pub(crate) load_error: Option<String>,
    /// A generation or a load is running.
    pub(crate) busy: bool,
    /// The worker has ended (after `Shutdown`, or a panic in its loop).
    pub(crate) stopped: bool,
    /// What ended the worker, when a panic did.
    pub(crate) crashed: Option<String>,
    /// Test hook (feature `test-hooks`): the loop panics on its next turn.
    #[cfg(feature = "test-hooks")]
    pub(crate) panic_loop: bool,
    /// Test hook (feature `test-hooks`): the next job panics inside the worker.
    #[cfg(feature = "test-hooks")]
    pub(crate) panic_next: bool,
    /// The most sequences one decode step has run.
    pub(crate) largest_batch: usize,
    /// Checkpoint loads run (not counting switches to the checkpoint already loaded).
    pub(crate) loads_run: u64,
    /// The loaded model's device plan: a one-line summary when split, and the full plan.
    pub(crate) plan: (Option<String>, Option<String>),
    /// The batch size set after the last load.
    pub(crate) max_batch: Option<usize>,
}

/// The worker thread's state.
pub(crate) struct Worker {
    pub(crate) rx: std_mpsc::Receiver<Command>,
    pub(crate) queue: Queue,
    pub(crate) batch: Batch,
    /// `--max-batch`, else the device's default: the ceiling of the batch fitted to memory.
    pub(crate) max_batch: usize,
    pub(crate) pipeline: Option<Pipeline>,
    pub(crate) current: Option<Entry>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) opts: LoadOptions,
    pub(crate) limits: Arc<Limits>,
    pub(crate) shared: Arc<Mutex<Shared>>,
    /// When the last checkpoint switch ended, and the least time before the next starts.
    pub(crate) last_switch: Option<std::time::Instant>,
    pub(crate) switch_cooldown: std::time::Duration,
}

impl Worker {
    /// Loads checkpoint `name`, telling every listener (the switches merged into this one).
    pub(crate) fn load(&mut self, name: &str, listeners: &[mpsc::Sender<Event>]) {
        let tell = |event: Event| {
            for events in listeners {
                let _ = events.blocking_send(event.clone());
            }
        };
        let Some(entry) = self.registry.find(name).cloned() else {
            tell(Event::error(
                ErrorKind::BadInput,
                format!(
                    "no checkpoint named {name:?} in {}",
                    self.registry.dir.display()
                ),
            ));
            return;
        };
        if self.current.as_ref().map(Entry::name) == Some(name) && self.pipeline.is_some() {
            tell(Event::Loaded {
                checkpoint: entry.info(),
            });
            return;
        }
        self.set_shared(|s| {
            s.loading = Some(name.into());
            s.load_error = None;
            s.loads_run += 1;
        });
        let started = std::time::Instant::now();
        let mut progress = progress_to(listeners);
        let mut opts = self.opts.clone();
        if entry.lora.is_some() {
            opts.lora = entry.lora.clone();
        }
        let result = Pipeline::load(&entry.dir, &opts, &mut progress);
        match result {
            Ok(pipeline) => {
                let quant = pipeline.model().quant_report().summary();
                if !quant.is_empty() {
                    tracing::info!("{name}: {quant}");
                }
                // Replace only now: a failed load keeps the old checkpoint.
                let plan = pipeline
                    .plan()
                    .map(|p| (p.is_split().then(|| p.short()), p.to_string()));
                let mut pipeline = pipeline;
                pipeline.set_prefill_chunk(self.batch.prefill_chunk());
                let max_batch = self.batch.fit_memory(&pipeline, self.max_batch);
                self.pipeline = Some(pipeline);
                // The old checkpoint was dropped just now.
                crate::model::memory::release_freed();
                self.current = Some(entry.clone());
                self.set_shared(|s| {
                    s.current = Some(name.into());
                    s.max_batch = Some(max_batch);
                    s.loading = None;
                    s.plan = plan.map_or((None, None), |(a, b)| (a, Some(b)));
                });
                tracing::info!(
                    "checkpoint {name} loaded in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                tell(Event::Loaded {
                    checkpoint: entry.info(),
                });
            }
            Err(e) => {
                // What the failed load had read so far.
                crate::model::memory::release_freed();
                let message = format!("{e:#}");
                self.set_shared(|s| {
                    s.loading = None;
                    s.load_error = Some(format!("{name}: {message}"));
                });
                tell(Event::error(ErrorKind::Internal, message));
            }
        }
    }

    pub(crate) fn set_shared(&self, f: impl FnOnce(&mut Shared)) {
        if let Ok(mut s) = self.shared.lock() {
            f(&mut s);
        }
    }
}

/// Load progress for `listeners`: at most every 100 ms and on each whole percent, never blocking
/// the load on a slow or closed listener.
fn progress_to(listeners: &[mpsc::Sender<Event>]) -> impl FnMut(u64, u64) + '_ {
    let mut last_sent = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let mut last_pct = u64::MAX;
    move |done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(0);
        if pct != last_pct
            && (last_sent.elapsed() >= std::time::Duration::from_millis(100) || done >= total)
        {
            last_pct = pct;
            last_sent = std::time::Instant::now();
            for events in listeners {
                let _ = events.try_send(Event::LoadProgress { done, total });
            }
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// The page's or the API's request (checked by [`check_request`]) → the pipeline's, the image decoded from
/// the bytes it carries.
pub fn to_chat_request(req: &GenerateRequest, limits: &Limits) -> Result<ChatRequest> {
    let image = match &req.image {
        Some(img) => Some(
            decode_image(&img.name, img.bytes.as_bytes(), limits)
                .map_err(|e| Error::bad_input(format!("{e:#}")))?,
        ),
        None => None,
    };
    Ok(req.with_image(image))
}

/// The typed error for a failure inside the worker: the pipeline's refusals of the request keep their
/// kind ([`Error`] in the chain), anything else is internal.
pub(crate) fn classify(e: &anyhow::Error) -> Error {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .map_or(ErrorKind::Internal, |e| e.kind);
    Error::new(kind, format!("{e:#}"))
}
