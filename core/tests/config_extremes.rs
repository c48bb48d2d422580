//! Configuration values at their edges (issue 11): zero, tiny, huge and
//! `Duration::MAX` ("never") durations, NaN, infinite and out-of-range
//! fractions, run through fleets with a cache, a lease, outages, 429s
//! with long Retry-After, hangs and degenerate lifetimes. Nothing may panic
//! (every value saturates), every timeout lies in the future, and the
//! jitter bounds hold.

use std::time::Duration;

use freshtoken_core::sim::{CacheMode, Fault, FaultKind, Observer, Scenario};
use freshtoken_core::*;
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_millis(1)),
        (0u64..5_000).prop_map(Duration::from_millis),
        (0u64..7_200).prop_map(Duration::from_secs),
        Just(Duration::from_secs(u64::MAX / 1_000)),
        Just(Duration::from_millis(u64::MAX)),
        Just(Duration::MAX),
    ]
}

fn fraction() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(7.0),
        0.0f64..1.0,
    ]
}

prop_compose! {
    fn config()(
        d in proptest::collection::vec(duration(), 17),
        factor in prop_oneof![Just(0u32), Just(1), Just(2), Just(u32::MAX)],
        fresh in fraction(), jitter in fraction(),
    ) -> MachineConfig {
        let mut config = MachineConfig::default();
        config.lease_ttl = d[0];
        config.peer_wait = d[1];
        config.invalidate_interval = d[2];
        config.fetch_timeout = d[3];
        config.cache_timeout = d[4];
        config.min_refresh_interval = d[5];
        config.min_fetch_timeout = d[6];
        config.backoff = Backoff::new(d[7], factor, d[8])
            .with_permanent_interval(d[9])
            .with_max_retry_after(d[10])
            .with_expired_caps(d[11], d[12]);
        config.lifetime = LifetimePolicy::default()
            .with_fresh_fraction(fresh)
            .with_min_stale_window(d[13])
            .with_default_lifetime(d[14])
            .with_lifetime_bounds(d[15], d[16]);
        config.jitter = Jitter::new(jitter).max_early(d[1]);
        config
    }
}

/// Every timeout a machine asks for lies after the input that led to it.
#[derive(Default)]
struct Deadlines {
    inputs: u64,
    bad: Option<(usize, Timestamp, Timestamp)>,
}

impl Observer for Deadlines {
    fn input(&mut self, _i: usize, _now: Timestamp, _input: &Input) {
        self.inputs += 1;
    }
    fn output(&mut self, i: usize, now: Timestamp, output: &Output) {
        if let Output::Timeout(at) = output {
            if *at <= now && self.bad.is_none() {
                self.bad = Some((i, now, *at));
            }
        }
    }
}

fn fault(kind: u8, retry_after: Duration) -> Fault {
    let kind = match kind % 5 {
        0 => FaultKind::Outage,
        1 => FaultKind::RateLimited { retry_after },
        2 => FaultKind::Permanent,
        3 => FaultKind::Hang {
            held: Duration::from_secs(40),
        },
        _ => FaultKind::Outage,
    };
    Fault::new(kind, Duration::from_secs(15), Duration::from_secs(25))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Whatever the configuration, a fleet runs without a panic through
    /// faults, and every timeout lies in the future.
    #[test]
    fn no_configuration_value_panics_the_machine(
        config in config(), n in 1usize..3, mode in 0u8..3, refresh in any::<bool>(),
        kind in any::<u8>(), retry_after in duration(), expires_in in prop_oneof![Just(None), (-3i64..5).prop_map(Some)],
        seed: u64,
    ) {
        let cache = [CacheMode::None, CacheMode::Shared, CacheMode::SharedWithLease][mode as usize];
        let mut s = Scenario::new(n)
            .lifetime(Duration::from_secs(20))
            .duration(Duration::from_secs(60))
            .cache(cache)
            .config(config)
            .seed(seed)
            .fault(fault(kind, retry_after));
        if let Some(e) = expires_in {
            s = s.advertised_expires_in(e);
        }
        if refresh {
            s = s.refresh_tokens(Duration::ZERO);
        }
        let mut seen = Deadlines::default();
        let r = s.run_observed(&mut seen);
        prop_assert!(seen.inputs >= n as u64, "{:?}", r);
        prop_assert!(seen.bad.is_none(), "a timeout not in the future: {:?}", seen.bad);
    }

    /// The jitter's offset never exceeds the smaller of the fraction and
    /// the absolute bound, nor half the fresh period.
    #[test]
    fn jitter_stays_within_both_bounds(
        fraction in fraction(), bound in duration(), fresh_s in 0u64..1_000_000, seed: u64,
    ) {
        let jitter = Jitter::new(fraction).max_early(bound);
        let issued = Timestamp::from_secs(1_000);
        let fresh = Duration::from_secs(fresh_s);
        let token = Token::new(AccessToken::new("t"), issued, issued + fresh, issued + fresh * 2);
        let mut rng = fastrand::Rng::with_seed(seed);
        let at = jitter.refresh_at(&token, &mut rng);
        let early = token.stale_at().saturating_duration_since(at);
        let by_fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 0.5) };
        prop_assert!(at <= token.stale_at());
        prop_assert!(early <= bound);
        prop_assert!(early <= fresh / 2);
        prop_assert!(early.as_secs_f64() <= fresh.as_secs_f64() * by_fraction + 0.001);
    }
}
