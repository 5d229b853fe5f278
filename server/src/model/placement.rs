//! The device plan: which device holds each module, decided from the config, the weight format and the
//! devices' free memory before any weight is read.
//!
//! Modules: the EVA2-CLIP tower with its GLU adapter, CogAgent's cross encoder, the token embedding (always in
//! host memory, see `language`), each decoder layer (both experts, its KV cache, CogAgent's cross-attention and
//! its encoder keys/values) and the final norm with `lm_head`. Hidden states cross devices only between layers
//! (and from the towers into the first layer); the head follows the last layer, so logits are made where the
//! hidden states already are.
//!
//! Three ways to place:
//! - one device (the default): everything there; on a GPU that is too small this becomes `--gpu-layers auto`;
//! - `--gpu-layers N|auto`: the towers and the first N layers on the first device, the rest on the second
//!   (the CPU unless `--devices` names another); `auto` takes the largest N that fits;
//! - `--devices a,b,…`: the towers on the first, the layers split in proportion to what each can hold.
//!
//! Each device keeps room for the KV cache of `max_length` positions of its layers, the activations of what it
//! runs (a prefill's, and the image encoders' with their 256 MiB attention blocks) and [`MARGIN`] (CUDA's
//! context and allocator slack; on the CPU, the rest of the process and the system).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::config::Config;
use super::quant::{tensor_bytes, Quant};
use super::weights::expected_tensors;

/// Room kept free on every device (allocator slack, cuBLAS workspaces; CUDA's context is already out of the
/// free figure, which is read after the device is opened).
pub const MARGIN: u64 = 512 << 20;

const GIB: f64 = (1u64 << 30) as f64;

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / GIB)
}

/// How many decoder layers go on the GPU: a count, or the most that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    Count(usize),
    Auto,
}

impl std::str::FromStr for GpuLayers {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            n => n
                .parse()
                .map(Self::Count)
                .map_err(|_| format!("a number of layers or `auto`, not {n:?}")),
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    /// `--devices`: more than one splits the layers (or, with `gpu_layers`, names the two sides).
    pub devices: Vec<String>,
    pub gpu_layers: Option<GpuLayers>,
}

impl PlacementRequest {
    /// The request from `--devices a,b` (empty: none) and `--gpu-layers`.
    pub fn parse(devices: Option<&str>, gpu_layers: Option<GpuLayers>) -> Self {
        Self {
            devices: devices
                .map(|d| {
                    d.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            gpu_layers,
        }
    }
}

/// A device the planner may use, with its free memory.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    pub free: u64,
}

impl DeviceInfo {
    fn is_cpu(&self) -> bool {
        self.name == "cpu"
    }
}

/// Bytes of each module as loaded (weights in their format) and what running it needs besides.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub vision: u64,
    pub cross: u64,
    pub embed: u64,
    /// One decoder layer's weights (all layers have the same shapes).
    pub layer: u64,
    /// One layer's KV cache for `max_length` positions (and CogAgent's encoder keys/values).
    pub layer_kv: u64,
    pub head: u64,
    /// A prefill's activations on a device running layers (or the head).
    pub decoder_act: u64,
    /// The image encoders' activations.
    pub vision_act: u64,
    pub cross_act: u64,
    pub layers: usize,
    /// The model and its float type, in words (`CogVLM (17.6 B parameters), bf16`).
    pub what: String,
    /// Its quantization (and whether the vision tower shares it).
    pub quant: (Quant, bool),
    /// Smaller formats, each with the change that gives it (for the advice of a refusal).
    pub cheaper: Vec<(Change, Sizes)>,
}

/// A way to make the model fit that a refusal may suggest; typed, so that whoever shows the refusal words it
/// (`generate::load` names the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// As many layers on the GPU as fit, the rest on the CPU (or the second device).
    OffloadAuto,
    /// bf16 weights instead of f32.
    Bf16,
    /// int8 language-model weights.
    Int8,
    /// int4 language-model weights.
    Int4,
    /// int4 for the vision tower too.
    Int4WithVision,
}

