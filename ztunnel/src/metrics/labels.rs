//! Istio's traffic metric labels (reference §15.1). Values are shared strings (interned), so
//! a label set costs reference-count increments to clone; a missing value renders `unknown`.

use std::collections::HashSet;
use std::fmt::{self, Write};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use mesh_core::Identity;
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use crate::state::{Service, Workload};

/// One label value.
#[derive(Clone, Debug, Default)]
pub struct Label(Repr);

#[derive(Clone, Debug, Default)]
enum Repr {
    #[default]
    Unknown,
    Static(&'static str),
    Shared(Arc<str>),
}

impl Label {
    /// Renders as `unknown`.
    pub const UNKNOWN: Label = Label(Repr::Unknown);

    /// A compile-time value.
    pub const fn from_static(s: &'static str) -> Label {
        Label(Repr::Static(s))
    }

    /// The rendered value.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Unknown => "unknown",
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Label {}

impl Hash for Label {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for &Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        // The exposition format needs `\`, `"` and newlines escaped inside label values.
        for c in self.as_str().chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Beyond this many distinct strings the interner stops growing (values are then allocated
/// per connection): label churn must not grow memory without bound.
const MAX_INTERNED: usize = 16_384;

/// Deduplicates label strings so every connection of a workload shares them.
#[derive(Debug, Default)]
pub struct Interner {
    strings: RwLock<HashSet<Arc<str>>>,
}

impl Interner {
    /// The label for `s` (`unknown` when empty).
    pub fn label(&self, s: &str) -> Label {
        if s.is_empty() {
            return Label::UNKNOWN;
        }
        if let Ok(set) = self.strings.read()
            && let Some(found) = set.get(s)
        {
            return Label(Repr::Shared(found.clone()));
        }
        let shared: Arc<str> = Arc::from(s);
        if let Ok(mut set) = self.strings.write()
            && set.len() < MAX_INTERNED
        {
            if let Some(found) = set.get(s) {
                return Label(Repr::Shared(found.clone()));
            }
            set.insert(shared.clone());
        }
        Label(Repr::Shared(shared))
    }
}

/// Which proxy reports: the client side (`source`, outbound) or the server side
/// (`destination`, inbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// Outbound.
    Source,
    /// Inbound (HBONE and plaintext).
    Destination,
}

/// `mutual_tls` for HBONE, `unknown` for plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// HBONE (mTLS).
    MutualTls,
    /// Plain TCP.
    Unknown,
}

/// The label set of Istio's `istio_tcp_*` metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionLabels {
    reporter: Label,
    source: PeerLabels,
    destination_service: Label,
    destination_service_namespace: Label,
    destination_service_name: Label,
    destination: PeerLabels,
    request_protocol: Label,
    response_flags: Label,
    connection_security_policy: Label,
}

/// The per-workload labels, once for the source and once for the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct PeerLabels {
    workload: Label,
    canonical_service: Label,
    canonical_revision: Label,
    workload_namespace: Label,
    principal: Label,
    app: Label,
    version: Label,
    cluster: Label,
}

const SOURCE_NAMES: [&str; 8] = [
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
];

const DESTINATION_NAMES: [&str; 8] = [
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
];

impl PeerLabels {
    fn from_workload(i: &Interner, w: &Workload) -> PeerLabels {
        // The owning workload (deployment) when known, else the pod.
        let workload = if w.workload_name.is_empty() {
            &w.name
        } else {
            &w.workload_name
        };
        PeerLabels {
            workload: i.label(workload),
            canonical_service: i.label(&w.canonical_name),
            canonical_revision: i.label(&w.canonical_revision),
            workload_namespace: i.label(&w.namespace),
            principal: Label::UNKNOWN,
            // Istio fills app/version from the canonical service and revision.
            app: i.label(&w.canonical_name),
            version: i.label(&w.canonical_revision),
            cluster: i.label(&w.cluster_id),
        }
    }

