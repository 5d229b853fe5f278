//! The task picker above the composer (Chat · Describe with boxes · Find an object · Describe a
//! region · GUI agent): fills the prompt from one of THUDM's templates and says which
//! checkpoint suits the task, without switching to it.
//!
//! The draft is the one source of truth for regions: a drawn region is written into it, and
//! the regions listed under the image are the draft's boxes.

use crate::actions::switch_model;
use crate::i18n::t as tx;
use crate::state::AppState;
use crate::tasks::{fill, Task, TaskInput};
use leptos::prelude::*;
use protocol::grounding::{self, Shape};

/// The boxes written in `draft` so far, in order.
pub fn draft_regions(draft: &str) -> Vec<Shape> {
    grounding::parse(draft)
        .into_iter()
        .flat_map(|g| g.shapes)
        .filter(|s| matches!(s, Shape::Box(_)))
        .collect()
}

/// Rewrites the draft from the task's template and inputs (Chat leaves the draft alone).
fn refill(state: AppState, regions: Vec<Shape>) {
    let t = state.tasks;
    let task = t.task.get_untracked();
    if task == Task::Chat {
        return;
    }
    let input = TaskInput {
        text: t.text.get_untracked(),
        regions,
        with_grounding: t.with_grounding.get_untracked(),
    };
    state.draft.set(fill(task, t.template_index(), &input));
}

fn refill_keeping_regions(state: AppState) {
    let regions = state.draft.with_untracked(|d| draft_regions(d));
    refill(state, regions);
}

fn select_task(state: AppState, task: Task) {
    let t = state.tasks;
    t.task.set(task);
    t.chosen.set(None);
    t.random.set(task.pick(js_sys::Math::random()));
    refill_keeping_regions(state);
}

/// `draft` with `region` appended as `[[x0,y0,x1,y1]]`, a space before it if needed.
fn with_region(draft: &str, region: Shape) -> String {
    let mut out = draft.to_string();
    if !out.is_empty() && !out.ends_with(char::is_whitespace) {
        out.push(' ');
    }
    out.push_str(&grounding::format_group(&[region]));
    out
}

/// `draft` without its `k`-th grounding group (and the space before it), if it has one.
fn without_group(draft: &str, k: usize) -> Option<String> {
    let span = grounding::parse(draft).get(k)?.span.clone();
    let start = if draft[..span.start].ends_with(' ') {
        span.start - 1
    } else {
        span.start
    };
    Some(format!("{}{}", &draft[..start], &draft[span.end..]))
}

/// A region drawn on the image: "describe a region" re-fills its template with every region;
/// any other task gets `[[x0,y0,x1,y1]]` appended to the draft.
pub fn add_region(state: AppState, region: Shape) {
    if state.tasks.task.get_untracked() == Task::DescribeRegion {
        let mut regions = state.draft.with_untracked(|d| draft_regions(d));
        regions.push(region);
        refill(state, regions);
    } else {
        state.draft.update(|d| *d = with_region(d, region));
    }
}

/// Removes the `k`-th grounding group of the draft ("describe a region": re-fills the
/// template with the other regions).
pub fn remove_group(state: AppState, k: usize) {
    let draft = state.draft.get_untracked();
    if state.tasks.task.get_untracked() == Task::DescribeRegion {
        let regions = without_group(&draft, k)
            .map(|rest| draft_regions(&rest))
            .unwrap_or_else(|| draft_regions(&draft));
        refill(state, regions);
    } else if let Some(rest) = without_group(&draft, k) {
        state.draft.set(rest);
    }
}

/// Which checkpoint suits the task, with a button to switch when one is in the models folder.
#[component]
fn Suggestion() -> impl IntoView {
    let state = expect_context::<AppState>();
    move || {
        let suits = state.tasks.task.get().suits();
        let wanted = suits.wanted()?;
        state.models.with(|m| {
            let m = m.as_ref()?;
            if let Some(c) = m.current_checkpoint().filter(|c| suits.accepts(c)) {
                let text = format!("{} {} {}", tx(state.lang, "The loaded checkpoint,"), c.name, tx(state.lang, "suits this task."));
                return Some(view! { <p class="task-suggest ok" id="task-suggest">{text}</p> }.into_any());
            }
            Some(match suits.best(&m.checkpoints) {
                Some(c) => {
                    let name = c.name.clone();
                    let label = format!("{} {name}", tx(state.lang, "Switch to"));
                    view! {
                        <p class="task-suggest" id="task-suggest">
                            {tx(state.lang, "This task suits THUDM's")} " " <code>{wanted}</code> "; "
                            <code>{name.clone()}</code> " " {tx(state.lang, "is in the models folder.")} " "
                            <button
                                class="small"
                                id="task-switch"
                                disabled=move || state.busy.get() || state.loading.with(Option::is_some)
                                on:click=move |_| switch_model(state, name.clone())
                            >
                                {label}
                            </button>
                        </p>
                    }
                    .into_any()
                }
                None => view! {
                    <p class="task-suggest" id="task-suggest">
                        {tx(state.lang, "This task suits THUDM's")} " " <code>{wanted}</code>
                        {tx(state.lang, ", which is not in the models folder: the loaded checkpoint may not follow the template.")}
                    </p>
                }
                .into_any(),
            })
        })
    }
}

