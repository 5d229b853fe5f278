//! The worker's loop (continuous batching): each turn takes new commands, starts at most one waiting request
//! (its image encoding runs between two decode steps, then its prefill one chunk per turn, so the running answers
//! keep flowing: `--prefill-chunk` bounds their pause), lets every running sequence choose its next token with its
//! own sampler, and runs all the chosen tokens through the model in one batched decode step
//! ([`Pipeline::step`](crate::generate::Pipeline::step)). A sequence that finishes, fails or is cancelled leaves
//! the batch at once, its cache kept for its client's next question.

use super::batch::{Active, Outbox};
use super::command::{cancelled_done, Command};
use super::queue::Waiting;
use super::worker::{classify, panic_message, to_chat_request, Worker};
use crate::generate::Sequence;
use protocol::{Error, ErrorKind, Event};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

impl Worker {
    pub(crate) fn run(mut self) {
        loop {
            let idle = self.batch.active.is_empty() && self.batch.draining.is_empty();
            if idle && self.queue.is_empty() {
                match self.rx.recv() {
                    Ok(cmd) => self.take(cmd),
                    Err(_) => return, // every handle is gone
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                self.take(cmd);
            }
            if self.queue.shutting_down {
                self.stop_all();
                return;
            }
            if !self.tick() {
                // Every running answer waits for its client to read: wait for them, or a command.
                match self.rx.recv_timeout(Duration::from_millis(2)) {
                    Ok(cmd) => self.take(cmd),
                    Err(RecvTimeoutError::Disconnected) if self.batch.active.is_empty() => return,
                    Err(_) => {}
                }
            }
        }
    }

    /// Whether the switch cooldown since the last switch has passed.
    fn cooled_down(&self) -> bool {
        self.last_switch
            .is_none_or(|at| at.elapsed() >= self.switch_cooldown)
    }

    fn take(&mut self, cmd: Command) {
        let announce = matches!(cmd, Command::Generate { .. } | Command::Cancel { .. });
        self.queue.accept(cmd);
        if announce {
            self.announce();
        }
    }

    fn announce(&mut self) {
        let free = self.batch.max.saturating_sub(self.batch.active.len());
        self.queue.announce(free, self.batch.max);
    }

    /// One turn of the loop; `false` when nothing could move.
    fn tick(&mut self) -> bool {
        #[cfg(feature = "test-hooks")]
        if self
            .shared
            .lock()
            .is_ok_and(|mut s| std::mem::take(&mut s.panic_loop))
        {
            panic!("test-only injected panic in the worker's loop");
        }
        let mut moved = false;
        self.batch.draining.retain_mut(|out| {
            let before = out.pending.len();
            let keep = out.flush() && out.is_blocked();
            moved |= out.pending.len() != before;
            keep
        });
        // Cancelled, or the client is gone.
        for a in self.batch.active.iter_mut() {
            let gone = !a.out.flush() || a.cancel.load(Ordering::SeqCst);
            if gone && !a.seq.is_finished() {
                a.seq.cancel();
            }
        }
        moved |= self.retire_finished();
        // One prompt at a time is prefilled, one chunk a turn: a new one starts when the last is in.
        let prefilling = self.batch.prefilling();
        if prefilling {
            moved |= self.prefill_chunk();
        } else if self.batch.active.len() < self.batch.max {
            let batch = &self.batch;
            if let Some(job) = self.queue.next_job(|client| batch.runs_its_most(client)) {
                self.start(job);
                self.announce();
                moved = true;
            } else if self.batch.active.is_empty() && self.cooled_down() {
                if let Some(load) = self.queue.next_load() {
                    self.set_shared(|s| s.busy = true);
                    self.load(&load.name, &load.listeners);
                    self.last_switch = Some(Instant::now());
                    self.announce();
                    moved = true;
                }
            }
        }
        // Each sequence chooses its next token, with its own settings and random stream.
        let mut failed = Vec::new();
        for (i, a) in self.batch.active.iter_mut().enumerate() {
            if a.out.is_blocked() || !a.seq.is_ready() {
                continue;
            }
            moved = true;
            match a.seq.sample() {
                Ok(Some(piece)) if !piece.is_empty() => {
                    a.out.push(Event::Token { text: piece });
                    a.out.flush();
                }
                Ok(_) => {}
                Err(e) => failed.push((i, classify(&e))),
            }
        }
        self.fail(failed);
        moved |= self.retire_finished();
        moved |= self.decode_step();
        let busy = !self.batch.active.is_empty();
        self.set_shared(|s| s.busy = busy);
        moved
    }

    /// Runs the tokens just chosen through the model, as one batch.
    fn decode_step(&mut self) -> bool {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return false;
        };
        let stepped: Vec<usize> = (0..self.batch.active.len())
            .filter(|&i| self.batch.active[i].seq.has_token())
            .collect();
        if stepped.is_empty() {
            return false;
        }
        let mut seqs: Vec<&mut Sequence> = self
            .batch
            .active
            .iter_mut()
            .map(|a| &mut a.seq)
            .filter(|s| s.has_token())
            .collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| pipeline.step(&mut seqs)));
        let error = match outcome {
            Ok(Ok(())) => {
                if let Ok(mut s) = self.shared.lock() {
                    s.largest_batch = s.largest_batch.max(stepped.len());
                }
                return true;
            }
            Ok(Err(e)) => classify(&e),
            Err(panic) => after_panic(panic.as_ref(), pipeline),
        };
        // A failed step leaves the caches in it half-written: its sequences end.
        self.fail(stepped.into_iter().map(|i| (i, error.clone())).collect());
        true
    }

    /// The next chunk of the prompt being prefilled.
    fn prefill_chunk(&mut self) -> bool {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return false;
        };
        let Some(i) = self.batch.active.iter().position(|a| a.seq.is_prefilling()) else {
            return false;
        };
        let seq = &mut self.batch.active[i].seq;
        let error = match catch_unwind(AssertUnwindSafe(|| pipeline.prefill_step(seq))) {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => classify(&e),
            Err(panic) => after_panic(panic.as_ref(), pipeline),
        };
        self.fail(vec![(i, error)]);
        true
    }

    /// Starts a waiting request: its image encoding (and its whole prefill when not chunked), then it
    /// joins the batch.
    fn start(&mut self, job: Waiting) {
        let Waiting {
            req,
            slot,
            cancel,
            events,
            ..
        } = job;
        let checkpoint = self
            .current
            .as_ref()
            .map(|e| e.name().to_string())
            .unwrap_or_default();
        let mut out = Outbox::new(events);
        if cancel.load(Ordering::SeqCst) || out.events.is_closed() {
            drop(slot);
            out.push(cancelled_done(&checkpoint));
            self.drain(out);
            return;
        }
        let panic_now = self.injected_panic();
        if self.pipeline.is_none() {
            let loading = self.shared.lock().ok().and_then(|s| s.load_error.clone());
            drop(slot);
            out.push(Event::error(
                ErrorKind::NoModel,
                format!(
                    "no model is loaded{}",
                    loading
                        .map(|e| format!(" (the last load failed: {e})"))
                        .unwrap_or_default()
                ),
            ));
            self.drain(out);
            return;
        }
        out.push(Event::Started {
            checkpoint: checkpoint.clone(),
        });
        out.flush();
        self.set_shared(|s| s.busy = true);
        let limits = self.limits.clone();
        let client = slot.client().to_string();
        // A bug in one request must not take the server down: report it, drop what the job may have
        // left half-done, and go on.
        let Some(pipeline) = self.pipeline.as_mut() else {
            return;
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if panic_now {
                panic!("test-only injected panic");
            }
            let chat = to_chat_request(&req, &limits)?;
            pipeline.begin_for(&client, &chat)
        }));
        let error = match outcome {
            Ok(Ok(seq)) => {
                out.flush();
                self.batch.active.push(Active {
                    seq,
                    slot,
                    cancel,
                    out,
                    started: Instant::now(),
                });
                return;
            }
            Ok(Err(e)) => classify(&e),
            Err(panic) => after_panic(panic.as_ref(), pipeline),
        };
        log_failure(&client, &error);
        drop(slot);
        out.push(error.into());
        self.drain(out);
    }

    /// Ends the sequences at `failed` (indices into the batch) with their error.
    /// Whether the test hook asked this job to panic (never, without feature `test-hooks`).
    fn injected_panic(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self
            .shared
            .lock()
            .map(|mut s| std::mem::take(&mut s.panic_next))
            .unwrap_or(false);
        #[cfg(not(feature = "test-hooks"))]
        false
    }

    fn fail(&mut self, mut failed: Vec<(usize, Error)>) {
        failed.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, error) in failed {
            let a = self.batch.active.remove(i);
            let (mut seq, mut out) = (a.seq, a.out);
            // The text held back so far still arrives, before the error.
            if let Some(rest) = seq.rest().filter(|r| !r.is_empty()) {
                out.push(Event::Token { text: rest });
            }
            drop(seq);
            log_failure(a.slot.client(), &error);
            drop(a.slot);
            out.push(error.into());
            self.drain(out);
        }
    }

    /// Removes the finished sequences from the batch: their cache is kept for their client's next
    /// question, their place freed, then `Done` sent.
    fn retire_finished(&mut self) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.batch.active.len() {
            if !self.batch.active[i].seq.is_finished() {
                i += 1;
                continue;
            }
            moved = true;
            let a = self.batch.active.remove(i);
            let Active {
                mut seq,
                slot,
                mut out,
                started,
                ..
            } = a;
            if let Some(rest) = seq.rest().filter(|r| !r.is_empty()) {
                out.push(Event::Token { text: rest });
            }
            if let Some(p) = self.pipeline.as_mut() {
                let answer = p.finish(seq);
                log_answer(slot.client(), &answer.stats);
                out.push(Event::Done {
                    stats: answer.stats,
                });
            }
            self.queue
                .record_job_time(started.elapsed().as_secs_f64() * 1e3);
            // Free the client's place before it hears the end, so that its next request is
            // never refused for a place that is about to be free.
            drop(slot);
            self.drain(out);
        }
        moved
    }

    fn drain(&mut self, mut out: Outbox) {
        if out.flush() && out.is_blocked() {
            self.batch.draining.push(out);
        }
    }

    /// Ctrl-C: the running answers end as cancelled, the waiting ones were told the server stops.
    fn stop_all(&mut self) {
        for a in self.batch.active.iter_mut() {
            a.seq.cancel();
        }
        self.retire_finished();
        for out in self.batch.draining.iter_mut() {
            out.flush_blocking();
        }
        self.batch.draining.clear();
        self.set_shared(|s| s.busy = false);
    }
}

