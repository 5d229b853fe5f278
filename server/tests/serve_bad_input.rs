//! Bad input of every kind gets a clear error, and the server answers a normal question right
//! after each one.

mod common;

use cogvlm::engine::EngineOptions;
use cogvlm::web::access::Access;
use common::*;
use futures::SinkExt;
use protocol::{ClientMsg, GenerateRequest, UploadRef};
use std::io::Cursor;
use tokio_tungstenite::tungstenite::Message;

/// What a case sends: an upload, or messages on a fresh websocket.
enum Send {
    /// The page's upload of an image file.
    Upload(protocol::ImageData),
    /// A POST to the upload's address with this content type and body.
    UploadRaw(&'static str, Vec<u8>),
    /// A question (its image uploaded first).
    Generate(GenerateRequest),
    /// A question naming an upload as it is.
    Named(GenerateRequest<UploadRef>),
    /// To the checkpoint-switch call.
    Load(String),
    Frames(Vec<Message>),
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A valid PNG whose header claims `w`×`h` pixels (a decompression bomb's header).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = encode(
        &image::DynamicImage::new_rgb8(1, 1),
        image::ImageFormat::Png,
    );
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn bmp_claiming(w: i32, h: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"BM");
    b.extend(1000u32.to_le_bytes());
    b.extend([0u8; 4]);
    b.extend(54u32.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(24u16.to_le_bytes());
    b.extend([0u8; 24]);
    b.extend([0u8; 64]);
    b
}

fn with_image(name: &str, bytes: &[u8]) -> Send {
    Send::Upload(image_bytes(name, bytes))
}

fn with_sampling(f: impl FnOnce(&mut GenerateRequest)) -> Send {
    let mut req = greedy(Some(image("coffee.png")), "What is this?", 2);
    f(&mut req);
    Send::Generate(req)
}

/// A Generate frame whose JSON is edited as text (values serde would never write).
fn edited_json(edit: impl FnOnce(String) -> String) -> Send {
    let req = greedy(None, "hi", 2).with_image::<UploadRef>(None);
    let json = serde_json::to_string(&ClientMsg::Generate(Box::new(req))).unwrap();
    let mut bytes = vec![0u8];
    bytes.extend(edit(json).into_bytes());
    Send::Frames(vec![Message::Binary(bytes.into())])
}

fn raw(tag_and_bytes: Vec<u8>) -> Send {
    Send::Frames(vec![Message::Binary(tag_and_bytes.into())])
}

fn cases() -> Vec<(&'static str, Send, &'static str)> {
    let photo = image::open(image_path("chelsea.png")).unwrap();
    let png = std::fs::read(image_path("coffee.png")).unwrap();
    let jpeg = encode(&photo, image::ImageFormat::Jpeg);
    let gif = encode(&photo, image::ImageFormat::Gif);
    let words = "tell me about the image in great detail please ".repeat(400);
    vec![
        (
            "truncated_png",
            with_image("t.png", &png[..png.len() / 3]),
            "corrupt",
        ),
        (
            "truncated_jpeg",
            with_image("t.jpg", &jpeg[..300]),
            "corrupt",
        ),
        ("truncated_gif", with_image("t.gif", &gif[..40]), "image"),
        (
            "png_bomb_30000x30000",
            with_image("bomb.png", &png_claiming(30000, 30000)),
            "megapixels",
        ),
        (
            "png_bomb_1x4e9",
            with_image("wide.png", &png_claiming(1, 4_000_000_000)),
            "image",
        ),
        (
            "png_zero_pixels",
            with_image("zero.png", &png_claiming(0, 0)),
            "image",
        ),
        (
            "bmp_bomb",
            with_image("bomb.bmp", &bmp_claiming(20_000, 20_000)),
            "megapixels",
        ),
        (
            "text_named_png",
            with_image("notes.png", b"just some notes, not a picture\n"),
            "not a PNG",
        ),
        (
            "gif_magic_then_garbage",
            with_image("g.gif", b"GIF89a\x01\x00garbage"),
            "image",
        ),
        ("empty_image", with_image("empty.png", b""), "empty"),
        (
            "upload_over_the_limit",
            with_image("big.png", &vec![0u8; 21_000_000]),
            "the limit",
        ),
        (
            "upload_not_multipart",
            Send::UploadRaw("application/json", b"{\"image\": 1}".to_vec()),
            "multipart",
        ),
        (
            "upload_without_an_image_field",
            Send::UploadRaw(
                "multipart/form-data; boundary=b",
                b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n"
                    .to_vec(),
            ),
            "no `image` file",
        ),
        (
            "upload_unknown_id",
            Send::Named(greedy(None, "What is this?", 2).with_image(Some(UploadRef {
                id: "0123456789abcdef".into(),
                name: "gone.png".into(),
            }))),
            "upload it again",
        ),
        (
            "prompt_1mb",
            Send::Generate(greedy(None, &"a".repeat(1_000_000), 2)),
            "the limit is",
        ),
        // Past what the page ever sends (6 × the text limit) the socket is cut as it arrives.
        (
            "prompt_10mb",
            Send::Generate(greedy(None, &"a".repeat(10_000_000), 2)),
            "the connection closed",
        ),
        (
            "history_too_long",
            with_sampling(|r| r.history = vec![("q".repeat(200_000), "a".repeat(200_000))]),
            "the limit is",
        ),
        (
            "prompt_over_context",
            Send::Generate(greedy(Some(image("coffee.png")), &words, 2)),
            "context",
        ),
        (
            "nan_temperature",
            edited_json(|j| j.replace("\"temperature\":0.0", "\"temperature\":NaN")),
            "not a valid request",
        ),
        (
            "null_temperature",
            edited_json(|j| j.replace("\"temperature\":0.0", "\"temperature\":null")),
            "not a valid request",
        ),
        (
            "string_temperature",
            edited_json(|j| j.replace("\"temperature\":0.0", "\"temperature\":\"hot\"")),
            "not a valid request",
        ),
        (
            "negative_temperature",
            with_sampling(|r| r.sampling.temperature = -0.5),
            "temperature",
        ),
        (
            "huge_temperature",
            with_sampling(|r| r.sampling.temperature = 1e300),
            "temperature",
        ),
        (
            "top_p_zero",
            with_sampling(|r| r.sampling.top_p = 0.0),
            "top_p",
        ),
        (
            "top_p_above_one",
            with_sampling(|r| r.sampling.top_p = 1.5),
            "top_p",
        ),
        (
            "temperature_above_two",
            with_sampling(|r| r.sampling.temperature = 2.5),
            "temperature",
        ),
        (
            "negative_top_k",
            edited_json(|j| j.replace("\"top_k\":1", "\"top_k\":-3")),
            "not a valid request",
        ),
        (
            "max_length_zero",
            with_sampling(|r| r.sampling.max_length = 0),
            "max_length",
        ),
        (
            "max_new_tokens_zero",
            with_sampling(|r| r.sampling.max_new_tokens = Some(0)),
            "max_new_tokens",
        ),
        (
            "repetition_penalty_zero",
            with_sampling(|r| r.sampling.repetition_penalty = 0.0),
            "repetition_penalty",
        ),
        (
            "repetition_penalty_negative",
            with_sampling(|r| r.sampling.repetition_penalty = -1.0),
            "repetition_penalty",
        ),
        (
            "repetition_penalty_infinite",
            with_sampling(|r| r.sampling.repetition_penalty = f32::INFINITY),
            "not a valid request",
        ),
        (
            "unknown_checkpoint",
            Send::Load("no_such_model".into()),
            "no checkpoint named",
        ),
        (
            "dotdot_checkpoint",
            Send::Load("../models/cogvlm_tiny_224".into()),
            "no checkpoint named",
        ),
        (
            "absolute_path_checkpoint",
            Send::Load("/etc/passwd".into()),
            "no checkpoint named",
        ),
        (
            "empty_checkpoint_name",
            Send::Load(String::new()),
            "no checkpoint named",
        ),
        (
            "frame_not_json",
            raw(b"\0{this is not json".to_vec()),
            "not a valid request",
        ),
        (
            "frame_bad_tag",
            raw(b"\x07{}".to_vec()),
            "not a valid request",
        ),
        ("frame_empty", raw(vec![]), "not a valid request"),
        (
            "frame_text_garbage",
            Send::Frames(vec![Message::Text("hello".into())]),
            "not a valid request",
        ),
        (
            "frame_wrong_shape",
            raw(b"\0{\"Generate\":{\"query\":5}}".to_vec()),
            "not a valid request",
        ),
        (
            "frame_stop_first",
            raw(b"\0\"Stop\"".to_vec()),
            "first message",
        ),
        // Past the websocket's 16 MiB frame limit the connection just closes (the page's frames
        // carry text only, 256 kB at most); the server goes on serving.
        (
            "frame_17mib_not_json",
            raw(vec![b' '; 17 << 20]),
            "the connection closed",
        ),
        (
            "frame_oversized_48mib",
            raw(vec![0u8; 48 << 20]),
            "the connection closed",
        ),
    ]
}

/// The message the server refused `send` with (`Err`: what it answered instead).
async fn error_of(addr: std::net::SocketAddr, client: &str, send: Send) -> Result<String, String> {
    let frames = match send {
        // Refused at upload when its header says so; else by the question about it (a body that
        // does not decode).
        Send::Upload(image) => match upload(addr, client, &image).await {
            Err((400, body)) => return Ok(body),
            Err(other) => return Err(format!("{other:?}")),
            Ok(upload) => {
                let req = greedy(None, "What is this?", 2).with_image(Some(upload));
                vec![frame(&ClientMsg::Generate(Box::new(req)))]
            }
        },
        Send::UploadRaw(content_type, body) => {
            let cookie = cogvlm::web::access::client_cookie(client);
            let headers = [("cookie", cookie.as_str()), ("content-type", content_type)];
            let (status, _, text) =
                http_bytes(addr, "POST", "/api/upload_image", &headers, &body).await;
            return if status == 400 {
                Ok(text)
            } else {
                Err(format!("{status}: {text}"))
            };
        }
        Send::Load(name) => {
            let mut ws = connect(addr, "/api/load_model", client, &[]).await.unwrap();
            ws.send(frame(&name)).await.unwrap();
            let answer = read_answer(&mut ws).await;
            return answer.error.clone().ok_or_else(|| format!("{answer:?}"));
        }
        Send::Generate(req) => {
            let req = uploaded(addr, client, &req).await;
            vec![frame(&ClientMsg::Generate(Box::new(req)))]
        }
        Send::Named(req) => vec![frame(&ClientMsg::Generate(Box::new(req)))],
        Send::Frames(frames) => frames,
    };
    let mut ws = connect(addr, "/api/chat", client, &[]).await.unwrap();
    for f in frames {
        // An oversized frame may end the connection while it is being written.
        let _ = ws.send(f).await;
    }
    let answer = read_answer(&mut ws).await;
    match answer {
        Answer { error: Some(e), .. } => Ok(e),
        Answer {
            stats: None,
            tokens: 0,
            ..
        } => Ok("the connection closed".into()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let server = start(EngineOptions::default(), Access::default()).await;
    let normal = greedy(Some(image("coffee.png")), "What is this?", 2);
    let cases = cases();
    let total = cases.len();
    let mut passed = 0;
    for (i, (name, send, expected)) in cases.into_iter().enumerate() {
        let client = format!("bad{i}");
        let error = error_of(server.addr, &client, send)
            .await
            .unwrap_or_else(|got| panic!("{name}: no error; got {got}"));
        assert!(
            error.contains(expected),
            "{name}: the error {error:?} does not say {expected:?}"
        );
        println!("{name}: {error}");
        let after = ask(server.addr, &format!("good{i}"), &normal).await;
        assert!(
            after.error.is_none() && after.stats.is_some(),
            "after {name}: the next normal request failed: {:?}",
            after.error
        );
        passed += 1;
    }
    println!("{passed}/{total} bad inputs refused clearly, each followed by a normal answer");
    assert!(total >= 30);
    assert_eq!(server.engine.models().current.as_deref(), Some(CHECKPOINT));
}
