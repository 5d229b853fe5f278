//! One loaded checkpoint and its tokenizer, and a chat turn from request to streamed text: preprocessing,
//! prompt building, prefill, the decode loop, stop rules and stats. No web types here, and no candle types in
//! the public signatures, so the worker and the CLI share it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use super::cache::{
    common_prefix, image_key, owner_key, Conversation, ImageCache, KEPT_CONVERSATIONS,
};
use super::checkpoint::describe;
use super::history_fit;
use super::load::{make_plan, parse_device, LoadOptions};
use super::sampling::{Sampler, Sampling};
use super::sequence::{Pending, Sequence};
use super::text_stream::TextStream;
use super::tokenizer::{check_vocabulary, find_tokenizer, load_tokenizer};
use crate::model::config::{self, Config};
use crate::model::lora::{Adapter, LoraMode};
use crate::model::placement::{Placement, Plan};
use crate::model::preprocess;
use crate::model::prompt::{prompt_text, PromptInput};
use crate::model::quant::Quantizer;
use crate::model::weights::{Checkpoint, ProgressBackend};
use crate::model::{Cache, CogVlm};
use protocol::{CheckpointInfo, Stats, StopReason};

/// The protocol's request with its image decoded: what the pipeline runs.
pub type ChatRequest = protocol::GenerateRequest<image::DynamicImage>;

/// A finished turn: the numbers shown under it ([`Stats`], also readable through `Deref`), its text and ids.
#[derive(Debug, Clone)]
pub struct Answer {
    pub stats: Stats,
    pub text: String,
    pub generated_ids: Vec<u32>,
}

impl std::ops::Deref for Answer {
    type Target = Stats;
    fn deref(&self) -> &Stats {
        &self.stats
    }
}

pub struct Pipeline {
    model: CogVlm,
    tokenizer: Arc<Tokenizer>,
    info: CheckpointInfo,
    image_cache: Option<ImageCache>,
    conversations: Vec<Conversation>,
    plan: Option<Plan>,
    stop_ids: Arc<[u32]>,
    /// `--prefill-chunk`: prompt positions prefilled per [`Self::prefill_step`] (`None`: the whole prompt).
    prefill_chunk: Option<usize>,
}

/// A prepared prompt: ids, routing and the encoded image.
pub struct Prepared {
    pub input: PromptInput,
    pub image: Option<Tensor>,
    pub cross: Option<Tensor>,
}

