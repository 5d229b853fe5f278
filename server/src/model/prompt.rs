//! Prompt building as the HF `build_conversation_input_ids`: text templates, then
//! `[bos] + [pad] * image_tokens + tokens(text)` with token types, `build_position_ids` and `get_expert_mask`.

use std::ops::Range;

use super::family::Family;

/// The prompt template (THUDM's `template_version`): the query alone (`Base`), `Question: … Answer:` (`Chat`;
/// CogAgent's `[INST]` form), CogAgent's older `<EOI>` form (`ChatOld`), `Short answer:` (`Vqa`). The wire's
/// `PromptVersion` converts into it (`generate`), so the model does not depend on the wire types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Base,
    Chat,
    ChatOld,
    Vqa,
}

/// The text given to the tokenizer (after BOS and the image block).
pub fn prompt_text(
    family: Family,
    version: Template,
    history: &[(String, String)],
    query: &str,
) -> String {
    let mut s = String::new();
    match (family, version) {
        (_, Template::Base) => s.push_str(query),
        // CogVLM2 keeps CogVLM's templates (its `chat` is the `Question: … Answer:` one).
        (Family::CogVlm | Family::CogVlm2, Template::Chat | Template::ChatOld) => {
            for (q, r) in history {
                s.push_str(&format!("Question: {q} Answer: {r}\n"));
            }
            s.push_str(&format!("Question: {query} Answer:"));
        }
        (Family::CogVlm | Family::CogVlm2, Template::Vqa) => {
            for (q, r) in history {
                s.push_str(&format!("Question: {q} Short answer: {r}\n"));
            }
            s.push_str(&format!("Question: {query} Short answer:"));
        }
        (Family::CogAgent, Template::Chat) => {
            s.push_str(" [INST] ");
            for (q, r) in history {
                s.push_str(&format!("{q} [/INST] {r} [INST] "));
            }
            s.push_str(&format!("{query} [/INST] "));
        }
        // The HF CogAgent code keeps the literal `<EOI>` in the text (SAT used it as the image marker).
        (Family::CogAgent, Template::ChatOld) => {
            s.push_str("<EOI>Question: ");
            for (q, r) in history {
                s.push_str(&format!("{q} Answer: {r}\nQuestion: "));
            }
            s.push_str(&format!("{query} Answer:"));
        }
        (Family::CogAgent, Template::Vqa) => {
            s.push_str(&format!("<EOI>Question: {query} Short answer:"));
        }
    }
    s
}

pub const LANG: u8 = 0;
pub const VIS: u8 = 1;

/// A tokenised prompt ready for prefill.
#[derive(Debug, Clone)]
pub struct PromptInput {
    pub input_ids: Vec<u32>,
    pub token_types: Vec<u8>,
    pub position_ids: Vec<u32>,
    /// Where the image embeddings go (boi … eoi), if any.
    pub image_span: Option<Range<usize>>,
}

impl PromptInput {
    pub fn new(bos: u32, pad: u32, image_tokens: Option<usize>, text_ids: &[u32]) -> Self {
        let mut input_ids = vec![bos];
        let mut token_types = vec![LANG];
        let image_span = image_tokens.map(|n| {
            input_ids.extend(std::iter::repeat_n(pad, n));
            token_types.extend(std::iter::repeat_n(VIS, n));
            1..1 + n
        });
        input_ids.extend_from_slice(text_ids);
        token_types.extend(std::iter::repeat_n(LANG, text_ids.len()));
        let position_ids = build_position_ids(&token_types);
        Self {
            input_ids,
            token_types,
            position_ids,
            image_span,
        }
    }

    /// Positions routed to the vision expert (boi + patches), as one span.
    pub fn vision_expert_span(&self) -> Option<Range<usize>> {
        mask_to_span(&vision_expert_mask(&self.token_types))
    }
}

/// `build_position_ids` with an all-ones attention mask: boi and eoi count as text, all patches share one
/// position.
pub fn build_position_ids(types: &[u8]) -> Vec<u32> {
    let n = types.len();
    let mut t = types.to_vec();
    for i in 0..n {
        if types[i] == VIS {
            let left_lang = i == 0 || types[i - 1] == LANG;
            let right_lang = i + 1 == n || types[i + 1] == LANG;
            if left_lang || right_lang {
                t[i] = LANG;
            }
        }
    }
    let mut pos = Vec::with_capacity(n);
    let mut acc = 0u32;
    for i in 0..n {
        if i > 0 && (t[i] == LANG || (t[i] == VIS && t[i - 1] == LANG)) {
            acc += 1;
        }
        pos.push(acc);
    }
    pos
}

/// `get_expert_mask`: token i uses the vision expert iff it and its right neighbour are VIS.
pub fn vision_expert_mask(types: &[u8]) -> Vec<bool> {
    (0..types.len())
        .map(|i| i + 1 < types.len() && types[i] == VIS && types[i + 1] == VIS)
        .collect()
}

/// The mask as a single contiguous span (the only shape our prompts produce); `None` when empty.
pub fn mask_to_span(mask: &[bool]) -> Option<Range<usize>> {
    let start = mask.iter().position(|&m| m)?;
    let end = mask.iter().rposition(|&m| m)? + 1;
    debug_assert!(
        mask[start..end].iter().all(|&m| m),
        "vision tokens must be contiguous"
    );
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_share_one_slot_for_patches() {
        let p = PromptInput::new(1, 0, Some(6), &[10, 11]);
        assert_eq!(p.position_ids, vec![0, 1, 2, 2, 2, 2, 3, 4, 5]);
        assert_eq!(p.vision_expert_span(), Some(1..6));
        assert_eq!(p.image_span, Some(1..7));
    }

    #[test]
    fn text_only_is_plain() {
        let p = PromptInput::new(1, 0, None, &[5, 6, 7]);
        assert_eq!(p.position_ids, vec![0, 1, 2, 3]);
        assert_eq!(p.vision_expert_span(), None);
    }

    #[test]
    fn templates_match_the_reference_strings() {
        let h = vec![("What is it?".to_string(), "A cat.".to_string())];
        assert_eq!(
            prompt_text(Family::CogVlm, Template::Chat, &h, "What color?"),
            "Question: What is it? Answer: A cat.\nQuestion: What color? Answer:"
        );
        assert_eq!(
            prompt_text(Family::CogAgent, Template::Chat, &[], "Hi"),
            " [INST] Hi [/INST] "
        );
        assert_eq!(
            prompt_text(Family::CogAgent, Template::Vqa, &h, "Q"),
            "<EOI>Question: Q Short answer:"
        );
    }
}
