//! Integration tests of sluice-tls: real mutual-TLS handshakes with tokio-rustls over loopback TCP,
//! with certificates generated per test. They check who gets in, what the accept loop is told
//! about who did not, and reloads; they do not measure speed.

// unwrap() is the house habit in tests (STYLE.md); the workspace lint is for library code.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore, SignatureScheme};
use sluice_tls::{
    client_config, crypto_provider, fingerprint, format_fingerprint, generate, generate_client_with_validity,
    peer_fingerprint, rejection, CertSpec, Fingerprint, Generated, RejectReason, Rejection, ServerTls, Trust,
    ALPN_HTTP1,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Generous: a loaded 2-core machine may be slow, and nothing here should take more than a blink.
const DEADLINE: Duration = Duration::from_secs(30);

/// Certificates for one test: `generate` output in a temp dir that lives as long as this.
struct Certs {
    _tmp: tempfile::TempDir,
    generated: Generated,
}

impl Certs {
    fn new(clients: &[&str]) -> Certs {
        let tmp = tempfile::tempdir().expect("temp dir");
        let spec = CertSpec { clients: clients.iter().map(|c| c.to_string()).collect(), ..CertSpec::default() };
        let generated = generate(tmp.path(), &spec).expect("generate certificates");
        Certs { _tmp: tmp, generated }
    }

    fn dir(&self) -> &Path {
        &self.generated.dir
    }

    /// (certificate, key, fingerprint) of a generated client.
    fn client(&self, name: &str) -> (PathBuf, PathBuf, Fingerprint) {
        let (_, cert, key, fp) = self.generated.clients.iter().find(|c| c.0 == name).expect("client was generated");
        (cert.clone(), key.clone(), *fp)
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls::load(&self.generated.server_cert, &self.generated.server_key, &self.generated.allow_list)
            .expect("load server tls")
    }

    fn client_config(&self, name: &str) -> Arc<ClientConfig> {
        let (cert, key, _) = self.client(name);
        client_config(&cert, &key, &Trust::CaFile(self.generated.ca.clone())).expect("client config")
    }

    fn write_allow_list(&self, fingerprints: &[Fingerprint]) {
        let text: String = fingerprints.iter().map(|fp| format!("{}\n", format_fingerprint(fp))).collect();
        std::fs::write(&self.generated.allow_list, text).expect("rewrite allow list");
    }
}

/// What the server's accept loop saw for one connection.
#[derive(Debug)]
struct Accepted {
    peer: Option<Fingerprint>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
}

/// A server on 127.0.0.1:0 that takes each handshake from `tls.acceptor()` (so reloads apply to
/// new connections), reports every outcome, and echoes bytes on connections it admitted.
struct Server {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<io::Result<Accepted>>,
}

impl Server {
    async fn start(tls: ServerTls) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = tls.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(stream) => {
                            let conn = stream.get_ref().1;
                            let accepted = Accepted {
                                peer: peer_fingerprint(conn),
                                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                                version: conn.protocol_version(),
                            };
                            let _ = tx.send(Ok(accepted));
                            let (mut reader, mut writer) = tokio::io::split(stream);
                            let _ = tokio::io::copy(&mut reader, &mut writer).await;
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err));
                        }
                    }
                });
            }
        });
        Server { addr, outcomes }
    }

    async fn next_outcome(&mut self) -> io::Result<Accepted> {
        tokio::time::timeout(DEADLINE, self.outcomes.recv())
            .await
            .expect("server reports a handshake outcome before the deadline")
            .expect("server task alive")
    }

    async fn expect_accepted(&mut self) -> Accepted {
        self.next_outcome().await.expect("server accepted the handshake")
    }

    async fn expect_rejection(&mut self) -> Rejection {
        let err = self.next_outcome().await.expect_err("server refused the handshake");
        rejection(&err).unwrap_or_else(|| panic!("not a certificate rejection: {err:?}"))
    }
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(name.to_string()).expect("valid server name");
    tokio::time::timeout(DEADLINE, async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config).connect(name, tcp).await
    })
    .await
    .expect("handshake finishes before the deadline")
}

/// Sends `message` and reads back the echo.
async fn roundtrip(stream: &mut TlsStream<TcpStream>, message: &[u8]) -> io::Result<Vec<u8>> {
    tokio::time::timeout(DEADLINE, async {
        stream.write_all(message).await?;
        stream.flush().await?;
        let mut echo = vec![0; message.len()];
        stream.read_exact(&mut echo).await?;
        Ok(echo)
    })
    .await
    .expect("echo before the deadline")
}

