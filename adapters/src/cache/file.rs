//! A token cache in a file, shared by the processes of one machine.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use freshtoken_core::{CacheError, CacheErrorKind, LeaseOutcome, Timestamp, Token};
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use super::holder::holder_id;
use super::record;
use super::sealed::{Binding, Codec, Decoded};
use super::TokenCache;

/// How long to retry the sidecar's kernel lock before answering
/// [`LeaseOutcome::Busy`]. Holders keep it for a read and a small write, so
/// contention clears in microseconds; a lock still held after this long means
/// another process is in the middle of taking or giving up the lease.
const LOCK_PATIENCE: Duration = Duration::from_millis(25);

/// How long a store waits for the sidecar's kernel lock, under which it
/// checks the current record and renames the new one over it. Holders keep
/// it for a small read, a write and an fsync.
const STORE_PATIENCE: Duration = Duration::from_secs(2);

/// The most a sidecar (a holder id and a deadline) can hold.
const MAX_LEASE_LEN: u64 = 4 * 1024;

/// A token cache in one file, with a cross-process lease.
///
/// * **Writes are atomic and durable**: the record goes to a temporary file
///   in the same directory (mode 0600 on unix), is fsynced, renamed over the
///   cache file, and the directory is fsynced. A reader sees the old record
///   or the new one, never a mix, however many processes write at once.
/// * **A bad file is a miss, not an error**: a missing, empty, truncated,
///   corrupt or oversized file makes [`load`](TokenCache::load)
///   return `Ok(None)` with a `tracing` warning, so refreshing goes on. A file
///   that was read but could not be decoded is renamed to
///   `<name>.corrupt-<unix ms>-<pid>` for inspection instead of being
///   overwritten by the next store; such copies are removed by later stores
///   once they are ten minutes old, like the temporary files of killed writers.
/// * **A record this instance cannot read is not a miss**: a record of a
///   newer format version, written by a newer release during a rolling
///   upgrade, or (with the `encryption` feature) one sealed with a key this
///   instance does not hold, may hold the newest refresh token.
///   [`load`](TokenCache::load) returns a [`CacheErrorKind::Unreadable`]
///   error, and [`store`](TokenCache::store) refuses to replace it (the same
///   kind); it is never quarantined. Stores
///   check the current record and replace it while holding the sidecar's
///   kernel lock, so the check and the rename are atomic with respect to
///   other writers of this crate.
/// * **The files must be private** (unix): the cache file and the sidecar are
///   opened with `O_NOFOLLOW | O_NONBLOCK` (a symbolic link is refused, not
///   followed, and a FIFO cannot block the open), then checked with `fstat`:
///   a regular file, owned by the process's effective user, with no group or
///   other permission bits (mode 0600). The directory must not be writable by
///   group or others and must belong to the process's user or to root. Anything
///   else is refused with a [`CacheErrorKind::Io`] error naming the path and
///   the reason (`chmod 600 <file>` or `chmod 700 <dir>` fixes a mode). A read
///   takes at most [`record::MAX_RECORD_LEN`] bytes, so no file can make
///   a load hang or exhaust memory. The user id comes from `rustix` (safe
///   wrappers; this crate has no unsafe code). A file written by aliri_tokens
///   with the usual umask (mode 0644) is refused until it is `chmod 600`ed.
/// * **The format** is the versioned JSON record of [`record`](super::record); a file
///   written by aliri_tokens 0.3 is read too. With the `encryption` feature,
///   [`encryption`](Self::encryption) seals it at rest.
/// * **The lease** lives in a sidecar file, `<name>.lock`, holding the
///   holder's id and the lease's deadline (wall-clock ms). Taking it locks
///   the sidecar with an advisory lock ([`fs4`]) just long enough to read
///   the current lease and write ours, so the kernel lock is never held
///   across a fetch; the deadline is what keeps others out, and a crashed
///   holder blocks nobody past it. Each `FileCache` value is one holder.
///
/// ```
/// use freshtoken::cache::{FileCache, TokenCache};
/// use freshtoken::{AccessToken, Timestamp, Token};
/// use freshtoken::cache::LeaseOutcome;
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
    /// Where its sealed records belong: the full path.
    binding: Binding,
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
            binding: Binding::file(&path),
            path,
            lock_path,
            holder: holder_id(),
            codec: Codec::default(),
        }
    }

    /// Encrypts the record at rest with `keys` (see
    /// [`EncryptionKeys`](super::EncryptionKeys)). The file's full path
    /// (made absolute against the working directory when the cache is
    /// made) is bound to the record, so a record copied or moved to another
    /// file, or to a file of the same name in another directory, is
    /// refused. Every instance sharing the file must name it by the same
    /// absolute path (not through a different symbolic link).
    #[cfg(feature = "encryption")]
    pub fn encryption(mut self, keys: super::EncryptionKeys) -> Self {
        self.codec = Codec::with_keys(keys);
        self
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
        .with_source(e)
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
            "{CORRUPT_INFIX}{}-{}",
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

    /// Opens the cache file for reading, refusing anything but a private
    /// regular file; `None` if there is none.
    fn open_cache_file(&self) -> Result<Option<File>, CacheError> {
        safe::check_dir(self.dir())?;
        let mut options = OpenOptions::new();
        options.read(true);
        safe::open(&options, &self.path, "token cache file")
    }

    /// Reads the cache file's record (at most [`record::MAX_RECORD_LEN`]
    /// bytes), or `None` if there is no file.
    fn read_cache_file(&self) -> Result<Option<(File, Entry)>, CacheError> {
        let Some(mut file) = self.open_cache_file()? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        (&mut file)
            .take(record::MAX_RECORD_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_error(&self.path, "cannot read token cache file", e))?;
        let read = if bytes.len() > record::MAX_RECORD_LEN {
            Entry::Oversized
        } else {
            self.decode(&bytes)
        };
        Ok(Some((file, read)))
    }

    /// The error a store returns instead of replacing a record this
    /// instance cannot read (`e`, from [`decode`](Self::decode)).
    fn not_overwriting(&self, e: CacheError) -> CacheError {
        CacheError::new(
            CacheErrorKind::Unreadable,
            format!("not overwriting it: {}", e.message()),
        )
    }

    /// The record bytes for `token` (sealed with the cache's keys, if any).
    fn encode(&self, token: &Token) -> Result<Vec<u8>, CacheError> {
        self.codec.encode(token, &self.binding)
    }

    /// What record bytes hold: a token, a record this instance cannot read
    /// but must not replace (see [`unreadable`](Self::unreadable)), or
    /// garbage.
    fn decode(&self, bytes: &[u8]) -> Entry {
        let what = format!("token cache file {}", self.path.display());
        match self.codec.decode(bytes, &self.binding, &what) {
            Ok(Decoded::Token(token)) => Entry::Token(token),
            Ok(Decoded::Corrupt(e)) => Entry::Bad(e),
            Err(e) => Entry::Unreadable(self.unreadable(e)),
        }
    }

    /// A decode error that means "keep this record": the codec's
    /// [`CacheErrorKind::Unreadable`] (a newer format version, sealed with
    /// a key this instance does not hold, plaintext where encryption is
    /// required). Any other kind is reported as Unreadable too: a record
    /// that could not be judged is never replaced.
    fn unreadable(&self, e: CacheError) -> CacheError {
        if e.kind() == CacheErrorKind::Unreadable {
            return e;
        }
        CacheError::new(CacheErrorKind::Unreadable, e.message().to_owned())
    }

    fn open_lock(&self) -> Result<File, CacheError> {
        safe::check_dir(self.dir())?;
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        if let Some(file) = safe::open(&options, &self.lock_path, "lease file")? {
            return Ok(file);
        }
        // With `create(true)`, "not found" means the directory is missing.
        create_private_dir(self.dir())
            .map_err(|e| self.io_error(self.dir(), "cannot create directory", e))?;
        safe::check_dir(self.dir())?;
        safe::open(&options, &self.lock_path, "lease file")?.ok_or_else(|| {
            self.io_error(
                &self.lock_path,
                "cannot create lease file",
                io::ErrorKind::NotFound.into(),
            )
        })
    }

    /// Locks the sidecar, retrying for `patience`; `None` if it stays locked.
    fn lock(&self, patience: Duration) -> Result<Option<Locked>, CacheError> {
        let file = self.open_lock()?;
        let deadline = Instant::now() + patience;
        // Holders keep the lock for microseconds to a few milliseconds (an
        // fsync): start with short naps and grow them to 1 ms.
        let mut nap = Duration::from_micros(20);
        loop {
            match file.try_lock_exclusive() {
                Ok(true) => return Ok(Some(Locked(file))),
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(1));
                }
                Ok(false) => return Ok(None),
                Err(e) => return Err(self.io_error(&self.lock_path, "cannot lock lease file", e)),
            }
        }
    }

    /// Runs `f` with the sidecar locked, or returns `None` if it stays locked.
    fn with_lock<T>(
        &self,
        f: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> Result<Option<T>, CacheError> {
        let Some(mut locked) = self.lock(LOCK_PATIENCE)? else {
            return Ok(None);
        };
        f(&mut locked.0)
            .map(Some)
            .map_err(|e| self.io_error(&self.lock_path, "cannot update lease file", e))
    }

    /// Writes `record` to a temporary file and renames it over the cache file.
    fn replace(&self, record: &[u8]) -> Result<(), CacheError> {
        let dir = self.dir();
        let prefix = self.temp_prefix();
        // tempfile creates the file with mode 0600 and removes it if we fail
        // before the rename.
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        let mut tmp = builder
            .tempfile_in(dir)
            .map_err(|e| self.io_error(dir, "cannot create a temporary file in", e))?;
        tmp.write_all(record)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| self.io_error(tmp.path(), "cannot write", e))?;
        tmp.persist(&self.path)
            .map_err(|e| self.io_error(&self.path, "cannot replace", e.error))?;
        sync_dir(dir).map_err(|e| self.io_error(dir, "cannot sync directory", e))
    }

    fn temp_prefix(&self) -> std::ffi::OsString {
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(self.path.file_name().unwrap_or_default());
        prefix.push(".");
        prefix
    }
}

