//! `istiod-compat [serve|version|help]`: parse argv, set up logging and the runtime, run the
//! app until a signal, then shut down gracefully.

use std::process::ExitCode;

use istiod_compat::config::{Config, EnvSource, LogFormat, env};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: istiod-compat [serve|version|help]\n\
Serves delta xDS (Address, Authorization) and the Istio CA to ambient node proxies \
(default: serve). Configuration comes from environment variables; see README.md.";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("version") => {
            println!("istiod-compat {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let cfg = match Config::from_source(&EnvSource) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("istiod-compat: {e}");
            return ExitCode::from(1);
        }
    };
    init_logging(cfg.log_format, std::env::var(env::RUST_LOG).ok().as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("istiod-compat")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("istiod-compat: starting runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        if let Ok(json) = serde_json::to_string(&cfg) {
            info!(config = %json, "starting");
        }
        let app = match istiod_compat::app::build(cfg).await {
            Ok(app) => app,
            Err(e) => {
                error!("start-up failed: {e:#}");
                return ExitCode::from(1);
            }
        };
        let code = tokio::select! {
            () = wait_for_signal() => {
                info!("signal received; shutting down (a second signal exits at once)");
                ExitCode::SUCCESS
            }
            reason = app.failed() => {
                error!("stopping: {reason}");
                ExitCode::from(1)
            }
        };
        tokio::select! {
            () = app.shutdown() => info!("stopped"),
            () = wait_for_signal() => info!("second signal: exiting now"),
        }
        code
    })
}

fn init_logging(format: LogFormat, filter: Option<&str>) {
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the only way out is being killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
