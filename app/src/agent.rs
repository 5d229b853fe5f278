//! CogAgent's GUI-agent answers as a typed action.
//!
//! The model answers agent prompts (the `en_template_task` templates, optionally "(with grounding)") as
//! ```text
//! Plan: 1. … 2. … 3. …
//! Next Action: …
//! Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]
//! ```
//! This parser turns that into [`AgentAnswer`]. It is lenient (sections may be missing, spacing varies) and
//! never panics; text that has none of the markers gives `None`.

use serde::{Deserialize, Serialize};

use protocol::grounding::{self, Shape};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAnswer {
    /// Numbered plan steps, without their numbers.
    pub plan: Vec<String>,
    pub next_action: Option<String>,
    pub operation: Option<GroundedOperation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundedOperation {
    /// The element type in brackets, e.g. `combobox`, `button`, `link`.
    pub element: Option<String>,
    /// The element's name, e.g. `Search`.
    pub target: String,
    /// The action verb as written, e.g. `TYPE`, `CLICK`, `SCROLL_DOWN`, `PRESS ENTER`.
    pub action: String,
    /// The text to type, for `TYPE: …`.
    pub text: Option<String>,
    /// Where: the first box or point of the operation, in thousandths of the screenshot.
    pub region: Option<Shape>,
}

const PLAN: &str = "Plan:";
const NEXT: &str = "Next Action:";
const OP: &str = "Grounded Operation:";

/// Parses an agent answer; `None` when the text has no Plan / Next Action / Grounded Operation marker.
pub fn parse(text: &str) -> Option<AgentAnswer> {
    let plan_at = text.find(PLAN);
    let next_at = text.find(NEXT);
    let op_at = text.find(OP);
    if plan_at.is_none() && next_at.is_none() && op_at.is_none() {
        return None;
    }
    // Each section runs to the start of the next marker that follows it.
    let marks: Vec<usize> = [plan_at, next_at, op_at].into_iter().flatten().collect();
    let section = |start: Option<usize>, marker: &str| -> Option<&str> {
        let s = start? + marker.len();
        let end = marks
            .iter()
            .copied()
            .filter(|&m| m >= s)
            .min()
            .unwrap_or(text.len());
        Some(text[s..end].trim())
    };
    let plan = section(plan_at, PLAN).map(split_steps).unwrap_or_default();
    let next_action = section(next_at, NEXT)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let operation = section(op_at, OP).and_then(parse_operation);
    Some(AgentAnswer {
        plan,
        next_action,
        operation,
    })
}

/// Which grounding group of `text` (its number among [`grounding::parse`]'s groups) is the
/// grounded operation's, and a label for it on the image ("TYPE Search"): the phrase before the
/// box ("… at the box") names nothing useful there.
pub fn operation_group(text: &str) -> Option<(usize, String)> {
    let op_at = text.find(OP)?;
    let op = parse(text)?.operation?;
    op.region?;
    let k = grounding::parse(text)
        .iter()
        .position(|g| g.span.start >= op_at)?;
    let label = [op.action.as_str(), op.target.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    Some((k, label))
}

/// `1. a 2. b` → `["a", "b"]`; text without numbering is one step.
fn split_steps(plan: &str) -> Vec<String> {
    let bytes = plan.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || bytes[i - 1].is_ascii_whitespace();
        if at_word && bytes[i].is_ascii_digit() {
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j < bytes.len()
                && bytes[j] == b'.'
                && (j + 1 == bytes.len() || bytes[j + 1].is_ascii_whitespace())
            {
                starts.push((i, j + 1));
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    if starts.is_empty() {
        return if plan.is_empty() {
            vec![]
        } else {
            vec![plan.to_string()]
        };
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &(_, body))| {
            let end = starts.get(k + 1).map_or(plan.len(), |&(s, _)| s);
            plan[body..end].trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// `[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]`.
fn parse_operation(op: &str) -> Option<GroundedOperation> {
    let op = op.lines().next().unwrap_or("").trim();
    if op.is_empty() {
        return None;
    }
    let region = grounding::parse(op)
        .first()
        .and_then(|g| g.shapes.first().copied());
    let (element, rest) = match op.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((e, rest)) => (Some(e.trim().to_string()), rest),
        None => (None, op),
    };
    let (target, action_part) = match rest.split_once("->") {
        Some((t, a)) => (t.trim().to_string(), a.trim()),
        None => (String::new(), rest.trim()),
    };
    // Drop the location phrase: "… at the box [[…]]" / "… at the point [[…]]" / a bare "[[…]]".
    let cut = ["at the box", "at the point", "[["]
        .iter()
        .filter_map(|m| action_part.find(m))
        .min()
        .unwrap_or(action_part.len());
    let action_part = action_part[..cut].trim();
    let (action, text) = match action_part.split_once(':') {
        Some((a, t)) => (
            a.trim().to_string(),
            Some(t.trim().to_string()).filter(|t| !t.is_empty()),
        ),
        None => (action_part.to_string(), None),
    };
    Some(GroundedOperation {
        element,
        target,
        action,
        text,
        region,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example answer from THUDM's README (CogAgent, "(with grounding)").
    pub(crate) const README: &str = "Plan: 1. Type 'CogVLM' into the Google search bar. 2. Review the search results that appear. \
3. Click on a relevant result to read more about CogVLM or access further resources.\n\
Next Action: Move the cursor to the Google search bar, and type 'CogVLM' into it.\n\
Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]";

    #[test]
    fn readme_example() {
        let a = parse(README).expect("agent answer");
        assert_eq!(a.plan.len(), 3);
        assert_eq!(a.plan[0], "Type 'CogVLM' into the Google search bar.");
        assert!(a.plan[2].starts_with("Click on a relevant result"));
        assert_eq!(
            a.next_action.as_deref(),
            Some("Move the cursor to the Google search bar, and type 'CogVLM' into it.")
        );
        let op = a.operation.expect("operation");
        assert_eq!(op.element.as_deref(), Some("combobox"));
        assert_eq!(op.target, "Search");
        assert_eq!(op.action, "TYPE");
        assert_eq!(op.text.as_deref(), Some("CogVLM"));
        assert_eq!(op.region, Some(Shape::Box([212, 498, 787, 564])));
    }

    #[test]
    fn click_with_a_point_and_no_plan() {
        let a = parse("Next Action: Click the Submit button.\nGrounded Operation: [button] Submit -> CLICK at the point [[505,710]]").unwrap();
        assert!(a.plan.is_empty());
        let op = a.operation.unwrap();
        assert_eq!(
            (
                op.element.as_deref(),
                op.target.as_str(),
                op.action.as_str()
            ),
            (Some("button"), "Submit", "CLICK")
        );
        assert_eq!(op.text, None);
        assert_eq!(op.region, Some(Shape::Point([505, 710])));
    }

    #[test]
    fn action_without_grounding() {
        let a = parse("Plan: 1. Scroll down to find the link.\nNext Action: Scroll down the page.")
            .unwrap();
        assert_eq!(a.plan, vec!["Scroll down to find the link."]);
        assert_eq!(a.operation, None);
        let op = parse("Grounded Operation:[link] 2 pm -> SCROLL_DOWN")
            .unwrap()
            .operation
            .unwrap();
        assert_eq!(
            (op.target.as_str(), op.action.as_str(), op.region),
            ("2 pm", "SCROLL_DOWN", None)
        );
    }

    #[test]
    fn the_operation_group_is_found_and_labelled() {
        assert_eq!(operation_group(README), Some((0, "TYPE Search".into())));
        // A box in the plan comes before the operation's.
        let text = "Plan: 1. Look at [[1,2,3,4]].\nGrounded Operation: [button] OK -> CLICK at the point [[505,710]]";
        assert_eq!(operation_group(text), Some((1, "CLICK OK".into())));
        assert_eq!(operation_group("Plan: 1. Wait [[1,2,3,4]]."), None);
        assert_eq!(
            operation_group("Grounded Operation:[link] x -> SCROLL_DOWN"),
            None
        );
    }

    #[test]
    fn plain_and_malformed_text_never_panics() {
        assert_eq!(parse("A cat sitting on a mat [[100,200,300,400]]."), None);
        for t in [
            "Plan:",
            "Grounded Operation:",
            "Grounded Operation:[",
            "Grounded Operation:[x -> : at the box [[1,2,3",
            "Plan: 12. 3.",
            "Next Action:Plan:",
        ] {
            let _ = parse(t);
        }
        assert_eq!(parse("Plan: just do it").unwrap().plan, vec!["just do it"]);
    }
}
