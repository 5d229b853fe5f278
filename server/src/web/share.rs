//! `--share`'s link as a QR code: blocks of text for the terminal, SVG for the host's page (its Share button,
//! `app::components::share`).

use app::components::share::ShareLink;
use qrcode::render::{svg, unicode};
use qrcode::{EcLevel, QrCode};

fn code(link: &str) -> Option<QrCode> {
    // Medium error correction: a phone camera reads it off a screen at a glance.
    QrCode::with_error_correction_level(link.as_bytes(), EcLevel::M).ok()
}

/// The QR code as half-block characters (two modules per character, dark on light, with the quiet zone), for a
/// terminal. `None` for a link too long for a QR code.
pub fn terminal(link: &str) -> Option<String> {
    Some(
        code(link)?
            .render::<unicode::Dense1x2>()
            .dark_color(unicode::Dense1x2::Light)
            .light_color(unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The QR code as an SVG document that scales to its box.
pub fn svg(link: &str) -> Option<String> {
    Some(
        code(link)?
            .render::<svg::Color>()
            .min_dimensions(200, 200)
            .dark_color(svg::Color("#000000"))
            .light_color(svg::Color("#ffffff"))
            .quiet_zone(true)
            .build(),
    )
}

/// The link this process shares (set once by `serve --share`, before the router is built).
static SHARED: std::sync::OnceLock<ShareLink> = std::sync::OnceLock::new();

/// Records `link` as the one to show on the host's page.
pub fn set_link(link: &str) {
    if let Some(qr_svg) = svg(link) {
        let _ = SHARED.set(ShareLink {
            link: link.to_string(),
            qr_svg,
        });
    }
}

/// The shared link and its QR code, if this process shares one.
pub fn current() -> Option<ShareLink> {
    SHARED.get().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the terminal rendering back into modules (a space or `▄` top half is dark, as printed inverted for
    /// a dark terminal) and decodes it.
    fn decode_terminal(text: &str) -> String {
        let rows: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        let width = rows[0].len();
        let height = rows.len() * 2;
        // Dense1x2 with dark/light swapped prints light modules as ink: a module is dark when not drawn.
        let dark = |x: usize, y: usize| {
            let c = rows[y / 2][x];
            let (top, bottom) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                _ => (false, false),
            };
            !(if y.is_multiple_of(2) { top } else { bottom })
        };
        let scale = 4;
        let mut img =
            rqrr::PreparedImage::prepare_from_greyscale(width * scale, height * scale, |x, y| {
                if dark(x / scale, y / scale) {
                    0
                } else {
                    255
                }
            });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the rendering");
        grids[0].decode().expect("decodes").1
    }

    #[test]
    fn terminal_code_decodes_to_the_link() {
        let link = "http://192.168.1.20:3000/?token=3q2-Vw8kLmNoPqRsTuVwXyZ012345";
        let text = terminal(link).unwrap();
        assert_eq!(decode_terminal(&text), link);
    }

    #[test]
    fn svg_has_the_code_and_scales() {
        let svg = svg("http://10.0.0.2:3000/?token=x").unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("viewBox"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        assert!(svg.contains("#000000"));
    }
}
