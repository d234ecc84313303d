//! The throughput chart: an inline SVG of the last 15 minutes (sent, acked,
//! dead-lettered per second), drawn on the server. Colours and strokes come
//! from classes in the stylesheet (the CSP allows no inline style).

use std::fmt::Write;

use maud::{html, Markup};

use super::rates::{Point, WINDOW};
use super::view;

const W: f64 = 720.0;
const H: f64 = 180.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

fn polyline(points: &[Point], top: f64, pick: fn(&Point) -> f64) -> String {
    let window = WINDOW.as_secs_f64();
    let mut s = String::new();
    for p in points {
        let x = LEFT + (W - LEFT - RIGHT) * (1.0 - (p.ago / window).clamp(0.0, 1.0));
        let y = TOP + (H - TOP - BOTTOM) * (1.0 - (pick(p) / top).clamp(0.0, 1.0));
        let _ = write!(s, "{x:.1},{y:.1} ");
    }
    s
}

/// The chart, or a note while there is nothing to draw yet.
pub fn throughput(points: &[Point]) -> Markup {
    let max = points
        .iter()
        .flat_map(|p| [p.sent, p.acked, p.dead_lettered])
        .fold(0.0f64, f64::max);
    // A round top: 1, 2 or 5 times a power of ten.
    let top = if max <= 0.0 {
        1.0
    } else {
        let p = 10f64.powf(max.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * p)
            .find(|t| *t >= max)
            .unwrap_or(10.0 * p)
    };
    let base = H - BOTTOM;
    let mid = TOP + (base - TOP) / 2.0;
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H) } role="img"
                aria-label="Messages per second over the last 15 minutes: sent, acked, dead-lettered" {
                line.grid x1=(LEFT) y1=(TOP) x2=(W - RIGHT) y2=(TOP) {}
                line.grid x1=(LEFT) y1=(mid) x2=(W - RIGHT) y2=(mid) {}
                line.axis x1=(LEFT) y1=(base) x2=(W - RIGHT) y2=(base) {}
                text.label x=(LEFT - 4.0) y=(TOP + 4.0) text-anchor="end" { (view::rate(top)) "/s" }
                text.label x=(LEFT - 4.0) y=(mid + 4.0) text-anchor="end" { (view::rate(top / 2.0)) }
                text.label x=(LEFT - 4.0) y=(base + 4.0) text-anchor="end" { "0" }
                text.label x=(LEFT) y=(H - 4.0) { "15 min ago" }
                text.label x=(LEFT + (W - LEFT - RIGHT) * 2.0 / 3.0) y=(H - 4.0) text-anchor="middle" { "5 min ago" }
                text.label x=(W - RIGHT) y=(H - 4.0) text-anchor="end" { "now" }
                @if !points.is_empty() {
                    polyline.sent points=(polyline(points, top, |p| p.sent)) {}
                    polyline.acked points=(polyline(points, top, |p| p.acked)) {}
                    polyline.dead points=(polyline(points, top, |p| p.dead_lettered)) {}
                }
            }
            figcaption {
                span.key.sent { "sent" } " "
                span.key.acked { "acked" } " "
                span.key.dead { "dead-lettered" }
                " per second, sampled every 10 s by this leanmqd"
                @if points.is_empty() { " — no traffic seen yet" }
            }
        }
    }
}
