//! The sans-IO refresh state machine.
//!
//! [`RefreshMachine`] decides *when* to load the cache, take the lease,
//! fetch, store and publish; a driver decides *how*. It never reads a clock
//! and never performs I/O: every input carries `now` (a wall-clock reading
//! for token times and a monotonic one for durations), and every side
//! effect leaves as an [`Action`]. That makes it runnable under any
//! executor, in a plain thread, and in deterministic tests and simulations.
//!
//! ```
//! use freshtoken_core::*;
//!
//! let mut m = RefreshMachine::new(MachineConfig::default());
//! let t0 = Timestamp::from_secs(1_000);
//! m.handle_input(Input::Start, t0);
//! // No cache is configured, so the machine asks for a token straight away.
//! let Output::Action(Action::Fetch(request)) = m.poll_output() else { panic!() };
//! // It waits for the answer until the fetch's deadline.
//! assert!(matches!(m.poll_output(), Output::Timeout(_)));
//!
//! let answer = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(3600));
//! m.handle_input(Input::Fetched(request.id, Ok(answer)), t0);
//! let Output::Action(Action::Publish(snapshot)) = m.poll_output() else { panic!() };
//! assert_eq!(snapshot.state, RefreshState::Healthy);
//!
//! // Next wake-up: the (jittered) refresh time, well before expiry.
//! let Output::Timeout(at) = m.poll_output() else { panic!() };
//! assert!(at > t0 && at < Timestamp::from_secs(1_000 + 3600));
//! ```
//!
//! # The model in a page
//!
//! **Where the machine is** is one value, its phase: created; idle until
//! the current token's (jittered) refresh time; waiting for the answer to
//! one request; waiting for a peer that holds the lease; backing off after
//! a failure; failed (the grant was revoked: it re-reads the cache for a
//! live one); draining a shutdown; stopped. A refresh is a walk through
//! them: read the cache (a peer may have refreshed), take the lease, read
//! again under it, fetch, store, publish, give the lease back.
//!
//! **What outlives a refresh** sits in parts, each in its own module with
//! its own methods: what is served (the current token, a token a reader
//! rejected, the skew and lifetime notes, a store error: `served`), the
//! grant (the newest refresh token and its generation, the fetches given up
//! on: `grant`), the lease (until when it is ours, a release in flight, the
//! wait for a peer: `lease`), the follow-up a late answer leaves (`late`),
//! and shutdown (`shutdown`).
//!
//! **Requests and deadlines.** Every action that expects an answer (load,
//! lease, fetch, store, release) carries a [`RequestId`] and a deadline
//! (the fetch or cache timeout, shorter in a few documented cases, and
//! visible in the action). A request past its deadline has failed.
//!
//! **One timer table** (`timers`, after quinn-proto's): every deadline is a
//! named timer (a lease call's, the awaited request's, an early refresh a
//! reader asked for, the refresh time, a follower's or a revoked grant's
//! re-read, a backoff's retry, the token's expiry), each read from the
//! state it belongs to. The earliest is the [`Output::Timeout`]. The due
//! ones are handled in one pass, each once and in a fixed order, before
//! every input (so an input meets the state time has made, even from a
//! late driver) and after it (for a timer it made due); [`Input::Tick`]
//! is an input with nothing else in it. No handler runs another. **At most one request of each kind is in flight, always**, and
//! a lease request also waits for a release in flight (one lease call at a
//! time: a release carried out after a later grant would give it away).
//! A store of a rotated refresh token that is not durable yet never waits
//! for a lease call; it is retried several times per lease TTL, each
//! attempt ending while half of the lease is left.
//!
//! **One rule for answers that are not awaited.** An answer that comes
//! after its deadline is recognised by its id. Whatever the phase, the
//! machine learns from it (a rotated refresh token is the grant now: the
//! authority has spent the old one), serves and publishes its token when
//! it is better than the current one (after making it durable, when it
//! rotated the refresh token), and queues what it requires (store it, to
//! make it durable or to share it) as a *follow-up*, carried out at the
//! next step at which nothing is in flight, before any timer's work, and
//! under the lease (which is kept for it: when the answer rotated the
//! refresh token, a cache read or lease request in flight is given up on
//! while half of the lease is left, and at once when the lease is already
//! gone). It never preempts or duplicates the request in flight. An
//! `invalid_grant` for a refresh token that was rotated meanwhile says
//! nothing of the current grant: it counts as a transient failure.
//!
//! **Followers.** An instance that finds the lease busy waits for the
//! holder and reads the cache again: without a valid token, 25 ms ± 50 %
//! for a second after it lost its token, then up to 250 ms; with one, the
//! peer wait doubling at each busy answer up to a quarter of its token's
//! remaining validity, and never past its expiry. So it has the holder's
//! token within 50 ms of the later of the holder's store and its own
//! token's expiry (in that first second), and a long outage costs the
//! cache a few calls per follower, not two a second.
//!
//! **Two clocks.** Token times are wall-clock instants (they are shared
//! between processes); durations (backoff, peer waits, the lease, request
//! deadlines) are measured on the monotonic clock. The current token is
//! judged on its *token clock* ([`Now::token_clock`]): the wall clock, or
//! the moment its times count from (its fetch's sending, or its adoption)
//! advanced by the monotonic clock, whichever is later. A wall clock
//! stepped back never stretches its life; one stepped forward (a resume
//! from suspend) ages it at once, at the next tick. Two tokens' lives are
//! compared on the monotonic clock, each from its own anchor, and
//! snapshots carry the current one's ([`MonoLife`]) so readers judge by both
//! clocks too. An answer no newer than the token held is asked for again
//! after a quarter of the remaining life (at least the refresh floor), not
//! at once.
//!
//! **Events out.** What drivers log and count that the actions do not
//! show (a request given up on, a dead answer, what became of a reader's
//! 401, a late answer used, an adoption, a new token) comes out as an
//! [`Event`] from [`RefreshMachine::poll_event`]; [`MachineStats`] counts
//! the same events.
//!
//! These rules are checked by a model checker that explores every
//! interleaving of a small fleet (`core/tests/model_check.rs`), by the
//! properties of `core/tests/invariants.rs` and by the `machine` fuzz
//! target.
//!
//! # Refresh tokens
//!
//! The refresh token is machine state. [`Action::Fetch`] carries the newest
//! one known, so sources keep no memory of their own. Each carries a
//! *generation* ([`Token::generation`]): the answer to our own request is
//! one generation past the token we presented and always wins; a cached
//! token's refresh token replaces ours only when its generation is higher,
//! never because of wall-clock times another machine stamped. In a
//! refresh-token flow the cache is read, and the lease taken, before every
//! fetch; when the cache offers a lease the machine never fetches without
//! it, and a rotated refresh token is stored before the new access token is
//! published (a failed store keeps the lease and is retried first).
//! `invalid_grant` puts the machine in [`RefreshState::Failed`], from which
//! it re-reads the cache and recovers when a token of a live grant appears.
//!
//! # Shutdown
//!
//! [`Input::Shutdown`] is a flag on the normal path, not a second one: a
//! fetch, store or lease request in flight is finished (until its
//! deadline), a fetched token is stored, a follow-up carried out, then the
//! lease is given back and the release's answer awaited (until its
//! deadline), and only then [`Action::Stop`]. A driver's `shutdown` returns
//! after that, so the next process is granted the lease at once.

