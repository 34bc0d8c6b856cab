//! SVG timeline of a load test: throughput and latency per second, with fault events marked.
//!
//! Std only and self-contained so it can be copied into any crate. The output uses only basic
//! SVG elements (no CSS, no scripts) so it renders in browsers and on GitHub, and it is
//! byte-for-byte deterministic so reports can be diffed and snapshot-tested.

use std::fmt::Write as _;

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecondSample {
    /// Seconds since the load started (0, 1, 2, ...).
    pub second: u32,
    /// Requests answered with success (e.g. 201) in this second.
    pub succeeded: u64,
    /// Requests that failed (non-2xx other than the expected 4xx, or transport errors) in this second.
    pub failed: u64,
    /// Latency percentiles of requests answered in this second, in milliseconds; None when none answered.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A moment to mark on the chart, e.g. "aggregator SIGKILL" at 12.4 s.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub at_seconds: f64,
    pub label: String,
}

const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 16.0;
/// Room for the title row and the legend row.
const MARGIN_TOP: f64 = 48.0;
/// Room for the x tick labels and the "seconds" axis label.
const MARGIN_BOTTOM: f64 = 44.0;
const PANEL_GAP: f64 = 24.0;

const COLOR_SUCCEEDED: &str = "#2b7bba";
/// Solid light fill instead of an opacity, which keeps every number to one decimal.
const COLOR_SUCCEEDED_FILL: &str = "#d5e5f2";
const COLOR_FAILED: &str = "#d62728";
const COLOR_P50: &str = "#2ca02c";
const COLOR_P99: &str = "#9467bd";
const COLOR_MARKER: &str = "#555";
const COLOR_GRID: &str = "#e3e3e3";
const COLOR_FRAME: &str = "#999";

/// Plot rectangle of one panel; maps data values to pixels, clamping so that outliers sit on
/// the edge instead of escaping the panel.
#[derive(Debug, Clone, Copy)]
struct Panel {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Panel {
    fn bottom(&self) -> f64 {
        self.top + self.height
    }

    fn x(&self, t: f64, x_max: f64) -> f64 {
        self.left + (t / x_max).clamp(0.0, 1.0) * self.width
    }

    fn y(&self, v: f64, y_max: f64) -> f64 {
        self.bottom() - (v / y_max).clamp(0.0, 1.0) * self.height
    }
}

/// Renders the two-panel timeline (throughput on top, latency below) as a standalone SVG.
///
/// Samples are drawn in order of `second`; invalid latencies (None, NaN, infinite, negative)
/// break the latency lines. The latency axis tops out at 1.2 x the 99th percentile of the
/// per-second p99 values so a single stall does not flatten the rest of the run; values above
/// are drawn on the top edge. Never panics.
pub fn timeline_svg(
    title: &str,
    samples: &[SecondSample],
    markers: &[Marker],
    width: u32,
    height: u32,
) -> String {
    let w = f64::from(width);
    let h = f64::from(height);
    let mut out = String::with_capacity(4096 + samples.len() * 64);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        out,
        r##"<rect width="{width}" height="{height}" fill="#fff"/>"##
    );
    let _ = write!(
        out,
        r#"<text x="10" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape_xml(title)
    );

