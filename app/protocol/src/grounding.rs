//! Grounding coordinates in CogVLM / CogAgent text.
//!
//! The models write regions as `[[x0,y0,x1,y1]]` boxes and `[[x,y]]` points, in thousandths
//! (0–999) of the original image's width and height, several of them `;`-separated inside one
//! group: `[[x0,y0,x1,y1;x0,y0,x1,y1]]`. Questions use the same format ("what is in
//! [[086,540,400,760]]?").
//!
//! This is the one parser and formatter of that format: the page's (drawing, the task pickers, the
//! stored conversations), the evaluation's and the synthetic data's. Coordinates are kept as the
//! model wrote them and converted to pixels only at the view ([`to_px`]). It never panics: a group
//! that is not exactly numbers in range is ordinary text.

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Coordinates are thousandths: valid values are `0..=MAX_COORD`.
pub const MAX_COORD: u16 = 999;
/// The divisor that maps a coordinate to a fraction of the image side.
pub const SCALE: f64 = 1000.0;

/// One region inside a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// `[x0, y0, x1, y1]`, normalised so that `x0 <= x1` and `y0 <= y1`.
    Box([u16; 4]),
    /// `[x, y]`.
    Point([u16; 2]),
}

/// One `[[...]]` group found in a text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grounding {
    /// Byte range of the whole group, brackets included, in the parsed text.
    pub span: Range<usize>,
    /// The regions of the group, in order (at least one).
    pub shapes: Vec<Shape>,
    /// The phrase the group refers to (the words just before it), if any.
    pub label: Option<String>,
}

/// Finds every well-formed grounding group in `text`, in order.
///
/// A group is `[[` + one or more `;`-separated entries + `]]`, where an entry is 2 (point) or
/// 4 (box) comma-separated decimal numbers in `0..=999` (spaces and tabs allowed around them,
/// no line breaks). Anything else, e.g. `[[1000,2,3,4]]`, `[[1,2,3]]` or an unclosed `[[1,2`, is
/// left as text. While a text is streaming only closed groups are found.
pub fn parse(text: &str) -> Vec<Grounding> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // Where the label of the next group may start: after the previous group.
    let mut label_floor = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'[' || bytes[i + 1] != b'[' {
            i += 1;
            continue;
        }
        let body_start = i + 2;
        let Some(rel_end) = text[body_start..].find("]]") else {
            break; // no closing brackets anywhere after this point
        };
        let body_end = body_start + rel_end;
        match parse_body(&text[body_start..body_end]) {
            Some(shapes) => {
                let span = i..body_end + 2;
                let label = label_before(&text[label_floor..i]);
                label_floor = span.end;
                i = span.end;
                out.push(Grounding {
                    span,
                    shapes,
                    label,
                });
            }
            // Not a group: it may still start one byte later (`[[[1,2]]`).
            None => i += 1,
        }
    }
    out
}

fn parse_body(body: &str) -> Option<Vec<Shape>> {
    if body.is_empty() || body.len() > 512 {
        return None;
    }
    let mut shapes = Vec::new();
    for entry in body.split(';') {
        let mut nums = [0u16; 4];
        let mut n = 0;
        for part in entry.split(',') {
            if n == 4 {
                return None;
            }
            nums[n] = parse_coord(part)?;
            n += 1;
        }
        shapes.push(match n {
            2 => Shape::Point([nums[0], nums[1]]),
            4 => {
                let [a, b, c, d] = nums;
                Shape::Box([a.min(c), b.min(d), a.max(c), b.max(d)])
            }
            _ => return None,
        });
    }
    Some(shapes)
}

fn parse_coord(part: &str) -> Option<u16> {
    let digits = part.trim_matches(|c| c == ' ' || c == '\t');
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u16 = digits.parse().ok()?;
    (value <= MAX_COORD).then_some(value)
}

/// Words that do not name the object ("there is a cat" → "cat").
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "there", "at", "in", "on", "of", "and", "with",
    "its", "it", "this", "that", "these", "those", "to", "by",
];

