//! Which ggml block format a quantized matrix takes on which device, and what candle keeps beside it there.
//!
//! candle 0.11's x86 CPU kernels repack some formats at a matrix's first matmul into tiles they keep beside the
//! original blocks for the process's life (`quantized/repack_x86.rs`): Q4K always (tiles of 6 bits per weight
//! next to its 4.5), Q8_0 when the CPU has VNNI (as large again), Q6K for prefills. Q4_0 is never repacked there.
//! So on such a CPU `--quant 4` takes Q4_0, whose blocks are the only copy and which is the same 4.5 bits per
//! weight; CUDA (no repacking) keeps Q4K, the more accurate of the two.

use candle_core::quantized::GgmlDType;
use candle_core::Device;

use super::{Quant, Role};

/// How a device's quantized matmuls treat the block formats, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// candle's repacking x86 CPU kernels; `vnni`: Q8_0 is repacked too.
    X86Repack { vnni: bool },
    /// CUDA, Metal, and CPUs without AVX2: the blocks are the only copy (aarch64 CPUs repack every 4-bit format,
    /// so no choice of ours saves memory there; not counted).
    Blocks,
}

impl Kernels {
    /// The kernels candle uses for `device`, detected as candle detects them.
    pub fn of(device: &Device) -> Self {
        if !device.is_cpu() {
            return Self::Blocks;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let f512 =
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
            let avx2 = is_x86_feature_detected!("avx2");
            if f512 || (avx2 && is_x86_feature_detected!("avxvnni")) {
                return Self::X86Repack { vnni: true };
            }
            if avx2 && is_x86_feature_detected!("fma") {
                return Self::X86Repack { vnni: false };
            }
        }
        Self::Blocks
    }

    /// Bytes of the tiles candle keeps beside an `n × k` matrix in `format` once it has run (0 when none).
    pub fn repacked_bytes(self, format: GgmlDType, n: usize, k: usize) -> u64 {
        let Self::X86Repack { vnni } = self else {
            return 0;
        };
        // candle's condition for its tiled kernels: rows in tiles of 16, k in whole 256-value superblocks.
        if !n.is_multiple_of(16) || !k.is_multiple_of(256) {
            return 0;
        }
        let bytes = match format {
            // Per 16 rows × 256 values: 8 × 16 f32 scales and mins, 2048 bytes of nibbles.
            GgmlDType::Q4K => n * k / (16 * 256) * 3072,
            // Per 16 rows × 32 values: 16 f16 scales, 512 bytes.
            GgmlDType::Q8_0 if vnni => n * k / (16 * 32) * 544,
            _ => 0,
        };
        bytes as u64
    }
}

impl Quant {
    /// The block format for a matrix with inner dim `k` on `kernels`, or `None` when it stays float.
    pub fn format(self, role: Role, k: usize, kernels: Kernels) -> Option<GgmlDType> {
        let fits = |d: GgmlDType| k.is_multiple_of(d.block_size()).then_some(d);
        match (self, role) {
            (Self::Float, _) => None,
            (Self::Q8, _) | (Self::Q4, Role::LmHead) => fits(GgmlDType::Q8_0),
            (Self::Q4, Role::Layer | Role::Vision) => match kernels {
                Kernels::X86Repack { .. } => fits(GgmlDType::Q4_0),
                Kernels::Blocks => fits(GgmlDType::Q4K).or_else(|| fits(GgmlDType::Q4_0)),
            },
        }
    }
}

