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
mod fleet;
mod prefetch;
mod queue;
mod timeline;

pub use authority::{Fault, FaultKind, Loss};
pub(crate) use prefetch::prefetch;
pub use timeline::Timeline;

use std::time::Duration;

use crate::machine::{Input, MachineConfig, Output};
use crate::time::Timestamp;

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
    refresh_tokens: Option<Duration>,
    skew: Duration,
    clock_steps: u32,
    stacks: bool,
    cache_faults: CacheFaults,
    latency_tail: f64,
    lost_answers: f64,
    churn: Churn,
    heartbeat: Duration,
    advertised: Option<i64>,
}

/// How the simulated shared cache misbehaves: each operation fails, hangs
/// or is lost after the fact with the given probability.
///
/// ```
/// use freshtoken_core::sim::CacheFaults;
/// let flaky = CacheFaults { load_failure: 0.05, store_failure: 0.05, ..CacheFaults::default() };
/// assert_eq!(flaky.hang, 0.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheFaults {
    /// A load answers with an error (the cache is unavailable).
    pub load_failure: f64,
    /// A store answers with an error and writes nothing.
    pub store_failure: f64,
    /// An operation takes a minute to answer (past any sane deadline).
    pub hang: f64,
    /// An acknowledged store is lost a moment later (a failover to a
    /// replica that had not caught up): the refresh-token issue's inherent
    /// loss (c).
    pub lost_write: f64,
}

/// Instances that stop and come back: each instance lives for a random
/// time (exponential, with this mean), then is shut down gracefully or, for
/// `kill_fraction` of the stops, killed without warning, and restarts after
/// `downtime` from the shared cache with its configured settings.
///
/// ```
/// use freshtoken_core::sim::Churn;
/// use std::time::Duration;
/// let churn = Churn::new(Duration::from_secs(600), 0.0, Duration::from_secs(5));
/// assert!(churn.is_active());
/// assert!(!Churn::NONE.is_active());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Churn {
    mean_uptime: Duration,
    kill_fraction: f64,
    downtime: Duration,
}

impl Churn {
    /// No instance ever stops.
    pub const NONE: Churn = Churn {
        mean_uptime: Duration::ZERO,
        kill_fraction: 0.0,
        downtime: Duration::ZERO,
    };

    /// Stops every `mean_uptime` on average, `kill_fraction` of them kills.
    pub fn new(mean_uptime: Duration, kill_fraction: f64, downtime: Duration) -> Self {
        Churn {
            mean_uptime,
            kill_fraction: kill_fraction.clamp(0.0, 1.0),
            downtime,
        }
    }

