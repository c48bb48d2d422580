//! What will a fleet with these settings do to the authority?
//!
//! Runs a few scenarios through the deterministic fleet simulator (virtual
//! time, no network) and prints, for each: authority requests, requests per
//! refresh period, availability (share of consumer reads that found an
//! unexpired token), the longest time an instance went without one, and for
//! refresh-token fleets how often the authority saw a spent refresh token
//! (a defect if it ever happens; inherent losses, such as a process killed
//! between the rotation and its store, are counted apart).
//!
//! ```text
//! cargo run --release --example simulate
//! ```

use std::time::{Duration, Instant};

use freshtoken::sim::{CacheMode, Churn, Fault, FaultKind, Report, Scenario, Timeline};

const MINUTE: Duration = Duration::from_secs(60);
/// Faults start 40 minutes in: hourly tokens fetched at the start go stale
/// at 45 minutes and are renewed from 40.5 minutes on (jitter), so the first
/// renewal of every instance falls inside the fault.
const OUTAGE_AT: Duration = Duration::from_secs(40 * 60);

fn main() {
    let scenarios: Vec<(&str, Scenario)> = vec![
        ("1 instance, 24 h steady", Scenario::new(1)),
        (
            "1 instance, 10-min outage",
            Scenario::new(1).fault(Fault::new(FaultKind::Outage, OUTAGE_AT, 10 * MINUTE)),
        ),
        (
            "5,000 instances, shared cache, no lease",
            Scenario::new(5_000)
                .cache(CacheMode::Shared)
                .start_spread(MINUTE),
        ),
        (
            "5,000 instances, shared cache + lease",
            Scenario::new(5_000)
                .cache(CacheMode::SharedWithLease)
                .start_spread(MINUTE),
        ),
        (
            "5,000 instances, no cache",
            Scenario::new(5_000).start_spread(MINUTE),
        ),
        (
            "500 instances + lease, 10-min 429 storm (Retry-After 30 s)",
            Scenario::new(500)
                .cache(CacheMode::SharedWithLease)
                .start_spread(MINUTE)
                .fault(Fault::new(
                    FaultKind::RateLimited {
                        retry_after: Duration::from_secs(30),
                    },
                    OUTAGE_AT,
                    10 * MINUTE,
                )),
        ),
        (
            "500 instances, no cache, 10-min 429 storm (Retry-After 30 s)",
            Scenario::new(500).start_spread(MINUTE).fault(Fault::new(
                FaultKind::RateLimited {
                    retry_after: Duration::from_secs(30),
                },
                OUTAGE_AT,
                10 * MINUTE,
            )),
        ),
        (
            "5,000 refresh-token instances: stacks, skew ±5 min, 20-min outage",
            refresh_token_fleet(),
        ),
        (
            "  the same, 1 in 5 stops a kill, 1 % of answers lost",
            refresh_token_fleet()
                .churn(Churn::new(2 * 60 * MINUTE, 0.2, Duration::from_secs(5)))
                .lost_answers(0.01),
        ),
        (
            "10,000 instances + lease, 24 h (speed check)",
            Scenario::new(10_000)
                .cache(CacheMode::SharedWithLease)
                .start_spread(MINUTE),
        ),
    ];

    println!(
        "{:<62} {:>9} {:>9} {:>10} {:>12} {:>11} {:>13} {:>9}",
        "scenario",
        "requests",
        "failed",
        "req/period",
        "availability",
        "longest gap",
        "reuses (inh.)",
        "wall"
    );
    for (name, scenario) in scenarios {
        let started = Instant::now();
        let report = scenario.run();
        print_row(name, &report, started.elapsed());
    }
    println!(
        "\nrefresh period = fresh period less the largest jitter (hourly tokens: {:?});",
        Scenario::new(1).refresh_period()
    );
    println!("availability = share of consumer reads that found an unexpired token.");
    fleet_through_faults();
}

