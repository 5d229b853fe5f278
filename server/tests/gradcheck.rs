//! Training gradients against central finite differences, on the tiny fixture checkpoints.
//!
//! The analytic gradients come from the training path itself (`train::load_model` with the weights or the LoRA
//! pairs as `Var`s, `forward_loss`, `backward`). Each finite difference rebuilds the model from perturbed
//! tensors, so what is tested includes every copy the model makes at load (stacked gate/up projections, stacked
//! LoRA pairs). For each parameter the elements with the largest gradients are checked: they carry the signal
//! well above float32's rounding of the loss.
//!
//! Precision: the model runs in f32; the loss of each evaluation is taken from the f32 logits in f64, so the
//! difference quotient's noise is set by the logits' rounding (~1e-7 relative), not by the loss's. With a step of
//! `EPS` the quotient's error is `O(EPS²)` curvature plus that noise; `RTOL` / `ATOL` below bound both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use cogvlm::model::config::Config;
use cogvlm::model::lora::{peft_key, Adapter, Half, LoraMode};
use cogvlm::model::prompt::PromptInput;
use cogvlm::model::quant::{Quant, Quantizer};
use cogvlm::model::weights::Checkpoint;
use cogvlm::model::CogVlm;
use cogvlm::train::load_model;
use cogvlm::train::loss::{forward_loss, LabeledInput};

/// Step of the central difference (weights are ~N(0, 0.02)).
const EPS: f64 = 2e-3;
/// Allowed |finite difference − analytic| ≤ ATOL + RTOL · |analytic|.
const RTOL: f64 = 2e-2;
const ATOL: f64 = 2e-4;
/// Elements checked per parameter: those with the largest |gradient|.
const PER_PARAM: usize = 2;

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/models")
        .join(name)
}

fn adapter_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/training")
        .join(name)
        .join("adapter")
}

/// A fixed example: random-but-seeded pixels, a short prompt and a three-token answer.
struct Example {
    cfg: Config,
    input: LabeledInput,
    pixels: Tensor,
    cross: Option<Tensor>,
}

