//! The page: shell (server-rendered document) and the `App` component.

use crate::components::chat::ChatPanel;
use crate::components::image_panel::ImagePanel;
use crate::components::settings::{current_info, refresh_models, ModelPicker, SettingsPanel};
use crate::state::AppState;
use leptos::prelude::*;

/// Name of the browser bundle: `/pkg/cogvlm.js`, `/pkg/cogvlm_bg.wasm`, `/pkg/cogvlm.css`.
pub const OUTPUT_NAME: &str = "cogvlm";

/// The HTML document around [`App`].
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <title>"CogVLM — local vision chat"</title>
                <link rel="icon" type="image/svg+xml" href="/favicon.svg"/>
                <link rel="stylesheet" href=format!("/pkg/{OUTPUT_NAME}.css")/>
                <HydrationScripts options/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// Says plainly when the answers come from a bundled random-weight checkpoint.
#[component]
fn Notice() -> impl IntoView {
    let state = expect_context::<AppState>();
    let bundled = move || {
        state.models.with(|m| {
            m.as_ref()
                .and_then(|m| current_info(m).map(|c| (c.bundled, m.models_dir.clone())))
                .filter(|(b, _)| *b)
                .map(|(_, dir)| dir)
        })
    };
    view! {
        {move || bundled().map(|dir| view! {
            <div class="banner warn" id="bundled-notice" role="note">
                <strong>"Test checkpoint: the answers are not meaningful."</strong>
                " The model loaded now is a tiny checkpoint with the real CogVLM / CogAgent architecture and "
                "tokenizer but random weights (from " <code>{dir}</code> "), bundled so that the app works "
                "out of the box. It produces gibberish by design. For real answers, download THUDM's "
                <code>"cogvlm-chat-hf"</code> " or " <code>"cogagent-chat-hf"</code>
                " (Hugging Face) into a folder of checkpoints and start "
                <code>"cogvlm serve --models-dir /path/to/models"</code>
                " (add " <code>"--device cuda"</code> " on a GPU build); see the README."
            </div>
        })}
        {move || state.load_error.get().map(|e| view! {
            <div class="banner error" id="load-error" role="alert">
                {e} " The previous model is still loaded."
                <button class="small" on:click=move |_| state.load_error.set(None)>"Dismiss"</button>
            </div>
        })}
        {move || state.models_error.get().map(|e| view! {
            <div class="banner error" role="alert">{e}</div>
        })}
        {move || state.models.with(|m| {
            m.as_ref().filter(|m| m.checkpoints.is_empty()).map(|m| view! {
                <div class="banner error" role="alert">
                    "No checkpoint found in " <code>{m.models_dir.clone()}</code>
                    ". Each checkpoint is a folder with config.json and *.safetensors."
                </div>
            })
        })}
    }
}

#[component]
pub fn App() -> impl IntoView {
    let state = AppState::new();
    provide_context(state);
    let hydrated = RwSignal::new(false);
    // Effects run only in the browser: this marks hydration and loads the model list.
    Effect::new(move |_| {
        hydrated.set(true);
        refresh_models(state);
        #[cfg(feature = "hydrate")]
        crate::test_hook::install(state);
    });
    // The device, or where each part of a split model runs; the full plan (bytes per device) on hover.
    let device = move || {
        state
            .models
            .with(|m| {
                m.as_ref().map(|m| match &m.placement {
                    Some(p) => format!("devices: {p}"),
                    None => format!("device: {}", m.device),
                })
            })
            .unwrap_or_default()
    };
    let plan = move || {
        state
            .models
            .with(|m| m.as_ref().and_then(|m| m.plan_detail.clone()))
            .unwrap_or_default()
    };
    view! {
        <div class="app" id="app" data-hydrated=move || hydrated.get().to_string()>
            <header class="topbar">
                <div class="brand">
                    <span class="logo" aria-hidden="true">"◧"</span>
                    <h1>"CogVLM"</h1>
                    <span class="tagline">"local vision-language chat"</span>
                </div>
                <ModelPicker/>
                <span class="device" title=plan>{device}</span>
            </header>
            <Notice/>
            <main class="layout">
                <div class="left">
                    <ImagePanel/>
                    <SettingsPanel/>
                </div>
                <ChatPanel/>
            </main>
        </div>
    }
}
