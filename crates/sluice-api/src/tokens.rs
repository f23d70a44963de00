//! API tokens: the tokens file, its checks, and deciding who a `Bearer` secret belongs to.
//! It does not read HTTP headers or decide what a role may do (the API does).
//!
//! The file, named by `[api] tokens` in store.toml (or `--tokens`):
//!
//! ```toml
//! [[token]]
//! name = "alice"                 # shown in logs, never the secret
//! secret = "s3cr3t-0123456789"   # at least 16 characters, visible ASCII
//! roles = ["viewer"]             # viewer | pii | admin
//! ```
//!
//! `pii` and `admin` each imply `viewer`; `admin` does not imply `pii` (running the store is not
//! a reason to read personal data). Unknown keys and roles are errors, as are a secret shorter
//! than [`SECRET_CHARS_MIN`] and a secret or name used twice; every error names the file, the line
//! and the fix.
//!
//! Secrets are kept only as SHA-256 digests, and a presented secret is hashed and compared with
//! every digest without an early exit, so the time taken does not depend on how much of a secret
//! a guess got right.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

/// Shortest secret accepted: 16 random characters are beyond guessing over HTTP.
pub const SECRET_CHARS_MIN: usize = 16;
/// Longest secret accepted; it travels in a header.
pub const SECRET_CHARS_MAX: usize = 1024;
/// A tokens file larger than this is the wrong file.
pub const TOKENS_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest token name; it goes into logs.
pub const NAME_CHARS_MAX: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Run queries, searches and tails; see sources. `pii_*` values masked.
    Viewer,
    /// Everything a viewer may, with `pii_*` values and bad-line text in clear.
    Pii,
    /// Everything a viewer may, and administration (flush). Still masked.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Pii, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Pii => "pii",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The roles of one token, with the implications applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    pub viewer: bool,
    pub pii: bool,
    pub admin: bool,
}

impl Roles {
    fn from_list(roles: &[Role]) -> Roles {
        let has = |r| roles.contains(&r);
        Roles { viewer: true, pii: has(Role::Pii), admin: has(Role::Admin) }
    }

    pub fn has(&self, role: Role) -> bool {
        match role {
            Role::Viewer => self.viewer,
            Role::Pii => self.pii,
            Role::Admin => self.admin,
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, for logs.
    pub name: Arc<str>,
    pub roles: Roles,
}

/// Why the tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read tokens file {}: {source}; check the path ([api] tokens, --tokens or SLUICE_STORE_TOKENS) and its permissions", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("tokens file {} is {size_bytes} bytes, more than {max_bytes}; check that the path names the tokens file", path.display())]
    TooLarge { path: PathBuf, size_bytes: u64, max_bytes: u64 },
    /// Syntax, an unknown key or role, or a value that fails a check, at `line` (1-based).
    #[error("{}:{line}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, message: String },
}

struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
    roles: Roles,
}

/// The tokens of one file, checked.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: digests are not secrets, but nothing gains from printing them.
        f.debug_list().entries(self.entries.iter().map(|e| &e.name)).finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<Spanned<RawToken>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    secret: Spanned<String>,
    roles: Spanned<Vec<Spanned<String>>>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Equality of two digests in time independent of where they differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the compiler from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

