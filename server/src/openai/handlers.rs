//! `GET /v1/models` and `POST /v1/chat/completions` (JSON or server-sent events).

use super::aliases;
use super::error::ApiError;
use super::run::{Out, Run};
use crate::net::body::BodyError;
use app::backend::Backend;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::openai::{
    AnswerMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice,
    Delta, Usage,
};
use protocol::{Event, Stats};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub type SharedBackend = Arc<dyn Backend>;

/// The API routes' state.
#[derive(Clone)]
pub struct Api {
    pub backend: SharedBackend,
    pub options: Arc<super::ApiOptions>,
}

pub async fn list_models(State(api): State<Api>) -> Json<Value> {
    let state = api.backend.models();
    let mut data = Vec::new();
    for c in &state.checkpoints {
        // The checkpoint, then THUDM's names for it (`root` says which checkpoint answers).
        for id in std::iter::once(c.name.clone()).chain(aliases::aliases(&c.name)) {
            data.push(json!({
                "id": id, "object": "model", "created": 0, "owned_by": "cogvlm-rs",
                "root": c.name, "kind": c.kind.label(), "image_size": c.image_size,
                "loaded": state.current.as_deref() == Some(c.name.as_str()),
            }));
        }
    }
    Json(json!({"object": "list", "data": data}))
}

/// Any other path under `/v1`.
pub async fn not_found() -> ApiError {
    ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        message: "unknown endpoint: this server has GET /v1/models and POST /v1/chat/completions"
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
    }
}

pub async fn chat_completions(State(api): State<Api>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // A cross-site page can post `text/plain` (or no type) without asking the browser first;
    // JSON needs a CORS preflight, which this server never grants.
    if !is_json(&parts.headers) {
        let mut e = ApiError::invalid(
            "the request body must be JSON, sent as Content-Type: application/json",
            None,
        );
        e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return e.into_response();
    }
    // API callers share the page's fairness rules, keyed by address (or client cookie).
    let client = crate::net::client_id::client_key_of(&parts);
    let may_switch = match api.options.switch {
        super::ApiSwitch::Never => false,
        super::ApiSwitch::Loopback => crate::net::client_id::is_loopback(&parts),
        super::ApiSwitch::Always => true,
    };
    let length = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let max = api.options.max_body;
    let (body, held) = match api.options.bodies.read(body, length, max).await {
        Ok(read) => read,
        Err(e) => return body_error(e).into_response(),
    };
    let request = parse(&body);
    // The request is parsed: its body's bytes go back to the budget.
    drop((body, held));
    let result = match request {
        Ok(req) => complete(api.backend, req, &client, may_switch).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn body_error(e: BodyError) -> ApiError {
    let (status, message) = match e {
        BodyError::TooLarge(max) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {} MB", max >> 20),
        ),
        BodyError::Busy(total) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is reading {} MB of other requests' bodies, its limit; try again \
                 in a few seconds",
                total >> 20
            ),
        ),
        BodyError::Read(e) => (
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {e}"),
        ),
    };
    let mut e = ApiError::invalid(message, None);
    e.status = status;
    e
}

fn parse(body: &Bytes) -> Result<(ChatCompletionRequest, super::request::Prepared), ApiError> {
    let req: ChatCompletionRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!("the body is not a valid chat completion request: {e}"),
            None,
        )
    })?;
    let prepared = super::request::prepare(&req)?;
    Ok((req, prepared))
}

async fn complete(
    backend: SharedBackend,
    (req, prepared): (ChatCompletionRequest, super::request::Prepared),
    client: &str,
    may_switch: bool,
) -> Result<Response, ApiError> {
    ensure_model(backend.as_ref(), &req.model, may_switch).await?;
    let mut run = Run::start(backend.as_ref(), prepared.generate, client, prepared.stops);
    // Wait for the first text (or the end) before answering, so that a refused request gets
    // a 4xx/5xx status instead of an error inside a 200 stream.
    let first = match run.next().await {
        Some(Out::Failed(e)) => return Err(e),
        Some(out) => out,
        None => return Err(ApiError::internal("the engine sent nothing")),
    };
    let meta = Meta {
        id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: req.model.clone(),
    };
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        Ok(stream(run, first, meta, include_usage).into_response())
    } else {
        collect(run, first, meta)
            .await
            .map(IntoResponse::into_response)
    }
}

