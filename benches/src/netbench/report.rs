//! The figures of one run: printed as they are measured, then written as JSON and drawn.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value};

/// One measured figure. For comparisons `direct` is the same measurement over plain TCP
/// between two pods without proxies; memory figures have no direct counterpart.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable key, e.g. `throughput_1conn`.
    pub key: String,
    /// What was measured, for people.
    pub label: String,
    /// Unit of `direct`, `mesh` and `added`.
    pub unit: String,
    /// Pod to pod over plain TCP.
    pub direct: Option<f64>,
    /// Through the two proxies (HBONE), or the proxy's own figure (memory).
    pub mesh: f64,
    /// `mesh / direct`.
    pub ratio_to_direct: Option<f64>,
    /// `mesh - direct` (what the proxies add).
    pub added: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// How the run was made (binary, durations, counts, host).
    pub settings: Map<String, Value>,
    /// The headline figures, in measurement order.
    pub figures: Vec<Figure>,
    /// Raw results per phase (iperf3 runs, latency percentiles, connection-rate runs, RSS).
    pub details: Map<String, Value>,
}

impl Report {
    /// Records and prints a comparison with direct TCP.
    pub fn compare(&mut self, key: &str, label: &str, unit: &str, direct: f64, mesh: f64) {
        let ratio = (direct != 0.0).then(|| mesh / direct);
        let figure = Figure {
            key: key.to_owned(),
            label: label.to_owned(),
            unit: unit.to_owned(),
            direct: Some(direct),
            mesh,
            ratio_to_direct: ratio,
            added: Some(mesh - direct),
        };
        println!(
            "  {label:<44} direct {:>10} {unit:<7} mesh {:>10} {unit:<7} ratio {}",
            fmt(direct),
            fmt(mesh),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}")),
        );
        self.figures.push(figure);
    }

    /// Records and prints a proxy-only figure (memory).
    pub fn absolute(&mut self, key: &str, label: &str, unit: &str, value: f64) {
        println!("  {label:<44} {:>10} {unit}", fmt(value));
        self.figures.push(Figure {
            key: key.to_owned(),
            label: label.to_owned(),
            unit: unit.to_owned(),
            direct: None,
            mesh: value,
            ratio_to_direct: None,
            added: None,
        });
    }

    /// Keeps raw results under `name` in `details`.
    pub fn detail(&mut self, name: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or_else(|e| Value::String(e.to_string()));
        self.details.insert(name.to_owned(), value);
    }

    /// The figure with `key`, if measured.
    pub fn figure(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// Writes the report as pretty JSON to `path` (creating its directory).
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).context("serializing the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// Three significant figures, at least one decimal below 100.
pub fn fmt(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
