//! The resources received over ADS, keyed by resource name, and what one response does to
//! them: each resource converted on its own (a bad one is rejected, the rest applied),
//! removals, the NACKed names, and the versions sent back on reconnect.

use std::collections::{BTreeSet, HashMap};

use tracing::debug;
use xds_proto::discovery::Resource;
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::convert::{AddressResource, ConvertError, address_from_bytes, authorization_from_bytes};
use crate::state::{Authorization, ProxyState, Service, Workload};

/// The type URLs this client subscribes to, in the order the initial requests are sent.
pub const SUBSCRIBED: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// At most this many rejected resources are named in one NACK message (the count of the
/// rest follows), so a broken control plane cannot make us send megabytes back.
const MAX_NACK_ENTRIES: usize = 64;

/// A stored resource with the version the server gave it.
#[derive(Debug, Clone)]
struct Versioned<T> {
    version: String,
    value: T,
}

/// One resource that could not be used: its name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The resource name.
    pub name: String,
    /// Why (names the resource and field when the conversion failed).
    pub reason: String,
}

/// What applying one response did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Whether the stored resources changed (so the state must be rebuilt).
    pub changed: bool,
    /// Resources applied (new or updated).
    pub updated: usize,
    /// Resources removed.
    pub removed: usize,
    /// Resources rejected; the response is NACKed with these.
    pub rejected: Vec<Rejected>,
}

impl Applied {
    /// `"<name>: <reason>; <name>: <reason>"`, for a NACK's `error_detail`.
    pub fn nack_message(&self) -> Option<String> {
        if self.rejected.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self
            .rejected
            .iter()
            .take(MAX_NACK_ENTRIES)
            .map(|r| format!("{}: {}", r.name, r.reason))
            .collect();
        if self.rejected.len() > MAX_NACK_ENTRIES {
            parts.push(format!(
                "and {} more rejected resources",
                self.rejected.len() - MAX_NACK_ENTRIES
            ));
        }
        Some(parts.join("; "))
    }
}

/// A response for a type this client did not subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported type URL {0:?}")]
pub struct UnknownType(pub String);

/// Everything received over ADS, across reconnects.
#[derive(Debug, Default)]
pub struct Resources {
    addresses: HashMap<String, Versioned<AddressResource>>,
    policies: HashMap<String, Versioned<Authorization>>,
    /// Names rejected at their latest version, per type URL.
    nacked: HashMap<&'static str, BTreeSet<String>>,
}

