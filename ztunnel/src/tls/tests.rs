use std::io;
use std::time::{Duration, SystemTime};

use rustls::{CertificateError, NamedGroup, ProtocolVersion};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::*;
use crate::identity::{CertificateSource, LocalCa};

const TD: &str = "cluster.local";
const TTL: Duration = Duration::from_secs(3600);
/// Upper bound for one in-memory handshake; only reached if a test is broken.
const PATIENCE: Duration = Duration::from_secs(10);

fn id(sa: &str) -> Identity {
    Identity::new(TD, "default", sa)
}

/// A fresh CA (and its directory) for trust domain `td`.
fn new_ca(td: &str) -> (TempDir, LocalCa) {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path(), td, TTL).unwrap();
    (dir, ca)
}

async fn issue(ca: &LocalCa, id: &Identity) -> WorkloadCertificate {
    ca.fetch(id).await.unwrap()
}

type Handshake = (
    io::Result<client::TlsStream<DuplexStream>>,
    io::Result<server::TlsStream<DuplexStream>>,
);

/// Runs both sides of a handshake over an in-memory pipe.
async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Handshake {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let both = async {
        tokio::join!(
            TlsConnector::from(client).connect(server_name(), c),
            TlsAcceptor::from(server).accept(s)
        )
    };
    tokio::time::timeout(PATIENCE, both).await.unwrap()
}

/// The rustls error behind an I/O error from tokio-rustls.
fn tls_error(err: &io::Error) -> &rustls::Error {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
}

/// The mesh-specific rejection behind an I/O error, if that is what it is.
fn mesh_rejection(err: &io::Error) -> &TlsError {
    match tls_error(err) {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<TlsError>()
            .unwrap_or_else(|| panic!("not a TlsError: {other:?}")),
        e => panic!("not a mesh rejection: {e:?}"),
    }
}

fn is_cert_error(err: &io::Error, want: fn(&CertificateError) -> bool) -> bool {
    matches!(tls_error(err), rustls::Error::InvalidCertificate(e) if want(e))
}

#[tokio::test]
async fn handshake_over_tcp_negotiates_tls13_h2_and_identities() {
    let (_dir, ca) = new_ca(TD);
    let server_cert = issue(&ca, &id("server")).await;
    let client_cert = issue(&ca, &id("client")).await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(&server_cert).unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.server_name(), None, "no SNI sent");
        assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
        let peer = peer_identity(conn.peer_certificates().unwrap());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(b"pong").await.unwrap();
        tls.shutdown().await.unwrap();
        (peer, buf)
    });

    let config = client_config(&client_cert, vec![id("server")]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    assert_eq!(
        peer_identity(conn.peer_certificates().unwrap()),
        Some(id("server"))
    );

    tls.write_all(b"ping").await.unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"pong");
    let (client_seen_by_server, got) = server.await.unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(client_seen_by_server, Some(id("client")));
}

#[tokio::test]
async fn negotiates_expected_key_exchange_group() {
    let (_dir, ca) = new_ca(TD);
    let server = server_config(&issue(&ca, &id("server")).await).unwrap();
    let client = client_config(&issue(&ca, &id("client")).await, vec![id("server")]).unwrap();
    let (c, s) = handshake(client, server).await;
    let (c, _s) = (c.unwrap(), s.unwrap());
    let group = c
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .unwrap()
        .name();
    let expected = match BACKEND {
        Backend::AwsLc | Backend::Boring => NamedGroup::X25519MLKEM768,
        Backend::Ring => NamedGroup::X25519,
    };
    assert_eq!(group, expected);
}