mod answer;
mod config;
mod events;
mod fifo;
mod grant;
mod io;
mod late;
mod lease;
#[cfg(feature = "mutants")]
#[doc(hidden)]
pub mod mutants;
mod served;
mod shutdown;
mod timers;

use answer::{Answer, Received};
pub use config::{MachineConfig, MachineStats};
pub use events::{Event, InvalidationOutcome};
use fifo::Fifo;
use grant::{Abandoned, Grant, GrantState, HeldRefreshToken, Origin};
pub use io::{
    Action, DegenerateLifetime, FetchRequest, Input, LeaseOutcome, MonoLife, Output, RefreshState,
    RequestId, Snapshot,
};
use late::FollowUp;
use lease::{Attempt, Lease, LeaseCall, HAND_ON_AFTER, ROTATED_STORES_PER_LEASE};
use served::Served;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{CacheError, CacheErrorKind, FetchError, FetchErrorKind};
use crate::jitter::Jitter;
use crate::lifetime::{LifetimeNote, LifetimePolicy};
use crate::secret::RefreshToken;
use crate::time::{MonoTime, Now, Timestamp};
use crate::token::{Token, TokenId, TokenResponse};

/// Why a cache read was made, which decides what comes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheRead {
    /// Before taking the lease: a peer may have refreshed already.
    BeforeLease,
    /// With the lease held: a peer may have stored between our first read
    /// and our lease, so look once more before asking the authority.
    UnderLease,

    /// The grant was revoked: has a peer stored a token of a live grant?
    AfterRevocation,
}

/// A request in flight: what it is for, and until when we wait for it.
#[derive(Debug, Clone)]
struct Request {
    id: RequestId,
    deadline: MonoTime,
    kind: RequestKind,
}

#[derive(Debug, Clone)]
enum RequestKind {
    /// The lease call in flight (an extension or a release: see
    /// [`LeaseCall`]), awaited before the next lease request (one lease
    /// call at a time: a release carried out after a later grant would give
    /// that grant away), or before `Stop` (`then_lease: None`).
    LeaseCall {
        /// The lease request to send once it is settled (its `renewal`).
        then_lease: Option<bool>,
    },
    Load(CacheRead),
    Lease {
        /// When it was sent: the cache's TTL runs from a moment after it,
        /// so the lease is counted from here (never longer than it lasts).
        sent: MonoTime,
        /// A renewal before a fetch (the cache was just read under the
        /// lease): once granted, fetch without reading again, so a slow
        /// cache cannot keep a holder renewing and reading for ever.
        renewal: bool,
    },
    Fetch {
        /// When it was sent (token lifetimes count from here, on both
        /// clocks).
        sent: Now,
        /// The generation of the refresh token it presented.
        generation: u64,
        /// How long it was given (its deadline from its send).
        timeout: Duration,
    },
    Store {
        token: Arc<Token>,
        /// `token` carries a refresh token that the authority rotated and
        /// no cache holds yet.
        rotated: bool,
        /// Publish `token` once it is stored (it carries a rotated refresh
        /// token, which must be durable before anyone acts on it).
        publish_after: bool,
        /// The token was dead on arrival (it expired in transit, or by our
        /// clock): it is stored only for its rotated refresh token, and the
        /// fetch counts as failed with this error once it is. (Boxed: it is
        /// rare, and inline it made every phase 56 bytes larger.)
        failed: Option<Box<FetchError>>,
    },
}

