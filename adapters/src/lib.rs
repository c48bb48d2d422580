//! freshtoken keeps OAuth2 access tokens fresh in the background, so the code
//! that calls your APIs only asks for the current token and never stalls or
//! fails because a token expired or the authority had a bad minute.
//!
//! # Client credentials, in a service
//!
//! A [`ClientCredentials`](oauth2::ClientCredentials) source asks the
//! authority; a driver ([`Builder::spawn`] on a [`Runtime`](runtime::Runtime),
//! or [`Builder::spawn_thread`]) keeps its token fresh; your code reads the
//! current token from a [`TokenHandle`] (`features = ["tokio", "oauth2"]`):
//!
//! ```no_run
//! # #[cfg(all(feature = "tokio", feature = "oauth2"))]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use freshtoken::oauth2::ClientCredentials;
//! use freshtoken::runtime::Tokio;
//! use freshtoken::Builder;
//!
//! let secret = std::env::var("CLIENT_SECRET")?;
//! let source = ClientCredentials::builder("https://login.example.com/oauth2/token", "my-app", secret)
//!     .audience("https://api.example.com")
//!     .build()?;
//! let (tokens, driver) = Builder::new().spawn(Tokio::current()?, source);
//! let token = tokens.ready().await?; // the first token, or why there is none
//! let header = token.authorization_header(); // "Bearer eyJ..."
//! # drop(header); drop(token);
//! driver.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! A plain thread does the same for a sync application:
//!
//! ```
//! use freshtoken::source::ConstTokenSource;
//! use freshtoken::Builder;
//! use std::time::Duration;
//!
//! let (tokens, driver) = Builder::new()
//!     .spawn_thread(ConstTokenSource::new("api-key", Some(3600)))
//!     .expect("a thread");
//! let token = tokens.wait_ready(Duration::from_secs(5)).expect("a token");
//! assert_eq!(token.authorization_header(), "Bearer api-key");
//! drop(token);
//! driver.shutdown_blocking();
//! ```
//!
//! # The model in a page
//!
//! Three kinds of part meet around one state machine:
//!
//! * **The machine** ([`proto::RefreshMachine`], from `freshtoken-core`,
//!   re-exported as [`proto`]) decides *when*: when a token is stale,
//!   whether a cached token is good enough, whether to wait for a peer
//!   holding the cache's lease, how long to back off after a failure. It
//!   performs no I/O and reads no clock; every input carries `now` and
//!   every side effect leaves it as an action.
//! * **A driver** ([`driver`]) decides *how*: it carries out the actions
//!   (on a plain thread, or on a [`runtime`]: tokio, smol, async-std),
//!   feeds the results back, and sleeps until the machine's next deadline,
//!   never longer than a heartbeat so that clock jumps and suspends are
//!   noticed.
//! * **Sources and caches** do the I/O: a [`source::TokenSource`] asks the
//!   authority ([`oauth2`] has client credentials, refresh tokens, JWT
//!   assertions, token exchange); a [`cache::TokenCache`] shares tokens
//!   between instances ([`cache`] has memory, file, Redis and PostgreSQL
//!   caches, and stacks of them) and offers a lease so one instance at a
//!   time asks the authority.
//!
//! Applications read through a [`TokenHandle`]: `token()` is a lock-free
//! load that never blocks the refresher, `valid_token()` says why there is
//! no token when there is none, [`TokenHandle::watch`] wakes on every
//! publication, and `invalidate()` reports a 401 (the [`middleware`] for
//! tower, reqwest, ureq and tonic does that for you).
//!
//! # Modules
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`driver`] | [`Builder`], [`DriverHandle`]; the parts a driver of your own needs |
//! | [`runtime`] | the [`Runtime`](runtime::Runtime) trait and its tokio, smol and async-std values |
//! | [`handle`] | [`TokenHandle`] and what it gives out: snapshots, readers, watches |
//! | [`source`] | the source traits and simple sources |
//! | [`oauth2`] | OAuth2 sources over ureq and rustls, or over your own reqwest or hyper client |
//! | [`cache`] | the cache traits and caches |
//! | [`policy`] | lifetime, jitter and backoff policies |
//! | [`clock`] | the system clock and a manual one for tests |
//! | [`manager`] | [`TokenManager`](manager::TokenManager): many tokens per process |
//! | [`middleware`] | HTTP-client middleware: the token on every request, one replay after a 401 |
//! | [`testing`] | a local OAuth2 authority with a fault plan |
//! | [`sim`] | the deterministic fleet simulator |
//! | [`proto`] | the sans-IO machine, for driver authors and tests |
//!
//! # Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `blocking` (default) | the thread driver, [`Builder::spawn_thread`] |
//! | `tokio` | [`runtime::Tokio`] for [`Builder::spawn`] |
//! | `smol` | [`runtime::Smol`], on smol's own executor, timers and blocking pool |
//! | `async-std` | [`runtime::AsyncStd`] (async-std is discontinued upstream; prefer `smol`) |
//! | `oauth2` | client-credentials, refresh-token, JWT-bearer and token-exchange sources over ureq and rustls (`oauth2-sources` and `ureq-transport`) |
//! | `oauth2-sources` | the same sources without an HTTP client: bring a transport |
//! | `reqwest-transport` | `oauth2::ReqwestTransport`: the sources, async, over your reqwest 0.13 and its TLS |
//! | `hyper-transport` | `oauth2::HyperTransport`: the sources, async, over your hyper-util legacy client and connector |
//! | `cloud` | sources for the clouds' identity endpoints: [`source::GcpMetadata`], [`source::AzureManagedIdentity`], [`source::AppServiceIdentity`] |
//! | `file` | [`cache::FileCache`]: atomic writes, a cross-process lease; [`source::FileSource`]: a token another process writes |
//! | `platform-verifier` | `oauth2::UreqTransport::platform_verifier`: the system's trust store |
//! | `redis` / `redis-tls` | [`cache::RedisCache`]: `SET NX PX` lease; `rediss://` |
//! | `redis-cluster` / `redis-sentinel` | [`cache::RedisCache`] over a Redis Cluster or Sentinel |
//! | `redis-tokio` / `redis-smol` | [`cache::AsyncRedisCache`] |
//! | `postgres` | [`cache::PostgresCache`]: a row per key, a lease row, TLS with rustls |
//! | `encryption` | [`cache::EncryptionKeys`]: XChaCha20-Poly1305 at rest for the file, Redis and PostgreSQL caches |
//! | `testing` | [`testing::LocalAuthority`], a real OAuth2 server on loopback with a fault plan |
//! | `sim` | the deterministic fleet simulator, [`sim`] |
//! | `tower` | [`middleware::tower::AuthLayer`] |
//! | `reqwest-middleware` | [`middleware::reqwest::AuthMiddleware`] |
//! | `ureq-middleware` | [`middleware::ureq::AuthHeader`], [`middleware::ureq::AuthAgent`] |
//! | `tonic` | [`middleware::tonic::AuthInterceptor`] |
//! | `metrics` | counters, gauges and a histogram of every driver through the `metrics` facade (any exporter); see [`metrics`] |
//!
//! On docs.rs (`--cfg docsrs`, `doc_cfg`), every feature-gated item shows its
//! feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Without a driver feature the crate still offers its sources, caches and
// handle types, but nothing spawns a refresher (nor feeds the metrics).
#![cfg_attr(
    not(any(
        feature = "blocking",
        feature = "tokio",
        feature = "async-std",
        feature = "smol"
    )),
    allow(dead_code, unused_imports)
)]

