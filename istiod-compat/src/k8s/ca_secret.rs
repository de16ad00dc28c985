//! The CA's key material in Kubernetes Secrets, as istiod keeps it:
//!
//! - plug-in CA: Secret `cacerts` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//!   `cert-chain.pem`), provided by the operator and used as is when present;
//! - otherwise a self-signed root in Secret `istio-ca-secret` (`ca-cert.pem`, `ca-key.pem`),
//!   created on first start. Several replicas starting together race to create it: the loser
//!   gets 409 and reads the winner's, so every replica ends up with the same root.
//!
//! Existing Secrets are never overwritten; an unusable one is an error for the operator.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tracing::info;

use super::{K8sError, api_status_code};

/// Name of the plug-in CA Secret.
pub const PLUGIN_CA_SECRET: &str = "cacerts";
/// Name of the self-signed CA Secret.
pub const SELF_SIGNED_CA_SECRET: &str = "istio-ca-secret";
/// Signing certificate key.
pub const CA_CERT_KEY: &str = "ca-cert.pem";
/// Signing key key.
pub const CA_KEY_KEY: &str = "ca-key.pem";
/// Root certificate key (plug-in CA).
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Intermediate chain key (plug-in CA).
pub const CERT_CHAIN_KEY: &str = "cert-chain.pem";
/// Secret type istiod gives its self-signed CA Secret.
const CA_SECRET_TYPE: &str = "istio.io/ca-root";
/// Organization of the generated root (the default trust domain).
const ROOT_ORGANIZATION: &str = "cluster.local";
/// Lifetime of the generated root.
const ROOT_LIFETIME: time::Duration = time::Duration::days(3650);

/// Where the CA material came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaSource {
    /// The operator's plug-in `cacerts` Secret.
    PlugIn,
    /// The self-signed Secret, read as it was.
    SelfSigned,
    /// The self-signed Secret, just created by this call with a new root.
    SelfSignedCreated,
}

/// The CA's signing certificate and key, and its trust anchors.
#[derive(Clone, PartialEq, Eq)]
pub struct CaSecret {
    /// Where it came from.
    pub source: CaSource,
    /// `ca-cert.pem`: the signing certificate (PEM).
    pub cert_pem: String,
    /// `ca-key.pem`: the signing key (PEM).
    pub key_pem: String,
    /// `root-cert.pem`: the root(s) workloads trust (PEM); the signing certificate itself
    /// for a self-signed CA.
    pub root_cert_pem: String,
    /// `cert-chain.pem`: the signing certificate's chain up to the root (PEM; empty for a
    /// self-signed CA).
    pub cert_chain_pem: String,
}

impl std::fmt::Debug for CaSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSecret")
            .field("source", &self.source)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("root_cert_pem", &self.root_cert_pem)
            .field("cert_chain_pem", &self.cert_chain_pem)
            .finish()
    }
}

/// Loads the CA material from `namespace`: the plug-in `cacerts` Secret if present, else the
/// Secret `name` (normally [`SELF_SIGNED_CA_SECRET`]), creating it with a new self-signed
/// root if absent. A concurrent creator winning the race (409) is handled by reading its
/// Secret.
pub async fn load_or_create_ca_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<CaSecret, K8sError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(plugin) = get(&api, namespace, PLUGIN_CA_SECRET).await? {
        let ca = parse_secret(&plugin, namespace, PLUGIN_CA_SECRET, CaSource::PlugIn)?;
        info!(
            namespace,
            "CA: using the plug-in certificates from Secret {PLUGIN_CA_SECRET}"
        );
        return Ok(ca);
    }
    // Bounded: a Secret deleted between our failed create and the re-read is retried.
    for _ in 0..3 {
        if let Some(existing) = get(&api, namespace, name).await? {
            return parse_secret(&existing, namespace, name, CaSource::SelfSigned);
        }
        let (cert_pem, key_pem) = generate_self_signed_root(ROOT_ORGANIZATION)?;
        let secret = self_signed_secret(namespace, name, &cert_pem, &key_pem);
        match api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                info!(namespace, name, "CA: created a self-signed root");
                return parse_secret(&created, namespace, name, CaSource::SelfSignedCreated);
            }
            Err(err) if api_status_code(&err) == Some(409) => {
                info!(
                    namespace,
                    name, "CA: another instance created the root first; using it"
                );
            }
            Err(err) => {
                return Err(K8sError::api(
                    "create",
                    format!("secret {namespace}/{name}"),
                    err,
                ));
            }
        }
    }
    Err(K8sError::InvalidCaSecret {
        namespace: namespace.into(),
        name: name.into(),
        reason: "keeps being deleted while being created".into(),
    })
}

/// A new self-signed CA root (ECDSA P-256, 10 years, `O=<organization>`): `(cert, key)` PEM.
pub fn generate_self_signed_root(organization: &str) -> Result<(String, String), K8sError> {
    let key = KeyPair::generate().map_err(K8sError::GenerateRoot)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, organization);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    // Backdated a little: nodes with a slightly slow clock must accept it at once.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + ROOT_LIFETIME;
    let cert = params.self_signed(&key).map_err(K8sError::GenerateRoot)?;
    Ok((cert.pem(), key.serialize_pem()))
}

async fn get(api: &Api<Secret>, namespace: &str, name: &str) -> Result<Option<Secret>, K8sError> {
    api.get_opt(name)
        .await
        .map_err(|err| K8sError::api("get", format!("secret {namespace}/{name}"), err))
}

