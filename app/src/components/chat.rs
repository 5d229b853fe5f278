//! The transcript (with each answer's copy / regenerate and each question's edit-and-resend), the composer,
//! its buttons (Generate, Stop, Retry, Clear: what they do is in [`crate::actions`]) and the context meter.

use crate::actions::{clear, resend, retry, send, stop};
use crate::agent_card;
use crate::components::tasks::TaskBar;
use crate::conversation::record::boxes_json;
use crate::i18n::{t, tr, Lang};
use crate::markdown;
use crate::state::{conversation_groups, AppState, Turn, TurnStatus};
use leptos::prelude::*;
use protocol::grounding;
use std::time::Duration;

fn stats_line(lang: Lang, status: &TurnStatus) -> String {
    let t = |en| tr(lang, en);
    match status {
        TurnStatus::Done(s) => format!(
            "{} · {} {}{} · {} {} · {} {:.0} ms · {} {:.0} ms · {:.1} tok/s · {}",
            s.checkpoint,
            s.prompt_tokens,
            t("prompt tokens"),
            if s.reused_tokens > 0 {
                format!(" ({} {})", s.reused_tokens, t("cached"))
            } else {
                String::new()
            },
            s.generated_tokens,
            t("new"),
            t("prefill"),
            s.prefill_ms,
            t("first token"),
            s.ttft_ms,
            s.tokens_per_s,
            t(s.stop.label())
        ),
        TurnStatus::Queued { ahead: 0, .. } => t("next in the queue…").into(),
        TurnStatus::Queued {
            ahead,
            eta_ms: None,
        } => format!("{}: {ahead} {}…", t("queued"), t("ahead")),
        TurnStatus::Queued {
            ahead,
            eta_ms: Some(ms),
        } => format!(
            "{}: {ahead} {}, {} {:.0} s…",
            t("queued"),
            t("ahead"),
            t("about"),
            (*ms as f64 / 1e3).ceil()
        ),
        TurnStatus::Waiting => t("reading the image and the prompt…").into(),
        TurnStatus::Streaming => t("generating…").into(),
        TurnStatus::Stopped => t("stopped").into(),
        TurnStatus::Recorded => t("recorded answer (test hook)").into(),
        TurnStatus::Error(e) => format!("{}: {e}", t("error")),
    }
}

/// Puts the blinking cursor inside the last paragraph of `html`.
fn with_cursor(mut html: String) -> String {
    const CURSOR: &str = "<span class=\"cursor\" aria-hidden=\"true\"></span>";
    for close in ["</p>", "</li></ul>", "</li></ol>", "</code></pre>"] {
        if html.ends_with(close) {
            html.insert_str(html.len() - close.len(), CURSOR);
            return html;
        }
    }
    html.push_str(CURSOR);
    html
}

/// Hover on a chip highlights its shape on the canvas.
fn chip_index(ev: &leptos::ev::MouseEvent) -> Option<usize> {
    use wasm_bindgen::JsCast;
    let target = ev.target()?.dyn_into::<web_sys::Element>().ok()?;
    let chip = target.closest(".gchip").ok().flatten()?;
    chip.get_attribute("data-g")?.parse().ok()
}

/// Puts `text` on the clipboard; `done` shows that it worked (or the error) for a moment.
fn copy_text(text: String, done: RwSignal<Option<&'static str>>) {
    let Some(clipboard) = web_sys::window().map(|w| w.navigator().clipboard()) else {
        return;
    };
    leptos::task::spawn_local(async move {
        let ok = wasm_bindgen_futures::JsFuture::from(clipboard.write_text(&text))
            .await
            .is_ok();
        done.set(Some(if ok { "Copied" } else { "Could not copy" }));
        set_timeout(move || done.set(None), Duration::from_millis(1500));
    });
}

