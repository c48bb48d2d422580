//! A fleet member for the multi-process tests (`tests/fleet_processes.rs`,
//! `tests/fleet_kill.rs`): one process running a real blocking driver
//! against the test's `LocalAuthority`, sharing a cache with its siblings.
//!
//! The client secret and, for the refresh-token flow, the initial refresh
//! token come through the environment (`FLEET_CLIENT_SECRET`,
//! `FLEET_REFRESH_TOKEN`), never the command line, where `ps` shows them.
//!
//! * `fleet_worker cc <file|redis|redis-cluster|redis-sentinel|postgres> <cache location> <token url> <client id> <run ms> <read every ms>`:
//!   (for a cluster the location is its nodes' URLs, for Sentinel the
//!   Sentinels' URLs, comma-separated; the Sentinel service is `freshtoken`)
//!   client credentials; reads the handle every few ms for `run ms`, then
//!   prints one JSON line:
//!   `{"reads":R,"invalid_after_first":I,"first_token_ms":F,"cache_probes":P,"torn":T,"fetched":N,"tokens_seen":S}`.
//!   `invalid_after_first` counts reads that found no valid token (none, or
//!   expired) after the first valid one; `cache_probes`/`torn` count direct
//!   reads of the shared cache entry and those that did not decode.
//!   `file+sealed`, `redis+sealed` and `postgres+sealed` are the same caches
//!   with encryption at rest, keys from `FLEET_CACHE_KEYS`; for them an
//!   entry the probe cannot read (Unreadable) counts as torn.
//! * `fleet_worker odd <cache file> <token url> <client id> <run ms> <read every ms>`:
//!   client credentials on a file cache with the default machine settings
//!   (as an application would run, for the odd-authority tests of issue
//!   10); reads the handle every few ms for `run ms`, then prints one JSON
//!   line: `{"first_token_unix_ms":F,"invalid_spans":[[from,to],...],"degenerate_seen":D,"fetched":N,"valid_at_end":V}`,
//!   where `invalid_spans` are the wall-clock stretches (unix ms) after the
//!   first token during which reads found no valid token, and
//!   `degenerate_seen` whether any snapshot flagged a degenerate lifetime.
//! * `fleet_worker dpop <key PEM file> <cache dir> <token url> <client id> <run ms> <read every ms>`:
//!   client credentials with DPoP (issue 23): the key from the PEM file,
//!   the cache entry `key.file_cache(dir)` (named after the key, its
//!   thumbprint included), the `cc` settings; reads the handle every few
//!   ms for `run ms`, then prints one JSON line:
//!   `{"jkt":K,"tokens":[id,...],"not_dpop":D,"invalid_after_first":I,"fetched":N}`:
//!   its key's thumbprint, the ids of the distinct tokens it served (never
//!   a token or a proof), and how many reads served a token that was not
//!   of type `DPoP`.
//! * `fleet_worker refresh <cache file> <token url> <client id>`: the
//!   refresh-token flow on a file cache. Prints `ready` once it has a valid
//!   token, then reports that token as rejected (forcing a refresh with the
//!   newest refresh token it knows), prints `refreshed` once a new token is
//!   published, and exits 0. On a permanent failure it prints `failed` and
//!   exits 1. The test kills it with SIGKILL at random points of this.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use freshtoken::cache::{record, EncryptionKeys, FileCache, PostgresCache, RedisCache, TokenCache};
use freshtoken::driver::Builder;
use freshtoken::oauth2::{ClientCredentials, DpopKey, RefreshTokenSource};
use freshtoken::{Clock, RefreshToken, SystemClock};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secret = std::env::var("FLEET_CLIENT_SECRET").expect("FLEET_CLIENT_SECRET");
    match args.first().map(String::as_str) {
        Some("cc") if args.len() == 7 => client_credentials(
            &args[1],
            &args[2],
            &args[3],
            &args[4],
            &secret,
            Duration::from_millis(args[5].parse().expect("run ms")),
            Duration::from_millis(args[6].parse().expect("read every ms")),
        ),
        Some("odd") if args.len() == 6 => odd_authority(
            PathBuf::from(&args[1]),
            &args[2],
            &args[3],
            &secret,
            Duration::from_millis(args[4].parse().expect("run ms")),
            Duration::from_millis(args[5].parse().expect("read every ms")),
        ),
        Some("dpop") if args.len() == 7 => dpop(
            &args[1],
            PathBuf::from(&args[2]),
            &args[3],
            &args[4],
            &secret,
            Duration::from_millis(args[5].parse().expect("run ms")),
            Duration::from_millis(args[6].parse().expect("read every ms")),
        ),
        Some("refresh") if args.len() == 4 => {
            let refresh = std::env::var("FLEET_REFRESH_TOKEN").expect("FLEET_REFRESH_TOKEN");
            refresh_flow(
                PathBuf::from(&args[1]),
                &args[2],
                &args[3],
                &secret,
                refresh,
            )
        }
        _ => {
            eprintln!(
                "usage: fleet_worker cc <file|redis|postgres> <cache> <token url> <client id> <run ms> <read every ms>\n\
                 \x20      fleet_worker odd <cache file> <token url> <client id> <run ms> <read every ms>\n\
                 \x20      fleet_worker dpop <key PEM file> <cache dir> <token url> <client id> <run ms> <read every ms>\n\
                 \x20      fleet_worker refresh <cache file> <token url> <client id>"
            );
            std::process::exit(2);
        }
    }
}

