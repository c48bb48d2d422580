//! The file cache against a real file system and real processes.

mod cache_support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cache_support::capture_logs;
use freshtoken::cache::LeaseOutcome;
use freshtoken::cache::{record, FileCache, TokenCache};
use freshtoken::{AccessToken, RefreshToken, Timestamp, Token};
use freshtoken_tests::assert_no_secret;

const SECRET: &str = "TOPSECRET-access-7f3a";
const REFRESH: &str = "TOPSECRET-refresh-91c2";

fn token() -> Token {
    let now = Timestamp::from_millis(1_800_000_000_000);
    Token::new(
        AccessToken::new(SECRET),
        now,
        now + Duration::from_secs(45),
        now + Duration::from_secs(60),
    )
    .with_refresh_token(Some(RefreshToken::new(REFRESH)))
    .with_scope(Some("read".into()))
}

fn corrupt_copies(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    v.sort();
    v
}

/// Writes `bytes` to a new file of mode 0600 (the file cache refuses files
/// that the group or others can read).
fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn store_then_load_round_trips_in_the_versioned_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let cache = FileCache::new(&path);
    assert_eq!(cache.load().unwrap(), None, "missing file is a miss");

    cache.store(&token()).unwrap();
    assert_eq!(cache.load().unwrap(), Some(token()));
    // Another process's view: a fresh value on the same path.
    assert_eq!(FileCache::new(&path).load().unwrap(), Some(token()));

    assert!(fs::read(&path).unwrap().starts_with(br#"{"version":1,"#));
    // Only the cache file (no temporary files left behind).
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names: Vec<_> = names.into_iter().collect();
    names.sort();
    // The cache file and the sidecar, whose lock stores hold while they
    // check the current record and rename the new one over it.
    assert_eq!(
        names,
        vec![
            std::ffi::OsString::from("token.json"),
            std::ffi::OsString::from("token.json.lock")
        ]
    );

    // Overwrite with a newer token.
    let newer = Token::new(
        AccessToken::new("newer"),
        Timestamp::from_secs(1),
        Timestamp::from_secs(2),
        Timestamp::from_secs(3),
    );
    cache.store(&newer).unwrap();
    assert_eq!(cache.load().unwrap(), Some(newer));
}

#[cfg(unix)]
#[test]
fn files_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("token.json"));
    cache.store(&token()).unwrap();
    cache.acquire_lease(Duration::from_secs(5)).unwrap();
    for path in [cache.path(), cache.lock_path()] {
        let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

#[test]
fn bad_files_are_misses_with_a_warning_and_are_kept_aside() {
    let full = record::encode(&token());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", full[..full.len() - 20].to_vec()),
        ("corrupt", b"\x00\x13 not json at all \xff".to_vec()),
        // A newer version is not corrupt but Unreadable, and left in
        // place: see cache_encryption.rs and cache_file_hardening.rs.
        ("unknown json", br#"{"hello":"world"}"#.to_vec()),
        (
            "ill-typed",
            br#"{"version":1,"access_token":"a","issued_at_ms":"TOPSECRET-in-a-number","stale_at_ms":1,"expires_at_ms":2}"#.to_vec(),
        ),
    ];
    for (name, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        write_private(&path, &bytes);
        let cache = FileCache::new(&path);

        let (loaded, logs) = capture_logs(|| cache.load());
        assert_eq!(loaded.unwrap(), None, "{name}: a miss, not an error");
        assert!(
            logs.iter()
                .any(|l| l.starts_with("WARN") && l.contains("token.json")),
            "{name}: no warning in {logs:?}"
        );
        logs.iter().for_each(|l| assert_no_secret(l));

        // Kept aside byte for byte, and the path is free for the next store.
        let aside = corrupt_copies(dir.path());
        assert_eq!(aside.len(), 1, "{name}: {aside:?}");
        assert_eq!(fs::read(&aside[0]).unwrap(), bytes, "{name}");
        assert!(!path.exists(), "{name}");

        cache.store(&token()).unwrap();
        assert_eq!(cache.load().unwrap(), Some(token()), "{name}");
        assert_eq!(corrupt_copies(dir.path()).len(), 1, "{name}: copy kept");
    }
}

#[test]
fn a_directory_at_the_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    // A directory where the file should be: it opens, but is no file.
    fs::create_dir(&path).unwrap();
    let cache = FileCache::new(&path);
    let err = cache.load().unwrap_err();
    assert_eq!(err.kind(), freshtoken::CacheErrorKind::Io);
    assert!(err.to_string().contains("a directory"), "{err}");
    // Storing over it fails with an I/O error that names the file, no secret.
    let err = cache.store(&token()).unwrap_err();
    assert_eq!(err.kind(), freshtoken::CacheErrorKind::Io);
    assert!(err.to_string().contains("token.json"), "{err}");
    assert_no_secret(&err.to_string());
    assert!(path.is_dir(), "left alone");
}

