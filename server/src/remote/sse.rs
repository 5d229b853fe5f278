//! Server-sent events from a byte stream: the `data:` payloads, one per event line.

/// Splits arbitrary byte chunks into complete lines and keeps their `data:` payloads.
#[derive(Default)]
pub struct DataLines {
    buf: Vec<u8>,
}

impl DataLines {
    /// The payloads of the lines completed by `bytes` (a chunk may end mid-line or
    /// mid-character; the rest waits for the next chunk).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(data) = line.strip_prefix("data:") {
                out.push(data.strip_prefix(' ').unwrap_or(data).to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_survive_any_split() {
        let text = "data: {\"a\":\"é\"}\r\n\r\n: keep-alive\n\ndata:[DONE]\n\n".as_bytes();
        for cut in 0..text.len() {
            let mut lines = DataLines::default();
            let mut got = lines.push(&text[..cut]);
            got.extend(lines.push(&text[cut..]));
            assert_eq!(got, vec!["{\"a\":\"é\"}", "[DONE]"], "cut at {cut}");
        }
    }
}
