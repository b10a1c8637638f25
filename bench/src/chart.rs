//! The chart `target/bench/latest.svg`, drawn by hand: throughput bars (sandbox against
//! native), echo latency percentiles on a log scale (with the fairness probe under CPU hogs),
//! sleeping tasks and start-up, and the targets, met or not.

use std::fmt::Write as _;

use crate::Results;
use crate::procfs::Machine;
use crate::report::{Row, Unit};
use crate::scenarios::echo_latency::Probe;

const WIDTH: f64 = 980.0;
const LABEL_X: f64 = 20.0;
const BAR_X: f64 = 240.0;
const BAR_WIDTH: f64 = 440.0;
const NOTE_X: f64 = 770.0;
const BAR_HEIGHT: f64 = 15.0;
/// One pair of bars and the gap below it.
const PAIR_HEIGHT: f64 = 2.0 * BAR_HEIGHT + 14.0;
const SANDBOX: &str = "#3465a4";
const NATIVE: &str = "#e08a2c";
/// A baseline other than native (an empty tasks folder).
const OTHER: &str = "#9e9e9e";
const GOOD: &str = "#2e7d32";
const BAD: &str = "#c62828";
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

/// How a piece of text looks.
#[derive(Clone, Copy)]
struct Style {
    size: f64,
    fill: &'static str,
    bold: bool,
    centred: bool,
}

const TITLE: Style = Style {
    size: 20.0,
    fill: "#111",
    bold: true,
    centred: false,
};
const HEADING: Style = Style {
    size: 16.0,
    fill: "#222",
    bold: true,
    centred: false,
};
const SUBTITLE: Style = Style {
    size: 12.0,
    fill: "#666",
    bold: false,
    centred: false,
};
const LABEL: Style = Style {
    size: 13.0,
    fill: "#222",
    bold: false,
    centred: false,
};
const VALUE: Style = Style {
    size: 11.0,
    fill: "#222",
    bold: false,
    centred: false,
};
const NOTE: Style = Style {
    size: 12.0,
    fill: "#444",
    bold: false,
    centred: false,
};
const TICK: Style = Style {
    size: 10.0,
    fill: "#777",
    bold: false,
    centred: true,
};

impl Style {
    fn fill(self, fill: &'static str) -> Style {
        Style { fill, ..self }
    }
}

/// A pair of bars: the sandbox's figure and its baseline.
struct Pair {
    label: String,
    sandbox: f64,
    baseline: Option<f64>,
    unit: Unit,
    /// Text at the right end, e.g. "41% of native".
    note: String,
    /// The baseline's bar colour: native, or another baseline.
    baseline_color: &'static str,
}

impl Pair {
    fn native(
        label: impl Into<String>,
        sandbox: f64,
        native: Option<f64>,
        unit: Unit,
        note: impl Into<String>,
    ) -> Pair {
        Pair {
            label: label.into(),
            sandbox,
            baseline: native,
            unit,
            note: note.into(),
            baseline_color: NATIVE,
        }
    }
}

/// Accumulates SVG elements and the height used so far.
struct Canvas {
    body: String,
    y: f64,
}

impl Canvas {
    fn text(&mut self, x: f64, y: f64, style: Style, text: &str) {
        let anchor = if style.centred { "middle" } else { "start" };
        let weight = if style.bold { "bold" } else { "normal" };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{}" text-anchor="{anchor}" fill="{}" font-weight="{weight}">{}</text>"#,
            style.size,
            style.fill,
            escape(text)
        );
    }

    fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{height:.1}" fill="{fill}" rx="2"/>"#,
            width.max(1.0)
        );
    }

    fn line(&mut self, from: (f64, f64), to: (f64, f64), stroke: &str, dashed: bool) {
        let dash = if dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let _ = writeln!(
            self.body,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{stroke}" stroke-width="1"{dash}/>"#,
            from.0, from.1, to.0, to.1
        );
    }

    fn heading(&mut self, title: &str, subtitle: &str) {
        self.y += 34.0;
        self.text(LABEL_X, self.y, HEADING, title);
        if !subtitle.is_empty() {
            self.y += 17.0;
            self.text(LABEL_X, self.y, SUBTITLE, subtitle);
        }
        self.y += 14.0;
    }

    /// Two bars per pair; `scale` maps a value to a bar length.
    fn pairs(&mut self, pairs: &[Pair], scale: &dyn Fn(f64) -> f64) {
        for pair in pairs {
            let top = self.y;
            self.text(LABEL_X, top + BAR_HEIGHT + 5.0, LABEL, &pair.label);
            self.bar(top, pair.sandbox, pair.unit, SANDBOX, scale);
            if let Some(baseline) = pair.baseline {
                self.bar(
                    top + BAR_HEIGHT + 2.0,
                    baseline,
                    pair.unit,
                    pair.baseline_color,
                    scale,
                );
            }
            self.text(NOTE_X, top + BAR_HEIGHT + 5.0, NOTE, &pair.note);
            self.y += PAIR_HEIGHT;
        }
    }

    /// Pairs each drawn on its own linear scale (their units differ).
    fn pairs_own_scale(&mut self, pairs: &[Pair]) {
        for pair in pairs {
            let top = pair.sandbox.max(pair.baseline.unwrap_or(0.0)).max(1e-9);
            self.pairs(std::slice::from_ref(pair), &|value| {
                value / top * BAR_WIDTH * 0.85
            });
        }
    }

    fn bar(&mut self, top: f64, value: f64, unit: Unit, color: &str, scale: &dyn Fn(f64) -> f64) {
        let length = scale(value).clamp(1.0, BAR_WIDTH);
        self.rect(BAR_X, top, length, BAR_HEIGHT, color);
        self.text(
            BAR_X + length + 5.0,
            top + BAR_HEIGHT - 3.0,
            VALUE,
            &unit.format(value),
        );
    }
}

