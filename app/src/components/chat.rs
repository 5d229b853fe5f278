//! The transcript (with each answer's copy / regenerate and each question's edit-and-resend), the composer,
//! the actions (Generate, Stop, Retry, Clear) and the context meter.

use crate::agent_card;
use crate::api::chat;
use crate::components::tasks::TaskBar;
use crate::conversation::record::boxes_json;
use crate::i18n::{t, tr, Lang};
use crate::markdown;
use crate::protocol::{ClientMsg, ErrorKind, Event, GenerateRequest, UploadRef};
use crate::state::{conversation_groups, AppState, Turn, TurnStatus};
use crate::upload;
use futures::StreamExt;
use leptos::prelude::*;
use leptos::server_fn::ServerFnError;
use protocol::grounding;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How long Stop waits for the server's `Done` before dropping the connection itself.
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// Sends `query` as a new turn (with the finished turns before it as history).
pub fn send(state: AppState, query: String) {
    if state.busy.get_untracked() || query.trim().is_empty() {
        return;
    }
    let history: Vec<(String, String)> = state.turns.with_untracked(|turns| {
        turns
            .iter()
            .filter(|t| t.status.with_untracked(TurnStatus::is_answer))
            .map(|t| (t.query.clone(), t.answer.get_untracked()))
            .collect()
    });
    // The image by its page URL: its bytes are read only if it must be uploaded.
    let image = state
        .image
        .with_untracked(|i| i.as_ref().map(|i| i.url.clone()));
    let req: GenerateRequest<UploadRef> = GenerateRequest {
        image: None,
        history,
        query: query.clone(),
        version: Some(state.settings.version.get_untracked()),
        sampling: state.settings.sampling(),
    };
    let turn = state.new_turn(query, String::new(), TurnStatus::Waiting);
    state.turns.update(|t| t.push(turn.clone()));
    state.busy.set(true);
    state.note.set(None);

    let status = turn.status;
    let answer = turn.answer;
    let pending = PendingText::default();
    let shown = pending.clone();
    let run = async move {
        // A second try only when the server forgot the image (it restarted): upload it again.
        for _ in 0..2 {
            let upload = match &image {
                Some(url) => match upload::ensure(state, url).await {
                    Ok(r) => Some(r),
                    Err(message) => {
                        status.set(TurnStatus::Error(message));
                        return;
                    }
                },
                None => None,
            };
            let req = req.with_image(upload);
            let (tx, rx) = futures::channel::mpsc::unbounded::<Result<ClientMsg, ServerFnError>>();
            let _ = tx.unbounded_send(Ok(ClientMsg::Generate(Box::new(req))));
            state.sender.set_value(Some(tx));
            let mut events = match chat(rx.into()).await {
                Ok(events) => events,
                Err(e) => {
                    status.set(TurnStatus::Error(format!(
                        "could not reach the server: {e}"
                    )));
                    return;
                }
            };
            loop {
                let event = match events.next().await {
                    Some(Ok(Event::Token { text })) => {
                        pending.push(&text, answer, status);
                        continue;
                    }
                    Some(Ok(Event::Error {
                        kind: ErrorKind::UploadMissing,
                        ..
                    })) if image.is_some() => {
                        upload::forget(state);
                        break;
                    }
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        Event::error(ErrorKind::Internal, format!("connection lost: {e}"))
                    }
                    None => Event::error(ErrorKind::Internal, "the server closed the connection"),
                };
                pending.flush(answer, status);
                if apply(answer, status, event) {
                    return;
                }
            }
        }
        status.set(TurnStatus::Error(
            "the server forgot the image again right after it was uploaded: try again".into(),
        ));
    };
    let (run, abort) = futures::future::abortable(run);
    state.aborter.set_value(Some(abort));
    leptos::task::spawn_local(async move {
        if run.await.is_err() {
            // Aborted by Stop after the grace period: keep what arrived.
            shown.flush(answer, status);
            status.set(TurnStatus::Stopped);
        }
        state.sender.set_value(None);
        state.aborter.set_value(None);
        state.busy.set(false);
    });
}

