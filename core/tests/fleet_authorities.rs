//! Odd authorities (issue 10, items 4, 5 and 9): degenerate lifetimes
//! (`expires_in: 0` and its kin), requests that hang, and JWT expiries that
//! a one-second `Date` header must not move later.
//!
//! Ranges: 1 to 12 instances, with and without a shared cache and lease,
//! `expires_in` from -5 to 4 s against tokens that truly live an hour, 1 to
//! 400 ms latency; hangs of 5 to 120 s over 20 s to 10 min tokens.

use std::collections::HashMap;
use std::time::Duration;

use freshtoken_core::sim::{CacheMode, Fault, FaultKind, Observer, Scenario};
use freshtoken_core::*;
use proptest::prelude::*;

/// A publication: time, the token's expiry, whether the instance got the
/// token in an answer to its own fetch, whether the snapshot flags it.
type Publication = (Timestamp, Option<Timestamp>, bool, bool);
/// A fetch: time, the expiry of the token held then, deadline, attempt.
type FetchContext = (Timestamp, Option<Timestamp>, Duration, u32);

/// Each fetch per instance, and each publication: (time, token's expiry,
/// whether the snapshot says the lifetime was degenerate).
#[derive(Default)]
struct Timeline {
    fetches: HashMap<usize, Vec<Timestamp>>,
    published: HashMap<usize, Vec<Publication>>,
    all_fetches: Vec<Timestamp>,
    /// Per instance: each fetch's time, with the expiry of the token the
    /// instance held then (its last publication's), and the deadline given.
    fetch_context: HashMap<usize, Vec<FetchContext>>,
    /// Tokens each instance got in answers to its own fetches.
    answered: HashMap<usize, std::collections::HashSet<TokenId>>,
}

impl Observer for Timeline {
    fn input(&mut self, i: usize, _now: Timestamp, input: &Input) {
        if let Input::Fetched(_, Ok(answer)) = input {
            let id = answer.access_token.fingerprint();
            self.answered.entry(i).or_default().insert(id);
        }
    }

    fn output(&mut self, i: usize, now: Timestamp, output: &Output) {
        match output {
            Output::Action(Action::Fetch(request)) => {
                self.fetches.entry(i).or_default().push(now);
                self.all_fetches.push(now);
                let held = self
                    .published
                    .get(&i)
                    .and_then(|p| p.last())
                    .and_then(|(_, expiry, _, _)| *expiry);
                self.fetch_context.entry(i).or_default().push((
                    now,
                    held,
                    request.timeout,
                    request.attempt,
                ));
            }
            Output::Action(Action::Publish(s)) => {
                let expiry = s.token.as_ref().map(|t| t.expires_at());
                let own = s
                    .token
                    .as_ref()
                    .is_some_and(|t| self.answered.get(&i).is_some_and(|a| a.contains(&t.id())));
                let degenerate = degenerate_flag(s);
                self.published
                    .entry(i)
                    .or_default()
                    .push((now, expiry, own, degenerate));
            }
            _ => {}
        }
    }
}

fn degenerate_flag(s: &Snapshot) -> bool {
    s.degenerate.is_some()
}

/// The default configuration with lifetimes below `secs` clamped up to it
/// (so `expires_in` below it is degenerate).
fn with_min_lifetime(secs: u64) -> MachineConfig {
    let mut config = MachineConfig::default();
    config.lifetime = LifetimePolicy::default()
        .with_lifetime_bounds(Duration::from_secs(secs), Duration::from_secs(30 * 86_400));
    config
}

fn cache_mode(k: u8) -> CacheMode {
    match k % 3 {
        0 => CacheMode::None,
        1 => CacheMode::Shared,
        _ => CacheMode::SharedWithLease,
    }
}