/// The client side of a refused handshake: it fails, and no application data ever arrives.
/// With TLS 1.3 the client finishes its half before the server checks its certificate, so the
/// failure may only show on the first read.
async fn expect_client_refused(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Error {
    match connect(addr, config, "localhost").await {
        Err(err) => err,
        Ok(mut stream) => {
            let _ = stream.write_all(b"let me in").await;
            let mut received = Vec::new();
            let result = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received))
                .await
                .expect("refusal reaches the client before the deadline");
            assert!(received.is_empty(), "refused client received {received:?}");
            result.expect_err("refused client must see an error, not a clean end")
        }
    }
}

fn roots(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("open ca") {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    roots
}

fn load_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).expect("open cert").collect::<Result<_, _>>().expect("cert pem")
}

fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key pem")
}

#[tokio::test]
async fn allowed_client_exchanges_bytes() {
    let certs = Certs::new(&["store"]);
    let mut server = Server::start(certs.server_tls()).await;
    let mut stream =
        connect(server.addr, certs.client_config("store"), "localhost").await.expect("allowed client connects");
    assert_eq!(roundtrip(&mut stream, b"hello sluice").await.unwrap(), b"hello sluice");

    let accepted = server.expect_accepted().await;
    assert_eq!(accepted.peer, Some(certs.client("store").2));
    assert_eq!(accepted.alpn.as_deref(), Some(ALPN_HTTP1));
    assert_eq!(accepted.version, Some(ProtocolVersion::TLSv1_3));
    let conn = stream.get_ref().1;
    assert_eq!(peer_fingerprint(conn), Some(certs.generated.server_fingerprint));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_HTTP1));
}

#[tokio::test]
async fn ca_trust_checks_ip_and_dns_names() {
    let certs = Certs::new(&["store"]);
    let mut server = Server::start(certs.server_tls()).await;
    for name in ["localhost", "127.0.0.1"] {
        let mut stream =
            connect(server.addr, certs.client_config("store"), name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(roundtrip(&mut stream, name.as_bytes()).await.unwrap(), name.as_bytes());
        server.expect_accepted().await;
    }
    let err = connect(server.addr, certs.client_config("store"), "example.com")
        .await
        .expect_err("a name not in the server certificate is refused");
    assert!(err.to_string().contains("certificate"), "{err}");
    let server_err = server.next_outcome().await.expect_err("server sees the client give up");
    assert_eq!(rejection(&server_err), None, "not the client's certificate: {server_err}");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let certs = Certs::new(&["store"]);
    let mut server = Server::start(certs.server_tls()).await;
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&certs.generated.ca))
        .with_no_client_auth();
    expect_client_refused(server.addr, Arc::new(config)).await;
    assert_eq!(server.expect_rejection().await, Rejection { fingerprint: None, reason: RejectReason::NoCertificate });
}

#[tokio::test]
async fn unknown_certificate_is_refused_with_its_fingerprint() {
    let certs = Certs::new(&["store"]);
    let mut server = Server::start(certs.server_tls()).await;

    // From another CA entirely.
    let stranger = Certs::new(&["stranger"]);
    let (cert, key, stranger_fp) = stranger.client("stranger");
    let config = client_config(&cert, &key, &Trust::CaFile(certs.generated.ca.clone())).unwrap();
    expect_client_refused(server.addr, config).await;
    let refused = server.expect_rejection().await;
    assert_eq!(refused.reason, RejectReason::NotAllowed);
    assert_eq!(refused.fingerprint, Some(stranger_fp));

    // Signed by the server's own CA is not enough either: only the list counts.
    let now = time::OffsetDateTime::now_utc();
    let (cert, key, sibling_fp) = generate_client_with_validity(
        certs.dir(),
        "sibling",
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
    .unwrap();
    let config = client_config(&cert, &key, &Trust::CaFile(certs.generated.ca.clone())).unwrap();
    let client_err = expect_client_refused(server.addr, config).await;
    let refused = server.expect_rejection().await;
    assert_eq!(refused.reason, RejectReason::NotAllowed);
    assert_eq!(refused.fingerprint, Some(sibling_fp));
    assert!(refused.to_string().contains(&format_fingerprint(&sibling_fp)), "{refused}");
    assert_eq!(client_err.kind(), io::ErrorKind::InvalidData, "{client_err}");
}

#[tokio::test]
async fn listed_but_expired_or_future_certificate_is_refused() {
    let certs = Certs::new(&["store"]);
    let now = time::OffsetDateTime::now_utc();
    let (old_cert, old_key, old_fp) = generate_client_with_validity(
        certs.dir(),
        "old",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap();
    let (new_cert, new_key, new_fp) = generate_client_with_validity(
        certs.dir(),
        "future",
        now + time::Duration::days(1),
        now + time::Duration::days(30),
    )
    .unwrap();
    certs.write_allow_list(&[certs.client("store").2, old_fp, new_fp]);
    let tls = certs.server_tls();
    assert!(tls.is_allowed(&old_fp) && tls.is_allowed(&new_fp));
    let mut server = Server::start(tls).await;

    let ca = Trust::CaFile(certs.generated.ca.clone());
    expect_client_refused(server.addr, client_config(&old_cert, &old_key, &ca).unwrap()).await;
    assert_eq!(server.expect_rejection().await, Rejection { fingerprint: Some(old_fp), reason: RejectReason::Expired });
    expect_client_refused(server.addr, client_config(&new_cert, &new_key, &ca).unwrap()).await;
    assert_eq!(
        server.expect_rejection().await,
        Rejection { fingerprint: Some(new_fp), reason: RejectReason::NotYetValid }
    );
}

/// Presents a fixed certificate and key without rustls's check that they belong together.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn listed_certificate_without_its_key_is_refused() {
    let certs = Certs::new(&["store", "thief"]);
    let mut server = Server::start(certs.server_tls()).await;
    let provider = crypto_provider();
    // The store's (public) certificate, signed for with the thief's key.
    let stolen = CertifiedKey::new(
        load_chain(&certs.client("store").0),
        provider.key_provider.load_private_key(load_key(&certs.client("thief").1)).unwrap(),
    );
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&certs.generated.ca))
        .with_client_cert_resolver(Arc::new(Fixed(Arc::new(stolen))));
    expect_client_refused(server.addr, Arc::new(config)).await;
    assert_eq!(server.expect_rejection().await.reason, RejectReason::BadCertificate);
}

