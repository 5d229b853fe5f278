//! CogVLM (17B) and CogAgent (18B) in candle, loaded from the THUDM Hugging Face checkpoints by their tensor
//! names. Layout after candle-transformers: `config` (serde `config.json`), `vision` (EVA2-CLIP-E + GLU adapter),
//! `cross_vision` (CogAgent's EVA2-CLIP-L), `language` (visual-expert decoder), `prompt` (templates, ids, position
//! ids, expert routing), `preprocess` (PIL-exact resize + CLIP normalisation), `weights` (files, checks), `quant`
//! (int8 / int4 linear layers).

pub mod config;
pub mod cross_vision;
pub mod language;
pub mod preprocess;
pub mod prompt;
pub mod quant;
pub mod vision;
pub mod weights;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use config::Config;
use cross_vision::CrossVisionModel;
use language::{LanguageModel, LayerCache};
use prompt::{ModelKind, PromptInput};
use quant::{Quant, QuantReport, Quantizer};
use vision::VisionModel;

/// The whole model: vision tower(s) and the decoder.
pub struct CogVlm {
    pub cfg: Config,
    vision: VisionModel,
    cross_vision: Option<CrossVisionModel>,
    lm: LanguageModel,
    device: Device,
    dtype: DType,
    quant: QuantReport,
}

/// Decoding state of one conversation.
pub struct Cache {
    layers: Vec<LayerCache>,
    /// Tokens in the cache.
    pub len: usize,
    /// RoPE position of the last cached token (the next one gets `+1`).
    pub last_position: u32,
    pub capacity: usize,
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
        let vision = VisionModel::new(cfg, vb.pp("model").pp("vision"))?;
        let cross_vision = match cfg.cross() {
            Some(c) => Some(CrossVisionModel::new(
                &c,
                vb.pp("model").pp("cross_vision"),
            )?),
            None => None,
        };
        let q = Quantizer::new(quant);
        let lm = LanguageModel::new(cfg, vb.clone(), &q)?;
        Ok(Self {
            cfg: cfg.clone(),
            vision,
            cross_vision,
            lm,
            device: vb.device().clone(),
            dtype: vb.dtype(),
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

    pub fn kind(&self) -> ModelKind {
        if self.cross_vision.is_some() {
            ModelKind::CogAgent
        } else {
            ModelKind::CogVlm
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `[1, 3, S, S]` pixels → `[1, n + 2, hidden]` image embeddings (boi, patches, eoi).
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(&pixels.to_dtype(self.dtype)?)
    }

    /// The ViT output with CLS, before the adapter (parity probes).
    pub fn vit_output(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.vit(&pixels.to_dtype(self.dtype)?)
    }

    /// CogAgent: `[1, 3, 1120, 1120]` pixels → encoder output `[1, 6400, cross_hidden]`.
    pub fn encode_cross(&self, pixels: &Tensor) -> Result<Tensor> {
        match &self.cross_vision {
            Some(cv) => cv.forward(&pixels.to_dtype(self.dtype)?),
            None => candle_core::bail!("this checkpoint has no cross-vision encoder"),
        }
    }

    pub fn new_cache(&self, capacity: usize) -> Cache {
        Cache {
            layers: self.lm.new_cache(capacity),
            len: 0,
            last_position: 0,
            capacity,
        }
    }

    /// Runs the whole prompt. `image` = embeddings from [`Self::encode_image`] for the prompt's image span;
    /// `cross` = CogAgent encoder output (required for CogAgent). `hidden` collects the reference's
    /// `output_hidden_states` (parity).
    pub fn prefill(
        &self,
        prompt: &PromptInput,
        image: Option<&Tensor>,
        cross: Option<&Tensor>,
        cache: &mut Cache,
        all_logits: bool,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Prefill> {
        let l = prompt.input_ids.len();
        if cache.len + l > cache.capacity {
            candle_core::bail!(
                "prompt of {l} tokens does not fit the cache of {} positions",
                cache.capacity
            );
        }
        if self.cross_vision.is_some() {
            let enc =
                cross.ok_or_else(|| candle_core::Error::Msg("CogAgent needs an image".into()))?;
            self.lm.set_cross(&mut cache.layers, enc)?;
        }
        let ids = Tensor::new(prompt.input_ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut embeds = self.lm.embed(&ids)?;
        match (&prompt.image_span, image) {
            (Some(span), Some(img)) => {
                let n = img.dim(1)?;
                if n != span.len() {
                    candle_core::bail!(
                        "image gives {n} embeddings but the prompt has {} image slots",
                        span.len()
                    );
                }
                let before = embeds.narrow(1, 0, span.start)?;
                let after = embeds.narrow(1, span.end, l - span.end)?;
                embeds = Tensor::cat(&[&before, &img.to_dtype(self.dtype)?, &after], 1)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                candle_core::bail!("the prompt has image slots but no image was encoded")
            }
            (None, Some(_)) => {
                candle_core::bail!("an image was encoded but the prompt has no image slots")
            }
        }
        let span = prompt.vision_expert_span();
        let h = self.lm.forward_embeds(
            &embeds,
            &span,
            &prompt.position_ids,
            &mut cache.layers,
            hidden,
        )?;
        cache.len += l;
        cache.last_position = *prompt.position_ids.last().unwrap_or(&0);
        let h = h.squeeze(0)?;
        let logits = if all_logits {
            self.lm.logits(&h)?
        } else {
            self.lm.logits(&h.narrow(0, l - 1, 1)?)?.squeeze(0)?
        };
        Ok(Prefill { logits })
    }

    /// One decode step: a language token at the next position. Returns f32 logits `[V]`.
    pub fn step(&self, token: u32, cache: &mut Cache) -> Result<Tensor> {
        if cache.len >= cache.capacity {
            candle_core::bail!("the cache of {} positions is full", cache.capacity);
        }
        let position = cache.last_position + 1;
        let ids = Tensor::new(&[token], &self.device)?.unsqueeze(0)?;
        let embeds = self.lm.embed(&ids)?;
        let h = self
            .lm
            .forward_embeds(&embeds, &None, &[position], &mut cache.layers, None)?;
        cache.len += 1;
        cache.last_position = position;
        self.lm.logits(&h.squeeze(0)?)?.squeeze(0)
    }
}
