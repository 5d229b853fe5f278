//! What the fine-tuning suites share: the fixture checkpoints, scratch folders and generated data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cogvlm::model::config::Config;
use cogvlm::train::make_data::{Kind, MakeDataArgs};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn model_dir(model: &str) -> PathBuf {
    fixtures().join("models").join(model)
}

pub fn config(model: &str) -> Config {
    Config::from_file(&model_dir(model).join("config.json")).unwrap()
}

pub fn tokenizer() -> PathBuf {
    fixtures().join("tokenizer").join("tokenizer.json")
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cogvlm-finetune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn targets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn make_data(dir: &Path, kinds: Vec<Kind>, count: usize, seed: u64) {
    cogvlm::train::make_data::run(&MakeDataArgs {
        out: dir.to_path_buf(),
        seed,
        count,
        size: 224,
        kinds,
        style: Default::default(),
    })
    .unwrap();
}
