//! A token cache in a file, shared by the processes of one machine.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use freshtoken_core::{CacheError, CacheErrorKind, LeaseOutcome, Timestamp, Token};
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use super::holder::holder_id;
use super::sealed::{self, Codec, Decoded};
use super::TokenCache;

/// How long to retry the sidecar's kernel lock before answering
/// [`LeaseOutcome::Busy`]. Holders keep it for a read and a small write, so
/// contention clears in microseconds; a lock still held after this long means
/// another process is in the middle of taking or giving up the lease.
const LOCK_PATIENCE: Duration = Duration::from_millis(25);

/// A token cache in one file, with a cross-process lease.
///
/// * **Writes are atomic and durable**: the record goes to a temporary file
///   in the same directory (mode 0600 on unix), is fsynced, renamed over the
///   cache file, and the directory is fsynced. A reader sees the old record
///   or the new one, never a mix, however many processes write at once.
/// * **A bad file is a miss, not an error**: a missing, empty, truncated,
///   corrupt, foreign-version or unreadable file makes [`load`](TokenCache::load)
///   return `Ok(None)` with a `tracing` warning, so refreshing goes on. A file
///   that was read but could not be decoded is renamed to
///   `<name>.corrupt-<unix ms>-<pid>` for inspection instead of being
///   overwritten by the next store.
/// * **The format** is the versioned JSON record of [`record`](super::record); a file
///   written by aliri_tokens 0.3 is read too. With the `encryption` feature,
///   [`encryption`](Self::encryption) seals it at rest. A record this
///   instance cannot read (a newer version, sealed with a key it does not
///   hold) is a [`CacheErrorKind::Unreadable`] error, left in place: a store
///   does not replace it.
/// * **The lease** lives in a sidecar file, `<name>.lock`, holding the
///   holder's id and the lease's deadline (wall-clock ms). Taking it locks
///   the sidecar with an advisory lock ([`fs4`]) just long enough to read
///   the current lease and write ours, so the kernel lock is never held
///   across a fetch; the deadline is what keeps others out, and a crashed
///   holder blocks nobody past it. Each `FileCache` value is one holder.
///
/// ```
/// use freshtoken::cache::{FileCache, TokenCache};
/// use freshtoken::{AccessToken, LeaseOutcome, Timestamp, Token};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let cache = FileCache::new(dir.path().join("token.json"));
/// assert_eq!(cache.load()?, None);
///
/// let token = Token::new(AccessToken::new("at"), Timestamp::EPOCH, Timestamp::MAX, Timestamp::MAX);
/// cache.store(&token)?;
/// assert_eq!(cache.load()?, Some(token));
///
/// let other = FileCache::new(dir.path().join("token.json"));
/// assert_eq!(cache.acquire_lease(Duration::from_secs(10))?, LeaseOutcome::Granted);
/// assert_eq!(other.acquire_lease(Duration::from_secs(10))?, LeaseOutcome::Busy);
/// cache.release_lease()?;
/// assert_eq!(other.acquire_lease(Duration::from_secs(10))?, LeaseOutcome::Granted);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileCache {
    path: PathBuf,
    lock_path: PathBuf,
    holder: String,
    codec: Codec,
}

/// The sidecar's content.
#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    until_ms: u64,
}

impl FileCache {
    /// A cache in the file at `path`. Nothing is touched until it is used;
    /// a missing directory is created (mode 0700 on unix) by the first store.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
        lock_name.push(".lock");
        let lock_path = path.with_file_name(lock_name);
        FileCache {
            path,
            lock_path,
            holder: holder_id(),
            codec: Codec::default(),
        }
    }

    /// Encrypts the record at rest with `keys` (see
    /// [`EncryptionKeys`](super::EncryptionKeys)). The file's name is bound
    /// to the record, so a record copied to another cache file is refused
    /// (the directory may move: only the name counts).
    #[cfg(feature = "encryption")]
    pub fn encryption(mut self, keys: super::EncryptionKeys) -> Self {
        self.codec = Codec::with_keys(keys);
        self
    }

    /// What a record in this file is bound to: the file's name.
    fn binding(&self) -> Vec<u8> {
        sealed::binding(self.path.file_name().unwrap_or_default().as_encoded_bytes())
    }

    /// Refuses to replace a record this instance cannot read (sealed with
    /// a key it does not hold, a newer version): it may hold a peer's
    /// newest refresh token. A missing, unreadable or corrupt file may be
    /// replaced.
    fn check_existing(&self) -> Result<(), CacheError> {
        // Only a regular file can hold a record; anything else (a FIFO, a
        // device, a symlink) is not opened here, so it cannot hang the store.
        if !fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_file()) {
            return Ok(());
        }
        let Ok(file) = File::open(&self.path) else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        if file.take(1 << 20).read_to_end(&mut bytes).is_err() {
            return Ok(());
        }
        self.codec
            .check_overwrite(&bytes, &self.binding(), &self.path.display().to_string())
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lease's sidecar file.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    fn io_error(&self, path: &Path, what: &str, e: io::Error) -> CacheError {
        CacheError::new(
            CacheErrorKind::Io,
            format!("{what} {}: {e}", path.display()),
        )
    }

    /// Moves the undecodable file aside, unless another process has replaced
    /// it since we opened it (then the bad version is already gone, and
    /// renaming would hide a good token).
    fn quarantine(&self, opened: &File) -> Option<PathBuf> {
        if !same_file(opened, &self.path) {
            return None;
        }
        let mut name = self.path.file_name()?.to_os_string();
        name.push(format!(
            ".corrupt-{}-{}",
            Timestamp::from_system_time(SystemTime::now()).as_millis(),
            std::process::id()
        ));
        let aside = self.path.with_file_name(name);
        match fs::rename(&self.path, &aside) {
            Ok(()) => Some(aside),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not move the bad token cache file aside");
                None
            }
        }
    }

    fn open_lock(&self) -> Result<File, CacheError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&self.lock_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_private_dir(self.dir()).and_then(|()| options.open(&self.lock_path))
            }
            other => other,
        }
        .map_err(|e| self.io_error(&self.lock_path, "cannot open lease file", e))
    }

    /// Runs `f` with the sidecar locked, or returns `None` if it stays locked.
    fn with_lock<T>(
        &self,
        f: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> Result<Option<T>, CacheError> {
        let mut file = self.open_lock()?;
        let deadline = Instant::now() + LOCK_PATIENCE;
        loop {
            match file.try_lock_exclusive() {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(false) => return Ok(None),
                Err(e) => return Err(self.io_error(&self.lock_path, "cannot lock lease file", e)),
            }
        }
        let result = f(&mut file);
        // Closing the file releases the lock too; unlocking first just makes
        // the release explicit and immediate.
        let _ = FileExt::unlock(&file);
        result
            .map(Some)
            .map_err(|e| self.io_error(&self.lock_path, "cannot update lease file", e))
    }
}

