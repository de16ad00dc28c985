//! The composition root: wires state, certificates, listeners and drain together and
//! returns a handle with the bound addresses (so tests can bind port 0 and ask).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{CaSource, Config};
use crate::drain::{Drain, DrainOutcome};
use crate::identity::{CertManager, CertificateSource, LocalCa};
use crate::localconfig::{self, LocalConfigMetrics};
use crate::proxy::inbound::{InboundHbone, InboundPlaintext};
use crate::proxy::listener::{self, Handler};
use crate::proxy::outbound::Outbound;
use crate::proxy::socks5::Socks5;
use crate::proxy::{self, ProxyInputs};
use crate::socket::{SoOriginalDst, SocketFactory};
use crate::state::StateStore;

/// The addresses the proxy actually bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Outbound capture (15001).
    pub outbound: SocketAddr,
    /// Inbound plaintext capture (15006).
    pub inbound_plaintext: SocketAddr,
    /// Inbound HBONE (15008).
    pub inbound: SocketAddr,
    /// SOCKS5 (15080), when enabled.
    pub socks5: Option<SocketAddr>,
}

/// A running proxy.
pub struct App {
    /// Bound addresses.
    pub bound: Bound,
    /// Shared state (tests inspect it).
    pub state: Arc<StateStore>,
    /// The data-path inputs (tests inspect the connection manager, pool, certs).
    pub inputs: Arc<ProxyInputs>,
    /// Local config reload counters.
    pub local_config: Arc<LocalConfigMetrics>,
    drain: Drain,
    background: CancellationToken,
    deadline: Duration,
}

/// Builds and starts everything described by `cfg`.
pub async fn build(cfg: Config) -> anyhow::Result<App> {
    let cfg = Arc::new(cfg);
    let state = Arc::new(StateStore::default());
    let background = CancellationToken::new();
    let local_config = Arc::new(LocalConfigMetrics::default());

    if let Some(path) = &cfg.local_xds_path {
        let initial = localconfig::load_file(path)
            .with_context(|| format!("loading LOCAL_XDS_PATH {}", path.display()))?;
        state.publish(initial);
        info!(path = %path.display(), version = state.version(), "local config applied");
        tokio::spawn(localconfig::watch(
            path.clone(),
            state.clone(),
            cfg.local_config_poll,
            background.clone(),
            local_config.clone(),
        ));
    }

    let source: Arc<dyn CertificateSource> = match &cfg.ca {
        CaSource::Local(dir) => Arc::new(
            LocalCa::load_or_create(dir, &cfg.trust_domain, cfg.secret_ttl)
                .with_context(|| format!("local CA in {}", dir.display()))?,
        ),
        CaSource::Istio(addr) => anyhow::bail!("Istio CA client not available yet ({addr})"),
    };
    let certs = CertManager::new(source);

    let sockets = SocketFactory {
        mark: cfg.packet_mark,
    };
    let spoof = proxy::decide_spoofing(&cfg, &sockets).map_err(anyhow::Error::msg)?;
    if !spoof {
        warn!("source IP preservation is off: applications will see the proxy's address");
    }
    let inputs = ProxyInputs::new(
        cfg.clone(),
        state.clone(),
        certs.clone(),
        sockets,
        Arc::new(SoOriginalDst),
        spoof,
    );
    let drain = Drain::new();

    let (outbound, _) = sockets
        .listen_any_family(cfg.outbound_addr, true)
        .context("outbound listener")?;
    let (plaintext, _) = sockets
        .listen_any_family(cfg.inbound_plaintext_addr, true)
        .context("inbound plaintext listener")?;
    let (inbound, _) = sockets
        .listen_any_family(cfg.inbound_addr, true)
        .context("inbound HBONE listener")?;
    let socks5 = if cfg.enable_socks5 {
        Some(
            sockets
                .listen(cfg.socks5_addr, false)
                .context("SOCKS5 listener")?
                .0,
        )
    } else {
        None
    };
    let bound = Bound {
        outbound: outbound.local_addr()?,
        inbound_plaintext: plaintext.local_addr()?,
        inbound: inbound.local_addr()?,
        socks5: socks5.as_ref().map(|l| l.local_addr()).transpose()?,
    };

    let spawn = |name: &'static str, l, h: Arc<dyn Handler>| {
        tokio::spawn(listener::run(name, l, h, drain.clone()));
    };
    spawn(
        "outbound",
        outbound,
        Arc::new(Outbound {
            inputs: inputs.clone(),
        }),
    );
    spawn(
        "inbound_plaintext",
        plaintext,
        Arc::new(InboundPlaintext {
            inputs: inputs.clone(),
        }),
    );
    spawn(
        "inbound",
        inbound,
        Arc::new(InboundHbone {
            inputs: inputs.clone(),
            drain: drain.clone(),
        }),
    );
    if let Some(l) = socks5 {
        spawn(
            "socks5",
            l,
            Arc::new(Socks5 {
                inputs: inputs.clone(),
            }),
        );
    }
    tokio::spawn(
        inputs
            .connections
            .clone()
            .watch(state.clone(), background.clone()),
    );

    // Warm the certificate of the workload we serve so the first connection does not wait.
    if let Ok(w) = tokio::time::timeout(Duration::from_millis(1), inputs.local_workload())
        .await
        .unwrap_or(Err(crate::proxy::error::ProxyError::UnknownLocalWorkload(
            String::new(),
        )))
    {
        let certs = certs.clone();
        let id = w.identity();
        tokio::spawn(async move {
            if let Err(e) = certs.fetch_certificate(&id).await {
                warn!(identity = %id, error = %e, "certificate prefetch failed");
            }
        });
    }

    info!(
        outbound = %bound.outbound,
        inbound = %bound.inbound,
        inbound_plaintext = %bound.inbound_plaintext,
        socks5 = ?bound.socks5,
        spoof_source = spoof,
        "proxy ready"
    );
    Ok(App {
        bound,
        state,
        inputs,
        local_config,
        drain,
        background,
        deadline: cfg.termination_deadline,
    })
}

impl App {
    /// Graceful shutdown: stop accepting, GOAWAY, wait up to the deadline, force-close.
    pub async fn shutdown(self) -> DrainOutcome {
        info!(deadline = ?self.deadline, "draining");
        let outcome = self.drain.drain(self.deadline).await;
        self.background.cancel();
        info!(?outcome, "drained");
        outcome
    }

    /// A clone of the drain handle (for tests that watch it).
    pub fn drain_handle(&self) -> Drain {
        self.drain.clone()
    }
}
