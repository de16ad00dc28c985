//! The composition root: registry → translation → ADS and CA servers, plus monitoring.
//! Returns a handle with the bound addresses (so tests can bind port 0 and ask).
//!
//! ```text
//! registry (files | kubernetes) ──Snapshot──▶ translate (blocking pool) ──XdsSnapshot──▶
//!     ├─ ADS (debounce, per-stream deltas)   ┐ gRPC on 15010 (plaintext) and
//!     └─ CA (identities_by_node)             ┘ 15012 (TLS, serving cert from the CA)
//! monitoring 15014: /ready (first snapshot translated), /metrics
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::http::{StatusCode, header};
use axum::routing::get;
use mesh_ca::{Ca, CaMaterial};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::transport::Server;
use tracing::{error, info, warn};

use crate::ca::auth::{AuthError, Authenticator, BoxFuture, Caller};
use crate::ca::serving::{ServingCert, ServingNames, tcp_incoming, tls_incoming};
use crate::ca::{CaMetrics, CaPolicy, CaServer, FileTokenAuthenticator};
use crate::config::{Config, RegistryKind};
use crate::model::SnapshotRx;
use crate::translate::{TranslateConfig, XdsSnapshot, translate};
use crate::xds::{AdsOptions, AdsServer, Debounce, Initial, XdsMetrics, XdsSnapshotRx};
use crate::{files, k8s};

/// How often the files registry checks its directory.
const FILES_POLL: Duration = Duration::from_millis(500);
/// How often the root-certificate ConfigMaps are re-applied (Kubernetes mode).
const ROOT_CONFIGMAP_RESYNC: Duration = Duration::from_secs(3600);
/// How long a graceful shutdown may wait for the servers.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// gRPC HTTP/2 keepalive: dead proxies are noticed within interval + timeout.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The addresses actually bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Plaintext gRPC (15010).
    pub xds_plaintext: SocketAddr,
    /// TLS gRPC (15012).
    pub xds_tls: SocketAddr,
    /// Monitoring HTTP (15014).
    pub monitoring: SocketAddr,
}

/// Optional inputs of [`build_with`], for tests and embedding.
#[derive(Default)]
pub struct BuildOptions {
    /// Use this registry feed instead of the configured registry; its current value is a
    /// real snapshot and is translated at once.
    pub snapshots: Option<SnapshotRx>,
    /// Use this authenticator instead of the configured one.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Kubernetes mode: use this client instead of the in-cluster / kubeconfig one (tests
    /// against the fake apiserver).
    pub kube_client: Option<kube::Client>,
}

/// A running control plane.
pub struct App {
    /// Bound addresses.
    pub bound: Bound,
    /// ADS metrics.
    pub xds_metrics: Arc<XdsMetrics>,
    /// CA metrics.
    pub ca_metrics: Arc<CaMetrics>,
    /// The CA (tests verify chains against its roots).
    pub ca: Arc<Ca>,
    /// Translated snapshots as served.
    pub xds_snapshots: XdsSnapshotRx,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
    fatal: Arc<Mutex<Option<String>>>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("bound", &self.bound)
            .field("ready", &*self.ready.borrow())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Whether the first snapshot has been translated.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the first snapshot has been translated (`false` if the app stopped).
    pub async fn ready(&self) -> bool {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.is_ok()
    }

    /// Resolves when the app stops on its own (a fatal error in a background task); the
    /// error is returned.
    pub async fn failed(&self) -> String {
        self.shutdown.cancelled().await;
        let fatal = match self.fatal.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        fatal.unwrap_or_else(|| "shut down".into())
    }

    /// Stops accepting, ends every stream and waits (bounded) for the servers.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_DEADLINE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("servers did not stop within {SHUTDOWN_DEADLINE:?}");
        }
    }
}

/// Records a fatal error and stops the app.
#[derive(Clone)]
struct Fatal {
    message: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
}

impl Fatal {
    fn raise(&self, message: String) {
        error!("{message}");
        if let Ok(mut slot) = self.message.lock() {
            slot.get_or_insert(message);
        }
        self.shutdown.cancel();
    }
}

