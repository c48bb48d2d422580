//! The Redis cache's refusals and bounds, against a real `redis-server`:
//! plain text to other hosts, URL fragments, oversized values, records of a
//! newer format, and replica acknowledgements that do not come.

mod cache_support;

use std::time::Duration;

use cache_support::capture_logs;
use freshtoken::cache::LeaseOutcome;
use freshtoken::cache::{AsyncRedisCache, AsyncTokenCache, RedisCache, TokenCache};
use freshtoken::{AccessToken, CacheErrorKind, Clock, RefreshToken, SystemClock, Token};
use freshtoken_tests::assert_no_secret;
use freshtoken_tests::redis_server::{query, RedisCluster, RedisServer};

const SECRET: &str = "TOPSECRET-access-h4rd";
const REFRESH: &str = "TOPSECRET-refresh-h4rd";
const PASSWORD: &str = "TOPSECRET-password";

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

#[test]
fn plain_text_to_another_host_is_refused_unless_allowed() {
    // Nothing is sent anywhere: the URLs are refused (or accepted) when the
    // cache is built, before any connection. (A rediss:// cache needs the
    // application's rustls provider.)
    freshtoken_tests::install_crypto_provider();
    for url in [
        format!("redis://:{PASSWORD}@10.0.0.7:6379/"),
        "redis://cache.internal/".to_owned(),
        "redis://[2001:db8::1]:6379/".to_owned(),
    ] {
        let err = RedisCache::new(&url, "k").unwrap_err();
        assert_eq!(err.kind(), CacheErrorKind::Io);
        let text = format!("{err} {err:?}");
        assert!(text.contains("plain-text"), "{text}");
        assert_no_secret(&text);
        assert!(
            RedisCache::builder(&url, "k")
                .allow_plain_text(true)
                .build()
                .is_ok(),
            "allowed explicitly"
        );
    }
    #[cfg(unix)]
    let unix = Some("redis+unix:///tmp/none.sock");
    #[cfg(not(unix))]
    let unix: Option<&str> = None;
    // Loopback, a unix socket and TLS are fine.
    for url in [
        "redis://127.0.0.1:6379/",
        "redis://localhost/",
        "redis://[::1]:6379/",
        "redis://127.1.2.3/",
    ]
    .into_iter()
    .chain(unix)
    .chain(["rediss://cache.internal:6380/"])
    {
        assert!(RedisCache::new(url, "k").is_ok(), "{url}");
    }
    // The same rule for cluster nodes and Sentinels.
    let err = RedisCache::cluster(["redis://127.0.0.1:7000/", "redis://10.0.0.8:7001/"], "k")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("plain-text"), "{err}");
    let err = RedisCache::sentinel(["redis://10.0.0.9:26379/"], "svc", "k")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("plain-text"), "{err}");
}

/// A cluster reached through loopback seeds whose topology names its nodes
/// by a host that is not loopback: those nodes get no plain-text
/// connection (refused before any name is resolved) and the token goes
/// nowhere, for the blocking and the async cache. (The host is a name under
/// `.invalid`: no test here sends traffic off this machine.)
#[test]
fn cluster_nodes_learned_from_the_topology_are_held_to_the_plain_text_rule() {
    let host = "node.freshtoken.invalid";
    let cluster = RedisCluster::start_announcing(3, host);
    let urls = cluster.urls();
    assert!(urls.iter().all(|u| u.starts_with("redis://127.0.0.1:")));
    let key = "{plain}:token";
    let primary = cluster.primary_of(key);
    let stored = || query(primary, &["GET", key]).unwrap_or_default();

    let cache = RedisCache::cluster(&urls, key)
        .build()
        .expect("loopback seeds pass the rule");
    let (result, logs) = capture_logs(|| cache.store(&token()));
    let err = result.expect_err("a plain-text store to a node that is not loopback");
    let text = format!("{err} {err:?}");
    assert!(text.contains("plain-text"), "{text}");
    assert!(text.contains(host), "names the node: {text}");
    assert_no_secret(&text);
    logs.iter().for_each(|l| assert_no_secret(l));
    assert_eq!(stored(), "", "the token reached the cluster");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_cache = AsyncRedisCache::cluster(&urls, key)
        .build_async()
        .expect("loopback seeds pass the rule");
    let (result, logs) = capture_logs(|| runtime.block_on(async_cache.store(&token())));
    let err = result.expect_err("a plain-text store to a node that is not loopback");
    assert_no_secret(&format!("{err} {err:?}"));
    // The async cluster's error does not carry the cause; the warning does.
    assert!(
        logs.iter()
            .any(|l| l.contains("plain-text") && l.contains(host)),
        "{logs:?}"
    );
    logs.iter().for_each(|l| assert_no_secret(l));
    assert_eq!(stored(), "", "the token reached the cluster");
}

