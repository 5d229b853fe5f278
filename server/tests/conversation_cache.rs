//! A follow-up question continues from its conversation's KV cache, but only for the client that asked:
//! another client with the very same image and history starts afresh (and gets the same answer), so a fast first
//! token never tells one client what another asked.

use std::path::PathBuf;

use cogvlm::generate::{Answer, ChatRequest, LoadOptions, Pipeline, Sampling};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn caches_are_continued_only_by_their_client() {
    let opts = LoadOptions {
        dtype: Some(candle_core::DType::F32),
        tokenizer: Some(fixtures().join("tokenizer").join("tokenizer.json")),
        ..Default::default()
    };
    let mut pipe = Pipeline::load(
        &fixtures().join("models").join("cogvlm_tiny_224"),
        &opts,
        &mut |_, _| {},
    )
    .expect("tiny checkpoint");
    let image = image::open(fixtures().join("images").join("coffee.png")).expect("fixture image");
    let first = ChatRequest {
        image: Some(image),
        history: Vec::new(),
        query: "What is on the table?".into(),
        version: None,
        sampling: Sampling {
            max_new_tokens: Some(4),
            ..Sampling::greedy()
        },
    };
    let (own, other) = follow_up_as_both(&mut pipe, &first, "And its colour?");
    assert_eq!(
        other.reused_tokens, 0,
        "client b continued client a's cache"
    );
    assert!(
        own.reused_tokens > 256,
        "client a's follow-up reused only {} tokens",
        own.reused_tokens
    );
    assert_eq!(own.generated_ids, other.generated_ids);
    assert_eq!(own.prompt_tokens, other.prompt_tokens);

    // Text only: no image key to tell the conversations apart, the owner alone does.
    let hello = ChatRequest {
        image: None,
        history: Vec::new(),
        query: "Hello, who are you?".into(),
        ..first.clone()
    };
    let (own, other) = follow_up_as_both(&mut pipe, &hello, "Tell me more.");
    assert_eq!(other.reused_tokens, 0, "client b continued client a's chat");
    assert!(own.reused_tokens > 5, "reused {}", own.reused_tokens);
    assert_eq!(own.generated_ids, other.generated_ids);
}

/// Client a asks `first` (starting afresh); then the follow-up `next` is asked by client b, then by client a.
/// Returns (a's follow-up, b's follow-up).
fn follow_up_as_both(pipe: &mut Pipeline, first: &ChatRequest, next: &str) -> (Answer, Answer) {
    let answer = pipe.generate_for("client:a", first, &mut |_| true).unwrap();
    assert_eq!(answer.reused_tokens, 0);
    let follow_up = ChatRequest {
        history: vec![(first.query.clone(), answer.text.clone())],
        query: next.into(),
        ..first.clone()
    };
    let other = pipe
        .generate_for("client:b", &follow_up, &mut |_| true)
        .unwrap();
    let own = pipe
        .generate_for("client:a", &follow_up, &mut |_| true)
        .unwrap();
    (own, other)
}
