//! A refresh-token fleet member for `tests/fleet_rotation.rs`: one process
//! running a real blocking driver in the refresh-token flow against the
//! test's `LocalAuthority` (which rotates refresh tokens and has no reuse
//! interval), through a [`CacheStack`] of a process-local [`MemoryCache`]
//! above a cache shared with its siblings (a file, or Redis).
//!
//! `rotation_worker <file|redis|redis-cluster|redis-sentinel> <cache location> <token url> <client id> <name>`
//!
//! For `redis-cluster` the location is some nodes' URLs, for
//! `redis-sentinel` the Sentinels' URLs (service `freshtoken`), each
//! comma-separated (`tests/fleet_redis_rotation.rs`).
//!
//! `name` (say `w3.1`, slot 3, second life) is sent as the `scope` of every
//! token request, so that the authority's request log tells which process
//! sent what (the test's authority does not check scopes).
//!
//! The client secret and the configured refresh token come through the
//! environment (`FLEET_CLIENT_SECRET`, `FLEET_REFRESH_TOKEN`), never the
//! command line, where `ps` shows them. Every worker, restarted ones
//! included, is configured with the ORIGINAL refresh token, as a deployed
//! service would be: it must take the newest one from the shared cache.
//!
//! It reads its handle every 10 ms and prints one line per change:
//!
//! * `up` once its SIGTERM handler is installed (before that a SIGTERM
//!   would kill it, which is not what the test means to send);
//! * `fetching <unix ms>` when its driver starts a token request, and
//!   `answered <unix ms> <ok|error>` when the answer is back (so the test
//!   can send SIGTERM in the middle of a request);
//! * `valid <unix ms> <generation>` when it starts holding a valid token
//!   (by the system clock, checked here rather than trusting the handle),
//!   `invalid <unix ms>` when it stops holding one;
//! * `state <unix ms> <description>` when how renewal is going changes
//!   (its state, last error, and the shared cache's store error);
//! * `failed <unix ms> <error>` the first time the handle reports
//!   `Failed` (the grant was lost);
//! * on SIGTERM (or the end of its stdin: the test is gone) it calls `DriverHandle::shutdown_blocking()` (which
//!   finishes a fetch or store in flight first), then prints
//!   `summary {json}` (counters, and whether a request was out at the
//!   SIGTERM: `in_flight_at_term`) and exits 0.
//!
//! With `ROTATION_WORKER_ON_SIGTERM=exit` it exits 0 on SIGTERM WITHOUT
//! calling shutdown, as an application that forgot to would: a request in
//! flight is then abandoned. Only the test's negative control uses it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshtoken::cache::{CacheStack, FileCache, MemoryCache, RedisCache};
use freshtoken::driver::Builder;
use freshtoken::handle::RefreshState;
use freshtoken::oauth2::RefreshTokenSource;
use freshtoken::policy::Backoff;
use freshtoken::source::TokenSource;
use freshtoken::source::{FetchRequest, TokenResponse};
use freshtoken::{Clock, FetchError, RefreshToken, SystemClock};

