//! Drivers: what runs the [`RefreshMachine`]
//! in the background and feeds the [`TokenHandle`]s.
//!
//! One [`Builder`] configures every driver, and two methods spawn one:
//!
//! * [`Builder::spawn_thread`] (feature `blocking`, default): a named
//!   thread owns the machine; source and cache calls run on one
//!   long-lived worker thread.
//! * [`Builder::spawn`] (features `tokio`, `smol`, `async-std`): one task
//!   on the [`Runtime`](crate::runtime::Runtime) you pass
//!   ([`Tokio`](crate::runtime::Tokio), [`Smol`](crate::runtime::Smol),
//!   [`AsyncStd`](crate::runtime::AsyncStd) or your own). A
//!   [`TokenSource`](crate::source::TokenSource) runs on the runtime's
//!   blocking pool; wrap an [`AsyncTokenSource`](crate::source::AsyncTokenSource)
//!   in [`AsyncSource`] to have it polled in the driver's task.
//!
//! Both return the same pair: a [`TokenHandle`] for the application and a
//! [`DriverHandle`] to stop the driver.
//!
//! A blocking cache ([`Builder::cache`]) works with every driver. An async
//! cache ([`Builder::async_cache`]) is polled in the async driver's task;
//! the builder keeps all its setters, and `spawn_thread` with an async
//! cache does not compile.
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
//!   heartbeat, and reads both clocks on every wake-up. A read of the
//!   token ([`TokenHandle::valid_token`], `ready`, the middleware) that
//!   finds it stale or expired by the clocks wakes it at once (once per
//!   token, at most every 100 ms), so a wall clock stepped forward or a
//!   resume from suspend starts the refresh at the first read; without
//!   reads, within one heartbeat of the process's running time. See
//!   [`clock`](crate::clock#clocks-that-jump) for what each platform gives.
//! * A source or cache call that panics, or takes longer than its
//!   deadline (the fetch or cache timeout), becomes a transient error (a
//!   cache miss, for the cache): the driver keeps running and the previous
//!   token stays served. So does a token that cannot be sent in an
//!   `Authorization` header. The deadlines are the machine's; an answer
//!   that comes after one is still fed to it.
//! * It stops when [`DriverHandle::shutdown`] is called or when the last
//!   [`TokenHandle`] is dropped. Dropping the [`DriverHandle`] does not stop
//!   it. Either way a fetch or store in flight is finished first (within
//!   the fetch timeout and a cache call), so a rotated refresh token is
//!   never lost to a shutdown; `shutdown` returns after that. Dropping the
//!   handles starts the same drain in the background, which completes only
//!   if the process lives on: a process about to exit calls `shutdown`.
//!
//! # Writing a driver
//!
//! A driver of your own (another event loop, a simulation) needs the
//! machine, from [`proto`](crate::proto), and a [`Publisher`], which
//! creates the [`TokenHandle`]s and receives their [`Command`]s.

use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::{Backoff, Clock, Jitter, LifetimePolicy, MachineConfig, RefreshMachine};

use crate::cache::TokenCache;
use crate::clock::SystemClock;
pub use crate::handle::publisher::{Command, Control, Publisher};
use crate::handle::{Sharing, TokenHandle};

mod refresher;

#[cfg(feature = "blocking")]
mod blocking;
#[cfg(any(feature = "tokio", feature = "async-std", feature = "smol"))]
mod run;

#[cfg(any(feature = "tokio", feature = "async-std", feature = "smol"))]
pub use run::{AsyncCache, AsyncSource, Caches, Source};

use refresher::Refresher;

/// Configures and spawns a driver.
///
/// Every setting is independent of the others and of the order they are
/// made in. Defaults: the lifetime policy, jitter and backoff of
/// [`LifetimePolicy::default`], [`Jitter::default`] and
/// [`Backoff::default`]; a random seed; a 30 s heartbeat; a 30 s fetch
/// timeout and the same cache timeout; a lease TTL of 1.5 times the fetch
/// timeout (45 s); a 500 ms peer wait; a 5 s invalidation interval; the
/// system clock; no cache.
///
/// The type parameter says which kind of cache the builder holds:
/// [`SyncCache`] (a blocking cache, or none: every driver) or
/// [`AsyncCache`] (async drivers only).
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::policy::Jitter;
/// use freshtoken::{ManualClock, Timestamp};
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
#[must_use]
pub struct Builder<C = SyncCache> {
    settings: Settings,
    caches: C,
}

/// The settings of a [`Builder`], whatever cache it holds.
struct Settings {
    config: MachineConfig,
    seed: Option<u64>,
    lease_ttl: Option<Duration>,
    cache_timeout: Option<Duration>,
    heartbeat: Duration,
    clock: Arc<dyn Clock>,
    thread_name: String,
    /// The `refresher` label of metrics and tracing spans.
    name: Arc<str>,
    /// What the cache's records are bound to (and a cache from
    /// [`Builder::cache_for`] named after), when set by hand.
    cache_config: Option<crate::TokenKey>,
}

