//! The waiting requests in front of the batch, and the checkpoint switches among them.
//!
//! Requests start round-robin between clients: each client keeps its own FIFO, and the client whose
//! request just started goes to the back of the rotation, so one client's sixteen requests delay
//! another client's single one by at most one start. A switch (`Load`) is a barrier: the requests
//! queued before it start (and finish) on the old checkpoint, those queued after it on the new one.
//! Switches are admitted too: one to the checkpoint the last queued switch already goes to joins it,
//! and past `max_switches` waiting ones a switch is refused as busy.

use super::admission::Slot;
use super::command::{cancelled_done, shutting_down, Command};
use protocol::{ErrorKind, Event, GenerateRequest};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A generation waiting for a place in the batch.
pub(crate) struct Waiting {
    pub id: u64,
    pub req: Box<GenerateRequest>,
    pub slot: Slot,
    pub cancel: Arc<AtomicBool>,
    pub events: mpsc::Sender<Event>,
    /// Switches queued before this request: it runs on the checkpoint of that many switches.
    epoch: u64,
    /// The last position told to the client.
    told: Option<usize>,
}

/// A queued checkpoint switch, and everyone who asked for it.
pub(crate) struct Load {
    pub name: String,
    pub listeners: Vec<mpsc::Sender<Event>>,
}

#[derive(Default)]
pub(crate) struct Queue {
    /// Switches that may wait at once.
    max_switches: usize,
    /// Each client's waiting requests, oldest first.
    clients: HashMap<String, VecDeque<Waiting>>,
    /// Clients with waiting requests, in the order they get the next free place.
    rotation: VecDeque<String>,
    loads: VecDeque<Load>,
    loads_received: u64,
    loads_done: u64,
    /// Average wall time of a generation (for the waiting clients' ETA).
    avg_job_ms: Option<f64>,
    /// `Shutdown` was received.
    pub shutting_down: bool,
}

impl Queue {
    pub fn new(max_switches: usize) -> Self {
        Self {
            max_switches: max_switches.max(1),
            ..Self::default()
        }
    }

    pub fn record_job_time(&mut self, ms: f64) {
        self.avg_job_ms = Some(match self.avg_job_ms {
            Some(avg) => 0.7 * avg + 0.3 * ms,
            None => ms,
        });
    }

    /// Whether anything waits (a request or a switch).
    pub fn is_empty(&self) -> bool {
        self.rotation.is_empty() && self.loads.is_empty()
    }

