//! `timeline.svg`: one picture of the run. Stacked panels share the time
//! axis so a cause and its effect line up vertically: the state strip
//! (running / slowing / paused, pauses numbered), each signal against its
//! slow and stop levels, the throughput, then the three knobs. Pause bands
//! are shaded across every panel; their reasons are listed at the bottom.

use chrono::{DateTime, Utc};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::ReportInfo;
use super::runbook::num;
use super::stats::RunStats;
use crate::controller::fmt_dur;
use crate::history::{History, Sample};
use crate::telemetry::events::group;

const WIDTH: u32 = 1400;
const LEFT: u32 = 90;
const RIGHT: u32 = 90;
const HEADER: u32 = 64;
const STRIP: u32 = 58;
const SIGNAL_H: u32 = 150;
const RATE_H: u32 = 150;
const KNOB_H: u32 = 105;
const AXIS_H: u32 = 34;
const FOOT_LINE: u32 = 18;
/// Pause reasons listed under the chart; more are counted.
const MAX_FOOT: usize = 12;
/// Points per series after downsampling: about one per pixel column.
const BUCKETS: usize = 1200;
const FONT: &str = "sans-serif";

const C_VALUE: RGBColor = RGBColor(31, 119, 180);
const C_SLOW: RGBColor = RGBColor(255, 127, 14);
const C_STOP: RGBColor = RGBColor(214, 39, 40);
const C_BASE: RGBColor = RGBColor(127, 127, 127);
const C_RATE: RGBColor = RGBColor(44, 160, 44);
const C_DONE: RGBColor = RGBColor(60, 60, 60);
const C_BATCH: RGBColor = RGBColor(148, 103, 189);
const C_SLEEP: RGBColor = RGBColor(140, 86, 75);
const C_WORKERS: RGBColor = RGBColor(23, 190, 207);
const C_RUNNING: RGBColor = RGBColor(44, 160, 44);
const C_PAUSED: RGBColor = RGBColor(214, 39, 40);
const C_DONE_STATE: RGBColor = RGBColor(150, 150, 150);
const C_MISSING: RGBColor = RGBColor(200, 200, 200);
/// The controller's estimate: darker than the raw value it smooths.
const C_ESTIMATE: RGBColor = RGBColor(8, 48, 107);
const C_TARGET: RGBColor = RGBColor(0, 90, 50);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