    /// Whether instances stop at all.
    pub fn is_active(&self) -> bool {
        !self.mean_uptime.is_zero()
    }
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
            refresh_tokens: None,
            skew: Duration::ZERO,
            clock_steps: 0,
            stacks: false,
            cache_faults: CacheFaults::default(),
            latency_tail: 0.0,
            lost_answers: 0.0,
            churn: Churn::NONE,
            heartbeat: Duration::from_secs(30),
            advertised: None,
        }
    }

    /// A degenerate authority: every answer says `expires_in: secs` (zero,
    /// negative, or shorter than the truth), while its tokens really live
    /// [`lifetime`](Self::lifetime). The authority of issue 10's item 4
    /// sends `expires_in: 0`.
    pub fn advertised_expires_in(mut self, secs: i64) -> Self {
        self.advertised = Some(secs);
        self
    }

    /// A refresh-token flow: every instance starts from the grant's first
    /// refresh token, which the authority rotates on every use and revokes
    /// (the whole family) when a spent one is presented, except within
    /// `reuse_interval` of its rotation (zero: never; many authorities
    /// offer such a grace period for the inherent losses).
    pub fn refresh_tokens(mut self, reuse_interval: Duration) -> Self {
        self.refresh_tokens = Some(reuse_interval);
        self
    }

    /// Gives each instance's wall clock a fixed offset drawn uniformly from
    /// `±max` (the monotonic clock, and the authority, run true).
    pub fn skew(mut self, max: Duration) -> Self {
        self.skew = max;
        self
    }

    /// Steps each instance's wall clock `count` times during the run, at
    /// random moments, by up to `±max` each (the skew bound stays the same).
    pub fn clock_steps(mut self, count: u32) -> Self {
        self.clock_steps = count;
        self
    }

    /// Puts a per-instance memory layer above the shared cache, as a
    /// `CacheStack` of a `MemoryCache` and a shared cache does.
    pub fn stacks(mut self, on: bool) -> Self {
        self.stacks = on;
        self
    }

    /// How the shared cache misbehaves.
    pub fn cache_faults(mut self, faults: CacheFaults) -> Self {
        self.cache_faults = faults;
        self
    }

    /// With probability `p` an answer takes 5 to 100 times the latency.
    pub fn latency_tail(mut self, p: f64) -> Self {
        self.latency_tail = p;
        self
    }

    /// With probability `p` the authority acts on a request but its answer
    /// never arrives: the refresh-token issue's inherent loss (b).
    pub fn lost_answers(mut self, p: f64) -> Self {
        self.lost_answers = p;
        self
    }

    /// Instances that stop (gracefully or killed) and restart.
    pub fn churn(mut self, churn: Churn) -> Self {
        self.churn = churn;
        self
    }

    /// The drivers' heartbeat: how late an instance notices a clock step.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d.max(Duration::from_millis(1));
        self
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

    /// The authority's fault windows, in the order they were added.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
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
        fleet::Fleet::new(self).run(observer)
    }

    /// The refresh period used in [`Report::requests_per_period`]: the time
    /// from a token's issue until the earliest instance may renew it (its
    /// fresh period less the largest jitter).
    pub fn refresh_period(&self) -> Duration {
        let policy = &self.config.lifetime;
        let fresh = self.lifetime - policy.stale_window(self.lifetime);
        fresh.saturating_sub(self.config.jitter.max_offset(fresh))
    }
}

/// Sees what every machine is fed and emits, in order. [`Timeline`] is a
/// ready-made one (fetches, stores and publications).
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
    /// Spent refresh tokens presented to the authority that no inherent
    /// loss explains: a defect of the machine. Must be zero.
    pub refresh_token_reuses: u64,
    /// Spent refresh tokens presented after an inherent loss, by cause:
    /// killed, lost answer, cache lost a write. No client can avoid these;
    /// an authority-side reuse interval covers them.
    pub inherent_reuses: [u64; 3],
    /// Spent refresh tokens accepted within the reuse interval.
    pub grace_reuses: u64,
    /// Inherent losses that happened (whether or not a reuse followed).
    pub inherent_losses: u64,
    /// Whether the authority revoked the grant.
    pub grant_revoked: bool,
    /// Instances running at the end.
    pub alive_at_end: usize,
    /// Of those, how many held a token that was truly (by the authority's
    /// clock) valid.
    pub valid_at_end: usize,
    /// Of those running at the end, how many were in `Failed`.
    pub failed_at_end: usize,
    /// Graceful shutdowns, kills and restarts.
    pub shutdowns: u64,
    /// Kills without warning.
    pub kills: u64,
    /// Restarts after a stop.
    pub restarts: u64,
    /// Fetch answers that arrived after the machine's deadline.
    pub late_answers: u64,
    /// Calls that reached the shared cache: loads the memory layer did not
    /// answer, stores, lease acquisitions and extensions, and releases.
    pub cache_operations: u64,
    /// Authority requests in the busiest second (of true time).
    pub peak_requests_per_second: u64,
    /// Shared-cache calls in the busiest second.
    pub peak_cache_operations_per_second: u64,
    /// Authority requests sent during each fault window, in the order the
    /// faults were added (windows that overlap count a request in each).
    pub requests_during_faults: Vec<u64>,
    /// Shared-cache calls during each fault window.
    pub cache_operations_during_faults: Vec<u64>,
}

impl Report {
    /// All reuses of spent refresh tokens, defects and inherent ones.
    pub fn all_reuses(&self) -> u64 {
        self.refresh_token_reuses + self.inherent_reuses.iter().sum::<u64>()
    }
}

#[cfg(test)]
mod tests;
