//! Where tokens are shared: caches and their leases.
//!
//! A cache lets instances that cannot talk to each other (processes on one
//! machine, a fleet of serverless functions) share one token, so the
//! authority sees one request per refresh period rather than one per
//! instance. An optional lease says "I am fetching, wait for me"; it has a
//! TTL so a crashed holder does not block the others for long.
//!
//! A cache failure never stops refreshing: the machine treats a failed load
//! as a miss and a failed store as a warning (availability beats load).
//!
//! The caches:
//!
//! * [`MemoryCache`]: in this process; the fast first layer of a stack.
//! * `FileCache` (feature `file`): one file shared by the processes of a
//!   machine; atomic writes, a lease in a sidecar lock file.
//! * `RedisCache` (feature `redis`, `rediss://` with `redis-tls`): shared by
//!   a fleet; `SET NX PX` lease with a compare-and-delete release.
//! * [`CacheStack`]: several of them checked in order, with write-back.
//!
//! The file and Redis caches share one versioned JSON format, `record`,
//! which also reads aliri_tokens 0.3's cache file.

#[cfg(feature = "file")]
mod file;
#[cfg(any(feature = "file", feature = "redis"))]
mod holder;
mod memory;
#[cfg(any(feature = "file", feature = "redis"))]
pub mod record;
#[cfg(feature = "redis")]
mod redis;
mod stack;

#[cfg(feature = "redis")]
pub use self::redis::RedisCache;
#[cfg(feature = "file")]
pub use file::FileCache;
pub use memory::MemoryCache;
pub use stack::CacheStack;

use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::{CacheError, LeaseOutcome, Token};

/// A blocking token cache. Async drivers run it on their blocking pool.
pub trait TokenCache: Send + Sync + 'static {
    /// The stored token, if any. A corrupt or foreign entry is `Ok(None)`
    /// (with a warning) or a [`CacheErrorKind::Corrupt`](freshtoken_core::CacheErrorKind::Corrupt)
    /// error; either way the machine carries on.
    fn load(&self) -> Result<Option<Token>, CacheError>;

    /// Stores `token` (with its refresh token, when it has one).
    fn store(&self, token: &Token) -> Result<(), CacheError>;

    /// Tries to take the lease for `ttl`. The default: leases unsupported.
    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let _ = ttl;
        Ok(LeaseOutcome::Unsupported)
    }

    /// Releases the lease if this instance holds it (and only then).
    fn release_lease(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

macro_rules! forward_cache {
    ($($ptr:ident),*) => {$(
        impl<T: TokenCache + ?Sized> TokenCache for $ptr<T> {
            fn load(&self) -> Result<Option<Token>, CacheError> {
                (**self).load()
            }
            fn store(&self, token: &Token) -> Result<(), CacheError> {
                (**self).store(token)
            }
            fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
                (**self).acquire_lease(ttl)
            }
            fn release_lease(&self) -> Result<(), CacheError> {
                (**self).release_lease()
            }
        }
    )*};
}
forward_cache!(Arc, Box);
