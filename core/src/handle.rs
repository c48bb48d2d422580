//! How applications read tokens: [`TokenHandle`], and the [`Publisher`]
//! side that drivers use to feed it.
//!
//! A driver (tokio, async-std/smol or a plain thread, in the `freshtoken`
//! crate) owns the [`RefreshMachine`](crate::RefreshMachine) and a
//! [`Publisher`]; applications hold any number of [`TokenHandle`] clones.
//!
//! ```
//! use freshtoken_core::handle::{Command, Publisher};
//! use freshtoken_core::{AccessToken, ManualClock, RefreshState, Snapshot, Timestamp, Token};
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

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use event_listener::{Event, Listener};

use crate::error::FetchError;
use crate::machine::{RefreshState, Snapshot};
use crate::time::{Clock, Timestamp};
use crate::token::{Token, TokenId};

/// A request from the application (or the driver's owner) to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// A consumer got a 401 with the token of this id.
    Invalidate(TokenId),
    /// Re-read the clock now and act on any deadline that is due (after a
    /// test moved a manual clock, or a worker finished).
    Wake,
    /// Stop the driver.
    Shutdown,
    /// The last [`TokenHandle`] was dropped: nobody reads tokens any more,
    /// so the driver should stop.
    HandlesDropped,
}

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
            NoValidToken::Stopped => None,
        }
    }

    /// Why `snapshot` has no valid token at `now`, or `None` if it has one.
    fn of(snapshot: &Snapshot, now: Timestamp, closed: bool) -> Option<Self> {
        if snapshot.token.as_ref().is_some_and(|t| t.is_valid_at(now)) {
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

/// What handles, publisher and controls share.
struct Shared {
    /// Behind its own `Arc` so that a [`TokenReader`] can hold it.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Bumped on every publish, so waiters can tell a change from a
    /// spurious wake-up.
    version: AtomicU64,
    /// Notified on every publish and when the publisher goes away.
    changed: Event,
    /// The publisher (the driver) is gone.
    closed: AtomicBool,
    /// Commands for the driver. A mutex is enough: commands are rare
    /// (401s, shutdown) and never on the read path.
    commands: Mutex<VecDeque<Command>>,
    /// Notified whenever a command is queued.
    command_ready: Event,
    /// Live [`TokenHandle`]s.
    handles: AtomicUsize,
}

impl Shared {
    fn commands(&self) -> MutexGuard<'_, VecDeque<Command>> {
        // The queue holds plain data; a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still usable.
        self.commands.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, command: Command) {
        {
            let mut queue = self.commands();
            // Ten 401s with one token are one invalidation: keep the queue
            // bounded whatever the application does.
            if !queue.contains(&command) {
                queue.push_back(command);
            }
        }
        self.command_ready.notify(usize::MAX);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

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
    /// The current token, whether or not it is still valid; `None` before
    /// the first one. Lock-free and writes nothing shared (see the
    /// [module docs](self)); check [`Token::is_valid_at`] or use
    /// [`valid_token`](Self::valid_token) if an expired token matters.
    pub fn token(&self) -> Option<TokenRef> {
        TokenRef::new(self.shared.snapshot.load())
    }

    /// The current token if it is valid now (by the driver's clock), or why
    /// there is none.
    pub fn valid_token(&self) -> Result<TokenRef, NoValidToken> {
        let guard = self.shared.snapshot.load();
        match NoValidToken::of(&guard, self.clock.now(), self.shared.is_closed()) {
            Some(why) => Err(why),
            None => TokenRef::new(guard).ok_or(NoValidToken::NotYetFetched { last_error: None }),
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

    /// How many snapshots have been published so far.
    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::SeqCst)
    }

    /// A reader for one thread that reads in a loop: one atomic load per
    /// read while the snapshot has not changed.
    pub fn reader(&self) -> TokenReader {
        TokenReader {
            cache: arc_swap::Cache::new(self.shared.snapshot.clone()),
            _handle: self.clone(),
        }
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
    /// A change between your last read and this call is not seen: compare
    /// [`version`](Self::version)s when that matters.
    pub async fn changed(&self) -> Result<(), Closed> {
        let seen = self.version();
        self.wait_async(|| (self.version() != seen).then_some(()))
            .await
            .ok_or(Closed)
    }

    /// Blocks until a snapshot newer than the one current at the call is
    /// published: `Ok(true)`; or `timeout` passes: `Ok(false)`; or the
    /// driver has stopped: `Err(Closed)`.
    pub fn wait_changed(&self, timeout: Duration) -> Result<bool, Closed> {
        let seen = self.version();
        match self.wait_blocking(timeout, || (self.version() != seen).then_some(())) {
            Waited::Done(()) => Ok(true),
            Waited::TimedOut => Ok(false),
            Waited::Closed => Err(Closed),
        }
    }

    /// Resolves with the first valid token, or with the reason there will
    /// be none (a permanent failure, a stopped driver). Transient failures
    /// do not end the wait: the driver retries them; put a timeout around
    /// this (or use [`wait_ready`](Self::wait_ready)) to give up earlier.
    pub async fn ready(&self) -> Result<TokenRef, NoValidToken> {
        let found = self.wait_async(|| self.ready_now()).await;
        found.unwrap_or_else(|| self.valid_token())
    }

    /// Blocks until there is a valid token, or returns why not: at once on
    /// a permanent failure, otherwise when `timeout` passes (with the last
    /// error, if an attempt failed).
    pub fn wait_ready(&self, timeout: Duration) -> Result<TokenRef, NoValidToken> {
        match self.wait_blocking(timeout, || self.ready_now()) {
            Waited::Done(result) => result,
            Waited::TimedOut | Waited::Closed => self.valid_token(),
        }
    }

    /// `Some` once waiting for a token is over: there is one, or there
    /// never will be.
    fn ready_now(&self) -> Option<Result<TokenRef, NoValidToken>> {
        match self.valid_token() {
            Ok(t) => Some(Ok(t)),
            Err(e @ (NoValidToken::Failed { .. } | NoValidToken::Stopped)) => Some(Err(e)),
            Err(_) => None,
        }
    }

    /// Waits until `check` gives `Some`; `None` when the driver is gone.
    async fn wait_async<T>(&self, check: impl Fn() -> Option<T>) -> Option<T> {
        loop {
            if let Some(v) = check() {
                return Some(v);
            }
            if self.shared.is_closed() {
                return None;
            }
            // Listen first, then check again: a publish between the check
            // and the listen would otherwise be missed.
            let listener = self.shared.changed.listen();
            if let Some(v) = check() {
                return Some(v);
            }
            if self.shared.is_closed() {
                return None;
            }
            listener.await;
        }
    }

    fn wait_blocking<T>(&self, timeout: Duration, check: impl Fn() -> Option<T>) -> Waited<T> {
        let deadline = deadline_after(timeout);
        loop {
            if let Some(v) = check() {
                return Waited::Done(v);
            }
            if self.shared.is_closed() {
                return Waited::Closed;
            }
            let listener = self.shared.changed.listen();
            if let Some(v) = check() {
                return Waited::Done(v);
            }
            if self.shared.is_closed() {
                return Waited::Closed;
            }
            let notified = match deadline {
                Some(d) => listener.wait_deadline(d).is_some(),
                None => {
                    listener.wait();
                    true
                }
            };
            if !notified {
                return match check() {
                    Some(v) => Waited::Done(v),
                    None => Waited::TimedOut,
                };
            }
        }
    }
}

enum Waited<T> {
    Done(T),
    TimedOut,
    Closed,
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
/// use freshtoken_core::handle::Publisher;
/// use freshtoken_core::ManualClock;
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

/// The driver's side: publishes snapshots to the handles and receives
/// their commands. Dropping it tells every waiting handle that no more
/// snapshots will come.
pub struct Publisher {
    shared: Arc<Shared>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("version", &self.shared.version.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher and the first handle. `clock` is the driver's clock;
    /// handles read it to tell whether a token is still valid.
    pub fn new(clock: Arc<dyn Clock>) -> (Publisher, TokenHandle) {
        let shared = Arc::new(Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::initial())),
            version: AtomicU64::new(0),
            changed: Event::new(),
            closed: AtomicBool::new(false),
            commands: Mutex::new(VecDeque::new()),
            command_ready: Event::new(),
            handles: AtomicUsize::new(1),
        });
        let handle = TokenHandle {
            shared: shared.clone(),
            clock,
        };
        (Publisher { shared }, handle)
    }

    /// Makes `snapshot` what readers see and wakes everyone waiting for a
    /// change.
    pub fn publish(&self, snapshot: Snapshot) {
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.version.fetch_add(1, Ordering::SeqCst);
        self.shared.changed.notify(usize::MAX);
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// A way to send commands to this publisher's driver without keeping
    /// it alive (e.g. for a shutdown handle).
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    /// The next queued command, if any.
    pub fn try_recv(&self) -> Option<Command> {
        self.shared.commands().pop_front()
    }

    /// The next command, when one arrives. Works under any executor; the
    /// future may be dropped at any point without losing a command.
    pub async fn recv(&self) -> Command {
        loop {
            if let Some(c) = self.try_recv() {
                return c;
            }
            let listener = self.shared.command_ready.listen();
            if let Some(c) = self.try_recv() {
                return c;
            }
            listener.await;
        }
    }

    /// The next command, blocking until one arrives or `deadline` passes.
    pub fn recv_deadline(&self, deadline: Instant) -> Option<Command> {
        loop {
            if let Some(c) = self.try_recv() {
                return Some(c);
            }
            let listener = self.shared.command_ready.listen();
            if let Some(c) = self.try_recv() {
                return Some(c);
            }
            listener.wait_deadline(deadline)?;
        }
    }
}

/// The instant `timeout` from now, for the blocking waits' own timeouts
/// (`None` if it is too far to represent: wait without one).
///
/// The one place in this crate that reads a clock, and it is not the
/// machine's: a caller who asks to wait at most `timeout` is asking for
/// real elapsed time, which no input can supply. `.ci/purity` allows this
/// line by its marker and nothing else.
fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout) // purity: the timeout of a blocking wait
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.changed.notify(usize::MAX);
    }
}