impl Pipeline {
    pub fn load(
        dir: &Path,
        opts: &LoadOptions,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> anyhow::Result<Self> {
        let cfg = Config::from_file(&dir.join("config.json"))?;
        let info = describe(dir, &cfg);
        let tokenizer = load_tokenizer(&find_tokenizer(dir, opts.tokenizer.as_deref())?)?;
        check_vocabulary(&tokenizer, &cfg)?;
        let stop_ids = config::stop_ids(dir, &cfg)?;
        let dtype = opts.float_type();
        let ck = Checkpoint::open(dir, &cfg)?;
        // Decided, printed and (when nothing fits) refused before any weight is read.
        let plan = make_plan(&cfg, dtype, opts)?;
        tracing::info!("{}: {}", info.name, plan.to_string().trim_end());
        let place = Placement::open(&plan, parse_device)?;
        let vb = VarBuilder::from_backend(
            Box::new(ProgressBackend::new(ck, progress)),
            dtype,
            place
                .device(plan.layers.first().copied().unwrap_or(0))
                .clone(),
        );
        let mut quantizer = Quantizer::new(opts.quant)
            .with_vision(opts.quant_vision)
            .with_int4_format(opts.int4_format);
        if let Some(lora) = &opts.lora {
            let adapter = Adapter::load(lora)?;
            quantizer = quantizer.with_lora(adapter, LoraMode::Merge);
        }
        let model = CogVlm::with_placement(&cfg, vb, quantizer, place)
            .with_context(|| format!("cannot build the model from {}", dir.display()))?;
        tracing::info!("{}: {}", info.name, model.resident_summary());
        let mut pipe = Self::from_parts(model, tokenizer, info).with_plan(plan);
        pipe.stop_ids = stop_ids.into();
        Ok(pipe)
    }

    /// Records the device plan the model was built with (shown on the page and in the bench's JSON).
    pub fn with_plan(mut self, plan: Plan) -> Self {
        self.plan = Some(plan);
        self
    }

    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    pub fn from_parts(model: CogVlm, tokenizer: Tokenizer, info: CheckpointInfo) -> Self {
        let stop_ids = model.cfg.eos_token_id.clone().into();
        Self {
            stop_ids,
            model,
            tokenizer: Arc::new(tokenizer),
            info,
            image_cache: None,
            conversations: Vec::new(),
            plan: None,
            prefill_chunk: None,
        }
    }

    /// The loaded checkpoint's name, kind, image size and default prompt version.
    pub fn info(&self) -> &CheckpointInfo {
        &self.info
    }

    pub fn model(&self) -> &CogVlm {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn encode_text(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Builds the prompt and encodes the image (reusing the last image's encoding when it is the same).
    pub fn prepare(&mut self, req: &ChatRequest) -> anyhow::Result<Prepared> {
        let input = self.prompt_input(req, &req.history)?;
        let (image, cross) = match &req.image {
            None => (None, None),
            Some(img) => {
                let rgb = preprocess::to_rgb(img);
                let (e, c) = self.encode_image(&rgb, image_key(0, &rgb))?;
                (Some(e), c)
            }
        };
        Ok(Prepared {
            input,
            image,
            cross,
        })
    }

    /// The prompt's ids, token types, positions and image slots (no image encoding), with `history` as the
    /// earlier turns.
    fn prompt_input(
        &self,
        req: &ChatRequest,
        history: &[(String, String)],
    ) -> anyhow::Result<PromptInput> {
        let family = self.model.family();
        if family.needs_image() && req.image.is_none() {
            return Err(protocol::Error::bad_input(
                "CogAgent needs an image: upload one to chat with this checkpoint",
            )
            .into());
        }
        let version = req.version.unwrap_or(self.info.default_version);
        let text = prompt_text(family, version.into(), history, &req.query);
        let text_ids = self.encode_text(&text)?;
        let cfg = &self.model.cfg;
        Ok(PromptInput::new(
            cfg.bos_token_id,
            cfg.pad_token_id(),
            req.image.as_ref().map(|_| cfg.image_tokens()),
            &text_ids,
        ))
    }

    fn encode_image(
        &mut self,
        rgb: &image::RgbImage,
        key: u64,
    ) -> anyhow::Result<(Tensor, Option<Tensor>)> {
        if let Some(c) = self.image_cache.as_ref().filter(|c| c.key == key) {
            return Ok((c.embeds.clone(), c.cross.clone()));
        }
        let device = self.model.device().clone();
        let size = self.model.cfg.vision_config.image_size;
        let pixels = preprocess::normalize(&preprocess::resize_bicubic(rgb, size, size), &device)?
            .unsqueeze(0)?;
        let embeds = self.model.encode_image(&pixels)?;
        let cross = match self.model.cfg.cross() {
            Some(c) => {
                let px = preprocess::normalize(
                    &preprocess::resize_bicubic(rgb, c.image_size, c.image_size),
                    &device,
                )?
                .unsqueeze(0)?;
                Some(self.model.encode_cross(&px)?)
            }
            None => None,
        };
        self.image_cache = Some(ImageCache {
            key,
            embeds: embeds.clone(),
            cross: cross.clone(),
        });
        Ok((embeds, cross))
    }

    /// The kept conversation sharing the longest usable prefix with `ids` (same image, the whole image span
    /// included), cut back to that prefix; else a fresh cache with room for `reserve` positions. At least the
    /// prompt's last token is always run again, for its logits.
    fn resume(
        &mut self,
        owner: u64,
        image: Option<u64>,
        input: &PromptInput,
        reserve: usize,
    ) -> Cache {
        let ids = &input.input_ids;
        let min_keep = input.image_span.as_ref().map_or(1, |s| s.end);
        let best = self
            .conversations
            .iter()
            .enumerate()
            .filter(|(_, c)| c.owner == owner && c.image == image)
            .map(|(i, c)| (i, common_prefix(c.cache.tokens(), ids).min(ids.len() - 1)))
            .filter(|&(_, keep)| keep >= min_keep)
            .max_by_key(|&(_, keep)| keep);
        match best {
            Some((i, keep)) => {
                let mut cache = self.conversations.remove(i).cache;
                self.model.truncate_cache(&mut cache, keep);
                cache
            }
            None => self.model.new_cache(reserve),
        }
    }

    fn keep_conversation(&mut self, owner: u64, image: Option<u64>, cache: Cache) {
        if self.conversations.len() >= KEPT_CONVERSATIONS {
            self.conversations.remove(0);
        }
        self.conversations.push(Conversation {
            owner,
            image,
            cache,
        });
    }

    /// One chat turn. `on_text` receives each newly complete piece of text (an empty one when
    /// a token completes no character); returning `false` cancels.
    pub fn generate(
        &mut self,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<Answer> {
        self.run(0, req, false, on_text)
    }

    /// As [`Self::generate`] for one of several clients (the server's): it continues only its own
    /// conversations and image encodings, never another client's.
    pub fn generate_for(
        &mut self,
        client: &str,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<Answer> {
        self.run(owner_key(client), req, false, on_text)
    }

    /// As [`Self::generate`]; `ignore_eos` keeps going to the length limit (parity with the fixtures' 12 tokens).
    pub fn generate_with(
        &mut self,
        req: &ChatRequest,
        ignore_eos: bool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<Answer> {
        self.run(0, req, ignore_eos, on_text)
    }

    fn run(
        &mut self,
        owner: u64,
        req: &ChatRequest,
        ignore_eos: bool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<Answer> {
        let mut seq = self.begin(owner, req, ignore_eos)?;
        let decoded = self.decode_alone(&mut seq, on_text);
        // The held-back text arrives whichever way the turn ended.
        if let Some(rest) = seq.rest() {
            on_text(&rest);
        }
        decoded?;
        Ok(self.finish(seq))
    }

    /// Samples and steps one sequence until it is finished.
    fn decode_alone(
        &mut self,
        seq: &mut Sequence,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<()> {
        while seq.is_prefilling() {
            self.prefill_step(seq)?;
        }
        while !seq.is_finished() {
            if let Some(piece) = seq.sample()? {
                // An empty piece (a character still incomplete) lets the caller cancel anyway.
                if !on_text(&piece) {
                    seq.cancel();
                }
            }
            self.step(&mut [seq])?;
        }
        Ok(())
    }

    /// Starts a turn for the caches' `owner` ([`owner_key`]; see [`Self::begin_for`]): builds the prompt,
    /// continues the owner's conversation cache or encodes the image, and runs the prefill. The sequence then
    /// alternates [`Sequence::sample`] and [`Self::step`] until it is finished, and ends with [`Self::finish`].
    fn begin(
        &mut self,
        owner: u64,
        req: &ChatRequest,
        ignore_eos: bool,
    ) -> anyhow::Result<Sequence> {
        req.sampling.validate().map_err(protocol::Error::from)?;
        let start = Instant::now();
        // The checkpoint was trained up to its context length; a larger max_length means "up
        // to the context".
        let context = self.model.cfg.max_position_embeddings;
        let max_length = req.sampling.max_length.min(context);
        let (input, dropped_turns) = self.fitted_prompt(req, max_length)?;
        let rgb = req.image.as_ref().map(preprocess::to_rgb);
        let image = rgb.as_ref().map(|rgb| image_key(owner, rgb));
        let prompt_len = input.input_ids.len();
        let budget = self.token_budget(&input, &req.sampling)?;
        let cache = self.resume(owner, image, &input, prompt_len + budget);
        let reused_tokens = cache.len();
        // The vision towers run only when the image is not in the reused prefix.
        let (embeds, cross) = match (&rgb, image) {
            (Some(rgb), Some(key)) if reused_tokens == 0 => {
                let (e, c) = self.encode_image(rgb, key)?;
                (Some(e), c)
            }
            _ => (None, None),
        };
        let mut seq = Sequence {
            owner,
            image,
            cache,
            sampler: Sampler::new(req.sampling.clone()),
            all_ids: input.input_ids.clone(),
            generated: Vec::new(),
            stream: TextStream::new(self.tokenizer.clone()),
            logits: None,
            pending: Some(Pending {
                input,
                image: embeds,
                cross,
            }),
            next: None,
            budget,
            stop_ids: self.stop_ids.clone(),
            ignore_eos,
            start,
            prefill_ms: 0.0,
            ttft_ms: 0.0,
            first_token_at: Instant::now(),
            stop: None,
            prompt_len,
            reused_tokens,
            dropped_turns,
            context,
        };
        // Chunked, the prompt runs in the turns after this one, which encoded the image.
        if self.prefill_chunk.is_none() {
            self.prefill_step(&mut seq)?;
        }
        Ok(seq)
    }

    /// Prefills the next chunk of `seq`'s prompt (`--prefill-chunk` positions, or all that is left), so that a
    /// long prompt interleaves with the running batch's decode steps; the last chunk gives its first logits.
    /// Nothing to do once the prompt is in.
    pub fn prefill_step(&self, seq: &mut Sequence) -> anyhow::Result<()> {
        let Some(p) = seq.pending.as_ref() else {
            return Ok(());
        };
        let total = p.input.input_ids.len();
        let end = match self.prefill_chunk {
            Some(n) => (seq.cache.len() + n.max(1)).min(total),
            None => total,
        };
        let logits = self.model.prefill_chunk(
            &p.input,
            end,
            p.image.as_ref(),
            p.cross.as_ref(),
            &mut seq.cache,
        )?;
        if let Some(logits) = logits {
            seq.pending = None;
            seq.logits = Some(logits);
            seq.prefill_ms = seq.start.elapsed().as_secs_f64() * 1e3;
        }
        Ok(())
    }

    /// `--prefill-chunk`: how many prompt positions each [`Self::prefill_step`] runs (`None`: the whole prompt).
    pub fn set_prefill_chunk(&mut self, chunk: Option<usize>) {
        self.prefill_chunk = chunk;
    }

    /// How many new tokens the prompt leaves room for: up to `max_length` (at most the checkpoint's context,
    /// which a larger `max_length` means) and `max_new_tokens`. A prompt that leaves none (every earlier turn already left out) is refused.
    fn token_budget(&self, input: &PromptInput, sampling: &Sampling) -> anyhow::Result<usize> {
        let prompt_len = input.input_ids.len();
        let context = self.model.cfg.max_position_embeddings;
        let max_length = sampling.max_length.min(context);
        if prompt_len >= max_length {
            let image = input.image_span.as_ref().map_or(0, |s| s.len());
            let message = if max_length == context {
                format!(
                    "the prompt takes {prompt_len} positions (the image counts {image} of them) but the \
                     checkpoint's context is {context}: shorten the question"
                )
            } else {
                format!(
                    "the prompt takes {prompt_len} positions (the image counts {image} of them) but max_length is {max_length}: \
                     shorten the question or raise max length"
                )
            };
            return Err(protocol::Error::bad_input(message).into());
        }
        let budget = max_length - prompt_len;
        Ok(sampling.max_new_tokens.map_or(budget, |n| budget.min(n)))
    }

    /// The prompt with the fewest oldest turns left out for it to fit `max_length` (see `history_fit`), and
    /// how many were left out.
    fn fitted_prompt(
        &self,
        req: &ChatRequest,
        max_length: usize,
    ) -> anyhow::Result<(PromptInput, usize)> {
        let turns = req.history.len();
        let room = history_fit::answer_room(req.sampling.max_new_tokens);
        let dropped = history_fit::turns_to_drop(turns, max_length, room, |k| {
            Ok::<_, anyhow::Error>(self.prompt_input(req, &req.history[k..])?.input_ids.len())
        })?
        .unwrap_or(turns);
        Ok((self.prompt_input(req, &req.history[dropped..])?, dropped))
    }

    /// [`Self::begin`] for one of several clients (the server's): it continues only its own conversations and
    /// image encodings, never another client's.
    pub fn begin_for(&mut self, client: &str, req: &ChatRequest) -> anyhow::Result<Sequence> {
        self.begin(owner_key(client), req, false)
    }

    /// [`Self::begin`] for the benchmark: the terminal's owner, EOS ignored (every stream runs to its length).
    pub fn begin_bench(&mut self, req: &ChatRequest) -> anyhow::Result<Sequence> {
        self.begin(0, req, true)
    }

    /// Runs the token each sequence has just sampled through the model, all of them in one batched decode step
    /// ([`CogVlm::step_batch`]), and hands each its next logits. Finished sequences are skipped.
    pub fn step(&self, seqs: &mut [&mut Sequence]) -> anyhow::Result<()> {
        let mut tokens = Vec::with_capacity(seqs.len());
        let mut caches = Vec::with_capacity(seqs.len());
        let mut rows = Vec::with_capacity(seqs.len());
        for seq in seqs.iter_mut() {
            if let (Some(token), None) = (seq.next.take(), seq.stop) {
                tokens.push(token);
                caches.push(&mut seq.cache);
                rows.push(&mut seq.logits);
            }
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let logits = self.model.step_batch(&tokens, &mut caches)?;
        for (i, slot) in rows.into_iter().enumerate() {
            *slot = Some(logits.get(i)?);
        }
        Ok(())
    }

    /// Ends a turn: keeps its cache for the owner's next question and returns the stats.
    pub fn finish(&mut self, mut seq: Sequence) -> Answer {
        let decode_s = seq.first_token_at.elapsed().as_secs_f64();
        let n = seq.generated.len();
        let tokens_per_s = if n > 1 && decode_s > 0.0 {
            (n - 1) as f64 / decode_s
        } else {
            0.0
        };
        let text = seq.stream.text().to_string();
        self.keep_conversation(seq.owner, seq.image, seq.cache);
        seq.logits = None;
        Answer {
            stats: Stats {
                checkpoint: self.info.name.clone(),
                prompt_tokens: seq.prompt_len,
                reused_tokens: seq.reused_tokens,
                dropped_turns: seq.dropped_turns,
                context: seq.context,
                generated_tokens: n,
                prefill_ms: seq.prefill_ms,
                ttft_ms: seq.ttft_ms,
                tokens_per_s,
                stop: seq.stop.unwrap_or(StopReason::Length),
            },
            text,
            generated_ids: seq.generated,
        }
    }

    /// Drops the cached image encoding and conversations (after a failure that may have left them half-made).
    pub fn forget_image(&mut self) {
        self.image_cache = None;
        self.conversations.clear();
    }

    /// Fresh cache sized for a prompt plus `extra` tokens (parity, bench).
    pub fn new_cache(&self, len: usize) -> Cache {
        self.model.new_cache(len)
    }
}
