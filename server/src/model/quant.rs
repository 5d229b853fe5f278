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
//!   on CPUs whose candle kernels would keep a second, repacked copy of Q4K (`qformat`).
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
use super::qformat::Kernels;
use super::weights::expected_tensors;

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

/// Builds the language model's linear layers (and, `with_vision`, the vision tower's) in the requested format
/// and records what it did.
pub struct Quantizer {
    mode: Quant,
    /// Quantize [`Role::Vision`] matrices too.
    vision: bool,
    report: RefCell<QuantReport>,
    /// Random-weight benchmarks: one quantized matrix per (shape, format), its blocks copied to the others.
    shared_blocks: Option<RefCell<SharedBlocks>>,
    /// A LoRA adapter to apply to the layers it names, and the modules it was applied to.
    lora: Option<(Adapter, LoraMode)>,
    lora_used: RefCell<BTreeSet<String>>,
    /// The model is built for training ([`Self::for_training`]).
    training: bool,
    /// `--int4-format`: the 4-bit format used instead of the device's choice.
    int4: Option<GgmlDType>,
}

impl Quantizer {
    pub fn new(mode: Quant) -> Self {
        Self {
            mode,
            vision: false,
            report: RefCell::new(QuantReport {
                mode,
                ..Default::default()
            }),
            shared_blocks: None,
            lora: None,
            lora_used: RefCell::new(BTreeSet::new()),
            training: false,
            int4: None,
        }
    }

    /// For a model whose weights or adapter pairs are `Var`s an optimizer updates in place: stacked layers keep
    /// their parts apart (see [`Self::stacked_linear`]).
    pub fn for_training(mut self) -> Self {
        self.training = true;
        self
    }

    /// Applies `adapter` to every linear layer it names ([`LoraMode`]: merged into float weights, or a separate
    /// low-rank product). Its `A` / `B` are used as given (`Var`s stay `Var`s).
    pub fn with_lora(mut self, adapter: Adapter, mode: LoraMode) -> Self {
        self.lora = Some((adapter, mode));
        self
    }

    /// The adapter, if any.
    pub fn lora(&self) -> Option<&Adapter> {
        self.lora.as_ref().map(|(a, _)| a)
    }

    /// After the model is built: an error for each adapted module no layer took, except the reference's no-ops
    /// ([`lora::is_reference_no_op`]), which are named in a note on stderr.
    pub fn check_lora_used(&self) -> Result<()> {
        let Some((adapter, _)) = &self.lora else {
            return Ok(());
        };
        let (no_ops, unused) = lora::unused_modules(adapter, &self.lora_used.borrow());
        if !unused.is_empty() {
            candle_core::bail!(
                "the LoRA adapter has weights for modules this model does not adapt (LoRA applies to the \
                 decoder's, the EVA2-CLIP tower's and its adapter's linear layers): {}",
                unused.join(", ")
            );
        }
        if !no_ops.is_empty() {
            tracing::info!(
                "LoRA: skipped {} cross-encoder projection(s) ({}): the reference reads those weights \
                 directly, so PEFT's LoRA on them has no effect",
                no_ops.len(),
                no_ops.join(", ")
            );
        }
        Ok(())
    }

    /// The adapter's pair for each part (by module path), marking it used.
    fn lora_parts(&self, parts: &[(usize, VarBuilder)]) -> Vec<Option<LoraPair>> {
        parts
            .iter()
            .map(|(_, vb)| {
                let (adapter, _) = self.lora.as_ref()?;
                let name = vb.prefix();
                let pair = adapter.modules.get(&name)?.clone();
                self.lora_used.borrow_mut().insert(name);
                Some(pair)
            })
            .collect()
    }

    /// For full-size random weights: candle quantizes on the CPU, one thread, which for CogVLM's 13 B
    /// language-model weights in Q4K takes minutes. The first matrix of each shape is quantized and every
    /// other matrix of that shape gets its own device copy of those blocks: the same bytes are read per token,
    /// so the timing is that of distinct weights.
    pub fn for_random_weights(mode: Quant) -> Self {
        Self {
            shared_blocks: Some(RefCell::new(HashMap::new())),
            ..Self::new(mode)
        }
    }

