//! The body of `POST /v1/chat/completions` and its translation into the engine's
//! [`GenerateRequest`]: messages → (history, query, image), OpenAI sampling → [`Sampling`].
//!
//! CogVLM's templates know questions and answers only, so: a system message is folded into
//! the first question; consecutive messages of one role are joined with a newline; the last
//! image of the conversation is the one the model sees (one image per conversation).

use super::error::ApiError;
use base64::Engine as _;
use protocol::openai::{ChatCompletionRequest, Content, Message, Part, Stop};
use protocol::{GenerateRequest, ImageData, Sampling};

/// OpenAI's own defaults (temperature 1, top_p 1, no top-k). `temperature: 0` is greedy.
const DEFAULT_TEMPERATURE: f64 = 1.0;
const DEFAULT_TOP_P: f64 = 1.0;
/// OpenAI accepts at most four stop sequences.
const MAX_STOPS: usize = 4;
/// Longest stop sequence, in bytes: the stop matcher holds back up to this much of the answer and
/// scans it on every piece, so a 4 MB stop string would cost 4 MB of scanning per token.
pub const MAX_STOP_BYTES: usize = 256;

/// What the handler needs besides the engine request.
#[derive(Debug)]
pub struct Prepared {
    pub generate: GenerateRequest,
    pub stops: Vec<String>,
}

/// Checks the fields of `req` and builds the engine request.
pub fn prepare(req: &ChatCompletionRequest) -> Result<Prepared, ApiError> {
    Rules(req).prepare()
}

/// The request's fields read by this server's rules.
struct Rules<'a>(&'a ChatCompletionRequest);

impl std::ops::Deref for Rules<'_> {
    type Target = ChatCompletionRequest;
    fn deref(&self) -> &ChatCompletionRequest {
        self.0
    }
}

impl Rules<'_> {
    fn prepare(&self) -> Result<Prepared, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                "only n = 1 is supported (one answer per request)",
                Some("n"),
            ));
        }
        let (history, query, image) = conversation(&self.messages)?;
        Ok(Prepared {
            generate: GenerateRequest {
                image,
                history,
                query,
                version: None,
                sampling: self.sampling()?,
            },
            stops: self.stops()?,
        })
    }

    /// OpenAI's defaults for what the caller leaves out, then the one rule set every entry point
    /// applies ([`Sampling::validate`]); a refusal names the API's field.
    fn sampling(&self) -> Result<Sampling, ApiError> {
        let sampling = Sampling {
            temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            top_p: self.top_p.unwrap_or(DEFAULT_TOP_P),
            // Absent and 0 (vLLM's "off") both mean no top-k, as everywhere.
            top_k: self.top_k,
            // max_tokens bounds the answer alone; the prompt may use the checkpoint's whole context.
            max_length: protocol::MAX_CONTEXT,
            max_new_tokens: self.max_completion_tokens.or(self.max_tokens),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed,
        };
        sampling.validate().map_err(|e| match e.field {
            "max_new_tokens" => {
                ApiError::invalid("max_tokens must be at least 1", Some("max_tokens"))
            }
            field => ApiError::invalid(e.message, Some(field)),
        })?;
        Ok(sampling)
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops: Vec<String> = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                format!("at most {MAX_STOPS} stop sequences are allowed"),
                Some("stop"),
            ));
        }
        if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                format!(
                    "a stop sequence is {} bytes long; the limit is {MAX_STOP_BYTES}",
                    long.len()
                ),
                Some("stop"),
            ));
        }
        Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
    }
}

type Conversation = (Vec<(String, String)>, String, Option<ImageData>);

/// Messages → (history of (question, answer), the last question, the last image).
fn conversation(messages: &[Message]) -> Result<Conversation, ApiError> {
    let mut system: Vec<String> = Vec::new();
    // Alternating turns after merging runs of one role: (is_user, text).
    let mut turns: Vec<(bool, String)> = Vec::new();
    let mut image = None;
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let (text, img) = read_content(m.content.as_ref(), &param)?;
        let Some(is_user) = speaker(&m.role, img.is_some(), &param)? else {
            system.push(text);
            continue;
        };
        if img.is_some() {
            image = img; // the last image wins
        }
        match turns.last_mut() {
            Some((last_user, last_text)) if *last_user == is_user => {
                if !text.is_empty() {
                    if !last_text.is_empty() {
                        last_text.push('\n');
                    }
                    last_text.push_str(&text);
                }
            }
            _ => turns.push((is_user, text)),
        }
    }
    let Some((true, query)) = turns.pop() else {
        return Err(ApiError::invalid(
            "the last message must be a user message (the question to answer)",
            Some("messages"),
        ));
    };
    if query.trim().is_empty() && image.is_none() {
        return Err(ApiError::invalid(
            "the last user message has no text",
            Some("messages"),
        ));
    }
    let mut history = pair_turns(turns);
    let mut query = query;
    if !system.is_empty() {
        let first = history.first_mut().map_or(&mut query, |(q, _)| q);
        *first = fold_system(&system.join("\n"), first);
    }
    Ok((history, query, image))
}

