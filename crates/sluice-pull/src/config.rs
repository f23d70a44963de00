//! The store's TOML config file (`sluice store --config store.toml`): parsing, path resolution and
//! the checks that can be made without the network. Every error names the file, the line and the fix.
//! It does not merge flags or environment variables (the binary does that) and does not open
//! certificates (only checks that the files exist); sizes and durations are kept as written, with
//! their line, for the binary to parse with its unit parsers. Whole numbers are range-checked here
//! against [`Limits`] that the binary's flags share.
//!
//! The shape, as other tools write it:
//!
//! ```toml
//! data_dir = "store-data"
//! listen = "127.0.0.1:7800"          # plain HTTP only on loopback; anything else needs [api] TLS
//! backfill_workers = 2               # optional: chunks of history fetched at once, all sources together
//! retention_age_max = "30d"          # optional, kept as a string for the store to interpret
//! retention_bytes_max = "50GB"       # optional, likewise
//! # optional storage tuning; each one absent keeps the store's default
//! flush_rows_max = 500000            # buffered events that trigger a flush into segments
//! flush_age_max = "60s"              # oldest buffered event's age that triggers a flush
//! buffer_rows_max = 2000000          # commits wait while the buffer holds this many events
//! buffer_bytes_max = "256MiB"        # … or this much memory; a flush starts at half of it
//! compact_segment_bytes_small = "32MiB"  # segments below this are merged by compaction
//! compact_inputs_min = 4             # small segments of one hour that trigger a compaction
//! compact_rows_max = 1000000         # most events one compaction merges
//! keys_max = 1000                    # distinct keys with a column; later ones go to overflow
//! flush_zstd_level = 1               # 1 to 22 (flushed segments are rewritten by compaction)
//! compact_zstd_level = 3             # 1 to 22
//! [tls]
//! cert = "client.pem"                # client certificate presented to supervisors
//! key = "client.key"
//! ca = "ca.pem"                      # optional: trust for the supervisors' server certificates
//! [api]                              # optional: the store's own API
//! tokens = "tokens.toml"             # API tokens and roles; without it every /api/ request is refused
//! tls_cert = "api.pem"               # TLS: both or neither; required unless listen is loopback
//! tls_key = "api.key"
//! [[source]]
//! name = "web-1"
//! url = "https://127.0.0.1:7701"
//! # optional per source: ca = "…" or fingerprint = "sha256:…" (pin the supervisor's certificate)
//! ```
//!
//! Relative paths are relative to the directory of the config file, not the working directory,
//! so a config file and its certificates can move together.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sluice_tls::Trust;
use toml::Spanned;

/// Address of the store's API when the file names none.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7800";
/// Backfill fetches running at once, over all sources, when the file names no number.
pub const BACKFILL_WORKERS_DEFAULT: usize = 2;
/// More backfill workers than this only thrash the disk and the supervisors.
pub const BACKFILL_WORKERS_MAX: usize = 256;
/// `backfill_workers`: at least one, or history is never read.
pub const BACKFILL_WORKERS_LIMITS: Limits =
    Limits { key: "backfill_workers", min: 1, max: BACKFILL_WORKERS_MAX as i64 };
/// `flush_rows_max`: the buffer holds about 250 bytes an event, so more than this is gigabytes.
pub const FLUSH_ROWS_MAX_LIMITS: Limits = Limits { key: "flush_rows_max", min: 1, max: 50_000_000 };
/// `buffer_rows_max`: likewise bounded by memory.
pub const BUFFER_ROWS_MAX_LIMITS: Limits = Limits { key: "buffer_rows_max", min: 1, max: 100_000_000 };
/// `compact_inputs_min`: merging fewer than two segments merges nothing.
pub const COMPACT_INPUTS_MIN_LIMITS: Limits = Limits { key: "compact_inputs_min", min: 2, max: 10_000 };
/// `compact_rows_max`: one compaction holds its rows decoded in memory.
pub const COMPACT_ROWS_MAX_LIMITS: Limits = Limits { key: "compact_rows_max", min: 1, max: 100_000_000 };
/// `keys_max`: past a few thousand columns, Parquet metadata outweighs the data.
pub const KEYS_MAX_LIMITS: Limits = Limits { key: "keys_max", min: 1, max: 10_000 };
/// `flush_zstd_level`: the levels the Parquet writer accepts.
pub const FLUSH_ZSTD_LEVEL_LIMITS: Limits = Limits { key: "flush_zstd_level", min: 1, max: 22 };
/// `compact_zstd_level`: likewise.
pub const COMPACT_ZSTD_LEVEL_LIMITS: Limits = Limits { key: "compact_zstd_level", min: 1, max: 22 };
/// A config file larger than this is not a config file (a wrong path, most likely).
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest source name: it becomes a metric label and the `sluice_source` column.
pub const SOURCE_NAME_CHARS_MAX: usize = 64;
/// The port of an `https://` URL that names none.
const HTTPS_PORT_DEFAULT: u16 = 443;

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is far larger than any config file.
    #[error("{} is {size_bytes} bytes, more than the {max_bytes} bytes a config file may have; check that the path names the config file", path.display())]
    TooLarge { path: PathBuf, size_bytes: u64, max_bytes: u64 },
    /// Syntax, an unknown key, a wrong type or a value that fails a check, at `line` (1-based).
    #[error("{}:{line}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, message: String },
}

