//! What every driver does with the machine, whatever it waits with: feed
//! inputs with the clock's readings, carry out `Publish` at once, hand out
//! the jobs that take time, and say how long to sleep.
//!
//! Drivers keep no timeouts of their own: the machine keeps a deadline for
//! every request and includes the earliest in its `Timeout`, so a driver
//! only sleeps until then, ticks, and feeds every answer whenever it comes
//! (a late one included: the machine recognises it by its request id).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::{
    Action, CacheError, CacheErrorKind, Clock, Event, FetchError, FetchRequest, Input,
    LeaseOutcome, Output, RefreshMachine, RequestId, Timestamp, Token, TokenResponse,
};

#[cfg(any(feature = "tokio", feature = "async-std", feature = "smol"))]
use crate::cache::AsyncTokenCache;
use crate::cache::TokenCache;
use crate::handle::{Command, Publisher};

/// A driver's state around the machine.
pub(crate) struct Refresher {
    machine: RefreshMachine,
    publisher: Publisher,
    clock: Arc<dyn Clock>,
    heartbeat: Duration,
    /// Metrics and tracing hook (crate::metrics): sees every input, action
    /// and publication.
    observer: crate::metrics::Observer,
}

/// What the driver should do next.
pub(crate) enum Next {
    /// Carry out this job (see [`JobKind::expects_answer`]).
    Job(Job),
    /// Wait for a command, the job in flight, or this long, whichever
    /// comes first; then [`Refresher::tick`].
    Sleep(Duration),
    /// The machine has stopped: exit.
    Stop,
}

/// An action that takes time.
pub(crate) enum Job {
    Fetch(FetchRequest),
    Cache(CacheJob),
}

/// An action carried out on the cache.
#[derive(Debug)]
pub enum CacheJob {
    /// Read a token newer than the given expiry.
    Load(RequestId, Option<Timestamp>),
    /// Write this token.
    Store(RequestId, Arc<Token>),
    /// Take the lease for this long.
    Lease(RequestId, Duration),
    /// Give the lease back.
    Release(RequestId),
}

/// The kind of a job and the request it answers, kept to answer for it
/// when it does not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobKind {
    Fetch(RequestId),
    Load(RequestId),
    Store(RequestId),
    Lease(RequestId),
    Release(RequestId),
}

impl Job {
    #[cfg(feature = "blocking")]
    /// What the job is, and the request it answers (if it expects an answer).
    pub(crate) fn kind(&self) -> JobKind {
        match self {
            Job::Fetch(request) => JobKind::Fetch(request.id),
            Job::Cache(c) => c.kind(),
        }
    }
}

impl CacheJob {
    pub(crate) fn kind(&self) -> JobKind {
        match self {
            CacheJob::Load(id, _) => JobKind::Load(*id),
            CacheJob::Store(id, _) => JobKind::Store(*id),
            CacheJob::Lease(id, _) => JobKind::Lease(*id),
            CacheJob::Release(id) => JobKind::Release(*id),
        }
    }

    /// Carries the job out (blocking); a panic in the cache becomes the
    /// job's failure.
    pub(crate) fn run(self, cache: &dyn TokenCache) -> Option<Input> {
        let kind = self.kind();
        catch_panic(kind, move || match self {
            CacheJob::Load(id, newer_than) => Some(Input::CacheLoaded(
                id,
                cache.load_newer(newer_than).map(|t| t.map(Arc::new)),
            )),
            CacheJob::Store(id, token) => Some(Input::Stored(id, cache.store(&token))),
            CacheJob::Lease(id, ttl) => Some(Input::Lease(id, cache.acquire_lease(ttl))),
            CacheJob::Release(id) => Some(released(id, cache.release_lease())),
        })
    }

    /// Carries the job out on an async cache, the twin of [`run`](Self::run);
    /// the caller contains panics.
    #[cfg(any(feature = "tokio", feature = "async-std", feature = "smol"))]
    pub(crate) async fn run_async<C: AsyncTokenCache>(self, cache: &C) -> Option<Input> {
        match self {
            CacheJob::Load(id, newer_than) => Some(Input::CacheLoaded(
                id,
                cache.load_newer(newer_than).await.map(|t| t.map(Arc::new)),
            )),
            CacheJob::Store(id, token) => Some(Input::Stored(id, cache.store(&token).await)),
            CacheJob::Lease(id, ttl) => Some(Input::Lease(id, cache.acquire_lease(ttl).await)),
            CacheJob::Release(id) => Some(released(id, cache.release_lease().await)),
        }
    }
}

