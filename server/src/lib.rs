//! CogVLM / CogAgent in Rust. One request goes browser → `web` (or `openai`) → `engine` (queue,
//! worker, batch) → `generate` (pipeline, sampling, text stream) → `model`, and back as `protocol`
//! events. `tools` holds parity, bench and make-checkpoint; `remote` the `--backend openai` client;
//! `terminal` the CLI chat; `train` fine-tuning.

pub mod engine;
pub mod generate;
pub mod history_fit;
pub mod model;
pub mod net;
pub mod openai;
pub mod remote;
pub mod terminal;
pub mod tools;
pub mod train;
pub mod web;

// The modules' paths before they moved into `generate/` and `tools/`, kept for the CLI, tests and tools.
pub use generate::{pipeline, sampling, text_stream};
pub use tools::{bench, bench_concurrency, make_checkpoint, parity};

pub use pipeline::{
    probe_checkpoint, Answer, ChatRequest, CheckpointInfo, LoadOptions, ModelKind, Pipeline,
    PromptVersion, Sampling, Stats, StopReason,
};
