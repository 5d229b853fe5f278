//! Training data in THUDM's two layouts, detected from the folder:
//!
//! - PEFT (`finetune_hf_peft_demo`): `images/<stem>.*` and `labels/<stem>.json` holding
//!   `{"conversations": [{"role": "user", "content": …}, {"role": "assistant", "content": …}, …]}`; a
//!   multi-round label gives one example whose round is sampled per use, earlier rounds as history;
//! - SAT (`finetune_demo`): `images/<stem>.{png,jpg}` with `labels/<stem>.json` holding
//!   `captions[0].content` (prompt `This image can be best described as:`), or with no `labels/` at all, the
//!   label in the file name (prompt `CAPTCHA:`; a `_suffix` after the label is dropped).
//!
//! Every error names the file at fault.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

/// Which layout a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Peft,
    SatCaptions,
    SatFileNames,
}

/// One question–answer round.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub query: String,
    pub answer: String,
}

/// One image with its rounds.
#[derive(Debug, Clone)]
pub struct Example {
    pub image: PathBuf,
    pub rounds: Vec<Round>,
    /// The label's `"kind"` (from `cogvlm make-data`), for per-kind accuracy.
    pub kind: Option<String>,
    /// The label's `"style"` facets as `facet=value` (from `make-data --style free`, or a test set drawn
    /// by other code), for per-style accuracy.
    pub style: Vec<String>,
}

impl Example {
    /// Round `i`'s (history, query, answer).
    pub fn round(&self, i: usize) -> (Vec<(String, String)>, &str, &str) {
        let history = self.rounds[..i]
            .iter()
            .map(|r| (r.query.clone(), r.answer.clone()))
            .collect();
        let r = &self.rounds[i];
        (history, &r.query, &r.answer)
    }
}

pub const SAT_CAPTION_PROMPT: &str = "This image can be best described as:";
pub const SAT_CAPTCHA_PROMPT: &str = "CAPTCHA:";

const IMAGE_EXTS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn images_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let images = dir.join("images");
    let rd = std::fs::read_dir(&images).with_context(|| {
        format!(
            "cannot read {} (a data folder holds images/ and, except for SAT's captcha layout, labels/)",
            images.display()
        )
    })?;
    let mut out = Vec::new();
    for e in rd {
        let p = e?.path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if ext.is_some_and(|e| IMAGE_EXTS.contains(&e.as_str())) {
            out.push(p);
        }
    }
    out.sort();
    ensure!(!out.is_empty(), "{} holds no images", images.display());
    Ok(out)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_json(p: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
}

/// Detects the layout of `dir` from its first label (or its absence).
pub fn detect(dir: &Path) -> anyhow::Result<Layout> {
    let labels = dir.join("labels");
    if !labels.is_dir() {
        return Ok(Layout::SatFileNames);
    }
    let first = images_in(dir)?
        .into_iter()
        .map(|img| labels.join(format!("{}.json", stem(&img))))
        .next()
        .context("no images")?;
    let v = read_json(&first)?;
    if v.get("conversations").is_some() {
        Ok(Layout::Peft)
    } else if v.get("captions").is_some() {
        Ok(Layout::SatCaptions)
    } else {
        bail!(
            "{}: neither PEFT's \"conversations\" nor SAT's \"captions\"",
            first.display()
        )
    }
}

fn peft_rounds(v: &Value, p: &Path) -> anyhow::Result<Vec<Round>> {
    let conv = v
        .get("conversations")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: \"conversations\" is not a list", p.display()))?;
    let mut rounds = Vec::new();
    let mut query: Option<String> = None;
    for (i, turn) in conv.iter().enumerate() {
        let role = turn.get("role").and_then(Value::as_str);
        let content = turn
            .get("content")
            .and_then(Value::as_str)
            .with_context(|| {
                format!(
                    "{}: conversations[{i}] has no string \"content\"",
                    p.display()
                )
            })?;
        match (role, query.take()) {
            (Some("user"), None) => query = Some(content.to_string()),
            (Some("assistant"), Some(q)) => rounds.push(Round {
                query: q,
                answer: content.to_string(),
            }),
            (r, _) => bail!(
                "{}: conversations[{i}] has role {r:?}; expected user and assistant turns alternating",
                p.display()
            ),
        }
    }
    ensure!(
        query.is_none(),
        "{}: the last user turn has no assistant answer",
        p.display()
    );
    ensure!(
        !rounds.is_empty(),
        "{}: no user/assistant round",
        p.display()
    );
    Ok(rounds)
}

