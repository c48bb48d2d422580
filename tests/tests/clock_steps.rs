//! Clocks that jump (issue 25), with real processes: a `clock_worker`
//! runs a driver (the thread driver, and the async one on tokio) against
//! the local authority with the default settings and reads its token in a
//! loop, while libfaketime (Debian's `faketime` package) steps only that
//! process's wall clock, the way a resume from suspend or an NTP step looks
//! to a process: `FAKETIME_DONT_FAKE_MONOTONIC=1` leaves the monotonic
//! clock (and every timer) alone, and the worker writes the step into
//! libfaketime's timestamp file, which `FAKETIME_NO_CACHE=1` makes it read
//! at every clock reading. The authority runs in this process, on the real
//! clock.
//!
//! The set-up is 60 s tokens (stale at 30 s, 3 s of jitter) and a
//! ±120 s step at +10 s, over 100 s. To keep the test short the scale is a
//! third: 20 s tokens (stale at 10 s, 1 s of jitter), a ±40 s step at
//! +3.3 s. What the issue requires:
//!
//! * stepped forward: a new token is requested within 1.5 s of the step,
//!   and readers see an expired token for at most 1 s (before the fix, the
//!   driver slept until its own deadline, the token's refresh point, and
//!   readers saw the expired token until then);
//! * stepped back: the next request comes at the token's real stale point
//!   (within its jitter), and requests keep coming every refresh period
//!   (before the fix, the token was served as fresh until the wall clock
//!   caught up with its stale point: none in the run).
//!
//! The margins are wide against a loaded machine (the reaction is a few
//! milliseconds of work; the windows are whole seconds), and the old
//! behaviour misses them by seconds.
//!
//! `FRESHTOKEN_CLOCK_FULL_SCALE=1` runs the issue's own set-up instead
//! (60 s tokens, ±120 s at +10 s, 100 s when stepped back), and
//! `FRESHTOKEN_CLOCK_WORKER=<path>` another build of the worker (to
//! measure an older library with the same worker); `--nocapture` shows
//! each worker's events.
//!
//! libfaketime is required in CI (`.ci/setup-faketime.sh` installs it);
//! elsewhere, without it, the test says so and passes.
//!
//! The same wake is checked for every driver (smol and async-std too) on
//! a manual clock, in [`a_read_wakes_a_sleeping_driver`].

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use freshtoken::testing::LocalAuthority;

const SECRET: &str = "clock-steps-secret";
/// How often the worker reads its token.
const READ_EVERY_MS: u64 = 10;

/// The set-up: token lifetime, when and by how much the wall clock is
/// stepped, and how long the runs last.
struct Scale {
    lifetime: Duration,
    step_at_ms: u64,
    step_by_s: i64,
    forward_run_ms: u64,
    back_run_ms: u64,
}

impl Scale {
    /// A third of the (see the module docs), unless
    /// `FRESHTOKEN_CLOCK_FULL_SCALE` is set.
    fn get() -> Scale {
        if std::env::var_os("FRESHTOKEN_CLOCK_FULL_SCALE").is_some() {
            Scale {
                lifetime: Duration::from_secs(60),
                step_at_ms: 10_000,
                step_by_s: 120,
                forward_run_ms: 35_000,
                back_run_ms: 100_000,
            }
        } else {
            Scale {
                lifetime: Duration::from_secs(20),
                step_at_ms: 3_333,
                step_by_s: 40,
                forward_run_ms: 8_000,
                back_run_ms: 36_000,
            }
        }
    }
}

/// Where libfaketime is, if installed: `FRESHTOKEN_LIBFAKETIME`, or the
/// places Debian and a default `make install` put it.
fn libfaketime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FRESHTOKEN_LIBFAKETIME") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        for dir in dirs.flatten() {
            candidates.push(dir.path().join("faketime/libfaketime.so.1"));
        }
    }
    candidates.push(PathBuf::from("/usr/lib/faketime/libfaketime.so.1"));
    candidates.push(PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1"));
    candidates.into_iter().find(|p| p.is_file())
}

/// libfaketime, or `None` (after saying why) when the test cannot run
/// here. In CI (`CI` set, as CI systems do) a missing libfaketime fails.
fn faketime_or_skip() -> Option<PathBuf> {
    match libfaketime() {
        Some(path) => Some(path),
        None if std::env::var_os("CI").is_some() => {
            panic!("libfaketime is not installed: run .ci/setup (.ci/setup-faketime.sh)")
        }
        None => {
            eprintln!(
                "SKIPPED: libfaketime is not installed (Debian: apt-get install faketime, \
                 or run .ci/setup-faketime.sh; FRESHTOKEN_LIBFAKETIME=<path> to point at it)"
            );
            None
        }
    }
}

