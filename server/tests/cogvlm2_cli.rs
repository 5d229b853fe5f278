//! CogVLM2 through the command line as a user runs it, on the tiny CogVLM2 fixture checkpoint (its folder
//! carries the Llama-3 tokenizer): `make-data` → `train` (LoRA) → `merge` → `eval`. The loss falls, the
//! merged checkpoint answers exactly as the base with the adapter does, and every file written carries the
//! `"format": "pt"` header PEFT and transformers need.

use std::path::{Path, PathBuf};
use std::process::Command;

use cogvlm::model::weights::files_without_pt_format;

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/cogvlm2_tiny_224")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cogvlm2-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs `cogvlm ARGS`; returns its stdout, failing the test with its stderr when it fails.
fn cogvlm(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cogvlm"))
        .args(args)
        .output()
        .expect("run cogvlm");
    assert!(
        out.status.success(),
        "cogvlm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// The answers `eval` wrote, in order.
fn answers(jsonl: &Path) -> Vec<String> {
    std::fs::read_to_string(jsonl)
        .expect("eval output")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .map(|v| v["got"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn cogvlm2_lora_trains_merges_and_answers_as_the_adapter() {
    let (data, adapter, merged) = (tmp("data"), tmp("adapter"), tmp("merged"));
    cogvlm(&[
        "make-data",
        "--out",
        p(&data),
        "--count",
        "4",
        "--seed",
        "3",
        "--kinds",
        "color",
    ]);
    cogvlm(&[
        "train",
        "--model",
        p(&model()),
        "--data",
        p(&data),
        "--out",
        p(&adapter),
        "--steps",
        "6",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--lr",
        "2e-2",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--log-every",
        "1",
        "--dtype",
        "f32",
    ]);
    let losses: Vec<f64> = std::fs::read_to_string(adapter.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < losses[0] * 0.9, "loss {losses:?}");
    assert!(adapter.join("adapter_config.json").is_file());

    cogvlm(&[
        "merge",
        "--model",
        p(&model()),
        "--lora",
        p(&adapter),
        "--out",
        p(&merged),
    ]);
    for dir in [&adapter, &merged] {
        assert_eq!(files_without_pt_format(dir).unwrap(), Vec::<PathBuf>::new());
    }

    let (with_lora, from_merged, base) = (
        tmp("with-lora.jsonl"),
        tmp("merged.jsonl"),
        tmp("base.jsonl"),
    );
    let eval = |model: &Path, lora: Option<&Path>, out: &Path| {
        let mut args = vec![
            "eval",
            "--model",
            p(model),
            "--data",
            p(&data),
            "--max-new-tokens",
            "6",
        ];
        args.extend(["--dtype", "f32", "--out", p(out)]);
        if let Some(l) = lora {
            args.extend(["--lora", p(l)]);
        }
        cogvlm(&args);
        answers(out)
    };
    let a = eval(&model(), Some(&adapter), &with_lora);
    assert_eq!(a.len(), 4);
    assert_eq!(eval(&merged, None, &from_merged), a);
    assert_ne!(
        eval(&model(), None, &base),
        a,
        "the adapter changed nothing"
    );
}
