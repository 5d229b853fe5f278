//! `cogvlm bench --concurrency 1,4,8,16`: several requests arrive at once and decode together, as the server's
//! worker runs them (one image encoding and prefill chunk between two decode steps, then one batched decode step
//! for every running sequence, [`Pipeline::step`]). For each level: aggregate tokens/s (end to end, and over the
//! decode steps alone), per-stream decode tokens/s, time to first token from arrival (p50 / p95), and the
//! longest pause a running stream saw while others were prefilled.

use std::time::Instant;

use crate::generate::{ChatRequest, Pipeline, Sequence};

/// One concurrency level's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub new_tokens: usize,
    /// Every generated token ÷ the round's wall time (first arrival to last token).
    pub aggregate_tok_s: f64,
    /// Tokens made by decode steps ÷ the time spent choosing and decoding them (prefills excluded).
    pub aggregate_decode_tok_s: f64,
    /// Median over the streams of (tokens − 1) ÷ (last token − first token).
    pub per_stream_tok_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p95_ms: f64,
    /// Longest gap between two tokens of one stream (a new request's prefill in between).
    pub max_stall_ms: f64,
    pub wall_s: f64,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Stream {
    seq: Sequence,
    first: Option<Instant>,
    last: Option<Instant>,
    tokens: usize,
    max_gap_ms: f64,
}

/// What a level's streams measured so far.
#[derive(Default)]
struct Tally {
    ttfts: Vec<f64>,
    rates: Vec<f64>,
    stalls: Vec<f64>,
    decode_s: f64,
    decode_tokens: usize,
    total_tokens: usize,
}

/// Runs `requests` (all arriving now) to `new_tokens` each, at most `max_batch` at a time.
pub fn run_level(
    pipe: &mut Pipeline,
    requests: Vec<ChatRequest>,
    max_batch: usize,
    new_tokens: usize,
) -> anyhow::Result<Level> {
    let concurrency = requests.len();
    let arrival = Instant::now();
    let mut waiting = std::collections::VecDeque::from(requests);
    let mut running: Vec<Stream> = Vec::new();
    let mut tally = Tally::default();
    while !waiting.is_empty() || !running.is_empty() {
        // As the worker: one prompt prefilled at a time, one chunk a turn (`--prefill-chunk`).
        if let Some(s) = running.iter_mut().find(|s| s.seq.is_prefilling()) {
            pipe.prefill_step(&mut s.seq)?;
        } else if running.len() < max_batch {
            if let Some(req) = waiting.pop_front() {
                let seq = pipe.begin_bench(&req)?;
                running.push(Stream {
                    seq,
                    first: None,
                    last: None,
                    tokens: 0,
                    max_gap_ms: 0.0,
                });
            }
        }
        let t = Instant::now();
        let decoded = sample_ready(&mut running, arrival, &mut tally)?;
        let mut seqs: Vec<&mut Sequence> = running.iter_mut().map(|s| &mut s.seq).collect();
        pipe.step(&mut seqs)?;
        tally.decode_s += t.elapsed().as_secs_f64();
        tally.decode_tokens += decoded;
        retire_finished(pipe, &mut running, &mut tally);
    }
    let wall_s = arrival.elapsed().as_secs_f64();
    Ok(Level {
        concurrency,
        new_tokens,
        aggregate_tok_s: tally.total_tokens as f64 / wall_s,
        aggregate_decode_tok_s: if tally.decode_s > 0.0 {
            tally.decode_tokens as f64 / tally.decode_s
        } else {
            0.0
        },
        per_stream_tok_s: percentile(tally.rates, 0.5),
        ttft_p50_ms: percentile(tally.ttfts.clone(), 0.5),
        ttft_p95_ms: percentile(tally.ttfts, 0.95),
        max_stall_ms: tally.stalls.into_iter().fold(0.0, f64::max),
        wall_s,
    })
}

/// Samples a token for every stream ready for one; their first tokens' times since `arrival` are TTFTs.
/// Returns how many later (decoded) tokens were sampled.
fn sample_ready(
    running: &mut [Stream],
    arrival: Instant,
    tally: &mut Tally,
) -> anyhow::Result<usize> {
    let mut decoded = 0;
    for s in running.iter_mut() {
        if !s.seq.is_ready() || s.seq.sample()?.is_none() {
            continue;
        }
        let now = Instant::now();
        match s.last {
            None => {
                s.first = Some(now);
                tally.ttfts.push((now - arrival).as_secs_f64() * 1e3);
            }
            Some(last) => {
                s.max_gap_ms = s.max_gap_ms.max((now - last).as_secs_f64() * 1e3);
                decoded += 1;
            }
        }
        s.last = Some(now);
        s.tokens += 1;
        tally.total_tokens += 1;
    }
    Ok(decoded)
}

/// Ends the finished streams, recording each one's decode rate and longest stall.
fn retire_finished(pipe: &mut Pipeline, running: &mut Vec<Stream>, tally: &mut Tally) {
    let mut i = 0;
    while i < running.len() {
        if !running[i].seq.is_finished() {
            i += 1;
            continue;
        }
        let s = running.remove(i);
        if let (Some(first), Some(last)) = (s.first, s.last) {
            let span = (last - first).as_secs_f64();
            if s.tokens > 1 && span > 0.0 {
                tally.rates.push((s.tokens - 1) as f64 / span);
            }
        }
        tally.stalls.push(s.max_gap_ms);
        pipe.finish(s.seq);
    }
}
