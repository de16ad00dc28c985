//! The admin API on localhost:15000 (reference §15.3): `/config_dump`, `/logging`,
//! `/quitquitquit`.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::http_server::{self, Response};
use crate::identity::{CertManager, CertificateDump};
use crate::inpod::manager::{PodStatus, PodsView};
use crate::logging::LogControl;
use crate::state::{Authorization, Service, StateStore, Workload};

const INDEX: &str = "ztunnel admin\n\
GET  /config_dump               workloads, services, policies, certificates, config\n\
GET  /logging                   current log levels\n\
POST /logging?level=<lvl>       set the default level (error|warn|info|debug|trace|off)\n\
POST /logging?level=a:lvl,b:lvl set per-target levels\n\
POST /logging?level=reset       back to the start-up levels\n\
POST /quitquitquit              graceful shutdown\n";

/// What the admin API reads and controls.
pub struct AdminService {
    /// Effective configuration.
    pub cfg: Arc<Config>,
    /// Mesh state.
    pub state: Arc<StateStore>,
    /// Certificates.
    pub certs: Arc<CertManager>,
    /// Run-time log levels (`None`: not adjustable, e.g. in tests without a subscriber).
    pub log: Option<Arc<dyn LogControl>>,
    /// Cancelled by `/quitquitquit`.
    pub shutdown: CancellationToken,
    /// Shared mode: the pods served.
    pub pods: Option<PodsView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump<'a> {
    workloads: Vec<&'a Workload>,
    services: Vec<&'a Service>,
    policies: Vec<&'a Authorization>,
    certificates: Vec<CertificateDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pods: Option<Vec<PodStatus>>,
    config: &'a Config,
    version: &'static str,
}

impl AdminService {
    fn config_dump(&self) -> Response {
        let state = self.state.snapshot();
        let mut workloads: Vec<&Workload> = state.workloads.values().map(|w| &**w).collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<&Service> = state.services.values().map(|s| &**s).collect();
        services.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
        let mut policies: Vec<&Authorization> = state.policies.values().map(|p| &**p).collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let dump = ConfigDump {
            workloads,
            services,
            policies,
            certificates: self.certs.dump(),
            pods: self.pods.as_ref().map(PodsView::list),
            config: &self.cfg,
            version: env!("CARGO_PKG_VERSION"),
        };
        match serde_json::to_vec_pretty(&dump) {
            Ok(body) => http_server::with_type(StatusCode::OK, "application/json", body),
            Err(e) => http_server::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("serializing config dump: {e}\n"),
            ),
        }
    }

    fn logging(&self, req: &http::request::Parts) -> Response {
        let Some(log) = &self.log else {
            return http_server::text(
                StatusCode::NOT_IMPLEMENTED,
                "log levels are not adjustable in this process\n",
            );
        };
        let level = http_server::query_param(&req.uri, "level");
        let result = match (&req.method, level.as_deref()) {
            (&Method::POST, Some("reset")) => log.reset(),
            (&Method::POST, Some(spec)) => log.set(spec),
            (&Method::GET | &Method::POST, None) => Ok(log.current()),
            (&Method::GET, Some(_)) => {
                return http_server::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use POST to change levels\n",
                );
            }
            _ => return http_server::method_not_allowed(),
        };
        match result {
            Ok(current) => {
                if level.is_some() {
                    info!(filter = %current, "log levels changed");
                }
                http_server::text(StatusCode::OK, format!("current log level is {current}\n"))
            }
            Err(e) => http_server::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
}

impl http_server::Service for AdminService {
    fn handle(&self, req: &http::request::Parts) -> Response {
        match (req.uri.path(), &req.method) {
            ("/", &Method::GET) => http_server::text(StatusCode::OK, INDEX),
            ("/config_dump", &Method::GET) => self.config_dump(),
            ("/logging", _) => self.logging(req),
            ("/quitquitquit", &Method::POST) => {
                info!("shutdown requested through the admin API");
                self.shutdown.cancel();
                http_server::text(StatusCode::OK, "OK\n")
            }
            ("/" | "/config_dump" | "/quitquitquit", _) => http_server::method_not_allowed(),
            _ => http_server::not_found(),
        }
    }
}
