//! Incremental detokenisation with constant work per token: each new token is decoded together with the few
//! tokens before it (a window that starts after the last released text), and only the text it adds is
//! released. The window is held back while it ends in an incomplete UTF-8 sequence (U+FFFD), as the
//! reference's streaming CLI does. [`TextStream::finish`] releases whatever is held, on every end path
//! (end of answer, length, cancel, error), so a closing `]]` or the last character is never lost.
//!
//! Decoding the window on its own gives the same text as decoding the whole answer: both decodes of a step
//! start at the same token, so the tokenizer's treatment of a first token (SentencePiece drops its leading
//! space) cancels out. The test below checks it against whole-answer decoding.

use std::sync::Arc;
use tokenizers::Tokenizer;

pub struct TextStream {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// The window's first token: decoded again as context for the new ones.
    prefix: usize,
    /// The first token whose text has not been released.
    read: usize,
    /// Everything released so far.
    text: String,
}

impl TextStream {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
        }
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("cannot decode tokens: {e}"))
    }

    /// Adds a token; returns the newly complete text, if any.
    pub fn push(&mut self, id: u32) -> anyhow::Result<Option<String>> {
        self.ids.push(id);
        let (context, window) = self.window()?;
        if window.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        Ok(self.release(&context, &window))
    }

    /// The decoded context (the tokens before `read`) and the whole window.
    fn window(&self) -> anyhow::Result<(String, String)> {
        let context = self.decode(&self.ids[self.prefix..self.read])?;
        let window = self.decode(&self.ids[self.prefix..])?;
        Ok((context, window))
    }

    /// Releases the window's text after its context and moves the window on.
    fn release(&mut self, context: &str, window: &str) -> Option<String> {
        // Prefix-stable for SentencePiece in practice; if a window ever is not, wait for more tokens.
        if window.len() <= context.len() || !window.is_char_boundary(context.len()) {
            return None;
        }
        let piece = window[context.len()..].to_string();
        self.text.push_str(&piece);
        self.prefix = self.read;
        self.read = self.ids.len();
        Some(piece)
    }

    /// Whatever has not been released yet (an incomplete character comes out as U+FFFD).
    pub fn finish(&mut self) -> Option<String> {
        let (context, window) = self.window().ok()?;
        self.release(&context, &window)
    }

    /// The text released so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn tokenizer() -> Arc<Tokenizer> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/tokenizer/tokenizer.json"
        );
        Arc::new(Tokenizer::from_file(path).expect("the bundled tokenizer"))
    }

    fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap().get_ids().to_vec()
    }

    /// Streams `ids`, returning the pieces (with the final flush).
    fn stream(tok: &Arc<Tokenizer>, ids: &[u32]) -> Vec<String> {
        let mut s = TextStream::new(tok.clone());
        let mut pieces: Vec<String> = ids.iter().filter_map(|&id| s.push(id).unwrap()).collect();
        pieces.extend(s.finish());
        assert_eq!(s.text(), pieces.concat());
        pieces
    }

    #[test]
    fn the_pieces_make_the_whole_decoded_text() {
        let tok = tokenizer();
        let text = "Hello world! A cat [[120,340,560,780]] sits on a sofa. Größe: 3 €, 猫 and 🐈 too.\n\nNext  line.";
        let ids = encode(&tok, text);
        let whole = tok.decode(&ids, true).unwrap();
        let pieces = stream(&tok, &ids);
        assert_eq!(pieces.concat(), whole);
        assert!(pieces.len() > 10, "{pieces:?}");
        // No piece splits a character: each is valid on its own and none is a replacement character.
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    }

    #[test]
    fn a_held_back_tail_comes_out_at_the_end() {
        let tok = tokenizer();
        // "…]]" then the first two of the three bytes of "€" (byte-fallback tokens): held back while
        // incomplete, released by `finish` (a cancelled answer ends the same way as a finished one).
        let mut ids = encode(&tok, "box [[1,2,3,4]]");
        let bytes: Vec<u32> = "€"
            .bytes()
            .map(|b| tok.token_to_id(&format!("<0x{b:02X}>")).unwrap())
            .collect();
        let mut s = TextStream::new(tok.clone());
        let mut out = String::new();
        for &id in &ids {
            out.extend(s.push(id).unwrap());
        }
        assert!(out.ends_with("]]"), "{out:?}");
        assert_eq!(s.push(bytes[0]).unwrap(), None);
        assert_eq!(s.push(bytes[1]).unwrap(), None);
        let tail = s.finish().expect("the held-back bytes");
        // One replacement character per byte of the incomplete character.
        assert_eq!(tail, "\u{FFFD}\u{FFFD}");
        assert!(s.text().ends_with("]]\u{FFFD}\u{FFFD}"));
        // Completed, the same bytes make the character.
        ids.extend(&bytes);
        assert!(stream(&tok, &ids).concat().ends_with("]]€"));
    }

    /// The work per token does not grow with the answer: the last 1000 tokens of a 4000-token answer take less
    /// than 3× the time of the first 1000, and all 4000 less than 8× (constant work makes these 1× and 4×, give
    /// or take the timer's noise on a busy machine, which made the first thousand 1.1 ms and the others 1.5 ms;
    /// decoding the whole answer for every token, as before, made them ~7× and ~16×).
    #[test]
    fn work_per_token_is_constant() {
        let tok = tokenizer();
        let sentence = encode(
            &tok,
            "The quick brown fox jumps over the lazy dog, then naps. ",
        );
        let ids: Vec<u32> = sentence.iter().copied().cycle().take(4000).collect();
        // Seconds for each thousand tokens of one 4000-token answer; the best of five runs, against noise.
        let mut best = [f64::INFINITY; 4];
        for _ in 0..5 {
            let mut s = TextStream::new(tok.clone());
            for (k, chunk) in ids.chunks(1000).enumerate() {
                let t = Instant::now();
                for &id in chunk {
                    s.push(id).unwrap();
                }
                best[k] = best[k].min(t.elapsed().as_secs_f64());
            }
            s.finish();
        }
        let all: f64 = best.iter().sum();
        let ms = best.map(|t| (t * 1e4).round() / 10.0);
        assert!(all < 8.0 * best[0], "ms per thousand tokens: {ms:?}");
        assert!(best[3] < 3.0 * best[0], "ms per thousand tokens: {ms:?}");
    }
}
