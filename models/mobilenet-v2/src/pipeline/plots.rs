//! SVG plots of a run, drawn from its [`Metrics`] with plotters' SVG backend (no system
//! fonts or libraries needed): training curves, weight / activation histograms with the
//! chosen quantization range, and the per-layer fake-quant ⇄ int8 error.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::error::{PipelineError, Result};
use super::histogram::RangeHistogram;
use super::report::Metrics;

/// `curves.svg`
pub const CURVES: &str = "curves.svg";
/// `histograms.svg`
pub const HISTOGRAMS: &str = "histograms.svg";
/// `layer_error.svg`
pub const LAYER_ERROR: &str = "layer_error.svg";

const FP32_COLOR: RGBColor = RGBColor(31, 119, 180);
const QAT_COLOR: RGBColor = RGBColor(214, 39, 40);
const PTQ_COLOR: RGBColor = RGBColor(44, 160, 44);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn perr<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PipelineError + '_ {
    move |e| PipelineError::Plot {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Draw every plot the metrics have data for; returns the files written.
pub fn write_all(m: &Metrics, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if m.fp32.is_some() {
        let p = dir.join(CURVES);
        curves(m, &p)?;
        files.push(p);
    }
    let hists: Vec<&RangeHistogram> = m
        .qat
        .iter()
        .flat_map(|q| q.weight_histograms.iter())
        .chain(m.ptq.iter().flat_map(|p| p.activation_histograms.iter()))
        .chain(m.qat.iter().flat_map(|q| q.activation_histograms.iter()))
        .collect();
    if !hists.is_empty() {
        let p = dir.join(HISTOGRAMS);
        histograms(&hists, &p)?;
        files.push(p);
    }
    if let Some(i) = &m.int8 {
        let p = dir.join(LAYER_ERROR);
        layer_error(&i.compare, &p)?;
        files.push(p);
    }
    Ok(files)
}

/// Smooth a loss curve with a centred moving average (steps are noisy at small batches).
fn smooth(v: &[f32], k: usize) -> Vec<f32> {
    (0..v.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(k), (i + k + 1).min(v.len()));
            v[a..b].iter().sum::<f32>() / (b - a) as f32
        })
        .collect()
}