/// What the cache file held.
enum Entry {
    Token(Token),
    /// A record this instance cannot read but must not replace (a newer
    /// format, sealed with another key): the Unreadable error.
    Unreadable(CacheError),
    /// Not a record: corrupt, truncated, foreign.
    Bad(record::DecodeError),
    /// Longer than [`record::MAX_RECORD_LEN`].
    Oversized,
}

/// The sidecar, locked; unlocked when dropped.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first just makes
        // the release explicit and immediate.
        let _ = FileExt::unlock(&self.0);
    }
}

/// What quarantined copies are named: `<name>.corrupt-<unix ms>-<pid>`.
const CORRUPT_INFIX: &str = ".corrupt-";

impl TokenCache for FileCache {
    fn metrics_label(&self) -> &'static str {
        "file"
    }

    fn bind_config(&self, config: freshtoken_core::TokenId) {
        self.codec.bind_config(config, &self.path.display());
    }

    fn load(&self) -> Result<Option<Token>, CacheError> {
        let Some((file, read)) = self.read_cache_file()? else {
            return Ok(None);
        };
        match read {
            Entry::Token(token) => Ok(Some(token)),
            Entry::Unreadable(e) => Err(e),
            // Another configuration's token, left where it is: the
            // instance fetches its own, and its store replaces it.
            Entry::Bad(e @ record::DecodeError::OtherConfiguration) => {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "token cache file holds a token for another configuration; treating it as a miss"
                );
                Ok(None)
            }
            Entry::Bad(e) => {
                let kept = self.quarantine(&file);
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    kept_as = kept.as_ref().map(|p| p.display().to_string()),
                    "token cache file is not a usable record; treating it as a miss"
                );
                Ok(None)
            }
            Entry::Oversized => {
                let kept = self.quarantine(&file);
                tracing::warn!(
                    path = %self.path.display(),
                    limit = record::MAX_RECORD_LEN,
                    kept_as = kept.as_ref().map(|p| p.display().to_string()),
                    "token cache file is larger than any record; treating it as a miss"
                );
                Ok(None)
            }
        }
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        let record = self.encode(token)?;
        let dir = self.dir();
        if !dir.exists() {
            create_private_dir(dir)
                .map_err(|e| self.io_error(dir, "cannot create directory", e))?;
        }
        // The check of the current record and the rename happen under the
        // sidecar's lock, so no other writer slips a newer record in between.
        let Some(_locked) = self.lock(STORE_PATIENCE)? else {
            return Err(CacheError::new(
                CacheErrorKind::Io,
                format!(
                    "lease file {} stayed locked for {STORE_PATIENCE:?}; token not stored",
                    self.lock_path.display()
                ),
            ));
        };
        if let Some((_, Entry::Unreadable(e))) = self.read_cache_file()? {
            return Err(self.not_overwriting(e));
        }
        self.replace(&record)?;
        sweep_orphans(dir, &self.temp_prefix(), &self.path);
        Ok(())
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let now = Timestamp::from_system_time(SystemTime::now());
        let outcome = self.with_lock(|file| {
            let mut text = Vec::new();
            file.take(MAX_LEASE_LEN).read_to_end(&mut text)?;
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
        if fs::symlink_metadata(&self.lock_path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        {
            return Ok(());
        }
        // If the sidecar stays locked, give up: our lease ends at its deadline.
        self.with_lock(|file| {
            let mut text = Vec::new();
            file.take(MAX_LEASE_LEN).read_to_end(&mut text)?;
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

/// Opening the cache's own files safely (unix): no symbolic links, no
/// blocking opens, private regular files in a directory only its owner
/// can change.
#[cfg(unix)]
mod safe {
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use freshtoken_core::{CacheError, CacheErrorKind};
    use rustix::fs::OFlags;

    fn refused(what: &str, path: &Path, why: impl std::fmt::Display) -> CacheError {
        CacheError::new(
            CacheErrorKind::Io,
            format!("refusing {what} {}: {why}", path.display()),
        )
    }

    fn my_uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    /// Opens `path` with `options` plus `O_NOFOLLOW | O_NONBLOCK`, then
    /// checks what was opened. `None`: no such file (and not created).
    pub(super) fn open(
        options: &OpenOptions,
        path: &Path,
        what: &str,
    ) -> Result<Option<File>, CacheError> {
        let mut options = options.clone();
        // NOFOLLOW: a planted link is refused instead of followed (ELOOP).
        // NONBLOCK: opening a FIFO does not wait for a writer; the fstat
        // below then refuses it.
        crate::regular_file::non_blocking(&mut options, OFlags::NOFOLLOW.bits());
        let file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
                return Err(if link {
                    refused(
                        what,
                        path,
                        "it is a symbolic link (the cache never follows links)",
                    )
                } else {
                    CacheError::new(
                        CacheErrorKind::Io,
                        format!("cannot open {what} {}: {e}", path.display()),
                    )
                });
            }
        };
        let meta = file.metadata().map_err(|e| {
            CacheError::new(
                CacheErrorKind::Io,
                format!("cannot stat {what} {}: {e}", path.display()),
            )
        })?;
        let ty = meta.file_type();
        if !ty.is_file() {
            let kind = crate::regular_file::kind(&ty);
            return Err(refused(
                what,
                path,
                format_args!("it is {kind}, not a regular file"),
            ));
        }
        let me = my_uid();
        if meta.uid() != me {
            return Err(refused(
                what,
                path,
                format_args!(
                    "it is owned by uid {}, not by this process's user (uid {me})",
                    meta.uid()
                ),
            ));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(refused(
                what,
                path,
                format_args!("its mode {mode:o} gives the group or others access (it must be 600: chmod 600 it)"),
            ));
        }
        Ok(Some(file))
    }

    /// Refuses a directory that someone other than its owner can write to,
    /// or that belongs to another user (root excepted). A missing directory
    /// passes: it is created private.
    pub(super) fn check_dir(dir: &Path) -> Result<(), CacheError> {
        let meta = match fs::metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(CacheError::new(
                    CacheErrorKind::Io,
                    format!(
                        "cannot stat the token cache directory {}: {e}",
                        dir.display()
                    ),
                ))
            }
        };
        let what = "token cache directory";
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(refused(
                what,
                dir,
                format_args!("its mode {mode:o} lets the group or others write to it (chmod 700 it, or use a private directory)"),
            ));
        }
        let me = my_uid();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(refused(
                what,
                dir,
                format_args!(
                    "it is owned by uid {}, not by this process's user (uid {me}) or root",
                    meta.uid()
                ),
            ));
        }
        Ok(())
    }
}

