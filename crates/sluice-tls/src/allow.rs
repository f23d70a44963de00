//! The client allow list: which client certificates may connect to a supervisor.
//! It only answers "is this fingerprint listed"; validity dates and signatures are checked by the
//! verifier in `server.rs` at handshake time.
//!
//! # File format
//!
//! UTF-8 text, one entry per line; blank lines and lines starting with `#` are ignored, and a
//! fingerprint line may end with a `# comment`. An entry is either
//! - a SHA-256 fingerprint of the client certificate's DER, in any of the notations
//!   [`parse_fingerprint`](crate::parse_fingerprint) accepts, or
//! - a whole PEM certificate block (`-----BEGIN CERTIFICATE-----` ... `-----END CERTIFICATE-----`),
//!   which stands for its fingerprint.
//!
//! ```text
//! # client "store" (store.pem)
//! sha256:6c2b0a6f0f5a1f7c0b7e1e0e4a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e
//! AB:CD:...:EF            # pasted from `openssl x509 -noout -fingerprint -sha256`
//! -----BEGIN CERTIFICATE-----
//! MIIB...
//! -----END CERTIFICATE-----
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::files::read_bounded;
use crate::fingerprint::hex_digit_count;
use crate::{fingerprint, format_fingerprint, parse_fingerprint, Fingerprint, TlsError};

/// Largest allow-list file read: about 100,000 fingerprint lines, far more than any deployment.
pub const ALLOW_LIST_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// How much of an unparsable line an error message quotes.
const QUOTE_CHARS_MAX: usize = 40;

const PEM_BEGIN: &str = "-----BEGIN ";
const PEM_BEGIN_CERT: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END_CERT: &str = "-----END CERTIFICATE-----";

/// Allowed client certificates, by SHA-256 fingerprint. Duplicates count once.
#[derive(Clone, PartialEq, Eq)]
pub struct AllowList {
    fingerprints: HashSet<Fingerprint>,
    origin: PathBuf,
}

impl AllowList {
    /// Parses the text of an allow list (format in the module docs). `origin` is only used to
    /// name the file in errors, which also give the line number and the fix.
    pub fn parse(text: &str, origin: &Path) -> Result<AllowList, TlsError> {
        let err = |line: usize, message: String| TlsError::AllowList { path: origin.to_path_buf(), line, message };
        let mut fingerprints = HashSet::new();
        // The PEM block being collected: its first line number and its text so far.
        let mut block: Option<(usize, String)> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if let Some((start, pem)) = block.as_mut() {
                pem.push_str(line);
                pem.push('\n');
                if line == PEM_END_CERT {
                    let start = *start;
                    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                        err(start, format!("the certificate starting on this line is not valid PEM ({e}); paste the whole block from the client's .pem file"))
                    })?;
                    if let Err(e) = x509_parser::parse_x509_certificate(&der) {
                        return Err(err(start, format!("the certificate starting on this line is not a valid X.509 certificate ({e}); paste the client's certificate or its fingerprint")));
                    }
                    fingerprints.insert(fingerprint(&der));
                    block = None;
                } else if line.starts_with(PEM_BEGIN) {
                    return Err(err(*start, format!("the certificate starting on this line has no '{PEM_END_CERT}' line before line {line_no}; paste the whole block")));
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == PEM_BEGIN_CERT {
                block = Some((line_no, format!("{line}\n")));
                continue;
            }
            if let Some(label) = line.strip_prefix(PEM_BEGIN) {
                let label = label.trim_end_matches('-');
                let message = if label.contains("PRIVATE KEY") {
                    "a private key does not belong in an allow list; list the client's certificate or its fingerprint, and keep the key secret".to_string()
                } else {
                    format!("a PEM '{label}' block is not allowed here; list client certificates ('CERTIFICATE' blocks) or their fingerprints")
                };
                return Err(err(line_no, message));
            }
            let entry = line.split('#').next().unwrap_or_default().trim();
            match parse_fingerprint(entry) {
                Some(fp) => {
                    fingerprints.insert(fp);
                }
                None => return Err(err(line_no, explain_bad_entry(entry))),
            }
        }
        if let Some((start, _)) = block {
            return Err(err(
                start,
                format!("the certificate starting on this line has no '{PEM_END_CERT}' line; paste the whole block"),
            ));
        }
        Ok(AllowList { fingerprints, origin: origin.to_path_buf() })
    }

    /// Reads and parses the allow list at `path`.
    pub fn load(path: &Path) -> Result<AllowList, TlsError> {
        let bytes = read_bounded(path, ALLOW_LIST_BYTES_MAX)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            TlsError::AllowList {
                path: path.to_path_buf(),
                line,
                message: "not UTF-8 text; an allow list holds fingerprints and PEM certificates only".to_string(),
            }
        })?;
        Self::parse(&text, path)
    }

    /// Whether `fp` is listed.
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.fingerprints.contains(fp)
    }

    /// The number of distinct fingerprints listed.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Whether nothing is listed (then every client is refused).
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// The listed fingerprints, in no particular order.
    pub fn fingerprints(&self) -> impl Iterator<Item = &Fingerprint> {
        self.fingerprints.iter()
    }

    /// The file this list was read from (as given to `parse` or `load`).
    pub fn origin(&self) -> &Path {
        &self.origin
    }
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut listed: Vec<String> = self.fingerprints.iter().map(format_fingerprint).collect();
        listed.sort_unstable();
        f.debug_struct("AllowList").field("origin", &self.origin).field("fingerprints", &listed).finish()
    }
}

