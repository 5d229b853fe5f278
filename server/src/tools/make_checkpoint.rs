//! `cogvlm make-checkpoint`: a random-weight checkpoint in the Hugging Face layout THUDM publishes
//! (`config.json`, bf16 safetensors shards of about 5 GB, `model.safetensors.index.json`), so the real loading
//! path (memory-mapped shards, completeness check, dtype conversion, quantization) can be measured at full size
//! on any machine. Written as a stream: each tensor is drawn in chunks straight into its shard, so memory stays
//! at one chunk whatever the model's size.
//!
//! Values follow [`RandomInit`] (the bench's random weights) from a small deterministic generator seeded by the
//! tensor's name, so two runs write the same bytes.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::model::config::Config;
use crate::model::weights::{expected_tensors, RandomInit};
use crate::model::Family;

pub struct MakeArgs {
    /// A named configuration (`cogvlm-17b`, `cogagent-18b`, …) or a `config.json` path.
    pub config: String,
    pub out: PathBuf,
    /// Largest shard, in bytes (THUDM's are ~5 GB).
    pub shard_bytes: u64,
    pub seed: u64,
    /// Fewer decoder / EVA2-CLIP layers than the config has (full-width tensors in a smaller file).
    pub layers: Option<usize>,
    pub vision_layers: Option<usize>,
    /// Multiplies the vision tower's position embedding (after its bf16 draw). The default draw (std 0.5) is
    /// drowned by the patch embedding's output, ~25 per dimension; the bundled demo starts from 24 (std 12)
    /// so that the tower's output depends on where a patch lies.
    pub position_scale: f32,
    /// Draw the GLU adapter as a near-identity map with this output scale instead of at random
    /// ([`identity_adapter`]); BENCHMARKS.md's sessions 14–15 trained with it frozen.
    pub identity_adapter: Option<f32>,
}

/// The tensor `--position-scale` multiplies.
pub const POSITION_EMBEDDING: &str = "model.vision.patch_embedding.position_embedding.weight";

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub shards: usize,
    pub tensors: usize,
    pub bytes: u64,
}

/// Elements drawn per write (2 MiB of bf16).
const CHUNK: usize = 1 << 20;

