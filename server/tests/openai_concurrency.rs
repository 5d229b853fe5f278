//! Many API requests at once from one script, and THUDM's own client.
//!
//! - 32 concurrent `POST /v1/chat/completions` from one address all complete (queued, not refused)
//!   with the answers the same questions get alone.
//! - The request shape of THUDM's `openai_demo/openai_api_request.py` (model `cogvlm-chat-17b`, a
//!   JPEG data URL, an assistant turn and a text-only follow-up, `max_tokens` 2048), streaming and
//!   not, gets 200 and an answer, cut at the context (`finish_reason: "length"`) if it gets there.

mod openai_support;

use openai_support::common;

use base64::Engine as _;
use cogvlm::engine::{bundled_models_dir, EngineHandle, EngineOptions, Registry};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small PNG of its own for request `i`: no two requests share an image, so none continues
/// another's conversation cache (which would run the question's tokens in another chunking).
fn png(i: usize) -> String {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        let v = (x * 7 + y * 13 + (i as u32) * 29) as u8;
        image::Rgb([v, v.wrapping_mul(3), (i as u8).wrapping_mul(41)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

fn body(i: usize) -> String {
    let question = [
        "Describe the picture.",
        "What colour is it?",
        "What is this?",
    ][i % 3];
    json!({
        "model": openai_support::MODEL, "temperature": 0, "max_tokens": 8,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", png(i))}},
        ]}],
    })
    .to_string()
}

async fn post(addr: SocketAddr, body: &str, cookie: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if let Some(c) = cookie {
        headers.push(("Cookie", cogvlm::web::access::client_cookie(c)));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, text) =
        common::http(addr, "POST", "/v1/chat/completions", &headers, body).await;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

fn answer(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no answer in {v}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_requests_from_one_address_get_their_solo_answers() {
    const N: usize = 32;
    let addr = openai_support::start_local().await;
    let mut alone = Vec::new();
    for i in 0..N {
        // Each alone as a client of its own.
        let (status, v) = post(addr, &body(i), Some(&format!("solo{i}"))).await;
        assert_eq!(status, 200, "{v}");
        alone.push(answer(&v));
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..N)
        .map(|i| tokio::spawn(async move { post(addr, &body(i), None).await }))
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "request {i} from the same address: {v}");
        assert_eq!(
            answer(&v),
            alone[i],
            "request {i}: another answer than alone"
        );
    }
    println!(
        "{N} concurrent requests from 127.0.0.1: all 200 with their solo answers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A models folder whose checkpoint is named like THUDM's (`cogvlm-chat-hf`): the bundled tiny
/// 224 px checkpoint, linked.
fn thudm_models_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cogvlm-thudm-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bundled = bundled_models_dir();
    std::os::unix::fs::symlink(bundled.join("cogvlm_tiny_224"), dir.join("cogvlm-chat-hf"))
        .unwrap();
    let tokenizer = bundled.parent().unwrap().join("tokenizer/tokenizer.json");
    std::os::unix::fs::symlink(tokenizer, dir.join("tokenizer.json")).unwrap();
    dir
}

fn jpeg_data_url() -> String {
    let img = image::open(common::image_path("chelsea.png"))
        .unwrap()
        .to_rgb8();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(out.into_inner());
    format!("data:image/jpeg;base64,{b64}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thudm_openai_demo_request_gets_an_answer() {
    let dir = thudm_models_dir();
    let registry = Registry::scan(&dir).unwrap();
    let engine =
        EngineHandle::start_with(registry, EngineOptions::default(), Some("cogvlm-chat-hf"))
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.models().current.is_none() {
        assert!(Instant::now() < deadline, "the checkpoint did not load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = openai_support::serve(Arc::new(engine)).await;

    let (status, _, models) = common::http(addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["cogvlm-chat-hf", "cogvlm-chat-17b", "THUDM/cogvlm-chat-hf"] {
        assert!(ids.contains(&id), "{id} not listed: {ids:?}");
    }

    // As `openai_api_request.py` builds it (its defaults: temperature 0.8, top_p 0.8).
    let messages = json!([
        {"role": "user", "content": [
            {"type": "text", "text": "What’s in this image?"},
            {"type": "image_url", "image_url": {"url": jpeg_data_url()}},
        ]},
        {"role": "assistant", "content": "The image displays a wooden boardwalk extending through a \
            vibrant green grassy wetland."},
        {"role": "user", "content": "Do you think this is a spring or winter photo?"},
    ]);
    for stream in [false, true] {
        let body = json!({
            "model": "cogvlm-chat-17b", "messages": messages, "stream": stream,
            "max_tokens": 2048, "temperature": 0.8, "top_p": 0.8,
        })
        .to_string();
        let (status, _, text) = common::http(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await;
        assert_eq!(status, 200, "stream {stream}: {text}");
        let (content, finish) = if stream {
            // The seed's client reads `data: ` lines and each chunk's delta content.
            let mut content = String::new();
            let mut finish = Value::Null;
            for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if line == "[DONE]" {
                    break;
                }
                let chunk: Value = serde_json::from_str(line).unwrap();
                let choice = &chunk["choices"][0];
                content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
                if !choice["finish_reason"].is_null() {
                    finish = choice["finish_reason"].clone();
                }
            }
            (content, finish)
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            let usage = &v["usage"];
            let total = usage["total_tokens"].as_u64().unwrap();
            // 2048 new tokens do not fit after the image and the history: the answer stops at
            // the context, not refused.
            if v["choices"][0]["finish_reason"] == "length" {
                assert_eq!(total, 2048, "{usage}");
            }
            assert!(total <= 2048, "{usage}");
            (answer(&v), v["choices"][0]["finish_reason"].clone())
        };
        assert!(!content.is_empty(), "stream {stream}: an empty answer");
        assert!(finish == "length" || finish == "stop", "{finish}");
        println!(
            "openai_api_request.py's request (stream {stream}): 200, {} characters, finish_reason {finish}",
            content.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
