//! Weight quantization of the language model (`--quant 8|4`): candle's ggml block formats through `QMatMul`,
//! on CPU and CUDA alike. The token embeddings stay in the model's float dtype. The vision towers stay float too
//! (f16 under a bf16 model: `precision`), unless `--quant-vision` asks for the EVA2-CLIP tower's and its
//! adapter's linear layers in the same format (they are 4.4 B of CogVLM's 17 B parameters: in 16 bits they alone
//! take 8.8 GB, which puts int4 over 10 GB).
//!
//! A matrix is quantized along its inner (input) dimension in blocks, so one whose inner dim is not a multiple of
//! the block size cannot be; it stays float and its name is reported. Choices per mode:
//! - `Q8`: Q8_0 (blocks of 32) everywhere.
//! - `Q4`: Q4K (blocks of 256), or Q4_0 (blocks of 32) where the inner dim is a multiple of 32 but not of 256; Q4_0
//!   on CPUs whose candle kernels would keep a second, repacked copy of Q4K (`format.rs`).
//! - `lm_head` is Q8_0 in both modes: it is 1.6 % of the weights and the logits are the most sensitive output
//!   (llama.cpp's Q4 files keep it at 6 bits or more for the same reason).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeSet;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::Config;
use super::lora::{self, Adapter, LoraMode, LoraPair};
use super::weights::expected_tensors;
use format::Kernels;

pub mod format;
mod lora_delta;
mod quantizer;
#[cfg(test)]
mod tests;

pub use lora_delta::LoraDelta;
pub use quantizer::Quantizer;

/// The weight format of the language model's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Quant {
    /// The model dtype (f32, bf16 or f16).
    #[default]
    Float,
    /// int8: Q8_0.
    Q8,
    /// int4: Q4K, else Q4_0.
    Q4,
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "float" | "0" => Ok(Self::Float),
            "8" | "q8" | "int8" => Ok(Self::Q8),
            "4" | "q4" | "int4" => Ok(Self::Q4),
            o => Err(format!(
                "unknown quantization {o:?} (expected 8, 4 or none)"
            )),
        }
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Float => "none",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        })
    }
}

impl Quant {
    /// The rel-L2 distance to f32 logits this mode is tested to stay within on the fixtures' prompts (f32
    /// activations; measured values are in the README).
    pub fn logit_tolerance(self) -> f64 {
        match self {
            Self::Float => 0.0,
            Self::Q8 => 3e-2,
            Self::Q4 => 3e-1,
        }
    }

    /// The rel-L2 distance to f32 that the vision tower's output is tested to stay within when `--quant-vision`
    /// quantizes it too (f32 activations; measured values are in the README).
    pub fn vision_tolerance(self) -> f64 {
        match self {
            Self::Float => 0.0,
            Self::Q8 => 5e-2,
            Self::Q4 => 5e-1,
        }
    }

    /// The logit gap (logits of magnitude ~10) below which this mode may legitimately swap two tokens.
    pub fn near_tie(self) -> f32 {
        match self {
            Self::Float => 0.0,
            Self::Q8 => 0.25,
            Self::Q4 => 3.0,
        }
    }
}

/// What a weight of the language model should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Attention, MLP and cross-attention matrices.
    Layer,
    /// The output projection to the vocabulary.
    LmHead,
    /// The EVA2-CLIP tower's and the GLU adapter's matrices: quantized only with `--quant-vision`.
    Vision,
}

/// What loading did to each matrix of the language model.
#[derive(Debug, Clone, Default)]
pub struct QuantReport {
    pub mode: Quant,
    /// Name and format of each quantized matrix.
    pub quantized: Vec<(String, GgmlDType)>,
    /// Matrices that stayed float because their inner dim is not a multiple of the block size.
    pub kept_float: Vec<String>,
    /// Bytes the quantized matrices would take in the model dtype.
    pub replaced_float_bytes: u64,
    /// Bytes the quantized matrices take.
    pub quantized_bytes: u64,
    /// Bytes of the tiles candle's CPU kernels will keep beside the quantized matrices once they run
    /// ([`Kernels::repacked_bytes`]).
    pub repacked_bytes: u64,
}

impl QuantReport {
    /// One line for the log: the count per format and the float-kept names (empty without quantization).
    pub fn summary(&self) -> String {
        if self.mode == Quant::Float {
            return String::new();
        }
        let mut counts: Vec<(String, usize)> = Vec::new();
        for (_, d) in &self.quantized {
            let d = format!("{d:?}");
            match counts.iter_mut().find(|(n, _)| *n == d) {
                Some((_, c)) => *c += 1,
                None => counts.push((d, 1)),
            }
        }
        let counts: Vec<String> = counts.iter().map(|(d, c)| format!("{c} × {d}")).collect();
        let mut s = format!(
            "quantized {} matrices ({}), {} instead of {}",
            self.quantized.len(),
            counts.join(", "),
            human_bytes(self.quantized_bytes),
            human_bytes(self.replaced_float_bytes)
        );
        if !self.kept_float.is_empty() {
            s.push_str(&format!(
                "; kept in float (shape does not fit the block size): {}",
                self.kept_float.join(", ")
            ));
        }
        s
    }
}

