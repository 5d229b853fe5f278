//! How to load a checkpoint: the options every command shares (device, dtype, quantization, placement,
//! adapter), their parsing, and the device plan made from them before any weight is read.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::model::config::Config;
use crate::model::memory;
use crate::model::placement::{self, DeviceInfo, PlacementRequest, Plan, Sizes};
use crate::model::quant::Quant;

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, `bf16` or `f16`; `None` = bf16 on CUDA, f32 on CPU.
    pub dtype: Option<String>,
    pub tokenizer: Option<PathBuf>,
    /// int8 / int4 weights for the language model (default: float).
    pub quant: Quant,
    /// With `quant`, the vision tower's and adapter's linear layers in the same format.
    pub quant_vision: bool,
    /// `--devices` / `--gpu-layers`: where the modules go (default: all on `device`, offloaded when too big).
    pub placement: PlacementRequest,
    /// `--lora DIR`: a PEFT adapter, merged into float weights at load, a separate low-rank product on
    /// quantized ones.
    pub lora: Option<PathBuf>,
    /// `bench --int4-format`: with `--quant 4`, this 4-bit format instead of the device's choice (`qformat`).
    pub int4_format: Option<GgmlDType>,
}

pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "" | "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("bad CUDA device {s:?}"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this binary was built without the `cuda` feature (cargo build --features cuda)");
            }
            Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
        }
        other => bail!("unknown device {other:?} (expected cpu, cuda or cuda:N)"),
    }
}

/// The device plan for `cfg` under `opts`: the devices named by `--devices` (else `--device`) with their free
/// memory and the host's, the KV cache sized for the config's context.
pub fn make_plan(cfg: &Config, dtype: DType, opts: &LoadOptions) -> anyhow::Result<Plan> {
    let names: Vec<String> = if opts.placement.devices.is_empty() {
        vec![opts.device.clone()]
    } else {
        opts.placement.devices.clone()
    };
    let mut devices = Vec::new();
    for n in &names {
        let dev = parse_device(n)?;
        let name = match &dev {
            Device::Cpu => "cpu".to_string(),
            _ => format!("cuda:{}", n.strip_prefix("cuda:").unwrap_or("0")),
        };
        let free = memory::free_bytes(&dev).unwrap_or(u64::MAX / 4);
        devices.push(DeviceInfo { name, free });
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
    Ok(placement::plan(&sizes, &opts.placement, &devices, &cpu)?)
}

pub fn parse_dtype(s: Option<&str>, device: &Device) -> anyhow::Result<DType> {
    Ok(match s {
        None => {
            if device.is_cuda() {
                DType::BF16
            } else {
                DType::F32
            }
        }
        Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(o) => bail!("unknown dtype {o:?} (expected f32, bf16 or f16)"),
    })
}
