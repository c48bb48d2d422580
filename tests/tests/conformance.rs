//! The driver conformance suite: one set of scenarios, run against every
//! driver (a plain thread, and the async driver on tokio, async-std and
//! smol, each with a blocking and an async source). The cache scenarios
//! also run with an async cache on each runtime.
//!
//! Time is a [`ManualClock`]: a scenario moves it and wakes the driver
//! (`DriverHandle::wake`), so a token's whole life takes milliseconds of
//! real time and the outcome does not depend on scheduling. Waits have a
//! generous real-time limit that only guards against a hung test.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use freshtoken::cache::LeaseOutcome;
use freshtoken::cache::{AsyncTokenCache, TokenCache};
use freshtoken::driver::{AsyncSource, Builder, Caches, DriverHandle, Source};
use freshtoken::handle::{Closed, NoValidToken};
use freshtoken::handle::{RefreshState, Snapshot};
use freshtoken::policy::{Backoff, Jitter};
use freshtoken::runtime;
use freshtoken::source::{AsyncTokenSource, FnSource, TokenSource};
use freshtoken::source::{FetchRequest, TokenResponse};
use freshtoken::testing::{self, FaultWindow, LocalAuthority};
use freshtoken::{
    AccessToken, CacheError, CacheErrorKind, FetchError, FetchErrorKind, ManualClock, Timestamp,
    Token, TokenHandle,
};
use futures::future::{select, Either};

/// Token lifetime in the scenarios: stale after 30 s, expired after 60 s.
const LIFETIME_S: i64 = 60;
const T0: Timestamp = Timestamp::from_secs(1_000_000);
/// How long a wait may take before the test is declared hung.
const HUNG: Duration = Duration::from_secs(20);

/// A cell of the suite: where the driver runs, and whether the source and
/// the cache are async. One `spawn` of the library serves every async
/// cell; only the runtime value and the wrappers differ.
#[derive(Clone, Copy)]
struct Cell {
    runtime: Rt,
    async_source: bool,
    async_cache: bool,
}

#[derive(Clone, Copy)]
enum Rt {
    Thread,
    Tokio,
    AsyncStd,
    Smol,
}

const fn cell(runtime: Rt, async_source: bool, async_cache: bool) -> Cell {
    Cell {
        runtime,
        async_source,
        async_cache,
    }
}

/// A way to run a driver.
trait Driver: Copy {
    fn spawn(self, builder: Builder, authority: &Authority) -> (TokenHandle, DriverHandle);
    /// Spawns with a blocking source (the async-source cells too).
    fn spawn_source(
        self,
        builder: Builder,
        source: impl TokenSource,
    ) -> (TokenHandle, DriverHandle);
    fn block_on<T>(self, f: impl Future<Output = T>) -> T;
    /// Spawns with the authority and `cache` shared with other instances:
    /// as a blocking cache, unless the cell is about async caches.
    fn spawn_cached(
        self,
        builder: Builder,
        authority: &Authority,
        cache: &MemoryCache,
    ) -> (TokenHandle, DriverHandle);
}

/// The async driver on `rt` (called inside the cell's executor).
fn spawn_on<C: Caches>(
    rt: Rt,
    builder: Builder<C>,
    source: impl Source,
) -> (TokenHandle, DriverHandle) {
    match rt {
        Rt::Tokio => builder.spawn(runtime::Tokio::current().expect("in a runtime"), source),
        Rt::AsyncStd => builder.spawn(runtime::AsyncStd, source),
        Rt::Smol => builder.spawn(runtime::Smol, source),
        Rt::Thread => unreachable!("the thread driver has no runtime"),
    }
}

impl Driver for Cell {
    fn spawn_source(
        self,
        builder: Builder,
        source: impl TokenSource,
    ) -> (TokenHandle, DriverHandle) {
        match self.runtime {
            Rt::Thread => builder.spawn_thread(source).expect("thread"),
            rt => spawn_on(rt, builder, source),
        }
    }

    fn spawn(self, builder: Builder, authority: &Authority) -> (TokenHandle, DriverHandle) {
        match (self.runtime, self.async_source) {
            (Rt::Thread, _) => builder.spawn_thread(authority.source()).expect("thread"),
            (rt, true) => spawn_on(rt, builder, AsyncSource(authority.clone())),
            (rt, false) => spawn_on(rt, builder, authority.source()),
        }
    }

    fn spawn_cached(
        self,
        builder: Builder,
        authority: &Authority,
        cache: &MemoryCache,
    ) -> (TokenHandle, DriverHandle) {
        if !self.async_cache {
            return self.spawn(builder.cache(cache.clone()), authority);
        }
        let builder = builder.async_cache(AsyncMemoryCache(cache.clone()));
        match self.async_source {
            true => spawn_on(self.runtime, builder, AsyncSource(authority.clone())),
            false => spawn_on(self.runtime, builder, authority.source()),
        }
    }

