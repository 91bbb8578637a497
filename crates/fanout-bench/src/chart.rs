//! The fan-out series as a hand-written SVG (no plotting dependency): time
//! to all Synced against N on log-log axes, the Fanout and the baseline
//! (medians joined by lines, every repeat as a faint dot), and the floor the
//! client-side rate limit sets: the first `burst` requests go at once, the
//! rest at QPS, so no client can finish before (N - burst) / QPS.

use std::fmt::Write as _;

use crate::results::ThroughputRun;
use crate::stats::median;

const WIDTH: f64 = 780.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 215.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const FANOUT: &str = "#1f77b4";
const BASELINE: &str = "#ff7f0e";
const FLOOR: &str = "#888888";

/// Log-scale axis from `lo` to `hi` onto pixels `from`..`to`.
struct Axis {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Axis {
    fn place(&self, v: f64) -> f64 {
        let t = (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        self.from + t * (self.to - self.from)
    }

    /// 1-2-5 ticks within the range.
    fn ticks(&self) -> Vec<f64> {
        let mut ticks = Vec::new();
        let mut decade = 10f64.powf(self.lo.log10().floor());
        while decade <= self.hi {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v >= self.lo * 0.999 && v <= self.hi * 1.001 {
                    ticks.push(v);
                }
            }
            decade *= 10.0;
        }
        ticks
    }
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.1}")
    }
}

/// The SVG text; `qps` and `burst` draw the rate-limit floor; `unlimited`
/// (runs without a client-side limit) are drawn dashed.
pub fn svg(
    runs: &[ThroughputRun],
    unlimited: &[ThroughputRun],
    qps: u32,
    burst: u32,
    title: &str,
) -> String {
    let mut sizes: Vec<usize> = runs.iter().chain(unlimited).map(|r| r.n).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let floor = |n: usize| n.saturating_sub(burst as usize) as f64 / f64::from(qps);
    let all_times = runs
        .iter()
        .chain(unlimited)
        .flat_map(|r| [r.fanout_seconds, r.baseline_seconds])
        .chain(sizes.iter().map(|&n| floor(n)))
        .filter(|v| *v > 0.0);
    let (min_t, max_t) = all_times.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (min_n, max_n) = (
        sizes.first().copied().unwrap_or(1) as f64,
        sizes.last().copied().unwrap_or(10) as f64,
    );
    let x = Axis {
        lo: min_n / 1.5,
        hi: max_n * 1.5,
        from: LEFT,
        to: WIDTH - RIGHT,
    };
    let y = Axis {
        lo: (min_t * 0.7).max(1e-3),
        hi: max_t * 1.5,
        from: HEIGHT - BOTTOM,
        to: TOP,
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="25" font-size="14" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and ticks.
    for t in x.ticks() {
        let px = x.place(t);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            label(t)
        );
    }
    for t in y.ticks() {
        let py = y.place(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            label(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        WIDTH - RIGHT - LEFT,
        HEIGHT - BOTTOM - TOP
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">target namespaces N (log)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">seconds to all Synced (log)</text>"#,
        (TOP + HEIGHT - BOTTOM) / 2.0
    );

    // The floor (N - burst) / QPS, where there is one.
    let floor_points: Vec<(f64, f64)> = sizes
        .iter()
        .filter(|&&n| floor(n) > 0.0)
        .map(|&n| (x.place(n as f64), y.place(floor(n))))
        .collect();
    polyline(&mut s, &floor_points, FLOOR, "5 4");

    let baseline = (|r: &ThroughputRun| r.baseline_seconds) as fn(&ThroughputRun) -> f64;
    let fanout = (|r: &ThroughputRun| r.fanout_seconds) as fn(&ThroughputRun) -> f64;
    for (series, color, pick, dash) in [
        (unlimited, BASELINE, baseline, "2 3"),
        (unlimited, FANOUT, fanout, "2 3"),
        (runs, BASELINE, baseline, ""),
        (runs, FANOUT, fanout, ""),
    ] {
        for r in series {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}" fill-opacity="0.3"/>"#,
                x.place(r.n as f64),
                y.place(pick(r))
            );
        }
        let medians: Vec<(f64, f64)> = sizes
            .iter()
            .filter_map(|&n| {
                let m = median(series.iter().filter(|r| r.n == n).map(pick))?;
                Some((x.place(n as f64), y.place(m)))
            })
            .collect();
        polyline(&mut s, &medians, color, dash);
        let fill = if dash.is_empty() { color } else { "white" };
        for (px, py) in &medians {
            let _ = writeln!(
                s,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="4.5" fill="{fill}" stroke="{color}" stroke-width="1.5"/>"#
            );
        }
    }

    // Legend.
    let lx = WIDTH - RIGHT + 15.0;
    let mut entries = vec![
        (FANOUT, "", "Fanout".to_owned()),
        (BASELINE, "", "baseline".to_owned()),
        (FLOOR, "5 4", format!("(N - {burst}) / {qps} per s")),
    ];
    if !unlimited.is_empty() {
        entries.push((FANOUT, "2 3", "Fanout, no client limit".to_owned()));
        entries.push((BASELINE, "2 3", "baseline, no client limit".to_owned()));
    }
    for (i, (color, dash, text)) in entries.iter().enumerate() {
        let ly = TOP + 10.0 + 22.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(text)
        );
    }
    let below = TOP + 10.0 + 22.0 * entries.len() as f64;
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{:.1}" fill="#666">lines: medians</text><text x="{lx}" y="{:.1}" fill="#666">faint dots: each repeat</text>"##,
        below + 4.0,
        below + 20.0
    );
    s.push_str("</svg>\n");
    s
}

fn polyline(s: &mut String, points: &[(f64, f64)], color: &str, dash: &str) {
    let points: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
        points.join(" ")
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
