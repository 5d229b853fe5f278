//! Runs a fixture directory of reference outputs (layout of `fixtures/README.md`: `cases.json`, `models/`,
//! `images/`, `vision/`, `cases/`, `tokenizer/`) against this implementation and reports one check per line.
//! Works for any fixture set with that layout; nothing about the particular cases is hard-coded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;

use crate::generate::{ChatRequest, LoadOptions, Pipeline, Prepared, Sampling};
use crate::model::preprocess;
use crate::model::prompt::{prompt_text, vision_expert_mask, PromptInput};
use crate::model::quant::Quant;
use crate::model::Cache;
use protocol::PromptVersion;

#[derive(Debug, Clone)]
pub struct Check {
    pub case: String,
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = if self.ok { "PASS" } else { "FAIL" };
        write!(f, "{tag} {} {}: {}", self.case, self.name, self.detail)
    }
}

/// Tolerances: rel-L2 ≤ 1e-4 in f32; 2e-2 against the f32 reference in bf16/f16.
pub fn rel_tolerance(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-4
    } else {
        2e-2
    }
}

/// Logit gap (logits have magnitude ~10) below which reduced precision may legitimately swap two tokens.
const NEAR_TIE: f32 = 0.25;

/// The near-tie gap for a run: [`NEAR_TIE`], or the quantization's wider one.
fn near_tie(quant: Quant) -> f32 {
    NEAR_TIE.max(quant.near_tie())
}

/// ‖a − b‖ / ‖b‖ over all elements, in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape mismatch {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    let num = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if den == 0.0 { num } else { num / den })
}

pub(crate) struct Recorder<'a> {
    pub(crate) case: String,
    pub(crate) out: Vec<Check>,
    pub(crate) sink: &'a mut dyn FnMut(&Check),
}

impl Recorder<'_> {
    pub(crate) fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let c = Check {
            case: self.case.clone(),
            name: name.to_string(),
            ok,
            detail: detail.into(),
        };
        (self.sink)(&c);
        self.out.push(c);
    }

    pub(crate) fn close(&mut self, name: &str, value: anyhow::Result<f64>, tol: f64) {
        match value {
            Ok(v) => self.check(name, v <= tol, format!("rel-L2 {v:.2e} (≤ {tol:.1e})")),
            Err(e) => self.check(name, false, format!("error: {e:#}")),
        }
    }

    pub(crate) fn equal<T: PartialEq + std::fmt::Debug>(
        &mut self,
        name: &str,
        ours: &[T],
        reference: &[T],
    ) {
        if ours == reference {
            self.check(name, true, format!("{} values identical", ours.len()));
        } else {
            let first = ours.iter().zip(reference).position(|(a, b)| a != b);
            self.check(
                name,
                false,
                format!(
                    "differ (ours {} values, reference {}; first difference at {:?}: {:?} vs {:?})",
                    ours.len(),
                    reference.len(),
                    first,
                    first.and_then(|i| ours.get(i)),
                    first.and_then(|i| reference.get(i))
                ),
            );
        }
    }
}

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v.get(key)
        .and_then(|x| x.as_str())
        .with_context(|| format!("case field {key:?} missing"))
}

pub(crate) fn ids_field(v: &Value, key: &str) -> anyhow::Result<Vec<u32>> {
    v.get(key)
        .and_then(|x| x.as_array())
        .with_context(|| format!("case field {key:?} missing"))?
        .iter()
        .map(|x| x.as_u64().map(|n| n as u32).context("non-integer id"))
        .collect()
}

pub(crate) fn history_field(v: &Value) -> Vec<(String, String)> {
    v.get("history")
        .and_then(|h| h.as_array())
        .map(|turns| {
            turns
                .iter()
                .filter_map(|t| {
                    let t = t.as_array()?;
                    Some((
                        t.first()?.as_str()?.to_string(),
                        t.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn load_st(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))
}

pub(crate) fn get<'a>(m: &'a HashMap<String, Tensor>, k: &str) -> anyhow::Result<&'a Tensor> {
    m.get(k)
        .with_context(|| format!("fixture tensor {k:?} missing"))
}

pub(crate) fn u32s(t: &Tensor) -> anyhow::Result<Vec<u32>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|x| x as u32)
        .collect())
}