/// Issue 10's scenarios (a fleet through faults and odd authorities), with
/// the figures the issue measured with real processes before the fixes.
fn fleet_through_faults() {
    println!("\nA fleet through faults and odd authorities (8 instances, shared cache + lease, 20 s tokens):");
    let eight = |seed| {
        Scenario::new(8)
            .lifetime(Duration::from_secs(20))
            .cache(CacheMode::SharedWithLease)
            .seed(seed)
    };
    let secs = Duration::from_secs;

    // Items 1 and 3: a 503 outage from 10 s to 45 s.
    for seed in 0..3 {
        let s =
            eight(seed)
                .duration(secs(60))
                .fault(Fault::new(FaultKind::Outage, secs(10), secs(35)));
        let mut t = Timeline::default();
        s.run_observed(&mut t);
        let (from, to) = (s.start_time() + secs(10), s.start_time() + secs(45));
        let alone = {
            let s = Scenario::new(1)
                .lifetime(secs(20))
                .duration(secs(60))
                .seed(seed)
                .fault(Fault::new(FaultKind::Outage, secs(10), secs(35)));
            let mut t = Timeline::default();
            s.run_observed(&mut t);
            t.fetches_within(from, to)
        };
        println!(
            "  outage 10-45 s, seed {seed}: {} requests during it (one instance alone: {alone}; before: 55), every instance fresh {:.2} s after the recovery (before: 4.1-7.8 s)",
            t.fetches_within(from, to),
            t.all_fresh_after(to).unwrap_or(Duration::MAX).as_secs_f64()
        );
    }

    // Item 2: a herd start.
    let s = eight(1)
        .lifetime(secs(3600))
        .start_spread(Duration::ZERO)
        .duration(secs(10));
    let mut t = Timeline::default();
    let r = s.run_observed(&mut t);
    let stored = t.stores()[0];
    let worst = t
        .first_valid_after(s.start_time())
        .into_iter()
        .filter_map(|(_, at)| at)
        .map(|at| at.saturating_duration_since(stored))
        .max()
        .unwrap_or_default();
    println!(
        "  herd start: {} authority request(s), every follower within {} ms of the leader's store (before: 276-728 ms); {} cache reads",
        r.authority_requests,
        worst.as_millis(),
        r.cache_reads
    );

    // Item 4: expires_in: 0.
    for (n, mode) in [(1, CacheMode::None), (8, CacheMode::SharedWithLease)] {
        let r = Scenario::new(n)
            .lifetime(secs(3600))
            .advertised_expires_in(0)
            .cache(mode)
            .duration(secs(40))
            .run();
        println!(
            "  expires_in 0, {n} instance(s): {} requests in 40 s (before: 95 from one instance), availability {:.2} %",
            r.authority_requests,
            r.availability * 100.0
        );
    }

    // Item 5: a hang of 25 s over the first renewal, then a long one.
    for (from, len, held) in [(secs(5), secs(9), secs(25)), (secs(5), secs(28), secs(60))] {
        let r = eight(2)
            .duration(secs(60))
            .fault(Fault::new(FaultKind::Hang { held }, from, len))
            .run();
        println!(
            "  requests held {} s from {} s to {} s: {} requests, longest without a token {:.1} s, availability {:.2} % (before, a 25 s hold: the token expired 11-12 s into it)",
            held.as_secs(),
            from.as_secs(),
            (from + len).as_secs(),
            r.authority_requests,
            r.longest_gap.as_secs_f64(),
            r.availability * 100.0
        );
    }

    // Item 6: Retry-After 999999 s.
    let r = eight(3)
        .duration(secs(90))
        .fault(Fault::new(
            FaultKind::RateLimited {
                retry_after: secs(999_999),
            },
            secs(8),
            secs(27),
        ))
        .run();
    println!(
        "  429 with Retry-After 999999 s from 8 s to 35 s: {} requests, longest without a token {:.1} s (bounded by the 30 s cap past expiry; before: the 1 h cap)",
        r.authority_requests,
        r.longest_gap.as_secs_f64()
    );
}

/// 5,000 serverless-style instances sharing one refresh-token grant through
/// Redis with a lease, each with a memory layer above it, clocks up to five
/// minutes off (so the first renewals come up to five minutes early), a
/// 20-minute outage over them, 5 % of answers 5 to 100 times slower, and
/// every instance shut down (gracefully) and restarted every two hours on
/// average.
fn refresh_token_fleet() -> Scenario {
    Scenario::new(5_000)
        .refresh_tokens(Duration::ZERO)
        .cache(CacheMode::SharedWithLease)
        .stacks(true)
        .skew(5 * MINUTE)
        .latency_tail(0.05)
        .churn(Churn::new(2 * 60 * MINUTE, 0.0, Duration::from_secs(5)))
        .start_spread(MINUTE)
        .fault(Fault::new(FaultKind::Outage, 30 * MINUTE, 20 * MINUTE))
}

fn print_row(name: &str, r: &Report, wall: Duration) {
    let reuses = if r.all_reuses() + r.grace_reuses == 0 && r.kills == 0 && r.shutdowns == 0 {
        "-".to_owned()
    } else {
        let inherent: u64 = r.inherent_reuses.iter().sum();
        format!("{} ({inherent})", r.refresh_token_reuses)
    };
    println!(
        "{:<62} {:>9} {:>9} {:>10.3} {:>11.6}% {:>10.1}s {:>13} {:>8.2}s",
        name,
        r.authority_requests,
        r.failed_requests,
        r.requests_per_period,
        r.availability * 100.0,
        r.longest_gap.as_secs_f64(),
        reuses,
        wall.as_secs_f64()
    );
}