pub fn run(args: &MakeArgs) -> anyhow::Result<Written> {
    let json = match crate::model::named_configs::named_config_json(&args.config) {
        Ok(j) => hf_config(j),
        Err(named) => {
            let path = Path::new(&args.config);
            if !path.is_file() {
                bail!("{named:#}, and {:?} is not a config.json file", args.config);
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?
        }
    };
    let mut json = json;
    if let Some(n) = args.layers {
        json["num_hidden_layers"] = n.into();
    }
    if let Some(n) = args.vision_layers {
        json["vision_config"]["num_hidden_layers"] = n.into();
    }
    let cfg: Config =
        serde_json::from_value(json.clone()).context("the config does not describe CogVLM")?;
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose a new folder",
            args.out.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::write(
        args.out.join("config.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let tensors = expected_tensors(&cfg);
    let shards = plan_shards(&tensors, args.shard_bytes.max(1));
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        total += write_shard(&args.out.join(&file), shard, args)
            .with_context(|| format!("cannot write {file}"))?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone());
        }
        eprintln!("wrote {file} ({} tensors)", shard.len());
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        args.out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    // The CogVLM / CogAgent repos ship no tokenizer, CogVLM2's do: the bundled one of the family (Vicuna's or
    // Llama-3's) makes the folder usable as it is.
    let family = cfg.family();
    if let Ok(tok) = crate::generate::find_tokenizer(
        &crate::tools::bench::default_tokenizer_anchor(family),
        None,
    ) {
        std::fs::copy(&tok, args.out.join("tokenizer.json"))?;
    }
    if family == Family::CogVlm2 {
        // As THUDM's folder: an answer ends at <|end_of_text|> or <|eot_id|>.
        let generation = serde_json::json!({"bos_token_id": 128000, "eos_token_id": [128001, 128009],
            "pad_token_id": 128002});
        std::fs::write(
            args.out.join("generation_config.json"),
            serde_json::to_string_pretty(&generation)?,
        )?;
    }
    Ok(Written {
        shards: n,
        tensors: tensors.len(),
        bytes: total,
    })
}

/// The fields THUDM's `config.json` carries besides the shapes.
fn hf_config(mut j: serde_json::Value) -> serde_json::Value {
    let agent = j.get("cross_image_size").is_some();
    let extra = serde_json::json!({
        "architectures": [if agent { "CogAgentForCausalLM" } else { "CogVLMForCausalLM" }],
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
        "max_position_embeddings": 2048, "torch_dtype": "bfloat16", "use_cache": true,
    });
    // A config that names its own ids and context (CogVLM2's) keeps them.
    if let (Some(o), Some(e)) = (j.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    j
}

/// Tensors in checkpoint order, cut into shards of at most `max` bytes of bf16 (a larger tensor gets a shard
/// of its own).
fn plan_shards(tensors: &[(String, Vec<usize>)], max: u64) -> Vec<Vec<(String, Vec<usize>)>> {
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = Vec::new();
    let mut size = 0u64;
    for (name, shape) in tensors {
        let bytes = 2 * shape.iter().product::<usize>() as u64;
        if shards.is_empty() || (size + bytes > max && size > 0) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(s) = shards.last_mut() {
            s.push((name.clone(), shape.clone()));
        }
    }
    shards
}

/// Writes one safetensors file: the 8-byte header length, the JSON header, then each tensor's bf16 bytes drawn
/// chunk by chunk. Returns the data bytes.
fn write_shard(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    args: &MakeArgs,
) -> anyhow::Result<u64> {
    let (seed, position_scale) = (args.seed, args.position_scale);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = 2 * shape.iter().product::<usize>() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header)?.into_bytes();
    // The data start is 8-byte aligned, as the safetensors writer pads it.
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut w = BufWriter::with_capacity(4 << 20, std::fs::File::create(path)?);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(&text)?;
    let mut buf = Vec::with_capacity(2 * CHUNK);
    for (name, shape) in tensors {
        let init = RandomInit::for_tensor(name, shape);
        let mut rng = Rng::new(seed ^ fnv1a(name));
        let scale = (name == POSITION_EMBEDDING && position_scale != 1.0).then_some(position_scale);
        let fixed = args
            .identity_adapter
            .and_then(|s| identity_adapter(name, shape, s));
        let total = shape.iter().product::<usize>();
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK);
            buf.clear();
            for i in total - left..total - left + n {
                let x = match (&fixed, init) {
                    (Some(f), _) => f(i),
                    (None, RandomInit::Zeros) => 0.0,
                    (None, RandomInit::Ones) => 1.0,
                    (None, RandomInit::Normal { std }) => rng.normal() * std,
                };
                let bits = match scale {
                    // The scaled bf16 draw, rounded again: the same values whatever the scale's rounding.
                    Some(f) => bf16_bits(f32::from_bits((bf16_bits(x) as u32) << 16) * f),
                    None => bf16_bits(x),
                };
                buf.extend_from_slice(&bits.to_le_bytes());
            }
            w.write_all(&buf)?;
            left -= n;
        }
    }
    w.flush()?;
    Ok(offset)
}

/// The GLU adapter (`linear_proj`: linear, LayerNorm, GELU, then `down(silu(gate(x)) * up(x))`) drawn so that
/// it passes the tower's output on almost unchanged, `scale * GELU(GAIN * LayerNorm(v))` in all but the last
/// dimension, which instead carries a constant (LayerNorm bias [`OPEN`], weight 0) that every gate row reads:
/// the gates are then one constant and the gated MLP is linear. A random adapter that trains learns to drop
/// either the patches' place or their colour (BENCHMARKS.md, *The adapter is the bottleneck*); this one,
/// frozen, keeps both. `None` for tensors outside the adapter. Element `i` of the row-major tensor.
pub fn identity_adapter(
    name: &str,
    shape: &[usize],
    scale: f32,
) -> Option<Box<dyn Fn(usize) -> f32>> {
    const GAIN: f32 = 0.5;
    const OPEN: f32 = 3.0;
    let leaf = name.strip_prefix("model.vision.linear_proj.")?;
    let (rows, cols) = match shape {
        [r, c] => (*r, *c),
        [n] => (1, *n),
        _ => return None,
    };
    // The constant dimension: the last of the LayerNorm's output.
    let last = match leaf {
        "norm1.weight" | "norm1.bias" => cols - 1,
        "linear_proj.weight" => rows - 1,
        "gate_proj.weight" | "dense_h_to_4h.weight" => cols - 1,
        "dense_4h_to_h.weight" => rows - 1,
        _ => return None,
    };
    let gate = {
        let g = gelu(OPEN);
        g / (1.0 + (-g).exp())
    };
    let diag = move |i: usize, v: f32| {
        let (r, c) = (i / cols, i % cols);
        if r == c && r < last {
            v
        } else {
            0.0
        }
    };
    Some(match leaf {
        "linear_proj.weight" | "dense_h_to_4h.weight" => Box::new(move |i| diag(i, 1.0)),
        "dense_4h_to_h.weight" => Box::new(move |i| diag(i, scale / gate)),
        "gate_proj.weight" => Box::new(move |i| {
            let (r, c) = (i / cols, i % cols);
            if c == last && r < last {
                1.0
            } else {
                0.0
            }
        }),
        "norm1.weight" => Box::new(move |i| if i == last { 0.0 } else { GAIN }),
        _ => Box::new(move |i| if i == last { OPEN } else { 0.0 }),
    })
}