    fn block_on<T>(self, f: impl Future<Output = T>) -> T {
        match self.runtime {
            Rt::Thread => futures::executor::block_on(f),
            // A single-threaded runtime: the driver and the scenario share
            // one thread, so the driver must never block it.
            Rt::Tokio => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f),
            Rt::AsyncStd => async_std::task::block_on(f),
            Rt::Smol => smol::block_on(f),
        }
    }
}

const THREAD: Cell = cell(Rt::Thread, false, false);

/// What the scripted authority does on the next fetch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    Transient,
    GrantRevoked,
    Panic,
    /// Block until the fault is cleared (or the test ends).
    Hang,
    /// An access token that cannot be sent in a header.
    Garbage,
}

/// A scripted authority with a shared fault switch. Token `n` is
/// `tok-n`; each lives [`LIFETIME_S`].
#[derive(Clone)]
struct Authority {
    state: Arc<(Mutex<Fault>, Condvar)>,
    fetches: Arc<AtomicU64>,
}

impl Authority {
    fn new() -> Self {
        Authority {
            state: Arc::new((Mutex::new(Fault::None), Condvar::new())),
            fetches: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set(&self, fault: Fault) {
        *self.state.0.lock().unwrap() = fault;
        self.state.1.notify_all();
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn answer(&self) -> Result<TokenResponse, FetchError> {
        let mut fault = self.state.0.lock().unwrap();
        while *fault == Fault::Hang {
            fault = self.state.1.wait(fault).unwrap();
        }
        let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        match *fault {
            Fault::None | Fault::Hang => {
                Ok(TokenResponse::new(AccessToken::new(format!("tok-{n}")))
                    .with_expires_in(Some(LIFETIME_S)))
            }
            Fault::Transient => {
                Err(FetchError::transient("authority unavailable").with_status(503))
            }
            Fault::GrantRevoked => Err(FetchError::grant_revoked("invalid_grant")),
            Fault::Panic => {
                drop(fault);
                panic!("the source blew up")
            }
            Fault::Garbage => {
                Ok(TokenResponse::new(AccessToken::new("")).with_expires_in(Some(-5)))
            }
        }
    }

    fn source(&self) -> FnSource<impl Fn(&FetchRequest) -> Result<TokenResponse, FetchError>> {
        let me = self.clone();
        FnSource::new(move |_req: &FetchRequest| me.answer())
    }
}

impl AsyncTokenSource for Authority {
    async fn fetch(&self, _request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        // An async source that does its blocking work elsewhere, as a real
        // one (an HTTP client) would.
        let me = self.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        std::thread::spawn(move || {
            let answer = std::panic::catch_unwind(|| me.answer());
            let _ = tx.send(answer);
        });
        match rx.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(FetchError::transient("worker gone")),
        }
    }
}

/// A running scenario: the driver, its handle, the clock and the authority.
struct Env {
    clock: ManualClock,
    authority: Authority,
    tokens: TokenHandle,
    driver: DriverHandle,
}

fn builder(clock: &ManualClock) -> Builder {
    Builder::new()
        .clock(clock.clone())
        .jitter(Jitter::NONE)
        .backoff(Backoff::new(
            Duration::from_secs(1),
            2,
            Duration::from_secs(4),
        ))
        .invalidate_interval(Duration::from_secs(1))
        .heartbeat(Duration::from_secs(3600))
        .seed(1)
}

impl Env {
    fn start(driver: impl Driver, configure: impl FnOnce(Builder) -> Builder) -> Env {
        Env::launch(driver, Fault::None, None, configure)
    }

    /// Starts with the authority already failing with `fault`.
    fn start_with(
        driver: impl Driver,
        fault: Fault,
        configure: impl FnOnce(Builder) -> Builder,
    ) -> Env {
        Env::launch(driver, fault, None, configure)
    }

    /// Starts with a shared cache.
    fn start_cached(
        driver: impl Driver,
        cache: &MemoryCache,
        configure: impl FnOnce(Builder) -> Builder,
    ) -> Env {
        Env::launch(driver, Fault::None, Some(cache), configure)
    }

    fn launch(
        driver: impl Driver,
        fault: Fault,
        cache: Option<&MemoryCache>,
        configure: impl FnOnce(Builder) -> Builder,
    ) -> Env {
        let clock = ManualClock::new(T0);
        let authority = Authority::new();
        authority.set(fault);
        let builder = configure(builder(&clock));
        let (tokens, driver) = match cache {
            Some(cache) => driver.spawn_cached(builder, &authority, cache),
            None => driver.spawn(builder, &authority),
        };
        Env {
            clock,
            authority,
            tokens,
            driver,
        }
    }

    /// Moves the clock and makes the driver look at it.
    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
        self.driver.wake();
    }

    fn served(&self) -> String {
        self.tokens
            .valid_token()
            .map(|t| t.access_token().expose_secret().to_owned())
            .unwrap_or_else(|e| format!("none: {e}"))
    }

    /// Waits until the published snapshot satisfies `cond`.
    async fn until(&self, what: &str, cond: impl Fn(&Snapshot) -> bool) {
        let give_up = Instant::now() + HUNG;
        loop {
            if cond(&self.tokens.snapshot()) {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "timed out waiting for {what}; last snapshot: {:?}",
                self.tokens.snapshot()
            );
            // `changed` sees publishes after the call only; the short
            // limit covers one that slipped in after the check above.
            let _ = within(Duration::from_millis(50), self.tokens.changed()).await;
        }
    }

    /// [`until`](Self::until), moving the clock on by `step_ms` before each
    /// look: the machine's deadlines run on the driver's clock, so a hung
    /// call is given up on only when that clock passes its deadline.
    async fn until_ticking(&self, what: &str, step_ms: u64, cond: impl Fn(&Snapshot) -> bool) {
        let give_up = Instant::now() + HUNG;
        while !cond(&self.tokens.snapshot()) {
            assert!(
                Instant::now() < give_up,
                "timed out waiting for {what}; last snapshot: {:?}",
                self.tokens.snapshot()
            );
            self.clock.advance(Duration::from_millis(step_ms));
            self.driver.wake();
            let _ = within(Duration::from_millis(20), self.tokens.changed()).await;
        }
    }

    async fn until_token(&self, expected: &str) {
        self.until(&format!("token {expected}"), |s| {
            s.token
                .as_ref()
                .is_some_and(|t| t.access_token().expose_secret() == expected)
        })
        .await
    }

    async fn until_retrying(&self, message: &str) {
        self.until(&format!("a retry after '{message}'"), |s| {
            matches!(&s.state, RefreshState::Retrying { error, .. } if error.to_string().contains(message))
        })
        .await
    }

    /// Starts and waits for the first token.
    async fn ready(&self) {
        let token = within(HUNG, self.tokens.ready())
            .await
            .expect("hung")
            .expect("first token");
        assert_eq!(token.access_token().expose_secret(), "tok-1");
    }

    async fn stop(self) -> Authority {
        within(HUNG, self.driver.shutdown())
            .await
            .expect("hung shutdown");
        self.authority.set(Fault::None);
        self.authority
    }
}

/// `f`, or `None` once `limit` has passed (an executor-independent timer).
async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> Option<T> {
    let timer = async_io::Timer::after(limit);
    match select(std::pin::pin!(f), timer).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

// The scenarios, written once.

async fn first_token(driver: impl Driver) {
    let env = Env::start(driver, |b| b);
    env.ready().await;
    assert_eq!(env.tokens.status(), RefreshState::Healthy);
    let token = env.tokens.token().expect("token");
    assert_eq!(token.expires_at(), T0 + Duration::from_secs(60));
    drop(token);
    assert_eq!(env.stop().await.fetches(), 1);
}

async fn refresh_before_expiry(driver: impl Driver) {
    let env = Env::start(driver, |b| b);
    env.ready().await;
    env.advance(29);
    env.driver.wake();
    assert_eq!(env.served(), "tok-1", "still fresh: no refresh");
    env.advance(2); // 31 s: stale, not expired
    env.until_token("tok-2").await;
    let t = env.tokens.valid_token().expect("valid");
    assert_eq!(t.issued_at(), T0 + Duration::from_secs(31));
    drop(t);
    assert_eq!(env.stop().await.fetches(), 2);
}

/// Up to the middle of an outage: the old token is served while it is valid.
async fn into_outage(env: &Env) {
    env.ready().await;
    env.authority.set(Fault::Transient);
    env.advance(31);
    env.until_retrying("authority unavailable").await;
    assert_eq!(env.served(), "tok-1");
    for _ in 0..5 {
        // Each step is past the longest backoff (4 s): a retry fails.
        let before = attempt(&env.tokens.snapshot());
        env.advance(5);
        env.until("another failed retry", |s| attempt(s) > before)
            .await;
        assert_eq!(env.served(), "tok-1", "the valid token stays served");
    }
}

/// The number of the last failed attempt (0 when healthy).
fn attempt(s: &Snapshot) -> u32 {
    match s.state {
        RefreshState::Retrying { attempt, .. } => attempt,
        _ => 0,
    }
}

async fn outage(driver: impl Driver) {
    let env = Env::start(driver, |b| b);
    into_outage(&env).await;
    // 61 s: expired, still failing; the handle says why.
    env.advance(5);
    env.until("the expiry to be published", |s| {
        s.published_at >= T0 + Duration::from_secs(60)
    })
    .await;
    match env.tokens.valid_token() {
        Err(NoValidToken::Expired {
            expired_at,
            last_error: Some(e),
        }) => {
            assert_eq!(expired_at, T0 + Duration::from_secs(60));
            assert_eq!(e.kind(), FetchErrorKind::Transient);
        }
        other => panic!("expected an expiry with the last error, got {other:?}"),
    }
    env.stop().await;
}

async fn recovery(driver: impl Driver) {
    let env = Env::start(driver, |b| b);
    into_outage(&env).await;
    env.authority.set(Fault::None);
    env.advance(5);
    env.until("a healthy state", |s| s.state == RefreshState::Healthy)
        .await;
    let fresh = env.tokens.valid_token().expect("a fresh token");
    assert_ne!(fresh.access_token().expose_secret(), "tok-1");
    drop(fresh);
    env.stop().await;
}

async fn permanent_error(driver: impl Driver) {
    // From the start: ready() reports the failure instead of waiting on.
    let env = Env::start_with(driver, Fault::GrantRevoked, |b| b);
    let why = within(HUNG, env.tokens.ready()).await.expect("hung");
    assert!(
        matches!(&why, Err(NoValidToken::Failed { error }) if error.kind() == FetchErrorKind::GrantRevoked),
        "{why:?}"
    );
    env.stop().await;

    // After a token: it is served until it expires, then the failure shows.
    let env = Env::start(driver, |b| b);
    env.ready().await;
    env.authority.set(Fault::GrantRevoked);
    env.advance(31);
    env.until("a permanent failure", |s| {
        matches!(s.state, RefreshState::Failed { .. })
    })
    .await;
    assert_eq!(env.served(), "tok-1");
    env.advance(30);
    env.until("the expiry to be published", |s| {
        s.published_at >= T0 + Duration::from_secs(60)
    })
    .await;
    assert!(matches!(
        env.tokens.valid_token(),
        Err(NoValidToken::Failed { .. })
    ));
    let fetches = env.authority.fetches();
    env.advance(600);
    assert_eq!(
        env.stop().await.fetches(),
        fetches,
        "no retries after a revoked grant"
    );
}

async fn invalidate(driver: impl Driver) {
    let env = Env::start(driver, |b| b);
    env.ready().await;
    let rejected = env.tokens.token().expect("token");
    for _ in 0..10 {
        env.tokens.invalidate(&rejected);
    }
    env.until_token("tok-2").await;
    // Reports of the old token after its replacement change nothing.
    env.tokens.invalidate(&rejected);
    drop(rejected);
    // Shutdown is queued behind every invalidation, so they were all seen.
    assert_eq!(
        env.stop().await.fetches(),
        2,
        "ten invalidations, one fetch"
    );
}

async fn shutdown(driver: impl Driver) {
    let env = Env::start(driver, |b| b);
    env.ready().await;
    let tokens = env.tokens.clone();
    let clock = env.clock.clone();
    let authority = env.stop().await;
    assert_eq!(tokens.status(), RefreshState::Stopped);
    assert_eq!(within(HUNG, tokens.changed()).await, Some(Err(Closed)));
    clock.advance(Duration::from_secs(3600));
    assert!(matches!(tokens.valid_token(), Err(NoValidToken::Stopped)));
    assert_eq!(authority.fetches(), 1);
}

async fn dropping_all_handles(driver: impl Driver) {
    let env = Env::start(driver, |b| b);
    env.ready().await;
    let second = env.tokens.clone();
    let Env {
        tokens, driver: d, ..
    } = env;
    drop(tokens);
    assert!(!d.is_stopped(), "a clone still holds the driver");
    drop(second);
    within(HUNG, d.stopped()).await.expect("the driver stops");
    assert!(d.is_stopped());
}

async fn clock_jump(driver: impl Driver) {
    // No wake-ups from the test: the heartbeat notices the jump.
    let env = Env::start(driver, |b| b.heartbeat(Duration::from_millis(20)));
    env.ready().await;
    env.clock.advance(Duration::from_secs(3600));
    env.until("a token valid after the jump", |s| {
        s.token
            .as_ref()
            .is_some_and(|t| t.is_valid_at(T0 + Duration::from_secs(3600)))
    })
    .await;
    assert_eq!(env.served(), "tok-2");
    env.stop().await;
}

/// A source fault is contained: a fetch error in the snapshot, the driver
/// keeps running, the previous token stays served, and it recovers.
async fn contained(driver: impl Driver, fault: Fault, message: &str) {
    // Only a hang needs a short timeout; a panic may take a while to
    // report (the panic hook can print a backtrace) and must not time out.
    let timeout = match fault {
        Fault::Hang => Duration::from_millis(100),
        _ => Duration::from_secs(30),
    };
    let env = Env::start(driver, |b| b.fetch_timeout(timeout));
    env.ready().await;
    env.authority.set(fault);
    env.advance(31);
    // A hung source is given up on when the clock passes its deadline.
    env.until_ticking(&format!("a retry after '{message}'"), 50, |s| {
        matches!(&s.state, RefreshState::Retrying { error, .. } if error.to_string().contains(message))
    })
    .await;
    assert_eq!(env.served(), "tok-1");
    env.authority.set(Fault::None);
    env.advance(5);
    env.until("recovery", |s| s.state == RefreshState::Healthy)
        .await;
    assert_ne!(env.served(), "tok-1");
    env.stop().await;
}

async fn source_panics(driver: impl Driver) {
    contained(driver, Fault::Panic, "panicked").await
}

async fn source_hangs(driver: impl Driver) {
    contained(driver, Fault::Hang, "timed out").await
}

async fn source_returns_garbage(driver: impl Driver) {
    contained(driver, Fault::Garbage, "unusable access token").await
}

/// What the test cache does on every call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CacheFault {
    None,
    Panic,
    /// Hang (until the fault is cleared, for a blocking call; for ever, for
    /// an async one), then fail.
    Hang,
}

/// A cache in memory with a lease and a fault switch, shared by the
/// drivers of one test.
#[derive(Clone)]
struct MemoryCache {
    token: Arc<Mutex<Option<Token>>>,
    leased: Arc<AtomicBool>,
    stores: Arc<AtomicU64>,
    fault: Arc<(Mutex<CacheFault>, Condvar)>,
    /// Blocking calls held in a hang right now.
    hanging: Arc<AtomicU64>,
}

impl Default for MemoryCache {
    fn default() -> Self {
        MemoryCache {
            token: Arc::default(),
            leased: Arc::default(),
            stores: Arc::default(),
            fault: Arc::new((Mutex::new(CacheFault::None), Condvar::new())),
            hanging: Arc::default(),
        }
    }
}

impl MemoryCache {
    fn set(&self, fault: CacheFault) {
        *self.fault.0.lock().unwrap() = fault;
        self.fault.1.notify_all();
    }

