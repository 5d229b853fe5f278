//! Incremental detokenisation: re-decodes the generated ids and releases only the new suffix, holding it back
//! while the text ends in an incomplete UTF-8 sequence (U+FFFD), as the reference's streaming CLI does.
//! `finish` flushes whatever is left, so a closing `]]` is never lost.

use std::sync::Arc;
use tokenizers::Tokenizer;

pub struct TextStream {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    emitted: usize,
    text: String,
}

impl TextStream {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
            text: String::new(),
        }
    }

    fn decode(&self) -> anyhow::Result<String> {
        self.tokenizer
            .decode(&self.ids, true)
            .map_err(|e| anyhow::anyhow!("cannot decode tokens: {e}"))
    }

    /// Adds a token; returns the newly complete text, if any.
    pub fn push(&mut self, id: u32) -> anyhow::Result<Option<String>> {
        self.ids.push(id);
        let text = self.decode()?;
        self.text = text;
        if self.text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        Ok(self.release())
    }

    fn release(&mut self) -> Option<String> {
        // Decoding is prefix-stable for SentencePiece in practice; if it ever is not, wait for `finish`.
        if self.text.len() > self.emitted && self.text.is_char_boundary(self.emitted) {
            let piece = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            Some(piece)
        } else {
            None
        }
    }

    /// Whatever has not been released yet.
    pub fn finish(&mut self) -> Option<String> {
        self.release()
    }

    /// The full decoded text so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}
