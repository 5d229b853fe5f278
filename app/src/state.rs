//! Client-side state of the page, shared by the components through context.

use crate::agent;
use crate::conversation::record::SavedStatus;
use crate::protocol::{CheckpointInfo, ModelsState, PromptVersion, Sampling, Stats, UploadRef};
use crate::tasks::Task;
use futures::channel::mpsc::UnboundedSender;
use futures::future::AbortHandle;
use leptos::prelude::*;
use leptos::server_fn::ServerFnError;
use protocol::grounding::{self, Shape};
use std::collections::HashMap;

use crate::protocol::ClientMsg;

/// Where a turn stands.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnStatus {
    /// Sent, or taken by the worker (reading the image and the prompt).
    Waiting,
    /// Waiting behind `ahead` other requests, for about `eta_ms` (when the server knows).
    Queued {
        ahead: usize,
        eta_ms: Option<u64>,
    },
    Streaming,
    Done(Stats),
    /// Stopped on the client without a reply from the server.
    Stopped,
    /// A recorded answer fed in by the page's test hook (`test_hook.rs`), not by the server.
    Recorded,
    Error(String),
}

/// A turn's status as a saved conversation keeps it: one still under way is saved as stopped.
impl From<&TurnStatus> for SavedStatus {
    fn from(s: &TurnStatus) -> Self {
        match s {
            TurnStatus::Done(s) => SavedStatus::Done(s.clone()),
            TurnStatus::Recorded => SavedStatus::Recorded,
            TurnStatus::Error(e) => SavedStatus::Error(e.clone()),
            TurnStatus::Waiting
            | TurnStatus::Queued { .. }
            | TurnStatus::Streaming
            | TurnStatus::Stopped => SavedStatus::Stopped,
        }
    }
}

/// A saved turn's status on the page.
impl From<&SavedStatus> for TurnStatus {
    fn from(s: &SavedStatus) -> Self {
        match s {
            SavedStatus::Done(s) => TurnStatus::Done(s.clone()),
            SavedStatus::Stopped => TurnStatus::Stopped,
            SavedStatus::Recorded => TurnStatus::Recorded,
            SavedStatus::Error(e) => TurnStatus::Error(e.clone()),
        }
    }
}

impl TurnStatus {
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            TurnStatus::Waiting | TurnStatus::Queued { .. } | TurnStatus::Streaming
        )
    }
    /// Whether the answer can go into the history of later turns.
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            TurnStatus::Done(_) | TurnStatus::Stopped | TurnStatus::Recorded
        )
    }
}

/// One question and its answer.
#[derive(Clone, Debug)]
pub struct Turn {
    pub id: u64,
    pub query: String,
    pub answer: RwSignal<String>,
    pub status: RwSignal<TurnStatus>,
}

/// The uploaded image.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadedImage {
    pub name: String,
    /// `blob:` URL for the preview.
    pub url: String,
    /// The file, base64 (kept with the conversation on this device).
    pub base64: String,
    pub bytes: usize,
    /// The server's reference to it once uploaded ([`crate::upload`]).
    pub upload: Option<UploadRef>,
}

/// Sampling controls.
#[derive(Clone, Copy)]
pub struct SettingsState {
    pub version: RwSignal<PromptVersion>,
    pub temperature: RwSignal<f64>,
    pub top_p: RwSignal<f64>,
    pub top_k: RwSignal<usize>,
    pub max_length: RwSignal<usize>,
    /// Empty: no limit other than max length.
    pub max_new_tokens: RwSignal<String>,
    pub repetition_penalty: RwSignal<f64>,
    /// Empty: random.
    pub seed: RwSignal<String>,
}

impl SettingsState {
    /// The controls at [`Sampling::default`].
    pub fn new() -> Self {
        let s = Self {
            version: RwSignal::new(PromptVersion::Chat),
            temperature: RwSignal::new(0.0),
            top_p: RwSignal::new(0.0),
            top_k: RwSignal::new(0),
            max_length: RwSignal::new(0),
            max_new_tokens: RwSignal::new(String::new()),
            repetition_penalty: RwSignal::new(0.0),
            seed: RwSignal::new(String::new()),
        };
        s.set_sampling(&Sampling::default());
        s
    }

