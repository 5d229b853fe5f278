//! Training parity over the vendored training fixtures (`server/fixtures/training`, one LoRA training step per
//! example computed with THUDM's original code, PyTorch and PEFT): inputs and labels rebuilt from each example's
//! text, loss, per-token NLL, answer logits, the adapted vision tower's output, every LoRA gradient by its PEFT
//! key and, on the first example of each model, the full fine-tuning gradients. One test per example so
//! failures name it.

use std::path::PathBuf;

use cogvlm::tools::parity::Check;
use cogvlm::train::parity::TrainingRunner;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/training")
}

fn run(id: &str) -> Vec<Check> {
    let runner = TrainingRunner::new(&fixtures()).expect("training fixture runner");
    let entry = runner
        .examples()
        .into_iter()
        .find(|e| e.get("id").and_then(|v| v.as_str()) == Some(id))
        .unwrap_or_else(|| panic!("example {id} not in index.json"));
    let checks = runner.run_example(&entry, &mut |c| println!("{c}"));
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{id}: {} failed check(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
    checks
}

/// Names of the checks that ran, for asserting that the expected kinds were all checked.
fn count(checks: &[Check], prefix: &str) -> usize {
    checks.iter().filter(|c| c.name.starts_with(prefix)).count()
}

#[test]
fn vlm224_lora_shapes() {
    let checks = run("vlm224_lora_shapes");
    // 2 LM layers × 2 experts × {A, B} + 3 EVA layers × {A, B}.
    assert_eq!(count(&checks, "lora_grad."), 14);
    assert!(count(&checks, "full_grad.") >= 20);
    assert_eq!(count(&checks, "full_grad_frobenius.lm_head"), 1);
    assert_eq!(count(&checks, "base_loss"), 1);
}

#[test]
fn vlm224_lora_history_box_chelsea() {
    let checks = run("vlm224_lora_history_box_chelsea");
    assert_eq!(count(&checks, "lora_grad."), 14);
    assert_eq!(count(&checks, "full_grad"), 0);
}

#[test]
fn agent_lora_gui_box() {
    let checks = run("agent_lora_gui_box");
    // 2 LM layers × {language, vision, cross query, cross key_value} × {A, B} + 2 EVA layers × {A, B}.
    assert_eq!(count(&checks, "lora_grad."), 20);
    assert!(count(&checks, "full_grad.model.cross_vision.") >= 5);
}

#[test]
fn agent_lora_history_coffee() {
    let checks = run("agent_lora_history_coffee");
    assert_eq!(count(&checks, "lora_grad."), 20);
}
