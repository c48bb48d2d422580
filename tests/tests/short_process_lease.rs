//! Issue 19, defect 2: a short process that takes the cache's lease leaves
//! no lease behind when it exits right after `shutdown_blocking()`.
//!
//! Before, `shutdown_blocking()` returned once the driver thread stopped,
//! while the release of the lease was a job handed to the cache worker that
//! nobody waited for: the process exited with the lease held, and the next
//! process waited for it to lapse (45 s) before it could refresh; in a loop
//! of 12 short processes, runs 2 to 9 got no token within 30 s. Now the
//! machine's `Stop` follows the release's answer.
//!
//! Each run is the README's sync example as a real process, against the
//! local authority and one file cache whose token is removed before each
//! run, so every run refreshes under the lease. After each run the test
//! asks for the lease itself: it must be granted at once.

use std::process::Command;
use std::time::Duration;

use freshtoken::cache::{FileCache, LeaseOutcome, TokenCache};
use freshtoken::testing::LocalAuthority;

const SECRET: &str = "short-process-secret";

#[test]
fn twelve_short_processes_each_leave_the_lease_free() {
    let authority = LocalAuthority::builder()
        .client("my-app", SECRET)
        .start()
        .expect("the local authority");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("token.json");
    let probe = FileCache::new(&cache);
    for run in 1..=12 {
        // No token in the cache: the run must take the lease and fetch.
        let _ = std::fs::remove_file(&cache);
        let out = Command::new(env!("CARGO_BIN_EXE_sync_example"))
            .args([&authority.token_url(), cache.to_str().unwrap()])
            .env("CLIENT_SECRET", SECRET)
            .output()
            .expect("a sync_example process");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "run {run} got no token: {:?}\nstderr: {stderr}",
            out.status
        );
        assert_eq!(
            authority.request_count(),
            run,
            "run {run} refreshed once, under the lease"
        );
        // The process has exited: its lease must be free at once.
        let lease = probe
            .acquire_lease(Duration::from_secs(5))
            .expect("the lease file");
        assert_eq!(
            lease,
            LeaseOutcome::Granted,
            "run {run} exited with the lease still held"
        );
        probe.release_lease().expect("released");
    }
}