/// Answer text received but not yet on the page. The answer is re-rendered (markdown, boxes,
/// scrolling) at most once per animation frame rather than once per token, so a page that
/// renders slower than the model writes never falls behind the stream: Stop and the end of
/// the answer show as soon as the server sends them.
#[derive(Clone, Default)]
struct PendingText(Rc<RefCell<String>>);

impl PendingText {
    /// Adds a piece of the answer; the first piece since the last paint schedules the next one.
    fn push(&self, text: &str, answer: RwSignal<String>, status: RwSignal<TurnStatus>) {
        let first = self.0.borrow().is_empty();
        self.0.borrow_mut().push_str(text);
        if first {
            let this = self.clone();
            request_animation_frame(move || this.flush(answer, status));
        }
    }

    /// Shows the waiting text now (before an event that changes or ends the turn).
    fn flush(&self, answer: RwSignal<String>, status: RwSignal<TurnStatus>) {
        let text = std::mem::take(&mut *self.0.borrow_mut());
        // A frame that comes after the turn ended has nothing left to show.
        if !text.is_empty() && status.with_untracked(TurnStatus::is_active) {
            apply(answer, status, Event::Token { text });
        }
    }
}

/// Applies one server event to a turn's answer and status; true when the turn is over.
/// Live answers and recorded ones (the test hook) both go through here.
pub fn apply(answer: RwSignal<String>, status: RwSignal<TurnStatus>, event: Event) -> bool {
    match event {
        Event::Queued { position, eta_ms } => status.set(TurnStatus::Queued {
            ahead: position,
            eta_ms,
        }),
        Event::Started { .. } => status.set(TurnStatus::Waiting),
        Event::Token { text } => {
            answer.update(|a| a.push_str(&text));
            if !matches!(status.get_untracked(), TurnStatus::Streaming) {
                status.set(TurnStatus::Streaming);
            }
        }
        Event::Done { stats } => {
            status.set(TurnStatus::Done(stats));
            return true;
        }
        Event::Error { message, .. } => {
            status.set(TurnStatus::Error(message));
            return true;
        }
        Event::LoadProgress { .. } | Event::Loaded { .. } => {}
    }
    false
}

/// Shows `query` and a recorded `answer` as a new turn, the answer streamed in word by word
/// through [`apply`] like a live one. Used by the page's test hook only.
pub fn replay(state: AppState, query: String, answer_text: &str) {
    if state.busy.get_untracked() {
        return;
    }
    let turn = state.new_turn(query, String::new(), TurnStatus::Waiting);
    state.turns.update(|t| t.push(turn.clone()));
    for piece in answer_text.split_inclusive(' ') {
        apply(
            turn.answer,
            turn.status,
            Event::Token {
                text: piece.to_string(),
            },
        );
    }
    turn.status.set(TurnStatus::Recorded);
}

/// Asks the server to stop the running generation; drops the connection if it does not
/// answer within [`STOP_GRACE`] (the server then cancels on the closed socket).
pub fn stop(state: AppState) {
    let Some(turn_id) = state.turns.with_untracked(|t| t.last().map(|t| t.id)) else {
        return;
    };
    if !state.busy.get_untracked() {
        return;
    }
    state.sender.with_value(|tx| {
        if let Some(tx) = tx {
            let _ = tx.unbounded_send(Ok(ClientMsg::Stop));
        }
    });
    set_timeout(
        move || {
            let same_turn = state.turns.with_untracked(|t| t.last().map(|t| t.id)) == Some(turn_id);
            if same_turn && state.busy.get_untracked() {
                state.aborter.with_value(|a| {
                    if let Some(a) = a {
                        a.abort();
                    }
                });
            }
        },
        STOP_GRACE,
    );
}

/// Empties the conversation (stopping a running answer first).
pub fn clear(state: AppState) {
    stop(state);
    state.aborter.with_value(|a| {
        if let Some(a) = a {
            a.abort();
        }
    });
    state.turns.set(Vec::new());
    state.hover.set(None);
    state.note.set(None);
}

