//! The terminal chat's conversation loop, shared by `cogvlm chat` on a local checkpoint and on a remote server:
//! ask for an image (unless one was given), then questions; `clear` starts over with a new image, `stop` or the
//! end of input quits. Each backend supplies how to open an image and how to answer one question.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Result;

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
    Answer { text: String, stats: TurnStats },
    Failed(String),
}

/// What the line after an answer reports.
pub struct TurnStats {
    pub prompt_tokens: usize,
    /// Prompt tokens continued from the conversation's cache.
    pub reused_tokens: usize,
    pub ttft_ms: f64,
    pub generated_tokens: usize,
    pub tokens_per_s: f64,
    pub stop: &'static str,
}

impl std::fmt::Display for TurnStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} prompt tokens", self.prompt_tokens)?;
        if self.reused_tokens > 0 {
            write!(f, " ({} cached)", self.reused_tokens)?;
        }
        write!(
            f,
            " · TTFT {:.0} ms · {} tokens at {:.1} tok/s · stop: {}]",
            self.ttft_ms, self.generated_tokens, self.tokens_per_s, self.stop
        )
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
                    writeln!(io.err, "{stats}")?;
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
                stats: TurnStats {
                    prompt_tokens: 10,
                    reused_tokens: history.len() * 5,
                    ttft_ms: 12.0,
                    generated_tokens: 3,
                    tokens_per_s: 100.0,
                    stop: "eos",
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
        assert!(
            err.contains("[10 prompt tokens · TTFT 12 ms · 3 tokens at 100.0 tok/s · stop: eos]")
        );
        assert!(err.contains("[10 prompt tokens (5 cached) · TTFT"), "{err}");
        assert!(err.contains("error: boom") && err.contains("cannot open image missing.png"));
        Ok(())
    }
}
