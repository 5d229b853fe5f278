//! Streaming sends each piece when the engine produces it (the seed's server only started
//! after the whole answer), and a request the engine refuses gets an HTTP error status.

mod openai_support;

use app::backend::{Backend, CancelHandle, Generation};
use cogvlm::remote::{RemoteBackend, RemoteConfig};
use futures::StreamExt;
use openai_support::{serve, start_local};
use protocol::{CheckpointInfo, Event, GenerateRequest, ModelKind, ModelsState, Stats};
use protocol::{PromptVersion, StopReason};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Sends three pieces, then waits for the test's go-ahead before the fourth and `Done`.
struct Gated {
    gate: Mutex<Option<oneshot::Receiver<()>>>,
    cancelled: Arc<AtomicBool>,
}

impl Gated {
    fn new(gate: oneshot::Receiver<()>) -> Self {
        Self {
            gate: Mutex::new(Some(gate)),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Backend for Gated {
    fn models(&self) -> ModelsState {
        ModelsState {
            checkpoints: vec![CheckpointInfo {
                name: "gated".into(),
                kind: ModelKind::CogVlm,
                image_size: 490,
                default_version: PromptVersion::Chat,
                bundled: true,
            }],
            current: Some("gated".into()),
            ..Default::default()
        }
    }

    fn generate(&self, _req: GenerateRequest, _client: &str) -> Generation {
        let (tx, rx) = mpsc::channel(16);
        let gate = self.gate.lock().unwrap().take().expect("one request");
        tokio::spawn(async move {
            for piece in ["a", "b", "c"] {
                let _ = tx.send(Event::Token { text: piece.into() }).await;
            }
            let _ = gate.await;
            let _ = tx.send(Event::Token { text: "d".into() }).await;
            let stats = Stats {
                checkpoint: "gated".into(),
                prompt_tokens: 5,
                reused_tokens: 0,
                dropped_turns: 0,
                context: 0,
                generated_tokens: 4,
                prefill_ms: 1.0,
                ttft_ms: 1.0,
                tokens_per_s: 1.0,
                stop: StopReason::Eos,
            };
            let _ = tx.send(Event::Done { stats }).await;
        });
        let cancelled = self.cancelled.clone();
        Generation {
            events: rx,
            cancel: CancelHandle::new(move || cancelled.store(true, Ordering::SeqCst)),
        }
    }

    fn load(&self, _name: String) -> mpsc::Receiver<Event> {
        mpsc::channel(1).1
    }
}

/// The `data:` payloads of the complete SSE events in `buf` (removed from it).
fn payloads(buf: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let event: String = buf.drain(..end + 2).collect();
        out.extend(
            event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(String::from),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_while_the_answer_is_being_generated() {
    let (release, gate) = oneshot::channel();
    let addr = serve(Arc::new(Gated::new(gate))).await;
    // As a browser would ask: the server compresses other responses, never an event stream
    // (a compressor would hold the pieces back).
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("accept-encoding", "br, gzip")
        .json(&json!({"model": "gated", "stream": true,
                      "messages": [{"role": "user", "content": "q"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(response.headers().get("content-encoding").is_none());
    let mut body = response.bytes_stream();
    let mut buf = String::new();
    let mut data = Vec::new();
    let mut release = Some(release);
    while data.last().map(String::as_str) != Some("[DONE]") {
        let next = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first pieces must arrive before the answer is complete")
            .expect("the stream ended before [DONE]")
            .unwrap();
        buf.push_str(std::str::from_utf8(&next).unwrap());
        data.extend(payloads(&mut buf));
        // Role chunk + "a", "b", "c" received while the engine still holds "d" back.
        if data.len() >= 4 {
            if let Some(r) = release.take() {
                let _ = r.send(());
            }
        }
    }
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    let text: Vec<&str> = deltas[1..]
        .iter()
        .filter_map(|d| d["content"].as_str())
        .collect();
    assert_eq!(text, ["a", "b", "c", "d"]);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    // Without stream_options.include_usage no usage chunk is sent.
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_refusal_is_an_http_error_streaming_or_not() {
    let addr = start_local().await;
    let client = reqwest::Client::new();
    for stream in [false, true] {
        // CogAgent cannot answer without an image: the engine says so before any token.
        let response = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(
                &json!({"model": "cogagent_tiny", "stream": stream, "temperature": 0,
                          "messages": [{"role": "user", "content": "Where is the button?"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "stream: {stream}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("CogAgent needs an image"),
            "{body}"
        );
    }
    // A body not sent as JSON (a cross-site form or text/plain post looks like this): 415.
    let response = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // A body sent as JSON that is not JSON.
    let response = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("the body is not a valid chat completion request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_remote_answer_closes_the_stream_and_stops_the_upstream_engine() {
    let (_release, gate) = oneshot::channel();
    let upstream = Arc::new(Gated::new(gate));
    let addr = serve(upstream.clone()).await;
    let remote = RemoteBackend::new(RemoteConfig {
        endpoint: format!("http://{addr}"),
        api_key: None,
        model: "gated".into(),
    })
    .unwrap();
    let req = GenerateRequest {
        image: None,
        history: vec![],
        query: "q".into(),
        version: None,
        sampling: Default::default(),
    };
    let mut generation = remote.generate(req, "test");
    let mut texts = Vec::new();
    let within = Duration::from_secs(10);
    while texts.len() < 3 {
        match tokio::time::timeout(within, generation.events.recv()).await {
            Ok(Some(Event::Token { text })) => texts.push(text),
            Ok(Some(Event::Started { .. })) => {}
            other => panic!("expected tokens, got {other:?}"),
        }
    }
    assert_eq!(texts, ["a", "b", "c"]);
    // The upstream holds the rest back: only the cancel can end this answer.
    generation.cancel.cancel();
    let end = tokio::time::timeout(within, generation.events.recv()).await;
    let Ok(Some(Event::Done { stats })) = end else {
        panic!("expected Done, got {end:?}");
    };
    assert_eq!(
        (stats.stop, stats.generated_tokens),
        (StopReason::Cancelled, 3)
    );
    // The closed HTTP stream reaches the upstream server, which cancels its generation.
    tokio::time::timeout(within, async {
        while !upstream.cancelled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the upstream generation was not cancelled");
}
