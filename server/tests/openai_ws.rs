//! Two servers on loopback: the second answers through the first's OpenAI API
//! (`--backend openai`); its page websocket and `cogvlm chat --backend openai` give the
//! reference answer of the first's local worker.

mod openai_support;

use app::protocol::{Event, GenerateRequest, ImageData, Sampling, StopReason};
use openai_support::{case, image_base64, start_local, start_remote, ws, MODEL};
use std::io::Write;
use std::process::{Command, Stdio};

fn greedy(max_new_tokens: usize) -> Sampling {
    Sampling {
        temperature: 0.0,
        max_new_tokens: Some(max_new_tokens),
        ..Sampling::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_backend_streams_the_same_answer_over_the_websocket() {
    let local = start_local().await;
    let remote = start_remote(local).await;
    let c = case("vlm490_chat_history_chelsea");
    let req = GenerateRequest {
        image: Some(ImageData {
            name: "chelsea.png".into(),
            base64: image_base64(&c),
        }),
        history: c.history.clone(),
        query: c.query.clone(),
        version: None,
        sampling: greedy(c.generated_tokens),
    };
    let events = ws::generate(remote, req).await;
    let tokens: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Token { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(tokens.len() >= 3, "streamed in pieces: {events:?}");
    assert_eq!(tokens.concat(), c.text);
    assert!(
        matches!(&events[0], Event::Started { checkpoint } if checkpoint == MODEL),
        "{events:?}"
    );
    let Some(Event::Done { stats }) = events.last() else {
        panic!("no Done: {events:?}");
    };
    // Counts from the first server's usage; timings measured by the second.
    assert_eq!(stats.prompt_tokens, c.seq_len);
    assert_eq!(stats.generated_tokens, c.generated_tokens);
    // max_tokens ended it on the first server: finish_reason "length".
    assert_eq!(stats.stop, StopReason::Length, "{stats:?}");
    assert!(stats.ttft_ms > 0.0 && stats.tokens_per_s > 0.0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_cli_answers_from_the_remote_server() {
    let local = start_local().await;
    let c = case("vlm490_chat_chelsea");
    let run = move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cogvlm"))
            .args(["chat", "--backend", "openai", "--model", MODEL])
            .args(["--endpoint", &format!("http://{local}")])
            .args(["--max-new-tokens", &c.generated_tokens.to_string()])
            .arg("--image")
            .arg(&c.image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = format!("{}\nstop\n", c.query);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
            c,
        )
    };
    let (stdout, stderr, ok, c) = tokio::task::spawn_blocking(run).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("model> {}\n", c.text)),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("[{} prompt tokens · TTFT", c.seq_len))
            && stderr.contains(&format!("{} tokens at", c.generated_tokens)),
        "{stderr}"
    );
}
