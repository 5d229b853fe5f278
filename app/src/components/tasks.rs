//! The task picker above the composer (Chat · Describe with boxes · Find an object · Describe a
//! region · GUI agent): fills the prompt from one of THUDM's templates and says which
//! checkpoint suits the task, without switching to it.
//!
//! The draft is the one source of truth for regions: a drawn region is written into it, and
//! the regions listed under the image are the draft's boxes.

use crate::components::settings::{current_info, switch_model};
use crate::grounding::{self, Shape};
use crate::state::AppState;
use crate::tasks::{fill, Task, TaskInput};
use leptos::prelude::*;

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

/// A region drawn on the image: "describe a region" re-fills its template with every region;
/// any other task gets `[[x0,y0,x1,y1]]` appended to the draft.
pub fn add_region(state: AppState, region: Shape) {
    if state.tasks.task.get_untracked() == Task::DescribeRegion {
        let mut regions = state.draft.with_untracked(|d| draft_regions(d));
        regions.push(region);
        refill(state, regions);
    } else {
        state.draft.update(|d| {
            if !d.is_empty() && !d.ends_with(char::is_whitespace) {
                d.push(' ');
            }
            d.push_str(&grounding::format_group(&[region]));
        });
    }
}

/// Removes the `k`-th grounding group of the draft.
pub fn remove_group(state: AppState, k: usize) {
    let draft = state.draft.get_untracked();
    let groups = grounding::parse(&draft);
    let Some(group) = groups.get(k) else {
        return;
    };
    if state.tasks.task.get_untracked() == Task::DescribeRegion {
        let regions = groups
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .flat_map(|(_, g)| g.shapes.iter().copied())
            .filter(|s| matches!(s, Shape::Box(_)))
            .collect();
        refill(state, regions);
    } else {
        // Take one space before the group with it, so no double spaces are left.
        let start = if draft[..group.span.start].ends_with(' ') {
            group.span.start - 1
        } else {
            group.span.start
        };
        state
            .draft
            .set(format!("{}{}", &draft[..start], &draft[group.span.end..]));
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
            if let Some(c) = current_info(m).filter(|c| suits.accepts(c)) {
                let text = format!("The loaded checkpoint, {}, suits this task.", c.name);
                return Some(view! { <p class="task-suggest ok" id="task-suggest">{text}</p> }.into_any());
            }
            Some(match suits.best(&m.checkpoints) {
                Some(c) => {
                    let name = c.name.clone();
                    let label = format!("Switch to {name}");
                    view! {
                        <p class="task-suggest" id="task-suggest">
                            "This task suits THUDM's " <code>{wanted}</code> "; "
                            <code>{name.clone()}</code> " is in the models folder. "
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
                        "This task suits THUDM's " <code>{wanted}</code>
                        ", which is not in the models folder: the loaded checkpoint may not follow the template."
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
                placeholder=placeholder
                prop:value=move || t.text.get()
                on:input=move |ev| {
                    t.text.set(event_target_value(&ev));
                    refill_keeping_regions(state);
                }
            />
        }
    };
    move || match t.task.get() {
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
                "with grounding"
            </label>
        }
        .into_any(),
        Task::DescribeRegion => view! {
            <span class="task-hint">"Drag on the image to mark one or more regions."</span>
        }
        .into_any(),
        Task::Chat | Task::DescribeWithBoxes => ().into_any(),
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
            aria-label="Template"
            prop:value=move || t.chosen.get().map_or("random".to_string(), |i| i.to_string())
            on:change=move |ev| {
                let value = event_target_value(&ev);
                t.chosen.set(value.parse().ok());
                refill_keeping_regions(state);
            }
        >
            <option value="random">"Random template"</option>
            {options}
        </select>
        <button
            class="small"
            id="task-another"
            title="Another random template"
            on:click=move |_| {
                let task = t.task.get_untracked();
                t.chosen.set(None);
                t.random.set(task.pick(js_sys::Math::random()));
                refill_keeping_regions(state);
            }
        >
            "Another"
        </button>
    }
}

#[component]
pub fn TaskBar() -> impl IntoView {
    let state = expect_context::<AppState>();
    let t = state.tasks;
    view! {
        <div class="taskbar">
            <div class="task-tabs" role="tablist" aria-label="Task">
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
                                {task.label()}
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