impl TokenCache for FileCache {
    fn load(&self) -> Result<Option<Token>, CacheError> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "token cache file unreadable; treating it as a miss");
                return Ok(None);
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.read_to_end(&mut bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "token cache file unreadable; treating it as a miss");
            return Ok(None);
        }
        let what = self.path.display().to_string();
        match self.codec.decode(&bytes, &self.binding(), &what)? {
            Decoded::Token(token) => Ok(Some(token)),
            Decoded::Corrupt(e) => {
                let kept = self.quarantine(&file);
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    kept_as = kept.as_ref().map(|p| p.display().to_string()),
                    "token cache file is not a usable record; treating it as a miss"
                );
                Ok(None)
            }
        }
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        self.check_existing()?;
        let record = self.codec.encode(token, &self.binding())?;
        let dir = self.dir();
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(self.path.file_name().unwrap_or_default());
        prefix.push(".");
        // tempfile creates the file with mode 0600 and removes it if we fail
        // before the rename.
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        let mut tmp = match builder.tempfile_in(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_private_dir(dir).and_then(|()| builder.tempfile_in(dir))
            }
            other => other,
        }
        .map_err(|e| self.io_error(dir, "cannot create a temporary file in", e))?;
        tmp.write_all(&record)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| self.io_error(tmp.path(), "cannot write", e))?;
        tmp.persist(&self.path)
            .map_err(|e| self.io_error(&self.path, "cannot replace", e.error))?;
        sync_dir(dir).map_err(|e| self.io_error(dir, "cannot sync directory", e))?;
        sweep_orphans(dir, &prefix);
        Ok(())
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let now = Timestamp::from_system_time(SystemTime::now());
        let outcome = self.with_lock(|file| {
            let mut text = Vec::new();
            file.read_to_end(&mut text)?;
            // An empty, garbled or foreign sidecar is no lease: a crashed
            // writer must not block everyone forever.
            let current: Option<LeaseRecord> = serde_json::from_slice(&text).ok();
            let taken = current.is_some_and(|lease| {
                lease.holder != self.holder && now < Timestamp::from_millis(lease.until_ms)
            });
            if taken {
                return Ok(LeaseOutcome::Busy);
            }
            let ours = LeaseRecord {
                holder: self.holder.clone(),
                until_ms: (now + ttl).as_millis(),
            };
            let bytes = serde_json::to_vec(&ours).map_err(io::Error::other)?;
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&bytes)?;
            Ok(LeaseOutcome::Granted)
        })?;
        Ok(outcome.unwrap_or(LeaseOutcome::Busy))
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        if !self.lock_path.exists() {
            return Ok(());
        }
        // If the sidecar stays locked, give up: our lease ends at its deadline.
        self.with_lock(|file| {
            let mut text = Vec::new();
            file.read_to_end(&mut text)?;
            let ours = serde_json::from_slice::<LeaseRecord>(&text)
                .is_ok_and(|lease| lease.holder == self.holder);
            if ours {
                file.set_len(0)?;
            }
            Ok(())
        })
        .map(|_| ())
    }
}

/// Creates `dir` and its parents, private to the owner on unix.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Whether `opened` is still the file at `path`.
#[cfg(unix)]
fn same_file(opened: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (opened.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_opened: &File, path: &Path) -> bool {
    path.exists()
}

/// Removes temporary files left by writers that were killed between
/// creating and renaming them. Only files old enough that no live writer
/// can still own them (a write takes milliseconds) are touched; failures
/// are ignored, since the sweep is housekeeping, not the store.
fn sweep_orphans(dir: &Path, prefix: &std::ffi::OsStr) {
    const ORPHAN_AGE: Duration = Duration::from_secs(600);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        if !(name.starts_with(prefix) && name.ends_with(b".tmp")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AGE);
        if old && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed a temporary file left by a killed writer");
        }
    }
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file; its renames are journaled.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
