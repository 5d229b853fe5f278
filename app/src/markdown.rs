//! A small, safe markdown renderer for answers, with grounding chips.
//!
//! Every piece of input text is HTML-escaped; the only tags in the output are the ones written
//! here (p, br, h3–h6, ul/ol/li, blockquote, pre/code, strong, em, span.gchip). Links and raw HTML
//! are shown as text. Each `[[...]]` grounding group (see [`protocol::grounding`]) becomes a chip
//! numbered and coloured like its shape on the image canvas.

use protocol::grounding::{self, Grounding};

/// Rendered HTML and the number of grounding groups it contains.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rendered {
    pub html: String,
    pub groups: usize,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn chip(index: usize, g: &Grounding, raw: &str) -> String {
    let label = g.label.as_deref().unwrap_or("");
    format!(
        "<span class=\"gchip\" data-g=\"{index}\" style=\"--gc:{}\" title=\"{}\"><b>{}</b><code>{}</code></span>",
        crate::palette::colour(index),
        escape(label),
        index + 1,
        escape(raw)
    )
}

/// One line of text without block structure: inline markdown (when `markdown`) and chips.
fn line_html(line: &str, next_group: &mut usize, markdown: bool, out: &mut String) {
    let mut pos = 0;
    for g in grounding::parse(line) {
        let before = &line[pos..g.span.start];
        if markdown {
            inline(before, out);
        } else {
            out.push_str(&escape(before));
        }
        out.push_str(&chip(*next_group, &g, &line[g.span.clone()]));
        *next_group += 1;
        pos = g.span.end;
    }
    if markdown {
        inline(&line[pos..], out);
    } else {
        out.push_str(&escape(&line[pos..]));
    }
}

/// Inline markdown: `code`, **strong**, *em*. Unclosed markers are literal text.
fn inline(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(i) = rest.find(['`', '*']) {
        out.push_str(&escape(&rest[..i]));
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix('`') {
            if let Some(end) = after.find('`') {
                out.push_str("<code>");
                out.push_str(&escape(&after[..end]));
                out.push_str("</code>");
                rest = &after[end + 1..];
                continue;
            }
        } else if let Some(after) = tail.strip_prefix("**") {
            if let Some(end) = after.find("**").filter(|&e| e > 0) {
                out.push_str("<strong>");
                inline(&after[..end], out);
                out.push_str("</strong>");
                rest = &after[end + 2..];
                continue;
            }
        } else if let Some(after) = tail.strip_prefix('*') {
            let opens = after.chars().next().is_some_and(|c| !c.is_whitespace());
            if let Some(end) = after.find('*').filter(|&e| opens && e > 0) {
                if !after[..end].ends_with(char::is_whitespace) {
                    out.push_str("<em>");
                    out.push_str(&escape(&after[..end]));
                    out.push_str("</em>");
                    rest = &after[end + 1..];
                    continue;
                }
            }
        }
        // A literal marker character.
        out.push_str(&escape(&tail[..1]));
        rest = &tail[1..];
    }
    out.push_str(&escape(rest));
}

#[derive(PartialEq)]
enum Block {
    None,
    Para,
    Ul,
    Ol,
    Quote,
    Code,
}

fn close(block: &mut Block, out: &mut String) {
    out.push_str(match block {
        Block::None => "",
        Block::Para => "</p>",
        Block::Ul => "</ul>",
        Block::Ol => "</ol>",
        Block::Quote => "</blockquote>",
        Block::Code => "</code></pre>",
    });
    *block = Block::None;
}

fn ordered_item(line: &str) -> Option<&str> {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    line[digits..]
        .strip_prefix(". ")
        .or_else(|| line[digits..].strip_prefix(") "))
}

/// One `<li>` of a `kind` list (`Block::Ul` or `Block::Ol`), opening the list unless it is the current block.
fn list_item(block: &mut Block, out: &mut String, kind: Block, item: &str, next: &mut usize) {
    if *block != kind {
        close(block, out);
        out.push_str(if kind == Block::Ol { "<ol>" } else { "<ul>" });
        *block = kind;
    }
    out.push_str("<li>");
    line_html(item, next, true, out);
    out.push_str("</li>");
}

/// A code fence's language, kept to the characters a language name has (it goes into an attribute).
fn fence_lang(after_fence: &str) -> String {
    after_fence
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '+')
        .collect()
}