/// Render the timeline as SVG text (credentials redacted).
pub fn svg(h: &History, stats: Option<&RunStats>, info: &ReportInfo) -> anyhow::Result<String> {
    let n_pauses = stats.map_or(0, |s| s.pauses.len());
    let foot_lines = if n_pauses == 0 {
        0
    } else {
        n_pauses.min(MAX_FOOT) as u32 + 1 + u32::from(n_pauses > MAX_FOOT)
    };
    let height = HEADER
        + STRIP
        + SIGNAL_H * h.signals.len() as u32
        + RATE_H
        + 3 * KNOB_H
        + AXIS_H
        + foot_lines * FOOT_LINE
        + 10;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        match stats {
            Some(s) if h.samples.len() >= 2 => draw(&root, h, s, info)?,
            _ => {
                root.draw(&Text::new(
                    format!(
                        "pacer · {} · no progress was recorded, nothing to chart",
                        h.job
                    ),
                    (20, 30),
                    (FONT, 18).into_font(),
                ))
                .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(crate::telemetry::redact::text(&out).into_owned())
}

struct Ctx<'a> {
    t0: DateTime<Utc>,
    t1: DateTime<Utc>,
    tz: chrono_tz::Tz,
    samples: &'a [Sample],
    stats: &'a RunStats,
    /// Time-axis label format: hours, or dates too for runs over a day.
    tfmt: &'static str,
}

fn draw(root: &Area<'_>, h: &History, s: &RunStats, info: &ReportInfo) -> anyhow::Result<()> {
    let tz = info.timezone();
    let t0 = s.start;
    let t1 = if s.end > t0 {
        s.end
    } else {
        t0 + chrono::Duration::seconds(1)
    };
    let tfmt = if (t1 - t0) > chrono::Duration::hours(36) {
        "%m-%d %H:%M"
    } else if (t1 - t0) < chrono::Duration::minutes(15) {
        // Short runs: minute labels would repeat along the axis.
        "%H:%M:%S"
    } else {
        "%H:%M"
    };
    let cx = Ctx {
        t0,
        t1,
        tz,
        samples: &h.samples,
        stats: s,
        tfmt,
    };

    let (header, rest) = root.split_vertically(HEADER);
    draw_header(&header, h, &cx)?;
    let (strip, mut rest) = rest.split_vertically(STRIP);
    draw_state_strip(&strip, &cx)?;

    for sig in &h.signals {
        let (area, r) = rest.split_vertically(SIGNAL_H);
        rest = r;
        let pts: Vec<(DateTime<Utc>, Option<f64>)> = h
            .samples
            .iter()
            .map(|x| (x.at, x.signals.get(&sig.name).copied().flatten()))
            .collect();
        // The controller's estimate, where the run recorded it: decisions
        // judge it, not the raw reading.
        let est: Vec<(DateTime<Utc>, Option<f64>)> = h
            .samples
            .iter()
            .map(|x| (x.at, x.estimates.get(&sig.name).copied().flatten()))
            .collect();
        let has_est = est.iter().any(|p| p.1.is_some());
        let mut legend = vec![Legend::line(sig.name.clone(), C_VALUE, false)];
        if has_est {
            legend.push(Legend::line("estimate".into(), C_ESTIMATE, false));
        }
        if let Some(v) = sig.slow {
            legend.push(Legend::line(format!("slow above {}", num(v)), C_SLOW, true));
        }
        if let Some(v) = sig.stop {
            legend.push(Legend::line(format!("stop above {}", num(v)), C_STOP, true));
        }
        if let Some(v) = sig.baseline {
            legend.push(Legend::line(format!("baseline {}", num(v)), C_BASE, true));
        }
        let title = format!("signal {}", sig.name);
        let max_v = pts
            .iter()
            .filter_map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let min_v = pts.iter().filter_map(|p| p.1).fold(f64::INFINITY, f64::min);
        let top = [
            max_v,
            sig.stop.unwrap_or(f64::NEG_INFINITY),
            sig.slow.unwrap_or(f64::NEG_INFINITY),
        ]
        .into_iter()
        .fold(f64::NEG_INFINITY, f64::max);
        let mut top = if top.is_finite() && top > 0.0 {
            top * 1.12
        } else {
            1.0
        };
        // A spike far above the stop level would squash the levels into the
        // floor; clip the axis at 3× the highest level and say so.
        let highest_level = sig.stop.or(sig.slow).unwrap_or(0.0);
        if highest_level > 0.0 && max_v > highest_level * 3.0 {
            top = highest_level * 3.0;
            legend.push(Legend::note(format!(
                "↑ peak {} is off the scale",
                num(max_v)
            )));
        }
        // Zoom onto the band where the value and its levels live: a latency
        // hovering at 0.4 against levels at 0.40 and 0.50 is unreadable on
        // an axis from zero.
        let floor = [
            min_v,
            sig.baseline.unwrap_or(f64::INFINITY),
            sig.slow.unwrap_or(f64::INFINITY),
        ]
        .into_iter()
        .fold(f64::INFINITY, f64::min);
        let bottom = if !floor.is_finite() {
            0.0
        } else if floor < 0.0 {
            floor * 1.12
        } else {
            (floor - 0.25 * (top - floor)).max(0.0)
        };
        let bottom = if floor.is_finite() && floor > 0.0 && bottom < 0.5 * floor {
            0.0
        } else {
            bottom
        };
        let levels: Vec<(f64, RGBColor)> = [
            (sig.baseline, C_BASE),
            (sig.slow, C_SLOW),
            (sig.stop, C_STOP),
        ]
        .into_iter()
        .filter_map(|(v, c)| v.map(|v| (v, c)))
        .collect();
        let missing = missing_spans(&pts, cx.t1);
        if !missing.is_empty() {
            legend.push(Legend::block("missing", C_MISSING));
        }
        panel(
            &area,
            &cx,
            &title,
            &legend,
            YAxis {
                range: bottom..top,
                ticks: 4,
            },
            false,
            |chart| {
                chart
                    .draw_series(missing.iter().map(|(a, b)| {
                        Rectangle::new([(*a, top), (*b, bottom)], C_MISSING.mix(0.6).filled())
                    }))
                    .map_err(err)?;
                let segs = segments(&pts);
                chart
                    .draw_series(segs.into_iter().map(|seg| {
                        let seg: Vec<_> = envelope(&seg)
                            .into_iter()
                            .map(|(t, v)| (t, v.clamp(bottom, top)))
                            .collect();
                        PathElement::new(seg, C_VALUE.stroke_width(2))
                    }))
                    .map_err(err)?;
                chart
                    .draw_series(segments(&est).into_iter().map(|seg| {
                        let seg: Vec<_> = envelope(&seg)
                            .into_iter()
                            .map(|(t, v)| (t, v.clamp(bottom, top)))
                            .collect();
                        PathElement::new(seg, C_ESTIMATE.stroke_width(2))
                    }))
                    .map_err(err)?;
                // Levels on top: the value often hovers right at the slow level.
                for (v, c) in &levels {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(cx.t0, *v), (cx.t1, *v)],
                            9,
                            5,
                            c.stroke_width(2),
                        ))
                        .map_err(err)?;
                }
                Ok(())
            },
        )?;
    }

    // Throughput, with rows done on the right-hand axis.
    let (area, r) = rest.split_vertically(RATE_H);
    rest = r;
    // The rate between consecutive samples, from rows done: a producer's
    // own rows/s may be a trailing average that would smear into pauses.
    let rate: Vec<(DateTime<Utc>, f64)> = h
        .samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].at - w[0].at).as_seconds_f64();
            let rows = w[1].rows_done.saturating_sub(w[0].rows_done) as f64;
            (w[1].at, if dt > 0.0 { rows / dt } else { 0.0 })
        })
        .collect();
    let rate = mean_buckets(&rate);
    // What the knobs aimed at, where the run recorded it.
    let target: Vec<(DateTime<Utc>, f64)> = h
        .samples
        .iter()
        .filter_map(|x| Some((x.at, x.target_rate?)))
        .collect();
    let target = mean_buckets(&target);
    let rmax = rate
        .iter()
        .chain(&target)
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.12;
    let done_max = h
        .samples
        .iter()
        .map(|x| x.rows_done)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.05;
    let done: Vec<(DateTime<Utc>, f64)> = h
        .samples
        .iter()
        .map(|x| (x.at, x.rows_done as f64))
        .collect();
    let done = envelope(&done);
    draw_rate(&area, &cx, &rate, &target, rmax, &done, done_max)?;

    let knob = |f: &dyn Fn(&Sample) -> f64| -> Vec<(DateTime<Utc>, f64)> {
        envelope(&h.samples.iter().map(|x| (x.at, f(x))).collect::<Vec<_>>())
    };
    let batch = knob(&|x| x.knobs.batch_size as f64);
    let sleep = knob(&|x| x.knobs.sleep.as_secs_f64() * 1000.0);
    let workers = knob(&|x| x.knobs.workers as f64);
    let limits = info.policy.as_ref().map(|p| &p.limits);
    let bmax = limits.map_or(0.0, |l| l.batch_size.max as f64);
    let smax = limits.map_or(0.0, |l| l.sleep.max.as_secs_f64() * 1000.0);
    let wmax = limits.map_or(0.0, |l| l.workers.max as f64);

    let knob_panel = |area: &Area<'_>,
                      title: &str,
                      label: &str,
                      pts: &[(DateTime<Utc>, f64)],
                      c: RGBColor,
                      lim: f64,
                      last: bool| {
        let peak = pts.iter().map(|p| p.1).fold(lim, f64::max).max(1.0);
        // Workers are whole numbers: ticks at integers, never at 0.5.
        let (top, ticks) = if last {
            let top = (peak + 1.0).ceil();
            (top, (top as usize + 1).min(5))
        } else {
            (peak * 1.12, 4)
        };
        let mut legend = vec![Legend::line(label.to_string(), c, false)];
        if lim > 0.0 {
            legend.push(Legend::line(format!("max {}", num(lim)), C_BASE, true));
        }
        let y = YAxis {
            range: 0.0..top,
            ticks,
        };
        panel(area, &cx, title, &legend, y, last, |chart| {
            if lim > 0.0 {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(cx.t0, lim), (cx.t1, lim)],
                        6,
                        6,
                        C_BASE.stroke_width(1),
                    ))
                    .map_err(err)?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    steps(pts),
                    c.stroke_width(2),
                )))
                .map_err(err)?;
            Ok(())
        })
    };
    let (a, r) = rest.split_vertically(KNOB_H);
    knob_panel(
        &a,
        "batch size (rows per transaction)",
        "batch size",
        &batch,
        C_BATCH,
        bmax,
        false,
    )?;
    let (a, r) = r.split_vertically(KNOB_H);
    knob_panel(
        &a,
        "sleep between batches (ms)",
        "sleep ms",
        &sleep,
        C_SLEEP,
        smax,
        false,
    )?;
    let (a, r) = r.split_vertically(KNOB_H + AXIS_H);
    knob_panel(
        &a,
        "workers (concurrent transactions)",
        "workers",
        &workers,
        C_WORKERS,
        wmax,
        true,
    )?;
    draw_footer(&r, &cx)?;
    Ok(())
}

