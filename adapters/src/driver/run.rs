//! The async driver: one run loop for every [`Runtime`], and the types
//! that say what it runs ([`Source`], [`Caches`]).
//!
//! Sources and caches come in two kinds, blocking and async; a fetcher and
//! a cache runner hide which, so there is one loop: blocking calls go to
//! the runtime's blocking pool, async ones are polled in the loop's own
//! task. Either way a panic is the job's failure.
//!
//! One task owns the machine. It waits, with `futures`-style polling, for
//! whichever comes first: an answer of a job (several may be out: one the
//! machine has given up on at its deadline is still polled, because its
//! answer may carry a rotated refresh token), a command from the handles,
//! or the timer (the machine's next deadline, capped by the heartbeat).

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use freshtoken_core::{FetchRequest, Input, RefreshToken};
use futures::future::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};

use super::refresher::{fetch_blocking, validated, CacheJob, Job, JobKind, Next, Refresher};
use super::{Builder, DriverHandle, Settings, SyncCache};
use crate::cache::{AsyncTokenCache, TokenCache};
use crate::handle::{Command, Sharing, TokenHandle};
use crate::runtime::Runtime;
use crate::source::{AsyncTokenSource, TokenSource};

/// A job's answer, polled by the loop.
pub type Answer = Pin<Box<dyn Future<Output = Option<Input>> + Send>>;

/// How the loop gets a token: a blocking source on the runtime's blocking
/// pool, or an async source in the driver's task.
pub trait Fetcher<R>: Send + Sync + 'static {
    /// The fetch's answer, with panics contained.
    fn fetch(&self, rt: &R, request: FetchRequest) -> Answer;
}

/// How the loop carries out cache jobs: a blocking cache on the runtime's
/// blocking pool, or an async cache in the driver's task.
pub trait CacheRunner<R>: Send + Sync + 'static {
    /// The job's answer, with panics contained.
    fn run(&self, rt: &R, job: CacheJob) -> Answer;
}

/// A [`TokenSource`] run on the blocking pool.
struct OnPool<S>(Arc<S>);

impl<R: Runtime, S: TokenSource> Fetcher<R> for OnPool<S> {
    fn fetch(&self, rt: &R, request: FetchRequest) -> Answer {
        let source = self.0.clone();
        on_pool(rt, JobKind::Fetch(request.id), move || {
            fetch_blocking(&*source, &request)
        })
    }
}

/// An [`AsyncTokenSource`], polled in the driver's task.
struct InTask<S>(Arc<S>);

impl<R: Runtime, S: AsyncTokenSource> Fetcher<R> for InTask<S> {
    fn fetch(&self, _rt: &R, request: FetchRequest) -> Answer {
        let source = self.0.clone();
        in_task(JobKind::Fetch(request.id), async move {
            Some(validated(request.id, source.fetch(&request).await))
        })
    }
}

/// A [`TokenCache`] run on the blocking pool.
struct CacheOnPool(Arc<dyn TokenCache>);

impl<R: Runtime> CacheRunner<R> for CacheOnPool {
    fn run(&self, rt: &R, job: CacheJob) -> Answer {
        let cache = self.0.clone();
        on_pool(rt, job.kind(), move || job.run(&*cache))
    }
}

/// An [`AsyncTokenCache`], polled in the driver's task.
struct CacheInTask<C>(Arc<C>);

impl<R: Runtime, C: AsyncTokenCache> CacheRunner<R> for CacheInTask<C> {
    fn run(&self, _rt: &R, job: CacheJob) -> Answer {
        let cache = self.0.clone();
        in_task(job.kind(), async move { job.run_async(&*cache).await })
    }
}

/// `f` on the blocking pool. `f` contains its own panics; `None` from the
/// pool (the runtime is shutting down, or a panic slipped through) is the
/// job's failure.
fn on_pool<R: Runtime>(
    rt: &R,
    kind: JobKind,
    f: impl FnOnce() -> Option<Input> + Send + 'static,
) -> Answer {
    let done = rt.spawn_blocking(f);
    Box::pin(done.map(move |answer| answer.unwrap_or_else(|| kind.failed("panicked"))))
}

/// `job`, to be polled in the driver's task, with a panic while polling
/// it turned into the job's failure.
fn in_task(kind: JobKind, job: impl Future<Output = Option<Input>> + Send + 'static) -> Answer {
    Box::pin(
        AssertUnwindSafe(job)
            .catch_unwind()
            .map(move |answer| answer.unwrap_or_else(|_| kind.failed("panicked"))),
    )
}

/// Spawns the run loop on `rt`.
fn spawn<R: Runtime>(
    rt: R,
    refresher: Refresher,
    fetcher: Box<dyn Fetcher<R>>,
    caches: Box<dyn CacheRunner<R>>,
) {
    let span = tracing::info_span!("freshtoken");
    rt.clone().spawn(tracing::Instrument::instrument(
        run(rt, refresher, fetcher, caches),
        span,
    ));
}

