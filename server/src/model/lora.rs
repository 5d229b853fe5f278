//! LoRA adapters in PEFT's format: a folder with `adapter_config.json` and `adapter_model.safetensors`, whose
//! keys are `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight` (the module path is the
//! checkpoint's tensor name without `.weight`). An adapted linear layer computes
//! `y = x Wᵀ (+ b) + scaling · (x Aᵀ) Bᵀ` with `A` `[r, in]`, `B` `[out, r]` and `scaling = lora_alpha / r`.
//!
//! The [`super::quant::Quantizer`] applies an adapter while it builds each linear layer: merged into float
//! weights (inference), or kept as a separate low-rank product (training, where `A` and `B` are `Var`s, and
//! quantized weights).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::Config;
use super::weights::expected_tensors;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's wrapper prefix before the checkpoint's own module path.
const KEY_PREFIX: &str = "base_model.model.";

/// `adapter_config.json`. The fields this code reads are typed; every other field PEFT writes is kept as read
/// and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub peft_type: String,
    pub r: usize,
    #[serde(serialize_with = "integral_as_int")]
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Value,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn bias_none() -> String {
    "none".into()
}

/// PEFT writes `lora_alpha` as an integer when it is one (`8`, not `8.0`).
fn integral_as_int<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

impl LoraConfig {
    /// A new config with every field PEFT 0.7.1's `save_pretrained` writes for a causal-LM LoRA.
    pub fn new(
        r: usize,
        lora_alpha: f64,
        lora_dropout: f64,
        targets: &[String],
        base_model: &str,
    ) -> Self {
        let other = serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "rank_pattern": {},
            "revision": null,
            "task_type": "CAUSAL_LM",
        });
        let other = match other {
            Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Self {
            peft_type: "LORA".into(),
            r,
            lora_alpha,
            lora_dropout,
            target_modules: Value::from(targets.to_vec()),
            base_model_name_or_path: Some(base_model.into()),
            bias: "none".into(),
            fan_in_fan_out: false,
            other,
        }
    }

    /// The target names (PEFT also takes one regex string, which is not supported here).
    pub fn targets(&self) -> anyhow::Result<Vec<String>> {
        match &self.target_modules {
            Value::Array(a) => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .context("target_modules holds a non-string")
                })
                .collect(),
            Value::String(s) => bail!(
                "target_modules is the regular expression {s:?}; only a list of module names is supported"
            ),
            other => bail!("target_modules must be a list of module names, not {other}"),
        }
    }

    /// `lora_alpha / r`, or `lora_alpha / √r` with `use_rslora`.
    pub fn scaling(&self) -> f64 {
        if self.other.get("use_rslora").and_then(Value::as_bool) == Some(true) {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Rejects what this implementation would silently get wrong.
    fn check_supported(&self) -> anyhow::Result<()> {
        ensure!(
            self.peft_type == "LORA",
            "peft_type is {:?}; only LORA adapters are supported",
            self.peft_type
        );
        ensure!(self.r > 0, "r must be positive");
        ensure!(
            self.bias == "none",
            "bias = {:?}: adapters that train biases are not supported",
            self.bias
        );
        ensure!(
            !self.fan_in_fan_out,
            "fan_in_fan_out = true is for GPT-2-style Conv1D layers, which these models do not have"
        );
        for key in ["rank_pattern", "alpha_pattern"] {
            if let Some(v) = self.other.get(key) {
                ensure!(
                    v.is_null() || v.as_object().is_some_and(|m| m.is_empty()),
                    "{key} is not supported (per-module ranks or alphas): {v}"
                );
            }
        }
        for key in ["modules_to_save", "layers_to_transform"] {
            if let Some(v) = self.other.get(key) {
                ensure!(
                    v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
                    "{key} is not supported: {v}"
                );
            }
        }
        self.targets()?;
        Ok(())
    }
}

/// PEFT's target rule: a module matches when its name equals a target or ends with `"." + target`.
pub fn matches_target(module: &str, targets: &[String]) -> bool {
    targets.iter().any(|t| {
        module == t
            || module
                .strip_suffix(t.as_str())
                .is_some_and(|p| p.ends_with('.'))
    })
}

/// The linear layers of the checkpoint `cfg` describes that PEFT would wrap for `targets`, with their weight
/// shapes `[out, in]`, in checkpoint order; the reference's no-ops ([`is_reference_no_op`]) and the embedding
/// tables are left out.
pub fn target_linears(cfg: &Config, targets: &[String]) -> Vec<(String, [usize; 2])> {
    expected_tensors(cfg)
        .into_iter()
        .filter_map(|(name, shape)| {
            let module = name.strip_suffix(".weight")?;
            let &[out, inp] = shape.as_slice() else {
                return None;
            };
            let embedding =
                module.ends_with("embed_tokens") || module.ends_with("position_embedding");
            (matches_target(module, targets) && !embedding && !is_reference_no_op(module))
                .then(|| (module.to_string(), [out, inp]))
        })
        .collect()
}

/// One adapted module's low-rank pair: `a` `[r, in]`, `b` `[out, r]`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// Which half of a pair a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    A,
    B,
}

