//! A plan's devices opened, and the moves of hidden states between them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use super::Plan;

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