/// What the registry side provides.
struct RegistryParts {
    snapshots: SnapshotRx,
    /// The feed's current value is a real snapshot (not a placeholder before the first list).
    initial_is_real: bool,
    authenticator: Arc<dyn Authenticator>,
    ca: Arc<Ca>,
}

/// Builds and starts everything described by `cfg`.
pub async fn build(cfg: Config) -> anyhow::Result<App> {
    build_with(cfg, BuildOptions::default()).await
}

/// [`build`] with the optional inputs.
pub async fn build_with(cfg: Config, opts: BuildOptions) -> anyhow::Result<App> {
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let fatal = Fatal {
        message: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let mut registry = Registry::default();
    let xds_metrics = Arc::new(XdsMetrics::default());
    xds_metrics.register(&mut registry);
    let ca_metrics = Arc::new(CaMetrics::default());
    ca_metrics.register(&mut registry);
    let translation_metrics = TranslationMetrics::default();
    translation_metrics.register(&mut registry);

    // A failed start stops whatever was already spawned.
    let stop_on_error = shutdown.clone().drop_guard();
    let parts = start_registry(&cfg, opts, &shutdown, &tasks, &fatal).await?;

    // Translation: registry snapshots → served snapshots.
    let (xds_tx, xds_rx) = watch::channel(Arc::new(XdsSnapshot::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    tasks.spawn(run_translation(
        parts.snapshots,
        parts.initial_is_real,
        cfg.translate_config(),
        xds_tx,
        ready_tx,
        translation_metrics,
        shutdown.clone(),
    ));

    let ads = AdsServer::spawn(
        xds_rx.clone(),
        AdsOptions {
            debounce: Debounce {
                quiet: cfg.debounce_after,
                max_delay: cfg.debounce_max,
            },
            initial: Initial::WaitForFirstUpdate,
        },
        xds_metrics.clone(),
        shutdown.clone(),
    );
    let ca_server = CaServer::new(
        parts.ca.clone(),
        parts.authenticator,
        Arc::new(xds_rx.clone()),
        CaPolicy {
            trusted_node_accounts: cfg.trusted_node_accounts.clone(),
            max_ttl: cfg.max_workload_cert_ttl,
        },
        ca_metrics.clone(),
    );
    let routes = Routes::new(ads.into_service()).add_service(ca_server.into_service());

    let serving = Arc::new(
        ServingCert::new(
            parts.ca.clone(),
            ServingNames {
                dns: cfg.serving_dns_names(),
                ips: cfg.serving_ip_sans.clone(),
            },
        )
        .context("serving certificate for the TLS port")?,
    );
    let acceptor = TlsAcceptor::from(Arc::new(serving.server_config()?));

    let plaintext = bind(cfg.xds_plaintext_addr, "XDS_PLAINTEXT_ADDR").await?;
    let tls = bind(cfg.xds_tls_addr, "XDS_TLS_ADDR").await?;
    let monitoring = bind(cfg.monitoring_addr, "MONITORING_ADDR").await?;
    let bound = Bound {
        xds_plaintext: plaintext.local_addr()?,
        xds_tls: tls.local_addr()?,
        monitoring: monitoring.local_addr()?,
    };

    tasks.spawn(serve(
        "gRPC plaintext",
        grpc_server(),
        routes.clone(),
        tcp_incoming(plaintext, shutdown.clone()),
        shutdown.clone(),
        fatal.clone(),
    ));
    tasks.spawn(serve(
        "gRPC TLS",
        grpc_server(),
        routes,
        tls_incoming(tls, acceptor, shutdown.clone()),
        shutdown.clone(),
        fatal.clone(),
    ));
    tasks.spawn(serve(
        "monitoring",
        Server::builder().accept_http1(true),
        Routes::from(monitoring_router(Arc::new(registry), ready_rx.clone())),
        tcp_incoming(monitoring, shutdown.clone()),
        shutdown.clone(),
        fatal.clone(),
    ));
    stop_on_error.disarm();
    info!(
        xds_plaintext = %bound.xds_plaintext,
        xds_tls = %bound.xds_tls,
        monitoring = %bound.monitoring,
        registry = ?cfg.registry,
        "istiod-compat serving"
    );
    Ok(App {
        bound,
        xds_metrics,
        ca_metrics,
        ca: parts.ca,
        xds_snapshots: xds_rx,
        ready: ready_rx,
        shutdown,
        fatal: fatal.message,
        tasks,
    })
}

fn grpc_server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(H2_KEEPALIVE))
        .http2_keepalive_timeout(Some(H2_KEEPALIVE_TIMEOUT))
}

async fn bind(addr: SocketAddr, var: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {var} {addr}"))
}

async fn serve<IO>(
    name: &'static str,
    mut server: Server,
    routes: Routes,
    incoming: tokio_stream::wrappers::ReceiverStream<Result<IO, std::io::Error>>,
    shutdown: CancellationToken,
    fatal: Fatal,
) where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    let result = server
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    match result {
        Ok(()) => info!(server = name, "stopped"),
        Err(e) => fatal.raise(format!("{name} server failed: {e}")),
    }
}

