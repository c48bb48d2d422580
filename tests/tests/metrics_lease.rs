//! The cache and lease metrics under a real lease contention: two drivers
//! share one FileCache file (as two processes on a machine would), one of
//! them through a CacheStack (memory, then the file), against a real
//! LocalAuthority whose first answer hangs so that the first driver holds
//! the lease while the second asks for it. Also an async cache on the
//! tokio driver.

mod metrics_support;

use std::time::Duration;

use freshtoken::cache::{AsyncTokenCache, CacheStack, FileCache, MemoryCache, TokenCache};
use freshtoken::driver::Builder;
use freshtoken::metrics::names;
use freshtoken::source::ConstTokenSource;
use freshtoken::testing::{Fault, FaultPlan, FaultWindow, LocalAuthority};
use freshtoken::{CacheError, Jitter, ManualClock, Timestamp, Token};
use metrics_support::{assert_bounded, Recording, View, HUNG};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

fn ops(view: &View, layer: &str, position: &str, operation: &str, outcome: &str) -> u64 {
    view.counter(
        names::CACHE_OPERATIONS_TOTAL,
        &[
            ("layer", layer),
            ("position", position),
            ("operation", operation),
            ("outcome", outcome),
        ],
    )
}

#[test]
fn lease_contention_in_numbers() {
    let recording = Recording::global();
    let a = recording.refresher("lease-a");
    let b = recording.refresher("lease-b");
    let clock = ManualClock::new(T0);
    let authority = LocalAuthority::builder()
        .client("app", "app-secret")
        .token_lifetime(Duration::from_secs(60))
        .clock(clock.clone())
        .start()
        .expect("local authority");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");

    // The first answer takes a second (real time), so `a` holds the lease
    // while `b` starts.
    authority.set_faults(FaultPlan::new().with(
        Fault::Hang(Duration::from_secs(1)),
        FaultWindow::NextRequests(1),
    ));
    let builder = |name: &str| {
        Builder::new()
            .name(name)
            .clock(clock.clone())
            .jitter(Jitter::NONE)
            .seed(3)
    };
    let (tokens_a, driver_a) = builder("lease-a")
        .cache(FileCache::new(&path))
        .spawn_thread(authority.client_credentials("app").build().unwrap())
        .unwrap();
    a.until(
        "a's lease",
        || {},
        |v| v.counter(names::LEASE_REQUESTS_TOTAL, &[("outcome", "granted")]) == 1,
    );

    let local = MemoryCache::new();
    let stack = CacheStack::new()
        .with(local.clone())
        .with(FileCache::new(&path))
        .with_clock(clock.clone());
    let (tokens_b, driver_b) = builder("lease-b")
        .cache(stack)
        .spawn_thread(authority.client_credentials("app").build().unwrap())
        .unwrap();
    b.until(
        "b to find the lease busy",
        || {},
        |v| v.counter(names::LEASE_REQUESTS_TOTAL, &[("outcome", "busy")]) >= 1,
    );

    // `a`'s answer comes, it stores the token and gives the lease back.
    tokens_a.wait_ready(HUNG).expect("a's token");
    a.until(
        "a's release",
        || {},
        |v| ops(v, "file", "0", "release", "ok") == 1,
    );
    // `b` waits for its peer by the manual clock: move it, and `b` re-reads
    // the file and adopts the token.
    b.until(
        "b's adoption",
        || {
            clock.advance(Duration::from_millis(500));
            driver_b.wake();
        },
        |v| v.counter(names::TOKENS_ADOPTED_TOTAL, &[]) == 1,
    );
    tokens_b.wait_ready(HUNG).expect("b's token");
    assert_eq!(
        tokens_a.token().unwrap().access_token().expose_secret(),
        tokens_b.token().unwrap().access_token().expose_secret()
    );

    // One request to the authority, by `a`.
    assert_eq!(authority.request_count(), 1);
    assert_eq!(
        a.counter(names::FETCHES_TOTAL, &[("outcome", "success")]),
        1
    );
    assert_eq!(b.counter(names::FETCHES_TOTAL, &[]), 0);
    assert_eq!(a.counter(names::TOKENS_ADOPTED_TOTAL, &[]), 0);

    // a: a lone file cache; it read twice (before and under the lease).
    assert_eq!(a.counter(names::LEASE_REQUESTS_TOTAL, &[]), 1);
    assert_eq!(ops(&a, "file", "0", "load", "miss"), 2);
    assert_eq!(ops(&a, "file", "0", "lease", "granted"), 1);
    assert_eq!(ops(&a, "file", "0", "store", "ok"), 1);
    assert_eq!(a.counter(names::CACHE_OPERATIONS_TOTAL, &[]), 5);

    // b: every layer of its stack, by position.
    let busy = b.counter(names::LEASE_REQUESTS_TOTAL, &[("outcome", "busy")]);
    assert!(busy >= 1);
    assert_eq!(b.counter(names::LEASE_REQUESTS_TOTAL, &[]), busy);
    assert_eq!(ops(&b, "file", "1", "lease", "busy"), busy);
    // The lease is asked of the most shared layer only.
    assert_eq!(ops(&b, "memory", "0", "lease", "busy"), 0);
    let misses = ops(&b, "memory", "0", "load", "miss");
    assert!(misses >= 1);
    assert_eq!(ops(&b, "file", "1", "load", "hit"), 1);
    assert_eq!(ops(&b, "file", "1", "load", "miss"), misses - 1);
    // The adopted token was written back to the memory layer above.
    assert_eq!(ops(&b, "memory", "0", "write_back", "ok"), 1);
    assert!(local.load().unwrap().is_some());
    // The refresher that adopted has a healthy state and a countdown.
    assert_eq!(
        b.gauge(names::REFRESH_STATE, &[("state", "healthy")]),
        Some(1.0)
    );
    assert!(b.gauge(names::TOKEN_EXPIRES_IN_SECONDS, &[]).unwrap() > 0.0);

    drop((tokens_a, tokens_b));
    driver_a.shutdown_blocking();
    driver_b.shutdown_blocking();
    assert_bounded(&a);
    assert_bounded(&b);
}

/// An async cache (polled in the tokio driver's task) is counted too, with
/// its own label.
#[test]
fn async_cache_operations_are_counted() {
    struct Remote(MemoryCache);

    impl AsyncTokenCache for Remote {
        async fn load(&self) -> Result<Option<Token>, CacheError> {
            self.0.load()
        }
        async fn store(&self, token: &Token) -> Result<(), CacheError> {
            self.0.store(token)
        }
        fn metrics_label(&self) -> &'static str {
            "memory"
        }
    }

    let recording = Recording::global();
    let view = recording.refresher("async-cache");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = MemoryCache::new();
    runtime.block_on(async {
        let (tokens, driver) = Builder::new()
            .name("async-cache")
            .async_cache(Remote(shared.clone()))
            .spawn_tokio(ConstTokenSource::new("key", Some(3600)));
        tokens.ready().await.expect("a token");
        drop(tokens);
        driver.shutdown().await;
    });
    assert!(shared.load().unwrap().is_some());
    assert!(ops(&view, "memory", "0", "load", "miss") >= 1);
    assert_eq!(ops(&view, "memory", "0", "lease", "unsupported"), 1);
    assert_eq!(ops(&view, "memory", "0", "store", "ok"), 1);
    assert_eq!(
        view.counter(names::LEASE_REQUESTS_TOTAL, &[("outcome", "unsupported")]),
        1
    );
    assert_eq!(
        view.counter(names::FETCHES_TOTAL, &[("outcome", "success")]),
        1
    );
    assert_bounded(&view);
}
