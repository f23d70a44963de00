//! Certificate generation for `sluice certs` and for tests: a CA, a server certificate and client
//! certificates (ECDSA P-256, via rcgen), plus an allow list naming the clients.
//! It never overwrites a file, and it is not a CA service: no revocation, no renewal.
//!
//! Files written into the directory (keys mode 0600, the rest 0644; a directory it creates gets
//! mode 0700):
//! `ca.pem` `ca.key` `server.pem` `server.key` `<client>.pem` `<client>.key` `allowed-clients.txt`.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::files::{read_bounded, PEM_FILE_BYTES_MAX};
use crate::{fingerprint, format_fingerprint, Fingerprint, TlsError};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";
pub const ALLOW_LIST_FILE: &str = "allowed-clients.txt";

/// Validity of generated certificates unless told otherwise: 825 days, the longest that Apple
/// platforms accept for a TLS server certificate.
pub const DAYS_DEFAULT: u32 = 825;
/// A century; longer is a typo.
pub const DAYS_MAX: u32 = 36_500;
/// Longest client name; it becomes a file name and a certificate common name.
pub const CLIENT_NAME_CHARS_MAX: usize = 64;
/// Certificates start this long before "now", so a peer whose clock is a little behind does not
/// refuse a certificate made a moment ago.
const BACKDATE: time::Duration = time::Duration::minutes(5);

const ORGANIZATION: &str = "sluice";
const KEY_FILE_MODE: u32 = 0o600;
const PUBLIC_FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Names and addresses the server certificate is valid for; strings that parse as IP
    /// addresses become IP SANs, the rest DNS names.
    pub server_sans: Vec<String>,
    /// One client certificate per name; the name is the common name and the file stem.
    pub clients: Vec<String>,
    /// Validity of every certificate, from now.
    pub days: u32,
}

impl Default for CertSpec {
    fn default() -> Self {
        CertSpec {
            server_sans: vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()],
            clients: vec!["store".to_string()],
            days: DAYS_DEFAULT,
        }
    }
}

/// Where [`generate`] put things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// (name, certificate, key, fingerprint) per client, in the order asked for.
    pub clients: Vec<(String, PathBuf, PathBuf, Fingerprint)>,
    pub server_fingerprint: Fingerprint,
    pub allow_list: PathBuf,
}