/// Bytes of every checkpoint parameter as held after loading with `quant` (and the vision tower quantized too
/// when `vision`), from the config alone (the bench's memory check before building a full-size model). Every
/// 2-D tensor under `model.layers.`, the tower's layers and its adapter is a linear layer.
pub fn estimated_weight_bytes(cfg: &Config, dtype: DType, quant: Quant, vision: bool) -> u64 {
    estimated_bytes(cfg, dtype, quant, vision, |_| true)
}

/// Bytes of weights one decode step reads: the language expert of every layer, CogAgent's cross-attention query
/// and output (its keys/values over the image are cached), the norms and `lm_head`; not the vision expert, the
/// towers or the embedding table (one row). At full size this sets the decode floor: bytes ÷ memory bandwidth.
pub fn decode_read_bytes(cfg: &Config, dtype: DType, quant: Quant) -> u64 {
    estimated_bytes(cfg, dtype, quant, false, |name| {
        name == "lm_head.weight"
            || name == "model.norm.weight"
            || (name.starts_with("model.layers.")
                && !name.contains("vision_expert")
                && !name.contains("vision_mlp")
                && !name.contains("cross_attn.key_value")
                && !name.contains("rotary_emb"))
    })
}

fn estimated_bytes(
    cfg: &Config,
    dtype: DType,
    quant: Quant,
    vision: bool,
    keep: impl Fn(&str) -> bool,
) -> u64 {
    expected_tensors(cfg)
        .iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, shape)| tensor_bytes(name, shape, dtype, quant, vision))
        .sum()
}

/// Bytes of one checkpoint tensor as held after loading with `quant` (`vision`: the tower quantized too).
pub fn tensor_bytes(name: &str, shape: &[usize], dtype: DType, quant: Quant, vision: bool) -> u64 {
    let n = shape.iter().product::<usize>();
    let role = match name {
        "lm_head.weight" => Some(Role::LmHead),
        _ if name.starts_with("model.layers.") && shape.len() == 2 => Some(Role::Layer),
        _ if vision && is_vision_linear(name) && shape.len() == 2 => Some(Role::Vision),
        _ => None,
    };
    // Q4K and Q4_0 take the same bytes per weight and Q4K falls back to Q4_0, so the device does not matter here.
    (match role.and_then(|r| quant.format(r, shape[1], Kernels::Blocks)) {
        Some(d) => n / d.block_size() * d.type_size(),
        None => n * dtype.size_in_bytes(),
    }) as u64
}

/// The EVA2-CLIP tower's and the GLU adapter's linear layers (not the patch, position or CLS embeddings, nor
/// CogAgent's cross tower).
fn is_vision_linear(name: &str) -> bool {
    name.starts_with("model.vision.transformer.layers.")
        || name.starts_with("model.vision.linear_proj.")
}

/// `12.3 MiB` (or KiB for the tiny test models).
fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// Quantized bytes by (rows, columns, format).
type SharedBlocks = HashMap<(usize, usize, usize), Vec<u8>>;
/// Rows from which a CPU matmul on a 4-bit format candle does not repack runs on the matrix dequantized for the
/// call: candle's kernel for those formats does one block dot product per row and column, several times slower
/// than its float matmul for a prefill. Decode steps (a row per sequence) keep the quantized kernel.
const DEQUANTIZED_PREFILL_ROWS: usize = 64;

/// Whether `x` @ `q`ᵀ runs on `q` dequantized: a prefill on the CPU, in Q4_0 or Q4_1.
fn dequantized_prefill(q: &QTensor, x: &Tensor) -> bool {
    let rows = x.elem_count() / x.dim(candle_core::D::Minus1).unwrap_or(1).max(1);
    x.device().is_cpu()
        && rows >= DEQUANTIZED_PREFILL_ROWS
        && matches!(q.dtype(), GgmlDType::Q4_0 | GgmlDType::Q4_1)
}

/// A linear layer: float weights, or a quantized matrix and an optional float bias; either may carry a LoRA
/// adapter's separate low-rank product.
#[derive(Debug, Clone)]
pub enum QLinear {
    Float(Linear),
    Quant(QMatMul, Option<Tensor>),
    Lora(Box<QLinear>, LoraDelta),
    /// Stacked parts kept apart while trained (see [`Quantizer::stacked_linear`]): the outputs concatenated.
    Parts(Vec<QLinear>),
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            // The image encoders' fallback runs f16 weights on bf16 activations (a no-op check otherwise).
            Self::Float(l) => super::precision::linear(l, x),
            // QMatMul takes f32, f16 and bf16 activations and answers in their dtype: candle's CUDA MMVQ/MMQ
            // kernels quantize them to q8_1 whatever their float type, and its CPU path widens bf16 once. So no
            // casts around it: at decode each would be a kernel launch per matmul.
            Self::Quant(m, bias) => {
                let x = x.contiguous()?;
                let y = match m {
                    QMatMul::QTensor(q) if dequantized_prefill(q, &x) => {
                        let w = q.dequantize(x.device())?;
                        x.broadcast_matmul(&w.to_dtype(x.dtype())?.t()?)?
                    }
                    _ => m.forward(&x)?,
                };
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Self::Lora(base, delta) => base.forward(x)? + delta.forward(x)?,
            Self::Parts(parts) => {
                let ys = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, candle_core::D::Minus1)
            }
        }
    }
}
