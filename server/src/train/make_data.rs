//! `cogvlm make-data`: synthetic scenes in the PEFT layout (`images/<id>.png` + `labels/<id>.json` holding
//! `{"conversations": [{"role": "user", …}, {"role": "assistant", …}]}`), deterministic by seed.
//!
//! Each image is either a scene of one to three coloured shapes on a light background, or a captcha-like
//! string in a built-in bitmap font. Shapes sit in the cells of a 4 × 4 grid (large, one per cell, jittered),
//! which keeps the scenes simple enough for a tiny model to learn on a CPU. Questions and answers follow the
//! real checkpoints' styles: descriptions, colours, shapes, counts, grounding answered with `[[x0,y0,x1,y1]]`
//! boxes in thousandths of the image (zero-padded to three digits, as CogVLM's grounding checkpoints write
//! them), and region questions with a box in them. Each label also carries `"kind"` (the question kind), which
//! `cogvlm eval` groups its accuracy by; PEFT's loader ignores it.

use super::scene::{background, pick, Placed, COLORS, GRID, SHAPES};
use protocol::grounding::{self, Shape};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The question kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Describe,
    Color,
    Shape,
    Count,
    Where,
    Region,
    Captcha,
    /// Which grid cell a shape is in, answered as "Row r, column c." (not in the default mix).
    Cell,
    /// "Is there a red circle?", answered "Yes." or "No." (half each; not in the default mix: the LoRA demo's
    /// new task).
    Exists,
    /// "Where is the red circle?" answered with the shape named before its box, "The red circle [[…]]." (the
    /// grounding checkpoints' caption-with-box style; not in the default mix).
    Named,
    /// "Where is the red object?" answered with its box, asked only when the colour is the scene's own: the
    /// shape question's wording, for a place (not in the default mix).
    Locate,
}

impl Kind {
    pub const DEFAULT: [Kind; 7] = [
        Kind::Describe,
        Kind::Color,
        Kind::Shape,
        Kind::Count,
        Kind::Where,
        Kind::Region,
        Kind::Captcha,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Describe => "describe",
            Kind::Color => "color",
            Kind::Shape => "shape",
            Kind::Count => "count",
            Kind::Where => "where",
            Kind::Region => "region",
            Kind::Captcha => "captcha",
            Kind::Cell => "cell",
            Kind::Exists => "exists",
            Kind::Named => "named",
            Kind::Locate => "locate",
        }
    }

    /// Relative frequency in a mix (grounding gets the most: its answers are the longest to learn).
    fn weight(self) -> u32 {
        match self {
            Kind::Where => 4,
            Kind::Region | Kind::Captcha => 2,
            _ => 3,
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Kind::DEFAULT
            .into_iter()
            .chain([Kind::Cell, Kind::Exists, Kind::Named, Kind::Locate])
            .find(|k| k.as_str() == s)
        .with_context(|| {
            format!(
                "unknown kind {s:?} (expected describe, color, shape, count, where, region, captcha, cell, exists, named or locate)"
            )
        })
    }
}

/// Where the shapes go: `grid` (the first demo's scenes: one per cell of a 4 × 4 grid, square images) or
/// `free` ([`super::free_scene`]: anywhere, any aspect, backgrounds, clutter, blur, outlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Placement {
    #[default]
    Grid,
    Free,
}

pub struct MakeDataArgs {
    pub out: PathBuf,
    pub style: Placement,
    pub seed: u64,
    pub count: usize,
    /// Image side in pixels.
    pub size: u32,
    /// Question kinds to draw from (empty = [`Kind::DEFAULT`]).
    pub kinds: Vec<Kind>,
}

/// A pixel box as CogVLM writes it: `[[x0,y0,x1,y1]]` in thousandths of the image, three digits each.
pub fn box_text(bbox: [u32; 4], size: u32) -> String {
    box_text_wh(bbox, (size, size))
}

/// [`box_text`] for a `(width, height)` image: x in thousandths of the width, y of the height.
pub fn box_text_wh(bbox: [u32; 4], (w, h): (u32, u32)) -> String {
    // Floored, as the bundled demos' data were made (the page rounds a box drawn on it).
    let t = |v: u32, side: u32| (v as u64 * 1000 / side.max(1) as u64).min(999) as u16;
    grounding::format_group(&[Shape::Box([
        t(bbox[0], w),
        t(bbox[1], h),
        t(bbox[2], w),
        t(bbox[3], h),
    ])])
}

