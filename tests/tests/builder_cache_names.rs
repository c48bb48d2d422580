//! Builders whose caches are named by `TokenKey::cache_name` share a
//! token only when they are for the same thing: two builders for different
//! authorities or scopes, on one cache directory or one real
//! `redis-server`, never adopt each other's token, and two for the same
//! key share one.
//!
//! And when a hand-made name is shared by two configurations (the case a
//! derived name cannot catch), the records say what they were made for:
//! neither builder adopts the other's token, on a file, a Redis key (sealed
//! too, and through the async driver) or a PostgreSQL row.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use freshtoken::cache::{EncryptionKeys, FileCache, PostgresCache, TokenCache};
use freshtoken::driver::Builder;
use freshtoken::manager::TokenKey;
use freshtoken::oauth2::{ClientCredentials, SourceBuilder};
use freshtoken::runtime::Tokio;
use freshtoken::testing::LocalAuthority;
use freshtoken_tests::log_capture::Capture;
use freshtoken_tests::postgres_server::PostgresServer;
use freshtoken_tests::redis_server::RedisServer;

const WAIT: Duration = Duration::from_secs(20);

fn authority() -> LocalAuthority {
    LocalAuthority::builder()
        .client("svc", "s3cret")
        .client("other", "0ther-s3cret")
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

/// Everything the drivers of this test binary log (the warnings of the
/// caches come from the drivers' threads).
fn log() -> &'static Arc<Mutex<String>> {
    static LOG: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(String::new()));
        tracing::subscriber::set_global_default(Capture(log.clone())).expect("first subscriber");
        log
    })
}

