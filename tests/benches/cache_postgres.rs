//! The PostgreSQL cache's calls on loopback (a server the bench starts,
//! like the tests), and what encryption at rest adds to a file-cache load.
//!
//! Needs PostgreSQL (`.ci/setup-postgres.sh`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use freshtoken::cache::{EncryptionKeys, FileCache, PostgresCache, TokenCache};
use freshtoken::{AccessToken, Clock, RefreshToken, SystemClock, Token};
use freshtoken_tests::postgres_server::PostgresServer;

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

fn keys() -> EncryptionKeys {
    EncryptionKeys::new("bench", [7; 32]).unwrap()
}

fn postgres(c: &mut Criterion) {
    let server = PostgresServer::start();
    for (name, sealed) in [("plain", false), ("sealed", true)] {
        let mut cache = PostgresCache::new(&server.conn_str(), format!("bench:{name}")).unwrap();
        if sealed {
            cache = cache.encryption(keys());
        }
        let t = token();
        cache.store(&t).unwrap();
        c.bench_function(&format!("postgres/load_valid_{name}"), |b| {
            b.iter(|| black_box(cache.load().unwrap().unwrap()))
        });
        c.bench_function(&format!("postgres/store_{name}"), |b| {
            b.iter(|| cache.store(&t).unwrap())
        });
    }
    let cache = PostgresCache::new(&server.conn_str(), "bench:lease").unwrap();
    c.bench_function("postgres/acquire_and_release_lease", |b| {
        b.iter(|| {
            black_box(cache.acquire_lease(Duration::from_secs(10)).unwrap());
            cache.release_lease().unwrap();
        })
    });
    // Connect (startup, SET, prepare) and load: a fresh process's first read.
    let conn = server.conn_str();
    c.bench_function("postgres/connect_and_load", |b| {
        b.iter(|| {
            let fresh = PostgresCache::new(&conn, "bench:plain").unwrap();
            black_box(fresh.load().unwrap().unwrap())
        })
    });
}

fn sealed_file(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let plain = FileCache::new(dir.path().join("plain.json"));
    let sealed = FileCache::new(dir.path().join("sealed.json")).encryption(keys());
    plain.store(&token()).unwrap();
    sealed.store(&token()).unwrap();
    c.bench_function("file/load_valid_plain", |b| {
        b.iter(|| black_box(plain.load().unwrap().unwrap()))
    });
    c.bench_function("file/load_valid_sealed", |b| {
        b.iter(|| black_box(sealed.load().unwrap().unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = postgres, sealed_file
}
criterion_main!(benches);
