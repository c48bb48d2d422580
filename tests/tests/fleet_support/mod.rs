//! The multi-process fleet harness shared by `fleet_processes.rs` and
//! `fleet_redis_ha.rs`: eight `fleet_worker` processes against one local
//! authority with 2 s tokens for 20 s, and what they saw.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use freshtoken::proto::MachineConfig;
use freshtoken::sim::{CacheMode, Scenario};
use freshtoken::testing::{LocalAuthority, Outcome};
use serde_json::Value;

pub const WORKERS: usize = 8;
pub const RUN: Duration = Duration::from_secs(20);
pub const LIFETIME: Duration = Duration::from_secs(2);
pub const READ_EVERY_MS: u64 = 15;
/// The goal is one request per refresh period; this is the bound.
pub const MAX_RATIO: f64 = 1.5;
pub const SECRET: &str = "fleet-secret-value";
/// The `+sealed` kinds' encryption keys (a current and an older one).
pub const CACHE_KEYS: &str = "fleet2:ZmxlZXQta2V5LXR3by0tLS0tLS0tLS0tLS0tLS0tLS0, fleet1:ZmxlZXQta2V5LW9uZS0tLS0tLS0tLS0tLS0tLS0tLS0";

/// The machine settings the workers use (see `short_token_builder` in the
/// worker), for the simulator's comparison.
pub fn worker_config() -> MachineConfig {
    let mut config = MachineConfig::default();
    config.peer_wait = Duration::from_millis(100);
    config.lease_ttl = Duration::from_secs(1);
    config
}

/// How often the workers' tokens are refreshed ([`LIFETIME`] tokens, the
/// workers' settings), by the simulator's reckoning.
pub fn refresh_period() -> Duration {
    Scenario::new(WORKERS)
        .lifetime(LIFETIME)
        .config(worker_config())
        .refresh_period()
}

pub struct Fleet {
    pub requests: usize,
    pub issued: usize,
    pub periods: f64,
    pub ratio: f64,
    pub reads: u64,
    pub invalid_after_first: u64,
    pub probes: u64,
    pub torn: u64,
    pub fetched: u64,
}

pub fn run_fleet(kind: &str, location: &str) -> Fleet {
    run_fleet_with(kind, location, || {})
}

/// [`run_fleet`], calling `mid_run` on the test's thread while the workers
/// run (to kill a server under them).
pub fn run_fleet_with(kind: &str, location: &str, mid_run: impl FnOnce()) -> Fleet {
    let authority = LocalAuthority::builder()
        .client("fleet", SECRET)
        .token_lifetime(LIFETIME)
        .start()
        .expect("the local authority");
    let started = Instant::now();
    let children: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_fleet_worker"))
                .args([
                    "cc",
                    kind,
                    location,
                    &authority.token_url(),
                    "fleet",
                    &RUN.as_millis().to_string(),
                    &READ_EVERY_MS.to_string(),
                ])
                .env("FLEET_CLIENT_SECRET", SECRET)
                .env("FLEET_CACHE_KEYS", CACHE_KEYS)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("a fleet_worker process")
        })
        .collect();
    mid_run();
    let summaries: Vec<Value> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("the worker's output");
            assert!(out.status.success(), "a worker failed: {:?}", out.status);
            let line = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(line.trim()).expect("a JSON summary")
        })
        .collect();
    let wall = started.elapsed();

    let log = authority.requests();
    let requests = log.len();
    let issued = log
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Issued { .. }))
        .count();
    let period = refresh_period();
    let periods = RUN.as_secs_f64() / period.as_secs_f64();
    let sum = |field: &str| -> u64 { summaries.iter().map(|s| s[field].as_u64().unwrap()).sum() };
    for (i, s) in summaries.iter().enumerate() {
        assert!(
            s["first_token_ms"].as_u64().is_some(),
            "worker {i} never got a token: {s}"
        );
    }
    let fleet = Fleet {
        requests,
        issued,
        periods,
        ratio: requests as f64 / periods,
        reads: sum("reads"),
        invalid_after_first: sum("invalid_after_first"),
        probes: sum("cache_probes"),
        torn: sum("torn"),
        fetched: sum("fetched"),
    };
    // Requests over the run, by second, to show how they spread.
    let t0 = log.first().map(|r| r.at);
    let mut per_second = vec![0u32; 1 + (wall.as_secs() as usize)];
    for r in &log {
        let s = r.at.saturating_duration_since(t0.unwrap()).as_secs() as usize;
        if let Some(slot) = per_second.get_mut(s) {
            *slot += 1;
        }
    }
    println!(
        "fleet[{kind}]: {WORKERS} processes, {:?} tokens, {:?}: {} authority requests ({} issued, {} fetched by the drivers) over {:.1} refresh periods of {:?} => ratio {:.2}; reads {} (invalid after first: {}); cache probes {} (torn: {}); requests per second: {:?}",
        LIFETIME, RUN, fleet.requests, fleet.issued, fleet.fetched, fleet.periods, period, fleet.ratio,
        fleet.reads, fleet.invalid_after_first, fleet.probes, fleet.torn, per_second
    );
    let sim = Scenario::new(WORKERS)
        .lifetime(LIFETIME)
        .duration(RUN)
        .latency(Duration::from_millis(2))
        .start_spread(Duration::from_millis(50))
        .cache(CacheMode::SharedWithLease)
        .config(worker_config())
        .run();
    println!(
        "fleet[{kind}]: the simulator with the same settings: {} requests, ratio {:.2}",
        sim.authority_requests, sim.requests_per_period
    );
    fleet
}

