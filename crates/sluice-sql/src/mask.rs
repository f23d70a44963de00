//! PII masking: the per-deployment key, and the SQL functions that replace `pii_*` values by a
//! keyed hash and hide the original text of bad lines, for callers without the `pii` role.
//!
//! Not here: deciding who is masked (the engine), or which segments may be pruned (the table).
//!
//! The hash is SipHash-2-4 with a 128-bit secret key, a pseudo-random function made for short
//! inputs: without the key nobody can compute the hash of a guessed value, so a masked value
//! cannot be confirmed; with it equal values hash equally, so masked columns still group and
//! join. Strings become `pii:` and 16 hex digits; unsigned integers become another UInt64.

use std::fs::{self, File, OpenOptions};
use std::hash::Hasher;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, FixedSizeBinaryArray, StringArray, StringBuilder, UInt64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use siphasher::sip::SipHasher24;

/// File in the data directory that holds the key (32 hex digits and a newline, mode 0600).
pub const KEY_FILE: &str = "pii.key";
/// What hidden text (the original of a bad line) is replaced by.
pub const HIDDEN: &str = sluice_store::terms::MASKED_TEXT;
/// Columns that carry the original text of a bad line (see the event crate's wrapped form).
pub const HIDDEN_COLUMNS: [&str; 3] = ["sluice_raw", "sluice_raw_b64", "sluice_bad_values"];
/// Key of `sluice_overflow` that carries the text of a line the store could not parse.
const OVERFLOW_UNPARSED: &str = "sluice_unparsed";

/// The deployment's masking key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskKey([u8; 16]);

impl std::fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskKey(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("pii key {path}: {source}; check that the data directory is readable and writable")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("pii key {path} is not 32 hex digits; restore it from a backup (a new key changes every masked value), or delete it to start a new one")]
    Malformed { path: PathBuf },
}

impl MaskKey {
    /// A key from its 16 bytes (tests, and deployments that manage the key elsewhere).
    pub fn from_bytes(bytes: [u8; 16]) -> MaskKey {
        MaskKey(bytes)
    }

