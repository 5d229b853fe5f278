//! The OpenAI-compatible API, driven by the official `openai` Python client (installed by
//! `.ci/run`; the interpreter is `$COGVLM_PYTHON`, default `python3`), checked against the
//! reference fixtures' greedy answers on the bundled checkpoint.

mod openai_support;

use openai_support::{case, start_local, Case, MODEL};
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// Runs `openai_client.py` against `addr` for `case`; its JSON output.
fn python_client(addr: SocketAddr, case: &Case, stop: Option<&str>) -> Value {
    let python = std::env::var("COGVLM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let spec = json!({
        "base_url": format!("http://{addr}/v1"), "model": MODEL,
        "image": case.image, "turns": case.history, "query": case.query,
        "max_tokens": case.generated_tokens, "stop": stop,
    });
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} (set COGVLM_PYTHON): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("\"missing\": \"openai\""),
        "the `openai` Python package is missing for {python}: run `bash .ci/run` (it installs it \
         into a venv and sets COGVLM_PYTHON) or `pip install openai`"
    );
    assert!(
        out.status.success(),
        "openai_client.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

/// The usage every answer of `case` must report: the image's positions are prompt tokens.
fn expected_usage(case: &Case, completion: usize) -> Value {
    json!({"prompt_tokens": case.seq_len, "completion_tokens": completion,
           "total_tokens": case.seq_len + completion})
}

fn check(out: &Value, case: &Case) {
    let models = out["models"].as_array().unwrap();
    for m in ["cogvlm_tiny_490", "cogvlm_tiny_224", "cogagent_tiny"] {
        assert!(models.contains(&json!(m)), "{m} not in {models:?}");
    }

    let plain = &out["plain"];
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["role"], "assistant");
    assert_eq!(plain["text"], case.text.as_str());
    // Twelve tokens asked, none of them EOS: the length limit ended the answer.
    assert_eq!(plain["finish_reason"], "length");
    assert_eq!(plain["usage"], expected_usage(case, case.generated_tokens));

    let chunks = out["chunks"].as_array().unwrap();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["role"], "assistant", "the role chunk comes first");
    let finish = chunks
        .iter()
        .position(|c| !c["finish_reason"].is_null())
        .expect("a chunk with finish_reason");
    assert_eq!(chunks[finish]["finish_reason"], "length");
    let texts: Vec<&str> = chunks[..finish]
        .iter()
        .filter_map(|c| c["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(
        texts.len() >= 3,
        "streaming must deliver the answer in pieces: {texts:?}"
    );
    assert_eq!(texts.concat(), case.text);
    // stream_options.include_usage: one last chunk without choices, the same counts.
    let last = chunks.last().unwrap();
    assert_eq!(finish, chunks.len() - 2);
    assert!(last["finish_reason"].is_null() && last["content"].is_null());
    assert_eq!(last["usage"], plain["usage"]);

    let errors = &out["errors"];
    assert_eq!(errors["remote_url"]["status"], 400);
    assert_eq!(errors["remote_url"]["type"], "invalid_request_error");
    assert_eq!(
        errors["remote_url"]["param"],
        "messages[0].content[1].image_url"
    );
    assert!(errors["remote_url"]["message"]
        .as_str()
        .unwrap()
        .contains("data URL"));
    assert_eq!(errors["unknown_model"]["status"], 404);
    assert_eq!(errors["unknown_model"]["param"], "model");
    assert_eq!(errors["no_user_last"]["status"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_gets_the_reference_answers() {
    let addr = start_local().await;

    // One question about an image, plus a stop sequence taken from inside the answer.
    let single = case("vlm490_chat_chelsea");
    let cut = single.text.find(' ').unwrap() + 1;
    let stop_word: String = single.text[cut..].chars().take(3).collect();
    let out = tokio::task::spawn_blocking({
        let stop = stop_word.clone();
        let c = case("vlm490_chat_chelsea");
        move || python_client(addr, &c, Some(&stop))
    })
    .await
    .unwrap();
    check(&out, &single);
    let stopped = &out["stopped"];
    assert_eq!(stopped["text"], &single.text[..cut]);
    assert_eq!(stopped["finish_reason"], "stop");
    let generated = stopped["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert!(
        (1..single.generated_tokens).contains(&generated),
        "a stop sequence ends the generation early: {generated} tokens"
    );
    assert_eq!(stopped["usage"], expected_usage(&single, generated));

    // Two earlier turns as user/assistant messages: the checkpoint's template history.
    let history = case("vlm490_chat_history_chelsea");
    let out = tokio::task::spawn_blocking(move || {
        python_client(addr, &case("vlm490_chat_history_chelsea"), None)
    })
    .await
    .unwrap();
    check(&out, &history);
}
