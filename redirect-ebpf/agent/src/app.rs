//! The composition root: state dir → redirection → enrollment source → first reconcile →
//! CNI and ZDS servers → ready. Returns a handle with what tests need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Registry};
use crate::metrics::Metrics;
use crate::readiness::Ready;
use crate::reconcile::{Event, EventTx, Reconciler};
use crate::redirect::Redirection;
use crate::source::{self, Enrolled};
use crate::state::StateStore;
use crate::zds::{self, ZdsHub, ZdsStats};
use crate::{cni_server, netns, readiness};

/// Knobs that are not environment variables (tests shorten them).
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the files registry directory is re-read.
    pub files_poll: Duration,
    /// Delay before retrying a failed enrollment or a nacked ZDS Add.
    pub retry_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            files_poll: Duration::from_secs(1),
            retry_interval: Duration::from_secs(5),
        }
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// The bound readiness address.
    pub readiness_addr: SocketAddr,
    /// ZDS counters.
    pub zds_stats: Arc<ZdsStats>,
    /// The ZDS hub (connections, pods).
    pub hub: ZdsHub,
    /// The metrics served on `/metrics` of the readiness address.
    pub metrics: Arc<Metrics>,
    ready: Ready,
    events: EventTx,
    shutdown: CancellationToken,
    reconciler: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// Stops every task and the reconcile thread (enrollments stay: a restarted agent
    /// picks them up).
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(t) = self.reconciler.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    fn stop(&self) {
        self.shutdown.cancel();
        let _ = self.events.send(Event::Shutdown);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the agent with a ready-made redirection backend.
pub async fn build(
    cfg: Config,
    mut redirection: Box<dyn Redirection>,
    opts: Options,
) -> anyhow::Result<Agent> {
    let shutdown = CancellationToken::new();
    let store = StateStore::open(&cfg.state_dir).context("opening the state dir")?;

    let node_addrs = netns::addresses(None).context("reading the node's addresses")?;
    tracing::info!(
        ?node_addrs,
        "node addresses (kubelet probes from them are not captured)"
    );
    redirection
        .set_node_addresses(&node_addrs)
        .context("setting the node addresses")?;

    let enrolled_rx = match &cfg.registry {
        Registry::Files { dir } => source::files(
            dir.clone(),
            cfg.node_name.clone(),
            opts.files_poll,
            shutdown.clone(),
        )?,
        Registry::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .map_err(source::SourceError::Client)?;
            source::kubernetes(client, cfg.node_name.clone(), shutdown.clone()).await?
        }
    };
    let initial: Arc<Enrolled> = enrolled_rx.borrow().clone();
    tracing::info!(enrolled = initial.pods.len(), "enrollment source synced");

    let ready = Ready::default();
    let readiness = readiness::bind(cfg.readiness_addr)
        .await
        .with_context(|| format!("binding readiness on {}", cfg.readiness_addr))?;
    let readiness_addr = readiness.local_addr()?;

    let (events, events_rx) = std::sync::mpsc::channel::<Event>();
    let sink_tx = events.clone();
    let hub = ZdsHub::new(Arc::new(move |ev| {
        let _ = sink_tx.send(Event::Zds(ev));
    }));
    let metrics = Arc::new(Metrics::with_zds(hub.stats()));
    tokio::spawn(readiness::serve_with_metrics(
        readiness,
        ready.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    // First reconcile before ztunnel can connect, so its first snapshot is complete.
    let retry = opts.retry_interval;
    let reconciler = {
        let hub = hub.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || {
            Reconciler::with_metrics(store, initial, redirection, hub, retry, metrics)
        })
        .await
        .context("start-up reconcile task")??
    };
    tracing::info!(active = ?reconciler.active_uids(), "start-up reconcile done");
    let thread = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || reconciler.run(events_rx))
        .context("starting the reconcile thread")?;

    let cni = cni_server::bind(&cfg.cni_event_socket).with_context(|| {
        format!(
            "binding the CNI event socket {}",
            cfg.cni_event_socket.display()
        )
    })?;
    tokio::spawn(cni_server::serve_counted(
        cni,
        events.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let zds_listener = zds::bind(&cfg.zds_socket)
        .with_context(|| format!("binding the ZDS socket {}", cfg.zds_socket.display()))?;
    tokio::spawn(hub.clone().serve(zds_listener, shutdown.clone()));

    let mut rx = enrolled_rx;
    let fwd = events.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                c = rx.changed() => if c.is_err() { return },
            }
            let next = rx.borrow_and_update().clone();
            tracing::info!(enrolled = next.pods.len(), "enrollment changed");
            if fwd.send(Event::Enrolled(next)).is_err() {
                return;
            }
        }
    });

    ready.set();
    tracing::info!(
        zds = %cfg.zds_socket.display(),
        cni = %cfg.cni_event_socket.display(),
        %readiness_addr,
        "agent ready"
    );
    Ok(Agent {
        readiness_addr,
        zds_stats: hub.stats(),
        hub,
        metrics,
        ready,
        events,
        shutdown,
        reconciler: Some(thread),
    })
}
