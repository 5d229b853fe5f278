//! `cogvlm bench`: time to first token with an image, decode tokens/s, a follow-up question's TTFT, resident
//! weight bytes (after `--quant`) and peak memory, as one JSON line, next to this device's floors measured in
//! the same run: a large copy (memory bandwidth) and a large matmul (compute) through candle, turned into the
//! fastest possible decode (weights read per token ÷ bandwidth) and prefill (FLOPs ÷ matmul rate).
//! Full-size configurations run on random weights made on the target device (no 35 GB file needed).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::generate::{
    checkpoint_info, find_tokenizer, load_tokenizer, make_plan, parse_device, Answer, ChatRequest,
    LoadOptions, Pipeline, Sampling,
};
use crate::model::config::Config;
use crate::model::memory::{
    peak_rss_bytes, rss_anon_bytes, used_bytes as device_used_bytes, PeakSampler,
};
use crate::model::named_configs::named_config_json;
use crate::model::placement::Placement;
use crate::model::quant::{decode_read_bytes, Quantizer};
use crate::model::weights::RandomBackend;
use crate::model::{CogVlm, Family};
use crate::tools::bench_floors::{measure_floors, median, prefill_flops};

/// The named configuration with `depth`'s decoder and tower layer counts, where given.
fn reduced_config(name: &str, depth: (Option<usize>, Option<usize>)) -> anyhow::Result<Config> {
    let mut json = named_config_json(name)?;
    if let Some(n) = depth.0 {
        json["num_hidden_layers"] = n.into();
    }
    if let Some(n) = depth.1 {
        json["vision_config"]["num_hidden_layers"] = n.into();
    }
    Ok(serde_json::from_value(json)?)
}

