//! One generation as the API sees it: engine events → answer text (with `stop` sequences
//! applied) → a finish reason and the engine's counts.

use super::error::ApiError;
use super::stop::{Step, StopMatcher};
use app::backend::{Backend, Generation};
use protocol::{Event, GenerateRequest, Stats, StopReason};
use std::collections::VecDeque;

/// What the handlers turn into JSON.
#[derive(Debug)]
pub enum Out {
    Text(String),
    Finished {
        /// OpenAI's `finish_reason`: `stop` (end of answer or a stop sequence) or `length`.
        reason: &'static str,
        stats: Stats,
    },
    Failed(ApiError),
}

pub struct Run {
    generation: Generation,
    matcher: StopMatcher,
    /// A stop sequence was seen: the rest of the text is dropped.
    stopped: bool,
    pending: VecDeque<Out>,
    finished: bool,
}

impl Run {
    /// Queues the request behind the page's requests (the one place the API asks the engine
    /// to generate, so that per-client limits can wrap it).
    pub fn start(
        backend: &dyn Backend,
        req: GenerateRequest,
        client: &str,
        stops: Vec<String>,
    ) -> Self {
        Self {
            generation: backend.generate(req, client),
            matcher: StopMatcher::new(stops),
            stopped: false,
            pending: VecDeque::new(),
            finished: false,
        }
    }

    /// The next non-empty text, then one `Finished` or `Failed`, then `None`.
    pub async fn next(&mut self) -> Option<Out> {
        loop {
            if let Some(out) = self.pending.pop_front() {
                return Some(out);
            }
            if self.finished {
                return None;
            }
            let Some(event) = self.generation.events.recv().await else {
                self.finished = true;
                return Some(Out::Failed(ApiError::internal(
                    "the engine stopped before finishing the answer",
                )));
            };
            match event {
                Event::Token { text } if !self.stopped => match self.matcher.push(&text) {
                    Step::Emit(t) => self.text(t),
                    Step::Stop(t) => {
                        self.text(t);
                        self.stopped = true;
                        // The engine answers the cancel with `Done`, which carries the counts.
                        self.generation.cancel.cancel();
                    }
                },
                Event::Done { stats } => {
                    self.finished = true;
                    if !self.stopped {
                        let rest = self.matcher.finish();
                        self.text(rest);
                    }
                    let reason = match stats.stop {
                        StopReason::Length if !self.stopped => "length",
                        _ => "stop",
                    };
                    self.pending.push_back(Out::Finished { reason, stats });
                }
                Event::Error { kind, message } => {
                    self.finished = true;
                    self.pending
                        .push_back(Out::Failed(ApiError::from_engine(kind, message)));
                }
                _ => {} // queue position, start, load events
            }
        }
    }

    fn text(&mut self, t: String) {
        if !t.is_empty() {
            self.pending.push_back(Out::Text(t));
        }
    }
}

impl Drop for Run {
    /// A client that hangs up stops its generation (queued or running).
    fn drop(&mut self) {
        if !self.finished {
            self.generation.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::backend::CancelHandle;
    use protocol::ModelsState;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    /// Replays fixed events; records whether it was cancelled.
    struct Scripted {
        events: Mutex<Vec<Event>>,
        cancelled: Arc<AtomicBool>,
    }

    impl Backend for Scripted {
        fn models(&self) -> ModelsState {
            ModelsState::default()
        }
        fn generate(&self, _req: GenerateRequest, _client: &str) -> Generation {
            let (tx, rx) = mpsc::channel(64);
            for e in self.events.lock().unwrap().drain(..) {
                tx.try_send(e).unwrap();
            }
            let flag = self.cancelled.clone();
            Generation {
                events: rx,
                cancel: CancelHandle::new(move || flag.store(true, Ordering::SeqCst)),
            }
        }
        fn load(&self, _name: String) -> mpsc::Receiver<Event> {
            mpsc::channel(1).1
        }
    }

    fn stats(stop: StopReason, generated: usize) -> Stats {
        Stats {
            checkpoint: "m".into(),
            prompt_tokens: 10,
            reused_tokens: 0,
            dropped_turns: 0,
            context: 0,
            generated_tokens: generated,
            prefill_ms: 1.0,
            ttft_ms: 1.0,
            tokens_per_s: 1.0,
            stop,
        }
    }

    async fn collect(events: Vec<Event>, stops: &[&str]) -> (Vec<String>, String, bool) {
        let backend = Scripted {
            events: Mutex::new(events),
            cancelled: Arc::new(AtomicBool::new(false)),
        };
        let req = GenerateRequest {
            image: None,
            history: vec![],
            query: "q".into(),
            version: None,
            sampling: Default::default(),
        };
        let mut run = Run::start(
            &backend,
            req,
            "test",
            stops.iter().map(|s| s.to_string()).collect(),
        );
        let mut texts = Vec::new();
        let mut end = String::new();
        while let Some(out) = run.next().await {
            match out {
                Out::Text(t) => texts.push(t),
                Out::Finished { reason, .. } => end = reason.into(),
                Out::Failed(e) => end = format!("error {}", e.status.as_u16()),
            }
        }
        (texts, end, backend.cancelled.load(Ordering::SeqCst))
    }

    fn tok(t: &str) -> Event {
        Event::Token { text: t.into() }
    }

    #[tokio::test]
    async fn stop_sequence_cuts_and_cancels() {
        let events = vec![
            Event::Started {
                checkpoint: "m".into(),
            },
            tok("one "),
            tok("two."),
            tok(" three"),
            Event::Done {
                stats: stats(StopReason::Cancelled, 3),
            },
        ];
        let (texts, end, cancelled) = collect(events, &["."]).await;
        assert_eq!(texts, vec!["one ", "two"]);
        assert_eq!(end, "stop");
        assert!(cancelled);
    }

    #[tokio::test]
    async fn length_and_errors_map_to_openai() {
        let (texts, end, cancelled) = collect(
            vec![
                tok("a"),
                Event::Done {
                    stats: stats(StopReason::Length, 1),
                },
            ],
            &[],
        )
        .await;
        assert_eq!(
            (texts, end.as_str(), cancelled),
            (vec!["a".into()], "length", false)
        );
        let (_, end, _) = collect(
            vec![Event::error(
                protocol::ErrorKind::BadInput,
                "the prompt takes 3000 positions",
            )],
            &[],
        )
        .await;
        assert_eq!(end, "error 400");
        // A channel closed without a final event is a server error, not a hang.
        let (_, end, _) = collect(vec![tok("a")], &[]).await;
        assert_eq!(end, "error 500");
    }
}
