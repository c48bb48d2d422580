//! The README's sync example, run as a short process three times in a row
//! against one file cache (issue 9: it used to exit before its store had
//! run, on a detached thread that shutdown did not wait for, so every run
//! fetched a new token and left a `.tmp` file behind).
//!
//! The first run fetches and must leave the cache file; the next two must
//! take the token from it (no authority request while it is valid) and
//! print the same token; no run may leave a temporary file.
//!
//! On 29cb965 (before shutdown drained) the first run already fails: it
//! exits with no `token.json`, and a `.token.json.*.tmp` left behind.

use std::process::Command;

use freshtoken::testing::{LocalAuthority, Outcome};

const SECRET: &str = "sync-example-secret";

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the cache directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn three_short_runs_share_one_token_through_the_file_cache() {
    // The default 60 s tokens: valid for the whole test.
    let authority = LocalAuthority::builder()
        .client("my-app", SECRET)
        .start()
        .expect("the local authority");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("token.json");

    let mut lines = Vec::new();
    let mut requests_after = Vec::new();
    for run in 1..=3 {
        let out = Command::new(env!("CARGO_BIN_EXE_sync_example"))
            .args([&authority.token_url(), cache.to_str().unwrap()])
            .env("CLIENT_SECRET", SECRET)
            .output()
            .expect("a sync_example process");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "run {run} failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        assert!(
            !stdout.contains(SECRET) && !stderr.contains(SECRET),
            "run {run} printed the client secret"
        );
        let line = stdout.trim().to_owned();
        assert!(line.starts_with("token "), "run {run} printed {line:?}");
        requests_after.push(authority.request_count());
        let files = files_in(dir.path());
        println!(
            "sync_example run {run}: {line}; authority requests so far {}; files {files:?}",
            requests_after[run - 1]
        );
        assert!(
            cache.exists(),
            "run {run} exited without the cache file; files: {files:?}"
        );
        let temporary: Vec<_> = files.iter().filter(|f| f.ends_with(".tmp")).collect();
        assert!(
            temporary.is_empty(),
            "run {run} left temporary files: {temporary:?}"
        );
        lines.push(line);
    }

    assert_eq!(requests_after[0], 1, "the first run fetches once");
    assert_eq!(
        requests_after[2], 1,
        "runs 2 and 3 must take the valid token from the cache, not the authority"
    );
    assert!(
        matches!(authority.requests()[0].outcome, Outcome::Issued { .. }),
        "the first run's request was answered with a token"
    );
    // The same token (id and expiry) all three times.
    assert_eq!(lines[0], lines[1]);
    assert_eq!(lines[1], lines[2]);
}