/// The key PEFT saves a module's `lora_A` / `lora_B` weight under.
pub fn peft_key(module: &str, half: Half) -> String {
    let h = match half {
        Half::A => "A",
        Half::B => "B",
    };
    format!("{KEY_PREFIX}{module}.lora_{h}.weight")
}

/// A saved key → (module path, half); also PEFT's in-memory form with the adapter name (`.lora_A.default.weight`).
fn parse_key(key: &str) -> Option<(String, Half)> {
    let rest = key.strip_prefix(KEY_PREFIX)?.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    if let Some(m) = rest.strip_suffix(".lora_A") {
        Some((m.to_string(), Half::A))
    } else {
        rest.strip_suffix(".lora_B")
            .map(|m| (m.to_string(), Half::B))
    }
}

/// A LoRA adapter: its config and one pair per adapted module (f32, on the CPU after [`Adapter::load`]).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, LoraPair>,
}

impl Adapter {
    /// Reads a PEFT adapter folder. Errors name the file and the key or field at fault.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).with_context(|| {
            format!(
                "cannot read {} (a LoRA adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE})",
                cfg_path.display()
            )
        })?;
        let config: LoraConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a PEFT LoRA config", cfg_path.display()))?;
        config
            .check_supported()
            .with_context(|| format!("{}", cfg_path.display()))?;
        let st_path = dir.join(WEIGHTS_FILE);
        if !st_path.is_file() && dir.join("adapter_model.bin").is_file() {
            bail!(
                "{} holds adapter_model.bin (a PyTorch pickle); save the adapter with safetensors \
                 (PEFT's default, safe_serialization=True)",
                dir.display()
            );
        }
        let tensors = candle_core::safetensors::load(&st_path, &Device::Cpu)
            .with_context(|| format!("cannot read {}", st_path.display()))?;
        Self::from_tensors(config, tensors).with_context(|| format!("{}", st_path.display()))
    }

    /// Pairs up `tensors` (PEFT keys) into modules, checking ranks against `config.r`.
    pub fn from_tensors(
        config: LoraConfig,
        tensors: HashMap<String, Tensor>,
    ) -> anyhow::Result<Self> {
        let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut unknown = Vec::new();
        for (key, t) in tensors {
            match parse_key(&key) {
                Some((m, half)) => {
                    let e = halves.entry(m).or_default();
                    let t = t.to_dtype(DType::F32)?;
                    match half {
                        Half::A => e.0 = Some(t),
                        Half::B => e.1 = Some(t),
                    }
                }
                None => unknown.push(key),
            }
        }
        unknown.sort();
        ensure!(
            unknown.is_empty(),
            "keys that are not LoRA weights (base_model.model.<module>.lora_A/B.weight): {}",
            unknown.join(", ")
        );
        let targets = config.targets()?;
        let r = config.r;
        let mut modules = BTreeMap::new();
        for (m, pair) in halves {
            let (Some(a), Some(b)) = pair else {
                bail!("{m} has only one of lora_A and lora_B");
            };
            ensure!(
                matches_target(&m, &targets),
                "{m} has LoRA weights but matches none of target_modules {targets:?}"
            );
            let (ar, _) = a
                .dims2()
                .with_context(|| format!("{m}.lora_A is not 2-D"))?;
            let (_, br) = b
                .dims2()
                .with_context(|| format!("{m}.lora_B is not 2-D"))?;
            ensure!(
                ar == r && br == r,
                "{m}: lora_A is {:?} and lora_B is {:?}, but r = {r}",
                a.dims(),
                b.dims()
            );
            modules.insert(m, LoraPair { a, b });
        }
        ensure!(!modules.is_empty(), "the adapter holds no LoRA weights");
        Ok(Self { config, modules })
    }

    /// Writes `adapter_config.json` (sorted keys, two-space indent, as PEFT does) and
    /// `adapter_model.safetensors` (PEFT's saved key names, f32, `format: pt` metadata).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let value = serde_json::to_value(&self.config)?;
        let sorted: BTreeMap<String, Value> = match value {
            Value::Object(m) => m.into_iter().collect(),
            _ => bail!("the adapter config did not serialise to an object"),
        };
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(&sorted)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (key, t) in self.tensors() {
            let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let bytes: Vec<u8> = t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            data.push((key, bytes, t.dims().to_vec()));
        }
        let views = data
            .iter()
            .map(|(k, bytes, shape)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )?;
                Ok((k.clone(), view))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let path = dir.join(WEIGHTS_FILE);
        safetensors::tensor::serialize_to_file(views, Some(meta), &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Every tensor under its PEFT key, A before B, modules in name order.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.modules
            .iter()
            .flat_map(|(m, p)| {
                [
                    (peft_key(m, Half::A), p.a.clone()),
                    (peft_key(m, Half::B), p.b.clone()),
                ]
            })
            .collect()
    }

    pub fn scaling(&self) -> f64 {
        self.config.scaling()
    }

    /// Checks every adapted module against the checkpoint `cfg` describes: it must be a linear layer there, and
    /// `A` / `B` must fit its `[out, in]` weight.
    pub fn check_against(&self, cfg: &Config) -> anyhow::Result<()> {
        let shapes: HashMap<String, Vec<usize>> = expected_tensors(cfg).into_iter().collect();
        let mut problems = Vec::new();
        for (m, p) in &self.modules {
            let Some(w) = shapes.get(&format!("{m}.weight")) else {
                problems.push(format!("{m}: this checkpoint has no such module"));
                continue;
            };
            let &[out, inp] = w.as_slice() else {
                problems.push(format!("{m}: not a linear layer (weight {w:?})"));
                continue;
            };
            let (a, b) = (p.a.dims(), p.b.dims());
            if a[1] != inp || b[0] != out {
                problems.push(format!(
                    "{m}: lora_A {a:?} and lora_B {b:?} do not fit its weight [{out}, {inp}] \
                     (expected [{r}, {inp}] and [{out}, {r}])",
                    r = self.config.r
                ));
            }
        }
        ensure!(
            problems.is_empty(),
            "the adapter does not fit this checkpoint: {}",
            problems.join("; ")
        );
        Ok(())
    }

    /// The same adapter with every `A` and `B` made a trainable `Var` (f32, on `device`), and those `Var`s by PEFT
    /// key.
    pub fn to_vars(&self, device: &Device) -> anyhow::Result<(Self, Vec<(String, Var)>)> {
        let mut vars = Vec::new();
        let mut modules = BTreeMap::new();
        for (m, p) in &self.modules {
            let a = Var::from_tensor(&p.a.to_dtype(DType::F32)?.to_device(device)?)?;
            let b = Var::from_tensor(&p.b.to_dtype(DType::F32)?.to_device(device)?)?;
            modules.insert(
                m.clone(),
                LoraPair {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                },
            );
            vars.push((peft_key(m, Half::A), a));
            vars.push((peft_key(m, Half::B), b));
        }
        Ok((
            Self {
                config: self.config.clone(),
                modules,
            },
            vars,
        ))
    }
}

