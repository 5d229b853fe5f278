//! A conversation longer than the context keeps going: the oldest turns are left out of the prompt (the image
//! and the latest turns kept), the stats say how many, and the answer is the one the shorter conversation gets.
//! The OpenAI API follows the same rule instead of refusing the request.

mod openai_support;

use openai_support::common;

use base64::Engine as _;
use cogvlm::engine::{bundled_models_dir, EngineHandle, EngineOptions, Registry};
use cogvlm::generate::history_fit::ANSWER_ROOM;
use cogvlm::generate::{ChatRequest, LoadOptions, Pipeline};
use protocol::Sampling;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fourteen earlier turns of about 80 positions each: with the 490 px image (1227 positions) they do not fit
/// 2048.
fn long_history() -> Vec<(String, String)> {
    (0..14)
        .map(|i| {
            (
                format!("Question number {i}: what else can you see in the picture, in detail?"),
                format!(
                    "Answer number {i}: a cat lies on a red sofa next to a blanket, a remote control \
                     and a pillow; the light comes from a window on the left side of the room."
                ),
            )
        })
        .collect()
}

#[test]
fn oldest_turns_are_left_out_and_the_answer_is_the_shorter_conversations() {
    let fixtures = openai_support::fixtures();
    let opts = LoadOptions {
        dtype: Some(candle_core::DType::F32),
        tokenizer: Some(fixtures.join("tokenizer").join("tokenizer.json")),
        ..Default::default()
    };
    let mut pipe = Pipeline::load(
        &fixtures.join("models").join(openai_support::MODEL),
        &opts,
        &mut |_, _| {},
    )
    .expect("tiny checkpoint");
    let image = image::open(fixtures.join("images").join("chelsea.png")).expect("fixture image");
    let history = long_history();
    let req = ChatRequest {
        image: Some(image),
        history: history.clone(),
        query: "And the colour of the sofa?".into(),
        version: None,
        sampling: Sampling {
            max_new_tokens: Some(6),
            ..Sampling::greedy()
        },
    };
    let prompt_len = |pipe: &mut Pipeline, from: usize| {
        let shorter = ChatRequest {
            history: history[from..].to_vec(),
            ..req.clone()
        };
        pipe.prepare(&shorter).unwrap().input.input_ids.len()
    };
    assert!(
        prompt_len(&mut pipe, 0) + 6 > 2048,
        "the test conversation must not fit"
    );

    let long = pipe
        .generate(&req, &mut |_| true)
        .expect("an answer, not a refusal");
    let k = long.dropped_turns;
    assert!(k > 0 && k < history.len(), "left out {k} turns");
    assert_eq!(long.context, 2048);
    // The fewest turns: one more kept would leave less than the answer's room (6 new tokens here).
    assert!(long.prompt_tokens + 6 <= 2048, "{}", long.prompt_tokens);
    assert!(prompt_len(&mut pipe, k - 1) + 6 > 2048);
    assert_eq!(long.prompt_tokens, prompt_len(&mut pipe, k));

    let shorter = ChatRequest {
        history: history[k..].to_vec(),
        ..req.clone()
    };
    let short = pipe.generate(&shorter, &mut |_| true).unwrap();
    assert_eq!(short.dropped_turns, 0);
    assert_eq!(long.generated_ids, short.generated_ids);

    // Without max_new_tokens the answer keeps ANSWER_ROOM positions free.
    let open = ChatRequest {
        sampling: Sampling {
            max_new_tokens: None,
            max_length: 2048,
            ..Sampling::greedy()
        },
        ..req.clone()
    };
    let mut first = None;
    let stats = pipe
        .generate(&open, &mut |_| first.replace(()).is_none())
        .unwrap();
    assert!(stats.dropped_turns > k, "{} vs {k}", stats.dropped_turns);
    assert!(stats.prompt_tokens + ANSWER_ROOM <= 2048);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_leaves_out_old_turns_instead_of_refusing() {
    let registry = Registry::scan(&bundled_models_dir()).unwrap();
    let engine = EngineHandle::start_with(
        registry,
        EngineOptions::default(),
        Some(openai_support::MODEL),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.models().current.is_none() {
        assert!(Instant::now() < deadline, "the checkpoint did not load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = openai_support::serve(Arc::new(engine)).await;
    let png = std::fs::read(openai_support::fixtures().join("images/chelsea.png")).unwrap();
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    let mut messages = Vec::new();
    for (i, (q, a)) in long_history().into_iter().enumerate() {
        let content = if i == 0 {
            json!([{"type": "text", "text": q}, {"type": "image_url", "image_url": {"url": url}}])
        } else {
            json!(q)
        };
        messages.push(json!({"role": "user", "content": content}));
        messages.push(json!({"role": "assistant", "content": a}));
    }
    messages.push(json!({"role": "user", "content": "And the colour of the sofa?"}));
    let body = json!({
        "model": openai_support::MODEL, "temperature": 0, "max_tokens": 4, "messages": messages,
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
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt + 4 <= 2048 && prompt > 1227, "{}", v["usage"]);
}
