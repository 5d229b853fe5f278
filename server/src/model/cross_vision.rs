//! CogAgent's high-resolution encoder: EVA2-CLIP-L at `cross_image_size` (1120 px → 80×80 = 6400 patches),
//! `cross_visual.py` of the HF remote code (tensors under `model.cross_vision.`).
//!
//! Pre-norm blocks with q/v biases, 2-D interleaved RoPE (interpolated frequencies) on the patch tokens only,
//! `inner_attn_ln` before the output projection, SwiGLU MLP with its own LayerNorm. The reference never runs the
//! last block and applies no final norm; CLS is dropped and `cross_vision.pos_embed` is added.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{linear_no_bias, LayerNorm, Linear, VarBuilder};

use super::config::CrossConfig;
use super::precision::{layer_norm, like, linear};
use super::vision::{attention, PatchEmbed};

const LN_EPS: f64 = 1e-6;

/// cos/sin for the interleaved 2-D rotary embedding, one row per patch, one column per rotated pair.
struct Rope2d {
    cos: Tensor, // [n_patches, head_dim / 2]
    sin: Tensor,
}

impl Rope2d {
    /// EVA's `VisionRotaryEmbeddingFast(dim = head_dim / 2, pt_seq_len, ft_seq_len = grid)`, in f32 like the
    /// reference; the checkpoint's own `rope.freqs_cos/sin` buffers are preferred when present.
    fn new(cfg: &CrossConfig, vb: &VarBuilder, device: &Device) -> Result<Self> {
        let head_dim = cfg.vision.vision_cfg.head_width;
        let grid = cfg.grid();
        let n = grid * grid;
        let (cos, sin) = if vb.contains_tensor("freqs_cos") && vb.contains_tensor("freqs_sin") {
            let cos = vb.get_with_hints_dtype(
                (n, head_dim),
                "freqs_cos",
                Default::default(),
                DType::F32,
            )?;
            let sin = vb.get_with_hints_dtype(
                (n, head_dim),
                "freqs_sin",
                Default::default(),
                DType::F32,
            )?;
            (cos, sin)
        } else {
            let half = head_dim / 2;
            let inv: Vec<f32> = (0..half / 2)
                .map(|j| 1.0 / 10000f32.powf((2 * j) as f32 / half as f32))
                .collect();
            let pt = cfg.vision.vision_cfg.pt_hw_seq_len as f32;
            let t: Vec<f32> = (0..grid).map(|c| c as f32 / grid as f32 * pt).collect();
            let mut cos = Vec::with_capacity(n * head_dim);
            let mut sin = Vec::with_capacity(n * head_dim);
            for r in 0..grid {
                for c in 0..grid {
                    for (pos, _) in [(t[r], 0), (t[c], 1)] {
                        for &f in &inv {
                            let a = pos * f;
                            cos.extend([a.cos(), a.cos()]);
                            sin.extend([a.sin(), a.sin()]);
                        }
                    }
                }
            }
            (
                Tensor::from_vec(cos, (n, head_dim), device)?,
                Tensor::from_vec(sin, (n, head_dim), device)?,
            )
        };
        // Each angle is stored twice (interleaved); `rope_i` wants one value per pair.
        let pick = |t: Tensor| -> Result<Tensor> {
            t.reshape((n, head_dim / 2, 2))?
                .narrow(2, 0, 1)?
                .squeeze(2)?
                .contiguous()
        };
        Ok(Self {
            cos: pick(cos)?,
            sin: pick(sin)?,
        })
    }

