//! The model's ops that have two implementations: candle's fused kernels, and compositions of differentiable
//! primitives. candle's fused softmax, RMSNorm, LayerNorm and RoPE kernels have no backward pass: a gradient that
//! reaches one of them silently stops there. Every call site goes through this module, which picks per call from
//! whether an input is being recorded for backprop (`Tensor::track_op`: a `Var`, or computed from one). Inference
//! builds its weights as plain tensors, so it always gets the fused kernels; a training forward always gets the
//! differentiable path, and no model code needs a mode flag.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::LayerNorm;

/// Whether any of `ts` is part of a recorded graph.
fn tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    softmax_with(x, tracked(&[x]))
}

fn softmax_with(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        return candle_nn::ops::softmax_last_dim(x);
    }
    // The shift only keeps `exp` in range; its gradient is zero analytically, so it is kept out of the graph.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension, in `x`'s dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    rms_norm_with(x, weight, eps, tracked(&[x, weight]))
}

fn rms_norm_with(x: &Tensor, weight: &Tensor, eps: f32, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        candle_nn::ops::rms_norm_slow(x, weight, eps)
    } else {
        candle_nn::ops::rms_norm(x, weight, eps)
    }
}

/// `ln(x)` (mean removed, with bias), its weights cast to `x`'s dtype when they differ (the image encoders'
/// precision fallback).
pub fn layer_norm(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    let same = ln.weight().dtype() == x.dtype();
    if !tracked(&[x, ln.weight()]) && same {
        return ln.forward(x);
    }
    let w = ln.weight().to_dtype(x.dtype())?;
    let b = match ln.bias() {
        Some(b) => b.to_dtype(x.dtype())?,
        None => w.zeros_like()?,
    };
    let differentiable = tracked(&[x, &w, &b]);
    layer_norm_with(x, &w, &b, ln.eps() as f32, differentiable)
}

fn layer_norm_with(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
    differentiable: bool,
) -> Result<Tensor> {
    if differentiable {
        candle_nn::ops::layer_norm_slow(x, w, b, eps)
    } else {
        candle_nn::ops::layer_norm(&x.contiguous()?, w, b, eps)
    }
}

/// NeoX-style RoPE (halves rotated) on `[B, L, heads, d]` with `cos`/`sin` `[L, d / 2]`.
pub fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope_thd_with(x, cos, sin, tracked(&[x]))
}

fn rope_thd_with(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        return candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin);
    }
    let (_, l, _, d) = x.dims4()?;
    let full = |t: &Tensor| -> Result<Tensor> {
        Tensor::cat(&[t, t], D::Minus1)?
            .to_dtype(x.dtype())?
            .reshape((1, l, 1, d))
    };
    let (cos, sin) = (full(cos)?, full(sin)?);
    let half = d / 2;
    let rotated = Tensor::cat(
        &[
            &x.narrow(D::Minus1, half, half)?.neg()?,
            &x.narrow(D::Minus1, 0, half)?,
        ],
        D::Minus1,
    )?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Interleaved RoPE (pairs rotated) on `[B, H, L, d]` with `cos`/`sin` `[L, d / 2]`.
pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope_i_with(x, cos, sin, tracked(&[x]))
}

fn rope_i_with(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        candle_nn::rotary_emb::rope_i_slow(x, cos, sin)
    } else {
        candle_nn::rotary_emb::rope_i(&x.contiguous()?, cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// Each fused kernel and its composition agree in f32.
    #[test]
    fn fused_and_differentiable_paths_agree() -> Result<()> {
        let x = (randn(&[2, 3, 5, 16]) * 3.0)?;
        let d = max_diff(&softmax_with(&x, false)?, &softmax_with(&x, true)?);
        assert!(d < 1e-6, "softmax: {d}");

        let w = (randn(&[16]) + 1.0)?;
        let b = randn(&[16]);
        let d = max_diff(
            &rms_norm_with(&x, &w, 1e-5, false)?,
            &rms_norm_with(&x, &w, 1e-5, true)?,
        );
        assert!(d < 1e-5, "rms_norm: {d}");
        let d = max_diff(
            &layer_norm_with(&x, &w, &b, 1e-6, false)?,
            &layer_norm_with(&x, &w, &b, 1e-6, true)?,
        );
        assert!(d < 1e-5, "layer_norm: {d}");

        // [B, L, heads, d] with per-position angles.
        let cos = randn(&[3, 8]).cos()?;
        let sin = randn(&[3, 8]).sin()?;
        let xt = randn(&[2, 3, 4, 16]);
        let d = max_diff(
            &rope_thd_with(&xt, &cos, &sin, false)?,
            &rope_thd_with(&xt, &cos, &sin, true)?,
        );
        assert!(d < 1e-6, "rope_thd: {d}");
        let xi = randn(&[2, 4, 3, 16]);
        let d = max_diff(
            &rope_i_with(&xi, &cos, &sin, false)?,
            &rope_i_with(&xi, &cos, &sin, true)?,
        );
        assert!(d < 1e-6, "rope_i: {d}");
        Ok(())
    }

    /// A `Var` input takes the differentiable path: every op passes a gradient back, and the softmax's equals
    /// the analytic `y ⊙ (g − Σ g ⊙ y)`.
    #[test]
    fn tracked_inputs_get_gradients() -> Result<()> {
        let x = Var::from_tensor(&randn(&[3, 7]))?;
        let g = randn(&[3, 7]);
        let y = softmax_last_dim(x.as_tensor())?;
        let grads = (&y * &g)?.sum_all()?.backward()?;
        let got = grads.get(x.as_tensor()).expect("softmax passes a gradient");
        let dot = (&g * &y)?.sum_keepdim(D::Minus1)?;
        let want = (&y * g.broadcast_sub(&dot)?)?;
        assert!(max_diff(got, &want) < 1e-6);

        let w = Var::from_tensor(&(randn(&[7]) + 1.0)?)?;
        let ln = LayerNorm::new(w.as_tensor().clone(), randn(&[7]), 1e-6);
        let cos = randn(&[3, 4]).cos()?;
        let sin = randn(&[3, 4]).sin()?;
        let x4 = Var::from_tensor(&randn(&[1, 3, 2, 8]))?;
        let outs = [
            rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)?,
            layer_norm(&ln, x.as_tensor())?,
        ];
        for (i, out) in outs.iter().enumerate() {
            let grads = out.sqr()?.sum_all()?.backward()?;
            assert!(
                grads.get(x.as_tensor()).is_some(),
                "norm {i}: no input grad"
            );
            assert!(
                grads.get(w.as_tensor()).is_some(),
                "norm {i}: no weight grad"
            );
        }
        for out in [
            rope_thd(x4.as_tensor(), &cos, &sin)?,
            rope_i(&x4.as_tensor().transpose(1, 2)?, &cos, &sin)?,
        ] {
            let grads = out.sqr()?.sum_all()?.backward()?;
            assert!(grads.get(x4.as_tensor()).is_some());
        }
        Ok(())
    }
}