fn curves(m: &Metrics, path: &Path) -> Result<()> {
    let e = perr(path);
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (left, right) = root.split_horizontally(550);
    let fp = m.fp32.as_ref().expect("checked by the caller");
    let qat_loss = m
        .qat
        .as_ref()
        .map(|q| q.curve.step_loss.clone())
        .unwrap_or_default();
    let n_fp = fp.curve.step_loss.len();
    let k = (n_fp / 50).max(1);
    let fp_loss = smooth(&fp.curve.step_loss, k);
    let q_loss = smooth(&qat_loss, k);
    let ymax = fp_loss.iter().chain(&q_loss).fold(0.1f32, |a, &b| a.max(b)) * 1.05;
    let xmax = (n_fp + q_loss.len()).max(2) as f32;
    {
        let mut c = ChartBuilder::on(&left)
            .caption("training loss (moving average)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f32..xmax, 0f32..ymax)
            .map_err(&e)?;
        c.configure_mesh()
            .x_desc("step")
            .y_desc("cross-entropy")
            .draw()
            .map_err(&e)?;
        c.draw_series(LineSeries::new(
            fp_loss.iter().enumerate().map(|(i, &v)| (i as f32, v)),
            &FP32_COLOR,
        ))
        .map_err(&e)?
        .label("fp32")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], FP32_COLOR));
        if !q_loss.is_empty() {
            c.draw_series(LineSeries::new(
                q_loss
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| ((n_fp + i) as f32, v)),
                &QAT_COLOR,
            ))
            .map_err(&e)?
            .label("QAT")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], QAT_COLOR));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(&e)?;
    }
    // Accuracy per epoch: fp32 epochs, then QAT epochs continuing the axis.
    let mut fp_test = vec![];
    let mut fp_train = vec![];
    for r in &fp.curve.epochs {
        fp_test.push((r.epoch as f32, 100.0 * r.test.accuracy as f32));
        fp_train.push((r.epoch as f32, 100.0 * r.train_accuracy as f32));
    }
    let e0 = fp.curve.epochs.len() as f32;
    let mut q_test = vec![];
    let mut q_train = vec![];
    for r in m.qat.iter().flat_map(|q| q.curve.epochs.iter()) {
        q_test.push((e0 + r.epoch as f32, 100.0 * r.test.accuracy as f32));
        q_train.push((e0 + r.epoch as f32, 100.0 * r.train_accuracy as f32));
    }
    let all: Vec<f32> = fp_test
        .iter()
        .chain(&fp_train)
        .chain(&q_test)
        .chain(&q_train)
        .map(|p| p.1)
        .chain(m.ptq.iter().map(|p| 100.0 * p.fake_quant.accuracy as f32))
        .collect();
    let ylo = (all.iter().fold(100f32, |a, &b| a.min(b)) - 2.0).max(0.0);
    let xmax = (e0 + q_test.len() as f32).max(1.0) + 0.5;
    let mut c = ChartBuilder::on(&right)
        .caption("accuracy per epoch", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.5f32..xmax, ylo..100f32)
        .map_err(&e)?;
    c.configure_mesh()
        .x_desc("epoch (fp32, then QAT)")
        .y_desc("%")
        .draw()
        .map_err(&e)?;
    // (label, points, colour, solid line)
    let series = [
        ("fp32 test", &fp_test, FP32_COLOR, true),
        ("fp32 train", &fp_train, FP32_COLOR, false),
        ("QAT test (fake-quant)", &q_test, QAT_COLOR, true),
        ("QAT train", &q_train, QAT_COLOR, false),
    ];
    for (name, pts, color, solid) in series {
        if pts.is_empty() {
            continue;
        }
        let style = if solid {
            color.stroke_width(2)
        } else {
            color.mix(0.5).stroke_width(1)
        };
        c.draw_series(LineSeries::new(pts.iter().copied(), style).point_size(3))
            .map_err(&e)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    if let Some(p) = &m.ptq {
        let y = 100.0 * p.fake_quant.accuracy as f32;
        c.draw_series(LineSeries::new(
            [(0.5, y), (xmax, y)],
            PTQ_COLOR.stroke_width(1),
        ))
        .map_err(&e)?
        .label("PTQ (fake-quant)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], PTQ_COLOR));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

fn histogram_panel(area: &Area<'_>, h: &RangeHistogram, path: &Path) -> Result<()> {
    let e = perr(path);
    let ymax = h.counts.iter().copied().max().unwrap_or(1).max(1) as f32;
    // sqrt scale: the clipped tails are a handful of values next to a tall peak.
    let y = |c: u64| (c as f32).sqrt();
    let mut c = ChartBuilder::on(area)
        .caption(
            format!(
                "{} {} {} ({:.3}% clipped)",
                h.stage,
                h.layer,
                h.kind,
                100.0 * h.clipped
            ),
            ("sans-serif", 13),
        )
        .margin(6)
        .x_label_area_size(28)
        .y_label_area_size(40)
        .build_cartesian_2d(h.lo..h.hi, 0f32..ymax.sqrt() * 1.05)
        .map_err(&e)?;
    c.configure_mesh()
        .x_desc(h.unit.as_str())
        .y_desc("√count")
        .x_labels(6)
        .y_labels(4)
        .draw()
        .map_err(&e)?;
    let w = (h.hi - h.lo) / h.counts.len() as f32;
    c.draw_series(h.counts.iter().enumerate().map(|(i, &n)| {
        let x0 = h.lo + i as f32 * w;
        Rectangle::new([(x0, 0.0), (x0 + w, y(n))], FP32_COLOR.mix(0.6).filled())
    }))
    .map_err(&e)?;
    for x in h.range {
        c.draw_series(LineSeries::new(
            [(x, 0.0), (x, ymax.sqrt() * 1.05)],
            QAT_COLOR.stroke_width(2),
        ))
        .map_err(&e)?;
    }
    Ok(())
}

fn histograms(hs: &[&RangeHistogram], path: &Path) -> Result<()> {
    let e = perr(path);
    let cols = 3;
    let rows = hs.len().div_ceil(cols);
    let root = SVGBackend::new(path, (1200, 280 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let panels = root.split_evenly((rows, cols));
    for (h, area) in hs.iter().zip(panels.iter()) {
        histogram_panel(area, h, path)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

fn layer_error(c: &qat_graph::compare::CompareReport, path: &Path) -> Result<()> {
    let e = perr(path);
    let layers: Vec<_> = c.layers.iter().filter(|l| l.quantized).collect();
    let n = layers.len().max(1);
    let root = SVGBackend::new(path, (1200, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let worst = layers
        .iter()
        .map(|l| 100.0 * (1.0 - l.end_to_end.equal_fraction) as f32)
        .fold(0.1f32, f32::max);
    let mut ch = ChartBuilder::on(&root)
        .caption(
            format!(
                "fake-quant ⇄ int8, per layer ({} images; top-1 agreement {:.2}%)",
                c.samples,
                100.0 * c.top1_agreement
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        // Headroom above the tallest bar keeps the legend (upper left, where the early
        // layers' bars are short) off the bars.
        .build_cartesian_2d(0f32..n as f32, 0f32..worst * 1.3)
        .map_err(&e)?;
    ch.configure_mesh()
        .x_desc("layer (graph order)")
        .y_desc("% elements not equal")
        .draw()
        .map_err(&e)?;
    ch.draw_series(layers.iter().enumerate().map(|(i, l)| {
        let v = 100.0 * (1.0 - l.end_to_end.equal_fraction) as f32;
        let color = if l.end_to_end.max_step_diff > 1 {
            QAT_COLOR
        } else {
            FP32_COLOR
        };
        Rectangle::new([(i as f32 + 0.1, 0.0), (i as f32 + 0.9, v)], color.filled())
    }))
    .map_err(&e)?
    .label("end to end (red: some element > 1 step off)")
    .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], FP32_COLOR.filled()));
    ch.draw_series(layers.iter().enumerate().filter_map(|(i, l)| {
        let v = 100.0 * (1.0 - l.local.as_ref()?.equal_fraction) as f32;
        Some(Circle::new((i as f32 + 0.5, v), 3, PTQ_COLOR.filled()))
    }))
    .map_err(&e)?
    .label("local (own error only)")
    .legend(|(x, y)| Circle::new((x + 6, y), 3, PTQ_COLOR.filled()));
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}