    /// Takes one command (all but `Shutdown`'s effect on the running batch).
    pub fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Generate {
                id,
                req,
                slot,
                cancel,
                events,
            } => {
                if self.shutting_down {
                    let _ = events.try_send(shutting_down());
                    return;
                }
                let client = slot.client().to_string();
                let waiting = self.clients.entry(client.clone()).or_default();
                if waiting.is_empty() {
                    self.rotation.push_back(client);
                }
                waiting.push_back(Waiting {
                    id,
                    req,
                    slot,
                    cancel,
                    events,
                    epoch: self.loads_received,
                    told: None,
                });
            }
            Command::Load { name, events } => self.accept_load(name, events),
            Command::Shutdown => {
                self.shutting_down = true;
                for (_, jobs) in self.clients.drain() {
                    for job in jobs {
                        let _ = job.events.try_send(shutting_down());
                    }
                }
                self.rotation.clear();
                for load in self.loads.drain(..) {
                    for events in load.listeners {
                        let _ = events.try_send(shutting_down());
                    }
                }
            }
            Command::Cancel { id } => {
                let mut emptied = None;
                for (client, jobs) in self.clients.iter_mut() {
                    if let Some(i) = jobs.iter().position(|j| j.id == id) {
                        if let Some(job) = jobs.remove(i) {
                            let _ = job.events.try_send(cancelled_done(""));
                        }
                        if jobs.is_empty() {
                            emptied = Some(client.clone());
                        }
                        break;
                    }
                }
                if let Some(client) = emptied {
                    self.forget(&client);
                }
            }
        }
    }

    /// Queues a switch: merged into the last queued one when it goes to the same checkpoint (the
    /// requests queued in between run on it as they would have), refused past the cap.
    fn accept_load(&mut self, name: String, events: mpsc::Sender<Event>) {
        if self.shutting_down {
            let _ = events.try_send(shutting_down());
            return;
        }
        if let Some(last) = self.loads.back_mut().filter(|l| l.name == name) {
            last.listeners.push(events);
            return;
        }
        if self.loads.len() >= self.max_switches {
            let message = format!(
                "the server is busy: {} checkpoint switches are waiting (the limit is {}); \
                 try again in a minute",
                self.loads.len(),
                self.max_switches
            );
            let _ = events.try_send(Event::error(ErrorKind::Busy, message));
            return;
        }
        self.loads_received += 1;
        self.loads.push_back(Load {
            name,
            listeners: vec![events],
        });
    }

    fn forget(&mut self, client: &str) {
        self.clients.remove(client);
        self.rotation.retain(|c| c != client);
    }

    /// The next request that may start now: the first client in the rotation whose oldest request
    /// belongs to the current checkpoint and who is not `full` (running its most already); that
    /// client moves to the back.
    pub fn next_job(&mut self, full: impl Fn(&str) -> bool) -> Option<Waiting> {
        let at = self.rotation.iter().position(|c| {
            !full(c)
                && self
                    .clients
                    .get(c)
                    .and_then(|jobs| jobs.front())
                    .is_some_and(|j| j.epoch == self.loads_done)
        })?;
        let client = self.rotation.remove(at)?;
        let jobs = self.clients.get_mut(&client)?;
        let job = jobs.pop_front();
        if jobs.is_empty() {
            self.clients.remove(&client);
        } else {
            self.rotation.push_back(client);
        }
        job
    }

    /// The next switch, once every request queued before it has started (the caller runs it when
    /// the batch is empty too).
    pub fn next_load(&mut self) -> Option<Load> {
        let current_left = self
            .clients
            .values()
            .any(|jobs| jobs.front().is_some_and(|j| j.epoch == self.loads_done));
        if current_left {
            return None;
        }
        let load = self.loads.pop_front()?;
        self.loads_done += 1;
        Some(load)
    }

    /// Tells each waiting request its position when it changed: the requests that start before it,
    /// less the places free now (`free`), as one place frees every `avg / max_batch` on average.
    /// Drops the requests whose client is gone.
    pub fn announce(&mut self, free: usize, max_batch: usize) {
        // Round-robin order: by checkpoint, then by round (a client's n-th request), then rotation.
        let mut order: Vec<(u64, usize, usize, String)> = Vec::new();
        for (turn, client) in self.rotation.iter().enumerate() {
            if let Some(jobs) = self.clients.get(client) {
                for (round, job) in jobs.iter().enumerate() {
                    order.push((job.epoch, round, turn, client.clone()));
                }
            }
        }
        order.sort();
        let avg = self.avg_job_ms;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut gone = Vec::new();
        for (ahead, (_, _, _, client)) in order.iter().enumerate() {
            let i = index.entry(client.clone()).or_default();
            let Some(job) = self.clients.get_mut(client).and_then(|j| j.get_mut(*i)) else {
                continue;
            };
            *i += 1;
            let position = (ahead + 1).saturating_sub(free);
            if job.told == Some(position) {
                continue;
            }
            let eta_ms = avg.map(|ms| (ms * position as f64 / max_batch.max(1) as f64) as u64);
            if job.events.is_closed()
                || job
                    .events
                    .try_send(Event::Queued { position, eta_ms })
                    .is_err()
            {
                gone.push(job.id);
            } else {
                job.told = Some(position);
            }
        }
        for id in gone {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        let mut emptied = None;
        for (client, jobs) in self.clients.iter_mut() {
            jobs.retain(|j| j.id != id);
            if jobs.is_empty() {
                emptied = Some(client.clone());
            }
        }
        if let Some(client) = emptied {
            self.forget(&client);
        }
    }
}
