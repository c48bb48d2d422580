//! What goes into and comes out of the [`RefreshMachine`](super::RefreshMachine).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{CacheError, FetchError};
use crate::lifetime::LifetimeNote;
use crate::secret::RefreshToken;
use crate::time::Timestamp;
use crate::token::{Token, TokenId, TokenResponse, TokenStatus};

/// Something that happened, fed to [`RefreshMachine::handle_input`](super::RefreshMachine::handle_input).
///
/// Every order is legal: a result for an action that was never asked for
/// (a late `Fetched` after `Shutdown`, a second `Stored`) is ignored and
/// counted in [`MachineStats::ignored_inputs`](super::MachineStats), never a panic.
#[derive(Debug)]
pub enum Input {
    /// Begin: load the cache or fetch the first token.
    Start,
    /// Time has passed; act on any deadline that is due.
    Tick,
    /// The result of [`Action::LoadCache`].
    CacheLoaded(Result<Option<Token>, CacheError>),
    /// The result of [`Action::Fetch`].
    Fetched(Result<TokenResponse, FetchError>),
    /// The result of [`Action::Store`].
    Stored(Result<(), CacheError>),
    /// The result of [`Action::AcquireLease`]. An error counts as
    /// [`LeaseOutcome::Unsupported`]: a broken lease must not stop refreshing.
    Lease(Result<LeaseOutcome, CacheError>),
    /// A consumer got a 401 with the token of this id.
    Invalidate(TokenId),
    /// Stop: emit [`Action::Stop`] and nothing after it.
    Shutdown,
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
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read the shared cache; answer with [`Input::CacheLoaded`].
    LoadCache,
    /// Take the cache's lease for `ttl`; answer with [`Input::Lease`].
    AcquireLease {
        /// How long the lease may be held before others may take it.
        ttl: Duration,
    },
    /// Ask the source for a token; answer with [`Input::Fetched`].
    Fetch(FetchRequest),
    /// Write the token to the cache; answer with [`Input::Stored`].
    Store(Arc<Token>),
    /// Give the lease back. No answer is expected.
    ReleaseLease,
    /// Make this snapshot what readers see. No answer is expected.
    Publish(Snapshot),
    /// The machine has stopped; the driver should exit.
    Stop,
}

/// What a source needs to know to fetch.
///
/// ```
/// use freshtoken_core::FetchRequest;
/// assert_eq!(FetchRequest::first().attempt, 1);
/// assert!(FetchRequest::first().refresh_token.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchRequest {
    /// 1 for the first try after a success, counting up while fetches fail.
    pub attempt: u32,
    /// The newest refresh token known (from the last answer, the cache or
    /// the configuration), for refresh-token flows.
    pub refresh_token: Option<RefreshToken>,
}

impl FetchRequest {
    /// The first attempt, without a refresh token.
    pub fn first() -> Self {
        FetchRequest {
            attempt: 1,
            refresh_token: None,
        }
    }

    /// A request for attempt `attempt` with `refresh_token`.
    pub fn new(attempt: u32, refresh_token: Option<RefreshToken>) -> Self {
        FetchRequest {
            attempt,
            refresh_token,
        }
    }
}

/// How renewal is going, as readers see it.
#[derive(Debug, Clone, PartialEq)]
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
    /// Renewal cannot succeed (the grant was revoked); the machine no longer
    /// refreshes. The last token is served until it expires.
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
    /// Tokens this machine has fetched successfully so far.
    pub fetches: u64,
    /// The estimated offset of the authority's clock from ours, in ms
    /// (positive: the authority is ahead), from the last answer.
    pub skew_ms: Option<i64>,
    /// What the lifetime policy had to decide for the current token.
    pub lifetime_note: Option<LifetimeNote>,
}

impl Snapshot {
    /// The snapshot readers see before the machine publishes anything.
    pub fn initial() -> Self {
        Snapshot {
            token: None,
            state: RefreshState::Starting,
            published_at: Timestamp::EPOCH,
            fetches: 0,
            skew_ms: None,
            lifetime_note: None,
        }
    }

    /// The status of the current token at `now`, if there is one.
    pub fn token_status(&self, now: Timestamp) -> Option<TokenStatus> {
        self.token.as_ref().map(|t| t.status(now))
    }
}
