//! freshtoken keeps OAuth2 access tokens fresh in the background.
//!
//! This crate is what applications depend on. It re-exports the sans-IO core
//! ([`freshtoken_core`]) and adds what touches the outside world, each behind
//! a cargo feature: drivers, OAuth2 sources, caches and a local test authority.
#![warn(missing_docs)]

pub use freshtoken_core::*;

pub mod cache;
pub mod clock;
#[cfg(any(feature = "blocking", feature = "tokio", feature = "async-std"))]
pub mod driver;
#[cfg(feature = "oauth2")]
pub mod oauth2;
pub mod source;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::SystemClock;
