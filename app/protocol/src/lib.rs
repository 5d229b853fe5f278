//! The types every layer shares, each defined once: the page, the web server, the engine, the
//! OpenAI-compatible API, the remote backend and the model all speak these (serde and base64 only; no Leptos,
//! no candle, no web types).
//!
//! The page sends its image once, by the upload server function, which answers an [`UploadRef`]; one
//! generation is then one websocket call: the client sends [`ClientMsg::Generate`] (naming the image by
//! that reference) first, may send [`ClientMsg::Stop`] later, and receives [`Event`]s until
//! [`Event::Done`] or [`Event::Error`]. The socket's frames stay small: text and numbers only.
//! A checkpoint switch is another websocket call that streams [`Event::LoadProgress`] and ends
//! with [`Event::Loaded`] or [`Event::Error`].

pub mod grounding;
mod mime;
pub mod openai;
pub use mime::{image_mime, image_mime_base64};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The prompt template, by the names of THUDM's `--version` flag (`chat`, `chat_old`, `base`, `vqa`).
/// For CogVLM the Hugging Face code knows `base`, `chat` (the "Question: … Answer:" format, which
/// THUDM's SAT demo calls `chat_old`) and `vqa`; for CogAgent it knows all four.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptVersion {
    Chat,
    ChatOld,
    Base,
    Vqa,
}

impl PromptVersion {
    pub const ALL: [PromptVersion; 4] = [Self::Chat, Self::ChatOld, Self::Base, Self::Vqa];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::ChatOld => "chat_old",
            Self::Base => "base",
            Self::Vqa => "vqa",
        }
    }

    /// A short description for the selector.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Chat => "chat: Question: … Answer:",
            Self::ChatOld => "chat_old: chat with the older template",
            Self::Base => "base: plain continuation, no template",
            Self::Vqa => "vqa: short answers (Question … Short answer:)",
        }
    }
}

impl fmt::Display for PromptVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PromptVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                Error::bad_input(format!(
                    "unknown prompt version {s:?} (expected chat, chat_old, base or vqa)"
                ))
            })
    }
}

/// Which architecture a checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    CogVlm,
    CogAgent,
    /// CogVLM2 (Llama-3 base, 1344 px, grouped-query attention).
    CogVlm2,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [Self::CogVlm, Self::CogAgent, Self::CogVlm2];

    pub fn label(self) -> &'static str {
        match self {
            Self::CogVlm => "CogVLM",
            Self::CogAgent => "CogAgent",
            Self::CogVlm2 => "CogVLM2",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A checkpoint found in the models folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub name: String,
    pub kind: ModelKind,
    /// Input resolution of the (low-resolution) vision tower, in pixels.
    pub image_size: usize,
    pub default_version: PromptVersion,
    /// True for the tiny random-weight checkpoints bundled for tests: their answers are gibberish.
    pub bundled: bool,
}

/// What the server has and is doing, for the model selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelsState {
    pub checkpoints: Vec<CheckpointInfo>,
    /// Name of the checkpoint that answers now, if one is loaded.
    pub current: Option<String>,
    /// Name of the checkpoint being loaded, if any.
    pub loading: Option<String>,
    /// The last load failure, if the last load failed.
    pub load_error: Option<String>,
    /// The folder that was scanned.
    pub models_dir: String,
    /// Folders in it that look like checkpoints but could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
    /// "cpu", "cuda:0", ...
    pub device: String,
    /// The largest image the server accepts, in bytes (the page checks before sending).
    #[serde(default)]
    pub max_upload_bytes: usize,
    /// Where the loaded model's modules run, when it is spread over more than one device, in one line
    /// (`cuda:0: vision tower + adapter, layers 0–15 · cpu: …`); the full device plan with its memory figures
    /// in `plan_detail`.
    #[serde(default)]
    pub placement: Option<String>,
    #[serde(default)]
    pub plan_detail: Option<String>,
}

impl ModelsState {
    /// The loaded checkpoint's entry.
    pub fn current_checkpoint(&self) -> Option<&CheckpointInfo> {
        let name = self.current.as_ref()?;
        self.checkpoints.iter().find(|c| &c.name == name)
    }
}

/// Sampling settings, as the page, the API, the CLI and the remote backend send them and the engine
/// uses them. [`Sampling::validate`] is the one rule set every entry point applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// `0` (anything `<= 1e-5`) means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// Keep the `k` most likely tokens. `None` and `Some(0)` mean no top-k; `Some(1)` is greedy.
    pub top_k: Option<usize>,
    /// Total sequence length, image tokens included.
    pub max_length: usize,
    /// Stop after this many new tokens (`None`: only `max_length` and EOS stop).
    pub max_new_tokens: Option<usize>,
    pub repetition_penalty: f32,
    /// `None`: a fresh seed per request.
    pub seed: Option<u64>,
}

