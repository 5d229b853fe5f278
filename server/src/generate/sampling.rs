//! Next-token choice: greedy, or temperature → top-k → top-p sampling with a seeded RNG, after the
//! repetition penalty (HF `RepetitionPenaltyLogitsProcessor` semantics).

use candle_core::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};

pub use protocol::Sampling;

/// Chooses tokens for one answer. candle-transformers' `LogitsProcessor` is not used: it sorts the whole
/// vocabulary for top-p and has no HF-style repetition penalty over the prompt.
pub struct Sampler {
    params: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler with `params.seed`, or a fresh random seed when it has none.
    pub fn new(params: Sampling) -> Self {
        let rng = StdRng::seed_from_u64(params.seed.unwrap_or_else(rand::random));
        Self { params, rng }
    }

    /// Chooses from `[V]` logits where they are: greedy decoding without a penalty takes the argmax on the
    /// device and reads back one id; otherwise the logits are copied to the host for [`Self::sample`].
    pub fn sample_tensor(&mut self, logits: &Tensor, previous: &[u32]) -> candle_core::Result<u32> {
        if self.params.is_greedy() && self.params.repetition_penalty == 1.0 {
            return logits.argmax(0)?.to_scalar::<u32>();
        }
        let mut host: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        Ok(self.sample(&mut host, previous))
    }

    /// `logits` are modified in place by the penalty. `previous` = prompt + generated ids, as HF penalises
    /// every id in `input_ids`.
    pub fn sample(&mut self, logits: &mut [f32], previous: &[u32]) -> u32 {
        let p = self.params.repetition_penalty;
        if p != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &id in previous {
                if seen.insert(id) {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = if *l < 0.0 { *l * p } else { *l / p };
                    }
                }
            }
        }
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let t = self.params.temperature as f32;
        let mut idx: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        if idx.is_empty() {
            return argmax(logits);
        }
        // Only the candidates that can be drawn are ordered: the top k by selection (linear), then at most the
        // nucleus' head; a full sort of the 32000-entry vocabulary costs ~1 ms a token, a fifth of a GPU step.
        if let Some(k) = self.params.top_k_limit().filter(|&k| k < idx.len()) {
            idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
            idx.truncate(k);
        }
        let max = idx
            .iter()
            .map(|&i| logits[i])
            .fold(f32::NEG_INFINITY, f32::max)
            / t;
        let mut probs: Vec<f32> = idx.iter().map(|&i| (logits[i] / t - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            let keep = nucleus(&mut idx, &mut probs, self.params.top_p as f32);
            idx.truncate(keep);
            probs.truncate(keep);
            let s: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let r: f32 = self.rng.random();
        let mut acc = 0.0;
        for (k, &p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return idx[k] as u32;
            }
        }
        idx[probs.len() - 1] as u32
    }
}

/// Orders the most likely candidates first (ties by id) and returns how many form the smallest set whose mass
/// reaches `top_p` (at least one). Sorts a head of 64 candidates, doubling it only while the head's mass falls
/// short of `top_p`.
fn nucleus(idx: &mut [usize], probs: &mut [f32], top_p: f32) -> usize {
    let n = idx.len();
    let mut order: Vec<usize> = (0..n).collect();
    let by_prob =
        |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(idx[*a].cmp(&idx[*b]));
    let mut head = 64.min(n);
    let keep = loop {
        if head < n {
            order.select_nth_unstable_by(head - 1, by_prob);
        }
        order[..head].sort_unstable_by(by_prob);
        let mut acc = 0.0;
        let reached = order[..head].iter().position(|&o| {
            acc += probs[o];
            acc >= top_p
        });
        match reached {
            Some(j) => break j + 1,
            None if head == n => break n,
            None => head = (head * 2).min(n),
        }
    };
    let (sorted_idx, sorted_probs): (Vec<usize>, Vec<f32>) =
        order.iter().map(|&o| (idx[o], probs[o])).unzip();
    idx.copy_from_slice(&sorted_idx);
    probs.copy_from_slice(&sorted_probs);
    keep
}

/// First index of the maximum (like `torch.argmax`).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_first_max() {
        let mut s = Sampler::new(Sampling::greedy());
        assert_eq!(s.sample(&mut [0.0, 3.0, 3.0, 1.0], &[]), 1);
    }

    #[test]
    fn device_greedy_matches_host_greedy() -> candle_core::Result<()> {
        let v = [0.5f32, -1.0, 7.25, 7.0, 3.0];
        let t = Tensor::new(&v, &candle_core::Device::Cpu)?;
        let mut s = Sampler::new(Sampling::greedy());
        assert_eq!(s.sample_tensor(&t, &[])?, 2);
        assert_eq!(s.sample(&mut v.clone(), &[]), 2);
        // With a penalty the host path runs (and the penalty changes the choice).
        let mut s = Sampler::new(Sampling {
            repetition_penalty: 2.0,
            ..Sampling::greedy()
        });
        assert_eq!(s.sample_tensor(&t, &[2])?, 3);
        Ok(())
    }

    #[test]
    fn repetition_penalty_follows_hf() {
        let mut s = Sampler::new(Sampling {
            repetition_penalty: 2.0,
            ..Sampling::greedy()
        });
        let mut l = [4.0, 3.0, -1.0];
        assert_eq!(s.sample(&mut l, &[0, 0, 2]), 1);
        assert_eq!(l, [2.0, 3.0, -2.0]);
    }

    #[test]
    fn sampling_respects_top_k_and_seed() {
        let params = Sampling {
            temperature: 1.0,
            top_k: Some(2),
            top_p: 1.0,
            seed: Some(7),
            ..Sampling::greedy()
        };
        let logits = [5.0, 4.9, -10.0, 4.8];
        let draw = |p: Sampling| {
            let mut s = Sampler::new(p);
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(params.clone());
        assert!(a.iter().all(|&t| t == 0 || t == 1));
        assert!(a.contains(&0) && a.contains(&1));
        assert_eq!(a, draw(params));
    }

    #[test]
    fn nucleus_is_the_smallest_head_reaching_top_p() {
        // 200 candidates: the head past 64 must be found by doubling.
        let n = 200;
        let mut idx: Vec<usize> = (0..n).rev().collect();
        let mut probs: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let s: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= s);
        let want_order: Vec<usize> = (0..n).collect(); // probs grow with position, ids fall
        let keep = nucleus(&mut idx, &mut probs, 0.9);
        assert_eq!(idx, want_order);
        let mass: f32 = probs[..keep].iter().sum();
        assert!(mass >= 0.9 && mass - probs[keep - 1] < 0.9, "keep {keep}");
        assert!(keep > 128);
        // A peaked distribution keeps one.
        let mut idx = vec![3, 1, 2];
        let mut probs = vec![0.05, 0.9, 0.05];
        assert_eq!(nucleus(&mut idx, &mut probs, 0.8), 1);
        assert_eq!(idx, vec![1, 2, 3]);
    }

    #[test]
    fn top_p_sampling_draws_only_from_the_nucleus() {
        let mut logits: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.01).collect();
        logits[500] = 12.0;
        logits[900] = 11.0;
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            top_p: 0.5,
            ..Sampling::greedy()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 500);
        }
    }
}
