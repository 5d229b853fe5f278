//! Runs a directory of reference training steps (the layout of `fixtures/training/README.md`: `index.json`,
//! `<model>/adapter/`, `<model>/<example>.{json,safetensors}`; models, images and the tokenizer beside it in
//! `../models`, `../images`, `../tokenizer`) and reports one check per line. Each example is rebuilt from its own
//! fields (prompt, history, query, answer): the stored ids are what it must reproduce, not its input. Nothing
//! about the particular examples is hard-coded.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;

use super::loss::{forward_loss, LabeledInput};
use super::{load_model, TrainModel};
use crate::fixture::{
    get, history_field, ids_field, load_st, open_image, record_entry, rel_l2, str_field, Check,
    Recorder,
};
use crate::generate::{default_version, load_tokenizer};
use crate::model::config::Config;
use crate::model::lora::Adapter;
use crate::model::preprocess;
use crate::model::prompt::{prompt_text, vision_expert_mask, PromptInput};
use protocol::PromptVersion;

/// The tolerances of the fixtures' README (f32 on the CPU).
pub mod tolerance {
    pub const LOSS: f64 = 5e-5;
    pub const NLL: f64 = 1e-4;
    pub const LOGITS: f64 = 5e-4;
    pub const VISION: f64 = 1e-4;
    pub const GRAD_REL_L2: f64 = 1e-4;
    pub const FROBENIUS_REL: f64 = 1e-5;
    /// Column sums: `abs ≤ COL_SUM_ABS + COL_SUM_REL · |reference|`.
    pub const COL_SUM_ABS: f64 = 1e-6;
    pub const COL_SUM_REL: f64 = 1e-4;
    /// Per-channel pixel sums (each off-by-one byte moves one by ~0.015).
    pub const PIXEL_SUM: f64 = 1e-3;
}

/// Largest |a − b| over all elements, in f64.
fn max_abs(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    anyhow::ensure!(
        a.elem_count() == b.elem_count(),
        "shape mismatch {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f64>()?)
}

fn scalar(t: &Tensor) -> anyhow::Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .flatten_all()?
        .get(0)?
        .to_scalar::<f64>()?)
}

fn i64s(t: &Tensor) -> anyhow::Result<Vec<i64>> {
    Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)
}

impl Recorder<'_> {
    fn at_most(&mut self, name: &str, what: &str, value: anyhow::Result<f64>, tol: f64) {
        match value {
            Ok(v) => self.check(name, v <= tol, format!("{what} {v:.2e} (≤ {tol:.1e})")),
            Err(e) => self.check(name, false, format!("error: {e:#}")),
        }
    }
}

/// The training fixture runner.
pub struct TrainingRunner {
    dir: PathBuf,
    index: Value,
    device: Device,
}

