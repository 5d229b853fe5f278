//! Streaming detokenisation with the real Llama-2 tokenizer: byte-fallback pieces of one character are held
//! back until the character is complete, and the end is flushed (a closing `]]` is not lost).

use std::path::PathBuf;

use cogvlm::generate::load_tokenizer;
use cogvlm::generate::text_stream::TextStream;

#[test]
fn multibyte_characters_are_never_split_and_the_end_is_flushed() {
    let tok = load_tokenizer(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/tokenizer.json"),
    )
    .unwrap();
    let text = "A cup 🙂 at [[086,540,400,760]]";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    // The emoji is not in the vocabulary: it must come as several byte tokens.
    let bytes = ids
        .iter()
        .filter(|&&i| tok.id_to_token(i).is_some_and(|t| t.starts_with("<0x")))
        .count();
    assert!(bytes >= 2, "expected byte-fallback tokens in {ids:?}");
    let mut stream = TextStream::new(std::sync::Arc::new(tok.clone()));
    let mut pieces = Vec::new();
    for id in ids {
        if let Some(p) = stream.push(id).unwrap() {
            pieces.push(p);
        }
    }
    if let Some(p) = stream.finish() {
        pieces.push(p);
    }
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(pieces.len() > 3, "streamed in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), text);
}
