//! `cogvlm merge`: a checkpoint with a LoRA adapter folded in (`W + scaling · B A`, computed in f32 and
//! rounded once to the tensor's own dtype), written as a normal sharded Hugging Face checkpoint: `config.json`,
//! `model-0000N-of-0000M.safetensors`, `model.safetensors.index.json` (and the tokenizer when there is one).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};

use crate::model::config::Config;
use crate::model::lora::{is_reference_no_op, Adapter};
use crate::model::weights::Checkpoint;

pub struct MergeArgs {
    pub model: PathBuf,
    pub lora: PathBuf,
    pub out: PathBuf,
    pub shard_bytes: u64,
}

/// What was written.
#[derive(Debug, serde::Serialize)]
pub struct Merged {
    pub shards: usize,
    pub tensors: usize,
    pub merged_modules: usize,
    pub bytes: u64,
}

pub fn run(args: &MergeArgs) -> anyhow::Result<Merged> {
    let cfg = Config::from_file(&args.model.join("config.json"))?;
    let adapter = Adapter::load(&args.lora)?;
    adapter.check_against(&cfg)?;
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose a new folder",
            args.out.display()
        );
    }
    let ck = Checkpoint::open(&args.model, &cfg)?;
    let scaling = adapter.scaling();
    let mut names: Vec<String> = ck.st.tensors().into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut merged = 0;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for name in names {
        let t = ck
            .st
            .load(&name, &Device::Cpu)
            .with_context(|| format!("cannot read {name}"))?;
        let module = name.strip_suffix(".weight").unwrap_or("");
        let t = match adapter.modules.get(module) {
            Some(p) if !is_reference_no_op(module) => {
                merged += 1;
                let ba =
                    p.b.to_dtype(DType::F32)?
                        .matmul(&p.a.to_dtype(DType::F32)?)?;
                (t.to_dtype(DType::F32)? + (ba * scaling)?)?.to_dtype(t.dtype())?
            }
            _ => t,
        };
        tensors.push((name, t));
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let written = write_sharded(&args.out, tensors, args.shard_bytes)?;
    std::fs::copy(args.model.join("config.json"), args.out.join("config.json"))?;
    if let Ok(tok) = crate::generate::find_tokenizer(&args.model, None) {
        std::fs::copy(tok, args.out.join("tokenizer.json"))?;
    }
    Ok(Merged {
        merged_modules: merged,
        ..written
    })
}

/// Writes `tensors` (in order) into shards of at most `shard_bytes` (a larger tensor gets its own) and the index.
pub fn write_sharded(
    out: &Path,
    tensors: Vec<(String, Tensor)>,
    shard_bytes: u64,
) -> anyhow::Result<Merged> {
    let size = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0u64;
    for (name, t) in tensors {
        let s = size(&t);
        if current > 0 && current + s > shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += s;
        shards
            .last_mut()
            .expect("one shard at least")
            .push((name, t));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let (mut total, mut count) = (0u64, 0usize);
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let mut map = HashMap::new();
        for (name, t) in shard {
            total += size(&t);
            count += 1;
            weight_map.insert(name.clone(), file.clone());
            map.insert(name, t);
        }
        let path = out.join(&file);
        crate::model::weights::save_pt(&map, &path)?;
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    Ok(Merged {
        shards: n,
        tensors: count,
        merged_modules: 0,
        bytes: total,
    })
}
