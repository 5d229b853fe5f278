//! The model engine: a worker thread that owns the loaded checkpoint, and the registry of
//! checkpoints it can load. Knows requests (app's protocol types), not HTTP.
pub mod admission;
mod batch;
pub mod batch_size;
mod command;
pub mod handle;
pub mod limits;
mod queue;
pub mod registry;
mod run_loop;
pub mod worker;

pub use admission::Fairness;
pub use command::Command;
pub use handle::{
    default_max_batch, Canceller, EngineHandle, EngineOptions, Ticket, DEFAULT_PREFILL_CHUNK,
};
pub use limits::Limits;
pub use registry::{bundled_models_dir, Entry, Registry};
