//! Cold start of a short-lived instance whose shared cache already holds a
//! valid token: the time from `Builder::spawn_thread` to the first valid
//! token (`wait_ready`). Goals: a median under 1 ms with the file cache,
//! under 2 ms with Redis on loopback, and no request to the authority.
//!
//! Each iteration is a whole instance: a new cache value (so a new file
//! open, or a new Redis connection), a new driver thread, the first token;
//! the shutdown that follows is not timed. The source counts its calls and
//! fails: the benchmark panics if any instance asked it for a token.
//!
//! Needs `redis-server` on PATH for the Redis part; without it that part is
//! skipped with a note.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use freshtoken::cache::{FileCache, RedisCache, TokenCache};
use freshtoken::driver::Builder;
use freshtoken::source::FnSource;
use freshtoken::{AccessToken, Clock, FetchError, SystemClock, Token};
use freshtoken_tests::redis_server::RedisServer;

/// An hour-long token issued just now: fresh for the whole run.
fn token() -> Token {
    let now = SystemClock.now();
    Token::new(
        AccessToken::new("a".repeat(900)),
        now,
        now + Duration::from_secs(2700),
        now + Duration::from_secs(3600),
    )
}

/// Times `iters` cold starts with caches made by `cache`; panics if the
/// source was ever called.
fn cold_starts<C: TokenCache>(iters: u64, cache: &impl Fn() -> C) -> Duration {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let counter = calls.clone();
        let source = FnSource::new(move |_: &freshtoken::source::FetchRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(FetchError::transient(
                "the benchmark's instance must not fetch",
            ))
        });
        let cache = cache();
        let start = Instant::now();
        let (tokens, driver) = Builder::new()
            .cache(cache)
            .spawn_thread(source)
            .expect("a driver thread");
        let ready = tokens.wait_ready(Duration::from_secs(5));
        total += start.elapsed();
        assert!(ready.is_ok(), "no token from the cache");
        drop(ready);
        drop(tokens);
        driver.shutdown_blocking();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "an instance asked the authority"
    );
    total
}

fn file(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    FileCache::new(&path).store(&token()).unwrap();
    c.bench_function("cold_start/file", |b| {
        b.iter_custom(|iters| cold_starts(iters, &|| FileCache::new(&path)))
    });
}

fn redis(c: &mut Criterion) {
    if !RedisServer::available() {
        eprintln!("note: redis-server not on PATH; skipping the Redis cold start (run .ci/setup-redis.sh)");
        return;
    }
    for (name, server) in [
        ("tcp", RedisServer::start_tcp()),
        ("unix", RedisServer::start_unix()),
    ] {
        let url = server.url();
        RedisCache::new(&url, "bench:token")
            .unwrap()
            .store(&token())
            .unwrap();
        // For comparison: a connection and a load on a new thread, the part
        // of a cold start that is Redis's (the blocking driver runs each
        // cache call on a short-lived thread).
        c.bench_function(
            &format!("cold_start/reference_redis_{name}_connect_load_on_a_new_thread"),
            |b| {
                b.iter(|| {
                    let url = url.clone();
                    std::thread::spawn(move || {
                        let cache = RedisCache::new(&url, "bench:token").unwrap();
                        cache.load().unwrap().unwrap()
                    })
                    .join()
                    .unwrap()
                })
            },
        );
        c.bench_function(&format!("cold_start/redis_{name}"), |b| {
            b.iter_custom(|iters| {
                cold_starts(iters, &|| RedisCache::new(&url, "bench:token").unwrap())
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = file, redis
}
criterion_main!(benches);
