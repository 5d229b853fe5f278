//! The image encoders' precision (`model::precision`): f16 towers under a bf16 model, and the rerun in bf16
//! when f16 overflows. The bf16 parity cases that check the towers' output against the reference are in
//! `parity.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use cogvlm::model::config::Config;
use cogvlm::model::preprocess::pixel_values;
use cogvlm::model::quant::{Quant, Quantizer};
use cogvlm::model::CogVlm;
use cogvlm::tools::parity::rel_l2;

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("models")
        .join(name)
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).expect("weights")
}

fn build(dir: &Path, w: HashMap<String, Tensor>, dtype: DType, q: Quantizer) -> CogVlm {
    let cfg = Config::from_file(&dir.join("config.json")).expect("config");
    let vb = VarBuilder::from_tensors(w, dtype, &Device::Cpu);
    CogVlm::with_quantizer(&cfg, vb, q).expect("model")
}

fn pixels(size: usize) -> Tensor {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/images/coffee.png");
    let img = image::open(path).expect("image");
    pixel_values(&img, size, &Device::Cpu).expect("pixels")
}

#[test]
fn towers_run_in_f16_under_bf16_and_in_the_model_dtype_otherwise() {
    let dir = model_dir("cogagent_tiny");
    let dtypes = |dtype, q| build(&dir, weights(&dir), dtype, q).encoder_dtypes();
    let float = || Quantizer::new(Quant::Float);
    assert_eq!(dtypes(DType::BF16, float()), (DType::F16, Some(DType::F16)));
    assert_eq!(dtypes(DType::F32, float()), (DType::F32, Some(DType::F32)));
    // A quantized tower's matmuls take f32 or bf16 only: it stays in the model dtype, the cross encoder not.
    let q8_vision = Quantizer::new(Quant::Q8).with_vision(true);
    assert_eq!(
        dtypes(DType::BF16, q8_vision),
        (DType::BF16, Some(DType::F16))
    );
    let q8 = Quantizer::new(Quant::Q8);
    assert_eq!(dtypes(DType::BF16, q8), (DType::F16, Some(DType::F16)));
}

#[test]
fn an_image_that_overflows_f16_is_encoded_again_in_bf16() {
    let dir = model_dir("cogvlm_tiny_224");
    let px = pixels(224);

    // An ordinary image: one f16 pass, output in the model dtype.
    let model = build(
        &dir,
        weights(&dir),
        DType::BF16,
        Quantizer::new(Quant::Float),
    );
    let out = model.encode_image(&px).expect("encode");
    assert_eq!(out.dtype(), DType::BF16);
    assert_eq!(model.encoder_reruns(), 0);

    // Patch embeddings ×1e5: every weight still fits f16 (|w| ≤ 65504), the activations do not.
    let mut w = weights(&dir);
    let key = "model.vision.patch_embedding.proj.weight";
    let scaled = (&w[key] * 1e5).expect("scale");
    let max = scaled.abs().unwrap().max_all().unwrap();
    assert!(max.to_scalar::<f32>().unwrap() < 65504.0);
    w.insert(key.to_string(), scaled);
    let reference = build(&dir, w.clone(), DType::F32, Quantizer::new(Quant::Float))
        .encode_image(&px)
        .expect("f32 encode");
    let model = build(&dir, w, DType::BF16, Quantizer::new(Quant::Float));
    let out = model.encode_image(&px).expect("encode after overflow");
    assert_eq!(model.encoder_reruns(), 1);
    assert_eq!(out.dtype(), DType::BF16);
    let sum = out.to_dtype(DType::F32).unwrap().sum_all().unwrap();
    assert!(sum.to_scalar::<f32>().unwrap().is_finite());
    let d = rel_l2(&out, &reference).unwrap();
    assert!(d <= 2e-2, "the bf16 rerun is {d:.2e} from f32");
}
