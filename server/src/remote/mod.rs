//! A remote OpenAI-compatible server (lmdeploy, TensorRT-LLM, vLLM, another `cogvlm serve`)
//! as the page's [`Backend`]: every generation is a streaming chat completion, its chunks
//! become `Token` events, and the stats are measured here (time to first token, tokens/s).

pub mod cli;
mod sse;

use crate::engine::admission::Admission;
use crate::engine::limits::check_request;
use crate::engine::{Fairness, Limits};
use app::backend::{Backend, CancelHandle, Generation};
use protocol::openai::{
    ChatCompletionChunk, ChatCompletionRequest, Content, ImageUrl, Message, Part, StreamOptions,
};
use protocol::{
    CheckpointInfo, Error, ErrorKind, Event, GenerateRequest, ModelKind, ModelsState,
    PromptVersion, Stats, StopReason,
};
use serde_json::Value;
use sse::DataLines;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Where answers come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// This machine's model worker.
    #[default]
    Local,
    /// A remote OpenAI-compatible server.
    Openai,
}

/// The backend flags of `cogvlm serve` and `cogvlm chat` (both also take `--model`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BackendArgs {
    /// local (this machine) or openai (a remote OpenAI-compatible server: --endpoint, --model)
    #[arg(long, value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// With --backend openai: the API base URL, e.g. http://gpu-box:23333/v1
    #[arg(long)]
    pub endpoint: Option<String>,
    /// With --backend openai: sent as `Authorization: Bearer <key>`.
    #[arg(long)]
    pub api_key: Option<String>,
}

impl BackendArgs {
    /// True when no remote flag is given (the local worker answers).
    pub fn is_local(&self) -> bool {
        self.backend == BackendKind::Local && self.endpoint.is_none() && self.api_key.is_none()
    }

    /// The remote configuration for `--backend openai` (`model`: the `--model` flag), `None`
    /// for the local worker.
    pub fn remote(&self, model: Option<String>) -> anyhow::Result<Option<RemoteConfig>> {
        match self.backend {
            BackendKind::Local => {
                if self.endpoint.is_some() || self.api_key.is_some() {
                    anyhow::bail!("--endpoint and --api-key need --backend openai");
                }
                Ok(None)
            }
            BackendKind::Openai => Ok(Some(RemoteConfig {
                endpoint: self.endpoint.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--backend openai needs --endpoint URL (e.g. http://host:23333/v1)"
                    )
                })?,
                api_key: self.api_key.clone(),
                model: model.filter(|m| !m.is_empty()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--backend openai needs --model NAME (the remote server's model name)"
                    )
                })?,
            })),
        }
    }
}

/// `--backend openai --endpoint URL [--api-key K] --model NAME`.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// The API base, e.g. `http://host:23333/v1` (`/v1` is added when the URL has no path).
    pub endpoint: String,
    pub api_key: Option<String>,
    /// The model name the remote server knows.
    pub model: String,
}

pub struct RemoteBackend {
    config: RemoteConfig,
    /// `<endpoint>/chat/completions`.
    url: reqwest::Url,
    client: reqwest::Client,
    /// The local engine's checks and queue rules, applied before any upstream call: token
    /// holders must not get unlimited calls on the operator's key.
    limits: Limits,
    admission: Arc<Admission>,
    timeout: Duration,
}

/// The longest one upstream answer may take, start to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Capacity of a request's event channel (as the local worker's).
const EVENT_BUFFER: usize = 256;

