//! The files of `sluice demo` (its working directory, certificates, tokens, the store's config)
//! and the one plain-HTTP GET it needs to see the store come up. It starts no process.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sluice_tls::CertSpec;

/// Random bytes in a token secret: 128 bits, written as 32 hex digits.
const TOKEN_SECRET_BYTES: usize = 16;
/// Random bytes in the name of a temporary directory.
const DIR_SUFFIX_BYTES: usize = 6;
/// The certificates outlive any demo; `--keep` may bring a directory back a while later.
const CERT_DAYS: u32 = 30;
/// Name of the store's client certificate (the one supervisors allow).
const STORE_CLIENT: &str = "store";
/// Connecting to, and hearing from, the store on loopback; it answers in milliseconds when up.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read: /metrics of a few dozen sources is tens of kilobytes.
const HTTP_RESPONSE_BYTES_MAX: u64 = 4 << 20;

/// The directory everything lives in: a fresh temporary one, removed by [`WorkDir::finish`] (or
/// on drop), or the `--keep` directory, never removed.
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
    removed: bool,
}

impl WorkDir {
    /// `keep`: create it if missing; an existing one must be empty, so that nothing of the user's
    /// is mixed with (or overwritten by) the demo's files.
    pub fn create(keep: Option<&Path>) -> anyhow::Result<WorkDir> {
        let Some(keep) = keep else {
            let name = format!("sluice-demo-{}", random_hex(DIR_SUFFIX_BYTES)?);
            let path = std::env::temp_dir().join(name);
            // 0700: the directory holds private keys and token secrets.
            DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .with_context(|| format!("cannot create the temporary directory {}; set TMPDIR", path.display()))?;
            return Ok(WorkDir { path, keep: false, removed: false });
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(keep)
            .with_context(|| format!("--keep: cannot create {}", keep.display()))?;
        let path = std::fs::canonicalize(keep).with_context(|| format!("--keep: cannot resolve {}", keep.display()))?;
        let mut entries =
            std::fs::read_dir(&path).with_context(|| format!("--keep: cannot read {}", path.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "--keep: {} is not empty; give a new or empty directory (the demo does not reuse one)",
            path.display()
        );
        Ok(WorkDir { path, keep: true, removed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory unless it is kept, and says what happened to it.
    pub fn finish(mut self) {
        if self.keep {
            eprintln!("sluice demo: everything is kept in {}", self.path.display());
        } else {
            self.remove();
        }
    }

    fn remove(&mut self) {
        self.removed = true;
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("sluice demo: warning: cannot remove {}: {e}; remove it by hand", self.path.display());
        }
    }
}

impl Drop for WorkDir {
    /// A panic or an early return must not leave keys and tokens in the temporary directory.
    fn drop(&mut self) {
        if !self.keep && !self.removed {
            self.remove();
        }
    }
}

/// The certificate files the supervisors and the store are started with.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub allow_list: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// `DIR/certs`: what `sluice certs --client store` writes.
pub fn certificates(dir: &Path) -> anyhow::Result<Certs> {
    let spec = CertSpec { clients: vec![STORE_CLIENT.to_string()], days: CERT_DAYS, ..CertSpec::default() };
    let g = sluice_tls::generate(&dir.join("certs"), &spec).context("cannot create the demo's certificates")?;
    let (_, client_cert, client_key, _) = g.clients.into_iter().next().context("no client certificate was made")?;
    Ok(Certs {
        ca: g.ca,
        server_cert: g.server_cert,
        server_key: g.server_key,
        allow_list: g.allow_list,
        client_cert,
        client_key,
    })
}

/// The two API tokens of the demo.
pub struct Tokens {
    pub file: PathBuf,
    /// Roles viewer, pii and admin: the person running the demo.
    pub admin: String,
    /// Role viewer alone: sees `pii_*` values masked.
    pub viewer: String,
}

/// `DIR/tokens.toml` (mode 0600), in the format of the store's tokens file.
pub fn tokens(dir: &Path) -> anyhow::Result<Tokens> {
    let admin = random_hex(TOKEN_SECRET_BYTES)?;
    let viewer = random_hex(TOKEN_SECRET_BYTES)?;
    let text = tokens_toml(&user_name(), &admin, &viewer);
    let file = dir.join("tokens.toml");
    write_private(&file, &text)?;
    Ok(Tokens { file, admin, viewer })
}

fn tokens_toml(user: &str, admin: &str, viewer: &str) -> String {
    format!(
        "# API tokens of `sluice demo`.\n\
         [[token]]\nname = \"{user}\"\nsecret = \"{admin}\"\nroles = [\"viewer\", \"pii\", \"admin\"]\n\n\
         [[token]]\nname = \"viewer\"\nsecret = \"{viewer}\"\nroles = [\"viewer\"]\n"
    )
}

/// The name the full token is logged under: the login name when it is a plain word, else "you".
fn user_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 32 && u.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        .unwrap_or_else(|| "you".to_string())
}

/// `DIR/store.toml`, pulling from `sources` (name, https URL). Paths in it are relative to `dir`,
/// which the store resolves against the file's directory, so the file needs no quoting of paths.
pub fn store_config(
    dir: &Path,
    listen: SocketAddr,
    certs: &Certs,
    tokens: &Tokens,
    sources: &[(String, String)],
) -> anyhow::Result<PathBuf> {
    let rel = |p: &Path| -> anyhow::Result<String> {
        let r = p.strip_prefix(dir).with_context(|| format!("{} is outside {}", p.display(), dir.display()))?;
        r.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8", r.display()))
    };
    let text = store_toml(
        listen,
        [rel(&certs.client_cert)?, rel(&certs.client_key)?, rel(&certs.ca)?, rel(&tokens.file)?],
        sources,
    );
    let file = dir.join("store.toml");
    write_private(&file, &text)?;
    Ok(file)
}

fn store_toml(listen: SocketAddr, [cert, key, ca, tokens]: [String; 4], sources: &[(String, String)]) -> String {
    let mut text = format!(
        "# The store of `sluice demo`; paths are relative to this file.\n\
         data_dir = \"store\"\nlisten = \"{listen}\"\n\
         [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\n\
         [api]\ntokens = \"{tokens}\"\n"
    );
    for (name, url) in sources {
        text.push_str(&format!("[[source]]\nname = \"{name}\"\nurl = \"{url}\"\n"));
    }
    text
}

/// Creates `path` (it must not exist) with mode 0600 and `text`.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// `bytes` random bytes from the kernel, as lowercase hex.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read random bytes from /dev/urandom for the demo's tokens")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// One GET on loopback plain HTTP: the status and the body. HTTP/1.0, so that the server closes
/// the connection after its answer and the body comes without chunked framing.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())?;
    let mut answer = Vec::new();
    stream.take(HTTP_RESPONSE_BYTES_MAX).read_to_end(&mut answer)?;
    parse_response(&answer).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{addr}{path} sent no HTTP answer"))
    })
}

