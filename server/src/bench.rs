//! `cogvlm bench`: time to first token with an image, decode tokens/s, resident weight bytes (after `--quant`)
//! and peak memory, as one JSON line.
//! Full-size configurations run on random weights made on the target device (no 35 GB file needed).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Device;
use candle_nn::VarBuilder;

use crate::model::config::Config;
use crate::model::quant::estimated_weight_bytes;
use crate::model::weights::{parameter_bytes, RandomBackend};
use crate::model::CogVlm;
use crate::pipeline::{
    find_tokenizer, load_tokenizer, parse_device, parse_dtype, ChatRequest, CheckpointSummary,
    LoadOptions, Pipeline, Quant, SamplingParams,
};

/// Named full-size configurations (the real checkpoints' shapes, spec §1).
pub fn named_config(name: &str) -> anyhow::Result<Config> {
    let (image_size, cogagent) = match name {
        "cogvlm-17b" | "cogvlm-chat" | "cogvlm-base-490" => (490, false),
        "cogvlm-base-224" => (224, false),
        "cogagent-18b" | "cogagent-chat" | "cogagent-vqa" => (224, true),
        other => {
            bail!("unknown config {other:?} (expected cogvlm-17b, cogvlm-base-224 or cogagent-18b)")
        }
    };
    let grid = image_size / 14;
    let mut json = serde_json::json!({
        "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
        "rms_norm_eps": 1e-5, "vocab_size": 32000, "template_version": "chat",
        "vision_config": {"hidden_size": 1792, "image_size": image_size, "in_channels": 3, "intermediate_size": 15360,
            "layer_norm_eps": 1e-6, "num_heads": 16, "num_hidden_layers": 63, "num_positions": grid * grid + 1,
            "patch_size": 14, "hidden_act": "gelu", "dropout_prob": 0.0}
    });
    if cogagent {
        json["cross_hidden_size"] = 1024.into();
        json["cross_compute_hidden_size"] = 1024.into();
        json["cross_image_size"] = 1120.into();
        json["architectures"] = serde_json::json!(["CogAgentForCausalLM"]);
    }
    Ok(serde_json::from_value(json)?)
}

pub struct BenchArgs {
    pub model: Option<PathBuf>,
    pub config: Option<String>,
    pub device: String,
    pub dtype: Option<String>,
    pub quant: Quant,
    pub new_tokens: usize,
    pub tokenizer: Option<PathBuf>,
}

fn mem_available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Peak resident memory of this process (VmHWM).
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// A deterministic test card: gradients and a few rectangles, so the image is not constant.
fn synthetic_image(size: u32) -> image::DynamicImage {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let inside = (x / 64 + y / 64) % 3 == 0;
        image::Rgb([
            (x * 255 / size) as u8,
            (y * 255 / size) as u8,
            if inside { 200 } else { 40 },
        ])
    });
    image::DynamicImage::ImageRgb8(img)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(args.dtype.as_deref(), &device)?;
    let load_start = Instant::now();
    let (mut pipe, label) = match (&args.model, &args.config) {
        (Some(dir), _) => {
            let opts = LoadOptions {
                device: args.device.clone(),
                dtype: args.dtype.clone(),
                tokenizer: args.tokenizer.clone(),
                quant: args.quant,
            };
            (
                Pipeline::load(dir, &opts, &mut |_, _| {})?,
                dir.display().to_string(),
            )
        }
        (None, Some(name)) => {
            let cfg = named_config(name)?;
            let (params, _) = parameter_bytes(&cfg, dtype);
            let bytes = estimated_weight_bytes(&cfg, dtype, args.quant);
            if let (Device::Cpu, Some(avail)) = (&device, mem_available_bytes()) {
                // Weights plus ~10 % for activations and the KV cache.
                if bytes + bytes / 10 > avail {
                    bail!(
                        "{name} has {:.2} B parameters = {:.1} GiB in {dtype:?} (quantization: {}); with 10 % for activations \
                         and the KV cache that is more than this machine's {:.1} GiB of available memory: run it on a GPU \
                         (--device cuda) or a larger machine",
                        params as f64 / 1e9,
                        bytes as f64 / (1u64 << 30) as f64,
                        args.quant,
                        avail as f64 / (1u64 << 30) as f64
                    );
                }
            }
            let vb = VarBuilder::from_backend(Box::new(RandomBackend), dtype, device.clone());
            let model = CogVlm::new_quantized(&cfg, vb, args.quant)
                .context("cannot build the random-weight model")?;
            let tok_path = find_tokenizer(&default_tokenizer_anchor(), args.tokenizer.as_deref())?;
            let summary = CheckpointSummary {
                name: name.clone(),
                dir: PathBuf::new(),
                kind: model.kind(),
                image_size: cfg.vision_config.image_size,
                default_version: crate::pipeline::default_version(name, &cfg),
            };
            (
                Pipeline::from_parts(model, load_tokenizer(&tok_path)?, summary),
                format!("{name} (random weights)"),
            )
        }
        (None, None) => bail!("bench needs --model DIR or --config NAME --random-weights"),
    };
    device.synchronize()?;
    let load_s = load_start.elapsed().as_secs_f64();
    let summary = pipe.summary().clone();
    let quant = pipe.model().quant_report().clone();
    let weight_bytes = pipe.model().weight_bytes();
    let image = synthetic_image(600);
    // ~24 text tokens, as in the reference measurements.
    let query =
        "Describe this image in detail, including every object, its colour and where it is."
            .to_string();
    let req = |n: usize| ChatRequest {
        image: Some(image.clone()),
        history: vec![],
        query: query.clone(),
        version: None,
        sampling: SamplingParams {
            max_new_tokens: Some(n),
            max_length: 4096,
            ..Default::default()
        },
    };
    // Warm-up (kernel compilation, allocator), then the measured run.
    pipe.generate_with(&req(2), true, &mut |_| true)?;
    let mut fresh = req(args.new_tokens.max(1));
    // A different image so the image cache does not hide the vision towers.
    fresh.image = Some(synthetic_image(640));
    let stats = pipe.generate_with(&fresh, true, &mut |_| true)?;
    device.synchronize()?;
    // Follow-up on the same image: the image cache skips both vision towers.
    let mut second = fresh.clone();
    second.history = vec![(query.clone(), stats.text.clone())];
    second.query = "And what is in the top left corner?".into();
    second.sampling.max_new_tokens = Some(1);
    let follow = pipe.generate_with(&second, true, &mut |_| true)?;
    Ok(serde_json::json!({
        "model": label,
        "kind": summary.kind.to_string(),
        "device": format!("{device:?}"),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "quant": quant.mode.to_string(),
        "quantized_matrices": quant.quantized.len(),
        "float_kept_matrices": quant.kept_float.len(),
        "weight_gib": weight_bytes as f64 / (1u64 << 30) as f64,
        "weight_bytes": weight_bytes,
        "load_s": load_s,
        "prompt_tokens": stats.prompt_tokens,
        "new_tokens": stats.generated_tokens,
        "ttft_ms": stats.ttft_ms,
        "prefill_ms": stats.prefill_ms,
        "decode_tok_s": stats.tokens_per_s,
        "second_turn_ttft_ms": follow.ttft_ms,
        "peak_rss_gib": peak_rss_bytes().map(|b| b as f64 / (1u64 << 30) as f64),
    }))
}

/// Where the bundled tokenizer lives (for random-weight runs with no model folder).
fn default_tokenizer_anchor() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("models")
        .join("cogvlm_tiny_490")
}