impl RemoteBackend {
    pub fn new(config: RemoteConfig) -> anyhow::Result<Self> {
        let mut base = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| anyhow::anyhow!("--endpoint {:?} is not a URL: {e}", config.endpoint))?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("--endpoint {:?} must be an http:// URL", config.endpoint);
        }
        if base.path() == "/" || base.path().is_empty() {
            base.set_path("/v1");
        }
        let url = reqwest::Url::parse(&format!(
            "{}/chat/completions",
            base.as_str().trim_end_matches('/')
        ))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            config,
            url,
            client,
            limits: Limits::default(),
            admission: Admission::new(Fairness::default()),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The request limits, queue rules and per-request timeout to apply.
    pub fn with_rules(mut self, limits: Limits, fairness: Fairness, timeout: Duration) -> Self {
        self.limits = limits;
        self.admission = Admission::new(fairness);
        self.timeout = timeout;
        self
    }

    fn checkpoint(&self) -> CheckpointInfo {
        let name = self.config.model.to_ascii_lowercase();
        // The upstream has no config to read: the family follows THUDM's names.
        let (kind, image_size) = if name.contains("cogvlm2") {
            (ModelKind::CogVlm2, 1344)
        } else if name.contains("agent") {
            (ModelKind::CogAgent, 1120)
        } else if name.contains("224") {
            (ModelKind::CogVlm, 224)
        } else {
            (ModelKind::CogVlm, 490)
        };
        CheckpointInfo {
            name: self.config.model.clone(),
            kind,
            image_size,
            default_version: PromptVersion::Chat,
            bundled: false,
        }
    }
}

impl Backend for RemoteBackend {
    fn models(&self) -> ModelsState {
        ModelsState {
            checkpoints: vec![self.checkpoint()],
            current: Some(self.config.model.clone()),
            models_dir: self.config.endpoint.clone(),
            device: format!("remote: {}", self.config.endpoint),
            ..Default::default()
        }
    }

    // Checked and admitted here as the local engine would; `client` is not forwarded.
    fn generate(&self, req: GenerateRequest, client: &str) -> Generation {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let stop = Arc::new(Notify::new());
        let cancel = {
            let stop = stop.clone();
            CancelHandle::new(move || stop.notify_one())
        };
        let admitted = check_request(&req, &self.limits)
            .map_err(|e| Error::bad_input(format!("{e:#}")))
            .and_then(|_| self.admission.admit(client));
        let slot = match admitted {
            Ok(slot) => slot,
            Err(e) => {
                let _ = tx.try_send(e.into());
                return Generation { events: rx, cancel };
            }
        };
        let timeout = self.timeout;
        let call = Call {
            request: self
                .client
                .post(self.url.clone())
                .json(&request_body(&self.config.model, &req)),
            api_key: self.config.api_key.clone(),
            model: self.config.model.clone(),
            events: tx.clone(),
        };
        let model = self.config.model.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    // The queue place is held until the answer ends.
                    let _slot = slot;
                    let mut meter = Meter::new();
                    tokio::select! {
                        _ = call.run(&mut meter) => {}
                        _ = tokio::time::sleep(timeout) => {
                            let message = format!(
                                "the remote server did not finish the answer within {} s",
                                timeout.as_secs()
                            );
                            let _ = tx.send(Event::error(ErrorKind::Upstream, message)).await;
                        }
                        _ = stop.notified() => {
                            // Dropping the request future closed the HTTP stream.
                            let stats = meter.stats(&model, StopReason::Cancelled);
                            let _ = tx.send(Event::Done { stats }).await;
                        }
                    }
                });
            }
            Err(_) => {
                let _ = tx.try_send(Event::error(
                    ErrorKind::Internal,
                    "the remote backend needs an async runtime",
                ));
            }
        }
        Generation { events: rx, cancel }
    }

    fn load(&self, name: String) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(1);
        let event = if name == self.config.model {
            Event::Loaded {
                checkpoint: self.checkpoint(),
            }
        } else {
            Event::error(
                ErrorKind::BadInput,
                format!(
                    "the remote backend serves one model ({}); restart with another --model",
                    self.config.model
                ),
            )
        };
        let _ = tx.try_send(event);
        rx
    }
}

