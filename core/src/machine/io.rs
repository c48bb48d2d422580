//! What goes into and comes out of the [`RefreshMachine`](super::RefreshMachine).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{CacheError, FetchError};
use crate::lifetime::LifetimeNote;
use crate::secret::RefreshToken;
use crate::time::{MonoTime, Now, Timestamp};
use crate::token::{Token, TokenId, TokenResponse, TokenStatus};

/// Which request an answer belongs to.
///
/// Every action that expects an answer carries one, and the answer carries
/// it back, so the machine recognises an answer that arrives after it gave
/// up on the request (a fetch past its deadline, a lease after shutdown).
/// Ids are unique per machine and increase.
///
/// ```
/// use freshtoken_core::*;
///
/// let mut m = RefreshMachine::new(MachineConfig::default());
/// m.handle_input(Input::Start, Timestamp::from_secs(1));
/// let Output::Action(Action::Fetch(request)) = m.poll_output() else { panic!() };
/// // The answer names the request it answers.
/// let answer = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(60));
/// m.handle_input(Input::Fetched(request.id, Ok(answer)), Timestamp::from_secs(1));
/// assert!(m.current().is_some());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
/// (The default, 0, is never issued: an answer with it is always stray.)
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The id as a number (for logs).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Something that happened, fed to [`RefreshMachine::handle_input`](super::RefreshMachine::handle_input).
///
/// Every order is legal: a result for an action that was never asked for,
/// or that the machine has given up on (a late `Fetched` after its
/// deadline, a second `Stored`), is recognised by its [`RequestId`] and
/// handled or ignored (and counted in
/// [`MachineStats::ignored_inputs`](super::MachineStats)), never a panic.
/// A late fetch answer that carries a rotated refresh token is still
/// learned and stored: that token is the grant now.
#[derive(Debug)]
pub enum Input {
    /// Begin: load the cache or fetch the first token.
    Start,
    /// Time has passed; act on any deadline that is due. A request whose
    /// deadline has passed counts as failed (timed out). (Every input acts
    /// on the deadlines due at its `now` first; this one carries nothing
    /// else.)
    Tick,
    /// The result of [`Action::LoadCache`].
    CacheLoaded(RequestId, Result<Option<Arc<Token>>, CacheError>),
    /// The result of [`Action::Fetch`].
    Fetched(RequestId, Result<TokenResponse, FetchError>),
    /// The result of [`Action::Store`].
    Stored(RequestId, Result<(), CacheError>),
    /// The result of [`Action::AcquireLease`]. An error means the lease's
    /// state is unknown: a client-credentials flow fetches anyway (a broken
    /// lease must not stop refreshing), a refresh-token flow retries later.
    Lease(RequestId, Result<LeaseOutcome, CacheError>),
    /// The result of [`Action::ReleaseLease`]. A shutdown waits for it (to
    /// its deadline), so the next process is granted the lease at once; an
    /// error is only reported (the lease then lapses by its TTL).
    Released(RequestId, Result<(), CacheError>),
    /// A consumer got a 401 with the token of this id.
    Invalidate(TokenId),
    /// A reader needs a token valid for at least this long (a long job, a
    /// presigned URL): when the current token is not, and a new one could
    /// be (its lifetime is long enough), the machine refreshes early, rate
    /// limited like invalidations, so many such reads cause one fetch.
    NeedValidity(Duration),
    /// Stop: finish the fetch or store in flight (bounded by its deadline),
    /// then emit [`Action::Stop`] and nothing after it.
    Shutdown,
}

impl Input {
    /// The request this input answers, if it is an answer.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Input::CacheLoaded(id, _)
            | Input::Fetched(id, _)
            | Input::Stored(id, _)
            | Input::Lease(id, _)
            | Input::Released(id, _) => Some(*id),
            _ => None,
        }
    }
}

/// The answer to a lease request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseOutcome {
    /// This instance holds the lease and should fetch.
    Granted,
    /// Another instance holds it and is fetching.
    Busy,
    /// The cache has no leases; fetch without one.
    Unsupported,
}

/// What the driver should do next, from [`RefreshMachine::poll_output`](super::RefreshMachine::poll_output).
///
/// A `Publish` carries its snapshot in an [`Arc`]: readers are handed one
/// anyway (the drivers' handles swap it in whole), and an action inline
/// would be the size of a snapshot, a few hundred bytes, in every queued
/// action of every machine (a third of a 100,000-instance simulation's
/// memory).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Carry out this action, and feed its result back as an [`Input`].
    Action(Action),
    /// Nothing to do until this instant: sleep until then (or until the
    /// heartbeat, whichever is sooner) and send [`Input::Tick`].
    /// [`Timestamp::MAX`] means "no deadline".
    Timeout(Timestamp),
}

