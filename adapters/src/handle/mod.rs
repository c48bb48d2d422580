//! How applications read tokens: [`TokenHandle`] and what it gives out.
//!
//! A driver owns the [`RefreshMachine`](crate::proto::RefreshMachine) and a
//! [`Publisher`]; applications hold any number of
//! [`TokenHandle`] clones.
//!
//! ```
//! use freshtoken::driver::{Command, Publisher};
//! use freshtoken::proto::{RefreshState, Snapshot};
//! use freshtoken::{AccessToken, ManualClock, Timestamp, Token};
//! use std::sync::Arc;
//!
//! let clock = ManualClock::new(Timestamp::from_secs(100));
//! let (publisher, handle) = Publisher::new(Arc::new(clock.clone()));
//! assert!(handle.token().is_none());
//!
//! // What a driver does with `Action::Publish`:
//! let token = Token::new(
//!     AccessToken::new("at"),
//!     Timestamp::from_secs(100),
//!     Timestamp::from_secs(145),
//!     Timestamp::from_secs(160),
//! );
//! let mut snapshot = Snapshot::initial();
//! snapshot.token = Some(Arc::new(token));
//! snapshot.state = RefreshState::Healthy;
//! publisher.publish(snapshot);
//!
//! let token = handle.valid_token().unwrap();
//! assert_eq!(token.access_token().expose_secret(), "at");
//!
//! // A 401 with that token goes back to the driver as a command.
//! handle.invalidate(&token);
//! assert_eq!(publisher.try_recv(), Some(Command::Invalidate(token.id())));
//! ```
//!
//! # Why the read path returns a guard
//!
//! [`TokenHandle::token`] is called on every outgoing request, from many
//! threads at once, and must not slow down as threads are added. Cloning an
//! `Arc` would increment its reference count, a write to one cache line that
//! every reader shares: with two or more reader cores that line bounces
//! between them and each read costs a cache miss. The handle instead keeps the
//! snapshot in an [`arc_swap::ArcSwap`], whose `load` records the borrow in a
//! slot owned by the reading thread and writes nothing shared in the common
//! case; [`TokenRef`] wraps that borrow. Keep a `TokenRef` for the length of
//! one request, not longer: a thread has a few cheap slots, and further
//! concurrent guards fall back to a reference-count increment. For a reader
//! that reads in a loop on one thread, [`TokenHandle::reader`] goes further:
//! one uncontended atomic load per read while the token has not changed.
//!
//! Writes never wait for readers and readers never wait for writes.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use freshtoken_core::{Clock, FetchError, FetchErrorKind, Now, Timestamp, Token};

pub(crate) mod publisher;
mod shared;
mod sharing;
mod watch;

pub use freshtoken_core::machine::DegenerateLifetime;
pub use freshtoken_core::{LifetimeNote, RefreshState, Snapshot};
pub(crate) use publisher::{Command, Publisher};
pub use sharing::Sharing;
pub use watch::TokenWatch;

use shared::{wait_for, wait_for_blocking, Shared};

/// Why [`TokenHandle::valid_token`] has no token to give.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NoValidToken {
    /// No token has been obtained yet.
    #[error("no token yet{}", last_error_suffix(.last_error))]
    NotYetFetched {
        /// The last failed attempt, if one failed.
        last_error: Option<FetchError>,
    },
    /// The last token expired and no new one has been obtained.
    #[error("the token expired at {expired_at}{}", last_error_suffix(.last_error))]
    Expired {
        /// When the token expired.
        expired_at: Timestamp,
        /// The last failed attempt to renew it, if one failed.
        last_error: Option<FetchError>,
    },
    /// Renewal failed for good (the grant was revoked).
    #[error("renewal failed permanently: {error}")]
    Failed {
        /// Why.
        error: FetchError,
    },
    /// The driver has stopped; no token will come.
    #[error("the refresher has stopped")]
    Stopped,
    /// The token is valid, but not for as long as asked
    /// ([`TokenHandle::valid_for`]): the driver was asked for a new one,
    /// unless tokens do not live that long at all (`lifetime`).
    #[error("the token is valid for {valid_for:?} more, not the {needed:?} asked for (tokens live {lifetime:?})")]
    NotValidLongEnough {
        /// How much longer the token is valid.
        valid_for: Duration,
        /// How long it was asked to be valid.
        needed: Duration,
        /// The token's whole lifetime: shorter than `needed`, no token of
        /// this authority's will do.
        lifetime: Duration,
    },
}

