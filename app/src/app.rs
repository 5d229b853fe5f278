//! The page: shell (server-rendered document) and the `App` component.

use crate::actions::{refresh_models, take_models};
use crate::components::chat::ChatPanel;
use crate::components::conversations::ConversationList;
use crate::components::image_panel::ImagePanel;
use crate::components::settings::{ModelPicker, SettingsPanel};
use crate::components::share::ShareButton;
use crate::conversation::store;
use crate::i18n::{self, t, Lang};
use crate::protocol::ModelsState;
use crate::state::AppState;
use leptos::prelude::*;

/// Name of the browser bundle: `/pkg/cogvlm.<hash>.js`, `.wasm` and `.css` as `build.sh` names
/// them (`/pkg/cogvlm.js`, `/pkg/cogvlm_bg.wasm`, `/pkg/cogvlm.css` for a bundle without hashes).
pub const OUTPUT_NAME: &str = "cogvlm";

/// The stylesheet's address: with its content hash when the server found the bundle's hash
/// file (`css: <hash>`; Leptos links the script and the wasm from the same file).
fn stylesheet_href(options: &LeptosOptions) -> String {
    let pkg = &options.site_pkg_dir;
    let hash = options
        .hash_files
        .then(|| std::fs::read_to_string(&*options.hash_file).ok())
        .flatten()
        .and_then(|text| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == "css")
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|h| !h.is_empty());
    match hash {
        Some(h) => format!("/{pkg}/{OUTPUT_NAME}.{h}.css"),
        None => format!("/{pkg}/{OUTPUT_NAME}.css"),
    }
}

/// The HTML document around [`App`].
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang=i18n::initial().code()>
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <title>"CogVLM — local vision chat"</title>
                <link rel="icon" type="image/svg+xml" href="/favicon.svg"/>
                <link rel="stylesheet" href=stylesheet_href(&options)/>
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
    // The trained demo checkpoint gets its own notice; the random-weight ones the warning.
    let is_demo = |c: &crate::protocol::CheckpointInfo| c.name.starts_with("cogvlm-demo");
    let bundled = move || {
        state.models.with(|m| {
            m.as_ref()
                .and_then(|m| {
                    m.current_checkpoint()
                        .map(|c| (c.bundled && !is_demo(c), m.models_dir.clone()))
                })
                .filter(|(b, _)| *b)
                .map(|(_, dir)| dir)
        })
    };
    let demo = move || {
        state.models.with(|m| {
            m.as_ref()
                .and_then(|m| m.current_checkpoint().map(|c| c.bundled && is_demo(c)))
                .unwrap_or(false)
        })
    };
    view! {
        {move || demo().then(|| view! {
            <div class="banner" id="demo-notice" role="note">
                <strong>{move || t(state.lang, "Demo checkpoint: a tiny CogVLM trained here on synthetic scenes.")}</strong>
                " " {move || t(state.lang, "It knows pictures of one to three coloured circles, squares and triangles on a plain background. Ask it")}
                " " <code>"Describe the image."</code> ", " <code>"What color is the circle?"</code> ", "
                <code>"How many shapes are there?"</code> ", " <code>"Where is the red square?"</code> " "
                {move || t(state.lang, "(it answers with a box, drawn over the image; cogvlm-demo-boxes lands it on the named shape about nine times in ten, cogvlm-demo one time in four) or")} " " <code>"What is in the region [[250,000,499,249]]?"</code>
                {move || t(state.lang, "; make such pictures with")} " " <code>"cogvlm make-data"</code>
                {move || t(state.lang, ". About anything else its answers mean nothing. For real answers, put THUDM's")}
                " " <code>"cogvlm-chat-hf"</code> " / " <code>"cogagent-chat-hf"</code> " "
                {move || t(state.lang, "(Hugging Face) into a folder of checkpoints and start")}
                " " <code>"cogvlm serve --models-dir /path/to/models"</code> " "
                {move || t(state.lang, "(add --device cuda on a GPU build); see the README.")}
            </div>
        })}
        {move || bundled().map(|dir| view! {
            <div class="banner warn" id="bundled-notice" role="note">
                <strong>{move || t(state.lang, "Test checkpoint: the answers are not meaningful.")}</strong>
                " " {move || t(state.lang, "The model loaded now is a tiny checkpoint with the real CogVLM / CogAgent architecture and tokenizer but random weights (from")}
                " " <code>{dir}</code> "), "
                {move || t(state.lang, "bundled so that the app works out of the box. It produces gibberish by design. For real answers, download THUDM's")}
                " " <code>"cogvlm-chat-hf"</code> " / " <code>"cogagent-chat-hf"</code> " "
                {move || t(state.lang, "(Hugging Face) into a folder of checkpoints and start")}
                " " <code>"cogvlm serve --models-dir /path/to/models"</code> " "
                {move || t(state.lang, "(add --device cuda on a GPU build); see the README.")}
            </div>
        })}
        {move || state.load_error.get().map(|e| view! {
            <div class="banner error" id="load-error" role="alert">
                {e} " " {move || t(state.lang, "The previous model is still loaded.")}
                <button class="small" on:click=move |_| state.load_error.set(None)>{move || t(state.lang, "Dismiss")}</button>
            </div>
        })}
        {move || state.conversations.error.get().map(|e| view! {
            <div class="banner error" id="store-error" role="alert">{e}</div>
        })}
        {move || state.models_error.get().map(|e| view! {
            <div class="banner error" role="alert">{e}</div>
        })}
        {move || state.models.with(|m| {
            m.as_ref().filter(|m| m.checkpoints.is_empty()).map(|m| view! {
                <div class="banner error" role="alert">
                    {move || t(state.lang, "No checkpoint found in")} " " <code>{m.models_dir.clone()}</code> ". "
                    {move || t(state.lang, "Each checkpoint is a folder with config.json and *.safetensors.")}
                </div>
            })
        })}
    }
}

