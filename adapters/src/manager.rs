//! Many tokens per process: a [`TokenManager`] keeps one refresher per
//! [`TokenKey`] (client, audience, scope, RFC 8707 resources), started on
//! first use and stopped when nobody read its token for a while.
//!
//! A service that calls three APIs needs three tokens, one per audience or
//! resource; by hand that is three drivers and three caches. The manager
//! does it from one closure that spawns a refresher for a key:
//!
//! ```
//! use freshtoken::manager::{TokenKey, TokenManager};
//! use freshtoken::source::FnSource;
//! use freshtoken::AccessToken;
//! use freshtoken::source::TokenResponse;
//! use std::time::Duration;
//!
//! let manager = TokenManager::builder()
//!     .idle_timeout(Duration::from_secs(600))
//!     .build(|key: &TokenKey, builder| {
//!         // In a real service: `key.apply(ClientCredentials::builder(...)).build()?`
//!         let audience = key.audience().unwrap_or("none").to_owned();
//!         let source = FnSource::new(move |_: &freshtoken::source::FetchRequest| {
//!             Ok(TokenResponse::new(AccessToken::new(format!("token-for-{audience}")))
//!                 .with_expires_in(Some(3600)))
//!         });
//!         Ok(builder.spawn_thread(source)?)
//!     });
//!
//! let orders = manager.handle(TokenKey::new("svc").with_audience("https://orders.example"));
//! let token = orders.wait_ready(Duration::from_secs(5))?;
//! assert_eq!(token.access_token().expose_secret(), "token-for-https://orders.example");
//! # Ok::<_, freshtoken::NoValidToken>(())
//! ```
//!
//! # Refreshers, idle keys and restarts
//!
//! The first read of a key spawns its refresher through the closure. The
//! closure gets a [`Builder`] with the key's cache already set and named
//! after the key ([`TokenKey::cache_name`]: each key has its own
//! `refresher` label in the metrics and its own field in the tracing
//! spans; the closure may rename it). The closure chooses the driver (a
//! thread, or `Builder::spawn` on a runtime: use one kind for a manager,
//! the closure is the one place that decides). An async closure
//! captures its runtime value (`Tokio::new(handle)`, `Smol`), which works
//! from any thread, the idle sweeper's included; with
//! [`TokenManagerBuilder::tokio`] the closure also runs inside that tokio
//! runtime, so `Tokio::current()` works in it.
//!
//! A background thread (`freshtoken-manager`) looks at every key each
//! quarter of the [idle timeout](TokenManagerBuilder::idle_timeout)
//! (default 15 minutes); a key whose token was not read for the whole idle
//! timeout has its refresher stopped (its handle is dropped, and the driver
//! stops once no request still holds it). A [`ManagedHandle`] stays valid:
//! the next read restarts the refresher, which starts from the key's cache.
//! Every key has an in-process [`MemoryCache`] that outlives its
//! refreshers, so a restart adopts the token that is still valid without
//! asking the authority; a restart after the token expired fetches a new
//! one, and until it arrives the read says there is no valid token
//! ([`ManagedHandle::valid_token`] checks expiry like any handle: an
//! expired token is never served as valid).
//!
//! # Counting reads
//!
//! Every read of a managed handle is counted, in per-thread stripes: eight
//! counters on separate cache lines per key, each thread adding to its own
//! with one relaxed atomic add. No two threads write the same cache line,
//! so counting does not slow readers as threads are added; the sweeper sums
//! the stripes.
//!
//! # Cache names
//!
//! [`TokenKey::cache_name`] is `<client>-<hash>`: the client id with
//! characters other than `A-Za-z0-9._-` replaced by `_` (at most 40 of
//! them), then 16 hex digits of a SHA-256 digest (its first 64 bits, as
//! [`TokenId`](crate::TokenId)) of the whole key: the token URL when one is set
//! ([`TokenKey::with_token_url`]), client, audience, sorted scope, sorted
//! resources, each length-prefixed. So two keys that differ in any of them
//! (a changed scope, another client, another authority) never share an
//! entry. It is stable across processes and releases (a key without a
//! token URL has the name it had before token URLs were part of it), so
//! processes sharing a cache directory or a Redis share each key's token:
//! [`TokenKey::file_cache`] puts it at `<dir>/<cache_name>.json` and
//! [`TokenKey::redis_cache`] under `<prefix><cache_name>`. Set the token
//! URL when keys of one manager (or processes sharing its cache) may use
//! more than one authority.
//!
//! The same digest, [`TokenKey::config_id`], is written into every record
//! a key's shared cache stores (the manager binds each key's cache to it,
//! unless the source reports a key of its own), so a cache that the
//! closure names by hand, or that two keys share, never serves one key's
//! token for another: see [`cache`](crate::cache#records-bound-to-their-configuration).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::handle::{Closed, NoValidToken, TokenHandle, TokenRef};
use arc_swap::ArcSwapOption;
use freshtoken_core::{FetchError, Token};

