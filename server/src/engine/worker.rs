//! The worker thread: it owns the loaded [`Pipeline`] and runs one job at a time, in order.
//!
//! Typed commands come in through one channel ([`Command`]); each request carries its own
//! response channel of protocol [`Event`]s. The worker reports the queue position of waiting
//! requests, streams text pieces, and ends every request with `Done` or `Error`. A request is
//! cancelled by its flag ([`EngineHandle::cancel`]), by a `Cancel` command while queued, or when
//! its response channel is closed (the next send fails: the client is gone).
//!
//! Requests are checked ([`limits`](super::limits)) and admitted ([`admission`](super::admission))
//! before they are queued. A panic inside a job is caught: that request gets an error and the
//! worker goes on with the next one.

use super::admission::{Admission, Fairness, Slot};
use super::limits::{check_request, decode_image, Limits};
use super::registry::{from_proto_version, Entry, Registry};
use crate::{ChatRequest, GenerationStats, LoadOptions, Pipeline, SamplingParams, StopReason};
use anyhow::{anyhow, Result};
use app::protocol::{self as proto, Event, GenerateRequest, ModelsState};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Capacity of a request's event channel; a slow client slows the worker down (back-pressure)
/// instead of buffering without bound.
const EVENT_BUFFER: usize = 256;