    if samples.is_empty() {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888" font-size="14">no data</text></svg>"##,
            fmt1(w / 2.0),
            fmt1(h / 2.0)
        );
        return out;
    }

    // Sort by time so out-of-order input still draws a sane line (stable: keeps ties in order).
    let mut sorted: Vec<&SecondSample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.second);

    let plot_w = (w - MARGIN_LEFT - MARGIN_RIGHT).max(1.0);
    let panel_h = ((h - MARGIN_TOP - MARGIN_BOTTOM - PANEL_GAP) / 2.0).max(1.0);
    let top = Panel {
        left: MARGIN_LEFT,
        top: MARGIN_TOP,
        width: plot_w,
        height: panel_h,
    };
    let bottom = Panel {
        top: MARGIN_TOP + panel_h + PANEL_GAP,
        ..top
    };

    // Time axis: cover the data and any marker that falls after it.
    let last_second = sorted.last().map_or(0, |s| s.second);
    let marker_max = markers
        .iter()
        .map(|m| m.at_seconds)
        .filter(|t| t.is_finite() && *t >= 0.0)
        .fold(0.0, f64::max);
    let x_target = (plot_w / 70.0).clamp(2.0, 10.0) as usize;
    let x_ticks = nice_ticks(f64::from(last_second).max(marker_max).max(1.0), x_target);
    let x_max = axis_top(&x_ticks);

    // Throughput axis: at least 0..5 so a quiet run does not show fractional clicks.
    let count_peak = sorted
        .iter()
        .map(|s| s.succeeded.max(s.failed))
        .max()
        .unwrap_or(0) as f64;
    let count_ticks = nice_ticks(count_peak.max(5.0), 5);
    let count_max = axis_top(&count_ticks);

    // Latency axis: exactly the clamp value, labelled with the round ticks below it.
    let lat_max = latency_axis_max(samples);
    let lat_ticks: Vec<f64> = nice_ticks(lat_max, 5)
        .into_iter()
        .filter(|t| *t <= lat_max * (1.0 + 1e-9))
        .collect();

    // Light area under the succeeded line first, so the grid and lines stay visible on top.
    let mut area = String::new();
    let _ = write!(
        area,
        "M{},{}",
        fmt1(top.x(f64::from(sorted[0].second), x_max)),
        fmt1(top.bottom())
    );
    for s in &sorted {
        let _ = write!(
            area,
            "L{},{}",
            fmt1(top.x(f64::from(s.second), x_max)),
            fmt1(top.y(s.succeeded as f64, count_max))
        );
    }
    let _ = write!(
        area,
        "L{},{}Z",
        fmt1(top.x(f64::from(last_second), x_max)),
        fmt1(top.bottom())
    );
    let _ = write!(
        out,
        r#"<path class="succeeded-area" d="{area}" fill="{COLOR_SUCCEEDED_FILL}" stroke="none"/>"#
    );

    draw_grid(&mut out, &top, &x_ticks, x_max, &count_ticks, count_max);
    draw_grid(&mut out, &bottom, &x_ticks, x_max, &lat_ticks, lat_max);

    // X tick labels only under the bottom panel: the panels share the time axis.
    let _ = write!(out, r##"<g text-anchor="middle" fill="#333">"##);
    for t in &x_ticks {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            fmt1(bottom.x(*t, x_max)),
            fmt1(bottom.bottom() + 14.0),
            fmt_label(*t)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}">seconds</text>"#,
        fmt1(bottom.left + bottom.width / 2.0),
        fmt1(bottom.bottom() + 34.0)
    );
    for (panel, label) in [(&top, "clicks/s"), (&bottom, "latency ms")] {
        let _ = write!(
            out,
            r#"<text transform="rotate(-90)" x="{}" y="14">{label}</text>"#,
            fmt1(-(panel.top + panel.height / 2.0))
        );
    }
    out.push_str("</g>");

    // Data lines.
    let _ = write!(
        out,
        r#"<g fill="none" stroke-width="1.5" stroke-linejoin="round" stroke-linecap="round">"#
    );
    let point = |panel: &Panel, s: &SecondSample, v: f64, y_max: f64| {
        (panel.x(f64::from(s.second), x_max), panel.y(v, y_max))
    };
    let succeeded: Vec<Option<(f64, f64)>> = sorted
        .iter()
        .map(|s| Some(point(&top, s, s.succeeded as f64, count_max)))
        .collect();
    let failed: Vec<Option<(f64, f64)>> = sorted
        .iter()
        .map(|s| Some(point(&top, s, s.failed as f64, count_max)))
        .collect();
    let p50: Vec<Option<(f64, f64)>> = sorted
        .iter()
        .map(|s| valid_ms(s.p50_ms).map(|v| point(&bottom, s, v, lat_max)))
        .collect();
    let p99: Vec<Option<(f64, f64)>> = sorted
        .iter()
        .map(|s| valid_ms(s.p99_ms).map(|v| point(&bottom, s, v, lat_max)))
        .collect();
    draw_series(&mut out, "succeeded", COLOR_SUCCEEDED, &succeeded);
    draw_series(&mut out, "failed", COLOR_FAILED, &failed);
    draw_series(&mut out, "p50", COLOR_P50, &p50);
    draw_series(&mut out, "p99", COLOR_P99, &p99);
    out.push_str("</g>");

    let clipped = sorted
        .iter()
        .flat_map(|s| [valid_ms(s.p50_ms), valid_ms(s.p99_ms)])
        .flatten()
        .any(|v| v > lat_max);
    if clipped {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#888" font-size="10">clipped above {} ms</text>"##,
            fmt1(bottom.left + bottom.width - 4.0),
            fmt1(bottom.top + 12.0),
            fmt_label(lat_max)
        );
    }

    draw_markers(&mut out, markers, &top, &bottom, x_max);
    draw_legend(&mut out, w);
    out.push_str("</svg>");
    out
}

