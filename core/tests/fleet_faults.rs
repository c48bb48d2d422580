//! A fleet sharing a cache with a lease, through faults: one retry stream
//! through an outage however many instances, followers that get the
//! leader's token within tens of milliseconds, and the whole fleet fresh
//! within a second or two of the authority's recovery.
//!
//! Ranges: 2 to 40 instances (1 for the comparison), 20 s to 10 min tokens,
//! 1 to 200 ms authority latency, outages of 5 s to 3 token lifetimes, both
//! flows (client credentials, refresh tokens).

use std::time::Duration;

use freshtoken_core::sim::{self, CacheMode, Fault, FaultKind, Scenario, Timeline};
use freshtoken_core::*;
use proptest::prelude::*;

fn scenario(n: usize, life: Duration, latency_ms: u64, refresh: bool, seed: u64) -> Scenario {
    let mut s = Scenario::new(n)
        .lifetime(life)
        .latency(Duration::from_millis(latency_ms))
        .cache(CacheMode::SharedWithLease)
        .seed(seed);
    if refresh {
        s = s.refresh_tokens(Duration::ZERO);
    }
    s
}

/// The measurement: 8 instances, 20 s tokens, 503s from 10 s to
/// 45 s. Before: 55 to 58 requests during the outage (the peers all gave up
/// waiting for the holder at once). Now: about what one instance alone sends.
#[test]
fn eight_instances_through_a_35_second_outage_send_one_retry_stream() {
    let outage = Fault::new(
        FaultKind::Outage,
        Duration::from_secs(10),
        Duration::from_secs(35),
    );
    for seed in 0..3 {
        let run = |n| {
            let s = scenario(n, Duration::from_secs(20), 100, false, seed)
                .duration(Duration::from_secs(60))
                .fault(outage);
            let mut t = Timeline::default();
            s.run_observed(&mut t);
            let start = s.start_time();
            t.fetches_within(
                start + Duration::from_secs(10),
                start + Duration::from_secs(45),
            )
        };
        let (alone, fleet) = (run(1), run(8));
        println!("seed {seed}: one instance {alone}, eight {fleet} requests during the outage");
        assert!(
            fleet <= alone + alone / 2 + 2,
            "fleet {fleet} vs alone {alone}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// However many instances wait, the authority sees one retry stream
    /// through an outage: no more than one instance can send through it
    /// (the backoff curve, then at most one a second once the tokens have
    /// expired), whatever the fleet's size.
    #[test]
    fn a_fleet_through_an_outage_sends_one_retry_stream(
        n in 2usize..40, lifetime_s in 20u64..600, latency_ms in 1u64..200,
        from_pct in 30u64..300, len_s in 5u64..1_800, refresh in any::<bool>(), seed: u64,
    ) {
        let life = Duration::from_secs(lifetime_s);
        let from = life * from_pct as u32 / 100;
        let len = Duration::from_secs(len_s).min(life * 3);
        let count = |n| {
            let s = scenario(n, life, latency_ms, refresh, seed)
                .duration(from + len + life)
                .fault(Fault::new(FaultKind::Outage, from, len));
            let mut t = Timeline::default();
            s.run_observed(&mut t);
            let start = s.start_time();
            t.fetches_within(start + from, start + from + len)
        };
        let fleet = count(n);
        let one_stream = Backoff::default().steps_within(len) as usize + 2 + len.as_secs() as usize;
        prop_assert!(fleet <= one_stream, "{} instances sent {}; one stream sends at most {}", n, fleet, one_stream);
    }

    /// Started together, every follower has the leader's token within
    /// 50 ms of the leader's store, and the authority is asked once.
    #[test]
    fn followers_have_the_token_within_50_ms_of_the_store(
        n in 2usize..40, latency_ms in 1u64..400, refresh in any::<bool>(), seed: u64,
    ) {
        let s = scenario(n, Duration::from_secs(3600), latency_ms, refresh, seed)
            .start_spread(Duration::ZERO)
            .duration(Duration::from_secs(10));
        let mut t = Timeline::default();
        let r = s.run_observed(&mut t);
        prop_assert_eq!(r.authority_requests, 1);
        let stored = t.stores()[0];
        for (i, first) in t.first_valid_after(s.start_time()) {
            let first = first.expect("every instance got a token");
            prop_assert!(first <= stored + Duration::from_millis(50),
                "instance {} first had a token {:?} after the store", i, first.saturating_duration_since(stored));
        }
    }

    /// After an outage that outlasted the tokens (the fleet has nothing to
    /// send), every instance holds a valid token again within two seconds
    /// of the recovery, plus what the network takes, while the fleet's load
    /// during the outage stayed at about one request per second or less.
    ///
    /// The network's part: the last failing request may have been sent just
    /// before the recovery and its error come back up to 1.5 x the latency
    /// after it (the simulator's round trips take 0.5 to 1.5 x the
    /// latency), and the fetch that succeeds takes one more round trip. The
    /// two seconds are the machine's: the probing holder's short backoff
    /// cap and a follower's next look. (Without the network's part, one run
    /// in about 250 failed at 198 ms latency: fresh again after 2.079 s.)
    #[test]
    fn after_a_long_outage_the_whole_fleet_is_fresh_within_two_seconds(
        n in 1usize..40, lifetime_s in 20u64..300, latency_ms in 1u64..200,
        extra_s in 5u64..600, refresh in any::<bool>(), seed: u64,
    ) {
        let life = Duration::from_secs(lifetime_s);
        let from = life / 2;
        let len = life + Duration::from_secs(extra_s);
        let s = scenario(n, life, latency_ms, refresh, seed)
            .duration(from + len + Duration::from_secs(30))
            .fault(Fault::new(FaultKind::Outage, from, len));
        let mut t = Timeline::default();
        s.run_observed(&mut t);
        let start = s.start_time();
        let recovered = start + from + len;
        let network = Duration::from_millis(latency_ms).mul_f64(3.0);
        let bound = recovered + Duration::from_secs(2) + network;
        for (i, healed) in t.first_valid_after(recovered) {
            prop_assert!(healed.is_some_and(|at| at <= bound),
                "instance {} fresh again at {:?} after the recovery", i,
                healed.map(|at| at.saturating_duration_since(recovered)));
        }
        // The load while every token was expired: the probing holder's
        // short cap, about one request per second (plus hand-on probes).
        let expired_from = start + from + life;
        let requests = t.fetches_within(expired_from, recovered);
        let secs = recovered.saturating_duration_since(expired_from).as_secs_f64();
        prop_assert!(requests as f64 <= secs + 5.0, "{} requests in {:.0} s", requests, secs);
    }
}

/// Counts each instance's cache calls (reads and lease requests) in a
/// window of the simulation's time.
struct CacheCalls {
    from: Timestamp,
    to: Timestamp,
    per_instance: Vec<u64>,
}

impl sim::Observer for CacheCalls {
    fn output(&mut self, instance: usize, now: Timestamp, output: &Output) {
        let call = matches!(
            output,
            Output::Action(Action::LoadCache { .. } | Action::AcquireLease { .. })
        );
        if call && now >= self.from && now < self.to {
            self.per_instance
                .resize(self.per_instance.len().max(instance + 1), 0);
            self.per_instance[instance] += 1;
        }
    }
}

/// Issue 19, defect 4: while a peer holds the lease through a 20-minute
/// outage and their tokens are valid, followers back off: at most one
/// cache call per 10 s on average (before: a read and a lease request
/// every 500 ms ± 50 %, about 4,800 calls each), with the same requests to
/// the authority and no reader without a token.
#[test]
fn followers_cost_the_cache_little_through_a_20_minute_outage() {
    for seed in 0..3 {
        // Two-hour tokens: stale after 90 min, so a 20-minute outage from
        // the first renewal stays within their validity.
        let life = Duration::from_secs(2 * 3600);
        let renewal = Duration::from_secs(80 * 60);
        let outage = Duration::from_secs(20 * 60);
        let s = scenario(50, life, 100, false, seed)
            .duration(renewal + outage + Duration::from_secs(600))
            .fault(Fault::new(FaultKind::Outage, renewal, outage));
        let start = s.start_time();
        let mut calls = CacheCalls {
            from: start + renewal,
            to: start + renewal + outage,
            per_instance: Vec::new(),
        };
        let report = s.run_observed(&mut calls);
        let total: u64 = calls.per_instance.iter().sum();
        let busiest = calls.per_instance.iter().max().copied().unwrap_or(0);
        let mean = total as f64 / 50.0;
        println!(
            "seed {seed}: {mean:.1} cache calls per instance through the outage (busiest {busiest}), \
             {} authority requests, availability {}",
            report.authority_requests, report.availability
        );
        assert!(mean <= 120.0, "{mean} calls per instance in 20 minutes");
        // Only the cold start goes without a token.
        assert!(report.longest_gap < Duration::from_secs(1), "{report:?}");
        assert_eq!(report.valid_at_end, 50, "{report:?}");
    }
}