/// One legend entry, drawn in the panel's title row so it never covers data.
struct Legend {
    text: String,
    color: RGBColor,
    dashed: bool,
    filled: bool,
    /// Text only, no swatch.
    note: bool,
}

impl Legend {
    fn line(text: String, color: RGBColor, dashed: bool) -> Legend {
        Legend {
            text,
            color,
            dashed,
            filled: false,
            note: false,
        }
    }
    fn note(text: String) -> Legend {
        Legend {
            text,
            color: BLACK,
            dashed: false,
            filled: false,
            note: true,
        }
    }
    fn block(text: &str, color: RGBColor) -> Legend {
        Legend {
            text: text.to_string(),
            color,
            dashed: false,
            filled: true,
            note: false,
        }
    }
}

/// Rough text width for the SVG's sans-serif at `size` px (the backend
/// cannot measure text).
fn text_w(text: &str, size: u32) -> i32 {
    (text.chars().count() as f64 * size as f64 * 0.56).ceil() as i32
}

fn draw_title_row(area: &Area<'_>, title: &str, legend: &[Legend]) -> anyhow::Result<()> {
    let y = 12;
    let mut x = LEFT as i32;
    area.draw(&Text::new(
        title.to_string(),
        (x, y),
        (FONT, 14)
            .into_font()
            .style(FontStyle::Bold)
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))
    .map_err(err)?;
    x += text_w(title, 14) + 24;
    for l in legend {
        if l.note {
            area.draw(&Text::new(
                l.text.clone(),
                (x, y),
                (FONT, 12)
                    .into_font()
                    .style(FontStyle::Italic)
                    .color(&BLACK.mix(0.7))
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
            x += text_w(&l.text, 12) + 18;
            continue;
        }
        if l.filled {
            area.draw(&Rectangle::new(
                [(x, y - 5), (x + 18, y + 5)],
                l.color.mix(0.6).filled(),
            ))
            .map_err(err)?;
        } else if l.dashed {
            area.draw(&PathElement::new(
                vec![(x, y), (x + 7, y)],
                l.color.stroke_width(2),
            ))
            .map_err(err)?;
            area.draw(&PathElement::new(
                vec![(x + 11, y), (x + 18, y)],
                l.color.stroke_width(2),
            ))
            .map_err(err)?;
        } else {
            area.draw(&PathElement::new(
                vec![(x, y), (x + 18, y)],
                l.color.stroke_width(3),
            ))
            .map_err(err)?;
        }
        x += 24;
        area.draw(&Text::new(
            l.text.clone(),
            (x, y),
            (FONT, 12)
                .into_font()
                .color(&BLACK.mix(0.85))
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
        x += text_w(&l.text, 12) + 18;
    }
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<
        plotters::coord::types::RangedDateTime<DateTime<Utc>>,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// A panel's value range and how many tick labels it gets.
struct YAxis {
    range: std::ops::Range<f64>,
    ticks: usize,
}

/// A panel: title row with legend, y axis on the left, pause bands, then
/// whatever `body` draws. Only the last panel shows time labels.
fn panel(
    area: &Area<'_>,
    cx: &Ctx<'_>,
    title: &str,
    legend: &[Legend],
    y: YAxis,
    last: bool,
    body: impl FnOnce(&mut Chart<'_, '_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    draw_title_row(area, title, legend)?;
    let YAxis {
        range: y,
        ticks: y_ticks,
    } = y;
    let mut chart = ChartBuilder::on(area)
        .margin_top(24)
        .margin_bottom(6)
        .margin_right(RIGHT)
        .y_label_area_size(LEFT)
        .x_label_area_size(if last { AXIS_H } else { 0 })
        .build_cartesian_2d(cx.t0..cx.t1, y.clone())
        .map_err(err)?;
    let tz = cx.tz;
    let tfmt = cx.tfmt;
    let xfmt = move |t: &DateTime<Utc>| t.with_timezone(&tz).format(tfmt).to_string();
    let axis_desc = format!("time ({})", cx.tz.name());
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(14)
        .y_labels(y_ticks)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&|v: &f64| compact(*v))
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.08))
        .axis_style(BLACK.mix(0.4))
        .label_style((FONT, 12));
    if last {
        mesh.x_desc(axis_desc.as_str());
    }
    mesh.draw().map_err(err)?;
    chart
        .draw_series(cx.stats.pauses.iter().map(|p| {
            let to = p.to.unwrap_or(cx.t1).min(cx.t1);
            Rectangle::new(
                [(p.from.max(cx.t0), y.end), (to, y.start)],
                C_PAUSED.mix(0.10).filled(),
            )
        }))
        .map_err(err)?;
    body(&mut chart)
}

fn draw_header(area: &Area<'_>, h: &History, cx: &Ctx<'_>) -> anyhow::Result<()> {
    let s = cx.stats;
    let title = format!("pacer · {}", h.job);
    area.draw(&Text::new(
        title,
        (LEFT as i32, 18),
        (FONT, 20).into_font().style(FontStyle::Bold).color(&BLACK),
    ))
    .map_err(err)?;
    let total_pause: std::time::Duration = s.pauses.iter().map(|p| s.pause_length(p)).sum();
    let line = format!(
        "{} → {} ({})  ·  {}  ·  {} rows  ·  avg {} rows/s, peak {} rows/s over 1 min  ·  {} pause{} ({})  ·  ended {}",
        cx.t0.with_timezone(&cx.tz).format("%Y-%m-%d %H:%M"),
        cx.t1
            .with_timezone(&cx.tz)
            .format(if cx.tfmt.starts_with("%H") {
                "%H:%M"
            } else {
                "%Y-%m-%d %H:%M"
            }),
        cx.tz.name(),
        fmt_dur(s.duration),
        group(s.rows),
        group(s.avg_rate.round() as u64),
        group(s.peak_rate.round() as u64),
        s.pauses.len(),
        if s.pauses.len() == 1 { "" } else { "s" },
        fmt_dur(total_pause),
        s.final_state
    );
    area.draw(&Text::new(
        line,
        (LEFT as i32, 46),
        (FONT, 14).into_font().color(&BLACK.mix(0.8)),
    ))
    .map_err(err)?;
    Ok(())
}

fn state_color(state: &str) -> RGBColor {
    match state {
        "running" => C_RUNNING,
        "slowing" => C_SLOW,
        "paused" => C_PAUSED,
        _ => C_DONE_STATE,
    }
}

fn draw_state_strip(area: &Area<'_>, cx: &Ctx<'_>) -> anyhow::Result<()> {
    let legend = [
        Legend::block("running", C_RUNNING),
        Legend::block("slowing down", C_SLOW),
        Legend::block("paused (P1, P2, … listed below)", C_PAUSED),
    ];
    draw_title_row(area, "state", &legend)?;
    let mut chart = ChartBuilder::on(area)
        .margin_top(24)
        .margin_bottom(4)
        .margin_right(RIGHT)
        .y_label_area_size(LEFT)
        .build_cartesian_2d(cx.t0..cx.t1, 0.0..1.0)
        .map_err(err)?;
    let runs = state_runs(cx.samples, cx.t0, cx.t1);
    chart
        .draw_series(runs.iter().map(|(a, b, st)| {
            Rectangle::new([(*a, 1.0), (*b, 0.0)], state_color(st).mix(0.6).filled())
        }))
        .map_err(err)?;
    let plot_w = (WIDTH - LEFT - RIGHT) as f64;
    let span = (cx.t1 - cx.t0).num_milliseconds().max(1) as f64;
    for (i, p) in cx.stats.pauses.iter().enumerate() {
        let to = p.to.unwrap_or(cx.t1).min(cx.t1);
        let px = (to - p.from).num_milliseconds() as f64 / span * plot_w;
        let label = format!("P{}", i + 1);
        // Label narrow bands just after their start so short pauses stay findable.
        let mid = if px >= text_w(&label, 12) as f64 + 4.0 {
            p.from + (to - p.from) / 2
        } else {
            p.from
        };
        let pos = if px >= text_w(&label, 12) as f64 + 4.0 {
            HPos::Center
        } else {
            HPos::Left
        };
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (mid, 0.5),
                (FONT, 12)
                    .into_font()
                    .style(FontStyle::Bold)
                    .color(&WHITE)
                    .pos(Pos::new(pos, VPos::Center)),
            )))
            .map_err(err)?;
    }
    Ok(())
}

