//! The RefreshMachine's invariants (see DESIGN.md), each a property test.
//!
//! Two kinds of input drive them:
//! * arbitrary input sequences, in any order, with nonsense mixed in, for
//!   the rules that must hold whatever a driver does;
//! * random fleet scenarios run by the simulator (random lifetimes,
//!   latencies, fleet sizes, caches and fault schedules), for the rules
//!   about behaviour against an authority.

use std::collections::HashMap;
use std::time::Duration;

use freshtoken_core::sim::{CacheMode, Fault, FaultKind, Observer, Report, Scenario};
use freshtoken_core::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Arbitrary input sequences

#[derive(Debug, Clone)]
enum Step {
    Start,
    Tick,
    CacheLoaded(Option<(u64, u64, u64)>),
    CacheFailed,
    Fetched(i64),
    FetchFailed(u8, Option<u64>),
    Stored(bool),
    Lease(u8),
    /// The answer to the last release: given back, or the cache failed.
    Released(bool),
    /// An answer to a request the machine may have given up on.
    Stale,
    InvalidateCurrent,
    InvalidateOther(u64),
    /// A reader needs a token valid this many seconds more.
    NeedValidity(u64),
    Shutdown,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Start),
        6 => Just(Step::Tick),
        2 => proptest::option::of((0u64..5_000, 1u64..4_000, 0u64..100)).prop_map(Step::CacheLoaded),
        1 => Just(Step::CacheFailed),
        3 => (-5i64..7_200).prop_map(Step::Fetched),
        3 => (0u8..4, proptest::option::of(0u64..600)).prop_map(|(k, r)| Step::FetchFailed(k, r)),
        2 => any::<bool>().prop_map(Step::Stored),
        2 => (0u8..4).prop_map(Step::Lease),
        1 => any::<bool>().prop_map(Step::Released),
        1 => Just(Step::Stale),
        1 => Just(Step::InvalidateCurrent),
        1 => any::<u64>().prop_map(Step::InvalidateOther),
        1 => (0u64..8_000).prop_map(Step::NeedValidity),
        1 => Just(Step::Shutdown),
    ]
}

/// A sequence of (milliseconds to advance, step). Time mostly moves
/// forward, sometimes jumps far ahead, and sometimes goes back.
fn sequence() -> impl Strategy<Value = Vec<(i64, Step)>> {
    let dt = prop_oneof![
        8 => 0i64..2_000,
        2 => 0i64..4_000_000,
        1 => -60_000i64..0,
    ];
    proptest::collection::vec((dt, step()), 1..120)
}

fn config(cache: bool, seed: u64) -> MachineConfig {
    let mut c = MachineConfig::default();
    c.cache = cache;
    c.seed = seed;
    c.refresh_token = Some(RefreshToken::new("rt-configured"));
    c
}

const T0: u64 = 1_700_000_000_000;

/// Feeds steps to a machine, answering with the ids of the requests it
/// sent, on a wall clock that may step back and a monotonic one that never does.
struct Feeder {
    m: RefreshMachine,
    now: Now,
    /// The last request of each kind: load, lease, fetch, store, release.
    ids: [Option<RequestId>; 5],
    /// An id the machine used some time ago (for stale answers).
    old: Option<RequestId>,
}

impl Feeder {
    fn new(config: MachineConfig) -> Self {
        Feeder {
            m: RefreshMachine::new(config),
            now: Now::new(Timestamp::from_millis(T0), MonoTime::from_millis(T0)),
            ids: [None; 5],
            old: None,
        }
    }

    fn advance(&mut self, dt: i64) {
        let mono = if dt > 0 {
            self.now.mono + Duration::from_millis(dt as u64)
        } else {
            self.now.mono
        };
        self.now = Now::new(self.now.wall.offset_millis(dt), mono);
    }

