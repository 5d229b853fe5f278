//! The visual-expert Llama decoder (`modeling_cogvlm.py` / `modeling_cogagent.py`, and CogVLM2's Llama-3 one
//! with grouped-query attention; tensors under `model.`).
//!
//! Every layer holds two copies of QKV, the attention output projection and the MLP: the "vision expert" for
//! boi and the image patches, the "language expert" for everything else. The reference gathers rows with boolean
//! masks (a host round-trip per layer); here the image block is one contiguous span, so each routed matmul is at
//! most three narrow + matmul pieces. CogAgent layers add a cross-attention sub-layer over the high-resolution
//! encoder output, whose keys/values are computed once at prefill and kept in the cache.

use std::ops::Range;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::{Config, CrossConfig};
use super::kv_cache::KvBuffer;
use super::ops;
use super::placement::Placement;
use super::quant::{QLinear, Quantizer, Role};
use super::vision::sdpa;

/// RMSNorm as the reference computes it: sum of squares and scale in f32, the weight multiplied in f32, then
/// cast back.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
    /// Widen half-precision input to f32 around candle's kernel (see [`norm_kernel_keeps_f32`]).
    upcast: bool,
}

/// Whether candle's fused RMSNorm already computes half-precision input in f32 on `device`. Its CUDA kernel does
/// (f32 sum and scale, the weight widened, one rounding at the end: the reference's arithmetic), so there the
/// norm is one launch; its CPU kernel rounds the scale and each product to the input dtype, so on the CPU
/// bf16/f16 input is widened to f32 first (two casts more, which the CPU does not mind).
fn norm_kernel_keeps_f32(device: &Device) -> bool {
    device.is_cuda()
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let upcast = vb.dtype() != DType::F32 && !norm_kernel_keeps_f32(vb.device());
        Self::with_upcast(size, eps, vb, upcast)
    }

    fn with_upcast(size: usize, eps: f64, vb: VarBuilder, upcast: bool) -> Result<Self> {
        let dtype = if upcast { DType::F32 } else { vb.dtype() };
        let weight = vb.get_with_hints_dtype(size, "weight", Default::default(), dtype)?;
        Ok(Self {
            weight,
            eps: eps as f32,
            upcast,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.upcast {
            return ops::rms_norm(x, &self.weight, self.eps);
        }
        let dtype = x.dtype();
        ops::rms_norm(&x.to_dtype(DType::F32)?, &self.weight, self.eps)?.to_dtype(dtype)
    }
}

/// A pair of expert weights applied by token span.
struct Experts<T> {
    language: T,
    vision: T,
}

impl<T> Experts<T> {
    /// Applies `f(vision)` to the rows in `span` and `f(language)` to the others, along dim 1 of `[B, L, _]`.
    fn apply(
        &self,
        x: &Tensor,
        span: &Option<Range<usize>>,
        f: impl Fn(&T, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let Some(span) = span.as_ref().filter(|s| !s.is_empty()) else {
            return f(&self.language, x);
        };
        let l = x.dim(1)?;
        let mut parts = Vec::with_capacity(3);
        if span.start > 0 {
            parts.push(f(&self.language, &x.narrow(1, 0, span.start)?)?);
        }
        parts.push(f(&self.vision, &x.narrow(1, span.start, span.len())?)?);
        if span.end < l {
            parts.push(f(&self.language, &x.narrow(1, span.end, l - span.end)?)?);
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        Tensor::cat(&parts, 1)
    }
}

struct Mlp {
    /// `gate_proj` and `up_proj` stacked: one matmul, then split.
    gate_up: QLinear,
    down_proj: QLinear,
    intermediate: usize,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Mlp::forward(self, x)
    }
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let parts = [(i, vb.pp("gate_proj")), (i, vb.pp("up_proj"))];
        Ok(Self {
            gate_up: q.stacked_linear(h, &parts, Role::Layer)?,
            down_proj: q.linear(i, h, Role::Layer, vb.pp("down_proj"))?,
            intermediate: i,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = self.gate_up.forward(x)?;
        let i = self.intermediate;
        let g = (gu.narrow(D::Minus1, 0, i)?.silu()? * gu.narrow(D::Minus1, i, i)?)?;
        self.down_proj.forward(&g)
    }
}

/// cos/sin rows for the (non-contiguous) position ids: the LM's NeoX-style RoPE over the full head dim.
///
/// The rows for every position up to the context length are computed once at load, on the device and in the
/// model dtype (the same arithmetic and final cast as per call), so a decode step takes a view of one row
/// instead of uploading its position and recomputing.
pub struct Rotary {
    inv_freq: Tensor, // [1, head_dim / 2] f32
    cos: Tensor,      // [context, head_dim / 2], model dtype
    sin: Tensor,
    /// Positions and angles rounded to the model dtype ([`super::family::Family::rope_in_model_dtype`]).
    in_model_dtype: bool,
}

impl Rotary {
    /// Uses the checkpoint's `rotary_emb.inv_freq` buffer when present (bit-parity with the reference; CogVLM2
    /// computes with the stored values), else `1 / base^(2j / d)` computed in f32 like the reference's init.
    pub fn new(cfg: &Config, vb: &VarBuilder, device: &Device) -> Result<Self> {
        let d = cfg.head_dim();
        let family = cfg.family();
        let name = "layers.0.self_attn.rotary_emb.inv_freq";
        let inv_freq = if vb.contains_tensor(name) {
            vb.get_with_hints_dtype(d / 2, name, Default::default(), DType::F32)?
        } else {
            let base = family.rope_base();
            let v: Vec<f32> = (0..d / 2)
                .map(|j| 1.0 / base.powf((2 * j) as f32 / d as f32))
                .collect();
            Tensor::from_vec(v, d / 2, device)?
        };
        let in_model_dtype = family.rope_in_model_dtype();
        let inv_freq = inv_freq.reshape((1, d / 2))?;
        let all: Vec<u32> = (0..cfg.max_position_embeddings.max(1) as u32).collect();
        let (cos, sin) = Self::compute(&inv_freq, &all, vb.dtype(), in_model_dtype)?;
        Ok(Self {
            inv_freq,
            cos,
            sin,
            in_model_dtype,
        })
    }

    /// `cos`/`sin` of `position · inv_freq`, cast to `dtype`. With `in_model_dtype` (CogVLM2) the positions, the
    /// frequencies and each product are first rounded to `dtype`, as torch computes them when `inv_freq` is a
    /// bf16 buffer: above 256 bf16 positions step by 2, and exact positions put the 224 px bf16 fixture's last
    /// logits 0.22 rel-L2 away from the reference. In f32 the rounding changes nothing.
    fn compute(
        inv_freq: &Tensor,
        positions: &[u32],
        dtype: DType,
        in_model_dtype: bool,
    ) -> Result<(Tensor, Tensor)> {
        let p: Vec<f32> = positions.iter().map(|&p| p as f32).collect();
        let p = Tensor::from_vec(p, (positions.len(), 1), inv_freq.device())?;
        let round = |t: Tensor| -> Result<Tensor> {
            match in_model_dtype && dtype != DType::F32 {
                true => t.to_dtype(dtype)?.to_dtype(DType::F32),
                false => Ok(t),
            }
        };
        let angles = round(round(p)?.broadcast_mul(&round(inv_freq.clone())?)?)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    pub fn cos_sin(&self, positions: &[u32], dtype: DType) -> Result<(Tensor, Tensor)> {
        let table = self.cos.dim(0)?;
        let first = positions.first().copied().unwrap_or(0) as usize;
        let consecutive = positions.windows(2).all(|w| w[1] == w[0] + 1);
        if dtype != self.cos.dtype() || positions.iter().any(|&p| p as usize >= table) {
            return Self::compute(&self.inv_freq, positions, dtype, self.in_model_dtype);
        }
        if consecutive {
            // A decode step (or a text-only chunk): a view, nothing uploaded.
            let n = positions.len();
            return Ok((self.cos.narrow(0, first, n)?, self.sin.narrow(0, first, n)?));
        }
        let idx = Tensor::new(positions, self.cos.device())?;
        Ok((
            self.cos.index_select(&idx, 0)?,
            self.sin.index_select(&idx, 0)?,
        ))
    }
}

/// [`sdpa`] for grouped-query attention: `q` `[B, heads, L, d]`, `k`/`v` `[B, kv_heads, T, d]`, query head `i`
/// reading KV head `i / (heads / kv_heads)` (the reference's `repeat_interleave`). Each group's queries are
/// stacked along the rows of one matmul over its KV head, so the cache is never repeated; `mask` is the causal
/// mask made for those stacked rows ([`grouped_mask`]).
fn grouped_sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, heads, l, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if kv_heads == heads {
        return sdpa(q, k, v, scale, mask);
    }
    let q = q
        .contiguous()?
        .reshape((b, kv_heads, heads / kv_heads * l, d))?;
    sdpa(&q, k, v, scale, mask)?.reshape((b, heads, l, d))
}

/// The causal mask `[L, T]` repeated for the `groups` query heads [`grouped_sdpa`] stacks per KV head: made once
/// per chunk, not in every layer.
fn grouped_mask(mask: Tensor, groups: usize) -> Result<Tensor> {
    match groups {
        1 => Ok(mask),
        g => Tensor::cat(&vec![&mask; g], 0),
    }
}

struct SelfAttention {
    qkv: Experts<QLinear>,
    dense: Experts<QLinear>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, rows) = (cfg.hidden_size, cfg.qkv_rows());
        let lin = |i, o, name| q.linear(i, o, Role::Layer, vb.pp(name));
        let vision_qkv = match cfg.family().vision_expert_qkv_bias() {
            true => {
                q.linear_with_bias(h, rows, Role::Layer, vb.pp("vision_expert_query_key_value"))?
            }
            false => lin(h, rows, "vision_expert_query_key_value")?,
        };
        Ok(Self {
            qkv: Experts {
                language: lin(h, rows, "language_expert_query_key_value")?,
                vision: vision_qkv,
            },
            dense: Experts {
                language: lin(h, h, "language_expert_dense")?,
                vision: lin(h, h, "vision_expert_dense")?,
            },
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: cfg.head_dim(),
        })
    }

    /// The fused projection `[.., L, q | k | v]` split into rotated queries and keys `[B, L, heads + kv, d]`
    /// and values `[B, L, kv, d]`.
    fn split_rotate(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l, _) = qkv.dims3()?;
        let (heads, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        // Queries and keys rotated by one kernel in the `[B, L, heads, d]` layout the projection produces. For a
        // single token every view is already contiguous, so a decode step copies nothing here.
        let qk = qkv
            .narrow(D::Minus1, 0, (heads + kv) * d)?
            .reshape((b, l, heads + kv, d))?;
        let qk = ops::rope_thd(&qk, cos, sin)?;
        let v = qkv
            .narrow(D::Minus1, (heads + kv) * d, kv * d)?
            .reshape((b, l, kv, d))?;
        Ok((qk, v))
    }

    fn forward(&self, x: &Tensor, chunk: &Chunk, kv: &mut KvBuffer) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let span = chunk.span;
        let qkv = self.qkv.apply(x, span, |w, x| w.forward(x))?;
        let (qk, v) = self.split_rotate(&qkv, &chunk.cos, &chunk.sin)?;
        let by_head = |t: Tensor| t.transpose(1, 2)?.contiguous();
        let q = by_head(qk.narrow(2, 0, self.heads)?)?;
        let k = by_head(qk.narrow(2, self.heads, self.kv_heads)?)?;
        let (k, v) = kv.append(&k, &by_head(v)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let ctx = grouped_sdpa(&q, &k, &v, scale, chunk.mask.as_ref())?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, l, h))?;
        self.dense.apply(&ctx, span, |w, x| w.forward(x))
    }

    /// One decode token for each of `B` sequences, `x` = `[1, B, H]` (text tokens: the language expert). The
    /// projections run as one `[B, H]` matmul ([`Rows`]); attention runs per sequence over its own cache,
    /// exactly the kernels and shapes a lone sequence gets, so each row's result does not depend on its
    /// neighbours. (One padded kernel over every cache would change the reduction length of the softmax and the
    /// `P·V` matmul with the others' lengths, and so the rounding.)
    fn forward_rows(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kvs: &mut [&mut KvBuffer],
        rows: &Rows,
    ) -> Result<Tensor> {
        let h = x.dim(2)?;
        let (heads, kv_heads) = (self.heads, self.kv_heads);
        let qkv = rows.forward(&self.qkv.language, x)?;
        let (qk, v_all) = self.split_rotate(&qkv, cos, sin)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let by_head = |t: Tensor| t.transpose(1, 2)?.contiguous();
        let mut ctxs = Vec::with_capacity(kvs.len());
        for (i, kv) in kvs.iter_mut().enumerate() {
            let qk_i = qk.narrow(1, i, 1)?;
            let q = by_head(qk_i.narrow(2, 0, heads)?)?;
            let k = by_head(qk_i.narrow(2, heads, kv_heads)?)?;
            let v = by_head(v_all.narrow(1, i, 1)?)?;
            let (k, v) = kv.append(&k, &v)?;
            let ctx = grouped_sdpa(&q, &k, &v, scale, None)?;
            ctxs.push(ctx.transpose(1, 2)?.reshape((1, 1, h))?);
        }
        let ctx = Tensor::cat(&ctxs, 1)?;
        rows.forward(&self.dense.language, &ctx)
    }
}

