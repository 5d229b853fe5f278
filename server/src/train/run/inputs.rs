//! A training example as the model takes it: the prompt, its labels and the image, and the loss over a batch.

use super::*;

/// Everything needed to turn an example into model inputs.
pub struct Inputs {
    pub cfg: Config,
    pub family: Family,
    pub version: PromptVersion,
    pub tokenizer: Tokenizer,
    pub device: Device,
}

/// One prepared training example: labelled ids and pixels.
pub struct Prepared {
    pub labeled: LabeledInput,
    pub pixels: Tensor,
    pub cross_pixels: Option<Tensor>,
}

impl Inputs {
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// The prompt of round `round` of `ex` (its earlier rounds as history).
    pub fn prompt(&self, ex: &Example, round: usize) -> anyhow::Result<(PromptInput, String)> {
        let (history, query, answer) = ex.round(round);
        let text = prompt_text(self.family, self.version.into(), &history, query);
        let ids = self.encode(&text)?;
        let p = PromptInput::new(
            self.cfg.bos_token_id,
            self.cfg.pad_token_id(),
            Some(self.cfg.image_tokens()),
            &ids,
        );
        Ok((p, answer.to_string()))
    }

    /// The image's pixels for the vision tower and (CogAgent) the cross encoder.
    pub fn pixels(&self, path: &Path) -> anyhow::Result<(Tensor, Option<Tensor>)> {
        let img =
            image::open(path).with_context(|| format!("cannot read image {}", path.display()))?;
        let px = preprocess::pixel_values(&img, self.cfg.vision_config.image_size, &self.device)?;
        let cross = match self.cfg.cross() {
            Some(c) => Some(preprocess::pixel_values(&img, c.image_size, &self.device)?),
            None => None,
        };
        Ok((px, cross))
    }

    pub fn prepare(&self, ex: &Example, round: usize) -> anyhow::Result<Prepared> {
        let (prompt, answer) = self.prompt(ex, round)?;
        let answer_ids = self.encode(&answer)?;
        let labeled = LabeledInput::new(prompt, &answer_ids, self.cfg.eos());
        let (pixels, cross_pixels) = self.pixels(&ex.image)?;
        Ok(Prepared {
            labeled,
            pixels,
            cross_pixels,
        })
    }

    /// Loads the tokenizer and config of `model` and picks the prompt version (`version` or the checkpoint's
    /// default, as in serving).
    pub fn new(
        model: &Path,
        tokenizer: Option<&Path>,
        version: Option<PromptVersion>,
        device: Device,
    ) -> anyhow::Result<Self> {
        let cfg = Config::from_file(&model.join("config.json"))?;
        let tokenizer = load_tokenizer(&find_tokenizer(model, tokenizer)?)?;
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let version = version.unwrap_or_else(|| default_version(&name, &cfg));
        Ok(Self {
            family: cfg.family(),
            cfg,
            version,
            tokenizer,
            device,
        })
    }
}

/// The loss and teacher-forced results of one example.
pub struct Scored {
    pub loss: Tensor,
    /// Answer tokens (EOS included).
    pub tokens: usize,
    /// Every answer token (and EOS) is the argmax: greedy decoding would give exactly this answer.
    pub exact: bool,
}

/// The mean loss of `batch`: one batched forward when the examples allow it (CogVLM, one image span), else
/// the sum of [`score`]s.
pub(super) fn batch_loss(m: &TrainModel, batch: &[Prepared], pad: u32) -> anyhow::Result<Tensor> {
    let labeled: Vec<&LabeledInput> = batch.iter().map(|p| &p.labeled).collect();
    if !m.model.family().has_cross() && batchable(&labeled) {
        let pixels: Vec<&Tensor> = batch.iter().map(|p| &p.pixels).collect();
        let images = m.model.encode_image(&Tensor::cat(&pixels, 0)?)?;
        let with_image = labeled.iter().all(|l| l.input.image_span.is_some());
        let images = with_image.then_some(&images);
        return Ok(forward_loss_batch(&m.model, &labeled, images, pad)?.loss);
    }
    let mut sum: Option<Tensor> = None;
    for p in batch {
        let s = score(m, p)?.loss;
        sum = Some(match sum {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    Ok((sum.context("empty batch")? / batch.len() as f64)?)
}

/// Forward and loss of one example through `m`.
pub fn score(m: &TrainModel, p: &Prepared) -> anyhow::Result<Scored> {
    let embeds = m.model.encode_image(&p.pixels)?;
    let cross = match &p.cross_pixels {
        Some(px) => Some(m.model.encode_cross(px)?),
        None => None,
    };
    let step = forward_loss(&m.model, &p.labeled, Some(&embeds), cross.as_ref())?;
    let targets = p.labeled.loss_targets();
    let argmax = step.logits.argmax(1)?.to_vec1::<u32>()?;
    Ok(Scored {
        loss: step.loss,
        tokens: targets.len(),
        exact: argmax == targets,
    })
}

/// A new adapter for `cfg` with `config`'s rank, alpha and targets: PEFT's initialisation (`A`
/// Kaiming-uniform, `B` zero) on every targeted linear layer, drawn from `seed`.
pub fn new_adapter(config: LoraConfig, cfg: &Config, seed: u64) -> anyhow::Result<Adapter> {
    let targets = config.targets()?;
    let layers = target_linears(cfg, &targets);
    ensure!(
        !layers.is_empty(),
        "no linear layer of this checkpoint matches the targets {targets:?}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let r = config.r;
    let mut modules = std::collections::BTreeMap::new();
    for (name, [out, inp]) in layers {
        // kaiming_uniform_(a = √5) on [r, in]: U(−1/√in, 1/√in).
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..r * inp)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(a, (r, inp), &Device::Cpu)?;
        let b = Tensor::zeros((out, r), DType::F32, &Device::Cpu)?;
        modules.insert(name, LoraPair { a, b });
    }
    Ok(Adapter { config, modules })
}
