//! `cogvlm chat --backend openai`: the terminal chat, answered by a remote server.

use super::{BackendArgs, RemoteBackend, RemoteConfig};
use crate::terminal::{converse, Reply};
use anyhow::{Context, Result};
use app::backend::Backend;
use protocol::{Event, GenerateRequest, ImageData, Sampling};
use std::path::PathBuf;

pub use crate::terminal::Io;

fn read_image(path: &str) -> Result<ImageData> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {path}"))?;
    image::guess_format(&bytes).with_context(|| format!("{path} is not an image"))?;
    Ok(ImageData {
        name: path.into(),
        bytes: protocol::ImageBytes::new(bytes),
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
    converse(&mut io, image, read_image, |out, image, history, query| {
        let req = GenerateRequest {
            image: image.cloned(),
            history: history.to_vec(),
            query: query.to_string(),
            version: None,
            sampling: sampling.clone(),
        };
        runtime.block_on(async {
            let mut generation = backend.generate(req, "terminal");
            let mut text = String::new();
            while let Some(event) = generation.events.recv().await {
                match event {
                    Event::Token { text: piece } => {
                        write!(out, "{piece}")?;
                        out.flush()?;
                        text.push_str(&piece);
                    }
                    Event::Done { stats } => return Ok(Reply::Answer { text, stats }),
                    Event::Error { message, .. } => return Ok(Reply::Failed(message)),
                    _ => {}
                }
            }
            Ok(Reply::Failed(
                "the server closed the stream before the answer ended".into(),
            ))
        })
    })
}
