//! Prometheus metrics on `:15020/metrics` (and `/stats/prometheus`), with Istio's names and
//! labels (reference §15.1): the `istio_tcp_*` traffic counters, `istio_build`, process
//! file-descriptor and memory gauges, the local config counters and the xDS client counters.

mod labels;
mod process;
mod traffic;
mod xds;

use std::sync::Arc;

use http::{Method, StatusCode, header};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use labels::{ConnectionLabels, Interner, Label, Reporter, SecurityPolicy};
pub use traffic::{ByteCounters, ConnectionMetrics, TrafficMetrics};
pub use xds::{TerminationReason, XdsMetrics};

use crate::http_server::{self, Response};
use crate::localconfig::LocalConfigMetrics;

/// OpenMetrics text, what the encoder produces (Prometheus reads it too).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text content type, for scrapers that do not ask for OpenMetrics.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type BuildLabels = [(&'static str, &'static str); 2];

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The `istio_tcp_*` counters.
    pub traffic: Arc<TrafficMetrics>,
    /// The xDS client counters.
    pub xds: Arc<XdsMetrics>,
}

impl Metrics {
    /// Registers everything; `local_config` is read at scrape time.
    pub fn new(local_config: Arc<LocalConfigMetrics>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        registry.register_collector(Box::new(process::LocalConfigCollector(local_config)));
        let xds = XdsMetrics::default();
        xds.register_ztunnel(&mut registry);
        let istio = registry.sub_registry_with_prefix("istio");
        let traffic = TrafficMetrics::register(istio);
        xds.register_istio(istio);
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&[("component", "ztunnel"), ("tag", env!("CARGO_PKG_VERSION"))])
            .set(1);
        istio.register("build", "Istio component build info", build);
        Metrics {
            registry,
            traffic,
            xds: Arc::new(xds),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The metrics port's HTTP routes.
pub struct MetricsService(pub Arc<Metrics>);

impl http_server::Service for MetricsService {
    fn handle(&self, req: &http::request::Parts) -> Response {
        match req.uri.path() {
            "/metrics" | "/stats/prometheus" if req.method == Method::GET => {}
            "/metrics" | "/stats/prometheus" => return http_server::method_not_allowed(),
            _ => return http_server::not_found(),
        }
        let openmetrics = req
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/openmetrics-text"));
        match self.0.encode() {
            Ok(body) => http_server::with_type(
                StatusCode::OK,
                if openmetrics {
                    OPENMETRICS
                } else {
                    PROMETHEUS_TEXT
                },
                body,
            ),
            Err(_) => http_server::text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Workload;

    #[test]
    fn traffic_counters_render_with_istio_names_and_labels() {
        let m = Metrics::new(Arc::new(LocalConfigMetrics::default()));
        let i = m.traffic.interner();
        let w = Workload {
            name: "client-abc".into(),
            namespace: "default".into(),
            service_account: "client".into(),
            canonical_name: "client".into(),
            canonical_revision: "v1".into(),
            ..Workload::default()
        };
        let labels = ConnectionLabels::new(Reporter::Source, SecurityPolicy::MutualTls)
            .with_source(i, &w)
            .with_source_principal(i, Some(&w.identity()));
        let mut conn = m.traffic.open(labels);
        conn.bytes().received.inc_by(5);
        conn.bytes().sent.inc_by(7);
        conn.failed("DENY");
        drop(conn);
        let text = m.encode().unwrap();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
                .to_string()
        };
        let opened = line("istio_tcp_connections_opened_total{");
        assert!(opened.contains(r#"reporter="source""#), "{opened}");
        assert!(
            opened.contains(r#"source_workload="client-abc""#),
            "{opened}"
        );
        assert!(opened.contains(r#"source_app="client""#), "{opened}");
        assert!(opened.contains(r#"source_version="v1""#), "{opened}");
        assert!(
            opened.contains(r#"source_principal="spiffe://cluster.local/ns/default/sa/client""#),
            "{opened}"
        );
        assert!(
            opened.contains(r#"destination_workload="unknown""#),
            "{opened}"
        );
        assert!(opened.contains(r#"request_protocol="tcp""#), "{opened}");
        assert!(opened.contains(r#"response_flags="-""#), "{opened}");
        assert!(
            opened.contains(r#"connection_security_policy="mutual_tls""#),
            "{opened}"
        );
        assert!(opened.ends_with(" 1"), "{opened}");
        assert!(line("istio_tcp_received_bytes_total{").ends_with(" 5"));
        assert!(line("istio_tcp_sent_bytes_total{").ends_with(" 7"));
        let closed = line("istio_tcp_connections_closed_total{");
        assert!(closed.contains(r#"response_flags="DENY""#), "{closed}");
        assert!(line("istio_tcp_connections_failed_total{").contains(r#"response_flags="DENY""#));
        assert!(
            text.contains(r#"istio_build{component="ztunnel""#),
            "{text}"
        );
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(
            text.contains("ztunnel_local_config_applied_total 0"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped_and_interned() {
        let i = Interner::default();
        let a = i.label("x\"y");
        let b = i.label("x\"y");
        assert_eq!(a, b);
        assert_eq!(i.label(""), Label::UNKNOWN);
        let m = Metrics::new(Arc::new(LocalConfigMetrics::default()));
        let w = Workload {
            name: "we\"ird".into(),
            ..Workload::default()
        };
        let labels = ConnectionLabels::new(Reporter::Destination, SecurityPolicy::Unknown)
            .with_destination(m.traffic.interner(), &w);
        drop(m.traffic.open(labels));
        let text = m.encode().unwrap();
        assert!(text.contains(r#"destination_workload="we\"ird""#), "{text}");
        assert!(
            text.contains(r#"connection_security_policy="unknown""#),
            "{text}"
        );
    }
}
