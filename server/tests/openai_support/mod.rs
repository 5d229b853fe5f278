//! Shared by the OpenAI API tests: in-process servers on loopback ports and the reference
//! fixture cases they are checked against.

#![allow(dead_code)] // each test file uses a part

#[path = "../common/mod.rs"]
pub mod common;
pub mod ws;

use app::backend::Backend;
use cogvlm::engine::{bundled_models_dir, EngineHandle, Registry};
use cogvlm::generate::LoadOptions;
use cogvlm::remote::{RemoteBackend, RemoteConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The bundled checkpoint the fixture cases below were generated with.
pub const MODEL: &str = "cogvlm_tiny_490";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// One reference case from `fixtures/cases.json`.
pub struct Case {
    pub query: String,
    pub history: Vec<(String, String)>,
    pub image: PathBuf,
    /// The reference's greedy answer (12 tokens, no EOS among them).
    pub text: String,
    pub generated_tokens: usize,
    /// Prompt positions, the image's included.
    pub seq_len: usize,
}

pub fn case(id: &str) -> Case {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let c = all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no fixture case {id}"));
    assert_eq!(c["model"], MODEL);
    assert_eq!(
        c["eos_generated"], false,
        "{id}: the answer must not end early"
    );
    let s = |k: &str| c[k].as_str().unwrap().to_string();
    Case {
        query: s("query"),
        history: c["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t[0].as_str().unwrap().into(), t[1].as_str().unwrap().into()))
            .collect(),
        image: fixtures().join(s("image_file")),
        text: s("generated_text_skip_special"),
        generated_tokens: c["generated_ids"].as_array().unwrap().len(),
        seq_len: c["seq_len"].as_u64().unwrap() as usize,
    }
}

/// Serves `backend` (page, server functions and `/v1`) on a free loopback port.
pub async fn serve(backend: Arc<dyn Backend>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // No page is requested here, so the site root need not hold a built bundle.
    let app = cogvlm::web::app(
        backend,
        &std::env::temp_dir(),
        addr,
        cogvlm::web::access::Access::default(),
        &cogvlm::engine::Limits::default(),
    );
    tokio::spawn(cogvlm::web::serve_app(
        listener,
        app,
        std::future::pending(),
    ));
    addr
}

/// The local worker on the bundled checkpoints, `MODEL` loaded first.
pub async fn start_local() -> SocketAddr {
    let registry = Registry::scan(&bundled_models_dir()).unwrap();
    let opts = LoadOptions {
        dtype: None,
        tokenizer: None,
        ..Default::default()
    };
    serve(Arc::new(
        EngineHandle::start(registry, opts, Some(MODEL)).unwrap(),
    ))
    .await
}

/// A server whose backend is the OpenAI API of `upstream`.
pub async fn start_remote(upstream: SocketAddr) -> SocketAddr {
    let backend = RemoteBackend::new(RemoteConfig {
        endpoint: format!("http://{upstream}/v1"),
        api_key: None,
        model: MODEL.into(),
    })
    .unwrap();
    serve(Arc::new(backend)).await
}

pub fn image_base64(case: &Case) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(&case.image).unwrap())
}