/// Writes a CA, a server certificate, the client certificates and an allow list into `dir`
/// (created if missing). Refuses, before writing anything, if any of the files exists.
pub fn generate(dir: &Path, spec: &CertSpec) -> Result<Generated, TlsError> {
    check_spec(spec)?;
    let path = |name: &str| dir.join(name);
    let mut targets = vec![
        path(CA_CERT_FILE),
        path(CA_KEY_FILE),
        path(SERVER_CERT_FILE),
        path(SERVER_KEY_FILE),
        path(ALLOW_LIST_FILE),
    ];
    for client in &spec.clients {
        targets.push(path(&format!("{client}.pem")));
        targets.push(path(&format!("{client}.key")));
    }
    for target in &targets {
        refuse_existing(target)?;
    }

    let not_before = OffsetDateTime::now_utc() - BACKDATE;
    let not_after = OffsetDateTime::now_utc() + time::Duration::days(i64::from(spec.days));

    let ca_key = new_key("the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = distinguished_name("sluice CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca = ca_params.self_signed(&ca_key).map_err(|source| generate_err("the CA certificate", source))?;

    let server_key = new_key("the server key")?;
    let server_params = leaf_params(
        "sluice server",
        spec.server_sans.clone(),
        ExtendedKeyUsagePurpose::ServerAuth,
        not_before,
        not_after,
    )?;
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(|source| generate_err("the server certificate", source))?;
    let server_fingerprint = fingerprint(server.der());

    let mut clients = Vec::with_capacity(spec.clients.len());
    let mut client_files = Vec::with_capacity(spec.clients.len());
    for name in &spec.clients {
        let key = new_key(&format!("the key of client {name:?}"))?;
        let cert = leaf_params(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, not_before, not_after)?
            .signed_by(&key, &ca, &ca_key)
            .map_err(|source| generate_err(&format!("the certificate of client {name:?}"), source))?;
        let cert_path = path(&format!("{name}.pem"));
        let key_path = path(&format!("{name}.key"));
        clients.push((name.clone(), cert_path.clone(), key_path.clone(), fingerprint(cert.der())));
        client_files.push((cert_path, cert.pem(), key_path, key.serialize_pem()));
    }

    create_dir(dir)?;
    write_new(&path(CA_CERT_FILE), ca.pem().as_bytes(), PUBLIC_FILE_MODE)?;
    write_new(&path(CA_KEY_FILE), ca_key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    write_new(&path(SERVER_CERT_FILE), server.pem().as_bytes(), PUBLIC_FILE_MODE)?;
    write_new(&path(SERVER_KEY_FILE), server_key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    for (cert_path, cert_pem, key_path, key_pem) in &client_files {
        write_new(cert_path, cert_pem.as_bytes(), PUBLIC_FILE_MODE)?;
        write_new(key_path, key_pem.as_bytes(), KEY_FILE_MODE)?;
    }
    write_new(&path(ALLOW_LIST_FILE), allow_list_text(&clients).as_bytes(), PUBLIC_FILE_MODE)?;

    Ok(Generated {
        dir: dir.to_path_buf(),
        ca: path(CA_CERT_FILE),
        server_cert: path(SERVER_CERT_FILE),
        server_key: path(SERVER_KEY_FILE),
        clients,
        server_fingerprint,
        allow_list: path(ALLOW_LIST_FILE),
    })
}

/// Writes `<name>.pem` and `<name>.key` into `dir`: a client certificate signed by the CA that
/// [`generate`] left there (`ca.pem`, `ca.key`), valid from `not_before` to `not_after` (an
/// expired or future window is allowed: tests use them). The allow list is not touched.
/// Returns the certificate path, the key path and the fingerprint.
pub fn generate_client_with_validity(
    dir: &Path,
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(PathBuf, PathBuf, Fingerprint), TlsError> {
    check_client_name(name)?;
    if not_before > not_after {
        return Err(TlsError::InvalidSpec(format!(
            "validity of client {name:?} ends before it starts ({not_before} > {not_after}); swap the dates"
        )));
    }
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    refuse_existing(&cert_path)?;
    refuse_existing(&key_path)?;

    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_pem = read_text(&ca_cert_path)?;
    let ca_key_pem = read_text(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Key {
        path: ca_key_path.clone(),
        message: format!("not a usable CA key ({e}); give the ca.key written by `sluice certs`"),
    })?;
    // rcgen signs with an issuer `Certificate`; rebuilding one from the CA's own fields (same
    // name, same key identifier, same key) makes the new certificate chain to the file on disk.
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(|e| TlsError::Certificate {
            path: ca_cert_path.clone(),
            message: format!("not a usable CA certificate ({e}); give the ca.pem written by `sluice certs`"),
        })?
        .self_signed(&ca_key)
        .map_err(|source| generate_err("the CA certificate", source))?;

    let key = new_key(&format!("the key of client {name:?}"))?;
    let cert = leaf_params(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, not_before, not_after)?
        .signed_by(&key, &ca, &ca_key)
        .map_err(|source| generate_err(&format!("the certificate of client {name:?}"), source))?;
    write_new(&cert_path, cert.pem().as_bytes(), PUBLIC_FILE_MODE)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    Ok((cert_path, key_path, fingerprint(cert.der())))
}

/// The allow list written beside the certificates: a header, then per client a comment line
/// naming it and its fingerprint.
fn allow_list_text(clients: &[(String, PathBuf, PathBuf, Fingerprint)]) -> String {
    let mut text = String::from(
        "# sluice allow list: client certificates the supervisor accepts (--allow-clients).\n\
         # One SHA-256 fingerprint or PEM certificate per entry; '#' starts a comment.\n\
         # The supervisor re-reads this file on SIGHUP.\n",
    );
    for (name, cert, _, fp) in clients {
        let file = cert.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
        text.push_str(&format!("\n# client {name:?} ({file})\n{}\n", format_fingerprint(fp)));
    }
    text
}

fn check_spec(spec: &CertSpec) -> Result<(), TlsError> {
    if spec.days == 0 || spec.days > DAYS_MAX {
        return Err(TlsError::InvalidSpec(format!(
            "certificate validity of {} days is out of range; give 1 to {DAYS_MAX} days",
            spec.days
        )));
    }
    if spec.server_sans.is_empty() {
        return Err(TlsError::InvalidSpec(
            "no server name given; give at least one DNS name or IP address for the server certificate".to_string(),
        ));
    }
    if let Some(san) = spec.server_sans.iter().find(|san| san.trim().is_empty() || san.trim() != san.as_str()) {
        return Err(TlsError::InvalidSpec(format!(
            "server name {san:?} is empty or has surrounding spaces; give DNS names or IP addresses"
        )));
    }
    for (index, name) in spec.clients.iter().enumerate() {
        check_client_name(name)?;
        if spec.clients[..index].contains(name) {
            return Err(TlsError::InvalidSpec(format!(
                "client {name:?} is named twice; give each client a distinct name"
            )));
        }
    }
    Ok(())
}

/// A client name becomes `<name>.pem`: keep it a plain, unsurprising file stem.
fn check_client_name(name: &str) -> Result<(), TlsError> {
    let plain = !name.is_empty()
        && name.len() <= CLIENT_NAME_CHARS_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['.', '-']);
    if !plain {
        return Err(TlsError::InvalidSpec(format!(
            "client name {name:?} is not usable as a file name; use 1 to {CLIENT_NAME_CHARS_MAX} letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        )));
    }
    if matches!(name, "ca" | "server") {
        return Err(TlsError::InvalidSpec(format!(
            "client name {name:?} would clash with the {name}.pem file; choose another name"
        )));
    }
    Ok(())
}

fn leaf_params(
    common_name: &str,
    sans: Vec<String>,
    purpose: ExtendedKeyUsagePurpose,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, TlsError> {
    // rcgen turns every SAN that parses as an IP address into an IP SAN, the rest into DNS names.
    let mut params = CertificateParams::new(sans.clone()).map_err(|e| {
        TlsError::InvalidSpec(format!(
            "server names {sans:?} are not all valid DNS names or IP addresses ({e}); fix the names"
        ))
    })?;
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn new_key(what: &str) -> Result<KeyPair, TlsError> {
    // rcgen's default: ECDSA P-256 with SHA-256, which every TLS stack accepts.
    KeyPair::generate().map_err(|source| generate_err(what, source))
}

fn generate_err(what: &str, source: rcgen::Error) -> TlsError {
    TlsError::Generate { what: what.to_string(), source }
}

fn refuse_existing(path: &Path) -> Result<(), TlsError> {
    // symlink_metadata: a dangling symlink is "existing" too, and must not be written through.
    if path.symlink_metadata().is_ok() {
        return Err(TlsError::Exists { path: path.to_path_buf() });
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })
}

/// Creates `path` (never replacing a file: create_new also closes the race with the check
/// above) with `mode`, and syncs it, so a key is never left half-written by a crash.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists { path: path.to_path_buf() }
        } else {
            TlsError::Write { path: path.to_path_buf(), source }
        }
    };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    let bytes = read_bounded(path, PEM_FILE_BYTES_MAX)?;
    String::from_utf8(bytes).map_err(|_| TlsError::Certificate {
        path: path.to_path_buf(),
        message: "not PEM text; give the file written by `sluice certs`".to_string(),
    })
}

// unwrap() is the house habit in tests (STYLE.md); the workspace lint is for library code.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_every_file_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new/certs");
        let spec = CertSpec { clients: vec!["store".to_string(), "curl".to_string()], ..CertSpec::default() };
        let generated = generate(&dir, &spec).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        for key in [&generated.server_key, &dir.join(CA_KEY_FILE), &generated.clients[1].2] {
            assert_eq!(mode(key), KEY_FILE_MODE, "{}", key.display());
        }
        for public in [&generated.ca, &generated.server_cert, &generated.allow_list, &generated.clients[0].1] {
            assert_eq!(mode(public), PUBLIC_FILE_MODE, "{}", public.display());
        }
        let names: Vec<&str> = generated.clients.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["store", "curl"]);

        let list = crate::AllowList::load(&generated.allow_list).unwrap();
        assert_eq!(list.len(), 2);
        for (_, cert, _, fp) in &generated.clients {
            assert!(list.contains(fp));
            let der = crate::files::load_certs(cert).unwrap();
            assert_eq!(fingerprint(&der[0]), *fp);
        }
        let text = std::fs::read_to_string(&generated.allow_list).unwrap();
        assert!(text.contains("# client \"curl\" (curl.pem)\nsha256:"), "{text}");
        let server = crate::files::load_certs(&generated.server_cert).unwrap();
        assert_eq!(fingerprint(&server[0]), generated.server_fingerprint);
    }

    #[test]
    fn server_sans_split_into_ip_and_dns() {
        let tmp = tempfile::tempdir().unwrap();
        let generated = generate(tmp.path(), &CertSpec::default()).unwrap();
        let der = crate::files::load_certs(&generated.server_cert).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san.value.general_names.iter().map(|n| format!("{n:?}")).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].starts_with("DNSName(\"localhost\")"), "{names:?}");
        assert!(names[1].starts_with("IPAddress([127, 0, 0, 1])"), "{names:?}");
        assert!(names[2].starts_with("IPAddress([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])"), "{names:?}");
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
        assert_eq!(days, i64::from(DAYS_DEFAULT));
    }

    #[test]
    fn refuses_to_overwrite_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("store.key"), "precious").unwrap();
        let message = generate(tmp.path(), &CertSpec::default()).unwrap_err().to_string();
        assert!(
            message.ends_with("store.key already exists; choose another directory or remove the file"),
            "{message}"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "nothing else written");
        assert_eq!(std::fs::read_to_string(tmp.path().join("store.key")).unwrap(), "precious");
    }

    #[test]
    fn refuses_bad_specs() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            (CertSpec { days: 0, ..CertSpec::default() }, "out of range"),
            (CertSpec { server_sans: vec![], ..CertSpec::default() }, "no server name"),
            (CertSpec { server_sans: vec![" x".to_string()], ..CertSpec::default() }, "surrounding spaces"),
            (CertSpec { clients: vec!["../evil".to_string()], ..CertSpec::default() }, "not usable as a file name"),
            (CertSpec { clients: vec!["server".to_string()], ..CertSpec::default() }, "clash"),
            (CertSpec { clients: vec!["a".to_string(), "a".to_string()], ..CertSpec::default() }, "named twice"),
            (CertSpec { server_sans: vec!["bücher.example".to_string()], ..CertSpec::default() }, "not all valid"),
        ];
        for (spec, expected) in cases {
            let message = generate(tmp.path(), &spec).unwrap_err().to_string();
            assert!(message.contains(expected), "{spec:?}: {message}");
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn extra_client_chains_to_the_ca_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        generate(tmp.path(), &CertSpec::default()).unwrap();
        let now = OffsetDateTime::now_utc();
        let (cert, key, fp) = generate_client_with_validity(
            tmp.path(),
            "late",
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
        assert_eq!(mode(&key), KEY_FILE_MODE);
        let der = crate::files::load_certs(&cert).unwrap();
        assert_eq!(fingerprint(&der[0]), fp);
        let ca_der = crate::files::load_certs(&tmp.path().join(CA_CERT_FILE)).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der[0]).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        assert!(leaf.validity().not_after.timestamp() < now.unix_timestamp());
        // Same name again: refused, files untouched.
        let again = generate_client_with_validity(tmp.path(), "late", now, now).unwrap_err();
        assert!(matches!(again, TlsError::Exists { .. }), "{again}");
    }
}
