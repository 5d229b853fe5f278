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

/// Whether a request's `model` may switch the loaded checkpoint (`--api-switch`): a switch
/// stalls everyone's answers while it loads, so by default only callers on this machine may.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApiSwitch {
    Never,
    #[default]
    Loopback,
    Always,
}

impl std::str::FromStr for ApiSwitch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Self::Never),
            "loopback" => Ok(Self::Loopback),
            "always" => Ok(Self::Always),
            _ => Err(format!("{s:?}: expected never, loopback or always")),
        }
    }
}

/// The API's own limits.
#[derive(Clone)]
pub struct ApiOptions {
    pub switch: ApiSwitch,
    /// One request body at most, in bytes.
    pub max_body: usize,
    /// Request bodies being read or parsed at once, all requests together.
    pub bodies: crate::net::body::BodyBudget,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            switch: ApiSwitch::default(),
            // Room for a 20 MB image in base64 and a long conversation; the engine's own
            // limits then apply (and say what they are).
            max_body: 64 << 20,
            bodies: crate::net::body::BodyBudget::new(256 << 20),
        }
    }
}

/// The `/v1` routes over `backend`, ready to merge into the app's router.
pub fn router<S: Clone + Send + Sync + 'static>(
    backend: Arc<dyn Backend>,
    options: ApiOptions,
) -> Router<S> {
    Router::new()
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/{*rest}", any(handlers::not_found))
        .with_state(handlers::Api {
            backend,
            options: Arc::new(options),
        })
}
