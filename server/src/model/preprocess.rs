//! Image preprocessing exactly as the reference: `convert('RGB')`, torchvision `Resize((S, S), BICUBIC)` on a
//! PIL image (which is Pillow's fixed-point, antialiased bicubic resampler), `ToTensor`, CLIP `Normalize`.
//!
//! The resampler reproduces Pillow's `libImaging/Resample.c` for 8-bit images: filter a = -0.5, support widened
//! by the scale factor when downscaling, coefficients normalised then quantised to 22-bit fixed point, a
//! horizontal pass then a vertical pass, each rounding and clamping to u8. That makes it bit-exact with PIL.

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};

// The OpenAI-CLIP constants verbatim as the reference writes them.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index and fixed-point weights (Pillow's `precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut out = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates toward zero with `(int)`; the values here are >= -support so clamp first.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let mut w: Vec<f64> = (xmin..xmax)
            .map(|x| bicubic((x as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            for v in w.iter_mut() {
                *v /= total;
            }
        }
        let fixed = w
            .iter()
            .map(|&v| {
                let s = v * (1u32 << PRECISION_BITS) as f64;
                if v < 0.0 {
                    (s - 0.5) as i32
                } else {
                    (s + 0.5) as i32
                }
            })
            .collect();
        out.push((xmin, fixed));
    }
    out
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow-exact `img.resize((w, h), Image.BICUBIC)` of an RGB image.
pub fn resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    // Horizontal pass (skipped by Pillow when the width does not change).
    let (tmp, tmp_w) = if in_w != out_w {
        let coeffs = coefficients(in_w, out_w);
        let mut tmp = vec![0u8; out_w * in_h * 3];
        for y in 0..in_h {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (i, &w) in k.iter().enumerate() {
                        ss += row[(xmin + i) * 3 + c] as i32 * w;
                    }
                    tmp[(y * out_w + x) * 3 + c] = clip8(ss);
                }
            }
        }
        (tmp, out_w)
    } else {
        (src.to_vec(), in_w)
    };
    // Vertical pass.
    let out = if in_h != out_h {
        let coeffs = coefficients(in_h, out_h);
        let mut out = vec![0u8; out_w * out_h * 3];
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..tmp_w {
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (i, &w) in k.iter().enumerate() {
                        ss += tmp[((ymin + i) * tmp_w + x) * 3 + c] as i32 * w;
                    }
                    out[(y * out_w + x) * 3 + c] = clip8(ss);
                }
            }
        }
        out
    } else {
        tmp
    };
    RgbImage::from_raw(out_w as u32, out_h as u32, out).expect("buffer sized for the image")
}

/// `Image.convert('RGB')`: alpha is dropped (not composited), grey is replicated, palettes are expanded.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    img.to_rgb8()
}

/// u8 RGB (already S×S) → normalised `[3, S, S]` f32 tensor, bit-exactly `(u8 / 255 - mean) / std` in f32.
pub fn normalize(img: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut data = vec![0f32; 3 * w * h];
    for c in 0..3 {
        for i in 0..w * h {
            let v = raw[i * 3 + c] as f32 / 255.0;
            data[c * w * h + i] = (v - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    Tensor::from_vec(data, (3, h, w), device)
}

/// The whole pipeline for one square size: `[1, 3, S, S]` f32 pixels.
pub fn pixel_values(
    img: &DynamicImage,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let rgb = to_rgb(img);
    let resized = resize_bicubic(&rgb, size, size);
    normalize(&resized, device)?.unsqueeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(451, 490), (600, 224), (512, 490), (300, 1120)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn identity_size_is_a_copy() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 7]));
        assert_eq!(resize_bicubic(&img, 7, 5), img);
    }
}
