//! `redirect-agent [run] | uninstall | version`.

use std::process::ExitCode;

use redirect_agent::app::{self, Options};
use redirect_agent::config::{Config, RedirectMode};
use redirect_agent::logging;
use redirect_agent::redirect::{NftRedirection, Redirection};

fn main() -> ExitCode {
    let sub = std::env::args().nth(1).unwrap_or_else(|| "run".into());
    match sub.as_str() {
        "version" => {
            println!("redirect-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "run" | "uninstall" => match run(&sub) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("redirect-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        other => {
            eprintln!("redirect-agent: unknown subcommand {other:?} (run, uninstall, version)");
            ExitCode::FAILURE
        }
    }
}

fn run(sub: &str) -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    logging::init(cfg.log_format, cfg.rust_log.as_deref());
    if sub == "uninstall" {
        return redirect_agent::redirect::uninstall(&cfg);
    }
    tracing::info!(config = %serde_json::to_string(&cfg)?, "starting");
    let redirection: Box<dyn Redirection> = match cfg.redirect_mode {
        RedirectMode::Nftables => Box::new(NftRedirection::new()),
        RedirectMode::Ebpf => redirect_agent::redirect::load_ebpf(&cfg)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let agent = app::build(cfg, redirection, Options::default()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down (enrollments stay in place)");
        agent.shutdown().await;
        Ok(())
    })
}
