//! SVG charts with plotters (svg backend only, no font files: the SVG
//! viewer renders the text).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontTransform;

use crate::report::{Cell, Results, ratios};

type DynErr = Box<dyn std::error::Error>;

pub fn color(name: &str) -> RGBColor {
    match name {
        "glibc" => RGBColor(120, 120, 120),
        "jemalloc" => RGBColor(31, 119, 180),
        "tcmalloc" => RGBColor(255, 127, 14),
        "mimalloc" => RGBColor(44, 160, 44),
        "brkmalloc" => RGBColor(214, 39, 40),
        _ => RGBColor(148, 103, 189),
    }
}

/// Grouped bars of a ratio vs glibc (log scale) for every configuration.
/// `metric` picks the value compared (lower is better).
pub fn ratio_bars(
    res: &Results,
    path: &Path,
    title: &str,
    y_desc: &str,
    metric: &dyn Fn(&Cell, bool) -> Option<f64>,
) -> Result<(), DynErr> {
    let n = res.configs.len();
    let na = res.allocs.len();
    // ratios[c][a]: Some(r) or None (failed / no glibc), plus failure flags
    let mut vals: Vec<Vec<Option<f64>>> = Vec::new();
    let mut failed: Vec<Vec<bool>> = Vec::new();
    for c in 0..n {
        let cells = res.cells(c);
        let has_rps = res.workloads[res.configs[c].0].has_rps();
        vals.push(
            (0..na)
                .map(|a| {
                    ratios(&cells, &res.allocs, a, |cell: &Cell| metric(cell, has_rps)).vs_glibc
                })
                .collect(),
        );
        failed.push(cells.iter().map(|c| c.failed()).collect());
    }
    let all: Vec<f64> = vals.iter().flatten().flatten().copied().collect();
    let lo = all.iter().copied().fold(1.0f64, f64::min).max(1e-3);
    let hi = all.iter().copied().fold(1.0f64, f64::max);
    let (y0, y1) = (lo / 1.3, hi * 1.3);

    let width = (120 + n * (na * 9 + 14)).max(900) as u32;
    let root = SVGBackend::new(path, (width, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(110)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .max_light_lines(2)
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_labels(14)
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()?;
    // glibc = 1 reference line
    chart.draw_series(LineSeries::new(
        vec![(0.0, 1.0), (n as f64, 1.0)],
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    let bw = 0.8 / na as f64;
    for (a, alloc) in res.allocs.iter().enumerate() {
        let col = color(alloc.name);
        let bars: Vec<Rectangle<(f64, f64)>> = (0..n)
            .filter_map(|c| {
                vals[c][a].map(|v| {
                    let x0 = c as f64 + 0.1 + a as f64 * bw;
                    Rectangle::new([(x0, y0), (x0 + bw * 0.9, v)], col.filled())
                })
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(alloc.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], col.filled()));
        // A failed cell gets a red cross above its bar position.
        let marks: Vec<Text<'_, (f64, f64), String>> = (0..n)
            .filter(|&c| failed[c][a])
            .map(|c| {
                let x0 = c as f64 + 0.1 + a as f64 * bw;
                let y = vals[c][a].unwrap_or(y0 * 1.05).max(y0 * 1.05);
                Text::new("✗".to_string(), (x0, y), ("sans-serif", 16).into_font().color(&RED))
            })
            .collect();
        chart.draw_series(marks)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    // Rotated configuration names under the x axis.
    let style = ("sans-serif", 13).into_font().transform(FontTransform::Rotate90).color(&BLACK);
    for c in 0..n {
        let (px, py) = chart.backend_coord(&(c as f64 + 0.5, y0));
        root.draw(&Text::new(res.label(c), (px - 6, py + 6), style.clone()))?;
    }
    if failed.iter().flatten().any(|f| *f) {
        root.draw(&Text::new(
            "✗ = at least one run of this allocator failed here (see the report)".to_string(),
            (80, 600),
            ("sans-serif", 13).into_font().color(&RED),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// Throughput (work per second, or requests per second) against thread
/// count, one panel per threaded workload.
pub fn throughput(res: &Results, path: &Path) -> Result<(), DynErr> {
    let threaded: Vec<usize> = (0..res.workloads.len())
        .filter(|&w| res.workloads[w].threaded && res.configs.iter().any(|c| c.0 == w))
        .collect();
    if threaded.is_empty() {
        return Ok(());
    }
    let cols = 3usize.min(threaded.len());
    let rows = threaded.len().div_ceil(cols);
    let root =
        SVGBackend::new(path, (420 * cols as u32, 330 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(40);
    top.draw(&Text::new(
        "Throughput against threads (median; higher is better)".to_string(),
        (12, 12),
        ("sans-serif", 18).into_font(),
    ))?;
    let panels = body.split_evenly((rows, cols));
    for (pi, &w) in threaded.iter().enumerate() {
        let wl = &res.workloads[w];
        let amount = wl.amount(res.quick) as f64;
        // series[a] = [(thread index, value)]
        let mut series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); res.allocs.len()];
        let mut ymax = 0.0f64;
        let mut threads_seen = Vec::new();
        for (c, &(cw, t)) in res.configs.iter().enumerate() {
            if cw != w {
                continue;
            }
            threads_seen.push(t);
            let xi = (t as f64).log2();
            for (a, cell) in res.cells(c).iter().enumerate() {
                let v = if wl.has_rps() {
                    cell.rps.map(|r| r.med)
                } else {
                    cell.time.map(|s| amount / s.med)
                };
                if let (Some(v), false) = (v, cell.failed()) {
                    series[a].push((xi, v));
                    ymax = ymax.max(v);
                }
            }
        }
        // Scale to a readable unit.
        let (scale, prefix) = if ymax >= 1e6 {
            (1e6, "M ")
        } else if ymax >= 1e3 {
            (1e3, "k ")
        } else {
            (1.0, "")
        };
        let what =
            if wl.has_rps() { "requests" } else { wl.unit.split(' ').next().unwrap_or("ops") };
        let lines: Vec<Line> = series
            .into_iter()
            .enumerate()
            .map(|(a, pts)| Line {
                name: res.allocs[a].name.to_string(),
                style: color(res.allocs[a].name).stroke_width(2),
                points: pts.into_iter().map(|(x, y)| (x, y / scale)).collect(),
            })
            .collect();
        let panel = Panel { title: wl.name, y_desc: &format!("{prefix}{what}/s"), log_y: false };
        line_panel(&panels[pi], &panel, &threads_seen, &lines, pi == 0)?;
    }
    root.present()?;
    Ok(())
}

/// One line of a panel: points (log2 threads, value).
pub struct Line {
    pub name: String,
    pub style: ShapeStyle,
    pub points: Vec<(f64, f64)>,
}

/// A panel's caption, y axis and scale.
pub struct Panel<'a> {
    pub title: &'a str,
    pub y_desc: &'a str,
    pub log_y: bool,
}

/// One panel of lines against threads (x = log2 of the thread count,
/// labelled with the counts in `threads`), from 0 (or, log scale, from the
/// smallest value) to the largest value; a legend when asked.
pub fn line_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    p: &Panel<'_>,
    threads: &[u32],
    lines: &[Line],
    legend: bool,
) -> Result<(), DynErr> {
    let xmax = threads.iter().map(|&t| (t as f64).log2()).fold(0.0, f64::max);
    let vals = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let ymax = vals.clone().fold(0.0f64, f64::max).max(1e-9);
    let ymin = vals.filter(|&v| v > 0.0).fold(ymax, f64::min);
    let mut b = ChartBuilder::on(area);
    b.caption(p.title, ("sans-serif", 16)).margin(10).x_label_area_size(30).y_label_area_size(55);
    let x_range = -0.2f64..xmax + 0.2;
    let x_fmt = |x: &f64| {
        let r = x.round();
        if (x - r).abs() < 0.05 && r >= 0.0 {
            format!("{}", 1u32 << (r as u32))
        } else {
            String::new()
        }
    };
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .max_light_lines(2)
                .x_labels((xmax.round() as usize + 1).max(2))
                .x_label_formatter(&x_fmt)
                .x_desc("threads")
                .y_desc(p.y_desc)
                .draw()?;
            for l in lines {
                let style = l.style;
                chart
                    .draw_series(LineSeries::new(l.points.clone(), style))?
                    .label(l.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], style));
                chart.draw_series(
                    l.points.iter().map(|&pt| Circle::new(pt, 3, style.color.filled())),
                )?;
            }
            if legend {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 11))
                    .draw()?;
            }
        }};
    }
    if p.log_y {
        draw!(b.build_cartesian_2d(x_range, (ymin / 1.3..ymax * 1.3).log_scale())?);
    } else {
        draw!(b.build_cartesian_2d(x_range, 0f64..ymax * 1.15)?);
    }
    Ok(())
}
