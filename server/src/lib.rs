//! CogVLM / CogAgent in Rust: the candle model (`model`), sampling and streaming text, the generation
//! pipeline (`pipeline`) that the worker, the web app and the CLI share.

pub mod bench;
pub mod bench_concurrency;
pub mod engine;
pub mod history_fit;
pub mod make_checkpoint;
pub mod model;
pub mod openai;
pub mod parity;
pub mod pipeline;
pub mod remote;
pub mod sampling;
pub mod terminal;
pub mod text_stream;
pub mod train;
pub mod web;

pub use pipeline::{
    probe_checkpoint, ChatRequest, CheckpointSummary, GenerationStats, LoadOptions, ModelKind,
    Pipeline, PromptVersion, SamplingParams, StopReason,
};
