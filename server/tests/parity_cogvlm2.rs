//! The reference-parity suite over the vendored CogVLM2 fixtures (`server/fixtures/cogvlm2`, produced by
//! THUDM's original CogVLM2 code on tiny random-weight models with the real Llama-3 tokenizer): prompt ids,
//! token types, positions, expert routing, the tower, the 2×2 convolution, the adapter, per-position logits,
//! hidden states, teacher-forced decode and greedy tokens. The float32 cases run in f32 at rel-L2 ≤ 1e-4;
//! the two bf16 cases run in bf16 against the bf16 reference within the bf16 budgets (2e-2, argmax up to
//! near-ties). One test per case so failures name the case.

use std::path::PathBuf;

use cogvlm::parity::{Check, Runner};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cogvlm2")
}

/// Runs one case (in f32, or in bf16 when the case's reference is bf16) and fails with every failed check.
fn run(id: &str) {
    let mut runner = Runner::new(&fixtures(), "cpu", Some("f32")).expect("fixture runner");
    let case = runner
        .cases()
        .expect("cases.json")
        .into_iter()
        .find(|c| c.get("id").and_then(|v| v.as_str()) == Some(id))
        .unwrap_or_else(|| panic!("case {id} not in cases.json"));
    let checks = runner.run_case(&case, &mut |_| {});
    assert_report(id, &checks);
}

fn assert_report(id: &str, checks: &[Check]) {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.to_string())
        .collect();
    for c in checks {
        println!("{c}");
    }
    assert!(checks.len() >= 10, "{id}: only {} checks ran", checks.len());
    assert!(
        failed.is_empty(),
        "{id}: {} failed check(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
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
    let runner = Runner::new(&fixtures(), "cpu", Some("f32")).expect("fixture runner");
    let ids: Vec<String> = runner
        .cases()
        .expect("cases.json")
        .iter()
        .filter_map(|c| c.get("id").and_then(|v| v.as_str()).map(str::to_string))
        .collect();
    let src = include_str!("parity_cogvlm2.rs");
    for id in &ids {
        assert!(
            src.contains(&format!("    {id},")),
            "fixture case {id} has no test in tests/parity_cogvlm2.rs"
        );
    }
    assert_eq!(ids.len(), 12);
}
