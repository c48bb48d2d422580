//! Drivers: what runs the [`RefreshMachine`] in the background and feeds
//! the [`TokenHandle`]s.
//!
//! Three drivers, each behind its cargo feature, all configured by one
//! [`Builder`] and all returning the same pair: a [`TokenHandle`] for the
//! application and a [`DriverHandle`] to stop the driver.
//!
//! * `blocking` (default): [`Builder::spawn_thread`], a named thread.
//! * `tokio`: [`Builder::spawn_tokio`] (blocking sources, run on tokio's
//!   blocking pool) and [`Builder::spawn_tokio_async`] (async sources).
//! * `async-std`: [`Builder::spawn_async_std`] and
//!   [`Builder::spawn_async_std_async`]; the driver also serves smol
//!   applications (both are built on async-io).
//!
//! A blocking cache ([`Builder::cache`]) works with every driver; the async
//! drivers run it on their blocking pool. An async cache
//! ([`Builder::async_cache`], tokio and async-std only) is polled in the
//! async driver's own task.
//!
//! ```
//! use freshtoken::driver::Builder;
//! use freshtoken::source::ConstTokenSource;
//! use std::time::Duration;
//!
//! let (tokens, driver) = Builder::new()
//!     .spawn_thread(ConstTokenSource::new("api-key", Some(3600)))
//!     .expect("a thread");
//! let token = tokens.wait_ready(Duration::from_secs(5)).expect("a token");
//! assert_eq!(token.access_token().expose_secret(), "api-key");
//! drop(token);
//! driver.shutdown_blocking();
//! ```
//!
//! Every driver behaves the same way:
//!
//! * Spawning never fails because a fetch failed: the first fetch is
//!   retried with the same backoff as any other, and
//!   [`TokenHandle::ready`] / [`TokenHandle::wait_ready`] tell the
//!   application when a token is there (or why not).
//! * It sleeps until the machine's next deadline but never longer than the
//!   heartbeat, and reads `now` from its clock on every wake-up, so a
//!   suspend or a wall-clock jump is noticed within one heartbeat.
//! * A source or cache call that panics, or takes longer than the fetch
//!   timeout, becomes a transient error (a cache miss, for the cache): the
//!   driver keeps running and the previous token stays served. So does a
//!   token that cannot be sent in an `Authorization` header. The deadlines
//!   are the machine's; an answer that comes after one is still fed to it.
//! * It stops when [`DriverHandle::shutdown`] is called or when the last
//!   [`TokenHandle`] is dropped. Dropping the [`DriverHandle`] does not stop
//!   it. Either way a fetch or store in flight is finished first (within
//!   the fetch timeout and a cache call), so a rotated refresh token is
//!   never lost to a shutdown; `shutdown` returns after that. Dropping the
//!   handles starts the same drain in the background, which completes only
//!   if the process lives on: a process about to exit calls `shutdown`.

use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::handle::{Command, Control, Publisher};
use freshtoken_core::{
    Backoff, Clock, Jitter, LifetimePolicy, MachineConfig, RefreshMachine, RefreshToken,
    TokenHandle,
};

#[cfg(any(feature = "tokio", feature = "async-std"))]
use crate::cache::AsyncTokenCache;
use crate::cache::TokenCache;
use crate::clock::SystemClock;

mod engine;

#[cfg(feature = "async-std")]
mod async_std_rt;
#[cfg(feature = "blocking")]
mod blocking;
#[cfg(any(feature = "tokio", feature = "async-std"))]
mod run;
#[cfg(feature = "tokio")]
mod tokio_rt;

use engine::{Engine, NoCache};