/// The row count every batched decode matmul runs with. candle's CPU matmul (the `gemm` crate) picks its kernel
/// by shape: one row goes to a matrix-vector kernel and an `m × n ≤ 256` product to a dot-product kernel, and each
/// sums a row's products in another order than the blocked kernel that larger products take. Padding the rows
/// with zeros up to this count sends every decode matmul, for one sequence or many, to the blocked kernel, whose
/// sum for a row does not depend on the other rows: a sequence's tokens are then the same alone or in a batch.
/// (The blocked kernel's depth blocking depends on `k` alone while `m ≤ 64`, hence the batch cap.)
pub struct Rows {
    min: usize,
}

impl Rows {
    /// Largest batch whose rows keep the same kernel parameters (see above).
    pub const MAX: usize = 64;

    fn new(narrowest_output: usize) -> Self {
        Self {
            min: (256 / narrowest_output.max(1) + 1).max(2),
        }
    }

    /// `lin` over `x` = `[1, B, in]`, with `B` padded to the minimum row count.
    fn forward<M: Module>(&self, lin: &M, x: &Tensor) -> Result<Tensor> {
        let (_, b, k) = x.dims3()?;
        if b >= self.min {
            return lin.forward(x);
        }
        let pad = Tensor::zeros((1, self.min - b, k), x.dtype(), x.device())?;
        lin.forward(&Tensor::cat(&[x, &pad], 1)?)?.narrow(1, 0, b)
    }
}