    fn stores(&self) -> u64 {
        self.stores.load(Ordering::SeqCst)
    }

    /// Waits until every blocking call held in a hang has returned, and a
    /// moment more for its worker thread to finish with it: the blocking
    /// driver refuses a cache call while a worker it set aside is still in
    /// one, so a call made right after the fault is cleared could race the
    /// hung workers on a loaded machine.
    fn wait_unhung(&self) {
        let give_up = Instant::now() + HUNG;
        while self.hanging.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < give_up, "hung cache calls never returned");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    fn fault(&self) -> CacheFault {
        *self.fault.0.lock().unwrap()
    }

    /// Carries out the fault of a blocking call.
    fn blocking_fault(&self) -> Result<(), CacheError> {
        match self.fault() {
            CacheFault::None => Ok(()),
            CacheFault::Panic => panic!("the cache blew up"),
            CacheFault::Hang => {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                let mut fault = self.fault.0.lock().unwrap();
                while *fault == CacheFault::Hang {
                    fault = self.fault.1.wait(fault).unwrap();
                }
                drop(fault);
                self.hanging.fetch_sub(1, Ordering::SeqCst);
                Err(hung())
            }
        }
    }

    /// Carries out the fault of an async call.
    async fn async_fault(&self) -> Result<(), CacheError> {
        match self.fault() {
            CacheFault::None => Ok(()),
            CacheFault::Panic => panic!("the async cache blew up"),
            CacheFault::Hang => {
                futures::future::pending::<()>().await;
                Err(hung())
            }
        }
    }

