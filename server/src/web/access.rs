//! Who may use the server: the `Host` it is asked for, where a request that changes something
//! comes from, an access token for shared servers, and a signed per-browser client id (for the
//! engine's fairness rules).
//!
//! - `Host` must be loopback (`localhost`, `127.0.0.1`, `[::1]`), the bound address, any IP
//!   address when bound to all interfaces, or a name given with `--allow-host`; anything else is
//!   421. A DNS-rebinding page reaches us under its own name, so it stops here.
//! - A request that is not GET/HEAD (and every websocket) whose `Origin` is another site is 403:
//!   web pages the user visits cannot post to the API, upload, or open the chat socket.
//! - With a token, every request (page, static file, server function, websocket, API) needs it:
//!   as `Authorization: Bearer T`, as the `cogvlm_token` cookie, or once as `?token=T` in a
//!   link, which sets the cookie (HttpOnly) and redirects to the same path, always on this site,
//!   without the token in the address bar. Anything else gets 401.
//! - The client id cookie is issued and signed here ([`crate::net::client_id`]); a request
//!   without a valid one is keyed by its address and gets a new id.
//! - Every response says `frame-ancestors 'none'`: no other site can frame the page.

use crate::net::client_id::{self, ClientId};
use crate::net::io::ReadCap;
use anyhow::{bail, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

pub const TOKEN_COOKIE: &str = "cogvlm_token";
pub const CLIENT_COOKIE: &str = "cogvlm_client";

/// The access rules of one server.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `None`: open (the default on loopback).
    pub token: Option<String>,
    /// Host names accepted besides loopback and IP addresses (`--allow-host`, e.g. `box.local`).
    pub allowed_hosts: Vec<String>,
}

/// [`Access`] with what the router knows: the bound address and the websocket input cap.
#[derive(Clone, Debug)]
pub struct Guard {
    pub access: Access,
    pub bound: IpAddr,
    /// Bytes a websocket may send in all (its messages carry text only; images are uploaded).
    pub websocket_input: usize,
}

