//! `cogvlm position-probe`: how much the vision tower's output depends on where a shape is.
//!
//! All image tokens share one RoPE position in CogVLM, so what the decoder knows of where a patch lies comes
//! from the tower (its position embedding) and from the image tokens' order. The probe draws one square in
//! each cell of a 4 × 4 grid, in two colours, and compares the vector of the patch under the square: between
//! cells for one colour, and between colours for one cell. A cosine near 1 between cells means the tower has
//! (almost) nothing to tell the cells apart with.

use crate::model::preprocess::pixel_values;
use crate::model::CogVlm;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;

/// Cosines between the patch vectors under the square (the mean over pairs).
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The mean norm of the ViT's patch vectors.
    pub vit_norm: f32,
    /// Same colour, another cell: near 1 when the ViT output ignores position.
    pub vit_cos_other_cell: f32,
    /// Same cell, another colour: how much content moves it, for scale.
    pub vit_cos_other_colour: f32,
    /// The same after the GLU adapter (what the decoder receives).
    pub adapter_cos_other_cell: f32,
    pub adapter_cos_other_colour: f32,
    /// The same four after subtracting the mean of all the probe's vectors at that stage: a shared offset
    /// (a large common bias) pushes the plain cosines towards 1 without losing what tells cells apart; these
    /// stay low then, and go to 1 only when the differences themselves are gone.
    pub vit_centred_other_cell: f32,
    pub vit_centred_other_colour: f32,
    pub adapter_centred_other_cell: f32,
    pub adapter_centred_other_colour: f32,
}

const GRID: u32 = 4;
const COLOURS: [[u8; 3]; 2] = [[220, 40, 40], [40, 40, 220]];

/// Runs the probe on the checkpoint in `dir` (f32 on `device`).
pub fn run(dir: &Path, device: &Device) -> Result<ProbeReport> {
    let model = super::load_model(dir, device, false, None)?.model;
    probe(&model, device)
}

/// Runs the probe on a built model.
pub fn probe(model: &CogVlm, device: &Device) -> Result<ProbeReport> {
    let v = &model.cfg.vision_config;
    let side = v.image_size / v.patch_size;
    ensure!(
        side.is_multiple_of(GRID as usize),
        "the probe needs a patch grid that is a multiple of {GRID} (this tower has {side} × {side} patches)"
    );
    // One patch under the middle of each cell: the square covers it whole.
    let per_cell = side / GRID as usize;
    let patch_of = |cell: u32| {
        let (r, c) = ((cell / GRID) as usize, (cell % GRID) as usize);
        (r * per_cell + per_cell / 2) * side + c * per_cell + per_cell / 2
    };
    let (mut vit, mut adapter) = (Vec::new(), Vec::new());
    for colour in COLOURS {
        for cell in 0..GRID * GRID {
            let px = pixel_values(&scene(cell, colour), v.image_size, device)?;
            let patch = patch_of(cell);
            // The ViT output starts with CLS; the adapter's with BOI.
            vit.push(row(&model.vit_output(&px)?, 1 + patch)?);
            adapter.push(row(&model.encode_image(&px)?, 1 + patch)?);
        }
    }
    let n = (GRID * GRID) as usize;
    let (vit_cell, vit_colour) = cosines(&vit, n);
    let (ad_cell, ad_colour) = cosines(&adapter, n);
    let (vit_c_cell, vit_c_colour) = cosines(&centred(&vit), n);
    let (ad_c_cell, ad_c_colour) = cosines(&centred(&adapter), n);
    Ok(ProbeReport {
        vit_norm: vit.iter().map(|f| norm(f)).sum::<f32>() / vit.len() as f32,
        vit_cos_other_cell: vit_cell,
        vit_cos_other_colour: vit_colour,
        adapter_cos_other_cell: ad_cell,
        adapter_cos_other_colour: ad_colour,
        vit_centred_other_cell: vit_c_cell,
        vit_centred_other_colour: vit_c_colour,
        adapter_centred_other_cell: ad_c_cell,
        adapter_centred_other_colour: ad_c_colour,
    })
}

/// A light background with one square filling most of `cell`, 224 px.
fn scene(cell: u32, colour: [u8; 3]) -> image::DynamicImage {
    let size = 224;
    let step = size / GRID;
    let (r, c) = (cell / GRID, cell % GRID);
    let mut img = image::RgbImage::from_pixel(size, size, image::Rgb([235, 235, 225]));
    for y in r * step + step / 10..(r + 1) * step - step / 10 {
        for x in c * step + step / 10..(c + 1) * step - step / 10 {
            img.put_pixel(x, y, image::Rgb(colour));
        }
    }
    image::DynamicImage::ImageRgb8(img)
}

/// Row `i` of the first item of `[1, n, h]`, in f32.
fn row(t: &Tensor, i: usize) -> Result<Vec<f32>> {
    Ok(t.get(0)?
        .get(i)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?)
}

fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}

/// `v` less its mean vector.
fn centred(v: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let dim = v.first().map_or(0, Vec::len);
    let mut mean = vec![0.0f32; dim];
    for x in v {
        for (m, a) in mean.iter_mut().zip(x) {
            *m += a / v.len() as f32;
        }
    }
    v.iter()
        .map(|x| x.iter().zip(&mean).map(|(a, m)| a - m).collect())
        .collect()
}

/// (mean cosine between cells of one colour, mean cosine between the colours of one cell) over `v`: the
/// first colour's `n` vectors, then the second's.
fn cosines(v: &[Vec<f32>], n: usize) -> (f32, f32) {
    let mut cells = Vec::new();
    for colour in 0..2 {
        for i in 0..n {
            for j in i + 1..n {
                cells.push(cos(&v[colour * n + i], &v[colour * n + j]));
            }
        }
    }
    let colours: Vec<f32> = (0..n).map(|i| cos(&v[i], &v[n + i])).collect();
    let mean = |x: &[f32]| x.iter().sum::<f32>() / x.len() as f32;
    (mean(&cells), mean(&colours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosines_pair_cells_within_a_colour_and_colours_within_a_cell() {
        // Two cells, two colours: cell vectors differ by axis, colours by sign.
        let v = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![-1.0, 0.0],
            vec![0.0, -1.0],
        ];
        let (cells, colours) = cosines(&v, 2);
        assert!(cells.abs() < 1e-6, "{cells}");
        assert!((colours + 1.0).abs() < 1e-6, "{colours}");
    }

    #[test]
    fn centring_removes_a_shared_offset() {
        // The same four vectors far from the origin: plain cosines near 1, centred ones as before.
        let v: Vec<Vec<f32>> = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
            .iter()
            .map(|p| vec![p[0] + 100.0, p[1] + 100.0])
            .collect();
        assert!(cosines(&v, 2).0 > 0.99);
        let (cells, colours) = cosines(&centred(&v), 2);
        assert!(cells.abs() < 1e-6, "{cells}");
        assert!((colours + 1.0).abs() < 1e-6, "{colours}");
    }
}