async fn start_registry(
    cfg: &Config,
    opts: BuildOptions,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    fatal: &Fatal,
) -> anyhow::Result<RegistryParts> {
    match cfg.registry {
        RegistryKind::Files => {
            // The directory first: a bad LOCAL_DIR creates no CA root.
            let (snapshots, initial_is_real) = match opts.snapshots {
                Some(snapshots) => (snapshots, true),
                None => files_registry(cfg, shutdown, tasks).await?,
            };
            let ca = load_ca_dir(&cfg.ca_dir, &cfg.trust_domain).await?;
            let authenticator = match (opts.authenticator, &cfg.tokens_file) {
                (Some(a), _) => a,
                (None, Some(path)) => {
                    Arc::new(FileTokenAuthenticator::load(path).context("loading TOKENS_FILE")?)
                }
                (None, None) => {
                    warn!("TOKENS_FILE is not set: every certificate request will be refused");
                    Arc::new(NoTokens)
                }
            };
            Ok(RegistryParts {
                snapshots,
                initial_is_real,
                authenticator,
                ca,
            })
        }
        RegistryKind::Kubernetes => {
            let client = match opts.kube_client {
                Some(client) => client,
                None => kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API")?,
            };
            let secret = k8s::load_or_create_ca_secret(
                &client,
                &cfg.pod_namespace,
                k8s::ca_secret::SELF_SIGNED_CA_SECRET,
            )
            .await
            .context("loading the CA from Kubernetes")?;
            let name = match secret.source {
                k8s::CaSource::PlugIn => k8s::ca_secret::PLUGIN_CA_SECRET,
                k8s::CaSource::SelfSigned | k8s::CaSource::SelfSignedCreated => {
                    k8s::ca_secret::SELF_SIGNED_CA_SECRET
                }
            };
            let origin = format!("secret {}/{name}", cfg.pod_namespace);
            let material = CaMaterial {
                ca_cert: secret.cert_pem.into_bytes(),
                ca_key: secret.key_pem.into_bytes(),
                root_cert: Some(secret.root_cert_pem.into_bytes()).filter(|r| !r.is_empty()),
                cert_chain: Some(secret.cert_chain_pem.into_bytes()).filter(|c| !c.is_empty()),
            };
            let ca = Arc::new(
                Ca::from_material(&material, &cfg.trust_domain, Path::new(&origin))
                    .context("the Kubernetes CA secret is unusable")?,
            );
            let (snapshots, initial_is_real) = match opts.snapshots {
                Some(snapshots) => (snapshots, true),
                None => {
                    let (tx, rx) = watch::channel(Arc::default());
                    let fatal = fatal.clone();
                    let (client, shutdown) = (client.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        if let Err(e) = k8s::run(client, tx, shutdown).await {
                            fatal.raise(format!("kubernetes registry failed: {e}"));
                        }
                    });
                    (rx, false)
                }
            };
            tasks.spawn(k8s::run_root_configmaps(
                client.clone(),
                snapshots.clone(),
                ca.root_bundle_pem(),
                BTreeSet::from([cfg.pod_namespace.clone()]),
                ROOT_CONFIGMAP_RESYNC,
                shutdown.clone(),
            ));
            let authenticator = opts.authenticator.unwrap_or_else(|| {
                Arc::new(k8s::TokenReviewAuthenticator::new(
                    client,
                    snapshots.clone(),
                ))
            });
            Ok(RegistryParts {
                snapshots,
                initial_is_real,
                authenticator,
                ca,
            })
        }
    }
}

