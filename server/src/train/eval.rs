//! `cogvlm eval`: greedy answers of a checkpoint (optionally with an adapter) on a data folder, scored as the
//! THUDM demos score them: exact match and case-insensitive match of the whole answer; and, for answers that
//! hold `[[x0,y0,x1,y1]]` boxes, the share whose every expected box is met by an answered box with IoU ≥ 0.5.
//! Each example's (image, query, expected, got) goes to a JSONL file; the summary (overall and per label
//! `"kind"`, and per `"style"` facet where labels have one) is printed as the last line.

use protocol::grounding::{self, Shape};
use protocol::Sampling;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::data;
use crate::generate::{ChatRequest, LoadOptions, Pipeline};
use protocol::PromptVersion;

pub struct EvalArgs {
    pub model: PathBuf,
    pub data: PathBuf,
    pub load: LoadOptions,
    pub version: Option<PromptVersion>,
    /// The per-example JSONL (default: `eval.jsonl` in the data folder).
    pub out: Option<PathBuf>,
    /// At most this many examples (0 = all).
    pub limit: usize,
    pub max_new_tokens: usize,
}

/// Every `[[x0,y0,x1,y1]]` box in `text` as the page reads it ([`protocol::grounding::parse`]: `;`-separated
/// boxes in one group count one by one; points and groups that are not numbers in 0–999 are skipped).
pub fn boxes(text: &str) -> Vec<[f64; 4]> {
    grounding::parse(text)
        .into_iter()
        .flat_map(|g| g.shapes)
        .filter_map(|s| match s {
            Shape::Box(b) => Some(b.map(f64::from)),
            Shape::Point(_) => None,
        })
        .collect()
}

pub fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Whether every expected box is met by some answered box with IoU ≥ 0.5 (`None` when none is expected).
pub fn boxes_hit(expected: &str, got: &str) -> Option<bool> {
    let want = boxes(expected);
    if want.is_empty() {
        return None;
    }
    let have = boxes(got);
    Some(want.iter().all(|w| have.iter().any(|h| iou(*w, *h) >= 0.5)))
}

#[derive(Default, Clone, Copy)]
struct Tally {
    n: usize,
    exact: usize,
    exact_ci: usize,
    box_n: usize,
    box_hit: usize,
}

impl Tally {
    fn add(&mut self, exact: bool, ci: bool, hit: Option<bool>) {
        self.n += 1;
        self.exact += exact as usize;
        self.exact_ci += ci as usize;
        if let Some(h) = hit {
            self.box_n += 1;
            self.box_hit += h as usize;
        }
    }

    fn json(&self) -> serde_json::Value {
        let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut v = json!({"n": self.n, "exact": share(self.exact, self.n),
            "exact_ci": share(self.exact_ci, self.n)});
        if self.box_n > 0 {
            v["boxes"] = json!(self.box_n);
            v["iou50"] = json!(share(self.box_hit, self.box_n));
        }
        v
    }
}

/// The checkpoint's greedy answer (at most `--max-new-tokens`) to `query` about the example's image.
fn greedy_answer(
    pipe: &mut Pipeline,
    args: &EvalArgs,
    ex: &data::Example,
    history: Vec<(String, String)>,
    query: &str,
) -> anyhow::Result<String> {
    let image =
        image::open(&ex.image).with_context(|| format!("cannot read {}", ex.image.display()))?;
    let req = ChatRequest {
        image: Some(image),
        history,
        query: query.to_string(),
        version: args.version,
        sampling: Sampling {
            max_new_tokens: Some(args.max_new_tokens),
            ..Sampling::greedy()
        },
    };
    Ok(pipe
        .generate(&req, &mut |_| true)
        .with_context(|| format!("example {}", ex.image.display()))?
        .text)
}

/// Runs the evaluation; returns the summary (also printed as the last line).
pub fn run(args: &EvalArgs) -> anyhow::Result<serde_json::Value> {
    let (_, mut examples) = data::load(&args.data)?;
    if args.limit > 0 {
        examples.truncate(args.limit);
    }
    let mut pipe = Pipeline::load(&args.model, &args.load, &mut |_, _| {})?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.data.join("eval.jsonl"));
    let mut file =
        std::fs::File::create(&out).with_context(|| format!("cannot write {}", out.display()))?;
    let started = Instant::now();
    let mut all = Tally::default();
    let mut kinds: BTreeMap<String, Tally> = BTreeMap::new();
    // Per style facet value ("background=coloured"), and per kind within it ("background=coloured/shape").
    let mut styles: BTreeMap<String, Tally> = BTreeMap::new();
    for (i, ex) in examples.iter().enumerate() {
        let last = ex.rounds.len() - 1;
        let (history, query, expected) = ex.round(last);
        let got = greedy_answer(&mut pipe, args, ex, history, query)?;
        let got = got.trim();
        let exact = got == expected.trim();
        let ci = got.to_lowercase() == expected.trim().to_lowercase();
        let hit = boxes_hit(expected, got);
        all.add(exact, ci, hit);
        if let Some(k) = &ex.kind {
            kinds.entry(k.clone()).or_default().add(exact, ci, hit);
        }
        for facet in &ex.style {
            styles.entry(facet.clone()).or_default().add(exact, ci, hit);
            if let Some(k) = &ex.kind {
                let key = format!("{facet}/{k}");
                styles.entry(key).or_default().add(exact, ci, hit);
            }
        }
        let mut line = json!({"image": ex.image.display().to_string(), "query": query,
            "expected": expected, "got": got, "exact": exact});
        if let Some(h) = hit {
            line["iou50"] = json!(h);
        }
        writeln!(file, "{line}")?;
        eprint!(
            "\r{}/{} exact {:.3}",
            i + 1,
            examples.len(),
            all.exact as f64 / all.n as f64
        );
    }
    eprintln!();
    let mut summary = all.json();
    summary["model"] = json!(args.model.display().to_string());
    if let Some(l) = &args.load.lora {
        summary["lora"] = json!(l.display().to_string());
    }
    summary["data"] = json!(args.data.display().to_string());
    summary["jsonl"] = json!(out.display().to_string());
    summary["seconds"] = json!(started.elapsed().as_secs_f64());
    if !kinds.is_empty() {
        summary["kinds"] = kinds.iter().map(|(k, t)| (k.clone(), t.json())).collect();
    }
    if !styles.is_empty() {
        summary["styles"] = styles.iter().map(|(k, t)| (k.clone(), t.json())).collect();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_parse_and_score() {
        assert_eq!(
            boxes("The cat [[010,020,500,600]] and [[1,2,3,4;5,6,7,8]]"),
            vec![
                [10.0, 20.0, 500.0, 600.0],
                [1.0, 2.0, 3.0, 4.0],
                [5.0, 6.0, 7.0, 8.0]
            ]
        );
        assert!(boxes("no boxes [[1,2]]").is_empty());
        assert!((iou([0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(boxes_hit("[[0,0,100,100]]", "[[0,0,90,100]]"), Some(true));
        assert_eq!(
            boxes_hit("[[0,0,100,100]]", "[[50,50,150,150]]"),
            Some(false)
        );
        assert_eq!(boxes_hit("[[0,0,100,100]]", "a circle"), Some(false));
        assert_eq!(boxes_hit("Red.", "Red."), None);
    }
}
