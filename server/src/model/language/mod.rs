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

use super::config::Config;
use super::kv_cache::KvBuffer;
use super::ops;
use super::placement::Placement;
use super::quant::{QLinear, Quantizer, Role};

mod attention;
#[cfg(test)]
mod tests;

use attention::{causal_mask, grouped_mask, Chunk, CrossAttention, SelfAttention};
pub use attention::{Rotary, Rows};

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
