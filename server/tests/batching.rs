//! Continuous batching: a request's text is the same whether it ran alone or decoded together with
//! seven others (different lengths, images, prompt versions, stop points, a seeded sampler), on
//! the CogVLM and CogAgent tiny checkpoints, and whether its prompt was prefilled at once or in chunks
//! between the others' decode steps; stopping one stream leaves the others' text unchanged;
//! and a client with many queued requests does not hold back another client's single one.

mod common;

use cogvlm::engine::{bundled_models_dir, EngineHandle, EngineOptions, Registry, Ticket};
use common::{greedy, image};
use protocol::{Event, GenerateRequest, PromptVersion, StopReason};
use std::time::{Duration, Instant};

fn engine(checkpoint: &str, max_batch: usize) -> EngineHandle {
    engine_chunked(checkpoint, max_batch, None)
}

/// An engine prefilling `chunk` prompt positions between two decode steps (`None`: the default,
/// `Some(0)`: whole prompts).
fn engine_chunked(checkpoint: &str, max_batch: usize, chunk: Option<usize>) -> EngineHandle {
    let registry = Registry::scan(&bundled_models_dir()).unwrap();
    let options = EngineOptions {
        max_batch: Some(max_batch),
        prefill_chunk: chunk,
        ..EngineOptions::default()
    };
    let engine = EngineHandle::start_with(registry, options, Some(checkpoint)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.models().current.as_deref() != Some(checkpoint) {
        assert!(Instant::now() < deadline, "{checkpoint} did not load");
        std::thread::sleep(Duration::from_millis(20));
    }
    engine
}

/// What a request got: its text pieces, and how it ended.
#[derive(Debug, Default, Clone)]
struct Outcome {
    text: String,
    tokens: usize,
    stop: Option<StopReason>,
    error: Option<String>,
}

/// Reads a ticket to its end; with `cancel_after`, stops it after that many text pieces.
async fn finish(mut ticket: Ticket, cancel_after: Option<usize>) -> Outcome {
    let mut out = Outcome::default();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(300), ticket.events.recv())
        .await
        .expect("an event within 300 s")
    {
        match event {
            Event::Token { text } => {
                out.text.push_str(&text);
                out.tokens += 1;
                if cancel_after == Some(out.tokens) {
                    ticket.canceller.cancel();
                }
            }
            Event::Done { stats } => {
                out.stop = Some(stats.stop);
                break;
            }
            Event::Error { message, .. } => {
                out.error = Some(message);
                break;
            }
            _ => {}
        }
    }
    out
}

/// Eight requests of different shapes, longest first (so that all eight are in the batch at once).
fn questions(cogagent: bool) -> Vec<GenerateRequest> {
    let with = |img: &str, q: &str, n: usize, v: Option<PromptVersion>| {
        let mut r = greedy(Some(image(img)), q, n);
        r.version = v;
        r
    };
    let mut seeded = with("coffee.png", "Tell a story about it.", 30, None);
    seeded.sampling.temperature = 0.9;
    seeded.sampling.top_k = Some(20);
    seeded.sampling.top_p = 0.9;
    seeded.sampling.seed = Some(1234);
    let mut followup = with("chelsea.png", "And the colour?", 26, None);
    followup.history = vec![("What animal is this?".into(), "A cat on a sofa.".into())];
    let text_or_image = |q: &str, n: usize, v| {
        if cogagent {
            with("chelsea.png", q, n, v)
        } else {
            let mut r = greedy(None, q, n);
            r.version = v;
            r
        }
    };
    vec![
        with("coffee.png", "Describe the picture in detail.", 40, None),
        seeded,
        with(
            "chelsea.png",
            "What animal is this?",
            34,
            Some(PromptVersion::ChatOld),
        ),
        followup,
        text_or_image("Write a haiku about rain.", 22, Some(PromptVersion::Base)),
        with(
            "coffee.png",
            "What is in the cup?",
            18,
            Some(PromptVersion::Vqa),
        ),
        text_or_image("Hello!", 14, None),
        with("chelsea.png", "Where is it?", 11, Some(PromptVersion::Chat)),
    ]
}

