//! The default `--max-batch` from the memory loading left: every running answer holds its own KV cache, which
//! at full size and the full context is the largest thing after the weights.

use crate::generate::Pipeline;
use crate::model::memory;
use crate::model::placement::Sizes;

/// Kept free beside the caches: allocator slack and what else the process makes.
const MARGIN: u64 = 512 << 20;

/// Why the batch is as large as it is, for the log line printed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchFit {
    /// Generations decoded together.
    pub max_batch: usize,
    /// KV caches of the whole context that fit in what is left.
    pub fit: usize,
    pub free: u64,
    pub per_sequence: u64,
    pub reserve: u64,
    pub context: usize,
}

impl std::fmt::Display for BatchFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "max batch {}: {:.2} GiB free after loading, less {:.2} GiB for a prefill, kept conversations \
             and margin, holds {} KV caches of {} positions ({:.3} GiB each)",
            self.max_batch,
            gib(self.free),
            gib(self.reserve),
            self.fit,
            self.context,
            gib(self.per_sequence)
        )
    }
}

/// The largest batch up to `ceiling` whose KV caches (`per_sequence` bytes each) fit in `free` after `reserve`;
/// at least one.
pub fn fit_batch(free: u64, reserve: u64, per_sequence: u64, ceiling: usize) -> usize {
    let fit = free.saturating_sub(reserve) / per_sequence.max(1);
    (fit as usize).clamp(1, ceiling.max(1))
}

/// The batch for `pipe`'s model on the device of its first decoder layer, at most `ceiling`: each sequence's
/// KV cache for the whole context, beside one prefill's activations, the conversations kept for follow-ups,
/// the tiles candle has yet to repack, and a margin. `None` when the device cannot tell its free memory.
pub fn from_memory(pipe: &Pipeline, ceiling: usize, kept: usize) -> Option<BatchFit> {
    let model = pipe.model();
    let cfg = &model.cfg;
    let report = model.quant_report();
    let device = model.placement().layer_device(0);
    let free = memory::free_bytes(device)?;
    let context = cfg.max_position_embeddings;
    let sizes = Sizes::new(cfg, model.dtype(), report.mode, false, context);
    let per_sequence = sizes.layer_kv * cfg.num_hidden_layers as u64;
    let reserve = sizes.decoder_act + MARGIN + report.repacked_bytes + kept as u64 * per_sequence;
    let fit = free.saturating_sub(reserve) / per_sequence.max(1);
    Some(BatchFit {
        max_batch: fit_batch(free, reserve, per_sequence, ceiling),
        fit: fit as usize,
        free,
        per_sequence,
        reserve,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CogVLM-17B in bf16 on one GPU: each 2048-position cache is 32 layers × 2 × 2048 × 4096 × 2 bytes = 1 GiB,
    /// so 6.5 GiB left after the weights and a 1.5 GiB reserve hold 5; a tiny model's are capped by the
    /// device's default, and no room at all still runs one.
    #[test]
    fn the_batch_is_what_the_caches_leave_room_for() {
        let gib = 1u64 << 30;
        let cfg = crate::model::named_configs::named_config("cogvlm-17b").unwrap();
        let s = Sizes::new(
            &cfg,
            candle_core::DType::BF16,
            crate::model::quant::Quant::Q4,
            true,
            2048,
        );
        assert_eq!(s.layer_kv * 32, gib);
        assert_eq!(fit_batch(8 * gib, 3 * gib / 2, gib, 16), 6);
        assert_eq!(fit_batch(6 * gib + gib / 2, 3 * gib / 2, gib, 16), 5);
        assert_eq!(fit_batch(64 * gib, gib, 1 << 20, 8), 8);
        assert_eq!(fit_batch(gib, 2 * gib, gib, 8), 1);
    }
}
