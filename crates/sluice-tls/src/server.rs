//! The supervisor's side of mutual TLS: a server config whose client verifier admits exactly the
//! certificates on the allow list (and only while they are valid), swappable at run time.
//! It does not accept connections or log; the accept loop does, using [`rejection`] to say why a
//! handshake was refused.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, SignatureScheme,
};

use crate::files::{load_certs, load_key, validity, Validity};
use crate::{crypto_provider, fingerprint, format_fingerprint, AllowList, Fingerprint, TlsError};
use crate::{ALPN_HTTP1, PROTOCOL_VERSIONS};

/// Why a client's handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate's fingerprint is not on the allow list.
    NotAllowed,
    /// Listed, but past its `not_after`.
    Expired,
    /// Listed, but before its `not_before`.
    NotYetValid,
    /// Listed, but unparsable, or the client could not prove it holds the certificate's key.
    BadCertificate,
}

impl RejectReason {
    /// A stable snake_case name, for metric labels and event fields.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoCertificate => "no_certificate",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::BadCertificate => "bad_certificate",
        }
    }
}

/// A refused client handshake: why, and the certificate's fingerprint when there was one to take.
///
/// The verifier returns it inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; get it back from a
/// tokio-rustls accept error with [`rejection`].
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    pub fingerprint: Option<Fingerprint>,
    pub reason: RejectReason,
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // rustls shows the wrapped value with `{:?}` in its own messages: print fingerprints
        // the way operators read them, not as 32 decimal bytes.
        f.debug_struct("Rejection")
            .field("fingerprint", &self.fingerprint.as_ref().map(format_fingerprint))
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cert = match &self.fingerprint {
            Some(fp) => format!("client certificate {}", format_fingerprint(fp)),
            None => "client certificate".to_string(),
        };
        match self.reason {
            RejectReason::NoCertificate => f.write_str(
                "client presented no certificate; configure the client with a certificate on the allow list",
            ),
            RejectReason::NotAllowed => {
                write!(f, "{cert} is not on the allow list; add its fingerprint to the allow list and reload")
            }
            RejectReason::Expired => write!(f, "{cert} has expired; issue the client a new certificate and list it"),
            RejectReason::NotYetValid => write!(f, "{cert} is not valid yet; check the clocks of client and server"),
            RejectReason::BadCertificate => {
                write!(f, "{cert} is malformed or its key does not match; regenerate the client certificate")
            }
        }
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// Why a server-side handshake failed, if it failed because of the client's certificate.
///
/// `err` is the error of `tokio_rustls::TlsAcceptor::accept`, which runs the whole handshake,
/// client certificate check included. Returns `None` for failures unrelated to the client
/// certificate (a reset connection, a protocol mismatch, a client that gave up).
pub fn rejection(err: &io::Error) -> Option<Rejection> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::NoCertificatesPresented => {
            Some(Rejection { fingerprint: None, reason: RejectReason::NoCertificate })
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            let found = (*other.0).downcast_ref::<Rejection>().cloned();
            Some(found.unwrap_or(Rejection { fingerprint: None, reason: RejectReason::BadCertificate }))
        }
        // A listed certificate whose holder failed the signature check (it lacks the key) ends
        // here: rustls reports it after our verifier has already admitted the certificate.
        rustls::Error::InvalidCertificate(_) => {
            Some(Rejection { fingerprint: None, reason: RejectReason::BadCertificate })
        }
        _ => None,
    }
}

/// The fingerprint of the certificate the peer presented on an established connection, e.g.
/// `peer_fingerprint(tls_stream.get_ref().1)` on a tokio-rustls server stream.
pub fn peer_fingerprint(conn: &CommonState) -> Option<Fingerprint> {
    conn.peer_certificates().and_then(|chain| chain.first()).map(|cert| fingerprint(cert))
}