pub struct BenchArgs {
    pub model: Option<PathBuf>,
    pub config: Option<String>,
    /// Device, dtype, quantization (and `--int4-format`), placement, adapter, tokenizer.
    pub load: LoadOptions,
    pub new_tokens: usize,
    /// Timed runs (each on a new image); medians are reported.
    pub repeat: usize,
    /// Stop after loading (plan, load time, loading's peak memory).
    pub load_only: bool,
    /// `--concurrency 1,4,8,16`: also run that many requests at once, decoded together.
    pub concurrency: Vec<usize>,
    /// Sequences decoded together at most (default: the server's for the device).
    pub max_batch: Option<usize>,
    /// `--text-only N`: a text prompt of N positions and no image (to compare prefill with text-only engines).
    pub text_only: Option<usize>,
    /// `--prefill-chunk`: prompt positions prefilled per turn in `--concurrency` rounds (`None`: the server's
    /// default, `Some(0)`: whole prompts).
    pub prefill_chunk: Option<usize>,
    /// `--layers` / `--vision-layers` with `--config`: the full-width model at reduced depth (per-layer costs
    /// for a full-depth figure on a machine that cannot hold it).
    pub depth: (Option<usize>, Option<usize>),
    /// `--no-warmup`: time the first turns cold (for full-size CPU runs where one turn takes an hour; the CPU
    /// has no kernels to compile, so the warm-up only doubles the run).
    pub warmup: bool,
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

/// The checkpoint of `--model`, or the named configuration with random weights (refused before any weight is
/// made when it cannot fit); with the label the JSON reports.
fn load(args: &BenchArgs, opts: &LoadOptions, dtype: DType) -> anyhow::Result<(Pipeline, String)> {
    Ok(match (&args.model, &args.config) {
        (Some(dir), _) => (
            Pipeline::load(dir, opts, &mut |_, _| {})?,
            dir.display().to_string(),
        ),
        (None, Some(name)) => {
            let cfg = reduced_config(name, args.depth)?;
            // Refused here, before any weight is made, when it cannot fit.
            let plan = make_plan(&cfg, dtype, opts)?;
            eprint!("{name}: {plan}");
            let place = Placement::open(&plan, parse_device)?;
            let vb = VarBuilder::from_backend(
                Box::new(RandomBackend),
                dtype,
                place
                    .device(plan.layers.first().copied().unwrap_or(0))
                    .clone(),
            );
            let quantizer = Quantizer::for_random_weights(opts.quant)
                .with_vision(opts.quant_vision)
                .with_int4_format(opts.int4_format);
            let model = CogVlm::with_placement(&cfg, vb, quantizer, place)
                .context("cannot build the random-weight model")?;
            let tok_path = find_tokenizer(
                &default_tokenizer_anchor(cfg.family()),
                opts.tokenizer.as_deref(),
            )?;
            let summary = checkpoint_info(name.clone(), &cfg);
            (
                Pipeline::from_parts(model, load_tokenizer(&tok_path)?, summary).with_plan(plan),
                match args.depth {
                    (None, None) => format!("{name} (random weights)"),
                    _ => format!(
                        "{name} (random weights, {} decoder and {} tower layers)",
                        cfg.num_hidden_layers, cfg.vision_config.num_hidden_layers
                    ),
                },
            )
        }
        (None, None) => bail!("bench needs --model DIR or --config NAME --random-weights"),
    })
}

/// The benchmark's question: ~24 text tokens, as in the reference measurements.
const QUERY: &str =
    "Describe this image in detail, including every object, its colour and where it is.";

/// A first turn about `image`, greedy, `n` new tokens.
fn first_turn(image: image::DynamicImage, n: usize) -> ChatRequest {
    text_turn(Some(image), QUERY.to_string(), n)
}

/// A first turn asking `query` (about `image`, if any), greedy, `n` new tokens.
fn text_turn(image: Option<image::DynamicImage>, query: String, n: usize) -> ChatRequest {
    ChatRequest {
        image,
        history: vec![],
        query,
        version: None,
        sampling: Sampling {
            max_new_tokens: Some(n),
            max_length: 4096,
            ..Sampling::greedy()
        },
    }
}

/// The second turn about the same image, after `answer`: only its new tokens run.
fn follow_up(first: &ChatRequest, n: usize, answer: &str) -> ChatRequest {
    ChatRequest {
        history: vec![(first.query.clone(), answer.to_string())],
        query: "And what is in the top left corner?".into(),
        ..text_turn(first.image.clone(), String::new(), n)
    }
}

/// Timed run `r`'s first turn: about a new image each run, or with `--text-only N` a new text prompt of exactly
/// N positions (so that neither the image nor the conversation cache hides the first turn's work).
fn run_request(
    pipe: &mut Pipeline,
    args: &BenchArgs,
    r: usize,
    n: usize,
) -> anyhow::Result<ChatRequest> {
    let Some(positions) = args.text_only else {
        return Ok(first_turn(synthetic_image(640 + 8 * r as u32), n));
    };
    // " a" is one token of the Llama tokenizer: pad a run-specific opening with as many as the length needs.
    let query = |pad: usize| format!("Run {r}.{}", " a".repeat(pad));
    let len = |pipe: &mut Pipeline, pad: usize| -> anyhow::Result<usize> {
        Ok(pipe
            .prepare(&text_turn(None, query(pad), n))?
            .input
            .input_ids
            .len())
    };
    let overhead = len(pipe, 0)?;
    let pad = positions.saturating_sub(overhead);
    let got = len(pipe, pad)?;
    if got != positions {
        bail!("--text-only {positions}: the prompt takes {got} positions (at least {overhead})");
    }
    Ok(text_turn(None, query(pad), n))
}

/// The device memory high-water mark, sampled between runs.
struct DevicePeak {
    device: Device,
    peak: Option<u64>,
}

impl DevicePeak {
    fn sample(&mut self) {
        if let Some(u) = device_used_bytes(&self.device) {
            self.peak = Some(self.peak.map_or(u, |p| p.max(u)));
        }
    }
}

/// A loaded pipeline and what loading it cost.
struct Loaded {
    pipe: Pipeline,
    label: String,
    load_s: f64,
    load_peak_anon: u64,
    used_before: Option<u64>,
    used_after_load: Option<u64>,
    /// The `--load-only` report.
    report: serde_json::Value,
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Loads the model, timing it and sampling the memory it takes on the way.
fn load_measured(
    args: &BenchArgs,
    opts: &LoadOptions,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<Loaded> {
    device.synchronize()?;
    let used_before = device_used_bytes(device);
    let anon_before = rss_anon_bytes();
    let load_start = Instant::now();
    // Loading's peak of anonymous memory (what it keeps and what it holds on the way, not the mapped files).
    let sampler = PeakSampler::start();
    let (pipe, label) = load(args, opts, dtype)?;
    device.synchronize()?;
    let load_s = load_start.elapsed().as_secs_f64();
    let load_peak_anon = sampler.finish();
    let used_after_load = device_used_bytes(device);
    let weight_bytes = pipe.model().weight_bytes();
    eprintln!("{label}: {}", pipe.model().resident_summary());
    let report = serde_json::json!({
        "model": label,
        "device": format!("{device:?}"),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "quant": pipe.model().quant_report().mode.to_string(),
        "quant_vision": args.load.quant_vision,
        "weight_gib": gib(weight_bytes),
        "weight_bytes": weight_bytes,
        "expected_resident_gib": gib(pipe.model().expected_resident_bytes()),
        "load_s": load_s,
        "load_peak_rss_anon_gib": gib(load_peak_anon),
        "rss_anon_before_load_gib": anon_before.map(gib),
        "rss_anon_after_load_gib": rss_anon_bytes().map(gib),
        "plan": serde_json::to_value(pipe.plan())?,
    });
    Ok(Loaded {
        pipe,
        label,
        load_s,
        load_peak_anon,
        used_before,
        used_after_load,
        report,
    })
}

/// The medians of the timed first and second turns, and the last run's numbers.
struct Turns {
    ttft: f64,
    prefill: f64,
    decode: f64,
    second: f64,
    stats: Answer,
    follow: Answer,
    /// The highest anonymous resident set during the first timed turn (image encode, prefill and decode).
    first_turn_peak_anon: u64,
}

/// A warm-up (kernel compilation, allocator, the follow-up path), then `--repeat` timed first and second turns.
fn timed_turns(
    pipe: &mut Pipeline,
    args: &BenchArgs,
    peak: &mut DevicePeak,
) -> anyhow::Result<Turns> {
    if args.warmup {
        let first = run_request(pipe, args, 1000, 2)?;
        let warm = pipe.generate_with(&first, true, &mut |_| true)?;
        pipe.generate_with(&follow_up(&first, 2, &warm.text), true, &mut |_| true)?;
        peak.sample();
    }
    let (mut ttft, mut prefill, mut decode, mut second) = (vec![], vec![], vec![], vec![]);
    let mut last = None;
    let mut first_turn_peak_anon = 0;
    for r in 0..args.repeat.max(1) {
        let first = run_request(pipe, args, r, args.new_tokens.max(1))?;
        let sampler = (r == 0).then(PeakSampler::start);
        let stats = pipe.generate_with(&first, true, &mut |_| true)?;
        peak.device.synchronize()?;
        peak.sample();
        if let Some(s) = sampler {
            first_turn_peak_anon = s.finish();
        }
        let follow = pipe.generate_with(&follow_up(&first, 1, &stats.text), true, &mut |_| true)?;
        ttft.push(stats.ttft_ms);
        prefill.push(stats.prefill_ms);
        decode.push(stats.tokens_per_s);
        second.push(follow.ttft_ms);
        last = Some((stats, follow));
    }
    let Some((stats, follow)) = last else {
        bail!("no timed run")
    };
    Ok(Turns {
        ttft: median(ttft),
        prefill: median(prefill),
        decode: median(decode),
        second: median(second),
        stats,
        follow,
        first_turn_peak_anon,
    })
}

/// One round of `c` simultaneous requests per `--concurrency` level, each on a new image (no request continues
/// another's cache).
fn concurrency_levels(
    pipe: &mut Pipeline,
    args: &BenchArgs,
    max_batch: usize,
    peak: &mut DevicePeak,
) -> anyhow::Result<Vec<crate::tools::bench_concurrency::Level>> {
    let mut levels = Vec::new();
    for (round, &c) in args.concurrency.iter().enumerate() {
        let requests = (0..c)
            .map(|i| {
                first_turn(
                    synthetic_image(520 + 4 * (round * 64 + i) as u32),
                    args.new_tokens.max(2),
                )
            })
            .collect();
        let level = crate::tools::bench_concurrency::run_level(
            pipe,
            requests,
            max_batch,
            args.new_tokens.max(2),
        )?;
        peak.sample();
        levels.push(level);
    }
    Ok(levels)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let opts = &args.load;
    let device = opts.first_device().open()?;
    let dtype = opts.float_type();
    let floors = if args.load_only {
        None
    } else {
        Some(measure_floors(&device, dtype).context("cannot measure the device's floors")?)
    };
    let mut loaded = load_measured(args, opts, &device, dtype)?;
    let Some(floors) = floors else {
        return Ok(loaded.report);
    };
    let anon_after_load = rss_anon_bytes();
    let mut peak = DevicePeak {
        device: device.clone(),
        peak: loaded.used_after_load,
    };
    let turns = timed_turns(&mut loaded.pipe, args, &mut peak)?;
    let (max_batch, chunk) = batch_settings(&mut loaded.pipe, args);
    let levels = concurrency_levels(&mut loaded.pipe, args, max_batch, &mut peak)?;

    let mut out = speed_report(&loaded, args, &turns, &floors, dtype);
    let at = |c: usize| levels.iter().find(|l| l.concurrency == c);
    let speedup_8 = match (at(1), at(8)) {
        (Some(one), Some(eight)) => Some(eight.aggregate_decode_tok_s / one.aggregate_decode_tok_s),
        _ => None,
    };
    merge(
        &mut out,
        serde_json::json!({
            "device": format!("{device:?}"),
            "max_batch": max_batch,
            "prefill_chunk": chunk,
            "concurrency": levels,
            "aggregate_decode_8_over_1": speedup_8,
            "device_peak_gib": peak.peak.map(gib),
        }),
    );
    merge(&mut out, memory_report(&loaded, &turns, anon_after_load));
    Ok(out)
}

/// Adds `more`'s fields to the object `out`.
fn merge(out: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(o), serde_json::Value::Object(m)) = (out.as_object_mut(), more) {
        o.extend(m);
    }
}

/// What was run and how fast: the model and its formats, the turns' times, and the floors they compare with.
fn speed_report(
    loaded: &Loaded,
    args: &BenchArgs,
    turns: &Turns,
    floors: &crate::tools::bench_floors::Floors,
    dtype: DType,
) -> serde_json::Value {
    let pipe = &loaded.pipe;
    let Turns {
        ttft,
        prefill,
        decode,
        second,
        stats,
        follow,
        ..
    } = turns;
    let (ttft, decode) = (*ttft, *decode);
    let cfg = &pipe.model().cfg;
    let quant = pipe.model().quant_report();
    let read_bytes = decode_read_bytes(cfg, dtype, args.load.quant);
    let decode_floor = floors.copy_bytes_per_s / read_bytes as f64;
    let flops = prefill_flops(cfg, stats.prompt_tokens);
    let prefill_floor_ms = flops / floors.matmul_flop_per_s * 1e3;
    // The towers' dtypes (f16 under a bf16 model) and how many images overflowed f16 and were encoded again.
    let (vision_dtype, cross_dtype) = pipe.model().encoder_dtypes();
    let encoder_dtypes: Vec<&str> = std::iter::once(vision_dtype)
        .chain(cross_dtype)
        .map(|d| d.as_str())
        .collect();
    serde_json::json!({
        "model": loaded.label,
        "kind": pipe.info().kind.to_string(),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "quant": quant.mode.to_string(),
        "quant_vision": args.load.quant_vision,
        "quant_summary": quant.summary(),
        "encoder_dtypes": encoder_dtypes,
        "encoder_reruns": pipe.model().encoder_reruns(),
        "quantized_matrices": quant.quantized.len(),
        "float_kept_matrices": quant.kept_float.len(),
        "load_s": loaded.load_s,
        "runs": args.repeat.max(1),
        "warmup": args.warmup,
        "text_only": args.text_only,
        "prompt_tokens": stats.prompt_tokens,
        "new_tokens": stats.generated_tokens,
        "ttft_ms": ttft,
        "prefill_ms": prefill,
        "decode_tok_s": decode,
        "second_turn_ttft_ms": second,
        "second_turn_reused_tokens": follow.reused_tokens,
        "second_turn_prompt_tokens": follow.prompt_tokens,
        "second_over_first_ttft": second / ttft,
        "floor_copy_gb_s": floors.copy_bytes_per_s / 1e9,
        "floor_matmul_tflop_s": floors.matmul_flop_per_s / 1e12,
        "floor_matmul_n": floors.matmul_n,
        "decode_read_gb": read_bytes as f64 / 1e9,
        "decode_floor_tok_s": decode_floor,
        "decode_over_floor": decode / decode_floor,
        "prefill_tflop": flops / 1e12,
        "prefill_floor_ms": prefill_floor_ms,
        "ttft_over_prefill_floor": ttft / prefill_floor_ms,
    })
}

/// Where the memory went: the weights, the device before and after loading, loading's peak, the first turn's
/// working memory over what loading left (`anon_after_load`), the plan and its transfers.
fn memory_report(
    loaded: &Loaded,
    turns: &Turns,
    anon_after_load: Option<u64>,
) -> serde_json::Value {
    let model = loaded.pipe.model();
    let weight_bytes = model.weight_bytes();
    let first = turns.first_turn_peak_anon;
    serde_json::json!({
        "weight_gib": gib(weight_bytes),
        "weight_bytes": weight_bytes,
        "expected_resident_gib": gib(model.expected_resident_bytes()),
        "device_used_before_gib": loaded.used_before.map(gib),
        "device_resident_after_load_gib": loaded.used_after_load.map(gib),
        "peak_rss_gib": peak_rss_bytes().map(gib),
        "load_peak_rss_anon_gib": gib(loaded.load_peak_anon),
        // The image encode's and prefill's working memory: the first turn's peak over what loading left.
        "first_turn_peak_rss_anon_gib": gib(first),
        "first_turn_anon_over_loaded_gib": anon_after_load.map(|a| gib(first.saturating_sub(a))),
        "plan": loaded.report["plan"].clone(),
        "transfers": model.placement().transfers(),
    })
}

/// The `--concurrency` rounds' batch size (`--max-batch`, else what memory holds, printed as the server prints
/// it) and prefill chunk, set on `pipe`. The single-stream turns run before this and prefill whole prompts
/// (nothing runs beside them).
fn batch_settings(pipe: &mut Pipeline, args: &BenchArgs) -> (usize, usize) {
    let max_batch = args.max_batch.unwrap_or_else(|| {
        let ceiling = crate::engine::default_max_batch(args.load.device);
        let kept = crate::generate::KEPT_CONVERSATIONS;
        let fit = crate::engine::batch_size::from_memory(pipe, ceiling, kept);
        if let Some(f) = &fit {
            eprintln!("{f}");
        }
        fit.map_or(ceiling, |f| f.max_batch)
    });
    let chunk = args
        .prefill_chunk
        .unwrap_or(crate::engine::DEFAULT_PREFILL_CHUNK);
    pipe.set_prefill_chunk((chunk > 0).then_some(chunk));
    (max_batch, chunk)
}

/// Where the bundled tokenizer of `family` lives (for random-weight runs with no model folder): Vicuna's for
/// CogVLM and CogAgent, Llama-3's for CogVLM2.
pub fn default_tokenizer_anchor(family: Family) -> PathBuf {
    // Found at run time, as the bundled checkpoints are (beside the binary or in the working tree).
    let fixtures = crate::engine::registry::locate_bundled("fixtures")
        .unwrap_or_else(|_| PathBuf::from("server/fixtures"));
    match family {
        Family::CogVlm2 => fixtures
            .join("cogvlm2")
            .join("models")
            .join("cogvlm2_tiny_224"),
        _ => fixtures.join("models").join("cogvlm_tiny_490"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::named_configs::named_config;
    use crate::model::quant::{estimated_weight_bytes, Quant};

    /// The floors' inputs at full size against `../shared/gpu/README.md`: CogVLM decode reads ~13.2 GB of
    /// weights per token in bf16, and a 490 px + 24-token prefill is ≈ 28.8 TFLOP.
    #[test]
    fn full_size_floor_inputs_match_the_measured_reference() -> anyhow::Result<()> {
        let cfg = named_config("cogvlm-17b")?;
        let read = decode_read_bytes(&cfg, DType::BF16, Quant::Float) as f64 / 1e9;
        let flops = prefill_flops(&cfg, 1250) / 1e12;
        let q4 = estimated_weight_bytes(&cfg, DType::BF16, Quant::Q4, false) as f64 / 1e9;
        let q4v = estimated_weight_bytes(&cfg, DType::BF16, Quant::Q4, true) as f64 / 1e9;
        println!("int4 weights with the vision tower quantized too: {q4v:.2} GB");
        // The tower in bf16 is 8.8 GB; quantized with the rest, int4 CogVLM's weights come to ~10.2 GB, of
        // which the 32000 × 4096 bf16 token table (0.26 GB) stays in host memory on a GPU.
        let on_device = q4v - (cfg.vocab_size * cfg.hidden_size * 2) as f64 / 1e9;
        println!("... of which on the GPU: {on_device:.2} GB");
        assert!(q4 - q4v > 6.0 && on_device < 10.0, "{q4} {q4v}");
        let q4_read = decode_read_bytes(&cfg, DType::BF16, Quant::Q4) as f64 / 1e9;
        println!("decode reads {read:.2} GB (int4 {q4_read:.2} GB), prefill {flops:.1} TFLOP, int4 weights {q4:.1} GB");
        assert!((13.0..13.4).contains(&read), "{read}");
        assert!((27.5..30.0).contains(&flops), "{flops}");
        // int4 reads ~28 % of the bf16 bytes per token (Q4K, lm_head Q8_0).
        assert!(q4_read / read < 0.3, "{q4_read}");
        let agent = named_config("cogagent-18b")?;
        let agent_read = decode_read_bytes(&agent, DType::BF16, Quant::Float) as f64 / 1e9;
        println!(
            "CogAgent decode reads {agent_read:.2} GB, prefill {:.1} TFLOP",
            prefill_flops(&agent, 300) / 1e12
        );
        assert!(agent_read > read);
        Ok(())
    }
}