impl Sizes {
    pub fn new(
        cfg: &Config,
        dtype: DType,
        quant: Quant,
        quant_vision: bool,
        max_length: usize,
    ) -> Self {
        let mut s = Self::one(cfg, dtype, quant, quant_vision, max_length);
        let mut options = Vec::new();
        if dtype == DType::F32 {
            options.push((Change::Bf16, DType::BF16, quant, quant_vision));
        }
        options.push((Change::Int8, dtype, Quant::Q8, false));
        options.push((Change::Int4, dtype, Quant::Q4, false));
        options.push((Change::Int4WithVision, dtype, Quant::Q4, true));
        let total = s.total_weights();
        s.cheaper = options
            .into_iter()
            .map(|(c, d, q, v)| (c, Self::one(cfg, d, q, v, max_length)))
            .filter(|(_, c)| c.total_weights() < total)
            .collect();
        s
    }

    fn one(
        cfg: &Config,
        dtype: DType,
        quant: Quant,
        quant_vision: bool,
        max_length: usize,
    ) -> Self {
        let qv = quant_vision && quant != Quant::Float;
        let mut s = Sizes {
            vision: 0,
            cross: 0,
            embed: 0,
            layer: 0,
            layer_kv: 0,
            head: 0,
            decoder_act: 0,
            vision_act: 0,
            cross_act: 0,
            layers: cfg.num_hidden_layers.max(1),
            what: String::new(),
            quant: (quant, qv),
            cheaper: Vec::new(),
        };
        for (name, shape) in expected_tensors(cfg) {
            let b = tensor_bytes(&name, &shape, dtype, quant, qv);
            if name.starts_with("model.layers.0.") {
                s.layer += b;
            } else if name.starts_with("model.layers.") {
            } else if name.starts_with("model.cross_vision.") {
                s.cross += b;
            } else if name.starts_with("model.vision.") {
                s.vision += b;
            } else if name.starts_with("model.embed_tokens.") {
                s.embed += b;
            } else {
                s.head += b;
            }
        }
        let act = dtype.size_in_bytes() as u64;
        let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
        // Keys and values of the KV heads (CogVLM2 keeps 8 of 32).
        let kv_width = (cfg.kv_heads() * cfg.head_dim()) as u64;
        s.layer_kv = 2 * max_length as u64 * kv_width * act;
        let cross = cfg.cross();
        if let Some(c) = &cross {
            s.layer_kv += 2 * c.num_patches() as u64 * c.compute as u64 * act;
        }
        // A prefill of the image and a question: the MLP's and QKV's rows in f32, and the f32 scores and
        // probabilities of every head.
        let l = (cfg.image_tokens() as u64 + 512).min(max_length.max(1) as u64);
        let heads = cfg.num_attention_heads as u64;
        s.decoder_act = l * (2 * i + 4 * h) * 4 + 2 * heads * l * l * 4;
        // An encoder: a few f32 rows of its widest layer per token, and its attention in 256 MiB row blocks
        // (scores and probabilities).
        let blocks = 2 * (256u64 << 20);
        let vc = &cfg.vision_config;
        let t = vc.num_patches() as u64 + 1;
        s.vision_act =
            2 * t * (vc.intermediate_size as u64 + 3 * vc.hidden_size as u64) * 4 + blocks;
        if let Some(c) = &cross {
            let t = c.num_patches() as u64 + 1;
            let w = c.vision.vision_cfg.width as u64;
            s.cross_act = 2 * t * (2 * c.vision.mlp_hidden() as u64 + 3 * w) * 4 + blocks;
        }
        let (params, _) = super::weights::parameter_bytes(cfg, dtype);
        s.what = format!(
            "{} ({:.1} B parameters), {}",
            cfg.family(),
            params as f64 / 1e9,
            dtype.as_str(),
        );
        s
    }

    /// Every weight.
    pub fn total_weights(&self) -> u64 {
        self.vision + self.cross + self.embed + self.layer * self.layers as u64 + self.head
    }
}

/// One device's share of a plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DevicePlan {
    pub name: String,
    /// What it holds, in words.
    pub modules: Vec<String>,
    pub weight_bytes: u64,
    /// KV cache, activations and the margin.
    pub reserve_bytes: u64,
    pub free_bytes: u64,
}