fn main() {
    // First of all, so that the test's SIGTERM always means "shut down".
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term))
        .expect("a SIGTERM handler");
    // The test holds our stdin open and never writes: its end means the
    // test is gone, and we shut down as on SIGTERM instead of running on.
    let orphaned = Arc::clone(&term);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        orphaned.store(true, Ordering::SeqCst);
    });
    say("up");

    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, location, token_url, client_id, name] = args.as_slice() else {
        eprintln!(
            "usage: rotation_worker <file|redis|redis-cluster|redis-sentinel> <cache location> <token url> <client id> <name>"
        );
        std::process::exit(2);
    };
    let secret = std::env::var("FLEET_CLIENT_SECRET").expect("FLEET_CLIENT_SECRET");
    let refresh = std::env::var("FLEET_REFRESH_TOKEN").expect("FLEET_REFRESH_TOKEN");

    let stack = CacheStack::new().with(MemoryCache::new());
    let stack = match kind.as_str() {
        "file" => stack.with(FileCache::new(location)),
        "redis" => stack.with(
            RedisCache::new(location, "rotation:token")
                .expect("a redis URL")
                .with_command_timeout(Duration::from_millis(500))
                .with_connect_timeout(Duration::from_millis(500)),
        ),
        "redis-cluster" | "redis-sentinel" => {
            let urls: Vec<&str> = location.split(',').collect();
            let builder = if kind == "redis-cluster" {
                RedisCache::cluster(&urls, "rotation:token")
            } else {
                RedisCache::sentinel(&urls, "freshtoken", "rotation:token")
            };
            stack.with(
                builder
                    .command_timeout(Duration::from_millis(500))
                    .connect_timeout(Duration::from_millis(500))
                    .build()
                    .expect("cluster or Sentinel URLs"),
            )
        }
        other => panic!("unknown cache kind {other}"),
    };
    let source = RefreshTokenSource::builder(token_url.as_str(), client_id.as_str())
        .client_secret(secret)
        // Far beyond the machine's 1 s deadline: an answer that comes after
        // the deadline is still received, and the machine stores its
        // rotated refresh token (a late answer is never dropped).
        .timeout(Duration::from_secs(5))
        .scope(name.as_str())
        .refresh_token(RefreshToken::new(refresh))
        .build()
        .expect("a loopback token URL");

    let out = Arc::new(AtomicBool::new(false));
    let (tokens, driver) = Builder::new()
        // The test's authority takes 300 ms to answer: peers that find the
        // lease taken give up waiting (50-150 ms) long before the holder's
        // answer, and must not fetch without the lease.
        .peer_wait(Duration::from_millis(100))
        // 2 s tokens: retry an outage every second at most, so the fleet
        // comes back within about a second of its end.
        .backoff(Backoff::new(
            Duration::from_millis(100),
            2,
            Duration::from_secs(1),
        ))
        .cache(stack)
        // Three times the authority's 300 ms; the lease TTL is raised to
        // 1.5 x this, so a live holder keeps it through a slow answer.
        .fetch_timeout(Duration::from_millis(1_000))
        .lease_ttl(Duration::from_millis(1_500))
        .heartbeat(Duration::from_millis(250))
        .spawn_thread(Announced {
            inner: source,
            out: Arc::clone(&out),
        })
        .expect("a driver thread");

    let clock = SystemClock;
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut valid = false;
    let mut last_state = String::new();
    while !term.load(Ordering::SeqCst) {
        stats.reads += 1;
        let now = clock.now();
        let token = tokens.token().filter(|t| t.is_valid_at(now));
        match (&token, valid) {
            (Some(t), false) => {
                valid = true;
                stats.first_valid_ms.get_or_insert(now.as_millis());
                say(&format!("valid {} {}", now.as_millis(), t.generation()));
            }
            (None, true) => {
                valid = false;
                say(&format!("invalid {}", now.as_millis()));
            }
            _ => {}
        }
        if token.is_none() && stats.first_valid_ms.is_some() {
            stats.invalid_after_first += 1;
        }
        let snapshot = tokens.snapshot();
        let state = describe(&snapshot.state, snapshot.store_error.as_ref());
        if state != last_state {
            say(&format!("state {} {state}", now.as_millis()));
            last_state = state;
        }
        if let RefreshState::Failed { error } = tokens.status() {
            if stats.failed_reads == 0 {
                say(&format!("failed {} {error}", now.as_millis()));
            }
            stats.failed_reads += 1;
        }
        drop(token);
        std::thread::sleep(Duration::from_millis(10));
    }

    if std::env::var("ROTATION_WORKER_ON_SIGTERM").as_deref() == Ok("exit") {
        std::process::exit(0);
    }
    let term_at = clock.now();
    let in_flight_at_term = out.load(Ordering::SeqCst);
    let fetches = tokens.snapshot().tokens_fetched;
    let shutdown = Instant::now();
    driver.shutdown_blocking();
    let shutdown_ms = shutdown.elapsed().as_millis() as u64;
    let generation = tokens.token().map_or(0, |t| t.generation());
    drop(tokens);
    say(&format!(
        "summary {{\"reads\":{},\"invalid_after_first\":{},\"failed_reads\":{},\"first_valid_ms\":{},\"valid_at_term\":{},\"in_flight_at_term\":{},\"term_ms\":{},\"ran_ms\":{},\"shutdown_ms\":{},\"fetches\":{},\"generation\":{}}}",
        stats.reads,
        stats.invalid_after_first,
        stats.failed_reads,
        stats.first_valid_ms.map_or("null".to_owned(), |ms| ms.to_string()),
        valid,
        in_flight_at_term,
        term_at.as_millis(),
        started.elapsed().as_millis(),
        shutdown_ms,
        fetches,
        generation,
    ));
}

/// A source that says when each of its requests starts and ends, and
/// keeps a flag up while one is out.
struct Announced<S> {
    inner: S,
    out: Arc<AtomicBool>,
}

impl<S: TokenSource> TokenSource for Announced<S> {
    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.inner.initial_refresh_token()
    }

    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.out.store(true, Ordering::SeqCst);
        say(&format!("fetching {}", SystemClock.now().as_millis()));
        let answer = self.inner.fetch(request);
        let how = if answer.is_ok() { "ok" } else { "error" };
        say(&format!("answered {} {how}", SystemClock.now().as_millis()));
        self.out.store(false, Ordering::SeqCst);
        answer
    }
}

#[derive(Default)]
struct Stats {
    reads: u64,
    invalid_after_first: u64,
    failed_reads: u64,
    first_valid_ms: Option<u64>,
}

/// How renewal is going, in one line for the test's failure messages:
/// the state's name, its last error and the shared cache's store error
/// (both print no secret).
fn describe(state: &RefreshState, store_error: Option<&freshtoken::CacheError>) -> String {
    let name = match state {
        RefreshState::Starting => "starting",
        RefreshState::Healthy => "healthy",
        RefreshState::Retrying { .. } => "retrying",
        RefreshState::Failed { .. } => "failed",
        RefreshState::Stopped => "stopped",
        _ => "another state",
    };
    let error = state
        .last_error()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    let store = store_error
        .map(|e| format!(" [store: {e}]"))
        .unwrap_or_default();
    format!("{name}{error}{store}")
}

fn say(what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what}");
    let _ = out.flush();
}