fn inside(shape: usize, bbox: [u32; 4], x: u32, y: u32) -> bool {
    let [x0, y0, x1, y1] = bbox;
    let (w, h) = ((x1 - x0) as f32, (y1 - y0) as f32);
    let (px, py) = (x as f32 + 0.5 - x0 as f32, y as f32 + 0.5 - y0 as f32);
    match shape {
        0 => {
            let (dx, dy) = (px / w - 0.5, py / h - 0.5);
            dx * dx + dy * dy <= 0.25
        }
        1 => true,
        // Apex at the top centre, base along the bottom.
        _ => {
            let half = 0.5 * (py / h);
            (px / w - 0.5).abs() <= half
        }
    }
}

fn draw_shape(img: &mut RgbImage, p: &Placed) {
    let [x0, y0, x1, y1] = p.bbox;
    let rgb = COLORS[p.color].1;
    for y in y0..y1 {
        for x in x0..x1 {
            if inside(p.shape, p.bbox, x, y) {
                img.put_pixel(x, y, Rgb(rgb));
            }
        }
    }
}

/// A scene: 1–3 shapes with distinct (colour, shape) pairs in distinct cells, listed in reading order.
pub fn scene(rng: &mut StdRng, size: u32) -> (RgbImage, Vec<Placed>) {
    let mut img = background(rng, size);
    let n = rng.random_range(1..=3);
    let cell = size / GRID;
    let mut cells: Vec<u32> = Vec::new();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut placed = Vec::new();
    while placed.len() < n {
        let c = rng.random_range(0..GRID * GRID);
        let pair = (
            rng.random_range(0..COLORS.len()),
            rng.random_range(0..SHAPES.len()),
        );
        if cells.contains(&c) || pairs.contains(&pair) {
            continue;
        }
        cells.push(c);
        pairs.push(pair);
        let (row, col) = (c / GRID, c % GRID);
        // At least 4/5 of the cell: the cell's own box then overlaps the shape's with IoU ≥ 0.64, so a model that
        // has learnt where the shapes are answers grounding questions usefully before it learns the exact edges.
        let side = rng.random_range(cell * 4 / 5..=cell * 19 / 20);
        let slack = cell - side;
        let x0 = col * cell + rng.random_range(0..=slack);
        let y0 = row * cell + rng.random_range(0..=slack);
        placed.push(Placed {
            color: pair.0,
            shape: pair.1,
            row,
            col,
            bbox: [x0, y0, x0 + side, y0 + side],
        });
    }
    placed.sort_by_key(|p| (p.row, p.col));
    for p in &placed {
        draw_shape(&mut img, p);
    }
    (img, placed)
}

