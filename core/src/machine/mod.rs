//! The sans-IO refresh state machine.
//!
//! [`RefreshMachine`] decides *when* to load the cache, take the lease,
//! fetch, store and publish; a driver decides *how*. It never reads a clock
//! and never performs I/O: every input carries `now`, and every side effect
//! leaves as an [`Action`]. That makes it runnable under any executor, in a
//! plain thread, and in deterministic tests and simulations.
//!
//! ```
//! use freshtoken_core::*;
//!
//! let mut m = RefreshMachine::new(MachineConfig::default());
//! let t0 = Timestamp::from_secs(1_000);
//! m.handle_input(Input::Start, t0);
//! // No cache is configured, so the machine asks for a token straight away.
//! assert!(matches!(m.poll_output(), Output::Action(Action::Fetch(_))));
//! assert!(matches!(m.poll_output(), Output::Timeout(_)));
//!
//! let answer = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(3600));
//! m.handle_input(Input::Fetched(Ok(answer)), t0);
//! let Output::Action(Action::Publish(snapshot)) = m.poll_output() else { panic!() };
//! assert_eq!(snapshot.state, RefreshState::Healthy);
//!
//! // Next wake-up: the (jittered) refresh time, well before expiry.
//! let Output::Timeout(at) = m.poll_output() else { panic!() };
//! assert!(at > t0 && at < Timestamp::from_secs(1_000 + 3600));
//! ```

mod io;

pub use io::{Action, FetchRequest, Input, LeaseOutcome, Output, RefreshState, Snapshot};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{FetchError, FetchErrorKind};
use crate::jitter::Jitter;
use crate::lifetime::{LifetimeNote, LifetimePolicy};
use crate::secret::RefreshToken;
use crate::time::Timestamp;
use crate::token::{Token, TokenId, TokenResponse};

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
    /// How long a lease may be held (default 30 s). It should exceed the
    /// driver's fetch timeout, so a live holder never loses it mid-fetch,
    /// and bounds how long a crashed holder blocks the others.
    pub lease_ttl: Duration,
    /// How long to wait for a peer that holds the lease before re-reading
    /// the cache (default 500 ms, jittered ±50 %).
    pub peer_wait: Duration,
    /// Minimum time between refreshes caused by invalidations (default 5 s),
    /// so a burst of 401s cannot turn into a burst of fetches.
    pub invalidate_interval: Duration,
    /// The refresh token to start from, for refresh-token flows. A newer one
    /// found in the cache replaces it.
    pub refresh_token: Option<RefreshToken>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            lifetime: LifetimePolicy::default(),
            jitter: Jitter::default(),
            backoff: Backoff::default(),
            seed: 0x5eed_f00d,
            cache: false,
            lease_ttl: Duration::from_secs(30),
            peer_wait: Duration::from_millis(500),
            invalidate_interval: Duration::from_secs(5),
            refresh_token: None,
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
    /// Failed fetches.
    pub fetch_failures: u64,
    /// Cached tokens adopted instead of fetching.
    pub adoptions: u64,
    /// Successful fetches.
    pub tokens_fetched: u64,
    /// Invalidations that started a refresh.
    pub invalidations: u64,
}

/// Why a cache read was made, which decides what comes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheRead {
    /// Before taking the lease: a peer may have refreshed already.
    BeforeLease,
    /// With the lease held: a peer may have stored between our first read
    /// and our lease, so look once more before asking the authority.
    UnderLease,
    /// Done waiting for a peer: one last look (the holder has usually just
    /// stored), then fetch without the lease.
    LastLook,
}

/// Where the machine is. Exactly one action is in flight in the phases that
/// wait for a result, and none in the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `Start`.
    Created,
    /// The current token is good; refresh at `refresh_at`.
    Idle { refresh_at: Timestamp },
    /// `LoadCache` in flight.
    Reading(CacheRead),
    /// `AcquireLease` in flight.
    Leasing,
    /// A peer holds the lease: re-read the cache at `recheck_at`, and fetch
    /// anyway once `give_up_at` passes.
    PeerWait {
        recheck_at: Timestamp,
        give_up_at: Timestamp,
    },
    /// `Fetch` in flight, sent at `sent_at`.
    Fetching { sent_at: Timestamp },
    /// `Store` in flight; publish when it completes if `publish_after`.
    Storing { publish_after: bool },
    /// The last fetch failed; try again at `retry_at`. `extending`: an
    /// `AcquireLease` that stretches our lease over the wait is in flight.
    Backoff {
        retry_at: Timestamp,
        extending: bool,
    },
    /// The grant is gone; nothing more to do but serve the last token.
    Failed,
    /// `Stop` was emitted.
    Stopped,
}

