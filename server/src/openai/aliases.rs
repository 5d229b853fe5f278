//! THUDM's names for the checkpoints, accepted as `model`: clients written for THUDM's own OpenAI
//! demo send `cogvlm-chat-17b` or `cogagent-chat-18b`, others the Hugging Face repo id
//! (`THUDM/cogvlm-chat-hf`) or the SAT name (`cogvlm-chat`).
//!
//! The rule: a checkpoint folder named like a THUDM Hugging Face repo (`cogvlm-…-hf`,
//! `cogagent-…-hf`) answers to `THUDM/<folder>`, to `<name>-17b` (CogVLM) or `<name>-18b`
//! (CogAgent), and to `<name>`, where `<name>` is the folder without `-hf`. Names are compared
//! without regard to case. A CogVLM2 folder named like its repo (`cogvlm2-llama3-chat-19B`,
//! `cogvlm2-llama3-chinese-chat-19B`) answers to `THUDM/<folder>` and to `<folder>` without `-19B`.

/// The other names `checkpoint` answers to (none unless it is named like a THUDM repo).
pub fn aliases(checkpoint: &str) -> Vec<String> {
    let lower = checkpoint.to_ascii_lowercase();
    if let Some(base) = lower
        .strip_suffix("-19b")
        .filter(|b| b.starts_with("cogvlm2-"))
    {
        return vec![format!("THUDM/{checkpoint}"), base.to_string()];
    }
    let Some(base) = lower.strip_suffix("-hf") else {
        return Vec::new();
    };
    let size = if base.starts_with("cogvlm-") {
        "17b"
    } else if base.starts_with("cogagent-") {
        "18b"
    } else {
        return Vec::new();
    };
    vec![
        format!("THUDM/{checkpoint}"),
        format!("{base}-{size}"),
        base.to_string(),
    ]
}

/// The checkpoint among `checkpoints` that `requested` names, itself or by an alias.
pub fn resolve<'a>(requested: &str, checkpoints: &'a [String]) -> Option<&'a str> {
    if let Some(c) = checkpoints.iter().find(|c| *c == requested) {
        return Some(c);
    }
    checkpoints
        .iter()
        .find(|c| {
            c.eq_ignore_ascii_case(requested)
                || aliases(c).iter().any(|a| a.eq_ignore_ascii_case(requested))
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thudm_names_map_to_their_folders() {
        let dirs: Vec<String> = [
            "cogvlm-chat-hf",
            "cogagent-chat-hf",
            "cogvlm-base-490-hf",
            "cogvlm2-llama3-chinese-chat-19B",
            "mine",
        ]
        .map(String::from)
        .to_vec();
        for (name, want) in [
            ("cogvlm-chat-17b", Some("cogvlm-chat-hf")),
            ("THUDM/cogvlm-chat-hf", Some("cogvlm-chat-hf")),
            ("thudm/CogVLM-Chat-HF", Some("cogvlm-chat-hf")),
            ("cogvlm-chat", Some("cogvlm-chat-hf")),
            ("cogagent-chat-18b", Some("cogagent-chat-hf")),
            ("THUDM/cogvlm-base-490-hf", Some("cogvlm-base-490-hf")),
            ("cogvlm-base-490-17b", Some("cogvlm-base-490-hf")),
            ("mine", Some("mine")),
            (
                "THUDM/cogvlm2-llama3-chinese-chat-19B",
                Some("cogvlm2-llama3-chinese-chat-19B"),
            ),
            (
                "cogvlm2-llama3-chinese-chat",
                Some("cogvlm2-llama3-chinese-chat-19B"),
            ),
            ("cogvlm2-llama3-chat", None),
            ("cogagent-chat-17b", None),
            ("cogvlm-grounding-generalist-17b", None),
            ("THUDM/mine", None),
        ] {
            assert_eq!(resolve(name, &dirs), want, "{name}");
        }
        assert!(aliases("cogvlm_tiny_224").is_empty());
    }
}