/// Additive causal mask `[L, past + L]` (f32) for a chunk of `L` new tokens after `past` cached ones, made on
/// the device (a 1250-token prefill's mask is 6 MB: built on the host and uploaded it cost more than a layer).
fn causal_mask(l: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + l;
    let rows = Tensor::arange(past as f32, total as f32, device)?.reshape((l, 1))?;
    let cols = Tensor::arange(0f32, total as f32, device)?.reshape((1, total))?;
    let future = cols.broadcast_gt(&rows)?;
    let blocked = Tensor::full(f32::NEG_INFINITY, (l, total), device)?;
    future.where_cond(&blocked, &blocked.zeros_like()?)
}

/// What every layer needs about the chunk being run, made once per forward: the vision expert's span, the
/// RoPE rows and the causal mask (none for a single token).
struct Chunk<'a> {
    span: &'a Option<Range<usize>>,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

struct CrossAttention {
    query: QLinear,
    key_value: QLinear,
    dense: QLinear,
    heads: usize,
    head_dim: usize,
    compute: usize,
}

impl CrossAttention {
    fn new(cfg: &Config, cross: &CrossConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let lin = |i, o, name| q.linear(i, o, Role::Layer, vb.pp(name));
        Ok(Self {
            query: lin(cfg.hidden_size, cross.compute, "query")?,
            key_value: lin(cross.hidden, 2 * cross.compute, "key_value")?,
            dense: lin(cross.compute, cfg.hidden_size, "dense")?,
            heads: cfg.num_attention_heads,
            head_dim: cross.compute / cfg.num_attention_heads,
            compute: cross.compute,
        })
    }

