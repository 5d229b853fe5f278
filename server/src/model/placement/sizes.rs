//! What each module weighs as loaded and what running it needs besides, for a config and weight format.

use candle_core::DType;

use super::super::config::Config;
use super::super::quant::{tensor_bytes, Quant};
use super::super::weights::expected_tensors;

/// Bytes of each module as loaded (weights in their format) and what running it needs besides.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub vision: u64,
    pub cross: u64,
    pub embed: u64,
    /// One decoder layer's weights (all layers have the same shapes).
    pub layer: u64,
    /// One layer's KV cache for `max_length` positions (and CogAgent's encoder keys/values).
    pub layer_kv: u64,
    pub head: u64,
    /// A prefill's activations on a device running layers (or the head).
    pub decoder_act: u64,
    /// The image encoders' activations.
    pub vision_act: u64,
    pub cross_act: u64,
    pub layers: usize,
    /// The model and its float type, in words (`CogVLM (17.6 B parameters), bf16`).
    pub what: String,
    /// Its quantization (and whether the vision tower shares it).
    pub quant: (Quant, bool),
    /// Smaller formats, each with the change that gives it (for the advice of a refusal).
    pub cheaper: Vec<(Change, Sizes)>,
}

/// A way to make the model fit that a refusal may suggest; typed, so that whoever shows the refusal words it
/// (`generate::load` names the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// As many layers on the GPU as fit, the rest on the CPU (or the second device).
    OffloadAuto,
    /// bf16 weights instead of f32.
    Bf16,
    /// int8 language-model weights.
    Int8,
    /// int4 language-model weights.
    Int4,
    /// int4 for the vision tower too.
    Int4WithVision,
}

impl Sizes {
    pub fn new(
        cfg: &Config,
        dtype: DType,
        quant: Quant,
        quant_vision: bool,
        max_length: usize,
    ) -> Self {
        let mut s = Self::one(cfg, dtype, quant, quant_vision, max_length);
        let mut options = Vec::new();
        if dtype == DType::F32 {
            options.push((Change::Bf16, DType::BF16, quant, quant_vision));
        }
        options.push((Change::Int8, dtype, Quant::Q8, false));
        options.push((Change::Int4, dtype, Quant::Q4, false));
        options.push((Change::Int4WithVision, dtype, Quant::Q4, true));
        let total = s.total_weights();
        s.cheaper = options
            .into_iter()
            .map(|(c, d, q, v)| (c, Self::one(cfg, d, q, v, max_length)))
            .filter(|(_, c)| c.total_weights() < total)
            .collect();
        s
    }

    fn one(
        cfg: &Config,
        dtype: DType,
        quant: Quant,
        quant_vision: bool,
        max_length: usize,
    ) -> Self {
        let qv = quant_vision && quant != Quant::Float;
        let mut s = Sizes {
            vision: 0,
            cross: 0,
            embed: 0,
            layer: 0,
            layer_kv: 0,
            head: 0,
            decoder_act: 0,
            vision_act: 0,
            cross_act: 0,
            layers: cfg.num_hidden_layers.max(1),
            what: String::new(),
            quant: (quant, qv),
            cheaper: Vec::new(),
        };
        for (name, shape) in expected_tensors(cfg) {
            let b = tensor_bytes(&name, &shape, dtype, quant, qv);
            if name.starts_with("model.layers.0.") {
                s.layer += b;
            } else if name.starts_with("model.layers.") {
            } else if name.starts_with("model.cross_vision.") {
                s.cross += b;
            } else if name.starts_with("model.vision.") {
                s.vision += b;
            } else if name.starts_with("model.embed_tokens.") {
                s.embed += b;
            } else {
                s.head += b;
            }
        }
        let act = dtype.size_in_bytes() as u64;
        let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
        // Keys and values of the KV heads (CogVLM2 keeps 8 of 32).
        let kv_width = (cfg.kv_heads() * cfg.head_dim()) as u64;
        s.layer_kv = 2 * max_length as u64 * kv_width * act;
        let cross = cfg.cross();
        if let Some(c) = &cross {
            s.layer_kv += 2 * c.num_patches() as u64 * c.compute as u64 * act;
        }
        // A prefill of the image and a question: the MLP's and QKV's rows in f32, and the f32 scores and
        // probabilities of every head.
        let l = (cfg.image_tokens() as u64 + 512).min(max_length.max(1) as u64);
        let heads = cfg.num_attention_heads as u64;
        s.decoder_act = l * (2 * i + 4 * h) * 4 + 2 * heads * l * l * 4;
        // An encoder: a few f32 rows of its widest layer per token, and its attention in 256 MiB row blocks
        // (scores and probabilities).
        let blocks = 2 * (256u64 << 20);
        let vc = &cfg.vision_config;
        let t = vc.num_patches() as u64 + 1;
        s.vision_act =
            2 * t * (vc.intermediate_size as u64 + 3 * vc.hidden_size as u64) * 4 + blocks;
        if let Some(c) = &cross {
            let t = c.num_patches() as u64 + 1;
            let w = c.vision.vision_cfg.width as u64;
            s.cross_act = 2 * t * (2 * c.vision.mlp_hidden() as u64 + 3 * w) * 4 + blocks;
        }
        let (params, _) = super::super::weights::parameter_bytes(cfg, dtype);
        s.what = format!(
            "{} ({:.1} B parameters), {}",
            cfg.family(),
            params as f64 / 1e9,
            dtype.as_str(),
        );
        s
    }

    /// Every weight.
    pub fn total_weights(&self) -> u64 {
        self.vision + self.cross + self.embed + self.layer * self.layers as u64 + self.head
    }
}
