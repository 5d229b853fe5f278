//! Fine-tuning end to end on the tiny fixture checkpoints: the adapters `cogvlm train` creates have PEFT's key
//! names and config (against a hand-written list, and against the adapters PEFT itself wrote for the training
//! fixtures); a few LoRA and full steps on generated scenes lower the loss and write what `--resume`, `eval`
//! and `merge` read; and a merged checkpoint answers exactly as the checkpoint with `--lora`.

use protocol::Sampling;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use cogvlm::generate::{ChatRequest, LoadOptions, Pipeline};
use cogvlm::model::lora::{Adapter, LoraConfig, LoraPair};
use cogvlm::model::weights::files_without_pt_format;
use cogvlm::train::make_data::Kind;
use cogvlm::train::optim::Schedule;
use cogvlm::train::run::{new_adapter, TrainArgs, DEFAULT_TARGETS};

mod finetune_support;
use finetune_support::*;

/// The default targets (the PEFT demo's) on the tiny CogVLM: every QKV of both experts and of the vision
/// tower, written out by hand.
#[test]
fn new_adapter_keys_match_a_hand_written_peft_list() {
    let cfg = config("cogvlm_tiny_224");
    let lc = LoraConfig::new(8, 32.0, 0.1, &targets(&DEFAULT_TARGETS), "cogvlm_tiny_224");
    let a = new_adapter(lc, &cfg, 0).unwrap();
    let mut want = Vec::new();
    for l in 0..2 {
        for e in ["language", "vision"] {
            for h in ["A", "B"] {
                want.push(format!(
                    "base_model.model.model.layers.{l}.self_attn.{e}_expert_query_key_value.lora_{h}.weight"
                ));
            }
        }
    }
    for l in 0..3 {
        for h in ["A", "B"] {
            want.push(format!(
                "base_model.model.model.vision.transformer.layers.{l}.attention.query_key_value.lora_{h}.weight"
            ));
        }
    }
    want.sort();
    let mut got: Vec<String> = a.tensors().into_iter().map(|(k, _)| k).collect();
    got.sort();
    assert_eq!(got, want);
    // Shapes: A [r, in], B [out, r]; B starts at zero, so the new adapter changes nothing yet.
    let p = &a.modules["model.layers.0.self_attn.language_expert_query_key_value"];
    assert_eq!(p.a.dims(), [8, 24]);
    assert_eq!(p.b.dims(), [72, 8]);
    assert_eq!(
        p.b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let p = &a.modules["model.vision.transformer.layers.2.attention.query_key_value"];
    assert_eq!(
        (p.a.dims(), p.b.dims()),
        ([8, 40].as_slice(), [120, 8].as_slice())
    );

    // The config PEFT writes, field by field.
    let dir = tmp("keys");
    a.save(&dir).unwrap();
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 8);
    assert_eq!(cfg_json["lora_alpha"], 32);
    assert_eq!(cfg_json["lora_dropout"], 0.1);
    assert_eq!(cfg_json["task_type"], "CAUSAL_LM");
    assert_eq!(cfg_json["bias"], "none");
    assert_eq!(cfg_json["base_model_name_or_path"], "cogvlm_tiny_224");
    assert_eq!(
        cfg_json["target_modules"],
        serde_json::json!(DEFAULT_TARGETS)
    );
}