/// Admits a client iff its end-entity certificate is on the allow list and valid now.
/// The chain is not checked against any CA: the allow list is the trust.
struct AllowListVerifier {
    allow: Arc<AllowList>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for AllowListVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowListVerifier").field("allow", &self.allow).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for AllowListVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA names to hint: any certificate may be listed, so clients send the one they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        let reject = |reason| Rejection { fingerprint: Some(fp), reason }.into_rustls();
        // The list first: for a stranger, "not allowed" is the useful answer whatever its dates.
        if !self.allow.contains(&fp) {
            return Err(reject(RejectReason::NotAllowed));
        }
        match validity(end_entity, now) {
            Validity::Valid => Ok(ClientCertVerified::assertion()),
            Validity::Expired => Err(reject(RejectReason::Expired)),
            Validity::NotYetValid => Err(reject(RejectReason::NotYetValid)),
            Validity::Unparsable => Err(reject(RejectReason::BadCertificate)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a successful [`ServerTls::reload`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Fingerprints on the new list.
    pub allowed: usize,
    /// Fingerprints on the new list that were not on the old one.
    pub added: usize,
    /// Fingerprints on the old list that are not on the new one.
    pub removed: usize,
    /// The fingerprint of the (possibly new) server certificate.
    pub server_fingerprint: Fingerprint,
    pub server_cert_changed: bool,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} clients allowed ({} added, {} removed); server certificate {}{}",
            self.allowed,
            self.added,
            self.removed,
            format_fingerprint(&self.server_fingerprint),
            if self.server_cert_changed { " (new)" } else { "" }
        )
    }
}

/// The supervisor's TLS settings: certificate, key and allow list, re-read on demand.
///
/// Cheap to clone; clones share the current config. Each handshake should start from
/// [`ServerTls::current`] (or [`ServerTls::acceptor`]), so a reload applies to every new
/// connection, while connections already established keep the config they started with.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    cert: PathBuf,
    key: PathBuf,
    allow: PathBuf,
    loaded: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    allow: Arc<AllowList>,
    server_fingerprint: Fingerprint,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .field("allow", &self.inner.allow)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the server certificate (a PEM chain, end-entity first), its key and the allow list.
    pub fn load(cert: &Path, key: &Path, allow: &Path) -> Result<ServerTls, TlsError> {
        let loaded = load_server(cert, key, allow)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                allow: allow.to_path_buf(),
                loaded: RwLock::new(loaded),
            }),
        })
    }

    /// Re-reads all three files. On any error the old config stays in force and the error is
    /// returned; on success new handshakes use the new config at once.
    pub fn reload(&self) -> Result<ReloadSummary, TlsError> {
        // Read the files without holding the lock, so handshakes never wait on the disk.
        let new = load_server(&self.inner.cert, &self.inner.key, &self.inner.allow)?;
        let old = std::mem::replace(&mut *self.write(), new.clone());
        Ok(ReloadSummary {
            allowed: new.allow.len(),
            added: new.allow.fingerprints().filter(|fp| !old.allow.contains(fp)).count(),
            removed: old.allow.fingerprints().filter(|fp| !new.allow.contains(fp)).count(),
            server_fingerprint: new.server_fingerprint,
            server_cert_changed: new.server_fingerprint != old.server_fingerprint,
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.read().config)
    }

    /// A tokio-rustls acceptor over [`ServerTls::current`].
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }

    /// Whether `fp` is on the current allow list (to drop streams of clients removed by a
    /// reload, if the caller wants that).
    pub fn is_allowed(&self, fp: &Fingerprint) -> bool {
        self.read().allow.contains(fp)
    }

    /// The current allow list.
    pub fn allow_list(&self) -> Arc<AllowList> {
        Arc::clone(&self.read().allow)
    }

    /// The fingerprint of the current server certificate (for clients that pin it).
    pub fn server_fingerprint(&self) -> Fingerprint {
        self.read().server_fingerprint
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // The lock only guards a swap of Arcs: a panic elsewhere cannot leave it half-written.
        self.inner.loaded.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        self.inner.loaded.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn load_server(cert: &Path, key: &Path, allow: &Path) -> Result<Loaded, TlsError> {
    let chain = load_certs(cert)?;
    let server_fingerprint = fingerprint(&chain[0]);
    let key_der = load_key(key)?;
    let allow = Arc::new(AllowList::load(allow)?);
    let provider = crypto_provider();
    let verifier = Arc::new(AllowListVerifier {
        allow: Arc::clone(&allow),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| TlsError::Rustls {
            what: "cannot enable TLS 1.3 and 1.2 with the ring provider".to_string(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Rustls {
            what: format!(
                "cannot use key {} with certificate {}; give the key that belongs to the certificate",
                key.display(),
                cert.display()
            ),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    // No resumption: a resumed session skips the client verifier, so a client removed from the
    // allow list, or whose certificate expired, could come back on an old session. Clients hold
    // long-lived streams, so a full handshake per connection costs nothing that matters.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Loaded { config: Arc::new(config), allow, server_fingerprint })
}