    /// The key of the deployment whose data directory is `dir`: read from [`KEY_FILE`], or
    /// created there once from the OS's random source (never overwritten: every masked value
    /// that users have seen depends on it).
    pub fn load_or_create(dir: &Path) -> Result<MaskKey, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io { path: path.clone(), source };
        match File::open(&path) {
            Ok(mut f) => {
                let mut text = String::new();
                f.read_to_string(&mut text).map_err(io)?;
                parse_hex(text.trim()).map(MaskKey).ok_or(KeyError::Malformed { path: path.clone() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                let mut f =
                    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                f.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                // hard_link fails if another process created the key meanwhile: use theirs.
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => {
                        let _ = fs::remove_file(&tmp);
                        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                        Ok(MaskKey(bytes))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let _ = fs::remove_file(&tmp);
                        MaskKey::load_or_create(dir)
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    fn hasher(&self) -> SipHasher24 {
        SipHasher24::new_with_key(&self.0)
    }

    /// The masked form of a string value.
    pub fn mask_str(&self, value: &str) -> String {
        let mut h = self.hasher();
        h.write(value.as_bytes());
        format!("pii:{:016x}", h.finish())
    }

    /// The masked form of an integer value. Hashed in a different domain from strings, so that
    /// `"5"` and `5` do not share a hash.
    pub fn mask_u64(&self, value: u64) -> u64 {
        let mut h = self.hasher();
        h.write_u8(0xff);
        h.write_u64(value);
        h.finish()
    }

    /// The masked form of an event id (`sluice_id`): a keyed 128-bit hash of it. The id hashes
    /// the line's bytes, clear `pii_*` values included, so whoever knows a line's place could
    /// confirm a guessed value against the clear id; the masked one stays as unique and joinable.
    pub fn mask_id(&self, id: &[u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (half, domain) in out.chunks_mut(8).zip([0xfd_u8, 0xfe]) {
            let mut h = self.hasher();
            h.write_u8(domain);
            h.write(id);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    }

    /// `sluice_overflow` JSON with `pii_*` values masked and the text of bad lines hidden: that of
    /// unparsed lines, and the keys of [`HIDDEN_COLUMNS`] when they are kept here (past the cap of
    /// columns) instead of in columns of their own. Text that is not a JSON object is hidden whole
    /// (it cannot be checked for PII).
    pub fn mask_overflow(&self, json: &str) -> String {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
            return serde_json::json!({ OVERFLOW_UNPARSED: HIDDEN }).to_string();
        };
        let masked: serde_json::Map<String, serde_json::Value> = map
            .into_iter()
            .map(|(k, v)| {
                let v = if k == OVERFLOW_UNPARSED || HIDDEN_COLUMNS.contains(&k.as_str()) {
                    serde_json::Value::String(HIDDEN.to_owned())
                } else if sluice_query::is_pii(&k) {
                    match v {
                        serde_json::Value::Number(n) if n.as_u64().is_some() => {
                            serde_json::Value::from(self.mask_u64(n.as_u64().unwrap_or_default()))
                        }
                        serde_json::Value::String(s) => serde_json::Value::String(self.mask_str(&s)),
                        other => serde_json::Value::String(self.mask_str(&other.to_string())),
                    }
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        serde_json::Value::Object(masked).to_string()
    }
}

fn parse_hex(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Which transformation a masking function applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MaskKind {
    /// `pii_*` column: keyed hash (strings and UInt64).
    Value,
    /// `sluice_overflow`: [`MaskKey::mask_overflow`].
    Overflow,
    /// Bad-line text: [`HIDDEN`] for every non-null value.
    Hide,
    /// `sluice_id`: [`MaskKey::mask_id`].
    Id,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct MaskUdf {
    kind: MaskKind,
    key: MaskKey,
    signature: Signature,
}

impl MaskUdf {
    pub(crate) fn udf(kind: MaskKind, key: MaskKey) -> ScalarUDF {
        let types = match kind {
            MaskKind::Value => {
                vec![TypeSignature::Exact(vec![DataType::Utf8]), TypeSignature::Exact(vec![DataType::UInt64])]
            }
            MaskKind::Overflow | MaskKind::Hide => vec![TypeSignature::Exact(vec![DataType::Utf8])],
            MaskKind::Id => vec![TypeSignature::Exact(vec![DataType::FixedSizeBinary(16)])],
        };
        ScalarUDF::new_from_impl(MaskUdf { kind, key, signature: Signature::one_of(types, Volatility::Immutable) })
    }
}

impl ScalarUDFImpl for MaskUdf {
    fn name(&self) -> &str {
        match self.kind {
            MaskKind::Value => "sluice_mask",
            MaskKind::Overflow => "sluice_mask_overflow",
            MaskKind::Hide => "sluice_hide",
            MaskKind::Id => "sluice_mask_id",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Utf8))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let array = match arg {
            ColumnarValue::Array(a) => a.clone(),
            ColumnarValue::Scalar(s) => s.to_array()?,
        };
        let out: ArrayRef = if let Some(strings) = array.as_any().downcast_ref::<StringArray>() {
            let mut b = StringBuilder::with_capacity(strings.len(), strings.len() * 20);
            for v in strings.iter() {
                match v {
                    None => b.append_null(),
                    Some(v) => match self.kind {
                        MaskKind::Value => b.append_value(self.key.mask_str(v)),
                        MaskKind::Overflow => b.append_value(self.key.mask_overflow(v)),
                        MaskKind::Hide | MaskKind::Id => b.append_value(HIDDEN),
                    },
                }
            }
            Arc::new(b.finish())
        } else if let Some(numbers) = array.as_any().downcast_ref::<UInt64Array>() {
            Arc::new(numbers.iter().map(|v| v.map(|n| self.key.mask_u64(n))).collect::<UInt64Array>())
        } else if let Some(ids) = array.as_any().downcast_ref::<FixedSizeBinaryArray>() {
            let masked: Vec<Option<[u8; 16]>> = ids.iter().map(|v| v.map(|id| self.key.mask_id(id))).collect();
            Arc::new(FixedSizeBinaryArray::try_from_sparse_iter_with_size(masked.into_iter(), 16)?)
        } else {
            return exec_err!("{} cannot mask a {} column", self.name(), array.data_type());
        };
        Ok(match arg {
            ColumnarValue::Scalar(_) => ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?),
            ColumnarValue::Array(_) => ColumnarValue::Array(out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = MaskKey::load_or_create(dir.path()).unwrap();
        let b = MaskKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert_ne!(a.mask_str("U1"), MaskKey::from_bytes([0; 16]).mask_str("U1"), "the key matters");
    }

    #[test]
    fn malformed_key_is_refused_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "nothex\n").unwrap();
        let e = MaskKey::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not 32 hex digits") && e.contains("restore"), "{e}");
    }

    #[test]
    fn masks_are_stable_distinct_and_typed() {
        let k = MaskKey::from_bytes(*b"0123456789abcdef");
        assert_eq!(k.mask_str("U577019"), k.mask_str("U577019"));
        assert_ne!(k.mask_str("U577019"), k.mask_str("U577018"));
        assert!(k.mask_str("x").starts_with("pii:") && k.mask_str("x").len() == 20);
        assert_ne!(k.mask_u64(5), 5);
        assert_eq!(k.mask_u64(5), k.mask_u64(5));
    }

    #[test]
    fn overflow_masks_pii_keys_and_hides_unparsed_text() {
        let k = MaskKey::from_bytes([7; 16]);
        let out: serde_json::Value =
            serde_json::from_str(&k.mask_overflow(r#"{"pii_email":"a@b.c","pii_n":12,"size":"big"}"#)).unwrap();
        assert_eq!(out["pii_email"], k.mask_str("a@b.c"));
        assert_eq!(out["pii_n"], k.mask_u64(12));
        assert_eq!(out["size"], "big");
        let out: serde_json::Value =
            serde_json::from_str(&k.mask_overflow(r#"{"sluice_unparsed":"secret U577019"}"#)).unwrap();
        assert_eq!(out["sluice_unparsed"], HIDDEN);
        assert!(!k.mask_overflow("not json U577019").contains("U577019"));
        let bad = r#"{"sluice_raw":"{\"pii_email\":\"a@b.c\"","sluice_raw_b64":"eyJwaWk","sluice_bad_values":"{\"pii_x\":1.5}","sluice_bad":"syntax"}"#;
        let out: serde_json::Value = serde_json::from_str(&k.mask_overflow(bad)).unwrap();
        for key in HIDDEN_COLUMNS {
            assert_eq!(out[key], HIDDEN, "{key}");
        }
        assert_eq!(out["sluice_bad"], "syntax", "the kind of bad line stays readable");
    }
}
