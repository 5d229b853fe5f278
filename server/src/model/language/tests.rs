//! The padded decode rows, and grouped-query attention against the reference formulation.

use super::attention::grouped_sdpa;
use super::*;
use crate::model::vision::sdpa;

/// A row of a padded decode matmul is bit for bit the same whatever rows it is batched with (the shapes of
/// the tiny checkpoints: hidden 24, qkv 72, MLP 128, vocabulary 32000). Unpadded, a lone row takes another
/// kernel; the test prints how many of its values then differ.
#[test]
fn padded_rows_do_not_depend_on_the_batch() -> Result<()> {
    let dev = Device::Cpu;
    for (n, k) in [(24, 24), (72, 24), (128, 24), (24, 64), (32000, 24)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let lin = candle_nn::Linear::new(w, None);
        let x = Tensor::randn(0f32, 1.0, (1, 8, k), &dev)?;
        let row = |rows: &Rows, i: usize| -> Result<Vec<f32>> {
            rows.forward(&lin, &x.narrow(1, i, 1)?)?
                .flatten_all()?
                .to_vec1()
        };
        let padded = Rows::new(24);
        let all = padded.forward(&lin, &x)?;
        let mut unpadded_diff = 0;
        for i in 0..8 {
            let in_batch = all.narrow(1, i, 1)?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(row(&padded, i)?, in_batch, "{n}×{k}, row {i}");
            let lone = row(&Rows { min: 1 }, i)?;
            unpadded_diff += lone.iter().zip(&in_batch).filter(|(a, b)| a != b).count();
        }
        println!(
            "{n}×{k}: unpadded, {unpadded_diff} of {} values differ",
            8 * n
        );
    }
    Ok(())
}

/// The single-kernel norm (what runs on CUDA, where candle's kernel computes bf16 in f32) and the widened one
/// (what runs on the CPU) agree to bf16 precision; in f32 they are the same call.
#[test]
fn rms_norm_paths_agree() -> Result<()> {
    let dev = Device::Cpu;
    let w = (Tensor::randn(0f32, 1.0, 96, &dev)? + 1.0)?;
    let x = (Tensor::randn(0f32, 1.0, (1, 7, 96), &dev)? * 3.0)?;
    let vb = VarBuilder::from_tensors([("n.weight".to_string(), w)].into(), DType::BF16, &dev);
    let direct = RmsNorm::with_upcast(96, 1e-5, vb.pp("n"), false)?;
    let widened = RmsNorm::with_upcast(96, 1e-5, vb.pp("n"), true)?;
    let xb = x.to_dtype(DType::BF16)?;
    let (a, b) = (direct.forward(&xb)?, widened.forward(&xb)?);
    assert_eq!((a.dtype(), b.dtype()), (DType::BF16, DType::BF16));
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let rel = ((&a - &b)?.sqr()?.sum_all()?.sqrt()? / b.sqr()?.sum_all()?.sqrt()?)?;
    let rel = rel.to_scalar::<f32>()?;
    assert!(rel < 1e-2, "direct vs widened bf16 norm: rel-L2 {rel}");
    // The CPU widens half precision and nothing else.
    assert!(RmsNorm::new(96, 1e-5, vb.pp("n"))?.upcast);
    let vb32 = VarBuilder::from_tensors(
        [("n.weight".to_string(), Tensor::ones(96, DType::F32, &dev)?)].into(),
        DType::F32,
        &dev,
    );
    assert!(!RmsNorm::new(96, 1e-5, vb32.pp("n"))?.upcast);
    Ok(())
}

/// CogVLM2's rule in bf16: positions are bf16 (257 rounds to 256, 259 to 260) and each angle is rounded
/// before its cos/sin; in f32, and for CogVLM, positions stay exact.
#[test]
fn rope_in_model_dtype_rounds_positions_and_angles() -> Result<()> {
    let inv_freq = Tensor::new(&[[1.0f32, 0.0078125]], &Device::Cpu)?;
    let cos = |p: u32, dtype, rule| -> Result<Vec<f32>> {
        let (c, _) = Rotary::compute(&inv_freq, &[p], dtype, rule)?;
        c.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    };
    assert_eq!(cos(257, DType::BF16, true)?, cos(256, DType::BF16, true)?);
    assert_eq!(cos(259, DType::BF16, true)?, cos(260, DType::BF16, true)?);
    assert_ne!(cos(257, DType::BF16, false)?, cos(256, DType::BF16, false)?);
    assert_eq!(cos(257, DType::F32, true)?, cos(257, DType::F32, false)?);
    // The angle itself is rounded: 3 · 1.0 is exact, cos(3) then rounds once.
    let want = Tensor::new(&[3f32.cos()], &Device::Cpu)?
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    assert_eq!(cos(3, DType::BF16, true)?[0], want[0]);
    Ok(())
}

/// Grouped-query attention equals plain attention over keys/values repeated per group (the reference's
/// `repeat_interleave`), with and without a causal mask.
#[test]
fn grouped_attention_equals_repeated_kv() -> Result<()> {
    let dev = Device::Cpu;
    let (heads, kv, l, t, d) = (6, 2, 3, 5, 4);
    let q = Tensor::randn(0f32, 1.0, (1, heads, l, d), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, kv, t, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (1, kv, t, d), &dev)?;
    let repeat = |x: &Tensor| -> Result<Tensor> {
        let g = heads / kv;
        x.unsqueeze(2)?
            .expand((1, kv, g, t, d))?
            .reshape((1, heads, t, d))
    };
    let mask = causal_mask(l, t - l, &dev)?;
    let stacked = grouped_mask(mask.clone(), heads / kv)?;
    for (m, g) in [(None, None), (Some(&mask), Some(&stacked))] {
        let grouped = grouped_sdpa(&q, &k, &v, 0.5, g)?;
        let plain = sdpa(&q, &repeat(&k)?, &repeat(&v)?, 0.5, m)?;
        let diff = (grouped - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "grouped vs repeated: {diff}");
    }
    Ok(())
}