/// Each question alone on an engine prefilling `alone_chunk` positions a turn, then all eight together
/// on one prefilling `together_chunk` (the same engine when they are equal).
async fn alone_then_together(
    checkpoint: &str,
    cogagent: bool,
    alone_chunk: Option<usize>,
    together_chunk: Option<usize>,
) {
    let mut engine = engine_chunked(checkpoint, 8, alone_chunk);
    let questions = questions(cogagent);
    let mut alone = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        let out = finish(engine.generate(q.clone(), &format!("alone{i}")), None).await;
        assert!(out.error.is_none(), "{checkpoint} #{i}: {:?}", out.error);
        assert!(
            out.tokens >= 9,
            "{checkpoint} #{i}: {} pieces alone: too short to overlap the others ({:?})",
            out.tokens,
            out.text
        );
        alone.push(out);
    }
    assert_eq!(engine.largest_batch(), 1, "alone means one sequence a step");
    if together_chunk != alone_chunk {
        engine.shutdown();
        engine = engine_chunked(checkpoint, 8, together_chunk);
    }

    // Together, each as another client (no cache of the solo runs is reused); #6 is stopped
    // after eight pieces (of at least nine; late enough that #7, started after it and prefilled in
    // a few turns, joins it in the batch first).
    const STOPPED: usize = 6;
    const STOP_AFTER: usize = 8;
    let tasks: Vec<_> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let ticket = engine.generate(q.clone(), &format!("batch{i}"));
            tokio::spawn(finish(ticket, (i == STOPPED).then_some(STOP_AFTER)))
        })
        .collect();
    let mut together = Vec::new();
    for t in tasks {
        together.push(t.await.unwrap());
    }
    assert_eq!(
        engine.largest_batch(),
        8,
        "{checkpoint}: the eight requests never decoded together"
    );
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(b.error.is_none(), "{checkpoint} #{i}: {:?}", b.error);
        if i == STOPPED {
            assert_eq!(b.stop, Some(StopReason::Cancelled), "{checkpoint} #{i}");
            assert!(
                a.text.starts_with(&b.text),
                "{checkpoint} #{i}: the stopped stream's text {:?} is not a prefix of {:?}",
                b.text,
                a.text
            );
            continue;
        }
        assert_eq!(
            b.text, a.text,
            "{checkpoint} #{i}: the text in a batch of eight differs from the text alone"
        );
        assert_eq!(b.stop, a.stop, "{checkpoint} #{i}");
    }
    println!(
        "{checkpoint}: 8 requests, the same text alone and in a batch of 8 ({STOPPED} stopped after \
         {STOP_AFTER} pieces)"
    );
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cogvlm_text_is_the_same_alone_and_in_a_batch() {
    alone_then_together("cogvlm_tiny_224", false, None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cogagent_text_is_the_same_alone_and_in_a_batch() {
    alone_then_together("cogagent_tiny", true, None, None).await;
}

/// Prompts prefilled whole and alone, then in chunks of 100 positions between the batch's decode
/// steps (chunk ends inside the 258-position image and inside the history): the same greedy text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cogvlm_chunked_prefill_gives_the_text_of_a_whole_one() {
    alone_then_together("cogvlm_tiny_224", false, Some(0), Some(100)).await;
}

/// As above on CogAgent (its cross-attention keys are set by the first chunk), chunks of 150. (Smaller
/// chunks take so many turns per request that the first answers end before the eighth decodes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cogagent_chunked_prefill_gives_the_text_of_a_whole_one() {
    alone_then_together("cogagent_tiny", true, Some(0), Some(150)).await;
}

/// A client that queued sixteen requests delays another client's single request by at most one
/// place in the batch: with two places, the single request starts at most third.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_does_not_starve_another() {
    let engine = engine("cogvlm_tiny_224", 2);
    let started = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watch = |mut ticket: Ticket, who: String| {
        let started = started.clone();
        tokio::spawn(async move {
            while let Some(event) = ticket.events.recv().await {
                match event {
                    Event::Started { .. } => started.lock().unwrap().push(who.clone()),
                    Event::Done { .. } => return true,
                    Event::Error { message, .. } => panic!("{who}: {message}"),
                    _ => {}
                }
            }
            false
        })
    };
    let busy = greedy(None, "Count to one hundred.", 40);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let ticket = engine.generate(busy.clone(), "many");
        tasks.push(watch(ticket, format!("many{i}")));
    }
    // Once two of them run (and fourteen wait), the other client asks once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the first requests did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let single = engine.generate(greedy(None, "Hi.", 4), "single");
    tasks.push(watch(single, "single".into()));
    for t in tasks {
        assert!(t.await.unwrap(), "every request completes");
    }
    let order = started.lock().unwrap().clone();
    let at = order.iter().position(|w| w == "single").unwrap();
    println!("start order: {order:?}");
    assert!(
        at <= 3,
        "the single request started {}th, after {at} of the other client's: {order:?}",
        at + 1
    );
    assert_eq!(engine.pending(), 0, "every queue place was freed");
    engine.shutdown();
}

/// On the page's request path (the `GenerateRequest` its socket hands the engine), top-k 0 and an
/// absent top-k are both "no top-k", and top-k 1 is greedy, as in the API and the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_zero_and_absent_mean_no_top_k_and_one_is_greedy() {
    let engine = engine("cogvlm_tiny_224", 1);
    let ask = |client: &str, top_k: Option<usize>, temperature: f64| {
        let mut r = greedy(Some(image("coffee.png")), "Tell a story about it.", 12);
        r.sampling.temperature = temperature;
        r.sampling.top_p = 1.0;
        r.sampling.top_k = top_k;
        r.sampling.seed = Some(99);
        // One client each: no request continues another's conversation cache.
        finish(engine.generate(r, client), None)
    };
    let absent = ask("absent", None, 1.5).await;
    let zero = ask("zero", Some(0), 1.5).await;
    let one = ask("one", Some(1), 1.5).await;
    let greedy_answer = ask("greedy", None, 0.0).await;
    for o in [&absent, &zero, &one, &greedy_answer] {
        assert!(o.error.is_none() && o.tokens > 0, "{o:?}");
    }
    assert_eq!(zero.text, absent.text);
    assert_eq!(one.text, greedy_answer.text);
    // Sampled at temperature 1.5 over the whole vocabulary, not greedy.
    assert_ne!(absent.text, greedy_answer.text);
}
