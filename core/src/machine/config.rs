//! How a machine behaves ([`MachineConfig`]) and what it has done
//! ([`MachineStats`]).

use super::*;

/// How a [`RefreshMachine`] behaves. Every field has a documented default.
///
/// ```
/// use freshtoken_core::{Jitter, MachineConfig};
/// use std::time::Duration;
///
/// let mut config = MachineConfig::default();
/// config.jitter = Jitter::NONE;
/// config.cache = true;
/// config.lease_ttl = Duration::from_secs(10);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MachineConfig {
    /// How lifetimes become stale and expiry times.
    pub lifetime: LifetimePolicy,
    /// How much earlier than `stale_at` refreshes may happen.
    pub jitter: Jitter,
    /// How failures are retried.
    pub backoff: Backoff,
    /// Seed for the machine's random draws (jitter, backoff). Give each
    /// instance its own; the same seed replays the same decisions.
    pub seed: u64,
    /// Whether a shared cache is attached (the driver answers `LoadCache`,
    /// `Store` and the lease). Without one the machine only fetches.
    pub cache: bool,
    /// How long a lease may be held (default 45 s). It should exceed the
    /// fetch timeout, so a live holder never loses it mid-fetch, and bounds
    /// how long a crashed holder blocks the others.
    pub lease_ttl: Duration,
    /// How long to wait for a peer that holds the lease before re-reading
    /// the cache (default 500 ms, jittered ±50 %).
    pub peer_wait: Duration,
    /// Minimum time between refreshes caused by invalidations (default 5 s),
    /// so a burst of 401s cannot turn into a burst of fetches.
    pub invalidate_interval: Duration,
    /// The deadline of a fetch (default 30 s): past it the fetch counts as
    /// a transient failure, and its answer, if it still comes, as late.
    pub fetch_timeout: Duration,
    /// The deadline of a cache request (default 30 s).
    pub cache_timeout: Duration,
    /// The refresh token to start from, for refresh-token flows. A newer one
    /// found in the cache replaces it.
    pub refresh_token: Option<RefreshToken>,
    /// The shortest time between two refreshes that a degenerate answer
    /// can cause (default 5 s; zero turns the floor off). An answer is
    /// *degenerate* when the lifetime policy had to raise its `expires_in`
    /// to the minimum lifetime (`expires_in: 0`, negative, or below
    /// [`LifetimePolicy::with_lifetime_bounds`]' minimum, 1 s by default;
    /// raise that minimum to treat short lifetimes as degenerate too: a
    /// genuine short lifetime is the authority's choice). The machine
    /// renews it no sooner than this after the answer, doubling the wait
    /// while answers keep coming back degenerate (at least twice the fresh
    /// period of the token it replaces, so a fleet sharing a cache keeps
    /// one curve; up to the backoff's cap, never below this), and serves the token until then, plus as
    /// long again for the renewal (see [`DegenerateLifetime`]).
    ///
    /// The same floor bounds two other waits: after an answer no newer than
    /// the token held (an authority handing back its cached token, counted
    /// down), the next request waits a quarter of the remaining life and at
    /// least this; and an authority's refresh hint (`refresh_in`) never makes
    /// a token stale sooner than this after its request.
    pub min_refresh_interval: Duration,
    /// The shortest deadline of a client-credentials fetch (default 2 s).
    /// Such a fetch's deadline follows the current token's remaining
    /// validity, `remaining - min_fetch_timeout`, bounded below by this and
    /// above by [`fetch_timeout`](Self::fetch_timeout), so a hung request
    /// is abandoned in time for a retry before the token expires. The first
    /// fetch (no token yet) and refresh-token fetches (a retry after a
    /// timeout risks presenting a rotated token) keep the full fetch timeout.
    pub min_fetch_timeout: Duration,
    /// A known defect put back, for the model checker's own tests (feature
    /// `mutants`; see [`Mutant`](super::mutants::Mutant)). `None` by default.
    #[cfg(feature = "mutants")]
    #[doc(hidden)]
    pub mutant: Option<super::mutants::Mutant>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            lifetime: LifetimePolicy::default(),
            jitter: Jitter::default(),
            backoff: Backoff::default(),
            seed: 0x5eed_f00d,
            cache: false,
            lease_ttl: Duration::from_secs(45),
            peer_wait: Duration::from_millis(500),
            invalidate_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(30),
            cache_timeout: Duration::from_secs(30),
            refresh_token: None,
            min_refresh_interval: Duration::from_secs(5),
            min_fetch_timeout: Duration::from_secs(2),
            #[cfg(feature = "mutants")]
            mutant: None,
        }
    }
}

/// Counters of what the machine has done, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineStats {
    /// Inputs that did not match what the machine was waiting for.
    pub ignored_inputs: u64,
    /// `Fetch` actions emitted.
    pub fetches: u64,
    /// Failed fetches (timeouts included).
    pub fetch_failures: u64,
    /// Cached tokens adopted instead of fetching.
    pub adoptions: u64,
    /// Successful fetches.
    pub tokens_fetched: u64,
    /// Reports of the current token as rejected that started a refresh at
    /// once (a rate-limited one starting later is not counted again).
    pub invalidations: u64,
    /// Reports of the current token as rejected ([`Input::Invalidate`])
    /// that came within `invalidate_interval` of the last
    /// invalidation-driven refresh: the refresh waits for the interval.
    pub invalidations_rate_limited: u64,
    /// Reports of the current token as rejected while a refresh was
    /// already under way or scheduled by the backoff: they join it.
    pub invalidations_collapsed: u64,
    /// Requests whose deadline passed before their answer came.
    pub timeouts: u64,
    /// Fetch answers that came after their deadline and were still used
    /// (they carried a token newer than ours, or a rotated refresh token).
    pub late_answers_used: u64,
}