/// Says why `entry` is neither a fingerprint nor a PEM line, quoting a little of it.
fn explain_bad_entry(entry: &str) -> String {
    if let Some(digits) = hex_digit_count(entry) {
        if digits != 64 {
            return format!("a fingerprint with {digits} hex digits; expected a SHA-256 fingerprint of 64 hex digits (SHA-1 or truncated fingerprints are not accepted), as `sluice certs` prints it");
        }
    }
    let quoted: String = entry.chars().take(QUOTE_CHARS_MAX).collect();
    let ellipsis = if entry.chars().count() > QUOTE_CHARS_MAX { "..." } else { "" };
    format!("'{quoted}{ellipsis}' is neither a certificate fingerprint nor a PEM certificate; write 'sha256:' and 64 hex digits, or paste a '{PEM_BEGIN_CERT}' block, or start the line with '#' to make it a comment")
}

// unwrap() is the house habit in tests (STYLE.md); the workspace lint is for library code.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/sluice/allowed-clients.txt";
    const HEX_A: &str = "000102030405060708090a0b0c0d0e0fa0b1c2d3e4f5162738495a6b7c8d9eff";
    const HEX_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn parse(text: &str) -> Result<AllowList, TlsError> {
        AllowList::parse(text, Path::new(ORIGIN))
    }

    fn fp(hex: &str) -> Fingerprint {
        parse_fingerprint(hex).expect("test fingerprint")
    }

    fn error_text(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn empty_and_comments_only() {
        let list = parse("\n# nothing yet\n   \n\t# indented comment\n").unwrap();
        assert!(list.is_empty());
        assert_eq!(list.origin(), Path::new(ORIGIN));
    }

    #[test]
    fn fingerprints_with_comments_and_duplicates() {
        let text = format!(
            "# store\nsha256:{HEX_A}\r\n  {}   # same one, upper case\n{HEX_B} # other\n",
            HEX_A.to_uppercase()
        );
        let list = parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains(&fp(HEX_A)));
        assert!(list.contains(&fp(HEX_B)));
        assert!(!list.contains(&[7; 32]));
    }

    #[test]
    fn bad_line_names_file_line_and_fix() {
        let text = format!("# ok\nsha256:{HEX_A}\n\nnot a fingerprint\n");
        let message = error_text(&text);
        assert!(message.starts_with(&format!("{ORIGIN}:4: 'not a fingerprint'")), "{message}");
        assert!(message.contains("'sha256:' and 64 hex digits"), "{message}");
    }

    #[test]
    fn short_fingerprint_says_digit_count() {
        let message = error_text("sha256:abcdef\n");
        assert!(message.starts_with(&format!("{ORIGIN}:1: a fingerprint with 6 hex digits")), "{message}");
    }

    #[test]
    fn long_garbage_is_quoted_briefly() {
        let message = error_text(&"x".repeat(500));
        assert!(message.contains(&format!("'{}...'", "x".repeat(QUOTE_CHARS_MAX))), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn private_key_block_is_refused() {
        let message = error_text("\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(message.starts_with(&format!("{ORIGIN}:2: a private key does not belong")), "{message}");
    }

    #[test]
    fn other_pem_block_is_refused() {
        let message = error_text("-----BEGIN CERTIFICATE REQUEST-----\n");
        assert!(message.contains("'CERTIFICATE REQUEST' block is not allowed"), "{message}");
    }

    #[test]
    fn unterminated_certificate_points_at_its_start() {
        let message = error_text("# x\n-----BEGIN CERTIFICATE-----\nMIIB\n");
        assert!(message.starts_with(&format!("{ORIGIN}:2: the certificate starting on this line has no")), "{message}");
    }

    #[test]
    fn garbage_certificate_points_at_its_start() {
        let message = error_text("\n\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(
            message.starts_with(&format!("{ORIGIN}:3: the certificate starting on this line is not a valid X.509")),
            "{message}"
        );
    }

    #[test]
    fn pem_certificate_stands_for_its_fingerprint() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap().self_signed(&key).unwrap();
        let text = format!("# a pasted certificate\n{}\nsha256:{HEX_B}\n", cert.pem());
        let list = parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains(&fingerprint(cert.der())));
    }

    #[test]
    fn load_refuses_non_utf8_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allow.txt");
        std::fs::write(&path, b"# fine\n# also fine\n\xff\xfe\n").unwrap();
        let message = AllowList::load(&path).unwrap_err().to_string();
        assert!(message.contains("allow.txt:3: not UTF-8"), "{message}");
    }

    #[test]
    fn load_names_missing_file() {
        let message = AllowList::load(Path::new("/nonexistent/allow.txt")).unwrap_err().to_string();
        assert!(message.starts_with("cannot read /nonexistent/allow.txt"), "{message}");
    }
}
