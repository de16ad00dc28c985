//! The composition root: wires state, certificates, listeners and drain together and
//! returns a handle with the bound addresses (so tests can bind port 0 and ask).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::AdminService;
use crate::config::{CaSource, Config, ProxyMode};
use crate::control::{AuthHeaders, ControlTarget};
use crate::drain::{Drain, DrainOutcome};
use crate::http_server;
use crate::identity::{CaClient, CertManager, CertificateSource, LocalCa};
use crate::inpod::manager::{PodsView, ProxyManager, SharedInputs};
use crate::inpod::{self, InpodHandle};
use crate::localconfig::{self, LocalConfigMetrics};
use crate::logging::LogControl;
use crate::metrics::{Metrics, MetricsService};
use crate::proxy::inbound::{InboundHbone, InboundPlaintext};
use crate::proxy::listener::{self, Handler};
use crate::proxy::outbound::Outbound;
use crate::proxy::socks5::Socks5;
use crate::proxy::{self, ProxyInputs};
use crate::readiness::{Readiness, ReadinessService};
use crate::socket::{SoOriginalDst, SocketFactory};
use crate::state::StateStore;
use crate::xds::XdsClient;

/// The addresses the proxy actually bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Outbound capture (15001). Shared mode: the address each pod proxy binds inside its
    /// pod's netns (nothing is bound in ztunnel's own netns).
    pub outbound: SocketAddr,
    /// Inbound plaintext capture (15006). Shared mode: as `outbound`, per pod.
    pub inbound_plaintext: SocketAddr,
    /// Inbound HBONE (15008). Shared mode: as `outbound`, per pod.
    pub inbound: SocketAddr,
    /// SOCKS5 (15080), when enabled.
    pub socks5: Option<SocketAddr>,
    /// Admin API (15000, localhost).
    pub admin: SocketAddr,
    /// Prometheus metrics (15020).
    pub metrics: SocketAddr,
    /// Readiness (15021).
    pub readiness: SocketAddr,
}

/// Optional inputs of [`build_with`].
#[derive(Default)]
pub struct BuildOptions {
    /// Run-time log level control behind `/logging` (the binary passes its reload handle;
    /// without one `/logging` answers 501).
    pub log: Option<Arc<dyn LogControl>>,
    /// The readiness tracker to report on `/healthz/ready`. A caller may register its own
    /// pending task in it first to hold the proxy not-ready.
    pub readiness: Option<Readiness>,
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
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness tracker.
    pub readiness: Readiness,
    /// Shared mode: the pod proxies started through ZDS.
    pub pods: Option<PodsView>,
    drain: Drain,
    shutdown: CancellationToken,
    drained: watch::Receiver<Option<DrainOutcome>>,
}

/// Builds and starts everything described by `cfg`.
pub async fn build(cfg: Config) -> anyhow::Result<App> {
    build_with(cfg, BuildOptions::default()).await
}