use crate::cache::{CacheStack, MemoryCache, TokenCache};
use crate::driver::{Builder, DriverHandle};

pub use crate::key::TokenKey;

/// The error a spawn closure returns.
pub type SpawnError = Box<dyn std::error::Error + Send + Sync>;

type SpawnFn =
    dyn Fn(&TokenKey, Builder) -> Result<(TokenHandle, DriverHandle), SpawnError> + Send + Sync;
type CacheFn = dyn Fn(&TokenKey) -> Option<Box<dyn TokenCache>> + Send + Sync;

/// Configures a [`TokenManager`].
#[must_use]
pub struct TokenManagerBuilder {
    idle_timeout: Duration,
    cache: Option<Box<CacheFn>>,
    #[cfg(feature = "tokio")]
    tokio: Option<tokio::runtime::Handle>,
}

impl fmt::Debug for TokenManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManagerBuilder")
            .field("idle_timeout", &self.idle_timeout)
            .field("cache", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenManagerBuilder {
    /// Stops a key's refresher after its token was not read for this long
    /// (default 15 minutes). The sweeper looks every quarter of it.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle.max(Duration::from_millis(4));
        self
    }

    /// A shared cache per key (a file, a Redis key), below the in-process
    /// one; see [`TokenKey::file_cache`] and [`TokenKey::redis_cache`].
    pub fn cache<C: TokenCache>(
        mut self,
        cache: impl Fn(&TokenKey) -> C + Send + Sync + 'static,
    ) -> Self {
        self.cache = Some(Box::new(move |key| Some(Box::new(cache(key)))));
        self
    }

    /// Runs the spawn closure inside this tokio runtime, so that
    /// `Tokio::current()` (and anything else that needs a runtime context)
    /// works in it from any thread.
    #[cfg(feature = "tokio")]
    pub fn tokio(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.tokio = Some(runtime);
        self
    }

    /// The manager. `spawn` starts a refresher for a key with the
    /// [`Builder`] it is given (the key's cache is set on it); it is called
    /// on a key's first read and on the first read after an idle stop.
    pub fn build(
        self,
        spawn: impl Fn(&TokenKey, Builder) -> Result<(TokenHandle, DriverHandle), SpawnError>
            + Send
            + Sync
            + 'static,
    ) -> TokenManager {
        let wake = Arc::new(Wake::default());
        let inner = Arc::new(Inner {
            spawn: Box::new(spawn),
            cache: self.cache,
            idle: self.idle_timeout,
            entries: Mutex::new(HashMap::new()),
            wake: wake.clone(),
            #[cfg(feature = "tokio")]
            tokio: self.tokio,
        });
        let weak = Arc::downgrade(&inner);
        let period =
            (self.idle_timeout / 4).clamp(Duration::from_millis(1), Duration::from_secs(60));
        let spawned = std::thread::Builder::new()
            .name("freshtoken-manager".to_owned())
            .spawn(move || sweep_loop(weak, wake, period));
        if let Err(e) = spawned {
            // Without the sweeper, refreshers are never stopped for being
            // idle; everything else works.
            tracing::warn!(error = %e, "the token manager's idle sweeper could not start");
        }
        TokenManager { inner }
    }
}