/// The store's config file, checked, with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFileConfig {
    /// The file this came from.
    pub path: PathBuf,
    pub data_dir: PathBuf,
    /// Address of the store's API, `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// The client certificate for supervisors; present whenever there is a source.
    pub tls: Option<TlsFiles>,
    pub sources: Vec<SourceConfig>,
    /// Size of the backfill pool shared by all sources.
    pub backfill_workers: usize,
    /// Retention by age of receipt, as written (for example `"30d"`).
    pub retention_age_max: Option<Written>,
    /// Retention by total size, as written (for example `"50GB"`).
    pub retention_bytes_max: Option<Written>,
    /// Storage tuning (see the module doc); `None` keeps the store's default.
    pub flush_rows_max: Option<usize>,
    pub flush_age_max: Option<Written>,
    pub buffer_rows_max: Option<usize>,
    pub compact_segment_bytes_small: Option<Written>,
    pub buffer_bytes_max: Option<Written>,
    pub compact_inputs_min: Option<usize>,
    pub compact_rows_max: Option<u64>,
    pub keys_max: Option<usize>,
    pub flush_zstd_level: Option<i32>,
    pub compact_zstd_level: Option<i32>,
    /// TLS for the API; required unless `listen` is a loopback address.
    pub api: Option<ApiTls>,
    /// `[api] tokens`: the API's tokens file.
    pub api_tokens: Option<PathBuf>,
}

/// A size or duration as written in the file, with its line: the binary parses it with its unit
/// parsers and, when that fails, still names the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub text: String,
    /// 1-based.
    pub line: usize,
}

/// The allowed range of a whole-number setting; the file and the flags check against the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The key in the file.
    pub key: &'static str,
    pub min: i64,
    pub max: i64,
}

impl Limits {
    /// `value` if it is in range; else a message saying what to give instead.
    pub fn check(&self, value: i64) -> Result<i64, String> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(format!("{value} is out of range; give a number from {} to {}", self.min, self.max))
        }
    }
}

/// `[tls]`: what the store presents to supervisors, and the default trust for their certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// `[api]`: the certificate and key the store's own API serves with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

/// One supervisor to pull from, with everything needed to connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Configured name: metric label, status key and the `sluice_source` column.
    pub name: Arc<str>,
    /// The URL as written.
    pub url: String,
    pub endpoint: Endpoint,
    /// Client certificate and key presented to this supervisor.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust: Trust,
}

/// Where a source's HTTPS API is: host, port, and a path prefix in front of `/chunk/` (empty
/// unless the supervisor sits behind a proxy that adds one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// A DNS name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
    /// Empty, or starting with `/` and not ending with one.
    pub base_path: String,
}

impl Endpoint {
    /// Parses `https://HOST[:PORT][/PREFIX]`; the message says what is wrong and how to write it.
    pub fn parse_https(url: &str) -> Result<Endpoint, String> {
        const EXAMPLE: &str = "write it like \"https://10.0.0.5:7701\"";
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) => {
                return Err(format!("url {url:?} uses {scheme}://, but supervisors serve only https://; {EXAMPLE}"))
            }
            None => return Err(format!("url {url:?} has no scheme; {EXAMPLE}")),
        };
        if rest.contains(['?', '#']) {
            return Err(format!("url {url:?} has a query or fragment, which sluice would ignore; {EXAMPLE}"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "url {url:?} has user information; supervisors authenticate by client certificate, remove it"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) =
                v6.split_once(']').ok_or_else(|| format!("url {url:?} has an unclosed '[' in its host; {EXAMPLE}"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("url {url:?}: {host:?} in brackets is not an IPv6 address; {EXAMPLE}"));
            }
            (host, after.strip_prefix(':').map(Some).unwrap_or(if after.is_empty() { None } else { Some(after) }))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => HTTPS_PORT_DEFAULT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(format!("url {url:?} has port {p:?}, not a number from 1 to 65535; {EXAMPLE}")),
            },
        };
        let host_ok = !host.is_empty()
            && (host.parse::<IpAddr>().is_ok()
                || host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
        if !host_ok {
            return Err(format!("url {url:?} has no usable host name; {EXAMPLE}"));
        }
        let base_path = path.trim_end_matches('/');
        if base_path.contains(|c: char| c.is_whitespace() || c == '%' || c.is_control()) {
            return Err(format!("url {url:?} has a path sluice cannot use as a prefix; {EXAMPLE}"));
        }
        Ok(Endpoint { host: host.to_string(), port, base_path: base_path.to_string() })
    }

    /// The value of the `Host` header: brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.base_path)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    data_dir: Spanned<String>,
    listen: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
    backfill_workers: Option<Spanned<i64>>,
    retention_age_max: Option<Spanned<String>>,
    retention_bytes_max: Option<Spanned<String>>,
    flush_rows_max: Option<Spanned<i64>>,
    flush_age_max: Option<Spanned<String>>,
    buffer_rows_max: Option<Spanned<i64>>,
    compact_segment_bytes_small: Option<Spanned<String>>,
    buffer_bytes_max: Option<Spanned<String>>,
    compact_inputs_min: Option<Spanned<i64>>,
    compact_rows_max: Option<Spanned<i64>>,
    keys_max: Option<Spanned<i64>>,
    flush_zstd_level: Option<Spanned<i64>>,
    compact_zstd_level: Option<Spanned<i64>>,
    api: Option<Spanned<RawApi>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    tokens: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    url: Spanned<String>,
    ca: Option<Spanned<String>>,
    fingerprint: Option<Spanned<String>>,
}