/// Deterministic values in `[lo, hi)` (a 64-bit LCG), so the test needs no RNG crate and never changes.
fn seeded(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn pixels(size: usize, seed: u64) -> Tensor {
    // The normalised pixel range of the towers' preprocessing (CLIP mean / std).
    Tensor::from_vec(
        seeded(3 * size * size, seed, -1.8, 2.1),
        (1, 3, size, size),
        &Device::Cpu,
    )
    .unwrap()
}

impl Example {
    fn new(dir: &Path) -> Self {
        let cfg = Config::from_file(&dir.join("config.json")).unwrap();
        // "Question: what shape is this? Answer:" in Llama-2 ids, then an answer of three ids.
        let text = [894u32, 29901, 825, 8267, 338, 445, 29973, 673, 29901];
        let prompt = PromptInput::new(
            cfg.bos_token_id,
            cfg.pad_token_id(),
            Some(cfg.image_tokens()),
            &text,
        );
        let input = LabeledInput::new(prompt, &[263, 2654, 8424], cfg.eos());
        let pixels = pixels(cfg.vision_config.image_size, 1);
        let cross = cfg.cross().map(|c| pixels_for_cross(c.image_size));
        Self {
            cfg,
            input,
            pixels,
            cross,
        }
    }

    /// Both encoders' outputs for `model`.
    fn encode(&self, model: &CogVlm) -> Encoded {
        Encoded {
            image: model.encode_image(&self.pixels).unwrap(),
            cross: self.cross.as_ref().map(|p| model.encode_cross(p).unwrap()),
        }
    }

    /// The loss of a model whose parameter `changed` differs from `base`'s, in f64 from its f32 logits. An
    /// encoder whose weights did not change is not run again (the cross encoder dominates CogAgent's time).
    fn loss(&self, model: &CogVlm, changed: &str, base: &Encoded) -> f64 {
        let image = if changed.starts_with("model.vision.") {
            model.encode_image(&self.pixels).unwrap()
        } else {
            base.image.clone()
        };
        let cross = match &self.cross {
            Some(p) if changed.starts_with("model.cross_vision.") => {
                Some(model.encode_cross(p).unwrap())
            }
            _ => base.cross.clone(),
        };
        let step = forward_loss(model, &self.input, Some(&image), cross.as_ref()).unwrap();
        let logits = step.logits.to_dtype(DType::F64).unwrap();
        let targets = Tensor::new(self.input.loss_targets().as_slice(), &Device::Cpu).unwrap();
        let max = logits.max_keepdim(D::Minus1).unwrap();
        let lse = (logits
            .broadcast_sub(&max)
            .unwrap()
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap()
            + &max)
            .unwrap();
        let picked = logits.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap();
        (lse - picked)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }
}

/// The encoders' outputs of the unperturbed model.
struct Encoded {
    image: Tensor,
    cross: Option<Tensor>,
}

fn pixels_for_cross(size: usize) -> Tensor {
    pixels(size, 2)
}

/// Every checkpoint tensor in f32.
fn base_tensors(dir: &Path, cfg: &Config) -> HashMap<String, Tensor> {
    let ck = Checkpoint::open(dir, cfg).unwrap();
    ck.st
        .tensors()
        .into_iter()
        .map(|(name, _)| {
            let t = ck
                .st
                .load(&name, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            (name, t)
        })
        .collect()
}

/// A model built from plain tensors, with `adapter` as a separate low-rank product.
fn build(cfg: &Config, tensors: &HashMap<String, Tensor>, adapter: Option<Adapter>) -> CogVlm {
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    let mut q = Quantizer::new(Quant::Float);
    if let Some(a) = adapter {
        q = q.with_lora(a, LoraMode::Separate);
    }
    CogVlm::with_quantizer(cfg, vb, q).unwrap()
}

/// `t` with element `i` (flat index) moved by `delta`.
fn nudged(t: &Tensor, i: usize, delta: f64) -> Tensor {
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[i] = (v[i] as f64 + delta) as f32;
    Tensor::from_vec(v, t.dims(), t.device()).unwrap()
}

/// Flat indices of the `k` largest |g|.
fn largest(g: &Tensor, k: usize) -> Vec<(usize, f64)> {
    let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut idx: Vec<(usize, f64)> = v.iter().map(|&x| x as f64).enumerate().collect();
    idx.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    idx.truncate(k);
    idx
}

/// One failed or passed comparison, for the report.
struct Outcome {
    line: String,
    ok: bool,
}

fn compare(name: &str, i: usize, analytic: f64, plus: f64, minus: f64, eps: f64) -> Outcome {
    let fd = (plus - minus) / (2.0 * eps);
    let err = (fd - analytic).abs();
    let tol = ATOL + RTOL * analytic.abs();
    Outcome {
        line: format!("{name}[{i}]: analytic {analytic:+.6e}, finite difference {fd:+.6e}, |Δ| {err:.2e} (≤ {tol:.2e})"),
        ok: err <= tol && analytic.abs() > 0.0,
    }
}

fn report(outcomes: &[Outcome]) {
    for o in outcomes {
        println!("{} {}", if o.ok { "ok  " } else { "FAIL" }, o.line);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.line.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} finite-difference checks failed:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n")
    );
}

/// Full fine-tuning: every listed parameter's largest gradients against finite differences.
fn full(model: &str, params: &[&str]) {
    let dir = model_dir(model);
    let ex = Example::new(&dir);
    let base = base_tensors(&dir, &ex.cfg);
    let encoded = ex.encode(&build(&ex.cfg, &base, None));

    let tm = load_model(&dir, &Device::Cpu, true, None).unwrap();
    let pixels_embeds = tm.model.encode_image(&ex.pixels).unwrap();
    let cross = ex.cross.as_ref().map(|p| tm.model.encode_cross(p).unwrap());
    let step = forward_loss(&tm.model, &ex.input, Some(&pixels_embeds), cross.as_ref()).unwrap();
    let grads = step.loss.backward().unwrap();

    let mut outcomes = Vec::new();
    for &param in params {
        let var = tm
            .weights
            .get(param)
            .unwrap_or_else(|| panic!("{model} has no {param}"));
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {param}"));
        // Each cross-encoder element costs two runs of its 6400-patch encoder: one element each.
        let k = if param.starts_with("model.cross_vision.") {
            1
        } else {
            PER_PARAM
        };
        for (i, analytic) in largest(g, k) {
            let loss_at = |delta: f64| {
                let mut t = base.clone();
                t.insert(param.to_string(), nudged(&base[param], i, delta));
                ex.loss(&build(&ex.cfg, &t, None), param, &encoded)
            };
            outcomes.push(compare(
                param,
                i,
                analytic,
                loss_at(EPS),
                loss_at(-EPS),
                EPS,
            ));
        }
    }
    report(&outcomes);
}

/// LoRA: every pair's `A` and `B` against finite differences, the base weights fixed.
fn lora(model: &str) {
    let dir = model_dir(model);
    let ex = Example::new(&dir);
    let base = base_tensors(&dir, &ex.cfg);
    let adapter = Adapter::load(&adapter_dir(model)).unwrap();
    let encoded = ex.encode(&build(&ex.cfg, &base, Some(adapter.clone())));

    let tm = load_model(&dir, &Device::Cpu, false, Some(&adapter)).unwrap();
    let embeds = tm.model.encode_image(&ex.pixels).unwrap();
    let cross = ex.cross.as_ref().map(|p| tm.model.encode_cross(p).unwrap());
    let step = forward_loss(&tm.model, &ex.input, Some(&embeds), cross.as_ref()).unwrap();
    let grads = step.loss.backward().unwrap();
    let vars: HashMap<&str, &candle_core::Var> =
        tm.lora.iter().map(|(k, v)| (k.as_str(), v)).collect();

    let mut outcomes = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    // One layer's pairs of each kind of adapted module (the rest are the same code).
    for (module, _) in adapter.modules.iter() {
        let kind = module
            .split('.')
            .filter(|s| s.parse::<usize>().is_err())
            .collect::<Vec<_>>()
            .join(".");
        if !kinds.insert(kind) {
            continue;
        }
        for half in [Half::A, Half::B] {
            let key = peft_key(module, half);
            let var = vars
                .get(key.as_str())
                .unwrap_or_else(|| panic!("no Var for {key}"));
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient reached {key}"));
            for (i, analytic) in largest(g, PER_PARAM) {
                let loss_at = |delta: f64| {
                    let mut a = adapter.clone();
                    let pair = a.modules.get_mut(module).unwrap();
                    match half {
                        Half::A => pair.a = nudged(&pair.a, i, delta),
                        Half::B => pair.b = nudged(&pair.b, i, delta),
                    }
                    ex.loss(&build(&ex.cfg, &base, Some(a)), module, &encoded)
                };
                outcomes.push(compare(&key, i, analytic, loss_at(EPS), loss_at(-EPS), EPS));
            }
        }
    }
    // Both experts' attention and the vision tower's are adapted by the fixture adapters.
    assert!(
        outcomes.len() >= 3 * 2 * PER_PARAM,
        "only {} LoRA checks ran",
        outcomes.len()
    );
    report(&outcomes);
}

/// Parameters of every kind of module a CogVLM checkpoint has: both experts (attention and MLP), the norms,
/// embeddings and `lm_head`, the EVA2-CLIP tower (patches, attention, MLP, norms) and the GLU adapter.
const COGVLM_PARAMS: &[&str] = &[
    "model.layers.0.self_attn.language_expert_query_key_value.weight",
    "model.layers.0.self_attn.vision_expert_query_key_value.weight",
    "model.layers.1.self_attn.language_expert_dense.weight",
    "model.layers.0.self_attn.vision_expert_dense.weight",
    "model.layers.0.mlp.language_mlp.gate_proj.weight",
    "model.layers.0.mlp.language_mlp.up_proj.weight",
    "model.layers.1.mlp.language_mlp.down_proj.weight",
    "model.layers.0.mlp.vision_mlp.gate_proj.weight",
    "model.layers.0.mlp.vision_mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.norm.weight",
    "model.embed_tokens.weight",
    "lm_head.weight",
    "model.vision.patch_embedding.proj.weight",
    "model.vision.patch_embedding.cls_embedding",
    "model.vision.patch_embedding.position_embedding.weight",
    "model.vision.transformer.layers.0.attention.query_key_value.weight",
    "model.vision.transformer.layers.0.attention.query_key_value.bias",
    "model.vision.transformer.layers.0.attention.dense.weight",
    "model.vision.transformer.layers.0.mlp.fc1.weight",
    "model.vision.transformer.layers.0.mlp.fc2.bias",
    "model.vision.transformer.layers.0.input_layernorm.weight",
    "model.vision.transformer.layers.0.post_attention_layernorm.bias",
    "model.vision.linear_proj.linear_proj.weight",
    "model.vision.linear_proj.norm1.weight",
    "model.vision.linear_proj.norm1.bias",
    "model.vision.linear_proj.gate_proj.weight",
    "model.vision.linear_proj.dense_h_to_4h.weight",
    "model.vision.linear_proj.dense_4h_to_h.weight",
    "model.vision.boi",
    "model.vision.eoi",
];

/// CogAgent's own modules: the decoder's cross-attention and its norm, and the high-resolution cross encoder.
const COGAGENT_PARAMS: &[&str] = &[
    "model.layers.0.cross_attn.query.weight",
    "model.layers.0.cross_attn.key_value.weight",
    "model.layers.1.cross_attn.dense.weight",
    "model.layers.0.post_cross_attention_layernorm.weight",
    "model.cross_vision.vit.model.patch_embed.proj.weight",
    "model.cross_vision.vit.model.blocks.0.attn.q_proj.weight",
    "model.cross_vision.vit.model.blocks.0.attn.v_bias",
    "model.cross_vision.vit.model.blocks.0.mlp.w1.weight",
    "model.cross_vision.vit.model.blocks.0.norm1.weight",
    "model.layers.0.self_attn.vision_expert_query_key_value.weight",
    "model.vision.linear_proj.linear_proj.weight",
];

#[test]
fn cogvlm_full_gradients_match_finite_differences() {
    full("cogvlm_tiny_224", COGVLM_PARAMS);
}

#[test]
fn cogagent_full_gradients_match_finite_differences() {
    full("cogagent_tiny", COGAGENT_PARAMS);
}

#[test]
fn cogvlm_lora_gradients_match_finite_differences() {
    lora("cogvlm_tiny_224");
}

#[test]
fn cogagent_lora_gradients_match_finite_differences() {
    lora("cogagent_tiny");
}