/// Sends commands to a driver and tells when it has stopped, without
/// counting as a [`TokenHandle`].
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Control {
    /// Queues `command` for the driver.
    pub fn send(&self, command: Command) {
        self.shared.send(command);
    }

    /// Whether the driver has stopped (its [`Publisher`] is gone).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Resolves once the driver has stopped.
    pub async fn closed(&self) {
        while !self.is_closed() {
            let listener = self.shared.changed.listen();
            if self.is_closed() {
                return;
            }
            listener.await;
        }
    }

    /// Blocks until the driver has stopped or `timeout` passes; returns
    /// whether it has stopped.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = deadline_after(timeout);
        while !self.is_closed() {
            let listener = self.shared.changed.listen();
            if self.is_closed() {
                return true;
            }
            match deadline {
                Some(d) => {
                    if listener.wait_deadline(d).is_none() {
                        return self.is_closed();
                    }
                }
                None => listener.wait(),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AccessToken;
    use crate::time::ManualClock;
    use std::thread;

    fn token(secret: &str, issued: u64, expires: u64) -> Arc<Token> {
        Arc::new(Token::new(
            AccessToken::new(secret),
            Timestamp::from_secs(issued),
            Timestamp::from_secs(expires),
            Timestamp::from_secs(expires),
        ))
    }

    fn snapshot(token: Option<Arc<Token>>, state: RefreshState) -> Snapshot {
        let mut s = Snapshot::initial();
        s.token = token;
        s.state = state;
        s
    }

    fn setup() -> (ManualClock, Publisher, TokenHandle) {
        let clock = ManualClock::new(Timestamp::from_secs(100));
        let (p, h) = Publisher::new(Arc::new(clock.clone()));
        (clock, p, h)
    }

    #[test]
    fn handles_and_guards_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TokenHandle>();
        send_sync::<TokenRef>();
        send_sync::<Publisher>();
        send_sync::<Control>();
        fn send<T: Send>(_: &T) {}
        let (p, h) = Publisher::new(Arc::new(ManualClock::default()));
        send(&h.changed());
        send(&h.ready());
        send(&p.recv());
    }

    #[test]
    fn valid_token_says_why_there_is_none() {
        let (clock, p, h) = setup();
        assert_eq!(
            h.valid_token().unwrap_err(),
            NoValidToken::NotYetFetched { last_error: None }
        );
        let err = FetchError::transient("connection refused");
        p.publish(snapshot(
            None,
            RefreshState::Retrying {
                error: err.clone(),
                attempt: 1,
                next_attempt: Timestamp::from_secs(101),
            },
        ));
        let why = h.valid_token().unwrap_err();
        assert_eq!(why.last_error(), Some(&err));
        assert!(why.to_string().contains("connection refused"), "{why}");

        p.publish(snapshot(
            Some(token("s3cret", 100, 160)),
            RefreshState::Healthy,
        ));
        assert_eq!(
            h.valid_token().unwrap().access_token().expose_secret(),
            "s3cret"
        );

        clock.set(Timestamp::from_secs(160));
        let why = h.valid_token().unwrap_err();
        assert!(
            matches!(why, NoValidToken::Expired { expired_at, .. } if expired_at == Timestamp::from_secs(160))
        );
        assert!(
            h.token().is_some(),
            "token() still returns the expired token"
        );

        p.publish(snapshot(
            Some(token("s3cret", 100, 160)),
            RefreshState::Failed {
                error: FetchError::grant_revoked("invalid_grant"),
            },
        ));
        assert!(matches!(h.valid_token(), Err(NoValidToken::Failed { .. })));
        drop(p);
        assert!(matches!(h.valid_token(), Err(NoValidToken::Failed { .. })));
    }

    #[test]
    fn errors_and_debug_never_show_the_secret() {
        let (clock, p, h) = setup();
        p.publish(snapshot(
            Some(token("s3cret", 100, 160)),
            RefreshState::Healthy,
        ));
        let t = h.token().unwrap();
        assert!(!format!("{t:?} {h:?}").contains("s3cret"));
        clock.set(Timestamp::from_secs(200));
        let why = h.valid_token().unwrap_err();
        assert!(!format!("{why} {why:?}").contains("s3cret"));
    }

    #[test]
    fn commands_are_deduplicated_and_dropping_all_handles_is_a_command() {
        let (_clock, p, h) = setup();
        let t = token("a", 100, 160);
        for _ in 0..10 {
            h.invalidate(&t);
        }
        let h2 = h.clone();
        let reader = h.reader();
        drop(h);
        drop(h2);
        assert_eq!(p.try_recv(), Some(Command::Invalidate(t.id())));
        assert_eq!(p.try_recv(), None);
        drop(reader);
        assert_eq!(p.try_recv(), Some(Command::HandlesDropped));
    }

    #[test]
    fn waits_end_on_publish_timeout_and_close() {
        let (_clock, p, h) = setup();
        assert_eq!(h.wait_changed(Duration::from_millis(10)), Ok(false));
        let why = h.wait_ready(Duration::from_millis(10)).unwrap_err();
        assert!(matches!(why, NoValidToken::NotYetFetched { .. }));

        let h2 = h.clone();
        let waiter = thread::spawn(move || {
            h2.wait_ready(Duration::from_secs(60))
                .map(|t| t.access_token().expose_secret().to_owned())
        });
        // The waiter may or may not be waiting yet; either way it must see it.
        p.publish(snapshot(Some(token("a", 100, 160)), RefreshState::Healthy));
        assert_eq!(waiter.join().unwrap().unwrap(), "a");

        let h3 = h.clone();
        let waiter = thread::spawn(move || h3.wait_changed(Duration::from_secs(60)));
        let control = p.control();
        drop(p);
        assert!(control.wait_closed(Duration::from_secs(60)));
        // Either the waiter saw the close or it started after it.
        assert_eq!(waiter.join().unwrap(), Err(Closed));
        assert_eq!(h.wait_changed(Duration::from_secs(60)), Err(Closed));
    }

    #[test]
    fn reader_sees_new_snapshots() {
        let (_clock, p, h) = setup();
        let mut reader = h.reader();
        assert!(reader.token().is_none());
        p.publish(snapshot(Some(token("a", 100, 160)), RefreshState::Healthy));
        assert_eq!(reader.token().unwrap().access_token().expose_secret(), "a");
        p.publish(snapshot(Some(token("b", 100, 160)), RefreshState::Healthy));
        assert_eq!(reader.token().unwrap().access_token().expose_secret(), "b");
    }

    #[test]
    fn recv_deadline_returns_commands_sent_from_another_thread() {
        let (_clock, p, h) = setup();
        assert_eq!(
            p.recv_deadline(deadline_after(Duration::from_millis(5)).unwrap()),
            None
        );
        let control = p.control();
        let sender = thread::spawn(move || control.send(Command::Shutdown));
        assert_eq!(
            p.recv_deadline(deadline_after(Duration::from_secs(60)).unwrap()),
            Some(Command::Shutdown)
        );
        sender.join().unwrap();
        drop(h);
    }
}
