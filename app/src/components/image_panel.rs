//! The image: upload (button, drag and drop, paste), preview, and the canvas that draws the
//! conversation's grounding boxes and points over it.

use crate::components::overlay;
use crate::components::tasks::{add_region, remove_group};
use crate::grounding::{self, Shape};
use crate::i18n::{t, tr};
use crate::state::{conversation_groups, text_groups, AppState, DrawnGroup, UploadedImage};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

/// Reads a picked, dropped or pasted file and makes it the conversation's image.
/// A new image starts a new conversation.
fn take_file(state: AppState, file: web_sys::File) {
    if !file.type_().starts_with("image/") {
        let lang = state.lang.get_untracked();
        state.note.set(Some(format!(
            "{} {} ({}).",
            file.name(),
            tr(lang, "is not an image"),
            if file.type_().is_empty() {
                tr(lang, "unknown type").to_string()
            } else {
                file.type_()
            }
        )));
        return;
    }
    // The server's limit, checked here so a too-large photo is refused before it is sent.
    let limit = state
        .models
        .with_untracked(|m| m.as_ref().map(|m| m.max_upload_bytes))
        .filter(|&l| l > 0);
    if let Some(limit) = limit.filter(|&l| file.size() > l as f64) {
        state.note.set(Some(format!(
            "{}: {:.1} MB; {} {:.1} MB.",
            file.name(),
            file.size() / 1e6,
            tr(
                state.lang.get_untracked(),
                "this server accepts images up to"
            ),
            limit as f64 / 1e6
        )));
        return;
    }
    leptos::task::spawn_local(async move {
        use base64::Engine as _;
        let buffer = match wasm_bindgen_futures::JsFuture::from(file.array_buffer()).await {
            Ok(b) => b,
            Err(_) => {
                state.note.set(Some(format!(
                    "{} {}.",
                    tr(state.lang.get_untracked(), "Could not read"),
                    file.name()
                )));
                return;
            }
        };
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        let Ok(url) = web_sys::Url::create_object_url_with_blob(&file) else {
            state.note.set(Some(format!(
                "{} {}.",
                tr(state.lang.get_untracked(), "Could not show"),
                file.name()
            )));
            return;
        };
        if let Some(old) = state.image.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old.url);
        }
        let had_conversation = state.turns.with_untracked(|t| !t.is_empty());
        if state.busy.get_untracked() {
            crate::components::chat::stop(state);
        }
        if had_conversation {
            // The old conversation stays in the list with its own image.
            crate::conversation::store::fork_for_new_image(state);
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
            tr(
                state.lang.get_untracked(),
                "New image: a new conversation started (the model sees one image per conversation).",
            )
            .to_string()
        }));
    });
}

fn first_file(list: Option<web_sys::FileList>) -> Option<web_sys::File> {
    list.and_then(|l| l.get(0))
}

/// Sizes the canvas to the rendered image and paints every group (and the region being
/// dragged).
fn draw(
    canvas: &web_sys::HtmlCanvasElement,
    width: f64,
    height: f64,
    groups: &[DrawnGroup],
    hover: Option<usize>,
    drag: Option<(f64, f64, f64, f64)>,
) {
    let dpr = web_sys::window().map_or(1.0, |w| w.device_pixel_ratio());
    canvas.set_width((width * dpr).round() as u32);
    canvas.set_height((height * dpr).round() as u32);
    let Some(ctx) = overlay::context(canvas) else {
        return;
    };
    let _ = ctx.set_transform(dpr, 0.0, 0.0, dpr, 0.0, 0.0);
    ctx.clear_rect(0.0, 0.0, width, height);
    overlay::paint(&ctx, width, height, groups, hover, 1.0);
    if let Some(r) = drag {
        overlay::paint_rubber_band(&ctx, r);
    }
}

/// The smallest group under `(x, y)` (pixels of the displayed image).
fn hit(groups: &[DrawnGroup], x: f64, y: f64, w: f64, h: f64) -> Option<usize> {
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
}

/// Pointer position over the canvas in displayed pixels, clamped to the image, with the
/// displayed size.
fn pointer_px(
    canvas: &web_sys::HtmlCanvasElement,
    ev: &web_sys::MouseEvent,
) -> (f64, f64, f64, f64) {
    let rect = canvas.get_bounding_client_rect();
    let (w, h) = (rect.width(), rect.height());
    let x = (f64::from(ev.client_x()) - rect.left()).clamp(0.0, w);
    let y = (f64::from(ev.client_y()) - rect.top()).clamp(0.0, h);
    (x, y, w, h)
}

/// A drag shorter than this (pixels) on both axes is a click, not a region.
const MIN_DRAG: f64 = 4.0;