/// `--int4-format`: the 4-bit format forced instead of the device's choice (to compare them).
pub fn parse_int4_format(s: &str) -> Result<GgmlDType, String> {
    match s.to_ascii_lowercase().as_str() {
        "q4k" | "q4_k" => Ok(GgmlDType::Q4K),
        "q4_0" => Ok(GgmlDType::Q4_0),
        "q4_1" => Ok(GgmlDType::Q4_1),
        o => Err(format!(
            "unknown 4-bit format {o:?} (expected q4k, q4_0 or q4_1)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlDType::*;

    const X86: Kernels = Kernels::X86Repack { vnni: true };

    #[test]
    fn formats_follow_the_device_and_the_block_sizes() {
        for k in [X86, Kernels::X86Repack { vnni: false }, Kernels::Blocks] {
            assert_eq!(Quant::Q8.format(Role::Layer, 4096, k), Some(Q8_0));
            assert_eq!(Quant::Q8.format(Role::Layer, 48, k), None);
            assert_eq!(Quant::Q4.format(Role::LmHead, 4096, k), Some(Q8_0));
            assert_eq!(Quant::Q4.format(Role::Layer, 128, k), Some(Q4_0));
            assert_eq!(Quant::Q4.format(Role::Layer, 48, k), None);
            assert_eq!(Quant::Float.format(Role::Layer, 4096, k), None);
        }
        // The real models' inner dims (4096, 11008 = 43 × 256, 1792, 1024): Q4K where the blocks are the only
        // copy, Q4_0 where candle would repack Q4K.
        for d in [4096, 11008, 1792, 1024] {
            assert_eq!(Quant::Q4.format(Role::Layer, d, Kernels::Blocks), Some(Q4K));
            assert_eq!(Quant::Q4.format(Role::Layer, d, X86), Some(Q4_0));
            assert_eq!(Quant::Q4.format(Role::Vision, d, X86), Some(Q4_0));
        }
        assert_eq!(Kernels::of(&Device::Cpu) == Kernels::Blocks, {
            #[cfg(target_arch = "x86_64")]
            let plain = !is_x86_feature_detected!("avx2");
            #[cfg(not(target_arch = "x86_64"))]
            let plain = true;
            plain
        });
        assert_eq!(parse_int4_format("Q4K"), Ok(Q4K));
        assert!(parse_int4_format("q5k").is_err());
    }

    /// The tiles' sizes from candle's layouts: a 4096 × 11008 Q4K matrix (25.4 MB of blocks) keeps 33.8 MB of
    /// tiles; a 32000 × 4096 Q8_0 lm_head as much again as its blocks with VNNI, nothing without; Q4_0 nothing.
    #[test]
    fn repacked_bytes_follow_candles_tiles() {
        let blocks = |d: GgmlDType, n: usize, k: usize| n * k / d.block_size() * d.type_size();
        assert_eq!(X86.repacked_bytes(Q4K, 4096, 11008), 33_816_576);
        assert_eq!(blocks(Q4K, 4096, 11008), 25_362_432);
        assert_eq!(
            X86.repacked_bytes(Q8_0, 32000, 4096) as usize,
            blocks(Q8_0, 32000, 4096)
        );
        assert_eq!(
            Kernels::X86Repack { vnni: false }.repacked_bytes(Q8_0, 32000, 4096),
            0
        );
        assert_eq!(X86.repacked_bytes(Q4_0, 4096, 11008), 0);
        assert_eq!(Kernels::Blocks.repacked_bytes(Q4K, 4096, 11008), 0);
        // Not in whole tiles: candle runs these on the blocks.
        assert_eq!(X86.repacked_bytes(Q4K, 4100, 4096), 0);
        assert_eq!(X86.repacked_bytes(Q4K, 4096, 4128), 0);
    }

    /// The quantizer takes this CPU's format for a 4-bit layer and reports the tiles candle will keep for it:
    /// none for the format chosen here; 0.75 byte per weight for Q4K forced on a repacking CPU.
    #[test]
    fn the_quantizer_takes_the_devices_format_and_counts_its_tiles() -> candle_core::Result<()> {
        use crate::model::quant::Quantizer;
        use candle_core::{DType, Tensor};
        use candle_nn::VarBuilder;
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (256, 512), &dev)?;
        let vb = VarBuilder::from_tensors([("p.weight".to_string(), w)].into(), DType::F32, &dev);
        let kernels = Kernels::of(&dev);
        let q = Quantizer::new(Quant::Q4);
        q.linear(512, 256, Role::Layer, vb.pp("p"))?;
        let r = q.into_report();
        assert_eq!(
            r.quantized[0].1,
            Quant::Q4.format(Role::Layer, 512, kernels).unwrap()
        );
        assert_eq!(r.repacked_bytes, 0);
        let q = Quantizer::new(Quant::Q4).with_int4_format(Some(Q4K));
        q.linear(512, 256, Role::Layer, vb.pp("p"))?;
        let r = q.into_report();
        assert_eq!(r.quantized[0].1, Q4K);
        let tiles = match kernels {
            Kernels::X86Repack { .. } => 256 * 512 * 3 / 4,
            Kernels::Blocks => 0,
        };
        assert_eq!(r.repacked_bytes, tiles);
        Ok(())
    }

    /// A prefill's rows on the CPU run Q4_0 dequantized (candle's float matmul), a decode's run candle's Q4_0
    /// kernel: both answer the float product within Q4_0's error, and within 2e-2 of each other (the kernel
    /// also rounds the activations to 8 bits).
    #[test]
    fn a_prefill_on_q4_0_matches_the_quantized_kernel() -> candle_core::Result<()> {
        use crate::model::quant::Quantizer;
        use candle_core::quantized::QMatMul;
        use candle_core::{DType, Module, Tensor};
        use candle_nn::VarBuilder;
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 1.0, (256, 512), &dev)? / 512f64.sqrt())?;
        let x = Tensor::randn(0f32, 1.0, (1, 100, 512), &dev)?;
        let reference = x.broadcast_matmul(&w.t()?)?;
        let vb = VarBuilder::from_tensors(
            [("p.weight".to_string(), w.clone())].into(),
            DType::F32,
            &dev,
        );
        let q = Quantizer::new(Quant::Q4).with_int4_format(Some(Q4_0));
        let prefill = q.linear(512, 256, Role::Layer, vb.pp("p"))?.forward(&x)?;
        let kernel = QMatMul::from_qtensor(candle_core::quantized::QTensor::quantize(&w, Q4_0)?)?
            .forward(&x)?;
        let rel = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
            let num = (a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
            Ok((num / b.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt())
        };
        let (to_kernel, to_float) = (rel(&prefill, &kernel)?, rel(&prefill, &reference)?);
        println!("Q4_0 prefill: rel-L2 {to_kernel:.2e} to the kernel, {to_float:.2e} to float");
        assert!(to_kernel < 2e-2 && to_kernel > 0.0, "{to_kernel}");
        assert!(to_float < 1.5e-1, "{to_float}");
        Ok(())
    }
}
