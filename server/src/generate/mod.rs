//! Generation: one chat turn from request to streamed text. `pipeline` builds the prompt, reuses or
//! encodes the image, runs the prefill and the (batched) decode steps; `sampling` chooses each token;
//! `text_stream` turns tokens into text as they come.
pub mod pipeline;
pub mod sampling;
pub mod text_stream;
