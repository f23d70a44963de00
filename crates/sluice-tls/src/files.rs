//! Reading certificate, key and allow-list files with a size bound, and checking a certificate's
//! validity window. It does not cache anything: every load reads the files again (SIGHUP reload).

use std::io::Read;
use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::TlsError;

/// Largest certificate or key file read. A chain of a few certificates is a few KB; anything
/// near this is the wrong file, and refusing it keeps a typo from reading a disk image.
pub(crate) const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Reads `path` whole, refusing files larger than `max_bytes`.
pub(crate) fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells "exactly at the limit" from "past it".
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(read_err)?;
    let size_bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size_bytes > max_bytes {
        return Err(TlsError::TooLarge { path: path.to_path_buf(), size_bytes, max_bytes });
    }
    Ok(bytes)
}

/// All certificates in a PEM file, in order (end-entity first for a chain). At least one.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path, PEM_FILE_BYTES_MAX)?;
    let certs =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|err| TlsError::Certificate {
            path: path.to_path_buf(),
            message: format!(
                "not a valid PEM file ({err}); give the certificate in PEM form, as `sluice certs` writes it"
            ),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: path.to_path_buf(),
            message: "no certificate found; expected a '-----BEGIN CERTIFICATE-----' block (did you give the key file instead?)".to_string(),
        });
    }
    for cert in &certs {
        if let Err(err) = x509_parser::parse_x509_certificate(cert) {
            return Err(TlsError::Certificate {
                path: path.to_path_buf(),
                message: format!("not a valid X.509 certificate ({err}); regenerate it or give the right file"),
            });
        }
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path, PEM_FILE_BYTES_MAX)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| TlsError::Key {
        path: path.to_path_buf(),
        message: match err {
            pem::Error::NoItemsFound => "no private key found; expected a '-----BEGIN PRIVATE KEY-----' block (did you give the certificate file instead?)".to_string(),
            other => format!("not a valid PEM private key ({other}); give the key in PEM form, as `sluice certs` writes it"),
        },
    })
}

/// Where `now` falls relative to a certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validity {
    Valid,
    Expired,
    NotYetValid,
    /// The DER does not parse as a certificate.
    Unparsable,
}

/// Checks `not_before <= now <= not_after` (whole seconds, as certificates record them).
pub(crate) fn validity(cert_der: &[u8], now: UnixTime) -> Validity {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Validity::Unparsable;
    };
    let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let window = cert.validity();
    if now_s < window.not_before.timestamp() {
        Validity::NotYetValid
    } else if now_s > window.not_after.timestamp() {
        Validity::Expired
    } else {
        Validity::Valid
    }
}
