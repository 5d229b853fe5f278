//! How to load a checkpoint: the options every command shares (device, dtype, quantization, placement,
//! adapter), their parsing, and the device plan made from them before any weight is read.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::model::config::Config;
use crate::model::memory;
use crate::model::placement::{
    self, Change, DeviceInfo, GpuLayers, PlacementRequest, Plan, Reason, Refusal, Sizes,
};
use crate::model::quant::Quant;

/// How to load a checkpoint, as every command takes it (`#[command(flatten)]`) and passes it down unchanged.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoadOptions {
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: DeviceName,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU)
    #[arg(long, value_parser = parse_dtype_name)]
    pub dtype: Option<DType>,
    /// 8 or 4: int8 (Q8_0) / int4 (Q4K; Q4_0 on x86 CPUs) weights for the language model; the vision towers
    /// stay float
    #[arg(long, default_value = "none")]
    pub quant: Quant,
    /// With --quant: the EVA2-CLIP vision tower's linear layers in the same format (CogVLM int4 in ~10 GB)
    #[arg(long, requires = "quant")]
    pub quant_vision: bool,
    /// With --quant 4: q4k, q4_0 or q4_1 instead of the device's choice
    #[arg(long, requires = "quant", value_parser = crate::model::quant::format::parse_int4_format)]
    pub int4_format: Option<GgmlDType>,
    /// Split the decoder layers across these devices, e.g. cuda:0,cuda:1 (the vision towers on the first)
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<DeviceName>,
    /// N decoder layers (and the towers) on the GPU, the rest on the CPU (or the second of --devices);
    /// `auto`: as many as fit (the default when the model does not fit the GPU)
    #[arg(long)]
    pub gpu_layers: Option<GpuLayers>,
    /// A LoRA adapter folder (PEFT format): merged into float weights at load, a separate low-rank product on
    /// quantized ones
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// tokenizer.json; `None`: found next to the checkpoint. Not a shared flag: a server's folder holds
    /// checkpoints of more than one tokenizer, so the commands of one checkpoint declare their own.
    #[arg(skip)]
    pub tokenizer: Option<PathBuf>,
}

impl LoadOptions {
    /// Where the modules go (`--devices` / `--gpu-layers`; empty: all on `device`, offloaded when too big).
    pub fn placement(&self) -> PlacementRequest {
        PlacementRequest {
            devices: self.devices.iter().map(ToString::to_string).collect(),
            gpu_layers: self.gpu_layers,
        }
    }

    /// The device the towers and the first layers go to: the first of `--devices`, else `--device`.
    pub fn first_device(&self) -> DeviceName {
        self.devices.first().copied().unwrap_or(self.device)
    }

    /// The float type of the weights: `--dtype`, else the first device's default.
    pub fn float_type(&self) -> DType {
        self.dtype.unwrap_or(match self.first_device() {
            DeviceName::Cuda(_) => DType::BF16,
            DeviceName::Cpu => DType::F32,
        })
    }
}

/// A device by name: `cpu`, `cuda` (the first GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceName {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {other:?} (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceName {
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// The candle device; a CUDA one needs a binary built with the `cuda` feature.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    bail!("device {self}: this binary was built without the `cuda` feature (cargo build --features cuda)");
                }
                Device::new_cuda(n).with_context(|| format!("cannot open CUDA device {n}"))
            }
        }
    }
}

/// The candle device named `s` (`cpu`, `cuda`, `cuda:N`).
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    s.parse::<DeviceName>().map_err(anyhow::Error::msg)?.open()
}

/// `--dtype`: f32, bf16 or f16.
pub fn parse_dtype_name(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        o => Err(format!("unknown dtype {o:?} (expected f32, bf16 or f16)")),
    }
}

/// The device plan for `cfg` under `opts`: the devices named by `--devices` (else `--device`) with their free
/// memory and the host's, the KV cache sized for the config's context.
pub fn make_plan(cfg: &Config, dtype: DType, opts: &LoadOptions) -> anyhow::Result<Plan> {
    let names = match opts.devices.is_empty() {
        true => vec![opts.device],
        false => opts.devices.clone(),
    };
    let mut devices = Vec::new();
    for n in names {
        let dev = n.open()?;
        let free = memory::free_bytes(&dev).unwrap_or(u64::MAX / 4);
        devices.push(DeviceInfo {
            name: n.to_string(),
            free,
        });
    }
    let cpu = DeviceInfo {
        name: "cpu".into(),
        free: memory::mem_available_bytes().unwrap_or(u64::MAX / 4),
    };
    let sizes = Sizes::new(
        cfg,
        dtype,
        opts.quant,
        opts.quant_vision,
        cfg.max_position_embeddings,
    );
    Ok(placement::plan(&sizes, &opts.placement(), &devices, &cpu)?)
}

// The planner's facts (`model::placement`) in the words of these flags.

/// `, --quant 4 --quant-vision` (empty for float weights).
fn quant_flags((quant, vision): (Quant, bool)) -> String {
    let bits = match quant {
        Quant::Float => return String::new(),
        Quant::Q8 => 8,
        Quant::Q4 => 4,
    };
    match vision {
        true => format!(", --quant {bits} --quant-vision"),
        false => format!(", --quant {bits}"),
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::OffloadAuto => "--gpu-layers auto",
            Change::Bf16 => "--dtype bf16",
            Change::Int8 => "--quant 8",
            Change::Int4 => "--quant 4",
            Change::Int4WithVision => "--quant 4 --quant-vision",
        })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Fits { device } => write!(f, "fits on {device}"),
            Reason::Offload {
                auto,
                on_first: k,
                layers: n,
                first,
                second,
            } => {
                let asked = match auto {
                    true => "auto".to_string(),
                    false => k.to_string(),
                };
                write!(
                    f,
                    "--gpu-layers {asked}: {k} of {n} layers on {first}, the rest on {second}"
                )
            }
            Reason::Split { devices, counts } => {
                write!(
                    f,
                    "--devices {}: layers split {counts:?}",
                    devices.join(",")
                )
            }
            Reason::TooBigForGpu { short, then } => write!(f, "{short}; {then}"),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} does not fit: {}. ",
            self.what,
            quant_flags(self.quant),
            self.why
        )?;
        match &self.fix {
            Some((change, on)) => write!(f, "`{change}` fits {on}"),
            None => f.write_str(
                "Nothing fits here, even int4 with the vision tower quantized and offloaded to the CPU: use a \
                 larger GPU, more GPUs (--devices cuda:0,cuda:1) or more memory",
            ),
        }
    }
}
