//! TLS for sluice: the supervisor's mutual-TLS server config with a client-certificate allow list
//! (reloadable), client configs for the store and tests, and certificate generation.
//! It does no networking itself and never touches rustls's process-wide default provider: every
//! config is built with the ring provider explicitly.
//!
//! The server admits a client iff the SHA-256 fingerprint of its certificate is on the allow list
//! and the certificate is within its validity dates; the client proves it holds the key as usual.
//! No CA is consulted on the server side: the allow list is the whole trust decision.

mod allow;
mod client;
mod error;
mod files;
mod fingerprint;
mod generate;
mod server;

use std::sync::Arc;

pub use allow::{AllowList, ALLOW_LIST_BYTES_MAX};
pub use client::{client_config, Trust};
pub use error::TlsError;
pub use fingerprint::{fingerprint, format_fingerprint, parse_fingerprint, Fingerprint};
pub use generate::{
    generate, generate_client_with_validity, CertSpec, Generated, ALLOW_LIST_FILE, CA_CERT_FILE, CA_KEY_FILE,
    DAYS_DEFAULT, SERVER_CERT_FILE, SERVER_KEY_FILE,
};
pub use server::{peer_fingerprint, rejection, RejectReason, Rejection, ReloadSummary, ServerTls};

/// The only application protocol sluice speaks over TLS.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// TLS 1.3 preferred; 1.2 for older clients (curl builds, load balancers).
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ring crypto provider every sluice config uses. Public so that other crates building
/// rustls configs of their own use the same one rather than a process default.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