    fn do_load(&self) -> Result<Option<Token>, CacheError> {
        Ok(self.token.lock().unwrap().clone())
    }

    fn do_store(&self, token: &Token) -> Result<(), CacheError> {
        self.stores.fetch_add(1, Ordering::SeqCst);
        *self.token.lock().unwrap() = Some(token.clone());
        Ok(())
    }

    fn do_acquire_lease(&self) -> Result<LeaseOutcome, CacheError> {
        match self.leased.swap(true, Ordering::SeqCst) {
            false => Ok(LeaseOutcome::Granted),
            true => Ok(LeaseOutcome::Busy),
        }
    }

    fn do_release_lease(&self) -> Result<(), CacheError> {
        self.leased.store(false, Ordering::SeqCst);
        Ok(())
    }
}

fn hung() -> CacheError {
    CacheError::new(CacheErrorKind::Unavailable, "the cache hung")
}

impl TokenCache for MemoryCache {
    fn load(&self) -> Result<Option<Token>, CacheError> {
        self.blocking_fault()?;
        self.do_load()
    }
    fn store(&self, token: &Token) -> Result<(), CacheError> {
        self.blocking_fault()?;
        self.do_store(token)
    }
    fn acquire_lease(&self, _ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        self.blocking_fault()?;
        self.do_acquire_lease()
    }
    fn release_lease(&self) -> Result<(), CacheError> {
        self.blocking_fault()?;
        self.do_release_lease()
    }
}

/// The same cache behind the async trait, as a cache with an async client
/// would be: polled by the driver, never blocking it.
struct AsyncMemoryCache(MemoryCache);

impl AsyncTokenCache for AsyncMemoryCache {
    async fn load(&self) -> Result<Option<Token>, CacheError> {
        self.0.async_fault().await?;
        self.0.do_load()
    }
    async fn store(&self, token: &Token) -> Result<(), CacheError> {
        self.0.async_fault().await?;
        self.0.do_store(token)
    }
    async fn acquire_lease(&self, _ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        self.0.async_fault().await?;
        self.0.do_acquire_lease()
    }
    async fn release_lease(&self) -> Result<(), CacheError> {
        self.0.async_fault().await?;
        self.0.do_release_lease()
    }
}

/// Two drivers sharing a cache: the second adopts the first's token
/// instead of asking the authority, and the lease is given back.
async fn shared_cache(driver: impl Driver) {
    let cache = MemoryCache::default();
    let first = Env::start_cached(driver, &cache, |b| b);
    first.ready().await;
    // The token is published before it is stored (no refresh token to
    // lose), so the store and the lease release may come just after.
    first
        .until("the token stored and the lease released", |_| {
            cache.stores() == 1 && !cache.leased.load(Ordering::SeqCst)
        })
        .await;

    let clock = first.clock.clone();
    let (second, second_driver) = driver.spawn_cached(builder(&clock), &first.authority, &cache);
    let adopted = within(HUNG, second.ready())
        .await
        .expect("hung")
        .expect("adopted token");
    assert_eq!(adopted.access_token().expose_secret(), "tok-1");
    drop(adopted);
    within(HUNG, second_driver.shutdown()).await.expect("hung");
    assert_eq!(
        first.stop().await.fetches(),
        1,
        "one fetch for two instances"
    );
}

/// A cache fault is contained: every call failing (a panic, or a hang past
/// the timeout) is a miss, the driver keeps fetching and serving, and uses
/// the cache again once it works.
async fn cache_contained(driver: impl Driver, fault: CacheFault) {
    // Only a hang needs a short timeout; see `contained`.
    let timeout = match fault {
        CacheFault::Hang => Duration::from_millis(100),
        _ => Duration::from_secs(30),
    };
    let cache = MemoryCache::default();
    // A fresh token a working cache would hand out at start-up.
    *cache.token.lock().unwrap() = Some(Token::new(
        AccessToken::new("peer-tok"),
        T0,
        T0 + Duration::from_secs(30),
        T0 + Duration::from_secs(60),
    ));
    cache.set(fault);
    let env = Env::start_cached(driver, &cache, |b| b.fetch_timeout(timeout));
    // tok-1, not peer-tok: the broken load was a miss (a hung one once the
    // clock passes its deadline).
    env.until_ticking("the first token", 50, |s| s.token.is_some())
        .await;
    assert_eq!(env.served(), "tok-1");
    env.advance(31);
    env.until_ticking("tok-2", 50, |s| {
        s.token
            .as_ref()
            .is_some_and(|t| t.access_token().expose_secret() == "tok-2")
    })
    .await;
    assert_eq!(cache.stores(), 0);
    // Readers can see that the cache did not take the token.
    env.until_ticking("the failed store reported", 50, |s| s.store_error.is_some())
        .await;

    cache.set(CacheFault::None);
    cache.wait_unhung();
    // 62 s: tok-2 is stale, peer-tok has expired.
    env.advance(31);
    env.until_token("tok-3").await;
    // (tok-2 may be stored too: its store can come after the fault is
    // cleared.)
    env.until("tok-3 stored", |_| {
        cache
            .token
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|t| t.access_token().expose_secret() == "tok-3")
    })
    .await;
    env.until("the store error cleared", |s| s.store_error.is_none())
        .await;
    assert_eq!(env.stop().await.fetches(), 3);
}

