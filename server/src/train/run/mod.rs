//! `cogvlm train`: LoRA (default) or full fine-tuning of a CogVLM / CogAgent checkpoint on a data folder
//! ([`super::data`]), with AdamW ([`super::optim`]), a warm-up then cosine or linear schedule, gradient
//! accumulation, global-norm clipping, periodic evaluation and checkpoints, and resuming.
//!
//! What is written under `--out`:
//! - `log.jsonl`: one JSON line per logged step (`"type": "train"`) and per evaluation (`"type": "eval"`);
//! - `checkpoint-<step>/` every `--save-every` steps and the final result in `--out` itself: the adapter in
//!   PEFT's format (LoRA), or a checkpoint folder (`config.json`, `model.safetensors`: large tensors in the
//!   checkpoint's dtype, those under 1 M elements and every `checkpoint-N`'s in f32; `tokenizer.json`) that every command loads (full); beside it `optimizer.safetensors` and
//!   `trainer_state.json`, which `--resume` reads.
//!
//! Frozen weights stay in the model dtype; trained tensors (LoRA pairs, or every weight with `--full`) and the
//! optimizer's moments are f32.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokenizers::Tokenizer;

use super::data::{self, Example};
use super::loss::{batchable, forward_loss, forward_loss_batch, LabeledInput};
use super::optim::{AdamW, Schedule};
use super::{load_model_in, TrainModel};
use crate::generate::{default_version, find_tokenizer, load_tokenizer, LoadOptions};
use crate::model::config::Config;
use crate::model::lora::{target_linears, Adapter, LoraConfig, LoraPair};
use crate::model::preprocess;
use crate::model::prompt::{prompt_text, PromptInput};
use crate::model::Family;
use protocol::PromptVersion;

mod inputs;
mod save;
mod steps;

use inputs::batch_loss;
pub use inputs::{new_adapter, score, Inputs, Prepared, Scored};
use save::{save, TrainerState, OPTIM_FILE, STATE_FILE};
use steps::Run;

/// The PEFT demo's target modules.
pub const DEFAULT_TARGETS: [&str; 6] = [
    "language_expert_query_key_value",
    "vision_expert_query_key_value",
    "query_key_value",
    "q_proj",
    "k_proj",
    "v_proj",
];

#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub valid: Option<PathBuf>,
    pub valid_split: f64,
    pub full: bool,
    /// Name prefixes of weights a full fine-tune leaves as they are.
    pub freeze: Vec<String>,
    /// Name prefixes of weights a fresh full fine-tune sets to zero first.
    pub zero: Vec<String>,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Warm-up: a fraction of the steps when < 1, else a number of steps.
    pub warmup: f64,
    pub epochs: Option<f64>,
    pub steps: Option<usize>,
    pub batch: usize,
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub eval_every: usize,
    /// Validation examples per evaluation (0 = all).
    pub eval_samples: usize,
    pub save_every: usize,
    pub log_every: usize,
    pub resume: Option<PathBuf>,
    /// Device and frozen weights' dtype (and the tokenizer); training refuses the rest of the load options.
    pub load: LoadOptions,
    pub version: Option<PromptVersion>,
}
fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Mean loss and exact-match share over `examples` (their last round, earlier ones as history; at most `limit`, 0 = all).
fn evaluate(
    m: &TrainModel,
    inputs: &Inputs,
    examples: &[Example],
    limit: usize,
) -> anyhow::Result<(f64, f64, usize)> {
    let n = if limit == 0 {
        examples.len()
    } else {
        limit.min(examples.len())
    };
    let (mut loss, mut exact) = (0.0, 0usize);
    for ex in &examples[..n] {
        let last = ex.rounds.len() - 1;
        let p = inputs.prepare(ex, last)?;
        let s = score(m, &p)?;
        loss += s.loss.to_scalar::<f32>()? as f64;
        exact += s.exact as usize;
    }
    Ok((loss / n.max(1) as f64, exact as f64 / n.max(1) as f64, n))
}