/// The refresh state machine. See the [module docs](self) for the model
/// and a whole refresh; a driver's loop looks like this:
///
/// ```
/// use freshtoken_core::*;
///
/// let mut machine = RefreshMachine::new(MachineConfig::default());
/// let now = Timestamp::from_secs(1_700_000_000); // a driver reads its clock
/// machine.handle_input(Input::Start, now);
/// let wake_at = loop {
///     match machine.poll_output() {
///         // Carry the action out; feed its result back later.
///         Output::Action(Action::Fetch(request)) => assert_eq!(request.attempt, 1),
///         Output::Action(other) => unreachable!("no cache, so only a fetch: {other:?}"),
///         Output::Timeout(at) => break at,
///     }
/// };
/// // Waiting for the fetch's answer: no deadline of the machine's own.
/// assert_eq!(wake_at, Timestamp::MAX);
/// ```
#[derive(Debug)]
pub struct RefreshMachine {
    config: MachineConfig,
    phase: Phase,
    now: Timestamp,
    rng: fastrand::Rng,
    outbox: VecDeque<Action>,

    /// The token readers are served.
    current: Option<Arc<Token>>,
    /// Whether readers have been told that `current` expired.
    expiry_published: bool,
    /// The newest refresh token known, and when the token that carried it
    /// was issued (the epoch for the configured one).
    refresh_token: Option<(RefreshToken, Timestamp)>,
    /// The token a consumer reported as rejected; never re-adopted.
    rejected: Option<TokenId>,
    last_invalidation: Option<Timestamp>,
    /// Until when we hold the cache's lease, if we do.
    lease_until: Option<Timestamp>,
    /// When to stop waiting for a peer that holds the lease (kept across
    /// re-reads, so a lease that stays busy cannot keep us waiting forever).
    peer_give_up: Option<Timestamp>,
    /// Consecutive failed fetches.
    failures: u32,
    state: RefreshState,
    skew_ms: Option<i64>,
    lifetime_note: Option<LifetimeNote>,
    stats: MachineStats,
}