/// Round axis ticks: 0, then multiples of a 1/2/5 x 10^n step up to the first one >= `max`.
///
/// Non-finite or non-positive `max` gives `[0, 1]` style defaults so callers never have to
/// special-case an empty axis; `max` is clamped to [1e-300, 1e300] and `target_count` to 1..=100
/// so the tick count stays bounded and every tick is finite.
pub fn nice_ticks(max: f64, target_count: usize) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max.clamp(1e-300, 1e300)
    } else {
        1.0
    };
    let target = target_count.clamp(1, 100) as f64;
    let raw = max / target;
    let exp = raw.log10().floor().clamp(-320.0, 320.0) as i32;
    let norm = raw / 10f64.powi(exp);
    let nice = if norm <= 1.0 + 1e-9 {
        1.0
    } else if norm <= 2.0 + 1e-9 {
        2.0
    } else if norm <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    // Dividing by 10^k for negative exponents keeps e.g. 0.3 exact instead of 0.30000000000000004.
    let tick = |i: usize| {
        let units = i as f64 * nice;
        if exp < 0 {
            units / 10f64.powi(-exp)
        } else {
            units * 10f64.powi(exp)
        }
    };
    let step = tick(1);
    let n = if step > 0.0 && step.is_finite() {
        ((max / step).ceil().max(1.0) as usize).min(1000)
    } else {
        1
    };
    let mut ticks: Vec<f64> = (0..=n).map(tick).filter(|t| t.is_finite()).collect();
    if ticks.last().is_some_and(|last| *last < max) && ticks.len() <= 1000 {
        let next = tick(ticks.len());
        if next.is_finite() {
            ticks.push(next);
        }
    }
    ticks
}

/// Escapes text for use in XML content and attributes. Control characters that XML 1.0 forbids
/// become U+FFFD and line breaks become spaces, so any label yields a well-formed document.
fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Top of an axis from its ticks; the fallback is unreachable because `nice_ticks` always
/// returns a positive last tick, but it keeps the code panic-free.
fn axis_top(ticks: &[f64]) -> f64 {
    ticks
        .last()
        .copied()
        .filter(|t| *t > 0.0 && t.is_finite())
        .unwrap_or(1.0)
}

/// A latency worth drawing: finite and non-negative.
fn valid_ms(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite() && *x >= 0.0)
}

/// Latency clamp: 1.2 x the 99th percentile of per-second p99, at least 1 ms so tick labels
/// stay readable with one decimal. The percentile interpolates linearly between ranks (as
/// numpy's default does) so that in runs shorter than 100 s a lone spike is not the percentile.
fn latency_axis_max(samples: &[SecondSample]) -> f64 {
    let mut p99s: Vec<f64> = samples.iter().filter_map(|s| valid_ms(s.p99_ms)).collect();
    p99s.sort_by(f64::total_cmp);
    let cap = match p99s.len() {
        0 => 1.0,
        n => {
            let pos = 0.99 * (n - 1) as f64;
            let lo = (pos.floor() as usize).min(n - 1);
            let hi = (lo + 1).min(n - 1);
            let frac = pos - lo as f64;
            // Interpolate as lo + (hi - lo) * frac, rearranged so huge values cannot overflow.
            (p99s[lo] * (1.0 - frac) + p99s[hi] * frac) * 1.2
        }
    };
    if cap.is_finite() {
        cap.clamp(1.0, 1e300)
    } else {
        1e300
    }
}

/// Horizontal grid lines with y labels, vertical grid lines at the x ticks, and a frame.
fn draw_grid(
    out: &mut String,
    p: &Panel,
    x_ticks: &[f64],
    x_max: f64,
    y_ticks: &[f64],
    y_max: f64,
) {
    let _ = write!(out, r#"<g stroke="{COLOR_GRID}" stroke-width="1">"#);
    for t in y_ticks {
        let y = fmt1(p.y(*t, y_max));
        let _ = write!(
            out,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}"/>"#,
            fmt1(p.left),
            fmt1(p.left + p.width)
        );
    }
    for t in x_ticks {
        let x = fmt1(p.x(*t, x_max));
        let _ = write!(
            out,
            r#"<line x1="{x}" y1="{}" x2="{x}" y2="{}"/>"#,
            fmt1(p.top),
            fmt1(p.bottom())
        );
    }
    let _ = write!(
        out,
        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{COLOR_FRAME}"/></g>"#,
        fmt1(p.left),
        fmt1(p.top),
        fmt1(p.width),
        fmt1(p.height)
    );
    let _ = write!(out, r##"<g text-anchor="end" fill="#333">"##);
    for t in y_ticks {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            fmt1(p.left - 4.0),
            fmt1(p.y(*t, y_max) + 4.0),
            fmt_label(*t)
        );
    }
    out.push_str("</g>");
}

