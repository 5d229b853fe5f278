//! CogVLM (17B) and CogAgent (18B) in candle, loaded from the THUDM Hugging Face checkpoints by their tensor
//! names. Layout after candle-transformers: `config` (serde `config.json`), `vision` (EVA2-CLIP-E + GLU adapter),
//! `cross_vision` (CogAgent's EVA2-CLIP-L), `language` (visual-expert decoder), `prompt` (templates, ids, position
//! ids, expert routing), `preprocess` (PIL-exact resize + CLIP normalisation), `weights` (files, checks), `quant`
//! (int8 / int4 linear layers), `precision` (the image encoders' dtype), `placement` (which module on which
//! device), `memory` (free and resident memory), `lora` (PEFT adapters), `ops` (fused kernels for inference,
//! differentiable compositions for training).

pub mod config;
pub mod cross_vision;
pub mod family;
pub mod kv_cache;
pub mod language;
pub mod lora;
pub mod memory;
pub mod named_configs;
pub mod ops;
pub mod placement;
pub mod precision;
pub mod preprocess;
pub mod prompt;
pub mod quant;
pub mod vision;
pub mod weights;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use config::Config;
use cross_vision::CrossVisionModel;
pub use family::Family;
use language::{LanguageModel, LayerCache};
use placement::Placement;
use prompt::PromptInput;
use quant::{Quant, QuantReport, Quantizer};
use vision::VisionModel;

/// The whole model: vision tower(s) and the decoder.
pub struct CogVlm {
    pub cfg: Config,
    vision: VisionModel,
    cross_vision: Option<CrossVisionModel>,
    lm: LanguageModel,
    /// The vision tower's device: where images are prepared.
    device: Device,
    place: Placement,
    dtype: DType,
    /// The towers' weights' and activations' dtypes ([`precision::encoder_dtype`]; the model dtype for a
    /// quantized tower, whose matmuls take f32 or bf16).
    vision_dtype: DType,
    cross_dtype: DType,
    /// Images that had to be encoded again in the model dtype (see [`precision`]).
    encoder_reruns: AtomicUsize,
    quant: QuantReport,
}

/// Decoding state of one conversation: every layer's keys/values, and the ids and positions they were
/// computed for (image slots hold the pad id), so a later prompt can reuse the common prefix.
pub struct Cache {
    layers: Vec<LayerCache>,
    tokens: Vec<u32>,
    positions: Vec<u32>,
}

impl Cache {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The ids whose keys/values are cached, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// RoPE position of the last cached token (the next one gets `+1`).
    pub fn last_position(&self) -> u32 {
        self.positions.last().copied().unwrap_or(0)
    }
}

/// What a prefill returns.
pub struct Prefill {
    /// f32 logits: `[L, V]` when all positions were asked for, else `[V]` for the last one.
    pub logits: Tensor,
}