impl TrainingRunner {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("index.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (expected a training fixture directory)",
                path.display()
            )
        })?;
        let index: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            device: Device::Cpu,
        })
    }

    /// The index's examples.
    pub fn examples(&self) -> Vec<Value> {
        self.index
            .get("examples")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Every check of one example (an error inside a step becomes a failed check, never a panic).
    pub fn run_example(&self, entry: &Value, sink: &mut dyn FnMut(&Check)) -> Vec<Check> {
        record_entry(entry, sink, |rec| self.example_inner(entry, rec))
    }

    /// A path the README gives relative to the fixture directory.
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn example_inner(&self, entry: &Value, rec: &mut Recorder) -> anyhow::Result<()> {
        let f = self.read_example(entry)?;
        let example = check_inputs(&f, rec)?;
        let (pixels, cross_pixels) = self.check_pixels(&f, rec)?;
        self.lora_step(&f, &pixels, cross_pixels.as_ref(), &example, rec)?;
        if f.data.contains_key("base_loss") {
            self.full_step(
                &f.model_dir,
                &pixels,
                cross_pixels.as_ref(),
                &example,
                &f.data,
                rec,
            )?;
        }
        Ok(())
    }

    /// The example's JSON, its tensors, and the model, adapter, image, tokenizer and template it names.
    fn read_example(&self, entry: &Value) -> anyhow::Result<FixtureExample> {
        let ex: Value = {
            let p = self.path(str_field(entry, "json")?);
            serde_json::from_str(
                &std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{} is not JSON", p.display()))?
        };
        let data = load_st(&self.path(str_field(entry, "file")?))?;
        let model_name = str_field(&ex, "model")?;
        let model_dir = match ex.get("model_dir").and_then(Value::as_str) {
            Some(d) if self.path(d).is_dir() => self.path(d),
            _ => self.dir.join("..").join("models").join(model_name),
        };
        let adapter_dir = self.path(
            entry
                .get("adapter_dir")
                .or_else(|| ex.get("adapter_dir"))
                .and_then(Value::as_str)
                .context("no adapter_dir")?,
        );
        let image_path = self
            .dir
            .join("..")
            .join("images")
            .join(format!("{}.png", str_field(&ex, "image")?));
        let tokenizer = load_tokenizer(&self.dir.join("../tokenizer/tokenizer.json"))?;
        let cfg = Config::from_file(&model_dir.join("config.json"))?;
        let version: PromptVersion = match ex.get("template_version").and_then(Value::as_str) {
            Some(v) => v.parse()?,
            None => default_version(model_name, &cfg),
        };
        Ok(FixtureExample {
            ex,
            data,
            model_dir,
            adapter_dir,
            image_path,
            tokenizer,
            cfg,
            version,
        })
    }

    /// The pixels of both towers, their channel sums checked; (low-resolution, cross).
    fn check_pixels(
        &self,
        f: &FixtureExample,
        rec: &mut Recorder,
    ) -> anyhow::Result<(Tensor, Option<Tensor>)> {
        let img = open_image(&f.image_path)?;
        let pixels = preprocess::pixel_values(&img, f.cfg.vision_config.image_size, &self.device)?;
        let cross_pixels = match f.cfg.cross() {
            Some(c) => Some(preprocess::pixel_values(&img, c.image_size, &self.device)?),
            None => None,
        };
        for (key, px) in [
            ("pixel_values_channel_sum", Some(&pixels)),
            ("cross_pixel_values_channel_sum", cross_pixels.as_ref()),
        ] {
            if let (Some(px), Ok(want)) = (px, get(&f.data, key)) {
                let sums = px.squeeze(0)?.to_dtype(DType::F64)?.sum((1, 2))?;
                rec.at_most(key, "max |Δ|", max_abs(&sums, want), tolerance::PIXEL_SUM);
            }
        }
        Ok((pixels, cross_pixels))
    }

    /// The LoRA step: the adapter loaded as a user's would be, its pairs as Vars; the tower's output, the loss,
    /// the answer's logits and every LoRA gradient against the recorded ones.
    fn lora_step(
        &self,
        f: &FixtureExample,
        pixels: &Tensor,
        cross_pixels: Option<&Tensor>,
        example: &LabeledInput,
        rec: &mut Recorder,
    ) -> anyhow::Result<()> {
        let data = &f.data;
        let adapter = Adapter::load(&f.adapter_dir)?;
        let started = Instant::now();
        let lora = load_model(&f.model_dir, &self.device, false, Some(&adapter))?;
        let (embeds, step) = run_step(&lora, pixels, cross_pixels, example)?;
        let grads = step.loss.backward()?;
        let took = started.elapsed().as_secs_f64();
        rec.at_most(
            "lora_vision_output",
            "max |Δ|",
            max_abs(&embeds.squeeze(0)?, get(data, "lora_vision_output")?),
            tolerance::VISION,
        );
        check_loss(rec, "loss", &step.loss, get(data, "loss")?, took)?;
        let (lse, nll) = logsumexp_and_nll(&step.logits, &example.loss_targets())?;
        for (name, ours, tol) in [
            ("per_token_nll", &nll, tolerance::NLL),
            ("answer_logits_logsumexp", &lse, tolerance::NLL),
            ("answer_logits", &step.logits, tolerance::LOGITS),
        ] {
            rec.at_most(name, "max |Δ|", max_abs(ours, get(data, name)?), tol);
        }
        let ours: BTreeSet<&str> = lora.lora.iter().map(|(k, _)| k.as_str()).collect();
        let theirs: BTreeSet<&str> = data
            .keys()
            .filter_map(|k| k.strip_prefix("lora_grad."))
            .collect();
        rec.equal(
            "lora_keys",
            &ours.iter().collect::<Vec<_>>(),
            &theirs.iter().collect::<Vec<_>>(),
        );
        for (key, var) in &lora.lora {
            let name = format!("lora_grad.{key}");
            let value = match (grads.get(var.as_tensor()), data.get(&name)) {
                (Some(g), Some(want)) => rel_l2(g, want),
                (None, _) => Err(anyhow::anyhow!("no gradient reached it")),
                (_, None) => Err(anyhow::anyhow!("the fixture has no {name}")),
            };
            rec.at_most(&name, "rel-L2", value, tolerance::GRAD_REL_L2);
        }
        Ok(())
    }

    /// Full fine-tuning: the base model (no adapter) with every weight a Var; the recorded gradients.
    fn full_step(
        &self,
        model_dir: &Path,
        pixels: &Tensor,
        cross_pixels: Option<&Tensor>,
        example: &LabeledInput,
        data: &HashMap<String, Tensor>,
        rec: &mut Recorder,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let full = load_model(model_dir, &self.device, true, None)?;
        let (_, step) = run_step(&full, pixels, cross_pixels, example)?;
        let grads = step.loss.backward()?;
        let took = started.elapsed().as_secs_f64();
        check_loss(rec, "base_loss", &step.loss, get(data, "base_loss")?, took)?;
        if let Ok(want) = get(data, "base_answer_logits_logsumexp") {
            let (lse, _) = logsumexp_and_nll(&step.logits, &example.loss_targets())?;
            rec.at_most(
                "base_answer_logits_logsumexp",
                "max |Δ|",
                max_abs(&lse, want),
                tolerance::NLL,
            );
        }
        let grad_of = |param: &str| -> anyhow::Result<Tensor> {
            let var = full
                .weights
                .get(param)
                .with_context(|| format!("the checkpoint has no {param}"))?;
            grads
                .get(var.as_tensor())
                .cloned()
                .context("no gradient reached it")
        };
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            if let Some(param) = name.strip_prefix("full_grad.") {
                let value = grad_of(param).and_then(|g| rel_l2(&g, &data[name]));
                rec.at_most(name, "rel-L2", value, tolerance::GRAD_REL_L2);
            }
        }
        // Parameters recorded as summaries (lm_head: rows, row norms, column sums, Frobenius norm).
        let summarized: BTreeSet<&str> = data
            .keys()
            .filter_map(|k| k.strip_prefix("full_grad_frobenius."))
            .collect();
        for param in summarized {
            match grad_of(param) {
                Ok(g) => check_grad_summary(rec, param, &g.to_dtype(DType::F64)?, data)?,
                Err(e) => rec.check(&format!("full_grad.{param}"), false, format!("{e:#}")),
            }
        }
        Ok(())
    }
}

