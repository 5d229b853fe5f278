//! Captcha-like images for make-data: four characters of a 5 × 7 pixel font, scaled and jittered, with noise
//! lines.

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;

use super::scene::{background, pick};

/// 5 × 7 glyphs, one string of rows per character (`#` = ink).
const FONT: &[(char, [&str; 7])] = &[
    (
        '0',
        [
            " ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ",
        ],
    ),
    (
        '1',
        [
            "  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
    ),
    (
        '2',
        [
            " ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####",
        ],
    ),
    (
        '3',
        [
            "#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ",
        ],
    ),
    (
        '4',
        [
            "   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ",
        ],
    ),
    (
        '5',
        [
            "#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ",
        ],
    ),
    (
        '6',
        [
            "  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ",
        ],
    ),
    (
        '7',
        [
            "#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ",
        ],
    ),
    (
        '8',
        [
            " ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ",
        ],
    ),
    (
        '9',
        [
            " ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ",
        ],
    ),
    (
        'A',
        [
            " ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
    ),
    (
        'C',
        [
            " ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### ",
        ],
    ),
    (
        'E',
        [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####",
        ],
    ),
    (
        'H',
        [
            "#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
    ),
    (
        'K',
        [
            "#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #",
        ],
    ),
    (
        'P',
        [
            "#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    ",
        ],
    ),
    (
        'T',
        [
            "#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
    ),
    (
        'X',
        [
            "#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #",
        ],
    ),
];

/// A captcha: four characters of [`FONT`] in dark colours, each scaled and jittered, over a light background
/// with a few noise lines. Returns the image and its text.
pub fn captcha(rng: &mut StdRng, size: u32) -> (RgbImage, String) {
    let mut img = background(rng, size);
    let n = 4u32;
    let text: String = (0..n).map(|_| pick(rng, FONT).0).collect();
    let slot = size / n;
    let scale = (slot * 3 / 4 / 5).max(1);
    for (i, ch) in text.chars().enumerate() {
        let Some((_, rows)) = FONT.iter().find(|(c, _)| *c == ch) else {
            continue;
        };
        let ink = Rgb([
            rng.random_range(0..90),
            rng.random_range(0..90),
            rng.random_range(0..90),
        ]);
        let gw = 5 * scale;
        let gh = 7 * scale;
        let x0 = i as u32 * slot + rng.random_range(0..=slot.saturating_sub(gw));
        let y0 = ((size.saturating_sub(gh)) / 2 + rng.random_range(0..=size / 8))
            .saturating_sub(size / 16);
        for (r, row) in rows.iter().enumerate() {
            for (c, b) in row.bytes().enumerate() {
                if b != b'#' {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (x0 + c as u32 * scale + dx, y0 + r as u32 * scale + dy);
                        if x < size && y < size {
                            img.put_pixel(x, y, ink);
                        }
                    }
                }
            }
        }
    }
    // Thin noise lines.
    for _ in 0..3 {
        let (ya, yb) = (rng.random_range(0..size), rng.random_range(0..size));
        let grey = rng.random_range(90..160) as u8;
        for x in 0..size {
            let y = ya as i64 + (yb as i64 - ya as i64) * x as i64 / size as i64;
            img.put_pixel(x, y as u32, Rgb([grey, grey, grey]));
        }
    }
    (img, text)
}
