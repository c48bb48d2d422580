//! End-to-end and cross-adapter tests for freshtoken; the tests live in `tests/`.

pub mod log_capture;
pub mod postgres_server;
pub mod redis_server;

/// Installs ring's rustls provider as the process-wide default, as an
/// application does at start-up before it builds a `rediss://` cache
/// (freshtoken never installs one; the redis crate's TLS needs it). One
/// already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Fails the test if `text` holds a test secret: every secret the tests
/// plant (tokens, passwords) starts with `TOPSECRET`.
pub fn assert_no_secret(text: &str) {
    assert!(!text.contains("TOPSECRET"), "secret leaked: {text}");
}
