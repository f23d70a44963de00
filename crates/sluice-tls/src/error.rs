//! The one error type of this crate: every variant names the file involved and says how to fix it.
//! It does not decide what to do about an error (log, exit, keep the old config): callers do.

use std::io;
use std::path::PathBuf;

/// What went wrong while loading, reloading or generating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Read { path: PathBuf, source: io::Error },

    /// A file could not be written (certificate generation).
    #[error("cannot write {}: {source}; check that the directory is writable", path.display())]
    Write { path: PathBuf, source: io::Error },

    /// A file is larger than any sane file of its kind (a wrong path, most likely).
    #[error("{} is {size_bytes} bytes, more than the {max_bytes} bytes allowed for it; check that the path names the right file", path.display())]
    TooLarge { path: PathBuf, size_bytes: u64, max_bytes: u64 },

    /// A line of an allow list is wrong.
    #[error("{}:{line}: {message}", path.display())]
    AllowList { path: PathBuf, line: usize, message: String },

    /// A certificate file is empty, not PEM, or holds something that is not a certificate.
    #[error("{}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },

    /// A private key file is empty, not PEM, or holds a key of an unsupported kind.
    #[error("{}: {message}", path.display())]
    Key { path: PathBuf, message: String },

    /// rustls refused the material (for example a key that does not match its certificate).
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },

    /// Certificate generation would overwrite an existing file.
    #[error("{} already exists; choose another directory or remove the file", path.display())]
    Exists { path: PathBuf },

    /// A generation request that cannot be honoured (bad client name, zero days, no SAN).
    #[error("{0}")]
    InvalidSpec(String),

    /// rcgen failed to build a key or a certificate.
    #[error("cannot generate {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}
