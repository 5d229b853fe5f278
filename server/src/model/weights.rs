//! Finding, checking and opening checkpoint weights: `model.safetensors.index.json` shards (memory-mapped) or
//! single files, a completeness check against the names and shapes the architecture needs, load progress, and
//! random weights for benchmarks.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context};
use candle_core::{safetensors::MmapedSafetensors, DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::config::{Config, CrossConfig};

/// Writes `tensors` as one safetensors file with the `{"format": "pt"}` header metadata: transformers'
/// `from_pretrained` refuses a file without it (4.36 raises `AttributeError`), so everything the project writes
/// goes through here.
pub fn save_pt(tensors: &HashMap<String, Tensor>, path: &Path) -> anyhow::Result<()> {
    let mut cpu: Vec<(&str, Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        cpu.push((name, t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(cpu.iter().map(|(n, t)| (*n, t)), Some(meta), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The `__metadata__` map of a safetensors file's header (empty when it has none).
pub fn header_metadata(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    anyhow::ensure!(len < 100 << 20, "{}: header of {len} bytes", path.display());
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: the header is not JSON", path.display()))?;
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// The safetensors files under `dir` (recursively) whose header lacks `"format": "pt"`.
pub fn files_without_pt_format(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            bad.extend(files_without_pt_format(&path)?);
        } else if path.extension().is_some_and(|e| e == "safetensors")
            && header_metadata(&path)?.get("format").map(String::as_str) != Some("pt")
        {
            bad.push(path);
        }
    }
    Ok(bad)
}

/// The safetensors files of a checkpoint directory.
pub fn weight_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        let missing: Vec<String> = paths
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing shard(s) listed in {}: {}",
                index.display(),
                missing.join(", ")
            );
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read model directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        if dir.join("pytorch_model.bin.index.json").exists()
            || dir.join("pytorch_model.bin").exists()
        {
            bail!(
                "{} holds PyTorch .bin weights; convert them to safetensors first (e.g. with the `safetensors` \
                 Python package: load the state dict and save_file it) and load the converted folder",
                dir.display()
            );
        }
        bail!(
            "no model.safetensors, model.safetensors.index.json or *.safetensors in {}",
            dir.display()
        );
    }
    Ok(found)
}

/// Buffers some exports carry and some don't; never required, never an error.
fn is_optional_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || name.ends_with("rope.freqs_cos")
        || name.ends_with("rope.freqs_sin")
}

/// Every parameter the HF checkpoint holds, with its shape (used ones and the few unused ones alike).
pub fn expected_tensors(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let mut t = Shapes(Vec::new());
    decoder_tensors(cfg, &mut t);
    vision_tensors(cfg, &mut t);
    if let Some(c) = &cfg.cross() {
        cross_tensors(c, &mut t);
    }
    t.0
}

/// Names and shapes, in the order they are added.
struct Shapes(Vec<(String, Vec<usize>)>);

impl Shapes {
    fn add(&mut self, name: impl Into<String>, shape: &[usize]) {
        self.0.push((name.into(), shape.to_vec()));
    }
}

/// The language model: embedding, head, and each layer's two experts (and CogAgent's cross attention).
fn decoder_tensors(cfg: &Config, t: &mut Shapes) {
    let mut add = |n: String, s: &[usize]| t.add(n, s);
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    add("model.embed_tokens.weight".into(), &[v, h]);
    add("model.norm.weight".into(), &[h]);
    add("lm_head.weight".into(), &[v, h]);
    let cross = cfg.cross();
    let family = cfg.family();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), &[h]);
        add(format!("{p}.post_attention_layernorm.weight"), &[h]);
        if family.vision_expert_qkv_bias() {
            add(
                format!("{p}.self_attn.vision_expert_query_key_value.bias"),
                &[cfg.qkv_rows()],
            );
        }
        for e in ["language", "vision"] {
            add(
                format!("{p}.self_attn.{e}_expert_query_key_value.weight"),
                &[cfg.qkv_rows(), h],
            );
            add(format!("{p}.self_attn.{e}_expert_dense.weight"), &[h, h]);
            add(format!("{p}.mlp.{e}_mlp.gate_proj.weight"), &[i, h]);
            add(format!("{p}.mlp.{e}_mlp.up_proj.weight"), &[i, h]);
            add(format!("{p}.mlp.{e}_mlp.down_proj.weight"), &[h, i]);
        }
        if let Some(c) = &cross {
            add(format!("{p}.post_cross_attention_layernorm.weight"), &[h]);
            add(format!("{p}.cross_attn.query.weight"), &[c.compute, h]);
            add(
                format!("{p}.cross_attn.key_value.weight"),
                &[2 * c.compute, c.hidden],
            );
            add(format!("{p}.cross_attn.dense.weight"), &[h, c.compute]);
        }
    }
}

