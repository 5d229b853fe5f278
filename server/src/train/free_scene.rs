//! `make-data --style free`: the scenes people draw themselves, not the grid the first demo learnt.
//!
//! Shapes of the demo's vocabulary go anywhere, at 12–35 % of the shorter side, on an image of any aspect
//! ratio (the model squashes it to its square input, as for real checkpoints). Backgrounds are plain,
//! coloured or graded, always in contrast with every shape colour; some scenes get faint clutter (lines,
//! dots, texture), slight blur or JPEG artefacts; shapes may be outlines and may overlap a little (each box
//! is still the whole shape). Every scene reports its style facets, which `cogvlm eval` groups by.

use std::io::Cursor;

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::scene::{Placed, COLORS, GRID, SHAPES};

/// How a free scene was drawn (one value per facet).
#[derive(Debug, Clone, PartialEq)]
pub struct Style {
    /// `square`, `wide` or `tall`.
    pub aspect: &'static str,
    /// `plain`, `coloured` or `graded`.
    pub background: &'static str,
    pub clutter: bool,
    pub blur: bool,
    pub jpeg: bool,
    /// At least one shape drawn as an outline.
    pub outline: bool,
}

impl Style {
    /// The facets as a label's `"style"` object.
    pub fn json(&self) -> serde_json::Value {
        json!({"placement": "free", "aspect": self.aspect, "background": self.background,
               "clutter": self.clutter, "blur": self.blur, "jpeg": self.jpeg, "outline": self.outline})
    }
}

/// Width and height for base side `size`: square, landscape up to 16:9 or portrait down to 2:3.
fn dimensions(rng: &mut StdRng, size: u32) -> (u32, u32, &'static str) {
    let ratio: f32 = match rng.random_range(0..3) {
        0 => 1.0,
        1 => rng.random_range(1.2..=1.78),
        _ => rng.random_range(0.56..=0.83),
    };
    let area = (size * size) as f32 * rng.random_range(1.0..=2.0);
    let w = (area * ratio).sqrt().round() as u32;
    let h = (area / ratio).sqrt().round() as u32;
    let aspect = match ratio {
        r if r > 1.05 => "wide",
        r if r < 0.95 => "tall",
        _ => "square",
    };
    (w.max(32), h.max(32), aspect)
}

fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, y)| (x as f32 - y as f32).powi(2))
        .sum::<f32>()
        .sqrt()
}

/// A background colour at least this far (RGB distance) from every shape colour.
const CONTRAST: f32 = 120.0;

fn background(rng: &mut StdRng, w: u32, h: u32) -> (RgbImage, &'static str) {
    let kind = match rng.random_range(0..10) {
        0..=3 => "plain",
        4..=6 => "coloured",
        _ => "graded",
    };
    let pick = |rng: &mut StdRng, light: bool| loop {
        let c: [u8; 3] = if light {
            std::array::from_fn(|_| rng.random_range(200..=255))
        } else {
            std::array::from_fn(|_| rng.random_range(0..=255))
        };
        if COLORS.iter().all(|(_, s)| distance(c, *s) >= CONTRAST) {
            return c;
        }
    };
    let top = pick(rng, kind == "plain");
    // A graded background keeps its contrast all the way down, not only at its ends.
    let bottom = loop {
        let b = if kind == "graded" {
            pick(rng, false)
        } else {
            top
        };
        let mid =
            |f: f32| std::array::from_fn(|c| (top[c] as f32 * (1.0 - f) + b[c] as f32 * f) as u8);
        if (1..4).all(|i| {
            COLORS
                .iter()
                .all(|(_, s)| distance(mid(i as f32 / 4.0), *s) >= CONTRAST)
        }) {
            break b;
        }
    };
    let img = RgbImage::from_fn(w, h, |_, y| {
        let f = y as f32 / h as f32;
        Rgb(std::array::from_fn(|c| {
            (top[c] as f32 * (1.0 - f) + bottom[c] as f32 * f) as u8
        }))
    });
    (img, kind)
}

