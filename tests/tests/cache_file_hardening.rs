//! The file cache against hostile or careless file systems: planted
//! symbolic links, foreign owners, open directories, devices and FIFOs at
//! the cache's paths, oversized files, and records of a newer format.
//! Unix only; most cases need root (CI runs as root) to make another
//! user's files and device nodes.
#![cfg(unix)]

mod cache_support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use cache_support::capture_logs;
use freshtoken::cache::{FileCache, TokenCache};
use freshtoken::{AccessToken, CacheError, CacheErrorKind, RefreshToken, Timestamp, Token};

const SECRET: &str = "TOPSECRET-access-hard-1";
const REFRESH: &str = "TOPSECRET-refresh-hard-2";
/// How long a call may take before the test calls it hung. Far above the
/// milliseconds a refusal takes, far below CI's job timeout.
const HUNG: Duration = Duration::from_secs(20);

fn token() -> Token {
    let now = Timestamp::from_millis(1_800_000_000_000);
    Token::new(
        AccessToken::new(SECRET),
        now,
        now + Duration::from_secs(45),
        now + Duration::from_secs(60),
    )
    .with_refresh_token(Some(RefreshToken::new(REFRESH)))
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).unwrap().write_all(bytes).unwrap();
}

/// An error that names the refusal and no secret.
fn refused(result: Result<impl std::fmt::Debug, CacheError>, says: &str) -> CacheError {
    let err = result.expect_err("refused");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("TOPSECRET"), "secret leaked: {text}");
    assert!(text.contains(says), "expected {says:?} in {text}");
    err
}

/// Runs `f` on another thread; panics if it has not returned after
/// [`HUNG`] (the thread is then left behind, blocked, and the test fails).
fn within_bound<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HUNG)
        .unwrap_or_else(|_| panic!("{what} did not return within {HUNG:?}"))
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (these tests need root, as CI runs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_precious(dir: &Path) -> std::path::PathBuf {
    let target = dir.join("precious.txt");
    write_private(&target, b"do not overwrite me");
    target
}

#[test]
fn a_symlinked_cache_file_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = make_precious(elsewhere.path());
    let path = dir.path().join("token.json");
    symlink(&target, &path).unwrap();
    let cache = FileCache::new(&path);

    let err = refused(cache.load(), "symbolic link");
    assert_eq!(err.kind(), CacheErrorKind::Io);
    refused(cache.store(&token()), "symbolic link");
    assert_eq!(fs::read(&target).unwrap(), b"do not overwrite me");
    assert!(fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    // A dangling link is refused too (it would otherwise be created).
    fs::remove_file(&target).unwrap();
    refused(cache.load(), "symbolic link");
    refused(cache.store(&token()), "symbolic link");
    assert!(!target.exists(), "nothing created through the link");
}

#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = make_precious(elsewhere.path());
    let cache = FileCache::new(dir.path().join("token.json"));
    symlink(&target, cache.lock_path()).unwrap();

    refused(cache.acquire_lease(Duration::from_secs(5)), "symbolic link");
    refused(cache.release_lease(), "symbolic link");
    // Stores take the sidecar's lock, so they are refused as well.
    refused(cache.store(&token()), "symbolic link");
    assert_eq!(fs::read(&target).unwrap(), b"do not overwrite me");
    assert!(!cache.path().exists());

    // A dangling link at the lock path: nothing is created at its target.
    fs::remove_file(&target).unwrap();
    refused(cache.acquire_lease(Duration::from_secs(5)), "symbolic link");
    assert!(!target.exists());
}

#[test]
fn a_file_of_another_owner_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let good = FileCache::new(&path);
    good.store(&token()).unwrap();
    good.acquire_lease(Duration::from_secs(1)).unwrap();
    // 65534: "nobody" on Debian.
    std::os::unix::fs::chown(&path, Some(65534), None)
        .expect("chown to uid 65534 (these tests need root, as CI runs them)");
    let cache = FileCache::new(&path);
    refused(cache.load(), "owned by uid 65534");
    refused(cache.store(&token()), "owned by uid 65534");
    assert_eq!(fs::metadata(&path).unwrap().uid_of(), 65534, "left alone");

    std::os::unix::fs::chown(cache.lock_path(), Some(65534), None).unwrap();
    refused(
        cache.acquire_lease(Duration::from_secs(1)),
        "owned by uid 65534",
    );
}

trait UidOf {
    fn uid_of(&self) -> u32;
}
impl UidOf for fs::Metadata {
    fn uid_of(&self) -> u32 {
        std::os::unix::fs::MetadataExt::uid(self)
    }
}

