//! The Redis cache against a real `redis-server` (started by each test on a
//! free loopback port or a unix socket; see `.ci/setup-redis.sh`).

mod cache_support;

use std::time::Duration;

use cache_support::capture_logs;
use freshtoken::cache::LeaseOutcome;
use freshtoken::cache::{record, CacheStack, MemoryCache, RedisCache, TokenCache};
use freshtoken::{AccessToken, CacheErrorKind, Clock, RefreshToken, SystemClock, Token};
use freshtoken_tests::assert_no_secret;
use freshtoken_tests::redis_server::RedisServer;

const SECRET: &str = "TOPSECRET-access-5d1e";
const REFRESH: &str = "TOPSECRET-refresh-0b7a";

/// A token valid for `life` from now, without a refresh token.
fn token(life: Duration) -> Token {
    let now = SystemClock.now();
    Token::new(AccessToken::new(SECRET), now, now + life / 2, now + life)
        .with_scope(Some("read".into()))
}

#[test]
fn round_trip_over_tcp_and_unix_socket() {
    for server in [RedisServer::start_tcp(), RedisServer::start_unix()] {
        let c = server.cache("test:token");
        assert_eq!(c.load().unwrap(), None);
        let t = token(Duration::from_secs(60)).with_refresh_token(Some(RefreshToken::new(REFRESH)));
        c.store(&t).unwrap();
        assert_eq!(c.load().unwrap(), Some(t.clone()), "{}", server.url());
        // Another instance sees it; the stored bytes are the shared record.
        assert_eq!(server.cache("test:token").load().unwrap(), Some(t.clone()));
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg("test:token")
            .query(&mut server.connection())
            .unwrap();
        assert_eq!(record::decode(&bytes).unwrap(), t);
    }
}

#[test]
fn the_key_lives_as_long_as_the_token() {
    let server = RedisServer::start_tcp();
    let c = server.cache("test:token");
    let mut conn = server.connection();
    let pttl = |conn: &mut redis::Connection| -> i64 {
        redis::cmd("PTTL").arg("test:token").query(conn).unwrap()
    };

    c.store(&token(Duration::from_secs(60))).unwrap();
    let ttl = pttl(&mut conn);
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");

    // With a refresh token: kept without a TTL (the refresh token outlives it).
    c.store(&token(Duration::from_secs(60)).with_refresh_token(Some(RefreshToken::new(REFRESH))))
        .unwrap();
    assert_eq!(pttl(&mut conn), -1);

    // A short-lived token disappears when it expires.
    c.store(&token(Duration::from_millis(300))).unwrap();
    assert!(c.load().unwrap().is_some());
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(c.load().unwrap(), None);
}

#[test]
fn the_lease_is_exclusive_and_only_its_holder_releases_it() {
    let server = RedisServer::start_unix();
    let (a, b) = (server.cache("test:token"), server.cache("test:token"));
    let ttl = Duration::from_secs(30);

    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
    assert_eq!(
        a.acquire_lease(ttl).unwrap(),
        LeaseOutcome::Granted,
        "own lease re-taken"
    );
    b.release_lease().unwrap();
    assert_eq!(
        b.acquire_lease(ttl).unwrap(),
        LeaseOutcome::Busy,
        "b deleted a's lease"
    );
    a.release_lease().unwrap();
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);

    // The lease key carries a TTL (SET NX PX).
    let pttl: i64 = redis::cmd("PTTL")
        .arg(b.lease_key())
        .query(&mut server.connection())
        .unwrap();
    assert!(pttl > 0 && pttl <= 30_000, "PTTL {pttl}");
}

#[test]
fn a_holder_that_never_releases_is_taken_over_after_the_ttl() {
    let server = RedisServer::start_tcp();
    let (dead, live, third) = (
        server.cache("test:token"),
        server.cache("test:token"),
        server.cache("test:token"),
    );
    // `dead` takes a short lease and is never heard from again.
    assert_eq!(
        dead.acquire_lease(Duration::from_millis(300)).unwrap(),
        LeaseOutcome::Granted
    );
    assert_eq!(
        live.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Busy
    );
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(
        live.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Granted
    );
    // The late release of the dead holder must not free the new holder's lease.
    dead.release_lease().unwrap();
    assert_eq!(
        third.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Busy
    );
}

