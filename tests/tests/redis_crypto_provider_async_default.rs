//! With no process-wide rustls crypto provider, the async Redis cache
//! installs ring's (which the `redis-tls` feature brings), as the blocking
//! one does, so `rediss://` works without set-up. Its own test binary: the
//! provider is process-wide.

use freshtoken::cache::AsyncRedisCache;
use rustls::crypto::CryptoProvider;

#[test]
fn ring_is_installed_when_none_is() {
    assert!(CryptoProvider::get_default().is_none());
    let _cache = AsyncRedisCache::new("rediss://127.0.0.1:6380/", "k").unwrap();
    let installed = CryptoProvider::get_default().expect("a provider");
    assert_eq!(
        installed.cipher_suites.len(),
        rustls::crypto::ring::default_provider().cipher_suites.len()
    );
}
