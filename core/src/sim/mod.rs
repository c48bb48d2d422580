//! A deterministic fleet simulator: N refresh machines, one simulated
//! authority, one simulated shared cache, in virtual time.
//!
//! It answers questions like "what will 5,000 serverless instances with my
//! settings do to my authority during a 10-minute outage?" in a fraction of
//! a second, and it is the engine of this crate's property tests: an
//! [`Observer`] sees every input and output of every machine.
//!
//! Everything is discrete events on one virtual clock; there are no threads
//! and no real time, so the same [`Scenario`] always gives the same
//! [`Report`].
//!
//! ```
//! use freshtoken_core::sim::{CacheMode, Scenario};
//! use std::time::Duration;
//!
//! let report = Scenario::new(50)
//!     .duration(Duration::from_secs(6 * 3600))
//!     .cache(CacheMode::SharedWithLease)
//!     .run();
//! assert!(report.availability > 0.9999); // only cold starts lack a token
//! assert!(report.requests_per_period <= 1.1, "{report:?}");
//! ```
//!
//! **Availability** is the share of consumer reads that found an unexpired
//! token. Consumers are modelled as reading at a uniform rate, so it is
//! computed exactly as the share of each instance's life during which its
//! published token was unexpired (a cold start's first fetch counts as
//! unavailable time).

mod authority;

pub use authority::{Fault, FaultKind};

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use crate::machine::{Action, Input, LeaseOutcome, MachineConfig, Output, RefreshMachine};
use crate::time::Timestamp;
use crate::token::Token;

use authority::Authority;

/// Whether the simulated instances share a cache, and whether it has a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Every instance fetches for itself.
    None,
    /// A shared cache without a lease.
    Shared,
    /// A shared cache with a lease (one fetcher at a time).
    SharedWithLease,
}

/// What to simulate.
///
/// ```
/// use freshtoken_core::sim::{CacheMode, Fault, FaultKind, Scenario};
/// use std::time::Duration;
///
/// // 200 instances sharing a cache without a lease, 10-minute tokens, and a
/// // 429 storm with Retry-After 30 s in the second hour.
/// let report = Scenario::new(200)
///     .lifetime(Duration::from_secs(600))
///     .duration(Duration::from_secs(3 * 3600))
///     .cache(CacheMode::Shared)
///     .fault(Fault::new(
///         FaultKind::RateLimited { retry_after: Duration::from_secs(30) },
///         Duration::from_secs(3600),
///         Duration::from_secs(600),
///     ))
///     .run();
/// assert!(report.failed_requests > 0);
/// // The storm outlasts the 150 s stale window: some reads find no token.
/// assert!(report.availability < 1.0 && report.longest_gap > Duration::ZERO);
/// ```
#[derive(Clone, Debug)]
pub struct Scenario {
    instances: usize,
    duration: Duration,
    lifetime: Duration,
    latency: Duration,
    cache_latency: Duration,
    start_spread: Duration,
    faults: Vec<Fault>,
    cache: CacheMode,
    config: MachineConfig,
    seed: u64,
    start: Timestamp,
}

impl Scenario {
    /// `instances` machines with default settings: hourly tokens, 100 ms
    /// authority latency (varying by ±50 %), 1 ms cache latency, 24 hours, all starting within
    /// the first second, no cache, no faults.
    pub fn new(instances: usize) -> Self {
        Scenario {
            instances: instances.max(1),
            duration: Duration::from_secs(24 * 3600),
            lifetime: Duration::from_secs(3600),
            latency: Duration::from_millis(100),
            cache_latency: Duration::from_millis(1),
            start_spread: Duration::from_secs(1),
            faults: Vec::new(),
            cache: CacheMode::None,
            config: MachineConfig::default(),
            seed: 1,
            start: Timestamp::from_secs(1_700_000_000),
        }
    }

