//! The paper's figures drawn with `plotters`, each written as SVG and PNG. Text uses
//! DejaVu Sans, embedded in the binary (assets/fonts, with its licence), so a machine
//! without system fonts draws the same figures.

pub mod curves;
pub mod responses;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The embedded file is a valid font: a failure here is a build defect.
            plotters::style::register_font("sans-serif", style, FONT).unwrap_or_else(|_| panic!("embedded font"));
        }
    });
}

/// A figure that can draw itself on any backend.
pub trait Figure {
    /// Width and height in pixels (of the PNG; the SVG's units).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Writes `fig` to `base`.svg and `base`.png; returns the two paths.
pub fn save(fig: &impl Figure, base: &Path) -> Result<[PathBuf; 2]> {
    register_font();
    let (w, h) = fig.size();
    let (svg_path, png_path) = (base.with_extension("svg"), base.with_extension("png"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        fig.draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    crate::files::write_atomic(&svg_path, svg.as_bytes())?;
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        fig.draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    let image = image::RgbImage::from_raw(w, h, pixels).ok_or_else(|| anyhow!("a {w}x{h} image"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    crate::files::write_atomic(&png_path, png.get_ref())?;
    Ok([svg_path, png_path])
}

/// A plotters error as ours (its error types borrow nothing but are generic).
pub(crate) fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing a figure: {e}")
}

/// The legend of a panel's labelled series, in its top-right corner.
pub(crate) fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_error)
}

/// Line colours, one per network of a panel (colour-blind-safe, Okabe–Ito).
pub(crate) const COLOURS: [RGBColor; 7] = [
    RGBColor(230, 159, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// "resnet56" → "ResNet-56", "plain20" → "plain-20", "resnet34-B" → "ResNet-34 B".
pub fn display_name(run: &str) -> String {
    let (base, option) = run.split_once('-').map_or((run, None), |(b, o)| (b, Some(o)));
    let digits = base.find(|c: char| c.is_ascii_digit()).unwrap_or(base.len());
    let (family, depth) = base.split_at(digits);
    let family = match family {
        "resnet" => "ResNet",
        f => f,
    };
    let mut name = if depth.is_empty() { family.to_string() } else { format!("{family}-{depth}") };
    if let Some(o) = option {
        name += &format!(" {o}");
    }
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_as_the_paper_writes_them() {
        assert_eq!(super::display_name("resnet56"), "ResNet-56");
        assert_eq!(super::display_name("plain20"), "plain-20");
        assert_eq!(super::display_name("resnet34-B"), "ResNet-34 B");
        assert_eq!(super::display_name("resnet20-seed2"), "ResNet-20 seed2");
    }
}
