//! Log set-up with a run-time adjustable filter (`/logging` on the admin port).
//!
//! Levels use Envoy's admin syntax, as Istio does: `level=<lvl>` sets the default level,
//! `level=<target>:<lvl>,<target2>:<lvl>` adds per-target levels to the current filter.

use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Why a level change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Not Envoy-style `lvl` or `target:lvl[,target:lvl]`.
    #[error("invalid level spec {spec:?}: {reason}")]
    InvalidSpec {
        /// What was asked.
        spec: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The subscriber is gone.
    #[error("reloading the log filter: {0}")]
    Reload(#[from] reload::Error),
}

/// What the admin server needs to read and change log levels.
pub trait LogControl: Send + Sync {
    /// The current filter, in `RUST_LOG` syntax.
    fn current(&self) -> String;
    /// Applies an Envoy-style spec; returns the new filter.
    fn set(&self, spec: &str) -> Result<String, LogError>;
    /// Back to the filter the process started with; returns it.
    fn reset(&self) -> Result<String, LogError>;
}

/// A [`LogControl`] over a `tracing_subscriber` reload handle.
pub struct ReloadableFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    initial: String,
    current: Mutex<String>,
}

/// The filter layer to put first on a [`Registry`], and its control. `initial` is in
/// `RUST_LOG` syntax; an invalid one falls back to `info`.
pub fn reloadable(initial: &str) -> (reload::Layer<EnvFilter, Registry>, Arc<ReloadableFilter>) {
    let (initial, filter) = match EnvFilter::try_new(initial) {
        Ok(f) => (initial.to_string(), f),
        Err(_) => ("info".to_string(), EnvFilter::new("info")),
    };
    let (layer, handle) = reload::Layer::new(filter);
    let control = ReloadableFilter {
        handle,
        current: Mutex::new(initial.clone()),
        initial,
    };
    (layer, Arc::new(control))
}

/// Installs the global subscriber (stdout, text or JSON lines) with a reloadable filter.
pub fn init(format: LogFormat, rust_log: Option<&str>) -> Arc<ReloadableFilter> {
    let (filter, control) = reloadable(rust_log.unwrap_or("info"));
    let (json, text) = match format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stdout),
            ),
            None,
        ),
        LogFormat::Text => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stdout),
            ),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .try_init();
    control
}

impl ReloadableFilter {
    fn apply(&self, directives: String) -> Result<String, LogError> {
        let filter = EnvFilter::try_new(&directives).map_err(|e| LogError::InvalidSpec {
            spec: directives.clone(),
            reason: e.to_string(),
        })?;
        self.handle.reload(filter)?;
        if let Ok(mut current) = self.current.lock() {
            current.clone_from(&directives);
        }
        Ok(directives)
    }
}

impl LogControl for ReloadableFilter {
    fn current(&self) -> String {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| self.initial.clone())
    }

    fn set(&self, spec: &str) -> Result<String, LogError> {
        let next = merge(&self.current(), spec)?;
        self.apply(next)
    }

    fn reset(&self) -> Result<String, LogError> {
        self.apply(self.initial.clone())
    }
}

/// The filter after applying `spec` to `current`: a bare level replaces everything, a list
/// of `target:level` replaces those targets' directives and keeps the rest.
pub fn merge(current: &str, spec: &str) -> Result<String, LogError> {
    let invalid = |reason: &str| LogError::InvalidSpec {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(invalid("empty"));
    }
    if !spec.contains(':') {
        let level = spec.to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(invalid("expected error|warn|info|debug|trace|off"));
        }
        return Ok(level);
    }
    let mut directives: Vec<String> = current
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    for item in spec.split(',') {
        let (target, level) = item
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| invalid("mix of bare level and target:level"))?;
        let level = level.trim().to_ascii_lowercase();
        let target = target.trim();
        if target.is_empty() || !LEVELS.contains(&level.as_str()) {
            return Err(invalid("expected target:error|warn|info|debug|trace|off"));
        }
        let prefix = format!("{target}=");
        directives.retain(|d| !d.starts_with(&prefix));
        directives.push(format!("{target}={level}"));
    }
    Ok(directives.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_style_specs() {
        assert_eq!(merge("info,access=debug", "debug").unwrap(), "debug");
        assert_eq!(
            merge("info,access=debug", "access:warn,ztunnel::proxy:trace").unwrap(),
            "info,access=warn,ztunnel::proxy=trace"
        );
        assert!(merge("info", "loud").is_err());
        assert!(merge("info", "a:loud").is_err());
        assert!(merge("info", "").is_err());
    }

    #[test]
    fn reload_changes_the_filter() {
        let (_layer, control) = reloadable("info");
        assert_eq!(control.current(), "info");
        assert_eq!(control.set("debug").unwrap(), "debug");
        assert_eq!(control.current(), "debug");
        assert_eq!(control.reset().unwrap(), "info");
    }
}
