//! The draft's regions (boxes typed or dragged into the question), each removable.

use crate::components::tasks::remove_group;
use crate::i18n::t;
use crate::state::AppState;
use leptos::prelude::*;
use protocol::grounding;

#[component]
pub fn DraftRegions(
    /// The number of the draft's first group (after the conversation's).
    draft_first: Memo<usize>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    // The draft's regions, removable.
    let regions = move || {
        let first = draft_first.get();
        state.draft.with(|d| {
            grounding::parse(d)
                .into_iter()
                .enumerate()
                .map(|(k, g)| {
                    let index = first + k;
                    let text = d[g.span.clone()].to_string();
                    view! {
                        <li
                            class="gchip region"
                            data-g=index
                            style=format!("--gc:{}", crate::palette::colour(index))
                            on:mouseenter=move |_| state.hover.set(Some(index))
                            on:mouseleave=move |_| state.hover.set(None)
                        >
                            <b>{index + 1}</b>
                            <code>{text}</code>
                            <button
                                class="remove-region"
                                title=move || t(state.lang, "Remove this region from the prompt")
                                aria-label=move || format!("{} {}", t(state.lang, "Remove region"), index + 1)
                                on:click=move |_| {
                                    state.hover.set(None);
                                    remove_group(state, k);
                                }
                            >
                                "×"
                            </button>
                        </li>
                    }
                })
                .collect_view()
        })
    };

    view! {
        <div class="regions">
            <span class="hint">{move || t(state.lang, "Drag on the image to mark a region for the prompt.")}</span>
            <ul id="regions">{regions}</ul>
        </div>
    }
}