fn draw_rate(
    area: &Area<'_>,
    cx: &Ctx<'_>,
    rate: &[(DateTime<Utc>, f64)],
    target: &[(DateTime<Utc>, f64)],
    rmax: f64,
    done: &[(DateTime<Utc>, f64)],
    done_max: f64,
) -> anyhow::Result<()> {
    let mut legend = vec![Legend::block("rows/s (left axis)", C_RATE)];
    if !target.is_empty() {
        legend.push(Legend::line("target rows/s".into(), C_TARGET, true));
    }
    legend.push(Legend::line("rows done (right axis)".into(), C_DONE, false));
    draw_title_row(area, "throughput", &legend)?;
    let mut chart = ChartBuilder::on(area)
        .margin_top(24)
        .margin_bottom(6)
        .y_label_area_size(LEFT)
        .right_y_label_area_size(RIGHT)
        .build_cartesian_2d(cx.t0..cx.t1, 0.0..rmax)
        .map_err(err)?
        .set_secondary_coord(cx.t0..cx.t1, 0.0..done_max);
    chart
        .configure_mesh()
        .x_labels(14)
        .y_labels(4)
        .y_label_formatter(&|v: &f64| compact(*v))
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.08))
        .axis_style(BLACK.mix(0.4))
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_labels(4)
        .y_label_formatter(&|v: &f64| compact(*v))
        .axis_style(BLACK.mix(0.4))
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(cx.stats.pauses.iter().map(|p| {
            let to = p.to.unwrap_or(cx.t1).min(cx.t1);
            Rectangle::new(
                [(p.from.max(cx.t0), rmax), (to, 0.0)],
                C_PAUSED.mix(0.10).filled(),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(
            AreaSeries::new(rate.iter().copied(), 0.0, C_RATE.mix(0.35))
                .border_style(C_RATE.stroke_width(1)),
        )
        .map_err(err)?;
    if !target.is_empty() {
        chart
            .draw_series(DashedLineSeries::new(
                target.iter().copied(),
                6,
                4,
                C_TARGET.stroke_width(2),
            ))
            .map_err(err)?;
    }
    chart
        .draw_secondary_series(std::iter::once(PathElement::new(
            done.to_vec(),
            C_DONE.stroke_width(2),
        )))
        .map_err(err)?;
    Ok(())
}

fn draw_footer(area: &Area<'_>, cx: &Ctx<'_>) -> anyhow::Result<()> {
    let pauses = &cx.stats.pauses;
    if pauses.is_empty() {
        return Ok(());
    }
    let x = LEFT as i32;
    let mut y = 10;
    area.draw(&Text::new(
        "pauses".to_string(),
        (x, y),
        (FONT, 14).into_font().style(FontStyle::Bold),
    ))
    .map_err(err)?;
    y += FOOT_LINE as i32;
    let max_chars = ((WIDTH - LEFT - 20) as f64 / (12.0 * 0.56)) as usize;
    for (i, p) in pauses.iter().enumerate().take(MAX_FOOT) {
        let to = p.to.map_or("end".to_string(), |t| {
            t.with_timezone(&cx.tz).format(cx.tfmt).to_string()
        });
        let mut line = format!(
            "P{}  {}–{} ({}): {}",
            i + 1,
            p.from.with_timezone(&cx.tz).format(cx.tfmt),
            to,
            fmt_dur(cx.stats.pause_length(p)),
            p.reason
        );
        if line.chars().count() > max_chars {
            line = line
                .chars()
                .take(max_chars.saturating_sub(1))
                .collect::<String>()
                + "…";
        }
        area.draw(&Text::new(
            line,
            (x, y),
            (FONT, 12).into_font().color(&BLACK.mix(0.85)),
        ))
        .map_err(err)?;
        y += FOOT_LINE as i32;
    }
    if pauses.len() > MAX_FOOT {
        area.draw(&Text::new(
            format!(
                "… and {} more pauses, listed in report.md",
                pauses.len() - MAX_FOOT
            ),
            (x, y),
            (FONT, 12).into_font().color(&BLACK.mix(0.6)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// Runs of equal state, one rectangle each, at about one pixel column's
/// resolution: a column shows its most common state, except that any pause
/// in it wins, so a short pause never disappears.
fn state_runs(
    samples: &[Sample],
    t0: DateTime<Utc>,
    t1: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>, &str)> {
    let span = (t1 - t0).num_milliseconds().max(1);
    let col = |t: DateTime<Utc>| {
        (((t - t0).num_milliseconds() * BUCKETS as i64) / span).clamp(0, BUCKETS as i64 - 1)
            as usize
    };
    let mut counts: Vec<std::collections::BTreeMap<&str, usize>> =
        vec![Default::default(); BUCKETS];
    for s in samples {
        *counts[col(s.at)].entry(s.state.as_str()).or_insert(0) += 1;
    }
    let at = |i: usize| t0 + chrono::Duration::milliseconds(span * i as i64 / BUCKETS as i64);
    let mut runs: Vec<(DateTime<Utc>, DateTime<Utc>, &str)> = Vec::new();
    for (i, c) in counts.iter().enumerate() {
        let state = if c.contains_key("paused") {
            Some("paused")
        } else {
            c.iter().max_by_key(|(_, n)| **n).map(|(s, _)| *s)
        };
        let Some(state) = state else { continue };
        let (from, to) = (at(i), at(i + 1));
        match runs.last_mut() {
            Some(r) if r.2 == state && r.1 == from => r.1 = to,
            _ => runs.push((from, to, state)),
        }
    }
    runs
}

/// `1234` → `1.2k`, `0.35` → `0.35`.
fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", num(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", num(v / 1e3))
    } else {
        num(v)
    }
}

/// Contiguous stretches with a value; a missing reading breaks the line
/// rather than drawing a misleading zero.
fn segments(pts: &[(DateTime<Utc>, Option<f64>)]) -> Vec<Vec<(DateTime<Utc>, f64)>> {
    let mut out: Vec<Vec<(DateTime<Utc>, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for (t, v) in pts {
        match v {
            Some(v) => cur.push((*t, *v)),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Stretches without a reading, as time spans.
fn missing_spans(
    pts: &[(DateTime<Utc>, Option<f64>)],
    end: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for (i, (t, v)) in pts.iter().enumerate() {
        if v.is_some() {
            continue;
        }
        let next = pts.get(i + 1).map_or(end, |p| p.0);
        match out.last_mut() {
            Some(r) if r.1 == *t => r.1 = next,
            _ => out.push((*t, next)),
        }
    }
    out
}

/// At most about `BUCKETS` × 2 points: per time bucket, its minimum and
/// maximum in time order, so spikes survive downsampling.
fn envelope(pts: &[(DateTime<Utc>, f64)]) -> Vec<(DateTime<Utc>, f64)> {
    if pts.len() <= BUCKETS * 2 {
        return pts.to_vec();
    }
    let per = pts.len().div_ceil(BUCKETS);
    let mut out = Vec::with_capacity(BUCKETS * 2 + 2);
    for chunk in pts.chunks(per) {
        let lo = chunk.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
        let hi = chunk.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo.0 <= hi.0 {
                out.push(lo);
                out.push(hi);
            } else {
                out.push(hi);
                out.push(lo);
            }
        }
    }
    out
}

/// Means per time bucket: throughput is about volume, and min/max of a
/// noisy rate would paint a solid block.
fn mean_buckets(pts: &[(DateTime<Utc>, f64)]) -> Vec<(DateTime<Utc>, f64)> {
    if pts.len() <= BUCKETS {
        return pts.to_vec();
    }
    let per = pts.len().div_ceil(BUCKETS);
    pts.chunks(per)
        .map(|c| {
            (
                c[c.len() / 2].0,
                c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64,
            )
        })
        .collect()
}

/// A knob holds its value until the next change: draw it as steps.
fn steps(pts: &[(DateTime<Utc>, f64)]) -> Vec<(DateTime<Utc>, f64)> {
    let mut out = Vec::with_capacity(pts.len() * 2);
    for (i, p) in pts.iter().enumerate() {
        if i > 0 {
            out.push((p.0, pts[i - 1].1));
        }
        out.push(*p);
    }
    out
}
