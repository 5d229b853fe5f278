//! Answer-only labels and the loss, as the reference's `build_conversation_input_ids(…, answer=…)` and
//! `forward(labels=…)` compute them.
//!
//! The answer is tokenised on its own (so it gets SentencePiece's leading `▁`), EOS is appended, and the result
//! follows the prompt as language tokens whose positions continue the text's. Labels are `-100` on every prompt
//! position (BOS, the image block, the template) and the answer ids on the rest; the loss is the mean
//! next-token cross-entropy over the positions `t` whose `labels[t + 1]` is an answer id, EOS included.

use candle_core::{DType, Result, Tensor};

use crate::model::prompt::{build_position_ids, PromptInput, LANG};
use crate::model::CogVlm;

/// The label of a position that does not enter the loss.
pub const IGNORE: i64 = -100;

/// A prompt with its answer appended, and the labels.
#[derive(Debug, Clone)]
pub struct LabeledInput {
    /// Prompt + answer ids + EOS, with their token types and positions.
    pub input: PromptInput,
    /// `IGNORE` on the prompt, the answer ids and EOS after it (unshifted, as given to the reference model).
    pub labels: Vec<i64>,
    pub prompt_len: usize,
}

impl LabeledInput {
    /// Appends `answer_ids` and `eos` to `prompt` as language tokens.
    pub fn new(prompt: PromptInput, answer_ids: &[u32], eos: u32) -> Self {
        let prompt_len = prompt.input_ids.len();
        let mut input = prompt;
        let answer: Vec<u32> = answer_ids.iter().copied().chain([eos]).collect();
        input.input_ids.extend_from_slice(&answer);
        input
            .token_types
            .extend(std::iter::repeat_n(LANG, answer.len()));
        input.position_ids = build_position_ids(&input.token_types);
        let labels = std::iter::repeat_n(IGNORE, prompt_len)
            .chain(answer.iter().map(|&t| t as i64))
            .collect();
        Self {
            input,
            labels,
            prompt_len,
        }
    }

    /// The logit rows that enter the loss: `t` with `labels[t + 1] != IGNORE`.
    pub fn loss_positions(&self) -> Vec<usize> {
        loss_positions(&self.labels)
    }

    /// The target of each loss position, `labels[t + 1]`.
    pub fn loss_targets(&self) -> Vec<u32> {
        self.loss_positions()
            .iter()
            .map(|&t| self.labels[t + 1] as u32)
            .collect()
    }
}

/// Positions `t` whose next label is not [`IGNORE`] (the reference's shift by one).
pub fn loss_positions(labels: &[i64]) -> Vec<usize> {
    (0..labels.len().saturating_sub(1))
        .filter(|&t| labels[t + 1] != IGNORE)
        .collect()
}

/// Mean cross-entropy of f32 `logits` `[N, V]` against `targets` (one per row), as `CrossEntropyLoss()`, as an
/// f32 scalar. The softmax over the vocabulary is taken in f64: in f32 its normalisation over 32000 terms is off
/// by ~1e-7, which leaves the `lm_head` gradient's column sums (zero analytically) with a noise above the
/// reference's.
pub fn mean_cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let t = Tensor::new(targets, logits.device())?;
    candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F64)?, &t)?.to_dtype(DType::F32)
}

/// What one training forward gives.
pub struct Step {
    /// Scalar f32 loss (differentiable).
    pub loss: Tensor,
    /// f32 logits `[N, V]` at the loss positions.
    pub logits: Tensor,
}

/// The training forward and loss of one example: the whole sequence without a cache, the final hidden states at
/// the loss positions through `lm_head`, then [`mean_cross_entropy`].
pub fn forward_loss(
    model: &CogVlm,
    example: &LabeledInput,
    image: Option<&Tensor>,
    cross: Option<&Tensor>,
) -> Result<Step> {
    let positions = example.loss_positions();
    if positions.is_empty() {
        candle_core::bail!("the example has no answer tokens to learn");
    }
    let h = model.forward_train(&example.input, image, cross)?;
    let idx: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
    let rows = h.index_select(&Tensor::new(idx.as_slice(), h.device())?, 0)?;
    let logits = model.logits(&rows)?;
    let loss = mean_cross_entropy(&logits, &example.loss_targets())?;
    Ok(Step { loss, logits })
}

/// Whether [`forward_loss_batch`] can run `examples` together: one image span (the prompts differ only after
/// it, so right-padding gives them one position list).
pub fn batchable(examples: &[&LabeledInput]) -> bool {
    examples
        .windows(2)
        .all(|w| w[0].input.image_span == w[1].input.image_span)
}

