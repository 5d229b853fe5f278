//! The page and the API are compressed as the client asks; the bundle is served from its
//! precompressed copies under content-hashed names the page links, cached for good, while other
//! static files are revalidated (304).

use app::backend::{Backend, Generation};
use cogvlm::web::access::Access;
use protocol::{CheckpointInfo, Event, GenerateRequest, ModelKind, ModelsState, PromptVersion};
use reqwest::header::{HeaderMap, ACCEPT_ENCODING};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Lists one checkpoint; these tests never generate.
struct Listing;

impl Backend for Listing {
    fn models(&self) -> ModelsState {
        ModelsState {
            checkpoints: vec![CheckpointInfo {
                name: "listed".into(),
                kind: ModelKind::CogVlm,
                image_size: 224,
                default_version: PromptVersion::Chat,
                bundled: true,
            }],
            current: Some("listed".into()),
            ..Default::default()
        }
    }

    fn generate(&self, _req: GenerateRequest, _client: &str) -> Generation {
        unreachable!("no generation in these tests")
    }

    fn load(&self, _name: String) -> mpsc::Receiver<Event> {
        mpsc::channel(1).1
    }
}

const JS_HASH: &str = "0123456789abcdef";
const WASM_HASH: &str = "fedcba9876543210";
const CSS_HASH: &str = "00112233445566aa";

/// A site laid out as `build.sh` writes it: hashed bundle, a brotli copy of the script, a hash
/// file and a public file.
fn site(test: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("cogvlm-assets-{test}-{}", std::process::id()));
    let pkg = root.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let js = "export default function init() {}\n".repeat(40);
    std::fs::write(pkg.join(format!("cogvlm.{JS_HASH}.js")), &js).unwrap();
    std::fs::write(pkg.join(format!("cogvlm.{JS_HASH}.js.br")), b"brotli bytes").unwrap();
    std::fs::write(pkg.join(format!("cogvlm.{WASM_HASH}.wasm")), b"\0asm").unwrap();
    std::fs::write(pkg.join(format!("cogvlm.{CSS_HASH}.css")), "body {}").unwrap();
    std::fs::write(
        pkg.join("hash.txt"),
        format!("js: {JS_HASH}\nwasm: {WASM_HASH}\ncss: {CSS_HASH}\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("favicon.svg"),
        "<svg xmlns='http://www.w3.org/2000/svg'/>",
    )
    .unwrap();
    root
}

async fn serve(site: &Path) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = cogvlm::web::app(
        Arc::new(Listing),
        site,
        addr,
        Access::default(),
        &cogvlm::engine::Limits::default(),
    );
    tokio::spawn(cogvlm::web::serve_app(
        listener,
        app,
        std::future::pending(),
    ));
    addr
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// The page without its per-response script nonce.
fn without_nonce(page: &str) -> String {
    let start = page.find("nonce=\"").expect("a nonce") + 7;
    let len = page[start..].find('"').unwrap();
    page.replace(&page[start..start + len], "")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_compressed_as_asked_and_links_the_hashed_bundle() {
    let site = site("page");
    let addr = serve(&site).await;

    let (status, headers, plain) = get(addr, "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), None);
    let page = String::from_utf8(plain).unwrap();
    for linked in [
        format!("/pkg/cogvlm.{JS_HASH}.js"),
        format!("/pkg/cogvlm.{WASM_HASH}.wasm"),
        format!("/pkg/cogvlm.{CSS_HASH}.css"),
    ] {
        assert!(page.contains(&linked), "the page links {linked}");
    }
    assert!(
        page.contains("listed"),
        "the checkpoint list is rendered before hydration"
    );

    let (_, headers, gz) = get(addr, "/", &[(ACCEPT_ENCODING.as_str(), "gzip")]).await;
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(without_nonce(&unzipped), without_nonce(&page));
    assert!(gz.len() < page.len() / 2, "{} of {}", gz.len(), page.len());

    let (_, headers, _) = get(addr, "/", &[(ACCEPT_ENCODING.as_str(), "br, gzip")]).await;
    assert_eq!(header(&headers, "content-encoding"), Some("br"));

    // A server function's JSON answer, large enough to be worth it, is compressed too.
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/v1/models"))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "content-encoding"), Some("gzip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hashed_bundle_is_cached_for_good_and_other_files_revalidate() {
    let site = site("cache");
    let addr = serve(&site).await;
    let js = format!("/pkg/cogvlm.{JS_HASH}.js");

    // The precompressed copy as it is on disk, cached as immutable.
    let (status, headers, body) = get(addr, &js, &[(ACCEPT_ENCODING.as_str(), "br, gzip")]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("br"));
    assert_eq!(body, b"brotli bytes");
    let cache = header(&headers, "cache-control").unwrap();
    assert!(
        cache.contains("immutable") && cache.contains("max-age=31536000"),
        "{cache}"
    );

    // No brotli copy for gzip: compressed on the way, same caching.
    let (_, headers, gz) = get(addr, &js, &[(ACCEPT_ENCODING.as_str(), "gzip")]).await;
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(
        unzipped,
        std::fs::read_to_string(site.join(&js[1..])).unwrap()
    );
    assert!(header(&headers, "cache-control")
        .unwrap()
        .contains("immutable"));

    // A public file without a hash: revalidated each time, 304 when unchanged.
    let (status, headers, _) = get(addr, "/favicon.svg", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    let modified = header(&headers, "last-modified").unwrap().to_string();
    let (status, headers, body) =
        get(addr, "/favicon.svg", &[("if-modified-since", &modified)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));

    // The page itself is never cached as a static file, and a missing file is the app's 404.
    let (_, headers, _) = get(addr, "/", &[]).await;
    assert_eq!(header(&headers, "cache-control"), None);
    let (status, _, _) = get(addr, "/pkg/cogvlm.ffffffffffffffff.js", &[]).await;
    assert_eq!(status, 404);
}
