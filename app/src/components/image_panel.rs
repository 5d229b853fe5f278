//! The image: upload (button, drag and drop, paste), preview, and the canvas that draws the
//! conversation's grounding boxes and points over it.

use crate::grounding::{self, Shape};
use crate::state::{conversation_groups, AppState, DrawnGroup, UploadedImage};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

/// Reads a picked, dropped or pasted file and makes it the conversation's image.
/// A new image starts a new conversation.
fn take_file(state: AppState, file: web_sys::File) {
    if !file.type_().starts_with("image/") {
        state.note.set(Some(format!(
            "{} is not an image ({}).",
            file.name(),
            if file.type_().is_empty() {
                "unknown type".to_string()
            } else {
                file.type_()
            }
        )));
        return;
    }
    leptos::task::spawn_local(async move {
        use base64::Engine as _;
        let buffer = match wasm_bindgen_futures::JsFuture::from(file.array_buffer()).await {
            Ok(b) => b,
            Err(_) => {
                state
                    .note
                    .set(Some(format!("Could not read {}.", file.name())));
                return;
            }
        };
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        let Ok(url) = web_sys::Url::create_object_url_with_blob(&file) else {
            state
                .note
                .set(Some(format!("Could not show {}.", file.name())));
            return;
        };
        if let Some(old) = state.image.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old.url);
        }
        let had_conversation = state.turns.with_untracked(|t| !t.is_empty());
        if state.busy.get_untracked() {
            crate::components::chat::stop(state);
        }
        state.turns.set(Vec::new());
        state.hover.set(None);
        state.image.set(Some(UploadedImage {
            name: file.name(),
            url,
            base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
            bytes: bytes.len(),
        }));
        state.note.set(had_conversation.then(|| {
            "New image: a new conversation started (the model sees one image per conversation)."
                .to_string()
        }));
    });
}

fn first_file(list: Option<web_sys::FileList>) -> Option<web_sys::File> {
    list.and_then(|l| l.get(0))
}

/// Draws every group on the canvas, sized to the rendered image.
fn draw(
    canvas: &web_sys::HtmlCanvasElement,
    width: f64,
    height: f64,
    groups: &[DrawnGroup],
    hover: Option<usize>,
) {
    let dpr = web_sys::window().map_or(1.0, |w| w.device_pixel_ratio());
    canvas.set_width((width * dpr).round() as u32);
    canvas.set_height((height * dpr).round() as u32);
    let Some(ctx) = canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
    else {
        return;
    };
    let _ = ctx.set_transform(dpr, 0.0, 0.0, dpr, 0.0, 0.0);
    ctx.clear_rect(0.0, 0.0, width, height);
    ctx.set_font("600 12px system-ui, sans-serif");
    ctx.set_text_baseline("top");
    for g in groups {
        let colour = grounding::colour(g.index);
        let hot = hover == Some(g.index);
        let dim = hover.is_some() && !hot;
        ctx.set_global_alpha(if dim { 0.35 } else { 1.0 });
        ctx.set_stroke_style_str(colour);
        ctx.set_fill_style_str(colour);
        ctx.set_line_width(if hot { 4.0 } else { 2.5 });
        let tag = match &g.label {
            Some(l) => format!("{} {}", g.index + 1, l),
            None => format!("{}", g.index + 1),
        };
        for shape in &g.shapes {
            let r = grounding::to_px(shape, width, height);
            match shape {
                Shape::Box(_) => {
                    if hot {
                        ctx.set_global_alpha(0.18);
                        ctx.fill_rect(r.x, r.y, r.w, r.h);
                        ctx.set_global_alpha(1.0);
                    }
                    ctx.stroke_rect(r.x, r.y, r.w, r.h);
                    label(&ctx, &tag, r.x, r.y, colour, width);
                }
                Shape::Point(_) => {
                    ctx.begin_path();
                    let _ = ctx.arc(
                        r.x,
                        r.y,
                        if hot { 7.0 } else { 5.5 },
                        0.0,
                        std::f64::consts::TAU,
                    );
                    ctx.fill();
                    ctx.set_stroke_style_str("#ffffff");
                    ctx.set_line_width(1.5);
                    ctx.stroke();
                    ctx.set_stroke_style_str(colour);
                    label(&ctx, &tag, r.x + 8.0, r.y - 8.0, colour, width);
                }
            }
        }
    }
    ctx.set_global_alpha(1.0);
}

