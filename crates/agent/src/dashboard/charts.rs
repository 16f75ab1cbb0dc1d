//! Charts as inline SVG, drawn from numbers on the server: sparklines for the overview and the
//! canary chart (canary against baseline, the bound each verdict applied, each verdict marked). Built with maud like
//! the pages, so every text in them is escaped.

use client::wire::{Figures, Verdict, VerdictBounds};
use maud::{Markup, html};

/// A small line of `values` (oldest first) scaled to its own maximum (`floor` at least, so a
/// flat line of small values stays low). `label` names it for screen readers.
pub fn sparkline(values: &[f64], floor: f64, label: &str) -> Markup {
    // Drawn on a 240 x 48 grid shown at 120 x 24: whole-number coordinates (a few bytes a point,
    // 60 points a line, two lines a row) at half-pixel resolution.
    const W: f64 = 240.0;
    const H: f64 = 48.0;
    if values.is_empty() {
        return html! { span.spark.empty aria-label=(label) { "no traffic data yet" } };
    }
    let max = values.iter().copied().fold(floor, f64::max);
    let step = if values.len() > 1 {
        W / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            format!(
                "{:.0},{:.0}",
                i as f64 * step,
                H - 2.0 - value / max * (H - 4.0)
            )
        })
        .collect();
    html! {
        svg.spark viewBox="0 0 240 48" width="120" height="24" role="img" aria-label=(label) {
            polyline points=(points.join(" ")) fill="none" stroke="currentColor" stroke-width="3" {}
        }
    }
}

/// One analysis verdict of a canary: when, what it judged, and its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPoint {
    pub at: i64,
    pub verdict: Verdict,
    pub sample: Figures,
    pub baseline: Option<Figures>,
    /// The bounds the analysis applied at this verdict, as its event carries them (none for
    /// events recorded before they were carried).
    pub bounds: Option<VerdictBounds>,
}

/// What a canary chart plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The 5xx share of requests.
    ErrorShare,
    /// p99 latency.
    P99,
}

impl Metric {
    fn of(self, figures: &Figures) -> f64 {
        match self {
            Metric::ErrorShare if figures.requests == 0 => 0.0,
            Metric::ErrorShare => figures.errors as f64 / figures.requests as f64,
            Metric::P99 => figures.p99_us as f64 / 1000.0,
        }
    }

    /// The bound a verdict applied, in the metric's unit (a share, or milliseconds).
    fn bound(self, bounds: &VerdictBounds) -> Option<f64> {
        match self {
            Metric::ErrorShare => Some(bounds.max_error_share),
            Metric::P99 => bounds.max_p99_us.map(|us| us as f64 / 1000.0),
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Metric::ErrorShare => format!("{:.2}%", value * 100.0),
            Metric::P99 => format!("{value:.0} ms"),
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::ErrorShare => "5xx share",
            Metric::P99 => "p99 latency",
        }
    }
}

