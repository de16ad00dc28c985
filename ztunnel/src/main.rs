//! `ztunnel [proxy|version|help]`: parse argv, set up logging and the runtime, run the app.

use std::process::ExitCode;

use tracing::{error, info};
use ztunnel::app::BuildOptions;
use ztunnel::config::{Config, EnvSource, env};
use ztunnel::logging;

const USAGE: &str = "usage: ztunnel [proxy|version|help]\n\
Runs the node proxy (default: proxy). Configuration comes from environment variables; \
see README.md.";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("proxy") => {}
        Some("version") => {
            println!("ztunnel {}", env!("CARGO_PKG_VERSION"));
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
            eprintln!("ztunnel: {e}");
            return ExitCode::from(1);
        }
    };
    let rust_log = std::env::var(env::RUST_LOG).ok();
    let log_control = logging::init(cfg.log_format, rust_log.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ztunnel")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ztunnel: starting runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        if let Ok(json) = serde_json::to_string(&cfg) {
            info!(config = %json, "starting");
        }
        let opts = BuildOptions {
            log: Some(log_control),
            ..BuildOptions::default()
        };
        let app = match ztunnel::app::build_with(cfg, opts).await {
            Ok(app) => app,
            Err(e) => {
                error!("start-up failed: {e:#}");
                return ExitCode::from(1);
            }
        };
        tokio::select! {
            () = wait_for_signal() => info!("signal received"),
            () = app.shutdown_requested() => {}
        }
        info!("shutdown requested; a second signal exits at once");
        tokio::select! {
            _ = app.shutdown() => ExitCode::SUCCESS,
            _ = wait_for_signal() => {
                info!("second signal: exiting now");
                ExitCode::SUCCESS
            }
        }
    })
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
