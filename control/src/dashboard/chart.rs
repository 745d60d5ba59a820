//! Traffic charts, drawn on the server as inline SVG (no script, no style attribute: the
//! CSP allows neither inline): requests per second, the share of 5xx answers and the p95
//! latency over the last hour, from the points the proxies reported.

use maud::{html, Markup};
use tenantgate_config::traffic::TrafficCounts;

use crate::store::traffic::PLATFORM;
use crate::Store;

/// Bins of the platform's charts (the overview).
pub const PLATFORM_BIN_MS: i64 = 10_000;

/// Bins of a store's charts.
pub const STORE_BIN_MS: i64 = 60_000;

/// The charts of the platform (`id` `None`) or of one tenant, from the store, with the
/// summary of their last five minutes.
pub async fn of(store: &Store, id: Option<&str>) -> crate::Result<(Markup, Summary)> {
    let bin = if id.is_some() {
        STORE_BIN_MS
    } else {
        PLATFORM_BIN_MS
    };
    let end = settled_end(crate::now_ms(), bin);
    let points = store
        .traffic_series(id.unwrap_or(PLATFORM), end - WINDOW_MS)
        .await?;
    let b = bins(&points, end, bin);
    let recent = usize::try_from(300_000 / bin).unwrap_or(1);
    Ok((charts(&b, bin), summary(&b, recent, bin)))
}

/// The window the charts show.
pub const WINDOW_MS: i64 = 3_600_000;

/// Chart area in SVG units.
const W: f64 = 600.0;
const H: f64 = 120.0;

/// The end (exclusive) of the newest complete bin of `bin_ms` at `now_ms`: the bin still
/// running is left out, so the charts' last point does not dip.
pub fn settled_end(now_ms: i64, bin_ms: i64) -> i64 {
    (now_ms / bin_ms) * bin_ms
}

/// A series folded into bins of `bin_ms` over the window ending (exclusive) at `end_ms`:
/// the counts of each bin (empty where nothing was reported).
pub fn bins(points: &[(i64, TrafficCounts)], end_ms: i64, bin_ms: i64) -> Vec<TrafficCounts> {
    let n = usize::try_from(WINDOW_MS / bin_ms).unwrap_or(1).max(1);
    let start = end_ms - WINDOW_MS;
    let mut out = vec![TrafficCounts::default(); n];
    for (at, c) in points {
        if *at < start || *at >= end_ms {
            continue;
        }
        let i = usize::try_from((at - start) / bin_ms)
            .unwrap_or(0)
            .min(n - 1);
        out[i].add(c);
    }
    out
}

/// What the charts sum up: requests per second over the last `recent` bins, the 5xx share and
/// the p95 over the same bins.
pub struct Summary {
    /// Requests per second.
    pub rate: f64,
    /// 5xx answers per request (0-1).
    pub errors: f64,
    /// p95 latency, ms.
    pub p95: Option<f64>,
}

/// The summary of `bins` (the newest `recent` of them), `bin_ms` each.
pub fn summary(bins: &[TrafficCounts], recent: usize, bin_ms: i64) -> Summary {
    let mut sum = TrafficCounts::default();
    for b in bins.iter().rev().take(recent) {
        sum.add(b);
    }
    let secs = (recent.min(bins.len()).max(1) as f64) * bin_ms as f64 / 1000.0;
    let requests = sum.requests();
    Summary {
        rate: requests as f64 / secs,
        errors: if requests == 0 {
            0.0
        } else {
            sum.errors() as f64 / requests as f64
        },
        p95: sum.quantile_ms(0.95),
    }
}

/// The three charts of a series: requests/s, 5xx share, p95 latency.
pub fn charts(bins: &[TrafficCounts], bin_ms: i64) -> Markup {
    let secs = bin_ms as f64 / 1000.0;
    let rate: Vec<Option<f64>> = bins
        .iter()
        .map(|b| Some(b.requests() as f64 / secs))
        .collect();
    let errors: Vec<Option<f64>> = bins
        .iter()
        .map(|b| (!b.is_empty()).then(|| 100.0 * b.errors() as f64 / b.requests() as f64))
        .collect();
    let p95: Vec<Option<f64>> = bins.iter().map(|b| b.quantile_ms(0.95)).collect();
    html! {
        div.charts {
            (chart("Requests per second", &rate, "/s", false))
            (chart("5xx share", &errors, "%", true))
            (chart("p95 latency", &p95, " ms", false))
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One line chart; `alarm` draws it in the error color.
fn chart(title: &str, values: &[Option<f64>], unit: &str, alarm: bool) -> Markup {
    let max = values.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let n = values.len().max(2);
    let x = |i: usize| W * i as f64 / (n - 1) as f64;
    let y = |v: f64| H - (v / top) * H;
    // One polyline per run of reported values; gaps stay gaps.
    let mut runs: Vec<String> = Vec::new();
    let mut current = String::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => current.push_str(&format!("{:.1},{:.1} ", x(i), y(*v))),
            None if !current.is_empty() => runs.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    let last = values.iter().rev().flatten().next();
    let class = if alarm { "line bad" } else { "line" };
    html! {
        figure.chart {
            figcaption {
                span { (title) }
                strong { @if let Some(v) = last { (fmt(*v)) (unit) } @else { "—" } }
            }
            svg viewBox={"0 0 " (W) " " (H + 22.0)} role="img" aria-label={(title) ", last hour"} {
                line.axis x1="0" y1=(H) x2=(W) y2=(H) {}
                line.grid x1="0" y1=(H / 2.0) x2=(W) y2=(H / 2.0) {}
                @for r in &runs {
                    polyline class=(class) points=(r) {}
                }
                text.tick x="0" y=(H + 17.0) { "−60 min" }
                text.tick x=(W) y=(H + 17.0) text-anchor="end" { "now" }
                text.tick x="4" y="16" { (fmt(top)) (unit) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(requests: u64, errors: u64) -> TrafficCounts {
        let mut c = TrafficCounts::default();
        c.by_class[1] = requests - errors;
        c.by_class[4] = errors;
        c.latency[0] = requests;
        c
    }

    #[test]
    fn points_fold_into_the_window() {
        let now = 10 * WINDOW_MS;
        let points = [
            (now - WINDOW_MS - 1, c(5, 0)),
            (now - 60_000, c(10, 1)),
            (now - 50_000, c(10, 1)),
            (now - 1, c(4, 0)),
        ];
        let b = bins(&points, now, 60_000);
        assert_eq!(b.len(), 60);
        assert_eq!(b[59].requests(), 24, "the last minute");
        assert_eq!(b.iter().map(TrafficCounts::requests).sum::<u64>(), 24);
        let s = summary(&b, 1, 60_000);
        assert!((s.rate - 0.4).abs() < 1e-9);
        assert!((s.errors - 2.0 / 24.0).abs() < 1e-9);
        assert_eq!(s.p95, Some(5.0));
        let svg = charts(&b, 60_000).into_string();
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(!svg.contains("style="), "no inline style under the CSP");
    }
}
