//! A wrong model folder gives one clear error that names the problem, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cogvlm::generate::{LoadOptions, Pipeline};

fn fixture_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/cogvlm_tiny_224")
}

fn tokenizer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/tokenizer.json")
}

/// A scratch copy of the tiny model under `<tmp>/<name>/models/m`.
fn scratch(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("cogvlm-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("models").join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture_model().join("config.json"), dir.join("config.json")).unwrap();
    dir
}

fn load_err(dir: &Path, tokenizer: Option<PathBuf>) -> String {
    let opts = LoadOptions {
        dtype: None,
        tokenizer,
        ..Default::default()
    };
    match Pipeline::load(dir, &opts, &mut |_, _| {}) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn weights() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_model().join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn missing_shard_is_named() {
    let dir = scratch("shard");
    let index = r#"{"metadata":{},"weight_map":{"lm_head.weight":"model-00001-of-00002.safetensors","model.norm.weight":"model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    let err = load_err(&dir, Some(tokenizer()));
    assert!(
        err.contains("missing shard") && err.contains("model-00001-of-00002.safetensors"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn sharded_checkpoint_loads_through_the_index() {
    let dir = scratch("sharded");
    let w = weights();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let shard: HashMap<String, Tensor> =
            part.iter().map(|n| ((*n).clone(), w[*n].clone())).collect();
        candle_core::safetensors::save(&shard, dir.join(&file)).unwrap();
        for n in part {
            map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let opts = LoadOptions {
        dtype: Some(candle_core::DType::BF16),
        tokenizer: Some(tokenizer()),
        ..Default::default()
    };
    let mut seen = Vec::new();
    Pipeline::load(&dir, &opts, &mut |d, t| seen.push((d, t))).expect("sharded load");
    let (done, total) = *seen.last().expect("progress reported");
    assert_eq!(done, total);
    assert!(total > 1_000_000);
}

#[test]
fn wrong_shape_and_missing_tensor_are_named() {
    let dir = scratch("shape");
    let mut w = weights();
    w.insert(
        "model.norm.weight".into(),
        Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    w.remove("lm_head.weight");
    w.insert(
        "model.bogus.weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir, Some(tokenizer()));
    assert!(
        err.contains("model.norm.weight is [7], expected [24]"),
        "{err}"
    );
    assert!(err.contains("missing tensor(s): lm_head.weight"), "{err}");
    assert!(
        err.contains("unexpected tensor(s): model.bogus.weight"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn no_tokenizer_is_explained() {
    let dir = scratch("tok");
    std::fs::copy(
        fixture_model().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let err = load_err(&dir, None);
    assert!(err.contains("no tokenizer.json"), "{err}");
}

#[test]
fn no_weights_and_no_config_are_explained() {
    let dir = scratch("empty");
    assert!(load_err(&dir, Some(tokenizer())).contains("no model.safetensors"));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load_err(&dir, Some(tokenizer())).contains("config.json"));
}

#[test]
fn cogagent_without_image_is_a_clear_error() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/cogagent_tiny");
    let opts = LoadOptions {
        dtype: None,
        tokenizer: None,
        ..Default::default()
    };
    let mut p = Pipeline::load(&dir, &opts, &mut |_, _| {}).expect("bundled cogagent loads");
    let req = cogvlm::generate::ChatRequest {
        image: None,
        history: vec![],
        query: "hi".into(),
        version: None,
        sampling: Default::default(),
    };
    let err = p.generate(&req, &mut |_| true).unwrap_err().to_string();
    assert!(err.contains("CogAgent needs an image"), "{err}");
}