impl RefreshMachine {
    /// A machine with this configuration, waiting for [`Input::Start`].
    pub fn new(config: MachineConfig) -> Self {
        let refresh_token = config
            .refresh_token
            .clone()
            .map(|rt| (rt, Timestamp::EPOCH));
        RefreshMachine {
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            phase: Phase::Created,
            now: Timestamp::EPOCH,
            outbox: VecDeque::new(),
            current: None,
            expiry_published: false,
            refresh_token,
            rejected: None,
            last_invalidation: None,
            lease_until: None,
            peer_give_up: None,
            failures: 0,
            state: RefreshState::Starting,
            skew_ms: None,
            lifetime_note: None,
            stats: MachineStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// What the machine has done so far.
    pub fn stats(&self) -> MachineStats {
        self.stats
    }

    /// The token readers are served, if any.
    pub fn current(&self) -> Option<&Arc<Token>> {
        self.current.as_ref()
    }

    /// How renewal is going.
    pub fn state(&self) -> &RefreshState {
        &self.state
    }

    /// Whether `Stop` has been emitted.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Feeds what happened at `now`.
    pub fn handle_input(&mut self, input: Input, now: Timestamp) {
        self.now = now;
        match (input, self.phase) {
            (_, Phase::Stopped) => self.ignore(),
            (Input::Shutdown, _) => self.shutdown(),
            (Input::Start, Phase::Created) => self.begin_refresh(),
            (Input::Tick, _) => self.tick(),
            (Input::CacheLoaded(Err(error)), Phase::Reading(_)) if self.refresh_token.is_some() => {
                // A refresh token is single-use: without the cache we cannot
                // know whether a peer has already rotated ours, and
                // presenting a spent one makes the authority revoke the
                // whole grant. Waiting for the cache is the lesser harm.
                self.retry_later(FetchError::transient(format!(
                    "not refreshing while the shared cache is unreadable ({error}): \
                     a peer may have rotated the refresh token"
                )));
            }
            (Input::CacheLoaded(result), Phase::Reading(read)) => {
                // For other flows a broken cache is a miss: availability
                // beats load.
                let cached = result.ok().flatten();
                self.on_cache_loaded(cached, read);
            }
            (Input::Lease(result), Phase::Leasing) => {
                self.on_lease(result.unwrap_or(LeaseOutcome::Unsupported))
            }
            (
                Input::Lease(result),
                Phase::Backoff {
                    retry_at,
                    extending: true,
                },
            ) => {
                self.lease_until = match result {
                    Ok(LeaseOutcome::Granted) => Some(retry_at + self.config.lease_ttl),
                    // Lost it (it lapsed and a peer took it) or the cache
                    // failed: we no longer hold it, so there is nothing to release.
                    _ => None,
                };
                self.phase = Phase::Backoff {
                    retry_at,
                    extending: false,
                };
                self.tick();
            }
            (Input::Fetched(result), Phase::Fetching { sent_at }) => match result {
                Ok(response) => self.on_fetched(response, sent_at),
                Err(error) => self.on_fetch_failed(error),
            },
            (Input::Stored(_), Phase::Storing { publish_after }) => {
                // A failed store is a warning (the driver logs it): the token
                // is good, only sharing it failed.
                if publish_after {
                    self.publish();
                }
                self.release_lease();
                self.settle();
            }
            (Input::Invalidate(id), _) => self.invalidate(id),
            _ => self.ignore(),
        }
        self.check_expiry();
    }

    /// The next thing to do: an action, or the instant to wake up at.
    pub fn poll_output(&mut self) -> Output {
        if let Some(action) = self.outbox.pop_front() {
            return Output::Action(action);
        }
        Output::Timeout(self.next_deadline())
    }

    fn next_deadline(&self) -> Timestamp {
        let phase_deadline = match self.phase {
            Phase::Idle { refresh_at } => refresh_at,
            Phase::Backoff {
                retry_at,
                extending: false,
            } => retry_at,
            Phase::PeerWait { recheck_at, .. } => recheck_at,
            _ => Timestamp::MAX,
        };
        // Also wake at expiry, so readers waiting on changes learn of it.
        let expiry = match &self.current {
            Some(t) if !self.expiry_published && self.phase != Phase::Stopped => t.expires_at(),
            _ => Timestamp::MAX,
        };
        // A deadline already due (the driver was late) is due right after now.
        phase_deadline
            .min(expiry)
            .max(self.now + Duration::from_millis(1))
    }

    fn ignore(&mut self) {
        self.stats.ignored_inputs += 1;
    }

    fn tick(&mut self) {
        let now = self.now;
        match self.phase {
            Phase::Idle { refresh_at } if now >= refresh_at => self.begin_refresh(),
            Phase::Backoff {
                retry_at,
                extending: false,
            } if now >= retry_at => self.begin_refresh(),
            Phase::PeerWait {
                recheck_at,
                give_up_at,
            } if now >= recheck_at => {
                if now >= give_up_at {
                    // The holder is taking too long; our token is about to
                    // expire. Availability beats load: unless the holder has
                    // stored meanwhile, fetch without the lease.
                    self.read_cache(CacheRead::LastLook);
                } else {
                    self.read_cache(CacheRead::BeforeLease);
                }
            }
            _ => {}
        }
    }

    /// Starts a refresh: from the cache when there is one, else a fetch.
    fn begin_refresh(&mut self) {
        if !self.config.cache {
            self.fetch();
        } else if self.holds_lease() {
            // Still holding the lease from a failed attempt: retry directly.
            self.read_cache(CacheRead::UnderLease);
        } else {
            self.read_cache(CacheRead::BeforeLease);
        }
    }

    fn read_cache(&mut self, read: CacheRead) {
        self.outbox.push_back(Action::LoadCache);
        self.phase = Phase::Reading(read);
    }

    fn on_cache_loaded(&mut self, cached: Option<Token>, read: CacheRead) {
        if let Some(token) = cached {
            self.learn_refresh_token(&token);
            if self.is_better(&token) {
                self.stats.adoptions += 1;
                self.lifetime_note = None;
                self.failures = 0;
                self.state = RefreshState::Healthy;
                let token = Arc::new(token);
                self.make_current(token.clone());
                self.publish();
                // Done, unless the adopted token is itself due for renewal
                // (a stale one adopted at start-up is served while we fetch).
                let refresh_at = self.config.jitter.refresh_at(&token, &mut self.rng);
                if refresh_at > self.now {
                    self.release_lease();
                    self.idle_until(refresh_at);
                    return;
                }
            }
        }
        match read {
            CacheRead::BeforeLease => {
                self.outbox.push_back(Action::AcquireLease {
                    ttl: self.config.lease_ttl,
                });
                self.phase = Phase::Leasing;
            }
            CacheRead::UnderLease | CacheRead::LastLook => self.fetch(),
        }
    }

    fn on_lease(&mut self, outcome: LeaseOutcome) {
        match outcome {
            LeaseOutcome::Granted => {
                self.lease_until = Some(self.now + self.config.lease_ttl);
                self.read_cache(CacheRead::UnderLease);
            }
            LeaseOutcome::Unsupported => self.fetch(),
            LeaseOutcome::Busy => {
                let give_up_at = *self.peer_give_up.get_or_insert_with(|| {
                    Self::give_up_at(self.current.as_deref(), self.now, self.config.lease_ttl)
                });
                if self.now >= give_up_at {
                    self.fetch();
                } else {
                    let wait = self.jittered(self.config.peer_wait);
                    self.phase = Phase::PeerWait {
                        recheck_at: (self.now + wait).min(give_up_at),
                        give_up_at,
                    };
                }
            }
        }
    }

    /// How long to wait for a peer: until the middle of our token's stale
    /// window (leaving the rest for our own fetch and its retries), or one
    /// lease TTL when we have no valid token (a live holder will have stored
    /// by then, and a crashed one's lease will have expired).
    fn give_up_at(current: Option<&Token>, now: Timestamp, lease_ttl: Duration) -> Timestamp {
        match current {
            Some(t) if t.is_valid_at(now) => {
                let window = t.expires_at().saturating_duration_since(t.stale_at());
                t.expires_at() - window / 2
            }
            _ => now + lease_ttl,
        }
    }

    fn fetch(&mut self) {
        self.stats.fetches += 1;
        self.peer_give_up = None;
        let request = FetchRequest::new(
            self.failures.saturating_add(1),
            self.refresh_token.as_ref().map(|(rt, _)| rt.clone()),
        );
        self.outbox.push_back(Action::Fetch(request));
        self.phase = Phase::Fetching { sent_at: self.now };
    }

    fn on_fetched(&mut self, response: TokenResponse, sent_at: Timestamp) {
        let rotated = response.refresh_token.is_some();
        let resolved = self.config.lifetime.resolve(response, sent_at, self.now);
        let mut token = resolved.token;
        // Learn a rotated refresh token first, whatever else happens: the
        // old one is already spent at the authority.
        self.learn_refresh_token(&token);
        if !token.is_valid_at(self.now) {
            // Possible only when the answer took longer than the token's
            // whole life: publishing it would serve a dead token.
            let error = FetchError::transient(format!(
                "the token expired before its answer arrived (lifetime {:?})",
                token.lifetime()
            ));
            self.on_fetch_failed(error);
            return;
        }
        if token.refresh_token().is_none() {
            // The authority kept the grant as it was: carry our refresh token
            // along so the cache stores the full state.
            token = token.with_refresh_token(self.refresh_token.as_ref().map(|(rt, _)| rt.clone()));
        }
        self.skew_ms = resolved.skew_ms;
        self.lifetime_note = resolved.note;
        self.failures = 0;
        self.stats.tokens_fetched += 1;
        self.state = RefreshState::Healthy;
        let token = Arc::new(token);
        self.make_current(token.clone());

        if !self.config.cache {
            self.publish();
            self.settle();
            return;
        }
        // A rotated refresh token that is lost is a lost grant: make it
        // durable before anyone can act on the new access token.
        let publish_after = rotated;
        if !publish_after {
            self.publish();
        }
        self.outbox.push_back(Action::Store(token));
        self.phase = Phase::Storing { publish_after };
    }

    fn on_fetch_failed(&mut self, error: FetchError) {
        self.stats.fetch_failures += 1;
        self.retry_later(error);
    }

    /// Publishes the failure and schedules the next attempt by the backoff
    /// (or stops for good when the grant is gone).
    fn retry_later(&mut self, error: FetchError) {
        self.failures = self.failures.saturating_add(1);
        if error.kind() == FetchErrorKind::GrantRevoked {
            self.release_lease();
            self.state = RefreshState::Failed { error };
            self.phase = Phase::Failed;
            self.publish();
            return;
        }
        let delay = self
            .config
            .backoff
            .delay(&error, self.failures, &mut self.rng);
        let retry_at = self.now + delay;
        // Keep the lease through the wait, so peers keep waiting for us
        // rather than each hitting a failing authority: a fleet then sends
        // one request per retry, not one per instance. When the lease would
        // lapse first, stretch it over the wait (its holder may renew it).
        let extending = self.lease_until.is_some_and(|until| until <= retry_at);
        if extending {
            self.outbox.push_back(Action::AcquireLease {
                ttl: delay + self.config.lease_ttl,
            });
        }
        self.state = RefreshState::Retrying {
            error,
            attempt: self.failures,
            next_attempt: retry_at,
        };
        self.phase = Phase::Backoff {
            retry_at,
            extending,
        };
        self.publish();
    }

    fn invalidate(&mut self, id: TokenId) {
        let is_current = self.current.as_ref().is_some_and(|t| t.id() == id);
        if !is_current || matches!(self.phase, Phase::Created | Phase::Failed) {
            self.ignore();
            return;
        }
        self.rejected = Some(id);
        let Phase::Idle { refresh_at } = self.phase else {
            // A refresh is already under way or scheduled by the backoff; it
            // will replace the token, and it must not adopt this one again.
            return;
        };
        let allowed_at = self
            .last_invalidation
            .map_or(self.now, |last| last + self.config.invalidate_interval);
        if self.now >= allowed_at {
            self.stats.invalidations += 1;
            self.last_invalidation = Some(self.now);
            self.begin_refresh();
        } else {
            self.phase = Phase::Idle {
                refresh_at: refresh_at.min(allowed_at),
            };
        }
    }

    fn shutdown(&mut self) {
        self.release_lease();
        self.state = RefreshState::Stopped;
        self.publish();
        self.outbox.push_back(Action::Stop);
        self.phase = Phase::Stopped;
    }

    /// Back to idle after a refresh, until the current token's (jittered)
    /// refresh time.
    fn settle(&mut self) {
        let refresh_at = match &self.current {
            Some(token) => self.config.jitter.refresh_at(token, &mut self.rng),
            // Unreachable in practice (settling follows a fetch or an
            // adoption); retry after a pause rather than spin.
            None => self.now + self.config.peer_wait,
        };
        self.idle_until(refresh_at);
    }

    fn idle_until(&mut self, refresh_at: Timestamp) {
        self.peer_give_up = None;
        self.phase = Phase::Idle { refresh_at };
    }

    fn make_current(&mut self, token: Arc<Token>) {
        if Some(token.id()) != self.rejected {
            self.rejected = None;
        }
        self.expiry_published = false;
        self.current = Some(token);
    }

    /// Whether a token from the cache should replace ours: it is valid, not
    /// the one a consumer rejected, and lives longer than ours.
    fn is_better(&self, token: &Token) -> bool {
        token.is_valid_at(self.now)
            && Some(token.id()) != self.rejected
            && self
                .current
                .as_ref()
                .is_none_or(|ours| token.expires_at() > ours.expires_at())
    }

    /// Takes the cached token's refresh token when it is newer than ours, so
    /// this instance never presents one that a peer has already rotated.
    fn learn_refresh_token(&mut self, token: &Token) {
        let Some(rt) = token.refresh_token() else {
            return;
        };
        let newer = self
            .refresh_token
            .as_ref()
            .is_none_or(|(_, issued)| token.issued_at() >= *issued);
        if newer {
            self.refresh_token = Some((rt.clone(), token.issued_at()));
        }
    }

    fn holds_lease(&self) -> bool {
        self.lease_until.is_some_and(|until| self.now < until)
    }

    fn release_lease(&mut self) {
        if self.lease_until.take().is_some() {
            self.outbox.push_back(Action::ReleaseLease);
        }
    }

    /// Tells readers when the current token expires (once per token).
    fn check_expiry(&mut self) {
        let expired = self
            .current
            .as_ref()
            .is_some_and(|t| !t.is_valid_at(self.now));
        if expired && !self.expiry_published && self.phase != Phase::Stopped {
            self.expiry_published = true;
            self.publish();
        }
    }

    fn publish(&mut self) {
        self.outbox.push_back(Action::Publish(Snapshot {
            token: self.current.clone(),
            state: self.state.clone(),
            published_at: self.now,
            fetches: self.stats.tokens_fetched,
            skew_ms: self.skew_ms,
            lifetime_note: self.lifetime_note,
        }));
    }

    /// `base` jittered uniformly within ±50 %.
    fn jittered(&mut self, base: Duration) -> Duration {
        let ms = crate::time::duration_millis(base).max(2);
        Duration::from_millis(self.rng.u64(ms / 2..=ms + ms / 2))
    }
}

#[cfg(test)]
mod tests;