/// The longest context of any family (CogVLM2's 8192 positions; CogVLM and CogAgent have 2048). A
/// `max_length` above a checkpoint's context means "up to its context": the engine holds every request to it.
pub const MAX_CONTEXT: usize = 8192;

/// The largest temperature accepted anywhere (OpenAI's bound; the page's slider ends there too).
pub const MAX_TEMPERATURE: f64 = 2.0;
/// The largest repetition penalty accepted.
pub const MAX_REPETITION_PENALTY: f32 = 10.0;

impl Default for Sampling {
    /// CogVLM's defaults ([`Sampling::for_kind`]): what the remote backend sends.
    fn default() -> Self {
        Self::for_kind(ModelKind::CogVlm)
    }
}

impl Sampling {
    /// The settings a checkpoint of `kind` starts with on the page, as THUDM's demos start them: CogVLM's Gradio
    /// web demo (temperature 0.8, top-p 0.4, top-k 10) and CogAgent's composite demo (0.9, 0.8, 5). Both allow
    /// 2048 tokens in all; CogVLM2 its whole 8192-position context (a 1344 px image alone takes 2306).
    pub fn for_kind(kind: ModelKind) -> Self {
        let (temperature, top_p, top_k) = match kind {
            // CogVLM2's demos keep CogVLM's chat settings.
            ModelKind::CogVlm | ModelKind::CogVlm2 => (0.8, 0.4, 10),
            ModelKind::CogAgent => (0.9, 0.8, 5),
        };
        let max_length = match kind {
            ModelKind::CogVlm2 => MAX_CONTEXT,
            ModelKind::CogVlm | ModelKind::CogAgent => 2048,
        };
        Self {
            temperature,
            top_p,
            top_k: Some(top_k),
            max_length,
            max_new_tokens: None,
            repetition_penalty: 1.0,
            seed: None,
        }
    }

    /// Greedy decoding, as THUDM's CLI demo and the reference fixtures (`do_sample=False`): the
    /// terminal chat's default, and what parity and the benchmark run. Its length is the longest context of
    /// any family (CogVLM2's); the engine holds every request to its checkpoint's own.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            max_length: MAX_CONTEXT,
            max_new_tokens: None,
            repetition_penalty: 1.0,
            seed: Some(42),
        }
    }

    /// The top-k cut, if there is one (`None` and `Some(0)` both mean none).
    pub fn top_k_limit(&self) -> Option<usize> {
        self.top_k.filter(|&k| k > 0)
    }

    /// Always the most likely token: temperature 0 or top-k 1.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 1e-5 || self.top_k_limit() == Some(1)
    }

    /// The ranges every entry point (page, API, CLI, engine) accepts. The error names the field
    /// ([`SamplingError::field`]) so the API can point at it.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |field, message: String| Err(SamplingError { field, message });
        if !(self.temperature.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&self.temperature)) {
            return bad(
                "temperature",
                format!(
                    "temperature must be a number from 0 to {MAX_TEMPERATURE} (0 = greedy), not {:?}",
                    self.temperature
                ),
            );
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(
                "top_p",
                format!("top_p must be in (0, 1], not {:?}", self.top_p),
            );
        }
        if self.max_length == 0 {
            return bad("max_length", "max_length must be at least 1".into());
        }
        if self.max_new_tokens == Some(0) {
            return bad(
                "max_new_tokens",
                "max_new_tokens must be at least 1 (or absent: no limit)".into(),
            );
        }
        let p = self.repetition_penalty;
        if !(p.is_finite() && p > 0.0 && p <= MAX_REPETITION_PENALTY) {
            return bad(
                "repetition_penalty",
                format!(
                    "repetition_penalty must be in (0, {MAX_REPETITION_PENALTY}] (1 = none), not {p:?}"
                ),
            );
        }
        Ok(())
    }
}

/// A sampling value out of range: which field, and the message for the user.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SamplingError {}

impl From<SamplingError> for Error {
    fn from(e: SamplingError) -> Self {
        Error::bad_input(e.message)
    }
}

/// An image as uploaded, still encoded (PNG, JPEG, ...): its bytes, kept from the upload (or the API's data
/// URL) to the decoder without another copy; base64 text in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageData {
    pub name: String,
    pub bytes: ImageBytes,
}

/// An encoded file's bytes, shared (cloning is a reference count); serialized as standard base64.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageBytes(std::sync::Arc<[u8]>);

impl ImageBytes {
    pub fn new(bytes: impl Into<std::sync::Arc<[u8]>>) -> Self {
        Self(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Standard base64 (a data URL's payload).
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }
}

impl fmt::Debug for ImageBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageBytes({} bytes)", self.0.len())
    }
}

impl Serialize for ImageBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for ImageBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Self::new)
            .map_err(|e| serde::de::Error::custom(format!("the image is not valid base64: {e}")))
    }
}

