//! Two servers on loopback: the second answers through the first's OpenAI API
//! (`--backend openai`); its page websocket and the terminal chat of `cogvlm chat --backend
//! openai` give the reference answer of the first's local worker.

mod openai_support;

use cogvlm::remote::cli::{self, Io};
use cogvlm::remote::RemoteConfig;
use openai_support::{case, start_local, start_remote, ws, MODEL};
use protocol::{Event, GenerateRequest, ImageData, Sampling, StopReason};

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
            bytes: protocol::ImageBytes::new(std::fs::read(&c.image).unwrap()),
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
    let config = RemoteConfig {
        endpoint: format!("http://{local}"),
        api_key: None,
        model: MODEL.into(),
    };
    let image = c.image.clone();
    let input = format!("{}\nstop\n", c.query);
    // The terminal chat runs its own runtime: on a plain thread, as in `cogvlm chat`.
    let chat = std::thread::spawn(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let io = Io {
            input: &mut input.as_bytes(),
            out: &mut out,
            err: &mut err,
        };
        let result = cli::run(config, Some(image), greedy(c.generated_tokens), io);
        (
            result,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    });
    let (result, stdout, stderr) = tokio::task::spawn_blocking(move || chat.join().unwrap())
        .await
        .unwrap();
    result.unwrap();
    assert!(
        stdout.contains(&format!("user> model> {}\nuser> ", c.text)),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("[{} prompt tokens · TTFT", c.seq_len))
            && stderr.contains(&format!("{} tokens at", c.generated_tokens)),
        "{stderr}"
    );
}
