//! What a checkpoint folder is, read from its `config.json` alone: the page's listing and the prompt version
//! it defaults to.

use std::path::Path;

use crate::model::config::Config;
use crate::model::Family;
use protocol::{CheckpointInfo, PromptVersion};

/// The checkpoint's default prompt version: the README's "which --version" table by family and checkpoint name, then
/// `template_version` from config.json, then `chat`.
pub fn default_version(name: &str, cfg: &Config) -> PromptVersion {
    let n = name.to_ascii_lowercase();
    let by_name = match cfg.family() {
        Family::CogAgent if n.contains("vqa") => Some(PromptVersion::ChatOld),
        Family::CogAgent if n.contains("chat") => Some(PromptVersion::Chat),
        Family::CogAgent => None,
        Family::CogVlm if n.contains("grounding") || n.contains("base") => {
            Some(PromptVersion::Base)
        }
        Family::CogVlm if n.contains("vqa") => Some(PromptVersion::Vqa),
        Family::CogVlm if n.contains("chat") => Some(PromptVersion::Chat),
        Family::CogVlm => None,
        // THUDM's CogVLM2 demos ask every checkpoint, English or Chinese, with `chat`, as their configs say.
        Family::CogVlm2 => None,
    };
    by_name
        .or_else(|| cfg.template_version.as_deref().and_then(|v| v.parse().ok()))
        .unwrap_or(PromptVersion::Chat)
}

/// What the page lists about the checkpoint in `dir`, read from `config.json` alone.
pub fn probe_checkpoint(dir: &Path) -> anyhow::Result<CheckpointInfo> {
    let cfg = Config::from_file(&dir.join("config.json"))?;
    Ok(describe(dir, &cfg))
}

pub(super) fn describe(dir: &Path, cfg: &Config) -> CheckpointInfo {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    checkpoint_info(name, cfg)
}

/// A checkpoint called `name` with config `cfg` (`bundled` is the registry's to set).
pub fn checkpoint_info(name: String, cfg: &Config) -> CheckpointInfo {
    CheckpointInfo {
        default_version: default_version(&name, cfg),
        kind: cfg.family().into(),
        image_size: cfg.vision_config.image_size,
        name,
        bundled: false,
    }
}
