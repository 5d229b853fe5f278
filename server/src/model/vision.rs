//! EVA2-CLIP-E vision tower with its post-sublayer LayerNorm, and the GLU adapter into the language model
//! (`visual.py` of the HF remote code; tensors under `model.vision.`).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use super::config::{Config, VisionConfig};
use super::precision::{layer_norm, like};
use super::quant::{QLinear, Quantizer};

/// Softmax attention over `[B, H, N, d]` tensors, `softmax((q·scale)·kᵀ + mask)·v`, with the matmuls in the
/// inputs' dtype (cuBLAS accumulates bf16 in f32, as torch's SDPA does) and the scores and softmax in f32. The
/// decoder calls it on views of its cache, which the matmuls read with strides.
pub(crate) fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let mut scores = (q * scale)?.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    super::ops::softmax_last_dim(&scores)?
        .to_dtype(dtype)?
        .matmul(v)
}

/// [`sdpa`] entirely in f32, for the vision towers: with bf16 matmuls the 224 px
/// fixture's vision output moved from 2.17e-2 to 2.28e-2 of f32 (bf16 parity on CPU).
///
/// When the inputs are half precision, cuBLAS may run these f32 matmuls on TF32 tensor cores: a bf16 or f16
/// value widens exactly into TF32's 10-bit mantissa and the sums stay f32, so the scores are as exact as in full
/// f32 (only the softmax weights are rounded, to 2⁻¹¹, as fine as the f16 output) at several times the speed.
/// An f32 model's attention keeps full f32.
///
/// Queries go in row blocks whose f32 scores fit [`SCORE_BLOCK_BYTES`]: softmax is per row, so the result is
/// the same, and CogAgent's 1120 px encoder (16 heads × 6401²) no longer holds 2.6 GB of scores and as much
/// of probabilities at once. The 490 px tower (96 MB of scores) runs in one block.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention_in_blocks(q, k, v, scale, SCORE_BLOCK_BYTES)
}

/// The most f32 scores one block of the towers' attention materialises.
const SCORE_BLOCK_BYTES: usize = 256 << 20;

fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    block_bytes: usize,
) -> Result<Tensor> {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    let (q32, k32, v32) = (f32(q)?, f32(k)?, f32(v)?);
    let (b, h, n, _) = q32.dims4()?;
    let row_bytes = b * h * k32.dim(2)? * DType::F32.size_in_bytes();
    let rows = (block_bytes / row_bytes.max(1)).clamp(1, n.max(1));
    let before = candle_core::cuda::gemm_reduced_precision_f32();
    candle_core::cuda::set_gemm_reduced_precision_f32(before || q.dtype() != DType::F32);
    let out = (0..n)
        .step_by(rows)
        .map(|start| {
            let block = q32.narrow(2, start, rows.min(n - start))?.contiguous()?;
            sdpa(&block, &k32, &v32, scale, None)
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|blocks| Tensor::cat(&blocks, 2));
    candle_core::cuda::set_gemm_reduced_precision_f32(before);
    out?.to_dtype(q.dtype())
}

/// Conv2d with kernel = stride = patch and no padding, written as patchify + matmul (exact, and much faster
/// than im2col for this shape). `[B, C, S, S]` → `[B, (S/p)², out]`, patches in row-major order, in the
/// pixels' dtype.
pub(crate) struct PatchEmbed {
    weight: Tensor, // [out, C·p·p]
    bias: Tensor,
    patch: usize,
}

impl PatchEmbed {
    pub fn new(in_ch: usize, out: usize, patch: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out, in_ch, patch, patch), "weight")?;
        let weight = weight.reshape((out, in_ch * patch * patch))?;
        let bias = vb.get(out, "bias")?;
        Ok(Self {
            weight,
            bias,
            patch,
        })
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let x = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?;
        x.broadcast_matmul(&like(&self.weight, &x)?.t()?)?
            .broadcast_add(&like(&self.bias, &x)?)
    }
}