/// The canary chart of `metric`: the canary's line and the baseline's, the bound each verdict
/// applied dashed (it moves with the baseline's p99), each verdict a mark on the canary's line
/// coloured by its outcome. Each mark carries its figures and bound (`data-*`) and a tooltip.
pub fn canary_chart(points: &[CanaryPoint], metric: Metric) -> Markup {
    const W: f64 = 320.0;
    const H: f64 = 140.0;
    const PAD_L: f64 = 44.0;
    const PAD_R: f64 = 8.0;
    const PAD_T: f64 = 10.0;
    const PAD_B: f64 = 18.0;
    let canary: Vec<f64> = points.iter().map(|p| metric.of(&p.sample)).collect();
    let baseline: Vec<Option<f64>> = points
        .iter()
        .map(|p| p.baseline.as_ref().map(|b| metric.of(b)))
        .collect();
    let bounds: Vec<Option<f64>> = points
        .iter()
        .map(|p| p.bounds.as_ref().and_then(|b| metric.bound(b)))
        .collect();
    let floor = match metric {
        Metric::ErrorShare => 0.01,
        Metric::P99 => 1.0,
    };
    let max = canary
        .iter()
        .copied()
        .chain(baseline.iter().flatten().copied())
        .chain(bounds.iter().flatten().copied())
        .fold(floor, f64::max)
        * 1.1;
    let first = points.first().map_or(0, |p| p.at);
    let last = points.last().map_or(0, |p| p.at);
    let span = (last - first).max(1) as f64;
    let x = |at: i64| PAD_L + (at - first) as f64 / span * (W - PAD_L - PAD_R);
    let y = |value: f64| PAD_T + (1.0 - value / max) * (H - PAD_T - PAD_B);
    let line = |values: Vec<(i64, f64)>| -> String {
        values
            .iter()
            .map(|(at, v)| format!("{:.1},{:.1}", x(*at), y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let canary_line = line(
        points
            .iter()
            .map(|p| p.at)
            .zip(canary.iter().copied())
            .collect(),
    );
    let baseline_line = line(
        points
            .iter()
            .zip(&baseline)
            .filter_map(|(p, b)| b.map(|b| (p.at, b)))
            .collect(),
    );
    let bound_points: Vec<(i64, f64)> = points
        .iter()
        .zip(&bounds)
        .filter_map(|(p, b)| b.map(|b| (p.at, b)))
        .collect();
    // One verdict, or bounds recorded at one instant: a level line across the chart.
    let bound_level = match bound_points.as_slice() {
        [(_, first), rest @ ..] if rest.iter().all(|(_, b)| b == first) => Some(*first),
        _ => None,
    };
    let last_bound = bound_points.last().map(|(_, b)| *b);
    let bound_line = line(bound_points);
    let label = format!(
        "{} of the canary against the baseline, {} verdicts",
        metric.title(),
        points.len()
    );
    html! {
        figure.chart data-metric=(match metric { Metric::ErrorShare => "error_share", Metric::P99 => "p99" }) {
            figcaption {
                (metric.title()) ": "
                span.canary { "canary" } " vs " span.baseline { "baseline" }
                @if let Some(bound) = last_bound { " · bound " (metric.format(bound)) }
            }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) {
                line.axis x1=(PAD_L) y1=(y(0.0)) x2=(W - PAD_R) y2=(y(0.0)) {}
                text.tick x=(PAD_L - 4.0) y=(y(0.0)) text-anchor="end" { (metric.format(0.0)) }
                text.tick x=(PAD_L - 4.0) y=(y(max / 1.1) + 4.0) text-anchor="end" { (metric.format(max / 1.1)) }
                @if let Some(bound) = bound_level {
                    line.bound x1=(PAD_L) y1=(y(bound)) x2=(W - PAD_R) y2=(y(bound)) {
                        title { "bound " (metric.format(bound)) }
                    }
                } @else if !bound_line.is_empty() {
                    polyline.bound points=(bound_line) fill="none" {
                        title { "bound applied at each verdict" }
                    }
                }
                @if !baseline_line.is_empty() {
                    polyline.baseline points=(baseline_line) fill="none" {}
                }
                polyline.canary points=(canary_line) fill="none" {}
                @for ((point, value), bound) in points.iter().zip(&canary).zip(&bounds) {
                    circle class=(format!("mark {}", point.verdict.name()))
                        cx=(format!("{:.1}", x(point.at))) cy=(format!("{:.1}", y(*value))) r="4"
                        data-at=(point.at)
                        data-verdict=(point.verdict.name())
                        data-requests=(point.sample.requests)
                        data-errors=(point.sample.errors)
                        data-p99-us=(point.sample.p99_us)
                        data-baseline-requests=[point.baseline.map(|b| b.requests)]
                        data-baseline-errors=[point.baseline.map(|b| b.errors)]
                        data-baseline-p99-us=[point.baseline.map(|b| b.p99_us)]
                        data-bound-error-share=[point.bounds.map(|b| b.max_error_share)]
                        data-bound-p99-us=[point.bounds.and_then(|b| b.max_p99_us)] {
                        title {
                            (point.verdict) ": canary " (metric.format(*value)) " of " (point.sample.requests) " requests"
                            @if let Some(bound) = bound { ", bound " (metric.format(*bound)) }
                        }
                    }
                }
            }
        }
    }
}
