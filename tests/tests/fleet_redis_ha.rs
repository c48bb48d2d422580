//! The fleet of `fleet_processes.rs` over replicated Redis: a real Redis
//! Cluster (3 primaries, 3 replicas) and a Sentinel set-up (a primary, a
//! replica, 3 Sentinels), each also with its primary killed mid-run.
//! These tests take turns (one fleet at a time), so that 8 processes with
//! 2 s tokens are not starved on a small machine by another fleet.
//!
//! Run with `--nocapture` to see the request ratios and failover counts.

mod fleet_support;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fleet_support::{check, run_fleet, run_fleet_with, Fleet, RUN};
use freshtoken_tests::redis_server::{RedisCluster, RedisSentinel};

/// One fleet at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
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
    let _turn = serial();
    let cluster = RedisCluster::start();
    let fleet = run_fleet("redis-cluster", &cluster.urls().join(","));
    check_ha("redis-cluster", &fleet);
}

#[test]
fn eight_processes_share_a_sentinel_primary() {
    let _turn = serial();
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
    let _turn = serial();
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
    let _turn = serial();
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
