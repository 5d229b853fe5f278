//! `cogvlm`: chat with a CogVLM / CogAgent checkpoint, check it against reference fixtures, benchmark it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cogvlm::generate::{ChatRequest, LoadOptions, Pipeline, Sampling};
use cogvlm::terminal::{converse, Io, Reply, SamplingArgs};
use protocol::PromptVersion;

#[derive(Parser)]
#[command(name = "cogvlm", version, about = "CogVLM / CogAgent in Rust (candle)")]
struct Cli {
    /// Default: `serve`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Clone)]
struct ServeCmd {
    /// Address to bind (another than loopback gets an access token, as with --share).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Share on the LAN: bind all interfaces, require an access token, print the link.
    #[arg(long)]
    share: bool,
    /// The access token, 16–256 of [A-Za-z0-9-._~] (default with --share: a random one, printed
    /// in the link). Visible in the process list: prefer --token-file or COGVLM_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// A file holding the access token.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// A host name the server also answers to besides localhost and IP addresses (e.g. box.local);
    /// repeatable. Other names get 421 (DNS rebinding).
    #[arg(long)]
    allow_host: Vec<String>,
    /// Whether an API request's `model` may switch the loaded checkpoint: never, loopback (from
    /// this machine only) or always.
    #[arg(long, default_value = "loopback")]
    api_switch: cogvlm::openai::ApiSwitch,
    /// Checkpoint switches waiting at once; more are refused as busy.
    #[arg(long, default_value_t = 4)]
    max_queued_switches: usize,
    /// Least time between two checkpoint switches, in ms.
    #[arg(long, default_value_t = 500)]
    switch_cooldown_ms: u64,
    /// Seconds a request's header may take to arrive.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a connection may stay without a byte read or written.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Seconds a client may leave an answer unread before it is cancelled.
    #[arg(long, default_value_t = 30)]
    write_timeout: u64,
    /// Open connections, all clients together.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Open connections from one address (other than this machine's).
    #[arg(long, default_value_t = 64)]
    max_connections_per_address: usize,
    /// Folder of checkpoints (each a subfolder with config.json + safetensors); default: the bundled ones,
    /// looked for beside the binary, then in the working tree.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Largest image accepted, in MB.
    #[arg(long, default_value_t = 20.0)]
    max_upload_mb: f64,
    /// Largest image accepted, in megapixels (decoded width × height).
    #[arg(long, default_value_t = 64.0)]
    max_megapixels: f64,
    /// Requests waiting or running, all clients together; more get "busy, try again".
    #[arg(long, default_value_t = 128)]
    max_queue: usize,
    /// Requests waiting or running per client (browser or API address); more get 429.
    #[arg(long, default_value_t = 64)]
    max_per_client: usize,
    /// Requests per minute per client, sustained [default: 60, on only with --share, another
    /// --host than loopback, or when set]
    #[arg(long)]
    rate_per_minute: Option<u32>,
    /// Requests per client in a burst [default: 20, on as --rate-per-minute]
    #[arg(long)]
    rate_burst: Option<u32>,
    /// Answers generated together (continuous batching) [default: 8 on CPU, 16 on CUDA; at most 64]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    max_batch: Option<u64>,
    /// Prompt positions prefilled between two decode steps of the running answers; 0: a whole
    /// prompt at once [default: 256]
    #[arg(long)]
    prefill_chunk: Option<usize>,
    #[command(flatten)]
    load: LoadOptions,
    #[command(flatten)]
    backend: cogvlm::remote::BackendArgs,
    /// With --backend openai: the model name on the remote server.
    #[arg(long)]
    model: Option<String>,
}

#[derive(clap::Args)]
struct ChatCmd {
    /// Checkpoint folder (config.json + safetensors); with --backend openai, the remote model name.
    #[arg(long)]
    model: PathBuf,
    /// Image to chat about (asked for interactively when omitted).
    #[arg(long)]
    image: Option<PathBuf>,
    /// chat, chat_old, base or vqa (default: per checkpoint)
    #[arg(long)]
    version: Option<PromptVersion>,
    /// tokenizer.json (default: found next to the checkpoint)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    load: LoadOptions,
    #[command(flatten)]
    backend: cogvlm::remote::BackendArgs,
}

#[derive(clap::Args)]
struct ParityCmd {
    #[arg(long)]
    fixtures: PathBuf,
    /// Only cases whose id contains this.
    #[arg(long)]
    case: Option<String>,
    /// The models loaded as for serving; compared in f32 unless --dtype says otherwise, a quantized model
    /// within its format's tolerance.
    #[command(flatten)]
    load: LoadOptions,
}

#[derive(clap::Args)]
struct BenchCmd {
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    /// cogvlm-17b, cogvlm-base-224, cogagent-18b or cogvlm2-19b (with --random-weights)
    #[arg(long, requires = "random_weights")]
    config: Option<String>,
    /// With --config: this many decoder layers instead of the checkpoint's (full width, reduced depth)
    #[arg(long, requires = "config")]
    layers: Option<usize>,
    /// With --config: this many vision-tower layers instead of the checkpoint's
    #[arg(long, requires = "config")]
    vision_layers: Option<usize>,
    #[arg(long)]
    random_weights: bool,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Timed runs, each on a new image (medians are reported)
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Stop after loading: the plan, load time and loading's peak memory only
    #[arg(long)]
    load_only: bool,
    /// Also run N requests at once, decoded together, for each N (e.g. 1,4,8,16)
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// With --concurrency: sequences decoded together at most [default: as `serve`]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    max_batch: Option<u64>,
    /// A text prompt of exactly N positions and no image (prefill comparable with text-only engines)
    #[arg(long, value_name = "N")]
    text_only: Option<usize>,
    /// With --concurrency: prompt positions prefilled between two decode steps; 0: whole prompts
    /// [default: as `serve`]
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// Skip the untimed warm-up turn (a full-size CPU turn takes an hour; the CPU compiles no kernels)
    #[arg(long)]
    no_warmup: bool,
    #[command(flatten)]
    load: LoadOptions,
}

#[derive(clap::Args)]
struct MakeCheckpointCmd {
    /// cogvlm-17b, cogvlm-base-224, cogagent-18b, … or a config.json
    #[arg(long)]
    config: String,
    /// A new (or empty) folder
    #[arg(long)]
    out: PathBuf,
    /// Largest shard in MB (THUDM's are ~5 GB)
    #[arg(long, default_value_t = 5000)]
    shard_mb: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep only this many decoder layers (a smaller file with full-width tensors)
    #[arg(long)]
    layers: Option<usize>,
    /// Keep only this many EVA2-CLIP layers
    #[arg(long)]
    vision_layers: Option<usize>,
    /// Multiply the vision position embedding's draw by this (the bundled demo used 24)
    #[arg(long, default_value_t = 1.0)]
    position_scale: f32,
    /// Draw the GLU adapter as a near-identity map with this output scale (BENCHMARKS.md's sessions 14–15
    /// used 3 and trained with the adapter frozen)
    #[arg(long)]
    identity_adapter: Option<f32>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the chat page (the default).
    Serve(ServeCmd),
    /// Interactive multi-turn chat in the terminal (`clear` starts over with a new image, `stop` quits).
    Chat(ChatCmd),
    /// Run every case of a reference fixture directory; prints one line per check and `N passed, M failed`.
    Parity(ParityCmd),
    /// Check one training step per example of a training fixture directory (loss, logits, LoRA and full
    /// fine-tuning gradients against PyTorch + PEFT), f32 on the CPU; one line per check, `N passed, M failed`.
    TrainParity {
        #[arg(long)]
        fixtures: PathBuf,
        /// Only examples whose id contains this.
        #[arg(long)]
        example: Option<String>,
    },
    /// Time to first token, decode tokens/s and peak memory as one JSON line.
    Bench(BenchCmd),
    /// Write a random-weight checkpoint in the Hugging Face layout (bf16 shards + index), streaming.
    MakeCheckpoint(MakeCheckpointCmd),
    /// Write synthetic scenes (shapes, colours, counts, boxes, captchas) in the PEFT data layout.
    MakeData(cogvlm::train::cli::MakeDataCmd),
    /// Fine-tune a checkpoint: LoRA (default, PEFT-format adapter) or --full.
    Train(cogvlm::train::cli::TrainCmd),
    /// Greedy answers on a data folder: exact / case-insensitive accuracy, box IoU ≥ 0.5; summary last.
    Eval(cogvlm::train::cli::EvalCmd),
    /// Merge a LoRA adapter into a checkpoint, writing a normal sharded HF checkpoint.
    Merge(cogvlm::train::cli::MergeCmd),
    /// How much the vision tower's output depends on where a shape is (cosines between the same square in
    /// different cells of a 4 × 4 grid), as one JSON line.
    PositionProbe {
        #[arg(long)]
        model: PathBuf,
    },
}

fn main() {
    init_logs();
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        // `cogvlm` alone is `cogvlm serve` with its defaults.
        None => match Cli::parse_from(["cogvlm", "serve"]).command {
            Some(c) => c,
            None => unreachable!("`serve` parses as a command"),
        },
    };
    if let Err(e) = command.run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

impl Command {
    fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(c) => serve(c),
            Command::Chat(c) => c.run(),
            Command::Parity(c) => c.run(),
            Command::TrainParity { fixtures, example } => train_parity(fixtures, example),
            Command::MakeData(c) => c.run(),
            Command::Train(c) => c.run(),
            Command::Eval(c) => c.run(),
            Command::Merge(c) => c.run(),
            Command::Bench(c) => c.run(),
            Command::MakeCheckpoint(c) => c.run(),
            Command::PositionProbe { model } => {
                let report = cogvlm::train::position_probe::run(&model, &candle_core::Device::Cpu)?;
                println!("{}", serde_json::json!(report));
                Ok(())
            }
        }
    }
}

