//! Building the linear layers as the load options ask: float, or quantized (int8 / int4 in the device's
//! format), with a LoRA adapter merged into float weights or kept beside quantized ones.

use super::*;

/// Builds the language model's linear layers (and, `with_vision`, the vision tower's) in the requested format
/// and records what it did.
pub struct Quantizer {
    mode: Quant,
    /// Quantize [`Role::Vision`] matrices too.
    vision: bool,
    report: RefCell<QuantReport>,
    /// Random-weight benchmarks: one quantized matrix per (shape, format), its blocks copied to the others.
    shared_blocks: Option<RefCell<SharedBlocks>>,
    /// A LoRA adapter to apply to the layers it names, and the modules it was applied to.
    lora: Option<(Adapter, LoraMode)>,
    lora_used: RefCell<BTreeSet<String>>,
    /// The model is built for training ([`Self::for_training`]).
    training: bool,
    /// `--int4-format`: the 4-bit format used instead of the device's choice.
    int4: Option<GgmlDType>,
}

impl Quantizer {
    pub fn new(mode: Quant) -> Self {
        Self {
            mode,
            vision: false,
            report: RefCell::new(QuantReport {
                mode,
                ..Default::default()
            }),
            shared_blocks: None,
            lora: None,
            lora_used: RefCell::new(BTreeSet::new()),
            training: false,
            int4: None,
        }
    }

    /// For a model whose weights or adapter pairs are `Var`s an optimizer updates in place: stacked layers keep
    /// their parts apart (see [`Self::stacked_linear`]).
    pub fn for_training(mut self) -> Self {
        self.training = true;
        self
    }

    /// Applies `adapter` to every linear layer it names ([`LoraMode`]: merged into float weights, or a separate
    /// low-rank product). Its `A` / `B` are used as given (`Var`s stay `Var`s).
    pub fn with_lora(mut self, adapter: Adapter, mode: LoraMode) -> Self {
        self.lora = Some((adapter, mode));
        self
    }

    /// The adapter, if any.
    pub fn lora(&self) -> Option<&Adapter> {
        self.lora.as_ref().map(|(a, _)| a)
    }

    /// After the model is built: an error for each adapted module no layer took, except the reference's no-ops
    /// ([`lora::is_reference_no_op`]), which are named in a note on stderr.
    pub fn check_lora_used(&self) -> Result<()> {
        let Some((adapter, _)) = &self.lora else {
            return Ok(());
        };
        let (no_ops, unused) = lora::unused_modules(adapter, &self.lora_used.borrow());
        if !unused.is_empty() {
            candle_core::bail!(
                "the LoRA adapter has weights for modules this model does not adapt (LoRA applies to the \
                 decoder's, the EVA2-CLIP tower's and its adapter's linear layers): {}",
                unused.join(", ")
            );
        }
        if !no_ops.is_empty() {
            tracing::info!(
                "LoRA: skipped {} cross-encoder projection(s) ({}): the reference reads those weights \
                 directly, so PEFT's LoRA on them has no effect",
                no_ops.len(),
                no_ops.join(", ")
            );
        }
        Ok(())
    }

    /// The adapter's pair for each part (by module path), marking it used.
    fn lora_parts(&self, parts: &[(usize, VarBuilder)]) -> Vec<Option<LoraPair>> {
        parts
            .iter()
            .map(|(_, vb)| {
                let (adapter, _) = self.lora.as_ref()?;
                let name = vb.prefix();
                let pair = adapter.modules.get(&name)?.clone();
                self.lora_used.borrow_mut().insert(name);
                Some(pair)
            })
            .collect()
    }

    /// For full-size random weights: candle quantizes on the CPU, one thread, which for CogVLM's 13 B
    /// language-model weights in Q4K takes minutes. The first matrix of each shape is quantized and every
    /// other matrix of that shape gets its own device copy of those blocks: the same bytes are read per token,
    /// so the timing is that of distinct weights.
    pub fn for_random_weights(mode: Quant) -> Self {
        Self {
            shared_blocks: Some(RefCell::new(HashMap::new())),
            ..Self::new(mode)
        }
    }

