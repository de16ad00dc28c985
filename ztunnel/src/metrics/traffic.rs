//! Istio's `istio_tcp_*` connection metrics and the per-connection handle that feeds them.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::labels::{ConnectionLabels, Interner};

/// The traffic counters, registered under the `istio` prefix.
#[derive(Debug, Default)]
pub struct TrafficMetrics {
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    received_bytes: Family<ConnectionLabels, Counter>,
    sent_bytes: Family<ConnectionLabels, Counter>,
    failed: Family<ConnectionLabels, Counter>,
    interner: Interner,
}

impl TrafficMetrics {
    /// Creates the counters and registers them in `registry` (expected to carry the
    /// `istio` prefix; counters get `_total` when encoded).
    pub fn register(registry: &mut Registry) -> Arc<TrafficMetrics> {
        let m = TrafficMetrics::default();
        registry.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            m.opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            m.received_bytes.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of TCP connection",
            m.sent_bytes.clone(),
        );
        registry.register(
            "tcp_connections_failed",
            "The total number of TCP connections that failed to establish (unstable)",
            m.failed.clone(),
        );
        Arc::new(m)
    }

    /// Shares label strings across connections.
    pub fn interner(&self) -> &Interner {
        &self.interner
    }

    /// Counts a connection as opened and returns the handle that counts its bytes and its
    /// close. Byte counters and `opened` carry `response_flags="-"`; `closed` and `failed`
    /// carry the flag of the outcome.
    pub fn open(self: &Arc<Self>, labels: ConnectionLabels) -> ConnectionMetrics {
        self.opened.get_or_create(&labels).inc();
        let bytes = ByteCounters {
            received: self.received_bytes.get_or_create_owned(&labels),
            sent: self.sent_bytes.get_or_create_owned(&labels),
        };
        ConnectionMetrics {
            metrics: self.clone(),
            labels,
            bytes,
            flag: None,
        }
    }
}

/// Live byte counters of one connection: shared atomics, bumped as bytes flow.
#[derive(Clone, Debug, Default)]
pub struct ByteCounters {
    /// Downstream → upstream ("request") bytes.
    pub received: Counter,
    /// Upstream → downstream ("response") bytes.
    pub sent: Counter,
}

/// One connection's metrics. Dropping it counts the connection closed (with the flag of a
/// recorded failure, else `-`), so force-closed connections are counted too.
#[derive(Debug)]
pub struct ConnectionMetrics {
    metrics: Arc<TrafficMetrics>,
    labels: ConnectionLabels,
    bytes: ByteCounters,
    flag: Option<&'static str>,
}

impl ConnectionMetrics {
    /// The counters the copy loop adds to.
    pub fn bytes(&self) -> &ByteCounters {
        &self.bytes
    }

    /// Records a failure with Istio's response flag (e.g. `DENY`, `CONNECT`).
    pub fn failed(&mut self, response_flag: &'static str) {
        if self.flag.is_none() {
            self.flag = Some(response_flag);
            self.metrics
                .failed
                .get_or_create(&self.labels.with_response_flags(response_flag))
                .inc();
        }
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        let flag = self.flag.unwrap_or("-");
        self.metrics
            .closed
            .get_or_create(&self.labels.with_response_flags(flag))
            .inc();
    }
}
