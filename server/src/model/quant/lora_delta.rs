//! LoRA's low-rank path beside a quantized layer.

use super::*;

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
    pub(super) fn stacked(
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

    pub(super) fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = super::super::precision::like(&self.a, x)?;
        let b = super::super::precision::like(&self.b, x)?;
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