/// What a worker printed: milliseconds since it started.
#[derive(Debug, Default)]
struct Run {
    requests: Vec<u64>,
    /// The stretches (from, to) during which reads found no valid token
    /// after the first one; `to` is the end of the run if it never ended.
    expired: Vec<(u64, u64)>,
    step_at: Option<u64>,
    /// How far the wall clock moved against the monotonic one at the step.
    jump_ms: Option<i64>,
    end: u64,
    lines: Vec<String>,
}

/// Runs one worker for `run_ms` with a `by_s` step and parses its lines.
fn run_worker(scale: &Scale, driver: &str, by_s: i64, run_ms: u64) -> Option<Run> {
    let lib = faketime_or_skip()?;
    let authority = LocalAuthority::builder()
        .client("clock", SECRET)
        .token_lifetime(scale.lifetime)
        .start()
        .expect("the local authority");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let faketime = dir.path().join("faketime");
    std::fs::write(&faketime, "+0\n").expect("the faketime file");
    let worker = std::env::var_os("FRESHTOKEN_CLOCK_WORKER")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_clock_worker").into());
    let mut child = Command::new(worker)
        .args([
            driver,
            &authority.token_url(),
            "clock",
            faketime.to_str().expect("a UTF-8 path"),
            &scale.step_at_ms.to_string(),
            &by_s.to_string(),
            &run_ms.to_string(),
            &READ_EVERY_MS.to_string(),
        ])
        .env("CLOCK_CLIENT_SECRET", SECRET)
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME_TIMESTAMP_FILE", &faketime)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        // The name older libfaketime releases read.
        .env("DONT_FAKE_MONOTONIC", "1")
        // The file, not the variable, says the offset (the variable wins).
        .env_remove("FAKETIME")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the clock worker");
    let mut run = Run::default();
    let mut expired_from = None;
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = || -> u64 { words[1].parse().expect("milliseconds") };
        match words.first().copied() {
            Some("request") => run.requests.push(at()),
            Some("expired") => expired_from = Some(at()),
            Some("valid") => {
                let from = expired_from.take().expect("expired before valid");
                run.expired.push((from, at()));
            }
            Some("step") => {
                run.step_at = Some(at());
                run.jump_ms = Some(words[2].parse().expect("the jump"));
            }
            Some("end") => run.end = at(),
            _ => {}
        }
        run.lines.push(line);
    }
    let status = child.wait().expect("the worker's status");
    assert!(status.success(), "the worker failed: {status}; {run:?}");
    if let Some(from) = expired_from {
        run.expired.push((from, run.end));
    }
    let jump = run.jump_ms.expect("the worker stepped its clock");
    // libfaketime really moved the wall clock (and only it).
    assert!(
        (jump - by_s * 1_000).abs() < 1_000,
        "the wall clock moved {jump} ms, not {by_s} s: is libfaketime working? {run:?}"
    );
    eprintln!("{driver}, {by_s:+} s: {:?}", run.lines);
    Some(run)
}

/// A wall clock stepped forward (a resume from suspend): the first read
/// after it finds the token expired and wakes the driver, which asks for a
/// new one at once.
fn stepped_forward(driver: &str) {
    let scale = Scale::get();
    let Some(run) = run_worker(&scale, driver, scale.step_by_s, scale.forward_run_ms) else {
        return;
    };
    let step = run.step_at.expect("a step");
    assert!(
        run.requests[0] < step,
        "the first token came before the step: {run:?}"
    );
    let next = run
        .requests
        .iter()
        .copied()
        .find(|&r| r >= step)
        .unwrap_or_else(|| panic!("no request after the step: {run:?}"));
    assert!(
        next - step <= 1_500,
        "the request after the step came {} ms after it: {run:?}",
        next - step
    );
    for &(from, to) in &run.expired {
        assert!(
            to - from <= 1_000,
            "readers saw an expired token for {} ms: {run:?}",
            to - from
        );
    }
    // One request for the step, none for nothing (the run ends before
    // the new token's refresh point).
    assert_eq!(run.requests.len(), 2, "{run:?}");
}