/// Configures and spawns a driver.
///
/// Defaults: the [`MachineConfig`] defaults (lifetime policy, jitter,
/// backoff), a random seed, a 30 s heartbeat, a 30 s fetch timeout, the
/// system clock, no cache.
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::{Jitter, ManualClock, Timestamp};
/// use std::time::Duration;
///
/// let builder = Builder::new()
///     .jitter(Jitter::new(0.1))
///     .heartbeat(Duration::from_secs(10))
///     .fetch_timeout(Duration::from_secs(5))
///     .clock(ManualClock::new(Timestamp::from_secs(1_000)))
///     .seed(7);
/// assert_eq!(builder.heartbeat_interval(), Duration::from_secs(10));
/// ```
pub struct Builder {
    config: MachineConfig,
    seed: Option<u64>,
    heartbeat: Duration,
    fetch_timeout: Duration,
    clock: Arc<dyn Clock>,
    cache: Option<Arc<dyn TokenCache>>,
    thread_name: String,
    name: Arc<str>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            config: MachineConfig::default(),
            seed: None,
            heartbeat: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
            cache: None,
            thread_name: "freshtoken".to_owned(),
            name: Arc::from("default"),
        }
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("heartbeat", &self.heartbeat)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("cache", &self.cache.is_some())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole machine configuration. The seed, the cache flag
    /// and the refresh token are still taken from this builder's
    /// [`seed`](Self::seed), [`cache`](Self::cache) and
    /// [`refresh_token`](Self::refresh_token) when those are called.
    pub fn config(mut self, config: MachineConfig) -> Self {
        self.config = config;
        self
    }

    /// How lifetimes become stale and expiry times.
    pub fn lifetime(mut self, lifetime: LifetimePolicy) -> Self {
        self.config.lifetime = lifetime;
        self
    }

    /// How much earlier than `stale_at` refreshes may happen.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// How failed fetches are retried.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The seed of the machine's random draws. Default: a random one, so
    /// that instances started together do not refresh together.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The longest the driver sleeps before re-reading the clock (default
    /// 30 s): the bound on how late a clock jump or a suspend is noticed.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(1));
        self
    }

    /// The heartbeat interval set so far.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// How long a fetch (or a cache call) may take before it counts as a
    /// transient failure (default 30 s): the machine's deadline for the
    /// request. An answer that comes later is still used when it carries a
    /// rotated refresh token. The cache lease TTL is raised to at least 1.5
    /// times this, so a live holder never loses its lease in the middle of
    /// a fetch.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a cache lease may be held (default 45 s, and never less
    /// than 1.5 times the [`fetch_timeout`](Self::fetch_timeout)).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }

    /// Minimum time between refreshes caused by
    /// [`TokenHandle::invalidate`] (default 5 s).
    pub fn invalidate_interval(mut self, interval: Duration) -> Self {
        self.config.invalidate_interval = interval;
        self
    }

    /// The clock the driver (and its handles) read; default the system's.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// A cache shared with other instances.
    pub fn cache(mut self, cache: impl TokenCache) -> Self {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// The refresh token to start from, for refresh-token flows.
    pub fn refresh_token(mut self, refresh_token: RefreshToken) -> Self {
        self.config.refresh_token = Some(refresh_token);
        self
    }

    /// The refresher's name (default `default`): the `refresher` label of
    /// its metrics (feature `metrics`) and a field of its tracing spans.
    /// Give each driver of a process its own short, fixed name (`"api"`,
    /// `"billing"`); never anything per request or secret.
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// let builder = Builder::new().name("api");
    /// assert_eq!(builder.refresher_name(), "api");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }

    /// The refresher's name set so far.
    pub fn refresher_name(&self) -> &str {
        &self.name
    }

    /// The name of the blocking driver's thread (default `freshtoken`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// The engine, the application's handle and the driver's control.
    fn build(self) -> (Engine, TokenHandle, Control) {
        let shared = self.cache.is_some();
        self.build_shared(shared)
    }

    /// [`build`](Self::build), telling the machine whether it has a shared
    /// cache (an async cache lives outside the engine).
    fn build_shared(self, shared: bool) -> (Engine, TokenHandle, Control) {
        let mut config = self.config;
        config.seed = self.seed.unwrap_or_else(|| fastrand::u64(..));
        config.cache = shared;
        config.fetch_timeout = self.fetch_timeout;
        config.cache_timeout = self.fetch_timeout;
        config.lease_ttl = config
            .lease_ttl
            .max(self.fetch_timeout.saturating_mul(3) / 2);
        let (publisher, handle) = Publisher::new(self.clock.clone());
        let control = publisher.control();
        let cache = self.cache.unwrap_or_else(|| Arc::new(NoCache));
        let engine = Engine::new(
            RefreshMachine::new(config),
            publisher,
            self.clock,
            cache,
            self.heartbeat,
            self.name,
        );
        (engine, handle, control)
    }

    /// Spawns the blocking driver on a named thread. Fails only if the
    /// thread cannot be started.
    #[cfg(feature = "blocking")]
    pub fn spawn_thread(
        self,
        source: impl crate::source::TokenSource,
    ) -> std::io::Result<(TokenHandle, DriverHandle)> {
        let name = self.thread_name.clone();
        let (engine, handle, control) = self.build();
        let thread = blocking::spawn(engine, Arc::new(source), name)?;
        Ok((handle, DriverHandle::new(control, Some(thread))))
    }

    /// Spawns the shared async run loop on `rt`, with this builder's
    /// blocking cache (if any) run on the blocking pool.
    #[cfg(any(feature = "tokio", feature = "async-std"))]
    fn spawn_run<R: run::Runtime>(
        self,
        rt: R,
        fetcher: impl run::Fetcher<R>,
    ) -> (TokenHandle, DriverHandle) {
        let (engine, handle, control) = self.build();
        let caches = run::BlockingCache(engine.cache());
        run::spawn(rt, engine, fetcher, caches);
        (handle, DriverHandle::new(control, None))
    }

    /// Spawns the driver on the current tokio runtime; `source` runs on
    /// its blocking pool. The runtime needs its time driver
    /// (`enable_time`).
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// use freshtoken::source::ConstTokenSource;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (tokens, driver) = Builder::new().spawn_tokio(ConstTokenSource::new("key", Some(3600)));
    /// let token = tokens.ready().await.expect("a token");
    /// assert_eq!(token.authorization_header(), "Bearer key");
    /// drop(token);
    /// driver.shutdown().await;
    /// # });
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    #[cfg(feature = "tokio")]
    pub fn spawn_tokio(
        self,
        source: impl crate::source::TokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(
            tokio_rt::Tokio::current(),
            run::BlockingSource(Arc::new(source)),
        )
    }

    /// Spawns the driver with an async source on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    #[cfg(feature = "tokio")]
    pub fn spawn_tokio_async(
        self,
        source: impl crate::source::AsyncTokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(
            tokio_rt::Tokio::current(),
            run::AsyncSource(Arc::new(source)),
        )
    }

    /// Spawns the driver as an async-std task; `source` runs on async-std's
    /// blocking pool. Works from any context, including inside
    /// `smol::block_on`.
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// use freshtoken::source::ConstTokenSource;
    ///
    /// # async_std::task::block_on(async {
    /// let (tokens, driver) = Builder::new().spawn_async_std(ConstTokenSource::new("key", Some(3600)));
    /// assert!(tokens.ready().await.is_ok());
    /// driver.shutdown().await;
    /// # });
    /// ```
    #[cfg(feature = "async-std")]
    pub fn spawn_async_std(
        self,
        source: impl crate::source::TokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(
            async_std_rt::AsyncStd,
            run::BlockingSource(Arc::new(source)),
        )
    }

    /// Spawns the driver with an async source as an async-std task.
    #[cfg(feature = "async-std")]
    pub fn spawn_async_std_async(
        self,
        source: impl crate::source::AsyncTokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(async_std_rt::AsyncStd, run::AsyncSource(Arc::new(source)))
    }

    /// Shares tokens through an async cache, polled in the driver's own
    /// task. It replaces any [`cache`](Self::cache) set before.
    ///
    /// Only the async drivers can poll an async cache, so this returns an
    /// [`AsyncCacheBuilder`], which has the tokio and async-std spawns and
    /// not [`spawn_thread`](Self::spawn_thread): a blocking driver with an
    /// async cache does not compile. Call it last, after the other
    /// settings.
    ///
    /// ```
    /// use freshtoken::cache::{AsyncTokenCache, MemoryCache, TokenCache};
    /// use freshtoken::driver::Builder;
    /// use freshtoken::source::ConstTokenSource;
    /// use freshtoken::{CacheError, Token};
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
    ///     .spawn_tokio(ConstTokenSource::new("key", Some(3600)));
    /// assert!(tokens.ready().await.is_ok());
    /// driver.shutdown().await;
    /// // The token was shared through the cache.
    /// let stored = shared.load().unwrap().expect("stored");
    /// assert_eq!(stored.access_token().expose_secret(), "key");
    /// # });
    /// ```
    #[cfg(any(feature = "tokio", feature = "async-std"))]
    pub fn async_cache<C: AsyncTokenCache>(mut self, cache: C) -> AsyncCacheBuilder<C> {
        self.cache = None;
        AsyncCacheBuilder {
            builder: self,
            cache: Arc::new(cache),
        }
    }
}