impl DevicePlan {
    pub fn left_bytes(&self) -> i64 {
        self.free_bytes as i64 - (self.weight_bytes + self.reserve_bytes) as i64
    }
}

/// Where each module goes: indices into `devices`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub devices: Vec<DevicePlan>,
    pub vision: usize,
    pub cross: Option<usize>,
    pub embed: usize,
    pub layers: Vec<usize>,
    pub head: usize,
    /// Why this plan.
    pub reason: Reason,
}

/// Why a plan is what it is, as facts; worded for people by `generate::load` (which knows the flags).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Reason {
    /// Everything on one device.
    Fits { device: String },
    /// The towers and the first `on_first` of `layers` layers on `first`, the rest on `second`: asked for as
    /// a count, or as many as fit (`auto`).
    Offload {
        auto: bool,
        on_first: usize,
        layers: usize,
        first: String,
        second: String,
    },
    /// The layers split over `devices`, `counts` each.
    Split {
        devices: Vec<String>,
        counts: Vec<usize>,
    },
    /// The whole model did not fit the GPU (`short` says by how much), so layers were offloaded as `then` says.
    TooBigForGpu { short: String, then: Box<Reason> },
}

/// Modules assigned to device slots, before their sizes are summed.
struct Assign {
    tower: usize,
    layers: Vec<usize>,
}

/// A plan that fits nowhere: what was asked, the numbers, and what would fit (worded by `generate::load`).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The model and float type ([`Sizes::what`]) and its quantization.
    pub what: String,
    pub quant: (Quant, bool),
    /// Which device falls short, by how much.
    pub why: String,
    /// The smallest change that fits, with where it puts the model; `None` when nothing does.
    pub fix: Option<(Change, String)>,
}

impl std::error::Error for Refusal {}