/// The task's own inputs: the phrase to find, the agent's task, or a hint to draw regions.
#[component]
fn TaskInputs() -> impl IntoView {
    let state = expect_context::<AppState>();
    let t = state.tasks;
    let text_input = move |placeholder: &'static str| {
        view! {
            <input
                type="text"
                id="task-text"
                placeholder=move || tx(state.lang, placeholder)
                prop:value=move || t.text.get()
                on:input=move |ev| {
                    t.text.set(event_target_value(&ev));
                    refill_keeping_regions(state);
                }
            />
        }
    };
    move || {
        match t.task.get() {
        Task::FindObject => text_input("the object to find, e.g. the red cup").into_any(),
        Task::Agent => view! {
            {text_input("the task, e.g. Search for CogVLM")}
            <label class="task-check">
                <input
                    type="checkbox"
                    id="task-grounding"
                    prop:checked=move || t.with_grounding.get()
                    on:change=move |ev| {
                        t.with_grounding.set(event_target_checked(&ev));
                        refill_keeping_regions(state);
                    }
                />
                {move || tx(state.lang, "with grounding")}
            </label>
        }
        .into_any(),
        Task::DescribeRegion => view! {
            <span class="task-hint">{move || tx(state.lang, "Drag on the image to mark one or more regions.")}</span>
        }
        .into_any(),
        Task::Chat | Task::DescribeWithBoxes => ().into_any(),
    }
    }
}

/// Random or chosen template of the task.
#[component]
fn TemplatePicker() -> impl IntoView {
    let state = expect_context::<AppState>();
    let t = state.tasks;
    let options = move || {
        t.task
            .get()
            .templates()
            .iter()
            .enumerate()
            .map(|(i, text)| {
                view! { <option value=i.to_string()>{format!("{}. {text}", i + 1)}</option> }
            })
            .collect_view()
    };
    view! {
        <select
            id="task-template"
            aria-label=move || tx(state.lang, "Template")
            prop:value=move || t.chosen.get().map_or("random".to_string(), |i| i.to_string())
            on:change=move |ev| {
                let value = event_target_value(&ev);
                t.chosen.set(value.parse().ok());
                refill_keeping_regions(state);
            }
        >
            <option value="random">{move || tx(state.lang, "Random template")}</option>
            {options}
        </select>
        <button
            class="small"
            id="task-another"
            title=move || tx(state.lang, "Another random template")
            on:click=move |_| {
                let task = t.task.get_untracked();
                t.chosen.set(None);
                t.random.set(task.pick(js_sys::Math::random()));
                refill_keeping_regions(state);
            }
        >
            {move || tx(state.lang, "Another")}
        </button>
    }
}

#[component]
pub fn TaskBar() -> impl IntoView {
    let state = expect_context::<AppState>();
    let t = state.tasks;
    view! {
        <div class="taskbar">
            <div class="task-tabs" role="tablist" aria-label=move || tx(state.lang, "Task")>
                {Task::ALL
                    .into_iter()
                    .map(|task| {
                        view! {
                            <button
                                role="tab"
                                class="task-tab"
                                id=format!("task-{}", task.id())
                                class:active=move || t.task.get() == task
                                aria-selected=move || (t.task.get() == task).to_string()
                                on:click=move |_| select_task(state, task)
                            >
                                {move || tx(state.lang, task.label())}
                            </button>
                        }
                    })
                    .collect_view()}
            </div>
            <Show when=move || t.task.get() != Task::Chat>
                <div class="task-options">
                    <TaskInputs/>
                    <TemplatePicker/>
                </div>
                <Suggestion/>
            </Show>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_appended_and_removed_as_text() {
        let a = Shape::Box([86, 540, 400, 760]);
        let draft = with_region("What is in", a);
        assert_eq!(draft, "What is in [[086,540,400,760]]");
        let draft = with_region(&(draft + "? And "), Shape::Box([0, 0, 999, 999]));
        assert_eq!(
            draft,
            "What is in [[086,540,400,760]]? And [[000,000,999,999]]"
        );
        assert_eq!(with_region("", a), "[[086,540,400,760]]");
        assert_eq!(draft_regions(&draft), vec![a, Shape::Box([0, 0, 999, 999])]);
        assert_eq!(
            without_group(&draft, 0).as_deref(),
            Some("What is in? And [[000,000,999,999]]")
        );
        assert_eq!(
            without_group(&draft, 1).as_deref(),
            Some("What is in [[086,540,400,760]]? And")
        );
        assert_eq!(without_group(&draft, 2), None);
        // Points are not regions.
        assert!(draft_regions("tap [[500,500]]").is_empty());
    }
}
