use super::*;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn same_scenario_same_report() {
    let s = Scenario::new(20)
        .cache(CacheMode::SharedWithLease)
        .duration(Duration::from_secs(4 * 3600))
        .fault(Fault::new(FaultKind::Outage, 40 * MINUTE, 10 * MINUTE));
    assert_eq!(s.run(), s.run());
    assert_ne!(s.run(), s.clone().seed(2).run());
}

#[test]
fn without_a_cache_every_instance_asks() {
    let r = Scenario::new(10).duration(Duration::from_secs(3600)).run();
    // Each instance: a cold-start fetch and one renewal within the hour.
    assert_eq!(r.authority_requests, 20);
    assert_eq!(r.leases_granted, 0);
    assert_eq!(r.cache_reads, 0);
}

#[test]
fn the_lease_turns_a_cold_start_stampede_into_one_request() {
    let base = Scenario::new(200).duration(Duration::from_secs(60));
    let shared = base.clone().cache(CacheMode::Shared).run();
    let leased = base.cache(CacheMode::SharedWithLease).run();
    assert!(shared.authority_requests > 10, "{shared:?}");
    assert_eq!(leased.authority_requests, 1, "{leased:?}");
    assert!(leased.leases_busy > 0);
}

#[test]
fn a_long_outage_is_visible_and_counted() {
    // Ten-second tokens and a minute-long outage: tokens run out.
    let r = Scenario::new(1)
        .lifetime(Duration::from_secs(10))
        .duration(Duration::from_secs(300))
        .fault(Fault::new(
            FaultKind::Outage,
            Duration::from_secs(20),
            MINUTE,
        ))
        .run();
    assert!(r.failed_requests > 0);
    assert!(r.availability < 0.9, "{r:?}");
    assert!(r.longest_gap > Duration::from_secs(40), "{r:?}");
}

#[test]
fn permanent_errors_are_not_hammered() {
    let r = Scenario::new(1)
        .lifetime(Duration::from_secs(60))
        .duration(Duration::from_secs(3600))
        .fault(Fault::new(
            FaultKind::Permanent,
            Duration::ZERO,
            Duration::from_secs(3600),
        ))
        .run();
    // One try, then one every 2.5 to 5 minutes.
    assert!(r.authority_requests <= 25, "{r:?}");
    assert_eq!(r.availability, 0.0);
}

/// A late answer is one that comes after the machine's deadline for that
/// fetch, which near expiry is shorter than the fetch timeout: 20 s tokens
/// (renewed with about 5 s left) and a 10 s hold, well under the 30 s
/// fetch timeout but past every deadline the machine gives a renewal.
#[test]
fn late_answers_count_against_each_fetchs_own_deadline() {
    let life = Duration::from_secs(20);
    let config = MachineConfig::default();
    let held = Duration::from_secs(10);
    assert!(held < config.fetch_timeout);
    let r = Scenario::new(1)
        .lifetime(life)
        .duration(Duration::from_secs(60))
        .fault(Fault::new(
            FaultKind::Hang { held },
            Duration::from_secs(5),
            Duration::from_secs(20),
        ))
        .run();
    assert!(r.late_answers >= 1, "{r:?}");
}

/// The busiest second counts in true time: ten instances without a cache
/// started in the same millisecond make ten requests in it, and two hundred
/// sharing a cache all load it in their first second.
#[test]
fn the_busiest_second_is_counted() {
    let herd = Scenario::new(10)
        .start_spread(Duration::ZERO)
        .duration(Duration::from_secs(3600))
        .run();
    assert_eq!(herd.authority_requests, 20, "{herd:?}");
    assert_eq!(herd.peak_requests_per_second, 10, "{herd:?}");
    assert_eq!(herd.cache_operations, 0);

    let shared = Scenario::new(200)
        .start_spread(Duration::ZERO)
        .cache(CacheMode::SharedWithLease)
        .duration(Duration::from_secs(60))
        .run();
    assert_eq!(shared.peak_requests_per_second, 1, "{shared:?}");
    assert!(shared.peak_cache_operations_per_second >= 200, "{shared:?}");
    // Loads, lease calls and the one store, and its release.
    let counted = shared.cache_reads + shared.leases_granted + shared.leases_busy;
    assert!(
        shared.cache_operations >= counted + shared.cache_writes,
        "{shared:?}"
    );
}

/// The load during each fault window is what an observer of the fetches
/// sees in that window, and nothing outside one is counted.
#[test]
fn load_during_each_fault_is_counted() {
    let s = Scenario::new(30)
        .cache(CacheMode::Shared)
        .lifetime(Duration::from_secs(600))
        .duration(Duration::from_secs(3 * 3600))
        .fault(Fault::new(FaultKind::Outage, 40 * MINUTE, 10 * MINUTE))
        .fault(Fault::new(
            FaultKind::RateLimited {
                retry_after: Duration::from_secs(30),
            },
            2 * 60 * MINUTE,
            5 * MINUTE,
        ));
    let mut timeline = Timeline::default();
    let r = s.run_observed(&mut timeline);
    let t0 = s.start_time();
    let outage = timeline.fetches_within(t0 + 40 * MINUTE, t0 + 50 * MINUTE) as u64;
    let storm = timeline.fetches_within(t0 + 120 * MINUTE, t0 + 125 * MINUTE) as u64;
    assert!(outage > 0 && storm > 0, "{r:?}");
    assert_eq!(r.requests_during_faults, [outage, storm], "{r:?}");
    assert!(r.cache_operations_during_faults.iter().all(|n| *n > 0));
    assert!(r.cache_operations_during_faults.iter().sum::<u64>() < r.cache_operations);
}