pub(crate) fn open_image(path: &Path) -> anyhow::Result<image::DynamicImage> {
    image::open(path).with_context(|| format!("cannot open image {}", path.display()))
}

/// The fixture runner. Loads each model once.
pub struct Runner {
    dir: PathBuf,
    /// How the models load; its dtype is always set (the run's, f32 unless asked otherwise).
    opts: LoadOptions,
    dtype: DType,
    pipelines: HashMap<String, Pipeline>,
}

impl Runner {
    /// The runner of fixture directory `dir`, loading its models as `opts` says (device, placement,
    /// quantization). The reference values are f32: without a dtype the comparison is in f32.
    pub fn new(dir: &Path, mut opts: LoadOptions) -> anyhow::Result<Self> {
        opts.device.open()?;
        if opts.lora.is_some() {
            bail!("parity compares the fixtures' own weights: an adapter (--lora) does not apply");
        }
        let dtype = *opts.dtype.get_or_insert(DType::F32);
        opts.quant_vision &= opts.quant != Quant::Float;
        if !dir.join("cases.json").is_file() {
            bail!(
                "{} has no cases.json (expected a fixture directory)",
                dir.display()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            opts,
            dtype,
            pipelines: HashMap::new(),
        })
    }

    /// The runner on the CPU in `dtype`, float weights, one device.
    pub fn on_cpu(dir: &Path, dtype: DType) -> anyhow::Result<Self> {
        Self::new(
            dir,
            LoadOptions {
                dtype: Some(dtype),
                ..Default::default()
            },
        )
    }

    /// The loaded pipelines, by model folder (placement checks read their transfer counts).
    pub fn pipelines(&self) -> impl Iterator<Item = (&String, &Pipeline)> {
        self.pipelines.iter()
    }