/// Asks the last question again (replacing its answer).
pub fn retry(state: AppState) {
    if let Some(last) = state.turns.with_untracked(|t| t.last().map(|t| t.id)) {
        resend(state, last, None);
    }
}

/// Asks turn `id`'s question again, or `edited` in its place: that turn and every later one are dropped, and
/// the question goes with the turns before it as history (regenerate, edit-and-resend).
pub fn resend(state: AppState, id: u64, edited: Option<String>) {
    if state.busy.get_untracked() {
        return;
    }
    let Some(at) = state
        .turns
        .with_untracked(|t| t.iter().position(|t| t.id == id))
    else {
        return;
    };
    let query = edited.unwrap_or_else(|| state.turns.with_untracked(|t| t[at].query.clone()));
    if query.trim().is_empty() {
        return;
    }
    state.turns.update(|t| t.truncate(at));
    send(state, query);
}

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
                    {move || t(state, "Copy")}
                </button>
                <Show when=has_boxes>
                    <button class="small" data-action="copy-boxes"
                        on:click=move |_| copy_text(answer.with_untracked(|a| boxes_json(a)), copied)>
                        {move || t(state, "Copy boxes (JSON)")}
                    </button>
                </Show>
                <button class="small" data-action="regenerate"
                    disabled=move || state.busy.get() || state.current_model().is_none()
                    on:click=move |_| resend(state, id, None)>
                    {move || t(state, "Regenerate")}
                </button>
                <span class="copied" role="status">{move || copied.get().map(|m| t(state, m))}</span>
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
            <div class="who">{move || t(state, "You")}</div>
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
                            {move || t(state, "Edit")}
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
                        {move || t(state, "Send")}
                    </button>
                    <button class="small" data-action="cancel-edit" on:click=move |_| editing.set(None)>
                        {move || t(state, "Cancel")}
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
                <div class="who">{move || t(state, "Model")}</div>
                <div class="bubble answer markdown" inner_html=answer_html></div>
                {move || dropped().map(|n| view! {
                    <div class="context-note" role="note">
                        {format!("{n} {}", t(state, "earlier turns left out of the prompt to fit the context"))}
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
                    state,
                    "positions of the checkpoint's context (image, question and answers)"
                )
            );
            view! {
                <div class="context-meter" id="context-meter" title=title>
                    <span>{move || t(state, "Context")}</span>
                    <meter min="0" max=context value=used high=context * 4 / 5></meter>
                    <span class="meter-figures">{format!("{used} / {context}")}</span>
                </div>
            }
        })
    }
}

#[component]
pub fn ChatPanel() -> impl IntoView {
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
        <section class="chat-panel">
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
                        <p class="empty-title">{move || t(state, "Ask about an image")}</p>
                        <p>
                            {move || t(state, "Add an image (button, drag and drop, or paste), then ask a question.")}
                            " "
                            {move || t(state, "Boxes written as")}
                            " " <code>"[[x0,y0,x1,y1]]"</code> " "
                            {move || t(state, "(thousandths of the width and height) in a question or an answer are drawn on the image.")}
                        </p>
                    </div>
                </Show>
                {move || state.note.get().map(|n| view! { <div class="note">{n}</div> })}
                <For each=move || state.turns.get() key=|t| t.id let:turn>
                    <TurnView turn=turn offsets=offsets/>
                </For>
            </div>
            <div class="composer">
                <TaskBar/>
                <textarea
                    id="prompt"
                    rows="3"
                    placeholder=move || t(state, "Ask a question…  (Enter sends, Shift+Enter: new line, Esc: stop)")
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
                        {move || t(state, "Generate")}
                    </button>
                    <button id="stop" disabled=move || !state.busy.get() on:click=move |_| stop(state)>
                        {move || t(state, "Stop")}
                    </button>
                    <button
                        id="retry"
                        disabled=move || state.busy.get() || empty() || state.current_model().is_none()
                        on:click=move |_| retry(state)
                    >
                        {move || t(state, "Retry")}
                    </button>
                    <button id="clear" disabled=empty on:click=move |_| clear(state)>
                        {move || t(state, "Clear")}
                    </button>
                    <ContextMeter/>
                </div>
            </div>
        </section>
    }
}