fn parse_response(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_has_one_full_and_one_viewer_token() {
        let text = tokens_toml("alice", "a".repeat(32).as_str(), "b".repeat(32).as_str());
        let expected = format!(
            "# API tokens of `sluice demo`.\n\
             [[token]]\nname = \"alice\"\nsecret = \"{}\"\nroles = [\"viewer\", \"pii\", \"admin\"]\n\n\
             [[token]]\nname = \"viewer\"\nsecret = \"{}\"\nroles = [\"viewer\"]\n",
            "a".repeat(32),
            "b".repeat(32)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn store_config_names_certificates_tokens_and_sources() {
        let text = store_toml(
            "127.0.0.1:7800".parse().expect("an address"),
            ["certs/store.pem", "certs/store.key", "certs/ca.pem", "tokens.toml"].map(String::from),
            &[("web-1".to_string(), "https://127.0.0.1:4001".to_string())],
        );
        assert_eq!(
            text,
            "# The store of `sluice demo`; paths are relative to this file.\n\
             data_dir = \"store\"\nlisten = \"127.0.0.1:7800\"\n\
             [tls]\ncert = \"certs/store.pem\"\nkey = \"certs/store.key\"\nca = \"certs/ca.pem\"\n\
             [api]\ntokens = \"tokens.toml\"\n\
             [[source]]\nname = \"web-1\"\nurl = \"https://127.0.0.1:4001\"\n"
        );
    }

    #[test]
    fn responses_give_status_and_body() {
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nok\n"),
            Some((200, "ok\n".to_string()))
        );
        assert_eq!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n"), Some((404, String::new())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn random_hex_is_hex_of_the_length_asked() {
        let a = random_hex(16).expect("urandom");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(16).expect("urandom"));
    }
}
