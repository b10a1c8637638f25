//! The table: one [`Row`] per figure, with its baseline, the ratio, issue 5's target and
//! whether it is met; printed for a person and written as JSON with everything else.

use std::fmt::Write as _;

use serde::Serialize;

/// What a figure counts, for formatting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    TasksPerSecond,
    Micros,
    Millis,
    Seconds,
    Bytes,
    Count,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::TasksPerSecond => format!("{}/s", thousands(value)),
            Unit::Micros if value >= 10_000.0 => format!("{:.1} ms", value / 1e3),
            Unit::Micros if value >= 1_000.0 => format!("{:.2} ms", value / 1e3),
            Unit::Micros if value >= 100.0 => format!("{value:.0} µs"),
            Unit::Micros => format!("{value:.1} µs"),
            Unit::Millis if value >= 100.0 => format!("{value:.0} ms"),
            Unit::Millis => format!("{value:.1} ms"),
            Unit::Seconds => format!("{value:.2} s"),
            Unit::Bytes if value >= f64::from(1 << 30) => {
                format!("{:.2} GiB", value / f64::from(1 << 30))
            }
            Unit::Bytes if value >= f64::from(1 << 20) => {
                format!("{:.1} MiB", value / f64::from(1 << 20))
            }
            Unit::Bytes => format!("{:.1} KiB", value / 1024.0),
            Unit::Count => thousands(value),
        }
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

/// Issue 5's goal for a figure.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// sandbox / baseline ≥ ratio (throughput).
    RatioAtLeast { ratio: f64 },
    /// sandbox / baseline ≤ ratio (latency).
    RatioAtMost { ratio: f64 },
    /// sandbox ≤ value, in the row's unit.
    AtMost { value: f64 },
    /// sandbox − baseline ≤ value, in the row's unit (CPU the sandbox adds).
    ExcessAtMost { value: f64 },
    /// sandbox − baseline ≤ baseline: what the sandbox adds is at most what the baseline
    /// costs on its own (issue 13's echo CPU target).
    ExcessAtMostBaseline,
}

impl Target {
    fn describe(self, unit: Unit) -> String {
        match self {
            Target::RatioAtLeast { ratio } => format!("≥ {:.0}% of baseline", ratio * 100.0),
            Target::RatioAtMost { ratio } => format!("≤ {ratio}x baseline"),
            Target::AtMost { value } => format!("≤ {}", unit.format(value)),
            Target::ExcessAtMost { value } => format!("≤ baseline + {}", unit.format(value)),
            Target::ExcessAtMostBaseline => "adds ≤ baseline".to_owned(),
        }
    }

    fn met(self, value: f64, baseline: Option<f64>) -> Option<bool> {
        let ratio = baseline.filter(|b| *b > 0.0).map(|b| value / b);
        match self {
            Target::RatioAtLeast { ratio: goal } => ratio.map(|r| r >= goal),
            Target::RatioAtMost { ratio: goal } => ratio.map(|r| r <= goal),
            Target::AtMost { value: goal } => Some(value <= goal),
            Target::ExcessAtMost { value: goal } => baseline.map(|b| value - b <= goal),
            Target::ExcessAtMostBaseline => baseline.map(|b| value - b <= b),
        }
    }
}