/// The cache of a [`Builder`] that holds a blocking cache or none; the
/// default, which every driver can spawn.
pub struct SyncCache(Option<CacheSetting>);

/// A blocking cache as set on the builder.
enum CacheSetting {
    /// Made by the application ([`Builder::cache`]).
    Made(Arc<dyn TokenCache>),
    /// Made at spawn for the source's key ([`Builder::cache_for`]).
    For(MakeCache),
}

type MakeCache = Box<dyn FnOnce(&crate::TokenKey) -> Arc<dyn TokenCache> + Send>;

impl std::fmt::Debug for SyncCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SyncCache").field(&self.0.is_some()).finish()
    }
}

impl SyncCache {
    /// The cache for a driver whose source is for `key` (when known),
    /// bound to the key's configuration and metered, and how the driver
    /// shares its tokens. A cache to be named after a key that nobody
    /// knows is none, with a warning: refreshing goes on without sharing;
    /// so is one for tokens that serve this instance alone
    /// ([`Sharing::InstanceKey`]).
    #[cfg(any(
        feature = "blocking",
        feature = "tokio",
        feature = "async-std",
        feature = "smol"
    ))]
    fn resolve(
        self,
        key: Option<&crate::TokenKey>,
        name: &Arc<str>,
    ) -> (Arc<dyn TokenCache>, Sharing) {
        let configured = self.0.is_some();
        match self.make(key, name) {
            // Each call counted (a no-op without the `metrics` feature).
            Some(cache) => (crate::metrics::meter_cache(cache, name), Sharing::Shared),
            None => (
                Arc::new(refresher::NoCache),
                Sharing::of(configured, false, key),
            ),
        }
    }

    /// The configured cache, made for `key` and bound to it, if it can
    /// be used (see [`resolve`](Self::resolve)).
    #[cfg(any(
        feature = "blocking",
        feature = "tokio",
        feature = "async-std",
        feature = "smol"
    ))]
    fn make(self, key: Option<&crate::TokenKey>, name: &str) -> Option<Arc<dyn TokenCache>> {
        let setting = self.0?;
        if !Sharing::cache_usable_for(key) {
            return None;
        }
        let cache = match (setting, key) {
            (CacheSetting::Made(cache), _) => cache,
            (CacheSetting::For(make), Some(key)) => make(key),
            (CacheSetting::For(_), None) => {
                tracing::warn!(
                    refresher = name,
                    "Builder::cache_for: the source does not say what its tokens are for \
                     (TokenSource::token_key) and no Builder::cache_config was given; \
                     running without the shared cache"
                );
                return None;
            }
        };
        if let Some(key) = key {
            cache.bind_config(key.config_id());
        }
        Some(cache)
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            settings: Settings {
                config: MachineConfig::default(),
                seed: None,
                lease_ttl: None,
                cache_timeout: None,
                heartbeat: Duration::from_secs(30),
                clock: Arc::new(SystemClock),
                thread_name: "freshtoken".to_owned(),
                name: Arc::from("default"),
                cache_config: None,
            },
            caches: SyncCache(None),
        }
    }
}

