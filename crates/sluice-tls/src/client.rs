//! Client configs for talking to a supervisor (the event store, tests, tools): always with a client
//! certificate, trusting either a CA file or exactly one pinned server certificate.
//! It does not open connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::files::{load_certs, load_key, validity, Validity};
use crate::{crypto_provider, fingerprint, format_fingerprint, Fingerprint, TlsError};
use crate::{ALPN_HTTP1, PROTOCOL_VERSIONS};

/// How a client decides to trust the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Certificates in this PEM file are the trust anchors; the server's certificate must chain
    /// to one and name the host connected to (DNS name or IP address SAN).
    CaFile(PathBuf),
    /// Accept exactly the server certificate with this fingerprint, under any name, while it is
    /// valid; the server must still prove it holds the certificate's key.
    Pinned(Fingerprint),
}

/// A client config presenting the certificate chain in `cert` with the key in `key`, trusting the
/// server as `trust` says, offering ALPN `http/1.1`, TLS 1.3 and 1.2, with the ring provider.
pub fn client_config(cert: &Path, key: &Path, trust: &Trust) -> Result<Arc<ClientConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let provider = crypto_provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder =
        ClientConfig::builder_with_provider(provider).with_protocol_versions(PROTOCOL_VERSIONS).map_err(|source| {
            TlsError::Rustls { what: "cannot enable TLS 1.3 and 1.2 with the ring provider".to_string(), source }
        })?;
    let builder = match trust {
        Trust::CaFile(path) => builder.with_root_certificates(load_roots(path)?),
        Trust::Pinned(pin) => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(PinnedServer { pin: *pin, algorithms }))
        }
    };
    let mut config = builder.with_client_auth_cert(chain, key_der).map_err(|source| TlsError::Rustls {
        what: format!(
            "cannot use key {} with certificate {}; give the key that belongs to the certificate",
            key.display(),
            cert.display()
        ),
        source,
    })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: format!(
                "{} holds a certificate that cannot be a trust anchor; give the CA certificate (ca.pem from `sluice certs`)",
                path.display()
            ),
            source,
        })?;
    }
    Ok(roots)
}

/// The server's certificate is not the pinned one.
struct PinMismatch {
    expected: Fingerprint,
    presented: Fingerprint,
}

impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // rustls shows a wrapped error with `{:?}`: make that the readable message.
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server presented certificate {} but {} is pinned; pin the server's current fingerprint",
            format_fingerprint(&self.presented),
            format_fingerprint(&self.expected)
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Trusts one server certificate by fingerprint, ignoring names and CAs.
struct PinnedServer {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServer").field("pin", &format_fingerprint(&self.pin)).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        if presented != self.pin {
            let mismatch = PinMismatch { expected: self.pin, presented };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))));
        }
        // The pin replaces CA and name checks, not the dates: an expired server certificate is
        // refused here as it would be with a CA.
        match validity(end_entity, now) {
            Validity::Valid => Ok(ServerCertVerified::assertion()),
            Validity::Expired => Err(CertificateError::Expired.into()),
            Validity::NotYetValid => Err(CertificateError::NotValidYet.into()),
            Validity::Unparsable => Err(CertificateError::BadEncoding.into()),
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
