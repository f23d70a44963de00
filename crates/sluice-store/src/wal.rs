//! The write-ahead log: the record format, appending records to numbered files, and reading them
//! back at start with a torn or corrupt tail cut off.
//!
//! This module does no group commit and no fsync scheduling (the store decides when to sync the
//! files handed out by [`WalWriter::files_to_sync`]), and knows nothing of Arrow or Parquet.
//!
//! # Files
//!
//! `wal/NNNNNNNNNNNNNNNNNNNN.wal`, `N` the file index in 20 decimal digits, counting up forever
//! (the next index after a restart is one past the largest present). A file starts with the 8-byte
//! magic `SLUWAL01` and then holds records back to back. A new file is started when one reaches
//! [`WAL_FILE_BYTES_MAX`], at every start, and when a flush wants the files before it deleted.
//!
//! # Records
//!
//! ```text
//! record  := len:u32le crc:u32le payload[len]        crc = crc32c(payload), len <= WAL_RECORD_BYTES_MAX
//! payload := 1 commit | 2 lost
//! commit  := stream:u128le received_ns:u64le first_offset:u64le first_seq:u64le
//!            progress_offset:u64le flags:u8 (bit 0: chunk complete)
//!            source_len:u16le source chunk_len:u8 chunk lines           (lines = the rest)
//! lost    := stream:u128le received_ns:u64le offset:u64le source_len:u16le source chunk_len:u8 chunk
//! ```
//!
//! A commit record holds the lines kept from one batch (each ending in `'\n'`, the first at
//! `first_offset` of the chunk, the i-th line getting `sluice_seq` = `first_seq + i`) and the
//! chunk's read progress after them, so events and progress are durable together. The events
//! are re-derived from the lines on replay: parsing is deterministic.
//!
//! # Repair
//!
//! Reading stops at the first record that is short, longer than the limit, fails its crc or does
//! not decode: that file is cut there and every later file is deleted. Such a record was never
//! acknowledged (acknowledgement waits for the fsync of everything before it), so nothing
//! acknowledged is lost.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};

/// Magic at the start of every WAL file.
pub const WAL_MAGIC: &[u8; 8] = b"SLUWAL01";
/// A file is closed and a new one started once it reaches this size.
pub const WAL_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest record payload; a batch whose lines do not fit is refused.
pub const WAL_RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes before the payload: length and crc.
const RECORD_HEADER_BYTES: usize = 8;
const KIND_COMMIT: u8 = 1;
const KIND_LOST: u8 = 2;
const FLAG_COMPLETE: u8 = 1;

/// A commit record (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    pub stream: u128,
    pub received_ns: u64,
    pub first_offset: u64,
    pub first_seq: u64,
    pub progress_offset: u64,
    pub complete: bool,
    pub source: Arc<str>,
    pub chunk: Arc<str>,
    pub lines: Bytes,
}

/// A chunk that was gone before it was read completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRecord {
    pub stream: u128,
    pub received_ns: u64,
    pub offset: u64,
    pub source: Arc<str>,
    pub chunk: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Commit(CommitRecord),
    Lost(LostRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal file {path}: {source}; check that the data directory is writable and the disk not full")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("wal record of {bytes} bytes is larger than the limit of {WAL_RECORD_BYTES_MAX}; send smaller batches")]
    TooLarge { bytes: usize },
    /// An append failed part-way and the part it wrote could not be cut off: the file no longer
    /// ends on a whole record, so nothing may be appended after it.
    #[error(
        "wal file {path}: {source}, and cutting off the partly written record failed too ({cut}); \
         check that the data directory is writable and the disk not full"
    )]
    Torn { path: PathBuf, source: std::io::Error, cut: std::io::Error },
}