/// The phrase just before a group: up to three words back to the last punctuation, minus
/// leading stop words. `None` when nothing is left.
fn label_before(prefix: &str) -> Option<String> {
    let clause_start = prefix
        .rfind(|c: char| ".!?;:,()[]{}\n。，；：！？".contains(c))
        .map(|p| p + prefix[p..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(0);
    let clause = prefix[clause_start..].trim();
    let words: Vec<&str> = clause.split_whitespace().collect();
    let mut tail = &words[words.len().saturating_sub(3)..];
    while let Some((first, rest)) = tail.split_first() {
        if STOP_WORDS.contains(&first.to_lowercase().as_str()) {
            tail = rest;
        } else {
            break;
        }
    }
    let label = tail.join(" ");
    let label: String = label.trim_matches(|c: char| !c.is_alphanumeric()).into();
    if label.is_empty() {
        return None;
    }
    // Keep the end of long runs (e.g. CJK text without spaces).
    let count = label.chars().count();
    Some(if count > 24 {
        label.chars().skip(count - 24).collect()
    } else {
        label
    })
}

/// A rectangle in rendered pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// Maps a shape to pixels of an image rendered `width` × `height`. A point becomes a
/// zero-sized rectangle at its position.
pub fn to_px(shape: &Shape, width: f64, height: f64) -> Rect {
    let sx = |v: u16| f64::from(v) / SCALE * width;
    let sy = |v: u16| f64::from(v) / SCALE * height;
    match *shape {
        Shape::Box([x0, y0, x1, y1]) => Rect {
            x: sx(x0),
            y: sy(y0),
            w: sx(x1) - sx(x0),
            h: sy(y1) - sy(y0),
        },
        Shape::Point([x, y]) => Rect {
            x: sx(x),
            y: sy(y),
            w: 0.0,
            h: 0.0,
        },
    }
}

/// Maps a pixel offset along a displayed side of `side` pixels to thousandths, the way the
/// models write them (relative coordinate × 1000, 000–999, as THUDM's README describes). Rounding (not flooring)
/// makes [`to_px`] and this function exact inverses for every coordinate; the far edge (1000)
/// and anything outside the image clamp into `0..=999`.
pub fn to_thousandths(px: f64, side: f64) -> u16 {
    if side.is_nan() || side <= 0.0 || !px.is_finite() {
        return 0;
    }
    (px / side * SCALE).round().clamp(0.0, f64::from(MAX_COORD)) as u16
}

/// A box dragged from `(x0, y0)` to `(x1, y1)` (pixels, either direction) over an image
/// displayed `width` × `height`.
pub fn box_from_px(x0: f64, y0: f64, x1: f64, y1: f64, width: f64, height: f64) -> Shape {
    let (a, c) = (to_thousandths(x0, width), to_thousandths(x1, width));
    let (b, d) = (to_thousandths(y0, height), to_thousandths(y1, height));
    Shape::Box([a.min(c), b.min(d), a.max(c), b.max(d)])
}

/// One shape's coordinates as the models write them: three-digit, zero-padded.
fn coords(shape: &Shape) -> String {
    let nums: &[u16] = match shape {
        Shape::Box(b) => b,
        Shape::Point(p) => p,
    };
    nums.iter()
        .map(|n| format!("{n:03}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A group as text: `[[086,540,400,760]]`, or `[[…;…]]` for several shapes.
pub fn format_group(shapes: &[Shape]) -> String {
    let body: Vec<String> = shapes.iter().map(coords).collect();
    format!("[[{}]]", body.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(text: &str) -> Vec<Vec<Shape>> {
        parse(text).into_iter().map(|g| g.shapes).collect()
    }

    #[test]
    fn single_box_with_span_and_label() {
        let text = "There is a cat[[120,300,560,910]] on the sofa.";
        let g = parse(text);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].shapes, vec![Shape::Box([120, 300, 560, 910])]);
        assert_eq!(&text[g[0].span.clone()], "[[120,300,560,910]]");
        assert_eq!(g[0].label.as_deref(), Some("cat"));
    }

    #[test]
    fn leading_zeros_and_question_region() {
        let text =
            "Tell me what you see within the designated area [[086,540,400,760]] in the picture.";
        let g = parse(text);
        assert_eq!(g[0].shapes, vec![Shape::Box([86, 540, 400, 760])]);
        assert_eq!(g[0].label.as_deref(), Some("designated area"));
    }

    #[test]
    fn semicolon_lists_and_points() {
        assert_eq!(
            shapes("two dogs [[10,20,30,40;50,60,70,80]] and a tap at [[500,501]]"),
            vec![
                vec![Shape::Box([10, 20, 30, 40]), Shape::Box([50, 60, 70, 80])],
                vec![Shape::Point([500, 501])],
            ]
        );
        assert_eq!(
            shapes("[[1,2;3,4,5,6]]"),
            vec![vec![Shape::Point([1, 2]), Shape::Box([3, 4, 5, 6])]]
        );
    }

    #[test]
    fn spaces_allowed_and_boxes_normalised() {
        assert_eq!(
            shapes("[[ 900, 800 ,100,\t200 ]]"),
            vec![vec![Shape::Box([100, 200, 900, 800])]]
        );
    }

    #[test]
    fn malformed_groups_are_text_and_never_panic() {
        for bad in [
            "[[1000,2,3,4]]",
            "[[1,2,3]]",
            "[[1,2,3,4,5]]",
            "[[]]",
            "[[,]]",
            "[[1,,2]]",
            "[[1;2]]",
            "[[a,b]]",
            "[[-1,2]]",
            "[[1.5,2]]",
            "[[12345,1]]",
            "[[1,2,\n3,4]]",
            "[[1,2",
            "[[",
            "[",
            "]]",
            "",
            "[[99999999999999999999,1]]",
            "[[1,2;]]",
        ] {
            assert!(parse(bad).is_empty(), "{bad:?} parsed as a grounding");
        }
    }

    #[test]
    fn extra_brackets_around_a_group() {
        let text = "[[12,34]]]";
        let g = parse(text);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].shapes, vec![Shape::Point([12, 34])]);
        assert_eq!(g[0].span, 0..9);

        let text = "x [[[1,2,3,4]] y";
        let g = parse(text);
        assert_eq!(g.len(), 1);
        assert_eq!(&text[g[0].span.clone()], "[[1,2,3,4]]");
    }

    #[test]
    fn a_bad_group_does_not_hide_a_good_one() {
        let text = "[[1000,2,3,4]] then [[1,2,3,4]]";
        let g = parse(text);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].shapes, vec![Shape::Box([1, 2, 3, 4])]);
    }

    #[test]
    fn unclosed_group_while_streaming() {
        assert_eq!(
            shapes("a cat [[1,2,3,4]] and a dog [[5,6,7"),
            vec![vec![Shape::Box([1, 2, 3, 4])]]
        );
    }

    #[test]
    fn multibyte_text_around_groups() {
        let text = "猫在这里[[100,200,300,400]]，狗在那里[[1,2]]。";
        let g = parse(text);
        assert_eq!(g.len(), 2);
        assert_eq!(&text[g[1].span.clone()], "[[1,2]]");
        assert_eq!(g[0].label.as_deref(), Some("猫在这里"));
        assert_eq!(g[1].label.as_deref(), Some("狗在那里"));
    }

    #[test]
    fn labels_stop_at_the_previous_group_and_punctuation() {
        let g = parse("The cup[[1,2,3,4]][[5,6,7,8]]. Saucer: [[9,9,9,9]]");
        assert_eq!(g[0].label.as_deref(), Some("cup"));
        assert_eq!(g[1].label, None);
        assert_eq!(g[2].label, None);
        let g = parse("a big black cat sitting [[1,2,3,4]]");
        assert_eq!(g[0].label.as_deref(), Some("black cat sitting"));
    }

    #[test]
    fn pixels() {
        let r = to_px(&Shape::Box([100, 250, 600, 750]), 500.0, 200.0);
        assert_eq!(
            r,
            Rect {
                x: 50.0,
                y: 50.0,
                w: 250.0,
                h: 100.0
            }
        );
        let p = to_px(&Shape::Point([999, 0]), 1000.0, 10.0);
        assert_eq!((p.x, p.y, p.w, p.h), (999.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn thousandths_round_at_both_edges() {
        // A 600 × 400 image (non-square): the same fraction gives the same thousandths on
        // both axes, whatever the side.
        assert_eq!(to_thousandths(0.0, 600.0), 0);
        assert_eq!(to_thousandths(0.29, 600.0), 0); // 0.48 thousandths
        assert_eq!(to_thousandths(0.31, 600.0), 1); // 0.52
        assert_eq!(to_thousandths(599.0, 600.0), 998); // 998.33
        assert_eq!(to_thousandths(599.5, 600.0), 999); // 999.17
        assert_eq!(to_thousandths(600.0, 600.0), 999); // the far edge (1000) clamps
        assert_eq!(to_thousandths(800.0, 600.0), 999); // dragged past the image
        assert_eq!(to_thousandths(-5.0, 600.0), 0);
        assert_eq!(to_thousandths(200.0, 400.0), 500);
        assert_eq!(to_thousandths(200.0, 600.0), 333);
        assert_eq!(to_thousandths(f64::NAN, 600.0), 0);
        assert_eq!(to_thousandths(10.0, 0.0), 0);
    }

    #[test]
    fn thousandths_invert_to_px_on_a_non_square_image() {
        for (w, h) in [(600.0, 400.0), (451.0, 300.0), (37.0, 1013.0)] {
            for v in 0..=MAX_COORD {
                let r = to_px(&Shape::Box([v, v, v, v]), w, h);
                assert_eq!((to_thousandths(r.x, w), to_thousandths(r.y, h)), (v, v));
            }
        }
    }

    #[test]
    fn dragged_boxes_are_normalised_and_formatted() {
        // Dragged right-to-left and bottom-to-top over 600 × 400 pixels.
        let b = box_from_px(300.0, 304.0, 51.6, 216.0, 600.0, 400.0);
        assert_eq!(b, Shape::Box([86, 540, 500, 760]));
        assert_eq!(format_group(&[b]), "[[086,540,500,760]]");
        assert_eq!(
            format_group(&[Shape::Box([0, 5, 999, 40]), Shape::Point([7, 999])]),
            "[[000,005,999,040;007,999]]"
        );
        // What is written parses back to the same shapes.
        let text = format!("what is in {}?", format_group(&[b]));
        assert_eq!(parse(&text)[0].shapes, vec![b]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap fuzz: every short string over a small alphabet.
        let alphabet = ['[', ']', '1', ',', ';', ' ', 'é', '9', '0'];
        let mut buf = String::new();
        fn rec(buf: &mut String, depth: usize, alphabet: &[char]) {
            let _ = parse(buf);
            if depth == 0 {
                return;
            }
            for &c in alphabet {
                buf.push(c);
                rec(buf, depth - 1, alphabet);
                buf.pop();
            }
        }
        rec(&mut buf, 6, &alphabet);
    }
}