    fn id(&self, kind: usize) -> RequestId {
        self.ids[kind].or(self.old).unwrap_or_else(|| {
            // Nothing asked yet: any id is as good as another.
            self.ids
                .iter()
                .flatten()
                .next()
                .copied()
                .unwrap_or(first_id())
        })
    }

    fn input(&self, step: &Step) -> Input {
        let now = self.now.wall;
        match step {
            Step::Start => Input::Start,
            Step::Tick => Input::Tick,
            Step::CacheLoaded(None) => Input::CacheLoaded(self.id(0), Ok(None)),
            Step::CacheLoaded(Some((age, life, n))) => {
                let issued = now - Duration::from_secs(*age);
                let (stale, exp) =
                    LifetimePolicy::default().times(issued, Duration::from_secs(*life));
                let t = Token::new(AccessToken::new(format!("cached-{n}")), issued, stale, exp)
                    .with_refresh_token(Some(RefreshToken::new(format!("rt-{n}"))))
                    .with_generation(n % 7);
                Input::CacheLoaded(self.id(0), Ok(Some(std::sync::Arc::new(t))))
            }
            Step::CacheFailed => Input::CacheLoaded(
                self.id(0),
                Err(CacheError::new(CacheErrorKind::Unavailable, "down")),
            ),
            Step::Fetched(life) => Input::Fetched(
                self.id(2),
                Ok(
                    TokenResponse::new(AccessToken::new(format!("fetched-{}", now.as_millis())))
                        .with_expires_in(Some(*life))
                        .with_refresh_token(Some(RefreshToken::new(format!(
                            "rt-f{}",
                            now.as_millis()
                        )))),
                ),
            ),
            Step::FetchFailed(kind, retry_after) => {
                let kind = [
                    FetchErrorKind::Transient,
                    FetchErrorKind::RateLimited,
                    FetchErrorKind::Permanent,
                    FetchErrorKind::GrantRevoked,
                ][*kind as usize];
                Input::Fetched(
                    self.id(2),
                    Err(FetchError::new(kind, "boom")
                        .with_retry_after(retry_after.map(Duration::from_secs))),
                )
            }
            Step::Stored(true) => Input::Stored(self.id(3), Ok(())),
            Step::Stored(false) => {
                Input::Stored(self.id(3), Err(CacheError::new(CacheErrorKind::Io, "full")))
            }
            Step::Released(true) => Input::Released(self.id(4), Ok(())),
            Step::Released(false) => Input::Released(
                self.id(4),
                Err(CacheError::new(CacheErrorKind::Unavailable, "down")),
            ),
            Step::Lease(0) => Input::Lease(self.id(1), Ok(LeaseOutcome::Granted)),
            Step::Lease(1) => Input::Lease(self.id(1), Ok(LeaseOutcome::Busy)),
            Step::Lease(2) => Input::Lease(self.id(1), Ok(LeaseOutcome::Unsupported)),
            Step::Lease(_) => Input::Lease(
                self.id(1),
                Err(CacheError::new(CacheErrorKind::Unavailable, "down")),
            ),
            Step::Stale => Input::Fetched(
                self.old.unwrap_or(first_id()),
                Ok(
                    TokenResponse::new(AccessToken::new(format!("late-{}", now.as_millis())))
                        .with_expires_in(Some(600))
                        .with_refresh_token(Some(RefreshToken::new(format!(
                            "rt-l{}",
                            now.as_millis()
                        )))),
                ),
            ),
            Step::InvalidateCurrent => match self.m.current() {
                Some(t) => Input::Invalidate(t.id()),
                None => Input::Tick,
            },
            Step::InvalidateOther(n) => Input::Invalidate(TokenId::of(&n.to_le_bytes())),
            Step::NeedValidity(s) => Input::NeedValidity(Duration::from_secs(*s)),
            Step::Shutdown => Input::Shutdown,
        }
    }