/// Faint lines, dots and a speckle texture, each within a few levels of the pixels under them.
fn clutter(rng: &mut StdRng, img: &mut RgbImage) {
    let (w, h) = img.dimensions();
    let shade = |rng: &mut StdRng, p: Rgb<u8>| {
        let d: i16 = rng.random_range(-40..=40);
        Rgb(p.0.map(|v| (v as i16 + d).clamp(0, 255) as u8))
    };
    for _ in 0..rng.random_range(2..8) {
        let (x0, y0) = (rng.random_range(0..w) as f32, rng.random_range(0..h) as f32);
        let (x1, y1) = (rng.random_range(0..w) as f32, rng.random_range(0..h) as f32);
        let steps = (x1 - x0).abs().max((y1 - y0).abs()) as u32 + 1;
        let colour = shade(rng, *img.get_pixel(x0 as u32, y0 as u32));
        for s in 0..steps {
            let t = s as f32 / steps as f32;
            let (x, y) = ((x0 + (x1 - x0) * t) as u32, (y0 + (y1 - y0) * t) as u32);
            img.put_pixel(x.min(w - 1), y.min(h - 1), colour);
        }
    }
    for _ in 0..(w * h / 400) {
        let (x, y) = (rng.random_range(0..w), rng.random_range(0..h));
        let p = shade(rng, *img.get_pixel(x, y));
        img.put_pixel(x, y, p);
    }
}

/// Whether pixel (x, y) is inside shape `shape` filling `bbox`; with `ring > 0`, only its outline that thick.
fn covers(shape: usize, bbox: [u32; 4], ring: f32, x: u32, y: u32) -> bool {
    let [x0, y0, x1, y1] = bbox;
    let (w, h) = ((x1 - x0) as f32, (y1 - y0) as f32);
    let (px, py) = (x as f32 + 0.5 - x0 as f32, y as f32 + 0.5 - y0 as f32);
    // Signed distance inside the shape, in pixels (positive inside), approximated per shape.
    let depth = match shape {
        0 => {
            let (dx, dy) = (px - w / 2.0, py - h / 2.0);
            w / 2.0 - (dx * dx + dy * dy).sqrt()
        }
        1 => px.min(py).min(w - px).min(h - py),
        _ => {
            // Apex at the top centre, base along the bottom: distance to the slanted sides and the base.
            let half = 0.5 * w * (py / h);
            let side = (half - (px - w / 2.0).abs()) * h / (h * h + w * w / 4.0).sqrt();
            side.min(h - py)
        }
    };
    depth >= 0.0 && (ring <= 0.0 || depth < ring)
}

fn draw(img: &mut RgbImage, p: &Placed, ring: f32) {
    let [x0, y0, x1, y1] = p.bbox;
    for y in y0..y1 {
        for x in x0..x1 {
            if covers(p.shape, p.bbox, ring, x, y) {
                img.put_pixel(x, y, Rgb(COLORS[p.color].1));
            }
        }
    }
}

/// The share of `b`'s area inside `a`.
fn covered(a: [u32; 4], b: [u32; 4]) -> f32 {
    let w = a[2].min(b[2]).saturating_sub(a[0].max(b[0]));
    let h = a[3].min(b[3]).saturating_sub(a[1].max(b[1]));
    (w * h) as f32 / ((b[2] - b[0]) * (b[3] - b[1])) as f32
}

