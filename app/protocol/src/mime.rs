//! The type of an image file from its first bytes: one sniffer for the page (showing a stored image again),
//! the server and the remote backend (the data URL they send on).

/// PNG, JPEG, GIF, WebP or BMP, from a file's first 12 bytes; `None` for anything else.
pub fn image_mime(head: &[u8]) -> Option<&'static str> {
    match head {
        [0x89, b'P', b'N', b'G', ..] => Some("image/png"),
        [0xff, 0xd8, 0xff, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', ..] => Some("image/gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        [b'B', b'M', ..] => Some("image/bmp"),
        _ => None,
    }
}

/// [`image_mime`] of base64 text (standard or URL-safe alphabet), decoding only its first 16 characters.
pub fn image_mime_base64(text: &str) -> Option<&'static str> {
    image_mime(&decode_head(text))
}

/// The bytes of the first 16 base64 characters (12 bytes), stopping at padding or anything else.
fn decode_head(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::with_capacity(12), 0u32, 0);
    for v in text.bytes().take(16).map_while(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard base64, written here independently of the decoder under test.
    fn encode(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        s
    }

    #[test]
    fn real_files_are_recognised_from_bytes_and_base64() {
        let images = concat!(env!("CARGO_MANIFEST_DIR"), "/../../server/fixtures/images/");
        for name in ["coffee.png", "chelsea.png", "synth_gui.png"] {
            let bytes = std::fs::read(format!("{images}{name}")).unwrap();
            assert_eq!(image_mime(&bytes), Some("image/png"), "{name}");
            assert_eq!(image_mime_base64(&encode(&bytes[..30])), Some("image/png"));
        }
        // The other formats' signatures, as their specifications give them.
        let cases: [(&[u8], &str); 4] = [
            (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", "image/jpeg"),
            (b"GIF89a\x01\x00\x01\x00\x80\x00", "image/gif"),
            (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
            (b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00", "image/bmp"),
        ];
        for (head, mime) in cases {
            assert_eq!(image_mime(head), Some(mime));
            assert_eq!(image_mime_base64(&encode(head)), Some(mime));
        }
        // The page's older records and data URLs: these prefixes are what browsers write.
        assert_eq!(image_mime_base64("iVBORw0KGgo="), Some("image/png"));
        assert_eq!(image_mime_base64("/9j/4AAQSkZJRg"), Some("image/jpeg"));
        assert_eq!(image_mime_base64("bm90IGFuIGltYWdl"), None);
        assert_eq!(image_mime(b"RIFF\x24\x00\x00\x00WAVEfmt "), None);
        assert_eq!(image_mime(b""), None);
    }
}