/// The whole chart as an SVG document.
pub fn render(results: &Results, rows: &[Row], machine: &Machine, mode: &str) -> String {
    let mut canvas = Canvas {
        body: String::new(),
        y: 32.0,
    };
    canvas.text(
        LABEL_X,
        canvas.y,
        TITLE,
        "taskhost: sandbox against native, same run",
    );
    canvas.y += 20.0;
    let about = format!(
        "{} · {mode} mode · {} cores ({}) · Linux {}",
        machine.date, machine.cores, machine.cpu_model, machine.kernel
    );
    canvas.text(LABEL_X, canvas.y, SUBTITLE.fill("#555"), &about);
    canvas.y += 22.0;
    let legend = [
        (SANDBOX, "sandbox (wasmtime)"),
        (NATIVE, "native baseline (--native)"),
        (OTHER, "other baseline"),
    ];
    let mut x = LABEL_X;
    for (color, text) in legend {
        canvas.rect(x, canvas.y - 11.0, 14.0, 12.0, color);
        canvas.text(x + 20.0, canvas.y, SUBTITLE.fill("#222"), text);
        x += 210.0;
    }

    throughput(&mut canvas, results);
    latency(&mut canvas, results);
    resources(&mut canvas, results);
    targets(&mut canvas, rows);

    let height = canvas.y + 24.0;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="{FONT}">
<rect width="100%" height="100%" fill="white"/>
{}</svg>
"#,
        canvas.body
    )
}

fn share(sandbox: f64, native: Option<f64>, target: &str) -> String {
    match native {
        Some(native) if native > 0.0 => {
            format!("{:.0}% of native ({target})", 100.0 * sandbox / native)
        }
        _ => "no native baseline".to_owned(),
    }
}

fn throughput(canvas: &mut Canvas, results: &Results) {
    let mut pairs = Vec::new();
    if let Some(echo) = results.echo_throughput.as_ref().map(|e| &e.turns) {
        let native = echo.native.as_ref().map(|n| n.tasks_per_s);
        let note = share(echo.sandbox.tasks_per_s, native, "≥ 35%");
        pairs.push(Pair::native(
            "echo, 50 conn × 10",
            echo.sandbox.tasks_per_s,
            native,
            Unit::TasksPerSecond,
            note,
        ));
    }
    if let Some(cpu) = results.cpu.as_ref().map(|c| &c.turns) {
        let native = cpu.native.as_ref().map(|n| n.tasks_per_s);
        let note = share(cpu.sandbox.tasks_per_s, native, "≥ 45%");
        pairs.push(Pair::native(
            "fib(27), 8 conn × 2",
            cpu.sandbox.tasks_per_s,
            native,
            Unit::TasksPerSecond,
            note,
        ));
    }
    if pairs.is_empty() {
        return;
    }
    canvas.heading(
        "Throughput",
        "tasks per second, higher is better; each pair on its own scale",
    );
    canvas.pairs_own_scale(&pairs);
}

/// Reads one percentile of a probe.
type Pick = fn(&Probe) -> f64;

