//! How long a cache load takes: the part of an instance's cold start that a
//! cache saves from a trip to the authority.
//!
//! Needs `redis-server` on PATH (`.ci/setup-redis.sh`); without it the Redis
//! part is skipped with a note.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use freshtoken::cache::{CacheStack, FileCache, MemoryCache, RedisCache, TokenCache};
use freshtoken::{AccessToken, Clock, RefreshToken, SystemClock, Token};
use freshtoken_tests::redis_server::RedisServer;

/// A realistic token: a JWT-sized access token and a refresh token.
fn token() -> Token {
    let now = SystemClock.now();
    Token::new(
        AccessToken::new("a".repeat(900)),
        now,
        now + Duration::from_secs(2700),
        now + Duration::from_secs(3600),
    )
    .with_refresh_token(Some(RefreshToken::new("r".repeat(64))))
    .with_scope(Some("read write".into()))
}

fn file(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("token.json"));
    cache.store(&token()).unwrap();
    c.bench_function("file/load_valid", |b| {
        b.iter(|| black_box(cache.load().unwrap().unwrap()))
    });
    // A new FileCache value per load: what a freshly started process does.
    let path = cache.path().to_owned();
    c.bench_function("file/new_and_load", |b| {
        b.iter(|| black_box(FileCache::new(&path).load().unwrap().unwrap()))
    });
    let t = token();
    c.bench_function("file/store_durable", |b| {
        b.iter(|| cache.store(&t).unwrap())
    });
}

fn redis(c: &mut Criterion) {
    if !RedisServer::available() {
        eprintln!("note: redis-server not on PATH; skipping the Redis benchmarks (run .ci/setup-redis.sh)");
        return;
    }
    for (name, server) in [
        ("tcp", RedisServer::start_tcp()),
        ("unix", RedisServer::start_unix()),
    ] {
        let cache = RedisCache::new(&server.url(), "bench:token").unwrap();
        cache.store(&token()).unwrap();
        c.bench_function(&format!("redis/load_valid_{name}"), |b| {
            b.iter(|| black_box(cache.load().unwrap().unwrap()))
        });
        // Connect and load: a freshly started process's first read.
        let url = server.url();
        c.bench_function(&format!("redis/connect_and_load_{name}"), |b| {
            b.iter(|| {
                let fresh = RedisCache::new(&url, "bench:token").unwrap();
                black_box(fresh.load().unwrap().unwrap())
            })
        });
    }
}

fn stack(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = FileCache::new(dir.path().join("token.json"));
    file.store(&token()).unwrap();
    let stack = CacheStack::new().with(MemoryCache::new()).with(file);
    stack.load().unwrap();
    c.bench_function("stack/load_fresh_from_memory", |b| {
        b.iter(|| black_box(stack.load().unwrap().unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = file, redis, stack
}
criterion_main!(benches);