/// Training loads the whole checkpoint on one device in float: the load options it cannot honour are refused
/// by name rather than ignored.
fn check_load_options(load: &LoadOptions) -> anyhow::Result<()> {
    ensure!(
        load.quant == crate::model::quant::Quant::Float,
        "train: quantized frozen weights (QLoRA) are not built yet; train in float (drop --quant)"
    );
    ensure!(
        load.devices.is_empty() && load.gpu_layers.is_none(),
        "train: the checkpoint is trained on one device (--device); --devices / --gpu-layers do not apply"
    );
    ensure!(
        load.lora.is_none(),
        "train: to continue an adapter's training use --resume with its checkpoint-N folder (--lora applies at load \
         for serving and eval)"
    );
    Ok(())
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    ensure!(
        args.batch >= 1 && args.grad_accum >= 1,
        "--batch and --grad-accum must be at least 1"
    );
    ensure!(args.rank >= 1, "--rank must be at least 1");
    check_load_options(&args.load)?;
    let device = args.load.device.open()?;
    let inputs = Inputs::new(
        &args.model,
        args.load.tokenizer.as_deref(),
        args.version,
        device.clone(),
    )?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (layout, train, valid) = split_data(args, &mut rng)?;
    let per_step = args.batch * args.grad_accum;
    let total_steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, e) => ((e.unwrap_or(1.0) * train.len() as f64) / per_step as f64).ceil() as usize,
    }
    .max(1);
    eprintln!(
        "data: {} ({layout:?}), {} training and {} validation examples; prompt version {}",
        args.data.display(),
        train.len(),
        valid.len(),
        inputs.version
    );

    let resume_state = read_resume_state(args)?;
    let (m, adapter) = load_trained_model(args, &inputs, &device)?;
    let params = trained_params(args, &m)?;
    let n_params: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(params, args.weight_decay)?;
    let mut start = 0;
    if let (Some(dir), Some(s)) = (&args.resume, &resume_state) {
        opt.load(&dir.join(OPTIM_FILE))?;
        start = s.step;
        eprintln!("resumed from {} at step {start}", dir.display());
        // The data order after a resume is drawn afresh from the seed and the step.
        rng = StdRng::seed_from_u64(args.seed ^ (start as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    if start >= total_steps {
        bail!("--resume is already at step {start} of {total_steps}: nothing to train");
    }
    let warmup = if args.warmup < 1.0 {
        (args.warmup * total_steps as f64).round() as usize
    } else {
        args.warmup as usize
    };
    eprintln!(
        "training {} parameters ({}), {total_steps} steps of {per_step} examples, lr {} ({:?}, warm-up {warmup})",
        n_params,
        if args.full { "full" } else { "LoRA" },
        args.lr,
        args.schedule
    );
    let run = Run {
        args,
        inputs: &inputs,
        m: &m,
        adapter: adapter.as_ref(),
        valid: &valid,
        total_steps,
        warmup,
        log: open_log(&args.out)?,
        started: Instant::now(),
        window: (0.0, 0),
    };
    run.train(&train, &mut opt, &mut rng, start)
}

/// The training examples and the validation ones: `--valid`'s folder, or `--valid-split` of the data (drawn with
/// `rng`), or none.
fn split_data(
    args: &TrainArgs,
    rng: &mut StdRng,
) -> anyhow::Result<(data::Layout, Vec<Example>, Vec<Example>)> {
    let (layout, mut train) = data::load(&args.data)?;
    let valid = match &args.valid {
        Some(dir) => data::load(dir)?.1,
        None if args.valid_split > 0.0 => {
            ensure!(args.valid_split < 1.0, "--valid-split must be below 1");
            train.shuffle(rng);
            let n = ((train.len() as f64 * args.valid_split).round() as usize).max(1);
            ensure!(n < train.len(), "--valid-split leaves no training examples");
            train.split_off(train.len() - n)
        }
        None => Vec::new(),
    };
    Ok((layout, train, valid))
}

/// The trainer state of `--resume`'s folder, checked to be the same kind of run.
fn read_resume_state(args: &TrainArgs) -> anyhow::Result<Option<TrainerState>> {
    let Some(dir) = &args.resume else {
        return Ok(None);
    };
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "cannot read {} (--resume takes a checkpoint-N folder)",
            p.display()
        )
    })?;
    let s: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("{} is malformed", p.display()))?;
    let kind = |full: bool| if full { "--full" } else { "LoRA" };
    ensure!(
        s.full == args.full,
        "{} was a {} run; this one is {}",
        dir.display(),
        kind(s.full),
        kind(args.full)
    );
    Ok(Some(s))
}

/// The model to train: f32 and whole for `--full` (from `--resume` when given, with `--zero`'s weights zeroed),
/// else the frozen checkpoint with a new (or resumed) LoRA adapter.
fn load_trained_model(
    args: &TrainArgs,
    inputs: &Inputs,
    device: &Device,
) -> anyhow::Result<(TrainModel, Option<Adapter>)> {
    // Said before the weights load: on a full-size checkpoint that takes a while.
    ensure!(
        args.zero.is_empty() || (args.full && args.resume.is_none()),
        "--zero starts a full fine-tune (--full, without --resume)"
    );
    let (m, adapter) = if args.full {
        let dir = args.resume.as_deref().unwrap_or(args.model.as_path());
        (load_model_in(dir, device, DType::F32, true, None)?, None)
    } else {
        let adapter = match &args.resume {
            Some(dir) => Adapter::load(dir)?,
            None => {
                let config = LoraConfig::new(
                    args.rank,
                    args.alpha,
                    args.dropout,
                    &args.targets,
                    &args.model.display().to_string(),
                );
                new_adapter(config, &inputs.cfg, args.seed)?
            }
        };
        let dtype = args.load.float_type();
        let m = load_model_in(&args.model, device, dtype, false, Some(&adapter))?;
        (m, Some(adapter))
    };
    for p in &args.zero {
        let mut hit = false;
        for (_, v) in m.weights.iter().filter(|(k, _)| k.starts_with(p.as_str())) {
            v.set(&v.zeros_like()?)?;
            hit = true;
        }
        ensure!(
            hit,
            "--zero {p}: no weight of {} starts with it",
            args.model.display()
        );
    }
    Ok((m, adapter))
}

/// What the optimizer updates: every weight not `--freeze`d (full), or the adapter's tensors.
fn trained_params(
    args: &TrainArgs,
    m: &TrainModel,
) -> anyhow::Result<Vec<(String, candle_core::Var)>> {
    if !args.full {
        return Ok(m.lora.clone());
    }
    for p in &args.freeze {
        ensure!(
            m.weights.keys().any(|k| k.starts_with(p.as_str())),
            "--freeze {p}: no weight of {} starts with it",
            args.model.display()
        );
    }
    let frozen = |k: &str| args.freeze.iter().any(|p| k.starts_with(p.as_str()));
    let mut v: Vec<_> = m
        .weights
        .iter()
        .filter(|(k, _)| !frozen(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// `--out`, created, and its `log.jsonl` opened for appending (a resumed run continues it).
fn open_log(out: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let log_path = out.join("log.jsonl");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))
}
