//! Fig. 7: the standard deviation of each 3×3 layer's response, one line per network;
//! the top panel in layer order, the bottom one sorted by magnitude, largest first.

use super::{COLOURS, Figure, display_name, plot_error};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

pub struct ResponsesFigure {
    /// (network, per-layer std in layer order).
    pub networks: Vec<(String, Vec<f64>)>,
}

impl Figure for ResponsesFigure {
    fn size(&self) -> (u32, u32) {
        (760, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (top, bottom) = root.split_vertically(350);
        self.panel(&top, "layer index (original)", false)?;
        self.panel(&bottom, "layer index (sorted by magnitude)", true)
    }
}

impl ResponsesFigure {
    fn panel<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, x_desc: &str, sorted: bool) -> Result<()> {
        let layers = self.networks.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(2);
        let top = self.networks.iter().flat_map(|(_, v)| v.iter().copied()).fold(0f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(1f64..layers as f64, 0f64..top.max(1e-6))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("std")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_error)?;
        for (i, (name, values)) in self.networks.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut v = values.clone();
            if sorted {
                v.sort_by(|a, b| b.total_cmp(a));
            }
            let points: Vec<(f64, f64)> = v.iter().enumerate().map(|(k, &s)| ((k + 1) as f64, s)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(display_name(name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled()))).map_err(plot_error)?;
        }
        super::draw_legend(&mut chart)?;
        Ok(())
    }
}
