//! Training curves as the paper draws them (Fig. 1, 4, 6): error (%) against iterations
//! in units of 10⁴, training error thin and dashed, test error bold, one colour per
//! network, one panel per group of networks.

use super::{COLOURS, Figure, display_name, plot_error};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

/// One network's curves: (iteration, error %) points.
pub struct Series {
    pub label: String,
    pub train: Vec<(usize, f64)>,
    pub test: Vec<(usize, f64)>,
}

pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

pub struct CurvesFigure {
    pub panels: Vec<Panel>,
    /// What the test curve is, for the axis note ("test error", "val error").
    pub test_label: String,
}

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 420;

impl Figure for CurvesFigure {
    fn size(&self) -> (u32, u32) {
        (PANEL_W * self.panels.len().max(1) as u32, PANEL_H)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let areas = root.split_evenly((1, self.panels.len().max(1)));
        for (panel, area) in self.panels.iter().zip(&areas) {
            draw_panel(panel, area, &self.test_label)?;
        }
        Ok(())
    }
}

/// The top of the error axis: the curves after their first tenth (where the paper's
/// figures start to be readable), with a margin; at most 100%.
fn y_top(panel: &Panel) -> f64 {
    let end = panel.series.iter().flat_map(|s| s.train.iter().chain(&s.test)).map(|p| p.0).max().unwrap_or(1);
    let later = panel
        .series
        .iter()
        .flat_map(|s| s.train.iter().chain(&s.test))
        .filter(|p| p.0 * 10 >= end)
        .map(|p| p.1)
        .fold(0f64, f64::max);
    (later * 1.1).clamp(5.0, 100.0)
}

fn draw_panel<DB: DrawingBackend>(panel: &Panel, area: &DrawingArea<DB, Shift>, test_label: &str) -> Result<()> {
    let end = panel.series.iter().flat_map(|s| s.train.iter().chain(&s.test)).map(|p| p.0).max().unwrap_or(1);
    let x_end = (end as f64 / 1e4).max(1e-4);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..x_end, 0f64..y_top(panel))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("iter. (1e4)")
        .y_desc("error (%)")
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|x| format!("{}", (x * 1e4).round() / 1e4))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE)
        .draw()
        .map_err(plot_error)?;
    for (i, s) in panel.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = |v: &[(usize, f64)]| v.iter().map(|&(it, e)| (it as f64 / 1e4, e)).collect::<Vec<_>>();
        chart.draw_series(DashedLineSeries::new(points(&s.train), 5, 4, colour.stroke_width(1))).map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(points(&s.test), colour.stroke_width(3)))
            .map_err(plot_error)?
            .label(display_name(&s.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
        // A dot at each evaluation, so that a run of one epoch shows too.
        chart
            .draw_series(points(&s.test).into_iter().map(|p| Circle::new(p, 3, colour.filled())))
            .map_err(plot_error)?;
    }
    super::draw_legend(&mut chart)?;
    let note = format!("dashed: training error, bold: {test_label}");
    area.draw(&Text::new(note, (64, PANEL_H as i32 - 16), ("sans-serif", 12).into_font().color(&BLACK.mix(0.7))))
        .map_err(plot_error)?;
    Ok(())
}
