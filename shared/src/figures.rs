//! A benchmark's figures as `cargo xtask bench-report` reads them: one JSON object per line, appended by each
//! benchmark to the file `COMMONS_FIGURES` names (besides the text it prints).

use serde::{Deserialize, Serialize};

/// The environment variable that names the file a benchmark appends its figures to.
pub const FIGURES_ENV: &str = "COMMONS_FIGURES";

/// One figure: a number with its unit and goal, and points to draw where it has some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The benchmark (`loadgen`, `edge`, `soak`, …).
    pub bench: String,
    /// What was measured, in words ("heartbeats/s, 10,000 workers").
    pub name: String,
    /// Its unit ("ms", "MiB", "/s", "%").
    pub unit: String,
    /// The figure.
    pub value: f64,
    /// What it should be, where the project set a goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
    /// Points to draw: a distribution (percentile, ms), a series (minute, MiB), a curve (workers, MiB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<(f64, f64)>,
    /// What the points' x is, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
}

/// A figure's goal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// At most this.
    AtMost(f64),
    /// At least this.
    AtLeast(f64),
}

impl Goal {
    /// Whether `value` meets it.
    pub fn met(self, value: f64) -> bool {
        match self {
            Self::AtMost(g) => value <= g,
            Self::AtLeast(g) => value >= g,
        }
    }
}

impl Figure {
    /// A figure without goal or points.
    pub fn new(bench: &str, name: impl Into<String>, unit: &str, value: f64) -> Self {
        Self {
            bench: bench.into(),
            name: name.into(),
            unit: unit.into(),
            value,
            goal: None,
            points: Vec::new(),
            x: String::new(),
        }
    }

    /// With a goal.
    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    /// With points to draw, their x named `x`.
    pub fn points(mut self, x: &str, points: Vec<(f64, f64)>) -> Self {
        self.x = x.into();
        self.points = points;
        self
    }
}

/// The figures in a file of JSON lines; a line that is not a figure is an error naming it.
pub fn parse_lines(text: &str) -> Result<Vec<Figure>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip_as_json_lines() {
        let f = Figure::new("loadgen", "heartbeat p99", "ms", 4.3)
            .goal(Goal::AtMost(8.0))
            .points("percentile", vec![(50.0, 0.6), (99.0, 4.3)]);
        let line = serde_json::to_string(&f).unwrap();
        assert_eq!(
            line,
            r#"{"bench":"loadgen","name":"heartbeat p99","unit":"ms","value":4.3,"goal":{"at_most":8.0},"points":[[50.0,0.6],[99.0,4.3]],"x":"percentile"}"#
        );
        let plain = Figure::new("edge", "added p50", "ms", 0.41);
        let text = format!("{line}\n\n{}\n", serde_json::to_string(&plain).unwrap());
        assert_eq!(parse_lines(&text).unwrap(), vec![f, plain]);
        assert!(parse_lines("{}").unwrap_err().starts_with("line 1:"));
        assert!(Goal::AtMost(8.0).met(8.0) && !Goal::AtMost(8.0).met(8.1));
        assert!(Goal::AtLeast(70.0).met(70.0) && !Goal::AtLeast(70.0).met(69.9));
    }
}
