//! `cogvlm chat --backend openai`: the terminal chat, answered by a remote server.

use super::{BackendArgs, RemoteBackend, RemoteConfig};
use anyhow::{Context, Result};
use app::backend::Backend;
use app::protocol::{Event, GenerateRequest, ImageData, Sampling};
use base64::Engine as _;
use std::io::{BufRead, Write};
use std::path::PathBuf;

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

fn read_image(path: &str) -> Result<ImageData> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {path}"))?;
    image::guess_format(&bytes).with_context(|| format!("{path} is not an image"))?;
    Ok(ImageData {
        name: path.into(),
        base64: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

/// `cogvlm chat` with remote flags: checks them (`model`: the `--model` flag), then [`chat`].
pub fn chat_with(
    args: &BackendArgs,
    model: String,
    image: Option<PathBuf>,
    sampling: Sampling,
) -> Result<()> {
    match args.remote(Some(model))? {
        Some(config) => chat(config, image, sampling),
        None => anyhow::bail!("the local chat does not take remote flags"),
    }
}

/// Multi-turn chat on the terminal, as the local one: `clear` starts over with a new image,
/// `stop` quits.
pub fn chat(config: RemoteConfig, image: Option<PathBuf>, sampling: Sampling) -> Result<()> {
    let (stdin, mut stdout, mut stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let io = Io {
        input: &mut stdin.lock(),
        out: &mut stdout,
        err: &mut stderr,
    };
    run(config, image, sampling, io)
}

/// [`chat`] over any input and outputs. Must not be called from an async context (it runs its
/// own runtime).
pub fn run(
    config: RemoteConfig,
    image: Option<PathBuf>,
    sampling: Sampling,
    mut io: Io,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let backend = RemoteBackend::new(config)?;
    writeln!(io.err, "{} at {}", backend.config.model, backend.url)?;
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
            Some(p) => match read_image(p) {
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
            let req = GenerateRequest {
                image: image.clone(),
                history: history.clone(),
                query: query.clone(),
                version: None,
                sampling: sampling.clone(),
            };
            write!(io.out, "model> ")?;
            io.out.flush()?;
            let answer = runtime.block_on(async {
                let mut generation = backend.generate(req, "terminal");
                let mut text = String::new();
                while let Some(event) = generation.events.recv().await {
                    match event {
                        Event::Token { text: piece } => {
                            write!(io.out, "{piece}")?;
                            io.out.flush()?;
                            text.push_str(&piece);
                        }
                        Event::Done { stats } => {
                            writeln!(io.out)?;
                            writeln!(
                                io.err,
                                "[{} prompt tokens · TTFT {:.0} ms · {} tokens at {:.1} tok/s · stop: {}]",
                                stats.prompt_tokens,
                                stats.ttft_ms,
                                stats.generated_tokens,
                                stats.tokens_per_s,
                                stats.stop.label()
                            )?;
                            return Ok(Some(text));
                        }
                        Event::Error { message } => {
                            writeln!(io.out)?;
                            writeln!(io.err, "error: {message}")?;
                            return Ok(None);
                        }
                        _ => {}
                    }
                }
                anyhow::Ok(None)
            })?;
            if let Some(a) = answer {
                history.push((query, a.trim().to_string()));
            }
        }
    }
}