/// One figure of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: Unit,
    /// The server under test (sandboxed tasks, unless the row says otherwise); `None` if the
    /// scenario failed.
    pub value: Option<f64>,
    /// What the value is compared with, measured in the same run.
    pub baseline: Option<f64>,
    pub baseline_label: String,
    pub baseline_unit: Unit,
    /// value / baseline, when both are in the same unit.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    pub target_text: Option<String>,
    pub met: Option<bool>,
    /// The peer users would pick instead (Swoole), measured in the same run with the same
    /// client; `None` when it did not run. Its label is empty when the row has no peer figure.
    pub peer: Option<f64>,
    pub peer_label: String,
    /// A goal relative to the peer (value / peer), and whether it is met.
    pub peer_target: Option<Target>,
    pub peer_met: Option<bool>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, metric: impl Into<String>, unit: Unit, value: f64) -> Row {
        Row {
            scenario: scenario.to_owned(),
            metric: metric.into(),
            unit,
            value: Some(value),
            baseline: None,
            baseline_label: String::new(),
            baseline_unit: unit,
            ratio: None,
            target: None,
            target_text: None,
            met: None,
            peer: None,
            peer_label: String::new(),
            peer_target: None,
            peer_met: None,
            note: None,
        }
    }

    /// A row for a scenario that could not run.
    pub fn failed(scenario: &str, error: &anyhow::Error) -> Row {
        let mut row = Row::new(scenario, "(scenario failed)", Unit::Count, 0.0);
        row.value = None;
        row.note = Some(format!("{error:#}"));
        row
    }

    /// Compares with `baseline` (in the same unit), labelled `label`.
    pub fn baseline(mut self, label: &str, baseline: Option<f64>) -> Row {
        self.baseline_label = label.to_owned();
        self.baseline = baseline;
        self.ratio = match (self.value, baseline) {
            (Some(value), Some(baseline)) if baseline > 0.0 => Some(value / baseline),
            _ => None,
        };
        self.refresh();
        self
    }

    /// Shows `baseline` beside the value without a ratio (it counts something else).
    pub fn context(mut self, label: &str, baseline: f64, unit: Unit) -> Row {
        self.baseline_label = label.to_owned();
        self.baseline = Some(baseline);
        self.baseline_unit = unit;
        self.ratio = None;
        self
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self.target_text = Some(target.describe(self.unit));
        self.refresh();
        self
    }

    /// Shows the peer's figure (same unit) in its column, labelled `label`.
    pub fn peer(mut self, label: &str, peer: Option<f64>) -> Row {
        self.peer_label = label.to_owned();
        self.peer = peer;
        self.refresh();
        self
    }

    /// A goal against the peer: only ratio targets make sense there.
    pub fn peer_target(mut self, target: Target) -> Row {
        self.peer_target = Some(target);
        self.refresh();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    fn refresh(&mut self) {
        self.met = match (self.target, self.value) {
            (Some(target), Some(value)) => target.met(value, self.baseline),
            _ => None,
        };
        self.peer_met = match (self.peer_target, self.value) {
            (Some(target), Some(value)) => target.met(value, self.peer),
            _ => None,
        };
    }

    /// value / peer.
    fn peer_ratio_text(&self) -> String {
        match (self.value, self.peer) {
            (Some(value), Some(peer)) if peer > 0.0 => format!("{:.2}x", value / peer),
            _ => "—".to_owned(),
        }
    }

    /// The goals, the baseline's then the peer's.
    fn target_cell(&self) -> String {
        let mut goals = Vec::new();
        goals.extend(self.target_text.clone());
        if let Some(target) = self.peer_target {
            goals.push(
                target
                    .describe(self.unit)
                    .replace("baseline", &self.peer_label),
            );
        }
        if goals.is_empty() {
            "—".to_owned()
        } else {
            goals.join("; ")
        }
    }

    fn ratio_text(&self) -> String {
        match (self.target, self.value, self.baseline, self.ratio) {
            (
                Some(Target::ExcessAtMost { .. } | Target::ExcessAtMostBaseline),
                Some(value),
                Some(baseline),
                _,
            ) => {
                let excess = value - baseline;
                let sign = if excess >= 0.0 { "+" } else { "-" };
                format!("{sign}{}", self.unit.format(excess.abs()))
            }
            (_, _, _, Some(ratio)) if ratio < 0.1 => format!("{ratio:.3}x"),
            (_, _, _, Some(ratio)) => format!("{ratio:.2}x"),
            _ => "—".to_owned(),
        }
    }

    /// "yes" when every goal that could be judged is met, "NO" when one is not.
    pub fn met_text(&self) -> &'static str {
        let judged: Vec<bool> = [self.met, self.peer_met].into_iter().flatten().collect();
        match judged.as_slice() {
            [] => "—",
            all if all.iter().all(|met| *met) => "yes",
            _ => "NO",
        }
    }
}

