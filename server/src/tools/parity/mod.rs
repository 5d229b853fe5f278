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

mod checks;
use crate::fixture::*;
pub use crate::fixture::{rel_l2, Check};
use checks::*;

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
        let mut rec = Recorder::new("tokenizer", sink);
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
        record_entry(case, sink, |rec| self.case_inner(case, rec))
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