impl WalError {
    /// Whether the log can take further appends after this error: every error but [`WalError::Torn`]
    /// leaves it as it was before the failed append.
    pub fn log_intact(&self) -> bool {
        !matches!(self, WalError::Torn { .. })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Encode a record with its header onto `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) -> Result<(), WalError> {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    let (source, chunk) = match record {
        Record::Commit(c) => {
            out.push(KIND_COMMIT);
            out.extend_from_slice(&c.stream.to_le_bytes());
            out.extend_from_slice(&c.received_ns.to_le_bytes());
            out.extend_from_slice(&c.first_offset.to_le_bytes());
            out.extend_from_slice(&c.first_seq.to_le_bytes());
            out.extend_from_slice(&c.progress_offset.to_le_bytes());
            out.push(if c.complete { FLAG_COMPLETE } else { 0 });
            (&c.source, &c.chunk)
        }
        Record::Lost(l) => {
            out.push(KIND_LOST);
            out.extend_from_slice(&l.stream.to_le_bytes());
            out.extend_from_slice(&l.received_ns.to_le_bytes());
            out.extend_from_slice(&l.offset.to_le_bytes());
            (&l.source, &l.chunk)
        }
    };
    // Names longer than their length field are cut: a source name is configuration and a valid
    // chunk id has at most 16 bytes, so this only bounds garbage.
    let source = cut(source, u16::MAX as usize);
    out.extend_from_slice(&(source.len() as u16).to_le_bytes());
    out.extend_from_slice(source.as_bytes());
    let chunk = cut(chunk, u8::MAX as usize);
    out.push(chunk.len() as u8);
    out.extend_from_slice(chunk.as_bytes());
    if let Record::Commit(c) = record {
        out.extend_from_slice(&c.lines);
    }
    let len = out.len() - start - RECORD_HEADER_BYTES;
    if len > WAL_RECORD_BYTES_MAX {
        out.truncate(start);
        return Err(WalError::TooLarge { bytes: len });
    }
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decode a payload whose crc matched; `None` if it is malformed.
fn decode(mut p: Bytes) -> Option<Record> {
    fn take_str(p: &mut Bytes, len: usize) -> Option<Arc<str>> {
        if p.remaining() < len {
            return None;
        }
        let b = p.split_to(len);
        std::str::from_utf8(&b).ok().map(Arc::from)
    }
    let kind = p.try_get_u8().ok()?;
    match kind {
        KIND_COMMIT => {
            let stream = p.try_get_u128_le().ok()?;
            let received_ns = p.try_get_u64_le().ok()?;
            let first_offset = p.try_get_u64_le().ok()?;
            let first_seq = p.try_get_u64_le().ok()?;
            let progress_offset = p.try_get_u64_le().ok()?;
            let flags = p.try_get_u8().ok()?;
            let source_len = p.try_get_u16_le().ok()? as usize;
            let source = take_str(&mut p, source_len)?;
            let chunk_len = p.try_get_u8().ok()? as usize;
            let chunk = take_str(&mut p, chunk_len)?;
            Some(Record::Commit(CommitRecord {
                stream,
                received_ns,
                first_offset,
                first_seq,
                progress_offset,
                complete: flags & FLAG_COMPLETE != 0,
                source,
                chunk,
                lines: p,
            }))
        }
        KIND_LOST => {
            let stream = p.try_get_u128_le().ok()?;
            let received_ns = p.try_get_u64_le().ok()?;
            let offset = p.try_get_u64_le().ok()?;
            let source_len = p.try_get_u16_le().ok()? as usize;
            let source = take_str(&mut p, source_len)?;
            let chunk_len = p.try_get_u8().ok()? as usize;
            let chunk = take_str(&mut p, chunk_len)?;
            if p.has_remaining() {
                return None;
            }
            Some(Record::Lost(LostRecord { stream, received_ns, offset, source, chunk }))
        }
        _ => None,
    }
}

/// Records read back from one file.
#[derive(Debug)]
pub struct ReplayedFile {
    pub index: u64,
    pub bytes: u64,
    pub records: Vec<Record>,
}

/// What [`replay`] found.
#[derive(Debug, Default)]
pub struct Replay {
    pub files: Vec<ReplayedFile>,
    /// Bytes cut from a torn or corrupt tail, and whole later files deleted.
    pub cut_bytes: u64,
    pub files_deleted: u64,
}

fn file_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.wal"))
}

/// The WAL files in `dir` by index; other names are ignored.
pub fn list(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".wal") {
            if stem.len() == 20 {
                if let Ok(index) = stem.parse::<u64>() {
                    out.push(index);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Read every record of every file in order, repairing as the module docs say.
pub fn replay(dir: &Path) -> Result<Replay, WalError> {
    let mut replay = Replay::default();
    let indexes = list(dir)?;
    let mut cut_at: Option<usize> = None;
    for (pos, &index) in indexes.iter().enumerate() {
        let path = file_path(dir, index);
        let data = Bytes::from(fs::read(&path).map_err(io(&path))?);
        let mut records = Vec::new();
        let mut at;
        let good_end = if data.len() < WAL_MAGIC.len() || &data[..WAL_MAGIC.len()] != WAL_MAGIC {
            0
        } else {
            at = WAL_MAGIC.len();
            loop {
                if at == data.len() {
                    break at;
                }
                if data.len() - at < RECORD_HEADER_BYTES {
                    break at;
                }
                let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
                let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
                let body = at + RECORD_HEADER_BYTES;
                if len > WAL_RECORD_BYTES_MAX || data.len() - body < len {
                    break at;
                }
                let payload = data.slice(body..body + len);
                if crc32c::crc32c(&payload) != crc {
                    break at;
                }
                let Some(record) = decode(payload) else { break at };
                records.push(record);
                at = body + len;
            }
        };
        let torn = good_end < data.len() || good_end == 0;
        if torn {
            // Cut the file to its good records (a file without even its magic is rewritten empty).
            let file = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
            if good_end == 0 {
                file.set_len(0).map_err(io(&path))?;
                (&file).write_all(WAL_MAGIC).map_err(io(&path))?;
            } else {
                file.set_len(good_end as u64).map_err(io(&path))?;
            }
            file.sync_all().map_err(io(&path))?;
            replay.cut_bytes += (data.len() - good_end) as u64;
        }
        replay.files.push(ReplayedFile { index, bytes: good_end.max(WAL_MAGIC.len()) as u64, records });
        if torn {
            cut_at = Some(pos + 1);
            break;
        }
    }
    if let Some(from) = cut_at {
        for &index in &indexes[from..] {
            let path = file_path(dir, index);
            replay.cut_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io(&path))?;
            replay.files_deleted += 1;
        }
        sync_dir(dir)?;
    }
    Ok(replay)
}

/// fsync a directory so that creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Appends records to the current file; rotates files. Not thread-safe by itself: the store
/// holds it under its state lock so that WAL order is `sluice_seq` order.
#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    file: Arc<File>,
    index: u64,
    file_bytes: u64,
    /// Whether the current file has bytes not yet handed out for syncing.
    dirty: bool,
    /// Closed files with bytes not yet synced, and whether the directory needs a sync (a file
    /// was created since the last sync).
    unsynced: Vec<Arc<File>>,
    dir_dirty: bool,
    /// Sizes of the live files, by index.
    files: std::collections::BTreeMap<u64, u64>,
    /// Test hook: the next append writes half of its records, then fails as a full disk does.
    torn_next: bool,
}

/// Files (and the directory) that a sync must cover to make everything appended so far durable.
#[derive(Debug, Default)]
pub struct SyncSet {
    pub files: Vec<Arc<File>>,
    pub dir: Option<PathBuf>,
}

impl WalWriter {
    /// Start a new file after the files already present (whose sizes are given).
    pub fn open(dir: &Path, existing: &[(u64, u64)]) -> Result<WalWriter, WalError> {
        let files: std::collections::BTreeMap<u64, u64> = existing.iter().copied().collect();
        let index = files.keys().next_back().map_or(1, |i| i + 1);
        let (file, file_bytes) = create(dir, index)?;
        let mut w = WalWriter {
            dir: dir.to_path_buf(),
            file,
            index,
            file_bytes,
            dirty: true,
            unsynced: Vec::new(),
            dir_dirty: true,
            files,
            torn_next: false,
        };
        w.files.insert(index, file_bytes);
        Ok(w)
    }

    /// Index of the file being appended to.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Total bytes of the live WAL files.
    pub fn bytes(&self) -> u64 {
        self.files.values().sum()
    }

    /// Append encoded records (one or more, with headers). Rotates first if the file is full.
    ///
    /// A write that fails part-way (a full disk) is cut off again, so that the file ends on the
    /// last whole record and a later append follows it as if the failed one had never been tried:
    /// the error then leaves the log intact ([`WalError::log_intact`]). Only if the cut fails too
    /// is the error [`WalError::Torn`].
    pub fn append(&mut self, encoded: &[u8]) -> Result<(), WalError> {
        if self.file_bytes >= WAL_FILE_BYTES_MAX {
            self.rotate()?;
        }
        let path = file_path(&self.dir, self.index);
        let written = if std::mem::take(&mut self.torn_next) {
            let half = &encoded[..encoded.len() / 2];
            let enospc = std::io::Error::from_raw_os_error(28);
            (&*self.file).write_all(half).and(Err(enospc))
        } else {
            (&*self.file).write_all(encoded)
        };
        if let Err(source) = written {
            // The file is opened for appending: once cut, the next write lands at its end.
            return Err(match self.file.set_len(self.file_bytes) {
                Ok(()) => WalError::Io { path, source },
                Err(cut) => WalError::Torn { path, source, cut },
            });
        }
        self.file_bytes += encoded.len() as u64;
        self.files.insert(self.index, self.file_bytes);
        self.dirty = true;
        Ok(())
    }

    /// Make the next append write half of its records and then fail as a full disk does (for
    /// tests of what follows a failed write).
    #[doc(hidden)]
    pub fn tear_next_append(&mut self) {
        self.torn_next = true;
    }

    /// Close the current file and start the next one.
    pub fn rotate(&mut self) -> Result<(), WalError> {
        let (file, bytes) = create(&self.dir, self.index + 1)?;
        let old = std::mem::replace(&mut self.file, file);
        if self.dirty {
            self.unsynced.push(old);
        }
        self.index += 1;
        self.file_bytes = bytes;
        self.files.insert(self.index, bytes);
        self.dirty = true;
        self.dir_dirty = true;
        Ok(())
    }

    /// What must be synced to make everything appended so far durable; resets the dirty marks
    /// (the caller must sync all of it, or treat the store as failed).
    pub fn files_to_sync(&mut self) -> SyncSet {
        let mut set = SyncSet { files: std::mem::take(&mut self.unsynced), dir: None };
        if self.dirty {
            set.files.push(self.file.clone());
            self.dirty = false;
        }
        if self.dir_dirty {
            set.dir = Some(self.dir.clone());
            self.dir_dirty = false;
        }
        set
    }

    /// Delete every file with an index below `index` (never the current one).
    pub fn delete_below(&mut self, index: u64) -> Result<u64, WalError> {
        let index = index.min(self.index);
        let doomed: Vec<u64> = self.files.range(..index).map(|(i, _)| *i).collect();
        for i in &doomed {
            let path = file_path(&self.dir, *i);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::Io { path, source: e }),
            }
            self.files.remove(i);
        }
        Ok(doomed.len() as u64)
    }
}

fn create(dir: &Path, index: u64) -> Result<(Arc<File>, u64), WalError> {
    let path = file_path(dir, index);
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io(&path))?;
    if let Err(e) = file.write_all(WAL_MAGIC) {
        // Not yet part of the log: removed, so that a later try can create it again.
        let _ = std::fs::remove_file(&path);
        return Err(io(&path)(e));
    }
    Ok((Arc::new(file), WAL_MAGIC.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(seq: u64, lines: &'static [u8]) -> Record {
        Record::Commit(CommitRecord {
            stream: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            received_ns: 42,
            first_offset: 100,
            first_seq: seq,
            progress_offset: 100 + lines.len() as u64,
            complete: seq.is_multiple_of(2),
            source: "web-1".into(),
            chunk: "CDF".into(),
            lines: Bytes::from_static(lines),
        })
    }

    fn lost() -> Record {
        Record::Lost(LostRecord { stream: 7, received_ns: 9, offset: 11, source: "s".into(), chunk: "C".into() })
    }

    /// The documented layout, byte by byte, for a lost record.
    #[test]
    fn documented_lost_layout() {
        let mut out = Vec::new();
        encode(&lost(), &mut out).unwrap();
        let mut want_payload = vec![KIND_LOST];
        want_payload.extend_from_slice(&7u128.to_le_bytes());
        want_payload.extend_from_slice(&9u64.to_le_bytes());
        want_payload.extend_from_slice(&11u64.to_le_bytes());
        want_payload.extend_from_slice(&1u16.to_le_bytes());
        want_payload.push(b's');
        want_payload.push(1);
        want_payload.push(b'C');
        assert_eq!(&out[..4], &(want_payload.len() as u32).to_le_bytes());
        assert_eq!(&out[4..8], &crc32c::crc32c(&want_payload).to_le_bytes());
        assert_eq!(&out[8..], &want_payload[..]);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), &[]).unwrap();
        let records = [commit(1, b"{\"a\":1}\n"), lost(), commit(2, b"x\ny\n")];
        for r in &records {
            let mut buf = Vec::new();
            encode(r, &mut buf).unwrap();
            w.append(&buf).unwrap();
        }
        w.rotate().unwrap();
        let mut buf = Vec::new();
        encode(&commit(4, b"z\n"), &mut buf).unwrap();
        w.append(&buf).unwrap();
        drop(w);
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.files[0].records, records);
        assert_eq!(r.files[1].records, [commit(4, b"z\n")]);
        assert_eq!(r.cut_bytes, 0);

        // Tear the last record of the first file: the rest of it and the second file go.
        let first = file_path(dir.path(), 1);
        let len = fs::metadata(&first).unwrap().len();
        OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 3).unwrap();
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].records, records[..2]);
        assert_eq!(r.files_deleted, 1);
        assert_eq!(list(dir.path()).unwrap(), [1]);
        // Repaired: a second replay finds the same and cuts nothing.
        let again = replay(dir.path()).unwrap();
        assert_eq!(again.files[0].records, records[..2]);
        assert_eq!(again.cut_bytes, 0);
    }

    #[test]
    fn an_append_that_fails_part_way_leaves_the_log_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), &[]).unwrap();
        let records = [commit(1, b"{\"a\":1}\n"), commit(2, b"x\ny\n"), commit(4, b"z\n")];
        let encoded: Vec<Vec<u8>> = records
            .iter()
            .map(|r| {
                let mut buf = Vec::new();
                encode(r, &mut buf).unwrap();
                buf
            })
            .collect();
        w.append(&encoded[0]).unwrap();
        let before = w.bytes();
        // The disk fills half-way through the second record: it is refused, nothing of it stays.
        w.tear_next_append();
        let e = w.append(&encoded[1]).unwrap_err();
        assert!(e.log_intact(), "{e}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert_eq!(w.bytes(), before);
        assert_eq!(fs::metadata(file_path(dir.path(), 1)).unwrap().len(), before);
        // Space again: the retry and the next record follow the first as if nothing had happened.
        w.append(&encoded[1]).unwrap();
        w.append(&encoded[2]).unwrap();
        drop(w);
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].records, records);
        assert_eq!(r.cut_bytes, 0);
    }

    #[test]
    fn a_flipped_bit_cuts_from_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), &[]).unwrap();
        for seq in 0..3 {
            let mut buf = Vec::new();
            encode(&commit(seq, b"line\n"), &mut buf).unwrap();
            w.append(&buf).unwrap();
        }
        drop(w);
        let path = file_path(dir.path(), 1);
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0x10;
        fs::write(&path, &data).unwrap();
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.files[0].records.len(), 2);
    }

    proptest::proptest! {
        /// Cutting the file anywhere leaves exactly the records that were wholly before the cut.
        #[test]
        fn any_truncation_keeps_a_prefix(sizes in proptest::collection::vec(0usize..40, 1..6), cut_frac in 0.0f64..1.0) {
            let dir = tempfile::tempdir().unwrap();
            let mut w = WalWriter::open(dir.path(), &[]).unwrap();
            let mut ends = vec![];
            let mut total = WAL_MAGIC.len();
            let mut recs = vec![];
            for (i, n) in sizes.iter().enumerate() {
                let r = Record::Commit(CommitRecord { lines: Bytes::from(vec![b'x'; *n]), ..match commit(i as u64, b"") { Record::Commit(c) => c, _ => unreachable!() } });
                let mut buf = Vec::new();
                encode(&r, &mut buf).unwrap();
                w.append(&buf).unwrap();
                total += buf.len();
                ends.push(total);
                recs.push(r);
            }
            drop(w);
            let cut = (total as f64 * cut_frac) as usize;
            let path = file_path(dir.path(), 1);
            OpenOptions::new().write(true).open(&path).unwrap().set_len(cut as u64).unwrap();
            let r = replay(dir.path()).unwrap();
            let kept = ends.iter().filter(|e| **e <= cut).count();
            proptest::prop_assert_eq!(&r.files[0].records[..], &recs[..kept]);
        }
    }
}
