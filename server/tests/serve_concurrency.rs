//! 64 browsers ask at once: every one gets its whole answer, equal to the answer the same
//! question gets alone (nothing lost, nothing mixed), and waiting clients see their queue
//! position go down.

mod common;

use cogvlm::engine::EngineOptions;
use cogvlm::web::access::Access;
use common::*;

const CLIENTS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_clients_get_their_own_complete_answers() {
    let server = start(EngineOptions::default(), Access::default()).await;
    // Four different questions (two images, two texts), so a mix-up would show.
    let questions = [
        greedy(Some(image("coffee.png")), "What is in the cup?", 8),
        greedy(Some(image("coffee.png")), "Describe the picture.", 8),
        greedy(Some(image("chelsea.png")), "What animal is this?", 8),
        greedy(Some(image("chelsea.png")), "Where is it?", 8),
    ];
    let mut alone = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        let a = ask(server.addr, &format!("alone{i}"), q).await;
        assert!(a.error.is_none(), "{:?}", a.error);
        assert!(a.tokens > 0);
        alone.push(a.text);
    }
    assert!(
        alone.iter().collect::<std::collections::HashSet<_>>().len() > 1,
        "the questions should get different answers: {alone:?}"
    );

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let req = questions[i % questions.len()].clone();
            let addr = server.addr;
            tokio::spawn(async move { (i, ask(addr, &format!("client{i}"), &req).await) })
        })
        .collect();
    let mut complete = 0;
    let mut waited = 0;
    let mut saw_decrease = 0;
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        assert!(answer.error.is_none(), "client {i}: {:?}", answer.error);
        let stats = answer.stats.as_ref().expect("Done with stats");
        assert_eq!(
            answer.text,
            alone[i % questions.len()],
            "client {i} got another answer than the same question alone"
        );
        assert!(stats.generated_tokens > 0, "client {i}");
        complete += 1;
        let p = &answer.positions;
        assert!(
            p.windows(2).all(|w| w[1] <= w[0]),
            "client {i}: queue positions went up: {p:?}"
        );
        if p.first().is_some_and(|&first| first > 0) {
            waited += 1;
        }
        if p.len() > 1 && p.last() < p.first() {
            saw_decrease += 1;
        }
    }
    println!(
        "{complete}/{CLIENTS} complete answers equal to the lone answers; {waited} clients waited; \
         {saw_decrease} saw their position decrease"
    );
    assert_eq!(complete, CLIENTS);
    assert!(waited >= CLIENTS / 2, "only {waited} clients were queued");
    assert!(
        saw_decrease >= CLIENTS / 2,
        "only {saw_decrease} saw progress"
    );
    assert_eq!(server.engine.pending(), 0, "every queue place was freed");
}