/// Copy, copy boxes, regenerate under an answer.
#[component]
fn AnswerActions(id: u64, answer: RwSignal<String>, status: RwSignal<TurnStatus>) -> impl IntoView {
    let state = expect_context::<AppState>();
    let copied = RwSignal::new(None::<&'static str>);
    let has_boxes = move || answer.with(|a| !grounding::parse(a).is_empty());
    let idle = move || !status.with(TurnStatus::is_active);
    view! {
        <Show when=idle>
            <div class="answer-actions">
                <button class="small" data-action="copy" on:click=move |_| copy_text(answer.get_untracked(), copied)>
                    {move || t(state.lang, "Copy")}
                </button>
                <Show when=has_boxes>
                    <button class="small" data-action="copy-boxes"
                        on:click=move |_| copy_text(answer.with_untracked(|a| boxes_json(a)), copied)>
                        {move || t(state.lang, "Copy boxes (JSON)")}
                    </button>
                </Show>
                <button class="small" data-action="regenerate"
                    disabled=move || state.busy.get() || state.current_model().is_none()
                    on:click=move |_| resend(state, id, None)>
                    {move || t(state.lang, "Regenerate")}
                </button>
                <span class="copied" role="status">{move || copied.get().map(|m| t(state.lang, m))}</span>
            </div>
        </Show>
    }
}

/// The question, with Edit: an inline editor whose Send drops this turn and the later ones.
#[component]
fn QuestionView(
    id: u64,
    query: String,
    offsets: Memo<std::collections::HashMap<u64, (usize, usize)>>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let editing = RwSignal::new(None::<String>);
    let shown = query.clone();
    let query_html = move || {
        let (q, _) = offsets.with(|o| o.get(&id).copied().unwrap_or_default());
        markdown::render_plain(&shown, q).html
    };
    let resend_edit = move || {
        if let Some(text) = editing.get_untracked() {
            editing.set(None);
            resend(state, id, Some(text));
        }
    };
    view! {
        <div class="msg user">
            <div class="who">{move || t(state.lang, "You")}</div>
            <Show
                when=move || editing.with(Option::is_some)
                fallback=move || view! {
                    <div class="bubble" inner_html=query_html.clone()></div>
                    <div class="question-actions">
                        <button class="small" data-action="edit"
                            disabled=move || state.busy.get()
                            on:click={
                                let query = query.clone();
                                move |_| editing.set(Some(query.clone()))
                            }>
                            {move || t(state.lang, "Edit")}
                        </button>
                    </div>
                }
            >
                <textarea class="edit-question" rows="3"
                    prop:value=move || editing.get().unwrap_or_default()
                    on:input=move |ev| editing.set(Some(event_target_value(&ev)))
                    on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
                            ev.prevent_default();
                            resend_edit();
                        } else if ev.key() == "Escape" {
                            editing.set(None);
                        }
                    }
                ></textarea>
                <div class="question-actions">
                    <button class="small primary" data-action="send-edit"
                        disabled=move || state.busy.get() || state.current_model().is_none()
                        on:click=move |_| resend_edit()>
                        {move || t(state.lang, "Send")}
                    </button>
                    <button class="small" data-action="cancel-edit" on:click=move |_| editing.set(None)>
                        {move || t(state.lang, "Cancel")}
                    </button>
                </div>
            </Show>
        </div>
    }
}

#[component]
fn TurnView(
    turn: Turn,
    offsets: Memo<std::collections::HashMap<u64, (usize, usize)>>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let id = turn.id;
    let answer = turn.answer;
    let status = turn.status;
    let answer_html = move || {
        let (_, a) = offsets.with(|o| o.get(&id).copied().unwrap_or_default());
        // An agent answer (Plan / Next Action / Grounded Operation) renders as a card.
        let html = answer.with(|text| {
            agent_card::render(text, a, state.lang.get())
                .unwrap_or_else(|| markdown::render_markdown(text, a).html)
        });
        if status.with(TurnStatus::is_active) {
            with_cursor(html)
        } else {
            html
        }
    };
    let status_class = move || match status.get() {
        TurnStatus::Done(_) => "stats done",
        TurnStatus::Error(_) => "stats error",
        TurnStatus::Stopped | TurnStatus::Recorded => "stats stopped",
        _ => "stats active",
    };
    // Earlier turns left out of this answer's prompt to fit the context.
    let dropped = move || match status.get() {
        TurnStatus::Done(s) if s.dropped_turns > 0 => Some(s.dropped_turns),
        _ => None,
    };
    view! {
        <div class="turn" data-turn=id>
            <QuestionView id=id query=turn.query.clone() offsets=offsets/>
            <div class="msg bot" class:streaming=move || status.with(TurnStatus::is_active)>
                <div class="who">{move || t(state.lang, "Model")}</div>
                <div class="bubble answer markdown" inner_html=answer_html></div>
                {move || dropped().map(|n| view! {
                    <div class="context-note" role="note">
                        {format!("{n} {}", t(state.lang, "earlier turns left out of the prompt to fit the context"))}
                    </div>
                })}
                <div class=status_class>{move || status.with(|s| stats_line(state.lang.get(), s))}</div>
                <AnswerActions id=id answer=answer status=status/>
            </div>
        </div>
    }
}

/// How much of the context the conversation uses: the last answer's prompt and new tokens.
#[component]
fn ContextMeter() -> impl IntoView {
    let state = expect_context::<AppState>();
    let usage = move || {
        state.turns.with(|turns| {
            turns.iter().rev().find_map(|t| match t.status.get() {
                TurnStatus::Done(s) if s.context > 0 => {
                    Some((s.prompt_tokens + s.generated_tokens, s.context))
                }
                _ => None,
            })
        })
    };
    move || {
        usage().map(|(used, context)| {
            let title = format!(
                "{used} / {context} {}",
                t(
                    state.lang,
                    "positions of the checkpoint's context (image, question and answers)"
                )
            );
            view! {
                <div class="context-meter" id="context-meter" title=title>
                    <span>{move || t(state.lang, "Context")}</span>
                    <meter min="0" max=context value=used high=context * 4 / 5></meter>
                    <span class="meter-figures">{format!("{used} / {context}")}</span>
                </div>
            }
        })
    }
}