/// One refresher per [`TokenKey`], started on first use and stopped when
/// idle (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("keys", &self.inner.lock().len())
            .field("running", &self.running_count())
            .field("idle_timeout", &self.inner.idle)
            .finish()
    }
}

struct Inner {
    spawn: Box<SpawnFn>,
    cache: Option<Box<CacheFn>>,
    idle: Duration,
    entries: Mutex<HashMap<TokenKey, Arc<Entry>>>,
    wake: Arc<Wake>,
    #[cfg(feature = "tokio")]
    tokio: Option<tokio::runtime::Handle>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<TokenKey, Arc<Entry>>> {
        crate::sync::lock(&self.entries)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut stop = crate::sync::lock(&self.wake.stop);
        *stop = true;
        self.wake.condvar.notify_all();
    }
}

/// Tells the sweeper to stop.
#[derive(Default)]
struct Wake {
    stop: Mutex<bool>,
    condvar: Condvar,
}

impl TokenManager {
    /// A builder with a 15-minute idle timeout and no shared cache.
    pub fn builder() -> TokenManagerBuilder {
        TokenManagerBuilder {
            idle_timeout: Duration::from_secs(15 * 60),
            cache: None,
            #[cfg(feature = "tokio")]
            tokio: None,
        }
    }

    /// The handle of `key`'s token. Its refresher starts on the first read.
    pub fn handle(&self, key: TokenKey) -> ManagedHandle {
        let entry = self
            .inner
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Entry::new(key)))
            .clone();
        ManagedHandle {
            manager: self.inner.clone(),
            entry,
        }
    }

    /// The keys known so far.
    pub fn keys(&self) -> Vec<TokenKey> {
        let mut keys: Vec<TokenKey> = self.inner.lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// How many keys have a running refresher.
    pub fn running_count(&self) -> usize {
        self.inner
            .lock()
            .values()
            .filter(|e| e.running.load().is_some())
            .count()
    }

    /// Stops every refresher now (handles restart theirs on their next
    /// read). Returns how many were running. The drivers stop in the
    /// background; [`shutdown_blocking`](Self::shutdown_blocking) waits.
    pub fn stop_all(&self) -> usize {
        let entries: Vec<Arc<Entry>> = self.inner.lock().values().cloned().collect();
        entries.iter().filter(|e| e.stop().is_some()).count()
    }

    /// Stops every refresher and blocks until each driver has stopped (a
    /// fetch or store in flight is drained, so a token just fetched is in
    /// the cache): call it before a process exits. A later read starts
    /// the key's refresher again. Do not call it from a task of the
    /// runtime the drivers run on: use [`shutdown`](Self::shutdown) there.
    pub fn shutdown_blocking(&self) {
        for driver in self.take_drivers() {
            driver.shutdown_blocking();
        }
    }

    /// [`shutdown_blocking`](Self::shutdown_blocking) for async code (any
    /// executor).
    pub async fn shutdown(&self) {
        for driver in self.take_drivers() {
            driver.shutdown().await;
        }
    }

    fn take_drivers(&self) -> Vec<DriverHandle> {
        let entries: Vec<Arc<Entry>> = self.inner.lock().values().cloned().collect();
        entries
            .iter()
            .filter_map(|e| e.stop())
            .filter_map(|r| crate::sync::lock(&r.driver).take())
            .collect()
    }
}

/// Counters per key, one cache line each, so threads do not share one.
const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

