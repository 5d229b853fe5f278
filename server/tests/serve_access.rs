//! A shared server (`--share`) lets in only those with the token: pages, static files, server
//! functions, websockets and the API answer 401 without it; the link's `?token=` sets a cookie;
//! API clients use `Authorization: Bearer`; websockets from another origin are refused.

mod common;

use cogvlm::engine::EngineOptions;
use cogvlm::web::access::Access;
use common::*;
use futures::SinkExt;
use protocol::ClientMsg;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_token_everything_is_401_and_with_it_everything_works() {
    let server = start(
        EngineOptions::default(),
        Access {
            token: Some(TOKEN.into()),
            ..Access::default()
        },
    )
    .await;
    let addr = server.addr;
    let bearer = format!("Bearer {TOKEN}");
    let wrong = "Bearer 0123456789abcdef0123456789abcdee";

    // No token, or a wrong one: 401 everywhere.
    let mut refused = 0;
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/pkg/cogvlm.js"),
        ("POST", "/api/list_models"),
        ("POST", "/api/upload_image"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ] {
        for headers in [vec![], vec![("Authorization", wrong)]] {
            let (status, _, body) = http(addr, method, path, &headers, "").await;
            assert_eq!(status, 401, "{method} {path} {headers:?}: {body}");
            refused += 1;
        }
    }
    let (_, _, v1) = http(addr, "GET", "/v1/models", &[], "").await;
    assert!(
        v1.contains("\"error\""),
        "API clients get OpenAI's error shape: {v1}"
    );
    for path in ["/api/chat", "/api/load_model"] {
        let err = connect(addr, path, "c", &[]).await.expect_err("refused");
        assert!(err.contains("401"), "{path}: {err}");
        refused += 1;
    }
    let cookie_wrong = connect(addr, "/api/chat", "c", &[("cookie", "cogvlm_token=nope")]).await;
    assert!(cookie_wrong.is_err());

    // The link: ?token= sets an HttpOnly cookie and leaves the address bar.
    let (status, _, _) = http(addr, "GET", "/?token=", &[], "").await;
    assert_eq!(status, 401, "an empty token is no token");
    let link = format!("/?token={TOKEN}");
    let (status, headers2, _) = http(addr, "GET", &link, &[], "").await;
    assert_eq!(status, 303);
    let location = headers2
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.as_str());
    assert_eq!(location, Some("/"));
    let set_cookie = headers2
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("cogvlm_token="))
        .map(|(_, v)| v.clone())
        .expect("the token cookie");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    // With the cookie: the page and the server functions.
    let (status, _, page) = http(addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "the page renders");
    let (status, _, models) =
        http(addr, "POST", "/api/list_models", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 200, "{models}");
    assert!(models.contains(CHECKPOINT));
    // With the bearer token (API clients): the same.
    let (status, _, _) = http(
        addr,
        "POST",
        "/api/list_models",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 200);

    // Websockets with the token answer; from another origin they are refused.
    let question = greedy(Some(image("coffee.png")), "What is this?", 3);
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("authorization", bearer.as_str())],
    ] {
        // The helper sets its own client cookie; pass the token one as a second header.
        let mut ws = connect_with_cookies(addr, &headers).await.unwrap();
        let upload = upload_with(addr, &headers, question.image.as_ref().unwrap())
            .await
            .expect("an upload with the token is taken");
        let msg = ClientMsg::Generate(Box::new(question.with_image(Some(upload))));
        ws.send(frame(&msg)).await.unwrap();
        let answer = read_answer(&mut ws).await;
        assert!(answer.stats.is_some(), "{:?}", answer.error);
    }
    let foreign = connect(
        addr,
        "/api/chat",
        "c",
        &[
            ("authorization", bearer.as_str()),
            ("origin", "http://evil.example"),
        ],
    )
    .await
    .expect_err("a websocket from another origin is refused");
    assert!(foreign.contains("403"), "{foreign}");
    let same_origin = format!("http://{addr}");
    assert!(connect(
        addr,
        "/api/chat",
        "c",
        &[
            ("authorization", bearer.as_str()),
            ("origin", same_origin.as_str())
        ],
    )
    .await
    .is_ok());
    println!("{refused} requests without a valid token got 401; cookie, bearer and same-origin websockets work");
}

/// A websocket whose headers are given whole (the token cookie instead of a client id).
async fn connect_with_cookies(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/api/chat")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        request.headers_mut().insert(name, v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_token_the_loopback_server_is_open_and_gives_client_ids() {
    let server = start(EngineOptions::default(), Access::default()).await;
    let (status, headers, _) = http(server.addr, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        headers.iter().any(|(k, v)| k == "set-cookie"
            && v.starts_with("cogvlm_client=")
            && v.contains("HttpOnly")),
        "{headers:?}"
    );
}

/// An image's upload id answers only the browser that uploaded it: another client naming it is told
/// to upload it again (the page then does), and the owner's question about it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_serves_only_the_client_that_sent_it() {
    let server = start(EngineOptions::default(), Access::default()).await;
    let question = greedy(Some(image("coffee.png")), "What is this?", 2);
    let upload = upload(server.addr, "owner", question.image.as_ref().unwrap())
        .await
        .expect("the upload is taken");
    let named = question.with_image(Some(upload));
    for (client, answered) in [("stranger", false), ("owner", true)] {
        let mut ws = connect(server.addr, "/api/chat", client, &[])
            .await
            .unwrap();
        ws.send(frame(&ClientMsg::Generate(Box::new(named.clone()))))
            .await
            .unwrap();
        let answer = read_answer(&mut ws).await;
        if answered {
            assert!(answer.stats.is_some(), "{client}: {:?}", answer.error);
        } else {
            let error = answer.error.expect("refused");
            assert!(error.contains("upload it again"), "{error}");
        }
    }
}