impl<C> std::fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        f.debug_struct("Builder")
            .field("config", &s.config)
            .field("heartbeat", &s.heartbeat)
            .field("thread_name", &s.thread_name)
            .field("name", &s.name)
            .field("cache_config", &s.cache_config)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C> Builder<C> {
    /// How lifetimes become stale and expiry times.
    pub fn lifetime(mut self, lifetime: LifetimePolicy) -> Self {
        self.settings.config.lifetime = lifetime;
        self
    }

    /// How much earlier than `stale_at` refreshes may happen.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.settings.config.jitter = jitter;
        self
    }

    /// How failed fetches are retried.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.config.backoff = backoff;
        self
    }

    /// The seed of the machine's random draws. Default: a random one, so
    /// that instances started together do not refresh together.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// The longest the driver sleeps before re-reading the clock (default
    /// 30 s, at least 1 ms): the bound on how late a clock jump or a
    /// suspend is noticed when nothing reads the token (a read that finds
    /// it stale wakes the driver at once). `Duration::MAX` means "only at
    /// deadlines and reads".
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.settings.heartbeat = heartbeat.max(Duration::from_millis(1));
        self
    }

    /// The heartbeat interval set so far.
    pub fn heartbeat_interval(&self) -> Duration {
        self.settings.heartbeat
    }

    /// How long a fetch may take before it counts as a transient failure
    /// (default 30 s, at least 1 ms): the machine's deadline for the
    /// request. An answer that comes later is still used when it carries a
    /// rotated refresh token. Unless set on their own, the cache timeout
    /// is the same and the lease TTL 1.5 times this.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.config.fetch_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a cache call may take before it counts as failed (default:
    /// the [`fetch_timeout`](Self::fetch_timeout)).
    pub fn cache_timeout(mut self, timeout: Duration) -> Self {
        self.settings.cache_timeout = Some(timeout.max(Duration::from_millis(1)));
        self
    }

    /// How long a cache lease may be held (default 1.5 times the
    /// [`fetch_timeout`](Self::fetch_timeout), so 45 s; never less than
    /// that, so a live holder never loses its lease in the middle of a
    /// fetch). It bounds how long a crashed holder delays the others.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.settings.lease_ttl = Some(ttl);
        self
    }

    /// How long an instance waits for a peer that holds the lease and has
    /// a valid token, before re-reading the cache (default 500 ms,
    /// jittered ±50 %). Without a valid token it re-reads much sooner.
    pub fn peer_wait(mut self, wait: Duration) -> Self {
        self.settings.config.peer_wait = wait;
        self
    }

    /// The shortest time between renewals of a token whose lifetime the
    /// authority gave as degenerate (`expires_in: 0`, negative, or below
    /// the lifetime policy's minimum; default 5 s). The wait doubles while
    /// answers stay degenerate, up to the backoff's cap; the snapshot says
    /// so in [`Snapshot::degenerate`](crate::handle::Snapshot::degenerate).
    /// It is also the least wait after an answer no newer than the token
    /// held, and the earliest an authority's `refresh_in` hint can make a
    /// token stale (see
    /// [`MachineConfig::min_refresh_interval`](freshtoken_core::MachineConfig::min_refresh_interval)).
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.settings.config.min_refresh_interval = interval;
        self
    }

    /// The shortest deadline of a client-credentials fetch (default 2 s):
    /// such a fetch's deadline follows the current token's remaining
    /// validity, so a hung request is given up in time to retry before the
    /// token expires; never longer than the
    /// [`fetch_timeout`](Self::fetch_timeout).
    pub fn min_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.config.min_fetch_timeout = timeout;
        self
    }

    /// Minimum time between refreshes caused by
    /// [`TokenHandle::invalidate`] (default 5 s).
    pub fn invalidate_interval(mut self, interval: Duration) -> Self {
        self.settings.config.invalidate_interval = interval;
        self
    }

    /// The clock the driver (and its handles) read; default the system's.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = Arc::new(clock);
        self
    }

    /// The refresher's name (default `default`): the `refresher` label of
    /// its metrics (feature `metrics`) and a field of its tracing spans.
    /// Give each driver of a process its own short, fixed name (`"api"`,
    /// `"billing"`); never anything per request or secret.
    ///
    /// ```
    /// use freshtoken::Builder;
    /// let builder = Builder::new().name("api");
    /// assert_eq!(builder.refresher_name(), "api");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = Arc::from(name.into());
        self
    }

    /// The refresher's name set so far.
    pub fn refresher_name(&self) -> &str {
        &self.settings.name
    }

    /// Binds the cache's records to `key`'s configuration
    /// ([`TokenKey::config_id`](crate::TokenKey::config_id)) when the source
    /// cannot say what its tokens are for (an
    /// [`FnSource`](crate::source::FnSource), a source of your own). A
    /// source that can ([`TokenSource::token_key`](crate::source::TokenSource::token_key):
    /// the OAuth2 sources) is believed first, since it knows what it
    /// fetches. The driver binds the cache when it spawns; a record made
    /// for another configuration is then a miss with a warning, never
    /// adopted (see [`cache`](crate::cache#records-bound-to-their-configuration)).
    /// The manager sets it to each key's.
    ///
    /// ```
    /// use freshtoken::{Builder, TokenKey};
    /// let builder = Builder::new().cache_config(&TokenKey::new("svc").with_scope("read"));
    /// ```
    pub fn cache_config(mut self, key: &crate::TokenKey) -> Self {
        self.settings.cache_config = Some(key.clone());
        self
    }

    /// The name of the blocking driver's thread (default `freshtoken`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.settings.thread_name = name.into();
        self
    }

    /// Shares tokens through a blocking cache (any driver; the async ones
    /// run it on their blocking pool). It replaces a cache set before.
    pub fn cache(self, cache: impl TokenCache) -> Builder<SyncCache> {
        Builder {
            settings: self.settings,
            caches: SyncCache(Some(CacheSetting::Made(Arc::new(cache)))),
        }
    }

    /// Shares tokens through a blocking cache named after what the source
    /// fetches: when the driver spawns, `make` gets the source's
    /// [`TokenKey`](crate::TokenKey) (its token URL, client id, scope,
    /// audience and resources, from
    /// [`TokenSource::token_key`](crate::source::TokenSource::token_key),
    /// else the key given to [`cache_config`](Self::cache_config)) and
    /// returns the cache, typically [`TokenKey::file_cache`](crate::TokenKey::file_cache)
    /// or [`TokenKey::redis_cache`](crate::TokenKey::redis_cache), named
    /// [`TokenKey::cache_name`](crate::TokenKey::cache_name). So builders
    /// for different authorities, clients or scopes on one directory or
    /// Redis get entries of their own, and builders for the same one share
    /// theirs. With a source that cannot say and no `cache_config`, the
    /// driver runs without a shared cache and logs a warning. It replaces
    /// a cache set before.
    ///
    /// ```
    /// # #[cfg(all(feature = "file", feature = "testing"))] {
    /// use freshtoken::testing::LocalAuthority;
    /// use freshtoken::Builder;
    /// use std::time::Duration;
    ///
    /// let authority = LocalAuthority::builder().client("svc", "s3cret").start()?;
    /// let dir = tempfile::tempdir()?;
    /// let cache_dir = dir.path().to_owned();
    /// let source = authority.client_credentials("svc").scope("read").build()?;
    /// let (tokens, driver) = Builder::new()
    ///     .cache_for(move |key| key.file_cache(&cache_dir))
    ///     .spawn_thread(source)?;
    /// tokens.wait_ready(Duration::from_secs(5))?;
    /// driver.shutdown_blocking();
    /// // One file, named `svc-<16 hex digits>.json` after the source's key.
    /// let name = std::fs::read_dir(dir.path())?
    ///     .filter_map(|e| e.ok()?.file_name().into_string().ok())
    ///     .find(|n| n.ends_with(".json"))
    ///     .unwrap();
    /// assert!(name.starts_with("svc-") && name.len() == "svc-".len() + 16 + ".json".len());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cache_for<K: TokenCache>(
        self,
        make: impl FnOnce(&crate::TokenKey) -> K + Send + 'static,
    ) -> Builder<SyncCache> {
        let make: MakeCache = Box::new(move |key| Arc::new(make(key)));
        Builder {
            settings: self.settings,
            caches: SyncCache(Some(CacheSetting::For(make))),
        }
    }
}

