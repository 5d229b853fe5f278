//! AdamW with its state in f32 (decoupled weight decay, bias-corrected moments, as `torch.optim.AdamW`), the
//! learning-rate schedules, gradient accumulation and global-norm clipping.
//!
//! candle_nn's `AdamW` keeps its moments private, so they could not be saved for `--resume`; this one holds
//! them as named tensors and writes them to a safetensors file.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

/// The learning-rate schedule after a linear warm-up from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Half a cosine from the peak down to 0 (THUDM's SAT demo).
    Cosine,
    /// A straight line down to 0 (the HF Trainer's default, the PEFT demo).
    Linear,
}

impl std::str::FromStr for Schedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            _ => anyhow::bail!("unknown schedule {s:?} (expected cosine or linear)"),
        }
    }
}

impl Schedule {
    /// The rate for step `step` (0-based) of `total`, `warmup` of them warming up.
    pub fn lr(self, peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let p = ((step - warmup) as f64 / span).min(1.0);
        match self {
            Self::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            Self::Linear => peak * (1.0 - p),
        }
    }
}

pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// β = (0.9, 0.999), ε = 1e-8 (PyTorch's defaults).
    pub fn new(params: Vec<(String, Var)>, weight_decay: f64) -> anyhow::Result<Self> {
        let zeros = |v: &Var| Tensor::zeros(v.shape(), DType::F32, v.device());
        let m = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        for (name, p) in &params {
            ensure!(
                p.dtype() == DType::F32,
                "{name} is {:?}; trained tensors are f32",
                p.dtype()
            );
        }
        Ok(Self {
            params,
            m,
            v,
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Adds each parameter's gradient in `g` to `acc` (same order as the parameters).
    pub fn accumulate(&self, g: &GradStore, acc: &mut [Option<Tensor>]) -> anyhow::Result<()> {
        for ((_, p), slot) in self.params.iter().zip(acc.iter_mut()) {
            if let Some(grad) = g.get(p.as_tensor()) {
                let grad = grad.to_dtype(DType::F32)?;
                *slot = Some(match slot.take() {
                    Some(a) => (a + grad)?,
                    None => grad,
                });
            }
        }
        Ok(())
    }

    /// Scales the gradients so their global L2 norm is at most `max_norm` (≤ 0: no clipping); returns the
    /// norm before clipping.
    pub fn clip(&self, grads: &mut [Option<Tensor>], max_norm: f64) -> anyhow::Result<f64> {
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        ensure!(norm.is_finite(), "the gradient norm is not finite ({norm})");
        if max_norm > 0.0 && norm > max_norm {
            let s = max_norm / (norm + 1e-6);
            for g in grads.iter_mut().flatten() {
                *g = (&*g * s)?;
            }
        }
        Ok(norm)
    }

    /// One update with learning rate `lr`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> anyhow::Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let (_, p) = &self.params[i];
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.eps)?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * self.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?.detach())?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// Writes the moments (`m.<name>`, `v.<name>`) and the step count.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut map = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            map.insert(format!("m.{name}"), self.m[i].to_device(&Device::Cpu)?);
            map.insert(format!("v.{name}"), self.v[i].to_device(&Device::Cpu)?);
        }
        map.insert(
            "t".to_string(),
            Tensor::new(&[self.t as i64], &Device::Cpu)?,
        );
        crate::model::weights::save_pt(&map, path)
    }

    /// Reads what [`Self::save`] wrote for the same parameters.
    pub fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut map = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (key, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let t = map
                    .remove(&format!("{key}.{name}"))
                    .with_context(|| format!("{}: no {key}.{name}", path.display()))?;
                ensure!(
                    t.dims() == p.dims(),
                    "{}: {key}.{name} is {:?}, the parameter {:?}",
                    path.display(),
                    t.dims(),
                    p.dims()
                );
                *slot = t.to_dtype(DType::F32)?.to_device(p.device())?;
            }
        }
        let t = map
            .get("t")
            .with_context(|| format!("{}: no step count t", path.display()))?;
        self.t = t.to_vec1::<i64>()?.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay_to_zero() {
        let c = Schedule::Cosine;
        assert!((c.lr(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((c.lr(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(c.lr(1.0, 99, 10, 100) < 1e-3);
        assert!((Schedule::Linear.lr(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
    }

    /// One AdamW step matches the closed form: the first bias-corrected update is `lr · sign(g)` (up to ε),
    /// after the decay `θ (1 − lr λ)`.
    #[test]
    fn first_step_is_signed_lr() -> anyhow::Result<()> {
        let p = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu)?)?;
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], 0.1)?;
        let g = Tensor::new(&[0.5f32, -4.0, 0.0], &Device::Cpu)?;
        opt.step(&[Some(g)], 0.01)?;
        let got = p.as_tensor().to_vec1::<f32>()?;
        let want = [1.0 * 0.999 - 0.01, -2.0 * 0.999 + 0.01, 3.0 * 0.999];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn clipping_bounds_the_global_norm() -> anyhow::Result<()> {
        let p = Var::from_tensor(&Tensor::zeros(2, DType::F32, &Device::Cpu)?)?;
        let opt = AdamW::new(vec![("p".into(), p)], 0.0)?;
        let mut g = vec![Some(Tensor::new(&[3f32, 4.0], &Device::Cpu)?)];
        let n = opt.clip(&mut g, 1.0)?;
        assert!((n - 5.0).abs() < 1e-6);
        let v = g[0].as_ref().unwrap().to_vec1::<f32>()?;
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
        Ok(())
    }
}