/// What a training example of the fixture names, read.
struct FixtureExample {
    ex: Value,
    data: HashMap<String, Tensor>,
    model_dir: PathBuf,
    adapter_dir: PathBuf,
    image_path: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    cfg: Config,
    version: PromptVersion,
}

/// The prompt text, its ids, the answer's ids and every integer input (ids, token types, positions, expert
/// mask, labels, loss positions and targets) against the recorded ones; the labelled input they make.
fn check_inputs(f: &FixtureExample, rec: &mut Recorder) -> anyhow::Result<LabeledInput> {
    let (ex, cfg) = (&f.ex, &f.cfg);
    let encode = |text: &str| -> anyhow::Result<Vec<u32>> {
        Ok(f.tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?
            .get_ids()
            .to_vec())
    };
    let text = prompt_text(
        cfg.family(),
        f.version.into(),
        &history_field(ex),
        str_field(ex, "query")?,
    );
    rec.check(
        "prompt_text",
        text == str_field(ex, "prompt_text")?,
        format!("{text:?}"),
    );
    let text_ids = encode(&text)?;
    rec.equal(
        "prompt_text_ids",
        &text_ids,
        &ids_field(ex, "prompt_text_ids")?,
    );
    let answer_ids = encode(str_field(ex, "answer")?)?;
    let prompt = PromptInput::new(
        cfg.bos_token_id,
        cfg.pad_token_id(),
        Some(cfg.image_tokens()),
        &text_ids,
    );
    let example = LabeledInput::new(prompt, &answer_ids, cfg.eos());
    rec.equal(
        "answer_ids_with_eos",
        &example.input.input_ids[example.prompt_len..],
        &ids_field(ex, "answer_ids_with_eos")?,
    );
    let as_i64 = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let types: Vec<i64> = example
        .input
        .token_types
        .iter()
        .map(|&t| t as i64)
        .collect();
    let expert: Vec<i64> = vision_expert_mask(&example.input.token_types)
        .iter()
        .map(|&m| m as i64)
        .collect();
    let positions: Vec<i64> = example.loss_positions().iter().map(|&p| p as i64).collect();
    let int_checks: [(&str, Vec<i64>); 8] = [
        ("input_ids", as_i64(&example.input.input_ids)),
        ("token_type_ids", types),
        ("attention_mask", vec![1; example.input.input_ids.len()]),
        ("position_ids", as_i64(&example.input.position_ids)),
        ("vision_expert_mask", expert),
        ("labels", example.labels.clone()),
        ("loss_positions", positions),
        ("loss_targets", as_i64(&example.loss_targets())),
    ];
    for (name, ours) in int_checks {
        rec.equal(name, &ours, &i64s(get(&f.data, name)?)?);
    }
    Ok(example)
}

