//! The OpenAI-compatible API on the app's server: `GET /v1/models` and
//! `POST /v1/chat/completions` (JSON, or server-sent events as tokens are produced).
//!
//! It drives the same [`Backend`] as the page, so API requests wait in the same queue. The
//! README's "OpenAI-compatible API" section documents the mapping (system message, images,
//! sampling defaults, errors).

pub mod aliases;
mod error;
mod handlers;
pub mod request;
mod run;
mod stop;

pub use error::ApiError;
pub use request::parse_data_url;

use app::backend::Backend;
use axum::routing::{any, get, post};
use axum::Router;
use std::sync::Arc;

/// The `/v1` routes over `backend`, ready to merge into the app's router.
pub fn router<S: Clone + Send + Sync + 'static>(backend: Arc<dyn Backend>) -> Router<S> {
    Router::new()
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/{*rest}", any(handlers::not_found))
        .with_state(backend)
}