fn last_error_suffix(e: &Option<FetchError>) -> String {
    match e {
        Some(e) => format!(" (last error: {e})"),
        None => String::new(),
    }
}

impl NoValidToken {
    /// The last refresh error behind this, if any.
    pub fn last_error(&self) -> Option<&FetchError> {
        match self {
            NoValidToken::NotYetFetched { last_error }
            | NoValidToken::Expired { last_error, .. } => last_error.as_ref(),
            NoValidToken::Failed { error } => Some(error),
            NoValidToken::Stopped | NoValidToken::NotValidLongEnough { .. } => None,
        }
    }

    /// Why `snapshot` has no valid token at `now` (by both clocks), or
    /// `None` if it has one.
    fn of(snapshot: &Snapshot, now: Now, closed: bool) -> Option<Self> {
        if snapshot.is_valid_at(now) {
            return None;
        }
        let last_error = snapshot.state.last_error().cloned();
        Some(match (&snapshot.state, &snapshot.token) {
            (RefreshState::Failed { error }, _) => NoValidToken::Failed {
                error: error.clone(),
            },
            (RefreshState::Stopped, _) => NoValidToken::Stopped,
            _ if closed => NoValidToken::Stopped,
            (_, Some(t)) => NoValidToken::Expired {
                expired_at: t.expires_at(),
                last_error,
            },
            (_, None) => NoValidToken::NotYetFetched { last_error },
        })
    }
}

/// The driver has stopped: no further snapshot will be published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the refresher has stopped")]
pub struct Closed;

/// The application's view of a refreshed token. Cheap to clone; `Send` and
/// `Sync`; the same type whatever drives the refresh.
///
/// Dropping the last clone tells the driver that nobody needs tokens any
/// more, and it stops.
pub struct TokenHandle {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
}

impl Clone for TokenHandle {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::SeqCst);
        TokenHandle {
            shared: self.shared.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl Drop for TokenHandle {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.send(Command::HandlesDropped);
        }
    }
}

impl fmt::Debug for TokenHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.shared.snapshot.load();
        f.debug_struct("TokenHandle")
            .field("token", &snapshot.token.as_ref().map(|t| t.id()))
            .field("state", &snapshot.state)
            .finish()
    }
}

impl TokenHandle {
    pub(crate) fn new(shared: Arc<Shared>, clock: Arc<dyn Clock>) -> Self {
        TokenHandle { shared, clock }
    }

    /// The current token, whether or not it is still valid; `None` before
    /// the first one. Lock-free and writes nothing shared (see the
    /// [module docs](self)); it reads no clock, so it neither judges the
    /// token nor wakes the driver: use [`valid_token`](Self::valid_token)
    /// if an expired token matters.
    pub fn token(&self) -> Option<TokenRef> {
        TokenRef::new(self.shared.snapshot.load())
    }

    /// The current token if it is valid now by the driver's clocks (the
    /// wall clock and the monotonic one, see
    /// [`Snapshot::is_valid_at`]), or why there is none.
    ///
    /// A read that finds the token stale or expired also wakes the driver,
    /// once per token and at most every 100 ms, so the first read after a
    /// resume from suspend or a wall clock stepped forward starts the
    /// refresh instead of waiting for the driver's timer (see
    /// [`clock`](crate::clock#clocks-that-jump)). A fresh token costs one
    /// atomic load and the two clock readings.
    pub fn valid_token(&self) -> Result<TokenRef, NoValidToken> {
        let guard = self.shared.snapshot.load();
        let now = self.clock.read();
        self.wake_if_stale(&guard, now);
        match NoValidToken::of(&guard, now, self.shared.is_closed()) {
            Some(why) => Err(why),
            None => TokenRef::new(guard).ok_or(NoValidToken::NotYetFetched { last_error: None }),
        }
    }

