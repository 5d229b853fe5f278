//! The configurations of THUDM's released checkpoints by name (`cogvlm-17b`, `cogagent-18b`, `cogvlm2-19b`, …):
//! the shapes full-size random-weight runs and the planner's figures use.

use anyhow::bail;

use super::config::Config;

/// Named full-size configurations (the shapes of THUDM's released checkpoints).
pub fn named_config(name: &str) -> anyhow::Result<Config> {
    Ok(serde_json::from_value(named_config_json(name)?)?)
}

/// A named configuration as its `config.json` holds it.
pub fn named_config_json(name: &str) -> anyhow::Result<serde_json::Value> {
    if matches!(
        name,
        "cogvlm2-19b" | "cogvlm2-chat" | "cogvlm2-llama3-chat-19b"
    ) {
        return Ok(cogvlm2_config_json());
    }
    let (image_size, cogagent) = match name {
        "cogvlm-17b" | "cogvlm-chat" | "cogvlm-base-490" => (490, false),
        "cogvlm-base-224" => (224, false),
        "cogagent-18b" | "cogagent-chat" | "cogagent-vqa" => (224, true),
        other => {
            bail!("unknown config {other:?} (expected cogvlm-17b, cogvlm-base-224, cogagent-18b or cogvlm2-19b)")
        }
    };
    let grid = image_size / 14;
    let mut json = serde_json::json!({
        "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
        "rms_norm_eps": 1e-5, "vocab_size": 32000, "template_version": "chat",
        "vision_config": {"hidden_size": 1792, "image_size": image_size, "in_channels": 3, "intermediate_size": 15360,
            "layer_norm_eps": 1e-6, "num_heads": 16, "num_hidden_layers": 63, "num_positions": grid * grid + 1,
            "patch_size": 14, "hidden_act": "gelu", "dropout_prob": 0.0}
    });
    if cogagent {
        json["cross_hidden_size"] = 1024.into();
        json["cross_compute_hidden_size"] = 1024.into();
        json["cross_image_size"] = 1120.into();
        json["architectures"] = serde_json::json!(["CogAgentForCausalLM"]);
    }
    Ok(json)
}

/// `THUDM/cogvlm2-llama3-chat-19B`'s config.json (the Chinese checkpoint has the same shapes): Llama-3-8B with
/// 8 KV heads, the 1344 px EVA2-CLIP-E tower.
fn cogvlm2_config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CogVLMForCausalLM"],
        "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_multi_query_heads": 8,
        "num_hidden_layers": 32, "rms_norm_eps": 1e-5, "vocab_size": 128256, "max_position_embeddings": 8192,
        "bos_token_id": 128000, "eos_token_id": 128001, "pad_token_id": 128002, "template_version": "chat",
        "hidden_act": "silu", "torch_dtype": "bfloat16",
        "vision_config": {"hidden_size": 1792, "image_size": 1344, "in_channels": 3, "intermediate_size": 15360,
            "layer_norm_eps": 1e-6, "num_heads": 16, "num_hidden_layers": 63, "num_positions": 9217,
            "patch_size": 14, "hidden_act": "gelu", "dropout_prob": 0.0}
    })
}