/// EVA2-CLIP and its GLU adapter (CogVLM2's 2×2 conv; CogAgent's low-resolution position table).
fn vision_tensors(cfg: &Config, t: &mut Shapes) {
    let mut add = |n: String, s: &[usize]| t.add(n, s);
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let family = cfg.family();
    let vc = &cfg.vision_config;
    let (vh, vi, pch) = (vc.hidden_size, vc.intermediate_size, vc.patch_size);
    let pv = "model.vision";
    add(
        format!("{pv}.patch_embedding.proj.weight"),
        &[vh, vc.in_channels, pch, pch],
    );
    add(format!("{pv}.patch_embedding.proj.bias"), &[vh]);
    add(format!("{pv}.patch_embedding.cls_embedding"), &[1, vh]);
    add(
        format!("{pv}.patch_embedding.position_embedding.weight"),
        &[vc.num_positions, vh],
    );
    for l in 0..vc.num_hidden_layers {
        let p = format!("{pv}.transformer.layers.{l}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            add(format!("{p}.{n}.weight"), &[vh]);
            add(format!("{p}.{n}.bias"), &[vh]);
        }
        add(
            format!("{p}.attention.query_key_value.weight"),
            &[3 * vh, vh],
        );
        add(format!("{p}.attention.query_key_value.bias"), &[3 * vh]);
        add(format!("{p}.attention.dense.weight"), &[vh, vh]);
        add(format!("{p}.attention.dense.bias"), &[vh]);
        add(format!("{p}.mlp.fc1.weight"), &[vi, vh]);
        add(format!("{p}.mlp.fc1.bias"), &[vi]);
        add(format!("{p}.mlp.fc2.weight"), &[vh, vi]);
        add(format!("{p}.mlp.fc2.bias"), &[vh]);
    }
    let pl = format!("{pv}.linear_proj");
    add(format!("{pl}.linear_proj.weight"), &[h, vh]);
    add(format!("{pl}.norm1.weight"), &[h]);
    add(format!("{pl}.norm1.bias"), &[h]);
    add(format!("{pl}.gate_proj.weight"), &[i, h]);
    add(format!("{pl}.dense_h_to_4h.weight"), &[i, h]);
    add(format!("{pl}.dense_4h_to_h.weight"), &[h, i]);
    add(format!("{pv}.boi"), &[1, 1, h]);
    add(format!("{pv}.eoi"), &[1, 1, h]);
    if family.vision_conv() {
        add(format!("{pv}.conv.weight"), &[vh, vh, 2, 2]);
        add(format!("{pv}.conv.bias"), &[vh]);
    }
    if cfg.cross().is_some() {
        add(format!("{pv}.pos_embed"), &[vc.num_patches(), vh]);
    }
}

/// CogAgent's high-resolution EVA-CLIP-L cross tower.
fn cross_tensors(c: &CrossConfig, t: &mut Shapes) {
    let mut add = |n: String, s: &[usize]| t.add(n, s);
    let w = c.vision.vision_cfg.width;
    let m = c.vision.mlp_hidden();
    let cp = c.vision.vision_cfg.patch_size;
    let n = c.num_patches();
    let pm = "model.cross_vision.vit.model";
    add(format!("{pm}.patch_embed.proj.weight"), &[w, 3, cp, cp]);
    add(format!("{pm}.patch_embed.proj.bias"), &[w]);
    add(format!("{pm}.cls_token"), &[1, 1, w]);
    add(format!("{pm}.pos_embed"), &[1, n + 1, w]);
    for j in 0..c.vision.vision_cfg.layers {
        let p = format!("{pm}.blocks.{j}");
        for ln in ["norm1", "norm2", "attn.inner_attn_ln"] {
            add(format!("{p}.{ln}.weight"), &[w]);
            add(format!("{p}.{ln}.bias"), &[w]);
        }
        for proj in ["q_proj", "k_proj", "v_proj"] {
            add(format!("{p}.attn.{proj}.weight"), &[w, w]);
        }
        add(format!("{p}.attn.q_bias"), &[w]);
        add(format!("{p}.attn.v_bias"), &[w]);
        add(format!("{p}.attn.proj.weight"), &[w, w]);
        add(format!("{p}.attn.proj.bias"), &[w]);
        for fc in ["w1", "w2"] {
            add(format!("{p}.mlp.{fc}.weight"), &[m, w]);
            add(format!("{p}.mlp.{fc}.bias"), &[m]);
        }
        add(format!("{p}.mlp.ffn_ln.weight"), &[m]);
        add(format!("{p}.mlp.ffn_ln.bias"), &[m]);
        add(format!("{p}.mlp.w3.weight"), &[w, m]);
        add(format!("{p}.mlp.w3.bias"), &[w]);
    }
    add(format!("{pm}.norm.weight"), &[w]);
    add(format!("{pm}.norm.bias"), &[w]);
    add(format!("{pm}.head.weight"), &[c.vision.embed_dim, w]);
    add(format!("{pm}.head.bias"), &[c.vision.embed_dim]);
    add("model.cross_vision.pos_embed".into(), &[n, w]);
}

fn list(names: &[String], limit: usize) -> String {
    let mut s = names
        .iter()
        .take(limit)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > limit {
        s.push_str(&format!(" … and {} more", names.len() - limit));
    }
    s
}