/// A side effect for the driver to carry out.
///
/// The ones that expect an answer carry a [`RequestId`]; the driver feeds
/// the answer back with it. The machine keeps a deadline for each (the
/// fetch or cache timeout of its [`MachineConfig`](super::MachineConfig)),
/// so a driver needs no timeouts of its own: it keeps waiting for the
/// answer, and feeds it whenever it comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read the shared cache; answer with [`Input::CacheLoaded`].
    LoadCache {
        /// Answer with this id.
        id: RequestId,
        /// The machine holds a token that expires then and wants a better
        /// one: a layered cache asks its shared layers rather than stop at
        /// a local layer that holds the machine's own token.
        newer_than: Option<Timestamp>,
    },
    /// Take the cache's lease for `ttl`; answer with [`Input::Lease`].
    /// The holder may ask again to extend it.
    AcquireLease {
        /// Answer with this id.
        id: RequestId,
        /// How long the lease may be held before others may take it.
        ttl: Duration,
        /// How long the machine waits for the answer before it goes on
        /// without it (the lease then counts as it was before the request).
        /// Usually the cache timeout; shorter while the holder has a
        /// rotated refresh token that is not durable yet, so that a hung
        /// renewal is given up on while the lease is still held. A driver
        /// may bound the cache call by it.
        timeout: Duration,
    },
    /// Ask the source for a token; answer with [`Input::Fetched`] and the
    /// request's id.
    Fetch(FetchRequest),
    /// Write the token to the cache; answer with [`Input::Stored`].
    Store {
        /// Answer with this id.
        id: RequestId,
        /// How long the machine waits for the answer (the cache timeout,
        /// or less while a rotated refresh token is not durable: see
        /// [`Action::AcquireLease`]'s `timeout`).
        timeout: Duration,
        /// What to write.
        token: Arc<Token>,
    },
    /// Give the lease back; answer with [`Input::Released`]. Only a
    /// shutdown waits for the answer (to `timeout`): its `Stop` comes once
    /// the lease is given back, so a process that exits right after it
    /// leaves no lease behind.
    ReleaseLease {
        /// Answer with this id.
        id: RequestId,
        /// How long the machine waits for the answer (the cache timeout).
        timeout: Duration,
    },
    /// Make this snapshot what readers see. No answer is expected.
    Publish(Arc<Snapshot>),
    /// The machine has stopped; the driver should exit.
    Stop,
}

impl Action {
    /// The id the answer must carry, for the actions that expect one.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Action::LoadCache { id, .. }
            | Action::AcquireLease { id, .. }
            | Action::Store { id, .. }
            | Action::ReleaseLease { id, .. } => Some(*id),
            Action::Fetch(request) => Some(request.id),
            Action::Publish(_) | Action::Stop => None,
        }
    }
}

/// The default fetch timeout (that of [`MachineConfig`](super::MachineConfig)).
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a source needs to know to fetch.
///
/// ```
/// use freshtoken_core::FetchRequest;
/// assert_eq!(FetchRequest::first().attempt, 1);
/// assert!(FetchRequest::first().refresh_token.is_none());
/// assert_eq!(FetchRequest::first().timeout, std::time::Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchRequest {
    /// Answer with this id.
    pub id: RequestId,
    /// 1 for the first try after a success, counting up while fetches fail.
    pub attempt: u32,
    /// The newest refresh token known (from the last answer, the cache or
    /// the configuration), for refresh-token flows.
    pub refresh_token: Option<RefreshToken>,
    /// How long the machine waits for the answer (its deadline for this
    /// fetch, counted from when the action was emitted). A source should
    /// give up a little sooner, so its own timeout and the machine's do not
    /// race; the machine's deadline is shorter than the fetch timeout for
    /// client-credentials flows near expiry (see
    /// [`MachineConfig::min_fetch_timeout`](super::MachineConfig)).
    pub timeout: Duration,
}

