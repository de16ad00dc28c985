//! [`TokenReviewAuthenticator`]: bearer tokens checked by the Kubernetes API
//! (`authentication.k8s.io/v1` TokenReview, audience `istio-ca`).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::debug;

use crate::ca::auth::{AuthError, Authenticator, BoxFuture, Caller};
use crate::model::{Snapshot, SnapshotRx};

/// The audience node proxies request their tokens for.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// TokenReview extra naming the node a bound token was issued on (Kubernetes ≥ 1.30).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// TokenReview extra naming the pod a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// TokenReview extra with the uid of the pod a token is bound to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Authenticates bearer tokens with a Kubernetes TokenReview.
///
/// Accepted: authenticated service-account tokens whose review names the `istio-ca`
/// audience. The caller's node is the `node-name` extra if present, else the `spec.nodeName`
/// of the bound pod (`pod-name` extra) as seen in the registry's current snapshot — only if
/// that pod runs as the same service account (and has the same uid, when the review carries
/// one). Refusals are [`AuthError::Invalid`]; API failures and timeouts are
/// [`AuthError::Unavailable`].
pub struct TokenReviewAuthenticator {
    client: Client,
    snapshots: SnapshotRx,
    timeout: Duration,
}

impl TokenReviewAuthenticator {
    /// Reviews with `client`; bound pods are looked up in the latest of `snapshots`.
    pub fn new(client: Client, snapshots: SnapshotRx) -> Self {
        TokenReviewAuthenticator {
            client,
            snapshots,
            timeout: Duration::from_secs(10),
        }
    }

    /// Bounds each review (default 10 s); a review over it is `Unavailable`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![ISTIO_CA_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let created =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    AuthError::Unavailable(format!(
                        "token review timed out after {:?}",
                        self.timeout
                    ))
                })?
                .map_err(|err| AuthError::Unavailable(format!("token review: {err}")))?;
        let status = created.status.unwrap_or_default();
        let snapshot = self.snapshots.borrow().clone();
        let caller = caller_from_review(&status, &snapshot);
        if let Err(err) = &caller {
            debug!(error = %err, "token review refused");
        }
        caller
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(AuthError::Missing);
            }
            self.review(token).await
        })
    }
}

/// Maps a TokenReview status to a caller (pure; the node lookup reads `snapshot`).
pub fn caller_from_review(
    status: &TokenReviewStatus,
    snapshot: &Snapshot,
) -> Result<Caller, AuthError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("not authenticated");
        return Err(AuthError::Invalid(why.to_string()));
    }
    // An audience-aware reviewer echoes the audiences it validated; one that does not is
    // not checking audiences at all, so the token could be meant for anything.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == ISTIO_CA_AUDIENCE) {
        return Err(AuthError::Invalid(format!(
            "token not valid for audience {ISTIO_CA_AUDIENCE} (reviewed audiences: {audiences:?})"
        )));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let (namespace, service_account) = parse_service_account(username)
        .ok_or_else(|| AuthError::Invalid(format!("{username:?} is not a service account")))?;
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .filter(|v| !v.is_empty())
            .map(String::as_str)
    };
    let node = match extra(EXTRA_NODE_NAME) {
        Some(node) => Some(node.to_string()),
        None => extra(EXTRA_POD_NAME).and_then(|pod| {
            bound_pod_node(
                snapshot,
                namespace,
                service_account,
                pod,
                extra(EXTRA_POD_UID),
            )
        }),
    };
    Ok(Caller {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        node,
    })
}

/// `system:serviceaccount:<ns>:<sa>` → `(ns, sa)`.
fn parse_service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, service_account) = rest.split_once(':')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(':');
    (valid(namespace) && valid(service_account)).then_some((namespace, service_account))
}

