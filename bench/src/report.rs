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
}

impl Target {
    fn describe(self, unit: Unit) -> String {
        match self {
            Target::RatioAtLeast { ratio } => format!("≥ {:.0}% of baseline", ratio * 100.0),
            Target::RatioAtMost { ratio } => format!("≤ {ratio}x baseline"),
            Target::AtMost { value } => format!("≤ {}", unit.format(value)),
            Target::ExcessAtMost { value } => format!("≤ baseline + {}", unit.format(value)),
        }
    }

    fn met(self, value: f64, baseline: Option<f64>) -> Option<bool> {
        let ratio = baseline.filter(|b| *b > 0.0).map(|b| value / b);
        match self {
            Target::RatioAtLeast { ratio: goal } => ratio.map(|r| r >= goal),
            Target::RatioAtMost { ratio: goal } => ratio.map(|r| r <= goal),
            Target::AtMost { value: goal } => Some(value <= goal),
            Target::ExcessAtMost { value: goal } => baseline.map(|b| value - b <= goal),
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

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    fn refresh(&mut self) {
        self.met = match (self.target, self.value) {
            (Some(target), Some(value)) => target.met(value, self.baseline),
            _ => None,
        };
    }

    fn ratio_text(&self) -> String {
        match (self.target, self.value, self.baseline, self.ratio) {
            (Some(Target::ExcessAtMost { .. }), Some(value), Some(baseline), _) => {
                let excess = value - baseline;
                let sign = if excess >= 0.0 { "+" } else { "-" };
                format!("{sign}{}", self.unit.format(excess.abs()))
            }
            (_, _, _, Some(ratio)) if ratio < 0.1 => format!("{ratio:.3}x"),
            (_, _, _, Some(ratio)) => format!("{ratio:.2}x"),
            _ => "—".to_owned(),
        }
    }

    pub fn met_text(&self) -> &'static str {
        match self.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "—",
        }
    }
}

/// The rows as an aligned text table, then the rows' notes.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario", "metric", "taskhost", "baseline", "ratio", "target", "met",
    ];
    let cells: Vec<[String; 7]> = rows
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
            [
                row.scenario.clone(),
                row.metric.clone(),
                value,
                baseline,
                row.ratio_text(),
                row.target_text.clone().unwrap_or_else(|| "—".to_owned()),
                row.met_text().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&header.map(str::to_owned));
    line(&widths.map(|w| "-".repeat(w)));
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
}
