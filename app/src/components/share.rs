//! The host's Share button: the LAN link of a `--share`d server and its QR code, shown only to a page opened on
//! the server's own machine (loopback), so the link and its token are never offered to other visitors.

use crate::i18n::t;
use crate::state::AppState;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// The link to share and its QR code (an SVG document, made on the server).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShareLink {
    pub link: String,
    pub qr_svg: String,
}

/// The link, when this server shares one and the request comes from its own machine.
#[server(endpoint = "share_info")]
pub async fn share_info() -> Result<Option<ShareLink>, ServerFnError> {
    use axum::extract::ConnectInfo;
    let loopback = use_context::<axum::http::request::Parts>()
        .and_then(|p| {
            p.extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .copied()
        })
        .is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback());
    Ok(loopback.then(use_context::<ShareLink>).flatten())
}

#[component]
pub fn ShareButton() -> impl IntoView {
    let state = expect_context::<AppState>();
    let info = RwSignal::new(None::<ShareLink>);
    let open = RwSignal::new(false);
    // Asked once the page runs (never during server rendering: the page looks the same for everyone).
    Effect::new(move |_| {
        leptos::task::spawn_local(async move {
            if let Ok(Some(i)) = share_info().await {
                info.set(Some(i));
            }
        });
    });
    move || {
        info.get().map(|i| {
            let svg = i.qr_svg.clone();
            let link = i.link.clone();
            view! {
                <button class="small" id="share" on:click=move |_| open.update(|o| *o = !*o)>
                    {move || t(state.lang, "Share")}
                </button>
                <Show when=move || open.get()>
                    <div class="share-panel" id="share-panel" role="dialog">
                        <p class="warn-text">
                            {move || t(state.lang, "Anyone on your network with this link can use this server.")}
                        </p>
                        <div class="qr" id="share-qr" inner_html=svg.clone()></div>
                        <code id="share-link">{link.clone()}</code>
                        <button class="small" on:click=move |_| open.set(false)>{move || t(state.lang, "Close")}</button>
                    </div>
                </Show>
            }
        })
    }
}