    /// How long to simulate.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    /// The lifetime (`expires_in`) of the authority's tokens.
    pub fn lifetime(mut self, d: Duration) -> Self {
        self.lifetime = d;
        self
    }

    /// The authority's round-trip latency.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Instances start at random offsets within this window.
    pub fn start_spread(mut self, d: Duration) -> Self {
        self.start_spread = d;
        self
    }

    /// Adds a fault window to the authority.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// The shared cache.
    pub fn cache(mut self, mode: CacheMode) -> Self {
        self.cache = mode;
        self
    }

    /// The machines' configuration (each gets its own seed derived from it
    /// and the scenario's seed; `cache` is set from the cache mode).
    pub fn config(mut self, config: MachineConfig) -> Self {
        self.config = config;
        self
    }

    /// The scenario's seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The machines' configuration as given.
    pub fn machine_config(&self) -> &MachineConfig {
        &self.config
    }

    /// The time at which the simulation starts.
    pub fn start_time(&self) -> Timestamp {
        self.start
    }

    /// Runs the scenario.
    pub fn run(&self) -> Report {
        self.run_observed(&mut ())
    }

    /// Runs the scenario, showing every machine input and output to `observer`.
    pub fn run_observed(&self, observer: &mut impl Observer) -> Report {
        Fleet::new(self).run(observer)
    }

    /// The refresh period used in [`Report::requests_per_period`]: the time
    /// from a token's issue until the earliest instance may renew it (its
    /// fresh period less the largest jitter).
    pub fn refresh_period(&self) -> Duration {
        let policy = &self.config.lifetime;
        let fresh = self.lifetime - policy.stale_window(self.lifetime);
        fresh - self.config.jitter.max_offset(fresh)
    }
}

/// Sees what every machine is fed and emits, in order.
///
/// ```
/// use freshtoken_core::sim::{Observer, Scenario};
/// use freshtoken_core::{Action, Output, Timestamp};
/// use std::time::Duration;
///
/// /// Counts fetches per instance.
/// #[derive(Default)]
/// struct Fetches(Vec<u32>);
///
/// impl Observer for Fetches {
///     fn output(&mut self, instance: usize, _now: Timestamp, output: &Output) {
///         if let Output::Action(Action::Fetch(_)) = output {
///             self.0.resize(self.0.len().max(instance + 1), 0);
///             self.0[instance] += 1;
///         }
///     }
/// }
///
/// let mut fetches = Fetches::default();
/// Scenario::new(3).duration(Duration::from_secs(3600)).run_observed(&mut fetches);
/// assert_eq!(fetches.0, [2, 2, 2]); // a cold start and one renewal each
/// ```
pub trait Observer {
    /// `instance` was fed `input` at `now`.
    fn input(&mut self, instance: usize, now: Timestamp, input: &Input) {
        let _ = (instance, now, input);
    }

    /// `instance` emitted `output` (after an input at `now`).
    fn output(&mut self, instance: usize, now: Timestamp, output: &Output) {
        let _ = (instance, now, output);
    }
}

impl Observer for () {}

/// What a simulation measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Instances simulated.
    pub instances: usize,
    /// Virtual time simulated.
    pub duration: Duration,
    /// Requests that reached the authority.
    pub authority_requests: u64,
    /// Of those, how many failed.
    pub failed_requests: u64,
    /// The refresh period (see [`Scenario::refresh_period`]).
    pub refresh_period: Duration,
    /// Authority requests per refresh period (for the whole fleet).
    pub requests_per_period: f64,
    /// Share of consumer reads that found an unexpired token.
    pub availability: f64,
    /// The longest time any instance went without an unexpired token.
    pub longest_gap: Duration,
    /// Cache reads, writes, leases granted and leases found busy.
    pub cache_reads: u64,
    /// Cache writes.
    pub cache_writes: u64,
    /// Leases granted.
    pub leases_granted: u64,
    /// Lease requests answered busy.
    pub leases_busy: u64,
    /// Events processed (a measure of the simulator's own work).
    pub events: u64,
}

