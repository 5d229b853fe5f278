//! The terminal chat's conversation loop, shared by `cogvlm chat` on a local checkpoint and on a remote server:
//! ask for an image (unless one was given), then questions; `clear` starts over with a new image, `stop` or the
//! end of input quits. Each backend supplies how to open an image and how to answer one question.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Result;
use protocol::Stats;

/// The terminal: questions in, answers out, stats and errors to `err`.
pub struct Io<'a> {
    pub input: &'a mut dyn BufRead,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

impl Io<'_> {
    fn read_line(&mut self, prompt: &str) -> Result<Option<String>> {
        write!(self.out, "{prompt}")?;
        self.out.flush()?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim().to_string()))
    }
}

/// How one question ended.
pub enum Reply {
    Answer { text: String, stats: Stats },
    Failed(String),
}

/// The line after an answer: prompt tokens (and how many continued from the conversation's cache),
/// TTFT, tokens and their rate, why it stopped.
pub fn stats_line(s: &Stats) -> String {
    let cached = if s.reused_tokens > 0 {
        format!(" ({} cached)", s.reused_tokens)
    } else {
        String::new()
    };
    format!(
        "[{} prompt tokens{cached} · TTFT {:.0} ms · {} tokens at {:.1} tok/s · stop: {}]",
        s.prompt_tokens,
        s.ttft_ms,
        s.generated_tokens,
        s.tokens_per_s,
        s.stop.label()
    )
}

/// `cogvlm chat`'s sampling flags. Greedy by default, as THUDM's CLI demo (`top_p` 0.8 applies once
/// `--temperature` is raised).
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.8)]
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 or absent: no top-k, 1: greedy
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Total length, image positions included (default: the checkpoint's context)
    #[arg(long, default_value_t = protocol::MAX_CONTEXT)]
    pub max_length: usize,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The settings, checked by the same rules as the page's and the API's.
    pub fn sampling(&self) -> Result<protocol::Sampling> {
        let s = protocol::Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_length: self.max_length,
            max_new_tokens: self.max_new_tokens,
            repetition_penalty: self.repetition_penalty,
            seed: Some(self.seed),
        };
        s.validate()?;
        Ok(s)
    }
}

/// Runs the conversation. `open` turns a typed path into the backend's image (an error is shown and the image
/// asked again); `ask(out, image, history, query)` streams one answer's pieces to `out` and says how it ended.
pub fn converse<I>(
    io: &mut Io,
    image: Option<PathBuf>,
    open: impl Fn(&str) -> Result<I>,
    mut ask: impl FnMut(&mut dyn Write, Option<&I>, &[(String, String)], &str) -> Result<Reply>,
) -> Result<()> {
    let mut image_path = image.map(|p| p.display().to_string());
    'conversation: loop {
        if image_path.is_none() {
            match io.read_line("image path (empty for text only): ")? {
                None => return Ok(()),
                Some(p) if p == "stop" => return Ok(()),
                Some(p) => image_path = Some(p),
            }
        }
        let image = match image_path.as_deref() {
            Some("") | None => None,
            Some(p) => match open(p) {
                Ok(i) => Some(i),
                Err(e) => {
                    writeln!(io.err, "{e:#}")?;
                    image_path = None;
                    continue;
                }
            },
        };
        let mut history: Vec<(String, String)> = Vec::new();
        loop {
            let Some(query) = io.read_line("user> ")? else {
                return Ok(());
            };
            match query.as_str() {
                "stop" => return Ok(()),
                "clear" => {
                    image_path = None;
                    continue 'conversation;
                }
                "" => continue,
                _ => {}
            }
            write!(io.out, "model> ")?;
            io.out.flush()?;
            let reply = ask(io.out, image.as_ref(), &history, &query)?;
            writeln!(io.out)?;
            match reply {
                Reply::Answer { text, stats } => {
                    writeln!(io.err, "{}", stats_line(&stats))?;
                    history.push((query, text.trim().to_string()));
                }
                Reply::Failed(message) => writeln!(io.err, "error: {message}")?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two turns about an image, a `clear`, a bad path, a text-only turn, then `stop`: the history each answer
    /// sees, what the terminal shows, and that a failed turn is reported and not remembered.
    #[test]
    fn turns_history_clear_and_stop() -> Result<()> {
        let script = "cat.png\nwhat?\nfail\nmore?\nclear\nmissing.png\n\nhi\nstop\nignored\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = Io {
            input: &mut script.as_bytes(),
            out: &mut out,
            err: &mut err,
        };
        let mut seen = Vec::new();
        let open = |p: &str| {
            anyhow::ensure!(p != "missing.png", "cannot open image {p}");
            Ok(p.to_string())
        };
        converse(&mut io, None, open, |out, image, history, query| {
            seen.push((image.cloned(), history.len(), query.to_string()));
            if query == "fail" {
                return Ok(Reply::Failed("boom".into()));
            }
            write!(out, "answer to {query}")?;
            Ok(Reply::Answer {
                text: format!("answer to {query}"),
                stats: Stats {
                    checkpoint: "m".into(),
                    prompt_tokens: 10,
                    reused_tokens: history.len() * 5,
                    dropped_turns: 0,
                    context: 0,
                    generated_tokens: 3,
                    prefill_ms: 10.0,
                    ttft_ms: 12.0,
                    tokens_per_s: 100.0,
                    stop: protocol::StopReason::Eos,
                },
            })
        })?;
        let cat = Some("cat.png".to_string());
        assert_eq!(
            seen,
            vec![
                (cat.clone(), 0, "what?".into()),
                (cat.clone(), 1, "fail".into()),
                (cat, 1, "more?".into()),
                (None, 0, "hi".into()),
            ]
        );
        let (out, err) = (String::from_utf8(out)?, String::from_utf8(err)?);
        assert!(
            out.contains("user> model> answer to what?\nuser> model> \nuser> "),
            "{out}"
        );
        assert!(err.contains(
            "[10 prompt tokens · TTFT 12 ms · 3 tokens at 100.0 tok/s · stop: end of answer]"
        ));
        assert!(err.contains("[10 prompt tokens (5 cached) · TTFT"), "{err}");
        assert!(err.contains("error: boom") && err.contains("cannot open image missing.png"));
        Ok(())
    }

    #[test]
    fn top_k_zero_and_absent_are_off_and_one_is_greedy() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            s: SamplingArgs,
        }
        let parse = |args: &[&str]| {
            let argv = ["chat", "--temperature", "0.7"].iter().chain(args);
            Cli::parse_from(argv).s.sampling().unwrap()
        };
        let (absent, zero, one) = (
            parse(&[]),
            parse(&["--top-k", "0"]),
            parse(&["--top-k", "1"]),
        );
        assert_eq!((absent.top_k_limit(), zero.top_k_limit()), (None, None));
        assert!(!absent.is_greedy() && !zero.is_greedy() && one.is_greedy());
        // Out of range: the same rule set as everywhere.
        let bad = Cli::parse_from(["chat", "--temperature", "3"]).s.sampling();
        assert!(bad.unwrap_err().to_string().contains("temperature"));
    }
}