/// `model` must name a scanned checkpoint (or be one of THUDM's names for it, [`aliases`]);
/// another one than the loaded one is loaded first (queued like a switch from the page, so it
/// affects the page too).
async fn ensure_model(
    backend: &dyn Backend,
    requested: &str,
    may_switch: bool,
) -> Result<(), ApiError> {
    let state = backend.models();
    let known: Vec<String> = state.checkpoints.into_iter().map(|c| c.name).collect();
    let Some(name) = aliases::resolve(requested, &known) else {
        return Err(ApiError::model_not_found(requested, &known));
    };
    if state.current.as_deref() == Some(name) {
        return Ok(());
    }
    if !may_switch {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "this server does not let API requests switch the checkpoint ({} is loaded): \
                 ask for it, or switch on the page; its operator can allow switching with \
                 --api-switch",
                state.current.as_deref().unwrap_or("none")
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_switch_not_allowed"),
        });
    }
    let mut events = backend.load(name.to_string());
    while let Some(event) = events.recv().await {
        match event {
            Event::Loaded { .. } => return Ok(()),
            Event::Error { kind, message } => {
                return Err(ApiError::from_engine(
                    kind,
                    format!("cannot load the model {name}: {message}"),
                ))
            }
            _ => {}
        }
    }
    Err(ApiError::internal(format!(
        "loading the model {name} ended without an answer"
    )))
}

/// What every response of one completion repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
}

fn usage(stats: &Stats) -> Usage {
    Usage::new(stats.prompt_tokens, stats.generated_tokens)
}

impl Meta {
    /// One streamed event as its JSON text: `choices` (one, or none in the last event when usage was asked
    /// for) and `usage` (`Some(None)` writes `"usage": null`, as OpenAI does on every other chunk then).
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Option<Usage>>) -> String {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

/// The one choice of a streamed event.
fn choice(delta: Delta, finish: Option<&str>) -> Vec<ChunkChoice> {
    vec![ChunkChoice {
        index: 0,
        delta,
        finish_reason: finish.map(String::from),
        logprobs: None,
    }]
}

async fn collect(mut run: Run, first: Out, meta: Meta) -> Result<Json<Value>, ApiError> {
    let mut text = String::new();
    let mut next = Some(first);
    while let Some(out) = next {
        match out {
            Out::Text(t) => text.push_str(&t),
            Out::Failed(e) => return Err(e),
            Out::Finished { reason, stats } => {
                let answer = ChatCompletion {
                    id: meta.id,
                    object: "chat.completion".into(),
                    created: meta.created,
                    model: meta.model,
                    choices: vec![Choice {
                        index: 0,
                        message: AnswerMessage {
                            role: "assistant".into(),
                            content: text,
                        },
                        finish_reason: Some(reason.into()),
                        logprobs: None,
                    }],
                    usage: usage(&stats),
                };
                return Ok(Json(serde_json::to_value(answer).unwrap_or_default()));
            }
        }
        next = run.next().await;
    }
    Err(ApiError::internal("the answer ended without a finish"))
}

/// Where the event stream is.
enum Phase {
    /// The role chunk comes first; `Out` is the first engine output, already received.
    Role(Out),
    Next(Option<Out>),
    Done,
}

fn stream(
    run: Run,
    first: Out,
    meta: Meta,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    // With include_usage every chunk carries `"usage": null` until the last one's counts.
    let no_usage = include_usage.then_some(None);
    let chunk = move |meta: &Meta, delta: Delta, finish: Option<&str>| {
        meta.chunk(choice(delta, finish), no_usage)
    };
    let state = (run, meta, Phase::Role(first));
    let events = futures::stream::unfold(state, move |(mut run, meta, phase)| async move {
        let (data, phase): (Vec<String>, Phase) = match phase {
            Phase::Done => return None,
            Phase::Role(first) => (
                vec![chunk(
                    &meta,
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    },
                    None,
                )],
                Phase::Next(Some(first)),
            ),
            Phase::Next(out) => {
                let out = match out {
                    Some(o) => Some(o),
                    None => run.next().await,
                };
                match out {
                    Some(Out::Text(t)) => (
                        vec![chunk(
                            &meta,
                            Delta {
                                role: None,
                                content: Some(t),
                            },
                            None,
                        )],
                        Phase::Next(None),
                    ),
                    Some(Out::Finished { reason, stats }) => {
                        let mut v = vec![chunk(&meta, Delta::default(), Some(reason))];
                        if include_usage {
                            v.push(meta.chunk(vec![], Some(Some(usage(&stats)))));
                        }
                        (v, Phase::Done)
                    }
                    Some(Out::Failed(e)) => (vec![e.body().to_string()], Phase::Done),
                    None => (vec![], Phase::Done),
                }
            }
        };
        let mut events: Vec<Result<SseEvent, Infallible>> = data
            .into_iter()
            .map(|v| Ok(SseEvent::default().data(v)))
            .collect();
        if matches!(phase, Phase::Done) {
            events.push(Ok(SseEvent::default().data("[DONE]")));
        }
        Some((futures::stream::iter(events), (run, meta, phase)))
    });
    use futures::StreamExt;
    Sse::new(events.flatten()).keep_alive(KeepAlive::default())
}