/// The access token a builder with `cache` serves from `source`.
fn serve_source(source: SourceBuilder<ClientCredentials>, cache: impl TokenCache) -> String {
    let (tokens, driver) = Builder::new()
        .cache(cache)
        .seed(1)
        .spawn_thread(source.build().unwrap())
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

/// Two configurations of one authority (another scope, another client)
/// take turns on one hand-made cache entry: each is served a token of its
/// own, every time, and the turn is a warning naming the entry.
fn take_turns(a: &LocalAuthority, cache: &dyn Fn() -> Box<dyn TokenCache>, entry: &str) {
    let read = || a.client_credentials("svc").scope("read");
    let write = || a.client_credentials("svc").scope("write");
    let other = || a.client_credentials("other").scope("read");
    let first = a.request_count();

    let tr = serve_source(read(), cache());
    assert_eq!(
        a.validate_access_token(&tr).unwrap().scope.as_deref(),
        Some("read")
    );
    // The same configuration adopts its own record: no request.
    assert_eq!(serve_source(read(), cache()), tr);
    assert_eq!(a.request_count(), first + 1);

    let tw = serve_source(write(), cache());
    let info = a.validate_access_token(&tw).unwrap();
    assert_eq!(
        info.scope.as_deref(),
        Some("write"),
        "the read token was adopted"
    );
    let to = serve_source(other(), cache());
    assert_eq!(a.validate_access_token(&to).unwrap().client_id, "other");
    // The entry now holds the other client's token: read fetches again.
    let tr2 = serve_source(read(), cache());
    assert_ne!(tr2, to);
    assert_eq!(
        a.validate_access_token(&tr2).unwrap().scope.as_deref(),
        Some("read")
    );
    assert_eq!(a.request_count(), first + 4);

    let log = log().lock().unwrap().clone();
    let warned = log
        .lines()
        .filter(|l| l.contains("another configuration") && l.contains(entry))
        .count();
    assert!(warned >= 3, "{warned} warnings for {entry}:\n{log}");
    for secret in ["s3cret", &tr, &tw, &to, &tr2] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}

#[test]
fn builders_sharing_a_hand_made_file_name_never_adopt_each_others_token() {
    log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let a = authority();
    take_turns(&a, &|| Box::new(FileCache::new(&path)), "shared.json");
    // The other configuration's record is left in place, not moved aside
    // as a corrupt one would be.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".corrupt-")), "{names:?}");
}

#[test]
fn builders_sharing_a_hand_made_redis_key_never_adopt_each_others_token() {
    log();
    let redis = RedisServer::start_tcp();
    let a = authority();
    take_turns(
        &a,
        &|| Box::new(redis.cache("ft:shared-plain")),
        "ft:shared-plain",
    );
    let keys = EncryptionKeys::new("k", [7u8; 32]).unwrap();
    take_turns(
        &a,
        &|| Box::new(redis.cache("ft:shared-sealed").encryption(keys.clone())),
        "ft:shared-sealed",
    );
}

#[test]
fn builders_sharing_a_hand_made_postgres_row_never_adopt_each_others_token() {
    log();
    let server = PostgresServer::start();
    let a = authority();
    take_turns(
        &a,
        &|| Box::new(PostgresCache::new(&server.conn_str(), "pg-shared").unwrap()),
        "pg-shared",
    );
}

#[test]
fn async_drivers_bind_their_async_cache_too() {
    log();
    let redis = RedisServer::start_tcp();
    let a = authority();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let serve = |scope: &str| {
        let source = a.client_credentials("svc").scope(scope).build().unwrap();
        rt.block_on(async {
            let (tokens, driver) = Builder::new()
                .async_cache(redis.async_cache("ft:shared-async"))
                .spawn(Tokio::current().unwrap(), source);
            let token = tokens
                .ready()
                .await
                .unwrap()
                .access_token()
                .expose_secret()
                .to_owned();
            drop(tokens);
            driver.shutdown().await;
            token
        })
    };
    let tr = serve("read");
    let tw = serve("write");
    assert_eq!(
        a.validate_access_token(&tw).unwrap().scope.as_deref(),
        Some("write")
    );
    assert_ne!(tr, tw);
    assert_eq!(a.request_count(), 2);
}

/// The access token a builder whose cache is named by `Builder::cache_for`
/// in `dir` serves for `scope` from `authority`.
fn serve_named(authority: &LocalAuthority, scope: &str, dir: &std::path::Path) -> String {
    let dir = dir.to_owned();
    let source = authority
        .client_credentials("svc")
        .scope(scope)
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new()
        .cache_for(move |key| key.file_cache(&dir))
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

#[test]
fn a_cache_set_without_a_name_is_named_after_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (authority(), authority());
    let read = serve_named(&a, "read", dir.path());
    let write = serve_named(&a, "write", dir.path());
    let other = serve_named(&b, "read", dir.path());
    assert_eq!(
        a.validate_access_token(&write).unwrap().scope.as_deref(),
        Some("write")
    );
    assert!(b.validate_access_token(&other).is_ok());
    // The same configuration shares its entry: no request.
    assert_eq!(serve_named(&a, "read", dir.path()), read);
    assert_eq!((a.request_count(), b.request_count()), (2, 1));

    // One file per configuration, each named by its key's cache name.
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = [(&a, "read"), (&a, "write"), (&b, "read")]
        .iter()
        .map(|(auth, scope)| format!("{}.json", key(auth, scope).cache_name()))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
}

#[test]
fn a_cache_named_after_a_source_that_cannot_say_is_none_not_a_failure() {
    log();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().to_owned();
    let source = freshtoken::source::ConstTokenSource::new("api-key", Some(3600));
    let (tokens, driver) = Builder::new()
        .name("unnamed-cache")
        .cache_for(move |key| key.file_cache(&cache_dir))
        .spawn_thread(source)
        .unwrap();
    assert!(tokens.wait_ready(WAIT).is_ok());
    driver.shutdown_blocking();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let log = log().lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("unnamed-cache") && l.contains("without the shared cache")),
        "{log}"
    );

    // Given the key by hand, the same builder has its cache.
    let cache_dir = dir.path().to_owned();
    let by_hand = TokenKey::new("api");
    let (tokens, driver) = Builder::new()
        .cache_config(&by_hand)
        .cache_for(move |key| key.file_cache(&cache_dir))
        .spawn_thread(freshtoken::source::ConstTokenSource::new(
            "api-key",
            Some(3600),
        ))
        .unwrap();
    assert!(tokens.wait_ready(WAIT).is_ok());
    driver.shutdown_blocking();
    let path = dir.path().join(format!("{}.json", by_hand.cache_name()));
    eventually_exists(&path);
}

/// Stores follow publication: wait (without timing assertions) for the file.
fn eventually_exists(path: &std::path::Path) {
    let give_up = std::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < give_up,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