#[derive(Debug)]
enum EventKind {
    Wake { generation: u64 },
    Deliver(Input),
    ReadCache,
    TryLease { ttl: Duration },
    WriteCache(Arc<Token>),
}

#[derive(Debug)]
struct Event {
    at: Timestamp,
    seq: u64,
    instance: usize,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Instance {
    machine: RefreshMachine,
    generation: u64,
    started_at: Timestamp,
    /// Expiry of the published token (the epoch before the first).
    covered_until: Timestamp,
    /// Up to when availability has been accounted for.
    accounted_until: Timestamp,
    unavailable: Duration,
}

struct Fleet<'a> {
    scenario: &'a Scenario,
    end: Timestamp,
    queue: BinaryHeap<Event>,
    seq: u64,
    instances: Vec<Instance>,
    authority: Authority,
    cached: Option<Arc<Token>>,
    lease: Option<(usize, Timestamp)>,
    report: Report,
}

impl<'a> Fleet<'a> {
    fn new(scenario: &'a Scenario) -> Self {
        let mut rng = fastrand::Rng::with_seed(scenario.seed);
        let start = scenario.start;
        let spread = crate::time::duration_millis(scenario.start_spread);
        let mut fleet = Fleet {
            scenario,
            end: start + scenario.duration,
            queue: BinaryHeap::with_capacity(scenario.instances * 2),
            seq: 0,
            instances: Vec::with_capacity(scenario.instances),
            authority: Authority::new(
                start,
                scenario.lifetime,
                scenario.latency,
                scenario.faults.clone(),
                scenario.seed,
            ),
            cached: None,
            lease: None,
            report: Report {
                instances: scenario.instances,
                duration: scenario.duration,
                authority_requests: 0,
                failed_requests: 0,
                refresh_period: scenario.refresh_period(),
                requests_per_period: 0.0,
                availability: 0.0,
                longest_gap: Duration::ZERO,
                cache_reads: 0,
                cache_writes: 0,
                leases_granted: 0,
                leases_busy: 0,
                events: 0,
            },
        };
        for i in 0..scenario.instances {
            let mut config = scenario.config.clone();
            config.seed = rng.u64(..);
            config.cache = scenario.cache != CacheMode::None;
            let started_at = start + Duration::from_millis(rng.u64(0..=spread));
            fleet.instances.push(Instance {
                machine: RefreshMachine::new(config),
                generation: 0,
                started_at,
                covered_until: Timestamp::EPOCH,
                accounted_until: started_at,
                unavailable: Duration::ZERO,
            });
            fleet.push(started_at, i, EventKind::Deliver(Input::Start));
        }
        fleet
    }