fn latency(canvas: &mut Canvas, results: &Results) {
    let mut pairs = Vec::new();
    if let Some(latency) = &results.echo_latency {
        let native = latency.native.as_ref();
        let percentiles: [(&str, Pick); 6] = [
            ("accepted p50", |p| p.accepted.p50_us),
            ("accepted p99", |p| p.accepted.p99_us),
            ("accepted p99.9", |p| p.accepted.p999_us),
            ("finished p50", |p| p.finished.p50_us),
            ("finished p99", |p| p.finished.p99_us),
            ("finished p99.9", |p| p.finished.p999_us),
        ];
        for (label, pick) in percentiles {
            let sandbox = pick(&latency.sandbox);
            let native = native.map(pick);
            let mut note = match native {
                Some(n) if n > 0.0 => format!("{:.2}x native", sandbox / n),
                _ => String::new(),
            };
            if label == "finished p50" {
                note.push_str(" (≤ 1.5x)");
            }
            pairs.push(Pair::native(
                format!("echo {label}"),
                sandbox,
                native,
                Unit::Micros,
                note,
            ));
        }
    }
    let mut hogs_row = None;
    if let Some(fairness) = &results.fairness {
        let sandbox = fairness.sandbox.probe.finished.p99_us;
        hogs_row = Some(pairs.len());
        let verdict = if sandbox <= 10_000.0 { "met" } else { "missed" };
        pairs.push(Pair::native(
            format!("echo p99, {} CPU hogs", fairness.sandbox.hogs),
            sandbox,
            fairness.native.as_ref().map(|n| n.probe.finished.p99_us),
            Unit::Micros,
            format!("≤ 10 ms: {verdict}"),
        ));
    }
    if pairs.is_empty() {
        return;
    }
    canvas.heading(
        "Latency",
        "one connection, one task in flight; log scale, lower is better",
    );
    let values = pairs
        .iter()
        .flat_map(|p| [Some(p.sandbox), p.baseline])
        .flatten();
    let high_exp = values.fold(10_000.0_f64, f64::max).log10().ceil();
    let low_exp = 1.0;
    let scale =
        move |value: f64| (value.max(10.0).log10() - low_exp) / (high_exp - low_exp) * BAR_WIDTH;
    let axis_top = canvas.y;
    canvas.pairs(&pairs, &scale);
    let axis_bottom = canvas.y - 10.0;
    for exp in (low_exp as i32)..=(high_exp as i32) {
        let x = BAR_X + scale(10_f64.powi(exp));
        canvas.line((x, axis_top - 4.0), (x, axis_bottom), "#ccc", true);
        canvas.text(x, axis_bottom + 13.0, TICK, &tick(exp));
    }
    if let Some(row) = hogs_row {
        let top = axis_top + row as f64 * PAIR_HEIGHT;
        let x = BAR_X + scale(10_000.0);
        canvas.line(
            (x, top - 3.0),
            (x, top + 2.0 * BAR_HEIGHT + 5.0),
            BAD,
            false,
        );
        canvas.text(x + 3.0, top - 4.0, VALUE.fill(BAD), "target");
    }
    canvas.y += 10.0;
}

/// A power of ten of microseconds, as an axis label.
fn tick(exp: i32) -> String {
    match exp {
        0..=2 => format!("{} µs", 10_i64.pow(exp.unsigned_abs())),
        3..=5 => format!("{} ms", 10_i64.pow((exp - 3).unsigned_abs())),
        _ => format!("{} s", 10_i64.pow((exp - 6).max(0).unsigned_abs())),
    }
}

/// Sleeping tasks and start-up, each pair on its own scale.
fn resources(canvas: &mut Canvas, results: &Results) {
    let mut pairs = Vec::new();
    if let Some(sleeping) = &results.sleeping {
        let count = Unit::Count.format(sleeping.sandbox.tasks as f64);
        let native = sleeping.native.as_ref();
        pairs.push(Pair::native(
            format!("{count} sleepers: wall time"),
            sleeping.sandbox.wall_s,
            native.map(|n| n.wall_s),
            Unit::Seconds,
            "target ≤ 1.5 s",
        ));
        pairs.push(Pair::native(
            format!("{count} sleepers: peak RSS"),
            sleeping.sandbox.peak_rss_bytes as f64,
            native.map(|n| n.peak_rss_bytes as f64),
            Unit::Bytes,
            "target < 1 GiB",
        ));
    }
    if let Some(startup) = &results.startup {
        pairs.push(Pair {
            baseline_color: OTHER,
            ..Pair::native(
                "start-up, warm",
                startup.warm_ms,
                Some(startup.empty_warm_ms),
                Unit::Millis,
                "grey: empty tasks/ (≤ 200 ms)",
            )
        });
    }
    if pairs.is_empty() {
        return;
    }
    canvas.heading(
        "Sleeping tasks and start-up",
        "lower is better; each pair on its own scale",
    );
    canvas.pairs_own_scale(&pairs);
}

fn targets(canvas: &mut Canvas, rows: &[Row]) {
    let with_targets: Vec<&Row> = rows.iter().filter(|row| row.target.is_some()).collect();
    if with_targets.is_empty() {
        return;
    }
    canvas.heading("Targets of issue 5", "");
    for row in with_targets {
        canvas.y += 18.0;
        let (mark, color) = match row.met {
            Some(true) => ("✓", GOOD),
            Some(false) => ("✗", BAD),
            None => ("?", "#777"),
        };
        let mark_style = Style {
            size: 14.0,
            fill: color,
            bold: true,
            centred: true,
        };
        canvas.text(LABEL_X + 6.0, canvas.y, mark_style, mark);
        let value = row
            .value
            .map_or("failed".to_owned(), |v| row.unit.format(v));
        let text = format!(
            "{} · {}: {} (target {})",
            row.scenario,
            row.metric,
            value,
            row.target_text.as_deref().unwrap_or("")
        );
        canvas.text(LABEL_X + 22.0, canvas.y, LABEL.fill("#222"), &text);
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
