//! Fine-tuning's tensors on the tiny fixture checkpoints: a batched loss and its gradients equal the per-example
//! ones, in-place updates of the weights and of an adapter reach the forward and what is saved, and the bundled
//! demos carry the `pt` format transformers needs.

use std::path::PathBuf;

use candle_core::Tensor;
use cogvlm::model::lora::{Adapter, LoraConfig, LoraPair};
use cogvlm::model::weights::files_without_pt_format;
use cogvlm::train::make_data::Kind;
use cogvlm::train::run::new_adapter;

mod finetune_support;
use finetune_support::*;

/// One batched forward over right-padded examples gives the mean of the per-example losses and the same
/// gradients for every weight (full fine-tuning of the tiny CogVLM, four examples of different lengths).
#[test]
fn batched_loss_and_gradients_equal_the_per_example_ones() {
    use cogvlm::train::loss::{batchable, forward_loss, forward_loss_batch};
    use cogvlm::train::run::Inputs;

    let data = tmp("batch-data");
    make_data(&data, vec![Kind::Describe, Kind::Where, Kind::Count], 4, 9);
    let model = model_dir("cogvlm_tiny_224");
    let device = candle_core::Device::Cpu;
    let inputs = Inputs::new(&model, Some(&tokenizer()), None, device.clone()).unwrap();
    let (_, examples) = cogvlm::train::data::load(&data).unwrap();
    let prepared: Vec<_> = examples
        .iter()
        .map(|ex| inputs.prepare(ex, 0).unwrap())
        .collect();
    let lens: Vec<usize> = prepared
        .iter()
        .map(|p| p.labeled.input.input_ids.len())
        .collect();
    assert!(
        lens.iter().any(|&l| l != lens[0]),
        "the examples should need padding: {lens:?}"
    );
    let m = cogvlm::train::load_model(&model, &device, true, None).unwrap();

    let mut sum: Option<Tensor> = None;
    for p in &prepared {
        let img = m.model.encode_image(&p.pixels).unwrap();
        let l = forward_loss(&m.model, &p.labeled, Some(&img), None)
            .unwrap()
            .loss;
        sum = Some(match sum {
            Some(s) => (s + l).unwrap(),
            None => l,
        });
    }
    let single = (sum.unwrap() / prepared.len() as f64).unwrap();

    let labeled: Vec<_> = prepared.iter().map(|p| &p.labeled).collect();
    assert!(batchable(&labeled));
    let pixels: Vec<&Tensor> = prepared.iter().map(|p| &p.pixels).collect();
    let images = m
        .model
        .encode_image(&Tensor::cat(&pixels, 0).unwrap())
        .unwrap();
    let pad = inputs.cfg.pad_token_id();
    let batched = forward_loss_batch(&m.model, &labeled, Some(&images), pad)
        .unwrap()
        .loss;

    let (a, b) = (
        single.to_scalar::<f32>().unwrap(),
        batched.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() <= 1e-5 * a.abs(), "loss {a} vs batched {b}");
    let (ga, gb) = (single.backward().unwrap(), batched.backward().unwrap());
    let mut checked = 0;
    for (name, var) in &m.weights {
        let (x, y) = match (ga.get(var.as_tensor()), gb.get(var.as_tensor())) {
            (Some(x), Some(y)) => (x, y),
            // Buffers such as RoPE's `inv_freq` get no gradient either way.
            (None, None) => continue,
            _ => panic!("{name}: a gradient in one forward only"),
        };
        let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        let scale = x
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(
            diff <= 1e-4 * scale + 1e-7,
            "{name}: gradients differ by {diff} (largest {scale})"
        );
        checked += 1;
    }
    assert!(checked > 50, "{checked} weights compared");
}

/// One generated "describe" example, prepared for a training forward on the tiny CogVLM.
fn describe_example(name: &str) -> cogvlm::train::run::Prepared {
    let data = tmp(name);
    make_data(&data, vec![Kind::Describe], 1, 4);
    let model = model_dir("cogvlm_tiny_224");
    let inputs =
        cogvlm::train::run::Inputs::new(&model, Some(&tokenizer()), None, candle_core::Device::Cpu)
            .unwrap();
    let (_, examples) = cogvlm::train::data::load(&data).unwrap();
    inputs.prepare(&examples[0], 0).unwrap()
}

/// `m`'s training loss on `p`.
fn loss_of(m: &cogvlm::train::TrainModel, p: &cogvlm::train::run::Prepared) -> f32 {
    let img = m.model.encode_image(&p.pixels).unwrap();
    cogvlm::train::loss::forward_loss(&m.model, &p.labeled, Some(&img), None)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap()
}