    /// Quantizes the vision tower's and adapter's linear layers as well (`--quant-vision`).
    pub fn with_vision(mut self, vision: bool) -> Self {
        self.vision = vision;
        self
    }

    /// Forces `format` for the 4-bit layers where it fits (else they stay float), instead of the device's choice.
    pub fn with_int4_format(mut self, format: Option<GgmlDType>) -> Self {
        self.int4 = format;
        self
    }

    /// Whether the vision tower's matrices will be quantized.
    pub fn quantizes_vision(&self) -> bool {
        self.vision && self.mode != Quant::Float
    }

    pub fn into_report(self) -> QuantReport {
        self.report.into_inner()
    }

    /// A bias-free linear `in_dim → out_dim` from `vb`'s `weight`.
    pub fn linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        role: Role,
        vb: VarBuilder,
    ) -> Result<QLinear> {
        self.stacked_linear(in_dim, &[(out_dim, vb)], role)
    }

    /// As [`Self::linear`] with `vb`'s `bias` (CogVLM2's vision-expert `query_key_value`), kept in the model
    /// dtype.
    pub fn linear_with_bias(
        &self,
        in_dim: usize,
        out_dim: usize,
        role: Role,
        vb: VarBuilder,
    ) -> Result<QLinear> {
        let bias = vb.get(out_dim, "bias")?;
        self.build(in_dim, &[(out_dim, vb)], role, Some(bias))
    }

    /// One bias-free linear layer whose output rows are those of `parts` (each `(out_dim, vb)`) in order: the
    /// MLP's gate and up projections become one matmul, one kernel launch per decode step instead of two.
    /// Each part is reported under its own name.
    pub fn stacked_linear(
        &self,
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        role: Role,
    ) -> Result<QLinear> {
        self.build(in_dim, parts, role, None)
    }

    /// A vision-tower linear `in_dim → out_dim` (with `vb`'s `bias` when `bias`): float unless the quantizer
    /// was made [`Self::with_vision`]; the bias stays in the model dtype.
    pub fn vision_linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<QLinear> {
        let b = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        self.build(in_dim, &[(out_dim, vb)], Role::Vision, b)
    }

    /// The layer in its format with `bias`, and the adapter's pairs for its parts: merged into float weights
    /// in [`LoraMode::Merge`], else wrapped as [`QLinear::Lora`].
    fn build(
        &self,
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        role: Role,
        bias: Option<Tensor>,
    ) -> Result<QLinear> {
        if parts.len() > 1 && self.training {
            // Weights or adapter pairs being trained stay apart: stacking copies them, and the copy would
            // not follow the optimizer's in-place updates (the forward would keep the values of step 0).
            let each = parts
                .iter()
                .map(|part| self.build(in_dim, std::slice::from_ref(part), role, None))
                .collect::<Result<Vec<_>>>()?;
            return Ok(QLinear::Parts(each));
        }
        let pairs = self.lora_parts(parts);
        let merge = matches!(self.lora, Some((_, LoraMode::Merge)));
        let (base, merged) = self.base(in_dim, parts, role, bias, merge.then_some(&pairs[..]))?;
        if merged || pairs.iter().all(Option::is_none) {
            return Ok(base);
        }
        let scaling = self.lora.as_ref().map_or(1.0, |(a, _)| a.scaling());
        let dropout = self
            .lora
            .as_ref()
            .map_or(0.0, |(a, _)| a.config.lora_dropout);
        let outs: Vec<usize> = parts.iter().map(|(o, _)| *o).collect();
        let delta =
            LoraDelta::stacked(&outs, &pairs, scaling, parts[0].1.dtype())?.with_dropout(dropout);
        Ok(QLinear::Lora(Box::new(base), delta))
    }

    /// The layer without LoRA, or with `merge`'s pairs merged into its weights when it stays float; says
    /// whether it merged them.
    fn base(
        &self,
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        role: Role,
        bias: Option<Tensor>,
        merge: Option<&[Option<LoraPair>]>,
    ) -> Result<(QLinear, bool)> {
        let out_dim: usize = parts.iter().map(|(o, _)| o).sum();
        let names = || {
            parts
                .iter()
                .map(|(_, vb)| format!("{}.weight", vb.prefix()))
        };
        let scaling = self.lora.as_ref().map_or(1.0, |(a, _)| a.scaling());
        let read = |dtype: DType, merge| read_parts(parts, in_dim, dtype, merge, scaling);
        let Some((_, vb)) = parts.first() else {
            candle_core::bail!("a linear layer needs at least one weight");
        };
        let float = |dtype: DType| -> Result<(QLinear, bool)> {
            Ok((
                QLinear::Float(Linear::new(read(dtype, merge)?, bias.clone())),
                merge.is_some(),
            ))
        };
        if self.mode == Quant::Float || (role == Role::Vision && !self.vision) {
            return float(vb.dtype());
        }
        let kernels = Kernels::of(vb.device());
        let format = match (self.int4, self.mode, role) {
            (Some(f), Quant::Q4, Role::Layer | Role::Vision) => {
                in_dim.is_multiple_of(f.block_size()).then_some(f)
            }
            _ => self.mode.format(role, in_dim, kernels),
        };
        let Some(format) = format else {
            self.report.borrow_mut().kept_float.extend(names());
            return float(vb.dtype());
        };
        // Read in f32 (not the model dtype) so that a bf16 model's weights are rounded once, by the quantizer.
        let q = self.quantize((out_dim, in_dim), format, vb.device(), || {
            read(DType::F32, None)
        })?;
        let mut r = self.report.borrow_mut();
        r.replaced_float_bytes += (in_dim * out_dim * vb.dtype().size_in_bytes()) as u64;
        r.quantized_bytes += q.storage_size_in_bytes() as u64;
        r.repacked_bytes += kernels.repacked_bytes(format, out_dim, in_dim);
        r.quantized.extend(names().map(|n| (n, format)));
        Ok((QLinear::Quant(QMatMul::from_qtensor(q)?, bias), false))
    }

    /// The weight `read` gives, quantized to `format` on `device`; random-weight runs share one set of blocks
    /// per shape (their values do not matter, their memory does).
    fn quantize(
        &self,
        (out_dim, in_dim): (usize, usize),
        format: GgmlDType,
        device: &Device,
        read: impl Fn() -> Result<Tensor>,
    ) -> Result<QTensor> {
        let Some(shared) = &self.shared_blocks else {
            return QTensor::quantize(&read()?, format);
        };
        let key = (out_dim, in_dim, format as usize);
        let mut shared = shared.borrow_mut();
        let blocks = match shared.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let w = read()?.to_device(&Device::Cpu)?;
                e.insert(QTensor::quantize(&w, format)?.data()?.into_owned())
            }
        };
        let storage = QStorage::from_data(Cow::Borrowed(blocks), device, format)?;
        QTensor::new(storage, (out_dim, in_dim))
    }
}

