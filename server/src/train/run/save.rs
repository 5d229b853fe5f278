//! What a run writes: the adapter (PEFT layout) or the whole checkpoint (transformers layout), and the trainer
//! and optimizer state a resumed run continues from.

use super::*;

/// Trainer state saved beside each checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct TrainerState {
    pub(super) step: usize,
    pub(super) total_steps: usize,
    pub(super) full: bool,
    pub(super) seed: u64,
}

pub(super) const STATE_FILE: &str = "trainer_state.json";
pub(super) const OPTIM_FILE: &str = "optimizer.safetensors";

/// Writes the trained tensors (full: a checkpoint folder; LoRA: the adapter), the optimizer and the state;
/// `resumable` (a `checkpoint-N`) keeps full fine-tuning's weights in f32.
#[allow(clippy::too_many_arguments)]
pub(super) fn save(
    dir: &Path,
    args: &TrainArgs,
    inputs: &Inputs,
    m: &TrainModel,
    adapter: Option<&Adapter>,
    opt: &AdamW,
    state: &TrainerState,
    resumable: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if args.full {
        // `--resume` checkpoints keep f32. The result goes to the config's dtype except tensors under 1 M
        // elements (norms, biases, small matrices), which stay f32: rounding a norm weight's small updates to
        // bf16 undoes them, and they weigh nothing next to the large matrices.
        let final_dtype = save_dtype(&inputs.cfg);
        let mut map = HashMap::new();
        for (name, v) in &m.weights {
            let t = v.as_tensor();
            let dtype = if resumable || t.elem_count() < 1 << 20 {
                DType::F32
            } else {
                final_dtype
            };
            map.insert(name.clone(), t.to_dtype(dtype)?);
        }
        let path = dir.join("model.safetensors");
        crate::model::weights::save_pt(&map, &path)?;
        std::fs::copy(args.model.join("config.json"), dir.join("config.json"))?;
        let tok = find_tokenizer(&args.model, args.load.tokenizer.as_deref())?;
        std::fs::copy(tok, dir.join("tokenizer.json"))?;
    } else if let Some(a) = adapter {
        let mut trained = a.clone();
        let by_key: HashMap<&str, &candle_core::Var> =
            m.lora.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (module, pair) in trained.modules.iter_mut() {
            let get = |half| {
                by_key
                    .get(crate::model::lora::peft_key(module, half).as_str())
                    .map(|v| v.as_tensor().clone())
            };
            if let (Some(a), Some(b)) = (
                get(crate::model::lora::Half::A),
                get(crate::model::lora::Half::B),
            ) {
                *pair = LoraPair { a, b };
            }
        }
        trained.save(dir)?;
    }
    opt.save(&dir.join(OPTIM_FILE))?;
    std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
    Ok(())
}

/// The dtype a full fine-tune is saved in: the checkpoint's `torch_dtype` (THUDM's are bf16), else f32.
pub(super) fn save_dtype(cfg: &Config) -> DType {
    match cfg.torch_dtype.as_deref() {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    }
}