#[test]
fn reads_the_file_aliri_tokens_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    // aliri_tokens 0.3 `FileTokenSource`: serde_json pretty print of
    // `TokenWithLifetime`, times in seconds.
    fs::write(
        &path,
        r#"{
  "access_token": "aliri-access",
  "id_token": "aliri-id",
  "lifetime": 3600,
  "issued": 1800000000,
  "stale": 1800002700,
  "expiry": 1800003600
}"#,
    )
    .unwrap();
    let cache = FileCache::new(&path);
    #[cfg(unix)]
    {
        // Written with the usual umask (0644): refused until made private.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = cache.load().unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let t = cache.load().unwrap().expect("aliri file read");
    assert_eq!(t.access_token().expose_secret(), "aliri-access");
    assert_eq!(t.id_token().unwrap().expose_secret(), "aliri-id");
    assert_eq!(t.issued_at(), Timestamp::from_secs(1_800_000_000));
    assert_eq!(t.stale_at(), Timestamp::from_secs(1_800_002_700));
    assert_eq!(t.expires_at(), Timestamp::from_secs(1_800_003_600));
    // Written back in our format, with the same content.
    cache.store(&t).unwrap();
    assert!(fs::read(&path).unwrap().starts_with(br#"{"version":1,"#));
    assert_eq!(cache.load().unwrap(), Some(t));
    assert!(corrupt_copies(dir.path()).is_empty());
}

#[test]
fn the_lease_is_exclusive_and_released_only_by_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let a = FileCache::new(&path);
    let b = FileCache::new(&path);
    let ttl = Duration::from_secs(30);

    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
    // Re-taking one's own lease (a retry) is granted.
    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    // b's release does not touch a's lease.
    b.release_lease().unwrap();
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
    a.release_lease().unwrap();
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);

    // A garbled sidecar blocks nobody.
    fs::write(b.lock_path(), b"\x00garbage").unwrap();
    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
}

#[test]
fn a_killed_lease_holder_blocks_others_only_until_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let ttl_ms = 400;
    // A real process takes the lease and is killed without releasing it.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_cache_worker"))
        .args(["lease", path.to_str().unwrap(), &ttl_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "granted");
    holder.kill().unwrap();
    holder.wait().unwrap();

    let other = FileCache::new(&path);
    assert_eq!(
        other.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Busy,
        "the dead holder's lease still runs"
    );
    std::thread::sleep(Duration::from_millis(ttl_ms + 200));
    assert_eq!(
        other.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Granted,
        "taken over after the TTL"
    );
}

