//! Sizes, formats and quantized layers on small shapes.

use super::*;
use candle_core::{Device, D};

fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    (num.to_scalar::<f32>().unwrap() / den.to_scalar::<f32>().unwrap()).sqrt()
}

/// A 256 × 512 weight (fits every block size): the quantized matmul is close to the float one, in f32 and
/// bf16 activations, and Q4 is worse than Q8 (measured rel-L2: Q8_0 7.7e-3, Q4K 7.4e-2).
#[test]
fn quantized_matmul_is_close_to_float() -> Result<()> {
    let dev = Device::Cpu;
    let w = (Tensor::randn(0f32, 1.0, (256, 512), &dev)? / 512f64.sqrt())?;
    let x = Tensor::randn(0f32, 1.0, (1, 7, 512), &dev)?;
    let reference = x.broadcast_matmul(&w.t()?)?;
    let mut errs = Vec::new();
    for (mode, bound) in [(Quant::Q8, 2e-2), (Quant::Q4, 1.5e-1)] {
        let vb = VarBuilder::from_tensors(
            [("p.weight".to_string(), w.clone())].into(),
            DType::F32,
            &dev,
        );
        let q = Quantizer::new(mode);
        let lin = q.linear(512, 256, Role::Layer, vb.pp("p"))?;
        assert!(matches!(lin, QLinear::Quant(..)));
        let report = q.into_report();
        assert_eq!(report.kept_float, Vec::<String>::new());
        assert!(report.quantized_bytes * 3 < report.replaced_float_bytes);
        let err = rel_l2(&lin.forward(&x)?, &reference);
        println!("{mode} ({:?}): rel-L2 {err:.2e}", report.quantized[0].1);
        assert!(err <= bound, "{mode}: rel-L2 {err} > {bound}");
        let bf = lin.forward(&x.to_dtype(DType::BF16)?)?;
        assert_eq!(bf.dtype(), DType::BF16);
        assert!(rel_l2(&bf.to_dtype(DType::F32)?, &reference) <= bound + 1e-2);
        errs.push(err);
    }
    assert!(errs[0] < errs[1], "Q8 {} vs Q4 {}", errs[0], errs[1]);
    Ok(())
}

/// Gate and up projections stacked into one matrix answer what the two separate layers answer, side by side,
/// float and quantized (blocks run along the rows' inner dim, so stacking rows changes no block), and each
/// part is reported under its own name.
#[test]
fn stacked_linear_equals_its_parts() -> Result<()> {
    let dev = Device::Cpu;
    let gate = (Tensor::randn(0f32, 1.0, (64, 256), &dev)? / 16.0)?;
    let up = (Tensor::randn(0f32, 1.0, (64, 256), &dev)? / 16.0)?;
    let vb = VarBuilder::from_tensors(
        [
            ("m.gate_proj.weight".to_string(), gate),
            ("m.up_proj.weight".to_string(), up),
        ]
        .into(),
        DType::F32,
        &dev,
    );
    let x = Tensor::randn(0f32, 1.0, (1, 5, 256), &dev)?;
    for mode in [Quant::Float, Quant::Q8, Quant::Q4] {
        let q = Quantizer::new(mode);
        let parts = [(64, vb.pp("m.gate_proj")), (64, vb.pp("m.up_proj"))];
        let both = q.stacked_linear(256, &parts, Role::Layer)?.forward(&x)?;
        let apart = Tensor::cat(
            &[
                q.linear(256, 64, Role::Layer, vb.pp("m.gate_proj"))?
                    .forward(&x)?,
                q.linear(256, 64, Role::Layer, vb.pp("m.up_proj"))?
                    .forward(&x)?,
            ],
            D::Minus1,
        )?;
        assert_eq!(both.dims(), &[1, 5, 128]);
        let diff = (&both - &apart)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{mode}: stacked differs from parts by {diff}");
        let report = q.into_report();
        if mode != Quant::Float {
            let names: Vec<&str> = report.quantized.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(&names[..2], ["m.gate_proj.weight", "m.up_proj.weight"]);
            assert_eq!(report.quantized.len(), 4);
        }
    }
    Ok(())
}

/// The benchmark's random-weight quantizer: two matrices of one shape share quantized blocks (so they give
/// the same output) but not storage, and both are reported as quantized.
#[test]
fn random_weights_share_blocks_per_shape() -> Result<()> {
    let dev = Device::Cpu;
    let vb = VarBuilder::from_backend(
        Box::new(crate::model::weights::RandomBackend),
        DType::F32,
        dev.clone(),
    );
    let q = Quantizer::for_random_weights(Quant::Q4);
    let a = q.linear(512, 256, Role::Layer, vb.pp("a"))?;
    let b = q.linear(512, 256, Role::Layer, vb.pp("b"))?;
    let c = q.linear(256, 512, Role::Layer, vb.pp("c"))?;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 512), &dev)?;
    let (ya, yb) = (a.forward(&x)?, b.forward(&x)?);
    assert_eq!(rel_l2(&ya, &yb), 0.0);
    assert_eq!(c.forward(&ya)?.dims(), &[1, 3, 512]);
    let report = q.into_report();
    assert_eq!(report.quantized.len(), 3);
    Ok(())
}