pub fn check(kind: &str, fleet: &Fleet) {
    assert_eq!(fleet.torn, 0, "{kind}: torn cache reads");
    assert_eq!(
        fleet.invalid_after_first, 0,
        "{kind}: reads without a valid token after the first one"
    );
    assert_eq!(fleet.requests, fleet.issued, "{kind}: failed requests");
    assert!(
        fleet.ratio <= MAX_RATIO,
        "{kind}: {} requests for {:.1} refresh periods (ratio {:.2} > {MAX_RATIO})",
        fleet.requests,
        fleet.periods,
        fleet.ratio
    );
}

/// What one `fleet_worker odd` process saw (see the worker's docs).
#[derive(Debug)]
pub struct OddWorker {
    /// When it first read a valid token (unix ms).
    pub first_token_ms: Option<u64>,
    /// Stretches after the first token without a valid one (unix ms).
    pub invalid_spans: Vec<(u64, u64)>,
    /// Whether any of its snapshots flagged a degenerate lifetime.
    pub degenerate_seen: bool,
    /// Tokens its driver fetched itself.
    pub fetched: u64,
    /// Whether its last read found a valid token.
    pub valid_at_end: bool,
}

/// Runs [`WORKERS`] `fleet_worker odd` processes (default machine settings,
/// one shared file cache with its lease) against `authority` for `run`,
/// reading every 20 ms, and returns what each saw.
pub fn run_odd_fleet(authority: &LocalAuthority, client_id: &str, run: Duration) -> Vec<OddWorker> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let children: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_fleet_worker"))
                .args([
                    "odd",
                    path.to_str().unwrap(),
                    &authority.token_url(),
                    client_id,
                    &run.as_millis().to_string(),
                    "20",
                ])
                .env("FLEET_CLIENT_SECRET", SECRET)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("a fleet_worker process")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("the worker's output");
            assert!(out.status.success(), "a worker failed: {:?}", out.status);
            let line = String::from_utf8_lossy(&out.stdout);
            let v: Value = serde_json::from_str(line.trim()).expect("a JSON summary");
            OddWorker {
                first_token_ms: v["first_token_unix_ms"].as_u64(),
                invalid_spans: v["invalid_spans"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
                    .collect(),
                degenerate_seen: v["degenerate_seen"].as_bool().unwrap(),
                fetched: v["fetched"].as_u64().unwrap(),
                valid_at_end: v["valid_at_end"].as_bool().unwrap(),
            }
        })
        .collect()
}
