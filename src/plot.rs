//! SVG figures: the gradient check's convergence trace and training curves.

use crate::gradcheck::Report;
use plotters::prelude::*;
use std::path::Path;

type PlotResult = Result<(), Box<dyn std::error::Error>>;

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 1e-8..1.0;
    }
    (lo / 2.0).max(1e-16)..(hi * 2.0).max(lo * 10.0)
}

/// Relative error of every parameter and the energy against relaxation steps, log scale.
pub fn gradcheck_svg(path: &Path, model: &str, report: &Report) -> PlotResult {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(540);
    let steps = report.steps.max(1) as f64;
    let errors = log_range(
        report
            .params
            .iter()
            .chain(&report.inputs)
            .flat_map(|p| p.trace.iter().map(|t| t.rel_err)),
    );
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("{model}: PC update vs backprop gradient"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..steps, errors.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("relaxation step")
        .y_desc("relative error")
        .draw()?;
    // Parameters solid, the messages to the inputs dashed.
    let trace = |p: &crate::gradcheck::ParamTrace| -> Vec<(f64, f64)> {
        p.trace.iter().map(|t| (t.step as f64, t.rel_err)).collect()
    };
    let curves: Vec<Curve> = report
        .params
        .iter()
        .map(|p| (p.name.clone(), trace(p), false))
        .chain(
            report
                .inputs
                .iter()
                .map(|p| (format!("{} (input message)", p.name), trace(p), true)),
        )
        .enumerate()
        .map(|(group, (label, points, dashed))| Curve {
            label,
            points,
            group,
            dashed,
        })
        .collect();
    draw_curves(&mut chart, &curves, |v| v > 0.0)?;
    let energies = log_range(report.energy.iter().copied());
    let mut chart = ChartBuilder::on(&right)
        .caption("energy F", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..steps, energies.log_scale())?;
    chart.configure_mesh().x_desc("relaxation step").draw()?;
    chart.draw_series(LineSeries::new(
        report
            .energy
            .iter()
            .enumerate()
            .filter(|(_, e)| **e > 0.0)
            .map(|(i, e)| (i as f64, *e)),
        COLOURS[3].stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

/// One labelled curve of per-epoch values.
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Curves of one group share a colour (one model trained by PC and by BP, say).
    pub group: usize,
    /// Drawn dashed (predictive coding, against backprop's solid line).
    pub dashed: bool,
}

/// Two panels of per-epoch curves: losses (log scale) and test accuracy (or any second metric).
pub fn curves_svg(
    path: &Path,
    title: &str,
    losses: &[Curve],
    accuracies: &[Curve],
    accuracy_label: &str,
) -> PlotResult {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let epochs = losses
        .iter()
        .chain(accuracies)
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let range = log_range(losses.iter().flat_map(|c| c.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(&left)
        .caption(format!("{title}: test loss"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..epochs, range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()?;
    draw_curves(&mut chart, losses, |v| v > 0.0)?;
    let (lo, hi) = accuracies
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo - 0.02, hi + 0.02)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&right)
        .caption(format!("{title}: {accuracy_label}"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..epochs, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(accuracy_label)
        .draw()?;
    if !accuracies.is_empty() {
        draw_curves(&mut chart, accuracies, |_| true)?;
    }
    root.present()?;
    Ok(())
}

/// Draws curves (the points whose value `keep` accepts), one colour per group, dashed where
/// asked, with a legend.
fn draw_curves<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    curves: &[Curve],
    keep: impl Fn(f64) -> bool,
) -> PlotResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    for c in curves {
        let points = c.points.iter().copied().filter(|p| keep(p.1));
        let (colour, dashed) = (COLOURS[c.group % COLOURS.len()], c.dashed);
        let series = if dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 4, colour.stroke_width(2)))?
        } else {
            chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?
        };
        series
            .label(c.label.clone())
            .legend(move |(x, y)| legend_mark(x, y, colour, dashed));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A legend sample: a line, or a short dash for dashed curves.
fn legend_mark(x: i32, y: i32, colour: RGBColor, dashed: bool) -> PathElement<(i32, i32)> {
    let end = if dashed { x + 8 } else { x + 18 };
    PathElement::new(vec![(x, y), (end, y)], colour.stroke_width(2))
}

/// One run's curves: train and test loss, and test accuracy where the model has one.
pub fn training_svg(
    path: &Path,
    model: &str,
    method: &str,
    history: &[crate::train::run::EpochMetrics],
) -> PlotResult {
    let series =
        |label: &str, group: usize, f: &dyn Fn(&crate::train::run::EpochMetrics) -> Option<f64>| {
            Curve {
                label: format!("{method} {label}"),
                points: history
                    .iter()
                    .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
                    .collect(),
                group,
                dashed: false,
            }
        };
    let losses = [
        series("train loss", 0, &|m| Some(m.train_loss)),
        series("test loss", 1, &|m| Some(m.test_loss)),
    ];
    let acc = series("test accuracy", 1, &|m| m.test_acc);
    let accuracies: Vec<Curve> = if acc.points.is_empty() {
        Vec::new()
    } else {
        vec![acc]
    };
    curves_svg(path, model, &losses, &accuracies, "test accuracy")
}