impl BenchCmd {
    fn run(self) -> anyhow::Result<()> {
        let args = cogvlm::tools::bench::BenchArgs {
            model: self.model,
            config: self.config,
            load: LoadOptions {
                tokenizer: self.tokenizer,
                ..self.load
            },
            new_tokens: self.new_tokens,
            repeat: self.repeat,
            load_only: self.load_only,
            concurrency: self.concurrency,
            max_batch: self.max_batch.map(|n| n as usize),
            text_only: self.text_only,
            prefill_chunk: self.prefill_chunk,
            depth: (self.layers, self.vision_layers),
            warmup: !self.no_warmup,
        };
        cogvlm::tools::bench::run(&args).map(|v| println!("{v}"))
    }
}

impl MakeCheckpointCmd {
    fn run(self) -> anyhow::Result<()> {
        let args = cogvlm::tools::make_checkpoint::MakeArgs {
            config: self.config,
            out: self.out,
            shard_bytes: self.shard_mb * 1_000_000,
            seed: self.seed,
            layers: self.layers,
            vision_layers: self.vision_layers,
            position_scale: self.position_scale,
            identity_adapter: self.identity_adapter,
        };
        cogvlm::tools::make_checkpoint::run(&args).map(|w| println!("{}", serde_json::json!(w)))
    }
}