/// A step's loss against the recorded `want`, with how long the load, forward and backward took.
fn check_loss(
    rec: &mut Recorder,
    name: &str,
    loss: &Tensor,
    want: &Tensor,
    took: f64,
) -> anyhow::Result<()> {
    let (loss, want) = (scalar(loss)?, scalar(want)?);
    rec.check(
        name,
        (loss - want).abs() <= tolerance::LOSS,
        format!(
            "{loss:.7} vs {want:.7}, |Δ| {:.2e} (≤ {:.1e}; load + forward + backward {took:.2} s)",
            (loss - want).abs(),
            tolerance::LOSS
        ),
    );
    Ok(())
}

/// A parameter whose gradient the fixture keeps as summaries (`g` in f64): some rows, the row norms, the
/// column sums and the Frobenius norm.
fn check_grad_summary(
    rec: &mut Recorder,
    param: &str,
    g: &Tensor,
    data: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    if let (Ok(idx), Ok(rows)) = (
        get(data, &format!("full_grad_rows_index.{param}")),
        get(data, &format!("full_grad_rows.{param}")),
    ) {
        let ours = g.index_select(&idx.to_dtype(DType::U32)?, 0)?;
        rec.at_most(
            &format!("full_grad_rows.{param}"),
            "rel-L2",
            rel_l2(&ours, rows),
            tolerance::GRAD_REL_L2,
        );
    }
    if let Ok(norms) = get(data, &format!("full_grad_row_norms.{param}")) {
        let ours = g.sqr()?.sum(D::Minus1)?.sqrt()?;
        rec.at_most(
            &format!("full_grad_row_norms.{param}"),
            "rel-L2",
            rel_l2(&ours, norms),
            tolerance::GRAD_REL_L2,
        );
    }
    if let Ok(sums) = get(data, &format!("full_grad_col_sum.{param}")) {
        let check = col_sum_check(&g.sum(0)?, &sums.to_dtype(DType::F64)?)?;
        rec.check(&format!("full_grad_col_sum.{param}"), check.0, check.1);
    }
    let want = scalar(get(data, &format!("full_grad_frobenius.{param}"))?)?;
    let ours = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    let rel = (ours - want).abs() / want.abs().max(f64::MIN_POSITIVE);
    rec.at_most(
        &format!("full_grad_frobenius.{param}"),
        "rel",
        Ok(rel),
        tolerance::FROBENIUS_REL,
    );
    Ok(())
}

