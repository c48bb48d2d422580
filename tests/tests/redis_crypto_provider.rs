//! The Redis caches (blocking and async) never replace the application's process-wide rustls
//! crypto provider, and install ring's only when there is none. Its own
//! test binary: the provider is process-wide state.

use std::sync::Arc;

use freshtoken::cache::{AsyncRedisCache, RedisCache};
use rustls::crypto::CryptoProvider;

#[test]
fn the_applications_provider_is_kept() {
    // The application's choice: ring with a single cipher suite, so that
    // it is recognisably not the default one.
    let mut ours = rustls::crypto::ring::default_provider();
    ours.cipher_suites.truncate(1);
    ours.install_default().expect("no provider installed yet");
    let installed = CryptoProvider::get_default().expect("installed").clone();

    for url in ["rediss://127.0.0.1:6380/", "redis://127.0.0.1:6379/"] {
        let _cache = RedisCache::new(url, "k").unwrap();
    }
    let _cluster = RedisCache::cluster(["rediss://127.0.0.1:7000/"], "k")
        .build()
        .unwrap();
    // The async cache follows the same rule (one shared check).
    let _async = AsyncRedisCache::new("rediss://127.0.0.1:6380/", "k").unwrap();
    let _async_cluster = AsyncRedisCache::cluster(["rediss://127.0.0.1:7000/"], "k")
        .build_async()
        .unwrap();
    let after = CryptoProvider::get_default().expect("still installed");
    assert!(Arc::ptr_eq(&installed, after), "the provider was replaced");
    assert_eq!(after.cipher_suites.len(), 1);
}