impl Settings {
    /// The machine's configuration, with everything the settings derive.
    fn machine_config(
        &self,
        shared_cache: bool,
        refresh_token: Option<freshtoken_core::RefreshToken>,
    ) -> MachineConfig {
        let mut config = self.config.clone();
        config.seed = self.seed.unwrap_or_else(|| fastrand::u64(..));
        config.cache = shared_cache;
        config.cache_timeout = self.cache_timeout.unwrap_or(config.fetch_timeout);
        let floor = config.fetch_timeout.saturating_mul(3) / 2;
        config.lease_ttl = self.lease_ttl.unwrap_or(floor).max(floor);
        config.refresh_token = refresh_token;
        config
    }

    /// The refresher, the application's handle and the driver's control.
    fn build(
        self,
        sharing: Sharing,
        refresh_token: Option<freshtoken_core::RefreshToken>,
    ) -> (Refresher, TokenHandle, Control) {
        let config = self.machine_config(sharing == Sharing::Shared, refresh_token);
        let (publisher, handle) = Publisher::new(self.clock.clone());
        sharing.warn_if_unusable(&self.name);
        publisher.set_sharing(sharing);
        let control = publisher.control();
        let refresher = Refresher::new(
            RefreshMachine::new(config),
            publisher,
            self.clock,
            self.heartbeat,
            self.name,
        );
        (refresher, handle, control)
    }
}

/// What a driver's tokens are for: the source's key, else the one set by
/// hand.
#[cfg(any(
    feature = "blocking",
    feature = "tokio",
    feature = "async-std",
    feature = "smol"
))]
fn key_of(
    source: Option<crate::TokenKey>,
    by_hand: &Option<crate::TokenKey>,
) -> Option<crate::TokenKey> {
    source.or_else(|| by_hand.clone())
}

impl Builder<SyncCache> {
    /// Spawns the blocking driver on a named thread. Fails only if the
    /// thread cannot be started.
    #[cfg(feature = "blocking")]
    pub fn spawn_thread(
        self,
        source: impl crate::source::TokenSource,
    ) -> std::io::Result<(TokenHandle, DriverHandle)> {
        let thread = self.settings.thread_name.clone();
        let initial = source.initial_refresh_token();
        let key = key_of(source.token_key(), &self.settings.cache_config);
        let (cache, sharing) = self.caches.resolve(key.as_ref(), &self.settings.name);
        let (refresher, handle, control) = self.settings.build(sharing, initial);
        let thread = blocking::spawn(refresher, Arc::new(source), cache, thread)?;
        Ok((handle, DriverHandle::new(control, Some(thread))))
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
    /// wake-up (for tests that move a manual clock; in production reads
    /// of a stale token and the heartbeat do this).
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