/// What woke the loop.
enum Wake {
    Answered(Option<Input>),
    Command(Command),
    Timer,
}

async fn run<R: Runtime>(
    rt: R,
    mut refresher: Refresher,
    fetcher: Box<dyn Fetcher<R>>,
    caches: Box<dyn CacheRunner<R>>,
) {
    refresher.start();
    let mut answers: FuturesUnordered<Answer> = FuturesUnordered::new();
    loop {
        let sleep = match refresher.next() {
            Next::Stop => return,
            Next::Sleep(d) => d,
            Next::Job(job) => {
                answers.push(match job {
                    Job::Fetch(request) => fetcher.fetch(&rt, request),
                    Job::Cache(job) => caches.run(&rt, job),
                });
                continue;
            }
        };
        let wake = {
            let mut timer = pin!(rt.sleep(sleep));
            let mut command = pin!(refresher.publisher().recv());
            poll_fn(|cx| {
                if let Poll::Ready(Some(input)) = answers.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Answered(input));
                }
                if let Poll::Ready(c) = command.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Command(c));
                }
                timer.as_mut().poll(cx).map(|()| Wake::Timer)
            })
            .await
        };
        match wake {
            Wake::Answered(Some(input)) => refresher.feed(input),
            Wake::Answered(None) => {}
            Wake::Command(c) => refresher.command(c),
            Wake::Timer => refresher.tick(),
        }
    }
}

/// What [`Builder::spawn`] accepts as a source: any
/// [`TokenSource`] (run on the runtime's blocking pool, since it blocks),
/// or an [`AsyncTokenSource`] wrapped in [`AsyncSource`] (polled in the
/// driver's own task).
///
/// Implemented by the crate only; implement [`TokenSource`] or
/// [`AsyncTokenSource`] for your own sources.
pub trait Source: sealed::SourceKind {}

/// An [`AsyncTokenSource`] for [`Builder::spawn`]: its futures are polled
/// in the driver's task instead of blocking a pool thread.
///
/// ```
/// use freshtoken::driver::{AsyncSource, Builder};
/// use freshtoken::runtime::Smol;
/// use freshtoken::source::{AsyncTokenSource, FetchRequest, TokenResponse};
/// use freshtoken::{AccessToken, FetchError};
///
/// struct Sidecar;
///
/// impl AsyncTokenSource for Sidecar {
///     async fn fetch(&self, _request: &FetchRequest) -> Result<TokenResponse, FetchError> {
///         Ok(TokenResponse::new(AccessToken::new("from-sidecar")).with_expires_in(Some(300)))
///     }
/// }
///
/// # #[cfg(feature = "smol")]
/// smol::block_on(async {
///     let (tokens, driver) = Builder::new().spawn(Smol, AsyncSource(Sidecar));
///     assert!(tokens.ready().await.is_ok());
///     driver.shutdown().await;
/// });
/// ```
#[derive(Debug, Clone)]
pub struct AsyncSource<S>(pub S);

/// What a [`Builder`] holds as its cache, for [`Builder::spawn`]: a
/// [`SyncCache`] (a blocking cache, or none) or an [`AsyncCache`].
/// Implemented by the crate only.
pub trait Caches: sealed::CacheKind {}

/// The cache of a [`Builder`] that holds an [`AsyncTokenCache`], from
/// [`Builder::async_cache`]: polled in the async driver's task (with the
/// cache timeout and panic containment of any cache call). Such a builder
/// has every setter, and [`spawn`](Builder::spawn) but not `spawn_thread`.
pub struct AsyncCache<C>(Arc<C>);

impl<C> std::fmt::Debug for AsyncCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncCache")
    }
}

/// The crate-only side of [`Source`] and [`Caches`].
mod sealed {
    use super::*;

    pub trait SourceKind: Send + Sync + 'static {
        /// The fetcher for the run loop, and the refresh token to start
        /// from.
        fn into_fetcher<R: Runtime>(self) -> (Box<dyn Fetcher<R>>, Option<RefreshToken>);