#[test]
fn a_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let cache = FileCache::new(&path);
    cache.store(&token()).unwrap();
    for mode in [0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        refused(cache.load(), "chmod 600");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(cache.load().unwrap(), Some(token()));
}

#[test]
fn a_directory_others_can_write_to_is_refused() {
    for mode in [0o770, 0o720, 0o707, 0o1777] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        let cache = FileCache::new(&path);
        cache.store(&token()).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
        let says = "lets the group or others write";
        refused(cache.load(), says);
        refused(cache.store(&token()), says);
        refused(cache.acquire_lease(Duration::from_secs(1)), says);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(cache.load().unwrap(), Some(token()), "mode {mode:o}");
    }
    // A directory of another user (not root) is refused as well.
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("token.json"));
    std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
    refused(cache.load(), "owned by uid 65534");
}

#[test]
fn dev_zero_at_the_path_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    // A character device node like /dev/zero (major 1, minor 5).
    run(
        "mknod",
        &["-m", "600", path.to_str().unwrap(), "c", "1", "5"],
    );
    let cache = FileCache::new(&path);
    let (load, store) = within_bound("load and store with /dev/zero at the path", move || {
        (cache.load(), cache.store(&token()))
    });
    refused(load, "a character device");
    refused(store, "a character device");

    // And a link to the real /dev/zero is not followed.
    let linked = dir.path().join("linked.json");
    symlink("/dev/zero", &linked).unwrap();
    let cache = FileCache::new(&linked);
    refused(
        within_bound("load via a link to /dev/zero", move || cache.load()),
        "symbolic link",
    );
}

#[test]
fn a_fifo_at_the_path_or_the_lock_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    run("mkfifo", &["-m", "600", path.to_str().unwrap()]);
    let cache = FileCache::new(&path);
    run(
        "mkfifo",
        &["-m", "600", cache.lock_path().to_str().unwrap()],
    );
    let (load, store, lease) = within_bound("the cache with FIFOs at its paths", move || {
        (
            cache.load(),
            cache.store(&token()),
            cache.acquire_lease(Duration::from_secs(1)),
        )
    });
    refused(load, "a FIFO");
    refused(store, "a FIFO");
    refused(lease, "a FIFO");
}

#[test]
fn an_oversized_file_is_a_miss_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    // Valid-looking JSON, far past the 64 KiB cap.
    let mut big = br#"{"version":1,"access_token":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 200 * 1024));
    big.extend(br#""}"#);
    write_private(&path, &big);
    let cache = FileCache::new(&path);
    let (loaded, logs) = capture_logs(|| cache.load());
    assert_eq!(loaded.unwrap(), None);
    assert!(
        logs.iter()
            .any(|l| l.starts_with("WARN") && l.contains("larger than any record")),
        "{logs:?}"
    );
    assert!(!path.exists(), "moved aside");
    cache.store(&token()).unwrap();
    assert_eq!(cache.load().unwrap(), Some(token()));
}

#[test]
fn a_record_of_a_newer_version_is_unreadable_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let newer = br#"{"version":2,"access_token":"TOPSECRET-newer","sealed":"..."}"#;
    write_private(&path, newer);
    let cache = FileCache::new(&path);

    let err = refused(cache.load(), "version 2");
    assert_eq!(err.kind(), CacheErrorKind::Unreadable);
    let err = refused(cache.store(&token()), "version 2");
    assert_eq!(err.kind(), CacheErrorKind::Unreadable);
    assert_eq!(fs::read(&path).unwrap(), newer, "not overwritten");
    let copies: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert!(copies.is_empty(), "not quarantined: {copies:?}");
    // The lease still works: a newer peer may be using it.
    assert_eq!(
        cache.acquire_lease(Duration::from_secs(1)).unwrap(),
        freshtoken::cache::LeaseOutcome::Granted
    );
}

#[test]
fn old_quarantined_copies_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let old = dir.path().join("token.json.corrupt-1700000000000-42");
    let recent = dir.path().join("token.json.corrupt-1800000000000-43");
    let other = dir.path().join("other.json.corrupt-1700000000000-44");
    for p in [&old, &recent, &other] {
        write_private(p, b"garbage");
    }
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for p in [&old, &other] {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    FileCache::new(&path).store(&token()).unwrap();
    assert!(!old.exists(), "an old quarantined copy is removed");
    assert!(recent.exists(), "a recent one is kept for inspection");
    assert!(other.exists(), "another cache's copies are not ours");
}
