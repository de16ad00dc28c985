//! Log set-up like the other binaries: `RUST_LOG` filter (default `info`), text or JSON
//! lines on stdout (`LOG_FORMAT`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber (a second call is a no-op).
pub fn init(format: LogFormat, rust_log: Option<&str>) {
    let filter =
        EnvFilter::try_new(rust_log.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