/// The rows as an aligned text table, then the rows' notes. The peer's columns (its figure and
/// taskhost / peer) appear when some row has one.
pub fn table(rows: &[Row]) -> String {
    let peer_label = rows
        .iter()
        .find(|row| row.peer.is_some())
        .map(|row| row.peer_label.clone());
    let mut header: Vec<String> = ["scenario", "metric", "taskhost", "baseline", "ratio"]
        .map(str::to_owned)
        .to_vec();
    if let Some(label) = &peer_label {
        header.push(label.clone());
        header.push(format!("vs {label}"));
    }
    header.extend(["target", "met"].map(str::to_owned));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let value = row
                .value
                .map_or("failed".to_owned(), |v| row.unit.format(v));
            let baseline = match row.baseline {
                Some(b) => format!("{} {}", row.baseline_unit.format(b), row.baseline_label),
                None if row.baseline_label.is_empty() => "—".to_owned(),
                None => format!("— ({} n/a)", row.baseline_label),
            };
            let mut line = vec![
                row.scenario.clone(),
                row.metric.clone(),
                value,
                baseline,
                row.ratio_text(),
            ];
            if peer_label.is_some() {
                line.push(row.peer.map_or("—".to_owned(), |p| row.unit.format(p)));
                line.push(row.peer_ratio_text());
            }
            line.push(row.target_cell());
            line.push(row.met_text().to_owned());
            line
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&header);
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    let mut previous = "";
    for (row, cells) in rows.iter().zip(&cells) {
        let mut cells = cells.clone();
        if row.scenario == previous {
            cells[0] = String::new();
        }
        previous = &row.scenario;
        line(&cells);
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            row.note
                .as_ref()
                .map(|note| format!("- {} / {}: {note}", row.scenario, row.metric))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nnotes:\n{}", notes.join("\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(Unit::TasksPerSecond.format(1_234_567.4), "1,234,567/s");
        assert_eq!(Unit::Micros.format(12.34), "12.3 µs");
        assert_eq!(Unit::Micros.format(12_345.0), "12.3 ms");
        assert_eq!(Unit::Bytes.format(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }

    #[test]
    fn targets() {
        let row = Row::new("1", "x", Unit::TasksPerSecond, 40.0)
            .baseline("native", Some(100.0))
            .target(Target::RatioAtLeast { ratio: 0.35 });
        assert_eq!(row.met, Some(true));
        let row = Row::new("1", "cpu", Unit::Micros, 20.0)
            .baseline("native", Some(10.0))
            .target(Target::ExcessAtMost { value: 9.0 });
        assert_eq!(
            (row.met, row.ratio_text().as_str()),
            (Some(false), "+10.0 µs")
        );
    }

    #[test]
    fn peer_column() {
        let row = Row::new("1", "cpu", Unit::Micros, 20.0)
            .baseline("native", Some(10.0))
            .target(Target::RatioAtMost { ratio: 2.0 })
            .peer("swoole", Some(50.0))
            .peer_target(Target::RatioAtMost { ratio: 0.5 });
        assert_eq!(
            (row.met, row.peer_met, row.met_text()),
            (Some(true), Some(true), "yes")
        );
        let slower = row.clone().peer("swoole", Some(30.0));
        assert_eq!((slower.peer_met, slower.met_text()), (Some(false), "NO"));
        let text = table(&[row, Row::new("2", "other", Unit::Count, 1.0)]);
        assert!(text.lines().next().unwrap().contains("vs swoole"), "{text}");
        assert!(text.contains("0.40x"), "{text}");
        let without = table(&[Row::new("2", "other", Unit::Count, 1.0)]);
        assert!(!without.contains("swoole"), "{without}");
    }
}
