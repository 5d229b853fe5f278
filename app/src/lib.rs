//! The CogVLM web app: Leptos components (built for ssr and hydrate), server functions and the
//! protocol shared with the server. Never depends on candle.
pub mod actions;
pub mod agent;
pub mod agent_card;
pub mod api;
pub mod app;
#[cfg(feature = "ssr")]
pub mod backend;
pub mod components;
pub mod conversation;
pub mod i18n;
pub mod markdown;
pub mod palette;
pub mod protocol;
pub mod state;
pub mod tasks;
#[cfg(feature = "hydrate")]
mod test_hook;
pub mod upload;

pub use app::{shell, App, OUTPUT_NAME};

/// Entry point of the browser bundle.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
}