    fn push(&mut self, at: Timestamp, instance: usize, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Event {
            at,
            seq: self.seq,
            instance,
            kind,
        });
    }

    fn run(mut self, observer: &mut impl Observer) -> Report {
        while let Some(event) = self.queue.pop() {
            if event.at > self.end {
                break;
            }
            self.report.events += 1;
            let (now, i) = (event.at, event.instance);
            let input = match event.kind {
                EventKind::Wake { generation } if generation == self.instances[i].generation => {
                    Input::Tick
                }
                EventKind::Wake { .. } => continue,
                EventKind::Deliver(input) => input,
                EventKind::ReadCache => {
                    self.report.cache_reads += 1;
                    Input::CacheLoaded(Ok(self.cached.as_deref().cloned()))
                }
                EventKind::TryLease { ttl } => Input::Lease(Ok(self.try_lease(i, now, ttl))),
                EventKind::WriteCache(token) => {
                    self.report.cache_writes += 1;
                    // Last writer wins, as with a file rename or a Redis SET:
                    // a slow writer can replace a newer token with an older one.
                    self.cached = Some(token);
                    Input::Stored(Ok(()))
                }
            };
            self.feed(i, input, now, observer);
        }
        self.finish()
    }

    fn try_lease(&mut self, i: usize, now: Timestamp, ttl: Duration) -> LeaseOutcome {
        if self.scenario.cache != CacheMode::SharedWithLease {
            return LeaseOutcome::Unsupported;
        }
        match self.lease {
            Some((holder, until)) if holder != i && now < until => {
                self.report.leases_busy += 1;
                LeaseOutcome::Busy
            }
            _ => {
                self.report.leases_granted += 1;
                self.lease = Some((i, now + ttl));
                LeaseOutcome::Granted
            }
        }
    }

    fn feed(&mut self, i: usize, input: Input, now: Timestamp, observer: &mut impl Observer) {
        observer.input(i, now, &input);
        self.instances[i].machine.handle_input(input, now);
        loop {
            let output = self.instances[i].machine.poll_output();
            observer.output(i, now, &output);
            match output {
                Output::Timeout(at) => {
                    let inst = &mut self.instances[i];
                    inst.generation += 1;
                    if at != Timestamp::MAX {
                        let generation = inst.generation;
                        self.push(at, i, EventKind::Wake { generation });
                    }
                    break;
                }
                Output::Action(action) => self.perform(i, action, now),
            }
        }
    }

    fn perform(&mut self, i: usize, action: Action, now: Timestamp) {
        let cache_at = now + self.scenario.cache_latency;
        match action {
            Action::LoadCache => self.push(cache_at, i, EventKind::ReadCache),
            Action::AcquireLease { ttl } => self.push(cache_at, i, EventKind::TryLease { ttl }),
            Action::Store(token) => self.push(cache_at, i, EventKind::WriteCache(token)),
            Action::ReleaseLease => {
                if self.lease.is_some_and(|(holder, _)| holder == i) {
                    self.lease = None;
                }
            }
            Action::Fetch(_) => {
                self.report.authority_requests += 1;
                let (result, at) = self.authority.answer(now);
                if result.is_err() {
                    self.report.failed_requests += 1;
                }
                self.push(at, i, EventKind::Deliver(Input::Fetched(result)));
            }
            Action::Publish(snapshot) => {
                self.account(i, now);
                let inst = &mut self.instances[i];
                if let Some(token) = snapshot.token {
                    inst.covered_until = inst.covered_until.max(token.expires_at());
                }
            }
            Action::Stop => {}
        }
    }

    /// Adds the time since the last accounting during which instance `i`
    /// had no unexpired token.
    fn account(&mut self, i: usize, now: Timestamp) {
        let inst = &mut self.instances[i];
        let from = inst.accounted_until.max(inst.covered_until);
        if now > from {
            let gap = now.saturating_duration_since(from);
            inst.unavailable += gap;
            // A gap can span several accountings only if nothing was
            // published in between, so each call sees a whole gap's tail;
            // measure gaps from where coverage ended.
            let whole = now.saturating_duration_since(inst.covered_until.max(inst.started_at));
            self.report.longest_gap = self.report.longest_gap.max(whole);
        }
        inst.accounted_until = inst.accounted_until.max(now);
    }

    fn finish(mut self) -> Report {
        let end = self.end;
        let mut lived = Duration::ZERO;
        let mut unavailable = Duration::ZERO;
        for i in 0..self.instances.len() {
            self.account(i, end);
            let inst = &self.instances[i];
            lived += end.saturating_duration_since(inst.started_at);
            unavailable += inst.unavailable;
        }
        self.report.availability = if lived.is_zero() {
            1.0
        } else {
            1.0 - unavailable.as_secs_f64() / lived.as_secs_f64()
        };
        let periods = self.scenario.duration.as_secs_f64()
            / self.report.refresh_period.as_secs_f64().max(1e-3);
        self.report.requests_per_period = self.report.authority_requests as f64 / periods.max(1.0);
        self.report
    }
}

#[cfg(test)]
mod tests;
