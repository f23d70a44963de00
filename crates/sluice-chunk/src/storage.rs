//! The file layer under the chunk log: one flat directory of named files.
//!
//! [`DiskStorage`] is the real thing (std::fs, fdatasync, directory fsync, an exclusive lock).
//! [`MemStorage`] keeps files in memory and models what survives a crash: only what was synced,
//! plus any prefix of what was not (so torn lines happen), and only directory changes that a
//! directory sync covered. The crash-recovery tests run the real log over it.
//! Neither knows anything about chunks.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub len: u64,
    /// Last modification, ns since the Unix epoch.
    pub modified_ns: u64,
}

/// A flat directory of files.
pub trait Storage: Send + Sync + 'static {
    type File: StorageFile;
    type Reader: Read + Seek + Send + 'static;

    /// All regular files.
    fn list(&self) -> io::Result<Vec<Entry>>;
    /// Create a new, empty file for appending; fails if it exists.
    fn create_new(&self, name: &str) -> io::Result<Self::File>;
    /// Open an existing file for appending (repair).
    fn open_append(&self, name: &str) -> io::Result<Self::File>;
    /// Open a file for reading from the start.
    fn open_read(&self, name: &str) -> io::Result<Self::Reader>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Make creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;

    /// Whole contents of a small file.
    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_read(name)?.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Replace a small file atomically and durably: temporary file, sync, rename, directory sync.
    fn write_atomic(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        let tmp = format!("{name}.tmp");
        match self.remove(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = self.create_new(&tmp)?;
        f.write_all(contents)?;
        f.sync_data()?;
        drop(f);
        self.rename(&tmp, name)?;
        self.sync_dir()
    }
}

/// A file open for appending.
pub trait StorageFile: Send + Sync + 'static {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fdatasync: everything written before the call is durable when it returns.
    fn sync_data(&self) -> io::Result<()>;
    /// Cut the file to `len` bytes (undo a partial write, cut a torn line).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// A second handle to the same file, so that a sync can run while writes go on.
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
}

// ---------------------------------------------------------------------------------------------

/// Name of the lock file that keeps two writers out of one directory.
pub const LOCK_FILE: &str = "LOCK";

/// The real directory.
pub struct DiskStorage {
    dir: PathBuf,
    dir_handle: File,
    // Held for the life of the storage: the exclusive lock on `LOCK`.
    _lock: File,
}

impl DiskStorage {
    /// Open (creating if needed) `dir` and take its exclusive lock.
    pub fn open(dir: &Path) -> io::Result<DiskStorage> {
        fs::create_dir_all(dir).map_err(|e| annotate(e, dir, "create the data directory"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| annotate(e, dir, "open the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{}: another sluice process is using this data directory; stop it or choose another --data-dir",
                        dir.display()
                    ),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(annotate(e, dir, "lock the data directory")),
        }
        let dir_handle = File::open(dir).map_err(|e| annotate(e, dir, "open the data directory"))?;
        Ok(DiskStorage { dir: dir.to_path_buf(), dir_handle, _lock: lock })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn at(&self, name: &str) -> PathBuf {
        debug_assert!(!name.contains('/') && name != ".." && name != ".", "storage names are flat");
        self.dir.join(name)
    }
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{}: cannot {what}: {e}", path.display()))
}

impl Storage for DiskStorage {
    type File = File;
    type Reader = File;

    fn list(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for ent in fs::read_dir(&self.dir)? {
            let ent = ent?;
            let meta = ent.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                out.push(Entry {
                    name: ent.file_name().to_string_lossy().into_owned(),
                    len: meta.len(),
                    modified_ns: 0,
                });
                continue;
            };
            let modified_ns =
                meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64);
            out.push(Entry { name, len: meta.len(), modified_ns });
        }
        Ok(out)
    }

    fn create_new(&self, name: &str) -> io::Result<File> {
        OpenOptions::new().append(true).create_new(true).open(self.at(name))
    }

    fn open_append(&self, name: &str) -> io::Result<File> {
        OpenOptions::new().append(true).open(self.at(name))
    }

