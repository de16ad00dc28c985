//! xDS client counters: Istio's `istio_xds_*` names (reference §15.1) plus connects and NACKs.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// One static label. Every value is a constant of this crate, so a control plane cannot grow
/// the label space.
type StaticLabel = [(&'static str, &'static str); 1];

/// Why an ADS stream ended (`istio_xds_connection_terminations_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationReason {
    /// The connection could not be made (TCP, TLS, HTTP/2) or the call was refused before
    /// the stream started.
    ConnectionError,
    /// The stream failed with a gRPC status that calls for backing off.
    Error,
    /// The stream failed with a status that calls for a quick reconnect (Unknown,
    /// Cancelled, DeadlineExceeded, Unavailable after GOAWAY or transport close).
    Reconnect,
    /// The server ended the stream cleanly.
    Complete,
}

impl TerminationReason {
    /// The label value, as Istio spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::ConnectionError => "ConnectionError",
            TerminationReason::Error => "Error",
            TerminationReason::Reconnect => "Reconnect",
            TerminationReason::Complete => "Complete",
        }
    }
}

/// The xDS counters, registered by [`super::Metrics::new`].
#[derive(Debug, Default)]
pub struct XdsMetrics {
    connects: Counter,
    terminations: Family<StaticLabel, Counter>,
    messages: Family<StaticLabel, Counter>,
    message_bytes: Family<StaticLabel, Counter>,
    nacks: Family<StaticLabel, Counter>,
}

/// Label value for a type URL: one of the subscribed types, or `other`.
fn url_label(type_url: &str) -> &'static str {
    match type_url {
        xds_proto::ADDRESS_TYPE_URL => xds_proto::ADDRESS_TYPE_URL,
        xds_proto::AUTHORIZATION_TYPE_URL => xds_proto::AUTHORIZATION_TYPE_URL,
        _ => "other",
    }
}

impl XdsMetrics {
    /// Registers the `istio_xds_*` counters in `istio` (a registry with the `istio` prefix).
    pub(super) fn register_istio(&self, istio: &mut Registry) {
        let m = self;
        istio.register(
            "xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            m.terminations.clone(),
        );
        istio.register(
            "xds_message",
            "Total number of messages received (unstable)",
            m.messages.clone(),
        );
        istio.register(
            "xds_message_bytes",
            "Total number of bytes received (unstable)",
            m.message_bytes.clone(),
        );
    }

    /// Registers the `ztunnel_xds_*` counters in the root registry.
    pub(super) fn register_ztunnel(&self, root: &mut Registry) {
        let m = self;
        root.register(
            "ztunnel_xds_connects",
            "ADS streams opened to the control plane",
            m.connects.clone(),
        );
        root.register(
            "ztunnel_xds_nacks",
            "xDS responses answered with a NACK (some of their resources rejected)",
            m.nacks.clone(),
        );
    }

    /// Counts an ADS stream that was established.
    pub fn connected(&self) {
        self.connects.inc();
    }

    /// Counts an ended ADS stream.
    pub fn terminated(&self, reason: TerminationReason) {
        self.terminations
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Counts a received response of `bytes` encoded bytes.
    pub fn received(&self, type_url: &str, bytes: usize) {
        let label = [("url", url_label(type_url))];
        self.messages.get_or_create(&label).inc();
        self.message_bytes
            .get_or_create(&label)
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// Counts a NACK sent for a response of `type_url`.
    pub fn nacked(&self, type_url: &str) {
        self.nacks
            .get_or_create(&[("url", url_label(type_url))])
            .inc();
    }

    /// How many ADS streams were established (tests).
    pub fn connects(&self) -> u64 {
        self.connects.get()
    }

    /// How many streams ended for `reason` (tests).
    pub fn terminations(&self, reason: TerminationReason) -> u64 {
        self.terminations
            .get_or_create(&[("reason", reason.as_str())])
            .get()
    }

    /// How many NACKs were sent for `type_url` (tests).
    pub fn nacks(&self, type_url: &str) -> u64 {
        self.nacks
            .get_or_create(&[("url", url_label(type_url))])
            .get()
    }
}