/// The weights of `parts` (stacked along the output rows) in `dtype`; a part with a pair in `merge` gets
/// `W + scaling · B A`, computed in f32 and rounded once to `dtype`.
fn read_parts(
    parts: &[(usize, VarBuilder)],
    in_dim: usize,
    dtype: DType,
    merge: Option<&[Option<LoraPair>]>,
    scaling: f64,
) -> Result<Tensor> {
    let w = parts
        .iter()
        .enumerate()
        .map(|(i, (o, vb))| {
            let pair = merge.and_then(|m| m.get(i)).and_then(Option::as_ref);
            let Some(p) = pair else {
                return vb.get_with_hints_dtype((*o, in_dim), "weight", Default::default(), dtype);
            };
            let w =
                vb.get_with_hints_dtype((*o, in_dim), "weight", Default::default(), DType::F32)?;
            let dev = w.device();
            let ba = p.b.to_device(dev)?.matmul(&p.a.to_device(dev)?)?;
            (w + (ba * scaling)?)?.to_dtype(dtype)
        })
        .collect::<Result<Vec<_>>>()?;
    match w.len() {
        1 => Ok(w[0].clone()),
        _ => Tensor::cat(&w, 0),
    }
}

/// LoRA's low-rank path of one layer: `scaling · (x Aᵀ) Bᵀ`. For stacked parts `A` stacks their `A`s and `B` is
/// block-diagonal, so each part's rows see only its own pair (and unadapted parts get zero rows).
#[derive(Debug, Clone)]
pub struct LoraDelta {
    a: Tensor, // [R, in]
    b: Tensor, // [out, R]
    scaling: f64,
    /// PEFT's `lora_dropout` on the low-rank path's input, applied only while training (the pair is being
    /// recorded for backprop).
    dropout: f64,
}