#[tokio::test]
async fn tls12_clients_are_admitted_and_refused_alike() {
    let certs = Certs::new(&["store"]);
    let stranger = Certs::new(&["stranger"]);
    let mut server = Server::start(certs.server_tls()).await;
    let tls12 = |cert: &Path, key: &Path| {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots(&certs.generated.ca))
            .with_client_auth_cert(load_chain(cert), load_key(key))
            .unwrap();
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Arc::new(config)
    };

    let (cert, key, fp) = certs.client("store");
    let mut stream = connect(server.addr, tls12(&cert, &key), "localhost").await.unwrap();
    assert_eq!(roundtrip(&mut stream, b"old but fine").await.unwrap(), b"old but fine");
    let accepted = server.expect_accepted().await;
    assert_eq!(accepted.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(accepted.peer, Some(fp));

    // In TLS 1.2 the server checks the certificate before the client's handshake completes.
    let (cert, key, fp) = stranger.client("stranger");
    connect(server.addr, tls12(&cert, &key), "localhost")
        .await
        .expect_err("TLS 1.2 refusal fails the client's handshake");
    assert_eq!(server.expect_rejection().await, Rejection { fingerprint: Some(fp), reason: RejectReason::NotAllowed });
}

#[tokio::test]
async fn reload_applies_to_new_handshakes_only() {
    let certs = Certs::new(&["store", "newcomer"]);
    let store_fp = certs.client("store").2;
    let newcomer_fp = certs.client("newcomer").2;
    certs.write_allow_list(&[store_fp]);
    let tls = certs.server_tls();
    let mut server = Server::start(tls.clone()).await;

    let mut established = connect(server.addr, certs.client_config("store"), "localhost").await.unwrap();
    assert_eq!(roundtrip(&mut established, b"before").await.unwrap(), b"before");
    server.expect_accepted().await;
    expect_client_refused(server.addr, certs.client_config("newcomer")).await;
    assert_eq!(server.expect_rejection().await.reason, RejectReason::NotAllowed);

    certs.write_allow_list(&[newcomer_fp]);
    let summary = tls.reload().expect("reload");
    assert_eq!((summary.allowed, summary.added, summary.removed), (1, 1, 1));
    assert!(!summary.server_cert_changed);
    assert_eq!(summary.server_fingerprint, certs.generated.server_fingerprint);
    assert!(tls.is_allowed(&newcomer_fp) && !tls.is_allowed(&store_fp));

    let mut newcomer = connect(server.addr, certs.client_config("newcomer"), "localhost").await.unwrap();
    assert_eq!(roundtrip(&mut newcomer, b"now allowed").await.unwrap(), b"now allowed");
    assert_eq!(server.expect_accepted().await.peer, Some(newcomer_fp));

    expect_client_refused(server.addr, certs.client_config("store")).await;
    assert_eq!(
        server.expect_rejection().await,
        Rejection { fingerprint: Some(store_fp), reason: RejectReason::NotAllowed }
    );

    // The connection made under the old list is untouched.
    assert_eq!(roundtrip(&mut established, b"after").await.unwrap(), b"after");
}

