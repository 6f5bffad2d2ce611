//! The plot of a churn run: operations per second and their p99 latency
//! over time, one line per system, each fault marked where it struck.
//! SVG, drawn with plotters; no fonts to load (SVG text).
//!
//! Owns: the drawing. The numbers are `report`'s.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

/// One system's line: its name and, per second, operations and p99.
pub struct Series<'a> {
    /// Shown in the legend.
    pub name: &'a str,
    /// Per second: (second, operations, p99 latency).
    pub points: &'a [(u64, usize, Duration)],
}

/// Writes the plot to `path`. `faults`: when each struck and what it was.
pub fn write(
    path: &Path,
    title: &str,
    series: &[Series],
    faults: &[(Duration, String)],
    duration: Duration,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    let seconds = duration.as_secs_f64().max(1.0);
    // A last second cut short is left out of both panels.
    let shown = |p: &&(u64, usize, Duration)| (p.0 as f64) + 1.0 <= seconds;
    let ops_max = series
        .iter()
        .flat_map(|s| s.points.iter().filter(shown).map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let p99_max = series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .filter(shown)
                .map(|p| p.2.as_secs_f64() * 1e3)
        })
        .fold(1.0, f64::max)
        * 1.15;
    let colours = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    for (panel, area, y_max, y_label) in [
        (0, &top, ops_max, "operations / s"),
        (1, &bottom, p99_max, "p99 latency, ms (log)"),
    ] {
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60);
        if panel == 0 {
            let mut chart = builder
                .build_cartesian_2d(0f64..seconds, 0f64..y_max)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(y_label)
                .draw()
                .map_err(|e| err(&e))?;
            marks(&mut chart, faults, 0.0, y_max).map_err(|e| err(&e))?;
            for (s, colour) in series.iter().zip(colours) {
                chart
                    .draw_series(LineSeries::new(
                        s.points
                            .iter()
                            .filter(shown)
                            .map(|p| (p.0 as f64 + 0.5, p.1 as f64)),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(s.name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(&e))?;
        } else {
            let mut chart = builder
                .build_cartesian_2d(0f64..seconds, (0.1f64..y_max).log_scale())
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(y_label)
                .draw()
                .map_err(|e| err(&e))?;
            marks(&mut chart, faults, 0.1, y_max).map_err(|e| err(&e))?;
            for (s, colour) in series.iter().zip(colours) {
                chart
                    .draw_series(LineSeries::new(
                        s.points
                            .iter()
                            .filter(shown)
                            .filter(|p| p.1 > 0)
                            .map(|p| (p.0 as f64 + 0.5, (p.2.as_secs_f64() * 1e3).max(0.1))),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?;
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A grey vertical line at each fault, its name at the top.
fn marks<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    faults: &[(Duration, String)],
    low: f64,
    high: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let grey = RGBColor(150, 150, 150);
    for (at, name) in faults {
        let x = at.as_secs_f64();
        chart.draw_series(std::iter::once(PathElement::new(
            [(x, low), (x, high)],
            grey.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            name.clone(),
            (x, high),
            ("sans-serif", 10).into_font().color(&grey),
        )))?;
    }
    Ok(())
}