/// Why a token is stored, which decides what follows the store.
#[derive(Debug, Clone)]
enum StoreFor {
    /// To share it: it carries no new refresh token.
    Sharing,
    /// To make its rotated refresh token durable (it is already published,
    /// or is not to be).
    Rotated,
    /// To make its rotated refresh token durable, then publish it.
    RotatedThenPublish,
    /// To make the rotated refresh token of a dead-on-arrival answer
    /// durable; then the fetch counts as failed.
    Failed(FetchError),
}

impl StoreFor {
    fn is_rotated(&self) -> bool {
        !matches!(self, StoreFor::Sharing)
    }
}

/// What a backoff waits to do again.
#[derive(Debug, Clone)]
enum Retry {
    /// Refresh (read the cache, take the lease, fetch).
    Refresh,
    /// Store this token, which carries a rotated refresh token that is not
    /// yet durable; nothing else happens before it is.
    StoreRotated(Arc<Token>),
}

impl Retry {
    /// Whether the lease must be held through the wait whatever the cache
    /// says (a rotated refresh token is not durable yet).
    fn keeps_the_lease(&self) -> bool {
        matches!(self, Retry::StoreRotated(_))
    }
}

/// Where the machine is. Exactly one request is in flight in
/// [`Waiting`](Phase::Waiting) and [`Draining`](Phase::Draining) (and
/// possibly a lease extension in [`Backoff`](Phase::Backoff)); none in the
/// others.
#[derive(Debug, Clone)]
enum Phase {
    /// Before `Start`.
    Created,
    /// The current token is good; refresh at `refresh_at`, or at `early`
    /// (monotonic) when a consumer reported it rejected.
    Idle {
        refresh_at: Timestamp,
        early: MonoTime,
    },
    /// A request is in flight.
    Waiting(Request),
    /// A peer holds the lease: re-read the cache (and ask for the lease
    /// again) at `recheck_at`. Peers never fetch past a lease the cache
    /// offers: a live holder keeps it through its retries and hands it on
    /// after a few failures, and a dead holder's lease lapses by its TTL.
    PeerWait { recheck_at: MonoTime },
    /// The last attempt failed; try again at `retry_at` (once a lease
    /// extension sent for the wait is settled).
    Backoff { retry_at: MonoTime, then: Retry },
    /// The grant is gone; re-read the cache at `recheck_at` for a live one.
    Failed { recheck_at: MonoTime },
    /// Shutting down: waiting for the answer to this request, then `Stop`;
    /// a failed store of a rotated refresh token is retried until `until`.
    Draining { request: Request, until: MonoTime },
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
/// let now = Timestamp::from_secs(1_700_000_000); // a driver reads its clocks
/// machine.handle_input(Input::Start, now);
/// let wake_at = loop {
///     match machine.poll_output() {
///         // Carry the action out; feed its result back later, with its id.
///         Output::Action(Action::Fetch(request)) => assert_eq!(request.attempt, 1),
///         Output::Action(other) => unreachable!("no cache, so only a fetch: {other:?}"),
///         Output::Timeout(at) => break at,
///     }
/// };
/// // Waiting for the fetch's answer: until its deadline, the fetch timeout.
/// assert_eq!(wake_at, now + MachineConfig::default().fetch_timeout);
/// ```
//
// Layout: the fields are in a fixed order (`repr(C)`), those every input
// reads first: the phase, the clocks, the lease, and the current token at
// the head of `Served`; then the queues the driver drains; the statistics
// last. A simulated fleet of a hundred thousand machines does not fit in
// the processor's caches, and each input then waits for every cache line
// of its machine it reads: fewer lines, less waiting.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct RefreshMachine {
    phase: Phase,
    now: Now,
    /// The earliest timer's deadline (`Timestamp::MAX`: none) as last read
    /// at `now`, since when nothing changed the timers; `None`: to be read.
    /// [`poll_output`](Self::poll_output) answers from it, and the next
    /// input's first look for a timer due too, when its clocks kept their
    /// offset (see [`RefreshMachine::expire_timers`]).
    earliest: Option<Timestamp>,
    /// What a late answer left to do (see [`FollowUp`]). Boxed, like the
    /// other rare parts (a degenerate answer's record, a store's error, a
    /// dead-on-arrival answer's error): out of line, they leave the parts
    /// every input reads on fewer of the processor's cache lines, which is
    /// what a large simulated fleet spends its time waiting for.
    follow_up: Option<Box<FollowUp>>,
    /// When each timer last fired (see [`timers::Fired`]). Boxed: it is
    /// read only when a timer is due, and inline its 168 bytes came
    /// between the parts every input reads.
    fired: Box<timers::Fired>,
    /// Until when the cache's lease is ours, and the lease call in flight.
    lease: Lease,
    /// What readers are served, and how renewal is going.
    served: Served,
    outbox: Fifo<Action>,
    events: Fifo<Event>,
    rng: fastrand::Rng,
    next_id: u64,
    /// Shared by every machine built from one configuration (a simulated
    /// fleet's hundred thousand): only the seed differs between them.
    config: Arc<MachineConfig>,
    /// The refresh under way: its failures and its wait for a peer.
    attempt: Attempt,
    /// The newest refresh token known, the revoked one, the fetches given up on.
    grant: GrantState,
    stats: MachineStats,
}