/// A release's answer: only a shutdown waits for it; a failure is logged
/// here (the lease then lapses by its TTL).
fn released(id: RequestId, result: Result<(), CacheError>) -> Input {
    if let Err(e) = &result {
        let hint = crate::metrics::cache_hint(e);
        tracing::warn!(error = %e, hint, "could not release the cache lease");
    }
    Input::Released(id, result)
}

impl JobKind {
    /// The answer for a job that did not finish (it panicked, or its
    /// runtime is going away).
    pub(crate) fn failed(self, why: &str) -> Option<Input> {
        tracing::warn!(job = ?self, why, "a driver job did not finish");
        let cache_error = || CacheError::new(CacheErrorKind::Unavailable, format!("cache {why}"));
        match self {
            JobKind::Fetch(id) => Some(Input::Fetched(
                id,
                Err(FetchError::transient(format!("token source {why}"))),
            )),
            JobKind::Load(id) => Some(Input::CacheLoaded(id, Err(cache_error()))),
            JobKind::Store(id) => Some(Input::Stored(id, Err(cache_error()))),
            JobKind::Lease(id) => Some(Input::Lease(id, Err(cache_error()))),
            JobKind::Release(id) => Some(Input::Released(id, Err(cache_error()))),
        }
    }
}

/// Runs `f`, turning a panic into `kind`'s failure. The panic's message is
/// not repeated: it may hold anything, including a secret.
pub(crate) fn catch_panic(kind: JobKind, f: impl FnOnce() -> Option<Input>) -> Option<Input> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| kind.failed("panicked"))
}

/// Runs a blocking fetch with panics contained.
pub(crate) fn fetch_blocking(
    source: &dyn crate::source::TokenSource,
    request: &FetchRequest,
) -> Option<Input> {
    catch_panic(JobKind::Fetch(request.id), || {
        Some(validated(request.id, source.fetch(request)))
    })
}

/// The input for a source's answer, after checking that the token can be
/// used at all: an access token that cannot go into an `Authorization`
/// header (empty, or with spaces or control characters; RFC 6750's
/// b64token is printable ASCII) is garbage, and serving it would only turn
/// into failed calls.
pub(crate) fn validated(id: RequestId, result: Result<TokenResponse, FetchError>) -> Input {
    Input::Fetched(
        id,
        // The token type too: it is the header's auth-scheme (RFC 7235).
        result.and_then(|response| match response.check_usable() {
            Ok(()) => Ok(response),
            Err(e) => Err(FetchError::transient(format!("the source returned an {e}"))),
        }),
    )
}

impl Refresher {
    pub(crate) fn new(
        machine: RefreshMachine,
        publisher: Publisher,
        clock: Arc<dyn Clock>,
        heartbeat: Duration,
        name: Arc<str>,
    ) -> Self {
        Refresher {
            machine,
            publisher,
            clock,
            heartbeat,
            observer: crate::metrics::Observer::new(name),
        }
    }

    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub(crate) fn start(&mut self) {
        tracing::debug!("refresher starting");
        self.feed(Input::Start);
    }

    /// Feeds the result of a job (or a tick, a command) at the clock's now.
    pub(crate) fn feed(&mut self, input: Input) {
        let seen = self.observer.before_input(&input); // metrics hook
        log_input(&input);
        let now = self.clock.read();
        self.machine.handle_input(input, now);
        while let Some(event) = self.machine.poll_event() {
            if let Event::Refreshed {
                token,
                stale_at,
                expires_at,
                ..
            } = &event
            {
                tracing::info!(
                    token = %token,
                    expires_at = %expires_at,
                    stale_at = %stale_at,
                    "refreshed the access token"
                );
            }
            self.observer.on_event(&event); // metrics hook
        }
        self.observer.after_input(seen, now); // metrics hook
    }

    pub(crate) fn tick(&mut self) {
        self.feed(Input::Tick);
    }

