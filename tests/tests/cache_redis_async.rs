//! The async Redis cache against a real `redis-server`, under tokio, smol
//! and async-std, alone and inside the async drivers.

mod cache_support;

use std::time::Duration;

use cache_support::capture_logs;
use freshtoken::cache::LeaseOutcome;
use freshtoken::cache::{AsyncRedisCache, AsyncTokenCache, RedisCache, TokenCache};
use freshtoken::driver::Builder;
use freshtoken::runtime::AsyncStd;
use freshtoken::runtime::Tokio;
use freshtoken::source::ConstTokenSource;
use freshtoken::{AccessToken, CacheErrorKind, Clock, RefreshToken, SystemClock, Token};
use freshtoken_tests::assert_no_secret;
use freshtoken_tests::redis_server::RedisServer;

const SECRET: &str = "TOPSECRET-access-async";
const REFRESH: &str = "TOPSECRET-refresh-async";

fn token() -> Token {
    let now = SystemClock.now();
    Token::new(
        AccessToken::new(SECRET),
        now,
        now + Duration::from_secs(30),
        now + Duration::from_secs(60),
    )
    .with_refresh_token(Some(RefreshToken::new(REFRESH)))
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What every runtime must get right: a round trip that the blocking cache
/// sees too, and an exclusive lease.
async fn round_trip_and_lease(server: &RedisServer) {
    let a = server.async_cache("test:token");
    let b = server.async_cache("test:token");
    assert_eq!(a.load().await.unwrap(), None);
    let t = token();
    a.store(&t).await.unwrap();
    assert_eq!(b.load().await.unwrap(), Some(t.clone()));
    // The same key and record as the blocking RedisCache.
    assert_eq!(
        RedisCache::new(&server.url(), "test:token")
            .unwrap()
            .load()
            .unwrap(),
        Some(t)
    );
    let ttl = Duration::from_secs(10);
    assert_eq!(a.acquire_lease(ttl).await.unwrap(), LeaseOutcome::Granted);
    assert_eq!(b.acquire_lease(ttl).await.unwrap(), LeaseOutcome::Busy);
    b.release_lease().await.unwrap();
    assert_eq!(b.acquire_lease(ttl).await.unwrap(), LeaseOutcome::Busy);
    a.release_lease().await.unwrap();
    assert_eq!(b.acquire_lease(ttl).await.unwrap(), LeaseOutcome::Granted);
    assert_no_secret(&format!("{a:?}"));
}

#[test]
fn round_trip_and_lease_under_tokio_smol_and_async_std() {
    let server = RedisServer::start_tcp();
    tokio_rt().block_on(round_trip_and_lease(&server));
    let server = RedisServer::start_unix();
    smol::block_on(round_trip_and_lease(&server));
    let server = RedisServer::start_tcp();
    async_std::task::block_on(round_trip_and_lease(&server));
}

#[test]
fn newer_records_oversized_values_and_refused_urls() {
    let server = RedisServer::start_tcp();
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    tokio_rt().block_on(async {
        let c = server.async_cache("test:token");
        let newer = r#"{"version":3,"access_token":"TOPSECRET-newer"}"#;
        redis::cmd("SET")
            .arg("test:token")
            .arg(newer)
            .query::<()>(&mut raw)
            .unwrap();
        let err = c.load().await.unwrap_err();
        assert_eq!(err.kind(), CacheErrorKind::Unreadable);
        let err = c.store(&token()).await.unwrap_err();
        assert_eq!(err.kind(), CacheErrorKind::Unreadable);
        assert_no_secret(&format!("{err} {err:?}"));
        let kept: String = redis::cmd("GET").arg("test:token").query(&mut raw).unwrap();
        assert_eq!(kept, newer);
    });
    // Oversized: a miss with a warning (logs captured around the runtime,
    // which runs the cache's futures on this thread).
    let big = format!(
        r#"{{"version":1,"access_token":"{}"}}"#,
        "a".repeat(100_000)
    );
    redis::cmd("SET")
        .arg("test:token")
        .arg(&big)
        .query::<()>(&mut raw)
        .unwrap();
    let c = server.async_cache("test:token");
    let (loaded, logs) = capture_logs(|| tokio_rt().block_on(c.load()));
    assert_eq!(loaded.unwrap(), None);
    assert!(
        logs.iter().any(|l| l.contains("larger than any record")),
        "{logs:?}"
    );
    for url in ["redis://10.0.0.7:6379/", "redis://127.0.0.1:6379/#insecure"] {
        let err = AsyncRedisCache::new(url, "k").unwrap_err();
        assert_no_secret(&format!("{err} {err:?}"));
    }
    assert!(AsyncRedisCache::new_allowing_plain_text("redis://10.0.0.7:6379/", "k").is_ok());
}

#[test]
fn redis_down_is_unavailable_then_recovers() {
    let mut server = RedisServer::start_tcp();
    tokio_rt().block_on(async {
        let c = server.async_cache("test:token");
        let t = token();
        c.store(&t).await.unwrap();
        server.stop();
        let err = c.load().await.unwrap_err();
        assert_eq!(err.kind(), CacheErrorKind::Unavailable, "{err}");
        server.restart();
        // An empty server again (no persistence): a miss, then a store.
        assert_eq!(c.load().await.unwrap(), None);
        c.store(&t).await.unwrap();
        assert_eq!(c.load().await.unwrap(), Some(t));
    });
}

#[test]
fn the_async_drivers_share_tokens_through_it() {
    let server = RedisServer::start_tcp();
    let blocking = RedisCache::new(&server.url(), "test:token").unwrap();
    tokio_rt().block_on(async {
        let (tokens, driver) = Builder::new()
            .async_cache(server.async_cache("test:token"))
            .spawn(
                Tokio::current().expect("a tokio runtime"),
                ConstTokenSource::new("tokio-token", Some(3600)),
            );
        assert!(tokens.ready().await.is_ok());
        // The driver stores after it publishes: wait (bounded) for it.
        for _ in 0..250 {
            if blocking.load().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        driver.shutdown().await;
    });
    let stored = blocking
        .load()
        .unwrap()
        .expect("stored by the tokio driver");
    assert_eq!(stored.access_token().expose_secret(), "tokio-token");

    // A second instance, under async-std, adopts the cached token.
    async_std::task::block_on(async {
        let (tokens, driver) = Builder::new()
            .async_cache(server.async_cache("test:token"))
            .spawn(
                AsyncStd,
                ConstTokenSource::new("async-std-token", Some(3600)),
            );
        let token = tokens.ready().await.expect("a token");
        assert_eq!(token.access_token().expose_secret(), "tokio-token");
        driver.shutdown().await;
    });
}