    /// The driver's clocks now, both readings: what [`valid_token`]
    /// judges a snapshot by.
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// use freshtoken::source::ConstTokenSource;
    /// use std::time::Duration;
    ///
    /// let (tokens, driver) = Builder::new()
    ///     .spawn_thread(ConstTokenSource::new("key", Some(3600)))
    ///     .expect("a thread");
    /// tokens.wait_ready(Duration::from_secs(5)).expect("a token");
    /// let snapshot = tokens.snapshot();
    /// assert!(snapshot.is_valid_at(tokens.now()));
    /// assert!(!snapshot.is_stale_at(tokens.now()));
    /// drop(snapshot);
    /// driver.shutdown_blocking();
    /// ```
    ///
    /// [`valid_token`]: Self::valid_token
    pub fn now(&self) -> Now {
        self.clock.read()
    }

    /// Wakes the driver if `snapshot`'s token is stale or expired at
    /// `now` (see [`valid_token`](Self::valid_token)).
    pub(crate) fn wake_if_stale(&self, snapshot: &Snapshot, now: Now) {
        if let Some(token) = &snapshot.token {
            if snapshot.is_stale_at(now) {
                self.shared.wake_for_stale(token.id(), now.mono);
            }
        }
    }

    /// The latest published snapshot: token, refresh state and counters.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// How renewal is going.
    pub fn status(&self) -> RefreshState {
        self.shared.snapshot.load().state.clone()
    }

    /// Whether this instance's tokens are shared with other instances
    /// through a cache, and why not (see [`Sharing`]): fixed when the
    /// driver is spawned.
    pub fn sharing(&self) -> Sharing {
        self.shared.sharing()
    }

    /// How many snapshots have been published so far.
    pub fn version(&self) -> u64 {
        self.shared.version()
    }

    /// A reader for one thread that reads in a loop: one atomic load per
    /// read while the snapshot has not changed.
    pub fn reader(&self) -> TokenReader {
        TokenReader {
            cache: arc_swap::Cache::new(self.shared.snapshot.clone()),
            _handle: self.clone(),
        }
    }

    /// A receiver that remembers which snapshot it has seen, like
    /// `tokio::sync::watch::Receiver`: its `changed()` resolves at once if
    /// a snapshot was published since it last looked, so no change is
    /// missed between a read and the wait.
    pub fn watch(&self) -> TokenWatch {
        TokenWatch::new(self.clone())
    }

    /// Tells the driver that a consumer got a 401 with `token`. If it is
    /// still the current token, the driver refreshes at once (bypassing a
    /// cache entry with the same token); many reports of one token cause
    /// one refresh, and reports are rate limited.
    pub fn invalidate(&self, token: &Token) {
        self.shared.send(Command::Invalidate(token.id()));
    }

    /// Resolves when a snapshot newer than the one current at the call is
    /// published, or fails once the driver has stopped. Works under any
    /// executor.
    ///
    /// A change between your last read and this call is not seen: use a
    /// [`watch`](Self::watch) receiver when that matters.
    pub async fn changed(&self) -> Result<(), Closed> {
        self.changed_since(self.version()).await
    }

    /// Blocks until a snapshot newer than the one current at the call is
    /// published: `Ok(true)`; or `timeout` passes: `Ok(false)`; or the
    /// driver has stopped: `Err(Closed)`.
    pub fn wait_changed(&self, timeout: Duration) -> Result<bool, Closed> {
        self.wait_changed_since(self.version(), timeout)
    }

