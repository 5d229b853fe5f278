//! The engine's handle: what the web server, the API and the tests hold. It checks ([`limits`](super::limits))
//! and admits ([`admission`](super::admission)) each request before queueing it for the worker thread, starts
//! that thread, and reads the worker's state without asking it.

use super::admission::{Admission, Fairness};
use super::batch::Batch;
use super::command::{Command, EVENT_BUFFER};
use super::limits::{check_request, Limits};
use super::queue::Queue;
use super::registry::{Entry, Registry};
use super::worker::{Shared, Worker};
use crate::generate::{DeviceName, LoadOptions};
use anyhow::{anyhow, Result};
use protocol::{Error, Event, GenerateRequest, ModelsState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use tokio::sync::mpsc;

/// A queued or running generation, as returned to the caller.
pub struct Ticket {
    pub id: u64,
    /// `Queued`, `Started`, `Token`…, then `Done` or `Error`. Dropping it cancels.
    pub events: mpsc::Receiver<Event>,
    /// Stops this request; cloneable, usable from any thread.
    pub canceller: Canceller,
}

/// Cancels one request: at once if it runs (no further token is produced), or removes it from
/// the queue. Either way it ends with `Done { stop: Cancelled }`.
#[derive(Clone)]
pub struct Canceller {
    id: u64,
    flag: Arc<AtomicBool>,
    commands: std_mpsc::Sender<Command>,
}

impl Canceller {
    pub fn cancel(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            let _ = self.commands.send(Command::Cancel { id: self.id });
        }
    }
}

/// The cloneable handle of channels through which everything talks to the worker.
#[derive(Clone)]
pub struct EngineHandle {
    commands: std_mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    registry: Arc<Registry>,
    next_id: Arc<AtomicU64>,
    device: String,
    limits: Arc<Limits>,
    admission: Arc<Admission>,
    max_batch: usize,
}

/// Runs `worker` on its own thread. A panic outside the per-job guards (sampling, finishing,
/// loading, the loop itself) ends the worker: its requests' channels close with it, and the engine
/// is marked stopped so that new requests fail at once instead of waiting.
fn spawn_worker(worker: Worker) -> Result<()> {
    let shared = worker.shared.clone();
    std::thread::Builder::new()
        .name("cogvlm-worker".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(panic) = outcome {
                let what = super::worker::panic_message(panic.as_ref());
                tracing::error!("the model worker stopped after an internal error: {what}");
                s.crashed = Some(what);
            }
            s.stopped = true;
            s.busy = false;
        })
        .map_err(|e| anyhow!("starting the model worker thread: {e}"))?;
    Ok(())
}

/// How the engine is run: where the model goes, and what it accepts.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub load: LoadOptions,
    pub limits: Limits,
    pub fairness: Fairness,
    /// Generations decoded together; `None`: [`default_max_batch`] for the device.
    pub max_batch: Option<usize>,
    /// `--prefill-chunk`: prompt positions prefilled between two decode steps; `None`:
    /// [`DEFAULT_PREFILL_CHUNK`]; `Some(0)`: a whole prompt at once.
    pub prefill_chunk: Option<usize>,
}

/// Prompt positions prefilled between two decode steps by default: the longest pause a running
/// stream sees while another request's prompt is prefilled (measured in BENCHMARKS.md).
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

/// Generations decoded together by default: 8 on the CPU (decode there is bound by per-operation
/// overhead and memory reads, which a batch shares); 16 on a GPU (each sequence keeps its own
/// decoding cache, ~1 GB at full size for a 2048-position chat in bf16).
pub fn default_max_batch(device: DeviceName) -> usize {
    if device.is_cuda() {
        16
    } else {
        8
    }
}

impl EngineHandle {
    /// Starts the worker thread with the default limits. `initial`, if given, is loaded first
    /// (requests queue behind it).
    pub fn start(registry: Registry, opts: LoadOptions, initial: Option<&str>) -> Result<Self> {
        Self::start_with(
            registry,
            EngineOptions {
                load: opts,
                ..EngineOptions::default()
            },
            initial,
        )
    }

    /// As [`Self::start`], with explicit limits and queue rules.
    pub fn start_with(
        registry: Registry,
        options: EngineOptions,
        initial: Option<&str>,
    ) -> Result<Self> {
        let (commands, rx) = std_mpsc::channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let registry = Arc::new(registry);
        let limits = Arc::new(options.limits);
        let opts = options.load;
        let max_batch = options
            .max_batch
            .unwrap_or_else(|| default_max_batch(opts.device))
            .clamp(1, crate::model::language::Rows::MAX);
        let (max_switches, switch_cooldown, per_address) = (
            options.fairness.max_queued_switches,
            options.fairness.switch_cooldown,
            options.fairness.per_address,
        );
        let from_memory = options.max_batch.is_none();
        let prefill_chunk = match options.prefill_chunk.unwrap_or(DEFAULT_PREFILL_CHUNK) {
            0 => None,
            n => Some(n),
        };
        let handle = EngineHandle {
            commands,
            shared: shared.clone(),
            registry: registry.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            device: opts.device.to_string(),
            limits: limits.clone(),
            admission: Admission::new(options.fairness),
            max_batch,
        };
        spawn_worker(Worker {
            rx,
            queue: Queue::new(max_switches),
            batch: Batch::new(max_batch, prefill_chunk, from_memory, per_address),
            max_batch,
            pipeline: None,
            current: None,
            registry,
            opts,
            limits,
            shared: shared.clone(),
            last_switch: None,
            switch_cooldown,
        })?;
        if let Some(name) = initial {
            // Nobody listens to the startup load: progress goes to the log, the state to
            // `models()`.
            let (events, mut rx) = mpsc::channel(EVENT_BUFFER);
            handle
                .shared
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .loading = Some(name.into());
            handle.send(Command::Load {
                name: name.into(),
                events,
            });
            std::thread::spawn(move || {
                while let Some(ev) = rx.blocking_recv() {
                    match ev {
                        Event::Loaded { checkpoint } => {
                            tracing::info!("loaded {}", checkpoint.name)
                        }
                        Event::Error { message, .. } => {
                            tracing::error!("loading failed: {message}")
                        }
                        _ => {}
                    }
                }
            });
        }
        Ok(handle)
    }

