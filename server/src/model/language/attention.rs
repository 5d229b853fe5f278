//! The decoder's attention: rotary positions, self-attention with the two experts' QKV and output
//! projections (grouped-query for CogVLM2), CogAgent's cross-attention, and the padded decode rows.

use std::ops::Range;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::super::config::{Config, CrossConfig};
use super::super::kv_cache::KvBuffer;
use super::super::ops;
use super::super::quant::{QLinear, Quantizer, Role};
use super::super::vision::sdpa;
use super::Experts;

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
    pub(super) fn compute(
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
pub(super) fn grouped_sdpa(
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
pub(super) fn grouped_mask(mask: Tensor, groups: usize) -> Result<Tensor> {
    match groups {
        1 => Ok(mask),
        g => Tensor::cat(&vec![&mask; g], 0),
    }
}

pub(super) struct SelfAttention {
    qkv: Experts<QLinear>,
    dense: Experts<QLinear>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    pub(super) fn new(cfg: &Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
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
    pub(super) fn split_rotate(
        &self,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
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

    pub(super) fn forward(&self, x: &Tensor, chunk: &Chunk, kv: &mut KvBuffer) -> Result<Tensor> {
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
    pub(super) fn forward_rows(
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
    pub(super) min: usize,
}

impl Rows {
    /// Largest batch whose rows keep the same kernel parameters (see above).
    pub const MAX: usize = 64;

    pub(super) fn new(narrowest_output: usize) -> Self {
        Self {
            min: (256 / narrowest_output.max(1) + 1).max(2),
        }
    }

    /// `lin` over `x` = `[1, B, in]`, with `B` padded to the minimum row count.
    pub(super) fn forward<M: Module>(&self, lin: &M, x: &Tensor) -> Result<Tensor> {
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
pub(super) fn causal_mask(l: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + l;
    let rows = Tensor::arange(past as f32, total as f32, device)?.reshape((l, 1))?;
    let cols = Tensor::arange(0f32, total as f32, device)?.reshape((1, total))?;
    let future = cols.broadcast_gt(&rows)?;
    let blocked = Tensor::full(f32::NEG_INFINITY, (l, total), device)?;
    future.where_cond(&blocked, &blocked.zeros_like()?)
}

/// What every layer needs about the chunk being run, made once per forward: the vision expert's span, the
/// RoPE rows and the causal mask (none for a single token).
pub(super) struct Chunk<'a> {
    pub(super) span: &'a Option<Range<usize>>,
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    pub(super) mask: Option<Tensor>,
}

pub(super) struct CrossAttention {
    query: QLinear,
    key_value: QLinear,
    dense: QLinear,
    heads: usize,
    head_dim: usize,
    compute: usize,
}

impl CrossAttention {
    pub(super) fn new(
        cfg: &Config,
        cross: &CrossConfig,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
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

    pub(super) fn heads_view(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        x.reshape((b, n, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values over the encoder output, computed once per image.
    pub(super) fn encoder_kv(&self, enc: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = self.key_value.forward(enc)?;
        let k = self.heads_view(&kv.narrow(D::Minus1, 0, self.compute)?)?;
        let v = self.heads_view(&kv.narrow(D::Minus1, self.compute, self.compute)?)?;
        Ok((k, v))
    }

    /// Attention in the model dtype over the cached encoder keys/values: widening them to f32 (as the towers'
    /// attention does) would rewrite 2 × 6400 × 1024 values per layer at every decode step, 3.3 GB of memory
    /// traffic per token at full size; bf16 parity on the CogAgent fixtures passes either way.
    pub(super) fn forward(&self, x: &Tensor, kv: &(Tensor, Tensor)) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let q = self.heads_view(&self.query.forward(x)?)?;
        let ctx = sdpa(&q, &kv.0, &kv.1, (self.head_dim as f64).powf(-0.5), None)?;
        self.dense
            .forward(&ctx.transpose(1, 2)?.reshape((b, l, self.compute))?)
    }

    /// One decode token for each of `B` sequences over each one's own encoder keys/values (as
    /// [`SelfAttention::forward_rows`]).
    pub(super) fn forward_rows(
        &self,
        x: &Tensor,
        kvs: &[&(Tensor, Tensor)],
        rows: &Rows,
    ) -> Result<Tensor> {
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
