//! The task picker's data: THUDM's task-prompt templates and how each task fills one.
//!
//! The templates are THUDM's own lists (`utils/utils/template.py`, copied verbatim into
//! `templates.json` next to this file, so the crate needs nothing outside the repository); the
//! filling rules are THUDM's README cookbook's: `<expr>` ← the phrase, `<objs>` ← the
//! regions, `<TASK>` ← the task in double quotes, plus `(with grounding)` for a grounded
//! operation.

use crate::protocol::{CheckpointInfo, ModelKind};
use protocol::grounding::{self, Shape};
use serde::Deserialize;
use std::sync::LazyLock;

#[derive(Deserialize)]
struct Templates {
    agent: Vec<String>,
    caption2box: Vec<String>,
    box2caption: Vec<String>,
    caption_with_box: Vec<String>,
}

static TEMPLATES: LazyLock<Templates> = LazyLock::new(|| {
    serde_json::from_str(include_str!("templates.json")).expect("templates.json is valid")
});

/// What the user wants from the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// Free text.
    Chat,
    /// Describe the image with a box after each object (`caption_with_box`).
    DescribeWithBoxes,
    /// Boxes for a phrase (`caption2box`, `<expr>`).
    FindObject,
    /// Describe drawn regions (`box2caption`, `<objs>`).
    DescribeRegion,
    /// CogAgent's GUI agent (`en_template_task`, `<TASK>`).
    Agent,
}

/// The kind of checkpoint a task was trained for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suits {
    Any,
    /// `cogvlm-grounding-generalist-hf`.
    Grounding,
    /// `cogagent-chat-hf`.
    AgentChat,
}

impl Suits {
    /// THUDM's checkpoint for this kind of task.
    pub fn wanted(self) -> Option<&'static str> {
        match self {
            Suits::Any => None,
            Suits::Grounding => Some("cogvlm-grounding-generalist-hf"),
            Suits::AgentChat => Some("cogagent-chat-hf"),
        }
    }

    /// Whether `checkpoint` suits: grounding needs a checkpoint named "grounding"; the agent
    /// needs CogAgent.
    pub fn accepts(self, checkpoint: &CheckpointInfo) -> bool {
        match self {
            Suits::Any => true,
            Suits::Grounding => checkpoint.name.to_lowercase().contains("grounding"),
            Suits::AgentChat => checkpoint.kind == ModelKind::CogAgent,
        }
    }

    /// The best checkpoint of `list` for this kind (for the agent, a `chat` CogAgent before a
    /// `vqa` one), if any suits.
    pub fn best(self, list: &[CheckpointInfo]) -> Option<&CheckpointInfo> {
        let preferred = |c: &&CheckpointInfo| {
            self != Suits::AgentChat || !c.name.to_lowercase().contains("vqa")
        };
        let mut suitable = list.iter().filter(|c| self.accepts(c));
        suitable.clone().find(preferred).or_else(|| suitable.next())
    }
}

impl Task {
    pub const ALL: [Task; 5] = [
        Task::Chat,
        Task::DescribeWithBoxes,
        Task::FindObject,
        Task::DescribeRegion,
        Task::Agent,
    ];