        /// What the source's tokens are for, when it knows.
        fn token_key(&self) -> Option<crate::TokenKey>;
    }

    pub trait CacheKind: Send + 'static {
        /// The cache runner for the run loop, and a blocking cache for
        /// nothing (the refresher's own `NoCache` when there is none).
        /// The cache is bound to `key`'s configuration (see
        /// [`TokenCache::bind_config`]), and made for it if it is to be.
        fn into_runner<R: Runtime>(
            self,
            name: &Arc<str>,
            key: Option<&crate::TokenKey>,
        ) -> (Box<dyn CacheRunner<R>>, Sharing);
    }

    impl<S: TokenSource> SourceKind for S {
        fn into_fetcher<R: Runtime>(self) -> (Box<dyn Fetcher<R>>, Option<RefreshToken>) {
            let initial = self.initial_refresh_token();
            (Box::new(OnPool(Arc::new(self))), initial)
        }

        fn token_key(&self) -> Option<crate::TokenKey> {
            TokenSource::token_key(self)
        }
    }

    impl<S: AsyncTokenSource> SourceKind for AsyncSource<S> {
        fn into_fetcher<R: Runtime>(self) -> (Box<dyn Fetcher<R>>, Option<RefreshToken>) {
            let initial = self.0.initial_refresh_token();
            (Box::new(InTask(Arc::new(self.0))), initial)
        }

        fn token_key(&self) -> Option<crate::TokenKey> {
            self.0.token_key()
        }
    }

    impl CacheKind for SyncCache {
        fn into_runner<R: Runtime>(
            self,
            name: &Arc<str>,
            key: Option<&crate::TokenKey>,
        ) -> (Box<dyn CacheRunner<R>>, Sharing) {
            let (cache, sharing) = self.resolve(key, name);
            (Box::new(CacheOnPool(cache)), sharing)
        }
    }

    impl<C: AsyncTokenCache> CacheKind for AsyncCache<C> {
        fn into_runner<R: Runtime>(
            self,
            name: &Arc<str>,
            key: Option<&crate::TokenKey>,
        ) -> (Box<dyn CacheRunner<R>>, Sharing) {
            if !Sharing::cache_usable_for(key) {
                let none = Arc::new(super::super::refresher::NoCache);
                return (Box::new(CacheOnPool(none)), Sharing::of(true, false, key));
            }
            if let Some(key) = key {
                self.0.bind_config(key.config_id());
            }
            let cache = crate::metrics::meter_async(self.0, name);
            (Box::new(CacheInTask(cache)), Sharing::Shared)
        }
    }
}

impl<S: TokenSource> Source for S {}
impl<S: AsyncTokenSource> Source for AsyncSource<S> {}
impl Caches for SyncCache {}
impl<C: AsyncTokenCache> Caches for AsyncCache<C> {}

impl<C> Builder<C> {
    /// Shares tokens through an async cache, polled in the async driver's
    /// own task. It replaces a cache set before; every other setting
    /// stays, and may still be made after this.
    ///
    /// ```
    /// use freshtoken::cache::{AsyncTokenCache, MemoryCache, TokenCache};
    /// use freshtoken::driver::Builder;
    /// use freshtoken::runtime::Tokio;
    /// use freshtoken::source::ConstTokenSource;
    /// use freshtoken::{CacheError, Token};
    /// use std::time::Duration;
    ///
    /// /// Stands for a cache with an async client.
    /// struct Remote(MemoryCache);
    ///
    /// impl AsyncTokenCache for Remote {
    ///     async fn load(&self) -> Result<Option<Token>, CacheError> {
    ///         self.0.load()
    ///     }
    ///     async fn store(&self, token: &Token) -> Result<(), CacheError> {
    ///         self.0.store(token)
    ///     }
    /// }
    ///
    /// # #[cfg(feature = "tokio")]
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let shared = MemoryCache::new();
    /// let (tokens, driver) = Builder::new()
    ///     .async_cache(Remote(shared.clone()))
    ///     .fetch_timeout(Duration::from_secs(5)) // settings in any order
    ///     .spawn(Tokio::current().unwrap(), ConstTokenSource::new("key", Some(3600)));
    /// assert!(tokens.ready().await.is_ok());
    /// driver.shutdown().await;
    /// // The token was shared through the cache.
    /// let stored = shared.load().unwrap().expect("stored");
    /// assert_eq!(stored.access_token().expose_secret(), "key");
    /// # });
    /// ```
    pub fn async_cache<A: AsyncTokenCache>(self, cache: A) -> Builder<AsyncCache<A>> {
        Builder {
            settings: self.settings,
            caches: AsyncCache(Arc::new(cache)),
        }
    }
}

impl<C: Caches> Builder<C> {
    /// Spawns the async driver on `runtime`: one task, which owns the
    /// machine. `source` is a [`TokenSource`] (run on the runtime's
    /// blocking pool) or an [`AsyncSource`].
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// use freshtoken::runtime::Tokio;
    /// use freshtoken::source::ConstTokenSource;
    ///
    /// # #[cfg(feature = "tokio")]
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (tokens, driver) =
    ///     Builder::new().spawn(Tokio::current().unwrap(), ConstTokenSource::new("key", Some(3600)));
    /// let token = tokens.ready().await.expect("a token");
    /// assert_eq!(token.authorization_header(), "Bearer key");
    /// drop(token);
    /// driver.shutdown().await;
    /// # });
    /// ```
    pub fn spawn<R: Runtime>(self, runtime: R, source: impl Source) -> (TokenHandle, DriverHandle) {
        let key = super::key_of(source.token_key(), &self.settings.cache_config);
        let (fetcher, initial) = source.into_fetcher::<R>();
        let (caches, sharing) = self
            .caches
            .into_runner::<R>(&self.settings.name, key.as_ref());
        let settings: Settings = self.settings;
        let (refresher, handle, control) = settings.build(sharing, initial);
        spawn(runtime, refresher, fetcher, caches);
        (handle, DriverHandle::new(control, None))
    }
}
