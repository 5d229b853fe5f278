//! `cogvlm chat --backend openai`: the terminal chat, answered by a remote server.

use super::{RemoteBackend, RemoteConfig};
use anyhow::{Context, Result};
use app::backend::Backend;
use app::protocol::{Event, GenerateRequest, ImageData, Sampling};
use base64::Engine as _;
use std::io::{BufRead, Write};
use std::path::PathBuf;

fn read_line(prompt: &str) -> Result<Option<String>> {
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}

fn read_image(path: &str) -> Result<ImageData> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {path}"))?;
    image::guess_format(&bytes).with_context(|| format!("{path} is not an image"))?;
    Ok(ImageData {
        name: path.into(),
        base64: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

/// Multi-turn chat as the local one: `clear` starts over with a new image, `stop` quits.
pub fn chat(config: RemoteConfig, image: Option<PathBuf>, sampling: Sampling) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let backend = RemoteBackend::new(config)?;
    eprintln!("{} at {}", backend.config.model, backend.url);
    let mut image_path = image.map(|p| p.display().to_string());
    'conversation: loop {
        if image_path.is_none() {
            match read_line("image path (empty for text only): ")? {
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
                    eprintln!("{e:#}");
                    image_path = None;
                    continue;
                }
            },
        };
        let mut history: Vec<(String, String)> = Vec::new();
        loop {
            let Some(query) = read_line("user> ")? else {
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
            print!("model> ");
            std::io::stdout().flush()?;
            let answer = runtime.block_on(async {
                let _guard = tokio::runtime::Handle::current().enter();
                let mut generation = backend.generate(req);
                let mut text = String::new();
                while let Some(event) = generation.events.recv().await {
                    match event {
                        Event::Token { text: piece } => {
                            print!("{piece}");
                            let _ = std::io::stdout().flush();
                            text.push_str(&piece);
                        }
                        Event::Done { stats } => {
                            println!();
                            eprintln!(
                                "[{} prompt tokens · TTFT {:.0} ms · {} tokens at {:.1} tok/s · stop: {}]",
                                stats.prompt_tokens,
                                stats.ttft_ms,
                                stats.generated_tokens,
                                stats.tokens_per_s,
                                stats.stop.label()
                            );
                            return Some(text);
                        }
                        Event::Error { message } => {
                            println!();
                            eprintln!("error: {message}");
                            return None;
                        }
                        _ => {}
                    }
                }
                None
            });
            if let Some(a) = answer {
                history.push((query, a.trim().to_string()));
            }
        }
    }
}