/// The column sums of an output projection's gradient under a softmax cross-entropy are zero analytically (each
/// softmax row sums to one), so the reference's stored values are its own f32 rounding noise. A column sum passes
/// within the README's `1e-6 + 1e-4·|x|` of the reference, or, where the reference is zero up to that noise
/// (every |x| < 1e-5), when ours is zero within the README's absolute `1e-6`: an exact computation cannot
/// reproduce another one's rounding noise. The detail says which rule decided.
fn col_sum_check(ours: &Tensor, want: &Tensor) -> anyhow::Result<(bool, String)> {
    let allowance = ((want.abs()? * tolerance::COL_SUM_REL)? + tolerance::COL_SUM_ABS)?;
    let worst = (ours - want)?
        .abs()?
        .broadcast_div(&allowance)?
        .max(0)?
        .to_scalar::<f64>()?;
    let max = max_abs(ours, want)?;
    let ours_max = ours.abs()?.max(0)?.to_scalar::<f64>()?;
    let theirs_max = want.abs()?.max(0)?.to_scalar::<f64>()?;
    let near_zero = theirs_max < 1e-5;
    let ok = worst <= 1.0 || (near_zero && ours_max <= tolerance::COL_SUM_ABS);
    let rule = if worst <= 1.0 {
        "within 1e-6 + 1e-4·|x| of the reference"
    } else if ok {
        "zero analytically: ours within 1e-6 of it, the reference's f32 noise beyond"
    } else {
        "beyond 1e-6 + 1e-4·|x|"
    };
    Ok((
        ok,
        format!(
            "max |Δ| {max:.2e} (worst at {worst:.2} of its allowance), max |ours| {ours_max:.1e}, \
             max |reference| {theirs_max:.1e}: {rule}"
        ),
    ))
}

/// Encodes the image(s) with `m`'s towers (recording gradients where `m` holds Vars) and runs the training
/// forward and loss. Returns the image embeddings and the step.
fn run_step(
    m: &TrainModel,
    pixels: &Tensor,
    cross_pixels: Option<&Tensor>,
    example: &LabeledInput,
) -> anyhow::Result<(Tensor, super::loss::Step)> {
    let embeds = m.model.encode_image(pixels)?;
    let cross = match cross_pixels {
        Some(px) => Some(m.model.encode_cross(px)?),
        None => None,
    };
    let step = forward_loss(&m.model, example, Some(&embeds), cross.as_ref())?;
    Ok((embeds, step))
}

/// Per row of f32 `logits` `[N, V]`: logsumexp and `logsumexp − logit[target]`, both in f64 (as the fixture
/// computed them from its f32 logits).
fn logsumexp_and_nll(logits: &Tensor, targets: &[u32]) -> anyhow::Result<(Tensor, Tensor)> {
    let x = logits.to_dtype(DType::F64)?.detach();
    let max = x.max_keepdim(D::Minus1)?;
    let lse = (x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let idx = Tensor::new(targets, x.device())?.unsqueeze(1)?;
    let target = x.gather(&idx, 1)?;
    let nll = (&lse - target)?.squeeze(1)?;
    Ok((lse.squeeze(1)?, nll))
}

/// Runs every example of the training fixture directory `dir` (those whose id contains `filter`), sending each
/// check to `sink`; returns (passed, failed).
pub fn run_all(
    dir: &Path,
    filter: Option<&str>,
    sink: &mut dyn FnMut(&Check),
) -> anyhow::Result<(usize, usize)> {
    let runner = TrainingRunner::new(dir)?;
    let examples = runner.examples();
    if examples.is_empty() {
        bail!("{} lists no examples", dir.join("index.json").display());
    }
    let mut all = Vec::new();
    for entry in examples {
        let id = entry.get("id").and_then(Value::as_str).unwrap_or("");
        if filter.is_some_and(|f| !id.contains(f)) {
            continue;
        }
        all.extend(runner.run_example(&entry, sink));
    }
    let passed = all.iter().filter(|c| c.ok).count();
    Ok((passed, all.len() - passed))
}
