//! The tokenizer of a checkpoint: where it is found, and the check that it belongs to the checkpoint's family.

use std::path::{Path, PathBuf};

use anyhow::bail;
use tokenizers::Tokenizer;

use crate::model::config::Config;
use crate::model::Family;

/// `--tokenizer`, else `tokenizer.json` in the model dir, its parent (a models folder), or a sibling
/// `tokenizer/` folder (the fixture layout).
pub fn find_tokenizer(dir: &Path, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        if p.join("tokenizer.json").is_file() {
            return Ok(p.join("tokenizer.json"));
        }
        bail!("tokenizer {} not found", p.display());
    }
    if !dir.is_dir() {
        bail!(
            "no model folder {} (its tokenizer.json is looked for there)",
            dir.display()
        );
    }
    let mut candidates = vec![dir.join("tokenizer.json")];
    if let Some(parent) = dir.parent() {
        candidates.push(parent.join("tokenizer.json"));
        if let Some(grand) = parent.parent() {
            candidates.push(grand.join("tokenizer").join("tokenizer.json"));
        }
    }
    // The message names the tokenizer this folder's family needs (CogVLM's when there is no config).
    let family = Config::from_file(&dir.join("config.json")).map_or(Family::CogVlm, |c| c.family());
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "no tokenizer.json for {} ({family}): put {} in the model folder (or, for CogVLM / CogAgent, in its \
             parent), or pass --tokenizer PATH",
            dir.display(),
            family.tokenizer_source()
        )
    })
}

/// Refuses a tokenizer of another model family: a Llama-2 tokenizer on CogVLM2 (or Llama-3's on CogVLM)
/// would load and answer with nonsense ids.
pub fn check_vocabulary(tokenizer: &Tokenizer, cfg: &Config) -> anyhow::Result<()> {
    let (tok, model) = (tokenizer.get_vocab_size(true), cfg.vocab_size);
    // The checkpoints pad their embedding tables a little past the tokenizer; another family's tokenizer is
    // off by a factor of four.
    if tok > model || tok * 2 < model {
        bail!(
            "vocabulary mismatch: the tokenizer has {tok} ids but this {} checkpoint's vocabulary is {model}; use {}",
            cfg.family(),
            cfg.family().tokenizer_source()
        );
    }
    Ok(())
}

pub fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))
}
