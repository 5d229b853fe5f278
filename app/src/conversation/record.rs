//! A conversation as the browser stores and exports it: its image, turns (with the boxes their text holds),
//! checkpoint and settings. Plain data with serde, so it is tested natively; the browser side is `idb.rs`
//! (storage) and `store.rs` (the page's state).

use crate::protocol::{PromptVersion, Sampling, Stats};
use protocol::grounding::{self, Shape};
use serde::{Deserialize, Serialize};

/// Bumped when a stored field changes meaning; older records are still read (every new field has a default).
pub const FORMAT: u32 = 1;

/// How a stored turn ended. An answer still streaming when the page went away is kept as `Stopped`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SavedStatus {
    Done(Stats),
    Stopped,
    Recorded,
    Error(String),
}

impl SavedStatus {
    /// Whether the answer goes into the history of later questions (as on the live page).
    pub fn is_answer(&self) -> bool {
        !matches!(self, SavedStatus::Error(_))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedTurn {
    pub query: String,
    pub answer: String,
    pub status: SavedStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedImage {
    pub name: String,
    /// The file as uploaded, base64.
    pub base64: String,
}

impl SavedImage {
    /// The image type from its first bytes (what the browser needs to show it again), PNG when unknown.
    pub fn mime(&self) -> &'static str {
        protocol::image_mime_base64(&self.base64).unwrap_or("image/png")
    }

    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime(), self.base64)
    }
}

/// One stored conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedConversation {
    #[serde(default)]
    pub format: u32,
    pub id: String,
    /// How many times it has been written (records before revisions read as 0). A save overwrites only the
    /// revision it started from, so two tabs never overwrite each other's turns (`saving.rs`).
    #[serde(default)]
    pub revision: u64,
    pub title: String,
    /// Milliseconds since the epoch.
    pub created_ms: f64,
    pub updated_ms: f64,
    #[serde(default)]
    pub image: Option<SavedImage>,
    #[serde(default)]
    pub turns: Vec<SavedTurn>,
    /// The checkpoint that answered last.
    #[serde(default)]
    pub checkpoint: Option<String>,
    #[serde(default)]
    pub version: Option<PromptVersion>,
    #[serde(default)]
    pub sampling: Option<Sampling>,
}

/// What the side list shows of a conversation, without its image and turns: stored beside each record (in the
/// same transaction) so that opening the page reads no image but the open conversation's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub created_ms: f64,
    pub updated_ms: f64,
    #[serde(default)]
    pub turns: usize,
    /// The image's file name.
    #[serde(default)]
    pub image: Option<String>,
    /// The record's revision: what a save compares before it writes.
    #[serde(default)]
    pub revision: u64,
    /// Why the record could not be read when this summary was made (it is kept as stored, and listed).
    #[serde(default)]
    pub unreadable: Option<String>,
}

impl Summary {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The summary of a stored record's text (stored under `id`); a record that cannot be read gets one that
    /// says why, so the list can still show it and the page can tell the user.
    pub fn of_stored(id: &str, text: Option<&str>) -> Self {
        let read = text
            .ok_or_else(|| "not text".to_string())
            .and_then(SavedConversation::from_json);
        match read {
            Ok(rec) if rec.id == id => rec.summary(),
            Ok(rec) => Self::unreadable(id, format!("it is stored under another id ({})", rec.id)),
            Err(e) => Self::unreadable(id, e),
        }
    }

    /// The summary of record `id`, which cannot be read (`why`): listed under its id.
    pub fn unreadable(id: &str, why: String) -> Self {
        Summary {
            id: id.into(),
            title: id.into(),
            created_ms: 0.0,
            updated_ms: 0.0,
            turns: 0,
            image: None,
            revision: 0,
            unreadable: Some(why),
        }
    }
}