/// A filled tag with the group's number and label, just above (or inside) the top-left corner.
fn label(
    ctx: &web_sys::CanvasRenderingContext2d,
    text: &str,
    x: f64,
    y: f64,
    colour: &str,
    max_w: f64,
) {
    let text_w = ctx
        .measure_text(text)
        .map_or(8.0 * text.len() as f64, |m| m.width());
    let (w, h) = (text_w + 8.0, 17.0);
    let x = x.min(max_w - w).max(0.0);
    let y = if y >= h { y - h } else { y };
    ctx.set_fill_style_str(colour);
    ctx.fill_rect(x, y, w, h);
    ctx.set_fill_style_str("#111111");
    let _ = ctx.fill_text(text, x + 4.0, y + 2.5);
    ctx.set_fill_style_str(colour);
}

#[component]
pub fn ImagePanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let input_ref = NodeRef::<leptos::html::Input>::new();
    let img_ref = NodeRef::<leptos::html::Img>::new();
    let canvas_ref = NodeRef::<leptos::html::Canvas>::new();
    let dragging = RwSignal::new(false);
    // Rendered size of the image, kept current by a ResizeObserver.
    let size = RwSignal::new((0.0f64, 0.0f64));
    let groups = Memo::new(move |_| state.turns.with(|t| conversation_groups(t).0));

    // Paste anywhere on the page (only image files; text pastes are left alone).
    let paste = window_event_listener(leptos::ev::paste, move |ev: web_sys::ClipboardEvent| {
        if let Some(file) = first_file(ev.clipboard_data().and_then(|d| d.files())) {
            if file.type_().starts_with("image/") {
                ev.prevent_default();
                take_file(state, file);
            }
        }
    });
    on_cleanup(move || paste.remove());

    // Observe the image's rendered size.
    Effect::new(move |prev: Option<bool>| {
        if prev == Some(true) {
            return true;
        }
        let Some(img) = img_ref.get() else {
            return false;
        };
        let update = move |img: &web_sys::HtmlImageElement| {
            size.set((
                f64::from(img.client_width()),
                f64::from(img.client_height()),
            ));
        };
        let observed = img.clone();
        let callback =
            wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || update(&observed));
        if let Ok(observer) = web_sys::ResizeObserver::new(callback.as_ref().unchecked_ref()) {
            observer.observe(&img);
        }
        // The observer lives as long as the page.
        callback.forget();
        true
    });

    // Redraw on any change of the boxes, the hover or the size.
    Effect::new(move |_| {
        let (w, h) = size.get();
        let hover = state.hover.get();
        let has_image = state.image.with(Option::is_some);
        groups.with(|groups| {
            if let Some(canvas) = canvas_ref.get() {
                if has_image && w > 0.0 && h > 0.0 {
                    draw(&canvas, w, h, groups, hover);
                } else {
                    canvas.set_width(0);
                    canvas.set_height(0);
                }
            }
        });
    });

    // Hovering a shape on the canvas highlights its chip.
    let on_canvas_move = move |ev: leptos::ev::MouseEvent| {
        let (w, h) = size.get_untracked();
        let (x, y) = (f64::from(ev.offset_x()), f64::from(ev.offset_y()));
        let hit = groups.with_untracked(|groups| {
            // The smallest box under the pointer wins.
            let mut best: Option<(f64, usize)> = None;
            for g in groups {
                for s in &g.shapes {
                    let r = grounding::to_px(s, w, h);
                    let (inside, area) = match s {
                        Shape::Box(_) => (
                            x >= r.x && x <= r.x + r.w && y >= r.y && y <= r.y + r.h,
                            r.w * r.h,
                        ),
                        Shape::Point(_) => (((x - r.x).powi(2) + (y - r.y).powi(2)) <= 100.0, 0.0),
                    };
                    if inside && best.is_none_or(|(a, _)| area < a) {
                        best = Some((area, g.index));
                    }
                }
            }
            best.map(|(_, i)| i)
        });
        if state.hover.get_untracked() != hit {
            state.hover.set(hit);
        }
    };

    let has_image = move || state.image.with(Option::is_some);
    let image_url = move || state.image.with(|i| i.as_ref().map(|i| i.url.clone()));
    let image_caption = move || {
        state.image.with(|i| {
            i.as_ref()
                .map(|i| format!("{} · {:.0} KB", i.name, i.bytes as f64 / 1024.0))
                .unwrap_or_default()
        })
    };

    view! {
        <section
            class="image-panel"
            class:dragging=move || dragging.get()
            on:dragover=move |ev: leptos::ev::DragEvent| {
                ev.prevent_default();
                dragging.set(true);
            }
            on:dragleave=move |_| dragging.set(false)
            on:drop=move |ev: leptos::ev::DragEvent| {
                ev.prevent_default();
                dragging.set(false);
                if let Some(file) = first_file(ev.data_transfer().and_then(|d| d.files())) {
                    take_file(state, file);
                }
            }
        >
            <input
                type="file"
                id="image-input"
                accept="image/*"
                class="visually-hidden"
                node_ref=input_ref
                on:change=move |_| {
                    if let Some(input) = input_ref.get() {
                        if let Some(file) = first_file(input.files()) {
                            take_file(state, file);
                        }
                        input.set_value("");
                    }
                }
            />
            <div class="stage" class:hidden=move || !has_image()>
                <img id="preview" alt="uploaded image" node_ref=img_ref src=image_url
                    on:load=move |_| {
                        if let Some(img) = img_ref.get_untracked() {
                            size.set((f64::from(img.client_width()), f64::from(img.client_height())));
                        }
                    }
                />
                <canvas
                    id="overlay"
                    node_ref=canvas_ref
                    on:mousemove=on_canvas_move
                    on:mouseleave=move |_| state.hover.set(None)
                ></canvas>
            </div>
            <Show when=has_image>
                <div class="image-bar">
                    <span class="image-name">{image_caption}</span>
                    <button class="small" on:click=move |_| {
                        if let Some(input) = input_ref.get() { input.click(); }
                    }>"Replace"</button>
                    <button class="small" id="remove-image" on:click=move |_| {
                        if let Some(old) = state.image.get_untracked() {
                            let _ = web_sys::Url::revoke_object_url(&old.url);
                        }
                        state.image.set(None);
                        state.turns.set(Vec::new());
                        state.note.set(None);
                    }>"Remove"</button>
                </div>
            </Show>
            <Show when=move || !has_image()>
                <div class="dropzone">
                    <svg viewBox="0 0 24 24" width="40" height="40" aria-hidden="true">
                        <path fill="currentColor" d="M19 5v14H5V5h14m0-2H5a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h14a2 2 0 0 0 2-2V5a2 2 0 0 0-2-2zm-4.86 8.86-3 3.87L9 13.14 6 17h12l-3.86-5.14z"/>
                    </svg>
                    <p>"Drop an image here, paste it (Ctrl+V), or"</p>
                    <button class="primary" id="choose-image" on:click=move |_| {
                        if let Some(input) = input_ref.get() { input.click(); }
                    }>"Choose an image"</button>
                    <p class="hint">"Without an image the model answers from text alone."</p>
                </div>
            </Show>
            <p class="hint">"A new image starts a new conversation."</p>
        </section>
    }
}
