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

/// Everything needed to turn an example into model inputs.
pub struct Inputs {
    pub cfg: Config,
    pub family: Family,
    pub version: PromptVersion,
    pub tokenizer: Tokenizer,
    pub device: Device,
}

/// One prepared training example: labelled ids and pixels.
pub struct Prepared {
    pub labeled: LabeledInput,
    pub pixels: Tensor,
    pub cross_pixels: Option<Tensor>,
}

impl Inputs {
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// The prompt of round `round` of `ex` (its earlier rounds as history).
    pub fn prompt(&self, ex: &Example, round: usize) -> anyhow::Result<(PromptInput, String)> {
        let (history, query, answer) = ex.round(round);
        let text = prompt_text(self.family, self.version.into(), &history, query);
        let ids = self.encode(&text)?;
        let p = PromptInput::new(
            self.cfg.bos_token_id,
            self.cfg.pad_token_id(),
            Some(self.cfg.image_tokens()),
            &ids,
        );
        Ok((p, answer.to_string()))
    }

    /// The image's pixels for the vision tower and (CogAgent) the cross encoder.
    pub fn pixels(&self, path: &Path) -> anyhow::Result<(Tensor, Option<Tensor>)> {
        let img =
            image::open(path).with_context(|| format!("cannot read image {}", path.display()))?;
        let px = preprocess::pixel_values(&img, self.cfg.vision_config.image_size, &self.device)?;
        let cross = match self.cfg.cross() {
            Some(c) => Some(preprocess::pixel_values(&img, c.image_size, &self.device)?),
            None => None,
        };
        Ok((px, cross))
    }

    pub fn prepare(&self, ex: &Example, round: usize) -> anyhow::Result<Prepared> {
        let (prompt, answer) = self.prompt(ex, round)?;
        let answer_ids = self.encode(&answer)?;
        let labeled = LabeledInput::new(prompt, &answer_ids, self.cfg.eos());
        let (pixels, cross_pixels) = self.pixels(&ex.image)?;
        Ok(Prepared {
            labeled,
            pixels,
            cross_pixels,
        })
    }

    /// Loads the tokenizer and config of `model` and picks the prompt version (`version` or the checkpoint's
    /// default, as in serving).
    pub fn new(
        model: &Path,
        tokenizer: Option<&Path>,
        version: Option<PromptVersion>,
        device: Device,
    ) -> anyhow::Result<Self> {
        let cfg = Config::from_file(&model.join("config.json"))?;
        let tokenizer = load_tokenizer(&find_tokenizer(model, tokenizer)?)?;
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let version = version.unwrap_or_else(|| default_version(&name, &cfg));
        Ok(Self {
            family: cfg.family(),
            cfg,
            version,
            tokenizer,
            device,
        })
    }
}

/// The loss and teacher-forced results of one example.
pub struct Scored {
    pub loss: Tensor,
    /// Answer tokens (EOS included).
    pub tokens: usize,
    /// Every answer token (and EOS) is the argmax: greedy decoding would give exactly this answer.
    pub exact: bool,
}

