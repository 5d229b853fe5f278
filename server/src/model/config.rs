//! Serde view of the Hugging Face `config.json` of the THUDM `cogvlm-*-hf`, `cogagent-*-hf` and
//! `cogvlm2-llama3-*` checkpoints.
//!
//! Field names are the ones in the real files (see `configuration_cogvlm.py` / `configuration_cogagent.py`).
//! CogAgent's high-resolution encoder has no config key in the real checkpoints (its sizes are hard-coded in
//! `cross_visual.py`); the tiny fixture models carry one under `cross_vision_config`, so we read it when present
//! and fall back to the real EVA2-CLIP-L values otherwise.

use serde::Deserialize;

use super::family::Family;

fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_vocab() -> usize {
    32000
}
fn default_max_pos() -> usize {
    2048
}
fn default_bos() -> u32 {
    1
}
fn default_eos() -> Vec<u32> {
    vec![2]
}

/// `5` or `[5, 7]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Ids::deserialize(d)? {
        Ids::One(id) => vec![id],
        Ids::Many(ids) => ids,
    })
}
fn default_ln_eps() -> f64 {
    1e-6
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub image_size: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    pub num_heads: usize,
    pub num_hidden_layers: usize,
    pub num_positions: usize,
    pub patch_size: usize,
}

fn default_in_channels() -> usize {
    3
}

impl VisionConfig {
    /// Patches per side of the (square) input.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// EVA2-CLIP-L `vision_cfg` as in `cross_visual.py` (only the keys that change the computation).
#[derive(Debug, Clone, Deserialize)]
pub struct CrossVisionCfg {
    pub width: usize,
    pub layers: usize,
    pub head_width: usize,
    pub mlp_ratio: f64,
    pub patch_size: usize,
    #[serde(default = "default_pt_hw_seq_len")]
    pub pt_hw_seq_len: usize,
}

fn default_pt_hw_seq_len() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize)]
pub struct CrossVisionConfig {
    pub vision_cfg: CrossVisionCfg,
    /// Width of the classifier head, present in the checkpoint but never used.
    pub embed_dim: usize,
}

impl Default for CrossVisionConfig {
    /// The values hard-coded for `eva-clip-l-14-336` in the reference.
    fn default() -> Self {
        Self {
            vision_cfg: CrossVisionCfg {
                width: 1024,
                layers: 24,
                head_width: 64,
                mlp_ratio: 2.6667,
                patch_size: 14,
                pt_hw_seq_len: 16,
            },
            embed_dim: 768,
        }
    }
}