/// [`build`] with the optional inputs.
pub async fn build_with(cfg: Config, opts: BuildOptions) -> anyhow::Result<App> {
    let cfg = Arc::new(cfg);
    let state = Arc::new(StateStore::default());
    let background = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let drain = Drain::new();
    let local_config = Arc::new(LocalConfigMetrics::default());
    let metrics = Arc::new(Metrics::new(local_config.clone()));
    let readiness = opts.readiness.unwrap_or_default();
    let state_ready = readiness.register(inpod::STATE_TASK);
    let proxy_ready = readiness.register("proxy");
    let sockets = SocketFactory {
        mark: cfg.packet_mark,
    };
    let shared_mode = cfg.proxy_mode == ProxyMode::Shared;
    if shared_mode {
        inpod::netns::startup_check(cfg.packet_mark.unwrap_or(crate::config::DEFAULT_INPOD_MARK))
            .context("shared mode start-up check")?;
    }

    // Readiness answers first, so probes see "not ready" (not a refused port) during start-up.
    let (readiness_listener, _) = sockets
        .listen_any_family(cfg.readiness_addr, false)
        .context("readiness listener")?;
    let readiness_addr = readiness_listener.local_addr()?;
    tokio::spawn(http_server::serve(
        "readiness",
        readiness_listener,
        Arc::new(ReadinessService(readiness.clone())),
        drain.stop_accepting.clone(),
    ));

    // With xDS on, the xDS client is the only writer of `state`: the local file (if any) is
    // watched into a store of its own and merged in by the client (xDS resources, then the
    // file's). Without xDS the file is the state.
    let local_store = match (&cfg.xds_address, &cfg.local_xds_path) {
        (Some(_), Some(_)) => Some(Arc::new(StateStore::default())),
        _ => None,
    };
    if let Some(path) = &cfg.local_xds_path {
        let target = local_store.clone().unwrap_or_else(|| state.clone());
        let initial = localconfig::load_file(path)
            .with_context(|| format!("loading LOCAL_XDS_PATH {}", path.display()))?;
        target.publish(initial);
        info!(path = %path.display(), version = target.version(), "local config applied");
        tokio::spawn(localconfig::watch(
            path.clone(),
            target,
            cfg.local_config_poll,
            background.clone(),
            local_config.clone(),
        ));
    }
    // Started once nothing below can fail (a failed build leaves no client running); it
    // holds `state manager` until the first response of each type is applied and answered.
    let xds_client = match &cfg.xds_address {
        Some(address) => {
            let mut client = XdsClient::new(
                &cfg,
                address.clone(),
                state.clone(),
                metrics.xds.clone(),
                sockets,
            )
            .with_readiness(state_ready);
            if let Some(local) = &local_store {
                client = client.with_local(local.clone());
            }
            Some(client)
        }
        None => {
            drop(state_ready);
            None
        }
    };

    let source: Arc<dyn CertificateSource> = match &cfg.ca {
        CaSource::Local(dir) => Arc::new(
            LocalCa::load_or_create(dir, &cfg.trust_domain, cfg.secret_ttl)
                .with_context(|| format!("local CA in {}", dir.display()))?,
        ),
        CaSource::Istio(address) => {
            // Shared mode asks for each pod's identity under the proxy's own credentials.
            let impersonate = cfg.proxy_mode == ProxyMode::Shared;
            info!(%address, impersonate, "Istio CA client");
            Arc::new(CaClient::new(
                ControlTarget {
                    address: address.clone(),
                    roots: cfg.control.ca_root_ca.clone(),
                    sockets,
                },
                AuthHeaders {
                    token: cfg.control.auth_token.clone(),
                    cluster_id: cfg.cluster_id.clone(),
                },
                cfg.secret_ttl,
                impersonate,
            )?)
        }
    };
    let certs = CertManager::new(source);

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
        metrics.clone(),
    );
    let inpod_manager = shared_mode.then(|| {
        ProxyManager::new(SharedInputs {
            cfg: cfg.clone(),
            state: state.clone(),
            certs: certs.clone(),
            metrics: metrics.clone(),
            spoof_source: spoof,
            sockets,
        })
    });
    let inpod_view = inpod_manager.as_ref().map(ProxyManager::view);

    // Shared mode binds the capture listeners per pod, inside each pod's netns.
    let node_listeners = if shared_mode {
        None
    } else {
        Some(NodeListeners::bind(&cfg, &sockets)?)
    };
    let (admin, _) = sockets
        .listen(cfg.admin_addr, false)
        .context("admin listener")?;
    let (metrics_listener, _) = sockets
        .listen_any_family(cfg.metrics_addr, false)
        .context("metrics listener")?;
    let bound = Bound {
        outbound: match &node_listeners {
            Some(l) => l.outbound.local_addr()?,
            None => inpod::manager::OUTBOUND_ADDR,
        },
        inbound_plaintext: match &node_listeners {
            Some(l) => l.plaintext.local_addr()?,
            None => cfg.inbound_plaintext_addr,
        },
        inbound: match &node_listeners {
            Some(l) => l.inbound.local_addr()?,
            None => cfg.inbound_addr,
        },
        socks5: node_listeners
            .as_ref()
            .and_then(|l| l.socks5.as_ref())
            .map(|l| l.local_addr())
            .transpose()?,
        admin: admin.local_addr()?,
        metrics: metrics_listener.local_addr()?,
        readiness: readiness_addr,
    };
    // Admin and metrics keep serving while connections drain; they stop with the process.
    tokio::spawn(http_server::serve(
        "admin",
        admin,
        Arc::new(AdminService {
            cfg: cfg.clone(),
            state: state.clone(),
            certs: certs.clone(),
            log: opts.log,
            shutdown: shutdown.clone(),
            pods: inpod_view.clone(),
        }),
        background.clone(),
    ));
    tokio::spawn(http_server::serve(
        "metrics",
        metrics_listener,
        Arc::new(MetricsService(metrics.clone())),
        background.clone(),
    ));

    if let Some(client) = xds_client {
        info!(
            address = cfg.xds_address.as_deref().unwrap_or_default(),
            node = client.node_id(),
            merged_with_local_config = local_store.is_some(),
            "xDS client starting"
        );
        tokio::spawn(client.run(background.clone()));
    }

    if let Some(listeners) = node_listeners {
        listeners.spawn(&inputs, &drain);
    }
    tokio::spawn(
        inputs
            .connections
            .clone()
            .watch(state.clone(), background.clone()),
    );

    // Warm the certificate of the workload we serve so the first connection does not wait
    // (once the configuration names it: with xDS that may take a moment).
    {
        let inputs = inputs.clone();
        let certs = certs.clone();
        tokio::spawn(async move {
            let Ok(w) = inputs.local_workload().await else {
                return;
            };
            let id = w.identity();
            if let Err(e) = certs.fetch_certificate(&id).await {
                warn!(identity = %id, error = %e, "certificate prefetch failed");
            }
        });
    }

    // The ZDS client connects once the state manager is ready (reference §17).
    let inpod = inpod_manager.map(|manager| {
        inpod::spawn(
            cfg.inpod.uds.clone(),
            manager,
            readiness.clone(),
            cfg.termination_deadline,
        )
    });

    let drained = spawn_lifecycle(
        shutdown.clone(),
        drain.clone(),
        background,
        cfg.termination_deadline,
        inpod,
    );
    drop(proxy_ready);

    info!(
        outbound = %bound.outbound,
        inbound = %bound.inbound,
        inbound_plaintext = %bound.inbound_plaintext,
        socks5 = ?bound.socks5,
        admin = %bound.admin,
        metrics = %bound.metrics,
        readiness = %bound.readiness,
        mode = ?cfg.proxy_mode,
        spoof_source = spoof,
        "proxy ready"
    );
    Ok(App {
        bound,
        state,
        inputs,
        local_config,
        metrics,
        readiness,
        pods: inpod_view,
        drain,
        shutdown,
        drained,
    })
}

