//! The RefreshMachine fed arbitrary input sequences, in any order, with
//! arbitrary times (including jumps back), asserting its invariants: every
//! timeout in the future, a bounded number of outputs per input, at most one
//! request of each kind (load, lease, fetch, store, release) in flight,
//! whatever answers come late, nothing after Stop.
#![no_main]

use std::time::Duration;

use freshtoken_core::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let Some(flags) = next() else { return };
    let mut config = MachineConfig::default();
    config.cache = flags & 1 == 1;
    config.seed = u64::from(flags);
    if flags & 2 == 2 {
        config.refresh_token = Some(RefreshToken::new("rt"));
    }
    let mut m = RefreshMachine::new(config);
    let mut now = Timestamp::from_secs(1_700_000_000);
    let mut mono = MonoTime::from_millis(0);
    let (fetch_timeout, cache_timeout) = (m.config().fetch_timeout, m.config().cache_timeout);
    // Each kind's request in flight (load, lease, fetch, store, release):
    // its id and deadline (on the monotonic clock).
    let mut flying: [Option<(RequestId, MonoTime)>; 5] = [None; 5];
    // Whether the lease call in `flying[1]` is a lease request (not an
    // extension).
    let mut lease_request = false;
    // Whether a fetch answer with a refresh token was fed since the last
    // read (0) or lease call (1) was sent.
    let mut rotated_since = [false; 2];
    let lease_ttl = m.config().lease_ttl;
    let mut stopped = false;
    // The last id of each kind of request, and an older one, to answer with.
    let mut ids: [Option<RequestId>; 5] = [None; 5];
    let mut old: Option<RequestId> = None;
    let mut n = 0u64;
    while let (Some(op), Some(arg)) = (next(), next()) {
        n += 1;
        // Time: mostly small steps, sometimes large ones, sometimes back.
        let (wall, step) = match op >> 5 {
            0..=4 => (
                now + Duration::from_millis(u64::from(arg) * 37),
                Duration::from_millis(u64::from(arg) * 37),
            ),
            5 | 6 => (
                now + Duration::from_secs(u64::from(arg) * 97),
                Duration::from_secs(u64::from(arg) * 97),
            ),
            _ => (now - Duration::from_secs(u64::from(arg)), Duration::ZERO),
        };
        now = wall;
        mono = mono + step;
        let id = |k: usize| {
            ids[k].or(old).unwrap_or_else(|| {
                ids.iter()
                    .flatten()
                    .next()
                    .copied()
                    .unwrap_or(RequestId::default())
            })
        };
        let input = match op & 0x1f {
            0 => Input::Start,
            1..=6 => Input::Tick,
            7 => Input::CacheLoaded(id(0), Ok(None)),
            8 => {
                let issued = now - Duration::from_secs(u64::from(arg) * 20);
                let life = Duration::from_secs(u64::from(arg % 64) * 60 + 1);
                let (stale, exp) = LifetimePolicy::default().times(issued, life);
                Input::CacheLoaded(
                    id(0),
                    Ok(Some(std::sync::Arc::new(
                        Token::new(AccessToken::new(format!("c{n}")), issued, stale, exp)
                            .with_refresh_token(Some(RefreshToken::new(format!("rt{n}")))),
                    ))),
                )
            }
            9 => Input::CacheLoaded(id(0), Err(CacheError::new(CacheErrorKind::Corrupt, "x"))),
            10..=12 => Input::Fetched(
                id(2),
                Ok(TokenResponse::new(AccessToken::new(format!("f{n}")))
                    .with_expires_in(Some(i64::from(arg as i8) * 60))
                    .with_refresh_token(
                        (arg & 1 == 1).then(|| RefreshToken::new(format!("r{n}"))),
                    )),
            ),
            13..=15 => {
                let kind = [
                    FetchErrorKind::Transient,
                    FetchErrorKind::RateLimited,
                    FetchErrorKind::Permanent,
                    FetchErrorKind::GrantRevoked,
                ][usize::from(arg & 3)];
                Input::Fetched(
                    id(2),
                    Err(FetchError::new(kind, "e").with_retry_after(
                        (arg & 4 == 4).then(|| Duration::from_secs(u64::from(arg))),
                    )),
                )
            }
            16 | 17 => Input::Stored(
                id(3),
                if arg & 1 == 0 {
                    Ok(())
                } else {
                    Err(CacheError::new(CacheErrorKind::Io, "x"))
                },
            ),
            18..=20 => Input::Lease(
                id(1),
                match arg & 3 {
                    0 => Ok(LeaseOutcome::Granted),
                    1 => Ok(LeaseOutcome::Busy),
                    2 => Ok(LeaseOutcome::Unsupported),
                    _ => Err(CacheError::new(CacheErrorKind::Unavailable, "x")),
                },
            ),
            21 | 22 => match m.current() {
                Some(t) => Input::Invalidate(t.id()),
                None => Input::Tick,
            },
            23 => Input::Invalidate(TokenId::of(&[arg])),
            26 => Input::Released(
                id(4),
                if arg & 1 == 0 {
                    Ok(())
                } else {
                    Err(CacheError::new(CacheErrorKind::Unavailable, "x"))
                },
            ),
            25 => Input::Fetched(
                old.unwrap_or_default(),
                Ok(TokenResponse::new(AccessToken::new(format!("l{n}")))
                    .with_expires_in(Some(600))
                    .with_refresh_token(Some(RefreshToken::new(format!("rl{n}"))))),
            ),
            24 => Input::Shutdown,
            27 => Input::NeedValidity(Duration::from_secs(u64::from(arg) * 30)),
            _ => Input::Tick,
        };
        // A rotation fed now concerns the requests sent before it, and also
        // one sent while this input is handled: the machine acts on the
        // timers due before the input, so a read may go out just before
        // the rotation is learned (marked again once the outputs are taken).
        let rotating = matches!(&input, Input::Fetched(_, Ok(r)) if r.refresh_token.is_some());
        if rotating {
            rotated_since = [true; 2];
        }
        if let Some(i) = input.request_id() {
            for slot in flying.iter_mut() {
                if slot.is_some_and(|(r, _)| r == i) {
                    *slot = None;
                }
            }
        }
        for slot in flying.iter_mut() {
            if slot.is_some_and(|(_, d)| mono >= d) {
                *slot = None;
            }
        }
        m.handle_input(input, Now::new(now, mono));
        let mut outputs = 0;
        loop {
            outputs += 1;
            assert!(outputs <= 16, "unbounded outputs");
            match m.poll_output() {
                Output::Timeout(at) => {
                    assert!(at > now, "timeout not in the future");
                    if rotating {
                        rotated_since = [true; 2];
                    }
                    break;
                }
                Output::Action(a) => {
                    assert!(!stopped, "action after Stop");
                    // Each request's own deadline: the fetch's is shorter
                    // than the fetch timeout for client credentials near
                    // expiry, a cache call's shorter than the cache timeout
                    // while a rotated refresh token is not durable.
                    let flight = match &a {
                        Action::LoadCache { .. } => Some((0, cache_timeout)),
                        Action::AcquireLease { timeout, .. } => Some((1, *timeout)),
                        Action::Fetch(r) => Some((2, r.timeout)),
                        Action::Store { timeout, .. } => Some((3, *timeout)),
                        Action::ReleaseLease { timeout, .. } => Some((4, *timeout)),
                        _ => None,
                    };
                    // A read or lease request sent before a fetch answer
                    // rotated the refresh token may be given up on early, so
                    // the rotated token is stored while the lease holds: a
                    // new one of its kind replaces it.
                    if let Some((k @ (0 | 1), _)) = flight {
                        if rotated_since[k] && (k == 0 || lease_request) {
                            flying[k] = None;
                        }
                        // Within the rotating input, a request sent before
                        // the rotation was learned may be given up on too.
                        if !rotating {
                            rotated_since[k] = false;
                        }
                    }
                    // A lease request asks for the lease TTL; an extension
                    // for more (the wait it covers as well).
                    if let Action::AcquireLease { ttl, .. } = &a {
                        lease_request = *ttl == lease_ttl;
                    }
                    if let (Some((k, timeout)), Some(i)) = (flight, a.request_id()) {
                        let limit = if k == 2 { fetch_timeout } else { cache_timeout };
                        assert!(timeout <= limit, "a deadline past its timeout: {a:?}");
                        assert!(flying[k].is_none(), "two of a kind in flight: {a:?}");
                        flying[k] = Some((i, mono + timeout));
                        old = ids[k].replace(i).or(old);
                    }
                    match a {
                        Action::Publish(s) => {
                            if let Some(t) = &s.token {
                                assert!(
                                    t.issued_at() <= t.stale_at() && t.stale_at() <= t.expires_at()
                                );
                            }
                        }
                        Action::Stop => stopped = true,
                        _ => {}
                    }
                }
            }
        }
    }
});
