//! The device's floors for `cogvlm bench`: a large copy (memory bandwidth) and a large matmul (compute) through
//! candle, and the FLOPs of a prefill, which turn them into the fastest possible decode and prefill.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::model::config::Config;
use crate::model::weights::expected_tensors;

/// This device's ceilings, measured through candle in the model's dtype.
#[derive(Debug, Clone, Copy)]
pub struct Floors {
    /// Device-to-device copy, bytes read + written per second.
    pub copy_bytes_per_s: f64,
    /// Square matmul, FLOP per second.
    pub matmul_flop_per_s: f64,
    pub matmul_n: usize,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median seconds of `runs` calls of `f`, after one warm-up, synchronised with the device.
fn time_median(
    device: &Device,
    runs: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// A 1 GiB copy and an 8192² matmul on a GPU (256 MiB and 1024² on a CPU).
pub fn measure_floors(device: &Device, dtype: DType) -> anyhow::Result<Floors> {
    let (copy_bytes, n) = if device.is_cpu() {
        (256usize << 20, 1024)
    } else {
        (1usize << 30, 8192)
    };
    let x = Tensor::zeros(copy_bytes / dtype.size_in_bytes(), dtype, device)?;
    let copy_s = time_median(device, 5, || x.copy().map(drop))?;
    drop(x);
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let mm_s = time_median(device, 5, || a.matmul(&b).map(drop))?;
    Ok(Floors {
        copy_bytes_per_s: 2.0 * copy_bytes as f64 / copy_s,
        matmul_flop_per_s: 2.0 * (n as f64).powi(3) / mm_s,
        matmul_n: n,
    })
}

/// FLOPs of a prefill with an image: every weight matrix times the rows it is applied to (language tokens,
/// image tokens, ViT patches, CogAgent's 6400 high-resolution patches), plus the attention score and context
/// products. The vision expert and the language expert have the same shapes, so each token counts once.
pub fn prefill_flops(cfg: &Config, prompt_tokens: usize) -> f64 {
    let l = prompt_tokens as f64;
    let image = cfg.image_tokens() as f64;
    let patches = (cfg.vision_config.num_patches() + 1) as f64;
    let cross_patches = cfg.cross().map_or(0.0, |c| (c.num_patches() + 1) as f64);
    let matrices: f64 = expected_tensors(cfg)
        .iter()
        .filter(|(name, shape)| {
            shape.len() >= 2
                && name.ends_with("weight")
                && !name.contains("embed_tokens")
                && !name.contains("position_embedding")
        })
        .map(|(name, shape)| {
            let params = shape.iter().product::<usize>() as f64;
            let rows = if name == "lm_head.weight" {
                1.0
            } else if name.starts_with("model.cross_vision.")
                || name.contains("cross_attn.key_value")
            {
                cross_patches
            } else if name.starts_with("model.vision.") {
                patches
            } else if name.contains("vision_expert") || name.contains("vision_mlp") {
                image
            } else if name.contains("language_expert") || name.contains("language_mlp") {
                l - image
            } else {
                l
            };
            2.0 * params * rows
        })
        .sum();
    let layers = cfg.num_hidden_layers as f64;
    let h = cfg.hidden_size as f64;
    let vc = &cfg.vision_config;
    let mut attention = 4.0 * layers * l * l * h
        + 4.0 * vc.num_hidden_layers as f64 * patches * patches * vc.hidden_size as f64;
    if let Some(c) = cfg.cross() {
        let w = c.vision.vision_cfg.width as f64;
        attention += 4.0 * c.vision.vision_cfg.layers as f64 * cross_patches * cross_patches * w;
        attention += 4.0 * layers * l * cross_patches * c.compute as f64;
    }
    matrices + attention
}
