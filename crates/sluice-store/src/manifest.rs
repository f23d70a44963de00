//! The manifest: the one file that says which segments are live, what type each key has, up to
//! which `sluice_seq` the write-ahead log has been flushed, and the read progress of every chunk
//! as of that flush. It is replaced atomically, never edited in place.
//!
//! This module only reads and writes the file; deciding what goes in it is the store's job.
//!
//! # Format
//!
//! `manifest.json`, one JSON object (field names as in [`Manifest`]; unknown fields are refused so
//! that an older binary never silently drops what a newer one wrote). Replacement: write
//! `manifest.json.tmp`, fsync it, rename it over `manifest.json`, fsync the directory. A reader
//! therefore sees either the old or the new manifest, whole.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::buffer::KeyType;

/// The manifest file name in the data directory.
pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_TMP: &str = "manifest.json.tmp";
/// Version written; a manifest of another version is refused.
pub const MANIFEST_VERSION: u32 = 1;

/// One live segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentMeta {
    /// Path relative to the data directory (and the object-store key), `/`-separated.
    pub path: String,
    /// Hours since the epoch of the partition (`time_ns / 3600e9`).
    pub partition_hour: u64,
    pub rows: u64,
    /// Size of the Parquet file.
    pub bytes: u64,
    /// Size of its term index beside it (0 in manifests written before this was recorded).
    #[serde(default)]
    pub terms_bytes: u64,
    /// Size of its rows as Arrow arrays when written (0 when not recorded): about what reading
    /// them back takes, which bounds what a compaction holds in memory.
    #[serde(default)]
    pub data_bytes: u64,
    pub time_ns_min: u64,
    pub time_ns_max: u64,
    pub seq_min: u64,
    pub seq_max: u64,
    pub received_ns_min: u64,
    pub received_ns_max: u64,
}

/// A key of the registry, in registry order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
}

/// Read progress of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressRecord {
    /// Stream id, 32 lowercase hex digits.
    pub stream: String,
    pub chunk: String,
    pub source: String,
    pub offset: u64,
    pub complete: bool,
    pub lost: bool,
    /// Receive time of the last commit to the chunk, ns since the epoch.
    pub updated_ns: u64,
}

/// What a source's chunk listing last said of one stream: its oldest chunk. The supervisor has
/// discarded every chunk before it, and chunk ids are never reused, so no older chunk will be
/// served again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorRecord {
    /// Stream id, 32 lowercase hex digits.
    pub stream: String,
    /// The oldest chunk id listed.
    pub oldest: String,
    /// When a listing of the stream was last seen, ns since the epoch.
    pub listed_ns: u64,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// Counts replacements.
    pub generation: u64,
    /// Every event with `sluice_seq` at most this is in a live segment (or was removed by
    /// retention); later ones are replayed from the write-ahead log.
    pub flushed_seq: u64,
    /// No `sluice_seq` below this is ever handed out again.
    pub next_seq: u64,
    /// Segment names are `seg-{segment_counter:012}.parquet`, counting up forever.
    pub segment_counter: u64,
    pub keys: Vec<KeyEntry>,
    pub segments: Vec<SegmentMeta>,
    pub progress: Vec<ProgressRecord>,
    /// Per stream, the oldest chunk its source last listed (absent in manifests written before).
    #[serde(default)]
    pub floors: Vec<FloorRecord>,
    pub chunks_lost_total: u64,
    pub compactions_total: u64,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            generation: 0,
            flushed_seq: 0,
            next_seq: 1,
            segment_counter: 0,
            keys: Vec::new(),
            segments: Vec::new(),
            progress: Vec::new(),
            floors: Vec::new(),
            chunks_lost_total: 0,
            compactions_total: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {path}: {source}; check that the data directory is readable and writable")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("manifest {path} is not valid ({reason}); restore it from a backup or move the data directory aside")]
    Invalid { path: PathBuf, reason: String },
    /// The new manifest is in place but its directory could not be synced: what is in memory and
    /// what a restart would read may now differ, so the store must stop and recover from disk.
    #[error("manifest {path} was replaced but its directory could not be synced: {source}")]
    Unsynced { path: PathBuf, source: std::io::Error },
}

impl SegmentMeta {
    /// Bytes on disk: the Parquet file and its term index.
    pub fn disk_bytes(&self) -> u64 {
        self.bytes + self.terms_bytes
    }
}

impl Manifest {
    /// Read the manifest of `data_dir`; a directory without one gets an empty manifest.
    /// Also returns the file's size.
    pub fn load(data_dir: &Path) -> Result<(Manifest, u64), ManifestError> {
        let path = data_dir.join(MANIFEST_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Manifest::default(), 0)),
            Err(source) => return Err(ManifestError::Io { path, source }),
        };
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| ManifestError::Invalid { path: path.clone(), reason: e.to_string() })?;
        if m.version != MANIFEST_VERSION {
            return Err(ManifestError::Invalid {
                path,
                reason: format!("version {} is not {MANIFEST_VERSION}", m.version),
            });
        }
        Ok((m, text.len() as u64))
    }

    /// Replace the manifest of `data_dir` atomically and durably; returns the file's size.
    pub fn store(&self, data_dir: &Path) -> Result<u64, ManifestError> {
        let tmp = data_dir.join(MANIFEST_TMP);
        let path = data_dir.join(MANIFEST_FILE);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ManifestError::Io { path, source }
        };
        let text = serde_json::to_vec(self).expect("a manifest always serializes");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| ManifestError::Unsynced { path: data_dir.to_path_buf(), source })?;
        Ok(text.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().0, Manifest::default());
        let mut m = Manifest { generation: 3, flushed_seq: 9, ..Default::default() };
        m.keys.push(KeyEntry { name: "a".into(), key_type: KeyType::Uint64 });
        m.store(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().0, m);
        let text = fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(text.contains(r#""keys":[{"name":"a","type":"uint64"}]"#), "{text}");
        fs::write(dir.path().join(MANIFEST_FILE), "{\"version\":1,").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not valid"), "{err}");
    }
}