/// Whether a message of `role` is the user's (`Some(true)`), the assistant's (`Some(false)`) or the system's
/// (`None`); images are refused outside user messages.
fn speaker(role: &str, has_image: bool, param: &str) -> Result<Option<bool>, ApiError> {
    let no_image = |what: &str| match has_image {
        true => Err(ApiError::invalid(what.to_string(), Some(param))),
        false => Ok(()),
    };
    match role {
        "system" | "developer" => {
            no_image("images belong in user messages, not in the system message")?;
            Ok(None)
        }
        "user" => Ok(Some(true)),
        "assistant" => {
            no_image("an assistant message cannot carry an image")?;
            Ok(Some(false))
        }
        other => Err(ApiError::invalid(
            format!(
                "role {other:?} is not supported (system, user and assistant are); CogVLM has no tools"
            ),
            Some(&format!("{param}.role")),
        )),
    }
}

/// Alternating turns → (question, answer) pairs; an answer without a question before it (assistant first)
/// pairs with an empty question, a question without an answer with an empty answer.
fn pair_turns(turns: Vec<(bool, String)>) -> Vec<(String, String)> {
    let mut history = Vec::new();
    let mut it = turns.into_iter().peekable();
    while let Some((is_user, text)) = it.next() {
        if is_user {
            let answer = match it.peek() {
                Some((false, _)) => it.next().map(|(_, a)| a).unwrap_or_default(),
                _ => String::new(),
            };
            history.push((text, answer));
        } else {
            history.push((String::new(), text));
        }
    }
    history
}

/// The system prompt goes in front of the first question (CogVLM has no system role).
fn fold_system(system: &str, question: &str) -> String {
    match (system.trim().is_empty(), question.is_empty()) {
        (true, _) => question.to_string(),
        (false, true) => system.to_string(),
        (false, false) => format!("{system}\n{question}"),
    }
}

/// A message's text (parts joined by newlines) and its last image.
fn read_content(
    content: Option<&Content>,
    param: &str,
) -> Result<(String, Option<ImageData>), ApiError> {
    match content {
        None => Ok((String::new(), None)),
        Some(Content::Text(t)) => Ok((t.clone(), None)),
        Some(Content::Parts(parts)) => {
            let mut texts = Vec::new();
            let mut image = None;
            for (j, part) in parts.iter().enumerate() {
                match part {
                    Part::Text { text } => texts.push(text.as_str()),
                    Part::ImageUrl { image_url } => {
                        let p = format!("{param}.content[{j}].image_url");
                        image = Some(parse_data_url(image_url.url(), &p)?);
                    }
                }
            }
            Ok((texts.join("\n"), image))
        }
    }
}

/// The image types accepted in data URLs.
const IMAGE_TYPES: [&str; 5] = ["png", "jpeg", "jpg", "webp", "gif"];

