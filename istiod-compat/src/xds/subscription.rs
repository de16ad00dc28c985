//! One connection's view of one type: what the client subscribed to, what it has, and the
//! delta that brings it up to date with a [`Prepared`] snapshot. Pure state, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::prepared::{Prepared, PreparedResource};

/// The wildcard subscription name.
pub(crate) const WILDCARD: &str = "*";
/// Responses remembered per type for matching ACKs/NACKs to what they carried.
const MAX_OUTSTANDING: usize = 16;

/// A resource in a delta: its name, what it is, and the on-demand keys it answers.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub(crate) name: String,
    pub(crate) resource: Arc<PreparedResource>,
    pub(crate) aliases: Vec<String>,
}

/// What to send to bring a client up to date.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub(crate) updates: Vec<Update>,
    pub(crate) removed: Vec<String>,
}

impl Delta {
    pub(crate) fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.removed.is_empty()
    }
}

/// Subscription and client state of one type on one connection.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// The client sent its first request for this type.
    pub(crate) started: bool,
    /// The first request has not been answered yet (answered even when empty: the client's
    /// readiness waits for it).
    pub(crate) must_respond: bool,
    /// Subscribed to everything.
    pub(crate) wildcard: bool,
    /// Explicitly subscribed names (resource names or on-demand `network/IP` keys).
    pub(crate) names: BTreeSet<String>,
    /// What the client has (or was last sent): name → version.
    pub(crate) known: BTreeMap<String, String>,
    /// Newly subscribed names, answered even if the client already has their resource.
    force: BTreeSet<String>,
    /// Subscribed names that resolve to nothing and were already reported removed.
    absent_reported: BTreeSet<String>,
    /// Recent responses: nonce → (name, version) sent.
    outstanding: VecDeque<(String, Vec<(String, String)>)>,
    /// Resources the client rejected: name → rejected version (resent only once changed).
    pub(crate) rejected: BTreeMap<String, String>,
}