impl ChatCmd {
    fn run(self) -> anyhow::Result<()> {
        let sampling = self.sampling.sampling()?;
        if !self.backend.is_local() {
            let model = self.model.display().to_string();
            return cogvlm::remote::cli::chat_with(&self.backend, model, self.image, sampling);
        }
        let opts = LoadOptions {
            tokenizer: self.tokenizer,
            ..self.load
        };
        chat(self.model, self.image, self.version, sampling, opts)
    }
}

impl ParityCmd {
    /// One line per check, then `N passed, M failed`; exits 1 when a check failed.
    fn run(self) -> anyhow::Result<()> {
        let (passed, failed) = cogvlm::tools::parity::run_all(
            &self.fixtures,
            &self.load,
            self.case.as_deref(),
            &mut |c| println!("{c}"),
        )?;
        println!("{passed} passed, {failed} failed");
        if failed > 0 {
            std::process::exit(1);
        }
        Ok(())
    }
}

/// `cogvlm serve`: the flags as the web server's options.
fn serve(s: ServeCmd) -> anyhow::Result<()> {
    let remote = s.backend.remote(s.model)?;
    cogvlm::web::serve(cogvlm::web::ServeArgs {
        host: s.host,
        port: s.port,
        models_dir: s.models_dir,
        load: s.load,
        share: s.share,
        token: cogvlm::web::access::token_from(
            s.token,
            s.token_file.as_deref(),
            std::env::var("COGVLM_TOKEN").ok(),
        )?,
        allowed_hosts: s.allow_host,
        api_switch: s.api_switch,
        conn: cogvlm::net::conn::ConnLimits {
            header_read: Duration::from_secs(s.header_timeout.max(1)),
            idle: Duration::from_secs(s.idle_timeout.max(1)),
            write_stall: Duration::from_secs(s.write_timeout.max(1)),
            max_connections: s.max_connections.max(1),
            per_address: s.max_connections_per_address.max(1),
        },
        limits: cogvlm::engine::Limits {
            max_upload_bytes: (s.max_upload_mb * 1e6) as usize,
            max_pixels: (s.max_megapixels * 1e6) as u64,
            ..Default::default()
        },
        fairness: cogvlm::engine::Fairness {
            max_queue: s.max_queue,
            per_client: s.max_per_client,
            rate_limit: s.rate_per_minute.is_some() || s.rate_burst.is_some(),
            per_minute: s.rate_per_minute.unwrap_or(60),
            burst: s.rate_burst.unwrap_or(20),
            // Turned on by the server when it is shared.
            per_address: false,
            max_queued_switches: s.max_queued_switches.max(1),
            switch_cooldown: Duration::from_millis(s.switch_cooldown_ms),
        },
        max_batch: s.max_batch.map(|n| n as usize),
        prefill_chunk: s.prefill_chunk,
        remote,
    })
}

