//! The checkpoints of a models folder.
//!
//! A models folder is either one checkpoint (it has `config.json`) or a folder of checkpoint
//! folders. Each is identified by [`crate::generate::probe_checkpoint`], which reads `config.json` only,
//! so scanning is cheap; folders that fail are listed with the reason.

use crate::generate::probe_checkpoint;
use anyhow::{bail, Context, Result};
use protocol::CheckpointInfo;
use std::path::{Path, PathBuf};

/// Where a bundled folder (`rel`, relative to the `server/` crate of a checkout) may be, in the order tried:
/// beside the binary (a copied install: `<exe dir>/<rel>`; a checkout's `target/<profile>/cogvlm`:
/// `<exe dir>/../../server/<rel>`), then the working tree (`server/<rel>` from the repository root, `<rel>` from
/// `server/`, where `cargo test` runs), then the source tree the binary was built from.
pub fn bundled_candidates(rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        out.push(exe_dir.join(rel));
        out.push(exe_dir.join("../../server").join(rel));
    }
    out.push(Path::new("server").join(rel));
    out.push(PathBuf::from(rel));
    // The source tree this binary was built from, for a copy run from elsewhere (a benchmark's /tmp copy).
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    out
}

/// The first of [`bundled_candidates`] that exists, or an error that lists where it looked.
pub fn locate_bundled(rel: &str) -> Result<PathBuf> {
    let tried = bundled_candidates(rel);
    if let Some(found) = tried.iter().find(|p| p.is_dir()) {
        // Absolute, so that links made to it elsewhere resolve and messages to other machines can be
        // redacted (the redaction looks for absolute paths).
        return Ok(found.canonicalize().unwrap_or_else(|_| found.clone()));
    }
    let places: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no bundled checkpoints ({rel}): looked in {}; run from the repository root or pass --models-dir",
        places.join(", ")
    )
}

/// The bundled tiny checkpoints (random weights, real architecture and tokenizer), found at run time; where
/// none is found, the working tree's path (whose absence [`Registry::scan`] reports).
pub fn bundled_models_dir() -> PathBuf {
    locate_bundled(BUNDLED_REL).unwrap_or_else(|_| Path::new("server").join(BUNDLED_REL))
}

const BUNDLED_REL: &str = "fixtures/models";
const DEMO_REL: &str = "models";

/// The checkpoint served first from the bundled folders: the trained demo that answers every kind of
/// question it was taught, boxes included (`server/models/cogvlm-demo-boxes/README.md`).
pub const DEMO_DEFAULT: &str = "cogvlm-demo-boxes";
/// The checkpoint served first from the random-weight fixtures' folder alone.
pub const BUNDLED_DEFAULT: &str = "cogvlm_tiny_490";

/// The bundled demo checkpoints (trained here on synthetic scenes; `server/models/*/README.md`), beside the
/// fixtures' folder that was found.
pub fn demo_models_dir() -> PathBuf {
    match locate_bundled(BUNDLED_REL) {
        // `<server>/fixtures/models` → `<server>/models`.
        Ok(fixtures) => match fixtures.parent().and_then(Path::parent) {
            Some(server) if !server.as_os_str().is_empty() => server.join(DEMO_REL),
            _ => PathBuf::from(DEMO_REL),
        },
        Err(_) => Path::new("server").join(DEMO_REL),
    }
}

/// One usable checkpoint: what the page lists about it, and where it is.
#[derive(Clone, Debug)]
pub struct Entry {
    pub info: CheckpointInfo,
    pub dir: PathBuf,
    /// A LoRA adapter (`<checkpoint>/adapters/<name>/`) applied when this entry loads.
    pub lora: Option<PathBuf>,
}

impl Entry {
    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn info(&self) -> CheckpointInfo {
        self.info.clone()
    }
}

/// The checkpoints found in a folder.
#[derive(Clone, Debug)]
pub struct Registry {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
    /// Folders with a `config.json` that could not be identified: (folder name, reason).
    pub skipped: Vec<(String, String)>,
}

impl Registry {
    /// Scans `dir` (not recursively beyond one level).
    pub fn scan(dir: &Path) -> Result<Registry> {
        if !dir.is_dir() {
            bail!(
                "models folder {} does not exist (give --models-dir a folder of checkpoints, \
                 each with config.json and *.safetensors)",
                dir.display()
            );
        }
        // Under `fixtures/` (the CogVLM2 fixture is linked into `fixtures/models/` from its own set).
        let bundled_root = bundled_models_dir()
            .parent()
            .and_then(|p| p.canonicalize().ok());
        let is_bundled = |p: &Path| {
            let p = p.canonicalize().ok();
            matches!((&p, &bundled_root), (Some(p), Some(root)) if p.starts_with(root))
        };
        let mut candidates = Vec::new();
        if dir.join("config.json").is_file() {
            candidates.push(dir.to_path_buf());
        } else {
            let listing =
                std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            for item in listing {
                let path = item?.path();
                if path.join("config.json").is_file() {
                    candidates.push(path);
                }
            }
            candidates.sort();
        }
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for path in candidates {
            let folder = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            match probe_checkpoint(&path) {
                Ok(info) => {
                    let entry = Entry {
                        info: CheckpointInfo {
                            bundled: is_bundled(&path),
                            ..info
                        },
                        dir: path,
                        lora: None,
                    };
                    let adapters = adapter_entries(&entry);
                    entries.push(entry);
                    entries.extend(adapters);
                }
                Err(e) => skipped.push((folder, format!("{e:#}"))),
            }
        }
        Ok(Registry {
            dir: dir.to_path_buf(),
            entries,
            skipped,
        })
    }

