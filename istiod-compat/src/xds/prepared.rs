//! What connections serve: a translated [`XdsSnapshot`] with every resource encoded once
//! (not once per connection) and the on-demand address index, published after a debounce.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use xds_proto::workload::Address;
use xds_proto::workload::address::Type as AddressType;
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::XdsMetrics;
use crate::translate::{Versioned, XdsSnapshot};

/// One encoded resource.
#[derive(Debug, PartialEq)]
pub(crate) struct PreparedResource {
    /// Content version from translation.
    pub(crate) version: String,
    /// The resource as sent (`Any` with the type URL).
    pub(crate) any: prost_types::Any,
}

/// The resources of one type, by name.
pub(crate) type PreparedType = BTreeMap<String, Arc<PreparedResource>>;

/// A snapshot ready to serve.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// Increases with every publish; sent as `system_version_info`.
    pub(crate) generation: u64,
    /// `istio.workload.Address` resources.
    pub(crate) addresses: PreparedType,
    /// `istio.security.Authorization` resources.
    pub(crate) authorizations: PreparedType,
    /// On-demand keys `network/IP` → the name of the Address resource holding that IP
    /// (a workload wins over a service).
    pub(crate) address_index: HashMap<String, String>,
}

impl Prepared {
    /// The resources of a (known) type URL.
    pub(crate) fn resources(&self, type_url: &str) -> Option<&PreparedType> {
        match type_url {
            ADDRESS_TYPE_URL => Some(&self.addresses),
            AUTHORIZATION_TYPE_URL => Some(&self.authorizations),
            _ => None,
        }
    }

    /// Resolves a subscribed name: the resource itself, or (Address only) the resource
    /// holding the `network/IP` key.
    pub(crate) fn resolve<'a>(&'a self, type_url: &str, name: &'a str) -> Option<&'a str> {
        let resources = self.resources(type_url)?;
        if resources.contains_key(name) {
            return Some(name);
        }
        if type_url != ADDRESS_TYPE_URL {
            return None;
        }
        let key = address_key_of(name)?;
        self.address_index.get(&key).map(String::as_str)
    }
}

/// The canonical `network/IP` form of an on-demand key, if `name` is one.
fn address_key_of(name: &str) -> Option<String> {
    let (network, ip) = name.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    Some(format!("{network}/{ip}"))
}

/// Encodes `snapshot`, reusing the encodings of `previous` for unchanged versions.
pub(crate) fn prepare(
    snapshot: &XdsSnapshot,
    previous: Option<&Prepared>,
    generation: u64,
) -> Prepared {
    let addresses = encode_all(
        &snapshot.addresses,
        previous.map(|p| &p.addresses),
        ADDRESS_TYPE_URL,
    );
    let authorizations = encode_all(
        &snapshot.authorizations,
        previous.map(|p| &p.authorizations),
        AUTHORIZATION_TYPE_URL,
    );
    Prepared {
        generation,
        addresses,
        authorizations,
        address_index: address_index(&snapshot.addresses),
    }
}

fn encode_all<T: Message>(
    resources: &BTreeMap<String, Versioned<T>>,
    previous: Option<&PreparedType>,
    type_url: &str,
) -> PreparedType {
    resources
        .iter()
        .map(|(name, versioned)| {
            let reused = previous
                .and_then(|p| p.get(name))
                .filter(|p| p.version == versioned.version)
                .cloned();
            let prepared = reused.unwrap_or_else(|| {
                Arc::new(PreparedResource {
                    version: versioned.version.clone(),
                    any: prost_types::Any {
                        type_url: type_url.to_string(),
                        value: versioned.resource.encode_to_vec(),
                    },
                })
            });
            (name.clone(), prepared)
        })
        .collect()
}

/// `network/IP` → resource name, workloads first.
fn address_index(addresses: &BTreeMap<String, Versioned<Address>>) -> HashMap<String, String> {
    let mut index = HashMap::new();
    // Services first, then workloads overwrite: a workload IP wins over a service VIP.
    for (name, versioned) in addresses {
        if let Some(AddressType::Service(svc)) = &versioned.resource.r#type {
            for addr in &svc.addresses {
                if let Some(ip) = ip_from_bytes(&addr.address) {
                    index.insert(format!("{}/{ip}", addr.network), name.clone());
                }
            }
        }
    }
    for (name, versioned) in addresses {
        if let Some(AddressType::Workload(w)) = &versioned.resource.r#type {
            for bytes in &w.addresses {
                if let Some(ip) = ip_from_bytes(bytes) {
                    index.insert(format!("{}/{ip}", w.network), name.clone());
                }
            }
        }
    }
    index
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// How snapshot bursts are coalesced before connections see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time after the last update before publishing (100 ms by default).
    pub quiet: Duration,
    /// Upper bound on the delay after the first update of a burst (1 s by default), so a
    /// steady stream of updates cannot starve the proxies.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Whether the input's current value is servable before its first update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Initial {
    /// Serve the current value at once (it is a real snapshot).
    Ready,
    /// The current value is a placeholder: hold every response until the first update.
    #[default]
    WaitForFirstUpdate,
}

