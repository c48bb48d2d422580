//! How a token's life is planned: when it goes stale
//! ([`LifetimePolicy`]), how much earlier each instance refreshes
//! ([`Jitter`]), and how failures are retried ([`Backoff`]). Set them on
//! the [`Builder`](crate::Builder).
//!
//! ```
//! use freshtoken::policy::{Backoff, Jitter, LifetimePolicy};
//! use freshtoken::Builder;
//! use std::time::Duration;
//!
//! let builder = Builder::new()
//!     .lifetime(LifetimePolicy::default())
//!     .jitter(Jitter::new(0.2))
//!     .backoff(Backoff::default());
//! # drop(builder);
//! ```

pub use freshtoken_core::{Backoff, Jitter, JitterStrategy, LifetimePolicy};