    /// The bundled checkpoints: the trained demo (listed first) and the random-weight fixtures.
    pub fn bundled() -> Result<Registry> {
        let mut reg = Registry::scan(&locate_bundled(BUNDLED_REL)?)?;
        let demo = demo_models_dir();
        if demo.is_dir() {
            let d = Registry::scan(&demo)?;
            let mut entries = d.entries;
            for e in &mut entries {
                e.info.bundled = true;
            }
            entries.append(&mut reg.entries);
            reg.entries = entries;
            reg.skipped.extend(d.skipped);
        }
        Ok(reg)
    }

    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name() == name)
    }

    /// The checkpoint to load at startup: the demo, else the fixtures' default, else the first.
    pub fn default_entry(&self) -> Option<&Entry> {
        self.find(DEMO_DEFAULT)
            .or_else(|| self.find(BUNDLED_DEFAULT))
            .or(self.entries.first())
    }
}

/// The adapter folders of a checkpoint: `adapters/<name>/` holding `adapter_config.json`, sorted.
fn adapter_dirs(checkpoint: &Path) -> Vec<PathBuf> {
    let Ok(listing) = std::fs::read_dir(checkpoint.join("adapters")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(crate::model::lora::CONFIG_FILE).is_file())
        .collect();
    dirs.sort();
    dirs
}

/// One "checkpoint + adapter" entry per adapter folder, named `<checkpoint> + <adapter>`.
fn adapter_entries(base: &Entry) -> Vec<Entry> {
    adapter_dirs(&base.dir)
        .into_iter()
        .map(|dir| {
            let adapter = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut entry = base.clone();
            entry.info.name = format!("{} + {adapter}", base.info.name);
            entry.lora = Some(dir);
            entry
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found from the working tree (`cargo test` runs in `server/`), and a missing folder names every place
    /// tried, beside the binary first.
    #[test]
    fn bundled_folders_are_found_at_run_time_or_the_places_are_named() {
        let found = locate_bundled(BUNDLED_REL).unwrap();
        assert!(
            found.join("cogvlm_tiny_224/config.json").is_file(),
            "{}",
            found.display()
        );
        assert!(demo_models_dir().join(DEMO_DEFAULT).is_dir());
        let err = locate_bundled("no/such/folder").unwrap_err().to_string();
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let beside = exe_dir.join("no/such/folder").display().to_string();
        assert!(err.contains(&beside), "{err}");
        assert!(
            err.contains("server/no/such/folder") && err.contains("--models-dir"),
            "{err}"
        );
        assert!(
            err.find(&beside) < err.find("server/no/such/folder"),
            "{err}"
        );
    }

    #[test]
    fn bundled_folder_lists_the_four_tiny_checkpoints() {
        let reg = Registry::scan(&bundled_models_dir()).unwrap();
        let names: Vec<&str> = reg.entries.iter().map(Entry::name).collect();
        assert_eq!(
            names,
            [
                "cogagent_tiny",
                "cogvlm2_tiny_224",
                "cogvlm_tiny_224",
                "cogvlm_tiny_490"
            ]
        );
        // The CogVLM2 fixture is linked in from its own set: found by its config, bundled all the same.
        let v2 = reg.find("cogvlm2_tiny_224").unwrap().info();
        assert_eq!(
            (v2.kind, v2.image_size, v2.default_version),
            (
                protocol::ModelKind::CogVlm2,
                224,
                protocol::PromptVersion::Chat
            )
        );
        assert!(reg.entries.iter().all(|e| e.info.bundled));
        assert!(reg.skipped.is_empty(), "{:?}", reg.skipped);
        assert_eq!(reg.default_entry().unwrap().name(), BUNDLED_DEFAULT);
        let info = reg.find("cogagent_tiny").unwrap().info();
        assert_eq!(info.kind, protocol::ModelKind::CogAgent);
        assert_eq!(info.image_size, 224);
        assert_eq!(reg.find("cogvlm_tiny_490").unwrap().info().image_size, 490);
    }

    #[test]
    fn the_bundled_registry_starts_on_the_demo() {
        let reg = Registry::bundled().unwrap();
        // Both demos come before the random-weight fixtures; the default is the one that also boxes.
        assert_eq!(reg.entries[0].name(), "cogvlm-demo");
        assert_eq!(reg.entries[1].name(), DEMO_DEFAULT);
        assert_eq!(reg.default_entry().unwrap().name(), DEMO_DEFAULT);
        assert!(reg.find(BUNDLED_DEFAULT).is_some());
    }

    #[test]
    fn a_single_checkpoint_folder_is_its_own_registry() {
        let reg = Registry::scan(&bundled_models_dir().join("cogvlm_tiny_224")).unwrap();
        assert_eq!(reg.entries.len(), 1);
    }

    #[test]
    fn a_missing_folder_is_a_clear_error() {
        let err = Registry::scan(Path::new("/nonexistent/models")).unwrap_err();
        assert!(err.to_string().contains("--models-dir"));
    }
}
