//! A refresh-token process killed with SIGKILL at random points of a
//! refresh, 50 times in a row; each successor starts from the same cache
//! file and the ORIGINAL configured refresh token, and must find a refresh
//! token the authority still accepts.
//!
//! The authority rotates refresh tokens and treats a second use of a
//! rotated one as a replay (`invalid_grant`, and the grant is revoked). One
//! window is unavoidable for any client: a kill after the authority rotated
//! the refresh token and before the client saved the new one. The new one
//! is then lost, and the old one is spent. Real authorities cover it with a
//! reuse interval (Auth0) or grace period (Okta); the test's authority is
//! set up with one, and every reuse it had to grant is counted and printed:
//! each is a kill that landed in that window, which without the interval
//! would have cost the grant (see the ignored test below, which shows it).
//!
//! What the test proves beyond that window: the machine stores a rotated
//! refresh token before it publishes, a restarted process prefers the
//! stored refresh token over its configured (older) one, and a lease left
//! by a killed holder does not stop the next process.
//!
//! Run with `--nocapture` to see where the kills landed.

use std::process::{Command, Stdio};
use std::time::Duration;

use freshtoken::testing::{Fault, FaultWindow, LocalAuthority, Outcome};
use freshtoken::{Clock, SystemClock, Timestamp};

const KILLS: usize = 50;
const SECRET: &str = "kill-test-secret";
/// Every answer waits this long first, so that kills land in the middle of
/// requests too, not only before and after them.
const HANG: Duration = Duration::from_millis(100);
/// Kill delays are drawn uniformly from 0 to this after the spawn; a
/// worker's whole life (start, cache, maybe a first fetch, the forced
/// refresh, the store) takes about 150-250 ms.
const MAX_DELAY_MS: u64 = 300;

#[derive(Default, Debug)]
struct Run {
    /// Kills by how far the worker had got: nothing printed, `ready`
    /// (had a token, refresh under way), `refreshed` (done, or exiting).
    before_ready: usize,
    after_ready: usize,
    after_refresh: usize,
    /// Workers that reported a permanent failure (the grant was lost).
    failed: usize,
    first_failure: Option<usize>,
    refresh_grants: usize,
    invalid_grant: usize,
    reused: usize,
    leftover_temp_files: usize,
    final_ok: bool,
    /// Reuses sent by a worker whose predecessor had finished its refresh
    /// (printed `refreshed`): those cannot be the inherent window, since
    /// the predecessor stored its rotated refresh token before publishing.
    unexplained_reuses: usize,
}