    /// Rotates `[B, H, 1 + n, d]`, leaving the CLS row untouched.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(2)? - 1;
        let cls = x.narrow(2, 0, 1)?;
        let dtype = x.dtype();
        let patches = x.narrow(2, 1, n)?.to_dtype(DType::F32)?.contiguous()?;
        let rotated = super::ops::rope_i(&patches, &self.cos, &self.sin)?.to_dtype(dtype)?;
        Tensor::cat(&[&cls, &rotated], 2)
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    q_bias: Tensor,
    v_bias: Tensor,
    inner_attn_ln: LayerNorm,
    proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &CrossConfig, vb: VarBuilder) -> Result<Self> {
        let w = cfg.vision.vision_cfg.width;
        Ok(Self {
            q_proj: linear_no_bias(w, w, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(w, w, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(w, w, vb.pp("v_proj"))?,
            q_bias: vb.get(w, "q_bias")?,
            v_bias: vb.get(w, "v_bias")?,
            inner_attn_ln: candle_nn::layer_norm(w, LN_EPS, vb.pp("inner_attn_ln"))?,
            proj: candle_nn::linear(w, w, vb.pp("proj"))?,
            heads: cfg.vision.num_heads(),
            head_dim: cfg.vision.vision_cfg.head_width,
        })
    }

    fn forward(&self, x: &Tensor, rope: &Rope2d) -> Result<Tensor> {
        let (b, n, w) = x.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(linear(&self.q_proj, x)?.broadcast_add(&like(&self.q_bias, x)?)?)?;
        let k = split(linear(&self.k_proj, x)?)?;
        let v = split(linear(&self.v_proj, x)?.broadcast_add(&like(&self.v_bias, x)?)?)?;
        let q = rope.apply(&q)?;
        let k = rope.apply(&k)?;
        let ctx = attention(&q, &k, &v, (self.head_dim as f64).powf(-0.5))?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, n, w))?;
        linear(&self.proj, &layer_norm(&self.inner_attn_ln, &ctx)?)
    }
}

struct SwiGlu {
    w1: Linear,
    w2: Linear,
    ffn_ln: LayerNorm,
    w3: Linear,
}

impl SwiGlu {
    fn new(cfg: &CrossConfig, vb: VarBuilder) -> Result<Self> {
        let (w, h) = (cfg.vision.vision_cfg.width, cfg.vision.mlp_hidden());
        Ok(Self {
            w1: candle_nn::linear(w, h, vb.pp("w1"))?,
            w2: candle_nn::linear(w, h, vb.pp("w2"))?,
            ffn_ln: candle_nn::layer_norm(h, LN_EPS, vb.pp("ffn_ln"))?,
            w3: candle_nn::linear(h, w, vb.pp("w3"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = (linear(&self.w1, x)?.silu()? * linear(&self.w2, x)?)?;
        linear(&self.w3, &layer_norm(&self.ffn_ln, &hidden)?)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: SwiGlu,
}

impl Block {
    fn new(cfg: &CrossConfig, vb: VarBuilder) -> Result<Self> {
        let w = cfg.vision.vision_cfg.width;
        Ok(Self {
            norm1: candle_nn::layer_norm(w, LN_EPS, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: candle_nn::layer_norm(w, LN_EPS, vb.pp("norm2"))?,
            mlp: SwiGlu::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, rope: &Rope2d) -> Result<Tensor> {
        let x = (x + self.attn.forward(&layer_norm(&self.norm1, x)?, rope)?)?;
        &x + self.mlp.forward(&layer_norm(&self.norm2, &x)?)?
    }
}

/// `model.cross_vision`: 1120-px pixels `[B, 3, S, S]` → `encoder_outputs` `[B, 6400, width]`.
pub struct CrossVisionModel {
    patch_embed: PatchEmbed,
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    rope: Rope2d,
    out_pos: Tensor,
}

impl CrossVisionModel {
    pub fn new(cfg: &CrossConfig, vb: VarBuilder) -> Result<Self> {
        let v = &cfg.vision.vision_cfg;
        let m = vb.pp("vit").pp("model");
        let n = cfg.num_patches();
        // The last block is in the checkpoint but the reference skips it: don't even load it.
        let blocks = (0..v.layers - 1)
            .map(|j| Block::new(cfg, m.pp("blocks").pp(j)))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed: PatchEmbed::new(3, v.width, v.patch_size, m.pp("patch_embed").pp("proj"))?,
            cls: m.get((1, 1, v.width), "cls_token")?,
            pos: m.get((1, n + 1, v.width), "pos_embed")?,
            blocks,
            rope: Rope2d::new(cfg, &m.pp("rope"), vb.device())?,
            out_pos: vb.get((n, v.width), "pos_embed")?,
        })
    }

    /// Runs in the pixels' dtype, whatever the weights' ([`super::precision`]).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.patch_embed.forward(pixels)?;
        let (b, n, w) = x.dims3()?;
        let cls = like(&self.cls, &x)?.broadcast_as((b, 1, w))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&like(&self.pos, &x)?)?;
        for block in &self.blocks {
            x = block.forward(&x, &self.rope)?;
        }
        x.narrow(1, 1, n)?.broadcast_add(&like(&self.out_pos, &x)?)
    }
}