/// A [`Builder`] with an [`AsyncTokenCache`], from
/// [`Builder::async_cache`]: it spawns the async drivers only, whose run
/// loop polls the cache in its own task (with the fetch timeout and panic
/// containment of any cache call).
///
/// ```
/// use freshtoken::cache::{AsyncTokenCache, MemoryCache, TokenCache};
/// use freshtoken::driver::Builder;
/// use freshtoken::source::ConstTokenSource;
/// use freshtoken::{CacheError, Token};
///
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
/// let builder = Builder::new().async_cache(Remote(MemoryCache::new()));
/// # #[cfg(feature = "async-std")]
/// # async_std::task::block_on(async {
/// let (tokens, driver) = builder.spawn_async_std(ConstTokenSource::new("key", Some(3600)));
/// assert!(tokens.ready().await.is_ok());
/// driver.shutdown().await;
/// # });
/// ```
#[cfg(any(feature = "tokio", feature = "async-std"))]
pub struct AsyncCacheBuilder<C> {
    builder: Builder,
    cache: Arc<C>,
}

#[cfg(any(feature = "tokio", feature = "async-std"))]
impl<C> std::fmt::Debug for AsyncCacheBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncCacheBuilder")
            .field("builder", &self.builder)
            .finish_non_exhaustive()
    }
}

