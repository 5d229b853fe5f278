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

mod devices;
mod planner;
mod sizes;
#[cfg(test)]
mod tests;

pub use devices::Placement;
pub use planner::plan;
pub use sizes::{Change, Sizes};

use super::quant::Quant;

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