    /// Sets every sampling control from `s`: the one mapping from [`Sampling`] to the controls, as
    /// [`SettingsState::sampling`] is the one back (no top-k shows as 0, no limit and a random seed as empty
    /// fields).
    pub fn set_sampling(&self, s: &Sampling) {
        self.temperature.set(s.temperature);
        self.top_p.set(s.top_p);
        self.top_k.set(s.top_k.unwrap_or(0));
        self.max_length.set(s.max_length);
        self.max_new_tokens
            .set(s.max_new_tokens.map(|n| n.to_string()).unwrap_or_default());
        self.repetition_penalty.set(f64::from(s.repetition_penalty));
        self.seed
            .set(s.seed.map(|n| n.to_string()).unwrap_or_default());
    }

    /// The prompt version and sampling settings `ck` starts with (its template, its kind's defaults).
    pub fn start_with(&self, ck: &CheckpointInfo) {
        self.version.set(ck.default_version);
        // The kind's defaults for what it decides; the user's length limit, penalty and seed stay.
        let d = Sampling::for_kind(ck.kind);
        self.set_sampling(&Sampling {
            max_new_tokens: self.max_new_tokens.get_untracked().trim().parse().ok(),
            repetition_penalty: self.repetition_penalty.get_untracked() as f32,
            seed: self.seed.get_untracked().trim().parse().ok(),
            ..d
        });
    }

    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature.get_untracked(),
            top_p: self.top_p.get_untracked(),
            top_k: Some(self.top_k.get_untracked()),
            max_length: self.max_length.get_untracked(),
            max_new_tokens: self
                .max_new_tokens
                .get_untracked()
                .trim()
                .parse()
                .ok()
                .filter(|&n: &usize| n > 0),
            repetition_penalty: self.repetition_penalty.get_untracked() as f32,
            seed: self.seed.get_untracked().trim().parse().ok(),
        }
    }
}

impl Default for SettingsState {
    fn default() -> Self {
        Self::new()
    }
}

/// The task picker: which task fills the prompt, from which template, with what input.
#[derive(Clone, Copy)]
pub struct TaskState {
    pub task: RwSignal<Task>,
    /// The template the user chose; `None`: the random pick below.
    pub chosen: RwSignal<Option<usize>>,
    /// Re-drawn on each task switch and by "another template".
    pub random: RwSignal<usize>,
    /// The phrase to find or the agent's task.
    pub text: RwSignal<String>,
    pub with_grounding: RwSignal<bool>,
}

impl TaskState {
    pub fn new() -> Self {
        Self {
            task: RwSignal::new(Task::Chat),
            chosen: RwSignal::new(None),
            random: RwSignal::new(0),
            text: RwSignal::new(String::new()),
            with_grounding: RwSignal::new(true),
        }
    }

    /// The template in use now.
    pub fn template_index(&self) -> usize {
        self.chosen
            .get_untracked()
            .unwrap_or_else(|| self.random.get_untracked())
    }
}

impl Default for TaskState {
    fn default() -> Self {
        Self::new()
    }
}

/// A checkpoint switch in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct Loading {
    pub name: String,
    pub done: u64,
    pub total: u64,
}

/// Everything the components share.
#[derive(Clone, Copy)]
pub struct AppState {
    pub turns: RwSignal<Vec<Turn>>,
    pub next_id: StoredValue<u64>,
    pub image: RwSignal<Option<UploadedImage>>,
    /// A one-line note shown above the transcript (e.g. "new image: new conversation").
    pub note: RwSignal<Option<String>>,
    pub busy: RwSignal<bool>,
    /// Input side of the running chat call (to send Stop).
    pub sender: StoredValue<Option<UnboundedSender<Result<ClientMsg, ServerFnError>>>>,
    /// Aborts the running chat call if the server does not answer a Stop.
    pub aborter: StoredValue<Option<AbortHandle>>,
    pub settings: SettingsState,
    pub models: RwSignal<Option<ModelsState>>,
    pub models_error: RwSignal<Option<String>>,
    pub loading: RwSignal<Option<Loading>>,
    pub load_error: RwSignal<Option<String>>,
    /// The grounding group under the mouse (in the transcript or on the canvas).
    pub hover: RwSignal<Option<usize>>,
    /// The draft in the composer.
    pub draft: RwSignal<String>,
    pub tasks: TaskState,
    /// The stored conversations and which one is open.
    pub conversations: crate::conversation::open::Conversations,
    pub lang: RwSignal<crate::i18n::Lang>,
    /// The page's reactive owner (the `App` component's), which owns every turn's signals.
    owner: StoredValue<Option<Owner>>,
}

