//! PEFT LoRA adapters: the training fixtures' adapters (written by PEFT 0.7.1) load, target exactly the modules
//! PEFT wrapped, save back with the same keys, tensors and config fields, and an adapter merged into the float
//! weights gives the logits of the same adapter applied as a separate low-rank product.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use cogvlm::model::config::Config;
use cogvlm::model::lora::{
    target_linears, Adapter, LoraConfig, LoraMode, CONFIG_FILE, WEIGHTS_FILE,
};
use cogvlm::model::prompt::PromptInput;
use cogvlm::model::quant::{Quant, Quantizer};
use cogvlm::model::CogVlm;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn adapter_dir(model: &str) -> PathBuf {
    fixtures().join("training").join(model).join("adapter")
}

fn model_dir(model: &str) -> PathBuf {
    fixtures().join("models").join(model)
}

fn config(model: &str) -> Config {
    Config::from_file(&model_dir(model).join("config.json")).unwrap()
}

fn json(path: &Path) -> BTreeMap<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cogvlm-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn fixture_adapters_load_with_peft_targets_and_scaling() {
    for (model, n) in [("cogvlm_tiny_224", 7), ("cogagent_tiny", 10)] {
        let a = Adapter::load(&adapter_dir(model)).unwrap();
        assert_eq!(a.scaling(), 2.0);
        assert_eq!(a.modules.len(), n, "{model}");
        a.check_against(&config(model)).unwrap();
        // The modules PEFT wrapped are exactly those its target rule picks in the checkpoint.
        let picked: Vec<String> = target_linears(&config(model), &a.config.targets().unwrap())
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        let mut have: Vec<String> = a.modules.keys().cloned().collect();
        let mut picked_sorted = picked.clone();
        picked_sorted.sort();
        have.sort();
        assert_eq!(have, picked_sorted, "{model}");
    }
}

/// Save → load gives bit-identical tensors under the same keys, and the same config; the saved files carry
/// the fixture's key names and config fields, and a config made from scratch has PEFT's field set.
#[test]
fn save_load_round_trip_is_exact() {
    for model in ["cogvlm_tiny_224", "cogagent_tiny"] {
        let src = adapter_dir(model);
        let a = Adapter::load(&src).unwrap();
        let out = tmp(model);
        a.save(&out).unwrap();
        let b = Adapter::load(&out).unwrap();
        assert_eq!(a.config, b.config);
        let (ta, tb) = (a.tensors(), b.tensors());
        assert_eq!(
            ta.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            tb.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        for ((k, x), (_, y)) in ta.iter().zip(&tb) {
            assert_eq!(x.dims(), y.dims(), "{k}");
            assert_eq!(bits(x), bits(y), "{k}");
        }
        // Same keys as PEFT's own file, and the same config, field by field.
        let theirs = candle_core::safetensors::load(src.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        let mine = candle_core::safetensors::load(out.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        let mut k1: Vec<_> = theirs.keys().collect();
        let mut k2: Vec<_> = mine.keys().collect();
        k1.sort();
        k2.sort();
        assert_eq!(k1, k2);
        assert_eq!(json(&src.join(CONFIG_FILE)), json(&out.join(CONFIG_FILE)));

        // A new adapter's config (what training writes) has every field PEFT writes, with PEFT's values.
        let c = &a.config;
        let fresh = LoraConfig::new(
            c.r,
            c.lora_alpha,
            c.lora_dropout,
            &c.targets().unwrap(),
            c.base_model_name_or_path.as_deref().unwrap(),
        );
        let fresh_dir = tmp(&format!("{model}-fresh"));
        Adapter {
            config: fresh,
            modules: a.modules.clone(),
        }
        .save(&fresh_dir)
        .unwrap();
        assert_eq!(
            json(&src.join(CONFIG_FILE)),
            json(&fresh_dir.join(CONFIG_FILE))
        );
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&fresh_dir);
    }
}

#[test]
fn adapters_that_do_not_fit_are_clear_errors() {
    let a = Adapter::load(&adapter_dir("cogvlm_tiny_224")).unwrap();
    let cfg = config("cogvlm_tiny_224");
    // A module the checkpoint lacks.
    let mut missing = a.clone();
    let pair = missing.modules.values().next().unwrap().clone();
    missing.modules.insert(
        "model.layers.7.self_attn.language_expert_query_key_value".into(),
        pair,
    );
    let e = missing.check_against(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.7") && e.contains("no such module"),
        "{e}"
    );
    // A pair whose shapes do not fit.
    let mut wrong = a.clone();
    let m = "model.layers.0.self_attn.language_expert_query_key_value";
    let p = wrong.modules.get_mut(m).unwrap();
    p.a = Tensor::zeros((4, 7), DType::F32, &Device::Cpu).unwrap();
    let e = wrong.check_against(&cfg).unwrap_err().to_string();
    assert!(e.contains(m) && e.contains("do not fit"), "{e}");
    // The adapter of another architecture (CogAgent's cross-attention) on CogVLM.
    let agent = Adapter::load(&adapter_dir("cogagent_tiny")).unwrap();
    let e = agent.check_against(&cfg).unwrap_err().to_string();
    assert!(e.contains("cross_attn"), "{e}");
    // A folder without an adapter.
    let e = Adapter::load(&model_dir("cogvlm_tiny_224")).unwrap_err();
    assert!(format!("{e:#}").contains(CONFIG_FILE));
}

fn build(model: &str, adapter: Option<(&Adapter, LoraMode)>, quant: Quant) -> CogVlm {
    let cfg = config(model);
    let dev = Device::Cpu;
    // SAFETY: the fixture file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[model_dir(model).join("model.safetensors")],
            DType::F32,
            &dev,
        )
    }
    .unwrap();
    let mut q = Quantizer::new(quant);
    if let Some((a, mode)) = adapter {
        q = q.with_lora(a.clone(), mode);
    }
    CogVlm::with_quantizer(&cfg, vb, q).unwrap()
}

fn logits(m: &CogVlm, pixels: &Tensor) -> Tensor {
    let cfg = &m.cfg;
    let image = m.encode_image(pixels).unwrap();
    let prompt = PromptInput::new(
        1,
        0,
        Some(cfg.image_tokens()),
        &[894, 29901, 1724, 673, 29901],
    );
    let mut cache = m.new_cache(prompt.input_ids.len());
    m.prefill(&prompt, Some(&image), None, &mut cache, true, None)
        .unwrap()
        .logits
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let den = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (num / den).sqrt()
}

/// Merged into the float weights (inference) and applied as a separate product (training, quantized weights),
/// an adapter gives the same logits, and they differ from the base model's.
#[test]
fn merged_and_separate_adapters_agree() {
    let model = "cogvlm_tiny_224";
    let a = Adapter::load(&adapter_dir(model)).unwrap();
    let size = config(model).vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, size, size), &Device::Cpu).unwrap();
    let run = |m: &CogVlm| logits(m, &pixels);
    let merged = run(&build(model, Some((&a, LoraMode::Merge)), Quant::Float));
    let separate = run(&build(model, Some((&a, LoraMode::Separate)), Quant::Float));
    let base = run(&build(model, None, Quant::Float));
    let d = rel_l2(&merged, &separate);
    assert!(d < 1e-5, "merged vs separate: rel-L2 {d}");
    assert!(
        rel_l2(&base, &separate) > 1e-4,
        "the adapter changes nothing"
    );
}