    /// Loads the models with a quantized language model (and vision tower, when `vision`); its checks use
    /// [`Quant::logit_tolerance`] (and [`Quant::vision_tolerance`]).
    pub fn with_quant(mut self, quant: Quant, vision: bool) -> Self {
        self.opts.quant = quant;
        self.opts.quant_vision = vision && quant != Quant::Float;
        self
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The case of `cases.json` whose id is `id`.
    pub fn case(&self, id: &str) -> anyhow::Result<Value> {
        self.cases()?
            .into_iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            .with_context(|| format!("case {id} not in {}", self.dir.join("cases.json").display()))
    }

    pub fn cases(&self) -> anyhow::Result<Vec<Value>> {
        let path = self.dir.join("cases.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Ok(json
            .get("cases")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default())
    }

    /// The pipeline of `model_dir` in `dtype`, loaded on first use (keyed by the folder alone in the run's
    /// dtype, so placement checks find it by name).
    fn pipeline(&mut self, model_dir: &str, dtype: DType) -> anyhow::Result<&mut Pipeline> {
        let key = match dtype == self.dtype {
            true => model_dir.to_string(),
            false => format!("{model_dir}@{}", dtype_name(dtype)),
        };
        if !self.pipelines.contains_key(&key) {
            let dir = self.dir.join(model_dir);
            let tok = self.dir.join("tokenizer").join("tokenizer.json");
            let opts = LoadOptions {
                dtype: Some(dtype),
                tokenizer: tok.is_file().then_some(tok),
                ..self.opts.clone()
            };
            let p = Pipeline::load(&dir, &opts, &mut |_, _| {})?;
            self.pipelines.insert(key.clone(), p);
        }
        Ok(self.pipelines.get_mut(&key).expect("inserted above"))
    }

    /// Tokenizer checks from `tokenizer/tokenizer_checks.json` (fast-tokenizer ids where they differ).
    pub fn tokenizer_checks(&mut self, sink: &mut dyn FnMut(&Check)) -> anyhow::Result<Vec<Check>> {
        let path = self.dir.join("tokenizer").join("tokenizer_checks.json");
        let mut rec = Recorder {
            case: "tokenizer".into(),
            out: Vec::new(),
            sink,
        };
        if !path.is_file() {
            return Ok(rec.out);
        }
        let tok =
            crate::generate::load_tokenizer(&self.dir.join("tokenizer").join("tokenizer.json"))?;
        let items: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let mut ok = 0;
        let mut failures = Vec::new();
        for it in &items {
            let text = str_field(it, "text")?;
            let key = if it.get("fast_ids").is_some_and(|f| !f.is_null()) {
                "fast_ids"
            } else {
                "ids"
            };
            let want = ids_field(it, key)?;
            let got = tok
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .get_ids()
                .to_vec();
            if got == want {
                ok += 1;
            } else {
                failures.push(format!("{text:?}: {got:?} vs {want:?}"));
            }
        }
        rec.check(
            "encode",
            failures.is_empty(),
            if failures.is_empty() {
                format!("{ok}/{} strings identical", items.len())
            } else {
                failures.join("; ")
            },
        );
        Ok(rec.out)
    }

    /// Every check of one case (an error inside a step becomes a failed check, never a panic).
    pub fn run_case(&mut self, case: &Value, sink: &mut dyn FnMut(&Check)) -> Vec<Check> {
        let id = case
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        let mut rec = Recorder {
            case: id,
            out: Vec::new(),
            sink,
        };
        if let Err(e) = self.case_inner(case, &mut rec) {
            rec.check("run", false, format!("error: {e:#}"));
        }
        rec.out
    }

    /// How strictly this run judges: the vision towers within the dtype's tolerance, or the quantization's
    /// when they are quantized too; everything after them within the looser of that and the language model's.
    fn judging(&self, dtype: DType) -> Judging {
        let mut vtol = rel_tolerance(dtype);
        if self.opts.quant_vision {
            vtol = vtol.max(self.opts.quant.vision_tolerance());
        }
        Judging {
            vtol,
            tol: vtol.max(self.opts.quant.logit_tolerance()),
            quant_vision: self.opts.quant_vision,
            exact: dtype == DType::F32 && self.opts.quant == Quant::Float,
            tie: near_tie(self.opts.quant),
        }
    }

    fn case_inner(&mut self, case: &Value, rec: &mut Recorder) -> anyhow::Result<()> {
        // A case whose reference ran in bf16 (`"dtype": "bf16"`) runs in bf16 and is judged against it with
        // the bf16 budgets; the others run in the run's dtype against their f32 reference.
        let dtype = match case.get("dtype").and_then(Value::as_str) {
            Some("bf16") => DType::BF16,
            _ => self.dtype,
        };
        let judge = self.judging(dtype);
        let dir = self.dir.clone();
        let c = Case::read(case, &dir)?;
        let pipe = self.pipeline(&c.model_dir, dtype)?;
        check_prompt_text(pipe, case, &c, rec)?;
        if let (Some(img), Some(vfile)) =
            (&c.image, case.get("vision_file").and_then(|v| v.as_str()))
        {
            check_vision(
                pipe,
                case,
                &dir,
                img,
                &load_st(&dir.join(vfile))?,
                judge.vtol,
                rec,
            )?;
        }
        let generated = ids_field(case, "generated_ids")?;
        let req = c.request(generated.len());
        let prepared = pipe.prepare(&req)?;
        let mask = check_layout(&prepared.input, &c.data, rec)?;
        let (logits, cache) = check_prefill(
            pipe,
            &prepared,
            &c.data,
            &mask,
            generated.len(),
            &judge,
            rec,
        )?;
        check_decode(
            pipe,
            &prepared.input,
            &logits,
            cache,
            &generated,
            &c.data,
            judge.tol,
            rec,
        )?;
        let ctx = Generation {
            req: &req,
            input: &prepared.input,
            generated: &generated,
            margins: get(&c.data, "decode_margin")?.to_vec1::<f32>()?,
            judge: &judge,
        };
        check_generation(pipe, case, &ctx, rec)
    }
}

/// How strictly a run judges (see [`Runner::judging`]).
struct Judging {
    vtol: f64,
    tol: f64,
    quant_vision: bool,
    /// f32 and unquantized: tokens and argmaxes must match exactly.
    exact: bool,
    /// The top-2 gap under which a differing greedy choice is a near-tie.
    tie: f32,
}

/// One case's inputs and reference tensors.
struct Case {
    model_dir: String,
    version: PromptVersion,
    query: String,
    history: Vec<(String, String)>,
    image: Option<image::DynamicImage>,
    data: HashMap<String, Tensor>,
}

impl Case {
    fn read(case: &Value, dir: &Path) -> anyhow::Result<Self> {
        let image = match case.get("image_file").and_then(|v| v.as_str()) {
            Some(f) => Some(open_image(&dir.join(f))?),
            None => None,
        };
        Ok(Self {
            model_dir: str_field(case, "model_dir")?.to_string(),
            version: str_field(case, "template_version")?.parse()?,
            query: str_field(case, "query")?.to_string(),
            history: history_field(case),
            image,
            data: load_st(&dir.join(str_field(case, "case_file")?))?,
        })
    }