/// The backend's checkpoint list, when rendering on the server.
fn server_models() -> Option<ModelsState> {
    #[cfg(feature = "ssr")]
    {
        use_context::<crate::backend::BackendContext>().map(|b| b.0.models())
    }
    #[cfg(not(feature = "ssr"))]
    {
        None
    }
}

#[component]
pub fn App() -> impl IntoView {
    let state = AppState::new();
    // The server rendered the page in this language and wrote it into <html lang>: the same text here.
    state.lang.set(i18n::initial());
    provide_context(state);
    // The checkpoint list as the server rendered it, taken over as is by the hydrating page: the
    // header and the notices are on the page before the bundle arrives and do not move after.
    let rendered = SharedValue::new(server_models).into_inner();
    let settled = rendered.as_ref().is_some_and(|m| m.loading.is_none());
    if let Some(models) = rendered {
        take_models(state, models);
    }
    let hydrated = RwSignal::new(false);
    // Effects run only in the browser: this marks hydration and, unless the server rendered a
    // settled list, loads the model list (and follows a load in progress).
    Effect::new(move |_| {
        hydrated.set(true);
        if !settled {
            refresh_models(state);
        }
        #[cfg(feature = "hydrate")]
        crate::test_hook::install(state);
        store::init(state);
    });
    store::autosave(state);
    let other_lang = move || match state.lang.get() {
        Lang::En => Lang::Zh,
        Lang::Zh => Lang::En,
    };
    // The device, or where each part of a split model runs; the full plan (bytes per device) on hover.
    let device = move || {
        state
            .models
            .with(|m| {
                m.as_ref().map(|m| match &m.placement {
                    Some(p) => format!("{}: {p}", t(state.lang, "devices")),
                    None => format!("{}: {}", t(state.lang, "device"), m.device),
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
                    <span class="tagline">{move || t(state.lang, "local vision-language chat")}</span>
                </div>
                <button class="small" id="conversations-toggle"
                    on:click=move |_| state.conversations.panel_open.update(|o| *o = !*o)>
                    {move || t(state.lang, "Conversations")}
                </button>
                <ModelPicker/>
                <span class="device" title=plan>{device}</span>
                <ShareButton/>
                <button class="small" id="lang-switch" lang=move || other_lang().code()
                    on:click=move |_| i18n::switch(state.lang, other_lang())>
                    {move || match other_lang() { Lang::En => "English", Lang::Zh => "中文" }}
                </button>
            </header>
            <Notice/>
            <ConversationList/>
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