    /// Quantizes the vision tower's and adapter's linear layers as well (`--quant-vision`).
    pub fn with_vision(mut self, vision: bool) -> Self {
        self.vision = vision;
        self
    }

    /// Forces `format` for the 4-bit layers where it fits (else they stay float), instead of the device's choice.
    pub fn with_int4_format(mut self, format: Option<GgmlDType>) -> Self {
        self.int4 = format;
        self
    }

    /// Whether the vision tower's matrices will be quantized.
    pub fn quantizes_vision(&self) -> bool {
        self.vision && self.mode != Quant::Float
    }

    pub fn into_report(self) -> QuantReport {
        self.report.into_inner()
    }

    /// A bias-free linear `in_dim → out_dim` from `vb`'s `weight`.
    pub fn linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        role: Role,
        vb: VarBuilder,
    ) -> Result<QLinear> {
        self.stacked_linear(in_dim, &[(out_dim, vb)], role)
    }

    /// As [`Self::linear`] with `vb`'s `bias` (CogVLM2's vision-expert `query_key_value`), kept in the model
    /// dtype.
    pub fn linear_with_bias(
        &self,
        in_dim: usize,
        out_dim: usize,
        role: Role,
        vb: VarBuilder,
    ) -> Result<QLinear> {
        let bias = vb.get(out_dim, "bias")?;
        self.build(in_dim, &[(out_dim, vb)], role, Some(bias))
    }

    /// One bias-free linear layer whose output rows are those of `parts` (each `(out_dim, vb)`) in order: the
    /// MLP's gate and up projections become one matmul, one kernel launch per decode step instead of two.
    /// Each part is reported under its own name.
    pub fn stacked_linear(
        &self,
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        role: Role,
    ) -> Result<QLinear> {
        self.build(in_dim, parts, role, None)
    }

    /// A vision-tower linear `in_dim → out_dim` (with `vb`'s `bias` when `bias`): float unless the quantizer
    /// was made [`Self::with_vision`]; the bias stays in the model dtype.
    pub fn vision_linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<QLinear> {
        let b = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        self.build(in_dim, &[(out_dim, vb)], Role::Vision, b)
    }

    /// The layer in its format with `bias`, and the adapter's pairs for its parts: merged into float weights
    /// in [`LoraMode::Merge`], else wrapped as [`QLinear::Lora`].
    fn build(
        &self,
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        role: Role,
        bias: Option<Tensor>,
    ) -> Result<QLinear> {
        if parts.len() > 1 && self.training {
            // Weights or adapter pairs being trained stay apart: stacking copies them, and the copy would
            // not follow the optimizer's in-place updates (the forward would keep the values of step 0).
            let each = parts
                .iter()
                .map(|part| self.build(in_dim, std::slice::from_ref(part), role, None))
                .collect::<Result<Vec<_>>>()?;
            return Ok(QLinear::Parts(each));
        }
        let pairs = self.lora_parts(parts);
        let merge = matches!(self.lora, Some((_, LoraMode::Merge)));
        let (base, merged) = self.base(in_dim, parts, role, bias, merge.then_some(&pairs[..]))?;
        if merged || pairs.iter().all(Option::is_none) {
            return Ok(base);
        }
        let scaling = self.lora.as_ref().map_or(1.0, |(a, _)| a.scaling());
        let dropout = self
            .lora
            .as_ref()
            .map_or(0.0, |(a, _)| a.config.lora_dropout);
        let outs: Vec<usize> = parts.iter().map(|(o, _)| *o).collect();
        let delta =
            LoraDelta::stacked(&outs, &pairs, scaling, parts[0].1.dtype())?.with_dropout(dropout);
        Ok(QLinear::Lora(Box::new(base), delta))
    }

    /// The layer without LoRA, or with `merge`'s pairs merged into its weights when it stays float; says
    /// whether it merged them.
    fn base(
        &self,
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        role: Role,
        bias: Option<Tensor>,
        merge: Option<&[Option<LoraPair>]>,
    ) -> Result<(QLinear, bool)> {
        let out_dim: usize = parts.iter().map(|(o, _)| o).sum();
        let names = || {
            parts
                .iter()
                .map(|(_, vb)| format!("{}.weight", vb.prefix()))
        };
        let scaling = self.lora.as_ref().map_or(1.0, |(a, _)| a.scaling());
        let read = |dtype: DType, merge| read_parts(parts, in_dim, dtype, merge, scaling);
        let Some((_, vb)) = parts.first() else {
            candle_core::bail!("a linear layer needs at least one weight");
        };
        let float = |dtype: DType| -> Result<(QLinear, bool)> {
            Ok((
                QLinear::Float(Linear::new(read(dtype, merge)?, bias.clone())),
                merge.is_some(),
            ))
        };
        if self.mode == Quant::Float || (role == Role::Vision && !self.vision) {
            return float(vb.dtype());
        }
        let kernels = Kernels::of(vb.device());
        let format = match (self.int4, self.mode, role) {
            (Some(f), Quant::Q4, Role::Layer | Role::Vision) => {
                in_dim.is_multiple_of(f.block_size()).then_some(f)
            }
            _ => self.mode.format(role, in_dim, kernels),
        };
        let Some(format) = format else {
            self.report.borrow_mut().kept_float.extend(names());
            return float(vb.dtype());
        };
        // Read in f32 (not the model dtype) so that a bf16 model's weights are rounded once, by the quantizer.
        let q = self.quantize((out_dim, in_dim), format, vb.device(), || {
            read(DType::F32, None)
        })?;
        let mut r = self.report.borrow_mut();
        r.replaced_float_bytes += (in_dim * out_dim * vb.dtype().size_in_bytes()) as u64;
        r.quantized_bytes += q.storage_size_in_bytes() as u64;
        r.repacked_bytes += kernels.repacked_bytes(format, out_dim, in_dim);
        r.quantized.extend(names().map(|n| (n, format)));
        Ok((QLinear::Quant(QMatMul::from_qtensor(q)?, bias), false))
    }

    /// The weight `read` gives, quantized to `format` on `device`; random-weight runs share one set of blocks
    /// per shape (their values do not matter, their memory does).
    fn quantize(
        &self,
        (out_dim, in_dim): (usize, usize),
        format: GgmlDType,
        device: &Device,
        read: impl Fn() -> Result<Tensor>,
    ) -> Result<QTensor> {
        let Some(shared) = &self.shared_blocks else {
            return QTensor::quantize(&read()?, format);
        };
        let key = (out_dim, in_dim, format as usize);
        let mut shared = shared.borrow_mut();
        let blocks = match shared.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let w = read()?.to_device(&Device::Cpu)?;
                e.insert(QTensor::quantize(&w, format)?.data()?.into_owned())
            }
        };
        let storage = QStorage::from_data(Cow::Borrowed(blocks), device, format)?;
        QTensor::new(storage, (out_dim, in_dim))
    }
}

/// The weights of `parts` (stacked along the output rows) in `dtype`; a part with a pair in `merge` gets
/// `W + scaling · B A`, computed in f32 and rounded once to `dtype`.
pub(super) fn read_parts(
    parts: &[(usize, VarBuilder)],
    in_dim: usize,
    dtype: DType,
    merge: Option<&[Option<LoraPair>]>,
    scaling: f64,
) -> Result<Tensor> {
    let w = parts
        .iter()
        .enumerate()
        .map(|(i, (o, vb))| {
            let pair = merge.and_then(|m| m.get(i)).and_then(Option::as_ref);
            let Some(p) = pair else {
                return vb.get_with_hints_dtype((*o, in_dim), "weight", Default::default(), dtype);
            };
            let w =
                vb.get_with_hints_dtype((*o, in_dim), "weight", Default::default(), DType::F32)?;
            let dev = w.device();
            let ba = p.b.to_device(dev)?.matmul(&p.a.to_device(dev)?)?;
            (w + (ba * scaling)?)?.to_dtype(dtype)
        })
        .collect::<Result<Vec<_>>>()?;
    match w.len() {
        1 => Ok(w[0].clone()),
        _ => Tensor::cat(&w, 0),
    }
}