impl SavedConversation {
    pub fn summary(&self) -> Summary {
        Summary {
            id: self.id.clone(),
            title: self.title.clone(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            turns: self.turns.len(),
            image: self.image.as_ref().map(|i| i.name.clone()),
            revision: self.revision,
            unreadable: None,
        }
    }

    /// Whether `self` already holds everything of `other` (its turns as a prefix, its image): then a tab
    /// holding `other` loses nothing by taking `self` instead.
    pub fn holds(&self, other: &SavedConversation) -> bool {
        let same_turn = |a: &SavedTurn, b: &SavedTurn| a.query == b.query && a.answer == b.answer;
        let image = match (&self.image, &other.image) {
            (_, None) => true,
            (Some(a), Some(b)) => a.base64 == b.base64,
            (None, Some(_)) => false,
        };
        image
            && other.turns.len() <= self.turns.len()
            && other
                .turns
                .iter()
                .zip(&self.turns)
                .all(|(o, s)| same_turn(o, s))
    }

    /// The export file's name without extension: the title's letters and digits.
    pub fn file_stem(&self) -> String {
        let stem: String = self
            .title
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let stem: String = stem.chars().take(48).collect();
        if stem.is_empty() {
            "conversation".into()
        } else {
            stem
        }
    }

    /// The JSON export: this record as stored, image included. [`Self::from_json`] reads it back.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a record or an export; one written by a newer version of the page (a higher `format`) is refused,
    /// since saving it back would drop what this version does not know.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let rec: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if rec.format > FORMAT {
            return Err(format!(
                "it was saved in format {} by a newer version of this page (this one reads up to {FORMAT})",
                rec.format
            ));
        }
        Ok(rec)
    }

    /// The Markdown export: the title, the image inline (a data URL), each question and answer, and the
    /// boxes of each text as a JSON list under it.
    pub fn to_markdown(&self) -> String {
        let mut md = format!("# {}\n\n", self.title);
        if let Some(model) = &self.checkpoint {
            md.push_str(&format!("Checkpoint: `{model}`\n\n"));
        }
        if let Some(img) = &self.image {
            md.push_str(&format!("![{}]({})\n\n", img.name, img.data_url()));
        }
        for turn in &self.turns {
            md.push_str(&format!("**You:** {}\n\n", turn.query));
            push_boxes(&mut md, &turn.query);
            md.push_str(&format!("**Model:** {}\n\n", turn.answer));
            push_boxes(&mut md, &turn.answer);
        }
        md
    }
}

/// The boxes and points of `text`, as JSON: `[{"label": "cat", "boxes": [[x0,y0,x1,y1]], "points": [[x,y]]}]`
/// in the model's thousandths. Used by the Markdown export and the per-answer copy.
pub fn boxes_json(text: &str) -> String {
    let groups: Vec<serde_json::Value> = grounding::parse(text)
        .into_iter()
        .map(|g| {
            let boxes: Vec<_> = g
                .shapes
                .iter()
                .filter_map(|s| match s {
                    Shape::Box(b) => Some(b.to_vec()),
                    Shape::Point(_) => None,
                })
                .collect();
            let points: Vec<_> = g
                .shapes
                .iter()
                .filter_map(|s| match s {
                    Shape::Point(p) => Some(p.to_vec()),
                    Shape::Box(_) => None,
                })
                .collect();
            serde_json::json!({"label": g.label, "boxes": boxes, "points": points})
        })
        .collect();
    serde_json::Value::Array(groups).to_string()
}

fn push_boxes(md: &mut String, text: &str) {
    if !grounding::parse(text).is_empty() {
        md.push_str(&format!("```json\n{}\n```\n\n", boxes_json(text)));
    }
}

