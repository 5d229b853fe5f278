//! The position probe (`cogvlm position-probe`) measures position: on the bundled demo, whose random
//! initialisation drowned the position embedding in the patch embedding, the same square in two cells gives
//! nearly the same ViT vector; with that embedding made 50 times larger the vectors part.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use cogvlm::model::config::Config;
use cogvlm::model::CogVlm;
use cogvlm::train::position_probe::probe;
use std::path::PathBuf;

#[test]
fn the_probe_sees_position_and_the_demo_has_almost_none() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cogvlm-demo");
    let cfg = Config::from_file(&dir.join("config.json")).unwrap();
    let build = |pos_scale: f64| {
        let mut w =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let name = "model.vision.patch_embedding.position_embedding.weight";
        let pos = w[name].to_dtype(DType::F32).unwrap();
        w.insert(name.to_string(), (pos * pos_scale).unwrap());
        let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
        CogVlm::new(&cfg, vb).unwrap()
    };
    let demo = probe(&build(1.0), &Device::Cpu).unwrap();
    let loud = probe(&build(50.0), &Device::Cpu).unwrap();
    println!("demo {demo:?}\nposition x50 {loud:?}");
    // Content moves the vector (another colour), position hardly (another cell).
    assert!(demo.vit_cos_other_cell > 0.999, "{demo:?}");
    assert!(demo.vit_cos_other_colour < 0.9, "{demo:?}");
    // Centred, so that a shared offset cannot explain it: the decoder receives the same vector in every cell.
    assert!(demo.adapter_centred_other_cell > 0.999, "{demo:?}");
    assert!(demo.adapter_centred_other_colour < -0.99, "{demo:?}");
    assert!(
        loud.vit_cos_other_cell < demo.vit_cos_other_cell - 0.1,
        "{loud:?}"
    );
}