/// What the worker is asked to do.
pub enum Command {
    Generate {
        id: u64,
        req: Box<GenerateRequest>,
        /// The image's bytes, checked by [`check_request`].
        image: Option<Vec<u8>>,
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

/// What the handle can read without asking the worker.
#[derive(Debug, Default)]
struct Shared {
    current: Option<String>,
    loading: Option<String>,
    load_error: Option<String>,
    /// A job is running.
    busy: bool,
    /// The worker has ended (after `Shutdown`).
    stopped: bool,
    /// Test hook: the next job panics inside the worker.
    panic_next: bool,
    /// The loaded model's device plan: a one-line summary when split, and the full plan.
    plan: (Option<String>, Option<String>),
}

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
}

/// How the engine is run: where the model goes, and what it accepts.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub load: LoadOptions,
    pub limits: Limits,
    pub fairness: Fairness,
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
        let handle = EngineHandle {
            commands,
            shared: shared.clone(),
            registry: registry.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            device: opts.device.clone(),
            limits: limits.clone(),
            admission: Admission::new(options.fairness),
        };
        std::thread::Builder::new()
            .name("cogvlm-worker".into())
            .spawn(move || {
                let worker = Worker {
                    rx,
                    queue: Queue::default(),
                    pipeline: None,
                    current: None,
                    registry,
                    opts,
                    limits,
                    shared: shared.clone(),
                };
                worker.run();
                if let Ok(mut s) = shared.lock() {
                    s.stopped = true;
                    s.busy = false;
                }
            })
            .map_err(|e| anyhow!("starting the model worker thread: {e}"))?;
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
                        Event::Loaded { checkpoint } => eprintln!("loaded {}", checkpoint.name),
                        Event::Error { message } => eprintln!("loading failed: {message}"),
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
        let admitted = check_request(&req, &self.limits)
            .map_err(|e| format!("{e:#}"))
            .and_then(|image| Ok((image, self.admission.admit(client)?)));
        match admitted {
            Ok((image, slot)) => self.send(Command::Generate {
                id,
                req: Box::new(req),
                image,
                slot,
                cancel: cancel.clone(),
                events,
            }),
            Err(message) => {
                let _ = events.try_send(Event::Error { message });
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

    /// Queues a checkpoint switch; see [`Command::Load`].
    pub fn load(&self, name: &str) -> mpsc::Receiver<Event> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        self.send(Command::Load {
            name: name.into(),
            events,
        });
        rx
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

    /// True while the worker runs a job (a generation or a load).
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

    /// Test hook (not reachable from the network): the next job panics inside the worker, to
    /// check that the panic is reported and the worker goes on.
    #[doc(hidden)]
    pub fn panic_on_next_job(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.panic_next = true;
        }
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

enum Job {
    Generate {
        id: u64,
        req: Box<GenerateRequest>,
        image: Option<Vec<u8>>,
        _slot: Slot,
        cancel: Arc<AtomicBool>,
        events: mpsc::Sender<Event>,
    },
    Load {
        name: String,
        events: mpsc::Sender<Event>,
    },
}

impl Job {
    fn events(&self) -> &mpsc::Sender<Event> {
        match self {
            Job::Generate { events, .. } | Job::Load { events, .. } => events,
        }
    }
}

/// The queue of waiting jobs; separate from the pipeline so that the token callback can
/// take new commands while the pipeline runs.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Average wall time of a generation (for the waiting clients' ETA).
    avg_job_ms: Option<f64>,
    /// `Shutdown` was received.
    shutting_down: bool,
}

impl Queue {
    fn eta(&self, position: usize) -> Option<u64> {
        self.avg_job_ms.map(|ms| (ms * position as f64) as u64)
    }

    fn record_job_time(&mut self, ms: f64) {
        self.avg_job_ms = Some(match self.avg_job_ms {
            Some(avg) => 0.7 * avg + 0.3 * ms,
            None => ms,
        });
    }

    /// Takes one command. `running`: a job is in progress (it counts as one ahead).
    fn accept(&mut self, cmd: Command, running: bool) {
        match cmd {
            Command::Generate {
                id,
                req,
                image,
                slot,
                cancel,
                events,
            } => {
                if self.shutting_down {
                    let _ = events.try_send(shutting_down());
                    return;
                }
                let position = self.jobs.len() + usize::from(running);
                let eta_ms = self.eta(position);
                if events.try_send(Event::Queued { position, eta_ms }).is_ok() {
                    self.jobs.push_back(Job::Generate {
                        id,
                        req,
                        image,
                        _slot: slot,
                        cancel,
                        events,
                    });
                }
            }
            Command::Load { name, events } => self.jobs.push_back(Job::Load { name, events }),
            Command::Shutdown => {
                self.shutting_down = true;
                for job in self.jobs.drain(..) {
                    let _ = job.events().try_send(shutting_down());
                }
            }
            Command::Cancel { id } => {
                let before = self.jobs.len();
                self.jobs.retain(|job| match job {
                    Job::Generate {
                        id: job_id, events, ..
                    } if *job_id == id => {
                        let _ = events.try_send(cancelled_done(""));
                        false
                    }
                    _ => true,
                });
                if self.jobs.len() != before {
                    self.announce(running);
                }
            }
        }
    }

    /// Tells every waiting request its position; drops the ones whose client is gone.
    fn announce(&mut self, running: bool) {
        let mut position = usize::from(running);
        self.jobs.retain(|job| match job {
            Job::Generate { events, .. } => {
                let eta_ms = self.avg_job_ms.map(|ms| (ms * position as f64) as u64);
                let keep = !events.is_closed()
                    && events.try_send(Event::Queued { position, eta_ms }).is_ok();
                if keep {
                    position += 1;
                }
                keep
            }
            Job::Load { .. } => {
                position += 1;
                true
            }
        });
    }
}

fn shutting_down() -> Event {
    Event::Error {
        message: "the server is shutting down".into(),
    }
}

fn cancelled_done(checkpoint: &str) -> Event {
    Event::Done {
        stats: proto::Stats {
            checkpoint: checkpoint.into(),
            prompt_tokens: 0,
            reused_tokens: 0,
            generated_tokens: 0,
            prefill_ms: 0.0,
            ttft_ms: 0.0,
            tokens_per_s: 0.0,
            stop: proto::StopReason::Cancelled,
        },
    }
}

struct Worker {
    rx: std_mpsc::Receiver<Command>,
    queue: Queue,
    pipeline: Option<Pipeline>,
    current: Option<Entry>,
    registry: Arc<Registry>,
    opts: LoadOptions,
    limits: Arc<Limits>,
    shared: Arc<Mutex<Shared>>,
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.queue.shutting_down {
                return;
            }
            if self.queue.jobs.is_empty() {
                match self.rx.recv() {
                    Ok(cmd) => self.queue.accept(cmd, false),
                    Err(_) => return, // every handle is gone
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                self.queue.accept(cmd, false);
            }
            let Some(job) = self.queue.jobs.pop_front() else {
                continue;
            };
            self.queue.announce(true);
            let reply = job.events().clone();
            self.set_shared(|s| s.busy = true);
            let started = Instant::now();
            let is_generation = matches!(job, Job::Generate { .. });
            // A bug in one request must not take the server down: report it, drop what the
            // job may have left half-done, and go on.
            let outcome = catch_unwind(AssertUnwindSafe(|| self.run_job(job)));
            if let Err(panic) = outcome {
                let what = panic_message(panic.as_ref());
                eprintln!("the model worker recovered from a panic: {what}");
                if let Some(p) = self.pipeline.as_mut() {
                    p.forget_image();
                }
                let _ = reply.blocking_send(Event::Error {
                    message: format!(
                        "internal error in the model worker ({what}); it recovered: please try again"
                    ),
                });
            } else if is_generation {
                self.queue
                    .record_job_time(started.elapsed().as_secs_f64() * 1e3);
            }
            self.set_shared(|s| s.busy = false);
        }
    }

    fn run_job(&mut self, job: Job) {
        let panic_now = self
            .shared
            .lock()
            .map(|mut s| std::mem::take(&mut s.panic_next))
            .unwrap_or(false);
        if panic_now {
            panic!("test-only injected panic");
        }
        match job {
            Job::Generate {
                req,
                image,
                cancel,
                events,
                _slot: slot,
                ..
            } => {
                let last =
                    match self.generate(&req, image.as_deref(), slot.client(), &cancel, &events) {
                        Ok(last) => last,
                        Err(e) => Some(Event::Error {
                            message: format!("{e:#}"),
                        }),
                    };
                // Free the client's place before it hears the end, so that its next request
                // is never refused as "already answering".
                drop(slot);
                if let Some(event) = last {
                    let _ = events.blocking_send(event);
                }
            }
            Job::Load { name, events } => self.load(&name, &events),
        }
    }

    /// Runs one generation; returns the final event (`Done`), for the caller to send.
    fn generate(
        &mut self,
        req: &GenerateRequest,
        image: Option<&[u8]>,
        client: &str,
        cancel: &AtomicBool,
        events: &mpsc::Sender<Event>,
    ) -> Result<Option<Event>> {
        let checkpoint = self
            .current
            .as_ref()
            .map(|e| e.name().to_string())
            .unwrap_or_default();
        if cancel.load(Ordering::SeqCst) || events.is_closed() {
            return Ok(Some(cancelled_done(&checkpoint)));
        }
        let Some(pipeline) = self.pipeline.as_mut() else {
            let loading = self.shared.lock().ok().and_then(|s| s.load_error.clone());
            return Err(anyhow!(
                "no model is loaded{}",
                loading
                    .map(|e| format!(" (the last load failed: {e})"))
                    .unwrap_or_default()
            ));
        };
        if events
            .blocking_send(Event::Started {
                checkpoint: checkpoint.clone(),
            })
            .is_err()
        {
            return Ok(None); // the client is gone
        }
        let chat = to_chat_request(req, image, &self.limits)?;
        let rx = &self.rx;
        let queue = &mut self.queue;
        let mut on_text = |text: &str| -> bool {
            // Keep the queue current while generating (positions, cancels of waiting jobs).
            while let Ok(cmd) = rx.try_recv() {
                queue.accept(cmd, true);
            }
            if cancel.load(Ordering::SeqCst) || queue.shutting_down || events.is_closed() {
                return false;
            }
            text.is_empty()
                || events
                    .blocking_send(Event::Token { text: text.into() })
                    .is_ok()
        };
        let stats = pipeline.generate_for(client, &chat, &mut on_text)?;
        Ok(Some(Event::Done {
            stats: to_proto_stats(&stats, &checkpoint),
        }))
    }

    fn load(&mut self, name: &str, events: &mpsc::Sender<Event>) {
        let Some(entry) = self.registry.find(name).cloned() else {
            let _ = events.blocking_send(Event::Error {
                message: format!(
                    "no checkpoint named {name:?} in {}",
                    self.registry.dir.display()
                ),
            });
            return;
        };
        if self.current.as_ref().map(Entry::name) == Some(name) && self.pipeline.is_some() {
            let _ = events.blocking_send(Event::Loaded {
                checkpoint: entry.info(),
            });
            return;
        }
        self.set_shared(|s| {
            s.loading = Some(name.into());
            s.load_error = None;
        });
        let started = Instant::now();
        let mut last_sent = Instant::now() - Duration::from_secs(1);
        let mut last_pct = u64::MAX;
        let mut progress = |done: u64, total: u64| {
            let pct = (done * 100).checked_div(total).unwrap_or(0);
            if pct != last_pct
                && (last_sent.elapsed() >= Duration::from_millis(100) || done >= total)
            {
                last_pct = pct;
                last_sent = Instant::now();
                // Never block a load on a slow or closed listener.
                let _ = events.try_send(Event::LoadProgress { done, total });
            }
        };
        let result = Pipeline::load(&entry.summary.dir, &self.opts, &mut progress);
        match result {
            Ok(pipeline) => {
                let quant = pipeline.model().quant_report().summary();
                if !quant.is_empty() {
                    eprintln!("{name}: {quant}");
                }
                // Replace only now: a failed load keeps the old checkpoint.
                let plan = pipeline
                    .plan()
                    .map(|p| (p.is_split().then(|| p.short()), p.to_string()));
                self.pipeline = Some(pipeline);
                self.current = Some(entry.clone());
                self.set_shared(|s| {
                    s.current = Some(name.into());
                    s.loading = None;
                    s.plan = plan.map_or((None, None), |(a, b)| (a, Some(b)));
                });
                eprintln!(
                    "checkpoint {name} loaded in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                let _ = events.blocking_send(Event::Loaded {
                    checkpoint: entry.info(),
                });
            }
            Err(e) => {
                let message = format!("{e:#}");
                self.set_shared(|s| {
                    s.loading = None;
                    s.load_error = Some(format!("{name}: {message}"));
                });
                let _ = events.blocking_send(Event::Error { message });
            }
        }
    }