impl FetchRequest {
    /// The first attempt, without a refresh token (for sources' tests).
    pub fn first() -> Self {
        FetchRequest {
            id: RequestId(0),
            attempt: 1,
            refresh_token: None,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    /// A request for attempt `attempt` with `refresh_token` (for sources'
    /// tests; the machine numbers its own).
    pub fn new(attempt: u32, refresh_token: Option<RefreshToken>) -> Self {
        FetchRequest {
            id: RequestId(0),
            attempt,
            refresh_token,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// How renewal is going, as readers see it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RefreshState {
    /// No token yet; the first one is being obtained.
    Starting,
    /// The last renewal succeeded (or a good token was adopted).
    Healthy,
    /// Renewals are failing; the last good token is still served while it
    /// is valid.
    Retrying {
        /// The last failure.
        error: FetchError,
        /// How many consecutive attempts have failed.
        attempt: u32,
        /// When the next attempt is due.
        next_attempt: Timestamp,
    },
    /// Renewal cannot succeed (the grant was revoked). The machine never
    /// presents the revoked refresh token again; it re-reads the shared
    /// cache at the permanent-error interval and recovers when a token of a
    /// live grant appears there. The last token is served until it expires.
    Failed {
        /// Why.
        error: FetchError,
    },
    /// The machine was shut down.
    Stopped,
}

impl RefreshState {
    /// The last error, when renewals are failing or have failed.
    pub fn last_error(&self) -> Option<&FetchError> {
        match self {
            RefreshState::Retrying { error, .. } | RefreshState::Failed { error } => Some(error),
            _ => None,
        }
    }
}

/// What readers see: the current token and how renewal is going.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The current token, if there is one (it may have expired since).
    pub token: Option<Arc<Token>>,
    /// How renewal is going.
    pub state: RefreshState,
    /// When the machine published this snapshot.
    pub published_at: Timestamp,
    /// Tokens this machine has fetched successfully so far (not the
    /// fetches it sent: [`MachineStats::fetches`](super::MachineStats)).
    pub tokens_fetched: u64,
    /// Why the shared cache refused the last token this machine stored,
    /// until a store succeeds again: other instances are not getting its
    /// tokens (and a rotated refresh token is not durable).
    pub store_error: Option<CacheError>,
    /// The estimated offset of the authority's clock from ours, in ms
    /// (positive: the authority is ahead), from the last answer.
    pub skew_ms: Option<i64>,
    /// What the lifetime policy had to decide for the current token.
    pub lifetime_note: Option<LifetimeNote>,
    /// The authority's answer for the current token was degenerate (an
    /// `expires_in` the lifetime policy had to raise to its minimum; see
    /// [`MachineConfig::min_refresh_interval`](super::MachineConfig)), and
    /// the token was re-timed by the refresh floor: its `stale_at` and
    /// `expires_at` are the machine's, not the authority's.
    pub degenerate: Option<DegenerateLifetime>,
    /// The current token's life on this process's monotonic clock (the
    /// one the driver feeds the machine), so that a wall clock stepped
    /// back never makes an expired token look valid; `None` without a
    /// token. [`is_valid_at`](Self::is_valid_at) and
    /// [`is_stale_at`](Self::is_stale_at) judge by both clocks.
    pub life: Option<MonoLife>,
}

/// When a token goes stale and expires on the monotonic clock of the
/// process serving it: its wall-clock times, counted from the moment the
/// machine measured them against (the fetch's sending for a token it
/// fetched, the adoption for one from a cache). Meaningless in another
/// process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MonoLife {
    /// When the token should be renewed, at the latest.
    pub stale_at: MonoTime,
    /// When the token stops being valid, at the latest.
    pub expires_at: MonoTime,
}

/// How the refresh floor re-timed a token whose answer was degenerate
/// (`expires_in: 0`, negative, or below the policy's minimum lifetime).
///
/// Without the floor, `expires_in: 0` becomes a lifetime of a second (the
/// policy's clamp) renewed at its half-life: two requests a second from
/// every instance, forever, and a status that says `fresh`. With it, the
/// token goes stale `floor` after its answer and is served one more
/// `floor` for the renewal, so the policy's own clamped times never expire
/// a token it chose to keep; the floor doubles while answers keep coming
/// back degenerate. A token the authority really meant as dead is caught by
/// the API's 401 ([`Input::Invalidate`], rate-limited).
///
/// ```
/// use freshtoken_core::*;
/// use std::time::Duration;
///
/// let mut m = RefreshMachine::new(MachineConfig::default());
/// let t0 = Timestamp::from_secs(1_000);
/// m.handle_input(Input::Start, t0);
/// let Output::Action(Action::Fetch(request)) = m.poll_output() else { panic!() };
/// let answer = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(0));
/// m.handle_input(Input::Fetched(request.id, Ok(answer)), t0);
/// let Output::Action(Action::Publish(snapshot)) = m.poll_output() else { panic!() };
/// let degenerate = snapshot.degenerate.expect("expires_in: 0 is degenerate");
/// assert_eq!(degenerate.expires_in, Some(0));
/// assert_eq!(degenerate.floor, Duration::from_secs(5));
/// // The next refresh is no sooner than the floor.
/// let Output::Timeout(at) = m.poll_output() else { panic!() };
/// assert!(at >= t0 + Duration::from_secs(5));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DegenerateLifetime {
    /// The `expires_in` the authority sent, if it sent one.
    pub expires_in: Option<i64>,
    /// The expiry the lifetime policy made of the answer (after its clamp),
    /// before the floor re-timed it.
    pub authority_expires_at: Timestamp,
    /// The floor applied: the token goes stale this long after its answer.
    pub floor: Duration,
    /// How many answers in a row have been degenerate (1 for the first).
    pub consecutive: u32,
}

impl Snapshot {
    /// The snapshot readers see before the machine publishes anything.
    pub fn initial() -> Self {
        Snapshot {
            token: None,
            state: RefreshState::Starting,
            published_at: Timestamp::EPOCH,
            tokens_fetched: 0,
            store_error: None,
            skew_ms: None,
            lifetime_note: None,
            degenerate: None,
            life: None,
        }
    }

