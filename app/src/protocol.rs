//! Messages between the page and the server (serde only; no candle, no web types).
//!
//! One generation is one websocket call: the client sends [`ClientMsg::Generate`] first, may send
//! [`ClientMsg::Stop`] later, and receives [`Event`]s until [`Event::Done`] or [`Event::Error`].
//! A checkpoint switch is another websocket call that streams [`Event::LoadProgress`] and ends
//! with [`Event::Loaded`] or [`Event::Error`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The prompt template. Mirrors the engine's `PromptVersion` by its string name
/// (`chat`, `chat_old`, `base`, `vqa`).
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown prompt version {s:?} (chat, chat_old, base, vqa)"))
    }
}

/// Which architecture a checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    CogVlm,
    CogAgent,
}

impl ModelKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::CogVlm => "CogVLM",
            Self::CogAgent => "CogAgent",
        }
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

/// Sampling settings. The defaults are those of THUDM's web demo.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// `<= 1e-5` means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// `1` means greedy.
    pub top_k: usize,
    /// Total sequence length, image tokens included.
    pub max_length: usize,
    /// Stop after this many new tokens (`None`: only `max_length` and EOS stop).
    pub max_new_tokens: Option<usize>,
    pub repetition_penalty: f32,
    /// `None`: a fresh seed per request.
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_p: 0.4,
            top_k: 10,
            max_length: 2048,
            max_new_tokens: None,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

/// An image as uploaded, still encoded (PNG, JPEG, ...), base64 in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageData {
    pub name: String,
    pub base64: String,
}

/// One question about one (optional) image, with the conversation so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub image: Option<ImageData>,
    /// Earlier (question, answer) pairs.
    pub history: Vec<(String, String)>,
    pub query: String,
    /// `None`: the checkpoint's default.
    pub version: Option<PromptVersion>,
    pub sampling: Sampling,
}

/// Client → server messages of a generation call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    Generate(Box<GenerateRequest>),
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
    /// The request failed; nothing more follows.
    Error { message: String },
    /// Checkpoint loading: bytes read of the total.
    LoadProgress { done: u64, total: u64 },
    /// The checkpoint is loaded and answers from now on.
    Loaded { checkpoint: CheckpointInfo },
}

impl Event {
    /// True for the events after which nothing more is sent.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Event::Done { .. } | Event::Error { .. } | Event::Loaded { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_version_names_round_trip() {
        for v in PromptVersion::ALL {
            assert_eq!(v.as_str().parse::<PromptVersion>(), Ok(v));
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.as_str())
            );
        }
        assert!("chat-old".parse::<PromptVersion>().is_err());
    }

    #[test]
    fn defaults_are_the_web_demo_ones() {
        let s = Sampling::default();
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.max_length),
            (0.8, 0.4, 10, 2048)
        );
    }
}
