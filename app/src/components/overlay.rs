//! Painting grounding groups on a 2D canvas context: the live overlay over the image and the
//! annotated PNG download share this code, so the file looks like the page.

use crate::state::DrawnGroup;
use protocol::grounding::{self, Shape};
use wasm_bindgen::{JsCast, JsValue};

/// Paints `groups` over an image drawn `width` × `height` (context units). `scale` multiplies
/// line widths, text and dots (1 on the page; larger for a full-resolution export).
pub fn paint(
    ctx: &web_sys::CanvasRenderingContext2d,
    width: f64,
    height: f64,
    groups: &[DrawnGroup],
    hover: Option<usize>,
    scale: f64,
) {
    ctx.set_font(&format!("600 {:.1}px system-ui, sans-serif", 12.0 * scale));
    ctx.set_text_baseline("top");
    for g in groups {
        let colour = crate::palette::colour(g.index);
        let hot = hover == Some(g.index);
        let dim = hover.is_some() && !hot;
        ctx.set_global_alpha(if dim { 0.35 } else { 1.0 });
        ctx.set_stroke_style_str(colour);
        ctx.set_fill_style_str(colour);
        ctx.set_line_width(scale * if hot { 4.0 } else { 2.5 });
        set_dash(ctx, if g.dashed { &[7.0, 4.0][..] } else { &[] }, scale);
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
                    label(ctx, &tag, r.x, r.y, colour, width, scale);
                }
                Shape::Point(_) => {
                    set_dash(ctx, &[], scale);
                    ctx.begin_path();
                    let radius = scale * if hot { 7.0 } else { 5.5 };
                    let _ = ctx.arc(r.x, r.y, radius, 0.0, std::f64::consts::TAU);
                    ctx.fill();
                    ctx.set_stroke_style_str("#ffffff");
                    ctx.set_line_width(1.5 * scale);
                    ctx.stroke();
                    ctx.set_stroke_style_str(colour);
                    ctx.set_line_width(scale * if hot { 4.0 } else { 2.5 });
                    label(
                        ctx,
                        &tag,
                        r.x + 8.0 * scale,
                        r.y - 8.0 * scale,
                        colour,
                        width,
                        scale,
                    );
                }
            }
        }
    }
    set_dash(ctx, &[], scale);
    ctx.set_global_alpha(1.0);
}

/// The rectangle being dragged: black and white dashes, visible on any image.
pub fn paint_rubber_band(ctx: &web_sys::CanvasRenderingContext2d, r: (f64, f64, f64, f64)) {
    let (x, y, w, h) = (
        r.0.min(r.2),
        r.1.min(r.3),
        (r.2 - r.0).abs(),
        (r.3 - r.1).abs(),
    );
    ctx.set_line_width(1.5);
    set_dash(ctx, &[5.0, 5.0], 1.0);
    ctx.set_stroke_style_str("#000000");
    ctx.stroke_rect(x, y, w, h);
    ctx.set_line_dash_offset(5.0);
    ctx.set_stroke_style_str("#ffffff");
    ctx.stroke_rect(x, y, w, h);
    ctx.set_line_dash_offset(0.0);
    set_dash(ctx, &[], 1.0);
}

fn set_dash(ctx: &web_sys::CanvasRenderingContext2d, pattern: &[f64], scale: f64) {
    let array = js_sys::Array::new();
    for v in pattern {
        array.push(&JsValue::from_f64(v * scale));
    }
    let _ = ctx.set_line_dash(&array);
}

/// A filled tag with the group's number and label, just above (or inside) the top-left corner.
fn label(
    ctx: &web_sys::CanvasRenderingContext2d,
    text: &str,
    x: f64,
    y: f64,
    colour: &str,
    max_w: f64,
    scale: f64,
) {
    let text_w = ctx
        .measure_text(text)
        .map_or(8.0 * scale * text.len() as f64, |m| m.width());
    let (w, h) = (text_w + 8.0 * scale, 17.0 * scale);
    let x = x.min(max_w - w).max(0.0);
    let y = if y >= h { y - h } else { y };
    ctx.set_fill_style_str(colour);
    ctx.fill_rect(x, y, w, h);
    ctx.set_fill_style_str("#111111");
    let _ = ctx.fill_text(text, x + 4.0 * scale, y + 2.5 * scale);
    ctx.set_fill_style_str(colour);
}

/// The 2D context of `canvas`.
pub fn context(canvas: &web_sys::HtmlCanvasElement) -> Option<web_sys::CanvasRenderingContext2d> {
    canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into().ok())
}

/// Downloads `img` at its full resolution with `groups` painted on it, as `<stem>-annotated.png`.
pub fn download_png(
    img: &web_sys::HtmlImageElement,
    groups: &[DrawnGroup],
    file_name: &str,
) -> Result<(), JsValue> {
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let (w, h) = (img.natural_width(), img.natural_height());
    if w == 0 || h == 0 {
        return Err("the image is not loaded".into());
    }
    let canvas: web_sys::HtmlCanvasElement = document.create_element("canvas")?.dyn_into()?;
    canvas.set_width(w);
    canvas.set_height(h);
    let ctx = context(&canvas).ok_or("no 2d context")?;
    ctx.draw_image_with_html_image_element(img, 0.0, 0.0)?;
    // Lines and text as thick, relative to the image, as on a ~640-pixel-wide view.
    let scale = (f64::from(w.max(h)) / 640.0).max(1.0);
    paint(&ctx, f64::from(w), f64::from(h), groups, None, scale);
    let url = canvas.to_data_url_with_type("image/png")?;
    let link: web_sys::HtmlAnchorElement = document.create_element("a")?.dyn_into()?;
    link.set_href(&url);
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name, |(stem, _)| stem);
    link.set_download(&format!("{stem}-annotated.png"));
    link.click();
    Ok(())
}