impl StoreFileConfig {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<StoreFileConfig, ConfigError> {
        let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let size_bytes = std::fs::metadata(path).map_err(read_err)?.len();
        if size_bytes > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size_bytes,
                max_bytes: CONFIG_FILE_BYTES_MAX,
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes());
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of(&text, offset),
                message: "the file is not UTF-8 text; save it as UTF-8".to_string(),
            }
        })?;
        StoreFileConfig::parse(&text, path)
    }

    /// Checks `text` as if read from `path` (paths resolve against its directory; the files
    /// named must exist).
    pub fn parse(text: &str, path: &Path) -> Result<StoreFileConfig, ConfigError> {
        let ctx = Ctx { text, path, dir: path.parent().unwrap_or(Path::new("")) };
        let raw: RawFile = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;

        let data_dir = ctx.path_value("data_dir", &raw.data_dir, false)?;

        let listen_text = raw.listen.as_ref().map(|l| l.get_ref().as_str()).unwrap_or(LISTEN_DEFAULT);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ctx.invalid(
                raw.listen.as_ref().map(|l| l.span().start).unwrap_or(0),
                format!("listen = {listen_text:?} is not an IP address and port; write it like \"127.0.0.1:7800\""),
            )
        })?;

        let api =
            match raw.api.as_ref().map(|a| (a, &a.get_ref().tls_cert, &a.get_ref().tls_key)) {
                Some((_, Some(cert), Some(key))) => Some(ApiTls {
                    tls_cert: ctx.path_value("api.tls_cert", cert, true)?,
                    tls_key: ctx.path_value("api.tls_key", key, true)?,
                }),
                Some((table, None, Some(_)) | (table, Some(_), None)) => return Err(ctx.invalid(
                    table.span().start,
                    "[api] has only one of tls_cert and tls_key; give both (TLS), or neither (plain HTTP on loopback)"
                        .to_string(),
                )),
                _ => None,
            };
        let api_tokens = match raw.api.as_ref().and_then(|a| a.get_ref().tokens.as_ref()) {
            Some(tokens) => Some(ctx.path_value("api.tokens", tokens, true)?),
            None => None,
        };
        if api.is_none() && !listen.ip().is_loopback() {
            return Err(ctx.invalid(
                raw.listen.as_ref().map(|l| l.span().start).unwrap_or(0),
                format!(
                    "listen = \"{listen}\" is not a loopback address, and the API serves plain HTTP only on loopback; \
                     add an [api] table with tls_cert and tls_key, or listen on 127.0.0.1"
                ),
            ));
        }

        // Every limit is far below the range of the target types, so the casts below are exact.
        let count = |value: &Option<Spanned<i64>>, limits: Limits| -> Result<Option<i64>, ConfigError> {
            value
                .as_ref()
                .map(|n| {
                    limits.check(*n.get_ref()).map_err(|m| ctx.invalid(n.span().start, format!("{} = {m}", limits.key)))
                })
                .transpose()
        };
        let backfill_workers =
            count(&raw.backfill_workers, BACKFILL_WORKERS_LIMITS)?.map_or(BACKFILL_WORKERS_DEFAULT, |n| n as usize);
        let flush_rows_max = count(&raw.flush_rows_max, FLUSH_ROWS_MAX_LIMITS)?.map(|n| n as usize);
        let buffer_rows_max = count(&raw.buffer_rows_max, BUFFER_ROWS_MAX_LIMITS)?.map(|n| n as usize);
        let compact_inputs_min = count(&raw.compact_inputs_min, COMPACT_INPUTS_MIN_LIMITS)?.map(|n| n as usize);
        let compact_rows_max = count(&raw.compact_rows_max, COMPACT_ROWS_MAX_LIMITS)?.map(|n| n as u64);
        let keys_max = count(&raw.keys_max, KEYS_MAX_LIMITS)?.map(|n| n as usize);
        let flush_zstd_level = count(&raw.flush_zstd_level, FLUSH_ZSTD_LEVEL_LIMITS)?.map(|n| n as i32);
        let compact_zstd_level = count(&raw.compact_zstd_level, COMPACT_ZSTD_LEVEL_LIMITS)?.map(|n| n as i32);

        let written =
            |value: &Option<Spanned<String>>, key: &str, example: &str| -> Result<Option<Written>, ConfigError> {
                match value {
                    Some(v) if v.get_ref().trim().is_empty() => Err(ctx.invalid(
                        v.span().start,
                        format!("{key} is empty; give a value like {example:?}, or remove the key"),
                    )),
                    Some(v) => Ok(Some(Written { text: v.get_ref().clone(), line: line_of(text, v.span().start) })),
                    None => Ok(None),
                }
            };
        let retention_age_max = written(&raw.retention_age_max, "retention_age_max", "30d")?;
        let retention_bytes_max = written(&raw.retention_bytes_max, "retention_bytes_max", "50GB")?;
        let flush_age_max = written(&raw.flush_age_max, "flush_age_max", "60s")?;
        let compact_segment_bytes_small =
            written(&raw.compact_segment_bytes_small, "compact_segment_bytes_small", "32MiB")?;
        let buffer_bytes_max = written(&raw.buffer_bytes_max, "buffer_bytes_max", "256MiB")?;

        let tls = match &raw.tls {
            Some(tls) => {
                let t = tls.get_ref();
                Some(TlsFiles {
                    cert: ctx.path_value("tls.cert", &t.cert, true)?,
                    key: ctx.path_value("tls.key", &t.key, true)?,
                    ca: t.ca.as_ref().map(|ca| ctx.path_value("tls.ca", ca, true)).transpose()?,
                })
            }
            None => None,
        };

        let mut sources = Vec::with_capacity(raw.source.len());
        let mut lines_by_name: HashMap<String, usize> = HashMap::new();
        for spanned in &raw.source {
            let s = spanned.get_ref();
            let line = line_of(text, spanned.span().start);
            let name = s.name.get_ref();
            check_source_name(name).map_err(|m| ctx.invalid(s.name.span().start, m))?;
            if let Some(first) = lines_by_name.insert(name.clone(), line) {
                return Err(ctx.invalid(
                    s.name.span().start,
                    format!(
                        "source name {name:?} is used twice (first at line {first}); give each source its own name"
                    ),
                ));
            }
            let endpoint = Endpoint::parse_https(s.url.get_ref()).map_err(|m| ctx.invalid(s.url.span().start, m))?;
            let Some(tls) = &tls else {
                return Err(ctx.invalid(
                    spanned.span().start,
                    format!(
                        "source {name:?} needs a client certificate; add a [tls] table with cert and key \
                         (from `sluice certs`)"
                    ),
                ));
            };
            let trust = match (&s.ca, &s.fingerprint) {
                (Some(_), Some(fp)) => {
                    return Err(ctx.invalid(
                        fp.span().start,
                        format!("source {name:?} has both ca and fingerprint; keep one of them"),
                    ))
                }
                (Some(ca), None) => Trust::CaFile(ctx.path_value("source.ca", ca, true)?),
                (None, Some(fp)) => Trust::Pinned(sluice_tls::parse_fingerprint(fp.get_ref()).ok_or_else(|| {
                    ctx.invalid(
                        fp.span().start,
                        format!(
                            "fingerprint {:?} of source {name:?} is not a SHA-256 fingerprint; write \"sha256:\" \
                             and 64 hex digits, as `sluice certs` prints it",
                            fp.get_ref()
                        ),
                    )
                })?),
                (None, None) => match &tls.ca {
                    Some(ca) => Trust::CaFile(ca.clone()),
                    None => {
                        return Err(ctx.invalid(
                            spanned.span().start,
                            format!(
                                "source {name:?} has no trust for its server certificate; add ca = \"ca.pem\" under \
                                 [tls], or ca or fingerprint = \"sha256:…\" to the source"
                            ),
                        ))
                    }
                },
            };
            sources.push(SourceConfig {
                name: Arc::from(name.as_str()),
                url: s.url.get_ref().clone(),
                endpoint,
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                trust,
            });
        }

        Ok(StoreFileConfig {
            path: path.to_path_buf(),
            data_dir,
            listen,
            tls,
            sources,
            backfill_workers,
            retention_age_max,
            retention_bytes_max,
            flush_rows_max,
            flush_age_max,
            buffer_rows_max,
            compact_segment_bytes_small,
            buffer_bytes_max,
            compact_inputs_min,
            compact_rows_max,
            keys_max,
            flush_zstd_level,
            compact_zstd_level,
            api,
            api_tokens,
        })
    }
}

