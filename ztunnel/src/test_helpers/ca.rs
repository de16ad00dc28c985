//! A fake Istio CA (the generated tonic server trait) on 127.0.0.1 port 0: signs CSRs with
//! a [`TestPki`] intermediate and answers `[leaf, intermediate, root bundle]`, recording
//! each request with its headers.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helper")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost_types::value::Kind;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use xds_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use xds_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};

use super::grpc;
use super::pki::TestPki;

/// One CSR the fake received.
#[derive(Debug, Clone)]
pub struct ObservedCsr {
    /// `authorization` header.
    pub authorization: Option<String>,
    /// `clusterid` header.
    pub cluster_id: Option<String>,
    /// The PEM CSR.
    pub csr: String,
    /// Requested lifetime, seconds.
    pub validity_duration: i64,
    /// Whether `metadata` was present at all.
    pub has_metadata: bool,
    /// `metadata.ImpersonatedIdentity`, if present.
    pub impersonated: Option<String>,
}

#[derive(Default)]
struct Behaviour {
    /// Issue for this URI instead of the CSR's SAN.
    issue_for: Option<String>,
    /// Fail every request with this status.
    fail: Option<Status>,
}

struct Inner {
    pki: Arc<TestPki>,
    requests: Mutex<Vec<ObservedCsr>>,
    behaviour: Mutex<Behaviour>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake CA. Stops when dropped.
pub struct FakeCa {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The PKI it signs with (its root verifies issued chains; it also serves TLS).
    pub pki: Arc<TestPki>,
    inner: Arc<Inner>,
    shutdown: CancellationToken,
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl FakeCa {
    /// Starts a fake CA serving TLS with `pki`'s server certificate (`tls`) or plaintext.
    pub async fn start(pki: Arc<TestPki>, tls: bool) -> FakeCa {
        let inner = Arc::new(Inner {
            pki: pki.clone(),
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::default()),
        });
        let shutdown = CancellationToken::new();
        let router = tonic::transport::Server::builder().add_service(
            IstioCertificateServiceServer::from_arc(Arc::new(CaService {
                inner: inner.clone(),
            })),
        );
        let server_tls = tls.then(|| pki.server_config());
        let addr = grpc::serve(router, server_tls, shutdown.clone()).await;
        FakeCa {
            addr,
            pki,
            inner,
            shutdown,
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn https_address(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<ObservedCsr> {
        lock(&self.inner.requests).clone()
    }

    /// Issue certificates for `uri` whatever the CSR asks (a misbehaving CA).
    pub fn issue_for(&self, uri: &str) {
        lock(&self.inner.behaviour).issue_for = Some(uri.into());
    }

    /// Fail every request with `status`.
    pub fn fail_with(&self, status: Status) {
        lock(&self.inner.behaviour).fail = Some(status);
    }
}

struct CaService {
    inner: Arc<Inner>,
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let authorization = header("authorization");
        let cluster_id = header("clusterid");
        let req = request.into_inner();
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        lock(&self.inner.requests).push(ObservedCsr {
            authorization,
            cluster_id,
            csr: req.csr.clone(),
            validity_duration: req.validity_duration,
            has_metadata: req.metadata.is_some(),
            impersonated,
        });
        let (issue_for, fail) = {
            let b = lock(&self.inner.behaviour);
            (b.issue_for.clone(), b.fail.clone())
        };
        if let Some(status) = fail {
            return Err(status);
        }
        let ttl = Duration::from_secs(u64::try_from(req.validity_duration).unwrap_or(3600));
        let leaf = self
            .inner
            .pki
            .sign_csr(&req.csr, ttl, issue_for.as_deref())
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![
                leaf,
                self.inner.pki.intermediate_pem.clone(),
                self.inner.pki.root_bundle(),
            ],
        }))
    }
}
