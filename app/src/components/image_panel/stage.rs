//! The stage: the image and the canvas over it, which draws the conversation's grounding boxes
//! and points, highlights the one under the pointer and lets a drag mark a region for the prompt.

use crate::components::overlay;
use crate::components::tasks::add_region;
use crate::i18n::t;
use crate::state::{AppState, DrawnGroup};
use leptos::prelude::*;
use protocol::grounding::{self, Shape};
use wasm_bindgen::JsCast;

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

/// The rendered size of the image, kept current in `size` by a ResizeObserver (set up once the image exists).
fn track_rendered_size(img_ref: NodeRef<leptos::html::Img>, size: RwSignal<(f64, f64)>) {
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
}

/// The canvas and what it tracks: the groups drawn, the rendered size and the region being dragged (start and
/// current corner, in displayed pixels). All handles, so the pointer handlers copy it.
#[derive(Clone, Copy)]
struct Canvas {
    state: AppState,
    node: NodeRef<leptos::html::Canvas>,
    groups: Memo<Vec<DrawnGroup>>,
    size: RwSignal<(f64, f64)>,
    drag: RwSignal<Option<(f64, f64, f64, f64)>>,
}

impl Canvas {
    /// Redraws on any change of the boxes, the hover, the drag or the size.
    fn redraw_on_change(self) {
        Effect::new(move |_| {
            let (w, h) = self.size.get();
            let hover = self.state.hover.get();
            let drag = self.drag.get();
            let has_image = self.state.image.with(Option::is_some);
            self.groups.with(|groups| {
                if let Some(canvas) = self.node.get() {
                    if has_image && w > 0.0 && h > 0.0 {
                        draw(&canvas, w, h, groups, hover, drag);
                    } else {
                        canvas.set_width(0);
                        canvas.set_height(0);
                    }
                }
            });
        });
    }

    /// A left button press starts a drag.
    fn pointer_down(self, ev: leptos::ev::PointerEvent) {
        if ev.button() != 0 {
            return;
        }
        let Some(canvas) = self.node.get_untracked() else {
            return;
        };
        ev.prevent_default();
        let _ = canvas.set_pointer_capture(ev.pointer_id());
        let (x, y, _, _) = pointer_px(&canvas, &ev);
        self.drag.set(Some((x, y, x, y)));
    }

    /// Dragging draws the region; without a drag, hovering a shape highlights its chip.
    fn pointer_move(self, ev: leptos::ev::PointerEvent) {
        let Some(canvas) = self.node.get_untracked() else {
            return;
        };
        let (x, y, w, h) = pointer_px(&canvas, &ev);
        if let Some((x0, y0, _, _)) = self.drag.get_untracked() {
            self.drag.set(Some((x0, y0, x, y)));
            return;
        }
        let hit = self.groups.with_untracked(|groups| hit(groups, x, y, w, h));
        if self.state.hover.get_untracked() != hit {
            self.state.hover.set(hit);
        }
    }

    /// The end of a drag: a region for the prompt, unless it was a click.
    fn pointer_up(self, ev: leptos::ev::PointerEvent) {
        let Some((x0, y0, _, _)) = self.drag.get_untracked() else {
            return;
        };
        self.drag.set(None);
        let Some(canvas) = self.node.get_untracked() else {
            return;
        };
        let (x1, y1, w, h) = pointer_px(&canvas, &ev);
        if (x1 - x0).abs() >= MIN_DRAG || (y1 - y0).abs() >= MIN_DRAG {
            add_region(self.state, grounding::box_from_px(x0, y0, x1, y1, w, h));
        }
    }
}

#[component]
pub fn Stage(
    /// The groups drawn: the conversation's, then the draft's.
    groups: Memo<Vec<DrawnGroup>>,
    img_ref: NodeRef<leptos::html::Img>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let canvas = Canvas {
        state,
        node: NodeRef::new(),
        groups,
        size: RwSignal::new((0.0, 0.0)),
        drag: RwSignal::new(None),
    };
    let (size, drag) = (canvas.size, canvas.drag);
    track_rendered_size(img_ref, size);
    canvas.redraw_on_change();

    let has_image = move || state.image.with(Option::is_some);
    let image_url = move || state.image.with(|i| i.as_ref().map(|i| i.url.clone()));

    view! {
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
                node_ref=canvas.node
                title=move || t(state.lang, "Drag to mark a region for the prompt")
                on:pointerdown=move |ev| canvas.pointer_down(ev)
                on:pointermove=move |ev| canvas.pointer_move(ev)
                on:pointerup=move |ev| canvas.pointer_up(ev)
                on:pointercancel=move |_| drag.set(None)
                on:pointerleave=move |_| {
                    if drag.get_untracked().is_none() {
                        state.hover.set(None);
                    }
                }
            ></canvas>
        </div>
    }
}