fn train_parity(fixtures: PathBuf, example: Option<String>) -> anyhow::Result<()> {
    let (passed, failed) =
        cogvlm::train::parity::run_all(&fixtures, example.as_deref(), &mut |c| println!("{c}"))?;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn chat(
    model: PathBuf,
    image: Option<PathBuf>,
    version: Option<PromptVersion>,
    sampling: Sampling,
    opts: LoadOptions,
) -> anyhow::Result<()> {
    eprintln!("loading {} …", model.display());
    let mut last = 0u64;
    let mut pipe = Pipeline::load(&model, &opts, &mut |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct >= last + 10 || done == total {
            last = pct;
            eprint!("\r{pct:3}% of {:.1} MiB", total as f64 / (1 << 20) as f64);
        }
    })?;
    let quant = pipe.model().quant_report().summary();
    if !quant.is_empty() {
        eprintln!("\r{quant}");
    }
    let s = pipe.info().clone();
    eprintln!(
        "\r{} ({}, {} px), prompt version {}",
        s.name,
        s.kind,
        s.image_size,
        version.unwrap_or(s.default_version)
    );
    let (stdin, mut stdout, mut stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let mut io = Io {
        input: &mut stdin.lock(),
        out: &mut stdout,
        err: &mut stderr,
    };
    let open = |p: &str| image::open(p).with_context(|| format!("cannot open image {p}"));
    converse(&mut io, image, open, |out, img, history, query| {
        let req = ChatRequest {
            image: img.cloned(),
            history: history.to_vec(),
            query: query.to_string(),
            version,
            sampling: sampling.clone(),
        };
        let generated = pipe.generate(&req, &mut |piece| {
            write!(out, "{piece}").is_ok() && out.flush().is_ok()
        });
        Ok(match generated {
            Ok(answer) => Reply::Answer {
                stats: answer.stats,
                text: answer.text,
            },
            Err(e) => Reply::Failed(format!("{e:#}")),
        })
    })
}

/// Logs (load, share and per-request lines) go to stderr through `tracing`, this crate's `info` and above (others' `warn`) unless
/// `RUST_LOG` says otherwise; the commands' own output (chat, bench JSON, parity lines) stays plain.
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,cogvlm=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