    fn encode_into(&self, names: &[&str; 8], out: &mut LabelSetEncoder) -> fmt::Result {
        let values = [
            &self.workload,
            &self.canonical_service,
            &self.canonical_revision,
            &self.workload_namespace,
            &self.principal,
            &self.app,
            &self.version,
            &self.cluster,
        ];
        for (name, value) in names.iter().zip(values) {
            encode_pair(out, name, value)?;
        }
        Ok(())
    }
}

fn encode_pair(out: &mut LabelSetEncoder, name: &str, value: &Label) -> fmt::Result {
    use prometheus_client::encoding::EncodeLabel;
    (name, value).encode(out.encode_label())
}

impl ConnectionLabels {
    /// An empty label set for `reporter` (everything `unknown`, flags `-`).
    pub fn new(reporter: Reporter, security: SecurityPolicy) -> ConnectionLabels {
        ConnectionLabels {
            reporter: Label::from_static(match reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            }),
            source: PeerLabels::default(),
            destination_service: Label::UNKNOWN,
            destination_service_namespace: Label::UNKNOWN,
            destination_service_name: Label::UNKNOWN,
            destination: PeerLabels::default(),
            request_protocol: Label::from_static("tcp"),
            response_flags: Label::from_static("-"),
            connection_security_policy: match security {
                SecurityPolicy::MutualTls => Label::from_static("mutual_tls"),
                SecurityPolicy::Unknown => Label::UNKNOWN,
            },
        }
    }

    /// Fills the source labels from `w` (its principal is set separately: it comes only
    /// from the mTLS peer or the local identity).
    pub fn with_source(mut self, i: &Interner, w: &Workload) -> Self {
        let principal = std::mem::take(&mut self.source.principal);
        self.source = PeerLabels::from_workload(i, w);
        self.source.principal = principal;
        self
    }

    /// Sets `source_principal`.
    pub fn with_source_principal(mut self, i: &Interner, id: Option<&Identity>) -> Self {
        self.source.principal = principal(i, id);
        self
    }

    /// Fills the destination workload labels from `w` (principal set separately: only a
    /// verified or local identity is one).
    pub fn with_destination(mut self, i: &Interner, w: &Workload) -> Self {
        let principal = std::mem::take(&mut self.destination.principal);
        self.destination = PeerLabels::from_workload(i, w);
        self.destination.principal = principal;
        self
    }

    /// Sets `destination_principal`.
    pub fn with_destination_principal(mut self, i: &Interner, id: Option<&Identity>) -> Self {
        self.destination.principal = principal(i, id);
        self
    }

    /// Fills the destination service labels from `svc`.
    pub fn with_service(mut self, i: &Interner, svc: &Service) -> Self {
        self.destination_service = i.label(&svc.hostname);
        self.destination_service_namespace = i.label(&svc.namespace);
        self.destination_service_name = i.label(&svc.name);
        self
    }

    /// The same labels with `response_flags` set.
    pub fn with_response_flags(&self, flags: &'static str) -> Self {
        let mut out = self.clone();
        out.response_flags = Label::from_static(flags);
        out
    }
}

fn principal(i: &Interner, id: Option<&Identity>) -> Label {
    match id {
        Some(id) => i.label(&id.to_string()),
        None => Label::UNKNOWN,
    }
}

impl EncodeLabelSet for ConnectionLabels {
    fn encode(&self, out: &mut LabelSetEncoder) -> fmt::Result {
        encode_pair(out, "reporter", &self.reporter)?;
        self.source.encode_into(&SOURCE_NAMES, out)?;
        encode_pair(out, "destination_service", &self.destination_service)?;
        encode_pair(
            out,
            "destination_service_namespace",
            &self.destination_service_namespace,
        )?;
        encode_pair(
            out,
            "destination_service_name",
            &self.destination_service_name,
        )?;
        self.destination.encode_into(&DESTINATION_NAMES, out)?;
        encode_pair(out, "request_protocol", &self.request_protocol)?;
        encode_pair(out, "response_flags", &self.response_flags)?;
        encode_pair(
            out,
            "connection_security_policy",
            &self.connection_security_policy,
        )
    }
}
