//! Model selector (with switching and load progress), prompt version and sampling controls.

use crate::actions::switch_model;
use crate::i18n::{t, tr, Lang};
use crate::protocol::{CheckpointInfo, PromptVersion};
use crate::state::AppState;
use leptos::prelude::*;

fn checkpoint_label(lang: Lang, c: &CheckpointInfo) -> String {
    format!(
        "{} — {} · {} px{}",
        c.name,
        c.kind.label(),
        c.image_size,
        if c.bundled {
            format!(" · {}", tr(lang, "bundled test model"))
        } else {
            String::new()
        }
    )
}

/// The model selector, for the header.
#[component]
pub fn ModelPicker() -> impl IntoView {
    let state = expect_context::<AppState>();
    let options = move || {
        state.models.with(|m| {
            let current = m.as_ref().and_then(|m| m.current.clone());
            m.as_ref()
                .map(|m| m.checkpoints.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    let label = checkpoint_label(state.lang.get(), &c);
                    let selected = current.as_ref() == Some(&c.name);
                    view! { <option value=c.name.clone() selected=selected>{label}</option> }
                })
                .collect_view()
        })
    };
    let progress = move || {
        state.loading.get().map(|l| {
            let pct = if l.total > 0 {
                100.0 * l.done as f64 / l.total as f64
            } else {
                0.0
            };
            view! {
                <div class="load-progress" id="load-progress">
                    <span>{format!("{} {}… {:.0}%", t(state.lang, "Loading"), l.name, pct)}</span>
                    <progress max="100" value=format!("{pct:.1}")></progress>
                </div>
            }
        })
    };
    view! {
        <div class="model-picker">
            <label for="model-select">{move || t(state.lang, "Model")}</label>
            <select
                id="model-select"
                disabled=move || state.busy.get() || state.loading.with(Option::is_some) || state.models.with(Option::is_none)
                prop:value=move || state.models.with(|m| m.as_ref().and_then(|m| m.current.clone()).unwrap_or_default())
                on:change=move |ev| switch_model(state, event_target_value(&ev))
            >
                {options}
            </select>
            {progress}
        </div>
    }
}

#[component]
fn Slider(
    id: &'static str,
    label: &'static str,
    min: f64,
    max: f64,
    step: f64,
    value: RwSignal<f64>,
    #[prop(optional)] hint: Option<&'static str>,
    #[prop(optional)] zero_label: Option<&'static str>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let shown = move || {
        let v = value.get();
        match zero_label {
            Some(z) if v <= 1e-5 => t(state.lang, z).to_string(),
            _ if step >= 1.0 => format!("{v:.0}"),
            _ => format!("{v:.2}"),
        }
    };
    view! {
        <div class="field slider">
            <label for=id>
                <span>{move || t(state.lang, label)}</span>
                <output id=format!("{id}-value")>{shown}</output>
            </label>
            <input
                type="range"
                id=id
                min=min
                max=max
                step=step
                // The attribute places the thumb on the server-rendered page.
                value=move || value.get().to_string()
                prop:value=move || value.get().to_string()
                on:input=move |ev| {
                    if let Ok(v) = event_target_value(&ev).parse::<f64>() {
                        value.set(v);
                    }
                }
            />
            {hint.map(|h| view! { <small>{move || t(state.lang, h)}</small> })}
        </div>
    }
}

/// The prompt template, the loaded checkpoint's default marked.
#[component]
fn VersionSelect() -> impl IntoView {
    let state = expect_context::<AppState>();
    let s = state.settings;
    let default_version = move || {
        state.models.with(|m| {
            m.as_ref()
                .and_then(|m| m.current_checkpoint().map(|c| c.default_version))
        })
    };
    view! {
        <div class="field">
            <label for="version-select">{move || t(state.lang, "Prompt template")}</label>
            <select
                id="version-select"
                prop:value=move || s.version.get().as_str()
                on:change=move |ev| {
                    if let Ok(v) = event_target_value(&ev).parse::<PromptVersion>() {
                        s.version.set(v);
                    }
                }
            >
                {PromptVersion::ALL
                    .into_iter()
                    .map(|v| {
                        let text = move || {
                            if default_version() == Some(v) {
                                format!("{} {}", t(state.lang, v.describe()), t(state.lang, "(default for this model)"))
                            } else {
                                t(state.lang, v.describe()).to_string()
                            }
                        };
                        // `selected` for the server-rendered page; the select's `prop:value` after.
                        view! { <option value=v.as_str() selected=move || s.version.get() == v>{text}</option> }
                    })
                    .collect_view()}
            </select>
        </div>
    }
}

/// Prompt version and sampling controls.
#[component]
pub fn SettingsPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let s = state.settings;
    // Integer settings through f64 sliders.
    let top_k = RwSignal::new(s.top_k.get_untracked() as f64);
    let max_length = RwSignal::new(s.max_length.get_untracked() as f64);
    Effect::new(move |_| s.top_k.set(top_k.get().round().max(0.0) as usize));
    Effect::new(move |_| s.max_length.set(max_length.get().round() as usize));
    // And back, when a stored conversation brings its settings.
    Effect::new(move |_| {
        let (k, l) = (s.top_k.get() as f64, s.max_length.get() as f64);
        if top_k.get_untracked().round() != k {
            top_k.set(k);
        }
        if max_length.get_untracked().round() != l {
            max_length.set(l);
        }
    });
    view! {
        <section class="settings">
            <h2>{move || t(state.lang, "Settings")}</h2>
            <VersionSelect/>
            <Slider id="temperature" label="Temperature" min=0.0 max=2.0 step=0.05 value=s.temperature
                zero_label="0 (greedy)" hint="0 = greedy (always the most likely token)"/>
            <Slider id="top-p" label="Top p" min=0.05 max=1.0 step=0.01 value=s.top_p/>
            <Slider id="top-k" label="Top k" min=0.0 max=100.0 step=1.0 value=top_k
                zero_label="0 (off)" hint="0 = no top-k, 1 = greedy"/>
            <Slider id="max-length" label="Max length" min=64.0 max=8192.0 step=64.0 value=max_length
                hint="prompt, image tokens and answer together"/>
            <details class="advanced">
                <summary>{move || t(state.lang, "More")}</summary>
                <div class="field">
                    <label for="max-new-tokens">{move || t(state.lang, "Max new tokens")}</label>
                    <input type="number" id="max-new-tokens" min="1" placeholder=move || t(state.lang, "no limit")
                        prop:value=move || s.max_new_tokens.get()
                        on:input=move |ev| s.max_new_tokens.set(event_target_value(&ev))/>
                </div>
                <Slider id="repetition-penalty" label="Repetition penalty" min=1.0 max=2.0 step=0.01
                    value=s.repetition_penalty/>
                <div class="field">
                    <label for="seed">{move || t(state.lang, "Seed")}</label>
                    <input type="number" id="seed" min="0" placeholder=move || t(state.lang, "random")
                        prop:value=move || s.seed.get()
                        on:input=move |ev| s.seed.set(event_target_value(&ev))/>
                </div>
            </details>
        </section>
    }
}
