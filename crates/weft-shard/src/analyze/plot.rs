//! The `--plot` chart: one panel per algorithm, a bar per node with its keys, a y-axis in keys
//! with the mean and the maximum marked, node labels under the bars, and a legend.

use std::fmt::Write as _;

use super::Analysis;

const WIDTH: f64 = 960.0;
const PANEL: f64 = 230.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 110.0;
const TOP: f64 = 48.0;
/// Height of a panel's bar area.
const AREA: f64 = 140.0;
const BAR: &str = "#4a7dbd";
const MEAN: &str = "#d9534f";
const MAX: &str = "#e08a00";

/// An SVG chart of the analyses, readable without the table: per panel a y-axis in keys (with
/// round ticks, the mean and the maximum marked), the node names under their bars (every k-th
/// when there are many), and a legend at the top.
pub fn svg(analyses: &[Analysis]) -> String {
    let h = TOP + PANEL * analyses.len() as f64 + 10.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    legend(&mut out);
    for (i, a) in analyses.iter().enumerate() {
        panel(&mut out, a, TOP + i as f64 * PANEL);
    }
    out.push_str("</svg>\n");
    out
}

fn legend(out: &mut String) {
    let y = 20.0;
    let _ = write!(
        out,
        r##"<g class="legend"><rect x="{LEFT}" y="{}" width="14" height="10" fill="{BAR}"/><text x="{}" y="{y}">keys on the node</text><line x1="250" x2="280" y1="{}" y2="{}" stroke="{MEAN}" stroke-dasharray="4 3"/><text x="286" y="{y}">mean over live nodes</text><line x1="450" x2="480" y1="{}" y2="{}" stroke="{MAX}" stroke-dasharray="1 2" stroke-width="2"/><text x="486" y="{y}">most loaded node</text></g>"##,
        y - 9.0,
        LEFT + 20.0,
        y - 4.0,
        y - 4.0,
        y - 4.0,
        y - 4.0,
    );
}

/// A round step giving about five ticks up to `top`.
fn tick_step(top: f64) -> f64 {
    let raw = (top / 5.0).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn panel(out: &mut String, a: &Analysis, top: f64) {
    let n = a.loads.len().max(1) as f64;
    let max = a.loads.iter().map(|l| l.1 as f64).fold(0.0, f64::max);
    let mean = if a.max_over_mean > 0.0 {
        max / a.max_over_mean
    } else {
        0.0
    };
    let step = tick_step(max.max(1.0));
    let scale_top = ((max.max(1.0) / step).ceil() * step).max(step);
    let base = top + 24.0 + AREA;
    let y = |v: f64| base - v / scale_top * AREA;
    let plot_w = WIDTH - LEFT - RIGHT;
    let bw = plot_w / n;
    let _ = write!(
        out,
        r#"<g class="panel"><text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
        top + 12.0,
        escape(&title(a))
    );
    // The y-axis: a line, round ticks with grid lines, and its title.
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{:.1}" y2="{base:.1}" stroke="#333"/><line x1="{LEFT}" x2="{:.1}" y1="{base:.1}" y2="{base:.1}" stroke="#333"/><text transform="translate({},{:.1}) rotate(-90)" text-anchor="middle">keys</text>"##,
        y(scale_top),
        LEFT + plot_w,
        LEFT - 52.0,
        base - AREA / 2.0
    );
    let mut v = 0.0;
    while v <= scale_top + step / 2.0 {
        let _ = write!(
            out,
            r##"<line x1="{:.1}" x2="{LEFT}" y1="{yy:.1}" y2="{yy:.1}" stroke="#333"/><line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 4.0,
            LEFT + plot_w,
            LEFT - 6.0,
            y(v) + 4.0,
            v,
            yy = y(v)
        );
        v += step;
    }
    bars(out, a, base, bw, &y);
    node_labels(out, a, base, bw);
    marker(out, "mean", mean, y(mean), MEAN, "4 3", plot_w);
    marker(out, "max", max, y(max), MAX, "1 2", plot_w);
    out.push_str("</g>");
}