#[tokio::test]
async fn failed_reload_keeps_the_old_config() {
    let certs = Certs::new(&["store"]);
    let store_fp = certs.client("store").2;
    let tls = certs.server_tls();
    let mut server = Server::start(tls.clone()).await;
    let before = tls.current();

    let allow = certs.generated.allow_list.clone();
    std::fs::write(&allow, format!("{}\nsha256:oops\n", format_fingerprint(&store_fp))).unwrap();
    let err = tls.reload().expect_err("broken allow list is refused");
    let message = err.to_string();
    assert!(message.starts_with(&format!("{}:2: ", allow.display())), "{message}");
    assert!(Arc::ptr_eq(&before, &tls.current()), "old config still in force");

    // A key that does not match the certificate is refused too, naming both files.
    std::fs::write(&allow, format!("{}\n", format_fingerprint(&store_fp))).unwrap();
    let server_key = certs.generated.server_key.clone();
    std::fs::remove_file(&server_key).unwrap();
    std::fs::copy(&certs.client("store").1, &server_key).unwrap();
    let message = tls.reload().expect_err("mismatched key is refused").to_string();
    assert!(message.contains("server.key") && message.contains("server.pem"), "{message}");
    assert!(Arc::ptr_eq(&before, &tls.current()), "old config still in force");

    assert!(tls.is_allowed(&store_fp));
    let mut stream = connect(server.addr, certs.client_config("store"), "localhost").await.unwrap();
    assert_eq!(roundtrip(&mut stream, b"still here").await.unwrap(), b"still here");
    server.expect_accepted().await;
}

#[tokio::test]
async fn pinned_trust_accepts_exactly_that_certificate() {
    let certs = Certs::new(&["store"]);
    let mut server = Server::start(certs.server_tls()).await;
    let (cert, key, _) = certs.client("store");

    let pinned = Trust::Pinned(certs.generated.server_fingerprint);
    let config = client_config(&cert, &key, &pinned).unwrap();
    // Any name: the pin replaces the name check.
    let mut stream =
        connect(server.addr, config, "not-in-the-certificate.invalid").await.expect("pinned server accepted");
    assert_eq!(roundtrip(&mut stream, b"pinned").await.unwrap(), b"pinned");
    server.expect_accepted().await;

    let mut wrong = certs.generated.server_fingerprint;
    wrong[0] ^= 1;
    let config = client_config(&cert, &key, &Trust::Pinned(wrong)).unwrap();
    let err = connect(server.addr, config, "localhost").await.expect_err("wrong pin refused");
    let message = err.to_string();
    assert!(message.contains(&format!("{} is pinned", format_fingerprint(&wrong))), "{message}");
    assert!(message.contains(&format_fingerprint(&certs.generated.server_fingerprint)), "{message}");
    let server_err = server.next_outcome().await.expect_err("server sees the client abort");
    assert_eq!(rejection(&server_err), None);
}

#[tokio::test]
async fn sessions_are_never_resumed() {
    // A resumed session would skip the allow-list check, so every connection must be a full
    // handshake even from a client that caches sessions (rustls clients do by default).
    let certs = Certs::new(&["store"]);
    let mut server = Server::start(certs.server_tls()).await;
    let config = certs.client_config("store");
    for round in 0..2 {
        let mut stream = connect(server.addr, Arc::clone(&config), "localhost").await.unwrap();
        // Reading gives the client the chance to take session tickets, if any were sent.
        assert_eq!(roundtrip(&mut stream, b"again").await.unwrap(), b"again");
        assert_eq!(stream.get_ref().1.handshake_kind(), Some(HandshakeKind::Full), "round {round}");
        server.expect_accepted().await;
    }
}

#[test]
fn loading_errors_name_the_file_and_the_fix() {
    let certs = Certs::new(&["store"]);
    let generated = &certs.generated;
    let (cert, key, _) = certs.client("store");
    let ca = Trust::CaFile(generated.ca.clone());

    // Certificate and key swapped.
    let message = client_config(&key, &cert, &ca).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: no certificate found", key.display())), "{message}");
    let message = client_config(&cert, &cert, &ca).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: no private key found", cert.display())), "{message}");

    // A key that belongs to another certificate.
    let message = client_config(&cert, &generated.server_key, &ca).unwrap_err().to_string();
    assert!(message.contains("give the key that belongs to the certificate"), "{message}");

    let missing = generated.dir.join("missing.txt");
    let message = ServerTls::load(&generated.server_cert, &generated.server_key, &missing).unwrap_err().to_string();
    assert!(message.starts_with(&format!("cannot read {}", missing.display())), "{message}");

    // A PEM allow list entry works like its fingerprint.
    std::fs::write(&generated.allow_list, std::fs::read(&cert).unwrap()).unwrap();
    let tls = ServerTls::load(&generated.server_cert, &generated.server_key, &generated.allow_list).unwrap();
    assert!(tls.is_allowed(&fingerprint(&load_chain(&cert)[0])));
    assert_eq!(tls.allow_list().len(), 1);
}