    fn heads_view(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        x.reshape((b, n, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values over the encoder output, computed once per image.
    fn encoder_kv(&self, enc: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = self.key_value.forward(enc)?;
        let k = self.heads_view(&kv.narrow(D::Minus1, 0, self.compute)?)?;
        let v = self.heads_view(&kv.narrow(D::Minus1, self.compute, self.compute)?)?;
        Ok((k, v))
    }

    /// Attention in the model dtype over the cached encoder keys/values: widening them to f32 (as the towers'
    /// attention does) would rewrite 2 × 6400 × 1024 values per layer at every decode step, 3.3 GB of memory
    /// traffic per token at full size; bf16 parity on the CogAgent fixtures passes either way.
    fn forward(&self, x: &Tensor, kv: &(Tensor, Tensor)) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let q = self.heads_view(&self.query.forward(x)?)?;
        let ctx = sdpa(&q, &kv.0, &kv.1, (self.head_dim as f64).powf(-0.5), None)?;
        self.dense
            .forward(&ctx.transpose(1, 2)?.reshape((b, l, self.compute))?)
    }

    /// One decode token for each of `B` sequences over each one's own encoder keys/values (as
    /// [`SelfAttention::forward_rows`]).
    fn forward_rows(&self, x: &Tensor, kvs: &[&(Tensor, Tensor)], rows: &Rows) -> Result<Tensor> {
        let q = rows.forward(&self.query, x)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut ctxs = Vec::with_capacity(kvs.len());
        for (i, kv) in kvs.iter().enumerate() {
            let q = self.heads_view(&q.narrow(1, i, 1)?)?;
            let ctx = sdpa(&q, &kv.0, &kv.1, scale, None)?;
            ctxs.push(ctx.transpose(1, 2)?.reshape((1, 1, self.compute))?);
        }
        rows.forward(&self.dense, &Tensor::cat(&ctxs, 1)?)
    }
}

/// Per-layer decoding state: self-attention K/V (post-RoPE) and, for CogAgent, the encoder's K/V.
pub struct LayerCache {
    kv: KvBuffer,
    cross: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    fn truncate(&mut self, len: usize) {
        self.kv.truncate(len);
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    cross: Option<(RmsNorm, CrossAttention)>,
    post_attention_layernorm: RmsNorm,
    mlp: Experts<Mlp>,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let cross = match cfg.cross() {
            Some(c) => Some((
                RmsNorm::new(h, eps, vb.pp("post_cross_attention_layernorm"))?,
                CrossAttention::new(cfg, &c, vb.pp("cross_attn"), q)?,
            )),
            None => None,
        };
        Ok(Self {
            input_layernorm: RmsNorm::new(h, eps, vb.pp("input_layernorm"))?,
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"), q)?,
            cross,
            post_attention_layernorm: RmsNorm::new(h, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Experts {
                language: Mlp::new(cfg, vb.pp("mlp").pp("language_mlp"), q)?,
                vision: Mlp::new(cfg, vb.pp("mlp").pp("vision_mlp"), q)?,
            },
        })
    }

    fn forward(&self, h: &Tensor, chunk: &Chunk, cache: &mut LayerCache) -> Result<Tensor> {
        let span = chunk.span;
        let a = self
            .self_attn
            .forward(&self.input_layernorm.forward(h)?, chunk, &mut cache.kv)?;
        let mut h = (h + a)?;
        if let Some((norm, cross)) = &self.cross {
            let kv = cache.cross.as_ref().ok_or_else(|| {
                candle_core::Error::Msg(
                    "CogAgent needs an image: no cross-encoder keys in the cache".into(),
                )
            })?;
            h = (&h + cross.forward(&norm.forward(&h)?, kv)?)?;
        }
        let x = self.post_attention_layernorm.forward(&h)?;
        let m = self.mlp.apply(&x, span, |w, x| w.forward(x))?;
        &h + m
    }

    /// One decode token per sequence: `h` = `[1, B, H]`, `caches[i]` = sequence `i`'s cache of this layer.
    fn forward_rows(
        &self,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        caches: &mut [&mut LayerCache],
        rows: &Rows,
    ) -> Result<Tensor> {
        let x = self.input_layernorm.forward(h)?;
        let mut kvs: Vec<&mut KvBuffer> = caches.iter_mut().map(|c| &mut c.kv).collect();
        let a = self.self_attn.forward_rows(&x, cos, sin, &mut kvs, rows)?;
        let mut h = (h + a)?;
        if let Some((norm, cross)) = &self.cross {
            let kvs = caches
                .iter()
                .map(|c| {
                    c.cross.as_ref().ok_or_else(|| {
                        candle_core::Error::Msg(
                            "CogAgent needs an image: no cross-encoder keys in the cache".into(),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            h = (&h + cross.forward_rows(&norm.forward(&h)?, &kvs, rows)?)?;
        }
        let x = self.post_attention_layernorm.forward(&h)?;
        &h + rows.forward(&self.mlp.language, &x)?
    }
}

/// Everything under `model.` except the vision towers, plus `lm_head`. The token embeddings stay float (a row
/// gather, no matmul to speed up); every linear layer follows the quantizer.
pub struct LanguageModel {
    /// `[vocab, hidden]`, in host memory when the model is on a GPU: a lookup gathers its rows there and uploads
    /// them (8 KB per decode step, where the ids would have been uploaded anyway), and the table's 262 MB of
    /// device memory stay free.
    embed_tokens: Tensor,
    /// The first layer's device.
    device: Device,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: QLinear,
    /// The RoPE tables of each device slot that runs layers.
    rotary: Vec<Option<Rotary>>,
    place: Placement,
    rows: Rows,
    /// Query heads per KV head (CogVLM2's grouped-query attention; 1 for CogVLM).
    groups: usize,
}

impl LanguageModel {
    /// `vb` is the root builder (the LM lives under `model.` but `lm_head` is at the top).
    /// Each layer (and the head) is built on the device `place` gives it.
    pub fn new(cfg: &Config, vb: VarBuilder, q: &Quantizer, place: &Placement) -> Result<Self> {
        let on = |slot: usize| vb.clone().set_device(place.device(slot).clone());
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, on(place.layers[i]).pp("model.layers").pp(i), q))
            .collect::<Result<_>>()?;
        let rotary = (0..place.slots.len())
            .map(|s| match place.layers.contains(&s) {
                true => Rotary::new(cfg, &on(s).pp("model"), place.device(s)).map(Some),
                false => Ok(None),
            })
            .collect::<Result<_>>()?;
        let vb = on(place.head);
        let m = vb.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .set_device(Device::Cpu)
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        Ok(Self {
            embed_tokens,
            device: place.layer_device(0).clone(),
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head: q.linear(
                cfg.hidden_size,
                cfg.vocab_size,
                Role::LmHead,
                vb.pp("lm_head"),
            )?,
            rotary,
            place: place.clone(),
            // The narrowest output of a decode matmul: the hidden size (dense, down_proj) or CogAgent's
            // cross-attention width.
            groups: cfg.num_attention_heads / cfg.kv_heads(),
            rows: Rows::new(
                cfg.cross()
                    .map_or(cfg.hidden_size, |c| c.compute.min(cfg.hidden_size)),
            ),
        })
    }

    pub fn new_cache(&self, capacity: usize) -> Vec<LayerCache> {
        self.layers
            .iter()
            .map(|_| LayerCache {
                kv: KvBuffer::new(capacity),
                cross: None,
            })
            .collect()
    }

    /// A cache that keeps no keys/values, for one whole-sequence training forward ([`KvBuffer::pass_through`]).
    pub fn pass_through_cache(&self) -> Vec<LayerCache> {
        self.layers
            .iter()
            .map(|_| LayerCache {
                kv: KvBuffer::pass_through(),
                cross: None,
            })
            .collect()
    }

    /// Keeps the first `len` positions of every layer's keys/values (the encoder's stay).
    pub fn truncate_cache(&self, cache: &mut [LayerCache], len: usize) {
        cache.iter_mut().for_each(|c| c.truncate(len));
    }

    /// Whether the cache holds CogAgent's cross-encoder keys/values (set by a prefill with an image).
    pub fn has_cross(&self, cache: &[LayerCache]) -> bool {
        self.layers
            .iter()
            .zip(cache)
            .all(|(l, c)| l.cross.is_none() || c.cross.is_some())
    }

    /// Computes every layer's cross K/V from the encoder output (CogAgent prefill).
    pub fn set_cross(&self, cache: &mut [LayerCache], enc: &Tensor) -> Result<()> {
        // The encoder output, moved once to each slot that runs layers.
        let mut moved: Vec<Option<Tensor>> = vec![None; self.place.slots.len()];
        for (i, (layer, c)) in self.layers.iter().zip(cache.iter_mut()).enumerate() {
            if let Some((_, cross)) = &layer.cross {
                let s = self.place.layers[i];
                let enc = match &moved[s] {
                    Some(e) => e.clone(),
                    None if s == self.place.cross => enc.clone(),
                    None => self.place.transfer(enc, s)?,
                };
                c.cross = Some(cross.encoder_kv(&enc)?);
                moved[s] = Some(enc);
            }
        }
        Ok(())
    }

    /// Token ids → `[1, L, hidden]` on the model's device.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let idx = Tensor::new(ids, self.embed_tokens.device())?;
        self.embed_tokens
            .index_select(&idx, 0)?
            .to_device(&self.device)?
            .unsqueeze(0)
    }

    /// Runs the decoder over `embeds` `[B, L, H]` (appending to `cache`) and returns the final-normed hidden
    /// states. `span` = positions (within this chunk) routed to the vision expert. `hidden` collects the
    /// reference's `output_hidden_states` tuple when given.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        span: &Option<Range<usize>>,
        positions: &[u32],
        cache: &mut [LayerCache],
        mut hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let l = embeds.dim(1)?;
        let past = cache.first().map_or(0, |c| c.kv.len());
        // The RoPE rows and mask, made on each slot the first time one of its layers runs.
        let mut chunks: Vec<Option<Chunk>> = (0..self.place.slots.len()).map(|_| None).collect();
        let mut h = embeds.clone();
        let mut at = self
            .place
            .layers
            .first()
            .copied()
            .unwrap_or(self.place.head);
        for (i, (layer, c)) in self.layers.iter().zip(cache.iter_mut()).enumerate() {
            if let Some(hs) = hidden.as_mut() {
                hs.push(h.clone());
            }
            let s = self.place.layers[i];
            if s != at {
                h = self.place.transfer(&h, s)?;
                at = s;
            }
            if chunks[s].is_none() {
                chunks[s] = Some(self.chunk(s, span, positions, l, past, embeds.dtype())?);
            }
            if let Some(chunk) = &chunks[s] {
                h = layer.forward(&h, chunk, c)?;
            }
        }
        if self.place.head != at {
            h = self.place.transfer(&h, self.place.head)?;
        }
        let out = self.norm.forward(&h)?;
        if let Some(hs) = hidden.as_mut() {
            hs.push(out.clone());
        }
        Ok(out)
    }

    /// What every layer on `slot` needs about this chunk.
    fn chunk<'a>(
        &self,
        slot: usize,
        span: &'a Option<Range<usize>>,
        positions: &[u32],
        l: usize,
        past: usize,
        dtype: DType,
    ) -> Result<Chunk<'a>> {
        let Some(rotary) = &self.rotary[slot] else {
            candle_core::bail!("no RoPE tables on device slot {slot}");
        };
        let (cos, sin) = rotary.cos_sin(positions, dtype)?;
        let mask = if l > 1 {
            let mask = causal_mask(l, past, self.place.device(slot))?;
            Some(grouped_mask(mask, self.groups)?)
        } else {
            None
        };
        Ok(Chunk {
            span,
            cos,
            sin,
            mask,
        })
    }

    /// Logits in f32 (as the reference casts them).
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(h)?.to_dtype(DType::F32)
    }

    /// One decode step for `B` sequences: `embeds` = `[1, B, H]` (one text token each), `positions[i]` and
    /// `caches[i]` sequence `i`'s. Returns f32 logits `[B, V]`; row `i` is what sequence `i` gets alone.
    pub fn decode_rows(
        &self,
        embeds: &Tensor,
        positions: &[u32],
        caches: &mut [&mut [LayerCache]],
    ) -> Result<Tensor> {
        let mut h = embeds.clone();
        let mut at = self
            .place
            .layers
            .first()
            .copied()
            .unwrap_or(self.place.head);
        let mut rope: Vec<Option<(Tensor, Tensor)>> = vec![None; self.place.slots.len()];
        for (j, layer) in self.layers.iter().enumerate() {
            let s = self.place.layers[j];
            if s != at {
                h = self.place.transfer(&h, s)?;
                at = s;
            }
            if rope[s].is_none() {
                let Some(rotary) = &self.rotary[s] else {
                    candle_core::bail!("no RoPE tables on device slot {s}");
                };
                rope[s] = Some(rotary.cos_sin(positions, embeds.dtype())?);
            }
            let Some((cos, sin)) = &rope[s] else {
                candle_core::bail!("no RoPE rows on device slot {s}");
            };
            let mut layer_caches: Vec<&mut LayerCache> =
                caches.iter_mut().map(|c| &mut c[j]).collect();
            h = layer.forward_rows(&h, cos, sin, &mut layer_caches, &self.rows)?;
        }
        if self.place.head != at {
            h = self.place.transfer(&h, self.place.head)?;
        }
        let h = self.norm.forward(&h)?;
        self.rows
            .forward(&self.lm_head, &h)?
            .squeeze(0)?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of a padded decode matmul is bit for bit the same whatever rows it is batched with (the shapes of
    /// the tiny checkpoints: hidden 24, qkv 72, MLP 128, vocabulary 32000). Unpadded, a lone row takes another
    /// kernel; the test prints how many of its values then differ.
    #[test]
    fn padded_rows_do_not_depend_on_the_batch() -> Result<()> {
        let dev = Device::Cpu;
        for (n, k) in [(24, 24), (72, 24), (128, 24), (24, 64), (32000, 24)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let lin = candle_nn::Linear::new(w, None);
            let x = Tensor::randn(0f32, 1.0, (1, 8, k), &dev)?;
            let row = |rows: &Rows, i: usize| -> Result<Vec<f32>> {
                rows.forward(&lin, &x.narrow(1, i, 1)?)?
                    .flatten_all()?
                    .to_vec1()
            };
            let padded = Rows::new(24);
            let all = padded.forward(&lin, &x)?;
            let mut unpadded_diff = 0;
            for i in 0..8 {
                let in_batch = all.narrow(1, i, 1)?.flatten_all()?.to_vec1::<f32>()?;
                assert_eq!(row(&padded, i)?, in_batch, "{n}×{k}, row {i}");
                let lone = row(&Rows { min: 1 }, i)?;
                unpadded_diff += lone.iter().zip(&in_batch).filter(|(a, b)| a != b).count();
            }
            println!(
                "{n}×{k}: unpadded, {unpadded_diff} of {} values differ",
                8 * n
            );
        }
        Ok(())
    }

    /// The single-kernel norm (what runs on CUDA, where candle's kernel computes bf16 in f32) and the widened one
    /// (what runs on the CPU) agree to bf16 precision; in f32 they are the same call.
    #[test]
    fn rms_norm_paths_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 1.0, 96, &dev)? + 1.0)?;
        let x = (Tensor::randn(0f32, 1.0, (1, 7, 96), &dev)? * 3.0)?;
        let vb = VarBuilder::from_tensors([("n.weight".to_string(), w)].into(), DType::BF16, &dev);
        let direct = RmsNorm::with_upcast(96, 1e-5, vb.pp("n"), false)?;
        let widened = RmsNorm::with_upcast(96, 1e-5, vb.pp("n"), true)?;
        let xb = x.to_dtype(DType::BF16)?;
        let (a, b) = (direct.forward(&xb)?, widened.forward(&xb)?);
        assert_eq!((a.dtype(), b.dtype()), (DType::BF16, DType::BF16));
        let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
        let rel = ((&a - &b)?.sqr()?.sum_all()?.sqrt()? / b.sqr()?.sum_all()?.sqrt()?)?;
        let rel = rel.to_scalar::<f32>()?;
        assert!(rel < 1e-2, "direct vs widened bf16 norm: rel-L2 {rel}");
        // The CPU widens half precision and nothing else.
        assert!(RmsNorm::new(96, 1e-5, vb.pp("n"))?.upcast);
        let vb32 = VarBuilder::from_tensors(
            [("n.weight".to_string(), Tensor::ones(96, DType::F32, &dev)?)].into(),
            DType::F32,
            &dev,
        );
        assert!(!RmsNorm::new(96, 1e-5, vb32.pp("n"))?.upcast);
        Ok(())
    }