/// The mean loss of `batch`: one batched forward when the examples allow it (CogVLM, one image span), else
/// the sum of [`score`]s.
fn batch_loss(m: &TrainModel, batch: &[Prepared], pad: u32) -> anyhow::Result<Tensor> {
    let labeled: Vec<&LabeledInput> = batch.iter().map(|p| &p.labeled).collect();
    if !m.model.family().has_cross() && batchable(&labeled) {
        let pixels: Vec<&Tensor> = batch.iter().map(|p| &p.pixels).collect();
        let images = m.model.encode_image(&Tensor::cat(&pixels, 0)?)?;
        let with_image = labeled.iter().all(|l| l.input.image_span.is_some());
        let images = with_image.then_some(&images);
        return Ok(forward_loss_batch(&m.model, &labeled, images, pad)?.loss);
    }
    let mut sum: Option<Tensor> = None;
    for p in batch {
        let s = score(m, p)?.loss;
        sum = Some(match sum {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    Ok((sum.context("empty batch")? / batch.len() as f64)?)
}

/// Forward and loss of one example through `m`.
pub fn score(m: &TrainModel, p: &Prepared) -> anyhow::Result<Scored> {
    let embeds = m.model.encode_image(&p.pixels)?;
    let cross = match &p.cross_pixels {
        Some(px) => Some(m.model.encode_cross(px)?),
        None => None,
    };
    let step = forward_loss(&m.model, &p.labeled, Some(&embeds), cross.as_ref())?;
    let targets = p.labeled.loss_targets();
    let argmax = step.logits.argmax(1)?.to_vec1::<u32>()?;
    Ok(Scored {
        loss: step.loss,
        tokens: targets.len(),
        exact: argmax == targets,
    })
}

/// A new adapter for `cfg` with `config`'s rank, alpha and targets: PEFT's initialisation (`A`
/// Kaiming-uniform, `B` zero) on every targeted linear layer, drawn from `seed`.
pub fn new_adapter(config: LoraConfig, cfg: &Config, seed: u64) -> anyhow::Result<Adapter> {
    let targets = config.targets()?;
    let layers = target_linears(cfg, &targets);
    ensure!(
        !layers.is_empty(),
        "no linear layer of this checkpoint matches the targets {targets:?}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let r = config.r;
    let mut modules = std::collections::BTreeMap::new();
    for (name, [out, inp]) in layers {
        // kaiming_uniform_(a = √5) on [r, in]: U(−1/√in, 1/√in).
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..r * inp)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(a, (r, inp), &Device::Cpu)?;
        let b = Tensor::zeros((out, r), DType::F32, &Device::Cpu)?;
        modules.insert(name, LoraPair { a, b });
    }
    Ok(Adapter { config, modules })
}

/// Trainer state saved beside each checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    full: bool,
    seed: u64,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIM_FILE: &str = "optimizer.safetensors";

/// Writes the trained tensors (full: a checkpoint folder; LoRA: the adapter), the optimizer and the state;
/// `resumable` (a `checkpoint-N`) keeps full fine-tuning's weights in f32.
#[allow(clippy::too_many_arguments)]
fn save(
    dir: &Path,
    args: &TrainArgs,
    inputs: &Inputs,
    m: &TrainModel,
    adapter: Option<&Adapter>,
    opt: &AdamW,
    state: &TrainerState,
    resumable: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if args.full {
        // `--resume` checkpoints keep f32. The result goes to the config's dtype except tensors under 1 M
        // elements (norms, biases, small matrices), which stay f32: rounding a norm weight's small updates to
        // bf16 undoes them, and they weigh nothing next to the large matrices.
        let final_dtype = save_dtype(&inputs.cfg);
        let mut map = HashMap::new();
        for (name, v) in &m.weights {
            let t = v.as_tensor();
            let dtype = if resumable || t.elem_count() < 1 << 20 {
                DType::F32
            } else {
                final_dtype
            };
            map.insert(name.clone(), t.to_dtype(dtype)?);
        }
        let path = dir.join("model.safetensors");
        crate::model::weights::save_pt(&map, &path)?;
        std::fs::copy(args.model.join("config.json"), dir.join("config.json"))?;
        let tok = find_tokenizer(&args.model, args.load.tokenizer.as_deref())?;
        std::fs::copy(tok, dir.join("tokenizer.json"))?;
    } else if let Some(a) = adapter {
        let mut trained = a.clone();
        let by_key: HashMap<&str, &candle_core::Var> =
            m.lora.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (module, pair) in trained.modules.iter_mut() {
            let get = |half| {
                by_key
                    .get(crate::model::lora::peft_key(module, half).as_str())
                    .map(|v| v.as_tensor().clone())
            };
            if let (Some(a), Some(b)) = (
                get(crate::model::lora::Half::A),
                get(crate::model::lora::Half::B),
            ) {
                *pair = LoraPair { a, b };
            }
        }
        trained.save(dir)?;
    }
    opt.save(&dir.join(OPTIM_FILE))?;
    std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
    Ok(())
}

/// The dtype a full fine-tune is saved in: the checkpoint's `torch_dtype` (THUDM's are bf16), else f32.
fn save_dtype(cfg: &Config) -> DType {
    match cfg.torch_dtype.as_deref() {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    }
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

/// A training run under way: what each step reads, and the log it writes.
struct Run<'a> {
    args: &'a TrainArgs,
    inputs: &'a Inputs,
    m: &'a TrainModel,
    adapter: Option<&'a Adapter>,
    valid: &'a [Example],
    total_steps: usize,
    warmup: usize,
    log: std::fs::File,
    started: Instant,
    /// Training loss summed over the steps since the last log line, and their number.
    window: (f64, usize),
}

impl Run<'_> {
    /// Steps `start..total_steps`: the examples in a reshuffled order each pass, one round of each drawn.
    fn train(
        mut self,
        train: &[Example],
        opt: &mut AdamW,
        rng: &mut StdRng,
        start: usize,
    ) -> anyhow::Result<()> {
        let args = self.args;
        let mut tokens = 0usize;
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut cursor = order.len();
        for step in start..self.total_steps {
            let lr = args
                .schedule
                .lr(args.lr, step, self.warmup, self.total_steps);
            let mut grads: Vec<Option<Tensor>> = vec![None; opt.len()];
            let mut step_loss = 0.0;
            for _ in 0..args.grad_accum {
                let mut batch = Vec::with_capacity(args.batch);
                for _ in 0..args.batch {
                    if cursor >= order.len() {
                        order.shuffle(rng);
                        cursor = 0;
                    }
                    let ex = &train[order[cursor]];
                    cursor += 1;
                    let round = rng.random_range(0..ex.rounds.len());
                    let p = self
                        .inputs
                        .prepare(ex, round)
                        .with_context(|| format!("example {}", ex.image.display()))?;
                    tokens += p.labeled.input.input_ids.len();
                    batch.push(p);
                }
                let pad = self.inputs.cfg.pad_token_id();
                let loss = (batch_loss(self.m, &batch, pad)? / args.grad_accum as f64)?;
                step_loss += loss.to_scalar::<f32>()? as f64;
                opt.accumulate(&loss.backward()?, &mut grads)?;
            }
            let norm = opt.clip(&mut grads, args.max_grad_norm)?;
            opt.step(&grads, lr)?;
            self.after_step(step + 1, start, (step_loss, lr, norm), tokens, opt)?;
        }
        eprintln!(
            "\ndone in {}; wrote {}",
            fmt_duration(self.started.elapsed().as_secs_f64()),
            args.out.display()
        );
        Ok(())
    }

    /// After step `done` (of a run that started at `start`, `tokens` read since): the progress line, the log's
    /// training line every `--log-every` steps, validation every `--eval-every`, and the checkpoints.
    fn after_step(
        &mut self,
        done: usize,
        start: usize,
        (step_loss, lr, norm): (f64, f64, f64),
        tokens: usize,
        opt: &AdamW,
    ) -> anyhow::Result<()> {
        let (args, total_steps) = (self.args, self.total_steps);
        self.window.0 += step_loss;
        self.window.1 += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (done - start) as f64 / elapsed.max(1e-9);
        let tok_s = tokens as f64 / elapsed.max(1e-9);
        eprint!(
            "\rstep {done}/{total_steps} loss {step_loss:.4} lr {lr:.2e} |g| {norm:.2} {tok_s:.0} tok/s ETA {}   ",
            fmt_duration((total_steps - done) as f64 / rate.max(1e-9))
        );
        if done.is_multiple_of(args.log_every.max(1)) || done == total_steps {
            let line = json!({"type": "train", "step": done, "loss": self.window.0 / self.window.1 as f64,
                "lr": lr, "grad_norm": norm, "steps_per_s": rate, "tokens_per_s": tok_s,
                "elapsed_s": elapsed});
            writeln!(self.log, "{line}")?;
            self.window = (0.0, 0);
        }
        let eval_now =
            args.eval_every > 0 && (done.is_multiple_of(args.eval_every) || done == total_steps);
        if eval_now && !self.valid.is_empty() {
            let (loss, exact, n) = evaluate(self.m, self.inputs, self.valid, args.eval_samples)?;
            let line = json!({"type": "eval", "step": done, "valid_loss": loss, "valid_exact": exact,
                "valid_examples": n, "elapsed_s": self.started.elapsed().as_secs_f64()});
            eprintln!("\n{line}");
            writeln!(self.log, "{line}")?;
        }
        let state = TrainerState {
            step: done,
            total_steps,
            full: args.full,
            seed: args.seed,
        };
        // A periodic checkpoint goes to `checkpoint-N/`; the final result to `--out` itself.
        let periodic =
            args.save_every > 0 && done.is_multiple_of(args.save_every) && done < total_steps;
        if periodic || done == total_steps {
            let dir = match periodic {
                true => args.out.join(format!("checkpoint-{done}")),
                false => args.out.clone(),
            };
            save(
                &dir,
                args,
                self.inputs,
                self.m,
                self.adapter,
                opt,
                &state,
                periodic,
            )?;
        }
        Ok(())
    }
}
