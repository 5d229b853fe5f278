//! Generation: one chat turn from request to streamed text. `pipeline` builds the prompt, reuses or
//! encodes the image, runs the prefill and the (batched) decode steps of [`Sequence`]s; `load` and
//! `tokenizer` open a checkpoint, `checkpoint` describes one; `cache` keeps what the next turn reuses;
//! `history_fit` drops old turns that no longer fit; `sampling` chooses each token; `text_stream` turns
//! tokens into text as they come.
pub mod cache;
pub mod checkpoint;
pub mod history_fit;
pub mod load;
pub mod pipeline;
pub mod sampling;
pub mod sequence;
pub mod text_stream;
pub mod tokenizer;

pub use cache::KEPT_CONVERSATIONS;
pub use checkpoint::{checkpoint_info, default_version, probe_checkpoint};
pub use load::{make_plan, parse_device, parse_dtype_name, DeviceName, LoadOptions};
pub use pipeline::{Answer, ChatRequest, Pipeline, Prepared};
pub use sampling::Sampling;
pub use sequence::Sequence;
pub use tokenizer::{check_vocabulary, find_tokenizer, load_tokenizer};

use crate::model::prompt::Template;
use crate::model::Family;
use protocol::{ModelKind, PromptVersion};

/// The page's and API's prompt version as the model's template.
impl From<PromptVersion> for Template {
    fn from(v: PromptVersion) -> Self {
        match v {
            PromptVersion::Base => Template::Base,
            PromptVersion::Chat => Template::Chat,
            PromptVersion::ChatOld => Template::ChatOld,
            PromptVersion::Vqa => Template::Vqa,
        }
    }
}

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
