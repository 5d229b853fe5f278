//! The one place that knows how the checkpoint families differ. CogVLM (`cogvlm-*-hf`), CogAgent
//! (`cogagent-*-hf`: CogVLM plus a high-resolution cross branch) and CogVLM2 (`cogvlm2-llama3-*`: CogVLM on
//! Llama-3 with grouped-query attention, a 2×2 convolution after the tower and RoPE base 500 000) share one
//! model; each fact below is asked of the family instead of being tested for in the modules.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    CogVlm,
    CogAgent,
    CogVlm2,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Self::CogVlm => "CogVLM",
            Self::CogAgent => "CogAgent",
            Self::CogVlm2 => "CogVLM2",
        }
    }

    /// RoPE base of the decoder (`modeling_cogvlm.py`'s `RotaryEmbedding` / CogVLM2's `FastRotaryEmbedding`).
    pub fn rope_base(self) -> f32 {
        match self {
            Self::CogVlm | Self::CogAgent => 10_000.0,
            Self::CogVlm2 => 500_000.0,
        }
    }

    /// CogVLM2's `FastRotaryEmbedding(pos_idx_in_fp32=False)` makes the position vector, the angles and their
    /// cos/sin in `inv_freq`'s dtype (the model dtype once the model is cast); CogVLM computes them in f32.
    pub fn rope_in_model_dtype(self) -> bool {
        self == Self::CogVlm2
    }

    /// Whether the tower's grid goes through the 2×2 stride-2 `conv` before the adapter (tokens ÷ 4).
    pub fn vision_conv(self) -> bool {
        self == Self::CogVlm2
    }

    /// Whether the vision expert's `query_key_value` has a bias (the language expert's never does).
    pub fn vision_expert_qkv_bias(self) -> bool {
        self == Self::CogVlm2
    }

    /// The learned `pos_embed` table CogAgent adds to the patch features before the adapter.
    pub fn vision_extra_pos(self) -> bool {
        self == Self::CogAgent
    }

    /// The high-resolution cross-attention branch.
    pub fn has_cross(self) -> bool {
        self == Self::CogAgent
    }

    /// Whether a prompt may come without an image (CogAgent's cross branch needs one).
    pub fn needs_image(self) -> bool {
        self == Self::CogAgent
    }

    /// The base model whose tokenizer the family uses: named when a tokenizer does not fit.
    pub fn tokenizer_source(self) -> &'static str {
        match self {
            Self::CogVlm | Self::CogAgent => {
                "the Vicuna-7B-v1.5 tokenizer.json (lmsys/vicuna-7b-v1.5; Llama-2 vocabulary, 32 000 ids)"
            }
            Self::CogVlm2 => {
                "the tokenizer.json shipped in the THUDM/cogvlm2-llama3-chat-19B folder (Llama-3 vocabulary, \
                 128 256 ids)"
            }
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;

    fn config(extra: serde_json::Value) -> Config {
        let mut j = serde_json::json!({
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "vision_config": {"hidden_size": 40, "image_size": 1344, "intermediate_size": 96, "num_heads": 5,
                "num_hidden_layers": 1, "num_positions": 9217, "patch_size": 14}
        });
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn cogvlm2_is_known_by_its_config_and_has_its_shapes() {
        let c = config(
            serde_json::json!({"num_multi_query_heads": 2, "eos_token_id": [128001, 128009]}),
        );
        assert_eq!(c.family(), Family::CogVlm2);
        // 1344 / 14 = 96 patches a side, halved by the 2×2 convolution: 48² + boi + eoi.
        assert_eq!(c.image_tokens(), 2306);
        assert_eq!(
            (c.kv_heads(), c.head_dim(), c.qkv_rows()),
            (2, 8, 32 + 2 * 2 * 8)
        );
        assert_eq!(c.eos_token_id, [128001, 128009]);
        assert_eq!(c.eos(), 128001);
        assert_eq!(c.family().rope_base(), 500_000.0);

        let v1 = config(serde_json::json!({"eos_token_id": 2}));
        assert_eq!(v1.family(), Family::CogVlm);
        assert_eq!(
            (v1.image_tokens(), v1.kv_heads(), v1.qkv_rows()),
            (96 * 96 + 2, 4, 96)
        );
        let agent =
            config(serde_json::json!({"cross_hidden_size": 32, "cross_compute_hidden_size": 32}));
        assert_eq!(agent.family(), Family::CogAgent);
    }
}