/// The node-level capture listeners of dedicated mode.
struct NodeListeners {
    outbound: TcpListener,
    plaintext: TcpListener,
    inbound: TcpListener,
    socks5: Option<TcpListener>,
}

impl NodeListeners {
    fn bind(cfg: &Config, sockets: &SocketFactory) -> anyhow::Result<NodeListeners> {
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
        Ok(NodeListeners {
            outbound,
            plaintext,
            inbound,
            socks5,
        })
    }

    fn spawn(self, inputs: &Arc<ProxyInputs>, drain: &Drain) {
        let spawn = |name: &'static str, l, h: Arc<dyn Handler>| {
            tokio::spawn(listener::run(name, l, h, drain.clone()));
        };
        spawn(
            "outbound",
            self.outbound,
            Arc::new(Outbound {
                inputs: inputs.clone(),
            }),
        );
        spawn(
            "inbound_plaintext",
            self.plaintext,
            Arc::new(InboundPlaintext {
                inputs: inputs.clone(),
            }),
        );
        spawn(
            "inbound",
            self.inbound,
            Arc::new(InboundHbone {
                inputs: inputs.clone(),
                drain: drain.clone(),
            }),
        );
        if let Some(l) = self.socks5 {
            spawn(
                "socks5",
                l,
                Arc::new(Socks5 {
                    inputs: inputs.clone(),
                }),
            );
        }
    }
}

/// Waits for the shutdown request (signal via `App::shutdown`, or `/quitquitquit`), then
/// drains (reference §17): stop accepting, GOAWAY, wait up to `deadline`, force-close.
fn spawn_lifecycle(
    shutdown: CancellationToken,
    drain: Drain,
    background: CancellationToken,
    deadline: Duration,
    inpod: Option<InpodHandle>,
) -> watch::Receiver<Option<DrainOutcome>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        info!(?deadline, "draining");
        let pods = async {
            match inpod {
                Some(handle) => handle.shutdown().await,
                None => DrainOutcome::Completed,
            }
        };
        let (node, pods) = tokio::join!(drain.drain(deadline), pods);
        let outcome = if node == DrainOutcome::Forced || pods == DrainOutcome::Forced {
            DrainOutcome::Forced
        } else {
            DrainOutcome::Completed
        };
        background.cancel();
        info!(?outcome, "drained");
        let _ = tx.send(Some(outcome));
    });
    rx
}

impl App {
    /// Graceful shutdown: stop accepting, GOAWAY, wait up to the deadline, force-close.
    pub async fn shutdown(mut self) -> DrainOutcome {
        self.shutdown.cancel();
        match self.drained.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or(DrainOutcome::Forced),
            // The lifecycle task is gone (runtime shutting down): nothing left to wait for.
            Err(_) => DrainOutcome::Forced,
        }
    }

    /// Completes when shutdown was requested (by [`App::shutdown`], `/quitquitquit` or a
    /// [`shutdown_trigger`](Self::shutdown_trigger) clone).
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }

    /// A token that starts the graceful shutdown when cancelled.
    pub fn shutdown_trigger(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Completes when a requested drain has finished, with its outcome.
    pub async fn drained(&self) -> Option<DrainOutcome> {
        let mut rx = self.drained.clone();
        rx.wait_for(Option::is_some).await.ok().and_then(|d| *d)
    }

    /// A clone of the drain handle (for tests that watch it).
    pub fn drain_handle(&self) -> Drain {
        self.drain.clone()
    }
}