    /// Resolves with the first valid token, or at once with the reason
    /// there will be none for now: a permanent failure (a wrong client
    /// secret, a revoked grant; the driver keeps retrying permanent errors
    /// at its long interval) or a stopped driver. Transient failures do
    /// not end the wait, because the driver retries them: to give up
    /// earlier, put your runtime's timeout around it, e.g.
    /// `tokio::time::timeout(Duration::from_secs(10), tokens.ready())`, or
    /// use [`wait_ready`](Self::wait_ready).
    pub async fn ready(&self) -> Result<TokenRef, NoValidToken> {
        wait_for(&self.shared.changed, || self.ready_now()).await
    }

    /// Blocks until there is a valid token, or returns why not: at once on
    /// a permanent failure or a stopped driver, otherwise when `timeout`
    /// passes (with the last error, if an attempt failed).
    pub fn wait_ready(&self, timeout: Duration) -> Result<TokenRef, NoValidToken> {
        wait_for_blocking(&self.shared.changed, timeout, || self.ready_now())
            .unwrap_or_else(|| self.valid_token())
    }

    /// The current token if it is valid for at least `needed` more (by
    /// both clocks), or why not. When it is valid but not for that long,
    /// the driver is asked to refresh early (rate limited like
    /// [`invalidate`](Self::invalidate): many such reads cause one fetch),
    /// unless the token's whole lifetime is shorter than `needed`. For a
    /// long job or a presigned URL; wait with
    /// [`ready_for`](Self::ready_for) or
    /// [`wait_ready_for`](Self::wait_ready_for).
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// use freshtoken::handle::NoValidToken;
    /// use freshtoken::source::ConstTokenSource;
    /// use std::time::Duration;
    ///
    /// let (tokens, driver) = Builder::new()
    ///     .spawn_thread(ConstTokenSource::new("key", Some(3600)))
    ///     .expect("a thread");
    /// let token = tokens.wait_ready_for(Duration::from_secs(1800), Duration::from_secs(5));
    /// assert!(token.is_ok());
    /// // Hourly tokens are never valid for two hours.
    /// let two_hours = tokens.valid_for(Duration::from_secs(7200));
    /// assert!(matches!(two_hours, Err(NoValidToken::NotValidLongEnough { .. })));
    /// driver.shutdown_blocking();
    /// ```
    pub fn valid_for(&self, needed: Duration) -> Result<TokenRef, NoValidToken> {
        let token = self.valid_token()?;
        let now = self.clock.read();
        let left = token.snapshot().valid_for(now);
        if left >= needed {
            return Ok(token);
        }
        let lifetime = token.lifetime();
        if lifetime >= needed {
            self.shared.ask_for_validity(needed, now.mono);
        }
        Err(NoValidToken::NotValidLongEnough {
            valid_for: left,
            needed,
            lifetime,
        })
    }

    /// Resolves with a token valid for at least `needed` more, or at once
    /// with the reason there will be none: as [`ready`](Self::ready), and
    /// when the authority's tokens do not live that long.
    pub async fn ready_for(&self, needed: Duration) -> Result<TokenRef, NoValidToken> {
        wait_for(&self.shared.changed, || self.ready_for_now(needed)).await
    }

    /// Blocks until there is a token valid for at least `needed` more, or
    /// returns why not (see [`ready_for`](Self::ready_for)), at the latest
    /// when `timeout` passes.
    pub fn wait_ready_for(
        &self,
        needed: Duration,
        timeout: Duration,
    ) -> Result<TokenRef, NoValidToken> {
        wait_for_blocking(&self.shared.changed, timeout, || self.ready_for_now(needed))
            .unwrap_or_else(|| self.valid_for(needed))
    }

    fn ready_for_now(&self, needed: Duration) -> Option<Result<TokenRef, NoValidToken>> {
        match self.valid_for(needed) {
            Err(e @ NoValidToken::NotValidLongEnough { lifetime, .. }) if lifetime < needed => {
                Some(Err(e))
            }
            Err(NoValidToken::NotValidLongEnough { .. }) => None,
            _ => self
                .ready_now()
                .map(|r| r.and_then(|_| self.valid_for(needed))),
        }
    }