fn self_signed_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some(CA_SECRET_TYPE.into()),
        data: Some(BTreeMap::from([
            (CA_CERT_KEY.to_string(), bytes(cert_pem)),
            (CA_KEY_KEY.to_string(), bytes(key_pem)),
            (ROOT_CERT_KEY.to_string(), bytes(cert_pem)),
            (CERT_CHAIN_KEY.to_string(), bytes("")),
        ])),
        ..Default::default()
    }
}

/// Reads and sanity-checks CA material: the certificates must parse, the key must be a PEM
/// private key. (Signing-time checks belong to the CA.)
fn parse_secret(
    secret: &Secret,
    namespace: &str,
    name: &str,
    source: CaSource,
) -> Result<CaSecret, K8sError> {
    let invalid = |reason: String| K8sError::InvalidCaSecret {
        namespace: namespace.into(),
        name: name.into(),
        reason,
    };
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let field = |key: &str| -> Result<String, K8sError> {
        match data.get(key) {
            None => Ok(String::new()),
            Some(ByteString(bytes)) => String::from_utf8(bytes.clone())
                .map_err(|_| invalid(format!("{key} is not UTF-8 PEM"))),
        }
    };
    let cert_pem = field(CA_CERT_KEY)?;
    let key_pem = field(CA_KEY_KEY)?;
    let mut root_cert_pem = field(ROOT_CERT_KEY)?;
    let cert_chain_pem = field(CERT_CHAIN_KEY)?;
    if cert_pem.trim().is_empty() || key_pem.trim().is_empty() {
        return Err(invalid(format!(
            "{CA_CERT_KEY} and {CA_KEY_KEY} are required"
        )));
    }
    if source == CaSource::PlugIn && root_cert_pem.trim().is_empty() {
        return Err(invalid(format!("{ROOT_CERT_KEY} is required")));
    }
    if root_cert_pem.trim().is_empty() {
        root_cert_pem = cert_pem.clone();
    }
    check_certificates(CA_CERT_KEY, &cert_pem).map_err(&invalid)?;
    check_certificates(ROOT_CERT_KEY, &root_cert_pem).map_err(&invalid)?;
    if !cert_chain_pem.trim().is_empty() {
        check_certificates(CERT_CHAIN_KEY, &cert_chain_pem).map_err(&invalid)?;
    }
    check_private_key(&key_pem).map_err(&invalid)?;
    Ok(CaSecret {
        source,
        cert_pem,
        key_pem,
        root_cert_pem,
        cert_chain_pem,
    })
}

/// At least one PEM block, every block a parseable X.509 certificate.
fn check_certificates(key: &str, pem: &str) -> Result<(), String> {
    let mut count = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("{key}: bad PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("{key}: unexpected PEM block {:?}", block.label));
        }
        block
            .parse_x509()
            .map_err(|e| format!("{key}: bad certificate: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("{key}: no certificate"));
    }
    Ok(())
}

/// One PEM private key block (PKCS#8, PKCS#1 or SEC1).
fn check_private_key(pem: &str) -> Result<(), String> {
    let mut blocks = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes());
    match blocks.next() {
        Some(Ok(block)) if block.label.ends_with("PRIVATE KEY") && !block.contents.is_empty() => {
            Ok(())
        }
        Some(Ok(block)) => Err(format!(
            "{CA_KEY_KEY}: expected a private key, found {:?}",
            block.label
        )),
        Some(Err(e)) => Err(format!("{CA_KEY_KEY}: bad PEM: {e}")),
        None => Err(format!("{CA_KEY_KEY}: no private key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn generated_root_is_a_ca_that_parses_back() {
        let (cert, key) = generate_self_signed_root("example.org").unwrap();
        let parsed = parse_secret(
            &self_signed_secret("ns", "n", &cert, &key),
            "ns",
            "n",
            CaSource::SelfSigned,
        )
        .unwrap();
        assert_eq!(parsed.cert_pem, cert);
        assert_eq!(parsed.root_cert_pem, cert);
        assert_eq!(parsed.cert_chain_pem, "");
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let x509 = pem.parse_x509().unwrap();
        assert!(x509.is_ca());
        assert_eq!(
            x509.subject()
                .iter_organization()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "example.org"
        );
        // The key really is the certificate's key.
        let key = KeyPair::from_pem(&key).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&key),
            x509.public_key().raw
        );
        assert!(
            !format!("{parsed:?}").contains("PRIVATE KEY"),
            "Debug redacts the key"
        );
    }

    #[test]
    fn plug_in_needs_a_root_and_self_signed_does_not() {
        let (cert, key) = generate_self_signed_root("cluster.local").unwrap();
        let s = secret(&[(CA_CERT_KEY, &cert), (CA_KEY_KEY, &key)]);
        assert!(parse_secret(&s, "ns", "cacerts", CaSource::PlugIn).is_err());
        assert!(parse_secret(&s, "ns", "x", CaSource::SelfSigned).is_ok());
    }

    #[test]
    fn unusable_secrets_are_refused() {
        let (cert, key) = generate_self_signed_root("cluster.local").unwrap();
        for (why, s) in [
            ("empty", secret(&[])),
            ("no key", secret(&[(CA_CERT_KEY, &cert)])),
            (
                "garbage cert",
                secret(&[(CA_CERT_KEY, "nope"), (CA_KEY_KEY, &key)]),
            ),
            (
                "key in cert slot",
                secret(&[(CA_CERT_KEY, &key), (CA_KEY_KEY, &key)]),
            ),
            (
                "cert in key slot",
                secret(&[(CA_CERT_KEY, &cert), (CA_KEY_KEY, &cert)]),
            ),
        ] {
            let got = parse_secret(&s, "ns", "n", CaSource::SelfSigned);
            assert!(
                matches!(got, Err(K8sError::InvalidCaSecret { .. })),
                "{why}: {got:?}"
            );
        }
    }
}
