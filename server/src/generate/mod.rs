//! Generation: one chat turn from request to streamed text. `pipeline` builds the prompt, reuses or
//! encodes the image, runs the prefill and the (batched) decode steps; `sampling` chooses each token;
//! `text_stream` turns tokens into text as they come.
pub mod pipeline;
pub mod sampling;
pub mod text_stream;

use crate::model::Family;
use protocol::ModelKind;

/// The wire name of a model family (the page and the API see `ModelKind`; the model knows `Family`).
impl From<Family> for ModelKind {
    fn from(f: Family) -> Self {
        match f {
            Family::CogVlm => ModelKind::CogVlm,
            Family::CogAgent => ModelKind::CogAgent,
            Family::CogVlm2 => ModelKind::CogVlm2,
        }
    }
}