async fn cache_panics(driver: impl Driver) {
    cache_contained(driver, CacheFault::Panic).await
}

async fn cache_hangs(driver: impl Driver) {
    cache_contained(driver, CacheFault::Hang).await
}

/// A real HTTP authority on loopback, on the scenario's manual clock.
fn local_authority(clock: &ManualClock) -> LocalAuthority {
    LocalAuthority::builder()
        .client("app", "app-secret")
        .token_lifetime(Duration::from_secs(60))
        .clock(clock.clone())
        .start()
        .expect("local authority")
}

/// The refresh token is the machine's state: every refresh presents the
/// newest one, so a rotating authority never sees a replay.
async fn http_refresh_token_rotation(driver: impl Driver) {
    let clock = ManualClock::new(T0);
    let authority = local_authority(&clock);
    let source = authority
        .refresh_token_source("app")
        .refresh_token(authority.issue_refresh_token("app"))
        .build()
        .expect("source");
    let (tokens, control) = driver.spawn_source(builder(&clock), source);
    let first = within(HUNG, tokens.ready())
        .await
        .expect("hung")
        .expect("token");
    let mut last = first.id();
    drop(first);
    for _ in 0..3 {
        clock.advance(Duration::from_secs(31));
        control.wake();
        let give_up = Instant::now() + HUNG;
        while tokens.token().map(|t| t.id()) == Some(last) {
            assert!(
                Instant::now() < give_up,
                "no refresh: {:?}",
                tokens.snapshot()
            );
            let _ = within(Duration::from_millis(50), tokens.changed()).await;
        }
        last = tokens.token().expect("token").id();
        assert_eq!(tokens.status(), RefreshState::Healthy);
    }
    assert_eq!(authority.grant_count("refresh_token"), 4);
    within(HUNG, control.shutdown()).await.expect("hung");
}