#[tokio::test]
async fn client_accepts_any_expected_identity() {
    let (_dir, ca) = new_ca(TD);
    let server = server_config(&issue(&ca, &id("server")).await).unwrap();
    let client_cert = issue(&ca, &id("client")).await;
    let client = client_config(&client_cert, vec![id("other"), id("server")]).unwrap();
    let (c, s) = handshake(client, server).await;
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let (_dir, ca) = new_ca(TD);
    let server = server_config(&issue(&ca, &id("impostor")).await).unwrap();
    let client = client_config(&issue(&ca, &id("client")).await, vec![id("server")]).unwrap();
    let (c, s) = handshake(client, server).await;
    let err = c.unwrap_err();
    let rejection = mesh_rejection(&err);
    assert!(matches!(rejection, TlsError::IdentityMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/default/sa/server"),
        "{msg}"
    );
    assert!(
        msg.contains("spiffe://cluster.local/ns/default/sa/impostor"),
        "{msg}"
    );
    assert!(s.is_err(), "server sees the alert");
}

#[tokio::test]
async fn server_refuses_client_from_other_trust_domain() {
    let (dir, ca) = new_ca(TD);
    // Same root, different trust domain.
    let foreign_ca = LocalCa::load_or_create(dir.path(), "other.domain", TTL).unwrap();
    let foreign = Identity::new("other.domain", "default", "client");
    let server = server_config(&issue(&ca, &id("server")).await).unwrap();
    let client = client_config(&issue(&foreign_ca, &foreign).await, vec![id("server")]).unwrap();
    let (_c, s) = handshake(client, server).await;
    let err = s.unwrap_err();
    assert!(matches!(
        mesh_rejection(&err),
        TlsError::TrustDomainMismatch { .. }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains(TD) && msg.contains("spiffe://other.domain/"),
        "{msg}"
    );
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let (_dir, ca) = new_ca(TD);
    let server_cert = issue(&ca, &id("server")).await;
    let server = server_config(&server_cert).unwrap();

    // A client identical to ours except that it presents no certificate.
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(
        root_store(&server_cert).unwrap(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let verifier = Arc::new(verify::IdentityVerifier {
        webpki,
        expected: vec![id("server")],
    });
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    client.enable_sni = false;

    let (_c, s) = handshake(Arc::new(client), server).await;
    let err = s.unwrap_err();
    assert!(
        matches!(tls_error(&err), rustls::Error::NoCertificatesPresented),
        "{err}"
    );
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    let (_dir, ca) = new_ca(TD);
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired_server = ca.issue(&id("server"), now - 2 * day, now - day).unwrap();
    let expired_client = ca.issue(&id("client"), now - 2 * day, now - day).unwrap();
    let good_server = issue(&ca, &id("server")).await;
    let good_client = issue(&ca, &id("client")).await;
    let expired = |e: &CertificateError| {
        matches!(
            e,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        )
    };

    let (c, _s) = handshake(
        client_config(&good_client, vec![id("server")]).unwrap(),
        server_config(&expired_server).unwrap(),
    )
    .await;
    let err = c.unwrap_err();
    assert!(is_cert_error(&err, expired), "{err}");

    let (_c, s) = handshake(
        client_config(&expired_client, vec![id("server")]).unwrap(),
        server_config(&good_server).unwrap(),
    )
    .await;
    let err = s.unwrap_err();
    assert!(is_cert_error(&err, expired), "{err}");
}

#[tokio::test]
async fn certificates_from_another_root_are_refused_both_ways() {
    let (_d1, ca) = new_ca(TD);
    let (_d2, rogue) = new_ca(TD);
    assert_ne!(ca.roots(), rogue.roots());
    let unknown = |e: &CertificateError| {
        matches!(
            e,
            CertificateError::UnknownIssuer | CertificateError::BadSignature
        )
    };

    // A server whose certificate comes from the rogue CA (though it trusts the mesh root).
    let mut rogue_server = issue(&rogue, &id("server")).await;
    rogue_server.roots = ca.roots().to_vec();
    let (c, _s) = handshake(
        client_config(&issue(&ca, &id("client")).await, vec![id("server")]).unwrap(),
        server_config(&rogue_server).unwrap(),
    )
    .await;
    let err = c.unwrap_err();
    assert!(is_cert_error(&err, unknown), "{err}");

    // A client whose certificate comes from the rogue CA (though it trusts the mesh root).
    let mut rogue_client = issue(&rogue, &id("client")).await;
    rogue_client.roots = ca.roots().to_vec();
    let (_c, s) = handshake(
        client_config(&rogue_client, vec![id("server")]).unwrap(),
        server_config(&issue(&ca, &id("server")).await).unwrap(),
    )
    .await;
    let err = s.unwrap_err();
    assert!(is_cert_error(&err, unknown), "{err}");
}

#[tokio::test]
async fn chain_through_intermediate_verifies() {
    let dir = tempfile::tempdir().unwrap();
    crate::identity::write_intermediate_layout(dir.path(), true);
    let ca = LocalCa::load_or_create(dir.path(), TD, TTL).unwrap();
    let server_cert = issue(&ca, &id("server")).await;
    assert_eq!(server_cert.chain.len(), 2);
    let (c, s) = handshake(
        client_config(&issue(&ca, &id("client")).await, vec![id("server")]).unwrap(),
        server_config(&server_cert).unwrap(),
    )
    .await;
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn peer_identity_takes_first_spiffe_uri() {
    let (_dir, ca) = new_ca(TD);
    let cert = issue(&ca, &id("echo")).await;
    assert_eq!(peer_identity(&cert.chain), Some(id("echo")));
    assert_eq!(peer_identity(&[]), None);
    assert_eq!(peer_identity(&[CertificateDer::from(vec![1, 2, 3])]), None);

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = [
        "https://example.com/",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://td/ns/first/sa/one",
        "spiffe://td/ns/second/sa/two",
    ]
    .into_iter()
    .map(|u| rcgen::SanType::URI(u.try_into().unwrap()))
    .chain([rcgen::SanType::DnsName("example.com".try_into().unwrap())])
    .collect();
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(
        peer_identity(&[cert.der().clone()]),
        Some(Identity::new("td", "first", "one"))
    );

    let mut params = rcgen::CertificateParams::new(vec!["example.com".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "https://example.com/".try_into().unwrap(),
    ));
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(peer_identity(&[cert.der().clone()]), None);
}

#[tokio::test]
async fn config_errors() {
    let (_dir, ca) = new_ca(TD);
    let cert = issue(&ca, &id("client")).await;
    assert!(matches!(
        client_config(&cert, Vec::new()),
        Err(TlsError::NoExpectedIdentities)
    ));

    let mut rootless = issue(&ca, &id("client")).await;
    rootless.roots.clear();
    assert!(matches!(
        server_config(&rootless),
        Err(TlsError::NoRoots(_))
    ));

    // A key that does not belong to the chain.
    let mut mismatched = issue(&ca, &id("client")).await;
    mismatched.key = issue(&ca, &id("client")).await.key;
    match server_config(&mismatched) {
        Err(err) => assert!(matches!(err, TlsError::Config { .. }), "{err}"),
        // BoringSSL keys cannot report their public half to rustls, so the mismatch only
        // shows at the handshake (the server's signature does not verify).
        Ok(server) => {
            assert_eq!(
                BACKEND,
                Backend::Boring,
                "mismatch must be caught at config time"
            );
            let client = client_config(&cert, vec![id("client")]).unwrap();
            let (c, _s) = handshake(client, server).await;
            assert!(c.is_err());
        }
    }
}

#[test]
fn server_name_is_unspecified_ip() {
    assert_eq!(server_name().to_str(), "0.0.0.0");
}