#[test]
fn nothing_secret_in_debug_errors_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("token.json"));
    cache.store(&token()).unwrap();
    let (_, logs) = capture_logs(|| {
        cache.load().unwrap();
        cache.acquire_lease(Duration::from_secs(1)).unwrap();
        cache.release_lease().unwrap();
    });
    assert_no_secret(&format!("{cache:?} {logs:?} {:?}", cache.load().unwrap()));

    // A store below a plain file: the error names the place, not the token.
    fs::write(dir.path().join("a-file"), b"").unwrap();
    let nowhere = FileCache::new(dir.path().join("a-file").join("token.json"));
    let err = nowhere.store(&token()).unwrap_err();
    assert_no_secret(&format!("{err} {err:?}"));
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn a_missing_directory_is_created_privately() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let cache = FileCache::new(nested.join("token.json"));
    assert_eq!(
        cache.acquire_lease(Duration::from_secs(1)).unwrap(),
        LeaseOutcome::Granted
    );
    cache.store(&token()).unwrap();
    assert_eq!(cache.load().unwrap(), Some(token()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}

/// 8 processes, 10,000 mixed reads and writes each, on one file: no reader
/// ever sees a torn or unreadable file.
#[test]
fn eight_processes_never_see_a_torn_file() {
    const PROCESSES: u64 = 8;
    const OPS: u64 = 10_000;
    const WRITE_PERCENT: u64 = 20;
    // On tmpfs when there is one: fsync is a no-op there, which keeps the
    // wall time to seconds, while the property under test (rename is
    // atomic for readers) is the same as on a disk file system.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let path = dir.path().join("token.json");
    // Seed the file with a token of the workers' self-checking kind.
    let seeded = Command::new(env!("CARGO_BIN_EXE_cache_worker"))
        .args(["stress", path.to_str().unwrap(), "1", "999", "100"])
        .output()
        .unwrap();
    assert!(seeded.status.success() && path.exists(), "{seeded:?}");

    let children: Vec<_> = (0..PROCESSES)
        .map(|seed| {
            Command::new(env!("CARGO_BIN_EXE_cache_worker"))
                .args(["stress", path.to_str().unwrap()])
                .arg(OPS.to_string())
                .arg(seed.to_string())
                .arg(WRITE_PERCENT.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut reads, mut writes, mut torn, mut unreadable, mut misses) = (0, 0, 0, 0, 0);
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "worker failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for field in text.split_whitespace() {
            let (name, value) = field.split_once('=').unwrap();
            let value: u64 = value.parse().unwrap();
            match name {
                "reads" => reads += value,
                "writes" => writes += value,
                "torn" => torn += value,
                "unreadable" => unreadable += value,
                "misses" => misses += value,
                other => panic!("unexpected field {other}"),
            }
        }
    }
    println!(
        "file cache stress: {PROCESSES} processes, reads={reads} writes={writes} torn={torn} unreadable={unreadable} misses={misses}"
    );
    assert_eq!(reads + writes, PROCESSES * OPS);
    assert!(writes > 0 && reads > 0);
    assert_eq!(torn, 0, "torn reads");
    assert_eq!(unreadable, 0, "unreadable reads");
    assert_eq!(misses, 0, "the file always exists, so no read may miss");
    assert!(corrupt_copies(dir.path()).is_empty());
}

#[test]
fn temporary_files_of_killed_writers_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("token.json"));
    // What a writer killed between create and rename leaves behind.
    let orphan = dir.path().join(".token.json.abc123.tmp");
    let fresh = dir.path().join(".token.json.def456.tmp");
    let unrelated = dir.path().join("other.tmp");
    for p in [&orphan, &fresh, &unrelated] {
        std::fs::write(p, b"half a rec").unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for p in [&orphan, &unrelated] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    cache.store(&token()).unwrap();
    assert!(!orphan.exists(), "an old orphan is removed");
    assert!(fresh.exists(), "a recent one may belong to a live writer");
    assert!(unrelated.exists(), "other files are not ours");
    assert!(cache.load().unwrap().is_some());
}

#[test]
fn an_io_error_keeps_its_cause() {
    // The cache's directory cannot be made: a regular file stands where a
    // directory should be.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("blocker"), b"").unwrap();
    let cache = FileCache::new(dir.path().join("blocker/sub/token.json"));
    let err = cache.store(&token()).unwrap_err();
    assert_eq!(err.kind(), freshtoken::CacheErrorKind::Io, "{err}");
    let cause = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error behind the message");
    assert!(err.to_string().contains(&cause.to_string()), "{err}");
}