struct Running {
    handle: TokenHandle,
    /// Taken by a shutdown; dropping it leaves the driver running until
    /// the handle goes (which is how an idle stop works).
    driver: Mutex<Option<DriverHandle>>,
    generation: u64,
}

struct Entry {
    key: TokenKey,
    running: ArcSwapOption<Running>,
    /// Serializes restarts.
    restart: Mutex<RestartState>,
    reads: [Stripe; STRIPES],
    generation: AtomicU64,
    starts: AtomicU64,
    stops: AtomicU64,
    /// The in-process layer, which outlives refreshers.
    memory: MemoryCache,
    /// Sweeper state: the read count at the last sweep, and since when it
    /// has not moved.
    sweep: Mutex<(u64, Instant)>,
    stopped_by_sweeper: AtomicBool,
}

#[derive(Default)]
struct RestartState {
    /// The last spawn failure, so a failing spawn is retried at most once
    /// a second rather than on every read.
    failed: Option<(Instant, String)>,
}

/// How often a failing spawn is retried.
const RESPAWN_INTERVAL: Duration = Duration::from_secs(1);

impl Entry {
    fn new(key: TokenKey) -> Self {
        Entry {
            key,
            running: ArcSwapOption::empty(),
            restart: Mutex::new(RestartState::default()),
            reads: Default::default(),
            generation: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            memory: MemoryCache::new(),
            sweep: Mutex::new((0, Instant::now())),
            stopped_by_sweeper: AtomicBool::new(false),
        }
    }

    fn count_read(&self) {
        let stripe = STRIPE.with(|s| *s);
        self.reads[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    fn reads(&self) -> u64 {
        self.reads.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }

    /// Stops the refresher; the one that was running.
    fn stop(&self) -> Option<Arc<Running>> {
        let _guard = crate::sync::lock(&self.restart);
        let was = self.running.swap(None);
        if was.is_some() {
            self.stops.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %self.key.cache_name(), "token manager: refresher stopped");
        }
        was
    }

    /// The running refresher, starting it if there is none.
    fn running(&self, manager: &Inner) -> Result<Arc<Running>, NoValidToken> {
        if let Some(r) = self.running.load_full() {
            return Ok(r);
        }
        let mut state = crate::sync::lock(&self.restart);
        if let Some(r) = self.running.load_full() {
            return Ok(r);
        }
        if let Some((at, message)) = &state.failed {
            if at.elapsed() < RESPAWN_INTERVAL {
                return Err(spawn_failed(message));
            }
        }
        let mut cache = CacheStack::new().with(self.memory.clone());
        if let Some(shared) = manager.cache.as_ref().and_then(|f| f(&self.key)) {
            cache = cache.with(shared);
        }
        let builder = Builder::new()
            .name(self.key.cache_name())
            .cache(cache)
            .cache_config(&self.key);
        let spawned = {
            #[cfg(feature = "tokio")]
            let _runtime = manager.tokio.as_ref().map(|h| h.enter());
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (manager.spawn)(&self.key, builder)
            }))
        };
        match spawned {
            Ok(Ok((handle, driver))) => {
                state.failed = None;
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                let running = Arc::new(Running {
                    handle,
                    driver: Mutex::new(Some(driver)),
                    generation,
                });
                self.running.store(Some(running.clone()));
                let starts = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(key = %self.key.cache_name(), starts, "token manager: refresher started");
                Ok(running)
            }
            Ok(Err(e)) => {
                let message = e.to_string();
                tracing::warn!(key = %self.key.cache_name(), error = %message, "token manager: the refresher could not start");
                state.failed = Some((Instant::now(), message.clone()));
                Err(spawn_failed(&message))
            }
            Err(_) => {
                let message = "the spawn closure panicked".to_owned();
                tracing::warn!(key = %self.key.cache_name(), "token manager: the spawn closure panicked");
                state.failed = Some((Instant::now(), message.clone()));
                Err(spawn_failed(&message))
            }
        }
    }
}