/// Other systems: plain opens, no ownership checks.
#[cfg(not(unix))]
mod safe {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::path::Path;

    use freshtoken_core::{CacheError, CacheErrorKind};

    pub(super) fn open(
        options: &OpenOptions,
        path: &Path,
        what: &str,
    ) -> Result<Option<File>, CacheError> {
        match options.open(path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => Ok(Some(file)),
            Ok(_) => Err(CacheError::new(
                CacheErrorKind::Io,
                format!("refusing {what} {}: not a regular file", path.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::new(
                CacheErrorKind::Io,
                format!("cannot open {what} {}: {e}", path.display()),
            )),
        }
    }

    pub(super) fn check_dir(_dir: &Path) -> Result<(), CacheError> {
        Ok(())
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
/// creating and renaming them, and quarantined `<name>.corrupt-*` copies,
/// once they are old enough that no live writer can still own them (a write
/// takes milliseconds) and an operator had ten minutes to look. Failures
/// are ignored, since the sweep is housekeeping, not the store.
fn sweep_orphans(dir: &Path, prefix: &std::ffi::OsStr, path: &Path) {
    const ORPHAN_AGE: Duration = Duration::from_secs(600);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    let mut corrupt = path.file_name().unwrap_or_default().to_os_string();
    corrupt.push(CORRUPT_INFIX);
    let corrupt = corrupt.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        let temporary = name.starts_with(prefix) && name.ends_with(b".tmp");
        let quarantined = name.starts_with(corrupt);
        if !(temporary || quarantined) {
            continue;
        }
        // symlink_metadata: a link is judged (and removed) as itself.
        let old = fs::symlink_metadata(entry.path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AGE);
        if old && fs::remove_file(entry.path()).is_ok() {
            if temporary {
                tracing::info!(path = %entry.path().display(), "removed a temporary file left by a killed writer");
            } else {
                tracing::info!(path = %entry.path().display(), "removed an old quarantined copy of a bad token cache file");
            }
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