    fn set_shared(&self, f: impl FnOnce(&mut Shared)) {
        if let Ok(mut s) = self.shared.lock() {
            f(&mut s);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Protocol request → pipeline request; `image` holds the bytes [`check_request`] returned.
pub fn to_chat_request(
    req: &GenerateRequest,
    image: Option<&[u8]>,
    limits: &Limits,
) -> Result<ChatRequest> {
    let image = match (image, &req.image) {
        (Some(bytes), Some(img)) => Some(decode_image(&img.name, bytes, limits)?),
        _ => None,
    };
    let s = &req.sampling;
    let sampling = SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed.unwrap_or_else(rand::random),
        max_length: s.max_length,
        max_new_tokens: s.max_new_tokens,
    };
    Ok(ChatRequest {
        image,
        history: req.history.clone(),
        query: req.query.clone(),
        version: req.version.map(from_proto_version),
        sampling,
    })
}

fn to_proto_stats(s: &GenerationStats, checkpoint: &str) -> proto::Stats {
    proto::Stats {
        checkpoint: checkpoint.into(),
        prompt_tokens: s.prompt_tokens,
        reused_tokens: s.reused_tokens,
        generated_tokens: s.generated_tokens,
        prefill_ms: s.prefill_ms,
        ttft_ms: s.ttft_ms,
        tokens_per_s: s.tokens_per_s,
        stop: match s.stop {
            StopReason::Eos => proto::StopReason::Eos,
            StopReason::Length => proto::StopReason::Length,
            StopReason::Cancelled => proto::StopReason::Cancelled,
        },
    }
}
