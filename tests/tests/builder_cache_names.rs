//! Builders whose caches are named by `TokenKey::cache_name` share a
//! token only when they are for the same thing: two builders for different
//! authorities or scopes, on one cache directory or one real
//! `redis-server`, never adopt each other's token, and two for the same
//! key share one.

use std::time::Duration;

use freshtoken::cache::TokenCache;
use freshtoken::driver::Builder;
use freshtoken::manager::TokenKey;
use freshtoken::testing::LocalAuthority;
use freshtoken_tests::redis_server::RedisServer;

const WAIT: Duration = Duration::from_secs(20);

fn authority() -> LocalAuthority {
    LocalAuthority::builder()
        .client("svc", "s3cret")
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .unwrap()
}

/// The access token a builder with `cache` serves for `key` from
/// `authority`.
fn serve(authority: &LocalAuthority, key: &TokenKey, cache: impl TokenCache) -> String {
    let source = key
        .apply(authority.client_credentials("svc"))
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new()
        .cache(cache)
        .seed(1)
        .spawn_thread(source)
        .unwrap();
    let token = tokens
        .wait_ready(WAIT)
        .unwrap()
        .access_token()
        .expose_secret()
        .to_owned();
    driver.shutdown_blocking();
    token
}

fn key(authority: &LocalAuthority, scope: &str) -> TokenKey {
    TokenKey::new("svc")
        .with_token_url(authority.token_url())
        .with_scope(scope)
}

#[test]
fn builders_for_other_authorities_or_scopes_never_share_a_file_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (authority(), authority());
    let ka = key(&a, "read");
    let kb = key(&b, "read");
    let ta = serve(&a, &ka, ka.file_cache(dir.path()));
    let tb = serve(&b, &kb, kb.file_cache(dir.path()));
    assert_ne!(ta, tb, "the token of another authority was adopted");
    assert!(b.validate_access_token(&tb).is_ok());
    assert_eq!((a.request_count(), b.request_count()), (1, 1));

    // Another scope at the same authority: its own token.
    let kw = key(&a, "write");
    let tw = serve(&a, &kw, kw.file_cache(dir.path()));
    assert_ne!(tw, ta);
    assert_eq!(
        a.validate_access_token(&tw).unwrap().scope.as_deref(),
        Some("write")
    );
    assert_eq!(a.request_count(), 2);

    // The same key shares its entry: no request.
    assert_eq!(serve(&a, &ka, ka.file_cache(dir.path())), ta);
    assert_eq!(a.request_count(), 2);
}

#[test]
fn builders_for_other_authorities_or_scopes_never_share_a_redis_entry() {
    let redis = RedisServer::start_tcp();
    let (a, b) = (authority(), authority());
    let cache = |k: &TokenKey| redis.cache(&format!("ft:{}", k.cache_name()));
    let ka = key(&a, "read");
    let kb = key(&b, "read");
    let ta = serve(&a, &ka, cache(&ka));
    let tb = serve(&b, &kb, cache(&kb));
    assert_ne!(ta, tb, "the token of another authority was adopted");
    assert!(b.validate_access_token(&tb).is_ok());

    let kw = key(&a, "write");
    let tw = serve(&a, &kw, cache(&kw));
    assert_ne!(tw, ta);
    assert_eq!(
        a.validate_access_token(&tw).unwrap().scope.as_deref(),
        Some("write")
    );

    assert_eq!(serve(&a, &ka, cache(&ka)), ta);
    assert_eq!((a.request_count(), b.request_count()), (2, 1));
}