/// An authority that says `expires_in: 0` for hour-long tokens: 8
/// instances with a shared cache and lease over 40 s. Before: every
/// instance polled at the clamped lifetime's half-life (95 requests in
/// 40 s measured with real processes, one instance alone).
#[test]
fn expires_in_zero_is_renewed_on_a_growing_floor() {
    for (n, mode) in [(1, CacheMode::None), (8, CacheMode::SharedWithLease)] {
        let s = Scenario::new(n)
            .advertised_expires_in(0)
            .cache(mode)
            .duration(Duration::from_secs(40));
        let mut t = Timeline::default();
        let r = s.run_observed(&mut t);
        println!(
            "{n} instance(s), {mode:?}: {} requests in 40 s, availability {:.4}",
            r.authority_requests, r.availability
        );
        // 5 s, then 10 s, 15 s, 15 s: at most 5 renewals per instance.
        assert!(r.authority_requests <= 5 * n as u64, "{r:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// However degenerate the authority's `expires_in` (zero, negative, or
    /// below a minimum lifetime of 1 to 9 s), no instance renews sooner than the floor (5 s by
    /// default, less a tenth of jitter on a token adopted from a peer)
    /// after its previous fetch, and the floor grows while answers stay
    /// degenerate: in 60 s an instance fetches at most 6 times.
    #[test]
    fn degenerate_lifetimes_never_undercut_the_refresh_floor(
        n in 1usize..12, min_s in 1u64..10, below in 1i64..=15, latency_ms in 1u64..400,
        mode in any::<u8>(), seed: u64,
    ) {
        let s = Scenario::new(n)
            .advertised_expires_in(min_s as i64 - below)
            .config(with_min_lifetime(min_s))
            .latency(Duration::from_millis(latency_ms))
            .cache(cache_mode(mode))
            .duration(Duration::from_secs(60))
            .seed(seed);
        let mut t = Timeline::default();
        s.run_observed(&mut t);
        let floor = MachineConfig::default().min_refresh_interval;
        for (i, fetches) in &t.fetches {
            for pair in fetches.windows(2) {
                let gap = pair[1].saturating_duration_since(pair[0]);
                prop_assert!(gap >= floor * 9 / 10,
                    "instance {} renewed {:?} after its previous fetch", i, gap);
            }
            prop_assert!(fetches.len() <= 6, "instance {} fetched {} times", i, fetches.len());
        }
    }

    /// A token from a degenerate answer is published with the clamp shown
    /// (`Snapshot::degenerate`) by the instance that got the answer (a peer
    /// that adopts it from the cache sees the floor's times only), and the policy's own clamped times never
    /// expire a published token: after its first token, an instance of a
    /// healthy (if degenerate) authority always holds a valid one.
    #[test]
    fn a_degenerate_token_is_flagged_and_never_expired_by_the_clamp(
        n in 1usize..12, min_s in 1u64..10, below in 1i64..=15, latency_ms in 1u64..400,
        mode in any::<u8>(), seed: u64,
    ) {
        let s = Scenario::new(n)
            .advertised_expires_in(min_s as i64 - below)
            .config(with_min_lifetime(min_s))
            .latency(Duration::from_millis(latency_ms))
            .cache(cache_mode(mode))
            .duration(Duration::from_secs(60))
            .seed(seed);
        let mut t = Timeline::default();
        let r = s.run_observed(&mut t);
        prop_assert!(r.availability > 0.95, "{:?}", r);
        for (i, published) in &t.published {
            let mut had_token = false;
            for (at, expiry, own, degenerate) in published {
                let Some(expiry) = expiry else { continue };
                prop_assert!(*degenerate || !own, "instance {} published a degenerate token unflagged", i);
                if had_token {
                    prop_assert!(expiry > at, "instance {} published an expired token at {:?}", i, at);
                }
                had_token = true;
            }
        }
    }
}

/// The issue's measurement: 20 s tokens, an authority that holds requests
/// for 25 s. Before: the 30 s fetch deadline outlasted the token, which
/// expired 11-12 s into the hung request. Now the deadline follows the
/// token's validity and the retry goes out before it expires.
#[test]
fn a_hung_request_is_retried_before_the_token_expires() {
    let s = Scenario::new(1)
        .lifetime(Duration::from_secs(20))
        .duration(Duration::from_secs(60))
        .fault(Fault::new(
            FaultKind::Hang {
                held: Duration::from_secs(25),
            },
            Duration::from_secs(5),
            Duration::from_secs(10),
        ));
    let mut t = Timeline::default();
    let r = s.run_observed(&mut t);
    let fetches = &t.fetch_context[&0];
    let start = s.start_time();
    for (at, held, timeout, _) in fetches {
        println!(
            "fetch at {:.1} s, token valid for {:?} more, deadline {:?}",
            at.saturating_duration_since(start).as_secs_f64(),
            held.map(|e| e.saturating_duration_since(*at)),
            timeout
        );
    }
    println!("{r:?}");
    let first_hung = fetches[1];
    let expiry = first_hung.1.expect("a token was held");
    assert!(
        fetches
            .iter()
            .any(|(at, _, _, _)| *at > first_hung.0 && *at < expiry),
        "no retry before the token expired"
    );
    assert!(r.longest_gap < Duration::from_secs(1), "{r:?}");
}

#[test]
fn refresh_token_fetches_keep_the_full_deadline() {
    let s = Scenario::new(1)
        .lifetime(Duration::from_secs(20))
        .refresh_tokens(Duration::ZERO)
        .duration(Duration::from_secs(60));
    let mut t = Timeline::default();
    s.run_observed(&mut t);
    let full = MachineConfig::default().fetch_timeout;
    assert!(t.fetch_context[&0].len() >= 3);
    assert!(t.fetch_context[&0].iter().all(|(_, _, d, _)| *d == full));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Client credentials through an authority that holds requests past
    /// any deadline: a first attempt (after a success) sent while the
    /// instance's token had at least 5 s of validity left is followed by a
    /// retry before that token expires (later attempts follow the backoff
    /// curve, which may be longer than what is left), and no fetch's deadline exceeds the token's remaining
    /// validity by more than the 2 s floor.
    #[test]
    fn a_hung_fetch_is_abandoned_and_retried_before_expiry(
        n in 1usize..6, lifetime_s in 20u64..600, from_pct in 30u64..200,
        len_s in 5u64..120, held_s in 31u64..200, latency_ms in 1u64..200, seed: u64,
    ) {
        let life = Duration::from_secs(lifetime_s);
        let from = life * from_pct as u32 / 100;
        let s = Scenario::new(n)
            .lifetime(life)
            .latency(Duration::from_millis(latency_ms))
            .duration(from + Duration::from_secs(len_s) + life)
            .seed(seed)
            .fault(Fault::new(
                FaultKind::Hang { held: Duration::from_secs(held_s) },
                from,
                Duration::from_secs(len_s),
            ));
        let mut t = Timeline::default();
        s.run_observed(&mut t);
        let (begin, end) = (s.start_time() + from, s.start_time() + from + Duration::from_secs(len_s));
        let floor = MachineConfig::default().min_fetch_timeout;
        for (i, fetches) in &t.fetch_context {
            for (k, (at, held, timeout, attempt)) in fetches.iter().enumerate() {
                let Some(expiry) = held else { continue };
                let left = expiry.saturating_duration_since(*at);
                prop_assert!(*timeout <= left.max(floor), "instance {}: deadline {:?} with {:?} left", i, timeout, left);
                if *at < begin || *at >= end || left < Duration::from_secs(5) || *attempt > 1 {
                    continue;
                }
                let retried = fetches[k + 1..].iter().any(|(next, _, _, _)| next < expiry);
                prop_assert!(retried, "instance {}: hung fetch at {:?} ({:?} left) not retried before expiry", i, at, left);
            }
        }
    }
}

/// A JWT with these claims (seconds, fractional allowed), unsigned.
fn jwt(iat: Option<f64>, exp: f64) -> String {
    use std::fmt::Write;
    let mut claims = String::from("{");
    if let Some(iat) = iat {
        let _ = write!(claims, "\"iat\":{iat},");
    }
    let _ = write!(claims, "\"exp\":{exp}}}");
    let b64 = |bytes: &[u8]| {
        // base64url without padding, by hand (the tests have no base64 dependency).
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims.as_bytes()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Item 9. The authority's clock is `skew_ms` off ours; it issues the
    /// token somewhere between our send and its answer, may backdate `iat`
    /// and truncates its `Date` header to the second. The expiry is never
    /// later than `sent + expires_in`, nor `sent + (exp - iat)`, nor (with a
    /// `Date` header and no `iat`) the true expiry in our clock, and with
    /// `iat` adding the `Date` header never moves it later than the same
    /// answer without one.
    #[test]
    fn a_jwt_expiry_never_overshoots(
        sent_ms in 1_000_000_000u64..2_000_000_000_000, latency_ms in 0u64..2_000,
        skew_ms in -300_000i64..300_000, stamp_pct in 0u64..=100,
        backdate_s in prop_oneof![Just(0u64), 0u64..600], fractional in any::<bool>(),
        life_ms in 4_000u64..7_200_000, with_iat in any::<bool>(),
        expires_in_cut_s in prop_oneof![Just(None), (0u64..3).prop_map(Some)],
        date in any::<bool>(),
    ) {
        let sent = Timestamp::from_millis(sent_ms);
        let received = Timestamp::from_millis(sent_ms + latency_ms);
        // The authority's clock at a moment of ours.
        let authority = |t: Timestamp| t.offset_millis(skew_ms);
        let stamp = sent + Duration::from_millis(latency_ms * stamp_pct / 100);
        let issued = authority(stamp);
        let life = Duration::from_millis(life_ms + latency_ms + 2_000);
        let exp = issued + life;
        let secs = |t: Timestamp| t.as_millis() as f64 / 1000.0;
        let (iat_claim, exp_claim) = if fractional {
            (secs(issued) - backdate_s as f64, secs(exp))
        } else {
            ((issued.as_secs() - backdate_s) as f64, exp.as_secs() as f64)
        };
        let token = jwt(with_iat.then_some(iat_claim), exp_claim);
        let expires_in = expires_in_cut_s.map(|cut| life.as_secs() as i64 - cut as i64);
        let answer = |with_date: bool| {
            let date = with_date.then(|| Timestamp::from_secs(issued.as_secs()));
            TokenResponse::new(AccessToken::new(token.clone()))
                .with_expires_in(expires_in)
                .with_server_date(date)
        };
        let policy = LifetimePolicy::default();
        let expiry = policy.resolve(answer(date), sent, received).token.expires_at();
        if let Some(e) = expires_in {
            prop_assert!(expiry <= sent + Duration::from_secs(e as u64), "past sent + expires_in");
        }
        if with_iat {
            // In whole milliseconds, as the claims are read.
            let ms = |claim: f64| (claim * 1000.0) as u64;
            let claimed = Duration::from_millis(ms(exp_claim) - ms(iat_claim));
            prop_assert!(expiry <= sent + claimed, "past sent + (exp - iat)");
        }
        // The truth, in our clock: `exp` less the skew.
        let true_expiry = Timestamp::from_millis((exp_claim * 1000.0) as u64).offset_millis(-skew_ms);
        if date && !with_iat {
            prop_assert!(expiry <= true_expiry, "{:?} past the true expiry {:?}", expiry, true_expiry);
        }
        if date && with_iat {
            let without = policy.resolve(answer(false), sent, received).token.expires_at();
            prop_assert!(expiry <= without, "the Date header moved {:?} to {:?}", without, expiry);
        }
    }
}