/// An answer that is not JSON is a fetch error; the token stays served.
async fn http_malformed_answer(driver: impl Driver) {
    let clock = ManualClock::new(T0);
    let authority = local_authority(&clock);
    let source = authority.client_credentials("app").build().expect("source");
    let (tokens, control) = driver.spawn_source(builder(&clock), source);
    let first = within(HUNG, tokens.ready())
        .await
        .expect("hung")
        .expect("token");
    let first_id = first.id();
    drop(first);
    authority.add_fault(testing::Fault::MalformedJson, FaultWindow::NextRequests(1));
    clock.advance(Duration::from_secs(31));
    control.wake();
    let give_up = Instant::now() + HUNG;
    while !matches!(tokens.status(), RefreshState::Retrying { .. }) {
        assert!(
            Instant::now() < give_up,
            "no error: {:?}",
            tokens.snapshot()
        );
        let _ = within(Duration::from_millis(50), tokens.changed()).await;
    }
    assert_eq!(tokens.valid_token().expect("still valid").id(), first_id);
    clock.advance(Duration::from_secs(5));
    control.wake();
    while tokens.status() != RefreshState::Healthy {
        assert!(
            Instant::now() < give_up,
            "no recovery: {:?}",
            tokens.snapshot()
        );
        let _ = within(Duration::from_millis(50), tokens.changed()).await;
    }
    assert_ne!(tokens.valid_token().expect("fresh").id(), first_id);
    within(HUNG, control.shutdown()).await.expect("hung");
}

