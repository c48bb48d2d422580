//! What will a fleet with these settings do to the authority?
//!
//! Runs a few scenarios through the deterministic fleet simulator (virtual
//! time, no network) and prints, for each: authority requests, requests per
//! refresh period, availability (share of consumer reads that found an
//! unexpired token) and the longest time an instance went without one.
//!
//! ```text
//! cargo run --release --example simulate
//! ```

use std::time::{Duration, Instant};

use freshtoken::sim::{CacheMode, Fault, FaultKind, Report, Scenario};

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
            "10,000 instances + lease, 24 h (speed check)",
            Scenario::new(10_000)
                .cache(CacheMode::SharedWithLease)
                .start_spread(MINUTE),
        ),
    ];

    println!(
        "{:<62} {:>9} {:>9} {:>10} {:>12} {:>11} {:>9}",
        "scenario", "requests", "failed", "req/period", "availability", "longest gap", "wall"
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
}

fn print_row(name: &str, r: &Report, wall: Duration) {
    println!(
        "{:<62} {:>9} {:>9} {:>10.3} {:>11.6}% {:>10.1}s {:>8.2}s",
        name,
        r.authority_requests,
        r.failed_requests,
        r.requests_per_period,
        r.availability * 100.0,
        r.longest_gap.as_secs_f64(),
        wall.as_secs_f64()
    );
}