#[test]
fn a_url_fragment_is_refused() {
    for url in [
        format!("rediss://:{PASSWORD}@127.0.0.1:6380/#insecure"),
        "redis://127.0.0.1:6379/#x".to_owned(),
    ] {
        let err = RedisCache::new(&url, "k").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("fragment"), "{text}");
        assert_no_secret(&text);
        assert!(RedisCache::builder(&url, "k")
            .allow_plain_text(true)
            .build()
            .is_err());
    }
}

#[test]
fn an_oversized_value_is_a_miss_with_a_warning() {
    let server = RedisServer::start_tcp();
    let big = format!(
        r#"{{"version":1,"access_token":"{}"}}"#,
        "a".repeat(1024 * 1024)
    );
    redis::cmd("SET")
        .arg("test:token")
        .arg(&big)
        .query::<()>(&mut server.connection())
        .unwrap();
    let c = server.cache("test:token");
    let (loaded, logs) = capture_logs(|| c.load());
    assert_eq!(loaded.unwrap(), None);
    assert!(
        logs.iter()
            .any(|l| l.starts_with("WARN") && l.contains("larger than any record")),
        "{logs:?}"
    );
    // A store replaces it.
    let t = token();
    c.store(&t).unwrap();
    assert_eq!(c.load().unwrap(), Some(t));
}

#[test]
fn a_record_of_a_newer_version_is_unreadable_and_never_overwritten() {
    let server = RedisServer::start_tcp();
    let newer = r#"{"version":2,"access_token":"TOPSECRET-newer","sealed":"..."}"#;
    redis::cmd("SET")
        .arg("test:token")
        .arg(newer)
        .query::<()>(&mut server.connection())
        .unwrap();
    let c = server.cache("test:token");
    let err = c.load().unwrap_err();
    assert_eq!(err.kind(), CacheErrorKind::Unreadable, "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
    assert_no_secret(&format!("{err} {err:?}"));
    // Neither a token with a refresh token nor one without replaces it.
    let plain = Token::new(
        AccessToken::new(SECRET),
        SystemClock.now(),
        SystemClock.now() + Duration::from_secs(30),
        SystemClock.now() + Duration::from_secs(60),
    );
    for t in [token(), plain] {
        let err = c.store(&t).unwrap_err();
        assert_eq!(err.kind(), CacheErrorKind::Unreadable, "{err}");
        assert_no_secret(&format!("{err} {err:?}"));
    }
    let kept: String = redis::cmd("GET")
        .arg("test:token")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(kept, newer);
    // The lease is unaffected.
    assert_eq!(
        c.acquire_lease(Duration::from_secs(1)).unwrap(),
        LeaseOutcome::Granted
    );
}

#[test]
fn a_corrupt_entry_is_replaced_by_the_next_store() {
    let server = RedisServer::start_tcp();
    redis::cmd("SET")
        .arg("test:token")
        .arg("\u{0}garbage")
        .query::<()>(&mut server.connection())
        .unwrap();
    let c = server.cache("test:token");
    assert_eq!(c.load().unwrap(), None);
    let t = token();
    c.store(&t).unwrap();
    assert_eq!(c.load().unwrap(), Some(t));
}

#[test]
fn without_a_replica_acknowledgement_a_lease_and_a_rotated_store_fail() {
    // A server without replicas: WAIT 1 times out with 0 acknowledgements.
    let server = RedisServer::start_tcp();
    let c = RedisCache::builder(&server.url(), "test:token")
        .replica_acks(1, Duration::from_millis(50))
        .build()
        .unwrap();
    let (lease, logs) = capture_logs(|| c.acquire_lease(Duration::from_secs(10)));
    // Unavailable, not Busy: no peer holds it (the machine would wait on a
    // busy lease for as long as it stays busy).
    let err = lease.unwrap_err();
    assert_eq!(err.kind(), CacheErrorKind::Unavailable);
    assert!(err.to_string().contains("acknowledged"), "{err}");
    assert!(
        logs.iter().any(|l| l.contains("not acknowledged")),
        "{logs:?}"
    );
    // ...and the lease was given back, so another instance may take it.
    let lease: Option<String> = redis::cmd("GET")
        .arg("test:token:lease")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(lease, None);
    assert_eq!(
        server
            .cache("test:token")
            .acquire_lease(Duration::from_secs(10))
            .unwrap(),
        LeaseOutcome::Granted
    );

    let err = c.store(&token()).unwrap_err();
    assert_eq!(err.kind(), CacheErrorKind::Unavailable);
    assert!(err.to_string().contains("acknowledged"), "{err}");
    assert_no_secret(&format!("{err} {err:?}"));
    // A token without a refresh token needs no acknowledgement.
    let plain = Token::new(
        AccessToken::new(SECRET),
        SystemClock.now(),
        SystemClock.now() + Duration::from_secs(30),
        SystemClock.now() + Duration::from_secs(60),
    );
    c.store(&plain).unwrap();
}
