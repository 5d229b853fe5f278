//! A CogAgent answer as a card: plan steps, next action and the grounded operation (action,
//! target, typed text, and the chip of its box, which the image panel draws on the screenshot).
//!
//! HTML built here like [`crate::markdown`]'s: every piece of model text is escaped. The raw
//! answer follows in a collapsed block, so nothing the parser skipped is hidden.

use crate::agent::{self, AgentAnswer};
use crate::i18n::{tr, Lang};
use crate::markdown::{chip, escape, render_markdown};
use protocol::grounding;

/// The card for `text` if it is an agent answer (see [`agent::parse`]), else `None`. Groups are
/// numbered from `first_group`, like the rest of the answer's chips.
/// Headings in `lang`.
pub fn render(text: &str, first_group: usize, lang: Lang) -> Option<String> {
    let answer = agent::parse(text)?;
    let mut out = String::from("<div class=\"agent-card\">");
    plan(&answer, lang, &mut out);
    if let Some(next) = &answer.next_action {
        out.push_str(&format!(
            "<section><h4>{}</h4><p class=\"agent-next\">",
            tr(lang, "Next action")
        ));
        out.push_str(&escape(next));
        out.push_str("</p></section>");
    }
    operation(text, &answer, first_group, lang, &mut out);
    out.push_str(&format!(
        "</div><details class=\"agent-raw\"><summary>{}</summary>",
        tr(lang, "Raw answer")
    ));
    out.push_str(&render_markdown(text, first_group).html);
    out.push_str("</details>");
    Some(out)
}

fn plan(answer: &AgentAnswer, lang: Lang, out: &mut String) {
    if answer.plan.is_empty() {
        return;
    }
    out.push_str(&format!(
        "<section><h4>{}</h4><ol class=\"agent-plan\">",
        tr(lang, "Plan")
    ));
    for step in &answer.plan {
        out.push_str("<li>");
        out.push_str(&escape(step));
        out.push_str("</li>");
    }
    out.push_str("</ol></section>");
}

fn operation(text: &str, answer: &AgentAnswer, first_group: usize, lang: Lang, out: &mut String) {
    let Some(op) = &answer.operation else {
        return;
    };
    out.push_str(&format!(
        "<section class=\"agent-op\"><h4>{}</h4><dl>",
        tr(lang, "Grounded operation")
    ));
    let row = |out: &mut String, class: &str, name: &'static str, value: &str| {
        out.push_str(&format!(
            "<dt>{}</dt><dd class=\"{class}\">{}</dd>",
            tr(lang, name),
            escape(value)
        ));
    };
    row(out, "agent-action", "Action", &op.action);
    if !op.target.is_empty() || op.element.is_some() {
        out.push_str(&format!(
            "<dt>{}</dt><dd class=\"agent-target\">",
            tr(lang, "Target")
        ));
        if let Some(element) = &op.element {
            out.push_str(&format!(
                "<span class=\"agent-element\">{}</span> ",
                escape(element)
            ));
        }
        out.push_str(&escape(&op.target));
        out.push_str("</dd>");
    }
    if let Some(typed) = &op.text {
        row(out, "agent-text", "Text", typed);
    }
    if let Some((k, label)) = agent::operation_group(text) {
        if let Some(mut g) = grounding::parse(text).into_iter().nth(k) {
            let raw = text[g.span.clone()].to_string();
            g.label = Some(label);
            out.push_str(&format!(
                "<dt>{}</dt><dd class=\"agent-where\">",
                tr(lang, "Where")
            ));
            out.push_str(&chip(first_group + k, &g, &raw));
            out.push_str("</dd>");
        }
    }
    out.push_str("</dl></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::agent::tests::README;

    #[test]
    fn readme_answer_card() {
        let html = render(README, 4, Lang::En).expect("an agent answer");
        assert_eq!(html.matches("<li>").count(), 3);
        assert!(html.contains("<li>Type &#39;CogVLM&#39; into the Google search bar.</li>"));
        assert!(html.contains("<p class=\"agent-next\">Move the cursor"));
        assert!(html.contains("<dd class=\"agent-action\">TYPE</dd>"));
        assert!(html.contains(
            "<dd class=\"agent-target\"><span class=\"agent-element\">combobox</span> Search</dd>"
        ));
        assert!(html.contains("<dd class=\"agent-text\">CogVLM</dd>"));
        // The operation's chip carries the answer's group number (4 before it, 0-based).
        assert!(html.contains(
            "<dd class=\"agent-where\"><span class=\"gchip\" data-g=\"4\" style=\"--gc:#0072B2\" title=\"TYPE Search\"><b>5</b><code>[[212,498,787,564]]</code></span></dd>"
        ));
        assert!(html.contains("<details class=\"agent-raw\">"));
    }

    #[test]
    fn partial_and_plain_answers() {
        // While streaming: only the plan so far.
        let html = render("Plan: 1. Open the <menu>", 0, Lang::En).unwrap();
        assert!(html.contains("<li>Open the &lt;menu&gt;</li>"));
        assert!(!html.contains("agent-op"));
        // An operation without a box has no chip.
        let html = render("Grounded Operation:[link] 2 pm -> SCROLL_DOWN", 0, Lang::En).unwrap();
        assert!(html.contains("<dd class=\"agent-action\">SCROLL_DOWN</dd>"));
        assert!(!html.contains("gchip"));
        assert_eq!(render("A cat [[1,2,3,4]].", 0, Lang::En), None);
    }
}
