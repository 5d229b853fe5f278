//! What every synthetic picture of make-data is made of: the colours and shapes it names, the grid it places
//! them on, a placed shape, the light background, and a draw from a list. `make_data.rs` (grid scenes),
//! `free_scene.rs` (free placement) and `captcha.rs` build on it.

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;

pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 160, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 200, 0]),
    ("purple", [140, 40, 170]),
    ("orange", [245, 120, 10]),
];
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Cells per side of the placement grid.
pub const GRID: u32 = 4;

/// One drawn shape: colour and shape indices, grid cell, and its pixel box `[x0, y0, x1, y1)`.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub color: usize,
    pub shape: usize,
    pub row: u32,
    pub col: u32,
    pub bbox: [u32; 4],
}

impl Placed {
    pub fn name(&self) -> String {
        format!("{} {}", COLORS[self.color].0, SHAPES[self.shape])
    }
}

/// A light, low-saturation background colour with a gentle vertical gradient.
pub fn background(rng: &mut StdRng, size: u32) -> RgbImage {
    let base: [i32; 3] = std::array::from_fn(|_| rng.random_range(185..=245));
    let top: [i32; 3] =
        std::array::from_fn(|c| (base[c] + rng.random_range(-20..=20)).clamp(170, 255));
    RgbImage::from_fn(size, size, |_, y| {
        let f = y as f32 / size as f32;
        Rgb(std::array::from_fn(|c| {
            (top[c] as f32 * (1.0 - f) + base[c] as f32 * f) as u8
        }))
    })
}

/// One of `xs`, drawn with `rng`.
pub fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}