/// Up to four shapes with distinct (colour, shape) pairs, at free places and sizes; earlier shapes keep at
/// least three quarters of themselves visible.
fn place(rng: &mut StdRng, w: u32, h: u32) -> Vec<Placed> {
    let n = rng.random_range(1..=4);
    let short = w.min(h);
    let mut placed: Vec<Placed> = Vec::new();
    let mut tries = 0;
    while placed.len() < n && tries < 500 {
        tries += 1;
        let pair = (
            rng.random_range(0..COLORS.len()),
            rng.random_range(0..SHAPES.len()),
        );
        let side = rng.random_range(short * 12 / 100..=short * 35 / 100).max(8);
        let (x0, y0) = (
            rng.random_range(0..=w - side),
            rng.random_range(0..=h - side),
        );
        let bbox = [x0, y0, x0 + side, y0 + side];
        let clash = placed.iter().any(|p| {
            (p.color, p.shape) == pair
                || covered(bbox, p.bbox) > 0.25
                || covered(p.bbox, bbox) > 0.25
        });
        if clash {
            continue;
        }
        let (cx, cy) = (x0 + side / 2, y0 + side / 2);
        placed.push(Placed {
            color: pair.0,
            shape: pair.1,
            row: cy * GRID / h,
            col: cx * GRID / w,
            bbox,
        });
    }
    placed
}

/// Blur with a small sigma, or a JPEG round trip at a low quality: what a screenshot or a phone adds.
fn degrade(rng: &mut StdRng, img: RgbImage, blur: bool, jpeg: bool) -> RgbImage {
    let mut img = img;
    if blur {
        img = image::imageops::blur(&img, rng.random_range(0.5..=1.2));
    }
    if jpeg {
        let quality = rng.random_range(35..=80);
        let mut bytes = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
        if img.write_with_encoder(encoder).is_ok() {
            if let Ok(back) = image::load(Cursor::new(bytes), image::ImageFormat::Jpeg) {
                img = back.to_rgb8();
            }
        }
    }
    img
}

/// A free scene: its image, its shapes in reading order (by centre: top to bottom, then left to right, in
/// bands of a quarter of the height), and how it was drawn.
pub fn scene(rng: &mut StdRng, size: u32) -> (RgbImage, Vec<Placed>, Style) {
    let (w, h, aspect) = dimensions(rng, size);
    let (mut img, background) = background(rng, w, h);
    let clutter_on = rng.random_bool(0.4);
    if clutter_on {
        clutter(rng, &mut img);
    }
    let mut placed = place(rng, w, h);
    let mut outline = false;
    for p in &placed {
        let side = (p.bbox[2] - p.bbox[0]) as f32;
        let ring = if rng.random_bool(0.3) {
            outline = true;
            (side / 10.0).max(2.0)
        } else {
            0.0
        };
        draw(&mut img, p, ring);
    }
    let (blur, jpeg) = (rng.random_bool(0.3), rng.random_bool(0.3));
    let img = degrade(rng, img, blur, jpeg);
    placed.sort_by_key(|p| (p.row, p.col, p.bbox[0]));
    let style = Style {
        aspect,
        background,
        clutter: clutter_on,
        blur,
        jpeg,
        outline,
    };
    (img, placed, style)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_shape_shows_its_colour_inside_its_box_and_styles_vary() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..60 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (img, placed, style) = scene(&mut rng, 224);
            assert!(!placed.is_empty());
            for p in &placed {
                let [x0, y0, x1, y1] = p.bbox;
                assert!(x1 <= img.width() && y1 <= img.height());
                let side = x1 - x0;
                let short = img.width().min(img.height());
                assert!(
                    side * 100 >= short * 11 && side * 100 <= short * 36,
                    "{side} of {short}"
                );
                // Some pixel of the box is close to the shape's colour (outlines, blur and JPEG included).
                let near = (y0..y1).any(|y| {
                    (x0..x1).any(|x| distance(img.get_pixel(x, y).0, COLORS[p.color].1) < 60.0)
                });
                assert!(near, "seed {seed}: no {} pixel in {:?}", p.name(), p.bbox);
            }
            seen.insert(format!("{}-{}", style.aspect, style.background));
            seen.insert(format!("outline {}", style.outline));
        }
        assert!(seen.len() >= 9, "{seen:?}");
    }

    #[test]
    fn backgrounds_keep_their_contrast() {
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (img, _) = background(&mut rng, 64, 48);
            for p in [img.get_pixel(0, 0), img.get_pixel(63, 47)] {
                for (_, c) in COLORS {
                    assert!(distance(p.0, c) >= CONTRAST - 1.0);
                }
            }
        }
    }
}