/// The mean over `examples` of each one's [`forward_loss`] loss, computed in one forward: the sequences are
/// right-padded with `pad` to one length and run as a batch (see [`CogVlm::forward_train_batch`]), and each
/// loss row is weighted by `1 / (B · rows of its example)`. The same value and gradients as the per-example
/// sum, for a fraction of the per-op overhead that dominates small models on a CPU. `images` = `[B, n, hidden]`.
pub fn forward_loss_batch(
    model: &CogVlm,
    examples: &[&LabeledInput],
    images: Option<&Tensor>,
    pad: u32,
) -> Result<Step> {
    if !batchable(examples) {
        candle_core::bail!("the examples of a batch have different image spans");
    }
    let l = examples.iter().map(|e| e.input.input_ids.len()).max();
    let Some(l) = l else {
        candle_core::bail!("an empty training batch");
    };
    let b = examples.len();
    let mut prompts = Vec::with_capacity(b);
    let (mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for (i, ex) in examples.iter().enumerate() {
        let positions = ex.loss_positions();
        if positions.is_empty() {
            candle_core::bail!("the example has no answer tokens to learn");
        }
        let w = 1.0 / (b * positions.len()) as f64;
        rows.extend(positions.iter().map(|&t| (i * l + t) as u32));
        targets.extend(ex.loss_targets());
        weights.extend(std::iter::repeat_n(w, positions.len()));
        let mut p = ex.input.clone();
        let n = p.input_ids.len();
        p.input_ids.resize(l, pad);
        p.token_types.resize(l, LANG);
        if n < l {
            p.position_ids = build_position_ids(&p.token_types);
        }
        prompts.push(p);
    }
    let h = model.forward_train_batch(&prompts, images)?;
    let h = h.reshape((b * l, ()))?;
    let device = h.device().clone();
    let rows = h.index_select(&Tensor::new(rows.as_slice(), &device)?, 0)?;
    let logits = model.logits(&rows)?;
    // Per-row negative log-likelihood, then the weighted sum. In f32, unlike [`mean_cross_entropy`]: the f64
    // softmax there keeps gradient checks clean, and here would cost more than the rest of a small model's step.
    let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let t = Tensor::new(targets.as_slice(), &device)?.unsqueeze(1)?;
    let nll = logp.gather(&t, 1)?.squeeze(1)?.neg()?;
    let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let loss = (nll * Tensor::new(weights.as_slice(), &device)?)?.sum_all()?;
    Ok(Step { loss, logits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::prompt::VIS;
    use candle_core::Device;

    /// Labels cover exactly the answer and EOS; no prompt position (BOS, image block, template) enters the loss,
    /// and the positions continue the text's.
    #[test]
    fn only_answer_tokens_enter_the_loss() {
        let prompt = PromptInput::new(1, 0, Some(4), &[10, 11, 12]);
        let ex = LabeledInput::new(prompt, &[20, 21], 2);
        assert_eq!(ex.prompt_len, 8);
        assert_eq!(
            ex.input.input_ids,
            vec![1, 0, 0, 0, 0, 10, 11, 12, 20, 21, 2]
        );
        assert_eq!(
            ex.labels,
            vec![-100, -100, -100, -100, -100, -100, -100, -100, 20, 21, 2]
        );
        assert_eq!(ex.input.token_types[8..], [LANG, LANG, LANG]);
        assert_eq!(ex.input.token_types[1..5], [VIS; 4]);
        assert_eq!(ex.input.position_ids, vec![0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9]);
        // Rows t predict token t + 1: the last prompt position predicts the first answer id.
        assert_eq!(ex.loss_positions(), vec![7, 8, 9]);
        assert_eq!(ex.loss_targets(), vec![20, 21, 2]);
        // Every label of a prompt position is ignored, and every row in the loss predicts an answer token.
        for &t in &ex.loss_positions() {
            assert!(
                t + 1 >= ex.prompt_len,
                "prompt position {} in the loss",
                t + 1
            );
        }
        assert!(ex.labels[..ex.prompt_len].iter().all(|&l| l == IGNORE));
    }

    /// The mean cross-entropy equals `mean(logsumexp − target logit)` computed by hand.
    #[test]
    fn cross_entropy_is_the_mean_nll() -> Result<()> {
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.5, -1.0, 0.0]], &Device::Cpu)?;
        let got = mean_cross_entropy(&logits, &[2, 0])?.to_scalar::<f32>()?;
        let lse = |r: [f32; 3]| r.iter().map(|v| v.exp()).sum::<f32>().ln();
        let want = ((lse([1.0, 2.0, 3.0]) - 3.0) + (lse([0.5, -1.0, 0.0]) - 0.5)) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        Ok(())
    }
}