/// One `<polyline>` per run of consecutive points; a lone point (between gaps) becomes a
/// zero-length round-capped path, which renders as a dot where a 1-point polyline would vanish.
fn draw_series(out: &mut String, class: &str, color: &str, points: &[Option<(f64, f64)>]) {
    for run in points.split(|p| p.is_none()) {
        let run: Vec<(f64, f64)> = run.iter().flatten().copied().collect();
        match run.as_slice() {
            [] => {}
            [(x, y)] => {
                let _ = write!(
                    out,
                    r#"<path class="{class}" d="M{},{}h0" stroke="{color}" stroke-width="3"/>"#,
                    fmt1(*x),
                    fmt1(*y)
                );
            }
            pts => {
                let mut attr = String::with_capacity(pts.len() * 12);
                for (i, (x, y)) in pts.iter().enumerate() {
                    if i > 0 {
                        attr.push(' ');
                    }
                    let _ = write!(attr, "{},{}", fmt1(*x), fmt1(*y));
                }
                let _ = write!(
                    out,
                    r#"<polyline class="{class}" points="{attr}" stroke="{color}"/>"#
                );
            }
        }
    }
}

/// Dashed vertical lines through both panels; labels are staggered over three rows (in time
/// order) so close events stay legible, flip to the left of the line near the right edge, and
/// get a white halo so they stay readable over the data lines.
fn draw_markers(out: &mut String, markers: &[Marker], top: &Panel, bottom: &Panel, x_max: f64) {
    let mut visible: Vec<&Marker> = markers
        .iter()
        .filter(|m| m.at_seconds.is_finite() && (0.0..=x_max).contains(&m.at_seconds))
        .collect();
    if visible.is_empty() {
        return;
    }
    visible.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
    let _ = write!(
        out,
        r#"<g class="markers" fill="{COLOR_MARKER}" font-size="10">"#
    );
    for (i, m) in visible.iter().enumerate() {
        let x = top.x(m.at_seconds, x_max);
        let xs = fmt1(x);
        let _ = write!(
            out,
            r#"<line class="marker" x1="{xs}" y1="{}" x2="{xs}" y2="{}" stroke="{COLOR_MARKER}" stroke-dasharray="4 3"/>"#,
            fmt1(top.top),
            fmt1(bottom.bottom())
        );
        let y = fmt1(top.top + 11.0 + (i % 3) as f64 * 12.0);
        let (lx, anchor) = if x < top.left + top.width * 0.7 {
            (x + 3.0, "start")
        } else {
            (x - 3.0, "end")
        };
        let _ = write!(
            out,
            r##"<text x="{}" y="{y}" text-anchor="{anchor}" stroke="#fff" stroke-width="3" paint-order="stroke">{}</text>"##,
            fmt1(lx),
            escape_xml(&m.label)
        );
    }
    out.push_str("</g>");
}

/// Legend row under the title, right-aligned; text width is estimated (no font metrics).
fn draw_legend(out: &mut String, w: f64) {
    const ENTRIES: [(&str, &str, bool); 5] = [
        ("succeeded/s", COLOR_SUCCEEDED, false),
        ("failed/s", COLOR_FAILED, false),
        ("p50 ms", COLOR_P50, false),
        ("p99 ms", COLOR_P99, false),
        ("event", COLOR_MARKER, true),
    ];
    let entry_w = |label: &str| 20.0 + label.len() as f64 * 6.0 + 12.0;
    let total: f64 = ENTRIES.iter().map(|(l, _, _)| entry_w(l)).sum();
    let mut x = (w - MARGIN_RIGHT - total).max(10.0);
    let y = 36.0;
    let _ = write!(out, r##"<g class="legend" fill="#333">"##);
    for (label, color, dashed) in ENTRIES {
        let dash = if dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            r#" stroke-width="2""#
        };
        let _ = write!(
            out,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}"{dash}/><text x="{}" y="{}">{label}</text>"#,
            fmt1(x),
            fmt1(y - 4.0),
            fmt1(x + 16.0),
            fmt1(y - 4.0),
            fmt1(x + 20.0),
            fmt1(y)
        );
        x += entry_w(label);
    }
    out.push_str("</g>");
}