    fn open_read(&self, name: &str) -> io::Result<File> {
        File::open(self.at(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.at(from), self.at(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.at(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.dir_handle.sync_all()
    }
}

impl StorageFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)?;
        // Append mode writes at the end whatever the cursor says; keep the cursor honest anyway.
        self.seek(SeekFrom::Start(len)).map(|_| ())
    }
    fn try_clone(&self) -> io::Result<File> {
        File::try_clone(self)
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct MemFileData {
    /// Everything written (what a reader sees now).
    data: Vec<u8>,
    /// How much of `data` a crash keeps for sure.
    durable_len: usize,
    modified_ns: u64,
}

type MemFile = Arc<Mutex<MemFileData>>;

#[derive(Default)]
struct MemDir {
    /// Names as a reader sees them now.
    live: BTreeMap<String, MemFile>,
    /// Names as a crash would leave them.
    durable: BTreeMap<String, MemFile>,
    /// Bytes the "disk" holds before writes fail with ENOSPC.
    capacity: Option<usize>,
    /// New files cannot be created (EMFILE: no file descriptors left).
    fail_creates: bool,
    /// fdatasync fails (EIO).
    fail_syncs: bool,
    now_ns: u64,
    syncs_data: u64,
    syncs_dir: u64,
}

/// An in-memory directory that can simulate a crash. Clones share the same directory.
#[derive(Clone, Default)]
pub struct MemStorage {
    dir: Arc<Mutex<MemDir>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a test storage lock is already a failed test; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Writes fail with "no space left" once the files hold this many bytes in all.
    pub fn set_capacity(&self, bytes: Option<usize>) {
        lock(&self.dir).capacity = bytes;
    }

    /// Creating a file fails with EMFILE (no file descriptors left) while this is set.
    pub fn set_fail_creates(&self, fail: bool) {
        lock(&self.dir).fail_creates = fail;
    }

    /// A file's fdatasync fails with EIO while this is set.
    pub fn set_fail_syncs(&self, fail: bool) {
        lock(&self.dir).fail_syncs = fail;
    }

    /// The time that new writes stamp as their modification time.
    pub fn set_now_ns(&self, now_ns: u64) {
        lock(&self.dir).now_ns = now_ns;
    }

    /// (data syncs, directory syncs) so far.
    pub fn sync_counts(&self) -> (u64, u64) {
        let d = lock(&self.dir);
        (d.syncs_data, d.syncs_dir)
    }

    /// Simulate power loss: the directory reverts to its last synced state, and each file keeps
    /// what was synced plus `keep(unsynced_len)` more bytes of what was not.
    pub fn crash(&self, mut keep: impl FnMut(usize) -> usize) {
        let mut d = lock(&self.dir);
        let durable = d.durable.clone();
        for file in durable.values() {
            let mut f = lock(file);
            let extra = f.data.len() - f.durable_len;
            let kept = f.durable_len + keep(extra).min(extra);
            f.data.truncate(kept);
            f.durable_len = kept;
        }
        d.live = durable;
    }

    /// Contents of a file as a reader sees it now.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.dir).live.get(name).map(|f| lock(f).data.clone())
    }

    fn get(&self, name: &str) -> io::Result<MemFile> {
        lock(&self.dir).live.get(name).cloned().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }
}

/// A handle on a [`MemStorage`] file.
pub struct MemHandle {
    dir: Arc<Mutex<MemDir>>,
    file: MemFile,
}

impl Storage for MemStorage {
    type File = MemHandle;
    type Reader = io::Cursor<Vec<u8>>;

    fn list(&self) -> io::Result<Vec<Entry>> {
        let d = lock(&self.dir);
        Ok(d.live
            .iter()
            .map(|(name, f)| {
                let f = lock(f);
                Entry { name: name.clone(), len: f.data.len() as u64, modified_ns: f.modified_ns }
            })
            .collect())
    }

    fn create_new(&self, name: &str) -> io::Result<MemHandle> {
        let mut d = lock(&self.dir);
        if d.fail_creates {
            return Err(io::Error::from_raw_os_error(24)); // EMFILE
        }
        if d.live.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_owned()));
        }
        let file: MemFile = Arc::new(Mutex::new(MemFileData { modified_ns: d.now_ns, ..Default::default() }));
        d.live.insert(name.to_owned(), file.clone());
        Ok(MemHandle { dir: self.dir.clone(), file })
    }

    fn open_append(&self, name: &str) -> io::Result<MemHandle> {
        Ok(MemHandle { dir: self.dir.clone(), file: self.get(name)? })
    }

    fn open_read(&self, name: &str) -> io::Result<io::Cursor<Vec<u8>>> {
        let f = self.get(name)?;
        let data = lock(&f).data.clone();
        Ok(io::Cursor::new(data))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut d = lock(&self.dir);
        let f = d.live.remove(from).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_owned()))?;
        d.live.insert(to.to_owned(), f);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut d = lock(&self.dir);
        d.live.remove(name).map(|_| ()).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut d = lock(&self.dir);
        d.durable = d.live.clone();
        d.syncs_dir += 1;
        Ok(())
    }
}

impl StorageFile for MemHandle {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let d = lock(&self.dir);
        if let Some(cap) = d.capacity {
            let used: usize = d.live.values().map(|f| lock(f).data.len()).sum();
            if used + buf.len() > cap {
                // Like a real full disk: part of the write may land before the error.
                let room = cap.saturating_sub(used);
                let mut f = lock(&self.file);
                f.data.extend_from_slice(&buf[..room.min(buf.len())]);
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        let now = d.now_ns;
        drop(d);
        let mut f = lock(&self.file);
        f.data.extend_from_slice(buf);
        f.modified_ns = now;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if lock(&self.dir).fail_syncs {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        let mut f = lock(&self.file);
        f.durable_len = f.data.len();
        drop(f);
        lock(&self.dir).syncs_data += 1;
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut f = lock(&self.file);
        let len = len as usize;
        f.data.resize(len, 0);
        f.durable_len = f.durable_len.min(len);
        Ok(())
    }

    fn try_clone(&self) -> io::Result<MemHandle> {
        Ok(MemHandle { dir: self.dir.clone(), file: self.file.clone() })
    }
}