#[component]
pub fn ChatPanel() -> impl IntoView {
    view! {
        <section class="chat-panel">
            <Transcript/>
            <Composer/>
        </section>
    }
}

/// The turns (or, before the first, how to start), kept scrolled to the newest text while it streams.
#[component]
fn Transcript() -> impl IntoView {
    let state = expect_context::<AppState>();
    let offsets = Memo::new(move |_| state.turns.with(|t| conversation_groups(t).1));
    let transcript = NodeRef::<leptos::html::Div>::new();

    // Keep the newest text in view while streaming.
    Effect::new(move |_| {
        state.turns.with(|turns| {
            if let Some(last) = turns.last() {
                last.answer.track();
            }
        });
        if let Some(el) = transcript.get() {
            el.set_scroll_top(el.scroll_height());
        }
    });
    let empty = move || state.turns.with(Vec::is_empty);

    // Chips of the hovered group (in the text or on the canvas) light up. A style rule rather
    // than a class, because the answers' HTML is replaced as it streams.
    let hot_chip_css = move || {
        state
            .hover
            .get()
            .map(|i| format!(".gchip[data-g=\"{i}\"] {{ background: color-mix(in srgb, var(--gc) 40%, transparent); outline: 2px solid var(--gc); }}"))
            .unwrap_or_default()
    };

    view! {
        <style id="hot-chip" inner_html=hot_chip_css></style>
        <div
            class="transcript"
            id="transcript"
            node_ref=transcript
            on:mouseover=move |ev| state.hover.set(chip_index(&ev))
            on:mouseleave=move |_| state.hover.set(None)
        >
            <Show when=empty>
                <div class="empty">
                    <p class="empty-title">{move || t(state.lang, "Ask about an image")}</p>
                    <p>
                        {move || t(state.lang, "Add an image (button, drag and drop, or paste), then ask a question.")}
                        " "
                        {move || t(state.lang, "Boxes written as")}
                        " " <code>"[[x0,y0,x1,y1]]"</code> " "
                        {move || t(state.lang, "(thousandths of the width and height) in a question or an answer are drawn on the image.")}
                    </p>
                </div>
            </Show>
            {move || state.note.get().map(|n| view! { <div class="note">{n}</div> })}
            <For each=move || state.turns.get() key=|t| t.id let:turn>
                <TurnView turn=turn offsets=offsets/>
            </For>
        </div>
    }
}

/// The task pickers, the question box (Enter sends, Esc stops) and the buttons.
#[component]
fn Composer() -> impl IntoView {
    let state = expect_context::<AppState>();
    let can_send = move || {
        !state.busy.get()
            && !state.draft.with(|d| d.trim().is_empty())
            && state.loading.with(Option::is_none)
            && state.current_model().is_some()
    };
    let submit = move || {
        if can_send() {
            let query = state.draft.get_untracked();
            state.draft.set(String::new());
            send(state, query);
        }
    };
    let on_keydown = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
            ev.prevent_default();
            submit();
        } else if ev.key() == "Escape" {
            stop(state);
        }
    };
    let empty = move || state.turns.with(Vec::is_empty);

    view! {
        <div class="composer">
            <TaskBar/>
            <textarea
                id="prompt"
                rows="3"
                placeholder=move || t(state.lang, "Ask a question…  (Enter sends, Shift+Enter: new line, Esc: stop)")
                prop:value=move || state.draft.get()
                on:input=move |ev| state.draft.set(event_target_value(&ev))
                on:keydown=on_keydown
            ></textarea>
            <div class="actions">
                <button
                    id="generate"
                    class="primary"
                    disabled=move || !can_send()
                    on:click=move |_| submit()
                >
                    {move || t(state.lang, "Generate")}
                </button>
                <button id="stop" disabled=move || !state.busy.get() on:click=move |_| stop(state)>
                    {move || t(state.lang, "Stop")}
                </button>
                <button
                    id="retry"
                    disabled=move || state.busy.get() || empty() || state.current_model().is_none()
                    on:click=move |_| retry(state)
                >
                    {move || t(state.lang, "Retry")}
                </button>
                <button id="clear" disabled=empty on:click=move |_| clear(state)>
                    {move || t(state.lang, "Clear")}
                </button>
                <ContextMeter/>
            </div>
        </div>
    }
}