#[cfg(any(feature = "tokio", feature = "async-std"))]
impl<C: AsyncTokenCache> AsyncCacheBuilder<C> {
    /// Spawns the shared async run loop on `rt` with the async cache.
    fn spawn_run<R: run::Runtime>(
        self,
        rt: R,
        fetcher: impl run::Fetcher<R>,
    ) -> (TokenHandle, DriverHandle) {
        let name = self.builder.name.clone();
        let (engine, handle, control) = self.builder.build_shared(true);
        let cache = crate::metrics::meter_async(self.cache, &name); // metrics hook
        run::spawn(rt, engine, fetcher, run::AsyncCache(cache));
        (handle, DriverHandle::new(control, None))
    }

    /// [`Builder::spawn_tokio`] with the async cache: a blocking source on
    /// tokio's blocking pool.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    #[cfg(feature = "tokio")]
    pub fn spawn_tokio(
        self,
        source: impl crate::source::TokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(
            tokio_rt::Tokio::current(),
            run::BlockingSource(Arc::new(source)),
        )
    }

    /// [`Builder::spawn_tokio_async`] with the async cache.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    #[cfg(feature = "tokio")]
    pub fn spawn_tokio_async(
        self,
        source: impl crate::source::AsyncTokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(
            tokio_rt::Tokio::current(),
            run::AsyncSource(Arc::new(source)),
        )
    }

    /// [`Builder::spawn_async_std`] with the async cache: a blocking source
    /// on async-std's blocking pool; also under smol.
    #[cfg(feature = "async-std")]
    pub fn spawn_async_std(
        self,
        source: impl crate::source::TokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(
            async_std_rt::AsyncStd,
            run::BlockingSource(Arc::new(source)),
        )
    }

    /// [`Builder::spawn_async_std_async`] with the async cache.
    #[cfg(feature = "async-std")]
    pub fn spawn_async_std_async(
        self,
        source: impl crate::source::AsyncTokenSource,
    ) -> (TokenHandle, DriverHandle) {
        self.spawn_run(async_std_rt::AsyncStd, run::AsyncSource(Arc::new(source)))
    }
}

/// Controls a running driver: stop it, wake it, ask whether it stopped.
///
/// Dropping it leaves the driver running; the driver then stops when the
/// last [`TokenHandle`] is dropped.
#[derive(Debug)]
pub struct DriverHandle {
    control: Control,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DriverHandle {
    fn new(control: Control, thread: Option<std::thread::JoinHandle<()>>) -> Self {
        DriverHandle { control, thread }
    }

    /// Stops the driver and returns once it has stopped (any executor).
    pub async fn shutdown(self) {
        self.control.send(Command::Shutdown);
        self.control.closed().await;
    }

    /// Stops the driver and blocks until it has stopped. Do not call it
    /// from an async task running on the driver's own runtime: use
    /// [`shutdown`](Self::shutdown) there.
    pub fn shutdown_blocking(mut self) {
        self.control.send(Command::Shutdown);
        match self.thread.take() {
            // The thread's end is the driver's end; a panic in it has
            // already been reported by the panic hook.
            Some(thread) => drop(thread.join()),
            None => {
                self.control.wait_closed(Duration::MAX);
            }
        }
    }

    /// Makes the driver re-read its clock now instead of at its next
    /// wake-up (for tests that move a manual clock; in production the
    /// heartbeat does this).
    pub fn wake(&self) {
        self.control.send(Command::Wake);
    }

    /// Whether the driver has stopped.
    pub fn is_stopped(&self) -> bool {
        self.control.is_closed()
    }

    /// Resolves once the driver has stopped (any executor).
    pub async fn stopped(&self) {
        self.control.closed().await
    }

    /// Blocks until the driver has stopped or `timeout` passes; returns
    /// whether it has stopped.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        self.control.wait_closed(timeout)
    }
}