/// Renders an answer. Group numbers start at `first_group` (the count of groups in the
/// messages before this one), so chips match the canvas.
pub fn render_markdown(text: &str, first_group: usize) -> Rendered {
    let mut out = String::with_capacity(text.len() * 2);
    let mut next = first_group;
    let mut block = Block::None;
    for line in text.split('\n') {
        let trimmed = line.trim_start();
        if block == Block::Code {
            if trimmed.starts_with("```") {
                close(&mut block, &mut out);
            } else {
                // Groups inside code are counted (they are drawn) but shown as written.
                next += grounding::parse(line).len();
                out.push_str(&escape(line));
                out.push('\n');
            }
            continue;
        }
        if let Some(lang) = trimmed.strip_prefix("```") {
            close(&mut block, &mut out);
            out.push_str(&format!("<pre><code data-lang=\"{}\">", fence_lang(lang)));
            block = Block::Code;
            continue;
        }
        if trimmed.is_empty() {
            close(&mut block, &mut out);
            continue;
        }
        let hashes = trimmed.bytes().take_while(|&b| b == b'#').count();
        if (1..=4).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            close(&mut block, &mut out);
            // `#` is the answer's top level: <h3> under the page's own headings.
            let level = hashes + 2;
            out.push_str(&format!("<h{level}>"));
            line_html(trimmed[hashes..].trim(), &mut next, true, &mut out);
            out.push_str(&format!("</h{level}>"));
            continue;
        }
        let bullet = ["- ", "* ", "+ "]
            .iter()
            .find_map(|b| trimmed.strip_prefix(b));
        if let Some(item) = bullet {
            list_item(&mut block, &mut out, Block::Ul, item, &mut next);
            continue;
        }
        if let Some(item) = ordered_item(trimmed) {
            list_item(&mut block, &mut out, Block::Ol, item, &mut next);
            continue;
        }
        if let Some(quoted) = trimmed.strip_prefix('>') {
            if block != Block::Quote {
                close(&mut block, &mut out);
                out.push_str("<blockquote>");
                block = Block::Quote;
            } else {
                out.push_str("<br>");
            }
            line_html(quoted.trim_start(), &mut next, true, &mut out);
            continue;
        }
        if block == Block::Para {
            out.push_str("<br>");
        } else {
            close(&mut block, &mut out);
            out.push_str("<p>");
            block = Block::Para;
        }
        line_html(line, &mut next, true, &mut out);
    }
    close(&mut block, &mut out);
    Rendered {
        html: out,
        groups: next - first_group,
    }
}

/// Renders a question: plain text (escaped, line breaks kept) with chips.
pub fn render_plain(text: &str, first_group: usize) -> Rendered {
    let mut out = String::with_capacity(text.len() + 16);
    let mut next = first_group;
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str("<br>");
        }
        line_html(line, &mut next, false, &mut out);
    }
    Rendered {
        html: out,
        groups: next - first_group,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        let r = render_markdown("<script>alert('x')</script> & <b>hi</b>", 0);
        assert!(!r.html.contains("<script"));
        assert!(!r.html.contains("<b>"));
        assert!(r
            .html
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp;"));
        let r = render_plain("<img src=x onerror=alert(1)>", 0);
        assert_eq!(r.html, "&lt;img src=x onerror=alert(1)&gt;");
    }

    #[test]
    fn blocks_and_inline() {
        let r = render_markdown(
            "# Title\nSome **bold** and *em* and `a<b`.\nnext line\n\n- one\n- two\n\n1. first\n2) second\n> quoted",
            0,
        );
        assert_eq!(
            r.html,
            "<h3>Title</h3><p>Some <strong>bold</strong> and <em>em</em> and <code>a&lt;b</code>.<br>next line</p>\
             <ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol><blockquote>quoted</blockquote>"
        );
    }

    #[test]
    fn code_fences_keep_text_verbatim_even_unclosed() {
        let r = render_markdown("```rust\nlet x = **y** < 1;\n", 0);
        assert_eq!(
            r.html,
            "<pre><code data-lang=\"rust\">let x = **y** &lt; 1;\n\n</code></pre>"
        );
    }

    #[test]
    fn lone_markers_are_literal() {
        assert_eq!(
            render_markdown("2 * 3 * 4 and a ` tick", 0).html,
            "<p>2 * 3 * 4 and a ` tick</p>"
        );
        assert_eq!(render_markdown("**", 0).html, "<p>**</p>");
        assert_eq!(render_markdown("*", 0).html, "<p>*</p>");
    }

    #[test]
    fn chips_are_numbered_from_the_offset() {
        let r = render_markdown("A cat[[1,2,3,4]] and a dog[[5,6,7,8;1,1]].", 3);
        assert_eq!(r.groups, 2);
        assert!(r.html.contains("data-g=\"3\""));
        assert!(r.html.contains("data-g=\"4\""));
        assert!(r.html.contains("<b>4</b><code>[[1,2,3,4]]</code>"));
        assert!(r.html.contains("title=\"cat\""));
        let q = render_plain("what is at [[086,540,400,760]]?", 0);
        assert_eq!(q.groups, 1);
        assert!(q.html.starts_with("what is at <span class=\"gchip\""));
    }

    #[test]
    fn group_counts_match_the_parser() {
        let text = "x [[1,2]]\n```\n[[3,4]]\n```\n- [[5,6,7,8]] y";
        assert_eq!(
            render_markdown(text, 0).groups,
            grounding::parse(text).len()
        );
    }
}