/// Modules an adapter may name that the reference model never runs as layers: CogAgent's cross encoder
/// attention reads `q_proj` / `k_proj` / `v_proj` weights directly (`F.linear(x, self.q_proj.weight, …)`), so
/// PEFT's LoRA wrappers on them are no-ops there, and they are skipped here too.
pub fn is_reference_no_op(module: &str) -> bool {
    module.starts_with("model.cross_vision.")
        && ["q_proj", "k_proj", "v_proj"]
            .iter()
            .any(|p| module.ends_with(&format!(".attn.{p}")))
}

/// How the quantizer applies an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraMode {
    /// `W + scaling · B A` into float weights at load (inference); quantized weights still get a separate product.
    Merge,
    /// A separate low-rank product on every adapted layer (training).
    Separate,
}

/// The modules of `adapter` that building a model did not use, split into the reference's no-ops and the
/// rest (an error).
pub fn unused_modules(adapter: &Adapter, used: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    adapter
        .modules
        .keys()
        .filter(|m| !used.contains(*m))
        .cloned()
        .partition(|m| is_reference_no_op(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_target_matching() {
        let t = vec!["query_key_value".to_string(), "query".to_string()];
        assert!(matches_target(
            "model.vision.transformer.layers.0.attention.query_key_value",
            &t
        ));
        assert!(matches_target("model.layers.0.cross_attn.query", &t));
        assert!(matches_target("query", &t));
        // The experts' QKVs end in `_query_key_value`, not `.query_key_value`.
        assert!(!matches_target(
            "model.layers.0.self_attn.language_expert_query_key_value",
            &t
        ));
        assert!(!matches_target("model.layers.0.cross_attn.key_value", &t));
    }

    #[test]
    fn keys_parse_in_saved_and_in_memory_form() {
        let m = "model.layers.0.self_attn.vision_expert_query_key_value";
        assert_eq!(parse_key(&peft_key(m, Half::A)), Some((m.into(), Half::A)));
        assert_eq!(
            parse_key(&format!("base_model.model.{m}.lora_B.default.weight")),
            Some((m.into(), Half::B))
        );
        assert_eq!(parse_key("model.layers.0.lora_A.weight"), None);
        assert_eq!(parse_key("base_model.model.lm_head.weight"), None);
    }

    #[test]
    fn scaling_and_unsupported_fields() {
        let mut c = LoraConfig::new(4, 8.0, 0.0, &["query".into()], "m");
        assert_eq!(c.scaling(), 2.0);
        c.other.insert("use_rslora".into(), Value::Bool(true));
        assert_eq!(c.scaling(), 4.0);
        assert!(c.check_supported().is_ok());
        c.bias = "all".into();
        assert!(c.check_supported().is_err());
        let mut c = LoraConfig::new(4, 8.0, 0.0, &["query".into()], "m");
        c.other
            .insert("rank_pattern".into(), serde_json::json!({"query": 8}));
        assert!(c.check_supported().is_err());
        c.target_modules = Value::String(".*query".into());
        assert!(c.targets().is_err());
    }

    #[test]
    fn cross_encoder_projections_are_reference_no_ops() {
        assert!(is_reference_no_op(
            "model.cross_vision.vit.model.blocks.0.attn.q_proj"
        ));
        assert!(!is_reference_no_op(
            "model.cross_vision.vit.model.blocks.0.attn.proj"
        ));
        assert!(!is_reference_no_op("model.layers.0.cross_attn.query"));
    }
}