/// An image the server keeps from an upload, by the id the upload answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRef {
    pub id: String,
    /// The file name, for messages.
    pub name: String,
}

/// One question about one (optional) image, with the conversation so far. The page's socket names the
/// image by [`UploadRef`], the API and the remote backend send it inline as [`ImageData`]; the server
/// hands the engine the same request with a decoded image ([`GenerateRequest::with_image`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest<I = ImageData> {
    pub image: Option<I>,
    /// Earlier (question, answer) pairs.
    pub history: Vec<(String, String)>,
    pub query: String,
    /// `None`: the checkpoint's default.
    pub version: Option<PromptVersion>,
    pub sampling: Sampling,
}

impl<I> GenerateRequest<I> {
    /// This request with `image` in place of its own.
    pub fn with_image<J>(&self, image: Option<J>) -> GenerateRequest<J> {
        GenerateRequest {
            image,
            history: self.history.clone(),
            query: self.query.clone(),
            version: self.version,
            sampling: self.sampling.clone(),
        }
    }
}

/// Client → server messages of a generation call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    Generate(Box<GenerateRequest<UploadRef>>),
    Stop,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    Eos,
    Length,
    Cancelled,
}

impl StopReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Eos => "end of answer",
            Self::Length => "length limit",
            Self::Cancelled => "stopped",
        }
    }
}

/// Numbers shown under an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub checkpoint: String,
    pub prompt_tokens: usize,
    /// Prompt tokens continued from the conversation's cache (the image and earlier turns), not run again.
    #[serde(default)]
    pub reused_tokens: usize,
    /// The oldest earlier turns left out of the prompt so that the question fit the context.
    #[serde(default)]
    pub dropped_turns: usize,
    /// The checkpoint's context length in positions (0: not known, e.g. behind a remote engine).
    #[serde(default)]
    pub context: usize,
    pub generated_tokens: usize,
    /// Image encoding plus prompt, in milliseconds.
    pub prefill_ms: f64,
    /// Time to first token, from the start of this request's processing.
    pub ttft_ms: f64,
    pub tokens_per_s: f64,
    pub stop: StopReason,
}

/// Server → client events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Waiting behind `position` other jobs (0: next); `eta_ms`: the expected wait, once the
    /// server has timed a few answers.
    Queued {
        position: usize,
        #[serde(default)]
        eta_ms: Option<u64>,
    },
    /// The worker took the request (image encoding and prefill follow).
    Started { checkpoint: String },
    /// A piece of the answer (valid UTF-8).
    Token { text: String },
    /// The answer is complete.
    Done { stats: Stats },
    /// The request failed; nothing more follows. `kind` says whose fault it is (and so the API's
    /// HTTP status).
    Error {
        #[serde(default)]
        kind: ErrorKind,
        message: String,
    },
    /// Checkpoint loading: bytes read of the total.
    LoadProgress { done: u64, total: u64 },
    /// The checkpoint is loaded and answers from now on.
    Loaded { checkpoint: CheckpointInfo },
}

impl Event {
    /// The final event of a failed request.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Event::Error {
            kind,
            message: message.into(),
        }
    }

    /// True for the events after which nothing more is sent.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Event::Done { .. } | Event::Error { .. } | Event::Loaded { .. }
        )
    }
}

impl From<Error> for Event {
    fn from(e: Error) -> Self {
        Event::Error {
            kind: e.kind,
            message: e.message,
        }
    }
}

/// Why a request failed, which decides who can fix it (and the API's HTTP status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong (a value out of range, an image too large, a prompt over the
    /// context, an unknown checkpoint): asking again unchanged fails again.
    BadInput,
    /// The server's queue is full: try again later.
    Busy,
    /// This client asked too much (too many at once, or too many a minute).
    RateLimited,
    /// No checkpoint is loaded.
    NoModel,
    /// The remote engine behind `--backend openai` failed or refused.
    Upstream,
    /// A fault on this side (a failed model step, a recovered panic).
    #[default]
    Internal,
    /// The server is stopping.
    ShuttingDown,
    /// The image's upload id is not (or no longer) on the server (it restarted, or forgot the oldest
    /// uploads): upload the image again.
    UploadMissing,
}

impl ErrorKind {
    /// The HTTP status of a request that failed this way (the API's and the upload's).
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadInput | Self::UploadMissing => 400,
            Self::Busy | Self::RateLimited => 429,
            Self::NoModel | Self::ShuttingDown => 503,
            Self::Upstream => 502,
            Self::Internal => 500,
        }
    }
}

/// A failed request: its [`ErrorKind`] and the message for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadInput, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The value of cookie `name` in one `Cookie` header's text (`a=1; b=2`). The server's access
/// guard and the page's server-side render read their cookies through this one parser.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests;