/// "a, b and c".
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// "a red circle", "an orange square".
fn with_article(noun_phrase: &str) -> String {
    let vowel = noun_phrase.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {noun_phrase}", if vowel { "an" } else { "a" })
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A question about `placed` of `kind`, and its answer (`None` when the scene cannot ask it unambiguously).
fn question(
    rng: &mut StdRng,
    kind: Kind,
    placed: &[Placed],
    dims: (u32, u32),
) -> Option<(String, String)> {
    let unique_by =
        |f: &dyn Fn(&Placed) -> usize, v: usize| placed.iter().filter(|p| f(p) == v).count() == 1;
    let target = *pick(rng, placed);
    Some(match kind {
        Kind::Describe => {
            let q = pick(rng, &["What is in the picture?", "Describe the image."]);
            let items: Vec<String> = placed.iter().map(|p| with_article(&p.name())).collect();
            (q.to_string(), format!("{}.", capitalise(&list(&items))))
        }
        Kind::Color => {
            if !unique_by(&|p| p.shape, target.shape) {
                return None;
            }
            let q = format!("What color is the {}?", SHAPES[target.shape]);
            (q, format!("{}.", capitalise(COLORS[target.color].0)))
        }
        Kind::Shape => {
            if !unique_by(&|p| p.color, target.color) {
                return None;
            }
            let q = format!("What shape is the {} object?", COLORS[target.color].0);
            (q, format!("A {}.", SHAPES[target.shape]))
        }
        Kind::Count => count_question(rng, placed),
        Kind::Where => (
            format!("Where is the {}?", target.name()),
            box_text_wh(target.bbox, dims),
        ),
        Kind::Locate => {
            if !unique_by(&|p| p.color, target.color) {
                return None;
            }
            let q = format!("Where is the {} object?", COLORS[target.color].0);
            (q, box_text_wh(target.bbox, dims))
        }
        Kind::Named => (
            format!("Where is the {}?", target.name()),
            format!("The {} {}.", target.name(), box_text_wh(target.bbox, dims)),
        ),
        Kind::Region => (
            format!("What is in the region {}?", box_text_wh(target.bbox, dims)),
            format!("{}.", capitalise(&with_article(&target.name()))),
        ),
        Kind::Cell => (
            format!("Which cell is the {} in?", target.name()),
            format!("Row {}, column {}.", target.row + 1, target.col + 1),
        ),
        Kind::Exists => exists_question(rng, placed, target)?,
        Kind::Captcha => return None,
    })
}

/// "How many shapes are there?", or how many of one shape (which may be none).
fn count_question(rng: &mut StdRng, placed: &[Placed]) -> (String, String) {
    if rng.random_bool(0.5) {
        (
            "How many shapes are there?".into(),
            placed.len().to_string(),
        )
    } else {
        let s = rng.random_range(0..SHAPES.len());
        let n = placed.iter().filter(|p| p.shape == s).count();
        (format!("How many {}s are there?", SHAPES[s]), n.to_string())
    }
}

/// "Is there a red circle?": half the questions name a shape of the scene, half a pair that is not in it
/// (`None` when the drawn pair happens to be there).
fn exists_question(
    rng: &mut StdRng,
    placed: &[Placed],
    target: Placed,
) -> Option<(String, String)> {
    let (color, shape) = if rng.random_bool(0.5) {
        (target.color, target.shape)
    } else {
        let c = rng.random_range(0..COLORS.len());
        let s = rng.random_range(0..SHAPES.len());
        if placed.iter().any(|p| (p.color, p.shape) == (c, s)) {
            return None;
        }
        (c, s)
    };
    let there = placed.iter().any(|p| (p.color, p.shape) == (color, shape));
    Some((
        format!(
            "Is there {}?",
            with_article(&format!("{} {}", COLORS[color].0, SHAPES[shape]))
        ),
        if there { "Yes." } else { "No." }.to_string(),
    ))
}

/// One generated example: image, question, answer, kind.
pub struct Generated {
    pub image: RgbImage,
    pub query: String,
    pub answer: String,
    pub kind: Kind,
    /// How a free scene was drawn (`None` for grid scenes and captchas).
    pub style: Option<super::free_scene::Style>,
}

/// Draws an example of one of `kinds` (weighted by [`Kind::weight`]).
pub fn generate(rng: &mut StdRng, kinds: &[Kind], size: u32) -> Generated {
    generate_styled(rng, kinds, size, Placement::Grid)
}

/// [`generate`] with scenes of `placement`.
pub fn generate_styled(
    rng: &mut StdRng,
    kinds: &[Kind],
    size: u32,
    placement: Placement,
) -> Generated {
    let total: u32 = kinds.iter().map(|k| k.weight()).sum();
    loop {
        let mut x = rng.random_range(0..total);
        let kind = *kinds
            .iter()
            .find(|k| {
                if x < k.weight() {
                    true
                } else {
                    x -= k.weight();
                    false
                }
            })
            .unwrap_or(&kinds[0]);
        if kind == Kind::Captcha {
            let (image, text) = super::captcha::captcha(rng, size);
            let query = pick(rng, &["What text is in the image?", "CAPTCHA:"]).to_string();
            return Generated {
                image,
                query,
                answer: text,
                kind,
                style: None,
            };
        }
        let (image, placed, style) = match placement {
            Placement::Grid => {
                let (image, placed) = scene(rng, size);
                (image, placed, None)
            }
            Placement::Free => {
                let (image, placed, style) = super::free_scene::scene(rng, size);
                (image, placed, Some(style))
            }
        };
        if let Some((query, answer)) = question(rng, kind, &placed, image.dimensions()) {
            return Generated {
                image,
                query,
                answer,
                kind,
                style,
            };
        }
    }
}

/// Writes `count` examples into `out` (a new or empty folder); returns how many of each kind.
pub fn run(args: &MakeDataArgs) -> anyhow::Result<serde_json::Value> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.size < 32 {
        bail!("--size must be at least 32 pixels");
    }
    let out = &args.out;
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose a new folder",
            out.display()
        );
    }
    let (images, labels) = (out.join("images"), out.join("labels"));
    for d in [&images, &labels] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let kinds = if args.kinds.is_empty() {
        Kind::DEFAULT.to_vec()
    } else {
        args.kinds.clone()
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut counts = serde_json::Map::new();
    for i in 0..args.count {
        let g = generate_styled(&mut rng, &kinds, args.size, args.style);
        let stem = format!("{i:06}");
        write_example(&images, &labels, &stem, &g)?;
        let c = counts.entry(g.kind.as_str()).or_insert(json!(0));
        *c = json!(c.as_u64().unwrap_or(0) + 1);
    }
    Ok(json!({"out": out.display().to_string(), "count": args.count, "kinds": counts}))
}

