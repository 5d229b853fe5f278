//! CogVLM / CogAgent / CogVLM2 in Rust. One request goes browser → `web` (or `openai`) → `engine` (queue,
//! worker, batch) → `generate` (pipeline, sampling, text stream) → `model`, and back as `protocol`
//! events. `tools` holds parity, bench and make-checkpoint; `remote` the `--backend openai` client;
//! `terminal` the CLI chat; `train` fine-tuning; `fixture` what the parity suites of both share.

pub mod engine;
pub mod fixture;
pub mod generate;
pub mod model;
pub mod net;
pub mod openai;
pub mod remote;
pub mod terminal;
pub mod tools;
pub mod train;
pub mod web;