macro_rules! conformance {
    ($($kind:ident => $driver:expr;)*) => {$(
        mod $kind {
            use super::*;
            conformance!(@tests $driver;
                first_token, refresh_before_expiry, outage, recovery, permanent_error,
                invalidate, shutdown, dropping_all_handles, clock_jump,
                source_panics, source_hangs, source_returns_garbage, shared_cache,
                cache_panics, cache_hangs, http_refresh_token_rotation, http_malformed_answer);
        }
    )*};
    (@caches $($kind:ident => $driver:expr;)*) => {$(
        mod $kind {
            use super::*;
            conformance!(@tests $driver; shared_cache, cache_panics, cache_hangs);
        }
    )*};
    (@tests $driver:expr; $($scenario:ident),*) => {$(
        #[test]
        fn $scenario() {
            let driver = $driver;
            driver.block_on(super::$scenario(driver));
        }
    )*};
}

conformance! {
    on_thread => THREAD;
    on_tokio => cell(Rt::Tokio, false, false);
    on_tokio_async_source => cell(Rt::Tokio, true, false);
    on_async_std => cell(Rt::AsyncStd, false, false);
    on_async_std_async_source => cell(Rt::AsyncStd, true, false);
    on_smol => cell(Rt::Smol, false, false);
    on_smol_async_source => cell(Rt::Smol, true, false);
}