    /// Whether there is a token valid at `now` by both clocks: before its
    /// wall-clock expiry and before its monotonic one.
    ///
    /// ```
    /// use freshtoken_core::*;
    /// use std::time::Duration;
    ///
    /// let mut m = RefreshMachine::new(MachineConfig::default());
    /// let t0 = Now::new(Timestamp::from_secs(1_000), MonoTime::ZERO);
    /// m.handle_input(Input::Start, t0);
    /// let Output::Action(Action::Fetch(request)) = m.poll_output() else { panic!() };
    /// let answer = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(60));
    /// m.handle_input(Input::Fetched(request.id, Ok(answer)), t0);
    /// let Output::Action(Action::Publish(snapshot)) = m.poll_output() else { panic!() };
    /// let later = |wall: u64, mono_secs: u64| {
    ///     Now::new(Timestamp::from_secs(wall), MonoTime::from_millis(mono_secs * 1_000))
    /// };
    /// assert!(snapshot.is_valid_at(later(1_030, 30)));
    /// // 70 s later, with the wall clock stepped back 120 s: expired.
    /// assert!(!snapshot.is_valid_at(later(950, 70)));
    /// ```
    pub fn is_valid_at(&self, now: Now) -> bool {
        self.token.as_ref().is_some_and(|t| t.is_valid_at(now.wall))
            && self.life.is_none_or(|life| now.mono < life.expires_at)
    }

    /// How much longer the token is valid at `now`, by the sooner of the two
    /// clocks (zero without a token, or once it expired).
    ///
    /// ```
    /// use freshtoken_core::*;
    /// use std::time::Duration;
    ///
    /// let mut m = RefreshMachine::new(MachineConfig::default());
    /// let t0 = Now::new(Timestamp::from_secs(1_000), MonoTime::ZERO);
    /// m.handle_input(Input::Start, t0);
    /// let Output::Action(Action::Fetch(request)) = m.poll_output() else { panic!() };
    /// let answer = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(60));
    /// m.handle_input(Input::Fetched(request.id, Ok(answer)), t0);
    /// let Output::Action(Action::Publish(snapshot)) = m.poll_output() else { panic!() };
    /// // 10 s later by the monotonic clock, the wall clock stepped back 120 s.
    /// let later = Now::new(Timestamp::from_secs(890), MonoTime::from_millis(10_000));
    /// assert_eq!(snapshot.valid_for(later), Duration::from_secs(50));
    /// ```
    pub fn valid_for(&self, now: Now) -> Duration {
        let Some(t) = &self.token else {
            return Duration::ZERO;
        };
        let by_wall = t.expires_at().saturating_duration_since(now.wall);
        match self.life {
            Some(life) => by_wall.min(life.expires_at.saturating_duration_since(now.mono)),
            None => by_wall,
        }
    }

    /// Whether the token is due for renewal at `now` by either clock (or
    /// there is none): the moment a reader should wake a sleeping driver.
    pub fn is_stale_at(&self, now: Now) -> bool {
        match &self.token {
            None => true,
            Some(t) => {
                now.wall >= t.stale_at() || self.life.is_some_and(|l| now.mono >= l.stale_at)
            }
        }
    }

    /// The status of the current token at `now`, if there is one.
    pub fn token_status(&self, now: Timestamp) -> Option<TokenStatus> {
        self.token.as_ref().map(|t| t.status(now))
    }
}