    /// `Some` once waiting for a token is over: there is one, or there
    /// will be none without an operator (a permanent error) or ever (the
    /// driver stopped).
    fn ready_now(&self) -> Option<Result<TokenRef, NoValidToken>> {
        match self.valid_token() {
            Ok(t) => Some(Ok(t)),
            Err(e @ (NoValidToken::Failed { .. } | NoValidToken::Stopped)) => Some(Err(e)),
            Err(e) if e.last_error().is_some_and(is_permanent) => Some(Err(e)),
            Err(_) => None,
        }
    }

    /// Resolves once the version is past `seen`.
    pub(crate) async fn changed_since(&self, seen: u64) -> Result<(), Closed> {
        wait_for(&self.shared.changed, || self.past(seen)).await
    }

    /// Blocks until the version is past `seen`, or `timeout` passes.
    pub(crate) fn wait_changed_since(&self, seen: u64, timeout: Duration) -> Result<bool, Closed> {
        wait_for_blocking(&self.shared.changed, timeout, || self.past(seen))
            .map_or(Ok(false), |r| r.map(|()| true))
    }

    /// `Some(Ok)` once a snapshot after `seen` is out, `Some(Err)` once the
    /// driver is gone with nothing newer.
    fn past(&self, seen: u64) -> Option<Result<(), Closed>> {
        if self.version() != seen {
            Some(Ok(()))
        } else if self.shared.is_closed() {
            Some(Err(Closed))
        } else {
            None
        }
    }
}

/// Whether `error` needs an operator: retrying soon cannot help.
fn is_permanent(error: &FetchError) -> bool {
    matches!(
        error.kind(),
        FetchErrorKind::Permanent | FetchErrorKind::GrantRevoked
    )
}

/// A borrowed current token: derefs to [`Token`]. Cheap to get and to drop;
/// hold it for one request, not longer (see the [module docs](self)).
pub struct TokenRef {
    guard: Guard<Arc<Snapshot>>,
}

impl TokenRef {
    fn new(guard: Guard<Arc<Snapshot>>) -> Option<Self> {
        guard.token.is_some().then_some(TokenRef { guard })
    }

    /// The snapshot this token came from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.guard
    }

    /// The snapshot this token came from, to keep.
    #[cfg(any(
        feature = "tower",
        feature = "reqwest-middleware",
        feature = "ureq-middleware",
        feature = "tonic"
    ))]
    pub(crate) fn into_snapshot(self) -> Arc<Snapshot> {
        Guard::into_inner(self.guard)
    }
}

impl Deref for TokenRef {
    type Target = Token;

    fn deref(&self) -> &Token {
        match &self.guard.token {
            Some(token) => token,
            // `new` only builds a TokenRef around a snapshot with a token,
            // and a published snapshot is immutable.
            None => unreachable!("TokenRef without a token"),
        }
    }
}

impl fmt::Debug for TokenRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A per-thread reader that remembers the last snapshot it saw, so a read
/// is one uncontended atomic load until the driver publishes again. It
/// counts as a [`TokenHandle`] (keeps the driver running).
///
/// ```
/// use freshtoken::driver::Publisher;
/// use freshtoken::ManualClock;
/// use std::sync::Arc;
///
/// let (_publisher, handle) = Publisher::new(Arc::new(ManualClock::default()));
/// let mut reader = handle.reader();
/// assert!(reader.token().is_none());
/// ```
pub struct TokenReader {
    cache: arc_swap::Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    _handle: TokenHandle,
}

impl TokenReader {
    /// The current token, whether or not it is still valid.
    pub fn token(&mut self) -> Option<&Token> {
        self.cache.load().token.as_deref()
    }

    /// The latest snapshot.
    pub fn snapshot(&mut self) -> &Snapshot {
        self.cache.load()
    }
}

impl fmt::Debug for TokenReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReader").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