/// `data:image/<type>;base64,<data>` → the engine's image (still encoded). Remote URLs are
/// refused: the server may have no internet access, and fetching them would let any caller
/// make it request arbitrary addresses.
pub fn parse_data_url(url: &str, param: &str) -> Result<ImageData, ApiError> {
    let url = url.trim();
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::invalid(
            "image URLs are not fetched (the server may have no internet access): send the image \
             inline as a data URL, data:image/png;base64,…",
            Some(param),
        ));
    }
    let bad = || {
        ApiError::invalid(
            "image_url must be a data URL data:image/<png|jpeg|webp|gif>;base64,<data>",
            Some(param),
        )
    };
    let rest = url.strip_prefix("data:").ok_or_else(bad)?;
    let (meta, data) = rest.split_once(',').ok_or_else(bad)?;
    let mime = meta.strip_suffix(";base64").ok_or_else(bad)?;
    let subtype = mime
        .strip_prefix("image/")
        .ok_or_else(bad)?
        .to_ascii_lowercase();
    if !IMAGE_TYPES.contains(&subtype.as_str()) {
        return Err(ApiError::invalid(
            format!("image type {mime} is not supported (PNG, JPEG, WebP and GIF are)"),
            Some(param),
        ));
    }
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| {
            ApiError::invalid(format!("the image is not valid base64: {e}"), Some(param))
        })?;
    // The declared type may be wrong (a PNG labelled JPEG); what matters is that we can read it.
    match image::guess_format(&bytes) {
        Ok(
            image::ImageFormat::Png
            | image::ImageFormat::Jpeg
            | image::ImageFormat::WebP
            | image::ImageFormat::Gif,
        ) => {}
        _ => {
            return Err(ApiError::invalid(
                "the image data is not a PNG, JPEG, WebP or GIF file",
                Some(param),
            ))
        }
    }
    Ok(ImageData {
        name: format!("image.{subtype}"),
        bytes: protocol::ImageBytes::new(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

    fn req(json: serde_json::Value) -> ChatCompletionRequest {
        serde_json::from_value(json).unwrap()
    }

    /// [`prepare`](super::prepare) as a method, for short tests.
    trait Prepare {
        fn prepare(&self) -> Result<Prepared, ApiError>;
    }

    impl Prepare for ChatCompletionRequest {
        fn prepare(&self) -> Result<Prepared, ApiError> {
            super::prepare(self)
        }
    }

    #[test]
    fn multi_turn_with_system_and_image() {
        let r = req(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is it?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG_1X1}")}}
                ]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "What colour?"}
            ]
        }));
        let p = r.prepare().unwrap();
        let g = &p.generate;
        assert_eq!(
            g.history,
            vec![("Be brief.\nWhat is it?".into(), "A cat.".into())]
        );
        assert_eq!(g.query, "What colour?");
        assert_eq!(g.image.as_ref().unwrap().bytes.to_base64(), PNG_1X1);
        assert_eq!(g.sampling.temperature, 1.0);
        assert!(p.stops.is_empty());
    }

    #[test]
    fn system_folds_into_the_only_question_and_sampling_maps() {
        let r = req(serde_json::json!({
            "model": "m", "temperature": 0, "max_tokens": 12, "seed": 7, "top_k": 3,
            "stop": ["\n", ""],
            "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
        }));
        let p = r.prepare().unwrap();
        assert_eq!(p.generate.query, "S\nQ");
        assert!(p.generate.history.is_empty());
        let s = &p.generate.sampling;
        assert_eq!(
            (s.temperature, s.max_new_tokens, s.seed, s.top_k),
            (0.0, Some(12), Some(7), Some(3))
        );
        assert_eq!(s.max_length, protocol::MAX_CONTEXT);
        assert_eq!(p.stops, vec!["\n".to_string()]);
    }

    #[test]
    fn a_long_stop_sequence_is_refused() {
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        let r = req(serde_json::json!({
            "model": "m", "stop": [long],
            "messages": [{"role": "user", "content": "Q"}]
        }));
        let err = r.prepare().unwrap_err();
        assert_eq!(err.param.as_deref(), Some("stop"), "{}", err.message);
        assert!(err.message.contains("limit is 256"), "{}", err.message);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (
                serde_json::json!([{"role": "assistant", "content": "hi"}]),
                "messages",
            ),
            (
                serde_json::json!([{"role": "tool", "content": "x"}]),
                "messages[0].role",
            ),
            (
                serde_json::json!([{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]),
                "messages[0].content[0].image_url",
            ),
            (
                serde_json::json!([{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]),
                "messages[0].content[0].image_url",
            ),
            (
                serde_json::json!([{"role": "user", "content": [
                    {"type": "image_url", "image_url": "data:image/png;base64,bm90IGFuIGltYWdl"}]}]),
                "messages[0].content[0].image_url",
            ),
        ];
        for (messages, param) in cases {
            let err = req(serde_json::json!({"model": "m", "messages": messages}))
                .prepare()
                .unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let err = req(serde_json::json!({"model": "m", "temperature": 3,
            "messages": [{"role": "user", "content": "q"}]}))
        .prepare()
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("temperature"));
    }

    #[test]
    fn the_last_image_wins() {
        let jpeg_like = "data:image/jpeg;base64,".to_string() + PNG_1X1;
        let r = req(serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": null},
            {"role": "user", "content": [{"type": "text", "text": "q"},
                                         {"type": "image_url", "image_url": {"url": jpeg_like}}]}
        ]}));
        let g = r.prepare().unwrap().generate;
        assert_eq!(g.image.unwrap().name, "image.jpeg");
        assert_eq!(g.history, vec![(String::new(), String::new())]);
    }

    #[test]
    fn top_k_zero_and_absent_are_off_and_one_is_greedy() {
        let sampling = |extra: serde_json::Value| {
            let mut body = serde_json::json!({"model": "m", "temperature": 0.7,
                "messages": [{"role": "user", "content": "q"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            req(body).prepare().unwrap().generate.sampling
        };
        let absent = sampling(serde_json::json!({}));
        let zero = sampling(serde_json::json!({"top_k": 0}));
        let one = sampling(serde_json::json!({"top_k": 1}));
        assert_eq!((absent.top_k_limit(), zero.top_k_limit()), (None, None));
        assert!(!absent.is_greedy() && !zero.is_greedy());
        assert!(one.is_greedy());
        assert_eq!(one.top_k_limit(), Some(1));
    }
}