fn kill_run(
    reuse_interval: Duration,
    hang: Duration,
    max_delay_ms: u64,
    seed: u64,
    stop_at_failure: bool,
) -> Run {
    let authority = LocalAuthority::builder()
        .client("app", SECRET)
        .token_lifetime(Duration::from_secs(1))
        .refresh_token_reuse_interval(reuse_interval)
        .start()
        .expect("the local authority");
    if !hang.is_zero() {
        authority.add_fault(Fault::Hang(hang), FaultWindow::Always);
    }
    let original = authority.issue_refresh_token("app");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_fleet_worker"))
            .args([
                "refresh",
                path.to_str().unwrap(),
                &authority.token_url(),
                "app",
            ])
            .env("FLEET_CLIENT_SECRET", SECRET)
            .env("FLEET_REFRESH_TOKEN", original.expose_secret())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("a fleet_worker process")
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut run = Run::default();
    // When each worker was started, and whether it finished its refresh.
    let mut started = Vec::with_capacity(KILLS + 1);
    let mut finished = Vec::with_capacity(KILLS + 1);
    for i in 0..KILLS {
        started.push(SystemClock.now());
        let mut child = spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(0..=max_delay_ms)));
        // SIGKILL on unix; an error means it had already exited.
        let _ = child.kill();
        let out = child.wait_with_output().expect("the worker's output");
        let said = String::from_utf8_lossy(&out.stdout);
        finished.push(said.contains("refreshed"));
        if said.contains("failed") {
            run.failed += 1;
            run.first_failure.get_or_insert(i);
            if stop_at_failure {
                break;
            }
        } else if said.contains("refreshed") {
            run.after_refresh += 1;
        } else if said.contains("ready") {
            run.after_ready += 1;
        } else {
            run.before_ready += 1;
        }
    }
    // The last one is left alone: it must get a token and refresh it.
    started.push(SystemClock.now());
    let last = spawn()
        .wait_with_output()
        .expect("the last worker's output");
    run.final_ok =
        last.status.success() && String::from_utf8_lossy(&last.stdout).contains("refreshed");

    let log = authority.requests();
    run.invalid_grant = log
        .iter()
        .filter(
            |r| matches!(&r.outcome, Outcome::Rejected { error, .. } if error == "invalid_grant"),
        )
        .count();
    run.reused = log.iter().filter(|r| r.reused_refresh_token).count();
    // Workers never overlap, so a request that arrived while worker j ran
    // was sent by worker j. A reuse is unexplained when it is worker j's
    // first refresh and worker j - 1 completed its own: the token j - 1
    // published would then not have been the stored one. A later refresh
    // of the same worker may reuse its own refresh token: a retry after a
    // timed-out request (on a loaded machine the 100 ms hang can outlast
    // the 200 ms fetch timeout), which the reuse interval is for.
    let worker = |at: &Timestamp| started.iter().rposition(|s| s <= at).unwrap_or(0);
    let refreshes: Vec<_> = log
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .collect();
    run.refresh_grants = refreshes.len();
    run.unexplained_reuses = refreshes
        .iter()
        .filter(|r| r.reused_refresh_token)
        .filter(|r| {
            let j = worker(&r.at);
            let first_of_worker = refreshes.iter().all(|e| e.at >= r.at || worker(&e.at) != j);
            j > 0 && finished[j - 1] && first_of_worker
        })
        .count();
    run.leftover_temp_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    run
}

fn seed() -> u64 {
    std::env::var("FLEET_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

#[test]
fn a_killed_refresh_never_loses_the_grant() {
    let seed = seed();
    // Longer than the whole test: a token rotated by a killed worker's
    // request must still work for its successor, however many kills later.
    let run = kill_run(Duration::from_secs(60), HANG, MAX_DELAY_MS, seed, false);
    println!(
        "fleet_kill (seed {seed}, FLEET_KILL_SEED to replay): {KILLS} kills: {} before a token, {} during the refresh, {} after it; \
         {} refresh grants, {} reuses within the interval (kills between the authority's rotation and the store), \
         {} of them after a completed refresh, {} invalid_grant, {} temporary files left by killed writers",
        run.before_ready, run.after_ready, run.after_refresh, run.refresh_grants, run.reused,
        run.unexplained_reuses, run.invalid_grant, run.leftover_temp_files
    );
    assert_eq!(run.failed, 0, "a worker lost the grant: {run:?}");
    assert_eq!(run.invalid_grant, 0, "the authority saw a replay: {run:?}");
    assert_eq!(
        run.unexplained_reuses, 0,
        "a spent refresh token was presented after a completed refresh: {run:?}"
    );
    assert!(run.final_ok, "the last worker did not refresh: {run:?}");
}

/// The same without a reuse interval, to show the window: run with
/// `cargo test -p freshtoken-tests --test fleet_kill -- --ignored --nocapture`.
/// It stops at the first lost grant and prints where; it asserts nothing,
/// because a loss is expected (inherent to rotation without a grace
/// period), just not on every run.
#[test]
#[ignore = "a measurement of the inherent window, not a check"]
fn without_a_reuse_interval_a_kill_can_lose_the_grant() {
    let seed = seed();
    // With the authority's 100 ms hang before it rotates, and with a
    // prompt authority (a worker's life is then ~20-40 ms).
    for (hang, max_delay_ms) in [(HANG, MAX_DELAY_MS), (Duration::ZERO, 40)] {
        let run = kill_run(Duration::ZERO, hang, max_delay_ms, seed, true);
        println!(
            "fleet_kill without a reuse interval (seed {seed}, hang {hang:?}, delays 0-{max_delay_ms} ms): \
             first lost grant at kill {:?}; {run:?}",
            run.first_failure
        );
    }
}