    /// Feeds `step` after `dt` ms; returns the input's `now` and the outputs.
    fn step(&mut self, dt: i64, step: &Step) -> (Timestamp, Vec<Output>) {
        self.advance(dt);
        let input = self.input(step);
        self.m.handle_input(input, self.now);
        let mut outs = Vec::new();
        loop {
            let o = self.m.poll_output();
            if let Output::Action(a) = &o {
                let kind = match a {
                    Action::LoadCache { .. } => Some(0),
                    Action::AcquireLease { .. } => Some(1),
                    Action::Fetch(_) => Some(2),
                    Action::Store { .. } => Some(3),
                    Action::ReleaseLease { .. } => Some(4),
                    _ => None,
                };
                if let (Some(k), Some(id)) = (kind, a.request_id()) {
                    if let Some(prev) = self.ids[k].replace(id) {
                        self.old = Some(prev);
                    }
                }
            }
            let done = matches!(o, Output::Timeout(_));
            outs.push(o);
            // Bounded outputs per input: a busy loop would trip this.
            assert!(outs.len() <= 16, "unbounded outputs: {outs:?}");
            if done {
                break;
            }
        }
        (self.now.wall, outs)
    }
}

/// The id of the first request a machine sends (for answers to nothing).
fn first_id() -> RequestId {
    let mut m = RefreshMachine::new(MachineConfig::default());
    m.handle_input(Input::Start, Timestamp::EPOCH);
    match m.poll_output() {
        Output::Action(a) => a.request_id().expect("a request"),
        Output::Timeout(_) => unreachable!(),
    }
}