/// A refresher's publication count, above the generations before it (40
/// bits of publications per generation).
fn version_of(r: &Running) -> u64 {
    (r.generation << 40) | (r.handle.version() & ((1 << 40) - 1))
}

fn spawn_failed(message: &str) -> NoValidToken {
    NoValidToken::NotYetFetched {
        last_error: Some(FetchError::transient(format!(
            "the refresher could not start: {message}"
        ))),
    }
}

fn sweep_loop(manager: Weak<Inner>, wake: Arc<Wake>, period: Duration) {
    loop {
        {
            let stop = crate::sync::lock(&wake.stop);
            let (stop, _) = wake
                .condvar
                .wait_timeout_while(stop, period, |stop| !*stop)
                .unwrap_or_else(PoisonError::into_inner);
            if *stop {
                return;
            }
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        let entries: Vec<Arc<Entry>> = manager.lock().values().cloned().collect();
        let now = Instant::now();
        for entry in entries {
            let reads = entry.reads();
            let mut sweep = crate::sync::lock(&entry.sweep);
            if reads != sweep.0 {
                *sweep = (reads, now);
            } else if now.duration_since(sweep.1) >= manager.idle && entry.stop().is_some() {
                entry.stopped_by_sweeper.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// A handle on one key's token in a [`TokenManager`]: reads like a
/// [`TokenHandle`], and restarts the key's refresher if it was stopped for
/// being idle. Cheap to clone; keeps the manager alive.
#[derive(Clone)]
pub struct ManagedHandle {
    manager: Arc<Inner>,
    entry: Arc<Entry>,
}

impl fmt::Debug for ManagedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedHandle")
            .field("key", &self.entry.key)
            .field("running", &self.is_running())
            .finish()
    }
}

impl ManagedHandle {
    /// The key.
    pub fn key(&self) -> &TokenKey {
        &self.entry.key
    }

    /// Whether the key's refresher is running now.
    pub fn is_running(&self) -> bool {
        self.entry.running.load().is_some()
    }

    /// Reads so far (every `token`/`valid_token` call).
    pub fn reads(&self) -> u64 {
        self.entry.reads()
    }

    /// How many times the refresher was started (1 + restarts).
    pub fn starts(&self) -> u64 {
        self.entry.starts.load(Ordering::Relaxed)
    }

    /// How many times the refresher was stopped (idle, or `stop_all`).
    pub fn stops(&self) -> u64 {
        self.entry.stops.load(Ordering::Relaxed)
    }

    /// The key's current token handle, starting the refresher if needed.
    /// Holding it keeps that refresher running, idle or not; prefer the
    /// managed handle's own reads.
    pub fn handle(&self) -> Result<TokenHandle, NoValidToken> {
        Ok(self.entry.running(&self.manager)?.handle.clone())
    }

    /// The current token if it is valid now; a read (counted) that starts
    /// a stopped refresher.
    pub fn valid_token(&self) -> Result<TokenRef, NoValidToken> {
        self.entry.count_read();
        self.entry.running(&self.manager)?.handle.valid_token()
    }

    /// The current token, valid or not; a read like
    /// [`valid_token`](Self::valid_token).
    pub fn token(&self) -> Option<TokenRef> {
        self.entry.count_read();
        self.entry.running(&self.manager).ok()?.handle.token()
    }

    /// Reports a 401 with `token` to the key's refresher.
    pub fn invalidate(&self, token: &Token) {
        if let Some(r) = self.entry.running.load_full() {
            r.handle.invalidate(token);
        }
    }

    /// [`version`](Self::version), counted as a read (the middleware's hot
    /// path: it re-reads the token only when this changes). A stopped
    /// refresher is restarted, as by any read.
    #[cfg(any(
        feature = "tower",
        feature = "reqwest-middleware",
        feature = "ureq-middleware",
        feature = "tonic"
    ))]
    pub(crate) fn read_version(&self) -> u64 {
        self.entry.count_read();
        if let Some(r) = &*self.entry.running.load() {
            return version_of(r);
        }
        let _ = self.entry.running(&self.manager);
        self.version()
    }

    /// The running refresher's clocks, if it is running.
    #[cfg(any(
        feature = "tower",
        feature = "reqwest-middleware",
        feature = "ureq-middleware",
        feature = "tonic"
    ))]
    pub(crate) fn now(&self) -> Option<freshtoken_core::Now> {
        self.entry.running.load().as_ref().map(|r| r.handle.now())
    }

    /// A number that grows with every publication, across restarts.
    pub fn version(&self) -> u64 {
        match &*self.entry.running.load() {
            Some(r) => version_of(r),
            None => self.entry.generation.load(Ordering::SeqCst) << 40,
        }
    }

    /// Resolves on the key's next publication, or when its refresher
    /// stops (`Err(Closed)`; a read then restarts it).
    pub async fn changed(&self) -> Result<(), Closed> {
        let running = self.entry.running(&self.manager).map_err(|_| Closed)?;
        running.handle.changed().await
    }

    /// Blocks until the key's next publication or `timeout`.
    pub fn wait_changed(&self, timeout: Duration) -> Result<bool, Closed> {
        let running = self.entry.running(&self.manager).map_err(|_| Closed)?;
        running.handle.wait_changed(timeout)
    }

    /// Blocks until there is a valid token, or `timeout`; restarts the
    /// refresher if it was stopped.
    pub fn wait_ready(&self, timeout: Duration) -> Result<TokenRef, NoValidToken> {
        self.entry.count_read();
        self.entry
            .running(&self.manager)?
            .handle
            .wait_ready(timeout)
    }

    /// Resolves with the first valid token, or why there will be none.
    pub async fn ready(&self) -> Result<TokenRef, NoValidToken> {
        self.entry.count_read();
        let running = self.entry.running(&self.manager)?;
        running.handle.ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::TokenKey;

    #[test]
    fn keys_with_different_token_urls_have_different_cache_names() {
        let key = TokenKey::new("svc").with_scope("read");
        let a = key.clone().with_token_url("https://a.example/token");
        let b = key.clone().with_token_url("https://b.example/token");
        assert_ne!(a, b);
        assert_ne!(a.cache_name(), b.cache_name());
        assert_ne!(a.cache_name(), key.cache_name());
        assert_eq!(a.token_url(), Some("https://a.example/token"));
        // Stable: the same URL gives the same name.
        assert_eq!(
            a.cache_name(),
            TokenKey::new("svc")
                .with_token_url("https://a.example/token")
                .with_scope("read")
                .cache_name()
        );
    }

    #[test]
    fn every_part_of_the_key_changes_the_name() {
        let base = TokenKey::new("svc")
            .with_token_url("https://a.example/token")
            .with_scope("read")
            .with_audience("https://api")
            .with_resource("https://r");
        let variants = [
            base.clone().with_token_url("https://a.example/token2"),
            TokenKey::new("svc2")
                .with_token_url("https://a.example/token")
                .with_scope("read")
                .with_audience("https://api")
                .with_resource("https://r"),
            base.clone().with_scope("read write"),
            base.clone().with_audience("https://api2"),
            base.clone().with_resource("https://r2"),
        ];
        for v in &variants {
            assert_ne!(v.cache_name(), base.cache_name(), "{v:?}");
        }
    }

    #[test]
    fn names_without_a_token_url_are_unchanged() {
        // The names earlier releases gave: an upgrade keeps these entries.
        let k = TokenKey::new("svc")
            .with_scope("read write")
            .with_audience("https://api")
            .with_resource("https://r");
        assert_eq!(k.cache_name(), "svc-9f7796e5b0832d58");
        assert_eq!(TokenKey::new("svc").cache_name(), "svc-dabd5af17e8e40af");
    }
}