/// Source names: letters, digits, `.`, `_`, `-`; they are metric labels and column values.
fn check_source_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= SOURCE_NAME_CHARS_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "source name {name:?} is not usable; use 1 to {SOURCE_NAME_CHARS_MAX} letters, digits, '.', '_' or '-'"
        ))
    }
}

/// What every check needs to report a line.
struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, offset: usize, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_path_buf(), line: line_of(self.text, offset), message }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim_end_matches('\n').trim_end_matches('.');
        let key = e.span().and_then(|s| self.text.get(s)).map(str::trim).filter(|k| !k.is_empty() && k.len() <= 100);
        if let (true, Some(key)) = (message == "duplicate key", key) {
            return self.invalid(
                e.span().map(|s| s.start).unwrap_or(0),
                format!("{key} is set twice in the same table; keep one"),
            );
        }
        let fix = if message.contains("unknown field") {
            "remove the key or correct its spelling"
        } else if message.contains("missing field") {
            "add it"
        } else if message.starts_with("invalid type") {
            "give a value of the type asked for"
        } else {
            "correct the TOML syntax"
        };
        self.invalid(e.span().map(|s| s.start).unwrap_or(0), format!("{message}; {fix}"))
    }

    /// A path from the file: resolved against the file's directory; `must_exist` for files read
    /// at start (certificates), not for directories the store creates.
    fn path_value(&self, key: &str, value: &Spanned<String>, must_exist: bool) -> Result<PathBuf, ConfigError> {
        let raw = value.get_ref();
        if raw.trim().is_empty() {
            return Err(self.invalid(value.span().start, format!("{key} is empty; give a path")));
        }
        let path = Path::new(raw);
        let resolved = if path.is_absolute() { path.to_path_buf() } else { self.dir.join(path) };
        if must_exist && !resolved.exists() {
            return Err(self.invalid(
                value.span().start,
                format!(
                    "{key}: {} does not exist; check the path (relative paths start at the config file's directory)",
                    resolved.display()
                ),
            ));
        }
        Ok(resolved)
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

// unwrap() is the house habit in tests (STYLE.md); the workspace lint is for library code.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FP: &str = "sha256:000102030405060708090a0b0c0d0e0fa0b1c2d3e4f5162738495a6b7c8d9eff";

    /// A directory holding the files a config names, and a config path inside it.
    fn dir_with_files() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["client.pem", "client.key", "ca.pem", "other-ca.pem", "api.pem", "api.key", "tokens.toml"] {
            std::fs::write(tmp.path().join(f), "x").unwrap();
        }
        let path = tmp.path().join("store.toml");
        (tmp, path)
    }

    /// The example of issue 4, word for word.
    const EXAMPLE: &str = r#"data_dir = "store-data"
