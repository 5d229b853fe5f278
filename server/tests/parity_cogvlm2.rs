//! The reference-parity suite over the vendored CogVLM2 fixtures (`server/fixtures/cogvlm2`, produced by
//! THUDM's original CogVLM2 code on tiny random-weight models with the real Llama-3 tokenizer): prompt ids,
//! token types, positions, expert routing, the tower, the 2×2 convolution, the adapter, per-position logits,
//! hidden states, teacher-forced decode and greedy tokens. The float32 cases run in f32 at rel-L2 ≤ 1e-4;
//! the two bf16 cases run in bf16 against the bf16 reference within the bf16 budgets (2e-2, argmax up to
//! near-ties). One test per case so failures name the case.

mod parity_support;

use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cogvlm2")
}

/// Runs one case (in f32, or in bf16 when the case's reference is bf16) and fails with every failed check.
fn run(id: &str) {
    parity_support::run(&fixtures(), id, "f32");
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

cases!(
    c2_224_chat_chelsea,
    c2_224_vqa_shapes,
    c2_224_base_coffee,
    c2_224_chat_history_chelsea,
    c2_224_chat_chinese_astronaut,
    c2_224_chat_textonly,
    c2_224_chat_longhistory_gui,
    c2_1344_chat_coffee,
    c2_1344_base_gui,
    c2_1344_chat_history_shapes,
    c2_224_bf16_longhistory_gui,
    c2_224_bf16_chat_coffee,
);

#[test]
fn every_fixture_case_has_a_test() {
    let ids = parity_support::case_ids(&fixtures());
    let src = include_str!("parity_cogvlm2.rs");
    for id in &ids {
        assert!(
            src.contains(&format!("    {id},")),
            "fixture case {id} has no test in tests/parity_cogvlm2.rs"
        );
    }
    assert_eq!(ids.len(), 12);
}