    pub(crate) fn command(&mut self, command: Command) {
        match command {
            Command::Invalidate(id) => {
                tracing::info!(token = %id, "token reported as rejected");
                self.feed(Input::Invalidate(id));
            }
            Command::Wake => self.tick(),
            Command::Stale => {
                // A reader found the token stale by the clocks: after a
                // resume or a wall clock stepped forward, this tick starts
                // the refresh that the late timer would have.
                tracing::debug!("a read found the token stale; re-reading the clocks");
                self.tick();
            }
            Command::NeedValidity(needed) => {
                tracing::debug!(?needed, "a read needs a token valid for longer");
                self.feed(Input::NeedValidity(needed));
            }
            Command::Shutdown => {
                tracing::info!("refresher shutting down");
                self.feed(Input::Shutdown);
            }
            Command::HandlesDropped => {
                tracing::info!("every token handle was dropped; refresher stopping");
                self.feed(Input::Shutdown);
            }
        }
    }

    /// Drains the machine's outputs: publishes at once, and returns the
    /// first job, or how long to sleep.
    pub(crate) fn next(&mut self) -> Next {
        loop {
            let output = self.machine.poll_output();
            if let Output::Action(action) = &output {
                self.observer.on_action(action, self.clock.read()); // metrics hook
            }
            let job = match output {
                Output::Timeout(at) => {
                    let until = at.saturating_duration_since(self.clock.now());
                    // Never longer than the heartbeat: the clock may jump
                    // or the machine may be suspended while we sleep.
                    return Next::Sleep(until.min(self.heartbeat));
                }
                Output::Action(Action::Stop) => {
                    tracing::debug!("refresher stopped");
                    return Next::Stop;
                }
                Output::Action(Action::Publish(snapshot)) => {
                    tracing::debug!(state = ?snapshot.state, "publishing");
                    self.publisher.publish(snapshot);
                    continue;
                }
                Output::Action(Action::Fetch(request)) => {
                    tracing::debug!(attempt = request.attempt, "fetching a token");
                    Job::Fetch(request)
                }
                Output::Action(Action::LoadCache { id, newer_than }) => {
                    Job::Cache(CacheJob::Load(id, newer_than))
                }
                Output::Action(Action::Store { id, token, .. }) => {
                    Job::Cache(CacheJob::Store(id, token))
                }
                Output::Action(Action::AcquireLease { id, ttl, .. }) => {
                    Job::Cache(CacheJob::Lease(id, ttl))
                }
                Output::Action(Action::ReleaseLease { id, .. }) => {
                    Job::Cache(CacheJob::Release(id))
                }
            };
            return Next::Job(job);
        }
    }
}

/// Logs what happened (never a secret: errors carry none by contract).
fn log_input(input: &Input) {
    match input {
        // The hints say what to check (crate::metrics::hints).
        Input::Fetched(_, Err(e)) => {
            let hint = crate::metrics::fetch_hint(e);
            tracing::warn!(error = %e, hint, "token refresh failed")
        }
        Input::CacheLoaded(_, Err(e)) => {
            let hint = crate::metrics::cache_hint(e);
            tracing::warn!(error = %e, hint, "reading the cache failed")
        }
        Input::Stored(_, Err(e)) => {
            let hint = crate::metrics::cache_hint(e);
            tracing::warn!(error = %e, hint, "storing the token in the cache failed")
        }
        Input::Lease(_, Err(e)) => {
            let hint = crate::metrics::cache_hint(e);
            tracing::warn!(error = %e, hint, "taking the cache lease failed")
        }
        Input::Lease(_, Ok(LeaseOutcome::Busy)) => {
            tracing::debug!("another instance holds the lease")
        }
        Input::CacheLoaded(_, Ok(Some(t))) => tracing::debug!(token = %t.id(), "cache read"),
        _ => {}
    }
}

/// The cache of a driver built without one; the machine never asks it
/// anything, because `MachineConfig::cache` is then false.
pub(crate) struct NoCache;

impl TokenCache for NoCache {
    fn load(&self) -> Result<Option<Token>, CacheError> {
        Ok(None)
    }

    fn store(&self, _token: &Token) -> Result<(), CacheError> {
        Ok(())
    }
}