    /// The case as a greedy chat request of `new_tokens` tokens.
    fn request(&self, new_tokens: usize) -> ChatRequest {
        ChatRequest {
            image: self.image.clone(),
            history: self.history.clone(),
            query: self.query.clone(),
            version: Some(self.version),
            sampling: Sampling {
                max_new_tokens: Some(new_tokens),
                ..Sampling::greedy()
            },
        }
    }
}

/// Prompt text and ids.
fn check_prompt_text(
    pipe: &Pipeline,
    case: &Value,
    c: &Case,
    rec: &mut Recorder,
) -> anyhow::Result<()> {
    let text = prompt_text(
        pipe.model().family(),
        c.version.into(),
        &c.history,
        &c.query,
    );
    let want_text = str_field(case, "prompt_text")?;
    rec.check("prompt_text", text == want_text, format!("{text:?}"));
    // The text's ids as listed, else as they sit in the reference's input_ids (the CogVLM2 set).
    let want_ids = match case.get("prompt_text_ids") {
        Some(_) => ids_field(case, "prompt_text_ids")?,
        None => {
            let first =
                case.get("first_text_index")
                    .and_then(Value::as_u64)
                    .context("case field \"first_text_index\" missing")? as usize;
            u32s(get(&c.data, "input_ids")?)?
                .get(first..)
                .context("first_text_index is past the input ids")?
                .to_vec()
        }
    };
    rec.equal("prompt_text_ids", &pipe.encode_text(&text)?, &want_ids);
    Ok(())
}

/// Pixels and vision towers: the resize against Pillow's, pixel probes, the towers' outputs.
fn check_vision(
    pipe: &Pipeline,
    case: &Value,
    dir: &Path,
    img: &image::DynamicImage,
    vision: &HashMap<String, Tensor>,
    vtol: f64,
    rec: &mut Recorder,
) -> anyhow::Result<()> {
    let device = pipe.model().device().clone();
    let rgb = preprocess::to_rgb(img);
    let resized_files = case
        .get("resized_image_files")
        .and_then(|v| v.as_object())
        .cloned()
        .unwrap_or_default();
    let cross_size = pipe.model().cfg.cross().map(|c| c.image_size);
    let main_size = pipe.model().cfg.vision_config.image_size;
    for (key, size) in [
        ("pixel_values", Some(main_size)),
        ("cross_pixel_values", cross_size),
    ] {
        let Some(size) = size else { continue };
        let ours = preprocess::resize_bicubic(&rgb, size, size);
        if let Some(f) = resized_files.get(key).and_then(|v| v.as_str()) {
            check_resize(
                &ours,
                &open_image(&dir.join(f))?.to_rgb8(),
                &format!("{key}_resize_{size}"),
                rec,
            );
        }
        let px = preprocess::normalize(&ours, &Device::Cpu)?.flatten_all()?;
        if let (Ok(idx), Ok(vals)) = (
            get(vision, &format!("{key}_probe_index")),
            get(vision, &format!("{key}_probe_values")),
        ) {
            let got = px.index_select(&idx.to_dtype(DType::U32)?, 0)?;
            let max = (&got - vals)?.abs()?.max_all()?.to_scalar::<f32>()?;
            rec.check(
                &format!("{key}_probes"),
                max <= 1e-6,
                format!("max |Δ| {max:.1e} over {} probes", vals.dim(0)?),
            );
        }
    }
    let pixels = preprocess::pixel_values(img, main_size, &device)?;
    if let (Ok(idx), Ok(rows)) = (
        get(vision, "vit_output_rows_index"),
        get(vision, "vit_output_rows"),
    ) {
        let vit = pipe.model().vit_output(&pixels)?;
        let got = vit
            .squeeze(0)?
            .index_select(&idx.to_dtype(DType::U32)?.to_device(&device)?, 0)?;
        rec.close("vit_output_rows", rel_l2(&got, rows), vtol);
        // CogVLM2: the grid after the 2×2 convolution, before the adapter.
        if let Ok(conv) = get(vision, "conv_output") {
            let ours = pipe.model().vision_features(&vit)?.squeeze(0)?;
            rec.close("conv_output", rel_l2(&ours, conv), vtol);
        }
    }
    let embeds = pipe.model().encode_image(&pixels)?;
    rec.close(
        "vision_output",
        rel_l2(&embeds.squeeze(0)?, get(vision, "vision_output")?),
        vtol,
    );
    if let (Some(size), Ok(reference)) = (cross_size, get(vision, "cross_vision_output")) {
        let px = preprocess::pixel_values(img, size, &device)?;
        let enc = pipe.model().encode_cross(&px)?;
        rec.close(
            "cross_vision_output",
            rel_l2(&enc.squeeze(0)?, reference),
            vtol,
        );
    }
    Ok(())
}

/// Our bicubic resize against Pillow's: at most 1 apart in any byte.
fn check_resize(
    ours: &image::RgbImage,
    reference: &image::RgbImage,
    name: &str,
    rec: &mut Recorder,
) {
    let pairs = || ours.as_raw().iter().zip(reference.as_raw());
    let max = pairs().map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
    let same = pairs().filter(|(a, b)| a == b).count();
    rec.check(
        name,
        max <= 1 && ours.dimensions() == reference.dimensions(),
        format!(
            "max |Δu8| {max}, {same}/{} bytes identical",
            ours.as_raw().len()
        ),
    );
}

/// Prompt layout: ids, token types, positions and the vision-expert mask (returned for the argmax check).
fn check_layout(
    input: &PromptInput,
    data: &HashMap<String, Tensor>,
    rec: &mut Recorder,
) -> anyhow::Result<Vec<u32>> {
    rec.equal(
        "input_ids",
        &input.input_ids,
        &u32s(get(data, "input_ids")?)?,
    );
    let types: Vec<u32> = input.token_types.iter().map(|&t| t as u32).collect();
    rec.equal(
        "token_type_ids",
        &types,
        &u32s(get(data, "token_type_ids")?)?,
    );
    rec.equal(
        "position_ids",
        &input.position_ids,
        &u32s(get(data, "position_ids")?)?,
    );
    let mask: Vec<u32> = vision_expert_mask(&input.token_types)
        .iter()
        .map(|&m| m as u32)
        .collect();
    rec.equal(
        "vision_expert_mask",
        &mask,
        &u32s(get(data, "vision_expert_mask")?)?,
    );
    Ok(mask)
}

/// Full prompt forward: logits at every position and hidden states. Returns the logits (on the CPU) and the
/// cache, with room for `new_tokens` more.
fn check_prefill(
    pipe: &Pipeline,
    prepared: &Prepared,
    data: &HashMap<String, Tensor>,
    mask: &[u32],
    new_tokens: usize,
    judge: &Judging,
    rec: &mut Recorder,
) -> anyhow::Result<(Tensor, Cache)> {
    let input = &prepared.input;
    let tol = judge.tol;
    let mut cache = pipe.new_cache(input.input_ids.len() + new_tokens + 1);
    let mut hidden = Vec::new();
    let out = pipe.model().prefill(
        input,
        prepared.image.as_ref(),
        prepared.cross.as_ref(),
        &mut cache,
        true,
        Some(&mut hidden),
    )?;
    let logits = out.logits.to_device(&Device::Cpu)?;
    let l = logits.dim(0)?;
    rec.close(
        "logits_last",
        rel_l2(&logits.i(l - 1)?, get(data, "logits_last")?),
        tol,
    );
    rec.close(
        "logits_max",
        rel_l2(
            &logits.max_keepdim(1)?.squeeze(1)?,
            get(data, "logits_max")?,
        ),
        tol,
    );
    let lse = log_sum_exp_rows(&logits)?;
    rec.close(
        "logits_logsumexp",
        rel_l2(&lse, get(data, "logits_logsumexp")?),
        tol,
    );
    check_argmax(
        &logits,
        &u32s(get(data, "logits_argmax")?)?,
        mask,
        judge,
        rec,
    )?;
    if let (Ok(rows_idx), Ok(rows)) = (get(data, "hidden_rows_index"), get(data, "hidden_rows")) {
        let idx = rows_idx.to_dtype(DType::U32)?;
        let ours: Vec<Tensor> = hidden
            .iter()
            .map(|h| {
                h.squeeze(0)?
                    .index_select(&idx.to_device(h.device())?, 0)?
                    .to_device(&Device::Cpu)
            })
            .collect::<candle_core::Result<_>>()?;
        let ours = Tensor::stack(&ours, 0)?;
        rec.close("hidden_rows", rel_l2(&ours, rows), tol);
    }
    Ok((logits, cache))
}

/// Every position's argmax: equal in f32; in bf16/f16 or quantized a flip is only acceptable between near-ties
/// (the reference's choice must score within the near-tie gap of our maximum).
fn check_argmax(
    logits: &Tensor,
    want_argmax: &[u32],
    mask: &[u32],
    judge: &Judging,
    rec: &mut Recorder,
) -> anyhow::Result<()> {
    let l = logits.dim(0)?;
    let argmax: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    let flips = argmax
        .iter()
        .zip(want_argmax)
        .filter(|(a, b)| a != b)
        .count();
    if judge.exact {
        rec.check(
            "logits_argmax",
            flips == 0,
            format!("{flips}/{l} positions differ"),
        );
        return Ok(());
    }
    let (tie, quant_vision) = (judge.tie, judge.quant_vision);
    let idx = Tensor::new(want_argmax, &Device::Cpu)?.unsqueeze(1)?;
    let at_ref: Vec<f32> = logits.gather(&idx, 1)?.squeeze(1)?.to_vec1()?;
    let ours_max: Vec<f32> = logits.max_keepdim(1)?.squeeze(1)?.to_vec1()?;
    // With the vision tower quantized the image positions' logits follow its (looser) output: only
    // the text positions are judged.
    let judged: Vec<bool> = mask.iter().map(|&m| !quant_vision || m == 0).collect();
    let gaps: Vec<f32> = at_ref
        .iter()
        .zip(&ours_max)
        .zip(&judged)
        .map(|((r, m), &j)| if j { m - r } else { 0.0 })
        .collect();
    let hard = gaps.iter().filter(|&&g| g > tie).count();
    let widest = gaps.iter().copied().fold(0f32, f32::max);
    let scope = if quant_vision {
        format!(
            " at the {} text positions",
            judged.iter().filter(|&&j| j).count()
        )
    } else {
        String::new()
    };
    rec.check(
        "logits_argmax",
        hard == 0,
        format!(
            "{flips}/{l} positions differ, {hard}{scope} by more than a near-tie ({tie}; widest {widest:.3})"
        ),
    );
    Ok(())
}

/// Cached decoding, teacher-forced on the reference's tokens.
#[allow(clippy::too_many_arguments)]
fn check_decode(
    pipe: &Pipeline,
    input: &PromptInput,
    logits: &Tensor,
    mut cache: Cache,
    generated: &[u32],
    data: &HashMap<String, Tensor>,
    tol: f64,
    rec: &mut Recorder,
) -> anyhow::Result<()> {
    let top_idx = get(data, "decode_topk_indices")?.to_dtype(DType::U32)?;
    let top_val = get(data, "decode_topk_values")?;
    let want_pos = u32s(get(data, "decode_position_ids")?)?;
    let want_lse = get(data, "decode_logsumexp")?;
    let mut worst = 0f64;
    let mut worst_lse = 0f64;
    let mut positions = vec![*input.position_ids.last().unwrap_or(&0)];
    let mut step_logits = logits.i(logits.dim(0)? - 1)?;
    for s in 0..generated.len() {
        if s > 0 {
            step_logits = pipe
                .model()
                .step(generated[s - 1], &mut cache)?
                .to_device(&Device::Cpu)?;
            positions.push(cache.last_position());
        }
        let got = step_logits.index_select(&top_idx.i(s)?, 0)?;
        worst = worst.max(rel_l2(&got, &top_val.i(s)?)?);
        let lse = log_sum_exp_rows(&step_logits.unsqueeze(0)?)?;
        worst_lse = worst_lse.max(rel_l2(&lse, &want_lse.i(s..s + 1)?)?);
    }
    // The CogVLM sets list the position of each step's last input (step 0: the prompt's last); the CogVLM2 set
    // lists the position each generated token is fed at (one later). Which one a set uses shows in its first
    // entry.
    let prompt_last = positions[0];
    if want_pos.first() == Some(&(prompt_last + 1)) {
        positions.remove(0);
        positions.push(cache.last_position() + 1);
    }
    rec.equal("decode_position_ids", &positions, &want_pos);
    rec.close("decode_topk_logits", Ok(worst), tol);
    rec.close("decode_logsumexp", Ok(worst_lse), tol);
    Ok(())
}

/// What the free-running checks compare against.
struct Generation<'a> {
    req: &'a ChatRequest,
    input: &'a PromptInput,
    /// The reference's greedy tokens and, per step, its top-2 gap.
    generated: &'a [u32],
    margins: Vec<f32>,
    judge: &'a Judging,
}