    /// CogVLM2's rule in bf16: positions are bf16 (257 rounds to 256, 259 to 260) and each angle is rounded
    /// before its cos/sin; in f32, and for CogVLM, positions stay exact.
    #[test]
    fn rope_in_model_dtype_rounds_positions_and_angles() -> Result<()> {
        let inv_freq = Tensor::new(&[[1.0f32, 0.0078125]], &Device::Cpu)?;
        let cos = |p: u32, dtype, rule| -> Result<Vec<f32>> {
            let (c, _) = Rotary::compute(&inv_freq, &[p], dtype, rule)?;
            c.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        };
        assert_eq!(cos(257, DType::BF16, true)?, cos(256, DType::BF16, true)?);
        assert_eq!(cos(259, DType::BF16, true)?, cos(260, DType::BF16, true)?);
        assert_ne!(cos(257, DType::BF16, false)?, cos(256, DType::BF16, false)?);
        assert_eq!(cos(257, DType::F32, true)?, cos(257, DType::F32, false)?);
        // The angle itself is rounded: 3 · 1.0 is exact, cos(3) then rounds once.
        let want = Tensor::new(&[3f32.cos()], &Device::Cpu)?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        assert_eq!(cos(3, DType::BF16, true)?[0], want[0]);
        Ok(())
    }

    /// Grouped-query attention equals plain attention over keys/values repeated per group (the reference's
    /// `repeat_interleave`), with and without a causal mask.
    #[test]
    fn grouped_attention_equals_repeated_kv() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, kv, l, t, d) = (6, 2, 3, 5, 4);
        let q = Tensor::randn(0f32, 1.0, (1, heads, l, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, kv, t, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, kv, t, d), &dev)?;
        let repeat = |x: &Tensor| -> Result<Tensor> {
            let g = heads / kv;
            x.unsqueeze(2)?
                .expand((1, kv, g, t, d))?
                .reshape((1, heads, t, d))
        };
        let mask = causal_mask(l, t - l, &dev)?;
        let stacked = grouped_mask(mask.clone(), heads / kv)?;
        for (m, g) in [(None, None), (Some(&mask), Some(&stacked))] {
            let grouped = grouped_sdpa(&q, &k, &v, 0.5, g)?;
            let plain = sdpa(&q, &repeat(&k)?, &repeat(&v)?, 0.5, m)?;
            let diff = (grouped - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "grouped vs repeated: {diff}");
        }
        Ok(())
    }
}