/// GELU with the exact error function, as the adapter's `gelu_erf` computes it.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f32(x / std::f32::consts::SQRT_2))
}

/// f32 → bf16 bits, rounding to nearest even (the values are finite).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64, with an approximately normal draw (Irwin–Hall: four 16-bit uniforms, centred and scaled to unit
/// variance): fast enough to write 36 GB in minutes, and the weights only need the right scale.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn normal(&mut self) -> f32 {
        let r = self.next();
        let sum: u64 = (0..4).map(|i| (r >> (16 * i)) & 0xffff).sum();
        // Four U(0, 1) sum to mean 2, variance 1/3.
        let u = sum as f32 / 65535.0;
        (u - 2.0) * 3f32.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_unit_scale_and_bf16_rounds() {
        let mut r = Rng::new(7);
        let v: Vec<f32> = (0..100_000).map(|_| r.normal()).collect();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
    }

    /// The drawn adapter, pushed through the GLU's steps (linear, LayerNorm, GELU, SwiGLU, linear), passes the
    /// input on as `scale * GELU(0.5 * LayerNorm(x))` with the last dimension zeroed.
    #[test]
    fn identity_adapter_passes_the_input_on() {
        let (h, i, scale) = (8usize, 12usize, 3.0f32);
        let p = "model.vision.linear_proj.";
        let mat = |leaf: &str, rows: usize, cols: usize| -> Vec<f32> {
            let f = identity_adapter(&format!("{p}{leaf}"), &[rows, cols], scale).unwrap();
            (0..rows * cols).map(f).collect()
        };
        let vec1 = |leaf: &str| -> Vec<f32> {
            let f = identity_adapter(&format!("{p}{leaf}"), &[h], scale).unwrap();
            (0..h).map(f).collect()
        };
        let matvec = |m: &[f32], x: &[f32]| -> Vec<f32> {
            m.chunks(x.len())
                .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect()
        };
        let layer_norm = |x: &[f32]| -> Vec<f32> {
            let n = x.len() as f32;
            let mean = x.iter().sum::<f32>() / n;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
            x.iter().map(|v| (v - mean) / (var + 1e-5).sqrt()).collect()
        };
        assert!(identity_adapter("model.vision.boi", &[1, 1, h], scale).is_none());

        let input: Vec<f32> = (0..h).map(|k| (k as f32 * 1.7).sin() * 4.0).collect();
        let x = matvec(&mat("linear_proj.weight", h, h), &input);
        let (w, b) = (vec1("norm1.weight"), vec1("norm1.bias"));
        let ln: Vec<f32> = layer_norm(&x)
            .iter()
            .zip(w.iter().zip(&b))
            .map(|(v, (w, b))| gelu(v * w + b))
            .collect();
        let gate = matvec(&mat("gate_proj.weight", i, h), &ln);
        let up = matvec(&mat("dense_h_to_4h.weight", i, h), &ln);
        let gated: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let out = matvec(&mat("dense_4h_to_h.weight", h, i), &gated);

        let mut zeroed = input.clone();
        zeroed[h - 1] = 0.0;
        let want: Vec<f32> = layer_norm(&zeroed)
            .iter()
            .map(|v| scale * gelu(0.5 * v))
            .collect();
        for k in 0..h - 1 {
            assert!(
                (out[k] - want[k]).abs() < 1e-4,
                "{k}: {} vs {}",
                out[k],
                want[k]
            );
        }
        assert_eq!(out[h - 1], 0.0);
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
    }

    #[test]
    fn shards_respect_the_limit() {
        let t: Vec<(String, Vec<usize>)> =
            (0..5).map(|i| (format!("t{i}"), vec![10, 10])).collect();
        let s = plan_shards(&t, 450);
        assert_eq!(s.iter().map(|s| s.len()).collect::<Vec<_>>(), [2, 2, 1]);
        // A tensor larger than the limit still gets written, alone.
        assert_eq!(plan_shards(&t, 100).len(), 5);
    }
}