/// A fresh random token: 128 bits, hex.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Checks a token given to `--token` (or its file or environment variable): 16 to 256 characters
/// that need no escaping in a link or a cookie.
pub fn check_token(token: &str) -> Result<String> {
    let t = token.trim();
    if t.len() < 16 || t.len() > 256 {
        bail!(
            "the access token must be 16 to 256 characters long (it is {}): a short token can be \
             guessed; leave it out to get a random one",
            t.len()
        );
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~".contains(*c)))
    {
        bail!(
            "the access token may hold letters, digits and - . _ ~ only (found {c:?}): it goes \
             into links and cookies as it is"
        );
    }
    Ok(t.to_string())
}

/// The value of `--token-file` or `COGVLM_TOKEN` when `--token` is not given (the process list
/// shows arguments to every user of the machine, not a file or the environment).
pub fn token_from(
    flag: Option<String>,
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> Result<Option<String>> {
    use anyhow::Context;
    let raw = match (flag, file) {
        (Some(_), Some(_)) => bail!("give --token or --token-file, not both"),
        (Some(t), None) => Some(t),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --token-file {}", path.display()))?,
        ),
        (None, None) => env.filter(|t| !t.trim().is_empty()),
    };
    raw.map(|t| check_token(&t)).transpose()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    crate::net::same(a, b)
}

fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

/// The URI without its `token` parameter, as a path on this site: `//evil.example/` (or
/// `/\\evil.example/`, which browsers read alike) would otherwise redirect to another host.
fn without_token(uri: &Uri) -> String {
    let path = format!("/{}", uri.path().trim_start_matches(['/', '\\']));
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
        .collect();
    if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

fn unauthorized(path: &str) -> Response {
    let message = "this server needs its access token: open the link that `cogvlm serve \
                   --share` printed (it ends in ?token=…), or send `Authorization: Bearer <token>`";
    refusal(StatusCode::UNAUTHORIZED, path, "invalid_api_key", message)
}

/// A refusal in the shape its client reads: OpenAI's error object under `/v1/`, text elsewhere.
fn refusal(status: StatusCode, path: &str, code: &str, message: &str) -> Response {
    if path.starts_with("/v1/") {
        let body = serde_json::json!({
            "error": {"message": message, "type": "invalid_request_error",
                      "param": null, "code": code}
        });
        return (status, axum::Json(body)).into_response();
    }
    (status, format!("{status}: {message}\n")).into_response()
}

/// The host part of a `Host` header (`[::1]:3000` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether `Host` names this server (see the module's rules); a request without one is not
/// from a browser, which always sends it.
fn host_allowed(headers: &HeaderMap, bound: IpAddr, extra: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = host_name(host);
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == bound || bound.is_unspecified(),
        Err(_) => {
            name.eq_ignore_ascii_case("localhost")
                || extra.iter().any(|h| h.eq_ignore_ascii_case(name))
        }
    }
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// True when a request that can change something (not GET/HEAD/OPTIONS, or a websocket) comes
/// from a page of another site: the browser would send our cookies along (cross-site request
/// forgery, websocket hijacking). Clients other than browsers send no `Origin`; they need the
/// token like any client.
fn foreign_origin(method: &Method, headers: &HeaderMap) -> bool {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if safe && !is_websocket(headers) {
        return false;
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin) // `null` (a sandboxed frame, a file): never our host
        .trim_end_matches('/');
    !origin_host.eq_ignore_ascii_case(host)
}

/// The middleware: checks the host, the origin and the token, and gives each browser a signed
/// client id cookie.
pub async fn guard(State(guard): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let headers = req.headers();
    if !host_allowed(headers, guard.bound, &guard.access.allowed_hosts) {
        let message = "this server answers to localhost, its own address and the names given \
                       with --allow-host only";
        return framed(refusal(
            StatusCode::MISDIRECTED_REQUEST,
            &path,
            "bad_host",
            message,
        ));
    }
    if foreign_origin(req.method(), headers) {
        let message = "requests from another site's page are refused";
        return framed(refusal(StatusCode::FORBIDDEN, &path, "cross_site", message));
    }
    if let Some(token) = guard.access.token.as_deref() {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = |t: Option<&str>| t.is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
        if ok(query_token(req.uri())) {
            // Move the token from the address bar into a cookie.
            let set = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            return framed(
                Response::builder()
                    .status(StatusCode::SEE_OTHER)
                    .header(header::LOCATION, without_token(req.uri()))
                    .header(header::SET_COOKIE, set)
                    .body(Body::empty())
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            );
        }
        if !ok(bearer) && !ok(cookie(headers, TOKEN_COOKIE)) {
            return framed(unauthorized(&path));
        }
    }
    if is_websocket(req.headers()) {
        if let Some(cap) = req.extensions().get::<ReadCap>() {
            cap.limit_from_now(guard.websocket_input);
        }
    }
    let id = cookie(req.headers(), CLIENT_COOKIE)
        .and_then(client_id::verify)
        .map(str::to_string);
    let issue = id.is_none();
    if let Some(id) = id {
        req.extensions_mut().insert(ClientId(id));
    }
    let mut response = next.run(req).await;
    if issue {
        let set = format!(
            "{CLIENT_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            client_id::issue()
        );
        if let Ok(value) = HeaderValue::from_str(&set) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    framed(response)
}

/// No other site may frame the page (clickjacking).
fn framed(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The client cookie for id `id` signed by this process (tests, and scripts run in-process).
pub fn client_cookie(id: &str) -> String {
    format!("{CLIENT_COOKIE}={}", client_id::sign(id))
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
    fn the_redirect_stays_on_this_site() {
        for (uri, to) in [
            ("//evil.example/?token=abc", "/evil.example/"),
            ("///evil.example/x?token=abc&a=1", "/evil.example/x?a=1"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(without_token(&uri), to);
        }
    }

    #[test]
    fn origin_must_match_host_for_changes() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::HOST, "192.168.1.5:3000".parse().unwrap());
        h.insert(header::ORIGIN, "http://192.168.1.5:3000".parse().unwrap());
        assert!(!foreign_origin(&Method::GET, &h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(foreign_origin(&Method::GET, &h));
        h.remove(header::ORIGIN);
        assert!(!foreign_origin(&Method::GET, &h));
        h.remove(header::UPGRADE);
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(foreign_origin(&Method::POST, &h));
        assert!(
            !foreign_origin(&Method::GET, &h),
            "links from other sites still open the page"
        );
    }

    #[test]
    fn hosts_allowed() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let extra = vec!["box.local".to_string()];
        let check = |host: &str, bound| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            host_allowed(&h, bound, &extra)
        };
        for ok in [
            "localhost:3000",
            "127.0.0.1:3000",
            "[::1]:3000",
            "BOX.local:3000",
        ] {
            assert!(check(ok, lo), "{ok}");
        }
        for bad in [
            "evil.example:3000",
            "localhost.evil.example",
            "192.168.1.5:3000",
        ] {
            assert!(!check(bad, lo), "{bad}");
        }
        assert!(
            check("192.168.1.5:3000", any),
            "any address of ours when bound to all"
        );
        assert!(!check("rebind.evil.example:3000", any));
    }

    #[test]
    fn tokens_are_checked() {
        assert!(check_token("short").is_err());
        assert!(check_token("0123456789abcdef0123456789abcdef\n").is_ok());
        assert!(check_token("0123456789abcdef;0123456789").is_err());
        let dir = std::env::temp_dir().join(format!("cogvlm-token-{}", std::process::id()));
        std::fs::write(&dir, "abcdefghijklmnop-1234\n").unwrap();
        let t = token_from(None, Some(&dir), Some("ignored-since-file-wins".into())).unwrap();
        assert_eq!(t.as_deref(), Some("abcdefghijklmnop-1234"));
        let _ = std::fs::remove_file(&dir);
        let env = token_from(None, None, Some("from-the-environment-0".into())).unwrap();
        assert_eq!(env.as_deref(), Some("from-the-environment-0"));
        assert!(token_from(Some("x".into()), Some(&dir), None).is_err());
    }

    #[test]
    fn constant_time_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
