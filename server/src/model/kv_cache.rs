//! Self-attention keys and values of one layer, in a buffer allocated once per conversation.
//!
//! Unlike `candle_nn::kv_cache::KvCache` it can be cut back to a prefix, which is what lets a follow-up
//! question reuse the image and the earlier turns: the new prompt's tokens after the common prefix overwrite the
//! old answer in place. Appends write into the buffer (`slice_set`), and the returned keys/values are narrow views
//! of it, which the matmuls read with strides instead of copying the whole cache every step.

use candle_core::{Result, Tensor};

/// Sequence axis of `[B, heads, L, head_dim]`.
const SEQ: usize = 2;

pub struct KvBuffer {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Positions to allocate on first use.
    reserve: usize,
}

impl KvBuffer {
    pub fn new(reserve: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            reserve: reserve.max(1),
        }
    }

    /// A buffer that keeps nothing: its one append hands the keys and values back as given. A training forward
    /// runs the whole sequence at once, and writing into a buffer (`slice_set`) would cut its gradient graph.
    pub fn pass_through() -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            reserve: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated positions.
    pub fn capacity(&self) -> usize {
        self.k
            .as_ref()
            .and_then(|k| k.dim(SEQ).ok())
            .unwrap_or(self.reserve)
    }

    /// Forgets everything after the first `len` positions (their storage is reused by later appends).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `[B, H, l, D]` keys and values; returns views of all `len + l` positions.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let l = k.dim(SEQ)?;
        let need = self.len + l;
        if self.reserve == 0 {
            if self.len > 0 {
                candle_core::bail!("a pass-through kv buffer cannot continue a sequence");
            }
            self.len = need;
            return Ok((k.clone(), v.clone()));
        }
        if self.k.is_none() || need > self.capacity() {
            // First use: the reservation; a longer conversation: half again, keeping what is cached.
            let cap = match self.k {
                None => need.max(self.reserve),
                Some(_) => need.max(self.capacity() * 3 / 2),
            };
            self.k = Some(Self::grown(self.k.as_ref(), k, cap, self.len)?);
            self.v = Some(Self::grown(self.v.as_ref(), v, cap, self.len)?);
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => candle_core::bail!("kv buffer not allocated"),
        };
        kb.slice_set(k, SEQ, self.len)?;
        vb.slice_set(v, SEQ, self.len)?;
        self.len = need;
        Ok((kb.narrow(SEQ, 0, need)?, vb.narrow(SEQ, 0, need)?))
    }

    fn grown(old: Option<&Tensor>, like: &Tensor, cap: usize, keep: usize) -> Result<Tensor> {
        let mut shape = like.dims().to_vec();
        shape[SEQ] = cap;
        let buf = Tensor::zeros(shape, like.dtype(), like.device())?;
        if let Some(old) = old.filter(|_| keep > 0) {
            buf.slice_set(&old.narrow(SEQ, 0, keep)?.contiguous()?, SEQ, 0)?;
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    fn chunk(start: f32, l: usize) -> Tensor {
        Tensor::arange(start, start + (2 * l * 3) as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, l, 3))
            .unwrap()
    }

    #[test]
    fn appends_truncates_and_grows() -> Result<()> {
        let mut kv = KvBuffer::new(4);
        let a = chunk(0.0, 3);
        let (k, _) = kv.append(&a, &a)?;
        assert_eq!(k.dims(), &[1, 2, 3, 3]);
        assert_eq!(kv.capacity(), 4);
        // Cut back to 2 and overwrite position 2 onwards, growing past the first allocation.
        kv.truncate(2);
        let b = chunk(100.0, 4);
        let (k, v) = kv.append(&b, &b)?;
        assert_eq!(kv.len(), 6);
        assert!(kv.capacity() >= 6);
        let want = Tensor::cat(&[&a.narrow(2, 0, 2)?, &b], 2)?;
        assert_eq!(
            k.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(
            v.i((0, 1, 5))?.to_vec1::<f32>()?,
            b.i((0, 1, 3))?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
