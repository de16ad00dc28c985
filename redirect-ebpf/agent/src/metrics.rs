//! The agent's Prometheus metrics (prometheus-client, as ztunnel), served as OpenMetrics
//! text on `GET /metrics` of the readiness server (`READINESS_ADDR`).
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `redirect_agent_cni_events_total` | `command` (ADD, DEL), `result` (ok, error) | CNI plugin requests answered |
//! | `redirect_agent_cni_bad_requests_total` | | CNI socket input that was not one JSON request line |
//! | `redirect_agent_zds_connections_total` | | ztunnel connections accepted on the ZDS socket |
//! | `redirect_agent_zds_responses_total` | `result` (ack, nack) | ztunnel's answers to Add/Keep/Del/SnapshotSent |
//! | `redirect_agent_enrollments_total` | `result` (success, failure) | pod enrollment attempts (netns, routing, redirection) |
//! | `redirect_agent_unenrollments_total` | `result` (success, failure) | removals of a pod's redirection |
//! | `redirect_agent_reconcile_errors_total` | `stage` | other failures of the reconcile loop (retried) |
//! | `redirect_agent_enrolled_pods` | | pods currently enrolled |

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::zds::ZdsStats;

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `cni_events_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CniEventLabels {
    /// `ADD` or `DEL`.
    pub command: &'static str,
    /// `ok` or `error` (what the agent answered).
    pub result: &'static str,
}

/// Labels of counters split by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of `reconcile_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StageLabels {
    /// Where it failed: `state` (state dir), `zds_add` (ztunnel did not take a pod),
    /// `listener` (inbound listener), `stale_cleanup` (removing enrollments of a previous
    /// run).
    pub stage: &'static str,
}

/// The agent's metrics (one per agent; cheap to share in an `Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cni_events: Family<CniEventLabels, Counter>,
    cni_bad_requests: Counter,
    enrollments: Family<ResultLabels, Counter>,
    unenrollments: Family<ResultLabels, Counter>,
    reconcile_errors: Family<StageLabels, Counter>,
    enrolled_pods: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn outcome(ok: bool) -> ResultLabels {
    ResultLabels {
        result: if ok { "success" } else { "failure" },
    }
}

impl Metrics {
    /// Registers every metric (ZDS counters come with [`Metrics::with_zds`]).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("redirect_agent");
        let cni_events = Family::<CniEventLabels, Counter>::default();
        registry.register(
            "cni_events",
            "CNI plugin requests answered, by command and result",
            cni_events.clone(),
        );
        let cni_bad_requests = Counter::default();
        registry.register(
            "cni_bad_requests",
            "CNI socket input that was not one JSON request line",
            cni_bad_requests.clone(),
        );
        let enrollments = Family::<ResultLabels, Counter>::default();
        registry.register(
            "enrollments",
            "Pod enrollment attempts (netns, routing, redirection), by result",
            enrollments.clone(),
        );
        let unenrollments = Family::<ResultLabels, Counter>::default();
        registry.register(
            "unenrollments",
            "Removals of a pod's redirection, by result",
            unenrollments.clone(),
        );
        let reconcile_errors = Family::<StageLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Other failures of the reconcile loop (retried), by stage",
            reconcile_errors.clone(),
        );
        let enrolled_pods = Gauge::default();
        registry.register(
            "enrolled_pods",
            "Pods currently enrolled",
            enrolled_pods.clone(),
        );
        Metrics {
            registry,
            cni_events,
            cni_bad_requests,
            enrollments,
            unenrollments,
            reconcile_errors,
            enrolled_pods,
        }
    }

    /// [`Metrics::new`] plus the ZDS server's counters, read at scrape time.
    pub fn with_zds(stats: Arc<ZdsStats>) -> Metrics {
        let mut m = Metrics::new();
        m.registry.register_collector(Box::new(ZdsCollector(stats)));
        m
    }

    /// A CNI request answered (`ok`: the reply was `{"ok":true}`).
    pub fn cni_event(&self, command: mesh_cni::event::CniCommand, ok: bool) {
        let command = match command {
            mesh_cni::event::CniCommand::Add => "ADD",
            mesh_cni::event::CniCommand::Del => "DEL",
        };
        let result = if ok { "ok" } else { "error" };
        self.cni_events
            .get_or_create(&CniEventLabels { command, result })
            .inc();
    }

    /// CNI socket input that was not one JSON request line.
    pub fn cni_bad_request(&self) {
        self.cni_bad_requests.inc();
    }

    /// An enrollment attempt.
    pub fn enrollment(&self, ok: bool) {
        self.enrollments.get_or_create(&outcome(ok)).inc();
    }

    /// A redirection removal.
    pub fn unenrollment(&self, ok: bool) {
        self.unenrollments.get_or_create(&outcome(ok)).inc();
    }

    /// A reconcile failure at `stage` (see [`StageLabels`]).
    pub fn reconcile_error(&self, stage: &'static str) {
        self.reconcile_errors
            .get_or_create(&StageLabels { stage })
            .inc();
    }

    /// Pods currently enrolled.
    pub fn set_enrolled_pods(&self, n: usize) {
        self.enrolled_pods.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Exposes [`ZdsStats`] (kept by the ZDS server itself) at scrape time.
#[derive(Debug)]
struct ZdsCollector(Arc<ZdsStats>);

impl Collector for ZdsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let connections = ConstCounter::new(self.0.connections());
        connections.encode(encoder.encode_descriptor(
            "zds_connections",
            "ztunnel connections accepted on the ZDS socket",
            None,
            connections.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "zds_responses",
            "ztunnel's answers to Add/Keep/Del/SnapshotSent, by result",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (result, n) in [("ack", self.0.acks()), ("nack", self.0.nacks())] {
            ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn text_names_labels_and_values() {
        let m = Metrics::with_zds(Arc::new(ZdsStats::default()));
        m.cni_event(mesh_cni::event::CniCommand::Add, true);
        m.cni_event(mesh_cni::event::CniCommand::Del, false);
        m.cni_bad_request();
        m.enrollment(true);
        m.unenrollment(false);
        m.reconcile_error("listener");
        m.set_enrolled_pods(3);
        let text = m.encode().unwrap();
        for line in [
            "# TYPE redirect_agent_cni_events counter",
            r#"redirect_agent_cni_events_total{command="ADD",result="ok"} 1"#,
            r#"redirect_agent_cni_events_total{command="DEL",result="error"} 1"#,
            "redirect_agent_cni_bad_requests_total 1",
            r#"redirect_agent_enrollments_total{result="success"} 1"#,
            r#"redirect_agent_unenrollments_total{result="failure"} 1"#,
            r#"redirect_agent_reconcile_errors_total{stage="listener"} 1"#,
            "redirect_agent_enrolled_pods 3",
            "redirect_agent_zds_connections_total 0",
            r#"redirect_agent_zds_responses_total{result="ack"} 0"#,
            r#"redirect_agent_zds_responses_total{result="nack"} 0"#,
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }
}