impl CrossVisionConfig {
    pub fn num_heads(&self) -> usize {
        self.vision_cfg.width / self.vision_cfg.head_width
    }
    /// `int(width * mlp_ratio)` exactly as Python truncates it (1024 · 2.6667 → 2730).
    pub fn mlp_hidden(&self) -> usize {
        (self.vision_cfg.width as f64 * self.vision_cfg.mlp_ratio) as usize
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    /// One id, or a list (CogVLM2's configs may list several); the first is the one training appends.
    #[serde(default = "default_eos", deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    /// CogVLM2: key/value heads of the grouped-query attention (absent: one per query head).
    #[serde(default)]
    pub num_multi_query_heads: Option<usize>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub template_version: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    pub vision_config: VisionConfig,
    // CogAgent only.
    #[serde(default)]
    pub cross_hidden_size: Option<usize>,
    #[serde(default)]
    pub cross_compute_hidden_size: Option<usize>,
    #[serde(default)]
    pub cross_image_size: Option<usize>,
    #[serde(default)]
    pub cross_vision_config: Option<CrossVisionConfig>,
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{} is not a CogVLM/CogAgent config: {e}", path.display())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Which family the checkpoint is, from `config.json` alone (names may be anything a user chose):
    /// CogAgent by its cross-attention keys or architecture name, CogVLM2 by its grouped-query key
    /// `num_multi_query_heads`.
    pub fn family(&self) -> Family {
        if self.cross_hidden_size.is_some()
            || self.architectures.iter().any(|a| a.contains("CogAgent"))
        {
            Family::CogAgent
        } else if self.num_multi_query_heads.is_some() {
            Family::CogVlm2
        } else {
            Family::CogVlm
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Key/value heads: CogVLM2's `num_multi_query_heads`, else one per query head.
    pub fn kv_heads(&self) -> usize {
        self.num_multi_query_heads
            .unwrap_or(self.num_attention_heads)
    }

    /// Rows of the fused `query_key_value`: q, then k and v over the KV heads.
    pub fn qkv_rows(&self) -> usize {
        self.hidden_size + 2 * self.kv_heads() * self.head_dim()
    }

    /// The first end-of-sequence id (what training appends to an answer).
    pub fn eos(&self) -> u32 {
        self.eos_token_id.first().copied().unwrap_or(2)
    }

    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id.unwrap_or(0)
    }

    /// Image features the adapter receives: one per patch, or one per 2×2 patches after CogVLM2's conv.
    pub fn image_features(&self) -> usize {
        let g = self.vision_config.grid();
        if self.family().vision_conv() {
            (g / 2) * (g / 2)
        } else {
            g * g
        }
    }

    /// Image tokens in the LM sequence: boi + features + eoi.
    pub fn image_tokens(&self) -> usize {
        self.image_features() + 2
    }

    pub fn cross(&self) -> Option<CrossConfig> {
        if !self.family().has_cross() {
            return None;
        }
        Some(CrossConfig {
            hidden: self.cross_hidden_size.unwrap_or(1024),
            compute: self.cross_compute_hidden_size.unwrap_or(1024),
            image_size: self.cross_image_size.unwrap_or(1120),
            vision: self.cross_vision_config.clone().unwrap_or_default(),
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        let v = &self.vision_config;
        anyhow::ensure!(
            self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        anyhow::ensure!(
            self.head_dim().is_multiple_of(2),
            "config.json: head dim must be even for RoPE"
        );
        anyhow::ensure!(
            self.kv_heads() > 0 && self.num_attention_heads.is_multiple_of(self.kv_heads()),
            "config.json: num_attention_heads {} is not a multiple of num_multi_query_heads {}",
            self.num_attention_heads,
            self.kv_heads()
        );
        anyhow::ensure!(
            !self.family().vision_conv() || v.grid().is_multiple_of(2),
            "config.json: the vision grid ({}/{} = {}) must be even for the 2×2 convolution",
            v.image_size,
            v.patch_size,
            v.grid()
        );
        anyhow::ensure!(
            v.patch_size > 0 && v.image_size.is_multiple_of(v.patch_size),
            "config.json: vision image_size {} is not a multiple of patch_size {}",
            v.image_size,
            v.patch_size
        );
        anyhow::ensure!(
            v.num_heads > 0 && v.hidden_size.is_multiple_of(v.num_heads),
            "config.json: vision hidden_size is not a multiple of num_heads"
        );
        anyhow::ensure!(
            v.num_positions == v.num_patches() + 1,
            "config.json: vision num_positions {} does not match ({}/{})²+1 = {}",
            v.num_positions,
            v.image_size,
            v.patch_size,
            v.num_patches() + 1
        );
        if let Some(c) = self.cross() {
            anyhow::ensure!(
                c.hidden == c.compute,
                "config.json: cross_hidden_size must equal cross_compute_hidden_size (the reference reshapes with one and computes with the other)"
            );
            anyhow::ensure!(
                c.compute.is_multiple_of(self.num_attention_heads),
                "config.json: cross_compute_hidden_size is not a multiple of num_attention_heads"
            );
            let p = c.vision.vision_cfg.patch_size;
            anyhow::ensure!(
                p > 0 && c.image_size.is_multiple_of(p),
                "config.json: cross_image_size is not a multiple of the cross patch size"
            );
            anyhow::ensure!(
                c.vision.vision_cfg.head_width.is_multiple_of(4)
                    && c.vision
                        .vision_cfg
                        .width
                        .is_multiple_of(c.vision.vision_cfg.head_width),
                "config.json: cross vision width/head_width are not usable by the 2-D RoPE"
            );
            anyhow::ensure!(
                c.vision.vision_cfg.layers >= 1,
                "config.json: cross vision needs at least one block"
            );
        }
        Ok(())
    }
}

/// Resolved CogAgent cross-branch sizes.
#[derive(Debug, Clone)]
pub struct CrossConfig {
    pub hidden: usize,
    pub compute: usize,
    pub image_size: usize,
    pub vision: CrossVisionConfig,
}

impl CrossConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.vision.vision_cfg.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// The ids that end an answer: config.json's `eos_token_id` and those of `generation_config.json` beside it
/// (CogVLM2's lists 128001 and 128009), in that order, without repeats.
pub fn stop_ids(dir: &std::path::Path, cfg: &Config) -> anyhow::Result<Vec<u32>> {
    #[derive(Deserialize)]
    struct Generation {
        #[serde(default, deserialize_with = "one_or_many")]
        eos_token_id: Vec<u32>,
    }
    let mut ids = cfg.eos_token_id.clone();
    let path = dir.join("generation_config.json");
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let g: Generation = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a generation config: {e}", path.display()))?;
        for id in g.eos_token_id {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}