/// The OpenAI request for one generation: the history as user/assistant turns, the image (as
/// a data URL) in the first user message, streaming with usage. The extensions (`top_k`,
/// `repetition_penalty`) and the limits are sent only when they matter, since a strict server refuses
/// unknown fields.
fn request_body(model: &str, req: &GenerateRequest) -> ChatCompletionRequest {
    let mut messages = Vec::new();
    let questions = req
        .history
        .iter()
        .map(|(q, a)| (q, Some(a)))
        .chain(std::iter::once((&req.query, None)));
    for (i, (question, answer)) in questions.enumerate() {
        let content = match (&req.image, i) {
            (Some(img), 0) => Content::Parts(vec![
                Part::Text {
                    text: question.clone(),
                },
                Part::ImageUrl {
                    image_url: ImageUrl::Object {
                        url: data_url(&img.bytes),
                    },
                },
            ]),
            _ => Content::Text(question.clone()),
        };
        messages.push(Message::new("user", content));
        if let Some(a) = answer {
            messages.push(Message::new("assistant", Content::Text(a.clone())));
        }
    }
    let s = &req.sampling;
    ChatCompletionRequest {
        model: model.into(),
        messages,
        temperature: Some(s.temperature),
        top_p: Some(s.top_p),
        top_k: s.top_k_limit(),
        repetition_penalty: (s.repetition_penalty != 1.0).then_some(s.repetition_penalty),
        max_tokens: s.max_new_tokens,
        seed: s.seed,
        stream: true,
        stream_options: Some(StreamOptions {
            include_usage: true,
        }),
        ..Default::default()
    }
}

/// `data:<type sniffed from the bytes>;base64,<data>`: the one hop that needs the image as text.
fn data_url(bytes: &protocol::ImageBytes) -> String {
    let mime = protocol::image_mime(bytes.as_bytes()).unwrap_or("image/png");
    format!("data:{mime};base64,{}", bytes.to_base64())
}

/// Client-side timing and counts of one streamed answer.
struct Meter {
    started: Instant,
    first: Option<Instant>,
    chunks: usize,
    usage: Option<(usize, usize)>,
}

impl Meter {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            first: None,
            chunks: 0,
            usage: None,
        }
    }

    fn token(&mut self) {
        self.first.get_or_insert_with(Instant::now);
        self.chunks += 1;
    }

    /// Token counts from the server's `usage` when it sent one, else one per text chunk.
    fn stats(&self, model: &str, stop: StopReason) -> Stats {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (prompt_tokens, generated_tokens) = self.usage.unwrap_or((0, self.chunks));
        let ttft_ms = self.first.map_or(0.0, |f| ms(f - self.started));
        let decode_s = self.first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let tokens_per_s = if generated_tokens > 1 && decode_s > 0.0 {
            (generated_tokens - 1) as f64 / decode_s
        } else {
            0.0
        };
        Stats {
            checkpoint: model.into(),
            prompt_tokens,
            reused_tokens: 0,
            dropped_turns: 0,
            context: 0,
            generated_tokens,
            // The client cannot tell the prefill from the wait for the first token.
            prefill_ms: ttft_ms,
            ttft_ms,
            tokens_per_s,
            stop,
        }
    }
}

/// One streaming HTTP call.
struct Call {
    request: reqwest::RequestBuilder,
    api_key: Option<String>,
    model: String,
    events: mpsc::Sender<Event>,
}

impl Call {
    async fn run(self, meter: &mut Meter) {
        let events = self.events.clone();
        let model = self.model.clone();
        let end = match self.stream(meter).await {
            Ok(stop) => Event::Done {
                stats: meter.stats(&model, stop),
            },
            Err(error) => error.into(),
        };
        let _ = events.send(end).await;
    }