/// Decides the plan for `sizes` on `devices` (the request's, or the one `--device`, with their free memory)
/// and `cpu` (the host, which holds the token embedding and takes offloaded layers).
pub fn plan(
    sizes: &Sizes,
    req: &PlacementRequest,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> std::result::Result<Plan, Refusal> {
    match try_plan(sizes, req, devices, cpu) {
        Ok(p) => Ok(p),
        Err(why) => Err(Refusal {
            what: sizes.what.clone(),
            quant: sizes.quant,
            why,
            fix: advice(sizes, req, devices, cpu),
        }),
    }
}

fn try_plan(
    sizes: &Sizes,
    req: &PlacementRequest,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> std::result::Result<Plan, String> {
    let Some(first) = devices.first() else {
        return Err("no device given".into());
    };
    let n = sizes.layers;
    match req.gpu_layers {
        Some(g) => {
            let offload = devices.get(1).cloned().unwrap_or_else(|| cpu.clone());
            let slots = vec![first.clone(), offload];
            offload_plan(sizes, slots, cpu, g)
        }
        None if devices.len() > 1 => split_plan(sizes, devices, cpu),
        None => {
            let all = Assign {
                tower: 0,
                layers: vec![0; n],
            };
            let p = build(
                sizes,
                vec![first.clone()],
                cpu,
                &all,
                Reason::Fits {
                    device: first.name.clone(),
                },
            );
            match check(&p) {
                Ok(()) => Ok(p),
                // A GPU too small for the whole model: the CPU takes what does not fit.
                Err(short) if !first.is_cpu() => {
                    let slots = vec![first.clone(), cpu.clone()];
                    match offload_plan(sizes, slots, cpu, GpuLayers::Auto) {
                        Ok(mut p) => {
                            p.reason = Reason::TooBigForGpu {
                                short,
                                then: Box::new(p.reason),
                            };
                            Ok(p)
                        }
                        Err(e) => Err(format!("{short}; with layers offloaded to the CPU: {e}")),
                    }
                }
                Err(short) => Err(short),
            }
        }
    }
}

/// The towers and the first `g` layers on `slots[0]`, the rest on `slots[1]`.
fn offload_plan(
    sizes: &Sizes,
    slots: Vec<DeviceInfo>,
    cpu: &DeviceInfo,
    g: GpuLayers,
) -> std::result::Result<Plan, String> {
    let n = sizes.layers;
    let with = |k: usize| {
        let a = Assign {
            tower: 0,
            layers: (0..n).map(|i| usize::from(i >= k)).collect(),
        };
        let why = Reason::Offload {
            auto: g == GpuLayers::Auto,
            on_first: k,
            layers: n,
            first: slots[0].name.clone(),
            second: slots[1].name.clone(),
        };
        build(sizes, slots.clone(), cpu, &a, why)
    };
    match g {
        GpuLayers::Count(k) => {
            if k > n {
                return Err(format!(
                    "{k} layers asked for on {} but the model has {n}",
                    slots[0].name
                ));
            }
            let p = with(k);
            check(&p).map(|()| p)
        }
        GpuLayers::Auto => {
            // The most layers the first device holds; then the second must hold the rest.
            let best = (0..=n).rev().map(with).find(first_fits);
            match best {
                Some(p) => check(&p).map(|()| p),
                None => {
                    let p = with(0);
                    check(&p).map(|()| p)
                }
            }
        }
    }
}

/// Layers split over `devices` in proportion to the room each has after the towers and its reserves.
fn split_plan(
    sizes: &Sizes,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> std::result::Result<Plan, String> {
    let n = sizes.layers;
    let d = devices.len();
    // A device named twice shares its memory between its slots.
    let share = |i: usize| {
        let same = devices.iter().filter(|x| x.name == devices[i].name).count() as u64;
        devices[i].free / same
    };
    let room: Vec<f64> = (0..d)
        .map(|i| {
            let fixed = MARGIN
                + sizes.decoder_act
                + if i == 0 {
                    sizes.vision + sizes.cross + sizes.vision_act.max(sizes.cross_act)
                } else {
                    0
                };
            share(i).saturating_sub(fixed) as f64
        })
        .collect();
    let sum: f64 = room.iter().sum();
    let mut counts: Vec<usize> = room
        .iter()
        .map(|r| {
            if sum > 0.0 {
                (r / sum * n as f64).floor() as usize
            } else {
                n / d
            }
        })
        .collect();
    // Rounding leftovers go to the roomiest devices; every device takes at least one layer when it can.
    let mut left = n - counts.iter().sum::<usize>().min(n);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|a, b| room[*b].total_cmp(&room[*a]));
    while left > 0 {
        for &i in &order {
            if left > 0 {
                counts[i] += 1;
                left -= 1;
            }
        }
    }
    for i in 0..d {
        if counts[i] == 0 {
            if let Some(j) = (0..d).filter(|&j| counts[j] > 1).max_by_key(|&j| counts[j]) {
                counts[j] -= 1;
                counts[i] += 1;
            }
        }
    }
    let layers: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| std::iter::repeat_n(i, c))
        .collect();
    let a = Assign { tower: 0, layers };
    let reason = Reason::Split {
        devices: devices.iter().map(|x| x.name.clone()).collect(),
        counts,
    };
    let p = build(sizes, devices.to_vec(), cpu, &a, reason);
    check(&p).map(|()| p)
}

/// Sums the plan's bytes per slot; the token embedding goes to the host (a `cpu` slot, added if none).
fn build(
    sizes: &Sizes,
    mut slots: Vec<DeviceInfo>,
    cpu: &DeviceInfo,
    a: &Assign,
    reason: Reason,
) -> Plan {
    let embed = match slots.iter().position(|s| s.is_cpu()) {
        Some(i) => i,
        None => {
            slots.push(cpu.clone());
            slots.len() - 1
        }
    };
    let n = a.layers.len();
    let head = a.layers.last().copied().unwrap_or(a.tower);
    let mut devices: Vec<DevicePlan> = slots
        .iter()
        .map(|s| DevicePlan {
            name: s.name.clone(),
            modules: Vec::new(),
            weight_bytes: 0,
            reserve_bytes: 0,
            free_bytes: s.free,
        })
        .collect();
    let t = &mut devices[a.tower];
    t.modules.push("vision tower + adapter".into());
    t.weight_bytes += sizes.vision;
    let mut tower_act = sizes.vision_act;
    let cross = (sizes.cross > 0).then_some(a.tower);
    if cross.is_some() {
        t.modules.push("cross encoder".into());
        t.weight_bytes += sizes.cross;
        tower_act = tower_act.max(sizes.cross_act);
    }
    t.reserve_bytes += tower_act;
    devices[embed].modules.push("token embedding".into());
    devices[embed].weight_bytes += sizes.embed;
    // Layer ranges per slot, in order.
    let mut i = 0;
    while i < n {
        let s = a.layers[i];
        let j = (i..n).find(|&j| a.layers[j] != s).unwrap_or(n);
        let d = &mut devices[s];
        d.modules.push(if j - i == 1 {
            format!("layer {i}")
        } else {
            format!("layers {i}–{}", j - 1)
        });
        d.weight_bytes += sizes.layer * (j - i) as u64;
        d.reserve_bytes += sizes.layer_kv * (j - i) as u64;
        i = j;
    }
    devices[head].modules.push("final norm + lm_head".into());
    devices[head].weight_bytes += sizes.head;
    let mut seen = Vec::new();
    for &s in a.layers.iter().chain([&head]) {
        if !seen.contains(&s) {
            seen.push(s);
            devices[s].reserve_bytes += sizes.decoder_act;
        }
    }
    for d in &mut devices {
        d.reserve_bytes += MARGIN;
    }
    Plan {
        devices,
        vision: a.tower,
        cross,
        embed,
        layers: a.layers.clone(),
        head,
        reason,
    }
}

/// Whether the first device (the GPU of an offload) holds its share.
fn first_fits(p: &Plan) -> bool {
    p.devices
        .first()
        .is_some_and(|d| d.weight_bytes + d.reserve_bytes <= d.free_bytes)
}

/// Every physical device holds what its slots were given (a name listed twice shares its memory).
fn check(p: &Plan) -> std::result::Result<(), String> {
    let mut short = Vec::new();
    let mut names: Vec<&str> = p.devices.iter().map(|d| d.name.as_str()).collect();
    names.dedup();
    let mut done: Vec<&str> = Vec::new();
    for name in names {
        if done.contains(&name) {
            continue;
        }
        done.push(name);
        let on: Vec<&DevicePlan> = p.devices.iter().filter(|d| d.name == name).collect();
        let need: u64 = on.iter().map(|d| d.weight_bytes + d.reserve_bytes).sum();
        let free = on[0].free_bytes;
        if need > free {
            let w: u64 = on.iter().map(|d| d.weight_bytes).sum();
            short.push(format!(
                "{name} needs {} ({} of weights + {} for the KV cache, activations and margin) but has {} free",
                gib(need),
                gib(w),
                gib(need - w),
                gib(free)
            ));
        }
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(short.join("; "))
    }
}

/// The change that would make it fit, tried from the smallest: offloading to the CPU, then bf16 (from f32),
/// int8, int4 and int4 with the tower quantized (each on the first device, offloaded if it is a GPU); with
/// where it puts the model.
fn advice(
    sizes: &Sizes,
    req: &PlacementRequest,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> Option<(Change, String)> {
    let first = devices.first()?;
    let mut tries: Vec<(Change, Sizes, PlacementRequest)> = Vec::new();
    if !first.is_cpu() && req.gpu_layers != Some(GpuLayers::Auto) {
        let r = PlacementRequest {
            gpu_layers: Some(GpuLayers::Auto),
            devices: req.devices.clone(),
        };
        tries.push((Change::OffloadAuto, sizes.clone(), r));
    }
    // On a GPU the default placement offloads by itself when the model does not fit.
    for (change, f) in &sizes.cheaper {
        tries.push((*change, f.clone(), PlacementRequest::default()));
    }
    for (change, s, r) in tries {
        let devs = if r.devices.is_empty() {
            &devices[..1]
        } else {
            devices
        };
        if let Ok(p) = try_plan(&s, &r, devs, cpu) {
            let on = if p.layers.iter().all(|&l| l == p.layers[0]) {
                format!(
                    "on {} with {} of weights",
                    card(&devs[0]),
                    gib(s.total_weights())
                )
            } else {
                let k = p.layers.iter().filter(|&&l| l == 0).count();
                format!(
                    "with {k} of {} layers on {} and the rest on {}",
                    p.layers.len(),
                    devs[0].name,
                    p.devices[1].name
                )
            };
            return Some((change, on));
        }
    }
    None
}

/// `cuda:0 (23.6 GiB free)`.
fn card(d: &DeviceInfo) -> String {
    format!("{} ({} free)", d.name, gib(d.free))
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device plan ({}):", self.reason)?;
        for d in &self.devices {
            let left = d.left_bytes();
            writeln!(
                f,
                "  {:<7} {:>9} weights + {:>8} reserved of {:>9} free, {} left: {}",
                d.name,
                gib(d.weight_bytes),
                gib(d.reserve_bytes),
                gib(d.free_bytes),
                if left < 0 {
                    format!("-{}", gib(left.unsigned_abs()))
                } else {
                    gib(left as u64)
                },
                d.modules.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Plan {
    /// One line for the page: each device that runs something with what it holds
    /// (`cuda:0: vision tower + adapter, layers 0–13 · cpu: token embedding, layers 14–31, final norm + lm_head`).
    pub fn short(&self) -> String {
        self.devices
            .iter()
            .filter(|d| !d.modules.is_empty())
            .map(|d| format!("{}: {}", d.name, d.modules.join(", ")))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// Number of decoder layers on the first device.
    pub fn first_device_layers(&self) -> usize {
        self.layers.iter().filter(|&&l| l == 0).count()
    }

    /// Whether anything runs on more than one device slot (the embedding aside).
    pub fn is_split(&self) -> bool {
        self.layers.iter().any(|&l| l != self.vision) || self.head != self.vision
    }
}

/// A plan's devices opened: what the model is built with.
#[derive(Clone)]
pub struct Placement {
    pub slots: Vec<Device>,
    pub vision: usize,
    pub cross: usize,
    pub layers: Vec<usize>,
    pub head: usize,
    transfers: Arc<AtomicUsize>,
}

impl Placement {
    /// Everything on `device`.
    pub fn single(device: Device, layers: usize) -> Self {
        Self {
            slots: vec![device],
            vision: 0,
            cross: 0,
            layers: vec![0; layers],
            head: 0,
            transfers: Arc::default(),
        }
    }

    /// Opens the plan's devices with `open` (`cpu`, `cuda:N`).
    pub fn open(
        plan: &Plan,
        open: impl Fn(&str) -> anyhow::Result<Device>,
    ) -> anyhow::Result<Self> {
        // A name listed twice is one device (one CUDA context), so moves between its slots are copies.
        let mut slots: Vec<Device> = Vec::new();
        for (i, d) in plan.devices.iter().enumerate() {
            let dev = match plan.devices[..i].iter().position(|e| e.name == d.name) {
                Some(j) => slots[j].clone(),
                None => open(&d.name)?,
            };
            slots.push(dev);
        }
        Ok(Self {
            slots,
            vision: plan.vision,
            cross: plan.cross.unwrap_or(plan.vision),
            layers: plan.layers.clone(),
            head: plan.head,
            transfers: Arc::default(),
        })
    }

    pub fn device(&self, slot: usize) -> &Device {
        &self.slots[slot]
    }

    pub fn layer_device(&self, layer: usize) -> &Device {
        &self.slots[self.layers.get(layer).copied().unwrap_or(self.head)]
    }

    /// Moves `t` to `slot`'s device. Between slots of one physical device (the same device named twice) this is
    /// a copy, so that a split on one CPU runs the same path as one across GPUs.
    pub fn transfer(&self, t: &Tensor, slot: usize) -> Result<Tensor> {
        self.transfers.fetch_add(1, Ordering::Relaxed);
        let to = &self.slots[slot];
        if t.device().same_device(to) {
            t.copy()
        } else {
            t.to_device(to)
        }
    }

    /// How many tensors crossed slots so far.
    pub fn transfers(&self) -> usize {
        self.transfers.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::bench::named_config;

    const GB: u64 = 1_000_000_000;

    fn gpu(i: usize, free: u64) -> DeviceInfo {
        DeviceInfo {
            name: format!("cuda:{i}"),
            free,
        }
    }

    fn ram(free: u64) -> DeviceInfo {
        DeviceInfo {
            name: "cpu".into(),
            free,
        }
    }

    /// Free memory of a card sold as `gb` GB (GiB, as NVIDIA counts) once CUDA's context is up, as
    /// mem_get_info reports it, roughly.
    fn card_free(gb: u64) -> u64 {
        (gb << 30) - (600 << 20)
    }

    fn sizes(name: &str, dtype: DType, q: Quant, qv: bool) -> Sizes {
        Sizes::new(&named_config(name).unwrap(), dtype, q, qv, 2048)
    }

    fn fits(p: &Plan) {
        for d in &p.devices {
            assert!(d.left_bytes() >= 0, "{p}");
        }
        assert_eq!(p.layers.len(), 32);
    }

    #[test]
    fn cogvlm_bf16_splits_over_two_24gb_cards() {
        let s = sizes("cogvlm-17b", DType::BF16, Quant::Float, false);
        let req = PlacementRequest::parse(Some("cuda:0,cuda:1"), None);
        let devs = [gpu(0, card_free(24)), gpu(1, card_free(24))];
        let p = plan(&s, &req, &devs, &ram(64 * GB)).unwrap();
        println!("{p}");
        fits(&p);
        // The tower (8.8 GB) sits on the first card, so the second takes more layers; both take some, in order.
        let first = p.first_device_layers();
        assert!((8..16).contains(&first), "{first}");
        assert!(p.layers.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((p.vision, p.head, p.layers[31]), (0, 1, 1));
        assert_eq!(p.devices[2].name, "cpu");
        assert_eq!(p.devices[2].modules, ["token embedding"]);
    }

    #[test]
    fn cogvlm_bf16_on_one_24gb_card_offloads_to_ram() {
        let s = sizes("cogvlm-17b", DType::BF16, Quant::Float, false);
        let devs = [gpu(0, card_free(24))];
        // No flag: it does not fit on the card, so `--gpu-layers auto` is chosen.
        let p = plan(&s, &PlacementRequest::default(), &devs, &ram(64 * GB)).unwrap();
        println!("{p}");
        fits(&p);
        let reason = p.reason.to_string();
        assert!(reason.contains("--gpu-layers auto"), "{reason}");
        assert!(reason.contains("cuda:0 needs"), "{reason}");
        let k = p.first_device_layers();
        // 24 GiB less the tower (8.2 GiB), reserves and margin leaves room for about 16 layers of 0.75 GiB.
        assert!((12..=18).contains(&k), "{k}");
        assert_eq!(p.devices[1].name, "cpu");
        assert_eq!(p.head, 1);
        // One more layer would not fit on the card.
        let more = PlacementRequest {
            gpu_layers: Some(GpuLayers::Count(k + 1)),
            ..Default::default()
        };
        let e = plan(&s, &more, &devs, &ram(64 * GB)).unwrap_err();
        assert!(e.to_string().contains("cuda:0 needs"), "{e}");
        // An explicit count that fits is taken as given.
        let eight = PlacementRequest {
            gpu_layers: Some(GpuLayers::Count(8)),
            ..Default::default()
        };
        let p8 = plan(&s, &eight, &devs, &ram(64 * GB)).unwrap();
        assert_eq!(p8.first_device_layers(), 8);
    }

    #[test]
    fn int4_fits_one_12gb_card_with_the_tower_quantized() {
        let s = sizes("cogvlm-17b", DType::BF16, Quant::Q4, true);
        let devs = [gpu(0, card_free(12))];
        let p = plan(&s, &PlacementRequest::default(), &devs, &ram(16 * GB)).unwrap();
        println!("{p}");
        fits(&p);
        // 9.2 GiB of weights fit; with room for a 2048-position KV cache and a 490 px prefill's activations a
        // few layers go to the CPU.
        let k = p.first_device_layers();
        assert!((26..=32).contains(&k), "{p}");
        assert!(p.devices[0].weight_bytes < 9 << 30, "{p}");
        // With a 24 GB card it all fits on the GPU.
        let p = plan(
            &s,
            &PlacementRequest::default(),
            &[gpu(0, card_free(24))],
            &ram(16 * GB),
        )
        .unwrap();
        assert_eq!(p.first_device_layers(), 32);
        assert_eq!(
            p.reason,
            Reason::Fits {
                device: "cuda:0".into()
            }
        );
        // Without --quant-vision the bf16 tower takes 8.2 GiB and 15 layers would go to the CPU; with 4 GB of
        // RAM that fails, and the refusal names the flag that fits.
        let s = sizes("cogvlm-17b", DType::BF16, Quant::Q4, false);
        let e = plan(&s, &PlacementRequest::default(), &devs, &ram(4 * GB)).unwrap_err();
        println!("{e}");
        assert!(e.to_string().contains("cpu needs"), "{e}");
        assert!(
            e.to_string()
                .contains("`--quant 4 --quant-vision` fits with 28 of 32 layers on cuda:0"),
            "{e}"
        );
    }

    #[test]
    fn cogagent_bf16_fits_one_40gb_card() {
        let s = sizes("cogagent-18b", DType::BF16, Quant::Float, false);
        let devs = [gpu(0, card_free(40))];
        let p = plan(&s, &PlacementRequest::default(), &devs, &ram(64 * GB)).unwrap();
        println!("{p}");
        fits(&p);
        assert_eq!(p.first_device_layers(), 32);
        assert_eq!(p.cross, Some(0));
        assert!(p.devices[0].modules.contains(&"cross encoder".to_string()));
        // Its weights alone are over 35 GB.
        assert!(p.devices[0].weight_bytes > 35 * GB, "{p}");
    }

    #[test]
    fn impossible_plans_are_refused_with_numbers_and_advice() {
        let s = sizes("cogvlm-17b", DType::BF16, Quant::Float, false);
        // An 8 GB card and 8 GB of RAM: bf16 cannot fit, int4 with the tower quantized does, offloaded.
        let e = plan(
            &s,
            &PlacementRequest::default(),
            &[gpu(0, card_free(8))],
            &ram(8 * GB),
        )
        .unwrap_err();
        println!("{e}");
        assert!(e.to_string().starts_with("CogVLM (17."), "{e}");
        assert!(e.to_string().contains("cpu needs"), "{e}");
        assert!(e.to_string().contains("GiB free"), "{e}");
        assert!(
            e.to_string().contains("`--quant 4 --quant-vision` fits with 12 of 32 layers on cuda:0 and the rest on cpu"),
            "{e}"
        );
        // The CPU alone with 24 GB: int8 (with its bf16 tower) is still too big, int4 fits.
        let e = plan(
            &s,
            &PlacementRequest::default(),
            &[ram(24 * GB)],
            &ram(24 * GB),
        )
        .unwrap_err();
        println!("{e}");
        assert!(
            e.to_string()
                .contains("`--quant 4` fits on cpu (22.4 GiB free)"),
            "{e}"
        );
        // Nothing at all fits a 2 GB machine.
        let e = plan(
            &s,
            &PlacementRequest::default(),
            &[ram(2 * GB)],
            &ram(2 * GB),
        )
        .unwrap_err();
        assert!(e.to_string().contains("Nothing fits here"), "{e}");
        let e = plan(
            &s,
            &PlacementRequest {
                gpu_layers: Some(GpuLayers::Count(40)),
                ..Default::default()
            },
            &[gpu(0, card_free(80))],
            &ram(64 * GB),
        )
        .unwrap_err();
        assert!(e.to_string().contains("but the model has 32"), "{e}");
    }

    #[test]
    fn the_same_cpu_named_twice_splits_and_shares_its_memory() {
        let s = sizes("cogvlm-17b", DType::BF16, Quant::Q4, true);
        let req = PlacementRequest::parse(Some("cpu,cpu"), None);
        let p = plan(&s, &req, &[ram(20 * GB), ram(20 * GB)], &ram(20 * GB)).unwrap();
        println!("{p}");
        assert!(p.is_split());
        assert_eq!(p.embed, 0);
        let k = p.first_device_layers();
        assert!(k > 0 && k < 32, "{k}");
        // Together they would need more than one 12 GB machine has.
        assert!(plan(&s, &req, &[ram(12 * GB), ram(12 * GB)], &ram(12 * GB)).is_err());
        assert_eq!("auto".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
        assert_eq!("3".parse::<GpuLayers>(), Ok(GpuLayers::Count(3)));
        assert!("x".parse::<GpuLayers>().is_err());
    }
}
