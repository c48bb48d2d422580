//! End-to-end and cross-adapter tests for freshtoken; the tests live in `tests/`.

pub mod log_capture;
pub mod postgres_server;
pub mod redis_server;

/// Fails the test if `text` holds a test secret: every secret the tests
/// plant (tokens, passwords) starts with `TOPSECRET`.
pub fn assert_no_secret(text: &str) {
    assert!(!text.contains("TOPSECRET"), "secret leaked: {text}");
}