/// The files registry: loads the directory once (a bad directory stops start-up), then
/// follows it. Returns the feed and whether its current value is real.
async fn files_registry(
    cfg: &Config,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<(SnapshotRx, bool)> {
    let Some(dir) = cfg.local_dir.clone() else {
        anyhow::bail!("LOCAL_DIR is required with REGISTRY=files");
    };
    let initial = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || files::load_dir(&dir))
            .await
            .context("loading LOCAL_DIR")?
            .context("loading LOCAL_DIR")?
    };
    let (tx, rx) = watch::channel(Arc::new(initial));
    tasks.spawn(files::run(dir, tx, FILES_POLL, shutdown.clone()));
    Ok((rx, true))
}

/// Loads (or creates) the plug-in CA directory off the runtime (file I/O and a lock).
async fn load_ca_dir(dir: &Path, trust_domain: &str) -> anyhow::Result<Arc<Ca>> {
    let (dir, td) = (dir.to_path_buf(), trust_domain.to_string());
    let ca = tokio::task::spawn_blocking(move || Ca::load_or_create(&dir, &td))
        .await
        .context("loading CA_DIR")?
        .context("loading CA_DIR")?;
    Ok(Arc::new(ca))
}

/// Refuses every token (files mode without `TOKENS_FILE`).
struct NoTokens;

impl Authenticator for NoTokens {
    fn authenticate<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async { Err(AuthError::Invalid("no TOKENS_FILE configured".into())) })
    }
}

#[derive(Clone, Default)]
struct TranslationMetrics {
    translations: Counter,
    warnings: Gauge,
}

impl TranslationMetrics {
    fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("istiod_compat_translate");
        sub.register(
            "snapshots",
            "Registry snapshots translated",
            self.translations.clone(),
        );
        sub.register(
            "warnings",
            "Warnings of the latest translation (e.g. L7-only rules dropped)",
            self.warnings.clone(),
        );
    }
}

/// Translates each registry snapshot (on the blocking pool) and publishes the result.
async fn run_translation(
    mut snapshots: SnapshotRx,
    initial_is_real: bool,
    cfg: TranslateConfig,
    out: watch::Sender<Arc<XdsSnapshot>>,
    ready: watch::Sender<bool>,
    metrics: TranslationMetrics,
    shutdown: CancellationToken,
) {
    if !initial_is_real {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
    }
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let cfg = cfg.clone();
        match tokio::task::spawn_blocking(move || translate(&snapshot, &cfg)).await {
            Ok(translated) => {
                metrics.translations.inc();
                metrics
                    .warnings
                    .set(i64::try_from(translated.warnings.len()).unwrap_or(i64::MAX));
                for warning in translated.warnings.iter().take(20) {
                    warn!(%warning, "translation");
                }
                info!(
                    addresses = translated.addresses.len(),
                    authorizations = translated.authorizations.len(),
                    nodes = translated.identities_by_node.len(),
                    "snapshot translated"
                );
                out.send_replace(Arc::new(translated));
                if !*ready.borrow() {
                    ready.send_replace(true);
                    info!("first snapshot translated: ready");
                }
            }
            // A panic in translation: keep serving the last good snapshot.
            Err(e) => error!(error = %e, "translation failed; keeping the previous snapshot"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
    }
}

/// `/ready` and `/metrics`.
fn monitoring_router(registry: Arc<Registry>, ready: watch::Receiver<bool>) -> axum::Router {
    axum::Router::new()
        .route(
            "/ready",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: waiting for the first translated snapshot\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        ),
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                            format!("encoding metrics: {e}\n"),
                        ),
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}
