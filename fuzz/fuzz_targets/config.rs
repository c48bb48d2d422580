//! Arbitrary `MachineConfig`s (zero, tiny, huge and `Duration::MAX`
//! durations; NaN, infinite and out-of-range fractions) driving the
//! RefreshMachine through a cold start, renewals, failures, Retry-After,
//! leases and degenerate lifetimes: nothing may panic (every configuration
//! value saturates), and every timeout must lie in the future.
#![no_main]

use std::time::Duration;

use freshtoken_core::*;
use libfuzzer_sys::fuzz_target;

/// A duration from one byte: the edges most of the time.
fn duration(b: u8, extra: u8) -> Duration {
    match b % 8 {
        0 => Duration::ZERO,
        1 => Duration::from_millis(1),
        2 => Duration::from_millis(u64::from(extra)),
        3 => Duration::from_secs(u64::from(extra)),
        4 => Duration::from_secs(u64::from(extra) * 86_400 * 365),
        5 => Duration::from_millis(u64::MAX),
        6 => Duration::new(u64::MAX, 999_999_999),
        _ => Duration::MAX,
    }
}

fn fraction(b: u8) -> f64 {
    match b % 8 {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => -1.0,
        4 => 2.0,
        _ => f64::from(b) / 255.0,
    }
}

/// The fuzzer's bytes, read one at a time (zero once they run out).
struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }

    fn duration(&mut self) -> Duration {
        let (a, b) = (self.byte(), self.byte());
        duration(a, b)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data.iter());
    let mut config = MachineConfig::default();
    config.lease_ttl = b.duration();
    config.peer_wait = b.duration();
    config.invalidate_interval = b.duration();
    config.fetch_timeout = b.duration();
    config.cache_timeout = b.duration();
    config.min_refresh_interval = b.duration();
    config.min_fetch_timeout = b.duration();
    config.backoff = Backoff::new(b.duration(), u32::from(b.byte()) * 1_000, b.duration())
        .with_permanent_interval(b.duration())
        .with_max_retry_after(b.duration())
        .with_expired_caps(b.duration(), b.duration());
    config.lifetime = LifetimePolicy::default()
        .with_fresh_fraction(fraction(b.byte()))
        .with_min_stale_window(b.duration())
        .with_default_lifetime(b.duration())
        .with_lifetime_bounds(b.duration(), b.duration());
    config.jitter = Jitter::new(fraction(b.byte())).max_early(b.duration());
    let flags = b.byte();
    config.cache = flags & 1 == 1;
    config.seed = u64::from(flags);
    if flags & 2 == 2 {
        config.refresh_token = Some(RefreshToken::new("rt"));
    }
    let retry_after = b.duration();
    let mut m = RefreshMachine::new(config);
    let mut now = Timestamp::from_secs(1_700_000_000);
    m.handle_input(Input::Start, now);
    for step in 0..200u32 {
        let op = b.byte();
        // Answer whatever the machine asked for; then let time pass.
        let mut outputs = Vec::new();
        loop {
            let output = m.poll_output();
            outputs.push(format!("{output:?}"));
            assert!(
                outputs.len() < 1_000,
                "an unbounded burst of outputs, ending {:#?}",
                &outputs[outputs.len() - 12..]
            );
            match output {
                Output::Action(Action::Fetch(request)) => {
                    let answer = match op % 6 {
                        0 => Err(FetchError::transient("503").with_status(503)),
                        1 => Err(FetchError::rate_limited("429")
                            .with_status(429)
                            .with_retry_after(Some(retry_after))),
                        2 => Err(FetchError::permanent("invalid_client")),
                        3 => Ok(TokenResponse::new(AccessToken::new(format!("t{step}")))
                            .with_expires_in(Some(i64::from(op as i8)))),
                        4 => Ok(TokenResponse::new(AccessToken::new(format!("t{step}")))
                            .with_expires_in(Some(i64::MAX))),
                        _ => Ok(TokenResponse::new(AccessToken::new(format!("t{step}")))
                            .with_expires_in(None)
                            .with_refresh_token(Some(RefreshToken::new(format!("r{step}"))))),
                    };
                    if op & 0x80 == 0 {
                        m.handle_input(Input::Fetched(request.id, answer), now);
                    }
                }
                Output::Action(Action::LoadCache { id, .. }) => {
                    m.handle_input(Input::CacheLoaded(id, Ok(None)), now)
                }
                Output::Action(Action::AcquireLease { id, .. }) => {
                    let outcome = match op % 3 {
                        0 => LeaseOutcome::Granted,
                        1 => LeaseOutcome::Busy,
                        _ => LeaseOutcome::Unsupported,
                    };
                    m.handle_input(Input::Lease(id, Ok(outcome)), now)
                }
                Output::Action(Action::Store { id, .. }) => {
                    m.handle_input(Input::Stored(id, Ok(())), now)
                }
                Output::Action(_) => {}
                Output::Timeout(at) => {
                    assert!(at > now, "a timeout not in the future: {at:?} at {now:?}");
                    // Jump to the deadline (bounded, so the run ends), or
                    // a little way towards it.
                    let gap = at.saturating_duration_since(now);
                    now = if op & 0x40 == 0 {
                        now + gap.min(Duration::from_secs(86_400 * 365))
                    } else {
                        now + gap.min(Duration::from_millis(u64::from(op) * 13))
                    };
                    break;
                }
            }
        }
        if m.is_stopped() {
            return;
        }
        match op % 16 {
            15 => m.handle_input(Input::Shutdown, now),
            14 => match m.current().map(|t| t.id()) {
                Some(id) => m.handle_input(Input::Invalidate(id), now),
                None => m.handle_input(Input::Tick, now),
            },
            _ => m.handle_input(Input::Tick, now),
        }
    }
});
