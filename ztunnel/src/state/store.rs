use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::{NamespacedHostname, NetworkAddress};
use serde::Serialize;
use tokio::sync::watch;

use super::{Authorization, Service, Workload};

/// An immutable snapshot of everything the proxy knows, with its lookup indexes.
///
/// Built in one piece by [`ProxyState::build`]; never mutated after it is published.
#[derive(Debug, Default, Serialize)]
pub struct ProxyState {
    /// Workloads by uid.
    pub workloads: HashMap<String, Arc<Workload>>,
    /// Workloads by `network/IP` (HostNetwork workloads are not indexed).
    #[serde(skip)]
    pub workloads_by_addr: HashMap<NetworkAddress, Arc<Workload>>,
    /// Services by `namespace/hostname`, with endpoints merged in from the workloads.
    pub services: HashMap<NamespacedHostname, Arc<Service>>,
    /// Services by `network/VIP`; several services may share a VIP.
    #[serde(skip)]
    pub services_by_vip: HashMap<NetworkAddress, Vec<Arc<Service>>>,
    /// Policies by `namespace/name`.
    pub policies: HashMap<String, Arc<Authorization>>,
    /// Keys of NAMESPACE-scoped policies by namespace; GLOBAL ones under "".
    #[serde(skip)]
    pub policies_by_namespace: HashMap<String, Vec<String>>,
}

/// The single place the current [`ProxyState`] lives.
///
/// Readers call [`StateStore::snapshot`] (lock-free); the one writer calls
/// [`StateStore::publish`], which also wakes everyone watching [`StateStore::subscribe`]
/// (for example the connection manager re-checking live connections against new policy).
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<ProxyState>,
    version: watch::Sender<u64>,
}

impl Default for StateStore {
    fn default() -> Self {
        StateStore {
            current: ArcSwap::from_pointee(ProxyState::default()),
            version: watch::channel(0).0,
        }
    }
}

impl StateStore {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ProxyState> {
        self.current.load_full()
    }

    /// Replaces the snapshot and notifies subscribers.
    pub fn publish(&self, state: ProxyState) {
        self.current.store(Arc::new(state));
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever a new snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// How many snapshots have been published (0 = none yet).
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }
}

/// Finds a workload by its IP on a network. Helper for callers that hold a snapshot.
pub fn addr(network: &str, ip: IpAddr) -> NetworkAddress {
    NetworkAddress {
        network: network.to_string(),
        address: ip,
    }
}