/// The sans-IO core (`freshtoken-core`): the [`RefreshMachine`](proto::RefreshMachine),
/// its inputs and actions, the policies and the simulator. Applications do
/// not need it; drivers of your own and tests do.
///
/// How its protocol evolves: while freshtoken is 0.x, a minor version may
/// add an [`Action`](proto::Action) or an [`Input`](proto::Input), or a
/// field to one (0.1's successors added `Input::Released`, the answer to
/// `Action::ReleaseLease`, and the `timeout` every request action carries),
/// and says so in its notes; the enums stay exhaustive, so that a driver
/// that no longer answers every request fails to compile rather than
/// leave the machine waiting. Applications, which only read tokens, never
/// see these changes.
pub use freshtoken_core as proto;

pub mod cache;
pub mod clock;
pub mod driver;
pub mod handle;
mod key;
#[cfg(any(
    feature = "blocking",
    feature = "tokio",
    feature = "async-std",
    feature = "smol"
))]
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
#[cfg(feature = "oauth2-sources")]
pub mod oauth2;
pub mod policy;
// Opening token and assertion files without blocking on a FIFO.
#[cfg(any(feature = "file", feature = "oauth2-sources", feature = "encryption"))]
mod regular_file;
#[cfg(any(feature = "tokio", feature = "async-std", feature = "smol"))]
pub mod runtime;
pub mod source;
// The poison-tolerant lock shared by the caches, the manager and the sources.
mod sync;
#[cfg(feature = "testing")]
pub mod testing;

/// The deterministic fleet simulator, from `freshtoken-core`.
#[cfg(feature = "sim")]
pub use freshtoken_core::sim;

pub use clock::{Clock, ManualClock, SystemClock};
pub use driver::{Builder, DriverHandle};
pub use freshtoken_core::{
    AccessToken, Assertion, CacheError, CacheErrorKind, ClientSecret, FetchError, FetchErrorKind,
    IdToken, RefreshToken, Timestamp, Token, TokenId, TokenStatus,
};
pub use handle::{NoValidToken, TokenHandle, TokenRef};
pub use key::TokenKey;

// The README's examples are compiled (and the runnable ones run) as doc tests.
// The package's README.md (the repository's, through a symbolic link that
// `cargo package` turns into a file), so a test built from the published
// package finds it too.
#[cfg(all(doctest, feature = "tokio", feature = "oauth2", feature = "file"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
