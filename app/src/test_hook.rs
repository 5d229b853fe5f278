//! A test hook, only in the browser bundle and only on a page opened with `?test-hooks`:
//! `window.__cogvlmReplay(query, answer)` shows a recorded answer as a new turn, streamed
//! through the same code as a live one ([`crate::actions::replay`]). The random-weight
//! test checkpoints answer random text and the demos know only their synthetic shapes, so the browser tests
//! use it for answers no bundled checkpoint gives (boxes on photos, CogAgent's agent actions).

use crate::actions::replay;
use crate::state::AppState;
use wasm_bindgen::prelude::*;

pub fn install(state: AppState) {
    let Some(window) = web_sys::window() else {
        return;
    };
    let enabled = window.location().search().is_ok_and(|q| {
        q.trim_start_matches('?')
            .split('&')
            .any(|p| p == "test-hooks")
    });
    if !enabled {
        return;
    }
    let hook = Closure::<dyn Fn(String, String)>::new(move |query: String, answer: String| {
        replay(state, query, &answer);
    });
    let _ = js_sys::Reflect::set(&window, &"__cogvlmReplay".into(), hook.as_ref());
    // Lives as long as the page.
    hook.forget();
}