/// Every example of `dir`.
pub fn load(dir: &Path) -> anyhow::Result<(Layout, Vec<Example>)> {
    let layout = detect(dir)?;
    let mut out = Vec::new();
    for image in images_in(dir)? {
        let s = stem(&image);
        let label = dir.join("labels").join(format!("{s}.json"));
        let mut style = Vec::new();
        let (rounds, kind) = match layout {
            Layout::SatFileNames => {
                let text = s.split('_').next().unwrap_or(&s).to_string();
                ensure!(
                    !text.is_empty(),
                    "{}: empty label in the file name",
                    image.display()
                );
                (
                    vec![Round {
                        query: SAT_CAPTCHA_PROMPT.into(),
                        answer: text,
                    }],
                    None,
                )
            }
            Layout::SatCaptions => {
                let v = read_json(&label)?;
                let caption = v
                    .pointer("/captions/0/content")
                    .and_then(Value::as_str)
                    .with_context(|| format!("{}: no captions[0].content", label.display()))?;
                (
                    vec![Round {
                        query: SAT_CAPTION_PROMPT.into(),
                        answer: caption.to_string(),
                    }],
                    None,
                )
            }
            Layout::Peft => {
                let v = read_json(&label)?;
                let kind = v.get("kind").and_then(Value::as_str).map(str::to_string);
                if let Some(facets) = v.get("style").and_then(Value::as_object) {
                    style = facets
                        .iter()
                        .map(|(k, v)| {
                            format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string))
                        })
                        .collect();
                }
                (peft_rounds(&v, &label)?, kind)
            }
        };
        out.push(Example {
            image,
            rounds,
            kind,
            style,
        });
    }
    Ok((layout, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cogvlm-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("images")).unwrap();
        d
    }

    fn png(p: &Path) {
        image::RgbImage::new(4, 4).save(p).unwrap();
    }

    #[test]
    fn detects_all_three_layouts() {
        let d = tmp("sat");
        png(&d.join("images/AB12.png"));
        let (l, ex) = load(&d).unwrap();
        assert_eq!(l, Layout::SatFileNames);
        assert_eq!(ex[0].rounds[0].answer, "AB12");
        assert_eq!(ex[0].rounds[0].query, SAT_CAPTCHA_PROMPT);

        let d = tmp("cap");
        std::fs::create_dir_all(d.join("labels")).unwrap();
        png(&d.join("images/x.png"));
        std::fs::write(
            d.join("labels/x.json"),
            r#"{"captions":[{"content":"a cat"}]}"#,
        )
        .unwrap();
        let (l, ex) = load(&d).unwrap();
        assert_eq!(l, Layout::SatCaptions);
        assert_eq!(ex[0].rounds[0].answer, "a cat");

        let d = tmp("peft");
        std::fs::create_dir_all(d.join("labels")).unwrap();
        png(&d.join("images/x.png"));
        std::fs::write(
            d.join("labels/x.json"),
            r#"{"conversations":[{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},
                {"role":"user","content":"q2"},{"role":"assistant","content":"a2"}]}"#,
        )
        .unwrap();
        let (l, ex) = load(&d).unwrap();
        assert_eq!(l, Layout::Peft);
        let (h, q, a) = ex[0].round(1);
        assert_eq!(h, vec![("q1".to_string(), "a1".to_string())]);
        assert_eq!((q, a), ("q2", "a2"));
    }

    #[test]
    fn malformed_labels_name_the_file() {
        let d = tmp("bad");
        std::fs::create_dir_all(d.join("labels")).unwrap();
        png(&d.join("images/y.png"));
        std::fs::write(
            d.join("labels/y.json"),
            r#"{"conversations":[{"role":"user","content":"q"}]}"#,
        )
        .unwrap();
        let e = format!("{:#}", load(&d).unwrap_err());
        assert!(e.contains("y.json") && e.contains("no assistant"), "{e}");
        std::fs::write(d.join("labels/y.json"), "{not json").unwrap();
        let e = format!("{:#}", load(&d).unwrap_err());
        assert!(e.contains("y.json"), "{e}");
        std::fs::remove_file(d.join("labels/y.json")).unwrap();
        std::fs::write(d.join("labels/z.json"), "{}").unwrap();
        let e = format!("{:#}", load(&d).unwrap_err());
        assert!(e.contains("y.json"), "{e}");
    }
}