/// A wall clock stepped back (an NTP correction): the token still goes
/// stale on time by the monotonic clock, and refreshes keep their period.
fn stepped_back(driver: &str) {
    let scale = Scale::get();
    let Some(run) = run_worker(&scale, driver, -scale.step_by_s, scale.back_run_ms) else {
        return;
    };
    let stale = scale.lifetime.as_millis() as u64 / 2;
    // The jitter takes up to a tenth of the fresh period off the stale
    // point; the load of a shared machine may add a little after it.
    let (early, late) = (stale - stale / 10 - 200, stale + 1_500);
    assert!(
        run.requests.len() >= 4,
        "expected a request every refresh period (about {stale} ms): {run:?}"
    );
    for pair in run.requests.windows(2) {
        let period = pair[1] - pair[0];
        assert!(
            (early..=late).contains(&period),
            "a refresh {period} ms after the previous request, not at the stale point: {run:?}"
        );
    }
    assert!(
        run.expired.is_empty(),
        "readers saw an expired token: {run:?}"
    );
}

#[test]
fn thread_driver_wall_clock_stepped_forward() {
    stepped_forward("thread");
}

#[test]
fn tokio_driver_wall_clock_stepped_forward() {
    stepped_forward("tokio");
}

// Before the machine compared lives on the monotonic clock, it kept the
// token it held when a fetched one expired earlier by the wall clock, as
// every token fetched after a step back does: a storm of 9,000 to 11,500
// requests until the old token's monotonic expiry.
#[test]
fn thread_driver_wall_clock_stepped_back() {
    stepped_back("thread");
}

#[test]
fn tokio_driver_wall_clock_stepped_back() {
    stepped_back("tokio");
}

/// Every driver, on a manual clock whose wall clock steps forward past
/// the token's expiry while the driver sleeps (its heartbeat off): the
/// first read finds the token expired and wakes the driver, which fetches
/// a new one at once. No libfaketime needed: the manual clock steps the
/// wall clock only, as libfaketime does.
mod a_read_wakes_a_sleeping_driver {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use freshtoken::driver::{Builder, DriverHandle};
    use freshtoken::handle::NoValidToken;
    use freshtoken::runtime;
    use freshtoken::source::{FnSource, TokenResponse};
    use freshtoken::{AccessToken, ManualClock, Timestamp, TokenHandle};

    /// A generous limit against a hung test, not a timing assertion.
    const HUNG: Duration = Duration::from_secs(20);

    fn builder(clock: &ManualClock) -> Builder {
        // No heartbeat: only the machine's deadlines (an hour away) or a
        // command wake the driver.
        Builder::new().clock(clock.clone()).heartbeat(Duration::MAX)
    }

    fn source(fetches: &Arc<AtomicU64>) -> impl freshtoken::source::TokenSource {
        let fetches = fetches.clone();
        FnSource::new(move |_| {
            let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(TokenResponse::new(AccessToken::new(format!("token-{n}")))
                .with_expires_in(Some(3_600)))
        })
    }

    fn check(spawn: impl FnOnce(Builder, FnSourceOf) -> (TokenHandle, DriverHandle)) {
        let clock = ManualClock::new(Timestamp::from_secs(1_000_000));
        let fetches = Arc::new(AtomicU64::new(0));
        let (tokens, driver) = spawn(builder(&clock), Box::new(source(&fetches)));
        let first = tokens.wait_ready(HUNG).expect("the first token").id();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // A two-hour suspend the driver's timer did not count.
        clock.set(Timestamp::from_secs(1_000_000 + 7_200));
        let why = tokens.valid_token().expect_err("the token has expired");
        assert!(matches!(why, NoValidToken::Expired { .. }), "{why:?}");
        let second = tokens.wait_ready(HUNG).expect("a new token after the read");
        assert_ne!(second.id(), first);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        drop(second);
        drop(tokens);
        driver.shutdown_blocking();
    }

    type FnSourceOf = Box<dyn freshtoken::source::TokenSource>;

    #[test]
    fn thread() {
        check(|b, s| b.spawn_thread(s).expect("a thread"));
    }

    #[test]
    fn tokio() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        check(|b, s| b.spawn(runtime::Tokio::new(rt.handle().clone()), s));
    }

    #[test]
    fn smol() {
        check(|b, s| b.spawn(runtime::Smol, s));
    }

    #[test]
    fn async_std() {
        check(|b, s| b.spawn(runtime::AsyncStd, s));
    }
}
