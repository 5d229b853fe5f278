//! The checks of one case: prompt text and ids, the vision tower, the resize, the input layout, the prefill's
//! logits, the greedy choices and the generated tokens, each against the reference tensors.

use super::*;

/// How strictly a run judges (see [`Runner::judging`]).
pub(super) struct Judging {
    pub(super) vtol: f64,
    pub(super) tol: f64,
    pub(super) quant_vision: bool,
    /// f32 and unquantized: tokens and argmaxes must match exactly.
    pub(super) exact: bool,
    /// The top-2 gap under which a differing greedy choice is a near-tie.
    pub(super) tie: f32,
}

/// One case's inputs and reference tensors.
pub(super) struct Case {
    pub(super) model_dir: String,
    pub(super) version: PromptVersion,
    pub(super) query: String,
    pub(super) history: Vec<(String, String)>,
    pub(super) image: Option<image::DynamicImage>,
    pub(super) data: HashMap<String, Tensor>,
}

impl Case {
    pub(super) fn read(case: &Value, dir: &Path) -> anyhow::Result<Self> {
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
    pub(super) fn request(&self, new_tokens: usize) -> ChatRequest {
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
pub(super) fn check_prompt_text(
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
pub(super) fn check_vision(
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
pub(super) fn check_resize(
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
pub(super) fn check_layout(
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
pub(super) fn check_prefill(
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
pub(super) fn check_argmax(
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
pub(super) fn check_decode(
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
pub(super) struct Generation<'a> {
    pub(super) req: &'a ChatRequest,
    pub(super) input: &'a PromptInput,
    /// The reference's greedy tokens and, per step, its top-2 gap.
    pub(super) generated: &'a [u32],
    pub(super) margins: Vec<f32>,
    pub(super) judge: &'a Judging,
}

impl Generation<'_> {
    /// Our tokens against the reference's: equal in f32, else equal up to the first near-tie.
    pub(super) fn same_tokens(&self, rec: &mut Recorder, name: &str, got: &[u32]) {
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
pub(super) fn check_generation(
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

pub(super) fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// Row-wise log-sum-exp of `[R, V]` in f64.
pub(super) fn log_sum_exp_rows(x: &Tensor) -> anyhow::Result<Tensor> {
    let x = x.to_dtype(DType::F64)?;
    let m = x.max_keepdim(1)?;
    Ok((x.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + m)?.squeeze(1)?)
}