/// Opened, checked weights.
pub struct Checkpoint {
    pub st: MmapedSafetensors,
    /// Bytes of the tensors the model will read (for progress).
    pub total_bytes: u64,
}

impl Checkpoint {
    pub fn open(dir: &Path, cfg: &Config) -> anyhow::Result<Self> {
        let files = weight_files(dir)?;
        // SAFETY: the files are memory-mapped read-only; like every safetensors loader we assume they are not
        // modified while the model is loaded.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .with_context(|| format!("cannot open the safetensors files in {}", dir.display()))?;
        let found: HashMap<String, (Vec<usize>, usize)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.shape().to_vec(), v.data().len())))
            .collect();
        let expected = expected_tensors(cfg);
        let mut missing = Vec::new();
        let mut wrong = Vec::new();
        let mut total_bytes = 0u64;
        for (name, shape) in &expected {
            match found.get(name) {
                None => missing.push(name.clone()),
                Some((s, _)) if s != shape => {
                    wrong.push(format!("{name} is {s:?}, expected {shape:?}"))
                }
                Some((_, bytes)) => total_bytes += *bytes as u64,
            }
        }
        let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let unexpected: Vec<String> = found
            .keys()
            .filter(|n| !known.contains(n.as_str()) && !is_optional_buffer(n))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let problems: Vec<String> = [
            (&missing, "missing tensor(s)"),
            (&wrong, "wrong shape(s)"),
            (&unexpected, "unexpected tensor(s)"),
        ]
        .into_iter()
        .filter(|(names, _)| !names.is_empty())
        .map(|(names, what)| format!("{} {what}: {}", names.len(), list(names, 8)))
        .collect();
        if !problems.is_empty() {
            bail!(
                "{} does not match its config.json ({}): {}",
                dir.display(),
                cfg.family(),
                problems.join("; ")
            );
        }
        Ok(Self { st, total_bytes })
    }
}

/// Memory-mapped weights converted to the model dtype as they are read, reporting progress.
pub struct ProgressBackend<'a> {
    st: MmapedSafetensors,
    done: AtomicU64,
    total: u64,
    progress: Mutex<&'a mut (dyn FnMut(u64, u64) + Send)>,
}

impl<'a> ProgressBackend<'a> {
    pub fn new(ck: Checkpoint, progress: &'a mut (dyn FnMut(u64, u64) + Send)) -> Self {
        Self {
            total: ck.total_bytes,
            st: ck.st,
            done: AtomicU64::new(0),
            progress: Mutex::new(progress),
        }
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let view = self.st.get(name)?;
        let bytes = view.data().len() as u64;
        let t = self.st.load(name, dev)?.to_dtype(dtype)?;
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Ok(mut p) = self.progress.lock() {
            (p)(done.min(self.total), self.total);
        }
        Ok(t)
    }
}

impl SimpleBackend for ProgressBackend<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "shape mismatch for {name}: expected {s:?}, got {:?}",
                t.shape()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }
}

/// How a random weight is drawn: matrices ~ N(0, 1/fan_in), embeddings and special tokens N(0, 0.25), norm
/// weights 1, biases 0: the same compute as real weights, finite activations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RandomInit {
    Zeros,
    Ones,
    Normal { std: f32 },
}

impl RandomInit {
    pub fn for_tensor(name: &str, dims: &[usize]) -> Self {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_norm =
            name.contains("norm") || name.contains("_ln") || name.ends_with("layernorm.weight");
        if dims.len() == 1 && (leaf == "bias" || leaf.ends_with("_bias")) {
            return Self::Zeros;
        }
        if dims.len() == 1 && is_norm {
            return Self::Ones;
        }
        let fan_in: usize = if dims.len() >= 2 {
            dims[1..].iter().product()
        } else {
            1
        };
        let std = if name.contains("embed")
            || leaf == "boi"
            || leaf == "eoi"
            || leaf.contains("cls")
            || leaf.contains("pos")
        {
            0.5
        } else {
            (1.0 / fan_in as f64).sqrt()
        };
        Self::Normal { std: std as f32 }
    }
}

/// Random weights made directly on the target device, for speed runs at full size without a 35 GB file
/// ([`RandomInit`]). Each tensor is drawn in f32 and cast at once, so loading holds one f32 tensor at a time.
pub struct RandomBackend;

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match RandomInit::for_tensor(name, s.dims()) {
            RandomInit::Zeros => Tensor::zeros(s, dtype, dev),
            RandomInit::Ones => Tensor::ones(s, dtype, dev),
            RandomInit::Normal { std } => Tensor::randn(0f32, std, s, dev)?.to_dtype(dtype),
        }
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights have no shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        // Optional buffers (inv_freq, rope tables) are then computed, as for checkpoints without them.
        false
    }
}

/// Parameter count and bytes at a dtype (bench memory check).
pub fn parameter_bytes(cfg: &Config, dtype: DType) -> (u64, u64) {
    let n: u64 = expected_tensors(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    (n, n * dtype.size_in_bytes() as u64)
}