impl AppState {
    pub fn new() -> Self {
        Self {
            turns: RwSignal::new(Vec::new()),
            next_id: StoredValue::new(1),
            image: RwSignal::new(None),
            note: RwSignal::new(None),
            busy: RwSignal::new(false),
            sender: StoredValue::new(None),
            aborter: StoredValue::new(None),
            settings: SettingsState::new(),
            models: RwSignal::new(None),
            models_error: RwSignal::new(None),
            loading: RwSignal::new(None),
            load_error: RwSignal::new(None),
            hover: RwSignal::new(None),
            draft: RwSignal::new(String::new()),
            tasks: TaskState::new(),
            conversations: Default::default(),
            lang: RwSignal::new(crate::i18n::Lang::En),
            owner: StoredValue::new(Owner::current()),
        }
    }

    /// A new turn whose signals belong to the page. A turn is often made from a button inside another
    /// turn's view (Edit, Regenerate); that view is disposed when its turn is dropped, and signals made under
    /// it would be disposed with it while the new turn still shows them.
    pub fn new_turn(&self, query: String, answer: String, status: TurnStatus) -> Turn {
        let make = || Turn {
            id: self.next_turn_id(),
            query,
            answer: RwSignal::new(answer),
            status: RwSignal::new(status),
        };
        match self.owner.get_value() {
            Some(owner) => owner.with(make),
            None => make(),
        }
    }

    pub fn next_turn_id(&self) -> u64 {
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        id
    }

    /// The loaded checkpoint's name.
    pub fn current_model(&self) -> Option<String> {
        self.models
            .with(|m| m.as_ref().and_then(|m| m.current.clone()))
    }
}

impl Default for AppState {
    fn default() -> Self {
        Self::new()
    }
}

/// One grounding group of the conversation, numbered in order over questions and answers.
#[derive(Clone, Debug, PartialEq)]
pub struct DrawnGroup {
    pub index: usize,
    pub shapes: Vec<Shape>,
    pub label: Option<String>,
    /// From a question (sent or being written): drawn dashed, as the user's own regions.
    pub dashed: bool,
}

/// The groups of one text, numbered from `first`. An agent answer's operation box is labelled
/// with its action and target.
pub fn text_groups(text: &str, first: usize, dashed: bool) -> Vec<DrawnGroup> {
    let operation = if dashed {
        None
    } else {
        agent::operation_group(text)
    };
    grounding::parse(text)
        .into_iter()
        .enumerate()
        .map(|(k, g)| DrawnGroup {
            index: first + k,
            shapes: g.shapes,
            label: match &operation {
                Some((op, label)) if *op == k && !label.is_empty() => Some(label.clone()),
                _ => g.label,
            },
            dashed,
        })
        .collect()
}

/// Every group in the conversation, and where each message's numbering starts
/// (turn id → (question offset, answer offset)).
pub fn conversation_groups(turns: &[Turn]) -> (Vec<DrawnGroup>, HashMap<u64, (usize, usize)>) {
    let mut groups = Vec::new();
    let mut offsets = HashMap::new();
    for turn in turns {
        let q = groups.len();
        groups.extend(text_groups(&turn.query, q, true));
        let a = groups.len();
        turn.answer
            .with(|answer| groups.extend(text_groups(answer, a, false)));
        offsets.insert(turn.id, (q, a));
    }
    (groups, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_groups_dashed_answer_groups_solid_numbered_in_order() {
        let g = text_groups("a cat[[1,2,3,4]] and a dog[[5,6,7,8;9,9]]", 3, false);
        assert_eq!(
            g.iter()
                .map(|g| (g.index, g.label.as_deref(), g.dashed, g.shapes.len()))
                .collect::<Vec<_>>(),
            vec![(3, Some("cat"), false, 1), (4, Some("dog"), false, 2)]
        );
        assert!(text_groups("what is in [[1,2,3,4]]?", 0, true)[0].dashed);
    }

    #[test]
    fn agent_operation_box_is_labelled_by_action_and_target() {
        let answer = "Next Action: type.\nGrounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]";
        let g = text_groups(answer, 0, false);
        assert_eq!(g[0].label.as_deref(), Some("TYPE Search"));
        // The same text as a question keeps the phrase label.
        assert_eq!(
            text_groups(answer, 0, true)[0].label.as_deref(),
            Some("box")
        );
    }
}