#[test]
fn redis_stopped_midway_is_unavailable_then_recovers() {
    let mut server = RedisServer::start_tcp();
    let c = server.cache("test:token");
    let t = token(Duration::from_secs(60));
    c.store(&t).unwrap();
    assert_eq!(c.load().unwrap(), Some(t.clone()));

    server.stop();
    let (results, logs) = capture_logs(|| {
        [
            c.load().map(|_| ()),
            c.store(&t),
            c.acquire_lease(Duration::from_secs(1)).map(|_| ()),
            c.load().map(|_| ()),
        ]
    });
    for r in &results {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
        assert_no_secret(&e.to_string());
    }
    println!("{results:?}\n{logs:?}");
    let warnings: Vec<_> = logs.iter().filter(|l| l.starts_with("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning per outage: {logs:?}");
    logs.iter().for_each(|l| assert_no_secret(l));

    // Back (empty: the server keeps no data): the same cache value reconnects.
    server.restart();
    let (_, logs) = capture_logs(|| {
        assert_eq!(c.load().unwrap(), None);
        c.store(&t).unwrap();
        assert_eq!(c.load().unwrap(), Some(t.clone()));
        assert_eq!(
            c.acquire_lease(Duration::from_secs(1)).unwrap(),
            LeaseOutcome::Granted
        );
    });
    assert!(
        logs.iter().any(|l| l.contains("reachable again")),
        "{logs:?}"
    );
}

#[test]
fn a_stack_keeps_serving_from_memory_while_redis_is_down() {
    let mut server = RedisServer::start_tcp();
    let memory = MemoryCache::new();
    let stack = CacheStack::new()
        .with(memory.clone())
        .with(server.cache("test:token"));
    let t = token(Duration::from_secs(60));
    stack.store(&t).unwrap();

    server.stop();
    assert_eq!(stack.load().unwrap(), Some(t.clone()));
    // The store reports Redis's failure but still reaches memory.
    let newer = token(Duration::from_secs(120));
    assert_eq!(
        stack.store(&newer).unwrap_err().kind(),
        CacheErrorKind::Unavailable
    );
    assert_eq!(memory.load().unwrap(), Some(newer.clone()));
    // With Redis down the lease fails with Redis's error: a process-local
    // lease from the layer above would keep no other process from fetching
    // (the machine fetches anyway in a client-credentials flow, and waits
    // in a refresh-token flow).
    assert_eq!(
        stack
            .acquire_lease(Duration::from_secs(5))
            .unwrap_err()
            .kind(),
        CacheErrorKind::Unavailable
    );
    stack.release_lease().unwrap();

    // A token only Redis has (another instance's) is found and written back.
    server.restart();
    let other = server.cache("test:token");
    let theirs = token(Duration::from_secs(600));
    other.store(&theirs).unwrap();
    let stale_local = Token::new(
        AccessToken::new("stale"),
        SystemClock.now() - Duration::from_secs(50),
        SystemClock.now() - Duration::from_secs(10),
        SystemClock.now() + Duration::from_secs(10),
    );
    memory.store(&stale_local).unwrap();
    assert_eq!(stack.load().unwrap(), Some(theirs.clone()));
    assert_eq!(memory.load().unwrap(), Some(theirs));
    // And the lease is Redis's again: another instance is kept out.
    assert_eq!(
        stack.acquire_lease(Duration::from_secs(5)).unwrap(),
        LeaseOutcome::Granted
    );
    assert_eq!(
        other.acquire_lease(Duration::from_secs(5)).unwrap(),
        LeaseOutcome::Busy
    );
    stack.release_lease().unwrap();
    assert_eq!(
        other.acquire_lease(Duration::from_secs(5)).unwrap(),
        LeaseOutcome::Granted
    );
}

#[test]
fn a_corrupt_entry_is_a_miss_with_a_warning() {
    let server = RedisServer::start_tcp();
    let c = server.cache("test:token");
    let _: () = redis::cmd("SET")
        .arg("test:token")
        .arg(r#"{"version":1,"access_token":"TOPSECRET-x","issued_at_ms":"oops"}"#)
        .query(&mut server.connection())
        .unwrap();
    let (loaded, logs) = capture_logs(|| c.load());
    assert_eq!(loaded.unwrap(), None);
    assert!(
        logs.iter()
            .any(|l| l.starts_with("WARN") && l.contains("test:token")),
        "{logs:?}"
    );
    logs.iter().for_each(|l| assert_no_secret(l));
}

#[test]
fn no_password_or_token_in_debug_or_errors() {
    let server = RedisServer::start_tcp();
    // The server has no password, so AUTH fails: the error must not echo it.
    let url = server
        .url()
        .replace("redis://", "redis://:TOPSECRET-password@");
    let c = RedisCache::new(&url, "test:token").unwrap();
    assert_no_secret(&format!("{c:?}"));
    let (result, logs) = capture_logs(|| c.store(&token(Duration::from_secs(60))));
    let err = result.unwrap_err();
    println!("wrong password: {err}");
    assert_no_secret(&format!("{err} {err:?} {logs:?} {c:?}"));

    // A malformed URL is rejected without quoting it.
    let err = RedisCache::new("redis://:TOPSECRET@[::1", "k").unwrap_err();
    assert_no_secret(&format!("{err} {err:?}"));

    let ok = server.cache("test:token");
    ok.store(&token(Duration::from_secs(60))).unwrap();
    assert_no_secret(&format!("{ok:?} {:?}", ok.load().unwrap()));
}

#[test]
fn rediss_with_a_private_ca() {
    freshtoken_tests::install_crypto_provider();
    let server = RedisServer::start_tls();
    assert!(server.url().starts_with("rediss://"));
    let c = RedisCache::with_root_certificate(&server.url(), "test:token", &server.ca_pem())
        .unwrap()
        .with_connect_timeout(Duration::from_secs(2));
    let t = token(Duration::from_secs(60));
    c.store(&t).unwrap();
    assert_eq!(c.load().unwrap(), Some(t));
    assert_eq!(
        c.acquire_lease(Duration::from_secs(5)).unwrap(),
        LeaseOutcome::Granted
    );
    c.release_lease().unwrap();

    // Without the CA (webpki roots only) the server is not trusted: an error, no panic.
    let untrusting = RedisCache::new(&server.url(), "test:token")
        .unwrap()
        .with_connect_timeout(Duration::from_secs(2));
    let err = untrusting.load().unwrap_err();
    println!("untrusted server: {err}");
    assert_no_secret(&err.to_string());
}