#[component]
pub fn ImagePanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let input_ref = NodeRef::<leptos::html::Input>::new();
    let img_ref = NodeRef::<leptos::html::Img>::new();
    let canvas_ref = NodeRef::<leptos::html::Canvas>::new();
    let dragging = RwSignal::new(false);
    // Rendered size of the image, kept current by a ResizeObserver.
    let size = RwSignal::new((0.0f64, 0.0f64));
    // The conversation's groups, then the draft's (dashed, numbered on, so they keep their
    // number and colour once sent).
    let groups = Memo::new(move |_| {
        let mut groups = state.turns.with(|t| conversation_groups(t).0);
        let first = groups.len();
        groups.extend(state.draft.with(|d| text_groups(d, first, true)));
        groups
    });
    let draft_first = Memo::new(move |_| state.turns.with(|t| conversation_groups(t).0.len()));
    // The region being dragged: start and current corner, in displayed pixels.
    let drag = RwSignal::new(None::<(f64, f64, f64, f64)>);

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

    // Redraw on any change of the boxes, the hover, the drag or the size.
    Effect::new(move |_| {
        let (w, h) = size.get();
        let hover = state.hover.get();
        let drag = drag.get();
        let has_image = state.image.with(Option::is_some);
        groups.with(|groups| {
            if let Some(canvas) = canvas_ref.get() {
                if has_image && w > 0.0 && h > 0.0 {
                    draw(&canvas, w, h, groups, hover, drag);
                } else {
                    canvas.set_width(0);
                    canvas.set_height(0);
                }
            }
        });
    });

    // Dragging draws a region; without a drag, hovering a shape highlights its chip.
    let on_pointer_down = move |ev: leptos::ev::PointerEvent| {
        if ev.button() != 0 {
            return;
        }
        let Some(canvas) = canvas_ref.get_untracked() else {
            return;
        };
        ev.prevent_default();
        let _ = canvas.set_pointer_capture(ev.pointer_id());
        let (x, y, _, _) = pointer_px(&canvas, &ev);
        drag.set(Some((x, y, x, y)));
    };
    let on_pointer_move = move |ev: leptos::ev::PointerEvent| {
        let Some(canvas) = canvas_ref.get_untracked() else {
            return;
        };
        let (x, y, w, h) = pointer_px(&canvas, &ev);
        if let Some((x0, y0, _, _)) = drag.get_untracked() {
            drag.set(Some((x0, y0, x, y)));
            return;
        }
        let hit = groups.with_untracked(|groups| hit(groups, x, y, w, h));
        if state.hover.get_untracked() != hit {
            state.hover.set(hit);
        }
    };
    let on_pointer_up = move |ev: leptos::ev::PointerEvent| {
        let Some((x0, y0, _, _)) = drag.get_untracked() else {
            return;
        };
        drag.set(None);
        let Some(canvas) = canvas_ref.get_untracked() else {
            return;
        };
        let (x1, y1, w, h) = pointer_px(&canvas, &ev);
        if (x1 - x0).abs() >= MIN_DRAG || (y1 - y0).abs() >= MIN_DRAG {
            add_region(state, grounding::box_from_px(x0, y0, x1, y1, w, h));
        }
    };

    let download = move |_| {
        let (Some(img), Some(name)) = (
            img_ref.get_untracked(),
            state
                .image
                .with_untracked(|i| i.as_ref().map(|i| i.name.clone())),
        ) else {
            return;
        };
        if let Err(e) = groups.with_untracked(|g| overlay::download_png(&img, g, &name)) {
            state.note.set(Some(format!(
                "{}: {e:?}",
                tr(
                    state.lang.get_untracked(),
                    "Could not make the annotated image"
                )
            )));
        }
    };

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
                            style=format!("--gc:{}", grounding::colour(index))
                            on:mouseenter=move |_| state.hover.set(Some(index))
                            on:mouseleave=move |_| state.hover.set(None)
                        >
                            <b>{index + 1}</b>
                            <code>{text}</code>
                            <button
                                class="remove-region"
                                title=move || t(state, "Remove this region from the prompt")
                                aria-label=move || format!("{} {}", t(state, "Remove region"), index + 1)
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
                    title=move || t(state, "Drag to mark a region for the prompt")
                    on:pointerdown=on_pointer_down
                    on:pointermove=on_pointer_move
                    on:pointerup=on_pointer_up
                    on:pointercancel=move |_| drag.set(None)
                    on:pointerleave=move |_| {
                        if drag.get_untracked().is_none() {
                            state.hover.set(None);
                        }
                    }
                ></canvas>
            </div>
            <Show when=has_image>
                <div class="image-bar">
                    <span class="image-name">{image_caption}</span>
                    <button class="small" id="download-annotated" title=move || t(state, "PNG with the boxes and labels")
                        on:click=download>{move || t(state, "Download annotated")}</button>
                    <button class="small" on:click=move |_| {
                        if let Some(input) = input_ref.get() { input.click(); }
                    }>{move || t(state, "Replace")}</button>
                    <button class="small" id="remove-image" on:click=move |_| {
                        if let Some(old) = state.image.get_untracked() {
                            let _ = web_sys::Url::revoke_object_url(&old.url);
                        }
                        state.image.set(None);
                        state.turns.set(Vec::new());
                        state.note.set(None);
                    }>{move || t(state, "Remove")}</button>
                </div>
            </Show>
            <Show when=move || !has_image()>
                <div class="dropzone">
                    <svg viewBox="0 0 24 24" width="40" height="40" aria-hidden="true">
                        <path fill="currentColor" d="M19 5v14H5V5h14m0-2H5a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h14a2 2 0 0 0 2-2V5a2 2 0 0 0-2-2zm-4.86 8.86-3 3.87L9 13.14 6 17h12l-3.86-5.14z"/>
                    </svg>
                    <p>{move || t(state, "Drop an image here, paste it (Ctrl+V), or")}</p>
                    <button class="primary" id="choose-image" on:click=move |_| {
                        if let Some(input) = input_ref.get() { input.click(); }
                    }>{move || t(state, "Choose an image")}</button>
                    <p class="hint">{move || t(state, "Without an image the model answers from text alone.")}</p>
                </div>
            </Show>
            <Show when=has_image>
                <div class="regions">
                    <span class="hint">{move || t(state, "Drag on the image to mark a region for the prompt.")}</span>
                    <ul id="regions">{regions}</ul>
                </div>
            </Show>
            <p class="hint">{move || t(state, "A new image starts a new conversation.")}</p>
        </section>
    }
}