impl CogVlm {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::new_quantized(cfg, vb, Quant::Float)
    }

    /// As [`Self::new`] with the language model's linear layers in `quant` (the vision towers stay float).
    pub fn new_quantized(cfg: &Config, vb: VarBuilder, quant: Quant) -> Result<Self> {
        Self::with_quantizer(cfg, vb, Quantizer::new(quant))
    }

    /// As [`Self::new_quantized`] with a given quantizer (the benchmark's shared random blocks).
    pub fn with_quantizer(cfg: &Config, vb: VarBuilder, q: Quantizer) -> Result<Self> {
        let place = Placement::single(vb.device().clone(), cfg.num_hidden_layers);
        Self::with_placement(cfg, vb, q, place)
    }

    /// As [`Self::with_quantizer`] with each module on the device `place` gives it.
    pub fn with_placement(
        cfg: &Config,
        vb: VarBuilder,
        q: Quantizer,
        place: Placement,
    ) -> Result<Self> {
        if let Some(adapter) = q.lora() {
            adapter
                .check_against(cfg)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        }
        let dtype = vb.dtype();
        let cross_dtype = precision::encoder_dtype(dtype);
        let vision_dtype = if q.quantizes_vision() {
            dtype
        } else {
            cross_dtype
        };
        let on = |slot: usize| vb.clone().set_device(place.device(slot).clone());
        let vision = VisionModel::new(
            cfg,
            on(place.vision)
                .pp("model")
                .pp("vision")
                .set_dtype(vision_dtype),
            &q,
        )?;
        let cross_vision = match cfg.cross() {
            Some(c) => Some(CrossVisionModel::new(
                &c,
                on(place.cross)
                    .pp("model")
                    .pp("cross_vision")
                    .set_dtype(cross_dtype),
            )?),
            None => None,
        };
        let lm = LanguageModel::new(cfg, vb.clone(), &q, &place)?;
        q.check_lora_used()?;
        Ok(Self {
            cfg: cfg.clone(),
            vision,
            cross_vision,
            lm,
            device: place.device(place.vision).clone(),
            place,
            dtype,
            vision_dtype,
            cross_dtype,
            encoder_reruns: AtomicUsize::new(0),
            quant: q.into_report(),
        })
    }

    /// What quantization did at load (which matrices, which formats, which stayed float).
    pub fn quant_report(&self) -> &QuantReport {
        &self.quant
    }

    /// Bytes of the weights as held: every parameter in the model dtype, quantized matrices at their size.
    pub fn weight_bytes(&self) -> u64 {
        let (_, float) = weights::parameter_bytes(&self.cfg, self.dtype);
        float - self.quant.replaced_float_bytes + self.quant.quantized_bytes
    }

    /// What the weights will hold once every matrix has run: [`Self::weight_bytes`] plus the tiles candle's CPU
    /// kernels keep beside some quantized formats ([`quant::format::Kernels`]).
    pub fn expected_resident_bytes(&self) -> u64 {
        self.weight_bytes() + self.quant.repacked_bytes
    }

    /// One line for the loader: the expected resident size and what it is made of.
    pub fn resident_summary(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        format!(
            "expected resident {:.2} GiB: weights {:.2} GiB + candle's repacked tiles {:.2} GiB",
            gib(self.expected_resident_bytes()),
            gib(self.weight_bytes()),
            gib(self.quant.repacked_bytes)
        )
    }

    /// The checkpoint's family ([`family::Family`]).
    pub fn family(&self) -> Family {
        self.cfg.family()
    }

    /// Where pixel tensors go (the vision tower's device).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The devices each module runs on.
    pub fn placement(&self) -> &Placement {
        &self.place
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The vision tower's and (CogAgent) the cross encoder's dtypes.
    pub fn encoder_dtypes(&self) -> (DType, Option<DType>) {
        let cross = self.cross_vision.as_ref().map(|_| self.cross_dtype);
        (self.vision_dtype, cross)
    }

    /// How many encodings overflowed f16 and were run again in the model dtype.
    pub fn encoder_reruns(&self) -> usize {
        self.encoder_reruns.load(Ordering::Relaxed)
    }

    /// `[1, 3, S, S]` pixels → `[1, n + 2, hidden]` image embeddings (boi, patches, eoi), in the model dtype.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        self.encode("vision tower", self.vision_dtype, |dt| {
            self.vision.forward(&pixels.to_dtype(dt)?)
        })
    }

    /// The ViT output with CLS, before the adapter (parity probes), in the tower's dtype.
    pub fn vit_output(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.vit(&pixels.to_dtype(self.vision_dtype)?)
    }

    /// The adapter's input for a ViT output (CogVLM2: after the 2×2 convolution), for the parity probes.
    pub fn vision_features(&self, vit: &Tensor) -> Result<Tensor> {
        self.vision.features(vit)
    }

    /// CogAgent: `[1, 3, 1120, 1120]` pixels → encoder output `[1, 6400, cross_hidden]`, in the model dtype.
    pub fn encode_cross(&self, pixels: &Tensor) -> Result<Tensor> {
        match &self.cross_vision {
            Some(cv) => {
                let pixels = pixels.to_device(self.place.device(self.place.cross))?;
                self.encode("cross encoder", self.cross_dtype, |dt| {
                    cv.forward(&pixels.to_dtype(dt)?)
                })
            }
            None => candle_core::bail!("this checkpoint has no cross-vision encoder"),
        }
    }

    /// Runs an encoder in `dt`; when that is not the model dtype and the output is not finite (f16 overflowed),
    /// runs it again in the model dtype. The result is in the model dtype.
    fn encode(
        &self,
        what: &str,
        dt: DType,
        run: impl Fn(DType) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let out = run(dt)?;
        if dt == self.dtype || precision::all_finite(&out)? {
            return out.to_dtype(self.dtype);
        }
        self.encoder_reruns.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "the {what} overflowed {} on this image; encoding it again in {}",
            dt.as_str(),
            self.dtype.as_str()
        );
        let out = run(self.dtype)?;
        if !precision::all_finite(&out)? {
            candle_core::bail!("the {what} produced non-finite values on this image");
        }
        Ok(out)
    }

    /// An empty cache with room for `reserve` positions (it grows if a conversation needs more).
    pub fn new_cache(&self, reserve: usize) -> Cache {
        Cache {
            layers: self.lm.new_cache(reserve),
            tokens: Vec::new(),
            positions: Vec::new(),
        }
    }

    /// Cuts `cache` back to its first `len` tokens, so a prompt sharing them continues from there.
    pub fn truncate_cache(&self, cache: &mut Cache, len: usize) {
        let len = len.min(cache.len());
        self.lm.truncate_cache(&mut cache.layers, len);
        cache.tokens.truncate(len);
        cache.positions.truncate(len);
    }

    /// Runs the prompt's tokens after those already in `cache`, which must be a prefix of it (a fresh cache runs
    /// the whole prompt). `image` = embeddings from [`Self::encode_image`], needed when the image span is not
    /// cached yet; `cross` = CogAgent's encoder output, needed with a fresh cache. `hidden` collects the
    /// reference's `output_hidden_states` for the positions run (parity). Logits are f32: `[L, V]` for every
    /// position run when `all_logits`, else `[V]` for the last one.
    pub fn prefill(
        &self,
        prompt: &PromptInput,
        image: Option<&Tensor>,
        cross: Option<&Tensor>,
        cache: &mut Cache,
        all_logits: bool,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Prefill> {
        let end = prompt.input_ids.len();
        let h = self.run_prompt(prompt, end, image, cross, cache, hidden)?;
        let l = h.dim(0)?;
        let logits = if all_logits {
            self.lm.logits(&h)?
        } else {
            self.lm.logits(&h.narrow(0, l - 1, 1)?)?.squeeze(0)?
        };
        Ok(Prefill { logits })
    }

    /// The training forward: the whole prompt at once with no KV cache (causal attention over everything), the
    /// image inserted as in inference. Returns the final-normed hidden states `[L, hidden]`; [`Self::logits`]
    /// turns the rows that enter a loss into logits. With weights or adapters held as `Var`s, every op on the
    /// way records its gradient ([`ops`]).
    pub fn forward_train(
        &self,
        prompt: &PromptInput,
        image: Option<&Tensor>,
        cross: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut cache = Cache {
            layers: self.lm.pass_through_cache(),
            tokens: Vec::new(),
            positions: Vec::new(),
        };
        self.run_prompt(
            prompt,
            prompt.input_ids.len(),
            image,
            cross,
            &mut cache,
            None,
        )
    }

    /// [`Self::forward_train`] for `B` prompts at once: they must have one length (right-padded) and one image
    /// span, so that one position list, one causal mask and one expert routing serve every row; `images` is the
    /// tower's output for all of them, `[B, n, hidden]`. Returns hidden states `[B, L, hidden]`. Each row equals
    /// its prompt's [`Self::forward_train`] at the positions before its padding (attention is causal, so the
    /// padding after them is never read). CogVLM only: CogAgent's cross-attention keeps one encoder output.
    pub fn forward_train_batch(
        &self,
        prompts: &[PromptInput],
        images: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some(first) = prompts.first() else {
            candle_core::bail!("an empty training batch");
        };
        if self.cross_vision.is_some() {
            candle_core::bail!(
                "batched training forward is for CogVLM; CogAgent trains one example at a time"
            );
        }
        let l = first.input_ids.len();
        if let Some(p) = prompts
            .iter()
            .find(|p| p.input_ids.len() != l || p.image_span != first.image_span)
        {
            candle_core::bail!(
                "a training batch needs prompts of one length and image span ({} and {:?} vs {l} and {:?})",
                p.input_ids.len(),
                p.image_span,
                first.image_span
            );
        }
        let b = prompts.len();
        let ids: Vec<u32> = prompts.iter().flat_map(|p| p.input_ids.clone()).collect();
        let mut embeds = self.lm.embed(&ids)?.reshape((b, l, ()))?;
        match (&first.image_span, images) {
            (Some(span), Some(img)) => {
                if img.dims()[..2] != [b, span.len()] {
                    candle_core::bail!(
                        "images give {:?} embeddings for {b} prompts of {} image slots",
                        img.dims(),
                        span.len()
                    );
                }
                embeds = self.insert_image(&embeds, span.clone(), img)?;
            }
            (None, None) => {}
            _ => candle_core::bail!("the prompts' image slots and the images given do not match"),
        }
        let mut layers = self.lm.pass_through_cache();
        self.lm.forward_embeds(
            &embeds,
            &first.vision_expert_span(),
            &first.position_ids,
            &mut layers,
            None,
        )
    }

    /// `embeds` `[B, L, hidden]` with positions `span` replaced by the image embeddings `img` `[B, span, hidden]`,
    /// moved to the first layer's device in the model dtype.
    fn insert_image(&self, embeds: &Tensor, span: Range<usize>, img: &Tensor) -> Result<Tensor> {
        let l = embeds.dim(1)?;
        let before = embeds.narrow(1, 0, span.start)?;
        let after = embeds.narrow(1, span.end, l - span.end)?;
        let mut img = img.to_dtype(self.dtype)?;
        if self.place.vision != self.place.layers[0] {
            img = self.place.transfer(&img, self.place.layers[0])?;
        }
        Tensor::cat(&[&before, &img, &after], 1)
    }

    /// Hidden states `[N, hidden]` → f32 logits `[N, vocab]`.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.lm.logits(h)
    }

    /// One chunk of a prefill: the prompt's positions after those in `cache` up to `end` (the same arguments as
    /// [`Self::prefill`]; `image` is needed while the chunk overlaps the image span). Returns the last
    /// position's f32 logits `[V]` once `end` is the prompt's end, else `None`. A prompt run in chunks gives the
    /// cache and logits of one run at once, up to rounding: attention over the cached chunks is the same causal
    /// attention.
    pub fn prefill_chunk(
        &self,
        prompt: &PromptInput,
        end: usize,
        image: Option<&Tensor>,
        cross: Option<&Tensor>,
        cache: &mut Cache,
    ) -> Result<Option<Tensor>> {
        let h = self.run_prompt(prompt, end, image, cross, cache, None)?;
        if end < prompt.input_ids.len() {
            return Ok(None);
        }
        let l = h.dim(0)?;
        Ok(Some(self.lm.logits(&h.narrow(0, l - 1, 1)?)?.squeeze(0)?))
    }

    /// [`Self::prefill`] up to the final norm, for the positions from the cache's end to `end`: hidden states
    /// `[L, hidden]` of the positions run.
    fn run_prompt(
        &self,
        prompt: &PromptInput,
        end: usize,
        image: Option<&Tensor>,
        cross: Option<&Tensor>,
        cache: &mut Cache,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let start = cache.len();
        let total = prompt.input_ids.len();
        if start >= end || end > total || prompt.input_ids[..start] != cache.tokens[..] {
            candle_core::bail!(
                "the cache ({start} tokens) is not a proper prefix of the prompt's first {end} of {total} tokens"
            );
        }
        if self.cross_vision.is_some() {
            if start == 0 {
                let enc = cross
                    .ok_or_else(|| candle_core::Error::Msg("CogAgent needs an image".into()))?;
                self.lm.set_cross(&mut cache.layers, enc)?;
            } else if !self.lm.has_cross(&cache.layers) {
                candle_core::bail!("CogAgent's cache has no cross-encoder keys to continue from");
            }
        }
        let mut embeds = self.lm.embed(&prompt.input_ids[start..end])?;
        let span = prompt
            .image_span
            .as_ref()
            .filter(|s| s.end > start && s.start < end);
        match (span, image) {
            (Some(span), None) if span.start < start => {
                candle_core::bail!("the cache ends inside the image ({start} of {span:?})")
            }
            (Some(span), Some(img)) => {
                let n = img.dim(1)?;
                if n != span.len() {
                    candle_core::bail!(
                        "image gives {n} embeddings but the prompt has {} image slots",
                        span.len()
                    );
                }
                // The image rows this chunk holds.
                let (lo, hi) = (span.start.max(start), span.end.min(end));
                let rows = img.narrow(1, lo - span.start, hi - lo)?;
                embeds = self.insert_image(&embeds, lo - start..hi - start, &rows)?;
            }
            (Some(_), None) => {
                candle_core::bail!("the prompt has image slots but no image was encoded")
            }
            (None, Some(_)) if prompt.image_span.is_none() => {
                candle_core::bail!("an image was encoded but the prompt has no image slots")
            }
            // No image, or an image whose span is already cached.
            (None, _) => {}
        }
        // The vision expert's span within this chunk.
        let expert = prompt
            .vision_expert_span()
            .map(|s| s.start.clamp(start, end) - start..s.end.clamp(start, end) - start)
            .filter(|s| !s.is_empty());
        let positions = &prompt.position_ids[start..end];
        let h = self
            .lm
            .forward_embeds(&embeds, &expert, positions, &mut cache.layers, hidden)?;
        cache
            .tokens
            .extend_from_slice(&prompt.input_ids[start..end]);
        cache.positions.extend_from_slice(positions);
        h.squeeze(0)
    }

    /// One decode step: a language token at the next position. Returns f32 logits `[V]`. The same computation as
    /// a row of [`Self::step_batch`], so a sequence decodes to the same tokens alone or in a batch.
    pub fn step(&self, token: u32, cache: &mut Cache) -> Result<Tensor> {
        self.step_batch(&[token], &mut [cache])?.squeeze(0)
    }

    /// One decode step for several sequences at once: `tokens[i]` continues `caches[i]`. The linear layers and
    /// `lm_head` run once over all the tokens; attention runs per sequence over its own cache. Returns f32
    /// logits `[B, V]`.
    pub fn step_batch(&self, tokens: &[u32], caches: &mut [&mut Cache]) -> Result<Tensor> {
        if tokens.len() != caches.len() || tokens.is_empty() {
            candle_core::bail!(
                "a batched decode step needs one token per cache ({} tokens, {} caches)",
                tokens.len(),
                caches.len()
            );
        }
        if caches.iter().any(|c| c.is_empty()) {
            candle_core::bail!("a decode step needs a prefilled cache");
        }
        let positions: Vec<u32> = caches.iter().map(|c| c.last_position() + 1).collect();
        let embeds = self.lm.embed(tokens)?;
        let mut layers: Vec<&mut [LayerCache]> =
            caches.iter_mut().map(|c| c.layers.as_mut_slice()).collect();
        let logits = self.lm.decode_rows(&embeds, &positions, &mut layers)?;
        for ((cache, &token), &position) in caches.iter_mut().zip(tokens).zip(&positions) {
            cache.tokens.push(token);
            cache.positions.push(position);
        }
        Ok(logits)
    }
}