/// Settings for 2 s tokens. With the default lifetime policy such a token
/// goes stale at 1 s (the 30 s minimum stale window is capped at half the
/// lifetime), and the 10 % jitter moves refreshes up to 100 ms earlier, so
/// the whole refresh, peers included, has to fit in the last second.
fn short_token_builder() -> Builder {
    // The default 500 ms (250-750 ms jittered) would be most of the 1 s stale
    // window: a peer that found the lease busy could sleep straight into its
    // give-up point (the middle of the stale window) and then fetch without
    // re-reading the cache. 100 ms (50-150 ms) re-reads a few times instead;
    // a re-read is one small file or Redis read.
    // For experiments only: FLEET_PEER_WAIT_MS=500 shows the default's cost.
    let peer_wait = std::env::var("FLEET_PEER_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    Builder::new()
        .peer_wait(Duration::from_millis(peer_wait))
        // A loopback fetch takes milliseconds; 600 ms is far beyond it yet
        // leaves a timed-out attempt time for a retry inside the 1 s window.
        .fetch_timeout(Duration::from_millis(600))
        // The lease must outlive a fetch and its store (the driver raises it
        // to 1.5 x the fetch timeout = 900 ms anyway) and should not block the
        // others much past a crashed holder: 1 s, the length of the stale
        // window. Peers holding a valid token stop waiting at the middle of
        // the window regardless, so a dead holder costs at most one extra
        // request, never an expired token.
        .lease_ttl(Duration::from_secs(1))
        // The driver sleeps until the machine's next deadline anyway; a
        // short heartbeat only bounds how late a clock jump is noticed.
        .heartbeat(Duration::from_millis(250))
}

#[allow(clippy::too_many_arguments)]
fn client_credentials(
    kind: &str,
    location: &str,
    token_url: &str,
    client_id: &str,
    secret: &str,
    run: Duration,
    every: Duration,
) {
    let source = ClientCredentials::builder(token_url, client_id, secret)
        .timeout(Duration::from_millis(500))
        .build()
        .expect("a loopback token URL");
    // A second cache value reads the shared entry directly, to see what
    // the driver's reads would see (a torn or undecodable entry).
    let (builder, probe): (Builder, Box<dyn Fn() -> Probe>) = match kind {
        "file" => {
            let path = PathBuf::from(location);
            let probe_path = path.clone();
            (
                short_token_builder().cache(FileCache::new(path)),
                Box::new(move || probe_file(&probe_path)),
            )
        }
        "redis" => {
            let cache = || {
                RedisCache::new(location, "fleet:token")
                    .expect("a redis URL")
                    .with_command_timeout(Duration::from_millis(300))
                    .with_connect_timeout(Duration::from_millis(300))
            };
            let probe_cache = cache();
            (
                short_token_builder().cache(cache()),
                Box::new(move || match probe_cache.load() {
                    Ok(Some(_)) => Probe::Good,
                    Ok(None) => Probe::Missing,
                    Err(e) if e.kind() == freshtoken::CacheErrorKind::Corrupt => Probe::Torn,
                    Err(_) => Probe::Missing,
                }),
            )
        }
        "postgres" => {
            let cache = || {
                PostgresCache::new(location, "fleet:token")
                    .expect("a PostgreSQL connection string")
                    .with_command_timeout(Duration::from_millis(300))
                    .with_connect_timeout(Duration::from_millis(300))
            };
            let probe_cache = cache();
            (
                short_token_builder().cache(cache()),
                Box::new(move || match probe_cache.load() {
                    Ok(Some(_)) => Probe::Good,
                    Ok(None) => Probe::Missing,
                    Err(e) if e.kind() == freshtoken::CacheErrorKind::Corrupt => Probe::Torn,
                    Err(_) => Probe::Missing,
                }),
            )
        }
        "redis-cluster" | "redis-sentinel" => {
            // The location: comma-separated node (or Sentinel) URLs.
            let urls: Vec<&str> = location.split(',').collect();
            let cache = || {
                let builder = if kind == "redis-cluster" {
                    RedisCache::cluster(&urls, "fleet:token")
                } else {
                    RedisCache::sentinel(&urls, "freshtoken", "fleet:token")
                };
                builder
                    .command_timeout(Duration::from_millis(300))
                    .connect_timeout(Duration::from_millis(300))
                    .build()
                    .expect("cluster or sentinel URLs")
            };
            let probe_cache = cache();
            (
                short_token_builder().cache(cache()),
                Box::new(move || match probe_cache.load() {
                    Ok(Some(_)) => Probe::Good,
                    Ok(None) => Probe::Missing,
                    Err(e) if e.kind() == freshtoken::CacheErrorKind::Corrupt => Probe::Torn,
                    Err(_) => Probe::Missing,
                }),
            )
        }
        // The same caches with encryption at rest, keys from FLEET_CACHE_KEYS.
        "file+sealed" | "redis+sealed" | "postgres+sealed" => sealed_cache(kind, location),
        other => panic!("unknown cache kind {other}"),
    };
    let (tokens, driver) = builder.spawn_thread(source).expect("a driver thread");

    let clock = SystemClock;
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut last_id = None;
    while started.elapsed() < run {
        stats.reads += 1;
        // Valid by the system clock, checked here rather than trusting the
        // handle's own verdict.
        let valid = tokens
            .token()
            .filter(|t| t.is_valid_at(clock.now()))
            .map(|t| t.id());
        match valid {
            Some(id) => {
                if stats.first_token_ms.is_none() {
                    stats.first_token_ms = Some(started.elapsed().as_millis() as u64);
                }
                if last_id != Some(id) {
                    stats.tokens_seen += 1;
                    last_id = Some(id);
                }
            }
            None if stats.first_token_ms.is_some() => stats.invalid_after_first += 1,
            None => {}
        }
        if stats.reads % 4 == 0 {
            stats.cache_probes += 1;
            if probe() == Probe::Torn {
                stats.torn += 1;
            }
        }
        std::thread::sleep(every);
    }
    let fetched = tokens.snapshot().tokens_fetched;
    drop(tokens);
    driver.shutdown_blocking();
    println!(
        "{{\"reads\":{},\"invalid_after_first\":{},\"first_token_ms\":{},\"cache_probes\":{},\"torn\":{},\"fetched\":{},\"tokens_seen\":{}}}",
        stats.reads,
        stats.invalid_after_first,
        stats.first_token_ms.map_or("null".to_owned(), |ms| ms.to_string()),
        stats.cache_probes,
        stats.torn,
        fetched,
        stats.tokens_seen,
    );
}

/// An encrypted cache and its probe (see the module docs).
fn sealed_cache(kind: &str, location: &str) -> (Builder, Box<dyn Fn() -> Probe>) {
    let keys = EncryptionKeys::from_env("FLEET_CACHE_KEYS").expect("FLEET_CACHE_KEYS");
    let classify = |r: Result<Option<freshtoken::Token>, freshtoken::CacheError>| match r {
        Ok(Some(_)) => Probe::Good,
        Ok(None) => Probe::Missing,
        Err(e)
            if matches!(
                e.kind(),
                freshtoken::CacheErrorKind::Corrupt | freshtoken::CacheErrorKind::Unreadable
            ) =>
        {
            Probe::Torn
        }
        Err(_) => Probe::Missing,
    };
    let timeouts = Duration::from_millis(300);
    match kind {
        "file+sealed" => {
            let cache = || FileCache::new(location).encryption(keys.clone());
            let probe = cache();
            (
                short_token_builder().cache(cache()),
                Box::new(move || classify(probe.load())),
            )
        }
        "redis+sealed" => {
            let cache = || {
                RedisCache::new(location, "fleet:token")
                    .expect("a redis URL")
                    .with_command_timeout(timeouts)
                    .with_connect_timeout(timeouts)
                    .encryption(keys.clone())
            };
            let probe = cache();
            (
                short_token_builder().cache(cache()),
                Box::new(move || classify(probe.load())),
            )
        }
        _ => {
            let cache = || {
                PostgresCache::new(location, "fleet:token")
                    .expect("a PostgreSQL connection string")
                    .with_command_timeout(timeouts)
                    .with_connect_timeout(timeouts)
                    .encryption(keys.clone())
            };
            let probe = cache();
            (
                short_token_builder().cache(cache()),
                Box::new(move || classify(probe.load())),
            )
        }
    }
}

#[derive(Default)]
struct Stats {
    reads: u64,
    invalid_after_first: u64,
    first_token_ms: Option<u64>,
    cache_probes: u64,
    torn: u64,
    tokens_seen: u64,
}

#[derive(PartialEq, Eq)]
enum Probe {
    Good,
    Missing,
    Torn,
}

/// Reads the cache file's bytes and decodes them, without the cache's own
/// recovery (which would move a bad file aside): a decode failure here is
/// a torn or corrupt file that a driver could have read.
fn probe_file(path: &std::path::Path) -> Probe {
    match std::fs::read(path) {
        Ok(bytes) => match record::decode(&bytes) {
            Ok(_) => Probe::Good,
            Err(_) => Probe::Torn,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::Missing,
        // Unreadable counts with torn: a driver would have seen no token.
        Err(_) => Probe::Torn,
    }
}

/// See the module docs (`odd`): default settings, a file cache, and the
/// stretches without a valid token on the wall clock.
fn odd_authority(
    cache: PathBuf,
    token_url: &str,
    client_id: &str,
    secret: &str,
    run: Duration,
    every: Duration,
) {
    // The transport's own timeout stays the default 30 s: the machine's
    // deadline (FetchRequest::timeout) shortens it per request.
    let source = ClientCredentials::builder(token_url, client_id, secret)
        .build()
        .expect("a loopback token URL");
    let (tokens, driver) = Builder::new()
        .cache(FileCache::new(cache))
        .spawn_thread(source)
        .expect("a driver thread");
    let clock = SystemClock;
    let started = Instant::now();
    let mut first: Option<u64> = None;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut invalid_since: Option<u64> = None;
    let mut degenerate_seen = false;
    let mut valid = false;
    while started.elapsed() < run {
        let now = clock.now();
        let now_ms = now.as_millis();
        valid = tokens.token().is_some_and(|t| t.is_valid_at(now));
        degenerate_seen |= tokens.snapshot().degenerate.is_some();
        match (valid, first, invalid_since) {
            (true, None, _) => first = Some(now_ms),
            (true, Some(_), Some(since)) => {
                spans.push((since, now_ms));
                invalid_since = None;
            }
            (false, Some(_), None) => invalid_since = Some(now_ms),
            _ => {}
        }
        std::thread::sleep(every);
    }
    if let Some(since) = invalid_since {
        spans.push((since, clock.now().as_millis()));
    }
    let fetched = tokens.snapshot().tokens_fetched;
    drop(tokens);
    driver.shutdown_blocking();
    let spans: Vec<String> = spans.iter().map(|(a, b)| format!("[{a},{b}]")).collect();
    println!(
        "{{\"first_token_unix_ms\":{},\"invalid_spans\":[{}],\"degenerate_seen\":{},\"fetched\":{},\"valid_at_end\":{}}}",
        first.map_or("null".to_owned(), |ms| ms.to_string()),
        spans.join(","),
        degenerate_seen,
        fetched,
        valid,
    );
}

/// See the module docs (`dpop`): a fleet member holding a DPoP key.
fn dpop(
    key_file: &str,
    dir: PathBuf,
    token_url: &str,
    client_id: &str,
    secret: &str,
    run: Duration,
    every: Duration,
) {
    let key = DpopKey::from_pem_file(key_file).expect("a PKCS#8 P-256 PEM key");
    let source = ClientCredentials::builder(token_url, client_id, secret)
        .timeout(Duration::from_millis(500))
        .dpop(key.clone())
        .build()
        .expect("a loopback token URL");
    let (tokens, driver) = short_token_builder()
        .cache_for(move |k| k.file_cache(&dir))
        .spawn_thread(source)
        .expect("a driver thread");
    let clock = SystemClock;
    let started = Instant::now();
    let mut served: Vec<String> = Vec::new();
    let (mut not_dpop, mut invalid_after_first) = (0u64, 0u64);
    while started.elapsed() < run {
        match tokens.token().filter(|t| t.is_valid_at(clock.now())) {
            Some(t) => {
                not_dpop += u64::from(t.token_type() != "DPoP");
                let id = t.id().to_string();
                if served.last() != Some(&id) {
                    served.push(id);
                }
            }
            None if !served.is_empty() => invalid_after_first += 1,
            None => {}
        }
        std::thread::sleep(every);
    }
    let fetched = tokens.snapshot().tokens_fetched;
    drop(tokens);
    driver.shutdown_blocking();
    let served: Vec<String> = served.iter().map(|id| format!("\"{id}\"")).collect();
    println!(
        "{{\"jkt\":\"{}\",\"tokens\":[{}],\"not_dpop\":{not_dpop},\"invalid_after_first\":{invalid_after_first},\"fetched\":{fetched}}}",
        key.thumbprint(),
        served.join(","),
    );
}

fn refresh_flow(cache: PathBuf, token_url: &str, client_id: &str, secret: &str, refresh: String) {
    let source = RefreshTokenSource::builder(token_url, client_id)
        .client_secret(secret)
        .timeout(Duration::from_millis(1_000))
        .refresh_token(RefreshToken::new(refresh))
        .build()
        .expect("a loopback token URL");
    let (tokens, driver) = Builder::new()
        // A killed predecessor may have left its lease behind: look again soon.
        .peer_wait(Duration::from_millis(30))
        .cache(FileCache::new(cache))
        // The test's authority hangs each answer for 100 ms; a fetch that
        // takes longer is a failure. The lease (>= 1.5 x this) then lapses
        // 300 ms after a killed holder took it.
        .fetch_timeout(Duration::from_millis(200))
        .lease_ttl(Duration::from_millis(300))
        .spawn_thread(source)
        .expect("a driver thread");
    let say = |what: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{what}");
        let _ = out.flush();
    };
    let first = match tokens.wait_ready(Duration::from_secs(10)) {
        Ok(token) => token,
        Err(e) => {
            say(&format!("failed {e}"));
            std::process::exit(1);
        }
    };
    say("ready");
    let first_id = first.id();
    tokens.invalidate(&first);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokens.valid_token() {
            Ok(t) if t.id() != first_id => break,
            Err(e @ freshtoken::NoValidToken::Failed { .. }) => {
                say(&format!("failed {e}"));
                std::process::exit(1);
            }
            _ => {}
        }
        if Instant::now() > deadline {
            say("failed no refresh within 10 s");
            std::process::exit(1);
        }
        let _ = tokens.wait_changed(Duration::from_millis(50));
    }
    say("refreshed");
    drop(tokens);
    driver.shutdown_blocking();
}