/// Follows `input`, debounces, prepares and publishes on `out` until `shutdown` or until the
/// input's sender is gone.
pub(crate) async fn run_publisher(
    mut input: watch::Receiver<Arc<XdsSnapshot>>,
    out: watch::Sender<Option<Arc<Prepared>>>,
    initial: Initial,
    debounce: Debounce,
    metrics: Arc<XdsMetrics>,
    shutdown: CancellationToken,
) {
    let mut generation = 0u64;
    let mut previous: Option<Arc<Prepared>> = None;
    let mut publish_now = initial == Initial::Ready;
    loop {
        if !publish_now {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = input.changed() => if changed.is_err() { return },
            }
            if !settle(&mut input, debounce, &shutdown).await {
                return;
            }
        }
        publish_now = false;
        let snapshot = input.borrow_and_update().clone();
        generation += 1;
        let prev = previous.clone();
        let prepared = match tokio::task::spawn_blocking(move || {
            Arc::new(prepare(&snapshot, prev.as_deref(), generation))
        })
        .await
        {
            Ok(prepared) => prepared,
            Err(e) => {
                warn!(error = %e, "preparing the xDS snapshot failed; keeping the previous one");
                continue;
            }
        };
        debug!(
            generation,
            addresses = prepared.addresses.len(),
            authorizations = prepared.authorizations.len(),
            "xDS snapshot published"
        );
        metrics.snapshots.inc();
        previous = Some(prepared.clone());
        out.send_replace(Some(prepared));
    }
}

/// Waits until `input` has been quiet for `debounce.quiet` (or `max_delay` passed since the
/// first update). `false` on shutdown.
async fn settle(
    input: &mut watch::Receiver<Arc<XdsSnapshot>>,
    debounce: Debounce,
    shutdown: &CancellationToken,
) -> bool {
    let give_up = Instant::now() + debounce.max_delay;
    loop {
        let deadline = (Instant::now() + debounce.quiet).min(give_up);
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep_until(deadline) => return true,
            changed = input.changed() => {
                // A closed input still has a last value worth serving.
                if changed.is_err() {
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use xds_proto::workload::{NetworkAddress, Service, Workload};

    use super::*;

    fn versioned(address: Address, version: &str) -> Versioned<Address> {
        Versioned {
            version: version.into(),
            resource: address,
        }
    }

    fn snapshot() -> XdsSnapshot {
        let mut s = XdsSnapshot::default();
        let w = Address {
            r#type: Some(AddressType::Workload(Workload {
                uid: "c//v1/Pod/ns/a".into(),
                addresses: vec![vec![10, 0, 0, 5], vec![0xfd; 16]],
                ..Default::default()
            })),
        };
        let svc = Address {
            r#type: Some(AddressType::Service(Service {
                hostname: "a.ns.svc.cluster.local".into(),
                addresses: vec![
                    NetworkAddress {
                        network: String::new(),
                        address: vec![10, 96, 0, 1],
                        ..Default::default()
                    },
                    // A VIP that collides with a workload IP: the workload wins.
                    NetworkAddress {
                        network: String::new(),
                        address: vec![10, 0, 0, 5],
                        ..Default::default()
                    },
                    NetworkAddress {
                        network: "n2".into(),
                        address: vec![1, 2, 3],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })),
        };
        s.addresses
            .insert("c//v1/Pod/ns/a".into(), versioned(w, "w1"));
        s.addresses
            .insert("ns/a.ns.svc.cluster.local".into(), versioned(svc, "s1"));
        s
    }

    #[test]
    fn resolves_names_and_address_keys() {
        let p = prepare(&snapshot(), None, 1);
        let a = ADDRESS_TYPE_URL;
        assert_eq!(p.resolve(a, "c//v1/Pod/ns/a"), Some("c//v1/Pod/ns/a"));
        assert_eq!(p.resolve(a, "/10.0.0.5"), Some("c//v1/Pod/ns/a"));
        assert_eq!(
            p.resolve(a, "/fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd"),
            Some("c//v1/Pod/ns/a")
        );
        // Non-canonical IPv6 spelling resolves too.
        assert_eq!(
            p.resolve(a, "/FDFD:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd"),
            Some("c//v1/Pod/ns/a")
        );
        assert_eq!(
            p.resolve(a, "/10.96.0.1"),
            Some("ns/a.ns.svc.cluster.local")
        );
        assert_eq!(p.resolve(a, "other/10.96.0.1"), None, "network matters");
        assert_eq!(p.resolve(a, "/10.0.0.6"), None);
        assert_eq!(p.resolve(AUTHORIZATION_TYPE_URL, "/10.0.0.5"), None);
        assert_eq!(p.resolve("bogus", "/10.0.0.5"), None);
    }

    #[test]
    fn reuses_encodings_of_unchanged_versions() {
        let first = prepare(&snapshot(), None, 1);
        let second = prepare(&snapshot(), Some(&first), 2);
        assert!(Arc::ptr_eq(
            &first.addresses["c//v1/Pod/ns/a"],
            &second.addresses["c//v1/Pod/ns/a"]
        ));
        let any = &second.addresses["c//v1/Pod/ns/a"].any;
        assert_eq!(any.type_url, ADDRESS_TYPE_URL);
        assert!(Address::decode(any.value.as_slice()).is_ok());
    }
}
