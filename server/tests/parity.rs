//! The reference-parity suite over the vendored fixtures (`server/fixtures`, produced by THUDM's original HF
//! code on tiny random-weight models): prompt ids, token types, position ids, expert routing, PIL-exact resize,
//! vision outputs, per-position logits, hidden states, teacher-forced decode logits and greedy tokens, in f32
//! with rel-L2 ≤ 1e-4 (four cases in bf16 too, in `mod bf16`). One test per case so failures name the case.

use std::path::PathBuf;

mod parity_support;

use cogvlm::tools::parity::Runner;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Runs one case in `dtype` (bf16: within bf16's tolerances, `parity::Runner`).
fn run(id: &str, dtype: &str) {
    parity_support::run(&fixtures(), id, dtype);
}

#[test]
fn tokenizer_matches_reference_ids() {
    let mut runner = Runner::on_cpu(&fixtures(), candle_core::DType::F32).expect("fixture runner");
    let checks = runner
        .tokenizer_checks(&mut |_| {})
        .expect("tokenizer checks");
    assert!(!checks.is_empty());
    assert!(checks.iter().all(|c| c.ok), "{:?}", checks);
}

macro_rules! cases {
    ($dtype:literal: $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name), $dtype);
            }
        )*
    };
}

cases!(
    "f32":
    vlm490_chat_chelsea,
    vlm490_vqa_astronaut,
    vlm490_base_synth_shapes,
    vlm490_chat_history_chelsea,
    vlm490_chat_grounding_chelsea,
    vlm490_chat_region_coffee,
    vlm490_chat_textonly,
    vlm490_base_textonly,
    vlm490_vqa_textonly_history,
    vlm224_chat_coffee,
    vlm224_vqa_synth_shapes,
    vlm224_chat_chinese_chelsea,
    agent_chat_agent_gui,
    agent_chat_history_gui,
    agent_vqa_gui,
    agent_chat_old_grounding_coffee,
    agent_base_coffee,
);

/// bf16 on the cases whose towers are closest to bf16's 2e-2 budget: with bf16 towers the 224 px model's output
/// was 2.1–2.2e-2 from f32 and failed; the f16 towers (`model::precision`) bring it to ~3e-3. CogAgent runs its
/// cross encoder in f16 too.
mod bf16 {
    use super::run;

    cases!(
        "bf16":
        vlm224_chat_coffee,
        vlm224_vqa_synth_shapes,
        vlm224_chat_chinese_chelsea,
        agent_chat_agent_gui,
    );
}

#[test]
fn every_fixture_case_has_a_test() {
    let ids = parity_support::case_ids(&fixtures());
    let src = include_str!("parity.rs");
    for id in &ids {
        assert!(
            src.contains(&format!("    {id},")),
            "fixture case {id} has no test in tests/parity.rs"
        );
    }
    assert_eq!(ids.len(), 17);
}
