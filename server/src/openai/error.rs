//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::ErrorKind;
use serde::Serialize;

/// One API error; becomes the JSON body (and the status) of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A 400 about the request body; `param` names the offending field.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(Into::into),
            code: None,
        }
    }

    /// A 404 for a `model` that names no checkpoint (OpenAI's `model_not_found`).
    pub fn model_not_found(name: &str, known: &[String]) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model {name:?} does not exist here; GET /v1/models lists them: {}",
                known.join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// An error the engine reported (`Event::Error`) before any text was sent: its kind decides
    /// the status, never its wording.
    pub fn from_engine(kind: ErrorKind, message: String) -> Self {
        let status =
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, code) = match kind {
            // The API sends images inline: an upload id can only come from a client's mistake.
            ErrorKind::BadInput | ErrorKind::UploadMissing => ("invalid_request_error", None),
            ErrorKind::Busy | ErrorKind::RateLimited => {
                ("rate_limit_error", Some("rate_limit_exceeded"))
            }
            ErrorKind::NoModel
            | ErrorKind::ShuttingDown
            | ErrorKind::Upstream
            | ErrorKind::Internal => ("server_error", None),
        };
        Self {
            status,
            message,
            kind,
            param: None,
            code,
        }
    }

    /// The engine went away without an answer (a panic in the worker).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body alone (also sent as an SSE event when the stream has already started).
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Detail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid("bad", Some("messages"));
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"message": "bad", "type": "invalid_request_error",
                                         "param": "messages", "code": null}})
        );
    }

    #[test]
    fn the_status_comes_from_the_error_kind() {
        let status = |kind, message: &str| ApiError::from_engine(kind, message.into()).status;
        assert_eq!(
            status(ErrorKind::NoModel, "no model is loaded"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(ErrorKind::BadInput, "the prompt takes 3000 positions"),
            StatusCode::BAD_REQUEST
        );
        for refusal in [
            (
                ErrorKind::Busy,
                "the server is busy: 9 requests are waiting or running",
            ),
            (
                ErrorKind::RateLimited,
                "too many requests: at most 60 a minute",
            ),
            (
                ErrorKind::RateLimited,
                "you already have a question being answered or waiting",
            ),
        ] {
            assert_eq!(status(refusal.0, refusal.1), StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(
            status(
                ErrorKind::BadInput,
                "image x.png is 30 MB; the limit is 20 MB (too large)"
            ),
            StatusCode::BAD_REQUEST
        );
        // Wording no longer matters: these two once came out as 400s.
        assert_eq!(
            status(
                ErrorKind::Internal,
                "internal error in the model worker (boom); it recovered: please try again"
            ),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(ErrorKind::ShuttingDown, "the server is shutting down"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(ErrorKind::Upstream, "the remote endpoint answered HTTP 500"),
            StatusCode::BAD_GATEWAY
        );
        // A message that mentions "busy" is not a 429 unless its kind says so.
        assert_eq!(
            status(ErrorKind::BadInput, "a question about a busy street"),
            StatusCode::BAD_REQUEST
        );
    }
}
