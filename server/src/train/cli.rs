//! The command-line flags of `make-data`, `train`, `eval` and `merge` (clap), kept beside the code they drive
//! so `main.rs` only dispatches.

use std::path::PathBuf;

use crate::generate::LoadOptions;
use protocol::PromptVersion;

use super::make_data::{Kind, MakeDataArgs, Placement};
use super::optim::Schedule;
use super::run::{TrainArgs, DEFAULT_TARGETS};

#[derive(clap::Args, Clone)]
pub struct MakeDataCmd {
    /// A new (or empty) folder
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Image side in pixels
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Question kinds (describe, color, shape, count, where, region, captcha, cell, exists); default all but
    /// cell and exists
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<Kind>,
    /// Scenes: grid (one shape per cell of a 4 x 4 grid, square; the first demo's) or free (anywhere, any
    /// aspect, coloured backgrounds, clutter, blur, JPEG, outlines, overlaps)
    #[arg(long, value_enum, default_value = "grid")]
    pub style: Placement,
}

impl MakeDataCmd {
    pub fn run(self) -> anyhow::Result<()> {
        let v = super::make_data::run(&MakeDataArgs {
            out: self.out,
            seed: self.seed,
            count: self.count,
            size: self.size,
            kinds: self.kinds,
            style: self.style,
        })?;
        println!("{v}");
        Ok(())
    }
}

#[derive(clap::Args, Clone)]
pub struct TrainCmd {
    /// Checkpoint folder (config.json + safetensors)
    #[arg(long)]
    pub model: PathBuf,
    /// Data folder: PEFT (images/ + labels/*.json conversations) or SAT (labels in file names, or captions)
    #[arg(long)]
    pub data: PathBuf,
    /// Where the adapter (or, with --full, the checkpoint), checkpoints and log.jsonl go
    #[arg(long)]
    pub out: PathBuf,
    /// A held-out data folder
    #[arg(long, conflicts_with = "valid_split")]
    pub valid: Option<PathBuf>,
    /// Hold out this share of --data instead
    #[arg(long, default_value_t = 0.0)]
    pub valid_split: f64,
    /// Train every weight instead of a LoRA adapter
    #[arg(long)]
    pub full: bool,
    /// With --full: weights whose names start with one of these prefixes stay as they are (e.g.
    /// `model.vision.` keeps the vision tower and its adapter at their initial values)
    #[arg(long, value_delimiter = ',', requires = "full")]
    pub freeze: Vec<String>,
    /// With --full, not with --resume: weights whose names start with one of these prefixes start at zero
    /// (with --freeze, they stay zero: e.g. the vision expert's output projections, so the image tokens
    /// pass through the language model unmixed)
    #[arg(
        long,
        value_delimiter = ',',
        requires = "full",
        conflicts_with = "resume"
    )]
    pub zero: Vec<String>,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    /// Dropout on the low-rank path's input while training (PEFT's lora_dropout; candle's RNG, not --seed)
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Module names (PEFT semantics: a module matches if its name equals or ends with ".<target>")
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TARGETS.map(String::from))]
    pub targets: Vec<String>,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// cosine or linear (after the warm-up)
    #[arg(long, default_value = "cosine")]
    pub schedule: Schedule,
    /// Warm-up: a share of the steps (< 1) or a number of steps
    #[arg(long, default_value_t = 0.02)]
    pub warmup: f64,
    /// Passes over the data (default 1, unless --steps)
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0: no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Validation loss and teacher-forced exact match every N steps (0: only at the end)
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Validation examples per evaluation (0: all)
    #[arg(long, default_value_t = 64)]
    pub eval_samples: usize,
    /// A checkpoint-N folder every N steps (0: only the final result)
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Training loss line in log.jsonl every N steps
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Continue from a checkpoint-N folder of an earlier run with the same flags
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// The checkpoint loaded as for serving: --device, and --dtype for the frozen weights (trained tensors
    /// are f32); training takes one device and float weights.
    #[command(flatten)]
    pub load: LoadOptions,
    /// Prompt template (default: per checkpoint, as in serving)
    #[arg(long)]
    pub version: Option<PromptVersion>,
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl TrainCmd {
    pub fn run(self) -> anyhow::Result<()> {
        let eval_every = if self.eval_every == 0 {
            usize::MAX
        } else {
            self.eval_every
        };
        super::run::run(&TrainArgs {
            model: self.model,
            data: self.data,
            out: self.out,
            valid: self.valid,
            valid_split: self.valid_split,
            full: self.full,
            freeze: self.freeze,
            zero: self.zero,
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets,
            lr: self.lr,
            weight_decay: self.weight_decay,
            schedule: self.schedule,
            warmup: self.warmup,
            epochs: self.epochs,
            steps: self.steps,
            batch: self.batch,
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            eval_every,
            eval_samples: self.eval_samples,
            save_every: self.save_every,
            log_every: self.log_every,
            resume: self.resume,
            load: LoadOptions {
                tokenizer: self.tokenizer,
                ..self.load
            },
            version: self.version,
        })
    }
}

#[derive(clap::Args, Clone)]
pub struct EvalCmd {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// The per-example JSONL (default: eval.jsonl in the data folder)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// At most this many examples (0: all)
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    #[arg(long)]
    pub version: Option<PromptVersion>,
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The checkpoint (and --lora adapter) loaded as for serving.
    #[command(flatten)]
    pub load: LoadOptions,
}

impl EvalCmd {
    pub fn run(self) -> anyhow::Result<()> {
        let summary = super::eval::run(&super::eval::EvalArgs {
            model: self.model,
            data: self.data,
            load: LoadOptions {
                tokenizer: self.tokenizer,
                ..self.load
            },
            version: self.version,
            out: self.out,
            limit: self.limit,
            max_new_tokens: self.max_new_tokens,
        })?;
        println!("{summary}");
        Ok(())
    }
}

#[derive(clap::Args, Clone)]
pub struct MergeCmd {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub lora: PathBuf,
    /// A new (or empty) folder
    #[arg(long)]
    pub out: PathBuf,
    /// Largest shard in MB
    #[arg(long, default_value_t = 5000)]
    pub shard_mb: u64,
}

impl MergeCmd {
    pub fn run(self) -> anyhow::Result<()> {
        let m = super::merge::run(&super::merge::MergeArgs {
            model: self.model,
            lora: self.lora,
            out: self.out,
            shard_bytes: self.shard_mb * 1_000_000,
        })?;
        println!("{}", serde_json::json!(m));
        Ok(())
    }
}