/// Compact coordinate: at most one decimal, no trailing ".0", no "-0"; non-finite becomes 0.
fn fmt1(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_string();
    }
    let r = (v * 10.0).round() / 10.0;
    if r == 0.0 {
        "0".to_string()
    } else if r == r.trunc() {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// Tick label: SI suffixes keep large axes short ("20k", "1.5M"); beyond 1e15 use exponents.
fn fmt_label(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "0".to_string()
    } else if a >= 1e15 {
        format!("{v:.1e}")
    } else if a >= 1e12 {
        format!("{}T", fmt1(v / 1e12))
    } else if a >= 1e9 {
        format!("{}G", fmt1(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", fmt1(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", fmt1(v / 1e3))
    } else {
        fmt1(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed element: name, attributes, and its direct (unescaped) text content.
    #[derive(Debug)]
    struct Elem {
        name: String,
        attrs: Vec<(String, String)>,
        text: String,
    }

    impl Elem {
        fn attr(&self, name: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    const ALLOWED: [&str; 7] = ["svg", "g", "rect", "line", "polyline", "path", "text"];

    fn unescape(s: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('&') {
            out.push_str(&rest[..i]);
            let end = rest[i..].find(';').ok_or("unterminated entity")? + i;
            out.push(match &rest[i + 1..end] {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                e => return Err(format!("unknown entity &{e};")),
            });
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        if out
            .chars()
            .any(|c| (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r'))
        {
            return Err("control character in text".into());
        }
        Ok(out)
    }

    /// Minimal well-formedness check for the subset of XML we emit: one `<svg>` root, balanced
    /// tags from the allowed set, double-quoted unique attributes, valid entities, no stray `<`.
    fn parse(doc: &str) -> Result<Vec<Elem>, String> {
        let b = doc.as_bytes();
        let mut elems: Vec<Elem> = Vec::new();
        let mut stack: Vec<(String, usize)> = Vec::new();
        let mut i = 0;
        let mut root_closed = false;
        while i < b.len() {
            if b[i] != b'<' {
                let end = doc[i..].find('<').map_or(b.len(), |j| i + j);
                let text = unescape(&doc[i..end])?;
                match stack.last() {
                    Some((_, idx)) => elems[*idx].text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(format!("text outside root: {text:?}")),
                }
                i = end;
                continue;
            }
            if root_closed {
                return Err("content after root".into());
            }
            let close = doc[i..].find('>').ok_or("unterminated tag")? + i;
            let tag = &doc[i + 1..close];
            if tag.contains('<') {
                return Err(format!("'<' inside tag: {tag}"));
            }
            i = close + 1;
            if let Some(name) = tag.strip_prefix('/') {
                let (open, _) = stack.pop().ok_or("close without open")?;
                if open != name {
                    return Err(format!("</{name}> closes <{open}>"));
                }
                root_closed = stack.is_empty();
                continue;
            }
            let (body, self_closing) = match tag.strip_suffix('/') {
                Some(t) => (t, true),
                None => (tag, false),
            };
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let name = &body[..name_end];
            if !ALLOWED.contains(&name) {
                return Err(format!("unexpected element <{name}>"));
            }
            if stack.is_empty() && (name != "svg" || !elems.is_empty()) {
                return Err("root must be a single <svg>".into());
            }
            let mut attrs: Vec<(String, String)> = Vec::new();
            let mut rest = body[name_end..].trim_start();
            while !rest.is_empty() {
                let eq = rest
                    .find('=')
                    .ok_or(format!("attribute without value: {rest}"))?;
                let key = rest[..eq].to_string();
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(format!("bad attribute name {key:?}"));
                }
                let after = rest[eq + 1..]
                    .strip_prefix('"')
                    .ok_or("attribute not double-quoted")?;
                let q = after.find('"').ok_or("unterminated attribute")?;
                if attrs.iter().any(|(k, _)| *k == key) {
                    return Err(format!("duplicate attribute {key}"));
                }
                attrs.push((key, unescape(&after[..q])?));
                let tail = &after[q + 1..];
                if !tail.is_empty() && !tail.starts_with(char::is_whitespace) {
                    return Err("attributes must be separated by whitespace".into());
                }
                rest = tail.trim_start();
            }
            elems.push(Elem {
                name: name.to_string(),
                attrs,
                text: String::new(),
            });
            if self_closing {
                root_closed = stack.is_empty();
            } else {
                stack.push((name.to_string(), elems.len() - 1));
            }
        }
        if !stack.is_empty() || !root_closed {
            return Err("unclosed elements".into());
        }
        Ok(elems)
    }

    fn parse_ok(doc: &str) -> Vec<Elem> {
        match parse(doc) {
            Ok(e) => e,
            Err(e) => panic!("not well-formed: {e}\n{doc}"),
        }
    }

    fn sample(second: u32, ok: u64, bad: u64, p50: Option<f64>, p99: Option<f64>) -> SecondSample {
        SecondSample {
            second,
            succeeded: ok,
            failed: bad,
            p50_ms: p50,
            p99_ms: p99,
        }
    }

    fn steady(n: u32) -> Vec<SecondSample> {
        (0..n)
            .map(|s| {
                let s64 = u64::from(s);
                sample(
                    s,
                    100 + s64 * 3,
                    s64 % 4,
                    Some(5.0 + f64::from(s) * 0.1),
                    Some(20.0 + f64::from(s)),
                )
            })
            .collect()
    }

    fn polylines<'a>(elems: &'a [Elem], class: &str) -> Vec<&'a Elem> {
        elems
            .iter()
            .filter(|e| e.name == "polyline" && e.attr("class") == Some(class))
            .collect()
    }

    fn point_count(e: &Elem) -> usize {
        e.attr("points").map_or(0, |p| p.split_whitespace().count())
    }

    fn texts(elems: &[Elem]) -> Vec<&str> {
        elems
            .iter()
            .filter(|e| e.name == "text")
            .map(|e| e.text.as_str())
            .collect()
    }

    #[test]
    fn parser_rejects_broken_documents() {
        let good = r#"<svg xmlns="x"><g><text x="1">a &amp; b</text></g></svg>"#;
        assert!(parse(good).is_ok());
        for bad in [
            r#"<svg><g></svg>"#,
            r#"<svg><text>a & b</text></svg>"#,
            r#"<svg><text>a < b</text></svg>"#,
            r#"<svg x=1></svg>"#,
            r#"<svg></svg><svg></svg>"#,
            r#"<svg><circle/></svg>"#,
            r#"<svg a="1" a="2"></svg>"#,
            r#"<svg>"#,
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn typical_run_is_well_formed_with_expected_parts() {
        let samples = steady(60);
        let markers = vec![Marker {
            at_seconds: 12.4,
            label: "aggregator SIGKILL".into(),
        }];
        let svg = timeline_svg("Load test", &samples, &markers, 900, 500);
        assert!(
            svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="500""#)
        );
        let elems = parse_ok(&svg);
        let t = texts(&elems);
        for want in [
            "Load test",
            "clicks/s",
            "latency ms",
            "seconds",
            "succeeded/s",
            "p99 ms",
            "aggregator SIGKILL",
        ] {
            assert!(t.contains(&want), "missing text {want:?} in {t:?}");
        }
        assert!(
            elems
                .iter()
                .all(|e| e.attr("font-family").is_none() || e.name == "svg")
        );
        assert_eq!(elems[0].attr("font-family"), Some("sans-serif"));
        // x axis 0..60 in steps of 10 (59 s of data, ~12 targets clamped to 10).
        for label in ["0", "10", "60"] {
            assert!(t.contains(&label));
        }
    }

    #[test]
    fn polyline_point_count_matches_samples() {
        let samples = steady(37);
        let elems = parse_ok(&timeline_svg("t", &samples, &[], 800, 400));
        for class in ["succeeded", "failed", "p50", "p99"] {
            let lines = polylines(&elems, class);
            assert_eq!(lines.len(), 1, "{class}");
            assert_eq!(point_count(lines[0]), samples.len(), "{class}");
        }
        let area = elems
            .iter()
            .find(|e| e.attr("class") == Some("succeeded-area"))
            .and_then(|e| e.attr("d"));
        assert!(area.is_some_and(|d| d.starts_with('M') && d.ends_with('Z')));
    }

    #[test]
    fn none_and_non_finite_latencies_break_lines() {
        let mut samples = steady(10);
        samples[3].p99_ms = None;
        samples[6].p99_ms = Some(f64::NAN);
        samples[8].p99_ms = Some(f64::INFINITY);
        samples[2].p50_ms = Some(f64::NEG_INFINITY);
        samples[5].p50_ms = Some(-1.0);
        let svg = timeline_svg("gaps", &samples, &[], 800, 400);
        let elems = parse_ok(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // p99 valid at 0-2, 4-5, 7, 9 -> polylines of 3 and 2, dots at 7 and 9.
        let p99: Vec<usize> = polylines(&elems, "p99")
            .iter()
            .map(|e| point_count(e))
            .collect();
        assert_eq!(p99, vec![3, 2]);
        let dots = elems
            .iter()
            .filter(|e| e.name == "path" && e.attr("class") == Some("p99"))
            .count();
        assert_eq!(dots, 2);
        let p50: Vec<usize> = polylines(&elems, "p50")
            .iter()
            .map(|e| point_count(e))
            .collect();
        assert_eq!(p50, vec![2, 2, 4]);
        // Throughput is unaffected by latency gaps.
        assert_eq!(point_count(polylines(&elems, "succeeded")[0]), 10);
    }

    #[test]
    fn all_latencies_missing_still_renders() {
        let samples: Vec<SecondSample> = (0..5).map(|s| sample(s, 0, 7, None, None)).collect();
        let elems = parse_ok(&timeline_svg("down", &samples, &[], 600, 300));
        assert!(polylines(&elems, "p99").is_empty());
        assert_eq!(point_count(polylines(&elems, "failed")[0]), 5);
    }

    #[test]
    fn outliers_are_clamped_to_the_top_edge() {
        let mut samples: Vec<SecondSample> = (0..100)
            .map(|s| sample(s, 10, 0, Some(5.0), Some(10.0)))
            .collect();
        samples.push(sample(100, 10, 0, Some(9000.0), Some(10_000.0)));
        assert_eq!(latency_axis_max(&samples), 12.0);
        let svg = timeline_svg("spike", &samples, &[], 800, 400);
        let elems = parse_ok(&svg);
        assert!(texts(&elems).contains(&"clipped above 12 ms"));
        let frames: Vec<f64> = elems
            .iter()
            .filter(|e| e.name == "rect" && e.attr("fill") == Some("none"))
            .filter_map(|e| e.attr("y")?.parse().ok())
            .collect();
        let bottom_top = frames[1];
        let last = polylines(&elems, "p99")[0]
            .attr("points")
            .and_then(|p| p.split_whitespace().last())
            .and_then(|xy| xy.split(',').nth(1))
            .and_then(|y| y.parse::<f64>().ok());
        assert_eq!(last, Some(bottom_top));
        // Without outliers there is no clipping note.
        assert!(!timeline_svg("calm", &steady(20), &[], 800, 400).contains("clipped"));
    }

    #[test]
    fn latency_axis_max_edge_cases() {
        assert_eq!(latency_axis_max(&[]), 1.0);
        assert_eq!(latency_axis_max(&[sample(0, 0, 0, None, Some(0.0))]), 1.0);
        assert_eq!(latency_axis_max(&[sample(0, 0, 0, None, Some(50.0))]), 60.0);
        assert_eq!(
            latency_axis_max(&[sample(0, 0, 0, None, Some(f64::MAX))]),
            1e300
        );
        // 90 s run with one stall: the interpolated percentile keeps the axis far below it.
        let mut short: Vec<SecondSample> =
            (0..89).map(|s| sample(s, 1, 0, None, Some(25.0))).collect();
        short.push(sample(89, 1, 0, None, Some(5000.0)));
        let cap = latency_axis_max(&short);
        assert!(cap > 30.0 && cap < 1000.0, "{cap}");
        // Invalid values are ignored, not ranked.
        let mut noisy = short.clone();
        noisy.push(sample(90, 1, 0, None, Some(f64::NAN)));
        noisy.push(sample(91, 1, 0, None, Some(-5.0)));
        assert_eq!(latency_axis_max(&noisy), cap);
    }

    #[test]
    fn markers_appear_escaped_and_out_of_range_ones_are_skipped() {
        let markers = vec![
            Marker {
                at_seconds: 12.4,
                label: r#"kill <agg> & "restart""#.into(),
            },
            Marker {
                at_seconds: 3.0,
                label: "partition".into(),
            },
            Marker {
                at_seconds: f64::NAN,
                label: "nan".into(),
            },
            Marker {
                at_seconds: -2.0,
                label: "before".into(),
            },
            Marker {
                at_seconds: 29.5,
                label: "heal".into(),
            },
        ];
        let svg = timeline_svg("m", &steady(20), &markers, 800, 400);
        assert!(svg.contains("kill &lt;agg&gt; &amp; &quot;restart&quot;"));
        let elems = parse_ok(&svg);
        let t = texts(&elems);
        for want in [r#"kill <agg> & "restart""#, "partition", "heal"] {
            assert!(t.contains(&want), "{want}");
        }
        assert!(!t.contains(&"nan") && !t.contains(&"before"));
        let lines = elems
            .iter()
            .filter(|e| e.attr("class") == Some("marker"))
            .count();
        assert_eq!(lines, 3);
        // The marker after the data extends the time axis to include it.
        assert!(t.contains(&"30"));
    }

    #[test]
    fn empty_samples_say_no_data() {
        let markers = [Marker {
            at_seconds: 1.0,
            label: "x".into(),
        }];
        let svg = timeline_svg("empty <run>", &[], &markers, 640, 360);
        let elems = parse_ok(&svg);
        let t = texts(&elems);
        assert!(t.contains(&"no data"));
        assert!(t.contains(&"empty <run>"));
        assert_eq!(elems[0].name, "svg");
        assert_eq!(elems[0].attr("xmlns"), Some("http://www.w3.org/2000/svg"));
    }

    #[test]
    fn hostile_inputs_never_panic_and_stay_well_formed() {
        let wild = [
            sample(u32::MAX, u64::MAX, u64::MAX, Some(f64::MAX), Some(f64::MAX)),
            sample(5, 0, 0, Some(f64::MIN_POSITIVE), Some(1e-320)),
            sample(5, 1, 1, Some(f64::NAN), None),
            sample(0, 3, 0, Some(1e300), Some(f64::INFINITY)),
        ];
        let markers = vec![
            Marker {
                at_seconds: f64::INFINITY,
                label: "\u{0}\u{1b}bad\u{FFFF}".into(),
            },
            Marker {
                at_seconds: 1e308,
                label: "far".into(),
            },
            Marker {
                at_seconds: 0.0,
                label: "'quoted'\n\"x\"".into(),
            },
        ];
        for (w, h) in [(0, 0), (1, 1), (50, 20), (800, 400), (u32::MAX, u32::MAX)] {
            for s in [&wild[..], &wild[..1], &steady(3)[..]] {
                let svg = timeline_svg("\u{7}t<&>\"'", s, &markers, w, h);
                parse_ok(&svg);
                assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
            }
        }
    }

    #[test]
    fn output_numbers_have_at_most_one_decimal() {
        let mut samples = steady(333);
        samples[10].p99_ms = Some(123.456_789);
        let markers = [Marker {
            at_seconds: 1.234_567,
            label: "m".into(),
        }];
        let elems = parse_ok(&timeline_svg("precision", &samples, &markers, 1234, 567));
        for e in &elems {
            for (k, v) in &e.attrs {
                if k == "xmlns" {
                    continue;
                }
                for token in v.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
                    if let Some((_, frac)) = token.split_once('.') {
                        assert!(frac.len() <= 1, "{k}={v}");
                    }
                }
            }
        }
    }

    #[test]
    fn output_is_deterministic() {
        let samples = steady(45);
        let markers = [Marker {
            at_seconds: 20.0,
            label: "failover".into(),
        }];
        let a = timeline_svg("det", &samples, &markers, 800, 400);
        let b = timeline_svg("det", &samples.clone(), &markers.clone(), 800, 400);
        assert_eq!(a, b);
        // Input order does not matter: samples are drawn by `second`.
        let mut reversed = samples.clone();
        reversed.reverse();
        assert_eq!(a, timeline_svg("det", &reversed, &markers, 800, 400));
    }

    #[test]
    fn escape_xml_handles_specials_and_controls() {
        assert_eq!(
            escape_xml(r#"a<b & "c" 'd' >"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos; &gt;"
        );
        assert_eq!(escape_xml("line1\nline2\ttab"), "line1 line2 tab");
        assert_eq!(escape_xml("x\u{0}y\u{1f}z"), "x\u{FFFD}y\u{FFFD}z");
        assert_eq!(escape_xml("ünïcødé ✓"), "ünïcødé ✓");
        assert_eq!(escape_xml(""), "");
    }

    #[test]
    fn nice_ticks_values() {
        assert_eq!(nice_ticks(7.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(
            nice_ticks(7.0, 10),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        );
        assert_eq!(
            nice_ticks(100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(101.0, 5), vec![0.0, 50.0, 100.0, 150.0]);
        assert_eq!(
            nice_ticks(59.0, 6),
            vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        );
        assert_eq!(nice_ticks(0.3, 3), vec![0.0, 0.1, 0.2, 0.3]);
        assert_eq!(nice_ticks(12.0, 5), vec![0.0, 5.0, 10.0, 15.0]);
        assert_eq!(nice_ticks(1.0, 5), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            nice_ticks(25_000.0, 4),
            vec![0.0, 10_000.0, 20_000.0, 30_000.0]
        );
    }

    #[test]
    fn nice_ticks_degenerate_inputs() {
        let default = nice_ticks(1.0, 5);
        assert_eq!(nice_ticks(0.0, 5), default);
        assert_eq!(nice_ticks(-3.0, 5), default);
        assert_eq!(nice_ticks(f64::NAN, 5), default);
        assert_eq!(nice_ticks(f64::INFINITY, 5), default);
        assert_eq!(nice_ticks(7.0, 0), vec![0.0, 10.0]);
        for (max, target) in [
            (f64::MAX, 5),
            (1e300, 3),
            (1e-320, 5),
            (f64::MIN_POSITIVE, 5),
            (123.0, usize::MAX),
            (1.0, 1),
        ] {
            let t = nice_ticks(max, target);
            assert!(
                t.len() >= 2 && t.len() <= 1002,
                "{max} {target}: {}",
                t.len()
            );
            assert_eq!(t[0], 0.0);
            assert!(t.iter().all(|v| v.is_finite()));
            assert!(t.windows(2).all(|w| w[1] > w[0]));
            assert!(*t.last().unwrap_or(&0.0) >= max.clamp(1e-300, 1e300));
        }
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt1(3.0), "3");
        assert_eq!(fmt1(1.25), "1.3");
        assert_eq!(fmt1(-0.04), "0");
        assert_eq!(fmt1(-2.56), "-2.6");
        assert_eq!(fmt1(f64::NAN), "0");
        assert_eq!(fmt_label(20_000.0), "20k");
        assert_eq!(fmt_label(1_500_000.0), "1.5M");
        assert_eq!(fmt_label(2500.0), "2500");
        assert_eq!(fmt_label(0.2), "0.2");
        assert_eq!(fmt_label(1e300), "1.0e300");
    }
}