/// With the targets PEFT was given for the training fixtures, a new adapter has exactly the keys and shapes of
/// the adapter PEFT saved (CogAgent's cross-attention included).
#[test]
fn new_adapter_keys_match_the_ones_peft_wrote() {
    for model in ["cogvlm_tiny_224", "cogagent_tiny"] {
        let peft = Adapter::load(&fixtures().join("training").join(model).join("adapter")).unwrap();
        let ours = new_adapter(peft.config.clone(), &config(model), 1).unwrap();
        let shapes = |a: &Adapter| {
            a.tensors()
                .into_iter()
                .map(|(k, t)| (k, t.dims().to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shapes(&ours), shapes(&peft), "{model}");
    }
}

fn train_args(model: &Path, data: &Path, out: &Path, full: bool, steps: usize) -> TrainArgs {
    TrainArgs {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        valid: Some(data.to_path_buf()),
        valid_split: 0.0,
        full,
        freeze: Vec::new(),
        zero: Vec::new(),
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: targets(&DEFAULT_TARGETS),
        lr: if full { 3e-3 } else { 2e-2 },
        weight_decay: 0.0,
        schedule: Schedule::Linear,
        warmup: 0.0,
        epochs: None,
        steps: Some(steps),
        batch: 2,
        grad_accum: 2,
        max_grad_norm: 1.0,
        seed: 5,
        eval_every: steps,
        eval_samples: 0,
        save_every: 2,
        log_every: 1,
        resume: None,
        load: LoadOptions {
            dtype: Some(candle_core::DType::F32),
            tokenizer: Some(tokenizer()),
            ..Default::default()
        },
        version: None,
    }
}

fn log_lines(out: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == kind)
        .collect()
}

/// LoRA training on two fixed examples: the loss falls, the result is a PEFT adapter, a checkpoint-N folder
/// resumes, and the adapter loads with `--lora`.
#[test]
fn lora_steps_lower_the_loss_and_resume() {
    let data = tmp("lora-data");
    make_data(&data, vec![Kind::Color], 2, 3);
    let out = tmp("lora-out");
    let model = model_dir("cogvlm_tiny_224");
    cogvlm::train::run::run(&train_args(&model, &data, &out, false, 6)).unwrap();
    let train = log_lines(&out, "train");
    assert_eq!(train.len(), 6);
    let first = train[0]["loss"].as_f64().unwrap();
    let last = train[5]["loss"].as_f64().unwrap();
    assert!(last < first * 0.8, "loss {first} → {last}");
    assert_eq!(log_lines(&out, "eval").len(), 1);
    let adapter = Adapter::load(&out).unwrap();
    adapter.check_against(&config("cogvlm_tiny_224")).unwrap();
    assert!(out
        .join("checkpoint-4")
        .join("adapter_model.safetensors")
        .is_file());

    // Resuming at step 4 of 6 runs steps 5 and 6 only.
    let out2 = tmp("lora-resume");
    let mut args = train_args(&model, &data, &out2, false, 6);
    args.resume = Some(out.join("checkpoint-4"));
    cogvlm::train::run::run(&args).unwrap();
    let steps: Vec<u64> = log_lines(&out2, "train")
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [5, 6]);

    // A full run cannot resume a LoRA one.
    let mut args = train_args(&model, &data, &tmp("lora-bad"), true, 6);
    args.resume = Some(out.join("checkpoint-4"));
    let e = format!("{:#}", cogvlm::train::run::run(&args).unwrap_err());
    assert!(e.contains("LoRA"), "{e}");
}

/// Full fine-tuning: the loss falls, and the result is a checkpoint folder every command loads.
#[test]
fn full_steps_lower_the_loss_and_write_a_checkpoint() {
    let data = tmp("full-data");
    make_data(&data, vec![Kind::Count], 2, 4);
    let out = tmp("full-out");
    cogvlm::train::run::run(&train_args(
        &model_dir("cogvlm_tiny_224"),
        &data,
        &out,
        true,
        5,
    ))
    .unwrap();
    let train = log_lines(&out, "train");
    let first = train[0]["loss"].as_f64().unwrap();
    let last = train.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < first * 0.8, "loss {first} → {last}");
    let opts = LoadOptions {
        ..Default::default()
    };
    Pipeline::load(&out, &opts, &mut |_, _| {}).expect("the trained checkpoint loads");
    // transformers' from_pretrained needs `"format": "pt"` in every file's header (the model, each
    // checkpoint-N and the optimizer state).
    assert_eq!(
        files_without_pt_format(&out).unwrap(),
        Vec::<PathBuf>::new()
    );
}

/// The base model's weights and those of the run's `checkpoint-2` (a periodic save: every weight in f32).
fn weights_before_and_at_step_2(
    model: &Path,
    out: &Path,
) -> (
    std::collections::HashMap<String, candle_core::Tensor>,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let cpu = candle_core::Device::Cpu;
    let load = |p: std::path::PathBuf| candle_core::safetensors::load(p, &cpu).unwrap();
    (
        load(model.join("model.safetensors")),
        load(out.join("checkpoint-2").join("model.safetensors")),
    )
}

#[test]
fn freeze_keeps_the_named_weights_as_they_were() {
    let data = tmp("freeze-data");
    make_data(&data, vec![Kind::Color], 2, 4);
    let out = tmp("freeze-out");
    let model = model_dir("cogvlm_tiny_224");
    // Three steps: `checkpoint-2` is the periodic save, which keeps every weight in f32.
    let mut args = train_args(&model, &data, &out, true, 3);
    args.freeze = vec!["model.vision.".into()];
    cogvlm::train::run::run(&args).unwrap();
    let (before, after) = weights_before_and_at_step_2(&model, &out);
    let same = |name: &str| {
        let a = before[name].to_dtype(candle_core::DType::F32).unwrap();
        let diff = (a - &after[name]).unwrap().abs().unwrap();
        diff.max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0
    };
    let (mut frozen, mut trained) = (0, 0);
    for name in before.keys() {
        if name.starts_with("model.vision.") {
            assert!(same(name), "{name} moved although frozen");
            frozen += 1;
        } else if !same(name) {
            trained += 1;
        }
    }
    assert!(
        frozen > 10 && trained > 10,
        "{frozen} frozen, {trained} trained"
    );

    // A prefix that names nothing is a mistake, said before any step.
    args.freeze = vec!["model.vison.".into()];
    args.out = tmp("freeze-typo");
    let err = cogvlm::train::run::run(&args).unwrap_err().to_string();
    assert!(err.contains("--freeze model.vison."), "{err}");
}