fn title(a: &Analysis) -> String {
    format!(
        "{}: max/mean {:.3}, stddev/mean {:.3}{}",
        a.algo,
        a.max_over_mean,
        a.stddev_over_mean,
        match (a.moved, a.ideal) {
            (Some(m), Some(i)) => format!(", moved {:.2}% (ideal {:.2}%)", m * 100.0, i * 100.0),
            _ => String::new(),
        }
    )
}

fn bars(out: &mut String, a: &Analysis, base: f64, bw: f64, y: &dyn Fn(f64) -> f64) {
    for (i, (node, l)) in a.loads.iter().enumerate() {
        let top = y(*l as f64);
        let _ = write!(
            out,
            r##"<rect x="{:.2}" y="{top:.2}" width="{:.2}" height="{:.2}" fill="{BAR}"><title>{}: {l} keys</title></rect>"##,
            LEFT + i as f64 * bw,
            (bw - 0.5).max(0.5),
            base - top,
            escape(node)
        );
    }
}

/// Node names under the bars: all of them when they fit, else every k-th (and the last).
fn node_labels(out: &mut String, a: &Analysis, base: f64, bw: f64) {
    let n = a.loads.len();
    let every = ((14.0 / bw).ceil() as usize).max(1);
    for (i, (node, _)) in a.loads.iter().enumerate() {
        if i % every != 0 && i + 1 != n {
            continue;
        }
        if i + 1 == n && i % every != 0 && (i % every) * 2 < every {
            continue; // too close to the previous label
        }
        let x = LEFT + (i as f64 + 0.5) * bw;
        let _ = write!(
            out,
            r#"<text class="node" transform="translate({x:.1},{:.1}) rotate(-45)" text-anchor="end" font-size="10">{}</text>"#,
            base + 10.0,
            escape(node)
        );
    }
}

fn marker(out: &mut String, what: &str, v: f64, yy: f64, color: &str, dash: &str, plot_w: f64) {
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="{color}" stroke-dasharray="{dash}" stroke-width="1.5"/><text class="{what}" x="{:.1}" y="{:.1}" fill="{color}">{what} {}</text>"##,
        LEFT + plot_w,
        LEFT + plot_w + 6.0,
        if what == "max" { yy - 2.0 } else { yy + 11.0 },
        v.round()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(loads: &[(&str, u64)]) -> Analysis {
        let max = loads.iter().map(|l| l.1).max().unwrap() as f64;
        let mean = loads.iter().map(|l| l.1).sum::<u64>() as f64 / loads.len() as f64;
        Analysis {
            algo: "ring".into(),
            loads: loads.iter().map(|(n, l)| (n.to_string(), *l)).collect(),
            max_over_mean: max / mean,
            stddev_over_mean: 0.1,
            moved: None,
            ideal: None,
            lookup_ns: 1.0,
            memory_bytes: 1,
        }
    }

    #[test]
    fn the_chart_has_axes_marks_labels_and_a_legend() {
        let s = svg(&[analysis(&[("a", 900), ("b<&>", 1100), ("c", 1000)])]);
        assert!(s.contains(">keys</text>"), "y-axis title");
        assert!(
            s.contains(r#"class="mean" "#) && s.contains(">mean 1000</text>"),
            "{s}"
        );
        assert!(s.contains(">max 1100</text>"), "{s}");
        assert!(s.contains(">b&lt;&amp;&gt;</text>"), "node labels, escaped");
        for tick in ["0", "500", "1000"] {
            assert!(
                s.contains(&format!(r#"text-anchor="end">{tick}</text>"#)),
                "tick {tick}: {s}"
            );
        }
        assert!(s.contains("most loaded node") && s.contains("mean over live nodes"));
    }

    #[test]
    fn many_nodes_get_every_kth_label() {
        let loads: Vec<(String, u64)> = (0..200).map(|i| (format!("n{i}"), 10)).collect();
        let refs: Vec<(&str, u64)> = loads.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        let s = svg(&[analysis(&refs)]);
        let labels = s.matches(r#"class="node""#).count();
        assert!((10..=80).contains(&labels), "{labels} labels for 200 nodes");
        assert_eq!(
            s.matches("<rect x=").count(),
            201,
            "200 bars and the legend swatch"
        );
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(1100.0), 500.0);
        assert_eq!(tick_step(40.0), 10.0);
        assert_eq!(tick_step(1.0), 1.0);
        assert_eq!(tick_step(7300.0), 2000.0);
    }
}
