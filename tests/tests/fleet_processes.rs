//! Eight real processes share one cache (a file, then Redis) against one
//! local authority with 2 s tokens for 20 s: the authority should see about
//! one request per refresh period, no process may hold an expired token
//! after its first one, and no process may read a torn cache entry.
//!
//! Run with `--nocapture` to see the request ratios.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use freshtoken::sim::{CacheMode, Scenario};
use freshtoken::testing::{LocalAuthority, Outcome};
use freshtoken::MachineConfig;
use freshtoken_tests::redis_server::{RedisCluster, RedisSentinel, RedisServer};
use serde_json::Value;

const WORKERS: usize = 8;
const RUN: Duration = Duration::from_secs(20);
const LIFETIME: Duration = Duration::from_secs(2);
const READ_EVERY_MS: u64 = 15;
/// The goal is one request per refresh period; this is the bound.
const MAX_RATIO: f64 = 1.5;
const SECRET: &str = "fleet-secret-value";

/// The machine settings the workers use (see `short_token_builder` in the
/// worker), for the simulator's comparison.
fn worker_config() -> MachineConfig {
    let mut config = MachineConfig::default();
    config.peer_wait = Duration::from_millis(100);
    config.lease_ttl = Duration::from_secs(1);
    config
}

struct Fleet {
    requests: usize,
    issued: usize,
    periods: f64,
    ratio: f64,
    reads: u64,
    invalid_after_first: u64,
    probes: u64,
    torn: u64,
    fetched: u64,
}

fn run_fleet(kind: &str, location: &str) -> Fleet {
    run_fleet_with(kind, location, || {})
}

/// [`run_fleet`], calling `mid_run` on the test's thread while the workers
/// run (to kill a server under them).
fn run_fleet_with(kind: &str, location: &str, mid_run: impl FnOnce()) -> Fleet {
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
    let period = Scenario::new(WORKERS)
        .lifetime(LIFETIME)
        .config(worker_config())
        .refresh_period();
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

fn check(kind: &str, fleet: &Fleet) {
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

#[test]
fn eight_processes_share_a_file_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let fleet = run_fleet("file", path.to_str().unwrap());
    // The file cache moves a file it cannot decode aside as
    // `<name>.corrupt-<ms>-<pid>`: any such file is a torn or bad read.
    let corrupt: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".corrupt-"))
        .collect();
    println!(
        "fleet[file]: files moved aside as corrupt: {}",
        corrupt.len()
    );
    assert!(corrupt.is_empty(), "corrupt cache files: {corrupt:?}");
    check("file", &fleet);
}

#[test]
fn eight_processes_share_redis() {
    let server = RedisServer::start_tcp();
    let fleet = run_fleet("redis", &server.url());
    check("redis", &fleet);
}

/// The bound for the replicated set-ups: about one request per period.
const MAX_RATIO_HA: f64 = 1.1;

fn check_ha(kind: &str, fleet: &Fleet) {
    check(kind, fleet);
    assert!(
        fleet.ratio <= MAX_RATIO_HA,
        "{kind}: ratio {:.2} > {MAX_RATIO_HA}",
        fleet.ratio
    );
}

#[test]
fn eight_processes_share_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let fleet = run_fleet("redis-cluster", &cluster.urls().join(","));
    check_ha("redis-cluster", &fleet);
}

#[test]
fn eight_processes_share_a_sentinel_primary() {
    let set = RedisSentinel::start();
    let fleet = run_fleet("redis-sentinel", &set.urls().join(","));
    check_ha("redis-sentinel", &fleet);
}

/// How long a killed primary stays down before it is restarted (and
/// rejoins as a replica).
const DOWN_FOR: Duration = Duration::from_secs(4);

/// Kills the primary serving the fleet's key halfway through the run, and
/// restarts it [`DOWN_FOR`] later. The fleet must keep serving valid tokens
/// (the counts are printed); the authority sees more requests while the
/// cache fails over and while the promoted replica has no replica of its
/// own (leases are then not acknowledged, so every instance fetches for
/// itself), and one per period again once the old primary is back as a
/// replica.
#[test]
fn a_cluster_fleet_keeps_serving_through_a_killed_primary() {
    let mut cluster = RedisCluster::start();
    let urls = cluster.urls().join(",");
    let primary = cluster.primary_of("fleet:token");
    let fleet = run_fleet_with("redis-cluster", &urls, || {
        std::thread::sleep(RUN / 2);
        cluster.kill(primary);
        println!(
            "fleet[redis-cluster failover]: killed the primary on port {primary} at {:?}",
            RUN / 2
        );
        std::thread::sleep(DOWN_FOR);
        cluster.restart(primary);
    });
    failover_check("redis-cluster failover", &fleet);
}

#[test]
fn a_sentinel_fleet_keeps_serving_through_a_killed_primary() {
    let mut set = RedisSentinel::start();
    let urls = set.urls().join(",");
    let fleet = run_fleet_with("redis-sentinel", &urls, || {
        std::thread::sleep(RUN / 2);
        let old = set.kill_primary();
        println!(
            "fleet[redis-sentinel failover]: killed the primary on port {old} at {:?}",
            RUN / 2
        );
        std::thread::sleep(DOWN_FOR);
        set.restart(old);
    });
    failover_check("redis-sentinel failover", &fleet);
}

fn failover_check(kind: &str, fleet: &Fleet) {
    println!(
        "fleet[{kind}]: {} requests, ratio {:.2}, reads {} of which {} found no valid token after the first one",
        fleet.requests, fleet.ratio, fleet.reads, fleet.invalid_after_first
    );
    assert_eq!(fleet.torn, 0, "{kind}: torn cache reads");
    assert_eq!(fleet.requests, fleet.issued, "{kind}: failed requests");
    assert_eq!(
        fleet.invalid_after_first, 0,
        "{kind}: reads without a valid token after the first one"
    );
}