impl Tokens {
    /// Reads and checks the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let read_err = |source| TokenError::Read { path: path.to_path_buf(), source };
        let size_bytes = std::fs::metadata(path).map_err(read_err)?.len();
        if size_bytes > TOKENS_FILE_BYTES_MAX {
            return Err(TokenError::TooLarge {
                path: path.to_path_buf(),
                size_bytes,
                max_bytes: TOKENS_FILE_BYTES_MAX,
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|e| TokenError::Invalid {
            path: path.to_path_buf(),
            line: line_of(&String::from_utf8_lossy(e.as_bytes()), e.utf8_error().valid_up_to()),
            message: "the file is not UTF-8 text; save it as UTF-8".to_string(),
        })?;
        Tokens::parse(&text, path)
    }

    /// Checks `text` as if read from `path` (used in messages only).
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokenError> {
        let invalid = |offset: usize, message: String| TokenError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end_matches('\n').trim_end_matches('.');
            let fix = if message.contains("unknown field") {
                "remove the key or correct its spelling (a token has name, secret and roles)"
            } else if message.contains("missing field") {
                "add it"
            } else if message.starts_with("invalid type") {
                "give a value of the type asked for"
            } else {
                "correct the TOML syntax"
            };
            invalid(e.span().map_or(0, |s| s.start), format!("{message}; {fix}"))
        })?;
        if raw.token.is_empty() {
            return Err(invalid(
                0,
                "no tokens: add a [[token]] table with name, secret (at least 16 characters) and roles".to_string(),
            ));
        }
        let mut entries = Vec::with_capacity(raw.token.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut secrets: HashMap<[u8; 32], usize> = HashMap::new();
        for spanned in &raw.token {
            let t = spanned.get_ref();
            let name = t.name.get_ref();
            let name_ok = !name.is_empty()
                && name.chars().count() <= NAME_CHARS_MAX
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
            if !name_ok {
                return Err(invalid(
                    t.name.span().start,
                    format!("token name {name:?} is not usable; use 1 to {NAME_CHARS_MAX} letters, digits, '.', '_', '-' or '@'"),
                ));
            }
            let line = line_of(text, t.name.span().start);
            if let Some(first) = names.insert(name.clone(), line) {
                return Err(invalid(
                    t.name.span().start,
                    format!("token name {name:?} is used twice (first at line {first}); give each token its own name"),
                ));
            }
            let secret = t.secret.get_ref();
            let chars = secret.chars().count();
            if chars < SECRET_CHARS_MIN {
                return Err(invalid(
                    t.secret.span().start,
                    format!(
                        "the secret of token {name:?} has {chars} characters, fewer than {SECRET_CHARS_MIN}; use a longer random one \
                         (for example the output of `openssl rand -hex 24`)"
                    ),
                ));
            }
            if chars > SECRET_CHARS_MAX {
                return Err(invalid(
                    t.secret.span().start,
                    format!(
                        "the secret of token {name:?} is longer than {SECRET_CHARS_MAX} characters; use a shorter one"
                    ),
                ));
            }
            if !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    t.secret.span().start,
                    format!(
                        "the secret of token {name:?} has spaces or characters other than visible ASCII, which an \
                         Authorization header cannot carry; use letters, digits and punctuation"
                    ),
                ));
            }
            let d = digest(secret.as_bytes());
            if let Some(first) = secrets.insert(d, line) {
                return Err(invalid(
                    t.secret.span().start,
                    format!(
                        "token {name:?} has the same secret as the token at line {first}; give each token its own secret"
                    ),
                ));
            }
            let mut roles = Vec::new();
            for r in t.roles.get_ref() {
                let role = Role::parse(r.get_ref()).ok_or_else(|| {
                    invalid(
                        r.span().start,
                        format!("token {name:?} has an unknown role {:?}; use viewer, pii or admin", r.get_ref()),
                    )
                })?;
                roles.push(role);
            }
            if roles.is_empty() {
                return Err(invalid(
                    t.roles.span().start,
                    format!("token {name:?} has no roles; give at least one of viewer, pii or admin"),
                ));
            }
            entries.push(Entry { name: Arc::from(name.as_str()), digest: d, roles: Roles::from_list(&roles) });
        }
        Ok(Tokens { entries })
    }

    /// The caller whose secret this is, if any.
    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        let presented = digest(secret.as_bytes());
        let mut found = None;
        // Every entry is compared, found or not.
        for e in &self.entries {
            if digests_equal(&presented, &e.digest) {
                found = Some(Caller { name: e.name.clone(), roles: e.roles });
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The tokens file in force, re-read on demand (SIGHUP).
#[derive(Clone)]
pub struct TokenSet {
    path: PathBuf,
    current: Arc<RwLock<Arc<Tokens>>>,
    /// Counts the reloads that took effect, for whoever holds a token for long (an open tail).
    reloads: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokenSet {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<TokenSet, TokenError> {
        let tokens = Tokens::load(path)?;
        Ok(TokenSet {
            path: path.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(tokens))),
            reloads: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// The file this set is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; on any error the tokens in force stay. Returns how many tokens the
    /// new file has. Requests already answering keep their roles; an open tail checks its token
    /// again ([`TokenSet::reloads`]).
    pub fn reload(&self) -> Result<usize, TokenError> {
        let tokens = Arc::new(Tokens::load(&self.path)?);
        let n = tokens.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = tokens;
        self.reloads.send_modify(|n| *n += 1);
        Ok(n)
    }

    /// Changes whenever a reload took effect.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        let tokens = self.current.read().unwrap_or_else(PoisonError::into_inner).clone();
        tokens.authenticate(secret)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[token]]
name = "alice"
secret = "alice-secret-0123456789"
roles = ["viewer"]

[[token]]
name = "bob"
secret = "bob-secret-0123456789"
roles = ["pii"]

[[token]]
name = "ops"
secret = "ops-secret-0123456789"
roles = ["admin"]
"#;

    #[test]
    fn roles_imply_viewer_but_admin_is_not_pii() {
        let t = Tokens::parse(GOOD, Path::new("tokens.toml")).unwrap();
        assert_eq!(t.len(), 3);
        let alice = t.authenticate("alice-secret-0123456789").unwrap();
        assert_eq!(&*alice.name, "alice");
        assert_eq!(alice.roles, Roles { viewer: true, pii: false, admin: false });
        let bob = t.authenticate("bob-secret-0123456789").unwrap();
        assert_eq!(bob.roles, Roles { viewer: true, pii: true, admin: false });
        let ops = t.authenticate("ops-secret-0123456789").unwrap();
        assert_eq!(ops.roles, Roles { viewer: true, pii: false, admin: true });
        assert_eq!(t.authenticate("alice-secret-012345678"), None);
        assert_eq!(t.authenticate(""), None);
        assert!(!format!("{t:?}").contains("secret"), "{t:?}");
    }

    /// (what, file text, expected line, text the message must contain)
    const BAD: &[(&str, &str, usize, &str)] = &[
        ("syntax", "[[token]]\nname = \n", 2, "correct the TOML syntax"),
        ("no tokens", "# nothing\n", 1, "add a [[token]] table"),
        ("unknown key", "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nroles = [\"viewer\"]\nexpires = 3\n", 5, "unknown field `expires`"),
        ("unknown top-level key", "tokens = 1\n", 1, "remove the key or correct its spelling"),
        ("missing secret", "[[token]]\nname = \"a\"\nroles = [\"viewer\"]\n", 1, "missing field `secret`; add it"),
        ("short secret", "[[token]]\nname = \"a\"\nsecret = \"short\"\nroles = [\"viewer\"]\n", 3, "has 5 characters, fewer than 16"),
        ("secret with space", "[[token]]\nname = \"a\"\nsecret = \"0123456789 abcdef\"\nroles = [\"viewer\"]\n", 3, "visible ASCII"),
        ("unknown role", "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nroles = [\"viewer\",\n  \"root\"]\n", 5, "unknown role \"root\"; use viewer, pii or admin"),
        ("no roles", "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nroles = []\n", 4, "has no roles"),
        ("roles not a list", "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nroles = \"viewer\"\n", 4, "give a value of the type asked for"),
        ("bad name", "[[token]]\nname = \"a b\"\nsecret = \"0123456789abcdef\"\nroles = [\"viewer\"]\n", 2, "token name \"a b\" is not usable"),
        ("duplicate name", "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nroles = [\"viewer\"]\n[[token]]\nname = \"a\"\nsecret = \"0123456789abcdeg\"\nroles = [\"viewer\"]\n", 6, "used twice (first at line 2)"),
        ("duplicate secret", "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nroles = [\"viewer\"]\n[[token]]\nname = \"b\"\nsecret = \"0123456789abcdef\"\nroles = [\"pii\"]\n", 7, "same secret as the token at line 2"),
    ];

    #[test]
    fn each_error_names_file_line_and_fix() {
        let path = Path::new("/etc/sluice/tokens.toml");
        for (what, text, line, expected) in BAD {
            let message = Tokens::parse(text, path).expect_err(what).to_string();
            let prefix = format!("{}:{line}: ", path.display());
            assert!(message.starts_with(&prefix), "{what}: expected line {line}: {message}");
            assert!(message.contains(expected), "{what}: {message}");
            assert!(!message.ends_with('.'), "{what}: {message}");
            assert!(!message.contains("0123456789abcdef"), "{what}: a secret in a message: {message}");
        }
    }

    #[test]
    fn reload_keeps_the_old_tokens_when_the_new_file_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, GOOD).unwrap();
        let set = TokenSet::load(&path).unwrap();
        assert!(set.authenticate("alice-secret-0123456789").is_some());
        std::fs::write(&path, "[[token]]\nname = \"a\"\n").unwrap();
        let e = set.reload().unwrap_err().to_string();
        assert!(e.contains("missing field"), "{e}");
        assert!(set.authenticate("alice-secret-0123456789").is_some());
        std::fs::write(&path, "[[token]]\nname = \"carol\"\nsecret = \"carol-secret-0123456789\"\nroles = [\"pii\"]\n")
            .unwrap();
        assert_eq!(set.reload().unwrap(), 1);
        assert!(set.authenticate("alice-secret-0123456789").is_none());
        assert!(set.authenticate("carol-secret-0123456789").unwrap().roles.pii);
        let missing = TokenSet::load(&dir.path().join("nope.toml")).unwrap_err().to_string();
        assert!(missing.contains("nope.toml") && missing.contains("--tokens"), "{missing}");
    }

    #[test]
    fn digest_comparison_is_exact() {
        let a = digest(b"x");
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
    }
}