    /// Sends `Started` and the tokens; returns why the answer ended.
    async fn stream(self, meter: &mut Meter) -> Result<StopReason, Error> {
        let upstream = |message: String| Error::new(ErrorKind::Upstream, message);
        use futures::StreamExt;
        let mut request = self.request;
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| upstream(format!("cannot reach the remote endpoint: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let message = format!(
                "the remote endpoint answered HTTP {status}: {}",
                error_message(&body)
            );
            // The engine behind is busy: so are we (the caller may retry), not broken.
            let kind = if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                ErrorKind::Busy
            } else {
                ErrorKind::Upstream
            };
            return Err(Error::new(kind, message));
        }
        let _ = self
            .events
            .send(Event::Started {
                checkpoint: self.model.clone(),
            })
            .await;
        let mut body = response.bytes_stream();
        let mut lines = DataLines::default();
        let mut stop = StopReason::Eos;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| upstream(format!("the remote stream broke off: {e}")))?;
            for data in lines.push(&chunk) {
                if data.trim() == "[DONE]" {
                    return Ok(stop);
                }
                let v: Value = serde_json::from_str(&data).map_err(|e| {
                    upstream(format!(
                        "the remote endpoint sent a bad chunk ({e}): {data}"
                    ))
                })?;
                if v.get("error").is_some() {
                    return Err(upstream(format!(
                        "the remote endpoint failed: {}",
                        error_message(&data)
                    )));
                }
                let chunk: ChatCompletionChunk = serde_json::from_value(v).map_err(|e| {
                    upstream(format!(
                        "the remote endpoint sent a bad chunk ({e}): {data}"
                    ))
                })?;
                if let Some(Some(u)) = chunk.usage {
                    meter.usage = Some((u.prompt_tokens, u.completion_tokens));
                }
                let Some(choice) = chunk.choices.into_iter().next() else {
                    continue;
                };
                if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                    meter.token();
                    let token = Event::Token { text };
                    if self.events.send(token).await.is_err() {
                        return Ok(StopReason::Cancelled); // nobody listens any more
                    }
                }
                if choice.finish_reason.as_deref() == Some("length") {
                    stop = StopReason::Length;
                }
            }
        }
        Ok(stop) // a server that closes without [DONE]
    }
}

/// `error.message` of an OpenAI error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ImageData, Sampling};
    use serde_json::json;

    #[test]
    fn the_request_carries_history_image_and_sampling() {
        let req = GenerateRequest {
            image: Some(ImageData {
                name: "x.jpg".into(),
                bytes: protocol::ImageBytes::new(&b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"[..]),
            }),
            history: vec![("q1".into(), "a1".into())],
            query: "q2".into(),
            version: None,
            sampling: Sampling {
                temperature: 0.0,
                top_k: Some(1),
                max_new_tokens: Some(5),
                ..Sampling::default()
            },
        };
        let body = serde_json::to_value(request_body("cogvlm-chat", &req)).unwrap();
        let m = &body["messages"];
        assert_eq!(m.as_array().unwrap().len(), 3);
        assert_eq!(m[0]["content"][0]["text"], "q1");
        assert!(m[0]["content"][1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/jpeg;base64,/9j/"));
        assert_eq!(m[1], json!({"role": "assistant", "content": "a1"}));
        assert_eq!(m[2], json!({"role": "user", "content": "q2"}));
        assert_eq!(
            (
                &body["max_tokens"],
                &body["top_k"],
                &body["temperature"],
                &body["stream"]
            ),
            (&json!(5), &json!(1), &json!(0.0), &json!(true))
        );
        assert!(body.get("repetition_penalty").is_none());
    }

    #[test]
    fn kind_is_guessed_from_the_name() {
        let b = |m: &str| {
            RemoteBackend::new(RemoteConfig {
                endpoint: "http://127.0.0.1:9".into(),
                api_key: None,
                model: m.into(),
            })
            .unwrap()
        };
        assert_eq!(b("cogagent-chat-hf").checkpoint().kind, ModelKind::CogAgent);
        assert_eq!(b("cogvlm-chat-hf").checkpoint().kind, ModelKind::CogVlm);
        assert_eq!(
            b("x").url.as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert!(RemoteBackend::new(RemoteConfig {
            endpoint: "ftp://x".into(),
            api_key: None,
            model: "m".into()
        })
        .is_err());
    }
}
