//! What makes the page light to load: compressed responses, precompressed static files and the
//! caching headers that let a reload skip the bundle.
//!
//! Caching: `build.sh` puts a content hash in the bundle's file names (`pkg/cogvlm.<hash>.wasm`,
//! listed in `pkg/hash.txt`, from which the rendered page links them), so those files never
//! change under their name and are cached as immutable: a reload does not even ask for them, where
//! `no-cache` with `Last-Modified` would still cost a round trip per file, which is what hurts on
//! a phone. Every other static file (favicon, a bundle built without hashes) is revalidated on
//! each use (`no-cache`; `ServeDir` answers `If-Modified-Since` with 304).
//!
//! Compression: br or gzip as the client asks, on the page and the API; the bundle is
//! precompressed by `build.sh` (brotli at its slowest, smallest setting, which would cost
//! seconds per request), and served as is. tower-http's default predicate leaves alone what
//! must not wait in a compressor: SSE (`text/event-stream`, the streamed chat completions),
//! images and tiny bodies; websocket upgrades have no body at all.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::path::{Path, PathBuf};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;

/// Written by `build.sh` into `pkg/`: one `js: <hash>`, `wasm: <hash>`, `css: <hash>` line each.
pub const HASH_FILE: &str = "hash.txt";

/// Hex digits of the content hash in a bundle file name.
const HASH_LEN: usize = 16;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The hash file of the bundle in `site_root`, as an absolute path, if the bundle was built
/// with hashed names.
pub fn hash_file(site_root: &Path) -> Option<PathBuf> {
    let path = std::path::absolute(site_root.join("pkg").join(HASH_FILE)).ok()?;
    path.is_file().then_some(path)
}

/// The static files of `site_root` (`pkg/` and the public files), precompressed variants
/// preferred. What is not a file goes to `not_found`.
pub fn static_files<F>(site_root: &Path, not_found: F) -> ServeDir<F> {
    ServeDir::new(site_root)
        .append_index_html_on_directories(false)
        .precompressed_br()
        .precompressed_gzip()
        .call_fallback_on_method_not_allowed(true)
        .fallback(not_found)
}

/// br / gzip, negotiated, for the responses that were not compressed at build time.
pub fn compression() -> CompressionLayer {
    CompressionLayer::new().br(true).gzip(true)
}

/// Whether the last segment of `path` is a hashed bundle name: `<name>.<16 hex>.<ext>`.
fn is_hashed(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or_default();
    let mut parts = file.rsplit('.');
    let (Some(ext), Some(hash), Some(stem)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !ext.is_empty()
        && !stem.is_empty()
        && hash.len() == HASH_LEN
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Middleware: `Cache-Control` for static files (the responses with a `Last-Modified` and the
/// 304s, which only `ServeDir` makes): immutable for hashed bundle names, revalidated for the rest.
pub async fn cache_control(req: Request, next: Next) -> Response {
    let hashed = req.uri().path().starts_with("/pkg/") && is_hashed(req.uri().path());
    let mut response = next.run(req).await;
    let status = response.status();
    let headers = response.headers_mut();
    let static_file = status == StatusCode::NOT_MODIFIED
        || (status == StatusCode::OK && headers.contains_key(header::LAST_MODIFIED));
    if static_file && !headers.contains_key(header::CACHE_CONTROL) {
        let value = if hashed { IMMUTABLE } else { REVALIDATE };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_are_told_apart_from_plain_ones() {
        assert!(is_hashed("/pkg/cogvlm.0123456789abcdef.wasm"));
        assert!(is_hashed("/pkg/cogvlm.0123456789abcdef.css"));
        assert!(!is_hashed("/pkg/cogvlm.js"));
        assert!(!is_hashed("/pkg/cogvlm_bg.wasm"));
        assert!(!is_hashed("/pkg/cogvlm.0123456789abcdeg.js"), "not hex");
        assert!(!is_hashed("/pkg/cogvlm.0123456789abcde.js"), "15 digits");
        assert!(!is_hashed("/pkg/.0123456789abcdef.js"), "no stem");
        assert!(!is_hashed("/pkg/0123456789abcdef.js"));
    }
}
