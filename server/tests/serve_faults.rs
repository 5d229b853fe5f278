//! Faults and fairness: a client that leaves frees the worker at once, a panic in the worker
//! is reported and the worker goes on, a failed load keeps the model, a full queue says busy,
//! a client's requests queue up to its cap, a request rate per client, shutdown ends everything, a socket
//! that never sends its first message is closed after 10 s.

mod common;

use cogvlm::engine::{EngineOptions, Fairness};
use cogvlm::web::access::Access;
use common::*;
use futures::SinkExt;
use protocol::Event;
use std::time::{Duration, Instant};

/// A question that keeps the worker busy for seconds (up to the context length).
fn long_question() -> protocol::GenerateRequest {
    let mut req = greedy(Some(image("coffee.png")), "Describe everything.", 1500);
    req.sampling.max_new_tokens = Some(1500);
    req
}

/// Waits for the first token of a running generation.
async fn until_first_token(ws: &mut Ws) {
    loop {
        match next_event(ws).await {
            Some(Ok(Event::Token { .. })) => return,
            Some(Ok(Event::Done { .. } | Event::Error { .. })) | None | Some(Err(_)) => {
                panic!("the long answer ended before streaming")
            }
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnect_frees_the_worker_within_100_ms() {
    let server = start(EngineOptions::default(), Access::default()).await;
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let mut ws = connect(server.addr, "/api/chat", &format!("leaver{round}"), &[])
            .await
            .unwrap();
        send_generate(
            &mut ws,
            server.addr,
            &format!("leaver{round}"),
            &long_question(),
        )
        .await;
        until_first_token(&mut ws).await;
        assert!(server.engine.is_busy());
        // Close the connection the rude way: no close frame, just the socket.
        drop(ws);
        let closed = Instant::now();
        while server.engine.is_busy() {
            assert!(
                closed.elapsed() < Duration::from_secs(5),
                "the worker stayed busy"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        worst = worst.max(closed.elapsed());
    }
    println!(
        "worker free {:.1} ms after the socket closed (worst of 3)",
        worst.as_secs_f64() * 1e3
    );
    assert!(worst < Duration::from_millis(100), "took {worst:?}");
    let after = ask(server.addr, "next", &greedy(None, "hi", 2)).await;
    assert!(after.stats.is_some(), "{:?}", after.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_panic_is_reported_and_the_next_request_succeeds() {
    let server = start(EngineOptions::default(), Access::default()).await;
    let question = greedy(Some(image("coffee.png")), "What is this?", 4);
    let before = ask(server.addr, "a", &question).await;
    assert!(before.stats.is_some());
    server.engine.panic_on_next_job();
    let crashed = ask(server.addr, "b", &question).await;
    let error = crashed.error.expect("the panic is reported");
    assert!(error.contains("internal error"), "{error}");
    let after = ask(server.addr, "c", &question).await;
    assert!(after.stats.is_some(), "{:?}", after.error);
    assert_eq!(after.text, before.text, "the model answers as before");
    println!("panic reported as {error:?}; next answer equal to the one before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_load_keeps_the_current_checkpoint() {
    let dir = std::env::temp_dir().join(format!("cogvlm-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let good = dir.join(CHECKPOINT);
    let broken = dir.join("broken_copy");
    for d in [&good, &broken] {
        std::fs::create_dir_all(d).unwrap();
    }
    let src = bundled_models_dir_path().join(CHECKPOINT);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), good.join(f)).unwrap();
    }
    let tokenizer = bundled_models_dir_path().join("../tokenizer/tokenizer.json");
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    // Same config, weights cut short: found by the scan, refused by the loader.
    std::fs::copy(src.join("config.json"), broken.join("config.json")).unwrap();
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        broken.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();

    let server = start_in(&dir, EngineOptions::default(), Access::default()).await;
    let mut ws = connect(server.addr, "/api/load_model", "loader", &[])
        .await
        .unwrap();
    ws.send(frame(&"broken_copy")).await.unwrap();
    let answer = read_answer(&mut ws).await;
    let error = answer.error.expect("the load fails");
    println!("failed load: {error}");
    assert_eq!(server.engine.models().current.as_deref(), Some(CHECKPOINT));
    let after = ask(server.addr, "x", &greedy(None, "hi", 2)).await;
    assert!(after.stats.is_some(), "{:?}", after.error);
    assert_eq!(after.stats.unwrap().checkpoint, CHECKPOINT);
    let _ = std::fs::remove_dir_all(&dir);
}

fn bundled_models_dir_path() -> std::path::PathBuf {
    cogvlm::engine::bundled_models_dir()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_busy_and_a_client_queues_up_to_its_cap() {
    let options = EngineOptions {
        fairness: Fairness {
            max_queue: 3,
            per_client: 2,
            ..Fairness::default()
        },
        max_batch: Some(1),
        ..EngineOptions::default()
    };
    let server = start(options, Access::default()).await;
    let mut first = connect(server.addr, "/api/chat", "one", &[]).await.unwrap();
    send_generate(&mut first, server.addr, "one", &long_question()).await;
    until_first_token(&mut first).await;

    // The same client's second request waits behind its first instead of being refused.
    let mut again = connect(server.addr, "/api/chat", "one", &[]).await.unwrap();
    send_generate(&mut again, server.addr, "one", &greedy(None, "hi", 2)).await;
    match next_event(&mut again).await {
        Some(Ok(Event::Queued { position, .. })) => assert_eq!(position, 1),
        other => panic!("expected a queue position, got {other:?}"),
    }
    // Its third is past its cap of two.
    let over = ask(server.addr, "one", &greedy(None, "hi", 2)).await;
    let error = over
        .error
        .expect("a third request of the same client is refused");
    assert!(error.contains("too many requests at once"), "{error}");

    let mut second = connect(server.addr, "/api/chat", "two", &[]).await.unwrap();
    send_generate(&mut second, server.addr, "two", &greedy(None, "hi", 2)).await;
    match next_event(&mut second).await {
        Some(Ok(Event::Queued { position, .. })) => assert_eq!(position, 2),
        other => panic!("expected a queue position, got {other:?}"),
    }
    let started = Instant::now();
    let third = ask(server.addr, "three", &greedy(None, "hi", 2)).await;
    let busy = third.error.expect("the third client finds the queue full");
    assert!(busy.contains("busy"), "{busy}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "busy must not hang"
    );
    println!("over the client's cap: {error:?}; full queue: {busy:?}");

    drop(first); // frees the worker; the waiting requests run
    for waiting in [&mut again, &mut second] {
        let answer = read_answer(waiting).await;
        assert!(answer.stats.is_some(), "{:?}", answer.error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_client_has_a_request_rate() {
    let options = EngineOptions {
        fairness: Fairness {
            max_queue: 16,
            rate_limit: true,
            per_minute: 1,
            burst: 3,
            ..Fairness::default()
        },
        ..EngineOptions::default()
    };
    let server = start(options, Access::default()).await;
    let q = greedy(None, "hi", 1);
    for i in 0..3 {
        let a = ask(server.addr, "eager", &q).await;
        assert!(a.stats.is_some(), "request {i}: {:?}", a.error);
    }
    let limited = ask(server.addr, "eager", &q).await;
    let error = limited
        .error
        .expect("the fourth request in a burst of 3 is refused");
    assert!(error.contains("too many requests"), "{error}");
    let other = ask(server.addr, "patient", &q).await;
    assert!(other.stats.is_some(), "another client is not limited");
    println!("rate limit: {error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_cancels_the_running_answer_and_refuses_waiting_ones() {
    // One answer at a time, so that the second one waits.
    let options = EngineOptions {
        max_batch: Some(1),
        ..EngineOptions::default()
    };
    let server = start(options, Access::default()).await;
    let mut running = connect(server.addr, "/api/chat", "r", &[]).await.unwrap();
    send_generate(&mut running, server.addr, "r", &long_question()).await;
    until_first_token(&mut running).await;
    let mut waiting = connect(server.addr, "/api/chat", "w", &[]).await.unwrap();
    send_generate(&mut waiting, server.addr, "w", &greedy(None, "hi", 2)).await;
    assert!(matches!(
        next_event(&mut waiting).await,
        Some(Ok(Event::Queued { .. }))
    ));
    server.engine.shutdown();
    let stopped = read_answer(&mut running).await;
    let stats = stopped.stats.expect("the running answer ends with Done");
    assert_eq!(stats.stop, protocol::StopReason::Cancelled);
    let refused = read_answer(&mut waiting).await;
    assert!(
        refused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("shutting down")),
        "{:?}",
        refused.error
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.engine.is_stopped() {
        assert!(Instant::now() < deadline, "the worker did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A socket opened without its first message (the question, the checkpoint name) is answered with
/// an error and closed after the first-message deadline, instead of holding a task and a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_without_its_first_message_is_closed_in_time() {
    let server = start(EngineOptions::default(), Access::default()).await;
    let started = Instant::now();
    let mut chat = connect(server.addr, "/api/chat", "silent", &[])
        .await
        .unwrap();
    let mut load = connect(server.addr, "/api/load_model", "silent", &[])
        .await
        .unwrap();
    let chat_error = read_answer(&mut chat).await.error.expect("an error");
    let load_error = read_answer(&mut load).await.error.expect("an error");
    let took = started.elapsed();
    assert!(
        chat_error.contains("no question came within 10 s"),
        "{chat_error}"
    );
    assert!(
        load_error.contains("no checkpoint name came within 10 s"),
        "{load_error}"
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "{took:?}"
    );
    // The server goes on answering.
    let answer = ask(server.addr, "after", &greedy(None, "Hello.", 3)).await;
    assert!(answer.stats.is_some(), "{:?}", answer.error);
}