// Async caches change only what the cache scenarios exercise.
conformance! {
    @caches
    on_tokio_async_cache => cell(Rt::Tokio, true, true);
    on_async_std_async_cache => cell(Rt::AsyncStd, false, true);
    on_smol_async_cache => cell(Rt::Smol, true, true);
}

/// The blocking driver's own way to stop, from plain code.
#[test]
fn thread_shutdown_blocking() {
    let env = Env::start(THREAD, |b| b);
    futures::executor::block_on(env.ready());
    env.driver.shutdown_blocking();
    assert_eq!(env.tokens.status(), RefreshState::Stopped);
    assert_eq!(env.tokens.wait_changed(HUNG), Err(Closed));
}

/// The blocking driver runs source calls on one long-lived worker; a
/// source that hangs costs that worker, and while it is stuck at most one
/// more is started, however many attempts time out meanwhile. (Cache calls
/// have workers of their own: `cache_hangs` shows fetches going on.)
#[test]
fn thread_a_hang_leaks_at_most_one_worker() {
    use std::sync::mpsc;
    let (release, hung) = mpsc::channel::<()>();
    let hung = Arc::new(Mutex::new(hung));
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let hang = Arc::new(AtomicBool::new(true));
    let hanging = hang.clone();
    let source = FnSource::new(move |_request: &FetchRequest| {
        seen.fetch_add(1, Ordering::SeqCst);
        if hanging.load(Ordering::SeqCst) {
            // Every call hangs until the test lets them all go.
            let _ = hung.lock().unwrap().recv();
        }
        Ok(TokenResponse::new(AccessToken::new("late")).with_expires_in(Some(60)))
    });
    let (tokens, driver) = Builder::new()
        .fetch_timeout(Duration::from_millis(50))
        .backoff(Backoff::new(
            Duration::from_millis(5),
            2,
            Duration::from_millis(20),
        ))
        .thread_name("hang")
        .spawn_thread(source)
        .expect("thread");
    // Let many attempts time out.
    let give_up = Instant::now() + HUNG;
    while attempts(&tokens) < 8 {
        assert!(
            Instant::now() < give_up,
            "no retries: {:?}",
            tokens.snapshot()
        );
        let _ = tokens.wait_changed(Duration::from_millis(50));
    }
    let workers = threads_named("hang-io");
    assert!(
        (1..=2).contains(&workers),
        "{workers} worker threads after {} attempts",
        attempts(&tokens)
    );
    assert!(
        calls.load(Ordering::SeqCst) <= 2,
        "{} calls reached the hung source",
        calls.load(Ordering::SeqCst)
    );
    // Once the source answers again, so does the driver.
    hang.store(false, Ordering::SeqCst);
    drop(release);
    let token = tokens.wait_ready(HUNG).expect("a token after the hang");
    assert_eq!(token.access_token().expose_secret(), "late");
    drop(token);
    driver.shutdown_blocking();
}

fn attempts(tokens: &TokenHandle) -> u32 {
    match tokens.status() {
        RefreshState::Retrying { attempt, .. } => attempt,
        _ => 0,
    }
}

/// Threads of this process with this name (Linux: /proc/self/task).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// "Never" written as `Duration::MAX` in every setting: no overflow panic
/// in the builder, the machine or either driver kind, and the first token
/// still comes.
#[test]
fn duration_max_settings_saturate() {
    let max = |b: Builder| {
        b.heartbeat(Duration::MAX)
            .fetch_timeout(Duration::MAX)
            .cache_timeout(Duration::MAX)
            .lease_ttl(Duration::MAX)
            .peer_wait(Duration::MAX)
            .invalidate_interval(Duration::MAX)
            .backoff(Backoff::new(Duration::MAX, u32::MAX, Duration::MAX))
            .cache(freshtoken::cache::MemoryCache::new())
    };
    let source = || {
        FnSource::new(|_: &FetchRequest| {
            Ok(TokenResponse::new(AccessToken::new("t")).with_expires_in(Some(i64::MAX)))
        })
    };
    let (tokens, driver) = max(Builder::new()).spawn_thread(source()).expect("thread");
    let token = tokens.wait_ready(HUNG).expect("a token");
    tokens.invalidate(&token);
    drop(token);
    driver.shutdown_blocking();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tokens, driver) =
            max(Builder::new()).spawn(runtime::Tokio::current().unwrap(), source());
        assert!(within(HUNG, tokens.ready()).await.expect("hung").is_ok());
        within(HUNG, driver.shutdown()).await.expect("hung");
    });
}