/// What the optimizer does to a weight (an in-place `Var::set`) reaches the next forward, the stacked MLP
/// weights included, and the model then computes what a checkpoint of the updated weights computes: the
/// trained model and its saved file agree.
#[test]
fn in_place_updates_reach_the_forward_and_the_saved_model() {
    let p = describe_example("update-data");
    let (model, device) = (model_dir("cogvlm_tiny_224"), candle_core::Device::Cpu);
    let loss = |m: &cogvlm::train::TrainModel| loss_of(m, &p);
    let m = cogvlm::train::load_model(&model, &device, true, None).unwrap();
    let before = loss(&m);
    let mut changed = 0;
    for (name, var) in &m.weights {
        if name.ends_with("gate_proj.weight") || name.ends_with("up_proj.weight") {
            var.set(&(var.as_tensor() * 1.5).unwrap()).unwrap();
            changed += 1;
        }
    }
    assert!(changed >= 4, "{changed} gate/up weights");
    let after = loss(&m);
    assert!(
        (after - before).abs() > 1e-4,
        "scaling the MLP's gate and up weights left the loss at {before}"
    );

    let saved = tmp("update-saved");
    std::fs::create_dir_all(&saved).unwrap();
    std::fs::copy(model.join("config.json"), saved.join("config.json")).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = m
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, saved.join("model.safetensors")).unwrap();
    let reloaded = cogvlm::train::load_model(&saved, &device, false, None).unwrap();
    let again = loss(&reloaded);
    assert!(
        (again - after).abs() <= 1e-5 * after.abs(),
        "in memory {after}, from the saved weights {again}"
    );
}

/// The same for an adapter being trained, on every kind of target (both experts' QKV and dense, the stacked
/// gate/up, down, the vision tower): pairs updated in place reach the forward, which then equals the forward of
/// the adapter saved from them and loaded again.
#[test]
fn in_place_adapter_updates_reach_the_forward_and_the_saved_adapter() {
    let p = describe_example("lora-update-data");
    let (model, device) = (model_dir("cogvlm_tiny_224"), candle_core::Device::Cpu);
    let loss = |m: &cogvlm::train::TrainModel| loss_of(m, &p);
    let all = targets(&[
        "language_expert_query_key_value",
        "vision_expert_query_key_value",
        "language_expert_dense",
        "vision_expert_dense",
        "gate_proj",
        "up_proj",
        "down_proj",
        "query_key_value",
    ]);
    let lc = LoraConfig::new(4, 8.0, 0.0, &all, "cogvlm_tiny_224");
    let adapter = new_adapter(lc, &config("cogvlm_tiny_224"), 3).unwrap();
    let m = cogvlm::train::load_model(&model, &device, false, Some(&adapter)).unwrap();
    let before = loss(&m);
    for (i, (_, var)) in m.lora.iter().enumerate() {
        let noise = Tensor::randn(0f32, 0.3, var.shape(), &device).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        assert!(i < 10_000);
    }
    let after = loss(&m);
    assert!(
        (after - before).abs() > 1e-4,
        "the adapter's update left the loss at {before}"
    );

    let mut saved = Adapter::load(
        &fixtures()
            .join("training")
            .join("cogvlm_tiny_224")
            .join("adapter"),
    )
    .unwrap();
    saved.config = adapter.config.clone();
    saved.modules = m
        .lora
        .chunks(2)
        .map(|ab| {
            let module = ab[0]
                .0
                .trim_start_matches("base_model.model.")
                .trim_end_matches(".lora_A.weight");
            let pair = LoraPair {
                a: ab[0].1.as_tensor().clone(),
                b: ab[1].1.as_tensor().clone(),
            };
            (module.to_string(), pair)
        })
        .collect();
    let reloaded = cogvlm::train::load_model(&model, &device, false, Some(&saved)).unwrap();
    let again = loss(&reloaded);
    assert!(
        (again - after).abs() <= 1e-5 * after.abs(),
        "in memory {after}, from the updated pairs {again}"
    );
}

/// The bundled demo checkpoints were written by `train --full`: their files carry `"format": "pt"` too.
#[test]
fn bundled_demos_carry_the_pt_format() {
    let demos = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut seen = 0;
    for entry in std::fs::read_dir(&demos).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("model.safetensors").is_file() {
            seen += 1;
            assert_eq!(
                files_without_pt_format(&dir).unwrap(),
                Vec::<PathBuf>::new()
            );
        }
    }
    assert!(seen >= 2, "{seen} demo checkpoints in {}", demos.display());
}