fn write_example(images: &Path, labels: &Path, stem: &str, g: &Generated) -> anyhow::Result<()> {
    let img_path = images.join(format!("{stem}.png"));
    g.image
        .save(&img_path)
        .with_context(|| format!("cannot write {}", img_path.display()))?;
    let mut label = json!({
        "conversations": [
            {"role": "user", "content": g.query},
            {"role": "assistant", "content": g.answer},
        ],
        "kind": g.kind.as_str(),
    });
    if let Some(style) = &g.style {
        label["style"] = style.json();
    }
    let label_path = labels.join(format!("{stem}.json"));
    std::fs::write(&label_path, serde_json::to_string_pretty(&label)?)
        .with_context(|| format!("cannot write {}", label_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data() {
        let a = generate(&mut StdRng::seed_from_u64(7), &Kind::DEFAULT, 224);
        let b = generate(&mut StdRng::seed_from_u64(7), &Kind::DEFAULT, 224);
        assert_eq!(a.image.as_raw(), b.image.as_raw());
        assert_eq!((a.query, a.answer), (b.query, b.answer));
    }

    #[test]
    fn boxes_are_thousandths_and_cover_the_ink() {
        assert_eq!(box_text([0, 56, 112, 224], 224), "[[000,250,500,999]]");
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let (img, placed) = scene(&mut rng, 224);
            for p in &placed {
                let [x0, y0, x1, y1] = p.bbox;
                // The shape's colour is inside its box, and its box lies in its own cell.
                let cell = 224 / GRID;
                assert!(x0 >= p.col * cell && x1 <= (p.col + 1) * cell);
                assert!(y0 >= p.row * cell && y1 <= (p.row + 1) * cell);
                let centre = img.get_pixel((x0 + x1) / 2, (y0 + y1) / 2);
                assert_eq!(centre.0, COLORS[p.color].1);
            }
        }
    }

    /// `named` and `locate` box the shape their question names (`locate` only when its colour is the scene's own).
    #[test]
    fn grounding_answers_box_the_named_shape() {
        let (mut named, mut located) = (0, 0);
        for seed in 0..100 {
            let mut r = StdRng::seed_from_u64(seed);
            let (_, placed) = scene(&mut r, 224);
            if let Some((q, a)) = question(&mut r, Kind::Named, &placed, (224, 224)) {
                let p = placed
                    .iter()
                    .find(|p| q == format!("Where is the {}?", p.name()))
                    .expect("names a shape of the scene");
                assert_eq!(a, format!("The {} {}.", p.name(), box_text(p.bbox, 224)));
                named += 1;
            }
            if let Some((q, a)) = question(&mut r, Kind::Locate, &placed, (224, 224)) {
                let same: Vec<_> = placed
                    .iter()
                    .filter(|p| q == format!("Where is the {} object?", COLORS[p.color].0))
                    .collect();
                assert_eq!(same.len(), 1, "{q} in {placed:?}");
                assert_eq!(a, box_text(same[0].bbox, 224));
                located += 1;
            }
        }
        assert!(
            named == 100 && located > 50,
            "{named} named, {located} located"
        );
    }

    #[test]
    fn answers_follow_the_scene() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..50 {
            let g = generate(&mut rng, &[Kind::Count], 224);
            assert!(g.answer.parse::<usize>().is_ok(), "{}", g.answer);
            let g = generate(&mut rng, &[Kind::Where], 224);
            assert!(g.answer.starts_with("[[") && g.answer.ends_with("]]"));
        }
        let (mut yes, mut no) = (0, 0);
        for seed in 0..200 {
            let mut r = StdRng::seed_from_u64(seed);
            let (_, placed) = scene(&mut r, 224);
            let Some((q, a)) = question(&mut r, Kind::Exists, &placed, (224, 224)) else {
                continue;
            };
            let named = placed
                .iter()
                .any(|p| q == format!("Is there {}?", with_article(&p.name())));
            assert_eq!(a, if named { "Yes." } else { "No." }, "{q} in {placed:?}");
            if named {
                yes += 1
            } else {
                no += 1
            }
        }
        assert!(yes > 50 && no > 50, "{yes} yes, {no} no");
        assert_eq!(with_article("orange circle"), "an orange circle");
        assert_eq!(with_article("red square"), "a red square");
        assert_eq!(
            list(&["a".into(), "b".into(), "c".into()]),
            "a, b and c".to_string()
        );
    }
}
