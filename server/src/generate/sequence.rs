//! One turn being generated: its cache, sampler and text so far, between the batch's decode steps.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use candle_core::Tensor;
use protocol::StopReason;

use super::sampling::Sampler;
use super::text_stream::TextStream;
use crate::model::prompt::PromptInput;
use crate::model::Cache;

/// What the rest of a chunked prefill needs: the prompt, and the encoded image while its span is not all in.
pub(super) struct Pending {
    pub(super) input: PromptInput,
    pub(super) image: Option<Tensor>,
    pub(super) cross: Option<Tensor>,
}

/// One turn being generated, between decode steps: its cache, sampler and text so far. Made by
/// [`Pipeline::begin_for`]; several of them decode together through [`Pipeline::step`].
pub struct Sequence {
    pub(super) owner: u64,
    pub(super) image: Option<u64>,
    pub(super) cache: Cache,
    pub(super) sampler: Sampler,
    /// Prompt and generated ids (the repetition penalty's history).
    pub(super) all_ids: Vec<u32>,
    pub(super) generated: Vec<u32>,
    pub(super) stream: TextStream,
    /// The logits the next token is chosen from (after the prefill or a decode step).
    pub(super) logits: Option<Tensor>,
    /// The prompt while it is prefilled in chunks ([`Pipeline::prefill_step`]).
    pub(super) pending: Option<Pending>,
    /// The token just chosen, waiting for its decode step.
    pub(super) next: Option<u32>,
    pub(super) budget: usize,
    /// End-of-sequence ids: config.json's and generation_config.json's (CogVLM2 stops at 128001 and 128009).
    pub(super) stop_ids: Arc<[u32]>,
    pub(super) ignore_eos: bool,
    pub(super) start: Instant,
    pub(super) prefill_ms: f64,
    pub(super) ttft_ms: f64,
    pub(super) first_token_at: Instant,
    pub(super) stop: Option<StopReason>,
    pub(super) prompt_len: usize,
    pub(super) reused_tokens: usize,
    pub(super) dropped_turns: usize,
    pub(super) context: usize,
}

impl Sequence {
    /// Chooses the next token from the pending logits. Returns the newly complete text (empty when the token
    /// completes no character), or `None` when the sequence has ended (EOS here, or earlier).
    pub fn sample(&mut self) -> anyhow::Result<Option<String>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        let Some(logits) = self.logits.take() else {
            bail!("internal error: a sequence was sampled twice without a decode step");
        };
        let token = self.sampler.sample_tensor(&logits, &self.all_ids)?;
        if self.generated.is_empty() {
            self.ttft_ms = self.start.elapsed().as_secs_f64() * 1e3;
            self.first_token_at = Instant::now();
        }
        if self.stop_ids.contains(&token) && !self.ignore_eos {
            self.stop = Some(StopReason::Eos);
            return Ok(None);
        }
        self.generated.push(token);
        self.all_ids.push(token);
        let piece = self.stream.push(token)?.unwrap_or_default();
        if self.generated.len() >= self.budget {
            self.stop = Some(StopReason::Length);
        } else {
            self.next = Some(token);
        }
        Ok(Some(piece))
    }

    /// Stops here: no further token is produced.
    pub fn cancel(&mut self) {
        self.stop = Some(StopReason::Cancelled);
        self.next = None;
    }

    pub fn is_finished(&self) -> bool {
        self.stop.is_some()
    }

    /// Part of its prompt is still to be prefilled ([`Pipeline::prefill_step`]).
    pub fn is_prefilling(&self) -> bool {
        self.stop.is_none() && self.pending.is_some()
    }

    /// It has logits to choose its next token from ([`Self::sample`]).
    pub fn is_ready(&self) -> bool {
        self.stop.is_none() && self.logits.is_some()
    }

    /// It has chosen a token that waits for its decode step ([`Pipeline::step`]).
    pub fn has_token(&self) -> bool {
        self.stop.is_none() && self.next.is_some()
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated.len()
    }

    /// Text held back while incomplete, released at the end of every turn (finished, cancelled or failed).
    pub fn rest(&mut self) -> Option<String> {
        self.stream.finish()
    }
}