struct Attention {
    qkv: QLinear,
    dense: QLinear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &VisionConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: q.vision_linear(h, 3 * h, true, vb.pp("query_key_value"))?,
            dense: q.vision_linear(h, h, true, vb.pp("dense"))?,
            heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let ctx = attention(&q, &k, &v, (self.head_dim as f64).powf(-0.5))?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, n, h))?;
        self.dense.forward(&ctx)
    }
}

struct Mlp {
    fc1: QLinear,
    fc2: QLinear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)
    }
}

/// One EVA2-CLIP-E layer: `x = x + LN_in(attn(x)); x = x + LN_post(mlp(x))` (the norms sit on the sublayer
/// outputs, SAT's "post" layernorm order).
struct Layer {
    attn: Attention,
    ln_in: LayerNorm,
    mlp: Mlp,
    ln_post: LayerNorm,
}

impl Layer {
    fn new(cfg: &VisionConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Self {
            attn: Attention::new(cfg, vb.pp("attention"), q)?,
            ln_in: candle_nn::layer_norm(h, eps, vb.pp("input_layernorm"))?,
            mlp: Mlp {
                fc1: q.vision_linear(h, i, true, vb.pp("mlp").pp("fc1"))?,
                fc2: q.vision_linear(i, h, true, vb.pp("mlp").pp("fc2"))?,
            },
            ln_post: candle_nn::layer_norm(h, eps, vb.pp("post_attention_layernorm"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + layer_norm(&self.ln_in, &self.attn.forward(x)?)?)?;
        &x + layer_norm(&self.ln_post, &self.mlp.forward(&x)?)?
    }
}

/// The "GLU" adapter: Linear → LayerNorm(eps 1e-5) → GELU → SwiGLU → Linear.
struct Glu {
    linear_proj: QLinear,
    norm1: LayerNorm,
    gate_proj: QLinear,
    dense_h_to_4h: QLinear,
    dense_4h_to_h: QLinear,
}

impl Glu {
    fn new(in_features: usize, cfg: &Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            linear_proj: q.vision_linear(in_features, h, false, vb.pp("linear_proj"))?,
            norm1: candle_nn::layer_norm(h, 1e-5, vb.pp("norm1"))?,
            gate_proj: q.vision_linear(h, i, false, vb.pp("gate_proj"))?,
            dense_h_to_4h: q.vision_linear(h, i, false, vb.pp("dense_h_to_4h"))?,
            dense_4h_to_h: q.vision_linear(i, h, false, vb.pp("dense_4h_to_h"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.linear_proj.forward(x)?;
        let x = layer_norm(&self.norm1, &x)?.gelu_erf()?;
        let gated = (self.gate_proj.forward(&x)?.silu()? * self.dense_h_to_4h.forward(&x)?)?;
        self.dense_4h_to_h.forward(&gated)
    }
}

/// `model.vision`: pixels `[B, 3, S, S]` → `[B, n + 2, hidden]` = `[boi, GLU(patches), eoi]`.
pub struct VisionModel {
    patch_embed: PatchEmbed,
    cls: Tensor,
    pos: Tensor,
    layers: Vec<Layer>,
    /// CogAgent adds a learned table to the patch features before the adapter.
    extra_pos: Option<Tensor>,
    /// CogVLM2's 2×2 stride-2 convolution over the patch grid (a patchify + matmul, as the patch embedding).
    conv: Option<PatchEmbed>,
    glu: Glu,
    boi: Tensor,
    eoi: Tensor,
}

impl VisionModel {
    /// Linear layers follow `q` ([`Quantizer::vision_linear`]: float unless `--quant-vision`).
    pub fn new(cfg: &Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let v = &cfg.vision_config;
        let pe = vb.pp("patch_embedding");
        let layers = (0..v.num_hidden_layers)
            .map(|i| Layer::new(v, vb.pp("transformer").pp("layers").pp(i), q))
            .collect::<Result<_>>()?;
        let family = cfg.family();
        let extra_pos = match family.vision_extra_pos() {
            true => Some(vb.get((v.num_patches(), v.hidden_size), "pos_embed")?),
            false => None,
        };
        let conv = match family.vision_conv() {
            true => Some(PatchEmbed::new(
                v.hidden_size,
                v.hidden_size,
                2,
                vb.pp("conv"),
            )?),
            false => None,
        };
        Ok(Self {
            patch_embed: PatchEmbed::new(
                v.in_channels,
                v.hidden_size,
                v.patch_size,
                pe.pp("proj"),
            )?,
            cls: pe.get((1, v.hidden_size), "cls_embedding")?,
            pos: pe.get(
                (v.num_positions, v.hidden_size),
                "position_embedding.weight",
            )?,
            layers,
            extra_pos,
            conv,
            glu: Glu::new(v.hidden_size, cfg, vb.pp("linear_proj"), q)?,
            boi: vb.get((1, 1, cfg.hidden_size), "boi")?,
            eoi: vb.get((1, 1, cfg.hidden_size), "eoi")?,
        })
    }

    /// ViT output before the CLS row is dropped: `[B, n + 1, vision_hidden]` (used by the parity probes).
    /// Everything runs in the pixels' dtype, whatever the weights' ([`super::precision`]).
    pub fn vit(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.patch_embed.forward(pixels)?;
        let b = x.dim(0)?;
        let cls = like(&self.cls, &x)?
            .unsqueeze(0)?
            .broadcast_as((b, 1, self.cls.dim(1)?))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&like(&self.pos, &x)?)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// What the adapter receives from the ViT output `vit` (CLS row dropped): `[B, features, vision_hidden]`,
    /// after CogAgent's position table or CogVLM2's convolution (the parity probe's `conv_output`).
    pub fn features(&self, vit: &Tensor) -> Result<Tensor> {
        let n = vit.dim(1)? - 1;
        let mut x = vit.narrow(1, 1, n)?;
        if let Some(p) = &self.extra_pos {
            x = x.broadcast_add(&like(p, &x)?)?;
        }
        if let Some(conv) = &self.conv {
            let (b, _, h) = x.dims3()?;
            let g = (n as f64).sqrt() as usize;
            let grid = x.reshape((b, g, g, h))?.permute((0, 3, 1, 2))?;
            x = conv.forward(&grid)?;
        }
        Ok(x)
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.features(&self.vit(pixels)?)?;
        let x = self.glu.forward(&x)?;
        let b = x.dim(0)?;
        let h = x.dim(D::Minus1)?;
        let boi = like(&self.boi, &x)?.broadcast_as((b, 1, h))?;
        let eoi = like(&self.eoi, &x)?.broadcast_as((b, 1, h))?;
        Tensor::cat(&[&boi, &x, &eoi], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn attention_in_row_blocks_equals_one_block() -> Result<()> {
        let dev = Device::Cpu;
        let (q, k, v) = (
            Tensor::randn(0f32, 1.0, (2, 3, 10, 8), &dev)?,
            Tensor::randn(0f32, 1.0, (2, 3, 12, 8), &dev)?,
            Tensor::randn(0f32, 1.0, (2, 3, 12, 8), &dev)?,
        );
        let whole = attention_in_blocks(&q, &k, &v, 0.35, usize::MAX)?;
        let sdpa_whole = sdpa(&q, &k, &v, 0.35, None)?;
        // One row of scores is 2 × 3 × 12 f32: blocks of 3 rows, the last one of 1.
        let row = 2 * 3 * 12 * 4;
        for bytes in [3 * row, row, 1] {
            let blocks = attention_in_blocks(&q, &k, &v, 0.35, bytes)?;
            let d = (&blocks - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-6, "blocks of {bytes} bytes differ by {d}");
        }
        let d = (&whole - &sdpa_whole)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6);
        Ok(())
    }
}