listen = "127.0.0.1:7800"          # the store's API (next issue), /metrics, /healthz; plain HTTP only on loopback,
                                   # any other address needs tls_cert/tls_key under [api]
[tls]
cert = "client.pem"                # client certificate presented to supervisors
key = "client.key"
ca = "ca.pem"                      # trust for the supervisors' server certificates
[[source]]
name = "web-1"
url = "https://127.0.0.1:7701"
# optional per source: ca = "…" or fingerprint = "sha256:…" (pin the supervisor's certificate)
"#;

    #[test]
    fn issue_example_parses_with_defaults() {
        let (tmp, path) = dir_with_files();
        let c = StoreFileConfig::parse(EXAMPLE, &path).unwrap();
        let d = tmp.path();
        assert_eq!(c.data_dir, d.join("store-data"));
        assert_eq!(c.listen, "127.0.0.1:7800".parse().unwrap());
        assert_eq!(c.backfill_workers, BACKFILL_WORKERS_DEFAULT);
        assert_eq!(
            c.tls,
            Some(TlsFiles { cert: d.join("client.pem"), key: d.join("client.key"), ca: Some(d.join("ca.pem")) })
        );
        assert_eq!(c.sources.len(), 1);
        let s = &c.sources[0];
        assert_eq!(&*s.name, "web-1");
        assert_eq!(s.endpoint, Endpoint { host: "127.0.0.1".into(), port: 7701, base_path: String::new() });
        assert_eq!(s.trust, Trust::CaFile(d.join("ca.pem")));
        assert_eq!((s.cert.clone(), s.key.clone()), (d.join("client.pem"), d.join("client.key")));
        assert_eq!(c.api, None);
        assert_eq!(c.retention_age_max, None);
        assert_eq!((c.flush_rows_max, c.flush_age_max, c.keys_max, c.compact_zstd_level), (None, None, None, None));
    }

    #[test]
    fn api_tokens_alone_on_loopback_and_with_tls_elsewhere() {
        let (tmp, path) = dir_with_files();
        let d = tmp.path();
        let c = StoreFileConfig::parse("data_dir = \"x\"\n[api]\ntokens = \"tokens.toml\"\n", &path).unwrap();
        assert_eq!((c.api, c.api_tokens), (None, Some(d.join("tokens.toml"))));
        let text = "data_dir = \"x\"\nlisten = \"[::]:7800\"\n[api]\ntokens = \"tokens.toml\"\ntls_cert = \"api.pem\"\ntls_key = \"api.key\"\n";
        let c = StoreFileConfig::parse(text, &path).unwrap();
        assert_eq!(c.api, Some(ApiTls { tls_cert: d.join("api.pem"), tls_key: d.join("api.key") }));
        assert_eq!(c.api_tokens, Some(d.join("tokens.toml")));
        let c = StoreFileConfig::parse("data_dir = \"x\"\n[api]\n", &path).unwrap();
        assert_eq!((c.api, c.api_tokens), (None, None));
    }

    #[test]
    fn every_optional_setting() {
        let (tmp, path) = dir_with_files();
        let text = format!(
            r#"data_dir = "/var/lib/sluice"
listen = "0.0.0.0:7800"
backfill_workers = 5
retention_age_max = "30d"
retention_bytes_max = "50GB"
flush_rows_max = 1000
flush_age_max = "2s"
buffer_rows_max = 4000
compact_segment_bytes_small = "1MiB"
compact_inputs_min = 2
compact_rows_max = 50000
keys_max = 10
flush_zstd_level = 1
compact_zstd_level = 22
buffer_bytes_max = "64MiB"
[api]
tls_cert = "api.pem"
tls_key = "api.key"
[tls]
cert = "client.pem"
key = "client.key"
[[source]]
name = "a"
url = "https://[::1]:7701/"
ca = "other-ca.pem"
[[source]]
name = "b.2_x"
url = "HTTPS://sup.example.com/prefix/"
fingerprint = "{FP}"
"#
        );
        std::fs::write(&path, &text).unwrap();
        let c = StoreFileConfig::load(&path).unwrap();
        let d = tmp.path();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/sluice"));
        assert_eq!(c.backfill_workers, 5);
        let written = |text: &str, line| Some(Written { text: text.into(), line });
        assert_eq!(c.retention_age_max, written("30d", 4));
        assert_eq!(c.retention_bytes_max, written("50GB", 5));
        assert_eq!(c.flush_age_max, written("2s", 7));
        assert_eq!(c.compact_segment_bytes_small, written("1MiB", 9));
        assert_eq!(c.buffer_bytes_max, written("64MiB", 15));
        assert_eq!(
            (c.flush_rows_max, c.buffer_rows_max, c.compact_inputs_min, c.compact_rows_max, c.keys_max),
            (Some(1000), Some(4000), Some(2), Some(50_000), Some(10))
        );
        assert_eq!((c.flush_zstd_level, c.compact_zstd_level), (Some(1), Some(22)));
        assert_eq!(c.api, Some(ApiTls { tls_cert: d.join("api.pem"), tls_key: d.join("api.key") }));
        assert_eq!(c.sources[0].endpoint, Endpoint { host: "::1".into(), port: 7701, base_path: String::new() });
        assert_eq!(c.sources[0].endpoint.authority(), "[::1]:7701");
        assert_eq!(c.sources[0].trust, Trust::CaFile(d.join("other-ca.pem")));
        assert_eq!(
            c.sources[1].endpoint,
            Endpoint { host: "sup.example.com".into(), port: 443, base_path: "/prefix".into() }
        );
        assert_eq!(c.sources[1].trust, Trust::Pinned(sluice_tls::parse_fingerprint(FP).unwrap()));
    }

    /// (what, config text, expected line, text the message must contain)
    const BAD: &[(&str, &str, usize, &str)] = &[
        ("syntax", "data_dir = \"x\"\nlisten = \n", 2, "correct the TOML syntax"),
        ("unknown key", "data_dir = \"x\"\n\nlistn = \"127.0.0.1:1\"\n", 3, "unknown field `listn`"),
        ("unknown key in source", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nca = \"ca.pem\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1\"\npin = \"x\"\n", 9, "remove the key or correct its spelling"),
        ("unknown key in tls", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\ncafile = \"ca.pem\"\n", 5, "unknown field `cafile`"),
        ("missing data_dir", "listen = \"127.0.0.1:1\"\n", 1, "missing field `data_dir`; add it"),
        ("wrong type", "data_dir = \"x\"\nbackfill_workers = \"two\"\n", 2, "give a value of the type asked for"),
        ("workers zero", "data_dir = \"x\"\nbackfill_workers = 0\n", 2, "backfill_workers = 0 is out of range"),
        ("workers negative", "data_dir = \"x\"\nbackfill_workers = -3\n", 2, "give a number from 1 to 256"),
        ("listen garbage", "data_dir = \"x\"\nlisten = \"localhost\"\n", 2, "write it like \"127.0.0.1:7800\""),
        ("listen public without api tls", "data_dir = \"x\"\n\nlisten = \"0.0.0.0:7800\"\n", 3, "add an [api] table with tls_cert and tls_key"),
        ("api half", "data_dir = \"x\"\n[api]\ntls_cert = \"api.pem\"\n", 2, "has only one of tls_cert and tls_key; give both"),
        ("api key only", "data_dir = \"x\"\n\n[api]\ntls_key = \"api.key\"\n", 3, "has only one of tls_cert and tls_key"),
        ("api tokens only off loopback", "data_dir = \"x\"\nlisten = \"10.0.0.1:7800\"\n[api]\ntokens = \"tokens.toml\"\n", 2, "add an [api] table with tls_cert and tls_key"),
        ("api tokens missing", "data_dir = \"x\"\n[api]\n\ntokens = \"gone.toml\"\n", 4, "api.tokens: "),
        ("api tokens empty", "data_dir = \"x\"\n[api]\ntokens = \"\"\n", 3, "api.tokens is empty; give a path"),
        ("api unknown key", "data_dir = \"x\"\n[api]\ntoken = \"tokens.toml\"\n", 3, "unknown field `token`"),
        ("api file missing", "data_dir = \"x\"\n[api]\ntls_cert = \"nope.pem\"\ntls_key = \"api.key\"\n", 3, "nope.pem does not exist"),
        ("empty data_dir", "data_dir = \"\"\n", 1, "data_dir is empty; give a path"),
        ("empty retention", "data_dir = \"x\"\nretention_age_max = \" \"\n", 2, "retention_age_max is empty"),
        ("flush rows zero", "data_dir = \"x\"\nflush_rows_max = 0\n", 2, "flush_rows_max = 0 is out of range; give a number from 1 to 50000000"),
        ("flush rows huge", "data_dir = \"x\"\n\nflush_rows_max = 9999999999\n", 3, "flush_rows_max = 9999999999 is out of range"),
        ("flush rows as text", "data_dir = \"x\"\nflush_rows_max = \"1k\"\n", 2, "give a value of the type asked for"),
        ("empty flush age", "data_dir = \"x\"\nflush_age_max = \"\"\n", 2, "flush_age_max is empty; give a value like \"60s\""),
        ("flush age as number", "data_dir = \"x\"\nflush_age_max = 60\n", 2, "give a value of the type asked for"),
        ("buffer rows zero", "data_dir = \"x\"\nbuffer_rows_max = 0\n", 2, "buffer_rows_max = 0 is out of range; give a number from 1 to 100000000"),
        ("empty small segment size", "data_dir = \"x\"\ncompact_segment_bytes_small = \" \"\n", 2, "compact_segment_bytes_small is empty; give a value like \"32MiB\""),
        ("one compaction input", "data_dir = \"x\"\ncompact_inputs_min = 1\n", 2, "compact_inputs_min = 1 is out of range; give a number from 2 to 10000"),
        ("compact rows negative", "data_dir = \"x\"\ncompact_rows_max = -1\n", 2, "compact_rows_max = -1 is out of range; give a number from 1 to 100000000"),
        ("no keys", "data_dir = \"x\"\nkeys_max = 0\n", 2, "keys_max = 0 is out of range; give a number from 1 to 10000"),
        ("flush zstd level zero", "data_dir = \"x\"\nflush_zstd_level = 0\n", 2, "flush_zstd_level = 0 is out of range; give a number from 1 to 22"),
        ("compact zstd level high", "data_dir = \"x\"\n\n\ncompact_zstd_level = 23\n", 4, "compact_zstd_level = 23 is out of range; give a number from 1 to 22"),
        ("zstd level as float", "data_dir = \"x\"\ncompact_zstd_level = 3.5\n", 2, "give a value of the type asked for"),
        ("tuning key misspelt", "data_dir = \"x\"\nflush_row_max = 10\n", 2, "unknown field `flush_row_max`, expected one of `data_dir`"),
        ("tuning key in a table", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nkeys_max = 10\n", 5, "unknown field `keys_max`"),
        ("cert missing", "data_dir = \"x\"\n[tls]\ncert = \"missing.pem\"\nkey = \"client.key\"\n", 3, "tls.cert: "),
        ("http url", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nca = \"ca.pem\"\n[[source]]\nname = \"a\"\nurl = \"http://h:1\"\n", 8, "supervisors serve only https://"),
        ("no scheme", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nca = \"ca.pem\"\n[[source]]\nname = \"a\"\nurl = \"h:1\"\n", 8, "has no scheme"),
        ("bad port", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nca = \"ca.pem\"\n[[source]]\nname = \"a\"\nurl = \"https://h:99999\"\n", 8, "not a number from 1 to 65535"),
        ("query in url", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nca = \"ca.pem\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1/?x=1\"\n", 8, "query or fragment"),
        ("duplicate key", "data_dir = \"x\"\nbackfill_workers = 2\ndata_dir = \"y\"\n", 3, "data_dir is set twice in the same table; keep one"),
        ("duplicate name", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nca = \"ca.pem\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1\"\n[[source]]\nname = \"a\"\nurl = \"https://h:2\"\n", 10, "used twice (first at line 6)"),
        ("bad name", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\nca = \"ca.pem\"\n[[source]]\nname = \"web 1\"\nurl = \"https://h:1\"\n", 7, "source name \"web 1\" is not usable"),
        ("no trust", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1\"\n", 5, "has no trust for its server certificate"),
        ("both trusts", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1\"\nca = \"ca.pem\"\nfingerprint = \"sha256:00\"\n", 9, "has both ca and fingerprint; keep one"),
        ("bad fingerprint", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1\"\nfingerprint = \"sha1:abcd\"\n", 8, "is not a SHA-256 fingerprint"),
        ("source ca missing", "data_dir = \"x\"\n[tls]\ncert = \"client.pem\"\nkey = \"client.key\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1\"\nca = \"gone.pem\"\n", 8, "gone.pem does not exist"),
        ("source without tls", "data_dir = \"x\"\n[[source]]\nname = \"a\"\nurl = \"https://h:1\"\nfingerprint = \"sha256:00\"\n", 2, "needs a client certificate; add a [tls] table"),
    ];

    #[test]
    fn each_error_names_file_line_and_fix() {
        let (_tmp, path) = dir_with_files();
        for (what, text, line, expected) in BAD {
            let err = StoreFileConfig::parse(text, &path).expect_err(what);
            let message = err.to_string();
            let prefix = format!("{}:{line}: ", path.display());
            assert!(message.starts_with(&prefix), "{what}: expected line {line}: {message}");
            assert!(message.contains(expected), "{what}: {message}");
            assert!(!message.ends_with('.'), "{what}: {message}");
        }
    }

    const ALL_LIMITS: [Limits; 8] = [
        BACKFILL_WORKERS_LIMITS,
        FLUSH_ROWS_MAX_LIMITS,
        BUFFER_ROWS_MAX_LIMITS,
        COMPACT_INPUTS_MIN_LIMITS,
        COMPACT_ROWS_MAX_LIMITS,
        KEYS_MAX_LIMITS,
        FLUSH_ZSTD_LEVEL_LIMITS,
        COMPACT_ZSTD_LEVEL_LIMITS,
    ];

    #[test]
    fn every_whole_number_setting_is_checked_at_both_ends() {
        let (_tmp, path) = dir_with_files();
        for l in ALL_LIMITS {
            for ok in [l.min, l.max] {
                let text = format!("data_dir = \"x\"\n{} = {ok}\n", l.key);
                StoreFileConfig::parse(&text, &path).unwrap_or_else(|e| panic!("{}: {e}", l.key));
            }
            for bad in [l.min - 1, l.max + 1] {
                let text = format!("data_dir = \"x\"\n{} = {bad}\n", l.key);
                let message = StoreFileConfig::parse(&text, &path).unwrap_err().to_string();
                let expected = format!(
                    "{}:2: {} = {bad} is out of range; give a number from {} to {}",
                    path.display(),
                    l.key,
                    l.min,
                    l.max
                );
                assert_eq!(message, expected);
            }
        }
    }

    #[test]
    fn unreadable_and_oversized_files() {
        let (tmp, _) = dir_with_files();
        let missing = tmp.path().join("absent.toml");
        let message = StoreFileConfig::load(&missing).unwrap_err().to_string();
        assert!(message.starts_with(&format!("cannot read {}", missing.display())), "{message}");
        let big = tmp.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; CONFIG_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(matches!(StoreFileConfig::load(&big), Err(ConfigError::TooLarge { .. })));
        let latin1 = tmp.path().join("latin1.toml");
        std::fs::write(&latin1, b"data_dir = \"x\"\n# caf\xe9\n").unwrap();
        let message = StoreFileConfig::load(&latin1).unwrap_err().to_string();
        assert!(message.contains("latin1.toml:2: the file is not UTF-8"), "{message}");
    }

    #[test]
    fn url_forms() {
        let ok = [
            ("https://h", ("h", 443, "")),
            ("https://h:7701", ("h", 7701, "")),
            ("https://10.0.0.5:7701/", ("10.0.0.5", 7701, "")),
            ("https://[fe80::1]", ("fe80::1", 443, "")),
            ("https://h/a/b//", ("h", 443, "/a/b")),
        ];
        for (url, (host, port, base)) in ok {
            let e = Endpoint::parse_https(url).unwrap();
            assert_eq!((e.host.as_str(), e.port, e.base_path.as_str()), (host, port, base), "{url}");
        }
        for bad in
            ["https://", "https://:1", "https://u@h", "https://[::1", "https://[nope]:1", "https://h:0", "ftp://h"]
        {
            assert!(Endpoint::parse_https(bad).is_err(), "{bad}");
        }
    }
}
