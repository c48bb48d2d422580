//! freshtoken keeps OAuth2 access tokens fresh in the background, so the code
//! that calls your APIs only asks for the current token and never stalls or
//! fails because a token expired or the authority had a bad minute.
//!
//! # The model in a page
//!
//! Three kinds of part meet around one state machine:
//!
//! * **The machine** ([`RefreshMachine`], from [`freshtoken_core`]) decides
//!   *when*: when a token is stale, whether a cached token is good enough,
//!   whether to wait for a peer holding the cache's lease, how long to back
//!   off after a failure. It performs no I/O and reads no clock; every input
//!   carries `now` and every side effect leaves it as an [`Action`].
//! * **A driver** ([`driver`]) decides *how*: it carries out the actions
//!   (on a plain thread, on tokio, on async-std or smol), feeds the results
//!   back, and sleeps until the machine's next deadline, never longer than a
//!   heartbeat so that clock jumps and suspends are noticed.
//! * **Sources and caches** do the I/O: a [`source::TokenSource`] asks the
//!   authority ([`oauth2::ClientCredentials`], [`oauth2::RefreshTokenSource`],
//!   a constant, a closure); a [`cache::TokenCache`] shares tokens between
//!   instances ([`cache::MemoryCache`], `cache::FileCache`, `cache::RedisCache`,
//!   [`cache::CacheStack`]) and offers a lease so one instance at a time asks
//!   the authority. Their async twins, [`source::AsyncTokenSource`] and
//!   [`cache::AsyncTokenCache`], are polled by the async drivers in their
//!   own task.
//!
//! Applications read through a [`TokenHandle`]: `token()` is a lock-free load
//! that never blocks the refresher, `valid_token()` says why there is no
//! token when there is none, `changed()` / `wait_changed()` wake on every
//! publication, and `invalidate()` reports a 401.
//!
//! ```
//! use freshtoken::driver::Builder;
//! use freshtoken::source::ConstTokenSource;
//! use std::time::Duration;
//!
//! // A plain thread keeps the token fresh; any thread reads it.
//! let (tokens, driver) = Builder::new()
//!     .spawn_thread(ConstTokenSource::new("api-key", Some(3600)))
//!     .expect("a thread");
//! let token = tokens.wait_ready(Duration::from_secs(5)).expect("a token");
//! assert_eq!(token.authorization_header(), "Bearer api-key");
//! drop(token);
//! driver.shutdown_blocking();
//! ```
//!
//! # Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `blocking` (default) | the thread driver, [`driver::Builder::spawn_thread`] |
//! | `tokio` | the tokio driver (`spawn_tokio`, `spawn_tokio_async`) |
//! | `async-std` | the async-std driver, which also serves smol |
//! | `oauth2` | client-credentials and refresh-token sources over ureq and rustls |
//! | `file` | `cache::FileCache`: atomic writes, a cross-process lease |
//! | `redis` / `redis-tls` | `cache::RedisCache`: `SET NX PX` lease; `rediss://` |
//! | `postgres` | `cache::PostgresCache`: a row per key, a lease row, TLS with rustls |
//! | `encryption` | XChaCha20-Poly1305 at rest for the file, Redis and PostgreSQL caches |
//! | `testing` | `testing::LocalAuthority`, a real OAuth2 server on loopback with a fault plan |
//! | `sim` | the deterministic fleet simulator, `sim` |
//! | `tower` | `middleware::tower::AuthLayer`: the token on every request, one replay after a 401 |
//! | `reqwest-middleware` | `middleware::reqwest::AuthMiddleware`, the same for reqwest |
//! | `ureq-middleware` | `middleware::ureq::{AuthHeader, AuthAgent}`, the same for ureq 3 |
//! | `tonic` | `middleware::tonic::AuthInterceptor`: `authorization` metadata, one replay on UNAUTHENTICATED |
//! | `metrics` | counters, gauges and a histogram of every driver through the `metrics` facade (any exporter); see `metrics` |
//!
//! Always there: `manager::TokenManager`, one refresher per audience, scope
//! or resource, stopped when idle (with any driver feature).
#![warn(missing_docs)]

pub use freshtoken_core::*;

pub mod cache;
pub mod clock;
#[cfg(any(feature = "blocking", feature = "tokio", feature = "async-std"))]
pub mod driver;
#[cfg(any(feature = "blocking", feature = "tokio", feature = "async-std"))]
pub mod manager;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(any(
    feature = "tower",
    feature = "reqwest-middleware",
    feature = "ureq-middleware",
    feature = "tonic"
))]
pub mod middleware;
// Without the feature the module still gives the drivers their tracing
// spans and warning hints; its metric parts are no-ops.
#[cfg(not(feature = "metrics"))]
#[allow(dead_code, unused_imports)]
mod metrics;
#[cfg(feature = "oauth2")]
pub mod oauth2;
pub mod source;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::SystemClock;

// The README's examples are compiled (and the runnable ones run) as doc tests.
#[cfg(all(doctest, feature = "tokio", feature = "oauth2", feature = "file"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
