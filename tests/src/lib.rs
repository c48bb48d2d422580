//! End-to-end and cross-adapter tests for freshtoken; the tests live in `tests/`.

pub mod log_capture;
pub mod postgres_server;
pub mod redis_server;