/// A conversation's title from its first question: its first line, at most 40 characters.
pub fn title_from(query: &str) -> Option<String> {
    let line = query.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut title: String = line.chars().take(40).collect();
    if line.chars().count() > 40 {
        title.push('…');
    }
    Some(title)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::StopReason;

    fn sample() -> SavedConversation {
        SavedConversation {
            format: FORMAT,
            id: "c1".into(),
            revision: 3,
            title: "What is / on the table?".into(),
            created_ms: 1.0,
            updated_ms: 2.0,
            image: Some(SavedImage {
                name: "coffee.png".into(),
                base64: "iVBORw0KGgo=".into(),
            }),
            turns: vec![SavedTurn {
                query: "Where is the cup?".into(),
                answer: "The cup[[100,200,300,400]] and a spoon[[5,6]].".into(),
                status: SavedStatus::Done(Stats {
                    checkpoint: "tiny".into(),
                    prompt_tokens: 300,
                    reused_tokens: 0,
                    dropped_turns: 1,
                    context: 2048,
                    generated_tokens: 12,
                    prefill_ms: 1.0,
                    ttft_ms: 2.0,
                    tokens_per_s: 3.0,
                    stop: StopReason::Eos,
                }),
            }],
            checkpoint: Some("tiny".into()),
            version: Some(PromptVersion::Chat),
            sampling: Some(Sampling::default()),
        }
    }

    #[test]
    fn json_export_reads_back_the_same() {
        let c = sample();
        assert_eq!(SavedConversation::from_json(&c.to_json()), Ok(c));
        assert!(SavedConversation::from_json("{\"id\": 3}").is_err());
    }

    #[test]
    fn older_records_without_new_fields_are_read() {
        let c =
            SavedConversation::from_json(r#"{"id":"x","title":"t","created_ms":0,"updated_ms":0}"#)
                .unwrap();
        assert!(c.turns.is_empty() && c.image.is_none());
    }

    #[test]
    fn markdown_has_the_image_turns_and_boxes() {
        let md = sample().to_markdown();
        assert!(md.starts_with("# What is / on the table?\n"));
        assert!(md.contains("![coffee.png](data:image/png;base64,iVBORw0KGgo=)"));
        assert!(md.contains("**You:** Where is the cup?"));
        assert!(md.contains(
            r#"[{"boxes":[[100,200,300,400]],"label":"cup","points":[]},{"boxes":[],"label":"spoon","points":[[5,6]]}]"#
        ));
    }

    #[test]
    fn file_names_and_titles() {
        assert_eq!(sample().file_stem(), "What-is-on-the-table");
        assert_eq!(title_from("\n  hello\nworld").as_deref(), Some("hello"));
        assert_eq!(title_from("   "), None);
        assert_eq!(title_from(&"x".repeat(50)).unwrap().chars().count(), 41);
    }

    #[test]
    fn image_type_from_its_bytes() {
        let img = |b: &str| SavedImage {
            name: "x".into(),
            base64: b.into(),
        };
        assert_eq!(img("/9j/4AAQ").mime(), "image/jpeg");
        assert_eq!(img("iVBORw0K").mime(), "image/png");
        assert_eq!(img("UklGRiQAAABXRUJQVlA4IA==").mime(), "image/webp");
        // A RIFF file that is not WebP (a WAV) is not taken for one.
        assert_eq!(img("UklGRiQAAABXQVZFZm10IA==").mime(), "image/png");
    }

    #[test]
    fn newer_formats_are_refused() {
        let mut c = sample();
        c.format = FORMAT + 1;
        let err = SavedConversation::from_json(&c.to_json()).unwrap_err();
        assert!(err.contains("newer version"), "{err}");
    }

    #[test]
    fn summaries_of_stored_text() {
        let c = sample();
        let s = Summary::of_stored("c1", Some(&c.to_json()));
        assert_eq!(s, c.summary());
        assert_eq!(
            (s.turns, s.revision, s.image.as_deref()),
            (1, 3, Some("coffee.png"))
        );
        assert_eq!(Summary::from_json(&s.to_json()), Ok(s));
        for (id, text) in [
            ("c9", Some("{not json")),
            ("c9", None),
            ("c2", Some(&*c.to_json())),
        ] {
            let s = Summary::of_stored(id, text);
            assert_eq!((s.id.as_str(), s.title.as_str()), (id, id));
            assert!(s.unreadable.is_some());
        }
    }

    #[test]
    fn a_record_holds_another_when_it_has_its_turns_and_image() {
        let base = sample();
        let mut longer = base.clone();
        longer.turns.push(SavedTurn {
            query: "And the spoon?".into(),
            answer: "Left.".into(),
            status: SavedStatus::Stopped,
        });
        assert!(longer.holds(&base) && base.holds(&base));
        assert!(!base.holds(&longer));
        let mut diverged = base.clone();
        diverged.turns[0].answer = "Another answer".into();
        assert!(!longer.holds(&diverged));
        let mut other_image = base.clone();
        other_image.image.as_mut().unwrap().base64 = "R0lGOD".into();
        assert!(!longer.holds(&other_image));
    }
}