/// Runs a sequence, returning every (now, outputs) per input.
fn drive(cache: bool, seed: u64, seq: &[(i64, Step)]) -> Vec<(Timestamp, Vec<Output>)> {
    let mut f = Feeder::new(config(cache, seed));
    seq.iter().map(|(dt, step)| f.step(*dt, step)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn deterministic_same_seed_same_outputs(cache: bool, seed: u64, seq in sequence()) {
        prop_assert_eq!(drive(cache, seed, &seq), drive(cache, seed, &seq));
    }

    #[test]
    fn at_most_one_request_of_each_kind_in_flight_and_nothing_after_stop(cache: bool, seed: u64, seq in sequence()) {
        let config = config(cache, seed);
        let (fetch_timeout, cache_timeout) = (config.fetch_timeout, config.cache_timeout);
        let mut f = Feeder::new(config);
        // The flight of each kind (load, lease, fetch, store, release): the
        // request's id and its deadline. An answer with that id ends it, and
        // so does its deadline passing (the machine gives up on it); what
        // matters is that the machine never asks twice while a request of
        // the kind is still out, whatever answers come late (a late answer
        // that rotated the refresh token included: its store waits). A read
        // or lease request sent before such an answer may be given up on
        // early, so that the store goes out while the lease holds (the
        // drivers take a new request of its kind as replacing it), as in
        // the `machine` fuzz target; a lease extension never is.
        let mut flying: [Option<(RequestId, MonoTime)>; 5] = [None; 5];
        let mut rotated_since = [false; 2];
        let mut lease_request = false;
        let lease_ttl = f.m.config().lease_ttl;
        let mut stopped = false;
        for (dt, step) in &seq {
            f.advance(*dt);
            let input = f.input(step);
            // A rotation fed now concerns the requests sent before it, and
            // also one sent while this input is handled (the timers due are
            // handled before the input): marked again once its outputs are
            // taken.
            let rotating =
                matches!(&input, Input::Fetched(_, Ok(r)) if r.refresh_token.is_some());
            if rotating {
                rotated_since = [true; 2];
            }
            if let Some(id) = input.request_id() {
                for slot in flying.iter_mut() {
                    if slot.is_some_and(|(r, _)| r == id) {
                        *slot = None;
                    }
                }
            }
            let mono = f.now.mono;
            for slot in flying.iter_mut() {
                if slot.is_some_and(|(_, d)| mono >= d) {
                    *slot = None;
                }
            }
            f.m.handle_input(input, f.now);
            while let Output::Action(a) = f.m.poll_output() {
                prop_assert!(!stopped, "action after Stop: {:?}", a);
                let (kind, timeout) = match &a {
                    Action::LoadCache { .. } => (0, cache_timeout),
                    Action::AcquireLease { timeout, .. } => {
                        prop_assert!(*timeout <= cache_timeout);
                        (1, *timeout)
                    }
                    Action::Fetch(r) => {
                        prop_assert!(r.timeout <= fetch_timeout);
                        (2, r.timeout)
                    }
                    Action::Store { timeout, .. } => {
                        prop_assert!(*timeout <= cache_timeout);
                        (3, *timeout)
                    }
                    Action::ReleaseLease { timeout, .. } => (4, *timeout),
                    Action::Stop => {
                        stopped = true;
                        continue;
                    }
                    Action::Publish(_) => continue,
                };
                let id = a.request_id().expect("a request");
                if kind < 2 {
                    if rotated_since[kind] && (kind == 0 || lease_request) {
                        flying[kind] = None;
                    }
                    // Within the rotating input, a request sent before the
                    // rotation was learned may be given up on too.
                    if !rotating {
                        rotated_since[kind] = false;
                    }
                }
                if let Action::AcquireLease { ttl, .. } = &a {
                    lease_request = *ttl == lease_ttl;
                }
                prop_assert!(flying[kind].is_none(), "a second request of a kind in flight: {:?} beside {:?}", a, flying[kind]);
                flying[kind] = Some((id, mono + timeout));
                f.ids[kind] = Some(id);
            }
            if rotating {
                rotated_since = [true; 2];
            }
        }
    }

    #[test]
    fn every_timeout_is_in_the_future_and_outputs_are_bounded(cache: bool, seed: u64, seq in sequence()) {
        for (now, outs) in drive(cache, seed, &seq) {
            // `drive` already bounds the outputs per input.
            match outs.last() {
                Some(Output::Timeout(at)) => prop_assert!(*at > now, "timeout {:?} not after {:?}", at, now),
                other => prop_assert!(false, "no timeout last: {:?}", other),
            }
        }
    }

    #[test]
    fn arbitrary_inputs_never_panic_and_nonsense_is_counted(seed: u64, seq in sequence()) {
        let mut f = Feeder::new(config(true, seed));
        let id = first_id();
        // Results nobody asked for, before anything was asked.
        f.m.handle_input(Input::Stored(id, Ok(())), f.now);
        f.m.handle_input(Input::Fetched(id, Err(FetchError::transient("late"))), f.now);
        prop_assert_eq!(f.m.stats().ignored_inputs, 2);
        prop_assert!(matches!(f.m.poll_output(), Output::Timeout(_)));
        for (dt, step) in &seq {
            f.step(*dt, step);
        }
        // Shut down, and let any drain run out its deadlines (an answer,
        // its store, the release of the lease).
        f.step(0, &Step::Shutdown);
        for _ in 0..4 {
            f.step(i64::from(u32::MAX), &Step::Tick);
        }
        prop_assert!(f.m.is_stopped());
        let before = f.m.stats().ignored_inputs;
        f.m.handle_input(Input::Fetched(id, Err(FetchError::transient("after stop"))), f.now);
        prop_assert_eq!(f.m.stats().ignored_inputs, before + 1);
    }
}

// ---------------------------------------------------------------------------
// Random fleets in the simulator

/// Records every rule violation it sees, per instance.
#[derive(Default)]
struct Checker {
    backoff: Backoff,
    /// Expiry of each instance's last published token.
    last_expiry: HashMap<usize, Timestamp>,
    last_published: HashMap<usize, TokenId>,
    /// Send time of each instance's fetches.
    fetch_times: HashMap<usize, Vec<Timestamp>>,
    /// Each instance's published snapshots, in order.
    snapshots: HashMap<usize, Vec<Snapshot>>,
    /// Whether the input being handled is a failed fetch.
    after_failure: bool,
    /// Each instance's last retry time published (a delay drawn once is
    /// checked once: later snapshots, at expiry say, repeat it).
    last_retry: HashMap<usize, Timestamp>,
    /// Inputs at which an instance that had a token had none valid.
    uncovered: Vec<(usize, Timestamp)>,
    violations: Vec<String>,
}

impl Checker {
    fn new(config: &MachineConfig) -> Self {
        Checker {
            backoff: config.backoff.clone(),
            ..Checker::default()
        }
    }
}

impl Observer for Checker {
    fn input(&mut self, i: usize, now: Timestamp, input: &Input) {
        self.after_failure = matches!(input, Input::Fetched(_, Err(_)));
        if let Some(exp) = self.last_expiry.get(&i) {
            if now >= *exp {
                self.uncovered.push((i, now));
            }
        }
    }

    fn output(&mut self, i: usize, now: Timestamp, output: &Output) {
        match output {
            Output::Action(Action::Fetch(_)) => self.fetch_times.entry(i).or_default().push(now),
            Output::Action(Action::Publish(s)) => {
                if let Some(t) = &s.token {
                    if self.last_published.get(&i) != Some(&t.id()) {
                        if !t.is_valid_at(now) {
                            self.violations
                                .push(format!("{i}: published an expired token at {now:?}"));
                        }
                        if let Some(prev) = self.last_expiry.get(&i) {
                            if t.expires_at() < *prev {
                                self.violations
                                    .push(format!("{i}: token went backwards at {now:?}"));
                            }
                        }
                        self.last_published.insert(i, t.id());
                        self.last_expiry.insert(i, t.expires_at());
                    }
                }
                // The snapshot published for a failed fetch carries the
                // delay just drawn (later ones, e.g. at expiry, repeat it;
                // an expiry due at the failure's instant is published
                // before the failure is handled).
                let drawn = match &s.state {
                    RefreshState::Retrying { next_attempt, .. } => {
                        self.last_retry.insert(i, *next_attempt) != Some(*next_attempt)
                    }
                    _ => false,
                };
                if let (
                    true,
                    true,
                    RefreshState::Retrying {
                        error,
                        attempt,
                        next_attempt,
                    },
                ) = (self.after_failure, drawn, &s.state)
                {
                    // While the token has expired (or before the first),
                    // retries follow the short cap, and Retry-After is
                    // obeyed up to its bound past expiry.
                    let expired = s.token.as_ref().is_none_or(|t| !t.is_valid_at(now));
                    let (lo, hi) = self.backoff.bounds_for(error, *attempt, expired);
                    let delay = next_attempt.saturating_duration_since(now);
                    // Or, drawn while valid, cut to the expiry plus a wait
                    // drawn as if expired.
                    let until_expiry = s.token.as_ref().map_or(Duration::ZERO, |t| {
                        t.expires_at().saturating_duration_since(now)
                    });
                    let (lo_e, hi_e) = self.backoff.bounds_for(error, *attempt, true);
                    let cut =
                        !expired && delay >= until_expiry + lo_e && delay <= until_expiry + hi_e;
                    if (delay < lo || delay > hi) && !cut {
                        self.violations.push(format!(
                            "{i}: retry delay {delay:?} outside {lo:?}..={hi:?}"
                        ));
                    }
                    let ra_bound = if expired {
                        Duration::from_secs(30)
                    } else {
                        Duration::from_secs(3600)
                    };
                    if let Some(ra) = error.retry_after().map(|ra| ra.min(ra_bound)) {
                        let past_expiry = until_expiry + ra.min(Duration::from_secs(30));
                        if delay < ra && delay < past_expiry {
                            self.violations.push(format!(
                                "{i}: retry {delay:?} sooner than Retry-After {ra:?}"
                            ));
                        }
                    }
                }
                self.snapshots.entry(i).or_default().push((**s).clone());
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
struct Fleet {
    instances: usize,
    lifetime_s: u64,
    latency_ms: u64,
    cache: CacheMode,
    jitter: f64,
    seed: u64,
}

fn fleet() -> impl Strategy<Value = Fleet> {
    (
        1usize..12,
        prop_oneof![2u64..60, 60u64..3_600],
        1u64..400,
        prop_oneof![
            Just(CacheMode::None),
            Just(CacheMode::Shared),
            Just(CacheMode::SharedWithLease)
        ],
        0.0f64..0.5,
        any::<u64>(),
    )
        .prop_map(
            |(instances, lifetime_s, latency_ms, cache, jitter, seed)| Fleet {
                instances,
                lifetime_s,
                // Keep the latency well inside the token's life.
                latency_ms: latency_ms.min(lifetime_s * 100),
                cache,
                jitter,
                seed,
            },
        )
}

impl Fleet {
    fn scenario(&self) -> Scenario {
        let mut config = MachineConfig::default();
        config.jitter = Jitter::new(self.jitter);
        Scenario::new(self.instances)
            .lifetime(Duration::from_secs(self.lifetime_s))
            .latency(Duration::from_millis(self.latency_ms))
            .duration(Duration::from_secs(self.lifetime_s * 6))
            .cache(self.cache)
            .config(config)
            .seed(self.seed)
    }

    fn fresh_period(&self) -> Duration {
        let life = Duration::from_secs(self.lifetime_s);
        life - LifetimePolicy::default().stale_window(life)
    }
}

fn run(scenario: &Scenario) -> (Report, Checker) {
    let mut checker = Checker::new(scenario.machine_config());
    let report = scenario.run_observed(&mut checker);
    (report, checker)
}

/// Faults of every kind at random times within the first 4 lifetimes.
fn faults(lifetime_s: u64) -> impl Strategy<Value = Vec<Fault>> {
    let kind = prop_oneof![
        Just(FaultKind::Outage),
        (1u64..120).prop_map(|s| FaultKind::RateLimited {
            retry_after: Duration::from_secs(s)
        }),
        Just(FaultKind::Permanent),
    ];
    proptest::collection::vec(
        (kind, 0..lifetime_s * 4_000, 1..lifetime_s * 2_000).prop_map(|(k, from, len)| {
            Fault::new(k, Duration::from_millis(from), Duration::from_millis(len))
        }),
        0..3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn published_tokens_never_go_backwards_and_none_is_expired(f in fleet(), fs in faults(60), slow in 0u64..3) {
        // Sometimes answers take longer than the token lives.
        let latency = Duration::from_millis(f.latency_ms) * if slow == 0 { 1 } else { 2_000 * slow as u32 };
        let mut s = f.scenario().latency(latency);
        for fault in fs { s = s.fault(fault); }
        let (_, c) = run(&s);
        prop_assert!(c.violations.iter().all(|v| !v.contains("backwards") && !v.contains("expired")), "{:?}", c.violations);
    }

    #[test]
    fn healthy_authority_sees_at_most_one_fetch_per_half_fresh_period(f in fleet()) {
        let (_, c) = run(&f.scenario());
        let half = f.fresh_period() / 2;
        for (i, times) in &c.fetch_times {
            for w in times.windows(2) {
                prop_assert!(w[1].saturating_duration_since(w[0]) >= half,
                    "instance {} fetched at {:?} and {:?} (half fresh period {:?})", i, w[0], w[1], half);
            }
        }
    }

    #[test]
    fn retry_delays_lie_within_backoff_bounds_and_respect_retry_after(f in fleet(), fs in faults(60)) {
        let mut s = f.scenario();
        for fault in fs { s = s.fault(fault); }
        let (_, c) = run(&s);
        prop_assert!(c.violations.iter().all(|v| !v.contains("retry")), "{:?}", c.violations);
    }

    #[test]
    fn after_recovery_a_fresh_token_is_published_within_the_backoff_cap(
        f in fleet(), from_pct in 0u64..300, len_pct in 1u64..200,
    ) {
        let life = Duration::from_secs(f.lifetime_s);
        let from = life * from_pct as u32 / 100;
        let len = life * len_pct as u32 / 100;
        let cap = Backoff::default().max();
        // Run long enough for every instance to have healed.
        let duration = (life * 6).max(from + len + cap * 2 + Duration::from_secs(5));
        let s = f.scenario().duration(duration).fault(Fault::new(FaultKind::Outage, from, len));
        let start = s.start_time();
        let recovered = start + from + len;
        let peer_wait = s.machine_config().peer_wait;
        // Retry after at most the cap, then at worst wait for a peer's
        // answer (one more peer wait) and fetch: a few latencies.
        let deadline = recovered + cap + peer_wait * 2 + Duration::from_millis(f.latency_ms * 2 + 10);
        let (_, c) = run(&s);
        for (i, snaps) in &c.snapshots {
            let retrying_at_recovery = snaps
                .iter()
                .take_while(|s| s.published_at < recovered)
                .last()
                .is_some_and(|s| matches!(s.state, RefreshState::Retrying { .. }));
            if !retrying_at_recovery {
                continue;
            }
            let healed = snaps.iter().find(|s| s.published_at >= recovered && s.state == RefreshState::Healthy);
            match healed {
                Some(h) => prop_assert!(h.published_at <= deadline,
                    "instance {} healed at {:?}, after {:?}", i, h.published_at, deadline),
                None => prop_assert!(false, "instance {} never healed", i),
            }
        }
    }

    #[test]
    fn outages_shorter_than_the_stale_window_minus_the_cap_are_invisible(
        f in fleet(), from_pct in 0u64..400, len_frac in 0.0f64..1.0,
    ) {
        let life = Duration::from_secs(f.lifetime_s.max(300));
        let f = Fleet { lifetime_s: life.as_secs(), ..f };
        let s = f.scenario();
        let window = LifetimePolicy::default().stale_window(life);
        let cap = s.machine_config().backoff.max();
        let slack = Duration::from_millis(f.latency_ms * 2) + s.machine_config().peer_wait * 2;
        let max_len = window.saturating_sub(cap + slack);
        let len = max_len.mul_f64(len_frac).max(Duration::from_millis(1));
        let from = life * from_pct as u32 / 100;
        let (_, c) = run(&s.fault(Fault::new(FaultKind::Outage, from, len)));
        prop_assert!(c.uncovered.is_empty(), "consumers saw no valid token: {:?} (outage {:?} at {:?})", &c.uncovered[..c.uncovered.len().min(3)], len, from);
    }

    #[test]
    fn a_fleet_sharing_a_cache_with_a_lease_makes_one_request_per_refresh_period(
        n in 2usize..200, lifetime_s in 10u64..7_200, jitter in 0.0f64..0.5, seed: u64,
    ) {
        let mut config = MachineConfig::default();
        config.jitter = Jitter::new(jitter);
        let s = Scenario::new(n)
            .lifetime(Duration::from_secs(lifetime_s))
            .duration(Duration::from_secs(lifetime_s * 8))
            .start_spread(Duration::from_secs(lifetime_s / 10))
            .cache(CacheMode::SharedWithLease)
            .config(config)
            .seed(seed);
        let r = s.run();
        let periods = (r.duration.as_secs_f64() / r.refresh_period.as_secs_f64()).floor() as u64;
        // One for the cold start, then at most one per refresh period.
        prop_assert!(r.authority_requests <= periods + 1, "{} requests for {} periods with {} instances", r.authority_requests, periods, n);
        prop_assert_eq!(r.failed_requests, 0);
    }
}
