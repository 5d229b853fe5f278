//! The training loop: batches drawn in a reshuffled order, accumulated gradients, the optimizer step, and after
//! each step the log, validation and checkpoints.

use super::*;

/// A training run under way: what each step reads, and the log it writes.
pub(super) struct Run<'a> {
    pub(super) args: &'a TrainArgs,
    pub(super) inputs: &'a Inputs,
    pub(super) m: &'a TrainModel,
    pub(super) adapter: Option<&'a Adapter>,
    pub(super) valid: &'a [Example],
    pub(super) total_steps: usize,
    pub(super) warmup: usize,
    pub(super) log: std::fs::File,
    pub(super) started: Instant,
    /// Training loss summed over the steps since the last log line, and their number.
    pub(super) window: (f64, usize),
}

impl Run<'_> {
    /// Steps `start..total_steps`: the examples in a reshuffled order each pass, one round of each drawn.
    pub(super) fn train(
        mut self,
        train: &[Example],
        opt: &mut AdamW,
        rng: &mut StdRng,
        start: usize,
    ) -> anyhow::Result<()> {
        let args = self.args;
        let mut tokens = 0usize;
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut cursor = order.len();
        for step in start..self.total_steps {
            let lr = args
                .schedule
                .lr(args.lr, step, self.warmup, self.total_steps);
            let mut grads: Vec<Option<Tensor>> = vec![None; opt.len()];
            let mut step_loss = 0.0;
            for _ in 0..args.grad_accum {
                let mut batch = Vec::with_capacity(args.batch);
                for _ in 0..args.batch {
                    if cursor >= order.len() {
                        order.shuffle(rng);
                        cursor = 0;
                    }
                    let ex = &train[order[cursor]];
                    cursor += 1;
                    let round = rng.random_range(0..ex.rounds.len());
                    let p = self
                        .inputs
                        .prepare(ex, round)
                        .with_context(|| format!("example {}", ex.image.display()))?;
                    tokens += p.labeled.input.input_ids.len();
                    batch.push(p);
                }
                let pad = self.inputs.cfg.pad_token_id();
                let loss = (batch_loss(self.m, &batch, pad)? / args.grad_accum as f64)?;
                step_loss += loss.to_scalar::<f32>()? as f64;
                opt.accumulate(&loss.backward()?, &mut grads)?;
            }
            let norm = opt.clip(&mut grads, args.max_grad_norm)?;
            opt.step(&grads, lr)?;
            self.after_step(step + 1, start, (step_loss, lr, norm), tokens, opt)?;
        }
        eprintln!(
            "\ndone in {}; wrote {}",
            fmt_duration(self.started.elapsed().as_secs_f64()),
            args.out.display()
        );
        Ok(())
    }

    /// After step `done` (of a run that started at `start`, `tokens` read since): the progress line, the log's
    /// training line every `--log-every` steps, validation every `--eval-every`, and the checkpoints.
    pub(super) fn after_step(
        &mut self,
        done: usize,
        start: usize,
        (step_loss, lr, norm): (f64, f64, f64),
        tokens: usize,
        opt: &AdamW,
    ) -> anyhow::Result<()> {
        let (args, total_steps) = (self.args, self.total_steps);
        self.window.0 += step_loss;
        self.window.1 += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (done - start) as f64 / elapsed.max(1e-9);
        let tok_s = tokens as f64 / elapsed.max(1e-9);
        eprint!(
            "\rstep {done}/{total_steps} loss {step_loss:.4} lr {lr:.2e} |g| {norm:.2} {tok_s:.0} tok/s ETA {}   ",
            fmt_duration((total_steps - done) as f64 / rate.max(1e-9))
        );
        if done.is_multiple_of(args.log_every.max(1)) || done == total_steps {
            let line = json!({"type": "train", "step": done, "loss": self.window.0 / self.window.1 as f64,
                "lr": lr, "grad_norm": norm, "steps_per_s": rate, "tokens_per_s": tok_s,
                "elapsed_s": elapsed});
            writeln!(self.log, "{line}")?;
            self.window = (0.0, 0);
        }
        let eval_now =
            args.eval_every > 0 && (done.is_multiple_of(args.eval_every) || done == total_steps);
        if eval_now && !self.valid.is_empty() {
            let (loss, exact, n) = evaluate(self.m, self.inputs, self.valid, args.eval_samples)?;
            let line = json!({"type": "eval", "step": done, "valid_loss": loss, "valid_exact": exact,
                "valid_examples": n, "elapsed_s": self.started.elapsed().as_secs_f64()});
            eprintln!("\n{line}");
            writeln!(self.log, "{line}")?;
        }
        let state = TrainerState {
            step: done,
            total_steps,
            full: args.full,
            seed: args.seed,
        };
        // A periodic checkpoint goes to `checkpoint-N/`; the final result to `--out` itself.
        let periodic =
            args.save_every > 0 && done.is_multiple_of(args.save_every) && done < total_steps;
        if periodic || done == total_steps {
            let dir = match periodic {
                true => args.out.join(format!("checkpoint-{done}")),
                false => args.out.clone(),
            };
            save(
                &dir,
                args,
                self.inputs,
                self.m,
                self.adapter,
                opt,
                &state,
                periodic,
            )?;
        }
        Ok(())
    }
}