#[test]
fn zero_and_freeze_hold_the_named_weights_at_zero() {
    let data = tmp("zero-data");
    make_data(&data, vec![Kind::Color], 2, 4);
    let out = tmp("zero-out");
    let model = model_dir("cogvlm_tiny_224");
    let dense = "model.layers.0.self_attn.vision_expert_dense.";
    let mut args = train_args(&model, &data, &out, true, 3);
    args.zero = vec![dense.into()];
    args.freeze = vec![dense.into()];
    cogvlm::train::run::run(&args).unwrap();
    let (before, after) = weights_before_and_at_step_2(&model, &out);
    let max_abs = |t: &candle_core::Tensor| {
        let t = t.to_dtype(candle_core::DType::F32).unwrap();
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let name = format!("{dense}weight");
    assert!(
        max_abs(&before[&name]) > 0.0,
        "the fixture's {name} is drawn, not zero"
    );
    assert_eq!(max_abs(&after[&name]), 0.0, "{name} left zero");
    // The same layer's vision MLP was not named: it trains (the last layer's vision outputs reach no loss).
    let other = "model.layers.0.mlp.vision_mlp.down_proj.weight";
    let moved = (before[other].to_dtype(candle_core::DType::F32).unwrap() - &after[other]).unwrap();
    assert!(max_abs(&moved) > 0.0, "{other} trained");

    args.zero = vec!["model.layers.0.self_attn.vison".into()];
    args.out = tmp("zero-typo");
    let err = cogvlm::train::run::run(&args).unwrap_err().to_string();
    assert!(
        err.contains("--zero model.layers.0.self_attn.vison"),
        "{err}"
    );
}

fn greedy(model: &Path, lora: Option<&Path>) -> String {
    let opts = LoadOptions {
        dtype: Some(candle_core::DType::F32),
        tokenizer: Some(tokenizer()),
        lora: lora.map(Path::to_path_buf),
        ..Default::default()
    };
    let mut pipe = Pipeline::load(model, &opts, &mut |_, _| {}).unwrap();
    let image = image::open(fixtures().join("images").join("coffee.png")).unwrap();
    let req = ChatRequest {
        image: Some(image),
        history: Vec::new(),
        query: "What is in the picture?".into(),
        version: None,
        sampling: Sampling {
            max_new_tokens: Some(12),
            ..Sampling::greedy()
        },
    };
    pipe.generate_with(&req, true, &mut |_| true).unwrap().text
}

/// `merge` writes a sharded checkpoint that answers as the base checkpoint with `--lora` does, and not as the
/// base alone (the adapter is large enough to change the answer).
#[test]
fn merged_checkpoint_answers_as_lora() {
    let model = model_dir("cogvlm_tiny_224");
    let lc = LoraConfig::new(4, 8.0, 0.0, &targets(&DEFAULT_TARGETS), "cogvlm_tiny_224");
    let mut adapter = new_adapter(lc, &config("cogvlm_tiny_224"), 9).unwrap();
    // A trained adapter's B is not zero: give it values.
    for (i, pair) in adapter.modules.values_mut().enumerate() {
        let b = Tensor::randn(0f32, 0.5, pair.b.dims(), &candle_core::Device::Cpu).unwrap();
        let b = (b + i as f64 * 0.01).unwrap();
        *pair = LoraPair {
            a: pair.a.clone(),
            b,
        };
    }
    let lora = tmp("merge-adapter");
    adapter.save(&lora).unwrap();
    let out = tmp("merge-out");
    let m = cogvlm::train::merge::run(&cogvlm::train::merge::MergeArgs {
        model: model.clone(),
        lora: lora.clone(),
        out: out.clone(),
        shard_bytes: 2_000_000,
    })
    .unwrap();
    assert!(m.shards > 1, "{m:?}");
    assert_eq!(m.merged_modules, adapter.modules.len());
    assert_eq!(
        files_without_pt_format(&out).unwrap(),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_without_pt_format(&lora).unwrap(),
        Vec::<PathBuf>::new()
    );
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(out
        .join("model-00001-of-0000".to_string() + &m.shards.to_string() + ".safetensors")
        .is_file());
    let with_lora = greedy(&model, Some(&lora));
    assert_eq!(greedy(&out, None), with_lora);
    assert_ne!(greedy(&model, None), with_lora);
}