impl Generation<'_> {
    /// Our tokens against the reference's: equal in f32, else equal up to the first near-tie.
    fn same_tokens(&self, rec: &mut Recorder, name: &str, got: &[u32]) {
        if self.judge.exact {
            rec.equal(name, got, self.generated);
            return;
        }
        let first = got.iter().zip(self.generated).position(|(a, b)| a != b);
        let ok = first.is_none_or(|i| self.margins.get(i).is_some_and(|&m| m < self.judge.tie));
        rec.check(
            name,
            ok,
            match first {
                None => "identical".to_string(),
                Some(i) => format!(
                    "first differs at step {i} where the reference's top-2 gap is {:.3}",
                    self.margins.get(i).copied().unwrap_or(f32::NAN)
                ),
            },
        );
    }
}

/// Free-running greedy generation through the real pipeline, from a fresh cache; then the same answer asked
/// as a follow-up (the earlier turns run first, as a user would have asked them, and the final question
/// continues from their cache instead of running the image and history again).
fn check_generation(
    pipe: &mut Pipeline,
    case: &Value,
    g: &Generation,
    rec: &mut Recorder,
) -> anyhow::Result<()> {
    let req = g.req;
    pipe.forget_image();
    let answer = pipe.generate_with(req, true, &mut |_| true)?;
    g.same_tokens(rec, "greedy_ids", &answer.generated_ids);
    let history = &req.history;
    if !history.is_empty() {
        pipe.forget_image();
        for t in 0..history.len() {
            let mut turn = req.clone();
            turn.history = history[..t].to_vec();
            turn.query = history[t].0.clone();
            turn.sampling.max_new_tokens = Some(4);
            pipe.generate_with(&turn, true, &mut |_| true)?;
        }
        let follow = pipe.generate_with(req, true, &mut |_| true)?;
        let image_end = g.input.image_span.as_ref().map_or(1, |s| s.end);
        rec.check(
            "follow_up_reuse",
            follow.reused_tokens >= image_end,
            format!(
                "{} of {} prompt tokens reused from the earlier turns",
                follow.reused_tokens, follow.prompt_tokens
            ),
        );
        g.same_tokens(rec, "follow_up_greedy_ids", &follow.generated_ids);
    }
    if g.judge.exact {
        let want = str_field(case, "generated_text_skip_special")
            .or_else(|_| str_field(case, "generated_text"))?;
        rec.check(
            "greedy_text",
            answer.text == want,
            format!("{:?}", answer.text),
        );
    }
    Ok(())
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// Row-wise log-sum-exp of `[R, V]` in f64.
fn log_sum_exp_rows(x: &Tensor) -> anyhow::Result<Tensor> {
    let x = x.to_dtype(DType::F64)?;
    let m = x.max_keepdim(1)?;
    Ok((x.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + m)?.squeeze(1)?)
}

/// Runs everything: tokenizer checks, then every case whose id contains `filter`, with the models loaded as
/// `opts` says. Returns (passed, failed).
pub fn run_all(
    dir: &Path,
    opts: &LoadOptions,
    filter: Option<&str>,
    sink: &mut dyn FnMut(&Check),
) -> anyhow::Result<(usize, usize)> {
    let mut runner = Runner::new(dir, opts.clone())?;
    let mut all = runner.tokenizer_checks(sink)?;
    for case in runner.cases()? {
        let id = case.get("id").and_then(|v| v.as_str()).unwrap_or("");
        if filter.is_some_and(|f| !id.contains(f)) {
            continue;
        }
        all.extend(runner.run_case(&case, sink));
    }
    let passed = all.iter().filter(|c| c.ok).count();
    Ok((passed, all.len() - passed))
}