    /// A stable id (for the page's element ids and tests).
    pub fn id(self) -> &'static str {
        match self {
            Task::Chat => "chat",
            Task::DescribeWithBoxes => "caption_with_box",
            Task::FindObject => "caption2box",
            Task::DescribeRegion => "box2caption",
            Task::Agent => "agent",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Task::Chat => "Chat",
            Task::DescribeWithBoxes => "Describe with boxes",
            Task::FindObject => "Find an object",
            Task::DescribeRegion => "Describe a region",
            Task::Agent => "GUI agent",
        }
    }

    /// THUDM's templates for this task (empty for chat).
    pub fn templates(self) -> &'static [String] {
        let t = &*TEMPLATES;
        match self {
            Task::Chat => &[],
            Task::DescribeWithBoxes => &t.caption_with_box,
            Task::FindObject => &t.caption2box,
            Task::DescribeRegion => &t.box2caption,
            Task::Agent => &t.agent,
        }
    }

    /// The placeholder the user's input replaces.
    pub fn placeholder(self) -> Option<&'static str> {
        match self {
            Task::FindObject => Some("<expr>"),
            Task::DescribeRegion => Some("<objs>"),
            Task::Agent => Some("<TASK>"),
            Task::Chat | Task::DescribeWithBoxes => None,
        }
    }

    pub fn suits(self) -> Suits {
        match self {
            Task::Chat => Suits::Any,
            Task::DescribeWithBoxes | Task::FindObject | Task::DescribeRegion => Suits::Grounding,
            Task::Agent => Suits::AgentChat,
        }
    }

    /// Index of a template picked by `fraction` in `[0, 1)` (e.g. `Math.random()`).
    pub fn pick(self, fraction: f64) -> usize {
        let n = self.templates().len();
        ((fraction.clamp(0.0, 1.0) * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// What the user gave a task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskInput {
    /// The phrase to find, or the agent's task.
    pub text: String,
    /// Drawn regions, for "describe a region".
    pub regions: Vec<Shape>,
    /// Ask the agent for a grounded operation.
    pub with_grounding: bool,
}

/// The prompt for `task` from template number `index` (wrapped into range). The placeholder
/// stays visible while its input is empty, so the user sees what is missing.
pub fn fill(task: Task, index: usize, input: &TaskInput) -> String {
    let templates = task.templates();
    if templates.is_empty() {
        return String::new();
    }
    let template = &templates[index % templates.len()];
    let text = input.text.trim();
    let value = match task {
        Task::Chat | Task::DescribeWithBoxes => return template.clone(),
        Task::FindObject if !text.is_empty() => text.to_string(),
        Task::Agent if !text.is_empty() => format!("\"{text}\""),
        Task::DescribeRegion if !input.regions.is_empty() => input
            .regions
            .iter()
            .map(|r| grounding::format_group(std::slice::from_ref(r)))
            .collect::<Vec<_>>()
            .join(" and "),
        _ => task.placeholder().unwrap_or_default().to_string(),
    };
    let prompt = template.replacen(task.placeholder().unwrap_or_default(), &value, 1);
    if task == Task::Agent && input.with_grounding {
        prompt + "(with grounding)"
    } else {
        prompt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PromptVersion;

    fn ck(name: &str, kind: ModelKind) -> CheckpointInfo {
        CheckpointInfo {
            name: name.into(),
            kind,
            image_size: 490,
            default_version: PromptVersion::Chat,
            bundled: false,
        }
    }

    #[test]
    fn thudm_lists_are_complete() {
        assert_eq!(Task::Agent.templates().len(), 108);
        assert_eq!(Task::FindObject.templates().len(), 53);
        assert_eq!(Task::DescribeRegion.templates().len(), 135);
        assert_eq!(Task::DescribeWithBoxes.templates().len(), 146);
        assert!(Task::Chat.templates().is_empty());
        // Every template of a task with an input has its placeholder exactly once.
        for task in Task::ALL {
            if let Some(p) = task.placeholder() {
                for t in task.templates() {
                    assert_eq!(t.matches(p).count(), 1, "{t:?}");
                }
            }
        }
        assert_eq!(
            Task::DescribeWithBoxes.templates()[0],
            "Can you provide a description of the image and include the coordinates [[x0,y0,x1,y1]] for each mentioned object?"
        );
    }

    #[test]
    fn agent_task_in_double_quotes_with_optional_grounding() {
        let i = Task::Agent
            .templates()
            .iter()
            .position(|t| t == "What steps do I need to take to <TASK>?")
            .unwrap();
        let mut input = TaskInput {
            text: "  Search for CogVLM ".into(),
            ..TaskInput::default()
        };
        assert_eq!(
            fill(Task::Agent, i, &input),
            "What steps do I need to take to \"Search for CogVLM\"?"
        );
        input.with_grounding = true;
        // The spec's example prompt (§4.2).
        assert_eq!(
            fill(Task::Agent, i, &input),
            "What steps do I need to take to \"Search for CogVLM\"?(with grounding)"
        );
    }

    #[test]
    fn find_object_and_describe_region() {
        let input = TaskInput {
            text: "the red cup".into(),
            ..TaskInput::default()
        };
        assert_eq!(fill(Task::FindObject, 0, &input), "Where is the red cup?");
        let input = TaskInput {
            regions: vec![Shape::Box([86, 540, 400, 760]), Shape::Box([0, 1, 999, 20])],
            ..TaskInput::default()
        };
        assert_eq!(
            fill(Task::DescribeRegion, 0, &input),
            "Can you give me a description of the region [[086,540,400,760]] and [[000,001,999,020]] in image?"
        );
        // Empty inputs leave the placeholder in view.
        let empty = TaskInput::default();
        assert_eq!(fill(Task::FindObject, 0, &empty), "Where is <expr>?");
        assert_eq!(
            fill(Task::DescribeRegion, 0, &empty),
            "Can you give me a description of the region <objs> in image?"
        );
        // Indices wrap; chat has no template.
        assert_eq!(
            fill(Task::FindObject, 53, &input),
            fill(Task::FindObject, 0, &input)
        );
        assert_eq!(fill(Task::Chat, 3, &input), "");
    }

    #[test]
    fn random_picks_stay_in_range() {
        for task in Task::ALL {
            let n = task.templates().len();
            assert_eq!(task.pick(0.0), 0);
            assert_eq!(task.pick(0.999_999), n.saturating_sub(1));
            assert_eq!(task.pick(1.0), n.saturating_sub(1));
            assert_eq!(task.pick(f64::NAN), 0);
        }
        assert_eq!(Task::FindObject.pick(0.5), 26);
    }

    #[test]
    fn suggested_checkpoints() {
        let list = vec![
            ck("cogagent-vqa-hf", ModelKind::CogAgent),
            ck("cogagent-chat-hf", ModelKind::CogAgent),
            ck("cogvlm-chat-hf", ModelKind::CogVlm),
            ck("cogvlm-grounding-generalist-hf", ModelKind::CogVlm),
        ];
        let name = |s: Suits, l: &[CheckpointInfo]| s.best(l).map(|c| c.name.clone());
        assert_eq!(
            name(Task::FindObject.suits(), &list).as_deref(),
            Some("cogvlm-grounding-generalist-hf")
        );
        assert_eq!(
            name(Task::Agent.suits(), &list).as_deref(),
            Some("cogagent-chat-hf")
        );
        assert_eq!(
            name(Task::Agent.suits(), &list[..1]).as_deref(),
            Some("cogagent-vqa-hf")
        );
        assert_eq!(name(Task::DescribeRegion.suits(), &list[..3]), None);
        assert!(Task::Chat.suits().accepts(&list[2]));
        assert_eq!(Task::Chat.suits().wanted(), None);
    }
}
