//! The image encoders' precision. When the model runs in bf16 the two vision towers hold their weights and run
//! in f16 instead: the same size and tensor-core speed, with 3 more mantissa bits. On the fixtures this puts
//! the bf16 model's EVA2-CLIP-E output 2.3–3.3e-3 from f32 instead of 1.4–2.2e-2, and CogAgent's cross encoder
//! 1.9e-3 instead of 8.2e-3. A bf16 checkpoint's weights widen exactly, and THUDM's own demo runs the whole model
//! in f16 on pre-Ampere GPUs.
//!
//! f16 tops out at 65504. If an image ever drives a tower past that, its output is not finite, and the image
//! is encoded again on activations of the model's dtype. The weights stay f16 and are cast per use by the
//! helpers below, so the second pass costs time, not memory.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear};

/// The dtype the image encoders are built in for a model in `model` dtype: f16 for bf16, else the same.
pub fn encoder_dtype(model: DType) -> DType {
    match model {
        DType::BF16 => DType::F16,
        other => other,
    }
}

/// `t` in `x`'s dtype (a cheap clone when it already is).
pub(crate) fn like(t: &Tensor, x: &Tensor) -> Result<Tensor> {
    t.to_dtype(x.dtype())
}

/// `l(x)` with the weights cast to `x`'s dtype when they differ.
pub(crate) fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    if l.weight().dtype() == x.dtype() {
        return l.forward(x);
    }
    let bias = l.bias().map(|b| like(b, x)).transpose()?;
    Linear::new(like(l.weight(), x)?, bias).forward(x)
}

/// `ln(x)` with the weights cast to `x`'s dtype when they differ ([`super::ops::layer_norm`]).
pub(crate) fn layer_norm(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    super::ops::layer_norm(ln, x)
}

/// Whether every value of `t` is finite: one sum, which any inf or NaN turns non-finite (in f32, where the sum
/// of f16-range values cannot overflow).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(sum.is_finite())
}
