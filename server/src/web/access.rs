//! Who may use the server: an access token for shared servers, a same-origin rule for
//! websockets, and a per-browser client id (for the engine's fairness rules).
//!
//! With a token, every request (page, static file, server function, websocket, API) needs it:
//! as `Authorization: Bearer T`, as the `cogvlm_token` cookie, or once as `?token=T` in a link,
//! which sets the cookie (HttpOnly) and redirects to the same page without the token in the
//! address bar. Anything else gets 401.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub const TOKEN_COOKIE: &str = "cogvlm_token";
pub const CLIENT_COOKIE: &str = "cogvlm_client";

/// The access rules of one server.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `None`: open (the default on loopback).
    pub token: Option<String>,
}

/// A fresh random token: 128 bits, hex.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Equality that takes as long whatever the first differing byte (no timing oracle).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

/// The URI without its `token` parameter.
fn without_token(uri: &Uri) -> String {
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
        .collect();
    if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), rest.join("&"))
    }
}

fn unauthorized(path: &str) -> Response {
    let message = "this server needs its access token: open the link that `cogvlm serve \
                   --share` printed (it ends in ?token=…), or send `Authorization: Bearer <token>`";
    if path.starts_with("/v1/") {
        // OpenAI clients read this shape.
        let body = serde_json::json!({
            "error": {"message": message, "type": "invalid_request_error",
                      "param": null, "code": "invalid_api_key"}
        });
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        format!("401 Unauthorized: {message}\n"),
    )
        .into_response()
}

/// True when a websocket upgrade comes from a page of another site (cross-site websocket
/// hijacking: the browser would send our cookies along).
fn foreign_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false; // not a browser: it needs the token like any client
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin)
        .trim_end_matches('/');
    !origin_host.eq_ignore_ascii_case(host)
}

/// The middleware: checks the token and the websocket origin, and gives each browser a
/// client id cookie.
pub async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if foreign_websocket(headers) {
        return (
            StatusCode::FORBIDDEN,
            "403 Forbidden: websocket from another origin\n",
        )
            .into_response();
    }
    if let Some(token) = access.token.as_deref() {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = |t: Option<&str>| t.is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
        if ok(query_token(req.uri())) {
            // Move the token from the address bar into a cookie.
            let set = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            return Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, without_token(req.uri()))
                .header(header::SET_COOKIE, set)
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        if !ok(bearer) && !ok(cookie(headers, TOKEN_COOKIE)) {
            return unauthorized(req.uri().path());
        }
    }
    let needs_client_id = cookie(req.headers(), CLIENT_COOKIE).is_none_or(|id| {
        id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let mut response = next.run(req).await;
    if needs_client_id {
        let set = format!(
            "{CLIENT_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            new_token()
        );
        if let Ok(value) = HeaderValue::from_str(&set) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Who is asking, for the engine's fairness rules: the id the server gave this browser (the
/// `cogvlm_client` cookie set by [`guard`]), else the peer's IP address.
pub fn client_key_of(parts: &axum::http::request::Parts) -> String {
    use axum::extract::ConnectInfo;
    let cookie =
        cookie(&parts.headers, CLIENT_COOKIE).filter(|id| !id.is_empty() && id.len() <= 64);
    if let Some(id) = cookie {
        return format!("client:{id}");
    }
    parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| format!("ip:{}", addr.ip()))
        .unwrap_or_else(|| "unknown".into())
}

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| protocol::cookie_value(v, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_leaves_the_address() {
        let uri: Uri = "/chat?token=abc&x=1".parse().unwrap();
        assert_eq!(query_token(&uri), Some("abc"));
        assert_eq!(without_token(&uri), "/chat?x=1");
        let uri: Uri = "/?token=abc".parse().unwrap();
        assert_eq!(without_token(&uri), "/");
    }

    #[test]
    fn websocket_origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::HOST, "192.168.1.5:3000".parse().unwrap());
        h.insert(header::ORIGIN, "http://192.168.1.5:3000".parse().unwrap());
        assert!(!foreign_websocket(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(foreign_websocket(&h));
        h.remove(header::ORIGIN);
        assert!(!foreign_websocket(&h));
    }

    #[test]
    fn constant_time_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