impl LoraDelta {
    fn stacked(
        outs: &[usize],
        pairs: &[Option<LoraPair>],
        scaling: f64,
        dtype: DType,
    ) -> Result<Self> {
        let present: Vec<&LoraPair> = pairs.iter().flatten().collect();
        // A pair being trained is kept as it is (`forward` casts it): a cast copy would not follow its updates.
        let cast = |t: &Tensor| {
            if t.is_variable() {
                Ok(t.clone())
            } else {
                t.to_dtype(dtype)
            }
        };
        if let ([Some(p)], [_]) = (pairs, outs) {
            return Ok(Self {
                a: cast(&p.a)?,
                b: cast(&p.b)?,
                scaling,
                dropout: 0.0,
            });
        }
        let a = Tensor::cat(
            &present
                .iter()
                .map(|p| cast(&p.a))
                .collect::<Result<Vec<_>>>()?,
            0,
        )?;
        let ranks: Vec<usize> = present.iter().map(|p| p.a.dim(0)).collect::<Result<_>>()?;
        let dev = a.device().clone();
        let mut rows = Vec::with_capacity(outs.len());
        let mut k = 0;
        for (&out, pair) in outs.iter().zip(pairs) {
            let blocks = ranks
                .iter()
                .enumerate()
                .map(|(j, &r)| match pair {
                    Some(p) if j == k => cast(&p.b),
                    _ => Tensor::zeros((out, r), dtype, &dev),
                })
                .collect::<Result<Vec<_>>>()?;
            rows.push(Tensor::cat(&blocks, 1)?);
            if pair.is_some() {
                k += 1;
            }
        }
        Ok(Self {
            a,
            b: Tensor::cat(&rows, 0)?,
            scaling,
            dropout: 0.0,
        })
    }

    fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = super::precision::like(&self.a, x)?;
        let b = super::precision::like(&self.b, x)?;
        let dropped;
        let x = if self.dropout > 0.0 && self.a.track_op() {
            dropped = candle_nn::ops::dropout(x, self.dropout as f32)?;
            &dropped
        } else {
            x
        };
        x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * self.scaling
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
        let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let den = b.sqr().unwrap().sum_all().unwrap();
        (num.to_scalar::<f32>().unwrap() / den.to_scalar::<f32>().unwrap()).sqrt()
    }

    /// A 256 × 512 weight (fits every block size): the quantized matmul is close to the float one, in f32 and
    /// bf16 activations, and Q4 is worse than Q8 (measured rel-L2: Q8_0 7.7e-3, Q4K 7.4e-2).
    #[test]
    fn quantized_matmul_is_close_to_float() -> Result<()> {
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 1.0, (256, 512), &dev)? / 512f64.sqrt())?;
        let x = Tensor::randn(0f32, 1.0, (1, 7, 512), &dev)?;
        let reference = x.broadcast_matmul(&w.t()?)?;
        let mut errs = Vec::new();
        for (mode, bound) in [(Quant::Q8, 2e-2), (Quant::Q4, 1.5e-1)] {
            let vb = VarBuilder::from_tensors(
                [("p.weight".to_string(), w.clone())].into(),
                DType::F32,
                &dev,
            );
            let q = Quantizer::new(mode);
            let lin = q.linear(512, 256, Role::Layer, vb.pp("p"))?;
            assert!(matches!(lin, QLinear::Quant(..)));
            let report = q.into_report();
            assert_eq!(report.kept_float, Vec::<String>::new());
            assert!(report.quantized_bytes * 3 < report.replaced_float_bytes);
            let err = rel_l2(&lin.forward(&x)?, &reference);
            println!("{mode} ({:?}): rel-L2 {err:.2e}", report.quantized[0].1);
            assert!(err <= bound, "{mode}: rel-L2 {err} > {bound}");
            let bf = lin.forward(&x.to_dtype(DType::BF16)?)?;
            assert_eq!(bf.dtype(), DType::BF16);
            assert!(rel_l2(&bf.to_dtype(DType::F32)?, &reference) <= bound + 1e-2);
            errs.push(err);
        }
        assert!(errs[0] < errs[1], "Q8 {} vs Q4 {}", errs[0], errs[1]);
        Ok(())
    }

    /// Gate and up projections stacked into one matrix answer what the two separate layers answer, side by side,
    /// float and quantized (blocks run along the rows' inner dim, so stacking rows changes no block), and each
    /// part is reported under its own name.
    #[test]
    fn stacked_linear_equals_its_parts() -> Result<()> {
        let dev = Device::Cpu;
        let gate = (Tensor::randn(0f32, 1.0, (64, 256), &dev)? / 16.0)?;
        let up = (Tensor::randn(0f32, 1.0, (64, 256), &dev)? / 16.0)?;
        let vb = VarBuilder::from_tensors(
            [
                ("m.gate_proj.weight".to_string(), gate),
                ("m.up_proj.weight".to_string(), up),
            ]
            .into(),
            DType::F32,
            &dev,
        );
        let x = Tensor::randn(0f32, 1.0, (1, 5, 256), &dev)?;
        for mode in [Quant::Float, Quant::Q8, Quant::Q4] {
            let q = Quantizer::new(mode);
            let parts = [(64, vb.pp("m.gate_proj")), (64, vb.pp("m.up_proj"))];
            let both = q.stacked_linear(256, &parts, Role::Layer)?.forward(&x)?;
            let apart = Tensor::cat(
                &[
                    q.linear(256, 64, Role::Layer, vb.pp("m.gate_proj"))?
                        .forward(&x)?,
                    q.linear(256, 64, Role::Layer, vb.pp("m.up_proj"))?
                        .forward(&x)?,
                ],
                D::Minus1,
            )?;
            assert_eq!(both.dims(), &[1, 5, 128]);
            let diff = (&both - &apart)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{mode}: stacked differs from parts by {diff}");
            let report = q.into_report();
            if mode != Quant::Float {
                let names: Vec<&str> = report.quantized.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(&names[..2], ["m.gate_proj.weight", "m.up_proj.weight"]);
                assert_eq!(report.quantized.len(), 4);
            }
        }
        Ok(())
    }

    /// The benchmark's random-weight quantizer: two matrices of one shape share quantized blocks (so they give
    /// the same output) but not storage, and both are reported as quantized.
    #[test]
    fn random_weights_share_blocks_per_shape() -> Result<()> {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_backend(
            Box::new(crate::model::weights::RandomBackend),
            DType::F32,
            dev.clone(),
        );
        let q = Quantizer::for_random_weights(Quant::Q4);
        let a = q.linear(512, 256, Role::Layer, vb.pp("a"))?;
        let b = q.linear(512, 256, Role::Layer, vb.pp("b"))?;
        let c = q.linear(256, 512, Role::Layer, vb.pp("c"))?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 512), &dev)?;
        let (ya, yb) = (a.forward(&x)?, b.forward(&x)?);
        assert_eq!(rel_l2(&ya, &yb), 0.0);
        assert_eq!(c.forward(&ya)?.dims(), &[1, 3, 512]);
        let report = q.into_report();
        assert_eq!(report.quantized.len(), 3);
        Ok(())
    }
}