impl TypeState {
    /// Applies a request's subscription changes. On the first request, an empty subscribe
    /// list means wildcard (the legacy implicit form), and `initial` (what a reconnecting
    /// client already has) seeds `known` so nothing unchanged is resent.
    pub(crate) fn subscribe(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        initial: &HashMap<String, String>,
    ) {
        let first = !self.started;
        if first {
            self.started = true;
            self.must_respond = true;
            if subscribe.is_empty() && unsubscribe.is_empty() {
                self.wildcard = true;
            }
            self.known
                .extend(initial.iter().map(|(n, v)| (n.clone(), v.clone())));
        }
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
                self.absent_reported.remove(name);
                if !first {
                    self.force.insert(name.clone());
                }
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                self.force.remove(name);
                self.absent_reported.remove(name);
            }
        }
    }

    /// Computes the delta toward `prepared` for `type_url` and records it as sent.
    /// Resources the client no longer subscribes to (unsubscribed, not removed) are
    /// forgotten without a removal, as delta xDS specifies.
    pub(crate) fn delta(&mut self, type_url: &str, prepared: &Prepared) -> Delta {
        let Some(resources) = prepared.resources(type_url) else {
            return Delta::default();
        };
        // Desired resources → the on-demand keys that asked for them.
        let mut desired: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        if self.wildcard {
            desired.extend(resources.keys().map(|n| (n.as_str(), Vec::new())));
        }
        let mut forced: BTreeSet<&str> = BTreeSet::new();
        let mut unresolved = Vec::new();
        for name in &self.names {
            match prepared.resolve(type_url, name) {
                Some(resolved) => {
                    let aliases = desired.entry(resolved).or_default();
                    if resolved != name {
                        aliases.push(name.clone());
                    }
                    if self.force.contains(name) {
                        forced.insert(resolved);
                    }
                }
                None => unresolved.push(name.clone()),
            }
        }

        let mut delta = Delta::default();
        for (name, aliases) in &desired {
            let Some(resource) = resources.get(*name) else {
                continue;
            };
            let unchanged = self.known.get(*name) == Some(&resource.version);
            if unchanged && !forced.contains(name) {
                continue;
            }
            delta.updates.push(Update {
                name: (*name).to_string(),
                resource: resource.clone(),
                aliases: aliases.clone(),
            });
        }
        let mut removed: BTreeSet<String> = BTreeSet::new();
        let in_scope = |name: &str| self.wildcard || self.names.contains(name);
        let mut forgotten = Vec::new();
        for name in self.known.keys() {
            if desired.contains_key(name.as_str()) {
                continue;
            }
            if resources.contains_key(name) && !in_scope(name) {
                // Still exists, merely not subscribed (any more): forget silently.
                forgotten.push(name.clone());
            } else {
                removed.insert(name.clone());
            }
        }
        for name in &self.names {
            if !unresolved.contains(name) {
                self.absent_reported.remove(name);
            }
        }
        for name in unresolved {
            // Reported once: the client waiting for it learns it does not exist.
            if self.absent_reported.insert(name.clone()) {
                removed.insert(name);
            }
        }
        delta.removed = removed.into_iter().collect();

        // Record it as sent.
        for name in forgotten {
            self.known.remove(&name);
        }
        for name in &delta.removed {
            self.known.remove(name);
            self.rejected.remove(name);
        }
        for update in &delta.updates {
            self.known
                .insert(update.name.clone(), update.resource.version.clone());
            self.rejected.remove(&update.name);
        }
        self.force.clear();
        delta
    }

    /// Remembers what the response with `nonce` carried, for its ACK or NACK.
    pub(crate) fn sent(&mut self, nonce: String, delta: &Delta) {
        let carried = delta
            .updates
            .iter()
            .map(|u| (u.name.clone(), u.resource.version.clone()))
            .collect();
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((nonce, carried));
    }

    /// An ACK of `nonce`: it and every earlier response are settled. `false` if the nonce is
    /// unknown (stale, or older than the ones remembered).
    pub(crate) fn ack(&mut self, nonce: &str) -> bool {
        self.settle(nonce).is_some()
    }

    /// A NACK of `nonce` with the client's `message` (`<name>: <reason>; ...`). Returns the
    /// rejected resources as (name, version, reason); they are not resent until they change.
    /// When the message names no resource of that response, every resource it carried is
    /// taken as rejected.
    pub(crate) fn nack(&mut self, nonce: &str, message: &str) -> Vec<Rejection> {
        let Some(carried) = self.settle(nonce) else {
            return Vec::new();
        };
        let reasons = parse_nack(message);
        let mut rejected: Vec<Rejection> = carried
            .iter()
            .filter_map(|(name, version)| {
                reasons.get(name.as_str()).map(|reason| Rejection {
                    name: name.clone(),
                    version: version.clone(),
                    reason: (*reason).to_string(),
                })
            })
            .collect();
        if rejected.is_empty() {
            rejected = carried
                .into_iter()
                .map(|(name, version)| Rejection {
                    name,
                    version,
                    reason: message.to_string(),
                })
                .collect();
        }
        for r in &rejected {
            self.rejected.insert(r.name.clone(), r.version.clone());
        }
        rejected
    }

    /// Removes `nonce` and everything sent before it; returns what `nonce` carried.
    fn settle(&mut self, nonce: &str) -> Option<Vec<(String, String)>> {
        let at = self.outstanding.iter().position(|(n, _)| n == nonce)?;
        let mut settled = self.outstanding.drain(..=at);
        settled.next_back().map(|(_, carried)| carried)
    }
}

/// A resource the client refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) reason: String,
}

/// `<name>: <reason>; <name>: <reason>` (ztunnel's NACK detail) → name → reason.
fn parse_nack(message: &str) -> HashMap<&str, &str> {
    message
        .split("; ")
        .filter_map(|part| part.split_once(": "))
        .map(|(name, reason)| (name.trim(), reason.trim()))
        .collect()
}

#[cfg(test)]
#[path = "subscription_tests.rs"]
mod tests;
