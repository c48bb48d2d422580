//! The readers of files other processes provide (`FileSource`, the OAuth2
//! `AssertionFile`, the cache's `EncryptionKeys::from_file`) against a FIFO
//! planted at their path: the open never
//! blocks, the FIFO is refused with an error that says what it is, and a
//! driver reading a token file recovers as soon as the path holds a token
//! again. Unix only (FIFOs).
#![cfg(unix)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use freshtoken::driver::Builder;
use freshtoken::oauth2::{AssertionFile, AssertionFileError};
use freshtoken::proto::{Backoff, RefreshState};
use freshtoken::source::FileSource;
use freshtoken::Timestamp;

/// How long a call may take before the test calls it hung: far above the
/// milliseconds a refusal takes, far below CI's job timeout.
const HUNG: Duration = Duration::from_secs(20);

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Runs `f` on a thread and returns its result, or fails the test if it
/// is still running after [`HUNG`] (the thread is left blocked).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HUNG)
        .unwrap_or_else(|_| panic!("{what} blocked for {HUNG:?} on a FIFO"))
}

#[test]
fn a_fifo_at_the_token_path_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    mkfifo(&path);
    let source = FileSource::new(&path);
    let error = within("FileSource::read", move || source.read()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("a FIFO, not a regular file"),
        "the error says what the path is: {message}"
    );
}

#[test]
fn a_fifo_at_the_assertion_path_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("assertion");
    mkfifo(&path);
    let file = AssertionFile::new(&path);
    let error = within("AssertionFile::read", move || file.read(Timestamp::EPOCH)).unwrap_err();
    assert!(
        matches!(error, AssertionFileError::NotRegular { kind: "a FIFO", .. }),
        "a typed refusal: {error:?}"
    );
}

#[test]
fn a_fifo_at_the_encryption_key_path_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    mkfifo(&path);
    let error = within("EncryptionKeys::from_file", move || {
        freshtoken::cache::EncryptionKeys::from_file(&path)
    })
    .unwrap_err();
    assert!(
        error.to_string().contains("a FIFO, not a regular file"),
        "{error}"
    );
}

/// The blocking driver reads a FIFO several times (each read used to hang
/// its worker; after two, the driver refused every further fetch for
/// good), then the path gets a token: the driver publishes it.
#[test]
fn the_blocking_driver_recovers_once_the_fifo_is_replaced_by_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    mkfifo(&path);
    let (handle, driver) = Builder::new()
        .fetch_timeout(Duration::from_millis(300))
        .backoff(Backoff::new(
            Duration::from_millis(20),
            2,
            Duration::from_millis(200),
        ))
        .spawn_thread(FileSource::new(&path))
        .unwrap();

    // Three failed attempts: two hung reads were enough to wedge the old
    // driver.
    let deadline = Instant::now() + HUNG;
    let error = loop {
        if let RefreshState::Retrying { attempt, error, .. } = &handle.snapshot().state {
            if *attempt >= 3 {
                break error.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "three attempts within {HUNG:?}: {:?}",
            handle.snapshot().state
        );
        handle.wait_changed(Duration::from_millis(100)).unwrap();
    };
    assert!(
        error.to_string().contains("a FIFO, not a regular file"),
        "the attempts fail on the FIFO, not on a hung read: {error}"
    );

    // The path is fixed (an atomic rename over the FIFO).
    let fixed = dir.path().join("token.new");
    fs::write(
        &fixed,
        r#"{"access_token":"file-token-1","expires_in":3600}"#,
    )
    .unwrap();
    fs::rename(&fixed, &path).unwrap();

    let token = handle
        .wait_ready(Duration::from_secs(60))
        .expect("a token once the path holds one");
    assert_eq!(token.access_token().expose_secret(), "file-token-1");
    driver.shutdown_blocking();
}
