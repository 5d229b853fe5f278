//! What the engine accepts from a client: image size and pixel count, text size, sampling ranges.
//!
//! [`check_request`] runs before a request is queued, so bad input is refused at once with a
//! message for the user instead of waiting behind other requests. It reads only the image's
//! header; the worker then decodes it with the same limits ([`decode_image`]), which also
//! bounds the decoder's memory (decompression bombs).

use anyhow::{anyhow, bail, Context, Result};
use protocol::GenerateRequest;
use std::io::Cursor;

/// Hard limits on one request.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Encoded image size.
    pub max_upload_bytes: usize,
    /// Decoded width × height.
    pub max_pixels: u64,
    /// Question plus history, in bytes, each turn counted with [`TURN_TEMPLATE_BYTES`] more for
    /// its template (the token count is checked against the model's context by the pipeline;
    /// this bound keeps tokenizing cheap).
    pub max_text_bytes: usize,
    /// Turns of history: hundreds of thousands of empty turns are tiny in bytes but each one
    /// costs the tokenizer and the prompt builder a template.
    pub max_turns: usize,
}

/// What one turn of history adds to the prompt besides its text ("Question: … Answer: …", the
/// `[INST]` markers): counted toward [`Limits::max_text_bytes`], so empty turns are not free.
pub const TURN_TEMPLATE_BYTES: usize = 32;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 * 1000 * 1000,
            // A 64-megapixel camera photo fits; a 30000×30000 bomb does not.
            max_pixels: 64_000_000,
            max_text_bytes: 256 * 1024,
            max_turns: 512,
        }
    }
}