fn recovered(what: &str) -> Error {
    Error::internal(format!(
        "internal error in the model worker ({what}); it recovered: please try again"
    ))
}

/// The error text for a job that panicked; the pipeline drops its image encoding, which the panic may have left
/// half made.
fn after_panic(
    panic: &(dyn std::any::Any + Send),
    pipeline: &mut crate::generate::Pipeline,
) -> Error {
    let what = panic_message(panic);
    tracing::error!("the model worker recovered from a panic: {what}");
    pipeline.forget_image();
    recovered(&what)
}

/// The one log line of an answer (`RUST_LOG` filters it; target `cogvlm::engine::batch`).
fn log_answer(client: &str, s: &protocol::Stats) {
    tracing::info!(
        client,
        checkpoint = %s.checkpoint,
        prompt_tokens = s.prompt_tokens,
        reused_tokens = s.reused_tokens,
        generated_tokens = s.generated_tokens,
        ttft_ms = %format!("{:.0}", s.ttft_ms),
        tok_s = %format!("{:.1}", s.tokens_per_s),
        stop = s.stop.label(),
        "answer"
    );
}

/// The log line of a request that failed after it was admitted.
pub(crate) fn log_failure(client: &str, e: &Error) {
    tracing::warn!(client, kind = ?e.kind, "request failed: {}", e.message);
}