impl Resources {
    /// Applies the resources and removals of one response of `type_url`. Valid resources
    /// replace what was stored under their name; a rejected one leaves the previous version
    /// (if any) in place and is remembered as NACKed until a good version or a removal.
    pub fn apply(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<Applied, UnknownType> {
        let url = SUBSCRIBED
            .into_iter()
            .find(|u| *u == type_url)
            .ok_or_else(|| UnknownType(type_url.to_string()))?;
        let mut out = Applied::default();
        for (index, resource) in resources.into_iter().enumerate() {
            if resource.name.is_empty() {
                out.rejected.push(Rejected {
                    name: format!("<resource #{index}>"),
                    reason: "resource has no name".into(),
                });
                continue;
            }
            let name = resource.name.clone();
            let result = match url {
                ADDRESS_TYPE_URL => decode(url, &resource, address_from_bytes)
                    .map(|value| store(&mut self.addresses, &resource, value)),
                _ => decode(url, &resource, authorization_from_bytes)
                    .map(|value| store(&mut self.policies, &resource, value)),
            };
            let nacked = self.nacked.entry(url).or_default();
            match result {
                Ok(changed) => {
                    nacked.remove(&name);
                    out.changed |= changed;
                    out.updated += 1;
                }
                Err(reason) => {
                    nacked.insert(name.clone());
                    out.rejected.push(Rejected { name, reason });
                }
            }
        }
        for name in removed {
            if let Some(set) = self.nacked.get_mut(url) {
                set.remove(&name);
            }
            let found = match url {
                ADDRESS_TYPE_URL => self.addresses.remove(&name).is_some(),
                _ => self.policies.remove(&name).is_some(),
            };
            if found {
                out.changed = true;
                out.removed += 1;
            } else {
                debug!(type_url = url, %name, "removal of an unknown resource");
            }
        }
        Ok(out)
    }

    /// The versions to send in `initial_resource_versions` when (re)connecting: every
    /// stored name of `type_url` except the NACKed ones, so the server sends those again.
    pub fn initial_versions(&self, type_url: &str) -> HashMap<String, String> {
        let nacked = self.nacked.get(type_url);
        let keep = |name: &String| nacked.is_none_or(|n| !n.contains(name));
        let versions = |name: &String, version: &String| (name.clone(), version.clone());
        match type_url {
            ADDRESS_TYPE_URL => self
                .addresses
                .iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, v)| versions(n, &v.version))
                .collect(),
            AUTHORIZATION_TYPE_URL => self
                .policies
                .iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, v)| versions(n, &v.version))
                .collect(),
            _ => HashMap::new(),
        }
    }

    /// The names currently NACKed for `type_url`.
    #[cfg(test)]
    pub fn nacked(&self, type_url: &str) -> Vec<String> {
        self.nacked
            .get(type_url)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Builds a complete state from the stored resources plus `local` (the local config
    /// file's, added after the xDS ones so that on a key conflict the file wins).
    pub fn build(&self, local: Option<&ProxyState>) -> ProxyState {
        let mut workloads: Vec<Workload> = Vec::new();
        let mut services: Vec<Service> = Vec::new();
        let mut policies: Vec<Authorization> = Vec::with_capacity(self.policies.len());
        // Sorted by name so the state does not depend on hash order (duplicates resolve the
        // same way every time).
        let mut names: Vec<&String> = self.addresses.keys().collect();
        names.sort();
        for name in names {
            match self.addresses.get(name).map(|v| &v.value) {
                Some(AddressResource::Workload(w)) => workloads.push((**w).clone()),
                Some(AddressResource::Service(s)) => services.push((**s).clone()),
                None => {}
            }
        }
        let mut names: Vec<&String> = self.policies.keys().collect();
        names.sort();
        policies.extend(
            names
                .into_iter()
                .filter_map(|n| self.policies.get(n))
                .map(|v| v.value.clone()),
        );
        if let Some(local) = local {
            workloads.extend(local.workloads.values().map(|w| (**w).clone()));
            // Endpoints are recomputed from every workload by `build`.
            services.extend(local.services.values().map(|s| Service {
                endpoints: HashMap::new(),
                ..(**s).clone()
            }));
            policies.extend(local.policies.values().map(|p| (**p).clone()));
        }
        ProxyState::build(workloads, services, policies)
    }
}

/// The resource's `Any` body, checked against the response type and converted.
fn decode<T>(
    type_url: &str,
    resource: &Resource,
    convert: fn(&[u8]) -> Result<T, ConvertError>,
) -> Result<T, String> {
    let any = resource
        .resource
        .as_ref()
        .ok_or_else(|| "resource has no body".to_string())?;
    if any.type_url != type_url {
        return Err(format!(
            "body type {:?} does not match the response type {type_url:?}",
            any.type_url
        ));
    }
    convert(&any.value).map_err(|e| e.to_string())
}

/// Stores a converted resource; whether it differs from what was stored.
fn store<T: PartialEq>(
    map: &mut HashMap<String, Versioned<T>>,
    resource: &Resource,
    value: T,
) -> bool {
    let changed = map.get(&resource.name).is_none_or(|old| old.value != value);
    map.insert(
        resource.name.clone(),
        Versioned {
            version: resource.version.clone(),
            value,
        },
    );
    changed
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use xds_proto::workload as xw;

    use super::*;

    fn address(name: &str, version: &str, w: xw::Workload) -> Resource {
        let a = xw::Address {
            r#type: Some(xw::address::Type::Workload(w)),
        };
        Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(prost_types::Any {
                type_url: ADDRESS_TYPE_URL.into(),
                value: a.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    fn workload(uid: &str, ip: [u8; 4]) -> xw::Workload {
        xw::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        }
    }

    #[test]
    fn bad_resource_is_rejected_alone_and_kept_out_of_initial_versions() {
        let mut r = Resources::default();
        let good = address("a", "1", workload("a", [10, 0, 0, 1]));
        let mut bad_w = workload("b", [10, 0, 0, 2]);
        bad_w.addresses = vec![vec![1, 2, 3]];
        let bad = address("b", "1", bad_w);
        let applied = r.apply(ADDRESS_TYPE_URL, vec![good, bad], vec![]).unwrap();
        assert!(applied.changed);
        assert_eq!(applied.updated, 1);
        let msg = applied.nack_message().unwrap();
        assert!(
            msg.starts_with("b: workload b: field `addresses[0]`"),
            "{msg}"
        );
        assert_eq!(r.nacked(ADDRESS_TYPE_URL), ["b"]);
        assert_eq!(
            r.initial_versions(ADDRESS_TYPE_URL),
            HashMap::from([("a".to_string(), "1".to_string())])
        );
        // A good version clears the NACK; identical content is not a change.
        let fixed = address("b", "2", workload("b", [10, 0, 0, 2]));
        let applied = r
            .apply(ADDRESS_TYPE_URL, vec![fixed.clone()], vec![])
            .unwrap();
        assert!(applied.changed && applied.nack_message().is_none());
        assert!(r.nacked(ADDRESS_TYPE_URL).is_empty());
        let again = r.apply(ADDRESS_TYPE_URL, vec![fixed], vec![]).unwrap();
        assert!(!again.changed);
        assert_eq!(r.build(None).workloads.len(), 2);
        // Removal.
        let applied = r
            .apply(ADDRESS_TYPE_URL, vec![], vec!["a".into(), "zzz".into()])
            .unwrap();
        assert_eq!(applied.removed, 1);
        assert_eq!(r.build(None).workloads.len(), 1);
    }

    #[test]
    fn wrong_body_type_missing_body_and_unknown_type() {
        let mut r = Resources::default();
        let mut wrong = address("a", "1", workload("a", [10, 0, 0, 1]));
        if let Some(any) = wrong.resource.as_mut() {
            any.type_url = AUTHORIZATION_TYPE_URL.into();
        }
        let empty = Resource {
            name: "e".into(),
            ..Default::default()
        };
        let applied = r
            .apply(ADDRESS_TYPE_URL, vec![wrong, empty], vec![])
            .unwrap();
        assert!(!applied.changed);
        assert_eq!(applied.rejected.len(), 2);
        assert!(
            r.apply("type.googleapis.com/other", vec![], vec![])
                .is_err()
        );
    }

    #[test]
    fn nack_message_is_bounded() {
        let applied = Applied {
            rejected: (0..100)
                .map(|i| Rejected {
                    name: format!("r{i}"),
                    reason: "bad".into(),
                })
                .collect(),
            ..Applied::default()
        };
        let msg = applied.nack_message().unwrap();
        assert!(msg.ends_with("and 36 more rejected resources"), "{msg}");
    }
}