impl RefreshMachine {
    /// Asks the processor to bring the parts of this machine kept out of
    /// line (its timers' record of firing) into its caches: the simulator
    /// does so for the next event's machine, with the machine itself (see
    /// `sim::prefetch`).
    #[cfg(feature = "sim")]
    pub(crate) fn prefetch_out_of_line(&self) {
        crate::sim::prefetch(&*self.fired);
    }

    /// A machine with this configuration, waiting for [`Input::Start`].
    pub fn new(config: MachineConfig) -> Self {
        let seed = config.seed;
        Self::with_shared_config(Arc::new(config), seed)
    }

    /// A machine with a configuration shared with others, its random draws
    /// seeded with `seed` instead of [`MachineConfig::seed`]. Many machines
    /// in one process (a simulated fleet) then hold one copy of it.
    ///
    /// ```
    /// use freshtoken_core::{MachineConfig, RefreshMachine};
    /// use std::sync::Arc;
    ///
    /// let config = Arc::new(MachineConfig::default());
    /// let fleet: Vec<RefreshMachine> = (0..3)
    ///     .map(|seed| RefreshMachine::with_shared_config(config.clone(), seed))
    ///     .collect();
    /// assert_eq!(fleet.len(), 3);
    /// ```
    pub fn with_shared_config(config: Arc<MachineConfig>, seed: u64) -> Self {
        let grant = config.refresh_token.clone().map(|token| Grant {
            token: HeldRefreshToken::Configured(token),
            generation: 0,
            origin: Origin::Configured,
        });
        RefreshMachine {
            rng: fastrand::Rng::with_seed(seed),
            config,
            phase: Phase::Created,
            earliest: None,
            now: Now::new(Timestamp::EPOCH, MonoTime::ZERO),
            outbox: Fifo::default(),
            events: Fifo::default(),
            next_id: 0,
            served: Served::default(),
            grant: GrantState {
                newest: grant,
                revoked: None,
                abandoned: VecDeque::new(),
            },
            lease: Lease::default(),
            attempt: Attempt::default(),
            follow_up: None,
            fired: Box::default(),
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
        self.served.current.as_ref()
    }

    /// The refresh token the next fetch would present, and its generation.
    pub fn refresh_token(&self) -> Option<(&RefreshToken, u64)> {
        self.grant
            .newest
            .as_ref()
            .map(|g| (g.token.get(), g.generation))
    }

    /// How renewal is going.
    pub fn state(&self) -> &RefreshState {
        self.served.state.get()
    }

    /// Feeds everything that decides the machine's future behaviour into
    /// `hasher` (its configuration, counters and clock readings aside), so
    /// that a model checker can tell states apart without comparing them.
    /// Not part of the stable API.
    #[doc(hidden)]
    pub fn digest(&self, hasher: &mut impl std::hash::Hasher) {
        use std::fmt::Write as _;
        use std::hash::Hash;
        struct Into<'a, H>(&'a mut H);
        impl<H: std::hash::Hasher> std::fmt::Write for Into<'_, H> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.write(s.as_bytes());
                Ok(())
            }
        }
        let token = |t: &Token, h: &mut _| {
            (t.id(), t.stale_at(), t.expires_at(), t.generation()).hash(h);
        };
        (
            self.served.anchor.map(|a| (a.wall, a.mono)),
            self.served.wanted,
        )
            .hash(hasher);
        self.rng.clone().u64(..).hash(hasher);
        self.next_id.hash(hasher);
        match &self.served.current {
            Some(t) => token(t, hasher),
            None => 0u8.hash(hasher),
        }
        (
            self.served.expiry_published,
            self.served.rejected,
            self.served.last_invalidation,
        )
            .hash(hasher);
        (self.lease, self.attempt, self.served.degenerate_streak).hash(hasher);
        self.fired.hash(hasher);
        (self.served.skew_ms, self.served.store_error.is_some()).hash(hasher);
        if let Some(g) = &self.grant.newest {
            (g.token.get().fingerprint(), g.generation, g.origin as u8).hash(hasher);
        }
        self.grant
            .revoked
            .as_ref()
            .map(|r| r.get().fingerprint())
            .hash(hasher);
        for a in &self.grant.abandoned {
            (a.id, a.sent.wall, a.sent.mono, a.generation).hash(hasher);
        }
        if let Some(f) = &self.follow_up {
            token(&f.token, hasher);
        }
        let mut into = Into(hasher);
        let _ = write!(
            into,
            "{:?}{:?}{:?}{:?}",
            self.phase,
            self.follow_up.as_ref().map(|f| &f.store_for),
            self.served.state.get(),
            self.served.degenerate,
        );
    }

    /// Whether the machine is idle until its next refresh (no refresh under
    /// way, none failing). Not part of the stable API: the model checker's.
    #[doc(hidden)]
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle { .. })
    }

    /// Whether `Stop` has been emitted.
    pub fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped)
    }

    /// Feeds what happened at `now`: a [`Timestamp`] (both clocks read the
    /// same) or a [`Now`] with a separate monotonic reading. A monotonic
    /// reading that goes back is taken as standing still.
    #[inline]
    pub fn handle_input(&mut self, input: Input, now: impl Into<Now>) {
        self.handle(Received::from(input), now.into());
    }

    /// [`handle_input`](Self::handle_input)'s work, on the input converted.
    fn handle(&mut self, input: Received, now: Now) {
        let before = self.now;
        self.now = Now::new(now.wall, now.mono.max(self.now.mono));
        let earliest = self
            .earliest
            .take()
            .filter(|_| self.now.same_offset(before));
        // The timers due are handled first (the driver may be late, or the
        // input may come at a deadline), so the input meets the state that
        // time has made; and again after it, for a timer it made due.
        if !self.is_stopped() {
            self.expire_timers(earliest);
        }
        match input {
            _ if self.is_stopped() => self.ignore(),
            Received::Shutdown => self.shutdown(),
            Received::Start if matches!(self.phase, Phase::Created) => self.begin_refresh(),
            Received::Start => self.ignore(),
            Received::Tick => {}
            Received::Invalidate(id) => self.invalidate(id),
            Received::NeedValidity(needed) => self.need_validity(needed),
            Received::Answer(answer) => self.on_answer(answer),
        }
        if !self.is_stopped() {
            self.earliest = self.expire_timers(None);
        }
    }

    /// The next thing to do: an action, or the instant to wake up at.
    pub fn poll_output(&mut self) -> Output {
        if let Some(action) = self.outbox.pop_front() {
            return Output::Action(action);
        }
        let earliest = match self.earliest {
            Some(at) => at,
            None => *self
                .earliest
                .insert(self.next_timer().unwrap_or(Timestamp::MAX)),
        };
        Output::Timeout(self.timeout_after(earliest))
    }

    fn ignore(&mut self) {
        self.stats.ignored_inputs += 1;
    }

    fn new_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn is_refresh_flow(&self) -> bool {
        self.grant.is_refresh_flow()
    }

    /// A request's deadline passed: it failed, and a late answer is still
    /// recognised.
    fn timed_out(&mut self, request: Request) {
        self.emit(Event::TimedOut {
            id: request.id,
            fetch: matches!(request.kind, RequestKind::Fetch { .. }),
        });
        let why = |timeout: Duration| format!("timed out: no answer within {timeout:?}");
        let cache_error = |timeout| CacheError::new(CacheErrorKind::Unavailable, why(timeout));
        match request.kind {
            RequestKind::LeaseCall { then_lease } => self.after_lease_call(then_lease),
            RequestKind::Load(read) => {
                let error = cache_error(self.config.cache_timeout);
                self.on_cache_loaded(Err(error), read)
            }
            RequestKind::Lease { sent, renewal } => {
                self.on_lease(Err(cache_error(self.config.cache_timeout)), sent, renewal)
            }
            RequestKind::Fetch {
                generation,
                sent,
                timeout,
            } => {
                self.abandon(request.id, sent, generation);
                let error = FetchError::transient(why(timeout));
                self.on_fetch_failed(error, false);
            }
            RequestKind::Store {
                token,
                rotated,
                publish_after,
                failed,
            } => {
                let error = cache_error(self.config.cache_timeout);
                self.on_stored(Err(error), token, rotated, publish_after, failed)
            }
        }
    }

    /// An answer: to the request in flight, to a lease extension, or late.
    fn on_answer(&mut self, answer: Answer) {
        let id = answer.id();
        if self.lease.call.is_some_and(|c| c.id == id) {
            self.settle_lease_call(Some(&answer));
            let awaited = match &self.phase {
                Phase::Waiting(r) | Phase::Draining { request: r, .. } => r.id == id,
                _ => false,
            };
            if !awaited {
                // (The backoff's retry may have waited for it: the timers'
                // pass after this input sends it.)
                return;
            }
        }
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Waiting(request) if request.id == id => self.answered(request, answer),
            Phase::Draining { request, until } if request.id == id => {
                self.drained(request, until, answer)
            }
            phase => {
                self.phase = phase;
                self.late(answer);
            }
        }
    }

    /// The answer to the request in flight.
    fn answered(&mut self, request: Request, answer: Answer) {
        match (request.kind, answer) {
            (RequestKind::LeaseCall { then_lease }, _) => self.after_lease_call(then_lease),
            (RequestKind::Load(read), Answer::CacheLoaded(_, result)) => {
                self.on_cache_loaded(result, read)
            }
            (RequestKind::Lease { sent, renewal }, Answer::Lease(_, result)) => {
                self.on_lease(result, sent, renewal)
            }
            (
                RequestKind::Fetch {
                    sent, generation, ..
                },
                Answer::Fetched(_, result),
            ) => match *result {
                Ok(response) => {
                    let (token, rotated) = self.accept_fetched(response, sent, generation);
                    let dead = Self::dead_on_arrival(&token, self.now.token_clock(sent));
                    if dead.is_some() {
                        self.emit(Event::DeadOnArrival { id: request.id });
                    }
                    match dead {
                        None => self.on_fetched(request.id, token, rotated, sent),
                        // The rotated refresh token is the grant now, dead
                        // access token or not: make it durable, then back off.
                        Some(error) if rotated && self.config.cache => {
                            self.stats.fetch_failures += 1;
                            self.send_store(token, StoreFor::Failed(error), false);
                        }
                        Some(error) => self.on_fetch_failed(error, true),
                    }
                }
                // The refresh token it presented was rotated meanwhile (a
                // late answer brought the next one): its refusal says
                // nothing of the grant we hold now.
                Err(error)
                    if error.kind() == FetchErrorKind::GrantRevoked
                        && self
                            .grant
                            .newest
                            .as_ref()
                            .is_some_and(|g| g.generation > generation) =>
                {
                    let error = FetchError::transient(format!(
                        "a refresh token rotated meanwhile was refused ({error})"
                    ));
                    self.on_fetch_failed(error, true)
                }
                Err(error) => self.on_fetch_failed(error, true),
            },
            (
                RequestKind::Store {
                    token,
                    rotated,
                    publish_after,
                    failed,
                },
                Answer::Stored(_, result),
            ) => self.on_stored(result, token, rotated, publish_after, failed),
            // The right id with the wrong kind of answer: a driver bug.
            // Keep waiting for the real answer (or the deadline).
            (kind, _) => {
                self.ignore();
                self.phase = Phase::Waiting(Request {
                    id: request.id,
                    deadline: request.deadline,
                    kind,
                });
            }
        }
    }

    /// Starts a refresh: from the cache when there is one, else a fetch.
    fn begin_refresh(&mut self) {
        if !self.config.cache {
            self.fetch();
        } else if self.holds_lease_for_a_fetch() {
            // Still holding the lease from a failed attempt: retry directly.
            self.read_cache(CacheRead::UnderLease);
        } else {
            self.read_cache(CacheRead::BeforeLease);
        }
    }

    fn send(&mut self, kind: RequestKind, timeout: Duration) -> RequestId {
        let id = self.new_id();
        self.phase = Phase::Waiting(Request {
            id,
            deadline: self.now.mono + timeout,
            kind,
        });
        id
    }

    fn read_cache(&mut self, read: CacheRead) {
        let id = self.send(RequestKind::Load(read), self.config.cache_timeout);
        let newer_than = self.served.current.as_ref().map(|t| t.expires_at());
        self.outbox.push_back(Action::LoadCache { id, newer_than });
    }

    fn on_cache_loaded(&mut self, result: Result<Option<Arc<Token>>, CacheError>, read: CacheRead) {
        let cached = match result {
            Ok(cached) => cached,
            Err(error) if read == CacheRead::AfterRevocation => {
                let _ = error;
                return self.stay_failed();
            }
            // A refresh token is single-use: without the cache we cannot
            // know whether a peer has already rotated ours, and presenting
            // a spent one makes the authority revoke the whole grant.
            // Waiting for the cache is the lesser harm.
            Err(error) if self.is_refresh_flow() => {
                return self.retry_later(FetchError::transient(format!(
                    "not refreshing while the shared cache is unreadable ({error}): \
                     a peer may have rotated the refresh token"
                )));
            }
            // For other flows a broken cache is a miss: availability beats load.
            Err(_) => None,
        };
        if read == CacheRead::AfterRevocation {
            let recovered = cached.as_ref().is_some_and(|t| self.learn_live_grant(t));
            if !recovered {
                return self.stay_failed();
            }
            self.attempt.failures = 0;
            self.served.state.set(RefreshState::Starting);
        }
        if let Some(token) = cached {
            self.learn_refresh_token(&token);
            if self.is_better(&token, self.now) {
                self.emit(Event::Adopted { token: token.id() });
                self.served.lifetime_note = None;
                self.attempt.failures = 0;
                self.served.state.set(RefreshState::Healthy);
                self.make_current(token.clone(), self.now);
                self.publish();
                // Done, unless the adopted token is itself due for renewal
                // (a stale one adopted at start-up is served while we fetch).
                let refresh_at = self.config.jitter.refresh_at(&token, &mut self.rng);
                if refresh_at > self.token_now() {
                    self.release_lease();
                    self.idle_until(refresh_at);
                    return;
                }
            } else if read == CacheRead::AfterRevocation {
                self.publish();
            }
        }
        match read {
            CacheRead::BeforeLease | CacheRead::AfterRevocation => self.acquire_lease(),
            // Renew a lease that would lapse during the fetch (a slow read
            // under it): a peer must not present the refresh token while
            // our request with it is out.
            // (Unless no lease could: a configuration whose lease TTL is
            // below the fetch timeout.)
            CacheRead::UnderLease
                if !self.holds_lease_for_a_fetch()
                    && self.config.lease_ttl > self.fetch_deadline() =>
            {
                self.request_lease(true)
            }
            CacheRead::UnderLease => self.fetch(),
        }
    }

    /// Still no live grant: look again at the permanent-error interval.
    fn stay_failed(&mut self) {
        let interval = self.config.backoff.permanent_interval();
        self.phase = Phase::Failed {
            recheck_at: self.now.mono + self.jittered(interval),
        };
    }

    fn fetch(&mut self) {
        // What happened since the refresh began (a late answer, most
        // often) may have made it moot: never ask for a token while the
        // current one is not due.
        if !self.refresh_due() {
            self.release_lease();
            return self.idle_until_refresh();
        }
        self.stats.fetches += 1;
        self.attempt.peer_wait = None;
        let generation = self.grant.newest.as_ref().map_or(0, |g| g.generation);
        let sent = self.now;
        let timeout = self.fetch_deadline();
        let kind = RequestKind::Fetch {
            sent,
            generation,
            timeout,
        };
        let id = self.send(kind, timeout);
        let mut request = FetchRequest::new(
            self.attempt.failures.saturating_add(1),
            self.grant.newest.as_ref().map(|g| g.token.get().clone()),
        );
        request.id = id;
        request.timeout = timeout;
        self.outbox.push_back(Action::Fetch(request));
    }

    /// How long to wait for a fetch. A client-credentials fetch follows the
    /// current token's remaining validity: it is abandoned one
    /// `min_fetch_timeout` before the token expires (never sooner than that
    /// after it was sent, never later than the fetch timeout), so a hung
    /// request leaves time for a retry while the token is still valid. Its
    /// late answer is still used. The first fetch has no validity to follow
    /// and a refresh-token fetch must not be retried lightly (the authority
    /// may have rotated the token it presented): both keep the fetch timeout.
    fn fetch_deadline(&self) -> Duration {
        let full = self.config.fetch_timeout;
        let Some(current) = self.served.current.as_ref() else {
            return full;
        };
        if self.is_refresh_flow() {
            return full;
        }
        let floor = self.config.min_fetch_timeout.min(full);
        let remaining = current
            .expires_at()
            .saturating_duration_since(self.token_now());
        remaining
            .saturating_sub(self.config.min_fetch_timeout)
            .clamp(floor, full)
    }

    fn on_fetched(&mut self, id: RequestId, token: Arc<Token>, rotated: bool, sent: Now) {
        self.stats.tokens_fetched += 1;
        self.attempt.failures = 0;
        self.attempt.unreached = 0;
        self.served.state.set(RefreshState::Healthy);
        if self.current_outlives(&token, sent) {
            // Ours outlives the answer (a late answer served meanwhile, or
            // an authority handing back its cached token, counted down):
            // keep it (published tokens never go backwards), and ask again
            // later, not at once (ours is due already); a rotated refresh
            // token is still made durable.
            if rotated && self.config.cache {
                return self.send_store(token, StoreFor::Rotated, false);
            }
            self.publish();
            self.release_lease();
            return self.idle_after_no_newer();
        }
        self.make_current(token.clone(), sent);
        self.emit(Event::refreshed(id, &token));
        if !self.config.cache {
            self.publish();
            self.idle_until_refresh();
            return;
        }
        // A rotated refresh token that is lost is a lost grant: make it
        // durable before anyone can act on the new access token.
        let store_for = if rotated {
            StoreFor::RotatedThenPublish
        } else {
            self.publish();
            StoreFor::Sharing
        };
        self.send_store(token, store_for, false);
    }

    fn send_store(&mut self, token: Arc<Token>, store_for: StoreFor, draining: bool) {
        let (rotated, publish_after, failed) = match store_for {
            StoreFor::Sharing => (false, false, None),
            StoreFor::Rotated => (true, false, None),
            StoreFor::RotatedThenPublish => (true, true, None),
            StoreFor::Failed(error) => (true, false, Some(Box::new(error))),
        };
        let kind = RequestKind::Store {
            token: token.clone(),
            rotated,
            publish_after,
            failed,
        };
        let until = match &self.phase {
            Phase::Draining { until, .. } => *until,
            _ => self.drain_bound(),
        };
        // A rotated refresh token's store ends with half the lease left, so
        // that a hung store is given up on while the lease is still ours,
        // and the retry (which renews the lease first) comes before any
        // peer can take it and present the spent refresh token.
        let timeout = self.cache_timeout_keeping_the_lease(rotated);
        let id = self.send(kind, timeout);
        if draining {
            if let Phase::Waiting(mut request) = std::mem::replace(&mut self.phase, Phase::Stopped)
            {
                request.deadline = request.deadline.min(until.max(self.now.mono));
                self.phase = Phase::Draining { request, until };
            }
        }
        self.outbox.push_back(Action::Store { id, token, timeout });
    }

    fn on_stored(
        &mut self,
        result: Result<(), CacheError>,
        token: Arc<Token>,
        rotated: bool,
        publish_after: bool,
        failed: Option<Box<FetchError>>,
    ) {
        // Readers see a cache that cannot be written, and when it can be
        // again, without a log.
        if result.is_ok() {
            let covered = self.follow_up.as_ref().is_some_and(|f| {
                f.token.generation() <= token.generation()
                    && f.token.expires_at() <= token.expires_at()
            });
            if covered {
                self.follow_up = None;
            }
        }
        let was_failing = self.served.store_error.is_some();
        self.served.store_error = result.as_ref().err().cloned().map(Box::new);
        if was_failing != self.served.store_error.is_some() && !publish_after {
            self.publish();
        }
        match (result, failed) {
            // Durable now; the fetch itself failed: back off (under the lease).
            (Ok(()), Some(error)) => self.retry_later(*error),
            (Ok(()), None) => {
                if publish_after {
                    self.publish();
                }
                self.release_lease();
                self.idle_until_refresh();
            }
            (Err(error), _) if rotated => {
                // The cache still holds the spent refresh token: a peer that
                // takes the lease now would present it. Keep the lease and
                // store again before anything else. The token itself is
                // good (unless it was dead on arrival), so readers get it now.
                if publish_after {
                    self.publish();
                }
                let error = FetchError::transient(format!(
                    "could not store the rotated refresh token ({error})"
                ));
                self.backoff(error, Retry::StoreRotated(token));
            }
            // A failed store of a token without a new refresh token is a
            // warning (the driver logs it): only sharing it failed.
            (Err(_), _) => {
                if publish_after {
                    self.publish();
                }
                self.release_lease();
                self.idle_until_refresh();
            }
        }
    }

    /// `answered`: the source answered with the error (so the authority
    /// rotated nothing), as opposed to a fetch given up on at its deadline.
    fn on_fetch_failed(&mut self, error: FetchError, answered: bool) {
        self.stats.fetch_failures += 1;
        // A holder whose requests keep failing without reaching an
        // answering authority (no HTTP status: its network, DNS or TLS is
        // broken, or its fetches hang) hands the lease on, so another
        // instance probes next: a holder with a broken network must not
        // starve a healthy one. An HTTP error is the authority's own
        // answer, which another instance would get too: the holder keeps
        // the lease and the fleet sends one retry stream. Never after a
        // timeout in a refresh-token flow, where the authority may have
        // rotated the token we presented.
        let unreached = error.status().is_none() && (answered || !self.is_refresh_flow());
        self.attempt.unreached = if unreached {
            self.attempt.unreached.saturating_add(1)
        } else {
            0
        };
        let hand_on = unreached && self.attempt.unreached.is_multiple_of(HAND_ON_AFTER);
        self.retry_later_keeping(error, !hand_on);
    }

    /// Publishes the failure and schedules the next attempt by the backoff
    /// (or, when the grant is gone, waits for a live one).
    fn retry_later(&mut self, error: FetchError) {
        self.retry_later_keeping(error, true);
    }

    /// [`retry_later`](Self::retry_later); `keep_lease`: hold the lease (if
    /// we have it) through the wait, else hand it on now.
    fn retry_later_keeping(&mut self, error: FetchError, keep_lease: bool) {
        if error.kind() == FetchErrorKind::GrantRevoked {
            self.attempt.failures = self.attempt.failures.saturating_add(1);
            self.release_lease();
            self.grant.revoked = self.grant.newest.take().map(|g| g.token);
            self.served.state.set(RefreshState::Failed { error });
            self.publish();
            if self.config.cache {
                self.stay_failed();
            } else {
                self.phase = Phase::Failed {
                    recheck_at: MonoTime::MAX,
                };
            }
            return;
        }
        if !keep_lease {
            self.release_lease();
        }
        self.backoff(error, Retry::Refresh);
    }

    fn backoff(&mut self, error: FetchError, then: Retry) {
        self.attempt.failures = self.attempt.failures.saturating_add(1);
        let expired = self
            .served
            .current
            .as_ref()
            .is_none_or(|t| !t.is_valid_at(self.token_now()));
        let mut delay =
            self.config
                .backoff
                .delay_for(&error, self.attempt.failures, expired, &mut self.rng);
        // A wait drawn while the token is valid must not outlast it by more
        // than a wait drawn once it has expired: the application would be
        // without a token for the rest of a long backoff step (or of a long
        // Retry-After).
        let permanent = matches!(
            error.kind(),
            FetchErrorKind::Permanent | FetchErrorKind::GrantRevoked
        );
        if let (false, false, Some(t)) = (expired, permanent, &self.served.current) {
            let until_expiry = t.expires_at().saturating_duration_since(self.token_now());
            if delay > until_expiry {
                let after = self.config.backoff.delay_for(
                    &error,
                    self.attempt.failures,
                    true,
                    &mut self.rng,
                );
                delay = delay.min(until_expiry.saturating_add(after));
            }
        }
        if then.keeps_the_lease() {
            // Several attempts per lease TTL, the next one before half of
            // the lease we hold is gone.
            delay = delay.min(self.config.lease_ttl / ROTATED_STORES_PER_LEASE);
            delay = self.within_the_lease(delay);
        }
        // A retry always waits a little, whatever the configuration (a
        // backoff of a millisecond can draw zero): never a loop of
        // attempts within one instant.
        let delay = delay.max(Duration::from_millis(1));
        let retry_at = self.now.mono + delay;
        // Keep the lease through the wait, so peers keep waiting for us
        // rather than each hitting a failing authority: a fleet then sends
        // one request per retry, not one per instance. When the lease would
        // lapse first, stretch it over the wait (its holder may renew it).
        // While a rotated refresh token is not durable, renew at every
        // step: the store that follows must end with the lease held.
        // (One lease call at a time: not while one is in flight.)
        match self.lease.until {
            Some(until)
                if self.lease.call.is_none()
                    && (then.keeps_the_lease()
                        || until <= retry_at + self.config.fetch_timeout) =>
            {
                let id = self.new_id();
                let ttl = delay.saturating_add(self.config.lease_ttl);
                let timeout = self.cache_timeout_keeping_the_lease(then.keeps_the_lease());
                self.outbox
                    .push_back(Action::AcquireLease { id, ttl, timeout });
                self.lease.call = Some(LeaseCall {
                    id,
                    deadline: self.now.mono + timeout,
                    extension_until: Some(retry_at + self.config.lease_ttl),
                    release_after: false,
                });
            }
            _ => {}
        }
        self.served.state.set(RefreshState::Retrying {
            error,
            attempt: self.attempt.failures,
            next_attempt: self.now.wall_at(retry_at),
        });
        self.phase = Phase::Backoff { retry_at, then };
        self.publish();
    }

    /// `base` jittered uniformly within ±50 %.
    fn jittered(&mut self, base: Duration) -> Duration {
        let ms = crate::time::duration_millis(base).max(2);
        Duration::from_millis(self.rng.u64(ms / 2..=ms.saturating_add(ms / 2)))
    }
}

#[cfg(test)]
mod tests;