/// The node of the pod a token is bound to, if the snapshot has that pod running as the
/// token's service account (and with the token's pod uid, when known).
fn bound_pod_node(
    snapshot: &Snapshot,
    namespace: &str,
    service_account: &str,
    pod: &str,
    pod_uid: Option<&str>,
) -> Option<String> {
    let found = snapshot
        .pods
        .get(&(namespace.to_string(), pod.to_string()))?;
    if pod_uid.is_some_and(|uid| found.metadata.uid.as_deref() != Some(uid)) {
        debug!(
            namespace,
            pod, "bound pod uid differs from the snapshot's pod"
        );
        return None;
    }
    let spec = found.spec.as_ref()?;
    let pod_sa = spec.service_account_name.as_deref().unwrap_or("default");
    if pod_sa != service_account {
        debug!(
            namespace,
            pod, pod_sa, service_account, "bound pod runs as another service account"
        );
        return None;
    }
    spec.node_name.clone().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use test_case::test_case;

    use super::*;

    fn status(username: &str, audiences: &[&str], extras: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_string()),
                extra: Some(
                    extras
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            }),
            error: None,
        }
    }

    fn snapshot_with_pod(sa: &str, uid: &str, node: &str) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.pods.insert(
            ("ns".into(), "pod-1".into()),
            Pod {
                metadata: ObjectMeta {
                    name: Some("pod-1".into()),
                    namespace: Some("ns".into()),
                    uid: Some(uid.into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    service_account_name: Some(sa.into()),
                    node_name: Some(node.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        snapshot
    }

    fn caller(node: Option<&str>) -> Result<Caller, AuthError> {
        Ok(Caller {
            namespace: "ns".into(),
            service_account: "sa".into(),
            node: node.map(String::from),
        })
    }

    #[test_case(&[], caller(None); "no extras: no node")]
    #[test_case(&[(EXTRA_NODE_NAME, "node-a")], caller(Some("node-a")); "node-name extra")]
    #[test_case(&[(EXTRA_NODE_NAME, "node-a"), (EXTRA_POD_NAME, "pod-1")], caller(Some("node-a")); "node-name extra wins over pod")]
    #[test_case(&[(EXTRA_POD_NAME, "pod-1")], caller(Some("node-p")); "bound pod's node")]
    #[test_case(&[(EXTRA_POD_NAME, "pod-1"), (EXTRA_POD_UID, "uid-1")], caller(Some("node-p")); "bound pod with matching uid")]
    #[test_case(&[(EXTRA_POD_NAME, "pod-1"), (EXTRA_POD_UID, "uid-old")], caller(None); "bound pod uid mismatch")]
    #[test_case(&[(EXTRA_POD_NAME, "pod-2")], caller(None); "bound pod unknown")]
    fn node_resolution(extras: &[(&str, &str)], want: Result<Caller, AuthError>) {
        let snapshot = snapshot_with_pod("sa", "uid-1", "node-p");
        let got = caller_from_review(
            &status("system:serviceaccount:ns:sa", &["istio-ca"], extras),
            &snapshot,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn bound_pod_with_another_service_account_gives_no_node() {
        let snapshot = snapshot_with_pod("other", "uid-1", "node-p");
        let got = caller_from_review(
            &status(
                "system:serviceaccount:ns:sa",
                &["istio-ca"],
                &[(EXTRA_POD_NAME, "pod-1")],
            ),
            &snapshot,
        );
        assert_eq!(got, caller(None));
    }

    #[test_case("system:serviceaccount:ns:sa", true; "service account")]
    #[test_case("system:serviceaccount:ns", false; "no sa")]
    #[test_case("system:serviceaccount::sa", false; "empty namespace")]
    #[test_case("system:serviceaccount:ns:sa:x", false; "extra part")]
    #[test_case("system:node:node-a", false; "node user")]
    #[test_case("alice", false; "human user")]
    #[test_case("", false; "empty")]
    fn service_account_users_only(username: &str, ok: bool) {
        let got = caller_from_review(&status(username, &["istio-ca"], &[]), &Snapshot::default());
        assert_eq!(got.is_ok(), ok, "{got:?}");
        if !ok {
            assert!(matches!(got, Err(AuthError::Invalid(_))));
        }
    }

    #[test_case(&[]; "no audiences echoed")]
    #[test_case(&["kubernetes"]; "other audience")]
    fn wrong_audience_is_invalid(audiences: &[&str]) {
        let got = caller_from_review(
            &status("system:serviceaccount:ns:sa", audiences, &[]),
            &Snapshot::default(),
        );
        assert!(matches!(got, Err(AuthError::Invalid(_))), "{got:?}");
    }

    #[test]
    fn unauthenticated_is_invalid_with_the_reviewer_error() {
        let got = caller_from_review(
            &TokenReviewStatus {
                authenticated: Some(false),
                error: Some("token expired".into()),
                ..Default::default()
            },
            &Snapshot::default(),
        );
        assert_eq!(got, Err(AuthError::Invalid("token expired".into())));
        let got = caller_from_review(&TokenReviewStatus::default(), &Snapshot::default());
        assert_eq!(got, Err(AuthError::Invalid("not authenticated".into())));
    }
}