fn mb(bytes: usize) -> String {
    if bytes < 1_000_000 {
        format!("{:.0} kB", bytes as f64 / 1e3)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// Checks everything that can be checked without the model (the image from its header).
pub fn check_request(req: &GenerateRequest, limits: &Limits) -> Result<()> {
    // Counted before anything else, and cheaply: a request of 300 000 empty turns stops here.
    if req.history.len() > limits.max_turns {
        bail!(
            "the conversation has {} turns; the limit is {}: clear the chat or start a new one",
            req.history.len(),
            limits.max_turns
        );
    }
    let text_bytes = req.query.len()
        + req
            .history
            .iter()
            .map(|(q, a)| q.len() + a.len() + TURN_TEMPLATE_BYTES)
            .sum::<usize>();
    if text_bytes > limits.max_text_bytes {
        bail!(
            "the question and the conversation so far are {} long; the limit is {}: \
             clear the chat or shorten the question",
            mb(text_bytes),
            mb(limits.max_text_bytes)
        );
    }
    req.sampling.validate()?;
    match &req.image {
        Some(img) => check_image_bytes(&img.name, img.bytes.as_bytes(), limits),
        None => Ok(()),
    }
}

/// Checks an encoded image's size, format and pixel count from its header (the upload server
/// function refuses a bad file with these words before anyone asks about it).
pub fn check_image_bytes(name: &str, bytes: &[u8], limits: &Limits) -> Result<()> {
    let name = short(name);
    if bytes.is_empty() {
        bail!("image {name} is empty (0 bytes)");
    }
    if bytes.len() > limits.max_upload_bytes {
        bail!(
            "image {name} is {}; the limit is {}",
            mb(bytes.len()),
            mb(limits.max_upload_bytes)
        );
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("reading the image")?;
    if reader.format().is_none() {
        bail!("image {name} is not a PNG, JPEG, WebP, GIF or BMP file");
    }
    // Image errors repeat their source in their own text: one level is enough.
    let (w, h) = reader.into_dimensions().map_err(|e| {
        anyhow!(
            "image {name} is corrupt or truncated ({})",
            e.to_string().trim()
        )
    })?;
    check_pixels(&name, w, h, limits)
}

fn check_pixels(name: &str, w: u32, h: u32, limits: &Limits) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("image {name} has no pixels ({w}×{h})");
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        bail!(
            "image {name} is {w}×{h} = {:.0} megapixels; the limit is {:.0}",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        );
    }
    Ok(())
}

/// Decodes an image checked by [`check_request`], with the decoder's allocations bounded too.
pub fn decode_image(name: &str, bytes: &[u8], limits: &Limits) -> Result<image::DynamicImage> {
    let name = short(name);
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("reading the image")?;
    let mut decoder_limits = image::Limits::default();
    // RGBA at 16 bits a channel is the largest buffer a decoder makes; frames of a GIF are
    // decoded one by one.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(decoder_limits);
    let img = reader.decode().map_err(|e| {
        anyhow!(
            "image {name} cannot be decoded: corrupt, truncated or too large ({})",
            e.to_string().trim()
        )
    })?;
    check_pixels(&name, img.width(), img.height(), limits)?;
    Ok(img)
}

/// A file name fit for an error message.
fn short(name: &str) -> String {
    let mut s: String = name.chars().take(60).collect();
    if s.len() < name.len() {
        s.push('…');
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ImageData, Sampling};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::new(w, h);
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn request(bytes: &[u8]) -> GenerateRequest {
        GenerateRequest {
            image: Some(ImageData {
                name: "x.png".into(),
                bytes: protocol::ImageBytes::new(bytes),
            }),
            history: vec![],
            query: "hi".into(),
            version: None,
            sampling: Sampling::default(),
        }
    }

    #[test]
    fn accepts_a_small_png_and_decodes_it() {
        let limits = Limits::default();
        let req = request(&png(3, 2));
        check_request(&req, &limits).unwrap();
        let bytes = req.image.unwrap().bytes;
        let img = decode_image("x.png", bytes.as_bytes(), &limits).unwrap();
        assert_eq!((img.width(), img.height()), (3, 2));
    }

    #[test]
    fn refuses_too_many_pixels_from_the_header() {
        let limits = Limits {
            max_pixels: 5,
            ..Limits::default()
        };
        let err = check_request(&request(&png(3, 2)), &limits).unwrap_err();
        assert!(err.to_string().contains("3×2"), "{err}");
    }

    #[test]
    fn refuses_oversized_uploads_before_decoding() {
        let limits = Limits {
            max_upload_bytes: 10,
            ..Limits::default()
        };
        let err = check_request(&request(&png(3, 2)), &limits).unwrap_err();
        assert!(err.to_string().contains("the limit is"), "{err}");
    }

    #[test]
    fn empty_turns_count_toward_the_limits() {
        let limits = Limits::default();
        let mut req = request(&png(3, 2));
        req.history = vec![(String::new(), String::new()); limits.max_turns];
        // Under the turn cap, but each empty turn costs its template bytes.
        let small = Limits {
            max_text_bytes: limits.max_turns * TURN_TEMPLATE_BYTES - 1,
            ..limits.clone()
        };
        let err = check_request(&req, &small).unwrap_err();
        assert!(err.to_string().contains("the limit is"), "{err}");
        assert!(check_request(&req, &limits).is_ok());
        req.history.push((String::new(), String::new()));
        let err = check_request(&req, &limits).unwrap_err();
        assert!(err.to_string().contains("turns"), "{err}");
    }

    #[test]
    fn sampling_ranges() {
        let ok = Sampling::default();
        assert!(ok.validate().is_ok());
        for bad in [
            Sampling {
                temperature: f64::NAN,
                ..ok.clone()
            },
            Sampling {
                temperature: -1.0,
                ..ok.clone()
            },
            Sampling {
                top_p: 0.0,
                ..ok.clone()
            },
            Sampling {
                repetition_penalty: f32::INFINITY,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(check_request(
                &GenerateRequest {
                    sampling: bad,
                    ..request(&png(3, 2))
                },
                &Limits::default()
            )
            .is_err());
        }
        // 0 is "no top-k", as an absent value.
        assert!(Sampling {
            top_k: Some(0),
            ..ok.clone()
        }
        .validate()
        .is_ok());
    }
}