    fn send(&self, cmd: Command) {
        // The worker only stops when every handle is gone; a failed send cannot happen while
        // `self` exists, except after a panic in the worker, which the events then report
        // as a closed channel.
        let _ = self.commands.send(cmd);
    }

    /// Queues a generation for `client` (see [`Admission`]). A request that breaks a limit or
    /// is not admitted gets a ticket whose only event is the `Error` saying why.
    pub fn generate(&self, req: GenerateRequest, client: &str) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let admitted = self
            .refuse_if_stopped()
            .and_then(|()| {
                check_request(&req, &self.limits).map_err(|e| Error::bad_input(format!("{e:#}")))
            })
            .and_then(|()| self.admission.admit(client));
        match admitted {
            Ok(slot) => self.send(Command::Generate {
                id,
                req: Box::new(req),
                slot,
                cancel: cancel.clone(),
                events,
            }),
            Err(error) => {
                super::run_loop::log_failure(client, &error);
                let _ = events.try_send(error.into());
            }
        }
        Ticket {
            id,
            events: rx,
            canceller: Canceller {
                id,
                flag: cancel,
                commands: self.commands.clone(),
            },
        }
    }

    /// Queues a checkpoint switch; see [`Command::Load`]. The worker merges it with a queued
    /// switch to the same checkpoint, refuses it past the cap on waiting switches, and starts it
    /// no sooner than the cooldown after the previous one ([`Fairness`]).
    pub fn load(&self, name: &str) -> mpsc::Receiver<Event> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        if let Err(e) = self.refuse_if_stopped() {
            let _ = events.try_send(e.into());
            return rx;
        }
        self.send(Command::Load {
            name: name.into(),
            events,
        });
        rx
    }

    /// The error for every request once the worker has stopped (after a crash or `shutdown`).
    fn refuse_if_stopped(&self) -> Result<(), Error> {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(what) = &s.crashed {
            return Err(Error::internal(format!(
                "the model worker stopped after an internal error ({what}); restart the server"
            )));
        }
        if s.stopped {
            return Err(Error::new(
                protocol::ErrorKind::ShuttingDown,
                "the server is shutting down",
            ));
        }
        Ok(())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Requests waiting or running.
    pub fn pending(&self) -> usize {
        self.admission.pending()
    }

    /// Generations decoded together: `--max-batch`, else what the loaded model's memory left room
    /// for (up to the device's default).
    pub fn max_batch(&self) -> usize {
        self.shared
            .lock()
            .ok()
            .and_then(|s| s.max_batch)
            .unwrap_or(self.max_batch)
    }

    /// The most sequences one decode step has run so far (tests, bench).
    pub fn largest_batch(&self) -> usize {
        self.shared.lock().map(|s| s.largest_batch).unwrap_or(0)
    }

    /// Checkpoint loads the worker has run (tests, bench): merged, refused or no-op switches
    /// are not counted.
    pub fn loads_run(&self) -> u64 {
        self.shared.lock().map(|s| s.loads_run).unwrap_or(0)
    }

    /// True while the worker runs a generation or a load.
    pub fn is_busy(&self) -> bool {
        self.shared.lock().map(|s| s.busy).unwrap_or(false)
    }

    /// True once the worker has ended after [`Self::shutdown`].
    pub fn is_stopped(&self) -> bool {
        self.shared.lock().map(|s| s.stopped).unwrap_or(true)
    }

    /// Stops the running job, refuses the waiting ones ("the server is shutting down") and
    /// ends the worker.
    pub fn shutdown(&self) {
        self.send(Command::Shutdown);
    }

    /// Test hook (feature `test-hooks`, which only this package's tests turn on): the next job
    /// panics inside the worker, to check that the panic is reported and the worker goes on.
    #[cfg(feature = "test-hooks")]
    pub fn panic_on_next_job(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.panic_next = true;
        }
    }

    /// Test hook: the worker's loop itself panics on its next turn (outside any job's guard).
    #[cfg(feature = "test-hooks")]
    pub fn panic_in_loop(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.panic_loop = true;
        }
        // Wake the worker if it waits for a command.
        self.send(Command::Cancel { id: 0 });
    }

    /// The checkpoint list and what is loaded.
    pub fn models(&self) -> ModelsState {
        let shared = self.shared.lock().map(|s| {
            let plan = s.plan.clone();
            (
                s.current.clone(),
                s.loading.clone(),
                s.load_error.clone(),
                plan,
            )
        });
        let (current, loading, load_error, plan) = shared.unwrap_or_default();
        let (placement, plan_detail) = plan;
        ModelsState {
            checkpoints: self.registry.entries.iter().map(Entry::info).collect(),
            current,
            loading,
            load_error,
            models_dir: self.registry.dir.display().to_string(),
            skipped: self.registry.skipped.clone(),
            device: self.device.clone(),
            max_upload_bytes: self.limits.max_upload_bytes,
            placement,
            plan_detail,
        }
    }
}
