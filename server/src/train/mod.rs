//! Training: the model built for gradients (weights and LoRA pairs as `Var`s), answer-only labels and the loss
//! (`loss`), and the check of one training step against the reference's (`parity`).

pub mod captcha;
pub mod cli;
pub mod data;
pub mod eval;
pub mod free_scene;
pub mod loss;
pub mod make_data;
pub mod merge;
pub mod optim;
pub mod parity;
pub mod position_probe;
pub mod run;
pub mod scene;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use crate::model::config::Config;
use crate::model::lora::{Adapter, LoraMode};
use crate::model::quant::{Quant, Quantizer};
use crate::model::weights::Checkpoint;
use crate::model::CogVlm;

/// A checkpoint built for a training step, in f32.
pub struct TrainModel {
    pub model: CogVlm,
    /// Every checkpoint tensor as a trainable `Var`, by its name (full fine-tuning; empty otherwise).
    pub weights: HashMap<String, Var>,
    /// The adapter's `A` / `B` as `Var`s, by PEFT key (empty without an adapter).
    pub lora: Vec<(String, Var)>,
}

/// Loads the checkpoint in `dir` on `device` in f32. With `full`, every tensor becomes a `Var` (full
/// fine-tuning); else the weights are constants. `adapter` is applied as a separate low-rank product on the
/// layers it names, its pairs as `Var`s. Nothing on the way copies a weight out of the graph: the model's
/// layers hold the `Var`s' own tensors.
pub fn load_model(
    dir: &Path,
    device: &Device,
    full: bool,
    adapter: Option<&Adapter>,
) -> anyhow::Result<TrainModel> {
    load_model_in(dir, device, DType::F32, full, adapter)
}

/// As [`load_model`] with the frozen weights in `dtype` (the model dtype); `Var`s (every weight with `full`,
/// the adapter's pairs) are f32 whatever `dtype` is.
pub fn load_model_in(
    dir: &Path,
    device: &Device,
    dtype: DType,
    full: bool,
    adapter: Option<&Adapter>,
) -> anyhow::Result<TrainModel> {
    let dtype = if full { DType::F32 } else { dtype };
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let ck = Checkpoint::open(dir, &cfg)?;
    let mut tensors = HashMap::new();
    let mut weights = HashMap::new();
    for (name, _) in ck.st.tensors() {
        let t = ck
            .st
            .load(&name, device)
            .with_context(|| format!("cannot read {name}"))?
            .to_dtype(dtype)?;
        let t = if full {
            let v = Var::from_tensor(&t)?;
            let t: Tensor = v.as_tensor().clone();
            weights.insert(name.clone(), v);
            t
        } else {
            t
        };
        tensors.insert(name, t);
    }
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let mut q = Quantizer::new(Quant::Float).for_training();
    let mut lora = Vec::new();
    if let Some(a) = adapter {
        let (a, vars) = a.to_vars(device)?;
        q = q.with_lora(a, LoraMode::Separate);
        lora = vars;
    }
    let model = CogVlm::with_quantizer(&cfg, vb, q)
        .with_context(|| format!("cannot build the model from {}", dir.display()))?;
    Ok(TrainModel {
        model,
        weights,
        lora,
    })
}
